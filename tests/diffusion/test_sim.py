"""The simulator and its record: hand-computed runs, event order, invariants, determinism."""

from __future__ import annotations

import pytest

import neustream.engine.diffusion.sim as sim
from neustream.engine.diffusion.run import RunState
from neustream.engine.diffusion.sim import DiffusionSimulator, simulate
from neustream.latency import LatencyTable, pipeline_s
from neustream.policy import WHOLE_REQUESTS, make_policy
from neustream.record import BATCHES, REQUESTS, SUMMARY, read_summary
from neustream.request import Request, Status
from neustream.traces import make_trace, to_requests
from tests.support import DIT, PALETTE, SD, batching_table, read_jsonl, write_state


def serve(system, program, table, slo, requests, **kw):
    policy = make_policy(system, program, table, slo, **kw)
    return policy, simulate(policy, table, requests)


def outcome(run):
    return {r.id: (r.status.name.lower(), r.finish_s, r.dropped_s) for r in run.requests}


# -- hand-computed runs -----------------------------------------------------------------------

# Palette, one loop module. unet[1] = 1/8 s, unet[2] = 5/32 s: 80 steps alone take 10 s,
# 80 steps in pairs 12.5 s. At slo 2 and 3 NeuStream's cap is 2 (5/32 < 1/8 x 1.9).
PAIR = LatencyTable({"unet": {1: 0.125, 2: 0.15625}})


def three_requests(slo):
    """A at 0; B and C at 0.5; 80 steps each; deadline = arrival + slo x 10 s."""
    return [Request(i, a, a + slo * 10.0, 80) for i, a in enumerate([0.0, 0.5, 0.5])]


def test_neustream_hand_case_demoted_request_dropped():
    policy, run = serve("neustream", PALETTE, PAIR, 2.0, three_requests(2.0))
    assert policy.cap("unet") == 2
    # A runs alone for 4 calls (0 .. 0.5). At 0.5 A's batch ends and B, C arrive:
    # A and B (first in) run in pairs; C is demoted and never gets a slot.
    # A: 76 more calls -> 0.5 + 76 x 0.15625 = 12.375; B: 4 more alone -> 12.875.
    # C is hopeless once now + 10 > 20.5, i.e. at decision 0.5 + 65 x 0.15625 = 10.65625.
    assert outcome(run) == {
        0: ("ok", 12.375, None),
        1: ("ok", 12.875, None),
        2: ("dropped", None, 10.65625),
    }
    sizes = [b["size"] for b in run.batches]
    assert sizes == [1] * 4 + [2] * 76 + [1] * 4
    assert all(b["ids"] == [0, 1] for b in run.batches[4:80])
    assert run.requests[2].dropped_at == "unet"


def test_neustream_hand_case_demoted_request_served_late():
    table = LatencyTable({"unet": {1: 1.0, 2: 1.5}})  # cap 2 at slo 2
    reqs = [Request(0, 0.0, 100.0, 1), Request(1, 0.0, 100.0, 5), Request(2, 0.0, 7.0, 4)]
    _, run = serve("neustream", PALETTE, table, 2.0, reqs)
    # t=0: A, B admitted, C demoted. From 1.5 C fills A's slot at 1.5 s a call; its
    # batch-1 remaining time always fits (1.5 + 4, 3 + 3, 4.5 + 2, 6 + 1 <= 7), so it is
    # never dropped, but the pairs make it finish at 7.5 > 7.
    assert outcome(run) == {0: ("ok", 1.5, None), 1: ("ok", 7.5, None), 2: ("late", 7.5, None)}
    assert [(b["start_s"], b["ids"]) for b in run.batches] == [
        (0.0, [0, 1]), (1.5, [1, 2]), (3.0, [1, 2]), (4.5, [1, 2]), (6.0, [1, 2])]


def test_slack_hand_case_keeps_the_tight_request_alone():
    table = LatencyTable({"unet": {1: 1.0, 2: 1.5}})
    reqs = [Request(0, 0.0, 100.0, 1), Request(1, 0.0, 100.0, 5), Request(2, 0.0, 7.0, 4)]
    _, run = serve("neustream-slack", PALETTE, table, 2.0, reqs)
    # C's room per remaining second (5.5/4, then 4.5/3) is below 1.5/0.95 until t=3.5
    # (3.5/2 = 1.75), so it runs alone twice, then paired with B, and finishes in time.
    assert [(b["start_s"], b["ids"]) for b in run.batches] == [
        (0.0, [0, 1]), (1.5, [2]), (2.5, [2]), (3.5, [1, 2]), (5.0, [1, 2]), (6.5, [1]), (7.5, [1])]
    assert outcome(run) == {0: ("ok", 1.5, None), 1: ("ok", 8.5, None), 2: ("ok", 6.5, None)}


