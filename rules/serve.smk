rule simulate:
    input:
        trace="results/traces/{workload}/rate={rate}_cv={cv}_seed={seed}.csv",
        latency=latency_table,
    output:
        requests="results/runs/sim/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/requests.jsonl",
        batches="results/runs/sim/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/batches.jsonl",
        summary="results/runs/sim/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/summary.json",
    log:
        "results/logs/simulate/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}.log",
    params:
        sweeps=sweeps_of,
        step_delta=step_delta,
        out=lambda wc, output: os.path.dirname(output.summary),
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream simulate --workload {wildcards.workload} --system {wildcards.system}"
        " --latency {input.latency} --trace {input.trace} --rate {wildcards.rate}"
        " --cv {wildcards.cv} --slo {wildcards.slo} --seed {wildcards.seed}"
        " --step-delta {params.step_delta} --sweeps '{params.sweeps}' --out {params.out}"
        " > {log} 2>&1"


# `backend: live`: the main sweeps (`workloads`) are served by the live servers instead of the
# simulator, on the latency tables of `device` (measured there first: `neustream profile
# --graphs --served`; the `profile` rule does it for `device: local`). Same traces, same record.
rule serve:
    input:
        trace="results/traces/{workload}/rate={rate}_cv={cv}_seed={seed}.csv",
        latency=latency_table,
        weights=live_weights,
    output:
        requests="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/requests.jsonl",
        batches="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/batches.jsonl",
        summary="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/summary.json",
    log:
        "results/logs/serve/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}.log",
    params:
        sweeps=sweeps_of,
        step_delta=step_delta,
        weights=config.get("weights", "random"),
        weights_dir=WEIGHTS_DIR,
        max_lag=LIVE.get("max_lag_s", 1.0),
        lookahead="--lookahead" if LIVE.get("lookahead") else "",
        torch_threads=config["profile"]["torch_threads"],
        out=lambda wc, output: os.path.dirname(output.summary),
    wildcard_constraints:
        workload="|".join(map(re.escape, config["workloads"])) if BACKEND == "live" else NEVER,
    # Alone on the machine: a live run's deadlines assume the device is its own.
    threads: workflow.cores
    resources:
        mem_mb=16000,
        runtime=60,
        gpu=lambda wc: int(not (config["device"] == config["profile"]["device"]
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
