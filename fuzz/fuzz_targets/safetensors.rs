//! cargo-fuzz target: see fuzz/README.md and tests/fuzz_checks.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_checks.rs"]
#[allow(dead_code)]
mod checks;
#[allow(dead_code)]
mod common;

/// The model config.json beside the checkpoint (the tiny preset, as in `cargo test`).
fn config() -> &'static [u8] {
    static C: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    C.get_or_init(checks::tiny_config_json)
}

fuzz_target!(|data: &[u8]| {
    common::assert_one_line(&checks::check_safetensors(common::scratch("safetensors"), config(), data));
});
