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
    from neustream.cli_agent import is_agent_workload, trace_agent
    from neustream.cli_llm import is_llm_workload, trace_llm
    from neustream.workload import make_trace, write_trace

    if is_llm_workload(a.workload):
        return trace_llm(a)
    if is_agent_workload(a.workload):
        return trace_agent(a)
    program = _workload(a.workload)
    write_trace(a.out, make_trace(program, a.rate, a.cv, a.requests, a.seed))


def _serving_setup(a: argparse.Namespace):
    """What `simulate` and `serve` share: checked settings, table, policy, requests."""
    from neustream.latency import LatencyTable
    from neustream.policy import make_policy
    from neustream.workload import check_positive, make_trace, read_trace, to_requests

    program = _workload(a.workload)
    check_positive("rate", a.rate)
    check_positive("cv", a.cv)
    table = LatencyTable.from_csv(a.latency, program)
    policy = make_policy(a.system, program, table, a.slo, a.step_delta)
    rows = read_trace(a.trace, program) if a.trace else make_trace(
        program, a.rate, a.cv, a.requests, a.seed)
    return program, table, policy, to_requests(rows, program, table, a.slo)


def cmd_simulate(a: argparse.Namespace) -> None:
    from neustream.engine.sim import simulate
    from neustream.latency import capacity_rps
    from neustream.record import write_run

    program, table, policy, requests = _serving_setup(a)
    mean_steps = sum(r.steps for r in requests) / len(requests)
    t0 = time.perf_counter()

    def progress(run) -> None:
        # Goodput so far: on-time requests per second of trace up to the last finished
        # batch (the summary's goodput divides by the whole trace's span instead).
        now_s = run.batches[-1]["end_s"] if run.batches else 0.0
        print(f"[{a.system} {a.workload}] {run.n_done}/{len(requests)} requests done "
              f"({run.n_done / len(requests):.0%}), {run.n_ok} on time, goodput "
              f"{run.n_ok / now_s if now_s > 0 else 0.0:.3f} req/s at t={now_s:.1f} s "
              f"of {requests[-1].arrival_s:.1f} s ({time.perf_counter() - t0:.1f} s wall)",
              file=sys.stderr, flush=True)

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


def cmd_serve(a: argparse.Namespace) -> None:
    import torch

    from neustream.engine.live import LiveError, serve_to_dir
    from neustream.latency import capacity_rps
    from neustream.models.server import DiffusionServer, parse_placement, table_modules
    from neustream.models.weights import WeightsError

    program, table, policy, requests = _serving_setup(a)
    mods = table_modules(a.latency)  # run the modules the table describes
    if a.graphs != "table":
        mods["graphs"] = a.graphs == "on"
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        server = DiffusionServer(
            a.workload, {m: policy.cap(m) for m in program.module_names}, size=mods["size"],
            device=mods["device"], dtype=mods["dtype"], graphs=mods["graphs"], weights=a.weights,
            weights_dir=a.weights_dir, seed=a.seed, max_requests=len(requests),
            placement=parse_placement(a.placement) if a.placement else None)
    except WeightsError as e:
        raise SystemExit(f"neustream serve: error: {e}") from None
    server.prepare()
    settings = {
        "workload": a.workload, "system": a.system, "backend": "live",
        "device": a.device or _device_of(a.latency), "rate": a.rate, "cv": a.cv,
        "slo": a.slo, "seed": a.seed, "step_delta": a.step_delta,
        "sweeps": [s for s in (a.sweeps or "").split(",") if s],
        "latency_table": str(a.latency), "trace": a.trace,
        "caps": {m: policy.cap(m) for m in policy.queue_names},
        "capacity_rps": capacity_rps(program, table, sum(r.steps for r in requests) / len(requests)),
        "server": server.describe(), "table_device_name": mods["device_name"],
    }

    def progress(run, now_s: float) -> None:
        print(f"[{a.system} {a.workload}] t={now_s:.1f} s: {run.n_done}/{len(requests)} done, "
              f"{run.n_ok} on time", file=sys.stderr, flush=True)

    try:
        s = serve_to_dir(a.out, policy, server, requests, table, settings,
                         max_lag_s=a.max_lag, progress=progress, lookahead=a.lookahead)
    except LiveError as e:
        raise SystemExit(f"neustream serve: error: {e}") from None
    print(f"{a.workload} {a.system} live rate={a.rate} cv={a.cv} slo={a.slo}: "
          f"{s['n_ok']}/{s['n_requests']} on time, {s['n_late']} late, "
          f"{s['n_dropped']} dropped, goodput {s['goodput_rps']:.3f} req/s ({s['wall_s']} s)",
          file=sys.stderr)


