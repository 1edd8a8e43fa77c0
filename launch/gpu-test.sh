#!/usr/bin/env bash
# The tests that need NVIDIA GPUs (CI has none): run on a machine with >= 2 GPUs (on one GPU: the TP=1
# verify and the decode attention kernels only), after building
# (cargo build --release) or with TPPROF=/path/to/tpprof (and libtpprof_mock.so beside it).
#  1. tpprof verify: the cuda engine against the cpu reference, TP 1 and 2 (and 4 on >= 4 GPUs), fp16 and bf16, head_dim
#     64 and 128, prompts up to 2 000 tokens: logits after prefill and after the last decode step,
#     greedy tokens;
#  2. GPU memory against known allocations: the mock allocates 3 GiB on rank 0 and 5 GiB on rank 1
#     (ALL_RANKS), then 4 GiB on both GPUs from rank 0 (ONE_PROCESS); each rank's reported peak
#     must cover its allocation plus at most 1 GiB of CUDA context, and in ONE_PROCESS rank 1's
#     GPU memory must be attributed to rank 0's process.
#  3. --cupti against what the cuda engine is known to launch: every decode step has the same kernel
#     count in graph and eager mode, 2 x layers + 1 NCCL all-reduces (o-proj and down per layer, the
#     LM head's argmax), GPU busy <= the device step, and the trace carries the kernels;
#  4. --cupti on an engine that is not ours, in both topologies: the mock launches 3 kernels per
#     step on each GPU it allocated on; ALL_RANKS: each rank sees 3 per step on its GPU;
#     ONE_PROCESS: rank 0's process sees 3 per step on each of the two GPUs, rank 1 records
#     nothing, and the cross-rank summary compares the two GPUs (no NCCL: every step tied);
#  5. a model and a KV cache the GPU cannot hold: one line with the figures, exit 2, no file.
# Exits non-zero on the first failure. GPU_TEST_ONLY=a,b runs only those parts (for device calls too short
# for the whole script; default all): verify (1, the default kernels), attention (decode attention kernels),
# loops (overlapped loop, PDL), gemv (gemv.cu kernels, the fused decode), sizes (5), multi (2, 3, 4 and the
# TP=4 / checkpoint verifies: 2+ GPUs).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
B="${TPPROF:-$here/target/release/tpprof}"
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
MR=(mpirun --bind-to none)
[[ "$(id -u)" -eq 0 ]] && MR+=(--allow-run-as-root)
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

want() {  # want PART: whether GPU_TEST_ONLY (a comma list; unset: all) selects it
  [[ -z "${GPU_TEST_ONLY:-}" || ",$GPU_TEST_ONLY," == *",$1,"* ]]
}
NG="$(nvidia-smi -L | grep -c '^GPU ')"
tps=(1)
(( NG >= 2 )) && tps+=(2)
TP="${tps[-1]}"
# head_dim 128, group 5 per rank at TP=2 (the 14B/32B TP=2 attention shape), 2 000-token prompts:
# decode attention over many splits of a long cache.
cat > "$out/d128.json" <<'JSON'
{"vocab_size": 32000, "hidden_size": 1280, "intermediate_size": 3456, "num_hidden_layers": 4, "num_attention_heads": 10,
 "num_key_value_heads": 2, "max_position_embeddings": 8192, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true}
JSON
want verify && for n in "${tps[@]}"; do
  "${MR[@]}" -n "$n" "$B" verify --model tiny --prompt-tokens 700
  "${MR[@]}" -n "$n" "$B" verify --model small --prompt-tokens 700
  "${MR[@]}" -n "$n" "$B" verify --model small --dtype bf16 --prompt-tokens 700
  "${MR[@]}" -n "$n" "$B" verify --model qwen2.5-0.5b --prompts 2 --prompt-tokens 700
  "${MR[@]}" -n "$n" "$B" verify --model "$out/d128.json" --prompts 2 --prompt-tokens 2000
