"""Discrete-event simulator of a multi-agent pipeline (catalog.agent.AgentProgram).

NOTE: every LLM engine instance is an engine/llm/run.EngineState under its own policy object,
with the mechanics of the single-engine simulator (drops, KV admission, recompute preemption).
A *device* runs one step at a time: instances placed on the same device take turns, one step
each, in a fixed round robin among those with work (time slicing, as processes sharing a GPU
do); instances on different devices run in parallel. A step of an instance whose stage carries
images also runs the image encoder for the requests it prefills for the first time (as vLLM
runs the encoder in the step that prefills the request). A code-execution stage has
``exec_workers`` slots and a FIFO queue; a program takes the seconds measured for it (the
median of its rows in the exec-times table). Hand-over between stages takes no time. Requests
flow by engine/agent/flow.AgentFlow's rules; events as in engine/events.py.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Callable

from neustream.engine.events import Device, Simulator
from neustream.engine.llm.run import EngineState, step_cost
from neustream.request import Status

if TYPE_CHECKING:
    from neustream.catalog.agent import AgentProgram
    from neustream.engine.agent.flow import AgentFlow, Handoff
    from neustream.latency import LlmLatencyModel
    from neustream.policy.llm.base import LlmPolicy


@dataclass(eq=False)
class Instance:
    name: str
    stage: str
    device: int
    images: int  # images per request (the encoder runs at its first prefill)
    model: LlmLatencyModel
    state: EngineState


@dataclass(eq=False)
class Lane(Device):
    """A device and the engine instances placed on it, taking turns."""

    instances: list[Instance] = field(default_factory=list)
    turn: int = 0


@dataclass
class ExecPool:
    workers: int
    busy: int = 0
    queue: deque = field(default_factory=deque)


def kv_split(program: AgentProgram, placement: dict[str, int],
             models: dict[str, LlmLatencyModel]) -> dict[str, int | None]:
    """KV tokens per instance when instances share a device: the device's usable memory (as
    the tables' sidecars imply: kv_capacity_tokens x bytes per token + weights + a 2 GiB
    reserve) less every placed model's weights and reserve, split evenly."""
    from neustream.catalog.llm import get_llm_program

    GiB = 2**30
    out: dict[str, int | None] = {}
    stage_of = {i: s for s in program.llm_stages for i in s.instances()}
    by_device: dict[int, list[str]] = {}
    for inst, dev in placement.items():
        by_device.setdefault(dev, []).append(inst)
    for dev, names in by_device.items():
        metas = [models[stage_of[n].name].meta for n in names]
        if any(m.get("kv_capacity_tokens") is None or m.get("weights_gib") is None for m in metas):
            out.update({n: metas[k].get("kv_capacity_tokens") for k, n in enumerate(names)})
            continue
        progs = [get_llm_program(stage_of[n].model) for n in names]
        usable = metas[0]["kv_capacity_tokens"] * progs[0].kv_bytes_per_token + \
            metas[0]["weights_gib"] * GiB + 2 * GiB
        free = usable - sum(m["weights_gib"] * GiB + 2 * GiB for m in metas)
        if free <= 0:
            raise ValueError(f"device {dev}: the models of {', '.join(names)} do not fit together")
        for n, p in zip(names, progs):
            out[n] = int(free / len(names) // p.kv_bytes_per_token)
    return out


class AgentSimulator(Simulator):
    class Kind(IntEnum):
        """Event kinds; the value orders events at the same instant."""

        STEP_END = 0
        EXEC_END = 1
        ARRIVAL = 2
        DECIDE = 3

    def __init__(self, program: AgentProgram, flow: AgentFlow, policies: dict[str, LlmPolicy],
                 placement: dict[str, int], exec_s: dict[str, float], *,
                 kv_tokens: dict[str, int | None] | None = None) -> None:
        super().__init__(flow.requests)
        kv_tokens = kv_tokens or {}
        stage_of = {i: s for s in program.llm_stages for i in s.instances()}
        missing = [i for i in stage_of if i not in placement or i not in policies]
        if missing:
            raise ValueError(f"no placement or policy for instance(s) {', '.join(missing)}")
        unknown = sorted({str(r.fields["plot"]) for r in flow.requests} - set(exec_s))
        if unknown:
            raise ValueError(f"no measured execution time for plot(s) {', '.join(unknown[:5])}")
        self.flow, self.exec_s = flow, exec_s
        self.instances: dict[str, Instance] = {}
        self.lanes: dict[int, Lane] = {}
        for name, stage in stage_of.items():
            state = EngineState(policies[name], [], kv_capacity_tokens=kv_tokens.get(name),
                                block_size=16)
            inst = Instance(name, stage.name, placement[name], stage.images,
                            flow.models[stage.name], state)
            self.instances[name] = inst
            self.lanes.setdefault(inst.device, Lane(inst.device)).instances.append(inst)
        self.pools = {s.name: ExecPool(program.exec_workers)
                      for s in program.stages if s.kind == "exec"}
        self.batches: list[dict] = []

    def handle(self, kind: IntEnum, payload) -> None:
        now, flow, K = self.now_s, self.flow, self.Kind
        if kind is K.ARRIVAL:
            self.hand_on(flow.arrive(payload, now))
        elif kind is K.STEP_END:
            lane, inst, phase, entries, start = payload
            inst.state.complete(phase, entries, start, now)
            inst.state.policy.observe(phase, now - start)
            b = inst.state.batches[-1]
            self.batches.append({**b, "module": f"{inst.name}.{b['module']}",
                                 "instance": inst.name, "phase": b["module"],
                                 "device": lane.name})
            lane.busy = False
            for r, _ in entries:
                if r.finish_s == now and r.status in (Status.OK, Status.LATE):
                    self.hand_on(flow.llm_done(r, now))
            self.wake(lane)
        elif kind is K.EXEC_END:
            stage, req, start = payload
            pool = self.pools[stage]
            pool.busy -= 1
            self.batches.append({"module": stage, "start_s": start, "end_s": now, "size": 1,
                                 "ids": [req.id], "instance": stage, "phase": "exec",
                                 "device": "cpu"})
            self.hand_on(flow.exec_done(req, start, now, "ok"))
            self.start_exec(pool, stage)
        else:
            self.decide(payload)

    def hand_on(self, h: Handoff) -> None:
        """Put a request where the flow sends it: an engine instance or a code executor."""
        if h.stage is None:
            return
        if h.stage.kind == "exec":
            self.pools[h.stage.name].queue.append(h.request)
            self.start_exec(self.pools[h.stage.name], h.stage.name)
            return
        inst = self.instances[h.instance]
        inst.state.requests.append(h.llm)
        inst.state.arrive(h.llm, self.now_s)
        self.wake(self.lanes[inst.device])

    def start_exec(self, pool: ExecPool, stage: str) -> None:
        while pool.busy < pool.workers and pool.queue:
            req = pool.queue.popleft()
            pool.busy += 1
            self.push(self.now_s + self.exec_s[str(req.fields["plot"])], self.Kind.EXEC_END,
                      (stage, req, self.now_s))

    def decide(self, lane: Lane) -> None:
        """The lane's next instance with work (round robin) decides and runs one step."""
        now, n = self.now_s, len(lane.instances)
        for k in range(n):
            inst = lane.instances[(lane.turn + k) % n]
            state = inst.state
            if not (state.waiting or state.running):
                continue
            decision = state.policy.decide(state.waiting, state.running, now)
            phase, entries = state.apply(decision, now)
            for r in decision.drops:
                self.hand_on(self.flow.llm_dropped(r, now))
            if not entries:
                continue
            new = sum(1 for r, _ in entries if r.num_computed == 0) if inst.images else 0
            cost = step_cost(inst.model, entries) + inst.model.vision_s(new * inst.images)
            self.push(now + cost, self.Kind.STEP_END, (lane, inst, phase, entries, now))
            lane.busy = True
            lane.turn = (lane.turn + k + 1) % n
            return

    def close(self) -> None:
        for inst in self.instances.values():
            inst.state.close()
        self.flow.close()


def simulate_agent(program: AgentProgram, flow: AgentFlow, policies: dict[str, LlmPolicy],
                   placement: dict[str, int], exec_s: dict[str, float], *,
                   kv_tokens: dict[str, int | None] | None = None,
                   progress: Callable[[Simulator], None] | None = None) -> list[dict]:
    """Serve ``flow``'s requests (ordered by arrival); return the batch log. ``policies`` and
    ``placement`` (instance -> device) cover every LLM instance; ``exec_s`` gives each plotting
    program's seconds."""
    sim = AgentSimulator(program, flow, policies, placement, exec_s, kv_tokens=kv_tokens)
    sim.run(progress)
    return sim.batches
