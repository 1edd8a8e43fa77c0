#!/usr/bin/env bash
# Prefill breakdown, 14B fp16 TP=1 10K, random weights: flash (8 warps, default) vs flash4.
set -uo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
B=.dev/pf/tpprof; O="$OUT"
nvidia-smi -L; $B --version
show() { python3 - "$1" <<'P'
import json,sys
d=json.load(open(sys.argv[1]))
s=d["summary"]; print("TTFT p50", s.get("ttft_ms",{}).get("p50"), "ITL p50", s.get("itl_ms",{}).get("p50"))
st=d["ranks"][0].get("engine_stats") or {}
pb=st.get("prefill_breakdown"); print(json.dumps(pb, indent=1))
P
}
for a in ${ATTNS:-flash}; do
  echo "== $a"
  timeout 150 mpirun -n 1 -x TPPROF_CUDA_PREFILL_ATTN=$a $B run --engine cuda --model qwen2.5-14b --dtype fp16 \
    --prompt-tokens 10000 --generated-tokens 16 --warmup 1 --out $O/pf-$a.json > $O/pf-$a.log 2>&1; echo rc=$?
  tail -3 $O/pf-$a.log; show $O/pf-$a.json
done
