"""Multi-agent pipeline: stage graph, slack hand-over, placement, simulator invariants."""

from __future__ import annotations

import pytest

from neustream.catalog.agent import get_agent_program
from neustream.catalog.llm import get_llm_program
from neustream.engine.agent.flow import AgentFlow
from neustream.engine.agent.sim import kv_split, simulate_agent
from neustream.latency import LlmLatencyModel, agent_capacity_rps, exec_seconds
from neustream.policy import make_llm_policy
from neustream.record import summarize_agent
from neustream.request import Status
from neustream.runs.agent import parse_placement
from neustream.traces import TraceError, make_agent_trace, read_agent_trace, write_trace

PROG = get_agent_program("matplotagent")
EXEC = {"a": 0.3, "b": 0.8, "c": 1.5}


def model(p0=0.012, p1=8e-5, d0=0.0158, d1=6.7e-7, vision=False, meta=None) -> LlmLatencyModel:
    """A 7B-like table (the artifact's fitted form, our own round numbers)."""
    pre = [(b, b * L, p0 + p1 * b * L + 2e-9 * b * L * L)
           for L in (32, 128, 512, 1024, 2048, 4096) for b in (1, 2, 4) if b * L <= 4096]
    dec = [(b, b * c, d0 * (1 + 0.02 * b) + d1 * b * c)
           for b in (1, 4, 16, 64, 256) for c in (128, 1024, 2048)]
    vis = [(b, 576 * b, 0.004 + 0.006 * b) for b in (1, 2, 4, 8)] if vision else None
    return LlmLatencyModel(pre, dec, vision=vis, meta=meta)


MODELS = {"codellama1": model(), "llava": model(vision=True), "codellama2": model()}


def row(i=0, t=0.0, plot="a", n=100):
    return {"id": i, "arrival_s": t, "plot": plot,
            "codellama1_prompt": 500, "codellama1_output": n, "llava_prompt": 1600,
            "llava_output": n, "codellama2_prompt": 240, "codellama2_output": n}


def policies(system, models=MODELS, program=PROG):
    out = {}
    for s in program.llm_stages:
        p = get_llm_program(s.model)
        for inst in s.instances():
            out[inst] = make_llm_policy(system, models[s.name], max_num_seqs=p.max_num_seqs,
                                        max_num_batched_tokens=p.max_num_batched_tokens)
    return out


def run_sim(rows, system="neustream-llm", slo=1.8, placement="spread"):
    agent = AgentFlow(PROG, rows, MODELS, slo)
    batches = simulate_agent(PROG, agent, policies(system), parse_placement(placement, PROG), EXEC)
    return agent, batches


# -- the stage graph and the hand-over rules ------------------------------------------------------


def test_stage_graph_is_the_artifacts_linear_pipeline():
    assert [s.name for s in PROG.stages] == ["codellama1", "exec1", "llava", "codellama2", "exec2"]
    assert [s.kind for s in PROG.stages] == ["llm", "exec", "llm", "llm", "exec"]
    assert PROG.instances() == ("codellama1", "llava-1", "llava-2", "codellama2")
    assert PROG.stage("llava").images == 1 and PROG.exec_slo_s == 2.5


def test_slack_is_handed_from_stage_to_stage():
    agent = AgentFlow(PROG, [row()], MODELS, 1.5)
    req = agent.requests[0]
    h = agent.arrive(req, 0.0)
    m = MODELS["codellama1"]
    assert h.instance == "codellama1" and h.llm.arrival_s == 0.0
    assert h.llm.deadline_of(1) == pytest.approx(1.5 * m.prefill_alone_s(500))
    due = h.llm.deadline_s
    # Finish 2 s early: the code stage gets 2 s of budget on top of its fixed 2.5 s.
    h = agent.llm_done(h.llm, due - 2.0)
    assert h.stage.name == "exec1"
    assert req.visits[-1].budget_s == pytest.approx(2.0)
    assert req.visits[-1].deadline_s == pytest.approx(due - 2.0 + 2.0 + 2.5)
    t = due + 1.0  # the code took 3 s: 1.5 s of slack left
    h = agent.exec_done(req, due - 2.0, t, "ok")
    assert h.stage.name == "llava" and h.instance == "llava-1"
    v = MODELS["llava"]
    want = t + 1.5 + 1.5 * (v.prefill_alone_s(1600) + v.vision_s(1))
    assert h.llm.deadline_of(1) == pytest.approx(want)
    assert req.visits[-1].budget_s == pytest.approx(1.5)


