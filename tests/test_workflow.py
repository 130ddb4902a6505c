"""The Snakemake workflow: dry runs, lint, and a small real run in a clean directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ["Snakefile", "rules", "config", "report", "envs", "profiles", "resources"]


def snakemake(*args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", *args]
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p



def sweep_points(spec) -> set:
    """(rate, cv, slo) points of a workload spec: each sweep through the default point, the
    default alone when there is no sweep (as rules/common.smk's points())."""
    d = spec["default"]
    pts = {tuple(float(v) if p == s else float(d[p]) for p in ("rate", "cv", "slo"))
           for s in ("rate", "cv", "slo") for v in spec.get(s, [])}
    return pts or {tuple(float(d[p]) for p in ("rate", "cv", "slo"))}

@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name in WORKFLOW:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


def job_counts(out: str) -> dict[str, int]:
    """Rule -> number of jobs, from the job-stats table of a dry run."""
    rows = (line.split() for line in out.splitlines())
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit()}


def test_default_config_dry_run_plans_every_run(workdir: Path):
    p = snakemake("-n", "--cores", "1", "--quiet", "rules", cwd=workdir)
    counts = job_counts(p.stdout)
    import yaml

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    expected = 0
    for spec in cfg["workloads"].values():
        points = set()
        d = spec["default"]
        for sweep in ("rate", "cv", "slo"):
            for v in spec.get(sweep, []):
                points.add(tuple(float(v) if p == sweep else float(d[p]) for p in ("rate", "cv", "slo")))
        expected += len(points) * len(cfg["systems"]) * len(cfg.get("seeds", [0]))
    assert counts["simulate"] == expected
    assert counts["plot_sweep"] == 3 * len(cfg["workloads"]) and counts["aggregate"] == 1


def test_lint_is_clean():
    p = snakemake("--lint", check=False)
    out = p.stdout + p.stderr
    assert "Lints for" not in out, out[-4000:]


def test_bad_config_is_rejected_naming_the_field(workdir: Path):
    bad = workdir / "bad.yaml"
    bad.write_text("workloads:\n  sd15-256:\n    default: {rate: 1, cv: 2, slo: 0.5}\n")
    p = snakemake("-n", "--cores", "1", "--configfile", "bad.yaml", "--replace-workflow-config",
                  cwd=workdir, check=False)
    assert p.returncode != 0
    assert "slo" in p.stdout + p.stderr


@pytest.mark.slow
def test_small_real_run(workdir: Path):
    snakemake("--cores", "2", "--configfile", str(ROOT / "tests/configs/tiny.yaml"),
              "--replace-workflow-config", cwd=workdir)
    table = pd.read_csv(workdir / "results/tables/goodput.csv")
    # sd15-256: 2 + 1 + 1 distinct points, palette: 2, two systems each
    runs = table.drop_duplicates(["workload", "system", "rate", "cv", "slo", "seed"])
    assert len(runs) == (4 + 2) * 2
    assert set(table.system) == {"neustream", "clockwork"}
    assert (table.n_ok + table.n_late + table.n_dropped == table.n_requests).all()
    assert (table.n_requests == 40).all()
    for name in ["sd15-256_rate", "sd15-256_cv", "sd15-256_slo", "sd15-256_batches",
                 "palette_rate", "palette_batches"]:
        png = workdir / f"results/figures/{name}.png"
        assert png.stat().st_size > 10_000, name
    assert not (workdir / "results/figures/palette_cv.png").exists()
    cfg = str(ROOT / "tests/configs/tiny.yaml")
    p = snakemake("-n", "--cores", "1", "--configfile", cfg, "--replace-workflow-config",
                  cwd=workdir)
    assert "Nothing to be done" in p.stdout + p.stderr
    # One rule reruns on its own: a lost run is rebuilt by asking for it, nothing else runs.
    summary = next((workdir / "results/runs/sim/palette/clockwork").glob("*/summary.json"))
    summary.unlink()
    p = snakemake("-n", "--cores", "1", "--quiet", "rules", "--configfile", cfg,
                  "--replace-workflow-config", str(summary.relative_to(workdir)), cwd=workdir)
    assert job_counts(p.stdout) == {"simulate": 1, "total": 1}
    # A lost table reruns the aggregation and the figures that read it, not the runs.
    (workdir / "results/tables/goodput.csv").unlink()
    p = snakemake("-n", "--cores", "1", "--quiet", "rules", "--configfile", cfg,
                  "--replace-workflow-config", cwd=workdir)
    jobs = job_counts(p.stdout)
    assert jobs["aggregate"] == 1 and jobs["plot_sweep"] == 4 and "trace" not in jobs


@pytest.mark.slow
def test_profile_rule_measures_tables_for_this_machine(workdir: Path):
    pytest.importorskip("torch")
    (workdir / "local.yaml").write_text(
        "device: local\nrequests: 30\n"
        "profile: {device: local, size: tiny, repeats: 2, warmup: 1, max_batch: 4}\n"
        "workloads:\n  palette:\n    default: {rate: 0.5, cv: 1, slo: 3}\n")
    snakemake("--cores", "2", "--configfile", "local.yaml", "--replace-workflow-config",
              cwd=workdir)
    table = pd.read_csv(workdir / "resources/latency/local/palette.csv")
    assert list(table.columns) == ["module", "batch_size", "latency_s"]
    assert sorted(table.batch_size) == [1, 2, 3, 4]
    assert (workdir / "resources/latency/local/palette.json").is_file()
    s = pd.read_csv(workdir / "results/tables/goodput.csv")
    assert set(s.device) == {"local"} and len(s) == 2
    # The committed tables of other devices are data, never profile outputs.
    p = snakemake("-n", "--cores", "1", "--forcerun", "profile", "--configfile", "local.yaml",
                  "--replace-workflow-config", "resources/latency/h100/palette.csv",
                  cwd=workdir, check=False)
    assert p.returncode != 0 or "profile" not in p.stdout
