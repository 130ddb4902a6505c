"""Live engine: a policy serves a trace on the wall clock with real modules.

NOTE: the server is modelled as the simulator models it: one device running one batch at a time,
modules taking turns through ``Policy.decide``. A load-generator thread replays the trace,
handing each request to an inbox at its arrival time. One executor thread (the caller's) does
the rest in a loop: admit what arrived (queued since its trace arrival time, as in the
simulator), ask the policy, apply its drops, have the server run the batch (``Server.run``: one
call of one module, the requests at any step; ``run_pipeline``: whole requests), wait for the
device, and advance the requests through ``engine.base.Run``, so records match the simulator's
in shape. A module's worker is its ``Batcher`` (models/graphs.py): the policy decides, the
worker executes. Why one executor rather than a process or a thread per module: processes would
copy every request's tensors between modules (the artifact pickled them through proxy queues);
threads on two CUDA streams did overlap two modules' batches, 1.12x the throughput of one after
the other on an H200 (DiT-S/2 b=16 beside its VAE b=2, resources/live/h200/), but a batch's time
then depends on what runs beside it, which no latency table describes, and the host's Python
does not get faster with more threads under the GIL. Scheduling overlaps execution where it can
without changing decisions: arrivals are admitted by the generator thread while the device
runs, and a CUDA batch is one async copy of its slots and one graph replay, with one
synchronisation at its end; the next decision needs that batch's requests back in their queues,
so it waits for it, as in the simulator. The measured cost of this loop is in each batch row
(``model_s`` against ``end_s - start_s``) and in the summary's ``overhead``: on the H200, 1-3%
of an SD UNet step, 5-9% of a 1.5-4 ms DiT-S/2 step. Time never drifts silently: arrivals are
stamped with their trace times, and a load generator that falls more than ``max_lag_s`` behind
the trace stops the run with an error (the largest lag is recorded either way). Any exception
(a module that raises, out of memory, Ctrl-C) stops the run with a ``LiveError`` that carries the
partial run; ``serve_to_dir`` keeps those records under a name marked failed.
"""

from __future__ import annotations

import gc
import queue
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from neustream.engine.base import Run, StallError
from neustream.policy.base import PIPELINE, Decision
from neustream.record import FAILED_SUFFIX, write_failed, write_run

if TYPE_CHECKING:
    from neustream.latency import LatencyTable
    from neustream.policy.base import Policy
    from neustream.request import Request


class Server(Protocol):
    """What the live engine asks of the modules (models/server.py is the real one)."""

    def start(self, r: Request) -> None:
        """``r`` arrived: set up its state."""

    def end(self, r: Request) -> None:
        """``r`` finished or was dropped: free its state."""

    def run(self, module: str, batch: list[Request], steps_done: list[int]) -> float:
        """One call of ``module`` for ``batch`` (``steps_done``: each request's calls of it so
        far); returns when the device is done, with the seconds spent in the model."""

    def run_pipeline(self, batch: list[Request]) -> float:
        """Whole requests end to end; returns as ``run`` does."""


class LiveError(RuntimeError):
    """A live run that stopped early; ``run`` holds its partial state."""

    def __init__(self, message: str, run: Run) -> None:
        super().__init__(message)
        self.run = run


def _generate(requests: list[Request], t0: float, clock: Callable[[], float],
              inbox: queue.SimpleQueue, stop: threading.Event) -> None:
    """Hand each request to the inbox at its trace arrival time (absolute, so no drift)."""
    for r in requests:
        delay = t0 + r.arrival_s - clock()
        if delay > 0 and stop.wait(delay):
            return
        inbox.put((r, clock() - t0 - r.arrival_s))
    inbox.put(None)


