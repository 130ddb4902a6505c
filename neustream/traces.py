"""Traces of every family: seeded Gamma arrivals and per-request workload fields.

Inter-arrival gaps follow Gamma(shape 1/cv^2, scale cv^2/rate): mean 1/rate,
coefficient of variation cv (cv = 1 is Poisson). For one seed, the request
fields are the same at every rate and cv, and the gaps at rate r are the gaps
at rate 1 divided by r, so the points of a sweep differ only in what is swept.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from neustream.files import atomic_write
from neustream.latency import deadline_s, standalone_s
from neustream.request import Request

if TYPE_CHECKING:
    from neustream.catalog.diffusion import Program
    from neustream.latency import LatencyTable

N_PROMPTS = 100  # SD prompts cycle through a list of this many


class TraceError(ValueError):
    """A trace file that cannot be used; the message names the file and field."""


def check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return value


def gamma_arrivals(rate: float, cv: float, n: int, seed: int) -> np.ndarray:
    """Arrival times (s) of ``n`` requests: cumulative Gamma gaps, mean 1/rate, CV ``cv``.
    Drawn from stream [seed, 1]; workload fields use [seed, 2]."""
    rate = check_positive("rate", rate)
    cv = check_positive("cv", cv)
    if n < 1:
        raise ValueError(f"requests must be >= 1, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 1e-3 <= cv <= 1e3:
        raise ValueError(f"cv must be between 0.001 and 1000, got {cv}")
    shape = 1.0 / cv**2
    unit_gaps = np.random.default_rng([seed, 1]).standard_gamma(shape, n) / shape
    return np.cumsum(unit_gaps / rate)


def make_trace(program: Program, rate: float, cv: float, n: int, seed: int) -> list[dict]:
    """``n`` requests of ``program`` arriving at ``rate`` per second with burstiness ``cv``."""
    arrivals = gamma_arrivals(rate, cv, n, seed)
    fields = np.random.default_rng([seed, 2])
    lo, hi = program.steps
    steps = fields.integers(lo, hi + 1, n)
    rows = []
    for i in range(n):
        row = {"id": i, "arrival_s": float(arrivals[i]), "steps": int(steps[i])}
        if program.class_labels:
            row["class_label"] = int(fields.integers(0, 1000))
        if program.prompts:
            row["prompt_index"] = i % N_PROMPTS
        rows.append(row)
    return rows


def write_trace(path: str | Path, rows: list[dict], drawn: dict | None = None) -> None:
    """Write a trace CSV (atomically); ``drawn`` (the workload, rate, cv, requests and seed it
    was drawn with) goes to the sidecar ``<trace>.json``, which runs check their labels
    against."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {path}: a folder, not a trace file")
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for row in rows:
        w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    try:
        if drawn is not None:
            atomic_write(path.with_suffix(".json"), json.dumps(drawn, indent=1) + "\n")
        atomic_write(path, buf.getvalue())
    except OSError as e:
        raise ValueError(f"--out {path}: cannot write there ({e.strerror or e})") from None


def check_drawn(path: str | Path, **labels) -> None:
    """A trace used under ``labels`` (workload, rate, cv, seed, ...) must have been drawn with
    them, when its sidecar says how it was drawn; a one-line ValueError naming the first that
    differs."""
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        return
    try:
        drawn = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise TraceError(f"{side}: not a readable trace sidecar ({e})") from None
    for key, value in labels.items():
        if key in drawn and value is not None and str(drawn[key]) != str(value) \
                and not _same_number(drawn[key], value):
            raise TraceError(f"--trace {path} was drawn with {key}={drawn[key]} (its sidecar "
                             f"says), not --{key} {value}")


