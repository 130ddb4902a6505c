"""Live multi-agent serving: replay a trace through real engines and real code execution.

NOTE: one Python loop drives every LLM engine instance (backends/vllm/server.VllmServer,
backends/vllm/engine_proc.ProcessServer, or anything with their ``submit``/``step``/``has_unfinished``)
on the wall clock. ``placement`` maps each instance to a device. The engines of one device take
turns, one engine step at a time, in a fixed round robin among those with work, as the
simulator's placements do; engines on different devices step at the same time when they are
ProcessServers (each in its own process): in each loop turn every device with no step running
starts one step of its next engine (``step_begin``), and the loop collects the steps that have
returned (``wait_steps``, in the order they ended), so a fast engine never waits for a slow one
on another device. A step's tokens are stamped with the time the step returned *in the engine's
process* (its ``step_end_s``); an engine stepped in place (no ``step_begin``: in-process
servers, which share this process's one device) is stepped to completion and its tokens stamped
with the loop's clock right after ``step()``. With every engine on one device (the default) the
loop is the one-device round robin it always was. Code-execution stages run in a thread pool of
``exec_workers`` threads, each running one program in the sandbox (backends/sandbox.run_code) in the
request's own directory. Random weights write no code, so a request's code stages run the
plotting program its trace row names (a representative script per request, reference
multiagent.md 6.3); its image feeds the LLaVA stage, and code that fails or times out hands on
a blank fallback image, as the artifact handed on the ground truth. Between engine steps the loop
admits trace arrivals whose time has come and the code executions that finished (while steps
run elsewhere it looks at them every ``POLL_S``); the request flow (deadlines, slack hand-over,
drops) is agent.AgentFlow's, as in the simulator. Each engine's requests carry their stage budget
and image count to the scheduler plug-in (``extra_args``), so NeuStream's policy inside vLLM sees
the same deadlines as the record.
"""

from __future__ import annotations

import queue
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from neustream.request import Status

if TYPE_CHECKING:
    from neustream.engine.agent.flow import AgentFlow, Handoff


POLL_S = 0.005  # while steps run: how often the loop looks at arrivals and finished code runs


class LiveAgentError(RuntimeError):
    """An engine lost or duplicated a request, or the run could not finish."""


def lanes_of(order: list[str], placement: dict | None) -> dict[int, list[str]]:
    """Device -> its instances in ``order`` (default: every instance on device 0)."""
    if placement is None:
        return {0: list(order)}
    missing = [i for i in order if i not in placement]
    extra = [i for i in placement if i not in order]
    if missing or extra:
        raise ValueError(f"placement: no device for {', '.join(missing)}" if missing else
                         f"placement: unknown instance(s) {', '.join(map(str, extra))}")
    bad = [i for i in order if isinstance(placement[i], bool)
           or not isinstance(placement[i], int) or placement[i] < 0]
    if bad:
        raise ValueError(f"placement: device of {bad[0]} must be an integer >= 0, "
                         f"got {placement[bad[0]]!r}")
    lanes: dict[int, list[str]] = {}
    for inst in order:
        lanes.setdefault(placement[inst], []).append(inst)
    return dict(sorted(lanes.items()))


