//! Command line (the face): clap parses raw arguments here, and they leave as plain values —
//! `run::RunInput` for `tpprof run`, which `RunConfig::from_input` validates once MPI is up (every
//! rank agrees on the error), before any GPU or file work starts.

use std::path::PathBuf;

use std::ffi::OsString;

use clap::{Args, CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tpprof",
    version,
    args_override_self = true,
    about = "MPI-aware profiler for tensor-parallel LLM inference",
    long_about = "MPI-aware profiler for tensor-parallel LLM inference.\n\n\
                        Start one rank per GPU: `mpirun -n 2 tpprof run --model small`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an engine over a workload on every rank and write one JSON from rank 0.
    Run(Box<RunArgs>),
    /// Print the human summary of saved result JSONs, or with --html write them as one page of
    /// tables and charts.
    Report(ReportArgs),
    /// Saved runs side by side: every figure with its change against the first (the baseline).
    Compare(CompareArgs),
    /// List the built-in model presets.
    Models,
    /// Check the machine(s) before a long job, alone or under mpirun: MPI and launcher, ranks,
    /// hosts, CPU binding, GPUs per rank and duplicates, driver, CUDA libraries (where found,
    /// versions), libpython, an adapter's ABI. Exit 1 when a check fails.
    Doctor(DoctorArgs),
    /// Check the cuda engine against the cpu reference (logits and greedy tokens), under mpirun.
    Verify(VerifyArgs),
    /// Write a model's seeded weights as a Hugging Face Qwen2 checkpoint (f32, fp16 or bf16).
    ///
    /// config.json, generation_config.json and safetensors files that --weights, transformers and
    /// LMDeploy load. Streamed: a 14B model needs no more memory than a small one.
    WriteCheckpoint(WriteCheckpointArgs),
    /// Print the JSON Schema of the result JSON (generated from the report types; results/schema.json
    /// is a copy of it).
    Schema,
}

#[derive(Debug, Args, Clone)]
pub struct DoctorArgs {
    /// An adapter (PATH.so) whose symbols and ABI version to check.
    #[arg(long, value_name = "PATH.so")]
    pub engine: Option<PathBuf>,
    /// The Python interpreter python:DRIVER engines would use (default: python3 on PATH).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// GPU ordinals per local rank, as `tpprof run --devices` takes them.
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<i32>>,
    /// Print the report as JSON (rank 0) instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl From<DoctorArgs> for crate::doctor::DoctorInput {
    fn from(a: DoctorArgs) -> Self {
        crate::doctor::DoctorInput { adapter: a.engine, python: a.python, devices: a.devices, json: a.json }
    }
}

#[derive(Debug, Args, Clone)]
pub struct VerifyArgs {
    /// Model preset or Qwen2 config.json (random weights).
    #[arg(long, default_value = "tiny", conflicts_with = "weights")]
    pub model: String,
    /// A Hugging Face checkpoint directory: both engines load it instead of seeded weights.
    #[arg(long)]
    pub weights: Option<std::path::PathBuf>,
    /// fp16 or bf16.
    #[arg(long, default_value = "fp16")]
    pub dtype: String,
    /// Weight and prompt seed (default: from the clock, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of prompts.
    #[arg(long, default_value_t = 3)]
    pub prompts: usize,
    /// Tokens per prompt.
    #[arg(long, default_value_t = 48)]
    pub prompt_tokens: usize,
    /// Greedy steps compared per prompt.
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Absolute tolerance (default: 1e-2 for fp16, 5e-2 for bf16).
    #[arg(long)]
    pub atol: Option<f32>,
    /// Relative tolerance (default: as atol).
    #[arg(long)]
    pub rtol: Option<f32>,
    /// Abort every rank (non-zero exit) if verify has not finished after this many seconds: a rank
    /// that fails inside a collective must not leave the others waiting.
    #[arg(long, default_value_t = 1800.0)]
    pub timeout: f64,
}

impl From<VerifyArgs> for crate::verify::VerifyInput {
    fn from(a: VerifyArgs) -> Self {
        let VerifyArgs { model, weights, dtype, seed, prompts, prompt_tokens, steps, atol, rtol, timeout } = a;
        crate::verify::VerifyInput { model, weights, dtype, seed, prompts, prompt_tokens, steps, atol, rtol, timeout }
    }
}

