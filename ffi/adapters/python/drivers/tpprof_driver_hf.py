"""tpprof driver for Hugging Face transformers: ``--engine python:hf``.

Every rank (ALL_RANKS topology) loads its tensor-parallel shard of the model, runs the same greedy
``model.generate()`` on the prompts tpprof broadcast, and reports every token through ``on_token``
from a ``BaseStreamer`` as soon as the token is on the host.

Options (``--engine-options`` JSON):
  model_dir   local Hugging Face checkpoint directory (config.json + safetensors); loaded with
              ``from_pretrained(..., tp_plan="auto")`` when world_size > 1
  preset      instead of model_dir: qwen2.5-0.5b | qwen2.5-1.5b | qwen2.5-7b | qwen2.5-14b |
              qwen2.5-32b: a Qwen2 config with the real shapes and random weights (see below)
  dtype       bf16 (default) | fp16 | fp32
  seed        int, default 0 (random weights of a preset)
  attn_implementation   passed to transformers (e.g. "sdpa", "eager", "flash_attention_2")
  warmup      true (default): prepare() runs a 2-token generate so CUDA/cuBLAS/NCCL start-up is not
              in the measured run
  device      CUDA ordinal to use (default: init["devices"][0], the rank's GPU)
  python      (read by tpprof) the interpreter whose libpython and site-packages to use

Tensor parallelism: torch.distributed is initialised here with backend nccl,
``init_method=f"tcp://{init['rendezvous']}"``, rank and world size from tpprof (one process per GPU).
  * model_dir: transformers' own ``tp_plan="auto"`` (needs transformers >= 4.50 and torch >= 2.5).
  * preset: ``from_config`` builds the full model on this rank's GPU (``torch.set_default_device``)
    and the driver then shards it with ``torch.distributed.tensor.parallel.parallelize_module``
    following the model's ``base_model_tp_plan`` (q/k/v/gate/up colwise, o/down rowwise; lm_head
    colwise with replicated output unless tied to the embedding). LIMITATION: during loading each rank
    briefly holds the whole model (freed after sharding: the load-phase peak is the full model, the
    prefill/decode peaks are the shard); the embedding (and a tied lm_head) stay replicated.

Memory (``memory()``): the PyTorch caching allocator's view of this rank's GPU: weights_bytes = bytes
of this rank's parameters and buffers; workspace_bytes = ``torch.cuda.max_memory_allocated()`` minus
the weights (KV cache, activations, logits at their peak); kv_cache_bytes is not separated (the
dynamic cache grows inside that figure). Extra keys torch_max_allocated_bytes, torch_reserved_bytes,
torch_max_reserved_bytes give the raw allocator figures. They differ from tpprof's NVML per-process
figure on purpose: NVML also sees the CUDA context, cuBLAS/NCCL workspaces and the allocator's cached
but unused blocks.

Exact length: ``min_new_tokens = max_new_tokens`` (EOS suppressed until then), ``do_sample=False``.
With ``exact_length`` false a sample that produces EOS reports finish=2 and nothing after it.

Written without torch on the development machine: NOT run there (see README.md).
"""

import os

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
}
QWEN2_COMMON = dict(max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu",
                    use_sliding_window=False, sliding_window=32768, max_window_layers=70, bos_token_id=151643,
                    eos_token_id=151645, initializer_range=0.02, attention_dropout=0.0, use_cache=True)


def _dtype(torch, name):
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "half": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    try:
        return table[str(name).lower()]
    except KeyError:
        raise ValueError("dtype %r: use bf16, fp16 or fp32" % (name,)) from None


