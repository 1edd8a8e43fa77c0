//! The Qwen2 decoder on one GPU of a tensor-parallel group: weights (this rank's shard), the
//! activation and KV-cache buffers, prefill (chunked attention through cuBLAS) and the decode step
//! (one CUDA graph: embedding → layers → LM head → global argmax → next token, all on the device).
//!
//! Sharding is the cpu engine's, exactly: q/k/v/gate/up column-parallel, o/down row-parallel with an
//! all-reduce (NCCL), LM head vocab-parallel with a global argmax (NCCL all-gather of (max, index)).
//! Weights use the cpu engine's counter-based recipe (cpu/weights.rs), generated on the device by
//! init.cu, so both engines hold the same numbers (rounded to fp16/bf16 here).

use crate::engine::builtin::cpu::weights::{projection_scale, tensor_id, Shard, WeightKind, EMBEDDING_SCALE};
use crate::engine::config::Config;
use crate::engine::safetensors::{SafetensorsDir, Sharding};

use super::gpu::{Arg, Buf, Dtype, El, Gpu, Nccl};
use super::CudaError;

const T_BYTES: usize = 2;
/// Prefill attention works on chunks of at most this many queries...
const MAX_Q_CHUNK: usize = 1024;
/// ...and keeps its score + probability buffers for one chunk under this many bytes.
const SCORES_BUDGET: usize = 1 << 30;

/// This rank's dimensions.
#[derive(Debug, Clone)]
pub struct Dims {
    pub hidden: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub inter: usize,
    pub vocab: usize,
    pub v0: usize,
    pub v1: usize,
    pub layers: usize,
    pub rank: usize,
    pub world: usize,
}

impl Dims {
    pub fn new(cfg: &Config, rank: usize, world: usize) -> Dims {
        let shard = Shard { rank, world };
        let v = shard.range(cfg.vocab_size);
        Dims {
            hidden: cfg.hidden_size,
            hq: cfg.num_attention_heads / world,
            hkv: cfg.num_key_value_heads / world,
            d: cfg.head_dim(),
            inter: cfg.intermediate_size / world,
            vocab: cfg.vocab_size,
            v0: v.start,
            v1: v.end,
            layers: cfg.num_hidden_layers,
            rank,
            world,
        }
    }
    fn qkv(&self) -> usize {
        (self.hq + 2 * self.hkv) * self.d
    }
    pub fn group(&self) -> usize {
        self.hq / self.hkv
    }
    fn v_local(&self) -> usize {
        self.v1 - self.v0
    }

    /// Weight bytes one decode step reads on this rank: every layer's shard (T matrices, f32
    /// norms and biases), the LM head shard and the final norm (the embedding rows are negligible).
    pub fn weight_bytes_per_step(&self) -> usize {
        let (h, d) = (self.hidden, self.d);
        let per_layer = T_BYTES * (self.qkv() * h + h * self.hq * d + 3 * self.inter * h) + (self.qkv() + 2 * h) * 4;
        self.layers * per_layer + T_BYTES * self.v_local() * h + h * 4
    }
}

struct LayerWeights {
    in_norm: Buf,   // (hidden) f32
    w_qkv: Buf,     // (qkv_local, hidden): q rows, then k rows, then v rows
    b_qkv: Buf,     // (qkv_local) f32
    w_o: Buf,       // (hidden, hq_local*d): row-parallel
    post_norm: Buf, // (hidden) f32
    w_gu: Buf,      // (2*inter_local, hidden): gate rows, then up rows
    w_down: Buf,    // (hidden, inter_local): row-parallel
}

pub struct Weights {
    embed: Buf,             // (vocab, hidden), full table on every rank
    lm_head: Option<Buf>,   // (v_local, hidden) when untied; else rows [v0, v1) of embed
    final_norm: Buf,        // (hidden) f32
    layers: Vec<LayerWeights>,
    pub bytes: usize,
    /// Bytes one decode step reads from the weights (every layer, the LM head shard, B embedding rows).
    pub read_per_step: usize,
}

/// Generates one weight shard on the device with the cpu engine's recipe.
#[allow(clippy::too_many_arguments)]
fn init_t(gpu: &Gpu, dst: u64, rows: usize, cols: usize, row0: usize, col0: usize, full_cols: usize, seed: u64, tid: u64, scale: f32, offset: f32) -> Result<(), CudaError> {
    let n = rows * cols;
    let grid = n.div_ceil(256).clamp(1, 65535) as u32;
    gpu.launch("init_weight", (grid, 1, 1), 256, 0, &[
        Arg::Ptr(dst), Arg::I32(rows as i32), Arg::I32(cols as i32), Arg::I64(row0 as i64), Arg::I64(col0 as i64),
        Arg::I64(full_cols as i64), Arg::U64(seed), Arg::U64(tid), Arg::F32(scale), Arg::F32(offset),
    ])
}

#[allow(clippy::too_many_arguments)]
fn init_f32(gpu: &Gpu, dst: u64, cols: usize, col0: usize, full_cols: usize, seed: u64, tid: u64, scale: f32, offset: f32) -> Result<(), CudaError> {
    let grid = cols.div_ceil(256).clamp(1, 65535) as u32;
    gpu.launch("init_f32", (grid, 1, 1), 256, 0, &[
        Arg::Ptr(dst), Arg::I32(1), Arg::I32(cols as i32), Arg::I64(0), Arg::I64(col0 as i64),
        Arg::I64(full_cols as i64), Arg::U64(seed), Arg::U64(tid), Arg::F32(scale), Arg::F32(offset),
    ])
}

