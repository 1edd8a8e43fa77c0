"""tpprof driver for Hugging Face transformers: ``--engine python:hf``.

Every rank (ALL_RANKS topology) loads its tensor-parallel shard of the model, runs the same greedy
``model.generate()`` on the prompts tpprof broadcast, and reports every token through ``on_token``
from a ``BaseStreamer`` as soon as the token is on the host.

Options (``--engine-options`` JSON; an unknown key is an error, so a typo cannot pass silently):
  model_dir   local Hugging Face checkpoint directory (config.json + safetensors); loaded with
              transformers' own tensor parallelism (``tp_plan="auto"``) when world_size > 1
  preset      instead of model_dir: qwen2.5-0.5b | qwen2.5-1.5b | qwen2.5-7b | qwen2.5-14b |
              qwen2.5-32b (the real Qwen2.5 shapes), tiny | small (tpprof's synthetic shapes, for CPU
              tests): random weights, sharded by this driver (see below)
  config      dict of Qwen2Config fields that override the preset's (e.g. {"num_hidden_layers": 2})
  device      "cuda" (default: this rank's GPU, init["devices"][0]; an error where torch sees no
              GPU, never a silent CPU run), a CUDA ordinal (int or "cuda:N"), or "cpu" (gloo instead
              of nccl, default dtype fp32; for tests and machines without a GPU)
  dtype       bf16 (default on CUDA) | fp16 | fp32 (default on CPU)
  seed        int, default 0 (random weights of a preset: the same on every rank)
  attn_implementation   passed to transformers (e.g. "sdpa", "eager", "flash_attention_2")
  warmup      true (default): prepare() runs a 2-token generate on the real prompts so CUDA/cuBLAS/
              NCCL start-up is not in the measured run
  threads     CPU only: torch intra-op threads (default: this process's CPUs / local ranks)
  timeout_s   torch.distributed timeout (rendezvous and collectives), default 600
  python      (read by tpprof) the interpreter whose libpython and site-packages to use

Tensor parallelism: torch.distributed is initialised here with backend nccl (gloo on CPU),
``init_method=f"tcp://{init['rendezvous']}"`` (127.0.0.1 when all ranks are on one host), rank and
world size from tpprof (one process per GPU); RANK, WORLD_SIZE, LOCAL_RANK (= the CUDA ordinal this
rank uses, which transformers binds to), MASTER_ADDR/PORT are set for libraries that read them.
  * model_dir: transformers' own ``tp_plan="auto"`` (the model's ``base_model_tp_plan``).
  * preset: ``from_config`` builds the model on the meta device, the driver shards it
    Megatron-style on plain tensors: q/k/v (weights and
    biases), gate, up by output rows (heads and intermediate split contiguously), o_proj and
    down_proj by input columns followed by ``torch.distributed.all_reduce`` of their output (a
    forward hook), an untied lm_head by vocabulary rows followed by an ``all_gather`` of the logits;
    the embedding, norms (and a tied lm_head) stay replicated. Same scheme and collectives as
    transformers' colwise/rowwise plan, without DTensor. The model is built on the meta device and
    only the shard is allocated: a rank's load peak is its shard plus one full-size tensor (each
    tensor is drawn whole from its own seeded generator and sliced, so every TP degree gets the
    same model).

Memory (``memory()``): weights_bytes = bytes of this rank's parameters and buffers; kv_cache_bytes =
the K/V tensors the dynamic cache holds at the end of generate(), computed from the shapes
(2 * layers * local KV heads * head_dim * (longest prompt + generated - 1) * batch * element size);
on CUDA workspace_bytes = ``torch.cuda.max_memory_allocated()`` during generate() minus weights and
KV cache (activations, logits, the cache's transient copies at their peak). Extra keys:
torch_max_allocated_bytes (peak during generate()), torch_load_max_allocated_bytes (peak before it:
loading, sharding, warm-up), torch_reserved_bytes, torch_max_reserved_bytes. They differ from
tpprof's NVML per-process figure on purpose: NVML also sees the CUDA context, cuBLAS/NCCL
workspaces and the allocator's cached but unused blocks.

Exact length: ``min_new_tokens = max_new_tokens`` (EOS suppressed until then), ``do_sample=False``,
``num_beams=1``; after generate() the driver checks that every sample got max_new_tokens tokens.
With ``exact_length`` false a sample that produces EOS reports finish=2 and nothing after it. The
streamer's first put() is the prompt (2-D) and is skipped; every later put() carries one token per
sample (batch > 1 works: BaseStreamer has no batch limit, only TextStreamer has).
"""

