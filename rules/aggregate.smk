rule aggregate:
    input:
        all_summaries(),
    output:
        report(
            "results/tables/goodput.csv",
            caption="../report/goodput.rst",
            category="Tables",
        ),
    log:
        "results/logs/aggregate.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream aggregate {input} --out {output} > {log} 2>&1"


rule plot_sweep:
    input:
        "results/tables/goodput.csv",
    output:
        report(
            "results/figures/{workload}_{sweep}.png",
            caption="../report/sweep.rst",
            category="Goodput",
            subcategory="{workload}",
            labels={"workload": "{workload}", "sweep": "{sweep}"},
        ),
    log:
        "results/logs/plot/{workload}_{sweep}.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream plot --table {input} --workload {wildcards.workload}"
        " --sweep {wildcards.sweep} --out {output} > {log} 2>&1"


rule plot_batches:
    input:
        lambda wc: [f"{d}/summary.json" for d in default_runs(wc)],
    output:
        report(
            "results/figures/{workload}_batches.png",
            caption="../report/batches.rst",
            category="Batch sizes",
            labels={"workload": "{workload}"},
        ),
    log:
        "results/logs/plot/{workload}_batches.log",
    params:
        runs=default_runs,
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream plot-batches {params.runs} --title '{wildcards.workload}, default point'"
        " --out {output} > {log} 2>&1"
