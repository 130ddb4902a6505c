"""The paper's vLLM baseline: vLLM 0.5.4's default scheduler (reference llm.md section 4).

NOTE: prefill first, FCFS, no mixing, no drops, no SLO awareness. If waiting prompts fit
(max_num_seqs, the token budget, and, checked by the engine, the KV cache), the step is
prefill-only over the longest FCFS prefix that fits; otherwise every running request decodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from neustream.policy.llm.base import LlmDecision, LlmPolicy, Phase, decode_all

if TYPE_CHECKING:
    from neustream.request import LlmRequest


class Vllm054Policy(LlmPolicy):
    name = "vllm-054"

    def decide(self, waiting: Sequence[LlmRequest], running: Sequence[LlmRequest],
               now_s: float) -> LlmDecision:
        if waiting:
            prefill = self.fcfs_prefill(waiting, len(running))
            if prefill:
                return LlmDecision(Phase.PREFILL, prefill)
        if running:
            return LlmDecision(Phase.DECODE, decode_all(running))
        return LlmDecision.idle()
