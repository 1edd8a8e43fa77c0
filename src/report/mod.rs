//! The result JSON: its types (results/schema.json is generated from them: `tpprof schema`), how
//! rank 0 assembles it from every rank's report, the atomic writer, and the human summary.

pub mod build;
pub mod compare;
pub mod gate;
pub mod html;
pub mod plot;
pub mod schema;
pub mod summary;
pub mod tokenlog;
pub mod trace;
pub mod writer;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::engine::{EngineInfo, EngineMemory, FinishReason, Topology};
use crate::observe::cupti::{CuptiReport, CuptiSummary};
use crate::observe::gpu::GpuInfo;
use crate::observe::memory::MemoryReport;
use crate::record::histogram::{HistogramSummary, PercentilesMs};
use crate::workload::PromptSource;

/// The schema identifier written into every JSON; bump on incompatible change.
pub const SCHEMA: &str = "tpprof.run/1";

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Every sample got what was requested.
    Ok,
    /// The run finished but a sample got fewer tokens than requested (EOS, engine fault).
    Incomplete,
    /// A rank failed; see failures.
    Failed,
    /// A signal (SIGINT, SIGTERM) ended the run before its report was complete; see
    /// `status.interruption`. What was measured until then is kept.
    Interrupted,
}

/// One rank's failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Failure {
    /// The failing rank.
    pub rank: i32,
    /// What went wrong there, in one line.
    pub reason: String,
}

/// Whether the run succeeded, and why not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Status {
    /// `ok`, `incomplete` or `failed`.
    pub state: State,
    /// The first failing rank, when failed.
    pub failed_rank: Option<i32>,
    /// One line: what went wrong (failed) or what is missing (incomplete).
    pub reason: Option<String>,
    /// Every failing rank with its reason (empty unless failed).
    pub failures: Vec<Failure>,
    /// How far an interrupted run got, and who was signalled (state `interrupted`; `failed` when
    /// a rank was lost, i.e. did not answer rank 0, or when `--timeout` passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption: Option<Interruption>,
}

/// An interrupted run: the signal, where each rank was, what reached rank 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Interruption {
    /// `signal` (SIGINT / SIGTERM to a rank or to mpirun) or `timeout` (`--timeout`).
    pub cause: StopCause,
    /// The signal rank 0 learned of first (`SIGINT`, `SIGTERM`); null for a timeout.
    pub signal: Option<String>,
    /// The rank it reached.
    pub signal_rank: Option<i32>,
    /// `--timeout`, seconds (cause `timeout`).
    pub timeout_s: Option<f64>,
    /// Every rank that got a signal of its own (mpirun sends SIGTERM to every rank when it is
    /// signalled, or when a rank exits non-zero).
    pub signalled: Vec<SignalledRank>,
    /// Where each rank whose report reached rank 0 was, in rank order (their reports are in
    /// `ranks`).
    pub reached: Vec<Reached>,
    /// Ranks whose report did not reach rank 0 in time: dead, killed, or stuck.
    pub not_gathered: Vec<i32>,
    /// The call that ended a rank's process from inside (cause `process_end`); absent otherwise
    /// and in JSONs of earlier builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_end: Option<ProcessEnd>,
}

/// A rank's process ended from inside during the run: `exit()`, `_exit()` or `_Exit()` not called
/// by tpprof (the engine, or a library it loaded), or `abort()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProcessEnd {
    /// The rank whose process it was.
    pub rank: i32,
    /// The call as it reads in C: `exit(3)`, `_exit(3)`, `abort()`.
    pub call: String,
    /// The exit code it asked for (134 for `abort()`, as a shell reports it). Every rank exits 1
    /// instead: a rank failed.
    pub code: i32,
}

