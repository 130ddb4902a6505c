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
"""

from __future__ import annotations

import bisect
import time
from typing import TYPE_CHECKING

import torch

from neustream.programs import grid

if TYPE_CHECKING:
    from neustream.models.diffusion import State, StreamModule


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
        self.inputs = module.make_inputs(max_batch)
        self.error: str | None = None
        self.last: torch.Tensor | None = None  # the last call's output (valid until the next)
        self._captured: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def bucket(self, n: int) -> int:
        """The batch size a batch of n requests runs at."""
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"batch of {n} is outside 1..{self.max_batch}")
        return self.sizes[bisect.bisect_left(self.sizes, n)] if self.pad else n

    def view(self, b: int) -> dict[str, torch.Tensor]:
        return {k: v[:b] for k, v in self.inputs.items()}

    @torch.inference_mode()
    def prepare(self, sizes: list[int] | None = None, warmup: bool = False) -> None:
        """Capture the buckets ``sizes`` (default: all) with graphs; else, with ``warmup``, run
        each size once so that first-call costs stay out of serving."""
        if self.graphs:
            todo = sorted({self.bucket(b) for b in (sizes or self.sizes)} - set(self._captured))
            for b in reversed(todo):  # largest first: smaller captures reuse its pool memory
                try:
                    self._capture(b)
                except Exception as e:  # noqa: BLE001 - any failure: run this module eagerly
                    self.error = f"capture at b={b} failed: {type(e).__name__}: {str(e)[:200]}"
                    self._captured.clear()
                    self.graphs = self.pad = False
                    torch.cuda.synchronize()
                    break
        if warmup and not self.graphs:
            for b in sizes or range(1, self.max_batch + 1):
                self.module(self.view(b))
            if self.cuda:
                torch.cuda.synchronize()

    def _capture(self, b: int) -> None:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        view = self.view(b)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.module(view)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self._pool):
            out = self.module(view)
        self._captured[b] = (g, out)

    def call(self, b: int) -> torch.Tensor:
        """One call of bucket size b on the current inputs (asynchronous on CUDA)."""
        if b in self._captured:
            g, out = self._captured[b]
            g.replay()
            return out
        return self.module(self.view(b))

    @torch.inference_mode()
    def run(self, states: list[State], steps_done: list[int]) -> float:
        """Run one call for these requests (``steps_done``: each one's step index); returns
        when the device is done, with the seconds of the call itself (CUDA events on a GPU)."""
        b = self.bucket(len(states))
        self.module.load(self.view(b), states, steps_done, b)
        if self.cuda:
            self._start.record()
            self.last = self.call(b)
            self._end.record()
            self._end.synchronize()
            return self._start.elapsed_time(self._end) / 1e3
        t0 = time.perf_counter()
        self.last = self.call(b)
        return time.perf_counter() - t0
