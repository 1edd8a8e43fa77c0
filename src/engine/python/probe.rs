//! Finding the interpreter and its shared libpython: the chosen interpreter (`python3` on PATH, or
//! the engine option `"python"`) is asked where it lives (`python -c PROBE`), and its libpython is
//! looked for where CPython installs it.

use std::path::{Path, PathBuf};

use super::{one_line, PythonError, LIBPYTHON_ENV};

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
        PythonError::Interpreter(format!(
            "{} did not describe itself ({e}): is it CPython 3.8 or newer?",
            exe.display()
        ))
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
    let elf = std::fs::File::open(p).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
        && magic == *b"\x7fELF";
    named && elf
}

/// The shared libpython of the probed interpreter.
pub(super) fn libpython_of(probe: &PythonProbe) -> Result<PathBuf, PythonError> {
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
    names.extend([
        format!("libpython{v}.so.1.0"),
        format!("libpython{v}.so"),
        format!("libpython{v}m.so.1.0"),
        format!("libpython{v}m.so"),
    ]);
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

/// None (and a "skipped" line) where this machine has no usable libpython.
#[cfg(test)]
pub(super) fn python_or_skip() -> Option<()> {
    match find_libpython(None) {
        Ok(_) => Some(()),
        Err(e) => {
            println!("skipped: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(
            e.contains("built without --enable-shared") && e.contains("TPPROF_LIBPYTHON=/path/libpython3.12.so"),
            "{e}"
        );
    }
}
