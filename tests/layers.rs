//! The house as drawn in ARCHITECTURE.md: layers only point down. Every `crate::X` / `tpprof::X`
//! reference in src/ is checked against the table below; a new upward import fails this test, and
//! so does a listed exception that no longer exists (remove it from the list: the house got better).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module and the modules it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    // The face: parses, turns clap types into plain typed values, prints, exits.
    ("main", &["cli", "cluster", "doctor", "engine", "report", "run", "verify"]),
    ("cli", &["doctor", "engine", "run", "verify"]),
    // The job and the other subcommands.
    ("run", &["clock", "cluster", "engine", "observe", "record", "report", "workload"]),
    ("verify", &["clock", "cluster", "engine", "observe", "record", "report", "workload"]),
    ("doctor", &["clock", "cluster", "engine", "observe"]),
    // The parts.
    ("report", &["clock", "engine", "observe", "record", "workload"]),
    ("observe", &["clock", "engine", "record"]),
    ("record", &["clock", "engine"]),
    ("engine", &["clock"]),
    ("workload", &["clock"]),
    ("cluster", &["clock"]),
    ("clock", &[]),
];

/// Upward imports that exist today, each to be removed by a later step of issue [4/7].
const KNOWN: &[(&str, &str, &str)] = &[];

fn module_of(rel: &str) -> String {
    rel.split('/').next().unwrap().trim_end_matches(".rs").to_string()
}

fn references(dir: &Path, root: &Path, out: &mut BTreeMap<(String, String), BTreeSet<String>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            references(&p, root, out);
            continue;
        }
        if p.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        let from = module_of(&rel);
        let text = std::fs::read_to_string(&p).unwrap();
        for prefix in ["crate::", "tpprof::"] {
            for (i, _) in text.match_indices(prefix) {
                let rest = &text[i + prefix.len()..];
                let to: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                // `tpprof::` also prefixes non-path text (the crate name in strings, e.g. tpprof::run
                // in a doc); only modules of this crate count.
                if !to.is_empty() && to != from && ALLOWED.iter().any(|(m, _)| *m == to) {
                    out.entry((from.clone(), to)).or_default().insert(rel.clone());
                }
            }
        }
    }
}

/// Every import against the table (known exceptions aside), and every known exception now gone.
fn violations(refs: &BTreeMap<(String, String), BTreeSet<String>>) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut bad = Vec::new();
    for ((from, to), files) in refs {
        let ok = allowed.get(from.as_str()).is_some_and(|a| a.contains(&to.as_str()));
        let known = KNOWN.iter().any(|(f, t, _)| f == from && t == to);
        if !ok && !known {
            bad.push(format!("{from} -> {to} (in {})", files.iter().cloned().collect::<Vec<_>>().join(", ")));
        }
        if !allowed.contains_key(from.as_str()) {
            bad.push(format!(
                "src/{from}: a module the layer table does not know: add it to ALLOWED and ARCHITECTURE.md"
            ));
        }
    }
    for (from, to, why) in KNOWN {
        if !refs.contains_key(&(from.to_string(), to.to_string())) {
            bad.push(format!("{from} -> {to} is gone ({why}): remove it from KNOWN"));
        }
    }
    bad
}

#[test]
fn layers_only_point_down() {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut refs = BTreeMap::new();
    references(src, src, &mut refs);
    assert!(refs.len() > 10, "the scan found too little: {refs:?}");
    let bad = violations(&refs);
    assert!(bad.is_empty(), "imports against ARCHITECTURE.md's layers:\n  {}", bad.join("\n  "));
}

#[test]
fn the_check_would_catch_an_upward_import() {
    // A made-up tree: report imports the CLI, cluster an engine; engine uses the clock (allowed).
    let tmp = tempfile::tempdir().unwrap();
    let files = [
        ("report/mod.rs", "use crate::cli::RunArgs;\n"),
        ("cluster/mod.rs", "fn f() { crate::engine::python::interpreter_loaded(); }\n"),
        ("engine/mod.rs", "use crate::clock::mono_ns;\n"),
    ];
    for (path, text) in files {
        let p = tmp.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let mut refs = BTreeMap::new();
    references(tmp.path(), tmp.path(), &mut refs);
    let bad = violations(&refs);
    assert!(bad.iter().any(|b| b.starts_with("report -> cli (in report/mod.rs)")), "{bad:?}");
    assert!(bad.iter().any(|b| b.starts_with("cluster -> engine (in cluster/mod.rs)")), "{bad:?}");
    assert!(!bad.iter().any(|b| b.starts_with("engine -> clock")), "{bad:?}");
}

/// Files outside the face that still return `Result<_, String>` (issue [4/7]: typed errors), each
/// to be struck when it is fixed.
const STRING_ERRORS_KNOWN: &[&str] = &[];

/// `Result<…, String>` in a line of code (not a comment): the error half is a bare String.
fn string_results(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            string_results(&p, root, out);
            continue;
        }
        if p.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        if rel == "main.rs" || rel == "cli.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
        if code
            .into_iter()
            .any(|l| l.match_indices("Result<").any(|(i, _)| result_errs_with_string(&l[i + "Result<".len()..])))
        {
            out.insert(rel);
        }
    }
}

