//! `--help` is documentation people copy from: the engine forms, the defaults and examples.

use crate::util::*;

#[test]
fn run_help_lists_engine_forms_defaults_and_examples() {
    let out = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    for engine in
        ["`cpu`", "`cuda`", "`mock`", "python:DRIVER", "python:hf", "python:lmdeploy", "python:test", "adapter:PATH"]
    {
        assert!(help.contains(engine), "run --help does not name {engine}:\n{help}");
    }
    for default in
        ["[default: auto]", "[default: fp16]", "[default: 128]", "[default: 32]", "[default: 10]", "[default: 1]"]
    {
        assert!(help.contains(default), "run --help does not show {default}:\n{help}");
    }
    assert!(
        help.contains("Examples:") && help.contains("  mpirun -n 2 tpprof run --engine cpu --model small"),
        "{help}"
    );
}
