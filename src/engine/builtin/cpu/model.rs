//! The Qwen2 decoder, block by block, tensor-parallel in the Megatron style.
//!
//! ```text
//! tokens → Embedding → N × DecoderLayer → RmsNorm → LmHead (vocab-parallel) → global argmax
//! DecoderLayer: x += Attention(RmsNorm(x));  x += Mlp(RmsNorm(x))
//! ```
//!
//! Sharding over `world` ranks (rank r): q/k/v and gate/up are column-parallel (each rank owns
//! whole heads / a slice of the MLP width, no communication), o and down are row-parallel (each
//! rank multiplies its slice of the inputs, then one all-reduce SUM gives the full output; that
//! all-reduce lives only in [`RowParallelLinear`]). The LM head is vocab-parallel, followed by a
//! global argmax. Norm weights and the embedding are replicated.
//!
//! Layout: activations are (rows, features) row-major, one row per token. Linear weights are
//! stored (in_local, out_local) so y = x · W is one sgemm with M = rows (see weights.rs).
//!
//! Weights: every block's `new` asks a [`WeightSource`] for exactly its shard (the seeded
//! generator or a safetensors checkpoint; see weights.rs).

use std::ops::Range;

use super::comm::TpComm;
use super::ops::{apply_rope, rms_norm, rope_cos_sin, rope_inv_freq, sgemm, silu_mul, softmax_prefix, MatMut, MatRef};
use super::weights::{SeededWeights, Shard, WeightKind, WeightSource};
use super::CpuError;
use crate::engine::config::Config;
use crate::engine::safetensors::WeightsError;

/// Queries are processed in blocks of at most this many rows, so a long prefill never holds a
/// full len × len score matrix: the score buffer is (QUERY_BLOCK, kv_len).
pub const QUERY_BLOCK: usize = 256;

/// Consecutive rows of one forward pass that belong to one sample: `rows` tokens at absolute
/// positions `start..start + rows`. A prefill is one segment holding the whole prompt; a decode
/// step is one single-row segment per running sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub sample: usize,
    pub start: usize,
    pub rows: usize,
}

/// RoPE cos/sin tables, (rows, head_dim/2) each, for the rows of one forward pass.
#[derive(Clone, Copy)]
pub struct RopeTables<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// Resizes `buf` to exactly `n` elements (keeping its allocation when it shrinks) and returns it.
/// Contents are unspecified: every user overwrites what it reads.
fn sized(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    buf.resize(n, 0.0);
    &mut buf[..n]
}

fn bytes_of(buf: &[f32]) -> u64 {
    std::mem::size_of_val(buf) as u64
}

fn capacity_bytes(buf: &Vec<f32>) -> u64 {
    (buf.capacity() * std::mem::size_of::<f32>()) as u64
}

// ----------------------------------------------------------------------------------------------
// Scratch space
// ----------------------------------------------------------------------------------------------

/// Activation buffers shared by all layers (one forward pass at a time), grown on demand.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,           // (rows, hidden) residual stream
    normed: Vec<f32>,      // (rows, hidden) RMSNorm output, input of attention / MLP
    block_out: Vec<f32>,   // (rows, hidden) attention or MLP output, after the all-reduce
    positions: Vec<usize>, // (rows) absolute position of each row
    cos: Vec<f32>,         // (rows, head_dim/2) RoPE tables, shared by all layers
    sin: Vec<f32>,         // (rows, head_dim/2)
    attn: AttentionScratch,
    mlp: MlpScratch,
    last: Vec<f32>,        // (segments, hidden) last row of each segment, then its final norm
    last_normed: Vec<f32>, // (segments, hidden)
    logits: Vec<f32>,      // (segments, vocab_local)
}

#[derive(Default)]
pub struct AttentionScratch {
    q: Vec<f32>,       // (rows, q_heads_local*head_dim)
    k: Vec<f32>,       // (rows, kv_heads_local*head_dim)
    v: Vec<f32>,       // (rows, kv_heads_local*head_dim)
    context: Vec<f32>, // (rows, q_heads_local*head_dim) softmax(QKᵀ)V per head
    scores: Vec<f32>,  // (≤ QUERY_BLOCK, kv_len) one head's scores / probabilities
}

#[derive(Default)]
pub struct MlpScratch {
    gate: Vec<f32>, // (rows, intermediate_local), then silu(gate) * up
    up: Vec<f32>,   // (rows, intermediate_local)
}

