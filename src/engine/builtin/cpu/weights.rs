//! Synthetic weights: a counter-based generator that defines every element of every FULL tensor,
//! so that any rank can generate exactly its shard, and any engine (this one, or a CUDA kernel)
//! can reproduce the same numbers bit for bit.
//!
//! # The exact recipe
//!
//! ```text
//! mix64(z):  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9      (wrapping u64 arithmetic)
//!            z = (z ^ (z >> 27)) * 0x94D049BB133111EB
//!            return z ^ (z >> 31)                            (splitmix64's finalizer)
//! GAMMA    = 0x9E3779B97F4A7C15
//! key      = mix64(seed ^ mix64(tensor_id + GAMMA))
//! bits     = mix64(key + (index + 1) * GAMMA)                (splitmix64's index-th output)
//! u        = (bits >> 40) as f32 * 2^-24                     (24 random bits, exact in f32)
//! init_value(seed, tensor_id, index) = 2u - 1               in [-1, 1), exact in f32
//! ```
//!
//! `index` is the row-major position in the FULL tensor in Hugging Face layout: element (o, i)
//! of a linear weight of shape (out, in) has index `o * in + i`; element (v, h) of the
//! embedding / LM head (vocab, hidden) has index `v * hidden + h`; element j of a vector (bias,
//! norm weight) has index j. Because the value depends only on (seed, tensor id, full index),
//! the generated tokens do not depend on the world size.
//!
//! Values actually stored (each product/sum rounded to f32 separately, no FMA; a CUDA kernel
//! must use `__fmul_rn` / `__fadd_rn`):
//!
//! | tensor                         | value                                     |
//! |--------------------------------|-------------------------------------------|
//! | q/k/v/o/gate/up/down weights   | `init_value * scale`, `scale = (1 / sqrt(in_features as f64)) as f32` |
//! | q/k/v biases                   | `0.02f32 * init_value`                    |
//! | RMSNorm weights                | `1.0f32 + 0.1f32 * init_value`            |
//! | embedding                      | `init_value * EMBEDDING_SCALE` (0.02f32)  |
//! | untied LM head (vocab, hidden) | `init_value * scale`, `scale = (1 / sqrt(hidden_size as f64)) as f32` |
//!
//! Tensor ids: see [`tensor_id`].
//!
//! # Where a rank's weights come from
//!
//! The model's blocks do not call the generator directly: each asks a [`WeightSource`] for its
//! shard. [`SeededWeights`] is the recipe above. A [`SafetensorsDir`] reads a Hugging Face
//! checkpoint. [`write_checkpoint`] writes the seeded model as such a checkpoint (f32, or the same
//! values rounded to f16 / bf16), so the two sources can be checked against each other and third-
//! party engines can load the model. It streams: one piece of one tensor is in memory at a time,
//! generated on every core, so a 14 B-parameter checkpoint needs no more memory than a small one.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;
use std::path::Path;

use half::{bf16, f16};

use crate::engine::config::Config;
use crate::engine::safetensors::{
    write_index, write_safetensors_streamed, Dtype, HostTensor, SafetensorsDir, Sharding, TensorHeader, WeightsError,
    INDEX_FILE, SINGLE_FILE,
};

/// splitmix64's golden-ratio increment.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output finalizer (a bijection on u64 with good avalanche).
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Per-tensor stream key; computed once per tensor, then one mix64 per element.
#[inline]
pub fn tensor_key(seed: u64, tensor_id: u64) -> u64 {
    mix64(seed ^ mix64(tensor_id.wrapping_add(GAMMA)))
}

/// The element value given a precomputed [`tensor_key`]; see the module docs.
#[inline]
pub fn value_from_key(key: u64, index: u64) -> f32 {
    let bits = mix64(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)));
    let u = (bits >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
    2.0 * u - 1.0
}

/// Uniform value in [-1, 1) for element `index` of tensor `tensor_id` under `seed`.
/// Pure function of its arguments; see the module docs for the exact formula.
#[inline]
pub fn init_value(seed: u64, tensor_id: u64, index: u64) -> f32 {
    value_from_key(tensor_key(seed, tensor_id), index)
}

/// Which tensor of the model; with the layer index, names a tensor for [`tensor_id`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightKind {
    // Model-level tensors (the layer argument of tensor_id is ignored).
    Embedding,
    FinalNorm,
    LmHead,
    // Per-layer tensors.
    InputNorm,
    QProj,
    QBias,
    KProj,
    KBias,
    VProj,
    VBias,
    OProj,
    PostAttentionNorm,
    GateProj,
    UpProj,
    DownProj,
}

impl WeightKind {
    /// Stable numeric code (part of the weight recipe: never renumber).
    pub const fn code(self) -> u64 {
        match self {
            WeightKind::Embedding => 0,
            WeightKind::FinalNorm => 1,
            WeightKind::LmHead => 2,
            WeightKind::InputNorm => 0x10,
            WeightKind::QProj => 0x11,
            WeightKind::QBias => 0x12,
            WeightKind::KProj => 0x13,
            WeightKind::KBias => 0x14,
            WeightKind::VProj => 0x15,
            WeightKind::VBias => 0x16,
            WeightKind::OProj => 0x17,
            WeightKind::PostAttentionNorm => 0x18,
            WeightKind::GateProj => 0x19,
            WeightKind::UpProj => 0x1A,
            WeightKind::DownProj => 0x1B,
        }
    }

