//! Engines: the `Engine` trait every engine implements (built-in ones and adapters loaded through
//! ffi/tpprof_engine.h), and how a `--engine` argument names one.

pub mod adapter;
pub mod builtin;
pub mod config;
pub mod python;
pub mod safetensors;

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `s` with its control characters escaped (`\n`, `\r`, `\u{1b}`, ...), the rest unchanged: a
/// user's text quoted in an error keeps the message one line.
pub fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect()
}

/// Who runs the engine (see `tpprof_topology` in the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Topology {
    /// Every rank runs the engine.
    AllRanks,
    /// Rank 0 drives every local GPU; the other ranks only observe theirs.
    OneProcess,
}

/// Why a sample stopped (values of `tpprof_finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Still running, or the engine never said (a sample cut short without a reason).
    None,
    /// Generated the requested number of tokens.
    Length,
    /// Stopped at an end-of-sequence token.
    Eos,
    /// Stopped at a stop sequence.
    Stop,
    /// The engine failed on this sample.
    Error,
}

impl FinishReason {
    pub fn from_abi(v: i32) -> FinishReason {
        match v {
            1 => FinishReason::Length,
            2 => FinishReason::Eos,
            3 => FinishReason::Stop,
            4 => FinishReason::Error,
            _ => FinishReason::None,
        }
    }
}

/// What an engine knows of its own memory on this rank; None where it cannot tell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EngineMemory {
    /// Model weights held by this rank.
    pub weights_bytes: Option<u64>,
    /// KV cache.
    pub kv_cache_bytes: Option<u64>,
    /// Scratch buffers.
    pub workspace_bytes: Option<u64>,
    /// Communication buffers (NCCL, MPI).
    pub comm_bytes: Option<u64>,
    /// Host memory the engine holds.
    pub host_bytes: Option<u64>,
}

