//! Known truths measured: the cpu engine's tokens at every TP degree, the mock's scripted latencies, allocations and step costs, topologies, EOS, prompt files.

use crate::util::*;

#[test]
fn cpu_engine_tokens_agree_across_tp_degrees() {
    let args = [
        "--engine",
        "cpu",
        "--model",
        "tiny",
        "--batch",
        "2",
        "--prompt-tokens",
        "24",
        "--generated-tokens",
        "12",
        "--seed",
        "5",
        "--record-tokens",
    ];
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
    let r = run(
        2,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 2000, "prefill_us_per_token": 20}"#,
            "--prompt-tokens",
            "100",
            "--generated-tokens",
            "60",
        ],
    );
    let j = ok(&r);
    check_counts(j, 2, 1, 60);
    // Both ranks on this host share its CLOCK_MONOTONIC: rank 1's measured offset is ~0 (within
    // the best round trip; loose for a loaded machine), rank 0's exactly 0.
    let offsets: Vec<i64> =
        j["environment"]["clock_offsets_ns"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!((offsets.len(), offsets[0]), (2, 0), "{offsets:?}");
    assert!(offsets[1].abs() < 20_000_000, "rank 1's offset on the same host: {} ns", offsets[1]);
    for rank in j["ranks"].as_array().unwrap() {
        let p50_us = u(&rank["decode"]["p50_ns"]) as f64 / 1e3;
        let min_us = u(&rank["decode"]["min_ns"]) as f64 / 1e3;
        // Never below the script (busy-waits end after their deadline; HdrHistogram reports the top
        // of a value's bucket), and p50 within a tolerance a loaded 2-core machine survives.
        assert!(min_us >= token_us * 0.999, "min {min_us} µs below the scripted {token_us} µs");
        assert!(p50_us <= token_us * 2.0 + 1000.0, "p50 {p50_us} µs far above the scripted {token_us} µs");
        let ttft_us = u(&rank["ttft"]["min_ns"]) as f64 / 1e3;
        assert!(ttft_us >= 2000.0 * 0.999, "TTFT {ttft_us} µs below the scripted 2000 µs prefill");
    }
    let itl = j["summary"]["itl_ms"]["p50"].as_f64().unwrap();
    // Upper bounds are sanity checks only: two busy-waiting ranks on a 2-core machine that also
    // compiles (load average 6–7) were seen at 4 ms; the script's 2 ms is the bound that matters.
    assert!(itl >= 2.0 * 0.999 && itl <= 5.0, "merged ITL p50 {itl} ms");
    let p = &j["summary"]["itl_ms"];
    let f = |k: &str| p[k].as_f64().unwrap();
    assert!(f("min") >= 2.0 * 0.999 && f("min") <= f("p50") && f("p90") <= f("p95") && f("p95") <= f("p99"), "{p}");
    // The spread is not bounded here: with the machine loaded (CI beside other builds) the p90 of
    // two busy-waiting ranks on 2 cores was seen at 10 ms while the p50 stayed at 2.0009 ms.
    assert!(f("std") >= 0.0, "{p}");
    // Per sample: TPOT as trtllm-bench defines it, end to end, and the sample's own gaps.
    let s = &j["samples"][0];
    let (ttft, e2e, tpot) =
        (s["ttft_ms"].as_f64().unwrap(), s["e2e_ms"].as_f64().unwrap(), s["tpot_ms"].as_f64().unwrap());
    assert!(tpot >= 2.0 * 0.999 && tpot <= 5.0, "TPOT {tpot} ms against the scripted 2 ms");
    assert!(((e2e - ttft) / 59.0 - tpot).abs() < 1e-6, "TPOT = (e2e − TTFT) / (n − 1): {e2e} {ttft} {tpot}");
    assert_eq!(u(&s["itl_ms"]["count"]), 59);
    assert!(s["itl_ms"]["p50"].as_f64().unwrap() >= 2.0 * 0.999 && s["itl_ms"]["max"].as_f64().unwrap() >= tpot);
}