    /// The tensor's name in a Hugging Face Qwen2 checkpoint (`layer` is ignored for
    /// model-level tensors), e.g. `model.layers.3.self_attn.q_proj.weight`.
    pub fn hf_name(self, layer: usize) -> String {
        let per_layer = |suffix: &str| format!("model.layers.{layer}.{suffix}");
        match self {
            WeightKind::Embedding => "model.embed_tokens.weight".into(),
            WeightKind::FinalNorm => "model.norm.weight".into(),
            WeightKind::LmHead => "lm_head.weight".into(),
            WeightKind::InputNorm => per_layer("input_layernorm.weight"),
            WeightKind::QProj => per_layer("self_attn.q_proj.weight"),
            WeightKind::QBias => per_layer("self_attn.q_proj.bias"),
            WeightKind::KProj => per_layer("self_attn.k_proj.weight"),
            WeightKind::KBias => per_layer("self_attn.k_proj.bias"),
            WeightKind::VProj => per_layer("self_attn.v_proj.weight"),
            WeightKind::VBias => per_layer("self_attn.v_proj.bias"),
            WeightKind::OProj => per_layer("self_attn.o_proj.weight"),
            WeightKind::PostAttentionNorm => per_layer("post_attention_layernorm.weight"),
            WeightKind::GateProj => per_layer("mlp.gate_proj.weight"),
            WeightKind::UpProj => per_layer("mlp.up_proj.weight"),
            WeightKind::DownProj => per_layer("mlp.down_proj.weight"),
        }
    }

    /// Whether the tensor exists once per model rather than once per layer.
    pub const fn is_model_level(self) -> bool {
        matches!(self, WeightKind::Embedding | WeightKind::FinalNorm | WeightKind::LmHead)
    }
}

/// The tensor id fed to [`init_value`]:
/// `code(kind)` for model-level tensors (Embedding 0, FinalNorm 1, LmHead 2), and
/// `((layer + 1) << 8) | code(kind)` for per-layer tensors (InputNorm 0x10, QProj 0x11,
/// QBias 0x12, KProj 0x13, KBias 0x14, VProj 0x15, VBias 0x16, OProj 0x17,
/// PostAttentionNorm 0x18, GateProj 0x19, UpProj 0x1A, DownProj 0x1B). All ids are distinct.
pub const fn tensor_id(layer: usize, kind: WeightKind) -> u64 {
    if kind.is_model_level() {
        kind.code()
    } else {
        ((layer as u64 + 1) << 8) | kind.code()
    }
}

/// Scale of the token embedding (Hugging Face's usual `initializer_range`). Small on purpose:
/// RMSNorm makes the first layer see the token at full strength anyway, while the residual
/// stream (and, through the tied LM head, the logits) is then dominated by what the layers add.
/// With scale 1 the input token's own embedding dominates the final hidden state and a tied
/// model just repeats its last prompt token forever.
pub const EMBEDDING_SCALE: f32 = 0.02;

/// `1/sqrt(fan_in)`, computed in f64 and rounded once to f32 (the CUDA engine passes this
/// same f32 to its kernel).
pub fn projection_scale(in_features: usize) -> f32 {
    (1.0 / (in_features as f64).sqrt()) as f32
}

/// This rank's position in the tensor-parallel group, and the contiguous ranges it owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// The whole tensor (world 1).
    pub const FULL: Shard = Shard { rank: 0, world: 1 };

    /// This rank's slice of `n` items: [rank*n/world, (rank+1)*n/world) (integer division, so
    /// uneven splits are allowed, e.g. for the vocabulary).
    pub fn range(&self, n: usize) -> Range<usize> {
        let (n, r, w) = (n as u128, self.rank as u128, self.world.max(1) as u128);
        ((r * n / w) as usize)..(((r + 1) * n / w) as usize)
    }
}

/// Fills `out` with `f(i)` for every index, split over the available cores (weight generation
/// of a large vocabulary table is otherwise the slowest part of start-up).
fn fill_parallel<T: Send>(out: &mut [T], f: impl Fn(usize) -> T + Sync) {
    const MIN_CHUNK: usize = 1 << 16;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16);
    let chunk = out.len().div_ceil(threads).max(MIN_CHUNK);
    if out.len() <= chunk {
        out.iter_mut().enumerate().for_each(|(i, v)| *v = f(i));
        return;
    }
    let f = &f;
    std::thread::scope(|scope| {
        for (c, part) in out.chunks_mut(chunk).enumerate() {
            scope.spawn(move || {
                let base = c * chunk;
                part.iter_mut().enumerate().for_each(|(i, v)| *v = f(base + i));
            });
        }
    });
}

/// A linear layer's weight slice, stored **(in_local, out_local) row-major** so that
/// y = x · W is one sgemm with M = tokens.
///
/// The full tensor is Hugging Face's (out_features, in_features) with element (o, i) at index
/// `o * in_features + i`. This rank keeps outputs `out_range` (column-parallel: q/k/v/gate/up)
/// and inputs `in_range` (row-parallel: o/down); pass the full range for the other dimension.
/// stored[(i - in_range.start) * out_local + (o - out_range.start)] = init_value(...) * scale.
pub fn linear_weight(
    seed: u64,
    tensor_id: u64,
    in_features: usize,
    in_range: Range<usize>,
    out_range: Range<usize>,
    scale: f32,
) -> Vec<f32> {
    let key = tensor_key(seed, tensor_id);
    let out_local = out_range.len();
    let mut w = vec![0.0f32; in_range.len() * out_local];
    if out_local == 0 {
        return w;
    }
    fill_parallel(&mut w, |idx| {
        let i = in_range.start + idx / out_local;
        let o = out_range.start + idx % out_local;
        value_from_key(key, (o * in_features + i) as u64) * scale
    });
    w
}

