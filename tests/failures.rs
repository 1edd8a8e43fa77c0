//! Bad input and faults: one-line errors, a non-zero exit on every rank within seconds, no hang, no overwritten result.

use crate::util::*;

#[test]
fn bad_arguments_are_one_line_errors() {
    rejected(1, &["--slo", "ttft=5"], 2, "--slo takes KEY=MS pairs");
    rejected(1, &["--slo", "tpot_ms=-1"], 2, "--slo takes KEY=MS pairs");
    rejected(2, &["--engine", "tensorrt"], 2, "unknown engine `tensorrt`");
    rejected(2, &["--model", "gigantic"], 2, "gigantic");
    rejected(2, &["--generated-tokens", "0"], 2, "--generated-tokens must be a whole number ≥ 1 (got 0)");
    rejected(1, &["--prompt-tokens", "-3"], 2, "--prompt-tokens must be a whole number ≥ 1 (got -3)");
    rejected(2, &["--batch", "0"], 2, "--batch");
    rejected(2, &["--engine-options", "not json"], 2, "--engine-options must be a JSON object");
    // Sizes are estimated before anything is allocated (these aborted with "memory allocation of
    // … bytes failed", SIGABRT and interleaved backtraces).
    rejected(2, &["--engine", "mock", "--generated-tokens", "4294967295"], 2, "of token records would need");
    rejected(2, &["--engine", "mock", "--batch", "4294967295"], 2, "of token records would need");
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, r#"{"vocab_size": 1000, "hidden_size": 1000000000, "intermediate_size": 4000, "num_hidden_layers": 2, "num_attention_heads": 8,
        "num_key_value_heads": 2, "max_position_embeddings": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true}"#).unwrap();
    rejected(2, &["--engine", "cpu", "--model", huge.to_str().unwrap()], 2, "the cpu engine's f32 weights");
    rejected(3, &["--model", "tiny"], 2, "does not divide");
    rejected(
        1,
        &["--model", "tiny", "--prompt-tokens", "2000", "--generated-tokens", "100"],
        2,
        "exceeds the model's context of 2048",
    );
}

