# Config validation, sweep expansion, input functions and wildcard constraints.
# Stage files (rules/*.smk) hold rules only.

import copy
import re

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

SWEEPS = ("rate", "cv", "slo")
BACKEND = config["backend"]
NUMBER = r"[0-9]+(\.[0-9]+)?(e-?[0-9]+)?"


def fmt(x):
    """Numbers as they appear in paths: 1.25, 2, 0.5."""
    return f"{float(x):g}"


def settings(workload):
    """{(rate, cv, slo): [sweeps it belongs to]} for one workload, as path strings."""
    return points(config["workloads"][workload])


def points(spec):
    """{(rate, cv, slo): [sweeps]} of a workload spec (default point + sweeps), as path
    strings; the default point alone when no sweep is given."""
    point = {p: fmt(spec["default"][p]) for p in SWEEPS}
    out = {}
    for sweep in SWEEPS:
        for value in spec.get(sweep) or []:
            key = tuple(fmt(value) if p == sweep else point[p] for p in SWEEPS)
            out.setdefault(key, []).append(sweep)
    if not out:  # no sweep given: run the default point alone
        out[tuple(point[p] for p in SWEEPS)] = []
    return out


def run_dir(workload, system, rate, cv, slo, seed, backend=BACKEND):
    return (f"results/runs/{backend}/{workload}/{system}/"
            f"rate={rate}_cv={cv}_slo={slo}_seed={seed}")


def all_summaries():
    return [
        f"{run_dir(w, s, rate, cv, slo, seed)}/summary.json"
        for w in config["workloads"]
        for (rate, cv, slo) in settings(w)
        for s in config["systems"]
        for seed in config["seeds"]
    ] + llm_summaries() + agent_summaries()


def sweeps_of(wildcards):
    return ",".join(settings(wildcards.workload).get(
        (wildcards.rate, wildcards.cv, wildcards.slo), []))


def step_delta(wildcards):
    return config["workloads"][wildcards.workload].get("step_delta", config["step_delta"])


def latency_table(wildcards):
    return f"{config['latency_dir']}/{config['device']}/{wildcards.workload}.csv"


def default_runs(wildcards):
    """The default point's run of every system (first seed), for the batch figure."""
    spec = config["workloads"][wildcards.workload]["default"]
    return [
        run_dir(wildcards.workload, s, fmt(spec["rate"]), fmt(spec["cv"]), fmt(spec["slo"]),
                config["seeds"][0])
        for s in config["systems"]
    ]


def final_outputs():
    figures = [
        f"results/figures/{w}_{sweep}.png"
        for w, spec in config["workloads"].items()
        for sweep in SWEEPS
        if spec.get(sweep)
    ]
    batches = [f"results/figures/{w}_batches.png" for w in config["workloads"]]
    return (["results/tables/goodput.csv"] + figures + batches + llm_figures()
            + live_outputs() + agent_figures())


# -- LLM workloads (config["llm"]: "live" runs through vLLM here, "sim" runs on tables) ---------

LLM = config.get("llm") or {}
LLM_LIVE = LLM.get("live") or {}
LLM_SIM = LLM.get("sim") or {}
LLM_LIVE_WORKLOADS = dict(LLM_LIVE.get("workloads") or {})
LLM_SIM_WORKLOADS = dict(LLM_SIM.get("workloads") or {})
_both = sorted(set(LLM_LIVE_WORKLOADS) & set(LLM_SIM_WORKLOADS))
if _both:
    raise ValueError(f"llm: workload(s) {', '.join(_both)} under both live and sim; "
                     "list each once (live runs are simulated too when live.simulate is true)")
LLM_WORKLOADS = {**LLM_LIVE_WORKLOADS, **LLM_SIM_WORKLOADS}
LLM_SYSTEMS = LLM.get("systems") or ["neustream-llm", "vllm-054", "vllm"]
LLM_SEEDS = LLM.get("seeds") or [0]
NEVER = "(?!x)x"  # a wildcard constraint that matches nothing


def llm_points(workload):
    return points(LLM_WORKLOADS[workload])


def llm_backends(workload):
    if workload in LLM_LIVE_WORKLOADS:
        return ["live", "sim"] if LLM_LIVE.get("simulate", True) else ["live"]
    return ["sim"]


