//! tpprof's own engines. `cpu`: the tensor-parallel Qwen2 reference over MPI.

pub mod cpu;

use super::config::Config;
use super::{Engine, EngineError, EngineInfo, EngineMemory, Topology};
use crate::record::TokenSink;

/// The `cpu` engine behind the `Engine` trait.
pub struct Cpu {
    engine: cpu::CpuEngine,
    config: Config,
    model: String,
}

impl Cpu {
    pub fn new(config: &Config, model: &str, seed: u64, comm: Box<dyn cpu::comm::TpComm>) -> Result<Cpu, EngineError> {
        let engine = cpu::CpuEngine::new(config, seed, comm)?;
        Ok(Cpu { engine, config: config.clone(), model: model.to_string() })
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
                "weights": "seeded random (counter-based, identical for every tensor-parallel degree)",
                "matmul": "matrixmultiply sgemm",
            }),
        }
    }

    fn topology(&self) -> Topology {
        Topology::AllRanks
    }

    fn generate(&mut self, prompts: &[Vec<i32>], max_new_tokens: u32, exact_length: bool, sink: &TokenSink)
        -> Result<(), EngineError> {
        let req = cpu::GenerateRequest { prompts, max_new_tokens: max_new_tokens as usize, exact_length };
        sink.mark_submit();
        self.engine.generate(&req, &mut |sample, step, token, finish| sink.on_token(sample as u32, step as u32, token, finish))?;
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
