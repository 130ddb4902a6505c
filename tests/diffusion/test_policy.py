"""Policy decisions on hand-made queues: caps, tiers, drops, Clockwork groups, slack."""

from __future__ import annotations

import numpy as np
import pytest

from neustream.latency import LatencyTable, TableError, pipeline_s, remaining_s
from neustream.policy import POLICIES, WHOLE_REQUESTS, Decision, make_policy
from neustream.policy.clockwork import ClockworkPolicy
from neustream.policy.neustream import NeuStreamPolicy, SlackPolicy, fixed_cap
from neustream.queues import EdfQueue
from tests.support import PALETTE, SD, fifo, make_request

CAP_TABLE = LatencyTable({"unet": {1: 1.0, 2: 1.5, 4: 2.0, 8: 4.0}})


def edf(*requests):
    q = EdfQueue()
    for r in requests:
        q.add(r)
    return q


def ids(rs):
    return [r.id for r in rs]


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize("system", sorted(POLICIES["diffusion"]))
@pytest.mark.parametrize("slo", [1.0, 0.5, 0, -2, float("nan")])
def test_slo_must_exceed_one(system, slo):
    with pytest.raises(ValueError, match="slo must be > 1"):
        make_policy(system, PALETTE, CAP_TABLE, slo)


def test_unknown_system_names_the_choices():
    with pytest.raises(ValueError) as e:
        make_policy("orca", PALETTE, CAP_TABLE, 2.0)
    msg = str(e.value)
    assert "orca" in msg
    for name in ("neustream", "neustream-slack", "clockwork"):
        assert name in msg


@pytest.mark.parametrize("delta", [0, -0.1, 1.5])
def test_step_delta_range(delta):
    with pytest.raises(ValueError, match="step_delta"):
        make_policy("neustream", PALETTE, CAP_TABLE, 2.0, step_delta=delta)


def test_policy_checks_the_table_covers_the_program():
    with pytest.raises(TableError, match="text_encoder"):
        make_policy("neustream", SD, CAP_TABLE, 2.0)


def test_make_policy_builds_the_named_class():
    assert isinstance(make_policy("neustream", PALETTE, CAP_TABLE, 2.0), NeuStreamPolicy)
    assert isinstance(make_policy("neustream-slack", PALETTE, CAP_TABLE, 2.0), SlackPolicy)
    cw = make_policy("clockwork", PALETTE, CAP_TABLE, 2.0)
    assert isinstance(cw, ClockworkPolicy) and cw.queue_names == (WHOLE_REQUESTS,)
    assert make_policy("neustream", SD, LatencyTable(
        {"text_encoder": {1: 1.0}, "unet": {1: 1.0}, "vae": {1: 1.0}}), 2.0).queue_names == (
        "text_encoder", "unet", "vae")
    assert Decision.empty() == Decision(None, [], [])


# -- fixed cap -------------------------------------------------------------------------------


@pytest.mark.parametrize("slo, delta, cap", [
    (2.0, 0.95, 3),  # budget 1.9: lat[3] = 1.75 < 1.9 <= lat[4] = 2.0
    (2.0, 1.0, 3),  # budget 2.0: lat[4] = 2.0 is not strictly below
    (2.1, 1.0, 4),  # budget 2.1: lat[4] = 2.0, lat[5] = 2.5
    (1.6, 1.0, 2),  # budget 1.6: lat[2] = 1.5, lat[3] = 1.75
    (1.05, 0.95, 1),  # budget < lat[1]: still one request per batch, not 0
    (1.4, 1.0, 1),
    (100.0, 0.95, 8),  # everything fits: the table's largest size
])
def test_fixed_cap_hand_table(slo, delta, cap):
    assert fixed_cap(CAP_TABLE, "unet", slo, delta) == cap
    p = make_policy("neustream", PALETTE, CAP_TABLE, slo, step_delta=delta)
    assert p.cap("unet") == cap


def test_fixed_cap_is_one_when_slo_times_delta_is_at_most_one():
    flat = LatencyTable({"unet": {1: 1.0, 8: 1.0}})  # batching is free
    assert fixed_cap(flat, "unet", 1.05, 0.95) == 1
    assert fixed_cap(flat, "unet", 1.0 / 0.95, 0.95) == 1
    assert fixed_cap(flat, "unet", 1.06, 0.95) == 8


