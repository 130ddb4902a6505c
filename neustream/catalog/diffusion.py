"""Diffusion workloads: each is a program of stream modules, in order.

Catalog data only. A request flows through ``modules`` in order; a ``loop`` module
is called once per denoising step of the request (``Request.steps`` times), the
others once. ``profile_batches`` is the grid of batch sizes the profiler measures
(the latency table interpolates between them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from neustream.catalog.registry import lookup

# Batch sizes measured by `neustream profile`: every size up to 16, then coarser.
_GRID = tuple(range(1, 17)) + (20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128)


def grid(max_batch: int) -> tuple[int, ...]:
    return tuple(b for b in _GRID if b <= max_batch)


@dataclass(frozen=True)
class Module:
    name: str
    loop: bool  # called once per step of the request
    max_batch: int  # largest batch size profiled (and served)
    cfg: bool = False  # classifier-free guidance: a batch of b runs 2b samples

    @property
    def profile_batches(self) -> tuple[int, ...]:
        return grid(self.max_batch)


@dataclass(frozen=True)
class Program:
    name: str
    title: str
    modules: tuple[Module, ...]
    steps: tuple[int, int]  # per-request step count, inclusive range, drawn uniformly
    image_size: int
    class_labels: bool = False  # DiT: per-request ImageNet class in 0..999
    prompts: bool = False  # SD: per-request prompt index

    def module(self, name: str) -> Module:
        for m in self.modules:
            if m.name == name:
                return m
        raise KeyError(f"workload {self.name!r} has no module {name!r}")

    @property
    def module_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modules)


def _sd(size: int, unet_max: int, vae_max: int) -> Program:
    return Program(
        name=f"sd15-{size}",
        title=f"Stable Diffusion v1.5, {size} px",
        modules=(
            Module("text_encoder", loop=False, max_batch=unet_max, cfg=True),
            Module("unet", loop=True, max_batch=unet_max, cfg=True),
            Module("vae", loop=False, max_batch=vae_max),
        ),
        steps=(30, 50),
        image_size=size,
        prompts=True,
    )


def _dit(variant: str, dit_max: int) -> Program:
    return Program(
        name=f"dit-{variant.lower().replace('/', '')}",
        title=f"DiT-{variant}, 256 px",
        modules=(
            Module("dit", loop=True, max_batch=dit_max, cfg=True),
            Module("vae", loop=False, max_batch=32),
        ),
        steps=(200, 249),
        image_size=256,
        class_labels=True,
    )


PROGRAMS: dict[str, Program] = {
    p.name: p
    for p in (
        _sd(256, unet_max=64, vae_max=32),
        _sd(512, unet_max=32, vae_max=16),
        _dit("S/2", dit_max=128),
        _dit("XL/2", dit_max=64),
        Program(
            name="palette",
            title="Palette inpainting, 256 px",
            modules=(Module("unet", loop=True, max_batch=32),),
            steps=(80, 99),
            image_size=256,
        ),
    )
}


def get_program(name: str) -> Program:
    return lookup(PROGRAMS, name, "workload")


def parse_placement(text: str | None) -> dict[str, str]:
    """``module=device,...`` (the CLI's form) or JSON ``{"module": "device"}`` -> dict."""
    if not text:
        return {}
    text = text.strip()
    if text.startswith("{"):
        try:
            out = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"placement: not valid JSON ({e.msg})") from None
        if not isinstance(out, dict) or not all(isinstance(v, str) for v in out.values()):
            raise ValueError("placement: JSON must map module names to device strings")
        return out
    out = {}
    for part in text.split(","):
        module, sep, device = part.partition("=")
        if not sep or not module.strip() or not device.strip():
            raise ValueError(f"placement: {part!r} is not module=device")
        out[module.strip()] = device.strip()
    return out


def check_placement(program: Program, placement: dict[str, str]) -> None:
    unknown = sorted(set(placement) - set(program.module_names))
    if unknown:
        raise ValueError(f"placement: {program.name} has no module(s) {', '.join(unknown)} "
                         f"(modules: {', '.join(program.module_names)})")


def placement_groups(program: Program, placement: dict[str, str],
                     home: str) -> dict[str, tuple[str, ...]]:
    """Device -> its modules in program order; modules the placement leaves out are on
    ``home``. One device per group: the live server's executors, the simulator's devices."""
    check_placement(program, placement)
    out: dict[str, tuple[str, ...]] = {}
    for m in program.module_names:
        dev = placement.get(m, home)
        out[dev] = out.get(dev, ()) + (m,)
    return out
