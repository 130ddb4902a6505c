"""An SLO-aware mixed-step LLM policy (beyond the paper): decodes and prefill chunks in one step,
the step chosen by the requests' own deadlines.

NOTE: vLLM V1 mixes every running decode with as much prefill as the token budget holds;
NeuStream (neustream.py) runs prefill-only or decode-only steps sized by the deadlines. This
policy mixes, and uses the deadlines to choose the step. Before every step:

- drops: NeuStream's test, unchanged (``NeuStreamLlmPolicy.drop_test``): a waiting request is
  given up once even an isolated prefill now would miss its next token, extended by the slack
  credit of its first ``pred_steps`` decode steps, with a *predicted* decode step (the model's
  step for the decodes now running, times the host correction), never a remembered one;
- order: prompts already part-computed first, then the rest by least slack to the first token
  (its deadline - now - the isolated prefill of what is left); prompts that can no longer make
  their first token on time go after those that can, least late first;
- admission: new prompts are taken in that order while the decode-only step, with them added,
  stays within ``1 - rho`` of every running request's per-token allowance, ``rho`` being the
  share of the last ``WINDOW_STEPS`` isolated decode steps' time that went to prefill work. That
  is the load the decodes can carry and still keep pace (their steps take ``floor`` and prefill
  adds ``rho`` of the time: on time on average while ``floor <= (1 - rho) x allowance``). The
  rest wait, and NeuStream's test drops them when they can no longer make it: this is how an
  overloaded engine sheds load instead of making every request late;
- the step, one of: (a) every decode with every admitted prompt (the token budget cuts the
  last), as V1 would; (b) every decode with the *SLO-sized chunk*: the most prefill tokens,
  whole prompts in order and the last one possibly cut, whose predicted mixed step
  (``LlmLatencyModel.mixed_s``) keeps every decode that can still make its next token on time;
  empty, a decode-only step, only when (a) would leave some decode unable to catch up before it
  finishes; (c) a prefill-only step of the first k admitted prompts, decodes held back one step,
  when each decode still makes its next token after it and a decode step (the fastest first
  token, NeuStream's kind of step). The policy runs the one that loses the fewest predicted
  tokens (ties: the most prefill). A request whose next token comes ``late`` seconds late
  catches up by ``gain`` a step (its allowance less the decode step), losing about
  late / gain tokens, or all it has left (``output_tokens`` - generated) when it cannot catch up
  before it finishes (``tokens_lost``). A decode counts at most one token while it can catch up
  (what putting the prefill off one step would save it: the prefill has to run while it runs),
  and, when it is behind already, only what the step adds to a decode-only step; a prompt the
  step finishes counts its first token's lateness; a prompt left waiting (or cut) its finish
  when the queue ahead of it runs in one more step, or all its tokens when it would be dropped
  before the next step.

Why not always the SLO-sized chunk (Sarathi-Serve's stall-free batching with each request's own
deadline): measured on the H100/H200 OPT tables it loses tokens at load. A running request
often has no slack left (it has just caught up, or its first token came late), so the chunk
shrinks to nothing; the waiting prompts' first tokens slip by whole steps, and a request whose
first token is late by d loses about d / gain of its next tokens while catching up, more than
the decodes lose when the prefill runs at once (a prompt of 150 tokens adds about 5 ms to a
17 ms OPT-13B step). Where prefill is long against the outputs (a step of the whole prompt
would make decodes late past what they can make up before they finish), (b) and decode-only
steps win, and the count picks them.

Predicted steps are the latency model's times a host correction: the median of measured /
predicted over the last 8 steps of any kind (exactly 1 in the simulator, whose steps are the
model's).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from neustream.policy.llm.base import LlmDecision, Phase, remaining_prompt
from neustream.policy.llm.neustream import NeuStreamLlmPolicy

if TYPE_CHECKING:
    from neustream.latency import LlmLatencyModel
    from neustream.request import LlmRequest

# Prefill load (rho) is measured over this many isolated decode steps of time.
WINDOW_STEPS = 100

Chunks = list[tuple["LlmRequest", int]]


def is_decoding(r: LlmRequest) -> bool:
    """A running request whose next step is a decode (all but its newest token cached)."""
    return r.num_generated > 0 and r.num_computed == r.num_tokens - 1


def chunk_terms(r: LlmRequest, n: int) -> tuple[int, int]:
    """(tokens, squared-token term) of a prefill chunk of ``n`` tokens after r's cached ones."""
    p = r.num_computed
    return n, (p + n) ** 2 - p * p


