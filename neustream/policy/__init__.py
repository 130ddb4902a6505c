"""Scheduling policies: pure decisions shared by every engine (see base.py)."""

from __future__ import annotations

from neustream.policy.base import PIPELINE, Decision, Policy
from neustream.policy.clockwork import ClockworkPolicy
from neustream.policy.neustream import NeuStreamPolicy, SlackPolicy

POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (NeuStreamPolicy, SlackPolicy, ClockworkPolicy)
}


def make_policy(system: str, program, table, slo: float, step_delta: float = 0.95) -> Policy:
    """Build the policy named ``system``; one-line ValueError for bad input."""
    try:
        cls = POLICIES[system]
    except KeyError:
        raise ValueError(f"unknown system {system!r}; choose from {', '.join(POLICIES)}") from None
    if cls is ClockworkPolicy:
        return cls(program, table, slo)
    return cls(program, table, slo, step_delta=step_delta)


__all__ = ["PIPELINE", "POLICIES", "Decision", "Policy", "make_policy"]
