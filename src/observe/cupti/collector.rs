//! The FFI: CUPTI's Activity API through cudarc (loaded at run time). CUPTI calls plain C
//! functions without a user pointer, so the records go to one process-wide store.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::Mutex;

use cudarc::cupti::sys;

use super::{CuptiError, Kernel};

const BUFFER_BYTES: usize = 8 << 20;
const BUFFER_ALIGN: usize = 8;

#[derive(Default)]
struct Store {
    kernels: Vec<Kernel>,
    names: Vec<String>,
    by_ptr: HashMap<usize, u32>,
    by_name: HashMap<String, u32>,
    records: u64,
    dropped: u64,
}

static STORE: Mutex<Option<Store>> = Mutex::new(None);

fn layout() -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(BUFFER_BYTES, BUFFER_ALIGN).expect("valid layout")
}

extern "C" fn clock() -> u64 {
    crate::clock::mono_ns()
}

extern "C" fn buffer_requested(buffer: *mut *mut u8, size: *mut usize, max_records: *mut usize) {
    // SAFETY: CUPTI passes valid out-pointers; the buffer is freed in buffer_completed.
    unsafe {
        *buffer = std::alloc::alloc(layout());
        *size = if (*buffer).is_null() { 0 } else { BUFFER_BYTES };
        *max_records = 0;
    }
}

extern "C" fn buffer_completed(
    ctx: cudarc::driver::sys::CUcontext,
    stream: u32,
    buffer: *mut u8,
    _size: usize,
    valid: usize,
) {
    if buffer.is_null() {
        return;
    }
    let mut guard = STORE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(store) = guard.as_mut() {
        let mut rec: *mut sys::CUpti_Activity = std::ptr::null_mut();
        loop {
            // SAFETY: buffer holds `valid` bytes CUPTI filled; rec points into it.
            let r = unsafe { sys::cuptiActivityGetNextRecord(buffer, valid, &mut rec) };
            if r != sys::CUptiResult::CUPTI_SUCCESS || rec.is_null() {
                break;
            }
            // SAFETY: every record starts with its kind.
            let kind = unsafe { (*rec).kind };
            if kind != sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL
                && kind != sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_KERNEL
            {
                continue;
            }
            // Every kernel record since CUpti_ActivityKernel4 keeps start, end, deviceId,
            // streamId and name at the same offsets (checked in the tests against the newest
            // struct cudarc has), so the Kernel4 view reads the newer records too.
            // SAFETY: a kernel record is at least a Kernel4.
            let k = unsafe { &*(rec as *const sys::CUpti_ActivityKernel4) };
            let name_ptr = k.name as usize;
            let name = match store.by_ptr.get(&name_ptr) {
                Some(&n) => n,
                None => {
                    let s = if k.name.is_null() {
                        "(unnamed)".to_string()
                    } else {
                        // SAFETY: CUPTI's kernel name is a NUL-terminated string it keeps alive
                        // at least while the record is.
                        unsafe { CStr::from_ptr(k.name) }.to_string_lossy().into_owned()
                    };
                    // One entry per distinct name, whatever the pointer.
                    let next = store.names.len() as u32;
                    let n = *store.by_name.entry(s.clone()).or_insert(next);
                    if n == next {
                        store.names.push(s);
                    }
                    store.by_ptr.insert(name_ptr, n);
                    n
                }
            };
            store.records += 1;
            store.kernels.push(Kernel {
                start: k.start,
                end: k.end,
                device: k.deviceId,
                stream: k.streamId,
                name,
                corr: k.correlationId,
            });
        }
        let mut dropped = 0usize;
        // SAFETY: plain query on the context/stream CUPTI gave us.
        if unsafe { sys::cuptiActivityGetNumDroppedRecords(ctx as _, stream, &mut dropped) }
            == sys::CUptiResult::CUPTI_SUCCESS
        {
            store.dropped += dropped as u64;
        }
    }
    drop(guard);
    // SAFETY: allocated in buffer_requested with the same layout.
    unsafe { std::alloc::dealloc(buffer, layout()) };
}

fn check(call: &'static str, r: sys::CUptiResult) -> Result<(), CuptiError> {
    if r == sys::CUptiResult::CUPTI_SUCCESS {
        return Ok(());
    }
    let mut s: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: cuptiGetResultString returns a static string.
    let msg = if unsafe { sys::cuptiGetResultString(r, &mut s) } == sys::CUptiResult::CUPTI_SUCCESS && !s.is_null() {
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    } else {
        format!("{r:?}")
    };
    Err(CuptiError::Call { call, message: msg })
}

/// The running collection; `finish` flushes and returns the records. Dropped unfinished (a run
/// that failed after CUPTI started), it only disables the activity: no flush, which could wait
/// on a hung GPU.
pub struct Collector {
    pub version: u32,
    /// None: CUPTI uses CLOCK_MONOTONIC; Some: CUPTI clock − CLOCK_MONOTONIC at start.
    offset_start: Option<i64>,
    active: bool,
}