impl Interruption {
    /// The ranks that made no progress (a timeout): those that did not answer rank 0; else those
    /// still inside a run while the others waited for them; else (every rank in the same place)
    /// every rank that answered.
    pub fn stuck(&self) -> Vec<i32> {
        if !self.not_gathered.is_empty() {
            return self.not_gathered.clone();
        }
        let running: Vec<i32> = self.reached.iter().filter(|r| !r.phase.ends_with(WAITING)).map(|r| r.rank).collect();
        let waiting = self.reached.len() - running.len();
        if waiting > 0 && !running.is_empty() {
            running
        } else {
            self.reached.iter().map(|r| r.rank).collect()
        }
    }
}

/// The end of `Reached.phase` for a rank whose run ended while others went on.
pub const WAITING: &str = "(ended, waiting for the other ranks)";

/// What ended an unfinished run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    /// SIGINT or SIGTERM, to a rank or to mpirun.
    Signal,
    /// `--timeout` passed.
    Timeout,
    /// A rank's process was ended from inside (`exit()`, `_exit()`, `abort()` in the engine or a
    /// library it loaded); see `process_end`.
    ProcessEnd,
}

/// A rank and the signal it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SignalledRank {
    /// The rank.
    pub rank: i32,
    /// The signal's name.
    pub signal: String,
}

/// How far one rank got before the run was interrupted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Reached {
    /// The rank.
    pub rank: i32,
    /// Its phase: `configure`, `bind`, `engine creation`, `workload`, `prepare`, `warm-up run N`,
    /// `measured run K of N` (--repeat), `measured run`, `gather`, `assemble`, `finish`; a run
    /// that ended on this rank while others went on: `measured run (ended, waiting for the other
    /// ranks)`.
    pub phase: String,
    /// Whether the recorded (measured) run had begun: then its histograms in `ranks` hold the
    /// tokens until the signal.
    pub measured_run_started: bool,
    /// Tokens the rank had received in its current (or last ended) run, warm-up or measured.
    pub tokens: u64,
}

/// What was run: the arguments as tpprof understood them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigReport {
    /// The command line of rank 0, as given.
    pub command_line: Vec<String>,
    /// The `--engine` argument.
    pub engine: String,
    /// Element type of the cuda engine (fp16 / bf16); the cpu engine computes in f32.
    pub dtype: String,
    /// The model's label: a preset, a config path, or what an adapter's options name.
    pub model: String,
    /// The model's Qwen2 config (built-in engines).
    pub model_config: Option<serde_json::Value>,
    /// `--engine-options`, the JSON object passed to the engine.
    pub engine_options: serde_json::Value,
    /// Number of MPI ranks.
    pub world_size: i32,
    /// Samples (sequences) generated together.
    pub batch: u32,
    /// Where the prompts came from.
    pub prompts: PromptSource,
    /// Tokens requested per sample.
    pub generated_tokens: u32,
    /// true: EOS ignored, every sample must get `generated_tokens`.
    pub exact_length: bool,
    /// `--seed`: random prompts and the built-in engines' weights.
    pub seed: u64,
    /// Vocabulary size the prompt ids were drawn from and checked against.
    pub vocab_size: u32,
    /// `--devices`: GPU ordinal per local rank (null: GPU = local rank).
    pub devices: Option<Vec<i32>>,
    /// `--mem-interval-ms`: memory sampling interval (0: one reading at the end).
    pub mem_interval_ms: u64,
    /// Unmeasured whole-workload runs made before the measured one (`--warmup N`: N; the default
    /// `--warmup auto`: as many as it took).
    #[serde(default)]
    pub warmup: u32,
    /// `auto` (runs until two in a row agree within `warmup_tolerance_pct`, at most `warmup_max`)
    /// or `fixed` (`--warmup N`; 0 = the cold first request measured on purpose). Absent in JSONs
    /// written before the policy existed (they are `fixed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_mode: Option<WarmupMode>,
    /// `--warmup-tolerance`, percent: the auto policy's and the stationarity check's bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_tolerance_pct: Option<f64>,
    /// `--warmup-max` (auto only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_max: Option<u32>,
    /// `--record-tokens`: samples carry their token ids.
    pub record_tokens: bool,
    /// The --trace file, if any.
    pub trace: Option<String>,
    /// --cupti: kernel activity recorded with CUPTI.
    #[serde(default)]
    pub cupti: bool,
    /// --repeat (absent: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<u32>,
    /// --slo: the bounds goodput counts against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
}

