#!/usr/bin/env bash
# Hugging Face transformers (--engine python:hf) next to the built-in cuda engine, TP=2 on one host
# with 2 GPUs, Qwen2.5-7B shape (random weights), FP16, in one call:
#   0. python:test 16 -> 8 (libpython found and embedded; seconds)
#   1. hf   512 -> 32    (smoke: the driver loads, shards, generates)
#   2. hf   10000 -> 800 (skipped when the smoke failed: it would fail the same way)
#   3. cuda 10000 -> 800
#   4. hf   2000 -> 64 with --cupti and --trace (kernel activity of the third-party engine)
# Every step runs even when an earlier one failed (except 2, above); each writes OUT/<step>.json and
# OUT/<step>.log, OUT/log has the commands, exit codes, times and tpprof's summaries.
#
# usage: launch/hf-gpu.sh TPPROF OUT [PYTHON]
#   TPPROF  the tpprof binary (e.g. .dev/tpprof)
#   OUT     output directory (created)
#   PYTHON  interpreter with torch + transformers (default /opt/torch/.venv/bin/python3)
# Environment: BUDGET_S (default 570): the whole script stays inside it (each step's timeout is cut
#   to what is left); MODEL (default qwen2.5-7b); LONG_PROMPT (10000), LONG_GEN (800).
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T="$(realpath "${1:?usage: launch/hf-gpu.sh TPPROF OUT [PYTHON]}")"
O="${2:?usage: launch/hf-gpu.sh TPPROF OUT [PYTHON]}"
PY="${3:-/opt/torch/.venv/bin/python3}"
MODEL="${MODEL:-qwen2.5-7b}"
LONG_PROMPT="${LONG_PROMPT:-10000}"
LONG_GEN="${LONG_GEN:-800}"
source "$here/launch/gpu-env.sh"

# step NAME MAX_SECONDS ARGS...: tpprof run ARGS on 2 ranks, JSON to OUT/NAME.json.
step() {
  local name="$1" max="$2"; shift 2
  local left=$(( deadline - $(date +%s) - 5 ))
  local to=$(( max < left ? max : left ))
  if (( to < 30 )); then
    say "=== $name: SKIPPED (only ${left}s of the budget left)"
    return 99
  fi
  local cmd=(mpirun --bind-to none -n 2 "$T" run "$@" --timeout $(( to - 10 )) --out "$O/$name.json" --force)
  say "=== $name (timeout ${to}s): ${cmd[*]}"
  local t0=$(date +%s)
  timeout -k 10 "$to" "${cmd[@]}" > "$O/$name.log" 2>&1
  local rc=$?
  say "--- $name: rc=$rc in $(( $(date +%s) - t0 ))s"
  grep -v -E '^\[rank [0-9]+\]' "$O/$name.log" | grep -E -v '^\s*$' | tail -n 25 >> "$LOG"
  grep -E '^error|^hf driver rank' "$O/$name.log" | tee -a "$LOG" | head -n 4
  return $rc
}

: > "$LOG"
say "=== environment $(date -u +%FT%TZ)"
nvidia-smi -L 2>&1 | tee -a "$LOG"
"$T" --version 2>&1 | tee -a "$LOG"
"$PY" -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count(), "transformers", transformers.__version__)' 2>&1 | tail -n 3 | tee -a "$LOG"
ls "$TPPROF_PYTHON_DRIVERS"/tpprof_driver_hf.py >> "$LOG" 2>&1 || say "WARNING: no hf driver in $TPPROF_PYTHON_DRIVERS"

HF=(--engine python:hf --engine-options "{\"preset\": \"$MODEL\", \"dtype\": \"fp16\", \"python\": \"$PY\"}")
CU=(--engine cuda --model "$MODEL" --dtype fp16)

