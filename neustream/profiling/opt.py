"""OPT latency tables with transformers, for GPU machines without vLLM.

``profile_transformers`` measures the two latency-table modules with transformers on one GPU (the
GPU machines have no vLLM): random fp16 weights made on the device from the same config.
NOTE on the method, meant to approximate vLLM's engine steps:
- the model is transformers' OPTForCausalLM; ``forward_step`` runs its layers with a static KV
  cache of our own (fixed shapes, so decode steps can be captured in CUDA graphs), SDPA
  attention, and logits for the last position only;
- prefill: one step of ``b`` prompts of ``L`` tokens (dense, no padding) into a fresh cache of L
  slots: what vLLM's prefill-only step computes (vLLM packs the prompts into one sequence; for
  equal lengths the FLOPs are the same);
- decode: one step of one token for each of ``b`` sequences at position ``c`` of a cache of
  ``c + 1`` random slots, so attention spans c + 1 tokens, replayed from a CUDA graph (vLLM also
  replays decode steps from CUDA graphs); the row's ``tokens`` is the batch's total context b x (c + 1);
- each point: warm-up calls, then the median of timed calls. No sampling and no scheduler or
  output processing: vLLM adds about 1-3 ms of host work per step on top.
``python -m neustream.cli profile --workload opt-13b --engine transformers --device cuda --out
T.csv`` runs it on a bare GPU machine (torch, transformers, numpy and pandas are enough);
``--tensor-parallel N`` hands off to profiling/tp.py (Megatron-style shards over N GPUs in N
spawned processes, e.g. OPT-66B at N=2 or 4).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from neustream.catalog.llm import get_llm_program
from neustream.profiling.timer import time_calls

# Profiling grids (tokens are per prompt for prefill, per sequence for decode).
PREFILL_LENGTHS = (32, 64, 128, 256, 512, 1024, 2048)
PREFILL_BATCHES = (1, 2, 4, 8, 16, 32, 64)
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DECODE_CONTEXTS = (128, 512, 1024, 1536)


def prefill_grid(max_tokens: int, max_len: int, lengths=PREFILL_LENGTHS, batches=PREFILL_BATCHES):
    """(b, L) pairs: every length with batch 1, and batches of equal prompts up to max_tokens."""
    return [(b, L) for L in lengths if L <= max_len for b in batches if b * L <= max_tokens]


def decode_grid(max_context_tokens: int, max_batch: int, max_len: int,
                batches=DECODE_BATCHES, contexts=DECODE_CONTEXTS):
    return [(b, c) for c in contexts if c < max_len for b in batches
            if b <= max_batch and b * c <= max_context_tokens]


def build_model(program, device, dtype):
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(**{k: v for k, v in program.config.items() if k != "model_type"})
    return build_on_device(OPTForCausalLM, cfg, device, dtype).to(dtype)


def build_on_device(cls, cfg, device, dtype):
    """``cls(cfg)`` made straight on ``device`` in ``dtype`` (an fp32 copy of a 7B-66B model
    would waste time or not fit), seed 0, eval mode. Buffers a model makes in fp32 on purpose
    (rotary inv_freq) stay fp32."""
    import torch

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(cfg)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def capture_graph(fn, device):
    """A CUDA graph of ``fn``: two warm-up calls and the capture on a side stream."""
    import torch

    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # on ``device``'s own stream: torch's default capture stream is made once, on whichever
    # GPU was current at the first capture of the process
    with torch.cuda.graph(graph, stream=stream):
        fn()
    return graph


def kv_cache(model, batch: int, length: int, device, dtype, fill: bool):
    """Per-layer (keys, values) tensors [batch, heads, length, head_dim]; random if ``fill``."""
    c = model.config
    heads, dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    return layer_caches(c.num_hidden_layers, batch, heads, length, dim, device, dtype, fill)


def layer_caches(layers: int, batch: int, heads: int, length: int, dim: int, device, dtype,
                 fill: bool):
    """Per-layer (keys, values) tensors [batch, heads, length, dim]; random if ``fill`` (a
    decode step then attends to values, not to uninitialised memory)."""
    import torch

    out = []
    for _ in range(layers):
        k = torch.empty(batch, heads, length, dim, device=device, dtype=dtype)
        v = torch.empty_like(k)
        if fill:
            k.normal_(0, 1)
            v.normal_(0, 1)
        out.append((k, v))
    return out


def forward_step(model, ids, start: int, cache):
    """One engine step of the transformers OPT model with our own static KV cache: the tokens
    ``ids`` [b, T] sit at positions start..start+T-1, their keys and values are written into
    ``cache`` and attention spans positions 0..start+T-1 (causal within the step); returns the
    logits of the last position only, as an engine computes them for sampling. The weights and
    layers are transformers' (OPTForCausalLM); only the cache handling is ours, so the shapes
    stay static for CUDA graphs whatever the transformers version's Cache API is."""
    import torch
    import torch.nn.functional as F

    dec = model.model.decoder
    b, t = ids.shape
    x = dec.embed_tokens(ids)
    if getattr(dec, "project_in", None) is not None:
        x = dec.project_in(x)
    pos = torch.arange(start, start + t, device=ids.device)
    x = x + dec.embed_positions.weight[pos + getattr(dec.embed_positions, "offset", 2)]
    for layer, (kc, vc) in zip(dec.layers, cache):
        attn = layer.self_attn
        heads = getattr(attn, "num_heads", model.config.num_attention_heads)
        h = layer.self_attn_layer_norm(x)
        q = attn.q_proj(h).view(b, t, heads, -1).transpose(1, 2)
        kc[:, :, start:start + t] = attn.k_proj(h).view(b, t, heads, -1).transpose(1, 2)
        vc[:, :, start:start + t] = attn.v_proj(h).view(b, t, heads, -1).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, kc[:, :, :start + t], vc[:, :, :start + t],
                                           is_causal=t > 1 and start == 0)
        x = x + attn.out_proj(a.transpose(1, 2).reshape(b, t, -1))
        h = layer.final_layer_norm(x)
        x = x + layer.fc2(F.relu(layer.fc1(h)))
    x = x[:, -1:]
    if getattr(dec, "final_layer_norm", None) is not None:
        x = dec.final_layer_norm(x)
    if getattr(dec, "project_out", None) is not None:
        x = dec.project_out(x)
    return model.lm_head(x)