impl Scratch {
    /// Logits of the last LM-head pass: (segments, vocab_local), row-major.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Bytes currently allocated for activations.
    pub fn bytes(&self) -> u64 {
        let f32_bufs = [
            &self.x,
            &self.normed,
            &self.block_out,
            &self.cos,
            &self.sin,
            &self.attn.q,
            &self.attn.k,
            &self.attn.v,
            &self.attn.context,
            &self.attn.scores,
            &self.mlp.gate,
            &self.mlp.up,
            &self.last,
            &self.last_normed,
            &self.logits,
        ];
        f32_bufs.iter().map(|b| capacity_bytes(b)).sum::<u64>()
            + (self.positions.capacity() * std::mem::size_of::<usize>()) as u64
    }
}

// ----------------------------------------------------------------------------------------------
// Linear layers
// ----------------------------------------------------------------------------------------------

/// y = x · W (+ b), W split by output features; needs no communication.
pub struct ColumnParallelLinear {
    weight: Vec<f32>,       // (in_features, out_local)
    bias: Option<Vec<f32>>, // (out_local)
    in_features: usize,
    out_local: usize,
}

impl ColumnParallelLinear {
    /// Keeps output features `out_range` of the full (out_features, in_features) tensor `kind`
    /// of `layer`; `bias` names the bias tensor, if the layer has one.
    pub fn new(
        weights: &dyn WeightSource,
        layer: usize,
        (kind, bias): (WeightKind, Option<WeightKind>),
        (out_features, in_features): (usize, usize),
        out_range: Range<usize>,
    ) -> Result<Self, WeightsError> {
        let weight = weights.linear(layer, kind, out_features, in_features, out_range.clone(), 0..in_features)?;
        let bias = match bias {
            Some(b) => Some(weights.bias(layer, b, out_features, out_range.clone())?),
            None => None,
        };
        Ok(ColumnParallelLinear { weight, bias, in_features, out_local: out_range.len() })
    }

    /// x: (rows, in_features) → out: (rows, out_local).
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<(), CpuError> {
        let y = sized(out, rows * self.out_local);
        // The bias is broadcast into y first, then the GEMM accumulates onto it (beta = 1).
        let beta = match &self.bias {
            Some(b) => {
                y.chunks_exact_mut(self.out_local.max(1)).for_each(|row| row.copy_from_slice(b));
                1.0
            }
            None => 0.0,
        };
        sgemm(
            1.0,
            MatRef::row_major(x, rows, self.in_features)?,
            MatRef::row_major(&self.weight, self.in_features, self.out_local)?,
            beta,
            MatMut::row_major(y, rows, self.out_local)?,
        )?;
        Ok(())
    }

    fn weight_bytes(&self) -> u64 {
        bytes_of(&self.weight) + self.bias.as_deref().map_or(0, bytes_of)
    }
}

/// y = all_reduce_sum(x_local · W_local), W split by input features: each rank holds the rows of
/// W matching its slice of x (the column-parallel layer before it produced exactly that slice).
pub struct RowParallelLinear {
    weight: Vec<f32>, // (in_local, out_features)
    in_local: usize,
    out_features: usize,
}

impl RowParallelLinear {
    /// Keeps input features `in_range` of the full (out_features, in_features) tensor `kind` of
    /// `layer` (no bias: Qwen2's o_proj and down_proj have none, and a bias would have to be
    /// added once, not per rank).
    pub fn new(
        weights: &dyn WeightSource,
        layer: usize,
        kind: WeightKind,
        (out_features, in_features): (usize, usize),
        in_range: Range<usize>,
    ) -> Result<Self, WeightsError> {
        let weight = weights.linear(layer, kind, out_features, in_features, 0..out_features, in_range.clone())?;
        Ok(RowParallelLinear { weight, in_local: in_range.len(), out_features })
    }

    /// x: (rows, in_local) → out: (rows, out_features), summed over all ranks.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut Vec<f32>, comm: &mut dyn TpComm) -> Result<(), CpuError> {
        let y = sized(out, rows * self.out_features);
        sgemm(
            1.0,
            MatRef::row_major(x, rows, self.in_local)?,
            MatRef::row_major(&self.weight, self.in_local, self.out_features)?,
            0.0,
            MatMut::row_major(y, rows, self.out_features)?,
        )?;
        // The partial products of all ranks add up to the full x · W.
        comm.all_reduce_sum(y)?;
        Ok(())
    }

    fn weight_bytes(&self) -> u64 {
        bytes_of(&self.weight)
    }
}

