"""Discrete-event simulator of a multi-agent pipeline (programs.AgentProgram).

NOTE: every LLM engine instance is an llm_sim.LlmRun under its own policy object, with the
mechanics of the single-engine simulator (drops, KV admission, recompute preemption). A
*device* runs one step at a time: instances placed on the same device take turns, one step
each, in a fixed round robin among those with work (time slicing, as processes sharing a GPU
do); instances on different devices run in parallel. A step of an instance whose stage carries
images also runs the image encoder for the requests it prefills for the first time (as vLLM
runs the encoder in the step that prefills the request). A code-execution stage has
``exec_workers`` slots and a FIFO queue; a program takes the seconds measured for it (the
median of its rows in the exec-times table). Hand-over between stages takes no time. Requests
flow by agent.AgentRun's rules; the event heap is keyed (time, kind, seq) as in engine/sim.py.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Callable

from neustream.agent import AgentRun, Handoff
from neustream.engine.llm_sim import LlmRun, step_cost
from neustream.request import Status

if TYPE_CHECKING:
    from neustream.latency import LlmLatencyModel
    from neustream.policy.llm_base import LlmPolicy
    from neustream.programs import AgentProgram


class Kind(IntEnum):
    STEP_END = 0
    EXEC_END = 1
    ARRIVAL = 2
    DECIDE = 3


@dataclass
class Instance:
    name: str
    stage: str
    device: int
    images: int  # images per request (the encoder runs at its first prefill)
    model: LlmLatencyModel
    run: LlmRun


@dataclass
class Device:
    instances: list[Instance]
    busy: bool = False
    turn: int = 0
    decide_pending: bool = False


@dataclass
class ExecPool:
    workers: int
    busy: int = 0
    queue: deque = field(default_factory=deque)


def exec_seconds(table_rows: list[dict]) -> dict[str, float]:
    """Median seconds per plotting program from exec-times rows (plot, seconds, status)."""
    by_plot: dict[str, list[float]] = {}
    for r in table_rows:
        by_plot.setdefault(str(r["plot"]), []).append(float(r["seconds"]))
    return {p: sorted(v)[len(v) // 2] for p, v in by_plot.items()}


def kv_split(program: AgentProgram, placement: dict[str, int],
             models: dict[str, LlmLatencyModel]) -> dict[str, int | None]:
    """KV tokens per instance when instances share a device: the device's usable memory (as
    the tables' sidecars imply: kv_capacity_tokens x bytes per token + weights + a 2 GiB
    reserve) less every placed model's weights and reserve, split evenly."""
    from neustream.programs import get_llm_program

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