/// Identity of the engine, for the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EngineInfo {
    /// `cpu`, `mock`, or what an adapter's tpprof_engine_info() calls itself.
    pub name: String,
    /// The engine's version.
    pub version: String,
    /// `builtin` or `adapter`.
    pub kind: String,
    /// The adapter's path, for adapters.
    pub path: Option<String>,
    /// Whatever else the engine reports (an adapter's whole info object; a built-in model config).
    pub details: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Adapter(#[from] adapter::AdapterError),
    #[error(transparent)]
    Cpu(#[from] builtin::cpu::CpuError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Python(#[from] python::PythonError),
    #[error(transparent)]
    Cuda(#[from] builtin::cuda::CudaError),
    #[error(transparent)]
    Dtype(#[from] builtin::cuda::UnknownDtype),
    #[error(transparent)]
    Weights(#[from] safetensors::WeightsError),
}

impl EngineError {
    /// Whether the request was wrong (an adapter that is missing, not loadable, of another ABI,
    /// or that refused its options; a bad model config, element type or weights directory), not
    /// the engine while running: exit 2, and no result file (nothing was measured).
    pub fn is_bad_input(&self) -> bool {
        match self {
            EngineError::Adapter(adapter::AdapterError::Call { status, .. }) => *status == "invalid argument",
            EngineError::Adapter(_) | EngineError::Config(_) | EngineError::Dtype(_) | EngineError::Weights(_) => true,
            EngineError::Cuda(builtin::cuda::CudaError::TooLarge(_) | builtin::cuda::CudaError::Invalid(_)) => true,
            EngineError::Cpu(_) | EngineError::Python(_) | EngineError::Cuda(_) => false,
        }
    }
}

/// Where an engine reports what it generates; the profiler's recorder (`record::TokenSink`)
/// implements it and timestamps each call on entry. Called from any of the engine's threads; an
/// implementation must be cheap, thread-safe and never panic (C and Python call it).
pub trait TokenCallback: Sync {
    /// The instant the engine was handed the prompts: TTFT counts from here.
    fn mark_submit(&self);
    /// One generated token: `finish` is a [`FinishReason`] as the ABI numbers it (0 = not the last).
    fn on_token(&self, sample: u32, step: u32, token: i32, finish: i32);
}

/// A token callback as one thin pointer, for C and Python callbacks that carry a `void *`: point
/// at a `&dyn TokenCallback` that outlives every call, and [`callback_from`] turns it back.
pub(crate) fn callback_ptr(sink: &&dyn TokenCallback) -> *mut std::ffi::c_void {
    sink as *const &dyn TokenCallback as *mut std::ffi::c_void
}

/// The callback behind a pointer made by [`callback_ptr`].
///
/// # Safety
/// `p` came from [`callback_ptr`] and the `&dyn TokenCallback` it points at is still alive.
pub(crate) unsafe fn callback_from<'a>(p: *const std::ffi::c_void) -> &'a dyn TokenCallback {
    // SAFETY: the caller's contract: p points at a live &dyn TokenCallback.
    unsafe { *(p as *const &'a dyn TokenCallback) }
}

/// What every engine does for the profiler. `generate` calls `sink.on_token` once per token, as
/// soon as the token is known on the host; the sink timestamps it.
pub trait Engine {
    fn info(&self) -> EngineInfo;
    fn topology(&self) -> Topology;
    fn generate(
        &mut self,
        prompts: &[Vec<i32>],
        max_new_tokens: u32,
        exact_length: bool,
        sink: &dyn TokenCallback,
    ) -> Result<(), EngineError>;
    fn memory(&self) -> Result<EngineMemory, EngineError>;
    /// Vocabulary size, when the engine knows it (random prompts and range checks use it).
    fn vocab_size(&self) -> Option<u32>;
    /// Longest prompt + generation the engine accepts, when it knows it.
    fn max_context(&self) -> Option<u32>;
    /// Work before the clock starts (buffers sized for the workload, warm-up, graph capture), as a
    /// serving engine does at start-up. Every rank calls it.
    fn prepare(&mut self, _prompts: &[Vec<i32>], _max_new_tokens: u32) -> Result<(), EngineError> {
        Ok(())
    }
    /// Start and end of each decode step on the device (CUDA events), placed on this host's
    /// CLOCK_MONOTONIC (ns), for engines that measure them.
    fn device_steps(&self) -> Option<Vec<(u64, u64)>> {
        None
    }
    /// Engine-specific figures of the last run (e.g. the cuda engine's decode floor).
    fn run_stats(&self) -> Option<serde_json::Value> {
        None
    }
}

/// A parsed `--engine` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineSpec {
    /// `cuda` where this rank has a GPU (and the cuda engine is built in), else `cpu`.
    Auto,
    Cpu,
    Cuda,
    /// A Python driver (`python:hf`, `python:/path/driver.py`) in the embedded interpreter.
    Python(String),
    /// An adapter shared library; `mock` resolves to the mock adapter built with tpprof.
    Adapter(PathBuf),
}

pub const BUILTIN_ENGINES: &[&str] = &["cpu", "cuda"];

/// Why `--engine` names no engine this build can run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("{}", builtin::NO_CUDA)]
    NoCuda,
    #[error("--engine python: needs a driver: python:hf, python:test or python:/path/driver.py")]
    NoDriver,
    #[error("unknown engine `{0}`: use one of auto, {builtins}, mock, python:DRIVER, or the path of an adapter library (./libx.so or adapter:PATH)", builtins = BUILTIN_ENGINES.join(", "))]
    Unknown(String),
}

impl EngineSpec {
    pub fn parse(s: &str) -> Result<EngineSpec, SpecError> {
        if s == "auto" {
            return Ok(EngineSpec::Auto);
        }
        if s == "cpu" {
            return Ok(EngineSpec::Cpu);
        }
        if s == "cuda" {
            return if builtin::cuda::BUILT { Ok(EngineSpec::Cuda) } else { Err(SpecError::NoCuda) };
        }
        if s == "mock" {
            return Ok(EngineSpec::Adapter(mock_adapter_path()));
        }
        if let Some(driver) = s.strip_prefix("python:") {
            if driver.is_empty() {
                return Err(SpecError::NoDriver);
            }
            return Ok(EngineSpec::Python(driver.to_string()));
        }
        if let Some(path) = s.strip_prefix("adapter:") {
            return Ok(EngineSpec::Adapter(PathBuf::from(path)));
        }
        if s.contains('/') || s.ends_with(".so") {
            return Ok(EngineSpec::Adapter(PathBuf::from(s)));
        }
        Err(SpecError::Unknown(s.to_string()))
    }

    /// Resolves `auto` on a rank that has (or has not) a GPU.
    pub fn resolve(&self, has_gpu: bool) -> EngineSpec {
        match self {
            EngineSpec::Auto if has_gpu && builtin::cuda::BUILT => EngineSpec::Cuda,
            EngineSpec::Auto => EngineSpec::Cpu,
            other => other.clone(),
        }
    }

    pub fn is_builtin(&self) -> bool {
        !matches!(self, EngineSpec::Adapter(_) | EngineSpec::Python(_))
    }

    /// A short name for file names and the summary.
    pub fn label(&self) -> String {
        match self {
            EngineSpec::Auto => "auto".into(),
            EngineSpec::Cpu => "cpu".into(),
            EngineSpec::Cuda => "cuda".into(),
            EngineSpec::Python(d) => python::driver_label(d),
            EngineSpec::Adapter(p) => {
                let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("adapter");
                stem.trim_start_matches("lib").trim_start_matches("tpprof_").to_string()
            }
        }
    }
}

/// The mock adapter built with this tpprof; when the binary was moved (e.g. carried to a GPU
/// machine), a `libtpprof_mock.so` beside the executable.
fn mock_adapter_path() -> PathBuf {
    let built = PathBuf::from(env!("TPPROF_MOCK_ADAPTER"));
    if built.exists() {
        return built;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("libtpprof_mock.so")))
        .filter(|p| p.exists())
        .unwrap_or(built)
}

/// What `tpprof write-checkpoint` asks for (the command line's values, typed).
pub struct CheckpointRequest<'a> {
    /// A preset name or a Qwen2 config.json.
    pub model: &'a str,
    pub seed: u64,
    pub dtype: safetensors::Dtype,
    /// Largest file in GiB (unless `files`).
    pub shard_gib: f64,
    /// Exactly this many files instead.
    pub files: Option<usize>,
    /// The directory to create.
    pub out: &'a std::path::Path,
}

/// Why `tpprof write-checkpoint` wrote nothing (or not everything).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Model(#[from] config::ConfigError),
    #[error("--files must be at least 1")]
    NoFiles,
    #[error("--shard-gib must be a positive number of GiB (got {0})")]
    ShardGib(f64),
    #[error("{} already exists: choose a new directory", .0.display())]
    Exists(std::path::PathBuf),
    #[error(transparent)]
    Write(#[from] safetensors::WeightsError),
}

impl CheckpointError {
    /// Whether the request itself was wrong (rather than the writing).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, CheckpointError::Write(_))
    }
}

/// `tpprof write-checkpoint`: a preset's seeded weights as a Hugging Face checkpoint; prints what
/// it wrote.
pub fn write_checkpoint_main(a: &CheckpointRequest) -> Result<(), CheckpointError> {
    use builtin::cpu::weights::{write_checkpoint, FileSplit};
    let p = std::path::Path::new(a.model);
    let cfg = if p.exists() { config::Config::from_json_file(p) } else { config::Config::preset(a.model) }?;
    let split = match (a.files, a.shard_gib) {
        (Some(0), _) => return Err(CheckpointError::NoFiles),
        (Some(n), _) => FileSplit::Files(n),
        (None, gib) if gib.is_finite() && gib > 0.0 => FileSplit::MaxBytes(((gib * (1u64 << 30) as f64) as u64).max(1)),
        (None, gib) => return Err(CheckpointError::ShardGib(gib)),
    };
    if a.out.exists() {
        return Err(CheckpointError::Exists(a.out.to_path_buf()));
    }
    let dtype = a.dtype;
    let start = std::time::Instant::now();
    let w = write_checkpoint(&cfg, a.seed, a.out, dtype, split)?;
    let secs = start.elapsed().as_secs_f64();
    let gb = w.tensor_bytes as f64 / 1e9;
    crate::outln!(
        "wrote {} (model {}, seed {}, {}, {} file(s), {:.2} GB of tensors in {:.1} s, {:.2} GB/s)",
        a.out.display(),
        a.model,
        a.seed,
        dtype.torch_name(),
        w.files.len(),
        gb,
        secs,
        gb / secs.max(1e-9)
    );
    Ok(())
}

/// `tpprof models`: the built-in presets with their shapes.
pub fn print_models() {
    crate::outln!(
        "{:<14} {:>7} {:>7} {:>6} {:>6} {:>4} {:>7} {:>8} {:>10}",
        "preset",
        "vocab",
        "hidden",
        "inter",
        "layers",
        "heads",
        "kv_heads",
        "max_pos",
        "params"
    );
    for name in config::Config::preset_names() {
        if let Ok(c) = config::Config::preset(name) {
            crate::outln!(
                "{:<14} {:>7} {:>7} {:>6} {:>6} {:>4} {:>7} {:>8} {:>10}",
                name,
                c.vocab_size,
                c.hidden_size,
                c.intermediate_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.max_position_embeddings,
                c.param_count()
            );
        }
    }
}

/// A token callback for the engines' own tests (the recorder lives a layer up): every call kept,
/// timestamped like the recorder does.
#[cfg(test)]
pub(crate) mod testing {
    use super::TokenCallback;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Token {
        pub sample: u32,
        pub step: u32,
        pub token: i32,
        pub finish: i32,
        pub t_ns: u64,
    }

    pub struct Collector {
        epoch: Instant,
        submit_ns: AtomicU64,
        capacity: usize,
        tokens: Mutex<Vec<Token>>,
        overflow: AtomicU64,
    }

    impl Collector {
        pub fn new(capacity: usize) -> Collector {
            Collector {
                epoch: Instant::now(),
                submit_ns: AtomicU64::new(0),
                capacity,
                tokens: Mutex::new(Vec::new()),
                overflow: AtomicU64::new(0),
            }
        }

        pub fn submit_ns(&self) -> u64 {
            self.submit_ns.load(Ordering::Acquire)
        }

        /// The tokens, in arrival order, and how many came beyond the capacity.
        pub fn into_events(self) -> (Vec<Token>, u64) {
            (self.tokens.into_inner().unwrap(), self.overflow.into_inner())
        }
    }

    impl TokenCallback for Collector {
        fn mark_submit(&self) {
            self.submit_ns.store(self.epoch.elapsed().as_nanos() as u64, Ordering::Release);
        }

        fn on_token(&self, sample: u32, step: u32, token: i32, finish: i32) {
            let t_ns = self.epoch.elapsed().as_nanos() as u64;
            let mut v = self.tokens.lock().unwrap();
            if v.len() < self.capacity {
                v.push(Token { sample, step, token, finish, t_ns });
            } else {
                self.overflow.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_names_parse() {
        assert_eq!(EngineSpec::parse("cpu").unwrap(), EngineSpec::Cpu);
        assert!(matches!(EngineSpec::parse("mock").unwrap(), EngineSpec::Adapter(_)));
        assert_eq!(EngineSpec::parse("./libx.so").unwrap(), EngineSpec::Adapter("./libx.so".into()));
        assert_eq!(EngineSpec::parse("adapter:libx").unwrap(), EngineSpec::Adapter("libx".into()));
        assert_eq!(EngineSpec::parse("python:hf").unwrap(), EngineSpec::Python("hf".into()));
        assert!(EngineSpec::parse("python:").is_err());
        let e = EngineSpec::parse("tensorrt").unwrap_err();
        assert_eq!(e, SpecError::Unknown("tensorrt".into()));
        assert!(
            e.to_string().starts_with("unknown engine `tensorrt`: use one of auto, cpu, cuda, mock, python:DRIVER"),
            "{e}"
        );
        assert_eq!(EngineSpec::parse("/a/libtpprof_mock.so").unwrap().label(), "mock");
    }

    #[test]
    fn finish_reasons_follow_the_abi() {
        assert_eq!(FinishReason::from_abi(1), FinishReason::Length);
        assert_eq!(FinishReason::from_abi(2), FinishReason::Eos);
        assert_eq!(FinishReason::from_abi(99), FinishReason::None);
    }
}
