"""The goodput table: one row per run and sweep, from run summaries only."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from neustream.record import read_summary

COLUMNS = [
    "workload", "system", "backend", "device", "sweep", "rate", "cv", "slo", "seed",
    "n_requests", "n_ok", "n_late", "n_dropped", "attainment", "goodput_rps",
    "offered_rps", "capacity_rps", "bound_rps",
]


def aggregate(summary_paths: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """One row per (run, sweep it belongs to); a run at the default point is in
    every sweep. ``bound_rps`` = min(offered rate, device capacity)."""
    if not summary_paths:
        raise ValueError("aggregate: no summary.json files given")
    rows = []
    for path in summary_paths:
        s = read_summary(path)
        n = s["n_ok"] + s["n_late"] + s["n_dropped"]
        if n != s["n_requests"]:
            raise ValueError(f"{path}: n_ok + n_late + n_dropped = {n} != n_requests {s['n_requests']}")
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
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, out)
    return df
