"""Host time per step of the live diffusion server, with the model compute taken out.

    python tests/benchmarks/bench_host.py [--latency resources/latency/h200/dit-s2.csv]
        [--rounds 3] [--steps 200] [--proposed] [--emulate]

NOTE: the real executor loop (engine/live.py), the real policy (NeuStream, slo 3: DiT cap 24 on
the H200 table) and the real server path (backends/diffusion/server.py, graphs.py: slots staged and copied,
the call, the wait) serve tiny DiT-S/2 modules on the CPU whose call does no work, so what is
left per step is host time: the decision, the bookkeeping, the slot copy, the launch and the
wait. Requests all arrive at once with deadlines far away (nothing is dropped): one request
(every step at b=1), 24 (every step at the cap) and 96 (the cap, with 72 more waiting, so the
policy scans a long queue). Each case runs the OLD path (a frozen copy, below, of the loop and
server path before this benchmark existed) and the NEW one in turns, ``--rounds`` times; it
prints the median microseconds per step (time between consecutive step ends at that batch size)
and new / old. The phase split comes from a separate run with timing probes (each adds about
0.3 us): policy decide, drops+start (RunState.apply_drops / RunState.start), sel copy (slots staged and
copied), call (the no-op call: the launch), wait (synchronisation and timing), complete
(RunState.complete) and the rest of the loop (admission, records, freeing state, the lock).

``--proposed`` adds a column with two changes outside this benchmark's files applied as patches
(policy/neustream.py's per-request ``remaining_s`` without table look-ups, and request.py's
sorted queues keeping their keys in a list), to measure what they would give.

``--emulate`` replaces the GPU with a stand-in that takes the table's time per call and starts
a call when it is launched and the device is free (launch returns at once, as a CUDA launch
does): it prints the device's idle time per step (old, new, new with ``lookahead``) and that as
a fraction of the step. A real GPU adds its launch and wake-up latencies (tens of us).
"""

from __future__ import annotations

import argparse
import bisect
import gc
import queue
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from neustream.backends.diffusion.graphs import Batcher
from neustream.backends.diffusion.server import DiffusionServer
from neustream.catalog.diffusion import get_program
from neustream.engine.diffusion.live import serve
from neustream.engine.diffusion.run import RunState
from neustream.latency import LatencyTable
from neustream.policy import make_policy
from neustream.policy.base import WHOLE_REQUESTS, Decision
from neustream.request import Request

ROOT = Path(__file__).resolve().parents[2]
CASES = {"b=1 (1 request)": 1, "cap (24 requests)": 24, "cap (96 requests)": 96}


# -- the old path, frozen (the live loop and server calls as they were) -----------------------


def old_serve(policy, server, requests, clock=time.perf_counter) -> RunState:
    """The executor loop before this benchmark: SimpleQueue inbox, one loop in this thread."""
    run = RunState(policy, requests)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()
    gc.collect()
    gc.disable()
    t0 = clock()

    def generate():
        for r in requests:
            delay = t0 + r.arrival_s - clock()
            if delay > 0 and stop.wait(delay):
                return
            inbox.put((r, clock() - t0 - r.arrival_s))
        inbox.put(None)

    gen = threading.Thread(target=generate, daemon=True)
    gen.start()
    arrivals_done, idle = False, False

    def admit(item):
        nonlocal arrivals_done
        if item is None:
            arrivals_done = True
            return
        r, _ = item
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
                if d.module == WHOLE_REQUESTS:
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
                continue
            if arrivals_done:
                break
            admit(inbox.get())
            idle = True
    finally:
        stop.set()
        gen.join()
        gc.enable()
    run.close()
    return run