def serve(policy: Policy, server: Server, requests: list[Request], *, max_lag_s: float = 1.0,
          clock: Callable[[], float] = time.perf_counter,
          progress: Callable[[Run, float], None] | None = None) -> Run:
    """Serve ``requests`` (ordered by arrival) under ``policy`` in real time; return the run.

    Each batch row gets ``model_s`` (seconds in the model) and ``after_idle`` (the executor
    waited for an arrival before deciding it). ``run.lags`` holds each arrival's lag."""
    run = Run(policy, requests)
    run.lags = []
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()
    gc_on = gc.isenabled()
    gc.collect()
    gc.disable()  # no collector pauses inside a run (a run's garbage is freed by refcounts)
    t0 = clock()
    gen = threading.Thread(target=_generate, args=(requests, t0, clock, inbox, stop),
                           name="load-generator", daemon=True)
    gen.start()
    arrivals_done = False
    idle = False
    last_report = t0
    d = Decision.empty()

    def admit(item) -> None:
        nonlocal arrivals_done
        if item is None:
            arrivals_done = True
            return
        r, lag = item
        run.lags.append(lag)
        if lag > max_lag_s:
            raise RuntimeError(f"the load generator fell {lag:.3f} s behind the trace at request "
                               f"{r.id} (limit max_lag_s={max_lag_s})")
        server.start(r)
        run.arrive(r, r.arrival_s)

    try:
        while True:
            while True:
                try:
                    admit(inbox.get_nowait())
                except queue.Empty:
                    break
            now = clock() - t0
            d = policy.decide(run.queues, now) if run.waiting() else Decision.empty()
            run.apply_drops(d, now)
            for _, r in d.drops:
                server.end(r)
            if d.batch:
                run.start(d, now)
                if d.module == PIPELINE:
                    model_s = server.run_pipeline(d.batch)
                else:
                    model_s = server.run(d.module, d.batch, [r.calls_done for r in d.batch])
                end = clock() - t0
                run.complete(d.module, d.batch, now, end)
                run.batches[-1].update(model_s=model_s, after_idle=idle)
                for r in d.batch:
                    if r.status.terminal:
                        server.end(r)
                idle = False
                d = Decision.empty()
                if progress is not None and clock() - last_report > 5:
                    last_report = clock()
                    progress(run, end)
                continue
            if arrivals_done:
                break  # nothing runs now and nothing more will arrive
            admit(inbox.get())  # idle: wait for the next arrival
            idle = True
    except BaseException as e:
        stop.set()
        where = f" while running {d.module} on {len(d.batch)} request(s)" if d.batch else ""
        raise LiveError(f"live run stopped at t={clock() - t0:.3f} s{where}: "
                        f"{type(e).__name__}: {e}", run) from e
    finally:
        stop.set()
        gen.join()
        if gc_on:
            gc.enable()
    try:
        run.close()
    except StallError as e:
        raise LiveError(str(e), run) from e
    return run


# -- what the summary says about the engine ----------------------------------------------------


def _stats(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": statistics.median(xs), "mean": statistics.fmean(xs),
            "max": max(xs)}


def overhead(run: Run, caps: dict[str, int]) -> dict:
    """Server time outside the model, as a fraction of the model's time, per module.

    For a batch decided right after the previous one ended (no wait for an arrival), its
    overhead is the time from the previous batch's end to its own end minus its model time:
    bookkeeping, the policy's decision, input copies, launch, synchronisation, output copies.
    Given at batch size 1, at the module's cap, and over all such batches."""
    out: dict[str, dict] = {}
    prev_end = None
    for row in run.batches:
        if prev_end is not None and not row["after_idle"] and row["model_s"] > 0:
            frac = (row["end_s"] - prev_end - row["model_s"]) / row["model_s"]
            by = out.setdefault(row["module"], {"b1": [], "cap": [], "all": []})
            by["all"].append(frac)
            if row["size"] == 1:
                by["b1"].append(frac)
            if row["size"] == caps.get(row["module"]):
                by["cap"].append(frac)
        prev_end = row["end_s"]
    return {m: {k: _stats(v) for k, v in by.items()} for m, by in out.items()}


def table_error(run: Run, table: LatencyTable) -> dict:
    """Measured batch time over the table's, per module (median over batches): 1.0 means the
    table predicts this server exactly."""
    from neustream.latency import pipeline_s

    steps = {r.id: r.steps for r in run.requests}
    ratios: dict[str, list[float]] = {}
    for row in run.batches:
        if row["module"] == PIPELINE:
            want = pipeline_s(run.program, table, steps[row["ids"][0]], row["size"])
        else:
            want = table.latency(row["module"], row["size"])
        ratios.setdefault(row["module"], []).append((row["end_s"] - row["start_s"]) / want)
    return {m: {"batches": len(v), "median": statistics.median(v)} for m, v in ratios.items()}


def live_settings(run: Run, table: LatencyTable, caps: dict[str, int]) -> dict:
    lags = getattr(run, "lags", [])
    return {
        "arrival_lag_s": {"max": max(lags, default=0.0),
                          "mean": statistics.fmean(lags) if lags else 0.0},
        "overhead": overhead(run, caps),
        "batch_time_over_table": table_error(run, table),
    }


def serve_to_dir(out_dir: str | Path, policy: Policy, server: Server, requests: list[Request],
                 table: LatencyTable, settings: dict, **kw) -> dict:
    """Serve and write the run directory; on failure keep the partial records in
    ``<out_dir>.failed/`` (no summary) and raise the ``LiveError``."""
    out = Path(out_dir)
    failed = out.with_name(out.name + FAILED_SUFFIX)
    shutil.rmtree(failed, ignore_errors=True)  # a rerun starts clean
    t0 = time.perf_counter()
    try:
        run = serve(policy, server, requests, **kw)
    except LiveError as e:
        write_failed(failed, e.run, settings, str(e))
        print(f"[serve] partial records kept in {failed}", file=sys.stderr)
        raise
    caps = {m: policy.cap(m) for m in policy.queue_names}
    settings = {**settings, **live_settings(run, table, caps),
                "wall_s": round(time.perf_counter() - t0, 3)}
    return write_run(out, run, settings)
