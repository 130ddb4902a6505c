"""Live multi-agent serving: replay a trace through real engines and real code execution.

NOTE: one Python loop drives every LLM engine instance (models/vllm_scheduler.VllmServer or
anything with its ``submit``/``step``/``has_unfinished``) on the wall clock: they share one
device and take turns, one engine step each, in a fixed round robin among those with work, as
the simulator's ``shared`` placement does. Code-execution stages run in a thread pool of
``exec_workers`` threads, each running one program in the sandbox (sandbox.run_code) in the
request's own directory. Random weights write no code, so a request's code stages run the
plotting program its trace row names (a representative script per request, reference
multiagent.md 6.3); its image feeds the LLaVA stage, and code that fails or times out hands on
a blank fallback image, as the artifact handed on the ground truth. Between engine steps the loop
admits trace arrivals whose time has come and the code executions that finished; the request
flow (deadlines, slack hand-over, drops) is agent.AgentRun's, as in the simulator. Each engine's
requests carry their stage budget and image count to the scheduler plug-in
(``extra_args``), so NeuStream's policy inside vLLM sees the same deadlines as the record.
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
    from neustream.agent import AgentRun, Handoff


class LiveAgentError(RuntimeError):
    """An engine lost or duplicated a request, or the run could not finish."""


def blank_image(path: Path) -> Path:
    """A white 336 x 336 PNG: what a failed code stage hands on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(3.36, 3.36), dpi=100)
    fig.savefig(path)
    plt.close(fig)
    return path


def serve_agent(agent: AgentRun, servers: dict, *, plots: dict, exec_workers: int,
                exec_timeout_s: float, start_delay_s: float = 0.1, max_wall_s: float = 3600.0,
                progress: Callable[[int, float], None] | None = None) -> dict:
    """Serve ``agent``'s requests (times relative to the trace start) through ``servers``
    (instance name -> engine) and the sandbox; ``plots`` maps plot names to sandbox.Plot.
    Fills the AgentRun; returns timing facts and the code-execution log."""
    from neustream.sandbox import run_code

    program = agent.program
    order = list(program.instances())
    missing = [i for i in order if i not in servers]
    if missing:
        raise ValueError(f"no engine for instance(s) {', '.join(missing)}")
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
    turn = n_steps = 0
    max_lag = 0.0

    def run_exec(req, stage: str) -> None:
        start = clock()  # a wait for a free worker counts against the stage, as queueing does
        plot = plots[str(req.row["plot"])]
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
            for k in range(len(order)):
                inst = order[(turn + k) % len(order)]
                server = servers[inst]
                if not server.has_unfinished():
                    continue
                outs = server.step()
                n_steps += 1
                ran = True
                turn = (turn + k + 1) % len(order)
                t = clock()
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
                break
            if not ran:  # nothing to step: wait for an arrival or a finished code execution
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
            "wall_s": time.time() - t0, "execs": execs}
