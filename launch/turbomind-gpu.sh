#!/usr/bin/env bash
# LMDeploy TurboMind (--engine python:lmdeploy) beside the built-in cuda engine and Hugging Face
# transformers (python:hf), one GPU, the same random-weight checkpoint, warmed up (tpprof's default
# --warmup auto; WARMUP=1 gives the --warmup 1 of the committed TurboMind pages), every engine in its
# own process one after the other. Needs the TurboMind bundle installed first
# (launch/turbomind-bundle.sh install).
#
# usage: launch/turbomind-gpu.sh TPPROF OUT MODEL STEP...
#   TPPROF  the tpprof binary;  OUT  output directory (created);  MODEL  a preset (qwen2.5-7b, qwen2.5-14b)
#   STEP    any of, in the order given:
#     ckpt       tpprof write-checkpoint --dtype fp16 into $CKPT (default /var/tmp/ckpt-MODEL), unless there
#     tm-10k     TurboMind 10 000 -> 800        tm-20k   TurboMind 20 000 -> 1 000
#     tm-cupti   TurboMind 10 000 -> 800 with --cupti (its own kernels, per decode step)
#     plain-10k  TurboMind 10 000 -> 800 timed by launch/turbomind/plain_timing.py, no tpprof (the yardstick)
#     cuda-10k   cuda engine --weights $CKPT 10 000 -> 800   cuda-20k  the same, 20 000 -> 1 000
#     hf-10k     python:hf model_dir $CKPT 10 000 -> 800 (sdpa)
#     plain-hf   the same transformers workload timed by launch/hf/plain_timing.py, no tpprof (4 runs, all reported)
#     pytest-torch  python:test scripted at 2 000 us per token with torch imported in the interpreter, 16 -> 400
#     compare    tpprof compare --markdown of tm-10k, cuda-10k, hf-10k (those that exist) into OUT/MODEL_compare.md
#     rm-ckpt    delete $CKPT (the disk holds one 14B checkpoint beside the bundle, not two)
# Each run writes OUT/MODEL_STEP.json and .log; OUT/log has the commands, exit codes, times and summaries.
# Environment: BUDGET_S (default 570): the whole script stays inside it; BUNDLE (default
# /var/tmp/tpprof-turbomind); PY (default /opt/torch/.venv/bin/python3); TM_OPTIONS (extra JSON
# members for the TurboMind options, e.g. '"cache_max_entry_count": 0.5'); LIB_FIRST (a library
# directory put before the bundle's: the real cuBLAS 12, say); WARMUP (default auto): every run's --warmup.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T="$(realpath "${1:?usage: launch/turbomind-gpu.sh TPPROF OUT MODEL STEP...}")"
O="${2:?usage: launch/turbomind-gpu.sh TPPROF OUT MODEL STEP...}"
M="${3:?usage: launch/turbomind-gpu.sh TPPROF OUT MODEL STEP...}"
shift 3
PY="${PY:-/opt/torch/.venv/bin/python3}"
BUNDLE="${BUNDLE:-/var/tmp/tpprof-turbomind}"
CKPT="${CKPT:-/var/tmp/ckpt-$M}"
source "$here/launch/gpu-env.sh"
if [[ -f "$BUNDLE/READY" ]]; then
  eval "$(bash "$here/launch/turbomind-bundle.sh" env -d "$BUNDLE")"
fi
# LIB_FIRST: a directory searched before the bundle's libraries, e.g. the real cuBLAS 12 instead of
# the stand-in (a second bundle sealed from libcublas.so.12 + libcublasLt.so.12).
[[ -n "${LIB_FIRST:-}" ]] && export LD_LIBRARY_PATH="$LIB_FIRST:$LD_LIBRARY_PATH"


# run NAME MAX_SECONDS ARGS...: tpprof run ARGS on one rank, JSON to OUT/MODEL_NAME.json.
run() {
  local name="${M}_$1" max="$2"; shift 2
  local l; l=$(left)
  local to=$(( max < l ? max : l ))
  if (( to < 30 )); then say "=== $name: SKIPPED (only ${l}s of the budget left)"; return 99; fi
  local cmd=("$T" run "$@" --timeout $(( to - 10 )) --out "$O/$name.json" --force)
  say "=== $name (timeout ${to}s): ${cmd[*]}"
  local t0; t0=$(date +%s)
  timeout -k 10 "$to" "${cmd[@]}" > "$O/$name.log" 2>&1
  local rc=$?
  say "--- $name: rc=$rc in $(( $(date +%s) - t0 ))s"
  grep -v -E '^\[rank [0-9]+\]|^\[TM\]|lmdeploy - INFO|Loading:|^\s*$' "$O/$name.log" | tail -n 22 >> "$LOG"
  grep -E '^error' "$O/$name.log" | tee -a "$LOG" | head -n 4
  return $rc
}