class OldServer:
    """The server path before this benchmark (DiffusionServer.run -> Batcher.run ->
    StreamModule.load): a dict of views and a bisect per call, inference mode entered per call,
    the staging rows filled from a list of slots; same modules, states and pools."""

    def __init__(self, server: DiffusionServer) -> None:
        self.s = server
        self.staging: dict[str, torch.Tensor] = {}

    def start(self, r):
        self.s.start(r)

    def end(self, r):
        self.s.end(r)

    def run(self, module, batch, steps_done):
        states = [self.s.states[r.id] for r in batch]
        return self.batcher_run(module, self.s.batchers[module], states, steps_done)

    @torch.inference_mode()
    def batcher_run(self, name, b: Batcher, states, steps_done) -> float:
        n = len(states)
        size = b.sizes[bisect.bisect_left(b.sizes, n)] if b.pad else n
        view = {k: v[:size] for k, v in b.inputs.items()}
        self.load(name, view, states, steps_done, size)
        t0 = time.perf_counter()
        b.last = b.call(size)
        return time.perf_counter() - t0

    def load(self, name, inputs, states, steps_done, b) -> None:
        n = len(states)
        st = self.staging.get(name)
        if st is None or st.shape[0] < b:
            st = self.staging[name] = torch.zeros(max(b, 32), 2, dtype=torch.long)
        rows = st.numpy()
        rows[:n, 0] = [s.slot for s in states]
        rows[:n, 1] = steps_done
        rows[n:b] = 0
        inputs["sel"].copy_(st[:b], non_blocking=True)


# -- the model compute taken out ----------------------------------------------------------


class NoCompute:
    """A stream module whose call does nothing (its pools, load and state are the real ones)."""

    def __init__(self, module) -> None:
        self.__dict__["inner"] = module
        self.__dict__["out"] = torch.zeros(1)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, inputs):
        return self.out


def make_server(program, policy, max_requests: int) -> DiffusionServer:
    server = DiffusionServer(program.name, {m: policy.cap(m) for m in program.module_names},
                             size="tiny", max_requests=max_requests)
    for b in server.batchers.values():
        b.module = NoCompute(b.module)
    return server


def requests_for(n: int, steps: int) -> list[Request]:
    return [Request(id=i, arrival_s=0.0, deadline_s=1e9, steps=steps,
                    fields={"class_label": i % 1000}) for i in range(n)]


def step_gaps(run: RunState, module: str, size: int) -> list[float]:
    """Seconds between consecutive ends of ``module`` batches of ``size``."""
    rows = run.batches
    return [b["end_s"] - a["end_s"] for a, b in zip(rows, rows[1:])
            if a["module"] == b["module"] == module and b["size"] == size]


# -- phase probes -------------------------------------------------------------------------


class Probes:
    """Timing wrappers on named callables; each step's times go to a bucket closed by
    RunState.complete (the step's last phase), tagged with the batch's module and size."""

    def __init__(self) -> None:
        self.bucket: dict[str, float] = {}
        self.steps: list[tuple[str, int, dict]] = []
        self._undo: list = []

    def wrap(self, obj, attr: str, phase: str, closes: bool = False) -> None:
        fn = getattr(obj, attr)
        bucket_of = self

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                bucket_of.bucket[phase] = bucket_of.bucket.get(phase, 0.0) + dt
                if closes:  # RunState.complete(module, batch, ...)
                    mod, batch = (a[1], a[2]) if len(a) > 2 else (a[0], a[1])
                    bucket_of.steps.append((mod, len(batch), bucket_of.bucket))
                    bucket_of.bucket = {}

        had = attr in vars(obj)
        self._undo.append((obj, attr, fn if had else None))
        setattr(obj, attr, timed)

    def undo(self) -> None:
        for obj, attr, fn in reversed(self._undo):
            if fn is None:
                delattr(obj, attr)
            else:
                setattr(obj, attr, fn)
        self._undo.clear()


PHASES = ("decide", "drops+start", "sel copy", "call", "wait", "complete")


