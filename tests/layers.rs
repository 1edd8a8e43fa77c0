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

/// No import cycle among the files of src/, at every level of the module tree: within each folder,
/// the files and subfolders it holds (a subfolder counted as one, with all it holds) must not use
/// each other in a circle. A use of a module above the file (`super::Engine`, its folder's mod.rs,
/// which declares it) is not counted: a module's children see its items, and a mod.rs's error enum
/// wraps its children's errors, so a mod.rs and its files use each other by design; siblings may
/// not. At the top level this is the layer table's graph again (which has no cycle).
#[test]
fn no_import_cycles_among_files() {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let edges = file_edges(src);
    assert!(edges.len() > 50, "the scan found too little: {edges:?}");
    let cycles = sibling_cycles(&edges);
    assert!(cycles.is_empty(), "import cycles between files of src/:\n  {}", cycles.join("\n  "));
}

#[test]
fn the_cycle_check_would_catch_a_cycle() {
    // A made-up tree: report's a and b use each other (a cycle), once from a test module; engine's
    // mod.rs and its child use each other (allowed); comments and strings name paths (ignored).
    let tmp = tempfile::tempdir().unwrap();
    let files = [
        ("lib.rs", "pub mod clock; pub mod engine; pub mod report;\n"),
        ("clock.rs", "pub fn mono_ns() -> u64 { 0 }\n"),
        ("report/mod.rs", "pub mod a;\npub mod b;\npub use a::A;\npub enum E { X(a::AError) }\n"),
        ("report/a.rs", "use super::E;\npub fn g() {}\n#[cfg(test)]\nmod tests {\n    use super::super::b::f;\n}\n"),
        ("report/b.rs", "pub fn f() { super::a::g() }\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n"),
        ("engine/mod.rs", "pub mod x;\npub use x::{X, XError};\npub trait Engine {}\n"),
        (
            "engine/x.rs",
            concat!(
                "use super::{Engine, super::clock::{self, mono_ns}};\n// use crate::report::a;\n",
                "const S: &str = \"crate::report::b\";\nfn f<'a>(c: char) -> bool { c == '\"' || c == '\\'' }\n",
            ),
        ),
    ];
    for (path, text) in files {
        let p = tmp.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let edges = file_edges(tmp.path());
    let has = |from: &[&str], to: &[&str]| edges.contains_key(&(from.join("::"), to.join("::")));
    assert!(has(&["engine", "x"], &["clock"]), "{edges:?}");
    assert!(has(&["report", "a"], &["report", "b"]) && has(&["report", "b"], &["report", "a"]), "{edges:?}");
    assert!(!edges.keys().any(|(f, t)| f.starts_with("engine") && t.starts_with("report")), "{edges:?}");
    let cycles = sibling_cycles(&edges);
    assert_eq!(cycles, ["in src/report: a -> b -> a (a -> b: report/a.rs; b -> a: report/b.rs)"]);
}

/// `from` module path → `to` module path (both of files, `a::b`; the root is ``), with the files
/// that hold the uses. Uses of the file's own module or of a module above it are left out.
fn file_edges(root: &Path) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(root, root, &mut files);
    let module = |rel: &str| -> Vec<String> {
        let mut m: Vec<String> = rel.trim_end_matches(".rs").split('/').map(String::from).collect();
        if m.last().is_some_and(|l| l == "mod" || l == "lib") {
            m.pop();
        }
        m
    };
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(rel, _)| module(rel)).collect();
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in &files {
        let from = module(rel);
        for (inner, path) in paths_used(&code_only(text)) {
            let cur: Vec<String> = from.iter().chain(&inner).cloned().collect();
            let Some(to) = resolve(&cur, &path, rel == "main.rs", &modules) else { continue };
            if from.starts_with(&to) {
                continue; // itself, or a module above it
            }
            out.entry((from.join("::"), to.join("::"))).or_default().insert(rel.clone());
        }
    }
    out
}

fn rust_files(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            out.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
}

