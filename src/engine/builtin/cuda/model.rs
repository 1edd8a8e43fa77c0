//! The Qwen2 decoder on one GPU of a tensor-parallel group: weights (this rank's shard), the
//! activation and KV-cache buffers, prefill (causal attention on tensor cores, prefill.cu; or chunked
//! through cuBLAS) and the decode step
//! (one CUDA graph: embedding → layers → LM head → global argmax → next token, all on the device).
//!
//! Sharding is the cpu engine's, exactly: q/k/v/gate/up column-parallel, o/down row-parallel with an
//! all-reduce (NCCL), LM head vocab-parallel with a global argmax (NCCL all-gather of (max, index)).
//! Weights use the cpu engine's counter-based recipe (cpu/weights.rs), generated on the device by
//! init.cu, so both engines hold the same numbers (rounded to fp16/bf16 here).

use crate::engine::builtin::cpu::weights::{projection_scale, tensor_id, Shard, WeightKind, EMBEDDING_SCALE};
use crate::engine::config::Config;
use crate::engine::safetensors::{SafetensorsDir, Sharding};

use super::gpu::{Arg, Buf, DevAddr, DevSlice, GemmOut, Gpu, Half, Nccl};
use super::kernel::Kernel;
use super::{CudaError, Dtype};

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

    /// Device bytes of this rank's weights as `Weights` allocates them: every layer's shard, the
    /// final norm, the whole embedding, and the LM head shard unless tied to the embedding.
    pub fn resident_weight_bytes(&self, tied: bool) -> u64 {
        let (h, d) = (self.hidden as u128, self.d as u128);
        let (qkv, t) = (self.qkv() as u128, T_BYTES as u128);
        let per_layer = t * (qkv * h + h * self.hq as u128 * d + 3 * self.inter as u128 * h) + (qkv + 2 * h) * 4;
        let lm_head = if tied { 0 } else { t * self.v_local() as u128 * h };
        let total = self.layers as u128 * per_layer + h * 4 + t * self.vocab as u128 * h + lm_head;
        u64::try_from(total).unwrap_or(u64::MAX)
    }

    /// Device bytes of the K and V caches for `slots` samples of up to `max_len` positions.
    pub fn kv_cache_bytes(&self, slots: usize, max_len: usize) -> u64 {
        let elems = self.layers as u128 * slots as u128 * self.hkv as u128 * max_len as u128 * self.d as u128;
        u64::try_from(2 * elems * T_BYTES as u128).unwrap_or(u64::MAX)
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
    in_norm: Buf<f32>,   // (hidden)
    w_qkv: Buf<Half>,    // (qkv_local, hidden): q rows, then k rows, then v rows
    b_qkv: Buf<f32>,     // (qkv_local)
    w_o: Buf<Half>,      // (hidden, hq_local*d): row-parallel
    post_norm: Buf<f32>, // (hidden)
    w_gu: Buf<Half>,     // (2*inter_local, hidden): gate rows, then up rows
    w_down: Buf<Half>,   // (hidden, inter_local): row-parallel
}

pub struct Weights {
    embed: Buf<Half>,           // (vocab, hidden), full table on every rank
    lm_head: Option<Buf<Half>>, // (v_local, hidden) when untied; else rows [v0, v1) of embed
    final_norm: Buf<f32>,       // (hidden)
    layers: Vec<LayerWeights>,
    pub bytes: usize,
    /// Bytes one decode step reads from the weights (every layer, the LM head shard, B embedding rows).
    pub read_per_step: usize,
}

