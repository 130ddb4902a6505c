"""Writing latency tables: the CSV and a sidecar JSON saying how and where it was measured.

Both files are written atomically, the JSON first, so a CSV never stands without its sidecar.
LLM tables also get the latency model fitted from them in the sidecar (``fit``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from neustream.files import atomic_write
from neustream.latency import COLUMNS, LLM_COLUMNS, LlmLatencyModel


def _write(df, csv_path: str | os.PathLike, prov: dict) -> Path:
    csv_path = Path(csv_path)
    atomic_write(csv_path.with_suffix(".json"), json.dumps(prov, indent=2) + "\n")
    atomic_write(csv_path, df.to_csv(index=False, float_format="%.6g"))
    return csv_path


def write_table(df, csv_path: str | os.PathLike, provenance: dict | None = None) -> Path:
    """A diffusion table (``module,batch_size,latency_s``); the provenance is
    ``df.attrs["provenance"]`` (set by the profiler) updated with ``provenance``."""
    if list(df.columns) != list(COLUMNS):
        got = ",".join(map(str, df.columns))
        raise ValueError(f"latency table columns must be {','.join(COLUMNS)}, got {got}")
    return _write(df, csv_path, {**df.attrs.get("provenance", {}), **(provenance or {})})


def write_llm_table(df, csv_path: str | os.PathLike, provenance: dict | None = None) -> Path:
    """An LLM table (``module,batch_size,tokens,latency_s``), its sidecar with the fit."""
    if list(df.columns) != list(LLM_COLUMNS):
        raise ValueError(f"LLM latency table columns must be {','.join(LLM_COLUMNS)}, "
                         f"got {','.join(map(str, df.columns))}")
    rows = {m: [(int(b), int(t), float(s)) for _, b, t, s in g.itertuples(index=False)]
            for m, g in df.groupby("module")}
    fit = LlmLatencyModel(rows.get("prefill", []), rows.get("decode", []), source=str(csv_path),
                          vision=rows.get("vision"))
    return _write(df, csv_path, {**df.attrs.get("provenance", {}), **(provenance or {}),
                                 "fit": fit.describe()})
