//! The memory sampler: a thread per rank that reads, every interval, this process's resident set
//! (/proc/self/statm) and, when a GPU is bound, NVML's per-process used memory of every process on
//! that GPU and the device's used and free memory. Peaks with their time, per run phase (engine load,
//! prepare, prefill, decode) and a down-sampled timeline; a last reading at stop so a peak right at
//! the end is not lost; the kernel's own high-water mark (VmHWM) beside the sampled RSS peak.
//!
//! "Job" memory is the sum over the processes of this run (every rank's pid on this host): it is
//! what this rank's GPU holds for the engine, also when another rank's process allocated it (a
//! ONE_PROCESS engine drives every GPU from rank 0).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::gpu::GpuInfo;

/// The phase of the run the samples belong to; set by the run, read by the sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Start = 0,
    EngineLoad = 1,
    Prepare = 2,
    Prefill = 3,
    Decode = 4,
    /// A ONE_PROCESS observer's whole generation (it sees no tokens, so it cannot split it).
    Generate = 5,
    Finish = 6,
}

pub const PHASES: [Phase; 7] =
    [Phase::Start, Phase::EngineLoad, Phase::Prepare, Phase::Prefill, Phase::Decode, Phase::Generate, Phase::Finish];

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::EngineLoad => "engine_load",
            Phase::Prepare => "prepare",
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
            Phase::Generate => "generate",
            Phase::Finish => "finish",
        }
    }
}

/// The shared phase cell.
#[derive(Clone, Default)]
pub struct PhaseCell(Arc<AtomicU8>);

impl PhaseCell {
    pub fn set(&self, p: Phase) {
        self.0.store(p as u8, Ordering::Release);
    }
    pub fn get(&self) -> Phase {
        PHASES[(self.0.load(Ordering::Acquire) as usize).min(PHASES.len() - 1)]
    }
}

/// A peak and when it was seen (seconds since the run's epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Peak {
    /// The peak, bytes.
    pub bytes: u64,
    /// When it was seen, seconds since the run's epoch.
    pub at_s: f64,
}

impl Peak {
    fn update(&mut self, bytes: u64, at_s: f64) {
        if bytes > self.bytes {
            *self = Peak { bytes, at_s };
        }
    }
}

/// This process's host memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HostMemory {
    /// Peak of the sampled resident set size.
    pub peak_rss: Peak,
    /// The kernel's peak RSS of this process (VmHWM), exact whatever the sampling interval.
    pub vm_hwm_bytes: Option<u64>,
}

/// One process seen on this rank's GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GpuProcess {
    /// Process id.
    pub pid: u32,
    /// The rank of this run that owns the pid (same host), if any.
    pub rank: Option<i32>,
    /// Its peak used memory on the GPU, bytes.
    pub peak_bytes: u64,
}

/// Peak of one phase of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PhasePeak {
    /// `start`, `engine_load`, `prepare`, `prefill`, `decode`, `generate` (a ONE_PROCESS
    /// observer's whole generation) or `finish`.
    pub phase: String,
    /// Job processes on this GPU (or this process's RSS without a GPU); None when the phase was
    /// shorter than the sampling interval and got no reading.
    pub bytes: Option<u64>,
    /// Readings taken in the phase.
    pub samples: u64,
}

/// Samples kept for plotting, down-sampled to at most TIMELINE_POINTS (every reading still counts
/// for the peaks).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Timeline {
    /// Time of each point, seconds since the run's epoch.
    pub t_s: Vec<f64>,
    /// This process's resident set, bytes.
    pub rss_bytes: Vec<u64>,
    /// Job processes on this rank's GPU; empty without a GPU.
    pub gpu_job_bytes: Vec<u64>,
    /// NVML device used memory of this rank's GPU, bytes; empty without a GPU.
    pub gpu_device_used_bytes: Vec<u64>,
    /// Every kept point stands for this many readings.
    pub stride: u64,
}

const TIMELINE_POINTS: usize = 1024;

