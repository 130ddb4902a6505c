"""The workflow's multi-agent rules: planning, a small simulated run, config errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from test_workflow import ROOT, job_counts, snakemake, sweep_points, workdir  # noqa: F401

CFG = str(ROOT / "tests/configs/agent_sim.yaml")


def test_default_config_plans_the_agent_runs(workdir):  # noqa: F811
    p = snakemake("-n", "--cores", "1", "--quiet", "rules", cwd=workdir)
    jobs = job_counts(p.stdout)
    agent = yaml.safe_load((ROOT / "config/config.yaml").read_text())["agent"]
    systems = len(agent["systems"])
    live_systems = len(agent["live"].get("systems") or agent["systems"])
    live = sum(len(sweep_points(s)) for s in agent["live"]["workloads"].values())
    sim = sum(len(sweep_points(s)) for s in agent["sim"]["workloads"].values())
    assert jobs["serve_agent"] == live * live_systems
    assert jobs["simulate_agent"] == live * live_systems + sim * systems  # live traces too
    assert jobs["exec_times"] == 1  # measured here for the live pipeline
    sweeps = sum(bool(s.get(k)) for spec in (agent["live"], agent["sim"])
                 for s in spec["workloads"].values() for k in ("rate", "cv", "slo"))
    assert jobs["plot_agent"] == sweeps


@pytest.mark.slow
def test_small_simulated_agent_run(workdir):  # noqa: F811
    snakemake("--cores", "2", "--configfile", CFG, "--replace-workflow-config", cwd=workdir)
    table = pd.read_csv(workdir / "results/tables/goodput.csv")
    four = table[table.workload == "matplotagent"]
    one = table[table.workload == "matplotagent-1gpu"]
    assert set(four.system) == {"neustream-llm", "vllm-054"} and set(four.backend) == {"sim"}
    assert len(four.drop_duplicates(["system", "rate", "cv", "slo"])) == 3 * 2
    assert (four.n_requests == 60).all() and (four.program == "matplotagent").all()
    assert {"tps_codellama1", "tps_llava", "tps_codellama2"} <= set(table.columns)
    assert (four.tps_codellama1 > 0).all() and (four.devices == 4).all()
    assert len(one) == 2 and (one.devices == 1).all()
    run = workdir / "results/runs/sim/matplotagent-1gpu/vllm-054/rate=0.25_cv=1_slo=5_seed=0"
    s = json.loads((run / "summary.json").read_text())
    assert s["placement"] == {"codellama1": 0, "llava-1": 0, "llava-2": 0, "codellama2": 0}
    for name in ("matplotagent_rate", "matplotagent_slo"):
        assert (workdir / f"results/figures/{name}.png").stat().st_size > 10_000, name
    assert not (workdir / "results/figures/matplotagent_cv.png").exists()


def test_agent_label_clashing_with_another_section_is_refused(workdir, tmp_path):  # noqa: F811
    cfg = yaml.safe_load((ROOT / "tests/configs/agent_sim.yaml").read_text())
    cfg["agent"]["sim"]["workloads"]["palette"] = {"program": "matplotagent",
                                                   "default": {"rate": 1, "cv": 1, "slo": 2}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = snakemake("-n", "--configfile", str(path), "--replace-workflow-config", cwd=workdir,
                  check=False)
    assert p.returncode != 0 and "palette also used by another section" in p.stdout + p.stderr
