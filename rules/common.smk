# Config validation, sweep expansion, input functions and wildcard constraints.
# Stage files (rules/*.smk) hold rules only.

from snakemake.utils import validate

validate(config, schema="../config/schema.yaml")

SWEEPS = ("rate", "cv", "slo")
BACKEND = config["backend"]
NUMBER = r"[0-9]+(\.[0-9]+)?(e-?[0-9]+)?"


def fmt(x):
    """Numbers as they appear in paths: 1.25, 2, 0.5."""
    return f"{float(x):g}"


def settings(workload):
    """{(rate, cv, slo): [sweeps it belongs to]} for one workload, as path strings."""
    spec = config["workloads"][workload]
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
    ]


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
    return ["results/tables/goodput.csv"] + figures + batches


wildcard_constraints:
    workload="|".join(config["workloads"]),
    system="|".join(config["systems"]),
    backend=BACKEND,
    sweep="|".join(SWEEPS),
    rate=NUMBER,
    cv=NUMBER,
    slo=NUMBER,
    seed="[0-9]+",
