"""Diffusion policies against the deadline-aware goodput bound, per workload and sweep point.

    python tests/benchmarks/bench_bound.py [--workloads sd15-256,dit-s2] [--sweeps rate]
        [--systems neustream,neustream-slack] [--requests 500] [--seed 0] [--nodes 1]

Runs the default config's simulated diffusion sweeps (config/config.yaml: workloads, points,
device tables under resources/latency/, request count) in process: for each point the bound
of its trace (analysis/bound.py) and each system's requests on time over it, side by side;
then per workload the mean ratio of each system and, for every system after the first two,
the points where it beats or trails the best of the paper's `neustream` and `neustream-slack`.
--nodes N bounds with x_i binary, the best bound HiGHS proves in N branch-and-bound nodes
(tighter at tight SLOs, 2-30 s a point instead of 0.02-1 s). Not run by the test suite (about
3 minutes for everything on one core with the LP).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import yaml

from neustream.analysis.bound import goodput_bound
from neustream.catalog.diffusion import get_program
from neustream.engine.diffusion.sim import simulate
from neustream.latency import LatencyTable
from neustream.policy import POLICIES, make_policy
from neustream.traces import make_trace, to_requests

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = ("rate", "cv", "slo")
BASE = ("neustream", "neustream-slack")  # what a new policy is compared with


def points(spec: dict, sweeps) -> list[tuple[str, float, float, float]]:
    """(sweep, rate, cv, slo) of each point of a workload's sweeps, as the workflow has them."""
    d = spec["default"]
    out = []
    for s in sweeps:
        for v in spec.get(s, []):
            p = {**d, s: v}
            out.append((s, float(p["rate"]), float(p["cv"]), float(p["slo"])))
    return out


def main() -> None:
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())["diffusion"]
    sim = config["sim"]
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default=",".join(sim["workloads"]))
    ap.add_argument("--sweeps", default=",".join(SWEEPS))
    ap.add_argument("--systems", default=",".join(POLICIES["diffusion"]))
    ap.add_argument("--requests", type=int, default=sim.get("requests", 500))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nodes", type=int, default=0, help="MIP nodes (0: the LP)")
    a = ap.parse_args()
    systems = a.systems.split(",")
    device = sim.get("device", "h100")
    print(f"goodput over the bound (requests on time / bound{', MIP' if a.nodes else ''}), "
          f"{a.requests} requests, seed {a.seed}, {device} tables")
    print(f"{'workload':9} {'sweep':5} {'rate':>5} {'cv':>4} {'slo':>4} {'bound':>5} {'lp_s':>5} "
          + " ".join(f"{s:>16}" for s in systems))
    ratios: dict[tuple[str, str], list[float]] = {}
    versus: dict[tuple[str, str], list[int]] = {}  # (workload, system) -> [wins, ties, losses]
    t_all = time.perf_counter()
    for name in a.workloads.split(","):
        program = get_program(name)
        table = LatencyTable.from_csv(ROOT / f"resources/latency/{device}/{name}.csv", program)
        for sweep, rate, cv, slo in points(sim["workloads"][name], a.sweeps.split(",")):
            rows = make_trace(program, rate, cv, a.requests, a.seed)
            bound = goodput_bound(program, table, to_requests(rows, program, table, slo),
                                  nodes=a.nodes)
            ok = {}
            for system in systems:
                run = simulate(make_policy(system, program, table, slo), table,
                               to_requests(rows, program, table, slo))
                ok[system] = run.n_ok
                ratios.setdefault((name, system), []).append(run.n_ok / max(bound.requests, 1))
            cells = " ".join(f"{ok[s]:5d} ({ok[s] / max(bound.requests, 1):4.2f})    "
                             for s in systems)
            print(f"{name:9} {sweep:5} {rate:5g} {cv:4g} {slo:4g} {bound.requests:5d} "
                  f"{bound.seconds:5.2f} {cells}", flush=True)
            best = max((ok[s] for s in BASE if s in ok), default=None)
            for s in systems:
                if s in BASE or best is None:
                    continue
                tally = versus.setdefault((name, s), [0, 0, 0])
                tally[0 if ok[s] > best else 1 if ok[s] == best else 2] += 1
    print("\nmean goodput / bound over each workload's points")
    names = list(dict.fromkeys(w for w, _ in ratios))
    print(f"{'workload':9} " + " ".join(f"{s:>16}" for s in systems))
    for name in names:
        print(f"{name:9} " + " ".join(f"{statistics.fmean(ratios[name, s]):16.3f}"
                                      for s in systems))
    for (name, s), (win, tie, loss) in versus.items():
        print(f"{s} vs the best of {', '.join(BASE)} on {name}: {win} better, {tie} equal, "
              f"{loss} worse")
    print(f"({time.perf_counter() - t_all:.0f} s)")


if __name__ == "__main__":
    main()
