//! The result JSON's schema: generated from the report types (`tpprof schema`), committed as
//! results/schema.json, and true of every tpprof result committed under results/ — the files a
//! user's saved runs look like, which the loader must keep reading.

use crate::util::*;

const COMMITTED: &str = include_str!("../results/schema.json");

/// The golden file: results/schema.json is exactly what `tpprof schema` prints.
#[test]
fn committed_schema_is_the_generated_one() {
    let out = Command::new(BIN).arg("schema").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let generated = String::from_utf8(out.stdout).unwrap();
    if generated != COMMITTED {
        let first = generated
            .lines()
            .zip(COMMITTED.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(generated.lines().count().min(COMMITTED.lines().count()));
        panic!(
            "results/schema.json is not the schema of the report types (first difference at line {}: generated `{}`, committed `{}`): \
             run `tpprof schema > results/schema.json` and review the diff",
            first + 1,
            generated.lines().nth(first).unwrap_or("<end>"),
            COMMITTED.lines().nth(first).unwrap_or("<end>"),
        );
    }
}

/// Results of the very first build: they lack the job memory record, so the loader refuses them
/// (`results_of_earlier_builds_still_read` checks its message) and the schema must refuse them too.
const TOO_OLD: [&str; 2] = ["mock_tp2_on_gpu_host.json", "qwen2.5-14b_fp16_tp2_10k-800_first-version.json"];

/// Every tpprof run JSON committed under results/ (`"schema": "tpprof.run/1"`) validates against
/// the generated schema and loads with tpprof's own loader (`report::summary::load`), and the two
/// agree on the ones they refuse. Skipped, by name: Chrome/Perfetto traces (`*.trace.json`, and
/// `*.trace.json.gz`, which is not `*.json`), an engine timed without tpprof (`*.plain.json`, the
/// yardstick beside a result), results/schema.json itself, and two kinds known by their content:
/// launch/bench.sh's table (`bench.json`) and model configs (a Qwen2 config.json: `hidden_size`, no
/// `schema`); any other `*.json` must be a run JSON.
#[test]
fn every_committed_result_validates_and_loads() {
    let schema = tpprof::report::schema::generate().to_value();
    let validator = jsonschema::validator_for(&schema).expect("the generated schema is a valid JSON Schema");
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results"));
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                dirs.push(p);
            } else if name.ends_with(".json")
                && !name.ends_with(".trace.json")
                && !name.ends_with(".plain.json")
                && p != root.join("schema.json")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    let (mut valid, mut refused, mut problems) = (0, Vec::new(), Vec::new());
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let j: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if j.get("schema").is_none()
            && ((name == "bench.json" && j.get("rows").is_some()) || j.get("hidden_size").is_some())
        {
            continue;
        }
        assert_eq!(j["schema"], "tpprof.run/1", "{} is neither a run JSON nor a kind this test skips", f.display());
        let errors: Vec<String> =
            validator.iter_errors(&j).take(5).map(|e| format!("{e} at {}", e.instance_path)).collect();
        let loaded = tpprof::report::summary::load(f);
        match (errors.is_empty(), &loaded) {
            (true, Ok(_)) => valid += 1,
            (false, Err(_)) if TOO_OLD.contains(&name.as_str()) => refused.push(name),
            (ok, _) => problems.push(format!(
                "{}: schema {}; loader {}",
                f.display(),
                if ok { "valid".to_string() } else { format!("refuses: {}", errors.join("; ")) },
                loaded.as_ref().map(|_| "reads it".to_string()).unwrap_or_else(|e| format!("refuses: {e}")),
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "{} committed result(s) and the schema or the loader disagree:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(refused.len(), TOO_OLD.len(), "refused: {refused:?}");
    assert!(valid >= 70, "only {valid} result JSONs found under {}", root.display());
    eprintln!("{valid} committed result JSONs validate and load; {} too old for both", refused.len());
}

/// What the schema requires and what it leaves open, on a committed result: a field added since
/// the first build may be absent, one every build wrote may not; an unknown or renamed field fails,
/// deep inside too; the free-form engine options take anything.
#[test]
fn the_schema_refuses_unknown_fields_and_missing_required_ones() {
    let schema = tpprof::report::schema::generate().to_value();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let f = concat!(env!("CARGO_MANIFEST_DIR"), "/results/h200/warmup/python-test_2000us.json");
    let good: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
    assert!(validator.is_valid(&good));
    let changed = |f: &dyn Fn(&mut Value)| {
        let mut j = good.clone();
        f(&mut j);
        validator.is_valid(&j)
    };
    assert!(changed(&|j| {
        j["config"].as_object_mut().unwrap().remove("warmup");
    }));
    assert!(changed(&|j| {
        j["summary"].as_object_mut().unwrap().remove("itl_p50_by_tenth_ms");
    }));
    assert!(changed(&|j| j["config"]["engine_options"]["anything"] = Value::from(1)));
    assert!(!changed(&|j| {
        j["config"].as_object_mut().unwrap().remove("engine");
    }));
    assert!(!changed(&|j| j["throughput"] = Value::from(1.0)));
    assert!(!changed(&|j| {
        let p99 = j["summary"]["itl_ms"].as_object_mut().unwrap().remove("p99").unwrap();
        j["summary"]["itl_ms"]["p99_ms"] = p99;
    }));
    assert!(!changed(&|j| j["ranks"][0]["memory"]["gpu"]["state"] = Value::from("guessed")));
    assert!(!changed(&|j| j["schema"] = Value::from("tpprof.run/2")));
}