#[derive(Debug, Args)]
pub struct WriteCheckpointArgs {
    /// Model preset or Qwen2 config.json.
    #[arg(long, default_value = "tiny")]
    pub model: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Element type of the tensors: f32 (the seeded values exactly, as the engines generate them),
    /// fp16 or bf16 (the same values rounded to nearest even). config.json's torch_dtype follows.
    #[arg(long, value_enum, default_value_t = CheckpointDtype::F32)]
    pub dtype: CheckpointDtype,
    /// Largest .safetensors file in GiB: the tensors go, in model order, into as few files as keep
    /// each within it (a larger tensor gets a file of its own). More than one file adds
    /// model.safetensors.index.json.
    #[arg(long, default_value_t = 4.0)]
    pub shard_gib: f64,
    /// Split the tensors, in model order, over this many .safetensors files instead of by size.
    #[arg(long, conflicts_with = "shard_gib")]
    pub files: Option<usize>,
    /// The directory to create (must not exist yet).
    #[arg(long)]
    pub out: PathBuf,
}

/// `write-checkpoint --dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckpointDtype {
    #[value(name = "f32", alias = "fp32", alias = "float32")]
    F32,
    #[value(name = "fp16", alias = "f16", alias = "float16")]
    Fp16,
    #[value(name = "bf16", alias = "bfloat16")]
    Bf16,
}

