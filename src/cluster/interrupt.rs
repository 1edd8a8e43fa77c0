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
//!
//! A process ended from inside while the run's handler is set — `exit()`, `_exit()` or `_Exit()`
//! not called by tpprof (an engine, a library it loaded, the MPI library's fatal-error path: the
//! binary interposes the three, see `main.rs`), or `abort()` (SIGABRT) — is handled like a signal:
//! the ending thread is held ([`process_end`], the SIGABRT action, both async-signal-safe) while
//! the watcher sends this rank's report, rank 0 writes a `failed` JSON naming the rank and the
//! call, and every rank exits 1, whatever code the engine chose (3 would read as "incomplete").
//! Held [`HOLD`] (longer while a result is being written): then the process ends with 1 (abort:
//! as abort does). Not held: tpprof's own exits ([`own_exit`]), a forked child's, the watcher
//! thread's, and those during an engine's destroy ([`engine_teardown`]).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
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
/// The process end a thread asked for while the run's handler was set ([`process_end`]), encoded
/// by [`EndCall::encode`] (0: none yet). One per process.
static ENDED: AtomicI32 = AtomicI32::new(0);
/// Whether the run's handler is set and its watcher running: only then is a process end held.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Set by tpprof's own ways out ([`own_exit`]): those are never held.
static OWN_EXIT: AtomicBool = AtomicBool::new(false);
/// This process's rank (for the line printed when a held end is let go).
static RANK: AtomicI32 = AtomicI32::new(-1);
/// The process the watcher runs in: a child forked by the engine (a multiprocessing worker, a
/// failed exec) inherits the flags but not the watcher, and its exits are its own business.
static WATCHED_PID: AtomicI32 = AtomicI32::new(0);

/// Whether an end of the process by `exit`/`_exit`/`abort` is to be held and reported.
fn holds_ends() -> bool {
    // SAFETY: getpid is async-signal-safe and cannot fail.
    let pid = unsafe { libc::getpid() };
    !OWN_EXIT.load(Ordering::SeqCst)
        && ACTIVE.load(Ordering::SeqCst)
        && TEARDOWN.load(Ordering::SeqCst) == 0
        && WATCHED_PID.load(Ordering::SeqCst) == pid
}

/// While the returned guard lives (an engine's destroy), a process end is not held: the run has
/// what it measured, and an engine that ends the process while it is destroyed ends it with its
/// own code (a limit the README states).
pub fn engine_teardown() -> Held {
    Held::on(&TEARDOWN)
}

/// A count held up while the guard lives ([`hold_exit`], [`engine_teardown`]).
pub struct Held(&'static AtomicUsize);

impl Held {
    fn on(count: &'static AtomicUsize) -> Held {
        count.fetch_add(1, Ordering::SeqCst);
        Held(count)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
/// How long a thread that ends the process is held while the run reports it: rank 0's collection
/// and writing, and a rank > 0's wait for rank 0's word, fit well within it.
pub const HOLD: Duration = Duration::from_secs(6);
/// The longest hold while rank 0 is still collecting or a result file is being written (a slow
/// file system): never end the process under a half-written result.
const HOLD_WRITING: Duration = Duration::from_secs(60);
/// Rank 0's watcher is collecting and writing an interrupted run's result.
static LEADING: AtomicBool = AtomicBool::new(false);
/// The watcher thread's kernel thread id (0: none yet).
static WATCHER_TID: AtomicI32 = AtomicI32::new(0);
/// Engines being destroyed: a process end during an engine's teardown goes on as it was.
static TEARDOWN: AtomicUsize = AtomicUsize::new(0);
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
    /// Something inside `rank`'s process (the engine, a library) ended it: `exit(code)`,
    /// `_exit(code)`, `_Exit(code)` or `abort()`.
    ProcessEnd { rank: i32, call: EndCall },
}

/// How a process was ended from inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCall {
    /// `exit(code)` (atexit handlers would run).
    Exit(i32),
    /// `_exit(code)` or `_Exit(code)`.
    UnderscoreExit(i32),
    /// `abort()`, or SIGABRT raised on the process.
    Abort,
}

impl EndCall {
    /// As the call reads in C: `exit(3)`, `_exit(3)`, `abort()`.
    pub fn call(self) -> String {
        match self {
            EndCall::Exit(c) => format!("exit({c})"),
            EndCall::UnderscoreExit(c) => format!("_exit({c})"),
            EndCall::Abort => "abort()".into(),
        }
    }

    /// The code the process would have ended with (a shell's 134 for abort).
    pub fn code(self) -> i32 {
        match self {
            EndCall::Exit(c) | EndCall::UnderscoreExit(c) => c & 0xff,
            EndCall::Abort => exit_code(libc::SIGABRT),
        }
    }

    /// A negative i32 (a report's signal field carries it to rank 0; signals are positive).
    fn encode(self) -> i32 {
        match self {
            EndCall::Exit(c) => -1 - (c & 0xff),
            EndCall::UnderscoreExit(c) => -257 - (c & 0xff),
            EndCall::Abort => -513,
        }
    }

    fn decode(v: i32) -> Option<EndCall> {
        match v {
            -256..=-1 => Some(EndCall::Exit(-1 - v)),
            -512..=-257 => Some(EndCall::UnderscoreExit(-257 - v)),
            -513 => Some(EndCall::Abort),
            _ => None,
        }
    }
}

/// tpprof itself is ending the process: whatever `exit` / `_exit` follows is let through.
pub fn own_exit() {
    OWN_EXIT.store(true, Ordering::SeqCst);
}

/// What the binary's `exit` / `_exit` / `_Exit` do after [`process_end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterEnd {
    /// Not held: the call goes on as it was, with its own code.
    Proceed(i32),
    /// Held, and the run could not report it in time: end the process at once (exit_group, no
    /// atexit handlers: the run may still be writing) with this code.
    EndNow(i32),
}