/// Generates one weight shard on the device with the cpu engine's recipe.
#[allow(clippy::too_many_arguments)]
fn init_t(
    gpu: &Gpu,
    dst: DevSlice<'_, Half>,
    rows: usize,
    cols: usize,
    row0: usize,
    col0: usize,
    full_cols: usize,
    seed: u64,
    tid: u64,
    scale: f32,
    offset: f32,
) -> Result<(), CudaError> {
    let n = rows * cols;
    if n > dst.len() {
        return Err(CudaError::Internal(format!("init_weight of {rows} × {cols} into a {}-element view", dst.len())));
    }
    let grid = n.div_ceil(256).clamp(1, 65535) as u32;
    // SAFETY: init_weight_T(T* dst, int rows, int cols, long long row0, long long col0, long long
    // full_cols, unsigned long long seed, unsigned long long tensor_id, float scale, float offset)
    // (init.cu) writes dst[0 .. rows × cols), which the view holds (checked above).
    unsafe {
        gpu.launch(
            Kernel::InitWeight,
            (grid, 1, 1),
            256,
            0,
            &[
                Arg::Ptr(dst.addr()),
                Arg::I32(rows as i32),
                Arg::I32(cols as i32),
                Arg::I64(row0 as i64),
                Arg::I64(col0 as i64),
                Arg::I64(full_cols as i64),
                Arg::U64(seed),
                Arg::U64(tid),
                Arg::F32(scale),
                Arg::F32(offset),
            ],
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn init_f32(
    gpu: &Gpu,
    dst: DevSlice<'_, f32>,
    cols: usize,
    col0: usize,
    full_cols: usize,
    seed: u64,
    tid: u64,
    scale: f32,
    offset: f32,
) -> Result<(), CudaError> {
    if cols > dst.len() {
        return Err(CudaError::Internal(format!("init_f32 of {cols} into a {}-element view", dst.len())));
    }
    let grid = cols.div_ceil(256).clamp(1, 65535) as u32;
    // SAFETY: init_f32(float* dst, int rows, int cols, ...) as init_weight_T (init.cu), one row:
    // writes dst[0 .. cols), which the view holds (checked above).
    unsafe {
        gpu.launch(
            Kernel::InitF32,
            (grid, 1, 1),
            256,
            0,
            &[
                Arg::Ptr(dst.addr()),
                Arg::I32(1),
                Arg::I32(cols as i32),
                Arg::I64(0),
                Arg::I64(col0 as i64),
                Arg::I64(full_cols as i64),
                Arg::U64(seed),
                Arg::U64(tid),
                Arg::F32(scale),
                Arg::F32(offset),
            ],
        )
    }
}

/// `need` bytes against the GPU's `free` of `total`: a one-line error naming both and the fix.
pub fn fits(what: &str, need: u64, free: u64, total: u64, fix: &str) -> Result<(), CudaError> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if need <= free {
        return Ok(());
    }
    let need = if need == u64::MAX { "more than 16 EiB".to_string() } else { format!("{:.1} GiB", gib(need)) };
    Err(CudaError::TooLarge(format!(
        "{what} need {need} on this rank's GPU, which has {:.1} GiB free of {:.1} GiB: {fix}",
        gib(free),
        gib(total)
    )))
}

impl Weights {
    /// Seeded random weights, generated on the device: decode speed does not depend on the values.
    pub fn random(gpu: &mut Gpu, cfg: &Config, dims: &Dims, seed: u64) -> Result<Weights, CudaError> {
        let (h, d) = (dims.hidden, dims.d);
        let (hq_full, hkv_full, inter_full) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size);
        let r = dims.rank;
        let start = gpu.allocated;
        let proj_h = projection_scale(h);
        let mut layers = Vec::with_capacity(dims.layers);
        for l in 0..dims.layers {
            let id = |k| tensor_id(l, k);
            let in_norm = gpu.alloc::<f32>(h)?;
            init_f32(gpu, in_norm.view(), h, 0, h, seed, id(WeightKind::InputNorm), 0.1, 1.0)?;
            let post_norm = gpu.alloc::<f32>(h)?;
            init_f32(gpu, post_norm.view(), h, 0, h, seed, id(WeightKind::PostAttentionNorm), 0.1, 1.0)?;

            let (q_rows, kv_rows) = (dims.hq * d, dims.hkv * d);
            let w_qkv = gpu.alloc::<Half>(dims.qkv() * h)?;
            init_t(gpu, w_qkv.view(), q_rows, h, r * q_rows, 0, h, seed, id(WeightKind::QProj), proj_h, 0.0)?;
            init_t(gpu, w_qkv.at(q_rows * h), kv_rows, h, r * kv_rows, 0, h, seed, id(WeightKind::KProj), proj_h, 0.0)?;
            init_t(
                gpu,
                w_qkv.at((q_rows + kv_rows) * h),
                kv_rows,
                h,
                r * kv_rows,
                0,
                h,
                seed,
                id(WeightKind::VProj),
                proj_h,
                0.0,
            )?;
            let b_qkv = gpu.alloc::<f32>(dims.qkv())?;
            init_f32(gpu, b_qkv.view(), q_rows, r * q_rows, hq_full * d, seed, id(WeightKind::QBias), 0.02, 0.0)?;
            init_f32(
                gpu,
                b_qkv.at(q_rows),
                kv_rows,
                r * kv_rows,
                hkv_full * d,
                seed,
                id(WeightKind::KBias),
                0.02,
                0.0,
            )?;
            init_f32(
                gpu,
                b_qkv.at(q_rows + kv_rows),
                kv_rows,
                r * kv_rows,
                hkv_full * d,
                seed,
                id(WeightKind::VBias),
                0.02,
                0.0,
            )?;

            let w_o = gpu.alloc::<Half>(h * q_rows)?;
            init_t(
                gpu,
                w_o.view(),
                h,
                q_rows,
                0,
                r * q_rows,
                hq_full * d,
                seed,
                id(WeightKind::OProj),
                projection_scale(hq_full * d),
                0.0,
            )?;

            let i = dims.inter;
            let w_gu = gpu.alloc::<Half>(2 * i * h)?;
            init_t(gpu, w_gu.view(), i, h, r * i, 0, h, seed, id(WeightKind::GateProj), proj_h, 0.0)?;
            init_t(gpu, w_gu.at(i * h), i, h, r * i, 0, h, seed, id(WeightKind::UpProj), proj_h, 0.0)?;
            let w_down = gpu.alloc::<Half>(h * i)?;
            init_t(
                gpu,
                w_down.view(),
                h,
                i,
                0,
                r * i,
                inter_full,
                seed,
                id(WeightKind::DownProj),
                projection_scale(inter_full),
                0.0,
            )?;
            layers.push(LayerWeights { in_norm, w_qkv, b_qkv, w_o, post_norm, w_gu, w_down });
        }
        let embed = gpu.alloc::<Half>(dims.vocab * h)?;
        init_t(
            gpu,
            embed.view(),
            dims.vocab,
            h,
            0,
            0,
            h,
            seed,
            tensor_id(0, WeightKind::Embedding),
            EMBEDDING_SCALE,
            0.0,
        )?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            let b = gpu.alloc::<Half>(dims.v_local() * h)?;
            init_t(
                gpu,
                b.view(),
                dims.v_local(),
                h,
                dims.v0,
                0,
                h,
                seed,
                tensor_id(0, WeightKind::LmHead),
                proj_h,
                0.0,
            )?;
            Some(b)
        };
        let final_norm = gpu.alloc::<f32>(h)?;
        init_f32(gpu, final_norm.view(), h, 0, h, seed, tensor_id(0, WeightKind::FinalNorm), 0.1, 1.0)?;
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
    pub fn from_safetensors(
        gpu: &mut Gpu,
        dir: &SafetensorsDir,
        cfg: &Config,
        dims: &Dims,
        dtype: Dtype,
    ) -> Result<Weights, CudaError> {
        let (h, d) = (dims.hidden, dims.d);
        let (hq_full, hkv_full, inter_full, vocab) =
            (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.vocab_size);
        let r = dims.rank;
        let start = gpu.allocated;
        let bad = |e: crate::engine::safetensors::WeightsError| CudaError::Invalid(e.to_string());
        // fp16 / bf16 bits of the engine's dtype (written as `Half`s).
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
            let w_qkv = gpu.alloc::<Half>(dims.qkv() * h)?;
            gpu.write(
                &w_qkv,
                0,
                Half::from_bits(&bits(
                    &name(WeightKind::QProj),
                    &[hq_full * d, h],
                    Sharding::Rows(r * q_rows..(r + 1) * q_rows),
                )?),
            )?;
            gpu.write(
                &w_qkv,
                q_rows * h,
                Half::from_bits(&bits(
                    &name(WeightKind::KProj),
                    &[hkv_full * d, h],
                    Sharding::Rows(r * kv_rows..(r + 1) * kv_rows),
                )?),
            )?;
            gpu.write(
                &w_qkv,
                (q_rows + kv_rows) * h,
                Half::from_bits(&bits(
                    &name(WeightKind::VProj),
                    &[hkv_full * d, h],
                    Sharding::Rows(r * kv_rows..(r + 1) * kv_rows),
                )?),
            )?;
            let mut bias =
                f32s(&name(WeightKind::QBias), &[hq_full * d], Sharding::Rows(r * q_rows..(r + 1) * q_rows))?;
            bias.extend(f32s(
                &name(WeightKind::KBias),
                &[hkv_full * d],
                Sharding::Rows(r * kv_rows..(r + 1) * kv_rows),
            )?);
            bias.extend(f32s(
                &name(WeightKind::VBias),
                &[hkv_full * d],
                Sharding::Rows(r * kv_rows..(r + 1) * kv_rows),
            )?);
            let b_qkv = gpu.upload(&bias)?;
            let w_o = gpu.upload(Half::from_bits(&bits(
                &name(WeightKind::OProj),
                &[h, hq_full * d],
                Sharding::Cols(r * q_rows..(r + 1) * q_rows),
            )?))?;
            let i = dims.inter;
            let w_gu = gpu.alloc::<Half>(2 * i * h)?;
            gpu.write(
                &w_gu,
                0,
                Half::from_bits(&bits(
                    &name(WeightKind::GateProj),
                    &[inter_full, h],
                    Sharding::Rows(r * i..(r + 1) * i),
                )?),
            )?;
            gpu.write(
                &w_gu,
                i * h,
                Half::from_bits(&bits(
                    &name(WeightKind::UpProj),
                    &[inter_full, h],
                    Sharding::Rows(r * i..(r + 1) * i),
                )?),
            )?;
            let w_down = gpu.upload(Half::from_bits(&bits(
                &name(WeightKind::DownProj),
                &[h, inter_full],
                Sharding::Cols(r * i..(r + 1) * i),
            )?))?;
            layers.push(LayerWeights { in_norm, w_qkv, b_qkv, w_o, post_norm, w_gu, w_down });
        }
        let embed =
            gpu.upload(Half::from_bits(&bits(&WeightKind::Embedding.hf_name(0), &[vocab, h], Sharding::Full)?))?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(gpu.upload(Half::from_bits(&bits(
                &WeightKind::LmHead.hf_name(0),
                &[vocab, h],
                Sharding::Rows(dims.v0..dims.v1),
            )?))?)
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

    fn lm_head(&self, dims: &Dims) -> DevSlice<'_, Half> {
        match &self.lm_head {
            Some(b) => b.view(),
            None => self.embed.at(dims.v0 * dims.hidden),
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
    resid: Buf<f32>,
    xnorm: Buf<Half>,
    qkv: Buf<f32>,
    q: Buf<Half>,
    attn: Buf<Half>,
    o: Buf<Half>,
    gu: Buf<Half>,
    act: Buf<Half>,
    down: Buf<Half>,
    k_cache: Buf<Half>,
    v_cache: Buf<Half>,
    scores: Buf<f32>,
    probs: Buf<Half>,
    part_ml: Buf<f32>,
    part_acc: Buf<f32>,
    attn_counters: Buf<i32>,
    logits: Buf<f32>,
    /// (max, index as float bits) per row: argmax_rows's out_pair.
    pair: Buf<f32>,
    gathered: Buf<f32>,
    pub tokens: Buf<i32>,
    dec_pos: Buf<i32>,
    dec_slot: Buf<i32>,
    row_pos: Buf<i32>,
    row_slot: Buf<i32>,
    prompt: Buf<i32>,
    pub kv_bytes: usize,
    pub workspace_bytes: usize,
}

impl Buffers {
    /// `attn_blocks`: decode attention blocks that run at once (SMs × blocks per SM).
    /// `split`: positions per split instead of the computed ones (rounded up to 16).
    /// `prefill`: the prefill attention that will run (only the cuBLAS path needs the score and
    /// probability buffers, up to 1.5 GiB).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &mut Gpu,
        dims: &Dims,
        slots: usize,
        max_len: usize,
        max_rows: usize,
        attn_blocks: usize,
        split: Option<usize>,
        prefill: PrefillAttention,
    ) -> Result<Buffers, CudaError> {
        let (h, d) = (dims.hidden, dims.d);
        let (rows, q_chunk, split_len, n_splits) = Buffers::layout(dims, slots, max_len, max_rows, attn_blocks, split);
        let start = gpu.allocated;
        let kv_elems = dims.layers * slots * dims.hkv * max_len * d;
        let k_cache = gpu.alloc::<Half>(kv_elems)?;
        let v_cache = gpu.alloc::<Half>(kv_elems)?;
        let kv_bytes = gpu.allocated - start;
        let ws_start = gpu.allocated;
        let b = Buffers {
            slots,
            max_len,
            q_chunk,
            n_splits,
            split_len,
            resid: gpu.alloc::<f32>(rows * h)?,
            xnorm: gpu.alloc::<Half>(rows * h)?,
            qkv: gpu.alloc::<f32>(rows * dims.qkv())?,
            q: gpu.alloc::<Half>(dims.hq * rows * d)?,
            attn: gpu.alloc::<Half>(rows * dims.hq * d)?,
            o: gpu.alloc::<Half>(rows * h)?,
            gu: gpu.alloc::<Half>(rows * 2 * dims.inter)?,
            act: gpu.alloc::<Half>(rows * dims.inter)?,
            down: gpu.alloc::<Half>(rows * h)?,
            k_cache,
            v_cache,
            scores: gpu.alloc::<f32>(if prefill == PrefillAttention::Cublas {
                dims.hkv * q_chunk * max_len
            } else {
                0
            })?,
            probs: gpu.alloc::<Half>(if prefill == PrefillAttention::Cublas {
                dims.hkv * q_chunk * max_len
            } else {
                0
            })?,
            part_ml: gpu.alloc::<f32>(slots * dims.hq * n_splits * 2)?,
            part_acc: gpu.alloc::<f32>(slots * dims.hq * n_splits * d)?,
            // decode_attn_pipe's finished-split count per (sample, KV head); its last block resets it.
            attn_counters: gpu.alloc::<i32>(slots * dims.hkv)?,
            logits: gpu.alloc::<f32>(slots * dims.v_local())?,
            pair: gpu.alloc::<f32>(slots * 2)?,
            gathered: gpu.alloc::<f32>(dims.world * slots * 2)?,
            tokens: gpu.alloc::<i32>(slots)?,
            dec_pos: gpu.alloc::<i32>(slots)?,
            dec_slot: gpu.upload(&(0..slots as i32).collect::<Vec<i32>>())?,
            row_pos: gpu.alloc::<i32>(rows)?,
            row_slot: gpu.alloc::<i32>(rows)?,
            prompt: gpu.alloc::<i32>(rows)?,
            kv_bytes,
            workspace_bytes: 0,
        };
        let mut b = b;
        b.workspace_bytes = gpu.allocated - ws_start;
        Ok(b)
    }

    /// Rows of the activation buffers, the cuBLAS prefill's query chunk, and the decode attention's
    /// split length and count.
    fn layout(
        dims: &Dims,
        slots: usize,
        max_len: usize,
        max_rows: usize,
        attn_blocks: usize,
        split: Option<usize>,
    ) -> (usize, usize, usize, usize) {
        let rows = max_rows.max(slots);
        let q_chunk = (SCORES_BUDGET / (dims.hkv * max_len * (4 + T_BYTES)).max(1)).clamp(16, MAX_Q_CHUNK);
        // Decode attention: about one wave of (kv head, split, sample) blocks at the longest
        // context, two per SM by default. Finer splits made each block's fixed cost (loading q,
        // merging the warps' softmax states) dominate, and the merge walk more partial results.
        let per_wave = attn_blocks.max(1);
        let split_len = match split {
            Some(s) => s.next_multiple_of(16),
            None => (max_len * dims.hkv * slots).div_ceil(per_wave).next_multiple_of(16).max(64),
        };
        (rows, q_chunk, split_len, max_len.div_ceil(split_len))
    }

    /// The device bytes `new` allocates with these arguments (the KV cache and every workspace
    /// buffer, as `new` sizes them), for the check before allocating.
    #[allow(clippy::too_many_arguments)]
    pub fn bytes(
        dims: &Dims,
        slots: usize,
        max_len: usize,
        max_rows: usize,
        attn_blocks: usize,
        split: Option<usize>,
        prefill: PrefillAttention,
    ) -> u64 {
        let (rows, q_chunk, _, n_splits) = Buffers::layout(dims, slots, max_len, max_rows, attn_blocks, split);
        let (h, d, t) = (dims.hidden as u128, dims.d as u128, T_BYTES as u128);
        let (rows, slots, hq) = (rows as u128, slots as u128, dims.hq as u128);
        let scores = if prefill == PrefillAttention::Cublas { (dims.hkv * q_chunk * max_len) as u128 } else { 0 };
        let workspace = 4 * rows * h
            + t * rows * h
            + 4 * rows * dims.qkv() as u128
            + t * 2 * hq * rows * d
            + t * 2 * rows * h
            + t * 3 * rows * dims.inter as u128
            + t * rows * h
            + scores * (4 + t)
            + 4 * slots * hq * n_splits as u128 * (2 + d)
            + 4 * slots * dims.hkv as u128
            + 4 * slots * dims.v_local() as u128
            + 4 * (2 * slots + dims.world as u128 * slots * 2 + 3 * slots + 3 * rows);
        let total = dims.kv_cache_bytes(slots as usize, max_len) as u128 + workspace;
        u64::try_from(total).unwrap_or(u64::MAX)
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
            let ms = self.pool[w[0].1]
                .elapsed_ms(&self.pool[w[1].1])
                .map_err(|e| CudaError::Driver(format!("cuEventElapsedTime: {e}")))?;
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
    /// Which gemv.cu kernel those use, and its launch shape.
    pub gemv_kernel: GemvKernel,
    /// Decode steps on one GPU with the RMSNorms, the SwiGLU gating and the residual adds inside
    /// gemv_bulk (TPPROF_CUDA_FUSE=1; only where every projection fits it: `fused_decode`).
    pub fuse: bool,
    /// Which decode attention kernel to prefer (each falls back where its constraints fail).
    pub attention: DecodeAttention,
    /// The prefill attention (resolved for this shape and GPU: `PrefillAttention::resolve`).
    pub prefill: PrefillAttention,
    /// When set, an event at every op boundary (eager steps only, never in a graph).
    pub probe: Option<&'a Probe>,
}

/// The decode attention kernels: decode.cu's decode_attn_mma (`Mma`, the default on sm_80+: scores
/// and values on tensor cores; head_dim 64 or 128, group ≤ 8, any split; sm_80 or newer, which the
/// engine checks before asking for it; falls back as decode_attn_pipe does), decode.cu's
/// decode_attn_sk (`ScoresFirst`, the default before sm_80: scores, then values; head_dim 64 or 128,
/// group ≤ 8, split ≤ 512 positions), decode.cu's decode_attn_pipe (the same arithmetic over tiles
/// copied asynchronously, any split length: decode_attn_sk's fallback for long splits; `merge`: its
/// last block per KV head combines the splits, else decode_attn_merge does), decode.cu's
/// decode_attn_fast (head_dim 8..128, group ≤ 8), attention.cu's tiled decode_attn_partial (any
/// shape). Each falls back to the next that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeAttention {
    Mma { merge: bool },
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
            DecodeAttention::Mma { merge } if pipe => DecodeAttention::Mma { merge },
            DecodeAttention::Pipelined { merge } if pipe => DecodeAttention::Pipelined { merge },
            DecodeAttention::Pipelined { .. } | DecodeAttention::ScoresFirst if sk => DecodeAttention::ScoresFirst,
            // Splits longer than decode_attn_sk takes (contexts past ~15K at TP=1 on an H200):
            // decode_attn_pipe, measured 2.0x faster than decode_attn_fast there (session 5).
            DecodeAttention::ScoresFirst if pipe => DecodeAttention::Pipelined { merge: false },
            DecodeAttention::Mma { .. }
            | DecodeAttention::Pipelined { .. }
            | DecodeAttention::ScoresFirst
            | DecodeAttention::Fast
                if fast =>
            {
                DecodeAttention::Fast
            }
            _ => DecodeAttention::Tiled,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            DecodeAttention::Mma { merge: true } => "decode.cu decode_attn_mma (merge in its last block)",
            DecodeAttention::Mma { merge: false } => "decode.cu decode_attn_mma + decode_attn_merge",
            DecodeAttention::Pipelined { merge: true } => "decode.cu decode_attn_pipe (merge in its last block)",
            DecodeAttention::Pipelined { merge: false } => "decode.cu decode_attn_pipe + decode_attn_merge",
            DecodeAttention::ScoresFirst => "decode.cu decode_attn_sk",
            DecodeAttention::Fast => "decode.cu decode_attn_fast",
            DecodeAttention::Tiled => "attention.cu decode_attn_partial (tiled)",
        }
    }
}

