//! Latency histograms in ns (HdrHistogram, 3 significant digits), their V2 serialization for the
//! gather to rank 0, exact merging there, and the percentile summary written to the JSON.
//! Percentiles are computed only after merging: they never get averaged.

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const SIGNIFICANT_DIGITS: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    #[error("histogram bytes are not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("histogram bytes are not HdrHistogram V2: {0:?}")]
    Decode(hdrhistogram::serialization::DeserializeError),
    #[error("could not merge histograms: {0:?}")]
    Merge(hdrhistogram::AdditionError),
}

#[derive(Clone, Debug)]
pub struct LatencyHistogram(Histogram<u64>);

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// A histogram of the given values (ns).
impl FromIterator<u64> for LatencyHistogram {
    fn from_iter<I: IntoIterator<Item = u64>>(values: I) -> Self {
        let mut h = LatencyHistogram::new();
        values.into_iter().for_each(|v| h.record(v));
        h
    }
}

impl LatencyHistogram {
    pub fn new() -> LatencyHistogram {
        // Auto-resizing from 1 ns: any latency fits; 3 digits = 0.1 % resolution.
        LatencyHistogram(Histogram::new(SIGNIFICANT_DIGITS).expect("3 significant digits is valid"))
    }

    pub fn record(&mut self, ns: u64) {
        // record() grows the auto-resizing histogram; saturating_record() would clamp to its current
        // top instead. The fallback only triggers past the largest trackable value (~u64::MAX / 2).
        if self.0.record(ns).is_err() {
            self.0.saturating_record(ns);
        }
    }

    pub fn hist(&self) -> &Histogram<u64> {
        &self.0
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn min_ns(&self) -> u64 {
        self.0.min()
    }

    pub fn max_ns(&self) -> u64 {
        self.0.max()
    }

    pub fn add(&mut self, other: &LatencyHistogram) -> Result<(), HistogramError> {
        self.0.add(&other.0).map_err(HistogramError::Merge)
    }

    /// V2 bytes (uncompressed), base64.
    pub fn to_base64(&self) -> String {
        let mut bytes = Vec::new();
        V2Serializer::new().serialize(&self.0, &mut bytes).expect("serializing into a Vec cannot fail");
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    pub fn from_base64(s: &str) -> Result<LatencyHistogram, HistogramError> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
        let mut h: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).map_err(HistogramError::Decode)?;
        h.auto(true);
        Ok(LatencyHistogram(h))
    }

    /// The value at quantile `q` (0..=1), ns; 0 when empty.
    pub fn at_quantile(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }

    pub fn summary(&self) -> HistogramSummary {
        let h = &self.0;
        let q = |x: f64| if h.is_empty() { 0 } else { h.value_at_quantile(x) };
        HistogramSummary {
            count: h.len(),
            min_ns: if h.is_empty() { 0 } else { h.min() },
            p50_ns: q(0.50),
            p90_ns: q(0.90),
            p95_ns: q(0.95),
            p99_ns: q(0.99),
            p999_ns: q(0.999),
            max_ns: if h.is_empty() { 0 } else { h.max() },
            mean_ns: if h.is_empty() { 0.0 } else { h.mean() },
            stdev_ns: if h.is_empty() { 0.0 } else { h.stdev() },
            hdr_v2_base64: self.to_base64(),
        }
    }
}

/// Percentiles of a histogram (ns; every value is the highest value equivalent to the recorded ones
/// at 3 significant digits, so a reported percentile is never below what was recorded), with the
/// histogram itself as base64 HdrHistogram V2 for anyone who wants other percentiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HistogramSummary {
    /// Values recorded.
    pub count: u64,
    /// Smallest value (0 when empty).
    pub min_ns: u64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// Absent in results of builds before p95 and std (read as 0).
    #[serde(default)]
    pub p95_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest value (0 when empty).
    pub max_ns: u64,
    /// Mean of the recorded values.
    pub mean_ns: f64,
    /// Standard deviation (population) of the recorded values, from the histogram.
    #[serde(default)]
    pub stdev_ns: f64,
    /// The histogram itself: HdrHistogram V2 serialization (uncompressed), base64.
    #[schemars(extend("contentEncoding" = "base64"))]
    pub hdr_v2_base64: String,
}