def _same_number(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def read_rows(path: str | Path, columns, parse, check) -> list[dict]:
    """Read a trace CSV: every column in ``columns`` present, ``parse(raw)`` gives a row (a
    ValueError or TypeError: a non-numeric field), ids unique, arrival_s finite, >= 0 and
    non-decreasing, then ``check(row)`` returns an error message or None. Errors name the
    file and line."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace {path} does not exist")
    rows, seen, last = [], set(), -math.inf
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise TraceError(f"{path}: missing column(s) {', '.join(missing)}")
        for n, raw in enumerate(reader, start=2):
            try:
                row = parse(raw)
            except (TypeError, ValueError):
                raise TraceError(f"{path}:{n}: non-numeric field in {raw}") from None
            if row["id"] in seen:
                raise TraceError(f"{path}:{n}: duplicate id {row['id']}")
            if not (math.isfinite(row["arrival_s"]) and row["arrival_s"] >= max(last, 0.0)):
                raise TraceError(f"{path}:{n}: arrival_s must be >= 0 and non-decreasing")
            problem = check(row)
            if problem:
                raise TraceError(f"{path}:{n}: {problem}")
            seen.add(row["id"])
            last = row["arrival_s"]
            rows.append(row)
    if not rows:
        raise TraceError(f"{path}: no requests")
    return rows


def read_trace(path: str | Path, program: Program) -> list[dict]:
    """Read and check a trace CSV (``id,arrival_s,steps,...``)."""
    lo, hi = program.steps

    def parse(raw):
        return {k: (float(v) if k == "arrival_s" else int(v)) for k, v in raw.items()}

    def check(row):
        if not lo <= row["steps"] <= hi:
            return f"steps {row['steps']} outside {lo}..{hi} for {program.name}"

    return read_rows(path, ("id", "arrival_s", "steps"), parse, check)


def to_requests(rows: list[dict], program: Program, table: LatencyTable, slo: float) -> list[Request]:
    """Requests with deadlines: arrival + slo x stand-alone batch-1 latency."""
    check_positive("slo", slo)
    out = []
    for row in rows:
        extra = {k: v for k, v in row.items() if k not in ("id", "arrival_s", "steps")}
        alone = standalone_s(program, table, row["steps"])
        out.append(Request(
            id=row["id"], arrival_s=row["arrival_s"],
            deadline_s=deadline_s(row["arrival_s"], slo, alone),
            steps=row["steps"], fields=extra,
        ))
    return out


# -- LLM traces ----------------------------------------------------------------------------------
# Rows `id,arrival_s,prompt_tokens,output_tokens`: the same Gamma arrivals as above; request i
# gets prompt length program.prompt_tokens[i % len] (the artifact replays its prompt list in
# order) and an output length round(Exp(mean)) clipped to [output_min, output_max], from [seed, 2].

LLM_TRACE_COLUMNS = ("id", "arrival_s", "prompt_tokens", "output_tokens")


def make_llm_trace(program, rate: float, cv: float, n: int, seed: int) -> list[dict]:
    """``n`` requests of the LLM workload ``program`` (catalog.llm.LlmProgram)."""
    arrivals = gamma_arrivals(rate, cv, n, seed)
    draws = np.random.default_rng([seed, 2]).exponential(program.output_mean, n)
    outputs = np.clip(np.rint(draws), program.output_min, program.output_max).astype(int)
    prompts = program.prompt_tokens
    return [{"id": i, "arrival_s": float(arrivals[i]), "prompt_tokens": int(prompts[i % len(prompts)]),
             "output_tokens": int(outputs[i])} for i in range(n)]


def read_llm_trace(path: str | Path, program) -> list[dict]:
    """Read and check an LLM trace CSV (``id,arrival_s,prompt_tokens,output_tokens``)."""

    def parse(raw):
        return {k: (float(raw[k]) if k == "arrival_s" else int(raw[k])) for k in LLM_TRACE_COLUMNS}

    def check(row):
        if row["prompt_tokens"] < 1 or row["output_tokens"] < 1:
            return "prompt_tokens and output_tokens must be >= 1"
        if row["prompt_tokens"] + row["output_tokens"] > program.max_model_len:
            return (f"prompt_tokens + output_tokens exceeds {program.name}'s max_model_len "
                    f"{program.max_model_len}")

    return read_rows(path, LLM_TRACE_COLUMNS, parse, check)


def to_llm_requests(rows: list[dict], model, pslo: float, dslo: float):
    """LlmRequests with per-token deadlines from the latency model (LlmLatencyModel)."""
    from neustream.request import LlmRequest

    check_positive("pslo", pslo)
    check_positive("dslo", dslo)
    out = []
    for row in rows:
        ttft, step0, inc = model.slo_terms(row["prompt_tokens"], pslo, dslo)
        out.append(LlmRequest(id=row["id"], arrival_s=row["arrival_s"],
                              prompt_tokens=row["prompt_tokens"], output_tokens=row["output_tokens"],
                              pslo=pslo, dslo=dslo, ttft_s=ttft, step0_s=step0, step_inc_s=inc))
    return out


# -- multi-agent traces ---------------------------------------------------------------------------
# One row per request: arrival, the plotting program its code stages run, and the forced prompt
# and output tokens of each LLM stage (catalog.agent.Lengths says how they are drawn, from [seed, 2]).


def agent_columns(program) -> list[str]:
    cols = ["id", "arrival_s", "plot"]
    for s in program.llm_stages:
        cols += [f"{s.name}_prompt", f"{s.name}_output"]
    return cols


def _beta_tokens(rng: np.random.Generator, lo: int, hi: int, ab: tuple[float, float], n: int):
    return np.rint(lo + (hi - lo) * rng.beta(ab[0], ab[1], n)).astype(int)


def make_agent_trace(program, rate: float, cv: float, n: int, seed: int,
                     plots: list[str]) -> list[dict]:
    """``n`` requests of the multi-agent ``program`` (catalog.agent.AgentProgram); each gets one of
    ``plots`` (names of the shipped plotting programs) uniformly at random."""
    from neustream.catalog.llm import get_llm_program, image_tokens

    if not plots:
        raise ValueError("make_agent_trace: no plotting programs to draw from")
    arrivals = gamma_arrivals(rate, cv, n, seed)
    rng = np.random.default_rng([seed, 2])
    L = program.lengths
    query = np.clip(np.rint(rng.normal(L.query_mean, L.query_sd, n)), L.query_lo, L.query_hi).astype(int)
    code = _beta_tokens(rng, L.code_lo, L.code_hi, L.code_beta, n)
    feedback = _beta_tokens(rng, L.feedback_lo, L.feedback_hi, L.feedback_beta, n)
    refined = _beta_tokens(rng, L.code_lo, L.code_hi, L.code_beta, n)
    plot = rng.integers(0, len(plots), n)
    first, vision, second = program.llm_stages
    img = vision.images * image_tokens(get_llm_program(vision.model).config)
    rows = []
    for i in range(n):
        rows.append({
            "id": i, "arrival_s": float(arrivals[i]), "plot": plots[plot[i]],
            f"{first.name}_prompt": int(L.code_template + query[i]),
            f"{first.name}_output": int(code[i]),
            f"{vision.name}_prompt": int(img + L.feedback_template + round(L.code_fraction * code[i])),
            f"{vision.name}_output": int(feedback[i]),
            f"{second.name}_prompt": int(L.code_template + feedback[i]),
            f"{second.name}_output": int(refined[i]),
        })
    return rows


def read_agent_trace(path: str | Path, program) -> list[dict]:
    """Read and check a multi-agent trace CSV (agent_columns(program))."""
    from neustream.catalog.llm import get_llm_program

    cols = agent_columns(program)
    limits = {s.name: (s.model, get_llm_program(s.model).max_model_len) for s in program.llm_stages}

    def parse(raw):
        return {k: (float(raw[k]) if k == "arrival_s" else raw[k] if k == "plot" else int(raw[k]))
                for k in cols}

    def check(row):
        if not row["plot"]:
            return "empty plot name"
        for name, (model, limit) in limits.items():
            p, o = row[f"{name}_prompt"], row[f"{name}_output"]
            if p < 1 or o < 1:
                return f"{name}_prompt and {name}_output must be >= 1"
            if p + o > limit:
                return f"{name} prompt + output {p + o} exceeds {model}'s max_model_len {limit}"

    return read_rows(path, cols, parse, check)


def generate(workload: str, rate: float, cv: float, n: int, seed: int) -> list[dict]:
    """A trace of ``n`` requests of any workload of the catalog (its family's fields)."""
    from neustream.catalog import get_workload
    from neustream.catalog.agent import list_plots

    family, program = get_workload(workload)
    if family == "diffusion":
        return make_trace(program, rate, cv, n, seed)
    if family == "llm":
        return make_llm_trace(program, rate, cv, n, seed)
    return make_agent_trace(program, rate, cv, n, seed, [p.name for p in list_plots()])
