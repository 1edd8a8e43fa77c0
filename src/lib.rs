//! tpprof: an MPI-aware, low-level profiler for tensor-parallel LLM inference.
//!
//! One rank per GPU: every rank runs (or observes) the engine, timestamps every token, samples its
//! own memory, and rank 0 gathers every rank's report into one JSON. `run::main` is the whole job,
//! top to bottom; see ARCHITECTURE.md for the architecture.

pub mod cli;
pub mod clock;
pub mod cluster;
pub mod doctor;
pub mod engine;
pub mod observe;
pub mod record;
pub mod report;
pub mod run;
pub mod verify;
pub mod workload;

/// The version written into every JSON.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `print!` for results on stdout that treats a closed stdout (`tpprof report r.json | head -1`) as
/// a normal end: the rest of the output is dropped; nothing panics, the exit code is the command's.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

/// `println!` with [`out!`]'s rule.
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
