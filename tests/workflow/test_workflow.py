"""The Snakemake workflow: the plan of the default config, lint, config errors (one run
identity, each refused duplicate naming its key), and a small real run in a clean directory."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.support import ROOT, job_counts, snakemake, sweep_points

DEFAULT = yaml.safe_load((ROOT / "config/config.yaml").read_text())


def planned(workdir: Path, *args: str) -> dict[str, int]:
    return job_counts(snakemake("-n", "--cores", "1", "--quiet", "rules", *args, cwd=workdir).stdout)


def test_default_config_plans_every_run_once(workdir: Path):
    jobs = planned(workdir)
    sim = live = figures = bounds = 0
    for family, sec in DEFAULT.items():
        for part in ("sim", "live"):
            p = sec.get(part) or {}
            systems = len(p.get("systems") or sec["systems"])
            for spec in (p.get("workloads") or {}).values():
                points = len(sweep_points(spec)) * len(sec.get("seeds", [0]))
                runs = points * systems
                figures += sum(bool(spec.get(s)) for s in ("rate", "cv", "slo"))
                simulated = part == "sim" or p.get("simulate", True)
                if part == "live":  # a live part also simulates its traces unless told not to
                    live += runs
                sim += runs * simulated
                # one deadline-aware bound per simulated diffusion point, whatever the system
                bounds += points * simulated * (family == "diffusion")
    assert jobs["simulate"] == sim and jobs["serve"] == live and jobs["bound"] == bounds
    assert jobs["plot"] == figures and jobs["aggregate"] == 1 and jobs["fidelity"] == 1
    assert jobs["plot_batches"] == sum(len((sec.get(p) or {}).get("workloads") or {})
                                       for sec in DEFAULT.values() for p in ("sim", "live"))
    # Measured here: the live sd15-512 modules, the tiny OPT, Llama and LLaVA, the code stages.
    assert jobs["profile"] == 5


def test_lint_is_clean(workdir: Path):
    p = snakemake("--lint", cwd=workdir, check=False)
    out = p.stdout + p.stderr
    assert "Lints for" not in out, out[-4000:]


def bad(workdir: Path, config: dict | str) -> str:
    """Plan ``config`` (replacing the default); the error output (the plan must fail)."""
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    (workdir / "bad.yaml").write_text(text)
    p = snakemake("-n", "--cores", "1", "--configfile", "bad.yaml", "--replace-workflow-config",
                  cwd=workdir, check=False)
    assert p.returncode != 0, p.stdout[-2000:]
    return p.stdout + p.stderr


def sim_config(**sweep) -> dict:
    spec = {"default": {"rate": 1, "cv": 2, "slo": 3}, **sweep}
    return {"diffusion": {"sim": {"workloads": {"palette": spec}}}}


def test_bad_values_are_rejected_naming_the_field(workdir: Path):
    out = bad(workdir, "diffusion:\n  sim:\n    workloads:\n      sd15-256:\n"
                       "        default: {rate: 1, cv: 2, slo: 0.5}\n")
    assert "slo" in out
    assert "orca" in bad(workdir, "llm:\n  systems: [orca]\n")
    assert "'sd99' is not one of" in bad(workdir, {"diffusion": {"sim": {"workloads": {
        "sd99": {"default": {"rate": 1, "cv": 1, "slo": 2}}}}}})
    assert "Unevaluated properties" in bad(workdir, sim_config(placement="spread"))
    assert "no runs" in bad(workdir, "diffusion: {}\n")


@pytest.mark.parametrize("config, key", [
    (sim_config(rate=[1, 1]), "diffusion.sim.workloads.palette.rate lists 1 twice"),
    (sim_config(rate=[1, 1.0000001]), "diffusion.sim.workloads.palette.rate lists 1 twice"),
    ({**sim_config(), "diffusion": {**sim_config()["diffusion"], "seeds": [0, 0]}},
     "diffusion.seeds lists 0 twice"),
    ({"diffusion": {"systems": ["neustream", "neustream"], **sim_config()["diffusion"]}},
     "diffusion.systems lists neustream twice"),
])
def test_a_run_named_twice_is_refused_naming_the_key(workdir: Path, config, key):
    out = bad(workdir, config)
    assert key in out, out[-2000:]


def test_a_live_part_whose_simulation_repeats_a_sim_run_is_refused(workdir: Path):
    config = sim_config()
    config["diffusion"]["live"] = {"workloads": {"palette": {"default": {"rate": 1, "cv": 2,
                                                                         "slo": 3}}}}
    out = bad(workdir, config)
    assert ("diffusion.live.workloads.palette and diffusion.sim.workloads.palette both make "
            "run results/runs/sim/palette/neustream/rate=1_cv=2_slo=3_seed=0") in out
    config["diffusion"]["live"]["simulate"] = False  # the way out the message names
    (workdir / "ok.yaml").write_text(yaml.safe_dump(config))
    jobs = planned(workdir, "--configfile", "ok.yaml", "--replace-workflow-config")
    assert jobs["serve"] == 2 and jobs["simulate"] == 2


def test_one_label_in_two_families_is_refused(workdir: Path):
    config = sim_config()
    config["agent"] = {"sim": {"workloads": {"palette": {
        "program": "matplotagent", "default": {"rate": 1, "cv": 2, "slo": 3}}}}}
    out = bad(workdir, config)
    assert "agent.sim.workloads.palette and diffusion.sim.workloads.palette" in out


@pytest.mark.slow
def test_small_real_run(workdir: Path):
    cfg = str(ROOT / "tests/configs/tiny.yaml")
    args = ("--configfile", cfg, "--replace-workflow-config")
    snakemake("--cores", "2", *args, cwd=workdir)
    table = pd.read_csv(workdir / "results/tables/goodput.csv")
    # sd15-256: 2 + 1 + 1 distinct points, palette: 2, two systems each
    runs = table.drop_duplicates(["workload", "system", "rate", "cv", "slo", "seed"])
    assert len(runs) == (4 + 2) * 2
    assert set(table.system) == {"neustream", "clockwork"} and set(table.backend) == {"sim"}
    assert (table.n_ok + table.n_late + table.n_dropped == table.n_requests).all()
    assert (table.n_requests == 40).all()
    # every simulated run has its trace's deadline-aware bound, and no system beats it
    assert table.slo_bound_rps.notna().all()
    assert (table.goodput_rps <= table.slo_bound_rps + 1e-9).all()
    assert (table.groupby(["workload", "rate", "cv", "slo"]).slo_bound_rps.nunique() == 1).all()
    for name in ["sd15-256_rate", "sd15-256_cv", "sd15-256_slo", "sd15-256_batches",
                 "palette_rate", "palette_batches"]:
        png = workdir / f"results/figures/{name}.png"
        assert png.stat().st_size > 10_000, name
    assert not (workdir / "results/figures/palette_cv.png").exists()
    p = snakemake("-n", "--cores", "1", *args, cwd=workdir)
    assert "Nothing to be done" in p.stdout + p.stderr
    # One rule reruns on its own: a lost run is rebuilt by asking for it, nothing else runs.
    summary = next((workdir / "results/runs/sim/palette/clockwork").glob("*/summary.json"))
    summary.unlink()
    assert planned(workdir, *args, str(summary.relative_to(workdir))) == {"simulate": 1,
                                                                         "total": 1}
    # A lost table reruns the aggregation and the figures that read it, not the runs.
    (workdir / "results/tables/goodput.csv").unlink()
    jobs = planned(workdir, *args)
    assert jobs["aggregate"] == 1 and jobs["plot"] == 4 and "trace" not in jobs
    assert "bound" not in jobs


@pytest.mark.slow
def test_profile_rule_measures_tables_for_this_machine(workdir: Path):
    pytest.importorskip("torch")
    (workdir / "local.yaml").write_text(
        "profile: {size: tiny, repeats: 2, warmup: 1, max_batch: 4}\n"
        "diffusion:\n  sim:\n    device: local\n    requests: 30\n    workloads:\n"
        "      palette:\n        default: {rate: 0.5, cv: 1, slo: 3}\n")
    args = ("--configfile", "local.yaml", "--replace-workflow-config")
    snakemake("--cores", "2", *args, cwd=workdir)
    table = pd.read_csv(workdir / "results/latency/local/palette.csv")
    assert list(table.columns) == ["module", "batch_size", "latency_s"]
    assert sorted(table.batch_size) == [1, 2, 3, 4]
    assert (workdir / "results/latency/local/palette.json").is_file()
    assert not (workdir / "resources/latency/local").exists()  # resources/ holds inputs only
    s = pd.read_csv(workdir / "results/tables/goodput.csv")
    assert set(s.device) == {"local"} and len(s) == 2
    # The committed tables of other devices are data, never profile outputs.
    p = snakemake("-n", "--cores", "1", "--forcerun", "profile", *args,
                  "resources/latency/h100/palette.csv", cwd=workdir, check=False)
    assert p.returncode != 0 or "profile" not in p.stdout
