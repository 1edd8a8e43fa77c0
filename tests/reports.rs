//! What users read: `tpprof report`, the trace, `tpprof compare`, results of earlier builds, the TP sweep script.

use crate::util::*;

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

/// `run --percentiles` prints, after the summary, the very figures `report --percentiles` reads
/// back from the saved JSON's histograms; the p50s are the summary's.
#[test]
fn run_prints_the_chosen_percentiles() {
    let args = ["--engine", "mock", "--engine-options", r#"{"token_us": 500}"#, "--prompt-tokens", "4"];
    let r = run(2, &[&args[..], &["--generated-tokens", "20", "--percentiles", "50,p99.99"]].concat());
    let j = ok(&r);
    let stdout = r.stdout();
    let block: String = stdout
        .lines()
        .skip_while(|l| !l.starts_with("chosen percentiles, ms"))
        .take_while(|l| !l.starts_with("JSON: "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(block.lines().count() == 6 && block.contains("p99.99"), "header, TTFT, ITL, 2 ranks:\n{stdout}");
    let itl = block.lines().find(|l| l.trim_start().starts_with("ITL ")).unwrap();
    let p50 = itl.split_whitespace().nth(1).unwrap();
    assert_eq!(p50, format!("{:.3}", j["summary"]["itl_ms"]["p50"].as_f64().unwrap()), "{itl}");
    let saved = Command::new(BIN).arg("report").arg(&r.path).args(["--percentiles", "50,99.99"]).output().unwrap();
    assert!(saved.status.success());
    assert!(String::from_utf8_lossy(&saved.stdout).contains(&block), "report reads the same figures back");
    rejected(1, &[&args[..], &["--percentiles", "0"]].concat(), 2, "--percentiles takes numbers in (0, 100]");
}

#[test]
fn trace_has_every_rank_token_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.json");
    let r = run(
        2,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 300}"#,
            "--batch",
            "2",
            "--prompt-tokens",
            "8",
            "--generated-tokens",
            "5",
            "--trace",
            trace.to_str().unwrap(),
        ],
    );
    ok(&r);
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    // The same trace gzip-compressed when its name ends in .gz (the token log too).
    let gz = dir.path().join("t.json.gz");
    let log = dir.path().join("tokens.csv.gz");
    let r = run(
        2,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 300}"#,
            "--batch",
            "2",
            "--prompt-tokens",
            "8",
            "--generated-tokens",
            "5",
            "--trace",
            gz.to_str().unwrap(),
            "--token-log",
            log.to_str().unwrap(),
        ],
    );
    ok(&r);
    let gunzip = |p: &std::path::Path| {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap()).read_to_string(&mut s).unwrap();
        s
    };
    let tz: Value = serde_json::from_str(&gunzip(&gz)).unwrap();
    assert_eq!(tz["traceEvents"].as_array().unwrap().iter().filter(|e| e["name"] == "token").count(), 2 * 2 * 5);
    assert_eq!(gunzip(&log).lines().count(), 1 + 2 * 2 * 5, "header + a row per token per rank");
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

#[test]
fn compare_puts_runs_side_by_side_against_the_baseline() {
    let a = run(
        1,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 1000}"#,
            "--prompt-tokens",
            "4",
            "--generated-tokens",
            "20",
        ],
    );
    let b = run(
        2,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 3000}"#,
            "--prompt-tokens",
            "4",
            "--generated-tokens",
            "21",
        ],
    );
    let (ja, jb) = (ok(&a), ok(&b));
    let out = Command::new(BIN).arg("compare").arg(&a.path).arg(&b.path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The legend names both files; the workload difference is pointed out.
    assert!(
        text.contains(&format!("A: {}", a.path.display())) && text.contains(&format!("B: {}", b.path.display())),
        "{text}"
    );
    assert!(text.contains("generated tokens differ: A 20, B 21"), "{text}");
    // What the figures were measured with is named too when it differs.
    assert!(text.contains("rank counts differ: A 1, B 2"), "{text}");
    assert!(!text.contains("engines differ") && !text.contains("builds differ"), "{text}");
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

    // The gate: B's 3 ms against A's 1 ms crosses +5 % (exit 4, the figure named); +250 % holds.
    let gate = |specs: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("compare").arg(&a.path).arg(&b.path);
        for s in specs {
            c.arg("--fail-if").arg(s);
        }
        c.output().unwrap()
    };
    let crossed = gate(&["itl_p50>+5%", "ttft_p50>1000000"]);
    let text = String::from_utf8_lossy(&crossed.stdout).into_owned();
    assert_eq!(crossed.status.code(), Some(4), "{text}");
    assert!(
        text.contains(&format!("gate: FAILED  B itl_p50>+5%: {pb:.3} ms vs {pa:.3} ms ({change:+.1} %)")),
        "{text}"
    );
    assert!(
        text.contains("gate: ok      B ttft_p50>1000000")
            && text.ends_with("gate: FAILED: 1 of 2 check(s) crossed their limit\n"),
        "{text}"
    );
    let held = gate(&["itl_p50>+250%", "throughput<-90%"]);
    let text = String::from_utf8_lossy(&held.stdout).into_owned();
    assert_eq!(held.status.code(), Some(0), "{text}");
    assert!(text.ends_with("gate: passed (2 check(s))\n"), "{text}");
    // A bad threshold: one line, exit 2, before any file is read.
    let bad = gate(&["itl_p50>5%"]);
    let err = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert_eq!((bad.status.code(), err.lines().count()), (Some(2), 1), "{err}");
    assert!(err.contains("METRIC>+N%"), "{err}");

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
    // Not results: launch/bench.sh's table and model configs (known by their content, as
    // tests/schema.rs does).
    files.retain(|f| {
        let j: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        !(j.get("schema").is_none() && (j.get("rows").is_some() || j.get("hidden_size").is_some()))
    });
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
        let j: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(format!("tp{tp}-default.json"))).unwrap()).unwrap();
        check_schema(&j);
        assert_eq!(j["config"]["world_size"], tp);
    }
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| | A (baseline) | B |") && md.contains("1 rank(s)") && md.contains("2 rank(s)"), "{md}");
    // tiny's 4 KV heads do not split over 3 ranks: the sweep stops there and names the run.
    let bad = sweep("3");
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("error: the TP=3 default run failed"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let log = std::fs::read_to_string(out.join("tp3-default.log")).unwrap();
    assert!(log.contains("does not divide"), "the run's own error is in its log: {log}");
    // One degree: its JSON and no comparison (compare needs two files), still a success.
    std::fs::remove_dir_all(&out).unwrap();
    let one = sweep("2");
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    assert!(out.join("tp2-default.json").is_file() && !out.join("compare.md").exists());
}

