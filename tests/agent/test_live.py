"""The live multi-agent pipeline on CPU: four tiny vLLM engines, real code execution, records."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from neustream.catalog.agent import get_agent_program
from neustream.record import read_jsonl
from tests.support import tiny_llm_table

pytest.importorskip("vllm")

PROG = get_agent_program("matplotagent-tiny")


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    tiny_llm_table(d / "llama-tiny.csv", False)
    tiny_llm_table(d / "llava-tiny.csv", True)
    rc = subprocess.run([sys.executable, "-m", "neustream.cli", "exec-times", "--repeats", "1",
                         "--out", str(d / "exec-times.csv")], capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr[-2000:]
    return d


def serve(tables, out, system="neustream-llm", rate=2.0, slo=4.0, n=8, verb="serve"):
    cmd = [sys.executable, "-m", "neustream.cli", verb, "--workload", PROG.name,
           "--system", system, "--latency", str(tables), "--rate", str(rate), "--cv", "1",
           "--slo", str(slo), "--requests", str(n), "--out", str(out)]
    if verb == "simulate":
        cmd += ["--exec-times", str(tables / "exec-times.csv"), "--placement", "shared"]
    rc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rc.returncode == 0, rc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_live_pipeline_accounts_for_every_request_at_every_stage(tables, tmp_path):
    s = serve(tables, tmp_path / "live")
    rows = read_jsonl(tmp_path / "live" / "requests.jsonl")
    assert sorted(r["id"] for r in rows) == list(range(8))
    assert s["backend"] == "live" and s["n_ok"] + s["n_late"] + s["n_dropped"] == 8
    names = [st.name for st in PROG.stages]
    st = s["stages"]
    assert st[names[0]]["n_in"] == 8
    for a, b in zip(names, names[1:]):
        assert st[a]["n_in"] == st[a]["n_forwarded"] + st[a]["n_dropped"] + st[a]["n_late_at_exit"]
        assert st[b]["n_in"] == st[a]["n_forwarded"]
    assert s["n_ok"] == st["exec2"]["n_forwarded"]
    assert s["n_ok"] >= 1  # light load, loose SLOs: requests get through the whole pipeline
    for r in rows:
        for name, v in r["stages"].items():
            if "tokens_generated" in v and v["outcome"] != "dropped":
                assert v["tokens_generated"] == v["output_tokens"]  # forced lengths held
                assert len(v["token_s"]) == v["output_tokens"]
                assert all(a <= b for a, b in zip(v["token_s"], v["token_s"][1:]))
            if "exec_status" in v and v["end_s"] is not None:
                assert v["exec_status"] == "ok"  # the shipped plots run in the sandbox
    batches = read_jsonl(tmp_path / "live" / "batches.jsonl")
    reached = {v.get("instance") for r in rows for v in r["stages"].values()} - {None}
    assert reached <= {b["instance"] for b in batches}
    assert {b["phase"] for b in batches} >= {"prefill", "decode", "exec"}
    # One device: engine steps never overlap.
    steps = sorted((b["start_s"], b["end_s"]) for b in batches if b["phase"] != "exec")
    assert all(e0 <= s1 + 1e-3 for (_, e0), (s1, _) in zip(steps, steps[1:]))


def test_live_and_simulated_records_have_one_shape(tables, tmp_path):
    serve(tables, tmp_path / "live", system="vllm-054", n=4)
    serve(tables, tmp_path / "sim", system="vllm-054", n=4, verb="simulate")
    live = read_jsonl(tmp_path / "live" / "requests.jsonl")
    sim = read_jsonl(tmp_path / "sim" / "requests.jsonl")
    assert set(live[0]) == set(sim[0])
    ls, ss = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("live", "sim"))
    assert {k for k in ss if k.startswith("tps_")} == {k for k in ls if k.startswith("tps_")}
    assert ls["n_requests"] == ss["n_requests"] == 4
