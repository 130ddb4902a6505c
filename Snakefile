# NeuStream pipeline: latency tables -> traces -> serving runs -> goodput table and figures.
# `snakemake --cores all` runs config/config.yaml; see README.md and config/README.md.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/weights.smk"
include: "rules/latency.smk"
include: "rules/traces.smk"
include: "rules/serve.smk"
include: "rules/report.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