#[test]
fn bad_adapters_are_one_line_errors() {
    // The same failure on every rank is said once: "all 2 ranks: …".
    // Bad input, as the README lists it: exit 2 (a missing adapter exited 1), and no result file.
    rejected(2, &["--engine", "/nonexistent/libnothing.so"], 2, "all 2 ranks: ");
    rejected(2, &["--engine", "/nonexistent/libnothing.so"], 2, "does not exist");
    rejected(
        2,
        &["--engine", concat!("adapter:", env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")],
        2,
        "could not load adapter",
    );
    rejected(2, &["--engine", env!("TPPROF_MOCK_ADAPTER_BAD_ABI")], 2, "ABI version 42");
    rejected(2, &["--engine", env!("TPPROF_MOCK_ADAPTER_NO_GENERATE")], 2, "does not export `tpprof_generate`");
    // An adapter's own create() error reaches the user as one line too.
    rejected(
        2,
        &["--engine", "mock", "--engine-options", r#"{"gpu_kernels_per_step": 2}"#],
        2,
        "gpu_kernels_per_step needs gpu_alloc_mib",
    );
    // A vocabulary that truncated to 0 made a rank panic in `% vocab` and the job hang.
    rejected(
        2,
        &["--engine", "mock", "--engine-options", r#"{"vocab_size": 4294967296}"#],
        2,
        "the engine's vocabulary size is 4294967296",
    );
}

#[test]
fn unknown_mock_options_are_bad_input() {
    // A misspelt option was ignored: the run measured something else than asked, with status ok.
    let r = rejected(
        2,
        &["--engine", "mock", "--engine-options", r#"{"token_usx": 5}"#],
        2,
        "unknown engine option \"token_usx\"",
    );
    let line = &r.error_lines()[0];
    assert!(line.contains("invalid argument") && line.contains("this adapter knows topology, vocab_size"), "{line}");
    // Known keys, an array value among them, still pass.
    let r = run(
        1,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 5, "gpu_alloc_mib": [0], "vocab_size": 1000}"#,
            "--generated-tokens",
            "3",
        ],
    );
    ok(&r);
}

#[test]
fn hostile_adapter_values_are_not_ok() {
    // A topology the ABI does not define was read as ALL_RANKS: now a failed create, bad input.
    let r = rejected(2, &["--engine", "mock", "--engine-options", r#"{"bad_topology": 7}"#], 2, "reported topology 7");
    assert!(
        r.error_lines()[0].contains("mock (") && r.error_lines()[0].contains("libtpprof_mock.so"),
        "names the adapter: {}",
        r.error_lines()[0]
    );
    // Token ids outside the engine's vocabulary and finish reason 99 were status ok.
    let gen = ["--batch", "2", "--prompt-tokens", "4", "--generated-tokens", "6"];
    for (opts, needle) in [
        (
            r#"{"vocab_size": 1000, "bad_token_at_step": 3}"#,
            "rank 0: sample 0 step 3: token id 1000 outside the vocabulary [0, 1000)",
        ),
        (
            r#"{"bad_finish_reason": 99}"#,
            "rank 0: sample 0 step 5: finish reason 99, which the engine ABI does not define",
        ),
    ] {
        let r = run(2, &[&["--engine", "mock", "--engine-options", opts][..], &gen[..]].concat());
        assert_eq!(r.code(), 3, "exit code for {opts}\nstderr:\n{}", r.stderr());
        let j = r.json();
        assert_eq!(j["status"]["state"], "incomplete", "{opts}: {}", j["status"]);
        let reason = j["status"]["reason"].as_str().unwrap();
        assert!(reason.contains(needle), "{opts}: {reason}");
        assert!(reason.contains("rank 1: "), "every rank checks its own tokens: {reason}");
    }
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

    let r = rejected(
        4,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"fail_rank": 2, "fail_at_token": 5, "token_us": 100}"#,
            "--generated-tokens",
            "20",
        ],
        1,
        "rank 2: ",
    );
    assert!(r.error_lines()[0].contains("injected failure at decode step 5 on rank 2"));
    let j = r.json();
    assert_eq!(j["status"]["failed_rank"], 2);
    assert!(j["summary"].is_null());
}

/// A rank killed outright (SIGKILL: nothing in its process sees it) ends the job, and rank 0 still
/// writes what it measured, naming the rank as lost.
#[test]
fn a_killed_rank_ends_the_job() {
    let r = run(
        2,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"crash_rank": 1, "crash_at_token": 3, "crash_signal": 9, "token_us": 1000}"#,
            "--generated-tokens",
            "50",
        ],
    );
    assert_ne!(r.code(), 0);
    assert!(r.elapsed < Duration::from_secs(60), "took {:?}", r.elapsed);
    // mpirun sends SIGTERM to rank 0, which asks rank 1 for its report: no answer, so rank 1 is
    // named as lost, and what rank 0 measured is kept.
    let j = r.json();
    let s = &j["status"];
    assert_eq!((s["state"].as_str(), s["failed_rank"].as_i64()), (Some("failed"), Some(1)), "{s}");
    assert!(s["reason"].as_str().unwrap().starts_with("rank 1 lost"), "{s}");
    assert_eq!(s["interruption"]["not_gathered"], serde_json::json!([1]), "{s}");
    assert_eq!(j["ranks"].as_array().unwrap().len(), 1, "rank 0's own report");
    let left: Vec<_> = std::fs::read_dir(r.path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "only the result: {left:?}");
}

/// An engine that ends its own process — exit(), _exit(), _Exit() or abort(), from the thread that
/// called generate() or from a worker thread, on rank 0 or another — does not choose the job's
/// exit code (its 3 read as "incomplete", its 0 as success with no JSON): every rank exits 1, and
/// rank 0 writes a `failed` JSON naming the rank and the call, with every rank's measurements up
/// to it (the ending rank's too). Fails without the binary's exit interposers and SIGABRT hold.
#[test]
fn an_engine_that_ends_its_own_process_fails_the_run_with_exit_1() {
    let cases: [(&str, i64, &str, i64); 5] = [
        (r#""exit_rank": 1, "exit_at_token": 5, "exit_code": 3"#, 1, "_exit(3)", 3),
        (r#""exit_rank": 0, "exit_at_token": 5, "exit_code": 3, "exit_call": "exit""#, 0, "exit(3)", 3),
        (
            r#""exit_rank": 1, "exit_at_token": 5, "exit_code": 0, "exit_call": "_Exit", "callback_thread": 1"#,
            1,
            "_exit(0)",
            0,
        ),
        (r#""exit_rank": 0, "exit_at_token": 5, "exit_code": 2, "callback_thread": 1"#, 0, "_exit(2)", 2),
        (r#""crash_rank": 1, "crash_at_token": 5"#, 1, "abort()", 134),
    ];
    for (opts, rank, call, code) in cases {
        let r = run(
            2,
            &[
                "--engine",
                "mock",
                "--engine-options",
                &format!(r#"{{{opts}, "token_us": 1000}}"#),
                "--warmup",
                "0",
                "--generated-tokens",
                "50",
            ],
        );
        assert_eq!(r.code(), 1, "{opts}: {}", r.stderr());
        // A hang guard, as in the other fault tests (the hold is 6 s at most), not a timing.
        assert!(r.elapsed < Duration::from_secs(60), "{opts}: took {:?}", r.elapsed);
        let j = r.json();
        let s = &j["status"];
        assert_eq!((s["state"].as_str(), s["failed_rank"].as_i64()), (Some("failed"), Some(rank)), "{opts}: {s}");
        let reason = s["reason"].as_str().unwrap();
        assert!(
            reason.starts_with(&format!("rank {rank}'s process was ended from inside by {call} in measured run")),
            "{opts}: {reason}"
        );
        let i = &s["interruption"];
        assert_eq!(i["cause"], "process_end", "{opts}: {i}");
        assert_eq!(i["process_end"], serde_json::json!({"rank": rank, "call": call, "code": code}), "{opts}: {i}");
        assert_eq!(i["not_gathered"], serde_json::json!([]), "{opts}: {i}");
        // Both ranks' reports, the ending rank's with the tokens it had produced (the mock ends at
        // decode step 5: the prefill token and decode steps 1..=4).
        let ranks = j["ranks"].as_array().unwrap();
        assert_eq!(ranks.len(), 2, "{opts}");
        let ended = ranks.iter().find(|x| x["rank"] == rank).unwrap();
        assert_eq!(ended["tokens_generated"], 5, "{opts}: {ended}");
        assert!(j["summary"].is_null(), "{opts}");
        // One line from rank 0, nothing left beside the result.
        assert_eq!(r.stderr().matches("was ended from inside").count(), 1, "{opts}: {}", r.stderr());
        let left: Vec<_> =
            std::fs::read_dir(r.path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "{opts}: only the result: {left:?}");
    }
}

#[test]
fn a_hung_engine_is_stopped_by_the_timeout() {
    // 10 s per token, 1 s budget.
    let r = run(
        2,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 10000000}"#,
            "--generated-tokens",
            "5",
            "--timeout",
            "1",
        ],
    );
    assert_ne!(r.code(), 0);
    assert!(r.elapsed < Duration::from_secs(30), "took {:?}", r.elapsed);
    // One line, from rank 0, naming the ranks that made no progress (here: both, each stuck in its
    // first decode step), not a line per rank.
    let stderr = r.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("did not finish within --timeout 1.0 s")).collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr());
    assert!(
        lines[0].starts_with("error: the run did not finish within --timeout 1.0 s: ranks 0, 1 made no progress"),
        "{}",
        lines[0]
    );
    // The failed JSON keeps what was measured; nothing else is left beside --out (a 0-byte
    // .r.json.XXXXXX.tmp was left every time).
    let j = r.json();
    let s = &j["status"];
    assert_eq!((s["state"].as_str(), s["failed_rank"].as_i64()), (Some("failed"), Some(0)), "{s}");
    assert_eq!(s["interruption"]["cause"], "timeout", "{s}");
    assert_eq!(s["failures"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(j["ranks"].as_array().unwrap().len(), 2, "both ranks answered");
    let left: Vec<_> = std::fs::read_dir(r.path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "left behind: {left:?}");
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
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
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
    rejected(
        1,
        &["--cupti", "--trace-kernel-steps", "-1"],
        2,
        "--trace-kernel-steps must be a whole number ≥ 0 (got -1)",
    );
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

/// A closed stdout (`tpprof run ... | head -1`) is a normal end: no panic, the run's exit code, the
/// JSON written; the same for `report` and `compare`.
#[test]
fn a_closed_stdout_is_a_normal_end() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let closed = |args: &[&str]| {
        let mut child =
            Command::new(crate::util::BIN).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take()); // the reader is gone before the first line
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = closed(&[
        "run",
        "--engine",
        "mock",
        "--prompt-tokens",
        "4",
        "--generated-tokens",
        "4",
        "--no-progress",
        "--out",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    assert!(json.is_file(), "the JSON is written");
    let (code, err) = closed(&["report", json.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, err) = closed(&["compare", json.to_str().unwrap(), json.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A panic on one rank ends the whole job within seconds (it used to hang: the panicking rank sat
/// in MPI_Finalize while the other waited in a collective): one line naming the rank and the place,
/// MPI_Abort, no backtrace.
#[test]
fn a_panic_on_one_rank_ends_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let r = crate::util::run_env(
        2,
        &["--engine", "mock", "--prompt-tokens", "4", "--generated-tokens", "4"],
        &path,
        dir,
        &[("TPPROF_TEST_PANIC_RANK", "1")],
    );
    assert_ne!(r.code(), 0);
    assert!(r.elapsed < std::time::Duration::from_secs(30), "took {:?}", r.elapsed);
    let lines: Vec<String> = r.stderr().lines().filter(|l| l.contains("internal error")).map(str::to_string).collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr());
    assert!(
        lines[0].starts_with("error: rank 1: internal error at src/run.rs:")
            && lines[0].contains("TPPROF_TEST_PANIC_RANK"),
        "{}",
        lines[0]
    );
    assert!(!r.stderr().contains("stack backtrace"), "{}", r.stderr());
}

/// `report` reads only regular files, with a size limit: /dev/zero was read without end, a FIFO
/// blocked it. Each gets one line and exit 2, at once.
#[test]
fn report_reads_only_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let sparse = dir.path().join("huge.json");
    std::fs::File::create(&sparse).unwrap().set_len((1 << 30) + 1).unwrap();
    for (file, needle) in [
        (std::path::Path::new("/dev/zero"), "is not a regular file"),
        (&fifo, "is not a regular file"),
        (&sparse, "more than any result JSON"),
    ] {
        let t = std::time::Instant::now();
        let out = std::process::Command::new("timeout")
            .arg("20")
            .arg(crate::util::BIN)
            .arg("report")
            .arg(file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{}: {err}", file.display());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
}

/// Ranks started with different options (an MPMD launch) stop at once with one line naming the rank
/// and the first difference (they hung, or died in Open MPI's MPI_ERR_TRUNCATE).
#[test]
fn ranks_with_different_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let rank = |tokens: &str, model: &str| -> Vec<String> {
        [
            "run",
            "--engine",
            "cpu",
            "--model",
            model,
            "--prompt-tokens",
            "4",
            "--generated-tokens",
            tokens,
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    for (b, needle) in [
        (rank("40", "tiny"), "--generated-tokens = 40 where rank 0 has 4"),
        (rank("4", "small"), "--model = \"small\" where rank 0 has \"tiny\""),
    ] {
        let t = std::time::Instant::now();
        let o = crate::util::mpirun(1)
            .arg(crate::util::BIN)
            .args(rank("4", "tiny"))
            .args([":", "-n", "1"])
            .arg(crate::util::BIN)
            .args(&b)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains("rank 1 has ") && lines[0].contains(needle), "{}", lines[0]);
        assert!(t.elapsed() < std::time::Duration::from_secs(30));
        assert!(!out.exists(), "nothing measured, nothing written");
    }
}

/// A slow run under `mpirun -n 2` (the mock at 50 ms per token, 400 tokens, no warm-up), started
/// and left running once rank 0 says the measured run began and tokens have flowed for a second.
struct Slow {
    child: std::process::Child,
    stderr: std::sync::Arc<Mutex<String>>,
    dir: tempfile::TempDir,
    path: PathBuf,
    _guard: std::sync::MutexGuard<'static, ()>,
}

impl Slow {
    fn start() -> Slow {
        Slow::start_with("mock", r#"{"token_us": 50000}"#)
    }

    /// 400 tokens of 50 ms on 2 ranks of `engine` (its options must script the 50 ms).
    fn start_with(engine: &str, options: &str) -> Slow {
        use std::io::BufRead;
        let guard = MPI.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let mut child = Command::new("mpirun")
            .args(["-n", "2", "--oversubscribe", "--bind-to", "none", BIN, "run", "--engine", engine])
            .args(["--engine-options", options, "--prompt-tokens", "4"])
            .args(["--generated-tokens", "400", "--warmup", "0", "--out"])
            .arg(&path)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
            .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start mpirun");
        let stderr = std::sync::Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (pipe, text) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains("generating") {
                    let _ = tx.send(());
                }
                let mut t = text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        });
        let mut slow = Slow { child, stderr, dir, path, _guard: guard };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            slow.kill();
            panic!("the measured run did not begin:\n{}", slow.stderr());
        }
        std::thread::sleep(Duration::from_secs(1));
        slow
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The pid of a rank of this job (its command line names our --out, its environment its rank).
    fn rank_pid(&self, rank: i32) -> i32 {
        let out = self.path.to_str().unwrap();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            let has = |hay: &[u8], needle: &[u8]| hay.split(|&b| b == 0).any(|s| s == needle);
            if has(&cmd, out.as_bytes()) && has(&env, format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes()) {
                return pid;
            }
        }
        panic!("no process of rank {rank} for {out}");
    }

    fn signal(pid: i32, sig: i32) {
        // SAFETY: kill(2) on a process this test started.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    /// Waits for mpirun (at most `within`): its exit code.
    fn wait(&mut self, within: Duration) -> Option<i32> {
        let t = Instant::now();
        while t.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The interrupted JSON: schema, typed mirror, `tpprof report` reads it; nothing else is left
    /// beside it (no temp file).
    fn result(&self) -> Value {
        let text = std::fs::read_to_string(&self.path)
            .unwrap_or_else(|e| panic!("no JSON at {} ({e}):\n{}", self.path.display(), self.stderr()));
        let j: Value = serde_json::from_str(&text).unwrap();
        check_schema(&j);
        crate::json::check_fields(&j);
        let left: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["r.json".to_string()], "only the result beside --out");
        let report = Command::new(BIN).arg("report").arg(&self.path).output().unwrap();
        assert_eq!(report.status.code(), Some(0), "{}", String::from_utf8_lossy(&report.stderr));
        assert!(String::from_utf8_lossy(&report.stdout).contains("status: INTERRUPTED"));
        j
    }
}

impl Drop for Slow {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGTERM to mpirun (which sends SIGTERM to every rank, SIGKILL a second later): an
/// `interrupted` JSON naming the signal, with both ranks' tokens so far, within seconds.
#[test]
fn sigterm_to_mpirun_leaves_an_interrupted_json() {
    let mut run = Slow::start();
    let t = Instant::now();
    Slow::signal(run.child.id() as i32, libc::SIGTERM);
    let code = run.wait(Duration::from_secs(15));
    assert!(code.is_some_and(|c| c != 0), "exit {code:?} after {:?}\n{}", t.elapsed(), run.stderr());
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    let j = run.result();
    let s = &j["status"];
    assert_eq!(s["state"], "interrupted", "{s}");
    let i = &s["interruption"];
    assert_eq!(i["signal"], "SIGTERM", "{i}");
    assert_eq!(i["not_gathered"], serde_json::json!([]), "{i}");
    let r0 = &j["ranks"][0];
    assert_eq!(r0["rank"], 0);
    let tokens = u(&r0["tokens_generated"]);
    assert!(tokens > 0 && tokens < 400, "rank 0's tokens so far: {tokens}");
    // The histograms hold the measured run up to the signal: one gap per token after the first.
    assert_eq!(u(&r0["decode"]["count"]), tokens - 1);
    assert!(u(&r0["memory"]["samples"]) >= 1);
    let reached = &i["reached"][0];
    assert_eq!(
        (reached["phase"].as_str(), reached["measured_run_started"].as_bool()),
        (Some("measured run"), Some(true))
    );
    assert!(j["summary"].is_null());
    let stderr = run.stderr();
    assert!(stderr.contains("error: interrupted by SIGTERM"), "{stderr}");
}

/// An engine that installs its own SIGINT / SIGTERM handlers (a Python driver's signal.signal, as
/// serving libraries do) does not take the interrupt from the run: tpprof takes its handlers back
/// (one warning) and SIGINT to a rank still ends the run with an interrupted JSON. Without that,
/// the driver's handler swallowed the signal and the run went on to the end.
#[test]
fn an_engine_that_installs_signal_handlers_does_not_take_the_interrupt() {
    if !python_available() {
        return;
    }
    let mut run = Slow::start_with("python:test", r#"{"token_us": 50000, "signal_handlers": true}"#);
    let t = Instant::now();
    Slow::signal(run.rank_pid(1), libc::SIGINT);
    let code = run.wait(Duration::from_secs(15));
    assert_eq!(code, Some(130), "after {:?}\n{}", t.elapsed(), run.stderr());
    let j = run.result();
    let i = &j["status"]["interruption"];
    assert_eq!((i["signal"].as_str(), i["signal_rank"].as_i64()), (Some("SIGINT"), Some(1)), "{i}");
    let stderr = run.stderr();
    assert_eq!(
        stderr.matches("warning: the engine replaced tpprof's handler of SIGINT, SIGTERM").count(),
        1,
        "{stderr}"
    );
}

/// SIGINT to one rank other than 0: it tells rank 0, which gathers both ranks' figures and writes;
/// mpirun exits 130 (128 + SIGINT), the code every rank leaves with.
#[test]
fn sigint_to_one_rank_leaves_an_interrupted_json() {
    let mut run = Slow::start();
    let t = Instant::now();
    Slow::signal(run.rank_pid(1), libc::SIGINT);
    let code = run.wait(Duration::from_secs(15));
    assert_eq!(code, Some(130), "after {:?}\n{}", t.elapsed(), run.stderr());
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    let j = run.result();
    let i = &j["status"]["interruption"];
    assert_eq!((i["signal"].as_str(), i["signal_rank"].as_i64()), (Some("SIGINT"), Some(1)), "{i}");
    assert_eq!(i["signalled"], serde_json::json!([{"rank": 1, "signal": "SIGINT"}]), "{i}");
    let ranks = j["ranks"].as_array().unwrap();
    assert_eq!(ranks.len(), 2, "both ranks gathered");
    assert!(
        ranks.iter().all(|r| u(&r["tokens_generated"]) > 0),
        "{:?}",
        ranks.iter().map(|r| &r["tokens_generated"]).collect::<Vec<_>>()
    );
}
