//! Token recording: the sink every engine reports tokens to (timestamped on entry, no allocation,
//! one uncontended lock), and the analysis that turns the events into per-sample records and the
//! TTFT / decode-latency HdrHistograms.

pub mod histogram;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::engine::{FinishReason, TokenCallback};
use histogram::LatencyHistogram;

/// One token as the engine reported it; `t_ns` is the host monotonic clock (CLOCK_MONOTONIC via
/// `Instant`) at entry into the callback, in ns since the sink's epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenEvent {
    pub sample: u32,
    pub step: u32,
    pub token: i32,
    pub finish: i32,
    pub t_ns: u64,
}

/// What a [`TokenSink`] calls at the end of prefill.
pub type PrefillDone = Box<dyn Fn() + Send + Sync>;

/// Where engines report tokens. Thread-safe; the hot path takes a timestamp, one uncontended lock
/// and writes into preallocated storage. Tokens beyond the capacity are counted, not stored (an
/// engine that produces more than it was asked for is reported, and the hot path never allocates).
pub struct TokenSink {
    epoch: Instant,
    /// Called once when every sample has its first token (the end of prefill): the run moves the
    /// memory sampler's phase there.
    prefill_done: std::sync::OnceLock<(PrefillDone, u64)>,
    first_tokens: AtomicU64,
    events: Mutex<Vec<TokenEvent>>,
    overflow: AtomicU64,
    submit_ns: AtomicU64,
    /// Set when the run is interrupted: later tokens are not recorded, so the report is the run
    /// as it was at the signal.
    frozen: AtomicBool,
}

impl TokenSink {
    pub fn new(capacity: usize) -> TokenSink {
        TokenSink::new_with_epoch(Instant::now(), capacity)
    }

    /// A sink whose timestamps count from `epoch` (shared with the memory sampler).
    pub fn new_with_epoch(epoch: Instant, capacity: usize) -> TokenSink {
        TokenSink {
            epoch,
            prefill_done: std::sync::OnceLock::new(),
            first_tokens: AtomicU64::new(0),
            events: Mutex::new(Vec::with_capacity(capacity)),
            overflow: AtomicU64::new(0),
            submit_ns: AtomicU64::new(0),
            frozen: AtomicBool::new(false),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The instant the engine was handed the prompts: TTFT counts from here.
    pub fn mark_submit(&self) {
        self.submit_ns.store(self.now_ns(), Ordering::Release);
    }

    pub fn submit_ns(&self) -> u64 {
        self.submit_ns.load(Ordering::Acquire)
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Call `done` once, from the engine's thread, when `samples` first tokens have arrived (the
    /// end of prefill).
    pub fn on_prefill_done(&self, samples: usize, done: PrefillDone) {
        let _ = self.prefill_done.set((done, samples as u64));
    }

    /// Called once per generated token, from any thread.
    pub fn on_token(&self, sample: u32, step: u32, token: i32, finish: i32) {
        let t_ns = self.now_ns();
        if self.frozen.load(Ordering::Relaxed) {
            return;
        }
        if step == 0 {
            if let Some((done, n)) = self.prefill_done.get() {
                if self.first_tokens.fetch_add(1, Ordering::Relaxed) + 1 == *n {
                    done();
                }
            }
        }
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() < events.capacity() {
            events.push(TokenEvent { sample, step, token, finish, t_ns });
        } else {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tokens received so far (for progress; takes the lock briefly, never called by engines).
    pub fn received(&self) -> u64 {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).len() as u64 + self.overflow.load(Ordering::Relaxed)
    }

    /// Stops recording (an interrupted run): tokens from now on are dropped.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Relaxed);
    }

    /// A copy of the events so far and the number that did not fit (an interrupted run's report;
    /// the run itself takes them with `into_events`).
    pub fn snapshot(&self) -> (Vec<TokenEvent>, u64) {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (events, self.overflow.load(Ordering::Relaxed))
    }

    /// The recorded events and the number that did not fit.
    pub fn into_events(self) -> (Vec<TokenEvent>, u64) {
        let events = self.events.into_inner().unwrap_or_else(|p| p.into_inner());
        (events, self.overflow.into_inner())
    }
}

impl TokenCallback for TokenSink {
    fn mark_submit(&self) {
        TokenSink::mark_submit(self)
    }

    fn on_token(&self, sample: u32, step: u32, token: i32, finish: i32) {
        TokenSink::on_token(self, sample, step, token, finish)
    }
}

/// What one sample got.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRecord {
    pub requested: u32,
    pub generated: u32,
    pub finish_reason: FinishReason,
    /// ns since the epoch; None if the sample got no token.
    pub first_token_ns: Option<u64>,
    pub last_token_ns: Option<u64>,
    pub tokens: Vec<i32>,
    /// The gaps between consecutive tokens (ns), in step order.
    pub itl_ns: Vec<u64>,
}

impl SampleRecord {
    /// End to end: submit to the last token (ns).
    pub fn e2e_ns(&self, submit_ns: u64) -> Option<u64> {
        self.last_token_ns.map(|t| t.saturating_sub(submit_ns))
    }

    /// Time per output token as trtllm-bench defines it: (e2e − TTFT) / (tokens − 1), i.e. the
    /// mean gap after the first token (ns); None below two tokens.
    pub fn tpot_ns(&self) -> Option<f64> {
        match (self.first_token_ns, self.last_token_ns) {
            (Some(f), Some(l)) if self.generated >= 2 => Some(l.saturating_sub(f) as f64 / (self.generated - 1) as f64),
            _ => None,
        }
    }

    /// The sample's inter-token gaps at quantile q (nearest rank, exact: no histogram), ns.
    pub fn itl_quantile_ns(&self, q: f64) -> Option<u64> {
        if self.itl_ns.is_empty() {
            return None;
        }
        let mut v = self.itl_ns.clone();
        v.sort_unstable();
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1])
    }
}

