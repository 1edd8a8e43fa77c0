#!/usr/bin/env bash
# Installs what building tpprof needs on Debian/Ubuntu, if it is missing: a C compiler, an MPI with
# mpicc/mpirun (Open MPI), and libclang for bindgen. Rust comes from rustup (https://rustup.rs).
set -euo pipefail

need=()
command -v cc >/dev/null || need+=(build-essential)
command -v mpicc >/dev/null || need+=(libopenmpi-dev)
command -v mpirun >/dev/null || need+=(openmpi-bin)
# libclang itself (libclang.so*, libclang-NN.so*), not libclang-cpp, which some other packages bring alone.
if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* /usr/lib/x86_64-linux-gnu/libclang.so* \
        /usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so* >/dev/null 2>&1 && [[ -z "${LIBCLANG_PATH:-}" ]]; then
  need+=(libclang-dev)
fi
if [[ ${#need[@]} -gt 0 ]]; then
  sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  [[ -x "$HOME/.cargo/bin/cargo" ]] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
  echo "error: cargo not found: install Rust with rustup (https://rustup.rs) and run this again" >&2
  exit 2
fi
