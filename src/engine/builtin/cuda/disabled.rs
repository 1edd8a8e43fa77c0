//! The `cuda` engine's stand-in, for builds without the `cuda` feature (as candle's
//! dummy_cuda_backend.rs): the same API the rest of the crate uses, so no caller needs a
//! `cfg(feature = "cuda")` of its own. Every constructor and free function returns the NO_CUDA
//! error; a `CudaEngine` cannot exist, so its methods are never reached.

#[path = "types.rs"]
mod types;

use crate::engine::config::Config;
pub use types::{CudaError, Dtype, StepTimes, UnknownDtype, WeightInit};

/// Whether this build has the cuda engine.
pub const BUILT: bool = false;

/// The NCCL unique id: none without the feature.
pub fn nccl_unique_id() -> Result<Vec<u8>, CudaError> {
    Err(CudaError::NotBuilt)
}

/// Uninhabited: `new` is the only way to one, and it fails.
pub enum CudaEngine {}

#[allow(clippy::too_many_arguments)]
impl CudaEngine {
    pub fn new(
        _cfg: &Config,
        _dtype: Dtype,
        _weights: WeightInit,
        _ordinal: usize,
        _rank: usize,
        _world: usize,
        _nccl_id: &[u8],
    ) -> Result<CudaEngine, CudaError> {
        Err(CudaError::NotBuilt)
    }
    pub fn prepare(&mut self, _prompts: &[Vec<i32>], _max_new: usize) -> Result<(), CudaError> {
        match *self {}
    }
    pub fn generate(
        &mut self,
        _prompts: &[Vec<i32>],
        _max_new: usize,
        _exact_length: bool,
        _on_token: &mut dyn FnMut(usize, usize, i32, i32),
    ) -> Result<(), CudaError> {
        match *self {}
    }
    pub fn prefill_logits(&mut self, _prompt: &[i32]) -> Result<(Vec<f32>, i32), CudaError> {
        match *self {}
    }
    pub fn decode_attention(&self) -> Option<String> {
        match *self {}
    }
    pub fn prefill_attention(&self) -> String {
        match *self {}
    }
    pub fn skip_breakdown(&mut self) {
        match *self {}
    }
    pub fn last_logits(&self, _rows: usize) -> Result<Vec<f32>, CudaError> {
        match *self {}
    }
    pub fn step_times(&self) -> &StepTimes {
        match *self {}
    }
    pub fn memory(&self) -> (u64, u64, u64, u64) {
        match *self {}
    }
    pub fn dtype(&self) -> Dtype {
        match *self {}
    }
    pub fn device_name(&self) -> String {
        match *self {}
    }
    pub fn arch(&self) -> &str {
        match *self {}
    }
    pub fn last_run(&self) -> Option<&serde_json::Value> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_says_no_cuda() {
        let no_cuda = crate::engine::builtin::NO_CUDA;
        assert!(!BUILT);
        assert_eq!(nccl_unique_id().unwrap_err().to_string(), no_cuda);
        let e =
            CudaEngine::new(&Config::preset("tiny").unwrap(), Dtype::F16, WeightInit::Seeded(0), 0, 0, 1, &[0; 128])
                .err()
                .unwrap();
        assert_eq!(e.to_string(), no_cuda);
        assert_eq!(crate::engine::builtin::cuda_rendezvous().unwrap_err(), no_cuda);
    }
}