/// Everything derived from one rank's token events.
pub struct Recording {
    pub samples: Vec<SampleRecord>,
    pub ttft: LatencyHistogram,
    pub decode: LatencyHistogram,
    pub submit_ns: u64,
    /// Median decode latency (ns) of each tenth of the decode steps, in step order (fewer parts
    /// when there are fewer than ten steps): how the per-token cost grows with the context.
    pub decode_deciles_ns: Vec<u64>,
    /// Problems in the event stream (unknown sample, steps out of order, more tokens than asked,
    /// token ids outside the vocabulary, finish reasons the ABI does not define).
    pub anomalies: Vec<String>,
}

impl Recording {
    /// Sorts the events per sample and derives TTFT (first token − submit) and the decode
    /// latencies (gap between consecutive tokens of a sample). Token ids are checked against
    /// [0, vocab) (only for negative ids when the engine's vocabulary is unknown) and finish
    /// reasons against the ABI's values: the first bad one of each kind is an anomaly naming the
    /// sample, step and value, with how many there were.
    pub fn analyse(
        events: &[TokenEvent],
        overflow: u64,
        submit_ns: u64,
        requested: &[u32],
        vocab: Option<u32>,
    ) -> Recording {
        let mut anomalies = bad_values(events, vocab);
        if overflow > 0 {
            anomalies.push(format!("the engine reported {overflow} tokens more than requested"));
        }
        let mut per_sample: Vec<Vec<TokenEvent>> = vec![Vec::new(); requested.len()];
        for ev in events {
            match per_sample.get_mut(ev.sample as usize) {
                Some(v) => v.push(*ev),
                None => {
                    anomalies.push(format!("token for unknown sample {} (batch has {})", ev.sample, requested.len()))
                }
            }
        }
        let mut ttft = LatencyHistogram::new();
        let mut decode = LatencyHistogram::new();
        // (decode step, gap) of every sample, for the per-tenth medians.
        let mut gaps: Vec<(u32, u64)> = Vec::with_capacity(events.len());
        let mut samples = Vec::with_capacity(requested.len());
        for (s, evs) in per_sample.iter_mut().enumerate() {
            // Engines may call back from several threads: order by step, then time.
            evs.sort_by_key(|e| (e.step, e.t_ns));
            for (i, e) in evs.iter().enumerate() {
                if e.step as usize != i {
                    anomalies.push(format!(
                        "sample {s}: token {i} arrived with step {} (missing or repeated steps)",
                        e.step
                    ));
                    break;
                }
            }
            if evs.len() > requested[s] as usize {
                anomalies.push(format!("sample {s}: {} tokens for {} requested", evs.len(), requested[s]));
            }
            if let Some(first) = evs.first() {
                ttft.record(first.t_ns.saturating_sub(submit_ns));
            }
            let mut itl_ns = Vec::with_capacity(evs.len().saturating_sub(1));
            for w in evs.windows(2) {
                let gap = w[1].t_ns.saturating_sub(w[0].t_ns);
                decode.record(gap);
                gaps.push((w[1].step, gap));
                itl_ns.push(gap);
            }
            let finish = evs.last().map(|e| FinishReason::from_abi(e.finish)).unwrap_or(FinishReason::None);
            samples.push(SampleRecord {
                requested: requested[s],
                generated: evs.len() as u32,
                finish_reason: finish,
                first_token_ns: evs.first().map(|e| e.t_ns),
                last_token_ns: evs.last().map(|e| e.t_ns),
                tokens: evs.iter().map(|e| e.token).collect(),
                itl_ns,
            });
        }
        Recording { samples, ttft, decode, submit_ns, decode_deciles_ns: deciles(&gaps), anomalies }
    }