impl From<CheckpointDtype> for crate::engine::safetensors::Dtype {
    fn from(d: CheckpointDtype) -> Self {
        match d {
            CheckpointDtype::F32 => Self::F32,
            CheckpointDtype::Fp16 => Self::F16,
            CheckpointDtype::Bf16 => Self::BF16,
        }
    }
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// One or more JSONs written by `tpprof run` (with --html: overlaid, one colour per file).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Write one self-contained HTML page (summary tables, ITL CDF merged and per rank, ITL by
    /// position, TTFT per sample, memory over time with phases, CUPTI per-step GPU time) instead of
    /// printing; an existing file is kept unless --force.
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    /// Replace an existing --html file.
    #[arg(long, requires = "html")]
    pub force: bool,
    /// Also print these percentiles of TTFT and ITL (merged, and ITL per rank), read from the
    /// JSON's HdrHistograms: any percentile, e.g. 50,75,99.99.
    #[arg(long, value_name = "P,P,...", conflicts_with = "html")]
    pub percentiles: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct CompareArgs {
    /// Two or more JSONs written by `tpprof run`; the first is the baseline.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// A Markdown table (for a results page) instead of aligned text.
    #[arg(long)]
    pub markdown: bool,
    /// A regression gate, repeatable: METRIC>+N% / METRIC<-N% against the baseline, or
    /// METRIC>X / METRIC<X in the figure's unit, checked on every run after the baseline. Any
    /// crossed (or a figure a run lacks) exits with 4. With --repeat results on both sides, medians
    /// are compared and a change inside the run-to-run spread does not count. Metrics: itl_p50,
    /// itl_p90, itl_p99, itl_max, itl_mean, ttft_p50, ttft_p90, ttft_p99, ttft_max, ttft_mean,
    /// throughput, decode_tok_s, prefill_tok_s, total_time, peak_memory (GiB, largest rank),
    /// goodput (%), device_step_p50.
    #[arg(long = "fail-if", value_name = "METRIC>LIMIT")]
    pub fail_if: Vec<String>,
}

/// Why `--config FILE` could not be read into arguments.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("--config needs a file: tpprof run --config run.toml")]
    Missing,
    #[error("cannot read --config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("--config {path} is not TOML: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("--config {path}: unknown option `{key}` (the keys are `tpprof run`'s long options, e.g. generated-tokens = 800)")]
    Unknown { path: PathBuf, key: String },
    #[error("--config {path}: `{key}` must be {want}")]
    Type { path: PathBuf, key: String, want: &'static str },
}

/// `tpprof run --config run.toml ...`: the file's keys are `run`'s long options (`generated-tokens`
/// or `generated_tokens`), its values strings, numbers, booleans (a flag: `cupti = true`), arrays
/// (`devices = [0, 1]`) or, for `engine-options`, a table. They become arguments placed before the
/// command line's own, so the command line wins (a later flag overrides an earlier one).
pub fn expand_config(args: Vec<OsString>) -> Result<Vec<OsString>, ConfigFileError> {
    if args.get(1).is_none_or(|a| a != "run") {
        return Ok(args);
    }
    let mut path = None;
    let mut rest = Vec::new();
    let mut it = args.into_iter();
    let head: Vec<OsString> = it.by_ref().take(2).collect();
    while let Some(a) = it.next() {
        if a == "--" {
            rest.push(a);
            rest.extend(it.by_ref());
            break;
        }
        match a.to_str().and_then(|s| s.strip_prefix("--config")) {
            Some("") => path = Some(PathBuf::from(it.next().ok_or(ConfigFileError::Missing)?)),
            Some(v) if v.starts_with('=') => path = Some(PathBuf::from(&v[1..])),
            _ => rest.push(a),
        }
    }
    let Some(path) = path else {
        return Ok(head.into_iter().chain(rest).collect());
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read { path: path.clone(), source })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigFileError::Parse { path: path.clone(), reason: e.message().to_string() })?;
    let run = Cli::command();
    let run = run.find_subcommand("run").expect("the run subcommand exists");
    let mut from_file: Vec<OsString> = Vec::new();
    for (key, value) in &table {
        let name = key.replace('_', "-");
        let arg = run.get_arguments().find(|a| a.get_long() == Some(name.as_str()) && name != "config");
        let Some(arg) = arg else { return Err(ConfigFileError::Unknown { path, key: key.clone() }) };
        let flag = format!("--{name}");
        let takes_value = arg.get_action().takes_values();
        let ty = |want| ConfigFileError::Type { path: path.clone(), key: key.clone(), want };
        let scalar = |v: &toml::Value| -> Option<String> {
            match v {
                toml::Value::String(s) => Some(s.clone()),
                toml::Value::Integer(i) => Some(i.to_string()),
                toml::Value::Float(f) => Some(f.to_string()),
                _ => None,
            }
        };
        match (value, takes_value) {
            (toml::Value::Boolean(b), false) => {
                if *b {
                    from_file.push(flag.into());
                }
            }
            (_, false) => return Err(ty("true or false (a flag)")),
            (toml::Value::Table(t), true) if name == "engine-options" => {
                let json = serde_json::to_string(t).map_err(|_| ty("a table of JSON-like values"))?;
                from_file.extend([flag.into(), json.into()]);
            }
            (toml::Value::Array(items), true) => {
                let parts: Option<Vec<String>> = items.iter().map(scalar).collect();
                from_file
                    .extend([flag.into(), parts.ok_or_else(|| ty("an array of numbers or strings"))?.join(",").into()]);
            }
            (v, true) => from_file.extend([flag.into(), scalar(v).ok_or_else(|| ty("a string or a number"))?.into()]),
        }
    }
    Ok(head.into_iter().chain(from_file).chain(rest).collect())
}

/// `run --help`'s examples: flags as the README uses them, ready to copy.
const RUN_EXAMPLES: &str = "\
Examples:
  mpirun -n 2 tpprof run --engine cpu --model small --prompt-tokens 256 --generated-tokens 64
  mpirun -n 2 tpprof run --engine cuda --model qwen2.5-14b --prompt-tokens 10000 --generated-tokens 800 --cupti --trace t.json
  mpirun -n 2 tpprof run --engine python:hf --engine-options '{\"preset\": \"qwen2.5-7b\", \"dtype\": \"bf16\"}' --repeat 3
  tpprof run --engine mock --engine-options '{\"token_us\": 500}' --warmup 0 --slo ttft_ms=50,tpot_ms=2 --out mock.json

As root (a container), Open MPI wants OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1.
The JSON's schema: `tpprof schema`.";