# -- NeuStream: one module ------------------------------------------------------------------


def ns(slo=2.0, table=CAP_TABLE):
    return make_policy("neustream", PALETTE, table, slo)  # cap 3 on CAP_TABLE at slo 2


def test_admitted_tier_fifo_and_overflow_demoted():
    p = ns()
    rs = [make_request(i, arrival_s=10.0 - i, deadline_s=1000.0, steps=80, queued_s=10.0 - i)
          for i in range(5)]  # id 4 reached the module first
    d = p.decide_module("unet", fifo(*rs), now_s=10.0)
    assert d.module == "unet"
    assert ids(d.batch) == [4, 3, 2]  # first come first served, cap 3
    assert d.drops == []
    assert [r.demoted for r in rs] == [True, True, False, False, False]
    assert all(r.wait_rounds >= 1 for r in rs[:2])
    assert all(r.wait_rounds == 0 for r in rs[2:])


def test_admitted_requests_go_before_demoted_ones():
    p = ns()
    new = [make_request(i, i, 1000.0, 80) for i in range(3)]
    old = [make_request(10 + i, 0.0, 1000.0, 80, queued_s=-5.0) for i in range(2)]
    for r in old:  # waited longer, but were demoted
        r.demoted, r.wait_rounds = True, 1
    d = p.decide_module("unet", fifo(*old, *new), now_s=3.0)
    assert ids(d.batch) == [0, 1, 2]
    assert all(r.wait_rounds == 2 for r in old)  # passed over again


def test_leftover_slots_go_to_fewest_wait_rounds():
    p = ns()
    w = make_request(0, 5.0, 1000.0, 80)
    x = make_request(1, 0.0, 1000.0, 80, queued_s=0.0)
    y = make_request(2, 1.0, 1000.0, 80, queued_s=1.0)
    z = make_request(3, 0.5, 1000.0, 80, queued_s=0.5)
    v = make_request(4, 0.2, 1000.0, 80, queued_s=0.2)
    for r, rounds in ((x, 5), (y, 2), (z, 2), (v, 4)):
        r.demoted, r.wait_rounds = True, rounds
    d = p.decide_module("unet", fifo(w, x, y, z, v), now_s=6.0)
    # w is admitted; two leftover slots: wait_rounds 2 (z before y: entered earlier)
    assert ids(d.batch) == [0, 3, 2]
    assert (x.wait_rounds, v.wait_rounds) == (6, 5)  # passed over once more
    assert (y.wait_rounds, z.wait_rounds) == (2, 2)


def test_hopeless_requests_are_dropped_boundary_kept():
    p = ns()  # unet[1] = 1.0
    now = 5.0
    keep = make_request(0, 0.0, now + 10.0, 80, calls_done=70)  # exactly on time at batch 1
    drop = make_request(1, 0.0, now + 9.999, 80, calls_done=70)
    drop_low = make_request(2, 0.0, now + 2.0, 80, calls_done=75)
    drop_low.demoted = True
    d = p.decide_module("unet", fifo(keep, drop, drop_low), now_s=now)
    assert ids(d.batch) == [0]
    assert [(m, r.id) for m, r in d.drops] == [("unet", 1), ("unet", 2)]


def test_drops_free_slots_for_others():
    p = ns()
    rs = [make_request(i, 0.0, 1000.0, 80, queued_s=float(i)) for i in range(5)]
    rs[0].deadline_s = rs[1].deadline_s = 50.0  # 80 calls left at 1.0 s: hopeless at t=0
    d = p.decide_module("unet", fifo(*rs), now_s=0.0)
    assert ids(d.batch) == [2, 3, 4]
    assert sorted(r.id for _, r in d.drops) == [0, 1]


def _random_queue(rng, now, n):
    rs = []
    for i in range(n):
        steps = int(rng.integers(80, 100))
        r = make_request(i, 0.0, 0.0, steps, queued_s=float(rng.integers(0, 5)),
                         calls_done=int(rng.integers(0, steps)))
        r.deadline_s = now + float(rng.uniform(-0.5, 6)) * (steps - r.calls_done) * 0.5
        r.demoted = bool(rng.random() < 0.4)
        r.wait_rounds = int(rng.integers(1, 6)) if r.demoted else 0
        rs.append(r)
    return rs


