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
//! All raw CPython work is in `Api` (resolved function pointers, every call with a SAFETY note) and
//! the few functions of `Runtime`; the rest of the crate only sees `PythonEngine` and `PythonError`.
//! A small bridge module written in Python (`BRIDGE`) does the parts that are easier there (sys.path
//! fix-ups, importing the driver, JSON of dict returns).

use std::ffi::{c_char, c_int, c_long, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, OnceLock};

use super::adapter::InitParams;
use super::{Engine, EngineError, EngineInfo, EngineMemory, TokenCallback, Topology};

/// Environment variable naming the libpython to load (skips the search).
pub const LIBPYTHON_ENV: &str = "TPPROF_LIBPYTHON";
/// Environment variable naming the directory of the shipped drivers (overrides the search).
pub const DRIVERS_ENV: &str = "TPPROF_PYTHON_DRIVERS";
/// Longest Python error message kept (one line).
const MAX_WHAT: usize = 1500;

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
    Python { driver: String, call: String, what: String },
    /// A driver method returned something tpprof cannot use.
    #[error("python driver `{driver}` {call} returned {what}")]
    BadReturn { driver: String, call: String, what: String },
    #[error("python engine options: {0}")]
    BadOptions(String),
}

impl From<PythonError> for EngineError {
    fn from(e: PythonError) -> EngineError {
        EngineError::Other(e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Finding libpython
// ---------------------------------------------------------------------------------------------

/// What the chosen interpreter says about itself (`python -c PROBE`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct PythonProbe {
    pub executable: String,
    pub prefix: String,
    pub exec_prefix: String,
    pub base_prefix: String,
    /// "3.11"
    pub version: String,
    pub libdir: Option<String>,
    pub ldlibrary: Option<String>,
    pub instsoname: Option<String>,
    pub multiarch: Option<String>,
    pub enable_shared: Option<i64>,
    pub sys_path: Vec<String>,
    pub site_packages: Vec<String>,
}

const PROBE: &str = r#"
import json, sys, sysconfig
try:
    import site
    sp = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        sp.append(site.getusersitepackages())
except Exception:
    sp = []
v = sysconfig.get_config_var
print(json.dumps({"executable": sys.executable, "prefix": sys.prefix, "exec_prefix": sys.exec_prefix,
    "base_prefix": getattr(sys, "base_prefix", sys.prefix), "version": "%d.%d" % sys.version_info[:2],
    "libdir": v("LIBDIR"), "ldlibrary": v("LDLIBRARY"), "instsoname": v("INSTSONAME"),
    "multiarch": v("MULTIARCH"), "enable_shared": v("Py_ENABLE_SHARED"),
    "sys_path": [p for p in sys.path if p], "site_packages": sp}))
"#;

/// Runs the interpreter (`python`, else `python3` on PATH) and reads where it lives.
pub fn probe_python(python: Option<&Path>) -> Result<PythonProbe, PythonError> {
    let exe = python.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("python3"));
    let out = std::process::Command::new(&exe).arg("-c").arg(PROBE).stdin(std::process::Stdio::null()).output().map_err(|e| {
        PythonError::Interpreter(match python {
            Some(p) => format!("cannot run the Python interpreter {}: {e} (engine option \"python\")", p.display()),
            None => format!(
                "cannot run `python3` from PATH: {e}: activate the environment that has the engine's packages, or pass \"python\": \"/path/to/python3\" in --engine-options"
            ),
        })
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(PythonError::Interpreter(format!(
            "{} -c <probe> failed ({}): {}",
            exe.display(),
            out.status,
            one_line(&err, 300)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    let probe: PythonProbe = serde_json::from_str(line).map_err(|e| {
        PythonError::Interpreter(format!("{} did not describe itself ({e}): is it CPython 3.8 or newer?", exe.display()))
    })?;
    let minor = probe.version.strip_prefix("3.").and_then(|m| m.parse::<u32>().ok());
    if !matches!(minor, Some(m) if m >= 8) {
        return Err(PythonError::Interpreter(format!(
            "{} is Python {}: tpprof embeds CPython 3.8 to 3.13",
            probe.executable, probe.version
        )));
    }
    Ok(probe)
}

fn is_shared_object(p: &Path) -> bool {
    let named = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".so"));
    let mut magic = [0u8; 4];
    let elf = std::fs::File::open(p).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok() && magic == *b"\x7fELF";
    named && elf
}

/// The shared libpython of the probed interpreter.
fn libpython_of(probe: &PythonProbe) -> Result<PathBuf, PythonError> {
    let v = &probe.version;
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = &probe.libdir {
        dirs.push(PathBuf::from(d));
        if let Some(m) = probe.multiarch.as_deref().filter(|m| !m.is_empty()) {
            dirs.push(Path::new(d).join(m));
        }
    }
    for p in [&probe.prefix, &probe.base_prefix, &probe.exec_prefix] {
        dirs.push(Path::new(p).join("lib"));
    }
    let mut names: Vec<String> = Vec::new();
    names.extend(probe.instsoname.clone());
    names.extend(probe.ldlibrary.clone());
    names.extend([format!("libpython{v}.so.1.0"), format!("libpython{v}.so"), format!("libpython{v}m.so.1.0"), format!("libpython{v}m.so")]);
    for d in &dirs {
        for n in &names {
            let p = d.join(n);
            if is_shared_object(&p) {
                return Ok(p);
            }
        }
    }
    let why = if probe.enable_shared == Some(0) || probe.ldlibrary.as_deref().is_some_and(|l| l.ends_with(".a")) {
        "was built without --enable-shared (no libpython".to_string()
    } else {
        "has no shared library (no libpython".to_string()
    };
    Err(PythonError::NoLibpython(format!(
        "{} (Python {v}) {why}{v}.so in {}): tpprof embeds Python through libpython; use a Python that has libpython{v}.so \
         (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install {v}; Debian/Ubuntu: apt-get install libpython{v}; conda and uv Pythons ship it), \
         or set {LIBPYTHON_ENV}=/path/libpython{v}.so",
        probe.executable,
        probe.libdir.as_deref().unwrap_or("LIBDIR")
    )))
}

/// The shared libpython to embed: `$TPPROF_LIBPYTHON`, else the one of `python` (else `python3`
/// on PATH, where an active venv's comes first).
pub fn find_libpython(python: Option<&Path>) -> Result<PathBuf, PythonError> {
    if let Some(p) = std::env::var_os(LIBPYTHON_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !is_shared_object(&p) {
            return Err(PythonError::NoLibpython(format!(
                "{LIBPYTHON_ENV}={} is not a shared library: point it at libpython3.X.so",
                p.display()
            )));
        }
        return Ok(p);
    }
    libpython_of(&probe_python(python)?)
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
pub fn python_rendezvous() -> Result<Vec<u8>, String> {
    let listener = std::net::TcpListener::bind(("0.0.0.0", 0)).map_err(|e| format!("no free TCP port for the python rendezvous: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    drop(listener);
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

// ---------------------------------------------------------------------------------------------
// The CPython C API, resolved at run time
// ---------------------------------------------------------------------------------------------

/// CPython's object, opaque: only ever handled by pointer.
#[repr(C)]
struct PyObject {
    _p: [u8; 0],
}
type Obj = *mut PyObject;
type PyCFunction = unsafe extern "C" fn(Obj, Obj) -> Obj;
type CapsuleDestructor = unsafe extern "C" fn(Obj);

/// `PyMethodDef` with its exact C layout.
#[repr(C)]
struct PyMethodDef {
    ml_name: *const c_char,
    ml_meth: PyCFunction,
    ml_flags: c_int,
    ml_doc: *const c_char,
}
const METH_VARARGS: c_int = 1;
/// `Py_file_input` for Py_CompileString.
const PY_FILE_INPUT: c_int = 257;

/// Every CPython function and object tpprof uses, resolved once from libpython.
struct Api {
    is_initialized: unsafe extern "C" fn() -> c_int,
    initialize_ex: unsafe extern "C" fn(c_int),
    save_thread: unsafe extern "C" fn() -> *mut c_void,
    gil_ensure: unsafe extern "C" fn() -> c_int,
    gil_release: unsafe extern "C" fn(c_int),
    incref: unsafe extern "C" fn(Obj),
    decref: unsafe extern "C" fn(Obj),
    compile_string: unsafe extern "C" fn(*const c_char, *const c_char, c_int) -> Obj,
    exec_code_module: unsafe extern "C" fn(*const c_char, Obj) -> Obj,
    getattr: unsafe extern "C" fn(Obj, *const c_char) -> Obj,
    call_object: unsafe extern "C" fn(Obj, Obj) -> Obj,
    tuple_new: unsafe extern "C" fn(isize) -> Obj,
    tuple_set_item: unsafe extern "C" fn(Obj, isize, Obj) -> c_int,
    tuple_get_item: unsafe extern "C" fn(Obj, isize) -> Obj,
    tuple_size: unsafe extern "C" fn(Obj) -> isize,
    long_from_long: unsafe extern "C" fn(c_long) -> Obj,
    long_as_long: unsafe extern "C" fn(Obj) -> c_long,
    list_new: unsafe extern "C" fn(isize) -> Obj,
    list_set_item: unsafe extern "C" fn(Obj, isize, Obj) -> c_int,
    bool_from_long: unsafe extern "C" fn(c_long) -> Obj,
    unicode_from_string: unsafe extern "C" fn(*const c_char) -> Obj,
    unicode_as_utf8: unsafe extern "C" fn(Obj) -> *const c_char,
    err_occurred: unsafe extern "C" fn() -> Obj,
    err_fetch: unsafe extern "C" fn(*mut Obj, *mut Obj, *mut Obj),
    err_normalize: unsafe extern "C" fn(*mut Obj, *mut Obj, *mut Obj),
    err_set_string: unsafe extern "C" fn(Obj, *const c_char),
    err_clear: unsafe extern "C" fn(),
    object_str: unsafe extern "C" fn(Obj) -> Obj,
    capsule_new: unsafe extern "C" fn(*mut c_void, *const c_char, Option<CapsuleDestructor>) -> Obj,
    capsule_get_pointer: unsafe extern "C" fn(Obj, *const c_char) -> *mut c_void,
    cfunction_new_ex: unsafe extern "C" fn(*mut PyMethodDef, Obj, Obj) -> Obj,
    /// The exception types and None: values read from the exported data symbols.
    exc_type_error: Obj,
    exc_value_error: Obj,
    exc_runtime_error: Obj,
    none: Obj,
    // Never unloaded: the interpreter lives until the process ends.
    _lib: libloading::Library,
}

impl Api {
    fn load(path: &Path) -> Result<Api, PythonError> {
        use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
        // SAFETY: loading libpython runs its initialisers (none that need the interpreter);
        // RTLD_GLOBAL so that extension modules loaded later resolve the C API against it.
        let lib: libloading::Library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }
            .map_err(|e| PythonError::Load { path: path.to_path_buf(), reason: e.to_string() })?
            .into();
        let missing = |symbol| PythonError::MissingSymbol { path: path.to_path_buf(), symbol };
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the function pointer type of the field is the C declaration of this
                // CPython function (3.8-3.13 agree on all of them).
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }.map_err(|_| missing($name))?
            };
        }
        macro_rules! data {
            ($name:literal) => {{
                // SAFETY: the exception types are exported as `PyObject *` variables; the symbol's
                // address is a `PyObject **`, read once after initialisation set them (see
                // `Api::read_data`). Here only the address is taken.
                let p: libloading::Symbol<*mut Obj> =
                    unsafe { lib.get(concat!($name, "\0").as_bytes()) }.map_err(|_| missing($name))?;
                *p as Obj
            }};
        }
        let api = Api {
            is_initialized: sym!("Py_IsInitialized"),
            initialize_ex: sym!("Py_InitializeEx"),
            save_thread: sym!("PyEval_SaveThread"),
            gil_ensure: sym!("PyGILState_Ensure"),
            gil_release: sym!("PyGILState_Release"),
            incref: sym!("Py_IncRef"),
            decref: sym!("Py_DecRef"),
            compile_string: sym!("Py_CompileString"),
            exec_code_module: sym!("PyImport_ExecCodeModule"),
            getattr: sym!("PyObject_GetAttrString"),
            call_object: sym!("PyObject_CallObject"),
            tuple_new: sym!("PyTuple_New"),
            tuple_set_item: sym!("PyTuple_SetItem"),
            tuple_get_item: sym!("PyTuple_GetItem"),
            tuple_size: sym!("PyTuple_Size"),
            long_from_long: sym!("PyLong_FromLong"),
            long_as_long: sym!("PyLong_AsLong"),
            list_new: sym!("PyList_New"),
            list_set_item: sym!("PyList_SetItem"),
            bool_from_long: sym!("PyBool_FromLong"),
            unicode_from_string: sym!("PyUnicode_FromString"),
            unicode_as_utf8: sym!("PyUnicode_AsUTF8"),
            err_occurred: sym!("PyErr_Occurred"),
            err_fetch: sym!("PyErr_Fetch"),
            err_normalize: sym!("PyErr_NormalizeException"),
            err_set_string: sym!("PyErr_SetString"),
            err_clear: sym!("PyErr_Clear"),
            object_str: sym!("PyObject_Str"),
            capsule_new: sym!("PyCapsule_New"),
            capsule_get_pointer: sym!("PyCapsule_GetPointer"),
            cfunction_new_ex: sym!("PyCFunction_NewEx"),
            // Addresses of the variables for now; `read_data` replaces them with their values.
            exc_type_error: data!("PyExc_TypeError"),
            exc_value_error: data!("PyExc_ValueError"),
            exc_runtime_error: data!("PyExc_RuntimeError"),
            // `_Py_NoneStruct` is the None object itself: its address is Py_None.
            none: data!("_Py_NoneStruct"),
            _lib: lib,
        };
        Ok(api)
    }

    /// Reads the exception type variables (after Py_InitializeEx).
    fn read_data(&mut self) {
        for slot in [&mut self.exc_type_error, &mut self.exc_value_error, &mut self.exc_runtime_error] {
            // SAFETY: `*slot` is the address of an exported `PyObject *` variable (set by `load`),
            // valid for the life of the library, which is never unloaded.
            *slot = unsafe { *(*slot as *const Obj) };
        }
    }
}

/// The embedded interpreter: one per process.
struct Runtime {
    api: Api,
    libpython: PathBuf,
    /// The bridge module (BRIDGE below), owned for ever.
    bridge: Obj,
    /// The on_token method definition, leaked: CPython keeps pointing at it.
    on_token_def: *mut PyMethodDef,
}

// SAFETY: the raw pointers in Runtime are only dereferenced by CPython with the GIL held (every use
// goes through `Gil`); the function pointers and the library are immutable after start-up.
unsafe impl Send for Runtime {}
unsafe impl Sync for Runtime {}

/// The started runtime; set once, read by the token callback.
static RUNTIME: OnceLock<&'static Runtime> = OnceLock::new();

/// Whether this process embedded a Python interpreter (main() then leaves through `_exit`: the
/// interpreter is never finalised, and exit handlers or thread-local destructors of extension
/// modules — torch's DTensor caches were seen to — would run without the GIL and abort a run that
/// already wrote its result).
pub fn interpreter_loaded() -> bool {
    RUNTIME.get().is_some()
}
/// Serialises start-up; holds the permanent error of a start that got past Py_InitializeEx.
static START: Mutex<Option<String>> = Mutex::new(None);

/// The Python side of the bridge: sys.path fix-ups, driver import, JSON of dict returns.
const BRIDGE: &str = r#"
import json, os, sys, importlib, importlib.util

def setup(cfg_json):
    cfg = json.loads(cfg_json)
    orig = list(sys.path)
    want = [p for p in cfg.get("sys_path", []) if p]
    sys.path[:] = want + [p for p in orig if p not in want]
    for sp in cfg.get("site_packages", []):
        if sp not in orig and os.path.isdir(sp):
            import site
            site.addsitedir(sp)  # runs its .pth files (editable installs, ...)
    if cfg.get("executable"):
        sys.executable = cfg["executable"]
    if cfg.get("prefix"):
        sys.prefix = cfg["prefix"]
        sys.exec_prefix = cfg.get("exec_prefix") or cfg["prefix"]
    if not getattr(sys, "argv", None) or sys.argv == [""]:
        sys.argv = ["tpprof"]
    for f in (sys.stdout, sys.stderr):
        try:
            f.reconfigure(line_buffering=True)  # tpprof never finalizes: nothing may sit in a buffer
        except Exception:
            pass

def _short(path):
    s = ", ".join(path[:8]) + (", ..." if len(path) > 8 else "")
    return "[" + s + "]"

_files = {}

def load(spec, drivers_dir, init_json):
    init = json.loads(init_json)
    if spec.endswith(".py") or os.sep in spec:
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise FileNotFoundError("driver file %s does not exist" % path)
        d = os.path.dirname(path)
        if d not in sys.path:
            sys.path.insert(0, d)
        mod = _files.get(path)
        if mod is None:
            name = os.path.splitext(os.path.basename(path))[0]
            if name in sys.modules and os.path.abspath(getattr(sys.modules[name], "__file__", "") or "") != path:
                name = "_tpprof_driver_%d_%s" % (len(_files), name)
            s = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(s)
            sys.modules[name] = mod
            try:
                s.loader.exec_module(mod)
            except BaseException:
                del sys.modules[name]
                raise
            _files[path] = mod
    else:
        name = "tpprof_driver_" + spec
        if drivers_dir and drivers_dir not in sys.path:
            sys.path.insert(0, drivers_dir)
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            raise ModuleNotFoundError("no driver module `%s` (driver `%s`) on sys.path %s: the shipped drivers are in %s, or use python:/path/to/driver.py"
                                      % (name, spec, _short(sys.path), drivers_dir), name=name) from None
    cls = getattr(mod, "Driver", None)
    if cls is None:
        raise AttributeError("driver module %s (%s) has no class `Driver`" % (mod.__name__, getattr(mod, "__file__", "?")))
    return cls(init)

def call_json(drv, method):
    f = getattr(drv, method, None)
    if f is None:
        return None
    return json.dumps(f(), default=str)

def call_opt(drv, method, *args):
    f = getattr(drv, method, None)
    if f is not None:
        f(*args)

def close(drv):
    try:
        call_opt(drv, "close")
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
"#;

/// The argument of the bridge's setup(): the probed interpreter's paths and identity.
fn setup_json(probe: Option<&PythonProbe>) -> serde_json::Value {
    match probe {
        Some(p) => serde_json::json!({
            "sys_path": p.sys_path, "site_packages": p.site_packages, "executable": p.executable,
            "prefix": p.prefix, "exec_prefix": p.exec_prefix,
        }),
        None => serde_json::json!({}),
    }
}

/// The name of the capsule carrying the sink slot.
const CAPSULE_NAME: &CStr = c"tpprof.on_token";

/// Where the callback finds the sink: set for the duration of one generate() call, null outside it
/// (a driver that keeps the callable and calls it later gets a RuntimeError, not a dangling sink).
struct SinkSlot {
    /// A `callback_ptr`: points at generate()'s `&dyn TokenCallback`.
    sink: AtomicPtr<c_void>,
}

/// Holds the GIL (PyGILState_Ensure) until dropped.
struct Gil<'a> {
    api: &'a Api,
    state: c_int,
}

impl<'a> Gil<'a> {
    fn acquire(api: &'a Api) -> Gil<'a> {
        // SAFETY: the interpreter is initialised (Runtime exists) and this thread does not hold
        // the GIL through another guard (guards are never nested: see the callers).
        let state = unsafe { (api.gil_ensure)() };
        Gil { api, state }
    }
}

impl Drop for Gil<'_> {
    fn drop(&mut self) {
        // SAFETY: releases exactly the Ensure of `acquire`, on the same thread.
        unsafe { (self.api.gil_release)(self.state) };
    }
}

/// An owned (strong) reference, released on drop. Only created and dropped with the GIL held
/// (inside a `Gil` scope, declared after the guard so it drops first).
struct Owned<'a> {
    api: &'a Api,
    ptr: Obj,
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        // SAFETY: `ptr` is a strong reference this guard owns; the GIL is held (see Owned).
        unsafe { (self.api.decref)(self.ptr) };
    }
}

impl<'a> Owned<'a> {
    /// Gives the reference away (to a function that steals it).
    fn into_raw(self) -> Obj {
        let p = self.ptr;
        std::mem::forget(self);
        p
    }
}

impl Runtime {
    /// The runtime, started on first use with the given libpython and probe.
    fn get(libpython: Option<&Path>, python: Option<&Path>) -> Result<&'static Runtime, PythonError> {
        let mut start = START.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = RUNTIME.get() {
            // Asked for a specific interpreter: it must be the one already embedded.
            if python.is_some() || libpython.is_some() {
                let wanted = match libpython {
                    Some(p) => p.to_path_buf(),
                    None => find_libpython(python)?,
                };
                let same = |a: &Path, b: &Path| a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(a, b)| a == b);
                if !same(&wanted, &rt.libpython) {
                    return Err(PythonError::Interpreter(format!(
                        "this process already embeds {}; one process holds one Python: {} cannot be loaded too",
                        rt.libpython.display(),
                        wanted.display()
                    )));
                }
                // Same libpython, maybe another venv: add that interpreter's paths too.
                if let Some(probe) = python.map(|p| probe_python(Some(p))).transpose()? {
                    let _gil = Gil::acquire(&rt.api);
                    rt.setup(&probe).map_err(|e| PythonError::Interpreter(format!("the embedded Python could not take the paths of {}: {e}", probe.executable)))?;
                }
            }
            return Ok(rt);
        }
        if let Some(e) = start.as_ref() {
            return Err(PythonError::Interpreter(e.clone()));
        }
        // The libpython and the interpreter whose sys.path and site-packages it gets.
        let (lib, probe) = match libpython {
            Some(p) => (p.to_path_buf(), probe_python(python).ok()),
            None => match std::env::var_os(LIBPYTHON_ENV).filter(|p| !p.is_empty()) {
                Some(_) => (find_libpython(python)?, probe_python(python).ok()),
                None => {
                    let probe = probe_python(python)?;
                    (libpython_of(&probe)?, Some(probe))
                }
            },
        };
        // A probe of another Python version than the library would add the wrong site-packages.
        let lib_name = lib.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        let probe = probe.filter(|p| lib_name.starts_with(&format!("libpython{}", p.version)));
        if probe.is_none() {
            tracing::warn!("python: {} embedded without an interpreter's sys.path fix-ups (no matching python3 found)", lib.display());
        }
        let mut api = Api::load(&lib)?;
        // SAFETY: plain query, allowed before initialisation.
        let already = unsafe { (api.is_initialized)() } != 0;
        if already {
            let e = "libpython was already initialised in this process by someone else: tpprof cannot embed it".to_string();
            *start = Some(e.clone());
            return Err(PythonError::Interpreter(e));
        }
        // SAFETY: first and only initialisation in this process (guarded by START and the check
        // above); 0 = do not install signal handlers (MPI and tpprof keep theirs).
        unsafe { (api.initialize_ex)(0) };
        api.read_data();
        let def = Box::into_raw(Box::new(PyMethodDef {
            ml_name: c"on_token".as_ptr(),
            ml_meth: on_token_callback,
            ml_flags: METH_VARARGS,
            ml_doc: c"on_token(sample, step, token, finish): report one token to tpprof".as_ptr(),
        }));
        let mut rt = Runtime { api, libpython: lib, bridge: std::ptr::null_mut(), on_token_def: def };
        // This thread holds the GIL since Py_InitializeEx.
        let bridge = rt.start_bridge(probe.as_ref());
        // SAFETY: this thread holds the GIL (initialisation); from here on every use of Python
        // takes it with PyGILState_Ensure, on any thread.
        unsafe { (rt.api.save_thread)() };
        match bridge {
            Ok(b) => {
                rt.bridge = b;
                let rt: &'static Runtime = Box::leak(Box::new(rt));
                let _ = RUNTIME.set(rt);
                Ok(rt)
            }
            Err(e) => {
                let e = format!("the embedded Python ({}) could not be set up: {e}", rt.libpython.display());
                *start = Some(e.clone());
                std::mem::forget(rt); // Python may still point at the method definition.
                Err(PythonError::Interpreter(e))
            }
        }
    }

    /// Compiles and runs the bridge, then its setup(); called with the GIL held (initialising
    /// thread), before any Gil guard exists.
    fn start_bridge(&self, probe: Option<&PythonProbe>) -> Result<Obj, String> {
        let api = &self.api;
        let src = CString::new(BRIDGE).expect("no NUL in the bridge");
        // SAFETY: GIL held; both strings are NUL-terminated and outlive the call.
        let code = unsafe { (api.compile_string)(src.as_ptr(), c"<tpprof bridge>".as_ptr(), PY_FILE_INPUT) };
        if code.is_null() {
            return Err(self.fetch_error());
        }
        let code = Owned { api, ptr: code };
        // SAFETY: GIL held; `code` is a code object; returns a new reference to the module.
        let module = unsafe { (api.exec_code_module)(c"_tpprof_bridge".as_ptr(), code.ptr) };
        if module.is_null() {
            return Err(self.fetch_error());
        }
        let m = Owned { api, ptr: module };
        let arg = self.string(&setup_json(probe).to_string())?;
        self.call_method(module, c"setup", vec![arg])?;
        Ok(m.into_raw())
    }

    /// The bridge's setup() for another interpreter of the same libpython (GIL held).
    fn setup(&self, probe: &PythonProbe) -> Result<(), String> {
        let arg = self.string(&setup_json(Some(probe)).to_string())?;
        self.bridge_call(c"setup", vec![arg]).map(drop)
    }

    // --- object helpers: all require the GIL (callers hold a `Gil` or are start-up) -----------

    fn own(&self, ptr: Obj) -> Result<Owned<'_>, String> {
        if ptr.is_null() {
            Err(self.fetch_error())
        } else {
            Ok(Owned { api: &self.api, ptr })
        }
    }

    fn string(&self, s: &str) -> Result<Owned<'_>, String> {
        let c = CString::new(s).map_err(|_| "a string with a NUL byte".to_string())?;
        // SAFETY: GIL held; `c` is NUL-terminated UTF-8 and outlives the call.
        self.own(unsafe { (self.api.unicode_from_string)(c.as_ptr()) })
    }

    fn long(&self, v: i64) -> Result<Owned<'_>, String> {
        // SAFETY: GIL held.
        self.own(unsafe { (self.api.long_from_long)(v as c_long) })
    }

    fn boolean(&self, v: bool) -> Result<Owned<'_>, String> {
        // SAFETY: GIL held.
        self.own(unsafe { (self.api.bool_from_long)(v as c_long) })
    }

    /// A borrowed reference made owned (incref).
    fn share(&self, ptr: Obj) -> Owned<'_> {
        // SAFETY: GIL held; `ptr` is a live object the caller holds a reference to.
        unsafe { (self.api.incref)(ptr) };
        Owned { api: &self.api, ptr }
    }

    fn tuple(&self, items: Vec<Owned<'_>>) -> Result<Owned<'_>, String> {
        // SAFETY: GIL held.
        let t = self.own(unsafe { (self.api.tuple_new)(items.len() as isize) })?;
        for (i, item) in items.into_iter().enumerate() {
            // SAFETY: GIL held; `t` is a fresh tuple of this size; SetItem steals the reference.
            if unsafe { (self.api.tuple_set_item)(t.ptr, i as isize, item.into_raw()) } != 0 {
                return Err(self.fetch_error());
            }
        }
        Ok(t)
    }

    /// prompts as a list of lists of ints.
    fn prompts(&self, prompts: &[Vec<i32>]) -> Result<Owned<'_>, String> {
        // SAFETY: GIL held.
        let outer = self.own(unsafe { (self.api.list_new)(prompts.len() as isize) })?;
        for (i, p) in prompts.iter().enumerate() {
            // SAFETY: GIL held.
            let inner = self.own(unsafe { (self.api.list_new)(p.len() as isize) })?;
            for (j, &t) in p.iter().enumerate() {
                let v = self.long(t as i64)?;
                // SAFETY: GIL held; fresh list of this size; SetItem steals `v`.
                if unsafe { (self.api.list_set_item)(inner.ptr, j as isize, v.into_raw()) } != 0 {
                    return Err(self.fetch_error());
                }
            }
            // SAFETY: as above; steals `inner`.
            if unsafe { (self.api.list_set_item)(outer.ptr, i as isize, inner.into_raw()) } != 0 {
                return Err(self.fetch_error());
            }
        }
        Ok(outer)
    }

    /// `obj.name(*args)`.
    fn call_method(&self, obj: Obj, name: &CStr, args: Vec<Owned<'_>>) -> Result<Owned<'_>, String> {
        // SAFETY: GIL held; `obj` is live; `name` NUL-terminated.
        let f = self.own(unsafe { (self.api.getattr)(obj, name.as_ptr()) })?;
        let args = self.tuple(args)?;
        // SAFETY: GIL held; `f` callable (else CPython raises TypeError), `args` a tuple.
        self.own(unsafe { (self.api.call_object)(f.ptr, args.ptr) })
    }

    /// `bridge.name(*args)`.
    fn bridge_call(&self, name: &CStr, args: Vec<Owned<'_>>) -> Result<Owned<'_>, String> {
        self.call_method(self.bridge, name, args)
    }

    fn is_none(&self, o: &Owned<'_>) -> bool {
        o.ptr == self.api.none
    }

    /// A `str` object's text.
    fn text(&self, o: Obj) -> Option<String> {
        // SAFETY: GIL held; returns a pointer into the object's UTF-8 cache (or NULL with an error
        // set), valid while `o` lives; copied at once.
        let p = unsafe { (self.api.unicode_as_utf8)(o) };
        if p.is_null() {
            // SAFETY: GIL held.
            unsafe { (self.api.err_clear)() };
            return None;
        }
        // SAFETY: non-NULL NUL-terminated UTF-8 owned by `o`.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// `getattr(o, name)`, None (error cleared) when missing.
    fn attr(&self, o: Obj, name: &CStr) -> Option<Owned<'_>> {
        // SAFETY: GIL held; `o` live.
        let p = unsafe { (self.api.getattr)(o, name.as_ptr()) };
        if p.is_null() {
            // SAFETY: GIL held.
            unsafe { (self.api.err_clear)() };
            return None;
        }
        Some(Owned { api: &self.api, ptr: p })
    }

    fn str_of(&self, o: Obj) -> Option<String> {
        // SAFETY: GIL held; `o` live; returns a new reference or NULL with an error set.
        let s = unsafe { (self.api.object_str)(o) };
        if s.is_null() {
            // SAFETY: GIL held.
            unsafe { (self.api.err_clear)() };
            return None;
        }
        let s = Owned { api: &self.api, ptr: s };
        self.text(s.ptr)
    }

    /// The pending Python exception as one line, "TypeName: message (at file.py:12 in f)"; clears it.
    fn fetch_error(&self) -> String {
        let api = &self.api;
        let (mut t, mut v, mut tb): (Obj, Obj, Obj) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: GIL held; the three out-pointers are valid; we own the returned references.
        unsafe { (api.err_fetch)(&mut t, &mut v, &mut tb) };
        if t.is_null() {
            return "an error without a Python exception".into();
        }
        // SAFETY: GIL held; normalises in place, keeping ownership with us.
        unsafe { (api.err_normalize)(&mut t, &mut v, &mut tb) };
        let own = |p: Obj| (!p.is_null()).then(|| Owned { api, ptr: p });
        let (t, v, tb) = (own(t), own(v), own(tb));
        let name = t
            .as_ref()
            .and_then(|t| self.attr(t.ptr, c"__name__"))
            .and_then(|n| self.text(n.ptr))
            .unwrap_or_else(|| "Exception".into());
        let msg = v.as_ref().and_then(|v| self.str_of(v.ptr)).unwrap_or_default();
        let tb = tb.or_else(|| v.as_ref().and_then(|v| self.attr(v.ptr, c"__traceback__")));
        let place = tb.and_then(|tb| self.innermost_frame(tb));
        let mut s = if msg.is_empty() { name } else { format!("{name}: {msg}") };
        if let Some(p) = place {
            s.push_str(&format!(" (at {p})"));
        }
        one_line(&s, MAX_WHAT)
    }

    /// "file.py:12 in func" of a traceback's innermost frame.
    fn innermost_frame(&self, tb: Owned<'_>) -> Option<String> {
        let mut tb = tb;
        for _ in 0..10_000 {
            match self.attr(tb.ptr, c"tb_next") {
                Some(next) if !self.is_none(&next) => tb = next,
                _ => break,
            }
        }
        if self.is_none(&tb) {
            return None;
        }
        let line = self.attr(tb.ptr, c"tb_lineno").and_then(|l| self.str_of(l.ptr)).unwrap_or_else(|| "?".into());
        let code = self.attr(tb.ptr, c"tb_frame").and_then(|f| self.attr(f.ptr, c"f_code"))?;
        let file = self.attr(code.ptr, c"co_filename").and_then(|f| self.text(f.ptr)).unwrap_or_default();
        let func = self.attr(code.ptr, c"co_name").and_then(|f| self.text(f.ptr)).unwrap_or_default();
        if file.starts_with("<tpprof bridge>") {
            return None; // raised by the bridge itself: its message says it all
        }
        let base = Path::new(&file).file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or(file);
        Some(format!("{base}:{line} in {func}"))
    }

    /// Sets a Python exception (for returning NULL from the callback).
    fn raise(&self, exc: Obj, msg: &str) {
        let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
        // SAFETY: GIL held (called from the callback); `exc` is an exception type; `c` lives.
        unsafe { (self.api.err_set_string)(exc, c.as_ptr()) };
    }
}

/// The capsule's destructor: frees the sink slot when Python drops the last callback reference.
unsafe extern "C" fn free_sink_slot(capsule: Obj) {
    if let Some(rt) = RUNTIME.get() {
        // SAFETY: called by CPython with the GIL held, for a capsule made by `make_callback` with
        // this name; its pointer is a leaked Box<SinkSlot> freed only here.
        let p = unsafe { (rt.api.capsule_get_pointer)(capsule, CAPSULE_NAME.as_ptr()) };
        if p.is_null() {
            // SAFETY: GIL held.
            unsafe { (rt.api.err_clear)() };
        } else {
            // SAFETY: see above: the Box made in make_callback, freed once.
            drop(unsafe { Box::from_raw(p as *mut SinkSlot) });
        }
    }
}

/// The native `on_token(sample, step, token, finish)` Python calls (GIL held). Reads four ints,
/// hands them to the sink (which timestamps them), returns None. Never panics, never unwinds.
unsafe extern "C" fn on_token_callback(slf: Obj, args: Obj) -> Obj {
    let Some(rt) = RUNTIME.get() else { return std::ptr::null_mut() };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_token_body(rt, slf, args)));
    match r {
        Ok(Some(())) => {
            // SAFETY: GIL held; returning a new reference to None.
            unsafe { (rt.api.incref)(rt.api.none) };
            rt.api.none
        }
        Ok(None) => std::ptr::null_mut(),
        Err(_) => {
            rt.raise(rt.api.exc_runtime_error, "tpprof on_token: internal error");
            std::ptr::null_mut()
        }
    }
}

