//! `--cupti`: GPU kernel activity of the rank's process, from CUPTI's Activity API
//! (CONCURRENT_KERNEL records), grouped per decode step: GPU busy time, time in NCCL kernels
//! (communication plus waiting for the other ranks), compute time, kernel count. It sees every
//! kernel the process launches, so it works the same for the built-in engines, C++ adapters and
//! Python engines, and in ONE_PROCESS engines (rank 0's process drives every GPU) per device.
//!
//! Timestamps: CUPTI is given CLOCK_MONOTONIC as its clock (`cuptiActivityRegisterTimestampCallback`),
//! so kernel times are on the same clock as token times and the cuda engine's device steps; where
//! the library lacks that call, the offset between `cuptiGetTimestamp()` and CLOCK_MONOTONIC is
//! measured at start and end and applied (`clock` in the JSON says which).
//!
//! The analysis (`analysis.rs`) is plain Rust over plain records and is tested without a GPU; the
//! collector (`collector.rs`: `Collector`, cuda builds only) is the thin FFI around it; and
//! `CuptiSession` (`session.rs`) is what run.rs drives: check, start, finish and analyse.

mod analysis;
#[cfg(feature = "cuda")]
mod collector;
mod session;

pub use analysis::{
    analyse_device, is_nccl, participants, per_step, summarise, windows_from_device_steps, windows_from_tokens,
    Activity, CuptiReport, CuptiSummary, DeviceActivity, Kernel, StepSource, TopKernel,
};
#[cfg(feature = "cuda")]
pub use collector::Collector;
pub use session::{CuptiSession, Recorded};

/// Why `--cupti` cannot record on this rank.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CuptiError {
    #[error("--cupti needs a GPU on every rank (this rank has none): drop --cupti for CPU runs")]
    NoGpu,
    #[error("--cupti needs a GPU build of tpprof")]
    NotBuilt,
    #[error("--cupti: CUPTI (libcupti.so) was not found: it ships with the CUDA toolkit (cuda/extras/CUPTI/lib64 or targets/*/lib) and in the nvidia-cuda-cupti wheel; put its directory on LD_LIBRARY_PATH, or drop --cupti")]
    NoLibrary,
    #[error("--cupti: the CUDA driver (libcuda.so) was not found")]
    NoDriver,
    #[error("--cupti: cuInit failed: {0}")]
    Init(String),
    #[error("--cupti: a CUPTI collection is already running in this process")]
    Busy,
    /// A CUPTI call failed: the call and CUPTI's own message for the result.
    #[error("--cupti: {call} failed: {message}")]
    Call { call: &'static str, message: String },
}
