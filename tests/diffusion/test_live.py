"""The live engine: records like the simulator's, timing within a window of the simulator's
prediction, lag and fault handling (a sleeping server), and real tiny modules on the CPU."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch

from neustream import cli
from neustream.engine.diffusion.live import LiveError, serve
from neustream.engine.diffusion.sim import simulate
from neustream.latency import LatencyTable, pipeline_s
from neustream.policy import make_policy
from neustream.record import BATCHES, FAILED_SUFFIX, REQUESTS, SUMMARY, summarize
from neustream.runs.diffusion import serve_to_dir
from neustream.runs.errors import RunError
from neustream.runs.fidelity import step_factor, timed_batches
from neustream.traces import make_trace, to_requests
from tests.support import SD, read_jsonl

# SD shape with short calls: stand-alone ~0.17 s, batching cheap (unet b=32 costs 2.5x b=1).
TABLE = LatencyTable({
    "text_encoder": {1: 0.003, 32: 0.004},
    "unet": {1: 0.004, 8: 0.0054, 32: 0.0102},
    "vae": {1: 0.005, 4: 0.008, 32: 0.05},
})


class SleepServer:
    """Takes the table's time for every call: the engine alone, without models."""

    def __init__(self, table: LatencyTable, program=SD, fail_at: int | None = None) -> None:
        self.table, self.program, self.fail_at = table, program, fail_at
        self.calls = 0
        self.started: set[int] = set()

    def start(self, r):
        self.started.add(r.id)

    def end(self, r):
        self.started.discard(r.id)

    def run(self, module, batch, steps_done):
        self.calls += 1
        if self.calls == self.fail_at:
            raise torch.OutOfMemoryError("injected: out of memory at this batch size")
        s = self.table.latency(module, len(batch))
        time.sleep(s)
        return s

    def run_pipeline(self, batch):
        s = pipeline_s(self.program, self.table, batch[0].steps, len(batch))
        time.sleep(s)
        return s


def _requests(rate: float, n: int = 40, cv: float = 2.0, slo: float = 3.0, seed: int = 0):
    return to_requests(make_trace(SD, rate, cv, n, seed), SD, TABLE, slo)


def _sim(system: str, rate: float, live_run=None, **kw) -> dict:
    """The simulator's summary; with ``live_run``, calibrated with that run's own batch times
    (every batch stretched by its measured time over the table's: a busy host slows the
    sleeping server's calls alike, which is not what these tests are about)."""
    device = TABLE if live_run is None else TABLE.scaled(step_factor(timed_batches(live_run, SD, TABLE)))
    run = simulate(make_policy(system, SD, TABLE, 3.0), device, _requests(rate, **kw))
    return summarize([r.row() for r in run.requests], {})


@pytest.mark.parametrize("system", ["neustream", "clockwork"])
def test_sleeping_server_tracks_the_simulator(system, tmp_path):
    """Same trace, same table: the live attainment lands within a window of the simulator's."""
    rate = 20.0
    server = SleepServer(TABLE)
    s = serve_to_dir(tmp_path / "run", make_policy(system, SD, TABLE, 3.0), server,
                     _requests(rate), TABLE, {"system": system})
    sim = _sim(system, rate, tmp_path / "run")
    if abs(s["attainment"] - sim["attainment"]) > 0.1:
        # a host busy in bursts slows some sleeps far more than others, which one mean factor
        # cannot carry; the device model fitted on this run's own batches carries the spread
        from neustream.engine.diffusion.device import fit

        model = fit([timed_batches(tmp_path / "run", SD, TABLE)])
        run = simulate(make_policy(system, SD, TABLE, 3.0), TABLE, _requests(rate), device=model)
        modelled = summarize([r.row() for r in run.requests], {})
        assert abs(s["attainment"] - modelled["attainment"]) <= 0.1, (
            s["attainment"], sim["attainment"], modelled["attainment"])
    assert s["n_ok"] + s["n_late"] + s["n_dropped"] == s["n_requests"] == 40
    assert not server.started  # every request's state was freed
    rows = read_jsonl(tmp_path / "run" / REQUESTS)
    assert sorted(r["id"] for r in rows) == list(range(40))
    sim_rows = [r.row() for r in simulate(make_policy(system, SD, TABLE, 3.0), TABLE,
                                                 _requests(rate)).requests]
    shape = lambda r: frozenset(r) - {"dropped_at", "dropped_s"}  # noqa: E731
    assert {shape(r) for r in rows} == {shape(r) for r in sim_rows}  # the simulator's record
    batches = read_jsonl(tmp_path / "run" / BATCHES)
    assert {"module", "start_s", "end_s", "size", "ids", "model_s", "after_idle",
            "device"} <= set(batches[0])
    assert all(b["end_s"] >= b["start_s"] for b in batches)
    assert s["arrival_lag_s"]["max"] < 0.5  # the load generator kept up (a busy host: 0.1 s)
    ratio = s["batch_time_over_table"]
    assert all(0.95 < v["median"] < 3 for v in ratio.values()), ratio  # sleeps, overshot


