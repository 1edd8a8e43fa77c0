#!/usr/bin/env bash
# The cuda engine against Hugging Face transformers (static cache + torch.compile, SDPA) on one GPU,
# on the SAME weights and the same shape, in one go; prints TTFT and ITL p50 of each and their ratios.
#
#   1. the weights: --weights DIR (a Hugging Face checkpoint), or --model M: the seeded model written
#      once with `tpprof write-checkpoint --model M --seed S --dtype D` (kept and reused at --ckpt)
#   2. cuda: mpirun -n 1 tpprof run --engine cuda --weights CKPT --dtype D -P -G --warmup auto
#      (+ one more run per --cuda-ab NAME=VALUE, with that environment variable set: an A/B)
#   3. hf:   python3 launch/hf/plain_timing.py CKPT P G --static-compile --runs N (no tpprof in the
#      process; the first generate() compiles, the last is measured)
#   4. the table: TTFT and ITL p50 per row, and each cuda row ÷ hf; OUT/bench.json holds it all
#
# usage: launch/bench.sh [--model M | --weights DIR] [--seed S] [--dtype fp16|bf16]
#                        [--prompt-tokens P] [--generated-tokens G] [--out DIR] [--ckpt DIR]
#                        [--tpprof PATH] [--python PY] [--hf-runs N] [--no-hf]
#                        [--cuda-ab NAME=VALUE ...] [--dry-run]
# Defaults: --model qwen2.5-7b --seed 1 --dtype fp16 -P 10000 -G 128 --out bench-out
#   --ckpt /tmp/tpprof-bench-<model>-<dtype>-s<seed> --hf-runs 3, tpprof: $TPPROF, .dev/tpprof,
#   target/device/tpprof or target/release/tpprof; python: /opt/torch/.venv/bin/python3.
# --dry-run prints the commands and runs nothing. Exit: 0 when every run gave its figures, 1 when
# one failed (the table says which), 2 on bad arguments.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '/^# usage:/,/^# Defaults/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; }
bad() { echo "bench.sh: $*" >&2; usage; exit 2; }

MODEL="" WEIGHTS="" SEED=1 DTYPE=fp16 P=10000 G=128 O=bench-out CKPT="" T="${TPPROF:-}"
PY=/opt/torch/.venv/bin/python3 HF_RUNS=3 HF=1 DRY=0
AB=()
while (( $# )); do
  case "$1" in
    --model) MODEL="${2:?--model needs a value}"; shift ;;
    --weights) WEIGHTS="${2:?--weights needs a value}"; shift ;;
    --seed) SEED="${2:?}"; shift ;;
    --dtype) DTYPE="${2:?}"; shift ;;
    --prompt-tokens|-P) P="${2:?}"; shift ;;
    --generated-tokens|-G) G="${2:?}"; shift ;;
    --out) O="${2:?}"; shift ;;
    --ckpt) CKPT="${2:?}"; shift ;;
    --tpprof) T="${2:?}"; shift ;;
    --python) PY="${2:?}"; shift ;;
    --hf-runs) HF_RUNS="${2:?}"; shift ;;
    --no-hf) HF=0 ;;
    --cuda-ab) AB+=("${2:?--cuda-ab needs NAME=VALUE}"); shift ;;
    --dry-run) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) bad "unknown argument '$1'" ;;
  esac
  shift
done

[[ -n "$MODEL" && -n "$WEIGHTS" ]] && bad "--model and --weights exclude each other"
[[ -z "$MODEL" && -z "$WEIGHTS" ]] && MODEL=qwen2.5-7b
[[ "$DTYPE" == fp16 || "$DTYPE" == bf16 ]] || bad "--dtype must be fp16 or bf16, not '$DTYPE'"
for v in "$P" "$G" "$HF_RUNS" "$SEED"; do
  [[ "$v" =~ ^[0-9]+$ ]] || bad "'$v' is not a whole number"
