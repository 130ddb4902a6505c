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
