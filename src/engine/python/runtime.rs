//! The embedded interpreter, one per process (`Runtime`): start-up, the bridge module, the GIL
//! guard and owned references, the object helpers, and the native `on_token` callback (its
//! trampoline and the capsule that carries the sink slot).

use std::ffi::{c_int, c_long, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, OnceLock};

use super::capi::{Api, Obj, PyMethodDef, METH_VARARGS, PY_FILE_INPUT};
use super::probe::{find_libpython, libpython_of, probe_python, PythonProbe};
use super::{one_line, PyFailure, PythonError, LIBPYTHON_ENV};

/// Longest Python error message kept (one line).
const MAX_WHAT: usize = 1500;

/// The embedded interpreter: one per process.
pub(super) struct Runtime {
    pub(super) api: Api,
    pub(super) libpython: PathBuf,
    /// The bridge module (BRIDGE below, from bridge.py), owned for ever.
    bridge: Obj,
    /// The on_token method definition, leaked: CPython keeps pointing at it.
    pub(super) on_token_def: *mut PyMethodDef,
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
const BRIDGE: &str = include_str!("bridge.py");

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
pub(super) const CAPSULE_NAME: &CStr = c"tpprof.on_token";

/// Where the callback finds the sink: set for the duration of one generate() call, null outside it
/// (a driver that keeps the callable and calls it later gets a RuntimeError, not a dangling sink).
pub(super) struct SinkSlot {
    /// A `callback_ptr`: points at generate()'s `&dyn TokenCallback`.
    pub(super) sink: AtomicPtr<c_void>,
}

/// Holds the GIL (PyGILState_Ensure) until dropped.
pub(super) struct Gil<'a> {
    api: &'a Api,
    state: c_int,
}

impl<'a> Gil<'a> {
    pub(super) fn acquire(api: &'a Api) -> Gil<'a> {
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
pub(super) struct Owned<'a> {
    pub(super) api: &'a Api,
    pub(super) ptr: Obj,
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        // SAFETY: `ptr` is a strong reference this guard owns; the GIL is held (see Owned).
        unsafe { (self.api.decref)(self.ptr) };
    }
}

impl<'a> Owned<'a> {
    /// Gives the reference away (to a function that steals it).
    pub(super) fn into_raw(self) -> Obj {
        let p = self.ptr;
        std::mem::forget(self);
        p
    }
}

impl Runtime {
    /// The runtime, started on first use with the given libpython and probe.
    pub(super) fn get(libpython: Option<&Path>, python: Option<&Path>) -> Result<&'static Runtime, PythonError> {
        let mut start = START.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = RUNTIME.get() {
            // Asked for a specific interpreter: it must be the one already embedded.
            if python.is_some() || libpython.is_some() {
                let wanted = match libpython {
                    Some(p) => p.to_path_buf(),
                    None => find_libpython(python)?,
                };
                let same =
                    |a: &Path, b: &Path| a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(a, b)| a == b);
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
                    rt.setup(&probe).map_err(|e| {
                        PythonError::Interpreter(format!(
                            "the embedded Python could not take the paths of {}: {e}",
                            probe.executable
                        ))
                    })?;
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
            tracing::warn!(
                "python: {} embedded without an interpreter's sys.path fix-ups (no matching python3 found)",
                lib.display()
            );
        }
        let mut api = Api::load(&lib)?;
        // SAFETY: plain query, allowed before initialisation.
        let already = unsafe { (api.is_initialized)() } != 0;
        if already {
            let e =
                "libpython was already initialised in this process by someone else: tpprof cannot embed it".to_string();
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
    fn start_bridge(&self, probe: Option<&PythonProbe>) -> Result<Obj, PyFailure> {
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
    fn setup(&self, probe: &PythonProbe) -> Result<(), PyFailure> {
        let arg = self.string(&setup_json(Some(probe)).to_string())?;
        self.bridge_call(c"setup", vec![arg]).map(drop)
    }

    // --- object helpers: all require the GIL (callers hold a `Gil` or are start-up) -----------

    pub(super) fn own(&self, ptr: Obj) -> Result<Owned<'_>, PyFailure> {
        if ptr.is_null() {
            Err(self.fetch_error())
        } else {
            Ok(Owned { api: &self.api, ptr })
        }
    }

    pub(super) fn string(&self, s: &str) -> Result<Owned<'_>, PyFailure> {
        let c = CString::new(s).map_err(|_| PyFailure("a string with a NUL byte".into()))?;
        // SAFETY: GIL held; `c` is NUL-terminated UTF-8 and outlives the call.
        self.own(unsafe { (self.api.unicode_from_string)(c.as_ptr()) })
    }

