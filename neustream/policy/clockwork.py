"""Clockwork-style whole-request batching, the diffusion baseline.

NOTE: a batch runs whole requests end to end (every module, every step), so
only requests with the same step count can share one; each step count is its
own "model instance". When the device is free (closed loop: the engine asks
only then), each instance offers candidates (b, latest start = earliest deadline
among the requests that can still finish at batch b, minus the batch's run
time) for every b that has at least b such requests. The instance with the
earliest latest start wins and runs its largest such batch, earliest deadlines
first. A request that cannot finish even alone is dropped.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from functools import lru_cache
from typing import TYPE_CHECKING

from neustream.latency import pipeline_s
from neustream.policy.base import WHOLE_REQUESTS, Decision, Policy

if TYPE_CHECKING:
    from neustream.catalog.diffusion import Program
    from neustream.latency import LatencyTable
    from neustream.queues import RequestQueue


class ClockworkPolicy(Policy):
    name = "clockwork"
    whole_requests = True
    queue_order = "edf"

    def __init__(self, program: Program, table: LatencyTable, slo: float,
                 max_batch: int | None = None) -> None:
        super().__init__(program, table, slo)
        table_max = min(table.max_batch(m) for m in program.module_names)
        self.max_batch = min(max_batch or table_max, table_max)
        self.batch_s = lru_cache(maxsize=None)(
            lambda steps, b: pipeline_s(program, table, steps, b))

    def cap(self, module: str) -> int:
        return self.max_batch

    def decide_module(self, module: str, queue: RequestQueue, now_s: float) -> Decision:
        assert module == WHOLE_REQUESTS
        drops = []
        groups = defaultdict(list)  # steps -> requests, earliest deadline first
        for r in queue:
            if now_s + self.batch_s(r.steps, 1) > r.deadline_s:
                drops.append((WHOLE_REQUESTS, r))
            else:
                groups[r.steps].append(r)
        best = None  # (latest start, steps, batch)
        for steps, reqs in groups.items():
            deadlines = [r.deadline_s for r in reqs]
            for b in range(1, min(len(reqs), self.max_batch) + 1):
                run_s = self.batch_s(steps, b)
                first = bisect.bisect_left(deadlines, now_s + run_s)  # feasible from here
                if len(reqs) - first < b:
                    continue
                latest = deadlines[first] - run_s
                if best is None or latest < best[0]:
                    best = (latest, steps, None)
                if best[1] == steps:
                    best = (best[0], steps, reqs[first:first + b])  # largest feasible b wins
        if best is None:
            return Decision(WHOLE_REQUESTS, [], drops)
        return Decision(WHOLE_REQUESTS, best[2], drops)
