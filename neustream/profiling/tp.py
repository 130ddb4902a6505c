"""Tensor-parallel OPT for the transformers profiler: OPT-66B over 2 or 4 GPUs.

NOTE on the method (Megatron-style, as vLLM shards OPT at tensor_parallel_size=N):
- rank r of N holds, per layer, q/k/v_proj and fc1 *column-parallel* (rows r*h/N..(r+1)*h/N of
  the [out, in] weight: the rank's heads, its slice of the FFN) and out_proj and fc2
  *row-parallel* (the matching slice of input features), each followed by one all-reduce; the
  row-parallel biases are added once, after the all-reduce; LayerNorms and the learned position
  table are replicated;
- embed_tokens (tied to lm_head) is *vocab-parallel*, as vLLM's VocabParallelEmbedding and
  ParallelLMHead: rank r holds vocabulary rows r*V/N.. (padded to a multiple of N); the lookup
  masks ids outside the slice and all-reduces, and the logits of the slice are all-gathered;
  a step costs 2 all-reduces per layer, one more for the embedding and one all-gather;
- every weight is drawn from a generator seeded by (seed, parameter name) at its *full* shape
  on the rank's device, in the target dtype, and only the rank's slice is kept: the shards of
  any N are slices of one model (N=1 gives the whole model), and the transient peak is one full
  tensor (the largest, OPT-66B's embedding, is 0.93 GB in fp16), never the whole model;
- the KV cache of a rank holds its heads only; ``forward_step_tp`` has opt.forward_step's
  contract and returns the full logits on every rank;
- ``profile_tp`` spawns N processes (torch.multiprocessing.spawn; no torchrun needed):
  backend nccl on cuda (rank r on cuda:r) and gloo on cpu, MASTER_ADDR=127.0.0.1 and a free
  port, NVLink multicast off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
  NVSHMEM_DISABLE_NVLS=1, forced: the lent multi-GPU hosts require it). All ranks run every
  step in lock-step (the collectives pair them); each times its calls with
  timer.time_calls, the row keeps the largest median over ranks, and rank 0 writes the table.
CUDA graphs with NCCL: the communicator is created eagerly (init_process_group with
``device_id``) and used once before any capture; warm-up and capture run on a side stream, every
rank captures the same step (same collectives in the same order) and replays it in lock-step;
if any rank fails to capture, all ranks measure that point eagerly (decided by an all-reduce).
vLLM's custom P2P all-reduce for small tensors is not modelled (NCCL only), nor its fused QKV.
``python -m neustream.cli profile --workload opt-66b --engine transformers --device cuda
--tensor-parallel 2 --out T.csv``.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time
import zlib
from dataclasses import dataclass

from neustream.backends.devices import NCCL_SAFE_ENV
from neustream.catalog.llm import get_llm_program
from neustream.profiling.opt import (
    DECODE_BATCHES,
    DECODE_CONTEXTS,
    PREFILL_BATCHES,
    PREFILL_LENGTHS,
    capture_graph,
    decode_grid,
    layer_caches,
    prefill_grid,
)
from neustream.profiling.timer import time_calls

COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "fc1")
ROW_PARALLEL = ("out_proj", "fc2")
INIT_STD = 0.02  # OPT's init_std


@dataclass(frozen=True)
class Shard:
    """Where a model's shard sits: rank of world, its heads, its vocabulary rows."""

    rank: int
    world: int
    heads: int  # attention heads on this rank
    vocab: int  # full vocabulary size (logits are trimmed to it)
    vocab_start: int  # this rank's rows of the (padded) embedding: [vocab_start, vocab_end)
    vocab_end: int


def _check(program, world: int) -> None:
    if program.arch != "opt":
        raise ValueError(f"tensor-parallel profiling is for OPT configs, not {program.arch} ({program.name})")
    c = program.config
    if world < 1:
        raise ValueError(f"tensor_parallel must be >= 1, got {world}")
    if c["num_attention_heads"] % world or c["ffn_dim"] % world:
        raise ValueError(f"tensor_parallel={world} must divide {program.name}'s "
                         f"{c['num_attention_heads']} heads and ffn_dim {c['ffn_dim']}")
    if c.get("word_embed_proj_dim", c["hidden_size"]) != c["hidden_size"]:
        raise ValueError(f"{program.name}: word_embed_proj_dim != hidden_size is not supported")


