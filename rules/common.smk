# Config validation, the tables of runs, traces, latency tables and figures built once from the
# config, the input functions that look rows up, and wildcard constraints. Stage files
# (rules/*.smk) hold rules only.

import copy
import re

import pandas as pd
from snakemake.utils import validate

# Snakemake 9.27 does not pass --replace-workflow-config on to the jobs it submits to a
# cluster: each job would read config/config.yaml under the user's file and expect other
# inputs than the main process planned. The main process hands the flag down through the
# job's environment (the SLURM plugin submits with --export=ALL); a job that gets it replaces.
# The workflow sets this variable itself; a user never needs to.
if workflow.config_settings.replace_workflow_config:
    os.environ.update(NEUSTREAM_REPLACE_WORKFLOW_CONFIG="1")
elif (
    os.environ.get("NEUSTREAM_REPLACE_WORKFLOW_CONFIG") == "1"
    and workflow.config_settings.overwrite_config
):
    config.clear()
    config.update(copy.deepcopy(workflow.config_settings.overwrite_config))

validate(config, schema="../config/schema.yaml")

FAMILIES = ("diffusion", "llm", "agent")
PARTS = ("sim", "live")
SWEEPS = ("rate", "cv", "slo")
NUMBER = r"[0-9]+(\.[0-9]+)?(e-?[0-9]+)?"
HERE = config["profile"]["device"]  # the device whose tables are measured on this machine
WEIGHTS_DIR = "resources/weights"


def fmt(x):
    """Numbers as they appear in paths: 1.25, 2, 0.5."""
    return f"{float(x):g}"


def unique(values, key, show=fmt):
    """``values`` as they appear in paths (``show``); one given twice, or two that print the
    same, is refused with one line naming the config key."""
    out = [show(v) for v in values]
    twice = sorted({v for v in out if out.count(v) > 1})
    if twice:
        raise ValueError(f"config: {key} lists {', '.join(map(str, twice))} twice (as written "
                         f"or as run names print it); every run is named once")
    return out


def points(spec, key):
    """{(rate, cv, slo): [sweeps]} of a workload's sweep spec, as path strings: each sweep
    through the default point; the default point alone when no sweep is given."""
    point = {p: fmt(spec["default"][p]) for p in SWEEPS}
    out = {}
    for sweep in SWEEPS:
        for value in unique(spec[sweep], f"{key}.{sweep}"):
            out.setdefault(tuple(value if p == sweep else point[p] for p in SWEEPS), []).append(sweep)
    return out or {tuple(point[p] for p in SWEEPS): []}


def table_dir(device):
    """Where a device's latency tables are: measured here, or committed."""
    return f"results/latency/{device}" if device == HERE else f"{config['latency_dir']}/{device}"


def run_dir(backend, label, system, rate, cv, slo, seed):
    return f"results/runs/{backend}/{label}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}"


def agent_models(program):
    from neustream.catalog.agent import get_agent_program

    return sorted({s.model for s in get_agent_program(program).llm_stages})


def latency_inputs(family, program, device):
    """(the --latency argument, the table files it stands for) of a workload's runs."""
    tables = table_dir(device)
    if family != "agent":
        return f"{tables}/{program}.csv", [f"{tables}/{program}.csv"]
    return tables, [f"{tables}/{m}.csv" for m in agent_models(program)] + [f"{tables}/exec-times.csv"]


def options(family, part, backend, sec, p, spec, latency):
    """The family's options of one run (`neustream simulate|serve` flags)."""
    if family == "diffusion":
        opts = f"--step-delta {spec.get('step_delta', sec['step_delta'])}"
        if backend == "live":
            opts += (f" --weights {config['weights']} --weights-dir {WEIGHTS_DIR}"
                     f" --threads {config['profile']['torch_threads']} --max-lag {p['max_lag_s']}"
                     + (" --lookahead" if p["lookahead"] else ""))
        return opts
    opts = f"--pred-steps {sec['pred_steps']}"
    if family == "agent":
        opts += f" --placement {spec.get('placement', p['placement'])}"
        if backend == "sim":
            opts += f" --exec-times {latency}/exec-times.csv"
    if backend == "live":
        opts += f" --engine-device {p['engine_device']}"
        if family == "agent":
            opts += f" --kv-cache-gib {p['kv_cache_gib']}"
    return opts