/// Where and with what the run happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Environment {
    /// Version of the tpprof binary (Cargo package version).
    pub tpprof_version: String,
    /// `git describe` of the source the binary was built from (empty outside a git checkout, and in
    /// JSONs written before the field existed).
    #[serde(default)]
    pub tpprof_commit: String,
    /// When rank 0 started, RFC 3339, UTC.
    pub started_at: String,
    /// The MPI library's version string.
    pub mpi_library: String,
    /// Host names of the ranks, in rank order, a repeat of the previous one dropped.
    pub hosts: Vec<String>,
    /// GPU driver and CUDA driver versions of rank 0's host, or why there is no GPU.
    pub gpu_driver: Option<String>,
    /// CUDA driver version of rank 0's host.
    pub cuda_driver: Option<String>,
    /// Why there is no GPU, when there is none.
    pub gpu_note: Option<String>,
    /// Each rank's CLOCK_MONOTONIC minus rank 0's, ns, in rank order (MPI ping-pong after the
    /// measured run, the best of 16 round trips): what the trace, the token log and the skew use to
    /// put every rank on rank 0's clock. ~0 for ranks on rank 0's host, which share its clock.
    /// Absent in interrupted runs and in JSONs of earlier builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offsets_ns: Option<Vec<i64>>,
}

/// What a rank does in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the engine and records tokens.
    Engine,
    /// ONE_PROCESS topology, rank > 0: only observes its GPU.
    Observer,
}

/// One rank's view of one sample (ranks compare these to catch diverging tensor-parallel ranks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RankSample {
    /// Tokens this rank saw for the sample.
    pub generated: u32,
    /// Why the sample stopped, as this rank saw it.
    pub finish_reason: FinishReason,
    /// FNV-1a digest of the sample's token ids on this rank.
    pub token_digest: String,
}

/// Where a rank's time went, seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RankTiming {
    /// Engine creation (weights, communicators), seconds.
    pub create_s: f64,
    /// Submit to last token, seconds (engine ranks).
    pub generate_s: Option<f64>,
    /// Wall seconds of each `--warmup` run on this rank (an observer rank's: its wait).
    #[serde(default)]
    pub warmup_s: Vec<f64>,
    /// Each warm-up run as this rank saw it: TTFT and ITL p50 (engine ranks).
    #[serde(default)]
    pub warmup_runs: Vec<WarmupRun>,
    /// --repeat N: the N − 1 measured runs before the recorded one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repeat_runs: Vec<WarmupRun>,
}

/// The warm-up policy (`--warmup auto|N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WarmupMode {
    /// Until two runs in a row agree (`--warmup auto`).
    Auto,
    /// A fixed number of runs (`--warmup N`).
    Fixed,
}

/// One run's figures on one rank: a warm-up run, or a measured run before the recorded one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WarmupRun {
    /// Wall time of the run, seconds.
    pub wall_s: f64,
    /// Median time to first token over the samples, ms (engine ranks).
    pub ttft_ms: Option<f64>,
    /// Median decode latency, ms (engine ranks, runs with 2+ tokens per sample).
    pub itl_p50_ms: Option<f64>,
    /// Tokens the rank received in the run.
    pub tokens: u64,
}

impl WarmupRun {
    /// The figure runs are compared by: ITL p50, or TTFT where there is no decode.
    pub fn key_ms(&self) -> Option<f64> {
        self.itl_p50_ms.or(self.ttft_ms)
    }
}

/// Below this difference (ms) two latencies count as equal whatever their ratio: timer and
/// scheduling jitter, and engines whose outputs carry several tokens (gaps of microseconds).
pub const AGREE_ABS_MS: f64 = 0.02;