impl Weights {
    /// Seeded random weights, generated on the device: decode speed does not depend on the values.
    pub fn random(gpu: &mut Gpu, cfg: &Config, dims: &Dims, seed: u64) -> Result<Weights, CudaError> {
        let (h, d) = (dims.hidden, dims.d);
        let (hq_full, hkv_full, inter_full) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size);
        let r = dims.rank;
        let start = gpu.allocated;
        let t = |n: usize| n * T_BYTES;
        let proj_h = projection_scale(h);
        let mut layers = Vec::with_capacity(dims.layers);
        for l in 0..dims.layers {
            let id = |k| tensor_id(l, k);
            let in_norm = gpu.alloc(h * 4)?;
            init_f32(gpu, in_norm.ptr, h, 0, h, seed, id(WeightKind::InputNorm), 0.1, 1.0)?;
            let post_norm = gpu.alloc(h * 4)?;
            init_f32(gpu, post_norm.ptr, h, 0, h, seed, id(WeightKind::PostAttentionNorm), 0.1, 1.0)?;

            let (q_rows, kv_rows) = (dims.hq * d, dims.hkv * d);
            let w_qkv = gpu.alloc(t(dims.qkv() * h))?;
            init_t(gpu, w_qkv.ptr, q_rows, h, r * q_rows, 0, h, seed, id(WeightKind::QProj), proj_h, 0.0)?;
            init_t(gpu, w_qkv.at(t(q_rows * h)), kv_rows, h, r * kv_rows, 0, h, seed, id(WeightKind::KProj), proj_h, 0.0)?;
            init_t(gpu, w_qkv.at(t((q_rows + kv_rows) * h)), kv_rows, h, r * kv_rows, 0, h, seed, id(WeightKind::VProj), proj_h, 0.0)?;
            let b_qkv = gpu.alloc(dims.qkv() * 4)?;
            init_f32(gpu, b_qkv.ptr, q_rows, r * q_rows, hq_full * d, seed, id(WeightKind::QBias), 0.02, 0.0)?;
            init_f32(gpu, b_qkv.ptr + (q_rows * 4) as u64, kv_rows, r * kv_rows, hkv_full * d, seed, id(WeightKind::KBias), 0.02, 0.0)?;
            init_f32(gpu, b_qkv.ptr + ((q_rows + kv_rows) * 4) as u64, kv_rows, r * kv_rows, hkv_full * d, seed, id(WeightKind::VBias), 0.02, 0.0)?;

            let w_o = gpu.alloc(t(h * q_rows))?;
            init_t(gpu, w_o.ptr, h, q_rows, 0, r * q_rows, hq_full * d, seed, id(WeightKind::OProj), projection_scale(hq_full * d), 0.0)?;

            let i = dims.inter;
            let w_gu = gpu.alloc(t(2 * i * h))?;
            init_t(gpu, w_gu.ptr, i, h, r * i, 0, h, seed, id(WeightKind::GateProj), proj_h, 0.0)?;
            init_t(gpu, w_gu.at(t(i * h)), i, h, r * i, 0, h, seed, id(WeightKind::UpProj), proj_h, 0.0)?;
            let w_down = gpu.alloc(t(h * i))?;
            init_t(gpu, w_down.ptr, h, i, 0, r * i, inter_full, seed, id(WeightKind::DownProj), projection_scale(inter_full), 0.0)?;
            layers.push(LayerWeights { in_norm, w_qkv, b_qkv, w_o, post_norm, w_gu, w_down });
        }
        let embed = gpu.alloc(t(dims.vocab * h))?;
        init_t(gpu, embed.ptr, dims.vocab, h, 0, 0, h, seed, tensor_id(0, WeightKind::Embedding), EMBEDDING_SCALE, 0.0)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            let b = gpu.alloc(t(dims.v_local() * h))?;
            init_t(gpu, b.ptr, dims.v_local(), h, dims.v0, 0, h, seed, tensor_id(0, WeightKind::LmHead), proj_h, 0.0)?;
            Some(b)
        };
        let final_norm = gpu.alloc(h * 4)?;
        init_f32(gpu, final_norm.ptr, h, 0, h, seed, tensor_id(0, WeightKind::FinalNorm), 0.1, 1.0)?;
        gpu.sync()?;
        Ok(Weights {
            embed,
            lm_head,
            final_norm,
            layers,
            bytes: gpu.allocated - start,
            read_per_step: dims.weight_bytes_per_step(),
        })
    }

    /// A Hugging Face checkpoint: every tensor of this rank's shard read from `dir` (memory-mapped,
    /// only the shard's bytes), converted to the engine's dtype on the host, uploaded.
    pub fn from_safetensors(gpu: &mut Gpu, dir: &SafetensorsDir, cfg: &Config, dims: &Dims, dtype: Dtype) -> Result<Weights, CudaError> {
        let (h, d) = (dims.hidden, dims.d);
        let (hq_full, hkv_full, inter_full, vocab) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.vocab_size);
        let r = dims.rank;
        let start = gpu.allocated;
        let bad = |e: crate::engine::safetensors::WeightsError| CudaError::Invalid(e.to_string());
        let bits = |name: &str, shape: &[usize], sh: Sharding| -> Result<Vec<u16>, CudaError> {
            match dtype {
                Dtype::F16 => dir.read_f16_bits(name, shape, sh),
                Dtype::Bf16 => dir.read_bf16_bits(name, shape, sh),
            }
            .map_err(bad)
        };
        let f32s = |name: &str, shape: &[usize], sh: Sharding| dir.read_f32(name, shape, sh).map_err(bad);
        let mut layers = Vec::with_capacity(dims.layers);
        for l in 0..dims.layers {
            let name = |k: WeightKind| k.hf_name(l);
            let (q_rows, kv_rows) = (dims.hq * d, dims.hkv * d);
            let in_norm = gpu.upload(&f32s(&name(WeightKind::InputNorm), &[h], Sharding::Full)?)?;
            let post_norm = gpu.upload(&f32s(&name(WeightKind::PostAttentionNorm), &[h], Sharding::Full)?)?;
            let w_qkv = gpu.alloc(dims.qkv() * h * T_BYTES)?;
            gpu.write(&w_qkv, 0, &bits(&name(WeightKind::QProj), &[hq_full * d, h], Sharding::Rows(r * q_rows..(r + 1) * q_rows))?)?;
            gpu.write(&w_qkv, q_rows * h * T_BYTES, &bits(&name(WeightKind::KProj), &[hkv_full * d, h], Sharding::Rows(r * kv_rows..(r + 1) * kv_rows))?)?;
            gpu.write(&w_qkv, (q_rows + kv_rows) * h * T_BYTES, &bits(&name(WeightKind::VProj), &[hkv_full * d, h], Sharding::Rows(r * kv_rows..(r + 1) * kv_rows))?)?;
            let mut bias = f32s(&name(WeightKind::QBias), &[hq_full * d], Sharding::Rows(r * q_rows..(r + 1) * q_rows))?;
            bias.extend(f32s(&name(WeightKind::KBias), &[hkv_full * d], Sharding::Rows(r * kv_rows..(r + 1) * kv_rows))?);
            bias.extend(f32s(&name(WeightKind::VBias), &[hkv_full * d], Sharding::Rows(r * kv_rows..(r + 1) * kv_rows))?);
            let b_qkv = gpu.upload(&bias)?;
            let w_o = gpu.upload(&bits(&name(WeightKind::OProj), &[h, hq_full * d], Sharding::Cols(r * q_rows..(r + 1) * q_rows))?)?;
            let i = dims.inter;
            let w_gu = gpu.alloc(2 * i * h * T_BYTES)?;
            gpu.write(&w_gu, 0, &bits(&name(WeightKind::GateProj), &[inter_full, h], Sharding::Rows(r * i..(r + 1) * i))?)?;
            gpu.write(&w_gu, i * h * T_BYTES, &bits(&name(WeightKind::UpProj), &[inter_full, h], Sharding::Rows(r * i..(r + 1) * i))?)?;
            let w_down = gpu.upload(&bits(&name(WeightKind::DownProj), &[h, inter_full], Sharding::Cols(r * i..(r + 1) * i))?)?;
            layers.push(LayerWeights { in_norm, w_qkv, b_qkv, w_o, post_norm, w_gu, w_down });
        }
        let embed = gpu.upload(&bits(&WeightKind::Embedding.hf_name(0), &[vocab, h], Sharding::Full)?)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(gpu.upload(&bits(&WeightKind::LmHead.hf_name(0), &[vocab, h], Sharding::Rows(dims.v0..dims.v1))?)?)
        };
        let final_norm = gpu.upload(&f32s(&WeightKind::FinalNorm.hf_name(0), &[h], Sharding::Full)?)?;
        Ok(Weights {
            embed,
            lm_head,
            final_norm,
            layers,
            bytes: gpu.allocated - start,
            read_per_step: dims.weight_bytes_per_step(),
        })
    }

    fn lm_head_ptr(&self, dims: &Dims) -> u64 {
        match &self.lm_head {
            Some(b) => b.ptr,
            None => self.embed.at(dims.v0 * dims.hidden * T_BYTES),
        }
    }
}

