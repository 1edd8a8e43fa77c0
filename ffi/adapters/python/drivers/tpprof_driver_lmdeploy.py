"""tpprof driver for LMDeploy TurboMind 0.7+ (up to 0.18), whose weights load only through Python.

Run on lmdeploy 0.18.0 (TurboMind, CUDA 12 build) on an H200 under tpprof (launch/turbomind-gpu.sh,
results/h200-turbomind.md); the 0.7 .. 0.16 paths below were written against lmdeploy's source and
are tested only against a stand-in package. For lmdeploy 0.5.x use the C++ adapter in
ffi/adapters/turbomind instead.

Run with ``mpirun -n 2 tpprof run --engine python:lmdeploy --engine-options '{"model_path": "/models/qwen2.5-14b"}'``.
Topology one_process: rank 0 builds one TurboMind over every GPU of its host (tensor parallel = the
number of local ranks, or "tp"); the other ranks only observe their GPU.

Per sample: its own TurboMind instance and session, driven by ``async_stream_infer`` on an asyncio loop
in a worker thread; 1-D INT32 ``input_ids`` (a list of ints), ``max_new_tokens``, greedy (top_k 1),
exact length by ``ignore_eos`` with no stop ids (TurboMind then stops by length only). Every new token
of an output is one on_token call, even when one output carries several (TurboMind coalesces when the
consumer lags); ``stats()`` says how many outputs carried more than one (ranks[0].engine_stats).

What the first runs on 0.18.0 showed, and the driver now does:
- ``min_new_tokens`` must not be set without end ids: TurboMind's min-length penalty indexes the
  request's end ids and with none aborts the whole process (std::out_of_range in
  invokeMinLengthPenalty). Exact length needs no min_new_tokens: with ``ignore_eos`` 0.18 has no stop ids.
- TurboMind's constructor builds lmdeploy's Tokenizer from the checkpoint; a checkpoint without
  tokenizer files (``tpprof write-checkpoint``) gets a stand-in that fails loudly if ever used
  (token ids in, token ids out: it is not).
- Each stream is read to its end: leaving ``async_stream_infer`` after the FINISH output closes the
  generator, and lmdeploy 0.18 then cancels the request it has just finished.
- TurboMind warms itself up at construction (prefills of 8 .. 9 216 tokens) but not for the measured
  shape: tpprof's warm-up runs (the default ``--warmup auto``, or ``--warmup N``) do that.

Output semantics differ by version (checked in the lmdeploy source): up to 0.10.1 ``token_ids`` holds
every token so far, from 0.10.2 only the new ones; 0.7 .. 0.10.x also give ``num_token`` (tokens so
far), which is used when present; without it (0.18) the output is taken as new tokens only.

Options (``--engine-options``):
  model_path            HF checkpoint or converted TurboMind workspace (required)
  tp                    tensor parallel degree (default: the local ranks' GPUs on rank 0)
  session_len           default: lmdeploy's (the model's)
  cache_max_entry_count KV cache: fraction of free GPU memory (default lmdeploy's 0.8)
  dtype                 "auto" | "float16" | "bfloat16" (only where TurbomindEngineConfig has it)
  eos_id                the model's end id; needed without exact length (--allow-eos)
  response_timeout_s    no output for a sample for this long is an error (default 600)
  vocab_size            random prompt ids are drawn below it (default: the model's, as TurboMind reads it)
"""

import asyncio
import contextlib
import dataclasses
import os
import threading

_KNOWN = {"model_path", "tp", "session_len", "cache_max_entry_count", "dtype", "eos_id", "response_timeout_s",
          "vocab_size", "python"}


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "qwen.tiktoken")


def _has_tokenizer(model_path):
    """Whether the checkpoint (or a TurboMind workspace's triton_models/tokenizer) has tokenizer files."""
    for d in (model_path, os.path.join(model_path, "triton_models", "tokenizer")):
        if any(os.path.exists(os.path.join(d, f)) for f in _TOKENIZER_FILES):
            return True
    return not os.path.isdir(model_path)  # a hub id: lmdeploy fetches the tokenizer with the weights


def _loaded_libraries(prefixes):
    """The shared libraries of these names this process has mapped (which cuBLAS / CUDA runtime /
    NCCL TurboMind really runs with: a stand-in or the real one), by /proc/self/maps; [] elsewhere."""
    found = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split(None, 5)[-1].strip() if line.count(" ") >= 5 else ""
                if path.startswith("/") and os.path.basename(path).startswith(prefixes):
                    real = os.path.realpath(path)
                    item = path if real == path else "%s -> %s" % (path, real)
                    if item not in found:
                        found.append(item)
    except OSError:
        pass
    return found


