"""Model folders vLLM loads offline with random weights: config.json from the catalog.

vLLM loads a folder holding ``config.json`` (the catalog's architecture,
catalog.llm.LLM_PROGRAMS) with ``load_format="dummy"`` (random weights), so nothing is
downloaded. Each folder also holds a word-level tokenizer made from the model's vocabulary
(backends/vllm/tokenizer.py; LLaVA's comes with its processor, backends/vllm/llava.py): the
in-process engines skip it (``skip_tokenizer_init``, prompts are token ids), the OpenAI server
and vLLM's benchmark client load it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_model_dir(program, path: str | Path, dtype: str = "float32") -> Path:
    """A model folder vLLM can load offline with dummy weights: config.json and a tokenizer for
    every family (opt, llama, llava); llava's tokenizer comes with the processor files its
    multimodal processor needs (backends/vllm/llava.py). config.json is written last, so a
    folder that has it is complete."""
    if program.arch not in ("opt", "llama", "llava"):
        raise ValueError(f"{program.name}: no vLLM model folder for model family {program.arch!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = {**program.config, "torch_dtype": dtype, "dtype": dtype, "use_cache": True,
           "_name_or_path": program.hf_name}
    if program.arch == "llava":
        from neustream.backends.vllm.llava import write_processor

        cfg["text_config"] = {**cfg["text_config"], "torch_dtype": dtype, "dtype": dtype}
        write_processor(program, path)
    else:
        from neustream.backends.vllm.tokenizer import write_tokenizer

        write_tokenizer(program, path)
    tmp = path / "config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=1) + "\n")
    os.replace(tmp, path / "config.json")
    return path