done
# The decode attention kernels at this shape (on the most GPUs at hand): the default on these GPUs
# (sm_80+) is decode_attn_mma, at several tiles and a partial one (176, 336: the 10K-context runs'
# splits), 16 tiles (1 024) and with its in-kernel merge (the verifies above ran it at head_dim 64
# and 128, fp16 and bf16); TPPROF_CUDA_ATTN=sk (the default before sm_80) picks decode_attn_sk up
# to 512 positions and decode_attn_pipe past them (640); decode_attn_pipe forced at several tiles,
# a partial one, 16 tiles, with its in-kernel merge; then the fallbacks.
check() {  # check ENV=VALUE... -- EXPECTED: verify under the environment, the kernel line must match
  local envs=() x=()
  while [[ "$1" != -- ]]; do envs+=("$1"); x+=(-x "${1%%=*}"); shift; done
  shift
  env "${envs[@]}" "${MR[@]}" "${x[@]}" -n "$TP" "$B" verify --model "$out/d128.json" --prompts 1 --prompt-tokens 2000 | tee "$out/k.log"
  grep -q "decode attention: $1" "$out/k.log" || { echo "gpu-test: expected decode attention '$1'"; exit 1; }
}
if want attention; then
for split in 176 336 1024; do
  check TPPROF_CUDA_ATTN_SPLIT=$split -- "decode.cu decode_attn_mma + decode_attn_merge, [0-9]* splits of $split positions"
done
check TPPROF_CUDA_ATTN_MERGE=1 -- "decode.cu decode_attn_mma (merge in its last block)"
check TPPROF_CUDA_ATTN=mma TPPROF_CUDA_ATTN_SPLIT=336 -- "decode.cu decode_attn_mma + decode_attn_merge, [0-9]* splits of 336 positions"
"${MR[@]}" -n "$TP" "$B" verify --model "$out/d128.json" --dtype bf16 --prompts 2 --prompt-tokens 2000
for split in 176 336 512; do
  check TPPROF_CUDA_ATTN=sk TPPROF_CUDA_ATTN_SPLIT=$split -- "decode.cu decode_attn_sk, [0-9]* splits of $split positions"
done
check TPPROF_CUDA_ATTN=sk TPPROF_CUDA_ATTN_SPLIT=640 -- "decode.cu decode_attn_pipe + decode_attn_merge, [0-9]* splits of 640 positions"
TPPROF_CUDA_ATTN=sk "${MR[@]}" -x TPPROF_CUDA_ATTN -n "$TP" "$B" verify --model small --prompts 2 --prompt-tokens 700
TPPROF_CUDA_ATTN=sk "${MR[@]}" -x TPPROF_CUDA_ATTN -n "$TP" "$B" verify --model small --dtype bf16 --prompt-tokens 700
for split in 176 336 1024; do
  check TPPROF_CUDA_ATTN=pipe TPPROF_CUDA_ATTN_SPLIT=$split -- "decode.cu decode_attn_pipe + decode_attn_merge, [0-9]* splits of $split positions"
done
check TPPROF_CUDA_ATTN=pipe TPPROF_CUDA_ATTN_MERGE=1 -- "decode.cu decode_attn_pipe (merge in its last block)"
check TPPROF_CUDA_ATTN=fast -- "decode.cu decode_attn_fast"
check TPPROF_CUDA_ATTN=tiled -- "attention.cu decode_attn_partial"
fi
# The overlapped decode loop (TPPROF_CUDA_OVERLAP=1: step n + 1 launched before step n's tokens are
# read): the same tokens and logits, single prompts and batches of different lengths.
want loops && for n in "${tps[@]}"; do
  TPPROF_CUDA_OVERLAP=1 "${MR[@]}" -x TPPROF_CUDA_OVERLAP -n "$n" "$B" verify --model small --prompt-tokens 700
  TPPROF_CUDA_OVERLAP=1 "${MR[@]}" -x TPPROF_CUDA_OVERLAP -n "$n" "$B" verify --model "$out/d128.json" --prompts 2 --prompt-tokens 2000
done
# Programmatic dependent launch of our kernels (TPPROF_CUDA_PDL=1, sm_90+): the same tokens and logits,
# graph and eager decode, with the tensor-core decode attention and the overlapped loop too.
want loops && for n in "${tps[@]}"; do
  TPPROF_CUDA_PDL=1 "${MR[@]}" -x TPPROF_CUDA_PDL -n "$n" "$B" verify --model "$out/d128.json" --prompts 2 --prompt-tokens 2000
  TPPROF_CUDA_PDL=1 TPPROF_CUDA_GRAPH=0 "${MR[@]}" -x TPPROF_CUDA_PDL -x TPPROF_CUDA_GRAPH -n "$n" "$B" verify --model small --prompts 2 --prompt-tokens 700
  TPPROF_CUDA_PDL=1 TPPROF_CUDA_ATTN=mma TPPROF_CUDA_OVERLAP=1 "${MR[@]}" -x TPPROF_CUDA_PDL -x TPPROF_CUDA_ATTN -x TPPROF_CUDA_OVERLAP \
    -n "$n" "$B" verify --model "$out/d128.json" --prompts 2 --prompt-tokens 2000