/// Rows `row_range` of a (rows, cols) table kept in Hugging Face layout, (rows_local, cols)
/// row-major: the embedding and the (untied) LM head.
pub fn table_rows(seed: u64, tensor_id: u64, cols: usize, row_range: Range<usize>, scale: f32) -> Vec<f32> {
    let key = tensor_key(seed, tensor_id);
    let base = row_range.start * cols;
    let mut t = vec![0.0f32; row_range.len() * cols];
    fill_parallel(&mut t, |idx| value_from_key(key, (base + idx) as u64) * scale);
    t
}

/// Elements `range` of a bias vector: 0.02 * init_value.
pub fn bias(seed: u64, tensor_id: u64, range: Range<usize>) -> Vec<f32> {
    let key = tensor_key(seed, tensor_id);
    range.map(|j| 0.02f32 * value_from_key(key, j as u64)).collect()
}

/// A full RMSNorm weight of length n: 1 + 0.1 * init_value (near 1, but not trivially 1).
pub fn norm_weight(seed: u64, tensor_id: u64, n: usize) -> Vec<f32> {
    let key = tensor_key(seed, tensor_id);
    (0..n).map(|j| 1.0f32 + 0.1f32 * value_from_key(key, j as u64)).collect()
}

// ----------------------------------------------------------------------------------------------
// Weight sources
// ----------------------------------------------------------------------------------------------

/// Where the cpu engine's blocks get their weight shards. Shapes are Hugging Face's: a linear
/// weight is `(out_features, in_features)`, the embedding and LM head `(vocab, hidden)`. Every
/// method returns only this rank's part, in the layout the block computes with.
pub trait WeightSource {
    /// The block `out_range` × `in_range` of linear weight `kind` of `layer` (one of the two
    /// ranges is the whole dimension), stored **(in_local, out_local)** row-major.
    fn linear(
        &self,
        layer: usize,
        kind: WeightKind,
        out_features: usize,
        in_features: usize,
        out_range: Range<usize>,
        in_range: Range<usize>,
    ) -> Result<Vec<f32>, WeightsError>;

    /// Elements `range` of the bias vector `kind` (of length `len`) of `layer`.
    fn bias(&self, layer: usize, kind: WeightKind, len: usize, range: Range<usize>) -> Result<Vec<f32>, WeightsError>;

    /// The whole RMSNorm weight `kind` (of length `len`) of `layer` (replicated on every rank).
    fn norm(&self, layer: usize, kind: WeightKind, len: usize) -> Result<Vec<f32>, WeightsError>;

    /// Rows `rows` of the `(n_rows, cols)` table `kind` (Embedding or LmHead), stored
    /// (rows.len(), cols) row-major.
    fn table(&self, kind: WeightKind, n_rows: usize, cols: usize, rows: Range<usize>)
        -> Result<Vec<f32>, WeightsError>;
}

/// The seeded synthetic weights of the module docs (never fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeededWeights {
    pub seed: u64,
}

impl WeightSource for SeededWeights {
    fn linear(
        &self,
        layer: usize,
        kind: WeightKind,
        _out_features: usize,
        in_features: usize,
        out_range: Range<usize>,
        in_range: Range<usize>,
    ) -> Result<Vec<f32>, WeightsError> {
        Ok(linear_weight(
            self.seed,
            tensor_id(layer, kind),
            in_features,
            in_range,
            out_range,
            projection_scale(in_features),
        ))
    }

    fn bias(&self, layer: usize, kind: WeightKind, _len: usize, range: Range<usize>) -> Result<Vec<f32>, WeightsError> {
        Ok(bias(self.seed, tensor_id(layer, kind), range))
    }

    fn norm(&self, layer: usize, kind: WeightKind, len: usize) -> Result<Vec<f32>, WeightsError> {
        Ok(norm_weight(self.seed, tensor_id(layer, kind), len))
    }

    fn table(
        &self,
        kind: WeightKind,
        _n_rows: usize,
        cols: usize,
        rows: Range<usize>,
    ) -> Result<Vec<f32>, WeightsError> {
        // The embedding is small on purpose (see EMBEDDING_SCALE); an untied LM head is a
        // projection like the others, giving logits of order 1 for a normed input.
        let scale = match kind {
            WeightKind::Embedding => EMBEDDING_SCALE,
            _ => projection_scale(cols),
        };
        Ok(table_rows(self.seed, tensor_id(0, kind), cols, rows, scale))
    }
}

/// A checkpoint read shard by shard: column-parallel blocks read a row range of the
/// `(out, in)` tensor, row-parallel ones a column range (see [`Sharding`]).
impl WeightSource for SafetensorsDir {
    fn linear(
        &self,
        layer: usize,
        kind: WeightKind,
        out_features: usize,
        in_features: usize,
        out_range: Range<usize>,
        in_range: Range<usize>,
    ) -> Result<Vec<f32>, WeightsError> {
        let shard = if in_range == (0..in_features) {
            Sharding::Rows(out_range.clone())
        } else {
            Sharding::Cols(in_range.clone())
        };
        let name = kind.hf_name(layer);
        let t = self.read_f32(&name, &[out_features, in_features], shard)?; // (out_local, in_local)
        if t.len() != out_range.len() * in_range.len() {
            // Both ranges partial: not a layout the engine uses.
            return Err(WeightsError::Shard {
                tensor: name,
                path: self.dir().to_path_buf(),
                shape: vec![out_features, in_features],
                shard: Sharding::Rows(out_range),
            });
        }
        Ok(transpose(&t, out_range.len(), in_range.len()))
    }

