#!/usr/bin/env bash
# session 12, call C: the decode_attn_mma verifies not yet run on a GPU (head_dim 64, bf16), then a gemv_bulk shape sweep
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
v() {  # v NAME ENV... -- verify args
  local name=$1; shift; local envs=()
  while [[ "$1" != -- ]]; do envs+=("$1"); shift; done; shift
  local t1=$(date +%s)
  env "${envs[@]}" timeout 90 "${MR[@]}" "$B" verify "$@" > $OUT/v-$name.log 2>&1
  local rc=$?
  echo "verify $name rc=$rc $(( $(date +%s) - t1 )) s: $(grep -h '^decode attention' $OUT/v-$name.log | head -1) $(grep -c 'PASS$' $OUT/v-$name.log) PASS, $(grep -c 'FAIL' $OUT/v-$name.log) FAIL"
}
v gb_d128 TPPROF_CUDA_GEMV=all -- --model /tmp/d128.json --prompts 2 --prompt-tokens 2000
echo "verifies in $(( $(date +%s) - t0 )) s"
run() {  # run NAME ENV...
  local name=$1; shift
  local left=$(( ${END:-150} - ($(date +%s) - t0) ))
  (( left > 40 )) || { echo "$name skipped (${left} s left)"; return; }
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
print("  itl p50 %.3f | qkv %.0f o %.0f gu %.0f down %.0f lm %.0f | %s" % (s["itl_ms"]["p50"], bd.get("qkv_gemm",0), bd.get("o_gemm",0), bd.get("gate_up_gemm",0), bd.get("down_gemm",0), bd.get("lm_head_gemm",0), es.get("decode_gemv_kernel")))
PY
}
run base
run b248 TPPROF_CUDA_GEMV=all
run b1162 TPPROF_CUDA_GEMV=all TPPROF_CUDA_GEMV_KERNEL=bulk:1,16,2
run fuse TPPROF_CUDA_FUSE=1
run20() {  # run20 NAME ENV...: 20K -> 1000
  local name=$1; shift
  local left=$(( 270 - ($(date +%s) - t0) ))
  (( left > 50 )) || { echo "$name skipped (${left} s left)"; return; }
  local t1=$(date +%s)
  env "$@" timeout $left "${MR[@]}" $B run --engine cuda --model qwen2.5-14b --dtype fp16 \
    --prompt-tokens 20000 --generated-tokens 1000 --warmup 1 --no-progress --out $OUT/$name.json > $OUT/$name.log 2>&1
  echo "$name rc=$? $(( $(date +%s) - t1 )) s $(grep -h '^  ITL' $OUT/$name.log | head -1)"
  python3 -c "import json,sys; o=json.load(open(sys.argv[1])); es=o['ranks'][0]['engine_stats']; bd=es['decode_breakdown_us_per_step']['estimated_us']; print('  itl p50 %.3f attention %.0f us %s' % (o['summary']['itl_ms']['p50'], bd['attention'], es['decode_attention']))" $OUT/$name.json
}
run20 k20_default
run20 k20_mma TPPROF_CUDA_ATTN=mma
END=300 run fuse_pdl_mma TPPROF_CUDA_FUSE=1 TPPROF_CUDA_PDL=1 TPPROF_CUDA_ATTN=mma
echo "total $(( $(date +%s) - t0 )) s"
