//! What every target shares: a scratch directory per process and the one-line check.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A scratch directory of this process (the readers take paths).
pub fn scratch(target: &str) -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("tpprof-fuzz-{target}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("a scratch directory");
        d
    })
}

/// Every error message must be one line: a crash for libFuzzer otherwise.
pub fn assert_one_line(messages: &[String]) {
    if let Some(m) = super::checks::not_one_line(messages) {
        panic!("error message is not one line: {m:?}");
    }
}