/// GPU memory of this rank's GPU, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GpuMemory {
    /// No GPU memory reading: the reason (no GPU, NVML missing, ...).
    Unavailable {
        /// Why, in one line.
        reason: String,
    },
    /// Read with NVML from this rank's GPU.
    Measured {
        /// NVML's UUID of the GPU.
        uuid: String,
        /// NVML per-process used memory of this process on the GPU.
        process_peak: Peak,
        /// Sum over this run's processes (every rank's pid) on the GPU.
        job_peak: Peak,
        /// Sum of NVML per-process used memory of every process on the GPU.
        all_processes_peak: Peak,
        /// NVML device used memory (every process plus the driver's own).
        device_used_peak: Peak,
        /// The lowest NVML free memory seen.
        min_free_bytes: u64,
        /// Memory of the GPU, bytes.
        total_bytes: u64,
        /// Every process seen on the GPU with its peak.
        processes: Vec<GpuProcess>,
        /// Readings that failed (e.g. NVML refused the process list), with the last reason.
        failed_readings: u64,
        /// The last failed reading's reason (null: none failed).
        last_error: Option<String>,
    },
}

/// Memory of one rank, sampled every `interval_ms` through the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemoryReport {
    /// Sampling interval, ms; 0 = no periodic sampling, one reading at the end.
    pub interval_ms: u64,
    /// Readings taken.
    pub samples: u64,
    /// This process's host memory.
    pub host: HostMemory,
    /// This rank's GPU memory, or why there is none.
    pub gpu: GpuMemory,
    /// Peak per phase: job GPU memory, or host RSS without a GPU.
    pub phase_peaks: Vec<PhasePeak>,
    /// Readings kept for plotting.
    pub timeline: Timeline,
}

pub struct MemorySampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<MemoryReport>,
}

/// What the sampler needs to know about the run.
pub struct SamplerSetup {
    pub epoch: Instant,
    pub interval: Duration,
    pub gpu: Option<GpuInfo>,
    pub no_gpu_reason: String,
    /// (pid, rank) of every rank of this run on this host.
    pub job: Vec<(u32, i32)>,
    pub phase: PhaseCell,
}

struct State {
    setup: SamplerSetup,
    page_size: u64,
    pid: u32,
    samples: u64,
    rss: Peak,
    gpu: Option<GpuState>,
    gpu_unavailable: String,
    phase_peaks: [(u64, u64); PHASES.len()],
    timeline: Timeline,
    pending: u64,
}

struct GpuState {
    nvml: Nvml,
    info: GpuInfo,
    process: Peak,
    job: Peak,
    all: Peak,
    device: Peak,
    min_free: u64,
    procs: Vec<(u32, u64)>,
    failed: u64,
    last_error: Option<String>,
}