/// Some(()) on success; None with a Python exception set.
fn on_token_body(rt: &Runtime, slf: Obj, args: Obj) -> Option<()> {
    let api = &rt.api;
    // SAFETY: GIL held; `slf` is the capsule bound in make_callback.
    let slot = unsafe { (api.capsule_get_pointer)(slf, CAPSULE_NAME.as_ptr()) } as *const SinkSlot;
    if slot.is_null() {
        return None; // CPython set the error
    }
    // SAFETY: GIL held; METH_VARARGS passes a tuple.
    let n = unsafe { (api.tuple_size)(args) };
    if n != 4 {
        rt.raise(api.exc_type_error, &format!("on_token(sample, step, token, finish) takes 4 integer arguments ({n} given)"));
        return None;
    }
    let mut v = [0i64; 4];
    for (i, out) in v.iter_mut().enumerate() {
        // SAFETY: GIL held; 0 <= i < 4 = size; borrowed reference.
        let item = unsafe { (api.tuple_get_item)(args, i as isize) };
        // SAFETY: GIL held; `item` live (borrowed from args); -1 + error on failure.
        let x = unsafe { (api.long_as_long)(item) };
        // SAFETY: GIL held.
        if x == -1 && !unsafe { (api.err_occurred)() }.is_null() {
            // SAFETY: GIL held.
            unsafe { (api.err_clear)() };
            let names = ["sample", "step", "token", "finish"];
            rt.raise(api.exc_type_error, &format!("on_token(sample, step, token, finish): `{}` must be an int", names[i]));
            return None;
        }
        #[allow(clippy::useless_conversion)] // c_long is i32 on some targets
        {
            *out = i64::from(x);
        }
    }
    let [sample, step, token, finish] = v;
    if !(0..=u32::MAX as i64).contains(&sample) || !(0..=u32::MAX as i64).contains(&step)
        || !(i32::MIN as i64..=i32::MAX as i64).contains(&token) || !(0..=4).contains(&finish)
    {
        rt.raise(api.exc_value_error, &format!(
            "on_token({sample}, {step}, {token}, {finish}): sample and step must be >= 0, token an int32, finish 0 none / 1 length / 2 eos / 3 stop / 4 error"
        ));
        return None;
    }
    // SAFETY: the slot lives as long as the capsule (freed by its destructor), and the capsule is
    // `slf`, alive during this call.
    let sink = unsafe { &*slot }.sink.load(Ordering::Acquire);
    if sink.is_null() {
        rt.raise(api.exc_runtime_error, "on_token called outside generate(): tpprof only records tokens while generate() runs");
        return None;
    }
    // SAFETY: non-null only during PythonEngine::generate, which holds the callback (and the
    // reference the pointer addresses) and clears the slot (with the GIL, so never during this call)
    // before returning. on_token is thread-safe.
    unsafe { super::callback_from(sink) }.on_token(sample as u32, step as u32, token as i32, finish as i32);
    Some(())
}

