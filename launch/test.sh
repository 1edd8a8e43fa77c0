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
