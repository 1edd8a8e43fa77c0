//! The memory sampler: a thread per rank that reads, every interval, this process's resident set
//! (/proc/self/statm) and, when a GPU is bound, NVML's per-process used memory on that GPU (this
//! process and all processes) and the device's used memory. Peaks with their time; a last reading at
//! stop so a peak right at the end is not lost; the kernel's own high-water mark (VmHWM) beside the
//! sampled RSS peak.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

use super::gpu::GpuInfo;

/// A peak and when it was seen (seconds since the run's epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    pub bytes: u64,
    pub at_s: f64,
}

impl Peak {
    fn update(&mut self, bytes: u64, at_s: f64) {
        if bytes > self.bytes {
            *self = Peak { bytes, at_s };
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostMemory {
    /// Peak of the sampled resident set size.
    pub peak_rss: Peak,
    /// The kernel's peak RSS of this process (VmHWM), exact whatever the sampling interval.
    pub vm_hwm_bytes: Option<u64>,
}

/// GPU memory of this rank's GPU, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GpuMemory {
    Unavailable { reason: String },
    Measured {
        uuid: String,
        /// NVML per-process used memory of this process on the GPU.
        process_peak: Peak,
        /// Sum of NVML per-process used memory of every process on the GPU.
        all_processes_peak: Peak,
        /// NVML device used memory (every process plus the driver's own).
        device_used_peak: Peak,
        total_bytes: u64,
        /// Readings that failed (e.g. NVML refused the process list), with the last reason.
        failed_readings: u64,
        last_error: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryReport {
    pub interval_ms: u64,
    pub samples: u64,
    pub host: HostMemory,
    pub gpu: GpuMemory,
}

pub struct MemorySampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<MemoryReport>,
}

struct State {
    epoch: Instant,
    interval: Duration,
    page_size: u64,
    pid: u32,
    samples: u64,
    rss: Peak,
    gpu: Option<GpuState>,
    gpu_unavailable: String,
}

struct GpuState {
    nvml: Nvml,
    info: GpuInfo,
    process: Peak,
    all: Peak,
    device: Peak,
    failed: u64,
    last_error: Option<String>,
}

impl MemorySampler {
    /// Starts sampling now; `gpu` is this rank's GPU if it has one, else `no_gpu_reason` says why.
    pub fn start(epoch: Instant, interval: Duration, gpu: Option<GpuInfo>, no_gpu_reason: String) -> MemorySampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("tpprof-memory".into())
            .spawn(move || {
                let mut st = State::new(epoch, interval, gpu, no_gpu_reason);
                while !flag.load(Ordering::Acquire) {
                    st.read();
                    std::thread::park_timeout(st.interval);
                }
                st.read(); // the final reading
                st.report()
            })
            .expect("spawn the memory sampler thread");
        MemorySampler { stop, handle }
    }

    pub fn stop(self) -> MemoryReport {
        self.stop.store(true, Ordering::Release);
        self.handle.thread().unpark();
        self.handle.join().expect("the memory sampler thread does not panic")
    }
}

impl State {
    fn new(epoch: Instant, interval: Duration, gpu: Option<GpuInfo>, no_gpu_reason: String) -> State {
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        let mut gpu_unavailable = no_gpu_reason;
        let gpu = gpu.and_then(|info| match Nvml::init() {
            Ok(nvml) => Some(GpuState { nvml, info, process: Peak::default(), all: Peak::default(), device: Peak::default(), failed: 0, last_error: None }),
            Err(e) => {
                gpu_unavailable = format!("NVML could not start in the sampler: {e}");
                None
            }
        });
        State { epoch, interval, page_size, pid: std::process::id(), samples: 0, rss: Peak::default(), gpu, gpu_unavailable }
    }

    fn read(&mut self) {
        let t = self.epoch.elapsed().as_secs_f64();
        self.samples += 1;
        if let Some(rss) = read_rss_bytes(self.page_size) {
            self.rss.update(rss, t);
        }
        if let Some(g) = &mut self.gpu {
            if let Err(e) = g.read(self.pid, t) {
                g.failed += 1;
                g.last_error = Some(e);
            }
        }
    }

    fn report(self) -> MemoryReport {
        MemoryReport {
            interval_ms: self.interval.as_millis() as u64,
            samples: self.samples,
            host: HostMemory { peak_rss: self.rss, vm_hwm_bytes: read_vm_hwm_bytes() },
            gpu: match self.gpu {
                Some(g) => GpuMemory::Measured {
                    uuid: g.info.uuid,
                    process_peak: g.process,
                    all_processes_peak: g.all,
                    device_used_peak: g.device,
                    total_bytes: g.info.total_bytes,
                    failed_readings: g.failed,
                    last_error: g.last_error,
                },
                None => GpuMemory::Unavailable { reason: self.gpu_unavailable },
            },
        }
    }
}

impl GpuState {
    fn read(&mut self, pid: u32, t: f64) -> Result<(), String> {
        let dev = self.nvml.device_by_index(self.info.nvml_index).map_err(|e| e.to_string())?;
        let mem = dev.memory_info().map_err(|e| e.to_string())?;
        self.device.update(mem.used, t);
        let procs = dev.running_compute_processes().map_err(|e| e.to_string())?;
        let used = |p: &nvml_wrapper::struct_wrappers::device::ProcessInfo| match p.used_gpu_memory {
            UsedGpuMemory::Used(b) => b,
            UsedGpuMemory::Unavailable => 0,
        };
        self.all.update(procs.iter().map(used).sum(), t);
        self.process.update(procs.iter().filter(|p| p.pid == pid).map(used).sum(), t);
        Ok(())
    }
}

/// Resident set size from /proc/self/statm (second field, in pages).
fn read_rss_bytes(page_size: u64) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size)
}

/// VmHWM from /proc/self/status (kB).
fn read_vm_hwm_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_sees_a_known_allocation() {
        let epoch = Instant::now();
        let s = MemorySampler::start(epoch, Duration::from_millis(1), None, "test: no GPU".into());
        // Other tests run in this process too, so only a lower bound is certain: the allocation itself.
        let size = 64 << 20;
        let v = std::hint::black_box(vec![1u8; size]);
        std::thread::sleep(Duration::from_millis(30));
        let r = s.stop();
        drop(v);
        assert!(r.samples >= 2);
        assert!(r.host.peak_rss.bytes >= size as u64, "{} < {size}", r.host.peak_rss.bytes);
        assert!(r.host.vm_hwm_bytes.unwrap() >= r.host.peak_rss.bytes / 2);
        assert_eq!(r.gpu, GpuMemory::Unavailable { reason: "test: no GPU".into() });
        assert_eq!(r.interval_ms, 1);
    }

    #[test]
    fn peak_keeps_the_first_maximum() {
        let mut p = Peak::default();
        p.update(10, 1.0);
        p.update(5, 2.0);
        p.update(10, 3.0);
        assert_eq!(p, Peak { bytes: 10, at_s: 1.0 });
    }
}
