"""One stream module run on batches of requests: batch-size buckets and CUDA graphs.

NOTE: a call's only input is a static (b, 2) tensor of slots and step indices (the requests'
tensors stay in the module's pools, see ``diffusion.Pools``), so the host sends a few bytes per
call and the device gathers, computes and scatters. A batch of n requests runs as a call of
bucket size b >= n; its rows past n select the scratch slot. In eager mode b = n. With
``graphs`` (CUDA only) every bucket of the profiling grid up to the module's largest batch is
captured once as a CUDA graph, largest first, all into one memory pool; a call is then one
copy of the slots and one replay. Small batches are launch-bound in eager PyTorch (an SD UNet
step launches about 1,200 kernels at about 30 us of host time each), which a replay removes:
on an H200, DiT-S/2 at b=1 took 11.4 ms eager and 1.4 ms replayed, the SD UNet 33 and 12 ms;
from b=16 (UNet) or 64 (DiT) on, calls are GPU-bound and the two agree within 1-15%.
Sharing the memory pool is safe because one call runs at a time and a call's results are in the
pools (or copied out) before the next replay. Captures run on the scratch slot only. A capture
that fails leaves the module eager and says why in ``error``.

A call is ``launch`` (slots copied in, the call enqueued; on CUDA it returns at once) and
``wait`` (one synchronisation, the call's seconds); ``run`` is both. Two calls may be in flight
at once (the live engine's lookahead), so the pinned staging rows and the timing events come in
two sets used in turn: a set is reused only after the call before last was waited for, and with
it its copy. Host cost per call is kept to a few microseconds: views of the static inputs are
made once per bucket, and slots and steps are written into the staging rows with numpy.
"""

from __future__ import annotations

import bisect
import time
from typing import TYPE_CHECKING

import torch

from neustream.catalog.diffusion import grid

if TYPE_CHECKING:
    from neustream.backends.diffusion.nets import State, StreamModule

IN_FLIGHT = 2  # calls that may be launched and not yet waited for


