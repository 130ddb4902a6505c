# Traces: Gamma arrivals, seeded; one per (workload, rate, cv, seed) of a part (common.smk's
# TRACES); a live part's under results/traces/live/.


rule trace:
    output:
        trace="results/traces/{trace}/rate={rate}_cv={cv}_seed={seed}.csv",
        drawn="results/traces/{trace}/rate={rate}_cv={cv}_seed={seed}.json",
    log:
        "results/logs/trace/{trace}/rate={rate}_cv={cv}_seed={seed}.log",
    params:
        program=trace_param("program"),
        requests=trace_param("requests"),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream trace --workload {params.program} --rate {wildcards.rate}"
        " --cv {wildcards.cv} --requests {params.requests} --seed {wildcards.seed}"
        " --out {output.trace} > {log} 2>&1"
