# Multi-agent serving (config["agent"]): traces, simulated runs on the committed tables of the
# pipeline's models, and per-stage figures. Input functions are in common.smk. Every rule
# constrains `workload` to the agent labels, so other rules with the same path shapes never clash.


rule trace_agent:
    output:
        "results/traces/{workload}/rate={rate}_cv={cv}_seed={seed}.csv",
    log:
        "results/logs/trace/{workload}/rate={rate}_cv={cv}_seed={seed}.log",
    params:
        requests=agent_requests,
        program=lambda wc: agent_program(wc.workload),
    wildcard_constraints:
        workload=llm_constraint(AGENT_WORKLOADS),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream trace --workload {params.program} --rate {wildcards.rate}"
        " --cv {wildcards.cv} --requests {params.requests} --seed {wildcards.seed}"
        " --out {output} > {log} 2>&1"


rule simulate_agent:
    input:
        unpack(agent_tables),
        trace="results/traces/{workload}/rate={rate}_cv={cv}_seed={seed}.csv",
    output:
        requests="results/runs/sim/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/requests.jsonl",
        batches="results/runs/sim/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/batches.jsonl",
        summary="results/runs/sim/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/summary.json",
    log:
        "results/logs/simulate_agent/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}.log",
    params:
        program=lambda wc: agent_program(wc.workload),
        sweeps=agent_sweeps_of,
        placement=agent_placement,
        pred_steps=AGENT.get("pred_steps", 30),
        latency_dir=lambda wc, input: os.path.dirname(input.exec_times),
        out=lambda wc, output: os.path.dirname(output.summary),
    wildcard_constraints:
        workload=llm_constraint(AGENT_WORKLOADS),
        system=llm_constraint(AGENT_SYSTEMS),
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream simulate-agent --workload {params.program} --label {wildcards.workload}"
        " --system {wildcards.system} --latency-dir {params.latency_dir}"
        " --exec-times {input.exec_times} --trace {input.trace} --rate {wildcards.rate}"
        " --cv {wildcards.cv} --slo {wildcards.slo} --seed {wildcards.seed}"
        " --placement {params.placement} --pred-steps {params.pred_steps}"
        " --sweeps '{params.sweeps}' --out {params.out} > {log} 2>&1"


rule plot_agent:
    input:
        "results/tables/goodput.csv",
    output:
        report(
            "results/figures/{workload}_{sweep}.png",
            caption="../report/agent_sweep.rst",
            category="Multi-agent goodput",
            subcategory="{workload}",
            labels={"workload": "{workload}", "sweep": "{sweep}"},
        ),
    log:
        "results/logs/plot/{workload}_{sweep}.log",
    wildcard_constraints:
        workload=llm_constraint(AGENT_WORKLOADS),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    shell:
        "neustream plot-agent --table {input} --workload {wildcards.workload}"
        " --sweep {wildcards.sweep} --out {output} > {log} 2>&1"
