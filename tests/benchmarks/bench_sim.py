"""Simulator speed: simulated requests per second, per workload and policy, side by side.

    python tests/benchmarks/bench_sim.py [--device h100] [--requests 500] [--workflow]

With --workflow it also times `snakemake --cores all` on the default config in a fresh
copy of the workflow (set-up excluded) and prints the wall time against the 10-minute goal.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from neustream.catalog.diffusion import PROGRAMS
from neustream.engine.diffusion.sim import simulate
from neustream.latency import LatencyTable
from neustream.policy import make_policy
from neustream.traces import make_trace, to_requests

ROOT = Path(__file__).resolve().parents[2]
POINT = {  # rate as a fraction of the table's capacity, cv, slo
    "light": (0.5, 2.0, 3.0), "knee": (1.0, 2.0, 3.0), "overload": (2.0, 4.0, 3.0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="h100")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--workflow", action="store_true")
    a = ap.parse_args()
    print(f"{'workload':10} {'load':9} {'system':16} {'wall_s':>7} {'req/s simulated':>16}")
    for name, program in PROGRAMS.items():
        table = LatencyTable.from_csv(ROOT / f"resources/latency/{a.device}/{name}.csv", program)
        from neustream.latency import capacity_rps

        cap = capacity_rps(program, table, sum(program.steps) / 2)
        for load, (frac, cv, slo) in POINT.items():
            rows = make_trace(program, frac * cap, cv, a.requests, 0)
            for system in ("neustream", "neustream-slack", "clockwork"):
                reqs = to_requests(rows, program, table, slo)
                t0 = time.perf_counter()
                simulate(make_policy(system, program, table, slo), table, reqs)
                wall = time.perf_counter() - t0
                print(f"{name:10} {load:9} {system:16} {wall:7.3f} {len(reqs) / wall:16.0f}")
    if a.workflow:
        with tempfile.TemporaryDirectory() as tmp:
            for item in ["Snakefile", "rules", "config", "report", "envs", "profiles", "resources"]:
                src = ROOT / item
                (shutil.copytree if src.is_dir() else shutil.copy)(src, Path(tmp) / item)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "snakemake", "--cores", "all", "--quiet"],
                           cwd=tmp, check=True)
            wall = time.perf_counter() - t0
            n = len(list(Path(tmp).glob("results/runs/*/*/*/*/summary.json")))
        print(f"default workflow: {n} runs in {wall:.0f} s "
              f"({wall / 600:.2f} of the 10-minute goal)")


if __name__ == "__main__":
    main()
