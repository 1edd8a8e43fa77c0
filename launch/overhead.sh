#!/usr/bin/env bash
# The observers' overhead, measured: runs the same job alternately with periodic memory sampling
# and rank 0's progress line off (--mem-interval-ms 0: one reading at the end; --no-progress) and
# with the default observers, ROUNDS times
# each, and prints the decode ITL p50 / mean of both and their ratio (default ÷ off). With -c, a
# third mode adds --cupti (every GPU kernel recorded by CUPTI) and its ratio (cupti ÷ off).
# Usage: launch/overhead.sh [-n RANKS] [-r ROUNDS] [-c] -- <tpprof run arguments, without --out>
# e.g.   launch/overhead.sh -n 2 -r 3 -- --engine cuda --model qwen2.5-14b --prompt-tokens 10000 --generated-tokens 800
set -euo pipefail
ranks=2; rounds=3; modes=(off default)
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) ranks="$2"; shift 2 ;;
    -r) rounds="$2"; shift 2 ;;
    -c) modes+=(cupti); shift ;;
    --) shift; break ;;
    *) break ;;
  esac
done
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
B="${TPPROF:-$here/target/release/tpprof}"
MR=(mpirun --bind-to none --oversubscribe)
[[ "$(id -u)" -eq 0 ]] && MR+=(--allow-run-as-root)
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for i in $(seq "$rounds"); do
  for mode in "${modes[@]}"; do
    extra=(); [[ $mode == off ]] && extra=(--mem-interval-ms 0 --no-progress); [[ $mode == cupti ]] && extra=(--cupti)
    "${MR[@]}" -n "$ranks" "$B" run "$@" "${extra[@]}" --out "$out/$mode-$i.json" >/dev/null 2>&1 || { echo "error: the $mode run $i failed" >&2; exit 1; }
  done
done
python3 - "$out" "$rounds" "${modes[@]}" <<'PY'
import json, sys, statistics
d, n, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def itl(mode):
    runs = [json.load(open(f"{d}/{mode}-{i}.json"))["summary"]["itl_ms"] for i in range(1, n + 1)]
    return [r["p50"] for r in runs], [r["mean"] for r in runs]
(p_off, m_off), (p_on, m_on) = itl("off"), itl("default")
print(f"observers off     : ITL p50 {', '.join(f'{x:.4f}' for x in p_off)} ms; mean {statistics.median(m_off):.4f} ms (median of {n})")
print(f"default observers : ITL p50 {', '.join(f'{x:.4f}' for x in p_on)} ms; mean {statistics.median(m_on):.4f} ms (median of {n})")
print(f"overhead: ITL p50 ratio {statistics.median(p_on) / statistics.median(p_off):.4f}, mean ratio {statistics.median(m_on) / statistics.median(m_off):.4f} (default ÷ off, medians over rounds)")
if "cupti" in modes:
    p_c, m_c = itl("cupti")
    print(f"--cupti           : ITL p50 {', '.join(f'{x:.4f}' for x in p_c)} ms; mean {statistics.median(m_c):.4f} ms (median of {n})")
    print(f"overhead with --cupti: ITL p50 ratio {statistics.median(p_c) / statistics.median(p_off):.4f}, mean ratio {statistics.median(m_c) / statistics.median(m_off):.4f} (cupti ÷ off)")
PY