// ----------------------------------------------------------------------------------------------
// Embedding, RMSNorm
// ----------------------------------------------------------------------------------------------

/// Token embedding. Every rank holds the full (vocab, hidden) table: the simplest choice (a
/// vocab-parallel embedding would need a masked lookup plus an all-reduce) and it is also the
/// tied LM head's source, of which each rank reads only its vocabulary rows.
pub struct Embedding {
    table: Vec<f32>, // (vocab, hidden)
    vocab: usize,
    hidden: usize,
}

impl Embedding {
    pub fn new(cfg: &Config, weights: &dyn WeightSource) -> Result<Self, WeightsError> {
        let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
        Ok(Embedding { table: weights.table(WeightKind::Embedding, vocab, hidden, 0..vocab)?, vocab, hidden })
    }

    /// tokens: (rows) → out: (rows, hidden).
    pub fn forward(&self, tokens: &[i32], out: &mut Vec<f32>) -> Result<(), CpuError> {
        let h = self.hidden;
        let x = sized(out, tokens.len() * h);
        for (row, &t) in x.chunks_exact_mut(h).zip(tokens) {
            let t = usize::try_from(t)
                .ok()
                .filter(|&t| t < self.vocab)
                .ok_or_else(|| CpuError::Internal(format!("token {t} outside the vocabulary [0, {})", self.vocab)))?;
            row.copy_from_slice(&self.table[t * h..(t + 1) * h]);
        }
        Ok(())
    }

    /// Rows `range` of the table: (range.len(), hidden).
    fn rows(&self, range: Range<usize>) -> &[f32] {
        &self.table[range.start * self.hidden..range.end * self.hidden]
    }
}

/// RMSNorm: x * w / sqrt(mean(x²) + eps), row by row. Weights are replicated on every rank.
pub struct RmsNorm {
    weight: Vec<f32>, // (hidden)
    eps: f32,
}

impl RmsNorm {
    /// The norm weight `kind` of `layer` (`layer` is ignored for the final norm).
    pub fn new(cfg: &Config, weights: &dyn WeightSource, layer: usize, kind: WeightKind) -> Result<Self, WeightsError> {
        Ok(RmsNorm { weight: weights.norm(layer, kind, cfg.hidden_size)?, eps: cfg.rms_norm_eps as f32 })
    }

    /// x: (rows, hidden) → out: (rows, hidden).
    pub fn forward(&self, x: &[f32], out: &mut Vec<f32>) -> Result<(), CpuError> {
        rms_norm(x, &self.weight, self.eps, sized(out, x.len()))?;
        Ok(())
    }
}

// ----------------------------------------------------------------------------------------------
// Attention with KV cache
// ----------------------------------------------------------------------------------------------

/// One sample's cached keys and values for this rank's kv heads (RoPE already applied to keys).
#[derive(Default)]
pub struct KvCache {
    k: Vec<f32>, // (capacity, kv_heads_local*head_dim)
    v: Vec<f32>, // (capacity, kv_heads_local*head_dim)
    len: usize,  // positions filled
}

impl KvCache {
    /// Empties the cache and sizes it for `positions` tokens of width `kv_dim` (an existing
    /// allocation of the same size is reused).
    fn reset(&mut self, positions: usize, kv_dim: usize) {
        for buf in [&mut self.k, &mut self.v] {
            buf.resize(positions * kv_dim, 0.0);
            buf.shrink_to_fit();
        }
        self.len = 0;
    }

    /// Appends `rows` rows of keys and values.
    fn append(&mut self, k: &[f32], v: &[f32], kv_dim: usize) -> Result<(), CpuError> {
        let (from, to) = (self.len * kv_dim, self.len * kv_dim + k.len());
        if to > self.k.len() || v.len() != k.len() {
            return Err(CpuError::Internal(format!(
                "KV cache overflow: {} positions cached, {} more, room for {}",
                self.len,
                k.len() / kv_dim.max(1),
                self.k.len() / kv_dim.max(1)
            )));
        }
        self.k[from..to].copy_from_slice(k);
        self.v[from..to].copy_from_slice(v);
        self.len += k.len() / kv_dim.max(1);
        Ok(())
    }
}

