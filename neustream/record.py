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
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from neustream.catalog.agent import AgentProgram

REQUESTS, BATCHES, SUMMARY = "requests.jsonl", "batches.jsonl", "summary.json"
FAILED_SUFFIX = ".failed"  # a crashed live run keeps its partial records under this name


# -- writing ------------------------------------------------------------------------------------


class RecordError(RuntimeError):
    """A run's records could not be written where asked; the message says where they are kept."""


def check_out(out_dir) -> Path:
    """The run directory a run will write, checked before any work: a one-line ValueError when
    it is empty, a file, or in a place this process cannot write."""
    if out_dir is None or str(out_dir).strip() in ("", "."):
        raise ValueError("--out: give the run directory to write (got an empty path)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: a file is there, not a run directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        probe.rmdir()
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    return out


def _write_lines(path: Path, rows: Iterable[dict]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def write_run(out_dir: str | Path, requests: list[dict], batches: list[dict],
              make_summary: Callable[[], dict]) -> dict:
    """The three files of a finished run, written into a staging folder beside ``out_dir``
    (``make_summary()`` last) and swapped in whole: a reader sees the previous run or this one,
    never a mix. When they cannot be written there (a full disk, a file in the way), they are
    kept in ``<out_dir>.failed/`` or a temporary folder and RecordError says where. Returns the
    summary."""
    out = Path(out_dir)
    stage = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    summary = None
    try:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        _write_lines(stage / REQUESTS, requests)
        _write_lines(stage / BATCHES, batches)
        summary = make_summary()
        _write_json(stage / SUMMARY, summary)
        _swap(stage, out)
        return summary
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        error = f"could not write the run to {out}: {e.strerror or e}"
        kept = keep_failed(out, requests, batches, {"summary": summary}, error)
        raise RecordError(f"{error}; its records are kept in {kept}") from None


def _swap(stage: Path, out: Path) -> None:
    """Put ``stage`` at ``out``; a previous run there goes as a whole."""
    if not out.exists():
        os.replace(stage, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(stage, out)
    shutil.rmtree(old, ignore_errors=True)


def keep_failed(out_dir: str | Path, requests, batches, settings: dict, error: str) -> Path:
    """Keep the records of a run that cannot end as a result, never with a summary: requests
    (unfinished ones with status queued or running) and batches so far, and ``error.json`` (the
    settings and the error), in ``<out_dir>.failed/``, or, when that cannot be written, in a new
    temporary folder. Returns where."""
    out = Path(out_dir)
    requests, batches = list(requests), list(batches)
    for make in (lambda: out.with_name(out.name + FAILED_SUFFIX),
                 lambda: Path(tempfile.mkdtemp(prefix=f"neustream-{out.name}-"))):
        try:
            where = make()
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir(parents=True)
            _write_lines(where / REQUESTS, requests)
            _write_lines(where / BATCHES, batches)
            _write_json(where / "error.json", {**settings, "error": error})
            return where
        except OSError:
            continue
    raise RecordError(f"{error}; and no folder could be written to keep its records")


def set_aside(out_dir: str | Path) -> str:
    """After a failed rerun: move the previous run at ``out_dir`` (if any) to
    ``<out_dir>.previous/``, so no summary stands where the failed run was asked to write;
    returns what to tell the user ("" when there was none)."""
    out = Path(out_dir)
    if not (out / SUMMARY).is_file():
        return ""
    previous = out.with_name(out.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    os.replace(out, previous)
    return f"; the previous run there moved to {previous}"


# -- reading ------------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[dict]:
    """The lines of a JSONL record; a ValueError naming the file and line when one is not JSON."""
    path = Path(path)
    rows = []
    try:
        with path.open() as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    rows.append(json.loads(line))
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
    return rows


def read_summary(path: str | Path, keys: Iterable[str] = ()) -> dict:
    """A run's summary.json; a ValueError naming the file when it cannot be read, is not a JSON
    object, or lacks one of ``keys``."""
    path = Path(path)
    try:
        summary = json.loads(path.read_text())
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, not a summary.json") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a run summary ({getattr(e, 'msg', e)})") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: not a run summary (a JSON object)")
    missing = [k for k in keys if k not in summary]
    if missing:
        raise ValueError(f"{path}: not a run summary, no {', '.join(missing)}")
    return summary


# -- summaries ----------------------------------------------------------------------------------


def summarize(requests: list[dict], settings: dict) -> dict:
    """Counts and goodput of one run from its request rows."""
    n = len(requests)
    counts = {s: sum(1 for r in requests if r["status"] == s) for s in ("ok", "late", "dropped")}
    if sum(counts.values()) != n:
        bad = {r["status"] for r in requests} - set(counts)
        raise ValueError(f"request rows with status {sorted(bad)}: a run's requests end ok, late "
                         f"or dropped (aborted and failed are an online server's log only)")
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
