#!/usr/bin/env bash
# session 12, call B: gemv_bulk verifies, then 14B TP=1 10K A/B (cuBLAS vs gemv_bulk shapes, mma), then gpu-test.sh
set -u
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
B=.dev/pf/tpprof
MR=(mpirun --allow-run-as-root --bind-to none -n 1)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
t0=$(date +%s)
cat > /tmp/d128.json <<'JSON'
{"vocab_size": 32000, "hidden_size": 1280, "intermediate_size": 3456, "num_hidden_layers": 4, "num_attention_heads": 10,
 "num_key_value_heads": 2, "max_position_embeddings": 8192, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true}
JSON
ok=1
v() {  # v NAME ENV... -- verify args
  local name=$1; shift; local envs=()
  while [[ "$1" != -- ]]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" timeout 45 "${MR[@]}" "$B" verify "$@" > $OUT/v-$name.log 2>&1
  local rc=$?; (( rc == 0 )) || ok=0
  echo "verify $name rc=$rc $(grep -h '^verify: [A-Z]\|max |' $OUT/v-$name.log | head -3 | tr '\n' ' ')"
  (( rc == 0 )) || tail -5 $OUT/v-$name.log
}
v gb_small TPPROF_CUDA_GEMV=all -- --model small --prompts 2 --prompt-tokens 700
if (( ok )); then
v gb_small_bf16 TPPROF_CUDA_GEMV=all -- --model small --dtype bf16 --prompt-tokens 700
v gb_d128 TPPROF_CUDA_GEMV=all -- --model /tmp/d128.json --prompts 2 --prompt-tokens 2000
v gb_05b TPPROF_CUDA_GEMV=all TPPROF_CUDA_GEMV_KERNEL=bulk:1,8,3 -- --model qwen2.5-0.5b --prompts 2 --prompt-tokens 700
v gb_pdl TPPROF_CUDA_GEMV=all TPPROF_CUDA_PDL=1 -- --model /tmp/d128.json --prompts 2 --prompt-tokens 2000
v fuse_small TPPROF_CUDA_FUSE=1 -- --model small --prompts 2 --prompt-tokens 700
v fuse_d128_bf16 TPPROF_CUDA_FUSE=1 -- --model /tmp/d128.json --dtype bf16 --prompts 2 --prompt-tokens 2000
v fuse_05b TPPROF_CUDA_FUSE=1 TPPROF_CUDA_PDL=1 -- --model qwen2.5-0.5b --prompts 2 --prompt-tokens 700
fi
echo "verifies ok=$ok in $(( $(date +%s) - t0 )) s"
run() {  # run NAME ENV...
  local name=$1; shift
  local left=$(( ${END:-400} - ($(date +%s) - t0) ))
  (( left > 45 )) || { echo "$name skipped (${left} s left)"; return; }
  local t1=$(date +%s)
  env "$@" timeout $left "${MR[@]}" $B run --engine cuda --model qwen2.5-14b --dtype fp16 \
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
print("  ttft p50 %.1f itl p50 %.3f floor %.3f | %s" % (s["ttft_ms"]["p50"], s["itl_ms"]["p50"], es.get("floor_step_ms"),
  " ".join("%s=%.0f" % (k, v) for k, v in bd.items())))
print("  ", es.get("decode_gemv_kernel"), es.get("decode_attention"))
PY
}
if (( ok )); then
  run gb_all TPPROF_CUDA_GEMV=all
  run base
  run fuse TPPROF_CUDA_FUSE=1
  run fuse_pdl_mma TPPROF_CUDA_FUSE=1 TPPROF_CUDA_PDL=1 TPPROF_CUDA_ATTN=mma
  run gb_1_8_6 TPPROF_CUDA_GEMV=all TPPROF_CUDA_GEMV_KERNEL=bulk:1,8,6
fi
left=$(( 575 - ($(date +%s) - t0) ))
echo "gpu-test with ${left} s left"
TPPROF=$B timeout $left bash launch/gpu-test.sh > $OUT/gpu-test.log 2>&1; echo "gpu-test rc=$? total $(( $(date +%s) - t0 )) s"
tail -4 $OUT/gpu-test.log
