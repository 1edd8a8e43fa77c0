//! How the integration tests run tpprof: the real binary under `mpirun -n 1/2/4` (or as a
//! singleton), one mpirun at a time, every JSON checked against results/schema.json and against
//! the typed mirror in `json.rs` (unknown fields fail); and the checks most tests share.

pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::process::{Command, Output};
pub(crate) use std::sync::Mutex;
pub(crate) use std::time::{Duration, Instant};

pub(crate) use serde_json::Value;

/// One mpirun at a time: the tests share a small machine, and the mock's timing test must not
/// compete with a dozen other jobs.
pub(crate) static MPI: Mutex<()> = Mutex::new(());

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_tpprof");

pub(crate) struct Run {
    pub(crate) out: Output,
    pub(crate) json: Option<Value>,
    pub(crate) elapsed: Duration,
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
}

impl Run {
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub(crate) fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub(crate) fn json(&self) -> &Value {
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("no JSON written\nstdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr()))
    }
    /// The lines tpprof printed as errors (mpirun adds its own chatter around them).
    pub(crate) fn error_lines(&self) -> Vec<String> {
        self.stderr().lines().filter(|l| l.starts_with("error:")).map(str::to_string).collect()
    }
}

pub(crate) fn mpirun(n: usize) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-k", "5", "120", "mpirun", "-n", &n.to_string(), "--oversubscribe", "--bind-to", "none"]);
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    c
}

/// Runs `tpprof run ARGS --out <tmp>/r.json` on n ranks (n = 0: singleton, no mpirun).
pub(crate) fn run(n: usize, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    run_to(n, args, &path, dir)
}

pub(crate) fn run_to(n: usize, args: &[&str], path: &Path, dir: tempfile::TempDir) -> Run {
    run_env(n, args, path, dir, &[])
}

/// As run_to, with extra environment variables for every rank (mpirun's local ranks inherit them).
pub(crate) fn run_env(n: usize, args: &[&str], path: &Path, dir: tempfile::TempDir, env: &[(&str, &str)]) -> Run {
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
        crate::json::check_fields(j);
    }
    Run { out, json, elapsed, _dir: dir, path: path.to_path_buf() }
}

pub(crate) fn check_schema(j: &Value) {
    let schema: Value = serde_json::from_str(include_str!("../results/schema.json")).unwrap();
    let v = jsonschema::validator_for(&schema).expect("schema.json is a valid JSON Schema");
    let errors: Vec<String> = v.iter_errors(j).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(errors.is_empty(), "JSON does not match results/schema.json:\n{}", errors.join("\n"));
}

pub(crate) fn ok(r: &Run) -> &Value {
    assert_eq!(r.code(), 0, "exit code\nstdout:\n{}\nstderr:\n{}", r.stdout(), r.stderr());
    let j = r.json();
    assert_eq!(j["status"]["state"], "ok", "{}", j["status"]);
    j
}

pub(crate) fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// The invariants every successful run must hold.
pub(crate) fn check_counts(j: &Value, ranks: usize, batch: u64, gen: u64) {
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

pub(crate) fn tokens(j: &Value) -> Vec<Vec<i64>> {
    j["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect())
        .collect()
}

/// Bad input: a one-line error naming the cause, non-zero exit on every rank, within seconds, and
/// no JSON (or a `failed` one).
pub(crate) fn rejected(n: usize, args: &[&str], code: i32, needle: &str) -> Run {
    let r = run(n, args);
    assert_eq!(r.code(), code, "exit code for {args:?}\nstderr:\n{}", r.stderr());
    let errors = r.error_lines();
    assert_eq!(errors.len(), 1, "exactly one error line for {args:?}, got:\n{}", r.stderr());
    assert!(errors[0].contains(needle), "error for {args:?} should mention {needle:?}: {}", errors[0]);
    assert!(r.elapsed < Duration::from_secs(60), "took {:?}", r.elapsed);
    if let Some(j) = &r.json {
        assert_eq!(j["status"]["state"], "failed");
    }
    // Bad input is found before anything is measured: it leaves no result file.
    if code == 2 {
        assert!(r.json.is_none() && !r.path.exists(), "bad input wrote {} for {args:?}", r.path.display());
    }
    assert!(!r.stderr().contains("panicked"), "{}", r.stderr());
    r
}

/// The Python engine needs a CPython with libpython*.so; CI machines have one (else: skipped).
pub(crate) fn python_available() -> bool {
    match tpprof::engine::python::find_libpython(None) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: no usable libpython ({e})");
            false
        }
    }
}

pub(crate) const MOCK_EXECUTOR: &str = env!("TPPROF_MOCK_EXECUTOR_ADAPTER");

/// `--engine <mock executor .so> --engine-options OPTS` followed by `rest`.
pub(crate) fn mock_executor(opts: &str, rest: &[&str]) -> Vec<String> {
    let mut v: Vec<String> =
        ["--engine", MOCK_EXECUTOR, "--engine-options", opts].iter().map(|s| s.to_string()).collect();
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

pub(crate) fn run_mx(n: usize, opts: &str, rest: &[&str]) -> Run {
    let args = mock_executor(opts, rest);
    run(n, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

pub(crate) fn rejected_mx(n: usize, opts: &str, rest: &[&str], needle: &str) -> Run {
    let args = mock_executor(opts, rest);
    rejected(n, &args.iter().map(String::as_str).collect::<Vec<_>>(), 1, needle)
}
