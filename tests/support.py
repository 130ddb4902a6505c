"""What tests share, as plain functions and constants (fixtures are in conftest.py).

Latencies are short binary fractions (0.125, 0.15625, 1.5, ...) where a test computes finish
times by hand, so sums of them are exact in floating point.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from neustream.catalog.diffusion import PROGRAMS
from neustream.latency import LatencyTable, LlmLatencyModel
from neustream.queues import FifoQueue
from neustream.request import LlmRequest, Request, Status

ROOT = Path(__file__).resolve().parents[1]

# -- diffusion ----------------------------------------------------------------------------------

SD = PROGRAMS["sd15-256"]  # text_encoder, unet (loop, 30..50 steps), vae
PALETTE = PROGRAMS["palette"]  # unet (loop, 80..99 steps)
DIT = PROGRAMS["dit-s2"]  # dit (loop, 200..249 steps), vae

# Batch sizes every synthetic curve is given at (a subset of the profiling grid).
SIZES = (1, 2, 4, 8, 16, 32)


def curve(base_s: float, growth: float, max_batch: int = 32) -> dict[int, float]:
    """latency[b] = base x (1 + growth x (b - 1)) at the measured sizes up to max_batch."""
    return {b: base_s * (1 + growth * (b - 1)) for b in SIZES if b <= max_batch}


def batching_table(program, growth: float = 0.05) -> LatencyTable:
    """A table where batching helps a lot (latency grows slowly with b)."""
    rows = {}
    for m in program.modules:
        base = 0.02 if m.loop else 0.05
        rows[m.name] = curve(base, growth, min(32, m.max_batch))
    return LatencyTable(rows)


def make_request(id: int, arrival_s: float, deadline_s: float, steps: int,
                 stage: int = 0, calls_done: int = 0, queued_s: float | None = None,
                 module: str = "unet") -> Request:
    """A request already queued at ``module`` (stage ``stage``) since ``queued_s``."""
    r = Request(id=id, arrival_s=arrival_s, deadline_s=deadline_s, steps=steps)
    r.enter(stage, module, arrival_s if queued_s is None else queued_s)
    r.calls_done = calls_done
    return r


def fifo(*requests) -> FifoQueue:
    """A FIFO queue holding ``requests`` in order."""
    q = FifoQueue()
    for r in requests:
        q.add(r)
    return q


def write_latency_csv(path: Path, rows: dict[str, dict[int, float]], comment: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        if comment:
            f.write(f"# {comment}\n")
        w = csv.writer(f)
        w.writerow(["module", "batch_size", "latency_s"])
        for module, by_size in rows.items():
            for b, s in by_size.items():
                w.writerow([module, b, repr(s)])
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# -- LLM ----------------------------------------------------------------------------------------

# A model with round numbers: prefill 10 ms + 1 ms per token (no quadratic term),
# decode 8 ms + 1 ms per sequence past the first, + 1 us per context token.
PREFILL = [(b, b * L, 0.010 + 0.001 * b * L) for L in (16, 32, 64, 128) for b in (1, 2, 4)]
DECODE = [(b, b * c, 0.008 + 0.001 * (b - 1) + 1e-6 * b * c) for b in (1, 2, 4, 8) for c in (64, 256)]
MODEL = LlmLatencyModel(PREFILL, DECODE)


def req(id, arrival_s=0.0, prompt=32, output=10, generated=0, slo=2.0, model=MODEL) -> LlmRequest:
    """An LLM request with the model's deadlines; ``generated`` > 0: running, all but the
    newest token cached."""
    r = LlmRequest(id=id, arrival_s=arrival_s, prompt_tokens=prompt, output_tokens=output,
                   pslo=slo, dslo=slo)
    r.ttft_s, r.step0_s, r.step_inc_s = model.slo_terms(prompt, slo, slo)
    if generated:
        r.num_generated = generated
        r.num_computed = r.num_tokens - 1
        r.status = Status.RUNNING
    return r


def tiny_llm_table(path, vision: bool) -> None:
    """A small LLM table of the order of the tiny models' steps on a CPU core."""
    pre = [(b, b * L, 0.004 + 2e-5 * b * L) for L in (16, 64, 256) for b in (1, 2, 4)]
    dec = [(b, b * c, 0.004 + 0.0002 * b + 1e-7 * b * c) for b in (1, 4, 16) for c in (32, 128)]
    vis = [(b, 16 * b, 0.002 * b) for b in (1, 2, 4)] if vision else None
    LlmLatencyModel(pre, dec, vision=vis).to_csv(path)


# -- the workflow -------------------------------------------------------------------------------

# What a workflow run needs of the checkout; resources/ only as far as git tracks it, so a
# measured table or a run left in the checkout never reaches a test.
WORKFLOW = ["Snakefile", "rules", "config", "report", "envs", "profiles"]


def copy_workflow(dest: Path) -> Path:
    """The workflow and the committed latency tables, copied into ``dest``."""
    for name in WORKFLOW:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    tracked = subprocess.run(["git", "ls-files", "resources/latency"], cwd=ROOT,
                             capture_output=True, text=True)
    if tracked.returncode == 0 and tracked.stdout.strip():
        files = tracked.stdout.split()
    else:  # not a git checkout: the folder as it is
        files = [str(p.relative_to(ROOT)) for p in (ROOT / "resources/latency").rglob("*")
                 if p.is_file()]
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / f, dest / f)
    return dest


def snakemake(*args: str, cwd: Path, check: bool = True, env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", *args]
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def job_counts(out: str) -> dict[str, int]:
    """Rule -> number of jobs, from the job-stats table of a dry run."""
    rows = (line.split() for line in out.splitlines())
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit()}


def sweep_points(spec) -> set:
    """(rate, cv, slo) points of a workload spec: each sweep through the default point, the
    default alone when there is no sweep (as rules/common.smk's points())."""
    d = spec["default"]
    pts = {tuple(float(v) if p == s else float(d[p]) for p in ("rate", "cv", "slo"))
           for s in ("rate", "cv", "slo") for v in spec.get(s, [])}
    return pts or {tuple(float(d[p]) for p in ("rate", "cv", "slo"))}


def write_state(out: Path, state, settings: dict) -> dict:
    """The record of a diffusion run's final state (as runs/diffusion.py writes it)."""
    from neustream.record import summarize, write_run

    rows = [r.row() for r in state.requests]
    return write_run(out, rows, state.batches, lambda: summarize(rows, settings))