def profile_transformers(workload: str, *, device: str = "cuda", dtype: str = "fp16",
                         warmup: int = 2, repeats: int = 5, max_prefill_tokens: int = 8192,
                         max_context_tokens: int = 32768, graphs: bool = True,
                         lengths=PREFILL_LENGTHS, batches=PREFILL_BATCHES,
                         decode_batches=DECODE_BATCHES, contexts=DECODE_CONTEXTS,
                         log=sys.stderr):
    """Measure prefill and decode steps of ``workload``; a DataFrame (module, batch_size,
    tokens, latency_s) with ``attrs["provenance"]``."""
    import pandas as pd
    import torch
    import transformers

    program = get_llm_program(workload)
    dev = torch.device(device)
    tdtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    graphs = graphs and dev.type == "cuda"
    t0 = time.perf_counter()
    model = build_model(program, dev, tdtype)
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"[profile-llm] {workload}: {weights_bytes / 2**30:.1f} GiB of weights built in "
          f"{time.perf_counter() - t0:.1f} s on {dev}", file=log, flush=True)
    vocab = program.config["vocab_size"]
    gen = torch.Generator(device=dev).manual_seed(0)
    rows = []
    graph_failures: list[str] = []
    with torch.inference_mode():
        for b, L in prefill_grid(max_prefill_tokens, program.max_model_len, lengths, batches):
            ids = torch.randint(3, vocab, (b, L), device=dev, generator=gen)
            cache = kv_cache(model, b, L, dev, tdtype, fill=False)

            def prefill():
                forward_step(model, ids, 0, cache)

            t = time_calls(prefill, repeats=repeats, warmup=warmup, device=dev)
            rows.append(("prefill", b, b * L, statistics.median(t)))
            print(f"[profile-llm] prefill b={b} L={L}: {rows[-1][3] * 1e3:.2f} ms", file=log, flush=True)
            del cache
        for b, c in decode_grid(max_context_tokens, program.max_num_seqs, program.max_model_len,
                                decode_batches, contexts):
            cache = kv_cache(model, b, c + 1, dev, tdtype, fill=True)
            ids = torch.randint(3, vocab, (b, 1), device=dev, generator=gen)

            def decode():
                return forward_step(model, ids, c, cache)

            fn, graph = decode, None
            if graphs:
                try:
                    graph = capture_graph(decode, dev)
                    fn = graph.replay
                except Exception as e:  # keep measuring, eagerly, and say so in the sidecar
                    graph_failures.append(f"b={b} c={c}: {type(e).__name__}: {e}"[:300])
                    graph = None
                    torch.cuda.synchronize(dev)
            t = time_calls(fn, repeats=repeats, warmup=warmup, device=dev)
            rows.append(("decode", b, b * (c + 1), statistics.median(t)))
            print(f"[profile-llm] decode b={b} c={c}{'' if graph is not None or not graphs else ' (eager)'}: "
                  f"{rows[-1][3] * 1e3:.2f} ms", file=log, flush=True)
            del cache, graph, fn
    df = pd.DataFrame(rows, columns=["module", "batch_size", "tokens", "latency_s"])
    kv_tokens = None
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory
        # vLLM's default gpu_memory_utilization 0.9, less weights and an activation reserve of
        # 2 GiB: what is left holds KV blocks (one GPU; tensor parallelism not modelled).
        kv_tokens = int((0.9 * total - weights_bytes - 2 * 2**30) // program.kv_bytes_per_token)
    df.attrs["provenance"] = {
        "workload": workload, "engine": "transformers", "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": dtype, "weights": "random (from the published config, made on the device)",
        "weights_gib": weights_bytes / 2**30, "kv_capacity_tokens": kv_tokens,
        "cuda_graph_failures": graph_failures,
        "method": {
            "model": "transformers OPTForCausalLM layers run by neustream.profiling.opt.forward_step "
                     "(static KV cache of our own, SDPA, logits of the last position only)",
            "prefill": "one step of b equal prompts of L tokens into a fresh cache; tokens = b x L",
            "decode": "one step of one token per sequence at position c of a cache of c+1 random "
                      "slots, replayed from a CUDA graph; tokens = b x (c+1)" if graphs else
                      "one eager step of one token per sequence at position c; tokens = b x (c+1)",
            "timer": "torch.cuda.Event pairs, synchronized per call" if dev.type == "cuda"
            else "time.perf_counter",
            "statistic": f"median of {repeats} timed calls after {warmup} warm-up calls",
            "mode": "torch.inference_mode, eval",
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "cuda": torch.version.cuda, "python": sys.version.split()[0]},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host_cpu_count": os.cpu_count(),
    }
    return df
