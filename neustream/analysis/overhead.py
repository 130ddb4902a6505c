"""How a live server's batches compare with the model's own time and with the latency table.

``overhead`` and ``table_error`` read a live diffusion run's batch rows only (``model_s``,
``after_idle``, ``device``, ``start_s``, ``end_s``; engine/diffusion/live.py writes them): what
the server spends beside the model, and how far the measured batch times are from the table the
policy decided on. ``server_overhead`` reads an OpenAI LLM server's request log: what it adds to
an isolated request beyond its latency table.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from neustream.latency import pipeline_s
from neustream.policy.base import WHOLE_REQUESTS

if TYPE_CHECKING:
    from neustream.catalog.diffusion import Program
    from neustream.latency import LatencyTable, LlmLatencyModel


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


def server_overhead(rows: list[dict], model: LlmLatencyModel) -> dict:
    """What an LLM server adds to an isolated request beyond the latency table ``model``, from
    the scheduler plug-in's request log (rows with ``arrival_s``, ``received_s``, ``token_s``).

    Only requests that ran alone count: nothing else between their arrival and their last
    token. ``request_overhead_s``: the median time from arrival at the server to the engine
    core's receipt (HTTP, tokenization, the hop to the engine). ``step_overhead_s``: the median
    of each engine step's time beyond the table, over the first tokens (receipt to token 1
    less the isolated prefill) and the further ones (token gap less the isolated decode step):
    the engine's hop to its worker process and its output handling. The scheduler plug-in adds
    both to the isolated latency its deadlines scale (backends/vllm/scheduler.py)."""
    spans = sorted((r["arrival_s"], _last_s(r), i) for i, r in enumerate(rows)
                   if r.get("token_s") and r.get("received_s") is not None)
    alone = []
    latest = float("-inf")  # the latest end of the spans before
    for k, (start, end, i) in enumerate(spans):
        after = spans[k + 1][0] if k + 1 < len(spans) else float("inf")
        if latest < start and end < after:
            alone.append(rows[i])
        latest = max(latest, end)
    if not alone:
        raise ValueError("no request in the log ran alone: send a few requests one at a time "
                         "to the idle server")
    request, steps = [], []
    for r in alone:
        p, t = r["prompt_tokens"], r["token_s"]
        request.append(r["received_s"] - r["arrival_s"])
        steps.append(t[0] - r["received_s"] - model.prefill_alone_s(p))
        steps += [t[j] - t[j - 1] - model.decode_alone_s(p + j) for j in range(1, len(t))]
    return {"request_overhead_s": max(statistics.median(request), 0.0),
            "step_overhead_s": max(statistics.median(steps), 0.0),
            "requests": len(alone), "steps": len(steps)}


def _last_s(row: dict) -> float:
    return max([row["token_s"][-1]] + [row[k] for k in ("finish_s", "dropped_s", "ended_s")
                                       if row.get(k) is not None])
