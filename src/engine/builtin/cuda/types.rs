//! The cuda engine's plain types — no CUDA in here: compiled into the engine and into its stand-in
//! (disabled.rs, builds without the `cuda` feature), so both have the same API.

/// The element type of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F16,
    Bf16,
}

/// A `--dtype` the cuda engine does not have.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown --dtype `{0}`: use fp16 or bf16")]
pub struct UnknownDtype(pub String);

impl Dtype {
    pub fn parse(s: &str) -> Result<Dtype, UnknownDtype> {
        match s {
            "fp16" | "float16" | "f16" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            other => Err(UnknownDtype(other.to_string())),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
        }
    }
    /// The suffix of a kernel's variant for this dtype.
    pub fn suffix(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A build without the `cuda` feature (the stand-in's one error).
    #[error("{}", crate::engine::builtin::NO_CUDA)]
    NotBuilt,
    #[error("the cuda engine needs {0}, which this machine does not have: install the NVIDIA driver and CUDA 13 libraries, or use --engine cpu")]
    Missing(String),
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("compiling the cuda engine's kernels: {0}")]
    Compile(String),
    #[error("cuBLAS: {0}")]
    Blas(String),
    #[error("NCCL: {0}")]
    Nccl(String),
    #[error("out of GPU memory allocating {0}: use a smaller model, a larger -n, or shorter prompts")]
    OutOfMemory(String),
    #[error("{0}")]
    Invalid(String),
    /// What the run asks for does not fit the GPU, found before allocating (bad input: exit 2).
    #[error("{0}")]
    TooLarge(String),
    #[error("internal error in the cuda engine: {0}")]
    Internal(String),
}

/// Where the weights come from.
pub enum WeightInit<'a> {
    /// The cpu engine's seeded recipe, generated on the device.
    Seeded(u64),
    /// A Hugging Face safetensors checkpoint (its config.json must be `cfg`).
    Checkpoint(&'a crate::engine::safetensors::SafetensorsDir),
}

/// What one rank measured about its own decode steps.
#[derive(Debug, Clone, Default)]
pub struct StepTimes {
    /// Device time of each decode step (CUDA events around the graph launch), ms.
    pub device_ms: Vec<f32>,
    /// Start and end of each step on the host's CLOCK_MONOTONIC (ns): reference events recorded
    /// on an idle stream at known host times before and after the decode loop anchor the event
    /// times, and the two anchors correct the GPU timer's drift against the host clock.
    pub device_abs_ns: Vec<(u64, u64)>,
    /// The GPU event timer's rate against CLOCK_MONOTONIC over the decode loop, in parts per
    /// million (host ns per event ns − 1); `None` when the loop was too short to tell.
    pub event_drift_ppm: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_parse() {
        assert_eq!(Dtype::parse("fp16").unwrap(), Dtype::F16);
        assert_eq!(Dtype::parse("bfloat16").unwrap(), Dtype::Bf16);
        assert_eq!(Dtype::parse("fp8").unwrap_err().to_string(), "unknown --dtype `fp8`: use fp16 or bf16");
    }
}