/// Activation, KV-cache and scratch buffers for `slots` samples of up to `max_len` positions and
/// prefill passes of up to `max_rows` tokens.
pub struct Buffers {
    pub slots: usize,
    pub max_len: usize,
    q_chunk: usize,
    pub n_splits: usize,
    pub split_len: usize,
    resid: Buf,
    xnorm: Buf,
    qkv: Buf,
    q: Buf,
    attn: Buf,
    o: Buf,
    gu: Buf,
    act: Buf,
    down: Buf,
    k_cache: Buf,
    v_cache: Buf,
    scores: Buf,
    probs: Buf,
    part_ml: Buf,
    part_acc: Buf,
    attn_counters: Buf,
    logits: Buf,
    pair: Buf,
    gathered: Buf,
    pub tokens: Buf,
    dec_pos: Buf,
    dec_slot: Buf,
    row_pos: Buf,
    row_slot: Buf,
    prompt: Buf,
    pub kv_bytes: usize,
    pub workspace_bytes: usize,
}

impl Buffers {
    /// `attn_blocks`: decode attention blocks that run at once (SMs × blocks per SM).
    /// `split`: positions per split instead of the computed ones (rounded up to 16).
    pub fn new(gpu: &mut Gpu, dims: &Dims, slots: usize, max_len: usize, max_rows: usize, attn_blocks: usize, split: Option<usize>) -> Result<Buffers, CudaError> {
        let (h, d) = (dims.hidden, dims.d);
        let t = |n: usize| n * T_BYTES;
        let rows = max_rows.max(slots);
        let q_chunk = (SCORES_BUDGET / (dims.hkv * max_len * (4 + T_BYTES))).clamp(16, MAX_Q_CHUNK);
        // Decode attention: about one wave of (kv head, split, sample) blocks at the longest
        // context, two per SM by default. Finer splits made each block's fixed cost (loading q,
        // merging the warps' softmax states) dominate, and the merge walk more partial results.
        let per_wave = attn_blocks.max(1);
        let split_len = match split {
            Some(s) => s.next_multiple_of(16),
            None => (max_len * dims.hkv * slots).div_ceil(per_wave).next_multiple_of(16).max(64),
        };
        let n_splits = max_len.div_ceil(split_len);
        let start = gpu.allocated;
        let kv_elems = dims.layers * slots * dims.hkv * max_len * d;
        let k_cache = gpu.alloc(t(kv_elems))?;
        let v_cache = gpu.alloc(t(kv_elems))?;
        let kv_bytes = gpu.allocated - start;
        let ws_start = gpu.allocated;
        let b = Buffers {
            slots,
            max_len,
            q_chunk,
            n_splits,
            split_len,
            resid: gpu.alloc(rows * h * 4)?,
            xnorm: gpu.alloc(t(rows * h))?,
            qkv: gpu.alloc(rows * dims.qkv() * 4)?,
            q: gpu.alloc(t(dims.hq * rows * d))?,
            attn: gpu.alloc(t(rows * dims.hq * d))?,
            o: gpu.alloc(t(rows * h))?,
            gu: gpu.alloc(t(rows * 2 * dims.inter))?,
            act: gpu.alloc(t(rows * dims.inter))?,
            down: gpu.alloc(t(rows * h))?,
            k_cache,
            v_cache,
            scores: gpu.alloc(dims.hkv * q_chunk * max_len * 4)?,
            probs: gpu.alloc(t(dims.hkv * q_chunk * max_len))?,
            part_ml: gpu.alloc(slots * dims.hq * n_splits * 2 * 4)?,
            part_acc: gpu.alloc(slots * dims.hq * n_splits * d * 4)?,
            // decode_attn_pipe's finished-split count per (sample, KV head); its last block resets it.
            attn_counters: gpu.alloc(slots * dims.hkv * 4)?,
            logits: gpu.alloc(slots * dims.v_local() * 4)?,
            pair: gpu.alloc(slots * 2 * 4)?,
            gathered: gpu.alloc(dims.world * slots * 2 * 4)?,
            tokens: gpu.alloc(slots * 4)?,
            dec_pos: gpu.alloc(slots * 4)?,
            dec_slot: gpu.upload(&(0..slots as i32).collect::<Vec<i32>>())?,
            row_pos: gpu.alloc(rows * 4)?,
            row_slot: gpu.alloc(rows * 4)?,
            prompt: gpu.alloc(rows * 4)?,
            kv_bytes,
            workspace_bytes: 0,
        };
        let mut b = b;
        b.workspace_bytes = gpu.allocated - ws_start;
        Ok(b)
    }

    /// KV-cache bytes one decode step reads at context length `len` (every layer, K and V).
    pub fn kv_read_bytes(&self, dims: &Dims, len: usize, samples: usize) -> usize {
        2 * dims.layers * samples * dims.hkv * len * dims.d * T_BYTES
    }
}

/// The decode step's parts, for the per-op time breakdown (see `Probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Embedding,
    Norm,
    QkvGemm,
    QkvRope,
    Attention,
    OGemm,
    AllReduce,
    GateUpGemm,
    Silu,
    DownGemm,
    LmHead,
    Argmax,
    End,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Embedding => "embedding",
            Op::Norm => "rmsnorm",
            Op::QkvGemm => "qkv_gemm",
            Op::QkvRope => "qkv_bias_rope",
            Op::Attention => "attention",
            Op::OGemm => "o_gemm",
            Op::AllReduce => "nccl_all_reduce",
            Op::GateUpGemm => "gate_up_gemm",
            Op::Silu => "silu_mul",
            Op::DownGemm => "down_gemm",
            Op::LmHead => "lm_head_gemm",
            Op::Argmax => "argmax_gather_select",
            Op::End => "end",
        }
    }
}

