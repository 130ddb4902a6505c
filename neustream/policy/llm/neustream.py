"""NeuStream's co-located prefill/decode scheduling for LLMs (reference llm.md sections 3.3-3.4).

NOTE: every engine step is either prefill-only or decode-only; the choice is remade before each
step from the requests' per-token deadlines and the latency model. A waiting request is dropped
once even an isolated prefill could no longer make its next token's deadline, extended by a
credit for the slack it is expected to gain over its first ``pred_steps`` decode steps (each
allowed dslo x its isolated decode step, each taking about one decode step of the batch now
running). The rest are ordered shortest prompt first. With nothing running, the longest such
prefix that fits ``max_num_seqs`` and the token budget is prefilled. Otherwise the step prefills
the largest prefix m for which the predicted prefill of m prompts plus the decode step after it
fits inside every running request's slack to its next token and every chosen request's slack to
its second token; if no m fits, the step decodes. Running requests are never dropped or held back.

Departures from the artifact, all deliberate: drops also apply while nothing is running (the
artifact skipped the filter then; a hopeless prefill only wastes the device); the decode cost
is the fitted ``a(b) + slope x context`` (no A6000-specific +2/3/4 ms correction); the credit's
per-step allowance is the request's own dslo x isolated decode step instead of one constant
tuned to OPT-66B; the largest feasible m is found by a scan, not a binary search that assumes
monotonicity; a preempted request (back in the queue with tokens generated) is judged against its
next token's deadline and the recompute of its whole context.

The credit's decode step is predicted, never remembered. The artifact used the last measured
decode step, which only a decode step refreshes: after a large batch, or one slow step on a busy
host, every arrival on an idle server was dropped and nothing ever ran to correct it. Here it is
the model's step for the batch now running (the isolated step when nothing runs), times a
correction for the host: the median of measured / predicted over the last 8 decode steps (1 until
one is measured; exactly 1 in the simulator, whose steps are the model's).
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import TYPE_CHECKING, Sequence

from neustream.policy.llm.base import LlmDecision, LlmPolicy, Phase, decode_all, remaining_prompt

if TYPE_CHECKING:
    from neustream.latency import LlmLatencyModel
    from neustream.request import LlmRequest


# Decode steps whose measured / predicted ratios' median corrects the model for this host.
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
        # measured / predicted of recent decode steps; their median corrects the model.
        self.recent_ratios: deque[float] = deque(maxlen=DECODE_WINDOW)
        self.correction = 1.0
        self._predicted_s = 0.0  # the model's time for the decode step last decided

    def observe(self, phase: Phase, duration_s: float) -> None:
        if phase is Phase.DECODE and self._predicted_s > 0:
            self.recent_ratios.append(duration_s / self._predicted_s)
            self.correction = statistics.median(self.recent_ratios)

    # -- slack ---------------------------------------------------------------------------

    def decode_step_s(self, running: Sequence[LlmRequest]) -> float:
        """Expected time of the next decode steps: the model's step for ``running`` times the
        host correction; the isolated step when nothing runs."""
        if not running:
            return self.model.decode_alone_s(0)
        ctx = sum(r.num_tokens for r in running)
        return self.correction * self.model.decode_s(len(running), ctx)

    def credit(self, r: LlmRequest, step_s: float) -> float:
        """Slack ``r`` is expected to gain over its next decode steps up to ``pred_steps``:
        each is allowed dslo x its isolated step and takes about ``step_s``."""
        k = self.pred_steps - r.num_generated
        return k * (r.step0_s - step_s) if k > 0 else 0.0

    def drop_test(self, r: LlmRequest, now_s: float, step_s: float) -> bool:
        """True when ``r`` cannot make its next token even with an isolated prefill now."""
        slack = r.deadline_of(r.num_generated + 1) - now_s + self.credit(r, step_s)
        return slack < self.model.prefill_alone_s(remaining_prompt(r))

    # -- decision ------------------------------------------------------------------------

    def decide(self, waiting: Sequence[LlmRequest], running: Sequence[LlmRequest],
               now_s: float) -> LlmDecision:
        self._predicted_s = 0.0
        if not waiting:
            return self.decode(running) if running else LlmDecision.idle()
        step_s = self.decode_step_s(running)
        alive, drops = [], []
        for r in waiting:
            (drops if self.drop_test(r, now_s, step_s) else alive).append(r)
        alive.sort(key=lambda r: (remaining_prompt(r), r.arrival_s, str(r.id)))
        if not alive:
            if running:
                return self.decode(running, drops, alive)
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
        m = self.largest_feasible(cands, running, now_s, step_s)
        if m == 0:
            return self.decode(running, drops, alive)
        return LlmDecision(Phase.PREFILL, cands[:m], drops, alive)

    def decode(self, running: Sequence[LlmRequest], drops: list[LlmRequest] | None = None,
               alive: list[LlmRequest] | None = None) -> LlmDecision:
        """A decode step of every running request; its model time is kept for ``observe``."""
        self._predicted_s = self.model.decode_s(len(running), sum(r.num_tokens for r in running))
        return LlmDecision(Phase.DECODE, decode_all(running), drops or [], alive)

    def largest_feasible(self, cands: list[tuple[LlmRequest, int]], running: Sequence[LlmRequest],
                         now_s: float, step_s: float | None = None) -> int:
        """Largest m such that prefilling the first m candidates and then one decode step of
        everyone keeps each running request within its next token's deadline and each new one
        within its second token's (both credit-extended, decode steps taking ``step_s``)."""
        model = self.model
        if step_s is None:
            step_s = self.decode_step_s(running)
        slack = min(r.deadline_of(r.num_generated + 1) - now_s + self.credit(r, step_s)
                    for r in running)
        ctx = sum(r.num_tokens for r in running)
        b = len(running)
        tokens = sq = 0
        best = 0
        for m, (r, n) in enumerate(cands, start=1):
            tokens += n
            sq += n * n
            ctx += r.num_tokens + 1  # its context at the decode step after the prefill
            slack = min(slack, r.deadline_of(r.num_generated + 2) - now_s + self.credit(r, step_s))
            delay = model.prefill_s(tokens, sq) + model.decode_s(b + m, ctx)
            if slack >= delay:
                best = m
        return best