class AsyncSleepServer(SleepServer):
    """A stand-in GPU: calls run one after the other, each taking the table's time; ``launch``
    returns at once (as a CUDA launch does) and ``wait`` sleeps until that call is done. Counts
    the calls launched while the one before still ran, and each request's step indices."""

    asynchronous = True

    def __init__(self, table: LatencyTable) -> None:
        super().__init__(table)
        self.free_at = 0.0
        self.launches = self.ahead = 0
        self.steps: dict[tuple, list[int]] = {}

    def launch(self, module, batch, steps_done):
        now = time.perf_counter()
        self.launches += 1
        self.ahead += now < self.free_at
        for r, k in zip(batch, steps_done):
            self.steps.setdefault((r.id, module), []).append(k)
        s = self.table.latency(module, len(batch))
        self.free_at = max(now, self.free_at) + s
        return self.free_at, s

    def wait(self, handle):
        until, s = handle
        time.sleep(max(0.0, until - time.perf_counter()))
        return s

    def run(self, module, batch, steps_done):
        return self.wait(self.launch(module, batch, steps_done))


def test_lookahead_decides_while_the_device_runs_and_tracks_the_simulator(tmp_path):
    rate = 20.0
    server = AsyncSleepServer(TABLE)
    s = serve_to_dir(tmp_path / "run", make_policy("neustream", SD, TABLE, 3.0), server,
                     _requests(rate), TABLE, {"system": "neustream"}, lookahead=True)
    assert s["lookahead"] is True
    assert abs(s["attainment"] - _sim("neustream", rate, tmp_path / "run")["attainment"]) <= 0.1
    assert s["n_ok"] + s["n_late"] + s["n_dropped"] == s["n_requests"] == 40
    assert not server.started
    # calls were enqueued behind the running one (most UNet steps), and every request got
    # each of its steps once, in order, although its bookkeeping ran ahead of the device
    assert server.ahead > 0.3 * server.launches, (server.ahead, server.launches)
    for r in read_jsonl(tmp_path / "run" / REQUESTS):
        if r["status"] == "ok":
            assert r["finish_s"] <= r["deadline_s"]
            assert server.steps[(r["id"], "unet")] == list(range(r["steps"]))
            assert server.steps[(r["id"], "vae")] == [0]
    batches = read_jsonl(tmp_path / "run" / BATCHES)
    assert all(b["start_s"] >= a["end_s"] - 1e-9 for a, b in zip(batches, batches[1:]))
    assert all(b["end_s"] > b["start_s"] for b in batches)


def test_lookahead_needs_an_asynchronous_server():
    run = serve(make_policy("neustream", SD, TABLE, 3.0), SleepServer(TABLE),
                _requests(20.0, n=10), lookahead=True)
    assert run.lookahead is False and run.n_done == 10


