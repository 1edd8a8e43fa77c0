//! The Hugging Face driver (`--engine python:hf`) on the CPU: the real `tpprof` binary, the `tiny`
//! Qwen2 preset, `"device": "cpu"` (gloo). It needs an interpreter with torch and transformers
//! (`$TPPROF_TEST_HF_PYTHON`, else `python3` on PATH), which CI does not install: the test is
//! `#[ignore]`d, so `cargo test` lists it as ignored (never as a pass), and where torch exists it
//! runs with `cargo test --release --test python_hf -- --ignored` — then a missing torch fails it.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tpprof");

/// The interpreter to use; panics with the reason where torch/transformers are missing (the test
/// was asked for explicitly).
fn hf_python() -> String {
    let py = std::env::var("TPPROF_TEST_HF_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into());
    let probe = Command::new("timeout")
        .args(["120", &py, "-c", "import torch, transformers; print(torch.__version__, transformers.__version__)"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            panic!(
                "cannot run the python:hf test: `{py}` cannot import torch and transformers ({})",
                err.lines().last().unwrap_or("").trim()
            );
        }
        Err(e) => {
            panic!("cannot run the python:hf test: cannot run `{py}` ({e})");
        }
    }
    let path = match Command::new(&py).args(["-c", "import sys; print(sys.executable)"]).output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => {
            panic!("cannot run the python:hf test: cannot run `{py}` ({e})");
        }
    };
    if let Err(e) = tpprof::engine::python::find_libpython(Some(Path::new(&path))) {
        panic!("cannot run the python:hf test: no usable libpython for {path} ({e})");
    }
    path
}

struct Run {
    out: Output,
    json: Option<Value>,
    elapsed: Duration,
}

impl Run {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn ok(&self) -> &Value {
        assert_eq!(
            self.out.status.code(),
            Some(0),
            "exit code\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&self.out.stdout),
            self.stderr()
        );
        let j = self.json.as_ref().expect("a JSON");
        assert_eq!(j["status"]["state"], "ok", "{}", j["status"]);
        j
    }
    fn error_lines(&self) -> Vec<String> {
        self.stderr().lines().filter(|l| l.starts_with("error:")).map(str::to_string).collect()
    }
}

/// `tpprof run ARGS` on n ranks (0: singleton, no mpirun).
fn run(n: usize, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", "300"]);
    if n > 0 {
        cmd.args(["mpirun", "-n", &n.to_string(), "--oversubscribe", "--bind-to", "none"])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
            .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    }
    cmd.arg(BIN).arg("run").args(args).arg("--out").arg(&path);
    let t = Instant::now();
    let out = cmd.output().expect("run tpprof");
    let elapsed = t.elapsed();
    let json = std::fs::read_to_string(&path).ok().map(|s| serde_json::from_str(&s).expect("the JSON parses"));
    Run { out, json, elapsed }
}

