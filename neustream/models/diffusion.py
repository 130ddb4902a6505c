"""Diffusion stream modules: the real networks behind the diffusion workloads.

Each workload module of ``neustream.programs`` (SD v1.5 text encoder / UNet / VAE, DiT,
Palette) is a small wrapper around the libraries' own classes (``transformers.CLIPTextModel``,
``diffusers.UNet2DConditionModel``, ``DiTTransformer2DModel``, ``UNet2DModel``, ``AutoencoderKL``),
built from the real architecture configs written out below. Serving latency does not depend on
weight values, so ``weights: random`` (the default) needs no download; ``load_pretrained`` fetches
the published weights where they exist.

One call of a wrapper is what the stream engine runs for one batch:

- a ``loop`` module (UNet, DiT) does ONE denoising step for every request of the batch: the
  network's forward plus the sampler's element-wise update. Requests of one batch may be at
  different steps, so every sample carries its own timestep.
- ``cfg`` modules (classifier-free guidance) run the network over 2b samples for b requests,
  conditional and unconditional, then combine them (guidance scale 7.5 for SD, 4.0 for DiT);
  the SD text encoder with CFG encodes 2b sequences of 77 tokens (prompt + empty prompt).

``size="tiny"`` builds the same classes with a few channels and one or two layers on small images,
so that tests run on a CPU in milliseconds. ``build_module`` gives the profiler's view: a callable
that runs one call at a given batch size on preallocated random inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from neustream.programs import get_program

SIZES = ("full", "tiny")
TEXT_LEN = 77  # CLIP context length: SD pads every prompt to 77 tokens
VAE_SCALE = 0.18215  # SD / DiT latent scaling factor
SD_GUIDANCE = 7.5
DIT_GUIDANCE = 4.0
DIT_NULL_CLASS = 1000  # DiT's "no class" label used for the unconditional half

# --------------------------------------------------------------------------------------------
# Architecture configs (as published with the weights; written out because the hub may be
# unreachable). "full" is the real model, "tiny" the same classes shrunk for CPU tests.
# --------------------------------------------------------------------------------------------

# SD v1.5 text encoder: CLIP ViT-L/14 text tower.
SD15_TEXT_ENCODER = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
SD15_UNET = dict(
    sample_size=64,  # overridden with image_size // 8
    in_channels=4,
    out_channels=4,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)
# SD v1.5 VAE; DiT uses sd-vae-ft-ema, which has the same architecture.
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
)
_DIT_COMMON = dict(
    patch_size=2,
    sample_size=32,  # 256 px / 8
    in_channels=4,
    out_channels=8,  # learned sigma: eps (4) + variance (4)
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_zero",
    norm_elementwise_affine=False,
    activation_fn="gelu-approximate",
    attention_bias=True,
    dropout=0.0,
    upcast_attention=False,
)
# diffusers' DiT gives every block its own copy of the timestep + class embedding (the converted
# checkpoint repeats the weights), so XL/2 counts 750 M parameters here against 675 M in the paper.
DIT_XL2 = dict(_DIT_COMMON, num_layers=28, num_attention_heads=16, attention_head_dim=72)
DIT_S2 = dict(_DIT_COMMON, num_layers=12, num_attention_heads=6, attention_head_dim=64)
# Palette-shaped UNet; see PaletteStep for why this shape.
PALETTE_UNET = dict(
    sample_size=256,
    in_channels=6,  # noisy image (3) + masked condition image (3)
    out_channels=3,
    block_out_channels=(64, 128, 256, 512),
    down_block_types=("DownBlock2D",) * 4,
    up_block_types=("UpBlock2D",) * 4,
    layers_per_block=2,
    attention_head_dim=32,
    resnet_time_scale_shift="scale_shift",
    norm_num_groups=32,
)

TINY_TEXT_ENCODER = dict(
    SD15_TEXT_ENCODER,
    vocab_size=1000,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    projection_dim=32,
)
TINY_UNET = dict(
    SD15_UNET,
    sample_size=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=8,
)
# Four levels keep the VAE's 8x upscale, so tiny latents are image_size // 8 as in full size.
TINY_VAE = dict(SD_VAE, block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)
TINY_DIT = dict(_DIT_COMMON, sample_size=8, num_layers=1, num_attention_heads=2, attention_head_dim=16)
TINY_PALETTE = dict(
    PALETTE_UNET,
    sample_size=32,
    block_out_channels=(16, 32),
    down_block_types=("DownBlock2D",) * 2,
    up_block_types=("UpBlock2D",) * 2,
    layers_per_block=1,
    attention_head_dim=8,
    norm_num_groups=8,
)

TINY_IMAGE_SIZE = {"sd15-256": 64, "sd15-512": 64, "dit-s2": 64, "dit-xl2": 64, "palette": 32}

# Published diffusers-format weights: (repo, revision, {module: subfolder}).
# NOTE: the revisions could not be looked up when this was written (hub unreachable); pin them to
# commit hashes with `huggingface-cli` once a networked machine has fetched the weights.
SD15_REPO, SD15_REVISION = "stable-diffusion-v1-5/stable-diffusion-v1-5", "main"
DIT_XL2_REPO, DIT_XL2_REVISION = "facebook/DiT-XL-2-256", "main"
PRETRAINED: dict[str, tuple[str, str, dict[str, str]]] = {
    "sd15-256": (SD15_REPO, SD15_REVISION, {"text_encoder": "text_encoder", "unet": "unet", "vae": "vae"}),
    "sd15-512": (SD15_REPO, SD15_REVISION, {"text_encoder": "text_encoder", "unet": "unet", "vae": "vae"}),
    "dit-xl2": (DIT_XL2_REPO, DIT_XL2_REVISION, {"dit": "transformer", "vae": "vae"}),
}


# --------------------------------------------------------------------------------------------
# Network construction
# --------------------------------------------------------------------------------------------


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")


def image_size(workload: str, size: str = "full") -> int:
    """Pixel size of the images the workload produces at this model size."""
    _check_size(size)
    return TINY_IMAGE_SIZE[workload] if size == "tiny" else get_program(workload).image_size


def build_net(workload: str, module: str, *, size: str = "full") -> torch.nn.Module:
    """The bare network of one module, random weights, on the current default device, fp32."""
    from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    get_program(workload).module(module)  # clear error for unknown workload / module
    _check_size(size)
    tiny = size == "tiny"
    latent = image_size(workload, size) // 8
    if module == "text_encoder":
        return CLIPTextModel(CLIPTextConfig(**(TINY_TEXT_ENCODER if tiny else SD15_TEXT_ENCODER)))
    if module == "vae":
        return AutoencoderKL(**(TINY_VAE if tiny else SD_VAE))
    if workload.startswith("sd15") and module == "unet":
        return UNet2DConditionModel(**dict(TINY_UNET if tiny else SD15_UNET, sample_size=latent))
    if module == "dit":
        full = DIT_XL2 if workload == "dit-xl2" else DIT_S2
        return DiTTransformer2DModel(**(TINY_DIT if tiny else full))
    if workload == "palette" and module == "unet":
        return UNet2DModel(**(TINY_PALETTE if tiny else PALETTE_UNET))
    raise ValueError(f"no network for {workload}/{module}")  # pragma: no cover


def load_pretrained(workload: str, module: str, *, cache_dir: str | None = None) -> torch.nn.Module:
    """The published weights of one module, downloaded with huggingface_hub (fp32, CPU).

    Fails with one clear line when the workload has no public diffusers weights or when the hub
    cannot be reached.
    """
    get_program(workload).module(module)
    if workload not in PRETRAINED:
        raise ValueError(
            f"workload {workload!r} has no public diffusers-format weights; use weights: random"
        )
    repo, revision, subfolders = PRETRAINED[workload]
    sub = subfolders[module]
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo,
            revision=revision,
            allow_patterns=[f"{sub}/*.json", f"{sub}/*.safetensors"],
            ignore_patterns=[f"{sub}/*fp16*", f"{sub}/*non_ema*"],
            cache_dir=cache_dir,
        )
    except Exception as e:  # offline, DNS, connection refused, gated repo, ...: one clear line
        raise RuntimeError(
            f"cannot download {repo}@{revision} ({sub}) from the Hugging Face hub: "
            f"{type(e).__name__}; check the network or HF_HOME, or use weights: random"
        ) from e
    if module == "text_encoder":
        from transformers import CLIPTextModel

        return CLIPTextModel.from_pretrained(path, subfolder=sub)
    import diffusers

    cls = {
        "unet": diffusers.UNet2DConditionModel,
        "vae": diffusers.AutoencoderKL,
        "dit": diffusers.DiTTransformer2DModel,
    }[module]
    return cls.from_pretrained(path, subfolder=sub)


# --------------------------------------------------------------------------------------------
# Stream modules: one call = what the engine runs for one batch
# --------------------------------------------------------------------------------------------


def _ddim_update(x: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor):
    """The sampler's per-step element-wise update (deterministic DDIM), per-sample alphas."""
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def _alphas(b: int, gen: torch.Generator, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    a_t = torch.rand(b, 1, 1, 1, generator=gen).mul(0.9).add(0.05)
    return a_t.to(device, dtype), (a_t + 0.04).to(device, dtype)


class StreamModule:
    """A network plus the work around it that one batch of one stream module needs.

    ``make_inputs(b)`` builds random inputs for a batch of b requests (what the previous module
    and the request state would hand over); ``__call__(inputs)`` runs one call and returns the
    per-request outputs. ``num_samples(b)`` is the network's batch dimension (2b with CFG).
    """

    def __init__(self, net: torch.nn.Module, *, cfg: bool, size: str, image_size: int):
        self.net = net
        self.cfg = cfg
        self.size = size
        self.image_size = image_size
        p = next(net.parameters())
        self.device, self.dtype = p.device, p.dtype

    def num_samples(self, batch_size: int) -> int:
        return 2 * batch_size if self.cfg else batch_size

    def _latent(self, b: int, gen: torch.Generator, channels: int = 4) -> torch.Tensor:
        s = self.image_size // 8
        return torch.randn(b, channels, s, s, generator=gen).to(self.device, self.dtype)

    def make_inputs(self, batch_size: int, seed: int = 0) -> dict[str, Any]:
        raise NotImplementedError

    def __call__(self, inputs: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError


class TextEncoder(StreamModule):
    """CLIP text encoder: token ids (b, 77) -> hidden states; with CFG also the empty prompt."""

    def make_inputs(self, batch_size, seed=0):
        gen = torch.Generator().manual_seed(seed)
        vocab = self.net.config.vocab_size
        ids = torch.randint(0, vocab, (batch_size, TEXT_LEN), generator=gen)
        return {"input_ids": ids.to(self.device)}

    def __call__(self, inputs):
        ids = inputs["input_ids"]
        if self.cfg:  # unconditional half: the empty prompt, padded to 77 tokens as well
            ids = torch.cat([torch.full_like(ids, self.net.config.pad_token_id), ids])
        return self.net(input_ids=ids).last_hidden_state  # (2b | b, 77, hidden)


class SDUNetStep(StreamModule):
    """One SD denoising step: UNet over [uncond; cond] latents, guidance, DDIM update."""

    guidance_scale = SD_GUIDANCE

    def make_inputs(self, batch_size, seed=0):
        gen = torch.Generator().manual_seed(seed)
        n, hidden = self.num_samples(batch_size), self.net.config.cross_attention_dim
        a_t, a_prev = _alphas(batch_size, gen, self.device, self.dtype)
        return {
            "latents": self._latent(batch_size, gen),
            "timesteps": torch.randint(0, 1000, (batch_size,), generator=gen).to(self.device),
            # text encoder output for every sample the UNet runs ([uncond; cond] with CFG)
            "text": torch.randn(n, TEXT_LEN, hidden, generator=gen).to(self.device, self.dtype),
            "a_t": a_t,
            "a_prev": a_prev,
        }

    def __call__(self, inputs):
        x, t = inputs["latents"], inputs["timesteps"]
        if self.cfg:
            x_in, t_in = torch.cat([x, x]), torch.cat([t, t])
        else:
            x_in, t_in = x, t
        eps = self.net(x_in, t_in, encoder_hidden_states=inputs["text"]).sample
        if self.cfg:
            uncond, cond = eps.chunk(2)
            eps = uncond + self.guidance_scale * (cond - uncond)
        return _ddim_update(x, eps, inputs["a_t"], inputs["a_prev"])


class DiTStep(StreamModule):
    """One DiT denoising step: transformer over [cond; null-class] latents, guidance on eps
    (the learned-sigma half of the output is split off), DDIM update."""

    guidance_scale = DIT_GUIDANCE

    def make_inputs(self, batch_size, seed=0):
        gen = torch.Generator().manual_seed(seed)
        a_t, a_prev = _alphas(batch_size, gen, self.device, self.dtype)
        return {
            "latents": self._latent(batch_size, gen),
            "timesteps": torch.randint(0, 1000, (batch_size,), generator=gen).to(self.device),
            "class_labels": torch.randint(0, 1000, (batch_size,), generator=gen).to(self.device),
            "a_t": a_t,
            "a_prev": a_prev,
        }

    def __call__(self, inputs):
        x, t, y = inputs["latents"], inputs["timesteps"], inputs["class_labels"]
        if self.cfg:
            x_in, t_in = torch.cat([x, x]), torch.cat([t, t])
            y_in = torch.cat([y, torch.full_like(y, DIT_NULL_CLASS)])
        else:
            x_in, t_in, y_in = x, t, y
        out = self.net(x_in, timestep=t_in, class_labels=y_in).sample
        eps = out[:, : x.shape[1]]  # learned sigma: drop the variance channels
        if self.cfg:
            cond, uncond = eps.chunk(2)
            eps = uncond + self.guidance_scale * (cond - uncond)
        return _ddim_update(x, eps, inputs["a_t"], inputs["a_prev"])


class VAEDecode(StreamModule):
    """VAE decoder: latents (b, 4, s/8, s/8) -> images (b, 3, s, s) in [0, 1]."""

    def make_inputs(self, batch_size, seed=0):
        gen = torch.Generator().manual_seed(seed)
        return {"latents": self._latent(batch_size, gen)}

    def __call__(self, inputs):
        image = self.net.decode(inputs["latents"] / VAE_SCALE).sample
        return (image / 2 + 0.5).clamp(0, 1)


class PaletteStep(StreamModule):
    """One Palette inpainting step (a Palette-shaped network, not Palette's own code).

    Palette (Saharia et al. 2022; the NeuStream artifact uses Janspiry's reimplementation) is a
    guided-diffusion UNet: 64 base channels, multipliers 1/2/4/8, 2 residual blocks per level,
    scale-shift time conditioning, 32-channel attention heads, and attention requested at 16 px
    only. On 256 px images the deepest level is 32 px, so 16 px is never reached and the only
    attention sits in the middle block. Its input is the noisy image concatenated with the masked
    condition image (6 channels). diffusers' ``UNet2DModel`` with those settings has the same
    levels, widths, block counts and attention placement, hence the same cost shape; the code
    base has no diffusers-format weights, so it is Palette-shaped rather than Palette.
    """

    def make_inputs(self, batch_size, seed=0):
        gen = torch.Generator().manual_seed(seed)
        s = self.image_size
        a_t, a_prev = _alphas(batch_size, gen, self.device, self.dtype)
        return {
            "image": torch.randn(batch_size, 3, s, s, generator=gen).to(self.device, self.dtype),
            "cond": torch.randn(batch_size, 3, s, s, generator=gen).to(self.device, self.dtype),
            "timesteps": torch.randint(0, 1000, (batch_size,), generator=gen).to(self.device),
            "a_t": a_t,
            "a_prev": a_prev,
        }

    def __call__(self, inputs):
        x = inputs["image"]
        eps = self.net(torch.cat([x, inputs["cond"]], dim=1), inputs["timesteps"]).sample
        return _ddim_update(x, eps, inputs["a_t"], inputs["a_prev"])


def make_module(
    workload: str,
    module: str,
    *,
    size: str = "full",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    weights: str = "random",
) -> StreamModule:
    """The stream module ``module`` of ``workload``, in eval mode on ``device`` / ``dtype``."""
    spec = get_program(workload).module(module)
    if weights not in ("random", "pretrained"):
        raise ValueError(f"weights must be 'random' or 'pretrained', got {weights!r}")
    if weights == "pretrained":
        if size != "full":
            raise ValueError("weights: pretrained needs size: full")
        net = load_pretrained(workload, module)
    else:
        # Initialise on the target device: random init of ~0.9 B parameters on a CPU is slow.
        with torch.device(device):
            net = build_net(workload, module, size=size)
    # nn.Module.to, not diffusers' override: that one warns on every dtype cast of a model
    # built from a config (it has no float32-only submodules to keep anyway).
    net = torch.nn.Module.to(net, device=device, dtype=dtype).eval().requires_grad_(False)
    if module == "text_encoder":
        cls = TextEncoder
    elif module == "vae":
        cls = VAEDecode
    elif module == "dit":
        cls = DiTStep
    elif workload == "palette":
        cls = PaletteStep
    else:
        cls = SDUNetStep
    return cls(net, cfg=spec.cfg, size=size, image_size=image_size(workload, size))


@dataclass
class ModuleRunner:
    """The profiler's view of a module: ``runner(b)`` runs ONE call at batch size b on random
    inputs made once per batch size (input creation stays out of the timed call)."""

    module: StreamModule
    _batch_size: int = 0
    _inputs: dict | None = None

    def inputs(self, batch_size: int) -> dict:
        if batch_size != self._batch_size:
            self._inputs = None  # free the previous batch size's inputs first
            self._inputs = self.module.make_inputs(batch_size)
            self._batch_size = batch_size
        return self._inputs

    def __call__(self, batch_size: int) -> torch.Tensor:
        return self.module(self.inputs(batch_size))


def build_module(
    workload: str,
    module: str,
    *,
    size: str = "full",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    weights: str = "random",
) -> ModuleRunner:
    """Build one module; the result runs one call of it at a given batch size."""
    return ModuleRunner(
        make_module(workload, module, size=size, device=device, dtype=dtype, weights=weights)
    )