/// The prefill attention: prefill.cu's tensor-core kernel (FlashAttention-2 style, `warps` warps of
/// `m_tiles` × 16 queries each per block, `stages` K/V tiles in flight; head_dim 64 or 128, sm_80 or
/// newer), or the chunked cuBLAS path (S = Q·Kᵀ, attention.cu's causal_softmax, O = P·V; any shape).
/// The kernel with 4 warps × 2 m-tiles of 16 queries (128 per block; each K/V fragment feeds both
/// m-tiles, Q read from shared memory per k-step, 2 K/V stages) is the default where it applies
/// (`flash` or `flash2m`); `TPPROF_CUDA_PREFILL_ATTN=cublas` picks the cuBLAS path, `=flash8` the
/// kernel with 8 warps × 16 queries (the default before), `=flash4` 4 warps × 16 queries, `=flash2m3`
/// the default with 3 K/V stages. qwen2.5-14b TP=1, 10 000-token TTFT on an H100: 1 118 ms (cuBLAS)
/// → 668 ms (flash8) → 600 ms (flash2m) (results/h100-prefill-attn.md, results/h100-prefill-ops.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillAttention {
    Flash { warps: u32, m_tiles: u32, stages: u32 },
    Cublas,
}

impl PrefillAttention {
    /// The default kernel is FLASH2M: 4 warps × 2 m-tiles, 2 stages.
    pub const FLASH8: PrefillAttention = PrefillAttention::Flash { warps: 8, m_tiles: 1, stages: 2 };
    pub const FLASH4: PrefillAttention = PrefillAttention::Flash { warps: 4, m_tiles: 1, stages: 2 };
    pub const FLASH2M: PrefillAttention = PrefillAttention::Flash { warps: 4, m_tiles: 2, stages: 2 };
    pub const FLASH2M3: PrefillAttention = PrefillAttention::Flash { warps: 4, m_tiles: 2, stages: 3 };

    /// TPPROF_CUDA_PREFILL_ATTN's value: flash (default, = flash2m), flash8, flash4, flash2m3 or cublas.
    pub fn parse(v: Option<&str>) -> Result<PrefillAttention, UnknownPrefillAttention> {
        match v.map(str::trim) {
            None | Some("") | Some("flash") | Some("flash2m") => Ok(Self::FLASH2M),
            Some("flash8") => Ok(Self::FLASH8),
            Some("cublas") => Ok(PrefillAttention::Cublas),
            Some("flash4") => Ok(Self::FLASH4),
            Some("flash2m3") => Ok(Self::FLASH2M3),
            Some(other) => Err(UnknownPrefillAttention(other.to_string())),
        }
    }

    /// What runs for head_dim `d` on a GPU of compute capability `sm` (e.g. 90): the kernel where
    /// it applies (one prefill.cu defines), else the cuBLAS path.
    pub fn resolve(self, d: usize, sm: u32) -> PrefillAttention {
        match self {
            PrefillAttention::Flash { warps, m_tiles, stages }
                if matches!(d, 64 | 128)
                    && sm >= 80
                    && matches!((warps, m_tiles, stages), (4 | 8, 1, 2) | (4, 2, 2 | 3)) =>
            {
                self
            }
            _ => PrefillAttention::Cublas,
        }
    }

    pub fn label(self) -> String {
        match self {
            PrefillAttention::Flash { warps, m_tiles: 1, stages } => {
                format!("prefill.cu prefill_attn (tensor cores, {} queries per block, {stages} K/V stages)", 16 * warps)
            }
            PrefillAttention::Flash { warps, m_tiles, stages } => format!(
                "prefill.cu prefill_attn (tensor cores, {warps} warps × {m_tiles} m-tiles = {} queries per block, \
                 {stages} K/V stages)",
                16 * warps * m_tiles
            ),
            PrefillAttention::Cublas => "cuBLAS S = Q·Kᵀ, causal_softmax, O = P·V (chunked)".into(),
        }
    }

    /// Queries per block (BM) of a Flash kernel.
    fn block_queries(warps: u32, m_tiles: u32) -> usize {
        16 * (warps * m_tiles) as usize
    }

    /// Dynamic shared memory of a Flash kernel in bytes: Q (BM × d) and `stages` K and V tiles of
    /// FA_BN × d, T_BYTES each.
    fn shared_bytes(warps: u32, m_tiles: u32, stages: u32, d: usize) -> usize {
        (Self::block_queries(warps, m_tiles) + 2 * stages as usize * FA_BN) * d * T_BYTES
    }

    /// The kernel for head_dim `d` (resolved: d is 64 or 128 and the shape one `resolve` accepts).
    fn kernel(warps: u32, m_tiles: u32, stages: u32, d: usize) -> Kernel {
        let d64 = d == 64;
        match (warps, m_tiles, stages) {
            (4, 1, _) => [Kernel::PrefillAttnD128W4, Kernel::PrefillAttnD64W4][d64 as usize],
            (_, 1, _) => [Kernel::PrefillAttnD128W8, Kernel::PrefillAttnD64W8][d64 as usize],
            (_, _, 3) => [Kernel::PrefillAttnD128W4M2S3, Kernel::PrefillAttnD64W4M2S3][d64 as usize],
            _ => [Kernel::PrefillAttnD128W4M2, Kernel::PrefillAttnD64W4M2][d64 as usize],
        }
    }
}

/// A TPPROF_CUDA_PREFILL_ATTN value that names no prefill attention.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{0}` is not a prefill attention: use flash (default, = flash2m), flash8, flash4, flash2m3 or cublas")]
pub struct UnknownPrefillAttention(pub String);

/// prefill.cu's FA_BN (keys per K/V tile): the kernel's shared memory is (BM + 2·stages·FA_BN)·head_dim
/// elements (`PrefillAttention::shared_bytes`).
const FA_BN: usize = 64;

/// decode.cu's SK_MAX_SPLIT and SK_WARPS.
const SK_MAX_SPLIT: usize = 512;
const SK_WARPS: usize = 8;

/// decode.cu's decode_attn_sk kernels by GQA group size, for head_dim 64 and 128.
const DECODE_SK: [[Kernel; 2]; 8] = [
    [Kernel::DecodeAttnSkG1D64, Kernel::DecodeAttnSkG1D128],
    [Kernel::DecodeAttnSkG2D64, Kernel::DecodeAttnSkG2D128],
    [Kernel::DecodeAttnSkG3D64, Kernel::DecodeAttnSkG3D128],
    [Kernel::DecodeAttnSkG4D64, Kernel::DecodeAttnSkG4D128],
    [Kernel::DecodeAttnSkG5D64, Kernel::DecodeAttnSkG5D128],
    [Kernel::DecodeAttnSkG6D64, Kernel::DecodeAttnSkG6D128],
    [Kernel::DecodeAttnSkG7D64, Kernel::DecodeAttnSkG7D128],
    [Kernel::DecodeAttnSkG8D64, Kernel::DecodeAttnSkG8D128],
];

/// decode.cu's decode_attn_pipe kernels by GQA group size, for head_dim 64 and 128.
const DECODE_PIPE: [[Kernel; 2]; 8] = [
    [Kernel::DecodeAttnPipeG1D64, Kernel::DecodeAttnPipeG1D128],
    [Kernel::DecodeAttnPipeG2D64, Kernel::DecodeAttnPipeG2D128],
    [Kernel::DecodeAttnPipeG3D64, Kernel::DecodeAttnPipeG3D128],
    [Kernel::DecodeAttnPipeG4D64, Kernel::DecodeAttnPipeG4D128],
    [Kernel::DecodeAttnPipeG5D64, Kernel::DecodeAttnPipeG5D128],
    [Kernel::DecodeAttnPipeG6D64, Kernel::DecodeAttnPipeG6D128],
    [Kernel::DecodeAttnPipeG7D64, Kernel::DecodeAttnPipeG7D128],
    [Kernel::DecodeAttnPipeG8D64, Kernel::DecodeAttnPipeG8D128],
];
/// decode.cu's decode_attn_mma kernels for head_dim 64 and 128.
const DECODE_MMA: [Kernel; 2] = [Kernel::DecodeAttnMmaD64, Kernel::DecodeAttnMmaD128];
/// decode.cu's MM_THREADS, MM_TILE and MM_STAGES: decode_attn_mma's shared memory is
/// MM_STAGES·2·MM_TILE·head_dim elements.
const MM_THREADS: u32 = 128;
const MM_TILE: usize = 64;
const MM_STAGES: usize = 3;
/// decode.cu's PT_STAGES and PT_TILE: decode_attn_pipe's shared memory is
/// PT_STAGES·2·PT_TILE·head_dim elements of K/V plus (group·head_dim + group·PT_TILE + group) f32.
const PT_STAGES: usize = 2;
const PT_TILE: usize = 64;

