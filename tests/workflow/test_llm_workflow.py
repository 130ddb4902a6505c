"""The workflow's LLM family: a small simulated run on the committed OPT-13B table, and the
plan of a live part (its traces simulated too, its table measured here through vLLM)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.support import ROOT, job_counts, snakemake

CFG = str(ROOT / "tests/configs/llm_sim.yaml")
ARGS = ("--configfile", CFG, "--replace-workflow-config")


@pytest.mark.slow
def test_small_simulated_llm_run(workdir):
    snakemake("--cores", "2", *ARGS, cwd=workdir)
    table = pd.read_csv(workdir / "results/tables/goodput.csv")
    assert set(table.system) == {"neustream-llm", "vllm"} and set(table.backend) == {"sim"}
    assert len(table.drop_duplicates(["system", "rate", "cv", "slo"])) == 3 * 2
    assert (table.n_requests == 60).all() and (table.tokens_on_time > 0).all()
    offered = table.tokens_requested * table.offered_rps / table.n_requests
    assert (table.token_goodput_tps <= offered + 1e-9).all()
    for name in ("opt-13b_rate", "opt-13b_slo", "opt-13b_batches"):
        assert (workdir / f"results/figures/{name}.png").stat().st_size > 10_000, name
    assert not (workdir / "results/figures/opt-13b_cv.png").exists()
    p = snakemake("-n", "--cores", "1", *ARGS, cwd=workdir)
    assert "Nothing to be done" in p.stdout + p.stderr


def test_a_live_part_is_served_through_vllm_and_simulated_on_the_table_measured_here(workdir):
    (workdir / "live.yaml").write_text(
        "llm:\n  systems: [neustream-llm, vllm]\n  live:\n    requests: 10\n    workloads:\n"
        "      opt-tiny:\n        default: {rate: 5, cv: 1, slo: 2}\n        rate: [5, 10]\n")
    p = snakemake("-n", "-p", "--cores", "1", "--configfile", "live.yaml",
                  "--replace-workflow-config", cwd=workdir)
    jobs = job_counts(p.stdout)
    assert jobs["serve"] == 4 and jobs["simulate"] == 4 and jobs["profile"] == 1
    assert "neustream profile --workload opt-tiny --engine vllm --device cpu" in p.stdout
    assert "--latency results/latency/local/opt-tiny.csv" in p.stdout
    assert "results/traces/live/opt-tiny/rate=10_cv=1_seed=0.csv" in p.stdout
    assert "results/figures/live/opt-tiny_rate.png" in p.stdout