def simulate_agent(program: AgentProgram, agent: AgentRun, policies: dict[str, LlmPolicy],
                   placement: dict[str, int], exec_s: dict[str, float], *,
                   kv_tokens: dict[str, int | None] | None = None,
                   progress: Callable[[AgentRun, float], None] | None = None) -> list[dict]:
    """Serve ``agent``'s requests (ordered by arrival); return the batch log. ``policies`` and
    ``placement`` (instance -> device) cover every LLM instance; ``exec_s`` gives each plotting
    program's seconds."""
    kv_tokens = kv_tokens or {}
    stage_of = {i: s for s in program.llm_stages for i in s.instances()}
    missing = [i for i in stage_of if i not in placement or i not in policies]
    if missing:
        raise ValueError(f"no placement or policy for instance(s) {', '.join(missing)}")
    unknown = sorted({str(r.row["plot"]) for r in agent.requests} - set(exec_s))
    if unknown:
        raise ValueError(f"no measured execution time for plot(s) {', '.join(unknown[:5])}")
    insts: dict[str, Instance] = {}
    devices: dict[int, Device] = {}
    for name, stage in stage_of.items():
        run = LlmRun(policies[name], [], kv_capacity_tokens=kv_tokens.get(name),
                     block_size=16)
        inst = Instance(name, stage.name, placement[name], stage.images,
                        agent.models[stage.name], run)
        insts[name] = inst
        devices.setdefault(inst.device, Device([])).instances.append(inst)
    pools = {s.name: ExecPool(program.exec_workers) for s in program.stages if s.kind == "exec"}
    batches: list[dict] = []
    seq = itertools.count()
    heap: list = []

    def push(t: float, kind: Kind, payload=None) -> None:
        heapq.heappush(heap, (t, kind, next(seq), payload))

    def wake(dev: int, now: float) -> None:
        d = devices[dev]
        if not d.busy and not d.decide_pending:
            d.decide_pending = True
            push(now, Kind.DECIDE, dev)

    def start_exec(pool: ExecPool, stage: str, now: float) -> None:
        while pool.busy < pool.workers and pool.queue:
            req = pool.queue.popleft()
            pool.busy += 1
            push(now + exec_s[str(req.row["plot"])], Kind.EXEC_END, (stage, req, now))

    def handle(h: Handoff, now: float) -> None:
        if h.stage is None:
            return
        if h.stage.kind == "exec":
            pools[h.stage.name].queue.append(h.request)
            start_exec(pools[h.stage.name], h.stage.name, now)
            return
        inst = insts[h.instance]
        inst.run.requests.append(h.llm)
        inst.run.arrive(h.llm, now)
        wake(inst.device, now)

    def decide(dev: int, now: float) -> None:
        d = devices[dev]
        n = len(d.instances)
        for k in range(n):
            inst = d.instances[(d.turn + k) % n]
            run = inst.run
            if not (run.waiting or run.running):
                continue
            decision = run.policy.decide(run.waiting, run.running, now)
            phase, entries = run.apply(decision, now)
            for r in decision.drops:
                handle(agent.llm_dropped(r, now), now)
            if not entries:
                continue
            new = sum(1 for r, _ in entries if r.num_computed == 0) if inst.images else 0
            cost = step_cost(inst.model, entries) + inst.model.vision_s(new * inst.images)
            push(now + cost, Kind.STEP_END, (dev, inst, phase, entries, now))
            d.busy = True
            d.turn = (d.turn + k + 1) % n
            return

    for req in agent.requests:
        push(req.arrival_s, Kind.ARRIVAL, req)
    n_events = 0
    while heap:
        now, kind, _, payload = heapq.heappop(heap)
        n_events += 1
        if kind is Kind.ARRIVAL:
            handle(agent.arrive(payload, now), now)
        elif kind is Kind.STEP_END:
            dev, inst, phase, entries, start = payload
            inst.run.complete(phase, entries, start, now)
            inst.run.policy.observe(phase, now - start)
            b = inst.run.batches[-1]
            batches.append({**b, "module": f"{inst.name}.{b['module']}", "instance": inst.name,
                            "phase": b["module"], "device": dev})
            devices[dev].busy = False
            for r, _ in entries:
                if r.finish_s == now and r.status in (Status.OK, Status.LATE):
                    handle(agent.llm_done(r, now), now)
            wake(dev, now)
        elif kind is Kind.EXEC_END:
            stage, req, start = payload
            pool = pools[stage]
            pool.busy -= 1
            batches.append({"module": stage, "start_s": start, "end_s": now, "size": 1,
                            "ids": [req.id], "instance": stage, "phase": "exec", "device": "cpu"})
            handle(agent.exec_done(req, start, now, "ok"), now)
            start_exec(pool, stage, now)
        elif kind is Kind.DECIDE:
            devices[payload].decide_pending = False
            decide(payload, now)
        if progress is not None and n_events % 50000 == 0:
            progress(agent, now)
    for inst in insts.values():
        inst.run.close()
    agent.close()
    return batches


def capacity_rps(program: AgentProgram, models: dict[str, LlmLatencyModel],
                 placement: dict[str, int], rows: list[dict]) -> float:
    """Requests per second the pipeline could finish at best: each device's busiest share of
    work per request (its instances' stages, each LLM stage's per-request time at full batches
    divided among its replicas), the slowest device bounding the pipeline."""
    from neustream.latency import llm_capacity_rps
    from neustream.programs import get_llm_program

    load: dict[int, float] = {}
    for s in program.llm_stages:
        prog = get_llm_program(s.model)
        m = models[s.name]
        per_req = 1.0 / llm_capacity_rps(m, prog, [r[f"{s.name}_prompt"] for r in rows],
                                         [r[f"{s.name}_output"] for r in rows])
        per_req += m.vision_s(8 * s.images) / 8 if s.images else 0.0
        for inst in s.instances():
            load[placement[inst]] = load.get(placement[inst], 0.0) + per_req / s.replicas
    return 1.0 / max(load.values())
