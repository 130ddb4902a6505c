"""Queues of requests waiting at a module: one interface, one small class per order.

The order is a policy's choice (``Policy.queue_order``); ``make_queue`` builds one by name.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    from neustream.request import Request


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
