//! Integration tests: the real `tpprof` binary under `mpirun -n 1/2/4` (and as a singleton) against
//! the mock adapter and the cpu engine. Every JSON is checked against results/schema.json; the
//! assertions are counts, statuses and invariants, never exact timings: the mock's scripted delays
//! are lower bounds a measurement must not undercut, with loose upper bounds for a loaded machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One mpirun at a time: the tests share a small machine, and the mock's timing test must not
/// compete with a dozen other jobs.
static MPI: Mutex<()> = Mutex::new(());

const BIN: &str = env!("CARGO_BIN_EXE_tpprof");

struct Run {
    out: Output,
    json: Option<Value>,
    elapsed: Duration,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Run {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    fn json(&self) -> &Value {
        self.json.as_ref().unwrap_or_else(|| panic!("no JSON written\nstdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr()))
    }
    /// The lines tpprof printed as errors (mpirun adds its own chatter around them).
    fn error_lines(&self) -> Vec<String> {
        self.stderr().lines().filter(|l| l.starts_with("error:")).map(str::to_string).collect()
    }
}

fn mpirun(n: usize) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-k", "5", "120", "mpirun", "-n", &n.to_string(), "--oversubscribe", "--bind-to", "none"]);
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    c
}

/// Runs `tpprof run ARGS --out <tmp>/r.json` on n ranks (n = 0: singleton, no mpirun).
fn run(n: usize, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    run_to(n, args, &path, dir)
}

fn run_to(n: usize, args: &[&str], path: &Path, dir: tempfile::TempDir) -> Run {
    run_env(n, args, path, dir, &[])
}

/// As run_to, with extra environment variables for every rank (mpirun's local ranks inherit them).
fn run_env(n: usize, args: &[&str], path: &Path, dir: tempfile::TempDir, env: &[(&str, &str)]) -> Run {
    let _guard = MPI.lock().unwrap_or_else(|p| p.into_inner());
    let mut cmd = if n == 0 { Command::new(BIN) } else { mpirun(n) };
    cmd.envs(env.iter().copied());
    if n > 0 {
        cmd.arg(BIN);
    }
    cmd.arg("run").args(args).arg("--out").arg(path);
    let t = Instant::now();
    let out = cmd.output().expect("run tpprof");
    let elapsed = t.elapsed();
    // A file that is not ours (a test's "earlier result") is left unparsed; ours must parse.
    let json = std::fs::read_to_string(path)
        .ok()
        .filter(|s| s.starts_with('{'))
        .map(|s| serde_json::from_str(&s).expect("the JSON parses"));
    if let Some(j) = &json {
        check_schema(j);
    }
    Run { out, json, elapsed, _dir: dir, path: path.to_path_buf() }
}

fn check_schema(j: &Value) {
    let schema: Value = serde_json::from_str(include_str!("../results/schema.json")).unwrap();
    let v = jsonschema::validator_for(&schema).expect("schema.json is a valid JSON Schema");
    let errors: Vec<String> = v.iter_errors(j).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(errors.is_empty(), "JSON does not match results/schema.json:\n{}", errors.join("\n"));
}

fn ok(r: &Run) -> &Value {
    assert_eq!(r.code(), 0, "exit code\nstdout:\n{}\nstderr:\n{}", r.stdout(), r.stderr());
    let j = r.json();
    assert_eq!(j["status"]["state"], "ok", "{}", j["status"]);
    j
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// The invariants every successful run must hold.
fn check_counts(j: &Value, ranks: usize, batch: u64, gen: u64) {
    let s = &j["summary"];
    assert_eq!(u(&s["generated_tokens"]), batch * gen);
    assert_eq!(u(&s["requested_tokens"]), batch * gen);
    assert_eq!(j["ranks"].as_array().unwrap().len(), ranks);
    let peaks = s["peak_memory_gib"].as_array().unwrap();
    assert_eq!(peaks.len(), ranks);
    assert!(peaks.iter().all(|p| p.as_f64().unwrap() > 0.0), "every rank reports a peak: {peaks:?}");
    for sample in j["samples"].as_array().unwrap() {
        assert_eq!(u(&sample["generated"]), gen);
        assert_eq!(u(&sample["requested"]), gen);
        assert_eq!(sample["finish_reason"], "length");
        assert_eq!(sample["ranks_agree"], true);
    }
    let mut engine_ranks = 0;
    for r in j["ranks"].as_array().unwrap() {
        if r["role"] == "engine" {
            engine_ranks += 1;
            assert_eq!(u(&r["ttft"]["count"]), batch, "one TTFT per sample");
            assert_eq!(u(&r["decode"]["count"]), batch * (gen - 1), "one gap per token after the first");
            assert_eq!(u(&r["tokens_generated"]), batch * gen);
        }
        assert!(u(&r["memory"]["samples"]) >= 1);
    }
    assert_eq!(u(&j["latency"]["ttft"]["count"]), engine_ranks * batch, "merged = sum over engine ranks");
    assert_eq!(u(&j["latency"]["decode"]["count"]), engine_ranks * batch * (gen - 1));
    assert_eq!(u(&s["itl_ms"]["count"]), engine_ranks * batch * (gen - 1));
}

fn tokens(j: &Value) -> Vec<Vec<i64>> {
    j["samples"].as_array().unwrap().iter().map(|s| s["tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect()).collect()
}

#[test]
fn cpu_engine_tokens_agree_across_tp_degrees() {
    let args = ["--engine", "cpu", "--model", "tiny", "--batch", "2", "--prompt-tokens", "24", "--generated-tokens", "12", "--seed", "5", "--record-tokens"];
    let mut seen = Vec::new();
    for n in [1, 2, 4] {
        let r = run(n, &args);
        let j = ok(&r);
        check_counts(j, n, 2, 12);
        assert_eq!(j["config"]["world_size"], n as u64);
        assert_eq!(j["summary"]["peak_memory_source"], "host_rss");
        assert!(j["ranks"][0]["memory"]["gpu"]["state"] == "unavailable" || j["ranks"][0]["gpu"].is_object());
        assert!(j["ranks"][0]["engine_memory"]["weights_bytes"].as_u64().unwrap() > 0);
        assert!(r.stdout().contains("status: ok"), "{}", r.stdout());
        seen.push(tokens(j));
    }
    assert_eq!(seen[0], seen[1], "TP=1 vs TP=2");
    assert_eq!(seen[0], seen[2], "TP=1 vs TP=4");
    assert!(seen[0][0] != seen[0][1], "different prompts give different continuations");
}

#[test]
fn singleton_without_mpirun_works() {
    let r = run(0, &["--model", "tiny", "--prompt-tokens", "8", "--generated-tokens", "4"]);
    check_counts(ok(&r), 1, 1, 4);
}

#[test]
fn mock_latency_is_what_the_histogram_reports() {
    // 2 ms per decode step, 20 µs per prompt token (100 tokens → 2 ms prefill).
    let token_us = 2000.0;
    let r = run(2, &["--engine", "mock", "--engine-options", r#"{"token_us": 2000, "prefill_us_per_token": 20}"#, "--prompt-tokens", "100", "--generated-tokens", "60"]);
    let j = ok(&r);
    check_counts(j, 2, 1, 60);
    for rank in j["ranks"].as_array().unwrap() {
        let p50_us = u(&rank["decode"]["p50_ns"]) as f64 / 1e3;
        let min_us = u(&rank["decode"]["min_ns"]) as f64 / 1e3;
        // Never below the script (busy-waits end after their deadline; HdrHistogram reports the top
        // of a value's bucket), and p50 within a tolerance a loaded 2-core machine survives.
        assert!(min_us >= token_us * 0.999, "min {min_us} µs below the scripted {token_us} µs");
        assert!(p50_us <= token_us * 1.5 + 500.0, "p50 {p50_us} µs far above the scripted {token_us} µs");
        let ttft_us = u(&rank["ttft"]["min_ns"]) as f64 / 1e3;
        assert!(ttft_us >= 2000.0 * 0.999, "TTFT {ttft_us} µs below the scripted 2000 µs prefill");
    }
    let itl = j["summary"]["itl_ms"]["p50"].as_f64().unwrap();
    assert!(itl >= 2.0 * 0.999 && itl <= 3.5, "merged ITL p50 {itl} ms");
}

#[test]
fn mock_allocation_shows_in_each_ranks_peak() {
    let size: u64 = 256 << 20;
    let opts = format!(r#"{{"alloc_bytes": {size}}}"#);
    let r = run(2, &["--engine", "mock", "--engine-options", &opts, "--prompt-tokens", "4", "--generated-tokens", "4", "--mem-interval-ms", "5"]);
    let j = ok(&r);
    for rank in j["ranks"].as_array().unwrap() {
        let peak = u(&rank["memory"]["host"]["peak_rss"]["bytes"]);
        let hwm = u(&rank["memory"]["host"]["vm_hwm_bytes"]);
        assert!(peak >= size && hwm >= size, "rank {}: sampled {peak} / VmHWM {hwm} < allocated {size}", rank["rank"]);
        assert_eq!(u(&rank["engine_memory"]["host_bytes"]), size);
        assert_eq!(u(&rank["memory"]["interval_ms"]), 5);
    }
    for p in j["summary"]["peak_memory_gib"].as_array().unwrap() {
        assert!(p.as_f64().unwrap() >= 0.25);
    }
}

#[test]
fn one_process_topology_has_observer_ranks() {
    let r = run(2, &["--engine", "mock", "--engine-options", r#"{"topology": "one_process", "token_us": 200}"#, "--batch", "3", "--prompt-tokens", "4", "--generated-tokens", "5"]);
    let j = ok(&r);
    check_counts(j, 2, 3, 5);
    assert_eq!(j["topology"], "one_process");
    assert_eq!(j["ranks"][0]["role"], "engine");
    assert_eq!(j["ranks"][1]["role"], "observer");
    assert_eq!(u(&j["ranks"][1]["tokens_generated"]), 0);
    assert!(u(&j["ranks"][1]["memory"]["host"]["peak_rss"]["bytes"]) > 0);
}

#[test]
fn tokens_from_an_engine_thread_are_recorded() {
    let r = run(1, &["--engine", "mock", "--engine-options", r#"{"callback_thread": 1}"#, "--batch", "2", "--prompt-tokens", "4", "--generated-tokens", "7"]);
    check_counts(ok(&r), 1, 2, 7);
}

#[test]
fn eos_is_reported_not_hidden() {
    let opts = r#"{"eos_at_step": 5}"#;
    // Exact length (default): the engine must ignore EOS.
    let r = run(1, &["--engine", "mock", "--engine-options", opts, "--prompt-tokens", "4", "--generated-tokens", "10"]);
    check_counts(ok(&r), 1, 1, 10);
    // --allow-eos: the short sample is visible in status and samples.
    let r = run(1, &["--engine", "mock", "--engine-options", opts, "--prompt-tokens", "4", "--generated-tokens", "10", "--allow-eos"]);
    assert_eq!(r.code(), 0);
    let j = r.json();
    assert_eq!(j["status"]["state"], "incomplete");
    assert!(j["status"]["reason"].as_str().unwrap().contains("sample 0 got 6 of 10 tokens"));
    assert_eq!(j["samples"][0]["finish_reason"], "eos");
    assert_eq!(u(&j["summary"]["generated_tokens"]), 6);
    assert!(r.stdout().contains("INCOMPLETE"));
}

#[test]
fn prompts_file_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.jsonl");
    std::fs::write(&p, "[1, 2, 3, 4]\n[5, 6]\n[7]\n").unwrap();
    let r = run(2, &["--model", "tiny", "--prompts", p.to_str().unwrap(), "--generated-tokens", "3"]);
    let j = ok(&r);
    check_counts(j, 2, 3, 3);
    assert_eq!(u(&j["summary"]["prompt_tokens"]), 7);
    assert_eq!(j["config"]["prompts"]["kind"], "file");
}

#[test]
fn report_prints_a_saved_result() {
    let r = run(1, &["--engine", "mock", "--prompt-tokens", "4", "--generated-tokens", "3"]);
    ok(&r);
    let out = Command::new(BIN).arg("report").arg(&r.path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("status: ok") && text.contains("TTFT") && text.contains("ITL"), "{text}");
    let bad = Command::new(BIN).args(["report", "Cargo.toml"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("error: Cargo.toml is not a tpprof result JSON"));
}

/// Bad input: a one-line error naming the cause, non-zero exit on every rank, within seconds, and
/// no JSON (or a `failed` one).
fn rejected(n: usize, args: &[&str], code: i32, needle: &str) -> Run {
    let r = run(n, args);
    assert_eq!(r.code(), code, "exit code for {args:?}\nstderr:\n{}", r.stderr());
    let errors = r.error_lines();
    assert_eq!(errors.len(), 1, "exactly one error line for {args:?}, got:\n{}", r.stderr());
    assert!(errors[0].contains(needle), "error for {args:?} should mention {needle:?}: {}", errors[0]);
    assert!(r.elapsed < Duration::from_secs(60), "took {:?}", r.elapsed);
    if let Some(j) = &r.json {
        assert_eq!(j["status"]["state"], "failed");
    }
    assert!(!r.stderr().contains("panicked"), "{}", r.stderr());
    r
}

#[test]
fn bad_arguments_are_one_line_errors() {
    rejected(2, &["--engine", "tensorrt"], 2, "unknown engine `tensorrt`");
    rejected(2, &["--model", "gigantic"], 2, "gigantic");
    rejected(2, &["--generated-tokens", "0"], 2, "--generated-tokens must be a whole number ≥ 1 (got 0)");
    rejected(1, &["--prompt-tokens", "-3"], 2, "--prompt-tokens must be a whole number ≥ 1 (got -3)");
    rejected(2, &["--batch", "0"], 2, "--batch");
    rejected(2, &["--engine-options", "not json"], 2, "--engine-options must be a JSON object");
    rejected(3, &["--model", "tiny"], 2, "does not divide");
    rejected(1, &["--model", "tiny", "--prompt-tokens", "2000", "--generated-tokens", "100"], 2, "exceeds the model's context of 2048");
}

#[test]
fn bad_adapters_are_one_line_errors() {
    rejected(2, &["--engine", "/nonexistent/libnothing.so"], 1, "does not exist");
    rejected(2, &["--engine", concat!("adapter:", env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")], 1, "could not load adapter");
    rejected(2, &["--engine", env!("TPPROF_MOCK_ADAPTER_BAD_ABI")], 1, "ABI version 42");
    rejected(2, &["--engine", env!("TPPROF_MOCK_ADAPTER_NO_GENERATE")], 1, "does not export `tpprof_generate`");
    // An adapter's own create() error reaches the user as one line too.
    rejected(2, &["--engine", "mock", "--engine-options", r#"{"gpu_kernels_per_step": 2}"#], 1, "gpu_kernels_per_step needs gpu_alloc_mib");
}

#[test]
fn bad_prompt_files_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let range = dir.path().join("range.jsonl");
    std::fs::write(&range, "[1, 2]\n[3, 999999]\n").unwrap();
    rejected(2, &["--model", "tiny", "--prompts", range.to_str().unwrap()], 2, "line 2: token id 999999");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "[1, 2]\nhello\n").unwrap();
    rejected(2, &["--model", "tiny", "--prompts", bad.to_str().unwrap()], 2, "line 2: not an array of integers");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "[]\n").unwrap();
    rejected(1, &["--model", "tiny", "--prompts", empty.to_str().unwrap()], 2, "empty prompt");
    rejected(1, &["--model", "tiny", "--prompts", "/nonexistent/p.jsonl"], 2, "cannot read prompts file");
}

#[test]
fn engine_failures_stop_every_rank_with_a_failed_json() {
    let r = rejected(2, &["--engine", "mock", "--engine-options", r#"{"fail_create_rank": 1}"#], 1, "rank 1: ");
    assert!(r.error_lines()[0].contains("injected failure in create() on rank 1"));
    assert_eq!(r.json()["status"]["failed_rank"], 1);

    let r = rejected(4, &["--engine", "mock", "--engine-options", r#"{"fail_rank": 2, "fail_at_token": 5, "token_us": 100}"#, "--generated-tokens", "20"], 1, "rank 2: ");
    assert!(r.error_lines()[0].contains("injected failure at decode step 5 on rank 2"));
    let j = r.json();
    assert_eq!(j["status"]["failed_rank"], 2);
    assert!(j["summary"].is_null());
}

#[test]
fn a_crashing_rank_ends_the_job() {
    let r = run(2, &["--engine", "mock", "--engine-options", r#"{"crash_rank": 1, "crash_at_token": 3, "token_us": 1000}"#, "--generated-tokens", "50"]);
    assert_ne!(r.code(), 0);
    assert!(r.elapsed < Duration::from_secs(60), "took {:?}", r.elapsed);
    assert!(r.json.is_none(), "no JSON from a crashed job");
}

#[test]
fn a_hung_engine_is_stopped_by_the_timeout() {
    // 10 s per token, 1 s budget.
    let r = run(2, &["--engine", "mock", "--engine-options", r#"{"token_us": 10000000}"#, "--generated-tokens", "5", "--timeout", "1"]);
    assert_ne!(r.code(), 0);
    assert!(r.elapsed < Duration::from_secs(30), "took {:?}", r.elapsed);
    assert!(r.stderr().contains("did not finish within --timeout 1.0 s"), "{}", r.stderr());
}

#[test]
fn existing_results_are_never_overwritten_by_accident() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keep.json");
    std::fs::write(&path, "earlier result").unwrap();
    let args = ["--engine", "mock", "--prompt-tokens", "4", "--generated-tokens", "3"];
    let d2 = tempfile::tempdir().unwrap();
    let r = run_to(2, &args, &path, d2);
    assert_eq!(r.code(), 2);
    assert_eq!(r.error_lines().len(), 1);
    assert!(r.error_lines()[0].contains("already exists: pass --force"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier result");

    // --force, but the run fails: the earlier file stays.
    let failing = ["--engine", "mock", "--engine-options", r#"{"fail_create_rank": 0}"#, "--force"];
    let r = run_to(2, &failing, &path, tempfile::tempdir().unwrap());
    assert_eq!(r.code(), 1);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier result");

    // --force and success: replaced.
    let mut forced = args.to_vec();
    forced.push("--force");
    let r = run_to(2, &forced, &path, tempfile::tempdir().unwrap());
    ok(&r);
    // No temp files left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["keep.json".to_string()]);
}

#[test]
fn unwritable_output_is_refused_before_running() {
    let r = run_to(2, &["--engine", "mock"], Path::new("/nonexistent-dir/r.json"), tempfile::tempdir().unwrap());
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert_eq!(r.error_lines().len(), 1, "{}", r.stderr());
    assert!(r.error_lines()[0].contains("cannot write /nonexistent-dir/r.json"), "{}", r.stderr());
    assert!(r.json.is_none());
}

#[test]
fn checkpoint_weights_give_the_seeded_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("tiny-ckpt");
    let out = Command::new(BIN).args(["write-checkpoint", "--model", "tiny", "--seed", "9", "--files", "2", "--out"]).arg(&ckpt).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let args = ["--prompt-tokens", "20", "--generated-tokens", "6", "--batch", "2", "--record-tokens"];
    let seeded = run(2, &[&["--model", "tiny", "--seed", "9"][..], &args[..]].concat());
    let loaded = run(2, &[&["--weights", ckpt.to_str().unwrap(), "--seed", "9"][..], &args[..]].concat());
    let (a, b) = (ok(&seeded), ok(&loaded));
    check_counts(b, 2, 2, 6);
    assert_eq!(tokens(a), tokens(b), "checkpoint vs seeded weights");
    assert!(b["engine"]["details"]["weights"].as_str().unwrap().contains("safetensors checkpoint"));
    // A directory without a checkpoint, and --model together with --weights, are bad input.
    rejected(1, &["--weights", dir.path().to_str().unwrap()], 2, "no config.json there");
}

/// fp16 checkpoints (what third-party engines load) run on the cpu engine, whether in one file or split by
/// --shard-gib over several with an index: the same tokens either way.
#[test]
fn fp16_checkpoints_in_one_file_or_many_give_the_same_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, extra: &[&str]| {
        let ckpt = dir.path().join(name);
        let out = Command::new(BIN).args(["write-checkpoint", "--model", "tiny", "--seed", "9", "--dtype", "fp16"]).args(extra).arg("--out").arg(&ckpt).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        ckpt
    };
    let one = write("one", &[]);
    // 0.00005 GiB = 53 687 bytes: the tiny model's 263 296 bytes of f16 go into several files.
    let many = write("many", &["--shard-gib", "0.00005"]);
    let shards = |d: &Path| std::fs::read_dir(d).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".safetensors")).count();
    assert_eq!(shards(&one), 1);
    assert!(one.join("model.safetensors").exists() && !one.join("model.safetensors.index.json").exists());
    assert!(shards(&many) > 1 && many.join("model.safetensors.index.json").exists(), "{} files", shards(&many));
    let args = ["--prompt-tokens", "20", "--generated-tokens", "6", "--batch", "2", "--record-tokens"];
    let a = run(2, &[&["--weights", one.to_str().unwrap()][..], &args[..]].concat());
    let b = run(2, &[&["--weights", many.to_str().unwrap()][..], &args[..]].concat());
    let (a, b) = (ok(&a), ok(&b));
    check_counts(a, 2, 2, 6);
    check_counts(b, 2, 2, 6);
    assert_eq!(tokens(a), tokens(b), "one file vs several");
    assert!(b["engine"]["details"]["weights"].as_str().unwrap().contains("safetensors checkpoint"));
    // Bad options are one-line errors (exit 2), and nothing is written.
    let bad = dir.path().join("bad");
    for (args, needle) in [
        (&["--dtype", "fp8"][..], "invalid value 'fp8' for '--dtype <DTYPE>'"),
        (&["--files", "2", "--shard-gib", "1"][..], "cannot be used with"),
        (&["--shard-gib", "0"][..], "error: --shard-gib must be a positive number of GiB (got 0)"),
        (&["--files", "0"][..], "error: --files must be at least 1"),
    ] {
        let out = Command::new(BIN).arg("write-checkpoint").args(args).arg("--out").arg(&bad).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!bad.exists());
    }
}

#[test]
fn cuda_without_a_gpu_is_a_one_line_error() {
    if std::path::Path::new("/dev/nvidia0").exists() {
        eprintln!("skipped: this machine has a GPU (the GPU test command covers it)");
        return;
    }
    let r = rejected(2, &["--engine", "cuda", "--model", "tiny"], 2, "--engine cuda needs a GPU on every rank");
    assert!(r.json.is_none() || r.json()["status"]["state"] == "failed");
    rejected(1, &["--engine", "cpu", "--dtype", "fp8"], 2, "unknown --dtype `fp8`");
    // --cupti records GPU kernels: without a GPU it is refused up front, on every rank.
    rejected(2, &["--engine", "mock", "--cupti"], 2, "--cupti needs a GPU on every rank");
    rejected(1, &["--cupti", "--trace-kernel-steps", "-1"], 2, "--trace-kernel-steps must be a whole number ≥ 0 (got -1)");
    // `auto` (the default) is the cpu engine here.
    let r = run(1, &["--prompt-tokens", "4", "--generated-tokens", "2"]);
    assert_eq!(ok(&r)["engine"]["name"], "cpu");
    // verify needs a GPU too.
    let _guard = MPI.lock().unwrap_or_else(|p| p.into_inner());
    let out = Command::new(BIN).args(["verify", "--model", "tiny"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
}

#[test]
fn trace_has_every_rank_token_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.json");
    let r = run(2, &["--engine", "mock", "--engine-options", r#"{"token_us": 300}"#, "--batch", "2", "--prompt-tokens", "8", "--generated-tokens", "5", "--trace", trace.to_str().unwrap()]);
    ok(&r);
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let ev = t["traceEvents"].as_array().unwrap();
    for rank in 0..2 {
        let tokens = ev.iter().filter(|e| e["name"] == "token" && e["pid"] == rank).count();
        assert_eq!(tokens, 2 * 5, "rank {rank}");
        assert!(ev.iter().any(|e| e["ph"] == "C" && e["pid"] == rank), "memory track of rank {rank}");
        assert!(ev.iter().any(|e| e["name"] == "process_name" && e["pid"] == rank));
    }
    // Token times are ordered within a sample and non-negative on rank 0's clock.
    let mut last = -1.0;
    for e in ev.iter().filter(|e| e["name"] == "token" && e["pid"] == 0 && e["args"]["sample"] == 1) {
        let ts = e["ts"].as_f64().unwrap();
        assert!(ts >= last && ts >= 0.0);
        last = ts;
    }
    // The trace is claimed like the JSON: never overwritten by accident, never the same file.
    let r = run(1, &["--engine", "mock", "--trace", trace.to_str().unwrap()]);
    assert_eq!(r.code(), 2);
    assert!(r.error_lines()[0].contains("already exists"), "{}", r.stderr());
    let same = dir.path().join("same.json");
    let r = run_to(1, &["--engine", "mock", "--trace", same.to_str().unwrap()], &same, tempfile::tempdir().unwrap());
    assert_eq!(r.code(), 2);
    assert!(r.error_lines()[0].contains("is also the --out file"), "{}", r.stderr());
}

/// The Python engine needs a CPython with libpython*.so; CI machines have one (else: skipped).
fn python_available() -> bool {
    match tpprof::engine::python::find_libpython(None) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: no usable libpython ({e})");
            false
        }
    }
}

#[test]
fn python_driver_runs_under_mpirun_with_native_timestamps() {
    if !python_available() {
        return;
    }
    let r = run(2, &["--engine", "python:test", "--engine-options", r#"{"token_us": 2000, "vocab_size": 1000}"#, "--batch", "2", "--prompt-tokens", "16", "--generated-tokens", "20", "--record-tokens"]);
    let j = ok(&r);
    check_counts(j, 2, 2, 20);
    assert_eq!(j["engine"]["kind"], "python");
    for rank in j["ranks"].as_array().unwrap() {
        // The driver busy-waits 2 ms per step in Python; the native callback timestamps each token.
        assert!(u(&rank["decode"]["min_ns"]) >= 1_998_000, "min gap {} below the script", rank["decode"]["min_ns"]);
    }
    assert_eq!(tokens(j)[0][..3], [1, 8, 15], "the test driver's token formula");
    // A Python exception on one rank: one line with its type and message, every rank exits non-zero.
    let r = rejected(2, &["--engine", "python:test", "--engine-options", r#"{"fail_create": "no model here"}"#], 1, "python driver `test`");
    assert!(r.error_lines()[0].contains("no model here"), "{}", r.error_lines()[0]);
    rejected(1, &["--engine", "python:does_not_exist"], 1, "does_not_exist");
}

// ---- the C++ adapter glue (ffi/adapters/common) through the mock executor adapter ----

const MOCK_EXECUTOR: &str = env!("TPPROF_MOCK_EXECUTOR_ADAPTER");

/// `--engine <mock executor .so> --engine-options OPTS` followed by `rest`.
fn mock_executor(opts: &str, rest: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--engine", MOCK_EXECUTOR, "--engine-options", opts].iter().map(|s| s.to_string()).collect();
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

fn run_mx(n: usize, opts: &str, rest: &[&str]) -> Run {
    let args = mock_executor(opts, rest);
    run(n, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn rejected_mx(n: usize, opts: &str, rest: &[&str], needle: &str) -> Run {
    let args = mock_executor(opts, rest);
    rejected(n, &args.iter().map(String::as_str).collect::<Vec<_>>(), 1, needle)
}

#[test]
fn mock_executor_counts_every_token_of_a_multi_token_response() {
    // Three tokens per response: each is its own on_token call, step and decode gap.
    let r = run_mx(2, r#"{"burst": 3, "token_us": 300}"#, &["--batch", "3", "--prompt-tokens", "8", "--generated-tokens", "10", "--record-tokens"]);
    let j = ok(&r);
    check_counts(j, 2, 3, 10);
    assert_eq!(j["engine"]["name"], "mock_executor");
    assert_eq!(j["topology"], "all_ranks");
    assert_eq!(tokens(j)[1][..3], [32, 39, 46], "the fake executor's token formula, in order");
    // Tokens that arrived together have (almost) no gap between them: the decode minimum is far
    // below the 300 µs step, which a glue that dropped or merged tokens could not produce.
    for rank in j["ranks"].as_array().unwrap() {
        assert!(u(&rank["decode"]["min_ns"]) < 300_000, "rank {}: min gap {}", rank["rank"], rank["decode"]["min_ns"]);
    }
    // The final flag in a separate, empty response after the last token; four tokens a response.
    let r = run_mx(1, r#"{"burst": 4, "empty_final": true}"#, &["--batch", "2", "--prompt-tokens", "4", "--generated-tokens", "9"]);
    check_counts(ok(&r), 1, 2, 9);
    // ONE_PROCESS: rank 0 drives, rank 1 observes.
    let r = run_mx(2, r#"{"topology": "one_process", "burst": 2}"#, &["--batch", "2", "--prompt-tokens", "4", "--generated-tokens", "5"]);
    let j = ok(&r);
    check_counts(j, 2, 2, 5);
    assert_eq!(j["ranks"][1]["role"], "observer");
}

#[test]
fn mock_executor_finish_reasons_reach_the_json() {
    // Exact length (the default): the executor ignores EOS.
    let r = run_mx(1, r#"{"eos_at_step": 3, "burst": 2}"#, &["--batch", "2", "--prompt-tokens", "4", "--generated-tokens", "10"]);
    check_counts(ok(&r), 1, 2, 10);
    // --allow-eos: EOS after 4 tokens, arriving in a response of two.
    let r = run_mx(2, r#"{"eos_at_step": 3, "burst": 2}"#, &["--batch", "2", "--prompt-tokens", "4", "--generated-tokens", "10", "--allow-eos"]);
    let j = r.json();
    assert_eq!(j["status"]["state"], "incomplete", "{}", r.stderr());
    for s in j["samples"].as_array().unwrap() {
        assert_eq!(s["finish_reason"], "eos");
        assert_eq!(u(&s["generated"]), 4);
    }
    assert_eq!(u(&j["summary"]["generated_tokens"]), 8);
    // An engine that silently clips the length (TensorRT-LLM at its max_seq_len): the short
    // samples are reported with the engine's reason, not hidden.
    let r = run_mx(1, r#"{"clip_tokens": 6, "burst": 4}"#, &["--batch", "2", "--prompt-tokens", "4", "--generated-tokens", "10"]);
    let j = r.json();
    assert_eq!(j["status"]["state"], "incomplete");
    assert!(j["status"]["reason"].as_str().unwrap().contains("sample 1 got 6 of 10 tokens"), "{}", j["status"]);
    assert_eq!(j["samples"][0]["finish_reason"], "length");
}

#[test]
fn mock_executor_failures_are_one_line_errors_on_every_rank() {
    let gen = ["--batch", "3", "--prompt-tokens", "8", "--generated-tokens", "12"];
    let r = rejected_mx(2, r#"{"error_rank": 1, "error_at_token": 4, "token_us": 200}"#, &gen, "rank 1: ");
    assert!(r.error_lines()[0].contains("injected executor error at token 4"), "{}", r.error_lines()[0]);
    assert_eq!(r.json()["status"]["failed_rank"], 1);
    rejected_mx(2, r#"{"enqueue_fail_sample": 1, "token_us": 1000}"#, &gen, "enqueue of sample 1 failed: injected enqueue failure");
    rejected_mx(2, r#"{"extra_tokens": 2, "burst": 5}"#, &gen, "more than max_new_tokens = 12 tokens");
    rejected_mx(2, r#"{"fail_create_rank": 1}"#, &gen, "injected failure in create() on rank 1");
    rejected_mx(1, r#"{"tokens_us": 5}"#, &gen, "unknown engine option \"tokens_us\"");
    rejected_mx(1, r#"{"burst": [1, 2]}"#, &gen, "flat values only");
    rejected_mx(1, r#"{"burst": 0}"#, &gen, "\"burst\" must be a whole number in [1,");
    // A hung executor: the glue's response timeout ends generate() on that rank, not a hang.
    let r = rejected_mx(2, r#"{"stall_rank": 1, "stall_at_token": 3, "response_timeout_s": 1, "cancel_grace_s": 0.5}"#, &gen, "no response from the engine for 1 s");
    assert!(r.elapsed < Duration::from_secs(30), "took {:?}", r.elapsed);
}

/// A stand-in `lmdeploy` package with TurboMind's streaming interface: three tokens per output, either
/// every token so far with `num_token` (lmdeploy 0.7 .. 0.10.1) or only the new ones (0.10.2 on).
/// It behaves as lmdeploy 0.18 did on the H200 where the driver once went wrong: TurboMind builds a
/// tokenizer from the checkpoint (none in a written checkpoint), its min-length penalty aborts without
/// end ids, and closing a stream before it ends cancels the request (logged to $FAKE_LMDEPLOY_LOG).
const FAKE_LMDEPLOY: &[(&str, &str)] = &[
    ("lmdeploy/__init__.py", "__version__ = '0.0.stand-in'\n"),
    ("lmdeploy/messages.py", r#"
import dataclasses, enum

@dataclasses.dataclass
class TurbomindEngineConfig:
    tp: int = 1
    session_len: int = None
    enable_prefix_caching: bool = False

@dataclasses.dataclass
class GenerationConfig:
    max_new_tokens: int = 512
    min_new_tokens: int = None
    top_k: int = 50
    ignore_eos: bool = False
    stop_token_ids: list = None

class ResponseType(enum.Enum):
    SUCCESS = 1
    FINISH = 2
    INTERNAL_ENGINE_ERROR = 3

@dataclasses.dataclass
class EngineOutput:
    status: ResponseType
    token_ids: list
    num_token: int = None
"#),
    ("lmdeploy/turbomind/__init__.py", "from .turbomind import TurboMind\n"),
    ("lmdeploy/turbomind/turbomind.py", r#"
import asyncio, os
from lmdeploy.messages import EngineOutput, ResponseType

MODE = os.environ['FAKE_LMDEPLOY_MODE']

def log(what):
    with open(os.environ['FAKE_LMDEPLOY_LOG'], 'a') as f:
        f.write(what + '\n')

class Tokenizer:
    def __init__(self, path):
        if not os.path.exists(os.path.join(path, 'tokenizer.json')):
            raise OSError('Can\'t load tokenizer for %r' % path)

class _Inst:
    async def async_stream_infer(self, session_id, input_ids, gen_config=None, stream_output=False, **kw):
        assert gen_config.ignore_eos and not gen_config.stop_token_ids
        if gen_config.min_new_tokens and not gen_config.stop_token_ids:
            log('abort: min-length penalty without end ids')
            os.abort()
        n, out = gen_config.max_new_tokens, []
        try:
            for i in range(n):
                out.append((session_id * 31 + i * 7 + 1) % 1000)
                last = i == n - 1
                if len(out) % 3 == 0 or last:
                    await asyncio.sleep(0.001)
                    st = ResponseType.FINISH if last else ResponseType.SUCCESS
                    if MODE == 'cumulative':
                        yield EngineOutput(st, list(out), len(out))
                    else:
                        yield EngineOutput(st, out[-(len(out) % 3 or 3):])
        except GeneratorExit:
            log('cancel: session %d closed before its stream ended' % session_id)
            raise

class TurboMind:
    @classmethod
    def from_pretrained(cls, path, engine_config=None):
        Tokenizer(path)
        return cls()

    def create_instance(self):
        return _Inst()
"#),
];

#[test]
fn lmdeploy_driver_counts_every_token_against_a_stand_in_lmdeploy() {
    if !python_available() {
        return;
    }
    let pkg = tempfile::tempdir().unwrap();
    for (path, text) in FAKE_LMDEPLOY {
        let p = pkg.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let pythonpath = pkg.path().to_str().unwrap();
    // A checkpoint directory without tokenizer files, as `tpprof write-checkpoint` writes it.
    let ckpt = tempfile::tempdir().unwrap();
    let options = format!(r#"{{"model_path": "{}", "vocab_size": 1000}}"#, ckpt.path().display());
    let args = ["--engine", "python:lmdeploy", "--engine-options", &options, "--batch", "3", "--prompt-tokens", "5", "--generated-tokens", "10", "--record-tokens"];
    for mode in ["cumulative", "incremental"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.json");
        let log = dir.path().join("lmdeploy.log");
        let envs = [("PYTHONPATH", pythonpath), ("FAKE_LMDEPLOY_MODE", mode), ("FAKE_LMDEPLOY_LOG", log.to_str().unwrap())];
        let r = run_env(2, &args, &out, dir, &envs);
        let j = ok(&r);
        check_counts(j, 2, 3, 10);
        assert_eq!(j["topology"], "one_process", "{mode}");
        // Warm-up runs (the default, auto) use sessions of their own: 3 per run before the measured one.
        let session = 1 + 3 * j["config"]["warmup"].as_u64().unwrap();
        let first: Vec<i64> = (0..4).map(|i| ((session * 31 + i * 7 + 1) % 1000) as i64).collect();
        assert_eq!(tokens(j)[0][..4], first[..], "{mode}: session {session}'s tokens, in order");
        assert_eq!(j["engine"]["details"]["tokenizer"], "stand-in (the checkpoint has none)", "{mode}");
        assert!(j["engine"]["details"]["libraries"].is_array(), "{mode}: which cuBLAS/NCCL TurboMind runs with");
        // Every stream ran to its end (no cancel), and nothing aborted.
        assert!(!log.exists(), "{mode}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        // The driver's stats: 10 tokens per sample in outputs of 3, 3, 3 and 1 (rank 0 drives the engine).
        let stats = &j["ranks"][0]["engine_stats"];
        assert_eq!(stats["stream_tokens"], 30, "{mode}: {stats}");
        assert_eq!(stats["stream_outputs"], 12, "{mode}: {stats}");
        assert_eq!(stats["outputs_with_several_tokens"], 9, "{mode}: {stats}");
        assert_eq!(stats["max_tokens_per_output"], 3, "{mode}: {stats}");
        assert!(j["ranks"][1]["engine_stats"].is_null(), "{mode}: the observer rank has none");
    }
}

#[test]
fn compare_puts_runs_side_by_side_against_the_baseline() {
    let a = run(1, &["--engine", "mock", "--engine-options", r#"{"token_us": 1000}"#, "--prompt-tokens", "4", "--generated-tokens", "20"]);
    let b = run(2, &["--engine", "mock", "--engine-options", r#"{"token_us": 3000}"#, "--prompt-tokens", "4", "--generated-tokens", "21"]);
    let (ja, jb) = (ok(&a), ok(&b));
    let out = Command::new(BIN).arg("compare").arg(&a.path).arg(&b.path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The legend names both files; the workload difference is pointed out.
    assert!(text.contains(&format!("A: {}", a.path.display())) && text.contains(&format!("B: {}", b.path.display())), "{text}");
    assert!(text.contains("generated tokens differ: A 20, B 21"), "{text}");
    // The ITL row carries both runs' p50 as the JSONs have them, B's with its change against A.
    let (pa, pb) = (ja["summary"]["itl_ms"]["p50"].as_f64().unwrap(), jb["summary"]["itl_ms"]["p50"].as_f64().unwrap());
    let itl = text.lines().find(|l| l.starts_with("ITL p50 ms")).unwrap_or_else(|| panic!("no ITL row:\n{text}"));
    let change = (pb - pa) / pa * 100.0;
    assert!(itl.contains(&format!("{pa:.3}")) && itl.contains(&format!("{pb:.3} ({change:+.1} %)")), "{itl}\n{text}");
    assert!(change > 100.0, "3 ms vs 1 ms per token: {change}");
    // Two ranks in B: its smallest and largest rank peaks are both there.
    assert!(text.lines().any(|l| l.starts_with("peak memory, smallest rank GiB")), "{text}");

    let md = Command::new(BIN).arg("compare").arg("--markdown").arg(&a.path).arg(&b.path).output().unwrap();
    let md = String::from_utf8_lossy(&md.stdout).into_owned();
    assert!(md.contains("| | A (baseline) | B |") && md.contains("| --- | --- | --- |"), "{md}");
    assert!(md.lines().any(|l| l.starts_with("| ITL p50 ms | ") && l.ends_with(" %) |")), "{md}");

    // Bad input: one line, exit 2.
    for args in [vec![a.path.display().to_string()], vec![a.path.display().to_string(), "Cargo.toml".into()]] {
        let bad = Command::new(BIN).arg("compare").args(&args).output().unwrap();
        assert_eq!(bad.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&bad.stderr).into_owned();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: "), "{err}");
    }
}

/// Results committed by earlier builds (same schema id, fewer fields) still read: a user's saved
/// JSONs must survive an upgrade. The two from the very first build lack the job memory record
/// and get a one-line error saying so.
#[test]
fn results_of_earlier_builds_still_read() {
    let too_old = ["mock_tp2_on_gpu_host.json", "qwen2.5-14b_fp16_tp2_10k-800_first-version.json"];
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results"))];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "json")
                && !p.to_string_lossy().ends_with(".trace.json")
                // an engine timed without tpprof (the yardstick beside a tpprof result)
                && !p.to_string_lossy().ends_with(".plain.json")
                && !p.ends_with("results/schema.json")
            {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 40, "found {} result JSONs", files.len());
    for f in &files {
        let out = Command::new(BIN).arg("report").arg(f).output().unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if too_old.contains(&name.as_str()) {
            assert_eq!(out.status.code(), Some(2), "{name}");
            assert!(String::from_utf8_lossy(&out.stderr).contains("written by an earlier tpprof build"), "{name}");
        } else {
            assert!(out.status.success(), "{}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// An engine that holds no GPU memory on a GPU host (python:test on the H200: NVML measured, 0 bytes
/// for this run's processes) shows the host peak the JSON holds, with its source, not "0.000 gpu".
#[test]
fn report_shows_the_peak_the_json_holds_with_its_source() {
    let f = concat!(env!("CARGO_MANIFEST_DIR"), "/results/h200/warmup/python-test_2000us.json");
    let j: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
    assert_eq!(j["summary"]["peak_memory_source"], "host_rss");
    assert_eq!(j["ranks"][0]["memory"]["gpu"]["job_peak"]["bytes"], 0, "the case: GPU measured, none of it ours");
    let out = Command::new(BIN).arg("report").arg(f).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let peak = format!("{:.3} host", j["summary"]["peak_memory_gib"][0].as_f64().unwrap());
    let row = text.lines().find(|l| l.trim_start().starts_with("0 ")).unwrap_or_else(|| panic!("no rank row:\n{text}"));
    assert!(row.contains(&peak) && !row.contains(" gpu"), "{row}");
}

/// Known truth: the mock pays 400 ms before the first token of its first generate() only. With
/// `--warmup 0` that lands in the TTFT and the run says "cold"; with `--warmup 2` it lands in the
/// first warm-up run on every rank.
#[test]
fn warmup_runs_take_the_first_request_cost_off_the_clock() {
    let opts = r#"{"first_generate_ms": 400, "token_us": 500}"#;
    let base = ["--engine", "mock", "--engine-options", opts, "--prompt-tokens", "4", "--generated-tokens", "10"];
    let ttft = |j: &Value| j["summary"]["ttft_ms"]["p50"].as_f64().unwrap();
    let cold = run(2, &[&base[..], &["--warmup", "0"]].concat());
    let jc = ok(&cold);
    check_counts(jc, 2, 1, 10);
    assert_eq!(jc["config"]["warmup"], 0);
    assert_eq!(jc["summary"]["warmup"]["state"], "cold");
    assert!(ttft(jc) >= 400.0, "the cold first request is in the TTFT: {}", ttft(jc));
    assert!(cold.stdout().contains("warm-up: none (--warmup 0): cold"), "{}", cold.stdout());

    let warm = run(2, &[&base[..], &["--warmup", "2"]].concat());
    let jw = ok(&warm);
    check_counts(jw, 2, 1, 10);
    assert_eq!(jw["config"]["warmup"], 2);
    assert_eq!(jw["config"]["warmup_mode"], "fixed");
    assert_eq!(jw["summary"]["warmup"]["state"], "fixed");
    // On every rank (the merged p50 would hide one rank that stayed cold).
    for r in jw["ranks"].as_array().unwrap() {
        let max_ms = u(&r["ttft"]["max_ns"]) as f64 / 1e6;
        assert!(max_ms < 400.0, "rank {}: after warm-up the TTFT no longer holds the first-request cost: {max_ms} ms", r["rank"]);
    }
    for r in jw["ranks"].as_array().unwrap() {
        let w: Vec<f64> = r["timing"]["warmup_s"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0] >= 0.4 && w[1] < 0.4, "the first warm-up run paid the cold start: {w:?}");
        // Each warm-up run's TTFT is in the JSON beside its wall time (ALL_RANKS: every rank's own).
        let t: Vec<f64> = r["timing"]["warmup_runs"].as_array().unwrap().iter().map(|x| x["ttft_ms"].as_f64().unwrap()).collect();
        assert!(t[0] >= 400.0 && t[1] < 400.0, "rank {}: warm-up TTFTs {t:?}", r["rank"]);
    }
    assert!(warm.stdout().contains("warm-up: 2 run(s) (--warmup 2, not checked"), "{}", warm.stdout());

    rejected(1, &["--engine", "mock", "--warmup", "-1"], 2, "--warmup must be `auto` or a whole number ≥ 0 (got \"-1\")");
    rejected(1, &["--engine", "mock", "--warmup-max", "1"], 2, "--warmup-max must be a whole number in [2, 100] (got 1)");
    rejected(1, &["--engine", "mock", "--warmup-tolerance", "0"], 2, "--warmup-tolerance must be a percentage in (0, 100] (got 0)");
    // A failure inside a warm-up run stops every rank and says where it happened.
    rejected(2, &["--engine", "mock", "--engine-options", r#"{"fail_rank": 1, "fail_at_token": 3}"#, "--generated-tokens", "5", "--warmup", "1"], 1, "warm-up run 1");
}

/// Known truth: an engine whose first generate() runs 3× slower for its whole length (the mock's
/// and python:test's slow_generates / slow_factor, as transformers' first generate() on the H200).
/// The default (auto) warm-up runs until two runs agree and measures the scripted steady state;
/// `--warmup 0` measures the slow first request and says "cold".
#[test]
fn default_warmup_reaches_the_scripted_steady_state() {
    if !python_available() {
        eprintln!("skipped python:test half: no python3 with a shared libpython");
    }
    let engines: Vec<(&str, &str)> = if python_available() {
        vec![("mock", r#"{"token_us": 2000, "slow_generates": 1, "slow_factor": 3}"#), ("python:test", r#"{"token_us": 2000, "slow_generates": 1, "slow_factor": 3, "vocab_size": 1000}"#)]
    } else {
        vec![("mock", r#"{"token_us": 2000, "slow_generates": 1, "slow_factor": 3}"#)]
    };
    let p50 = |j: &Value| j["summary"]["itl_ms"]["p50"].as_f64().unwrap();
    for (engine, opts) in engines {
        let base = ["--engine", engine, "--engine-options", opts, "--prompt-tokens", "4", "--generated-tokens", "60"];
        // 20 %: a loaded CI machine must not turn scheduling noise into a warning; 3× is far beyond it.
        let d = run(1, &[&base[..], &["--warmup-tolerance", "20"]].concat());
        let j = ok(&d);
        let w = &j["summary"]["warmup"];
        assert_eq!(w["mode"], "auto", "{engine}");
        assert_eq!(w["state"], "steady", "{engine}: {w}");
        let runs = j["ranks"][0]["timing"]["warmup_runs"].as_array().unwrap();
        assert!(runs.len() >= 3 && runs.len() as u64 == w["runs"].as_u64().unwrap(), "{engine}: slow, fast, fast: {runs:?}");
        let first = runs[0]["itl_p50_ms"].as_f64().unwrap();
        assert!(first >= 6.0, "{engine}: the first warm-up run is the slow one: {first}");
        assert!(p50(j) >= 2.0 && p50(j) < 2.4, "{engine}: the measured run is the scripted 2 ms: {}", p50(j));
        assert_eq!(j["summary"]["stationarity"]["warnings"].as_array().unwrap().len(), 0, "{engine}: {}", j["summary"]["stationarity"]);
        assert!(d.stdout().contains("steady state"), "{}", d.stdout());

        let c = run(1, &[&base[..], &["--warmup", "0"]].concat());
        let jc = ok(&c);
        assert_eq!(jc["summary"]["warmup"]["state"], "cold", "{engine}");
        assert!(p50(jc) >= 6.0, "{engine}: cold: the slow first generate() is what gets measured: {}", p50(jc));
    }
}

/// The stationarity check: silent on a steady script; fires when the engine was still changing at
/// the clock (two slow generate()s: the first two warm-up runs agree, the measured run is 3×
/// faster) and when the ITL drifts within the run (scripted growth per step); the state stays ok.
#[test]
fn stationarity_warnings_fire_on_scripted_change_and_drift_only() {
    // The steady run at 20 % (scheduling noise on a loaded machine is not drift); the others at the default 5 %.
    let steady = run(1, &["--engine", "mock", "--engine-options", r#"{"token_us": 2000}"#, "--prompt-tokens", "4", "--generated-tokens", "60", "--warmup-tolerance", "20"]);
    let js = ok(&steady);
    assert_eq!(js["summary"]["stationarity"]["warnings"].as_array().unwrap().len(), 0, "{}", js["summary"]["stationarity"]);
    assert!(!steady.stdout().contains("not stationary"), "{}", steady.stdout());

    let changed = run(1, &["--engine", "mock", "--engine-options", r#"{"token_us": 2000, "slow_generates": 2, "slow_factor": 3}"#, "--prompt-tokens", "4", "--generated-tokens", "30"]);
    let jc = ok(&changed);
    assert_eq!(jc["status"]["state"], "ok");
    let st = &jc["summary"]["stationarity"];
    assert!(st["vs_last_warmup_pct"].as_f64().unwrap() < -50.0, "{st}");
    assert!(st["warnings"][0].as_str().unwrap().contains("differs"), "{st}");
    assert!(changed.stdout().contains("warning: not stationary: the measured ITL p50"), "{}", changed.stdout());

    // 1 ms + 0.1 ms per step over 40 steps: the last tenth is ~4× the first.
    let drift = run(1, &["--engine", "mock", "--engine-options", r#"{"token_us": 1000, "token_us_growth": 100}"#, "--prompt-tokens", "4", "--generated-tokens", "40"]);
    let jd = ok(&drift);
    let st = &jd["summary"]["stationarity"];
    assert!(st["first_to_last_tenth_pct"].as_f64().unwrap() > 100.0, "{st}");
    assert!(st["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("drifts")), "{st}");

    // compare shows it.
    let out = Command::new(BIN).arg("compare").arg(&steady.path).arg(&changed.path).arg(&drift.path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = text.lines().find(|l| l.starts_with("not stationary")).unwrap_or_else(|| panic!("no stationarity row:\n{text}"));
    assert!(row.contains("none") && row.contains("% vs warm-up") && row.contains("% drift"), "{row}");
    assert!(text.lines().any(|l| l.starts_with("warm-up") && l.contains("steady")), "{text}");
}

/// launch/tp-sweep.sh: one JSON per TP degree and the compare table, on the cpu engine.
#[test]
fn tp_sweep_script_runs_each_degree_and_compares() {
    let _guard = MPI.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/launch/tp-sweep.sh");
    let sweep = |tps: &str| {
        Command::new("timeout")
            .args(["-k", "5", "180", "bash", script, "-t", tps, "-o"])
            .arg(&out)
            .args(["--", "--engine", "cpu", "--model", "tiny", "--prompt-tokens", "16", "--generated-tokens", "4"])
            .env("TPPROF", BIN)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
            .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
            .output()
            .unwrap()
    };
    let r = sweep("1 2");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for tp in [1, 2] {
        let j: Value = serde_json::from_str(&std::fs::read_to_string(out.join(format!("tp{tp}-default.json"))).unwrap()).unwrap();
        check_schema(&j);
        assert_eq!(j["config"]["world_size"], tp);
    }
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| | A (baseline) | B |") && md.contains("1 rank(s)") && md.contains("2 rank(s)"), "{md}");
    // tiny's 4 KV heads do not split over 3 ranks: the sweep stops there and names the run.
    let bad = sweep("3");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("error: the TP=3 default run failed"), "{}", String::from_utf8_lossy(&bad.stderr));
    let log = std::fs::read_to_string(out.join("tp3-default.log")).unwrap();
    assert!(log.contains("does not divide"), "the run's own error is in its log: {log}");
    // One degree: its JSON and no comparison (compare needs two files), still a success.
    std::fs::remove_dir_all(&out).unwrap();
    let one = sweep("2");
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    assert!(out.join("tp2-default.json").is_file() && !out.join("compare.md").exists());
}

/// Known truth: the mock's decode step k waits 1000 + 200·k µs (a cost that grows with the
/// context). The per-tenth medians must follow the script: never below it (busy-waits end after
/// their deadline), not far above it, and rising by what it adds (margins for a loaded machine).
#[test]
fn itl_by_tenth_of_decode_follows_a_growing_step_cost() {
    let r = run(1, &["--engine", "mock", "--engine-options", r#"{"token_us": 1000, "token_us_growth": 200}"#, "--prompt-tokens", "4", "--generated-tokens", "41"]);
    let j = ok(&r);
    let tenths: Vec<f64> = j["summary"]["itl_p50_by_tenth_ms"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(tenths.len(), 10, "{tenths:?}");
    for (d, &ms) in tenths.iter().enumerate() {
        // Steps 4d+1..=4d+4; the median of four is the lower middle, step 4d+2.
        let scripted_ms = (1000.0 + 200.0 * (4 * d + 2) as f64) / 1e3;
        assert!(ms >= scripted_ms * 0.999 && ms <= scripted_ms + 3.0, "tenth {d}: {ms} ms for a scripted {scripted_ms} ms ({tenths:?})");
    }
    // The script adds 200 µs × 36 steps = 7.2 ms between the first and the last tenth's medians.
    assert!(tenths[9] - tenths[0] >= 0.5 * 7.2, "{tenths:?}");
    assert!(r.stdout().contains("ITL p50 by tenth of the decode steps (rank 0)"), "{}", r.stdout());
}