// ---------------------------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------------------------

/// A Python driver's `Driver` instance, in the process's embedded interpreter.
pub struct PythonEngine {
    rt: &'static Runtime,
    /// The Driver instance (strong reference; released with the GIL on drop).
    driver: Obj,
    label: String,
    spec: String,
    path: String,
    info: serde_json::Value,
    topology: Topology,
}

// SAFETY: `driver` is only touched with the GIL held (every method takes it), from whichever
// thread; CPython objects are not bound to threads.
unsafe impl Send for PythonEngine {}

impl PythonEngine {
    /// Loads driver `driver` (a shipped name such as `hf` or `test`, or a path to a .py file) and
    /// creates its `Driver(init)`. `init.options_json` is the engine options (a JSON object or
    /// empty); its `"python"` selects the interpreter. `init.rendezvous` is UTF-8 "host:port"
    /// (see `python_rendezvous`), passed as `init["rendezvous"]`.
    pub fn load(driver: &str, init: &InitParams) -> Result<PythonEngine, PythonError> {
        let label = driver_label(driver).trim_start_matches("python-").to_string();
        let options: serde_json::Value = match init.options_json.trim() {
            "" => serde_json::json!({}),
            s => serde_json::from_str(s).map_err(|e| PythonError::BadOptions(format!("not JSON: {e}")))?,
        };
        if !options.is_object() {
            return Err(PythonError::BadOptions("must be a JSON object".into()));
        }
        let python = match options.get("python") {
            None => None,
            Some(serde_json::Value::String(p)) => Some(PathBuf::from(p)),
            Some(_) => return Err(PythonError::BadOptions("\"python\" must be the path of a Python interpreter".into())),
        };
        let rt = Runtime::get(None, python.as_deref())?;
        let init_json = serde_json::json!({
            "rank": init.rank,
            "world_size": init.world_size,
            "local_rank": init.local_rank,
            "local_world_size": init.local_world_size,
            "devices": init.devices,
            "options": options,
            "rendezvous": String::from_utf8_lossy(init.rendezvous),
        })
        .to_string();
        let dir = drivers_dir();
        let py_err = |call: &str, what: String| PythonError::Python { driver: label.clone(), call: call.into(), what };
        let gil = Gil::acquire(&rt.api);
        let driver_obj = (|| {
            let args = vec![rt.string(driver)?, rt.string(&dir.to_string_lossy())?, rt.string(&init_json)?];
            rt.bridge_call(c"load", args)
        })()
        .map_err(|e| py_err("Driver(init)", e))?;
        let mut engine = PythonEngine {
            rt,
            driver: driver_obj.into_raw(),
            label: label.clone(),
            spec: driver.to_string(),
            path: String::new(),
            info: serde_json::Value::Null,
            topology: Topology::AllRanks,
        };
        drop(gil);
        engine.info = engine.call_json("info")?.unwrap_or(serde_json::Value::Null);
        if !engine.info.is_object() && !engine.info.is_null() {
            return Err(engine.bad_return("info()", format!("{}: it must be a dict", engine.info)));
        }
        engine.topology = match engine.call_json("topology")? {
            None => Topology::AllRanks,
            Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("all_ranks") => Topology::AllRanks,
            Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("one_process") => Topology::OneProcess,
            Some(other) => return Err(engine.bad_return("topology()", format!("{other}: it must be \"all_ranks\" or \"one_process\""))),
        };
        engine.path = {
            let _gil = Gil::acquire(&rt.api);
            let module = rt.attr(engine.driver, c"__class__").and_then(|c| rt.attr(c.ptr, c"__module__")).and_then(|m| rt.text(m.ptr));
            module.unwrap_or_default()
        };
        Ok(engine)
    }

