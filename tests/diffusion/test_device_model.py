"""The measured device model: quantiles and draws, fitting from batch rows, its effect on the
simulator (late requests, determinism per seed, nothing changed without it), its file and the
calibrate verb."""

from __future__ import annotations

import json
import random

import pytest

from neustream import cli
from neustream.engine.diffusion.device import DeviceModel, draw, fit
from neustream.engine.diffusion.sim import simulate
from neustream.latency import QUANTILES, quantiles
from neustream.policy import make_policy
from neustream.traces import make_trace, to_requests
from tests.support import SD, batching_table

TABLE = batching_table(SD)


def test_quantiles_and_draws_follow_the_sample():
    xs = [float(i) for i in range(101)]
    assert quantiles(xs) == pytest.approx([5.0 * i for i in range(21)])
    rng = random.Random(0)
    ds = sorted(draw(quantiles(xs), rng) for _ in range(4000))
    assert ds[0] >= 0 and ds[-1] <= 100
    assert ds[2000] == pytest.approx(50, abs=3) and ds[400] == pytest.approx(10, abs=3)
    assert draw([1.0] * 21, rng) == 1.0


def _rows(ratio, host_s, n=60, module="unet", size=4, table_s=0.01, start=0.0):
    """Back-to-back batch rows whose device time is ``ratio`` x the table's, each ``host_s``
    after the previous one's end."""
    rows, end = [], start
    for i in range(n):
        model_s = ratio(i) * table_s
        rows.append({"module": module, "size": size, "model_s": model_s, "table_s": table_s,
                     "start_s": end, "end_s": end + host_s + model_s, "after_idle": i == 0})
        end = rows[-1]["end_s"]
    return rows


def test_fit_recovers_ratios_host_time_and_run_drift():
    fast = _rows(lambda i: 0.9 + 0.002 * (i % 50), 0.001)
    slow = _rows(lambda i: 1.1 * (0.9 + 0.002 * (i % 50)), 0.001)
    m = fit([fast, slow])
    assert m.ratios["unet"]["all"][0] == pytest.approx(0.9)
    assert "4" in m.ratios["unet"]  # 120 batches of size 4: that size gets its own quantiles
    assert m.host_s["unet"][10] == pytest.approx(0.001)  # the first batch (after idle) left out
    # two runs 10% apart in speed: the log-speeds' standard deviation
    assert m.drift_sd == pytest.approx(0.0674, abs=0.005)
    assert m.meta["n_runs"] == 2 and m.meta["n_batches"] == 120


def _sim(system, device=None, seed=0, rate=30.0):
    reqs = to_requests(make_trace(SD, rate, 2.0, 150, 0), SD, TABLE, 2.0)
    run = simulate(make_policy(system, SD, TABLE, 2.0), TABLE, reqs, device=device, seed=seed)
    return [r.row() for r in run.requests], run.batches


def slow_model(ratio=1.2, host_s=0.0):
    return DeviceModel({m: {"all": [ratio] * 21} for m in (*SD.module_names, "pipeline")},
                       {m: [host_s] * 21 for m in (*SD.module_names, "pipeline")} if host_s else {})


def test_without_a_model_nothing_changes_and_a_seed_gives_the_same_records():
    assert _sim("neustream", DeviceModel()) == _sim("neustream")  # ratios 1, no host time
    spread = DeviceModel({"unet": {"all": [0.8 + 0.02 * i for i in range(21)]}}, {}, 0.05)
    assert _sim("neustream", spread, seed=3) == _sim("neustream", spread, seed=3)
    assert _sim("neustream", spread, seed=3) != _sim("neustream", spread, seed=4)


def test_batches_take_the_drawn_time_and_clockwork_can_finish_late():
    rows, batches = _sim("clockwork", slow_model(1.2))
    base_rows, base_batches = _sim("clockwork")
    b0, s0 = batches[0], base_batches[0]
    assert (b0["end_s"] - b0["start_s"]) == pytest.approx(1.2 * (s0["end_s"] - s0["start_s"]))
    # Clockwork admits on the table's time; a batch 20% slower ends past the deadline
    assert not any(r["status"] == "late" for r in base_rows)
    assert any(r["status"] == "late" for r in rows)
    _, nb = _sim("neustream", slow_model(1.0, host_s=0.002))
    _, nb0 = _sim("neustream")
    assert nb[0]["end_s"] - nb[0]["start_s"] == pytest.approx(
        nb0[0]["end_s"] - nb0[0]["start_s"] + 0.002)


def test_the_model_file_round_trips_and_bad_files_name_the_field(tmp_path):
    m = slow_model(1.1, 0.001)
    m.meta = {"workload": "sd15-256"}
    path = tmp_path / "m.json"
    path.write_text(m.to_text())
    back = DeviceModel.from_json(path)
    assert back.ratios == m.ratios and back.host_s == m.host_s and back.meta == m.meta
    doc = json.loads(path.read_text())
    doc["ratios"]["unet"]["all"] = [1.0, 0.5] + [1.0] * 19
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"m.json: ratios.unet.all must be 21 rising values"):
        DeviceModel.from_json(path)
    path.write_text("{}")
    with pytest.raises(ValueError, match="has no 'ratios'"):
        DeviceModel.from_json(path)
    assert len(QUANTILES) == 21


def test_simulate_uses_a_device_model_of_its_own_workload(tmp_path, capsys):
    table = tmp_path / "sd.csv"
    TABLE.to_csv(table)
    model = slow_model(1.3)
    model.meta = {"workload": "palette"}
    (tmp_path / "m.json").write_text(model.to_text())
    argv = ["simulate", "--workload", "sd15-256", "--system", "neustream", "--latency",
            str(table), "--rate", "5", "--cv", "1", "--slo", "3", "--requests", "20",
            "--device-model", str(tmp_path / "m.json"), "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 1
    assert "a device model of palette, not sd15-256" in capsys.readouterr().err
    model.meta = {"workload": "sd15-256"}
    (tmp_path / "m.json").write_text(model.to_text())
    assert cli.main(argv) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["device_model"] == str(tmp_path / "m.json")


def test_a_device_model_from_the_profilers_spread(tmp_path, capsys):
    """The profiler keeps each point's timed calls as quantiles in the sidecar; calibrate
    --table turns them into batch-time ratios around the table (the median is the table)."""
    assert cli.main(["profile", "--workload", "palette", "--size", "tiny", "--max-batch", "2",
                     "--repeats", "5", "--warmup", "1", "--out", str(tmp_path / "p.csv")]) == 0
    side = json.loads((tmp_path / "p.json").read_text())
    assert set(side["spread_s"]["unet"]) == {"1", "2"} and len(side["spread_s"]["unet"]["1"]) == 21
    assert cli.main(["calibrate", "--table", str(tmp_path / "p.csv"),
                     "--out", str(tmp_path / "m.json")]) == 0
    m = DeviceModel.from_json(tmp_path / "m.json")
    assert m.meta["workload"] == "palette" and not m.host_s and m.drift_sd == 0
    for b in ("1", "2"):
        qs = m.ratios["unet"][b]
        # 5 calls: the median call is the table's entry (the CSV keeps it to 1 us)
        assert qs[10] == pytest.approx(1.0, rel=1e-3)
        assert qs[0] <= qs[10] <= qs[-1]
    assert cli.main(["calibrate", str(tmp_path), "--table", str(tmp_path / "p.csv"),
                     "--out", str(tmp_path / "m2.json")]) == 2
    assert "give live runs or --table, not both" in capsys.readouterr().err
