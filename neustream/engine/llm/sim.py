"""Discrete-event simulator of one LLM engine (vLLM-like) serving a trace under an LLM policy.

NOTE: the engine runs one step at a time, and a step takes the time the latency model gives for
what it computes (prefill tokens and their squares, decode batch size and total context; both
for a mixed step). Before each step the policy decides (policy/llm/base.py) and the engine
applies the decision with vLLM's mechanics (engine/llm/run.py). At one instant step ends come
first, then arrivals, then the decision (engine/events.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from neustream.engine.events import Device, Kind, Simulator
from neustream.engine.llm.run import EngineState, step_cost

if TYPE_CHECKING:
    from neustream.latency import LlmLatencyModel
    from neustream.policy.llm.base import LlmPolicy
    from neustream.request import LlmRequest


class LlmSimulator(Simulator):
    def __init__(self, policy: LlmPolicy, model: LlmLatencyModel, requests: list[LlmRequest], *,
                 kv_capacity_tokens: int | None = None, block_size: int = 16) -> None:
        super().__init__(requests)
        self.policy, self.model = policy, model
        self.state = EngineState(policy, requests, kv_capacity_tokens=kv_capacity_tokens,
                                 block_size=block_size)
        self.device = Device()

    def handle(self, kind: Kind, payload) -> None:
        now, state = self.now_s, self.state
        if kind is Kind.DECIDE:
            phase, entries = state.apply(self.policy.decide(state.waiting, state.running, now), now)
            if entries:
                self.push(now + step_cost(self.model, entries), Kind.BATCH_END,
                          (phase, entries, now))
                self.device.busy = True
            return
        if kind is Kind.ARRIVAL:
            state.arrive(payload, now)
        else:
            phase, entries, start = payload
            state.complete(phase, entries, start, now)
            self.policy.observe(phase, now - start)
            self.device.busy = False
        if state.waiting or state.running:
            self.wake(self.device)

    def close(self) -> None:
        self.state.close()


def simulate_llm(policy: LlmPolicy, model: LlmLatencyModel, requests: list[LlmRequest], *,
                 kv_capacity_tokens: int | None = None, block_size: int = 16,
                 progress: Callable[[Simulator], None] | None = None) -> EngineState:
    """Serve ``requests`` (ordered by arrival) under ``policy``; return the engine's state."""
    sim = LlmSimulator(policy, model, requests, kv_capacity_tokens=kv_capacity_tokens,
                       block_size=block_size)
    sim.run(progress)
    return sim.state
