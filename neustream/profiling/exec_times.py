"""The code stages' table: wall seconds of each shipped plotting program, run in the sandbox.

NOTE: each program of catalog/plots/ runs ``repeats`` times through backends.sandbox.run_code,
each time in a fresh temporary folder, one run at a time; rounds go over all programs in turn
so that slow drift of a busy host falls on every program alike. The simulator replays each
program's median (latency.read_exec_times). The sidecar JSON says where and how.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

import pandas as pd

from neustream.backends.sandbox import isolation, run_code, shared_mpl_dir
from neustream.catalog.agent import list_plots
from neustream.files import atomic_write, cpu_name


def measure_exec_times(repeats: int = 3, timeout_s: float = 30.0,
                       plots: Iterable[str] | None = None) -> pd.DataFrame:
    """Run every shipped plot ``repeats`` times through ``run_code``, each in a fresh temp dir.

    Rounds go over all plots in turn (plot-major inside a round), so slow drift on a busy host
    spreads over all plots. Returns columns ``plot,repeat,seconds,status``.
    """
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    chosen = list_plots(plots)
    shared_mpl_dir()  # build the font cache before any timed run
    rows = []
    for rep in range(int(repeats)):
        for p in chosen:
            with tempfile.TemporaryDirectory(prefix=f"neustream-plot-{p.name}-") as d:
                r = run_code(p.code, d, timeout_s=timeout_s, data_files=p.data_files)
            rows.append({"plot": p.name, "repeat": rep, "seconds": round(r.seconds, 6),
                         "status": r.status})
    return pd.DataFrame(rows, columns=["plot", "repeat", "seconds", "status"])


def startup_overhead(repeats: int = 5) -> dict[str, float]:
    """Median seconds of a bare ``python -c pass`` and of ``run_code("pass")`` (prelude + guard)."""
    bare, boxed = [], []
    shared_mpl_dir()
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t0)
        with tempfile.TemporaryDirectory(prefix="neustream-empty-") as d:
            boxed.append(run_code("pass\n", d, image_name="none.png").seconds)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"bare_python_s": round(med(bare), 4), "sandbox_empty_s": round(med(boxed), 4)}


def write_exec_times(out: str | Path, repeats: int = 3, timeout_s: float = 30.0,
                     plots: Iterable[str] | None = None) -> pd.DataFrame:
    """Measure and write ``out`` (CSV) with its sidecar JSON; return the table."""
    import matplotlib
    import numpy

    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    list_plots(plots)  # unknown names fail before anything runs
    overhead = startup_overhead()
    df = measure_exec_times(repeats, timeout_s, plots)
    out = Path(out)
    meta = {
        "what": "wall seconds of one sandboxed run (interpreter start + prelude + the plot program)",
        "method": "neustream.backends.sandbox.run_code on each program in neustream/catalog/plots, "
                  "fresh temp dir per run, one run at a time, rounds over all plots, shared "
                  "prebuilt mpl cache",
        "host_cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "matplotlib": matplotlib.__version__,
        "numpy": numpy.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "repeats": repeats,
        "timeout_s": timeout_s,
        "isolation": isolation(),
        **overhead,
    }
    atomic_write(out.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    atomic_write(out, df.to_csv(index=False))
    return df
