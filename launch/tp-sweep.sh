#!/usr/bin/env bash
# Tensor-parallel scaling, as one command: runs the same workload at each TP degree (one rank per
# GPU), with the default observers and, with -c, once more with --cupti, keeps every JSON in OUTDIR
# and writes OUTDIR/compare.md: `tpprof compare --markdown` of the runs (TP=first is the baseline).
# results/h200-tp-scaling-32b.md was made this way (TP 1 2 4, -c).
# Usage: launch/tp-sweep.sh [-t "1 2 4"] [-c] [-o OUTDIR] -- <tpprof run arguments, without --out>
# e.g.   launch/tp-sweep.sh -t "1 2 4" -c -o tp-32b -- --engine cuda --model qwen2.5-32b --prompt-tokens 10000 --generated-tokens 800
# Exits non-zero (and says which) when a run fails; the JSONs of the runs before it are kept.
set -euo pipefail
tps="1 2"; cupti=0; outdir="tp-sweep-$(date -u +%Y%m%dT%H%M%SZ)"
while [[ $# -gt 0 ]]; do
  case "$1" in
    -t) tps="$2"; shift 2 ;;
    -c) cupti=1; shift ;;
    -o) outdir="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (usage: launch/tp-sweep.sh [-t \"1 2 4\"] [-c] [-o OUTDIR] -- RUN_ARGS)" >&2; exit 2 ;;
  esac
done
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
B="${TPPROF:-$here/target/release/tpprof}"
MR=(mpirun --bind-to none)
[[ "$(id -u)" -eq 0 ]] && MR+=(--allow-run-as-root)
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
mkdir -p "$outdir"
files=()
for tp in $tps; do
  modes=(default); [[ $cupti == 1 ]] && modes+=(cupti)
  for mode in "${modes[@]}"; do
    extra=(); [[ $mode == cupti ]] && extra=(--cupti)
    f="$outdir/tp$tp-$mode.json"
    echo "=== TP=$tp ($mode): ${MR[*]} -n $tp tpprof run $* ${extra[*]} --out $f" >&2
    if ! "${MR[@]}" -n "$tp" "$B" run "$@" "${extra[@]}" --out "$f" >"$outdir/tp$tp-$mode.log" 2>&1; then
      echo "error: the TP=$tp $mode run failed: see $outdir/tp$tp-$mode.log" >&2
      exit 1
    fi
    files+=("$f")
  done
done
if [[ ${#files[@]} -ge 2 ]]; then
  "$B" compare --markdown "${files[@]}" | tee "$outdir/compare.md"
else
  "$B" report "${files[0]}"
fi