/// Causal grouped-query self-attention with RoPE; this rank computes whole heads
/// [rank*h/world, (rank+1)*h/world) and the matching kv heads, then the row-parallel o_proj
/// sums all heads' contributions across ranks.
pub struct Attention {
    q_proj: ColumnParallelLinear, // (hidden, q_heads_local*head_dim), with bias
    k_proj: ColumnParallelLinear, // (hidden, kv_heads_local*head_dim), with bias
    v_proj: ColumnParallelLinear, // (hidden, kv_heads_local*head_dim), with bias
    o_proj: RowParallelLinear,    // (q_heads_local*head_dim, hidden), no bias
    heads_local: usize,
    kv_heads_local: usize,
    head_dim: usize,
    cache: Vec<KvCache>, // one per sample of the current batch
}

impl Attention {
    pub fn new(cfg: &Config, shard: Shard, weights: &dyn WeightSource, layer: usize) -> Result<Self, WeightsError> {
        let (hidden, d) = (cfg.hidden_size, cfg.head_dim());
        let (q_dim, kv_dim) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        let heads = shard.range(cfg.num_attention_heads);
        let kv_heads = shard.range(cfg.num_key_value_heads);
        let q_cols = heads.start * d..heads.end * d;
        let kv_cols = kv_heads.start * d..kv_heads.end * d;
        use WeightKind::*;
        let column =
            |kinds, out_features, cols| ColumnParallelLinear::new(weights, layer, kinds, (out_features, hidden), cols);
        Ok(Attention {
            q_proj: column((QProj, Some(QBias)), q_dim, q_cols.clone())?,
            k_proj: column((KProj, Some(KBias)), kv_dim, kv_cols.clone())?,
            v_proj: column((VProj, Some(VBias)), kv_dim, kv_cols)?,
            o_proj: RowParallelLinear::new(weights, layer, OProj, (hidden, q_dim), q_cols)?,
            heads_local: heads.len(),
            kv_heads_local: kv_heads.len(),
            head_dim: d,
            cache: Vec::new(),
        })
    }

    /// One empty cache per sample, sample i sized for `positions[i]` tokens.
    pub fn reset_cache(&mut self, positions: &[usize]) {
        let kv_dim = self.kv_heads_local * self.head_dim;
        self.cache.truncate(positions.len());
        self.cache.resize_with(positions.len(), KvCache::default);
        for (cache, &n) in self.cache.iter_mut().zip(positions) {
            cache.reset(n, kv_dim);
        }
    }

    fn cache_bytes(&self) -> u64 {
        self.cache.iter().map(|c| capacity_bytes(&c.k) + capacity_bytes(&c.v)).sum()
    }

