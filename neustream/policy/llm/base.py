"""The LLM scheduling-policy contract, shared by the LLM simulator and the vLLM plug-in.

An LLM engine runs one *step* at a time over the requests it holds: ``waiting`` ones (not yet
prefilled, or preempted and back to be recomputed) and ``running`` ones (their KV is cached;
each decode step gives each one token). Before every step the engine calls
``LlmPolicy.decide(waiting, running, now_s)``; the policy, pure like the diffusion policies (no
clock, threads, I/O or random numbers), returns an ``LlmDecision``. The engine applies it with
its own mechanics, the way vLLM's scheduler does: drops first, then it admits the chosen
waiting requests in order while the KV cache, ``max_num_seqs`` and the token budget allow
(possibly fewer than asked), and runs the step. After the step it calls
``observe(phase, duration_s)`` so a policy can learn from measured step times.

Requests are ``neustream.request.LlmRequest`` objects; the policy reads ``prompt_tokens``,
``num_generated``, ``num_computed``, the deadlines (``deadline_of``) and the SLO factors, and never
changes them.
The engine sets the deadlines: from the latency model's isolated times in the simulator; in the
vLLM plug-in behind the OpenAI server also from the server's own overheads per request and per
step, measured on the idle server (backends/vllm/scheduler.py), so that an isolated request
meets its SLO there too. The policy's predictions of step times use the latency model alone
(NeuStream's corrected for the host by measured decode steps).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from neustream.latency import LlmLatencyModel
    from neustream.request import LlmRequest


class Phase(IntEnum):
    """What one engine step runs."""

    IDLE = 0  # nothing
    PREFILL = 1  # prompts only (whole prompts; NeuStream and vLLM 0.5.4 never chunk)
    DECODE = 2  # one token for each running request
    MIXED = 3  # vLLM V1: decodes and prefill chunks under one token budget


@dataclass
class LlmDecision:
    phase: Phase
    # (request, tokens to compute this step), in the order the engine should admit them:
    # running requests first, then waiting ones. PREFILL: waiting requests with their whole
    # remaining prompt; DECODE: every running request with 1; MIXED: both, chunks allowed.
    scheduled: list[tuple[LlmRequest, int]] = field(default_factory=list)
    # Waiting requests to give up before the step; disjoint from ``scheduled``.
    drops: list[LlmRequest] = field(default_factory=list)
    # New order of the waiting queue after the step (None: keep the engine's order).
    waiting_order: list[LlmRequest] | None = None

    @classmethod
    def idle(cls, drops: list[LlmRequest] | None = None) -> LlmDecision:
        return cls(Phase.IDLE, [], drops or [])


def remaining_prompt(r: LlmRequest) -> int:
    """Tokens a waiting request must compute before its next token: its prompt plus what it
    generated before a preemption, less what is still cached."""
    return r.num_tokens - r.num_computed


def decode_all(running: Sequence[LlmRequest]) -> list[tuple[LlmRequest, int]]:
    return [(r, 1) for r in running]


class LlmPolicy(ABC):
    """Decides, before every engine step, whether it prefills (which requests), decodes or
    mixes, and which waiting requests to drop."""

    name: str

    def __init__(self, model: LlmLatencyModel, *, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 8192) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError(f"max_num_seqs and max_num_batched_tokens must be >= 1, got "
                             f"{max_num_seqs}, {max_num_batched_tokens}")
        self.model = model
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens

    @abstractmethod
    def decide(self, waiting: Sequence[LlmRequest], running: Sequence[LlmRequest],
               now_s: float) -> LlmDecision:
        """Called by the engine before each step. ``waiting`` is in the engine's queue order
        (arrival order, preempted requests in front), ``running`` in admission order."""

    def observe(self, phase: Phase, duration_s: float) -> None:
        """Called by the engine after each step with what it ran and how long it took."""

    def fcfs_prefill(self, waiting: Sequence[LlmRequest], num_running: int) -> list[tuple[LlmRequest, int]]:
        """Waiting requests in queue order while they fit max_num_seqs and the token budget
        (whole prompts, no chunking: vLLM 0.5.4's prefill admission)."""
        out, budget = [], self.max_num_batched_tokens
        for r in waiting:
            n = remaining_prompt(r)
            if num_running + len(out) >= self.max_num_seqs or n > budget:
                break
            out.append((r, n))
            budget -= n
        return out