def llm_summaries():
    return [
        f"{run_dir(w, s, rate, cv, slo, seed, backend)}/summary.json"
        for w in LLM_WORKLOADS
        for backend in llm_backends(w)
        for (rate, cv, slo) in llm_points(w)
        for s in LLM_SYSTEMS
        for seed in LLM_SEEDS
    ]


def llm_figures():
    return [
        f"results/figures/{w}_{sweep}.png"
        for w, spec in LLM_WORKLOADS.items()
        for sweep in SWEEPS
        if spec.get(sweep)
    ] + [f"results/figures/{w}_batches.png" for w in LLM_WORKLOADS]


def llm_sweeps_of(wildcards):
    return ",".join(llm_points(wildcards.workload).get(
        (wildcards.rate, wildcards.cv, wildcards.slo), []))


def llm_requests(wildcards):
    live = wildcards.workload in LLM_LIVE_WORKLOADS
    return (LLM_LIVE if live else LLM_SIM).get("requests", 40 if live else 1000)


def llm_table(wildcards):
    """Live workloads: the table measured here; sim workloads: their device's committed table."""
    w = wildcards.workload
    device = (LLM_LIVE.get("device", "local-vllm") if w in LLM_LIVE_WORKLOADS
              else LLM_SIM_WORKLOADS[w].get("device", config["device"]))
    return f"{config['latency_dir']}/{device}/{w}.csv"


def llm_default_runs(wildcards):
    """The default point's run of every LLM system and backend (first seed)."""
    d = LLM_WORKLOADS[wildcards.workload]["default"]
    return [
        run_dir(wildcards.workload, s, fmt(d["rate"]), fmt(d["cv"]), fmt(d["slo"]), LLM_SEEDS[0], b)
        for b in llm_backends(wildcards.workload)
        for s in LLM_SYSTEMS
    ]


def llm_batches_title(wildcards):
    order = ", then ".join("live through vLLM" if b == "live" else "simulated"
                           for b in llm_backends(wildcards.workload))
    return f"{wildcards.workload}, default point: {', '.join(LLM_SYSTEMS)} ({order})"


def llm_constraint(names):
    return "|".join(map(re.escape, names)) or NEVER


# -- Live diffusion servers (config["live"]) and weights ------------------------------------

LIVE = config.get("live") or {}
LIVE_WORKLOADS = dict(LIVE.get("workloads") or {})
if BACKEND == "live" and set(LIVE_WORKLOADS) & set(config["workloads"]):
    raise ValueError("backend: live serves `workloads` live already; list "
                     f"{', '.join(sorted(set(LIVE_WORKLOADS) & set(config['workloads'])))} "
                     "under one of `workloads` and `live.workloads`")
LIVE_SYSTEMS = LIVE.get("systems") or ["neustream", "clockwork"]
LIVE_SEEDS = LIVE.get("seeds") or [0]
WEIGHTS_DIR = "resources/weights"


def live_constraint(names):
    return "|".join(map(re.escape, names)) or "(?!x)x"


def live_points(workload):
    return points(LIVE_WORKLOADS[workload])


def live_runs():
    return [
        run_dir(w, s, rate, cv, slo, seed, "live")
        for w in LIVE_WORKLOADS
        for (rate, cv, slo) in live_points(w)
        for s in LIVE_SYSTEMS
        for seed in LIVE_SEEDS
    ]


def live_sweeps_of(wildcards):
    return ",".join(live_points(wildcards.workload).get(
        (wildcards.rate, wildcards.cv, wildcards.slo), []))


def live_step_delta(wildcards):
    return LIVE_WORKLOADS[wildcards.workload].get("step_delta", config["step_delta"])


def live_table(wildcards):
    """The latency table of the machine the live run executes on (its sidecar says which
    modules run); `local` is measured here first by the profile rule."""
    return f"{config['latency_dir']}/{LIVE.get('device', 'local')}/{wildcards.workload}.csv"


def live_weights(wildcards):
    """With `weights: pretrained`, the manifest of the downloaded weights (rules/weights.smk)."""
    if config.get("weights", "random") == "random":
        return []
    from neustream.models.weights import model_for

    return [f"{WEIGHTS_DIR}/{model_for(wildcards.workload)}.json"]


def live_outputs():
    if not LIVE_WORKLOADS:
        return []
    figures = [
        f"results/figures/live/{w}_{sweep}.png"
        for w, spec in LIVE_WORKLOADS.items()
        for sweep in SWEEPS
        if spec.get(sweep)
    ]
    return ["results/tables/goodput_live.csv", "results/tables/fidelity.csv"] + figures