    /// x: (rows, hidden) normed input, rows grouped by `segments`; rope: the rows' RoPE tables
    /// → out: (rows, hidden), already summed over ranks. Appends the rows' keys/values to the
    /// segments' caches, whose length must equal each segment's start position.
    pub fn forward(
        &mut self,
        x: &[f32],
        segments: &[Segment],
        rope: RopeTables<'_>,
        s: &mut AttentionScratch,
        out: &mut Vec<f32>,
        comm: &mut dyn TpComm,
    ) -> Result<(), CpuError> {
        let rows: usize = segments.iter().map(|seg| seg.rows).sum();
        let d = self.head_dim;
        let q_dim = self.heads_local * d; // width of q and of the attention context
        let kv_dim = self.kv_heads_local * d; // width of k, v and of a cache row
        let group = self.heads_local / self.kv_heads_local.max(1); // query heads per kv head
        let scale = 1.0 / (d as f32).sqrt();

        self.q_proj.forward(x, rows, &mut s.q)?; // (rows, q_dim)
        self.k_proj.forward(x, rows, &mut s.k)?; // (rows, kv_dim)
        self.v_proj.forward(x, rows, &mut s.v)?; // (rows, kv_dim)
        apply_rope(&mut s.q, d, rope.cos, rope.sin)?;
        apply_rope(&mut s.k, d, rope.cos, rope.sin)?;
        let context = sized(&mut s.context, rows * q_dim); // (rows, q_dim)

        let mut row0 = 0; // first row of the current segment
        for seg in segments {
            let cache = self
                .cache
                .get_mut(seg.sample)
                .ok_or_else(|| CpuError::Internal(format!("no KV cache for sample {}", seg.sample)))?;
            if cache.len != seg.start {
                return Err(CpuError::Internal(format!(
                    "sample {}: KV cache holds {} positions, the segment starts at {}",
                    seg.sample, cache.len, seg.start
                )));
            }
            let rows_kv = row0 * kv_dim..(row0 + seg.rows) * kv_dim;
            cache.append(&s.k[rows_kv.clone()], &s.v[rows_kv], kv_dim)?;
            let cache = &*cache;

            for b0 in (0..seg.rows).step_by(QUERY_BLOCK) {
                let nq = QUERY_BLOCK.min(seg.rows - b0); // queries in this block
                let kv_len = seg.start + b0 + nq; // keys visible to the block's last query
                let scores = sized(&mut s.scores, nq * kv_len); // (nq, kv_len)
                for h in 0..self.heads_local {
                    let kv_h = h / group; // GQA: the kv head this query head reads
                    let q_off = (row0 + b0) * q_dim + h * d;
                    // Q_h: (nq, d), this head's columns of the block's rows.
                    let q_h = MatRef::new(&s.q[q_off..], nq, d, q_dim, 1)?;
                    // K_hᵀ: (d, kv_len); element (i, j) is key j's component i.
                    let k_t = MatRef::new(&cache.k[kv_h * d..], d, kv_len, 1, kv_dim)?;
                    sgemm(scale, q_h, k_t, 0.0, MatMut::row_major(scores, nq, kv_len)?)?;
                    // Causal mask: query i (position start+b0+i) sees keys 0..=start+b0+i.
                    for (i, row) in scores.chunks_exact_mut(kv_len).enumerate() {
                        softmax_prefix(row, seg.start + b0 + i + 1)?;
                    }
                    // context_h = P · V_h: (nq, kv_len) · (kv_len, d).
                    let v_h = MatRef::new(&cache.v[kv_h * d..], kv_len, d, kv_dim, 1)?;
                    let ctx_h = MatMut::new(&mut context[q_off..], nq, d, q_dim, 1)?;
                    sgemm(1.0, MatRef::row_major(scores, nq, kv_len)?, v_h, 0.0, ctx_h)?;
                }
            }
            row0 += seg.rows;
        }
        self.o_proj.forward(context, rows, out, comm)
    }

    fn weight_bytes(&self) -> u64 {
        self.q_proj.weight_bytes()
            + self.k_proj.weight_bytes()
            + self.v_proj.weight_bytes()
            + self.o_proj.weight_bytes()
    }
}

// ----------------------------------------------------------------------------------------------
// MLP
// ----------------------------------------------------------------------------------------------

/// SwiGLU MLP: down(silu(gate(x)) * up(x)); this rank owns intermediate columns
/// [rank*I/world, (rank+1)*I/world).
pub struct Mlp {
    gate_proj: ColumnParallelLinear, // (hidden, intermediate_local)
    up_proj: ColumnParallelLinear,   // (hidden, intermediate_local)
    down_proj: RowParallelLinear,    // (intermediate_local, hidden)
}

