"""The workflow's live sweep, for real, in a clean directory: tables measured here, two live
runs of tiny modules on the CPU, their goodput table, the fidelity table and the figure."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """\
device: h100
requests: 20
systems: [neustream]
workloads:
  palette:
    default: {rate: 0.5, cv: 2, slo: 3}
profile: {max_batch: 8, repeats: 2, warmup: 1}
live:
  device: local
  requests: 12
  systems: [neustream, clockwork]
  workloads:
    sd15-512:
      default: {rate: 4, cv: 2, slo: 3}
      rate: [4]
"""


def snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.mark.slow
def test_live_sweep_runs_end_to_end(tmp_path: Path):
    pytest.importorskip("torch")
    for name in ["Snakefile", "rules", "config", "report", "envs", "profiles", "resources"]:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    shutil.rmtree(tmp_path / "resources" / "latency" / "local", ignore_errors=True)
    (tmp_path / "live.yaml").write_text(CONFIG)
    args = ["--configfile", "live.yaml", "--replace-workflow-config"]
    snakemake("--cores", "2", *args, cwd=tmp_path)
    assert (tmp_path / "resources/latency/local/sd15-512.json").is_file()  # measured here
    live = pd.read_csv(tmp_path / "results/tables/goodput_live.csv")
    assert set(live.backend) == {"live"} and set(live.device) == {"local"}
    assert sorted(live.system) == ["clockwork", "neustream"]
    assert (live.n_ok + live.n_late + live.n_dropped == live.n_requests).all()
    assert (live.n_requests == 12).all()
    fid = pd.read_csv(tmp_path / "results/tables/fidelity.csv")
    assert len(fid) == 2 and fid.diff_points.notna().all()
    assert "diff" in (tmp_path / "results/logs/fidelity.log").read_text()
    assert (tmp_path / "results/figures/live/sd15-512_rate.png").stat().st_size > 10_000
    # the simulated sweep is untouched by the live one
    sim = pd.read_csv(tmp_path / "results/tables/goodput.csv")
    assert set(sim.backend) == {"sim"}
    p = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *args],
                       cwd=tmp_path, capture_output=True, text=True)
    assert "Nothing to be done" in p.stdout + p.stderr
