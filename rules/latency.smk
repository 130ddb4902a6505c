# Latency tables of `profile.device`, measured on this machine (results/latency/<device>/):
# diffusion modules with torch, LLM engine steps through vLLM, the agent's code stages in the
# sandbox (common.smk's MEASURED says which, and how). Committed tables of other devices
# (resources/latency/<device>/) have no rule: they are data, never overwritten by this machine.


rule profile:
    output:
        table="results/latency/{device}/{table}.csv",
        provenance="results/latency/{device}/{table}.json",
    log:
        "results/logs/profile/{device}/{table}.log",
    params:
        args=lambda wc: MEASURED[wc.table]["args"],
    wildcard_constraints:
        device=re.escape(HERE),
        table=alternatives(MEASURED),
    # Alone on the machine: times measured next to other jobs would be theirs too.
    threads: workflow.cores
    resources:
        gpu=lambda wc: MEASURED[wc.table]["gpu"],
        mem_mb=lambda wc: 32000 if config["profile"]["size"] == "full" else 6000,
        runtime=lambda wc: 120 if config["profile"]["size"] == "full" else 30,
    conda:
        lambda wc: f"../envs/{MEASURED[wc.table]['env']}.yaml"
    shell:
        "neustream {params.args} --out {output.table} > {log} 2>&1"
