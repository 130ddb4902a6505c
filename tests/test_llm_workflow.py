"""The workflow's LLM rules: planning, a small simulated run, config errors."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from test_workflow import ROOT, job_counts, snakemake, sweep_points, workdir  # noqa: F401

CFG = str(ROOT / "tests/configs/llm_sim.yaml")


def test_default_config_plans_the_llm_runs(workdir):  # noqa: F811
    p = snakemake("-n", "--cores", "1", "--quiet", "rules", cwd=workdir)
    jobs = job_counts(p.stdout)
    llm = yaml.safe_load((ROOT / "config/config.yaml").read_text())["llm"]
    systems = len(llm["systems"])

    live = sum(len(sweep_points(s)) for s in llm["live"]["workloads"].values())
    sim = sum(len(sweep_points(s)) for s in llm["sim"]["workloads"].values())
    assert jobs["serve_llm"] == live * systems
    assert jobs["simulate_llm"] == (live + sim) * systems  # live traces are simulated too
    agent_models = 2 if (yaml.safe_load((ROOT / "config/config.yaml").read_text())
                         .get("agent") or {}).get("live", {}).get("workloads") else 0
    assert jobs["profile_llm"] == len(llm["live"]["workloads"]) + agent_models  # + tiny Llama, LLaVA
    sweeps = sum(bool(s.get(k)) for spec in (llm["live"], llm["sim"])
                 for s in spec["workloads"].values() for k in ("rate", "cv", "slo"))
    assert jobs["plot_llm"] == sweeps


@pytest.mark.slow
def test_small_simulated_llm_run(workdir):  # noqa: F811
    snakemake("--cores", "2", "--configfile", CFG, "--replace-workflow-config", cwd=workdir)
    table = pd.read_csv(workdir / "results/tables/goodput.csv")
    llm = table[table.workload == "opt-13b"]
    assert set(llm.system) == {"neustream-llm", "vllm"} and set(llm.backend) == {"sim"}
    assert len(llm.drop_duplicates(["system", "rate", "cv", "slo"])) == 3 * 2
    assert (llm.n_requests == 60).all() and (llm.tokens_on_time > 0).all()
    assert (llm.token_goodput_tps <= llm.tokens_requested * llm.offered_rps / llm.n_requests + 1e-9).all()
    for name in ("opt-13b_rate", "opt-13b_slo", "opt-13b_batches", "palette_batches"):
        assert (workdir / f"results/figures/{name}.png").stat().st_size > 10_000, name
    assert not (workdir / "results/figures/opt-13b_cv.png").exists()
    p = snakemake("-n", "--cores", "1", "--configfile", CFG, "--replace-workflow-config", cwd=workdir)
    assert "Nothing to be done" in p.stdout + p.stderr


def test_bad_llm_config_names_the_field(workdir):  # noqa: F811
    bad = workdir / "bad.yaml"
    bad.write_text("workloads:\n  palette:\n    default: {rate: 1, cv: 2, slo: 3}\n"
                   "llm:\n  sim:\n    workloads:\n      opt-13b:\n        default: {rate: 1, cv: 1, slo: 0.9}\n")
    p = snakemake("-n", "--cores", "1", "--configfile", "bad.yaml", "--replace-workflow-config",
                  cwd=workdir, check=False)
    assert p.returncode != 0 and "slo" in p.stdout + p.stderr
    bad.write_text("workloads:\n  palette:\n    default: {rate: 1, cv: 2, slo: 3}\n"
                   "llm:\n  systems: [orca]\n")
    p = snakemake("-n", "--cores", "1", "--configfile", "bad.yaml", "--replace-workflow-config",
                  cwd=workdir, check=False)
    assert p.returncode != 0 and "orca" in p.stdout + p.stderr
