//! SIGINT / SIGTERM while a run goes on: a signal handler sets a flag (nothing else is safe in a
//! handler), a watcher thread acts on it. Ranks talk on their own duplicate of MPI_COMM_WORLD (the
//! main thread may sit in any collective of the run's communicator meanwhile; MPI_THREAD_MULTIPLE
//! allows it):
//!
//! - a rank > 0 that gets a signal sends rank 0 its report (`REPORT`, with the signal), then waits
//!   for rank 0's `DONE` (at most a few seconds) and exits with 128 + the signal;
//! - rank 0, on a signal of its own or on a `REPORT` that carries one, asks every other rank for
//!   its report (`REQUEST`, with the exit code), collects what arrives within [`COLLECT`], hands
//!   it to the run's [`InterruptHandler`] (which writes the result JSON), sends `DONE` and exits.
//!
//! Why not wait for the engine's next token first: mpirun, itself signalled (or seeing a rank
//! exit non-zero), sends SIGTERM to every rank and SIGKILL one second later
//! (`odls_base_sigkill_timeout`, 1 s in Open MPI 4.1), so everything must be written well within
//! that second. The token path only stops recording ([`InterruptHandler::report`] freezes the
//! recorder), so the report is the run as it was at the signal.
//!
//! A second SIGINT or SIGTERM ends the process at once (exit 128 + signal), in case the first one's
//! handling is stuck. Ranks that do not answer (dead, SIGKILLed) are named as not gathered.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::topology::{Communicator, SimpleCommunicator};

/// How long rank 0 waits for the other ranks' reports: well inside mpirun's one second between
/// its SIGTERM and its SIGKILL.
pub const COLLECT: Duration = Duration::from_millis(500);
/// How long a rank > 0 waits for rank 0's `DONE` before it exits on its own.
const AWAIT_DONE: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_millis(10);

const TAG_REPORT: i32 = 0x7e01;
const TAG_REQUEST: i32 = 0x7e02;
const TAG_DONE: i32 = 0x7e03;

/// The signal a handler saw (0: none yet). One per process: signals are.
static SIGNAL: AtomicUsize = AtomicUsize::new(0);
/// Writers holding the emergency exit off ([`hold_exit`]): a result half-written would leave its
/// temp file behind.
static WRITING: AtomicUsize = AtomicUsize::new(0);

/// What the run does when it is interrupted (the job layer implements it).
pub trait InterruptHandler: Send + Sync {
    /// This rank's measurements so far, as the bytes rank 0 reads back (rank 0's own too). Called
    /// from the watcher thread; it stops the run's recording first, so no token lands half-way.
    fn report(&self) -> Vec<u8>;
    /// Rank 0: write the result of the interrupted run with the reports that reached it (its own
    /// included, as rank 0). Returns the exit code (the one `interrupted` carries unless writing
    /// failed).
    fn write(&self, interrupted: &Interrupted, reports: Vec<(i32, Vec<u8>)>) -> i32;
}

/// What rank 0 knows of an interruption when it writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted {
    /// Why: a signal on a rank, or the watchdog.
    pub cause: Cause,
    /// Every rank that got a signal of its own, with the signal's number (rank order).
    pub signalled: Vec<(i32, i32)>,
    /// Ranks whose report did not reach rank 0 in time.
    pub missing: Vec<i32>,
    /// The exit code every rank leaves with.
    pub code: i32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cause {
    /// A signal reached `rank` (the first rank 0 learned of).
    Signal { rank: i32, signal: i32 },
    /// `--timeout`: the run did not finish within `after`.
    Timeout { after: Duration },
}

/// The exit code of a run ended by `signal`: 128 + its number, as a shell reports it (130 for
/// SIGINT, 143 for SIGTERM).
pub fn exit_code(signal: i32) -> i32 {
    128 + signal
}

/// `SIGINT`, `SIGTERM`, ... (or `signal N`).
pub fn signal_name(signal: i32) -> String {
    signal_hook::low_level::signal_name(signal).map(str::to_string).unwrap_or_else(|| format!("signal {signal}"))
}

/// The signal handler: the first signal is kept for the watcher; the same signal again (a second
/// Ctrl-C) ends the process at once, unless a result file is being written ([`hold_exit`]). A
/// different signal after the first (mpirun's SIGTERM after a Ctrl-C) changes nothing.
fn on_signal(sig: i32) {
    if let Err(first) = SIGNAL.compare_exchange(0, sig as usize, Ordering::SeqCst, Ordering::SeqCst) {
        if first == sig as usize && WRITING.load(Ordering::SeqCst) == 0 {
            signal_hook::low_level::exit(exit_code(sig));
        }
    }
}

/// While the returned guard lives, a second signal does not end the process (a result file is
/// being written: its temp file must be renamed or removed first).
pub fn hold_exit() -> ExitHeld {
    WRITING.fetch_add(1, Ordering::SeqCst);
    ExitHeld(())
}

pub struct ExitHeld(());