class _NoTokenizer:
    """Stands in for lmdeploy's Tokenizer when the checkpoint has none (e.g. `tpprof write-checkpoint`):
    TurboMind builds one in its constructor, but on this path (token ids in, token ids out) nothing
    calls it."""

    def __init__(self, model_path, *args, **kwargs):
        self.model_path = model_path

    def __getattr__(self, name):
        raise RuntimeError("the checkpoint %s has no tokenizer files; tpprof feeds token ids and never detokenizes "
                           "(TurboMind tried to use tokenizer.%s)" % (self.model_path, name))


@contextlib.contextmanager
def _no_tokenizer_if(needed):
    """While TurboMind is built: the stand-in tokenizer, when the checkpoint has none."""
    if not needed:
        yield
        return
    import lmdeploy.turbomind.turbomind as tm_mod

    if not hasattr(tm_mod, "Tokenizer"):
        yield  # another version: it builds no tokenizer there, or fails with its own message
        return
    orig = tm_mod.Tokenizer
    tm_mod.Tokenizer = _NoTokenizer
    try:
        yield
    finally:
        tm_mod.Tokenizer = orig


class Driver:
    def __init__(self, init):
        o = dict(init.get("options") or {})
        unknown = sorted(set(o) - _KNOWN)
        if unknown:
            raise ValueError("unknown engine option(s) %s: this driver knows %s" % (unknown, sorted(_KNOWN)))
        if not o.get("model_path"):
            raise ValueError('engine option "model_path" is required (an HF checkpoint or a TurboMind workspace)')
        self.o = o
        self.rank = int(init["rank"])
        self.timeout = float(o.get("response_timeout_s", 600))
        self.eos_id = o.get("eos_id")
        self.tm = None
        self.version = None
        self._session = 1
        self._last = None
        self.stand_in_tokenizer = False
        if self.rank != 0:
            return  # one_process: the other ranks observe their GPU
        import lmdeploy
        from lmdeploy.messages import TurbomindEngineConfig
        from lmdeploy.turbomind import TurboMind

        self.version = getattr(lmdeploy, "__version__", "unknown")
        devices = list(init.get("devices") or [])
        tp = int(o.get("tp", max(1, len(devices))))
        if devices and len(devices) < tp:
            raise ValueError("tp=%d but rank 0 sees %d GPU(s) of its host: run one rank per GPU (mpirun -n %d)"
                             % (tp, len(devices), tp))
        fields = {f.name for f in dataclasses.fields(TurbomindEngineConfig)}
        cfg = {"tp": tp}
        for key in ("session_len", "cache_max_entry_count", "dtype"):
            if key in o:
                if key not in fields:
                    raise ValueError("lmdeploy %s's TurbomindEngineConfig has no %r" % (self.version, key))
                cfg[key] = o[key]
        if "enable_prefix_caching" in fields:
            cfg["enable_prefix_caching"] = False  # repeated prompts must not fake a fast TTFT
        self.stand_in_tokenizer = not _has_tokenizer(o["model_path"])
        with _no_tokenizer_if(self.stand_in_tokenizer):
            self.tm = TurboMind.from_pretrained(o["model_path"], engine_config=TurbomindEngineConfig(**cfg))

    def info(self):
        d = {"name": "lmdeploy-turbomind", "version": str(self.version),
             "verified": "run on lmdeploy 0.18.0 (H200); 0.7 .. 0.16 from source only"}
        if "vocab_size" in self.o:
            d["vocab_size"] = int(self.o["vocab_size"])
        elif getattr(self.tm, "_vocab_size", None):
            d["vocab_size"] = int(self.tm._vocab_size)  # the model's (padded) embedding rows
        if self.tm is not None:
            d["tokenizer"] = "stand-in (the checkpoint has none)" if self.stand_in_tokenizer else "the checkpoint's"
            d["libraries"] = _loaded_libraries(("libcublas", "libcudart", "libnccl"))
        return d

    def topology(self):
        return "one_process"

    def _gen_config(self, max_new_tokens, exact_length):
        from lmdeploy.messages import GenerationConfig

        if exact_length:
            # ignore_eos and no stop ids: TurboMind then stops by length only. No min_new_tokens:
            # its min-length penalty indexes the request's end ids, and with none TurboMind 0.18
            # aborts the process (std::out_of_range in invokeMinLengthPenalty, seen on the H200).
            return GenerationConfig(max_new_tokens=max_new_tokens, top_k=1, ignore_eos=True, stop_token_ids=None)
        if self.eos_id is None:
            raise ValueError('without exact length this driver needs the model\'s end id: pass "eos_id"')
        return GenerationConfig(max_new_tokens=max_new_tokens, top_k=1, ignore_eos=False,
                                stop_token_ids=[int(self.eos_id)])

    def generate(self, prompts, max_new_tokens, exact_length, on_token):
        if self.tm is None:
            raise RuntimeError("generate() runs on rank 0 only (one_process topology)")
        gen = self._gen_config(int(max_new_tokens), bool(exact_length))
        errors = []
        # Outputs and the tokens each carried, over this generate(): TurboMind hands over whatever
        # it generated since the consumer last looked, so one output may carry several tokens, whose
        # on_token calls then come back to back (their gaps are not the engine's).
        per_output = {}

        async def one(sample, ids):
            from lmdeploy.messages import ResponseType

            inst = self.tm.create_instance()
            session = self._session + sample
            seen = 0
            finished = False
            stream = inst.async_stream_infer(session, [int(t) for t in ids], gen_config=gen, stream_output=True,
                                             sequence_start=True, sequence_end=True, step=0)
            it = stream.__aiter__()
            while not finished:
                try:
                    out = await asyncio.wait_for(it.__anext__(), self.timeout)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    raise RuntimeError("sample %d: no output from TurboMind for %g s (raise response_timeout_s if it is "
                                       "only slow)" % (sample, self.timeout))
                if out.status not in (ResponseType.SUCCESS, ResponseType.FINISH):
                    raise RuntimeError("sample %d: TurboMind returned %s" % (sample, out.status))
                finished = out.status == ResponseType.FINISH
                toks = list(out.token_ids or [])
                n_new = 0
                total = getattr(out, "num_token", None)
                if total is not None:
                    k = int(total) - seen
                    new = toks[len(toks) - k:] if k > 0 else []
                else:
                    new = toks
                for i, tok in enumerate(new):
                    step = seen
                    seen += 1
                    if seen > max_new_tokens:
                        raise RuntimeError("sample %d: TurboMind returned more than max_new_tokens=%d tokens"
                                           % (sample, max_new_tokens))
                    reason = 0
                    if seen == max_new_tokens:
                        reason = 1
                    elif finished and i == len(new) - 1:
                        reason = 2 if (self.eos_id is not None and int(tok) == int(self.eos_id)) else 3
                    on_token(sample, step, int(tok), reason)
                    n_new += 1
                if n_new:
                    per_output[n_new] = per_output.get(n_new, 0) + 1
            # Let the stream end by itself: closing it early (GeneratorExit) makes lmdeploy 0.18
            # cancel the request it has just finished.
            while True:
                try:
                    await asyncio.wait_for(it.__anext__(), self.timeout)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    raise RuntimeError("sample %d: TurboMind's stream did not end %g s after its last token"
                                       % (sample, self.timeout))

        async def all_samples():
            await asyncio.gather(*(one(s, p) for s, p in enumerate(prompts)))

        def run():
            try:
                asyncio.run(all_samples())
            except BaseException as e:  # re-raised on the calling thread
                errors.append(e)

        t = threading.Thread(target=run, name="tpprof-lmdeploy")
        t.start()
        t.join()
        self._session += len(prompts)
        self._last = per_output
        if errors:
            raise errors[0]

    def stats(self):
        """The last generate()'s outputs by tokens carried (ranks[].engine_stats in the JSON)."""
        if self.tm is None or self._last is None:
            return None
        outputs = sum(self._last.values())
        tokens = sum(k * v for k, v in self._last.items())
        return {"stream_outputs": outputs, "stream_tokens": tokens,
                "outputs_with_several_tokens": sum(v for k, v in self._last.items() if k > 1),
                "max_tokens_per_output": max(self._last) if self._last else 0,
                "outputs_by_tokens": {str(k): v for k, v in sorted(self._last.items())}}

    def memory(self):
        return {}  # TurboMind reports none itself; tpprof's observers measure the GPUs

    def close(self):
        if self.tm is not None and hasattr(self.tm, "close"):
            self.tm.close()
        self.tm = None