def test_a_module_that_raises_keeps_partial_records_marked_failed(tmp_path):
    out = tmp_path / "rate=20_cv=2_slo=3_seed=0"
    serve_to_dir(out, make_policy("neustream", SD, TABLE, 3.0), SleepServer(TABLE),
                 _requests(20.0, n=10), TABLE, {"first": True})  # a previous, finished run
    policy = make_policy("neustream", SD, TABLE, 3.0)
    with pytest.raises(RunError, match="OutOfMemoryError") as e:
        serve_to_dir(out, policy, SleepServer(TABLE, fail_at=30), _requests(20.0), TABLE, {})
    assert "while running" in str(e.value)
    # No summary stands where the failed run was asked to write; the previous run is kept.
    previous = out.with_name(out.name + ".previous")
    assert str(previous) in str(e.value) and not out.exists()
    assert json.loads((previous / SUMMARY).read_text())["first"] is True
    failed = out.with_name(out.name + FAILED_SUFFIX)
    rows = read_jsonl(failed / REQUESTS)
    assert sorted(r["id"] for r in rows) == list(range(40))  # nothing lost, even unfinished
    assert {"queued", "running"} & {r["status"] for r in rows}
    assert len(read_jsonl(failed / BATCHES)) == 29
    assert "OutOfMemoryError" in json.loads((failed / "error.json").read_text())["error"]
    assert not (failed / SUMMARY).exists() and not (out / SUMMARY).exists()
    # A rerun starts clean: the failed records go, the run's own appear.
    serve_to_dir(out, make_policy("neustream", SD, TABLE, 3.0), SleepServer(TABLE),
                 _requests(20.0, n=10), TABLE, {})
    assert (out / SUMMARY).is_file() and not failed.exists()


def test_a_load_generator_that_falls_behind_stops_the_run():
    jump = {"at": None}

    def clock():  # the wall clock, one second ahead once the run has gone on for a while
        now = time.perf_counter()
        if jump["at"] is None:
            jump["at"] = now + 0.3
        return now + (1.0 if now > jump["at"] else 0.0)

    with pytest.raises(LiveError, match="fell .* behind the trace"):
        serve(make_policy("neustream", SD, TABLE, 3.0), SleepServer(TABLE), _requests(20.0),
              max_lag_s=0.5, clock=clock)


# -- real modules (tiny, CPU) --------------------------------------------------------------


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    n = torch.get_num_threads()  # `neustream serve --threads 1` sets them for the process
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    """sd15-256's tiny modules measured on this machine, with the sidecar a live run reads."""
    out = tmp_path_factory.mktemp("lat") / "local" / "sd15-256.csv"
    assert cli.main(["profile", "--workload", "sd15-256", "--size", "tiny", "--repeats", "3",
                     "--warmup", "1", "--max-batch", "8", "--served", "--threads", "1",
                     "--out", str(out)]) == 0
    return out


def _serve_cli(tiny_table, out, system, rate=6.0, cv=3.0, requests=24, slo=4.0, rc=0):
    args = ["serve", "--workload", "sd15-256", "--latency", str(tiny_table), "--system", system,
            "--rate", str(rate), "--cv", str(cv), "--slo", str(slo), "--requests", str(requests),
            "--seed", "1", "--threads", "1", "--out", str(out)]
    assert cli.main(args) == rc
    return json.loads((out / SUMMARY).read_text()) if rc == 0 else None


