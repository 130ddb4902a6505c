# The deadline-aware goodput bound of each simulated diffusion point (common.smk's BOUNDS), the
# goodput table of every run, its figures, and the simulator's prediction of each live
# diffusion run with a device model fitted per live workload (common.smk's FIGURES and
# fidelity_runs say which).


rule bound:
    input:
        trace=lambda wc: trace_path(bound_row(wc)),
        tables=lambda wc: bound_row(wc).tables,
    output:
        "results/bounds/{workload}/rate={rate}_cv={cv}_slo={slo}_seed={seed}.json",
    log:
        "results/logs/bound/{workload}/rate={rate}_cv={cv}_slo={slo}_seed={seed}.log",
    params:
        program=lambda wc: bound_row(wc).program,
        latency=lambda wc: bound_row(wc).latency,
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream bound --workload {params.program} --latency {params.latency}"
        " --trace {input.trace} --slo {wildcards.slo} --out {output} > {log} 2>&1"


rule aggregate:
    input:
        summaries=summaries(RUNS.run),
        bounds=list(BOUNDS.bound),
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
        "neustream aggregate {input.summaries} --bounds {input.bounds} --out {output} > {log} 2>&1"


rule plot:
    input:
        "results/tables/goodput.csv",
    output:
        report(
            "results/figures/{figure}.png",
            caption="../report/sweep.rst",
            category="Goodput",
            subcategory=lambda wc: FIGURES.loc[wc.figure, "label"],
            labels=lambda wc: {"workload": FIGURES.loc[wc.figure, "label"],
                               "sweep": FIGURES.loc[wc.figure, "sweep"]},
        ),
    log:
        "results/logs/plot/{figure}.log",
    params:
        label=figure_param("label"),
        sweep=figure_param("sweep"),
        device=figure_param("device"),
        family=figure_param("family"),
    wildcard_constraints:
        figure=alternatives(FIGURES[FIGURES.kind == "sweep"].index),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream plot --table {input} --workload {params.label} --sweep {params.sweep}"
        " --device {params.device} --out {output} > {log} 2>&1"


rule plot_batches:
    input:
        lambda wc: summaries(FIGURES.loc[wc.figure, "runs"]),
    output:
        report(
            "results/figures/{figure}.png",
            caption="../report/batches.rst",
            category="Batch sizes",
            labels=lambda wc: {"workload": FIGURES.loc[wc.figure, "label"]},
        ),
    log:
        "results/logs/plot/{figure}.log",
    params:
        runs=figure_param("runs"),
        title=figure_param("title"),
    wildcard_constraints:
        figure=alternatives(FIGURES[FIGURES.kind == "batches"].index),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream plot-batches {params.runs} --title '{params.title}'"
        " --out {output} > {log} 2>&1"


rule fidelity:
    input:
        summaries(fidelity_runs()),
    output:
        "results/tables/fidelity.csv",
    log:
        "results/logs/fidelity.log",
    params:
        runs=fidelity_runs(),
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream fidelity {params.runs} --out {output} > {log} 2>&1"


rule calibrate:
    input:
        lambda wc: summaries(fidelity_runs(wc.workload)),
    output:
        "results/tables/device-models/{workload}.json",
    log:
        "results/logs/calibrate/{workload}.log",
    params:
        runs=lambda wc: fidelity_runs(wc.workload),
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream calibrate {params.runs} --out {output} > {log} 2>&1"
