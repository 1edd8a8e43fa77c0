//! The `tpprof` binary: parse, hand over to the library, and turn what each subcommand returns into
//! the one exit path: errors are printed here and nowhere else, and the exit code is chosen here.
//! Exit codes: 0 ok, 1 the run failed, 2 bad input, 3 the run finished but a sample got fewer
//! tokens than requested, 4 `compare --fail-if`: a threshold was crossed; 128 + N a run
//! interrupted by signal N (130 SIGINT, 143 SIGTERM): that one is chosen by
//! `cluster::interrupt`, whose watcher thread ends the process (the main thread may be in MPI).

use clap::Parser;
use tpprof::cli::{Cli, Command};
use tpprof::cluster::interrupt::{self, AfterEnd, EndCall};
use tpprof::cluster::World;
use tpprof::run::{FailedReport, RunFailed, Verdict};
use tpprof::verify::VerifyError;

const EXIT_OK: i32 = 0;
const EXIT_FAILED: i32 = 1;
const EXIT_BAD_INPUT: i32 = 2;
const EXIT_INCOMPLETE: i32 = 3;
const EXIT_REGRESSED: i32 = 4;

fn main() {
    let args = match tpprof::cli::expand_config(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            if tpprof::cluster::launcher_rank().unwrap_or(0) == 0 {
                eprintln!("error: {e}");
            }
            std::process::exit(EXIT_BAD_INPUT);
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Under mpirun every rank parses the same arguments: only rank 0 shows the message.
            if tpprof::cluster::launcher_rank().unwrap_or(0) == 0 || !e.use_stderr() {
                let _ = e.print();
            }
            std::process::exit(if e.use_stderr() { EXIT_BAD_INPUT } else { EXIT_OK });
        }
    };
    let code = match cli.command {
        Command::Run(args) => with_world(|w| run_exit(tpprof::run::main(w, (*args).into()))),
        Command::Report(args) => match &args.html {
            Some(out) => match tpprof::report::html::write_report(&args.files, out, args.force) {
                Ok(path) => {
                    tpprof::outln!("wrote {}", path.display());
                    EXIT_OK
                }
                Err(e) => error(if e.is_bad_input() { EXIT_BAD_INPUT } else { EXIT_FAILED }, e),
            },
            None => report_text(&args.files, args.percentiles.as_deref()),
        },
        Command::Compare(args) => {
            match tpprof::report::compare::compare_files(&args.files, args.markdown, &args.fail_if) {
                Ok(c) => {
                    tpprof::out!("{}{}", c.table, c.gate);
                    if c.regressed {
                        EXIT_REGRESSED
                    } else {
                        EXIT_OK
                    }
                }
                Err(e) => error(EXIT_BAD_INPUT, e),
            }
        }
        Command::Verify(args) => with_world(|w| verify_exit(w.rank, tpprof::verify::main(w, args.into()))),
        Command::WriteCheckpoint(a) => match tpprof::engine::write_checkpoint_main(&tpprof::engine::CheckpointRequest {
            model: &a.model,
            seed: a.seed,
            dtype: a.dtype.into(),
            shard_gib: a.shard_gib,
            files: a.files,
            out: &a.out,
        }) {
            Ok(()) => EXIT_OK,
            Err(e) => error(if e.is_bad_input() { EXIT_BAD_INPUT } else { EXIT_FAILED }, e),
        },
        Command::Doctor(args) => with_world(|w| {
            let input: tpprof::doctor::DoctorInput = args.into();
            match tpprof::doctor::main(w, &input) {
                Some(report) => {
                    if input.json {
                        tpprof::outln!("{}", serde_json::to_string_pretty(&report).expect("the report serializes"));
                    } else {
                        tpprof::out!("{}", tpprof::doctor::render(&report));
                    }
                    if report.failed() {
                        EXIT_FAILED
                    } else {
                        EXIT_OK
                    }
                }
                None => EXIT_OK, // rank 0 speaks and decides the job's exit code (mpirun keeps the worst)
            }
        }),
        Command::Schema => {
            tpprof::out!("{}", tpprof::report::schema::pretty());
            EXIT_OK
        }
        Command::Models => {
            tpprof::engine::print_models();
            EXIT_OK
        }
    };
    interrupt::own_exit();
    if tpprof::engine::python::interpreter_loaded() {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: _exit ends the process at once; MPI was finalised and every output flushed.
        unsafe { libc::_exit(code) };
    }
    std::process::exit(code);
}

// The process's ways out, interposed (build.rs exports them, so a dlopen()ed engine binds to these
// rather than to libc's): an engine that calls one of them during a run is held while the run
// reports it — a `failed` JSON naming the rank and the call, exit 1 on every rank — instead of
// ending its rank with a code of its choosing (its 3 would read as tpprof's "incomplete"). Every
// other call (tpprof's own, after `interrupt::own_exit`, or outside a run) goes straight through.