/// Whether `y` is within `tolerance_pct` of `x` (or within [`AGREE_ABS_MS`]).
pub fn agrees(x: f64, y: f64, tolerance_pct: f64) -> bool {
    (y - x).abs() <= AGREE_ABS_MS || (x > 0.0 && ((y - x) / x).abs() * 100.0 <= tolerance_pct)
}

/// The change of `v` against `base` in percent, when both exist and the base is not zero (the
/// compare table and the `--fail-if` gate).
pub fn change_pct(base: Option<f64>, v: Option<f64>) -> Option<f64> {
    match (base, v) {
        (Some(b), Some(v)) if b != 0.0 && b.is_finite() && v.is_finite() => Some((v - b) / b.abs() * 100.0),
        _ => None,
    }
}

/// Whether the last two warm-up runs agree within `tolerance_pct` (the auto policy's stop rule).
pub fn warmup_converged(runs: &[WarmupRun], tolerance_pct: f64) -> bool {
    match runs {
        [.., a, b] => match (a.key_ms(), b.key_ms()) {
            (Some(x), Some(y)) => agrees(x, y, tolerance_pct),
            (None, None) => true, // nothing to compare: the engine produced no timed tokens
            _ => false,
        },
        _ => false,
    }
}

/// One rank's own view of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RankReport {
    /// MPI rank.
    pub rank: i32,
    /// Host name.
    pub host: String,
    /// Rank among the ranks of its host.
    pub local_rank: i32,
    /// Process id.
    pub pid: u32,
    /// `engine` or `observer`.
    pub role: Role,
    /// The GPU this rank is bound to (null: none).
    pub gpu: Option<GpuInfo>,
    /// Memory sampled on this rank: host RSS, GPU memory, per-phase peaks, a timeline.
    pub memory: MemoryReport,
    /// What the engine says of its own memory on this rank.
    pub engine_memory: Option<EngineMemory>,
    /// Engine creation, generation and warm-up times.
    pub timing: RankTiming,
    /// Tokens this rank received (engine ranks; 0 for an observer).
    pub tokens_generated: u64,
    /// Time to first token of each sample on this rank, ns.
    pub ttft: HistogramSummary,
    /// Inter-token gaps of the decode steps on this rank, ns.
    pub decode: HistogramSummary,
    /// This rank's median inter-token latency in each tenth of its decode steps, in step order, ms
    /// (`summary.itl_p50_by_tenth_ms` is rank 0's); absent in JSONs of earlier builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub itl_p50_by_tenth_ms: Option<Vec<f64>>,
    /// Device time of each decode step (CUDA events), for engines that measure it.
    pub device_decode: Option<HistogramSummary>,
    /// Engine-specific figures of the run (the cuda engine: copy bandwidth, decode floor, ...).
    pub engine_stats: Option<serde_json::Value>,
    /// Per sample, in sample order.
    pub samples: Vec<RankSample>,
    /// Irregularities in the engine's token stream on this rank, one line each.
    pub anomalies: Vec<String>,
    /// --cupti: this process's GPU kernels per decode step.
    #[serde(default)]
    pub cupti: Option<CuptiReport>,
}

/// One sample's inter-token gaps, exact (nearest-rank percentiles of its own gaps), in ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SampleItl {
    /// Median gap, ms.
    pub p50: f64,
    /// 90th percentile gap, ms.
    pub p90: f64,
    /// 99th percentile gap, ms.
    pub p99: f64,
    /// Largest gap, ms.
    pub max: f64,
    /// Number of gaps (tokens − 1).
    pub count: u64,
}

