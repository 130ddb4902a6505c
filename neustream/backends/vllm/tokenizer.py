"""Word-level tokenizers made locally from a model's vocabulary size: no hub, no download.

A tiny model served with random weights has no published tokenizer. This one gives every id a
word: the special tokens their usual names, every other id ``t<id>``; words are split on
whitespace, so ``decode`` then ``encode`` gives the ids back. It is enough for vLLM to run with a
tokenizer (text prompts, detokenized outputs, its check of prompt ids against the vocabulary)
and for vLLM's benchmark client, whose datasets build prompts from the tokenizer's vocabulary.
"""

from __future__ import annotations

from pathlib import Path


def word_tokenizer(vocab_size: int, specials: dict[int, str], *, unk: str, max_len: int,
                   bos: str | None = None, eos: str | None = None, pad: str | None = None):
    """A transformers fast tokenizer of ``vocab_size`` words: ``specials`` (id -> name) keep
    their names, every other id is ``t<id>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if max(specials) >= vocab_size or min(specials) < 0:
        raise ValueError(f"special token ids {sorted(specials)} outside vocab_size {vocab_size}")
    if len(set(specials.values())) != len(specials):
        raise ValueError(f"special token names repeat: {specials}")
    vocab = {specials.get(i, f"t{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    named = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad))
             if v is not None}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk,
                                   model_max_length=max_len, **named)


def program_specials(program) -> tuple[dict[int, str], dict[str, str]]:
    """Special ids of an OPT or Llama ``program`` with their names, and the roles they fill
    (``unk``, ``bos``, ``eos``, ``pad``), from its config (OPT: pad 1, bos = eos 2, unk 3 as
    the published tokenizer; Llama: unk 0, bos 1, eos 2)."""
    cfg = program.text_config
    bos_id, eos_id = cfg.get("bos_token_id"), cfg.get("eos_token_id")
    names: dict[int, str] = {}
    roles: dict[str, str] = {}
    unk_id = 3 if program.arch == "opt" else 0
    names[unk_id] = roles["unk"] = "<unk>"
    if eos_id is not None:
        names.setdefault(eos_id, "</s>")
        roles["eos"] = names[eos_id]
    if bos_id is not None:
        names.setdefault(bos_id, "<s>")
        roles["bos"] = names[bos_id]
    pad_id = cfg.get("pad_token_id")
    if pad_id is not None:
        names.setdefault(pad_id, "<pad>")
        roles["pad"] = names[pad_id]
    return names, roles


def write_tokenizer(program, path: str | Path) -> Path:
    """Write tokenizer.json and tokenizer_config.json for an OPT or Llama ``program`` into the
    model folder ``path`` (transformers' AutoTokenizer and vLLM load them)."""
    names, roles = program_specials(program)
    tok = word_tokenizer(program.vocab_size, names, max_len=program.max_model_len, **roles)
    tok.save_pretrained(str(path))
    return Path(path)