/// After `Result<`: whether the type's second argument is `String` (angle brackets balanced).
fn result_errs_with_string(rest: &str) -> bool {
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            '>' if depth == 0 => return false,
            '>' => depth -= 1,
            ',' if depth == 0 => return rest[i + 1..].trim_start().starts_with("String>"),
            _ => {}
        }
    }
    false
}

#[test]
fn no_string_errors_outside_the_face() {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut found = BTreeSet::new();
    string_results(src, src, &mut found);
    let new: Vec<&String> = found.iter().filter(|f| !STRING_ERRORS_KNOWN.contains(&f.as_str())).collect();
    assert!(new.is_empty(), "Result<_, String> outside the face (give the error a type): {new:?}");
    let fixed: Vec<&&str> = STRING_ERRORS_KNOWN.iter().filter(|k| !found.contains(**k)).collect();
    assert!(fixed.is_empty(), "no longer return Result<_, String>: strike them from STRING_ERRORS_KNOWN: {fixed:?}");
}

#[test]
fn the_string_error_check_reads_types() {
    assert!(result_errs_with_string("Vec<u8>, String> {"));
    assert!(result_errs_with_string("(), String>"));
    assert!(result_errs_with_string("Option<(u64, u64)>, String>"));
    assert!(!result_errs_with_string("String, MyError>"));
    assert!(!result_errs_with_string("Vec<String>, E>"));
    assert!(!result_errs_with_string("T>"));
}

/// build.rs embeds the commit (and whether the tree is dirty) and re-runs when .git/index changes.
/// `git describe --dirty` refreshed and rewrote the index, so every cargo call re-ran the build
/// script and rebuilt the crate (launch/test.sh and launch/quickstart.sh rebuilt each other's
/// binary, ~25 s each). Every git command build.rs runs must leave the index alone; plain
/// `describe --dirty` does not (checked too, so this test shows the hazard with the git at hand).
#[test]
fn the_build_script_leaves_the_git_index_alone() {
    let build = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/build.rs")).unwrap();
    let calls: Vec<Vec<String>> = build
        .match_indices("git(&[")
        .map(|(i, m)| {
            let rest = &build[i + m.len()..];
            rest[..rest.find(']').unwrap()]
                .split(',')
                .map(|a| a.trim().trim_matches('"').to_string())
                .filter(|a| !a.is_empty())
                .collect()
        })
        .collect();
    assert!(calls.len() >= 2, "build.rs's git calls not found: {calls:?}");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("r");
    let git = |args: &[&str]| std::process::Command::new("git").args(args).current_dir(&repo).output().unwrap();
    std::fs::create_dir(&repo).unwrap();
    for a in [&["init", "-q"][..], &["config", "user.email", "t@t"], &["config", "user.name", "t"]] {
        assert!(git(a).status.success());
    }
    std::fs::write(repo.join("f"), "x").unwrap();
    assert!(git(&["add", "f"]).status.success() && git(&["commit", "-qm", "c"]).status.success());
    let index_mtime = || std::fs::metadata(repo.join(".git/index")).unwrap().modified().unwrap();
    // A tracked file whose stat no longer matches the index (an editor's save, a checkout).
    let stale = || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::File::options()
            .write(true)
            .open(repo.join("f"))
            .unwrap()
            .set_modified(std::time::SystemTime::now())
            .unwrap();
    };
    for args in &calls {
        stale();
        let before = index_mtime();
        let out = git(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(index_mtime(), before, "build.rs's `git {}` rewrote .git/index", args.join(" "));
    }
    stale();
    let before = index_mtime();
    assert!(git(&["describe", "--always", "--dirty"]).status.success());
    assert_ne!(
        index_mtime(),
        before,
        "`git describe --dirty` leaves the index alone here: the check above proves nothing"
    );
}
