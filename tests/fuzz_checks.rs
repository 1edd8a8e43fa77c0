//! The readers of outside input and what each must do with any input (no panic, a typed error
//! whose message is one line), with valid seeds: shared by the seeded fuzzing in `cargo test`
//! (tests/fuzz.rs) and the cargo-fuzz targets (fuzz/fuzz_targets/), which include this file.

use std::ffi::OsString;
use std::path::Path;

use tpprof::engine::config::Config;
use tpprof::engine::safetensors::{write_safetensors, HostTensor, SafetensorsDir, Sharding};
use tpprof::run::{RunConfig, RunInput};
use tpprof::workload::Workload;

/// The first message that is not one line (the check every reader's errors must pass).
pub fn not_one_line(messages: &[String]) -> Option<&String> {
    messages.iter().find(|m| m.contains('\n') || m.contains('\r') || m.trim().is_empty())
}

/// The error's message (its Display), for the one-line check.
pub fn msg<T, E: std::fmt::Display>(r: &Result<T, E>) -> Option<String> {
    r.as_ref().err().map(|e| e.to_string())
}

pub fn prompt_seeds() -> Vec<Vec<u8>> {
    vec![
        b"[151644, 8948, 198]\n[1, 2, 3]\n".to_vec(),
        b"[0]\n\n[511, 510, 509, 508]\n".to_vec(),
        b"[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]".to_vec(),
        b"  [ 7 , 8 ]  \r\n[9]\r\n".to_vec(),
    ]
}

pub fn check_prompts(dir: &Path, input: &[u8]) -> Vec<String> {
    let path = dir.join("prompts.jsonl");
    std::fs::write(&path, input).unwrap();
    let mut out = Vec::new();
    for vocab in [512u32, 152064, u32::MAX] {
        let r = Workload::from_file(&path, vocab, 4);
        if let Ok(w) = &r {
            assert!(!w.prompts.is_empty() && w.prompts.iter().all(|p| !p.is_empty()));
            assert!(w.prompts.iter().flatten().all(|&id| id >= 0 && (id as u64) < vocab as u64));
            let _ = w.warmup_prompts(7, 1);
        }
        out.extend(msg(&r));
    }
    out
}

pub fn result_seeds() -> Vec<Vec<u8>> {
    vec![
        // Results of this schema version (earlier ones lack fields `load` needs): python:test with
        // samples and warm-up, mock ranks with GPU memory, a run under nsys with a gate.
        include_bytes!("../results/h200/python-hf/py-test.json").to_vec(),
        include_bytes!("../results/h200/mock_all_ranks_3g_5g.json").to_vec(),
        include_bytes!("../results/h100/nsys-nvtx-and-gate/nsys-run.json").to_vec(),
    ]
}

pub fn check_result(dir: &Path, input: &[u8]) -> Vec<String> {
    let path = dir.join("result.json");
    std::fs::write(&path, input).unwrap();
    let r = tpprof::report::summary::load(&path);
    let mut out: Vec<String> = msg(&r).into_iter().collect();
    if let Ok(report) = r {
        let _ = tpprof::report::summary::render(&report);
        let runs = vec![("a".to_string(), report.clone()), ("b".to_string(), report)];
        let _ = tpprof::report::compare::render(&runs, false);
        let _ = tpprof::report::compare::render(&runs, true);
        let html = tpprof::report::html::render(&runs[..1]);
        out.extend(msg(&html));
    }
    out
}

pub fn tiny_config_json() -> Vec<u8> {
    serde_json::to_vec(&Config::preset("tiny").unwrap().to_hf_json("float32")).unwrap()
}

pub fn safetensors_seeds(dir: &Path) -> Vec<Vec<u8>> {
    let f32s = |n: usize| (0..n).map(|i| i as f32 * 0.5 - 3.0).collect::<Vec<f32>>();
    let sets: Vec<Vec<(String, HostTensor)>> = vec![
        vec![
            ("model.embed_tokens.weight".into(), HostTensor::from_f32(vec![4, 6], &f32s(24))),
            (
                "model.norm.weight".into(),
                HostTensor::from_f32(vec![6], &f32s(6)).convert(tpprof::engine::safetensors::Dtype::BF16),
            ),
            (
                "lm_head.weight".into(),
                HostTensor::from_f32(vec![2, 3], &f32s(6)).convert(tpprof::engine::safetensors::Dtype::F16),
            ),
        ],
        vec![("w".into(), HostTensor::from_f32(vec![3, 2, 2], &f32s(12)))],
    ];
    sets.iter()
        .map(|tensors| {
            let p = dir.join("seed.safetensors");
            write_safetensors(&p, tensors).unwrap();
            std::fs::read(&p).unwrap()
        })
        .collect()
}