def serve_agent(agent: AgentFlow, servers: dict, *, plots: dict, exec_workers: int,
                exec_timeout_s: float, placement: dict[str, int] | None = None,
                start_delay_s: float = 0.1, max_wall_s: float = 3600.0,
                progress: Callable[[int, float], None] | None = None) -> dict:
    """Serve ``agent``'s requests (times relative to the trace start) through ``servers``
    (instance name -> engine) and the sandbox; ``plots`` maps plot names to sandbox.Plot;
    ``placement`` maps instance names to device indices (default: all on one device).
    Fills the AgentFlow; returns timing facts and the code-execution log."""
    from neustream.backends.sandbox import blank_image, run_code
    from neustream.backends.vllm.engine_proc import wait_steps  # no vLLM import here

    program = agent.program
    order = list(program.instances())
    missing = [i for i in order if i not in servers]
    if missing:
        raise ValueError(f"no engine for instance(s) {', '.join(missing)}")
    lanes = lanes_of(order, placement)
    views: dict[str, dict[str, object]] = {i: {} for i in order}  # instance -> rid -> LlmRequest
    done: queue.SimpleQueue = queue.SimpleQueue()  # finished code executions
    execs: list[dict] = []
    pending = sorted(agent.requests, key=lambda r: (r.arrival_s, r.id))
    nxt = 0
    tmp = tempfile.TemporaryDirectory(prefix="neustream-agent-")
    root = Path(tmp.name)
    fallback = blank_image(root / "fallback.png")
    pool = ThreadPoolExecutor(max_workers=exec_workers, thread_name_prefix="exec")
    t0 = time.time() + start_delay_s
    clock = lambda: time.time() - t0  # noqa: E731
    turns = {d: 0 for d in lanes}  # per device: where its round robin starts next
    running: dict[int, str] = {}  # device -> instance whose step runs (step_begin'd)
    n_steps = 0
    steps_by_device = {d: 0 for d in lanes}
    max_lag = 0.0

    def run_exec(req, stage: str) -> None:
        start = clock()  # a wait for a free worker counts against the stage, as queueing does
        plot = plots[str(req.fields["plot"])]
        try:
            res = run_code(plot.code, root / f"{req.id}" / stage, timeout_s=exec_timeout_s,
                           fallback_image=fallback, data_files=plot.data_files)
            done.put((req, stage, start, clock(), res.status, res.image, None))
        except BaseException as e:  # noqa: BLE001 - reported by the loop, never lost
            done.put((req, stage, start, clock(), "error", fallback, e))

    def handle(h: Handoff, now: float) -> None:
        if h.stage is None:
            return
        req = h.request
        if h.stage.kind == "exec":
            pool.submit(run_exec, req, h.stage.name)
            return
        extra = {"pslo": h.llm.pslo, "dslo": h.llm.dslo, "budget_s": req.visits[-1].budget_s,
                 "images": h.stage.images}
        image = None
        if h.stage.images:
            image = req.image or fallback
        rid = str(req.id)
        if rid in views[h.instance]:
            raise LiveAgentError(f"request {rid} entered {h.instance} twice")
        views[h.instance][rid] = h.llm
        h.llm.status = Status.RUNNING
        servers[h.instance].submit(rid, h.llm.prompt_tokens, h.llm.output_tokens,
                                   t0 + h.llm.arrival_s, extra=extra, image=image)

    def next_engine(dev: int) -> str | None:
        """The device's next instance with work, round robin; None when none has any."""
        lane = lanes[dev]
        for k in range(len(lane)):
            inst = lane[(turns[dev] + k) % len(lane)]
            if servers[inst].has_unfinished():
                turns[dev] = (turns[dev] + k + 1) % len(lane)
                return inst
        return None

    def collect(inst: str, outs: list, t: float) -> None:
        """Hand on what one step of ``inst`` produced, stamped ``t`` (trace seconds)."""
        for rid, n_tokens, finished, reason in outs:
            view = views[inst].get(rid)
            if view is None:
                continue  # not ours (warm-up)
            if n_tokens > view.num_generated:
                view.emit(t, n_tokens - view.num_generated)
            if finished:
                del views[inst][rid]
                if reason == "abort":
                    view.drop(t)
                    handle(agent.llm_dropped(view, t), t)
                    continue
                if view.num_generated != view.output_tokens:
                    raise LiveAgentError(f"request {rid} left {inst} with "
                                         f"{view.num_generated} of {view.output_tokens} "
                                         f"tokens ({reason})")
                view.finish(t)
                handle(agent.llm_done(view, t), t)

    last_report = 0.0
    try:
        while agent.n_done < len(agent.requests):
            now = clock()
            if now > max_wall_s:
                raise LiveAgentError(f"run still going after {max_wall_s:.0f} s; "
                                     f"{len(agent.requests) - agent.n_done} request(s) unfinished")
            while nxt < len(pending) and pending[nxt].arrival_s <= now:
                req = pending[nxt]
                nxt += 1
                max_lag = max(max_lag, now - req.arrival_s)
                handle(agent.arrive(req, req.arrival_s), now)
            while not done.empty():
                req, stage, start, end, status, image, err = done.get()
                if err is not None:
                    raise LiveAgentError(f"code stage {stage} of request {req.id} failed: {err!r}")
                req.image = image
                execs.append({"id": req.id, "stage": stage, "start_s": start, "end_s": end,
                              "status": status})
                handle(agent.exec_done(req, start, end, status), end)
            ran = False
            for dev in lanes:  # each idle device starts (or runs) one step of its next engine
                if dev in running:
                    continue
                inst = next_engine(dev)
                if inst is None:
                    continue
                server = servers[inst]
                if hasattr(server, "step_begin"):
                    server.step_begin()
                    running[dev] = inst
                    continue
                outs = server.step()
                n_steps += 1
                steps_by_device[dev] += 1
                ran = True
                collect(inst, outs, clock())
            if running:  # collect the steps that returned, in the order they ended
                wait = 0.0 if ran else POLL_S
                if nxt < len(pending):
                    wait = min(wait, max(0.0, pending[nxt].arrival_s - clock()))
                by_server = {id(servers[i]): d for d, i in running.items()}
                ended = wait_steps([servers[i] for i in running.values()], wait)
                got = []
                for server in ended:
                    dev = by_server[id(server)]
                    inst = running.pop(dev)
                    got.append((server, inst, dev, server.step_end()))
                for server, inst, dev, outs in sorted(got, key=lambda g: g[0].step_end_s):
                    n_steps += 1
                    steps_by_device[dev] += 1
                    collect(inst, outs, server.step_end_s - t0)
                ran = ran or bool(got)
            elif not ran:  # nothing to step: wait for an arrival or a finished code execution
                wait = 0.05
                if nxt < len(pending):
                    wait = min(wait, max(0.0, pending[nxt].arrival_s - clock()))
                try:
                    item = done.get(timeout=wait) if wait > 0 else None
                except queue.Empty:
                    item = None
                if item is not None:
                    done.put(item)
            if progress is not None and clock() - last_report >= 5.0:
                last_report = clock()
                progress(agent.n_done, last_report)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        tmp.cleanup()
    agent.close()
    return {"t0_epoch_s": t0, "steps": n_steps, "max_submit_lag_s": max_lag,
            "wall_s": time.time() - t0, "execs": execs,
            "steps_by_device": {str(d): n for d, n in steps_by_device.items()}}