    fn bad_return(&self, call: &str, what: String) -> PythonError {
        PythonError::BadReturn { driver: self.label.clone(), call: call.into(), what }
    }

    /// `json.loads(json.dumps(driver.method()))`; None when the driver has no such method.
    fn call_json(&self, method: &str) -> Result<Option<serde_json::Value>, PythonError> {
        let rt = self.rt;
        let _gil = Gil::acquire(&rt.api);
        let r = (|| {
            let name = rt.string(method)?;
            let r = rt.bridge_call(c"call_json", vec![rt.share(self.driver), name])?;
            if rt.is_none(&r) {
                return Ok(None);
            }
            rt.text(r.ptr).map(Some).ok_or_else(|| "call_json returned a non-str".to_string())
        })();
        let text = r.map_err(|what| PythonError::Python { driver: self.label.clone(), call: format!("{method}()"), what })?;
        match text {
            None => Ok(None),
            Some(t) => serde_json::from_str(&t).map(Some).map_err(|e| self.bad_return(&format!("{method}()"), format!("JSON tpprof cannot read ({e})"))),
        }
    }

    /// The driver module's name (`tpprof_driver_hf`, or the file's module).
    pub fn module(&self) -> &str {
        &self.path
    }

    /// The libpython this process embeds.
    pub fn libpython(&self) -> &Path {
        &self.rt.libpython
    }
}

