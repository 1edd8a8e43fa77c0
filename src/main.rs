//! The `tpprof` binary: parse, then hand over to the library. Exit codes: 0 ok, 1 the run failed,
//! 2 bad input, 3 the run finished but a sample got fewer tokens than requested.

use clap::Parser;
use tpprof::cli::{Cli, Command};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Under mpirun every rank parses the same arguments: only rank 0 shows the message.
            if tpprof::cluster::launcher_rank().unwrap_or(0) == 0 || !e.use_stderr() {
                let _ = e.print();
            }
            std::process::exit(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let code = match cli.command {
        Command::Run(args) => tpprof::run::main((*args).into()),
        Command::Report(args) => tpprof::report::summary::main(&args.file),
        Command::Compare(args) => tpprof::report::compare::main(&args.files, args.markdown),
        Command::Verify(args) => tpprof::verify::main(args),
        Command::WriteCheckpoint(a) => tpprof::engine::write_checkpoint_main(&tpprof::engine::CheckpointRequest {
            model: &a.model,
            seed: a.seed,
            dtype: a.dtype.into(),
            shard_gib: a.shard_gib,
            files: a.files,
            out: &a.out,
        }),
        Command::Models => {
            tpprof::engine::print_models();
            0
        }
    };
    if tpprof::engine::python::interpreter_loaded() {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: _exit ends the process at once; MPI was finalised and every output flushed.
        unsafe { libc::_exit(code) };
    }
    std::process::exit(code);
}
