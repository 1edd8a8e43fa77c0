//! The built-in `cuda` engine: the cpu engine's Qwen2 decoder on NVIDIA GPUs, tensor parallel over
//! NCCL. Kernels in CUDA C (kernels/*.cu) compiled by NVRTC for the device at start-up, cuBLAS for
//! the GEMMs (fp16/bf16 inputs, f32 accumulation), the decode step captured once into a CUDA graph,
//! per-step CUDA events read after the run. Everything CUDA is loaded at run time, so the binary
//! builds and runs without CUDA; a missing library is a clear error, not a panic.

mod gpu;
mod kernel;
mod model;
mod types;

use std::time::Instant;

use serde_json::json;

use crate::engine::config::Config;
use gpu::{Gpu, Nccl};
use kernel::MODULES;
use model::{Buffers, DecodeAttention, Dims, GemvKernel, GemvOps, Model, PrefillAttention, Weights};
pub use types::{CudaError, Dtype, StepTimes, UnknownDtype, WeightInit};

/// Whether this build has the cuda engine (its stand-in, disabled.rs, says false).
pub const BUILT: bool = true;

pub use gpu::nccl_unique_id;

/// Maps an event time (ms after the first anchor) to CLOCK_MONOTONIC ns. `a0_ns`, `a1_ns`: host
/// times of the two anchor events, `span_ms`: the event time between them. Over a 10-s run an
/// H200's event timer and the host clock were seen to drift apart by ~100 µs (about 10 ppm) —
/// as much as the cross-rank skew being measured — so one anchor is not enough.
pub fn event_to_host_ns(a0_ns: u64, a1_ns: u64, span_ms: f64, t_ms: f64) -> u64 {
    let rate = if span_ms > 0.0 && a1_ns > a0_ns { (a1_ns - a0_ns) as f64 / (span_ms * 1e6) } else { 1.0 };
    (a0_ns as f64 + t_ms * 1e6 * rate).round().max(0.0) as u64
}

pub struct CudaEngine {
    cfg: Config,
    dtype: Dtype,
    dims: Dims,
    // Field order = drop order: graph and buffers before weights, NCCL, and the GPU itself.
    graph: Option<cudarc::driver::CudaGraph>,
    bufs: Option<Buffers>,
    weights: Weights,
    nccl: Nccl,
    gpu: Gpu,
    /// With `overlap`: two halves of `slots` token ids each, page-locked, that step n's tokens are
    /// copied into while step n + 1 runs. After `gpu`: dropped once the GPU's stream is synchronized
    /// (Gpu's Drop), so no copy can still be writing into it.
    pinned_tokens: Option<cudarc::driver::PinnedHostSlice<i32>>,
    sm_count: usize,
    copy_bandwidth: f64,
    steps: StepTimes,
    prepared: Option<(usize, usize, usize)>,
    use_graph: bool,
    /// Launch step n + 1 before reading step n's tokens (`TPPROF_CUDA_OVERLAP=1`).
    overlap: bool,
    gemv: GemvOps,
    gemv_kernel: GemvKernel,
    fuse: bool,
    attention: DecodeAttention,
    /// The prefill attention, resolved for this model's head_dim and this GPU.
    prefill: PrefillAttention,
    attn_blocks_per_sm: usize,
    attn_split: Option<usize>,
    /// Decode steps of the after-run breakdown (`TPPROF_CUDA_BREAKDOWN`, default 8; 0 = none).
    breakdown_steps: usize,
    last_run: Option<serde_json::Value>,
}

/// The bytes per second of a device-to-device copy (read + write traffic), best of three.
fn copy_bandwidth(gpu: &mut Gpu) -> Result<f64, CudaError> {
    let (free, _) = gpu.mem_info()?;
    let bytes = (free / 8).clamp(1 << 20, 1 << 30);
    let src = gpu.alloc::<u8>(bytes)?;
    let dst = gpu.alloc::<u8>(bytes)?;
    let (a, b) = (gpu.event()?, gpu.event()?);
    let mut best = f64::MAX;
    for _ in 0..4 {
        a.record(&gpu.stream).map_err(|e| CudaError::Driver(e.to_string()))?;
        gpu.copy(dst.view(), src.view(), bytes)?;
        b.record(&gpu.stream).map_err(|e| CudaError::Driver(e.to_string()))?;
        gpu.sync()?;
        let ms = a.elapsed_ms(&b).map_err(|e| CudaError::Driver(e.to_string()))? as f64;
        best = best.min(ms);
    }
    gpu.allocated -= src.bytes() + dst.bytes();
    Ok(2.0 * bytes as f64 / (best / 1e3))
}

