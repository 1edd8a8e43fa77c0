#!/usr/bin/env bash
# The main job from a fresh clone: install build dependencies, build tpprof, and profile the built-in
# default engine (cuda where every rank has a GPU, else cpu) with the `small` preset,
# tensor-parallel on 2 ranks. Prints the summary and writes the JSON.
# Extra arguments go to `tpprof run` (e.g. --generated-tokens 128).
set -euo pipefail
here="$PWD"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source launch/deps.sh
cargo build --release
repo="$PWD"
cd "$here"   # the JSON lands where you called from
exec "$repo/launch/tpprof-mpirun" -n 2 --tpprof "$repo/target/release/tpprof" -- run --model small \
  --prompt-tokens 256 --generated-tokens 64 "$@"
