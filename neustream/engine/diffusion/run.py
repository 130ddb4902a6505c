"""A diffusion run's state: requests in module queues, running, finished or dropped.

``RunState`` is the bookkeeping shared by the simulator and the live engine. The engine owns
time and calls these methods as things happen; the policy only decides. At the end ``close()``
checks that nothing was lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from neustream.engine.events import StallError
from neustream.policy.base import WHOLE_REQUESTS
from neustream.queues import make_queue
from neustream.request import Status

if TYPE_CHECKING:
    from neustream.policy.base import Decision, Policy
    from neustream.request import Request


class RunState:
    def __init__(self, policy: Policy, requests: list[Request]) -> None:
        self.policy = policy
        self.program = policy.program
        self.requests = requests
        self.queues = {name: make_queue(policy.queue_order) for name in policy.queue_names}
        self.batches: list[dict] = []
        self.n_done = 0  # terminal requests
        self.n_ok = 0

    # -- transitions -------------------------------------------------------------

    def arrive(self, r: Request, now_s: float) -> None:
        self._enter(r, 0, now_s)

    def _enter(self, r: Request, stage: int, now_s: float) -> None:
        name = WHOLE_REQUESTS if self.policy.whole_requests else self.program.modules[stage].name
        r.enter(stage, name, now_s)
        self.queues[name].add(r)

    def apply_drops(self, d: Decision, now_s: float) -> None:
        for module, r in d.drops:
            self.queues[module].remove(r)
            r.drop(module, now_s)
            self.n_done += 1

    def start(self, d: Decision, now_s: float) -> None:
        queue = self.queues[d.module]
        for r in d.batch:
            queue.remove(r)
            r.status = Status.RUNNING

    def complete(self, module: str, batch: list[Request], start_s: float, now_s: float) -> None:
        """A batch of ``module`` ended at ``now_s``: advance each request."""
        self.batches.append({
            "module": module, "start_s": start_s, "end_s": now_s,
            "size": len(batch), "ids": [r.id for r in batch],
        })
        for r in batch:
            if self.policy.whole_requests:
                r.leave(WHOLE_REQUESTS, now_s)
                self._finish(r, now_s)
                continue
            m = self.program.modules[r.stage]
            r.calls_done += 1
            if m.loop and r.calls_done < r.steps:
                r.status = Status.QUEUED
                self.queues[m.name].add(r)
                continue
            r.leave(m.name, now_s)
            if r.stage + 1 < len(self.program.modules):
                self._enter(r, r.stage + 1, now_s)
            else:
                self._finish(r, now_s)

    def _finish(self, r: Request, now_s: float) -> None:
        r.finish(now_s)
        self.n_done += 1
        self.n_ok += r.status is Status.OK

    # -- state ---------------------------------------------------------------------

    def waiting(self) -> bool:
        return any(self.queues.values())

    def close(self) -> None:
        """Check that every request ended exactly once."""
        stuck = [r.id for r in self.requests if not r.status.terminal]
        if stuck:
            raise StallError(
                f"{len(stuck)} request(s) never finished (first ids {stuck[:5]}): "
                f"policy {self.policy.name} left them queued with nothing running"
            )
        assert self.n_done == len(self.requests), (self.n_done, len(self.requests))