impl Mlp {
    pub fn new(cfg: &Config, shard: Shard, weights: &dyn WeightSource, layer: usize) -> Result<Self, WeightsError> {
        let (hidden, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let cols = shard.range(inter);
        use WeightKind::*;
        let column = |kind| ColumnParallelLinear::new(weights, layer, (kind, None), (inter, hidden), cols.clone());
        Ok(Mlp {
            gate_proj: column(GateProj)?,
            up_proj: column(UpProj)?,
            down_proj: RowParallelLinear::new(weights, layer, DownProj, (hidden, inter), cols)?,
        })
    }

    /// x: (rows, hidden) → out: (rows, hidden), summed over ranks.
    pub fn forward(
        &self,
        x: &[f32],
        rows: usize,
        s: &mut MlpScratch,
        out: &mut Vec<f32>,
        comm: &mut dyn TpComm,
    ) -> Result<(), CpuError> {
        self.gate_proj.forward(x, rows, &mut s.gate)?; // (rows, intermediate_local)
        self.up_proj.forward(x, rows, &mut s.up)?; // (rows, intermediate_local)
        silu_mul(&mut s.gate, &s.up)?; // elementwise, so it shards by column for free
        self.down_proj.forward(&s.gate, rows, out, comm)
    }

    fn weight_bytes(&self) -> u64 {
        self.gate_proj.weight_bytes() + self.up_proj.weight_bytes() + self.down_proj.weight_bytes()
    }
}

// ----------------------------------------------------------------------------------------------
// Decoder layer
// ----------------------------------------------------------------------------------------------

/// Pre-norm residual block: x += Attention(RmsNorm(x)); x += Mlp(RmsNorm(x)).
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    pub fn new(cfg: &Config, shard: Shard, weights: &dyn WeightSource, layer: usize) -> Result<Self, WeightsError> {
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::new(cfg, weights, layer, WeightKind::InputNorm)?,
            self_attn: Attention::new(cfg, shard, weights, layer)?,
            post_attention_layernorm: RmsNorm::new(cfg, weights, layer, WeightKind::PostAttentionNorm)?,
            mlp: Mlp::new(cfg, shard, weights, layer)?,
        })
    }

    /// x: (rows, hidden) residual stream, updated in place. Scratch buffers other than `x`.
    fn forward(
        &mut self,
        x: &mut [f32],
        segments: &[Segment],
        s: &mut Scratch,
        comm: &mut dyn TpComm,
    ) -> Result<(), CpuError> {
        let rows = segments.iter().map(|seg| seg.rows).sum();
        self.input_layernorm.forward(x, &mut s.normed)?;
        let rope = RopeTables { cos: &s.cos, sin: &s.sin };
        self.self_attn.forward(&s.normed, segments, rope, &mut s.attn, &mut s.block_out, comm)?;
        x.iter_mut().zip(&s.block_out).for_each(|(x, a)| *x += a);
        self.post_attention_layernorm.forward(x, &mut s.normed)?;
        self.mlp.forward(&s.normed, rows, &mut s.mlp, &mut s.block_out, comm)?;
        x.iter_mut().zip(&s.block_out).for_each(|(x, m)| *x += m);
        Ok(())
    }

    fn weight_bytes(&self) -> u64 {
        bytes_of(&self.input_layernorm.weight)
            + self.self_attn.weight_bytes()
            + bytes_of(&self.post_attention_layernorm.weight)
            + self.mlp.weight_bytes()
    }
}

// ----------------------------------------------------------------------------------------------
// LM head and greedy sampling
// ----------------------------------------------------------------------------------------------

/// Vocab-parallel LM head: this rank scores tokens [rank*V/world, (rank+1)*V/world).
pub struct LmHead {
    /// (vocab_local, hidden), Hugging Face layout; None when tied to the embedding, whose rows
    /// `vocab` are then used in place (no copy).
    weight: Option<Vec<f32>>,
    vocab: Range<usize>,
    hidden: usize,
}

impl LmHead {
    pub fn new(cfg: &Config, shard: Shard, weights: &dyn WeightSource) -> Result<Self, WeightsError> {
        let vocab = shard.range(cfg.vocab_size);
        let weight = if cfg.tie_word_embeddings {
            None
        } else {
            let (n, h) = (cfg.vocab_size, cfg.hidden_size);
            Some(weights.table(WeightKind::LmHead, n, h, vocab.clone())?)
        };
        Ok(LmHead { weight, vocab, hidden: cfg.hidden_size })
    }

    /// h: (m, hidden) → logits: (m, vocab_local) = h · W_localᵀ.
    pub fn forward(&self, h: &[f32], m: usize, embedding: &Embedding, logits: &mut Vec<f32>) -> Result<(), CpuError> {
        let w = match &self.weight {
            Some(w) => w.as_slice(),
            None => embedding.rows(self.vocab.clone()),
        };
        let n = self.vocab.len();
        sgemm(
            1.0,
            MatRef::row_major(h, m, self.hidden)?,
            MatRef::transposed(w, self.hidden, n)?, // (hidden, vocab_local) view of (vocab_local, hidden)
            0.0,
            MatMut::row_major(sized(logits, m * n), m, n)?,
        )?;
        Ok(())
    }

