"""One vLLM engine in this process, stepped by our loop: the live LLM runs' server.

Requests carry prompt token ids and are forced to their output length; the engine runs the
system's scheduler class (backends/vllm/scheduler.py). See ``VllmServer``.
"""

from __future__ import annotations

import gc
import logging
import os
import weakref
from pathlib import Path

from neustream.backends.vllm.options import request_options
from neustream.backends.vllm.scheduler import CONFIG_KEY, scheduler_path
from neustream.catalog.llm import image_tokens


class VllmServer:
    """One vLLM engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the scheduler
    object, its stats and its step log are at hand. Requests carry prompt token ids (no
    tokenizer) and are forced to their output length with ``ignore_eos`` and ``max_tokens``.

    Model families: OPT, Llama and LLaVA-1.5 (``program.arch``; the folder comes from
    backends/vllm/model_dir.py). A LLaVA request may carry one image (``submit(image=...)``).

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
            from neustream.backends.vllm.llava import prepare_vllm

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
            from neustream.backends.vllm.llava import load_image

            prompt = TokensPrompt(
                prompt_token_ids=[self.program.config["image_token_index"], *ids],
                multi_modal_data={"image": load_image(image)},
                # A unique id per request: vLLM otherwise shares encoder outputs between
                # requests with the same image (the same fallback PNG), skipping the encoder.
                multi_modal_uuids={"image": [f"{request_id}#{self._n}"]})
            extra = {"images": 1, **(extra or {})}
        try:
            request_options(extra)  # the scheduler's check, raised here rather than logged there
        except ValueError as e:
            raise ValueError(f"request {request_id}: {e}") from None
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
