"""Traces: seeded Gamma arrivals and per-request workload fields.

Inter-arrival gaps follow Gamma(shape 1/cv^2, scale cv^2/rate): mean 1/rate,
coefficient of variation cv (cv = 1 is Poisson). For one seed, the request
fields are the same at every rate and cv, and the gaps at rate r are the gaps
at rate 1 divided by r, so the points of a sweep differ only in what is swept.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from neustream.latency import deadline_s, standalone_s
from neustream.request import Request

if TYPE_CHECKING:
    from neustream.latency import LatencyTable
    from neustream.programs import Program

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


def make_trace(program: Program, rate: float, cv: float, n: int, seed: int) -> list[dict]:
    """``n`` requests of ``program`` arriving at ``rate`` per second with burstiness ``cv``."""
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
    arrivals = np.cumsum(unit_gaps / rate)
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


def write_trace(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    os.replace(tmp, path)


def read_trace(path: str | Path, program: Program) -> list[dict]:
    """Read and check a trace CSV (``id,arrival_s,steps,...``)."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace {path} does not exist")
    rows = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = ["id", "arrival_s", "steps"]
        missing = [c for c in need if c not in (reader.fieldnames or ())]
        if missing:
            raise TraceError(f"{path}: missing column(s) {', '.join(missing)}")
        last = -math.inf
        seen = set()
        lo, hi = program.steps
        for n, raw in enumerate(reader, start=2):
            try:
                row = {k: (float(v) if k == "arrival_s" else int(v)) for k, v in raw.items()}
            except (TypeError, ValueError):
                raise TraceError(f"{path}:{n}: non-numeric field in {raw}") from None
            if row["id"] in seen:
                raise TraceError(f"{path}:{n}: duplicate id {row['id']}")
            if not (math.isfinite(row["arrival_s"]) and row["arrival_s"] >= max(last, 0.0)):
                raise TraceError(f"{path}:{n}: arrival_s must be >= 0 and non-decreasing")
            if not lo <= row["steps"] <= hi:
                raise TraceError(f"{path}:{n}: steps {row['steps']} outside {lo}..{hi} for {program.name}")
            seen.add(row["id"])
            last = row["arrival_s"]
            rows.append(row)
    if not rows:
        raise TraceError(f"{path}: no requests")
    return rows


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
