"""Figures from the goodput table and run records: one sweep figure per family, batch sizes.

``plot`` draws the rows of one workload (and device) in one sweep, in the figure of the
workload's family: diffusion goodput and attainment with the deadline-aware bound; LLM token
goodput and attainment with the offered tokens; agent tokens on time per LLM stage and end to
end. One line per system and backend (live solid, simulated dashed).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from neustream.catalog import family_of
from neustream.record import BATCHES, SUMMARY, read_jsonl, read_summary

SWEEPS = ("rate", "cv", "slo")
LABELS = {"rate": "request rate (req/s)", "cv": "burstiness (CV of gaps)", "slo": "SLO scale"}
STYLE = {  # system -> (colour, marker)
    "neustream": ("tab:red", "o"), "neustream-slack": ("tab:purple", "D"),
    "neustream-keep": ("tab:orange", "v"),
    "clockwork": ("tab:blue", "s"), "neustream-llm": ("tab:red", "o"),
    "neustream-mixed": ("tab:orange", "D"), "vllm-054": ("tab:green", "^"),
    "vllm": ("tab:blue", "s"),
}


def plot(table_csv: str | Path, workload: str, sweep: str, out_png: str | Path,
         device: str | None = None) -> None:
    """The ``sweep`` figure of ``workload`` (a label of the table; only ``device``'s runs when
    given), drawn for the workload's family."""
    if sweep not in SWEEPS:
        raise ValueError(f"sweep must be one of {', '.join(SWEEPS)}, got {sweep!r}")
    df = read_table(table_csv)
    df = df[(df.workload == workload) & (df.sweep == sweep)]
    if device is not None:
        df = df[df.device.astype(str) == device]
    where = f"workload {workload!r}{f' on device {device!r}' if device else ''}"
    if df.empty:
        raise ValueError(f"no rows for {where} and sweep {sweep!r} in {table_csv}")
    program = df.program.dropna().iloc[0] if "program" in df and df.program.notna().any() else workload
    family = family_of(program)
    draw = {"diffusion": _diffusion, "llm": _llm, "agent": _agent}[family]
    fig = draw(df, sweep, program)
    devices = ", ".join(sorted(df.device.astype(str).unique()))
    backends = ", ".join(sorted(df.backend.unique()))
    fig.suptitle(f"{workload}: {sweep} sweep ({_fixed_point(df, sweep)}; {backends}, {devices} "
                 f"tables)", fontsize=9)
    fig.tight_layout()
    _save(fig, out_png)


def read_table(table_csv: str | Path) -> pd.DataFrame:
    """The goodput table; a one-line ValueError naming the file when it is not one."""
    try:
        df = pd.read_csv(table_csv)
    except (OSError, ValueError) as e:
        raise ValueError(f"{table_csv}: not a readable goodput table ({e})") from None
    from neustream.analysis.goodput import COLUMNS

    missing = [c for c in COLUMNS if c not in df]
    if missing:
        raise ValueError(f"{table_csv}: not a goodput table, no {', '.join(missing)}")
    return df


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fixed_point(df: pd.DataFrame, sweep: str) -> str:
    others = [p for p in SWEEPS if p != sweep]
    return ", ".join(f"{p}={df[p].iloc[0]:g}" for p in others)


def _lines(mean: pd.DataFrame, sweep: str, panels) -> None:
    """One line per (backend, system) in every (axes, column) panel."""
    for (backend, system), g in mean.groupby(["backend", "system"]):
        colour, marker = STYLE.get(system, (None, "x"))
        ls = "--" if backend == "sim" else "-"
        for ax, col, scale in panels:
            ax.plot(g[sweep], scale * g[col], ls, marker=marker, color=colour,
                    label=f"{system} ({backend})")


def _two_panels(df: pd.DataFrame, sweep: str, goodput: str, line: str, style: str,
                label: str, cols: list[str]):
    """Goodput (left, with a reference ``line``) and attainment (right): figure, axes, means."""
    plt = _pyplot()
    mean = df.groupby(["backend", "system", sweep], as_index=False)[cols].mean()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ref = mean.groupby(sweep)[line].max()
    ax.plot(ref.index, ref.values, style, lw=1, label=label)
    _lines(mean, sweep, [(ax, goodput, 1), (ax2, "attainment", 100)])
    _axes(fig, [ax, ax2], sweep, attainment=ax2)
    return fig, ax, ax2, mean


