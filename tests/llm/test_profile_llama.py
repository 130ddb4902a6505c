"""The transformers Llama/LLaVA profiler (tiny configs, CPU): our engine step against
transformers' own forward, the vision features, and a small latency table end to end."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from neustream.catalog.llm import get_llm_program, image_tokens
from neustream.latency import LlmLatencyModel
from neustream.profiling import llama
from neustream.profiling.tables import write_llm_table

CPU = torch.device("cpu")
TOL = 1e-4  # fp32 on CPU: observed differences are about 1e-6 on logits of size ~1


@pytest.fixture(scope="module")
def models():
    return {w: llama.build_model(w, "cpu", "fp32") for w in ("llama-tiny", "llava-tiny")}


def _steps(model, ids, splits):
    """Run ``ids`` through forward_step in chunks ending at ``splits``; logits per chunk."""
    cache = llama.kv_cache(model, ids.shape[0], ids.shape[1] + 3, CPU, torch.float32, fill=True)
    out, start = [], 0
    for end in splits:
        out.append(llama.forward_step(model, ids[:, start:end], start, cache)[:, 0])
        start = end
    return out


@pytest.mark.parametrize("workload", ["llama-tiny", "llava-tiny"])
def test_forward_step_matches_transformers(models, workload):
    model = models[workload]
    torch.manual_seed(1)
    ids = torch.randint(3, 3999, (2, 20))
    with torch.inference_mode():
        ref = model(input_ids=ids).logits  # transformers' own full forward
        # prefill 12 tokens, a chunk of 7 after them, then one decode step
        got = _steps(model, ids, (12, 19, 20))
    for logits, last in zip(got, (11, 18, 19)):
        assert logits.shape == (2, get_llm_program(workload).vocab_size)
        assert torch.allclose(logits, ref[:, last], atol=TOL, rtol=0), (workload, last)
    # the check can fail: a decode step at the wrong position gives other logits
    with torch.inference_mode():
        cache = llama.kv_cache(model, 2, 23, CPU, torch.float32, fill=True)
        llama.forward_step(model, ids[:, :19], 0, cache)
        shifted = llama.forward_step(model, ids[:, 19:], 20, cache)[:, 0]
    assert not torch.allclose(shifted, ref[:, 19], atol=TOL, rtol=0)


def test_forward_step_grouped_query_attention():
    base = get_llm_program("llama-tiny")
    prog = dataclasses.replace(base, name="llama-tiny-gqa",
                               config={**base.config, "num_key_value_heads": 2})
    model = llama.build_model(prog, "cpu", "fp32")
    cache = llama.kv_cache(model, 1, 9, CPU, torch.float32, fill=False)
    assert cache[0][0].shape == (1, 2, 9, 64)
    ids = torch.randint(3, 3999, (1, 9))
    with torch.inference_mode():
        ref = model(input_ids=ids).logits
        got = _steps(model, ids, (8, 9))
    assert torch.allclose(got[0], ref[:, 7], atol=TOL, rtol=0)
    assert torch.allclose(got[1], ref[:, 8], atol=TOL, rtol=0)


@pytest.mark.parametrize("b", [1, 3])
def test_vision_step_matches_transformers(models, b):
    model = models["llava-tiny"]
    cfg = model.config
    prog = get_llm_program("llava-tiny")
    size = prog.config["vision_config"]["image_size"]
    pix = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(b))
    with torch.inference_mode():
        ours = llama.vision_step(model, pix)
        out = model.model.get_image_features(
            pixel_values=pix, vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy)
    ref = torch.stack(list(getattr(out, "pooler_output", out)))  # 5.x: a list per image
    assert ours.shape == (b, image_tokens(prog.config), prog.text_config["hidden_size"])
    assert torch.allclose(ours, ref, atol=TOL, rtol=0)


def test_image_prompt_prefill_matches_transformers(models):
    """An image prompt: our vision features merged into the embeddings, then our prefill,
    equal transformers' LLaVA forward on token ids + pixels."""
    model = models["llava-tiny"]
    cfg = model.config
    n = image_tokens(get_llm_program("llava-tiny").config)
    pix = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(3, 3999, (2, n + 10), generator=torch.Generator().manual_seed(1))
    ids[:, 4:4 + n] = cfg.image_token_id
    with torch.inference_mode():
        ref = model(input_ids=ids, pixel_values=pix).logits[:, -1]
        lm, _ = llama.language_model(model)
        embeds = lm.embed_tokens(ids).clone()
        embeds[ids == cfg.image_token_id] = llama.vision_step(model, pix).reshape(-1, embeds.shape[-1])
        cache = llama.kv_cache(model, 2, ids.shape[1], CPU, torch.float32, fill=False)
        got = llama.forward_step(model, None, 0, cache, embeds=embeds)[:, 0]
    assert torch.allclose(got, ref, atol=TOL, rtol=0)


