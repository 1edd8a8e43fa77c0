"""Hugging Face transformers timed without tpprof: the yardstick for tpprof's python:hf figures.

The same workload as `tpprof run --engine python:hf --engine-options '{"model_dir": DIR, "dtype":
"fp16", "attn_implementation": "sdpa"}' --prompt-tokens P --generated-tokens G`: one sample of P
random token ids, G tokens, exact length (min_new_tokens = max_new_tokens), greedy, on one GPU,
driven the way the python:hf driver drives it (model.generate() under inference_mode with a
BaseStreamer), but nothing of tpprof in the process. Token times are time.monotonic() when each
token reaches the host (the streamer's .tolist()); TTFT from just before generate(); ITL the gaps.
Every run is reported, the warm-up runs too (their ITL p50 shows the slow first generate() of a
process without tpprof in the picture).

With --static-compile, generate() gets a static KV cache (cache_implementation="static"), which
makes transformers compile the decode step with torch.compile (its CompileConfig default:
inductor, mode "reduce-overhead" = CUDA graphs, fullgraph); the prefill runs eager (SDPA). This is
the "HF compiled" yardstick of launch/bench.sh; the first generate() pays the compilation.

usage: python3 plain_timing.py MODEL_DIR P G [--runs N] [--json OUT] [--static-compile] [--dtype fp16|bf16]
  --runs N   generate() calls in the process (default 4); the last one is "the measured run"
"""

import argparse
import json
import random
import time


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("prompt", type=int)
    ap.add_argument("gen", type=int)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--json")
    ap.add_argument("--static-compile", action="store_true",
                    help="static KV cache, decode step compiled by torch.compile (transformers' auto-compile)")
    ap.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16")
    a = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    t0 = time.monotonic()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="sdpa")
    model = model.to("cuda:0").eval()
    torch.cuda.synchronize()
    load_s = time.monotonic() - t0
    vocab = int(model.config.vocab_size)
    rng = random.Random(0)

    class Times(BaseStreamer):
        def __init__(self):
            self.prompt_seen = False
            self.t = []

        def put(self, value):
            if not self.prompt_seen and value.dim() > 1:
                self.prompt_seen = True
                return
            value.reshape(-1).tolist()  # on the host now, as the driver does
            self.t.append(time.monotonic())

        def end(self):
            pass

    runs = []
    for _ in range(a.runs):
        ids = torch.tensor([[rng.randrange(vocab) for _ in range(a.prompt)]], device="cuda:0")
        mask = torch.ones_like(ids)
        st = Times()
        extra = {"cache_implementation": "static"} if a.static_compile else {}
        submit = time.monotonic()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.gen, min_new_tokens=a.gen,
                           do_sample=False, num_beams=1, use_cache=True, streamer=st,
                           temperature=None, top_p=None, top_k=None, pad_token_id=0, **extra)
        if len(st.t) != a.gen:
            raise SystemExit("generate() gave %d of %d tokens" % (len(st.t), a.gen))
        itl = [(y - x) * 1e3 for x, y in zip(st.t, st.t[1:])]
        runs.append({"ttft_ms": round((st.t[0] - submit) * 1e3, 3),
                     "itl_ms": {q: round(pct(itl, float(q[1:])), 3) for q in ("p50", "p90", "p99")},
                     "itl_mean_ms": round(sum(itl) / len(itl), 3),
                     "total_s": round(st.t[-1] - submit, 3)})
        print("run %d: TTFT %.1f ms, ITL p50 %.3f ms, total %.2f s" % (len(runs), runs[-1]["ttft_ms"],
              runs[-1]["itl_ms"]["p50"], runs[-1]["total_s"]), flush=True)
    res = dict(runs[-1])
    res.update({
        "engine": "transformers %s (torch %s), no tpprof" % (transformers.__version__, torch.__version__),
        "model": a.model, "prompt_tokens": a.prompt, "requested": a.gen, "generated": a.gen,
        "dtype": a.dtype, "attn_implementation": "sdpa", "load_s": round(load_s, 3),
        "static_cache": a.static_compile,
        # transformers keeps the torch.compile'd forward it made for the decode steps here.
        "decode_compiled": getattr(model, "_compiled_call", None) is not None,
        "gpu": torch.cuda.get_device_name(0),
        "warmup_runs": a.runs - 1, "runs": runs,
    })
    print(json.dumps(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
