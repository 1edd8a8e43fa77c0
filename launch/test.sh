#!/usr/bin/env bash
# Every test: unit tests and the integration tests that run the real binary under mpirun -n 1/2/4
# against the mock adapter and the cpu engine. Installs build dependencies first if missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source launch/deps.sh
# mpirun as root (containers, CI) and on machines with fewer cores than ranks.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
cargo test --release "$@"
# With no arguments (the whole suite): the host mirrors of the tensor-core attention kernels
# (tests/nvrtc-check: prefill.cu's and decode.cu's fragment layouts against plain attention, ~15 s).
# They need numpy: pip's, else Debian's python3-numpy.
if [[ $# -eq 0 ]]; then
  py=python3
  if ! "$py" -c 'import numpy' 2>/dev/null && ! "$py" -m pip install -q numpy >/dev/null 2>&1; then
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-numpy >/dev/null
    py=/usr/bin/python3
  fi
  (cd tests/nvrtc-check && "$py" prefill_sim.py && "$py" decode_sim.py && "$py" gemv_sim.py)
fi