/// decode.cu's decode_attn_fast kernels by GQA group size.
const DECODE_FAST: [Kernel; 8] = [
    Kernel::DecodeAttnFastG1,
    Kernel::DecodeAttnFastG2,
    Kernel::DecodeAttnFastG3,
    Kernel::DecodeAttnFastG4,
    Kernel::DecodeAttnFastG5,
    Kernel::DecodeAttnFastG6,
    Kernel::DecodeAttnFastG7,
    Kernel::DecodeAttnFastG8,
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
            Linear::ALL
                .iter()
                .find(|l| l.name() == name)
                .map(|&l| set.with(l))
                .ok_or_else(|| UnknownProjection(name.to_string()))
        })
    }

    /// The projections in the set, e.g. ["o", "down"].
    pub fn names(self) -> Vec<&'static str> {
        Linear::ALL.iter().filter(|&&l| self.has(l)).map(|l| l.name()).collect()
    }
}

/// gemv.cu's GEMV_MAX_ROWS.
const GEMV_MAX_ROWS: usize = 8;
/// gemv.cu's GB_CHUNK: the bytes of one cp.async.bulk copy of gemv_bulk.
const GB_CHUNK: usize = 2048;

/// The gemv.cu kernel of the projections in `GemvOps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvKernel {
    /// gemv: one warp per output row, each lane loading its 16-byte pieces of W.
    Warp,
    /// gemv_bulk (sm_90+): a persistent grid of up to `per_sm` blocks on each of the GPU's `sms` SMs
    /// (fewer where their shared memory does not fit: `grid`), of `warps` warps, each warp streaming
    /// its share of W through a ring of `stages` cp.async.bulk buffers of GB_CHUNK bytes; `spin`: the
    /// warps poll their barriers (mbarrier.test_wait) instead of mbarrier.try_wait.
    Bulk { sms: usize, per_sm: usize, warps: usize, stages: usize, spin: bool },
}

impl GemvKernel {
    /// gemv_bulk's default shape on a GPU of `sms` SMs: 1 block per SM of 16 warps, 2 stages (64 KiB of
    /// W in flight per SM). The best of those measured on an H100 (14B decode, per step: gate_up
    /// 4 910 µs against 7 069 with 2 blocks × 4 warps × 8 stages and 12 888 with 1 × 4 × 16: the time
    /// follows the warps per SM, not the bytes in flight; results/h100-gemv-bulk.md).
    pub fn bulk(sms: usize) -> GemvKernel {
        GemvKernel::Bulk { sms, per_sm: 1, warps: 16, stages: 2, spin: false }
    }

    /// gemv_bulk's grid for `out` rows with `smem` bytes of dynamic shared memory per block: one wave,
    /// `per_sm` blocks per SM where that many fit in `shared_per_sm` (each block also holds its static
    /// 128 bytes and the 1 KiB the driver reserves per block), at least one, at most one per row.
    pub fn grid(self, out: usize, smem: usize, shared_per_sm: usize) -> usize {
        match self {
            GemvKernel::Warp => out.div_ceil(8),
            GemvKernel::Bulk { sms, per_sm, .. } => {
                let fit = shared_per_sm / (smem + 128 + 1024);
                (sms * per_sm.min(fit).max(1)).clamp(1, out.max(1))
            }
        }
    }

    /// TPPROF_CUDA_GEMV_KERNEL's value: `warp`, `bulk` (the default shape) or
    /// `bulk:BLOCKS_PER_SM,WARPS,STAGES[,spin]`.
    pub fn parse(v: &str, sms: usize) -> Result<GemvKernel, BadGemvKernel> {
        let v = v.trim();
        match v {
            "warp" => return Ok(GemvKernel::Warp),
            "bulk" => return Ok(GemvKernel::bulk(sms)),
            _ => {}
        }
        let bad = || BadGemvKernel(v.to_string());
        let shape = v.strip_prefix("bulk:").ok_or_else(bad)?;
        let (shape, spin) = match shape.strip_suffix(",spin") {
            Some(s) => (s, true),
            None => (shape, false),
        };
        let n: Vec<usize> =
            shape.split(',').map(|x| x.trim().parse::<usize>()).collect::<Result<_, _>>().map_err(|_| bad())?;
        match n[..] {
            [b, w, s] if b >= 1 && (1..=32).contains(&w) && s >= 1 => {
                Ok(GemvKernel::Bulk { sms, per_sm: b, warps: w, stages: s, spin })
            }
            _ => Err(bad()),
        }
    }

    /// For the engine's JSON.
    pub fn describe(self) -> String {
        match self {
            GemvKernel::Warp => "gemv.cu gemv (a warp per row)".into(),
            GemvKernel::Bulk { sms, per_sm, warps, stages, spin } => format!(
                "gemv.cu gemv_bulk ({per_sm} blocks per SM × {sms} SMs, {warps} warps, {stages} stages of {GB_CHUNK} bytes, cp.async.bulk{})",
                if spin { ", polled barriers" } else { "" }
            ),
        }
    }
}

/// A TPPROF_CUDA_GEMV_KERNEL value that is no kernel or shape.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{0}`: use warp, bulk or bulk:BLOCKS_PER_SM,WARPS,STAGES[,spin] (three positive integers, warps ≤ 32; e.g. bulk:2,4,8 or bulk:1,16,2,spin)")]
pub struct BadGemvKernel(pub String);