@pytest.mark.parametrize("seed", range(40))
def test_neustream_decision_invariants(seed):
    rng = np.random.default_rng(seed)
    table = LatencyTable({"unet": {1: 0.5, 2: 0.6, 4: 0.8, 8: 1.2, 16: 2.4}})
    slo = float(rng.choice([1.05, 1.5, 2.0, 3.0, 5.0]))
    p = ns(slo, table)
    now = 10.0
    rs = _random_queue(rng, now, int(rng.integers(1, 40)))
    before = {r.id: (r.demoted, r.wait_rounds) for r in rs}
    q = fifo(*rs)
    d = p.decide_module("unet", q, now)
    hopeless = {r.id for r in rs if r.deadline_s < now + remaining_s(PALETTE, table, r)}
    batch, dropped = set(ids(d.batch)), {r.id for _, r in d.drops}
    assert 1 <= p.cap("unet") and len(d.batch) <= p.cap("unet")
    assert len(batch) == len(d.batch) and batch <= {r.id for r in rs}
    assert dropped == hopeless and not batch & dropped
    alive = [r for r in rs if r.id not in hopeless]
    assert len(d.batch) == min(len(alive), p.cap("unet"))  # no idle slot while requests wait
    admitted = sorted((r for r in alive if not before[r.id][0]), key=lambda r: (r.queued_s, r.id))
    k = min(len(admitted), p.cap("unet"))
    assert ids(d.batch[:k]) == ids(admitted[:k])  # FIFO admitted tier first
    low = [r for r in d.batch[k:]]
    assert all(before[r.id][0] for r in low)
    passed_low = [r for r in alive if before[r.id][0] and r.id not in batch]
    if low and passed_low:
        assert max(before[r.id][1] for r in low) <= min(before[r.id][1] for r in passed_low)
    for r in alive:
        if r.id not in batch:
            assert r.demoted and r.wait_rounds > before[r.id][1]
        else:
            assert r.wait_rounds == before[r.id][1]


# -- NeuStream: modules take turns -------------------------------------------------------------


SD_TABLE = LatencyTable({"text_encoder": {1: 0.5, 2: 0.6}, "unet": {1: 0.25, 2: 0.3},
                         "vae": {1: 1.0, 2: 1.2}})


def sd_queues(**by_module):
    return {m: fifo(*by_module.get(m, [])) for m in SD.module_names}


def test_decide_round_robin_over_modules():
    p = make_policy("neustream", SD, SD_TABLE, 3.0)
    qs = sd_queues(text_encoder=[make_request(0, 0, 100, 40, module="text_encoder")],
                   unet=[make_request(1, 0, 100, 40, stage=1)],
                   vae=[make_request(2, 0, 100, 40, stage=2, module="vae")])
    order = [p.decide(qs, 1.0).module for _ in range(6)]
    assert order == ["text_encoder", "unet", "vae"] * 2
    qs["unet"] = fifo()  # an empty module is skipped
    assert [p.decide(qs, 1.0).module for _ in range(4)] == ["text_encoder", "vae"] * 2


def test_decide_collects_drops_on_the_way_and_empty_decision():
    p = make_policy("neustream", SD, SD_TABLE, 3.0)
    hopeless = make_request(0, 0, 5.0, 40, module="text_encoder")  # needs 11.5 s
    ok = make_request(1, 0, 100, 40, stage=1)
    d = p.decide(sd_queues(text_encoder=[hopeless], unet=[ok]), 1.0)
    assert d.module == "unet" and ids(d.batch) == [1]
    assert [(m, r.id) for m, r in d.drops] == [("text_encoder", 0)]
    assert p.decide(sd_queues(), 1.0) == Decision(None, [], [])
    d = p.decide(sd_queues(vae=[make_request(2, 0, 1.5, 40, stage=2, module="vae")]), 1.0)
    assert d.module is None and d.batch == [] and [r.id for _, r in d.drops] == [2]


# -- Clockwork ---------------------------------------------------------------------------------

# pipeline_s for 80 steps: b=1 10.0, b=2 12.5, b=3 16.25, b=4 20.0
CW_TABLE = LatencyTable({"unet": {1: 0.125, 2: 0.15625, 4: 0.25}})


