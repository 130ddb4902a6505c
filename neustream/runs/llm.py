"""LLM runs: a spec's latency model, policy and requests, served by the simulator or by vLLM.

Live runs replay the trace against one vLLM engine in this process whose scheduler class runs
the system's policy (backends/vllm); both engines end in the same record.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from neustream.catalog.llm import get_llm_program
from neustream.latency import LlmLatencyModel, llm_capacity_rps, load_table
from neustream.record import summarize_llm, write_run
from neustream.traces import check_positive, make_llm_trace, read_llm_trace, to_llm_requests

if TYPE_CHECKING:
    from neustream.catalog.llm import LlmProgram
    from neustream.request import LlmRequest
    from neustream.runs.spec import RunSpec


@dataclass
class Setup:
    program: LlmProgram
    model: LlmLatencyModel
    rows: list[dict]  # the trace
    requests: list[LlmRequest]
    pslo: float
    dslo: float


def setup(spec: RunSpec) -> Setup:
    program = get_llm_program(spec.workload)
    check_positive("rate", spec.rate)
    check_positive("cv", spec.cv)
    check_positive("slo", spec.slo)
    model = load_table(spec.latency, program)
    rows = read_llm_trace(spec.trace, program) if spec.trace else make_llm_trace(
        program, spec.rate, spec.cv, spec.n_requests, spec.seed)
    pslo, dslo = spec.pslo or spec.slo, spec.dslo or spec.slo
    return Setup(program, model, rows, to_llm_requests(rows, model, pslo, dslo), pslo, dslo)


def settings(spec: RunSpec, s: Setup, backend: str, kv_tokens) -> dict:
    """The summary's settings, in its order."""
    return {
        "workload": spec.workload, "system": spec.system, "backend": backend,
        "device": spec.record_device, "rate": spec.rate, "cv": spec.cv, "slo": spec.slo,
        "pslo": s.pslo, "dslo": s.dslo, "seed": spec.seed, "pred_steps": spec.pred_steps,
        "sweeps": list(spec.sweeps), "latency_table": str(spec.latency),
        "trace": str(spec.trace) if spec.trace else None, "kv_capacity_tokens": kv_tokens,
        "capacity_rps": llm_capacity_rps(s.model, s.program, [r["prompt_tokens"] for r in s.rows],
                                         [r["output_tokens"] for r in s.rows], kv_tokens),
        "latency_model": s.model.describe(),
    }


def _report(spec: RunSpec, summary: dict, wall_s: float) -> None:
    print(f"{spec.workload} {spec.system} {summary['backend']} rate={spec.rate} cv={spec.cv} "
          f"slo={spec.slo}: {summary['n_ok']}/{summary['n_requests']} requests with every token "
          f"on time, {summary['n_late']} late, {summary['n_dropped']} dropped; "
          f"{summary['tokens_on_time']} tokens on time, goodput "
          f"{summary['token_goodput_tps']:.1f} tok/s ({wall_s:.1f} s)", file=sys.stderr)


def run_sim(spec: RunSpec, s: Setup, step_factor: float = 1.0, progress=None):
    """Simulate a set-up: (the engine's state, its KV capacity in tokens). With ``step_factor``
    every step takes that much longer than the table says (the policy still decides on the
    table): a prediction calibrated with a live run's measured step times."""
    from neustream.engine.llm.sim import simulate_llm
    from neustream.policy import make_llm_policy

    meta = s.model.meta
    kv_tokens = spec.kv_tokens if spec.kv_tokens is not None else meta.get("kv_capacity_tokens")
    if kv_tokens and kv_tokens < s.program.max_model_len:  # vLLM refuses such an engine too
        raise ValueError(f"--kv-tokens {kv_tokens}: the KV cache must hold one request of "
                         f"{s.program.name}'s max_model_len ({s.program.max_model_len} tokens)")
    block = (meta.get("engine_config") or {}).get("block_size") or s.program.block_size
    policy = make_llm_policy(spec.system, s.model, max_num_seqs=s.program.max_num_seqs,
                             max_num_batched_tokens=s.program.max_num_batched_tokens,
                             pred_steps=spec.pred_steps)
    costs = s.model if step_factor == 1.0 else s.model.scaled(step_factor)
    state = simulate_llm(policy, costs, s.requests, kv_capacity_tokens=kv_tokens or None,
                         block_size=block, progress=progress)
    return state, kv_tokens


