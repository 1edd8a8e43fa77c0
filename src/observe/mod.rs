//! Observers that run beside the engine on every rank: the GPU probe and binding (NVML), and the
//! memory sampler thread (host RSS always, NVML per-process and per-device memory when a GPU is bound).

pub mod cupti;
pub mod gpu;
pub mod memory;
pub mod nvtx;
