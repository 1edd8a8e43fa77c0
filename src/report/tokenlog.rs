//! `run --token-log FILE`: every token of every rank as one CSV row, for pandas and spreadsheets.
//! Times are on rank 0's clock (each rank's CLOCK_MONOTONIC minus its measured offset, as in the
//! trace), counted from rank 0's submit; the device step of a decode token where the engine
//! measures one (the cuda engine's CUDA events).

use serde::{Deserialize, Serialize};

/// One rank's tokens of the measured run, as gathered at rank 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RankTokens {
    pub rank: i32,
    /// The rank's epoch on its CLOCK_MONOTONIC (ns); token times count from it.
    pub epoch_mono_ns: u64,
    /// When the rank handed the prompts to the engine (ns since its epoch).
    pub submit_ns: u64,
    /// (sample, step, token id, ns since the epoch).
    pub tokens: Vec<(u32, u32, i32, u64)>,
    /// Decode step k (token step k ≥ 1) on the device: (start, end) on the rank's CLOCK_MONOTONIC.
    pub device_steps: Vec<(u64, u64)>,
}

pub const HEADER: &str = "rank,sample,step,token,t_ns,itl_ns,device_start_ns,device_end_ns";

/// The CSV: one row per token, by rank, sample and step. `t_ns`: since rank 0's submit on rank 0's
/// clock; `itl_ns`: the gap to the sample's previous token on that rank (empty for the first);
/// `device_*_ns`: the decode step on the device, same clock and origin (empty where unknown).
/// `offsets[r]`: rank r's clock minus rank 0's (ns).
pub fn csv(parts: &[RankTokens], offsets: &[i64]) -> String {
    let origin = parts
        .iter()
        .find(|p| p.rank == 0)
        .or(parts.first())
        .map(|p| p.epoch_mono_ns as i128 + p.submit_ns as i128)
        .unwrap_or(0);
    let mut out = String::with_capacity(64 * parts.iter().map(|p| p.tokens.len()).sum::<usize>() + HEADER.len() + 1);
    out.push_str(HEADER);
    out.push('\n');
    for p in parts {
        let off = offsets.get(p.rank as usize).copied().unwrap_or(0) as i128;
        let on_rank0 = |abs_ns: i128| abs_ns - off - origin;
        let mut tokens = p.tokens.clone();
        tokens.sort_by_key(|&(sample, step, _, t)| (sample, step, t));
        let mut prev: Option<(u32, u64)> = None;
        for (sample, step, token, t) in tokens {
            let itl = match prev {
                Some((s, tp)) if s == sample => t.saturating_sub(tp).to_string(),
                _ => String::new(),
            };
            prev = Some((sample, t));
            let device = (step as usize).checked_sub(1).and_then(|i| p.device_steps.get(i));
            let (ds, de) = device
                .map(|&(a, b)| (on_rank0(a as i128).to_string(), on_rank0(b as i128).to_string()))
                .unwrap_or_default();
            let t0 = on_rank0(p.epoch_mono_ns as i128 + t as i128);
            out.push_str(&format!("{},{sample},{step},{token},{t0},{itl},{ds},{de}\n", p.rank));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known truth: rank 1's clock runs 10 µs ahead of rank 0's and its epoch is 500 µs later; its
    /// tokens land where they happened on rank 0's clock.
    #[test]
    fn rows_are_on_rank_zeros_clock_from_its_submit() {
        let r0 = RankTokens {
            rank: 0,
            epoch_mono_ns: 1_000_000,
            submit_ns: 100,
            tokens: vec![(0, 1, 7, 3_100), (0, 0, 5, 2_100)],
            device_steps: vec![(1_002_500, 1_003_000)],
        };
        let r1 = RankTokens {
            rank: 1,
            epoch_mono_ns: 1_510_000,
            submit_ns: 0,
            tokens: vec![(0, 0, 5, 0)],
            device_steps: vec![],
        };
        let text = csv(&[r0, r1], &[0, 10_000]);
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows[0], HEADER);
        assert_eq!(rows[1], "0,0,0,5,2000,,,");
        assert_eq!(rows[2], "0,0,1,7,3000,1000,2400,2900");
        // 1 510 000 − 10 000 (offset) − 1 000 100 (rank 0's submit) = 499 900.
        assert_eq!(rows[3], "1,0,0,5,499900,,,");
        assert_eq!(rows.len(), 4);
    }
}