def test_clockwork_hand_case_runs_alone_then_drops():
    _, run = serve("clockwork", PALETTE, PAIR, 2.0, three_requests(2.0))
    # A alone 0..10. At 10, B and C (same steps, deadline 20.5) cannot finish as a pair
    # (10 + 12.5 > 20.5), so B runs alone until 20, and C (20 + 10 > 20.5) is dropped.
    assert outcome(run) == {0: ("ok", 10.0, None), 1: ("ok", 20.0, None), 2: ("dropped", None, 20.0)}
    assert [(b["module"], b["start_s"], b["end_s"], b["ids"]) for b in run.batches] == [
        (WHOLE_REQUESTS, 0.0, 10.0, [0]), (WHOLE_REQUESTS, 10.0, 20.0, [1])]
    assert run.requests[2].dropped_at == WHOLE_REQUESTS


def test_clockwork_hand_case_batches_same_steps():
    _, run = serve("clockwork", PALETTE, PAIR, 3.0, three_requests(3.0))
    # Deadlines 30, 30.5, 30.5: at 10 the pair fits (10 + 12.5 <= 30.5).
    assert outcome(run) == {0: ("ok", 10.0, None), 1: ("ok", 22.5, None), 2: ("ok", 22.5, None)}
    assert [b["ids"] for b in run.batches] == [[0], [1, 2]]


def test_hand_case_goodput_in_summary(tmp_path):
    _, run = serve("clockwork", PALETTE, PAIR, 2.0, three_requests(2.0))
    s = write_state(tmp_path, run, {"system": "clockwork"})
    assert (s["n_requests"], s["n_ok"], s["n_late"], s["n_dropped"]) == (3, 2, 0, 1)
    assert s["attainment"] == pytest.approx(2 / 3)
    assert s["span_s"] == 0.5 and s["goodput_rps"] == pytest.approx(2 / 0.5)
    assert s["system"] == "clockwork"
    rows = read_jsonl(tmp_path / REQUESTS)
    assert rows[2]["status"] == "dropped" and rows[2]["finish_s"] is None
    assert rows[2]["dropped_at"] == WHOLE_REQUESTS and rows[2]["dropped_s"] == 20.0
    assert "dropped_at" not in rows[0]
    assert rows[0]["modules"] == {WHOLE_REQUESTS: [0.0, 10.0]}


def test_sd_hand_case_three_modules():
    table = LatencyTable({"text_encoder": {1: 0.5, 2: 0.5}, "unet": {1: 0.25, 2: 0.25},
                          "vae": {1: 1.0, 2: 1.0}})
    reqs = [Request(0, 0.0, 100.0, 2), Request(1, 0.0, 100.0, 2)]
    _, run = serve("neustream", SD, table, 3.0, reqs)
    # Both arrive at 0: te [0, 0.5], unet x2 [0.5, 1.0], vae [1.0, 2.0]
    assert [(b["module"], b["start_s"], b["size"]) for b in run.batches] == [
        ("text_encoder", 0.0, 2), ("unet", 0.5, 2), ("unet", 0.75, 2), ("vae", 1.0, 2)]
    assert outcome(run) == {0: ("ok", 2.0, None), 1: ("ok", 2.0, None)}
    assert run.requests[0].module_s == {"text_encoder": [0.0, 0.5], "unet": [0.5, 1.0],
                                        "vae": [1.0, 2.0]}


# -- event order at equal times -------------------------------------------------------------


def test_event_kinds_order():
    Kind = DiffusionSimulator.Kind
    assert Kind.BATCH_END < Kind.ARRIVAL < Kind.DECIDE


def test_batch_end_before_arrival_and_decision_sees_both(monkeypatch):
    log = []

    class LoggingRun(RunState):
        def arrive(self, r, now_s):
            log.append(("arrive", now_s, r.id))
            super().arrive(r, now_s)

        def complete(self, module, batch, start_s, now_s):
            log.append(("end", now_s, [r.id for r in batch]))
            super().complete(module, batch, start_s, now_s)

    monkeypatch.setattr(sim, "RunState", LoggingRun)
    policy = make_policy("neustream", PALETTE, PAIR, 2.0)
    real_decide = policy.decide

    def decide(queues, now_s):
        log.append(("decide", now_s, sorted(r.id for q in queues.values() for r in q)))
        return real_decide(queues, now_s)

    policy.decide = decide
    # A (2 steps) runs 0 .. 0.125; B arrives exactly when A's first call ends.
    reqs = [Request(0, 0.0, 100.0, 2), Request(1, 0.125, 100.0, 2)]
    run = simulate(policy, PAIR, reqs)
    at = [e for e in log if e[1] == 0.125]
    assert at == [("end", 0.125, [0]), ("arrive", 0.125, 1), ("decide", 0.125, [0, 1])]
    assert run.batches[1]["ids"] == [0, 1] and run.batches[1]["start_s"] == 0.125