/// One sample (request) of the workload, as rank 0 saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SampleReport {
    /// Sample index, from 0.
    pub index: u32,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens requested.
    pub requested: u32,
    /// Tokens generated.
    pub generated: u32,
    /// Why the sample stopped.
    pub finish_reason: FinishReason,
    /// Submit to the sample's first token, ms (null: no token).
    pub ttft_ms: Option<f64>,
    /// Submit to the last token (rank 0's clock). Absent in results of earlier builds.
    #[serde(default)]
    pub e2e_ms: Option<f64>,
    /// (e2e − TTFT) / (generated − 1), as trtllm-bench defines TPOT.
    #[serde(default)]
    pub tpot_ms: Option<f64>,
    /// This sample's inter-token gaps (exact, rank 0), when it has two tokens or more.
    #[serde(default)]
    pub itl_ms: Option<SampleItl>,
    /// Every engine rank produced the same token ids for this sample.
    pub ranks_agree: bool,
    /// The generated token ids (`--record-tokens`).
    pub tokens: Option<Vec<i32>>,
}

/// Where the summary's peak memory comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemorySource {
    /// NVML per-process used memory of this run's processes on the rank's GPU.
    GpuNvmlProcess,
    /// The rank's host resident set peak (VmHWM): there is no GPU.
    HostRss,
}

/// Seed-compatible figures first (total_time_s, throughput_tok_s, generated_tokens, prompt_tokens,
/// peak_memory_gib), then the richer ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Summary {
    /// Rank 0: submit to last token of any sample.
    pub total_time_s: f64,
    /// generated_tokens / total_time_s, as the customer's scripts define it.
    pub throughput_tok_s: f64,
    /// Tokens generated over all samples.
    pub generated_tokens: u64,
    /// Tokens requested over all samples.
    pub requested_tokens: u64,
    /// Prompt tokens over all samples.
    pub prompt_tokens: u64,
    /// Per rank, in rank order, GiB (2^30 bytes).
    pub peak_memory_gib: Vec<f64>,
    /// What `peak_memory_gib` measures.
    pub peak_memory_source: MemorySource,
    /// Merged over engine ranks.
    pub ttft_ms: PercentilesMs,
    /// Inter-token latency merged over engine ranks.
    pub itl_ms: PercentilesMs,
    /// prompt tokens / (submit → last sample's first token).
    pub prefill_tok_s: Option<f64>,
    /// tokens after each sample's first / (last sample's first token → last token).
    pub decode_tok_s: Option<f64>,
    /// Slowest rank's engine creation, seconds.
    pub engine_load_s: f64,
    /// Decode ITL p50 ÷ the decode floor (bytes a rank must read per step ÷ its measured copy
    /// bandwidth; the slowest rank's floor), for engines that report a floor.
    pub itl_over_floor: Option<f64>,
    /// Device decode step time (CUDA events) merged over ranks, for engines that measure it.
    pub device_step_ms: Option<PercentilesMs>,
    /// Rank 0's median decode latency in each tenth of the decode steps (ms, in step order): how
    /// the per-token cost grows as the context does.
    #[serde(default)]
    pub itl_p50_by_tenth_ms: Option<Vec<f64>>,
    /// What was measured: the engine warmed up to its steady state, or not (absent in JSONs written
    /// before the warm-up policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupSummary>,
    /// Whether the measured run itself looks steady (absent in JSONs written before the check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stationarity: Option<Stationarity>,
    /// With --slo: the requests that met it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goodput: Option<Goodput>,
    /// With --repeat N > 1: how the measured runs spread (rank 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<RepeatSummary>,
    /// Rank 0: seconds from the end of the measured run to the assembled report — clock offsets,
    /// every rank's report gathered, histograms merged, skew and CUPTI summaries (writing the
    /// trace and token log not included). Absent in JSONs of earlier builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_s: Option<f64>,
}

/// Smallest, median and largest of a figure over repeated runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Spread {
    /// Smallest value.
    pub min: f64,
    /// Median (an even count: the mean of the middle two).
    pub median: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    /// None without values; the median of an even count is the mean of the middle two.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Spread { min: v[0], median, max: v[n - 1] })
    }
}

/// `--repeat N`: every measured run's figures on rank 0 (the recorded run last), and their spread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RepeatSummary {
    /// Measured runs (`--repeat N`: N).
    pub runs: u32,
    /// ITL p50 of each run, ms.
    pub itl_p50_ms: Option<Spread>,
    /// TTFT p50 of each run, ms.
    pub ttft_p50_ms: Option<Spread>,
    /// Wall time of each run, seconds.
    pub wall_s: Option<Spread>,
}