def run_table():
    """One row per run of the config; a run named twice is refused naming the config keys."""
    rows = []
    for family in FAMILIES:
        sec = config[family]
        seeds = unique(sec["seeds"], f"{family}.seeds", str)
        for part in PARTS:
            p = sec[part]
            systems = unique(p.get("systems") or sec["systems"],
                             f"{family}.{part}.systems" if p.get("systems") else f"{family}.systems",
                             str)
            backends = ["live", "sim"] if part == "live" and p["simulate"] else [part]
            for label, spec in p["workloads"].items():
                key = f"{family}.{part}.workloads.{label}"
                program = spec.get("program", label)
                device = spec.get("device", p["device"])
                latency, files = latency_inputs(family, program, device)
                trace_dir = f"{'live/' if part == 'live' else ''}{label}"
                for (rate, cv, slo), sweeps in points(spec, key).items():
                    for system in systems:
                        for seed in seeds:
                            for backend in backends:
                                rows.append(dict(
                                    family=family, part=part, key=key, label=label,
                                    program=program, device=device, backend=backend,
                                    system=system, rate=rate, cv=cv, slo=slo, seed=seed,
                                    sweeps=",".join(sweeps), requests=p["requests"],
                                    trace_dir=trace_dir, latency=latency, tables=files,
                                    options=options(family, part, backend, sec, p, spec, latency),
                                    run=run_dir(backend, label, system, rate, cv, slo, seed)))
    runs = pd.DataFrame(rows)
    if runs.empty:
        raise ValueError("config: no runs; list workloads under diffusion, llm or agent "
                         "(sim or live)")
    twice = runs[runs.duplicated("run", keep=False)]
    if not twice.empty:
        first = twice.iloc[0]
        keys = " and ".join(sorted(set(twice[twice.run == first.run].key)))
        raise ValueError(f"config: {keys} both make run {first.run}; give each workload "
                         f"another label or set `simulate: false` in its live part")
    return runs.set_index("run", drop=False)


RUNS = run_table()


def trace_path(row):
    return f"results/traces/{row.trace_dir}/rate={row.rate}_cv={row.cv}_seed={row.seed}.csv"


def trace_table():
    """One row per trace file: what generates it."""
    traces = RUNS.assign(trace=[trace_path(r) for r in RUNS.itertuples()])
    traces = traces.drop_duplicates(["trace", "program", "requests"])
    clash = traces[traces.duplicated("trace", keep=False)]
    if not clash.empty:
        raise ValueError(f"config: {' and '.join(sorted(set(clash.key)))} need different traces "
                         f"{clash.iloc[0].trace}; give them other labels")
    return traces.set_index("trace", drop=False)


TRACES = trace_table()


def measured_tables():
    """The tables measured on this machine: file stem -> how (`neustream` arguments, conda
    env, GPUs)."""
    prof = config["profile"]
    out = {}
    for row in RUNS[RUNS.device == HERE].drop_duplicates(["family", "part", "program"]).itertuples():
        if row.family == "diffusion":
            args = (f"profile --workload {row.program} --size {prof['size']} --device "
                    f"{prof['torch_device']} --dtype {prof['dtype']} --repeats {prof['repeats']}"
                    f" --warmup {prof['warmup']} --max-batch {prof['max_batch']} --served"
                    f" --threads {prof['torch_threads']}")
            out[row.program] = dict(args=args, env="diffusion", gpu=int(prof["torch_device"] != "cpu"))
            continue
        engine_device = config[row.family]["live"]["engine_device"]
        for m in [row.program] if row.family == "llm" else agent_models(row.program):
            out[m] = dict(args=f"profile --workload {m} --engine vllm --device {engine_device}",
                          env="llm", gpu=int(engine_device == "cuda"))
        if row.family == "agent":
            out["exec-times"] = dict(args="exec-times --repeats 3", env="llm", gpu=0)
    return out


MEASURED = measured_tables()


def figure_table():
    """One row per figure: sweep figures of each workload's sweeps, and the batch sizes at the
    default point; a figure named twice is refused."""
    rows = []
    for (family, part, label), g in RUNS.groupby(["family", "part", "label"], sort=False):
        key, device = g.key.iloc[0], g.device.iloc[0]
        spec = config[family][part]["workloads"][label]
        prefix = "live/" if part == "live" else ""
        for sweep in SWEEPS:
            if spec[sweep]:
                rows.append(dict(figure=f"{prefix}{label}_{sweep}", kind="sweep", key=key,
                                 label=label, sweep=sweep, device=device, family=family, runs=[]))
        d = {p: fmt(spec["default"][p]) for p in SWEEPS}
        first = g[(g.rate == d["rate"]) & (g.cv == d["cv"]) & (g.slo == d["slo"])
                  & (g.seed == g.seed.iloc[0])]
        backends = " then ".join(dict.fromkeys(first.backend))
        rows.append(dict(figure=f"{prefix}{label}_batches", kind="batches", key=key, label=label,
                         sweep="", device=device, family=family, runs=list(first.run),
                         title=f"{label}, default point ({backends})"))
    figures = pd.DataFrame(rows)
    twice = figures[figures.duplicated("figure", keep=False)]
    if not twice.empty:
        raise ValueError(f"config: {' and '.join(sorted(set(twice.key)))} both make figure "
                         f"results/figures/{twice.iloc[0].figure}.png; give them other labels")
    return figures.set_index("figure", drop=False)