/// gemv_bulk's x (gemv.cu's GB_X_*): T activations; the f32 residual stream, normalized in the kernel
/// with an RMSNorm weight; or a gate_up output, gated in the kernel (silu(gate) · up).
#[derive(Clone, Copy)]
enum BulkX<'b> {
    Plain(DevSlice<'b, Half>),
    RmsNorm { resid: DevSlice<'b, f32>, w: DevSlice<'b, f32> },
    SwiGlu(DevSlice<'b, Half>),
}

/// gemv_bulk's y (gemv.cu's GB_Y_*): written (T, or f32 when `f32`), or added to the f32 residual
/// stream (after rounding to T, as add_rmsnorm adds a T delta).
#[derive(Clone, Copy)]
enum BulkY<'b> {
    Plain { addr: DevAddr<'b>, len: usize, f32: bool },
    AddResid(DevSlice<'b, f32>),
}

/// gemv_bulk's dynamic shared memory (gemv.cu's layout): the ring (warps × stages chunks), its barriers
/// (8 bytes each), x at the next 16-byte boundary (rows × in elements of `elem` bytes), the row sums
/// (rows × rows_max f32), the shared rows' slots (2 per warp: a row index and `rows` f32 sums).
pub fn gemv_bulk_smem(warps: usize, stages: usize, rows: usize, in_: usize, rows_max: usize, elem: usize) -> usize {
    let x_at = (warps * stages * (GB_CHUNK + 8)).div_ceil(16) * 16;
    x_at + rows * in_ * elem + rows * rows_max * 4 + 2 * warps * (1 + rows) * 4
}

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

impl<'a> Model<'a> {
    fn mark(&self, op: Op) -> Result<(), CudaError> {
        if let Some(p) = self.probe {
            let mut marks = p.marks.borrow_mut();
            let i = marks.len();
            let ev = p.pool.get(i).ok_or_else(|| CudaError::Internal("probe event pool exhausted".into()))?;
            // EXTERNAL: a real event-record node inside a graph capture (see record_external).
            self.gpu.record_external(ev)?;
            marks.push((op, i));
        }
        Ok(())
    }

    /// y (n × out) = x (n × in) · Wᵀ for a Hugging Face (out, in) weight; y is f32 or T. A few rows
    /// (decode) may go through gemv.cu (the projections in `gemv`); otherwise cuBLAS.
    #[allow(clippy::too_many_arguments)]
    fn linear<Y: GemmOut>(
        &self,
        op: Linear,
        n: usize,
        out: usize,
        k: usize,
        x: DevSlice<'_, Half>,
        w: DevSlice<'_, Half>,
        y: DevSlice<'_, Y>,
    ) -> Result<(), CudaError> {
        let aligned = x.aligned(16) && w.aligned(16) && k % 8 == 0;
        if self.gemv.has(op) && n <= GEMV_MAX_ROWS && aligned {
            if w.len() < out * k || x.len() < n * k || y.len() < n * out {
                return Err(CudaError::Internal(format!(
                    "gemv {n}×{out}×{k} on views of {}, {} and {} elements",
                    x.len(),
                    w.len(),
                    y.len()
                )));
            }
            if self.gemv_bulk(
                n,
                out,
                k,
                BulkX::Plain(x),
                w,
                BulkY::Plain { addr: y.addr(), len: y.len(), f32: Y::F32 },
            )? {
                return Ok(());
            }
            // Not gemv_bulk (not chosen, or too large for one block's shared memory): the warp kernel.
            let blocks = out.div_ceil(8) as u32;
            // SAFETY: gemv_T(const T* w, const T* x, void* y, int out, int in, int n_rows, int x_ld,
            // int y_ld, int out_f32) (gemv.cu) reads w (out × in), x (n_rows × x_ld), writes y
            // (n_rows × y_ld, f32 when out_f32 else T: Y's type), all held by the views (checked above).
            return unsafe {
                self.gpu.launch(
                    Kernel::Gemv,
                    (blocks, 1, 1),
                    256,
                    0,
                    &[
                        Arg::Ptr(w.addr()),
                        Arg::Ptr(x.addr()),
                        Arg::Ptr(y.addr()),
                        Arg::I32(out as i32),
                        Arg::I32(k as i32),
                        Arg::I32(n as i32),
                        Arg::I32(k as i32),
                        Arg::I32(out as i32),
                        Arg::I32(Y::F32 as i32),
                    ],
                )
            };
        }
        self.gpu.gemm_nt(n, out, k, (x, k), (w, k), (y, out), 1.0, None)
    }

    /// y = x · Wᵀ (n × out, k inputs) with gemv.cu's gemv_bulk, x and y as `x` and `y` say (the
    /// fused RMSNorm / SwiGLU prologues, the residual-add epilogue). Ok(false) when gemv_bulk is not
    /// the GEMV kernel or does not fit one block's shared memory (the caller takes another path).
    /// The views' lengths and 16-byte alignment are checked here (an Internal error otherwise).
    fn gemv_bulk(
        &self,
        n: usize,
        out: usize,
        k: usize,
        x: BulkX<'_>,
        w: DevSlice<'_, Half>,
        y: BulkY<'_>,
    ) -> Result<bool, CudaError> {
        let GemvKernel::Bulk { stages, warps, spin, .. } = self.gemv_kernel else { return Ok(false) };
        let Some(smem) = self.gemv_bulk_smem_of(n, out, k) else { return Ok(false) };
        let nb = self.gemv_kernel.grid(out, smem, self.gpu.shared_per_sm());
        let (x_addr, x_ld, x_mode, norm_w, x_ok) = match x {
            BulkX::Plain(x) => (x.addr(), k, 0, Arg::Null, x.len() >= n * k && x.aligned(16)),
            BulkX::RmsNorm { resid, w } => (
                resid.addr(),
                k,
                1,
                Arg::Ptr(w.addr()),
                resid.len() >= n * k && w.len() >= k && resid.aligned(16) && w.aligned(16),
            ),
            BulkX::SwiGlu(gu) => (gu.addr(), 2 * k, 2, Arg::Null, gu.len() >= n * 2 * k && gu.aligned(16)),
        };
        let (y_addr, y_len, y_mode, out_f32) = match y {
            BulkY::Plain { addr, len, f32 } => (addr, len, 0, f32),
            BulkY::AddResid(r) => (r.addr(), r.len(), 1, false),
        };
        if y_len < n * out {
            return Err(CudaError::Internal(format!("gemv_bulk {n}×{out}×{k}: a y view of {y_len} elements")));
        }
        if !x_ok || w.len() < out * k || !w.aligned(16) {
            return Err(CudaError::Internal(format!("gemv_bulk {n}×{out}×{k}: x or w view too small or unaligned")));
        }
        // SAFETY: gemv_bulk_T(const T* w, const void* x, void* y, int out, int in, int n_rows, int x_ld,
        // int y_ld, int out_f32, int stages, int x_mode, int y_mode, const float* norm_w, float eps,
        // int spin)
        // (gemv.cu): reads w (out × in), x (n_rows × x_ld: T, or f32 for RMSNorm, whose norm_w has
        // `in` elements), writes y (n_rows × out: T or f32, or the f32 residual it adds to), all held
        // by the caller's views; grid nb ≤ out, 32·warps threads, the shared memory of its layout
        // (gemv_bulk_smem, within the device's limit: gemv_bulk_fits); sm_90 (GemvKernel::Bulk is
        // chosen only there).
        unsafe {
            self.gpu.launch(
                Kernel::GemvBulk,
                (nb as u32, 1, 1),
                32 * warps as u32,
                smem as u32,
                &[
                    Arg::Ptr(w.addr()),
                    Arg::Ptr(x_addr),
                    Arg::Ptr(y_addr),
                    Arg::I32(out as i32),
                    Arg::I32(k as i32),
                    Arg::I32(n as i32),
                    Arg::I32(x_ld as i32),
                    Arg::I32(out as i32),
                    Arg::I32(out_f32 as i32),
                    Arg::I32(stages as i32),
                    Arg::I32(x_mode),
                    Arg::I32(y_mode),
                    norm_w,
                    Arg::F32(self.eps),
                    Arg::I32(spin as i32),
                ],
            )?;
        }
        Ok(true)
    }

    /// gemv_bulk's dynamic shared memory for an n × out × k product, its row sums sized for the
    /// smallest grid `GemvKernel::grid` gives (one block per SM); None when gemv_bulk is not the GEMV
    /// kernel or that does not fit one block (1 KiB kept for the kernel's static part).
    fn gemv_bulk_smem_of(&self, n: usize, out: usize, k: usize) -> Option<usize> {
        let GemvKernel::Bulk { sms, warps, stages, .. } = self.gemv_kernel else { return None };
        let rows_cap = out.div_ceil(sms.clamp(1, out.max(1)));
        let smem = gemv_bulk_smem(warps, stages, n, k, rows_cap, T_BYTES);
        ((1..=GEMV_MAX_ROWS).contains(&n) && k % 8 == 0 && out > 0 && smem + 1024 <= self.gpu.max_shared_per_block())
            .then_some(smem)
    }

    fn gemv_bulk_fits(&self, n: usize, out: usize, k: usize) -> bool {
        self.gemv_bulk_smem_of(n, out, k).is_some()
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
        self.mark(Op::Embedding)?;
        // SAFETY: embedding_T(const T* table, const int* tokens, float* out, int n_rows, int hidden)
        // (norm.cu): table is (vocab, hidden), the n prompt tokens are staged ids < vocab
        // (validated), out = resid holds max_rows ≥ n rows of hidden.
        unsafe {
            self.gpu.launch(
                Kernel::Embedding,
                (n as u32, 1, 1),
                256,
                0,
                &[
                    Arg::Ptr(self.w.embed.addr()),
                    Arg::Ptr(self.b.prompt.addr()),
                    Arg::Ptr(self.b.resid.addr()),
                    Arg::I32(n as i32),
                    Arg::I32(d.hidden as i32),
                ],
            )?;
        }
        self.layers(&Pass::Prefill { n, slot }, false)?;
        // Only the last prompt token reaches the LM head.
        let last = n - 1;
        self.final_head(last, 1, Some(self.b.tokens.at(slot)), false, false)?;
        self.mark(Op::End)
    }

    /// One decode step for `n` samples: tokens (device) at dec_pos → next tokens, dec_pos advanced.
    /// Pure device work on fixed buffers: capturable into a CUDA graph.
    pub fn decode_step(&self, n: usize) -> Result<(), CudaError> {
        let d = self.dims;
        self.mark(Op::Embedding)?;
        // SAFETY: as in prefill; the n = slots tokens are the last step's argmax (ids < vocab).
        unsafe {
            self.gpu.launch(
                Kernel::Embedding,
                (n as u32, 1, 1),
                256,
                0,
                &[
                    Arg::Ptr(self.w.embed.addr()),
                    Arg::Ptr(self.b.tokens.addr()),
                    Arg::Ptr(self.b.resid.addr()),
                    Arg::I32(n as i32),
                    Arg::I32(d.hidden as i32),
                ],
            )?;
        }
        let fused = self.fused_decode(n);
        self.layers(&Pass::Decode { n }, fused)?;
        self.final_head(0, n, None, true, fused)?;
        self.mark(Op::End)
    }

    /// Whether a decode step of n rows runs fused (`fuse`): one GPU, and gemv_bulk takes every
    /// projection of a layer.
    fn fused_decode(&self, n: usize) -> bool {
        let d = self.dims;
        self.fuse
            && d.world == 1
            && self.gemv_bulk_fits(n, d.qkv(), d.hidden)
            && self.gemv_bulk_fits(n, d.hidden, d.hq * d.d)
            && self.gemv_bulk_fits(n, 2 * d.inter, d.hidden)
            && self.gemv_bulk_fits(n, d.hidden, d.inter)
    }

    /// gemv_bulk that must run (the shapes were checked by `fused_decode`).
    fn fused_gemv(
        &self,
        n: usize,
        out: usize,
        k: usize,
        x: BulkX<'_>,
        w: DevSlice<'_, Half>,
        y: BulkY<'_>,
    ) -> Result<(), CudaError> {
        if self.gemv_bulk(n, out, k, x, w, y)? {
            Ok(())
        } else {
            Err(CudaError::Internal(format!("fused decode: gemv_bulk cannot take {n}×{out}×{k}")))
        }
    }

    /// The layers. `fused` (decode only, `fused_decode`): the input RMSNorm inside the QKV GEMV, the
    /// post-attention RMSNorm inside gate_up, SwiGLU inside down, and o and down added to the residual
    /// by their GEMVs: 4 kernels per layer fewer (add_rmsnorm × 2, silu_mul, and no all-reduce on one
    /// GPU).
    fn layers(&self, pass: &Pass, fused: bool) -> Result<(), CudaError> {
        let d = self.dims;
        let n = pass.rows();
        let (row_pos, row_slot) = match pass {
            Pass::Prefill { .. } => (self.b.row_pos.view(), self.b.row_slot.view()),
            Pass::Decode { .. } => (self.b.dec_pos.view(), self.b.dec_slot.view()),
        };
        for (l, lw) in self.w.layers.iter().enumerate() {
            // resid += previous layer's MLP output; xnorm = input_norm(resid)
            if fused {
                // (The previous layer's down GEMV has added its output to resid.)
                self.mark(Op::QkvGemm)?;
                let x = BulkX::RmsNorm { resid: self.b.resid.view(), w: lw.in_norm.view() };
                let y = BulkY::Plain { addr: self.b.qkv.addr(), len: self.b.qkv.view().len(), f32: true };
                self.fused_gemv(n, d.qkv(), d.hidden, x, lw.w_qkv.view(), y)?;
            } else {
                let delta = if l == 0 { None } else { Some(self.b.down.view()) };
                self.mark(Op::Norm)?;
                self.add_rmsnorm(self.b.resid.view(), delta, lw.in_norm.view(), self.b.xnorm.view(), n)?;
                // qkv = xnorm · W_qkvᵀ (f32 out), then bias + RoPE, q → (hq, n, d), k/v → cache
                self.mark(Op::QkvGemm)?;
                let (xn, wq, qkv) = (self.b.xnorm.view(), lw.w_qkv.view(), self.b.qkv.view());
                self.linear(Linear::Qkv, n, d.qkv(), d.hidden, xn, wq, qkv)?;
            }
            let (kc, vc) = self.cache_layer(l);
            self.mark(Op::QkvRope)?;
            // SAFETY: qkv_rope_T(const float* qkv, const float* bias, T* q_out, T* k_cache, T* v_cache,
            // const int* row_slot, const int* row_pos, int n_rows, int hq, int hkv, int head_dim,
            // int max_len, float rope_theta) (rope.cu): qkv (n, qkv_local) f32, bias (qkv_local), q
            // (hq, n, d), this layer's caches (slots, hkv, max_len, d) at slots < `slots` and positions
            // < max_len (Buffers::new sized them for the prepared workload).
            // Decode (a few rows): a block per (row, head). Prefill: a block per row, so the
            // double-precision cos/sin table is computed once per row, not once per head (14B 10K
            // prefill: 33.2 ms per prefill on an H200 before, 11.9 ms on an H100 after; two cards, so
            // only indicative: results/h100-prefill-ops.md).
            let (heads_per_grid, block) = if n <= GEMV_MAX_ROWS { ((d.hq + 2 * d.hkv) as u32, 64) } else { (1, 256) };
            unsafe {
                self.gpu.launch(
                    Kernel::QkvRope,
                    (n as u32, heads_per_grid, 1),
                    block,
                    0,
                    &[
                        Arg::Ptr(self.b.qkv.addr()),
                        Arg::Ptr(lw.b_qkv.addr()),
                        Arg::Ptr(self.b.q.addr()),
                        Arg::Ptr(kc.addr()),
                        Arg::Ptr(vc.addr()),
                        Arg::Ptr(row_slot.addr()),
                        Arg::Ptr(row_pos.addr()),
                        Arg::I32(n as i32),
                        Arg::I32(d.hq as i32),
                        Arg::I32(d.hkv as i32),
                        Arg::I32(d.d as i32),
                        Arg::I32(self.b.max_len as i32),
                        Arg::F32(self.theta),
                    ],
                )?;
            }
            self.mark(Op::Attention)?;
            match pass {
                Pass::Prefill { n, slot } => self.prefill_attention(*n, *slot, kc, vc)?,
                Pass::Decode { n } => self.decode_attention(*n, kc, vc)?,
            }
            if fused {
                // resid += attn · W_oᵀ; gu = post_norm(resid) · W_guᵀ; resid += silu·mul(gu) · W_downᵀ.
                self.mark(Op::OGemm)?;
                let resid = self.b.resid.view();
                self.fused_gemv(
                    n,
                    d.hidden,
                    d.hq * d.d,
                    BulkX::Plain(self.b.attn.view()),
                    lw.w_o.view(),
                    BulkY::AddResid(resid),
                )?;
                self.mark(Op::GateUpGemm)?;
                let x = BulkX::RmsNorm { resid, w: lw.post_norm.view() };
                let y = BulkY::Plain { addr: self.b.gu.addr(), len: self.b.gu.view().len(), f32: false };
                self.fused_gemv(n, 2 * d.inter, d.hidden, x, lw.w_gu.view(), y)?;
                self.mark(Op::DownGemm)?;
                let x = BulkX::SwiGlu(self.b.gu.view());
                self.fused_gemv(n, d.hidden, d.inter, x, lw.w_down.view(), BulkY::AddResid(resid))?;
                continue;
            }
            // o = attn · W_oᵀ (partial over this rank's heads), summed over ranks
            self.mark(Op::OGemm)?;
            self.linear(Linear::O, n, d.hidden, d.hq * d.d, self.b.attn.view(), lw.w_o.view(), self.b.o.view())?;
            self.mark(Op::AllReduce)?;
            self.nccl.all_reduce(self.b.o.view(), n * d.hidden, self.dtype)?;
            self.mark(Op::Norm)?;
            self.add_rmsnorm(self.b.resid.view(), Some(self.b.o.view()), lw.post_norm.view(), self.b.xnorm.view(), n)?;
            // MLP: down(silu(gate) * up), summed over ranks
            self.mark(Op::GateUpGemm)?;
            self.linear(
                Linear::GateUp,
                n,
                2 * d.inter,
                d.hidden,
                self.b.xnorm.view(),
                lw.w_gu.view(),
                self.b.gu.view(),
            )?;
            self.mark(Op::Silu)?;
            // 8 elements per 16-byte access where rows stay 16-byte aligned.
            let wide = d.inter % 8 == 0 && self.b.gu.view().aligned(16) && self.b.act.view().aligned(16);
            let (kernel, total) =
                if wide { (Kernel::SiluMul8, n * d.inter / 8) } else { (Kernel::SiluMul, n * d.inter) };
            // SAFETY: silu_mul{,8}_T(const T* gate_up, T* out, int n_rows, int inter) (activation.cu):
            // gate_up (n, 2 inter), out (n, inter), both sized for max_rows ≥ n rows; silu_mul8 only
            // with inter % 8 == 0 and both 16-byte aligned (checked above).
            unsafe {
                self.gpu.launch(
                    kernel,
                    (total.div_ceil(256).clamp(1, 65535) as u32, 1, 1),
                    256,
                    0,
                    &[
                        Arg::Ptr(self.b.gu.addr()),
                        Arg::Ptr(self.b.act.addr()),
                        Arg::I32(n as i32),
                        Arg::I32(d.inter as i32),
                    ],
                )?;
            }
            self.mark(Op::DownGemm)?;
            self.linear(Linear::Down, n, d.hidden, d.inter, self.b.act.view(), lw.w_down.view(), self.b.down.view())?;
            self.mark(Op::AllReduce)?;
            self.nccl.all_reduce(self.b.down.view(), n * d.hidden, self.dtype)?;
        }
        Ok(())
    }

    /// resid[row0..row0+n] += down; xnorm = final_norm(resid); logits = xnorm · LM headᵀ; global
    /// argmax → tokens (into `token_dst`, or `tokens` with positions advanced when `advance`).
    fn final_head(
        &self,
        row0: usize,
        n: usize,
        token_dst: Option<DevSlice<'_, i32>>,
        advance: bool,
        fused: bool,
    ) -> Result<(), CudaError> {
        let d = self.dims;
        let h = d.hidden;
        let v = d.v_local();
        if fused && self.gemv_bulk_fits(n, v, h) {
            // The last down GEMV has added its output to resid: the final norm inside the LM head.
            self.mark(Op::LmHead)?;
            let x = BulkX::RmsNorm { resid: self.b.resid.at(row0 * h), w: self.w.final_norm.view() };
            let y = BulkY::Plain { addr: self.b.logits.addr(), len: self.b.logits.view().len(), f32: true };
            self.fused_gemv(n, v, h, x, self.w.lm_head(d), y)?;
        } else {
            self.mark(Op::Norm)?;
            // Fused layers have added down to resid already.
            let delta = if fused { None } else { Some(self.b.down.at(row0 * h)) };
            self.add_rmsnorm(self.b.resid.at(row0 * h), delta, self.w.final_norm.view(), self.b.xnorm.view(), n)?;
            self.mark(Op::LmHead)?;
            self.linear(Linear::LmHead, n, v, h, self.b.xnorm.view(), self.w.lm_head(d), self.b.logits.view())?;
        }
        self.mark(Op::Argmax)?;
        // SAFETY: argmax_rows(const float* logits, int n_rows, int cols, int col0, float* out_pair)
        // (sampling.cu): logits (n, v_local), out_pair 2 floats per row; both sized for `slots` ≥ n.
        unsafe {
            self.gpu.launch(
                Kernel::ArgmaxRows,
                (n as u32, 1, 1),
                1024,
                0,
                &[
                    Arg::Ptr(self.b.logits.addr()),
                    Arg::I32(n as i32),
                    Arg::I32(v as i32),
                    Arg::I32(d.v0 as i32),
                    Arg::Ptr(self.b.pair.addr()),
                ],
            )?;
        }
        let gathered = if d.world > 1 {
            self.nccl.all_gather(self.b.pair.view(), self.b.gathered.view(), n * 2)?;
            self.b.gathered.view()
        } else {
            self.b.pair.view()
        };
        let dst = token_dst.unwrap_or(self.b.tokens.view());
        let pos = if advance { Arg::Ptr(self.b.dec_pos.addr()) } else { Arg::Null };
        // SAFETY: select_tokens(const float* gathered, int world, int n_rows, int* tokens_out,
        // int* row_pos) (sampling.cu): gathered (world, n, 2), n tokens out (at `dst`: `tokens`, or
        // one slot of it for n = 1), row_pos null or dec_pos (slots ≥ n).
        unsafe {
            self.gpu.launch(
                Kernel::SelectTokens,
                ((n as u32).div_ceil(128), 1, 1),
                128,
                0,
                &[Arg::Ptr(gathered.addr()), Arg::I32(d.world as i32), Arg::I32(n as i32), Arg::Ptr(dst.addr()), pos],
            )
        }
    }

    fn add_rmsnorm(
        &self,
        resid: DevSlice<'_, f32>,
        delta: Option<DevSlice<'_, Half>>,
        w: DevSlice<'_, f32>,
        out: DevSlice<'_, Half>,
        n: usize,
    ) -> Result<(), CudaError> {
        // One block per row: a decode step has only a few rows, so each block takes 1024 threads
        // (a few elements each) rather than 256 threads walking the row serially.
        let block = if n <= GEMV_MAX_ROWS { 1024 } else { 256 };
        let h = self.dims.hidden;
        if resid.len() < n * h || delta.is_some_and(|d| d.len() < n * h) || w.len() < h || out.len() < n * h {
            return Err(CudaError::Internal(format!("add_rmsnorm of {n} rows of {h} on too small a view")));
        }
        let delta = delta.map_or(Arg::Null, |d| Arg::Ptr(d.addr()));
        // SAFETY: add_rmsnorm_T(float* resid, const T* delta, const float* weight, T* out, int n_rows,
        // int hidden, float eps) (norm.cu): resid, delta (or null) and out n × hidden, weight hidden,
        // as the views hold (checked above).
        unsafe {
            self.gpu.launch(
                Kernel::AddRmsnorm,
                (n as u32, 1, 1),
                block,
                0,
                &[
                    Arg::Ptr(resid.addr()),
                    delta,
                    Arg::Ptr(w.addr()),
                    Arg::Ptr(out.addr()),
                    Arg::I32(n as i32),
                    Arg::I32(h as i32),
                    Arg::F32(self.eps),
                ],
            )
        }
    }

    /// Layer l's K and V caches: (slots, hkv, max_len, d) each.
    fn cache_layer(&self, l: usize) -> (DevSlice<'a, Half>, DevSlice<'a, Half>) {
        let per = self.b.slots * self.dims.hkv * self.b.max_len * self.dims.d;
        (self.b.k_cache.at(l * per), self.b.v_cache.at(l * per))
    }

    /// Causal attention of one prompt of `n` tokens (cache slot `slot`) into attn (n, hq·d): prefill.cu's
    /// kernel, or the cuBLAS path (`self.prefill`).
    fn prefill_attention(
        &self,
        n: usize,
        slot: usize,
        kc: DevSlice<'_, Half>,
        vc: DevSlice<'_, Half>,
    ) -> Result<(), CudaError> {
        let dm = self.dims;
        let PrefillAttention::Flash { warps, m_tiles, stages } = self.prefill else {
            return self.prefill_attention_cublas(n, slot, kc, vc);
        };
        let d = dm.d;
        let slot_stride = dm.hkv * self.b.max_len * d;
        let (kc, vc) = (kc.at(slot * slot_stride), vc.at(slot * slot_stride));
        if self.b.q.view().len() < dm.hq * n * d
            || self.b.attn.view().len() < n * dm.hq * d
            || kc.len() < slot_stride
            || vc.len() < slot_stride
            || n > self.b.max_len
        {
            return Err(CudaError::Internal(format!("prefill attention of {n} tokens on too small a view")));
        }
        // The m-tile kernels index a head's cache rows with an int (position · d).
        if self.b.max_len * d > i32::MAX as usize {
            return Err(CudaError::Internal(format!("prefill attention: {} cache positions of {d}", self.b.max_len)));
        }
        let bm = PrefillAttention::block_queries(warps, m_tiles);
        let shared = PrefillAttention::shared_bytes(warps, m_tiles, stages, d);
        // SAFETY: prefill_attn_d{64,128}_{w4,w8,w4m2,w4m2s3}_T(const T* q, const T* k, const T* v,
        // T* out, int n, int hq, int hkv, int max_len, float scale) (prefill.cu) reads q (hq, n, d),
        // keys and values 0..n-1 of every KV head of this slot's (hkv, max_len, d) caches (n <=
        // max_len, max_len · d within an int), writes attn (n, hq d): the views hold them (checked
        // above); `resolve` made d 64 or 128, (warps, m_tiles, stages) a shape prefill.cu defines and
        // the GPU sm_80+, with block = 32 · warps, BM = 16 · warps · m_tiles queries per block and
        // this shared memory, (BM + 2 · stages · FA_BN) · d · 2 bytes (at most 128 KiB).
        unsafe {
            self.gpu.launch(
                PrefillAttention::kernel(warps, m_tiles, stages, d),
                (dm.hq as u32, n.div_ceil(bm) as u32, 1),
                32 * warps,
                shared as u32,
                &[
                    Arg::Ptr(self.b.q.addr()),
                    Arg::Ptr(kc.addr()),
                    Arg::Ptr(vc.addr()),
                    Arg::Ptr(self.b.attn.addr()),
                    Arg::I32(n as i32),
                    Arg::I32(dm.hq as i32),
                    Arg::I32(dm.hkv as i32),
                    Arg::I32(self.b.max_len as i32),
                    Arg::F32(1.0 / (d as f32).sqrt()),
                ],
            )
        }
    }

    /// Causal attention of one prompt (slot row_slot[0]) in query chunks: per chunk and per query
    /// head of a GQA group, S = Q·Kᵀ/√d (cuBLAS, f32, batched over kv heads), masked softmax, O = P·V.
    /// The score buffer holds one chunk: hkv × q_chunk × kv_len f32 (bounded by SCORES_BUDGET).
    fn prefill_attention_cublas(
        &self,
        n: usize,
        slot: usize,
        kc: DevSlice<'_, Half>,
        vc: DevSlice<'_, Half>,
    ) -> Result<(), CudaError> {
        let dm = self.dims;
        let (d, hkv, group) = (dm.d, dm.hkv, dm.group());
        let scale = 1.0 / (d as f32).sqrt();
        let slot_stride = hkv * self.b.max_len * d; // elements between kv heads' caches
                                                    // The prompt's cache: slot `slot` of the layer's (slots, hkv, max_len, d) cache.
        let (kc, vc) = (kc.at(slot * slot_stride), vc.at(slot * slot_stride));
        let mut q0 = 0;
        while q0 < n {
            let qc = self.b.q_chunk.min(n - q0);
            let kv_len = q0 + qc;
            for j in 0..group {
                // Query head h = g*group + j of every kv head g; q is (hq, n, d).
                let q_ptr = self.b.q.at(((j * n) + q0) * d);
                self.gpu.gemm_nt(
                    qc,
                    kv_len,
                    d,
                    (q_ptr, d),
                    (kc, d),
                    (self.b.scores.view(), kv_len),
                    scale,
                    Some((hkv, (group * n * d) as i64, (self.b.max_len * d) as i64, (qc * kv_len) as i64)),
                )?;
                // SAFETY: causal_softmax_T(const float* scores, T* probs, int n_rows, int q_chunk,
                // int kv_len, int q0) (attention.cu): hkv × qc rows of kv_len in scores and probs,
                // which hold hkv × q_chunk × max_len.
                unsafe {
                    self.gpu.launch(
                        Kernel::CausalSoftmax,
                        ((hkv * qc) as u32, 1, 1),
                        256,
                        0,
                        &[
                            Arg::Ptr(self.b.scores.addr()),
                            Arg::Ptr(self.b.probs.addr()),
                            Arg::I32((hkv * qc) as i32),
                            Arg::I32(qc as i32),
                            Arg::I32(kv_len as i32),
                            Arg::I32(q0 as i32),
                        ],
                    )?;
                }
                // attn rows q0.., columns of head h: row-major (n, hq*d)
                let o_ptr = self.b.attn.at(q0 * dm.hq * d + j * d);
                self.gpu.gemm_nn(
                    qc,
                    d,
                    kv_len,
                    (self.b.probs.view(), kv_len),
                    (vc, d),
                    (o_ptr, dm.hq * d),
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
    fn decode_attention(&self, n: usize, kc: DevSlice<'_, Half>, vc: DevSlice<'_, Half>) -> Result<(), CudaError> {
        let dm = self.dims;
        let group = dm.group();
        let split = self.b.split_len;
        // Dynamic shared memory: decode_attn_pipe see PT_STAGES; in f32: decode_attn_sk max(group × (head_dim + split) + 2 group,
        // 8 warps × group × head_dim); decode_attn_fast 8 warps × group × (head_dim + 2);
        // attention.cu's tiled kernel group × (head_dim + 35).
        let kernel = self.attention.resolve(dm.d, group, split);
        // SAFETY (every launch below): the decode attention kernels (decode.cu's decode_attn_pipe,
        // _sk, _fast, _merge; attention.cu's decode_attn_partial, _combine) take (const T* q,
        // const T* k_cache, const T* v_cache, const int* row_pos, float* part_ml, float* part_acc,
        // [int* counters, T* out — pipe and mma only,] int B, int hq, int hkv, int head_dim, int max_len,
        // int split_len, float scale) and the merges (const float* part_ml, const float* part_acc,
        // T* out, int B, int hq, int head_dim, int n_splits): q (hq, n, d), this layer's caches
        // (slots, hkv, max_len, d), positions < max_len, part_ml / part_acc (slots, hq, n_splits,
        // 2 | d), counters (slots, hkv), attn (n, hq d): Buffers::new sized them for these n_splits
        // and split_len, and `resolve` picked a kernel whose shape limits (head_dim, group, split)
        // hold, with the shared memory it needs.
        let tiled = match kernel {
            DecodeAttention::Pipelined { merge } => Some((
                DECODE_PIPE[group - 1][usize::from(dm.d == 128)],
                256,
                PT_STAGES * 2 * PT_TILE * dm.d * T_BYTES + (group * dm.d + group * PT_TILE + group) * 4,
                merge,
            )),
            DecodeAttention::Mma { merge } => Some((
                DECODE_MMA[usize::from(dm.d == 128)],
                MM_THREADS,
                MM_STAGES * 2 * MM_TILE * dm.d * T_BYTES,
                merge,
            )),
            _ => None,
        };
        if let Some((tiled_kernel, block, shared, merge)) = tiled {
            unsafe {
                self.gpu.launch(
                    tiled_kernel,
                    (dm.hkv as u32, self.b.n_splits as u32, n as u32),
                    block,
                    shared as u32,
                    &[
                        Arg::Ptr(self.b.q.addr()),
                        Arg::Ptr(kc.addr()),
                        Arg::Ptr(vc.addr()),
                        Arg::Ptr(self.b.dec_pos.addr()),
                        Arg::Ptr(self.b.part_ml.addr()),
                        Arg::Ptr(self.b.part_acc.addr()),
                        if merge { Arg::Ptr(self.b.attn_counters.addr()) } else { Arg::Null },
                        Arg::Ptr(self.b.attn.addr()),
                        Arg::I32(n as i32),
                        Arg::I32(dm.hq as i32),
                        Arg::I32(dm.hkv as i32),
                        Arg::I32(dm.d as i32),
                        Arg::I32(self.b.max_len as i32),
                        Arg::I32(self.b.split_len as i32),
                        Arg::F32(1.0 / (dm.d as f32).sqrt()),
                    ],
                )?;
            }
            if merge {
                return Ok(());
            }
        }
        let partial = match kernel {
            DecodeAttention::Pipelined { .. } | DecodeAttention::Mma { .. } => None, // launched above; the merge kernel follows
            DecodeAttention::ScoresFirst => {
                let floats = (group * (dm.d + split) + 2 * group).max(SK_WARPS * group * dm.d);
                Some((DECODE_SK[group - 1][usize::from(dm.d == 128)], 256, (floats * 4) as u32))
            }
            DecodeAttention::Fast => Some((DECODE_FAST[group - 1], 256, (8 * group * (dm.d + 2) * 4) as u32)),
            DecodeAttention::Tiled => Some((Kernel::DecodeAttnPartial, 128, (group * (dm.d + 35) * 4) as u32)),
        };
        if let Some((kernel, block, shared)) = partial {
            unsafe {
                self.gpu.launch(
                    kernel,
                    (dm.hkv as u32, self.b.n_splits as u32, n as u32),
                    block,
                    shared,
                    &[
                        Arg::Ptr(self.b.q.addr()),
                        Arg::Ptr(kc.addr()),
                        Arg::Ptr(vc.addr()),
                        Arg::Ptr(self.b.dec_pos.addr()),
                        Arg::Ptr(self.b.part_ml.addr()),
                        Arg::Ptr(self.b.part_acc.addr()),
                        Arg::I32(n as i32),
                        Arg::I32(dm.hq as i32),
                        Arg::I32(dm.hkv as i32),
                        Arg::I32(dm.d as i32),
                        Arg::I32(self.b.max_len as i32),
                        Arg::I32(self.b.split_len as i32),
                        Arg::F32(1.0 / (dm.d as f32).sqrt()),
                    ],
                )?;
            }
        }
        let merge = if dm.d % 4 == 0 { (Kernel::DecodeAttnMerge, 256) } else { (Kernel::DecodeAttnCombine, 128) };
        unsafe {
            self.gpu.launch(
                merge.0,
                (dm.hq as u32, n as u32, 1),
                merge.1,
                0,
                &[
                    Arg::Ptr(self.b.part_ml.addr()),
                    Arg::Ptr(self.b.part_acc.addr()),
                    Arg::Ptr(self.b.attn.addr()),
                    Arg::I32(n as i32),
                    Arg::I32(dm.hq as i32),
                    Arg::I32(dm.d as i32),
                    Arg::I32(self.b.n_splits as i32),
                ],
            )
        }
    }

    /// This rank's logits of the last LM-head pass, rows × v_local.
    pub fn read_logits(&self, rows: usize) -> Result<Vec<f32>, CudaError> {
        self.gpu.read::<f32>(self.b.logits.view(), rows * self.dims.v_local())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The up-front size checks against an independent count: the config's parameter count (two
    /// bytes each; the f32 norms and biases add a little), split over the ranks except the
    /// embedding, which every rank holds whole; the KV cache by its plain formula.
    #[test]
    fn resident_sizes_follow_the_parameter_count() {
        let cfg = Config::preset("qwen2.5-14b").unwrap();
        let one = Dims::new(&cfg, 0, 1).resident_weight_bytes(cfg.tie_word_embeddings);
        let params = cfg.param_count();
        let rel = one as f64 / (2.0 * params as f64) - 1.0;
        assert!(rel > 0.0 && rel < 0.001, "14B TP=1: {one} bytes for {params} parameters ({rel:e})");
        // 29.5 GB: the size of the fp16 checkpoint tpprof write-checkpoint made of it on the H200.
        assert!((29.4e9..29.7e9).contains(&(one as f64)), "{one}");
        let embed = 2 * cfg.vocab_size as u64 * cfg.hidden_size as u64;
        let two: Vec<u64> = (0..2).map(|r| Dims::new(&cfg, r, 2).resident_weight_bytes(false)).collect();
        assert_eq!(two[0], two[1]);
        let halves = (two[0] - embed) as f64 * 2.0 / (one - embed) as f64 - 1.0;
        assert!(halves.abs() < 0.001, "TP=2 holds half of everything but the embedding ({halves:e})");
        // K and V, 48 layers x 8 KV heads x 128 x 2 bytes per position: 10 800 positions = 2.12 GB.
        let kv = Dims::new(&cfg, 0, 1).kv_cache_bytes(1, 10_800);
        assert_eq!(kv, 2 * 48 * 8 * 128 * 10_800 * 2);
        assert_eq!(Dims::new(&cfg, 1, 2).kv_cache_bytes(1, 10_800), kv / 2);
        assert_eq!(Dims::new(&cfg, 0, 1).kv_cache_bytes(4, 10_800), 4 * kv);
        // No overflow on absurd requests: saturates, so the check refuses them.
        assert_eq!(Dims::new(&cfg, 0, 1).kv_cache_bytes(usize::MAX, usize::MAX), u64::MAX);
        let msg = fits("the weights", u64::MAX, 10 << 30, 80 << 30, "use more ranks").unwrap_err().to_string();
        assert!(
            msg.starts_with("the weights need ") && msg.contains("10.0 GiB free of 80.0 GiB") && !msg.contains('\n'),
            "{msg}"
        );
        assert!(fits("the KV cache", 1 << 30, 2 << 30, 80 << 30, "x").is_ok());
    }

    #[test]
    fn decode_attention_falls_back_where_a_kernel_does_not_apply() {
        use DecodeAttention::*;
        let pipe = Pipelined { merge: true };
        assert_eq!(pipe.resolve(128, 5, 176), pipe);
        // decode_attn_mma: pipe's shape limits, any split; below them the same fallbacks.
        for merge in [false, true] {
            let mma = Mma { merge };
            assert_eq!(mma.resolve(128, 5, 176), mma);
            assert_eq!(mma.resolve(64, 8, 4096), mma);
            assert_eq!(mma.resolve(128, 1, 13), mma);
            assert_eq!(mma.resolve(32, 5, 176), Fast);
            assert_eq!(mma.resolve(96, 5, 176), Tiled);
            assert_eq!(mma.resolve(128, 9, 64), Tiled);
        }
        assert!(DECODE_MMA[0].name().ends_with("_mma_d64") && DECODE_MMA[1].name().ends_with("_mma_d128"));
        assert_eq!(pipe.resolve(64, 8, 4096), pipe, "no split limit: shared memory is per tile");
        assert_eq!(Pipelined { merge: false }.resolve(128, 1, 336), Pipelined { merge: false });
        assert_eq!(pipe.resolve(96, 5, 176), Tiled);
        assert_eq!(pipe.resolve(32, 5, 176), Fast);
        assert_eq!(pipe.resolve(128, 9, 64), Tiled);
        assert!(DECODE_PIPE.iter().enumerate().all(|(g, n)| n[0].name().ends_with(&format!("_pipe_g{}_d64", g + 1))
            && n[1].name().ends_with(&format!("_pipe_g{}_d128", g + 1))));
        // decode.cu's own constants, as the host sizes the shared memory with them.
        let src = include_str!("kernels/decode.cu");
        assert!(
            src.contains(&format!("#define PT_STAGES {PT_STAGES}"))
                && src.contains(&format!("#define PT_TILE {PT_TILE}"))
                && src.contains(&format!("#define MM_TILE (16 * MM_WARPS)"))
                && src.contains(&format!("#define MM_WARPS {}", MM_THREADS / 32))
                && MM_TILE == 16 * (MM_THREADS as usize / 32)
                && src.contains(&format!("#define MM_STAGES {MM_STAGES}"))
        );
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
        assert!(DECODE_SK.iter().enumerate().all(|(g, n)| n[0].name().ends_with(&format!("_sk_g{}_d64", g + 1))
            && n[1].name().ends_with(&format!("_sk_g{}_d128", g + 1))));
        assert!(DECODE_FAST.iter().enumerate().all(|(g, n)| n.name().ends_with(&format!("_fast_g{}", g + 1))));
    }

    #[test]
    fn prefill_attention_parses_and_falls_back_to_cublas() {
        use PrefillAttention::*;
        assert_eq!(PrefillAttention::parse(None).unwrap(), Flash { warps: 4, m_tiles: 2, stages: 2 });
        assert_eq!(PrefillAttention::parse(Some("flash")).unwrap(), PrefillAttention::FLASH2M);
        assert_eq!(PrefillAttention::parse(Some("flash8")).unwrap(), Flash { warps: 8, m_tiles: 1, stages: 2 });
        assert_eq!(PrefillAttention::parse(Some("flash4")).unwrap(), Flash { warps: 4, m_tiles: 1, stages: 2 });
        assert_eq!(PrefillAttention::parse(Some("flash2m")).unwrap(), Flash { warps: 4, m_tiles: 2, stages: 2 });
        assert_eq!(PrefillAttention::parse(Some(" flash2m3")).unwrap(), Flash { warps: 4, m_tiles: 2, stages: 3 });
        assert_eq!(PrefillAttention::parse(Some(" cublas ")).unwrap(), Cublas);
        let e = PrefillAttention::parse(Some("fa3")).unwrap_err().to_string();
        assert!(e.contains("`fa3` is not a prefill attention") && e.contains("flash8"), "{e}");
        for f in
            [PrefillAttention::FLASH8, PrefillAttention::FLASH4, PrefillAttention::FLASH2M, PrefillAttention::FLASH2M3]
        {
            assert_eq!(f.resolve(128, 90), f);
            assert_eq!(f.resolve(64, 80), f);
            assert_eq!(f.resolve(64, 75), Cublas, "mma m16n8k16 and cp.async need sm_80");
            assert_eq!(f.resolve(8, 90), Cublas, "tiny's head_dim 8");
            assert_eq!(f.resolve(96, 90), Cublas);
        }
        // Shapes prefill.cu does not define.
        assert_eq!(Flash { warps: 8, m_tiles: 2, stages: 2 }.resolve(128, 90), Cublas);
        assert_eq!(Flash { warps: 4, m_tiles: 1, stages: 3 }.resolve(128, 90), Cublas);
        assert_eq!(Flash { warps: 4, m_tiles: 2, stages: 4 }.resolve(128, 90), Cublas);
        assert_eq!(Cublas.resolve(128, 90), Cublas);
        assert_eq!(PrefillAttention::kernel(4, 1, 2, 64), Kernel::PrefillAttnD64W4);
        assert_eq!(PrefillAttention::kernel(4, 1, 2, 128), Kernel::PrefillAttnD128W4);
        assert_eq!(PrefillAttention::kernel(8, 1, 2, 64), Kernel::PrefillAttnD64W8);
        assert_eq!(PrefillAttention::kernel(8, 1, 2, 128), Kernel::PrefillAttnD128W8);
        assert_eq!(PrefillAttention::kernel(4, 2, 2, 64), Kernel::PrefillAttnD64W4M2);
        assert_eq!(PrefillAttention::kernel(4, 2, 2, 128), Kernel::PrefillAttnD128W4M2);
        assert_eq!(PrefillAttention::kernel(4, 2, 3, 64), Kernel::PrefillAttnD64W4M2S3);
        assert_eq!(PrefillAttention::kernel(4, 2, 3, 128), Kernel::PrefillAttnD128W4M2S3);
        // Block queries and shared memory as prefill.cu's header states them (T_BYTES = 2).
        assert_eq!(PrefillAttention::block_queries(8, 1), 128);
        assert_eq!(PrefillAttention::block_queries(4, 1), 64);
        assert_eq!(PrefillAttention::block_queries(4, 2), 128);
        assert_eq!(PrefillAttention::shared_bytes(4, 1, 2, 128), 80 * 1024);
        assert_eq!(PrefillAttention::shared_bytes(8, 1, 2, 128), 96 * 1024);
        assert_eq!(PrefillAttention::shared_bytes(4, 2, 2, 128), 96 * 1024);
        assert_eq!(PrefillAttention::shared_bytes(4, 2, 3, 128), 128 * 1024);
        assert!(PrefillAttention::FLASH2M
            .label()
            .contains("4 warps × 2 m-tiles = 128 queries per block, 2 K/V stages"));
        // prefill.cu's own constant, as the host sizes the shared memory with it.
        assert!(include_str!("kernels/prefill.cu").contains(&format!("#define FA_BN {FA_BN}")));
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
    fn gemv_kernel_parses_shapes_and_sizes_its_shared_memory_as_gemv_cu_lays_it_out() {
        assert_eq!(GemvKernel::parse("warp", 132).unwrap(), GemvKernel::Warp);
        assert_eq!(
            GemvKernel::parse(" bulk ", 132).unwrap(),
            GemvKernel::Bulk { sms: 132, per_sm: 1, warps: 16, stages: 2, spin: false }
        );
        let bulk = GemvKernel::parse("bulk:2,4,8", 132).unwrap();
        assert_eq!(bulk, GemvKernel::Bulk { sms: 132, per_sm: 2, warps: 4, stages: 8, spin: false });
        let spin = GemvKernel::parse("bulk:2,16,2,spin", 132).unwrap();
        assert_eq!(spin, GemvKernel::Bulk { sms: 132, per_sm: 2, warps: 16, stages: 2, spin: true });
        assert!(spin.describe().ends_with("cp.async.bulk, polled barriers)"), "{}", spin.describe());
        // Two blocks per SM where they fit 228 KiB (+ 128 static + 1 KiB each), else one; ≤ one per row.
        assert_eq!(bulk.grid(5120, 100_000, 233_472), 264);
        assert_eq!(bulk.grid(5120, 120_000, 233_472), 132);
        assert_eq!(bulk.grid(5120, 240_000, 233_472), 132);
        assert_eq!(bulk.grid(100, 1000, 233_472), 100);
        assert_eq!(bulk.grid(0, 1000, 233_472), 1);
        assert_eq!(
            GemvKernel::parse("bulk:1,8,6", 132).unwrap(),
            GemvKernel::Bulk { sms: 132, per_sm: 1, warps: 8, stages: 6, spin: false }
        );
        for bad in ["bulk:0,4,8", "bulk:1,33,8", "bulk:1,4,0", "bulk:1,4", "bulk:a,b,c", "tma", "bulk:1,4,8,spun"] {
            let e = GemvKernel::parse(bad, 132).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")) && e.contains("bulk:BLOCKS_PER_SM"), "{bad}: {e}");
        }
        assert!(bulk.describe().contains("2 blocks per SM × 132 SMs, 4 warps, 8 stages of 2048 bytes"));
        // The kernel's constants and layout, as gemv.cu defines them.
        let src = include_str!("kernels/gemv.cu");
        assert!(src.contains(&format!("#define GB_CHUNK {GB_CHUNK}")));
        assert!(src.contains(&format!("#define GEMV_MAX_ROWS {GEMV_MAX_ROWS}")));
        assert!(src.contains("return ((unsigned)nw * stages * (GB_CHUNK + 8) + 15u) & ~15u;"));
        assert!(src.contains("float* ys = reinterpret_cast<float*>(xs + (size_t)n_rows * in);"));
        // 4 warps × 8 stages: ring 65 536 + barriers 256 → x at 65 792; qwen2.5-14b's down (in 13 824)
        // for one row: + 27 648 of x + 5 120 / 264 → 20 row sums + 8 slots of (row, 1 sum).
        assert_eq!(gemv_bulk_smem(4, 8, 1, 13824, 20, 2), 65792 + 27648 + 80 + 64);
        // x lands on a 16-byte boundary: 1 warp × 1 stage is 2 056 bytes → 2 064.
        assert_eq!(gemv_bulk_smem(1, 1, 2, 8, 3, 2), 2064 + 32 + 24 + 24);
        assert!(src.contains("float* part_val = reinterpret_cast<float*>(part_row + 2 * nw);"));
        assert!(src.contains("int* part_row = reinterpret_cast<int*>(ys + (size_t)n_rows * rows_max);"));
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