/// Called by the binary's `exit` / `_exit` / `_Exit` before the process ends. While a run's handler
/// is set and the call is not tpprof's own, the calling thread is held here while the watcher
/// reports the end (it ends the process itself, with exit code 1). Async-signal-safe (crash
/// handlers call `_exit`): atomics, gettid, clock_gettime, nanosleep and write only.
pub fn process_end(call: EndCall) -> AfterEnd {
    if !holds_ends() || on_watcher_thread() {
        return AfterEnd::Proceed(call.code());
    }
    // The first end is reported; a later one (another thread) waits for it the same way.
    let _ = ENDED.compare_exchange(0, call.encode(), Ordering::SeqCst, Ordering::SeqCst);
    hold();
    let mut line = LineBuf::new();
    line.push(b"error: rank ");
    line.push_int(RANK.load(Ordering::SeqCst) as i64);
    line.push(b": the process was ended from inside during the run and the run could not report it in time; exit 1\n");
    line.write_stderr();
    own_exit();
    AfterEnd::EndNow(1)
}

/// Holds the calling thread while the watcher reports a process end: [`HOLD`], longer while rank
/// 0 is collecting or a result file is being written (at most [`HOLD_WRITING`]). Async-signal-safe.
fn hold() {
    let now = || {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime is async-signal-safe; t is a valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
        i64::from(t.tv_sec)
    };
    let start = now();
    let tick = libc::timespec { tv_sec: 0, tv_nsec: TICK.as_nanos() as libc::c_long };
    loop {
        let waited = now() - start;
        let busy = LEADING.load(Ordering::SeqCst) || WRITING.load(Ordering::SeqCst) > 0;
        if waited >= HOLD_WRITING.as_secs() as i64 || (waited >= HOLD.as_secs() as i64 && !busy) {
            return;
        }
        // SAFETY: nanosleep is async-signal-safe; both pointers are valid.
        unsafe { libc::nanosleep(&tick, std::ptr::null_mut()) };
    }
}

/// A line built without allocating (for the async-signal-safe paths).
struct LineBuf {
    buf: [u8; 256],
    len: usize,
}

impl LineBuf {
    fn new() -> LineBuf {
        LineBuf { buf: [0; 256], len: 0 }
    }
    fn push(&mut self, b: &[u8]) {
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }
    fn push_int(&mut self, v: i64) {
        let mut digits = [0u8; 20];
        let (mut n, mut i) = (v.unsigned_abs(), digits.len());
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if v < 0 {
            self.push(b"-");
        }
        self.push(&digits[i..]);
    }
    fn write_stderr(&self) {
        // SAFETY: write(2) is async-signal-safe; the buffer is valid for len bytes.
        unsafe { libc::write(2, self.buf.as_ptr().cast(), self.len) };
    }
}

