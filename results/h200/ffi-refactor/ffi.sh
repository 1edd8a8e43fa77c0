#!/usr/bin/env bash
# The cuda FFI refactor on one H200: verify against the cpu reference (fp16, bf16, head_dim 64/128,
# 2000-token cache), gemv.cu forced, decode_attn_pipe forced, and a short graph-mode run with --cupti.
set -uo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
B=.dev/tpprof; O="$OUT"
cat > $O/d128.json <<'JSON'
{"vocab_size": 32000, "hidden_size": 1280, "intermediate_size": 3456, "num_hidden_layers": 4, "num_attention_heads": 10,
 "num_key_value_heads": 2, "max_position_embeddings": 8192, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true}
JSON
t0=$(date +%s)
r() { echo "== $*"; timeout 60 "$@" 2>&1 | tail -6; echo "rc=${PIPESTATUS[0]} t=$(( $(date +%s) - t0 ))s"; }
r mpirun -n 1 $B verify --model tiny --prompt-tokens 700
r mpirun -n 1 $B verify --model small --dtype bf16 --prompt-tokens 700
r mpirun -n 1 $B verify --model qwen2.5-0.5b --prompts 2 --prompt-tokens 700
r mpirun -n 1 $B verify --model $O/d128.json --prompts 2 --prompt-tokens 2000
r mpirun -n 1 -x TPPROF_CUDA_GEMV=all $B verify --model small --prompt-tokens 700
r mpirun -n 1 -x TPPROF_CUDA_ATTN_SPLIT=640 $B verify --model $O/d128.json --prompts 1 --prompt-tokens 2000
r mpirun -n 1 $B run --engine cuda --model qwen2.5-0.5b --prompt-tokens 1000 --generated-tokens 64 --cupti --warmup 1 --out $O/run.json
