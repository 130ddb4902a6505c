"""NeuStream's co-located prefill/decode scheduling for LLMs (reference llm.md sections 3.3-3.4).

NOTE: every engine step is either prefill-only or decode-only; the choice is remade before each
step from the requests' per-token deadlines and the latency model. A waiting request is dropped
once even an isolated prefill could no longer make its next token's deadline, extended by a
credit for the slack it is expected to gain over its first ``pred_steps`` decode steps (each
allowed dslo x its isolated decode step, each taking about the last measured decode step). The
rest are ordered shortest prompt first. With nothing running, the longest such prefix that fits
``max_num_seqs`` and the token budget is prefilled. Otherwise the step prefills the largest prefix
m for which the predicted prefill of m prompts plus the decode step after it fits inside every
running request's slack to its next token and every chosen request's slack to its second token;
if no m fits, the step decodes. Running requests are never dropped or held back.

Departures from the artifact, all deliberate: drops also apply while nothing is running (the
artifact skipped the filter then; a hopeless prefill only wastes the device); the decode cost
is the fitted ``a(b) + slope x context`` (no A6000-specific +2/3/4 ms correction); the credit's
per-step allowance is the request's own dslo x isolated decode step instead of one constant
tuned to OPT-66B; the largest feasible m is found by a scan, not a binary search that assumes
monotonicity; a preempted request (back in the queue with tokens generated) is judged against its
next token's deadline and the recompute of its whole context; the credit uses the median of the
last 8 decode steps instead of the last one, so one slow step (a busy host) does not swing the
credit of every request by 30 x its excess and drop the whole queue.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import TYPE_CHECKING, Sequence

from neustream.policy.llm.base import LlmDecision, LlmPolicy, Phase, decode_all, remaining_prompt

if TYPE_CHECKING:
    from neustream.latency import LlmLatencyModel
    from neustream.request import LlmRequest


# Decode steps whose median stands for "the last decode step" (1 = the artifact's last step).
DECODE_WINDOW = 8


class NeuStreamLlmPolicy(LlmPolicy):
    name = "neustream-llm"

    def __init__(self, model: LlmLatencyModel, *, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 8192, pred_steps: int = 30) -> None:
        super().__init__(model, max_num_seqs=max_num_seqs,
                         max_num_batched_tokens=max_num_batched_tokens)
        if pred_steps < 0:
            raise ValueError(f"pred_steps must be >= 0, got {pred_steps}")
        self.pred_steps = pred_steps
        # Recent decode steps (seconds); their median is the "last decode step" of the credit.
        # Until one is measured: the isolated step (the artifact starts at its d0).
        self.recent_decode_s: deque[float] = deque(maxlen=DECODE_WINDOW)
        self.last_decode_s = model.decode_alone_s(0)

    def observe(self, phase: Phase, duration_s: float) -> None:
        if phase is Phase.DECODE:
            self.recent_decode_s.append(duration_s)
            self.last_decode_s = statistics.median(self.recent_decode_s)

    # -- slack ---------------------------------------------------------------------------

    def credit(self, r: LlmRequest) -> float:
        """Slack ``r`` is expected to gain over its next decode steps up to ``pred_steps``:
        each is allowed dslo x its isolated step and takes about the last decode step."""
        k = self.pred_steps - r.num_generated
        return k * (r.step0_s - self.last_decode_s) if k > 0 else 0.0

    def drop_test(self, r: LlmRequest, now_s: float) -> bool:
        """True when ``r`` cannot make its next token even with an isolated prefill now."""
        slack = r.deadline_of(r.num_generated + 1) - now_s + self.credit(r)
        return slack < self.model.prefill_alone_s(remaining_prompt(r))

    # -- decision ------------------------------------------------------------------------

    def decide(self, waiting: Sequence[LlmRequest], running: Sequence[LlmRequest],
               now_s: float) -> LlmDecision:
        if not waiting:
            return LlmDecision(Phase.DECODE, decode_all(running)) if running else LlmDecision.idle()
        alive, drops = [], []
        for r in waiting:
            (drops if self.drop_test(r, now_s) else alive).append(r)
        alive.sort(key=lambda r: (remaining_prompt(r), r.arrival_s, str(r.id)))
        if not alive:
            if running:
                return LlmDecision(Phase.DECODE, decode_all(running), drops, alive)
            return LlmDecision(Phase.IDLE, [], drops, alive)
        # Engine limits: sequences and the token budget (no chunking).
        room = self.max_num_seqs - len(running)
        budget = self.max_num_batched_tokens
        cands = []
        for r in alive[:max(room, 0)]:
            n = remaining_prompt(r)
            if n > budget:
                break
            cands.append((r, n))
            budget -= n
        if not running:
            if cands:
                return LlmDecision(Phase.PREFILL, cands, drops, alive)
            return LlmDecision(Phase.IDLE, [], drops, alive)
        m = self.largest_feasible(cands, running, now_s)
        if m == 0:
            return LlmDecision(Phase.DECODE, decode_all(running), drops, alive)
        return LlmDecision(Phase.PREFILL, cands[:m], drops, alive)

    def largest_feasible(self, cands: list[tuple[LlmRequest, int]], running: Sequence[LlmRequest],
                         now_s: float) -> int:
        """Largest m such that prefilling the first m candidates and then one decode step of
        everyone keeps each running request within its next token's deadline and each new one
        within its second token's (both credit-extended)."""
        model = self.model
        slack = min(r.deadline_of(r.num_generated + 1) - now_s + self.credit(r) for r in running)
        ctx = sum(r.num_tokens for r in running)
        b = len(running)
        tokens = sq = 0
        best = 0
        for m, (r, n) in enumerate(cands, start=1):
            tokens += n
            sq += n * n
            ctx += r.num_tokens + 1  # its context at the decode step after the prefill
            slack = min(slack, r.deadline_of(r.num_generated + 2) - now_s + self.credit(r))
            delay = model.prefill_s(tokens, sq) + model.decode_s(b + m, ctx)
            if slack >= delay:
                best = m
        return best
