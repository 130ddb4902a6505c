"""`backend: live`: the main sweeps served by the live servers instead of the simulator."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from test_workflow import ROOT, job_counts, snakemake, workdir  # noqa: F401 (fixture)

CFG = str(ROOT / "tests/configs/live_backend.yaml")


def test_live_backend_plans_live_serving_not_simulation(workdir):  # noqa: F811
    p = snakemake("-n", "--configfile", CFG, "--replace-workflow-config", "--quiet", "rules",
                  cwd=workdir)
    jobs = job_counts(p.stdout)
    assert jobs["serve"] == 2 and jobs["profile"] == 1 and "simulate" not in jobs
    p = snakemake("-n", "-p", "--configfile", CFG, "--replace-workflow-config", cwd=workdir)
    assert "neustream serve --workload sd15-512" in p.stdout
    assert "results/runs/live/sd15-512/neustream/rate=4_cv=2_slo=3_seed=0" in p.stdout


def test_live_backend_refuses_a_workload_listed_twice(workdir, tmp_path):  # noqa: F811
    cfg = yaml.safe_load((ROOT / "tests/configs/live_backend.yaml").read_text())
    cfg["live"] = {"workloads": {"sd15-512": {"default": {"rate": 2, "cv": 2, "slo": 3}}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = snakemake("-n", "--configfile", str(path), "--replace-workflow-config", cwd=workdir,
                  check=False)
    assert p.returncode != 0 and "under one of `workloads` and `live.workloads`" in p.stdout + p.stderr


@pytest.mark.slow
def test_live_backend_serves_the_main_sweep(workdir):  # noqa: F811
    snakemake("--cores", "2", "--configfile", CFG, "--replace-workflow-config", cwd=workdir)
    table = pd.read_csv(workdir / "results/tables/goodput.csv")
    assert set(table.backend) == {"live"} and set(table.system) == {"neustream", "clockwork"}
    assert (table.n_requests == 6).all()
    run = workdir / "results/runs/live/sd15-512/neustream/rate=4_cv=2_slo=3_seed=0"
    s = json.loads((run / "summary.json").read_text())
    assert s["backend"] == "live" and s["n_ok"] + s["n_late"] + s["n_dropped"] == 6
    assert (workdir / "results/figures/sd15-512_batches.png").stat().st_size > 10_000