    /// Greedy token per row over the FULL vocabulary: each rank finds its local max, then all
    /// ranks gather (max value, global token id) and pick the largest value, ties going to the
    /// smallest token id (which is also what a world-1 argmax returns). NaN logits are skipped.
    pub fn argmax(&self, logits: &[f32], m: usize, comm: &mut dyn TpComm) -> Result<Vec<i32>, CpuError> {
        let n = self.vocab.len();
        let mut best_val = vec![f32::NEG_INFINITY; m];
        let mut best_id = vec![i32::MAX; m]; // i32::MAX: "nothing found" (all NaN)
        for (r, row) in logits.chunks_exact(n.max(1)).take(m).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                // Strictly greater: the first (smallest id) of equal maxima wins.
                if v > best_val[r] || (best_id[r] == i32::MAX && v == f32::NEG_INFINITY) {
                    best_val[r] = v;
                    best_id[r] = (self.vocab.start + j) as i32;
                }
            }
        }
        let world = comm.world();
        let mut all_val = vec![0.0f32; m * world];
        let mut all_id = vec![0i32; m * world];
        comm.all_gather_f32(&best_val, &mut all_val)?;
        comm.all_gather_i32(&best_id, &mut all_id)?;
        (0..m)
            .map(|r| {
                let mut pick = (f32::NEG_INFINITY, i32::MAX);
                for rank in 0..world {
                    let (v, id) = (all_val[rank * m + r], all_id[rank * m + r]);
                    if id != i32::MAX && (v > pick.0 || (v == pick.0 && id < pick.1)) {
                        pick = (v, id);
                    }
                }
                if pick.1 == i32::MAX {
                    Err(CpuError::NonFinite(format!("all logits of row {r} are NaN")))
                } else {
                    Ok(pick.1)
                }
            })
            .collect()
    }

    fn weight_bytes(&self) -> u64 {
        self.weight.as_deref().map_or(0, bytes_of)
    }
}

// ----------------------------------------------------------------------------------------------
// The whole model
// ----------------------------------------------------------------------------------------------

/// This rank's shard of the full decoder.
pub struct Transformer {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: LmHead,
    inv_freq: Vec<f64>, // (head_dim/2) RoPE frequencies
    hidden: usize,
}

impl Transformer {
    /// Generates this rank's seeded weights; `cfg` must already pass
    /// `check_tensor_parallel(world)`.
    pub fn new(cfg: &Config, shard: Shard, seed: u64) -> Self {
        Transformer::load(cfg, shard, &SeededWeights { seed })
            .expect("the seeded generator serves every tensor of a valid config")
    }

