"""The LLM simulator, traces, records and CLI: hand-computed runs, invariants, determinism."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from neustream.catalog.llm import LLM_PROGRAMS, LMSYS_PROMPT_TOKENS, LMSYS_PROMPT_TOKENS_ORIGINAL
from neustream.cli import main
from neustream.engine.llm.run import step_cost
from neustream.engine.llm.sim import LlmSimulator, simulate_llm
from neustream.policy import make_llm_policy
from neustream.record import summarize_llm
from neustream.request import Status
from neustream.traces import (
    TraceError,
    make_llm_trace,
    read_llm_trace,
    to_llm_requests,
    write_trace,
)
from tests.support import MODEL, req

TINY = LLM_PROGRAMS["opt-tiny"]


def run(system, requests, **kw):
    policy = make_llm_policy(system, MODEL, max_num_seqs=kw.pop("max_num_seqs", 64),
                             max_num_batched_tokens=kw.pop("budget", 8192))
    return simulate_llm(policy, MODEL, requests, **kw)


# -- hand-computed runs -------------------------------------------------------------------------


@pytest.mark.parametrize("system", ["neustream-llm", "neustream-mixed", "vllm-054", "vllm"])
def test_one_request_alone(system):
    r = req(0, prompt=16, output=3, slo=3.0)
    out = run(system, [r])
    # prefill 10 + 16 ms; decodes at contexts 17 and 18: 8.017 and 8.018 ms
    assert r.token_s == pytest.approx([0.026, 0.034017, 0.042035])
    assert r.status is Status.OK and r.finish_s == pytest.approx(0.042035)
    assert [(b["module"], b["size"], b["tokens"]) for b in out.batches] == [
        ("prefill", 1, 16), ("decode", 1, 1), ("decode", 1, 1)]


def test_short_prompts_cost_the_shortest_measured_prefill():
    r = req(0, prompt=10, output=1, slo=3.0)
    run("vllm", [r])
    assert r.token_s == pytest.approx([0.026])  # host-bound floor: flat below 16 tokens


def test_second_arrival_neustream_and_054_alternate_vllm_mixes():
    def two():
        return [req(0, prompt=16, output=4, slo=5.0), req(1, arrival_s=0.030, prompt=16, output=2, slo=5.0)]

    a, b = two()
    out = run("vllm", [a, b])
    # B arrives during A's first decode (0.026 .. 0.034017); the next step mixes B's prefill with
    # A's decode: 10 + 16 ms prefill + 8 ms + 1 us x 18 for the decode, less the 8 ms counted twice
    assert [x["module"] for x in out.batches[:3]] == ["prefill", "decode", "mixed"]
    assert out.batches[2]["end_s"] - out.batches[2]["start_s"] == pytest.approx(0.026 + 18e-6)
    for system in ("neustream-llm", "vllm-054"):
        a, b = two()
        out = run(system, [a, b])
        assert [x["module"] for x in out.batches[:4]] == ["prefill", "decode", "prefill", "decode"]
        assert out.batches[3]["ids"] == [0, 1] and a.status is b.status is Status.OK


def test_neustream_drops_and_054_serves_late():
    # A long request keeps the device; C's first token is due 2 x 42 ms after its arrival
    def three():
        return [req(0, prompt=32, output=50, slo=1.05), req(1, arrival_s=0.001, prompt=32, output=50, slo=1.05),
                req(2, arrival_s=0.002, prompt=32, output=2, slo=1.05)]

    reqs = three()
    run("vllm-054", reqs)
    assert all(r.status.terminal and r.status is not Status.DROPPED for r in reqs)
    reqs = three()
    out = run("neustream-llm", reqs)
    assert any(r.status is Status.DROPPED for r in reqs)
    assert sum(b["size"] for b in out.batches if b["module"] == "prefill") + sum(
        r.status is Status.DROPPED for r in reqs) == 3


def test_kv_pressure_preempts_and_recomputes():
    reqs = [req(i, arrival_s=0.001 * i, prompt=30, output=12, slo=50.0) for i in range(3)]
    out = run("vllm-054", reqs, kv_capacity_tokens=96, block_size=16)  # 6 blocks
    assert out.n_preemptions > 0 and sum(r.num_preemptions for r in reqs) == out.n_preemptions
    for r in reqs:
        assert r.status.terminal and r.num_generated == 12 and len(r.token_s) == 12
        assert r.token_s == sorted(r.token_s)
    # a recompute prefill covers the prompt and the tokens generated before the preemption
    assert max(b["tokens"] for b in out.batches if b["module"] == "prefill") > 30


def test_event_kinds_order():
    Kind = LlmSimulator.Kind
    assert Kind.BATCH_END < Kind.ARRIVAL < Kind.DECIDE


def test_step_cost_classifies_chunks_and_decodes():
    a = req(0, prompt=20, generated=2)  # decode at context 22
    b = req(1, prompt=40)
    b.num_computed = 10  # chunk of 15 after 10 cached
    cost = step_cost(MODEL, [(a, 1), (b, 15)])
    assert cost == pytest.approx(MODEL.mixed_s(15, 25**2 - 10**2, 1, 22))


# -- invariants over random traces ----------------------------------------------------------------


def trace(rate, cv, n, seed, slo=2.0, program=TINY):
    return to_llm_requests(make_llm_trace(program, rate, cv, n, seed), MODEL, slo, slo)


@pytest.mark.parametrize("system", ["neustream-llm", "neustream-mixed", "vllm-054", "vllm"])
@pytest.mark.parametrize("rate,cv,seed,kv", [(2, 1, 0, None), (20, 3, 1, None), (40, 1, 2, 4096)])
def test_invariants(system, rate, cv, seed, kv):
    reqs = trace(rate, cv, 120, seed)
    out = run(system, reqs, kv_capacity_tokens=kv, max_num_seqs=16, budget=2048)
    s = summarize_llm([r.row() for r in reqs], {})
    assert s["n_ok"] + s["n_late"] + s["n_dropped"] == s["n_requests"] == 120
    assert s["tokens_on_time"] <= s["tokens_generated"] <= s["tokens_requested"]
    for r in reqs:
        assert r.token_s == sorted(r.token_s) and all(t > r.arrival_s for t in r.token_s)
        if r.status is Status.DROPPED:
            assert r.num_generated < r.output_tokens and r.dropped_s >= r.arrival_s
        else:
            assert r.num_generated == r.output_tokens and r.finish_s == r.token_s[-1]
    ends = [(b["start_s"], b["end_s"]) for b in out.batches]
    assert all(s0 >= e1 - 1e-12 for (s0, _), (_, e1) in zip(ends[1:], ends))  # one step at a time
    assert all(b["size"] <= 16 and b["tokens"] <= 2048 for b in out.batches)
    modules = {b["module"] for b in out.batches}
    if system not in ("vllm", "neustream-mixed"):
        assert "mixed" not in modules
    if system not in ("neustream-llm", "neustream-mixed"):
        assert s["n_dropped"] == 0


def test_same_seed_same_records():
    rows = []
    for _ in range(2):
        reqs = trace(15, 2, 80, 3)
        run("neustream-llm", reqs)
        rows.append([r.row() for r in reqs])
    assert rows[0] == rows[1]


# -- traces ------------------------------------------------------------------------------------


def test_llm_trace_fields():
    assert len(LMSYS_PROMPT_TOKENS) == 100 and LMSYS_PROMPT_TOKENS[12] == LMSYS_PROMPT_TOKENS_ORIGINAL[11]
    rows = make_llm_trace(LLM_PROGRAMS["opt-13b"], 2.0, 1.0, 250, 0)
    assert [r["prompt_tokens"] for r in rows[:100]] == list(LMSYS_PROMPT_TOKENS)
    assert rows[200]["prompt_tokens"] == LMSYS_PROMPT_TOKENS[0]
    outs = [r["output_tokens"] for r in rows]
    assert min(outs) >= 8 and max(outs) <= 300 and 120 < sum(outs) / len(outs) < 190
    assert rows == make_llm_trace(LLM_PROGRAMS["opt-13b"], 2.0, 1.0, 250, 0)
    # the same seed gives the same request fields at every rate and cv (as for diffusion)
    other = make_llm_trace(LLM_PROGRAMS["opt-13b"], 5.0, 3.0, 250, 0)
    assert [r["output_tokens"] for r in other] == outs


def test_llm_trace_round_trip_and_errors(tmp_path):
    rows = make_llm_trace(TINY, 3.0, 2.0, 20, 1)
    path = tmp_path / "t.csv"
    write_trace(path, rows)
    assert read_llm_trace(path, TINY) == rows
    path.write_text("id,arrival_s,prompt_tokens,output_tokens\n0,0.1,2040,20\n")
    with pytest.raises(TraceError, match="max_model_len"):
        read_llm_trace(path, TINY)
    path.write_text("id,arrival_s,prompt_tokens\n0,0.1,20\n")
    with pytest.raises(TraceError, match="missing column.*output_tokens"):
        read_llm_trace(path, TINY)


# -- CLI and records -------------------------------------------------------------------------------


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "latency" / "toydev" / "opt-tiny.csv"
    path.parent.mkdir(parents=True)
    MODEL.to_csv(path)
    return path


def test_cli_trace_simulate_aggregate_plot(tmp_path, table, capsys):
    tr = tmp_path / "trace.csv"
    assert main(["trace", "--workload", "opt-tiny", "--rate", "8", "--cv", "1", "--requests", "30",
                 "--seed", "0", "--out", str(tr)]) == 0
    summaries = []
    for system in ("neustream-llm", "vllm"):
        out = tmp_path / "runs" / system
        assert main(["simulate", "--workload", "opt-tiny", "--system", system, "--latency",
                     str(table), "--trace", str(tr), "--rate", "8", "--cv", "1", "--slo", "3",
                     "--sweeps", "rate", "--out", str(out)]) == 0
        s = json.loads((out / "summary.json").read_text())
        assert s["backend"] == "sim" and s["device"] == "toydev" and s["pslo"] == s["dslo"] == 3
        assert s["token_goodput_tps"] == pytest.approx(s["tokens_on_time"] / s["span_s"])
        rows = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
        assert len(rows) == 30 and "token_s" not in rows[0] and "tokens_on_time" in rows[0]
        summaries.append(str(out / "summary.json"))
    assert "tok/s" in capsys.readouterr().err
    table_csv = tmp_path / "goodput.csv"
    assert main(["aggregate", *summaries, "--out", str(table_csv)]) == 0
    df = pd.read_csv(table_csv)
    assert {"tokens_on_time", "token_goodput_tps", "ttft_attainment"} <= set(df.columns)
    png = tmp_path / "opt-tiny_rate.png"
    assert main(["plot", "--table", str(table_csv), "--workload", "opt-tiny", "--sweep",
                 "rate", "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000


def test_cli_errors_name_the_field(tmp_path, table, capsys):
    base = ["simulate", "--workload", "opt-tiny", "--latency", str(table), "--rate", "1",
            "--cv", "1", "--out", str(tmp_path / "o")]
    assert main([*base, "--system", "orca", "--slo", "2"]) == 2
    assert "unknown LLM system 'orca'" in capsys.readouterr().err
    assert main([*base, "--system", "vllm", "--slo", "-1"]) == 2
    assert "--slo must be a number > 1, got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "o" / "summary.json").exists()