impl Engine for PythonEngine {
    fn info(&self) -> EngineInfo {
        let s = |k: &str| self.info.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let mut details = if self.info.is_object() { self.info.clone() } else { serde_json::json!({}) };
        details["driver"] = serde_json::json!(self.spec);
        details["module"] = serde_json::json!(self.path);
        details["libpython"] = serde_json::json!(self.rt.libpython.display().to_string());
        EngineInfo {
            name: s("name").unwrap_or_else(|| format!("python-{}", self.label)),
            version: s("version").unwrap_or_else(|| "unknown".into()),
            kind: "python".into(),
            path: Some(self.spec.clone()),
            details,
        }
    }

    fn topology(&self) -> Topology {
        self.topology
    }

    fn prepare(&mut self, prompts: &[Vec<i32>], max_new_tokens: u32) -> Result<(), EngineError> {
        let rt = self.rt;
        let _gil = Gil::acquire(&rt.api);
        let r = (|| {
            let args = vec![rt.share(self.driver), rt.string("prepare")?, rt.prompts(prompts)?, rt.long(max_new_tokens as i64)?];
            rt.bridge_call(c"call_opt", args).map(drop)
        })();
        r.map_err(|what| PythonError::Python { driver: self.label.clone(), call: "prepare()".into(), what }.into())
    }