done
if want gemv; then
# gemv.cu for every decode projection (TPPROF_CUDA_GEMV=all) against the cpu reference, fp16 and bf16.
TPPROF_CUDA_GEMV=all "${MR[@]}" -x TPPROF_CUDA_GEMV -n "$TP" "$B" verify --model small --prompts 2 --prompt-tokens 700
TPPROF_CUDA_GEMV=all "${MR[@]}" -x TPPROF_CUDA_GEMV -n "$TP" "$B" verify --model small --dtype bf16 --prompt-tokens 700
TPPROF_CUDA_GEMV=all "${MR[@]}" -x TPPROF_CUDA_GEMV -n "$TP" "$B" verify --model "$out/d128.json" --prompts 2 --prompt-tokens 2000
# (on sm_90 that is gemv_bulk; the one-warp-per-row kernel, and gemv_bulk in another shape with polled
# barriers under PDL:)
TPPROF_CUDA_GEMV=all TPPROF_CUDA_GEMV_KERNEL=warp "${MR[@]}" -x TPPROF_CUDA_GEMV -x TPPROF_CUDA_GEMV_KERNEL -n "$TP" "$B" verify --model small --prompts 2 --prompt-tokens 700
TPPROF_CUDA_GEMV=all TPPROF_CUDA_GEMV_KERNEL=bulk:2,4,8,spin TPPROF_CUDA_PDL=1 "${MR[@]}" -x TPPROF_CUDA_GEMV -x TPPROF_CUDA_GEMV_KERNEL -x TPPROF_CUDA_PDL \
  -n "$TP" "$B" verify --model "$out/d128.json" --prompts 2 --prompt-tokens 2000
# The fused decode (TPPROF_CUDA_FUSE=1, one GPU: RMSNorm, SwiGLU and the residual adds inside gemv_bulk),
# head_dim 64 and 128, fp16 and bf16, with PDL.
TPPROF_CUDA_FUSE=1 "${MR[@]}" -x TPPROF_CUDA_FUSE -n 1 "$B" verify --model small --prompts 2 --prompt-tokens 700
TPPROF_CUDA_FUSE=1 "${MR[@]}" -x TPPROF_CUDA_FUSE -n 1 "$B" verify --model "$out/d128.json" --dtype bf16 --prompts 2 --prompt-tokens 2000
TPPROF_CUDA_FUSE=1 TPPROF_CUDA_PDL=1 "${MR[@]}" -x TPPROF_CUDA_FUSE -x TPPROF_CUDA_PDL -n 1 "$B" verify --model qwen2.5-0.5b --prompts 2 --prompt-tokens 700
fi
# 5. What the GPU cannot hold is one line and exit 2 before allocating, no file: weights (a 400-layer
#    model of ~200 GB) at create, a KV cache (16 x 100 000 positions of a 64-layer, 16-KV-head model,
#    ~420 GB) at prepare.
cat > "$out/huge.json" <<'JSON'
{"vocab_size": 32000, "hidden_size": 8192, "intermediate_size": 16384, "num_hidden_layers": 400, "num_attention_heads": 64,
 "num_key_value_heads": 8, "max_position_embeddings": 8192, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true}
JSON
cat > "$out/longkv.json" <<'JSON'
{"vocab_size": 1000, "hidden_size": 1024, "intermediate_size": 2048, "num_hidden_layers": 64, "num_attention_heads": 16,
 "num_key_value_heads": 16, "max_position_embeddings": 131072, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true}
JSON
too_large() {  # too_large EXPECTED ARGS...: exit 2, the line, no file
  local want="$1"; shift
  local rc=0
  "${MR[@]}" -n 1 "$B" run --engine cuda --no-progress --out "$out/none.json" "$@" >"$out/big.log" 2>&1 || rc=$?
  cat "$out/big.log"
  [[ $rc -eq 2 ]] || { echo "gpu-test: expected exit 2, got $rc"; exit 1; }
  grep -q "$want" "$out/big.log" || { echo "gpu-test: expected '$want'"; exit 1; }
  [[ ! -e "$out/none.json" ]] || { echo "gpu-test: a file was written"; exit 1; }
}
if want sizes; then
too_large "weights of rank 0 of 1 need .* GiB free of" --model "$out/huge.json" --generated-tokens 4
too_large "KV cache and buffers of 16 sample(s) of up to 100000 positions (KV .* GiB, + 0.5 GiB headroom) need .* GiB free of" --model "$out/longkv.json" \
  --batch 16 --prompt-tokens 99000 --generated-tokens 1000 --warmup 0
