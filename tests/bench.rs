//! launch/bench.sh without a GPU: its argument handling and, with --dry-run, the commands it would
//! run — both engines on the same checkpoint and shape, the seeded model written once, an A/B row per
//! --cuda-ab with its environment variable.

use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/launch/bench.sh");

fn bench(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("bash").arg(SCRIPT).args(args).env_remove("TPPROF").output().expect("run bash");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dry_run_prints_both_engines_on_one_checkpoint() {
    let (code, out, err) = bench(&[
        "--dry-run",
        "--model",
        "qwen2.5-14b",
        "--seed",
        "3",
        "-P",
        "10000",
        "-G",
        "64",
        "--out",
        "/tmp/b",
        "--tpprof",
        "/x/tpprof",
        "--cuda-ab",
        "TPPROF_CUDA_PREFILL_ATTN=cublas",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 4, "{out}");
    let ck = "/tmp/tpprof-bench-qwen2.5-14b-fp16-s3";
    assert!(
        lines[0].contains(&format!("/x/tpprof write-checkpoint --model qwen2.5-14b --seed 3 --dtype fp16 --out {ck}")),
        "{}",
        lines[0]
    );
    assert!(lines[0].starts_with(&format!("[ -f {ck}/config.json ] ||")), "written once: {}", lines[0]);
    for l in &lines[1..3] {
        assert!(
            l.contains(&format!(
                "tpprof run --engine cuda --weights {ck} --dtype fp16 --prompt-tokens 10000 --generated-tokens 64"
            )),
            "{l}"
        );
    }
    assert!(lines[1].starts_with("mpirun") && lines[1].ends_with("--out /tmp/b/cuda.json"), "{}", lines[1]);
    assert!(
        lines[2].starts_with("env TPPROF_CUDA_PREFILL_ATTN=cublas mpirun")
            && lines[2].ends_with("--out /tmp/b/cuda-ab1.json"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains(&format!(
            "launch/hf/plain_timing.py {ck} 10000 64 --static-compile --dtype fp16 --runs 3 --json /tmp/b/hf.json"
        )),
        "{}",
        lines[3]
    );
}

#[test]
fn dry_run_with_weights_writes_no_checkpoint_and_no_hf_row_when_asked() {
    let (code, out, err) =
        bench(&["--dry-run", "--weights", "/ck", "--dtype", "bf16", "--no-hf", "--tpprof", "/x/tpprof"]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains("--weights /ck --dtype bf16 --prompt-tokens 10000 --generated-tokens 128"),
        "{}",
        lines[0]
    );
}

#[test]
fn bad_arguments_exit_2_with_the_reason() {
    for (args, why) in [
        (&["--model", "small", "--weights", "/ck"][..], "exclude each other"),
        (&["--dtype", "f32"][..], "--dtype must be fp16 or bf16"),
        (&["-P", "ten"][..], "'ten' is not a whole number"),
        (&["-G", "1"][..], "--generated-tokens >= 2"),
        (&["--cuda-ab", "cublas"][..], "--cuda-ab wants NAME=VALUE"),
        (&["--frobnicate"][..], "unknown argument '--frobnicate'"),
    ] {
        let mut a = vec!["--dry-run"];
        a.extend_from_slice(args);
        let (code, out, err) = bench(&a);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(why) && err.contains("usage: launch/bench.sh"), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed commands: {out}");
    }
}
