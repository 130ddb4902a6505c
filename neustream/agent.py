"""A multi-agent pipeline's request flow, shared by the simulator and the live engine.

NOTE on the SLO (reference multiagent.md section 2.6): there is no end-to-end deadline. Each
stage gives a request its own deadlines from the stage's latency model and the request's
*budget*, the slack it carried out of the previous stage (0 at the first):

- LLM stage, prompt L, scale s: token 1 is due ``budget + s x (P(L) + V)`` after the stage
  arrival, token j >= 2 a further ``s x sum_{i<j} d(L + i)`` later (P: isolated prefill, d:
  isolated decode step, V: the image encoder for the stage's images; the artifact left V out of
  the allowance although it ran inside the stage's time: we count it);
- code-execution stage: due ``budget + exec_slo_s`` after its arrival (a fixed 2.5 s, not
  scaled by s, as in the artifact).

When a request leaves a stage at t, its slack is (its last deadline - t). With slack >= 0 it
goes on carrying that slack as its next budget; otherwise it is dropped at the stage boundary
(the artifact does this for NeuStream and the baseline alike). A request that leaves the last
stage with negative slack did all its work: it is LATE, not dropped. A request is OK when it
leaves the last stage in time. Requests go to a stage's replicas in turn (round robin).

Engines own the clock and the servers; they call ``arrive``, ``llm_done``, ``llm_dropped`` and
``exec_done`` and act on the ``Handoff`` returned: where the request goes next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from neustream.request import LlmRequest, Status

if TYPE_CHECKING:
    from neustream.latency import LlmLatencyModel
    from neustream.programs import AgentProgram, Stage


@dataclass
class Visit:
    """One request's passage through one stage."""

    stage: str
    arrival_s: float
    budget_s: float
    instance: str | None = None
    llm: LlmRequest | None = None  # LLM stages: the engine's view of the request
    start_s: float | None = None  # exec stages: when the code started
    end_s: float | None = None  # when the request left the stage (finished or dropped)
    deadline_s: float | None = None
    slack_s: float | None = None  # deadline - end when it finished
    outcome: str = "running"  # forwarded | late | dropped (in the stage) | boundary (late at exit)
    exec_status: str | None = None  # the sandbox's status (ok, error, timeout, ...)

    def row(self, token_times: bool = False) -> dict:
        out = {"arrival_s": self.arrival_s, "budget_s": self.budget_s, "end_s": self.end_s,
               "deadline_s": self.deadline_s, "slack_s": self.slack_s, "outcome": self.outcome}
        if self.instance is not None:
            out["instance"] = self.instance
        if self.llm is not None:
            r = self.llm
            on_time = r.tokens_on_time()
            out.update(prompt_tokens=r.prompt_tokens, output_tokens=r.output_tokens,
                       tokens_generated=r.num_generated, tokens_on_time=on_time,
                       first_token_s=r.token_s[0] if r.token_s else None,
                       ttft_ok=bool(r.token_s) and r.token_s[0] <= r.deadline_of(1),
                       last_ok=r.num_generated == r.output_tokens
                       and r.token_s[-1] <= r.deadline_s,
                       preemptions=r.num_preemptions)
            if token_times:
                out["token_s"] = r.token_s
        else:
            out.update(start_s=self.start_s, exec_status=self.exec_status)
        return out


@dataclass
class AgentRequest:
    id: int
    arrival_s: float
    row: dict  # its trace row
    visits: list[Visit] = field(default_factory=list)
    status: Status = Status.QUEUED
    finish_s: float | None = None
    dropped_at: str | None = None
    image: object = None  # live runs: the image its last code stage produced

    def row_out(self, token_times: bool = False) -> dict:
        last = self.visits[-1] if self.visits else None
        stages = {v.stage: v.row(token_times) for v in self.visits}
        llm = [v for v in stages.values() if "tokens_on_time" in v]
        out = {
            "id": self.id, "arrival_s": self.arrival_s,
            "deadline_s": last.deadline_s if last else None,
            "finish_s": self.finish_s, "status": self.status.name.lower(),
            "plot": self.row.get("plot"),
            "output_tokens": sum(v["output_tokens"] for v in llm),
            "tokens_generated": sum(v["tokens_generated"] for v in llm),
            "tokens_on_time": sum(v["tokens_on_time"] for v in llm),
            "stages": stages,
        }
        if self.dropped_at is not None:
            out["dropped_at"] = self.dropped_at
            out["dropped_s"] = last.end_s if last else None
        return out


@dataclass
class Handoff:
    """Where a request goes next: an LLM engine instance, a code executor, or nowhere."""

    request: AgentRequest
    stage: Stage | None  # None: the request left the pipeline
    instance: str | None = None
    llm: LlmRequest | None = None


