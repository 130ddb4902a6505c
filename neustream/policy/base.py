"""The scheduling-policy contract shared by the simulator and the live server.

A policy is pure: it sees the queues, the time the engine says it is, and the
latency table it was built with, and returns a ``Decision``. It keeps no clock,
starts no threads, does no I/O and draws no random numbers, so the simulator and
the live engine get the same decisions for the same inputs. The engine owns time
and execution; it applies a decision (drops first, then runs the batch) and asks
again when the device is free.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from neustream.catalog.diffusion import Program
    from neustream.latency import LatencyTable
    from neustream.queues import RequestQueue
    from neustream.request import Request

WHOLE_REQUESTS = "pipeline"  # the one queue of a whole-request policy (its name in records)


@dataclass
class Decision:
    # Module whose batch runs next; None when nothing runs now.
    module: str | None
    # Requests to run, all taken from ``module``'s queue; len(batch) <= the policy's cap.
    batch: list[Request] = field(default_factory=list)
    # Requests to give up, from any queue; disjoint from ``batch``.
    drops: list[tuple[str, Request]] = field(default_factory=list)  # (module, request)

    @classmethod
    def empty(cls) -> Decision:
        return cls(module=None)


class Policy(ABC):
    """Decides, each time a device is free, which batch runs next and what to drop."""

    name: str
    # True: a batch runs whole requests end to end (one queue, ``WHOLE_REQUESTS``).
    # False: a batch runs one call of one module (one queue per module).
    whole_requests: bool = False
    # Order of each queue the engine keeps for this policy (see queues.QUEUES).
    queue_order: str = "fifo"

    def __init__(self, program: Program, table: LatencyTable, slo: float) -> None:
        table.check(program)
        if not slo > 1:
            raise ValueError(
                f"slo must be > 1 (a deadline of slo x the stand-alone latency), got {slo}")
        self.program = program
        self.table = table
        self.slo = slo
        self._next = 0  # round-robin position over the modules

    @property
    def queue_names(self) -> tuple[str, ...]:
        return (WHOLE_REQUESTS,) if self.whole_requests else self.program.module_names

    @abstractmethod
    def decide_module(self, module: str, queue: RequestQueue, now_s: float) -> Decision:
        """Called by the engine when ``module`` may run a batch: which requests of
        its queue to run (at most ``cap(module)``) and which to drop."""

    def cap(self, module: str) -> int:
        """Largest batch the policy runs at ``module``."""
        return self.table.max_batch(module)

    def decide(self, queues: Mapping[str, RequestQueue], now_s: float) -> Decision:
        """Called by the engine when a device shared by all modules is free.

        Modules with waiting requests take turns (round robin from the one after
        the module served last), the way workers sharing one GPU would; drops
        found on the way are returned with the batch."""
        d, self._next = self.decide_among(self.queue_names, queues, now_s, self._next)
        return d

    def decide_among(self, names: tuple[str, ...], queues: Mapping[str, RequestQueue],
                     now_s: float, turn: int) -> tuple[Decision, int]:
        """``decide`` over the modules ``names`` of one device, their turn starting at
        ``turn``; returns the decision and the next turn."""
        drops: list[tuple[str, Request]] = []
        for k in range(len(names)):
            i = (turn + k) % len(names)
            if not queues[names[i]]:
                continue
            d = self.decide_module(names[i], queues[names[i]], now_s)
            drops += d.drops
            if d.batch:
                return Decision(names[i], d.batch, drops), i + 1
        return Decision(None, [], drops), turn