impl CudaEngine {
    /// Opens GPU `ordinal`, joins the NCCL group with the id rank 0 created, and makes this rank's
    /// weight shard: generated on the device from `seed`, or read from a checkpoint.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &Config,
        dtype: Dtype,
        weights: WeightInit,
        ordinal: usize,
        rank: usize,
        world: usize,
        nccl_id: &[u8],
    ) -> Result<CudaEngine, CudaError> {
        cfg.check_tensor_parallel(world).map_err(|e| CudaError::Invalid(e.to_string()))?;
        if cfg.head_dim() % 2 != 0 || cfg.head_dim() > 256 {
            return Err(CudaError::Invalid(format!(
                "head_dim {} is not supported by the cuda engine (even, at most 256)",
                cfg.head_dim()
            )));
        }
        let group = cfg.num_attention_heads / cfg.num_key_value_heads.max(1);
        if cfg.num_attention_heads % cfg.num_key_value_heads.max(1) != 0 || group > 16 {
            return Err(CudaError::Invalid(format!(
                "{} query heads per KV head is not supported by the cuda engine (a divisor, at most 16)",
                group
            )));
        }
        tracing::debug!("cuda engine: opening GPU {ordinal}, compiling kernels");
        let mut gpu = Gpu::open(ordinal, MODULES, dtype)?;
        tracing::debug!("cuda engine: NCCL init (rank {rank} of {world})");
        let sm_count = gpu.sm_count();
        // Every rank joins the NCCL group first (a rank that returned before it would leave the
        // others waiting in ncclCommInitRank); then a model that cannot fit is one line naming the
        // figures, agreed by the run like any failure at create.
        let nccl = Nccl::init(&gpu, rank, world, nccl_id)?;
        let (free, total) = gpu.mem_info()?;
        let need = Dims::new(cfg, rank, world).resident_weight_bytes(cfg.tie_word_embeddings);
        model::fits(
            &format!("the {} weights of rank {rank} of {world}", dtype.name()),
            need,
            free as u64,
            total as u64,
            "run more ranks (tensor parallel: mpirun -n 2, 4, ...) or a smaller model",
        )?;
        let dims = Dims::new(cfg, rank, world);
        tracing::debug!("cuda engine: NCCL ready; measuring copy bandwidth");
        let copy_bandwidth = copy_bandwidth(&mut gpu)?;
        tracing::debug!("cuda engine: weights");
        let weights = match weights {
            WeightInit::Seeded(seed) => Weights::random(&mut gpu, cfg, &dims, seed)?,
            WeightInit::Checkpoint(dir) => Weights::from_safetensors(&mut gpu, dir, cfg, &dims, dtype)?,
        };
        // Switches for A/B measurements: TPPROF_CUDA_GRAPH=0 (eager decode launches);
        // TPPROF_CUDA_GEMV=1|all|0|none|qkv,o,gate_up,down,lm_head (which decode projections run on
        // gemv.cu instead of cuBLAS; default none);
        // TPPROF_CUDA_ATTN=mma (decode.cu's decode_attn_mma: tensor cores, sm_80+, the default there;
        // on an H100 at 14B 10K attention -17 %, ITL -1.8 %: results/h100-decode-attn-mma.md), =sk
        // (decode_attn_sk up to 512 positions per split and decode_attn_pipe beyond: the default
        // before sm_80), =pipe (decode.cu's decode_attn_pipe at every split length), =fast
        // (decode_attn_fast) or =tiled (attention.cu's); TPPROF_CUDA_ATTN_MERGE=1 (decode_attn_pipe or _mma
        // merges the splits in its last block instead of the decode_attn_merge kernel: measured
        // slower, 48.7 vs 28.8 us per layer for qwen2.5-14b TP=1 at 10K);
        // TPPROF_CUDA_ATTN_BLOCKS=N (decode attention
        // blocks per SM in one wave, sizing the splits; default 2); TPPROF_CUDA_ATTN_SPLIT=N (positions
        // per split, rounded up to 16: for tests of long splits on short prompts);
        // TPPROF_CUDA_PREFILL_ATTN=cublas (the chunked cuBLAS prefill attention instead of prefill.cu's
        // tensor-core kernel, by default 4 warps × 2 m-tiles = 128 queries per block, 2 K/V stages),
        // =flash8 (8 warps × 16 queries, the earlier default), =flash4 (4 warps × 16), =flash2m3 (3 stages).
        let use_graph = std::env::var("TPPROF_CUDA_GRAPH").map(|v| v != "0").unwrap_or(true);
        // TPPROF_CUDA_OVERLAP=1: step n + 1 is launched before the host reads step n's tokens
        // (no change on one H100 at 14B 10K: off by default).
        let overlap = std::env::var("TPPROF_CUDA_OVERLAP").is_ok_and(|v| v == "1");
        let gemv = match std::env::var("TPPROF_CUDA_GEMV") {
            Ok(v) => GemvOps::parse(&v).map_err(|e| CudaError::Invalid(format!("TPPROF_CUDA_GEMV={v}: {e}")))?,
            Err(_) => GemvOps::NONE,
        };
        let sm: u32 = gpu.arch.trim_start_matches("sm_").parse().unwrap_or(0);
        // TPPROF_CUDA_GEMV_KERNEL=warp|bulk|bulk:BLOCKS_PER_SM,WARPS,STAGES: which gemv.cu kernel the
        // projections in TPPROF_CUDA_GEMV use; default gemv_bulk on sm_90+ (cp.async.bulk), else gemv.
        let gemv_kernel = match std::env::var("TPPROF_CUDA_GEMV_KERNEL") {
            Ok(v) => GemvKernel::parse(&v, sm_count)
                .map_err(|e| CudaError::Invalid(format!("TPPROF_CUDA_GEMV_KERNEL={v}: {e}")))?,
            Err(_) => GemvKernel::bulk(sm_count),
        };
        let gemv_kernel = match gemv_kernel {
            GemvKernel::Bulk { .. } if sm < 90 => GemvKernel::Warp,
            g => g,
        };
        // TPPROF_CUDA_FUSE=1: decode steps on one GPU with the RMSNorms, SwiGLU and residual adds inside
        // gemv_bulk (sm_90+; every projection then runs on it).
        let fuse = std::env::var("TPPROF_CUDA_FUSE").is_ok_and(|v| v == "1");
        let fuse = match (fuse, gemv_kernel, world) {
            (false, ..) => false,
            (true, GemvKernel::Bulk { .. }, 1) => true,
            (true, _, 1) => {
                tracing::warn!(
                    "TPPROF_CUDA_FUSE=1 needs gemv_bulk (sm_90 or newer, TPPROF_CUDA_GEMV_KERNEL not warp): not fused"
                );
                false
            }
            (true, ..) => {
                tracing::warn!(
                    "TPPROF_CUDA_FUSE=1 is for one GPU (the all-reduces sit between the fused kernels): not fused"
                );
                false
            }
        };
        let attn_merge = std::env::var("TPPROF_CUDA_ATTN_MERGE").is_ok_and(|v| v == "1");
        // TPPROF_CUDA_PDL=1: programmatic dependent launch of our kernels (sm_90+; measured 0.5 % slower
        // on an H100 at 14B 10K, so off by default).
        if std::env::var("TPPROF_CUDA_PDL").is_ok_and(|v| v == "1") {
            if sm >= 90 {
                gpu.set_pdl(true);
            } else {
                tracing::warn!("TPPROF_CUDA_PDL=1 needs sm_90 or newer ({}): launching without it", gpu.arch);
            }
        }
        // The default: decode_attn_mma on sm_80+ (H100, 14B TP=1: ITL -1.8 % at 10K, -1.4 % at 20K
        // against decode_attn_sk / decode_attn_pipe; results/h100-gemv-bulk.md), else decode_attn_sk
        // (decode_attn_pipe past its 512-position splits).
        let default_attention =
            if sm >= 80 { DecodeAttention::Mma { merge: attn_merge } } else { DecodeAttention::ScoresFirst };
        let attention = match std::env::var("TPPROF_CUDA_ATTN").as_deref() {
            // mma.sync m16n8k16 and cp.async need sm_80.
            Ok("mma") if sm >= 80 => DecodeAttention::Mma { merge: attn_merge },
            Ok("mma") => {
                tracing::warn!("TPPROF_CUDA_ATTN=mma needs sm_80 or newer ({}): using decode_attn_sk", gpu.arch);
                DecodeAttention::ScoresFirst
            }
            Ok("fast") => DecodeAttention::Fast,
            Ok("tiled") => DecodeAttention::Tiled,
            Ok("pipe") => DecodeAttention::Pipelined { merge: attn_merge },
            Ok("sk") => DecodeAttention::ScoresFirst,
            Err(_) => default_attention,
            Ok(other) => {
                tracing::warn!(
                    "TPPROF_CUDA_ATTN={other} is not mma, sk, pipe, fast or tiled: using the default ({})",
                    default_attention.label()
                );
                default_attention
            }
        };
        let attn_split =
            std::env::var("TPPROF_CUDA_ATTN_SPLIT").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&v| v > 0);
        let prefill_env = std::env::var("TPPROF_CUDA_PREFILL_ATTN").ok();
        let prefill = PrefillAttention::parse(prefill_env.as_deref())
            .map_err(|e| CudaError::Invalid(format!("TPPROF_CUDA_PREFILL_ATTN: {e}")))?;
        let prefill = prefill.resolve(dims.d, sm);
        let attn_blocks_per_sm = std::env::var("TPPROF_CUDA_ATTN_BLOCKS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&v| v > 0)
            .unwrap_or(2);
        Ok(CudaEngine {
            cfg: cfg.clone(),
            dtype,
            dims,
            graph: None,
            bufs: None,
            weights,
            nccl,
            gpu,
            pinned_tokens: None,
            sm_count,
            copy_bandwidth,
            steps: StepTimes::default(),
            prepared: None,
            use_graph,
            overlap,
            gemv,
            gemv_kernel,
            fuse,
            attention,
            prefill,
            attn_blocks_per_sm,
            attn_split,
            breakdown_steps: std::env::var("TPPROF_CUDA_BREAKDOWN").ok().and_then(|v| v.parse().ok()).unwrap_or(8),
            last_run: None,
        })
    }

    fn model(&self) -> Result<Model<'_>, CudaError> {
        let b = self.bufs.as_ref().ok_or_else(|| CudaError::Internal("buffers not prepared".into()))?;
        Ok(Model {
            gpu: &self.gpu,
            nccl: &self.nccl,
            dims: &self.dims,
            w: &self.weights,
            b,
            dtype: self.dtype,
            eps: self.cfg.rms_norm_eps as f32,
            theta: self.cfg.rope_theta as f32,
            gemv: self.gemv,
            gemv_kernel: self.gemv_kernel,
            fuse: self.fuse,
            attention: self.attention,
            prefill: self.prefill,
            probe: None,
        })
    }

    fn validate(&self, prompts: &[Vec<i32>], max_new: usize) -> Result<(), CudaError> {
        for (s, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(CudaError::Invalid(format!("sample {s}: empty prompt")));
            }
            if let Some((i, t)) = p.iter().enumerate().find(|(_, &t)| t < 0 || t as usize >= self.cfg.vocab_size) {
                return Err(CudaError::Invalid(format!(
                    "sample {s}: token id {t} at position {i} is outside the vocabulary [0, {})",
                    self.cfg.vocab_size
                )));
            }
            if p.len() + max_new > self.cfg.max_position_embeddings {
                return Err(CudaError::Invalid(format!(
                    "sample {s}: prompt {} + {max_new} new tokens exceeds max_position_embeddings {}",
                    p.len(),
                    self.cfg.max_position_embeddings
                )));
            }
        }
        Ok(())
    }

    /// Sizes the buffers for this workload, warms up (a short prefill and one decode step: cuBLAS
    /// and NCCL pick and load their kernels on first use) and captures the decode step into a CUDA
    /// graph — all before the profiler starts its clock, as a serving engine does at start-up.
    /// Every rank must call it (it runs collectives).
    pub fn prepare(&mut self, prompts: &[Vec<i32>], max_new: usize) -> Result<(), CudaError> {
        self.validate(prompts, max_new)?;
        let slots = prompts.len().max(1);
        let max_prompt = prompts.iter().map(Vec::len).max().unwrap_or(1);
        let max_len = max_prompt + max_new;
        let want = (slots, max_len, max_prompt);
        if self.prepared != Some(want) {
            self.graph = None;
            self.bufs = None;
            self.prepared = None;
            self.gpu.sync()?;
            let (free, total) = self.gpu.mem_info()?;
            let need = Buffers::bytes(
                &self.dims,
                slots,
                max_len,
                max_prompt,
                self.sm_count * self.attn_blocks_per_sm,
                self.attn_split,
                self.prefill,
            );
            // Headroom for what is not ours to size: cuBLAS workspaces, the CUDA graph, NCCL.
            model::fits(
                &format!(
                    "the KV cache and buffers of {slots} sample(s) of up to {max_len} positions (KV {:.1} GiB, + 0.5 GiB headroom)",
                    self.dims.kv_cache_bytes(slots, max_len) as f64 / (1u64 << 30) as f64
                ),
                need.saturating_add(512 << 20),
                free as u64,
                total as u64,
                "fewer samples (--batch), shorter prompts or generations, or more ranks",
            )?;
            let b = Buffers::new(
                &mut self.gpu,
                &self.dims,
                slots,
                max_len,
                max_prompt,
                self.sm_count * self.attn_blocks_per_sm,
                self.attn_split,
                self.prefill,
            )?;
            self.bufs = Some(b);
            // The stream is idle (synchronized above): the old buffer can go.
            self.pinned_tokens = if self.overlap {
                // SAFETY: read only after a copy into it completed (generate's events).
                Some(
                    unsafe { self.gpu.ctx.alloc_pinned_with_flags::<i32>(2 * slots, 0) }
                        .map_err(|e| CudaError::Driver(format!("cuMemHostAlloc: {e}")))?,
                )
            } else {
                None
            };
            self.prepared = Some(want);
        }
        {
            let m = self.model()?;
            let warm: Vec<i32> = (0..max_prompt.min(16) as i32).collect();
            m.stage_prompt(&warm, 0)?;
            m.prefill(warm.len(), 0)?;
            m.stage_decode(&vec![warm.len(); slots])?;
            m.decode_step(slots)?;
            self.gpu.sync()?;
        }
        if self.use_graph && self.graph.is_none() {
            tracing::debug!("cuda engine: capturing the decode step into a CUDA graph");
            self.graph = self.capture(slots)?;
        }
        Ok(())
    }

    fn capture(&self, slots: usize) -> Result<Option<cudarc::driver::CudaGraph>, CudaError> {
        self.gpu.begin_capture().map_err(|e| CudaError::Driver(format!("cuStreamBeginCapture: {e}")))?;
        let recorded = self.model().and_then(|m| m.decode_step(slots));
        let graph = self.gpu.end_capture();
        recorded?;
        graph.map_err(|e| CudaError::Driver(format!("capturing the decode step into a CUDA graph: {e}")))
    }

    /// Greedy generation; `on_token(sample, step, token, finish)` as soon as each token is on the host.
    pub fn generate(
        &mut self,
        prompts: &[Vec<i32>],
        max_new: usize,
        exact_length: bool,
        on_token: &mut dyn FnMut(usize, usize, i32, i32),
    ) -> Result<(), CudaError> {
        if prompts.is_empty() || max_new == 0 {
            return Ok(());
        }
        let slots = prompts.len();
        let max_prompt = prompts.iter().map(Vec::len).max().unwrap_or(1);
        if self.prepared != Some((slots, max_prompt + max_new, max_prompt)) {
            self.prepare(prompts, max_new)?;
        }
        let eos = self.cfg.eos_token_id;
        let finish_of = |step: usize, tok: i32| -> i32 {
            if step + 1 == max_new {
                1
            } else if !exact_length && Some(tok) == eos {
                2
            } else {
                0
            }
        };
        let mut done = vec![false; slots];
        let mut host_tokens = vec![0i32; slots];
        // Step `step`'s tokens to the caller, for the samples still running.
        let emit = |step: usize, got: &[i32], done: &mut [bool], on_token: &mut dyn FnMut(usize, usize, i32, i32)| {
            for s in 0..slots {
                if !done[s] {
                    let f = finish_of(step, got[s]);
                    done[s] = f != 0;
                    on_token(s, step, got[s], f);
                }
            }
        };
        let t0 = Instant::now();
        {
            let m = self.model()?;
            for (s, p) in prompts.iter().enumerate() {
                m.stage_prompt(p, s)?;
                m.prefill(p.len(), s)?;
                self.gpu.read_into(m.b.tokens.at(s), &mut host_tokens[s..s + 1])?;
                let f = finish_of(0, host_tokens[s]);
                done[s] = f != 0;
                on_token(s, 0, host_tokens[s], f);
            }
            m.stage_decode(&prompts.iter().map(Vec::len).collect::<Vec<_>>())?;
        }
        let prefill_s = t0.elapsed().as_secs_f64();
        let steps = max_new - 1;
        let events: Vec<_> = (0..2 * steps).map(|_| self.gpu.event()).collect::<Result<_, _>>()?;
        let rec = |e: &cudarc::driver::CudaEvent, g: &Gpu| {
            e.record(&g.stream).map_err(|e| CudaError::Driver(format!("cuEventRecord: {e}")))
        };
        // The anchors: the stream is idle, so a reference event completes as soon as it is
        // recorded; its host time is the middle of record → synchronize (a few µs wide).
        let anchor_at = |g: &Gpu| -> Result<(cudarc::driver::CudaEvent, u64), CudaError> {
            let e = g.event()?;
            g.sync()?;
            let h0 = crate::clock::mono_ns();
            rec(&e, g)?;
            g.sync()?;
            Ok((e, (h0 + crate::clock::mono_ns()) / 2))
        };
        let base: Option<*mut i32> = match self.pinned_tokens.as_mut() {
            Some(p) if self.overlap => {
                Some(p.as_mut_ptr().map_err(|e| CudaError::Driver(format!("pinned buffer: {e}")))?)
            }
            _ => None,
        };
        let copied = match base {
            Some(_) => Some([self.gpu.event()?, self.gpu.event()?]),
            None => None,
        };
        let (anchor, anchor_ns) = anchor_at(&self.gpu)?;
        let tokens = self
            .bufs
            .as_ref()
            .map(|b| b.tokens.view())
            .ok_or_else(|| CudaError::Internal("buffers not prepared".into()))?;
        // One decode step on the stream, between its two timing events.
        let launch = |step: usize| -> Result<(), CudaError> {
            rec(&events[2 * (step - 1)], &self.gpu)?;
            match &self.graph {
                Some(g) => g.launch().map_err(|e| CudaError::Driver(format!("cuGraphLaunch: {e}")))?,
                None => self.model()?.decode_step(slots)?,
            }
            rec(&events[2 * (step - 1) + 1], &self.gpu)
        };
        let t1 = Instant::now();
        let mut ran = 0;
        let decode_s;
        if let (Some(base), Some(copied)) = (base, copied.as_ref()) {
            // Step n + 1 is on the stream before the host waits for step n's tokens: each step
            // reads the tokens the previous one wrote on the device, so the host's copy, callback
            // and next launch hide behind the GPU's work. Step n's tokens are copied into one half
            // of the pinned buffer right after step n, before step n + 1 (which overwrites them on
            // the device) is enqueued; a step launched past the last EOS is wasted, never
            // reported (it leaves its logits and tokens on the device: the last logits are those
            // of the last reported step only in exact-length mode, which verify uses).
            let enqueue = |step: usize| -> Result<(), CudaError> {
                launch(step)?;
                // SAFETY: half `step % 2` of the pinned buffer (2 × slots i32, alive as long as
                // the engine, dropped after the stream is synchronized) is not read before
                // `copied[step % 2]` completes, nor written again before it was read: the copy of
                // step n + 2 is enqueued after the host read step n's tokens.
                unsafe { self.gpu.read_async(tokens, base.add((step % 2) * slots), slots)? };
                rec(&copied[step % 2], &self.gpu)
            };
            if max_new > 1 && !done.iter().all(|&d| d) {
                enqueue(1)?;
                for step in 1..max_new {
                    if step + 1 < max_new {
                        enqueue(step + 1)?;
                    }
                    copied[step % 2]
                        .synchronize()
                        .map_err(|e| CudaError::Driver(format!("cuEventSynchronize: {e}")))?;
                    // SAFETY: the copy into this half completed (the event above).
                    let got = unsafe { std::slice::from_raw_parts(base.add((step % 2) * slots), slots) };
                    emit(step, got, &mut done, on_token);
                    ran = step;
                    if done.iter().all(|&d| d) {
                        break;
                    }
                }
            }
            decode_s = t1.elapsed().as_secs_f64();
            // A speculative step past the last EOS finishes before the anchors.
            self.gpu.sync()?;
        } else {
            for step in 1..max_new {
                if done.iter().all(|&d| d) {
                    break;
                }
                launch(step)?;
                self.gpu.read_into(tokens, &mut host_tokens)?;
                emit(step, &host_tokens, &mut done, on_token);
                ran = step;
            }
            decode_s = t1.elapsed().as_secs_f64();
        }
        let (anchor_end, anchor_end_ns) = anchor_at(&self.gpu)?;
        let elapsed = |a: &cudarc::driver::CudaEvent, e: &cudarc::driver::CudaEvent| {
            a.elapsed_ms(e).map(f64::from).map_err(|e| CudaError::Driver(format!("cuEventElapsedTime: {e}")))
        };
        let span_ms = elapsed(&anchor, &anchor_end)?;
        // Below ~100 ms the anchors' few-µs uncertainty would dominate the rate; the drift in ppm is
        // reported only from 2 s on (at 100 ms, 2 µs of anchor error alone is 20 ppm).
        let (a1_ns, span) = if span_ms >= 100.0 { (anchor_end_ns, span_ms) } else { (anchor_ns, 0.0) };
        self.steps.event_drift_ppm = (span >= 2000.0).then(|| ((a1_ns - anchor_ns) as f64 / (span * 1e6) - 1.0) * 1e6);
        let since_anchor = |e: &cudarc::driver::CudaEvent| -> Result<u64, CudaError> {
            Ok(event_to_host_ns(anchor_ns, a1_ns, span, elapsed(&anchor, e)?))
        };
        self.steps.device_abs_ns = (0..ran)
            .map(|i| Ok((since_anchor(&events[2 * i])?, since_anchor(&events[2 * i + 1])?)))
            .collect::<Result<_, CudaError>>()?;
        self.steps.device_ms = (0..ran)
            .map(|i| {
                events[2 * i]
                    .elapsed_ms(&events[2 * i + 1])
                    .map_err(|e| CudaError::Driver(format!("cuEventElapsedTime: {e}")))
            })
            .collect::<Result<_, _>>()?;
        // A diagnostic: its failure is reported in the stats, never fails the run.
        let breakdown = self.breakdown(prompts, max_new, ran).unwrap_or_else(|e| json!({ "error": e.to_string() }));
        let prefill_breakdown = if self.breakdown_steps == 0 {
            serde_json::Value::Null
        } else {
            self.prefill_breakdown(prompts).unwrap_or_else(|e| json!({ "error": e.to_string() }))
        };
        let mut stats = self.run_stats(prompts, max_new, prefill_s, decode_s);
        stats["decode_breakdown_us_per_step"] = breakdown;
        stats["prefill_breakdown"] = prefill_breakdown;
        self.last_run = Some(stats);
        Ok(())
    }

    /// Where a decode step's time goes: after the timed run, `TPPROF_CUDA_BREAKDOWN` (default 8)
    /// more decode steps over the last positions of the run (same context length; the run's own
    /// tokens were already reported), with a CUDA event at every op boundary. The instrumented step
    /// is captured into a CUDA graph like the real one, so the times are the device's, without host
    /// launch gaps (falls back to eager launches, which include them, if the capture fails).
    /// Mean µs per step per op.
    fn breakdown(&self, prompts: &[Vec<i32>], max_new: usize, ran: usize) -> Result<serde_json::Value, CudaError> {
        let steps = self.breakdown_steps.min(ran);
        if steps == 0 {
            return Ok(serde_json::Value::Null);
        }
        let probe = model::Probe::new(&self.gpu, 16 * self.dims.layers + 16)?;
        let mut m = self.model()?;
        m.stage_decode(&prompts.iter().map(|p| p.len() + max_new - 1 - steps).collect::<Vec<_>>())?;
        m.probe = Some(&probe);
        let captured = self.gpu.begin_capture().ok().and_then(|_| {
            let ok = m.decode_step(prompts.len()).is_ok();
            let g = self.gpu.end_capture();
            if ok {
                g.ok().flatten()
            } else {
                None
            }
        });
        let mut totals: Vec<(model::Op, f64)> = Vec::new();
        let mut add = |t: Vec<(model::Op, f64)>| {
            for (op, us) in t {
                match totals.iter_mut().find(|(o, _)| *o == op) {
                    Some((_, x)) => *x += us,
                    None => totals.push((op, us)),
                }
            }
        };
        let mode = if let Some(g) = &captured {
            for _ in 0..steps {
                g.launch().map_err(|e| CudaError::Driver(format!("cuGraphLaunch: {e}")))?;
                self.gpu.sync()?;
                add(probe.totals_us()?);
            }
            "cuda_graph"
        } else {
            self.gpu.sync()?;
            for _ in 0..steps {
                probe.reset();
                m.decode_step(prompts.len())?;
                self.gpu.sync()?;
                add(probe.totals_us()?);
            }
            "eager (includes host launch gaps)"
        };
        // Each event node costs device time of its own: estimate it per mark from the instrumented
        // step against the plain one (the run's device step p50) and take it off every op.
        let counts = probe.counts();
        let marks: usize = counts.iter().filter(|(op, _)| *op != model::Op::End).map(|(_, c)| c).sum();
        let raw_total: f64 =
            totals.iter().filter(|(op, _)| *op != model::Op::End).map(|(_, us)| us / steps as f64).sum();
        let mut plain = self.steps.device_ms.clone();
        plain.sort_by(|a, b| a.total_cmp(b));
        let plain_us = plain.get(plain.len() / 2).map(|ms| *ms as f64 * 1e3).unwrap_or(raw_total);
        let per_mark = ((raw_total - plain_us) / marks.max(1) as f64).max(0.0);
        let mut raw = serde_json::Map::new();
        let mut est = serde_json::Map::new();
        for (op, us) in totals {
            if op != model::Op::End {
                let n = counts.iter().find(|(o, _)| *o == op).map(|(_, c)| *c).unwrap_or(0);
                raw.insert(op.name().into(), json!(us / steps as f64));
                est.insert(op.name().into(), json!((us / steps as f64 - n as f64 * per_mark).max(0.0)));
            }
        }
        Ok(json!({
            "mode": mode,
            "steps": steps,
            "instrumented_step_us": raw_total,
            "plain_step_us": plain_us,
            "event_overhead_us_per_mark": per_mark,
            "raw_us": raw,
            "estimated_us": est,
        }))
    }

    /// Where a prefill's time goes: after the timed run (and the decode breakdown), sample 0's
    /// prefill once more into its own slot (the same keys and values are written again), eager,
    /// with a CUDA event at every op boundary; a prefill op runs for milliseconds, so the events'
    /// own few µs are left in. Per op: ms over all layers, and the TFLOP/s of the matrix products
    /// and of the attention (causal: half the n² scores).
    fn prefill_breakdown(&self, prompts: &[Vec<i32>]) -> Result<serde_json::Value, CudaError> {
        let Some(prompt) = prompts.first() else { return Ok(serde_json::Value::Null) };
        let probe = model::Probe::new(&self.gpu, 16 * self.dims.layers + 16)?;
        let mut m = self.model()?;
        m.probe = Some(&probe);
        m.stage_prompt(prompt, 0)?;
        self.gpu.sync()?;
        m.prefill(prompt.len(), 0)?;
        self.gpu.sync()?;
        let totals = probe.totals_us()?;
        let d = &self.dims;
        let (n, l) = (prompt.len() as f64, d.layers as f64);
        let gemm = |out: usize, k: usize| 2.0 * n * out as f64 * k as f64 * l;
        let flop = |op: model::Op| -> Option<f64> {
            Some(match op {
                model::Op::QkvGemm => gemm((d.hq + 2 * d.hkv) * d.d, d.hidden),
                model::Op::OGemm => gemm(d.hidden, d.hq * d.d),
                model::Op::GateUpGemm => gemm(2 * d.inter, d.hidden),
                model::Op::DownGemm => gemm(d.hidden, d.inter),
                model::Op::Attention => 4.0 * d.hq as f64 * d.d as f64 * n * (n + 1.0) / 2.0 * l,
                _ => return None,
            })
        };
        let mut ms = serde_json::Map::new();
        let mut tflops = serde_json::Map::new();
        let mut total = 0.0;
        for (op, us) in totals {
            if op == model::Op::End {
                continue;
            }
            total += us;
            ms.insert(op.name().into(), json!(us / 1e3));
            if let Some(f) = flop(op).filter(|_| us > 0.0) {
                tflops.insert(op.name().into(), json!(f / (us * 1e-6) / 1e12));
            }
        }
        Ok(json!({
            "prompt_tokens": prompt.len(),
            "prefill_attention": self.prefill.label(),
            "total_ms": total / 1e3,
            "ms": ms,
            "tflops": tflops,
        }))
    }

    /// This rank's logits (its vocab shard) for the last token of `prompt`, and the greedy token.
    pub fn prefill_logits(&mut self, prompt: &[i32]) -> Result<(Vec<f32>, i32), CudaError> {
        self.prepare(std::slice::from_ref(&prompt.to_vec()), 1)?;
        let m = self.model()?;
        m.stage_prompt(prompt, 0)?;
        m.prefill(prompt.len(), 0)?;
        let logits = m.read_logits(1)?;
        let tok = self.gpu.read::<i32>(m.b.tokens.view(), 1)?[0];
        Ok((logits, tok))
    }

    /// The decode attention kernel that runs with the prepared buffers, its splits and their length.
    fn attention_kernel(&self) -> Option<(DecodeAttention, usize, usize)> {
        let b = self.bufs.as_ref()?;
        Some((self.attention.resolve(self.dims.d, self.dims.group(), b.split_len), b.n_splits, b.split_len))
    }

    /// The same in words, e.g. "decode.cu decode_attn_sk, 62 splits of 176 positions".
    /// The prefill attention that runs (tpprof verify prints it).
    pub fn prefill_attention(&self) -> String {
        self.prefill.label()
    }

    pub fn decode_attention(&self) -> Option<String> {
        self.attention_kernel().map(|(k, n, len)| format!("{}, {n} splits of {len} positions", k.label()))
    }

    /// No after-run breakdown: its extra decode steps would overwrite the run's last logits.
    pub fn skip_breakdown(&mut self) {
        self.breakdown_steps = 0;
    }

    /// This rank's logits (its vocab shard) of the last LM-head pass, `rows` × v_local: after
    /// `generate` with the breakdown skipped, the last decode step's, one row per sample (what
    /// `tpprof verify` checks the decode attention with).
    pub fn last_logits(&self, rows: usize) -> Result<Vec<f32>, CudaError> {
        self.model()?.read_logits(rows)
    }

    pub fn step_times(&self) -> &StepTimes {
        &self.steps
    }

    /// (weights, kv cache, workspace, NCCL) bytes on this rank.
    pub fn memory(&self) -> (u64, u64, u64, u64) {
        let (kv, ws) = self.bufs.as_ref().map(|b| (b.kv_bytes, b.workspace_bytes)).unwrap_or((0, 0));
        (self.weights.bytes as u64, kv as u64, (ws + (32 << 20)) as u64, self.nccl.bytes as u64)
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub fn device_name(&self) -> String {
        self.gpu.ctx.name().unwrap_or_default()
    }

    pub fn arch(&self) -> &str {
        &self.gpu.arch
    }

    /// The floor of one decode step: bytes this rank must read (its weight shard + its KV cache at
    /// the mean decode context) ÷ the measured device copy bandwidth.
    fn run_stats(&self, prompts: &[Vec<i32>], max_new: usize, prefill_s: f64, decode_s: f64) -> serde_json::Value {
        let b = self.bufs.as_ref();
        let mean_prompt = prompts.iter().map(Vec::len).sum::<usize>() as f64 / prompts.len().max(1) as f64;
        let mean_ctx = (mean_prompt + max_new as f64 / 2.0) as usize;
        let kv = b.map(|b| b.kv_read_bytes(&self.dims, mean_ctx, prompts.len())).unwrap_or(0);
        let bytes = self.weights.read_per_step + kv;
        let floor_ms = bytes as f64 / self.copy_bandwidth * 1e3;
        let mut dev = self.steps.device_ms.clone();
        dev.sort_by(|a, b| a.total_cmp(b));
        let p50 = dev.get(dev.len() / 2).copied().unwrap_or(0.0) as f64;
        json!({
            "device": self.device_name(),
            "arch": self.gpu.arch,
            "dtype": self.dtype.name(),
            "cuda_graph": self.graph.is_some(),
            "decode_loop": if self.overlap { "overlapped" } else { "synchronous" },
            "programmatic_dependent_launch": self.gpu.pdl(),
            "decode_gemv": self.gemv.names(),
            "decode_gemv_kernel": (self.gemv != GemvOps::NONE || self.fuse).then(|| self.gemv_kernel.describe()),
            "decode_fused": self.fuse,
            "decode_attention": self.attention_kernel().map(|(k, _, _)| k.label()),
            "prefill_attention": self.prefill.label(),
            "decode_attention_splits": self.attention_kernel().map(|(_, n, len)| [n, len]),
            "copy_bandwidth_gb_s": self.copy_bandwidth / 1e9,
            "event_clock_drift_ppm": self.steps.event_drift_ppm,
            "weights_read_per_step_bytes": self.weights.read_per_step,
            "kv_read_per_step_bytes_at_mean_context": kv,
            "mean_decode_context": mean_ctx,
            "floor_step_ms": floor_ms,
            "device_step_ms_p50": p50,
            "device_step_over_floor": if floor_ms > 0.0 { p50 / floor_ms } else { 0.0 },
            "host_prefill_s": prefill_s,
            "host_decode_s": decode_s,
        })
    }

    pub fn last_run(&self) -> Option<&serde_json::Value> {
        self.last_run.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_map_through_both_anchors() {
        // Host clock 10 ppm faster than the event timer: 10 s of events = 10.0001 s of host time.
        let (a0, a1) = (1_000_000_000u64, 1_000_000_000 + 10_000_100_000);
        assert_eq!(event_to_host_ns(a0, a1, 10_000.0, 0.0), a0);
        assert_eq!(event_to_host_ns(a0, a1, 10_000.0, 10_000.0), a1);
        // Half-way: half the drift (50 µs), which a single anchor would have left out.
        assert_eq!(event_to_host_ns(a0, a1, 10_000.0, 5_000.0), a0 + 5_000_050_000);
        // No usable second anchor: the event timer's rate as it is.
        assert_eq!(event_to_host_ns(a0, a0, 0.0, 5.0), a0 + 5_000_000);
    }

    #[test]
    fn a_missing_cuda_is_an_error_not_a_panic() {
        // On machines without the driver this is the path every --engine cuda run takes first.
        if gpu::check_libraries().is_err() {
            let e = CudaEngine::new(
                &Config::preset("tiny").unwrap(),
                Dtype::F16,
                WeightInit::Seeded(0),
                0,
                0,
                1,
                &[0; 128],
            )
            .err()
            .unwrap();
            assert!(e.to_string().contains("the cuda engine needs"), "{e}");
        }
    }
}