/// `exit(code)`: after the check, libc's own (atexit handlers, stdio flushed).
#[no_mangle]
pub extern "C" fn exit(code: libc::c_int) -> ! {
    let code = match interrupt::process_end(EndCall::Exit(code)) {
        AfterEnd::Proceed(c) => c,
        AfterEnd::EndNow(c) => end_now(c),
    };
    type ExitFn = unsafe extern "C" fn(libc::c_int) -> !;
    // SAFETY: RTLD_NEXT finds the definition after this executable's: libc's `exit`, whose type
    // this is.
    unsafe {
        let real = libc::dlsym(libc::RTLD_NEXT, c"exit".as_ptr());
        if !real.is_null() {
            let real: ExitFn = std::mem::transmute::<*mut libc::c_void, ExitFn>(real);
            real(code)
        }
    }
    end_now(code)
}

/// `_exit(code)`: after the check, the kernel's exit_group (what libc's does). Async-signal-safe,
/// as `_exit` must be (crash handlers call it).
#[no_mangle]
pub extern "C" fn _exit(code: libc::c_int) -> ! {
    match interrupt::process_end(EndCall::UnderscoreExit(code)) {
        AfterEnd::Proceed(c) | AfterEnd::EndNow(c) => end_now(c),
    }
}

/// `_Exit(code)`: the same as `_exit`.
#[no_mangle]
pub extern "C" fn _Exit(code: libc::c_int) -> ! {
    _exit(code)
}

fn end_now(code: libc::c_int) -> ! {
    loop {
        // SAFETY: exit_group ends every thread of the process; it does not return.
        unsafe { libc::syscall(libc::SYS_exit_group, code) };
    }
}

/// `tpprof report FILE...`: each file's summary, a blank line between; the first bad file stops it.
fn report_text(files: &[std::path::PathBuf], percentiles: Option<&str>) -> i32 {
    use tpprof::report::summary;
    let percents = match percentiles.map(summary::parse_percentiles).transpose() {
        Ok(p) => p,
        Err(e) => return error(EXIT_BAD_INPUT, e),
    };
    for (i, f) in files.iter().enumerate() {
        match summary::load(f) {
            Ok(r) => {
                tpprof::out!("{}{}", if i > 0 { "\n" } else { "" }, summary::render(&r));
                if let Some(p) = &percents {
                    match summary::render_percentiles(&f.display().to_string(), &r, p) {
                        Ok(t) => tpprof::out!("{t}"),
                        Err(e) => return error(EXIT_BAD_INPUT, e),
                    }
                }
            }
            Err(e) => return error(EXIT_BAD_INPUT, e),
        }
    }
    EXIT_OK
}

/// One line on stderr; the code to exit with.
fn error(code: i32, e: impl std::fmt::Display) -> i32 {
    eprintln!("error: {e}");
    code
}

/// An MPI subcommand: the world lives until `f` has said what it has to (MPI_Finalize when it
/// drops: another rank's early exit may end the job after that).
fn with_world(f: impl FnOnce(&World) -> i32) -> i32 {
    match World::init() {
        Ok(world) => f(&world),
        Err(e) => error(EXIT_FAILED, e),
    }
}

fn run_exit(outcome: Result<Verdict, RunFailed>) -> i32 {
    match outcome {
        Ok(Verdict::Ok) => EXIT_OK,
        Ok(Verdict::Incomplete) => EXIT_INCOMPLETE,
        Ok(Verdict::Failed) => EXIT_FAILED,
        Err(RunFailed { bad_input, failures, speaks, report }) => {
            // Every rank agreed on the failures: rank 0 alone says them.
            if speaks {
                eprintln!("error: {failures}");
                match report {
                    Some(FailedReport::Written(p)) => eprintln!("the failed run's report is in {}", p.display()),
                    Some(FailedReport::KeptExisting(p)) => eprintln!("{} was left as it was", p.display()),
                    Some(FailedReport::NotWritten(e)) => eprintln!("error: {e}"),
                    None => {}
                }
            }
            if bad_input {
                EXIT_BAD_INPUT
            } else {
                EXIT_FAILED
            }
        }
    }
}

fn verify_exit(rank: i32, outcome: Result<bool, VerifyError>) -> i32 {
    match outcome {
        Ok(true) => EXIT_OK,
        Ok(false) => EXIT_FAILED,
        Err(error) => {
            // Rank 0 says it; another rank too when the error is its own (not one every rank
            // agreed on, nor the build's): rank 0 may be waiting for it in a collective.
            if rank == 0 {
                eprintln!("error: {error}");
            } else if error.is_local() {
                eprintln!("error: rank {rank}: {error}");
            }
            EXIT_BAD_INPUT
        }
    }
}
