//! The Python engine (`--engine python:DRIVER`): engines written in Python (Hugging Face
//! transformers, vLLM, lmdeploy) profiled in-process.
//!
//! No Python is needed to build tpprof: at run time it asks the chosen interpreter (`python3` on
//! PATH, or the engine option `"python"`) where its shared libpython is, loads it with
//! `RTLD_NOW | RTLD_GLOBAL` (so extension modules such as numpy and torch resolve its symbols), embeds
//! the interpreter once per process and gives it that interpreter's `sys.path` and site-packages
//! (a venv's included). A driver (ffi/adapters/python/README.md) is a module with a `Driver` class;
//! tpprof hands `generate()` a native callable `on_token(sample, step, token, finish)` whose entry is
//! where every token is timestamped.
//!
//! All raw CPython work is in `Api` (`capi.rs`: resolved function pointers, every call with a
//! SAFETY note) and the few functions of `Runtime` (`runtime.rs`); the rest of the crate only sees
//! `PythonEngine` (`engine.rs`) and `PythonError`. A small bridge module written in Python
//! (`bridge.py`) does the parts that are easier there (sys.path fix-ups, importing the driver, JSON
//! of dict returns). Finding the interpreter and its libpython is `probe.rs`.

use std::path::{Path, PathBuf};

mod capi;
mod engine;
mod probe;
mod runtime;

pub use engine::PythonEngine;
pub use probe::{find_libpython, probe_python, PythonProbe};
pub use runtime::interpreter_loaded;

/// Environment variable naming the libpython to load (skips the search).
pub const LIBPYTHON_ENV: &str = "TPPROF_LIBPYTHON";
/// Environment variable naming the directory of the shipped drivers (overrides the search).
pub const DRIVERS_ENV: &str = "TPPROF_PYTHON_DRIVERS";

/// A failed call into the embedded Python: the pending exception as one line ("TypeName: message
/// (at file.py:12 in f)"), or why tpprof could not make the call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PyFailure(pub String);

#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    /// The interpreter could not be run or did not answer.
    #[error("{0}")]
    Interpreter(String),
    /// No usable shared libpython (e.g. a Python built without --enable-shared).
    #[error("{0}")]
    NoLibpython(String),
    #[error("could not load libpython {path}: {reason} (it must be the shared library of a CPython 3.8-3.13 built for this machine)")]
    Load { path: PathBuf, reason: String },
    #[error("libpython {path} does not export `{symbol}`: tpprof embeds CPython 3.8 to 3.13")]
    MissingSymbol { path: PathBuf, symbol: &'static str },
    /// A Python exception, as one line: "python driver `hf` generate() raised RuntimeError: ...".
    #[error("python driver `{driver}` {call} raised {what}")]
    Python { driver: String, call: String, what: PyFailure },
    /// A driver method returned something tpprof cannot use.
    #[error("python driver `{driver}` {call} returned {what}")]
    BadReturn { driver: String, call: String, what: String },
    #[error("python engine options: {0}")]
    BadOptions(String),
    #[error("no free TCP port for the python rendezvous: {0}")]
    NoPort(std::io::Error),
}

/// The directory of the drivers shipped with tpprof: `$TPPROF_PYTHON_DRIVERS`, the source tree's
/// ffi/adapters/python/drivers, or `drivers` (or `python/drivers`) beside the executable.
pub fn drivers_dir() -> PathBuf {
    if let Some(p) = std::env::var_os(DRIVERS_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let built = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/ffi/adapters/python/drivers"));
    if built.is_dir() {
        return built;
    }
    let exe_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
    for sub in ["drivers", "python/drivers"] {
        if let Some(d) = exe_dir.as_ref().map(|d| d.join(sub)).filter(|d| d.is_dir()) {
            return d;
        }
    }
    built
}

/// A short name for `python:DRIVER` (file names, the summary): `python-hf`, `python-mydriver`.
pub fn driver_label(driver: &str) -> String {
    let stem = Path::new(driver).file_stem().and_then(|s| s.to_str()).unwrap_or(driver);
    format!("python-{}", stem.trim_start_matches("tpprof_driver_"))
}

/// Rendezvous for Python drivers: "host:port" of a TCP port that was free on this host (rank 0
/// creates it; tpprof broadcasts it), for `torch.distributed` `init_method=f"tcp://{rendezvous}"`.
/// The host is this machine's hostname (it must resolve on every rank's host).
pub fn python_rendezvous() -> Result<Vec<u8>, PythonError> {
    let port =
        std::net::TcpListener::bind(("0.0.0.0", 0)).and_then(|l| l.local_addr()).map_err(PythonError::NoPort)?.port();
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "127.0.0.1".to_string()
    };
    Ok(format!("{host}:{port}").into_bytes())
}

fn one_line(s: &str, max: usize) -> String {
    let mut out = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(" ...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_host_and_port() {
        let r = String::from_utf8(python_rendezvous().unwrap()).unwrap();
        let (host, port) = r.rsplit_once(':').unwrap();
        assert!(!host.is_empty() && port.parse::<u16>().unwrap() > 0, "{r}");
    }
}