    fn generate(&mut self, prompts: &[Vec<i32>], max_new_tokens: u32, exact_length: bool, sink: &dyn TokenCallback)
        -> Result<(), EngineError> {
        let rt = self.rt;
        let api = &rt.api;
        let _gil = Gil::acquire(api);
        let slot = Box::into_raw(Box::new(SinkSlot { sink: AtomicPtr::new(super::callback_ptr(&sink)) }));
        // SAFETY: GIL held; the capsule takes the leaked slot and frees it in its destructor.
        let capsule = unsafe { (api.capsule_new)(slot.cast(), CAPSULE_NAME.as_ptr(), Some(free_sink_slot)) };
        let r = (|| {
            let capsule = match rt.own(capsule) {
                Ok(c) => c,
                Err(e) => {
                    // SAFETY: the capsule was not made, so nobody else owns the slot.
                    drop(unsafe { Box::from_raw(slot) });
                    return Err(e);
                }
            };
            // SAFETY: GIL held; the method definition is leaked (lives for ever); `capsule`
            // becomes the function's `self` (the function holds its own reference).
            let cb = rt.own(unsafe { (api.cfunction_new_ex)(rt.on_token_def, capsule.ptr, std::ptr::null_mut()) })?;
            drop(capsule);
            let prompts = rt.prompts(prompts)?;
            let args = rt.tuple(vec![prompts, rt.long(max_new_tokens as i64)?, rt.boolean(exact_length)?, cb])?;
            // SAFETY: GIL held; driver live.
            let f = rt.own(unsafe { (api.getattr)(self.driver, c"generate".as_ptr()) })?;
            sink.mark_submit();
            // SAFETY: GIL held; `f` callable, `args` a tuple.
            let res = unsafe { (api.call_object)(f.ptr, args.ptr) };
            // SAFETY: the slot is alive until the capsule dies, which is after this (the
            // callback still holds it via `args`). With the GIL held no callback runs meanwhile.
            unsafe { &*slot }.sink.store(std::ptr::null_mut(), Ordering::Release);
            rt.own(res).map(drop)
        })();
        r.map_err(|what| PythonError::Python { driver: self.label.clone(), call: "generate()".into(), what }.into())
    }

