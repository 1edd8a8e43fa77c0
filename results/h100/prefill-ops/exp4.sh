#!/usr/bin/env bash
# New default prefill attention (flash = flash2m): verify at head_dim 128, then 14B 10K breakdown default vs flash8.
set -uo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
B=.dev/pf/tpprof; O="$OUT"
nvidia-smi -L; $B --version
t0=$(date +%s)
r() { echo "== $*"; timeout ${T:-60} "$@" > $O/last.log 2>&1; rc=$?; cat $O/last.log >> $O/verify.log; grep -E "PASS|FAIL|error|max" $O/last.log | tail -6; echo "rc=$rc t=$(( $(date +%s) - t0 ))s"; }
T=140 r mpirun -n 1 $B verify --model results/h100/prefill-attn/d128.json --prompts 2 --prompt-tokens 1000 --seed 7
ATTNS="flash flash8" bash .dev/pf/exp1.sh 2>&1 | grep -v "^GPU" | grep -E "==|TTFT|rope|silu|rmsnorm|\"attention|total|rc="
echo "t=$(( $(date +%s) - t0 ))s"
