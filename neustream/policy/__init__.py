"""Scheduling policies: pure decisions shared by every engine (see base.py)."""

from __future__ import annotations

from neustream.policy.base import PIPELINE, Decision, Policy
from neustream.policy.clockwork import ClockworkPolicy
from neustream.policy.neustream import NeuStreamPolicy, SlackPolicy
from neustream.policy.llm_base import LlmDecision, LlmPolicy, Phase
from neustream.policy.llm_neustream import NeuStreamLlmPolicy
from neustream.policy.llm_vllm import VllmV1Policy
from neustream.policy.llm_vllm054 import Vllm054Policy

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


# LLM policies (policy/llm_*.py) decide engine steps over waiting and running requests, a
# different contract (llm_base.py) from the module-queue policies above, so they have their own
# registry and builder; system names are unique across both.
LLM_POLICIES: dict[str, type[LlmPolicy]] = {
    p.name: p for p in (NeuStreamLlmPolicy, Vllm054Policy, VllmV1Policy)
}


def make_llm_policy(system: str, model, *, max_num_seqs: int = 256,
                    max_num_batched_tokens: int = 8192, **options) -> LlmPolicy:
    """Build the LLM policy named ``system`` (options: NeuStream's ``pred_steps``)."""
    try:
        cls = LLM_POLICIES[system]
    except KeyError:
        raise ValueError(
            f"unknown LLM system {system!r}; choose from {', '.join(LLM_POLICIES)}") from None
    if cls is not NeuStreamLlmPolicy:
        options.pop("pred_steps", None)
    return cls(model, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
               **options)


__all__ = ["LLM_POLICIES", "PIPELINE", "POLICIES", "Decision", "LlmDecision", "LlmPolicy",
           "Phase", "Policy", "make_llm_policy", "make_policy"]
