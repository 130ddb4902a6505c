"""An LLM's latency table by the engine that measures it, written with its sidecar.

``vllm``: engine steps through vLLM on this machine (profiling/vllm.py); ``transformers``: the
model's layers under our driver on a GPU without vLLM, OPT (profiling/opt.py, or sharded over N
GPUs by profiling/tp.py) or Llama/LLaVA (profiling/llama.py). Options left as None take the
measuring function's own defaults.
"""

from __future__ import annotations

from pathlib import Path

from neustream.catalog.llm import get_llm_program
from neustream.profiling.tables import write_llm_table

ENGINES = ("vllm", "transformers")


def measure_llm_table(workload: str, out: str | Path, *, engine: str = "vllm",
                      device: str = "cpu", command: str = "", tensor_parallel: int = 1,
                      **options):
    """Measure ``workload`` and write ``out`` (CSV + sidecar). Returns the table, or None when
    N > 1 processes wrote it (tensor parallelism: rank 0 writes)."""
    program = get_llm_program(workload)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    options = {k: v for k, v in options.items() if v is not None}
    if engine == "vllm":
        from neustream.profiling.vllm import profile_vllm

        unused = sorted(set(options) - {"warmup", "repeats", "decode_steps"})
        if unused or tensor_parallel != 1:
            raise ValueError(f"engine vllm: options {unused or ['tensor_parallel']} are for the "
                             f"transformers engine")
        df = profile_vllm(workload, device=device, **options)
    else:
        options.pop("decode_steps", None)
        if tensor_parallel > 1:
            from neustream.profiling.tp import profile_tp

            profile_tp(workload, tensor_parallel, out, device=device, command=command, **options)
            return None
        if program.arch == "opt":
            from neustream.profiling.opt import profile_transformers as measure
        else:
            from neustream.profiling.llama import profile_llama as measure

            options.pop("max_prefill_tokens", None)
        df = measure(workload, device=device, **options)
    write_llm_table(df, out, {"command": command})
    return df