    /// The driver's optional `stats()` (a dict about the last generate(), e.g. how many tokens
    /// each of the engine's stream outputs carried); a failing `stats()` is logged, not fatal.
    fn run_stats(&self) -> Option<serde_json::Value> {
        match self.call_json("stats") {
            Ok(v) => v.filter(|v| !v.is_null()),
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    fn memory(&self) -> Result<EngineMemory, EngineError> {
        let v = self.call_json("memory")?;
        let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(EngineMemory::default()) };
        let Some(obj) = v.as_object() else {
            return Err(self.bad_return("memory()", format!("{v}: it must be a dict of byte counts")).into());
        };
        let get = |k: &str| -> Result<Option<u64>, PythonError> {
            match obj.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .or_else(|| x.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .map(Some)
                    .ok_or_else(|| self.bad_return("memory()", format!("{k} = {x}: byte counts must be non-negative numbers"))),
            }
        };
        Ok(EngineMemory {
            weights_bytes: get("weights_bytes")?,
            kv_cache_bytes: get("kv_cache_bytes")?,
            workspace_bytes: get("workspace_bytes")?,
            comm_bytes: get("comm_bytes")?,
            host_bytes: get("host_bytes")?,
        })
    }

    fn vocab_size(&self) -> Option<u32> {
        self.info.get("vocab_size").and_then(|v| v.as_u64()).map(|v| v as u32)
    }

    fn max_context(&self) -> Option<u32> {
        self.info.get("max_context").and_then(|v| v.as_u64()).map(|v| v as u32)
    }
}

impl Drop for PythonEngine {
    fn drop(&mut self) {
        let rt = self.rt;
        let _gil = Gil::acquire(&rt.api);
        let driver = Owned { api: &rt.api, ptr: self.driver };
        let r = rt.bridge_call(c"close", vec![rt.share(driver.ptr)]).map(drop);
        if let Err(what) = r {
            tracing::warn!("python driver `{}` close() raised {what}", self.label);
        }
        drop(driver);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::Collector;
    use crate::engine::FinishReason;

    /// None (and a "skipped" line) where this machine has no usable libpython.
    fn python_or_skip() -> Option<()> {
        match find_libpython(None) {
            Ok(_) => Some(()),
            Err(e) => {
                println!("skipped: {e}");
                None
            }
        }
    }

    fn init<'a>(opts: &'a str) -> InitParams<'a> {
        InitParams { rank: 0, world_size: 1, local_rank: 0, local_world_size: 1, devices: &[], options_json: opts, rendezvous: b"127.0.0.1:29500" }
    }

    #[test]
    fn finds_libpython() {
        if python_or_skip().is_none() {
            return;
        }
        let p = find_libpython(None).unwrap();
        assert!(p.file_name().unwrap().to_str().unwrap().starts_with("libpython3"), "{}", p.display());
        assert!(is_shared_object(&p));
        let e = find_libpython(Some(Path::new("/nonexistent/python3"))).unwrap_err().to_string();
        assert!(e.contains("cannot run the Python interpreter /nonexistent/python3"), "{e}");
    }

    #[test]
    fn static_python_gets_a_clear_error() {
        let probe = PythonProbe {
            executable: "/opt/py/bin/python3".into(),
            prefix: "/nonexistent".into(),
            exec_prefix: "/nonexistent".into(),
            base_prefix: "/nonexistent".into(),
            version: "3.12".into(),
            libdir: Some("/nonexistent/lib".into()),
            ldlibrary: Some("libpython3.12.a".into()),
            enable_shared: Some(0),
            ..Default::default()
        };
        let e = libpython_of(&probe).unwrap_err().to_string();
        assert!(e.contains("built without --enable-shared") && e.contains("TPPROF_LIBPYTHON=/path/libpython3.12.so"), "{e}");
    }

