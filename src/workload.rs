//! The workload: one 1-D INT32 token array per sample, seeded random within the vocabulary or read
//! from a prompts file, and the number of tokens to generate for each.
//!
//! Prompts file format (JSON Lines): one JSON array of token ids per non-empty line, e.g.
//! `[151644, 8948, 198]`. Every id must be an integer in [0, vocab_size); no line may be empty.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkloadError {
    #[error("cannot read prompts file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(
        "prompts file {path} line {line}: {reason} (expected one JSON array of token ids per line, e.g. [1, 2, 3])"
    )]
    Malformed { path: PathBuf, line: usize, reason: String },
    #[error("prompts file {path} line {line}: token id {id} at position {pos} is outside the vocabulary [0, {vocab}); use ids of this model's tokenizer or pass --vocab-size")]
    OutOfRange { path: PathBuf, line: usize, pos: usize, id: i64, vocab: u32 },
    #[error("prompts file {0} holds no prompt")]
    Empty(PathBuf),
}

/// Where the prompts came from, for the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PromptSource {
    /// Seeded random ids within the vocabulary.
    Random {
        /// `--seed`.
        seed: u64,
        /// `--prompt-tokens`.
        tokens_per_prompt: u32,
    },
    /// `--prompts FILE` (JSON Lines, one array of token ids per line).
    File {
        /// The file as given.
        path: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub prompts: Vec<Vec<i32>>,
    pub generated_tokens: u32,
    pub source: PromptSource,
}

impl Workload {
    pub fn prompt_tokens(&self) -> u64 {
        self.prompts.iter().map(|p| p.len() as u64).sum()
    }

    pub fn longest_prompt(&self) -> usize {
        self.prompts.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Seeded random ids in [0, vocab); the same on every rank for the same seed.
    pub fn random(batch: u32, tokens: u32, vocab: u32, seed: u64, generated_tokens: u32) -> Workload {
        let prompts = (0..batch as u64)
            .map(|s| {
                (0..tokens as u64)
                    .map(|i| {
                        (splitmix64(
                            seed ^ splitmix64(s.wrapping_add(0x7770_7072_6f6d_7074))
                                ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        ) % vocab as u64) as i32
                    })
                    .collect()
            })
            .collect();
        Workload { prompts, generated_tokens, source: PromptSource::Random { seed, tokens_per_prompt: tokens } }
    }

    /// The prompts of warm-up run `round`: each measured prompt's own ids in a seeded shuffled
    /// order. Same lengths and the same ids (valid for the engine's tokenizer, whatever the
    /// workload's source), so the engine warms up what the measured run uses, but another order:
    /// an engine with prefix caching / KV block reuse must not serve the measured run's prefill
    /// from the warm-up's cache (a prompt of one repeated id cannot be changed this way). Identical
    /// on every rank, which all hold rank 0's workload.
    pub fn warmup_prompts(&self, seed: u64, round: u32) -> Vec<Vec<i32>> {
        let base = splitmix64(seed ^ 0x7761_726d_7570_0000 ^ u64::from(round));
        self.prompts
            .iter()
            .enumerate()
            .map(|(s, p)| {
                let mut state = splitmix64(base ^ (s as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let mut q = p.clone();
                // Fisher–Yates.
                for i in (1..q.len()).rev() {
                    state = splitmix64(state);
                    q.swap(i, (state % (i as u64 + 1)) as usize);
                }
                q
            })
            .collect()
    }

    pub fn from_file(path: &Path, vocab: u32, generated_tokens: u32) -> Result<Workload, WorkloadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| WorkloadError::Read { path: path.to_path_buf(), reason: e.to_string() })?;
        let mut prompts = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let malformed =
                |reason: String| WorkloadError::Malformed { path: path.to_path_buf(), line: line_no, reason };
            let ids: Vec<i64> =
                serde_json::from_str(line).map_err(|e| malformed(format!("not an array of integers ({e})")))?;
            if ids.is_empty() {
                return Err(malformed("empty prompt".into()));
            }
            // Token ids are INT32: a vocabulary past 2^31 still takes no id past i32::MAX.
            let vocab = vocab.min(1 << 31);
            if let Some((pos, &id)) = ids.iter().enumerate().find(|(_, &id)| id < 0 || id >= vocab as i64) {
                return Err(WorkloadError::OutOfRange { path: path.to_path_buf(), line: line_no, pos, id, vocab });
            }
            prompts.push(ids.into_iter().map(|id| id as i32).collect());
        }
        if prompts.is_empty() {
            return Err(WorkloadError::Empty(path.to_path_buf()));
        }
        Ok(Workload { prompts, generated_tokens, source: PromptSource::File { path: path.display().to_string() } })
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a counter-based mixer, so prompt i of sample s does not
/// depend on how many samples there are.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn random_prompts_are_seeded_and_in_range() {
        let a = Workload::random(3, 100, 50, 7, 4);
        assert_eq!(a, Workload::random(3, 100, 50, 7, 4));
        assert_ne!(a.prompts, Workload::random(3, 100, 50, 8, 4).prompts);
        assert_ne!(a.prompts[0], a.prompts[1]);
        assert!(a.prompts.iter().flatten().all(|&t| (0..50).contains(&t)));
        assert_eq!(a.prompt_tokens(), 300);
        // Sample 0 does not depend on the batch size.
        assert_eq!(Workload::random(1, 100, 50, 7, 4).prompts[0], a.prompts[0]);
    }

    #[test]
    fn warmup_prompts_are_the_prompts_shuffled() {
        let mut w = Workload::random(3, 100, 5000, 7, 4);
        w.prompts[1].truncate(40);
        let a = w.warmup_prompts(7, 0);
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![100, 40, 100]);
        assert_eq!(a, w.warmup_prompts(7, 0), "deterministic: every rank builds the same");
        for (x, y) in a.iter().zip(&w.prompts) {
            let (mut xs, mut ys) = (x.clone(), y.clone());
            xs.sort_unstable();
            ys.sort_unstable();
            assert_eq!(xs, ys, "the same ids");
            let same = x.iter().zip(y).filter(|(p, q)| p == q).count();
            assert!(same < x.len() / 4, "another order ({same} of {} in place)", x.len());
            assert_ne!(x[..16], y[..16], "no shared first block");
        }
        assert_ne!(a, w.warmup_prompts(7, 1), "each round its own order");
    }

    fn file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    #[test]
    fn prompts_file_is_read_and_validated() {
        let f = file("[1, 2, 3]\n\n[4]\n");
        let w = Workload::from_file(f.path(), 10, 5).unwrap();
        assert_eq!(w.prompts, vec![vec![1, 2, 3], vec![4]]);
        let err = |c: &str| Workload::from_file(file(c).path(), 10, 5).unwrap_err().to_string();
        assert!(err("[1, 2]\n[]\n").contains("line 2: empty prompt"));
        assert!(err("[1, 12]\n").contains("token id 12 at position 1 is outside the vocabulary [0, 10)"));
        assert!(err("[1, -1]\n").contains("token id -1"));
        assert!(err("1 2 3\n").contains("line 1: not an array of integers"));
        assert!(err("[1.5]\n").contains("not an array of integers"));
        assert!(err("\n\n").contains("holds no prompt"));
        assert!(Workload::from_file(Path::new("/nonexistent/p.jsonl"), 10, 5)
            .unwrap_err()
            .to_string()
            .contains("cannot read prompts file"));
    }
}
