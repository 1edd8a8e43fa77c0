//! `cargo run --bin seed_corpus -- DIR`: writes DIR/TARGET/seed-N for every target from the valid
//! seeds of tests/fuzz_checks.rs (libFuzzer then starts from inputs that parse).

#[path = "../../tests/fuzz_checks.rs"]
#[allow(dead_code)]
mod checks;

fn main() {
    let root = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let scratch = std::env::temp_dir().join(format!("tpprof-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("a scratch directory");
    let sets: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("prompts", checks::prompt_seeds()),
        ("result_json", checks::result_seeds()),
        ("safetensors", checks::safetensors_seeds(&scratch)),
        ("engine_options", checks::options_seeds()),
        ("model_config", checks::model_config_seeds()),
        ("run_toml", checks::run_toml_seeds()),
    ];
    for (target, seeds) in sets {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("the corpus directory");
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).expect("a seed written");
        }
        println!("{target}: {} seeds in {}", seeds.len(), dir.display());
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
