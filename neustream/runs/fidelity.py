"""Fidelity: how well the simulator predicts a live run, and the device model that closes the gap.

For each live run directory, the simulator serves the same trace under the same policy, latency
table and placement (all named in the run's summary) and the two attainments are compared, in
percentage points (live - sim). Two more predictions say where a difference comes from:
- ``calibrated``: the live run's ``step_factor`` is its measured time per batch, from one
  batch's end to the next's on its device when the server never waited (engine and launch gaps
  included), over the table's time for those batches; every simulated batch takes that much
  longer (the policy still deciding on the table). When this one agrees, the difference is a
  per-call overhead the table does not carry.
- ``modelled``: batches take times drawn from a device model (engine/diffusion/device.py) fitted
  on the *other* live runs given of the same workload, table, system and executor mode
  (``model_fit`` says how many; a run with no such others is fitted on itself, and says so),
  drawn from the run's seed. This one also carries the spread of batch times and of whole runs.

``calibrate`` fits a device model from live runs and writes it as JSON, for ``simulate
--device-model``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from neustream.catalog.diffusion import get_program
from neustream.engine.diffusion.device import DeviceModel, fit
from neustream.engine.diffusion.sim import simulate
from neustream.files import atomic_write
from neustream.latency import LatencyTable, pipeline_s
from neustream.policy.base import WHOLE_REQUESTS
from neustream.record import BATCHES, REQUESTS, SUMMARY, read_jsonl, read_summary, summarize
from neustream.runs.diffusion import setup
from neustream.runs.spec import RunSpec

COLUMNS = ["workload", "system", "device", "rate", "cv", "slo", "seed", "n_requests",
           "live_attainment", "sim_attainment", "diff_points", "live_goodput_rps",
           "sim_goodput_rps", "step_factor", "calibrated_sim_attainment", "calibrated_diff_points",
           "devices", "lookahead", "modelled_sim_attainment", "modelled_diff_points",
           "model_fit"]


def timed_batches(run_dir: Path, program, table: LatencyTable) -> list[dict]:
    """The run's batch rows, each with ``table_s``: the table's time for it."""
    steps = {r["id"]: r["steps"] for r in read_jsonl(run_dir / REQUESTS)}
    rows = read_jsonl(run_dir / BATCHES)
    for b in rows:
        b["table_s"] = (pipeline_s(program, table, steps[b["ids"][0]], b["size"])
                        if b["module"] == WHOLE_REQUESTS else table.latency(b["module"], b["size"]))
    return rows


def step_factor(batches: list[dict]) -> float:
    """Live time over table time, summed over the batches that followed another of their
    device at once."""
    live = want = 0.0
    last_end: dict = {}  # device -> end of its last batch
    for b in batches:
        dev = b.get("device")
        prev_end, last_end[dev] = last_end.get(dev), b["end_s"]
        if prev_end is None or b.get("after_idle", True):
            continue
        live += b["end_s"] - prev_end
        want += b["table_s"]
    return live / want if want else 1.0


def predict(live: dict, factor: float = 1.0, device: DeviceModel | None = None) -> dict:
    """The simulator's summary for the trace, policy, table and placement of a live run's
    summary, with every batch ``factor`` times the table's time, or drawn from ``device`` (the
    policy decides on the table itself)."""
    s = setup(spec_of(live))
    table = s.table if factor == 1.0 else s.table.scaled(factor)
    placement = (live.get("server") or {}).get("placement")
    state = simulate(s.policy, table, s.requests, placement=placement, device=device,
                     seed=live["seed"])
    return summarize([r.row() for r in state.requests], {})


def spec_of(summary: dict) -> RunSpec:
    """The spec of the run a summary records (its trace, table and policy settings)."""
    return RunSpec(workload=summary["workload"], system=summary["system"],
                   rate=summary["rate"], cv=summary["cv"], slo=summary["slo"],
                   latency=Path(summary["latency_table"]), out=Path("."), seed=summary["seed"],
                   requests=summary["n_requests"], step_delta=summary["step_delta"],
                   trace=Path(summary["trace"]) if summary.get("trace") else None)


def _kind(live: dict) -> tuple:
    """Runs whose batches one device model describes."""
    return (live["workload"], live["latency_table"], live["system"], bool(live.get("lookahead")),
            tuple(sorted(((live.get("server") or {}).get("placement") or {}).items())))


def _read(run_dirs, tables: str | Path | None = None) -> list[tuple[Path, dict, list[dict]]]:
    """(run directory, summary, timed batches) of each live run; with ``tables``, each run's
    table is the file of the same name in that folder (runs measured on another machine)."""
    if not run_dirs:
        raise ValueError("no live run directories given")
    out = []
    for d in map(Path, run_dirs):
        live = read_summary(d / SUMMARY)
        if live.get("backend") != "live":
            raise ValueError(f"{d}: backend is {live.get('backend')!r}, not a live run")
        if tables is not None:
            live["latency_table"] = str(Path(tables) / Path(live["latency_table"]).name)
        program = get_program(live["workload"])
        table = LatencyTable.from_csv(live["latency_table"], program)
        out.append((d, live, timed_batches(d, program, table)))
    return out


def calibrate(run_dirs: list[str | Path], out: str | Path,
              tables: str | Path | None = None) -> DeviceModel:
    """Fit a device model on live runs of one workload and table; write it to ``out``."""
    runs = _read(run_dirs, tables)
    kinds = {(live["workload"], live["latency_table"]) for _, live, _ in runs}
    if len(kinds) > 1:
        raise ValueError(f"calibrate: the runs mix workloads or tables {sorted(kinds)}; "
                         f"one device model describes one table")
    (workload, table), = kinds
    model = fit([b for _, _, b in runs], {
        "workload": workload, "latency_table": table,
        "systems": sorted({live["system"] for _, live, _ in runs}),
        "runs": [str(d) for d, _, _ in runs]})
    atomic_write(out, model.to_text())
    return model


def calibrate_from_table(table_csv: str | Path, out: str | Path) -> DeviceModel:
    """A device model from a table's own sidecar: the spread of the profiler's timed calls."""
    from neustream.engine.diffusion.device import from_spread
    from neustream.latency import read_sidecar

    path = Path(table_csv)
    prov = read_sidecar(path)
    if not prov.get("spread_s"):
        raise ValueError(f"{path.with_suffix('.json')}: no 'spread_s' (measured before the "
                         f"profiler kept its calls' spread; profile the table again)")
    program = get_program(prov["workload"])
    model = from_spread(prov["spread_s"], LatencyTable.from_csv(path, program),
                        {"workload": prov["workload"], "latency_table": str(path)})
    atomic_write(out, model.to_text())
    return model


def compare(run_dirs: list[str | Path], out_csv: str | Path,
            tables: str | Path | None = None) -> pd.DataFrame:
    runs = _read(run_dirs, tables)
    rows = []
    for d, live, batches in runs:
        sim = predict(live)
        factor = step_factor(batches)
        calibrated = predict(live, factor)
        others = [b for e, other, b in runs if e != d and _kind(other) == _kind(live)]
        model = fit(others or [batches])
        modelled = predict(live, device=model)
        row = {k: live[k] for k in COLUMNS[:8]}
        row.update(live_attainment=live["attainment"], sim_attainment=sim["attainment"],
                   diff_points=100 * (live["attainment"] - sim["attainment"]),
                   live_goodput_rps=live["goodput_rps"], sim_goodput_rps=sim["goodput_rps"],
                   step_factor=factor, calibrated_sim_attainment=calibrated["attainment"],
                   calibrated_diff_points=100 * (live["attainment"] - calibrated["attainment"]),
                   devices=len(set(((live.get("server") or {}).get("placement")
                                    or {0: 0}).values())),
                   lookahead=bool(live.get("lookahead")),
                   modelled_sim_attainment=modelled["attainment"],
                   modelled_diff_points=100 * (live["attainment"] - modelled["attainment"]),
                   model_fit=f"{len(others)} other run(s)" if others else "itself")
        rows.append(row)
        print(f"{row['workload']} {row['system']} rate={row['rate']:g} cv={row['cv']:g} "
              f"slo={row['slo']:g} seed={row['seed']} ({row['device']}): live "
              f"{100 * row['live_attainment']:.1f}%, sim {100 * row['sim_attainment']:.1f}% "
              f"({row['diff_points']:+.1f}); batches x{factor:.3f} the table's time: "
              f"{row['calibrated_diff_points']:+.1f}; device model ({row['model_fit']}): "
              f"{row['modelled_diff_points']:+.1f}", file=sys.stderr)
    df = pd.DataFrame(rows, columns=COLUMNS).sort_values(
        ["workload", "system", "devices", "lookahead", "rate", "cv", "slo", "seed"],
        ignore_index=True)
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, out)
    print(f"max |live - sim| = {df.diff_points.abs().max():.1f} points, calibrated "
          f"{df.calibrated_diff_points.abs().max():.1f}, device model "
          f"{df.modelled_diff_points.abs().max():.1f}, over {len(df)} run(s)", file=sys.stderr)
    return df