    /// Rank 0's decode-latency medians per tenth of the steps, in ms.
    pub fn decode_deciles_ms(&self) -> Option<Vec<f64>> {
        (!self.decode_deciles_ns.is_empty()).then(|| self.decode_deciles_ns.iter().map(|&n| n as f64 / 1e6).collect())
    }

    pub fn generated_tokens(&self) -> u64 {
        self.samples.iter().map(|s| s.generated as u64).sum()
    }

    /// Time of the last token of any sample (ns since the epoch).
    pub fn last_token_ns(&self) -> Option<u64> {
        self.samples.iter().filter_map(|s| s.last_token_ns).max()
    }

    /// Time the last sample got its first token: the end of the prefill phase.
    pub fn prefill_end_ns(&self) -> Option<u64> {
        self.samples.iter().filter_map(|s| s.first_token_ns).max()
    }
}

/// The first token id outside [0, vocab) and the first finish reason outside the ABI's
/// `tpprof_finish_reason`, each with the count of such events.
fn bad_values(events: &[TokenEvent], vocab: Option<u32>) -> Vec<String> {
    let bad_token = |t: i32| t < 0 || vocab.is_some_and(|v| t as u32 >= v);
    let bad_finish = |f: i32| !(0..=4).contains(&f);
    let more = |n: usize, what: &str| if n > 1 { format!(" ({n} such {what} in all)") } else { String::new() };
    let mut out = Vec::new();
    let tokens: Vec<&TokenEvent> = events.iter().filter(|e| bad_token(e.token)).collect();
    if let Some(e) = tokens.iter().min_by_key(|e| (e.step, e.sample)) {
        let range = match vocab {
            Some(v) => format!("outside the vocabulary [0, {v})"),
            None => "negative".to_string(),
        };
        out.push(format!(
            "sample {} step {}: token id {} {range}{}",
            e.sample,
            e.step,
            e.token,
            more(tokens.len(), "tokens")
        ));
    }
    let finishes: Vec<&TokenEvent> = events.iter().filter(|e| bad_finish(e.finish)).collect();
    if let Some(e) = finishes.iter().min_by_key(|e| (e.step, e.sample)) {
        out.push(format!(
            "sample {} step {}: finish reason {}, which the engine ABI does not define (0 none, 1 length, 2 eos, 3 stop, 4 error){}",
            e.sample,
            e.step,
            e.finish,
            more(finishes.len(), "finish reasons")
        ));
    }
    out
}

