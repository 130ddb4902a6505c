"""The discrete-event core every simulator runs on: one heap, one clock, one loop.

NOTE: events sit in a heap keyed ``(time_s, kind, seq)``. ``kind`` is a member of the
simulator's own ``Kind`` (an IntEnum whose values rank events at one instant: a simulator lists
batch or step ends first, then arrivals, and its decision last, so a decision sees everything
that happened at its instant); ``seq`` keeps ties in insertion order, so no event is ever
compared with another. A ``Device`` runs one batch at a time: ``wake`` asks for a decision on it
at the current instant unless it is busy or a decision is already pending, so a decision that
ran nothing is not retried before something changes. Nothing here reads the wall clock: a trace
and a seed give the same records every time.

A simulator subclasses ``Simulator``, implements ``handle(kind, payload)`` and ``close()``
(check that every request ended), and calls ``run()``; ``Kind`` serves a one-device simulator,
whose batches (or engine steps) end before arrivals, which come before the decision; a
simulator with other events sets its own.
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from typing import Callable, ClassVar

PROGRESS_EVERY = 20000  # events between two progress reports


class Kind(IntEnum):
    """Event kinds of a one-device simulator; the value orders events at the same instant."""

    BATCH_END = 0  # a batch (an engine step) ended
    ARRIVAL = 1
    DECIDE = 2


class StallError(RuntimeError):
    """An engine ran out of events (or time) with requests still unfinished."""


@dataclass(eq=False)
class Device:
    """One device of a simulator: it runs one batch (or engine step) at a time."""

    name: object = 0
    busy: bool = False  # a batch is running
    decide_pending: bool = False  # a decision event is in the heap


class Simulator(ABC):
    """The event loop, written once; subclasses give the kinds and their handlers."""

    Kind: ClassVar[type[IntEnum]] = Kind  # has ARRIVAL and DECIDE (payload: the Device)

    def __init__(self, arrivals=()) -> None:
        """``arrivals``: objects with an ``arrival_s``, each an ARRIVAL event."""
        self._heap: list = []
        self._seq = itertools.count()
        self.now_s = 0.0
        self.n_events = 0
        for a in arrivals:
            self.push(a.arrival_s, self.Kind.ARRIVAL, a)

    def push(self, time_s: float, kind: IntEnum, payload=None) -> None:
        heapq.heappush(self._heap, (time_s, kind, next(self._seq), payload))

    def wake(self, device: Device) -> None:
        """Ask for a decision on ``device`` now, unless it is busy or one is pending."""
        if not device.busy and not device.decide_pending:
            device.decide_pending = True
            self.push(self.now_s, self.Kind.DECIDE, device)

    def run(self, progress: Callable[[Simulator], None] | None = None) -> None:
        """Handle events in key order until none is left, then ``close()``. ``progress(self)``
        is called every PROGRESS_EVERY events."""
        while self._heap:
            self.now_s, kind, _, payload = heapq.heappop(self._heap)
            self.n_events += 1
            if kind is self.Kind.DECIDE:
                payload.decide_pending = False
            self.handle(kind, payload)
            if progress is not None and self.n_events % PROGRESS_EVERY == 0:
                progress(self)
        self.close()

    @abstractmethod
    def handle(self, kind: IntEnum, payload) -> None:
        """One event at ``self.now_s``; push the events it causes."""

    @abstractmethod
    def close(self) -> None:
        """Called once the heap is empty: raise StallError if a request never ended."""
