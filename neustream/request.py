"""One request of a trace as it moves through a program, and the queues that hold it."""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable, Iterator


class Status(IntEnum):
    """Life cycle of a request. Every state from OK on is terminal, so
    ``status >= Status.OK`` means the request is finished, one way or another."""

    QUEUED = 0  # waiting in a module's queue
    RUNNING = 1  # inside an executing batch
    OK = 2  # finished by its deadline
    LATE = 3  # finished after its deadline
    DROPPED = 4  # given up by the policy

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


class RequestQueue(ABC):
    """Requests waiting at one module, iterated in the queue's order."""

    @abstractmethod
    def add(self, request: Request) -> None: ...

    @abstractmethod
    def remove(self, request: Request) -> None: ...

    @abstractmethod
    def __iter__(self) -> Iterator[Request]: ...

    @abstractmethod
    def __len__(self) -> int: ...

    def __bool__(self) -> bool:
        return len(self) > 0


class _SortedQueue(RequestQueue):
    key: Callable[[Request], tuple]

    def __init__(self) -> None:
        self._items: list[tuple[tuple, Request]] = []

    def add(self, request: Request) -> None:
        bisect.insort(self._items, (self.key(request), request), key=lambda kv: kv[0])

    def remove(self, request: Request) -> None:
        k = self.key(request)
        i = bisect.bisect_left(self._items, k, key=lambda kv: kv[0])
        while self._items[i][1] is not request:
            i += 1
        del self._items[i]

    def __iter__(self) -> Iterator[Request]:
        return iter([r for _, r in self._items])

    def __len__(self) -> int:
        return len(self._items)


class FifoQueue(_SortedQueue):
    """First come first served at this module (time entered, then id)."""

    @staticmethod
    def key(r: Request) -> tuple:
        return (r.queued_s, r.id)


class EdfQueue(_SortedQueue):
    """Earliest deadline first (deadline, then id)."""

    @staticmethod
    def key(r: Request) -> tuple:
        return (r.deadline_s, r.id)


QUEUES: dict[str, type[RequestQueue]] = {"fifo": FifoQueue, "edf": EdfQueue}


def make_queue(order: str) -> RequestQueue:
    try:
        return QUEUES[order]()
    except KeyError:
        raise ValueError(f"unknown queue order {order!r}; choose from {', '.join(QUEUES)}") from None


@dataclass(eq=False)
class LlmRequest:
    """One LLM request: a prompt of ``prompt_tokens`` and ``output_tokens`` tokens to generate.

    Token 1 comes out of the prefill; token j >= 2 out of the (j-1)-th decode step. Token j is
    due at ``deadline_of(j)``: ``arrival_s + ttft_s`` for j = 1, plus
    ``(j-1) step0_s + step_inc_s (j-1) j / 2`` for later tokens (the SLO terms of the latency
    model, LlmLatencyModel.slo_terms). A token counts as on time only against its own deadline,
    the first one included. Status: OK when every token was on time, LATE when all came but some
    late, DROPPED when given up (tokens delivered before that still count when on time).
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

    def row(self, token_times: bool = True) -> dict:
        """This request's line of requests.jsonl."""
        first = self.token_s[0] if self.token_s else None
        row = {
            "id": self.id, "arrival_s": self.arrival_s, "deadline_s": self.deadline_s,
            "finish_s": self.finish_s if self.status is not Status.DROPPED else None,
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
        if token_times:
            row["token_s"] = self.token_s
        return row
