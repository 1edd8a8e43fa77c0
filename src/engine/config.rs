//! Model shape configuration (Qwen2 architecture), shared by the built-in engines.
//!
//! Field names are exactly those of a Hugging Face Qwen2 `config.json`, so a real model's config
//! file can be read as is (its many other fields are ignored). Only shapes, the few numeric
//! constants the forward pass needs and the special token ids are kept. The weights come from
//! elsewhere: the built-in engines' seeded generator, or a safetensors checkpoint
//! (`engine::safetensors`). [`Config::to_hf_json`] writes the complete `config.json` a Qwen2
//! checkpoint carries, the fixed fields included, for third-party engines.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors from building, reading or checking a [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `preset(name)` with a name not in the table.
    #[error("unknown model preset '{name}' (known presets: {known})")]
    UnknownPreset { name: String, known: String },
    /// The config file (or the directory that should hold it) cannot be read.
    #[error("cannot read model config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON, misses a required field, or fails [`Config::validate`].
    #[error("cannot parse model config {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The shapes are inconsistent (zero sizes, heads that do not divide, odd head_dim, ...).
    #[error("invalid model config: {0}")]
    Invalid(String),
    /// The tensor-parallel world size does not divide a sharded dimension.
    #[error("world size {world} does not divide {field} {value} (choose -n among {choices})")]
    TensorParallel {
        world: usize,
        field: &'static str,
        value: usize,
        /// The world sizes this model does support, e.g. "1, 2, 4".
        choices: String,
    },
}

/// Shapes and constants of a Qwen2-architecture decoder, named as in Hugging Face's `config.json`.
///
/// Deserialization goes through [`RawConfig`]: fields that Hugging Face may omit get Qwen2's
/// defaults (`num_key_value_heads` defaults to `num_attention_heads`, i.e. no GQA), unknown fields
/// are ignored, and the result is validated ([`Config::validate`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP (gate/up output, down input).
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// GQA: query heads share key/value heads in groups of `num_attention_heads / num_key_value_heads`.
    pub num_key_value_heads: usize,
    /// Longest sequence (prompt + generated tokens) the model accepts.
    pub max_position_embeddings: usize,
    /// RoPE base: inv_freq[i] = rope_theta^(-2i/head_dim).
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    /// The LM head reuses the token-embedding matrix.
    pub tie_word_embeddings: bool,
    /// Generation stops early on this token (unless exact-length generation is asked for).
    pub eos_token_id: Option<i32>,
    /// The tokenizer's beginning-of-sequence token; unused by the forward pass, carried so that a
    /// written checkpoint's config.json and generation_config.json name it.
    pub bos_token_id: Option<i32>,
}

/// The on-disk form: what a Hugging Face `config.json` may contain, with its optional fields.
#[derive(Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default = "default_max_position_embeddings")]
    max_position_embeddings: usize,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    tie_word_embeddings: bool,
    /// Hugging Face writes a single id, a list of ids (the first one is taken), or null.
    #[serde(default)]
    eos_token_id: Option<TokenIds>,
    /// As eos_token_id.
    #[serde(default)]
    bos_token_id: Option<TokenIds>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(i32),
    Many(Vec<i32>),
}

