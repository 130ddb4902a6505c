"""Multi-agent runs: a pipeline's latency models, policies and requests, simulated or live.

Tables: ``spec.latency`` is a folder with one LLM table per model, ``<model>.csv`` (e.g.
codellama-7b.csv and llava-7b.csv); ``spec.exec_times`` the measured seconds of each plotting
program. ``placement`` maps the LLM engine instances to devices: ``spread`` (one device each,
as the paper's four GPUs), ``shared`` (all on one device) or ``instance=device,...``. Live runs
start one vLLM engine per instance (backends/vllm) and run real code in the sandbox.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from neustream.catalog.agent import get_agent_program, list_plots
from neustream.catalog.llm import get_llm_program, image_tokens
from neustream.engine.agent.flow import AgentFlow
from neustream.latency import LlmLatencyModel, agent_capacity_rps, load_table
from neustream.record import summarize_agent, write_run
from neustream.traces import check_positive, make_agent_trace, read_agent_trace

if TYPE_CHECKING:
    from neustream.catalog.agent import AgentProgram
    from neustream.runs.spec import RunSpec


def plot_names() -> list[str]:
    return [p.name for p in list_plots()]


def parse_placement(text: str, program: AgentProgram) -> dict[str, int]:
    """``spread``, ``shared`` or ``instance=device,...`` (every instance named once)."""
    names = program.instances()
    if text == "spread":
        return {n: k for k, n in enumerate(names)}
    if text == "shared":
        return {n: 0 for n in names}
    out: dict[str, int] = {}
    for part in text.split(","):
        name, sep, dev = part.partition("=")
        if not sep or name.strip() not in names or not dev.strip().isdigit():
            raise ValueError(f"placement: bad entry {part!r}; want instance=device with an "
                             f"instance in {', '.join(names)} and a device index")
        out[name.strip()] = int(dev)
    missing = [n for n in names if n not in out]
    if missing:
        raise ValueError(f"placement: no device for {', '.join(missing)}")
    return out


@dataclass
class Setup:
    program: AgentProgram
    models: dict[str, LlmLatencyModel]  # stage -> its model's latency model
    rows: list[dict]  # the trace
    flow: AgentFlow
    placement: dict[str, int]


def setup(spec: RunSpec, backend: str) -> Setup:
    program = get_agent_program(spec.workload)
    for k in ("rate", "cv", "slo"):
        check_positive(k, getattr(spec, k))
    models = {s.name: load_table(Path(spec.latency) / f"{s.model}.csv", get_llm_program(s.model))
              for s in program.llm_stages}
    rows = read_agent_trace(spec.trace, program) if spec.trace else make_agent_trace(
        program, spec.rate, spec.cv, spec.n_requests, spec.seed, plot_names())
    placement = parse_placement(spec.placement or ("spread" if backend == "sim" else "shared"),
                                program)
    return Setup(program, models, rows, AgentFlow(program, rows, models, spec.slo), placement)


def settings(spec: RunSpec, s: Setup, backend: str) -> dict:
    """The summary's settings, in its order."""
    return {
        "workload": spec.label or spec.workload, "program": s.program.name,
        "system": spec.system, "backend": backend, "device": spec.record_device,
        "rate": spec.rate, "cv": spec.cv, "slo": spec.slo, "seed": spec.seed,
        "pred_steps": spec.pred_steps, "sweeps": list(spec.sweeps),
        "latency_dir": str(spec.latency), "trace": str(spec.trace) if spec.trace else None,
        "placement": s.placement, "devices": len(set(s.placement.values())),
        "exec_slo_s": s.program.exec_slo_s,
        "capacity_rps": agent_capacity_rps(s.program, s.models, s.placement, s.rows),
        "latency_models": {name: m.describe() for name, m in s.models.items()},
    }


def policies(spec: RunSpec, s: Setup) -> dict:
    """One policy object per LLM engine instance."""
    from neustream.policy import make_llm_policy

    out = {}
    for stage in s.program.llm_stages:
        prog = get_llm_program(stage.model)
        for inst in stage.instances():
            out[inst] = make_llm_policy(spec.system, s.models[stage.name],
                                        max_num_seqs=prog.max_num_seqs,
                                        max_num_batched_tokens=prog.max_num_batched_tokens,
                                        pred_steps=spec.pred_steps)
    return out