#[test]
fn mock_allocation_shows_in_each_ranks_peak() {
    let size: u64 = 256 << 20;
    let opts = format!(r#"{{"alloc_bytes": {size}}}"#);
    let r = run(
        2,
        &[
            "--engine",
            "mock",
            "--engine-options",
            &opts,
            "--prompt-tokens",
            "4",
            "--generated-tokens",
            "4",
            "--mem-interval-ms",
            "5",
        ],
    );
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
    let r = run(
        2,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"topology": "one_process", "token_us": 200}"#,
            "--batch",
            "3",
            "--prompt-tokens",
            "4",
            "--generated-tokens",
            "5",
        ],
    );
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
    let r = run(
        1,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"callback_thread": 1}"#,
            "--batch",
            "2",
            "--prompt-tokens",
            "4",
            "--generated-tokens",
            "7",
        ],
    );
    check_counts(ok(&r), 1, 2, 7);
}

#[test]
fn eos_is_reported_not_hidden() {
    let opts = r#"{"eos_at_step": 5}"#;
    // Exact length (default): the engine must ignore EOS.
    let r = run(1, &["--engine", "mock", "--engine-options", opts, "--prompt-tokens", "4", "--generated-tokens", "10"]);
    check_counts(ok(&r), 1, 1, 10);
    // --allow-eos: the short sample is visible in status and samples.
    let r = run(
        1,
        &[
            "--engine",
            "mock",
            "--engine-options",
            opts,
            "--prompt-tokens",
            "4",
            "--generated-tokens",
            "10",
            "--allow-eos",
        ],
    );
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

/// Known truth: the mock's decode step k waits 1000 + 200·k µs (a cost that grows with the
/// context). The per-tenth medians must follow the script: never below it (busy-waits end after
/// their deadline), not far above it, and rising by what it adds (margins for a loaded machine).
#[test]
fn itl_by_tenth_of_decode_follows_a_growing_step_cost() {
    let args = [
        "--engine",
        "mock",
        "--engine-options",
        r#"{"token_us": 1000, "token_us_growth": 200}"#,
        "--prompt-tokens",
        "4",
        "--generated-tokens",
        "41",
    ];
    let tenths_of = |v: &Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    let r = run(1, &args);
    let j = ok(&r);
    let tenths = tenths_of(&j["summary"]["itl_p50_by_tenth_ms"]);
    assert_eq!(tenths.len(), 10, "{tenths:?}");
    for (d, &ms) in tenths.iter().enumerate() {
        // Steps 4d+1..=4d+4; the median of four is the lower middle, step 4d+2.
        let scripted_ms = (1000.0 + 200.0 * (4 * d + 2) as f64) / 1e3;
        assert!(
            ms >= scripted_ms * 0.999 && ms <= scripted_ms + 3.0,
            "tenth {d}: {ms} ms for a scripted {scripted_ms} ms ({tenths:?})"
        );
    }
    // The script adds 200 µs × 36 steps = 7.2 ms between the first and the last tenth's medians.
    assert!(tenths[9] - tenths[0] >= 0.5 * 7.2, "{tenths:?}");
    assert_eq!(tenths_of(&j["ranks"][0]["itl_p50_by_tenth_ms"]), tenths, "the summary's tenths are rank 0's");
    assert!(r.stdout().contains("ITL p50 by tenth of the decode steps (rank 0)"), "{}", r.stdout());

    // Two ranks: each rank's own tenths (the mock's ranks each pace their own tokens by busy-waiting,
    // so on a loaded 2-core machine only the trend is asserted, not each tenth).
    let r = run(2, &args);
    let j = ok(&r);
    for k in 0..2 {
        let t = tenths_of(&j["ranks"][k]["itl_p50_by_tenth_ms"]);
        assert_eq!(t.len(), 10, "rank {k}: {t:?}");
        assert!(t[0] >= 1.4 * 0.999 && t[9] - t[0] >= 0.5 * 7.2, "rank {k}: {t:?}");
    }
    assert_eq!(tenths_of(&j["summary"]["itl_p50_by_tenth_ms"]), tenths_of(&j["ranks"][0]["itl_p50_by_tenth_ms"]));
}

/// Goodput against a known truth: the mock's three requests take at least 2 ms per token (TPOT
/// ≥ 2 ms), so a TPOT bound of 1.5 ms meets none of them and generous bounds meet all three.
#[test]
fn goodput_counts_the_requests_within_the_slo() {
    let args = |slo: &str| {
        [
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 2000}"#,
            "--batch",
            "3",
            "--prompt-tokens",
            "8",
            "--generated-tokens",
            "12",
            "--warmup",
            "0",
            "--slo",
            slo,
        ]
        .map(str::to_string)
    };
    let run_slo = |slo: &str| {
        let a = args(slo);
        let r = run(1, &a.iter().map(String::as_str).collect::<Vec<_>>());
        let j = ok(&r).clone();
        (j, r.stdout())
    };
    let (j, _) = run_slo("tpot_ms=1.5");
    assert_eq!(j["summary"]["goodput"]["met"], 0, "{}", j["summary"]["goodput"]);
    assert_eq!(j["summary"]["goodput"]["requests"], 3);
    let (j, out) = run_slo("tpot_ms=50,itl_ms=500,e2e_ms=60000");
    let g = &j["summary"]["goodput"];
    assert_eq!((g["met"].as_u64(), g["share_pct"].as_f64()), (Some(3), Some(100.0)), "{g}");
    assert_eq!(g["slo"]["tpot_ms"], 50.0);
    assert_eq!(j["config"]["slo"]["itl_ms"], 500.0);
    assert!(
        out.contains("goodput: 3/3 requests (100.0 %) within TPOT ≤ 50 ms, every ITL ≤ 500 ms, e2e ≤ 60000 ms"),
        "{out}"
    );
}

