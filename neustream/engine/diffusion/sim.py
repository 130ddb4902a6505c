"""Discrete-event simulator of a diffusion program: a policy serves a trace on one device.

NOTE: the device runs one batch at a time, and a batch takes the time the latency table gives
for its module and size (a whole-request batch: every module, every step, at that size). At
one instant batch ends come first, then arrivals, then the decision (engine/events.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from neustream.engine.diffusion.run import RunState
from neustream.engine.events import Device, Kind, Simulator
from neustream.latency import pipeline_s

if TYPE_CHECKING:
    from neustream.latency import LatencyTable
    from neustream.policy.base import Policy
    from neustream.request import Request


class DiffusionSimulator(Simulator):
    def __init__(self, policy: Policy, table: LatencyTable, requests: list[Request]) -> None:
        super().__init__(requests)
        self.policy, self.table = policy, table
        self.state = RunState(policy, requests)
        self.device = Device()

    def handle(self, kind: Kind, payload) -> None:
        now, state = self.now_s, self.state
        if kind is Kind.DECIDE:
            self.decide(now)
            return
        if kind is Kind.ARRIVAL:
            state.arrive(payload, now)
        else:
            state.complete(*payload, now)
            self.device.busy = False
        if state.waiting():
            self.wake(self.device)

    def decide(self, now: float) -> None:
        d = self.policy.decide(self.state.queues, now)
        self.state.apply_drops(d, now)
        if not d.batch:
            return
        if self.policy.whole_requests:
            dur = pipeline_s(self.policy.program, self.table, d.batch[0].steps, len(d.batch))
        else:
            dur = self.table.latency(d.module, len(d.batch))
        self.state.start(d, now)
        self.push(now + dur, Kind.BATCH_END, (d.module, d.batch, now))
        self.device.busy = True

    def close(self) -> None:
        self.state.close()


def simulate(policy: Policy, table: LatencyTable, requests: list[Request],
             progress: Callable[[Simulator], None] | None = None) -> RunState:
    """Serve ``requests`` (ordered by arrival) under ``policy``; return the run's state."""
    sim = DiffusionSimulator(policy, table, requests)
    sim.run(progress)
    return sim.state
