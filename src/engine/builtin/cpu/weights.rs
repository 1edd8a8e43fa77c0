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
//! checkpoint. [`write_checkpoint`] writes the seeded model as such a checkpoint, so the two sources
//! can be checked against each other.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use crate::engine::config::Config;
use crate::engine::safetensors::{
    write_index, write_safetensors, HostTensor, SafetensorsDir, Sharding, WeightsError, INDEX_FILE,
    SINGLE_FILE,
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
        matches!(
            self,
            WeightKind::Embedding | WeightKind::FinalNorm | WeightKind::LmHead
        )
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
fn fill_parallel(out: &mut [f32], f: impl Fn(usize) -> f32 + Sync) {
    const MIN_CHUNK: usize = 1 << 16;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(16);
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
                part.iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = f(base + i));
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
pub fn table_rows(
    seed: u64,
    tensor_id: u64,
    cols: usize,
    row_range: Range<usize>,
    scale: f32,
) -> Vec<f32> {
    let key = tensor_key(seed, tensor_id);
    let base = row_range.start * cols;
    let mut t = vec![0.0f32; row_range.len() * cols];
    fill_parallel(&mut t, |idx| {
        value_from_key(key, (base + idx) as u64) * scale
    });
    t
}

/// Elements `range` of a bias vector: 0.02 * init_value.
pub fn bias(seed: u64, tensor_id: u64, range: Range<usize>) -> Vec<f32> {
    let key = tensor_key(seed, tensor_id);
    range
        .map(|j| 0.02f32 * value_from_key(key, j as u64))
        .collect()
}

/// A full RMSNorm weight of length n: 1 + 0.1 * init_value (near 1, but not trivially 1).
pub fn norm_weight(seed: u64, tensor_id: u64, n: usize) -> Vec<f32> {
    let key = tensor_key(seed, tensor_id);
    (0..n)
        .map(|j| 1.0f32 + 0.1f32 * value_from_key(key, j as u64))
        .collect()
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
    fn bias(
        &self,
        layer: usize,
        kind: WeightKind,
        len: usize,
        range: Range<usize>,
    ) -> Result<Vec<f32>, WeightsError>;

    /// The whole RMSNorm weight `kind` (of length `len`) of `layer` (replicated on every rank).
    fn norm(&self, layer: usize, kind: WeightKind, len: usize) -> Result<Vec<f32>, WeightsError>;

    /// Rows `rows` of the `(n_rows, cols)` table `kind` (Embedding or LmHead), stored
    /// (rows.len(), cols) row-major.
    fn table(
        &self,
        kind: WeightKind,
        n_rows: usize,
        cols: usize,
        rows: Range<usize>,
    ) -> Result<Vec<f32>, WeightsError>;
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

    fn bias(
        &self,
        layer: usize,
        kind: WeightKind,
        _len: usize,
        range: Range<usize>,
    ) -> Result<Vec<f32>, WeightsError> {
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

    fn bias(
        &self,
        layer: usize,
        kind: WeightKind,
        len: usize,
        range: Range<usize>,
    ) -> Result<Vec<f32>, WeightsError> {
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

/// Every tensor of the FULL model `cfg` from `source`, named and shaped as in a Hugging Face
/// Qwen2 checkpoint (f32; `lm_head.weight` only when the embeddings are untied), in model order.
pub fn full_tensors(
    cfg: &Config,
    source: &dyn WeightSource,
) -> Result<Vec<(String, HostTensor)>, WeightsError> {
    use WeightKind::*;
    let (h, d, inter, vocab) = (
        cfg.hidden_size,
        cfg.head_dim(),
        cfg.intermediate_size,
        cfg.vocab_size,
    );
    let (q, kv) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, values: Vec<f32>| {
        out.push((name, HostTensor::from_f32(shape, &values)));
    };
    push(
        Embedding.hf_name(0),
        vec![vocab, h],
        source.table(Embedding, vocab, h, 0..vocab)?,
    );
    for layer in 0..cfg.num_hidden_layers {
        push(
            InputNorm.hf_name(layer),
            vec![h],
            source.norm(layer, InputNorm, h)?,
        );
        // (out, in) linear weights: the source gives (in, out), so transpose back.
        let linears = [
            (QProj, q, h),
            (KProj, kv, h),
            (VProj, kv, h),
            (OProj, h, q),
            (GateProj, inter, h),
            (UpProj, inter, h),
            (DownProj, h, inter),
        ];
        for (kind, o, i) in linears {
            let w = source.linear(layer, kind, o, i, 0..o, 0..i)?; // (in, out)
            push(kind.hf_name(layer), vec![o, i], transpose(&w, i, o));
        }
        for (kind, n) in [(QBias, q), (KBias, kv), (VBias, kv)] {
            push(
                kind.hf_name(layer),
                vec![n],
                source.bias(layer, kind, n, 0..n)?,
            );
        }
        push(
            PostAttentionNorm.hf_name(layer),
            vec![h],
            source.norm(layer, PostAttentionNorm, h)?,
        );
    }
    push(FinalNorm.hf_name(0), vec![h], source.norm(0, FinalNorm, h)?);
    if !cfg.tie_word_embeddings {
        push(
            LmHead.hf_name(0),
            vec![vocab, h],
            source.table(LmHead, vocab, h, 0..vocab)?,
        );
    }
    Ok(out)
}

/// Writes the FULL seeded model `cfg` as a Hugging Face checkpoint in `dir` (created if needed):
/// `config.json` and f32 tensors, in `model.safetensors` when `files` is 1, else split in model
/// order over `model-0000i-of-0000n.safetensors` with a `model.safetensors.index.json`.
/// The cpu engine loading it produces the same tokens as `CpuEngine::new(cfg, seed, ..)`.
pub fn write_checkpoint(
    cfg: &Config,
    seed: u64,
    dir: &Path,
    files: usize,
) -> Result<(), WeightsError> {
    let write_err = |path: &Path, e: String| WeightsError::Write {
        path: path.to_path_buf(),
        reason: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e.to_string()))?;
    let config_path = dir.join("config.json");
    let json =
        serde_json::to_string_pretty(cfg).map_err(|e| write_err(&config_path, e.to_string()))?;
    std::fs::write(&config_path, json).map_err(|e| write_err(&config_path, e.to_string()))?;

    let tensors = full_tensors(cfg, &SeededWeights { seed })?;
    let files = files.clamp(1, tensors.len().max(1));
    if files == 1 {
        return write_safetensors(dir.join(SINGLE_FILE), &tensors);
    }
    let mut weight_map = BTreeMap::new();
    let per_file = tensors.len().div_ceil(files);
    let n_files = tensors.len().div_ceil(per_file);
    for (i, chunk) in tensors.chunks(per_file).enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, n_files);
        for (tensor, _) in chunk {
            weight_map.insert(tensor.clone(), name.clone());
        }
        write_safetensors(dir.join(&name), chunk)?;
    }
    write_index(dir.join(INDEX_FILE), &weight_map)
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
        let per_layer = [
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
        ];
        let mut ids = vec![
            tensor_id(0, Embedding),
            tensor_id(5, FinalNorm),
            tensor_id(0, LmHead),
        ];
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
        let ranges: Vec<_> = (0..3)
            .map(|rank| Shard { rank, world: 3 }.range(10))
            .collect();
        assert_eq!(ranges, vec![0..3, 3..6, 6..10]);
        assert_eq!(Shard::FULL.range(7), 0..7);
    }

    #[test]
    fn shards_are_slices_of_the_full_tensor() {
        let (seed, id, inp, out) = (9, tensor_id(1, WeightKind::QProj), 24, 16);
        let scale = projection_scale(inp);
        let full = linear_weight(seed, id, inp, 0..inp, 0..out, scale); // (in, out)
                                                                        // Stored (in, out): element (o, i) of the HF tensor.
        assert_eq!(
            full[5 * out + 3],
            init_value(seed, id, (3 * inp + 5) as u64) * scale
        );
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
                assert_eq!(
                    bias(seed, 3, o_r.clone()),
                    bias(seed, 3, 0..out)[o_r.clone()].to_vec()
                );
            }
        }
        // The threaded fill agrees with the element formula on a large table.
        let big = table_rows(seed, 0, 1000, 100..400, 1.0);
        assert_eq!(big[123_456], init_value(seed, 0, 100_000 + 123_456));
        let norm = norm_weight(seed, 5, 8);
        assert!(norm.iter().all(|w| (0.9..=1.1).contains(w)));
    }
}
