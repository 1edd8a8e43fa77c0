//! `tpprof doctor`: every rank looks at its machine, rank 0 prints one table and the checks.

use std::process::Command;

use serde_json::Value;

use crate::util::{mpirun, BIN};

fn doctor(n: usize, args: &[&str]) -> (i32, String, String) {
    let out = if n == 0 {
        Command::new(BIN).arg("doctor").args(args).output()
    } else {
        mpirun(n).arg(BIN).arg("doctor").args(args).output()
    }
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn doctor_reports_every_rank_and_its_checks() {
    let (code, out, err) = doctor(2, &["--json"]);
    // CI has no GPU: warnings, no failure.
    assert_eq!(code, 0, "{out}\n{err}");
    let j: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(j["world_size"], 2);
    assert!(j["launcher"].as_str().unwrap().starts_with("Open MPI"), "{}", j["launcher"]);
    let ranks = j["ranks"].as_array().unwrap();
    assert_eq!(ranks.iter().map(|r| r["rank"].as_i64().unwrap()).collect::<Vec<_>>(), vec![0, 1]);
    for r in ranks {
        assert!(r["cpu_count"].as_u64().unwrap() >= 1 && !r["cpus"].as_str().unwrap().is_empty(), "{r}");
        assert_eq!(r["local_size"], 2);
        assert_eq!(r["libraries"].as_array().unwrap().len(), 5, "driver, NVRTC, cuBLAS, NCCL, CUPTI");
    }
    let checks = j["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["level"] == "ok" && c["what"].as_str().unwrap().starts_with("every rank runs tpprof build")),
        "{checks:?}"
    );
    // Every check is ok, warn or fail, and nothing failed.
    assert!(checks.iter().all(|c| c["level"] == "ok" || c["level"] == "warn"), "{checks:?}");

    // Alone, without mpirun: one rank, the table, said as a single process.
    let (code, out, _) = doctor(0, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("tpprof doctor: 1 rank(s) on 1 host(s)") && out.contains("launcher: none"), "{out}");
    assert!(out.contains("checks:") && out.contains("libraries (rank 0):"), "{out}");
}

#[test]
fn doctor_checks_an_adapter_and_fails_on_a_bad_one() {
    let (code, out, err) = doctor(2, &["--engine", env!("TPPROF_MOCK_ADAPTER")]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.lines().any(|l| l.starts_with("  ok") && l.contains("engine `mock`") && l.contains("ABI")), "{out}");
    let (code, out, _) = doctor(2, &["--engine", env!("TPPROF_MOCK_ADAPTER_BAD_ABI")]);
    assert_eq!(code, 1, "{out}");
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("  FAIL")).collect();
    assert_eq!(fails.len(), 1, "said once for both ranks: {out}");
    assert!(fails[0].contains("all 2 ranks") && fails[0].contains("ABI version 42"), "{}", fails[0]);
}
