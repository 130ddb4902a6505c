"""One LLM engine's state, as vLLM keeps it: waiting and running requests, KV cache, step log.

NOTE: the engine applies a policy's decision (policy/llm/base.py) with vLLM's mechanics: drops
first, then the scheduled running requests get KV blocks in order (when the cache is full the
last running request is preempted, its cache freed and its tokens to be recomputed, as vLLM's
recompute preemption does), then the scheduled waiting requests are admitted in order while the
cache holds their whole prompt, ``max_num_seqs`` allows and no request was preempted in this
step. A prefill decision of which nothing could be admitted becomes a decode step when requests
are running (vLLM 0.5.4 does the same). After a step each request that caught up with its tokens
emits one token, stamped with the step's end; one that has all its output tokens finishes.
``step_cost`` is what the latency model says a step of given entries takes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from neustream.engine.events import StallError
from neustream.policy.llm.base import Phase, decode_all
from neustream.request import Status

if TYPE_CHECKING:
    from neustream.latency import LlmLatencyModel
    from neustream.policy.llm.base import LlmDecision, LlmPolicy
    from neustream.request import LlmRequest


class KvCache:
    """KV-cache blocks held per request; ``capacity_tokens`` None means unlimited."""

    def __init__(self, capacity_tokens: int | None, block_size: int) -> None:
        self.block_size = block_size
        self.total = None if capacity_tokens is None else capacity_tokens // block_size
        self.used = 0
        self.held: dict[int, int] = {}

    def grow(self, r: LlmRequest, tokens: int) -> bool:
        """Hold blocks for ``tokens`` tokens of ``r``; False (nothing held) if they do not fit."""
        need = math.ceil(tokens / self.block_size) - self.held.get(id(r), 0)
        if need <= 0:
            return True
        if self.total is not None and self.used + need > self.total:
            return False
        self.held[id(r)] = self.held.get(id(r), 0) + need
        self.used += need
        return True

    def free(self, r: LlmRequest) -> None:
        self.used -= self.held.pop(id(r), 0)


def is_decode(r: LlmRequest, n: int) -> bool:
    """A one-token step of a request that has all but its newest token cached."""
    return n == 1 and r.num_generated > 0 and r.num_computed == r.num_tokens - 1


def step_cost(model: LlmLatencyModel, entries: list[tuple[LlmRequest, int]]) -> float:
    """Seconds of one step computing ``entries`` (request, tokens)."""
    tokens = sq = batch = ctx = 0
    for r, n in entries:
        if is_decode(r, n):
            batch += 1
            ctx += r.num_tokens
        else:  # a prefill chunk of n tokens after the p already cached
            p = r.num_computed
            tokens += n
            sq += (p + n) ** 2 - p * p
    return model.mixed_s(tokens, sq, batch, ctx)


class EngineState:
    """Requests, queues, KV cache and the step log of one simulated LLM engine."""

    def __init__(self, policy: LlmPolicy, requests: list[LlmRequest], *,
                 kv_capacity_tokens: int | None = None, block_size: int = 16) -> None:
        self.policy = policy
        self.requests = requests
        self.waiting: list[LlmRequest] = []  # queue order: arrival, preempted ones in front
        self.running: list[LlmRequest] = []  # admission order
        self.kv = KvCache(kv_capacity_tokens, block_size)
        self.batches: list[dict] = []
        self.n_done = 0
        self.n_ok = 0
        self.n_preemptions = 0

    def arrive(self, r: LlmRequest, now_s: float) -> None:
        self.waiting.append(r)

    def _preempt(self, r: LlmRequest) -> None:
        self.running.remove(r)
        self.kv.free(r)
        r.num_computed = 0
        r.num_preemptions += 1
        r.status = Status.QUEUED
        self.waiting.insert(0, r)
        self.n_preemptions += 1

    def apply(self, d: LlmDecision, now_s: float) -> tuple[Phase, list[tuple[LlmRequest, int]]]:
        """Apply a decision: drops, queue order, KV admission. Returns what the step runs."""
        for r in d.drops:
            self.waiting.remove(r)
            r.drop(now_s)
            self.n_done += 1
        if d.waiting_order is not None:
            order = [r for r in d.waiting_order if r.status is Status.QUEUED]
            listed = set(map(id, order))
            self.waiting = order + [r for r in self.waiting if id(r) not in listed]
        entries = self._admit(d.scheduled)
        phase = d.phase
        if not entries and d.phase is Phase.PREFILL and self.running:
            entries, phase = self._admit(decode_all(self.running)), Phase.DECODE
        if entries and phase is not Phase.MIXED:
            kinds = {is_decode(r, n) for r, n in entries}
            phase = Phase.DECODE if kinds == {True} else Phase.PREFILL if kinds == {False} else Phase.MIXED
        return phase, entries

    def _admit(self, scheduled: list[tuple[LlmRequest, int]]) -> list[tuple[LlmRequest, int]]:
        entries = []
        preempted = False
        was_running = {id(r) for r in self.running}
        for r, n in scheduled:
            if id(r) in was_running:
                if r.status is not Status.RUNNING:
                    continue  # preempted earlier in this step
                while not self.kv.grow(r, r.num_computed + n):
                    victim = self.running[-1]
                    self._preempt(victim)
                    preempted = True
                    if victim is r:
                        break
                if r.status is Status.RUNNING:
                    entries.append((r, n))
            elif r.status is Status.QUEUED:
                if preempted or len(self.running) >= self.policy.max_num_seqs:
                    break
                if not self.kv.grow(r, max(r.num_computed + n, r.num_tokens)):
                    break
                self.waiting.remove(r)
                self.running.append(r)
                r.status = Status.RUNNING
                entries.append((r, n))
        return entries

    def complete(self, phase: Phase, entries: list[tuple[LlmRequest, int]], start_s: float,
                 now_s: float) -> None:
        """A step ended at ``now_s``: advance each request, emit and finish."""
        self.batches.append({
            "module": phase.name.lower(), "start_s": start_s, "end_s": now_s,
            "size": len(entries), "ids": [r.id for r, _ in entries],
            "tokens": sum(n for _, n in entries),
        })
        for r, n in entries:
            r.num_computed += n
            if r.num_computed < r.num_tokens:
                continue  # a prefill chunk that has not reached the end of the prompt
            r.emit(now_s)
            if r.num_generated >= r.output_tokens:
                r.finish(now_s)
                self.running.remove(r)
                self.kv.free(r)
                self.n_done += 1
                self.n_ok += r.status is Status.OK

    def close(self) -> None:
        stuck = [r.id for r in self.requests if not r.status.terminal]
        if stuck:
            raise StallError(
                f"{len(stuck)} request(s) never finished (first ids {stuck[:5]}): "
                f"policy {self.policy.name} left them waiting with nothing running")
        assert self.n_done == len(self.requests), (self.n_done, len(self.requests))