impl MemorySampler {
    /// Starts sampling now.
    pub fn start(setup: SamplerSetup) -> MemorySampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("tpprof-memory".into())
            .spawn(move || {
                let mut st = State::new(setup);
                if st.setup.interval.is_zero() {
                    // Periodic sampling off: wait for stop (park can wake spuriously).
                    while !flag.load(Ordering::Acquire) {
                        std::thread::park();
                    }
                } else {
                    while !flag.load(Ordering::Acquire) {
                        st.read();
                        std::thread::park_timeout(st.setup.interval);
                    }
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
    fn new(setup: SamplerSetup) -> State {
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        let mut gpu_unavailable = setup.no_gpu_reason.clone();
        let gpu = setup.gpu.clone().and_then(|info| match Nvml::init() {
            Ok(nvml) => Some(GpuState {
                nvml,
                info,
                process: Peak::default(),
                job: Peak::default(),
                all: Peak::default(),
                device: Peak::default(),
                min_free: u64::MAX,
                procs: Vec::new(),
                failed: 0,
                last_error: None,
            }),
            Err(e) => {
                gpu_unavailable = format!("NVML could not start in the sampler: {e}");
                None
            }
        });
        State {
            setup,
            page_size,
            pid: std::process::id(),
            samples: 0,
            rss: Peak::default(),
            gpu,
            gpu_unavailable,
            phase_peaks: [(0, 0); PHASES.len()],
            timeline: Timeline { stride: 1, ..Default::default() },
            pending: 0,
        }
    }

    fn read(&mut self) {
        let t = self.setup.epoch.elapsed().as_secs_f64();
        let phase = self.setup.phase.get() as usize;
        self.samples += 1;
        let rss = read_rss_bytes(self.page_size).unwrap_or(0);
        self.rss.update(rss, t);
        let mut gpu_now = None;
        if let Some(g) = &mut self.gpu {
            match g.read(self.pid, &self.setup.job, t) {
                Ok(now) => gpu_now = Some(now),
                Err(e) => {
                    g.failed += 1;
                    g.last_error = Some(e.to_string());
                }
            }
        }
        let phase_value = match (&self.gpu, gpu_now) {
            (Some(_), Some((job, _))) => job,
            (Some(_), None) => 0,
            (None, _) => rss,
        };
        let (peak, n) = &mut self.phase_peaks[phase];
        *peak = (*peak).max(phase_value);
        *n += 1;
        self.keep(t, rss, gpu_now);
    }

    /// Adds a point to the timeline, halving its resolution whenever it is full.
    fn keep(&mut self, t: f64, rss: u64, gpu: Option<(u64, u64)>) {
        self.pending += 1;
        if self.pending < self.timeline.stride {
            return;
        }
        self.pending = 0;
        let tl = &mut self.timeline;
        tl.t_s.push(t);
        tl.rss_bytes.push(rss);
        if let Some((job, dev)) = gpu {
            tl.gpu_job_bytes.push(job);
            tl.gpu_device_used_bytes.push(dev);
        }
        if tl.t_s.len() >= TIMELINE_POINTS {
            fn halve<T: Copy>(v: &mut Vec<T>) {
                *v = v.iter().step_by(2).copied().collect();
            }
            halve(&mut tl.t_s);
            halve(&mut tl.rss_bytes);
            halve(&mut tl.gpu_job_bytes);
            halve(&mut tl.gpu_device_used_bytes);
            tl.stride *= 2;
        }
    }

    fn report(self) -> MemoryReport {
        let job = &self.setup.job;
        MemoryReport {
            interval_ms: self.setup.interval.as_millis() as u64,
            samples: self.samples,
            host: HostMemory { peak_rss: self.rss, vm_hwm_bytes: read_vm_hwm_bytes() },
            // Phases a run has no part in (generate on engine ranks, prefill/decode on observers,
            // start when it had no reading) are left out; phases without a reading say so.
            phase_peaks: PHASES
                .iter()
                .zip(self.phase_peaks)
                .filter(|(p, (_, n))| {
                    let observer = self.phase_peaks[Phase::Generate as usize].1 > 0;
                    match p {
                        Phase::Start | Phase::Generate => *n > 0,
                        Phase::Prefill | Phase::Decode => !observer,
                        _ => true,
                    }
                })
                .map(|(p, (b, n))| PhasePeak { phase: p.name().into(), bytes: (n > 0).then_some(b), samples: n })
                .collect(),
            timeline: self.timeline,
            gpu: match self.gpu {
                Some(g) => GpuMemory::Measured {
                    uuid: g.info.uuid,
                    process_peak: g.process,
                    job_peak: g.job,
                    all_processes_peak: g.all,
                    device_used_peak: g.device,
                    min_free_bytes: if g.min_free == u64::MAX { 0 } else { g.min_free },
                    total_bytes: g.info.total_bytes,
                    processes: g
                        .procs
                        .iter()
                        .map(|&(pid, peak)| GpuProcess {
                            pid,
                            rank: job.iter().find(|(p, _)| *p == pid).map(|(_, r)| *r),
                            peak_bytes: peak,
                        })
                        .collect(),
                    failed_readings: g.failed,
                    last_error: g.last_error,
                },
                None => GpuMemory::Unavailable { reason: self.gpu_unavailable },
            },
        }
    }
}

impl GpuState {
    /// One reading; returns (job bytes, device used bytes).
    fn read(&mut self, pid: u32, job: &[(u32, i32)], t: f64) -> Result<(u64, u64), nvml_wrapper::error::NvmlError> {
        let dev = self.nvml.device_by_index(self.info.nvml_index)?;
        let mem = dev.memory_info()?;
        self.device.update(mem.used, t);
        self.min_free = self.min_free.min(mem.free);
        let procs = dev.running_compute_processes()?;
        let used = |p: &nvml_wrapper::struct_wrappers::device::ProcessInfo| match p.used_gpu_memory {
            UsedGpuMemory::Used(b) => b,
            UsedGpuMemory::Unavailable => 0,
        };
        let (mut all, mut mine, mut ours) = (0u64, 0u64, 0u64);
        for p in &procs {
            let b = used(p);
            all += b;
            if p.pid == pid {
                mine += b;
            }
            if job.iter().any(|(j, _)| *j == p.pid) {
                ours += b;
            }
            if let Some((_, peak)) = self.procs.iter_mut().find(|(q, _)| *q == p.pid) {
                *peak = (*peak).max(b);
            } else if self.procs.len() < 64 {
                self.procs.push((p.pid, b));
            }
        }
        self.all.update(all, t);
        self.process.update(mine, t);
        self.job.update(ours, t);
        Ok((ours, mem.used))
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

    fn setup(interval_ms: u64) -> SamplerSetup {
        SamplerSetup {
            epoch: Instant::now(),
            interval: Duration::from_millis(interval_ms),
            gpu: None,
            no_gpu_reason: "test: no GPU".into(),
            job: vec![(std::process::id(), 0)],
            phase: PhaseCell::default(),
        }
    }

    #[test]
    fn sampler_sees_a_known_allocation_in_its_phase() {
        let s = setup(1);
        let phase = s.phase.clone();
        let sampler = MemorySampler::start(s);
        phase.set(Phase::Prefill);
        // Other tests run in this process too, so only a lower bound is certain: the allocation.
        let size = 64 << 20;
        let v = std::hint::black_box(vec![1u8; size]);
        std::thread::sleep(Duration::from_millis(30));
        phase.set(Phase::Decode);
        std::thread::sleep(Duration::from_millis(5));
        let r = sampler.stop();
        drop(v);
        assert!(r.samples >= 2);
        assert!(r.host.peak_rss.bytes >= size as u64, "{} < {size}", r.host.peak_rss.bytes);
        assert!(r.host.vm_hwm_bytes.unwrap() >= r.host.peak_rss.bytes / 2);
        assert_eq!(r.gpu, GpuMemory::Unavailable { reason: "test: no GPU".into() });
        assert_eq!(r.interval_ms, 1);
        let prefill = r.phase_peaks.iter().find(|p| p.phase == "prefill").unwrap();
        assert!(prefill.bytes.unwrap() >= size as u64 && prefill.samples > 0);
        // A phase without readings says so instead of reporting 0.
        let prepare = r.phase_peaks.iter().find(|p| p.phase == "prepare").unwrap();
        assert_eq!((prepare.bytes, prepare.samples), (None, 0));
        assert!(r.phase_peaks.iter().all(|p| p.phase != "generate"));
        assert_eq!(r.timeline.t_s.len(), r.timeline.rss_bytes.len());
        assert!(r.timeline.gpu_job_bytes.is_empty());
    }

    #[test]
    fn interval_zero_takes_only_the_final_reading() {
        let r = MemorySampler::start(setup(0)).stop();
        assert_eq!((r.samples, r.interval_ms), (1, 0));
        assert!(r.host.peak_rss.bytes > 0);
    }

    #[test]
    fn timeline_is_down_sampled_not_truncated() {
        let mut st = State::new(setup(1));
        for i in 0..5000u64 {
            st.keep(i as f64, i, None);
        }
        let tl = &st.timeline;
        assert!(tl.t_s.len() < TIMELINE_POINTS && tl.t_s.len() > TIMELINE_POINTS / 4, "{}", tl.t_s.len());
        assert!(tl.stride >= 4);
        // Still spans the whole run.
        assert_eq!(tl.t_s[0], 0.0);
        assert!(*tl.t_s.last().unwrap() > 4000.0);
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