def _report(spec: RunSpec, summary: dict, wall_s: float) -> None:
    stages = ", ".join(f"{k} {v:.1f}" for k, v in summary.items() if k.startswith("tps_"))
    print(f"{summary['workload']} {spec.system} {summary['backend']} rate={spec.rate} "
          f"cv={spec.cv} slo={spec.slo}: {summary['n_ok']}/{summary['n_requests']} requests "
          f"through every stage in time, {summary['n_late']} late, {summary['n_dropped']} "
          f"dropped {summary['dropped_at']}; tokens on time per s: {stages} ({wall_s:.1f} s)",
          file=sys.stderr)


def _write(spec: RunSpec, s: Setup, batches: list[dict], config: dict, token_times: bool) -> dict:
    rows = [r.row(token_times) for r in s.flow.requests]
    summary = write_run(spec.out, rows, batches, lambda: summarize_agent(rows, config, s.program))
    _report(spec, summary, config["wall_s"])
    return summary


# -- simulated ----------------------------------------------------------------------------------


def simulate(spec: RunSpec) -> dict:
    """Simulate the spec's run and write its record; return the summary."""
    from neustream.engine.agent.sim import kv_split, simulate_agent
    from neustream.latency import read_exec_times

    s = setup(spec, "sim")
    if spec.exec_times is None:
        raise ValueError("exec_times: a simulated pipeline needs the code stages' table")
    exec_s = read_exec_times(spec.exec_times)
    t0 = time.perf_counter()

    def progress(sim) -> None:
        print(f"[{spec.system} {spec.workload}] t={sim.now_s:.1f} s: {s.flow.n_done}/"
              f"{len(s.rows)} done", file=sys.stderr, flush=True)

    batches = simulate_agent(s.program, s.flow, policies(spec, s), s.placement, exec_s,
                             kv_tokens=kv_split(s.program, s.placement, s.models),
                             progress=progress)
    config = settings(spec, s, "sim")
    config.update(exec_times=str(spec.exec_times), wall_s=round(time.perf_counter() - t0, 3))
    return _write(spec, s, batches, config, spec.token_times)


# -- live ---------------------------------------------------------------------------------------


def serve(spec: RunSpec) -> dict:
    """One vLLM engine per LLM instance, real code execution; the simulator's record.
    Placement ``shared`` (the default): every engine in this process, taking turns on one
    device. Any other placement: each engine in its own process on its device
    (backends/vllm/engine_proc.ProcessServer; CUDA_VISIBLE_DEVICES=<device> on cuda), engines on
    different devices stepping at the same time, those on one device taking turns."""
    from neustream.backends.sandbox import isolation
    from neustream.backends.vllm.engine_proc import EngineProcessError
    from neustream.engine.agent.live import serve_agent

    s = setup(spec, "live")
    in_process = set(s.placement.values()) == {0}
    _check_devices(spec, s.placement, in_process)
    plots = {p.name: p for p in list_plots(sorted({str(r["plot"]) for r in s.rows}))}
    servers: dict = {}
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix=f"neustream-{spec.workload}-") as tmp:
            _start_engines(spec, s, in_process, Path(tmp), servers)
            start_s = time.perf_counter() - t0

            def progress(n_done: int, now_s: float) -> None:
                print(f"[{spec.system} {spec.workload} live] t={now_s:.1f} s: {n_done}/"
                      f"{len(s.rows)} done", file=sys.stderr, flush=True)

            facts = serve_agent(s.flow, servers, plots=plots,
                                exec_workers=s.program.exec_workers,
                                exec_timeout_s=s.program.exec_timeout_s, placement=s.placement,
                                progress=progress)
        sched = {i: {"step_log": v.scheduler.step_log, "stats": v.scheduler.stats} if in_process
                 else v.scheduler_state() for i, v in servers.items()}
        engines = {i: v.describe() for i, v in servers.items()}
    except EngineProcessError as e:
        if e.detail:  # the engine process's traceback
            print(e.detail, file=sys.stderr)
        raise
    finally:
        if not in_process:  # every engine process is reaped, whatever happened
            for server in servers.values():
                server.close()
    config = settings(spec, s, "live")
    config.update(engine_start_s=round(start_s, 3), wall_s=round(facts["wall_s"], 3),
                  steps=facts["steps"], max_submit_lag_s=facts["max_submit_lag_s"],
                  engine_processes=not in_process, steps_by_device=facts["steps_by_device"],
                  engines=engines, engine_stats={i: st["stats"] for i, st in sched.items()},
                  exec_status={k: sum(e["status"] == k for e in facts["execs"])
                               for k in sorted({e["status"] for e in facts["execs"]})},
                  sandbox=isolation())
    return _write(spec, s, _live_batches(sched, s.placement, facts), config, True)