def cw(max_batch=None):
    return ClockworkPolicy(PALETTE, CW_TABLE, 2.0, max_batch=max_batch)


def test_clockwork_hand_pipeline_times():
    assert [pipeline_s(PALETTE, CW_TABLE, 80, b) for b in (1, 2, 3, 4)] == [10.0, 12.5, 16.25, 20.0]
    assert cw().cap(WHOLE_REQUESTS) == 4
    assert cw(2).cap(WHOLE_REQUESTS) == 2
    assert cw(99).cap(WHOLE_REQUESTS) == 4


def test_clockwork_only_same_steps_share_a_batch():
    a = make_request(0, 0, 30.0, 80, module=WHOLE_REQUESTS)
    b = make_request(1, 0, 30.0, 81, module=WHOLE_REQUESTS)
    c = make_request(2, 0, 30.0, 80, module=WHOLE_REQUESTS)
    d = cw().decide_module(WHOLE_REQUESTS, edf(a, b, c), 0.0)
    # group 80 at b=2 starts latest at 30 - 12.5 = 17.5, group 81 at 30 - 10.125
    assert sorted(ids(d.batch)) == [0, 2] and d.drops == []
    assert len({r.steps for r in d.batch}) == 1


@pytest.mark.parametrize("n, max_batch, size", [(3, None, 3), (4, None, 4), (6, None, 4), (6, 2, 2)])
def test_clockwork_largest_feasible_batch(n, max_batch, size):
    rs = [make_request(i, 0, 100.0 + i, 80, module=WHOLE_REQUESTS) for i in range(n)]
    d = cw(max_batch).decide_module(WHOLE_REQUESTS, edf(*rs), 0.0)
    assert ids(d.batch) == list(range(size))  # earliest deadlines first


def test_clockwork_batch_takes_requests_feasible_at_its_size():
    dl = [11.0, 13.0, 30.0, 30.0]
    rs = [make_request(i, 0, x, 80, module=WHOLE_REQUESTS) for i, x in enumerate(dl)]
    d = cw().decide_module(WHOLE_REQUESTS, edf(*rs), 0.0)
    # b=2 (12.5 s) is the largest size with 2 requests that can finish: ids 1, 2.
    # b=3 (16.25 s) would leave only 2 feasible requests. id 0 is not dropped: it
    # can still finish alone.
    assert ids(d.batch) == [1, 2] and d.drops == []


def test_clockwork_prefers_the_largest_batch_over_the_most_urgent_request():
    dl = [10.5, 30.0, 30.0]
    rs = [make_request(i, 0, x, 80, module=WHOLE_REQUESTS) for i, x in enumerate(dl)]
    d = cw().decide_module(WHOLE_REQUESTS, edf(*rs), 0.0)
    # b=1 must start by 0.5, b=2 (ids 1, 2) by 17.5: the group wins on its b=1 candidate
    # and runs its largest feasible batch, leaving id 0 (which cannot wait 12.5 s) behind.
    assert ids(d.batch) == [1, 2] and d.drops == []


def test_clockwork_earliest_latest_start_group_wins():
    a = make_request(0, 0, 50.0, 80, module=WHOLE_REQUESTS)
    b = make_request(1, 0, 12.0, 90, module=WHOLE_REQUESTS)  # 11.25 s alone: start by 0.75
    c = make_request(2, 0, 50.0, 80, module=WHOLE_REQUESTS)
    d = cw().decide_module(WHOLE_REQUESTS, edf(a, b, c), 0.0)
    assert ids(d.batch) == [1]
    b.deadline_s = 60.0  # now group 80 (latest start 50 - 12.5) is more urgent than 60 - 11.25
    d = cw().decide_module(WHOLE_REQUESTS, edf(a, b, c), 0.0)
    assert sorted(ids(d.batch)) == [0, 2]
    # Every (group, size) candidate counts: group 80 alone would start by 50 - 10 = 40,
    # later than group 90's 49 - 11.25 = 37.75, but its b=2 candidate (37.5) is earlier.
    b.deadline_s = 49.0
    d = cw().decide_module(WHOLE_REQUESTS, edf(a, b, c), 0.0)
    assert sorted(ids(d.batch)) == [0, 2]
    b.deadline_s = 48.5  # 37.25 < 37.5
    d = cw().decide_module(WHOLE_REQUESTS, edf(a, b, c), 0.0)
    assert ids(d.batch) == [1]


