rule trace:
    output:
        "results/traces/{workload}/rate={rate}_cv={cv}_seed={seed}.csv",
    log:
        "results/logs/trace/{workload}/rate={rate}_cv={cv}_seed={seed}.log",
    params:
        requests=config["requests"],
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream trace --workload {wildcards.workload} --rate {wildcards.rate}"
        " --cv {wildcards.cv} --requests {params.requests} --seed {wildcards.seed}"
        " --out {output} > {log} 2>&1"
