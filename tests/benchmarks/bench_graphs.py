"""Eager vs CUDA-graph call latency per module and batch size, the live worker's own overhead,
and two modules on two CUDA streams at once vs one after the other.

    python tests/benchmarks/bench_graphs.py --out graphs.csv [--device cuda --size full --dtype fp16]

Prints one row per module and batch size: the median call in eager mode and as a graph replay
(CUDA events), their ratio, and for a full live call (``Batcher.run``: inputs gathered from
request states, the call, outputs handed back, one synchronisation) the host wall time over the
model time, and the same calls launched one ahead (the live engine's ``lookahead``). Then the
two-stream test. On a CPU every "graph" is the eager call (graphs are CUDA
only), which exercises the script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import pandas as pd
import torch

from neustream.backends.devices import parse_dtype
from neustream.backends.diffusion.graphs import Batcher
from neustream.backends.diffusion.nets import Pools, make_module
from neustream.backends.diffusion.server import DiffusionServer
from neustream.catalog.diffusion import get_program
from neustream.profiling.timer import time_calls
from neustream.request import Request

CASES = {  # workload -> batch sizes
    "sd15-512": (1, 2, 4, 8, 16, 32),
    "dit-s2": (1, 2, 4, 8, 16, 32, 64, 128),
}


def median_ms(fn, device, repeats=10, warmup=3) -> float:
    return statistics.median(time_calls(fn, repeats=repeats, warmup=warmup, device=device)) * 1e3


def eager_vs_graph(workload, sizes, device, size, dtype) -> list[dict]:
    rows = []
    for m in get_program(workload).modules:
        module = make_module(workload, m.name, size=size, device=device, dtype=dtype)
        top = max(b for b in sizes if b <= m.max_batch)
        module.attach(Pools(top + 1, module.device))  # the calls read the scratch row
        eager, graph = Batcher(module, top, graphs=False), Batcher(module, top, graphs=True)
        with torch.inference_mode():
            for b in (b for b in sizes if b <= top):
                e = median_ms(lambda: eager.call(b), device)
                graph.prepare([b])
                g = median_ms(lambda: graph.call(b), device)
                rows.append({"workload": workload, "module": m.name, "batch_size": b,
                             "eager_ms": e, "graph_ms": g, "eager_over_graph": e / g,
                             "graph_error": graph.error or ""})
                print(f"{workload}/{m.name} b={b}: eager {e:.2f} ms, graph {g:.2f} ms, "
                      f"x{e / g:.2f}{' ' + graph.error if graph.error else ''}", flush=True)
        del eager, graph, module
        torch.cuda.empty_cache() if device.type == "cuda" else None
    return rows


def worker_overhead(workload, sizes, device, size, dtype) -> list[dict]:
    """Host wall time of one live call (Batcher.run) over its model time, at batch 1 and the
    largest size, for the loop module (requests at different steps)."""
    program = get_program(workload)
    loop = next(m for m in program.modules if m.loop)
    top = max(b for b in sizes if b <= loop.max_batch)
    server = DiffusionServer(workload, {m.name: min(top, m.max_batch) for m in program.modules},
                             size=size, device=str(device), dtype=dtype, graphs=True)
    server.prepare([1, top])
    rows = []
    for b in (1, top):
        batch = [Request(id=i, arrival_s=0, deadline_s=1, steps=program.steps[0],
                         fields={"prompt_index": i}) for i in range(b)]
        for r in batch:
            server.start(r)
        if program.modules[0].name == "text_encoder":
            server.run("text_encoder", batch, [0] * b)
        n = program.steps[0]
        steps = [[(k + i) % n for i in range(b)] for k in range(n)]
        walls, models = [], []
        for k in range(n):
            t0 = time.perf_counter()
            models.append(server.run(loop.name, batch, steps[k]))
            walls.append(time.perf_counter() - t0)
        w, mo = statistics.median(walls[3:]), statistics.median(models[3:])
        # launched ahead, as the engine's lookahead does: call k+1 is enqueued before call k
        # is waited for, so the device does not idle while the host waits and launches
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        prev = server.launch(loop.name, batch, steps[0])
        for k in range(1, n):
            h = server.launch(loop.name, batch, steps[k])
            server.wait(prev)
            prev = h
        server.wait(prev)
        ahead = (time.perf_counter() - t0) / n
        mean = statistics.fmean(models)
        rows.append({"workload": workload, "module": loop.name, "batch_size": b,
                     "run_wall_ms": w * 1e3, "run_model_ms": mo * 1e3,
                     "worker_overhead_frac": (w - mo) / mo,
                     "ahead_wall_ms": ahead * 1e3, "ahead_overhead_frac": (ahead - mean) / mean})
        print(f"{workload}/{loop.name} live call b={b}: wall {w * 1e3:.2f} ms, model "
              f"{mo * 1e3:.2f} ms, worker overhead {100 * (w - mo) / mo:.1f}%; launched ahead "
              f"{ahead * 1e3:.2f} ms per call ({100 * (ahead - mean) / mean:+.1f}% over the "
              f"mean model time)", flush=True)
        for r in batch:
            server.end(r)
    return rows


def two_streams(device, size, dtype) -> dict:
    """DiT-S/2 b=16 and its VAE b=2, graphs, 20 calls each: one after the other on one stream
    vs from two threads on two streams at once."""
    pools = Pools(17, device)
    mods = [make_module("dit-s2", m, size=size, device=device, dtype=dtype) for m in ("dit", "vae")]
    for m in mods:
        m.attach(pools)
    a, v = Batcher(mods[0], 16, graphs=True), Batcher(mods[1], 2, graphs=True)
    a.prepare([16])
    v.prepare([2])

    def loop(batcher, b, n=20):
        for _ in range(n):
            batcher.call(b)
        if device.type == "cuda":
            torch.cuda.current_stream().synchronize()

    def serial():
        loop(a, 16)
        loop(v, 2)

    def parallel():
        s1, s2 = (torch.cuda.Stream(), torch.cuda.Stream()) if device.type == "cuda" else (None, None)

        def on(stream, batcher, b):
            if stream is None:
                return loop(batcher, b)
            with torch.inference_mode(), torch.cuda.stream(stream):
                loop(batcher, b)

        ts = [threading.Thread(target=on, args=(s1, a, 16)), threading.Thread(target=on, args=(s2, v, 2))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    with torch.inference_mode():
        out = {}
        for name, fn in (("serial", serial), ("two_streams", parallel)):
            fn()
            walls = []
            for _ in range(5):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                walls.append(time.perf_counter() - t0)
            out[name] = statistics.median(walls) * 1e3
    out["speedup"] = out["serial"] / out["two_streams"]
    print(f"two modules, 20 calls each: serial {out['serial']:.1f} ms, two streams "
          f"{out['two_streams']:.1f} ms (x{out['speedup']:.2f})", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="full", choices=("full", "tiny"))
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--workloads", default=",".join(CASES))
    p.add_argument("--out", required=True, help="CSV of the eager/graph rows")
    a = p.parse_args()
    device, dtype = torch.device(a.device), parse_dtype(a.dtype)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}", flush=True)
    rows, over = [], []
    for w in a.workloads.split(","):
        rows += eager_vs_graph(w, CASES[w], device, a.size, dtype)
        over += worker_overhead(w, CASES[w], device, a.size, a.dtype)
    pd.DataFrame(rows).to_csv(a.out, index=False)
    pd.DataFrame(over).to_csv(a.out.replace(".csv", "_worker.csv"), index=False)
    streams = two_streams(device, a.size, dtype)
    pd.DataFrame([streams]).to_csv(a.out.replace(".csv", "_streams.csv"), index=False)
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.2f"), file=sys.stderr)


if __name__ == "__main__":
    main()