class MixedPolicy(NeuStreamLlmPolicy):
    name = "neustream-mixed"

    def __init__(self, model: LlmLatencyModel, *, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 8192, pred_steps: int = 30) -> None:
        super().__init__(model, max_num_seqs=max_num_seqs,
                         max_num_batched_tokens=max_num_batched_tokens, pred_steps=pred_steps)
        self.prefill_work: deque[tuple[float, float]] = deque()  # (decided at, prefill seconds)

    def observe(self, phase: Phase, duration_s: float) -> None:
        if phase is not Phase.IDLE and self._predicted_s > 0:
            self.recent_ratios.append(duration_s / self._predicted_s)
            self.correction = statistics.median(self.recent_ratios)

    # -- predictions ---------------------------------------------------------------------

    def step_s(self, chunks: Chunks, batch: int, ctx: int) -> float:
        """Predicted seconds of a step of ``batch`` decodes over ``ctx`` context tokens and
        the prefill ``chunks`` (request, tokens after its cached ones)."""
        tokens = sq = 0
        for r, n in chunks:
            t, s = chunk_terms(r, n)
            tokens += t
            sq += s
        return self.correction * self.model.mixed_s(tokens, sq, batch, ctx)

    def first_slack(self, r: LlmRequest, now_s: float) -> float:
        """Time to spare before r's next token after an isolated prefill of what is left."""
        return (r.deadline_of(r.num_generated + 1) - now_s
                - self.correction * self.model.prefill_alone_s(remaining_prompt(r)))

    def prefill_load(self, now_s: float) -> float:
        """rho: the share of the recent window's time the decided steps spent on prefill."""
        window = WINDOW_STEPS * self.correction * self.model.decode_alone_s(0)
        while self.prefill_work and self.prefill_work[0][0] < now_s - window:
            self.prefill_work.popleft()
        return min(sum(s for _, s in self.prefill_work) / window, 0.9)

    # -- decision ------------------------------------------------------------------------

    def decide(self, waiting: Sequence[LlmRequest], running: Sequence[LlmRequest],
               now_s: float) -> LlmDecision:
        self._predicted_s = 0.0
        decoding = [r for r in running if is_decoding(r)]
        started = [r for r in running if not is_decoding(r)]  # prompts part-computed
        step = self.decode_step_s(decoding)
        alive, drops = [], []
        for r in waiting:
            (drops if self.drop_test(r, now_s, step) else alive).append(r)

        def order(r: LlmRequest):
            s = self.first_slack(r, now_s)
            return (s < 0, abs(s), r.arrival_s, str(r.id))

        started.sort(key=order)
        alive.sort(key=order)
        b = len(decoding)
        ctx = sum(r.num_tokens for r in decoding)
        floor = self.step_s([], b, ctx)
        full = self.fit_budget(started, alive, decoding, len(running))
        full = self.admissible(full, len(started), decoding, now_s)
        chunks, hold = self.choose(full, decoding, now_s, b, ctx, floor)
        if not chunks and not decoding:
            return LlmDecision(Phase.IDLE, [], drops, alive)
        if hold:
            t = self.step_s(chunks, 0, 0)
            self.prefill_work.append((now_s, t))
            self._predicted_s = t / self.correction
            return LlmDecision(Phase.PREFILL, chunks, drops, alive)
        t = self.step_s(chunks, b, ctx)
        if chunks:
            self.prefill_work.append((now_s, t - floor if decoding else t))
        self._predicted_s = t / self.correction
        phase = Phase.MIXED if chunks and decoding else Phase.PREFILL if chunks else Phase.DECODE
        return LlmDecision(phase, [(r, 1) for r in decoding] + chunks, drops, alive)

    def fit_budget(self, started: list[LlmRequest], waiting: list[LlmRequest],
                   decoding: Sequence[LlmRequest], n_running: int) -> Chunks:
        """Part-computed prompts, then waiting ones, with what is left of each prompt, within
        the token budget (a decode takes one token; the last prompt may be cut) and
        ``max_num_seqs`` (only a waiting prompt needs a new sequence)."""
        budget = self.max_num_batched_tokens - len(decoding)
        seqs = self.max_num_seqs - n_running
        out = []
        for k, r in enumerate(started + waiting):
            new = k >= len(started)
            if budget <= 0 or (new and seqs <= 0):
                break
            n = min(remaining_prompt(r), budget)
            out.append((r, n))
            budget -= n
            seqs -= new
        return out

    def admissible(self, full: Chunks, n_started: int, decoding: Sequence[LlmRequest],
                   now_s: float) -> Chunks:
        """The prefix of ``full`` (its first ``n_started`` prompts part-computed, the rest
        waiting) whose waiting prompts keep the decode-only step, once they decode too, within
        ``1 - rho`` of every running request's per-token allowance. With nothing decoding the
        first prompt is always taken: an idle engine with a queue must run something (the
        simulator would stall, and rho only falls as steps run)."""
        def allowance(r: LlmRequest) -> float:
            g = max(r.num_generated, 1)
            return r.deadline_of(g + 1) - r.deadline_of(g)

        rho = self.prefill_load(now_s)
        a = min((allowance(r) for r in decoding), default=math.inf)
        b = len(decoding)
        ctx = sum(r.num_tokens for r in decoding)
        out = []
        for k, (r, n) in enumerate(full):
            if k >= n_started:  # not admitted yet
                a = min(a, allowance(r))
                b += 1
                ctx += r.num_tokens + 1
                idle = not out and not decoding  # an idle engine always takes its first
                if not idle and self.correction * self.model.decode_s(b, ctx) > (1 - rho) * a:
                    break
            out.append((r, n))
        return out

    def slo_chunk(self, full: Chunks, b: int, ctx: int, cap: float) -> Chunks:
        """The most prefill of ``full``, in order and the last prompt possibly cut, whose mixed
        step with the ``b`` decodes takes at most ``cap`` seconds."""
        best: Chunks = []
        for k, (r, n) in enumerate(full):
            lo, hi = 0, n  # the largest cut of r that fits (the step grows with it)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.step_s(full[:k] + [(r, mid)], b, ctx) <= cap:
                    lo = mid
                else:
                    hi = mid - 1
            if lo == 0:
                break
            best = full[:k] + [(r, lo)]
            if lo < n:
                break
        return best

    def choose(self, full: Chunks, decoding: Sequence[LlmRequest], now_s: float, b: int,
               ctx: int, floor: float) -> tuple[Chunks, bool]:
        """The step that loses the fewest predicted tokens among (a), (b), (c) of the module
        docstring: its prefill chunks and whether the decodes are held back."""
        if not full:
            return [], False
        slack = [r.deadline_of(r.num_generated + 1) - now_s for r in decoding]
        gain = [self.gain(r, floor) for r in decoding]
        left = [max(r.output_tokens - r.num_generated, 1) for r in decoding]

        def decode_cost(end: float) -> tuple[float, bool]:
            """Tokens the decodes lose to a step ending at ``end``, and whether one of them
            could never catch up before it finishes."""
            cost, lost = 0.0, False
            for s, g, m in zip(slack, gain, left):
                if s >= floor:  # on time if the step only decoded
                    c = tokens_lost(end - s, g, m, one_step=True)
                    lost |= c >= m and end > s
                elif g > 0:  # behind: only what the prefill adds to its catching up
                    c = tokens_lost(end - floor, g, m, one_step=True)
                else:
                    c = 0.0  # behind and never catching up, whatever runs
                cost += c
            return cost, lost

        options: list[tuple[Chunks, bool]] = [(full, False)]
        if decoding:
            on_time = [s for s in slack if s >= floor]
            cap = min(on_time, default=math.inf)
            fit = self.slo_chunk(full, b, ctx, cap) if cap < math.inf else []
            if fit or decode_cost(self.step_s(full, b, ctx))[1]:
                options.append((fit, False))  # empty: a decode-only step spares the decodes
            least = min(slack)
            for k in range(1, len(full) + 1):
                if self.step_s(full[:k], 0, 0) + floor > least:
                    break
                options.append((full[:k], True))
        due = [r.deadline_of(r.num_generated + 1) - now_s for r, _ in full]
        step = self.decode_step_s(decoding)
        margin = [d + self.credit(r, step) - self.correction
                  * self.model.prefill_alone_s(remaining_prompt(r)) for d, (r, _) in zip(due, full)]
        owner_gain = [self.gain(r, floor) for r, _ in full]
        owner_left = [max(r.output_tokens - r.num_generated, 1) for r, _ in full]
        best, best_key = options[0], None
        for chunks, hold in options:
            t = self.step_s(chunks, 0, 0) if hold else self.step_s(chunks, b, ctx)
            cost = decode_cost(t + floor if hold else t)[0]
            tokens = sq = 0  # what is left of the queue after this step, in order
            for j, (r, n) in enumerate(full):
                done = chunks[j][1] if j < len(chunks) else 0
                if done == n:
                    cost += tokens_lost(t - due[j], owner_gain[j], owner_left[j])
                    continue
                cached = r.num_computed + done
                tokens += n - done
                sq += (r.num_computed + n) ** 2 - cached * cached
                if done == 0 and margin[j] < t:  # left waiting, it would be dropped
                    cost += owner_left[j]
                    continue
                finish = t + self.correction * self.model.mixed_s(tokens, sq, b, ctx)
                cost += tokens_lost(finish - due[j], owner_gain[j], owner_left[j])
            key = (cost, -sum(n for _, n in chunks))
            if best_key is None or key < best_key:
                best, best_key = (chunks, hold), key
        return best

    def gain(self, r: LlmRequest, floor: float) -> float:
        """What a decode step of ``floor`` seconds gives back to r: its next token's allowance
        less the step (0 when the step takes all of it)."""
        g = r.num_generated
        return max(r.deadline_of(g + 2) - r.deadline_of(g + 1) - floor, 0.0)


def tokens_lost(late: float, gain: float, left: int, one_step: bool = False) -> float:
    """Tokens a request with ``left`` tokens to go loses when its next token is ``late``
    seconds late: about late / gain while it catches up at ``gain`` per step, all of them when
    it cannot catch up before it finishes. ``one_step``: when it can, count at most one token,
    what putting the prefill off one step would save it (it runs while the request runs)."""
    if late <= 0:
        return 0.0
    if gain <= 0 or late > gain * left:
        return float(left)
    return min(late / gain, 1.0) if one_step else 1.0 + late / gain