    /// Takes this rank's shard of every weight from `weights`; `cfg` must already pass
    /// `check_tensor_parallel(world)`.
    pub fn load(cfg: &Config, shard: Shard, weights: &dyn WeightSource) -> Result<Self, WeightsError> {
        Ok(Transformer {
            embed_tokens: Embedding::new(cfg, weights)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|l| DecoderLayer::new(cfg, shard, weights, l))
                .collect::<Result<_, _>>()?,
            norm: RmsNorm::new(cfg, weights, 0, WeightKind::FinalNorm)?,
            lm_head: LmHead::new(cfg, shard, weights)?,
            inv_freq: rope_inv_freq(cfg.head_dim(), cfg.rope_theta),
            hidden: cfg.hidden_size,
        })
    }

    /// Empties every layer's KV caches: one per sample, sample i sized for `positions[i]` tokens.
    pub fn reset_kv_cache(&mut self, positions: &[usize]) {
        self.layers.iter_mut().for_each(|l| l.self_attn.reset_cache(positions));
    }

    /// Runs `tokens` (one per row, grouped by `segments`) through the model, extending the
    /// segments' KV caches, and returns the greedy next token of each segment (from its last row).
    pub fn next_tokens(
        &mut self,
        tokens: &[i32],
        segments: &[Segment],
        s: &mut Scratch,
        comm: &mut dyn TpComm,
    ) -> Result<Vec<i32>, CpuError> {
        let rows: usize = segments.iter().map(|seg| seg.rows).sum();
        if rows != tokens.len() || segments.iter().any(|seg| seg.rows == 0) {
            return Err(CpuError::Internal(format!("{} tokens for segments {segments:?}", tokens.len())));
        }
        let h = self.hidden;

        // RoPE tables for every row, computed once and shared by all layers.
        s.positions.clear();
        s.positions.extend(segments.iter().flat_map(|seg| seg.start..seg.start + seg.rows));
        let half = self.inv_freq.len();
        rope_cos_sin(&s.positions, &self.inv_freq, sized(&mut s.cos, rows * half), sized(&mut s.sin, rows * half))?;

        // The residual stream is taken out of the scratch so the layers can borrow the rest.
        let mut x = std::mem::take(&mut s.x);
        let result = (|| {
            self.embed_tokens.forward(tokens, &mut x)?; // (rows, hidden)
            for layer in &mut self.layers {
                layer.forward(&mut x, segments, s, comm)?;
            }
            // Only each segment's last row predicts a token: final norm and LM head on those.
            let m = segments.len();
            let last = sized(&mut s.last, m * h); // (m, hidden)
            let mut end = 0;
            for (seg, dst) in segments.iter().zip(last.chunks_exact_mut(h)) {
                end += seg.rows;
                dst.copy_from_slice(&x[(end - 1) * h..end * h]);
            }
            self.norm.forward(&s.last, &mut s.last_normed)?;
            self.lm_head.forward(&s.last_normed, m, &self.embed_tokens, &mut s.logits)?; // (m, vocab_local)
            self.lm_head.argmax(&s.logits, m, comm)
        })();
        s.x = x;
        result
    }

    /// Bytes of weights this rank holds.
    pub fn weight_bytes(&self) -> u64 {
        bytes_of(&self.embed_tokens.table)
            + self.layers.iter().map(DecoderLayer::weight_bytes).sum::<u64>()
            + bytes_of(&self.norm.weight)
            + self.lm_head.weight_bytes()
    }

    /// Bytes of KV cache this rank holds (all layers, all samples).
    pub fn kv_cache_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.self_attn.cache_bytes()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::builtin::cpu::comm::SingleRank;

    /// Attention of one head computed the naive way, to check the blocked, strided version.
    #[test]
    fn blocked_attention_matches_naive_and_decode_matches_prefill() {
        let mut cfg = Config::preset("tiny").unwrap();
        cfg.num_hidden_layers = 1;
        let seed = 3;
        let n = 300; // > QUERY_BLOCK: two query blocks
        let tokens: Vec<i32> = (0..n).map(|i| (i * 7 % 512) as i32).collect();

        // Prefill all n tokens at once vs prefill n-1 then decode one: same next token and the
        // same last-row hidden state (up to rounding).
        let mut comm = SingleRank;
        let mut a = Transformer::new(&cfg, Shard::FULL, seed);
        let mut sa = Scratch::default();
        a.reset_kv_cache(&[n]);
        let full = a.next_tokens(&tokens, &[Segment { sample: 0, start: 0, rows: n }], &mut sa, &mut comm).unwrap();

        let mut b = Transformer::new(&cfg, Shard::FULL, seed);
        let mut sb = Scratch::default();
        b.reset_kv_cache(&[n]);
        b.next_tokens(&tokens[..n - 1], &[Segment { sample: 0, start: 0, rows: n - 1 }], &mut sb, &mut comm).unwrap();
        let step = b
            .next_tokens(&tokens[n - 1..], &[Segment { sample: 0, start: n - 1, rows: 1 }], &mut sb, &mut comm)
            .unwrap();
        assert_eq!(full, step);
        for (x, y) in sa.last_normed.iter().zip(&sb.last_normed) {
            assert!((x - y).abs() < 1e-4 * (1.0 + x.abs()), "{x} vs {y}");
        }

        // Naive attention for layer 0, head 0 at the last query, from the cached keys/values.
        let attn = &a.layers[0].self_attn;
        let cache = &attn.cache[0];
        let (d, kv_dim, q_dim) = (attn.head_dim, attn.kv_heads_local * attn.head_dim, attn.heads_local * attn.head_dim);
        let q = &sa.attn.q[(n - 1) * q_dim..(n - 1) * q_dim + d];
        let scores: Vec<f32> =
            (0..n).map(|j| (0..d).map(|i| q[i] * cache.k[j * kv_dim + i]).sum::<f32>() / (d as f32).sqrt()).collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let z: f32 = e.iter().sum();
        for i in 0..d {
            let want: f32 = (0..n).map(|j| e[j] / z * cache.v[j * kv_dim + i]).sum();
            let got = sa.attn.context[(n - 1) * q_dim + i];
            assert!((want - got).abs() < 1e-5 * (1.0 + want.abs()), "{want} vs {got}");
        }
    }

    #[test]
    fn argmax_ties_go_to_the_smallest_id() {
        let cfg = Config::preset("tiny").unwrap();
        let head = LmHead::new(&cfg, Shard::FULL, &SeededWeights { seed: 1 }).unwrap();
        let mut logits = vec![0.0f32; 2 * 512];
        logits[5] = 2.0;
        logits[9] = 2.0;
        logits[512 + 3] = f32::NAN;
        logits[512 + 7] = 1.0;
        assert_eq!(head.argmax(&logits, 2, &mut SingleRank).unwrap(), vec![5, 7]);
        let nan = vec![f32::NAN; 512];
        assert!(head.argmax(&nan, 1, &mut SingleRank).is_err());
    }
}