def test_real_tiny_modules_neustream_beats_clockwork_on_a_bursty_trace(tiny_table, tmp_path):
    ns = _serve_cli(tiny_table, tmp_path / "ns", "neustream")
    cw = _serve_cli(tiny_table, tmp_path / "cw", "clockwork")
    for s in (ns, cw):
        assert s["backend"] == "live" and s["device"] == "local"
        assert s["n_ok"] + s["n_late"] + s["n_dropped"] == s["n_requests"] == 24
        assert s["server"]["size"] == "tiny" and s["server"]["torch_device"] == "cpu"
    for d in ("ns", "cw"):
        for r in read_jsonl(tmp_path / d / REQUESTS):
            if r["status"] == "ok":
                assert r["finish_s"] <= r["deadline_s"]
            elif r["status"] == "late":
                assert r["finish_s"] > r["deadline_s"]
            else:
                assert r["finish_s"] is None and r["dropped_at"] in ("text_encoder", "unet",
                                                                     "vae", "pipeline")
    assert ns["n_ok"] >= cw["n_ok"]
    # the fidelity command re-simulates both runs and prints the difference in points
    assert cli.main(["fidelity", str(tmp_path / "ns"), str(tmp_path / "cw"),
                     "--out", str(tmp_path / "fidelity.csv")]) == 0
    import pandas as pd

    fid = pd.read_csv(tmp_path / "fidelity.csv")
    assert len(fid) == 2 and set(fid.system) == {"neustream", "clockwork"}
    assert ((fid.live_attainment - fid.sim_attainment) * 100 - fid.diff_points).abs().max() < 1e-9
    # each run's device model is fitted on the other run (same workload and table, but another
    # system: so each is fitted on itself) and the prediction is given beside the others
    assert set(fid.model_fit) == {"itself"}
    assert fid.modelled_sim_attainment.between(0, 1).all()
    # calibrate: one device model from both runs, loadable, for `simulate --device-model`
    assert cli.main(["calibrate", str(tmp_path / "ns"), str(tmp_path / "cw"),
                     "--out", str(tmp_path / "dm.json")]) == 0
    from neustream.engine.diffusion.device import DeviceModel

    dm = DeviceModel.from_json(tmp_path / "dm.json")
    assert {"unet", "pipeline"} <= set(dm.ratios) and dm.meta["n_runs"] == 2


def test_real_batches_mix_requests_at_different_steps(tiny_table):
    from neustream.backends.diffusion.server import DiffusionServer

    program = SD
    table = LatencyTable.from_csv(tiny_table, program)
    policy = make_policy("neustream", program, table, 50.0)
    server = DiffusionServer("sd15-256", {m: policy.cap(m) for m in program.module_names})
    seen = []
    run_module = server.run

    def spy(module, batch, steps_done):
        seen.append((module, tuple(steps_done)))
        return run_module(module, batch, steps_done)

    server.run = spy
    # arrivals 50 ms apart, deadlines loose: each request joins the others' UNet batches
    rows = [{"id": i, "arrival_s": 0.05 * (i + 1), "steps": 30 + 5 * i, "prompt_index": i}
            for i in range(4)]
    run = serve(policy, server, to_requests(rows, program, table, 50.0))
    assert run.n_ok == 4 and not server.states
    assert any(m == "unet" and len(set(s)) > 1 for m, s in seen)


def test_cli_fault_is_one_line_and_leaves_no_summary(tiny_table, tmp_path, monkeypatch, capsys):
    from neustream.backends.diffusion import graphs

    calls = {"n": 0}
    real = graphs.Batcher.launch

    def flaky(self, states, steps_done):
        calls["n"] += 1
        if calls["n"] == 5:
            raise torch.OutOfMemoryError("injected: out of memory")
        return real(self, states, steps_done)

    monkeypatch.setattr(graphs.Batcher, "launch", flaky)
    out = tmp_path / "run"
    _serve_cli(tiny_table, out, "neustream", requests=6, rc=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert re.match(r"neustream serve: error: live run stopped .*OutOfMemory", err[-1])
    assert not (out / SUMMARY).exists()
    assert (tmp_path / ("run" + FAILED_SUFFIX) / REQUESTS).is_file()


def test_serve_needs_the_tables_sidecar(tmp_path, capsys):
    csv = tmp_path / "t" / "sd15-256.csv"
    csv.parent.mkdir()
    TABLE.to_csv(csv)
    assert cli.main(["serve", "--workload", "sd15-256", "--latency", str(csv), "--system",
                     "neustream", "--rate", "1", "--cv", "1", "--slo", "3", "--out",
                     str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "sidecar" in err and "\n" not in err
