"""The deadline-aware goodput bound: never below the best schedule, close to it on toys."""

from __future__ import annotations

import random
from functools import lru_cache
from itertools import combinations

import numpy as np
import pytest

from neustream.analysis.bound import call_options, cells, goodput_bound, hull, most_batch
from neustream.catalog.diffusion import Module, Program
from neustream.engine.diffusion.sim import simulate
from neustream.latency import LatencyTable
from neustream.policy import POLICIES, make_policy
from neustream.request import Request
from neustream.traces import make_trace, to_requests
from tests.support import PALETTE, SD, batching_table

# Toys with whole seconds: one loop module, or a one-call encoder then a loop module.
ONE = Program("toy1", "toy", (Module("unet", loop=True, max_batch=4),), (2, 3), 0)
TWO = Program("toy2", "toy", (Module("enc", loop=False, max_batch=4),
                              Module("unet", loop=True, max_batch=4)), (2, 2), 0)
UNET = {1: 2.0, 2: 3.0, 3: 4.0, 4: 5.0}
TOYS = [(ONE, LatencyTable({"unet": UNET})),
        (TWO, LatencyTable({"enc": {1: 1.0, 2: 1.0, 3: 2.0, 4: 2.0}, "unet": UNET}))]


def optimum(program, table, reqs) -> int:
    """Most requests on time over every schedule: a search over batch sequences, each batch
    started as early as the device and its requests allow (whole seconds in, whole seconds
    out, so these schedules reach the optimum), a request given up once it cannot finish."""
    need = [[r.steps if m.loop else 1 for m in program.modules] for r in reqs]
    ends = [np.cumsum(c).tolist() for c in need]  # calls done when each module is through
    lat = {(m.name, b): table.latency(m.name, b) for m in program.modules
           for b in range(1, table.max_batch(m.name) + 1)}

    def stage(i, done):
        return next(k for k, e in enumerate(ends[i]) if done < e)

    def alone_s(i, done):  # batch-1 seconds request i still needs
        return sum(lat[m.name, 1] * max(0, min(need[i][k], ends[i][k] - done))
                   for k, m in enumerate(program.modules))

    @lru_cache(maxsize=None)
    def best(free_s, done, ready):
        ok = sum(d == e[-1] for d, e in zip(done, ends))
        at = {}
        for i, d in enumerate(done):
            if 0 <= d < ends[i][-1]:
                at.setdefault(stage(i, d), []).append(i)
        for k, waiting in at.items():
            m = program.modules[k]
            for b in range(1, min(len(waiting), table.max_batch(m.name)) + 1):
                for batch in combinations(waiting, b):
                    end = max([free_s] + [ready[i] for i in batch]) + lat[m.name, b]
                    if any(end > reqs[i].deadline_s for i in batch):
                        continue
                    d2, r2 = list(done), list(ready)
                    for i in batch:
                        d2[i] += 1
                        r2[i] = end
                    for i in range(len(reqs)):  # give up what cannot finish any more
                        if 0 <= d2[i] < ends[i][-1] and \
                                max(end, r2[i]) + alone_s(i, d2[i]) > reqs[i].deadline_s:
                            d2[i] = -1
                    ok = max(ok, best(end, tuple(d2), tuple(r2)))
        return ok

    return best(0.0, (0,) * len(reqs), tuple(r.arrival_s for r in reqs))


def toy(seed: int):
    """A random toy: 3-5 requests arriving in 0..6 s, each due its batch-1 time plus 0-100%."""
    rng = random.Random(seed)
    program, table = TOYS[seed % 2]
    reqs = []
    for i in range(rng.randint(3, 5)):
        a = float(rng.randint(0, 6))
        steps = rng.randint(*program.steps)
        alone = sum((steps if m.loop else 1) * table.latency(m.name, 1) for m in program.modules)
        reqs.append(Request(i, a, a + alone + rng.randint(0, int(alone)), steps))
    return program, table, sorted(reqs, key=lambda r: (r.arrival_s, r.id))


