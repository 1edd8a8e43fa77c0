//! `tpprof doctor`: what each rank would run on, before a long job — the MPI library and launcher,
//! ranks, hosts and local ranks, CPU binding, the GPUs each rank sees and the one it would bind,
//! driver and CUDA versions, where the CUDA libraries the cuda engine and `--cupti` load were found
//! and their versions, libpython for the Python drivers, and an adapter's ABI. Every rank looks for
//! itself; rank 0 gathers and prints one table and the checks, each failure with its fix.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cluster::{Json, World};
use crate::observe::gpu::{GpuInfo, HostGpus};

/// What `tpprof doctor` was asked to look at besides the machine.
#[derive(Debug, Clone, Default)]
pub struct DoctorInput {
    /// An adapter (`--engine PATH.so`) whose symbols and ABI version to check.
    pub adapter: Option<PathBuf>,
    /// The Python interpreter the Python drivers would use (default: python3 on PATH).
    pub python: Option<PathBuf>,
    /// `--devices` as `tpprof run` would get it.
    pub devices: Option<Vec<i32>>,
    pub json: bool,
}

/// One library as the loader finds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Library {
    /// What it is for ("NCCL", "cuBLAS", ...).
    pub what: String,
    /// The file name that loaded (the first of the names tpprof tries), if any.
    pub name: Option<String>,
    /// Where the loader found it (from /proc/self/maps).
    pub path: Option<String>,
    pub version: Option<String>,
    /// Why it is not usable.
    pub problem: Option<String>,
}

/// One rank's view of its machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankDoctor {
    pub rank: i32,
    pub host: String,
    pub local_rank: i32,
    pub local_size: i32,
    pub pid: u32,
    /// CPUs this process may run on (sched_getaffinity), as ranges: "0-15,32-47".
    pub cpus: String,
    pub cpu_count: usize,
    pub tpprof_commit: String,
    /// The GPUs this rank sees, in CUDA order (CUDA_VISIBLE_DEVICES applied).
    pub gpus: Vec<GpuInfo>,
    pub no_gpu_reason: Option<String>,
    pub driver_version: Option<String>,
    pub cuda_driver_version: Option<String>,
    pub cuda_visible_devices: Option<String>,
    /// The GPU `tpprof run` would bind on this rank, or why it could not.
    pub bound_gpu: Option<GpuInfo>,
    pub bind_problem: Option<String>,
    pub libraries: Vec<Library>,
    pub python: Library,
    pub adapter: Option<Library>,
}

/// A finding: ok, a warning (something some engines need is missing) or a failure (a run would fail).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub level: Level,
    pub what: String,
    /// How to fix it (failures and warnings).
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// What rank 0 prints with `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoctorReport {
    pub mpi_library: String,
    pub launcher: String,
    pub world_size: i32,
    pub hosts: Vec<String>,
    pub ranks: Vec<RankDoctor>,
    pub checks: Vec<Check>,
}

impl DoctorReport {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.level == Level::Fail)
    }
}

/// Which launcher started this process, from the variables each one sets.
fn launcher() -> String {
    let has = |v: &str| std::env::var_os(v).is_some();
    if has("SLURM_STEP_ID") && has("SLURM_PROCID") {
        "Slurm (srun)".into()
    } else if has("OMPI_COMM_WORLD_SIZE") {
        "Open MPI (mpirun / prterun)".into()
    } else if has("PMI_RANK") || has("PMI_SIZE") {
        "MPICH Hydra (mpiexec)".into()
    } else {
        "none: a single process (start ranks with mpirun -n N)".into()
    }
}

/// This process's CPU affinity as sorted CPU ids.
fn affinity() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads the set sched_getaffinity filled, for ids below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// "0-3,8,10-11"
pub fn ranges(ids: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { ids[i].to_string() } else { format!("{}-{}", ids[i], ids[j]) });
        i = j + 1;
    }
    parts.join(",")
}

/// The file a loaded library came from, from this process's memory map.
fn mapped_path(name: &str) -> Option<String> {
    let stem = name.split(".so").next().unwrap_or(name);
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&format!("{stem}.so")) || f.starts_with(&format!("{stem}-")))
        })
        .map(str::to_string)
}

/// A version number read from the library itself.
type Versioner = fn(&libloading::Library) -> Option<String>;