/// --token-log: one CSV row per token per rank, on rank 0's clock from its submit; the mock's
/// scripted 2 ms per token shows in every gap, and an existing file is never overwritten.
#[test]
fn token_log_has_every_token_of_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("tokens.csv");
    let path = dir.path().join("r.json");
    let csv_arg = csv.to_str().unwrap().to_string();
    let args = [
        "--engine",
        "mock",
        "--engine-options",
        r#"{"token_us": 2000}"#,
        "--batch",
        "2",
        "--prompt-tokens",
        "8",
        "--generated-tokens",
        "10",
        "--token-log",
        &csv_arg,
    ];
    let r = run_to(2, &args, &path, dir);
    ok(&r);
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(text.lines().next(), Some("rank,sample,step,token,t_ns,itl_ns,device_start_ns,device_end_ns"));
    assert_eq!(rows.len(), 2 * 2 * 10, "ranks × samples × tokens");
    for rank in ["0", "1"] {
        let mine: Vec<&Vec<&str>> = rows.iter().filter(|r| r[0] == rank).collect();
        assert_eq!(mine.len(), 20);
        for r in &mine {
            let t: i64 = r[4].parse().unwrap();
            // Rank 0's tokens come after its submit; another rank's engine may start a little
            // before rank 0's (each rank submits on its own).
            assert!(t.abs() < 60_000_000_000 && (rank != "0" || t > 0), "rank {rank}: t_ns {t} since rank 0's submit");
            match r[2] {
                "0" => assert_eq!(r[5], "", "the first token has no gap"),
                _ => assert!(r[5].parse::<u64>().unwrap() >= 1_998_000, "gap {} below the scripted 2 ms", r[5]),
            }
        }
    }
    // The same token log again: refused, the first one kept.
    let dir2 = tempfile::tempdir().unwrap();
    let again = run_to(1, &args, &dir2.path().join("r.json"), dir2);
    assert_eq!(again.code(), 2, "{}", again.stderr());
    assert!(again.error_lines()[0].contains("tokens.csv"), "{}", again.stderr());
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), text);
}

/// Progress on rank 0 (mpirun pipes stderr: a line every 10 s from 5 s into a run): a 5.5 s
/// measured run shows one line with its token count; --no-progress shows none.
#[test]
fn progress_shows_on_long_runs_unless_asked_not_to() {
    let args = [
        "--engine",
        "mock",
        "--engine-options",
        r#"{"token_us": 100000}"#,
        "--prompt-tokens",
        "4",
        "--generated-tokens",
        "55",
        "--warmup",
        "0",
    ];
    let r = run(2, &args);
    ok(&r);
    let lines: Vec<String> = r.stderr().lines().filter(|l| l.contains("measured run: ")).map(str::to_string).collect();
    assert_eq!(lines.len(), 1, "one progress line from rank 0 only:\n{}", r.stderr());
    assert!(lines[0].contains("/55 tokens"), "{}", lines[0]);
    let quiet = run(1, &[&args[..], &["--no-progress"]].concat());
    ok(&quiet);
    assert!(!quiet.stderr().contains("measured run: "), "{}", quiet.stderr());
}

/// `--config run.toml` on every rank: its options, the command line's on top; a bad file is one line.
#[test]
fn a_config_file_runs_on_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("run.toml");
    std::fs::write(
        &f,
        "engine = \"mock\"\nprompt-tokens = 6\ngenerated-tokens = 50\n[engine-options]\ntoken_us = 200\n",
    )
    .unwrap();
    let r = run(2, &["--config", f.to_str().unwrap(), "--generated-tokens", "7"]);
    let j = ok(&r);
    assert_eq!((j["config"]["engine"].as_str(), j["config"]["generated_tokens"].as_u64()), (Some("mock"), Some(7)));
    assert_eq!(j["config"]["engine_options"]["token_us"], 200);
    std::fs::write(&f, "generated-tokns = 5\n").unwrap();
    crate::util::rejected(2, &["--config", f.to_str().unwrap()], 2, "unknown option `generated-tokns`");
}
