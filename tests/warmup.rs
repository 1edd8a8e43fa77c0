//! Steady state by default: warm-up runs, the cold first request, the stationarity check, against scripted slow first requests and drifts.

use crate::util::*;

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
        assert!(
            max_ms < 400.0,
            "rank {}: after warm-up the TTFT no longer holds the first-request cost: {max_ms} ms",
            r["rank"]
        );
    }
    for r in jw["ranks"].as_array().unwrap() {
        let w: Vec<f64> = r["timing"]["warmup_s"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0] >= 0.4 && w[1] < 0.4, "the first warm-up run paid the cold start: {w:?}");
        // Each warm-up run's TTFT is in the JSON beside its wall time (ALL_RANKS: every rank's own).
        let t: Vec<f64> =
            r["timing"]["warmup_runs"].as_array().unwrap().iter().map(|x| x["ttft_ms"].as_f64().unwrap()).collect();
        assert!(t[0] >= 400.0 && t[1] < 400.0, "rank {}: warm-up TTFTs {t:?}", r["rank"]);
    }
    assert!(warm.stdout().contains("warm-up: 2 run(s) (--warmup 2, not checked"), "{}", warm.stdout());

    rejected(
        1,
        &["--engine", "mock", "--warmup", "-1"],
        2,
        "--warmup must be `auto` or a whole number ≥ 0 (got \"-1\")",
    );
    rejected(
        1,
        &["--engine", "mock", "--warmup-max", "1"],
        2,
        "--warmup-max must be a whole number in [2, 100] (got 1)",
    );
    rejected(
        1,
        &["--engine", "mock", "--warmup-tolerance", "0"],
        2,
        "--warmup-tolerance must be a percentage in (0, 100] (got 0)",
    );
    // A failure inside a warm-up run stops every rank and says where it happened.
    rejected(
        2,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"fail_rank": 1, "fail_at_token": 3}"#,
            "--generated-tokens",
            "5",
            "--warmup",
            "1",
        ],
        1,
        "warm-up run 1",
    );
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
        vec![
            ("mock", r#"{"token_us": 2000, "slow_generates": 1, "slow_factor": 3}"#),
            ("python:test", r#"{"token_us": 2000, "slow_generates": 1, "slow_factor": 3, "vocab_size": 1000}"#),
        ]
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
        assert!(
            runs.len() >= 3 && runs.len() as u64 == w["runs"].as_u64().unwrap(),
            "{engine}: slow, fast, fast: {runs:?}"
        );
        let first = runs[0]["itl_p50_ms"].as_f64().unwrap();
        assert!(first >= 6.0, "{engine}: the first warm-up run is the slow one: {first}");
        assert!(p50(j) >= 2.0 && p50(j) < 2.4, "{engine}: the measured run is the scripted 2 ms: {}", p50(j));
        assert_eq!(
            j["summary"]["stationarity"]["warnings"].as_array().unwrap().len(),
            0,
            "{engine}: {}",
            j["summary"]["stationarity"]
        );
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
    // Every run at 20 % (scheduling noise on a loaded machine is neither drift nor a change, and two
    // slow warm-up runs must agree with each other): the scripted changes are 3× and 4×.
    let steady = run(
        1,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 2000}"#,
            "--prompt-tokens",
            "4",
            "--generated-tokens",
            "60",
            "--warmup-tolerance",
            "20",
        ],
    );
    let js = ok(&steady);
    assert_eq!(
        js["summary"]["stationarity"]["warnings"].as_array().unwrap().len(),
        0,
        "{}",
        js["summary"]["stationarity"]
    );
    assert!(!steady.stdout().contains("not stationary"), "{}", steady.stdout());

    let changed = run(
        1,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 2000, "slow_generates": 2, "slow_factor": 3}"#,
            "--prompt-tokens",
            "4",
            "--generated-tokens",
            "30",
            "--warmup-tolerance",
            "20",
        ],
    );
    let jc = ok(&changed);
    assert_eq!(jc["status"]["state"], "ok");
    let st = &jc["summary"]["stationarity"];
    assert!(st["vs_last_warmup_pct"].as_f64().unwrap() < -50.0, "{st}");
    assert!(st["warnings"][0].as_str().unwrap().contains("differs"), "{st}");
    assert!(changed.stdout().contains("warning: not stationary: the measured ITL p50"), "{}", changed.stdout());

    // 1 ms + 0.1 ms per step over 40 steps: the last tenth is ~4× the first.
    let drift = run(
        1,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 1000, "token_us_growth": 100}"#,
            "--prompt-tokens",
            "4",
            "--generated-tokens",
            "40",
            "--warmup-tolerance",
            "20",
        ],
    );
    let jd = ok(&drift);
    let st = &jd["summary"]["stationarity"];
    assert!(st["first_to_last_tenth_pct"].as_f64().unwrap() > 100.0, "{st}");
    assert!(st["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("drifts")), "{st}");

    // compare shows it.
    let out = Command::new(BIN).arg("compare").arg(&steady.path).arg(&changed.path).arg(&drift.path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = text
        .lines()
        .find(|l| l.starts_with("not stationary"))
        .unwrap_or_else(|| panic!("no stationarity row:\n{text}"));
    assert!(row.contains("none") && row.contains("% vs warm-up") && row.contains("% drift"), "{row}");
    assert!(text.lines().any(|l| l.starts_with("warm-up") && l.contains("steady")), "{text}");
}

/// --repeat 3: three measured runs after the warm-up, the last recorded in full; the spread of the
/// mock's scripted 2 ms per token over them (never below the script), and each earlier run's
/// figures per rank.
#[test]
fn repeated_runs_give_each_figure_with_its_spread() {
    let r = run(
        2,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 2000}"#,
            "--prompt-tokens",
            "8",
            "--generated-tokens",
            "20",
            "--warmup",
            "1",
            "--repeat",
            "3",
        ],
    );
    let j = ok(&r);
    check_counts(j, 2, 1, 20);
    let rp = &j["summary"]["repeat"];
    assert_eq!(rp["runs"], 3, "{rp}");
    let (lo, mid, hi) = (
        rp["itl_p50_ms"]["min"].as_f64().unwrap(),
        rp["itl_p50_ms"]["median"].as_f64().unwrap(),
        rp["itl_p50_ms"]["max"].as_f64().unwrap(),
    );
    assert!(lo >= 2.0 * 0.999 && lo <= mid && mid <= hi && hi < 3.5, "{rp}");
    assert_eq!(j["config"]["repeat"], 3);
    for rank in j["ranks"].as_array().unwrap() {
        assert_eq!(rank["timing"]["repeat_runs"].as_array().unwrap().len(), 2, "{}", rank["timing"]);
        assert_eq!(rank["timing"]["warmup_runs"].as_array().unwrap().len(), 1);
    }
    assert!(r.stdout().contains("repeat: 3 measured runs (rank 0), min / median / max: ITL p50 "), "{}", r.stdout());
    rejected(1, &["--repeat", "0"], 2, "--repeat must be a whole number ≥ 1");
}
