"""Live against simulated attainment for every committed live GPU run, side by side: the plain
simulator, the simulator with every batch stretched by the run's own step factor, and the
simulator with the device model fitted on the *other* runs of the same workload, table, system
and executor (engine/diffusion/device.py).

    python tests/benchmarks/bench_fidelity.py [--evidence evidence] [--out fidelity.csv]

Run from the repository root. A run's table is the path its summary names; a table that a GPU
call measured for its own runs (/tmp/evidence/tables/ there, see gpu_evidence.sh) is the file of
that name in resources/latency/<device>/, the device named in the evidence folder (h100, h200),
where such tables are committed. Runs whose table is not in the checkout are skipped (listed).
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
from pathlib import Path

import pandas as pd

from neustream.runs.fidelity import compare


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--evidence", default="evidence")
    p.add_argument("--out", default=None, help="CSV of every run (default: not kept)")
    a = p.parse_args()
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for tgz in sorted(Path(a.evidence).glob("*/runs.tar.gz")):
            dest = Path(tmp) / tgz.parent.name
            with tarfile.open(tgz) as t:
                t.extractall(dest, filter="data")
            device = next((d for d in ("h100", "h200") if d in tgz.parent.name), None)
            here = Path("resources/latency") / device if device else None
            runs, moved, skipped = [], [], []
            for s in sorted(dest.rglob("summary.json")):
                d = json.loads(s.read_text())
                if d.get("backend") != "live":
                    continue
                name = Path(d["latency_table"]).name
                if Path(d["latency_table"]).exists():
                    runs.append(s.parent)
                elif (d["latency_table"].startswith("/tmp/evidence/tables/") and here is not None
                      and (here / name).exists()):
                    moved.append(s.parent)
                else:
                    skipped.append(s.parent)
            for d in skipped:
                print(f"skipped (table not in the checkout): {d.relative_to(tmp)}")
            for group, tables in ((runs, None), (moved, here)):
                if not group:
                    continue
                df = compare(group, Path(tmp) / f"{tgz.parent.name}.csv", tables)
                df.insert(0, "evidence", tgz.parent.name)
                frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if a.out:
        df.to_csv(a.out, index=False)
    show = df.assign(
        live=100 * df.live_attainment, sim=100 * df.sim_attainment,
        calibrated=100 * df.calibrated_sim_attainment, modelled=100 * df.modelled_sim_attainment)
    cols = ["evidence", "workload", "system", "lookahead", "rate", "live", "sim", "calibrated",
            "modelled", "model_fit"]
    print(show[cols].round(1).to_string(index=False))
    for name in ("diff_points", "calibrated_diff_points", "modelled_diff_points"):
        within = (df[name].abs() <= 5).sum()
        print(f"{name}: max |.| {df[name].abs().max():.1f} points, {within}/{len(df)} within 5")


if __name__ == "__main__":
    main()
