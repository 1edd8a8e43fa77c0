//! `PythonEngine`: a driver's `Driver` instance behind the `Engine` trait. Every method takes the
//! GIL and goes through the runtime's helpers; generate() hands the driver the native `on_token`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};

use super::capi::Obj;
use super::runtime::{free_sink_slot, Gil, Owned, Runtime, SinkSlot, CAPSULE_NAME};
use super::{driver_label, drivers_dir, PyFailure, PythonError};
use crate::engine::adapter::InitParams;
use crate::engine::{Engine, EngineError, EngineInfo, EngineMemory, TokenCallback, Topology};

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
            Some(_) => {
                return Err(PythonError::BadOptions("\"python\" must be the path of a Python interpreter".into()))
            }
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
        let py_err =
            |call: &str, what: PyFailure| PythonError::Python { driver: label.clone(), call: call.into(), what };
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
            Some(other) => {
                return Err(
                    engine.bad_return("topology()", format!("{other}: it must be \"all_ranks\" or \"one_process\""))
                )
            }
        };
        engine.path = {
            let _gil = Gil::acquire(&rt.api);
            let module = rt
                .attr(engine.driver, c"__class__")
                .and_then(|c| rt.attr(c.ptr, c"__module__"))
                .and_then(|m| rt.text(m.ptr));
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
            rt.text(r.ptr).map(Some).ok_or_else(|| PyFailure("call_json returned a non-str".into()))
        })();
        let text =
            r.map_err(|what| PythonError::Python { driver: self.label.clone(), call: format!("{method}()"), what })?;
        match text {
            None => Ok(None),
            Some(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| self.bad_return(&format!("{method}()"), format!("JSON tpprof cannot read ({e})"))),
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
            let args = vec![
                rt.share(self.driver),
                rt.string("prepare")?,
                rt.prompts(prompts)?,
                rt.long(max_new_tokens as i64)?,
            ];
            rt.bridge_call(c"call_opt", args).map(drop)
        })();
        r.map_err(|what| PythonError::Python { driver: self.label.clone(), call: "prepare()".into(), what }.into())
    }

    fn generate(
        &mut self,
        prompts: &[Vec<i32>],
        max_new_tokens: u32,
        exact_length: bool,
        sink: &dyn TokenCallback,
    ) -> Result<(), EngineError> {
        let rt = self.rt;
        let api = &rt.api;
        let _gil = Gil::acquire(api);
        let slot = Box::into_raw(Box::new(SinkSlot { sink: AtomicPtr::new(crate::engine::callback_ptr(&sink)) }));
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
                Some(x) => {
                    x.as_u64().or_else(|| x.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)).map(Some).ok_or_else(
                        || self.bad_return("memory()", format!("{k} = {x}: byte counts must be non-negative numbers")),
                    )
                }
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
    use crate::engine::python::probe::{probe_python, python_or_skip};
    use crate::engine::testing::Collector;
    use crate::engine::FinishReason;

    fn init<'a>(opts: &'a str) -> InitParams<'a> {
        InitParams {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            devices: &[],
            options_json: opts,
            rendezvous: b"127.0.0.1:29500",
        }
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
        assert!(
            err.starts_with("python driver `test` generate() raised RuntimeError: injected failure at step 3"),
            "{err}"
        );
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
        let err =
            PythonEngine::load("test", &init(r#"{"import": ["no_such_module_tpprof"]}"#)).err().unwrap().to_string();
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
        assert!(
            err.contains("TypeError: on_token(sample, step, token, finish) takes 4 integer arguments (3 given)"),
            "{err}"
        );
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
        let ip = InitParams {
            rank: 1,
            world_size: 2,
            local_rank: 1,
            local_world_size: 2,
            devices: &devices,
            options_json: r#"{"topology": "one_process", "host_bytes": 4096, "max_context": 777}"#,
            rendezvous: b"node1:12345",
        };
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
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv", "--without-pip"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            println!("skipped: python3 -m venv failed");
            return;
        }
        let py = venv.join("bin/python3");
        let site = probe_python(Some(&py))
            .unwrap()
            .site_packages
            .into_iter()
            .find(|p| p.starts_with(venv.to_str().unwrap()))
            .unwrap();
        std::fs::write(Path::new(&site).join("tpprof_venv_only_pkg.py"), "MAGIC = 42\n").unwrap();
        let file = dir.path().join("venv_drv.py");
        std::fs::write(&file, "import sys\nimport tpprof_venv_only_pkg as p\nclass Driver:\n    def __init__(self, init):\n        pass\n    def info(self):\n        return {'name': 'venv', 'magic': p.MAGIC, 'exe': sys.executable}\n").unwrap();
        let opts = serde_json::json!({"python": py}).to_string();
        let e = PythonEngine::load(file.to_str().unwrap(), &init(&opts)).unwrap();
        assert_eq!(e.info().details["magic"], 42);
        assert_eq!(e.info().details["exe"], py.to_str().unwrap());
    }
}
