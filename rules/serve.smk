# Runs: every row of common.smk's RUNS, simulated (results/runs/sim/) or live on this machine
# (results/runs/live/); one `neustream simulate|serve` line for every family.


rule simulate:
    input:
        unpack(run_inputs("sim")),
    output:
        requests="results/runs/sim/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/requests.jsonl",
        batches="results/runs/sim/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/batches.jsonl",
        summary="results/runs/sim/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/summary.json",
    log:
        "results/logs/simulate/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}.log",
    params:
        program=run_param("sim", "program"),
        latency=run_param("sim", "latency"),
        sweeps=run_param("sim", "sweeps"),
        options=run_param("sim", "options"),
        out=lambda wc, output: os.path.dirname(output.summary),
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream simulate --workload {params.program} --label {wildcards.workload}"
        " --system {wildcards.system} --latency {params.latency} --trace {input.trace}"
        " --rate {wildcards.rate} --cv {wildcards.cv} --slo {wildcards.slo}"
        " --seed {wildcards.seed} --sweeps '{params.sweeps}' {params.options}"
        " --out {params.out} > {log} 2>&1"


rule serve:
    input:
        unpack(run_inputs("live")),
    output:
        requests="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/requests.jsonl",
        batches="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/batches.jsonl",
        summary="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/summary.json",
    log:
        "results/logs/serve/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}.log",
    params:
        program=run_param("live", "program"),
        latency=run_param("live", "latency"),
        sweeps=run_param("live", "sweeps"),
        options=run_param("live", "options"),
        out=lambda wc, output: os.path.dirname(output.summary),
    # Alone on the machine: a live run's deadlines assume the device is its own.
    threads: workflow.cores
    resources:
        mem_mb=lambda wc: {"diffusion": 16000, "llm": 6000, "agent": 8000}[run_row(wc, "live").family],
        runtime=60,
        gpu=lambda wc: uses_gpu(run_row(wc, "live")),
    conda:
        live_env
    shell:
        "neustream serve --workload {params.program} --label {wildcards.workload}"
        " --system {wildcards.system} --latency {params.latency} --trace {input.trace}"
        " --rate {wildcards.rate} --cv {wildcards.cv} --slo {wildcards.slo}"
        " --seed {wildcards.seed} --sweeps '{params.sweeps}' {params.options}"
        " --out {params.out} > {log} 2>&1"
