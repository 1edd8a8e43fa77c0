//! Build script: bindgen on the engine ABI header (the Rust side cannot drift from the C header), the
//! C mock adapter (plus two deliberately broken variants) and the C++ mock executor adapter (the
//! common adapter glue of ffi/adapters/common behind a fake asynchronous executor) that the tests load.

use std::env;
use std::path::{Path, PathBuf};

const HEADER: &str = "ffi/tpprof_engine.h";
const MOCK_SRC: &str = "ffi/adapters/mock/mock_adapter.c";
const GLUE_HDR: &str = "ffi/adapters/common/tpprof_adapter.hpp";
const MOCK_EXECUTOR_SRC: &str = "ffi/adapters/mock_executor/mock_executor.cpp";

fn main() {
    println!("cargo:rerun-if-changed={HEADER}");
    println!("cargo:rerun-if-changed={MOCK_SRC}");
    println!("cargo:rerun-if-changed={GLUE_HDR}");
    println!("cargo:rerun-if-changed={MOCK_EXECUTOR_SRC}");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    generate_bindings(&out);
    build_mock_adapters(&out);
    build_mock_executor_adapter(&out);
    embed_git_commit();
    export_exit_interposers(&out);
}

/// The binary defines `exit`, `_exit` and `_Exit` (src/main.rs) so that an engine ending the
/// process from inside is reported like a signal; they must be in its dynamic symbol table for a
/// dlopen()ed adapter (and the libraries it loads) to bind to them rather than to libc's. The
/// linker puts a symbol there on its own only when a shared library of the link uses it: said
/// here, with a dynamic list (GNU ld >= 2.21, lld, gold; `--export-dynamic-symbol` would need
/// binutils 2.35, newer than RHEL 8's).
fn export_exit_interposers(out: &Path) {
    let list = out.join("exit-interposers.list");
    std::fs::write(&list, "{\n  exit;\n  _exit;\n  _Exit;\n};\n").expect("write the dynamic list to OUT_DIR");
    println!("cargo:rustc-link-arg-bins=-Wl,--dynamic-list={}", list.display());
}

/// The commit the binary was built from, for the JSON's environment (results name their source).
fn embed_git_commit() {
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    // A commit moves the branch's ref file, not HEAD.
    if let Some(r) =
        std::fs::read_to_string(".git/HEAD").ok().and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_string()))
    {
        println!("cargo:rerun-if-changed=.git/{r}");
    }
    // Not `git describe --dirty`: it refreshes and rewrites .git/index, whose new mtime re-ran this
    // script at the next cargo call — every `cargo build` and `cargo test` (launch/quickstart.sh,
    // launch/test.sh) rebuilt the crate, ~25 s each time. `status --no-optional-locks` reads only.
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(hash) => match git(&["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{hash}-dirty"),
            _ => hash,
        },
        None => String::new(),
    };
    println!("cargo:rustc-env=TPPROF_GIT_COMMIT={commit}");
}

/// Runs bindgen on the ABI header into OUT_DIR/tpprof_engine_sys.rs.
fn generate_bindings(out: &Path) {
    let bindings = bindgen::Builder::default()
        .header(HEADER)
        .allowlist_function("tpprof_.*")
        .allowlist_type("tpprof_.*")
        .allowlist_var("TPPROF_.*")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .layout_tests(true)
        .generate();
    match bindings {
        Ok(b) => b.write_to_file(out.join("tpprof_engine_sys.rs")).expect("write bindings to OUT_DIR"),
        Err(e) => {
            eprintln!(
                "error: bindgen could not parse {HEADER}: {e}\n\
                 bindgen needs libclang: on Debian/Ubuntu `apt-get install libclang-dev`, or set \
                 LIBCLANG_PATH to the directory holding libclang.so"
            );
            std::process::exit(1);
        }
    }
}

/// Builds the mock adapter as a shared library, plus a wrong-ABI and a missing-symbol variant for the
/// loader's error tests. Their paths reach the crate as compile-time env vars.
fn build_mock_adapters(out: &Path) {
    let variants: [(&str, &str, &[&str]); 3] = [
        ("TPPROF_MOCK_ADAPTER", "libtpprof_mock.so", &[]),
        ("TPPROF_MOCK_ADAPTER_BAD_ABI", "libtpprof_mock_bad_abi.so", &["-DTPPROF_MOCK_BAD_ABI"]),
        ("TPPROF_MOCK_ADAPTER_NO_GENERATE", "libtpprof_mock_no_generate.so", &["-DTPPROF_MOCK_NO_GENERATE"]),
    ];
    let compiler = cc::Build::new().get_compiler();
    for (var, name, defines) in variants {
        let lib = out.join(name);
        let mut cmd = compiler.to_command();
        cmd.args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-Iffi"])
            .args(defines)
            .arg("-o")
            .arg(&lib)
            .arg(MOCK_SRC)
            .args(["-lpthread", "-ldl"]);
        let status = cmd.status();
        match status {
            Ok(s) if s.success() => println!("cargo:rustc-env={var}={}", lib.display()),
            Ok(s) => {
                eprintln!("error: compiling {MOCK_SRC} into {} failed ({s}); command: {cmd:?}", lib.display());
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("error: could not run the C compiler for {MOCK_SRC}: {e}; install gcc (apt-get install build-essential) or set CC");
                std::process::exit(1);
            }
        }
    }
}

/// Builds the C++ mock executor adapter (TPPROF_MOCK_EXECUTOR_ADAPTER): the same glue the TensorRT-LLM
/// and TurboMind adapters compile, so the tests cover it.
fn build_mock_executor_adapter(out: &Path) {
    let lib = out.join("libtpprof_mock_executor.so");
    let compiler = cc::Build::new().cpp(true).get_compiler();
    let mut cmd = compiler.to_command();
    cmd.args(["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-fvisibility=hidden"])
        .args(["-Iffi", "-Iffi/adapters/common", "-o"])
        .arg(&lib)
        .arg(MOCK_EXECUTOR_SRC)
        .arg("-lpthread");
    match cmd.status() {
        Ok(s) if s.success() => println!("cargo:rustc-env=TPPROF_MOCK_EXECUTOR_ADAPTER={}", lib.display()),
        Ok(s) => {
            eprintln!("error: compiling {MOCK_EXECUTOR_SRC} into {} failed ({s}); command: {cmd:?}", lib.display());
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: could not run the C++ compiler for {MOCK_EXECUTOR_SRC}: {e}; install g++ (apt-get install build-essential) or set CXX");
            std::process::exit(1);
        }
    }
}