/// CUDA events recorded at every op boundary of an eager decode step; the time between an op's
/// event and the next one is that op's (events add a little launch overhead of their own).
pub struct Probe {
    pool: Vec<cudarc::driver::CudaEvent>,
    marks: std::cell::RefCell<Vec<(Op, usize)>>,
}

impl Probe {
    pub fn new(gpu: &Gpu, events: usize) -> Result<Probe, CudaError> {
        Ok(Probe { pool: (0..events).map(|_| gpu.event()).collect::<Result<_, _>>()?, marks: Default::default() })
    }

    /// How many marks each op has in one step.
    pub fn counts(&self) -> Vec<(Op, usize)> {
        let marks = self.marks.borrow();
        let mut out: Vec<(Op, usize)> = Vec::new();
        for (op, _) in marks.iter() {
            match out.iter_mut().find(|(o, _)| o == op) {
                Some((_, c)) => *c += 1,
                None => out.push((*op, 1)),
            }
        }
        out
    }

    /// Forgets the recorded marks (the events are reused).
    pub fn reset(&self) {
        self.marks.borrow_mut().clear();
    }

    /// Microseconds per op over the recorded marks (call after the stream synchronized).
    pub fn totals_us(&self) -> Result<Vec<(Op, f64)>, CudaError> {
        let marks = self.marks.borrow();
        let mut out: Vec<(Op, f64)> = Vec::new();
        for w in marks.windows(2) {
            let ms = self.pool[w[0].1].elapsed_ms(&self.pool[w[1].1]).map_err(|e| CudaError::Driver(format!("cuEventElapsedTime: {e}")))?;
            match out.iter_mut().find(|(op, _)| *op == w[0].0) {
                Some((_, t)) => *t += ms as f64 * 1e3,
                None => out.push((w[0].0, ms as f64 * 1e3)),
            }
        }
        Ok(out)
    }
}

/// One forward pass over `n` rows. Prefill: one sample's prompt (rows = its tokens). Decode: one
/// row per sample (row b = slot b). `last_rows` selects the rows that reach the LM head.
pub struct Model<'a> {
    pub gpu: &'a Gpu,
    pub nccl: &'a Nccl,
    pub dims: &'a Dims,
    pub w: &'a Weights,
    pub b: &'a Buffers,
    pub dtype: Dtype,
    pub eps: f32,
    pub theta: f32,
    /// Which decode-sized linear layers (≤ GEMV_MAX_ROWS rows) go through gemv.cu instead of cuBLAS.
    pub gemv: GemvOps,
    /// Which decode attention kernel to prefer (each falls back where its constraints fail).
    pub attention: DecodeAttention,
    /// When set, an event at every op boundary (eager steps only, never in a graph).
    pub probe: Option<&'a Probe>,
}

/// The decode attention kernels: decode.cu's decode_attn_sk (the default: scores, then values;
/// head_dim 64 or 128, group ≤ 8, split ≤ 512 positions), decode.cu's decode_attn_pipe (the same
/// arithmetic over tiles copied asynchronously, any split length: the default's fallback for long
/// splits; `merge`: its last block per KV head combines the splits, else decode_attn_merge does),
/// decode.cu's decode_attn_fast (head_dim 8..128, group ≤ 8), attention.cu's tiled
/// decode_attn_partial (any shape). Each falls back to the next that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeAttention {
    Pipelined { merge: bool },
    ScoresFirst,
    Fast,
    Tiled,
}

impl DecodeAttention {
    /// The kernel that runs for this shape: the preference, or the next one down whose constraints hold.
    pub fn resolve(self, d: usize, group: usize, split_len: usize) -> DecodeAttention {
        let pipe = matches!(d, 64 | 128) && (1..=8).contains(&group);
        let sk = pipe && split_len <= SK_MAX_SPLIT && split_len % 4 == 0;
        let fast = matches!(d, 8 | 16 | 32 | 64 | 128) && (1..=8).contains(&group);
        match self {
            DecodeAttention::Pipelined { merge } if pipe => DecodeAttention::Pipelined { merge },
            DecodeAttention::Pipelined { .. } | DecodeAttention::ScoresFirst if sk => DecodeAttention::ScoresFirst,
            // Splits longer than decode_attn_sk takes (contexts past ~15K at TP=1 on an H200):
            // decode_attn_pipe, measured 2.0x faster than decode_attn_fast there (session 5).
            DecodeAttention::ScoresFirst if pipe => DecodeAttention::Pipelined { merge: false },
            DecodeAttention::Pipelined { .. } | DecodeAttention::ScoresFirst | DecodeAttention::Fast if fast => DecodeAttention::Fast,
            _ => DecodeAttention::Tiled,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            DecodeAttention::Pipelined { merge: true } => "decode.cu decode_attn_pipe (merge in its last block)",
            DecodeAttention::Pipelined { merge: false } => "decode.cu decode_attn_pipe + decode_attn_merge",
            DecodeAttention::ScoresFirst => "decode.cu decode_attn_sk",
            DecodeAttention::Fast => "decode.cu decode_attn_fast",
            DecodeAttention::Tiled => "attention.cu decode_attn_partial (tiled)",
        }
    }
}

/// decode.cu's SK_MAX_SPLIT and SK_WARPS.
const SK_MAX_SPLIT: usize = 512;
const SK_WARPS: usize = 8;

/// decode.cu's decode_attn_sk kernels by GQA group size, for head_dim 64 and 128.
const DECODE_SK: [[&str; 2]; 8] = [
    ["decode_attn_sk_g1_d64", "decode_attn_sk_g1_d128"],
    ["decode_attn_sk_g2_d64", "decode_attn_sk_g2_d128"],
    ["decode_attn_sk_g3_d64", "decode_attn_sk_g3_d128"],
    ["decode_attn_sk_g4_d64", "decode_attn_sk_g4_d128"],
    ["decode_attn_sk_g5_d64", "decode_attn_sk_g5_d128"],
    ["decode_attn_sk_g6_d64", "decode_attn_sk_g6_d128"],
    ["decode_attn_sk_g7_d64", "decode_attn_sk_g7_d128"],
    ["decode_attn_sk_g8_d64", "decode_attn_sk_g8_d128"],
];