def cmd_fidelity(a: argparse.Namespace) -> None:
    from neustream.fidelity import compare

    runs = list(a.runs)
    if a.run_list:
        runs += Path(a.run_list).read_text().split()
    compare(runs, a.out)


def cmd_weights(a: argparse.Namespace) -> None:
    from neustream.models.weights import WeightsError, fetch, write_manifest

    try:
        m = write_manifest(a.model, fetch(a.model, a.cache), a.out)
    except WeightsError as e:
        raise SystemExit(f"neustream weights: error: {e}") from None
    print(f"{a.model}: {m['repo']}@{m['revision']} in {m['snapshot']}", file=sys.stderr)


def cmd_profile(a: argparse.Namespace) -> None:
    import shlex

    from neustream.profiling import profile, write_table

    _workload(a.workload)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    df = profile(a.workload, size=a.size, device=a.device, dtype=a.dtype,
                 repeats=a.repeats, warmup=a.warmup, rounds=a.rounds,
                 batch_sizes=a.max_batch or None,
                 modules=a.modules.split(",") if a.modules else None, graphs=a.graphs,
                 served=a.served)
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

    q = add("serve", cmd_serve, "serve a trace live with real modules; write a run directory")
    arrivals(q)
    q.add_argument("--latency", required=True,
                   help="latency table CSV of this machine; its sidecar JSON says which modules run")
    q.add_argument("--system", required=True, help="neustream, neustream-slack or clockwork")
    q.add_argument("--slo", type=float, required=True, help="deadline / stand-alone latency")
    q.add_argument("--step-delta", type=float, default=0.95)
    q.add_argument("--trace", help="trace CSV (default: generate from the arguments)")
    q.add_argument("--weights", choices=("random", "pretrained"), default="random")
    q.add_argument("--weights-dir", default="resources/weights",
                   help="hub cache holding the pretrained weights (see `neustream weights`)")
    q.add_argument("--graphs", choices=("table", "on", "off"), default="table",
                   help="CUDA graphs: as the table was measured (default), or forced")
    q.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    q.add_argument("--max-lag", type=float, default=1.0,
                   help="stop if the load generator falls this many seconds behind the trace")
    q.add_argument("--placement", help="module=device,... (e.g. text_encoder=cuda:1,vae=cuda:1,"
                   "unet=cuda:0): one executor per device; default: every module on one device")
    q.add_argument("--lookahead", action="store_true",
                   help="decide the next batch while the GPU runs the current one (CUDA only)")
    q.add_argument("--device", help="device name for the record (default: the table's folder)")
    q.add_argument("--sweeps", help="comma-separated sweeps this run belongs to")
    q.add_argument("--out", required=True, help="run directory")

    q = add("fidelity", cmd_fidelity,
            "simulate the trace of each live run on its table; compare attainment")
    q.add_argument("runs", nargs="*", help="live run directories")
    q.add_argument("--run-list", help="file listing live run directories")
    q.add_argument("--out", required=True, help="CSV, one row per run")

    q = add("weights", cmd_weights, "download a model's pinned weights into a hub cache")
    q.add_argument("--model", required=True, help="sd15 or dit-xl2")
    q.add_argument("--cache", required=True, help="hub cache folder (resources/weights)")
    q.add_argument("--out", required=True, help="manifest JSON saying where the files are")

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
    q.add_argument("--graphs", action="store_true",
                   help="time CUDA-graph replays (what a live server with graphs runs)")
    q.add_argument("--served", action="store_true",
                   help="time the live worker's whole call (states in, call, outputs out)")
    q.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
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

    from neustream.cli_llm import add_llm_verbs

    add_llm_verbs(add)  # simulate-llm, serve-llm, profile-llm, plot-llm
    from neustream.cli_agent import add_agent_verbs

    add_agent_verbs(add)  # simulate-agent, serve-agent, plot-agent, exec-times
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
