"""Diffusion runs: a spec's table, policy and requests, served by the simulator or live.

Both engines end in the same record (record.py); a live run that fails keeps its partial
records in ``<out>.failed/`` and raises RunError.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from neustream.catalog.diffusion import check_placement, get_program, parse_placement
from neustream.latency import LatencyTable, capacity_rps, load_table
from neustream.policy import make_policy
from neustream.record import FAILED_SUFFIX, check_out, keep_failed, set_aside, summarize, write_run
from neustream.runs.errors import RunError
from neustream.traces import check_positive, make_trace, read_trace, to_requests

if TYPE_CHECKING:
    from neustream.catalog.diffusion import Program
    from neustream.policy.base import Policy
    from neustream.request import Request
    from neustream.runs.spec import RunSpec


@dataclass
class Setup:
    program: Program
    table: LatencyTable
    policy: Policy
    requests: list[Request]
    placement: dict[str, str]  # module -> device ({}: every module on one device)


def setup(spec: RunSpec) -> Setup:
    """Checked settings, the latency table, the policy and the requests with deadlines."""
    program = get_program(spec.workload)
    check_positive("rate", spec.rate)
    check_positive("cv", spec.cv)
    placement = parse_placement(spec.placement)
    check_placement(program, placement)
    table = load_table(spec.latency, program)
    policy = make_policy(spec.system, program, table, spec.slo, spec.step_delta)
    rows = read_trace(spec.trace, program) if spec.trace else make_trace(
        program, spec.rate, spec.cv, spec.n_requests, spec.seed)
    return Setup(program, table, policy, to_requests(rows, program, table, spec.slo), placement)


def settings(spec: RunSpec, s: Setup, backend: str) -> dict:
    """The summary's settings, in its order."""
    mean_steps = sum(r.steps for r in s.requests) / len(s.requests)
    return {
        "workload": spec.workload, "system": spec.system, "backend": backend,
        "device": spec.record_device, "rate": spec.rate, "cv": spec.cv, "slo": spec.slo,
        "seed": spec.seed, "step_delta": spec.step_delta, "sweeps": list(spec.sweeps),
        "latency_table": str(spec.latency), "trace": str(spec.trace) if spec.trace else None,
        "caps": {m: s.policy.cap(m) for m in s.policy.queue_names},
        "capacity_rps": capacity_rps(s.program, s.table, mean_steps),
    }


def _report(spec: RunSpec, summary: dict, wall_s: float, live: bool = False) -> None:
    print(f"{spec.workload} {spec.system}{' live' if live else ''} rate={spec.rate} cv={spec.cv} "
          f"slo={spec.slo}: {summary['n_ok']}/{summary['n_requests']} on time, "
          f"{summary['n_late']} late, {summary['n_dropped']} dropped, goodput "
          f"{summary['goodput_rps']:.3f} req/s ({wall_s} s)", file=sys.stderr)


# -- simulated ----------------------------------------------------------------------------------


def simulate(spec: RunSpec) -> dict:
    """Simulate the spec's run and write its record; return the summary."""
    from neustream.engine.diffusion.sim import simulate as engine

    s = setup(spec)
    t0 = time.perf_counter()
    n, last = len(s.requests), s.requests[-1].arrival_s

    def progress(sim) -> None:
        # Goodput so far: on-time requests per second of trace up to now (the summary's
        # goodput divides by the whole trace's span instead).
        done, ok, now_s = sim.state.n_done, sim.state.n_ok, sim.now_s
        print(f"[{spec.system} {spec.workload}] {done}/{n} requests done ({done / n:.0%}), "
              f"{ok} on time, goodput {ok / now_s if now_s > 0 else 0.0:.3f} req/s at "
              f"t={now_s:.1f} s of {last:.1f} s ({time.perf_counter() - t0:.1f} s wall)",
              file=sys.stderr, flush=True)

    device = None
    if spec.device_model:
        from neustream.engine.diffusion.device import DeviceModel

        device = DeviceModel.from_json(spec.device_model)
        if device.meta.get("workload") not in (None, spec.workload):
            raise RunError(f"{spec.device_model}: a device model of {device.meta['workload']}, "
                           f"not {spec.workload}")
    state = engine(s.policy, s.table, s.requests, progress=progress, placement=s.placement,
                   device=device, seed=spec.seed)
    config = {**settings(spec, s, "sim"), "wall_s": round(time.perf_counter() - t0, 3)}
    if s.placement:
        config["placement"] = s.placement
    if spec.device_model:
        config["device_model"] = str(spec.device_model)
    rows = [r.row() for r in state.requests]
    summary = write_run(spec.out, rows, state.batches, lambda: summarize(rows, config))
    _report(spec, summary, config["wall_s"])
    return summary


