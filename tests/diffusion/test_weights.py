"""Pretrained weights: the download path against a pre-populated hub cache with the hub off
(HF_HUB_OFFLINE=1), loading from it, and one-line failures naming the model and the setting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neustream.backends.diffusion import nets as diffusion
from neustream.backends.diffusion import weights
from neustream.backends.diffusion.nets import make_module
from tests.support import copy_workflow

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """A hub cache holding sd15's pinned snapshot, as huggingface-hub lays it out (tiny nets
    in the published file names)."""
    cache = tmp_path_factory.mktemp("hub")
    hub = weights.MODELS["sd15"]
    snap = cache / f"models--{hub.repo.replace('/', '--')}" / "snapshots" / hub.revision
    torch.manual_seed(0)
    for module in ("text_encoder", "unet", "vae"):
        net = diffusion.build_net("sd15-512", module, size="tiny")
        net.save_pretrained(snap / hub.files[module][0], safe_serialization=True)
    return cache


def _weights_cli(cache: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "neustream.cli", "weights", "--model", "sd15",
           "--cache", str(cache), "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=OFFLINE)


def test_offline_download_uses_the_cache_and_modules_load_from_it(hub_cache):
    p = _weights_cli(hub_cache, hub_cache / "sd15.json")
    assert p.returncode == 0, p.stderr
    manifest = json.loads((hub_cache / "sd15.json").read_text())
    assert manifest["revision"] == weights.MODELS["sd15"].revision
    assert Path(manifest["snapshot"]).name == manifest["revision"]
    assert "unet/diffusion_pytorch_model.safetensors" in manifest["files"]
    unet = make_module("sd15-512", "unet", weights="pretrained", weights_dir=str(hub_cache))
    torch.manual_seed(0)
    saved = diffusion.build_net("sd15-512", "text_encoder", size="tiny")  # same seed order
    text = make_module("sd15-512", "text_encoder", weights="pretrained", weights_dir=str(hub_cache))
    first = next(iter(saved.state_dict()))
    assert torch.equal(text.net.state_dict()[first], saved.state_dict()[first])
    assert list(unet.net.config.block_out_channels) == list(diffusion.TINY_UNET["block_out_channels"])


def test_offline_with_an_empty_cache_fails_in_one_line(tmp_path):
    p = _weights_cli(tmp_path / "empty", tmp_path / "sd15.json")
    assert p.returncode != 0
    err = p.stderr.strip()
    assert "\n" not in err and "sd15" in err and "weights: random" in err, err
    assert not (tmp_path / "sd15.json").exists()


def test_pretrained_without_a_manifest_names_the_model_and_the_setting(tmp_path):
    with pytest.raises(weights.WeightsError, match="sd15.*weights: random"):
        make_module("sd15-256", "vae", weights="pretrained", weights_dir=str(tmp_path))
    with pytest.raises(ValueError, match="dit-s2.*weights: random"):
        make_module("dit-s2", "dit", weights="pretrained", weights_dir=str(tmp_path))


def test_weights_rule_runs_offline_from_the_cache(hub_cache, tmp_path):
    copy_workflow(tmp_path)
    shutil.copytree(hub_cache, tmp_path / "resources" / "weights")
    (tmp_path / "resources" / "weights" / "sd15.json").unlink(missing_ok=True)  # the rule's output
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "resources/weights/sd15.json"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=OFFLINE)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert json.loads((tmp_path / "resources/weights/sd15.json").read_text())["model"] == "sd15"
