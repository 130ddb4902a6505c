"""What can be served, as data: every workload of the three families, by name.

``diffusion`` programs of stream modules (diffusion.PROGRAMS), ``llm`` models served by prefill
and decode steps (llm.LLM_PROGRAMS; also the models of agent stages) and ``agent`` pipelines of
LLM and code-execution stages (agent.AGENT_PROGRAMS). A name belongs to one family only.
"""

from __future__ import annotations

from neustream.catalog.agent import AGENT_PROGRAMS
from neustream.catalog.diffusion import PROGRAMS
from neustream.catalog.llm import LLM_PROGRAMS

FAMILIES = {"diffusion": PROGRAMS, "llm": LLM_PROGRAMS, "agent": AGENT_PROGRAMS}


def family_of(name: str) -> str:
    """The family of workload ``name``; a one-line ValueError naming the choices otherwise."""
    for family, programs in FAMILIES.items():
        if name in programs:
            return family
    known = ", ".join(n for programs in FAMILIES.values() for n in programs)
    raise ValueError(f"unknown workload {name!r}; choose from {known}")


def get_workload(name: str):
    """(family, program) of workload ``name``."""
    family = family_of(name)
    return family, FAMILIES[family][name]
