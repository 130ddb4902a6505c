"""How a live server's batches compare with the model's own time and with the latency table.

Both read a live run's batch rows only (``model_s``, ``after_idle``, ``device``, ``start_s``,
``end_s``; engine/diffusion/live.py writes them): what the server spends beside the model, and
how far the measured batch times are from the table the policy decided on.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from neustream.latency import pipeline_s
from neustream.policy.base import WHOLE_REQUESTS

if TYPE_CHECKING:
    from neustream.catalog.diffusion import Program
    from neustream.latency import LatencyTable


def _stats(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": statistics.median(xs), "mean": statistics.fmean(xs),
            "max": max(xs)}


def overhead(batches: list[dict], caps: dict[str, int]) -> dict:
    """Server time outside the model, as a fraction of the model's time, per module.

    For a batch decided right after the previous one of its executor ended (no wait for an
    arrival), its overhead is the time from that previous batch's end to its own end minus its
    model time: bookkeeping, the policy's decision, input copies, launch, synchronisation,
    output copies. Given at batch size 1, at the module's cap, and over all such batches."""
    out: dict[str, dict] = {}
    prev_end: dict = {}
    for row in batches:
        dev = row.get("device")
        if dev in prev_end and not row["after_idle"] and row["model_s"] > 0:
            frac = (row["end_s"] - prev_end[dev] - row["model_s"]) / row["model_s"]
            by = out.setdefault(row["module"], {"b1": [], "cap": [], "all": []})
            by["all"].append(frac)
            if row["size"] == 1:
                by["b1"].append(frac)
            if row["size"] == caps.get(row["module"]):
                by["cap"].append(frac)
        prev_end[dev] = row["end_s"]
    return {m: {k: _stats(v) for k, v in by.items()} for m, by in out.items()}


def table_error(batches: list[dict], steps: dict, program: Program, table: LatencyTable) -> dict:
    """Measured batch time over the table's, per module (median over batches): 1.0 means the
    table predicts this server exactly. ``steps`` maps request ids to their step counts."""
    ratios: dict[str, list[float]] = {}
    for row in batches:
        if row["module"] == WHOLE_REQUESTS:
            want = pipeline_s(program, table, steps[row["ids"][0]], row["size"])
        else:
            want = table.latency(row["module"], row["size"])
        ratios.setdefault(row["module"], []).append((row["end_s"] - row["start_s"]) / want)
    return {m: {"batches": len(v), "median": statistics.median(v)} for m, v in ratios.items()}
