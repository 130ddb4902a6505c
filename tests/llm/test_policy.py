"""LLM policies on hand-made queues, the latency model's fit, and the per-token SLO arithmetic."""

from __future__ import annotations

import pytest

from neustream.latency import LlmLatencyModel, TableError
from neustream.policy import POLICIES, make_llm_policy
from neustream.policy.llm.base import Phase
from neustream.policy.llm.neustream import NeuStreamLlmPolicy
from neustream.request import Status
from tests.support import MODEL, PREFILL, req


def ids(pairs):
    return [r.id for r, _ in pairs]


# -- latency model and SLO arithmetic ---------------------------------------------------------


def test_fit_recovers_the_generating_coefficients():
    assert MODEL.theta == pytest.approx((0.010, 0.001, 0.0), abs=1e-9)
    assert MODEL.decode_slope == pytest.approx(1e-6)
    assert MODEL.decode_intercepts == pytest.approx((0.008, 0.009, 0.011, 0.015))
    assert MODEL.prefill_alone_s(100) == pytest.approx(0.110)
    assert MODEL.prefill_alone_s(8) == pytest.approx(0.026)  # flat below the shortest row
    assert MODEL.prefill_s(400, 4 * 100**2) == pytest.approx(0.410)  # past the batch-1 rows: fit
    assert MODEL.decode_s(3, 300) == pytest.approx(0.010 + 300e-6)  # between b=2 and b=4
    assert MODEL.decode_s(16, 0) == pytest.approx(0.015 + 8 * 0.001)  # past the last size
    d = MODEL.describe()
    assert d["prefill_max_rel_error"] < 1e-9 and d["decode_max_rel_error"] < 1e-9


def test_mixed_step_counts_one_fixed_cost():
    assert MODEL.mixed_s(100, 10_000, 0, 0) == pytest.approx(MODEL.prefill_s(100, 10_000))
    assert MODEL.mixed_s(0, 0, 4, 400) == pytest.approx(MODEL.decode_s(4, 400))
    both = MODEL.prefill_s(100, 10_000) + MODEL.decode_s(4, 400) - 0.008
    assert MODEL.mixed_s(100, 10_000, 4, 400) == pytest.approx(both)


def test_token_deadlines_are_the_reference_sums():
    r = req(0, arrival_s=5.0, prompt=40, output=300, slo=1.5)
    tp = MODEL.prefill_alone_s(40)
    assert r.deadline_of(1) == pytest.approx(5.0 + 1.5 * tp)
    for j in (2, 3, 17, 300):
        # token j is due dslo x the isolated decode steps at contexts P+1 .. P+j-1 later
        decode = sum(MODEL.decode_alone_s(40 + i) for i in range(1, j))
        assert r.deadline_of(j) == pytest.approx(5.0 + 1.5 * tp + 1.5 * decode, rel=1e-12)
    assert r.deadline_s == r.deadline_of(300)


def test_late_first_token_is_not_on_time():
    """The artifact counted every first token as attained; here a TTFT miss costs a token."""
    r = req(0, prompt=32, output=3)
    late_first = r.deadline_of(1) + 0.001
    r.emit(late_first)
    r.emit(min(r.deadline_of(2), late_first + 0.001))
    r.emit(r.deadline_of(3))  # exactly on its deadline counts
    r.finish(r.token_s[-1])
    assert r.tokens_on_time() == 2 and r.status is Status.LATE
    row = r.row()
    assert row["ttft_ok"] is False and row["tokens_on_time"] == 2 and row["status"] == "late"
    assert row["token_s"] == r.token_s


def test_all_tokens_on_time_is_ok():
    r = req(0, prompt=32, output=3)
    for j in (1, 2, 3):
        r.emit(r.deadline_of(j) - 1e-6)
    r.finish(r.token_s[-1])
    assert r.status is Status.OK and r.row()["ttft_ok"]


@pytest.mark.parametrize("row,field", [
    ("prefill,1,0,0.1", "tokens >= 1"), ("decode,x,10,0.1", "batch_size"),
    ("fetch,1,10,0.1", "prefill, decode or vision"), ("decode,1,10,-1", "latency_s > 0")])
