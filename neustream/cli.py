"""`neustream <verb>`: thin commands over the package, one-line errors.

Heavy imports (torch, pandas, matplotlib) happen inside the verbs that need them,
so `simulate` and `trace` start fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _workload(name: str):
    from neustream.programs import get_program

    return get_program(name)


def _device_of(latency_csv: str) -> str:
    # resources/latency/<device>/<workload>.csv
    return Path(latency_csv).parent.name


def cmd_trace(a: argparse.Namespace) -> None:
    from neustream.workload import make_trace, write_trace

    program = _workload(a.workload)
    write_trace(a.out, make_trace(program, a.rate, a.cv, a.requests, a.seed))


def cmd_simulate(a: argparse.Namespace) -> None:
    from neustream.engine.sim import simulate
    from neustream.latency import LatencyTable, capacity_rps
    from neustream.policy import make_policy
    from neustream.record import write_run
    from neustream.workload import check_positive, make_trace, read_trace, to_requests

    program = _workload(a.workload)
    check_positive("rate", a.rate)
    check_positive("cv", a.cv)
    table = LatencyTable.from_csv(a.latency, program)
    policy = make_policy(a.system, program, table, a.slo, a.step_delta)
    if a.trace:
        rows = read_trace(a.trace, program)
    else:
        rows = make_trace(program, a.rate, a.cv, a.requests, a.seed)
    requests = to_requests(rows, program, table, a.slo)
    mean_steps = sum(r.steps for r in requests) / len(requests)
    t0 = time.perf_counter()

    def progress(run) -> None:
        print(f"[{a.system} {a.workload}] {run.n_done}/{len(requests)} done, "
              f"{run.n_ok} on time", file=sys.stderr, flush=True)

    run = simulate(policy, table, requests, progress=progress)
    settings = {
        "workload": a.workload, "system": a.system, "backend": "sim",
        "device": a.device or _device_of(a.latency), "rate": a.rate, "cv": a.cv,
        "slo": a.slo, "seed": a.seed, "step_delta": a.step_delta,
        "sweeps": [s for s in (a.sweeps or "").split(",") if s],
        "latency_table": str(a.latency), "trace": a.trace,
        "caps": {m: policy.cap(m) for m in policy.queue_names},
        "capacity_rps": capacity_rps(program, table, mean_steps),
        "wall_s": None,
    }
    settings["wall_s"] = round(time.perf_counter() - t0, 3)
    s = write_run(a.out, run, settings)
    print(f"{a.workload} {a.system} rate={a.rate} cv={a.cv} slo={a.slo}: "
          f"{s['n_ok']}/{s['n_requests']} on time, {s['n_late']} late, "
          f"{s['n_dropped']} dropped, goodput {s['goodput_rps']:.3f} req/s "
          f"({settings['wall_s']} s)", file=sys.stderr)


def cmd_profile(a: argparse.Namespace) -> None:
    import shlex

    from neustream.profiling import profile, write_table

    _workload(a.workload)
    df = profile(a.workload, size=a.size, device=a.device, dtype=a.dtype,
                 repeats=a.repeats, warmup=a.warmup, rounds=a.rounds,
                 batch_sizes=a.max_batch or None,
                 modules=a.modules.split(",") if a.modules else None)
    write_table(df, a.out, {"command": shlex.join(["neustream", *a.argv])})
    print(df.to_string(index=False))


def cmd_aggregate(a: argparse.Namespace) -> None:
    from neustream.analysis import aggregate

    summaries = list(a.summaries)
    if a.summary_list:
        summaries += Path(a.summary_list).read_text().split()
    aggregate(summaries, a.out)


def cmd_plot(a: argparse.Namespace) -> None:
    from neustream.analysis import plot_sweep

    plot_sweep(a.table, a.workload, a.sweep, a.out)


def cmd_plot_batches(a: argparse.Namespace) -> None:
    from neustream.analysis import plot_batches

    plot_batches(a.runs, a.out, title=a.title)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neustream", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help, description=help)
        q.set_defaults(fn=fn)
        return q

    def arrivals(q: argparse.ArgumentParser) -> None:
        q.add_argument("--workload", required=True)
        q.add_argument("--rate", type=float, required=True, help="requests per second")
        q.add_argument("--cv", type=float, required=True, help="burstiness: CV of the gaps")
        q.add_argument("--requests", type=int, default=500)
        q.add_argument("--seed", type=int, default=0)

    q = add("trace", cmd_trace, "write a trace CSV of Gamma arrivals")
    arrivals(q)
    q.add_argument("--out", required=True)

    q = add("simulate", cmd_simulate, "serve a trace in the simulator; write a run directory")
    arrivals(q)
    q.add_argument("--latency", required=True, help="latency table CSV")
    q.add_argument("--system", required=True, help="neustream, neustream-slack or clockwork")
    q.add_argument("--slo", type=float, required=True, help="deadline / stand-alone latency")
    q.add_argument("--step-delta", type=float, default=0.95)
    q.add_argument("--trace", help="trace CSV (default: generate from the arguments)")
    q.add_argument("--device", help="device name for the record (default: the table's folder)")
    q.add_argument("--sweeps", help="comma-separated sweeps this run belongs to")
    q.add_argument("--out", required=True, help="run directory")

    q = add("profile", cmd_profile, "measure a workload's latency table")
    q.add_argument("--workload", required=True)
    q.add_argument("--size", choices=("full", "tiny"), default="full")
    q.add_argument("--device", default="cpu")
    q.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp32")
    q.add_argument("--repeats", type=int, default=10, help="timed calls per batch size")
    q.add_argument("--warmup", type=int, default=3, help="untimed calls per batch size")
    q.add_argument("--rounds", type=int, default=1, help="sweeps over the batch sizes, pooled")
    q.add_argument("--max-batch", type=int, help="profile grid sizes up to this one (0: all)")
    q.add_argument("--modules", help="comma-separated subset of the workload's modules")
    q.add_argument("--out", required=True)

    q = add("aggregate", cmd_aggregate, "collect run summaries into the goodput table")
    q.add_argument("summaries", nargs="*", help="summary.json files")
    q.add_argument("--summary-list", help="file listing summary.json paths")
    q.add_argument("--out", required=True)

    q = add("plot", cmd_plot, "goodput against one swept parameter, systems side by side")
    q.add_argument("--table", required=True)
    q.add_argument("--workload", required=True)
    q.add_argument("--sweep", required=True, choices=("rate", "cv", "slo"))
    q.add_argument("--out", required=True)

    q = add("plot-batches", cmd_plot_batches, "batch size over time of some runs")
    q.add_argument("runs", nargs="+", help="run directories")
    q.add_argument("--title", default="")
    q.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded by verbs that write provenance
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"neustream {args.verb}: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