// Qwen2Config's defaults in `transformers`, for the fields a config.json may leave out.
fn default_max_position_embeddings() -> usize {
    32768
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, Self::Error> {
        let first = |ids: Option<TokenIds>| match ids {
            None => None,
            Some(TokenIds::One(id)) => Some(id),
            Some(TokenIds::Many(ids)) => ids.first().copied(),
        };
        let cfg = Config {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            max_position_embeddings: raw.max_position_embeddings,
            rope_theta: raw.rope_theta,
            rms_norm_eps: raw.rms_norm_eps,
            tie_word_embeddings: raw.tie_word_embeddings,
            eos_token_id: first(raw.eos_token_id),
            bos_token_id: first(raw.bos_token_id),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// One row of the preset table: a name and the shape a Hugging Face config.json would give.
struct Preset {
    name: &'static str,
    config: Config,
}

/// Shorthand for a table row; `eos` and `bos` are the model's end- and beginning-of-sequence
/// token ids.
#[allow(clippy::too_many_arguments)]
const fn row(
    name: &'static str,
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
    eos_token_id: Option<i32>,
    bos_token_id: Option<i32>,
) -> Preset {
    Preset {
        name,
        config: Config {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            max_position_embeddings,
            rope_theta,
            rms_norm_eps,
            tie_word_embeddings,
            eos_token_id,
            bos_token_id,
        },
    }
}

/// The built-in model shapes, smallest first.
#[rustfmt::skip]
const PRESETS: &[Preset] = &[
    // The synthetic presets use token 0 as beginning and end of sequence.
    //   name     vocab   hidden inter layers heads kv  max_pos rope_theta    eps   tied  eos      bos
    row("tiny",   512,    64,    192,  2,     8,    4,  2048,   10_000.0,     1e-6, true, Some(0), Some(0)),
    row("small",  32000,  512,   1536, 8,     8,    4,  8192,   1_000_000.0,  1e-6, true, Some(0), Some(0)),
    // Real shapes: the config.json of Qwen/Qwen2.5-{0.5B,1.5B,7B,14B,32B}-Instruct (the base
    // models differ: eos 151643, and 14B/32B base have rms_norm_eps 1e-5 and 131072 positions).
    // eos 151645 is <|im_end|>, bos 151643 <|endoftext|>. Random weights unless the engine is
    // given a checkpoint.
    //   name           vocab   hidden inter  layers heads kv max_pos rope_theta    eps   tied   eos           bos
    row("qwen2.5-0.5b", 151936, 896,   4864,  24,    14,   2, 32768,  1_000_000.0, 1e-6, true,  Some(151645), Some(151643)),
    row("qwen2.5-1.5b", 151936, 1536,  8960,  28,    12,   2, 32768,  1_000_000.0, 1e-6, true,  Some(151645), Some(151643)),
    row("qwen2.5-7b",   152064, 3584,  18944, 28,    28,   4, 32768,  1_000_000.0, 1e-6, false, Some(151645), Some(151643)),
    row("qwen2.5-14b",  152064, 5120,  13824, 48,    40,   8, 32768,  1_000_000.0, 1e-6, false, Some(151645), Some(151643)),
    row("qwen2.5-32b",  152064, 5120,  27648, 64,    40,   8, 32768,  1_000_000.0, 1e-6, false, Some(151645), Some(151643)),
];

/// The preset names, in table order, derived from [`PRESETS`] at compile time.
const PRESET_NAMES: [&str; PRESETS.len()] = {
    let mut names = [""; PRESETS.len()];
    let mut i = 0;
    while i < PRESETS.len() {
        names[i] = PRESETS[i].name;
        i += 1;
    }
    names
};

impl Config {
    /// Per-head width: hidden_size / num_attention_heads (Qwen2 has no separate head_dim field).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// A built-in model shape by name (see [`Config::preset_names`]).
    pub fn preset(name: &str) -> Result<Config, ConfigError> {
        PRESETS
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.config.clone())
            .ok_or_else(|| ConfigError::UnknownPreset { name: name.to_string(), known: PRESET_NAMES.join(", ") })
    }

    /// Names accepted by [`Config::preset`].
    pub fn preset_names() -> &'static [&'static str] {
        &PRESET_NAMES
    }

    /// Parses a Hugging Face style config from a JSON string (and validates it).
    pub fn from_json_str(json: &str) -> Result<Config, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Reads a Hugging Face `config.json`: `path` is the file itself or a model directory
    /// containing `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read { path: file.clone(), source })?;
        Config::from_json_str(&text).map_err(|source| ConfigError::Parse { path: file, source })
    }

    /// Checks that the shapes are usable by the decoder (independently of any world size).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in nonzero {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{field} must be positive")));
            }
        }
        // The engines' sizes are 32-bit (the kernels' and the C ABI's int); a larger one is a
        // corrupt file, not a model.
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in sizes {
            if value > i32::MAX as usize {
                return Err(ConfigError::Invalid(format!(
                    "{field} {value} is larger than {} (the engines' sizes are 32-bit)",
                    i32::MAX
                )));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(ConfigError::Invalid(format!(
                "num_attention_heads {} does not divide hidden_size {}",
                self.num_attention_heads, self.hidden_size
            )));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(ConfigError::Invalid(format!(
                "num_key_value_heads {} does not divide num_attention_heads {}",
                self.num_key_value_heads, self.num_attention_heads
            )));
        }
        // rotate_half RoPE splits each head in two halves.
        if self.head_dim() % 2 != 0 {
            return Err(ConfigError::Invalid(format!(
                "head_dim {} (hidden_size / num_attention_heads) must be even for RoPE",
                self.head_dim()
            )));
        }
        // Token ids are i32 (the C ABI's type).
        if self.vocab_size > i32::MAX as usize {
            return Err(ConfigError::Invalid(format!(
                "vocab_size {} does not fit token ids of type i32",
                self.vocab_size
            )));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(ConfigError::Invalid(format!("rope_theta {} must be positive", self.rope_theta)));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(ConfigError::Invalid(format!("rms_norm_eps {} must be non-negative", self.rms_norm_eps)));
        }
        for (field, id) in [("eos_token_id", self.eos_token_id), ("bos_token_id", self.bos_token_id)] {
            if let Some(id) = id {
                if id < 0 || id as usize >= self.vocab_size {
                    return Err(ConfigError::Invalid(format!(
                        "{field} {id} is outside the vocabulary [0, {})",
                        self.vocab_size
                    )));
                }
            }
        }
        Ok(())
    }

    /// The tensor-parallel world sizes this model supports: the divisors of
    /// gcd(num_attention_heads, num_key_value_heads, intermediate_size), at most vocab_size.
    pub fn tensor_parallel_sizes(&self) -> Vec<usize> {
        let g = gcd(gcd(self.num_attention_heads, self.num_key_value_heads), self.intermediate_size);
        // The divisors in pairs (d, g / d) up to the square root: a config.json with a huge
        // common divisor must not be counted through one by one.
        let (mut low, mut high) = (Vec::new(), Vec::new());
        let mut d = 1;
        while d <= g / d {
            if g % d == 0 {
                low.push(d);
                if d != g / d {
                    high.push(g / d);
                }
            }
            d += 1;
        }
        low.into_iter().chain(high.into_iter().rev()).filter(|w| *w <= self.vocab_size).collect()
    }

    /// Checks that Megatron-style sharding over `world` ranks is possible: query heads, key/value
    /// heads and the MLP width must split evenly (the vocabulary may split unevenly).
    pub fn check_tensor_parallel(&self, world: usize) -> Result<(), ConfigError> {
        let choices = || self.tensor_parallel_sizes().iter().map(|w| w.to_string()).collect::<Vec<_>>().join(", ");
        if world == 0 {
            return Err(ConfigError::TensorParallel {
                world,
                field: "num_attention_heads",
                value: self.num_attention_heads,
                choices: choices(),
            });
        }
        let sharded = [
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("intermediate_size", self.intermediate_size),
        ];
        for (field, value) in sharded {
            if value % world != 0 {
                return Err(ConfigError::TensorParallel { world, field, value, choices: choices() });
            }
        }
        // Every rank must own at least one vocabulary row for the vocab-parallel LM head.
        if self.vocab_size < world {
            return Err(ConfigError::TensorParallel {
                world,
                field: "vocab_size",
                value: self.vocab_size,
                choices: choices(),
            });
        }
        Ok(())
    }

    /// The `config.json` of a Hugging Face Qwen2 checkpoint with these shapes and weights stored as
    /// `torch_dtype` ("float32", "float16" or "bfloat16"): this config's fields plus the ones a
    /// real Qwen2.5 `config.json` fixes (architecture, activation, no sliding window, no RoPE
    /// scaling), so that `transformers`' `AutoConfig` and LMDeploy's TurboMind take the directory
    /// as a Qwen2 model. The dtype goes under both `torch_dtype` and `dtype` (the name
    /// `transformers` uses since 4.56). Reading it back gives this config.
    pub fn to_hf_json(&self, torch_dtype: &str) -> serde_json::Value {
        let mut json = serde_json::to_value(self).unwrap_or_default();
        let fixed = serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_cache": true,
            "rope_scaling": null,
            // The sliding window is off; were it on, it would span the whole context in every layer.
            "use_sliding_window": false,
            "sliding_window": self.max_position_embeddings,
            "max_window_layers": self.num_hidden_layers,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
        });
        if let (Some(obj), serde_json::Value::Object(extra)) = (json.as_object_mut(), fixed) {
            obj.extend(extra);
        }
        json
    }

    /// The `generation_config.json` of a checkpoint: the special tokens and greedy decoding.
    pub fn to_hf_generation_json(&self) -> serde_json::Value {
        serde_json::json!({
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "do_sample": false,
        })
    }

    /// Number of parameters of the full (unsharded) model, biases and norms included.
    pub fn param_count(&self) -> u64 {
        // u128: a valid config's sizes are 32-bit, whose products overflow u64 (saturated below).
        let h = self.hidden_size as u128;
        let v = self.vocab_size as u128;
        let i = self.intermediate_size as u128;
        let q = self.num_attention_heads as u128 * self.head_dim() as u128;
        let kv = self.num_key_value_heads as u128 * self.head_dim() as u128;
        let attention = (h * q + q) + 2 * (h * kv + kv) + q * h; // q/k/v with bias, o without
        let mlp = 3 * h * i; // gate, up, down
        let norms = 2 * h; // input and post-attention RMSNorm
        let per_layer = attention + mlp + norms;
        let embedding = v * h;
        let lm_head = if self.tie_word_embeddings { 0 } else { v * h };
        let total = embedding + self.num_hidden_layers as u128 * per_layer + h + lm_head;
        u64::try_from(total).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Config {
    /// One line, e.g. "layers 2, hidden 64, heads 8/4 kv, intermediate 192, vocab 512".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "layers {}, hidden {}, heads {}/{} kv, intermediate {}, vocab {}",
            self.num_hidden_layers,
            self.hidden_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.intermediate_size,
            self.vocab_size
        )
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_parallel_sizes_of_a_huge_common_divisor_are_found_by_square_root() {
        // gcd 2^29: counting to it took seconds; the divisor pairs take 2^15 steps.
        let mut c = Config::preset("tiny").unwrap();
        c.hidden_size = 1 << 30;
        c.num_attention_heads = 1 << 29;
        c.num_key_value_heads = 1 << 29;
        c.intermediate_size = 1 << 30;
        c.vocab_size = 1 << 20;
        c.validate().unwrap();
        let t = std::time::Instant::now();
        let sizes = c.tensor_parallel_sizes();
        assert_eq!(sizes, (0..=20).map(|k| 1usize << k).collect::<Vec<_>>());
        assert!(t.elapsed().as_millis() < 500, "{:?}", t.elapsed());
        assert_eq!(Config::preset("qwen2.5-7b").unwrap().tensor_parallel_sizes(), vec![1, 2, 4]);
        assert!(c.param_count() > 1 << 62);
    }

    #[test]
    fn sizes_past_32_bits_are_invalid() {
        let mut c = Config::preset("tiny").unwrap();
        c.intermediate_size = 1 << 40;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("intermediate_size 1099511627776 is larger than 2147483647"), "{e}");
    }

    #[test]
    fn presets_are_valid_and_named() {
        assert_eq!(
            Config::preset_names(),
            &["tiny", "small", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b"]
        );
        for name in Config::preset_names() {
            let cfg = Config::preset(name).unwrap();
            cfg.validate().unwrap();
            // Round trip through the config.json form, as a checkpoint directory would hold it.
            let back = Config::from_json_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
            assert_eq!(back, cfg, "{name}");
        }
        for name in ["tiny", "small"] {
            for w in [1, 2, 4] {
                Config::preset(name).unwrap().check_tensor_parallel(w).unwrap();
            }
        }
        let tiny = Config::preset("tiny").unwrap();
        assert_eq!(tiny.head_dim(), 8);
        assert_eq!(tiny.tensor_parallel_sizes(), vec![1, 2, 4]);
    }

    /// The Qwen2.5 presets reproduce the published sizes (model cards: 0.49B, 1.54B, 7.61B,
    /// 14.7B, 32.5B — the last rounds 32.76B down; the exact counts below are computed from the
    /// shapes, every weight, bias and norm included, the tied embedding counted once).
    #[test]
    fn qwen25_param_counts_and_tensor_parallel_sizes() {
        let count = |name: &str| Config::preset(name).unwrap().param_count();
        assert_eq!(count("qwen2.5-0.5b"), 494_032_768);
        assert_eq!(count("qwen2.5-1.5b"), 1_543_714_304);
        assert_eq!(count("qwen2.5-7b"), 7_615_616_512);
        assert_eq!(count("qwen2.5-14b"), 14_770_033_664);
        assert_eq!(count("qwen2.5-32b"), 32_763_876_352);
        let sizes = |name: &str| Config::preset(name).unwrap().tensor_parallel_sizes();
        assert_eq!(sizes("qwen2.5-0.5b"), vec![1, 2]); // 14 heads / 2 kv heads
        assert_eq!(sizes("qwen2.5-1.5b"), vec![1, 2]); // 12 / 2
        assert_eq!(sizes("qwen2.5-7b"), vec![1, 2, 4]); // 28 / 4
        assert_eq!(sizes("qwen2.5-14b"), vec![1, 2, 4, 8]); // 40 / 8
        assert_eq!(sizes("qwen2.5-32b"), vec![1, 2, 4, 8]);
        for name in ["qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b"] {
            let cfg = Config::preset(name).unwrap();
            assert_eq!(cfg.head_dim(), 128, "{name}");
            assert!(!cfg.tie_word_embeddings && cfg.vocab_size == 152_064, "{name}");
        }
    }

    /// The Hugging Face form of every preset reads back as the preset; the Qwen2.5 ones carry
    /// the published special tokens and window fields.
    #[test]
    fn hf_json_reads_back_and_has_the_qwen2_fields() {
        for name in Config::preset_names() {
            let cfg = Config::preset(name).unwrap();
            let json = cfg.to_hf_json("bfloat16");
            let back = Config::from_json_str(&json.to_string()).unwrap();
            assert_eq!(back, cfg, "{name}");
        }
        let cfg = Config::preset("qwen2.5-14b").unwrap();
        assert_eq!((cfg.bos_token_id, cfg.eos_token_id), (Some(151643), Some(151645)));
        let json = cfg.to_hf_json("float16");
        let field = |k: &str| json.get(k).cloned();
        assert_eq!(field("model_type"), Some("qwen2".into()));
        assert_eq!(field("torch_dtype"), Some("float16".into()));
        assert_eq!(field("max_window_layers"), Some(48.into()));
        assert_eq!(field("sliding_window"), Some(32768.into()));
        assert_eq!(field("rope_scaling"), Some(serde_json::Value::Null));
        let generation = cfg.to_hf_generation_json();
        assert_eq!(generation.get("eos_token_id").cloned(), Some(151645.into()));
        let tiny = Config::preset("tiny").unwrap();
        assert_eq!((tiny.bos_token_id, tiny.eos_token_id), (Some(0), Some(0)));
    }

    #[test]
    fn unknown_preset_lists_names() {
        let err = Config::preset("huge").unwrap_err().to_string();
        assert!(err.contains("huge") && err.contains("tiny, small"), "{err}");
    }

    #[test]
    fn tensor_parallel_error_names_numbers_and_fix() {
        let cfg = Config::preset("tiny").unwrap();
        let err = cfg.check_tensor_parallel(3).unwrap_err().to_string();
        assert_eq!(err, "world size 3 does not divide num_attention_heads 8 (choose -n among 1, 2, 4)");
        let err = cfg.check_tensor_parallel(8).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads 4"), "{err}");
    }

    #[test]
    fn param_count_tiny() {
        let cfg = Config::preset("tiny").unwrap();
        // embedding 512*64; per layer: q 64*64+64, k,v 2*(64*32+32), o 64*64, mlp 3*64*192, norms 128
        let per_layer = (4096 + 64) + 2 * (2048 + 32) + 4096 + 3 * 64 * 192 + 128;
        assert_eq!(cfg.param_count(), (512 * 64 + 2 * per_layer + 64) as u64);
    }

    #[test]
    fn parses_hugging_face_json() {
        // Abridged Qwen2.5-0.5B config.json, with fields we do not use.
        let json = r#"{
            "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
            "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
            "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
            "max_position_embeddings": 32768, "max_window_layers": 21, "model_type": "qwen2",
            "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
            "tie_word_embeddings": true, "torch_dtype": "bfloat16", "use_cache": true,
            "use_sliding_window": false, "vocab_size": 151936
        }"#;
        let cfg = Config::from_json_str(json).unwrap();
        assert_eq!(cfg.num_key_value_heads, 2);
        assert_eq!(cfg.head_dim(), 64);
        assert_eq!(cfg.eos_token_id, Some(151643));
        assert_eq!(cfg.param_count(), 494_032_768); // Qwen2.5-0.5B's published count
                                                    // Round trip through our own serialization.
        let back = Config::from_json_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        let err = cfg.check_tensor_parallel(4).unwrap_err().to_string();
        assert!(err.contains("(choose -n among 1, 2)"), "{err}");
    }

    #[test]
    fn defaults_and_eos_list() {
        let json = r#"{"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 4, "eos_token_id": [7, 8],
            "bos_token_id": 5}"#;
        let cfg = Config::from_json_str(json).unwrap();
        assert_eq!(cfg.num_key_value_heads, 4);
        assert_eq!(cfg.max_position_embeddings, 32768);
        assert_eq!(cfg.eos_token_id, Some(7));
        assert_eq!(cfg.bos_token_id, Some(5));
        assert!(!cfg.tie_word_embeddings);
    }

    #[test]
    fn file_errors_name_the_path() {
        let dir = std::env::temp_dir().join(format!("tpprof-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = Config::from_json_file(&dir).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("cannot read"), "{err}");
        std::fs::write(dir.join("config.json"), r#"{"vocab_size": 10}"#).unwrap();
        let err = Config::from_json_file(&dir).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("hidden_size"), "{err}");
        std::fs::write(
            dir.join("config.json"),
            r#"{"vocab_size": 10, "hidden_size": 30, "intermediate_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 4}"#,
        )
        .unwrap();
        let err = Config::from_json_file(dir.join("config.json")).unwrap_err().to_string();
        assert!(err.contains("does not divide hidden_size 30"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
