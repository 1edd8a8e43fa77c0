//! `tpprof run`, top to bottom. Every step that can fail on one rank ends in `World::agree`, so a
//! failing rank stops every rank at the same point instead of leaving them in a later collective.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::interrupt::{self, InterruptHandler, Interrupted};
use crate::cluster::{Json, RankFailures, WireError, World};
use crate::engine::adapter::{AdapterEngine, InitParams};
use crate::engine::builtin::cpu::mpi_comm::MpiComm;
use crate::engine::builtin::Cpu;
use crate::engine::config::Config;
use crate::engine::{Engine, EngineError, EngineSpec, Topology};
use crate::observe::gpu::{GpuInfo, HostGpus};
use crate::observe::memory::{MemorySampler, Phase, PhaseCell, SamplerSetup};
use crate::record::{token_digest, Recording, TokenSink};
use crate::report::build::Header;
use crate::report::trace::RankTrace;
use crate::report::writer::{OutputFile, Written};
use crate::report::{
    ConfigReport, Environment, RankReport, RankSample, RankTiming, Role, RunReport, State, StopCause, WarmupRun,
};
use crate::workload::Workload;

/// Vocabulary assumed for adapters that do not say theirs (valid for every Qwen2.5 tokenizer).
pub const DEFAULT_ADAPTER_VOCAB: u32 = 32000;

/// How a `tpprof run` that got to its report judged it (the face turns it into the exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every sample got its tokens (or, on ranks other than 0, this rank's part went through).
    Ok,
    /// A sample got fewer tokens than requested (EOS) while exact lengths were asked for.
    Incomplete,
    /// The report says failed.
    Failed,
}

/// Why `tpprof run` stopped before its report was complete: a phase failed on one or more ranks,
/// and every rank agreed on it (each failure names its rank). `bad_input`: the user's input was at
/// fault. `speaks`: this rank says it (rank 0). `report`: what became of the failed run's report
/// (rank 0).
#[derive(Debug, thiserror::Error)]
#[error("{failures}")]
pub struct RunFailed {
    pub bad_input: bool,
    pub failures: RankFailures,
    pub speaks: bool,
    pub report: Option<FailedReport>,
}

/// Where rank 0 left the report of a failed run.
#[derive(Debug)]
pub enum FailedReport {
    Written(PathBuf),
    KeptExisting(PathBuf),
    NotWritten(crate::report::writer::WriteError),
}

/// `tpprof run`'s options as the face hands them over: plain values, not validated yet
/// ([`RunConfig::from_input`] does that once MPI is up, so every rank stops on the same error).
/// The field meanings are `tpprof run --help`'s.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunInput {
    pub engine: String,
    pub dtype: String,
    pub model: Option<String>,
    pub weights: Option<PathBuf>,
    pub engine_options: String,
    pub batch: Option<i64>,
    pub prompt_tokens: i64,
    pub generated_tokens: i64,
    pub prompts: Option<PathBuf>,
    pub seed: u64,
    pub vocab_size: Option<i64>,
    pub allow_eos: bool,
    pub out: Option<PathBuf>,
    pub force: bool,
    pub trace: Option<PathBuf>,
    pub cupti: bool,
    pub trace_kernel_steps: i64,
    pub record_tokens: bool,
    pub devices: Option<Vec<i64>>,
    pub mem_interval_ms: i64,
    pub timeout: Option<f64>,
    pub warmup: String,
    pub warmup_tolerance: f64,
    pub warmup_max: i64,
    pub slo: Option<String>,
    pub token_log: Option<PathBuf>,
    pub no_progress: bool,
    pub repeat: i64,
    pub percentiles: Option<String>,
}

/// Validated `run` arguments: everything checkable before MPI, GPU or file work.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub engine: EngineSpec,
    pub model: String,
    /// The built-in engines' model shape.
    pub model_config: Option<Config>,
    pub weights: Option<PathBuf>,
    pub dtype: String,
    pub engine_options: String,
    pub batch: Option<u32>,
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    pub prompts_file: Option<PathBuf>,
    pub seed: u64,
    pub vocab_size: Option<u32>,
    pub exact_length: bool,
    pub out: Option<PathBuf>,
    pub force: bool,
    pub record_tokens: bool,
    pub trace: Option<PathBuf>,
    pub cupti: bool,
    /// Decode steps whose kernels go into the trace (0 = all).
    pub trace_kernel_steps: u32,
    pub devices: Option<Vec<i32>>,
    pub mem_interval: Duration,
    pub timeout: Option<Duration>,
    /// Unmeasured whole-workload runs before the measured one.
    pub warmup: WarmupPolicy,
    /// --warmup-tolerance (also the stationarity check's bound).
    pub warmup_tolerance_pct: f64,
    pub slo: Option<crate::report::Slo>,
    /// --token-log: every token of every rank as CSV, written by rank 0.
    pub token_log: Option<PathBuf>,
    /// Rank 0 shows progress during warm-up and measured runs (off: --no-progress).
    pub progress: bool,
    /// Measured runs (the last is recorded in full; each one's figures give the spread).
    pub repeat: u32,
    /// --percentiles: printed after the summary, from the run's histograms (empty: none).
    pub percentiles: Vec<f64>,
}

