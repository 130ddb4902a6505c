"""Tensor-parallel OPT (neustream.profiling.tp) on CPU: gloo, two processes, the tiny config."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from neustream.catalog.llm import get_llm_program  # noqa: E402
from neustream.latency import LlmLatencyModel  # noqa: E402
from neustream.profiling import tp  # noqa: E402
from neustream.profiling.opt import forward_step  # noqa: E402

TINY = get_llm_program("opt-tiny")
CPU = torch.device("cpu")
PROMPT, BATCH = 5, 2


def _ids():
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, TINY.vocab_size, (BATCH, PROMPT), generator=g)
    step = torch.randint(3, TINY.vocab_size, (BATCH, 1), generator=g)
    return prompt, step


def _two_steps(model, step_fn, cache_fn):
    """Logits of a prefill of the prompt, then of one decode step after it."""
    prompt, step = _ids()
    cache = cache_fn(model, BATCH, PROMPT + 1, CPU, torch.float32, fill=False)
    with torch.inference_mode():
        return step_fn(model, prompt, 0, cache), step_fn(model, step, PROMPT, cache)


def _tp_worker(rank, world, device, port, out):
    import torch.distributed as dist

    tp.init_rank(rank, world, device, port)
    try:
        model = tp.build_shard(TINY, rank, world, CPU, torch.float32, seed=0)
        prefill, decode = _two_steps(model, tp.forward_step_tp, tp.kv_cache_tp)
        if rank == 0:
            torch.save({"prefill": prefill, "decode": decode, "heads": model.shard.heads}, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_shards_are_slices_of_one_model():
    full = tp.build_shard(TINY, 0, 1, CPU, torch.float32, seed=0)
    one = tp.build_shard(TINY, 1, 2, CPU, torch.float32, seed=0)
    fl, sl = full.model.decoder.layers[2], one.model.decoder.layers[2]
    h, f = TINY.config["hidden_size"], TINY.config["ffn_dim"]
    assert torch.equal(sl.self_attn.k_proj.weight, fl.self_attn.k_proj.weight[h // 2:])
    assert torch.equal(sl.self_attn.k_proj.bias, fl.self_attn.k_proj.bias[h // 2:])
    assert torch.equal(sl.fc2.weight, fl.fc2.weight[:, f // 2:])
    assert torch.equal(sl.fc2.bias, fl.fc2.bias)  # added once, after the all-reduce
    emb = one.model.decoder.embed_tokens.weight
    assert emb.shape == (TINY.vocab_size // 2, h) and one.lm_head.weight is emb
    assert torch.equal(emb, full.model.decoder.embed_tokens.weight[TINY.vocab_size // 2:])
    assert fl.self_attn.q_proj.bias.abs().sum() > 0  # biases are drawn, so slicing them is tested
    # another seed is another model
    other = tp.build_shard(TINY, 0, 1, CPU, torch.float32, seed=1)
    assert not torch.equal(other.model.decoder.layers[2].fc1.weight, fl.fc1.weight)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="must divide"):
        tp.build_shard(TINY, 0, 3, CPU, torch.float32)
    with pytest.raises(ValueError, match="for OPT configs"):
        tp.build_shard(get_llm_program("llama-tiny"), 0, 2, CPU, torch.float32)
    with pytest.raises(ValueError, match="rank"):
        tp.build_shard(TINY, 2, 2, CPU, torch.float32)


def test_two_ranks_match_one_process(tmp_path):
    full = tp.build_shard(TINY, 0, 1, CPU, torch.float32, seed=0)
    ref_prefill, ref_decode = _two_steps(full, forward_step, tp.kv_cache_tp)
    # The shard code path at world 1 is the single-process step itself.
    one_prefill, one_decode = _two_steps(full, tp.forward_step_tp, tp.kv_cache_tp)
    torch.testing.assert_close(one_prefill, ref_prefill)
    torch.testing.assert_close(one_decode, ref_decode)
    out = tmp_path / "logits.pt"
    tp.spawn(_tp_worker, 2, "cpu", str(out))
    got = torch.load(out)
    assert got["heads"] == TINY.config["num_attention_heads"] // 2
    assert got["prefill"].shape == ref_prefill.shape == (BATCH, 1, TINY.vocab_size)
    torch.testing.assert_close(got["prefill"], ref_prefill, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["decode"], ref_decode, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got["decode"], got["prefill"])  # the decode step is a new token


def test_tp_profile_writes_a_loadable_table(tmp_path):
    out = tmp_path / "opt-tiny.csv"
    tp.profile_tp("opt-tiny", 2, out, device="cpu", dtype="fp32", warmup=0, repeats=1,
                  lengths=(8, 16), batches=(1, 2), decode_batches=(1, 2), contexts=(16,))
    table = LlmLatencyModel.from_csv(out, TINY)
    assert len(table.prefill_rows) == 4 and table.decode_sizes == (1, 2)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["tensor_parallel"] == side["world_size"] == 2
    assert side["backend"] == "gloo" and side["device_names"] == ["cpu", "cpu"]
    assert side["weights_gib_all_gpus"] > side["weights_gib_per_gpu"] > 0
    assert side["env"]["NCCL_NVLS_ENABLE"] == "0"
    assert "fit" in side