def test_bad_table_rows_name_the_line(tmp_path, row, field):
    path = tmp_path / "t.csv"
    good = "\n".join(f"prefill,{b},{t},{s}" for b, t, s in PREFILL[:3])
    path.write_text(f"module,batch_size,tokens,latency_s\n{good}\ndecode,1,64,0.01\n{row}\n")
    with pytest.raises(TableError) as e:
        LlmLatencyModel.from_csv(path)
    assert f"{path}:6" in str(e.value) and field in str(e.value)


def test_table_round_trip_and_missing_column(tmp_path):
    path = tmp_path / "t.csv"
    MODEL.to_csv(path)
    again = LlmLatencyModel.from_csv(path)
    assert again.theta == pytest.approx(MODEL.theta) and again.decode_sizes == MODEL.decode_sizes
    path.write_text("module,batch_size,latency_s\nprefill,1,0.1\n")
    with pytest.raises(TableError, match="missing column.*tokens"):
        LlmLatencyModel.from_csv(path)


# -- registry ---------------------------------------------------------------------------------


def test_registry_names_and_errors():
    assert set(POLICIES["llm"]) == {"neustream-llm", "neustream-mixed", "vllm-054", "vllm"}
    assert POLICIES["agent"] is POLICIES["llm"]  # every engine of a pipeline runs one
    assert not set(POLICIES["llm"]) & set(POLICIES["diffusion"])  # a name, one family
    with pytest.raises(ValueError, match="unknown LLM system 'orca'.*neustream-llm"):
        make_llm_policy("orca", MODEL)
    p = make_llm_policy("neustream-llm", MODEL, pred_steps=5, max_num_seqs=7)
    assert isinstance(p, NeuStreamLlmPolicy) and p.pred_steps == 5 and p.max_num_seqs == 7
    assert make_llm_policy("vllm", MODEL, pred_steps=5).name == "vllm"
    assert make_llm_policy("neustream-mixed", MODEL, pred_steps=5).pred_steps == 5  # shares it


# -- NeuStream ----------------------------------------------------------------------------------


def neustream(**kw) -> NeuStreamLlmPolicy:
    return NeuStreamLlmPolicy(MODEL, **kw)


def test_neustream_decodes_when_nothing_waits():
    running = [req(0, generated=3), req(1, generated=1)]
    d = neustream().decide([], running, 0.0)
    assert d.phase is Phase.DECODE and d.scheduled == [(running[0], 1), (running[1], 1)]
    assert neustream().decide([], [], 0.0).phase is Phase.IDLE


def test_neustream_prefills_shortest_first_within_limits_when_idle():
    waiting = [req(0, prompt=100), req(1, prompt=20), req(2, prompt=60), req(3, prompt=40)]
    d = neustream(max_num_seqs=3).decide(waiting, [], 0.0)
    assert d.phase is Phase.PREFILL and ids(d.scheduled) == [1, 3, 2]
    assert [n for _, n in d.scheduled] == [20, 40, 60]
    assert [r.id for r in d.waiting_order] == [1, 3, 2, 0] and not d.drops
    d = neustream(max_num_batched_tokens=70).decide(waiting, [], 0.0)  # 20 + 40 fit, 60 not
    assert ids(d.scheduled) == [1, 3]


def test_neustream_drops_what_cannot_make_its_first_token():
    p = neustream(pred_steps=0)  # no credit: the plain TTFT test
    fresh, stale = req(0, arrival_s=1.0, prompt=32), req(1, arrival_s=0.0, prompt=32)
    now = 1.0
    # stale: due at 2 x 42 ms = 0.084 s, now 1.0: even an isolated prefill (42 ms) is late
    d = p.decide([stale, fresh], [], now)
    assert d.drops == [stale] and ids(d.scheduled) == [0]
    # exactly enough slack for an isolated prefill is kept
    edge = req(2, arrival_s=0.0, prompt=32)
    t_edge = edge.deadline_of(1) - MODEL.prefill_alone_s(32)
    idle = p.decode_step_s([])
    assert not p.drop_test(edge, t_edge, idle) and p.drop_test(edge, t_edge + 1e-9, idle)