/// Raw `run` arguments. Numbers are parsed as signed integers so that a negative value gets our
/// own one-line error instead of being mistaken for a flag.
#[derive(Debug, Args, Clone)]
#[command(after_help = RUN_EXAMPLES)]
pub struct RunArgs {
    /// Engine: `auto` (`cuda` where every rank has a GPU, else `cpu`), `cuda` (built-in, NCCL tensor
    /// parallel), `cpu` (built-in reference, MPI tensor parallel), `mock` (the test adapter built with
    /// tpprof), `python:DRIVER` (an engine written in Python, run in-process: `python:hf`
    /// transformers, `python:lmdeploy` TurboMind, `python:test` scripted delays, or
    /// `python:/path/driver.py`), or the path of an adapter shared library (`./libmy_engine.so`, or
    /// `adapter:PATH`).
    #[arg(long, default_value = "auto")]
    pub engine: String,

    /// Weights and activations of the cuda engine: fp16 or bf16.
    #[arg(long, default_value = "fp16")]
    pub dtype: String,

    /// Model of the built-in engines: a preset (`tpprof models`), or a Qwen2 config.json / a
    /// directory holding one (random weights with that shape). Default: tiny.
    #[arg(long, conflicts_with = "weights")]
    pub model: Option<String>,

    /// Real weights for the built-in engines: a Hugging Face checkpoint directory (config.json +
    /// model.safetensors or model.safetensors.index.json); each rank reads only its shard.
    #[arg(long)]
    pub weights: Option<PathBuf>,

    /// Options from a TOML file (keys: these long options, e.g. generated-tokens = 800; flags as
    /// true; engine-options as a table); the command line overrides them.
    #[arg(long, value_name = "run.toml")]
    pub config: Option<PathBuf>,

    /// Engine options as a JSON object, passed to adapters verbatim (e.g. '{"token_us": 500}').
    #[arg(long, default_value = "{}")]
    pub engine_options: String,

    /// Number of samples (sequences) generated together. Default: 1, or one per line of --prompts.
    #[arg(long, allow_hyphen_values = true)]
    pub batch: Option<i64>,

    /// Tokens per prompt (seeded random ids within the vocabulary).
    #[arg(long, default_value_t = 128, allow_hyphen_values = true)]
    pub prompt_tokens: i64,

    /// Tokens to generate per sample.
    #[arg(long, default_value_t = 32, allow_hyphen_values = true)]
    pub generated_tokens: i64,

    /// Prompts from a file instead: JSON Lines, one JSON array of token ids per line.
    #[arg(long, conflicts_with = "prompt_tokens")]
    pub prompts: Option<PathBuf>,

    /// Seed for the random prompts and the built-in engines' weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Vocabulary size for random prompts and range checks (default: the model's; for adapters the
    /// engine options' "vocab_size", else 32000).
    #[arg(long, allow_hyphen_values = true)]
    pub vocab_size: Option<i64>,

    /// Let an EOS token end a sample early (the default generates exactly --generated-tokens).
    #[arg(long)]
    pub allow_eos: bool,

    /// Where rank 0 writes the JSON (default: tpprof-<engine>-<model>-n<ranks>-<UTC time>.json).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,

    /// Replace an existing --out file.
    #[arg(long)]
    pub force: bool,

    /// Also write a Chrome/Perfetto trace (one process per rank: tokens, device decode steps,
    /// memory; with --cupti the GPU kernels) to this file.
    #[arg(long)]
    pub trace: Option<PathBuf>,

    /// Record every GPU kernel of each rank's process with CUPTI (libcupti, loaded at run time):
    /// per decode step GPU busy, NCCL and compute time, kernel count, top kernels; works for any
    /// engine. Needs a GPU build (the default `cuda` feature) and CUPTI on the library path.
    #[arg(long)]
    pub cupti: bool,

    /// With --cupti and --trace: how many decode steps' kernels go into the trace (the prefill's
    /// always do); 0 = every step (large traces for long runs).
    #[arg(long, default_value_t = 32, allow_hyphen_values = true)]
    pub trace_kernel_steps: i64,

    /// Put the generated token ids into the JSON.
    #[arg(long)]
    pub record_tokens: bool,

