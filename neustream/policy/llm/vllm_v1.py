"""vLLM V1's default scheduler (vLLM 0.32), as the simulator models it.

NOTE: live runs of the system "vllm" use vLLM's own scheduler, unmodified; this policy is how
the simulator reproduces it. V1 has no phases: each step spends one token budget
(max_num_batched_tokens), first on the running requests in order (one token for a decode, the
rest of the prompt, possibly cut, for a prefill in progress), then on waiting requests in FCFS
order while max_num_seqs allows, the last one possibly chunked. Prefills and decodes therefore
share steps. Not modelled: prefix caching (off in every run), speculative decoding, the
long-prefill threshold (0, as configured), async scheduling (off). KV-cache admission and
recompute preemption are the engine's, as in vLLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from neustream.policy.llm.base import LlmDecision, LlmPolicy, Phase, remaining_prompt

if TYPE_CHECKING:
    from neustream.request import LlmRequest


class VllmV1Policy(LlmPolicy):
    name = "vllm"

    def decide(self, waiting: Sequence[LlmRequest], running: Sequence[LlmRequest],
               now_s: float) -> LlmDecision:
        budget = self.max_num_batched_tokens
        out: list[tuple[LlmRequest, int]] = []
        prefill = decode = False
        for r in running:
            if budget <= 0:
                break
            n = min(r.num_tokens - r.num_computed, budget)
            if r.num_generated and r.num_computed == r.num_tokens - 1:
                decode = True
            else:
                prefill = True
            out.append((r, n))
            budget -= n
        k = len(running)
        for r in waiting:
            if budget <= 0 or k >= self.max_num_seqs:
                break
            n = min(remaining_prompt(r), budget)
            out.append((r, n))
            budget -= n
            k += 1
            prefill = True
        if not out:
            return LlmDecision.idle()
        phase = Phase.MIXED if prefill and decode else Phase.PREFILL if prefill else Phase.DECODE
        return LlmDecision(phase, out)