class Driver:
    def __init__(self, init):
        import torch
        import transformers

        self.torch = torch
        o = dict(init.get("options") or {})
        self.options = o
        self.rank = int(init.get("rank", 0))
        self.world = int(init.get("world_size", 1))
        devices = list(init.get("devices") or [])
        if not torch.cuda.is_available():
            raise RuntimeError("the hf driver needs CUDA: torch.cuda.is_available() is False on rank %d" % self.rank)
        index = int(o["device"]) if "device" in o else (devices[0] if devices else int(init.get("local_rank", 0)))
        torch.cuda.set_device(index)
        self.device = torch.device("cuda", index)
        self.dtype = _dtype(torch, o.get("dtype", "bf16"))

        # The usual variables, for libraries that read them (transformers' TP helpers do).
        os.environ.setdefault("RANK", str(self.rank))
        os.environ.setdefault("WORLD_SIZE", str(self.world))
        os.environ.setdefault("LOCAL_RANK", str(init.get("local_rank", 0)))
        os.environ.setdefault("LOCAL_WORLD_SIZE", str(init.get("local_world_size", 1)))
        rendezvous = str(init.get("rendezvous") or "")
        if ":" in rendezvous:
            host, port = rendezvous.rsplit(":", 1)
            os.environ.setdefault("MASTER_ADDR", host)
            os.environ.setdefault("MASTER_PORT", port)

        import torch.distributed as dist
        if self.world > 1 and not dist.is_initialized():
            if not rendezvous:
                raise RuntimeError("world_size %d needs tpprof's rendezvous host:port (init['rendezvous'] is empty)" % self.world)
            dist.init_process_group(backend="nccl", init_method="tcp://" + rendezvous, rank=self.rank,
                                    world_size=self.world)

        from transformers import AutoModelForCausalLM
        extra = {}
        if o.get("attn_implementation"):
            extra["attn_implementation"] = o["attn_implementation"]
        model_dir = o.get("model_dir")
        preset = o.get("preset")
        if model_dir:
            kwargs = dict(torch_dtype=self.dtype, **extra)
            if self.world > 1:
                kwargs["tp_plan"] = "auto"
            else:
                kwargs["device_map"] = self.device
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
            self.model_name = model_dir
        elif preset:
            if preset not in QWEN2_PRESETS:
                raise ValueError("unknown preset %r: use one of %s, or model_dir" % (preset, ", ".join(QWEN2_PRESETS)))
            cfg = transformers.Qwen2Config(**QWEN2_PRESETS[preset], **QWEN2_COMMON)
            if cfg.num_attention_heads % self.world or cfg.num_key_value_heads % self.world:
                raise ValueError("%s has %d heads / %d KV heads: not divisible by world size %d"
                                 % (preset, cfg.num_attention_heads, cfg.num_key_value_heads, self.world))
            torch.manual_seed(int(o.get("seed", 0)))
            previous = torch.get_default_device() if hasattr(torch, "get_default_device") else None
            torch.set_default_device(self.device)
            try:
                self.model = AutoModelForCausalLM.from_config(cfg, torch_dtype=self.dtype, **extra)
            finally:
                torch.set_default_device(previous)
            if self.world > 1:
                self._shard_from_config()
            self.model_name = preset
        else:
            raise ValueError("the hf driver needs options model_dir (a local checkpoint) or preset (%s)"
                             % ", ".join(QWEN2_PRESETS))
        self.model.eval()
        self.config = self.model.config
        gc = self.model.generation_config
        eos = gc.eos_token_id if gc.eos_token_id is not None else self.config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []))
        self.pad_id = gc.pad_token_id if gc.pad_token_id is not None else (min(self.eos_ids) if self.eos_ids else 0)
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()

    def _shard_from_config(self):
        """Tensor-parallel sharding of a from_config model with torch's parallelize_module."""
        torch = self.torch
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
        try:
            from torch.distributed.tensor import Replicate
        except ImportError:  # torch < 2.4
            from torch.distributed._tensor import Replicate

        mesh = init_device_mesh("cuda", (self.world,))
        model = self.model
        plan_src = dict(getattr(model.config, "base_model_tp_plan", None) or {
            "layers.*.self_attn.q_proj": "colwise", "layers.*.self_attn.k_proj": "colwise",
            "layers.*.self_attn.v_proj": "colwise", "layers.*.self_attn.o_proj": "rowwise",
            "layers.*.mlp.gate_proj": "colwise", "layers.*.mlp.up_proj": "colwise",
            "layers.*.mlp.down_proj": "rowwise",
        })
        styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
        base = model.base_model
        for i, layer in enumerate(base.layers):
            plan = {}
            for pattern, style in plan_src.items():
                prefix = "layers.*."
                if not pattern.startswith(prefix) or style not in styles:
                    continue
                plan[pattern[len(prefix):]] = styles[style]()
            parallelize_module(layer, mesh, plan)
            attn = layer.self_attn
            # Older transformers reshape with the module's head counts: make them the local ones.
            for attr in ("num_heads", "num_key_value_heads", "hidden_size"):
                if hasattr(attn, attr):
                    setattr(attn, attr, getattr(attn, attr) // self.world)
        if not model.config.tie_word_embeddings:
            parallelize_module(model, mesh, {"lm_head": ColwiseParallel(output_layouts=Replicate())})
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()

    def info(self):
        import transformers
        return {
            "name": "hf-transformers",
            "version": transformers.__version__,
            "torch": self.torch.__version__,
            "model": self.model_name,
            "dtype": str(self.dtype).replace("torch.", ""),
            "tensor_parallel": self.world,
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

    def prepare(self, prompts, max_new_tokens):
        if self.options.get("warmup", True):
            self._generate(prompts, min(2, max_new_tokens), True, None)
            self.torch.cuda.synchronize(self.device)

    def generate(self, prompts, max_new_tokens, exact_length, on_token):
        from transformers.generation.streamers import BaseStreamer

        eos_ids = self.eos_ids
        n = len(prompts)

        class TokenStreamer(BaseStreamer):
            """put(value): the first call carries the prompt (skipped), then one token per sample."""

            def __init__(self):
                self.prompt_seen = False
                self.step = 0
                self.done = [False] * n

            def put(self, value):
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                tokens = value.reshape(-1).tolist()  # to the host: the token is known here
                step = self.step
                for s, tok in enumerate(tokens[:n]):
                    if self.done[s]:
                        continue
                    finish = 0
                    if step == max_new_tokens - 1:
                        finish = 1
                    elif not exact_length and tok in eos_ids:
                        finish = 2
                    on_token(s, step, int(tok), finish)
                    if finish:
                        self.done[s] = True
                self.step += 1

            def end(self):
                pass

        self._generate(prompts, max_new_tokens, exact_length, TokenStreamer())

    def memory(self):
        torch = self.torch
        weights = 0
        for t in list(self.model.parameters()) + list(self.model.buffers()):
            local = t.to_local() if hasattr(t, "to_local") else t
            weights += local.numel() * local.element_size()
        peak = torch.cuda.max_memory_allocated(self.device)
        return {
            "weights_bytes": weights,
            "kv_cache_bytes": None,
            "workspace_bytes": max(0, peak - weights),
            "torch_max_allocated_bytes": peak,
            "torch_reserved_bytes": torch.cuda.memory_reserved(self.device),
            "torch_max_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
        }

    def close(self):
        torch = self.torch
        self.model = None
        torch.cuda.empty_cache()
        try:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:
            pass