    /// GPU ordinals per local rank, comma-separated (default: GPU = local rank).
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<i64>>,

    /// Memory sampling interval in milliseconds; 0 = no periodic sampling, only a reading at the
    /// end (the "observers off" baseline of the overhead benchmark, launch/overhead.sh).
    #[arg(long, default_value_t = 10, allow_hyphen_values = true)]
    pub mem_interval_ms: i64,

    /// Abort the whole job (every rank, non-zero exit) if it has not finished after this many seconds
    /// (default: no limit).
    #[arg(long)]
    pub timeout: Option<f64>,

    /// Unmeasured runs of the whole workload before the measured one, so the run measures the
    /// engine's steady state (engines pay for their first requests: lazy initialisation, kernel
    /// selection, allocator growth, a slow first generate()). `auto` (default): until two runs in
    /// a row agree (ITL p50 within --warmup-tolerance), at most --warmup-max; N: exactly N; 0: the
    /// cold first request, measured on purpose. Every warm-up run's TTFT and ITL go into the JSON.
    #[arg(long, default_value = "auto", allow_hyphen_values = true)]
    pub warmup: String,
    /// --warmup auto: two warm-up runs agree when their ITL p50 differ by at most this many percent;
    /// also the bound of the stationarity check on the measured run.
    #[arg(long, default_value_t = 5.0, allow_hyphen_values = true)]
    pub warmup_tolerance: f64,
    /// --warmup auto: at most this many warm-up runs (at least 2).
    #[arg(long, default_value_t = 4, allow_hyphen_values = true)]
    pub warmup_max: i64,
    /// Goodput: the share of requests within these bounds, in ms: KEY=MS pairs from ttft_ms,
    /// tpot_ms ((e2e − TTFT)/(n − 1)), itl_ms (every gap of the request), e2e_ms; e.g.
    /// --slo ttft_ms=500,tpot_ms=50 (default: no goodput).
    #[arg(long)]
    pub slo: Option<String>,
    /// Write every token of every rank as CSV (rank, sample, step, token, t_ns since rank 0's submit
    /// on rank 0's clock, itl_ns, device step start/end where known), from rank 0.
    #[arg(long)]
    pub token_log: Option<PathBuf>,
    /// No progress on rank 0's stderr (by default: a line redrawn on a terminal, a line every 10 s
    /// when stderr is a pipe, from 5 s into each warm-up and measured run).
    #[arg(long)]
    pub no_progress: bool,
    /// Measured runs after the warm-up: each one's figures (TTFT and ITL p50, wall) give the
    /// spread (min / median / max) in the summary; the last is recorded in full.
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    pub repeat: i64,
    /// Also print these percentiles of TTFT and ITL (merged, and ITL per rank) after the summary,
    /// from the run's HdrHistograms: any percentile, e.g. 50,75,99.99 (`tpprof report FILE
    /// --percentiles ...` prints them from a saved JSON).
    #[arg(long, value_name = "P,P,...")]
    pub percentiles: Option<String>,
}

