"""Diffusion stream modules: the real networks behind the diffusion workloads.

Each workload module of ``neustream.programs`` (SD v1.5 text encoder / UNet / VAE, DiT,
Palette) is a small wrapper around the libraries' own classes (``transformers.CLIPTextModel``,
``diffusers.UNet2DConditionModel``, ``DiTTransformer2DModel``, ``UNet2DModel``, ``AutoencoderKL``),
built from the real architecture configs written out below. Serving latency does not depend on
weight values, so ``weights: random`` (the default) needs no download; ``weights: pretrained``
loads the published weights where they exist (``neustream.backends.diffusion.weights`` fetches them).

One call of a wrapper is what the stream engine runs for one batch:

- a ``loop`` module (UNet, DiT) does ONE denoising step for every request of the batch: the
  network's forward plus the sampler's element-wise update. Requests of one batch may be at
  different steps, so every sample carries its own timestep.
- ``cfg`` modules (classifier-free guidance) run the network over 2b samples for b requests,
  conditional and unconditional, then combine them (guidance scale 7.5 for SD, 4.0 for DiT);
  the SD text encoder with CFG encodes 2b sequences of 77 tokens (prompt + empty prompt).

Serving: each request holds one row (slot) of the workload's ``Pools`` (token ids, text states,
latents, its own DDIM schedule for its step count, its class) from arrival to end. A call gets
the batch's slots and step indices, gathers those rows, runs, and scatters the results back, so
a batch may mix requests at different timesteps (tests/test_equivalence.py checks that a request
comes out the same as served alone).

``size="tiny"`` builds the same classes with a few channels and one or two layers on small images,
so that tests run on a CPU in milliseconds. profiling/diffusion.py's ``build_module`` gives the
profiler's view: a callable that runs one call at a given batch size on preallocated random inputs.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from neustream.catalog.diffusion import get_program

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


def load_pretrained(workload: str, module: str, *, cache_dir: str | None = None,
                    local: bool = False) -> torch.nn.Module:
    """The published weights of one module (fp32, CPU), from the hub cache ``cache_dir``.

    ``local``: read the snapshot named by the manifest in ``cache_dir`` (written by
    ``neustream weights``) and never touch the network. Fails with one clear line when the
    workload has no public weights or they cannot be had.
    """
    from neustream.backends.diffusion import weights

    get_program(workload).module(module)
    model = weights.model_for(workload)
    if local:
        path = weights.snapshot(workload, cache_dir or weights.DEFAULT_DIR)
    else:
        path = weights.fetch(model, cache_dir)
    sub = weights.get_hub(model).files[module][0]
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
# Per-request state: DDIM schedules and slot pools
# --------------------------------------------------------------------------------------------

T, A_T, A_PREV = range(3)  # columns of a schedule row


@dataclass(frozen=True)
class Schedule:
    """A DDIM sampler (eta = 0, deterministic) over a 1000-step training noise schedule.

    ``table(steps)`` gives, for each of a request's ``steps`` calls, the timestep and the
    cumulative alphas at it and at the next one, with diffusers' "leading" spacing; each request
    keeps its own, so a batch mixes requests at any step of any step count.
    """

    beta_start: float
    beta_end: float
    scaled: bool  # SD's "scaled_linear" (linear in sqrt(beta)); else linear
    offset: int = 0  # diffusers' steps_offset
    final_alpha: float | None = 1.0  # alpha after the last step; None: alphas_cumprod[0]

    def alphas_cumprod(self) -> np.ndarray:
        if self.scaled:
            betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, 1000) ** 2
        else:
            betas = np.linspace(self.beta_start, self.beta_end, 1000)
        return np.cumprod(1.0 - betas)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - a few module-level schedules
    def table(self, steps: int) -> np.ndarray:
        """(steps, 3) float64: timestep, alpha_cumprod at it, at the next timestep."""
        ac = self.alphas_cumprod()
        ratio = 1000 // steps
        t = (np.arange(steps) * ratio)[::-1] + self.offset
        prev = t - ratio
        final = ac[0] if self.final_alpha is None else self.final_alpha
        a_prev = np.where(prev >= 0, ac[np.clip(prev, 0, None)], final)
        return np.stack([t, ac[t], a_prev], axis=1)


SD_SCHEDULE = Schedule(0.00085, 0.012, scaled=True, offset=1, final_alpha=None)
DIT_SCHEDULE = Schedule(0.0001, 0.02, scaled=False)


class Pools(dict):
    """Per-request tensors of one served workload, on its device: name -> (rows, ...).

    A request holds one row (its slot) of every pool from arrival to end: token ids, text
    states, latents, its sampler schedule, its class. A call gathers its batch's rows, computes
    and scatters the results back, all inside the call (so inside a CUDA graph), and the host
    only sends the slot numbers. Row 0 is scratch: a bucket's padding rows read and write it.
    """

    def __init__(self, rows: int, device: torch.device) -> None:
        super().__init__()
        self.rows = rows
        self.device = device

    def need(self, name: str, shape: tuple, dtype: torch.dtype, fill: float | None = None):
        """The pool ``name``, made on first need (random normal values, or ``fill``)."""
        if name not in self:
            size = (self.rows, *shape)
            if fill is None:
                self[name] = torch.randn(size, generator=torch.Generator().manual_seed(0)).to(
                    self.device, dtype)
            else:
                self[name] = torch.full(size, fill, dtype=dtype, device=self.device)
        pool = self[name]
        if pool.shape[1:] != shape or pool.dtype != dtype:
            raise ValueError(f"pool {name!r} is {tuple(pool.shape[1:])} {pool.dtype}, "
                             f"a module needs {shape} {dtype}")
        return pool


@dataclass(eq=False)
class State:
    """One request as the modules know it; its tensors are its ``slot`` of the pools."""

    id: int
    steps: int
    seed: int
    slot: int = 0
    prompt: int = 0  # SD: prompt index
    label: int = 0  # DiT: ImageNet class
    output: torch.Tensor | None = None  # last module's output (kept only when asked)

    def generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.id * 31 + salt)


# --------------------------------------------------------------------------------------------
# Stream modules: one call = what the engine runs for one batch
# --------------------------------------------------------------------------------------------


def _ddim_update(x: torch.Tensor, eps: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The sampler's per-sample element-wise update (DDIM, eta = 0), in float32; ``p`` holds
    each sample's schedule row (timestep, alpha_cumprod now, next)."""
    a_t = p[:, A_T].view(-1, 1, 1, 1)
    a_prev = p[:, A_PREV].view(-1, 1, 1, 1)
    x32, eps32 = x.float(), eps.float()
    x0 = (x32 - (1 - a_t).sqrt() * eps32) / a_t.sqrt()
    return (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps32).to(x.dtype)


