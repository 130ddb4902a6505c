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
        system=llm_constraint({*AGENT_SYSTEMS, *(AGENT_LIVE.get('systems') or [])}),
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


rule exec_times:
    output:
        table=f"{config['latency_dir']}/{{device}}/exec-times.csv",
        provenance=f"{config['latency_dir']}/{{device}}/exec-times.json",
    log:
        "results/logs/exec_times/{device}.log",
    wildcard_constraints:
        device=re.escape(AGENT_LIVE.get("device", "local-vllm")),
    # Alone on the machine: run times measured next to other jobs would be theirs too.
    threads: workflow.cores
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../envs/llm.yaml"
    shell:
        "neustream exec-times --repeats 3 --out {output.table} > {log} 2>&1"


rule serve_agent:
    input:
        unpack(agent_tables),
        trace="results/traces/{workload}/rate={rate}_cv={cv}_seed={seed}.csv",
    output:
        requests="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/requests.jsonl",
        batches="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/batches.jsonl",
        summary="results/runs/live/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}/summary.json",
    log:
        "results/logs/serve_agent/{workload}/{system}/rate={rate}_cv={cv}_slo={slo}_seed={seed}.log",
    params:
        program=lambda wc: agent_program(wc.workload),
        sweeps=agent_sweeps_of,
        pred_steps=AGENT.get("pred_steps", 30),
        engine_device=AGENT_LIVE.get("engine_device", "cpu"),
        placement=agent_placement,
        kv_cache_gib=AGENT_LIVE.get("kv_cache_gib", 0.25),
        latency_dir=lambda wc, input: os.path.dirname(input.exec_times),
        out=lambda wc, output: os.path.dirname(output.summary),
    wildcard_constraints:
        workload=llm_constraint(AGENT_LIVE_WORKLOADS),
        system=llm_constraint({*AGENT_SYSTEMS, *(AGENT_LIVE.get('systems') or [])}),
    # Alone on the machine: a live run's SLOs assume the device is its own.
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/llm.yaml"
    shell:
        "neustream serve-agent --workload {params.program} --label {wildcards.workload}"
        " --system {wildcards.system} --latency-dir {params.latency_dir}"
        " --trace {input.trace} --rate {wildcards.rate} --cv {wildcards.cv}"
        " --slo {wildcards.slo} --seed {wildcards.seed} --pred-steps {params.pred_steps}"
        " --engine-device {params.engine_device} --placement {params.placement}"
        " --kv-cache-gib {params.kv_cache_gib} --sweeps '{params.sweeps}'"
        " --out {params.out} > {log} 2>&1"


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
