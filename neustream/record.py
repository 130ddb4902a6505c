"""The serving record: one run directory, the same for every engine.

``requests.jsonl`` has one line per trace request, ``batches.jsonl`` one line per
executed batch, ``summary.json`` the settings and counts. Every file is written
to a temporary name and renamed; ``summary.json`` comes last, so a run without a
summary did not finish and is never taken for a result.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from neustream.engine.base import Run

REQUESTS, BATCHES, SUMMARY = "requests.jsonl", "batches.jsonl", "summary.json"
FAILED_SUFFIX = ".failed"  # a crashed live run keeps its partial records under this name


def request_row(r) -> dict:
    row = {
        "id": r.id,
        "arrival_s": r.arrival_s,
        "deadline_s": r.deadline_s,
        "finish_s": r.finish_s,
        "status": r.status.name.lower(),
        "steps": r.steps,
        **r.fields,
        "modules": r.module_s,
    }
    if r.dropped_at is not None:
        row["dropped_at"] = r.dropped_at
        row["dropped_s"] = r.dropped_s
    return row


def summarize(requests: list[dict], settings: dict) -> dict:
    """Counts and goodput of one run from its request rows."""
    n = len(requests)
    counts = {s: sum(1 for r in requests if r["status"] == s) for s in ("ok", "late", "dropped")}
    if sum(counts.values()) != n:
        bad = {r["status"] for r in requests} - set(counts)
        raise ValueError(f"request rows with unknown status {sorted(bad)}")
    span_s = max(r["arrival_s"] for r in requests) if requests else 0.0
    return {
        **settings,
        "n_requests": n,
        "n_ok": counts["ok"],
        "n_late": counts["late"],
        "n_dropped": counts["dropped"],
        "attainment": counts["ok"] / n if n else 0.0,
        "span_s": span_s,
        "offered_rps": n / span_s if span_s > 0 else 0.0,
        # Requests finished within their SLO per second of trace.
        "goodput_rps": counts["ok"] / span_s if span_s > 0 else 0.0,
    }


def _write_lines(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def write_run(out_dir: str | Path, run: Run, settings: dict) -> dict:
    """Write the three files of a finished run; return the summary."""
    rows = [request_row(r) for r in run.requests]
    return write_records(out_dir, rows, run.batches, lambda: summarize(rows, settings))


def write_records(out_dir: str | Path, requests: list[dict], batches: list[dict],
                  make_summary) -> dict:
    """The three files in order: any old summary removed first, requests and batches, then
    ``make_summary()`` written last under a temporary name and renamed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).unlink(missing_ok=True)
    _write_lines(out / REQUESTS, requests)
    _write_lines(out / BATCHES, batches)
    summary = make_summary()
    tmp = out / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, out / SUMMARY)
    return summary


def write_failed(out_dir: str | Path, run: Run, settings: dict, error: str) -> Path:
    """Keep the partial records of a run that stopped early: requests (unfinished ones with
    status queued or running) and batches so far, the settings and the error; never a summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_lines(out / REQUESTS, (request_row(r) for r in run.requests))
    _write_lines(out / BATCHES, run.batches)
    (out / "error.json").write_text(json.dumps({**settings, "error": error}, indent=1) + "\n")
    return out


def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def read_summary(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


# -- LLM runs -------------------------------------------------------------------------------------


def summarize_llm(requests: list[dict], settings: dict) -> dict:
    """``summarize`` plus token counts: a request is ok when every token was on time; goodput
    in tokens is the tokens on time per second of trace (the request goodput's denominator;
    the artifact divided by the makespan, kept here as ``makespan_s``)."""
    s = summarize(requests, settings)
    on_time = sum(r["tokens_on_time"] for r in requests)
    generated = sum(r["tokens_generated"] for r in requests)
    ends = [r["finish_s"] if r["finish_s"] is not None else r.get("dropped_s") for r in requests]
    ends = [t for t in ends if t is not None]
    start = min((r["arrival_s"] for r in requests), default=0.0)
    makespan = max(ends) - start if ends else 0.0
    firsts = [r["first_token_s"] - r["arrival_s"] for r in requests if r["first_token_s"] is not None]
    span = s["span_s"]
    return {
        **s,
        "tokens_requested": sum(r["output_tokens"] for r in requests),
        "tokens_generated": generated,
        "tokens_on_time": on_time,
        "token_goodput_tps": on_time / span if span > 0 else 0.0,
        "token_attainment": on_time / max(sum(r["output_tokens"] for r in requests), 1),
        "ttft_attainment": sum(1 for r in requests if r["ttft_ok"]) / len(requests) if requests else 0.0,
        "mean_ttft_s": sum(firsts) / len(firsts) if firsts else None,
        "makespan_s": makespan,
        "throughput_tps": generated / makespan if makespan > 0 else 0.0,
    }


def write_llm_run(out_dir: str | Path, requests: list[dict], batches: list[dict],
                  settings: dict) -> dict:
    """Write an LLM run's three files from its request rows (LlmRequest.row()); return the summary."""
    return write_records(out_dir, requests, batches, lambda: summarize_llm(requests, settings))


# -- multi-agent runs ----------------------------------------------------------------------------


def summarize_agent(requests: list[dict], settings: dict, program) -> dict:
    """``summarize`` (end to end: ok = left the last stage in time) plus, per stage, counts and
    goodputs (agent.stage_summary) and flat ``tps_<stage>`` columns for LLM stages."""
    from neustream.agent import stage_summary

    s = summarize(requests, settings)
    stages = stage_summary(program, requests, s["span_s"])
    on_time = sum(r["tokens_on_time"] for r in requests)
    return {
        **s,
        "tokens_requested": sum(r["output_tokens"] for r in requests),
        "tokens_on_time": on_time,
        "token_goodput_tps": on_time / s["span_s"] if s["span_s"] > 0 else 0.0,
        **{f"tps_{name}": d["token_goodput_tps"] for name, d in stages.items()
           if "token_goodput_tps" in d},
        "dropped_at": {name: sum(1 for r in requests if r.get("dropped_at") == name)
                       for name in stages},
        "stages": stages,
    }


def write_agent_run(out_dir: str | Path, requests: list[dict], batches: list[dict],
                    settings: dict, program) -> dict:
    """Write a multi-agent run's three files (AgentRequest.row_out rows); return the summary."""
    return write_records(out_dir, requests, batches,
                         lambda: summarize_agent(requests, settings, program))