def _check_devices(spec: RunSpec, placement: dict[str, int], in_process: bool) -> None:
    if spec.engine_device not in ("cpu", "cuda"):
        raise ValueError(f"engine-device must be cpu or cuda, got {spec.engine_device!r}")
    if spec.engine_device == "cuda" and not in_process:
        # vLLM claims gpu_memory_utilization (0.9) of its GPU at start in every process, so a
        # second engine process on one GPU cannot start.
        devices = list(placement.values())
        crowded = sorted({d for d in devices if devices.count(d) > 1})
        if crowded:
            raise ValueError(f"placement: cuda device(s) {crowded} would hold several engine "
                             f"processes; give each engine its own GPU (spread) or use shared")


def _start_engines(spec: RunSpec, s: Setup, in_process: bool, tmp: Path, servers: dict) -> None:
    """One engine per instance into ``servers`` (so the caller can close them on failure),
    warmed up, with the warm-up's steps out of the record."""
    from neustream.backends.vllm.engine_proc import ProcessServer
    from neustream.backends.vllm.model_dir import write_model_dir

    dtype = "float32" if spec.engine_device == "cpu" else "float16"
    images = {}
    for stage in s.program.llm_stages:
        prog = get_llm_program(stage.model)
        model_dir = write_model_dir(prog, tmp / stage.model, dtype)
        kw = dict(latency=Path(spec.latency) / f"{stage.model}.csv", pslo=spec.slo,
                  dslo=spec.slo, pred_steps=spec.pred_steps, device=spec.engine_device,
                  seed=spec.seed, kv_cache_gib=spec.kv_cache_gib)
        for inst in stage.instances():
            images[inst] = (prog, stage.images)
            if in_process:
                from neustream.backends.vllm.server import VllmServer

                servers[inst] = VllmServer(model_dir, prog, spec.system, **kw)
                warm_up(servers[inst], prog, stage.images)
            else:  # started side by side; warmed up below, once each is up
                servers[inst] = ProcessServer(inst, model_dir, prog, spec.system,
                                              device_index=s.placement[inst], **kw)
    if not in_process:
        for inst, server in servers.items():
            warm_up(server, *images[inst])
    for server in servers.values():  # the warm-up's steps stay out of the record
        if in_process:
            server.scheduler.step_log.clear()
        else:
            server.clear_step_log()


def _live_batches(sched: dict, placement: dict[str, int], facts: dict) -> list[dict]:
    """Every engine's step log and every code execution as batch rows, by start time."""
    t0_epoch = facts["t0_epoch_s"]
    batches = []
    for inst, st in sched.items():
        for b in st["step_log"]:
            ids = [int(i.rsplit("-", 1)[0]) if i.rsplit("-", 1)[0].isdigit() else i
                   for i in b["ids"]]
            batches.append({**b, "module": f"{inst}.{b['module']}", "instance": inst,
                            "phase": b["module"], "device": placement[inst], "ids": ids,
                            "start_s": b["start_s"] - t0_epoch, "end_s": b["end_s"] - t0_epoch})
    batches += [{"module": e["stage"], "start_s": e["start_s"], "end_s": e["end_s"], "size": 1,
                 "ids": [e["id"]], "instance": e["stage"], "phase": "exec", "device": "cpu",
                 "exec_status": e["status"]} for e in facts["execs"]]
    batches.sort(key=lambda b: b["start_s"])
    return batches


def warm_up(server, prog, images: int, n: int = 2) -> None:
    """A few short requests through an engine before the trace (one-time costs stay out).
    The image goes as a file path, which in-process and process engines both take."""
    from neustream.backends.sandbox import blank_image

    prompt = 32 + (images * image_tokens(prog.config) if images else 0)
    image = blank_image(Path(tempfile.mkdtemp()) / "warmup.png") if images else None
    now = time.time()
    for i in range(n):
        server.submit(f"warmup-{i}", prompt, 4, now, image=image)
    while server.has_unfinished():
        server.step()
