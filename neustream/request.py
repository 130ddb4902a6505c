"""One request of a trace as it moves through a program: one class per family, one status."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class Status(IntEnum):
    """Life cycle of a request. Every state from OK on is terminal, so
    ``status >= Status.OK`` means the request is finished, one way or another."""

    QUEUED = 0  # waiting in a module's queue
    RUNNING = 1  # inside an executing batch
    OK = 2  # finished by its deadline
    LATE = 3  # finished after its deadline
    DROPPED = 4  # given up by the policy
    # Online serving only (the scheduler plug-in's request log; never in a run's record):
    ABORTED = 5  # ended from outside the policy: the client disconnected or aborted it
    FAILED = 6  # ended by an error before it finished (a bad option, an engine error)

    @property
    def terminal(self) -> bool:
        return self >= Status.OK


@dataclass(eq=False)
class Request:
    id: int
    arrival_s: float
    deadline_s: float
    steps: int  # calls of the program's loop module
    fields: dict = field(default_factory=dict)  # workload fields kept for the record
    status: Status = Status.QUEUED
    stage: int = 0  # index of the module the request is at
    calls_done: int = 0  # calls already made of the module at ``stage``
    finish_s: float | None = None
    dropped_at: str | None = None
    dropped_s: float | None = None
    module_s: dict = field(default_factory=dict)  # module -> [enter_s, leave_s]
    # Policy bookkeeping for the current module, reset on entering one.
    queued_s: float = 0.0  # when the request entered the current module
    demoted: bool = False  # NeuStream: passed over once, now in the low-priority tier
    wait_rounds: int = 0  # NeuStream: scheduling rounds passed over

    def enter(self, stage: int, module: str, now_s: float) -> None:
        self.stage = stage
        self.calls_done = 0
        self.queued_s = now_s
        self.demoted = False
        self.wait_rounds = 0
        self.status = Status.QUEUED
        self.module_s[module] = [now_s, None]

    def leave(self, module: str, now_s: float) -> None:
        self.module_s[module][1] = now_s

    def finish(self, now_s: float) -> None:
        self.finish_s = now_s
        self.status = Status.OK if now_s <= self.deadline_s else Status.LATE

    def drop(self, module: str, now_s: float) -> None:
        self.status = Status.DROPPED
        self.dropped_at = module
        self.finish_s = None
        self.dropped_s = now_s
        if module in self.module_s:
            self.module_s[module][1] = now_s

    def row(self) -> dict:
        """This request's line of requests.jsonl."""
        row = {
            "id": self.id,
            "arrival_s": self.arrival_s,
            "deadline_s": self.deadline_s,
            "finish_s": self.finish_s,
            "status": self.status.name.lower(),
            "steps": self.steps,
            **self.fields,
            "modules": self.module_s,
        }
        if self.dropped_at is not None:
            row["dropped_at"] = self.dropped_at
            row["dropped_s"] = self.dropped_s
        return row