    fn bias(&self, layer: usize, kind: WeightKind, len: usize, range: Range<usize>) -> Result<Vec<f32>, WeightsError> {
        self.read_f32(&kind.hf_name(layer), &[len], Sharding::Rows(range))
    }

    fn norm(&self, layer: usize, kind: WeightKind, len: usize) -> Result<Vec<f32>, WeightsError> {
        self.read_f32(&kind.hf_name(layer), &[len], Sharding::Full)
    }

    fn table(
        &self,
        kind: WeightKind,
        n_rows: usize,
        cols: usize,
        rows: Range<usize>,
    ) -> Result<Vec<f32>, WeightsError> {
        self.read_f32(&kind.hf_name(0), &[n_rows, cols], Sharding::Rows(rows))
    }
}

/// (rows, cols) row-major → (cols, rows) row-major, in cache-sized tiles.
fn transpose(t: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0f32; t.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = t[r * cols + c];
                }
            }
        }
    }
    out
}

/// One tensor of the FULL model as a Hugging Face Qwen2 checkpoint holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelTensor {
    pub kind: WeightKind,
    /// The layer of a per-layer tensor (0 for model-level ones).
    pub layer: usize,
    /// Hugging Face layout: `(out_features, in_features)` for a linear weight, `(vocab, hidden)`
    /// for the embedding and LM head, `(len,)` for a bias or norm weight.
    pub shape: Vec<usize>,
}

impl ModelTensor {
    pub fn name(&self) -> String {
        self.kind.hf_name(self.layer)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every tensor of the FULL model `cfg` in model order: the embedding; per layer the input norm,
/// q/k/v/o, gate/up/down, the q/k/v biases and the post-attention norm; the final norm; the LM head
/// only when the embeddings are untied.
pub fn model_tensors(cfg: &Config) -> Vec<ModelTensor> {
    use WeightKind::*;
    let (h, d, inter, vocab) = (cfg.hidden_size, cfg.head_dim(), cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
    let t = |kind, layer, shape: &[usize]| ModelTensor { kind, layer, shape: shape.to_vec() };
    let mut out = vec![t(Embedding, 0, &[vocab, h])];
    for layer in 0..cfg.num_hidden_layers {
        out.extend([
            t(InputNorm, layer, &[h]),
            t(QProj, layer, &[q, h]),
            t(KProj, layer, &[kv, h]),
            t(VProj, layer, &[kv, h]),
            t(OProj, layer, &[h, q]),
            t(GateProj, layer, &[inter, h]),
            t(UpProj, layer, &[inter, h]),
            t(DownProj, layer, &[h, inter]),
            t(QBias, layer, &[q]),
            t(KBias, layer, &[kv]),
            t(VBias, layer, &[kv]),
            t(PostAttentionNorm, layer, &[h]),
        ]);
    }
    out.push(t(FinalNorm, 0, &[h]));
    if !cfg.tie_word_embeddings {
        out.push(t(LmHead, 0, &[vocab, h]));
    }
    out
}

/// Every tensor of the FULL model `cfg` from `source`, named and shaped as in a Hugging Face
/// Qwen2 checkpoint (f32), in the order of [`model_tensors`]. Holds the whole model in memory:
/// for tests and small models; [`write_checkpoint`] streams instead.
pub fn full_tensors(cfg: &Config, source: &dyn WeightSource) -> Result<Vec<(String, HostTensor)>, WeightsError> {
    use WeightKind::*;
    let mut out = Vec::new();
    for t in model_tensors(cfg) {
        let (kind, layer) = (t.kind, t.layer);
        let values = match kind {
            Embedding | LmHead => source.table(kind, t.shape[0], t.shape[1], 0..t.shape[0])?,
            InputNorm | PostAttentionNorm | FinalNorm => source.norm(layer, kind, t.shape[0])?,
            QBias | KBias | VBias => source.bias(layer, kind, t.shape[0], 0..t.shape[0])?,
            QProj | KProj | VProj | OProj | GateProj | UpProj | DownProj => {
                // (out, in) linear weights: the source gives (in, out), so transpose back.
                let (o, i) = (t.shape[0], t.shape[1]);
                transpose(&source.linear(layer, kind, o, i, 0..o, 0..i)?, i, o)
            }
        };
        out.push((t.name(), HostTensor::from_f32(t.shape, &values)));
    }
    Ok(out)
}

/// How the recipe turns `init_value` into the value stored in one tensor (the module docs'
/// table), with the same f32 operations as [`SeededWeights`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stored {
    /// `init_value * scale`: projections, embedding, LM head, biases.
    Scaled(f32),
    /// `1 + 0.1 * init_value`: RMSNorm weights.
    Norm,
}

impl Stored {
    fn of(t: &ModelTensor) -> Stored {
        use WeightKind::*;
        match t.kind {
            Embedding => Stored::Scaled(EMBEDDING_SCALE),
            InputNorm | PostAttentionNorm | FinalNorm => Stored::Norm,
            QBias | KBias | VBias => Stored::Scaled(0.02),
            // (out, in) and (vocab, hidden): scaled by the fan-in.
            LmHead | QProj | KProj | VProj | OProj | GateProj | UpProj | DownProj => {
                Stored::Scaled(projection_scale(t.shape[1]))
            }
        }
    }

    #[inline]
    fn apply(self, v: f32) -> f32 {
        match self {
            Stored::Scaled(scale) => v * scale,
            Stored::Norm => 1.0f32 + 0.1f32 * v,
        }
    }
}

/// Elements generated per step of [`write_checkpoint`]: bounds its memory (64 MiB of f16, 128 MiB
/// of f32) while giving every core a long stretch of work per step.
const WRITE_CHUNK: usize = 1 << 25;

/// Appends the `len` elements of one seeded tensor (key `key`, values `stored`) to `out`, each
/// `encode`d (f32 rounded to the file's dtype, little-endian), `chunk` elements at a time generated
/// in parallel into `buf`. Element `index` of the Hugging Face layout is `init_value(.., index)`
/// mapped by `stored`, for every kind of tensor (see the module docs).
fn write_seeded<const N: usize>(
    out: &mut dyn Write,
    key: u64,
    stored: Stored,
    len: usize,
    chunk: usize,
    buf: &mut Vec<[u8; N]>,
    encode: impl Fn(f32) -> [u8; N] + Sync,
) -> std::io::Result<()> {
    let mut start = 0;
    while start < len {
        let n = chunk.max(1).min(len - start);
        buf.resize(n, [0; N]);
        fill_parallel(buf, |i| encode(stored.apply(value_from_key(key, (start + i) as u64))));
        out.write_all(buf.as_flattened())?;
        start += n;
    }
    Ok(())
}

/// How [`write_checkpoint`] spreads the tensors, in model order, over safetensors files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileSplit {
    /// This many files (at most one per tensor) of about as many tensors each.
    Files(usize),
    /// As few files as keep each file's tensor data within this many bytes; a tensor larger than
    /// that gets a file of its own (as `save_pretrained`'s `max_shard_size`).
    MaxBytes(u64),
}

impl FileSplit {
    /// The tensor index ranges of each file, for tensors of `sizes` bytes.
    fn groups(self, sizes: &[u64]) -> Vec<Range<usize>> {
        let n = sizes.len();
        match self {
            FileSplit::Files(files) => {
                let per_file = n.div_ceil(files.clamp(1, n.max(1))).max(1);
                (0..n.div_ceil(per_file)).map(|f| f * per_file..((f + 1) * per_file).min(n)).collect()
            }
            FileSplit::MaxBytes(max) => {
                let mut groups = Vec::new();
                let (mut start, mut bytes) = (0, 0u64);
                for (i, &size) in sizes.iter().enumerate() {
                    if i > start && bytes + size > max {
                        groups.push(start..i);
                        (start, bytes) = (i, 0);
                    }
                    bytes += size;
                }
                if n > start || groups.is_empty() {
                    groups.push(start..n);
                }
                groups
            }
        }
    }
}

/// What [`write_checkpoint`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenCheckpoint {
    /// The safetensors files, in order.
    pub files: Vec<String>,
    /// Bytes of tensor data over all files (the index's `total_size`).
    pub tensor_bytes: u64,
}

