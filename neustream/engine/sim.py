"""Discrete-event simulator: a policy serves a trace on one virtual device.

NOTE: the device runs one batch at a time, and a batch takes the time the
latency table gives for its module and size (a whole-request batch: every
module, every step, at that size). Events sit in a heap keyed
(time_s, kind, seq): at equal times batch ends come first, then arrivals, then
the scheduling decision, so a decision sees everything that happened at its
instant; seq keeps ties in insertion order. Nothing here reads the wall clock,
so a trace and a seed give the same records every time.
"""

from __future__ import annotations

import heapq
import itertools
from enum import IntEnum
from typing import TYPE_CHECKING, Callable

from neustream.engine.base import Run
from neustream.latency import pipeline_s

if TYPE_CHECKING:
    from neustream.latency import LatencyTable
    from neustream.policy.base import Policy
    from neustream.request import Request


class Kind(IntEnum):
    """Event kinds; the value orders events at the same instant."""

    BATCH_END = 0
    ARRIVAL = 1
    DECIDE = 2


def simulate(policy: Policy, table: LatencyTable, requests: list[Request],
             progress: Callable[[Run], None] | None = None) -> Run:
    """Serve ``requests`` (ordered by arrival) under ``policy``; return the run."""
    run = Run(policy, requests)
    seq = itertools.count()
    heap: list = []

    def push(t: float, kind: Kind, payload=None) -> None:
        heapq.heappush(heap, (t, kind, next(seq), payload))

    for r in requests:
        push(r.arrival_s, Kind.ARRIVAL, r)
    busy = False
    decide_pending = False
    n_events = 0
    while heap:
        now, kind, _, payload = heapq.heappop(heap)
        n_events += 1
        if kind is Kind.ARRIVAL:
            run.arrive(payload, now)
        elif kind is Kind.BATCH_END:
            run.complete(*payload, now)
            busy = False
        elif kind is Kind.DECIDE:
            decide_pending = False
            d = policy.decide(run.queues, now)
            run.apply_drops(d, now)
            if d.batch:
                if policy.whole_requests:
                    dur = pipeline_s(policy.program, table, d.batch[0].steps, len(d.batch))
                else:
                    dur = table.latency(d.module, len(d.batch))
                run.start(d, now)
                push(now + dur, Kind.BATCH_END, (d.module, d.batch, now))
                busy = True
        # Decide again once something changed: a decision that ran nothing is
        # not retried until the next arrival or batch end.
        if kind is not Kind.DECIDE and not busy and not decide_pending and run.waiting():
            push(now, Kind.DECIDE)
            decide_pending = True
        if progress is not None and n_events % 20000 == 0:
            progress(run)
    run.close()
    return run
