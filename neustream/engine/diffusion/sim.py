"""Discrete-event simulator of a diffusion program: a policy serves a trace on its devices.

NOTE: a device runs one batch at a time, and a batch takes the time the latency table gives
for its module and size (a whole-request batch: every module, every step, at that size). At
one instant batch ends come first, then arrivals, then the decisions (engine/events.py).

By default every module shares one device and the policy's ``decide`` takes them in turns.
A ``placement`` (module -> device name, the syntax of ``neustream serve --placement``; modules
it leaves out stay on the first device) gives each device its own modules, as the live server's
executors have them: devices run their batches beside each other, each deciding over its own
modules in turns (``Policy.decide_among``), and a batch that ends hands its requests to the
next module's queue, waking that module's device. A module keeps its table time on any device
(each GPU of a placement is one of the table's); the hand-off copies between devices take no
time here (tens to hundreds of KB per request, microseconds on NVLink). A whole-request
policy (Clockwork) runs on one device whatever the placement, as live.

A ``device`` model (engine/diffusion/device.py, fitted from live runs) makes each batch take
a drawn time around the table's, with host time added; the policy still plans on the table, so
a batch can now end later than planned and a request finish late. Without one, batches take the
table's time exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping

from neustream.catalog.diffusion import placement_groups
from neustream.engine.diffusion.run import RunState
from neustream.engine.events import Device, Kind, Simulator
from neustream.latency import pipeline_s
from neustream.policy.base import WHOLE_REQUESTS

if TYPE_CHECKING:
    from neustream.engine.diffusion.device import DeviceModel
    from neustream.latency import LatencyTable
    from neustream.policy.base import Policy
    from neustream.request import Request

HOME = "main"  # the device of the modules a placement leaves out


class DiffusionSimulator(Simulator):
    def __init__(self, policy: Policy, table: LatencyTable, requests: list[Request],
                 placement: Mapping[str, str] | None = None, device: DeviceModel | None = None,
                 seed: int = 0) -> None:
        super().__init__(requests)
        self.policy, self.table = policy, table
        self.draws = device.sampler(seed) if device is not None else None
        self.state = RunState(policy, requests)
        groups = placement_groups(policy.program, dict(placement or {}), HOME)
        if policy.whole_requests or len(groups) == 1:
            groups = {HOME: policy.queue_names}
        # device -> its modules, the device and its turn over them
        self.groups = groups
        self.devices = {name: Device(name) for name in groups}
        self.turns = dict.fromkeys(groups, 0)
        self.device_of = {m: name for name, mods in groups.items() for m in mods}
        self.shared = len(groups) == 1  # one device: the policy's own turn-taking

    def handle(self, kind: Kind, payload) -> None:
        now, state = self.now_s, self.state
        if kind is Kind.DECIDE:
            self.decide(payload, now)
            return
        if kind is Kind.ARRIVAL:
            state.arrive(payload, now)
        else:
            module, batch, start, device = payload
            state.complete(module, batch, start, now)
            if not self.shared:
                state.batches[-1]["device"] = device.name
            device.busy = False
        if self.shared:
            if state.waiting():
                self.wake(self.devices[HOME])
            return
        for name, mods in self.groups.items():
            if any(state.queues[m] for m in mods):
                self.wake(self.devices[name])

    def decide(self, device: Device, now: float) -> None:
        if self.shared:
            d = self.policy.decide(self.state.queues, now)
        else:
            d, self.turns[device.name] = self.policy.decide_among(
                self.groups[device.name], self.state.queues, now, self.turns[device.name])
        self.state.apply_drops(d, now)
        if not d.batch:
            return
        if d.module == WHOLE_REQUESTS:
            dur = pipeline_s(self.policy.program, self.table, d.batch[0].steps, len(d.batch))
        else:
            dur = self.table.latency(d.module, len(d.batch))
        if self.draws is not None:
            dur = self.draws.duration(d.module, len(d.batch), dur)
        self.state.start(d, now)
        self.push(now + dur, Kind.BATCH_END, (d.module, d.batch, now, device))
        device.busy = True

    def close(self) -> None:
        self.state.close()


def simulate(policy: Policy, table: LatencyTable, requests: list[Request],
             progress: Callable[[Simulator], None] | None = None,
             placement: Mapping[str, str] | None = None, device: DeviceModel | None = None,
             seed: int = 0) -> RunState:
    """Serve ``requests`` (ordered by arrival) under ``policy`` on the devices of
    ``placement`` (default: one), batches timed by the ``device`` model drawn from ``seed``
    (default: the table's times); return the run's state."""
    sim = DiffusionSimulator(policy, table, requests, placement, device, seed)
    sim.run(progress)
    return sim.state