/// The same percentiles in milliseconds, for the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PercentilesMs {
    /// Absent in results of builds before min, p95 and std (read as 0).
    #[serde(default)]
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    #[serde(default)]
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation (population), from the histogram.
    #[serde(default)]
    pub std: f64,
    /// Values in the histogram: for merged histograms, summed over the engine ranks.
    pub count: u64,
}

impl From<&HistogramSummary> for PercentilesMs {
    fn from(s: &HistogramSummary) -> Self {
        let ms = |ns: u64| ns as f64 / 1e6;
        PercentilesMs {
            min: ms(s.min_ns),
            p50: ms(s.p50_ns),
            p90: ms(s.p90_ns),
            p95: ms(s.p95_ns),
            p99: ms(s.p99_ns),
            p999: ms(s.p999_ns),
            max: ms(s.max_ns),
            mean: s.mean_ns / 1e6,
            std: s.stdev_ns / 1e6,
            count: s.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known truth: 1, 2, …, 100 ms, once each: p95 = 95 ms, min 1 ms, population std
    /// sqrt((100² − 1) / 12) = 28.866 ms (HdrHistogram keeps 3 significant digits).
    #[test]
    fn p95_min_and_std_of_a_known_distribution() {
        let mut h = LatencyHistogram::new();
        (1..=100u64).for_each(|ms| h.record(ms * 1_000_000));
        let p = PercentilesMs::from(&h.summary());
        assert!((p.p95 - 95.0).abs() < 0.1, "{}", p.p95);
        assert!((p.min - 1.0).abs() < 0.01, "{}", p.min);
        assert!((p.std - 28.866).abs() < 0.05, "{}", p.std);
        assert_eq!(p.count, 100);
    }

    #[test]
    fn round_trip_and_exact_merge() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        let mut all = LatencyHistogram::new();
        for i in 1..=1000u64 {
            a.record(i * 1_000);
            all.record(i * 1_000);
        }
        for i in 1..=10u64 {
            b.record(i * 7_000_000);
            all.record(i * 7_000_000);
        }
        let a2 = LatencyHistogram::from_base64(&a.to_base64()).unwrap();
        let b2 = LatencyHistogram::from_base64(&b.to_base64()).unwrap();
        let mut merged = LatencyHistogram::new();
        merged.add(&a2).unwrap();
        merged.add(&b2).unwrap();
        let (m, t) = (merged.summary(), all.summary());
        assert_eq!(
            (m.count, m.p50_ns, m.p99_ns, m.p999_ns, m.max_ns),
            (t.count, t.p50_ns, t.p99_ns, t.p999_ns, t.max_ns)
        );
        assert_eq!(m.count, 1010);
        // Merged percentiles differ from the average of per-rank percentiles: the point of merging.
        assert_ne!(m.p99_ns, (a.summary().p99_ns + b.summary().p99_ns) / 2);
    }

    #[test]
    fn percentiles_are_never_below_the_recorded_value() {
        let mut h = LatencyHistogram::new();
        for _ in 0..100 {
            h.record(1_234_567);
        }
        let s = h.summary();
        assert!(s.p50_ns >= 1_234_567 && s.p50_ns <= 1_234_567 + 1_235, "{}", s.p50_ns);
        assert_eq!(PercentilesMs::from(&s).count, 100);
    }

    #[test]
    fn empty_histogram_summarises_to_zero_count() {
        let s = LatencyHistogram::new().summary();
        assert_eq!((s.count, s.p50_ns, s.max_ns), (0, 0, 0));
        assert!(LatencyHistogram::from_base64(&s.hdr_v2_base64).unwrap().count() == 0);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(LatencyHistogram::from_base64("not base64!").is_err());
        assert!(LatencyHistogram::from_base64("AAAA").is_err());
    }
}