done
(( P >= 1 && G >= 2 && HF_RUNS >= 1 )) || bad "need --prompt-tokens >= 1, --generated-tokens >= 2 (an ITL), --hf-runs >= 1"
for kv in ${AB[@]+"${AB[@]}"}; do
  [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || bad "--cuda-ab wants NAME=VALUE, not '$kv'"
done
if [[ -z "$T" ]]; then
  for c in "$here/.dev/tpprof" "$here/target/device/tpprof" "$here/target/release/tpprof"; do
    [[ -x "$c" ]] && { T="$c"; break; }
  done
  [[ -z "$T" ]] && T="$here/target/release/tpprof"
fi
if [[ -n "$WEIGHTS" ]]; then
  CKPT="$WEIGHTS"
elif [[ -z "$CKPT" ]]; then
  CKPT="/tmp/tpprof-bench-$(basename "$MODEL" .json)-$DTYPE-s$SEED"
fi

# The rows: name, environment, command.
names=() envs=() cmds=()
row() { names+=("$1"); envs+=("$2"); cmds+=("$3"); }
q() { local s; s="$(printf '%q ' "$@")"; printf '%s' "${s% }"; }
if [[ -n "$MODEL" ]]; then
  WRITE="$(q "$T" write-checkpoint --model "$MODEL" --seed "$SEED" --dtype "$DTYPE" --out "$CKPT")"
else
  WRITE=""
fi
CU=(mpirun --bind-to none -n 1 "$T" run --engine cuda --weights "$CKPT" --dtype "$DTYPE"
    --prompt-tokens "$P" --generated-tokens "$G" --warmup auto --timeout 500 --force)
row cuda "" "$(q "${CU[@]}" --out "$O/cuda.json")"
i=0
for kv in ${AB[@]+"${AB[@]}"}; do
  i=$((i + 1))
  row "cuda[$kv]" "$kv" "$(q "${CU[@]}" --out "$O/cuda-ab$i.json")"
done
if (( HF )); then
  row hf "" "$(q "$PY" "$here/launch/hf/plain_timing.py" "$CKPT" "$P" "$G" --static-compile --dtype "$DTYPE" --runs "$HF_RUNS" --json "$O/hf.json")"
fi

if (( DRY )); then
  echo "# bench: $([[ -n "$MODEL" ]] && echo "model $MODEL seed $SEED" || echo "weights $WEIGHTS"), $DTYPE, $P -> $G tokens, out $O"
  [[ -n "$WRITE" ]] && echo "[ -f $CKPT/config.json ] || $WRITE"
  for k in "${!names[@]}"; do
    echo "${envs[$k]:+env ${envs[$k]} }${cmds[$k]}"
  done
  exit 0
fi

source "$here/launch/gpu-env.sh"  # MPI/NCCL environment, $O made absolute, $LOG, say()
: > "$LOG"
say "=== bench $(date -u +%FT%TZ): $([[ -n "$MODEL" ]] && echo "model $MODEL seed $SEED" || echo "weights $WEIGHTS"), $DTYPE, $P -> $G"
nvidia-smi -L 2>&1 | tee -a "$LOG"
"$T" --version 2>&1 | tee -a "$LOG"
if [[ -n "$WRITE" && ! -f "$CKPT/config.json" ]]; then
  say "=== checkpoint: $WRITE"
  t0=$(date +%s)
  eval "$WRITE" >> "$LOG" 2>&1 || { say "write-checkpoint failed (see $LOG)"; exit 1; }
  say "--- checkpoint written in $(( $(date +%s) - t0 ))s"
fi
for k in "${!names[@]}"; do
  say "=== ${names[$k]}: ${envs[$k]:+env ${envs[$k]} }${cmds[$k]}"
  t0=$(date +%s)
  log="$O/$(echo "${names[$k]}" | tr -c 'A-Za-z0-9_.\n-' '_').log"
  if [[ -n "${envs[$k]}" ]]; then
    (export "${envs[$k]}"; eval "${cmds[$k]}") > "$log" 2>&1
  else
    eval "${cmds[$k]}" > "$log" 2>&1
  fi
  rc=$?
  say "--- ${names[$k]}: rc=$rc in $(( $(date +%s) - t0 ))s"
  grep -E '^(run [0-9]|TTFT|ITL|error|warning)' "$log" | head -n 12 | tee -a "$LOG"
done

# The table (cuda rows from tpprof's JSON summary, hf from plain_timing.py's JSON).
"$PY" - "$O" "$CKPT" "$P" "$G" "$DTYPE" "${names[@]}" <<'PY' 2>&1 | tee -a "$LOG"
import json, os, sys
out, ckpt, p, g, dtype, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6:]
files, ab = {}, 0
for n in names:
    if n == "hf":
        files[n] = "hf.json"
    elif n == "cuda":
        files[n] = "cuda.json"
    else:
        ab += 1
        files[n] = "cuda-ab%d.json" % ab
rows = {}
for n in names:
    path = os.path.join(out, files[n])
    try:
        j = json.load(open(path))
        if n == "hf":
            rows[n] = {"ttft_ms": j["ttft_ms"], "itl_p50_ms": j["itl_ms"]["p50"], "engine": j.get("engine"),
                       "decode_compiled": j.get("decode_compiled"), "gpu": j.get("gpu")}
        else:
            s = j["summary"]
            rows[n] = {"ttft_ms": s["ttft_ms"]["p50"], "itl_p50_ms": s["itl_ms"]["p50"],
                       "gpu": ((j.get("ranks") or [{}])[0].get("gpu") or {}).get("name"),
                       "commit": (j.get("environment") or {}).get("tpprof_commit")}
    except Exception as e:
        rows[n] = {"error": "%s: %s" % (type(e).__name__, e)}
hf = rows.get("hf", {})
print("bench: %s, %s, %d -> %d tokens (one GPU, batch 1)" % (ckpt, dtype, p, g))
print("%-40s %12s %12s %14s %14s" % ("engine", "TTFT ms", "ITL p50 ms", "TTFT / hf", "ITL / hf"))
ok = True
for n in names:
    r = rows[n]
    if "error" in r:
        ok = False
        print("%-40s %s" % (n, r["error"]))
        continue
    rt = ri = "-"
    if n != "hf" and "ttft_ms" in hf:
        rt = "%.3f" % (r["ttft_ms"] / hf["ttft_ms"])
        ri = "%.3f" % (r["itl_p50_ms"] / hf["itl_p50_ms"])
        r["ttft_over_hf"], r["itl_over_hf"] = float(rt), float(ri)
    print("%-40s %12.1f %12.3f %14s %14s" % (n, r["ttft_ms"], r["itl_p50_ms"], rt, ri))
if "hf" in rows and "error" not in hf and not hf.get("decode_compiled"):
    print("note: transformers did not keep a compiled decode step (decode_compiled false): its ITL is eager")
json.dump({"checkpoint": ckpt, "dtype": dtype, "prompt_tokens": p, "generated_tokens": g, "rows": rows, "files": files},
          open(os.path.join(out, "bench.json"), "w"), indent=1)
sys.exit(0 if ok else 1)
PY
rc=${PIPESTATUS[0]}
say "=== done $(date -u +%FT%TZ); files in $O"
exit "$rc"
