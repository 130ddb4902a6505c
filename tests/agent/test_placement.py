"""The live multi-agent pipeline with engines placed on several devices, on CPU.

Each engine runs in its own process (backends/vllm/engine_proc.ProcessServer); on CPU the device
indices only group the engines: those of one device take turns, those of different devices step
at the same time. The placement here is the two-device one
``codellama1=0,llava-1=1,llava-2=1,codellama2=0``, so both kinds of pair occur.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

from neustream.backends.vllm.engine_proc import EngineProcessError, ProcessServer, visible_device
from neustream.backends.vllm.model_dir import write_model_dir
from neustream.catalog.agent import get_agent_program
from neustream.catalog.llm import get_llm_program
from neustream.engine.agent.live import lanes_of
from neustream.record import read_jsonl
from tests.support import tiny_llm_table

PROG = get_agent_program("matplotagent-tiny")
PLACEMENT = {"codellama1": 0, "llava-1": 1, "llava-2": 1, "codellama2": 0}
PLACEMENT_ARG = ",".join(f"{k}={v}" for k, v in PLACEMENT.items())
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm")


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    tiny_llm_table(d / "llama-tiny.csv", False)
    tiny_llm_table(d / "llava-tiny.csv", True)
    return d


def busy_trace(path, n: int):
    """``n`` requests 0.5 s apart with long first and vision stages (120 tokens each): while
    an early request is in a LLaVA engine, later ones still keep codellama1 busy, so engines
    of the two devices have work at the same time whatever the code stages take."""
    from neustream.runs.agent import plot_names
    from neustream.traces import make_agent_trace, write_trace

    rows = make_agent_trace(PROG, 2.0, 1.0, n, 0, plot_names())
    for i, r in enumerate(rows):
        r.update(arrival_s=0.5 * i, codellama1_output=120, llava_output=120)
    write_trace(path, rows)
    return path


def serve(tables, out, placement: str, n: int, engine_device: str = "cpu", trace=None,
          check=True):
    cmd = [sys.executable, "-m", "neustream.cli", "serve", "--workload", PROG.name,
           "--system", "neustream-llm", "--latency", str(tables), "--rate", "2", "--cv", "1",
           "--slo", "4", "--requests", str(n), "--placement", placement,
           "--engine-device", engine_device, "--out", str(out)]
    if trace is not None:
        cmd += ["--trace", str(trace)]
    rc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if not check:
        return rc
    assert rc.returncode == 0, rc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- cheap checks (no engine) ---------------------------------------------------------------------


def test_lanes_group_instances_by_device_in_pipeline_order():
    order = list(PROG.instances())
    assert lanes_of(order, None) == {0: order}
    assert lanes_of(order, PLACEMENT) == {0: ["codellama1", "codellama2"],
                                          1: ["llava-1", "llava-2"]}
    with pytest.raises(ValueError, match="no device for codellama2"):
        lanes_of(order, {k: v for k, v in PLACEMENT.items() if k != "codellama2"})
    with pytest.raises(ValueError, match="device of llava-1 must be an integer"):
        lanes_of(order, {**PLACEMENT, "llava-1": "1"})


def test_cuda_device_index_maps_into_the_visible_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_device(3) == "3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert visible_device(0) == "4" and visible_device(3) == "7"
    with pytest.raises(ValueError, match="shows 4 GPU"):
        visible_device(4)


def test_bad_engine_process_arguments_start_nothing(tmp_path):
    prog = get_llm_program("llama-tiny")
    before = len(mp.active_children())
    with pytest.raises(ValueError, match="codellama1: device must be one of cpu, cuda"):
        ProcessServer("codellama1", tmp_path, prog, "vllm", device="tpu")
    with pytest.raises(ValueError, match="device_index must be an integer >= 0"):
        ProcessServer("codellama1", tmp_path, prog, "vllm", device_index=-1)
    assert len(mp.active_children()) == before


def test_an_engine_process_that_dies_is_reported_not_waited_for(tmp_path):
    prog = get_llm_program("llava-tiny")
    s = ProcessServer("llava-1", tmp_path / "m", prog, "vllm", start_timeout_s=120)
    os.kill(s.pid, signal.SIGKILL)  # dies while it starts
    t = time.monotonic()
    with pytest.raises(EngineProcessError, match=r"^llava-1: engine process exited \(code -9\) "
                                                 r"during start$"):
        s.describe()
    assert time.monotonic() - t < 10
    s.close()
    assert not s.alive


def test_cuda_placement_with_two_engine_processes_on_one_gpu_is_refused(tables, tmp_path):
    rc = serve(tables, tmp_path / "run", PLACEMENT_ARG, 2, engine_device="cuda", check=False)
    assert rc.returncode == 2
    assert rc.stderr.strip().splitlines()[-1] == (
        "neustream serve: error: placement: cuda device(s) [0, 1] would hold several "
        "engine processes; give each engine its own GPU (spread) or use shared")
    assert not (tmp_path / "run" / "summary.json").exists()


# -- engine processes (vLLM starts in each child: ~10 s of CPU each) ------------------------------


@needs_vllm
def test_an_error_in_the_engine_process_names_the_instance_and_the_child_is_reaped(tmp_path):
    prog = get_llm_program("llama-tiny")
    s = ProcessServer("codellama2", write_model_dir(prog, tmp_path / "m"), prog, "vllm",
                      kv_cache_gib=0.25)
    pid = s.pid
    try:
        with pytest.raises(EngineProcessError, match=r"^codellama2: submit failed: ValueError: "
                                                     r"request bad: output_tokens must be >= 1"):
            s.submit("bad", 8, 0, time.time())
        with pytest.raises(ValueError, match="codellama2: an engine process takes an image as "
                                             "a file path, not object"):
            s.submit("pil", 8, 2, time.time(), image=object())
        assert not s.has_unfinished()
        # The engine still serves after a failed call, and forces the output length.
        s.submit("ok", 12, 5, time.time())
        s.step_begin()
        s.submit("held", 9, 3, time.time())  # while the step runs: sent with the next step
        outs = s.step_end()
        assert s.step_begin_s <= s.step_end_s
        with pytest.raises(EngineProcessError, match="step_end without step_begin"):
            s.step_end()
        last = {}
        while s.has_unfinished():
            outs += s.step()
        for rid, n, finished, reason in outs:
            last[rid] = (n, finished, reason)
        assert last == {"ok": (5, True, "length"), "held": (3, True, "length")}
        state = s.scheduler_state()
        assert state["stats"]["steps"] == len(state["step_log"]) >= 5
        s.clear_step_log()
        assert s.scheduler_state()["step_log"] == []
        assert s.describe()["process"]["pid"] == pid
    finally:
        s.close()
    assert not s.alive
    assert pid not in {p.pid for p in mp.active_children()}
    with pytest.raises(EngineProcessError, match="codellama2: describe after close"):
        s.describe()


@needs_vllm
def test_engines_on_two_devices_step_together_and_keep_the_record(tables, tmp_path):
    n = 6
    trace = busy_trace(tmp_path / "trace.csv", n)
    s = serve(tables, tmp_path / "spread", PLACEMENT_ARG, n, trace=trace)
    assert s["placement"] == PLACEMENT and s["devices"] == 2 and s["engine_processes"] is True
    assert set(s["steps_by_device"]) == {"0", "1"}
    assert sum(s["steps_by_device"].values()) == s["steps"]
    rows = read_jsonl(tmp_path / "spread" / "requests.jsonl")
    assert sorted(r["id"] for r in rows) == list(range(n))
    assert s["n_ok"] + s["n_late"] + s["n_dropped"] == n and s["n_ok"] >= 1
    names = [st.name for st in PROG.stages]
    st = s["stages"]
    assert st[names[0]]["n_in"] == n
    for a, b in zip(names, names[1:]):
        assert st[a]["n_in"] == st[a]["n_forwarded"] + st[a]["n_dropped"] + st[a]["n_late_at_exit"]
        assert st[b]["n_in"] == st[a]["n_forwarded"]
    assert s["n_ok"] == st[names[-1]]["n_forwarded"]
    for r in rows:
        for v in r["stages"].values():
            if "tokens_generated" in v and v["outcome"] != "dropped":
                assert v["tokens_generated"] == v["output_tokens"]  # forced lengths held
                assert len(v["token_s"]) == v["output_tokens"]
                assert all(x <= y for x, y in zip(v["token_s"], v["token_s"][1:]))
    batches = read_jsonl(tmp_path / "spread" / "batches.jsonl")
    steps = [b for b in batches if b["phase"] != "exec"]
    assert {b["instance"] for b in steps} == set(PLACEMENT)
    assert all(b["device"] == PLACEMENT[b["instance"]] for b in steps)
    assert all(b["device"] == "cpu" for b in batches if b["phase"] == "exec")
    # One device: its engines' steps never overlap. Two devices: theirs do, at least once.
    for dev in (0, 1):
        spans = sorted((b["start_s"], b["end_s"]) for b in steps if b["device"] == dev)
        assert all(e0 <= s1 for (_, e0), (s1, _) in zip(spans, spans[1:]))
    zero = [(b["start_s"], b["end_s"]) for b in steps if b["device"] == 0]
    one = [(b["start_s"], b["end_s"]) for b in steps if b["device"] == 1]
    assert any(a0 < b1 and b0 < a1 for a0, a1 in zero for b0, b1 in one)
    # Every engine process is gone once the run is over.
    pids = [e["process"]["pid"] for e in s["engines"].values()]
    assert len(set(pids)) == 4 and all(gone(p) for p in pids)

    # The in-process run (every engine on one device) writes records of the same shape.
    one_dev = serve(tables, tmp_path / "shared", "shared", 3)
    assert one_dev["engine_processes"] is False and one_dev["devices"] == 1
    assert set(one_dev) == set(s)
    shared_rows = read_jsonl(tmp_path / "shared" / "requests.jsonl")
    assert set(shared_rows[0]) == set(rows[0])
    assert {k: set(v) for k, v in shared_rows[0]["stages"].items()} == \
        {k: set(v) for k, v in rows[0]["stages"].items()}
    shared_steps = [b for b in read_jsonl(tmp_path / "shared" / "batches.jsonl")
                    if b["phase"] != "exec"]
    assert {frozenset(b) for b in shared_steps} == {frozenset(b) for b in steps}
    assert {b["device"] for b in shared_steps} == {0}
