"""The SLO-aware mixed-step policy (neustream-mixed) on hand-made queues and small simulations.

MODEL (tests/support.py): a prefill of x tokens takes 10 ms + 1 ms per token (16 tokens at
least), a decode step of b sequences 8 ms + 1 ms per sequence past the first + 1 us per context
token, and a mixed step both less the 8 ms counted twice.
"""

from __future__ import annotations

import pytest

from neustream.catalog.llm import LLM_PROGRAMS
from neustream.engine.llm.sim import simulate_llm
from neustream.policy import make_llm_policy
from neustream.policy.llm.base import Phase
from neustream.policy.llm.mixed import MixedPolicy, tokens_lost
from neustream.record import summarize_llm
from neustream.request import Status
from neustream.traces import make_llm_trace, to_llm_requests
from tests.support import MODEL, req


def mixed(**kw) -> MixedPolicy:
    return MixedPolicy(MODEL, **kw)


def decodes(n, slo=2.0, output=50, prompt=32):
    """``n`` running requests with one token out, all but the newest cached."""
    return [req(10 + i, generated=1, prompt=prompt, output=output, slo=slo) for i in range(n)]


def chunks(d):
    """The prefill part of a decision: (id, tokens) of every entry that is not a decode."""
    return [(r.id, n) for r, n in d.scheduled if not (r.num_generated and n == 1)]


# -- the SLO-sized chunk ------------------------------------------------------------------------


def test_slo_chunk_is_the_largest_that_fits_the_cap():
    p = mixed()
    a, b = req(0, prompt=16), req(1, prompt=32)
    full = [(a, 16), (b, 32)]
    # one decode at context 33: a step with x prefill tokens takes 10.033 ms + x ms (x >= 16)
    got = p.slo_chunk(full, 1, 33, 0.050)
    assert got == [(a, 16), (b, 23)]  # whole prompts in order, the last one cut
    assert p.step_s(got, 1, 33) <= 0.050 < p.step_s([(a, 16), (b, 24)], 1, 33)
    assert p.slo_chunk(full, 1, 33, 1.0) == full
    assert p.slo_chunk(full, 1, 33, 0.020) == []  # no chunk is that short (16 tokens: 26 ms)


def test_slo_chunk_counts_the_cached_part_of_a_prompt():
    p = mixed()
    r = req(0, prompt=64)
    r.num_computed = 40  # 24 tokens left
    assert p.slo_chunk([(r, 24)], 0, 0, 1.0) == [(r, 24)]
    assert p.step_s([(r, 24)], 0, 0) == pytest.approx(MODEL.prefill_s(24, 64**2 - 40**2))


def test_decodes_at_their_deadline_get_the_slo_chunk():
    p = mixed()
    running = decodes(4)
    now = running[0].deadline_of(2) - 0.040  # 40 ms of slack each
    w = req(0, arrival_s=now, prompt=64, slo=100.0)  # its first token is due in 7.4 s
    d = p.decide([w], running, now)
    floor = MODEL.decode_s(4, 4 * 33)
    # the largest x with 10 + x + floor - 8 ms <= 40 ms: x = 26 (all 64 would make 4 decodes late)
    assert d.phase is Phase.MIXED and chunks(d) == [(0, 26)]
    assert d.scheduled[:4] == [(r, 1) for r in running]
    assert MODEL.mixed_s(26, 26**2, 4, 132) <= 0.040 < MODEL.mixed_s(27, 27**2, 4, 132)
    assert floor < 0.040


def test_an_urgent_prompt_goes_whole_with_the_decodes():
    p = mixed()
    running = decodes(4, slo=100.0)  # decodes with all the slack in the world
    w = req(0, prompt=64, slo=2.0)  # first token due 148 ms after arrival
    d = p.decide([w], running, 0.0)
    assert d.phase is Phase.MIXED and chunks(d) == [(0, 64)]