def test_grids_follow_the_token_budget():
    prefill = llama.prefill_grid(4096, 4096)
    assert all(b * L <= 4096 for b, L in prefill)
    assert {L for b, L in prefill if b == 1} >= {32, 96, 3072, 4096}
    assert (16, 256) in prefill and (16, 384) not in prefill
    decode = llama.decode_grid(65536, 256, 4096)
    assert all(b * (c + 1) <= 65536 for b, c in decode)
    assert (256, 128) in decode and (32, 3000) not in decode and (16, 3000) in decode


def test_profile_llama_tiny_table_loads(tmp_path):
    df = llama.profile_llama(
        "llava-tiny", device="cpu", dtype="fp32", warmup=0, repeats=1, lengths=(16, 32, 64),
        batches=(1, 2), decode_batches=(1, 4), contexts=(16, 48), vision_batches=(1, 2))
    assert set(df.module) == {"prefill", "decode", "vision"}
    assert (df.latency_s > 0).all()
    got = {(m, b, t) for m, b, t in df[["module", "batch_size", "tokens"]].itertuples(index=False)}
    assert ("prefill", 2, 128) in got and ("decode", 4, 4 * 49) in got and ("vision", 2, 32) in got
    prov = df.attrs["provenance"]
    assert prov["workload"] == "llava-tiny" and prov["dtype"] == "fp32" and "vision" in prov["method"]
    path = write_llm_table(df, tmp_path / "llava-tiny.csv", {"command": "test"})
    assert json.loads(path.with_suffix(".json").read_text())["command"] == "test"
    model = LlmLatencyModel.from_csv(path, get_llm_program("llava-tiny"))
    vision = df[df.module == "vision"].set_index("batch_size").latency_s
    assert model.vision_s(2) == pytest.approx(vision[2], rel=1e-5)
    assert model.prefill_s(64, 64 * 64) > 0


def test_profile_llama_without_vision_rows():
    df = llama.profile_llama("llama-tiny", device="cpu", dtype="fp32", warmup=0, repeats=1,
                             lengths=(16, 32), batches=(1,), decode_batches=(1,), contexts=(16,))
    assert list(df.module) == ["prefill", "prefill", "decode"]


def test_bad_input_gets_a_clear_error(models, capsys):
    with pytest.raises(ValueError, match="opt, not llama"):
        llama.profile_llama("opt-tiny", device="cpu")
    with pytest.raises(ValueError, match="dtype must be one of"):
        llama.build_model("llama-tiny", "cpu", "fp8")
    with pytest.raises(ValueError, match="cache slots"):
        cache = llama.kv_cache(models["llama-tiny"], 1, 4, CPU, torch.float32, fill=False)
        llama.forward_step(models["llama-tiny"], torch.ones(1, 5, dtype=torch.long), 0, cache)
    with pytest.raises(ValueError, match="needs a LLaVA model"):
        llama.vision_step(models["llama-tiny"], torch.zeros(1, 3, 56, 56))
    from neustream.cli import main

    assert main(["profile", "--workload", "nope", "--engine", "transformers", "--out", "x.csv"]) == 2
    assert "unknown workload 'nope'" in capsys.readouterr().err
