"""TurboMind timed without tpprof: the yardstick for tpprof's python:lmdeploy figures.

The same workload as `tpprof run --engine python:lmdeploy --prompt-tokens P --generated-tokens G`:
one sample of P random token ids, G tokens, exact length (ignore_eos, greedy), driven the way
lmdeploy's own benchmark drives TurboMind (create_instance + async_stream_infer with token ids).
Token times are time.monotonic() when each output reaches the consumer; TTFT from just before the
request; ITL the gaps between tokens. Warm-up runs first (other ids), like tpprof's --warmup.

usage: python3 plain_timing.py MODEL_DIR P G [--warmup N] [--cache 0.5] [--json OUT]
"""

import argparse
import asyncio
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
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cache", type=float, default=0.5)
    ap.add_argument("--json")
    a = ap.parse_args()

    import lmdeploy.turbomind.turbomind as tm_mod
    from lmdeploy.messages import GenerationConfig, ResponseType, TurbomindEngineConfig

    class NoTokenizer:  # the checkpoint has none; nothing on this path uses it
        def __init__(self, *args, **kwargs):
            pass

    tm_mod.Tokenizer = NoTokenizer
    t0 = time.monotonic()
    tm = tm_mod.TurboMind.from_pretrained(a.model, engine_config=TurbomindEngineConfig(
        tp=1, cache_max_entry_count=a.cache, enable_prefix_caching=False))
    load_s = time.monotonic() - t0
    vocab = int(tm._vocab_size)
    gen = GenerationConfig(max_new_tokens=a.gen, top_k=1, ignore_eos=True)
    rng = random.Random(0)

    async def one(session, ids):
        inst = tm.create_instance()
        times = []
        submit = time.monotonic()
        async for out in inst.async_stream_infer(session, ids, gen_config=gen, stream_output=True):
            now = time.monotonic()
            if out.status not in (ResponseType.SUCCESS, ResponseType.FINISH):
                raise RuntimeError("TurboMind returned %s" % out.status)
            times.extend([now] * len(out.token_ids))
        return submit, times

    runs = []
    for r in range(a.warmup + 1):
        ids = [rng.randrange(vocab) for _ in range(a.prompt)]
        runs.append(asyncio.run(one(r + 1, ids)))
    submit, times = runs[-1]
    itl = [(b - x) * 1e3 for x, b in zip(times, times[1:])]
    res = {
        "engine": "lmdeploy %s TurboMind, no tpprof" % getattr(__import__("lmdeploy"), "__version__", "?"),
        "model": a.model, "prompt_tokens": a.prompt, "requested": a.gen, "generated": len(times),
        "warmup_runs": a.warmup, "load_s": round(load_s, 3),
        "ttft_ms": round((times[0] - submit) * 1e3, 3),
        "itl_ms": {q: round(pct(itl, float(q[1:])), 3) for q in ("p50", "p90", "p99")},
        "itl_mean_ms": round(sum(itl) / len(itl), 3),
        "total_s": round(times[-1] - submit, 3),
        "warmup_ttft_ms": [round((t[0] - s) * 1e3, 3) for s, t in runs[:-1]],
    }
    print(json.dumps(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    tm.close()


if __name__ == "__main__":
    main()
