//! `CuptiSession`: what a run drives with `--cupti` (check before the engine loads, start after it
//! created its CUDA context, finish and analyse after the measured generate()).

#[cfg(feature = "cuda")]
use super::collector::Collector;
#[cfg(feature = "cuda")]
use super::{analyse_device, windows_from_device_steps, windows_from_tokens, StepSource};
use super::{Activity, CuptiError, CuptiReport, Kernel};

/// What run.rs drives: CUPTI on when `--cupti`, nothing otherwise (and in builds without CUDA).
pub struct CuptiSession {
    #[cfg(feature = "cuda")]
    inner: Option<Collector>,
}

/// A finished recording, analysed: the rank's report, the per-step activity of each device (for
/// the cross-rank summary), and the kernels for the trace.
pub struct Recorded {
    pub report: CuptiReport,
    /// Per device the process ran kernels on: its per-step activity (for the cross-rank summary).
    pub device_steps: Vec<(u32, Vec<Activity>)>,
    pub trace_kernels: Vec<Kernel>,
    pub names: Vec<String>,
}

impl CuptiSession {
    /// Whether --cupti can work on this rank (a GPU, a CUDA build, libcupti), before the engine loads.
    pub fn check(has_gpu: bool) -> Result<(), CuptiError> {
        if !has_gpu {
            return Err(CuptiError::NoGpu);
        }
        #[cfg(feature = "cuda")]
        {
            // SAFETY: only tries to dlopen.
            if !unsafe { cudarc::cupti::sys::is_culib_present() } {
                return Err(CuptiError::NoLibrary);
            }
            Ok(())
        }
        #[cfg(not(feature = "cuda"))]
        Err(CuptiError::NotBuilt)
    }

    /// Starts CUPTI when asked; call after the engine created its CUDA context (see Collector::start).
    pub fn start(enabled: bool, has_gpu: bool) -> Result<CuptiSession, CuptiError> {
        if enabled {
            Self::check(has_gpu)?;
        }
        #[cfg(feature = "cuda")]
        {
            Ok(CuptiSession { inner: if enabled { Some(Collector::start()?) } else { None } })
        }
        #[cfg(not(feature = "cuda"))]
        {
            if enabled {
                return Err(CuptiError::NotBuilt);
            }
            Ok(CuptiSession {})
        }
    }

    /// Stops CUPTI and analyses what it recorded. `device_steps`: the engine's device step times;
    /// `tokens`: (sample, step, t) on CLOCK_MONOTONIC; `submit`: when generate() was called.
    pub fn finish(
        self,
        device_steps: Option<&[(u64, u64)]>,
        tokens: &[(u32, u32, u64)],
        batch: u32,
        max_steps: u32,
        submit: u64,
        trace_steps: u32,
    ) -> Result<Option<Recorded>, CuptiError> {
        #[cfg(feature = "cuda")]
        {
            let Some(c) = self.inner else { return Ok(None) };
            let c = c.finish()?;
            let from_tokens = windows_from_tokens(tokens, batch, max_steps);
            let first_token = from_tokens.as_ref().map(|(f, _)| *f);
            let (windows, source) = match device_steps {
                Some(s) if !s.is_empty() => (windows_from_device_steps(s), StepSource::DeviceEvents),
                _ => (from_tokens.map(|(_, w)| w).unwrap_or_default(), StepSource::HostTokens),
            };
            let prefill = first_token.map(|f| (submit, f));
            let mut devices: Vec<u32> = c.kernels.iter().map(|k| k.device).collect();
            devices.sort_unstable();
            devices.dedup();
            let mut out = Vec::new();
            let mut per_device = Vec::new();
            for d in devices {
                let ks: Vec<Kernel> = c.kernels.iter().filter(|k| k.device == d).copied().collect();
                let (act, steps) = analyse_device(d, &ks, &c.names, &windows, source, prefill);
                per_device.push((d, steps));
                out.push(act);
            }
            let lo = submit.min(windows.first().map(|w| w.0).unwrap_or(submit));
            let hi = match trace_steps {
                0 => u64::MAX,
                n => windows.get(n as usize - 1).or(windows.last()).map(|w| w.1).unwrap_or(u64::MAX),
            };
            let trace_kernels = c.kernels.iter().filter(|k| k.start >= lo && k.start < hi).copied().collect();
            Ok(Some(Recorded {
                report: CuptiReport {
                    cupti_version: c.version,
                    clock: c.clock,
                    offset_drift_ns: c.offset_drift_ns,
                    records: c.records,
                    dropped: c.dropped,
                    devices: out,
                },
                device_steps: per_device,
                trace_kernels,
                names: c.names,
            }))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (device_steps, tokens, batch, max_steps, submit, trace_steps);
            Ok(None)
        }
    }
}