def _full_tensor(name: str, shape, seed: int, device, dtype):
    """The full-size value of parameter ``name``: LayerNorms 1 and 0, the rest N(0, 0.02)."""
    import torch

    if "layer_norm" in name:
        return (torch.ones if name.endswith("weight") else torch.zeros)(shape, device=device, dtype=dtype)
    g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.randn(shape, generator=g, device=device, dtype=dtype).mul_(INIT_STD)


def _slice(name: str, full, rank: int, world: int, vocab_rows: int):
    """This rank's part of a full parameter (a copy, so the full tensor can be freed)."""
    import torch.nn.functional as F

    parts = name.split(".")
    module, kind = parts[-2], parts[-1]
    if module in COLUMN_PARALLEL:  # output features; bias alike
        n = full.shape[0] // world
        return full[rank * n:(rank + 1) * n].clone()
    if module in ROW_PARALLEL:  # input features; the bias stays whole (added after all-reduce)
        if kind == "bias":
            return full
        n = full.shape[1] // world
        return full[:, rank * n:(rank + 1) * n].clone()
    if module == "embed_tokens":  # vocab-parallel, zero rows past the vocabulary
        part = full[rank * vocab_rows:(rank + 1) * vocab_rows]
        return F.pad(part, (0, 0, 0, vocab_rows - part.shape[0])).clone()
    return full  # replicated


def build_shard(program, rank: int, world: int, device, dtype, seed: int = 0):
    """Rank ``rank``'s shard of ``program``'s OPTForCausalLM, built on ``device`` in ``dtype``:
    transformers' modules with sliced parameters (module docstring); ``model.shard`` says which.
    With world=1 it is the whole model, usable with opt.forward_step."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    _check(program, world)
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    cfg = OPTConfig(**{k: v for k, v in program.config.items() if k != "model_type"})
    with torch.device("meta"):  # the skeleton only: no memory anywhere
        model = OPTForCausalLM(cfg)
    vocab_rows = -(-cfg.vocab_size // world)
    with torch.no_grad():
        for name, p in list(model.named_parameters()):
            full = _full_tensor(name, p.shape, seed, device, dtype)
            mod_name, attr = name.rsplit(".", 1)
            part = _slice(name, full, rank, world, vocab_rows)
            del full
            setattr(model.get_submodule(mod_name), attr, torch.nn.Parameter(part, requires_grad=False))
    dec = model.model.decoder
    model.lm_head.weight = dec.embed_tokens.weight  # tied, as in OPT
    for layer in dec.layers:  # keep the modules' own records true
        for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                  layer.self_attn.out_proj, layer.fc1, layer.fc2):
            m.out_features, m.in_features = m.weight.shape
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"build_shard left tensors on the meta device: {left[:3]}")
    model.shard = Shard(rank, world, cfg.num_attention_heads // world, cfg.vocab_size,
                        rank * vocab_rows, (rank + 1) * vocab_rows)
    return model.eval()


def kv_cache_tp(model, batch: int, length: int, device, dtype, fill: bool):
    """Per-layer (keys, values) [batch, heads/N, length, head_dim]: this rank's heads only."""
    c = model.config
    dim = c.hidden_size // c.num_attention_heads
    return layer_caches(c.num_hidden_layers, batch, model.shard.heads, length, dim, device, dtype,
                        fill)


