"""Live runs of several systems and rates in one process (the modules are built and their CUDA
graphs captured once), each written as `neustream serve` writes it.

    python tests/benchmarks/bench_live.py --workload dit-s2 \
        --latency resources/latency/h100/dit-s2.csv --systems neustream,clockwork \
        --rates 16,20,24 --cv 2 --slo 3 --requests 200 --out results/runs \
        [--lookahead] [--placement text_encoder=cuda:1,vae=cuda:1,unet=cuda:0]

Writes <out>/live/<workload>/<system>/rate=R_cv=C_slo=S_seed=K/ and prints one line per run;
`neustream fidelity` on those directories then gives the simulator's prediction for each.
``--lookahead`` decides each next batch while the GPU runs the current one (engine/live.py);
``--placement`` puts modules on several devices, one executor each (backends/diffusion/server.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from neustream.backends.diffusion.server import DiffusionServer, table_modules
from neustream.catalog.diffusion import get_program, parse_placement
from neustream.latency import LatencyTable, capacity_rps
from neustream.policy import make_policy
from neustream.runs.diffusion import serve_to_dir
from neustream.traces import make_trace, to_requests


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", required=True)
    p.add_argument("--latency", required=True)
    p.add_argument("--systems", default="neustream,clockwork")
    p.add_argument("--rates", required=True, help="comma-separated requests per second")
    p.add_argument("--cv", type=float, default=2.0)
    p.add_argument("--slo", type=float, default=3.0)
    p.add_argument("--step-delta", type=float, default=0.95)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--graphs", choices=("table", "on", "off"), default="table")
    p.add_argument("--lookahead", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--placement", help="module=device,... (default: all on the table's device)")
    p.add_argument("--out", required=True, help="root of the run directories")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    program = get_program(a.workload)
    table = LatencyTable.from_csv(a.latency, program)
    mods = table_modules(a.latency)
    if a.graphs != "table":
        mods["graphs"] = a.graphs == "on"
    t0 = time.perf_counter()
    # Every policy's caps fit under the table's largest sizes: build and capture once.
    server = DiffusionServer(a.workload, {m: table.max_batch(m) for m in program.module_names},
                             size=mods["size"], device=mods["device"], dtype=mods["dtype"],
                             graphs=mods["graphs"], seed=a.seed,
                             placement=parse_placement(a.placement))
    server.prepare()
    print(f"[bench] {a.workload}: modules ready in {time.perf_counter() - t0:.1f} s "
          f"({server.describe()})", file=sys.stderr, flush=True)
    device = Path(a.latency).parent.name
    for system in a.systems.split(","):
        for rate in (float(r) for r in a.rates.split(",")):
            policy = make_policy(system, program, table, a.slo, a.step_delta)
            rows = make_trace(program, rate, a.cv, a.requests, a.seed)
            requests = to_requests(rows, program, table, a.slo)
            settings = {
                "workload": a.workload, "system": system, "backend": "live", "device": device,
                "rate": rate, "cv": a.cv, "slo": a.slo, "seed": a.seed,
                "step_delta": a.step_delta, "sweeps": ["rate"], "latency_table": a.latency,
                "trace": None, "caps": {m: policy.cap(m) for m in policy.queue_names},
                "capacity_rps": capacity_rps(
                    program, table, sum(r.steps for r in requests) / len(requests)),
                "server": server.describe(), "table_device_name": mods["device_name"],
            }
            out = Path(a.out) / "live" / a.workload / system / (
                f"rate={rate:g}_cv={a.cv:g}_slo={a.slo:g}_seed={a.seed}")
            s = serve_to_dir(out, policy, server, requests, table, settings,
                             lookahead=a.lookahead)
            over = {m: round(v["all"].get("median", float("nan")), 4)
                    for m, v in s["overhead"].items()}
            print(f"{a.workload} {system} rate={rate:g}: {s['n_ok']}/{s['n_requests']} on time, "
                  f"{s['n_late']} late, {s['n_dropped']} dropped, goodput "
                  f"{s['goodput_rps']:.3f} req/s; overhead {over}; batch/table "
                  f"{ {m: round(v['median'], 3) for m, v in s['batch_time_over_table'].items()} }; "
                  f"max lag {s['arrival_lag_s']['max'] * 1e3:.1f} ms; lookahead {s['lookahead']} "
                  f"({s['wall_s']} s)", flush=True)
            if torch.cuda.is_available():
                torch.cuda.synchronize()


if __name__ == "__main__":
    main()
