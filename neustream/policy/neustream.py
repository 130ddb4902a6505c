"""NeuStream's per-module scheduling, as in the paper, and a slack-aware variant.

NOTE: the program runs as a stream of modules, each with its own queue; every
time a module runs, it forms a fresh batch of requests that may be at different
steps. A request is dropped as soon as it cannot finish by its deadline even if
every call it still needs ran at batch size 1. ``neustream`` (the paper's policy)
gives each module a fixed cap: the largest batch whose call takes less than
slo x step_delta times the batch-1 call, so any request served at every call
keeps its pace. Requests admitted while there is room are served first, in the
order they reached the module; the overflow is demoted to a low-priority tier
that fills leftover slots, fewest passed-over rounds first. Two defects of the
original are fixed: the cap is at least 1 (no stall when slo x step_delta <= 1),
and the engine, not the policy, ends a run, so nothing is lost at shutdown.

``neustream-slack`` keeps the drop rule but sizes each batch from the queued
requests' own slack: the largest b such that b requests can all afford the
slow-down latency[b] / latency[1] (divided by step_delta) for the rest of their
work; the requests with most slack per remaining second are taken first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from neustream.latency import remaining_s
from neustream.policy.base import Decision, Policy

if TYPE_CHECKING:
    from neustream.catalog.diffusion import Program
    from neustream.latency import LatencyTable
    from neustream.queues import RequestQueue


def fixed_cap(table: LatencyTable, module: str, slo: float, step_delta: float) -> int:
    """Largest b with latency[b] < latency[1] x slo x step_delta, at least 1."""
    budget = table.latency(module, 1) * slo * step_delta
    cap = 1
    for b in range(2, table.max_batch(module) + 1):
        if table.latency(module, b) < budget:
            cap = b
    return cap


class _DropsHopeless(Policy):
    def __init__(self, program: Program, table: LatencyTable, slo: float,
                 step_delta: float = 0.95) -> None:
        super().__init__(program, table, slo)
        if not 0 < step_delta <= 1:
            raise ValueError(f"step_delta must be in (0, 1], got {step_delta}")
        self.step_delta = step_delta

    def split(self, module: str, queue: RequestQueue, now_s: float):
        """(alive, drops): drop what cannot finish even at batch-1 speed."""
        alive, drops = [], []
        for r in queue:
            if now_s + remaining_s(self.program, self.table, r) > r.deadline_s:
                drops.append((module, r))
            else:
                alive.append(r)
        return alive, drops


class NeuStreamPolicy(_DropsHopeless):
    name = "neustream"

    def __init__(self, program: Program, table: LatencyTable, slo: float,
                 step_delta: float = 0.95) -> None:
        super().__init__(program, table, slo, step_delta)
        self.caps = {m: fixed_cap(table, m, slo, step_delta) for m in program.module_names}

    def cap(self, module: str) -> int:
        return self.caps[module]

    def decide_module(self, module: str, queue: RequestQueue, now_s: float) -> Decision:
        alive, drops = self.split(module, queue, now_s)
        cap = self.caps[module]
        # The queue is in module-arrival order, so the admitted tier is FIFO.
        admitted = [r for r in alive if not r.demoted]
        batch = admitted[:cap]
        for r in admitted[cap:]:  # overflow joins the low tier, passed over once
            r.demoted = True
            r.wait_rounds += 1
        low = sorted((r for r in alive if r.demoted), key=lambda r: (r.wait_rounds, r.queued_s, r.id))
        room = cap - len(batch)
        batch += low[:room]
        for r in low[room:]:
            r.wait_rounds += 1
        return Decision(module, batch, drops)


class SlackPolicy(_DropsHopeless):
    name = "neustream-slack"

    def decide_module(self, module: str, queue: RequestQueue, now_s: float) -> Decision:
        alive, drops = self.split(module, queue, now_s)
        if not alive:
            return Decision(module, [], drops)
        # Slow-down each request can afford for all its remaining work.
        room = {r: (r.deadline_s - now_s) / remaining_s(self.program, self.table, r) for r in alive}
        by_room = sorted(alive, key=lambda r: (-room[r], r.deadline_s, r.id))
        base = self.table.latency(module, 1)
        best = 1
        for b in range(2, min(len(by_room), self.table.max_batch(module)) + 1):
            slowdown = self.table.latency(module, b) / base / self.step_delta
            if room[by_room[b - 1]] >= slowdown:
                best = b
        if best == 1:  # a lone request: the most urgent one
            return Decision(module, [min(alive, key=lambda r: (r.deadline_s, r.id))], drops)
        return Decision(module, by_room[:best], drops)