impl Drop for ExitHeld {
    fn drop(&mut self) {
        WRITING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The watcher: installed once per run, stopped (and joined) before MPI_Finalize.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    /// `--timeout`'s deadline, once armed.
    deadline: Arc<Mutex<Option<(Instant, Duration)>>>,
    handle: Option<JoinHandle<()>>,
    handler: Arc<Mutex<Option<Arc<dyn InterruptHandler>>>>,
}

impl Watcher {
    /// Installs the SIGINT / SIGTERM handlers and starts the watcher on `comm` (a communicator of
    /// its own: every rank must call this at the same point, since duplicating one is collective).
    pub fn start(comm: SimpleCommunicator) -> Result<Watcher, std::io::Error> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        for sig in [SIGINT, SIGTERM] {
            // SAFETY: the action is async-signal-safe: atomics and _exit only.
            unsafe { signal_hook::low_level::register(sig, move || on_signal(sig)) }?;
        }
        set_errors_return(&comm);
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Mutex<Option<Arc<dyn InterruptHandler>>>> = Arc::new(Mutex::new(None));
        let deadline = Arc::new(Mutex::new(None));
        let (flag, slot, due) = (stop.clone(), handler.clone(), deadline.clone());
        let comm = OwnComm(comm);
        let handle = std::thread::Builder::new()
            .name("tpprof-interrupt".into())
            .spawn(move || {
                let own = comm; // the whole wrapper moves in, not its field
                watch(own.0, flag, slot, due)
            })
            .map_err(std::io::Error::other)?;
        Ok(Watcher { stop, deadline, handle: Some(handle), handler })
    }