def _all_gather(out, x):
    import torch.distributed as dist

    # all_gather_into_tensor was renamed all_gather_single (torch 2.13); same contract.
    (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(out, x)


def _row_parallel(lin, x, world: int):
    import torch.distributed as dist
    import torch.nn.functional as F

    y = F.linear(x, lin.weight)
    if world > 1:
        dist.all_reduce(y)
    return y + lin.bias if lin.bias is not None else y


def forward_step_tp(model, ids, start: int, cache):
    """opt.forward_step for a shard (build_shard) inside an initialized process group: every
    rank of the group calls it with the same ``ids`` and ``start``; ``cache`` holds this rank's
    heads (kv_cache_tp); returns the full logits of the last position [b, 1, vocab] on every
    rank. Collectives run on the current stream's device, so a decode step can be captured in a
    CUDA graph with NCCL (module docstring)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    sh = model.shard
    dec = model.model.decoder
    b, t = ids.shape
    # Vocab-parallel lookup: rows outside this rank's slice contribute zeros, then sum.
    local = ids - sh.vocab_start
    inside = (local >= 0) & (local < sh.vocab_end - sh.vocab_start)
    mask = inside.unsqueeze(-1).to(dec.embed_tokens.weight.dtype)
    x = dec.embed_tokens(local.masked_fill(~inside, 0)) * mask
    if sh.world > 1:
        dist.all_reduce(x)
    pos = torch.arange(start, start + t, device=ids.device)
    x = x + dec.embed_positions.weight[pos + getattr(dec.embed_positions, "offset", 2)]
    for layer, (kc, vc) in zip(dec.layers, cache):
        attn = layer.self_attn
        h = layer.self_attn_layer_norm(x)
        q = attn.q_proj(h).view(b, t, sh.heads, -1).transpose(1, 2)
        kc[:, :, start:start + t] = attn.k_proj(h).view(b, t, sh.heads, -1).transpose(1, 2)
        vc[:, :, start:start + t] = attn.v_proj(h).view(b, t, sh.heads, -1).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, kc[:, :, :start + t], vc[:, :, :start + t],
                                           is_causal=t > 1 and start == 0)
        x = x + _row_parallel(attn.out_proj, a.transpose(1, 2).reshape(b, t, -1), sh.world)
        h = layer.final_layer_norm(x)
        x = x + _row_parallel(layer.fc2, F.relu(layer.fc1(h)), sh.world)
    x = dec.final_layer_norm(x[:, -1:])
    part = model.lm_head(x)  # [b, 1, V/N]: this rank's slice of the vocabulary
    if sh.world == 1:
        return part[..., :sh.vocab]
    slices = torch.empty((sh.world * b, 1, part.shape[-1]), device=part.device, dtype=part.dtype)
    _all_gather(slices, part.contiguous())  # rank-major along dim 0
    return slices.view(sh.world, b, 1, -1).permute(1, 2, 0, 3).reshape(b, 1, -1)[..., :sh.vocab]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_rank(rank: int, world: int, device: str, port: int):
    """Join the group (nccl on cuda, rank r on cuda:r; gloo on cpu); the rank's torch.device."""
    import torch
    import torch.distributed as dist

    os.environ.update(NCCL_SAFE_ENV)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device == "cuda":
        dev = torch.device("cuda", rank)
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=dev)
    else:
        dev = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    warm = torch.ones(1, device=dev)
    dist.all_reduce(warm)  # the communicator exists before any graph capture
    return dev


def spawn(fn, world: int, device: str, *args) -> None:
    """Run ``fn(rank, world, device, port, *args)`` in ``world`` processes (spawn start)."""
    import torch
    import torch.multiprocessing as mp

    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu, got {device!r}")
    if device == "cuda" and torch.cuda.device_count() < world:
        raise ValueError(f"tensor_parallel={world} needs {world} GPUs, found {torch.cuda.device_count()}")
    os.environ.update(NCCL_SAFE_ENV)  # children inherit it
    mp.spawn(_run_then_exit, args=(fn, world, device, free_port(), *args), nprocs=world,
             join=True)


