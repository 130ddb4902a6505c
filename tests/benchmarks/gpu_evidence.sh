#!/usr/bin/env bash
# The H100 evidence of evidence/2026-11-24-h100-live-diffusion/README.md, in stages (run from the repository root on
# the GPU machine; results go under $OUT, or /tmp/out without it):
#   bench    eager vs CUDA-graph call latency, the live worker's overhead, two CUDA streams
#   tables   latency tables (CUDA graphs, the live worker's whole call) for the workloads in $TABLES
#   live     live NeuStream and Clockwork runs (bench_live.py) on the tables in $LATENCY_DIR
set -uo pipefail
OUT=${OUT:-/tmp/out}
T=/tmp/evidence
mkdir -p "$T" "$OUT"
export PYTHONUNBUFFERED=1
pack() { tar czf "$OUT/evidence.tgz" -C /tmp evidence; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$T/gpu.txt" 2>&1
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)" > "$T/versions.txt" 2>&1
for stage in "$@"; do
  case $stage in
    bench)
      timeout 240 python3 tests/benchmarks/bench_graphs.py --out "$T/graphs.csv" > "$T/bench.log" 2>&1
      tail -4 "$T/bench.log" ;;
    tables)
      for w in ${TABLES:-dit-s2 sd15-512}; do
        timeout 200 python3 -m neustream.cli profile --workload "$w" --size full --device cuda \
          --dtype fp16 --repeats 5 --warmup 1 --rounds "${ROUNDS:-2}" --graphs --served --out "$T/tables/$w.csv" \
          > "$T/profile_$w.log" 2>&1
        echo "table $w: rc=$?"
      done ;;
    live)
      for spec in $LIVE; do  # workload:rates:requests[:systems]
        IFS=: read -r w rates n systems <<< "$spec"
        timeout "${LIVE_TIMEOUT:-300}" python3 tests/benchmarks/bench_live.py --workload "$w" \
          --latency "${LATENCY_DIR:-$T/tables}/$w.csv" --rates "$rates" --requests "$n" \
          --systems "${systems:-neustream,clockwork}" --out "$T/runs" > "$T/live_$w.log" 2>&1
        echo "live $w: rc=$?"; grep -E "on time" "$T/live_$w.log"
      done ;;
  esac
  pack
done
