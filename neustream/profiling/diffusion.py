"""Latency tables: measure seconds per call of every module of a workload by batch size.

NOTE: the model of a latency table is "one call of a stream module at batch size b costs a
fixed time": one denoising step for a ``loop`` module, one whole call otherwise, CFG included
(a batch of b requests runs 2b samples). For each module we build the network once (random
weights), then for each batch size make the inputs once, run ``warmup`` untimed calls and
``repeats`` timed calls, and keep the median. With ``rounds`` > 1 that sweep over the batch
sizes is run several times and the median is taken over all rounds' calls: slow drifts of the
host or of the GPU clock (large where calls are launch-bound) then fall on every batch size
alike instead of on a few neighbouring ones. On CUDA each call sits between two
``torch.cuda.Event`` records and is synchronised, so host launch overhead counts as it does when
serving; on CPU ``time.perf_counter`` brackets the call.

``profile()`` returns the table; profiling/tables.py writes it with its sidecar JSON. The
profiler runs the very call a live server runs (``ModuleRunner``, below). ``neustream profile``
does both; ``python -m neustream.cli profile ...`` is the same command on a bare GPU machine.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable

import pandas as pd
import torch

from neustream.backends.devices import device_name, dtype_name, parse_dtype
from neustream.backends.diffusion.graphs import Batcher
from neustream.backends.diffusion.nets import Pools, State, StreamModule, make_module
from neustream.catalog.diffusion import Module, get_program
from neustream.latency import COLUMNS, QUANTILES, falls, quantiles
from neustream.profiling.timer import time_calls

RETIMES = 3  # extra timings of sizes whose latency fell as the batch grew

PROVENANCE_KEYS = (
    "workload",
    "device",
    "device_name",
    "dtype",
    "size",
    "weights",
    "method",
    "versions",
    "date_utc",
    "host_cpu_count",
    "spread_s",
)


def batch_sizes_for(module: Module, batch_sizes: int | Iterable[int] | None) -> list[int]:
    """The batch sizes to measure: the module's grid, the grid up to an int, or a given list
    (never above the module's ``max_batch``)."""
    if batch_sizes is None:
        return list(module.profile_batches)
    if isinstance(batch_sizes, int):
        return [b for b in module.profile_batches if b <= batch_sizes]
    sizes = sorted({int(b) for b in batch_sizes})
    if any(b < 1 for b in sizes):
        raise ValueError(f"batch sizes must be >= 1, got {sizes}")
    return [b for b in sizes if b <= module.max_batch]


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    if torch.version.cuda:
        v["cuda"] = torch.version.cuda
    return v


def _clock(device: torch.device) -> str:
    """The GPU's SM clock now, for the progress line (launch-bound calls may not boost it)."""
    if device.type != "cuda":
        return ""
    try:
        return f", sm clock {torch.cuda.clock_rate(device)} MHz"
    except Exception:  # no NVML
        return ""


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def profile(
    workload: str,
    *,
    size: str = "full",
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    repeats: int = 10,
    warmup: int = 3,
    batch_sizes: int | Iterable[int] | None = None,
    modules: Iterable[str] | None = None,
    rounds: int = 1,
    graphs: bool = False,
    served: bool = False,
) -> pd.DataFrame:
    """Measure every module of ``workload`` (or only ``modules``) over its batch sizes.

    Returns a DataFrame with columns ``module,batch_size,latency_s`` (median seconds per call),
    modules in program order; ``df.attrs["provenance"]`` holds the sidecar fields.
    """
    program = get_program(workload)
    if repeats < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"need repeats, rounds >= 1 and warmup >= 0, got {repeats=}, {warmup=}, {rounds=}")
    device, dtype = torch.device(device), parse_dtype(dtype)
    names = list(program.module_names if modules is None else modules)
    for name in names:
        if not batch_sizes_for(program.module(name), batch_sizes):  # an unknown module: one line
            raise ValueError(f"no batch size of {workload}/{name} to measure (asked: {batch_sizes})")
    rows = []
    spread: dict[str, dict[str, list[float]]] = {}  # module -> size -> quantiles of its calls
    for name in names:
        sizes = batch_sizes_for(program.module(name), batch_sizes)
        t0 = time.perf_counter()
        runner = build_module(workload, name, size=size, device=device, dtype=dtype,
                              graphs=graphs, served=served)
        built_s = time.perf_counter() - t0
        with torch.inference_mode():  # one-time costs (lazy set-up, allocator) are never timed
            runner.inputs(sizes[0])
            runner(sizes[0])
        print(f"[profile] {workload}/{name}: built in {built_s:.1f} s", file=sys.stderr, flush=True)
        times: dict[int, list[float]] = {b: [] for b in sizes}
        with torch.inference_mode():
            for r in range(rounds):
                for b in sizes:
                    runner.inputs(b)
                    t = time_calls(lambda: runner(b), repeats=repeats, warmup=warmup,
                                   device=device, host=served)
                    times[b] += t
                    print(
                        f"[profile] {workload}/{name} round {r + 1}/{rounds} b={b}: "
                        f"median {statistics.median(t) * 1e3:.3f} ms of {repeats} "
                        f"(min {min(t) * 1e3:.3f}, max {max(t) * 1e3:.3f}){_clock(device)}",
                        file=sys.stderr,
                        flush=True,
                    )
            # A larger batch far faster than a smaller one is a hiccup of a shared host, not
            # the module: time both sizes again (pooled), up to RETIMES times.
            for _ in range(RETIMES):
                bad = sorted({b for pair in falls({b: statistics.median(times[b]) for b in sizes})
                              for b in pair})
                if not bad:
                    break
                for b in bad:
                    runner.inputs(b)
                    times[b] += time_calls(lambda: runner(b), repeats=repeats, warmup=warmup,
                                           device=device, host=served)
                print(f"[profile] {workload}/{name}: latency fell as the batch grew at "
                      f"b={bad}; timed again", file=sys.stderr, flush=True)
        rows += [(name, b, statistics.median(times[b])) for b in sizes]
        spread[name] = {str(b): quantiles(times[b]) for b in sizes}
        del runner
        _free(device)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df.attrs["provenance"] = {
        "workload": workload,
        "device": str(device),
        "device_name": device_name(device),
        "dtype": dtype_name(dtype),
        "size": size,
        "weights": "random",
        "method": {
            "warmup": warmup,
            "repeats": repeats,
            "rounds": rounds,
            "statistic": "median over rounds x repeats timed calls",
            "order": "per round: for each batch size, warmup untimed then repeats timed calls",
            "timer": "torch.cuda.Event pairs, synchronized per call"
            if device.type == "cuda" and not served
            else "time.perf_counter",
            "unit": "seconds per call (one denoising step for loop modules; CFG: 2b samples)",
            "inputs": "random, made once per batch size, outside the timed call",
            "mode": "torch.inference_mode, eval",
            # CUDA graphs: each batch size's call captured once, timed as a replay (what a
            # live server with graphs runs; see backends/diffusion/graphs.py)
            "graphs": bool(graphs and device.type == "cuda"),
            # served: the live worker's whole call (gather the requests' states, the call,
            # hand outputs back, synchronise), host clock: what a live server pays per call
            "served": served,
        },
        "versions": _versions(),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host_cpu_count": os.cpu_count(),
        # every point's timed calls, as quantiles (seconds): `neustream calibrate --table`
        "spread_quantiles": QUANTILES,
        "spread_s": spread,
    }
    return df