fn call_int(lib: &libloading::Library, symbol: &[u8]) -> Option<i32> {
    // SAFETY: every symbol passed here has the C signature `int f(int *)` (cuDriverGetVersion,
    // ncclGetVersion; cuptiGetVersion takes a uint32_t *, the same layout); the library stays
    // loaded for the call.
    unsafe {
        let f: libloading::Symbol<unsafe extern "C" fn(*mut i32) -> i32> = lib.get(symbol).ok()?;
        let mut v = 0i32;
        (f(&mut v) == 0).then_some(v)
    }
}

fn cuda_version(lib: &libloading::Library) -> Option<String> {
    call_int(lib, b"cuDriverGetVersion\0").map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10))
}

fn nccl_version(lib: &libloading::Library) -> Option<String> {
    // NCCL ≥ 2.9: major × 10000 + minor × 100 + patch.
    call_int(lib, b"ncclGetVersion\0").map(|v| format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100))
}

fn cupti_version(lib: &libloading::Library) -> Option<String> {
    call_int(lib, b"cuptiGetVersion\0").map(|v| format!("API {v}"))
}

fn nvrtc_version(lib: &libloading::Library) -> Option<String> {
    // SAFETY: nvrtcResult nvrtcVersion(int *major, int *minor).
    unsafe {
        let f: libloading::Symbol<unsafe extern "C" fn(*mut i32, *mut i32) -> i32> = lib.get(b"nvrtcVersion\0").ok()?;
        let (mut a, mut b) = (0, 0);
        (f(&mut a, &mut b) == 0).then(|| format!("{a}.{b}"))
    }
}

fn cublas_version(lib: &libloading::Library) -> Option<String> {
    // SAFETY: cublasStatus_t cublasGetProperty(libraryPropertyType type, int *value); MAJOR_VERSION
    // = 0, MINOR_VERSION = 1, PATCH_LEVEL = 2.
    unsafe {
        let f: libloading::Symbol<unsafe extern "C" fn(i32, *mut i32) -> i32> = lib.get(b"cublasGetProperty\0").ok()?;
        let mut v = [0i32; 3];
        for (k, slot) in v.iter_mut().enumerate() {
            if f(k as i32, slot) != 0 {
                return None;
            }
        }
        Some(format!("{}.{}.{}", v[0], v[1], v[2]))
    }
}

/// The names the cuda engine's loader (cudarc) tries for a library, in its order.
#[cfg(feature = "cuda")]
fn candidates(lib: &str) -> Vec<String> {
    cudarc::get_lib_name_candidates(lib)
}

#[cfg(not(feature = "cuda"))]
fn candidates(_lib: &str) -> Vec<String> {
    Vec::new()
}

/// Loads the first candidate that loads (as the engine would) and reads its version.
fn find(what: &str, lib: &str, version: Versioner, fix: &str) -> Library {
    let names = candidates(lib);
    if names.is_empty() {
        return Library {
            what: what.into(),
            name: None,
            path: None,
            version: None,
            problem: Some("this tpprof was built without the cuda feature".into()),
        };
    }
    for name in &names {
        // SAFETY: loading a CUDA library runs its initialisers, as the engine's own load would.
        if let Ok(l) = unsafe { libloading::Library::new(name) } {
            let v = version(&l);
            let path = mapped_path(name);
            // Kept loaded: a CUDA library's unload at exit can race its own threads.
            std::mem::forget(l);
            return Library { what: what.into(), name: Some(name.clone()), path, version: v, problem: None };
        }
    }
    Library {
        what: what.into(),
        name: None,
        path: None,
        version: None,
        problem: Some(format!(
            "none of {} found by the loader: {fix}",
            names.iter().filter(|n| n.contains(".so")).take(3).cloned().collect::<Vec<_>>().join(", ")
        )),
    }
}

