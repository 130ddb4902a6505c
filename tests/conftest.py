"""Shared fixtures: small hand-made latency tables, CSV writers, request builders.

Latencies are chosen as short binary fractions (0.125, 0.15625, 1.5, ...) where
a test computes finish times by hand, so sums of them are exact in floating point.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from neustream.latency import LatencyTable
from neustream.programs import PROGRAMS
from neustream.request import Request

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


@pytest.fixture
def palette():
    return PALETTE


@pytest.fixture
def sd():
    return SD


@pytest.fixture
def dit():
    return DIT


@pytest.fixture
def palette_csv(tmp_path) -> Path:
    """A palette table under <tmp>/latency/<device>/palette.csv (device = 'toydev')."""
    return write_latency_csv(tmp_path / "latency" / "toydev" / "palette.csv",
                             {"unet": curve(0.02, 0.05, 32)}, comment="hand-made test table")


@pytest.fixture
def sd_csv(tmp_path) -> Path:
    rows = {m.name: curve(0.02 if m.loop else 0.05, 0.05, min(32, m.max_batch)) for m in SD.modules}
    return write_latency_csv(tmp_path / "latency" / "toydev" / "sd15-256.csv", rows)