import os
import queue
import sys
import threading

# Real shapes of the Qwen2.5 -Instruct config.json files (same as `tpprof models`).
QWEN2_PRESETS = {
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    "qwen2.5-14b": dict(vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                        num_attention_heads=40, num_key_value_heads=8, tie_word_embeddings=False),
    "qwen2.5-32b": dict(vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                        num_attention_heads=40, num_key_value_heads=8, tie_word_embeddings=False),
    # Synthetic, as tpprof's `tiny`/`small` (`tpprof models`): token 0 is BOS and EOS.
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=4, tie_word_embeddings=True, max_position_embeddings=2048, rope_theta=10000.0,
                 bos_token_id=0, eos_token_id=0),
    "small": dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, tie_word_embeddings=True, max_position_embeddings=8192, bos_token_id=0,
                  eos_token_id=0),
}
QWEN2_COMMON = dict(max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu",
                    use_sliding_window=False, sliding_window=32768, max_window_layers=70, bos_token_id=151643,
                    eos_token_id=151645, initializer_range=0.02, attention_dropout=0.0, use_cache=True)
OPTIONS = ("model_dir", "preset", "config", "device", "dtype", "seed", "attn_implementation", "warmup",
           "threads", "timeout_s", "python")


def _dtype(torch, name):
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "half": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    try:
        return table[str(name).lower()]
    except KeyError:
        raise ValueError("dtype %r: use bf16, fp16 or fp32" % (name,)) from None


def _version_tuple(v):
    out = []
    for part in str(v).split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _check_options(o, world):
    """Everything that can be checked without torch, identically on every rank, before any collective."""
    unknown = sorted(k for k in o if k not in OPTIONS)
    if unknown:
        raise ValueError("unknown option(s) %s: the hf driver takes %s" % (", ".join(unknown), ", ".join(OPTIONS)))
    model_dir, preset = o.get("model_dir"), o.get("preset")
    if bool(model_dir) == bool(preset):
        raise ValueError("the hf driver needs exactly one of model_dir (a local checkpoint) or preset (%s)"
                         % ", ".join(QWEN2_PRESETS))
    if model_dir:
        if not os.path.isfile(os.path.join(str(model_dir), "config.json")):
            raise ValueError("model_dir %r: no config.json there (a local Hugging Face checkpoint directory)"
                             % (model_dir,))
        if "config" in o:
            raise ValueError("option config overrides a preset's shape: it does not apply to model_dir")
    else:
        if preset not in QWEN2_PRESETS:
            raise ValueError("unknown preset %r: use one of %s, or model_dir" % (preset, ", ".join(QWEN2_PRESETS)))
        if not isinstance(o.get("config", {}), dict):
            raise ValueError("option config must be a JSON object of Qwen2Config fields")
        shape = dict(QWEN2_PRESETS[preset], **o.get("config", {}))
        heads, kv = int(shape["num_attention_heads"]), int(shape["num_key_value_heads"])
        inter = int(shape["intermediate_size"])
        if heads % world or kv % world or inter % world:
            raise ValueError("%s has %d heads / %d KV heads / intermediate %d: not all divisible by world size %d"
                             % (preset, heads, kv, inter, world))


class _TorchThread:
    """One daemon thread that makes every torch call of the driver.

    Why: libtorch_python keeps thread_local caches that hold Python objects (torch 2.11: DTensor's
    sharding-propagation cache, ``unordered_map<NativeOpSchema, py::object>``) and frees them in
    the thread's TLS destructor without the GIL. tpprof's main thread exits the process without
    finalising Python, so a cache filled on that thread aborts the process at exit ("Fatal Python
    error: PyThreadState_Get ...", exit 134) after the report is written. Seen with transformers'
    tp_plan (DTensor) on CPU. exit() runs only the exiting thread's TLS destructors, so caches
    filled on this parked daemon thread are never destroyed. CUDA's current device is per thread,
    so the device is bound on this thread too. on_token is called from here (allowed: the
    timestamp is still taken on entry into the native callable).
    """

    def __init__(self):
        self.jobs = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="tpprof-hf-torch", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            fn, args, box, done = self.jobs.get()
            try:
                box.append((True, fn(*args)))
            except BaseException as e:  # handed to the caller, raised there
                box.append((False, e))
            done.set()

    def call(self, fn, *args):
        box, done = [], threading.Event()
        self.jobs.put((fn, args, box, done))
        done.wait()
        ok, value = box[0]
        if ok:
            return value
        raise value