/// The SIGABRT action: the same hold as [`process_end`], async-signal-safe. When it does not hold
/// (outside a run, in a forked child, on the watcher thread) or the hold ends without the watcher
/// ending the process, SIGABRT gets its default action back and is raised again: it is delivered
/// when the handler returns (a core dump, as without tpprof), for abort() and `kill -ABRT` alike.
fn on_abort() {
    if holds_ends() && !on_watcher_thread() {
        let _ = ENDED.compare_exchange(0, EndCall::Abort.encode(), Ordering::SeqCst, Ordering::SeqCst);
        hold();
    }
    // SAFETY: signal(2) and raise(3) are async-signal-safe.
    unsafe {
        libc::signal(libc::SIGABRT, libc::SIG_DFL);
        libc::raise(libc::SIGABRT);
    }
}

/// Whether the calling thread is the watcher (its own ends are never held).
fn on_watcher_thread() -> bool {
    // SAFETY: gettid cannot fail and is async-signal-safe.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    tid == WATCHER_TID.load(Ordering::SeqCst)
}

/// The watcher thread's name.
const WATCHER: &str = "tpprof-interrupt";

/// The signals tpprof handles during a run, with their actions as installed (signal-hook's one
/// process-wide handler per signal, behind which tpprof's actions are chained).
static INSTALLED: Mutex<Vec<(i32, Action)>> = Mutex::new(Vec::new());
/// Signals already said to have been taken back (one line each per process).
static RECLAIMED_SAID: Mutex<Vec<i32>> = Mutex::new(Vec::new());

#[derive(Clone, Copy)]
struct Action(libc::sigaction);

// SAFETY: a plain C struct (a function address, flags and a mask); the pointer in it is not
// dereferenced by Rust code.
unsafe impl Send for Action {}

/// A signal's action now.
fn current_action(sig: i32) -> Option<Action> {
    // SAFETY: a query only (no new action); `old` is a valid out-pointer of the right type.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(sig, std::ptr::null(), &mut old) == 0).then_some(Action(old))
    }
}

/// Records the actions tpprof installed (after [`Watcher::start`] registered them).
fn remember_actions() {
    let mut v = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    v.clear();
    // Not SIGABRT: an engine's own crash handler (faulthandler, glog) keeps its stack dump, and
    // an abort then ends the rank as it would without tpprof (rank 0 names it lost).
    for sig in [libc::SIGINT, libc::SIGTERM] {
        if let Some(a) = current_action(sig) {
            v.push((sig, a));
        }
    }
}

/// An engine (a Python driver calling `signal.signal`, a library) may replace tpprof's handler
/// of SIGINT or SIGTERM: a Ctrl-C or mpirun's SIGTERM would then reach the engine alone
/// and no interrupted JSON would be written. Puts tpprof's back and returns the signals it took
/// back for the first time (so a caller says each once). Cheap (a sigaction query per signal):
/// the run calls it after creating the engine and before every generate().
pub fn reclaim_signals() -> Vec<i32> {
    let installed = INSTALLED.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if !ACTIVE.load(Ordering::SeqCst) {
        return Vec::new();
    }
    let mut taken = Vec::new();
    for (sig, ours) in installed {
        let Some(now) = current_action(sig) else { continue };
        if now.0.sa_sigaction == ours.0.sa_sigaction {
            continue;
        }
        // SAFETY: the action signal-hook installed, as it was: its handler is still in place in
        // this process (signal-hook never unloads it).
        let restored = unsafe { libc::sigaction(sig, &ours.0, std::ptr::null_mut()) } == 0;
        if restored {
            let mut said = RECLAIMED_SAID.lock().unwrap_or_else(|p| p.into_inner());
            if !said.contains(&sig) {
                said.push(sig);
                taken.push(sig);
            }
        }
    }
    if !taken.is_empty() && RANK.load(Ordering::SeqCst) == 0 {
        let names: Vec<String> = taken.iter().map(|&s| signal_name(s)).collect();
        eprintln!(
            "warning: the engine replaced tpprof's handler of {}; tpprof's is back, so an interrupt still ends the run with a JSON (the engine's handler is not called)",
            names.join(", ")
        );
    }
    taken
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
            own_exit();
            signal_hook::low_level::exit(exit_code(sig));
        }
    }
}

