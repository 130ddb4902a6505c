"""Fidelity: how well the simulator predicts a live run.

For each live run directory, the simulator serves the same trace under the same policy and
latency table (both named in the run's summary) and the two attainments are compared, in
percentage points (live - sim). A second prediction says where a difference comes from: the
live run's ``step_factor`` is its measured time per batch, from one batch's end to the next's
when the server never waited (engine and launch gaps included), over the table's time for those
batches; simulating with every batch that much longer (the policy still deciding on the table)
gives ``calibrated_sim_attainment``. When that one agrees, the difference is the server's
per-call overhead that the table does not carry, not the model of the policy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from neustream.catalog.diffusion import get_program
from neustream.engine.diffusion.sim import simulate
from neustream.latency import LatencyTable, pipeline_s
from neustream.policy.base import WHOLE_REQUESTS
from neustream.record import BATCHES, REQUESTS, SUMMARY, read_jsonl, read_summary, summarize
from neustream.runs.diffusion import setup
from neustream.runs.spec import RunSpec

COLUMNS = ["workload", "system", "device", "rate", "cv", "slo", "seed", "n_requests",
           "live_attainment", "sim_attainment", "diff_points", "live_goodput_rps",
           "sim_goodput_rps", "step_factor", "calibrated_sim_attainment", "calibrated_diff_points",
           "devices"]


def step_factor(run_dir: Path, program, table: LatencyTable) -> float:
    """Live time over table time, summed over the batches that followed another of their
    device at once."""
    steps = {r["id"]: r["steps"] for r in read_jsonl(run_dir / REQUESTS)}
    live = want = 0.0
    last_end: dict = {}  # device -> end of its last batch
    for b in read_jsonl(run_dir / BATCHES):
        dev = b.get("device")
        prev_end, last_end[dev] = last_end.get(dev), b["end_s"]
        if prev_end is None or b.get("after_idle", True):
            continue
        live += b["end_s"] - prev_end
        want += (pipeline_s(program, table, steps[b["ids"][0]], b["size"])
                 if b["module"] == WHOLE_REQUESTS else table.latency(b["module"], b["size"]))
    return live / want if want else 1.0


def predict(live: dict, factor: float = 1.0) -> dict:
    """The simulator's summary for the trace, policy, table and placement of a live run's
    summary, with every batch ``factor`` times the table's time (the policy decides on the
    table itself)."""
    s = setup(spec_of(live))
    table = s.table if factor == 1.0 else s.table.scaled(factor)
    placement = (live.get("server") or {}).get("placement")
    state = simulate(s.policy, table, s.requests, placement=placement)
    return summarize([r.row() for r in state.requests], {})


def spec_of(summary: dict) -> RunSpec:
    """The spec of the run a summary records (its trace, table and policy settings)."""
    return RunSpec(workload=summary["workload"], system=summary["system"],
                   rate=summary["rate"], cv=summary["cv"], slo=summary["slo"],
                   latency=Path(summary["latency_table"]), out=Path("."), seed=summary["seed"],
                   requests=summary["n_requests"], step_delta=summary["step_delta"],
                   trace=Path(summary["trace"]) if summary.get("trace") else None)


def compare(run_dirs: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    if not run_dirs:
        raise ValueError("fidelity: no live run directories given")
    rows = []
    for d in run_dirs:
        live = read_summary(Path(d) / SUMMARY)
        if live.get("backend") != "live":
            raise ValueError(f"{d}: backend is {live.get('backend')!r}, not a live run")
        sim = predict(live)
        program = get_program(live["workload"])
        factor = step_factor(Path(d), program, LatencyTable.from_csv(live["latency_table"], program))
        calibrated = predict(live, factor)
        row = {k: live[k] for k in COLUMNS[:8]}
        row.update(live_attainment=live["attainment"], sim_attainment=sim["attainment"],
                   diff_points=100 * (live["attainment"] - sim["attainment"]),
                   live_goodput_rps=live["goodput_rps"], sim_goodput_rps=sim["goodput_rps"],
                   step_factor=factor, calibrated_sim_attainment=calibrated["attainment"],
                   calibrated_diff_points=100 * (live["attainment"] - calibrated["attainment"]),
                   devices=len(set(((live.get("server") or {}).get("placement") or {0: 0}).values())))
        rows.append(row)
        print(f"{row['workload']} {row['system']} rate={row['rate']:g} cv={row['cv']:g} "
              f"slo={row['slo']:g} seed={row['seed']} ({row['device']}): live "
              f"{100 * row['live_attainment']:.1f}%, sim {100 * row['sim_attainment']:.1f}%, "
              f"diff {row['diff_points']:+.1f} points (batches x{factor:.3f} the table's time; "
              f"sim with that: {row['calibrated_diff_points']:+.1f})", file=sys.stderr)
    df = pd.DataFrame(rows, columns=COLUMNS).sort_values(
        ["workload", "system", "devices", "rate", "cv", "slo", "seed"], ignore_index=True)
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, out)
    print(f"max |live - sim| = {df.diff_points.abs().max():.1f} points over {len(df)} run(s)",
          file=sys.stderr)
    return df
