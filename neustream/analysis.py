"""Goodput tables and figures, from run records only (no engine is imported here)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from neustream.record import BATCHES, SUMMARY, read_jsonl, read_summary

COLUMNS = [
    "workload", "system", "backend", "device", "sweep", "rate", "cv", "slo", "seed",
    "n_requests", "n_ok", "n_late", "n_dropped", "attainment", "goodput_rps",
    "offered_rps", "capacity_rps", "bound_rps",
]
SWEEPS = ("rate", "cv", "slo")
LABELS = {"rate": "request rate (req/s)", "cv": "burstiness (CV of gaps)", "slo": "SLO scale"}
STYLE = {  # system -> (colour, marker)
    "neustream": ("tab:red", "o"), "neustream-slack": ("tab:purple", "D"),
    "clockwork": ("tab:blue", "s"), "vllm": ("tab:blue", "s"),
}


def aggregate(summary_paths: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """One row per (run, sweep it belongs to); a run at the default point is in
    every sweep. ``bound_rps`` = min(offered rate, device capacity)."""
    if not summary_paths:
        raise ValueError("aggregate: no summary.json files given")
    rows = []
    for path in summary_paths:
        s = read_summary(path)
        n = s["n_ok"] + s["n_late"] + s["n_dropped"]
        if n != s["n_requests"]:
            raise ValueError(f"{path}: n_ok + n_late + n_dropped = {n} != n_requests {s['n_requests']}")
        for sweep in s.get("sweeps") or [""]:
            rows.append({**s, "sweep": sweep})
    df = pd.DataFrame(rows)
    df["bound_rps"] = df[["offered_rps", "capacity_rps"]].min(axis=1)
    extra = [c for c in ("tokens_on_time", "token_goodput_tps", "tokens_requested",
                         "token_attainment", "ttft_attainment", "pslo", "dslo", "program",
                         "devices") if c in df]
    extra += sorted(c for c in df if c.startswith("tps_"))  # multi-agent: per LLM stage
    df = df[COLUMNS + extra].sort_values(
        ["workload", "sweep", "system", "rate", "cv", "slo", "seed"], ignore_index=True)
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, out)
    return df


def _fixed_point(df: pd.DataFrame, sweep: str) -> str:
    others = [p for p in SWEEPS if p != sweep]
    return ", ".join(f"{p}={df[p].iloc[0]:g}" for p in others)


def plot_sweep(table_csv: str | Path, workload: str, sweep: str, out_png: str | Path) -> None:
    """Goodput against ``sweep`` for each system, with the device's capacity bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(table_csv)
    df = df[(df.workload == workload) & (df.sweep == sweep)]
    if df.empty:
        raise ValueError(f"no rows for workload {workload!r} and sweep {sweep!r} in {table_csv}")
    mean = df.groupby(["system", sweep], as_index=False)[["goodput_rps", "bound_rps", "attainment"]].mean()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    bound = mean.groupby(sweep)["bound_rps"].max()
    ax.plot(bound.index, bound.values, "k--", lw=1, label="bound: min(offered, capacity)")
    for system, g in mean.groupby("system"):
        colour, marker = STYLE.get(system, (None, "x"))
        ax.plot(g[sweep], g["goodput_rps"], marker=marker, color=colour, label=system)
        ax2.plot(g[sweep], 100 * g["attainment"], marker=marker, color=colour, label=system)
    if sweep == "rate" and mean[sweep].max() >= 8 * mean[sweep].min():
        ticks = sorted(mean[sweep].unique())
        for a in (ax, ax2):  # rate grids span both systems' knees
            a.set_xscale("log")
            a.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7, rotation=45)
            a.minorticks_off()
    ax.set_xlabel(LABELS[sweep])
    ax.set_ylabel("goodput (req/s within SLO)")
    ax.set_ylim(bottom=0)
    ax2.set_xlabel(LABELS[sweep])
    ax2.set_ylabel("SLO attainment (%)")
    ax2.set_ylim(0, 105)
    ax.legend(fontsize=7)
    devices = ", ".join(sorted(df.device.unique()))
    backends = ", ".join(sorted(df.backend.unique()))
    fig.suptitle(f"{workload}: {sweep} sweep ({_fixed_point(df, sweep)}; {backends}, {devices} tables)",
                 fontsize=9)
    fig.tight_layout()
    _save(fig, out_png)


