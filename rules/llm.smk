# LLM serving (config["llm"]): traces, the table of the live device, live runs through vLLM,
# simulated runs, and figures. Input functions are in common.smk. Every rule constrains
# `workload` to the LLM workloads, so diffusion rules with the same path shapes never clash.


rule profile_llm:
    output:
        table=f"{config['latency_dir']}/{{device}}/{{workload}}.csv",
        provenance=f"{config['latency_dir']}/{{device}}/{{workload}}.json",
    log:
        "results/logs/profile_llm/{device}/{workload}.log",
    params:
        engine_device=LLM_LIVE.get("engine_device", "cpu"),
    wildcard_constraints:
        device="|".join(map(re.escape, {LLM_LIVE.get("device", "local-vllm"),
                                        AGENT_LIVE.get("device", "local-vllm")})),
        workload=llm_constraint([*LLM_LIVE_WORKLOADS, *agent_live_models()]),
    # Alone on the machine: step times measured next to other jobs would be theirs too.
    threads: workflow.cores
    resources:
        mem_mb=6000,
        runtime=20,
    conda:
        "../envs/llm.yaml"
    shell:
        "neustream profile-llm --workload {wildcards.workload} --engine vllm"
        " --device {params.engine_device} --out {output.table} > {log} 2>&1"


rule trace_llm:
    output:
        "results/traces/{workload}/rate={rate}_cv={cv}_seed={seed}.csv",
    log:
        "results/logs/trace/{workload}/rate={rate}_cv={cv}_seed={seed}.log",
    params:
        requests=llm_requests,
    wildcard_constraints:
        workload=llm_constraint(LLM_WORKLOADS),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream trace --workload {wildcards.workload} --rate {wildcards.rate}"
        " --cv {wildcards.cv} --requests {params.requests} --seed {wildcards.seed}"
        " --out {output} > {log} 2>&1"


rule serve_llm:
    input:
        trace="results/traces/{workload}/rate={rate}_cv={cv}_seed={seed}.csv",
        latency=llm_table,
    output:
        requests="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/requests.jsonl",
        batches="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/batches.jsonl",
        summary="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/summary.json",
    log:
        "results/logs/serve_llm/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}.log",
    params:
        sweeps=llm_sweeps_of,
        pred_steps=LLM.get("pred_steps", 30),
        engine_device=LLM_LIVE.get("engine_device", "cpu"),
        out=lambda wc, output: os.path.dirname(output.summary),
    wildcard_constraints:
        workload=llm_constraint(LLM_LIVE_WORKLOADS),
        system=llm_constraint(LLM_SYSTEMS),
    # Alone on the machine: a live run's SLOs assume the device is its own.
    threads: workflow.cores
    resources:
        mem_mb=6000,
        runtime=20,
    conda:
        "../envs/llm.yaml"
    shell:
        "neustream serve-llm --workload {wildcards.workload} --system {wildcards.system}"
        " --latency {input.latency} --trace {input.trace} --rate {wildcards.rate}"
        " --cv {wildcards.cv} --slo {wildcards.slo} --seed {wildcards.seed}"
        " --pred-steps {params.pred_steps} --engine-device {params.engine_device}"
        " --sweeps '{params.sweeps}' --out {params.out} > {log} 2>&1"


rule simulate_llm:
    input:
        trace="results/traces/{workload}/rate={rate}_cv={cv}_seed={seed}.csv",
        latency=llm_table,
    output:
        requests="results/runs/sim/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/requests.jsonl",
        batches="results/runs/sim/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/batches.jsonl",
        summary="results/runs/sim/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/summary.json",
    log:
        "results/logs/simulate_llm/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}.log",
    params:
        sweeps=llm_sweeps_of,
        pred_steps=LLM.get("pred_steps", 30),
        out=lambda wc, output: os.path.dirname(output.summary),
    wildcard_constraints:
        workload=llm_constraint(LLM_WORKLOADS),
        system=llm_constraint(LLM_SYSTEMS),
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream simulate-llm --workload {wildcards.workload} --system {wildcards.system}"
        " --latency {input.latency} --trace {input.trace} --rate {wildcards.rate}"
        " --cv {wildcards.cv} --slo {wildcards.slo} --seed {wildcards.seed}"
        " --pred-steps {params.pred_steps} --sweeps '{params.sweeps}' --out {params.out}"
        " > {log} 2>&1"


rule plot_llm:
    input:
        "results/tables/goodput.csv",
    output:
        report(
            "results/figures/{workload}_{sweep}.png",
            caption="../report/llm_sweep.rst",
            category="LLM goodput",
            subcategory="{workload}",
            labels={"workload": "{workload}", "sweep": "{sweep}"},
        ),
    log:
        "results/logs/plot/{workload}_{sweep}.log",
    wildcard_constraints:
        workload=llm_constraint(LLM_WORKLOADS),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream plot-llm --table {input} --workload {wildcards.workload}"
        " --sweep {wildcards.sweep} --out {output} > {log} 2>&1"


rule plot_llm_batches:
    input:
        lambda wc: [f"{d}/summary.json" for d in llm_default_runs(wc)],
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
        runs=llm_default_runs,
        title=llm_batches_title,
    wildcard_constraints:
        workload=llm_constraint(LLM_WORKLOADS),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream plot-batches {params.runs} --title '{params.title}'"
        " --out {output} > {log} 2>&1"