impl RepeatSummary {
    /// From rank 0's earlier runs and the recorded run's own figures.
    pub fn of(runs: &[WarmupRun]) -> RepeatSummary {
        RepeatSummary {
            runs: runs.len() as u32,
            itl_p50_ms: Spread::of(runs.iter().filter_map(|r| r.itl_p50_ms)),
            ttft_p50_ms: Spread::of(runs.iter().filter_map(|r| r.ttft_ms)),
            wall_s: Spread::of(runs.iter().map(|r| r.wall_s)),
        }
    }
}

/// `--slo`: the bounds a request must meet to count for goodput (ms; absent: not bounded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Slo {
    /// Time to first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// (e2e − TTFT) / (n − 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpot_ms: Option<f64>,
    /// Every inter-token gap of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub itl_ms: Option<f64>,
    /// Submit to the request's last token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_ms: Option<f64>,
}

/// Goodput: the requests that met every bound of `--slo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Goodput {
    /// The bounds counted against.
    pub slo: Slo,
    /// Requests that met every bound.
    pub met: u32,
    /// Requests of the measured run.
    pub requests: u32,
    /// met ÷ requests, in percent.
    pub share_pct: f64,
    /// Requests that met the SLO per second of the measured run.
    pub requests_per_s: f64,
}

impl Goodput {
    /// Whether one request met every bound (a bound on a figure the request lacks is not met).
    pub fn meets(slo: &Slo, s: &SampleReport) -> bool {
        let within = |bound: Option<f64>, v: Option<f64>| bound.is_none_or(|b| v.is_some_and(|v| v <= b));
        within(slo.ttft_ms, s.ttft_ms)
            && within(slo.tpot_ms, s.tpot_ms)
            && within(slo.itl_ms, s.itl_ms.as_ref().map(|i| i.max))
            && within(slo.e2e_ms, s.e2e_ms)
    }

    pub fn of(slo: &Slo, samples: &[SampleReport], total_s: f64) -> Goodput {
        let met = samples.iter().filter(|s| Goodput::meets(slo, s)).count() as u32;
        let requests = samples.len() as u32;
        Goodput {
            slo: slo.clone(),
            met,
            requests,
            share_pct: if requests > 0 { met as f64 * 100.0 / requests as f64 } else { 0.0 },
            requests_per_s: if total_s > 0.0 { met as f64 / total_s } else { 0.0 },
        }
    }
}

/// The stationarity check on the measured run (rank 0): against the last warm-up run, and within
/// the run (first against last tenth of the decode steps). A warning does not change the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Stationarity {
    /// `--warmup-tolerance`, percent.
    pub tolerance_pct: f64,
    /// Measured ITL p50 (TTFT without decode) against the last warm-up run's, percent.
    pub vs_last_warmup_pct: Option<f64>,
    /// Median ITL of the last tenth of the decode steps against the first tenth's, percent.
    pub first_to_last_tenth_pct: Option<f64>,
    /// Each check beyond the tolerance, in words with its figures (empty: steady).
    pub warnings: Vec<String>,
}

/// The warm-up before the measured run, as rank 0 saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WarmupSummary {
    /// `auto` or `fixed`.
    pub mode: WarmupMode,
    /// Warm-up runs made.
    pub runs: u32,
    /// `steady` (auto: the last two warm-up runs agreed), `not_converged` (auto: the bound was
    /// reached first), `fixed` (`--warmup N`, N > 0: not checked), `cold` (`--warmup 0`: the first
    /// request of the process was measured).
    pub state: WarmupState,
    /// ITL p50 (TTFT where no decode) of each warm-up run, ms, then the measured run's.
    pub key_ms: Vec<Option<f64>>,
}

