//! Which GPUs this host has (NVML, loaded at run time) and which one this rank is bound to.
//! CUDA ordinals follow CUDA_VISIBLE_DEVICES (indices or UUIDs) when it is set, as CUDA does;
//! NVML itself ignores that variable, so the mapping is made here.

use nvml_wrapper::Nvml;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One GPU as this rank sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GpuInfo {
    /// The CUDA ordinal in this process (what an engine passes to cudaSetDevice).
    pub ordinal: i32,
    /// NVML's index (the physical index, independent of CUDA_VISIBLE_DEVICES).
    pub nvml_index: u32,
    /// NVML's UUID of the GPU.
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// Memory of the GPU, bytes.
    pub total_bytes: u64,
}

/// What the host has: its GPUs in CUDA order, or why there are none.
#[derive(Debug, Clone)]
pub enum HostGpus {
    Present { gpus: Vec<GpuInfo>, driver_version: String, cuda_driver_version: String },
    Absent { reason: String },
}

impl HostGpus {
    pub fn probe() -> HostGpus {
        let nvml = match Nvml::init() {
            Ok(n) => n,
            Err(e) => return HostGpus::Absent { reason: format!("no NVIDIA GPU usable: NVML could not start ({e})") },
        };
        let count = match nvml.device_count() {
            Ok(0) => return HostGpus::Absent { reason: "NVML reports no GPU on this host".into() },
            Ok(c) => c,
            Err(e) => return HostGpus::Absent { reason: format!("NVML device count failed: {e}") },
        };
        let mut all = Vec::new();
        for i in 0..count {
            if let Ok(d) = nvml.device_by_index(i) {
                all.push(GpuInfo {
                    ordinal: -1,
                    nvml_index: i,
                    uuid: d.uuid().unwrap_or_default(),
                    name: d.name().unwrap_or_default(),
                    total_bytes: d.memory_info().map(|m| m.total).unwrap_or(0),
                });
            }
        }
        let visible = visible_in_cuda_order(&all, std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref());
        if visible.is_empty() {
            return HostGpus::Absent { reason: "CUDA_VISIBLE_DEVICES hides every GPU".into() };
        }
        let cuda = nvml
            .sys_cuda_driver_version()
            .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10))
            .unwrap_or_else(|_| "unknown".into());
        HostGpus::Present {
            gpus: visible,
            driver_version: nvml.sys_driver_version().unwrap_or_else(|_| "unknown".into()),
            cuda_driver_version: cuda,
        }
    }

    /// This rank's GPU: `devices[local_rank]` if --devices was given, else the local rank's ordinal.
    /// Ok(None) when the host has no GPU and none was asked for.
    pub fn bind(&self, local_rank: i32, devices: Option<&[i32]>) -> Result<Option<GpuInfo>, BindError> {
        match self {
            HostGpus::Absent { reason } => match devices {
                Some(_) => Err(BindError::NoGpus(reason.clone())),
                None => Ok(None),
            },
            HostGpus::Present { gpus, .. } => {
                let ordinal = match devices {
                    Some(d) => {
                        *d.get(local_rank as usize).ok_or(BindError::TooFewDevices { listed: d.len(), local_rank })?
                    }
                    None => local_rank,
                };
                gpus.get(ordinal as usize).cloned().map(Some).ok_or(BindError::NoSuchGpu {
                    local_rank,
                    ordinal,
                    present: gpus.len(),
                })
            }
        }
    }
}

/// Why a rank cannot have the GPU it was given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BindError {
    #[error("--devices was given but {0}")]
    NoGpus(String),
    #[error(
        "--devices lists {listed} GPUs but this host runs local rank {local_rank}: give one ordinal per local rank"
    )]
    TooFewDevices { listed: usize, local_rank: i32 },
    #[error("local rank {local_rank} needs GPU {ordinal} but this host shows {present} GPU(s): start at most {present} ranks per host or pass --devices")]
    NoSuchGpu { local_rank: i32, ordinal: i32, present: usize },
    #[error("this rank has no GPU")]
    Missing,
}

/// NVML's devices, filtered and ordered as CUDA_VISIBLE_DEVICES says, with CUDA ordinals assigned.
fn visible_in_cuda_order(all: &[GpuInfo], cvd: Option<&str>) -> Vec<GpuInfo> {
    let picked: Vec<GpuInfo> = match cvd {
        None => all.to_vec(),
        Some(list) => {
            let mut out = Vec::new();
            // CUDA stops at the first entry it cannot resolve.
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let found = match item.parse::<u32>() {
                    Ok(i) => all.iter().find(|g| g.nvml_index == i),
                    Err(_) => all
                        .iter()
                        .find(|g| g.uuid.starts_with(item) || g.uuid.trim_start_matches("GPU-").starts_with(item)),
                };
                match found {
                    Some(g) => out.push(g.clone()),
                    None => break,
                }
            }
            out
        }
    };
    picked
        .into_iter()
        .enumerate()
        .map(|(i, mut g)| {
            g.ordinal = i as i32;
            g
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(n: u32) -> Vec<GpuInfo> {
        (0..n)
            .map(|i| GpuInfo {
                ordinal: -1,
                nvml_index: i,
                uuid: format!("GPU-{i}aaa"),
                name: "H200".into(),
                total_bytes: 1,
            })
            .collect()
    }

    #[test]
    fn cuda_visible_devices_reorders_and_filters() {
        let v = visible_in_cuda_order(&gpus(4), Some("2,GPU-0aaa,9,1"));
        assert_eq!(v.iter().map(|g| (g.ordinal, g.nvml_index)).collect::<Vec<_>>(), vec![(0, 2), (1, 0)]);
        assert_eq!(visible_in_cuda_order(&gpus(2), None).len(), 2);
    }

    #[test]
    fn binding_follows_local_rank_or_devices() {
        let host = HostGpus::Present {
            gpus: visible_in_cuda_order(&gpus(2), None),
            driver_version: "x".into(),
            cuda_driver_version: "y".into(),
        };
        assert_eq!(host.bind(1, None).unwrap().unwrap().nvml_index, 1);
        assert_eq!(host.bind(0, Some(&[1, 0])).unwrap().unwrap().nvml_index, 1);
        assert!(host.bind(2, None).unwrap_err().to_string().contains("shows 2 GPU(s)"));
        assert!(host.bind(1, Some(&[0])).unwrap_err().to_string().contains("--devices lists 1"));
        let none = HostGpus::Absent { reason: "no driver".into() };
        assert_eq!(none.bind(0, None).unwrap(), None);
        assert!(none.bind(0, Some(&[0])).unwrap_err().to_string().contains("no driver"));
    }
}