def test_decodes_held_back_when_that_alone_makes_the_first_token():
    p = mixed()
    running = decodes(4, slo=100.0)
    w = req(0, prompt=64, slo=2.0)
    mixed_end = MODEL.mixed_s(64, 64**2, 4, 4 * 33)  # 77.1 ms
    alone = MODEL.prefill_s(64, 64**2)  # 74 ms
    now = w.deadline_of(1) - (alone + mixed_end) / 2  # on time only without the decodes
    d = p.decide([w], running, now)
    assert d.phase is Phase.PREFILL and d.scheduled == [(w, 64)]


def test_a_decode_only_step_spares_decodes_that_could_not_catch_up():
    p = mixed()
    w = req(0, prompt=128, slo=100.0)
    short = decodes(4, output=3)  # two tokens to go: a 138 ms step would cost them both
    now = short[0].deadline_of(2) - 0.015
    d = p.decide([w], short, now)
    assert d.phase is Phase.DECODE and chunks(d) == []
    long = decodes(4, output=500)  # they catch up after it: the prompt runs now
    d = p.decide([w], long, now)
    assert d.phase is Phase.MIXED and chunks(d) == [(0, 128)]


def test_tokens_lost():
    assert tokens_lost(0.0, 0.005, 10) == 0.0
    assert tokens_lost(0.010, 0.005, 10) == pytest.approx(3.0)  # the late token + 2 to catch up
    assert tokens_lost(0.010, 0.005, 10, one_step=True) == 1.0
    assert tokens_lost(0.100, 0.005, 10) == 10.0  # cannot catch up before it finishes
    assert tokens_lost(0.001, 0.0, 7) == 7.0  # never gains anything back


# -- drops, order, limits -----------------------------------------------------------------------


def test_drops_are_neustreams_test():
    p = mixed(pred_steps=0)
    fresh, stale = req(0, arrival_s=1.0, prompt=32), req(1, arrival_s=0.0, prompt=32)
    d = p.decide([stale, fresh], [], 1.0)
    assert d.drops == [stale] and chunks(d) == [(0, 32)]
    edge = req(2, prompt=32)
    t = edge.deadline_of(1) - MODEL.prefill_alone_s(32)
    idle = p.decode_step_s([])
    assert not p.drop_test(edge, t, idle) and p.drop_test(edge, t + 1e-9, idle)
    # with credit, the same rule and numbers as NeuStream's
    credited = make_llm_policy("neustream-llm", MODEL)
    for r in (stale, fresh, edge):
        for now in (0.05, 0.2, 1.0):
            assert mixed().drop_test(r, now, idle) == credited.drop_test(r, now, idle)


def test_the_credit_uses_a_predicted_step_so_lone_requests_follow_a_burst():
    burst = [req(i, prompt=64, output=40, slo=2.0) for i in range(32)]
    lone = [req(100 + i, arrival_s=10.0 * (i + 1), prompt=64, output=40, slo=2.0) for i in range(6)]
    p = mixed()
    simulate_llm(p, MODEL, burst + lone)
    assert [r.status for r in lone] == [Status.OK] * 6
    p._predicted_s = 0.010
    for _ in range(8):
        p.observe(Phase.MIXED, 0.100)  # a host ten times slower than the table...
    assert p.correction == pytest.approx(10.0)
    assert p.decode_step_s([]) == MODEL.decode_alone_s(0)  # ...but idle means the isolated step


def test_order_can_make_it_by_least_slack_then_late_ones_least_late_first():
    p = mixed()
    now = 1.0
    loose = req(0, arrival_s=now, prompt=32, slo=5.0)
    tight = req(1, arrival_s=now, prompt=32, slo=1.5)
    late = req(2, arrival_s=now - 0.1, prompt=32, slo=2.0)  # past its first token, credited
    later = req(3, arrival_s=now - 0.15, prompt=32, slo=2.0)
    d = p.decide([later, loose, late, tight], [], now)
    assert not d.drops
    assert [r.id for r in d.waiting_order] == [1, 0, 2, 3]


