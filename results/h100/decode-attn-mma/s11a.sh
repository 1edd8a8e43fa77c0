#!/usr/bin/env bash
# session 11, call A: 14B TP=1 10K->800 A/B (decode attention, overlapped loop, PDL), then gpu-test.sh
set -u
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
B=.dev/pf/tpprof
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
t0=$(date +%s)
run() {  # run NAME ENV...
  local name=$1; shift
  local t1=$(date +%s)
  env "$@" timeout 120 mpirun --allow-run-as-root --bind-to none -n 1 $B run --engine cuda --model qwen2.5-14b --dtype fp16 \
    --prompt-tokens 10000 --generated-tokens 800 --warmup 1 --no-progress --out $OUT/$name.json > $OUT/$name.log 2>&1
  echo "$name rc=$? $(( $(date +%s) - t1 )) s"
  python3 - $OUT/$name.json <<'PY'
import json,sys
try:
    o=json.load(open(sys.argv[1]))
except Exception as e:
    print("  no json", e); sys.exit()
s=o["summary"]; es=o["ranks"][0].get("engine_stats") or {}
bd=(es.get("decode_breakdown_us_per_step") or {}).get("estimated_us") or {}
print("  ttft p50 %s itl p50 %s floor %s attn %s | %s %s pdl=%s" % (s["ttft_ms"]["p50"], s["itl_ms"]["p50"], es.get("floor_step_ms"),
  bd.get("attention"), es.get("decode_attention"), es.get("decode_loop"), es.get("programmatic_dependent_launch")))
PY
}
run base
run mma TPPROF_CUDA_ATTN=mma
run overlap TPPROF_CUDA_OVERLAP=1
run pdl TPPROF_CUDA_PDL=1
run all3 TPPROF_CUDA_ATTN=mma TPPROF_CUDA_OVERLAP=1 TPPROF_CUDA_PDL=1
left=$(( 570 - ($(date +%s) - t0) ))
echo "gpu-test with ${left} s left"
TPPROF=$B timeout $left bash launch/gpu-test.sh > $OUT/gpu-test.log 2>&1; echo "gpu-test rc=$? total $(( $(date +%s) - t0 )) s"
tail -4 $OUT/gpu-test.log
