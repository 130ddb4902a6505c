"""Fixtures shared by every test folder; plain helpers are in support.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import DIT, PALETTE, SD, copy_workflow, curve, write_latency_csv


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


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh copy of the workflow and the committed tables: nothing of the checkout's
    results/ or measured tables."""
    return copy_workflow(tmp_path)