/// While the returned guard lives, a second signal does not end the process (a result file is
/// being written: its temp file must be renamed or removed first).
pub fn hold_exit() -> Held {
    Held::on(&WRITING)
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
        // SAFETY: the action is async-signal-safe: atomics, clock_gettime and nanosleep only.
        unsafe { signal_hook::low_level::register(libc::SIGABRT, on_abort) }?;
        remember_actions();
        set_errors_return(&comm);
        RANK.store(comm.rank(), Ordering::SeqCst);
        // SAFETY: getpid cannot fail.
        WATCHED_PID.store(unsafe { libc::getpid() }, Ordering::SeqCst);
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Mutex<Option<Arc<dyn InterruptHandler>>>> = Arc::new(Mutex::new(None));
        let deadline = Arc::new(Mutex::new(None));
        let (flag, slot, due) = (stop.clone(), handler.clone(), deadline.clone());
        let comm = OwnComm(comm);
        let handle = std::thread::Builder::new()
            .name(WATCHER.into())
            .spawn(move || {
                // SAFETY: gettid cannot fail.
                WATCHER_TID.store(unsafe { libc::syscall(libc::SYS_gettid) } as i32, Ordering::SeqCst);
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
        let active = h.is_some();
        if !active {
            ACTIVE.store(false, Ordering::SeqCst);
        }
        *self.handler.lock().unwrap_or_else(|p| p.into_inner()) = h;
        if active {
            ACTIVE.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        ACTIVE.store(false, Ordering::SeqCst);
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
        let ended = ENDED.load(Ordering::SeqCst);
        if let (Some(call), Some(h)) = (EndCall::decode(ended), current()) {
            if rank == 0 {
                lead(&comm, &*h, Cause::ProcessEnd { rank: 0, call }, Vec::new());
            } else {
                follow(&comm, &*h, ended, 1);
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
                    let cause = match EndCall::decode(sig) {
                        Some(call) => Cause::ProcessEnd { rank: from, call },
                        None => Cause::Signal { rank: from, signal: sig },
                    };
                    lead(&comm, &*h, cause, vec![(from, sig, report)]);
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
    LEADING.store(true, Ordering::SeqCst);
    let code = match cause {
        Cause::Signal { signal, .. } => exit_code(signal),
        Cause::Timeout { .. } | Cause::ProcessEnd { .. } => 1,
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
    let mut signalled: Vec<(i32, i32)> = got.iter().filter(|(_, s, _)| *s > 0).map(|(r, s, _)| (*r, *s)).collect();
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

/// A rank > 0: its report to rank 0 (with its own signal, 0 when it answers a request, an encoded
/// [`EndCall`] when its process was ended from inside), then rank 0's word, then exit.
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
    own_exit();
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

    /// SIGABRT with tpprof's action installed and no run to report it (`kill -ABRT` on a hung rank,
    /// abort() outside a run) still ends the process by SIGABRT (a core dump): the action gives the
    /// signal its default back. It was swallowed (the process went on).
    #[test]
    fn sigabrt_outside_a_hold_keeps_its_default() {
        // SAFETY: the action is async-signal-safe (see on_abort).
        unsafe { signal_hook::low_level::register(libc::SIGABRT, on_abort) }.unwrap();
        // SAFETY: the child calls only raise and _exit (async-signal-safe after fork).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            unsafe {
                libc::raise(libc::SIGABRT);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child this test forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT, "status {status:#x}");
    }

    #[test]
    fn process_ends_travel_as_negative_signals() {
        for call in [
            EndCall::Exit(0),
            EndCall::Exit(3),
            EndCall::Exit(255),
            EndCall::UnderscoreExit(0),
            EndCall::UnderscoreExit(3),
            EndCall::UnderscoreExit(255),
            EndCall::Abort,
        ] {
            assert!(call.encode() < 0, "{call:?}");
            assert_eq!(EndCall::decode(call.encode()), Some(call));
        }
        // A shell sees the low byte: exit(259) is 3.
        assert_eq!(EndCall::decode(EndCall::Exit(259).encode()), Some(EndCall::Exit(3)));
        assert_eq!(EndCall::UnderscoreExit(-1).code(), 255);
        assert_eq!(EndCall::Abort.code(), 134);
        assert_eq!((EndCall::Exit(3).call(), EndCall::UnderscoreExit(1).call()), ("exit(3)".into(), "_exit(1)".into()));
        // Signals and "no signal" are not process ends.
        for v in [0, 2, 15, 64, -514, i32::MIN] {
            assert_eq!(EndCall::decode(v), None, "{v}");
        }
        // Not held without a run's handler: the code goes through.
        assert_eq!(process_end(EndCall::Exit(3)), AfterEnd::Proceed(3));
        let mut l = LineBuf::new();
        l.push(b"rank ");
        l.push_int(-17);
        l.push(b" ");
        l.push_int(0);
        l.push(b" ");
        l.push_int(i64::MIN);
        assert_eq!(&l.buf[..l.len], b"rank -17 0 -9223372036854775808");
    }
}
