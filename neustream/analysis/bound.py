"""An upper bound on diffusion goodput that respects deadlines: an LP relaxation per run.

NOTE: the model is the simulator's. One device runs one batch at a time; a batch is one call
of one module on b requests that are all at that module, and takes ``L_m(b)`` seconds (the
latency table). Request i arrives at a_i, is due at d_i and needs n_im calls of each module m
(its steps for a loop module, 1 otherwise), one after another. The bound is the optimum of
this LP, floored (the count of requests on time is an integer):

    max sum_i x_i,  0 <= x_i <= 1   (x_i: request i finished by d_i)
    calls:     sum_v y_imv = n_im x_i                 for every request i and module m
    latency:   sum_mv y_imv lat_mv <= (d_i - a_i) x_i  for every request i
    share:     sum_mv y_imv share_mv <= sum_k s_ik     for every request i, k over i's cells
    capacity:  sum_i s_ik <= |cell k|                  for every cell k of time

Why any schedule maps to a feasible point (so the LP optimum bounds every schedule): put
x_i = 1 for the requests on time, 0 for the others (and drop those). A call of m at batch
size b has latency L_m(b) and a share L_m(b)/b of its batch's device time; the points
(L_m(b), L_m(b)/b) for b = 1..B_i are dominated (both coordinates >=) by convex combinations
of the vertices v of their lower-left convex hull (lat_mv, share_mv), so writing each call as
such a combination gives y with the calls equation and left sides no larger than the
schedule's. Latency: a request is in one batch at a time and all its batches run inside
[a_i, d_i], so their latencies sum to at most d_i - a_i. Share and capacity: cut time into
cells at every arrival and deadline; let s_ik be request i's share of the part of each of its
batches that falls in cell k. Its batches lie inside its window, so only the cells of the
window get any; the shares of one batch sum to the batch's time, the device runs one batch at
a time, so a cell holds at most its length. B_i, the largest batch request i can be in: the
most windows that hold one instant of i's window (a batch's requests are all in their windows
while it runs), capped by the table. Coarser cells (a uniform grid, windows widened outward to
its lines) only loosen the LP, and are used when the exact cells would make it too large.

The LP ignores what makes a schedule hard: the order of modules, batches made of requests that
are at one module at one instant, and whole requests (x_i in [0, 1]). It is solved with
scipy's HiGHS (scipy.optimize.linprog).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

# Most (request, cell) pairs before cells are coarsened: keeps one LP to seconds on a laptop.
MAX_PAIRS = 60_000


@dataclass(frozen=True)
class Bound:
    requests: int  # most requests any schedule finishes on time (an upper bound)
    lp: float  # the LP's optimum (requests; ``requests`` is its floor)
    n: int  # requests of the trace
    cells: int  # cells of time the LP used
    exact_cells: bool  # cells cut at every arrival and deadline (else a coarser grid)
    seconds: float  # time to build and solve


def hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Vertices of the lower-left convex hull of (latency, share) points: every point is
    dominated by a convex combination of them. Sorted by latency, share falling."""
    front = []  # Pareto front: latency up, share strictly down
    for lat, share in sorted(set(points)):
        if not front or share < front[-1][1]:
            front.append((lat, share))
    out: list[tuple[float, float]] = []
    for p in front:  # lower hull (monotone chain)
        while len(out) >= 2:
            (x1, y1), (x2, y2) = out[-2], out[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:  # out[-1] not below
                out.pop()
            else:
                break
        out.append(p)
    return out


def call_options(table, module: str, most: int) -> list[tuple[float, float]]:
    """(latency, share) hull vertices of one call of ``module`` at batch sizes 1..most."""
    top = min(most, table.max_batch(module))
    return hull([(table.latency(module, b), table.latency(module, b) / b)
                 for b in range(1, top + 1)])


def most_batch(arrivals: np.ndarray, deadlines: np.ndarray) -> np.ndarray:
    """Per request, the most windows [a_j, d_j] that hold one instant of its own window."""
    # The count of open windows only rises at arrivals: its maximum over [a_i, d_i] is at a_i or
    # at an arrival inside the window.
    a_sorted, d_sorted = np.sort(arrivals), np.sort(deadlines)
    # open at arrival t: arrived at or before t, not yet due before t
    open_at = (np.searchsorted(a_sorted, a_sorted, side="right")
               - np.searchsorted(d_sorted, a_sorted, side="left"))
    out = np.empty(len(arrivals), dtype=int)
    for i, (a, d) in enumerate(zip(arrivals, deadlines)):
        lo = np.searchsorted(a_sorted, a, side="left")
        hi = np.searchsorted(a_sorted, d, side="right")
        out[i] = open_at[lo:hi].max()
    return out


def cells(arrivals: np.ndarray, deadlines: np.ndarray, max_pairs: int = MAX_PAIRS):
    """(edges, first, last, exact): cell k is [edges[k], edges[k+1]]; request i's window covers
    cells first[i]..last[i]-1. Exact cells cut at every arrival and deadline; when those give
    more than ``max_pairs`` (request, cell) pairs, a uniform grid whose lines widen each
    window outward."""
    edges = np.unique(np.concatenate([arrivals, deadlines]))
    first = np.searchsorted(edges, arrivals)
    last = np.searchsorted(edges, deadlines)
    if int((last - first).sum()) <= max_pairs:
        return edges, first, last, True
    t0, t1 = float(edges[0]), float(edges[-1])
    mean_window = float((deadlines - arrivals).mean())
    # pairs ~ sum (window / w + 1): pick w from that, then halve the count until it fits
    width = mean_window * len(arrivals) / max(max_pairs - 2 * len(arrivals), len(arrivals))
    while True:
        n = max(1, math.ceil((t1 - t0) / width))
        edges = t0 + (t1 - t0) * np.arange(n + 1) / n
        first = np.clip(np.searchsorted(edges, arrivals, side="right") - 1, 0, n - 1)
        last = np.clip(np.searchsorted(edges, deadlines, side="left"), first + 1, n)
        if int((last - first).sum()) <= max_pairs:
            return edges, first, last, False
        width *= 1.5


def goodput_bound(program, table, requests, max_pairs: int = MAX_PAIRS,
                  nodes: int = 0) -> Bound:
    """The bound on how many of ``requests`` (Request: arrival_s, deadline_s, steps) any
    schedule of ``program`` on ``table`` finishes by their deadlines: the LP's optimum floored;
    with ``nodes`` > 0, x_i binary and the best bound HiGHS proves within that many
    branch-and-bound nodes (never above the LP's)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    t_start = time.perf_counter()
    n = len(requests)
    if n == 0:
        return Bound(0, 0.0, 0, 0, True, 0.0)
    arr = np.array([r.arrival_s for r in requests], dtype=float)
    due = np.array([r.deadline_s for r in requests], dtype=float)
    most = most_batch(arr, due)
    edges, first, last, exact = cells(arr, due, max_pairs)
    options: dict[tuple[str, int], list] = {}

    # Columns: x_i (n), then per request its y_imv, then the s_ik. Rows: lo <= A z <= hi.
    triples = []  # (row, col, value)
    lo, hi = [], []
    col = n
    share_rows = []
    for i, r in enumerate(requests):
        lat_row, share_row = len(lo), len(lo) + 1
        lo += [-np.inf, -np.inf]
        hi += [0.0, 0.0]
        triples.append((lat_row, i, -(r.deadline_s - r.arrival_s)))
        for m in program.modules:
            key = (m.name, int(most[i]))
            if key not in options:
                options[key] = call_options(table, m.name, int(most[i]))
            calls_row = len(lo)
            lo.append(0.0)
            hi.append(0.0)
            triples.append((calls_row, i, -(r.steps if m.loop else 1)))
            for lat, share in options[key]:
                triples += [(calls_row, col, 1.0), (lat_row, col, lat), (share_row, col, share)]
                col += 1
        share_rows.append(share_row)
    cap_row0 = len(lo)
    lo += [-np.inf] * (len(edges) - 1)
    hi += list(np.diff(edges))
    for i in range(n):
        for k in range(int(first[i]), int(last[i])):
            triples += [(share_rows[i], col, -1.0), (cap_row0 + k, col, 1.0)]
            col += 1
    rows, cols, vals = zip(*triples)
    a = coo_matrix((vals, (rows, cols)), shape=(len(lo), col)).tocsr()
    cost = np.zeros(col)
    cost[:n] = -1.0
    upper = np.full(col, np.inf)
    upper[:n] = 1.0
    integrality = np.zeros(col)
    if nodes:
        integrality[:n] = 1
    res = milp(cost, constraints=LinearConstraint(a, lo, hi), bounds=Bounds(0, upper),
               integrality=integrality, options={"node_limit": nodes} if nodes else None)
    # An LP ends optimal; a MIP may stop at its node limit with a proven dual bound.
    if nodes and res.get("mip_dual_bound") is not None and np.isfinite(res.mip_dual_bound):
        best = -float(res.mip_dual_bound)
    elif res.status == 0:
        best = -float(res.fun)
    else:
        raise RuntimeError(f"goodput bound: the LP was not solved ({res.message})")
    # The floor, past the solver's tolerance (rounding up only loosens the bound).
    count = min(n, int(math.floor(best + 1e-3)))
    return Bound(count, best, n, len(edges) - 1, exact, time.perf_counter() - t_start)


def trace_bound(workload: str, latency, trace, slo: float) -> dict:
    """The bound of one trace file served on one table at one SLO scale, as a record: what it
    was computed from (goodput.py joins runs on trace, latency_table and slo) and
    ``bound_rps``, the bound's requests per second of trace (the summaries' denominator)."""
    import scipy

    from neustream.catalog.diffusion import get_program
    from neustream.latency import load_table
    from neustream.traces import check_positive, read_trace, to_requests

    program = get_program(workload)
    check_positive("slo", slo)
    table = load_table(latency, program)
    requests = to_requests(read_trace(trace, program), program, table, slo)
    b = goodput_bound(program, table, requests)
    span_s = max(r.arrival_s for r in requests)
    return {
        "workload": workload, "latency_table": str(latency), "trace": str(trace), "slo": slo,
        "n_requests": b.n, "bound_requests": b.requests, "lp_optimum": b.lp, "span_s": span_s,
        "bound_rps": b.requests / span_s if span_s > 0 else 0.0,
        "cells": b.cells, "exact_cells": b.exact_cells, "seconds": round(b.seconds, 3),
        "scipy": scipy.__version__,
    }