/// This rank, as it would start `tpprof run`.
pub fn look(world: &World, input: &DoctorInput) -> RankDoctor {
    let cpus = affinity();
    let host_gpus = HostGpus::probe();
    let (gpus, no_gpu_reason, driver_version, cuda_driver_version) = match &host_gpus {
        HostGpus::Present { gpus, driver_version, cuda_driver_version } => {
            (gpus.clone(), None, Some(driver_version.clone()), Some(cuda_driver_version.clone()))
        }
        HostGpus::Absent { reason } => (Vec::new(), Some(reason.clone()), None, None),
    };
    let (bound_gpu, bind_problem) = match host_gpus.bind(world.local_rank, input.devices.as_deref()) {
        Ok(g) => (g, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let path_fix = "install it or put its directory on LD_LIBRARY_PATH";
    let libraries = vec![
        find("CUDA driver", "cuda", cuda_version, "install the NVIDIA driver (libcuda.so.1)"),
        find("NVRTC (cuda engine kernels)", "nvrtc", nvrtc_version, path_fix),
        find("cuBLAS (cuda engine GEMMs)", "cublas", cublas_version, path_fix),
        find(
            "NCCL (cuda engine TP > 1)",
            "nccl",
            nccl_version,
            "the engine loads libnccl.so: link it to libnccl.so.2 in a directory on LD_LIBRARY_PATH",
        ),
        find("CUPTI (--cupti)", "cupti", cupti_version, path_fix),
    ];
    let python = match crate::engine::python::find_libpython(input.python.as_deref()) {
        Ok(p) => Library {
            what: "libpython (python:DRIVER engines)".into(),
            name: p.file_name().map(|f| f.to_string_lossy().into_owned()),
            path: Some(p.display().to_string()),
            version: crate::engine::python::probe_python(input.python.as_deref()).ok().map(|p| p.version),
            problem: None,
        },
        Err(e) => Library {
            what: "libpython (python:DRIVER engines)".into(),
            name: None,
            path: None,
            version: None,
            problem: Some(e.to_string()),
        },
    };
    let adapter = input.adapter.as_ref().map(|path| {
        let what = format!("adapter {}", path.display());
        match crate::engine::adapter::probe(path) {
            Ok(info) => Library {
                what,
                name: info.get("name").and_then(|v| v.as_str()).map(str::to_string),
                path: Some(path.display().to_string()),
                version: Some(format!("ABI {}", crate::engine::adapter::ABI_VERSION)),
                problem: None,
            },
            Err(e) => Library {
                what,
                name: None,
                path: Some(path.display().to_string()),
                version: None,
                problem: Some(e.to_string()),
            },
        }
    });
    RankDoctor {
        rank: world.rank,
        host: world.host.clone(),
        local_rank: world.local_rank,
        local_size: world.local_size,
        pid: std::process::id(),
        cpus: ranges(&cpus),
        cpu_count: cpus.len(),
        tpprof_commit: env!("TPPROF_GIT_COMMIT").into(),
        gpus,
        no_gpu_reason,
        driver_version,
        cuda_driver_version,
        cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        bound_gpu,
        bind_problem,
        libraries,
        python,
        adapter,
    }
}

/// The checks over every rank's view.
pub fn checks(ranks: &[RankDoctor], world_size: i32) -> Vec<Check> {
    let mut out = Vec::new();
    let mut push =
        |level, what: String, fix: Option<&str>| out.push(Check { level, what, fix: fix.map(str::to_string) });
    let list = |rs: &[i32]| rs.iter().map(i32::to_string).collect::<Vec<_>>().join(", ");
    if ranks.len() as i32 != world_size {
        push(
            Level::Fail,
            format!("only {} of {world_size} ranks answered", ranks.len()),
            Some("check the missing ranks' hosts (MPI, the tpprof binary's path)"),
        );
    }
    // The same build everywhere.
    let mut builds: Vec<&str> = ranks.iter().map(|r| r.tpprof_commit.as_str()).collect();
    builds.sort();
    builds.dedup();
    if builds.len() > 1 {
        push(
            Level::Fail,
            format!("ranks run different tpprof builds: {}", builds.join(", ")),
            Some("install one build on every host"),
        );
    } else {
        push(Level::Ok, format!("every rank runs tpprof build {}", builds.first().copied().unwrap_or("?")), None);
    }
    // GPUs: binding and duplicates.
    let gpu_ranks: Vec<&RankDoctor> = ranks.iter().filter(|r| r.bound_gpu.is_some()).collect();
    for r in ranks.iter().filter(|r| r.bind_problem.is_some()) {
        push(
            Level::Fail,
            format!("rank {} cannot bind a GPU: {}", r.rank, r.bind_problem.as_deref().unwrap_or("")),
            None,
        );
    }
    let mut dup = false;
    for (i, a) in gpu_ranks.iter().enumerate() {
        for b in &gpu_ranks[i + 1..] {
            let (ga, gb) = (a.bound_gpu.as_ref().unwrap(), b.bound_gpu.as_ref().unwrap());
            if a.host == b.host && ga.uuid == gb.uuid {
                dup = true;
                push(
                    Level::Fail,
                    format!("ranks {} and {} on {} would share GPU {} ({})", a.rank, b.rank, a.host, ga.ordinal, ga.uuid),
                    Some("start at most one rank per GPU on each host, or give each local rank its own GPU with --devices"),
                );
            }
        }
    }
    if gpu_ranks.len() == ranks.len() && !ranks.is_empty() && !dup {
        push(
            Level::Ok,
            format!("every rank has its own GPU ({})", list(&gpu_ranks.iter().map(|r| r.rank).collect::<Vec<_>>())),
            None,
        );
    } else if gpu_ranks.is_empty() {
        let why = ranks.first().and_then(|r| r.no_gpu_reason.clone()).unwrap_or_else(|| "no GPU".into());
        push(
            Level::Warn,
            format!(
                "no rank has a GPU ({why}): the cuda engine and --cupti cannot run; cpu, mock and Python engines can"
            ),
            Some("run on the GPU hosts; check the NVIDIA driver and CUDA_VISIBLE_DEVICES"),
        );
    } else {
        let without: Vec<i32> = ranks.iter().filter(|r| r.bound_gpu.is_none()).map(|r| r.rank).collect();
        push(
            Level::Warn,
            format!("ranks {} have no GPU while others do: --engine auto refuses mixed ranks", list(&without)),
            Some("pass --engine explicitly, or start ranks only on GPU hosts"),
        );
    }
    // Libraries: missing on some ranks, or different versions across ranks.
    let n_libs = ranks.first().map(|r| r.libraries.len()).unwrap_or(0);
    let has_gpu = !gpu_ranks.is_empty();
    if !has_gpu {
        // Without a GPU the CUDA libraries are expected to be missing: one line says which.
        let missing: Vec<&str> = (0..n_libs)
            .filter(|&k| ranks.iter().any(|r| r.libraries[k].problem.is_some()))
            .map(|k| ranks[0].libraries[k].what.as_str())
            .collect();
        if !missing.is_empty() {
            push(Level::Warn, format!("not found (expected without a GPU): {}", missing.join("; ")), None);
        }
    }
    for k in (0..n_libs).filter(|_| has_gpu) {
        let what = &ranks[0].libraries[k].what;
        let missing: Vec<i32> =
            ranks.iter().filter(|r| r.libraries.get(k).is_none_or(|l| l.problem.is_some())).map(|r| r.rank).collect();
        let mut versions: Vec<String> = ranks.iter().filter_map(|r| r.libraries.get(k)?.version.clone()).collect();
        versions.sort();
        versions.dedup();
        if !missing.is_empty() {
            let problem = ranks
                .iter()
                .find(|r| missing.contains(&r.rank))
                .and_then(|r| r.libraries[k].problem.clone())
                .unwrap_or_default();
            let who = if missing.len() == ranks.len() {
                format!("all {} ranks", ranks.len())
            } else {
                format!("ranks {}", list(&missing))
            };
            push(Level::Fail, format!("{what}: missing on {who}: {problem}"), None);
        } else if versions.len() > 1 {
            push(
                Level::Warn,
                format!("{what}: different versions across ranks ({})", versions.join(", ")),
                Some("use one CUDA / NCCL installation on every host"),
            );
        } else {
            push(Level::Ok, format!("{what}: {}", versions.first().map(String::as_str).unwrap_or("found")), None);
        }
    }
    let no_python: Vec<i32> = ranks.iter().filter(|r| r.python.problem.is_some()).map(|r| r.rank).collect();
    match (no_python.is_empty(), ranks.first()) {
        (true, Some(r)) => push(
            Level::Ok,
            format!(
                "libpython {} ({})",
                r.python.version.as_deref().unwrap_or("?"),
                r.python.path.as_deref().unwrap_or("?")
            ),
            None,
        ),
        (false, Some(_)) => {
            let problem = ranks.iter().find_map(|r| r.python.problem.clone()).unwrap_or_default();
            push(
                Level::Warn,
                format!("python:DRIVER engines cannot start on ranks {}: {problem}", list(&no_python)),
                None,
            );
        }
        _ => {}
    }
    let mut adapter_problems: Vec<(String, Vec<i32>)> = Vec::new();
    for r in ranks {
        if let Some(p) = r.adapter.as_ref().and_then(|a| a.problem.clone()) {
            match adapter_problems.iter_mut().find(|(q, _)| *q == p) {
                Some((_, rs)) => rs.push(r.rank),
                None => adapter_problems.push((p, vec![r.rank])),
            }
        }
    }
    for (p, rs) in adapter_problems {
        let who = if rs.len() == ranks.len() && rs.len() > 1 {
            format!("all {} ranks", rs.len())
        } else if rs.len() == 1 {
            format!("rank {}", rs[0])
        } else {
            format!("ranks {}", list(&rs))
        };
        push(Level::Fail, format!("{who}: {p}"), None);
    }
    if let Some(a) = ranks.first().and_then(|r| r.adapter.as_ref()).filter(|a| a.problem.is_none()) {
        if ranks.iter().all(|r| r.adapter.as_ref().is_some_and(|a| a.problem.is_none())) {
            push(
                Level::Ok,
                format!(
                    "{}: engine `{}`, {}",
                    a.what,
                    a.name.as_deref().unwrap_or("?"),
                    a.version.as_deref().unwrap_or("")
                ),
                None,
            );
        }
    }
    // CPU binding: ranks of one host pinned to overlapping CPU sets fight for cores.
    let mut overlap = Vec::new();
    for (i, a) in ranks.iter().enumerate() {
        for b in &ranks[i + 1..] {
            if a.host == b.host && a.cpus == b.cpus && a.cpu_count > 0 && a.cpu_count < 4 && ranks.len() > 1 {
                overlap.push((a.rank, b.rank));
            }
        }
    }
    if let Some((a, b)) = overlap.first() {
        push(
            Level::Warn,
            format!(
                "ranks {a} and {b} may run only on the same {} CPU(s): the host work of each engine competes",
                ranks[*a as usize].cpu_count.max(1)
            ),
            Some("mpirun --bind-to none, or --map-by with enough cores per rank"),
        );
    }
    out
}

/// Every rank looks; rank 0 gathers and returns the report (None on the other ranks).
pub fn main(world: &World, input: &DoctorInput) -> Option<DoctorReport> {
    let mine = look(world, input);
    let all = world.gather(&Json(mine))?;
    let ranks: Vec<RankDoctor> = all.into_iter().filter_map(|r| r.ok().map(|Json(d)| d)).collect();
    let mut hosts: Vec<String> = ranks.iter().map(|r| r.host.clone()).collect();
    hosts.dedup();
    let checks = checks(&ranks, world.size);
    Some(DoctorReport {
        mpi_library: World::mpi_library_version(),
        launcher: launcher(),
        world_size: world.size,
        hosts,
        ranks,
        checks,
    })
}

/// The table and the checks, as rank 0 prints them.
pub fn render(r: &DoctorReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tpprof doctor: {} rank(s) on {} host(s); MPI: {}; launcher: {}",
        r.world_size,
        r.hosts.len(),
        r.mpi_library,
        r.launcher
    );
    let _ = writeln!(
        out,
        "  {:<5} {:<16} {:<7} {:<7} {:<12} {:<40} {}",
        "rank", "host", "local", "pid", "cpus", "GPU (bound)", "driver / CUDA"
    );
    for k in &r.ranks {
        let gpu = match (&k.bound_gpu, &k.bind_problem) {
            (Some(g), _) => format!("GPU{} {} ({} seen)", g.ordinal, g.name, k.gpus.len()),
            (None, Some(p)) => format!("none: {p}"),
            (None, None) => "none (see checks)".into(),
        };
        let drv = match (&k.driver_version, &k.cuda_driver_version) {
            (Some(d), Some(c)) => format!("{d} / {c}"),
            _ => "—".into(),
        };
        let host: String = k.host.chars().take(16).collect();
        let _ = writeln!(
            out,
            "  {:<5} {:<16} {:<7} {:<7} {:<12} {:<40} {drv}",
            k.rank,
            host,
            format!("{}/{}", k.local_rank, k.local_size),
            k.pid,
            k.cpus,
            gpu
        );
    }
    if let Some(k) = r.ranks.first() {
        let _ = writeln!(out, "libraries (rank {}):", k.rank);
        for l in k.libraries.iter().chain([&k.python]).chain(k.adapter.as_ref()) {
            let found = match (&l.problem, &l.path, &l.name) {
                (Some(p), _, _) => format!("not usable: {p}"),
                (None, Some(p), _) => p.clone(),
                (None, None, Some(n)) => n.clone(),
                (None, None, None) => "found".into(),
            };
            let _ = writeln!(out, "  {:<36} {:<14} {found}", l.what, l.version.as_deref().unwrap_or("—"));
        }
    }
    let _ = writeln!(out, "checks:");
    for c in &r.checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        let fix = c.fix.as_deref().filter(|_| c.level != Level::Ok).map(|f| format!(" — fix: {f}")).unwrap_or_default();
        let _ = writeln!(out, "  {tag}  {}{fix}", c.what);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ranges_are_compact() {
        assert_eq!(ranges(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(ranges(&[5]), "5");
        assert_eq!(ranges(&[]), "");
    }

    fn rank(r: i32, host: &str, gpu: Option<&str>) -> RankDoctor {
        let g = gpu.map(|u| GpuInfo { ordinal: 0, nvml_index: 0, uuid: u.into(), name: "H200".into(), total_bytes: 1 });
        let lib = |v: &str| Library {
            what: "NCCL (cuda engine TP > 1)".into(),
            name: Some("libnccl.so".into()),
            path: None,
            version: Some(v.into()),
            problem: None,
        };
        RankDoctor {
            rank: r,
            host: host.into(),
            local_rank: r,
            local_size: 2,
            pid: 1,
            cpus: format!("{}", r * 8),
            cpu_count: 8,
            tpprof_commit: "abc".into(),
            gpus: g.iter().cloned().collect(),
            no_gpu_reason: None,
            driver_version: None,
            cuda_driver_version: None,
            cuda_visible_devices: None,
            bound_gpu: g,
            bind_problem: None,
            libraries: vec![lib(if r == 0 { "2.28.3" } else { "2.28.9" })],
            python: Library {
                what: "libpython".into(),
                name: None,
                path: None,
                version: None,
                problem: Some("no libpython".into()),
            },
            adapter: None,
        }
    }

    #[test]
    fn checks_name_shared_gpus_builds_and_versions() {
        let mut rs = vec![rank(0, "a", Some("GPU-1")), rank(1, "a", Some("GPU-1"))];
        let c = checks(&rs, 2);
        let fails: Vec<&str> = c.iter().filter(|c| c.level == Level::Fail).map(|c| c.what.as_str()).collect();
        assert_eq!(fails, vec!["ranks 0 and 1 on a would share GPU 0 (GPU-1)"]);
        assert!(
            c.iter()
                .any(|c| c.level == Level::Warn && c.what.contains("different versions across ranks (2.28.3, 2.28.9)")),
            "{c:?}"
        );
        // The same GPU uuid on two hosts is two GPUs.
        rs[1].host = "b".into();
        assert!(checks(&rs, 2).iter().all(|c| c.level != Level::Fail));
        rs[1].tpprof_commit = "def".into();
        assert!(checks(&rs, 2)
            .iter()
            .any(|c| c.level == Level::Fail && c.what == "ranks run different tpprof builds: abc, def"));
        // A rank that did not answer.
        assert!(checks(&rs[..1], 2).iter().any(|c| c.level == Level::Fail && c.what.starts_with("only 1 of 2")));
        // Without GPUs a missing CUDA library is a warning.
        let mut cpu = vec![rank(0, "a", None)];
        cpu[0].libraries[0].problem = Some("none found".into());
        let c = checks(&cpu, 1);
        assert!(c.iter().all(|c| c.level != Level::Fail), "{c:?}");
        assert!(c.iter().any(|c| c.level == Level::Warn && c.what.starts_with("no rank has a GPU")));
        assert!(
            c.iter()
                .any(|c| c.level == Level::Warn
                    && c.what == "not found (expected without a GPU): NCCL (cuda engine TP > 1)"),
            "{c:?}"
        );
        // With a GPU it is a failure.
        let mut gpu = vec![rank(0, "a", Some("GPU-1"))];
        gpu[0].libraries[0].problem = Some("none found".into());
        assert!(
            checks(&gpu, 1)
                .iter()
                .any(|c| c.level == Level::Fail
                    && c.what.starts_with("NCCL (cuda engine TP > 1): missing on all 1 ranks"))
        );
    }
}