W="${WARMUP:-auto}"
TM=(--engine python:lmdeploy --engine-options "{\"model_path\": \"$CKPT\", \"python\": \"$PY\"${TM_OPTIONS:+, $TM_OPTIONS}}" --warmup "$W")
CU=(--engine cuda --weights "$CKPT" --dtype fp16 --warmup "$W")
HF=(--engine python:hf --engine-options "{\"model_dir\": \"$CKPT\", \"dtype\": \"fp16\", \"attn_implementation\": \"sdpa\", \"python\": \"$PY\"}" --warmup "$W")

say "=== $(date -u +%FT%TZ) $M: $*; $("$T" --version 2>&1); $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)${LIB_FIRST:+; LIB_FIRST=$LIB_FIRST}"
[[ -f "$BUNDLE/BUNDLE-INFO" ]] && sed 's/^/  bundle: /' "$BUNDLE/BUNDLE-INFO" | tee -a "$LOG"
for s in "$@"; do
  case "$s" in
    ckpt)
      if [[ -f "$CKPT/config.json" ]]; then say "=== ckpt: $CKPT exists"; continue; fi
      t0=$(date +%s)
      "$T" write-checkpoint --model "$M" --dtype fp16 --seed 1 --out "$CKPT" 2>&1 | tail -n 3 | tee -a "$LOG"
      say "--- ckpt: $(du -sh "$CKPT" | cut -f1) in $(( $(date +%s) - t0 ))s; $(df -h /var/tmp | tail -1 | awk '{print $4}') free" ;;
    tm-10k) run tm-10k 240 "${TM[@]}" --prompt-tokens 10000 --generated-tokens 800 ;;
    tm-20k) run tm-20k 240 "${TM[@]}" --prompt-tokens 20000 --generated-tokens 1000 ;;
    tm-cupti) run tm-cupti 240 "${TM[@]}" --prompt-tokens 10000 --generated-tokens 800 --cupti ;;
    cuda-10k) run cuda-10k 200 "${CU[@]}" --prompt-tokens 10000 --generated-tokens 800 ;;
    cuda-20k) run cuda-20k 200 "${CU[@]}" --prompt-tokens 20000 --generated-tokens 1000 ;;
    hf-10k) run hf-10k 420 "${HF[@]}" --prompt-tokens 10000 --generated-tokens 800 ;;
    plain-10k)
      say "=== ${M}_plain-10k: $PY launch/turbomind/plain_timing.py $CKPT 10000 800 --warmup 1"
      timeout -k 10 "$(( $(left) < 240 ? $(left) : 240 ))" "$PY" "$here/launch/turbomind/plain_timing.py" "$CKPT" 10000 800 \
        --warmup 1 --cache 0.8 --json "$O/${M}_plain-10k.plain.json" > "$O/${M}_plain-10k.log" 2>&1
      say "--- ${M}_plain-10k: rc=$? $(tail -n 1 "$O/${M}_plain-10k.log")" ;;
    plain-hf)
      say "=== ${M}_plain-hf: $PY launch/hf/plain_timing.py $CKPT 10000 800 --runs 4"
      timeout -k 10 "$(( $(left) < 420 ? $(left) : 420 ))" "$PY" "$here/launch/hf/plain_timing.py" "$CKPT" 10000 800 \
        --runs 4 --json "$O/${M}_plain-hf.plain.json" > "$O/${M}_plain-hf.log" 2>&1
      say "--- ${M}_plain-hf: rc=$? $(grep '^run ' "$O/${M}_plain-hf.log" | tr '\n' ';')" ;;
    pytest-torch) run pytest-torch 120 --engine python:test --engine-options "{\"token_us\": 2000, \"import\": [\"torch\"], \"python\": \"$PY\"}" \
        --vocab-size 1000 --prompt-tokens 16 --generated-tokens 400 ;;
    compare)
      files=()
      for e in tm-10k cuda-10k hf-10k; do [[ -f "$O/${M}_$e.json" ]] && files+=("$O/${M}_$e.json"); done
      if (( ${#files[@]} >= 2 )); then
        "$T" compare --markdown "${files[@]}" > "$O/${M}_compare.md" 2>&1
        "$T" compare "${files[@]}" 2>&1 | tee -a "$LOG"
      else
        say "=== compare: fewer than two runs"
      fi ;;
    rm-ckpt) rm -rf "$CKPT"; say "=== rm-ckpt: $CKPT removed" ;;
    *) say "unknown step $s"; exit 2 ;;
  esac
done
say "=== done $(date -u +%FT%TZ), $(left)s of the budget left"
