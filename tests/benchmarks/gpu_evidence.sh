#!/usr/bin/env bash
# The H100 evidence of evidence/2026-11-24-h100-live-diffusion/README.md, in stages (run from the repository root on
# the GPU machine; results go under $OUT, or /tmp/out without it):
#   bench    eager vs CUDA-graph call latency, the live worker's overhead, two CUDA streams
#   tables   latency tables (CUDA graphs, the live worker's whole call) for the workloads in $TABLES
#   live     live NeuStream and Clockwork runs (bench_live.py; $LOOKAHEAD=1: --lookahead) on the
#            tables this call measured, else those of $LATENCY_DIR (resources/latency/$TABLE_DEVICE)
#   tp       the OPT-66B table at tensor parallelism 2 (two GPUs, profiling/tp.py)
#   placement  live NeuStream on one GPU, then with $PLACE's modules on a second GPU, same traces
#            ($PLACE: workload:rates:requests:module=cuda:1,...; tables as for live;
#            $GPUS: which of the two, default "1 2")
set -uo pipefail
OUT=${OUT:-/tmp/out}
T=/tmp/evidence
mkdir -p "$T" "$OUT"
export PYTHONUNBUFFERED=1
# $LANE names this invocation's archive, so that two of them (one per GPU) may run at once
pack() { tar czf "$OUT/evidence${LANE:+_$LANE}.tgz" -C /tmp evidence; }
table_of() { [ -f "$T/tables/$1.csv" ] && echo "$T/tables/$1.csv" ||
  echo "${LATENCY_DIR:-resources/latency/${TABLE_DEVICE:-h200}}/$1.csv"; }
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
          --latency "$(table_of "$w")" --rates "$rates" --requests "$n" \
          --systems "${systems:-neustream,clockwork}" ${LOOKAHEAD:+--lookahead} --out "$T/runs" \
          > "$T/live_$w.log" 2>&1
        echo "live $w: rc=$?"; grep -E "on time" "$T/live_$w.log"
      done ;;
    tp)
      timeout "${TP_TIMEOUT:-420}" python3 -m neustream.cli profile --workload opt-66b \
        --engine transformers --device cuda --dtype fp16 --tensor-parallel 2 --warmup 2 \
        --repeats 5 --out "$T/tables/opt-66b.csv" > "$T/profile_opt-66b.log" 2>&1
      echo "table opt-66b tp=2: rc=$?"; tail -3 "$T/profile_opt-66b.log" ;;
    placement)
      for spec in $PLACE; do  # workload:rates:requests:placement
        IFS=: read -r w rates n placement <<< "$spec"
        placement=${spec#*:*:*:}
        table=$(table_of "$w")
        for gpus in ${GPUS:-1 2}; do
          extra=(); [ "$gpus" = 2 ] && extra=(--placement "$placement")
          timeout "${LIVE_TIMEOUT:-300}" python3 tests/benchmarks/bench_live.py --workload "$w" \
            --latency "$table" --rates "$rates" --requests "$n" --systems neustream \
            "${extra[@]}" --out "$T/runs_${gpus}gpu" > "$T/live_${w}_${gpus}gpu.log" 2>&1
          echo "live $w on $gpus GPU(s): rc=$?"; grep -E "on time|ready" "$T/live_${w}_${gpus}gpu.log"
        done
      done ;;
  esac
  pack
done
