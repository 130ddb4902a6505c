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

from dataclasses import dataclass
from typing import TYPE_CHECKING

from neustream.engine.events import StallError
from neustream.request import AgentRequest, LlmRequest, Status, Visit

if TYPE_CHECKING:
    from neustream.catalog.agent import AgentProgram, Stage
    from neustream.latency import LlmLatencyModel


@dataclass
class Handoff:
    """Where a request goes next: an LLM engine instance, a code executor, or nowhere."""

    request: AgentRequest
    stage: Stage | None  # None: the request left the pipeline
    instance: str | None = None
    llm: LlmRequest | None = None


class AgentFlow:
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
        prompt = int(req.fields[f"{stage.name}_prompt"])
        ttft, step0, inc = model.slo_terms(prompt, self.slo, self.slo)
        ttft += self.slo * model.vision_s(stage.images) + budget_s
        return LlmRequest(id=req.id, arrival_s=now_s, prompt_tokens=prompt,
                          output_tokens=int(req.fields[f"{stage.name}_output"]),
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
            raise StallError(f"{len(stuck)} request(s) never left the pipeline "
                               f"(first ids {stuck[:5]})")
        assert self.n_done == len(self.requests), (self.n_done, len(self.requests))