class Batcher:
    def __init__(self, module: StreamModule, max_batch: int, *, graphs: bool = False,
                 pad: bool | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.module = module
        self.max_batch = max_batch
        self.cuda = module.device.type == "cuda"
        self.graphs = graphs and self.cuda  # graphs asked for and possible
        # Run in buckets (as graphs must); ``pad=True`` without graphs tests the padding on a CPU.
        self.pad = self.graphs if pad is None else pad
        self.sizes = sorted(set(grid(max_batch)) | {max_batch})
        # bucket of every batch size n, precomputed (index n)
        self._bucket = [0] + [self.sizes[bisect.bisect_left(self.sizes, n)] if self.pad else n
                              for n in range(1, max_batch + 1)]
        self.inputs = module.make_inputs(max_batch)
        self._views: dict[int, dict[str, torch.Tensor]] = {}
        self.error: str | None = None
        self.last: torch.Tensor | None = None  # the last call's output (valid until the next)
        self._captured: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        # staging rows (pinned on CUDA: an async copy) and timing, one set per call in flight
        pin = self.cuda
        self._staging = [torch.zeros(max_batch, 2, dtype=torch.long, pin_memory=pin)
                         for _ in range(IN_FLIGHT)]
        self._rows = [s.numpy() for s in self._staging]
        self._sel = [{b: s[:b] for b in range(1, max_batch + 1)} for s in self._staging]
        if self.cuda:
            self._events = [(torch.cuda.Event(enable_timing=True),
                             torch.cuda.Event(enable_timing=True)) for _ in range(IN_FLIGHT)]
        self._cpu_s = [0.0] * IN_FLIGHT  # CPU: each call's seconds, measured in launch
        self._ticket = 0

    def bucket(self, n: int) -> int:
        """The batch size a batch of n requests runs at."""
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"batch of {n} is outside 1..{self.max_batch}")
        return self._bucket[n]

    def view(self, b: int) -> dict[str, torch.Tensor]:
        v = self._views.get(b)
        if v is None:
            v = self._views[b] = {k: t[:b] for k, t in self.inputs.items()}
        return v

    @torch.inference_mode()
    def prepare(self, sizes: list[int] | None = None, warmup: bool = False) -> None:
        """Capture the buckets ``sizes`` (default: all) with graphs; else, with ``warmup``, run
        each size once so that first-call costs stay out of serving."""
        if self.graphs:
            todo = sorted({self.bucket(b) for b in (sizes or self.sizes)} - set(self._captured))
            with torch.cuda.device(self.module.device):  # capture on the module's own GPU
                for b in reversed(todo):  # largest first: smaller captures reuse its memory
                    try:
                        self._capture(b)
                    except Exception as e:  # noqa: BLE001 - any failure: run this module eagerly
                        self.error = f"capture at b={b} failed: {type(e).__name__}: {str(e)[:200]}"
                        self._captured.clear()
                        self.graphs = self.pad = False
                        self._bucket = list(range(self.max_batch + 1))
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()  # what the failed captures reserved
                        break
        if warmup and not self.graphs:
            for b in sizes or range(1, self.max_batch + 1):
                self.module(self.view(b))
            if self.cuda:
                torch.cuda.synchronize(self.module.device)

    def _capture(self, b: int) -> None:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        view = self.view(b)
        side = torch.cuda.Stream(self.module.device)
        side.wait_stream(torch.cuda.current_stream(self.module.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.module(view)
        torch.cuda.current_stream(self.module.device).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        # Capture on this module's own stream: torch's default capture stream is made once per
        # process, on the GPU current at the first capture, and a module on another GPU
        # captured there fails ("operation failed due to a previous error during capture").
        with torch.cuda.graph(g, pool=self._pool, stream=side):
            out = self.module(view)
        self._captured[b] = (g, out)

    def call(self, b: int) -> torch.Tensor:
        """One call of bucket size b on the current inputs (asynchronous on CUDA)."""
        if b in self._captured:
            g, out = self._captured[b]
            g.replay()
            return out
        return self.module(self.view(b))

    def load(self, slots: list[int], steps_done: list[int], b: int, k: int = 0) -> None:
        """Send the slots and step indices of n requests, as a call of bucket b >= n (rows past
        n select the scratch slot), through staging set ``k``."""
        n = len(slots)
        rows = self._rows[k]
        rows[:n, 0] = slots
        rows[:n, 1] = steps_done
        if b > n:
            rows[n:b] = 0
        self.view(b)["sel"].copy_(self._sel[k][b], non_blocking=True)

    def launch(self, states: list[State], steps_done: list[int]) -> int:
        """Start one call for these requests (``steps_done``: each one's step index); returns
        a ticket for ``wait``. On CUDA it returns once the call is enqueued."""
        if not torch.is_inference_mode_enabled():
            with torch.inference_mode():
                return self.launch(states, steps_done)
        b = self.bucket(len(states))
        ticket = self._ticket
        self._ticket += 1
        k = ticket % IN_FLIGHT
        self.load([s.slot for s in states], steps_done, b, k)
        if self.cuda:
            start, end = self._events[k]
            start.record()
            self.last = self.call(b)
            end.record()
        else:
            t0 = time.perf_counter()
            self.last = self.call(b)
            self._cpu_s[k] = time.perf_counter() - t0
        return ticket

    def wait(self, ticket: int) -> float:
        """Block until call ``ticket`` is done; its seconds (CUDA events on a GPU)."""
        k = ticket % IN_FLIGHT
        if self.cuda:
            start, end = self._events[k]
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return self._cpu_s[k]

    def run(self, states: list[State], steps_done: list[int]) -> float:
        """Run one call for these requests; returns when the device is done, with the seconds
        of the call itself (CUDA events on a GPU)."""
        return self.wait(self.launch(states, steps_done))
