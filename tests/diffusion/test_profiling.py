"""Diffusion modules (tiny configs, CPU) and the latency-table profiler."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from neustream.backends.diffusion import nets as diffusion
from neustream.backends.diffusion.nets import make_module
from neustream.catalog.diffusion import PROGRAMS
from neustream.latency import COLUMNS
from neustream.profiling.diffusion import PROVENANCE_KEYS, build_module, profile
from neustream.profiling.tables import write_table

MODULES = [(w, m.name) for w, p in PROGRAMS.items() for m in p.modules]


@pytest.fixture(scope="module")
def runners():
    """Each tiny module built once for the whole file."""
    return {key: build_module(*key, size="tiny") for key in MODULES}


def _net_batch(runner, b: int) -> int:
    """The batch dimension the network itself sees for one call at batch size b."""
    seen = []
    net = runner.module.net
    net = getattr(net, "decoder", net)  # the VAE runs decode(), not forward()
    hook = net.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args[0] if args else next(iter(kwargs.values()))).shape[0]),
        with_kwargs=True,
    )
    try:
        with torch.inference_mode():
            runner(b)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("workload,module", MODULES)
@pytest.mark.parametrize("b", [1, 3])
def test_module_runs(runners, workload, module, b):
    runner = runners[workload, module]
    with torch.inference_mode():
        out = runner(b)
    size = diffusion.image_size(workload, "tiny")
    if module == "text_encoder":
        assert out.shape[:2] == (2 * b, diffusion.TEXT_LEN)  # CFG: prompt + empty prompt
    elif module == "vae":
        assert out.shape == (b, 3, size, size)
    elif workload == "palette":
        assert out.shape == (b, 3, size, size)
    else:  # one denoising step keeps the latent's shape, one per request
        assert out.shape == (b, 4, size // 8, size // 8)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("workload,module", MODULES)
def test_cfg_runs_two_samples_per_request(runners, workload, module):
    cfg = PROGRAMS[workload].module(module).cfg
    assert _net_batch(runners[workload, module], 3) == (6 if cfg else 3)


def test_sd_modules_are_cfg_and_palette_is_not():
    assert PROGRAMS["sd15-512"].module("unet").cfg and PROGRAMS["dit-xl2"].module("dit").cfg
    assert not PROGRAMS["palette"].module("unet").cfg


def test_full_configs_are_the_published_shapes():
    c = diffusion.SD15_UNET
    assert c["block_out_channels"] == (320, 640, 1280, 1280) and c["cross_attention_dim"] == 768
    assert diffusion.DIT_XL2["num_attention_heads"] * diffusion.DIT_XL2["attention_head_dim"] == 1152
    assert diffusion.DIT_S2["num_attention_heads"] * diffusion.DIT_S2["attention_head_dim"] == 384
    assert diffusion.SD15_TEXT_ENCODER["hidden_size"] == 768


def test_profile_table():
    df = profile(
        "dit-s2", size="tiny", device="cpu", dtype="fp32", repeats=2, warmup=1, batch_sizes=[1, 2, 500], rounds=2
    )
    assert list(df.columns) == list(COLUMNS)
    assert list(df.module.unique()) == ["dit", "vae"]
    assert df[df.module == "dit"].batch_size.tolist() == [1, 2]  # 500 > max_batch is dropped
    assert (df.latency_s > 0).all()
    assert set(PROVENANCE_KEYS) <= set(df.attrs["provenance"])
    assert df.attrs["provenance"]["method"]["rounds"] == 2


def test_profile_default_grid_and_max():
    df = profile("sd15-256", size="tiny", repeats=1, warmup=0, batch_sizes=4, modules=["vae"])
    assert df.batch_size.tolist() == [1, 2, 3, 4]
    grid = PROGRAMS["palette"].module("unet").profile_batches
    assert grid[0] == 1 and grid[-1] == PROGRAMS["palette"].module("unet").max_batch


def test_write_table(tmp_path):
    df = profile("palette", size="tiny", repeats=1, warmup=0, batch_sizes=[1, 2])
    out = write_table(df, tmp_path / "lat" / "palette.csv", {"command": "pytest"})
    back = pd.read_csv(out)
    assert list(back.columns) == list(COLUMNS) and len(back) == 2
    prov = json.loads((tmp_path / "lat" / "palette.json").read_text())
    assert set(PROVENANCE_KEYS) <= set(prov)
    assert prov["command"] == "pytest" and prov["weights"] == "random" and prov["size"] == "tiny"
    assert {"torch", "diffusers", "transformers"} <= set(prov["versions"])
    assert {"warmup", "repeats", "statistic", "timer"} <= set(prov["method"])
    assert sorted(p.name for p in (tmp_path / "lat").iterdir()) == ["palette.csv", "palette.json"]


def test_write_table_rejects_bad_columns(tmp_path):
    with pytest.raises(ValueError, match="columns"):
        write_table(pd.DataFrame({"module": ["a"], "b": [1]}), tmp_path / "x.csv")
    assert not list(tmp_path.iterdir())


def test_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="unknown workload"):
        make_module("sd3", "unet", size="tiny")
    with pytest.raises(KeyError, match="no module"):
        make_module("dit-s2", "unet", size="tiny")
    with pytest.raises(ValueError, match="size"):
        make_module("dit-s2", "dit", size="huge")


def test_pretrained_without_public_weights_fails_clearly():
    with pytest.raises(ValueError, match="weights: random"):
        diffusion.load_pretrained("palette", "unet")


def test_pretrained_offline_fails_in_one_line(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(RuntimeError, match="cannot download .*use weights: random") as e:
        diffusion.load_pretrained("dit-xl2", "dit")
    assert "\n" not in str(e.value)


def test_a_hiccup_that_makes_latency_fall_is_timed_again(monkeypatch, capsys):
    """A smaller batch slowed by a busy host (here: b=1's first timing, 10x) would make the
    table fall as the batch grows, which the loader refuses; the profiler times both sizes again
    and the pooled medians no longer fall."""
    import neustream.profiling.diffusion as prof
    from neustream.latency import falls

    calls = {"n": 0}
    real = prof.time_calls

    def hiccup(fn, **kw):
        calls["n"] += 1
        t = real(fn, **kw)
        return [10 * x + 1.0 for x in t] if calls["n"] == 1 else t  # the first timing: b=1

    monkeypatch.setattr(prof, "time_calls", hiccup)
    df = prof.profile("palette", size="tiny", repeats=3, warmup=0, batch_sizes=[1, 2])
    assert calls["n"] > 2  # b=1 and b=2 timed again
    assert "latency fell as the batch grew at b=[1, 2]; timed again" in capsys.readouterr().err
    assert not falls(dict(zip(df.batch_size, df.latency_s)))