fn tokens(j: &Value) -> Vec<Vec<i64>> {
    j["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect())
        .collect()
}

fn weights(j: &Value, rank: usize) -> u64 {
    j["ranks"][rank]["engine_memory"]["weights_bytes"].as_u64().expect("weights_bytes")
}

#[test]
#[ignore = "needs torch and transformers (CI has neither): cargo test --release --test python_hf -- --ignored, with TPPROF_TEST_HF_PYTHON=/path/to/python"]
fn hf_driver_on_cpu_tensor_parallel_exact_length_and_errors() {
    let py = hf_python();
    let opts = |extra: &str| format!(r#"{{"preset": "tiny", "device": "cpu", "python": "{py}"{extra}}}"#);
    // Untied lm_head, so its vocabulary sharding and logits all_gather are exercised too.
    let base = opts(r#", "config": {"tie_word_embeddings": false}"#);
    let args = |o: &str| -> Vec<String> {
        [
            "--engine",
            "python:hf",
            "--engine-options",
            o,
            "--batch",
            "2",
            "--prompt-tokens",
            "24",
            "--generated-tokens",
            "8",
            "--record-tokens",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args(&base);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();

    // One rank (no mpirun), then two ranks: tensor parallel must not change a greedy token.
    let one = run(0, &a);
    let j1 = one.ok();
    assert_eq!(j1["engine"]["kind"], "python");
    assert_eq!(j1["engine"]["details"]["tensor_parallel"], 1);
    let t1 = tokens(j1);
    assert_eq!(t1.len(), 2);
    for s in j1["samples"].as_array().unwrap() {
        assert_eq!(s["generated"], 8, "{s}");
        assert_eq!(s["finish_reason"], "length");
    }
    let two = run(2, &a);
    let j2 = two.ok();
    assert_eq!(j2["engine"]["details"]["tensor_parallel"], 2);
    for s in j2["samples"].as_array().unwrap() {
        assert_eq!(s["generated"], 8, "{s}");
        assert_eq!(s["ranks_agree"], true, "{s}");
    }
    assert_eq!(tokens(j2), t1, "TP=2 tokens differ from TP=1");
    // Each rank holds its shard: less than the whole model, both the same.
    assert!(weights(j2, 0) < weights(j1, 0), "{} vs {}", weights(j2, 0), weights(j1, 0));
    assert_eq!(weights(j2, 0), weights(j2, 1));
    for r in j2["ranks"].as_array().unwrap() {
        assert_eq!(r["tokens_generated"], 16, "{r}");
    }
    // The preset as tpprof defines it (tied embeddings: the lm_head stays replicated; random tied
    // weights repeat the last prompt token, so this checks that the path runs more than the math).
    let tied = args(&opts(""));
    let tied: Vec<&str> = tied.iter().map(String::as_str).collect();
    let (t_one, t_two) = (run(0, &tied), run(2, &tied));
    assert_eq!(tokens(t_two.ok()), tokens(t_one.ok()), "tied tiny: TP=2 tokens differ from TP=1");

    // EOS: make sample 0's fourth token the EOS id. Exact length ignores it; --allow-eos stops there.
    let eos = t1[0][3];
    if !t1[0][..3].contains(&eos) {
        let o = opts(&format!(r#", "config": {{"tie_word_embeddings": false, "eos_token_id": {eos}}}"#));
        let mut e = args(&o);
        e.push("--allow-eos".into());
        let e: Vec<&str> = e.iter().map(String::as_str).collect();
        let r = run(0, &e);
        assert_eq!(r.out.status.code(), Some(0), "{}", r.stderr());
        let j = r.json.as_ref().unwrap();
        assert_eq!(j["samples"][0]["finish_reason"], "eos", "{}", j["samples"][0]);
        assert_eq!(j["samples"][0]["generated"], 4);
        assert_eq!(tokens(j)[0], t1[0][..4]);
    }

    // Errors: one line naming the cause, every rank, non-zero exit, no hang.
    for (o, needle) in [
        (format!(r#"{{"preset": "qwen9", "device": "cpu", "python": "{py}"}}"#), "unknown preset 'qwen9'"),
        (format!(r#"{{"model_dir": "/nonexistent/model", "device": "cpu", "python": "{py}"}}"#), "no config.json"),
        (opts(r#", "dtpye": "fp16""#), "unknown option(s) dtpye"),
        (opts(r#", "config": {"num_key_value_heads": 1}"#), "not all divisible by world size 2"),
    ] {
        let e = ["--engine", "python:hf", "--engine-options", &o, "--prompt-tokens", "8", "--generated-tokens", "2"];
        let r = run(2, &e);
        assert_ne!(r.out.status.code(), Some(0), "{o}");
        let lines = r.error_lines();
        assert_eq!(lines.len(), 1, "one error line for {o}:\n{}", r.stderr());
        assert!(lines[0].contains("all 2 ranks: "), "the same error on both ranks, said once: {}", lines[0]);
        assert!(lines[0].contains(needle), "{} should mention {needle}", lines[0]);
        assert!(r.elapsed < Duration::from_secs(120), "took {:?}", r.elapsed);
    }
}