# -- Multi-agent workloads (config["agent"]) ---------------------------------------------------
# A workload key is a label: `program` names the pipeline (default: the label itself), so one
# pipeline can run under two placements (e.g. four GPUs and one) side by side.

AGENT = config.get("agent") or {}
AGENT_LIVE = AGENT.get("live") or {}
AGENT_SIM = AGENT.get("sim") or {}
AGENT_LIVE_WORKLOADS = dict(AGENT_LIVE.get("workloads") or {})
AGENT_SIM_WORKLOADS = dict(AGENT_SIM.get("workloads") or {})
_both = sorted(set(AGENT_LIVE_WORKLOADS) & set(AGENT_SIM_WORKLOADS))
if _both:
    raise ValueError(f"agent: workload(s) {', '.join(_both)} under both live and sim")
AGENT_WORKLOADS = {**AGENT_LIVE_WORKLOADS, **AGENT_SIM_WORKLOADS}
_clash = sorted(set(AGENT_WORKLOADS) & (set(config["workloads"]) | set(LLM_WORKLOADS)))
if _clash:
    raise ValueError(f"agent: workload label(s) {', '.join(_clash)} also used by another section")
AGENT_SYSTEMS = AGENT.get("systems") or ["neustream-llm", "vllm-054", "vllm"]
AGENT_SEEDS = AGENT.get("seeds") or [0]


def agent_program(label):
    return AGENT_WORKLOADS[label].get("program", label)


def agent_backends(label):
    if label in AGENT_LIVE_WORKLOADS:
        return ["live", "sim"] if AGENT_LIVE.get("simulate", True) else ["live"]
    return ["sim"]


def agent_summaries():
    return [
        f"{run_dir(w, s, rate, cv, slo, seed, backend)}/summary.json"
        for w in AGENT_WORKLOADS
        for backend in agent_backends(w)
        for (rate, cv, slo) in points(AGENT_WORKLOADS[w])
        for s in agent_systems(w)
        for seed in AGENT_SEEDS
    ]


def agent_systems(label):
    if label in AGENT_LIVE_WORKLOADS:
        return AGENT_LIVE.get("systems") or AGENT_SYSTEMS
    return AGENT_SYSTEMS


def agent_figures():
    return [
        f"results/figures/{w}_{sweep}.png"
        for w, spec in AGENT_WORKLOADS.items()
        for sweep in SWEEPS
        if spec.get(sweep)
    ]


def agent_sweeps_of(wildcards):
    return ",".join(points(AGENT_WORKLOADS[wildcards.workload]).get(
        (wildcards.rate, wildcards.cv, wildcards.slo), []))


def agent_requests(wildcards):
    live = wildcards.workload in AGENT_LIVE_WORKLOADS
    return (AGENT_LIVE if live else AGENT_SIM).get("requests", 20 if live else 300)


def agent_device(label):
    if label in AGENT_LIVE_WORKLOADS:
        return AGENT_LIVE.get("device", "local-vllm")
    return AGENT_SIM_WORKLOADS[label].get("device", config["device"])


def agent_tables(wildcards):
    """The LLM tables of the pipeline's models and the measured code-execution times."""
    from neustream.programs import get_agent_program

    d = f"{config['latency_dir']}/{agent_device(wildcards.workload)}"
    models = sorted({s.model for s in get_agent_program(agent_program(wildcards.workload)).llm_stages})
    return {"tables": [f"{d}/{m}.csv" for m in models], "exec_times": f"{d}/exec-times.csv"}


def agent_placement(wildcards):
    """Where the engine instances run: a live pipeline runs them all on this machine's one
    device unless its config says otherwise (its simulation uses the same placement)."""
    default = "shared" if wildcards.workload in AGENT_LIVE_WORKLOADS else "spread"
    return AGENT_WORKLOADS[wildcards.workload].get("placement", default)


def agent_live_models():
    """LLM models of the live pipelines: the profile_llm rule measures them here."""
    from neustream.programs import get_agent_program

    return sorted({s.model for w in AGENT_LIVE_WORKLOADS
                   for s in get_agent_program(agent_program(w)).llm_stages})


wildcard_constraints:
    workload="|".join(config["workloads"]),
    system="|".join(config["systems"]),
    backend=BACKEND,
    sweep="|".join(SWEEPS),
    rate=NUMBER,
    cv=NUMBER,
    slo=NUMBER,
    seed="[0-9]+",
