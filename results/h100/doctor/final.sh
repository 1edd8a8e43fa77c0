#!/usr/bin/env bash
# Session 7 checks on one GPU: doctor against nvidia-smi/ldconfig, and the verifies cut off earlier.
set -uo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
B=$PWD/.dev/tpprof; O="$OUT"; t0=$(date +%s)
$B doctor > $O/doctor.txt 2>&1; echo "exit $?" >> $O/doctor.txt
mpirun -n 2 --bind-to none $B doctor > $O/doctor-2ranks-1gpu.txt 2>&1; echo "exit $?" >> $O/doctor-2ranks-1gpu.txt
mkdir -p /tmp/nccl && ln -sf /opt/torch/.venv/lib/python3.12/site-packages/nvidia/nccl/lib/libnccl.so.2 /tmp/nccl/libnccl.so
LD_LIBRARY_PATH=/tmp/nccl $B doctor > $O/doctor-venv-nccl.txt 2>&1
{ nvidia-smi --query-gpu=index,name,uuid,driver_version --format=csv; nvidia-smi | sed -n 3p; ldconfig -p | grep -E "libnccl|libcublas.so|libnvrtc.so|libcupti.so|libcuda.so"; } > $O/truth.txt 2>&1
cat $O/doctor.txt $O/truth.txt; grep -i nccl $O/doctor-venv-nccl.txt; tail -8 $O/doctor-2ranks-1gpu.txt
cat > $O/d128.json <<'JSON'
{"vocab_size": 32000, "hidden_size": 1280, "intermediate_size": 3456, "num_hidden_layers": 4, "num_attention_heads": 10,
 "num_key_value_heads": 2, "max_position_embeddings": 8192, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true}
JSON
r() { echo "== $*"; timeout 150 "$@" > $O/last.log 2>&1; rc=$?; tail -5 $O/last.log; echo "rc=$rc t=$(( $(date +%s) - t0 ))s"; }
r mpirun -n 1 $B verify --model small --prompt-tokens 700
r mpirun -n 1 $B verify --model $O/d128.json --prompts 2 --prompt-tokens 2000