FIGURES = figure_table()


def bound_path(row):
    return f"results/bounds/{row.label}/rate={row.rate}_cv={row.cv}_slo={row.slo}_seed={row.seed}.json"


def bound_table():
    """One row per deadline-aware goodput bound: each simulated diffusion run's trace, table
    and SLO (the systems of a point share one)."""
    rows = RUNS[(RUNS.family == "diffusion") & (RUNS.backend == "sim")]
    rows = rows.assign(bound=[bound_path(r) for r in rows.itertuples()])
    return rows.drop_duplicates("bound").set_index("bound", drop=False)


BOUNDS = bound_table()


# -- input functions ---------------------------------------------------------------------------


def run_row(wildcards, backend):
    run = run_dir(backend, wildcards.workload, wildcards.system, wildcards.rate, wildcards.cv,
                  wildcards.slo, wildcards.seed)
    if run not in RUNS.index:
        raise ValueError(f"{run} is not a run of the config")
    return RUNS.loc[run]


def run_inputs(backend):
    """Input function of a run rule: its trace, its latency tables (and weights)."""

    def inputs(wildcards):
        row = run_row(wildcards, backend)
        out = {"trace": trace_path(row), "tables": row.tables}
        if backend == "live" and row.family == "diffusion" and config["weights"] == "pretrained":
            from neustream.backends.diffusion.weights import model_for

            out["weights"] = f"{WEIGHTS_DIR}/{model_for(row.program)}.json"
        return out

    return inputs


def run_param(backend, column):
    """Params function: one column of the run's row."""
    return lambda wildcards: run_row(wildcards, backend)[column]


def figure_param(column):
    """Params function: one column of the figure's row."""
    return lambda wildcards: FIGURES.loc[wildcards.figure, column]


def uses_gpu(row):
    if row.family == "diffusion":
        return int(not (row.device == HERE and config["profile"]["torch_device"] == "cpu"))
    return int(config[row.family]["live"]["engine_device"] == "cuda")


def live_env(wildcards):
    return "../envs/diffusion.yaml" if run_row(wildcards, "live").family == "diffusion" else "../envs/llm.yaml"


def trace_param(column):
    """Params function: one column of the trace's row."""

    def param(wildcards, output):
        if output.trace not in TRACES.index:
            raise ValueError(f"{output.trace} is not a trace of the config")
        return TRACES.loc[output.trace, column]

    return param


def summaries(runs):
    return [f"{r}/summary.json" for r in runs]


def bound_row(wildcards):
    path = (f"results/bounds/{wildcards.workload}/rate={wildcards.rate}_cv={wildcards.cv}"
            f"_slo={wildcards.slo}_seed={wildcards.seed}.json")
    if path not in BOUNDS.index:
        raise ValueError(f"{path} is not a bound of the config")
    return BOUNDS.loc[path]


def final_outputs():
    out = ["results/tables/goodput.csv"] + [f"results/figures/{f}.png" for f in FIGURES.index]
    if fidelity_runs():
        out.append("results/tables/fidelity.csv")
        out += [f"results/tables/device-models/{w}.json" for w in live_diffusion_labels()]
    return out


def fidelity_runs(label=None):
    """Live diffusion runs (of one workload label): the simulator predicts each on its own
    trace and table; `calibrate` fits a device model per label from them."""
    rows = RUNS[(RUNS.family == "diffusion") & (RUNS.backend == "live")]
    if label is not None:
        rows = rows[rows.label == label]
    return list(rows.run)


def live_diffusion_labels():
    return sorted(set(RUNS[(RUNS.family == "diffusion") & (RUNS.backend == "live")].label))


def alternatives(names):
    return "|".join(map(re.escape, names)) or "(?!x)x"


wildcard_constraints:
    workload=alternatives(sorted(set(RUNS.label))),
    system=alternatives(sorted(set(RUNS.system))),
    trace=alternatives(sorted(set(TRACES.trace_dir))),
    rate=NUMBER,
    cv=NUMBER,
    slo=NUMBER,
    seed="[0-9]+",