def _diffusion(df: pd.DataFrame, sweep: str, program: str):
    """Goodput and attainment, with a bound dashed: the deadline-aware bound of the simulated
    runs (analysis/bound.py) where the table has it, else min(offered, capacity)."""
    deadlines = "slo_bound_rps" in df and df.slo_bound_rps.notna().any()
    line, label = (("slo_bound_rps", "bound: most on time, any schedule (LP)") if deadlines
                   else ("bound_rps", "bound: min(offered, capacity)"))
    fig, ax, ax2, mean = _two_panels(df, sweep, "goodput_rps", line, "k--", label,
                                     ["goodput_rps", line, "attainment"])
    if sweep == "rate" and mean[sweep].max() >= 8 * mean[sweep].min():
        ticks = sorted(mean[sweep].unique())
        for a in (ax, ax2):  # rate grids span both systems' knees
            a.set_xscale("log")
            a.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7, rotation=45)
            a.minorticks_off()
    ax.set_ylabel("goodput (req/s within SLO)")
    ax2.set_ylabel("SLO attainment (%)")
    ax.legend(fontsize=7)
    return fig


def _llm(df: pd.DataFrame, sweep: str, program: str):
    """Token goodput and request attainment (every token on time), offered tokens dotted."""
    df = df.assign(offered_tps=df.tokens_requested * df.offered_rps / df.n_requests)
    fig, ax, ax2, _ = _two_panels(df, sweep, "token_goodput_tps", "offered_tps", "k:",
                                  "offered tokens", ["token_goodput_tps", "attainment",
                                                     "token_attainment", "offered_tps"])
    ax.set_ylabel("goodput (tokens/s on time)")
    ax2.set_ylabel("requests with every token on time (%)")
    ax.legend(fontsize=6)
    return fig


def _agent(df: pd.DataFrame, sweep: str, program: str):
    """The artifact's Figure 17 row for one sweep, plus end to end: tokens on time per second
    in each LLM stage (one panel each, pipeline order) and requests through every stage in
    time per second."""
    from neustream.catalog.agent import get_agent_program

    plt = _pyplot()
    stages = [f"tps_{s.name}" for s in get_agent_program(program).llm_stages]
    stages = [c for c in stages if c in df and df[c].notna().any()]
    if not stages:
        raise ValueError(f"no per-stage columns (tps_<stage>) for {program} in the table")
    cols = stages + ["goodput_rps", "offered_rps"]
    mean = df.groupby(["backend", "system", sweep], as_index=False)[cols].mean()
    fig, axes = plt.subplots(1, len(stages) + 1, figsize=(3.1 * (len(stages) + 1), 3.2))
    _lines(mean, sweep, [(ax, c, 1) for ax, c in zip(axes, stages + ["goodput_rps"])])
    offered = mean.groupby(sweep)["offered_rps"].max()
    axes[-1].plot(offered.index, offered.values, "k:", lw=1, label="offered")
    for ax, c in zip(axes, stages + ["goodput_rps"]):
        ax.set_title(c.removeprefix("tps_") if c != "goodput_rps" else "end to end", fontsize=9)
    axes[0].set_ylabel("goodput (tokens/s on time)")
    axes[-1].set_ylabel("requests/s through every stage in time")
    _axes(fig, list(axes), sweep)
    axes[-1].legend(fontsize=6)
    return fig


def _axes(fig, axes, sweep: str, attainment=None) -> None:
    for ax in axes:
        ax.set_xlabel(LABELS[sweep])
        ax.set_ylim(bottom=0)
    if attainment is not None:
        attainment.set_ylim(0, 105)


def plot_batches(run_dirs: list[str | Path], out_png: str | Path, title: str = "") -> None:
    """Batch size over time, one panel per run, one line per module."""
    plt = _pyplot()
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
    plt = _pyplot()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)