/// The text with comments, string and char literals blanked (a path in them is no import).
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        let raw_hashes = (at(i) == 'r' && (i == 0 || !ident(c[i - 1])))
            .then(|| c[i + 1..].iter().take_while(|&&h| h == '#').count())
            .filter(|&n| at(i + 1 + n) == '"');
        if at(i) == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if at(i) == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if let Some(n) = raw_hashes {
            i += n + 2;
            while i < c.len() && !(c[i] == '"' && (1..=n).all(|k| at(i + k) == '#')) {
                i += 1;
            }
            i += n + 1;
            out.push_str("\"\"");
        } else if at(i) == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if at(i) == '\'' && at(i + 1) == '\\' {
            i += 2;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if at(i) == '\'' && at(i + 2) == '\'' {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Every path the code names from `crate`, `tpprof`, `super` or `self` (use trees expanded), with
/// the inline modules (`mod tests { … }`) it sits in.
fn paths_used(code: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut tokens: Vec<String> = Vec::new();
    let c: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_alphabetic() || c[i] == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            tokens.push(c[start..i].iter().collect());
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            tokens.push("::".into());
            i += 2;
        } else {
            if !c[i].is_whitespace() {
                tokens.push(c[i].to_string());
            }
            i += 1;
        }
    }
    let tok = |i: usize| tokens.get(i).map(String::as_str).unwrap_or("");
    let is_ident = |t: &str| t.starts_with(|ch: char| ch.is_alphabetic() || ch == '_');
    let (mut out, mut inline, mut depth) = (Vec::new(), Vec::<(String, usize)>::new(), 0);
    let mut i = 0;
    while i < tokens.len() {
        let within = || inline.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>();
        match tok(i) {
            "mod" if is_ident(tok(i + 1)) && tok(i + 2) == "{" => {
                depth += 1;
                inline.push((tok(i + 1).to_string(), depth));
                i += 3;
            }
            "{" => {
                depth += 1;
                i += 1;
            }
            "}" => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth -= 1;
                i += 1;
            }
            "use" => {
                i += 1;
                let mut paths = Vec::new();
                use_tree(&tokens, &mut i, Vec::new(), &mut paths);
                out.extend(paths.into_iter().map(|p| (within(), p)));
            }
            "crate" | "tpprof" | "super" | "self" if tok(i + 1) == "::" && tok(i.wrapping_sub(1)) != "::" => {
                let mut path = vec![tok(i).to_string()];
                i += 1;
                while tok(i) == "::" && is_ident(tok(i + 1)) {
                    path.push(tok(i + 1).to_string());
                    i += 2;
                }
                out.push((within(), path));
            }
            _ => i += 1,
        }
    }
    out
}

/// One use tree from `tokens[*i]` (after `use`), each leaf as its full path.
fn use_tree(tokens: &[String], i: &mut usize, mut path: Vec<String>, out: &mut Vec<Vec<String>>) {
    loop {
        match tokens.get(*i).map(String::as_str) {
            Some("::") => *i += 1,
            Some("{") => {
                *i += 1;
                loop {
                    if tokens.get(*i).is_some_and(|t| t == "}") {
                        *i += 1;
                        return;
                    }
                    use_tree(tokens, i, path.clone(), out);
                    match tokens.get(*i).map(String::as_str) {
                        Some(",") => *i += 1,
                        Some("}") => {
                            *i += 1;
                            return;
                        }
                        _ => return,
                    }
                }
            }
            Some("as") => {
                *i += 2;
                out.push(path);
                return;
            }
            Some(t) if t.starts_with(|ch: char| ch.is_alphabetic() || ch == '_') => {
                path.push(t.to_string());
                *i += 1;
            }
            _ => {
                if tokens.get(*i).is_some_and(|t| t == "*") {
                    *i += 1;
                }
                out.push(path);
                return;
            }
        }
    }
}

/// The file module a path leads into, from module `cur` (file module and inline modules); None
/// for paths outside the crate. In main.rs (the binary) the library is `tpprof`.
fn resolve(cur: &[String], path: &[String], in_main: bool, modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut base: Vec<String> = match path.first()?.as_str() {
        "crate" if !in_main => Vec::new(),
        "tpprof" if in_main => Vec::new(),
        "self" | "super" => cur.to_vec(),
        _ => return None,
    };
    let mut rest = &path[1..];
    if path[0] == "super" {
        base.pop()?;
        while rest.first().is_some_and(|s| s == "super") {
            base.pop()?;
            rest = &rest[1..];
        }
    }
    for seg in rest.iter().filter(|s| *s != "self") {
        let next: Vec<String> = base.iter().chain([seg]).cloned().collect();
        if !modules.contains(&next) {
            break;
        }
        base = next;
    }
    while !modules.contains(&base) {
        base.pop()?;
    }
    Some(base)
}