def simulate(spec: RunSpec) -> dict:
    """Simulate the spec's run and write its record; return the summary."""
    s = setup(spec)
    t0 = time.perf_counter()

    def progress(sim) -> None:
        print(f"[{spec.system} {spec.workload}] t={sim.now_s:.1f} s: {sim.state.n_done}/"
              f"{len(s.requests)} done, {sim.state.n_ok} all on time", file=sys.stderr, flush=True)

    state, kv_tokens = run_sim(spec, s, progress=progress)
    config = settings(spec, s, "sim", kv_tokens)
    config.update(preemptions=state.n_preemptions, steps=len(state.batches),
                  wall_s=round(time.perf_counter() - t0, 3))
    rows = [r.row(token_times=spec.token_times) for r in s.requests]
    summary = write_run(spec.out, rows, state.batches, lambda: summarize_llm(rows, config))
    _report(spec, summary, config["wall_s"])
    return summary


def predict(spec: RunSpec, step_factor: float = 1.0) -> dict:
    """The simulator's summary of the spec's run, written nowhere (``run_sim``'s factor)."""
    s = setup(spec)
    run_sim(spec, s, step_factor)
    return summarize_llm([r.row(token_times=False) for r in s.requests], {})


def serve(spec: RunSpec) -> dict:
    """Serve the spec's run live through vLLM; write its record; return the summary."""
    import tempfile

    from neustream.backends.vllm.model_dir import write_model_dir
    from neustream.backends.vllm.server import VllmServer
    from neustream.engine.llm.live import serve_llm, warm_up

    s = setup(spec)
    with tempfile.TemporaryDirectory(prefix=f"neustream-{spec.workload}-") as tmp:
        model_dir = write_model_dir(s.program, spec.model_dir or tmp,
                                    "float32" if spec.engine_device == "cpu" else "float16")
        t0 = time.perf_counter()
        server = VllmServer(model_dir, s.program, spec.system, latency=spec.latency, pslo=s.pslo,
                            dslo=s.dslo, pred_steps=spec.pred_steps, device=spec.engine_device,
                            seed=spec.seed, tensor_parallel=spec.tensor_parallel)
        start_s = time.perf_counter() - t0
        warm_up(server, s.program)
        sched = server.scheduler
        sched.step_log.clear()
        for k in sched.stats:
            sched.stats[k] = 0 if isinstance(sched.stats[k], int) else 0.0

        def progress(n_done: int, now_s: float) -> None:
            print(f"[{spec.system} {spec.workload} live] t={now_s:.1f} s: {n_done}/"
                  f"{len(s.requests)} done", file=sys.stderr, flush=True)

        facts = serve_llm(server, s.requests, progress=progress)
    t0_epoch = facts["t0_epoch_s"]
    ids = {str(r.id): r.id for r in s.requests}

    def trace_ids(internal: list[str]) -> list:
        # vLLM makes request ids unique by appending "-<8 random characters>"; map them back.
        return [ids.get(i.rsplit("-", 1)[0], i) for i in internal]

    batches = [{**b, "start_s": b["start_s"] - t0_epoch, "end_s": b["end_s"] - t0_epoch,
                **{k: trace_ids(b[k]) for k in ("ids", "decided_ids", "dropped_ids") if k in b}}
               for b in sched.step_log]
    stats = dict(sched.stats)
    steps = max(stats["steps"], 1)
    desc = server.describe()
    config = settings(spec, s, "live", desc["kv_capacity_tokens"])
    config.update(
        engine=desc, engine_start_s=round(start_s, 3), wall_s=round(facts["wall_s"], 3),
        steps=stats["steps"], max_submit_lag_s=facts["max_submit_lag_s"],
        scheduler_stats=stats,
        # The scheduler's own time per engine step, as a fraction of the step.
        schedule_fraction=stats["schedule_s"] / stats["step_s"] if stats["step_s"] else 0.0,
        policy_fraction=stats["policy_s"] / stats["step_s"] if stats["step_s"] else 0.0,
        mean_step_s=stats["step_s"] / steps,
    )
    rows = [r.row(token_times=True) for r in s.requests]
    summary = write_run(spec.out, rows, batches, lambda: summarize_llm(rows, config))
    _report(spec, summary, config["wall_s"])
    return summary