class StreamModule:
    """A network plus the work around it that one batch of one stream module needs.

    The requests' tensors live in ``Pools`` (``attach`` declares what this module reads and
    writes; ``writes`` names the pools a call writes, which a server placing modules on several
    devices copies to the next module's device). A call's only input is ``sel`` (b, 2): each
    row's slot and step index (``graphs.Batcher.load`` fills it); it gathers those rows, runs the
    network, writes the results back to the pools, and returns the batch's output (so a CUDA
    graph can capture the whole call). ``init_state`` writes a new request's rows (noise,
    schedule, tokens) without waiting for the device.
    """

    writes: tuple[str, ...] = ()

    def __init__(self, net: torch.nn.Module, *, cfg: bool, size: str, image_size: int,
                 schedule: Schedule | None = None, max_steps: int = 1):
        self.net = net
        self.cfg = cfg
        self.size = size
        self.image_size = image_size
        self.schedule = schedule
        self.max_steps = max_steps
        p = next(net.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.pools: Pools | None = None

    def num_samples(self, batch_size: int) -> int:
        return 2 * batch_size if self.cfg else batch_size

    def latent_shape(self) -> tuple:
        s = self.image_size // 8
        return (4, s, s)

    def attach(self, pools: Pools) -> None:
        self.pools = pools
        pools.need("latents", self.latent_shape(), self.dtype)
        if self.schedule is not None:
            pools.need("sched", (self.max_steps, 3), torch.float32, fill=0.5)

    def make_inputs(self, batch_size: int, seed: int = 0) -> dict[str, Any]:
        """Static inputs of a batch of ``batch_size``: every row selects the scratch slot."""
        return {"sel": torch.zeros(batch_size, 2, dtype=torch.long, device=self.device)}

    def __call__(self, inputs: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def init_state(self, state: State) -> None:
        if self.schedule is not None:
            table = torch.from_numpy(self.schedule.table(state.steps)).float()
            self.pools["sched"][state.slot, : state.steps].copy_(table, non_blocking=True)

    def _noise(self, state: State, name: str, salt: int) -> None:
        pool = self.pools[name]
        x = torch.randn(pool.shape[1:], generator=state.generator(salt))
        pool[state.slot].copy_(x, non_blocking=True)  # pageable: staged at once, no sync

    def _select(self, inputs):
        sel = inputs["sel"]
        return sel[:, 0], sel[:, 1]

    def _denoise(self, idx, x, eps, p, uncond_first: bool = True):
        """Classifier-free guidance on ``eps`` (with ``cfg`` its two halves, unconditional
        first or second), the DDIM update, and the new latents back into the requests' rows."""
        if self.cfg:
            first, second = eps.chunk(2)
            uncond, cond = (first, second) if uncond_first else (second, first)
            eps = uncond + self.guidance_scale * (cond - uncond)
        out = _ddim_update(x, eps, p)
        self.pools["latents"].index_copy_(0, idx, out)
        return out


class TextEncoder(StreamModule):
    """CLIP text encoder: token ids (b, 77) -> text states (b, 2, 77, D), [empty prompt;
    prompt] with CFG; the empty prompt is encoded with the batch, as pipelines do."""

    writes = ("text",)

    def attach(self, pools):
        self.pools = pools
        pools.need("ids", (TEXT_LEN,), torch.long, fill=0)
        pools.need("text", (2, TEXT_LEN, self.net.config.hidden_size), self.dtype)

    def __call__(self, inputs):
        idx, _ = self._select(inputs)
        ids = self.pools["ids"][idx]
        b = ids.shape[0]
        if self.cfg:  # unconditional half: the empty prompt, padded to 77 tokens as well
            ids = torch.cat([torch.full_like(ids, self.net.config.pad_token_id), ids])
        out = self.net(input_ids=ids).last_hidden_state  # (2b | b, 77, hidden)
        text = torch.stack([out[:b], out[b:]], dim=1) if self.cfg else torch.stack([out, out], 1)
        self.pools["text"].index_copy_(0, idx, text)
        return out

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one encoder per server, few prompts
    def prompt_ids(self, prompt: int) -> torch.Tensor:
        """Token ids of prompt number ``prompt``: synthetic (no tokenizer is loaded), fixed per
        prompt, the same length as CLIP's padded prompts."""
        gen = torch.Generator().manual_seed(prompt)
        return torch.randint(0, self.net.config.vocab_size, (TEXT_LEN,), generator=gen)

    def init_state(self, state):
        self.pools["ids"][state.slot].copy_(self.prompt_ids(state.prompt), non_blocking=True)


class SDUNetStep(StreamModule):
    """One SD denoising step: UNet over [uncond; cond] latents, guidance, DDIM update."""

    guidance_scale = SD_GUIDANCE
    writes = ("latents",)

    def attach(self, pools):
        super().attach(pools)
        pools.need("text", (2, TEXT_LEN, self.net.config.cross_attention_dim), self.dtype)

    def __call__(self, inputs):
        idx, k = self._select(inputs)
        x = self.pools["latents"][idx]
        p = self.pools["sched"][idx, k]
        text = self.pools["text"][idx]  # (b, 2, 77, D)
        t = p[:, T]
        if self.cfg:
            x_in, t_in = torch.cat([x, x]), torch.cat([t, t])
            text = torch.cat([text[:, 0], text[:, 1]])
        else:
            x_in, t_in, text = x, t, text[:, 1]
        eps = self.net(x_in, t_in, encoder_hidden_states=text).sample
        return self._denoise(idx, x, eps, p)

    def init_state(self, state):
        super().init_state(state)
        self._noise(state, "latents", 1)


class DiTStep(StreamModule):
    """One DiT denoising step: transformer over [cond; null-class] latents, guidance on eps
    (the learned-sigma half of the output is split off), DDIM update."""

    guidance_scale = DIT_GUIDANCE
    writes = ("latents",)

    def attach(self, pools):
        super().attach(pools)
        pools.need("label", (), torch.long, fill=0)

    def __call__(self, inputs):
        idx, k = self._select(inputs)
        x = self.pools["latents"][idx]
        p = self.pools["sched"][idx, k]
        t, y = p[:, T], self.pools["label"][idx]
        if self.cfg:
            x_in, t_in = torch.cat([x, x]), torch.cat([t, t])
            y_in = torch.cat([y, torch.full_like(y, DIT_NULL_CLASS)])
        else:
            x_in, t_in, y_in = x, t, y
        out = self.net(x_in, timestep=t_in, class_labels=y_in).sample
        eps = out[:, : x.shape[1]]  # learned sigma: drop the variance channels
        return self._denoise(idx, x, eps, p, uncond_first=False)

    def init_state(self, state):
        super().init_state(state)
        self._noise(state, "latents", 1)
        self.pools["label"][state.slot] = state.label


class VAEDecode(StreamModule):
    """VAE decoder: latents (b, 4, s/8, s/8) -> images (b, 3, s, s) in [0, 1]."""

    def __call__(self, inputs):
        idx, _ = self._select(inputs)
        image = self.net.decode(self.pools["latents"][idx] / VAE_SCALE).sample
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

    writes = ("latents",)

    def latent_shape(self):  # Palette denoises the image itself
        return (3, self.image_size, self.image_size)

    def attach(self, pools):
        super().attach(pools)
        pools.need("cond", self.latent_shape(), self.dtype)

    def __call__(self, inputs):
        idx, k = self._select(inputs)
        x = self.pools["latents"][idx]
        p = self.pools["sched"][idx, k]
        eps = self.net(torch.cat([x, self.pools["cond"][idx]], dim=1), p[:, T]).sample
        return self._denoise(idx, x, eps, p)

    def init_state(self, state):
        super().init_state(state)
        self._noise(state, "latents", 1)  # the noisy image
        self._noise(state, "cond", 2)  # the masked image (synthetic)


def make_module(
    workload: str,
    module: str,
    *,
    size: str = "full",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    weights: str = "random",
    weights_dir: str | None = None,
) -> StreamModule:
    """The stream module ``module`` of ``workload``, in eval mode on ``device`` / ``dtype``.

    ``weights: pretrained`` loads the published weights from the hub cache ``weights_dir``
    (fetched before by ``neustream weights``; the network is never used here).
    """
    spec = get_program(workload).module(module)
    _check_size(size)
    if weights not in ("random", "pretrained"):
        raise ValueError(f"weights must be 'random' or 'pretrained', got {weights!r}")
    if torch.device(device).type == "cpu":
        # Random weights give some subnormal activations, which take slow microcode paths on x86
        # (measured: tiny SD UNet steps of 10 ms took 0.7-1.9 s now and then); flush them.
        warnings.filterwarnings("ignore", message="The value of the smallest subnormal")
        torch.set_flush_denormal(True)
    if weights == "pretrained":
        net = load_pretrained(workload, module, cache_dir=weights_dir, local=True)
    else:
        # Initialise on the target device: random init of ~0.9 B parameters on a CPU is slow.
        with torch.device(device):
            net = build_net(workload, module, size=size)
    # nn.Module.to, not diffusers' override: that one warns on every dtype cast of a model
    # built from a config (it has no float32-only submodules to keep anyway).
    net = torch.nn.Module.to(net, device=device, dtype=dtype).eval().requires_grad_(False)
    schedule = SD_SCHEDULE if workload.startswith("sd15") else DIT_SCHEDULE
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
    return cls(net, cfg=spec.cfg, size=size, image_size=image_size(workload, size),
               schedule=schedule if spec.loop else None,
               max_steps=get_program(workload).steps[1])
