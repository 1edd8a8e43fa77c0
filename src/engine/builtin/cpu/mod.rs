//! The built-in `cpu` engine: a readable, tensor-parallel Qwen2 decoder with greedy decoding and
//! a per-sample KV cache. It is the numerical reference for other engines.
//!
//! Each MPI rank builds a [`CpuEngine`] with its own [`TpComm`]. Its weights come from a
//! [`WeightSource`]: the seeded generator ([`CpuEngine::new`]), which defines every element of
//! every full tensor (see [`weights`]), so for a fixed seed the generated tokens are the same at
//! every world size; or a Hugging Face safetensors checkpoint ([`CpuEngine::from_safetensors`]),
//! of which each rank reads only its shard.
//!
//! Threads: the GEMMs use `matrixmultiply`, whose thread count is set by the environment
//! variable `MATMUL_NUM_THREADS` (default: physical cores, at most 4).

pub mod comm;
pub mod model;
pub mod mpi_comm;
pub mod ops;
pub mod weights;

pub use comm::{CommError, SingleRank, ThreadComm, TpComm};
pub use model::{Scratch, Segment, Transformer};
pub use ops::ShapeError;
pub use weights::{init_value, tensor_id, SeededWeights, Shard, WeightKind, WeightSource};

use crate::engine::config::{Config, ConfigError};
use crate::engine::safetensors::{SafetensorsDir, WeightsError};

/// `finish` value of a token that is not a sample's last.
pub const FINISH_NONE: i32 = 0;
/// The sample reached `max_new_tokens`.
pub const FINISH_LENGTH: i32 = 1;
/// The sample produced `eos_token_id` (only when `exact_length` is false).
pub const FINISH_EOS: i32 = 2;

