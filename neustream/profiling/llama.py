"""Llama-family latency tables with transformers: CodeLlama-7B and LLaVA-1.5-7B on one GPU.

The GPU machines have no vLLM, so, as profiling/opt.py does for OPT, ``profile_llama`` runs
transformers' own Llama layers (random weights made on the device from the catalog config,
catalog.llm.LLM_PROGRAMS) under a driver of ours and times engine steps.
NOTE on the method, meant to approximate vLLM's engine steps:
- ``forward_step`` runs the decoder layers piecewise with a static KV cache of our own (fixed
  shapes, so decode steps can be captured in CUDA graphs): embeddings, rotary embeddings from the
  model's ``rotary_emb`` for positions start..start+T-1, RMSNorm, q/k/v/o projections, SDPA over
  positions 0..start+T-1 (causal within the step), the SiLU MLP, final norm, and logits of the
  last position only (what an engine samples from);
- prefill: one step of ``b`` prompts of ``L`` tokens into a fresh cache (vLLM packs them into
  one sequence; for equal lengths the FLOPs are the same); tokens = b x L, within vLLM's budget
  of max_num_batched_tokens (4096 for these workloads);
- decode: one token for each of ``b`` sequences at position ``c`` of a cache of c + 1 random
  slots, replayed from a CUDA graph (vLLM replays decode steps too); tokens = b x (c + 1);
- LLaVA's language model is a Llama, and an image prompt prefills as a text prompt of the same
  token count (the image features replace token embeddings), so its prefill and decode rows are
  measured with token ids, as the artifact did (multiagent.md section 4). The CLIP vision tower
  (up to ``vision_feature_layer``, CLS dropped) and the projector are the ``vision`` module:
  rows ``vision, b images, b x image_tokens, seconds``, run eagerly as vLLM runs its encoder;
- each point: warm-up calls, then the median of timed calls; no sampling, scheduling or output
  processing (vLLM adds about 1-3 ms of host work per step).
``python -m neustream.cli profile --workload codellama-7b --engine transformers --device cuda
--out T.csv`` runs on a bare GPU machine (torch, transformers, numpy and pandas are enough).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from neustream.catalog.llm import get_llm_program, image_tokens
from neustream.profiling.opt import build_on_device, capture_graph, layer_caches
from neustream.profiling.timer import time_calls

# Profiling grids (tokens are per prompt for prefill, per sequence for decode).
PREFILL_LENGTHS = (32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
PREFILL_BATCHES = (1, 2, 4, 8, 16)
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DECODE_CONTEXTS = (128, 512, 1024, 2048, 3000)
VISION_BATCHES = (1, 2, 4, 8)
DTYPES = ("fp16", "bf16", "fp32")


def _torch_dtype(dtype):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return table[dtype]


def _program(program):
    program = get_llm_program(program) if isinstance(program, str) else program
    if program.arch not in ("llama", "llava"):
        raise ValueError(f"workload {program.name!r} is {program.arch}, not llama or llava "
                         "(OPT models are profiled by neustream.profiling.opt)")
    return program


def language_model(model):
    """(the Llama decoder, lm_head) of a LlamaForCausalLM or LlavaForConditionalGeneration."""
    inner = model.model
    lm = getattr(inner, "language_model", inner)
    if not hasattr(lm, "layers"):  # older LLaVA layouts: language_model is a LlamaForCausalLM
        lm = lm.model
    return lm, model.lm_head


def build_model(program, device, dtype):
    """The program's transformers model with random weights, made on ``device`` in ``dtype``."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    program = _program(program)
    tdtype = _torch_dtype(dtype)
    fields = {k: v for k, v in program.config.items() if k != "model_type"}
    cls, cfg = ((LlamaForCausalLM, LlamaConfig(**fields)) if program.arch == "llama"
                else (LlavaForConditionalGeneration, LlavaConfig(**fields)))
    return build_on_device(cls, cfg, device, tdtype)


def kv_cache(model, batch: int, length: int, device, dtype, fill: bool):
    """Per-layer (keys, values) tensors [batch, kv_heads, length, head_dim]; random if ``fill``."""
    lm, _ = language_model(model)
    attn = lm.layers[0].self_attn
    kv_heads = attn.k_proj.out_features // attn.head_dim
    return layer_caches(len(lm.layers), batch, kv_heads, length, attn.head_dim, device, dtype,
                        fill)