/// The warm-up's outcome (see `WarmupSummary.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WarmupState {
    /// Auto: the last two warm-up runs agreed.
    Steady,
    /// Auto: `--warmup-max` was reached first.
    NotConverged,
    /// `--warmup N`, N > 0: not checked.
    Fixed,
    /// `--warmup 0`: the first request of the process was measured.
    Cold,
}

/// Histograms merged exactly over the engine ranks, ns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Latency {
    /// Time to first token of every sample on every engine rank.
    pub ttft: HistogramSummary,
    /// Every inter-token gap of every engine rank.
    pub decode: HistogramSummary,
}

/// Cross-rank skew of the decode steps, from device-side step times (CUDA events) placed on rank
/// 0's clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Skew {
    /// Decode steps compared (those every rank has).
    pub steps: u64,
    /// Each rank's CLOCK_MONOTONIC minus rank 0's (ns), by MPI ping-pong (best of 16 round trips);
    /// ~0 for ranks on rank 0's host, which share its clock.
    pub clock_offsets_ns: Vec<i64>,
    /// Per step: latest − earliest rank's step start (ns).
    pub start_spread: HistogramSummary,
    /// Per step: latest − earliest rank's step end (ns).
    pub end_spread: HistogramSummary,
    /// How many steps each rank started last: the rank that holds the others back (with a
    /// collective inside every step, ends line up and starts tell who was late).
    pub last_to_start_steps: Vec<u64>,
}

/// One JSON per `tpprof run`, written atomically by rank 0. Times in ns unless the key says
/// otherwise; memory in bytes unless it says GiB (2^30).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "tpprof run result (schema tpprof.run/1)", extend("$id" = "https://github.com/tpprof/tpprof/results/schema.json"))]
pub struct RunReport {
    /// The schema identifier, `tpprof.run/1`.
    #[schemars(extend("const" = SCHEMA))]
    pub schema: String,
    /// How the run ended.
    pub status: Status,
    /// What was run.
    pub config: ConfigReport,
    /// Where and with what it ran.
    pub environment: Environment,
    /// The engine's identity (null: it was not created).
    pub engine: Option<EngineInfo>,
    /// Who runs the engine (null: unknown, the engine was not created).
    pub topology: Option<Topology>,
    /// The headline figures (null: the run failed before measuring).
    pub summary: Option<Summary>,
    /// Histograms merged exactly over the engine ranks.
    pub latency: Option<Latency>,
    /// Cross-rank skew per decode step, for engines with device step times on ≥ 2 ranks.
    pub skew: Option<Skew>,
    /// --cupti: NCCL share per rank and who was waited for, per decode step.
    #[serde(default)]
    pub cupti: Option<CuptiSummary>,
    /// Each rank's own view, in rank order.
    pub ranks: Vec<RankReport>,
    /// Each sample, as rank 0 saw it.
    pub samples: Vec<SampleReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watchdog names the ranks that made no progress: those that did not answer, else those
    /// still in a run the others finished, else every rank.
    #[test]
    fn stuck_ranks_are_the_ones_behind() {
        let at = |rank: i32, phase: &str| Reached { rank, phase: phase.into(), measured_run_started: true, tokens: 3 };
        let mut i = Interruption {
            cause: StopCause::Timeout,
            signal: None,
            signal_rank: None,
            timeout_s: Some(1.0),
            signalled: Vec::new(),
            reached: vec![
                at(0, &format!("measured run {WAITING}")),
                at(1, "measured run"),
                at(2, &format!("measured run {WAITING}")),
            ],
            not_gathered: Vec::new(),
            process_end: None,
        };
        assert_eq!(i.stuck(), vec![1]);
        i.reached[1].phase = format!("measured run {WAITING}");
        assert_eq!(i.stuck(), vec![0, 1, 2], "all in the same place: every rank");
        i.not_gathered = vec![2];
        assert_eq!(i.stuck(), vec![2], "no answer: that rank");
    }

    #[test]
    fn spreads_of_known_values() {
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert_eq!(Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(Spread::of(std::iter::empty()).is_none());
    }
}
