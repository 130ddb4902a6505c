"""Live engine: a policy serves a trace on the wall clock with real modules.

NOTE: by default the server is modelled as the simulator models it: one device running one
batch at a time, modules taking turns through ``Policy.decide``. A load-generator thread replays
the trace, handing each request to an inbox at its arrival time. An executor (the caller's
thread) does the rest in a loop: admit what arrived (queued since its trace arrival time, as in
the simulator), ask the policy, apply its drops, have the server run the batch (``Server.run``:
one call of one module, the requests at any step; ``run_pipeline``: whole requests), wait for
the device, and advance the requests through ``engine.diffusion.run.RunState``, so records match the
simulator's in shape. Processes per module would copy every request's tensors between modules
(the artifact pickled them through proxy queues); threads on two CUDA streams of one GPU overlap
two modules' batches (1.12x on an H200, evidence/2026-11-24-h200-live-diffusion/), but a batch's time then depends
on what runs beside it, which no latency table describes.

Placement: a server with ``groups()`` (module -> device, backends/diffusion/server.py) gets one executor
per device, each in its own thread, running only its own modules' batches, beside the others.
Each asks the shared policy about its own modules only (``Policy.decide_module``, taking turns
over them as ``Policy.decide`` does over all), so it relies on decide_module reading and
changing only the queue it is given and the requests in it. The run's state (queues, records,
counters) and the policy are touched under ONE lock, held for bookkeeping and decisions and
never while a model runs; a finished batch hands its requests to the next module's queue and
wakes the other executors. The run ends when arrivals are over and every executor has nothing
to run while none is running a batch. Batch rows carry their executor's ``device``.

Host cost per step: the loop touches each request of a batch a few times (start, complete),
the policy scans its queue once per decision, and a CUDA call is one async copy of its slots,
one graph replay and one synchronisation (backends/diffusion/graphs.py). With ``lookahead`` and a server
whose calls are asynchronous (CUDA), the next decision is made while the device still runs the
current batch, and its call is enqueued behind it, so the device does not idle for the host's
decision. Only where that decision sees what the simulator's would: the current batch is a
loop-module call after which every request stays at that module, so completing it early moves
no request between modules and stamps no request time (the batch row's ``end_s`` is set when
the device is done). The differences, documented: the decision is taken at the predicted end
(start + the table's time; or later, if the host is late) rather than the measured one, and an
arrival in the last batch's run is seen one decision later than in the simulator. In every
other case the engine waits for the batch first, as without lookahead.

Time never drifts silently: arrivals are stamped with their trace times, and a load generator
that falls more than ``max_lag_s`` behind the trace stops the run with an error (the largest lag
is recorded either way). Any exception (a module that raises, out of memory, Ctrl-C) stops the
run with a ``LiveError`` that carries the partial run; runs/diffusion.py keeps those records
under a name marked failed.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import threading
import time
from typing import TYPE_CHECKING, Callable, Protocol

from neustream.engine.diffusion.run import RunState
from neustream.engine.events import StallError
from neustream.policy.base import WHOLE_REQUESTS, Decision

if TYPE_CHECKING:
    from neustream.policy.base import Policy
    from neustream.request import Request

MAIN = "main"  # the executor of a server that names no devices


class Server(Protocol):
    """What the live engine asks of the modules (backends/diffusion/server.py is the real one).

    Optional: ``groups() -> {device: modules}`` (one executor per device; default one for all),
    ``executor(device)`` (a context manager around an executor's loop, in its thread), and
    for ``lookahead``: ``asynchronous`` (True where ``launch`` returns before the device is
    done), ``launch(module, batch, steps_done) -> handle`` and ``wait(handle) -> model_s``."""

    def start(self, r: Request) -> None:
        """``r`` arrived: set up its state."""

    def end(self, r: Request) -> None:
        """``r`` finished or was dropped: free its state."""

    def run(self, module: str, batch: list[Request], steps_done: list[int]) -> float:
        """One call of ``module`` for ``batch`` (``steps_done``: each request's calls of it so
        far); returns when the device is done, with the seconds spent in the model."""

    def run_pipeline(self, batch: list[Request]) -> float:
        """Whole requests end to end; returns as ``run`` does."""


class LiveError(RuntimeError):
    """A live run that stopped early; ``run`` holds its partial state."""

    def __init__(self, message: str, run: RunState) -> None:
        super().__init__(message)
        self.run = run


def _generate(requests: list[Request], t0: float, clock: Callable[[], float],
              hand: Callable, stop: threading.Event) -> None:
    """Hand each request over at its trace arrival time (absolute, so no drift)."""
    for r in requests:
        delay = t0 + r.arrival_s - clock()
        if delay > 0 and stop.wait(delay):
            return
        hand((r, clock() - t0 - r.arrival_s))
    hand(None)


class _Hub:
    """What the executors share. Every field is read and written under ``cond``'s lock."""

    def __init__(self, run: RunState, server: Server, clock: Callable[[], float], max_lag_s: float,
                 progress: Callable[[RunState, float], None] | None) -> None:
        self.run, self.server, self.clock = run, server, clock
        self.max_lag_s, self.progress = max_lag_s, progress
        self.cond = threading.Condition(threading.Lock())
        self.inbox: collections.deque = collections.deque()
        self.t0 = 0.0
        self.arrivals_done = False
        self.stop = False
        self.changes = 0  # bumped whenever work may have appeared for an executor
        self.busy = 0  # executors with a batch launched and not completed
        self.sleepers = 0  # executors waiting on ``cond``
        self.executors: list[_Executor] = []
        self.error: tuple[BaseException, _Executor] | None = None
        self.last_report = 0.0

    def now(self) -> float:
        return self.clock() - self.t0

    def hand(self, item) -> None:
        """From the load generator: an arrival (or None: no more)."""
        with self.cond:
            self.inbox.append(item)
            self.wake()

    def wake(self) -> None:
        self.changes += 1
        if self.sleepers:
            self.cond.notify_all()

    def admit(self) -> bool:
        """Move what arrived into the run; True if anything did."""
        inbox, run = self.inbox, self.run
        if not inbox:
            return False
        while inbox:
            item = inbox.popleft()
            if item is None:
                self.arrivals_done = True
                continue
            r, lag = item
            run.lags.append(lag)
            if lag > self.max_lag_s:
                raise RuntimeError(f"the load generator fell {lag:.3f} s behind the trace at "
                                   f"request {r.id} (limit max_lag_s={self.max_lag_s})")
            self.server.start(r)
            run.arrive(r, r.arrival_s)
        self.wake()  # the first module's executor may be another one
        return True

    def sleep(self, me: _Executor, seen: int) -> bool:
        """Nothing to run for ``me``: wait for a change since ``seen``; False when nothing can
        change any more (arrivals over, nobody running, everybody else asleep too)."""
        me.asleep_at = seen
        try:
            while self.changes == seen and not self.stop:
                if (self.arrivals_done and not self.inbox and self.busy == 0
                        and all(e.asleep_at == self.changes for e in self.executors)):
                    self.stop = True
                    self.cond.notify_all()
                    return False
                self.sleepers += 1
                try:
                    self.cond.wait()
                finally:
                    self.sleepers -= 1
            return not self.stop
        finally:
            me.asleep_at = None

    def report(self, end_s: float) -> None:
        if self.progress is not None and self.clock() - self.last_report > 5:
            self.last_report = self.clock()
            self.progress(self.run, end_s)


class _Executor:
    """One device's loop: decide for its modules, run, complete (see the module NOTE)."""

    def __init__(self, hub: _Hub, name: str, modules: tuple[str, ...], policy: Policy,
                 lookahead: bool) -> None:
        self.hub, self.name, self.modules, self.policy = hub, name, modules, policy
        self.run = hub.run
        self.server = hub.server
        # the whole program on one executor: the policy's own turn-taking, as in the simulator
        self.everything = set(modules) == set(policy.queue_names)
        self.turn = 0  # round-robin position over ``modules`` (several executors)
        self.lookahead = lookahead
        self.loops = {m.name for m in policy.program.modules if m.loop}
        self.asleep_at: int | None = None
        self.current: Decision | None = None  # the batch being run (for error messages)

    # -- under the lock ------------------------------------------------------------------

    def decide(self, now: float) -> Decision:
        """Ask the policy, apply the drops, take the batch out of its queue."""
        run, queues = self.run, self.run.queues
        if self.everything:
            d = self.policy.decide(queues, now) if run.waiting() else Decision.empty()
        else:
            d = self._decide_own(now)
        if d.drops:
            run.apply_drops(d, now)
            for _, r in d.drops:
                self.server.end(r)
        if d.batch:
            run.start(d, now)
            self.hub.busy += 1
        return d

    def _decide_own(self, now: float) -> Decision:
        """``Policy.decide`` over this executor's modules only."""
        d, self.turn = self.policy.decide_among(self.modules, self.run.queues, now, self.turn)
        return d

    def complete(self, d: Decision, start: float, end: float, model_s: float,
                 idle: bool) -> None:
        run = self.run
        done = run.n_done
        run.complete(d.module, d.batch, start, end)
        run.batches[-1].update(model_s=model_s, after_idle=idle, device=self.name)
        if run.n_done != done:  # some request of the batch finished: free its state
            for r in d.batch:
                if r.status.terminal:
                    self.server.end(r)
        self.hub.busy -= 1
        self.hub.wake()
        self.hub.report(end)

    def stays(self, d: Decision) -> bool:
        """After this batch, does every request stay at its module (a loop call, not the last)?"""
        return d.module in self.loops and all(r.calls_done + 1 < r.steps for r in d.batch)

    # -- the loop ------------------------------------------------------------------------

    def launch(self, d: Decision):
        return self.server.launch(d.module, d.batch, [r.calls_done for r in d.batch])

    def execute(self, d: Decision) -> float:
        if d.module == WHOLE_REQUESTS:
            return self.server.run_pipeline(d.batch)
        return self.server.run(d.module, d.batch, [r.calls_done for r in d.batch])

    def loop(self) -> None:
        ctx = getattr(self.server, "executor", None)
        with ctx(self.name) if ctx is not None else contextlib.nullcontext():
            if self.lookahead:
                self._loop_ahead()
            else:
                self._loop()

    def _next(self, quiet: int | None = None):
        """Under the lock: admit arrivals and decide; with nothing to run, sleep until something
        changes and decide again. (decision, now, waited) or None once the run is over.
        ``quiet``: ``hub.changes`` when an empty decision was just taken ahead; while nothing
        changed since, it is not retried (as in the simulator)."""
        hub, waited = self.hub, False
        with hub.cond:
            while not hub.stop:
                hub.admit()
                now = hub.now()
                d = Decision.empty() if quiet == hub.changes else self.decide(now)
                quiet = None
                if d.batch:
                    return d, now, waited
                if not hub.sleep(self, hub.changes):
                    return None
                waited = True
        return None

    def _loop(self) -> None:
        while (nxt := self._next()) is not None:
            d, now, idle = nxt
            self.current = d
            model_s = self.execute(d)
            end = self.hub.now()
            with self.hub.cond:
                self.complete(d, now, end, model_s, idle)
            self.current = None

    def _loop_ahead(self) -> None:
        """``_loop`` with the next decision made while the device runs (module NOTE)."""
        hub, cond, run = self.hub, self.hub.cond, self.run
        table = self.policy.table
        ahead = None  # (decision, start_s, handle, after_idle): launched, not waited for
        quiet = None  # ``hub.changes`` after an empty decision taken ahead: no news since
        while True:
            if ahead is None:
                nxt = self._next(quiet)
                quiet = None
                if nxt is None:
                    return
                d, now, idle = nxt
                self.current = d
                if d.module == WHOLE_REQUESTS:
                    model_s = self.execute(d)
                    end = hub.now()
                    with cond:
                        self.complete(d, now, end, model_s, idle)
                    continue
                ahead = (d, now, self.launch(d), idle)
            d, start, handle, was_idle = ahead
            self.current = d
            nxt = row = None
            if self.stays(d):
                with cond:  # complete it now, decide the next batch, enqueue it behind
                    t_end = start + table.latency(d.module, len(d.batch))
                    run.complete(d.module, d.batch, start, t_end)
                    row = run.batches[-1]
                    if not hub.stop:
                        hub.admit()
                        nxt = self.decide(max(hub.now(), t_end))
                        if not nxt.batch:
                            quiet = hub.changes
                if nxt is not None and nxt.batch:
                    nxt_handle = self.launch(nxt)
                    launched = hub.now()
            model_s = self.server.wait(handle)
            end = hub.now()
            with cond:
                if row is None:
                    self.complete(d, start, end, model_s, was_idle)
                else:  # completed ahead: its row gets the measured end
                    row.update(end_s=end, model_s=model_s, after_idle=was_idle, device=self.name)
                    hub.busy -= 1
                    hub.report(end)
            self.current = None
            ahead = None
            if nxt is not None and nxt.batch:
                ahead = (nxt, max(end, launched), nxt_handle, False)

    def guarded(self) -> None:
        """``loop`` in a thread of its own: an exception stops every executor."""
        try:
            self.loop()
        except BaseException as e:  # noqa: BLE001 - handed to serve(), which raises it
            with self.hub.cond:
                if self.hub.error is None:
                    self.hub.error = (e, self)
                self.hub.stop = True
                self.hub.cond.notify_all()


def _groups(policy: Policy, server: Server) -> dict[str, tuple[str, ...]]:
    """Executor name -> its queues: the server's devices, or one executor for everything."""
    groups = server.groups() if hasattr(server, "groups") else {MAIN: policy.queue_names}
    if policy.whole_requests:  # one queue of whole requests: one executor
        return {next(iter(groups)): (WHOLE_REQUESTS,)}
    missing = set(policy.queue_names) - {m for ms in groups.values() for m in ms}
    if missing:
        raise ValueError(f"the server places no executor for module(s) {sorted(missing)}")
    return groups


def serve(policy: Policy, server: Server, requests: list[Request], *, max_lag_s: float = 1.0,
          clock: Callable[[], float] = time.perf_counter,
          progress: Callable[[RunState, float], None] | None = None,
          lookahead: bool = False) -> RunState:
    """Serve ``requests`` (ordered by arrival) under ``policy`` in real time; return the run.

    Each batch row gets ``model_s`` (seconds in the model), ``after_idle`` (the executor
    waited for an arrival or another device before deciding it) and ``device`` (its executor).
    ``run.lags`` holds each arrival's lag. ``lookahead`` takes effect only for a server whose
    calls are asynchronous (``server.asynchronous``); ``run.lookahead`` says whether it did."""
    run = RunState(policy, requests)
    run.lags = []
    groups = _groups(policy, server)
    ahead = bool(lookahead and getattr(server, "asynchronous", False))
    run.lookahead = ahead
    hub = _Hub(run, server, clock, max_lag_s, progress)
    hub.executors = [_Executor(hub, name, mods, policy, ahead) for name, mods in groups.items()]
    stop = threading.Event()
    gc_on = gc.isenabled()
    gc.collect()
    gc.disable()  # no collector pauses inside a run (a run's garbage is freed by refcounts)
    hub.t0 = hub.last_report = clock()
    gen = threading.Thread(target=_generate, args=(requests, hub.t0, clock, hub.hand, stop),
                           name="load-generator", daemon=True)
    gen.start()
    threads: list[threading.Thread] = []
    failed = None
    try:
        if len(hub.executors) == 1:
            failed = hub.executors[0]
            hub.executors[0].loop()
        else:
            threads = [threading.Thread(target=e.guarded, name=f"executor-{e.name}", daemon=True)
                       for e in hub.executors]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if hub.error is not None:
                failed = hub.error[1]
                raise hub.error[0]
    except BaseException as e:
        stop.set()
        with hub.cond:
            hub.stop = True
            hub.cond.notify_all()
        d = failed.current if failed is not None else None
        where = f" while running {d.module} on {len(d.batch)} request(s)" if d else ""
        raise LiveError(f"live run stopped at t={clock() - hub.t0:.3f} s{where}: "
                        f"{type(e).__name__}: {e}", run) from e
    finally:
        stop.set()
        gen.join()
        for t in threads:
            t.join()
        if gc_on:
            gc.enable()
    try:
        run.close()
    except StallError as e:
        raise LiveError(str(e), run) from e
    return run