def test_neustream_credit_delays_drops():
    r = req(0, arrival_s=0.0, prompt=32, slo=2.0)
    t = r.deadline_of(1) - MODEL.prefill_alone_s(32) + 0.01  # 10 ms past the plain test
    p0 = neustream(pred_steps=0)
    assert p0.drop_test(r, t, p0.decode_step_s([]))
    p = neustream(pred_steps=30)
    # idle: credit = 30 x (dslo x isolated step - isolated step) = 30 x (2 x 8.032 ms - 8 ms)
    idle = p.decode_step_s([])
    assert idle == MODEL.decode_alone_s(0)
    assert p.credit(r, idle) == pytest.approx(30 * (2 * MODEL.decode_alone_s(32) - idle))
    assert not p.drop_test(r, t, idle)
    # a large batch running: its step (15 ms + context) exceeds the 16 ms allowance less context
    big = [req(10 + i, generated=1, prompt=1000) for i in range(16)]
    step = p.decode_step_s(big)
    assert step == pytest.approx(MODEL.decode_s(16, 16 * 1001))
    assert p.credit(r, step) < 0 and p.drop_test(r, r.deadline_of(1) - MODEL.prefill_alone_s(32) - 0.01, step)


def test_neustream_decode_estimate_is_corrected_by_measured_steps_not_remembered():
    p = neustream()
    running = [req(10 + i, generated=1, prompt=32) for i in range(4)]
    model_step = MODEL.decode_s(4, 4 * 33)
    for s in (2.0, 2.0, 40.0, 2.4):  # the host runs decode steps about twice the model's time
        assert p.decide([], running, 0.0).phase is Phase.DECODE
        p.observe(Phase.DECODE, s * model_step)
    assert p.correction == pytest.approx(2.2)  # a median: one slow step does not swing it
    assert p.decode_step_s(running) == pytest.approx(2.2 * model_step)
    p.observe(Phase.PREFILL, 5.0)  # prefill steps do not count
    assert p.correction == pytest.approx(2.2)
    # nothing running: the isolated step, however slow the last batch was
    assert p.decode_step_s([]) == MODEL.decode_alone_s(0)


def test_neustream_serves_lone_requests_after_a_burst():
    """The artifact's credit used the last measured decode step: after a large batch it stayed
    high, every lone arrival on the idle server was dropped, and nothing refreshed it."""
    from neustream.engine.llm.sim import simulate_llm
    burst = [req(i, arrival_s=0.0, prompt=64, output=40, slo=2.0) for i in range(32)]
    lone = [req(100 + i, arrival_s=10.0 * (i + 1), prompt=64, output=40, slo=2.0) for i in range(6)]
    simulate_llm(neustream(), MODEL, burst + lone)
    assert [r.status for r in lone] == [Status.OK] * 6


def test_neustream_inserts_the_largest_prefill_that_keeps_running_requests_on_time():
    p = neustream(pred_steps=0)
    running = [req(10, generated=5, prompt=32)]
    # running request's next token (6) is due at deadline_of(6); choose now so its slack fits
    # exactly a 2-prompt prefill plus the decode step of 3 sequences after it
    delay2 = MODEL.prefill_s(32, 2 * 16 * 16) + MODEL.decode_s(3, 37 + 2 * 17)
    now = running[0].deadline_of(6) - delay2 - 1e-9  # (rounding)
    waiting = [req(i, arrival_s=now, prompt=16, slo=100.0) for i in range(4)]  # loose SLOs
    d = p.decide(waiting, running, now)
    assert d.phase is Phase.PREFILL and ids(d.scheduled) == [0, 1]
    assert p.largest_feasible([(r, 16) for r in waiting], running, now + 1e-6) == 1
    late = running[0].deadline_of(6) - MODEL.prefill_s(16, 256) - MODEL.decode_s(2, 37 + 17) + 1e-6
    d = p.decide(waiting, running, max(late, now))
    assert d.phase is Phase.DECODE and d.scheduled == [(running[0], 1)]
    assert [r.id for r in d.waiting_order] == [0, 1, 2, 3] and not d.drops


