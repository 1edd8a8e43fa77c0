//! tpprof: an MPI-aware, low-level profiler for tensor-parallel LLM inference.
//!
//! One rank per GPU: every rank runs (or observes) the engine, timestamps every token, samples its
//! own memory, and rank 0 gathers every rank's report into one JSON. `run::run` is the whole job,
//! top to bottom; see DESIGN.md for the architecture.

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