impl Drop for Collector {
    fn drop(&mut self) {
        if self.active {
            // SAFETY: plain call into the loaded library.
            let _ =
                unsafe { sys::cuptiActivityDisable(sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) };
            *STORE.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

/// What a finished collection gives.
pub struct Collected {
    pub kernels: Vec<Kernel>,
    pub names: Vec<String>,
    pub records: u64,
    pub dropped: u64,
    pub version: u32,
    pub clock: String,
    pub offset_drift_ns: Option<i64>,
}

fn offset() -> i64 {
    let mut t = 0u64;
    let a = crate::clock::mono_ns();
    // SAFETY: writes one u64.
    unsafe { sys::cuptiGetTimestamp(&mut t) };
    let b = crate::clock::mono_ns();
    t as i64 - ((a + b) / 2) as i64
}

impl Collector {
    /// Loads CUPTI and starts recording kernels of every context of the process, existing ones
    /// included. Call it after the engine initialised CUDA: enabled before the process's first
    /// cuInit, cuInit deadlocked (a pthread mutex inside libcuda; CUPTI 13.0.1, driver
    /// 580.159, H200, seen 2026-11-28).
    pub fn start() -> Result<Collector, CuptiError> {
        // SAFETY: only tries to dlopen.
        if !unsafe { sys::is_culib_present() } {
            return Err(CuptiError::NoLibrary);
        }
        // cuInit before any CUPTI call, whatever the engine did: CUPTI enabled before the
        // process's first cuInit deadlocked inside cuInit (see above). cuInit is idempotent and
        // creates no context.
        // SAFETY: dlopen check, then cuInit(0).
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CuptiError::NoDriver);
        }
        cudarc::driver::result::init().map_err(|e| CuptiError::Init(e.to_string()))?;
        let mut guard = STORE.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_some() {
            return Err(CuptiError::Busy);
        }
        let mut version = 0u32;
        // SAFETY: plain calls into the loaded library.
        unsafe {
            check("cuptiGetVersion", sys::cuptiGetVersion(&mut version))?;
            // The timestamp callback is recent (CUPTI 12.x); look it up before calling it,
            // cudarc's loader would panic on a missing symbol.
            let has_cb =
                sys::culib().get::<unsafe extern "C" fn()>(b"cuptiActivityRegisterTimestampCallback\0").is_ok()
                    && std::env::var("TPPROF_CUPTI_CLOCK").map(|v| v != "cupti").unwrap_or(true);
            let offset_start = if has_cb
                && sys::cuptiActivityRegisterTimestampCallback(Some(clock)) == sys::CUptiResult::CUPTI_SUCCESS
            {
                None
            } else {
                Some(offset())
            };
            check(
                "cuptiActivityRegisterCallbacks",
                sys::cuptiActivityRegisterCallbacks(Some(buffer_requested), Some(buffer_completed)),
            )?;
            *guard = Some(Store::default());
            drop(guard);
            if let Err(e) = check(
                "cuptiActivityEnable(CONCURRENT_KERNEL)",
                sys::cuptiActivityEnable(sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL),
            ) {
                *STORE.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return Err(e);
            }
            tracing::debug!(
                "CUPTI {version} recording kernels ({})",
                if offset_start.is_none() { "CLOCK_MONOTONIC callback" } else { "offset to CUPTI's clock" }
            );
            Ok(Collector { version, offset_start, active: true })
        }
    }

    /// Flushes every buffer, stops recording, and returns the kernels on CLOCK_MONOTONIC.
    pub fn finish(mut self) -> Result<Collected, CuptiError> {
        self.active = false;
        // SAFETY: plain calls into the loaded library; the callbacks run before FlushAll returns.
        unsafe {
            check("cuptiActivityFlushAll", sys::cuptiActivityFlushAll(1))?;
            let _ = sys::cuptiActivityDisable(sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
            let _ = sys::cuptiActivityFlushAll(1);
        }
        let store = STORE.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
        let (clock, drift, shift) = match self.offset_start {
            None => ("monotonic_callback".to_string(), None, 0i64),
            Some(o0) => {
                let o1 = offset();
                ("measured_offset".to_string(), Some(o1 - o0), (o0 + o1) / 2)
            }
        };
        let mut kernels = store.kernels;
        if shift != 0 {
            for k in &mut kernels {
                k.start = (k.start as i64 - shift).max(0) as u64;
                k.end = (k.end as i64 - shift).max(0) as u64;
            }
        }
        Ok(Collected {
            kernels,
            names: store.names,
            records: store.records,
            dropped: store.dropped,
            version: self.version,
            clock,
            offset_drift_ns: drift,
        })
    }
}

#[cfg(test)]
mod tests {
    use cudarc::cupti::sys::*;
    use std::mem::offset_of;

    /// The Kernel4 view reads newer records: the fields used sit at the same offsets.
    #[test]
    fn kernel_record_prefix_is_stable() {
        macro_rules! same {
            ($t:ty) => {
                assert_eq!(offset_of!(CUpti_ActivityKernel4, start), offset_of!($t, start));
                assert_eq!(offset_of!(CUpti_ActivityKernel4, end), offset_of!($t, end));
                assert_eq!(offset_of!(CUpti_ActivityKernel4, deviceId), offset_of!($t, deviceId));
                assert_eq!(offset_of!(CUpti_ActivityKernel4, streamId), offset_of!($t, streamId));
                assert_eq!(offset_of!(CUpti_ActivityKernel4, name), offset_of!($t, name));
            };
        }
        same!(CUpti_ActivityKernel5);
        same!(CUpti_ActivityKernel9);
        same!(CUpti_ActivityKernel10);
    }
}
