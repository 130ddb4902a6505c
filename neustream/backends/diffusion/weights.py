"""Published weights: which Hugging Face repo, pinned revision and files each module loads.

``fetch(model, cache_dir)`` downloads the pinned files with huggingface-hub into a hub cache
(``resources/weights/`` in the workflow) and writes nothing else; ``write_manifest`` records
where they landed, and a live run loads from that folder without touching the network.
Offline (no network, or ``HF_HUB_OFFLINE=1``) a cache that already holds the files works; an
empty one fails at once with one line naming the model and the setting to change.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Hub:
    repo: str
    revision: str  # a commit hash: the files never change under us
    files: dict  # module -> (subfolder, weight file names it may hold; config.json besides)


_EITHER = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# Revisions: the commits these repos' diffusers-format files are published at
# (SD v1.5: the stable-diffusion-v1-5 mirror of runwayml's repo; DiT: facebook's conversion,
# whose transformer weights are a .bin file at this commit).
MODELS: dict[str, Hub] = {
    "sd15": Hub(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "451f4fe16113bff5a5d2269ed5ad43b0592e9a14",
        {
            "text_encoder": ("text_encoder", ("model.safetensors",)),
            "unet": ("unet", ("diffusion_pytorch_model.safetensors",)),
            "vae": ("vae", ("diffusion_pytorch_model.safetensors",)),
        },
    ),
    "dit-xl2": Hub(
        "facebook/DiT-XL-2-256",
        "eab87f77abd5aef071a632f08807fbaab0b704d0",
        {
            "dit": ("transformer", _EITHER),
            "vae": ("vae", _EITHER),
        },
    ),
}
DEFAULT_DIR = "resources/weights"  # the workflow's hub cache
WORKLOAD_MODEL = {"sd15-256": "sd15", "sd15-512": "sd15", "dit-xl2": "dit-xl2"}


class WeightsError(RuntimeError):
    """Weights that cannot be had; the message names the model and the setting to change."""


def model_for(workload: str) -> str:
    try:
        return WORKLOAD_MODEL[workload]
    except KeyError:
        raise ValueError(
            f"workload {workload!r} has no public diffusers-format weights; use weights: random"
        ) from None


def get_hub(model: str) -> Hub:
    try:
        return MODELS[model]
    except KeyError:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}") from None


def allow_patterns(hub: Hub) -> list[str]:
    return [f"{sub}/{name}" for sub, names in hub.files.values() for name in ("config.json", *names)]


def _missing(folder: Path, hub: Hub) -> list[str]:
    """Files a module cannot load without: its config and one of its weight files."""
    out = []
    for sub, names in hub.files.values():
        if not (folder / sub / "config.json").is_file():
            out.append(f"{sub}/config.json")
        if not any((folder / sub / n).is_file() for n in names):
            out.append(f"{sub}/{' or '.join(names)}")
    return out


def fetch(model: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The snapshot folder holding ``model``'s pinned files, downloaded if the cache lacks them."""
    import huggingface_hub

    hub = get_hub(model)
    try:
        path = Path(huggingface_hub.snapshot_download(
            hub.repo, revision=hub.revision, allow_patterns=allow_patterns(hub),
            cache_dir=None if cache_dir is None else str(cache_dir),
        ))
    except Exception as e:  # offline, DNS, refused, gated, incomplete cache: one clear line
        raise WeightsError(
            f"cannot download {model} ({hub.repo}@{hub.revision[:7]}) from the Hugging Face hub "
            f"({type(e).__name__}) and the cache {cache_dir or 'HF_HOME'} has no copy: connect to "
            f"the network (HF_HUB_OFFLINE unset), or use weights: random (config key `weights`)"
        ) from e
    missing = _missing(path, hub)
    if missing:
        raise WeightsError(
            f"the cached snapshot of {model} at {path} lacks {', '.join(missing)}: download it "
            f"again with the network on, or use weights: random (config key `weights`)"
        )
    return path


def write_manifest(model: str, path: Path, out: str | os.PathLike) -> dict:
    """Record where ``model``'s files are (read by live runs with ``weights: pretrained``)."""
    hub = get_hub(model)
    manifest = {
        "model": model, "repo": hub.repo, "revision": hub.revision, "snapshot": str(path),
        "files": {f: (path / f).stat().st_size for f in allow_patterns(hub) if (path / f).is_file()},
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out)
    return manifest


def snapshot(workload: str, weights_dir: str | os.PathLike) -> Path:
    """The local snapshot folder of ``workload``'s weights, from the manifest in ``weights_dir``."""
    model = model_for(workload)
    manifest = Path(weights_dir) / f"{model}.json"
    if not manifest.is_file():
        raise WeightsError(
            f"no weights of {model} in {weights_dir} (missing {manifest.name}): run "
            f"`neustream weights --model {model} --cache {weights_dir}` (the workflow's weights "
            f"rule), or use weights: random (config key `weights`)"
        )
    path = Path(json.loads(manifest.read_text())["snapshot"])
    missing = _missing(path, get_hub(model))
    if missing:
        raise WeightsError(f"{manifest}: snapshot {path} lacks {', '.join(missing)}; fetch it again")
    return path