impl From<RunArgs> for crate::run::RunInput {
    fn from(a: RunArgs) -> Self {
        crate::run::RunInput {
            engine: a.engine,
            dtype: a.dtype,
            model: a.model,
            weights: a.weights,
            engine_options: a.engine_options,
            batch: a.batch,
            prompt_tokens: a.prompt_tokens,
            generated_tokens: a.generated_tokens,
            prompts: a.prompts,
            seed: a.seed,
            vocab_size: a.vocab_size,
            allow_eos: a.allow_eos,
            out: a.out,
            force: a.force,
            trace: a.trace,
            cupti: a.cupti,
            trace_kernel_steps: a.trace_kernel_steps,
            record_tokens: a.record_tokens,
            devices: a.devices,
            mem_interval_ms: a.mem_interval_ms,
            timeout: a.timeout,
            warmup: a.warmup,
            warmup_tolerance: a.warmup_tolerance,
            warmup_max: a.warmup_max,
            slo: a.slo,
            token_log: a.token_log,
            no_progress: a.no_progress,
            repeat: a.repeat,
            percentiles: a.percentiles,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{RunConfig, RunInput};

    /// `tpprof run EXTRA...` as the run layer receives it.
    fn input(extra: &[&str]) -> RunInput {
        let mut v = vec!["tpprof", "run"];
        v.extend_from_slice(extra);
        match Cli::try_parse_from(v).unwrap().command {
            Command::Run(a) => (*a).into(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn bad_lengths_are_one_line_errors() {
        let parse = |extra: &[&str]| RunConfig::from_input(&input(extra)).map_err(|e| e.to_string());
        assert!(parse(&[]).is_ok());
        assert_eq!(
            parse(&["--generated-tokens", "0"]).unwrap_err(),
            "--generated-tokens must be a whole number ≥ 1 (got 0)"
        );
        assert!(parse(&["--prompt-tokens", "-5"]).unwrap_err().contains("--prompt-tokens must be"));
        assert!(parse(&["--batch", "0"]).unwrap_err().contains("--batch"));
        assert!(parse(&["--engine", "trt"]).unwrap_err().contains("unknown engine `trt`"));
        assert!(parse(&["--model", "huge"]).unwrap_err().contains("huge"));
        assert!(parse(&["--engine-options", "[1]"]).unwrap_err().contains("JSON object"));
        assert!(parse(&["--devices", "0,-1"]).unwrap_err().contains("ordinals ≥ 0"));
        assert!(parse(&["--timeout", "0"]).unwrap_err().contains("--timeout"));
        assert!(!parse(&[]).unwrap().to_owned().out.is_some());
    }

    #[test]
    fn adapters_are_labelled_with_their_model() {
        let model = |extra: &[&str]| RunConfig::from_input(&input(extra)).unwrap().model;
        assert_eq!(model(&["--engine", "python:hf", "--engine-options", r#"{"preset": "qwen2.5-7b"}"#]), "qwen2.5-7b");
        assert_eq!(model(&["--engine", "mock"]), "(engine options)");
        assert_eq!(model(&[]), "tiny");
    }

    /// A later flag overrides an earlier one (scripts pass defaults, users add their own):
    /// launch/quickstart.sh --generated-tokens 16.
    #[test]
    fn later_flags_override_earlier_ones() {
        let i =
            input(&["--generated-tokens", "8", "--engine", "cpu", "--generated-tokens", "16", "--cupti", "--cupti"]);
        assert_eq!((i.generated_tokens, i.engine.as_str(), i.cupti), (16, "cpu", true));
    }

    #[test]
    fn every_run_option_reaches_the_run_layer() {
        // The conversion moves each field: a value given on the command line arrives unchanged.
        let i = input(&[
            "--engine",
            "mock",
            "--dtype",
            "bf16",
            "--model",
            "small",
            "--engine-options",
            "{\"a\": 1}",
            "--batch",
            "3",
            "--prompt-tokens",
            "7",
            "--generated-tokens",
            "9",
            "--seed",
            "5",
            "--vocab-size",
            "100",
            "--allow-eos",
            "--out",
            "o.json",
            "--force",
            "--trace",
            "t.json",
            "--cupti",
            "--trace-kernel-steps",
            "4",
            "--record-tokens",
            "--devices",
            "1,2",
            "--mem-interval-ms",
            "20",
            "--timeout",
            "30",
            "--warmup",
            "2",
            "--warmup-tolerance",
            "7",
            "--warmup-max",
            "6",
            "--slo",
            "tpot_ms=5",
            "--token-log",
            "k.csv",
            "--no-progress",
            "--repeat",
            "3",
        ]);
        assert_eq!(
            (i.engine.as_str(), i.dtype.as_str(), i.model.as_deref(), i.engine_options.as_str()),
            ("mock", "bf16", Some("small"), "{\"a\": 1}")
        );
        assert_eq!((i.batch, i.prompt_tokens, i.generated_tokens, i.seed, i.vocab_size), (Some(3), 7, 9, 5, Some(100)));
        assert!(i.allow_eos && i.force && i.cupti && i.record_tokens);
        assert_eq!(
            (i.out.as_deref(), i.trace.as_deref()),
            (Some(std::path::Path::new("o.json")), Some(std::path::Path::new("t.json")))
        );
        assert_eq!(
            (i.trace_kernel_steps, i.devices.as_deref(), i.mem_interval_ms, i.timeout),
            (4, Some(&[1, 2][..]), 20, Some(30.0))
        );
        assert_eq!(
            (i.warmup.as_str(), i.warmup_tolerance, i.warmup_max, i.slo.as_deref()),
            ("2", 7.0, 6, Some("tpot_ms=5"))
        );
        assert_eq!(i.token_log.as_deref(), Some(std::path::Path::new("k.csv")));
        assert!(i.no_progress);
        assert_eq!(i.repeat, 3);
        let w = input(&["--weights", "ckpt", "--prompts", "p.jsonl"]);
        assert_eq!(
            (w.weights.as_deref(), w.prompts.as_deref()),
            (Some(std::path::Path::new("ckpt")), Some(std::path::Path::new("p.jsonl")))
        );
    }

    /// `--config run.toml`: the file's options, then the command line's (which win).
    #[test]
    fn a_config_file_gives_options_the_command_line_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("run.toml");
        std::fs::write(
            &f,
            "engine = \"mock\"\ngenerated_tokens = 800\nprompt-tokens = 10000\ncupti = true\nallow-eos = false\n\
             devices = [0, 1]\nwarmup-tolerance = 2.5\nslo = \"ttft_ms=500\"\n[engine-options]\ntoken_us = 500\n",
        )
        .unwrap();
        let argv =
            |extra: &[&str]| -> Vec<OsString> { ["tpprof", "run"].iter().chain(extra).map(OsString::from).collect() };
        let parse = |extra: &[&str]| -> RunInput {
            match Cli::try_parse_from(expand_config(argv(extra)).unwrap()).unwrap().command {
                Command::Run(a) => (*a).into(),
                _ => unreachable!(),
            }
        };
        let path = f.to_str().unwrap();
        let i = parse(&["--config", path]);
        assert_eq!(
            (i.engine.as_str(), i.generated_tokens, i.prompt_tokens, i.cupti, i.allow_eos),
            ("mock", 800, 10000, true, false)
        );
        assert_eq!(
            (i.devices.as_deref(), i.warmup_tolerance, i.slo.as_deref()),
            (Some(&[0, 1][..]), 2.5, Some("ttft_ms=500"))
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&i.engine_options).unwrap(),
            serde_json::json!({"token_us": 500})
        );
        // The command line wins, before or after --config; `--config=FILE` too.
        let i = parse(&["--generated-tokens", "16", &format!("--config={path}"), "--engine", "cpu"]);
        assert_eq!((i.generated_tokens, i.engine.as_str(), i.prompt_tokens), (16, "cpu", 10000));
        // Without --config nothing changes; other subcommands are left alone.
        assert_eq!(expand_config(argv(&["--engine", "cpu"])).unwrap(), argv(&["--engine", "cpu"]));
        let other: Vec<OsString> = ["tpprof", "compare", "--config", "x"].iter().map(OsString::from).collect();
        assert_eq!(expand_config(other.clone()).unwrap(), other);
        // Bad files: one line naming the file and the key.
        let bad = |body: &str| {
            std::fs::write(&f, body).unwrap();
            expand_config(argv(&["--config", path])).unwrap_err().to_string()
        };
        assert!(bad("generated-tokenz = 5").contains("unknown option `generated-tokenz`"));
        assert!(bad("cupti = 3").contains("`cupti` must be true or false"));
        assert!(bad("model = true").contains("`model` must be a string or a number"));
        assert!(bad("devices = [[0]]").contains("`devices` must be an array"));
        assert!(bad("config = \"other.toml\"").contains("unknown option `config`"));
        assert!(bad("engine = ").contains("is not TOML"));
        assert!(expand_config(argv(&["--config", "/nonexistent/run.toml"]))
            .unwrap_err()
            .to_string()
            .starts_with("cannot read --config /nonexistent/run.toml"));
        assert!(matches!(expand_config(argv(&["--config"])), Err(ConfigFileError::Missing)));
    }
}