def test_neustream_new_requests_second_token_bounds_the_batch():
    p = neustream(pred_steps=0)
    running = [req(10, generated=1, prompt=32, slo=100.0)]  # all the slack in the world
    tight = req(0, prompt=16, slo=2.0)
    loose = [req(i, prompt=16, slo=100.0) for i in (1, 2)]
    # at arrival the tight one can afford a prefill of itself alone but not of three
    now = 0.0
    one = MODEL.prefill_s(16, 256) + MODEL.decode_s(2, 33 + 17)
    three = MODEL.prefill_s(48, 3 * 256) + MODEL.decode_s(4, 33 + 3 * 17)
    assert one <= tight.deadline_of(2) < three
    d = p.decide([tight, *loose], running, now)
    # equal prompts: SJF ties break by arrival then id, so the tight one comes first and caps m
    m = p.largest_feasible([(r, 16) for r in (tight, *loose)], running, now)
    assert 1 <= m < 3 and d.phase is Phase.PREFILL and ids(d.scheduled) == [0, 1, 2][:m]


def test_neustream_caps_the_batch_by_free_sequence_slots():
    p = neustream(max_num_seqs=3, pred_steps=0)
    running = [req(10 + i, generated=1, slo=100.0) for i in range(2)]
    waiting = [req(i, prompt=16, slo=100.0) for i in range(3)]
    d = p.decide(waiting, running, 0.0)
    assert d.phase is Phase.PREFILL and ids(d.scheduled) == [0]
    full = [req(10 + i, generated=1, slo=100.0) for i in range(3)]
    assert p.decide(waiting, full, 0.0).phase is Phase.DECODE


def test_neustream_preempted_request_is_judged_on_its_next_token():
    p = neustream(pred_steps=0)
    r = req(0, prompt=32, output=10)
    r.num_generated, r.num_computed = 4, 0  # preempted after 4 tokens: recompute 36 tokens
    t = r.deadline_of(5) - MODEL.prefill_alone_s(36)
    idle = p.decode_step_s([])
    assert not p.drop_test(r, t, idle) and p.drop_test(r, t + 1e-9, idle)
    d = p.decide([r], [], t)
    assert d.scheduled == [(r, 36)]


# -- the baselines ------------------------------------------------------------------------------


def test_vllm054_prefills_fcfs_first_and_never_drops():
    p = make_llm_policy("vllm-054", MODEL, max_num_batched_tokens=100)
    waiting = [req(0, prompt=60, arrival_s=-100.0), req(1, prompt=30), req(2, prompt=20)]
    running = [req(10, generated=2)]
    d = p.decide(waiting, running, 0.0)
    assert d.phase is Phase.PREFILL and ids(d.scheduled) == [0, 1] and not d.drops
    assert p.decide([], running, 0.0).phase is Phase.DECODE
    full = make_llm_policy("vllm-054", MODEL, max_num_seqs=1)
    assert full.decide(waiting, running, 0.0).scheduled == [(running[0], 1)]
    assert p.decide([], [], 0.0).phase is Phase.IDLE


def test_vllm_v1_mixes_decodes_and_chunked_prefills_under_one_budget():
    p = make_llm_policy("vllm", MODEL, max_num_batched_tokens=50, max_num_seqs=4)
    running = [req(10, generated=3), req(11, generated=1)]
    waiting = [req(0, prompt=30), req(1, prompt=30), req(2, prompt=30)]
    d = p.decide(waiting, running, 0.0)
    assert d.phase is Phase.MIXED
    assert [(r.id, n) for r, n in d.scheduled] == [(10, 1), (11, 1), (0, 30), (1, 18)]
    # the chunked one continues first next step, as a running request
    chunked = waiting[1]
    chunked.num_computed, chunked.status = 18, Status.RUNNING
    d = p.decide(waiting[2:], [*running, chunked], 0.0)
    assert [(r.id, n) for r, n in d.scheduled] == [(10, 1), (11, 1), (1, 12), (2, 30)]
    assert p.decide([], running, 0.0).phase is Phase.DECODE
    assert p.decide(waiting, [], 0.0).phase is Phase.PREFILL
