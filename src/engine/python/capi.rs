//! The CPython C API, resolved at run time: the opaque object, `PyMethodDef`, the constants tpprof
//! needs, and `Api`, every CPython function and object tpprof uses (each call with a SAFETY note).

use std::ffi::{c_char, c_int, c_long, c_void};
use std::path::Path;

use super::PythonError;

/// CPython's object, opaque: only ever handled by pointer.
#[repr(C)]
pub(super) struct PyObject {
    _p: [u8; 0],
}
pub(super) type Obj = *mut PyObject;
pub(super) type PyCFunction = unsafe extern "C" fn(Obj, Obj) -> Obj;
pub(super) type CapsuleDestructor = unsafe extern "C" fn(Obj);

/// `PyMethodDef` with its exact C layout.
#[repr(C)]
pub(super) struct PyMethodDef {
    pub(super) ml_name: *const c_char,
    pub(super) ml_meth: PyCFunction,
    pub(super) ml_flags: c_int,
    pub(super) ml_doc: *const c_char,
}
pub(super) const METH_VARARGS: c_int = 1;
/// `Py_file_input` for Py_CompileString.
pub(super) const PY_FILE_INPUT: c_int = 257;

/// Every CPython function and object tpprof uses, resolved once from libpython.
pub(super) struct Api {
    pub(super) is_initialized: unsafe extern "C" fn() -> c_int,
    pub(super) initialize_ex: unsafe extern "C" fn(c_int),
    pub(super) save_thread: unsafe extern "C" fn() -> *mut c_void,
    pub(super) gil_ensure: unsafe extern "C" fn() -> c_int,
    pub(super) gil_release: unsafe extern "C" fn(c_int),
    pub(super) incref: unsafe extern "C" fn(Obj),
    pub(super) decref: unsafe extern "C" fn(Obj),
    pub(super) compile_string: unsafe extern "C" fn(*const c_char, *const c_char, c_int) -> Obj,
    pub(super) exec_code_module: unsafe extern "C" fn(*const c_char, Obj) -> Obj,
    pub(super) getattr: unsafe extern "C" fn(Obj, *const c_char) -> Obj,
    pub(super) call_object: unsafe extern "C" fn(Obj, Obj) -> Obj,
    pub(super) tuple_new: unsafe extern "C" fn(isize) -> Obj,
    pub(super) tuple_set_item: unsafe extern "C" fn(Obj, isize, Obj) -> c_int,
    pub(super) tuple_get_item: unsafe extern "C" fn(Obj, isize) -> Obj,
    pub(super) tuple_size: unsafe extern "C" fn(Obj) -> isize,
    pub(super) long_from_long: unsafe extern "C" fn(c_long) -> Obj,
    pub(super) long_as_long: unsafe extern "C" fn(Obj) -> c_long,
    pub(super) list_new: unsafe extern "C" fn(isize) -> Obj,
    pub(super) list_set_item: unsafe extern "C" fn(Obj, isize, Obj) -> c_int,
    pub(super) bool_from_long: unsafe extern "C" fn(c_long) -> Obj,
    pub(super) unicode_from_string: unsafe extern "C" fn(*const c_char) -> Obj,
    pub(super) unicode_as_utf8: unsafe extern "C" fn(Obj) -> *const c_char,
    pub(super) err_occurred: unsafe extern "C" fn() -> Obj,
    pub(super) err_fetch: unsafe extern "C" fn(*mut Obj, *mut Obj, *mut Obj),
    pub(super) err_normalize: unsafe extern "C" fn(*mut Obj, *mut Obj, *mut Obj),
    pub(super) err_set_string: unsafe extern "C" fn(Obj, *const c_char),
    pub(super) err_clear: unsafe extern "C" fn(),
    pub(super) object_str: unsafe extern "C" fn(Obj) -> Obj,
    pub(super) capsule_new: unsafe extern "C" fn(*mut c_void, *const c_char, Option<CapsuleDestructor>) -> Obj,
    pub(super) capsule_get_pointer: unsafe extern "C" fn(Obj, *const c_char) -> *mut c_void,
    pub(super) cfunction_new_ex: unsafe extern "C" fn(*mut PyMethodDef, Obj, Obj) -> Obj,
    /// The exception types and None: values read from the exported data symbols.
    pub(super) exc_type_error: Obj,
    pub(super) exc_value_error: Obj,
    pub(super) exc_runtime_error: Obj,
    pub(super) none: Obj,
    // Never unloaded: the interpreter lives until the process ends.
    _lib: libloading::Library,
}

impl Api {
    pub(super) fn load(path: &Path) -> Result<Api, PythonError> {
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
    pub(super) fn read_data(&mut self) {
        for slot in [&mut self.exc_type_error, &mut self.exc_value_error, &mut self.exc_runtime_error] {
            // SAFETY: `*slot` is the address of an exported `PyObject *` variable (set by `load`),
            // valid for the life of the library, which is never unloaded.
            *slot = unsafe { *(*slot as *const Obj) };
        }
    }
}