/// Errors of the cpu engine. Input errors name the sample and the limit; `Internal`, `Shape`
/// and `NonFinite` mean an engine bug.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A checkpoint tensor is missing, of the wrong shape or dtype, or unreadable.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("communicator reports rank {rank} of world {world}")]
    BadCommunicator { rank: usize, world: usize },
    #[error("sample {sample}: empty prompt")]
    EmptyPrompt { sample: usize },
    #[error(
        "sample {sample}: token id {token} at prompt position {position} is outside the vocabulary [0, {vocab_size})"
    )]
    TokenOutOfRange { sample: usize, position: usize, token: i32, vocab_size: usize },
    #[error(
        "sample {sample}: prompt length {prompt_len} + max_new_tokens {max_new_tokens} exceeds \
         max_position_embeddings {max_position_embeddings}"
    )]
    TooLong { sample: usize, prompt_len: usize, max_new_tokens: usize, max_position_embeddings: usize },
    #[error("tensor-parallel communication failed: {0}")]
    Comm(#[from] CommError),
    #[error("internal shape error: {0}")]
    Shape(#[from] ShapeError),
    #[error("non-finite logits: {0}")]
    NonFinite(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// One batch to generate. Prompts must be identical on every rank.
pub struct GenerateRequest<'a> {
    pub prompts: &'a [Vec<i32>],
    pub max_new_tokens: usize,
    /// Every sample gets exactly `max_new_tokens` tokens (EOS ignored).
    pub exact_length: bool,
}

/// Bytes this rank holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuMemory {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    pub workspace_bytes: u64,
}

/// This rank's part of the model, its communicator and its buffers.
pub struct CpuEngine {
    cfg: Config,
    comm: Box<dyn TpComm>,
    model: Transformer,
    scratch: Scratch,
}

impl CpuEngine {
    /// Checks the config against the communicator's world size and generates this rank's shard
    /// of the seeded weights.
    pub fn new(cfg: &Config, seed: u64, comm: Box<dyn TpComm>) -> Result<Self, CpuError> {
        CpuEngine::with_weights(cfg, &SeededWeights { seed }, comm)
    }

    /// The model of a Hugging Face checkpoint directory (its config.json gives the shape); this
    /// rank reads only its shard of each tensor, converted to f32.
    pub fn from_safetensors(dir: &SafetensorsDir, comm: Box<dyn TpComm>) -> Result<Self, CpuError> {
        CpuEngine::with_weights(dir.config(), dir, comm)
    }

    /// Checks the config against the communicator's world size and takes this rank's shard of
    /// every weight from `weights`.
    pub fn with_weights(cfg: &Config, weights: &dyn WeightSource, comm: Box<dyn TpComm>) -> Result<Self, CpuError> {
        let (rank, world) = (comm.rank(), comm.world());
        if world == 0 || rank >= world {
            return Err(CpuError::BadCommunicator { rank, world });
        }
        cfg.validate()?;
        cfg.check_tensor_parallel(world)?;
        let model = Transformer::load(cfg, Shard { rank, world }, weights)?;
        Ok(CpuEngine { cfg: cfg.clone(), comm, model, scratch: Scratch::default() })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Greedy generation. For each sample in order: prefill its prompt and emit step 0; then all
    /// still-running samples advance together, one token per step (one GEMM row each). Calls
    /// `on_token(sample, step, token, finish)` as soon as each token is known; `finish` is
    /// [`FINISH_NONE`], [`FINISH_LENGTH`] or [`FINISH_EOS`] (the C ABI's tpprof_finish_reason).
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        on_token: &mut dyn FnMut(usize, usize, i32, i32),
    ) -> Result<(), CpuError> {
        self.validate(req)?;
        if req.prompts.is_empty() || req.max_new_tokens == 0 {
            return Ok(());
        }
        let max_new = req.max_new_tokens;
        // Stop on EOS only when asked to; then finish = EOS even on the last step.
        let eos = if req.exact_length { None } else { self.cfg.eos_token_id };
        let finish_of = |token: i32, step: usize| {
            if Some(token) == eos {
                FINISH_EOS
            } else if step + 1 == max_new {
                FINISH_LENGTH
            } else {
                FINISH_NONE
            }
        };

        // The last generated token never enters the cache, but sizing for all of them is simpler.
        let positions: Vec<usize> = req.prompts.iter().map(|p| p.len() + max_new).collect();
        self.model.reset_kv_cache(&positions);

        let mut last_token = vec![0i32; req.prompts.len()];
        let mut running = Vec::with_capacity(req.prompts.len()); // samples still generating
        for (sample, prompt) in req.prompts.iter().enumerate() {
            let seg = Segment { sample, start: 0, rows: prompt.len() };
            let token = self.next_tokens(prompt, &[seg])?[0];
            let finish = finish_of(token, 0);
            on_token(sample, 0, token, finish);
            if finish == FINISH_NONE {
                running.push(sample);
                last_token[sample] = token;
            }
        }

        let mut tokens = Vec::with_capacity(running.len());
        let mut segments = Vec::with_capacity(running.len());
        for step in 1..max_new {
            if running.is_empty() {
                break;
            }
            // Step `step` feeds the token produced at step-1, at position prompt_len + step - 1.
            tokens.clear();
            segments.clear();
            for &sample in &running {
                tokens.push(last_token[sample]);
                segments.push(Segment { sample, start: req.prompts[sample].len() + step - 1, rows: 1 });
            }
            let next = self.next_tokens(&tokens, &segments)?;
            let mut still = Vec::with_capacity(running.len());
            for (&sample, &token) in running.iter().zip(&next) {
                let finish = finish_of(token, step);
                on_token(sample, step, token, finish);
                if finish == FINISH_NONE {
                    still.push(sample);
                    last_token[sample] = token;
                }
            }
            running = still;
        }
        Ok(())
    }

    fn next_tokens(&mut self, tokens: &[i32], segments: &[Segment]) -> Result<Vec<i32>, CpuError> {
        self.model.next_tokens(tokens, segments, &mut self.scratch, self.comm.as_mut())
    }

    /// Input checks, before any collective (every rank sees the same prompts, so every rank
    /// fails the same way and none is left waiting in an all-reduce).
    fn validate(&self, req: &GenerateRequest) -> Result<(), CpuError> {
        let vocab_size = self.cfg.vocab_size;
        for (sample, prompt) in req.prompts.iter().enumerate() {
            if prompt.is_empty() {
                return Err(CpuError::EmptyPrompt { sample });
            }
            if let Some((position, &token)) =
                prompt.iter().enumerate().find(|(_, &t)| t < 0 || t as usize >= vocab_size)
            {
                return Err(CpuError::TokenOutOfRange { sample, position, token, vocab_size });
            }
            let max = self.cfg.max_position_embeddings;
            if prompt.len().saturating_add(req.max_new_tokens) > max {
                return Err(CpuError::TooLong {
                    sample,
                    prompt_len: prompt.len(),
                    max_new_tokens: req.max_new_tokens,
                    max_position_embeddings: max,
                });
            }
        }
        Ok(())
    }

    /// This rank's logits (its vocabulary shard) for the last position of `prompt`, and the greedy
    /// token: what `tpprof verify` compares other engines against. Collective: every rank calls it.
    pub fn prefill_logits(&mut self, prompt: &[i32]) -> Result<(Vec<f32>, i32), CpuError> {
        self.validate(&GenerateRequest {
            prompts: std::slice::from_ref(&prompt.to_vec()),
            max_new_tokens: 1,
            exact_length: true,
        })?;
        self.model.reset_kv_cache(&[prompt.len() + 1]);
        let seg = Segment { sample: 0, start: 0, rows: prompt.len() };
        let token = self.next_tokens(prompt, &[seg])?[0];
        Ok((self.scratch.logits().to_vec(), token))
    }

    /// Bytes this rank holds now (the KV cache and workspace of the latest generate call).
    pub fn memory(&self) -> CpuMemory {
        CpuMemory {
            weights_bytes: self.model.weight_bytes(),
            kv_cache_bytes: self.model.kv_cache_bytes(),
            workspace_bytes: self.scratch.bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::safetensors::{Dtype, SafetensorsDir};
    use std::time::Instant;
    use weights::FileSplit;

    type Emitted = Vec<(usize, usize, i32, i32)>;

    fn run(engine: &mut CpuEngine, prompts: &[Vec<i32>], max_new: usize, exact: bool) -> Result<Emitted, CpuError> {
        let mut out = Vec::new();
        let req = GenerateRequest { prompts, max_new_tokens: max_new, exact_length: exact };
        engine.generate(&req, &mut |s, t, tok, fin| out.push((s, t, tok, fin)))?;
        Ok(out)
    }

    /// Runs the same request at world `w`, one thread per rank; returns every rank's emissions.
    fn run_world(cfg: &Config, seed: u64, w: usize, prompts: &[Vec<i32>], max_new: usize) -> Vec<Emitted> {
        let handles: Vec<_> = ThreadComm::group(w)
            .into_iter()
            .map(|comm| {
                let (cfg, prompts) = (cfg.clone(), prompts.to_vec());
                std::thread::spawn(move || {
                    let mut engine = CpuEngine::new(&cfg, seed, Box::new(comm)).unwrap();
                    run(&mut engine, &prompts, max_new, true).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn prompts(vocab: usize) -> Vec<Vec<i32>> {
        let v = vocab as i32;
        vec![
            vec![1, 2, 3, 4, 5],
            (0..40).map(|i| (i * 37 + 11) % v).collect(),
            vec![v - 1],
            // Longer than one attention query block (256 rows).
            (0..300).map(|i| (i * 101 + 3) % v).collect(),
        ]
    }

    /// The key property: identical token ids at world 1, 2 and 4.
    fn same_tokens_across_worlds(preset: &str) {
        let cfg = Config::preset(preset).unwrap();
        let prompts = prompts(cfg.vocab_size);
        let reference = run_world(&cfg, 7, 1, &prompts, 16).remove(0);
        assert_eq!(reference.len(), prompts.len() * 16);
        let distinct: std::collections::HashSet<_> = reference.iter().map(|e| e.2).collect();
        assert!(distinct.len() > 3, "degenerate generation: {reference:?}");
        for w in [2, 4] {
            for (rank, got) in run_world(&cfg, 7, w, &prompts, 16).into_iter().enumerate() {
                assert_eq!(got, reference, "{preset}: world {w} rank {rank} differs from world 1");
            }
        }
    }

    #[test]
    fn tiny_same_tokens_at_world_1_2_4() {
        same_tokens_across_worlds("tiny");
    }

    #[test]
    fn small_same_tokens_at_world_1_2_4() {
        same_tokens_across_worlds("small");
    }

    #[test]
    fn untied_lm_head_same_tokens_at_world_1_2_4() {
        let mut cfg = Config::preset("tiny").unwrap();
        cfg.tie_word_embeddings = false;
        cfg.vocab_size = 509; // uneven vocabulary split
        let p = prompts(cfg.vocab_size);
        let reference = run_world(&cfg, 11, 1, &p, 12).remove(0);
        for w in [2, 4] {
            assert_eq!(run_world(&cfg, 11, w, &p, 12)[w - 1], reference, "world {w}");
        }
    }

    #[test]
    fn seed_changes_tokens_and_calls_are_repeatable() {
        let cfg = Config::preset("tiny").unwrap();
        let p = prompts(cfg.vocab_size);
        let mut a = CpuEngine::new(&cfg, 1, Box::new(SingleRank)).unwrap();
        let first = run(&mut a, &p, 10, true).unwrap();
        assert_eq!(run(&mut a, &p, 10, true).unwrap(), first); // KV caches are reset and reused
        let mut b = CpuEngine::new(&cfg, 2, Box::new(SingleRank)).unwrap();
        assert_ne!(run(&mut b, &p, 10, true).unwrap(), first);
    }

    #[test]
    fn batched_decode_matches_one_sample_at_a_time() {
        let cfg = Config::preset("tiny").unwrap();
        let p = prompts(cfg.vocab_size);
        let mut engine = CpuEngine::new(&cfg, 5, Box::new(SingleRank)).unwrap();
        let batched = run(&mut engine, &p, 8, true).unwrap();
        for (s, prompt) in p.iter().enumerate() {
            let alone = run(&mut engine, std::slice::from_ref(prompt), 8, true).unwrap();
            let from_batch: Vec<_> = batched.iter().filter(|e| e.0 == s).map(|e| (e.1, e.2, e.3)).collect();
            let alone: Vec<_> = alone.iter().map(|e| (e.1, e.2, e.3)).collect();
            assert_eq!(from_batch, alone, "sample {s}");
        }
    }

    #[test]
    fn exact_length_and_eos() {
        let mut cfg = Config::preset("tiny").unwrap();
        let p = prompts(cfg.vocab_size);
        let mut engine = CpuEngine::new(&cfg, 3, Box::new(SingleRank)).unwrap();
        let exact = run(&mut engine, &p, 6, true).unwrap();
        // Emission order: the prefills (step 0) sample by sample, then steps in lockstep.
        let order: Vec<_> = exact.iter().map(|e| (e.1, e.0)).collect();
        let n = p.len();
        let want: Vec<_> = (0..6).flat_map(|t| (0..n).map(move |s| (t, s))).collect();
        assert_eq!(order, want);
        for e in &exact {
            assert_eq!(e.3, if e.1 == 5 { FINISH_LENGTH } else { FINISH_NONE });
        }

        // Make sample 1's step-2 token the EOS: sample 1 stops there, the others run on unless
        // they also produce it (then they stop too, with EOS).
        let eos = exact.iter().find(|e| e.0 == 1 && e.1 == 2).unwrap().2;
        cfg.eos_token_id = Some(eos);
        let mut engine = CpuEngine::new(&cfg, 3, Box::new(SingleRank)).unwrap();
        let stopped = run(&mut engine, &p, 6, false).unwrap();
        for s in 0..n {
            let ex: Vec<_> = exact.iter().filter(|e| e.0 == s).collect();
            let st: Vec<_> = stopped.iter().filter(|e| e.0 == s).collect();
            let stop_at = ex.iter().position(|e| e.2 == eos);
            match stop_at {
                Some(k) => {
                    assert_eq!(st.len(), k + 1, "sample {s}");
                    assert_eq!(st[k].3, FINISH_EOS);
                }
                None => {
                    assert_eq!(st.len(), 6);
                    assert_eq!(st[5].3, FINISH_LENGTH);
                }
            }
            for (a, b) in ex.iter().zip(&st) {
                assert_eq!(a.2, b.2, "sample {s}: tokens before the stop are unchanged");
            }
        }
        assert!(stopped.iter().filter(|e| e.0 == 1).count() <= 3);
        // exact_length ignores the EOS.
        assert_eq!(run(&mut engine, &p, 6, true).unwrap(), exact);
        // max_new_tokens 1: one token each, finish LENGTH (or EOS).
        let one = run(&mut engine, &p, 1, true).unwrap();
        assert!(one.len() == n && one.iter().all(|e| e.1 == 0 && e.3 == FINISH_LENGTH));
        assert!(run(&mut engine, &p, 0, true).unwrap().is_empty());
    }

    #[test]
    fn validation_errors() {
        let cfg = Config::preset("tiny").unwrap();
        // World size that does not divide the heads.
        let comms = ThreadComm::group(3);
        let err = CpuEngine::new(&cfg, 0, Box::new(comms.into_iter().next().unwrap())).err().unwrap();
        assert_eq!(err.to_string(), "world size 3 does not divide num_attention_heads 8 (choose -n among 1, 2, 4)");

        let mut engine = CpuEngine::new(&cfg, 0, Box::new(SingleRank)).unwrap();
        let err = run(&mut engine, &[vec![1], vec![]], 4, true).unwrap_err().to_string();
        assert_eq!(err, "sample 1: empty prompt");
        let err = run(&mut engine, &[vec![1, 512]], 4, true).unwrap_err().to_string();
        assert_eq!(err, "sample 0: token id 512 at prompt position 1 is outside the vocabulary [0, 512)");
        let err = run(&mut engine, &[vec![-3]], 4, true).unwrap_err().to_string();
        assert!(err.contains("token id -3"), "{err}");
        let err = run(&mut engine, &[vec![1], vec![1; 2000]], 49, true).unwrap_err().to_string();
        assert_eq!(err, "sample 1: prompt length 2000 + max_new_tokens 49 exceeds max_position_embeddings 2048");
        // Exactly at the limit is fine.
        assert_eq!(run(&mut engine, &[vec![1; 2000]], 48, true).unwrap().len(), 48);
    }

    #[test]
    fn memory_accounting() {
        let cfg = Config::preset("tiny").unwrap();
        let mut engine = CpuEngine::new(&cfg, 0, Box::new(SingleRank)).unwrap();
        let m = engine.memory();
        assert_eq!(m.weights_bytes, cfg.param_count() * 4); // tied: the table is counted once
        assert_eq!(m.kv_cache_bytes, 0);
        run(&mut engine, &[vec![1; 10], vec![2; 20]], 5, true).unwrap();
        let m = engine.memory();
        // 2 layers x (K and V) x (15 + 25 positions) x 4 kv heads x 8 dims x 4 bytes.
        assert_eq!(m.kv_cache_bytes, 2 * 2 * 40 * 32 * 4);
        assert!(m.workspace_bytes > 0);
        // At world 2 each rank holds half of the sharded weights.
        let mut comms = ThreadComm::group(2).into_iter();
        let c0 = comms.next().unwrap();
        let rank0 = std::thread::spawn(move || CpuEngine::new(&cfg, 0, Box::new(c0)).unwrap().memory());
        let cfg = Config::preset("tiny").unwrap();
        let r1 = CpuEngine::new(&cfg, 0, Box::new(comms.next().unwrap())).unwrap().memory();
        let r0 = rank0.join().unwrap();
        assert_eq!(r0, r1);
        assert!(r0.weights_bytes < m.weights_bytes);
    }

    // ------------------------------------------------------------------------------------------
    // Safetensors checkpoints
    // ------------------------------------------------------------------------------------------

    /// Loads the checkpoint in `dir` at world `w` (each rank opens the directory itself, as an
    /// MPI rank would) and runs the request; returns every rank's emissions and weight bytes.
    fn run_checkpoint_world(
        dir: &std::path::Path,
        w: usize,
        prompts: &[Vec<i32>],
        max_new: usize,
    ) -> Vec<(Emitted, u64)> {
        let handles: Vec<_> = ThreadComm::group(w)
            .into_iter()
            .map(|comm| {
                let (dir, prompts) = (dir.to_path_buf(), prompts.to_vec());
                std::thread::spawn(move || {
                    let st = SafetensorsDir::open(&dir).unwrap();
                    let mut engine = CpuEngine::from_safetensors(&st, Box::new(comm)).unwrap();
                    drop(st); // the engine holds its own f32 copy of its shard
                    let bytes = engine.memory().weights_bytes;
                    (run(&mut engine, &prompts, max_new, true).unwrap(), bytes)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// The round trip: the seeded model's full tensors written as an f32 Hugging Face checkpoint
    /// and loaded shard by shard give exactly the seeded engine's tokens at world 1, 2 and 4:
    /// one file, the same split over two files with an index, and an untied LM head (with an
    /// uneven vocabulary split).
    #[test]
    fn safetensors_checkpoint_same_tokens_as_seeded_at_world_1_2_4() {
        let tied = Config::preset("tiny").unwrap();
        let mut untied = tied.clone();
        untied.tie_word_embeddings = false;
        untied.vocab_size = 509;
        let tmp = tempfile::tempdir().unwrap();
        for (label, cfg, files) in [("one-file", &tied, 1), ("two-files", &tied, 2), ("untied", &untied, 3)] {
            let seed = 21;
            let dir = tmp.path().join(label);
            weights::write_checkpoint(cfg, seed, &dir, Dtype::F32, FileSplit::Files(files)).unwrap();
            let st = SafetensorsDir::open(&dir).unwrap();
            assert_eq!(st.config(), cfg, "{label}");
            assert_eq!(st.files().count(), files, "{label}");
            assert_eq!(st.contains("lm_head.weight"), !cfg.tie_word_embeddings);

            let p = prompts(cfg.vocab_size);
            let reference = run_world(cfg, seed, 1, &p, 12).remove(0);
            for w in [1, 2, 4] {
                let seeded_bytes: Vec<u64> = ThreadComm::group(w)
                    .into_iter()
                    .map(|c| {
                        let cfg = cfg.clone();
                        std::thread::spawn(move || {
                            CpuEngine::new(&cfg, seed, Box::new(c)).unwrap().memory().weights_bytes
                        })
                    })
                    .collect::<Vec<_>>()
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect();
                for (rank, (got, bytes)) in run_checkpoint_world(&dir, w, &p, 12).into_iter().enumerate() {
                    assert_eq!(got, reference, "{label}: world {w} rank {rank}");
                    // Each rank holds exactly its shard, as with generated weights.
                    assert_eq!(bytes, seeded_bytes[rank], "{label}: world {w} rank {rank}");
                }
            }
        }
    }

    /// Published checkpoints are bf16: such a file loads (converted to f32) and is consistent
    /// across world sizes.
    #[test]
    fn bf16_checkpoint_same_tokens_at_world_1_2_4() {
        let cfg = Config::preset("tiny").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        weights::write_checkpoint(&cfg, 4, tmp.path(), Dtype::BF16, FileSplit::Files(1)).unwrap();
        let st = SafetensorsDir::open(tmp.path()).unwrap();
        assert_eq!(st.meta("model.norm.weight").unwrap().dtype, "BF16");
        drop(st);
        let p = prompts(cfg.vocab_size);
        let reference = run_checkpoint_world(tmp.path(), 1, &p, 8).remove(0).0;
        for w in [2, 4] {
            for (rank, (got, _)) in run_checkpoint_world(tmp.path(), w, &p, 8).into_iter().enumerate() {
                assert_eq!(got, reference, "world {w} rank {rank}");
            }
        }
    }

    /// A checkpoint that does not match its config.json fails at load, naming the tensor.
    #[test]
    fn checkpoint_mismatch_errors_name_the_tensor() {
        let cfg = Config::preset("tiny").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        weights::write_checkpoint(&cfg, 1, tmp.path(), Dtype::F32, FileSplit::Files(1)).unwrap();
        // A wider MLP in config.json than in the tensors.
        let mut wider = cfg.clone();
        wider.intermediate_size = 256;
        std::fs::write(tmp.path().join("config.json"), serde_json::to_string(&wider).unwrap()).unwrap();
        let st = SafetensorsDir::open(tmp.path()).unwrap();
        let err = CpuEngine::from_safetensors(&st, Box::new(SingleRank)).err().unwrap().to_string();
        assert!(
            err.starts_with("tensor model.layers.0.mlp.gate_proj.weight in ")
                && err.ends_with("model.safetensors has shape [192, 64], expected [256, 64] (from config.json)"),
            "{err}"
        );
        // An untied config over a tied checkpoint: no lm_head.weight.
        let mut untied = cfg.clone();
        untied.tie_word_embeddings = false;
        std::fs::write(tmp.path().join("config.json"), serde_json::to_string(&untied).unwrap()).unwrap();
        let st = SafetensorsDir::open(tmp.path()).unwrap();
        let err = CpuEngine::from_safetensors(&st, Box::new(SingleRank)).err().unwrap().to_string();
        assert!(err.starts_with("tensor lm_head.weight not found in ") && err.ends_with("model.safetensors"), "{err}");
        // The world size is still checked against the checkpoint's config.
        let err = CpuEngine::from_safetensors(&st, Box::new(ThreadComm::group(3).remove(0))).err().unwrap().to_string();
        assert!(err.starts_with("world size 3 does not divide"), "{err}");
    }

    /// Timing for the report, not a pass/fail test: `cargo test --release -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_small() {
        let cfg = Config::preset("small").unwrap();
        let t = Instant::now();
        let mut engine = CpuEngine::new(&cfg, 1, Box::new(SingleRank)).unwrap();
        println!("small: build {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        let prompt: Vec<i32> = (0..128).map(|i| (i * 31 + 7) % 32000).collect();
        let steps = 65;
        let mut times = Vec::new();
        let mut last = Instant::now();
        let req = GenerateRequest { prompts: std::slice::from_ref(&prompt), max_new_tokens: steps, exact_length: true };
        engine
            .generate(&req, &mut |_, _, _, _| {
                let now = Instant::now();
                times.push(now - last);
                last = now;
            })
            .unwrap();
        let decode: Vec<f64> = times[1..].iter().map(|d| d.as_secs_f64() * 1e3).collect();
        println!(
            "small: prefill 128 {:.1} ms, decode mean {:.2} ms/step over {} steps (min {:.2})",
            times[0].as_secs_f64() * 1e3,
            decode.iter().sum::<f64>() / decode.len() as f64,
            decode.len(),
            decode.iter().copied().fold(f64::INFINITY, f64::min)
        );
        let long: Vec<i32> = (0..1000).map(|i| (i * 31 + 7) % 32000).collect();
        let req = GenerateRequest { prompts: std::slice::from_ref(&long), max_new_tokens: 1, exact_length: true };
        let t = Instant::now();
        engine.generate(&req, &mut |_, _, _, _| {}).unwrap();
        println!("small: prefill 1000 tokens {:.1} ms; memory {:?}", t.elapsed().as_secs_f64() * 1e3, engine.memory());
    }
}