def forward_step(model, ids, start: int, cache, *, embeds=None):
    """One engine step: the tokens ``ids`` [b, T] (or their embeddings ``embeds`` [b, T, h],
    e.g. with image features merged in) sit at positions start..start+T-1; their keys and values
    are written into ``cache`` and attention spans positions 0..start+T-1 (causal within the
    step). Returns the logits of the last position, [b, 1, vocab]. Weights and layers are
    transformers'; only the cache handling is ours, so shapes stay static for CUDA graphs."""
    import torch
    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    lm, head = language_model(model)
    x = lm.embed_tokens(ids) if embeds is None else embeds
    b, t = x.shape[:2]
    if start + t > cache[0][0].shape[2]:
        raise ValueError(f"step needs {start + t} cache slots, the cache has {cache[0][0].shape[2]}")
    pos = torch.arange(start, start + t, device=x.device)[None]
    cos, sin = lm.rotary_emb(x, pos)
    end = start + t
    mask, causal = None, t > 1 and start == 0
    if t > 1 and start > 0:  # a chunk after cached tokens: query i sees keys 0..start+i
        mask = torch.ones(t, end, dtype=torch.bool, device=x.device).tril(start)
    for layer, (kc, vc) in zip(lm.layers, cache):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        kc[:, :, start:end] = k
        vc[:, :, start:end] = attn.v_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
        gqa = {"enable_gqa": True} if q.shape[1] != kc.shape[1] else {}
        a = F.scaled_dot_product_attention(q, kc[:, :, :end], vc[:, :, :end], attn_mask=mask,
                                           is_causal=causal, scale=attn.scaling, **gqa)
        x = x + attn.o_proj(a.transpose(1, 2).reshape(b, t, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return head(lm.norm(x[:, -1:]))


def vision_step(model, pixel_values):
    """LLaVA image features for ``pixel_values`` [b, 3, S, S]: the CLIP tower's hidden states
    after layer ``vision_feature_layer`` (later layers are not run, as in vLLM), CLS dropped for
    the "default" strategy, through the projector: [b, image_tokens, text hidden size]."""
    import torch.nn.functional as F

    cfg = model.config
    if not hasattr(model.model, "vision_tower"):
        raise ValueError(f"vision_step needs a LLaVA model, got {type(model).__name__}")
    tower = model.model.vision_tower
    vm = getattr(tower, "vision_model", tower)  # transformers 4.x nests the transformer
    layers = vm.encoder.layers
    stop = cfg.vision_feature_layer
    if not isinstance(stop, int):
        raise ValueError(f"vision_feature_layer must be one layer index, got {stop!r}")
    stop = stop if stop >= 0 else len(layers) + 1 + stop  # hidden_states[0] is the embeddings
    x = vm.pre_layrnorm(vm.embeddings(pixel_values))
    b, t = x.shape[:2]
    for layer in layers[:stop]:
        attn = layer.self_attn
        h = layer.layer_norm1(x)
        q, k, v = (p(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
                   for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        a = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        x = x + attn.out_proj(a.transpose(1, 2).reshape(b, t, -1))
        x = x + layer.mlp(layer.layer_norm2(x))
    if cfg.vision_feature_select_strategy == "default":
        x = x[:, 1:]
    return model.model.multi_modal_projector(x)


def prefill_grid(max_tokens: int, max_len: int, lengths=PREFILL_LENGTHS, batches=PREFILL_BATCHES):
    """(b, L) pairs: every length with batch 1, and batches of equal prompts up to max_tokens."""
    return [(b, L) for b in batches for L in lengths if L <= max_len and b * L <= max_tokens]


def decode_grid(max_context_tokens: int, max_batch: int, max_len: int,
                batches=DECODE_BATCHES, contexts=DECODE_CONTEXTS):
    """(b, c) pairs whose cache of b x (c + 1) slots fits ``max_context_tokens``."""
    return [(b, c) for c in contexts if c < max_len for b in batches
            if b <= max_batch and b * (c + 1) <= max_context_tokens]


def profile_llama(workload: str, *, device: str = "cuda", dtype: str = "fp16", warmup: int = 2,
                  repeats: int = 5, max_context_tokens: int = 98304, graphs: bool = True,
                  lengths=PREFILL_LENGTHS, batches=PREFILL_BATCHES, decode_batches=DECODE_BATCHES,
                  contexts=DECODE_CONTEXTS, vision_batches=VISION_BATCHES,
                  prefill_graph_tokens: int = 512, log=sys.stderr):
    """Measure prefill, decode (and, for LLaVA, vision) calls of ``workload``; a DataFrame
    (module, batch_size, tokens, latency_s) with ``attrs["provenance"]``."""
    import pandas as pd
    import torch
    import transformers

    program = _program(workload)
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    dev = torch.device(device)
    tdtype = _torch_dtype(dtype)
    graphs = graphs and dev.type == "cuda"
    t0 = time.perf_counter()
    model = build_model(program, dev, tdtype)
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"[profile-llm] {workload}: {weights_bytes / 2**30:.2f} GiB of weights built in "
          f"{time.perf_counter() - t0:.1f} s on {dev}", file=log, flush=True)
    kv_tokens = None
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory
        # vLLM's default gpu_memory_utilization 0.9, less weights and an activation reserve of
        # 2 GiB: what is left holds KV blocks (one GPU).
        kv_tokens = int((0.9 * total - weights_bytes - 2 * 2**30) // program.kv_bytes_per_token)
        max_context_tokens = min(max_context_tokens, kv_tokens)
    gen = torch.Generator(device=dev).manual_seed(0)
    budget = program.max_num_batched_tokens
    rows, graph_failures = [], []
    with torch.inference_mode():
        for b, L in prefill_grid(budget, program.max_model_len, lengths, batches):
            ids = torch.randint(3, program.vocab_size, (b, L), device=dev, generator=gen)
            cache = kv_cache(model, b, L, dev, tdtype, fill=False)

            def prefill():
                return forward_step(model, ids, 0, cache)

            fn, graph, note = prefill, None, ""
            if graphs and b * L <= prefill_graph_tokens:  # as vLLM's piecewise graphs do
                try:
                    graph = capture_graph(prefill, dev)
                    fn, note = graph.replay, " (graph)"
                except Exception as e:
                    graph_failures.append(f"prefill b={b} L={L}: {type(e).__name__}: {e}"[:300])
                    torch.cuda.synchronize(dev)
            t = time_calls(fn, repeats=repeats, warmup=warmup, device=dev)
            rows.append(("prefill", b, b * L, statistics.median(t)))
            print(f"[profile-llm] prefill b={b} L={L}{note}: {rows[-1][3] * 1e3:.2f} ms", file=log,
                  flush=True)
            cache = graph = fn = None  # free it before the next point's cache is made
        for b, c in decode_grid(max_context_tokens, program.max_num_seqs, program.max_model_len,
                                decode_batches, contexts):
            cache = kv_cache(model, b, c + 1, dev, tdtype, fill=True)
            ids = torch.randint(3, program.vocab_size, (b, 1), device=dev, generator=gen)

            def decode():
                return forward_step(model, ids, c, cache)

            fn, graph, note = decode, None, " (eager)" if graphs else ""
            if graphs:
                try:
                    graph = capture_graph(decode, dev)
                    fn, note = graph.replay, ""
                except Exception as e:  # keep measuring, eagerly, and say so in the sidecar
                    graph_failures.append(f"b={b} c={c}: {type(e).__name__}: {e}"[:300])
                    torch.cuda.synchronize(dev)
            t = time_calls(fn, repeats=repeats, warmup=warmup, device=dev)
            rows.append(("decode", b, b * (c + 1), statistics.median(t)))
            print(f"[profile-llm] decode b={b} c={c}{note}: {rows[-1][3] * 1e3:.2f} ms",
                  file=log, flush=True)
            cache = graph = fn = None  # a decode cache can be tens of GiB: free it first
        if program.arch == "llava":
            size = program.config["vision_config"]["image_size"]
            per_image = image_tokens(program.config)
            for b in vision_batches:
                pix = torch.randn(b, 3, size, size, device=dev, generator=gen).to(tdtype)
                t = time_calls(lambda: vision_step(model, pix), repeats=repeats,
                               warmup=warmup, device=dev)
                rows.append(("vision", b, b * per_image, statistics.median(t)))
                print(f"[profile-llm] vision b={b}: {rows[-1][3] * 1e3:.2f} ms", file=log, flush=True)
    df = pd.DataFrame(rows, columns=["module", "batch_size", "tokens", "latency_s"])
    method = {
        "model": f"transformers {type(model).__name__} layers run by "
                 "neustream.profiling.llama.forward_step (static KV cache of our own, rotary "
                 "embeddings from the model's rotary_emb, SDPA, logits of the last position only)",
        "prefill": "one step of b equal prompts of L token ids into a fresh cache; tokens = b x L "
                   f"<= {budget}; " + (f"replayed from a CUDA graph when b x L <= "
                                       f"{prefill_graph_tokens} (vLLM V1 captures piecewise graphs "
                                       "up to 512 tokens), eager above" if graphs else "eager"),
        "decode": ("one step of one token per sequence at position c of a cache of c+1 random "
                   "slots, " + ("replayed from a CUDA graph" if graphs else "eager")
                   + "; tokens = b x (c+1)"),
        "timer": "torch.cuda.Event pairs, synchronized per call" if dev.type == "cuda"
        else "time.perf_counter",
        "statistic": f"median of {repeats} timed calls after {warmup} warm-up calls",
        "mode": "torch.inference_mode, eval",
    }
    if program.arch == "llava":
        method["vision"] = ("eager CLIP tower up to vision_feature_layer, CLS dropped, projector, "
                            f"for b random images; tokens = b x {image_tokens(program.config)}; "
                            "image prompts prefill as text prompts of the same token count")
    df.attrs["provenance"] = {
        "workload": workload, "engine": "transformers", "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(tdtype, "fp32"),
        "weights": "random (from the catalog's published config, made on the device)",
        "weights_gib": weights_bytes / 2**30, "kv_capacity_tokens": kv_tokens,
        "max_context_tokens": max_context_tokens, "cuda_graph_failures": graph_failures,
        "method": method,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "cuda": torch.version.cuda, "python": sys.version.split()[0]},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host_cpu_count": os.cpu_count(),
        "profile_s": round(time.perf_counter() - t0, 1),
    }
    return df
