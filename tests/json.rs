//! A typed mirror of the result JSON as a user's script reads it, written independently of
//! src/report: every struct denies unknown fields, so a field renamed, added or dropped in the
//! JSON without this mirror (and the README) following fails every test that writes a JSON.
//! Deeper parts users rarely script against stay `Value`.
//!
//! Beside results/schema.json it still earns its place: the schema is generated from the report
//! types and says what the loader accepts, so every field added since the first build is optional
//! there (older files lack it); this mirror says what this build writes, so such a field is
//! required here and a writer that stops writing it fails. And it is a second, hand-written view:
//! a change of the report types passes the schema's golden test once `tpprof schema` is rerun, but
//! not this mirror until someone has looked at what a user's script sees.
//!
//! Optional fields are `Option` with `#[serde(default)]`: absent and null both read as None.

// Every field is here to be checked (deny_unknown_fields, types), not necessarily read.
#![allow(dead_code)]

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunReport {
    pub schema: String,
    pub status: Status,
    pub config: Config,
    pub environment: Environment,
    pub engine: Option<Engine>,
    pub topology: Option<String>,
    pub summary: Option<Summary>,
    pub latency: Option<Latency>,
    pub skew: Option<Skew>,
    #[serde(default)]
    pub cupti: Option<Value>,
    pub ranks: Vec<Rank>,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Status {
    pub state: String,
    pub failed_rank: Option<i32>,
    pub reason: Option<String>,
    pub failures: Vec<Failure>,
    /// Only in state `interrupted`.
    #[serde(default)]
    pub interruption: Option<Interruption>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Interruption {
    pub cause: String,
    pub signal: Option<String>,
    pub signal_rank: Option<i32>,
    pub timeout_s: Option<f64>,
    pub signalled: Vec<SignalledRank>,
    pub reached: Vec<Reached>,
    pub not_gathered: Vec<i32>,
    /// Only with cause `process_end`.
    #[serde(default)]
    pub process_end: Option<ProcessEnd>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProcessEnd {
    pub rank: i32,
    pub call: String,
    pub code: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignalledRank {
    pub rank: i32,
    pub signal: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reached {
    pub rank: i32,
    pub phase: String,
    pub measured_run_started: bool,
    pub tokens: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Failure {
    pub rank: i32,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub command_line: Vec<String>,
    pub engine: String,
    pub dtype: String,
    pub model: String,
    pub model_config: Option<Value>,
    pub engine_options: Value,
    pub world_size: i32,
    pub batch: u32,
    pub prompts: Value,
    pub generated_tokens: u32,
    pub exact_length: bool,
    pub seed: u64,
    pub vocab_size: u32,
    pub devices: Option<Vec<i32>>,
    pub mem_interval_ms: u64,
    pub warmup: u32,
    #[serde(default)]
    pub warmup_mode: Option<String>,
    #[serde(default)]
    pub warmup_tolerance_pct: Option<f64>,
    #[serde(default)]
    pub warmup_max: Option<u32>,
    pub record_tokens: bool,
    pub trace: Option<String>,
    pub cupti: bool,
    #[serde(default)]
    pub repeat: Option<u32>,
    #[serde(default)]
    pub slo: Option<Slo>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Slo {
    #[serde(default)]
    pub ttft_ms: Option<f64>,
    #[serde(default)]
    pub tpot_ms: Option<f64>,
    #[serde(default)]
    pub itl_ms: Option<f64>,
    #[serde(default)]
    pub e2e_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Goodput {
    pub slo: Slo,
    pub met: u32,
    pub requests: u32,
    pub share_pct: f64,
    pub requests_per_s: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Environment {
    pub tpprof_version: String,
    pub tpprof_commit: String,
    pub started_at: String,
    pub mpi_library: String,
    pub hosts: Vec<String>,
    pub gpu_driver: Option<String>,
    pub cuda_driver: Option<String>,
    pub gpu_note: Option<String>,
    /// Absent in interrupted runs.
    #[serde(default)]
    pub clock_offsets_ns: Option<Vec<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Engine {
    pub name: String,
    pub version: String,
    pub kind: String,
    pub path: Option<String>,
    pub details: Value,
}

/// Milliseconds, as the summary prints them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Percentiles {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub std: f64,
    pub count: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Summary {
    pub total_time_s: f64,
    pub throughput_tok_s: f64,
    pub generated_tokens: u64,
    pub requested_tokens: u64,
    pub prompt_tokens: u64,
    pub peak_memory_gib: Vec<f64>,
    pub peak_memory_source: String,
    pub ttft_ms: Percentiles,
    pub itl_ms: Percentiles,
    pub prefill_tok_s: Option<f64>,
    pub decode_tok_s: Option<f64>,
    pub engine_load_s: f64,
    pub itl_over_floor: Option<f64>,
    pub device_step_ms: Option<Percentiles>,
    pub itl_p50_by_tenth_ms: Option<Vec<f64>>,
    #[serde(default)]
    pub warmup: Option<WarmupSummary>,
    #[serde(default)]
    pub stationarity: Option<Stationarity>,
    #[serde(default)]
    pub goodput: Option<Goodput>,
    #[serde(default)]
    pub repeat: Option<RepeatSummary>,
    #[serde(default)]
    pub merge_s: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepeatSummary {
    pub runs: u32,
    pub itl_p50_ms: Option<Spread>,
    pub ttft_p50_ms: Option<Spread>,
    pub wall_s: Option<Spread>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WarmupSummary {
    pub mode: String,
    pub runs: u32,
    pub state: String,
    pub key_ms: Vec<Option<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Stationarity {
    pub tolerance_pct: f64,
    pub vs_last_warmup_pct: Option<f64>,
    pub first_to_last_tenth_pct: Option<f64>,
    pub warnings: Vec<String>,
}

/// Nanoseconds, with the HdrHistogram itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Histogram {
    pub count: u64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p95_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
    pub stdev_ns: f64,
    pub hdr_v2_base64: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Latency {
    pub ttft: Histogram,
    pub decode: Histogram,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Skew {
    pub steps: u64,
    pub clock_offsets_ns: Vec<i64>,
    pub start_spread: Histogram,
    pub end_spread: Histogram,
    pub last_to_start_steps: Vec<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rank {
    pub rank: i32,
    pub host: String,
    pub local_rank: i32,
    pub pid: u32,
    pub role: String,
    pub gpu: Option<Value>,
    pub memory: Value,
    pub engine_memory: Option<Value>,
    pub timing: Timing,
    pub tokens_generated: u64,
    pub ttft: Histogram,
    pub decode: Histogram,
    #[serde(default)]
    pub itl_p50_by_tenth_ms: Option<Vec<f64>>,
    pub device_decode: Option<Histogram>,
    pub engine_stats: Option<Value>,
    pub samples: Vec<RankSample>,
    pub anomalies: Vec<String>,
    #[serde(default)]
    pub cupti: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Timing {
    pub create_s: f64,
    pub generate_s: Option<f64>,
    pub warmup_s: Vec<f64>,
    pub warmup_runs: Vec<WarmupRun>,
    #[serde(default)]
    pub repeat_runs: Vec<WarmupRun>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WarmupRun {
    pub wall_s: f64,
    pub ttft_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub tokens: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RankSample {
    pub generated: u32,
    pub finish_reason: String,
    pub token_digest: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Sample {
    pub index: u32,
    pub prompt_tokens: u32,
    pub requested: u32,
    pub generated: u32,
    pub finish_reason: String,
    pub ttft_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub itl_ms: Option<SampleItl>,
    pub ranks_agree: bool,
    pub tokens: Option<Vec<i32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SampleItl {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub count: u64,
}

/// Reads a result JSON through the mirror; panics naming the field that does not fit.
pub(crate) fn check_fields(j: &Value) -> RunReport {
    serde_json::from_value(j.clone()).unwrap_or_else(|e| panic!("the JSON does not fit tests/json.rs (a field renamed, added or dropped? update the mirror and the README; `tpprof schema > results/schema.json` regenerates the schema): {e}"))
}

#[test]
fn the_mirror_refuses_a_renamed_field() {
    let r = crate::util::run(1, &["--engine", "mock", "--prompt-tokens", "4", "--generated-tokens", "3"]);
    let mut j = crate::util::ok(&r).clone();
    let report = check_fields(&j);
    assert_eq!(report.summary.as_ref().map(|s| s.generated_tokens), Some(3));
    assert_eq!(report.ranks[0].decode.count, 2);
    // The same JSON with one field renamed, at the top and deep inside: refused.
    let itl = j["summary"]["itl_ms"].as_object_mut().unwrap().remove("p99").unwrap();
    j["summary"]["itl_ms"]["p99_ms"] = itl;
    assert!(serde_json::from_value::<RunReport>(j.clone()).is_err());
    let mut j2 = crate::util::ok(&r).clone();
    j2["throughput"] = j2["summary"]["throughput_tok_s"].clone();
    assert!(serde_json::from_value::<RunReport>(j2).is_err());
}