def probe_run(path: str, program, table, n: int, steps: int) -> dict[str, float]:
    """Mean microseconds per step of each phase (steps of the loop module at the case's size)."""
    policy = make_policy("neustream", program, table, 3.0)
    server = make_server(program, policy, n + 8)
    p = Probes()
    p.wrap(policy, "decide", "decide")
    p.wrap(RunState, "apply_drops", "drops+start")
    p.wrap(RunState, "start", "drops+start")
    p.wrap(RunState, "complete", "complete", closes=True)
    if path == "old":
        target = OldServer(server)
        p.wrap(target, "load", "sel copy")
    else:
        target = server
        for b in server.batchers.values():
            p.wrap(b, "load", "sel copy")
            p.wrap(b, "wait", "wait")
    for b in server.batchers.values():
        p.wrap(b, "call", "call")
    try:
        run = (old_serve if path == "old" else serve)(policy, target, requests_for(n, steps))
    finally:
        p.undo()
    loop, size = _target(program, policy, n)
    gaps = step_gaps(run, loop, size)
    by_step = [ph for m, s, ph in p.steps if m == loop and s == size][1:]
    cut = 1.5 * statistics.median(gaps)
    keep = [(g, ph) for g, ph in zip(gaps, by_step) if g <= cut]
    out = {k: 1e6 * statistics.fmean(ph.get(k, 0.0) for _, ph in keep) for k in PHASES}
    out["total"] = 1e6 * statistics.fmean(g for g, _ in keep)
    out["rest"] = out["total"] - sum(out[k] for k in PHASES)
    return out


def _target(program, policy, n: int) -> tuple[str, int]:
    loop = next(m.name for m in program.modules if m.loop)
    return loop, min(n, policy.cap(loop))


def per_step_us(path: str, program, table, n: int, steps: int) -> float:
    policy = make_policy("neustream", program, table, 3.0)
    server = make_server(program, policy, n + 8)
    if path == "old":
        run = old_serve(policy, OldServer(server), requests_for(n, steps))
    else:
        run = serve(policy, server, requests_for(n, steps))
    return 1e6 * statistics.median(step_gaps(run, *_target(program, policy, n)))


# -- proposed changes outside this benchmark's files, as patches ------------------------------


@contextmanager
def proposed():
    """policy/neustream.py: remaining_s from per-module batch-1 latencies looked up once (the
    same sums in the same order, so the same floats); request.py: sorted queues keep their
    keys in a list beside the requests (no key function per comparison)."""
    import neustream.policy.neustream as ns
    from neustream.queues import _SortedQueue

    cache: dict = {}

    def remaining_s(program, table, r):
        key = (id(program), id(table))
        spec = cache.get(key)
        if spec is None:
            spec = cache[key] = [(m.loop, table.latency(m.name, 1)) for m in program.modules]
        total = 0.0
        for i in range(r.stage, len(spec)):
            loop, one = spec[i]
            n = r.steps if loop else 1
            if i == r.stage:
                n -= r.calls_done
            total += n * one
        return total

    def init(self):
        self._keys, self._reqs = [], []

    def add(self, r):
        k = self.key(r)
        i = bisect.bisect_right(self._keys, k)
        self._keys.insert(i, k)
        self._reqs.insert(i, r)

    def remove(self, r):
        i = bisect.bisect_left(self._keys, self.key(r))
        while self._reqs[i] is not r:
            i += 1
        del self._keys[i], self._reqs[i]

    saved = (ns.remaining_s, _SortedQueue.__init__, _SortedQueue.add, _SortedQueue.remove,
             _SortedQueue.__iter__, _SortedQueue.__len__)
    ns.remaining_s = remaining_s
    _SortedQueue.__init__, _SortedQueue.add, _SortedQueue.remove = init, add, remove
    _SortedQueue.__iter__ = lambda self: iter(self._reqs.copy())
    _SortedQueue.__len__ = lambda self: len(self._reqs)
    try:
        yield
    finally:
        (ns.remaining_s, _SortedQueue.__init__, _SortedQueue.add, _SortedQueue.remove,
         _SortedQueue.__iter__, _SortedQueue.__len__) = saved


# -- an emulated GPU ------------------------------------------------------------------------


class EmulatedDevice:
    """A stand-in GPU: a call takes the table's time and starts when it is launched and the
    device is free; ``launch`` returns at once. ``idle_s`` holds the device's wait for the host
    before each call but the first."""

    asynchronous = True

    def __init__(self, inner, table: LatencyTable) -> None:
        self.inner, self.table = inner, table
        self.free_at = None
        self.idle_s: list[float] = []

    def start(self, r):
        self.inner.start(r)

    def end(self, r):
        self.inner.end(r)

    def launch(self, module, batch, steps_done):
        self.inner.run(module, batch, steps_done)  # the host side of the call (no compute)
        now = time.perf_counter()
        if self.free_at is not None:
            self.idle_s.append(max(0.0, now - self.free_at))
        begin = now if self.free_at is None else max(now, self.free_at)
        dur = self.table.latency(module, len(batch))
        self.free_at = begin + dur
        return self.free_at, dur

    def wait(self, handle) -> float:
        until, dur = handle
        while time.perf_counter() < until:  # spin: a sleep on a busy host wakes up late
            pass
        return dur

    def run(self, module, batch, steps_done):
        return self.wait(self.launch(module, batch, steps_done))

    def run_pipeline(self, batch):  # pragma: no cover - stream policies only here
        raise NotImplementedError


