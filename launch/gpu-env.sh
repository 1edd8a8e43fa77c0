# Sourced by the GPU session scripts (hf-gpu.sh, turbomind-gpu.sh): the environment every run on the
# GPU machines needs, the output directory and log, and the call's time budget.
# Set `here` (the repository) and `O` (the output directory) before sourcing.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The drivers travel with the repository, not beside the binary: say where they are.
export TPPROF_PYTHON_DRIVERS="$here/ffi/adapters/python/drivers"
# Less noise in the logs (tokenizers are not used); Python output unbuffered, so a killed run leaves its log.
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 PYTHONUNBUFFERED=1
mkdir -p "$O"
O="$(realpath "$O")"
LOG="$O/log"
# BUDGET_S (default 570): the whole script stays inside it.
deadline=$(( $(date +%s) + ${BUDGET_S:-570} ))
say() { echo "$*" | tee -a "$LOG"; }
left() { echo $(( deadline - $(date +%s) - 5 )); }