def test_late_at_a_boundary_is_dropped_there_and_goes_no_further():
    agent = AgentFlow(PROG, [row()], MODELS, 1.2)
    req = agent.requests[0]
    h = agent.arrive(req, 0.0)
    h = agent.llm_done(h.llm, h.llm.deadline_s + 0.01)
    assert h.stage is None
    assert req.status is Status.DROPPED and req.dropped_at == "codellama1"
    assert [v.stage for v in req.visits] == ["codellama1"]
    assert req.visits[0].outcome == "boundary" and req.visits[0].slack_s < 0


def test_late_out_of_the_last_stage_is_late_not_dropped():
    agent = AgentFlow(PROG, [row()], MODELS, 2.0)
    req = agent.requests[0]
    h = agent.arrive(req, 0.0)
    h = agent.llm_done(h.llm, h.llm.deadline_s)  # exactly on time: slack 0 goes on
    t = req.visits[-1].deadline_s
    h = agent.exec_done(req, t - 1, t, "ok")
    h = agent.llm_done(h.llm, h.llm.deadline_s)
    h = agent.llm_done(h.llm, h.llm.deadline_s)
    assert h.stage.name == "exec2"
    late = req.visits[-1].deadline_s + 0.5
    h = agent.exec_done(req, late - 1, late, "error")
    assert h.stage is None and req.status is Status.LATE and req.finish_s == late
    assert req.visits[-1].exec_status == "error"


def test_replicas_take_requests_in_turn():
    agent = AgentFlow(PROG, [row(i) for i in range(4)], MODELS, 2.0)
    got = []
    for req in agent.requests:
        agent.arrive(req, 0.0)
        req.visits.pop()  # jump straight to the LLaVA stage
        got.append(agent._enter(req, 2, 0.0, 0.0).instance)
    assert got == ["llava-1", "llava-2", "llava-1", "llava-2"]


def test_engine_drop_stops_the_request_where_it_was_dropped():
    agent = AgentFlow(PROG, [row()], MODELS, 2.0)
    h = agent.arrive(agent.requests[0], 0.0)
    agent.llm_dropped(h.llm, 0.5)
    r = agent.requests[0].row()
    assert r["status"] == "dropped" and r["dropped_at"] == "codellama1" and r["finish_s"] is None
    assert r["stages"]["codellama1"]["outcome"] == "dropped"
    agent.close()


# -- placement ------------------------------------------------------------------------------------


def test_parse_placement():
    assert parse_placement("spread", PROG) == {"codellama1": 0, "llava-1": 1, "llava-2": 2,
                                               "codellama2": 3}
    assert set(parse_placement("shared", PROG).values()) == {0}
    two = parse_placement("codellama1=0,llava-1=1,llava-2=1,codellama2=0", PROG)
    assert two["llava-2"] == 1
    with pytest.raises(ValueError, match="no device for llava-2"):
        parse_placement("codellama1=0,llava-1=1,codellama2=0", PROG)
    with pytest.raises(ValueError, match="bad entry"):
        parse_placement("llava=1", PROG)


