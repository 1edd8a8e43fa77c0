#!/usr/bin/env bash
# NVTX under nsys, and the regression gate's inputs, on one GPU.
set -uo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
B=$PWD/.dev/tpprof; O="$OUT"
t0=$(date +%s)
nvidia-smi -L
NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems*/*/bin/nsys /opt/nvidia/nsight-systems/*/target-linux-x64/nsys 2>/dev/null | head -1)
echo "NSYS=$NSYS"
[ -z "$NSYS" ] && timeout 60 find / -xdev \( -name nsys -o -name 'libnvToolsExt*' -o -name 'libToolsInjection*' \) 2>/dev/null | head -20
ls -d /opt/nvidia/* /usr/local/cuda*/ 2>/dev/null
r() { echo "== $*"; timeout 240 "$@" 2>&1 | tail -15; echo "rc=${PIPESTATUS[0]} t=$(( $(date +%s) - t0 ))s"; }
if [ -n "$NSYS" ]; then
  $NSYS --version
  r mpirun -n 1 $NSYS profile -t cuda,nvtx -o $O/r.%q{OMPI_COMM_WORLD_RANK} $B run --engine cuda --model qwen2.5-0.5b --prompt-tokens 1000 --generated-tokens 64 --warmup 1 --no-progress --out $O/nsys-run.json
  r $NSYS stats -r nvtx_sum --format csv -o $O/nvtx $O/r.0.nsys-rep
  $NSYS stats -r nvtx_sum $O/r.0.nsys-rep > $O/nvtx_sum.txt 2>&1
  $NSYS stats -r cuda_gpu_kern_sum $O/r.0.nsys-rep 2>&1 | head -30 > $O/kern_sum.txt
  head -40 $O/nvtx_sum.txt
fi
for k in a b; do
  r mpirun -n 1 $B run --engine cuda --model qwen2.5-0.5b --prompt-tokens 1000 --generated-tokens 128 --repeat 5 --no-progress --out $O/gate-$k.json
done
r mpirun -n 1 $B run --engine cuda --model qwen2.5-0.5b --prompt-tokens 1000 --generated-tokens 128 --repeat 5 --no-progress --trace $O/t.json.gz --out $O/gate-c.json
ls -la $O
