"""Live LLM serving: replay a trace against a real engine (vLLM) on the wall clock.

NOTE: the engine is stepped back to back while it holds requests; between steps, every request
whose trace arrival time has passed is submitted, stamped with that arrival time (not the time
it was submitted), so a request that arrives during a step waits for it at its own SLO's expense,
as at a real frontend. When the engine is empty the loop sleeps until the next arrival. After
each step the tokens each request has so far are read from the engine's outputs and stamped
with the time the step returned (what a client would see). A request that finishes with finish
reason "abort" was dropped by the policy. The engine is anything with ``submit``, ``step`` and
``has_unfinished`` (backends/vllm/server.VllmServer); this module imports no vllm.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Callable

from neustream.request import Status

if TYPE_CHECKING:
    from neustream.request import LlmRequest


class LiveLlmError(RuntimeError):
    """The engine lost or duplicated a request."""


def serve_llm(server, requests: list[LlmRequest], *, start_delay_s: float = 0.05,
              progress: Callable[[int, float], None] | None = None) -> dict:
    """Serve ``requests`` (ordered by arrival, times relative to the trace start) on ``server``.
    Fills each request's token times, finish/drop, status. Returns timing facts of the run."""
    pending = deque(sorted(requests, key=lambda r: (r.arrival_s, str(r.id))))
    by_id = {str(r.id): r for r in requests}
    t0 = time.time() + start_delay_s
    n_steps = n_done = 0
    max_submit_lag = 0.0
    last_report = 0.0
    while pending or server.has_unfinished():
        now = time.time() - t0
        while pending and pending[0].arrival_s <= now:
            r = pending.popleft()
            server.submit(str(r.id), r.prompt_tokens, r.output_tokens, t0 + r.arrival_s,
                          extra={"pslo": r.pslo, "dslo": r.dslo})
            r.status = Status.RUNNING
            max_submit_lag = max(max_submit_lag, now - r.arrival_s)
        if not server.has_unfinished():
            if pending:
                time.sleep(max(0.0, pending[0].arrival_s - (time.time() - t0)))
            continue
        outs = server.step()
        n_steps += 1
        now = time.time() - t0
        for rid, n_tokens, finished, reason in outs:
            r = by_id.get(rid)
            if r is None:
                continue  # not ours (warm-up)
            if n_tokens > r.num_generated:
                r.emit(now, n_tokens - r.num_generated)
            if finished:
                if r.status.terminal:
                    raise LiveLlmError(f"request {rid} finished twice")
                n_done += 1
                if reason == "abort":
                    r.drop(now)
                else:
                    r.finish(now)
                    if r.num_generated != r.output_tokens:
                        raise LiveLlmError(f"request {rid} finished with {r.num_generated} of "
                                           f"{r.output_tokens} tokens ({reason})")
        if progress is not None and now - last_report >= 5.0:
            last_report = now
            progress(n_done, now)
    lost = [r.id for r in requests if not r.status.terminal]
    if lost:
        raise LiveLlmError(f"{len(lost)} request(s) never finished (first ids {lost[:5]})")
    return {"t0_epoch_s": t0, "steps": n_steps, "max_submit_lag_s": max_submit_lag,
            "wall_s": time.time() - t0}


def warm_up(server, program, n: int = 4) -> None:
    """A few requests through the engine before the trace, so one-time costs stay out of it."""
    now = time.time()
    for i in range(n):
        server.submit(f"warmup-{i}", program.prompt_tokens[i % len(program.prompt_tokens)], 8, now)
    while server.has_unfinished():
        server.step()
