"""`snakemake --report` on a small run: every figure and the goodput table, each with its
caption rendered for its own workload and sweep, and the workflow description."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ["Snakefile", "rules", "config", "report", "envs", "profiles", "resources"]
CONFIG = """\
requests: 20
systems: [neustream, clockwork]
workloads:
  palette:
    default: {rate: 0.5, cv: 1, slo: 3}
    rate: [0.5, 1]
    cv: [1, 2]
"""
ARGS = ["--configfile", "small.yaml", "--replace-workflow-config"]


def snakemake(workdir: Path, *args: str) -> None:
    p = subprocess.run([sys.executable, "-m", "snakemake", *args, *ARGS], cwd=workdir,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]


def report_var(page: str, name: str):
    """The `var <name> = <json>;` of the report page's data block <script id=...>."""
    block = name.replace("_", "-")
    m = re.search(rf'<script id="{block}">\s*var {name} = (.*?);\s*</script>', page, flags=re.S)
    assert m, f"no `var {name}` in the report"
    return json.loads(m.group(1))


def text(caption_html: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", caption_html)).split())


@pytest.mark.slow
def test_report_has_every_figure_and_the_table_with_captions(tmp_path: Path):
    for name in WORKFLOW:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    (tmp_path / "small.yaml").write_text(CONFIG)
    snakemake(tmp_path, "--cores", "2")
    snakemake(tmp_path, "--report", "results/report.html")
    page = (tmp_path / "results/report.html").read_text()

    results = report_var(page, "results")
    expected = {"results/tables/goodput.csv", "results/figures/palette_rate.png",
                "results/figures/palette_cv.png", "results/figures/palette_batches.png"}
    assert set(results) == expected
    captions = {path: text(r["caption"]) for path, r in results.items()}
    for path, caption in captions.items():
        assert len(caption) > 200 and "{{" not in caption and "{%" not in caption, (path, caption)
    # Captions are rendered for their own file.
    assert captions["results/figures/palette_cv.png"].startswith("palette, cv sweep:")
    assert captions["results/figures/palette_rate.png"].startswith("palette, rate sweep:")
    assert captions["results/figures/palette_batches.png"].startswith("palette at its default point")
    table = captions["results/tables/goodput.csv"]
    header = (tmp_path / "results/tables/goodput.csv").read_text().splitlines()[0].split(",")
    assert all(column in table for column in header), [c for c in header if c not in table]

    categories = report_var(page, "categories")
    assert categories["Goodput"]["palette"] == sorted(
        ["results/figures/palette_cv.png", "results/figures/palette_rate.png"])
    assert set(categories) == {"Goodput", "Batch sizes", "Tables"}

    about = text(report_var(page, "workflow_desc"))
    assert "(palette)" in about and "(neustream, clockwork)" in about and "sim backend" in about
    assert "traces of 20 requests" in about and "{{" not in about
