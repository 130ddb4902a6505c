"""`snakemake --report` on a small run: every figure and the goodput table, each with its
caption rendered for its own workload and sweep, and the workflow description."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from tests.support import snakemake

CONFIG = """\
diffusion:
  systems: [neustream, clockwork]
  sim:
    requests: 20
    workloads:
      palette:
        default: {rate: 0.5, cv: 1, slo: 3}
        rate: [0.5, 1]
        cv: [1, 2]
"""
ARGS = ["--configfile", "small.yaml", "--replace-workflow-config"]


def report_var(page: str, name: str):
    """The `var <name> = <json>;` of the report page's data block <script id=...>."""
    block = name.replace("_", "-")
    m = re.search(rf'<script id="{block}">\s*var {name} = (.*?);\s*</script>', page, flags=re.S)
    assert m, f"no `var {name}` in the report"
    return json.loads(m.group(1))


def text(caption_html: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", caption_html)).split())


@pytest.mark.slow
def test_report_has_every_figure_and_the_table_with_captions(workdir: Path):
    (workdir / "small.yaml").write_text(CONFIG)
    snakemake("--cores", "2", *ARGS, cwd=workdir)
    snakemake("--report", "results/report.html", *ARGS, cwd=workdir)
    page = (workdir / "results/report.html").read_text()

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
    assert captions["results/figures/palette_batches.png"].startswith(
        "palette, default point (sim), first seed")
    table = captions["results/tables/goodput.csv"]
    header = (workdir / "results/tables/goodput.csv").read_text().splitlines()[0].split(",")
    assert all(column in table for column in header), [c for c in header if c not in table]

    categories = report_var(page, "categories")
    assert categories["Goodput"]["palette"] == sorted(
        ["results/figures/palette_cv.png", "results/figures/palette_rate.png"])
    assert set(categories) == {"Goodput", "Batch sizes", "Tables"}

    about = text(report_var(page, "workflow_desc"))
    assert "diffusion.sim: workloads (palette)" in about and "(neustream, clockwork)" in about
    assert "traces of 20 requests" in about and "h100 latency tables" in about
    assert "{{" not in about and "llm." not in about  # parts without workloads are left out