    pub(super) fn long(&self, v: i64) -> Result<Owned<'_>, PyFailure> {
        // SAFETY: GIL held.
        self.own(unsafe { (self.api.long_from_long)(v as c_long) })
    }

    pub(super) fn boolean(&self, v: bool) -> Result<Owned<'_>, PyFailure> {
        // SAFETY: GIL held.
        self.own(unsafe { (self.api.bool_from_long)(v as c_long) })
    }

    /// A borrowed reference made owned (incref).
    pub(super) fn share(&self, ptr: Obj) -> Owned<'_> {
        // SAFETY: GIL held; `ptr` is a live object the caller holds a reference to.
        unsafe { (self.api.incref)(ptr) };
        Owned { api: &self.api, ptr }
    }

    pub(super) fn tuple(&self, items: Vec<Owned<'_>>) -> Result<Owned<'_>, PyFailure> {
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
    pub(super) fn prompts(&self, prompts: &[Vec<i32>]) -> Result<Owned<'_>, PyFailure> {
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
    fn call_method(&self, obj: Obj, name: &CStr, args: Vec<Owned<'_>>) -> Result<Owned<'_>, PyFailure> {
        // SAFETY: GIL held; `obj` is live; `name` NUL-terminated.
        let f = self.own(unsafe { (self.api.getattr)(obj, name.as_ptr()) })?;
        let args = self.tuple(args)?;
        // SAFETY: GIL held; `f` callable (else CPython raises TypeError), `args` a tuple.
        self.own(unsafe { (self.api.call_object)(f.ptr, args.ptr) })
    }

    /// `bridge.name(*args)`.
    pub(super) fn bridge_call(&self, name: &CStr, args: Vec<Owned<'_>>) -> Result<Owned<'_>, PyFailure> {
        self.call_method(self.bridge, name, args)
    }

    pub(super) fn is_none(&self, o: &Owned<'_>) -> bool {
        o.ptr == self.api.none
    }

    /// A `str` object's text.
    pub(super) fn text(&self, o: Obj) -> Option<String> {
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
    pub(super) fn attr(&self, o: Obj, name: &CStr) -> Option<Owned<'_>> {
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
    fn fetch_error(&self) -> PyFailure {
        let api = &self.api;
        let (mut t, mut v, mut tb): (Obj, Obj, Obj) =
            (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: GIL held; the three out-pointers are valid; we own the returned references.
        unsafe { (api.err_fetch)(&mut t, &mut v, &mut tb) };
        if t.is_null() {
            return PyFailure("an error without a Python exception".into());
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
        PyFailure(one_line(&s, MAX_WHAT))
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
pub(super) unsafe extern "C" fn free_sink_slot(capsule: Obj) {
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
        rt.raise(
            api.exc_type_error,
            &format!("on_token(sample, step, token, finish) takes 4 integer arguments ({n} given)"),
        );
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
            rt.raise(
                api.exc_type_error,
                &format!("on_token(sample, step, token, finish): `{}` must be an int", names[i]),
            );
            return None;
        }
        #[allow(clippy::useless_conversion)] // c_long is i32 on some targets
        {
            *out = i64::from(x);
        }
    }
    let [sample, step, token, finish] = v;
    if !(0..=u32::MAX as i64).contains(&sample)
        || !(0..=u32::MAX as i64).contains(&step)
        || !(i32::MIN as i64..=i32::MAX as i64).contains(&token)
        || !(0..=4).contains(&finish)
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
        rt.raise(
            api.exc_runtime_error,
            "on_token called outside generate(): tpprof only records tokens while generate() runs",
        );
        return None;
    }
    // SAFETY: non-null only during PythonEngine::generate, which holds the callback (and the
    // reference the pointer addresses) and clears the slot (with the GIL, so never during this call)
    // before returning. on_token is thread-safe.
    unsafe { crate::engine::callback_from(sink) }.on_token(sample as u32, step as u32, token as i32, finish as i32);
    Some(())
}