/// decode.cu's decode_attn_pipe kernels by GQA group size, for head_dim 64 and 128.
const DECODE_PIPE: [[&str; 2]; 8] = [
    ["decode_attn_pipe_g1_d64", "decode_attn_pipe_g1_d128"],
    ["decode_attn_pipe_g2_d64", "decode_attn_pipe_g2_d128"],
    ["decode_attn_pipe_g3_d64", "decode_attn_pipe_g3_d128"],
    ["decode_attn_pipe_g4_d64", "decode_attn_pipe_g4_d128"],
    ["decode_attn_pipe_g5_d64", "decode_attn_pipe_g5_d128"],
    ["decode_attn_pipe_g6_d64", "decode_attn_pipe_g6_d128"],
    ["decode_attn_pipe_g7_d64", "decode_attn_pipe_g7_d128"],
    ["decode_attn_pipe_g8_d64", "decode_attn_pipe_g8_d128"],
];
/// decode.cu's PT_STAGES and PT_TILE: decode_attn_pipe's shared memory is
/// PT_STAGES·2·PT_TILE·head_dim elements of K/V plus (group·head_dim + group·PT_TILE + group) f32.
const PT_STAGES: usize = 2;
const PT_TILE: usize = 64;

/// decode.cu's decode_attn_fast kernels by GQA group size.
const DECODE_FAST: [&str; 8] = [
    "decode_attn_fast_g1", "decode_attn_fast_g2", "decode_attn_fast_g3", "decode_attn_fast_g4",
    "decode_attn_fast_g5", "decode_attn_fast_g6", "decode_attn_fast_g7", "decode_attn_fast_g8",
];

/// The linear layers of a step, for choosing gemv.cu or cuBLAS per projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linear {
    Qkv,
    O,
    GateUp,
    Down,
    LmHead,
}

impl Linear {
    pub const ALL: [Linear; 5] = [Linear::Qkv, Linear::O, Linear::GateUp, Linear::Down, Linear::LmHead];

    pub fn name(self) -> &'static str {
        match self {
            Linear::Qkv => "qkv",
            Linear::O => "o",
            Linear::GateUp => "gate_up",
            Linear::Down => "down",
            Linear::LmHead => "lm_head",
        }
    }
}

/// A TPPROF_CUDA_GEMV name that is no projection.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{0}` is not a projection: use 1/all, 0/none or a comma list of {names}", names = Linear::ALL.map(Linear::name).join(", "))]
pub struct UnknownProjection(pub String);

/// The set of projections that run on gemv.cu in decode steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GemvOps(u8);

impl GemvOps {
    pub const NONE: GemvOps = GemvOps(0);

    pub fn all() -> GemvOps {
        Linear::ALL.iter().fold(GemvOps::NONE, |s, &l| s.with(l))
    }

    pub fn with(self, l: Linear) -> GemvOps {
        GemvOps(self.0 | 1 << l as u8)
    }

    pub fn has(self, l: Linear) -> bool {
        self.0 & (1 << l as u8) != 0
    }

    /// TPPROF_CUDA_GEMV's value: "1" or "all", "0" or "none", or a comma list of projection names
    /// (qkv, o, gate_up, down, lm_head).
    pub fn parse(v: &str) -> Result<GemvOps, UnknownProjection> {
        match v.trim() {
            "1" | "all" => return Ok(GemvOps::all()),
            "0" | "none" | "" => return Ok(GemvOps::NONE),
            _ => {}
        }
        v.split(',').map(str::trim).try_fold(GemvOps::NONE, |set, name| {
            Linear::ALL.iter().find(|l| l.name() == name).map(|&l| set.with(l)).ok_or_else(|| UnknownProjection(name.to_string()))
        })
    }

    /// The projections in the set, e.g. ["o", "down"].
    pub fn names(self) -> Vec<&'static str> {
        Linear::ALL.iter().filter(|&&l| self.has(l)).map(|l| l.name()).collect()
    }
}

/// gemv.cu's GEMV_MAX_ROWS.
const GEMV_MAX_ROWS: usize = 8;

enum Pass {
    /// One sample's prompt of `n` tokens at positions 0..n, into cache slot `slot`.
    Prefill { n: usize, slot: usize },
    /// One new token for each of `n` samples (slot = row), positions in dec_pos.
    Decode { n: usize },
}

impl Pass {
    fn rows(&self) -> usize {
        match *self {
            Pass::Prefill { n, .. } | Pass::Decode { n } => n,
        }
    }
}