def test_clockwork_drops_requests_that_cannot_finish_alone():
    keep = make_request(0, 0, 15.0, 80, module=WHOLE_REQUESTS)  # 5 + 10 = 15: just in time
    drop = make_request(1, 0, 14.9, 80, module=WHOLE_REQUESTS)
    other = make_request(2, 0, 14.0, 81, module=WHOLE_REQUESTS)
    d = cw().decide_module(WHOLE_REQUESTS, edf(keep, drop, other), 5.0)
    assert ids(d.batch) == [0]
    assert sorted(r.id for _, r in d.drops) == [1, 2]
    assert all(m == WHOLE_REQUESTS for m, _ in d.drops)
    d = cw().decide(
        {WHOLE_REQUESTS: edf(make_request(3, 0, 1.0, 80, module=WHOLE_REQUESTS))}, 5.0)
    assert d.batch == [] and [r.id for _, r in d.drops] == [3]


@pytest.mark.parametrize("seed", range(30))
def test_clockwork_decision_invariants(seed):
    rng = np.random.default_rng(seed)
    p = cw(int(rng.integers(1, 5)))
    now = 3.0
    rs = [make_request(i, 0, now + float(rng.uniform(0, 40)), int(rng.integers(80, 83)),
                       module=WHOLE_REQUESTS) for i in range(int(rng.integers(1, 25)))]
    d = p.decide_module(WHOLE_REQUESTS, edf(*rs), now)
    dropped = {r.id for _, r in d.drops}
    assert dropped == {r.id for r in rs if now + pipeline_s(PALETTE, CW_TABLE, r.steps, 1) > r.deadline_s}
    assert not dropped & set(ids(d.batch))
    assert len(d.batch) <= p.cap(WHOLE_REQUESTS)
    if len(dropped) < len(rs):
        assert d.batch  # something feasible always runs
        steps = {r.steps for r in d.batch}
        assert len(steps) == 1
        run_s = pipeline_s(PALETTE, CW_TABLE, steps.pop(), len(d.batch))
        assert all(now + run_s <= r.deadline_s for r in d.batch)


# -- NeuStream-slack ---------------------------------------------------------------------------


def test_slack_hand_case():
    table = LatencyTable({"unet": {1: 1.0, 2: 1.5}})
    p = make_policy("neustream-slack", PALETTE, table, 2.0)
    b = make_request(1, 0, 100.0, 5, calls_done=1)  # room 98.5 / 4
    c = make_request(2, 0, 7.0, 4, calls_done=0)  # room (7 - 1.5) / 4 = 1.375 < 1.5 / 0.95
    d = p.decide_module("unet", fifo(b, c), 1.5)
    assert ids(d.batch) == [2]  # no batch affordable: the most urgent runs alone
    c.calls_done = 2  # room (7 - 3.5) / 2 = 1.75 >= 1.58
    d = p.decide_module("unet", fifo(b, c), 3.5)
    assert sorted(ids(d.batch)) == [1, 2]


@pytest.mark.parametrize("seed", range(30))
def test_slack_batch_members_afford_the_slowdown(seed):
    rng = np.random.default_rng(seed)
    table = LatencyTable({"unet": {1: 0.5, 2: 0.6, 4: 0.8, 8: 1.2, 16: 2.4}})
    p = make_policy("neustream-slack", PALETTE, table, 2.0, step_delta=0.9)
    now = 10.0
    rs = _random_queue(rng, now, int(rng.integers(1, 40)))
    d = p.decide_module("unet", fifo(*rs), now)
    hopeless = {r.id for r in rs if r.deadline_s < now + remaining_s(PALETTE, table, r)}
    assert {r.id for _, r in d.drops} == hopeless
    assert not hopeless & set(ids(d.batch))
    assert len(d.batch) <= table.max_batch("unet")
    if len(hopeless) < len(rs):
        assert d.batch
    b = len(d.batch)
    if b >= 2:
        slowdown = table.latency("unet", b) / table.latency("unet", 1) / 0.9
        for r in d.batch:
            assert (r.deadline_s - now) / remaining_s(PALETTE, table, r) >= slowdown
