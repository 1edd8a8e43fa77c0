#!/usr/bin/env bash
# Coverage-guided fuzzing of tpprof's readers of outside input with cargo-fuzz (libFuzzer + ASan):
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, every target)
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`), and what the main build
# needs (launch/deps.sh). Seeds each target's corpus from tests/fuzz_checks.rs, runs each target
# for the given time (inputs that parse are kept in fuzz/corpus/TARGET, crashes in
# fuzz/artifacts/TARGET), and prints one line per target: runs, coverage, corpus, crashes.
# A crash: replay it with `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...`, fix the
# reader, and keep the input as a named regression test in tests/fuzz.rs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs="${1:-60}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(prompts result_json safetensors engine_options model_config run_toml)
command -v cargo-fuzz >/dev/null || { echo "fuzz/run.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 2; }
rustup run nightly rustc --version >/dev/null 2>&1 || { echo "fuzz/run.sh: no nightly toolchain: rustup toolchain install nightly" >&2; exit 2; }
cargo +nightly fuzz build -O >/dev/null
./target/x86_64-unknown-linux-gnu/release/seed_corpus corpus >/dev/null
mkdir -p logs
status=0
printf '%-16s %10s %8s %8s %8s %s\n' target runs exec/s cov corpus crashes
for t in "${targets[@]}"; do
  rc=0
  # 256 MiB: the largest single allocation any input may cause (tests/fuzz.rs's limit too).
  cargo +nightly fuzz run -O "$t" -- -max_total_time="$secs" -malloc_limit_mb=256 -rss_limit_mb=4096 \
    -print_final_stats=1 >"logs/$t.log" 2>&1 || rc=$?
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "logs/$t.log" | tail -1 || true)
  runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "logs/$t.log" | grep -oE '[0-9]+$' || echo "?")
  eps=$(grep -oE '^stat::average_exec_per_sec: *[0-9]+' "logs/$t.log" | grep -oE '[0-9]+$' || echo "?")
  cov=$(echo "$done_line" | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+' || echo "?")
  corp=$(echo "$done_line" | grep -oE 'corp: [0-9]+' | grep -oE '[0-9]+' || echo "?")
  crashes=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  printf '%-16s %10s %8s %8s %8s %s\n' "$t" "$runs" "$eps" "$cov" "$corp" "$crashes"
  if [[ $rc -ne 0 || $crashes -ne 0 ]]; then
    status=1
    echo "  $t: exit $rc, see fuzz/logs/$t.log and fuzz/artifacts/$t/" >&2
  fi
done
exit $status