pub fn check_safetensors(dir: &Path, config: &[u8], st: &[u8]) -> Vec<String> {
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("model.safetensors"), st).unwrap();
    let r = SafetensorsDir::open(dir);
    let mut out: Vec<String> = msg(&r).into_iter().collect();
    if let Ok(ck) = r {
        let names: Vec<String> = ck.names().iter().map(|s| s.to_string()).collect();
        for name in names {
            let meta = ck.meta(&name).unwrap();
            let shape = meta.shape.clone();
            let mut shards = vec![Sharding::Full];
            if let Some(&rows) = shape.first() {
                shards.push(Sharding::Rows(0..rows / 2));
                shards.push(Sharding::Rows(rows / 2..rows));
            }
            if shape.len() == 2 {
                shards.push(Sharding::Cols(0..shape[1] / 2));
                shards.push(Sharding::Cols(shape[1] / 2..shape[1]));
            }
            shards.push(Sharding::Rows(usize::MAX - 1..usize::MAX));
            for shard in shards {
                out.extend(msg(&ck.read(&name, &shape, shard.clone())));
                out.extend(msg(&ck.read_f32(&name, &shape, shard.clone())));
                out.extend(msg(&ck.read_bf16_bits(&name, &shape, shard.clone())));
                out.extend(msg(&ck.read_as(&name, &shape, shard, tpprof::engine::safetensors::Dtype::F16)));
            }
            out.extend(msg(&ck.read(&name, &[1, 2], Sharding::Full)));
        }
        out.extend(msg(&ck.read("absent", &[1], Sharding::Full)));
    }
    out
}

pub fn base_input() -> RunInput {
    RunInput {
        engine: "mock".into(),
        dtype: "fp16".into(),
        model: None,
        weights: None,
        engine_options: "{}".into(),
        batch: Some(2),
        prompt_tokens: 8,
        generated_tokens: 4,
        prompts: None,
        seed: 1,
        vocab_size: None,
        allow_eos: false,
        out: None,
        force: false,
        trace: None,
        cupti: false,
        trace_kernel_steps: 0,
        record_tokens: false,
        devices: None,
        mem_interval_ms: 100,
        timeout: None,
        warmup: "auto".into(),
        warmup_tolerance: 5.0,
        warmup_max: 10,
        slo: None,
        token_log: None,
        no_progress: true,
        repeat: 1,
        percentiles: None,
    }
}

/// One options input is four fields separated by a unit separator (0x1f), fuzzed together.
pub fn options_seeds() -> Vec<Vec<u8>> {
    [
        [r#"{"token_us": 500}"#, "ttft_ms=500,tpot_ms=50", "auto", "fp16"],
        [
            r#"{"preset": "qwen2.5-7b", "dtype": "bf16", "vocab_size": 152064, "python": "/usr/bin/python3"}"#,
            "ttft_ms=500, itl_ms=200, e2e_ms=60000",
            "3",
            "bf16",
        ],
        [r#"{"model": "m", "nested": {"a": [1, 2.5, null, true]}, "s": "x"}"#, "e2e_ms=1e3", "0", "float16"],
    ]
    .iter()
    .map(|f| f.join("\x1f").into_bytes())
    .collect()
}

pub fn check_options(input: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(input);
    let mut f = text.split('\x1f');
    let mut a = base_input();
    a.engine_options = f.next().unwrap_or("").to_string();
    a.slo = f.next().map(str::to_string);
    a.warmup = f.next().unwrap_or("").to_string();
    a.dtype = f.next().unwrap_or("").to_string();
    let mut out = Vec::new();
    for engine in ["mock", "cpu", "python:test"] {
        a.engine = engine.into();
        out.extend(msg(&RunConfig::from_input(&a)));
    }
    out
}

pub fn model_config_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = ["tiny", "small", "qwen2.5-0.5b", "qwen2.5-32b"]
        .iter()
        .map(|p| serde_json::to_vec_pretty(&Config::preset(p).unwrap().to_hf_json("bfloat16")).unwrap())
        .collect();
    seeds.push(br#"{"vocab_size": 64, "hidden_size": 16, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4, "eos_token_id": [1, 2]}"#.to_vec());
    seeds
}

pub fn check_model_config(input: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(input);
    let r = Config::from_json_str(&text);
    let mut out: Vec<String> = msg(&r).into_iter().collect();
    if let Ok(c) = r {
        let _ = c.to_string();
        let _ = c.param_count();
        let _ = c.head_dim();
        let _ = c.tensor_parallel_sizes();
        for world in [0, 1, 2, 3, 7, 64, usize::MAX] {
            out.extend(msg(&c.check_tensor_parallel(world)));
        }
    }
    out
}

pub fn run_toml_seeds() -> Vec<Vec<u8>> {
    vec![
        b"engine = \"mock\"\ngenerated-tokens = 800\nbatch = 2\ncupti = false\ndevices = [0, 1]\nwarmup-tolerance = 2.5\nslo = \"ttft_ms=500\"\n[engine-options]\ntoken_us = 500\nnested = { a = [1, 2] }\n".to_vec(),
        b"prompt_tokens = 16\nrecord-tokens = true\nwarmup = \"auto\"\n".to_vec(),
    ]
}

pub fn check_run_toml(dir: &Path, input: &[u8]) -> Vec<String> {
    let path = dir.join("run.toml");
    std::fs::write(&path, input).unwrap();
    let args: Vec<OsString> =
        ["tpprof", "run", "--config", path.to_str().unwrap(), "--seed", "3"].iter().map(OsString::from).collect();
    msg(&tpprof::cli::expand_config(args)).into_iter().collect()
}