# libpython and the embedding alone (a few seconds): tells a loader problem from a driver problem.
step py-test 60 --engine python:test --engine-options "{\"python\": \"$PY\", \"token_us\": 1000}" --vocab-size 1000 --prompt-tokens 16 --generated-tokens 8
step hf-smoke 200 "${HF[@]}" --prompt-tokens 512 --generated-tokens 32
hf_smoke=$?
if (( hf_smoke == 0 )); then
  step hf-long 300 "${HF[@]}" --prompt-tokens "$LONG_PROMPT" --generated-tokens "$LONG_GEN"
else
  say "=== hf-long: SKIPPED (hf-smoke failed, rc=$hf_smoke; see $O/hf-smoke.log)"
fi
step cuda-long 200 "${CU[@]}" --prompt-tokens "$LONG_PROMPT" --generated-tokens "$LONG_GEN"
# CUPTI inside an engine we did not write: per-step NCCL share and who waited, from host token times.
if (( hf_smoke == 0 )); then
  step hf-cupti 150 "${HF[@]}" --prompt-tokens 2000 --generated-tokens 64 --cupti --trace "$O/hf-cupti.trace.json"
fi

# Side by side: TTFT, ITL p50/p99, per-rank NVML peak vs the engine's own figures.
"$PY" - "$O" <<'PY' 2>&1 | tee -a "$LOG"
import json, os, sys
out = sys.argv[1]
GIB = 1 << 30
for name in ("py-test", "hf-smoke", "hf-long", "cuda-long", "hf-cupti"):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        print(f"{name}: no JSON")
        continue
    try:
        j = json.load(open(path))
        s = j.get("summary")
        if not s:
            print(f"{name}: {j['status']['state']}: {j['status'].get('reason')}")
            continue
        ttft, itl = s.get("ttft_ms") or {}, s.get("itl_ms") or {}
        print(f"{name}: {j['status']['state']} tokens {s['generated_tokens']}/{s['requested_tokens']} "
              f"TTFT p50 {ttft.get('p50')} ms, ITL p50 {itl.get('p50')} p99 {itl.get('p99')} ms, "
              f"engine load {s.get('engine_load_s')} s")
        for r in j["ranks"]:
            gpu = (r.get("memory") or {}).get("gpu") or {}
            job = (gpu.get("job_peak") or {}).get("bytes")
            em = r.get("engine_memory") or {}
            def g(v):
                return "-" if v is None else f"{v / GIB:.2f}"
            det = j.get("engine", {}).get("details", {})
            parts = [em.get(k) for k in ("weights_bytes", "kv_cache_bytes", "workspace_bytes")]
            torch_peak = sum(parts) if name.startswith("hf") and None not in parts else None
            ph = {p["phase"]: p.get("bytes") for p in ((r.get("memory") or {}).get("phase_peaks") or [])}
            ph = {k: ph.get(k) for k in ("engine_load", "prefill", "decode")}
            print(f"  rank {r['rank']}: NVML phase peaks load {g(ph['engine_load'])} prefill {g(ph['prefill'])} decode {g(ph['decode'])} GiB")
            for d in ((r.get("cupti") or {}).get("devices") or []):
                print(f"  rank {r['rank']} CUPTI GPU{d['device']}: {d['steps']} steps ({d['step_source']}), {d['kernels_per_step_mean']:.0f} kernels/step ({d['nccl_kernels_per_step_mean']:.0f} NCCL), busy {d['busy_share']:.3f} NCCL {d['nccl_share']:.3f} of step time")
            print(f"  rank {r['rank']}: NVML job peak {g(job)} GiB; engine weights {g(parts[0])} kv {g(parts[1])} "
                  f"workspace {g(parts[2])} GiB" + (f" (= torch max_memory_allocated {g(torch_peak)} GiB)" if torch_peak else ""))
        if name.startswith("hf"):
            print("  engine:", {k: det.get(k) for k in ("version", "torch", "dtype", "tp_implementation", "attn_implementation")})
    except Exception as e:  # a partial JSON must not stop the summary
        print(f"{name}: cannot summarise ({type(e).__name__}: {e})")
PY
say "=== done $(date -u +%FT%TZ); files in $O"
