"""LLM latency tables: measure engine steps through a real engine, write CSV + sidecar JSON.

NOTE: the model of an LLM table (latency.LlmLatencyModel) is "one engine step costs what its
prefill tokens and its decode batch cost". ``profile_engine`` measures both through a live engine
(backends/vllm/server.VllmServer: vLLM with vLLM's own scheduler, synchronous, no prefix
caching) on this machine, timing whole ``LLMEngine.step()`` calls on the wall clock, which is
what a step of a live run costs (scheduling and output processing included):
- prefill: ``b`` requests of ``L`` prompt tokens and one output token are submitted, then the one
  step that prefills them all is timed; ``warmup`` untimed and ``repeats`` timed rounds, median;
- decode: ``b`` requests of ``c`` prompt tokens and ``steps + 1`` output tokens are submitted and
  prefilled (untimed), then each of the ``steps`` decode steps is timed; the row keeps the median
  step and the mean total context over those steps (b x (c + i) at step i).
- vision (LLaVA): vLLM runs the image encoder inside the prefill step, so it cannot be timed
  through ``step()`` alone; ``b`` random images at the tower's resolution are run through the
  engine's own vision tower and projector (``VllmServer.encode_images``, what vLLM's encoder pass
  runs), median of ``repeats`` after ``warmup``; row ``vision, b, b x image_tokens, seconds``.
  The prefill rows stay text-only (the language model's cost). A few prefill steps with images
  are also timed and kept in the sidecar (``image_prefill_check``) next to text prefill +
  vision, to show how far the sum is from a real image prefill. Image preprocessing (PIL resize
  and normalise) runs in ``submit`` on the host, outside any step, and is in no row.
The transformers profilers for GPUs without vLLM are profiling/opt.py and profiling/llama.py; all
write with profiling/tables.write_llm_table, which adds the fitted coefficients to the sidecar.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from neustream.catalog.llm import get_llm_program
from neustream.files import cpu_name
from neustream.latency import LLM_COLUMNS

CPU_PREFILL_LENGTHS = (32, 64, 128, 256, 512)
CPU_PREFILL_BATCHES = (1, 2, 4, 8, 16)
CPU_DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64)
CPU_DECODE_CONTEXTS = (64, 256, 512)
VISION_BATCHES = (1, 2, 4, 8, 16)


def _timed_step(server) -> tuple[float, list]:
    t = time.perf_counter()
    out = server.step()
    return time.perf_counter() - t, out


def profile_engine(server, program, *, warmup: int = 1, repeats: int = 3, decode_steps: int = 8,
                   max_prefill_tokens: int = 4096, lengths=CPU_PREFILL_LENGTHS,
                   batches=CPU_PREFILL_BATCHES, decode_batches=CPU_DECODE_BATCHES,
                   contexts=CPU_DECODE_CONTEXTS, log=sys.stderr) -> list[tuple[str, int, int, float]]:
    """Rows (module, batch_size, tokens, latency_s) measured through ``server``."""
    rows = []
    n = 0

    def submit(b: int, prompt: int, output: int) -> None:
        nonlocal n
        now = time.time()
        for _ in range(b):
            n += 1
            server.submit(f"profile-{n}", prompt, output, now)

    budget = min(max_prefill_tokens, program.max_num_batched_tokens)
    for L in lengths:
        for b in batches:
            if b * L > budget or L >= program.max_model_len:
                continue
            times = []
            for k in range(warmup + repeats):
                submit(b, L, 1)
                dur, _ = _timed_step(server)
                while server.has_unfinished():  # nothing should be left; keep the engine clean
                    server.step()
                if k >= warmup:
                    times.append(dur)
            rows.append(("prefill", b, b * L, statistics.median(times)))
            print(f"[profile-llm] prefill b={b} L={L}: {rows[-1][3] * 1e3:.2f} ms", file=log, flush=True)
    for c in contexts:
        for b in decode_batches:
            if b > program.max_num_seqs or c + decode_steps + 1 > program.max_model_len:
                continue
            submit(b, c, decode_steps + 1)
            got: dict[str, int] = {}
            while len(got) < b or min(got.values()) < 1:  # prefill, possibly over several steps
                for rid, k, _, _ in server.step():
                    got[rid] = k
            times = []
            for _ in range(decode_steps):
                dur, _ = _timed_step(server)
                times.append(dur)
            while server.has_unfinished():
                server.step()
            ctx = b * (c + 1 + (decode_steps - 1) / 2)  # mean over the steps of b x (c + i)
            rows.append(("decode", b, round(ctx), statistics.median(times[1:] or times)))
            print(f"[profile-llm] decode b={b} c={c}: {rows[-1][3] * 1e3:.2f} ms", file=log, flush=True)
    return rows


def profile_vision(server, program, *, warmup: int = 1, repeats: int = 3,
                   batches=VISION_BATCHES, log=sys.stderr) -> list[tuple[str, int, int, float]]:
    """Rows (vision, b, b x image_tokens, latency_s) of the engine's image encoder (LLaVA)."""
    import torch

    per_image = server.image_tokens
    # vLLM's encoder budget per step is max_num_batched_tokens image tokens.
    top = max(1, program.max_num_batched_tokens // per_image)
    rows = []
    for b in batches:
        if b > top or b > program.max_num_seqs:
            continue
        times = []
        for k in range(warmup + repeats):
            t = time.perf_counter()
            server.encode_images(b)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if k >= warmup:
                times.append(time.perf_counter() - t)
        rows.append(("vision", b, b * per_image, statistics.median(times)))
        print(f"[profile-llm] vision b={b}: {rows[-1][3] * 1e3:.2f} ms", file=log, flush=True)
    return rows


def image_prefill_check(server, program, *, batches=(1, 4), text_tokens: int = 48,
                        repeats: int = 3) -> list[dict]:
    """Median wall times of a prefill step of b prompts that each carry one image (L = image
    tokens + ``text_tokens``), of the same step text-only, and of the encoder on b images: how
    far text prefill + vision is from a real image prefill."""
    from PIL import Image

    size = program.config["vision_config"]["image_size"]
    image = Image.new("RGB", (size, size), (200, 120, 40))
    L = server.image_tokens + text_tokens
    out = []
    n = 0

    def prefill(b: int, with_image: bool) -> float:
        nonlocal n
        times = []
        for _ in range(1 + repeats):
            now = time.time()
            for _ in range(b):
                n += 1
                server.submit(f"image-check-{n}", L, 1, now, image=image if with_image else None)
            dur, _ = _timed_step(server)
            while server.has_unfinished():
                server.step()
            times.append(dur)
        return statistics.median(times[1:])

    for b in batches:
        if b * L > program.max_num_batched_tokens or b > program.max_num_seqs:
            continue
        vision = profile_vision(server, program, warmup=1, repeats=repeats, batches=(b,),
                                log=io.StringIO())[0][3]
        out.append({"batch_size": b, "tokens": b * L, "image_prefill_s": prefill(b, True),
                    "text_prefill_s": prefill(b, False), "vision_s": vision})
    return out


def profile_vllm(workload: str, *, device: str = "cpu", warmup: int = 1, repeats: int = 3,
                 decode_steps: int = 8, model_dir: str | Path | None = None, log=sys.stderr):
    """Measure ``workload``'s table through vLLM on this machine; a DataFrame with provenance."""
    import tempfile

    import pandas as pd

    from neustream.backends.vllm.model_dir import write_model_dir
    from neustream.backends.vllm.server import VllmServer

    program = get_llm_program(workload)
    tmp = None
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix=f"neustream-{workload}-")
        model_dir = tmp.name
    write_model_dir(program, model_dir, "float32" if device == "cpu" else "float16")
    t0 = time.perf_counter()
    server = VllmServer(model_dir, program, "vllm", device=device)
    print(f"[profile-llm] {workload}: vLLM engine up in {time.perf_counter() - t0:.1f} s",
          file=log, flush=True)
    rows = profile_engine(server, program, warmup=warmup, repeats=repeats,
                          decode_steps=decode_steps, log=log)
    check = None
    if program.arch == "llava":
        rows += profile_vision(server, program, warmup=warmup, repeats=repeats, log=log)
        check = image_prefill_check(server, program, repeats=repeats)
    desc = server.describe()
    server.close()
    df = pd.DataFrame(rows, columns=list(LLM_COLUMNS))
    df.attrs["provenance"] = {
        "workload": workload, "engine": "vllm", "device": device,
        "device_name": cpu_name() if device == "cpu" else device,
        "dtype": "fp32" if device == "cpu" else "fp16",
        "weights": "random (load_format=dummy, the catalog's config)",
        "kv_capacity_tokens": desc["kv_capacity_tokens"], "engine_config": desc,
        "method": {
            "prefill": "wall time of the one LLMEngine.step() that prefills b prompts of L tokens "
                       "(max_tokens=1); tokens = b x L",
            "decode": f"wall time of each of {decode_steps} decode-only LLMEngine.step() calls of "
                      "b sequences after a prompt of c tokens; median step, mean total context",
            "statistic": f"prefill: median of {repeats} after {warmup} warm-up; decode: median step",
            "timer": "time.perf_counter around LLMEngine.step()",
            **({"vision": "the engine's own CLIP tower + projector (VllmServer.encode_images) on "
                          "b random images at the tower's resolution; median of "
                          f"{repeats} after {warmup} warm-up; prefill rows are text-only"}
               if program.arch == "llava" else {}),
            "env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_")},
        },
        "versions": _versions(),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host_cpu_count": os.cpu_count(),
    }
    if check is not None:
        df.attrs["provenance"]["image_prefill_check"] = check
    if tmp is not None:
        tmp.cleanup()
    return df


def _versions() -> dict:
    import torch

    v = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import vllm

        v["vllm"] = vllm.__version__
    except ImportError:
        pass
    return v