/// Scale: 16 ranks of the mock on a 2-core machine, 1 000 064 tokens in all (8 samples × 7 813 per
/// rank): every count exact, and the JSON's size independent of the token count (histograms, not
/// token lists) — within 2× of the same run with 100× fewer tokens. Merge time and memory at this
/// scale: results/vm/scale.md.
#[test]
fn sixteen_ranks_a_million_tokens_exact_counts_bounded_json() {
    let big = run(
        16,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 0}"#,
            "--batch",
            "8",
            "--prompt-tokens",
            "8",
            "--generated-tokens",
            "7813",
            "--warmup",
            "0",
            "--no-progress",
        ],
    );
    let j = ok(&big);
    check_counts(j, 16, 8, 7813);
    let ranks = j["ranks"].as_array().unwrap();
    assert_eq!(ranks.len(), 16);
    let total: u64 = ranks.iter().map(|r| u(&r["decode"]["count"]) + u(&r["ttft"]["count"])).sum();
    assert_eq!(total, 16 * 8 * 7813, "every token of every rank, once");
    assert_eq!(u(&j["summary"]["itl_ms"]["count"]), 16 * 8 * 7812);
    assert!(j["summary"]["merge_s"].as_f64().unwrap() > 0.0);
    let small = run(
        16,
        &[
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 0}"#,
            "--batch",
            "8",
            "--prompt-tokens",
            "8",
            "--generated-tokens",
            "78",
            "--warmup",
            "0",
            "--no-progress",
        ],
    );
    ok(&small);
    let (b, s) = (std::fs::metadata(&big.path).unwrap().len(), std::fs::metadata(&small.path).unwrap().len());
    assert!(b < 2 * s && b < 1 << 20, "JSON {b} bytes for 1M tokens vs {s} for 10K: it must not grow with the tokens");
}
