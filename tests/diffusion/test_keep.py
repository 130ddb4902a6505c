"""neustream-keep: seats kept for started requests, headroom from the table, the tail waits."""

from __future__ import annotations

from neustream.engine.diffusion.sim import simulate
from neustream.latency import LatencyTable
from neustream.policy import make_policy
from neustream.policy.keep import KeepPolicy, efficient_size, headroom
from neustream.request import Request
from tests.support import PALETTE, SD, batching_table, fifo, make_request

# Palette (one loop module): pairs cost 1.5x, triples 2.5x, fours 3.5x a lone step.
STEPS = LatencyTable({"unet": {1: 1.0, 2: 1.5, 3: 2.5, 4: 3.5}})


def test_headroom_is_the_loops_share_of_the_work():
    assert headroom(PALETTE, STEPS, 3.0) == 1.0  # nothing runs between its loop steps
    table = batching_table(SD)
    h = headroom(SD, table, 3.0)
    # 40 steps at the largest batch within 3x a lone step, against encoder and VAE alone
    b = max(k for k in range(1, 33) if table.latency("unet", k) <= 3.0 * table.latency("unet", 1))
    loop = 40 * table.latency("unet", b) / b
    assert h == loop / (loop + table.latency("text_encoder", 1) + table.latency("vae", 1))
    assert 0 < h < 1  # encoder and VAE alone outweigh 40 steps in big batches here
    # the policy's headroom: step_delta, or the loop's share where that is larger
    assert KeepPolicy(SD, table, 3.0).headroom == 0.95
    assert KeepPolicy(SD, table, 3.0, step_delta=0.3).headroom == h
    assert KeepPolicy(PALETTE, STEPS, 3.0).headroom == 1.0
    assert efficient_size(STEPS, "unet") == 2  # 0.75 s a request, best 0.75 (b = 2)


def test_a_started_request_keeps_its_seat():
    p = KeepPolicy(PALETTE, STEPS, 3.0)
    # A started (5 of 10 steps done, room 2); B and C new with room 3 each.
    a = make_request(0, 0.0, 10.0, 10, calls_done=5)
    b = make_request(1, 0.0, 10.0 + 3 * 10, 10)
    c = make_request(2, 0.0, 10.0 + 3 * 10, 10)
    for r in (a, b, c):
        r.arrival_s = 0.0
    q = fifo(a, b, c)
    d = p.decide_module("unet", q, 0.0)
    # A (needs 1x), then B (a pair: 1.5x, within A's room 2); a triple (2.5x) A cannot afford
    assert [r.id for r in d.batch] == [0, 1] and not d.drops
    # the slack policy seats the two with most room and leaves A waiting
    slack = make_policy("neustream-slack", PALETTE, STEPS, 3.0)
    assert [r.id for r in slack.decide_module("unet", q, 0.0).batch] == [1, 2]


def test_new_requests_join_in_deadline_order():
    p = KeepPolicy(PALETTE, STEPS, 3.0)
    late = make_request(0, 0.0, 40.0, 10)
    soon = make_request(1, 0.0, 30.0, 10)
    mid = make_request(2, 0.0, 35.0, 10)
    d = p.decide_module("unet", fifo(late, soon, mid), 0.0)
    assert [r.id for r in d.batch] == [1, 2, 0]  # rooms 3, 3.5, 4 all afford a triple (2.5x)


def test_hopeless_requests_are_dropped():
    p = KeepPolicy(PALETTE, STEPS, 3.0)
    gone = make_request(0, 0.0, 5.0, 10)  # 10 s of work left, 5 s to go
    ok = make_request(1, 0.0, 30.0, 10)
    d = p.decide_module("unet", fifo(gone, ok), 0.0)
    assert [r.id for r in d.batch] == [1] and [r.id for _, r in d.drops] == [0]


def sd_queues(unet, vae):
    return {"text_encoder": fifo(), "unet": fifo(*unet), "vae": fifo(*vae)}


def test_the_tail_waits_for_a_fuller_batch_while_it_can():
    table = batching_table(SD)  # vae alone 0.05 s, unet 0.02 s a step
    p = KeepPolicy(SD, table, 3.0)
    assert p.tail == {"vae": efficient_size(table, "vae")} and p.tail["vae"] > 1
    p._next = 2  # the VAE's turn
    looping = make_request(0, 0.0, 5.0, 40, stage=1, calls_done=3)
    relaxed = make_request(1, 0.0, 5.0, 40, stage=2, module="vae")
    d = p.decide(sd_queues([looping], [relaxed]), 1.0)
    assert d.module == "unet"  # the lone VAE request can wait
    urgent = make_request(2, 0.0, 1.08, 40, stage=2, module="vae")  # 0.05 s left to spare
    d = p.decide(sd_queues([looping], [urgent]), 1.0)
    assert d.module == "vae" and [r.id for r in d.batch] == [2]
    d = p.decide(sd_queues([], [make_request(3, 0.0, 5.0, 40, stage=2, module="vae")]), 1.0)
    assert d.module == "vae"  # nothing else to run


def test_pairs_at_a_tight_slo_where_the_slack_policy_runs_alone():
    # Pairs cost 1.45x a lone step; at slo 1.5 the slack policy's 0.95 headroom never affords
    # them, so every request runs alone; neustream-keep runs pairs and finishes more on time.
    table = LatencyTable({"unet": {1: 0.01, 2: 0.0145}})
    reqs = lambda: [Request(i, 0.3 * (i // 2), 0.3 * (i // 2) + 1.5 * 0.8, 80) for i in range(16)]
    keep = simulate(make_policy("neustream-keep", PALETTE, table, 1.5), table, reqs())
    slack = simulate(make_policy("neustream-slack", PALETTE, table, 1.5), table, reqs())
    assert {b["size"] for b in slack.batches} == {1} and 2 in {b["size"] for b in keep.batches}
    assert keep.n_ok > slack.n_ok