fi
if (( NG < 2 )); then
  echo "gpu-test: one GPU: ${GPU_TEST_ONLY:-all} passed (TP=1); TP=2 verify, the memory and the CUPTI checks need 2 GPUs (skipped)"
  exit 0
fi
if ! want multi; then
  echo "gpu-test: ${GPU_TEST_ONLY} passed"
  exit 0
fi
# Four or more GPUs: TP=4 as well (the 32B TP=4 attention shape: head_dim 128, group 5, one KV head per rank here).
if [[ "$(nvidia-smi -L | grep -c '^GPU ')" -ge 4 ]]; then
  cat > "$out/d128x4.json" <<'JSON'
{"vocab_size": 32000, "hidden_size": 2560, "intermediate_size": 6912, "num_hidden_layers": 2, "num_attention_heads": 20,
 "num_key_value_heads": 4, "max_position_embeddings": 8192, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true}
JSON
  "${MR[@]}" -n 4 "$B" verify --model tiny --prompt-tokens 700
  "${MR[@]}" -n 4 "$B" verify --model small --prompt-tokens 700
  "${MR[@]}" -n 4 "$B" verify --model "$out/d128x4.json" --prompts 2 --prompt-tokens 1500
else
  echo "fewer than 4 GPUs: TP=4 verify skipped"
fi
"$B" write-checkpoint --model small --seed 11 --files 2 --out "$out/ckpt" >/dev/null
"${MR[@]}" -n 2 "$B" verify --weights "$out/ckpt" --prompt-tokens 300

"${MR[@]}" -n 2 "$B" run --engine mock --engine-options '{"gpu_alloc_mib": [3072, 5120], "token_us": 1000, "create_ms": 200}' \
  --prompt-tokens 64 --generated-tokens 200 --mem-interval-ms 5 --out "$out/all.json" >/dev/null
"${MR[@]}" -n 2 "$B" run --engine mock --engine-options '{"topology": "one_process", "gpu_alloc_mib": 4096, "token_us": 1000, "create_ms": 200}' \
  --prompt-tokens 64 --generated-tokens 200 --mem-interval-ms 5 --out "$out/one.json" >/dev/null
python3 - "$out/all.json" "$out/one.json" <<'PY'
import json, sys
GIB = 1 << 30
def check(path, want, owner=None):
    j = json.load(open(path))
    assert j["status"]["state"] == "ok", j["status"]
    assert j["summary"]["peak_memory_source"] == "gpu_nvml_process"
    pids = {r["rank"]: r["pid"] for r in j["ranks"]}
    for r in j["ranks"]:
        g = r["memory"]["gpu"]
        job = g["job_peak"]["bytes"]
        assert want[r["rank"]] <= job <= want[r["rank"]] + GIB, (path, r["rank"], job)
        assert job <= g["device_used_peak"]["bytes"], (path, r["rank"])
        if owner is not None:
            assert [p["rank"] for p in g["processes"] if p["peak_bytes"] > 0] == [owner], g["processes"]
            assert any(p["pid"] == pids[owner] for p in g["processes"])
        print(f"{path.split('/')[-1]} rank {r['rank']}: job peak {job / GIB:.3f} GiB for {want[r['rank']] / GIB:.0f} GiB allocated, device used {g['device_used_peak']['bytes'] / GIB:.3f} GiB OK")
check(sys.argv[1], {0: 3 * GIB, 1: 5 * GIB})
check(sys.argv[2], {0: 4 * GIB, 1: 4 * GIB}, owner=0)
PY

"${MR[@]}" -n 2 "$B" run --engine cuda --model small --prompt-tokens 300 --generated-tokens 40 --cupti \
  --trace "$out/cupti.trace.json" --out "$out/cupti.json" >/dev/null
TPPROF_CUDA_GRAPH=0 "${MR[@]}" -x TPPROF_CUDA_GRAPH -n 2 "$B" run --engine cuda --model small --prompt-tokens 300 --generated-tokens 40 --cupti \
  --out "$out/cupti-eager.json" >/dev/null
