//! cargo-fuzz target: see fuzz/README.md and tests/fuzz_checks.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_checks.rs"]
#[allow(dead_code)]
mod checks;
#[allow(dead_code)]
mod common;

fuzz_target!(|data: &[u8]| {
    common::assert_one_line(&checks::check_options(data));
});