def test_a_prompt_in_progress_comes_first():
    p = mixed()
    started = req(5, prompt=64, slo=100.0)
    started.num_computed, started.status = 40, Status.RUNNING
    urgent = req(0, prompt=16, slo=1.5)
    d = p.decide([urgent], [started], 0.0)
    assert chunks(d)[0] == (5, 24)


def test_never_past_max_num_seqs_or_the_token_budget():
    running = decodes(2, slo=100.0)
    waiting = [req(i, prompt=40, slo=100.0) for i in range(10)]
    d = mixed(max_num_seqs=5).decide(waiting, running, 0.0)
    assert len(chunks(d)) == 3  # 5 sequences, 2 running
    d = mixed(max_num_batched_tokens=100).decide(waiting, running, 0.0)
    assert sum(n for _, n in d.scheduled) <= 100
    assert chunks(d) == [(0, 40), (1, 40), (2, 18)]  # the budget cuts the last prompt


def test_admission_stops_where_decodes_could_not_keep_pace():
    p = mixed()
    tight = decodes(4, slo=1.05)  # the 4-sequence step (11.1 ms) exceeds their 8.4 ms allowance
    w = req(0, prompt=16, slo=100.0)
    d = p.decide([w], tight, 0.0)
    assert chunks(d) == [] and d.phase is Phase.DECODE and d.waiting_order == [w]
    # an idle engine takes its first prompt whatever the recent prefill load (no stall)
    p.prefill_work.append((0.0, 10.0))
    assert p.prefill_load(0.0) == 0.9
    d = p.decide([w, req(1, prompt=16, slo=100.0)], [], 0.0)
    assert chunks(d)[:1] == [(0, 16)]


def test_observe_corrects_every_kind_of_step():
    p = mixed()
    running = decodes(2)
    w = req(0, prompt=16, slo=100.0)
    d = p.decide([w], running, 0.0)
    assert d.phase is Phase.MIXED and p._predicted_s == pytest.approx(MODEL.mixed_s(16, 256, 2, 66))
    p.observe(Phase.MIXED, 2 * p._predicted_s)
    assert p.correction == pytest.approx(2.0)
    assert p.step_s([], 2, 66) == pytest.approx(2 * MODEL.decode_s(2, 66))


# -- small simulations --------------------------------------------------------------------------


TINY = LLM_PROGRAMS["opt-tiny"]


def serve(system, rate, cv, slo, n=60, seed=0):
    reqs = to_llm_requests(make_llm_trace(TINY, rate, cv, n, seed), MODEL, slo, slo)
    simulate_llm(make_llm_policy(system, MODEL, max_num_seqs=64), MODEL, reqs)
    return summarize_llm([r.row() for r in reqs], {})


def test_beats_both_baselines_where_prefill_is_long_against_the_outputs():
    """Prompts of 40-462 tokens cost 50-470 ms on MODEL, outputs are 4-64 tokens of 8 ms steps:
    V1 makes every decode late at each arrival, NeuStream drops or holds back prompts; the mixed
    policy mixes where the decodes can make up for it and spares them where they cannot."""
    got = {s: serve(s, rate=10, cv=1, slo=1.5) for s in ("vllm", "neustream-llm", "neustream-mixed")}
    best = max(got["vllm"]["tokens_on_time"], got["neustream-llm"]["tokens_on_time"])
    assert got["neustream-mixed"]["tokens_on_time"] > 2 * best
    assert got["neustream-mixed"]["n_ok"] >= got["neustream-llm"]["n_ok"]


def test_every_request_once_and_steps_within_the_limits():
    reqs = to_llm_requests(make_llm_trace(TINY, 30, 3, 100, 4), MODEL, 2.0, 2.0)
    out = simulate_llm(mixed(max_num_seqs=8, max_num_batched_tokens=256), MODEL, reqs,
                       kv_capacity_tokens=2048, block_size=16)
    assert sorted(r.id for r in reqs) == list(range(100)) and all(r.status.terminal for r in reqs)
    assert out.n_done == 100
    assert all(b["size"] <= 8 and b["tokens"] <= 256 for b in out.batches)
    assert {b["module"] for b in out.batches} <= {"prefill", "decode", "mixed"}