    /// `--timeout`: after `after`, rank 0 gathers every rank's report, names the rank(s) that
    /// made no progress (one line, rank 0 alone), has the run write a `failed` JSON with what was
    /// measured, and every rank exits 1. A rank > 0 whose rank 0 never comes (its process wedged)
    /// ends itself a few seconds later.
    pub fn arm_timeout(&self, after: Duration) {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now() + after, after));
    }

    /// The run's handler (None: a signal just ends the process with 128 + signal).
    pub fn set_handler(&self, h: Option<Arc<dyn InterruptHandler>>) {
        *self.handler.lock().unwrap_or_else(|p| p.into_inner()) = h;
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The watcher's communicator, moved into its thread: MPI handles may be used from any thread
/// under MPI_THREAD_MULTIPLE (World::init insists on it), and no other thread uses this one.
struct OwnComm(SimpleCommunicator);

// SAFETY: see above; the communicator is used by the watcher thread alone, then freed by it.
unsafe impl Send for OwnComm {}

/// A peer that died makes sends fail: return the error instead of aborting this rank mid-write.
fn set_errors_return(comm: &SimpleCommunicator) {
    use mpi::raw::AsRaw;
    // SAFETY: a valid communicator handle and the predefined MPI_ERRORS_RETURN handler.
    unsafe {
        mpi::ffi::MPI_Comm_set_errhandler(comm.as_raw(), mpi::ffi::RSMPI_ERRORS_RETURN);
    }
}

fn watch(
    comm: SimpleCommunicator,
    stop: Arc<AtomicBool>,
    handler: Arc<Mutex<Option<Arc<dyn InterruptHandler>>>>,
    deadline: Arc<Mutex<Option<(Instant, Duration)>>>,
) {
    let rank = comm.rank();
    let current = || handler.lock().unwrap_or_else(|p| p.into_inner()).clone();
    while !stop.load(Ordering::Acquire) {
        if let Some((at, after)) = *deadline.lock().unwrap_or_else(|p| p.into_inner()) {
            let now = Instant::now();
            if rank == 0 && now >= at {
                match current() {
                    Some(h) => lead(&comm, &*h, Cause::Timeout { after }, Vec::new()),
                    None => {
                        eprintln!(
                            "error: the run did not finish within --timeout {:.1} s; aborting every rank",
                            after.as_secs_f64()
                        );
                        super::World::abort_all(1)
                    }
                }
            }
            if rank != 0 && now >= at + COLLECT + Duration::from_secs(5) {
                eprintln!("error: rank {rank}: the run did not finish within --timeout {:.1} s and rank 0 did not end it; aborting every rank", after.as_secs_f64());
                super::World::abort_all(1)
            }
        }
        let sig = SIGNAL.load(Ordering::SeqCst) as i32;
        if sig != 0 {
            let Some(h) = current() else { end(exit_code(sig)) };
            if rank == 0 {
                lead(&comm, &*h, Cause::Signal { rank: 0, signal: sig }, Vec::new());
            } else {
                follow(&comm, &*h, sig, exit_code(sig));
            }
        }
        if rank == 0 {
            if let Some(probed) = comm.any_process().immediate_matched_probe_with_tag(TAG_REPORT) {
                let (bytes, status) = probed.matched_receive_vec::<u8>();
                let from = status.source_rank();
                let (sig, report) = split_report(&bytes);
                if let (Some(h), true) = (current(), sig != 0) {
                    lead(&comm, &*h, Cause::Signal { rank: from, signal: sig }, vec![(from, sig, report)]);
                }
            }
        } else if let Some(probed) = comm.process_at_rank(0).immediate_matched_probe_with_tag(TAG_REQUEST) {
            let (bytes, _) = probed.matched_receive_vec::<u8>();
            let code = bytes.get(..4).map(|b| i32::from_le_bytes(b.try_into().unwrap_or_default())).unwrap_or(1);
            match current() {
                Some(h) => follow(&comm, &*h, 0, code),
                None => end(code),
            }
        }
        std::thread::sleep(TICK);
    }
}

/// Rank 0: ask every rank not yet heard from, collect, write, tell them, exit.
fn lead(comm: &SimpleCommunicator, h: &dyn InterruptHandler, cause: Cause, mut got: Vec<(i32, i32, Vec<u8>)>) -> ! {
    let code = match cause {
        Cause::Signal { signal, .. } => exit_code(signal),
        Cause::Timeout { .. } => 1,
    };
    let size = comm.size();
    let own = h.report();
    for r in 1..size {
        if !got.iter().any(|(g, _, _)| *g == r) {
            comm.process_at_rank(r).send_with_tag(&code.to_le_bytes()[..], TAG_REQUEST);
        }
    }
    let deadline = Instant::now() + COLLECT;
    while got.len() < (size - 1) as usize && Instant::now() < deadline {
        match comm.any_process().immediate_matched_probe_with_tag(TAG_REPORT) {
            Some(probed) => {
                let (bytes, status) = probed.matched_receive_vec::<u8>();
                let (sig, report) = split_report(&bytes);
                got.push((status.source_rank(), sig, report));
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let own_signal = SIGNAL.load(Ordering::SeqCst) as i32;
    let mut signalled: Vec<(i32, i32)> = got.iter().filter(|(_, s, _)| *s != 0).map(|(r, s, _)| (*r, *s)).collect();
    if own_signal != 0 {
        signalled.push((0, own_signal));
    }
    signalled.sort_unstable();
    let missing: Vec<i32> = (1..size).filter(|r| !got.iter().any(|(g, _, _)| g == r)).collect();
    let mut reports: Vec<(i32, Vec<u8>)> = vec![(0, own)];
    got.sort_by_key(|(r, _, _)| *r);
    reports.extend(got.into_iter().map(|(r, _, b)| (r, b)));
    let interrupted = Interrupted { cause, signalled, missing: missing.clone(), code };
    let code = h.write(&interrupted, reports);
    for r in (1..size).filter(|r| !missing.contains(r)) {
        comm.process_at_rank(r).send_with_tag(&code.to_le_bytes()[..], TAG_DONE);
    }
    end(code)
}

/// A rank > 0: its report to rank 0 (with its own signal, 0 when it answers a request), then
/// rank 0's word, then exit.
fn follow(comm: &SimpleCommunicator, h: &dyn InterruptHandler, signal: i32, code: i32) -> ! {
    let mut msg = signal.to_le_bytes().to_vec();
    msg.extend_from_slice(&h.report());
    let root = comm.process_at_rank(0);
    root.send_with_tag(&msg[..], TAG_REPORT);
    let deadline = Instant::now() + AWAIT_DONE;
    let mut code = code;
    while Instant::now() < deadline {
        if let Some(probed) = root.immediate_matched_probe_with_tag(TAG_DONE) {
            let (bytes, _) = probed.matched_receive_vec::<u8>();
            if let Some(b) = bytes.get(..4) {
                code = i32::from_le_bytes(b.try_into().unwrap_or_default());
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    end(code)
}

fn split_report(bytes: &[u8]) -> (i32, Vec<u8>) {
    match bytes.split_at_checked(4) {
        Some((sig, rest)) => (i32::from_le_bytes(sig.try_into().unwrap_or_default()), rest.to_vec()),
        None => (0, Vec::new()),
    }
}

/// Ends the process from the watcher thread: output flushed, no destructors (the main thread may
/// be inside MPI or the engine), no MPI_Finalize (mpirun sees the exit code).
fn end(code: i32) -> ! {
    use std::io::Write;
    // A result being written (by the run itself, on another thread) is renamed into place first.
    let until = Instant::now() + Duration::from_secs(5);
    while WRITING.load(Ordering::SeqCst) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once; every file this process wrote was persisted.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_follow_the_shell() {
        assert_eq!(exit_code(signal_hook::consts::SIGINT), 130);
        assert_eq!(exit_code(signal_hook::consts::SIGTERM), 143);
        assert_eq!(signal_name(signal_hook::consts::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(signal_hook::consts::SIGINT), "SIGINT");
        let mut m = 15i32.to_le_bytes().to_vec();
        m.extend_from_slice(b"{}");
        assert_eq!(split_report(&m), (15, b"{}".to_vec()));
        assert_eq!(split_report(b"ab"), (0, Vec::new()));
    }
}
