"""The workflow's live diffusion part, for real, in a clean directory: tables measured here,
live runs of tiny modules on the CPU beside a simulated sweep, one goodput table for both, the
fidelity table and the figures."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.support import ROOT, job_counts, snakemake

CFG = str(ROOT / "tests/configs/live_diffusion.yaml")
CONFIG = """\
profile: {max_batch: 8, repeats: 2, warmup: 1}
diffusion:
  systems: [neustream]
  sim:
    requests: 20
    workloads:
      palette:
        default: {rate: 0.5, cv: 2, slo: 3}
  live:
    requests: 12
    systems: [neustream, clockwork]
    simulate: false
    workloads:
      sd15-512:
        default: {rate: 4, cv: 2, slo: 3}
        rate: [4]
"""


def test_live_part_plans_live_serving_on_the_tables_measured_here(workdir):
    p = snakemake("-n", "-p", "--cores", "1", "--configfile", CFG, "--replace-workflow-config",
                  cwd=workdir)
    jobs = job_counts(p.stdout)
    assert jobs["serve"] == 2 and jobs["simulate"] == 2 and jobs["profile"] == 1
    assert jobs["fidelity"] == 1 and jobs["calibrate"] == 1
    assert "neustream serve --workload sd15-512 --label sd15-512" in p.stdout
    assert "results/runs/live/sd15-512/neustream/rate=4_cv=2_slo=3_seed=0" in p.stdout
    assert "--latency results/latency/local/sd15-512.csv" in p.stdout


@pytest.mark.slow
def test_live_sweep_runs_end_to_end(workdir):
    pytest.importorskip("torch")
    (workdir / "live.yaml").write_text(CONFIG)
    args = ["--configfile", "live.yaml", "--replace-workflow-config"]
    snakemake("--cores", "2", *args, cwd=workdir)
    assert (workdir / "results/latency/local/sd15-512.json").is_file()  # measured here
    table = pd.read_csv(workdir / "results/tables/goodput.csv")
    live = table[table.backend == "live"]
    assert set(live.device) == {"local"} and set(live.workload) == {"sd15-512"}
    assert sorted(live.system) == ["clockwork", "neustream"]
    assert (table.n_ok + table.n_late + table.n_dropped == table.n_requests).all()
    assert (live.n_requests == 12).all()
    sim = table[table.backend == "sim"]  # the simulated sweep beside it, on its own tables
    assert set(sim.workload) == {"palette"} and set(sim.device) == {"h100"}
    run = workdir / "results/runs/live/sd15-512/neustream/rate=4_cv=2_slo=3_seed=0"
    s = json.loads((run / "summary.json").read_text())
    assert s["backend"] == "live" and s["n_ok"] + s["n_late"] + s["n_dropped"] == 12
    fid = pd.read_csv(workdir / "results/tables/fidelity.csv")
    assert len(fid) == 2 and fid.diff_points.notna().all()
    assert fid.modelled_diff_points.notna().all() and set(fid.model_fit) == {"itself"}
    assert "max |live - sim|" in (workdir / "results/logs/fidelity.log").read_text()
    model = json.loads((workdir / "results/tables/device-models/sd15-512.json").read_text())
    assert model["n_runs"] == 2 and {"unet", "pipeline"} <= set(model["ratios"])
    for name in ("live/sd15-512_rate", "live/sd15-512_batches", "palette_batches"):
        assert (workdir / f"results/figures/{name}.png").stat().st_size > 10_000, name
    p = snakemake("-n", "--cores", "1", *args, cwd=workdir)
    assert "Nothing to be done" in p.stdout + p.stderr