def test_kv_split_shares_one_devices_memory():
    meta = {"kv_capacity_tokens": 100_000, "weights_gib": 12.5}
    models = {s: model(meta=meta) for s in MODELS}
    alone = kv_split(PROG, parse_placement("spread", PROG), models)
    assert alone == {i: 100_000 for i in PROG.instances()}
    shared = kv_split(PROG, parse_placement("shared", PROG), models)
    kvb = get_llm_program("codellama-7b").kv_bytes_per_token
    usable = 100_000 * kvb + 14.5 * 2**30
    assert shared["codellama1"] == int((usable - 4 * 14.5 * 2**30) / 4 // kvb)
    small = {s: model(meta={"kv_capacity_tokens": 1000, "weights_gib": 12.5}) for s in MODELS}
    with pytest.raises(ValueError, match="do not fit together"):
        kv_split(PROG, parse_placement("shared", PROG), small)


# -- the simulator --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trace():
    return make_agent_trace(PROG, 0.8, 1.0, 120, 0, sorted(EXEC))


@pytest.mark.parametrize("system", ["neustream-llm", "vllm-054", "vllm"])
def test_every_request_is_accounted_for_at_every_stage(trace, system):
    agent, batches = run_sim(trace, system)
    rows = [r.row() for r in agent.requests]
    s = summarize_agent(rows, {}, PROG)
    assert s["n_ok"] + s["n_late"] + s["n_dropped"] == len(trace)
    stages = s["stages"]
    names = [st.name for st in PROG.stages]
    assert stages[names[0]]["n_in"] == len(trace)
    for a, b in zip(names, names[1:]):
        d = stages[a]
        assert d["n_in"] == d["n_forwarded"] + d["n_dropped"] + d["n_late_at_exit"]
        assert stages[b]["n_in"] == d["n_forwarded"]
    assert s["n_ok"] == stages["exec2"]["n_forwarded"]
    for r in rows:  # tokens on time never exceed tokens asked for
        for v in r["stages"].values():
            if "tokens_on_time" in v:
                assert 0 <= v["tokens_on_time"] <= v["tokens_generated"] <= v["output_tokens"]
    if system != "neustream-llm":  # the baselines never drop inside an engine
        assert all(d["n_dropped"] == 0 for d in stages.values())


def test_one_device_runs_one_step_at_a_time(trace):
    _, batches = run_sim(trace, placement="shared")
    steps = sorted((b["start_s"], b["end_s"]) for b in batches if b["device"] == 0)
    assert {b["instance"] for b in batches if b["device"] == 0} == set(PROG.instances())
    assert all(e0 <= s1 + 1e-12 for (_, e0), (s1, _) in zip(steps, steps[1:]))


def test_exec_stage_takes_the_measured_time_of_the_requests_plot(trace):
    agent, batches = run_sim(trace)
    for b in batches:
        if b["phase"] == "exec":
            plot = trace[b["ids"][0]]["plot"]
            assert b["end_s"] - b["start_s"] == pytest.approx(EXEC[plot])


def test_neustream_beats_the_baseline_end_to_end_on_a_loaded_pipeline(trace):
    got = {}
    for system in ("neustream-llm", "vllm-054"):
        agent, _ = run_sim(trace, system)
        got[system] = sum(r.status is Status.OK for r in agent.requests)
    assert got["neustream-llm"] > got["vllm-054"]


def test_four_devices_serve_more_than_one_shared(trace):
    ok = {}
    for placement in ("spread", "shared"):
        agent, _ = run_sim(trace, placement=placement)
        ok[placement] = sum(r.status is Status.OK for r in agent.requests)
    assert ok["spread"] > ok["shared"]
    rows = trace
    assert agent_capacity_rps(PROG, MODELS, parse_placement("spread", PROG), rows) > \
        2 * agent_capacity_rps(PROG, MODELS, parse_placement("shared", PROG), rows)


def test_unknown_plot_is_a_clear_error(trace):
    agent = AgentFlow(PROG, trace, MODELS, 1.8)
    with pytest.raises(ValueError, match="no measured execution time"):
        simulate_agent(PROG, agent, policies("vllm"), parse_placement("spread", PROG), {"a": 1.0})


def test_exec_seconds_takes_each_plots_median():
    rows = [{"plot": "a", "seconds": s} for s in (0.1, 0.5, 0.2)] + [{"plot": "b", "seconds": 1.0}]
    assert exec_seconds(rows) == {"a": 0.2, "b": 1.0}


# -- traces ---------------------------------------------------------------------------------------


def test_agent_trace_is_seeded_and_within_limits(tmp_path):
    rows = make_agent_trace(PROG, 1.0, 2.0, 300, 3, ["x", "y"])
    assert rows == make_agent_trace(PROG, 1.0, 2.0, 300, 3, ["x", "y"])
    other = make_agent_trace(PROG, 4.0, 1.0, 300, 3, ["x", "y"])
    assert [r["llava_output"] for r in rows] == [r["llava_output"] for r in other]
    code = [r["codellama1_output"] for r in rows]
    assert 179 <= min(code) and max(code) <= 1000 and 600 < sum(code) / len(code) < 720
    assert all(r["llava_prompt"] >= 576 + 600 for r in rows)  # the image and the template
    path = tmp_path / "t.csv"
    write_trace(path, rows)
    assert read_agent_trace(path, PROG) == rows


def test_agent_trace_errors_name_the_field(tmp_path):
    rows = make_agent_trace(PROG, 1.0, 1.0, 3, 0, ["x"])
    rows[1]["llava_output"] = 4000
    path = tmp_path / "t.csv"
    write_trace(path, rows)
    with pytest.raises(TraceError, match="llava prompt \\+ output .* max_model_len 4096"):
        read_agent_trace(path, PROG)
    path.write_text("id,arrival_s\n0,0.0\n")
    with pytest.raises(TraceError, match="missing column.*plot"):
        read_agent_trace(path, PROG)