/// FNV-1a over the token ids: ranks compare their samples without shipping every id.
pub fn token_digest(tokens: &[i32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in tokens {
        for b in t.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The median gap of each tenth of the decode steps: steps 1..=max split into min(10, max) parts
/// of (nearly) equal length; every sample's gap at a step counts in that step's part.
fn deciles(gaps: &[(u32, u64)]) -> Vec<u64> {
    // A gap "at step 0" (an engine repeating step 0) is already an anomaly; it has no decode step.
    let gaps: Vec<(u32, u64)> = gaps.iter().copied().filter(|g| g.0 >= 1).collect();
    let Some(max) = gaps.iter().map(|g| g.0).max() else { return Vec::new() };
    let parts = max.clamp(1, 10) as usize;
    let mut bins: Vec<Vec<u64>> = vec![Vec::new(); parts];
    for &(step, gap) in &gaps {
        // step in 1..=max → part in 0..parts
        let part = ((step.saturating_sub(1)) as usize * parts) / max as usize;
        bins[part.min(parts - 1)].push(gap);
    }
    bins.into_iter()
        .filter(|b| !b.is_empty())
        .map(|mut b| {
            b.sort_unstable();
            b[(b.len() - 1) / 2]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(sample: u32, step: u32, t_ns: u64, finish: i32) -> TokenEvent {
        TokenEvent { sample, step, token: step as i32, finish, t_ns }
    }

    #[test]
    fn ttft_and_gaps_come_from_timestamps() {
        let events =
            vec![ev(0, 0, 1_000, 0), ev(1, 0, 1_500, 0), ev(0, 1, 3_000, 0), ev(1, 1, 3_500, 1), ev(0, 2, 6_000, 1)];
        let r = Recording::analyse(&events, 0, 400, &[3, 2], None);
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
        assert_eq!(r.ttft.count(), 2);
        assert_eq!(r.decode.count(), 3);
        assert_eq!(r.ttft.max_ns(), r.ttft.hist().highest_equivalent(1_100));
        assert_eq!(r.decode.min_ns(), r.decode.hist().lowest_equivalent(2_000));
        assert_eq!(r.decode.max_ns(), r.decode.hist().highest_equivalent(3_000));
        assert_eq!(r.samples[0].generated, 3);
        assert_eq!(r.samples[0].finish_reason, FinishReason::Length);
        assert_eq!(r.samples[1].tokens, vec![0, 1]);
        assert_eq!(r.generated_tokens(), 5);
        assert_eq!(r.prefill_end_ns(), Some(1_500));
        assert_eq!(r.last_token_ns(), Some(6_000));
    }

    #[test]
    fn decode_latency_per_tenth_of_the_steps() {
        // One sample, 21 tokens: the gap before step k is 1000 + 100·k ns.
        let mut t = 0;
        let mut events = vec![ev(0, 0, 0, 0)];
        for k in 1..=20u32 {
            t += 1_000 + 100 * k as u64;
            events.push(ev(0, k, t, if k == 20 { 1 } else { 0 }));
        }
        let r = Recording::analyse(&events, 0, 0, &[21], None);
        // Tenths of steps 1..=20: (1,2), (3,4), … (19,20); the median of two is the lower one.
        assert_eq!(r.decode_deciles_ns, (0..10).map(|d| 1_000 + 100 * (2 * d + 1)).collect::<Vec<u64>>());
        // Fewer steps than ten: one part per step; no decode at all: none.
        let three = Recording::analyse(&[ev(0, 0, 0, 0), ev(0, 1, 10, 0), ev(0, 2, 30, 1)], 0, 0, &[3], None);
        assert_eq!(three.decode_deciles_ns, vec![10, 20]);
        assert!(Recording::analyse(&[ev(0, 0, 5, 1)], 0, 0, &[1], None).decode_deciles_ms().is_none());
        // An engine that repeats step 0: an anomaly, no decode parts, no panic.
        let repeated = Recording::analyse(&[ev(0, 0, 0, 0), ev(0, 0, 10, 1)], 0, 0, &[2], None);
        assert!(repeated.decode_deciles_ns.is_empty() && !repeated.anomalies.is_empty());
        // Two samples: both samples' gaps at a step count in its part.
        let two = Recording::analyse(
            &[ev(0, 0, 0, 0), ev(1, 0, 0, 0), ev(0, 1, 10, 1), ev(1, 1, 30, 1)],
            0,
            0,
            &[2, 2],
            None,
        );
        assert_eq!(two.decode_deciles_ns, vec![10]);
    }

    #[test]
    fn out_of_order_callbacks_are_sorted_and_faults_reported() {
        let events = vec![ev(0, 1, 2_000, 0), ev(0, 0, 1_000, 0), ev(0, 3, 4_000, 0), ev(5, 0, 1, 0)];
        let r = Recording::analyse(&events, 2, 0, &[2], None);
        assert_eq!(r.samples[0].tokens, vec![0, 1, 3]);
        let all = r.anomalies.join("\n");
        assert!(all.contains("2 tokens more than requested"), "{all}");
        assert!(all.contains("unknown sample 5"), "{all}");
        assert!(all.contains("arrived with step 3"), "{all}");
        assert!(all.contains("3 tokens for 2 requested"), "{all}");
    }

    #[test]
    fn bad_token_ids_and_finish_reasons_are_anomalies() {
        let tok = |sample, step, token, finish| TokenEvent { sample, step, token, finish, t_ns: step as u64 };
        let events = vec![tok(0, 0, 5, 0), tok(1, 0, 5, 0), tok(0, 1, 100, 0), tok(1, 1, 7, 99), tok(0, 2, 101, 1)];
        let r = Recording::analyse(&events, 0, 0, &[3, 2], Some(100));
        let all = r.anomalies.join("\n");
        assert!(
            all.contains("sample 0 step 1: token id 100 outside the vocabulary [0, 100) (2 such tokens in all)"),
            "{all}"
        );
        assert!(all.contains("sample 1 step 1: finish reason 99, which the engine ABI does not define"), "{all}");
        // Unknown vocabulary: only negative ids are out of range.
        let r = Recording::analyse(&[tok(0, 0, 1 << 30, 0), tok(0, 1, -3, 1)], 0, 0, &[2], None);
        assert_eq!(r.anomalies, vec!["sample 0 step 1: token id -3 negative".to_string()]);
        // Every value the ABI defines passes.
        let fine: Vec<_> = (0..5).map(|f| tok(f as u32, 0, 0, f)).collect();
        assert!(Recording::analyse(&fine, 0, 0, &[1; 5], Some(1)).anomalies.is_empty());
    }

    #[test]
    fn a_sample_without_tokens_is_visible() {
        let r = Recording::analyse(&[], 0, 0, &[4], None);
        assert_eq!(r.samples[0].generated, 0);
        assert_eq!(r.samples[0].finish_reason, FinishReason::None);
        assert_eq!(r.ttft.count(), 0);
    }

    #[test]
    fn sink_counts_overflow_without_growing() {
        let sink = TokenSink::new(2);
        for i in 0..5 {
            sink.on_token(0, i, 1, 0);
        }
        let (events, overflow) = sink.into_events();
        assert_eq!((events.len(), overflow), (2, 3));
        assert!(events[0].t_ns <= events[1].t_ns);
    }

    #[test]
    fn digest_depends_on_every_token() {
        assert_ne!(token_digest(&[1, 2, 3]), token_digest(&[1, 2, 4]));
        assert_eq!(token_digest(&[7]), token_digest(&[7]));
    }
}