/// Why `tpprof run` cannot go on: bad options, a bad workload or host layout, an engine that
/// would not start. Each message names the cause and the fix; `World::agree` carries it to rank 0.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{what} would need {:.1} GiB on this host, which has {:.1} GiB available: {fix}", *need as f64 / (1u64 << 30) as f64, *avail as f64 / (1u64 << 30) as f64)]
    TooLarge { what: String, need: u128, avail: u64, fix: &'static str },
    #[error("the engine's vocabulary size is {0} (engine_info or the vocab_size option): token ids are INT32, so it must be 1 ..= 2147483648; pass --vocab-size N or fix the engine")]
    Vocab(u64),
    #[error(transparent)]
    Engine(#[from] crate::engine::SpecError),
    #[error("--{flag} must be a whole number ≥ 1 (got {got})")]
    NotPositive { flag: &'static str, got: i64 },
    #[error("--weights is for the built-in engines (cpu, cuda); adapters take their model through --engine-options")]
    WeightsNotBuiltin,
    #[error("--weights {}: no config.json there (expected a Hugging Face checkpoint directory: config.json + model.safetensors)", .0.display())]
    NoConfigJson(PathBuf),
    #[error(transparent)]
    Model(#[from] crate::engine::config::ConfigError),
    #[error("unknown --dtype `{}`: use fp16 or bf16", crate::engine::one_line(.0))]
    UnknownDtype(String),
    #[error("--engine-options must be a JSON object, e.g. '{{\"token_us\": 500}}' (got {})", crate::engine::one_line(.0))]
    EngineOptions(String),
    #[error("--devices takes GPU ordinals ≥ 0 (got {0})")]
    Device(i64),
    #[error("--cupti needs a GPU build of tpprof (this one was built without the `cuda` feature): rebuild with default features, or drop --cupti")]
    CuptiNeedsCuda,
    #[error("--trace-kernel-steps must be a whole number ≥ 0 (got {0})")]
    TraceKernelSteps(i64),
    #[error("--timeout must be a positive number of seconds (got {0})")]
    Timeout(f64),
    #[error("--warmup-tolerance must be a percentage in (0, 100] (got {0})")]
    WarmupTolerance(f64),
    #[error("--warmup-max must be a whole number in [2, 100] (got {0})")]
    WarmupMax(i64),
    #[error("--warmup must be `auto` or a whole number ≥ 0 (got {0:?})")]
    Warmup(String),
    #[error(transparent)]
    Output(#[from] crate::report::writer::WriteError),
    #[error("--trace {} is also the --out file: give the trace its own name", .0.display())]
    TraceIsOut(PathBuf),
    #[error(transparent)]
    Workload(#[from] crate::workload::WorkloadError),
    #[error(transparent)]
    Percentiles(#[from] crate::report::summary::PercentilesError),
    #[error("--batch {batch} but {} holds {prompts} prompts: drop --batch or make them agree", .file.display())]
    BatchMismatch { batch: u32, file: PathBuf, prompts: usize },
    #[error("prompt ({prompt} tokens) + generation ({generated} tokens) = {need} exceeds the model's context of {max} tokens: shorten one of them or use a model with a longer max_position_embeddings")]
    ContextOverflow { prompt: usize, generated: u32, need: u64, max: u32 },
    #[error("ranks {low} and {high} are bound to the same GPU ({uuid}): use one rank per GPU, or give each local rank its own ordinal with --devices")]
    SameGpu { low: i32, high: i32, uuid: String },
    #[error("--engine cuda needs a GPU on every rank, and this rank has none ({0})")]
    CudaWithoutGpu(String),
    #[error("--token-log {} is also the --out or --trace file: give it its own name", .0.display())]
    TokenLogClash(PathBuf),
    #[error("--slo takes KEY=MS pairs separated by commas, each key once, from ttft_ms, tpot_ms, itl_ms (every gap of a request), e2e_ms, e.g. --slo ttft_ms=500,tpot_ms=50 (got {0:?})")]
    Slo(String),
    #[error("measured run {run} (--repeat): {source}")]
    RepeatRun { run: u32, source: EngineError },
    #[error("warm-up run {run}: {source}")]
    WarmupRun { run: u32, source: EngineError },
}

/// `--warmup auto|N`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WarmupPolicy {
    /// Until two runs in a row agree within `tolerance_pct` (ITL p50), at most `max` runs.
    Auto { tolerance_pct: f64, max: u32 },
    /// Exactly this many (0: the cold first request is measured).
    Fixed(u32),
}

impl WarmupPolicy {
    fn parse(warmup: &str, tolerance_pct: f64, max: i64) -> Result<WarmupPolicy, RunError> {
        if !(tolerance_pct.is_finite() && tolerance_pct > 0.0 && tolerance_pct <= 100.0) {
            return Err(RunError::WarmupTolerance(tolerance_pct));
        }
        match warmup.trim() {
            "auto" if !(2..=100).contains(&max) => Err(RunError::WarmupMax(max)),
            "auto" => Ok(WarmupPolicy::Auto { tolerance_pct, max: max as u32 }),
            n => match n.parse::<u32>() {
                Ok(n) => Ok(WarmupPolicy::Fixed(n)),
                Err(_) => Err(RunError::Warmup(warmup.to_string())),
            },
        }
    }

    /// The most runs this policy makes.
    pub fn max_runs(&self) -> u32 {
        match *self {
            WarmupPolicy::Auto { max, .. } => max,
            WarmupPolicy::Fixed(n) => n,
        }
    }

    pub fn mode(&self) -> crate::report::WarmupMode {
        match self {
            WarmupPolicy::Auto { .. } => crate::report::WarmupMode::Auto,
            WarmupPolicy::Fixed(_) => crate::report::WarmupMode::Fixed,
        }
    }
}

fn positive(flag: &'static str, v: i64) -> Result<u32, RunError> {
    if v < 1 || v > u32::MAX as i64 {
        return Err(RunError::NotPositive { flag, got: v });
    }
    Ok(v as u32)
}

impl RunConfig {
    pub fn from_input(a: &RunInput) -> Result<RunConfig, RunError> {
        let engine = EngineSpec::parse(&a.engine)?;
        let model = match (&a.weights, &a.model) {
            (Some(dir), _) => dir.display().to_string(),
            (None, Some(m)) => m.clone(),
            (None, None) if engine.is_builtin() => "tiny".into(),
            // Adapters and drivers take their model through --engine-options: name it from there.
            (None, None) => options_model(&a.engine_options).unwrap_or_else(|| "(engine options)".into()),
        };
        if let Some(dir) = &a.weights {
            if !engine.is_builtin() {
                return Err(RunError::WeightsNotBuiltin);
            }
            if !dir.join("config.json").is_file() {
                return Err(RunError::NoConfigJson(dir.clone()));
            }
        }
        let model_config = if engine.is_builtin() { Some(load_model(&model)?) } else { None };

        if !matches!(a.dtype.as_str(), "fp16" | "float16" | "f16" | "bf16" | "bfloat16") {
            return Err(RunError::UnknownDtype(a.dtype.clone()));
        }
        match serde_json::from_str::<serde_json::Value>(&a.engine_options) {
            Ok(v) if v.is_object() => {}
            _ => return Err(RunError::EngineOptions(a.engine_options.clone())),
        }
        let devices = match &a.devices {
            None => None,
            Some(d) => Some(
                d.iter()
                    .map(|&x| i32::try_from(x).ok().filter(|x| *x >= 0).ok_or(RunError::Device(x)))
                    .collect::<Result<Vec<i32>, RunError>>()?,
            ),
        };
        if a.cupti && !cfg!(feature = "cuda") {
            return Err(RunError::CuptiNeedsCuda);
        }
        let trace_kernel_steps =
            u32::try_from(a.trace_kernel_steps).map_err(|_| RunError::TraceKernelSteps(a.trace_kernel_steps))?;
        let timeout = match a.timeout {
            Some(t) if !(t > 0.0 && t.is_finite()) => return Err(RunError::Timeout(t)),
            Some(t) => Some(Duration::from_secs_f64(t)),
            None => None,
        };
        Ok(RunConfig {
            engine,
            model,
            model_config,
            weights: a.weights.clone(),
            dtype: a.dtype.clone(),
            engine_options: a.engine_options.clone(),
            batch: a.batch.map(|b| positive("batch", b)).transpose()?,
            prompt_tokens: positive("prompt-tokens", a.prompt_tokens)?,
            generated_tokens: positive("generated-tokens", a.generated_tokens)?,
            prompts_file: a.prompts.clone(),
            seed: a.seed,
            vocab_size: a.vocab_size.map(|v| positive("vocab-size", v)).transpose()?,
            exact_length: !a.allow_eos,
            out: a.out.clone(),
            force: a.force,
            record_tokens: a.record_tokens,
            trace: a.trace.clone(),
            cupti: a.cupti,
            trace_kernel_steps,
            devices,
            mem_interval: match a.mem_interval_ms {
                0 => Duration::ZERO,
                v => Duration::from_millis(positive("mem-interval-ms", v)? as u64),
            },
            timeout,
            warmup: WarmupPolicy::parse(&a.warmup, a.warmup_tolerance, a.warmup_max)?,
            warmup_tolerance_pct: a.warmup_tolerance,
            slo: a.slo.as_deref().map(parse_slo).transpose()?,
            token_log: a.token_log.clone(),
            progress: !a.no_progress,
            repeat: positive("repeat", a.repeat)?,
            percentiles: a
                .percentiles
                .as_deref()
                .map(crate::report::summary::parse_percentiles)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    fn model_label(&self) -> String {
        match &self.engine {
            EngineSpec::Adapter(_) => "adapter".into(),
            EngineSpec::Python(_) => "python".into(),
            _ => std::path::Path::new(&self.model)
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("model")
                .trim_end_matches(".json")
                .to_string(),
        }
    }
}

/// `engine.generate` into the sink; with an NVTX-collecting tool attached (nsys), through a wrapper
/// that adds a range per decode step (observe::nvtx).
fn generate_into(
    engine: &mut dyn Engine,
    prompts: &[Vec<i32>],
    workload: &Workload,
    config: &RunConfig,
    sink: &TokenSink,
) -> Result<(), EngineError> {
    // A handler the engine installed (at create, or in the previous generate) would take SIGINT /
    // SIGTERM from the run: put tpprof's back first.
    interrupt::reclaim_signals();
    if crate::observe::nvtx::active() {
        let steps = crate::observe::nvtx::Steps::new(sink);
        engine.generate(prompts, workload.generated_tokens, config.exact_length, &steps)
    } else {
        engine.generate(prompts, workload.generated_tokens, config.exact_length, sink)
    }
}

/// One generate() whose tokens are counted, not kept: a warm-up run or an earlier repeat. Its
/// TTFT and ITL p50 and tokens on this rank (the caller times the wall, barrier included).
#[allow(clippy::too_many_arguments)]
fn figures_run(
    engine: &mut dyn Engine,
    config: &RunConfig,
    workload: &Workload,
    obs: &Observers,
    prompts: &[Vec<i32>],
    name: &str,
    progress: bool,
    shared: &Shared,
) -> (WarmupRun, Result<(), EngineError>) {
    let progress = progress.then(|| name.to_string());
    let requested = vec![workload.generated_tokens; workload.prompts.len()];
    let total: u64 = requested.iter().map(|&r| r as u64).sum();
    let sink = shared.start_run(name, false, TokenSink::new_with_epoch(obs.epoch, total as usize + 64), None);
    let _range = crate::observe::nvtx::range(name);
    let r = with_progress(progress, &sink, total, || generate_into(engine, prompts, workload, config, &sink));
    let sink = shared.end_run(sink);
    let submit = sink.submit_ns();
    let (events, overflow) = sink.into_events();
    // Warm-up tokens are counted, not checked: the measured run's recording reports bad values.
    let rec = Recording::analyse(&events, overflow, submit, &requested, None);
    let (ttft, itl) = (rec.ttft.summary(), rec.decode.summary());
    let seen = WarmupRun {
        wall_s: 0.0,
        ttft_ms: (ttft.count > 0).then(|| ttft.p50_ns as f64 / 1e6),
        itl_p50_ms: (itl.count > 0).then(|| itl.p50_ns as f64 / 1e6),
        tokens: rec.generated_tokens(),
    };
    (seen, r)
}

/// Runs `generate` (which feeds `sink`) while, when `label` is given, another thread shows how far
/// it got: on a terminal one line redrawn twice a second, else (mpirun pipes stderr) a line every
/// 10 s once the run has taken 5 s. Read from the sink, never from the token callback; the line
/// is cleared (terminal) or closed with the final count.
fn with_progress<R>(label: Option<String>, sink: &TokenSink, total: u64, generate: impl FnOnce() -> R) -> R {
    use std::io::{IsTerminal, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(label) = label else { return generate() };
    let done = AtomicBool::new(false);
    let tty = std::io::stderr().is_terminal();
    std::thread::scope(|s| {
        let shower = s.spawn(|| {
            let start = Instant::now();
            let (tick, first, every) = if tty {
                (Duration::from_millis(100), Duration::from_millis(500), Duration::from_millis(500))
            } else {
                (Duration::from_millis(100), Duration::from_secs(5), Duration::from_secs(10))
            };
            let mut next = first;
            let mut shown = false;
            while !done.load(Ordering::Acquire) {
                std::thread::park_timeout(tick);
                let t = start.elapsed();
                if t < next || done.load(Ordering::Acquire) {
                    continue;
                }
                next = t + every;
                let n = sink.received();
                let line = format!(
                    "{label}: {n}/{total} tokens ({:.0} %), {:.1} s",
                    n as f64 * 100.0 / total.max(1) as f64,
                    t.as_secs_f64()
                );
                let mut e = std::io::stderr().lock();
                let _ = if tty { write!(e, "\r\x1b[2K{line}") } else { writeln!(e, "{line}") };
                let _ = e.flush();
                shown = true;
            }
            if shown && tty {
                let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
            }
        });
        let r = generate();
        done.store(true, Ordering::Release);
        shower.thread().unpark(); // ends the wait at once: the run does not wait for a tick
        r
    })
}

/// `--slo ttft_ms=500,tpot_ms=50,itl_ms=200,e2e_ms=60000`: at least one bound, each a positive
/// number of milliseconds, each key once.
fn parse_slo(text: &str) -> Result<crate::report::Slo, RunError> {
    let bad = || RunError::Slo(text.to_string());
    let mut slo = crate::report::Slo::default();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(bad)?;
        let ms: f64 = value.trim().parse().ok().filter(|v: &f64| v.is_finite() && *v > 0.0).ok_or_else(bad)?;
        let slot = match key.trim() {
            "ttft_ms" => &mut slo.ttft_ms,
            "tpot_ms" => &mut slo.tpot_ms,
            "itl_ms" => &mut slo.itl_ms,
            "e2e_ms" => &mut slo.e2e_ms,
            _ => return Err(bad()),
        };
        if slot.replace(ms).is_some() {
            return Err(bad());
        }
    }
    if slo == crate::report::Slo::default() {
        return Err(bad());
    }
    Ok(slo)
}

fn load_model(model: &str) -> Result<Config, crate::engine::config::ConfigError> {
    let p = std::path::Path::new(model);
    if p.exists() {
        return Config::from_json_file(p);
    }
    Config::preset(model)
}

/// A failure that ends the run: the user's input at fault, or the run itself.
struct Stop {
    bad_input: bool,
    failures: RankFailures,
}

impl Stop {
    fn input(f: RankFailures) -> Stop {
        Stop { bad_input: true, failures: f }
    }
    fn failed(f: RankFailures) -> Stop {
        Stop { bad_input: false, failures: f }
    }
}

/// `tpprof run` on this rank: the verdict of a run that got to its report, or why it stopped. The
/// caller owns the world, so it can say why before MPI_Finalize (another rank's early exit ends
/// the job after that).
pub fn main(world: &World, input: RunInput) -> Result<Verdict, RunFailed> {
    init_logging(world.rank);
    share_cores();
    let mut job = Job::new(world, input);
    let outcome = job.run();
    world.on_interrupt(None);
    // Engine, sampler and communicators go before MPI_Finalize (when the caller drops `world`).
    drop(job);
    outcome
}

/// 2. Where this rank runs: its GPU (if any), the local GPUs every engine is told about, and why
/// there is no GPU when there is none.
struct Site {
    gpu: Option<GpuInfo>,
    local_devices: Vec<i32>,
    no_gpu_reason: String,
}

/// 3. What observes the run from before engine creation to the end: the memory sampler (the run
/// moves its phase) and the epoch every timestamp of this rank counts from.
struct Observers {
    epoch: Instant,
    epoch_mono_ns: u64,
    phase: PhaseCell,
    sampler: SamplerGuard,
}

impl Observers {
    fn start(world: &World, config: &RunConfig, site: &Site) -> Observers {
        let epoch = Instant::now();
        let epoch_mono_ns = crate::clock::mono_ns();
        let phase = PhaseCell::default();
        let sampler = MemorySampler::start(SamplerSetup {
            epoch,
            interval: config.mem_interval,
            gpu: site.gpu.clone(),
            no_gpu_reason: site.no_gpu_reason.clone(),
            job: job_processes(world),
            phase: phase.clone(),
        });
        Observers { epoch, epoch_mono_ns, phase, sampler: SamplerGuard(Arc::new(Mutex::new(Some(sampler)))) }
    }
}

/// 4. The engine as created and agreed on every rank, this rank's role, and its CUPTI session
/// (taken by the measured run).
struct Created {
    engine: OwnedEngine,
    create_s: f64,
    role: Role,
    cupti: Option<crate::observe::cupti::CuptiSession>,
}

/// The engine, destroyed with process-end holds off (`interrupt::engine_teardown`): an engine
/// that ends the process while it is destroyed, on any path out of the run, ends it with its own
/// code instead of turning a finished or refused run into a failed one.
struct OwnedEngine(Option<Box<dyn Engine>>);

impl std::ops::Deref for OwnedEngine {
    type Target = dyn Engine;
    fn deref(&self) -> &(dyn Engine + 'static) {
        self.0.as_deref().expect("the engine lives until OwnedEngine is dropped")
    }
}

impl std::ops::DerefMut for OwnedEngine {
    fn deref_mut(&mut self) -> &mut (dyn Engine + 'static) {
        self.0.as_deref_mut().expect("the engine lives until OwnedEngine is dropped")
    }
}

impl OwnedEngine {
    fn as_ref(&self) -> &dyn Engine {
        &**self
    }
    fn as_mut(&mut self) -> &mut dyn Engine {
        &mut **self
    }
}

impl Drop for OwnedEngine {
    fn drop(&mut self) {
        let _teardown = interrupt::engine_teardown();
        drop(self.0.take());
    }
}

/// 6. The warm-up runs: wall time and what each showed; then the earlier repeats (--repeat).
struct Warmed {
    wall_s: Vec<f64>,
    runs: Vec<WarmupRun>,
    repeats: Vec<WarmupRun>,
}

/// 7. The measured run on this rank.
struct Measured {
    events: Vec<crate::record::TokenEvent>,
    rec: Recording,
    submit_ns: u64,
    end_ns: u64,
    device_steps: Option<Vec<(u64, u64)>>,
    recorded: Option<crate::observe::cupti::Recorded>,
}

/// 8. What rank 0 holds after the gathers.
struct Gathered {
    reports: Vec<Result<Json<RankReport>, WireError>>,
    /// Rank 0's own recording (the summary's per-sample view).
    rec: Recording,
    offsets: Vec<i64>,
    /// Each rank's device step times (start, end).
    all_steps: Option<Vec<Result<Vec<(u64, u64)>, WireError>>>,
    /// With --cupti: each rank's per-step activity per device.
    step_activity: Option<Vec<Result<Json<StepActivity>, WireError>>>,
    traces: Option<Vec<Result<Json<RankTrace>, WireError>>>,
    /// With --token-log: every rank's tokens.
    token_logs: Option<Vec<Result<Json<crate::report::tokenlog::RankTokens>, WireError>>>,
    /// When the gather phase began (rank 0's merge time counts from here).
    started: Instant,
}

/// One rank's CUPTI per-step activity, per device (None: the rank recorded none).
type StepActivity = Option<Vec<(u32, Vec<crate::observe::cupti::Activity>)>>;

/// The state of one run on one rank.
struct Job<'w> {
    world: &'w World,
    input: RunInput,
    config: Option<RunConfig>,
    out: Option<OutputFile>,
    trace_out: Option<OutputFile>,
    token_log_out: Option<OutputFile>,
    header: Option<Header>,
    /// What this rank has done so far, for the interrupt handler.
    shared: Shared,
}

impl<'w> Job<'w> {
    fn new(world: &'w World, input: RunInput) -> Job<'w> {
        Job {
            world,
            input,
            config: None,
            out: None,
            trace_out: None,
            token_log_out: None,
            header: None,
            shared: Shared::default(),
        }
    }

    fn run(&mut self) -> Result<Verdict, RunFailed> {
        self.try_run().map_err(|stop| self.fail(stop))
    }

    /// Writes the failed report (rank 0) — not for bad input: nothing was measured, and an input
    /// error leaves no file whenever it is found.
    fn fail(&mut self, stop: Stop) -> RunFailed {
        let speaks = self.world.is_root();
        let mut report = None;
        // From here the run speaks for itself: an interrupt only ends the process.
        let _closed = self.shared.close();
        if let (true, false, Some(out), Some(header)) = (speaks, stop.bad_input, self.out.take(), self.header.take()) {
            let _held = interrupt::hold_exit();
            let failed = header.failed(&stop.failures.list, Vec::new());
            report = Some(match out.write(&failed) {
                Ok(Written::Yes(p)) => FailedReport::Written(p),
                Ok(Written::KeptExisting(p)) => FailedReport::KeptExisting(p),
                Err(e) => FailedReport::NotWritten(e),
            });
        }
        RunFailed { bad_input: stop.bad_input, failures: stop.failures, speaks, report }
    }

    /// The run, phase by phase. Every rank walks the same phases in the same order, so their
    /// collectives match; a phase that fails on one rank fails on all (World::agree).
    fn try_run(&mut self) -> Result<Verdict, Stop> {
        // Each phase is an NVTX range too (observe::nvtx: seen in nsys when it collects NVTX).
        use crate::observe::nvtx::range;
        let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let config = {
            let _r = range("tpprof configure");
            self.configure(&started_at)?
        }; // 1. arguments agreed, output claimed, watchdog
        self.shared.phase("bind");
        let site = {
            let _r = range("tpprof bind");
            self.bind(&config, started_at)?
        }; // 2. GPU binding, the JSON's header
        let mut obs = Observers::start(self.world, &config, &site); // 3. memory sampler, clock epoch
        self.shared.update(|p| {
            p.gpu = site.gpu.clone();
            p.sampler = Some(obs.sampler.0.clone());
            p.header = self.header.clone();
            p.phase = "engine creation".into();
        });
        let mut created = {
            let _r = range("tpprof create engine");
            self.create_engine(&config, &site, &obs)?
        }; // 4. the engine, CUPTI
        self.shared.update(|p| {
            p.role = Some(created.role);
            p.create_s = created.create_s;
            p.phase = "workload".into();
        });
        let workload = self.workload_for(&config, created.engine.as_ref())?; // 5. prompts, broadcast
        self.shared.update(|p| p.header = self.header.clone());
        let warmed = {
            let _r = range("tpprof warm-up");
            self.warm_up(&config, &mut created, &workload, &obs)?
        }; // 6. prepare, warm-up runs
        let measured = {
            let _r = range("tpprof measure");
            self.measure(&config, &mut created, &workload, &obs)?
        }; // 7. the measured generate()
        self.shared.phase("gather");
        let gathered = {
            let _r = range("tpprof gather");
            self.gather(&config, created, &mut obs, warmed, measured, &site)
        }; // 8. to rank 0
        let Some(gathered) = gathered else { return Ok(Verdict::Ok) };
        self.shared.phase("assemble");
        let report = {
            let _r = range("tpprof assemble");
            self.assemble(&workload, gathered)?
        }; // 9. rank 0: one report, the trace
        self.finish(report, &config) // 10. written, summary printed
    }

    /// 1. Arguments and the model shape against the world size; rank 0 claims the output file.
    fn configure(&mut self, started_at: &str) -> Result<RunConfig, Stop> {
        let world = self.world;
        // SIGINT / SIGTERM from here on: the watcher (a communicator of its own, collective).
        self.shared.update(|p| {
            p.rank = world.rank;
            p.host = world.host.clone();
            p.local_rank = world.local_rank;
            p.phase = "configure".into();
        });
        match world.watch_interrupts() {
            Ok(()) => world.on_interrupt(Some(Arc::new(self.shared.clone()))),
            Err(e) => tracing::warn!("SIGINT / SIGTERM will end this rank without a report: {e}"),
        }
        // The first collective of the run: every rank must run the same build with the same
        // options (an MPMD launch, a --config file that differs between hosts, mixed installs
        // would otherwise hang or die in a mismatched collective later).
        if let Some(why) = differing_ranks(world, &self.input) {
            return Err(Stop::input(why));
        }
        let config = world.agree(self.validate()).map_err(Stop::input)?;
        self.config = Some(config.clone());
        let claimed = if world.is_root() { self.claim_output(&config, started_at) } else { Ok(()) };
        world.agree(claimed).map_err(Stop::input)?;
        self.shared.update(|p| p.out = self.out.clone());
        if let Some(t) = config.timeout {
            world.start_watchdog(t);
        }
        Ok(config)
    }

    /// 2. GPU binding (two ranks on one GPU is an error), CUPTI's preconditions, the header.
    fn bind(&mut self, config: &RunConfig, started_at: String) -> Result<Site, Stop> {
        let world = self.world;
        let host_gpus = HostGpus::probe();
        let gpu = world.agree(host_gpus.bind(world.local_rank, config.devices.as_deref())).map_err(Stop::input)?;
        world.agree(check_unique_gpus(world, gpu.as_ref())).map_err(Stop::input)?;
        if config.cupti {
            world.agree(crate::observe::cupti::CuptiSession::check(gpu.is_some())).map_err(Stop::input)?;
        }
        let local_devices = local_device_list(world, gpu.as_ref());
        let no_gpu_reason = match &host_gpus {
            HostGpus::Absent { reason } => reason.clone(),
            HostGpus::Present { .. } => String::new(),
        };
        self.header = Some(self.header_for(config, &host_gpus, started_at));
        Ok(Site { gpu, local_devices, no_gpu_reason })
    }

    /// 4. The engine (`auto` becomes cuda where every rank has a GPU), agreed; then CUPTI.
    fn create_engine(&mut self, config: &RunConfig, site: &Site, obs: &Observers) -> Result<Created, Stop> {
        let world = self.world;
        obs.phase.set(Phase::EngineLoad);
        let gpu = site.gpu.as_ref();
        let spec = config.engine.resolve(gpu.is_some());
        let labels: Vec<String> =
            world.all_gather(&spec.label().to_string()).into_iter().map(Result::unwrap_or_default).collect();
        if labels.iter().any(|l| *l != labels[0]) {
            let which: Vec<String> = labels.iter().enumerate().map(|(r, l)| format!("rank {r}: {l}")).collect();
            return Err(Stop::input(RankFailures::one(0, format!("--engine auto chose different engines on different ranks ({}): some ranks have no GPU; pass --engine explicitly", which.join(", ")))));
        }
        tracing::info!("creating engine {}", spec.label());
        let t_create = Instant::now();
        let rendezvous = self.rendezvous(&spec, gpu)?;
        let engine_comm = world.duplicate();
        // What adapters and Python drivers get at create().
        let init = InitParams {
            rank: world.rank,
            world_size: world.size,
            local_rank: world.local_rank,
            local_world_size: world.local_size,
            devices: &site.local_devices,
            options_json: &config.engine_options,
            rendezvous: &rendezvous,
        };
        let engine: Result<Box<dyn Engine>, EngineError> = match &spec {
            EngineSpec::Cpu | EngineSpec::Auto => {
                let cfg = config.model_config.as_ref().expect("validated: built-in engines have a model");
                Cpu::new(
                    cfg,
                    &config.model,
                    config.seed,
                    config.weights.as_deref(),
                    Box::new(MpiComm::new(engine_comm)),
                )
                .map(|e| Box::new(e) as Box<dyn Engine>)
            }
            EngineSpec::Cuda => {
                drop(engine_comm);
                self.cuda_engine(config, gpu, &rendezvous)
            }
            EngineSpec::Python(driver) => {
                drop(engine_comm);
                crate::engine::python::PythonEngine::load(driver, &init)
                    .map(|e| Box::new(e) as Box<dyn Engine>)
                    .map_err(EngineError::from)
            }
            EngineSpec::Adapter(path) => {
                drop(engine_comm);
                AdapterEngine::load(path, &init).map(|e| Box::new(e) as Box<dyn Engine>).map_err(EngineError::from)
            }
        };
        let bad_input = engine.as_ref().err().is_some_and(EngineError::is_bad_input);
        let engine = match world.agree(engine) {
            Ok(e) => e,
            Err(f) => {
                // Every rank is here: the failure is bad input when any rank's cause was.
                let input = world.all_gather(&Json(bad_input)).into_iter().any(|r| matches!(r, Ok(Json(true))));
                return Err(if input { Stop::input(f) } else { Stop::failed(f) });
            }
        };
        // CUPTI attaches to the engine's existing CUDA context(s), before prepare (warm-up, graph
        // capture) and generate. Not earlier: enabling activity before the engine's cuInit
        // deadlocked inside cuInit on the H200 machine (CUPTI 13.0, driver 580; see observe/cupti/session.rs).
        let create_s = t_create.elapsed().as_secs_f64();
        let topology = engine.topology();
        // Not on ONE_PROCESS observer ranks: their process runs no kernels (rank 0's records every
        // GPU it drives).
        let observer = topology == Topology::OneProcess && !world.is_root();
        let cupti = world
            .agree(crate::observe::cupti::CuptiSession::start(config.cupti && !observer, gpu.is_some()))
            .map_err(Stop::input)?;
        if let Some(h) = &mut self.header {
            h.engine = Some(engine.info());
            h.topology = Some(topology);
        }
        let role = if observer { Role::Observer } else { Role::Engine };
        Ok(Created { engine: OwnedEngine(Some(engine)), create_s, role, cupti: Some(cupti) })
    }

    /// 5. The workload: built on rank 0, broadcast, so every rank feeds identical prompts.
    fn workload_for(&mut self, config: &RunConfig, engine: &dyn Engine) -> Result<Workload, Stop> {
        let vocab = config
            .vocab_size
            .map(u64::from)
            .or(engine.vocab_size().map(u64::from))
            .or_else(|| options_vocab(&config.engine_options))
            .unwrap_or(DEFAULT_ADAPTER_VOCAB.into());
        // Token ids are INT32: a vocabulary of 0 (or one beyond 2^31) cannot be sampled from.
        let checked = match u32::try_from(vocab) {
            Ok(v) if v > 0 && v <= 1 << 31 => Ok(v),
            _ => Err(RunError::Vocab(vocab)),
        };
        let vocab = self.world.agree(checked).map_err(Stop::input)?;
        let workload = self.workload(config, vocab, engine.max_context())?;
        if let Some(h) = &mut self.header {
            h.config.vocab_size = vocab;
            h.config.batch = workload.prompts.len() as u32;
            h.config.prompts = workload.source.clone();
        }
        Ok(workload)
    }

    /// 6. Prepare (buffers, warm-up, graphs: before the clock; every rank in ALL_RANKS, rank 0
    /// only in ONE_PROCESS), then the warm-up runs: the workload's shapes (prompt lengths, batch,
    /// tokens), each prompt's ids in another order (no prefix-cache hits for the measured run),
    /// tokens discarded (memory phase `prepare`; CUPTI counts their kernels only in kernels_total,
    /// like the engine's own warm-up).
    fn warm_up(
        &mut self,
        config: &RunConfig,
        created: &mut Created,
        workload: &Workload,
        obs: &Observers,
    ) -> Result<Warmed, Stop> {
        let world = self.world;
        let (engine, role) = (&mut created.engine, created.role);
        obs.phase.set(Phase::Prepare);
        self.shared.phase("prepare");
        interrupt::reclaim_signals();
        let prepared = match role {
            Role::Engine => engine.prepare(&workload.prompts, workload.generated_tokens),
            Role::Observer => Ok(()),
        };
        // What does not fit the GPU (the cuda engine's KV cache) is bad input: nothing measured yet.
        let bad_input = prepared.as_ref().err().is_some_and(EngineError::is_bad_input);
        if let Err(f) = world.agree(prepared) {
            let input = world.all_gather(&Json(bad_input)).into_iter().any(|r| matches!(r, Ok(Json(true))));
            return Err(if input { Stop::input(f) } else { Stop::failed(f) });
        }
        let mut warmed = Warmed { wall_s: Vec::new(), runs: Vec::new(), repeats: Vec::new() };
        for i in 0..config.warmup.max_runs() {
            let t = Instant::now();
            let (mut seen, warm) = match role {
                Role::Engine => {
                    match config.warmup {
                        WarmupPolicy::Auto { tolerance_pct, max } => tracing::info!(
                            "warm-up run {} (until two in a row agree within {tolerance_pct} %, at most {max})",
                            i + 1
                        ),
                        WarmupPolicy::Fixed(n) => tracing::info!("warm-up run {} of {n}", i + 1),
                    }
                    let show = config.progress && world.is_root();
                    let name = format!("warm-up run {}", i + 1);
                    let (seen, r) = figures_run(
                        engine.as_mut(),
                        config,
                        workload,
                        obs,
                        &workload.warmup_prompts(config.seed, i),
                        &name,
                        show,
                        &self.shared,
                    );
                    (seen, r.map_err(|source| RunError::WarmupRun { run: i + 1, source }))
                }
                Role::Observer => (WarmupRun::default(), Ok(())),
            };
            world.idle_barrier();
            world.agree(warm).map_err(Stop::failed)?;
            seen.wall_s = t.elapsed().as_secs_f64();
            warmed.wall_s.push(seen.wall_s);
            warmed.runs.push(seen);
            if let Some(h) = &mut self.header {
                h.config.warmup = warmed.runs.len() as u32; // what a failed run's JSON says, too
            }
            self.shared.update(|p| {
                p.header = self.header.clone();
                p.warmup_s = warmed.wall_s.clone();
                p.warmup_runs = warmed.runs.clone();
            });
            // The auto policy: rank 0 (always an engine rank) decides, every rank follows.
            if let WarmupPolicy::Auto { tolerance_pct, .. } = config.warmup {
                let done = world.is_root() && crate::report::warmup_converged(&warmed.runs, tolerance_pct);
                if world.broadcast(world.is_root().then_some(&done)).unwrap_or(false) {
                    break;
                }
            }
        }
        // --repeat N: N − 1 measured runs before the recorded one, each prompt's ids in another
        // order (the shapes of the workload, never a prefix-cache hit), their figures kept.
        for k in 0..config.repeat.saturating_sub(1) {
            obs.phase.set(Phase::Generate);
            let t = Instant::now();
            let (mut seen, r) = match role {
                Role::Engine => {
                    tracing::info!("measured run {} of {}", k + 1, config.repeat);
                    let show = config.progress && world.is_root();
                    let name = format!("measured run {} of {}", k + 1, config.repeat);
                    let prompts = workload.warmup_prompts(config.seed ^ 0x7e9ea7, k);
                    let (seen, r) =
                        figures_run(engine.as_mut(), config, workload, obs, &prompts, &name, show, &self.shared);
                    (seen, r.map_err(|source| RunError::RepeatRun { run: k + 1, source }))
                }
                Role::Observer => (WarmupRun::default(), Ok(())),
            };
            world.idle_barrier();
            world.agree(r).map_err(Stop::failed)?;
            seen.wall_s = t.elapsed().as_secs_f64();
            warmed.repeats.push(seen);
            self.shared.update(|p| p.repeat_runs = warmed.repeats.clone());
        }
        Ok(warmed)
    }

    /// 7. The measured generate(): every token timestamped on entry into the sink; the memory
    /// phase moves to decode when every sample has its first token. Then CUPTI's recording.
    fn measure(
        &mut self,
        config: &RunConfig,
        created: &mut Created,
        workload: &Workload,
        obs: &Observers,
    ) -> Result<Measured, Stop> {
        let world = self.world;
        // A test hook (tests/failures.rs): a panic on this rank, to show it ends the whole job.
        if std::env::var("TPPROF_TEST_PANIC_RANK").ok().and_then(|r| r.parse::<i32>().ok()) == Some(world.rank) {
            panic!("TPPROF_TEST_PANIC_RANK");
        }
        let (engine, role) = (&mut created.engine, created.role);
        let requested = vec![workload.generated_tokens; workload.prompts.len()];
        let sink = TokenSink::new_with_epoch(obs.epoch, requested.iter().map(|&r| r as usize).sum::<usize>() + 64);
        let vocab = engine_vocab(&**engine, config);
        let sink = self.shared.start_run("measured run", true, sink, Some((requested.clone(), vocab)));
        let decode_phase = obs.phase.clone();
        sink.on_prefill_done(workload.prompts.len(), Box::new(move || decode_phase.set(Phase::Decode)));
        obs.phase.set(if role == Role::Observer { Phase::Generate } else { Phase::Prefill });
        let generated = match role {
            Role::Engine => {
                tracing::info!("generating {} sample(s)", workload.prompts.len());
                let show = (config.progress && world.is_root()).then(|| "measured run".to_string());
                let _range = crate::observe::nvtx::range("measured run");
                with_progress(show, &sink, requested.iter().map(|&r| r as u64).sum(), || {
                    generate_into(engine.as_mut(), &workload.prompts, workload, config, &sink)
                })
            }
            Role::Observer => Ok(()),
        };
        let end_ns = sink.now_ns();
        // This rank's recording is analysed before the barrier: an interrupt while another rank is
        // still generating (or hung) reports it.
        let sink = self.shared.end_run(sink);
        let submit_ns = sink.submit_ns();
        let (events, overflow) = sink.into_events();
        let rec = Recording::analyse(&events, overflow, submit_ns, &requested, vocab);
        self.shared.update(|p| p.measured = Some(RankMeasure::of(&rec, submit_ns, end_ns)));
        world.idle_barrier();
        obs.phase.set(Phase::Finish);
        world.agree(generated).map_err(Stop::failed)?;
        let device_steps = engine.device_steps();
        let abs_tokens: Vec<(u32, u32, u64)> =
            events.iter().map(|e| (e.sample, e.step, obs.epoch_mono_ns + e.t_ns)).collect();
        let cupti = created.cupti.take().expect("CUPTI's session is taken once, here");
        let recorded = world
            .agree(cupti.finish(
                device_steps.as_deref(),
                &abs_tokens,
                workload.prompts.len() as u32,
                workload.generated_tokens,
                obs.epoch_mono_ns + submit_ns,
                config.trace_kernel_steps,
            ))
            .map_err(Stop::failed)?;
        Ok(Measured { events, rec, submit_ns, end_ns, device_steps, recorded })
    }

    /// 8. This rank's report, gathered at rank 0 with the device step times and clock offsets (for
    /// the cross-rank skew), CUPTI's per-step activity and the trace parts. The engine is released
    /// here, before rank 0 assembles. `None` on every rank but 0.
    #[allow(clippy::too_many_arguments)]
    fn gather(
        &mut self,
        config: &RunConfig,
        created: Created,
        obs: &mut Observers,
        warmed: Warmed,
        m: Measured,
        site: &Site,
    ) -> Option<Gathered> {
        let world = self.world;
        let started = Instant::now();
        let Created { engine, create_s, role, .. } = created;
        let engine_memory = engine.memory().ok();
        let offsets = world.clock_offsets(16);
        let all_steps = world.gather(&m.device_steps.clone().unwrap_or_default());
        let memory = obs.sampler.stop();
        let rec = &m.rec;
        let rank_report = RankReport {
            rank: world.rank,
            host: world.host.clone(),
            local_rank: world.local_rank,
            pid: std::process::id(),
            role,
            gpu: site.gpu.clone(),
            memory,
            engine_memory,
            timing: RankTiming {
                warmup_s: warmed.wall_s,
                warmup_runs: warmed.runs,
                repeat_runs: warmed.repeats,
                create_s,
                generate_s: (role == Role::Engine)
                    .then(|| rec.last_token_ns().unwrap_or(m.end_ns).saturating_sub(m.submit_ns) as f64 / 1e9),
            },
            tokens_generated: rec.generated_tokens(),
            ttft: rec.ttft.summary(),
            decode: rec.decode.summary(),
            itl_p50_by_tenth_ms: rec.decode_deciles_ms(),
            device_decode: m.device_steps.as_ref().map(|v| {
                v.iter()
                    .map(|&(a, b)| b.saturating_sub(a))
                    .collect::<crate::record::histogram::LatencyHistogram>()
                    .summary()
            }),
            engine_stats: engine.run_stats(),
            samples: rec
                .samples
                .iter()
                .map(|s| RankSample {
                    generated: s.generated,
                    finish_reason: s.finish_reason,
                    token_digest: token_digest(&s.tokens),
                })
                .collect(),
            anomalies: rec.anomalies.clone(),
            cupti: m.recorded.as_ref().map(|r| r.report.clone()),
        };
        self.shared.update(|p| p.own_report = Some(rank_report.clone()));
        // Only with --cupti (every rank has the same config, so the collective matches).
        let step_activity =
            config.cupti.then(|| world.gather(&Json(m.recorded.as_ref().map(|r| r.device_steps.clone())))).flatten();
        let trace = config.trace.is_some().then(|| RankTrace {
            rank: world.rank,
            label: format!(
                "rank {} ({}{})",
                world.rank,
                world.host,
                rank_report.gpu.as_ref().map(|g| format!(", GPU{} {}", g.ordinal, g.name)).unwrap_or_default()
            ),
            epoch_mono_ns: obs.epoch_mono_ns,
            tokens: m.events.iter().map(|e| (e.sample, e.step, e.token, e.t_ns)).collect(),
            device_steps: m.device_steps.clone().unwrap_or_default(),
            memory: rank_report.memory.timeline.clone(),
            kernels: m
                .recorded
                .as_ref()
                .map(|r| r.trace_kernels.iter().map(|k| (k.start, k.end, k.device, k.stream, k.name)).collect())
                .unwrap_or_default(),
            kernel_names: m.recorded.as_ref().map(|r| r.names.clone()).unwrap_or_default(),
        });
        let traces = trace.map(|t| world.gather(&Json(t)));
        // Only with --token-log (every rank has the same config, so the collective matches).
        let token_logs = config
            .token_log
            .is_some()
            .then(|| {
                world.gather(&Json(crate::report::tokenlog::RankTokens {
                    rank: world.rank,
                    epoch_mono_ns: obs.epoch_mono_ns,
                    submit_ns: m.submit_ns,
                    tokens: m.events.iter().map(|e| (e.sample, e.step, e.token, e.t_ns)).collect(),
                    device_steps: m.device_steps.clone().unwrap_or_default(),
                }))
            })
            .flatten();
        let reports = world.gather(&Json(rank_report));
        drop(engine);
        Some(Gathered {
            reports: reports?,
            rec: m.rec,
            offsets,
            all_steps,
            step_activity,
            traces: traces.flatten(),
            token_logs,
            started,
        })
    }

    /// 9. Rank 0: the ranks' reports into one RunReport (skew, CUPTI summary), and the trace file.
    fn assemble(&mut self, workload: &Workload, g: Gathered) -> Result<RunReport, Stop> {
        let ranks: Vec<RankReport> = g
            .reports
            .into_iter()
            .enumerate()
            .map(|(r, b)| b.map(|Json(report)| report).map_err(|e| (r as i32, format!("unreadable rank report: {e}"))))
            .collect::<Result<_, _>>()
            .map_err(|f| Stop::failed(RankFailures::one(f.0, f.1)))?;
        let header = self.header.take().expect("header set in bind()");
        let steps: Vec<Vec<(u64, u64)>> =
            g.all_steps.unwrap_or_default().into_iter().map(Result::unwrap_or_default).collect();
        let mut report =
            header.finished(workload, &g.rec, ranks).map_err(|e| Stop::failed(RankFailures::one(0, e.to_string())))?;
        report.skew = crate::report::build::skew(&steps, &g.offsets);
        report.environment.clock_offsets_ns = Some(g.offsets.clone());
        if let Some(all) = g.step_activity {
            let per_rank: Vec<StepActivity> = all.into_iter().map(|b| b.ok().and_then(|Json(a)| a)).collect();
            let (names, data) = crate::observe::cupti::participants(&per_rank);
            report.cupti = crate::observe::cupti::summarise(&data).map(|mut c| {
                c.participants = names;
                c
            });
        }
        if let Some(s) = report.summary.as_mut() {
            s.merge_s = Some(g.started.elapsed().as_secs_f64());
        }
        if let (Some(traces), Some(out)) = (g.traces, self.trace_out.take()) {
            let traces: Vec<RankTrace> = traces.into_iter().filter_map(|b| b.ok().map(|Json(t)| t)).collect();
            let doc = crate::report::trace::build(&traces, &g.offsets);
            match out.write_bytes(&serde_json::to_vec(&doc).expect("a trace always serializes")) {
                Ok(Written::Yes(p)) | Ok(Written::KeptExisting(p)) => eprintln!("trace: {}", p.display()),
                Err(e) => return Err(Stop::failed(RankFailures::one(0, e.to_string()))),
            }
        }
        if let (Some(parts), Some(out)) = (g.token_logs, self.token_log_out.take()) {
            let parts: Vec<_> = parts.into_iter().filter_map(|b| b.ok().map(|Json(p)| p)).collect();
            // The writer ends the file with the newline.
            match out.write_bytes(crate::report::tokenlog::csv(&parts, &g.offsets).trim_end_matches('\n').as_bytes()) {
                Ok(Written::Yes(p)) | Ok(Written::KeptExisting(p)) => eprintln!("token log: {}", p.display()),
                Err(e) => return Err(Stop::failed(RankFailures::one(0, e.to_string()))),
            }
        }
        Ok(report)
    }

    fn finish(&mut self, report: RunReport, config: &RunConfig) -> Result<Verdict, Stop> {
        let out = self.out.take().expect("rank 0 claimed the output");
        self.shared.phase("finish");
        // The run writes its own result: an interrupt from now on only ends the process.
        let _closed = self.shared.close();
        let _held = interrupt::hold_exit();
        crate::out!("{}", crate::report::summary::render(&report));
        if !config.percentiles.is_empty() {
            match crate::report::summary::render_percentiles("this run", &report, &config.percentiles) {
                Ok(text) => crate::out!("{text}"),
                Err(e) => tracing::warn!("--percentiles: {e}"),
            }
        }
        match out.write(&report) {
            Ok(Written::Yes(p)) | Ok(Written::KeptExisting(p)) => crate::outln!("JSON: {}", p.display()),
            Err(e) => return Err(Stop::failed(RankFailures::one(0, e.to_string()))),
        }
        Ok(match report.status.state {
            State::Ok => Verdict::Ok,
            State::Incomplete if config.exact_length => Verdict::Incomplete,
            State::Incomplete => Verdict::Ok,
            State::Failed | State::Interrupted => Verdict::Failed,
        })
    }

    fn validate(&self) -> Result<RunConfig, RunError> {
        let c = RunConfig::from_input(&self.input)?;
        if let Some(m) = &c.model_config {
            m.check_tensor_parallel(self.world.size as usize)?;
        }
        check_host_memory(&c, self.world)?;
        Ok(c)
    }

    fn claim_output(&mut self, c: &RunConfig, started_at: &str) -> Result<(), RunError> {
        let path = c.out.clone().unwrap_or_else(|| {
            let stamp: String = started_at.chars().filter(|ch| ch.is_ascii_alphanumeric()).collect();
            // Name the engine `auto` will become on this host (the GPU probe is cheap).
            let has_gpu = matches!(HostGpus::probe(), HostGpus::Present { .. });
            PathBuf::from(format!(
                "tpprof-{}-{}-n{}-{stamp}.json",
                c.engine.resolve(has_gpu).label(),
                c.model_label(),
                self.world.size
            ))
        });
        let out = OutputFile::claim(&path, c.force)?;
        self.out = Some(out);
        if let Some(t) = &c.trace {
            if *t == path {
                return Err(RunError::TraceIsOut(t.clone()));
            }
            self.trace_out = Some(OutputFile::claim(t, c.force)?);
        }
        if let Some(t) = &c.token_log {
            if *t == path || Some(t) == c.trace.as_ref() {
                return Err(RunError::TokenLogClash(t.clone()));
            }
            self.token_log_out = Some(OutputFile::claim(t, c.force)?);
        }
        Ok(())
    }

    fn header_for(&self, c: &RunConfig, gpus: &HostGpus, started_at: String) -> Header {
        let mut hosts: Vec<String> =
            self.world.all_gather(&self.world.host).into_iter().map(Result::unwrap_or_default).collect();
        hosts.dedup();
        let (gpu_driver, cuda_driver, gpu_note) = match gpus {
            HostGpus::Present { driver_version, cuda_driver_version, .. } => {
                (Some(driver_version.clone()), Some(cuda_driver_version.clone()), None)
            }
            HostGpus::Absent { reason } => (None, None, Some(reason.clone())),
        };
        Header {
            config: ConfigReport {
                command_line: std::env::args().collect(),
                engine: self.input.engine.clone(),
                dtype: c.dtype.clone(),
                model: c.model.clone(),
                model_config: c.model_config.as_ref().map(|m| serde_json::to_value(m).unwrap_or_default()),
                engine_options: serde_json::from_str(&c.engine_options).unwrap_or_default(),
                world_size: self.world.size,
                batch: c.batch.unwrap_or(1),
                prompts: crate::workload::PromptSource::Random { seed: c.seed, tokens_per_prompt: c.prompt_tokens },
                generated_tokens: c.generated_tokens,
                exact_length: c.exact_length,
                seed: c.seed,
                vocab_size: 0,
                devices: c.devices.clone(),
                mem_interval_ms: c.mem_interval.as_millis() as u64,
                warmup: 0, // the runs made, counted as they finish
                warmup_mode: Some(c.warmup.mode()),
                warmup_tolerance_pct: Some(c.warmup_tolerance_pct),
                warmup_max: matches!(c.warmup, WarmupPolicy::Auto { .. }).then(|| c.warmup.max_runs()),
                repeat: (c.repeat > 1).then_some(c.repeat),
                record_tokens: c.record_tokens,
                trace: c.trace.as_ref().map(|t| t.display().to_string()),
                cupti: c.cupti,
                slo: c.slo.clone(),
            },
            environment: Environment {
                tpprof_version: crate::VERSION.into(),
                tpprof_commit: env!("TPPROF_GIT_COMMIT").into(),
                started_at,
                mpi_library: World::mpi_library_version(),
                hosts,
                gpu_driver,
                cuda_driver,
                gpu_note,
                clock_offsets_ns: None,
            },
            engine: None,
            topology: None,
        }
    }

    /// Rendezvous bytes every rank's engine gets: the cuda engine's NCCL unique id, created on rank
    /// 0 and broadcast over MPI.
    fn rendezvous(&self, spec: &EngineSpec, gpu: Option<&GpuInfo>) -> Result<Vec<u8>, Stop> {
        let world = self.world;
        if let EngineSpec::Python(_) = spec {
            // A free TCP port on rank 0's host for torch.distributed (init_method tcp://host:port).
            let r = if world.is_root() { crate::engine::python::python_rendezvous().map(Some) } else { Ok(None) };
            let r = world.agree(r).map_err(Stop::failed)?;
            return Ok(world.broadcast_bytes(&r.unwrap_or_default())); // opaque bytes: no type to read
        }
        if *spec != EngineSpec::Cuda {
            return Ok(Vec::new());
        }
        let local = match gpu {
            None => Err(RunError::CudaWithoutGpu(
                self.header.as_ref().and_then(|h| h.environment.gpu_note.clone()).unwrap_or_default(),
            )),
            Some(_) => Ok(()),
        };
        world.agree(local).map_err(Stop::input)?;
        let id = if world.is_root() { crate::engine::builtin::cuda_rendezvous().map(Some) } else { Ok(None) };
        let id = world.agree(id).map_err(Stop::failed)?;
        Ok(world.broadcast_bytes(&id.unwrap_or_default())) // opaque bytes: no type to read
    }

    fn cuda_engine(&self, c: &RunConfig, gpu: Option<&GpuInfo>, id: &[u8]) -> Result<Box<dyn Engine>, EngineError> {
        let cfg = c.model_config.as_ref().expect("validated: built-in engines have a model");
        let ordinal = gpu.expect("rendezvous checked: the cuda engine has a GPU on every rank").ordinal as usize;
        crate::engine::builtin::Cuda::new(
            cfg,
            &c.model,
            &c.dtype,
            c.seed,
            c.weights.as_deref(),
            ordinal,
            self.world.rank as usize,
            self.world.size as usize,
            id,
        )
        .map(|e| Box::new(e) as Box<dyn Engine>)
    }

    /// Rank 0 builds (or reads) the prompts and checks them; every rank gets them by broadcast.
    fn workload(&self, c: &RunConfig, vocab: u32, max_context: Option<u32>) -> Result<Workload, Stop> {
        let world = self.world;
        let local = if world.is_root() { build_workload(c, vocab, max_context).map(Some) } else { Ok(None) };
        let mine = world.agree(local).map_err(Stop::input)?;
        let prompts = world.agree(world.broadcast(mine.as_ref().map(|w| &w.prompts))).map_err(Stop::failed)?;
        let source = mine
            .map(|w| w.source)
            .unwrap_or(crate::workload::PromptSource::Random { seed: c.seed, tokens_per_prompt: c.prompt_tokens });
        Ok(Workload { prompts, generated_tokens: c.generated_tokens, source })
    }
}

fn build_workload(c: &RunConfig, vocab: u32, max_context: Option<u32>) -> Result<Workload, RunError> {
    let w = match &c.prompts_file {
        Some(p) => {
            let w = Workload::from_file(p, vocab, c.generated_tokens)?;
            if let Some(b) = c.batch {
                if b as usize != w.prompts.len() {
                    return Err(RunError::BatchMismatch { batch: b, file: p.clone(), prompts: w.prompts.len() });
                }
            }
            w
        }
        None => Workload::random(c.batch.unwrap_or(1), c.prompt_tokens, vocab, c.seed, c.generated_tokens),
    };
    if let Some(max) = max_context {
        let need = w.longest_prompt() as u64 + c.generated_tokens as u64;
        if need > max as u64 {
            return Err(RunError::ContextOverflow {
                prompt: w.longest_prompt(),
                generated: c.generated_tokens,
                need,
                max,
            });
        }
    }
    Ok(w)
}

/// The model an adapter or driver was given, from the usual option names.
fn options_model(options: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(options).ok()?;
    ["preset", "model", "model_dir", "model_path", "engine_dir", "workspace"]
        .iter()
        .find_map(|k| v.get(*k)?.as_str().map(str::to_string))
}

/// The vocabulary the engine itself states (engine_info, or the vocab_size engine option), which
/// its token ids must lie below; not --vocab-size, which only draws the prompts. None: unknown
/// (then only negative ids are out of range).
fn engine_vocab(engine: &dyn Engine, config: &RunConfig) -> Option<u32> {
    engine.vocab_size().or_else(|| options_vocab(&config.engine_options).map(|v| u32::try_from(v).unwrap_or(u32::MAX)))
}

fn options_vocab(options: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(options).ok()?.get("vocab_size")?.as_u64()
}

/// This host's MemAvailable (bytes), from /proc/meminfo.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Sizes estimated before anything is allocated: the token records (and prompts) every rank keeps,
/// and the cpu engine's weights, times the ranks on this host, against the host's available
/// memory. Too much is a one-line error naming the figure, not an allocation abort.
fn check_host_memory(c: &RunConfig, world: &World) -> Result<(), RunError> {
    let Some(avail) = available_memory() else { return Ok(()) };
    let per_host = world.local_size.max(1) as u128;
    let batch = c.batch.unwrap_or(1) as u128;
    let per_token = std::mem::size_of::<crate::record::TokenEvent>() as u128;
    let records = batch * (c.generated_tokens as u128 * per_token + c.prompt_tokens as u128 * 4) * per_host;
    if records > avail as u128 / 2 {
        return Err(RunError::TooLarge {
            what: format!(
                "--batch {} × (--generated-tokens {} + --prompt-tokens {}) of token records",
                batch, c.generated_tokens, c.prompt_tokens
            ),
            need: records,
            avail,
            fix: "lower --batch, --generated-tokens or --prompt-tokens",
        });
    }
    let cpu = match c.engine {
        EngineSpec::Cpu => true,
        EngineSpec::Auto => !matches!(HostGpus::probe(), HostGpus::Present { .. }),
        _ => false,
    };
    if let (true, Some(m)) = (cpu, &c.model_config) {
        // f32 weights, sharded over the ranks (the embedding and norms are not, counted once each).
        let weights = m.param_count() as u128 * 4 / world.size.max(1) as u128 * per_host;
        if weights > avail as u128 {
            return Err(RunError::TooLarge {
                what: format!(
                    "the cpu engine's f32 weights of {} ({} parameters, {} rank(s) on this host)",
                    c.model,
                    m.param_count(),
                    per_host
                ),
                need: weights,
                avail,
                fix: "use a smaller model, more hosts, or the cuda engine",
            });
        }
    }
    Ok(())
}

/// What must be the same on every rank: the build and the run's options.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Fingerprint {
    build: String,
    options: serde_json::Value,
}

/// Every rank's build and options against rank 0's (all-gathered, so every rank decides alike):
/// the ranks that differ and the first difference, or None.
fn differing_ranks(world: &World, input: &RunInput) -> Option<RankFailures> {
    let mine = Fingerprint {
        build: format!("{} {}", crate::VERSION, env!("TPPROF_GIT_COMMIT")),
        options: serde_json::to_value(input).unwrap_or_default(),
    };
    let all: Vec<Option<Fingerprint>> =
        world.all_gather(&Json(mine)).into_iter().map(|r| r.ok().map(|Json(f)| f)).collect();
    let base = all.first()?.as_ref()?;
    let mut differ: Vec<(i32, String)> = Vec::new();
    for (r, f) in all.iter().enumerate().skip(1) {
        let why = match f {
            None => "its options could not be read".to_string(),
            Some(f) if f.build != base.build => format!("runs tpprof {} where rank 0 runs {}", f.build, base.build),
            Some(f) => match first_difference(&base.options, &f.options) {
                Some((field, theirs, ours)) => format!("has {field} = {theirs} where rank 0 has {ours}"),
                None => continue,
            },
        };
        differ.push((r as i32, why));
    }
    if differ.is_empty() {
        return None;
    }
    let ranks: Vec<String> = differ.iter().map(|(r, _)| r.to_string()).collect();
    let message = format!(
        "every rank must run the same tpprof build with the same options; rank{} {} differ{}: rank {} {} (one command line for all ranks: not an MPMD launch, the same --config file and binary on every host)",
        if ranks.len() > 1 { "s" } else { "" },
        ranks.join(", "),
        if ranks.len() > 1 { "" } else { "s" },
        differ[0].0,
        differ[0].1
    );
    Some(RankFailures::one(differ[0].0, message))
}

/// The first field (in the options' order) whose value differs: (field as a flag, theirs, ours).
fn first_difference(ours: &serde_json::Value, theirs: &serde_json::Value) -> Option<(String, String, String)> {
    let (a, b) = (ours.as_object()?, theirs.as_object()?);
    for (k, v) in a {
        let w = b.get(k).unwrap_or(&serde_json::Value::Null);
        if v != w {
            return Some((format!("--{}", k.replace('_', "-")), w.to_string(), v.to_string()));
        }
    }
    b.keys()
        .find(|k| !a.contains_key(*k))
        .map(|k| (format!("--{}", k.replace('_', "-")), b[k].to_string(), "nothing".into()))
}

/// Two ranks on one GPU would share its memory and compute: refuse, naming both ranks.
fn check_unique_gpus(world: &World, gpu: Option<&GpuInfo>) -> Result<(), RunError> {
    let mine = gpu.map(|g| format!("{}|{}", world.host, g.uuid)).unwrap_or_default();
    let all = world.all_gather(&mine);
    // Reported by the higher rank of each pair only, so the message appears once.
    for (r, a) in all.iter().enumerate() {
        if (r as i32) < world.rank && !mine.is_empty() && a.as_ref().is_ok_and(|a| *a == mine) {
            return Err(RunError::SameGpu {
                low: world.rank.min(r as i32),
                high: world.rank.max(r as i32),
                uuid: gpu.map(|g| g.uuid.clone()).unwrap_or_default(),
            });
        }
    }
    Ok(())
}

/// (pid, rank) of every rank of this run on this host: the sampler attributes GPU memory to them.
fn job_processes(world: &World) -> Vec<(u32, i32)> {
    world
        .all_gather(&Json((world.host.clone(), std::process::id())))
        .into_iter()
        .enumerate()
        .filter_map(|(r, b)| b.ok().and_then(|Json((host, pid))| (host == world.host).then_some((pid, r as i32))))
        .collect()
}

/// This rank's GPU first, then the other local ranks' GPUs in local-rank order (the ABI's devices).
fn local_device_list(world: &World, gpu: Option<&GpuInfo>) -> Vec<i32> {
    let Some(g) = gpu else { return Vec::new() };
    let mut others: Vec<i32> = world
        .all_gather(&Json((world.host.clone(), g.ordinal)))
        .into_iter()
        .filter_map(|b| b.ok().and_then(|Json((host, ord))| (host == world.host).then_some(ord)))
        .filter(|&o| o != g.ordinal)
        .collect();
    others.insert(0, g.ordinal);
    others
}

/// The cpu engine's GEMM threads (matrixmultiply reads MATMUL_NUM_THREADS at its first GEMM).
/// Default 1 per rank: tensor parallelism over ranks is the parallelism, and measured on a 2-core
/// machine (`small`, 512-token prompt) a second thread made decode steps 60 % slower (41 → 65 ms;
/// matrix-vector products are bound by packing, not arithmetic) for 12 % faster prefill.
fn share_cores() {
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        // Only the main thread runs here; the sampler and watchdog threads start later and never
        // read the environment.
        std::env::set_var("MATMUL_NUM_THREADS", "1");
    }
}

/// What this rank has done so far, kept up to date by the run for the interrupt handler (the
/// watcher thread): rank 0 writes the result of an interrupted run from it, the other ranks send
/// rank 0 their part. The run holds the lock only to update it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Progress>>);

#[derive(Default)]
struct Progress {
    rank: i32,
    host: String,
    local_rank: i32,
    /// `configure`, `bind`, ..., `warm-up run 2`, `measured run`, `gather`, ...
    phase: String,
    measured_run_started: bool,
    /// The run going on now (warm-up or measured), and for the measured one what its analysis
    /// needs (tokens requested per sample, the engine's vocabulary).
    sink: Option<Arc<TokenSink>>,
    analysis: Option<(Vec<u32>, Option<u32>)>,
    /// Tokens of the last run that ended.
    run_tokens: u64,
    header: Option<Header>,
    out: Option<OutputFile>,
    gpu: Option<GpuInfo>,
    role: Option<Role>,
    create_s: f64,
    warmup_s: Vec<f64>,
    warmup_runs: Vec<WarmupRun>,
    repeat_runs: Vec<WarmupRun>,
    sampler: Option<Arc<Mutex<Option<MemorySampler>>>>,
    /// The memory report, once the handler stopped the sampler.
    memory: Option<crate::observe::memory::MemoryReport>,
    /// The measured run's figures on this rank, once it ended.
    measured: Option<RankMeasure>,
    /// This rank's whole report, once the gather phase built it.
    own_report: Option<RankReport>,
    /// The run writes (or wrote) its own result: the handler writes nothing.
    closed: bool,
}

/// The measured run's figures on one rank.
#[derive(Clone)]
struct RankMeasure {
    tokens: u64,
    ttft: crate::record::histogram::HistogramSummary,
    decode: crate::record::histogram::HistogramSummary,
    samples: Vec<RankSample>,
    anomalies: Vec<String>,
    generate_s: f64,
    itl_p50_by_tenth_ms: Option<Vec<f64>>,
}

impl RankMeasure {
    fn of(rec: &Recording, submit_ns: u64, end_ns: u64) -> RankMeasure {
        RankMeasure {
            tokens: rec.generated_tokens(),
            ttft: rec.ttft.summary(),
            decode: rec.decode.summary(),
            samples: rec
                .samples
                .iter()
                .map(|s| RankSample {
                    generated: s.generated,
                    finish_reason: s.finish_reason,
                    token_digest: token_digest(&s.tokens),
                })
                .collect(),
            anomalies: rec.anomalies.clone(),
            generate_s: rec.last_token_ns().unwrap_or(end_ns).saturating_sub(submit_ns) as f64 / 1e9,
            itl_p50_by_tenth_ms: rec.decode_deciles_ms(),
        }
    }
}

/// What a rank sends rank 0 when the run is interrupted.
#[derive(serde::Serialize, serde::Deserialize)]
struct RankSnapshot {
    reached: crate::report::Reached,
    /// None before the memory sampler started (nothing measured yet).
    report: Option<RankReport>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.lock())
    }

    fn phase(&self, name: &str) {
        self.lock().phase = name.to_string();
    }

    /// The run stops listening to interrupts for its report: it writes its own (or has).
    fn close(&self) {
        self.lock().closed = true;
    }

    /// A generate() begins: its recorder is readable by the handler until `end_run`.
    fn start_run(
        &self,
        name: &str,
        measured: bool,
        sink: TokenSink,
        analysis: Option<(Vec<u32>, Option<u32>)>,
    ) -> Arc<TokenSink> {
        let sink = Arc::new(sink);
        let mut p = self.lock();
        p.phase = name.to_string();
        p.measured_run_started |= measured;
        p.sink = Some(sink.clone());
        p.analysis = analysis;
        p.run_tokens = 0;
        sink
    }

    /// The generate() ended: the recorder back to the run (its count stays, for an interrupt
    /// while this rank waits for the others).
    fn end_run(&self, sink: Arc<TokenSink>) -> TokenSink {
        {
            let mut p = self.lock();
            p.sink = None;
            p.run_tokens = sink.received();
            p.phase = format!("{} {}", p.phase, crate::report::WAITING);
        }
        match Arc::try_unwrap(sink) {
            Ok(s) => s,
            // Only the handler borrows it, under the lock, and it ends the process: wait for that.
            Err(_) => loop {
                std::thread::park();
            },
        }
    }
}

impl InterruptHandler for Shared {
    fn report(&self) -> Vec<u8> {
        let mut p = self.lock();
        if let Some(s) = &p.sink {
            s.freeze();
        }
        let tokens = p.sink.as_ref().map_or(p.run_tokens, |s| s.received());
        let reached = crate::report::Reached {
            rank: p.rank,
            phase: p.phase.clone(),
            measured_run_started: p.measured_run_started,
            tokens,
        };
        if p.memory.is_none() {
            let sampler = p.sampler.as_ref().and_then(|s| s.lock().unwrap_or_else(|e| e.into_inner()).take());
            p.memory = sampler.map(MemorySampler::stop);
        }
        let report = match (&p.own_report, &p.memory) {
            (Some(r), _) => Some(r.clone()),
            (None, None) => None,
            (None, Some(memory)) => {
                // The measured run's figures so far: its whole recording once it ended, else the
                // tokens until the signal.
                let measure = p.measured.clone().or_else(|| {
                    let (sink, (requested, vocab)) = (p.sink.as_ref()?, p.analysis.as_ref()?);
                    let (events, overflow) = sink.snapshot();
                    let rec = Recording::analyse(&events, overflow, sink.submit_ns(), requested, *vocab);
                    Some(RankMeasure::of(&rec, sink.submit_ns(), sink.now_ns()))
                });
                let empty = || crate::record::histogram::LatencyHistogram::new().summary();
                Some(RankReport {
                    rank: p.rank,
                    host: p.host.clone(),
                    local_rank: p.local_rank,
                    pid: std::process::id(),
                    role: p.role.unwrap_or(Role::Engine),
                    gpu: p.gpu.clone(),
                    memory: memory.clone(),
                    engine_memory: None,
                    timing: RankTiming {
                        create_s: p.create_s,
                        generate_s: measure.as_ref().map(|m| m.generate_s),
                        warmup_s: p.warmup_s.clone(),
                        warmup_runs: p.warmup_runs.clone(),
                        repeat_runs: p.repeat_runs.clone(),
                    },
                    tokens_generated: measure.as_ref().map_or(0, |m| m.tokens),
                    ttft: measure.as_ref().map_or_else(empty, |m| m.ttft.clone()),
                    decode: measure.as_ref().map_or_else(empty, |m| m.decode.clone()),
                    itl_p50_by_tenth_ms: measure.as_ref().and_then(|m| m.itl_p50_by_tenth_ms.clone()),
                    device_decode: None,
                    engine_stats: None,
                    samples: measure.as_ref().map(|m| m.samples.clone()).unwrap_or_default(),
                    anomalies: measure.map(|m| m.anomalies).unwrap_or_default(),
                    cupti: None,
                })
            }
        };
        serde_json::to_vec(&RankSnapshot { reached, report }).unwrap_or_default()
    }

    fn write(&self, i: &Interrupted, reports: Vec<(i32, Vec<u8>)>) -> i32 {
        let mut p = self.lock();
        if p.closed {
            return i.code;
        }
        p.closed = true;
        let (cause, signal, signal_rank, timeout_s) = match i.cause {
            interrupt::Cause::Signal { rank, signal } => {
                (StopCause::Signal, Some(interrupt::signal_name(signal)), Some(rank), None)
            }
            interrupt::Cause::Timeout { after } => (StopCause::Timeout, None, None, Some(after.as_secs_f64())),
            interrupt::Cause::ProcessEnd { rank, .. } => (StopCause::ProcessEnd, None, Some(rank), None),
        };
        let process_end = match i.cause {
            interrupt::Cause::ProcessEnd { rank, call } => {
                Some(crate::report::ProcessEnd { rank, call: call.call(), code: call.code() })
            }
            _ => None,
        };
        let (Some(header), Some(out)) = (p.header.clone(), p.out.clone()) else {
            match (&signal, timeout_s) {
                _ if process_end.is_some() => {
                    let e = process_end.as_ref().map(|e| (e.rank, e.call.clone())).unwrap_or_default();
                    eprintln!(
                        "error: rank {}'s process was ended from inside by {} (the engine, a library it loaded, or the MPI library), rank 0 in the {} phase, before anything was measured: no report written",
                        e.0, e.1, p.phase
                    )
                }
                (Some(sig), _) => eprintln!(
                    "error: interrupted by {sig} on rank {} in the {} phase, before anything was measured: no report written",
                    signal_rank.unwrap_or(0),
                    p.phase
                ),
                (None, t) => eprintln!(
                    "error: the run did not finish within --timeout {:.1} s (rank 0 in the {} phase, before anything was measured); aborting every rank",
                    t.unwrap_or(0.0),
                    p.phase
                ),
            }
            return i.code;
        };
        let mut reached = Vec::new();
        let mut ranks = Vec::new();
        let mut not_gathered = i.missing.clone();
        for (r, bytes) in reports {
            match serde_json::from_slice::<RankSnapshot>(&bytes) {
                Ok(snap) => {
                    reached.push(snap.reached);
                    ranks.extend(snap.report);
                }
                Err(_) => not_gathered.push(r),
            }
        }
        not_gathered.sort_unstable();
        let interruption = crate::report::Interruption {
            cause,
            signal,
            signal_rank,
            timeout_s,
            signalled: i
                .signalled
                .iter()
                .map(|&(rank, s)| crate::report::SignalledRank { rank, signal: interrupt::signal_name(s) })
                .collect(),
            reached,
            not_gathered,
            process_end,
        };
        let report = header.interrupted(interruption, ranks);
        // A lost rank or a timeout makes it a failed run (exit 1, as a crash); else 128 + the signal.
        let code = if report.status.state == State::Failed { 1 } else { i.code };
        let _held = interrupt::hold_exit();
        let aborting = if cause == StopCause::Timeout { "; aborting every rank" } else { "" };
        eprintln!("error: {}{aborting}", report.status.reason.as_deref().unwrap_or("interrupted"));
        match out.write(&report) {
            Ok(Written::Yes(path)) => eprintln!("what was measured is in {}", path.display()),
            Ok(Written::KeptExisting(path)) => eprintln!("{} was left as it was", path.display()),
            Err(e) => eprintln!("error: {e}"),
        }
        code
    }
}

/// Stops the memory sampler on every path out of the run. Shared with the interrupt handler,
/// which stops it for an interrupted run's report (and then ends the process).
struct SamplerGuard(Arc<Mutex<Option<MemorySampler>>>);

impl SamplerGuard {
    fn stop(&mut self) -> crate::observe::memory::MemoryReport {
        let sampler = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        match sampler {
            Some(s) => s.stop(),
            // The interrupt handler took it: the process ends as soon as its report is out.
            None => loop {
                std::thread::park();
            },
        }
    }
}

impl Drop for SamplerGuard {
    fn drop(&mut self) {
        let sampler = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(s) = sampler {
            s.stop();
        }
    }
}

/// Logs go to stderr, prefixed `[rank N]`; rank 0 shows progress (info), the others warnings only.
/// TPPROF_LOG (an EnvFilter directive, e.g. `debug`) overrides.
fn init_logging(rank: i32) {
    use tracing_subscriber::fmt::format::FmtSpan;
    let default = if rank == 0 { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TPPROF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_level(false)
        .without_time()
        .with_span_events(FmtSpan::NONE)
        .event_format(RankFormat(rank))
        .try_init();
}

struct RankFormat(i32);

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for RankFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "[rank {}] ", self.0)?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_limit_is_checked() {
        let mut c = RunConfig::from_input(&input()).unwrap();
        c.prompt_tokens = 100;
        c.generated_tokens = 30;
        let e = build_workload(&c, 50, Some(120)).unwrap_err();
        assert!(matches!(e, RunError::ContextOverflow { prompt: 100, generated: 30, need: 130, max: 120 }), "{e}");
        assert!(e.to_string().contains("= 130 exceeds the model's context of 120"), "{e}");
        assert!(build_workload(&c, 50, Some(130)).is_ok());
    }

    /// `tpprof run`'s defaults (the face's tests check the parsed command line against RunConfig).
    fn input() -> RunInput {
        RunInput {
            engine: "auto".into(),
            dtype: "fp16".into(),
            model: None,
            weights: None,
            engine_options: "{}".into(),
            batch: None,
            prompt_tokens: 128,
            generated_tokens: 32,
            prompts: None,
            seed: 0,
            vocab_size: None,
            allow_eos: false,
            out: None,
            force: false,
            trace: None,
            cupti: false,
            trace_kernel_steps: 32,
            record_tokens: false,
            devices: None,
            mem_interval_ms: 10,
            timeout: None,
            warmup: "auto".into(),
            warmup_tolerance: 5.0,
            warmup_max: 4,
            slo: None,
            token_log: None,
            no_progress: false,
            repeat: 1,
            percentiles: None,
        }
    }

    #[test]
    fn slo_bounds_parse_or_say_why_not() {
        let s = parse_slo("ttft_ms=500, tpot_ms=50").unwrap();
        assert_eq!((s.ttft_ms, s.tpot_ms, s.itl_ms, s.e2e_ms), (Some(500.0), Some(50.0), None, None));
        for bad in ["", "ttft=5", "ttft_ms=0", "ttft_ms=-1", "ttft_ms=x", "ttft_ms=1,ttft_ms=2", "tpot_ms"] {
            assert!(matches!(parse_slo(bad), Err(RunError::Slo(_))), "{bad:?} accepted");
        }
    }

    #[test]
    fn goodput_counts_requests_within_every_bound() {
        use crate::report::{Goodput, SampleItl, SampleReport, Slo};
        let sample = |ttft: f64, tpot: f64, max_gap: f64| SampleReport {
            index: 0,
            prompt_tokens: 1,
            requested: 11,
            generated: 11,
            finish_reason: crate::engine::FinishReason::Length,
            ttft_ms: Some(ttft),
            e2e_ms: Some(ttft + 10.0 * tpot),
            tpot_ms: Some(tpot),
            itl_ms: Some(SampleItl { p50: tpot, p90: tpot, p99: max_gap, max: max_gap, count: 10 }),
            ranks_agree: true,
            tokens: None,
        };
        let samples = [sample(100.0, 10.0, 12.0), sample(600.0, 10.0, 12.0), sample(100.0, 10.0, 90.0)];
        let slo = Slo { ttft_ms: Some(500.0), itl_ms: Some(50.0), ..Slo::default() };
        let g = Goodput::of(&slo, &samples, 2.0);
        assert_eq!((g.met, g.requests), (1, 3));
        assert!((g.share_pct - 100.0 / 3.0).abs() < 1e-9 && (g.requests_per_s - 0.5).abs() < 1e-9);
        // A bound on a figure the request lacks is not met.
        let mut no_tpot = samples[0].clone();
        no_tpot.tpot_ms = None;
        assert!(!Goodput::meets(&Slo { tpot_ms: Some(1e9), ..Slo::default() }, &no_tpot));
    }
}