class ModuleRunner:
    """The profiler's view of a module: ``runner(b)`` runs ONE call at batch size b on random
    request data (``inputs(b)`` prepares it, and with ``graphs`` captures the call, outside the
    timed call). It runs the very call a live server runs (``Batcher.call``, gathering from and
    scattering to b requests' slots); with ``served``, the live worker's whole call
    (``Batcher.run``: slots sent to the device, the call, synchronise), which is what a live
    server pays per call."""

    def __init__(self, module: StreamModule, max_batch: int, *, graphs: bool = False,
                 served: bool = False):
        self.module = module
        module.attach(Pools(max_batch + 1, module.device))
        self.batcher = Batcher(module, max_batch, graphs=graphs)
        self.served = served
        steps = module.max_steps if module.schedule else 1
        self.states = [State(id=i, steps=steps, seed=0, slot=i + 1) for i in range(max_batch)]
        for s in self.states:
            module.init_state(s)

    def inputs(self, batch_size: int) -> dict:
        self.batcher.prepare([batch_size])
        view = self.batcher.view(batch_size)
        if not self.served:  # the call reads the requests' own rows, not the scratch row
            self.batcher.load([s.slot for s in self.states[:batch_size]], [0] * batch_size,
                              batch_size)
        return view

    def __call__(self, batch_size: int) -> torch.Tensor | float:
        if self.served:
            return self.batcher.run(self.states[:batch_size], [0] * batch_size)
        return self.batcher.call(batch_size)


def build_module(workload: str, module: str, *, graphs: bool = False, served: bool = False,
                 **build) -> ModuleRunner:
    """Build one module (``build``: nets.make_module's size, device, dtype, weights); the
    result runs one call of it at a given batch size."""
    m = make_module(workload, module, **build)
    return ModuleRunner(m, get_program(workload).module(module).max_batch, graphs=graphs,
                        served=served)
