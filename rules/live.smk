# Live diffusion servers (config["live"]): traces, live runs with real modules, their goodput
# table, figures, and the simulator's prediction for every run. Input functions are in
# common.smk. Every rule constrains `workload` to the live workloads.


rule trace_live:
    output:
        "results/traces/live/{workload}/rate={rate}_cv={cv}_seed={seed}.csv",
    log:
        "results/logs/trace_live/{workload}/rate={rate}_cv={cv}_seed={seed}.log",
    params:
        requests=LIVE.get("requests", 40),
    wildcard_constraints:
        workload=live_constraint(LIVE_WORKLOADS),
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream trace --workload {wildcards.workload} --rate {wildcards.rate}"
        " --cv {wildcards.cv} --requests {params.requests} --seed {wildcards.seed}"
        " --out {output} > {log} 2>&1"


rule serve_live:
    input:
        trace="results/traces/live/{workload}/rate={rate}_cv={cv}_seed={seed}.csv",
        latency=live_table,
        weights=live_weights,
    output:
        requests="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/requests.jsonl",
        batches="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/batches.jsonl",
        summary="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/summary.json",
    log:
        "results/logs/serve_live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}.log",
    params:
        sweeps=live_sweeps_of,
        step_delta=live_step_delta,
        weights=config.get("weights", "random"),
        weights_dir=WEIGHTS_DIR,
        max_lag=LIVE.get("max_lag_s", 1.0),
        lookahead="--lookahead" if LIVE.get("lookahead") else "",
        torch_threads=config["profile"]["torch_threads"],
        out=lambda wc, output: os.path.dirname(output.summary),
    wildcard_constraints:
        workload=live_constraint(LIVE_WORKLOADS),
        system=live_constraint(LIVE_SYSTEMS),
    # Alone on the machine: a live run's deadlines assume the device is its own.
    threads: workflow.cores
    resources:
        mem_mb=16000,
        runtime=60,
        # The tiny CPU sweep (live.device == profile.device on a CPU) needs no GPU.
        gpu=lambda wc: int(not (LIVE.get("device") == config["profile"]["device"]
                                and config["profile"]["torch_device"] == "cpu")),
    conda:
        "../envs/diffusion.yaml"
    shell:
        "neustream serve --workload {wildcards.workload} --system {wildcards.system}"
        " --latency {input.latency} --trace {input.trace} --rate {wildcards.rate}"
        " --cv {wildcards.cv} --slo {wildcards.slo} --seed {wildcards.seed}"
        " --step-delta {params.step_delta} --weights {params.weights}"
        " --weights-dir {params.weights_dir} --threads {params.torch_threads}"
        " --max-lag {params.max_lag} {params.lookahead}"
        " --sweeps '{params.sweeps}' --out {params.out} > {log} 2>&1"


rule aggregate_live:
    input:
        lambda wc: [f"{d}/summary.json" for d in live_runs()],
    output:
        report(
            "results/tables/goodput_live.csv",
            caption="../report/goodput.rst",
            category="Tables",
        ),
    log:
        "results/logs/aggregate_live.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream aggregate {input} --out {output} > {log} 2>&1"


rule fidelity:
    input:
        lambda wc: [f"{d}/summary.json" for d in live_runs()],
    output:
        "results/tables/fidelity.csv",
    log:
        "results/logs/fidelity.log",
    params:
        runs=lambda wc: live_runs(),
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream fidelity {params.runs} --out {output} > {log} 2>&1"


rule plot_live:
    input:
        "results/tables/goodput_live.csv",
    output:
        report(
            "results/figures/live/{workload}_{sweep}.png",
            caption="../report/sweep.rst",
            category="Live goodput",
            subcategory="{workload}",
        ),
    log:
        "results/logs/plot_live/{workload}_{sweep}.log",
    wildcard_constraints:
        workload=live_constraint(LIVE_WORKLOADS),
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream plot --table {input} --workload {wildcards.workload}"
        " --sweep {wildcards.sweep} --out {output} > {log} 2>&1"