    #[test]
    fn generates_with_timestamps_from_the_native_callback() {
        if python_or_skip().is_none() {
            return;
        }
        let mut e = PythonEngine::load("test", &init(r#"{"vocab_size": 1000, "token_us": 300}"#)).unwrap();
        assert_eq!(e.vocab_size(), Some(1000));
        let sink = Collector::new(32);
        e.generate(&[vec![1, 2, 3], vec![4]], 5, true, &sink).unwrap();
        let submit = sink.submit_ns();
        let (events, overflow) = sink.into_events();
        assert_eq!(overflow, 0);
        assert_eq!(events.len(), 10);
        for s in 0..2u32 {
            let mut ev: Vec<_> = events.iter().filter(|ev| ev.sample == s).collect();
            ev.sort_by_key(|ev| ev.step);
            assert_eq!(ev.len(), 5);
            assert!(ev[0].t_ns >= submit + 300_000, "first token {} ns after submit", ev[0].t_ns - submit);
            for (k, x) in ev.iter().enumerate() {
                assert_eq!(x.step, k as u32);
                assert_eq!(x.token, ((s * 31 + k as u32 * 7 + 1) % 1000) as i32);
                let want = if k == 4 { FinishReason::Length } else { FinishReason::None };
                assert_eq!(FinishReason::from_abi(x.finish), want);
            }
            for w in ev.windows(2) {
                assert!(w[1].t_ns - w[0].t_ns >= 300_000, "gap {} ns < token_us", w[1].t_ns - w[0].t_ns);
            }
        }
    }

    #[test]
    fn callbacks_from_a_python_thread_are_recorded() {
        if python_or_skip().is_none() {
            return;
        }
        let mut e = PythonEngine::load("test", &init(r#"{"thread": true}"#)).unwrap();
        let sink = Collector::new(16);
        e.generate(&[vec![1, 2]], 8, true, &sink).unwrap();
        let (events, _) = sink.into_events();
        assert_eq!(events.len(), 8);
        assert_eq!(events[7].finish, 1);
    }

    #[test]
    fn eos_stops_a_sample_when_allowed() {
        if python_or_skip().is_none() {
            return;
        }
        let mut e = PythonEngine::load("test", &init(r#"{"eos_at_step": 2}"#)).unwrap();
        let sink = Collector::new(16);
        e.generate(&[vec![1]], 8, false, &sink).unwrap();
        let (events, _) = sink.into_events();
        assert_eq!(events.len(), 3);
        assert_eq!(FinishReason::from_abi(events[2].finish), FinishReason::Eos);
        // Exact length ignores EOS.
        let sink = Collector::new(16);
        e.generate(&[vec![1]], 8, true, &sink).unwrap();
        assert_eq!(sink.into_events().0.len(), 8);
    }

    #[test]
    fn create_failure_is_one_line_with_type_and_message() {
        if python_or_skip().is_none() {
            return;
        }
        let e = PythonEngine::load("test", &init(r#"{"fail_create": "no GPU for you"}"#)).err().unwrap().to_string();
        assert!(e.starts_with("python driver `test` Driver(init) raised RuntimeError: no GPU for you"), "{e}");
        assert!(e.contains("tpprof_driver_test.py:"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn generate_failure_is_one_line_and_the_engine_survives() {
        if python_or_skip().is_none() {
            return;
        }
        let mut e = PythonEngine::load("test", &init(r#"{"fail_at_step": 3}"#)).unwrap();
        let sink = Collector::new(16);
        let err = e.generate(&[vec![1]], 8, true, &sink).unwrap_err().to_string();
        assert!(err.starts_with("python driver `test` generate() raised RuntimeError: injected failure at step 3"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert_eq!(sink.into_events().0.len(), 3);
        // The interpreter is fine afterwards.
        assert!(e.memory().is_ok());
    }

    #[test]
    fn the_test_driver_imports_modules_it_is_asked_for() {
        if python_or_skip().is_none() {
            return;
        }
        // `import` loads a library into the interpreter (torch on a GPU machine: the embedded path's
        // cost with it loaded); its version shows in the engine's details.
        let e = PythonEngine::load("test", &init(r#"{"import": ["json"]}"#)).unwrap();
        assert!(e.info().details["imported"]["json"].is_string(), "{}", e.info().details);
        let err = PythonEngine::load("test", &init(r#"{"import": ["no_such_module_tpprof"]}"#)).err().unwrap().to_string();
        assert!(err.contains("ModuleNotFoundError") && err.contains("no_such_module_tpprof"), "{err}");
    }

    #[test]
    fn bad_callback_arguments_raise_in_python() {
        if python_or_skip().is_none() {
            return;
        }
        let mut e = PythonEngine::load("test", &init(r#"{"bad_callback": "str"}"#)).unwrap();
        let err = e.generate(&[vec![1]], 2, true, &Collector::new(4)).unwrap_err().to_string();
        assert!(err.contains("TypeError: on_token(sample, step, token, finish): `token` must be an int"), "{err}");
        let mut e = PythonEngine::load("test", &init(r#"{"bad_callback": "arity"}"#)).unwrap();
        let err = e.generate(&[vec![1]], 2, true, &Collector::new(4)).unwrap_err().to_string();
        assert!(err.contains("TypeError: on_token(sample, step, token, finish) takes 4 integer arguments (3 given)"), "{err}");
        let mut e = PythonEngine::load("test", &init(r#"{"bad_callback": "late"}"#)).unwrap();
        e.generate(&[vec![1]], 2, true, &Collector::new(4)).unwrap();
        // The driver kept the callable and calls it after generate() returned: a Python error, no crash.
        let err = e.generate(&[vec![1]], 2, true, &Collector::new(4)).unwrap_err().to_string();
        assert!(err.contains("RuntimeError: on_token called outside generate()"), "{err}");
    }

    #[test]
    fn missing_driver_names_the_module() {
        if python_or_skip().is_none() {
            return;
        }
        let e = PythonEngine::load("nosuch", &init("{}")).err().unwrap().to_string();
        assert!(e.contains("ModuleNotFoundError: no driver module `tpprof_driver_nosuch`"), "{e}");
        assert!(e.contains("sys.path") && !e.contains('\n'), "{e}");
        let e = PythonEngine::load("/nonexistent/drv.py", &init("{}")).err().unwrap().to_string();
        assert!(e.contains("FileNotFoundError: driver file /nonexistent/drv.py does not exist"), "{e}");
        let e = PythonEngine::load("test", &init("[1]")).err().unwrap().to_string();
        assert!(e.contains("must be a JSON object"), "{e}");
    }

    #[test]
    fn info_topology_memory_round_trip() {
        if python_or_skip().is_none() {
            return;
        }
        let devices = [3, 5];
        let ip = InitParams { rank: 1, world_size: 2, local_rank: 1, local_world_size: 2, devices: &devices, options_json: r#"{"topology": "one_process", "host_bytes": 4096, "max_context": 777}"#, rendezvous: b"node1:12345" };
        let e = PythonEngine::load("test", &ip).unwrap();
        let info = e.info();
        assert_eq!(info.name, "python-test");
        assert_eq!(info.kind, "python");
        assert_eq!(info.details["init"]["rank"], 1);
        assert_eq!(info.details["init"]["devices"], serde_json::json!([3, 5]));
        assert_eq!(info.details["init"]["rendezvous"], "node1:12345");
        assert_eq!(info.details["init"]["options"]["host_bytes"], 4096);
        assert_eq!(e.topology(), Topology::OneProcess);
        assert_eq!(e.max_context(), Some(777));
        let m = e.memory().unwrap();
        assert_eq!(m.host_bytes, Some(4096));
        assert_eq!(m.weights_bytes, None);
        let e2 = PythonEngine::load("test", &init("{}")).unwrap();
        assert_eq!(e2.topology(), Topology::AllRanks);
    }

    #[test]
    fn a_driver_file_by_path_and_two_engines_share_one_interpreter() {
        if python_or_skip().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("my_drv.py");
        std::fs::write(&file, "import sys\nclass Driver:\n    def __init__(self, init):\n        self.n = id(sys)\n    def info(self):\n        return {'name': 'mine', 'version': '2', 'sys_id': self.n}\n    def generate(self, prompts, n, exact, on_token):\n        for s in range(len(prompts)):\n            on_token(s, 0, 7, 1)\n").unwrap();
        let mut a = PythonEngine::load(file.to_str().unwrap(), &init("{}")).unwrap();
        let b = PythonEngine::load("test", &init("{}")).unwrap();
        let c = PythonEngine::load(file.to_str().unwrap(), &init("{}")).unwrap();
        assert_eq!(a.info().name, "mine");
        assert_eq!(a.info().details["sys_id"], c.info().details["sys_id"]);
        assert_eq!(a.libpython(), b.libpython());
        assert_eq!(driver_label(file.to_str().unwrap()), "python-my_drv");
        assert_eq!(driver_label("hf"), "python-hf");
        let sink = Collector::new(4);
        a.generate(&[vec![1], vec![2]], 1, true, &sink).unwrap();
        assert_eq!(sink.into_events().0.len(), 2);
        // Many threads using the engines (each takes the GIL) do not deadlock.
        drop(b);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut e = PythonEngine::load("test", &init("{}")).unwrap();
                    let sink = Collector::new(64);
                    e.generate(&[vec![1], vec![2]], 16, true, &sink).unwrap();
                    assert_eq!(sink.into_events().0.len(), 32);
                });
            }
        });
    }

    #[test]
    fn a_venv_interpreter_brings_its_site_packages() {
        if python_or_skip().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv");
        let ok = std::process::Command::new("python3").args(["-m", "venv", "--without-pip"]).arg(&venv).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            println!("skipped: python3 -m venv failed");
            return;
        }
        let py = venv.join("bin/python3");
        let site = probe_python(Some(&py)).unwrap().site_packages.into_iter().find(|p| p.starts_with(venv.to_str().unwrap())).unwrap();
        std::fs::write(Path::new(&site).join("tpprof_venv_only_pkg.py"), "MAGIC = 42\n").unwrap();
        let file = dir.path().join("venv_drv.py");
        std::fs::write(&file, "import sys\nimport tpprof_venv_only_pkg as p\nclass Driver:\n    def __init__(self, init):\n        pass\n    def info(self):\n        return {'name': 'venv', 'magic': p.MAGIC, 'exe': sys.executable}\n").unwrap();
        let opts = serde_json::json!({"python": py}).to_string();
        let e = PythonEngine::load(file.to_str().unwrap(), &init(&opts)).unwrap();
        assert_eq!(e.info().details["magic"], 42);
        assert_eq!(e.info().details["exe"], py.to_str().unwrap());
    }

    #[test]
    fn rendezvous_is_host_and_port() {
        let r = String::from_utf8(python_rendezvous().unwrap()).unwrap();
        let (host, port) = r.rsplit_once(':').unwrap();
        assert!(!host.is_empty() && port.parse::<u16>().unwrap() > 0, "{r}");
    }
}
