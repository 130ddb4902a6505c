"""The goodput table: one row per run and sweep, from run summaries (and diffusion bounds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from neustream.files import atomic_write
from neustream.record import read_summary

COLUMNS = [
    "workload", "system", "backend", "device", "sweep", "rate", "cv", "slo", "seed",
    "n_requests", "n_ok", "n_late", "n_dropped", "attainment", "goodput_rps",
    "offered_rps", "capacity_rps", "bound_rps", "slo_bound_rps",
]


# What names a run: two summaries with the same values are the same run given twice.
IDENTITY = ("workload", "system", "backend", "device", "rate", "cv", "slo", "seed")
# Columns of every summary the table is made from (``sweeps`` may be absent).
NEEDED = tuple(c for c in COLUMNS if c not in ("sweep", "bound_rps", "slo_bound_rps"))
# What a bound (analysis/bound.py) is computed from; a run's summary names the same.
BOUND_KEY = ("trace", "latency_table", "slo")


def _bound_key(d: dict) -> tuple:
    return (os.path.normpath(str(d["trace"])), os.path.normpath(str(d["latency_table"])),
            float(d["slo"]))


def read_bounds(paths: list[str | Path]) -> dict[tuple, dict]:
    """Bound records by what they were computed from; a one-line ValueError naming the file."""
    out = {}
    for path in paths:
        try:
            b = json.loads(Path(path).read_text())
            key = _bound_key(b)
            b["bound_rps"], b["n_requests"] = float(b["bound_rps"]), int(b["n_requests"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a bound record ({e})") from None
        out[key] = {**b, "path": str(path)}
    return out


def aggregate(summary_paths: list[str | Path], out_csv: str | Path,
              bounds: list[str | Path] = ()) -> pd.DataFrame:
    """One row per (run, sweep it belongs to); a run at the default point is in
    every sweep. ``bound_rps`` = min(offered rate, device capacity); ``slo_bound_rps``, the
    deadline-aware bound of the run's trace, table and SLO among ``bounds`` (empty when none
    is). A summary that cannot be read, or a run given twice (the same file, or two files
    naming the same run), is a one-line ValueError naming the files."""
    if not summary_paths:
        raise ValueError("aggregate: no summary.json files given")
    by_key = read_bounds(bounds)
    rows, seen = [], {}
    for path in summary_paths:
        s = read_summary(path, NEEDED)
        n = s["n_ok"] + s["n_late"] + s["n_dropped"]
        if n != s["n_requests"]:
            raise ValueError(f"{path}: n_ok + n_late + n_dropped = {n} != n_requests "
                             f"{s['n_requests']}")
        run = tuple(str(s[k]) for k in IDENTITY)
        if run in seen:
            same = "is given twice" if Path(seen[run]).resolve() == Path(path).resolve() \
                else f"and {seen[run]} are the same run"
            named = ", ".join(f"{k}={v}" for k, v in zip(IDENTITY, run))
            raise ValueError(f"aggregate: {path} {same} ({named}); each run is counted once")
        seen[run] = path
        s["slo_bound_rps"] = _slo_bound(s, by_key, path)
        for sweep in s.get("sweeps") or [""]:
            rows.append({**s, "sweep": sweep})
    df = pd.DataFrame(rows)
    df["bound_rps"] = df[["offered_rps", "capacity_rps"]].min(axis=1)
    extra = [c for c in ("tokens_on_time", "token_goodput_tps", "tokens_requested",
                         "token_attainment", "ttft_attainment", "pslo", "dslo", "program",
                         "devices") if c in df]
    extra += sorted(c for c in df if c.startswith("tps_"))  # multi-agent: per LLM stage
    df = df[COLUMNS + extra].sort_values(
        ["workload", "sweep", "system", "rate", "cv", "slo", "seed"], ignore_index=True)
    atomic_write(out_csv, df.to_csv(index=False))
    return df


def _slo_bound(s: dict, by_key: dict, path) -> float:
    """The bound of a simulated run's trace, table and SLO; NaN when there is none (live runs:
    the bound holds for the table's device model, not for a real machine)."""
    if s["backend"] != "sim" or not all(s.get(k) is not None for k in BOUND_KEY):
        return float("nan")
    b = by_key.get(_bound_key(s))
    if b is None:
        return float("nan")
    if b["n_requests"] != s["n_requests"]:
        raise ValueError(f"{path}: {s['n_requests']} requests, but its bound {b['path']} has "
                         f"{b['n_requests']}")
    return b["bound_rps"]
