//! NVTX ranges, so a timeline tool that collects them (Nsight Systems: `mpirun -n 2 nsys profile
//! -t cuda,nvtx -o r.%q{OMPI_COMM_WORLD_RANK} tpprof run ...`) shows tpprof's phases (configure,
//! bind, create engine, warm-up run N, measured run, gather, ...) and every decode step of sample 0
//! ("decode step K": from token K−1's arrival to token K's) beside the engine's kernels.
//!
//! Only when such a tool is attached — it sets `NVTX_INJECTION64_PATH` before the process starts —
//! is anything emitted: otherwise every call here is one load of a cached flag, and the token
//! callback is not wrapped at all.

use std::cell::Cell;
use std::sync::OnceLock;

use crate::engine::TokenCallback;

/// Whether a tool that collects NVTX is attached (decided once per process).
pub fn active() -> bool {
    static ACTIVE: OnceLock<bool> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        ["NVTX_INJECTION64_PATH", "NVTX_INJECTION32_PATH"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|p| !p.is_empty()))
    })
}

/// A range on the calling thread, ended when dropped (phases of the run).
#[must_use = "the range ends when the guard drops"]
pub struct Range(bool);

/// Starts a range named `name` (nested in any range open on this thread).
pub fn range(name: &str) -> Range {
    if !active() {
        return Range(false);
    }
    nvtx::range_push!("{name}");
    Range(true)
}

impl Drop for Range {
    fn drop(&mut self) {
        if self.0 {
            nvtx::range_pop!();
        }
    }
}

thread_local! {
    /// Whether this thread has a decode-step range open (the token callback's thread).
    static STEP_OPEN: Cell<bool> = const { Cell::new(false) };
}

/// The token callback with a range per decode step of sample 0, then the wrapped callback.
pub struct Steps<'a> {
    inner: &'a dyn TokenCallback,
}

impl<'a> Steps<'a> {
    pub fn new(inner: &'a dyn TokenCallback) -> Steps<'a> {
        Steps { inner }
    }

    /// Ends the open step range, when it is on this thread (engines that call back on the thread
    /// that called generate(): the built-in ones and the adapters' synchronous ones).
    pub fn end(&self) {
        STEP_OPEN.with(|open| {
            if open.replace(false) {
                nvtx::range_pop!();
            }
        });
    }
}

impl TokenCallback for Steps<'_> {
    fn mark_submit(&self) {
        self.inner.mark_submit();
    }

    fn on_token(&self, sample: u32, step: u32, token: i32, finish: i32) {
        // The recorder's timestamp first: the annotation costs the engine, not the measurement.
        self.inner.on_token(sample, step, token, finish);
        if sample == 0 {
            STEP_OPEN.with(|open| {
                if open.get() {
                    nvtx::range_pop!();
                }
                let last = finish != 0;
                if !last {
                    nvtx::range_push!("decode step {}", step + 1);
                }
                open.set(!last);
            });
        }
    }
}

impl Drop for Steps<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(u32, u32)>>);

    impl TokenCallback for Seen {
        fn mark_submit(&self) {}
        fn on_token(&self, sample: u32, step: u32, _token: i32, _finish: i32) {
            self.0.lock().unwrap().push((sample, step));
        }
    }

    /// Without a tool attached nothing is emitted, and the wrapper passes every token through
    /// unchanged, in order (with one attached, `nsys` shows the ranges: results/h200/nvtx/).
    #[test]
    fn steps_pass_every_token_through() {
        let seen = Seen::default();
        {
            let steps = Steps::new(&seen);
            for step in 0..3 {
                for sample in 0..2 {
                    steps.on_token(sample, step, 7, if step == 2 { 1 } else { 0 });
                }
            }
            let _r = range("measured run");
        }
        assert_eq!(*seen.0.lock().unwrap(), vec![(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]);
        assert!(!STEP_OPEN.with(|o| o.get()), "the last token closes the step range");
    }
}
