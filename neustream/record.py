"""The serving record: one run directory, the same for every engine and family.

``requests.jsonl`` has one line per trace request (each request class builds its own line,
request.py), ``batches.jsonl`` one line per executed batch or engine step, ``summary.json`` the
settings and counts. Every file is written to a temporary name and renamed; ``summary.json``
comes last, so a run without a summary did not finish and is never taken for a result. The
summary of each family: ``summarize`` (requests), ``summarize_llm`` (+ tokens),
``summarize_agent`` (+ stages).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from neustream.catalog.agent import AgentProgram

REQUESTS, BATCHES, SUMMARY = "requests.jsonl", "batches.jsonl", "summary.json"
FAILED_SUFFIX = ".failed"  # a crashed live run keeps its partial records under this name


# -- writing ------------------------------------------------------------------------------------


def _write_lines(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def write_run(out_dir: str | Path, requests: list[dict], batches: list[dict],
              make_summary: Callable[[], dict]) -> dict:
    """The three files of a finished run, in order: any old summary removed first, requests
    and batches, then ``make_summary()`` written last under a temporary name and renamed.
    Returns the summary."""
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


def write_failed(out_dir: str | Path, requests: list[dict], batches: list[dict], settings: dict,
                 error: str) -> Path:
    """Keep the partial records of a run that stopped early: requests (unfinished ones with
    status queued or running) and batches so far, the settings and the error; never a summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_lines(out / REQUESTS, requests)
    _write_lines(out / BATCHES, batches)
    (out / "error.json").write_text(json.dumps({**settings, "error": error}, indent=1) + "\n")
    return out


# -- reading ------------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def read_summary(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


# -- summaries ----------------------------------------------------------------------------------


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


def summarize_agent(requests: list[dict], settings: dict, program: AgentProgram) -> dict:
    """``summarize`` (end to end: ok = left the last stage in time) plus, per stage, counts and
    goodputs (stage_summary) and flat ``tps_<stage>`` columns for LLM stages."""
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


def stage_summary(program: AgentProgram, rows: list[dict], span_s: float) -> dict:
    """Per-stage counts and goodputs from request rows (AgentRequest.row()): for LLM stages,
    tokens on time per second of trace and the good-prefill / good-decode rates of the
    artifact's Figure 19 (requests whose first / last token met its deadline, per second)."""
    out = {}
    for s in program.stages:
        visits = [r["stages"][s.name] for r in rows if s.name in r["stages"]]
        d = {"n_in": len(visits),
             "n_forwarded": sum(v["outcome"] == "forwarded" for v in visits),
             "n_dropped": sum(v["outcome"] == "dropped" for v in visits),
             "n_late_at_exit": sum(v["outcome"] in ("boundary", "late") for v in visits)}
        if s.kind == "llm":
            on_time = sum(v["tokens_on_time"] for v in visits)
            d.update(tokens_requested=sum(v["output_tokens"] for v in visits),
                     tokens_on_time=on_time,
                     token_goodput_tps=on_time / span_s if span_s > 0 else 0.0,
                     good_prefill_rps=sum(v["ttft_ok"] for v in visits) / span_s if span_s > 0 else 0.0,
                     good_decode_rps=sum(v["last_ok"] for v in visits) / span_s if span_s > 0 else 0.0)
        else:
            secs = [v["end_s"] - v["start_s"] for v in visits
                    if v["start_s"] is not None and v["end_s"] is not None]
            d.update(exec_ok=sum(v["exec_status"] == "ok" for v in visits),
                     mean_exec_s=sum(secs) / len(secs) if secs else None)
        out[s.name] = d
    return out
