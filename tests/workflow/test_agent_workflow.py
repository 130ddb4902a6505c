"""The workflow's multi-agent family: a small simulated run under two placements, and the plan
of a live part."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.support import ROOT, job_counts, snakemake

CFG = str(ROOT / "tests/configs/agent_sim.yaml")


@pytest.mark.slow
def test_small_simulated_agent_run(workdir):
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
    for name in ("matplotagent_rate", "matplotagent_slo", "matplotagent_batches"):
        assert (workdir / f"results/figures/{name}.png").stat().st_size > 10_000, name
    assert not (workdir / "results/figures/matplotagent_cv.png").exists()


def test_a_live_pipeline_measures_its_models_and_code_stages_here(workdir):
    (workdir / "live.yaml").write_text(
        "agent:\n  systems: [neustream-llm]\n  live:\n    requests: 4\n    workloads:\n"
        "      matplotagent-tiny:\n        default: {rate: 1, cv: 1, slo: 8}\n")
    p = snakemake("-n", "-p", "--cores", "1", "--configfile", "live.yaml",
                  "--replace-workflow-config", cwd=workdir)
    jobs = job_counts(p.stdout)
    assert jobs["serve"] == 1 and jobs["simulate"] == 1 and jobs["profile"] == 3
    assert "neustream exec-times --repeats 3 --out results/latency/local/exec-times.csv" in p.stdout
    assert "--placement shared --engine-device cpu --kv-cache-gib 0.25" in p.stdout  # live
    assert "--placement shared --exec-times results/latency/local/exec-times.csv" in p.stdout
