"""Scheduling policies: pure decisions shared by every engine, one registry for all families.

Diffusion policies decide module batches over module queues (base.py); LLM policies decide
engine steps over waiting and running requests (llm/base.py); a multi-agent pipeline runs an
LLM policy in each of its engines. A system name belongs to one family.
"""

from __future__ import annotations

from neustream.catalog.registry import lookup
from neustream.policy.base import WHOLE_REQUESTS, Decision, Policy
from neustream.policy.clockwork import ClockworkPolicy
from neustream.policy.keep import KeepPolicy
from neustream.policy.llm.base import LlmDecision, LlmPolicy, Phase
from neustream.policy.llm.mixed import MixedPolicy
from neustream.policy.llm.neustream import NeuStreamLlmPolicy
from neustream.policy.llm.vllm054 import Vllm054Policy
from neustream.policy.llm.vllm_v1 import VllmV1Policy
from neustream.policy.neustream import NeuStreamPolicy, SlackPolicy

# family -> system name -> policy class
POLICIES: dict[str, dict[str, type]] = {
    "diffusion": {p.name: p for p in (NeuStreamPolicy, SlackPolicy, KeepPolicy, ClockworkPolicy)},
    "llm": {p.name: p for p in (NeuStreamLlmPolicy, MixedPolicy, Vllm054Policy, VllmV1Policy)},
}
POLICIES["agent"] = POLICIES["llm"]


def policy_class(family: str, system: str) -> type:
    """The class of ``system`` in ``family``; a one-line ValueError naming the choices."""
    return lookup(POLICIES[family], system, "system" if family == "diffusion" else "LLM system")


def make_policy(system: str, program, table, slo: float, step_delta: float = 0.95) -> Policy:
    """Build the diffusion policy named ``system``; one-line ValueError for bad input."""
    cls = policy_class("diffusion", system)
    if cls is ClockworkPolicy:
        return cls(program, table, slo)
    return cls(program, table, slo, step_delta=step_delta)


def make_llm_policy(system: str, model, *, max_num_seqs: int = 256,
                    max_num_batched_tokens: int = 8192, **options) -> LlmPolicy:
    """Build the LLM policy named ``system`` (options: NeuStream's ``pred_steps``, which the
    mixed policy shares)."""
    cls = policy_class("llm", system)
    if not issubclass(cls, NeuStreamLlmPolicy):
        options.pop("pred_steps", None)
    return cls(model, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
               **options)


__all__ = ["POLICIES", "WHOLE_REQUESTS", "Decision", "LlmDecision", "LlmPolicy", "Phase",
           "Policy", "make_llm_policy", "make_policy", "policy_class"]