class AgentRun:
    """The requests of one run and the hand-over rules between stages."""

    def __init__(self, program: AgentProgram, rows: list[dict],
                 models: dict[str, LlmLatencyModel], slo: float) -> None:
        missing = [s.name for s in program.llm_stages if s.name not in models]
        if missing:
            raise ValueError(f"no latency model for stage(s) {', '.join(missing)}")
        if not slo > 0:
            raise ValueError(f"slo must be > 0, got {slo}")
        self.program = program
        self.models = models
        self.slo = slo
        self.requests = [AgentRequest(int(r["id"]), float(r["arrival_s"]), r) for r in rows]
        self._turn = {s.name: 0 for s in program.stages}
        self._owner: dict[int, tuple[AgentRequest, Visit]] = {}
        self.n_done = 0

    # -- entering a stage ---------------------------------------------------------------------

    def arrive(self, req: AgentRequest, now_s: float) -> Handoff:
        """``req`` reaches the pipeline's front end."""
        req.status = Status.RUNNING
        return self._enter(req, 0, now_s, 0.0)

    def _enter(self, req: AgentRequest, k: int, now_s: float, budget_s: float) -> Handoff:
        stage = self.program.stages[k]
        visit = Visit(stage.name, now_s, budget_s)
        req.visits.append(visit)
        if stage.kind == "exec":
            visit.deadline_s = now_s + budget_s + self.program.exec_slo_s
            return Handoff(req, stage)
        names = stage.instances()
        visit.instance = names[self._turn[stage.name] % len(names)]
        self._turn[stage.name] += 1
        visit.llm = self.stage_request(req, stage, now_s, budget_s)
        visit.deadline_s = visit.llm.deadline_s
        self._owner[id(visit.llm)] = (req, visit)
        return Handoff(req, stage, visit.instance, visit.llm)

    def stage_request(self, req: AgentRequest, stage: Stage, now_s: float,
                      budget_s: float) -> LlmRequest:
        """The LLM engine's view of ``req`` in ``stage``, with the stage's deadlines."""
        model = self.models[stage.name]
        prompt = int(req.row[f"{stage.name}_prompt"])
        ttft, step0, inc = model.slo_terms(prompt, self.slo, self.slo)
        ttft += self.slo * model.vision_s(stage.images) + budget_s
        return LlmRequest(id=req.id, arrival_s=now_s, prompt_tokens=prompt,
                          output_tokens=int(req.row[f"{stage.name}_output"]),
                          pslo=self.slo, dslo=self.slo, ttft_s=ttft, step0_s=step0,
                          step_inc_s=inc)

    # -- leaving a stage ----------------------------------------------------------------------

    def owner(self, llm: LlmRequest) -> tuple[AgentRequest, Visit]:
        return self._owner[id(llm)]

    def llm_done(self, llm: LlmRequest, now_s: float) -> Handoff:
        """An LLM stage produced every token of ``llm``."""
        req, visit = self._owner.pop(id(llm))
        return self._leave(req, visit, now_s)

    def llm_dropped(self, llm: LlmRequest, now_s: float) -> Handoff:
        """The engine gave ``llm`` up (its policy dropped it)."""
        req, visit = self._owner.pop(id(llm))
        visit.end_s = now_s
        visit.outcome = "dropped"
        return self._stop(req, visit, Status.DROPPED, now_s)

    def exec_done(self, req: AgentRequest, start_s: float, now_s: float, status: str) -> Handoff:
        """A code-execution stage finished ``req``'s program (whatever its outcome: failed code
        goes on with the fallback image, as in the artifact)."""
        visit = req.visits[-1]
        visit.start_s = start_s
        visit.exec_status = status
        return self._leave(req, visit, now_s)

    def _leave(self, req: AgentRequest, visit: Visit, now_s: float) -> Handoff:
        visit.end_s = now_s
        visit.slack_s = visit.deadline_s - now_s
        k = len(req.visits) - 1
        last = k == len(self.program.stages) - 1
        if visit.slack_s < 0:
            visit.outcome = "late" if last else "boundary"
            return self._stop(req, visit, Status.LATE if last else Status.DROPPED, now_s)
        visit.outcome = "forwarded"
        if last:
            return self._stop(req, visit, Status.OK, now_s)
        return self._enter(req, k + 1, now_s, visit.slack_s)

    def _stop(self, req: AgentRequest, visit: Visit, status: Status, now_s: float) -> Handoff:
        req.status = status
        if status is Status.DROPPED:
            req.dropped_at = visit.stage
        else:
            req.finish_s = now_s
        self.n_done += 1
        return Handoff(req, None)

    def close(self) -> None:
        stuck = [r.id for r in self.requests if not r.status.terminal]
        if stuck:
            raise RuntimeError(f"{len(stuck)} request(s) never left the pipeline "
                               f"(first ids {stuck[:5]})")
        assert self.n_done == len(self.requests), (self.n_done, len(self.requests))


def stage_summary(program: AgentProgram, rows: list[dict], span_s: float) -> dict:
    """Per-stage counts and goodputs from request rows (AgentRequest.row_out): for LLM stages,
    tokens on time per second of trace and the good-prefill / good-decode rates of the
    artifact's Figure 19 (requests whose first / last token met its deadline, per second)."""
    out = {}
    for s in program.stages:
        visits = [r["stages"][s.name] for r in rows if s.name in r["stages"]]
        d = {"n_in": len(visits),
             "n_forwarded": sum(v["outcome"] == "forwarded" for v in visits),
             "n_dropped": sum(v["outcome"] == "dropped" for v in visits),
             "n_late_at_exit": sum(v["outcome"] in ("boundary", "late") for v in visits)}
        if s.kind == "llm":
            on_time = sum(v["tokens_on_time"] for v in visits)
            d.update(tokens_requested=sum(v["output_tokens"] for v in visits),
                     tokens_on_time=on_time,
                     token_goodput_tps=on_time / span_s if span_s > 0 else 0.0,
                     good_prefill_rps=sum(v["ttft_ok"] for v in visits) / span_s if span_s > 0 else 0.0,
                     good_decode_rps=sum(v["last_ok"] for v in visits) / span_s if span_s > 0 else 0.0)
        else:
            secs = [v["end_s"] - v["start_s"] for v in visits
                    if v["start_s"] is not None and v["end_s"] is not None]
            d.update(exec_ok=sum(v["exec_status"] == "ok" for v in visits),
                     mean_exec_s=sum(secs) / len(secs) if secs else None)
        out[s.name] = d
    return out