def test_simultaneous_arrivals_share_the_first_decision():
    reqs = [Request(i, 0.0, 100.0, 80) for i in range(2)]
    _, run = serve("neustream", PALETTE, PAIR, 2.0, reqs)
    assert run.batches[0]["ids"] == [0, 1]
    assert len(run.batches) == 80


# -- invariants over random traces ------------------------------------------------------------

CASES = [  # (program, rate, cv, slo, seed, n, growth of latency with batch size)
    (PALETTE, 0.3, 1.0, 3.0, 0, 60, 0.05),
    (PALETTE, 3.0, 4.0, 1.5, 1, 80, 0.05),
    (PALETTE, 12.0, 2.0, 3.0, 2, 80, 0.05),
    (PALETTE, 2.0, 2.0, 3.0, 1, 60, 0.6),  # batching barely helps: a late request
    (SD, 1.0, 0.5, 1.2, 3, 80, 0.05),
    (SD, 6.0, 2.0, 3.0, 4, 80, 0.05),
    (SD, 8.0, 2.0, 2.0, 1, 60, 0.3),
    (DIT, 2.0, 4.0, 2.0, 5, 40, 0.05),
]
SYSTEMS = ["neustream", "neustream-slack", "neustream-keep", "clockwork"]


def run_case(tmp_path, system, program, rate, cv, slo, seed, n, growth=0.05):
    table = batching_table(program, growth)
    policy = make_policy(system, program, table, slo)
    requests = to_requests(make_trace(program, rate, cv, n, seed), program, table, slo)
    run = simulate(policy, table, requests)
    out = tmp_path / f"{system}-{program.name}-{rate}-{cv}-{slo}-{seed}-{growth}"
    summary = write_state(out, run, {"system": system, "workload": program.name})
    return policy, table, out, summary


def check_record(policy, table, out, summary, n):
    program = policy.program
    rows = read_jsonl(out / REQUESTS)
    batches = read_jsonl(out / BATCHES)
    assert read_summary(out / SUMMARY) == summary
    # Every request exactly once, with a terminal status that matches its times.
    assert sorted(r["id"] for r in rows) == list(range(n))
    for r in rows:
        assert r["status"] in ("ok", "late", "dropped")
        if r["status"] == "dropped":
            assert r["finish_s"] is None and r["dropped_s"] >= r["arrival_s"]
            assert r["dropped_at"] in policy.queue_names
        else:
            assert (r["finish_s"] <= r["deadline_s"]) == (r["status"] == "ok")
            assert r["finish_s"] > r["arrival_s"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "late", "dropped")}
    assert (summary["n_ok"], summary["n_late"], summary["n_dropped"]) == (
        counts["ok"], counts["late"], counts["dropped"])
    assert summary["n_ok"] + summary["n_late"] + summary["n_dropped"] == summary["n_requests"] == n
    # One device: batches run one at a time, each as long as the table says.
    by_id = {r["id"]: r for r in rows}
    prev_end = 0.0
    for b in batches:
        assert b["module"] in policy.queue_names
        assert 1 <= b["size"] == len(b["ids"]) == len(set(b["ids"])) <= policy.cap(b["module"])
        assert b["start_s"] >= prev_end - 1e-12
        prev_end = b["end_s"]
        if policy.whole_requests:
            steps = {by_id[i]["steps"] for i in b["ids"]}
            assert len(steps) == 1
            want = pipeline_s(program, table, steps.pop(), b["size"])
        else:
            want = table.latency(b["module"], b["size"])
        assert b["end_s"] - b["start_s"] == pytest.approx(want)
        for i in b["ids"]:
            assert b["start_s"] >= by_id[i]["arrival_s"]
    # Per request: dropped ones never run after the drop; finished ones ran every call.
    runs = {i: [] for i in by_id}
    for b in batches:
        for i in b["ids"]:
            runs[i].append(b)
    for i, r in by_id.items():
        mine = runs[i]
        if r["status"] == "dropped":
            assert all(b["end_s"] <= r["dropped_s"] for b in mine)
            continue
        assert max(b["end_s"] for b in mine) == r["finish_s"]
        if policy.whole_requests:
            assert [b["module"] for b in mine] == [WHOLE_REQUESTS]
        else:
            want = [m.name for m in program.modules for _ in range(r["steps"] if m.loop else 1)]
            assert [b["module"] for b in mine] == want  # in program order, `steps` loop calls
    return rows, batches


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].name}-r{c[1]}-cv{c[2]}-slo{c[3]}-g{c[6]}")
def test_record_invariants(tmp_path, system, case):
    policy, table, out, summary = run_case(tmp_path, system, *case)
    check_record(policy, table, out, summary, case[5])


