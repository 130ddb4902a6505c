"""Goodput table from run summaries, and the figures."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from neustream.analysis.figures import plot, plot_batches
from neustream.analysis.goodput import COLUMNS, aggregate
from neustream.engine.diffusion.sim import simulate
from neustream.policy import make_policy
from neustream.traces import make_trace, to_requests
from tests.support import PALETTE, batching_table, write_state

DESIGN_COLUMNS = ["workload", "system", "backend", "device", "sweep", "rate", "cv", "slo", "seed",
                  "n_requests", "n_ok", "n_late", "n_dropped", "attainment", "goodput_rps"]
PNG = b"\x89PNG\r\n\x1a\n"


def summary(**over):
    s = {"workload": "palette", "system": "neustream", "backend": "sim", "device": "toydev",
         "rate": 1.0, "cv": 2.0, "slo": 3.0, "seed": 0, "sweeps": ["rate"],
         "n_requests": 10, "n_ok": 6, "n_late": 1, "n_dropped": 3, "attainment": 0.6,
         "span_s": 10.0, "offered_rps": 1.0, "goodput_rps": 0.6, "capacity_rps": 5.0}
    s.update(over)
    return s


def write_summaries(tmp_path, summaries):
    paths = []
    for i, s in enumerate(summaries):
        p = tmp_path / "runs" / str(i) / "summary.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(s))
        paths.append(p)
    return paths


def test_aggregate_rows_columns_and_bound(tmp_path):
    paths = write_summaries(tmp_path, [
        summary(),  # one sweep
        summary(system="clockwork", sweeps=["rate", "cv", "slo"], n_ok=2, n_dropped=7,
                offered_rps=8.0, capacity_rps=5.0),  # the default point: in every sweep
        summary(rate=3.0, offered_rps=3.0, capacity_rps=2.5),
    ])
    out = tmp_path / "tables" / "goodput.csv"
    df = aggregate(paths, out)
    assert out.is_file() and not list(out.parent.glob("*.tmp"))
    back = pd.read_csv(out)
    assert list(back.columns)[:len(DESIGN_COLUMNS)] == DESIGN_COLUMNS
    assert list(back.columns) == COLUMNS
    assert "bound_rps" in back.columns
    assert len(back) == 1 + 3 + 1
    cw = back[back.system == "clockwork"]
    assert sorted(cw.sweep) == ["cv", "rate", "slo"]
    assert (cw.bound_rps == 5.0).all()  # min(offered 8, capacity 5)
    ns = back[back.system == "neustream"].set_index("rate")
    assert ns.loc[1.0, "bound_rps"] == 1.0  # min(offered 1, capacity 5)
    assert ns.loc[3.0, "bound_rps"] == 2.5
    assert (back.n_ok + back.n_late + back.n_dropped == back.n_requests).all()
    assert len(df) == len(back)


def test_aggregate_joins_each_simulated_run_with_its_bound(tmp_path):
    keys = {"trace": "results/traces/palette/rate=1_cv=2_seed=0.csv",
            "latency_table": "resources/latency/h100/palette.csv"}
    paths = write_summaries(tmp_path, [
        summary(**keys), summary(system="clockwork", **keys),
        summary(slo=2.0, **keys),  # no bound at this SLO: left empty
        summary(backend="live", **keys),  # live: the bound is for the table's device model
    ])
    bound = tmp_path / "bounds" / "b.json"
    bound.parent.mkdir()
    bound.write_text(json.dumps({**keys, "trace": "results/traces/palette/./rate=1_cv=2_seed=0.csv",
                                 "slo": 3, "n_requests": 10, "bound_rps": 0.8}))
    aggregate(paths, tmp_path / "g.csv", bounds=[bound])
    back = pd.read_csv(tmp_path / "g.csv")
    assert list(back.columns) == COLUMNS
    got = back.set_index(["system", "backend", "slo"]).slo_bound_rps
    assert got["neustream", "sim", 3.0] == got["clockwork", "sim", 3.0] == 0.8
    assert pd.isna(got["neustream", "sim", 2.0]) and pd.isna(got["neustream", "live", 3.0])
    assert (back.bound_rps == 1.0).all()  # min(offered, capacity) stays beside it
    bound.write_text(json.dumps({**keys, "slo": 3, "n_requests": 12, "bound_rps": 0.8}))
    with pytest.raises(ValueError, match="10 requests, but its bound"):
        aggregate(paths, tmp_path / "g.csv", bounds=[bound])
    bound.write_text("{}")
    with pytest.raises(ValueError, match="not a bound record"):
        aggregate(paths, tmp_path / "g.csv", bounds=[bound])


def test_aggregate_run_without_sweeps_gives_one_row(tmp_path):
    paths = write_summaries(tmp_path, [summary(sweeps=[]), summary(sweeps=None, seed=1)])
    df = aggregate(paths, tmp_path / "g.csv")
    assert len(df) == 2


def test_aggregate_rejects_counts_that_do_not_add_up(tmp_path):
    paths = write_summaries(tmp_path, [summary(), summary(n_late=2)])
    out = tmp_path / "g.csv"
    with pytest.raises(ValueError, match="!= n_requests 10") as e:
        aggregate(paths, out)
    assert str(paths[1]) in str(e.value)
    assert not out.exists()


def test_aggregate_needs_summaries(tmp_path):
    with pytest.raises(ValueError, match="no summary"):
        aggregate([], tmp_path / "g.csv")


@pytest.fixture
def run_dirs(tmp_path):
    table = batching_table(PALETTE)
    dirs = []
    for system in ("neustream", "clockwork"):
        for rate in (0.5, 2.0):
            policy = make_policy(system, PALETTE, table, 3.0)
            reqs = to_requests(make_trace(PALETTE, rate, 2.0, 30, 0), PALETTE, table, 3.0)
            out = tmp_path / "runs" / system / f"rate={rate}"
            write_state(out, simulate(policy, table, reqs), {
                "workload": "palette", "system": system, "backend": "sim", "device": "toydev",
                "rate": rate, "cv": 2.0, "slo": 3.0, "seed": 0, "sweeps": ["rate"],
                "capacity_rps": 3.0})
            dirs.append(out)
    return dirs


def test_plot_writes_a_png(tmp_path, run_dirs):
    table = tmp_path / "goodput.csv"
    aggregate([d / "summary.json" for d in run_dirs], table)
    png = tmp_path / "figures" / "palette_rate.png"
    plot(table, "palette", "rate", png)
    data = png.read_bytes()
    assert data[:8] == PNG and len(data) > 5000
    assert not list(png.parent.glob("*.tmp*"))
    with pytest.raises(ValueError, match="no rows"):
        plot(table, "palette", "cv", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_batches_writes_a_png(tmp_path, run_dirs):
    png = tmp_path / "figures" / "batches.png"
    plot_batches(run_dirs[:2], png, title="palette batches")
    data = png.read_bytes()
    assert data[:8] == PNG and len(data) > 5000