def emulated(path: str, program, table, n: int, steps: int) -> tuple[float, float, float]:
    """Device idle before a call, us: median, mean; and the mean as a fraction of the case's
    loop step (the table's time at the case's batch size)."""
    policy = make_policy("neustream", program, table, 3.0)
    server = make_server(program, policy, n + 8)
    if path == "old":
        dev = EmulatedDevice(OldServer(server), table)
        old_serve(policy, dev, requests_for(n, steps))
    else:
        dev = EmulatedDevice(server, table)
        serve(policy, dev, requests_for(n, steps), lookahead=path == "new+lookahead")
    loop, size = _target(program, policy, n)
    mean = statistics.fmean(dev.idle_s)
    return 1e6 * statistics.median(dev.idle_s), 1e6 * mean, mean / table.latency(loop, size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="dit-s2")
    p.add_argument("--latency", default=str(ROOT / "resources/latency/h200/dit-s2.csv"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200, help="denoising steps per request")
    p.add_argument("--proposed", action="store_true")
    p.add_argument("--emulate", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    program = get_program(a.workload)
    table = LatencyTable.from_csv(a.latency, program)
    caps = make_policy("neustream", program, table, 3.0).caps
    print(f"host time per step (us): {a.workload} tiny on the CPU, compute taken out, "
          f"neustream slo 3 (caps {caps}), {a.steps} steps per request, median of "
          f"{a.rounds} rounds", flush=True)
    paths = ["old", "new"] + (["proposed"] if a.proposed else [])
    head = f"{'case':20}" + "".join(f"{k:>10}" for k in paths) + f"{'new/old':>9}"
    print(head + (f"{'prop/old':>10}" if a.proposed else ""))
    for case, n in CASES.items():
        got: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(a.rounds):
            for k in paths:
                if k == "proposed":
                    with proposed():
                        got[k].append(per_step_us("new", program, table, n, a.steps))
                else:
                    got[k].append(per_step_us(k, program, table, n, a.steps))
        med = {k: statistics.median(v) for k, v in got.items()}
        line = f"{case:20}" + "".join(f"{med[k]:10.1f}" for k in paths)
        line += f"{med['new'] / med['old']:9.2f}"
        if a.proposed:
            line += f"{med['proposed'] / med['old']:10.2f}"
        print(line, flush=True)
    print("\nphases (us per step, means over steps within 1.5x the median; probes add ~0.3 us "
          "each):")
    cols = (*PHASES, "rest", "total")
    print(f"{'case':20}{'path':>9}" + "".join(f"{c:>12}" for c in cols))
    for case, n in CASES.items():
        for k in paths:
            if k == "proposed":
                with proposed():
                    ph = probe_run("new", program, table, n, a.steps)
            else:
                ph = probe_run(k, program, table, n, a.steps)
            print(f"{case:20}{k:>9}" + "".join(f"{ph[c]:12.1f}" for c in cols), flush=True)
    if a.emulate:
        print("\nemulated GPU (the table's time per call; launch returns at once): the device's "
              "idle time before a call, us, median / mean, and the mean over the loop step (%)")
        kinds = ("old", "new", "new+lookahead")
        print(f"{'case':20}" + "".join(f"{k:>24}" for k in kinds))
        for case, n in list(CASES.items())[:2]:
            line = f"{case:20}"
            for k in kinds:
                med, mean, frac = emulated(k, program, table, n, a.steps)
                line += f"{med:9.1f} /{mean:7.1f} ({100 * frac:3.1f}%)"
            print(line, flush=True)


if __name__ == "__main__":
    main()