/// Each cycle between siblings (each subfolder as one), once, as its shortest path with the files
/// that hold its uses: `in src/report: a -> b -> a (a -> b: report/a.rs; b -> a: report/b.rs)`.
fn sibling_cycles(edges: &BTreeMap<(String, String), BTreeSet<String>>) -> Vec<String> {
    // folder → sibling → sibling it uses → the files that hold the uses
    type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;
    let mut graphs: BTreeMap<String, Graph> = BTreeMap::new();
    for ((from, to), files) in edges {
        let (f, t): (Vec<&str>, Vec<&str>) = (from.split("::").collect(), to.split("::").collect());
        if t.starts_with(&f) {
            continue; // into its own folder
        }
        let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
        let graph = graphs.entry(f[..common].join("/")).or_default();
        graph.entry(f[common].to_string()).or_default().entry(t[common].to_string()).or_default().extend(files.clone());
    }
    let mut cycles = BTreeSet::new();
    for (folder, graph) in &graphs {
        for (a, uses) in graph {
            for b in uses.keys() {
                // The shortest way back from b to a (breadth first), if any.
                let mut came_from = BTreeMap::from([(b.clone(), b.clone())]);
                let mut todo = std::collections::VecDeque::from([b.clone()]);
                while let Some(n) = todo.pop_front().filter(|_| !came_from.contains_key(a)) {
                    for m in graph.get(&n).into_iter().flat_map(|u| u.keys()) {
                        if !came_from.contains_key(m) {
                            came_from.insert(m.clone(), n.clone());
                            todo.push_back(m.clone());
                        }
                    }
                }
                if !came_from.contains_key(a) {
                    continue;
                }
                let mut ring = vec![a.clone()];
                while ring.last() != Some(b) {
                    ring.push(came_from[ring.last().unwrap()].clone());
                }
                ring.reverse(); // b … a, then a first: a -> b -> … -> a
                ring.rotate_right(1);
                // One cycle, whichever sibling it is met from: start it at its least name.
                let least = (0..ring.len()).min_by_key(|&i| &ring[i]).unwrap();
                ring.rotate_left(least);
                let hops: Vec<String> = (0..ring.len())
                    .map(|i| {
                        let (x, y) = (&ring[i], &ring[(i + 1) % ring.len()]);
                        let files = graph[x][y].iter().cloned().collect::<Vec<_>>().join(", ");
                        format!("{x} -> {y}: {files}")
                    })
                    .collect();
                let folder = if folder.is_empty() { "src".to_string() } else { format!("src/{folder}") };
                cycles.insert(format!("in {folder}: {} -> {} ({})", ring.join(" -> "), ring[0], hops.join("; ")));
            }
        }
    }
    cycles.into_iter().collect()
}

/// Files outside the face that still return `Result<_, String>` (issue [4/7]: typed errors), each
/// to be struck when it is fixed.
const STRING_ERRORS_KNOWN: &[&str] = &[];

/// `Result<…, String>` in the code (comment lines left out; rustfmt may spread the type over
/// lines): the error half is a bare String.
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
        // The code lines as one text: rustfmt spreads a long type over several lines.
        let code: String = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        if code.match_indices("Result<").any(|(i, _)| result_errs_with_string(&code[i + "Result<".len()..])) {
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
            ',' if depth == 0 => {
                let err = rest[i + 1..].trim_start();
                let err = err.strip_prefix("std::string::").unwrap_or(err);
                // `String>`, or `String,` and `>` as rustfmt writes a type it spreads over lines
                return err.strip_prefix("String").is_some_and(|r| {
                    let r = r.trim_start();
                    r.starts_with('>') || r.strip_prefix(',').is_some_and(|r| r.trim_start().starts_with('>'))
                });
            }
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
    assert!(result_errs_with_string("\n    Vec<u8>,\n    String,\n> {"));
    assert!(result_errs_with_string("u8, std::string::String>"));
    assert!(!result_errs_with_string("u8, StringError>"));
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