def test_bound_is_at_least_the_optimum_and_close_on_toys():
    gaps, mip_gaps = [], []
    for seed in range(30):
        program, table, reqs = toy(seed)
        opt = optimum(program, table, reqs)
        lp = goodput_bound(program, table, reqs)
        mip = goodput_bound(program, table, reqs, nodes=200)
        assert lp.exact_cells
        assert opt <= mip.requests <= lp.requests <= opt + 1, (seed, opt, mip, lp)
        gaps.append(lp.requests - opt)
        mip_gaps.append(mip.requests - opt)
    # The LP is exact on most toys (integers and co-presence are what it relaxes).
    assert sum(g == 0 for g in gaps) >= 15, gaps
    assert sum(mip_gaps) <= sum(gaps)


def test_bound_by_hand():
    # Two requests at 0 due at 6, two steps each: in pairs 2 x 3 s, both on time; alone
    # 4 s each, only one. A third due at 4.5 could only run alone (4 s) before the others.
    program, table = TOYS[0]
    pair = [Request(0, 0.0, 6.0, 2), Request(1, 0.0, 6.0, 2)]
    assert optimum(program, table, pair) == 2
    assert goodput_bound(program, table, pair).requests == 2
    tight = [Request(0, 0.0, 5.0, 2), Request(1, 0.0, 5.0, 2)]  # pairs take 6 s: one alone
    assert optimum(program, table, tight) == 1
    assert goodput_bound(program, table, tight).requests == 1


def test_hull_dominates_every_batch_size():
    table = batching_table(SD)
    for m in SD.module_names:
        verts = call_options(table, m, 32)
        lats = [v[0] for v in verts]
        assert lats == sorted(lats) and verts[0] == (table.latency(m, 1), table.latency(m, 1))
        for b in range(1, 33):
            lat, share = table.latency(m, b), table.latency(m, b) / b
            # some convex combination of two neighbouring vertices is no worse in both
            ok = any(share >= s - 1e-12 for ll, s in verts if ll <= lat + 1e-12)
            j = next((k for k, v in enumerate(verts) if v[0] > lat), None)
            if j:
                (x1, y1), (x2, y2) = verts[j - 1], verts[j]
                ok |= share >= y1 + (y2 - y1) * (lat - x1) / (x2 - x1) - 1e-12
            assert ok, (m, b)
    assert hull([(1, 1), (2, 0.5), (3, 0.45), (4, 0.25), (5, 0.3)]) == [(1, 1), (2, 0.5), (4, 0.25)]


def test_most_batch_counts_open_windows():
    a = np.array([0.0, 1.0, 2.0, 10.0])
    d = np.array([3.0, 1.5, 4.0, 12.0])
    # [0,3] meets [1,1.5] and [2,4] but not both at once; [10,12] is alone
    assert most_batch(a, d).tolist() == [2, 2, 2, 1]


def test_coarse_cells_only_loosen():
    program, table = PALETTE, batching_table(PALETTE)
    reqs = to_requests(make_trace(program, 40, 2, 60, 3), program, table, 2.0)
    exact = goodput_bound(program, table, reqs)
    coarse = goodput_bound(program, table, reqs, max_pairs=300)
    assert exact.exact_cells and not coarse.exact_cells and coarse.cells < exact.cells
    assert coarse.lp >= exact.lp - 1e-6
    arr = np.array([r.arrival_s for r in reqs])
    due = np.array([r.deadline_s for r in reqs])
    edges, first, last, _ = cells(arr, due, 300)
    assert (edges[first] <= arr).all() and (edges[last] >= due - 1e-9).all()


@pytest.mark.parametrize("program", [SD, PALETTE], ids=lambda p: p.name)
@pytest.mark.parametrize("rate,slo", [(30.0, 2.0), (60.0, 4.0), (5.0, 1.5)])
def test_no_policy_beats_the_bound(program, rate, slo):
    table = batching_table(program, growth=0.1)
    reqs = lambda: to_requests(make_trace(program, rate, 2, 60, 1), program, table, slo)
    bound = goodput_bound(program, table, reqs())
    for system in POLICIES["diffusion"]:
        run = simulate(make_policy(system, program, table, slo), table, reqs())
        assert run.n_ok <= bound.requests, (system, run.n_ok, bound)


def test_empty_and_relaxed_traces():
    program, table = TOYS[0]
    assert goodput_bound(program, table, []).requests == 0
    far = [Request(i, 10.0 * i, 10.0 * i + 9, 2) for i in range(4)]  # each alone in time
    assert goodput_bound(program, table, far).requests == 4 == optimum(program, table, far)
