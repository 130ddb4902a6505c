# Published weights for `weights: pretrained` (live runs only): pinned revisions and files
# (neustream/backends/diffusion/weights.py) into the hub cache resources/weights/. Offline, a cache that
# holds them works; an empty one fails at once, naming the model and the setting to change.


rule weights:
    output:
        f"{WEIGHTS_DIR}/{{model}}.json",
    log:
        "results/logs/weights/{model}.log",
    params:
        cache=lambda wc, output: os.path.dirname(output[0]),
    wildcard_constraints:
        model="sd15|dit-xl2",
    cache: "omit-software"
    resources:
        mem_mb=2000,
        runtime=120,  # a few GB from the hub
    conda:
        "../envs/diffusion.yaml"
    shell:
        "neustream weights --model {wildcards.model} --cache {params.cache} --out {output}"
        " > {log} 2>&1"