@dataclass(eq=False)
class LlmRequest:
    """One LLM request: a prompt of ``prompt_tokens`` and ``output_tokens`` tokens to generate.

    Token 1 comes out of the prefill; token j >= 2 out of the (j-1)-th decode step. Token j is
    due at ``deadline_of(j)``: ``arrival_s + ttft_s`` for j = 1, plus
    ``(j-1) step0_s + step_inc_s (j-1) j / 2`` for later tokens (the SLO terms of the latency
    model, LlmLatencyModel.slo_terms). A token counts as on time only against its own deadline,
    the first one included. Status: OK when every token was on time, LATE when all came but some
    late, DROPPED when given up (tokens delivered before that still count when on time); online,
    ABORTED when the client went away first and FAILED when an error ended it (``error``).
    """

    id: int | str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    pslo: float = 1.0
    dslo: float = 1.0
    ttft_s: float = 0.0
    step0_s: float = 0.0
    step_inc_s: float = 0.0
    status: Status = Status.QUEUED
    num_generated: int = 0  # output tokens so far
    num_computed: int = 0  # tokens whose KV is in the cache (engines that model it)
    num_preemptions: int = 0
    token_s: list = field(default_factory=list)  # when each output token came out
    finish_s: float | None = None
    dropped_s: float | None = None
    ended_s: float | None = None  # ABORTED or FAILED: when
    error: str | None = None  # FAILED: why

    def deadline_of(self, j: int) -> float:
        """When output token ``j`` (1-based) is due."""
        k = j - 1
        return self.arrival_s + self.ttft_s + k * self.step0_s + self.step_inc_s * k * j / 2

    @property
    def deadline_s(self) -> float:
        """When the last token is due."""
        return self.deadline_of(self.output_tokens)

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens: the context the next step extends."""
        return self.prompt_tokens + self.num_generated

    def emit(self, now_s: float, n: int = 1) -> None:
        self.token_s.extend([now_s] * n)
        self.num_generated += n

    def tokens_on_time(self) -> int:
        return sum(1 for j, t in enumerate(self.token_s, start=1) if t <= self.deadline_of(j))

    def finish(self, now_s: float) -> None:
        self.finish_s = now_s
        self.status = Status.OK if self.tokens_on_time() == self.output_tokens else Status.LATE

    def drop(self, now_s: float) -> None:
        self.status = Status.DROPPED
        self.dropped_s = now_s

    def end(self, now_s: float, status: Status, error: str | None = None) -> None:
        """Ended before it finished, not by the policy: ABORTED or FAILED."""
        if status not in (Status.ABORTED, Status.FAILED):
            raise ValueError(f"end() is for aborted or failed requests, not {status.name}")
        self.status = status
        self.ended_s = now_s
        self.error = error

    def row(self, token_times: bool = True) -> dict:
        """This request's line of requests.jsonl."""
        first = self.token_s[0] if self.token_s else None
        row = {
            "id": self.id, "arrival_s": self.arrival_s, "deadline_s": self.deadline_s,
            "finish_s": self.finish_s if self.status in (Status.OK, Status.LATE) else None,
            "status": self.status.name.lower(),
            "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
            "tokens_generated": self.num_generated, "tokens_on_time": self.tokens_on_time(),
            "ttft_deadline_s": self.deadline_of(1), "first_token_s": first,
            "ttft_ok": first is not None and first <= self.deadline_of(1),
            "pslo": self.pslo, "dslo": self.dslo, "preemptions": self.num_preemptions,
        }
        if self.status is Status.DROPPED:
            row["dropped_at"] = "waiting"
            row["dropped_s"] = self.dropped_s
        if self.ended_s is not None:
            row["ended_s"] = self.ended_s
        if self.error is not None:
            row["error"] = self.error
        if token_times:
            row["token_s"] = self.token_s
        return row


# -- multi-agent requests ------------------------------------------------------------------------


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
    fields: dict  # its trace row
    visits: list[Visit] = field(default_factory=list)
    status: Status = Status.QUEUED
    finish_s: float | None = None
    dropped_at: str | None = None
    image: object = None  # live runs: the image its last code stage produced

    def row(self, token_times: bool = False) -> dict:
        """This request's line of requests.jsonl: every stage it reached."""
        last = self.visits[-1] if self.visits else None
        stages = {v.stage: v.row(token_times) for v in self.visits}
        llm = [v for v in stages.values() if "tokens_on_time" in v]
        out = {
            "id": self.id, "arrival_s": self.arrival_s,
            "deadline_s": last.deadline_s if last else None,
            "finish_s": self.finish_s, "status": self.status.name.lower(),
            "plot": self.fields.get("plot"),
            "output_tokens": sum(v["output_tokens"] for v in llm),
            "tokens_generated": sum(v["tokens_generated"] for v in llm),
            "tokens_on_time": sum(v["tokens_on_time"] for v in llm),
            "stages": stages,
        }
        if self.dropped_at is not None:
            out["dropped_at"] = self.dropped_at
            out["dropped_s"] = last.end_s if last else None
        return out