class Driver:
    def __init__(self, init):
        self.worker = _TorchThread()
        self.worker.call(self._init, init)

    def _init(self, init):
        o = dict(init.get("options") or {})
        self.options = o
        self.rank = int(init.get("rank", 0))
        self.world = int(init.get("world_size", 1))
        self.local_rank = int(init.get("local_rank", 0))
        self.local_world = int(init.get("local_world_size", 1))
        _check_options(o, self.world)

        import torch
        import transformers

        self.torch = torch
        self.tf_version = _version_tuple(transformers.__version__)
        self.model = None
        self.kv_bytes = None
        self.load_peak = None
        self.group = None
        self.shard_of = {}  # parameter name -> (dim, start, length) of this rank's slice
        devices = [int(d) for d in (init.get("devices") or [])]

        # Device: this rank's GPU (tpprof's devices[0], a CUDA ordinal), or the CPU.
        # CUDA unless the CPU is asked for: a GPU run must never fall back to the CPU silently.
        dev = o.get("device", "cuda")
        if isinstance(dev, bool):
            raise ValueError("device %r: use \"cuda\", a CUDA ordinal or \"cpu\"" % (dev,))
        dev = str(dev).strip().lower()
        if dev == "cpu":
            self.device = torch.device("cpu")
            self.dtype = _dtype(torch, o.get("dtype", "fp32"))
            threads = int(o.get("threads", 0)) or max(1, len(os.sched_getaffinity(0)) // max(1, self.local_world))
            torch.set_num_threads(threads)
        else:
            if dev == "cuda":
                index = devices[0] if devices else self.local_rank
            elif dev.startswith("cuda:") and dev[5:].isdigit():
                index = int(dev[5:])
            elif dev.isdigit():
                index = int(dev)
            else:
                raise ValueError("device %r: use \"cuda\", a CUDA ordinal or \"cpu\"" % (o["device"],))
            if not torch.cuda.is_available():
                raise RuntimeError("device %s: torch.cuda.is_available() is False on rank %d (torch %s; "
                                   "CUDA_VISIBLE_DEVICES=%r); use \"device\": \"cpu\" for a CPU run"
                                   % (dev, self.rank, torch.__version__, os.environ.get("CUDA_VISIBLE_DEVICES")))
            if index >= torch.cuda.device_count():
                raise RuntimeError("CUDA ordinal %d on rank %d, but torch sees %d GPU(s)"
                                   % (index, self.rank, torch.cuda.device_count()))
            torch.cuda.set_device(index)
            self.device = torch.device("cuda", index)
            self.dtype = _dtype(torch, o.get("dtype", "bf16"))

        # The usual variables, for libraries that read them (transformers' TP binds the GPU
        # LOCAL_RANK names: make it the ordinal chosen above).
        rendezvous = str(init.get("rendezvous") or "")
        if self.world > 1 and self.local_world == self.world and ":" in rendezvous:
            # Every rank on this host: loopback, whatever the hostname resolves to.
            rendezvous = "127.0.0.1:" + rendezvous.rsplit(":", 1)[1]
        os.environ["RANK"] = str(self.rank)
        os.environ["WORLD_SIZE"] = str(self.world)
        os.environ["LOCAL_RANK"] = str(self.device.index if self.device.type == "cuda" else self.local_rank)
        os.environ["LOCAL_WORLD_SIZE"] = str(self.local_world)
        if ":" in rendezvous:
            host, port = rendezvous.rsplit(":", 1)
            os.environ["MASTER_ADDR"] = host
            os.environ["MASTER_PORT"] = port

        import torch.distributed as dist
        self.dist = dist
        if self.world > 1:
            if dist.is_initialized():
                if dist.get_world_size() != self.world or dist.get_rank() != self.rank:
                    raise RuntimeError("torch.distributed is already initialised with rank %d of %d, tpprof says %d of %d"
                                       % (dist.get_rank(), dist.get_world_size(), self.rank, self.world))
            else:
                if not rendezvous:
                    raise RuntimeError("world_size %d needs tpprof's rendezvous host:port (init['rendezvous'] is empty)"
                                       % self.world)
                from datetime import timedelta
                kwargs = dict(backend="nccl" if self.device.type == "cuda" else "gloo",
                              init_method="tcp://" + rendezvous, rank=self.rank, world_size=self.world,
                              timeout=timedelta(seconds=float(o.get("timeout_s", 600))))
                if self.device.type == "cuda":
                    # Bound communicator: NCCL is set up here (errors surface at create, not in
                    # the first forward) on this rank's GPU, whatever the current device is.
                    kwargs["device_id"] = self.device
                dist.init_process_group(**kwargs)

        from transformers import AutoModelForCausalLM
        extra = {}
        if o.get("attn_implementation"):
            extra["attn_implementation"] = o["attn_implementation"]
        # transformers 4.56 renamed torch_dtype to dtype (5.x warns on torch_dtype).
        dtype_kw = "dtype" if self.tf_version >= (4, 56) else "torch_dtype"
        extra[dtype_kw] = self.dtype
        if o.get("model_dir"):
            model_dir = str(o["model_dir"])
            if self.world > 1:
                self.model = AutoModelForCausalLM.from_pretrained(model_dir, tp_plan="auto", **extra)
            else:
                self.model = AutoModelForCausalLM.from_pretrained(model_dir, **extra).to(self.device)
            self.model_name = model_dir
            self.tp = "transformers tp_plan=auto" if self.world > 1 else None
        else:
            preset = o["preset"]
            fields = dict(QWEN2_COMMON, **QWEN2_PRESETS[preset])
            known = set(vars(transformers.Qwen2Config())) | {"head_dim", "rope_theta", "rope_scaling"}
            unknown = sorted(k for k in o.get("config", {}) if k not in known)
            if unknown:
                raise ValueError("option config: %s not Qwen2Config field(s) of transformers %s"
                                 % (", ".join(unknown), transformers.__version__))
            fields.update(o.get("config", {}))
            cfg = transformers.Qwen2Config(**fields)
            # The structure on the meta device (no memory), sharded there, then only this rank's
            # shard is allocated and filled (see _materialise_preset): no rank ever holds the
            # whole model, as with a sharded checkpoint load.
            with torch.device("meta"):
                self.model = AutoModelForCausalLM.from_config(cfg, **extra)
            self._materialise_preset(int(o.get("seed", 0)))
            self.model_name = preset
            self.tp = "driver (plain tensors, all_reduce/all_gather hooks)" if self.world > 1 else None
        self.model.eval()
        self.config = self.model.config
        gc = self.model.generation_config
        eos = gc.eos_token_id if gc.eos_token_id is not None else self.config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []))
        self.pad_id = gc.pad_token_id if gc.pad_token_id is not None else (min(self.eos_ids) if self.eos_ids else 0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def _materialise_preset(self, seed):
        """Random weights for a preset built on the meta device, only this rank's shard allocated.

        Every parameter gets a full-size tensor drawn from its own seeded generator (seed and the
        parameter's index in the unsharded model), of which this rank keeps its slice: the model is
        the same at every tensor-parallel degree (TP=2 tokens equal TP=1 tokens), while a rank's
        peak during load is its shard plus one full tensor. Values as transformers' Qwen2
        initialisation: linear and embedding weights N(0, initializer_range), biases 0, norms 1.
        """
        torch, model = self.torch, self.model
        cfg = model.config
        std = float(getattr(cfg, "initializer_range", 0.02))
        tie = bool(getattr(cfg, "tie_word_embeddings", False))
        if tie:
            # Some transformers versions tie only later (post_init / load): tie before sharding
            # decides whether the LM head is shared with the embedding.
            model.tie_weights()
        full = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
        if self.world > 1:
            self._shard_preset()
        shards = dict(self.shard_of)
        model.to_empty(device=self.device)
        if tie:
            model.tie_weights()
        params = dict(model.named_parameters())
        with torch.no_grad():
            for idx, (name, shape) in enumerate(full):
                p = params[name]
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                    continue
                if name.endswith(".bias"):
                    p.zero_()
                    continue
                g = torch.Generator(device=self.device)
                g.manual_seed(seed * 1000003 + idx)
                t = torch.empty(shape, dtype=torch.float32, device=self.device).normal_(0.0, std, generator=g)
                dim, start, n = shards.get(name, (None, 0, 0))
                if dim is not None:
                    t = t.narrow(dim, start, n)
                p.copy_(t.to(p.dtype))
                del t
            # Buffers (RoPE's inv_freq) were left uninitialised by to_empty: rebuild them.
            for mod_name, mod in list(model.named_modules()):
                if type(mod).__name__.endswith("RotaryEmbedding"):
                    with torch.device(self.device):
                        fresh = type(mod)(config=cfg)
                    parent = model.get_submodule(mod_name.rsplit(".", 1)[0]) if "." in mod_name else model
                    setattr(parent, mod_name.rsplit(".", 1)[-1], fresh)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def _shard_preset(self):
        """Megatron-style tensor parallelism of a Qwen2 from_config model on plain tensors (on the
        meta device: the shapes change, _materialise_preset fills the shards)."""
        torch, dist, w, r = self.torch, self.dist, self.world, self.rank
        model = self.model
        cfg = model.config
        names = {id(p): name for name, p in model.named_parameters()}

        def rows(linear, parts):
            n = linear.weight.shape[0] // parts
            self.shard_of[names[id(linear.weight)]] = (0, r * n, n)
            linear.weight = torch.nn.Parameter(linear.weight.data[r * n:(r + 1) * n].clone(), requires_grad=False)
            if linear.bias is not None:
                self.shard_of[names[id(linear.bias)]] = (0, r * n, n)
                linear.bias = torch.nn.Parameter(linear.bias.data[r * n:(r + 1) * n].clone(), requires_grad=False)
            linear.out_features = n

        def cols(linear, parts):
            n = linear.weight.shape[1] // parts
            self.shard_of[names[id(linear.weight)]] = (1, r * n, n)
            linear.weight = torch.nn.Parameter(linear.weight.data[:, r * n:(r + 1) * n].clone(), requires_grad=False)
            linear.in_features = n
            # A bias would be added on every rank before the sum: Qwen2's o_proj/down_proj have none.
            if linear.bias is not None:
                raise RuntimeError("row-parallel layer with a bias: not supported by the preset sharding")

        def all_reduce(_module, _inputs, output):
            dist.all_reduce(output, group=self.group)
            return output

        def gather_vocab(_module, _inputs, output):
            parts = [torch.empty_like(output) for _ in range(w)]
            dist.all_gather(parts, output.contiguous(), group=self.group)
            return torch.cat(parts, dim=-1)

        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
                rows(lin, w)
            cols(attn.o_proj, w)
            attn.o_proj.register_forward_hook(all_reduce)
            rows(mlp.gate_proj, w)
            rows(mlp.up_proj, w)
            cols(mlp.down_proj, w)
            mlp.down_proj.register_forward_hook(all_reduce)
            # transformers < 4.48 reshapes with the module's head counts: make them the local ones
            # (later versions reshape with -1 and head_dim; num_key_value_groups is unchanged).
            for attr in ("num_heads", "num_key_value_heads", "hidden_size"):
                if isinstance(getattr(attn, attr, None), int):
                    setattr(attn, attr, getattr(attn, attr) // w)
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size //= w
        lm_head = model.get_output_embeddings()
        tied = lm_head.weight is model.get_input_embeddings().weight
        if not tied and cfg.vocab_size % w == 0:
            rows(lm_head, w)
            lm_head.register_forward_hook(gather_vocab)
        self.lm_head_sharded = not tied and cfg.vocab_size % w == 0

    def info(self):
        import transformers
        return {
            "name": "hf-transformers",
            "version": transformers.__version__,
            "torch": self.torch.__version__,
            "model": self.model_name,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "tensor_parallel": self.world,
            "tp_implementation": self.tp,
            "attn_implementation": getattr(self.config, "_attn_implementation", None),
            "vocab_size": int(self.config.vocab_size),
            "max_context": int(getattr(self.config, "max_position_embeddings", 0) or 0) or None,
        }

    def topology(self):
        return "all_ranks"

    def _inputs(self, prompts):
        torch = self.torch
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding for decoder-only generation
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _generate(self, prompts, max_new_tokens, exact_length, streamer):
        ids, mask = self._inputs(prompts)
        kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                      num_beams=1, pad_token_id=self.pad_id, use_cache=True, streamer=streamer,
                      temperature=None, top_p=None, top_k=None)
        if exact_length:
            kwargs["min_new_tokens"] = max_new_tokens
        with self.torch.inference_mode():
            self.model.generate(**kwargs)

    def _prepare(self, prompts, max_new_tokens):
        if self.options.get("warmup", True):
            self._generate(prompts, min(2, max_new_tokens), True, None)
            if self.device.type == "cuda":
                self.torch.cuda.synchronize(self.device)

    def _generate_streamed(self, prompts, max_new_tokens, exact_length, on_token):
        from transformers.generation.streamers import BaseStreamer

        torch = self.torch
        eos_ids = self.eos_ids
        n = len(prompts)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.load_peak = torch.cuda.max_memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

        class TokenStreamer(BaseStreamer):
            """put(value): first the prompt (2-D, skipped), then one token per sample (1-D)."""

            def __init__(self):
                self.prompt_seen = False
                self.step = 0
                self.done = [False] * n
                self.count = [0] * n

            def put(self, value):
                if not self.prompt_seen and value.dim() > 1:
                    self.prompt_seen = True
                    return
                tokens = value.reshape(-1).tolist()  # to the host: the token is known here
                if len(tokens) != n:
                    raise RuntimeError("streamer got %d tokens for %d samples at step %d" % (len(tokens), n, self.step))
                step = self.step
                for s, tok in enumerate(tokens):
                    if self.done[s]:
                        continue
                    finish = 0
                    if step == max_new_tokens - 1:
                        finish = 1
                    elif not exact_length and tok in eos_ids:
                        finish = 2
                    on_token(s, step, int(tok), finish)
                    self.count[s] += 1
                    if finish:
                        self.done[s] = True
                self.step += 1

            def end(self):
                pass

        streamer = TokenStreamer()
        self._generate(prompts, max_new_tokens, exact_length, streamer)
        short = [s for s in range(n) if not streamer.done[s]]
        if short:
            raise RuntimeError("generate() stopped early: sample %d got %d of %d tokens without EOS"
                               % (short[0], streamer.count[short[0]], max_new_tokens))
        # What the dynamic cache holds at the end: every position but the last token's.
        cfg = self.config
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads) // self.world
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        positions = max(len(p) for p in prompts) + streamer.step - 1
        elem = torch.tensor([], dtype=self.dtype).element_size()
        self.kv_bytes = 2 * int(cfg.num_hidden_layers) * kv_heads * head_dim * positions * n * elem

    def _memory(self):
        torch = self.torch
        weights = 0
        for t in list(self.model.parameters()) + list(self.model.buffers()):
            local = t.to_local() if hasattr(t, "to_local") else t
            weights += local.numel() * local.element_size()
        out = {"weights_bytes": weights, "kv_cache_bytes": self.kv_bytes, "workspace_bytes": None}
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            out.update({
                "workspace_bytes": max(0, peak - weights - (self.kv_bytes or 0)),
                "torch_max_allocated_bytes": peak,
                "torch_load_max_allocated_bytes": self.load_peak,
                "torch_reserved_bytes": torch.cuda.memory_reserved(self.device),
                "torch_max_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
            })
            # tpprof keeps only the five standard keys: say the allocator's own figures here too.
            gib = float(1 << 30)
            print("hf driver rank %d (%s): torch.cuda.max_memory_allocated %.3f GiB during generate(), %.3f GiB "
                  "before it (load, shard, warm-up); memory_reserved %.3f GiB, max_memory_reserved %.3f GiB; "
                  "weights %.3f GiB, KV cache %.3f GiB"
                  % (self.rank, self.device, peak / gib, (self.load_peak or 0) / gib, out["torch_reserved_bytes"] / gib,
                     out["torch_max_reserved_bytes"] / gib, weights / gib, (self.kv_bytes or 0) / gib),
                  file=sys.stderr, flush=True)
        return out

    def _close(self):
        torch = self.torch
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            if self.dist.is_initialized():
                self.dist.destroy_process_group()
        except Exception:
            pass

    # The driver interface: every torch call runs on the driver's torch thread.
    def prepare(self, prompts, max_new_tokens):
        self.worker.call(self._prepare, prompts, max_new_tokens)

    def generate(self, prompts, max_new_tokens, exact_length, on_token):
        self.worker.call(self._generate_streamed, prompts, max_new_tokens, exact_length, on_token)

    def memory(self):
        return self.worker.call(self._memory)

    def close(self):
        self.worker.call(self._close)