impl Model<'_> {
    fn mark(&self, op: Op) -> Result<(), CudaError> {
        if let Some(p) = self.probe {
            let mut marks = p.marks.borrow_mut();
            let i = marks.len();
            let ev = p.pool.get(i).ok_or_else(|| CudaError::Internal("probe event pool exhausted".into()))?;
            // EXTERNAL: inside a stream capture a plain record only orders the graph's nodes; this
            // flag makes it a real event-record node that timing can read after each launch.
            // SAFETY: the event and the stream belong to this GPU's context and are alive.
            unsafe {
                cudarc::driver::sys::cuEventRecordWithFlags(ev.cu_event(), self.gpu.stream.cu_stream(), cudarc::driver::sys::CUevent_record_flags::CU_EVENT_RECORD_EXTERNAL as u32)
                    .result()
                    .map_err(|e| CudaError::Driver(format!("cuEventRecordWithFlags: {e}")))?;
            }
            marks.push((op, i));
        }
        Ok(())
    }

    fn t(&self) -> El {
        El::T(self.dtype)
    }

    /// y (n × out) = x (n × in) · Wᵀ for a Hugging Face (out, in) weight; y is f32 or T. A few rows
    /// (decode) may go through gemv.cu (the projections in `gemv`); otherwise cuBLAS.
    #[allow(clippy::too_many_arguments)]
    fn linear(&self, op: Linear, n: usize, out: usize, k: usize, x: u64, w: u64, y: u64, y_el: El) -> Result<(), CudaError> {
        let aligned = (x | w) % 16 == 0 && k % 8 == 0;
        if self.gemv.has(op) && n <= GEMV_MAX_ROWS && aligned {
            let blocks = out.div_ceil(8) as u32;
            return self.gpu.launch("gemv", (blocks, 1, 1), 256, 0, &[
                Arg::Ptr(w), Arg::Ptr(x), Arg::Ptr(y), Arg::I32(out as i32), Arg::I32(k as i32), Arg::I32(n as i32),
                Arg::I32(k as i32), Arg::I32(out as i32), Arg::I32((y_el == El::F32) as i32),
            ]);
        }
        let t = self.t();
        self.gpu.gemm_nt(n, out, k, (x, t, k), (w, t, k), (y, y_el, out), 1.0, None)
    }

    /// Uploads a prompt's tokens and positions for `prefill` (host work; not capturable).
    pub fn stage_prompt(&self, prompt: &[i32], slot: usize) -> Result<(), CudaError> {
        let n = prompt.len();
        let pos: Vec<i32> = (0..n as i32).collect();
        let slots = vec![slot as i32; n];
        self.gpu.write(&self.b.prompt, 0, prompt)?;
        self.gpu.write(&self.b.row_pos, 0, &pos)?;
        self.gpu.write(&self.b.row_slot, 0, &slots)?;
        Ok(())
    }

    /// Sets each sample's next position (its prompt length) before decoding.
    pub fn stage_decode(&self, prompt_lens: &[usize]) -> Result<(), CudaError> {
        let pos: Vec<i32> = prompt_lens.iter().map(|&n| n as i32).collect();
        self.gpu.write(&self.b.dec_pos, 0, &pos)
    }

    /// Prefill of a staged prompt (stage_prompt) of `n` tokens into `slot`; leaves the first token in
    /// tokens[slot] and this rank's logits of it in `logits` row 0.
    pub fn prefill(&self, n: usize, slot: usize) -> Result<(), CudaError> {
        let d = self.dims;
        self.gpu.launch("embedding", (n as u32, 1, 1), 256, 0, &[
            Arg::Ptr(self.w.embed.ptr), Arg::Ptr(self.b.prompt.ptr), Arg::Ptr(self.b.resid.ptr), Arg::I32(n as i32), Arg::I32(d.hidden as i32),
        ])?;
        self.layers(&Pass::Prefill { n, slot })?;
        // Only the last prompt token reaches the LM head.
        let last = n - 1;
        self.final_head(last, 1, Some(self.b.tokens.at(slot * 4)), false)
    }

    /// One decode step for `n` samples: tokens (device) at dec_pos → next tokens, dec_pos advanced.
    /// Pure device work on fixed buffers: capturable into a CUDA graph.
    pub fn decode_step(&self, n: usize) -> Result<(), CudaError> {
        let d = self.dims;
        self.mark(Op::Embedding)?;
        self.gpu.launch("embedding", (n as u32, 1, 1), 256, 0, &[
            Arg::Ptr(self.w.embed.ptr), Arg::Ptr(self.b.tokens.ptr), Arg::Ptr(self.b.resid.ptr), Arg::I32(n as i32), Arg::I32(d.hidden as i32),
        ])?;
        self.layers(&Pass::Decode { n })?;
        self.final_head(0, n, None, true)?;
        self.mark(Op::End)
    }

    fn layers(&self, pass: &Pass) -> Result<(), CudaError> {
        let d = self.dims;
        let n = pass.rows();
        let t = self.t();
        let (row_pos, row_slot) = match pass {
            Pass::Prefill { .. } => (self.b.row_pos.ptr, self.b.row_slot.ptr),
            Pass::Decode { .. } => (self.b.dec_pos.ptr, self.b.dec_slot.ptr),
        };
        for (l, lw) in self.w.layers.iter().enumerate() {
            // resid += previous layer's MLP output; xnorm = input_norm(resid)
            let delta = if l == 0 { 0 } else { self.b.down.ptr };
            self.mark(Op::Norm)?;
            self.add_rmsnorm(self.b.resid.ptr, delta, lw.in_norm.ptr, self.b.xnorm.ptr, n)?;
            // qkv = xnorm · W_qkvᵀ (f32 out), then bias + RoPE, q → (hq, n, d), k/v → cache
            self.mark(Op::QkvGemm)?;
            self.linear(Linear::Qkv, n, d.qkv(), d.hidden, self.b.xnorm.ptr, lw.w_qkv.ptr, self.b.qkv.ptr, El::F32)?;
            let (kc, vc) = self.cache_layer(l);
            self.mark(Op::QkvRope)?;
            self.gpu.launch("qkv_rope", (n as u32, (d.hq + 2 * d.hkv) as u32, 1), 64, 0, &[
                Arg::Ptr(self.b.qkv.ptr), Arg::Ptr(lw.b_qkv.ptr), Arg::Ptr(self.b.q.ptr), Arg::Ptr(kc), Arg::Ptr(vc),
                Arg::Ptr(row_slot), Arg::Ptr(row_pos), Arg::I32(n as i32), Arg::I32(d.hq as i32), Arg::I32(d.hkv as i32),
                Arg::I32(d.d as i32), Arg::I32(self.b.max_len as i32), Arg::F32(self.theta),
            ])?;
            self.mark(Op::Attention)?;
            match pass {
                Pass::Prefill { n, slot } => self.prefill_attention(*n, *slot, kc, vc)?,
                Pass::Decode { n } => self.decode_attention(*n, kc, vc)?,
            }
            // o = attn · W_oᵀ (partial over this rank's heads), summed over ranks
            self.mark(Op::OGemm)?;
            self.linear(Linear::O, n, d.hidden, d.hq * d.d, self.b.attn.ptr, lw.w_o.ptr, self.b.o.ptr, t)?;
            self.mark(Op::AllReduce)?;
            self.nccl.all_reduce(self.b.o.ptr, n * d.hidden, self.dtype)?;
            self.mark(Op::Norm)?;
            self.add_rmsnorm(self.b.resid.ptr, self.b.o.ptr, lw.post_norm.ptr, self.b.xnorm.ptr, n)?;
            // MLP: down(silu(gate) * up), summed over ranks
            self.mark(Op::GateUpGemm)?;
            self.linear(Linear::GateUp, n, 2 * d.inter, d.hidden, self.b.xnorm.ptr, lw.w_gu.ptr, self.b.gu.ptr, t)?;
            self.mark(Op::Silu)?;
            let total = n * d.inter;
            self.gpu.launch("silu_mul", (total.div_ceil(256).clamp(1, 65535) as u32, 1, 1), 256, 0, &[
                Arg::Ptr(self.b.gu.ptr), Arg::Ptr(self.b.act.ptr), Arg::I32(n as i32), Arg::I32(d.inter as i32),
            ])?;
            self.mark(Op::DownGemm)?;
            self.linear(Linear::Down, n, d.hidden, d.inter, self.b.act.ptr, lw.w_down.ptr, self.b.down.ptr, t)?;
            self.mark(Op::AllReduce)?;
            self.nccl.all_reduce(self.b.down.ptr, n * d.hidden, self.dtype)?;
        }
        Ok(())
    }

    /// resid[row0..row0+n] += down; xnorm = final_norm(resid); logits = xnorm · LM headᵀ; global
    /// argmax → tokens (into `token_dst`, or `tokens` with positions advanced when `advance`).
    fn final_head(&self, row0: usize, n: usize, token_dst: Option<u64>, advance: bool) -> Result<(), CudaError> {
        let d = self.dims;
        let h = d.hidden;
        self.mark(Op::Norm)?;
        self.add_rmsnorm(self.b.resid.at(row0 * h * 4), self.b.down.at(row0 * h * T_BYTES), self.w.final_norm.ptr, self.b.xnorm.ptr, n)?;
        let v = d.v_local();
        self.mark(Op::LmHead)?;
        self.linear(Linear::LmHead, n, v, h, self.b.xnorm.ptr, self.w.lm_head_ptr(d), self.b.logits.ptr, El::F32)?;
        self.mark(Op::Argmax)?;
        self.gpu.launch("argmax_rows", (n as u32, 1, 1), 1024, 0, &[
            Arg::Ptr(self.b.logits.ptr), Arg::I32(n as i32), Arg::I32(v as i32), Arg::I32(d.v0 as i32), Arg::Ptr(self.b.pair.ptr),
        ])?;
        let gathered = if d.world > 1 {
            self.nccl.all_gather_bytes(self.b.pair.ptr, self.b.gathered.ptr, n * 2 * 4)?;
            self.b.gathered.ptr
        } else {
            self.b.pair.ptr
        };
        let dst = token_dst.unwrap_or(self.b.tokens.ptr);
        let pos = if advance { self.b.dec_pos.ptr } else { 0 };
        self.gpu.launch("select_tokens", ((n as u32).div_ceil(128), 1, 1), 128, 0, &[
            Arg::Ptr(gathered), Arg::I32(d.world as i32), Arg::I32(n as i32), Arg::Ptr(dst), Arg::Ptr(pos),
        ])
    }

    fn add_rmsnorm(&self, resid: u64, delta: u64, w: u64, out: u64, n: usize) -> Result<(), CudaError> {
        // One block per row: a decode step has only a few rows, so each block takes 1024 threads
        // (a few elements each) rather than 256 threads walking the row serially.
        let block = if n <= GEMV_MAX_ROWS { 1024 } else { 256 };
        self.gpu.launch("add_rmsnorm", (n as u32, 1, 1), block, 0, &[
            Arg::Ptr(resid), Arg::Ptr(delta), Arg::Ptr(w), Arg::Ptr(out), Arg::I32(n as i32), Arg::I32(self.dims.hidden as i32), Arg::F32(self.eps),
        ])
    }

    /// Layer l's K and V caches: (slots, hkv, max_len, d) each.
    fn cache_layer(&self, l: usize) -> (u64, u64) {
        let per = self.b.slots * self.dims.hkv * self.b.max_len * self.dims.d * T_BYTES;
        (self.b.k_cache.at(l * per), self.b.v_cache.at(l * per))
    }

    /// Causal attention of one prompt (slot row_slot[0]) in query chunks: per chunk and per query
    /// head of a GQA group, S = Q·Kᵀ/√d (cuBLAS, f32, batched over kv heads), masked softmax, O = P·V.
    /// The score buffer holds one chunk: hkv × q_chunk × kv_len f32 (bounded by SCORES_BUDGET).
    fn prefill_attention(&self, n: usize, slot: usize, kc: u64, vc: u64) -> Result<(), CudaError> {
        let dm = self.dims;
        let (d, hkv, group) = (dm.d, dm.hkv, dm.group());
        let t = self.t();
        let scale = 1.0 / (d as f32).sqrt();
        let slot_stride = hkv * self.b.max_len * d; // elements between kv heads' caches
        // The prompt's cache: slot `slot` of the layer's (slots, hkv, max_len, d) cache.
        let (kc, vc) = (kc + (slot * slot_stride * T_BYTES) as u64, vc + (slot * slot_stride * T_BYTES) as u64);
        let mut q0 = 0;
        while q0 < n {
            let qc = self.b.q_chunk.min(n - q0);
            let kv_len = q0 + qc;
            for j in 0..group {
                // Query head h = g*group + j of every kv head g; q is (hq, n, d).
                let q_ptr = self.b.q.at(((j * n) + q0) * d * T_BYTES);
                self.gpu.gemm_nt(
                    qc, kv_len, d,
                    (q_ptr, t, d),
                    (kc, t, d),
                    (self.b.scores.ptr, El::F32, kv_len),
                    scale,
                    Some((hkv, (group * n * d) as i64, (self.b.max_len * d) as i64, (qc * kv_len) as i64)),
                )?;
                self.gpu.launch("causal_softmax", ((hkv * qc) as u32, 1, 1), 256, 0, &[
                    Arg::Ptr(self.b.scores.ptr), Arg::Ptr(self.b.probs.ptr), Arg::I32((hkv * qc) as i32), Arg::I32(qc as i32), Arg::I32(kv_len as i32), Arg::I32(q0 as i32),
                ])?;
                // attn rows q0.., columns of head h: row-major (n, hq*d)
                let o_ptr = self.b.attn.at((q0 * dm.hq * d + j * d) * T_BYTES);
                self.gpu.gemm_nn(
                    qc, d, kv_len,
                    (self.b.probs.ptr, t, kv_len),
                    (vc, t, d),
                    (o_ptr, t, dm.hq * d),
                    1.0,
                    Some((hkv, (qc * kv_len) as i64, (self.b.max_len * d) as i64, (group * d) as i64)),
                )?;
            }
            q0 += qc;
        }
        Ok(())
    }

    /// Flash-decoding over each sample's cache: partial softmax per (kv head, split, sample), then a
    /// combine into attn (n, hq*d).
    fn decode_attention(&self, n: usize, kc: u64, vc: u64) -> Result<(), CudaError> {
        let dm = self.dims;
        let group = dm.group();
        let split = self.b.split_len;
        // Dynamic shared memory: decode_attn_pipe see PT_STAGES; in f32: decode_attn_sk max(group × (head_dim + split) + 2 group,
        // 8 warps × group × head_dim); decode_attn_fast 8 warps × group × (head_dim + 2);
        // attention.cu's tiled kernel group × (head_dim + 35).
        let kernel = self.attention.resolve(dm.d, group, split);
        if let DecodeAttention::Pipelined { merge } = kernel {
            let shared = PT_STAGES * 2 * PT_TILE * dm.d * T_BYTES + (group * dm.d + group * PT_TILE + group) * 4;
            self.gpu.launch(DECODE_PIPE[group - 1][usize::from(dm.d == 128)], (dm.hkv as u32, self.b.n_splits as u32, n as u32), 256, shared as u32, &[
                Arg::Ptr(self.b.q.ptr), Arg::Ptr(kc), Arg::Ptr(vc), Arg::Ptr(self.b.dec_pos.ptr), Arg::Ptr(self.b.part_ml.ptr), Arg::Ptr(self.b.part_acc.ptr),
                Arg::Ptr(if merge { self.b.attn_counters.ptr } else { 0 }), Arg::Ptr(self.b.attn.ptr),
                Arg::I32(n as i32), Arg::I32(dm.hq as i32), Arg::I32(dm.hkv as i32), Arg::I32(dm.d as i32), Arg::I32(self.b.max_len as i32),
                Arg::I32(self.b.split_len as i32), Arg::F32(1.0 / (dm.d as f32).sqrt()),
            ])?;
            if merge {
                return Ok(());
            }
        }
        let partial = match kernel {
            DecodeAttention::Pipelined { .. } => None, // launched above; the merge kernel follows
            DecodeAttention::ScoresFirst => {
                let floats = (group * (dm.d + split) + 2 * group).max(SK_WARPS * group * dm.d);
                Some((DECODE_SK[group - 1][usize::from(dm.d == 128)], 256, (floats * 4) as u32))
            }
            DecodeAttention::Fast => Some((DECODE_FAST[group - 1], 256, (8 * group * (dm.d + 2) * 4) as u32)),
            DecodeAttention::Tiled => Some(("decode_attn_partial", 128, (group * (dm.d + 35) * 4) as u32)),
        };
        if let Some((name, block, shared)) = partial {
            self.gpu.launch(name, (dm.hkv as u32, self.b.n_splits as u32, n as u32), block, shared, &[
                Arg::Ptr(self.b.q.ptr), Arg::Ptr(kc), Arg::Ptr(vc), Arg::Ptr(self.b.dec_pos.ptr), Arg::Ptr(self.b.part_ml.ptr), Arg::Ptr(self.b.part_acc.ptr),
                Arg::I32(n as i32), Arg::I32(dm.hq as i32), Arg::I32(dm.hkv as i32), Arg::I32(dm.d as i32), Arg::I32(self.b.max_len as i32),
                Arg::I32(self.b.split_len as i32), Arg::F32(1.0 / (dm.d as f32).sqrt()),
            ])?;
        }
        let merge = if dm.d % 4 == 0 { ("decode_attn_merge", 256) } else { ("decode_attn_combine", 128) };
        self.gpu.launch(merge.0, (dm.hq as u32, n as u32, 1), merge.1, 0, &[
            Arg::Ptr(self.b.part_ml.ptr), Arg::Ptr(self.b.part_acc.ptr), Arg::Ptr(self.b.attn.ptr), Arg::I32(n as i32), Arg::I32(dm.hq as i32), Arg::I32(dm.d as i32), Arg::I32(self.b.n_splits as i32),
        ])
    }

    /// This rank's logits of the last LM-head pass, rows × v_local.
    pub fn read_logits(&self, rows: usize) -> Result<Vec<f32>, CudaError> {
        self.gpu.read::<f32>(self.b.logits.ptr, rows * self.dims.v_local())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_attention_falls_back_where_a_kernel_does_not_apply() {
        use DecodeAttention::*;
        let pipe = Pipelined { merge: true };
        assert_eq!(pipe.resolve(128, 5, 176), pipe);
        assert_eq!(pipe.resolve(64, 8, 4096), pipe, "no split limit: shared memory is per tile");
        assert_eq!(Pipelined { merge: false }.resolve(128, 1, 336), Pipelined { merge: false });
        assert_eq!(pipe.resolve(96, 5, 176), Tiled);
        assert_eq!(pipe.resolve(32, 5, 176), Fast);
        assert_eq!(pipe.resolve(128, 9, 64), Tiled);
        assert!(DECODE_PIPE.iter().enumerate().all(|(g, n)| n[0].contains(&format!("_g{}_d64", g + 1)) && n[1].contains(&format!("_g{}_d128", g + 1))));
        assert!(DECODE_PIPE.iter().flatten().all(|n| crate::engine::builtin::cuda::MODULES.iter().any(|m| m.kernels.iter().any(|(k, _)| k == n))));
        // decode.cu's own constants, as the host sizes the shared memory with them.
        let src = include_str!("kernels/decode.cu");
        assert!(src.contains(&format!("#define PT_STAGES {PT_STAGES}")) && src.contains(&format!("#define PT_TILE {PT_TILE}")));
        // qwen2.5-14b/32b at TP=2: head_dim 128, group 5.
        assert_eq!(ScoresFirst.resolve(128, 5, 176), ScoresFirst);
        assert_eq!(ScoresFirst.resolve(64, 7, 64), ScoresFirst);
        // Splits beyond decode_attn_sk's limit go to decode_attn_pipe (with the merge kernel); head_dim 8
        // (tiny) and groups above 8 further down.
        assert_eq!(ScoresFirst.resolve(128, 5, SK_MAX_SPLIT + 16), Pipelined { merge: false });
        assert_eq!(ScoresFirst.resolve(128, 5, 640), Pipelined { merge: false });
        assert_eq!(ScoresFirst.resolve(8, 2, 64), Fast);
        assert_eq!(ScoresFirst.resolve(128, 9, 64), Tiled);
        assert_eq!(Fast.resolve(128, 5, 176), Fast);
        assert_eq!(Fast.resolve(96, 5, 176), Tiled);
        assert_eq!(Tiled.resolve(128, 5, 176), Tiled);
        // The kernel tables cover every group size decode_attn_sk / decode_attn_fast accept.
        assert!(DECODE_SK.iter().enumerate().all(|(g, n)| n[0].contains(&format!("_g{}_d64", g + 1)) && n[1].contains(&format!("_g{}_d128", g + 1))));
        assert!(DECODE_SK.iter().flatten().all(|n| crate::engine::builtin::cuda::MODULES.iter().any(|m| m.kernels.iter().any(|(k, _)| k == n))));
    }

    #[test]
    fn gemv_ops_parse_names_and_reject_unknown_ones() {
        assert_eq!(GemvOps::parse("1").unwrap(), GemvOps::all());
        assert_eq!(GemvOps::parse("all").unwrap().names(), vec!["qkv", "o", "gate_up", "down", "lm_head"]);
        assert_eq!(GemvOps::parse("0").unwrap(), GemvOps::NONE);
        let s = GemvOps::parse("o, down").unwrap();
        assert!(s.has(Linear::O) && s.has(Linear::Down) && !s.has(Linear::Qkv) && !s.has(Linear::GateUp));
        assert_eq!(s.names(), vec!["o", "down"]);
        let e = GemvOps::parse("o,up").unwrap_err().to_string();
        assert!(e.contains("`up` is not a projection") && e.contains("gate_up"), "{e}");
    }

    #[test]
    fn dims_shard_like_the_cpu_engine() {
        let cfg = Config::preset("qwen2.5-14b").unwrap();
        let d = Dims::new(&cfg, 1, 2);
        assert_eq!((d.hq, d.hkv, d.d, d.inter), (20, 4, 128, 6912));
        assert_eq!((d.v0, d.v1), (76032, 152064));
        assert_eq!(d.qkv(), (20 + 8) * 128);
        assert_eq!(d.group(), 5);
        // 13.99 GB per step per rank for 14B at TP=2 (results/h200-cuda-engine.md).
        assert_eq!(d.weight_bytes_per_step(), 13_993_299_968);
        let tiny = Config::preset("tiny").unwrap();
        let t = Dims::new(&tiny, 3, 4);
        assert_eq!((t.hq, t.hkv, t.v0, t.v1), (2, 1, 384, 512));
    }
}
