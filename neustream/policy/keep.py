"""``neustream-keep``: NeuStream's module queues and drop rule, with seats kept and the tail batched.

NOTE: measured against the deadline-aware goodput bound (analysis/bound.py), the slack policy
loses most where requests wait between their steps: a request left out of a loop batch loses
room it never gets back, and every small batch of the module after the loop (the VAE) stalls
the whole loop. Three changes, each kept because it won on the default sweeps
(tests/benchmarks/bench_bound.py):

- Seats are kept: a loop batch is filled first with the requests that already started the
  module (most room first), then with new ones in deadline order; a request joins only while
  it and every member so far can afford the batch's slow-down latency[b] / latency[1] for the
  rest of their work. A new request with room to spare never pushes a started one out.
- Headroom: the slow-down a request can afford is its room times step_delta (NeuStream's
  0.95), or times the loop modules' share of a request's work where that is larger (loop
  steps at the largest batch the SLO allows, against the other modules' batch-1 calls: their
  batches are what runs between a request's loop steps). A one-module program (palette) has
  a share of 1, so it batches pairs at tight SLOs where 0.95 forbids them.
- The tail waits: a module after the last loop module runs a batch smaller than its
  efficient size (within 25% of its best seconds per request) only when the loop has nothing
  to run or one of its requests could not afford two more loop batches first.
Requests that cannot finish even at batch 1 are dropped, as in NeuStream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from neustream.latency import remaining_s
from neustream.policy.base import Decision
from neustream.policy.neustream import _DropsHopeless

if TYPE_CHECKING:
    from neustream.catalog.diffusion import Program
    from neustream.latency import LatencyTable
    from neustream.queues import RequestQueue

EFFICIENT = 1.25  # a tail batch is efficient within this factor of its best seconds per request
WAIT = 2  # loop batches a waiting tail request must still afford (one, and as much for margin)


def headroom(program: Program, table: LatencyTable, slo: float) -> float:
    """The loop modules' share of a request's work: mean steps at the largest batch whose
    slow-down is within the SLO, against the other modules at batch 1 (1 without them)."""
    steps = sum(program.steps) / 2
    loop = other = 0.0
    for m in program.modules:
        base = table.latency(m.name, 1)
        if not m.loop:
            other += base
            continue
        b = max(k for k in range(1, table.max_batch(m.name) + 1)
                if k == 1 or table.latency(m.name, k) <= slo * base)
        loop += steps * table.latency(m.name, b) / b
    return loop / (loop + other) if loop > 0 else 1.0


def efficient_size(table: LatencyTable, module: str) -> int:
    """Smallest batch within EFFICIENT of the module's best seconds per request."""
    best = table.best_per_request(module)
    return min(b for b in range(1, table.max_batch(module) + 1)
               if table.latency(module, b) / b <= EFFICIENT * best)


class KeepPolicy(_DropsHopeless):
    name = "neustream-keep"

    def __init__(self, program: Program, table: LatencyTable, slo: float,
                 step_delta: float = 0.95) -> None:
        super().__init__(program, table, slo, step_delta)
        self.headroom = max(step_delta, headroom(program, table, slo))
        loops = [i for i, m in enumerate(program.modules) if m.loop]
        self.loop = program.modules[loops[-1]].name if loops else None
        after = program.modules[loops[-1] + 1:] if loops else ()
        self.tail = {m.name: efficient_size(table, m.name) for m in after}

    def decide_module(self, module: str, queue: RequestQueue, now_s: float) -> Decision:
        alive, drops = self.split(module, queue, now_s)
        if not alive:
            return Decision(module, [], drops)
        room = {r: (r.deadline_s - now_s) / remaining_s(self.program, self.table, r)
                for r in alive}
        started = sorted((r for r in alive if r.calls_done > 0),
                         key=lambda r: (-room[r], r.deadline_s, r.id))
        new = sorted((r for r in alive if r.calls_done == 0), key=lambda r: (r.deadline_s, r.id))
        base, top = self.table.latency(module, 1), self.table.max_batch(module)
        batch, low = [], float("inf")  # low: the least room among the members
        for r in started + new:
            if len(batch) == top:
                break
            need = self.table.latency(module, len(batch) + 1) / base / self.headroom
            if min(low, room[r]) >= need:
                batch.append(r)
                low = min(low, room[r])
        if not batch:  # nobody affords even batch 1 with headroom: the most urgent alone
            batch = [min(alive, key=lambda r: (r.deadline_s, r.id))]
        return Decision(module, batch, drops)

    def decide(self, queues: Mapping[str, RequestQueue], now_s: float) -> Decision:
        """Round robin over the modules with a batch to run (as Policy.decide), a tail batch
        left waiting while it can."""
        names = self.queue_names
        drops, ready = [], {}
        for name in names:
            if queues[name]:
                d = self.decide_module(name, queues[name], now_s)
                drops += d.drops
                if d.batch:
                    ready[name] = d.batch
        for name in [n for n in ready if n in self.tail and self.loop in ready]:
            if self._can_wait(name, ready[name], ready[self.loop], now_s):
                del ready[name]
        for k in range(len(names)):
            i = (self._next + k) % len(names)
            if names[i] in ready:
                self._next = i + 1
                return Decision(names[i], ready[names[i]], drops)
        return Decision(None, [], drops)

    def _can_wait(self, module: str, batch: list, loop_batch: list, now_s: float) -> bool:
        """A tail batch below its efficient size whose every request can let WAIT loop batches
        of this size run first and still finish (this batch, then the rest at batch 1)."""
        if len(batch) >= self.tail[module]:
            return False
        loop_s = WAIT * self.table.latency(self.loop, len(loop_batch))
        extra = self.table.latency(module, len(batch)) - self.table.latency(module, 1)
        return all(now_s + loop_s + extra + remaining_s(self.program, self.table, r)
                   <= r.deadline_s for r in batch)