/// Writes the FULL seeded model `cfg` as a Hugging Face checkpoint in `dir` (created if needed):
/// its tensors in `dtype` (f16 and bf16 hold the f32 values rounded to nearest even), in model
/// order, in `model.safetensors` when `split` gives one file, else in
/// `model-0000i-of-0000n.safetensors` with a `model.safetensors.index.json`; then `config.json`
/// ([`Config::to_hf_json`]) and `generation_config.json`. The tensors are generated and written
/// piece by piece ([`WRITE_CHUNK`] elements), never whole. Loading an f32 checkpoint, the cpu
/// engine produces the same tokens as `CpuEngine::new(cfg, seed, ..)`.
pub fn write_checkpoint(
    cfg: &Config,
    seed: u64,
    dir: &Path,
    dtype: Dtype,
    split: FileSplit,
) -> Result<WrittenCheckpoint, WeightsError> {
    let write_err = |path: &Path, e: String| WeightsError::Write { path: path.to_path_buf(), reason: e };
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e.to_string()))?;

    let tensors = model_tensors(cfg);
    let headers: Vec<TensorHeader> =
        tensors.iter().map(|t| TensorHeader { name: t.name(), dtype, shape: t.shape.clone() }).collect();
    let sizes: Vec<u64> = headers.iter().map(TensorHeader::byte_len).collect();
    let groups = split.groups(&sizes);
    let names: Vec<String> = if groups.len() == 1 {
        vec![SINGLE_FILE.to_string()]
    } else {
        (1..=groups.len()).map(|i| format!("model-{i:05}-of-{:05}.safetensors", groups.len())).collect()
    };
    // transformers refuses a safetensors file whose metadata lacks a known "format".
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let (mut buf4, mut buf2) = (Vec::new(), Vec::new());
    for (group, name) in groups.iter().zip(&names) {
        let part = &tensors[group.clone()];
        write_safetensors_streamed(dir.join(name), &headers[group.clone()], &metadata, |i, out| {
            let t = &part[i];
            let (key, stored) = (tensor_key(seed, tensor_id(t.layer, t.kind)), Stored::of(t));
            let (len, chunk) = (t.len(), WRITE_CHUNK);
            match dtype {
                Dtype::F32 => write_seeded(out, key, stored, len, chunk, &mut buf4, f32::to_le_bytes),
                Dtype::F16 => write_seeded(out, key, stored, len, chunk, &mut buf2, |v| f16::from_f32(v).to_le_bytes()),
                Dtype::BF16 => {
                    write_seeded(out, key, stored, len, chunk, &mut buf2, |v| bf16::from_f32(v).to_le_bytes())
                }
            }
        })?;
    }
    let tensor_bytes = sizes.iter().sum();
    if groups.len() > 1 {
        let weight_map = groups
            .iter()
            .zip(&names)
            .flat_map(|(group, file)| headers[group.clone()].iter().map(|h| (h.name.clone(), file.clone())))
            .collect();
        write_index(dir.join(INDEX_FILE), &weight_map, tensor_bytes)?;
    }

    // The configs last: a directory whose writing failed part-way has no config.json, so no loader
    // takes it for a checkpoint.
    let json_files =
        [("config.json", cfg.to_hf_json(dtype.torch_name())), ("generation_config.json", cfg.to_hf_generation_json())];
    for (file, json) in json_files {
        let path = dir.join(file);
        let text = serde_json::to_string_pretty(&json).map_err(|e| write_err(&path, e.to_string()))?;
        std::fs::write(&path, text + "\n").map_err(|e| write_err(&path, e.to_string()))?;
    }
    Ok(WrittenCheckpoint { files: names, tensor_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_value_is_deterministic_and_uniform() {
        // Golden values pin the recipe (checked against an independent re-implementation of the
        // module docs; a CUDA port must produce the same bits).
        assert_eq!(init_value(0, 0, 0).to_bits(), 0xbea5_d594); // -0.3238951
        assert_eq!(init_value(42, 0x211, 12345).to_bits(), 0x3d99_8230); // 0.074955344
        assert_eq!(init_value(u64::MAX, 7, u64::MAX).to_bits(), 0xbe0f_cbd0); // -0.14042592
        assert_eq!(mix64(0), 0);
        // splitmix64 seeded with 0 outputs 0xE220A8397B1DCDAF first (the reference value).
        assert_eq!(mix64(GAMMA), 0xE220_A839_7B1D_CDAF);
        let mut sum = 0.0f64;
        let mut sum_sq = 0.0f64;
        let n = 100_000;
        for i in 0..n {
            let v = init_value(1, 2, i);
            assert!((-1.0..1.0).contains(&v));
            sum += v as f64;
            sum_sq += (v * v) as f64;
        }
        assert!((sum / n as f64).abs() < 0.01);
        assert!((sum_sq / n as f64 - 1.0 / 3.0).abs() < 0.01);
        // Different seeds / tensors / indices decorrelate.
        assert_ne!(init_value(1, 2, 3), init_value(2, 2, 3));
        assert_ne!(init_value(1, 2, 3), init_value(1, 3, 3));
        assert_ne!(init_value(1, 2, 3), init_value(1, 2, 4));
    }

    #[test]
    fn tensor_ids_are_distinct() {
        use WeightKind::*;
        let per_layer =
            [InputNorm, QProj, QBias, KProj, KBias, VProj, VBias, OProj, PostAttentionNorm, GateProj, UpProj, DownProj];
        let mut ids = vec![tensor_id(0, Embedding), tensor_id(5, FinalNorm), tensor_id(0, LmHead)];
        for layer in 0..100 {
            ids.extend(per_layer.iter().map(|&k| tensor_id(layer, k)));
        }
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n);
        assert_eq!(tensor_id(0, QProj), 0x111);
        assert_eq!(tensor_id(3, DownProj), 0x41B);
    }

    #[test]
    fn shard_ranges_cover_uneven_splits() {
        let ranges: Vec<_> = (0..3).map(|rank| Shard { rank, world: 3 }.range(10)).collect();
        assert_eq!(ranges, vec![0..3, 3..6, 6..10]);
        assert_eq!(Shard::FULL.range(7), 0..7);
    }

    #[test]
    fn shards_are_slices_of_the_full_tensor() {
        let (seed, id, inp, out) = (9, tensor_id(1, WeightKind::QProj), 24, 16);
        let scale = projection_scale(inp);
        let full = linear_weight(seed, id, inp, 0..inp, 0..out, scale); // (in, out)
                                                                        // Stored (in, out): element (o, i) of the HF tensor.
        assert_eq!(full[5 * out + 3], init_value(seed, id, (3 * inp + 5) as u64) * scale);
        for world in [2, 4] {
            for rank in 0..world {
                let shard = Shard { rank, world };
                // Column-parallel: outputs split.
                let (o_r, i_r) = (shard.range(out), shard.range(inp));
                let col = linear_weight(seed, id, inp, 0..inp, o_r.clone(), scale);
                for i in 0..inp {
                    for (ol, o) in o_r.clone().enumerate() {
                        assert_eq!(col[i * o_r.len() + ol], full[i * out + o]);
                    }
                }
                // Row-parallel: inputs split.
                let row = linear_weight(seed, id, inp, i_r.clone(), 0..out, scale);
                assert_eq!(&row[..], &full[i_r.start * out..i_r.end * out]);
                // Table rows and biases.
                let t_full = table_rows(seed, 0, inp, 0..out, 1.0);
                let t = table_rows(seed, 0, inp, o_r.clone(), 1.0);
                assert_eq!(&t[..], &t_full[o_r.start * inp..o_r.end * inp]);
                assert_eq!(bias(seed, 3, o_r.clone()), bias(seed, 3, 0..out)[o_r.clone()].to_vec());
            }
        }
        // The threaded fill agrees with the element formula on a large table.
        let big = table_rows(seed, 0, 1000, 100..400, 1.0);
        assert_eq!(big[123_456], init_value(seed, 0, 100_000 + 123_456));
        let norm = norm_weight(seed, 5, 8);
        assert!(norm.iter().all(|w| (0.9..=1.1).contains(w)));
    }

    /// Writes `cfg` (seed 5) as a checkpoint in `dtype` into a fresh directory under `tmp`.
    fn checkpoint(cfg: &Config, tmp: &Path, dtype: Dtype, split: FileSplit) -> (std::path::PathBuf, WrittenCheckpoint) {
        let dir = tmp.join(format!("{}-{split:?}", dtype.name()));
        let written = write_checkpoint(cfg, 5, &dir, dtype, split).unwrap();
        (dir, written)
    }

    /// Every tensor of the checkpoint in `dir` is the seeded f32 value (the in-memory
    /// `full_tensors`, through `linear_weight` and the other generators) rounded to `dtype`, bit
    /// for bit, under that dtype in the header; and there is no other tensor.
    fn assert_seeded_values(cfg: &Config, dir: &Path, dtype: Dtype) {
        let reference = full_tensors(cfg, &SeededWeights { seed: 5 }).unwrap();
        let st = SafetensorsDir::open(dir).unwrap();
        assert_eq!(st.names().len(), reference.len());
        assert_eq!(st.config(), cfg);
        for (name, want) in &reference {
            assert_eq!(st.meta(name).unwrap().dtype, dtype.name(), "{name}");
            let got = st.read(name, &want.shape, Sharding::Full).unwrap();
            assert_eq!(got.dtype, dtype, "{name}");
            assert!(got.bytes == want.convert(dtype).bytes, "{name}: not the seeded values in {dtype}");
        }
    }

    /// f32, f16 and bf16 checkpoints hold the seeded values (rounded to nearest even), in one file
    /// whose header is what Hugging Face loaders expect; an untied LM head and an uneven
    /// vocabulary included.
    #[test]
    fn checkpoint_holds_the_seeded_values_in_each_dtype() {
        let mut cfg = Config::preset("tiny").unwrap();
        cfg.tie_word_embeddings = false;
        cfg.vocab_size = 509;
        let tmp = tempfile::tempdir().unwrap();
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            let (dir, written) = checkpoint(&cfg, tmp.path(), dtype, FileSplit::MaxBytes(1 << 32));
            assert_eq!(written.files, vec![SINGLE_FILE.to_string()]);
            assert_eq!(written.tensor_bytes, cfg.param_count() * dtype.size() as u64);
            assert!(!dir.join(INDEX_FILE).exists());
            assert_seeded_values(&cfg, &dir, dtype);

            // The header, as the format's reference crate reads it: 8-byte aligned data,
            // {"format": "pt"} metadata (transformers refuses a file without it), the tensors'
            // data in model order.
            let bytes = std::fs::read(dir.join(SINGLE_FILE)).unwrap();
            let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            assert_eq!(n % 8, 0);
            let format = meta.metadata().as_ref().and_then(|m| m.get("format").cloned());
            assert_eq!(format.as_deref(), Some("pt"));
            let starts: Vec<usize> =
                model_tensors(&cfg).iter().map(|t| meta.info(&t.name()).unwrap().data_offsets.0).collect();
            assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
        }
    }

    /// The streamed generator agrees with the whole-tensor one across chunk boundaries and the
    /// threaded fill (a tensor larger than fill_parallel's threshold, in uneven chunks).
    #[test]
    fn streamed_tensor_spans_chunks_and_threads() {
        let (seed, rows, cols) = (3, 5000, 64);
        let t = ModelTensor { kind: WeightKind::Embedding, layer: 0, shape: vec![rows, cols] };
        let id = tensor_id(0, WeightKind::Embedding);
        let want: Vec<u8> = table_rows(seed, id, cols, 0..rows, EMBEDDING_SCALE)
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        let (mut out, mut buf) = (Vec::new(), Vec::new());
        let key = tensor_key(seed, id);
        let encode = |v: f32| bf16::from_f32(v).to_le_bytes();
        write_seeded(&mut out, key, Stored::of(&t), t.len(), 70_001, &mut buf, encode).unwrap();
        assert!(out == want, "streamed bf16 embedding differs");
    }

    #[test]
    fn file_splits_keep_model_order() {
        let groups = |split: FileSplit, sizes: &[u64]| split.groups(sizes);
        let seven = [1u64; 7];
        assert_eq!(groups(FileSplit::Files(3), &seven), vec![0..3, 3..6, 6..7]);
        assert_eq!(groups(FileSplit::Files(0), &seven), vec![0..7]);
        assert_eq!(groups(FileSplit::Files(100), &seven).len(), 7);
        // As few files as keep each within 10 bytes; the 20-byte tensor alone.
        let sizes = [5, 5, 20, 4, 3, 3, 1];
        let want = vec![0..2, 2..3, 3..6, 6..7];
        assert_eq!(groups(FileSplit::MaxBytes(10), &sizes), want);
        assert_eq!(groups(FileSplit::MaxBytes(1 << 40), &sizes), vec![0..7]);
        assert_eq!(groups(FileSplit::MaxBytes(1), &[]), vec![0..0]);
    }

    /// Test-only mirror of model.safetensors.index.json.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Index {
        metadata: IndexMetadata,
        weight_map: BTreeMap<String, String>,
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct IndexMetadata {
        total_size: u64,
    }

    /// Split by size: as few files as keep each within the limit (a larger tensor alone), named
    /// as `save_pretrained` names them, in model order, with an index that maps every tensor to its
    /// file and gives the total size; the values are still the seeded ones.
    #[test]
    fn size_split_writes_shards_and_an_index() {
        let cfg = Config::preset("tiny").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        // The (512, 64) embedding is 64 KiB in f16: a file of its own.
        let max = 40_000;
        let (dir, written) = checkpoint(&cfg, tmp.path(), Dtype::F16, FileSplit::MaxBytes(max));
        let n = written.files.len();
        assert!(n >= 4, "{:?}", written.files);
        assert!(!dir.join(SINGLE_FILE).exists());
        let index: Index = serde_json::from_str(&std::fs::read_to_string(dir.join(INDEX_FILE)).unwrap()).unwrap();
        let tensors = model_tensors(&cfg);
        let size = |t: &ModelTensor| (t.len() * Dtype::F16.size()) as u64;
        assert_eq!(index.metadata.total_size, tensors.iter().map(size).sum::<u64>());
        assert_eq!(index.metadata.total_size, written.tensor_bytes);
        assert_eq!(index.weight_map.len(), tensors.len());

        let mut files: Vec<(u64, usize)> = vec![(0, 0); n]; // (bytes, tensors) per file
        let mut first_size = vec![0; n];
        let mut last = 0;
        for t in &tensors {
            let file = &index.weight_map[&t.name()];
            let k = written.files.iter().position(|f| f == file).unwrap();
            assert!(k == last || k == last + 1, "{} out of model order", t.name());
            if files[k].1 == 0 {
                first_size[k] = size(t);
            }
            files[k].0 += size(t);
            files[k].1 += 1;
            last = k;
        }
        for (k, &(bytes, count)) in files.iter().enumerate() {
            assert_eq!(written.files[k], format!("model-{:05}-of-{n:05}.safetensors", k + 1));
            assert!(bytes <= max || count == 1, "file {k}: {bytes} bytes");
            if k + 1 < n {
                assert!(bytes + first_size[k + 1] > max, "files {k} and {} could merge", k + 1);
            }
        }
        assert_seeded_values(&cfg, &dir, Dtype::F16);
    }

    /// Test-only mirror of the written config.json: every field of a Hugging Face Qwen2 config
    /// that the checkpoint promises, and nothing else.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct HfConfig {
        architectures: Vec<String>,
        model_type: String,
        torch_dtype: String,
        dtype: String,
        hidden_act: String,
        bos_token_id: i32,
        eos_token_id: i32,
        use_sliding_window: bool,
        sliding_window: usize,
        max_window_layers: usize,
        attention_dropout: f64,
        initializer_range: f64,
        use_cache: bool,
        /// Present and null (a missing field would fail: Value is not optional).
        rope_scaling: serde_json::Value,
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        max_position_embeddings: usize,
        rope_theta: f64,
        rms_norm_eps: f64,
        tie_word_embeddings: bool,
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct HfGenerationConfig {
        bos_token_id: i32,
        eos_token_id: i32,
        do_sample: bool,
    }

    /// config.json is a complete Hugging Face Qwen2 config whose dtype is the tensors', and reads
    /// back as the model's Config; generation_config.json names the same special tokens.
    #[test]
    fn checkpoint_configs_are_hugging_face_complete() {
        let mut cfg = Config::preset("tiny").unwrap();
        // Distinct ids, to tell them apart.
        (cfg.bos_token_id, cfg.eos_token_id) = (Some(3), Some(7));
        let tmp = tempfile::tempdir().unwrap();
        for (dtype, torch) in [(Dtype::F32, "float32"), (Dtype::F16, "float16"), (Dtype::BF16, "bfloat16")] {
            let (dir, _) = checkpoint(&cfg, tmp.path(), dtype, FileSplit::Files(2));
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
            let hf: HfConfig = serde_json::from_str(&read("config.json")).unwrap();
            assert_eq!(hf.architectures, vec!["Qwen2ForCausalLM"]);
            assert_eq!((hf.model_type.as_str(), hf.hidden_act.as_str()), ("qwen2", "silu"));
            assert_eq!((hf.torch_dtype.as_str(), hf.dtype.as_str()), (torch, torch));
            assert_eq!((hf.bos_token_id, hf.eos_token_id), (3, 7));
            assert!(!hf.use_sliding_window && hf.use_cache);
            assert_eq!(hf.sliding_window, cfg.max_position_embeddings);
            assert_eq!(hf.max_window_layers, cfg.num_hidden_layers);
            assert_eq!((hf.attention_dropout, hf.initializer_range), (0.0, 0.02));
            assert!(hf.rope_scaling.is_null());
            let shape = (
                hf.vocab_size,
                hf.hidden_size,
                hf.intermediate_size,
                hf.num_hidden_layers,
                hf.num_attention_heads,
                hf.num_key_value_heads,
                hf.max_position_embeddings,
            );
            let want = (512, 64, 192, 2, 8, 4, 2048);
            assert_eq!(shape, want);
            assert_eq!((hf.rope_theta, hf.rms_norm_eps), (cfg.rope_theta, cfg.rms_norm_eps));
            assert!(hf.tie_word_embeddings);
            assert_eq!(&Config::from_json_file(&dir).unwrap(), &cfg);
            let generation: HfGenerationConfig = serde_json::from_str(&read("generation_config.json")).unwrap();
            assert_eq!((generation.bos_token_id, generation.eos_token_id), (3, 7));
            assert!(!generation.do_sample);
        }
    }
}