# -- live ---------------------------------------------------------------------------------------


def serve(spec: RunSpec) -> dict:
    """Serve the spec's run live with real modules; write its record; return the summary."""
    import torch

    from neustream.backends.diffusion.server import DiffusionServer, table_modules
    from neustream.backends.diffusion.weights import WeightsError

    s = setup(spec)
    mods = table_modules(spec.latency)  # run the modules the table describes
    if spec.graphs != "table":
        mods["graphs"] = spec.graphs == "on"
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        server = DiffusionServer(
            spec.workload, {m: s.policy.cap(m) for m in s.program.module_names},
            size=mods["size"], device=mods["device"], dtype=mods["dtype"], graphs=mods["graphs"],
            weights=spec.weights, weights_dir=spec.weights_dir, seed=spec.seed,
            max_requests=len(s.requests),
            placement=s.placement or None)
    except WeightsError as e:
        raise RunError(str(e)) from None
    server.prepare()
    config = {**settings(spec, s, "live"), "server": server.describe(),
              "table_device_name": mods["device_name"]}

    def progress(run, now_s: float) -> None:
        print(f"[{spec.system} {spec.workload}] t={now_s:.1f} s: {run.n_done}/{len(s.requests)} "
              f"done, {run.n_ok} on time", file=sys.stderr, flush=True)

    summary = serve_to_dir(spec.out, s.policy, server, s.requests, s.table, config,
                           max_lag_s=spec.max_lag, progress=progress, lookahead=spec.lookahead)
    _report(spec, summary, summary["wall_s"], live=True)
    return summary


def serve_to_dir(out_dir: str | Path, policy: Policy, server, requests: list[Request],
                 table: LatencyTable, settings: dict, **kw) -> dict:
    """Serve live on ``server`` and write the run directory; on failure keep the partial
    records in ``<out_dir>.failed/`` (no summary) and raise RunError. ``kw`` goes to the engine
    (max_lag_s, lookahead, progress, clock)."""
    from neustream.engine.diffusion.live import LiveError
    from neustream.engine.diffusion.live import serve as engine

    out = check_out(out_dir)
    shutil.rmtree(out.with_name(out.name + FAILED_SUFFIX), ignore_errors=True)  # a rerun starts clean
    t0 = time.perf_counter()
    try:
        run = engine(policy, server, requests, **kw)
    except LiveError as e:
        kept = keep_failed(out, [r.row() for r in e.run.requests], e.run.batches, settings, str(e))
        print(f"[serve] partial records kept in {kept}", file=sys.stderr)
        raise RunError(f"{e}; partial records kept in {kept}{set_aside(out)}") from e
    config = {**settings, **live_settings(run, policy, table),
              "wall_s": round(time.perf_counter() - t0, 3)}
    rows = [r.row() for r in run.requests]
    return write_run(out, rows, run.batches, lambda: summarize(rows, config))


def live_settings(run, policy: Policy, table: LatencyTable) -> dict:
    """What a live run's summary adds: arrival lags, server overhead, batch time over table."""
    from neustream.analysis.overhead import overhead, table_error

    lags = getattr(run, "lags", [])
    caps = {m: policy.cap(m) for m in policy.queue_names}
    return {
        "arrival_lag_s": {"max": max(lags, default=0.0),
                          "mean": statistics.fmean(lags) if lags else 0.0},
        "overhead": overhead(run.batches, caps),
        "batch_time_over_table": table_error(run.batches, {r.id: r.steps for r in run.requests},
                                             policy.program, table),
        "lookahead": getattr(run, "lookahead", False),
    }
