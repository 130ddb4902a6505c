# Re-measures latency tables on this machine, for `device: <profile.device>`.
# The committed tables of other devices (resources/latency/h100/...) have no rule:
# they are data, and a forced rerun never overwrites them with this machine's numbers.


rule profile:
    output:
        table=f"{config['latency_dir']}/{{device}}/{{workload}}.csv",
        provenance=f"{config['latency_dir']}/{{device}}/{{workload}}.json",
    log:
        "results/logs/profile/{device}/{workload}.log",
    params:
        p=config["profile"],
    wildcard_constraints:
        device=config["profile"]["device"],
        workload=live_constraint(sorted(set(config["workloads"]) | set(LIVE_WORKLOADS))),
    resources:
        gpu=lambda wc: 0 if config["profile"]["torch_device"] == "cpu" else 1,
        mem_mb=4000 if config["profile"]["size"] == "tiny" else 32000,
        runtime=30 if config["profile"]["size"] == "tiny" else 120,
    conda:
        "../envs/diffusion.yaml"
    shell:
        "neustream profile --workload {wildcards.workload} --size {params.p[size]}"
        " --device {params.p[torch_device]} --dtype {params.p[dtype]}"
        " --repeats {params.p[repeats]} --warmup {params.p[warmup]}"
        " --max-batch {params.p[max_batch]} --served --threads {params.p[torch_threads]}"
        " --out {output.table} > {log} 2>&1"