def test_invariant_cases_exercise_every_outcome(tmp_path):
    # The random cases above are only a check if they contain drops, late and on-time requests.
    seen = set()
    for system in SYSTEMS:
        for case in CASES[1:4]:
            seen |= {(system, s) for s in ("ok", "late", "dropped")
                     if run_case(tmp_path, system, *case)[3][f"n_{s}"] > 0}
    assert {("neustream", "ok"), ("neustream", "late"), ("neustream", "dropped"), ("clockwork", "ok"),
            ("clockwork", "dropped"), ("neustream-slack", "dropped")} <= seen


@pytest.mark.parametrize("system", SYSTEMS)
def test_same_inputs_same_records(tmp_path, system):
    a = run_case(tmp_path / "a", system, SD, 5.0, 2.0, 2.0, 7, 60)[2]
    b = run_case(tmp_path / "b", system, SD, 5.0, 2.0, 2.0, 7, 60)[2]
    for name in (REQUESTS, BATCHES, SUMMARY):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / BATCHES).stat().st_size > 0


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("program", [PALETTE, SD], ids=lambda p: p.name)
def test_light_load_meets_nearly_every_slo(tmp_path, system, program):
    # Mean gap 10 s against about 2 s of batch-1 work per request, regular arrivals.
    s = run_case(tmp_path, system, program, 0.1, 0.5, 3.0, 0, 60)[3]
    assert s["attainment"] >= 0.98
    assert s["n_dropped"] + s["n_late"] <= 1


def test_neustream_beats_clockwork_on_a_bursty_trace(tmp_path):
    # Batching costs 5% a request, but Palette's 20 step counts rarely match, so
    # Clockwork runs mostly at batch 1; NeuStream batches across steps.
    common = dict(program=PALETTE, rate=2.0, cv=4.0, slo=3.0, seed=3, n=150)
    ns = run_case(tmp_path, "neustream", **common)[3]
    cw = run_case(tmp_path, "clockwork", **common)[3]
    assert ns["goodput_rps"] >= cw["goodput_rps"]
    assert ns["n_ok"] >= 1.5 * cw["n_ok"]


def test_record_rows_carry_workload_fields(tmp_path):
    policy, table, out, summary = run_case(tmp_path, "neustream", DIT, 0.5, 1.0, 3.0, 1, 10)
    rows = read_jsonl(out / REQUESTS)
    trace = make_trace(DIT, 0.5, 1.0, 10, 1)
    assert [r["class_label"] for r in rows] == [t["class_label"] for t in trace]
    assert [r["steps"] for r in rows] == [t["steps"] for t in trace]
    ok = [r for r in rows if r["status"] != "dropped"]
    assert ok and all(set(r["modules"]) == {"dit", "vae"} for r in ok)
    assert not list(out.glob("*.tmp"))


def test_all_requests_terminal_after_simulate():
    table = batching_table(PALETTE)
    reqs = to_requests(make_trace(PALETTE, 20.0, 2.0, 50, 0), PALETTE, table, 1.2)
    run = simulate(make_policy("neustream", PALETTE, table, 1.2), table, reqs)
    assert all(r.status >= Status.OK for r in run.requests)
    assert run.n_done == 50 and run.n_ok == sum(r.status is Status.OK for r in reqs)
    assert not run.waiting()


def test_record_has_the_design_fields(tmp_path):
    policy, table, out, summary = run_case(tmp_path, "neustream", SD, 8.0, 2.0, 1.5, 0, 40)
    rows = read_jsonl(out / REQUESTS)
    for r in rows:
        assert {"id", "arrival_s", "deadline_s", "finish_s", "status", "modules"} <= set(r)
        assert ("dropped_at" in r) == (r["status"] == "dropped")
        for enter_s, leave_s in r["modules"].values():
            assert leave_s is not None and r["arrival_s"] <= enter_s <= leave_s
    assert any(r["status"] == "dropped" for r in rows)
    for b in read_jsonl(out / BATCHES):
        assert set(b) == {"module", "start_s", "end_s", "size", "ids"}
    assert {"n_requests", "n_ok", "n_late", "n_dropped", "attainment", "goodput_rps",
            "system", "workload"} <= set(summary)
    assert summary["attainment"] == pytest.approx(summary["n_ok"] / 40)


@pytest.mark.parametrize("system", SYSTEMS)
def test_finishing_exactly_at_the_deadline_is_on_time(system):
    # 80 steps x 0.125 s = 10 s alone, deadline exactly 10 s after arrival.
    _, run = serve(system, PALETTE, PAIR, 2.0, [Request(0, 1.0, 11.0, 80)])
    assert outcome(run) == {0: ("ok", 11.0, None)}