def _run_then_exit(rank: int, fn, *args) -> None:
    """A rank's body, then an immediate exit: once ``fn`` returned (its group destroyed), the
    process skips interpreter and C++ teardown, where gloo's threads can still be unwinding
    and abort the process ("terminate called without an active exception", seen on 2-core CI
    machines). An exception in ``fn`` propagates as usual, so mp.spawn reports it."""
    import sys

    fn(rank, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _capture(fn, dev):
    """A CUDA graph of ``fn`` (warm-up and capture on a side stream), or the error text."""
    import torch

    try:
        return capture_graph(fn, dev), None
    except Exception as e:  # measured eagerly instead, and said so in the sidecar
        torch.cuda.synchronize(dev)
        return None, f"{type(e).__name__}: {e}"[:300]


def _all(op, value: float, dev) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], device=dev, dtype=torch.float64)
    dist.all_reduce(t, op=op)
    return float(t.item())


def _profile_worker(rank: int, world: int, device: str, port: int, opts: dict) -> None:
    import pandas as pd
    import torch
    import torch.distributed as dist
    import transformers

    from neustream.profiling.tables import write_llm_table

    dev = init_rank(rank, world, device, port)

    def say(msg: str) -> None:
        if rank == 0:
            print(f"[profile-llm tp={world}] {msg}", file=sys.stderr, flush=True)

    try:
        program = get_llm_program(opts["workload"])
        tdtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[opts["dtype"]]
        graphs = opts["graphs"] and dev.type == "cuda"
        t0 = time.perf_counter()
        model = build_shard(program, rank, world, dev, tdtype, seed=opts["seed"])
        weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        say(f"{program.name}: {weights_bytes / 2**30:.2f} GiB of weights per rank built in "
            f"{time.perf_counter() - t0:.1f} s on {dev}")
        vocab = program.config["vocab_size"]
        gen = torch.Generator(device=dev).manual_seed(0)  # same seed: every rank gets the same ids
        rows, failures = [], []

        def measure(fn):  # the slowest rank's median: a step ends when its slowest rank does
            t = statistics.median(time_calls(fn, repeats=opts["repeats"], warmup=opts["warmup"],
                                             device=dev))
            return _all(dist.ReduceOp.MAX, t, dev)

        with torch.inference_mode():
            for b, L in prefill_grid(opts["max_prefill_tokens"], program.max_model_len,
                                     opts["lengths"], opts["batches"]):
                ids = torch.randint(3, vocab, (b, L), device=dev, generator=gen)
                cache = kv_cache_tp(model, b, L, dev, tdtype, fill=False)
                rows.append(("prefill", b, b * L, measure(lambda: forward_step_tp(model, ids, 0, cache))))
                say(f"prefill b={b} L={L}: {rows[-1][3] * 1e3:.2f} ms")
                cache = None  # free it before the next point
            for b, c in decode_grid(opts["max_context_tokens"], program.max_num_seqs, program.max_model_len,
                                    opts["decode_batches"], opts["contexts"]):
                cache = kv_cache_tp(model, b, c + 1, dev, tdtype, fill=True)
                ids = torch.randint(3, vocab, (b, 1), device=dev, generator=gen)

                def decode():
                    return forward_step_tp(model, ids, c, cache)

                fn, graph = decode, None
                if graphs:
                    graph, err = _capture(decode, dev)
                    if _all(dist.ReduceOp.MIN, float(graph is not None), dev) < 1:  # all or none
                        failures.append(f"b={b} c={c} rank {rank}: {err or 'another rank failed'}")
                        graph = None
                    else:
                        fn = graph.replay
                rows.append(("decode", b, b * (c + 1), measure(fn)))
                eager = " (eager)" if graphs and graph is None else ""
                say(f"decode b={b} c={c}{eager}: {rows[-1][3] * 1e3:.2f} ms")
                cache = graph = fn = None
        # KV capacity of the replica as vLLM sizes it: each rank keeps 0.9 of its memory, less
        # its weights and a 2 GiB activation reserve, for its heads' share of every token's KV;
        # the replica holds as many tokens as its fullest rank (= free bytes summed over ranks
        # / kv_bytes_per_token when ranks are alike).
        kv_tokens = None
        if dev.type == "cuda":
            free = 0.9 * torch.cuda.get_device_properties(dev).total_memory - weights_bytes - 2 * 2**30
            kv_tokens = int(_all(dist.ReduceOp.MIN, free // (program.kv_bytes_per_token / world), dev))
        total_bytes = _all(dist.ReduceOp.SUM, float(weights_bytes), dev)
        names = [None] * world
        dist.all_gather_object(names, torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu")
        if rank == 0:
            df = pd.DataFrame(rows, columns=["module", "batch_size", "tokens", "latency_s"])
            df.attrs["provenance"] = {
                "workload": program.name, "engine": "transformers", "device": device,
                "device_name": names[0], "device_names": names, "dtype": opts["dtype"],
                "tensor_parallel": world, "world_size": world, "backend": dist.get_backend(),
                "weights": f"random N(0, {INIT_STD}) drawn per parameter from seed {opts['seed']}, "
                           "each rank keeping its slice (made on the device)",
                "weights_gib": weights_bytes / 2**30, "weights_gib_per_gpu": weights_bytes / 2**30,
                "weights_gib_all_gpus": total_bytes / 2**30, "kv_capacity_tokens": kv_tokens,
                "cuda_graph_failures": failures,
                "env": {k: os.environ.get(k) for k in NCCL_SAFE_ENV},
                "method": {
                    "model": "transformers OPTForCausalLM modules, Megatron-style shards (neustream."
                             "profiling.tp): q/k/v/fc1 column-parallel, out_proj/fc2 row-parallel + "
                             "all-reduce, vocab-parallel tied embedding/lm_head + all-gather",
                    "prefill": "one step of b equal prompts of L tokens into a fresh cache; tokens = b x L",
                    "decode": "one step of one token per sequence at position c of a cache of c+1 "
                              f"random slots{', replayed from a CUDA graph' if graphs else ', eager'}; "
                              "tokens = b x (c+1)",
                    "timer": "torch.cuda.Event pairs per rank, synchronized per call" if dev.type == "cuda"
                    else "time.perf_counter per rank",
                    "statistic": f"median of {opts['repeats']} timed calls after {opts['warmup']} "
                                 "warm-up calls, largest over ranks",
                    "mode": "torch.inference_mode, eval, ranks in lock-step",
                },
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                             "cuda": torch.version.cuda, "nccl": _nccl_version(),
                             "python": sys.version.split()[0]},
                "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host_cpu_count": os.cpu_count(),
            }
            write_llm_table(df, opts["out"], {"command": opts["command"]})
            print(df.to_string(index=False), flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _nccl_version():
    import torch

    try:
        return ".".join(map(str, torch.cuda.nccl.version()))
    except Exception:
        return None


def profile_tp(workload: str, tensor_parallel: int, out, *, device: str = "cuda", dtype: str = "fp16",
               warmup: int = 2, repeats: int = 5, max_prefill_tokens: int = 8192,
               max_context_tokens: int = 32768, graphs: bool = True, seed: int = 0,
               lengths=PREFILL_LENGTHS, batches=PREFILL_BATCHES, decode_batches=DECODE_BATCHES,
               contexts=DECODE_CONTEXTS, command: str = "") -> str:
    """Profile ``workload`` at tensor parallelism N in N spawned processes; rank 0 writes the
    table ``out`` (CSV + sidecar JSON, profiling/tables.write_llm_table). Returns ``out``."""
    _check(get_llm_program(workload), tensor_parallel)
    if dtype not in ("fp16", "bf16", "fp32"):
        raise ValueError(f"dtype must be fp16, bf16 or fp32, got {dtype!r}")
    opts = dict(workload=workload, dtype=dtype, warmup=warmup, repeats=repeats,
                max_prefill_tokens=max_prefill_tokens, max_context_tokens=max_context_tokens,
                graphs=graphs, seed=seed, lengths=tuple(lengths), batches=tuple(batches),
                decode_batches=tuple(decode_batches), contexts=tuple(contexts), out=str(out),
                command=command or f"profile_tp({workload!r}, {tensor_parallel})")
    spawn(_profile_worker, tensor_parallel, device, opts)
    return str(out)
