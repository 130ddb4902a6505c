"""Timing calls on a device, the way every profiler of the project does it."""

from __future__ import annotations

import time
from typing import Callable


def time_calls(fn: Callable[[], object], *, repeats: int, warmup: int, device,
               host: bool = False) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones. On CUDA
    each call sits between two events and is synchronised; on CPU, or with ``host`` (a ``fn``
    that synchronises itself), the host clock brackets it."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda" and not host:
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times
