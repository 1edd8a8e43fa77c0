#!/usr/bin/env bash
# The one device call of this session (nvidia-h100-x1), as run from .dev/cuda-prefill/ (binary = the
# tree of commit 71e01ff: prefill.cu built in, cuBLAS still the default prefill attention; its JSONs say
# 5c3597ea2a96-dirty, 71e01ff being that dirt). Verify prefill.cu (TPPROF_CUDA_PREFILL_ATTN=flash) against
# the cpu reference, then launch/bench.sh at 14B 10K: cuda (cuBLAS prefill), cuda with prefill.cu, HF
# static cache + compile.
set -uo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
X=.dev/cuda-prefill; B=$X/tpprof; O="$OUT"
nvidia-smi -L; $B --version
cp results/h100/prefill-attn/d128.json results/h100/prefill-attn/d64g7.json $O/ 2>/dev/null  # (written inline in the original)
t0=$(date +%s)
r() { echo "== $*"; timeout 50 "$@" > $O/last.log 2>&1; rc=$?; cat $O/last.log >> $O/verify.log; grep -E "attention|PASS|FAIL|error|batch" $O/last.log | tail -8; echo "rc=$rc t=$(( $(date +%s) - t0 ))s"; }
F="-x TPPROF_CUDA_PREFILL_ATTN=flash"
r mpirun -n 1 $F $B verify --model small --prompt-tokens 700
r mpirun -n 1 $F $B verify --model small --dtype bf16 --prompts 2 --prompt-tokens 700
r mpirun -n 1 $F $B verify --model $O/d128.json --prompts 2 --prompt-tokens 2000
r mpirun -n 1 $F $B verify --model $O/d128.json --dtype bf16 --prompts 2 --prompt-tokens 700
r mpirun -n 1 $F $B verify --model $O/d64g7.json --prompts 2 --prompt-tokens 2000
echo "== bench t=$(( $(date +%s) - t0 ))s"
bash $X/launch/bench.sh --model qwen2.5-14b --seed 1 -P 10000 -G 64 --hf-runs 2 --out "$O/bench-14b" --ckpt /root/ck14 \
  --tpprof $B --cuda-ab TPPROF_CUDA_PREFILL_ATTN=flash
echo "bench rc=$? t=$(( $(date +%s) - t0 ))s"
