//! Checkpoints written by `tpprof write-checkpoint` and loaded by the engines: the seeded tokens, in one file or many.

use crate::util::*;

#[test]
fn checkpoint_weights_give_the_seeded_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("tiny-ckpt");
    let out = Command::new(BIN)
        .args(["write-checkpoint", "--model", "tiny", "--seed", "9", "--files", "2", "--out"])
        .arg(&ckpt)
        .output()
        .unwrap();
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
        let out = Command::new(BIN)
            .args(["write-checkpoint", "--model", "tiny", "--seed", "9", "--dtype", "fp16"])
            .args(extra)
            .arg("--out")
            .arg(&ckpt)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        ckpt
    };
    let one = write("one", &[]);
    // 0.00005 GiB = 53 687 bytes: the tiny model's 263 296 bytes of f16 go into several files.
    let many = write("many", &["--shard-gib", "0.00005"]);
    let shards = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".safetensors"))
            .count()
    };
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