python3 - "$out/cupti.json" "$out/cupti-eager.json" "$out/cupti.trace.json" <<'PY'
import json, sys
per_step = {}
for path in sys.argv[1:3]:
    j = json.load(open(path))
    assert j["status"]["state"] == "ok", j["status"]
    layers = j["config"]["model_config"]["num_hidden_layers"]
    assert j["cupti"]["steps"] == 39, j["cupti"]
    assert sum(j["cupti"]["waited_for_steps"]) == 39, j["cupti"]
    for r in j["ranks"]:
        c = r["cupti"]
        assert c["dropped"] == 0 and len(c["devices"]) == 1, c
        d = c["devices"][0]
        assert d["steps"] == 39 and d["step_source"] == "device_events", d["steps"]
        assert d["kernels_per_step_min"] == d["kernels_per_step_max"] > 0, d
        assert d["nccl_kernels_per_step_mean"] == 2 * layers + 1, (d["nccl_kernels_per_step_mean"], layers)
        assert 0 < d["nccl_share"] < d["busy_share"] <= 1.0, d
        dev = r["device_decode"]
        assert d["busy"]["max_ns"] <= dev["max_ns"] * 1.01, (d["busy"]["max_ns"], dev["max_ns"])
        per_step.setdefault(r["rank"], []).append(d["kernels_per_step_min"])
        print(f"{path.split('/')[-1]} rank {r['rank']}: {d['kernels_per_step_min']} kernels/step, {d['nccl_kernels_per_step_mean']:.0f} NCCL (layers {layers}), busy {d['busy_share']:.3f}, NCCL {d['nccl_share']:.3f} OK")
for r, counts in per_step.items():
    assert counts[0] == counts[1], f"rank {r}: graph {counts[0]} vs eager {counts[1]} kernels per step"
ev = json.load(open(sys.argv[3]))["traceEvents"]
assert sum(1 for e in ev if e.get("cat") == "nccl") > 0 and sum(1 for e in ev if e.get("cat") == "compute") > 0
PY

K='"gpu_alloc_mib": 256, "gpu_kernels_per_step": 3, "token_us": 500'
"${MR[@]}" -n 2 "$B" run --engine mock --engine-options "{$K}" --prompt-tokens 64 --generated-tokens 50 --cupti \
  --out "$out/mock-cupti.json" >/dev/null
"${MR[@]}" -n 2 "$B" run --engine mock --engine-options "{\"topology\": \"one_process\", $K}" --prompt-tokens 64 --generated-tokens 50 --cupti \
  --out "$out/mock-cupti-one.json" >/dev/null
python3 - "$out/mock-cupti.json" "$out/mock-cupti-one.json" <<'PY'
import json, sys
def devices(j, rank):
    return j["ranks"][rank]["cupti"]["devices"]
a = json.load(open(sys.argv[1]))
assert a["status"]["state"] == "ok", a["status"]
for r in (0, 1):
    d = devices(a, r)
    assert len(d) == 1 and d[0]["step_source"] == "host_tokens" and d[0]["steps"] == 49, d
    assert d[0]["kernels_per_step_min"] == d[0]["kernels_per_step_max"] == 3, d[0]
    assert d[0]["prefill"]["kernels"] == 3 and d[0]["nccl_kernels_per_step_mean"] == 0, d[0]
    print(f"mock ALL_RANKS rank {r}: GPU{d[0]['device']} 3 kernels per step over {d[0]['steps']} steps OK")
o = json.load(open(sys.argv[2]))
assert o["status"]["state"] == "ok", o["status"]
d0 = devices(o, 0)
assert sorted(d["device"] for d in d0) == [0, 1], d0
for d in d0:
    assert d["steps"] == 49 and d["kernels_per_step_min"] == d["kernels_per_step_max"] == 3, d
assert o["ranks"][1]["cupti"] is None, o["ranks"][1]["cupti"]  # observers record nothing
c = o["cupti"]
assert c["participants"] == ["rank 0 GPU0", "rank 0 GPU1"] and c["steps"] == 49 and c["tied_steps"] == 49, c
print("mock ONE_PROCESS: rank 0's process 3 kernels per step on GPU0 and GPU1, rank 1 (observer) none OK")
PY
echo "gpu-test: PASS"
