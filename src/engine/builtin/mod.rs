//! tpprof's own engines. `cpu`: the tensor-parallel Qwen2 reference over MPI. `cuda`: the same
//! model on NVIDIA GPUs; without the `cuda` feature, its stand-in (cuda/disabled.rs: the same API,
//! every call the NO_CUDA error), so nothing here or above needs a `cfg(feature = "cuda")`.

pub mod cpu;

use super::config::Config;
use super::{Engine, EngineError, EngineInfo, EngineMemory, TokenCallback, Topology};

/// The `cpu` engine behind the `Engine` trait.
pub struct Cpu {
    engine: cpu::CpuEngine,
    config: Config,
    model: String,
    weights: String,
}

/// Opens a checkpoint directory; its errors are bad input.
fn open_checkpoint(dir: &std::path::Path) -> Result<crate::engine::safetensors::SafetensorsDir, EngineError> {
    crate::engine::safetensors::SafetensorsDir::open(dir).map_err(EngineError::from)
}

/// How the JSON describes the weights.
fn weights_label(dir: Option<&std::path::Path>) -> String {
    match dir {
        Some(d) => format!("safetensors checkpoint {}", d.display()),
        None => "seeded random (counter-based recipe, identical for every tensor-parallel degree and engine)".into(),
    }
}

impl Cpu {
    /// Seeded random weights, or this rank's shard of a checkpoint (`weights`, whose config.json
    /// must be `config`).
    pub fn new(
        config: &Config,
        model: &str,
        seed: u64,
        weights: Option<&std::path::Path>,
        comm: Box<dyn cpu::comm::TpComm>,
    ) -> Result<Cpu, EngineError> {
        let engine = match weights {
            None => cpu::CpuEngine::new(config, seed, comm)?,
            // The directory (and its memory maps) closes when this returns: the shard lives on as f32.
            Some(dir) => cpu::CpuEngine::from_safetensors(&open_checkpoint(dir)?, comm)?,
        };
        Ok(Cpu { engine, config: config.clone(), model: model.to_string(), weights: weights_label(weights) })
    }
}

impl Engine for Cpu {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            name: "cpu".into(),
            version: crate::VERSION.into(),
            kind: "builtin".into(),
            path: None,
            details: serde_json::json!({
                "model": self.model,
                "dtype": "float32",
                "weights": self.weights,
                "matmul": "matrixmultiply sgemm",
            }),
        }
    }

    fn topology(&self) -> Topology {
        Topology::AllRanks
    }

    fn generate(
        &mut self,
        prompts: &[Vec<i32>],
        max_new_tokens: u32,
        exact_length: bool,
        sink: &dyn TokenCallback,
    ) -> Result<(), EngineError> {
        let req = cpu::GenerateRequest { prompts, max_new_tokens: max_new_tokens as usize, exact_length };
        sink.mark_submit();
        self.engine.generate(&req, &mut |sample, step, token, finish| {
            sink.on_token(sample as u32, step as u32, token, finish)
        })?;
        Ok(())
    }

    fn memory(&self) -> Result<EngineMemory, EngineError> {
        let m = self.engine.memory();
        Ok(EngineMemory {
            weights_bytes: Some(m.weights_bytes),
            kv_cache_bytes: Some(m.kv_cache_bytes),
            workspace_bytes: Some(m.workspace_bytes),
            comm_bytes: None,
            host_bytes: Some(m.weights_bytes + m.kv_cache_bytes + m.workspace_bytes),
        })
    }

    fn vocab_size(&self) -> Option<u32> {
        Some(self.config.vocab_size as u32)
    }

    fn max_context(&self) -> Option<u32> {
        Some(self.config.max_position_embeddings as u32)
    }
}

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda/disabled.rs"]
pub mod cuda;

/// The `cuda` engine behind the `Engine` trait.
pub struct Cuda {
    engine: cuda::CudaEngine,
    config: Config,
    model: String,
    weights: String,
}

impl Cuda {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        model: &str,
        dtype: &str,
        seed: u64,
        weights: Option<&std::path::Path>,
        ordinal: usize,
        rank: usize,
        world: usize,
        nccl_id: &[u8],
    ) -> Result<Cuda, EngineError> {
        let dtype = cuda::Dtype::parse(dtype).map_err(EngineError::from)?;
        let dir = weights.map(open_checkpoint).transpose()?;
        let init = match &dir {
            Some(d) => cuda::WeightInit::Checkpoint(d),
            None => cuda::WeightInit::Seeded(seed),
        };
        let engine =
            cuda::CudaEngine::new(config, dtype, init, ordinal, rank, world, nccl_id).map_err(EngineError::from)?;
        Ok(Cuda { engine, config: config.clone(), model: model.to_string(), weights: weights_label(weights) })
    }

    pub fn inner(&mut self) -> &mut cuda::CudaEngine {
        &mut self.engine
    }
}

/// Rank 0's NCCL unique id for the cuda engine (broadcast over MPI by the caller).
pub fn cuda_rendezvous() -> Result<Vec<u8>, cuda::CudaError> {
    cuda::nccl_unique_id()
}

/// The message of a build without the `cuda` feature.
pub const NO_CUDA: &str = "this tpprof was built without the `cuda` feature: rebuild with default features (cargo build --release) or use --engine cpu";

impl Engine for Cuda {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            name: "cuda".into(),
            version: crate::VERSION.into(),
            kind: "builtin".into(),
            path: None,
            details: serde_json::json!({
                "model": self.model,
                "dtype": self.engine.dtype().name(),
                "device": self.engine.device_name(),
                "arch": self.engine.arch(),
                "weights": self.weights,
                "kernels": "NVRTC-compiled CUDA C; cuBLAS GEMMs (f32 accumulation); NCCL all-reduce",
            }),
        }
    }

    fn topology(&self) -> Topology {
        Topology::AllRanks
    }

    fn prepare(&mut self, prompts: &[Vec<i32>], max_new_tokens: u32) -> Result<(), EngineError> {
        self.engine.prepare(prompts, max_new_tokens as usize).map_err(EngineError::from)
    }

    fn generate(
        &mut self,
        prompts: &[Vec<i32>],
        max_new_tokens: u32,
        exact_length: bool,
        sink: &dyn TokenCallback,
    ) -> Result<(), EngineError> {
        sink.mark_submit();
        self.engine
            .generate(prompts, max_new_tokens as usize, exact_length, &mut |s, step, tok, fin| {
                sink.on_token(s as u32, step as u32, tok, fin)
            })
            .map_err(EngineError::from)
    }

    fn memory(&self) -> Result<EngineMemory, EngineError> {
        let (w, kv, ws, comm) = self.engine.memory();
        Ok(EngineMemory {
            weights_bytes: Some(w),
            kv_cache_bytes: Some(kv),
            workspace_bytes: Some(ws),
            comm_bytes: Some(comm),
            host_bytes: None,
        })
    }

    fn vocab_size(&self) -> Option<u32> {
        Some(self.config.vocab_size as u32)
    }

    fn max_context(&self) -> Option<u32> {
        Some(self.config.max_position_embeddings as u32)
    }

    fn device_steps(&self) -> Option<Vec<(u64, u64)>> {
        Some(self.engine.step_times().device_abs_ns.clone())
    }

    fn run_stats(&self) -> Option<serde_json::Value> {
        self.engine.last_run().cloned()
    }
}
