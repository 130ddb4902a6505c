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