def plot_batches(run_dirs: list[str | Path], out_png: str | Path, title: str = "") -> None:
    """Batch size over time, one panel per run, one line per module."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(run_dirs), 1, figsize=(9, 2.4 * len(run_dirs)),
                             sharex=True, squeeze=False)
    for ax, run in zip(axes[:, 0], run_dirs):
        s = read_summary(Path(run) / SUMMARY)
        b = pd.DataFrame(read_jsonl(Path(run) / BATCHES))
        if not b.empty:
            for module, g in b.groupby("module", sort=False):
                ax.step(g.start_s, g["size"], where="post", lw=0.7, label=module)
        ax.set_ylabel("batch size")
        ax.set_title(f"{s['system']}: {s['n_ok']}/{s['n_requests']} on time "
                     f"(rate={s['rate']:g}, cv={s['cv']:g}, slo={s['slo']:g})", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time since trace start (s)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, out_png)


def _save(fig, out_png: str | Path) -> None:
    import matplotlib.pyplot as plt

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)


LLM_STYLE = {  # LLM system -> (colour, marker)
    "neustream-llm": ("tab:red", "o"), "vllm-054": ("tab:green", "^"), "vllm": ("tab:blue", "s"),
}


def plot_llm_sweep(table_csv: str | Path, workload: str, sweep: str, out_png: str | Path) -> None:
    """Token goodput and request attainment (every token on time) against ``sweep``, one line
    per system and backend (live runs solid, simulated ones dashed), offered tokens dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(table_csv)
    df = df[(df.workload == workload) & (df.sweep == sweep)]
    if df.empty or "token_goodput_tps" not in df:
        raise ValueError(f"no LLM rows for workload {workload!r} and sweep {sweep!r} in {table_csv}")
    df = df.assign(offered_tps=df.tokens_requested * df.offered_rps / df.n_requests)
    cols = ["token_goodput_tps", "attainment", "token_attainment", "offered_tps"]
    mean = df.groupby(["backend", "system", sweep], as_index=False)[cols].mean()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    offered = mean.groupby(sweep)["offered_tps"].max()
    ax.plot(offered.index, offered.values, "k:", lw=1, label="offered tokens")
    for (backend, system), g in mean.groupby(["backend", "system"]):
        colour, marker = LLM_STYLE.get(system, (None, "x"))
        ls = "--" if backend == "sim" else "-"
        label = f"{system} ({backend})"
        ax.plot(g[sweep], g["token_goodput_tps"], ls, marker=marker, color=colour, label=label)
        ax2.plot(g[sweep], 100 * g["attainment"], ls, marker=marker, color=colour, label=label)
    ax.set_xlabel(LABELS[sweep])
    ax.set_ylabel("goodput (tokens/s on time)")
    ax.set_ylim(bottom=0)
    ax2.set_xlabel(LABELS[sweep])
    ax2.set_ylabel("requests with every token on time (%)")
    ax2.set_ylim(0, 105)
    ax.legend(fontsize=6)
    devices = ", ".join(sorted(df.device.astype(str).unique()))
    fig.suptitle(f"{workload}: {sweep} sweep ({_fixed_point(df, sweep)}; {devices} tables)", fontsize=9)
    fig.tight_layout()
    _save(fig, out_png)


def plot_agent_sweep(table_csv: str | Path, workload: str, sweep: str, out_png: str | Path) -> None:
    """The artifact's Figure 17 row for one sweep, plus end to end: tokens on time per second
    in each LLM stage (one panel each) and requests through every stage in time per second,
    one line per system and backend (live solid, simulated dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(table_csv)
    df = df[(df.workload == workload) & (df.sweep == sweep)]
    stages = [c for c in df.columns if c.startswith("tps_") and df[c].notna().any()]
    if "program" in df and not df.empty:  # pipeline order, not the table's
        from neustream.programs import get_agent_program

        order = [f"tps_{s.name}" for s in get_agent_program(df.program.iloc[0]).llm_stages]
        stages = [c for c in order if c in stages] + [c for c in stages if c not in order]
    if df.empty or not stages:
        raise ValueError(f"no multi-agent rows for workload {workload!r} and sweep {sweep!r} "
                         f"in {table_csv}")
    cols = stages + ["goodput_rps", "offered_rps"]
    mean = df.groupby(["backend", "system", sweep], as_index=False)[cols].mean()
    fig, axes = plt.subplots(1, len(stages) + 1, figsize=(3.1 * (len(stages) + 1), 3.2))
    for (backend, system), g in mean.groupby(["backend", "system"]):
        colour, marker = LLM_STYLE.get(system, (None, "x"))
        ls = "--" if backend == "sim" else "-"
        for ax, c in zip(axes, stages + ["goodput_rps"]):
            ax.plot(g[sweep], g[c], ls, marker=marker, color=colour, label=f"{system} ({backend})")
    offered = mean.groupby(sweep)["offered_rps"].max()
    axes[-1].plot(offered.index, offered.values, "k:", lw=1, label="offered")
    for ax, c in zip(axes, stages + ["goodput_rps"]):
        ax.set_xlabel(LABELS[sweep])
        ax.set_title(c.removeprefix("tps_") if c != "goodput_rps" else "end to end", fontsize=9)
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("goodput (tokens/s on time)")
    axes[-1].set_ylabel("requests/s through every stage in time")
    axes[-1].legend(fontsize=6)
    devices = ", ".join(sorted(df.device.astype(str).unique()))
    fig.suptitle(f"{workload}: {sweep} sweep ({_fixed_point(df, sweep)}; {devices} tables)", fontsize=9)
    fig.tight_layout()
    _save(fig, out_png)
