//! Seeded, deterministic fuzzing of the readers of outside input, run by a plain `cargo test`:
//!
//! * the prompts file (`--prompts`, JSON Lines of token ids): `Workload::from_file`;
//! * the result JSON (`tpprof report`/`compare`/`--html`): `report::summary::load`, then the text
//!   summary, the comparison and the HTML page of what loaded (histograms decoded from base64);
//! * the safetensors checkpoint (`--weights`): `SafetensorsDir::open` (config.json and header),
//!   then every tensor read whole, by rows and by columns;
//! * the engine options: `RunConfig::from_input` with fuzzed `--engine-options`, `--slo`,
//!   `--warmup` and `--dtype`, the model `config.json` (`Config::from_json_str`, the tensor-parallel
//!   sizes) and the `--config run.toml` file (`cli::expand_config`).
//!
//! Each reader gets a few thousand inputs: valid seeds mutated by a small fixed PRNG (bit flips,
//! truncation, byte insertion and deletion, huge and non-finite numbers, deep nesting, NUL bytes,
//! invalid UTF-8, very long lines, strings with newlines). Case `i` of a reader depends only on the
//! reader's name and `i`, so a failure names a case that replays alone. Every input must give `Ok`
//! or a typed error whose message is one line, without a panic, and no single allocation may exceed
//! [`ALLOC_LIMIT`] (an allocator wrapper watches; one past [`ALLOC_ABORT`] aborts the process, the
//! input is then the last one written under `target/tmp/fuzz/READER/`).
//!
//! `TPPROF_FUZZ_CASES=N` runs N cases per reader instead of the default (e.g. 200000 for a long
//! local run); `TPPROF_FUZZ_SEED=S` shifts every case to another stream. Each crash found is fixed
//! in the reader and kept below as a named regression test with its input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tpprof::engine::safetensors::SafetensorsDir;
use tpprof::run::RunConfig;
use tpprof::workload::Workload;

#[path = "fuzz_checks.rs"]
mod checks;
use checks::*;

// ---------------------------------------------------------------------------------------------
// The allocation watch.

/// The largest single allocation an input of at most a few hundred kB may cause.
const ALLOC_LIMIT: usize = 256 << 20;
/// Past this the allocation fails (the process aborts, naming the size) rather than being made.
const ALLOC_ABORT: usize = 4 << 30;

struct Watch;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        if layout.size() > ALLOC_ABORT {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        if layout.size() > ALLOC_ABORT {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        if new_size > ALLOC_ABORT {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Watch = Watch;

/// The readers run one at a time, so the largest allocation seen is the current input's.
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// The PRNG and the mutator.

/// SplitMix64: small, fixed, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(reader: &str, case: u64) -> Rng {
        let seed: u64 = std::env::var("TPPROF_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for b in reader.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        let mut r = Rng(h ^ case.wrapping_mul(0xd1b5_4a32_d192_ed03));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-1",
    "1",
    "3",
    "0.5",
    "-0.5",
    "1e309",
    "-1e309",
    "1e-400",
    "1.7976931348623157e308",
    "NaN",
    "Infinity",
    "-Infinity",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1152921504606846976",
    "99999999999999999999999999999999",
    "1e18",
    "0x10",
    "00",
    "1.",
    ".5",
    "-",
];

const STRINGS: &[&str] = &[
    "\"\"",
    "\"a\nb\"",
    "\"a\\nb\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\u{202e}\"",
    "\"../x\"",
    "\"/\"",
    "null",
    "true",
    "[]",
    "{}",
    "\"F64\"",
    "\"BF16\"",
    "\"I8\"",
    "\"BOOL\"",
    "\"tpprof.run/1\"",
    "\"tpprof.run/2\"",
    "\"auto\"",
    "\"ok\"",
];

const TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b"\"",
    b"\\",
    b"\n",
    b"\r\n",
    b" ",
    b"\t",
    b"\0",
    b"null",
    b"true",
    b"-",
    b"e",
    b".",
    b"=",
    b"#",
    b"[[",
    b"]]",
    b"\"\"\"",
    b"'",
    b"\xef\xbb\xbf",
];

const BAD_UTF8: &[&[u8]] = &[b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xc0\xaf"];

/// One to four mutations of `seed`.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, &mut v);
    }
    v
}

fn mutate_once(rng: &mut Rng, v: &mut Vec<u8>) {
    let at = |rng: &mut Rng, v: &Vec<u8>| rng.below(v.len() + 1);
    match rng.below(14) {
        0 if !v.is_empty() => {
            let i = rng.below(v.len());
            v[i] ^= 1 << rng.below(8);
        }
        1 if !v.is_empty() => {
            let i = rng.below(v.len());
            v[i] = *rng.pick(&[
                0u8, 0xff, 0x7f, 0x80, b'"', b'\\', b'[', b']', b'{', b'}', b',', b':', b'\n', b'-', b'0', b'9', b'.',
                b'e', 0xc3,
            ]);
        }
        2 => {
            let n = at(rng, v);
            v.truncate(n);
        }
        3 if !v.is_empty() => {
            let i = rng.below(v.len());
            let n = (1 + rng.below(16)).min(v.len() - i);
            v.drain(i..i + n);
        }
        4 => {
            let i = at(rng, v);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            v.splice(i..i, bytes);
        }
        5 => {
            let i = at(rng, v);
            let t = *rng.pick(TOKENS);
            v.splice(i..i, t.iter().copied());
        }
        6 | 7 => replace_number(rng, v),
        8 => replace_string(rng, v),
        9 if !v.is_empty() => {
            let i = rng.below(v.len());
            let n = (1 + rng.below(64)).min(v.len() - i);
            let chunk = v[i..i + n].to_vec();
            let j = at(rng, v);
            v.splice(j..j, chunk);
        }
        10 => {
            let i = at(rng, v);
            let depth = 1 + rng.below(3000);
            let unit: &[u8] = *rng.pick(&[&b"["[..], &b"{\"a\":"[..], &b"[{\"x\":"[..]]);
            let nest: Vec<u8> = unit.iter().copied().cycle().take(unit.len() * depth).collect();
            v.splice(i..i, nest);
        }
        11 => {
            let i = at(rng, v);
            let t = *rng.pick(BAD_UTF8);
            v.splice(i..i, t.iter().copied());
        }
        12 if rng.chance(4) => {
            // A very long line: up to 256 kB without a newline.
            let i = at(rng, v);
            let unit: &[u8] = *rng.pick(&[&b"1,"[..], &b"a"[..], &b"9"[..], &b" "[..]]);
            let n = 1000 + rng.below(128_000);
            let long: Vec<u8> = unit.iter().copied().cycle().take(unit.len() * n).collect();
            v.splice(i..i, long);
        }
        _ => {
            let i = at(rng, v);
            v.insert(i, 0);
        }
    }
}

/// Replaces a run of digits (a number, most likely) by an interesting number.
fn replace_number(rng: &mut Rng, v: &mut Vec<u8>) {
    let digits: Vec<usize> =
        (0..v.len()).filter(|&i| v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_digit())).collect();
    if digits.is_empty() {
        return;
    }
    let s = *rng.pick(&digits);
    let mut e = s;
    while e < v.len() && (v[e].is_ascii_digit() || matches!(v[e], b'.' | b'e' | b'E' | b'+')) {
        e += 1;
    }
    let n = rng.pick(NUMBERS).as_bytes().to_vec();
    v.splice(s..e, n);
}

/// Replaces a JSON string (or what looks like one) by an interesting value.
fn replace_string(rng: &mut Rng, v: &mut Vec<u8>) {
    let quotes: Vec<usize> = (0..v.len()).filter(|&i| v[i] == b'"').collect();
    if quotes.len() < 2 {
        return;
    }
    let k = rng.below(quotes.len() - 1);
    let (s, e) = (quotes[k], quotes[k + 1] + 1);
    let n = rng.pick(STRINGS).as_bytes().to_vec();
    v.splice(s..e, n);
}

// ---------------------------------------------------------------------------------------------
// The driver.

fn cases(default: usize) -> usize {
    std::env::var("TPPROF_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// A scratch directory for one reader, emptied first (kept afterwards: after an abort it holds the
/// input that caused it).
fn scratch(reader: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz").join(reader);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn show(input: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(input).chars().take(600).collect();
    format!("{s:?} ({} bytes)", input.len())
}

/// Runs `check` on `n` mutations of `seeds`; panics naming each failing case (at most 10 listed).
fn fuzz(reader: &str, seeds: &[Vec<u8>], n: usize, mut check: impl FnMut(&[u8]) -> Vec<String>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch(reader);
    let mut failures = Vec::new();
    let mut errors = 0usize;
    let started = std::time::Instant::now();
    for case in 0..n as u64 {
        let mut rng = Rng::new(reader, case);
        let seed = rng.pick(seeds);
        // Case 0..seeds: the seeds themselves, unmutated.
        let input = if (case as usize) < seeds.len() { seeds[case as usize].clone() } else { mutate(&mut rng, seed) };
        let failure = |what: String| format!("{reader} case {case}: {what}\n    input {}", show(&input));
        LARGEST.store(0, Ordering::Relaxed);
        let messages = match catch_unwind(AssertUnwindSafe(|| check(&input))) {
            Ok(m) => m,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(failure(format!("panicked: {msg}")));
                let _ = std::fs::write(dir.join(format!("crash-{case}")), &input);
                continue;
            }
        };
        errors += messages.len();
        if let Some(m) = not_one_line(&messages) {
            failures.push(failure(format!("error message is not one line: {m:?}")));
            let _ = std::fs::write(dir.join(format!("multiline-{case}")), &input);
        }
        let largest = LARGEST.load(Ordering::Relaxed);
        if largest > ALLOC_LIMIT {
            failures.push(failure(format!("allocated {largest} bytes at once")));
            let _ = std::fs::write(dir.join(format!("alloc-{case}")), &input);
        }
    }
    eprintln!(
        "fuzz {reader}: {n} cases, {errors} error messages, {} failures, {:.2} s",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        let total = failures.len();
        failures.truncate(10);
        panic!("{total} failing cases of {reader}:\n{}", failures.join("\n"));
    }
}

// ---------------------------------------------------------------------------------------------
// The prompts file.

#[test]
fn prompts_file() {
    let dir = scratch("prompts-input");
    fuzz("prompts", &prompt_seeds(), cases(4000), |input| check_prompts(&dir, input));
}

// ---------------------------------------------------------------------------------------------
// The result JSON.

#[test]
fn result_seeds_load() {
    let dir = scratch("result-seeds");
    for s in result_seeds() {
        let path = dir.join("r.json");
        std::fs::write(&path, &s).unwrap();
        tpprof::report::summary::load(&path).expect("a seed loads");
    }
}

#[test]
fn result_json() {
    let dir = scratch("result-input");
    fuzz("result", &result_seeds(), cases(2500), |input| check_result(&dir, input));
}

// ---------------------------------------------------------------------------------------------
// The safetensors checkpoint.

/// The header region of a safetensors file (after the 8-byte length), mutated most of the time;
/// the length is then either fixed up to the new header (so the JSON is parsed) or left.
fn mutate_safetensors(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    if seed.len() < 8 || rng.chance(5) {
        let mut v = mutate(rng, seed);
        if v.len() >= 8 && rng.chance(2) {
            let n: u64 = match rng.below(4) {
                0 => rng.next(),
                1 => u64::MAX,
                2 => 1 << 60,
                _ => (v.len() as u64).wrapping_sub(8).wrapping_add(rng.below(5) as u64).wrapping_sub(2),
            };
            v[..8].copy_from_slice(&n.to_le_bytes());
        }
        return v;
    }
    let n = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let (header, data) = seed[8..].split_at(n.min(seed.len() - 8));
    let header = mutate(rng, header);
    let mut data = data.to_vec();
    if rng.chance(6) {
        let k = rng.below(data.len() + 1);
        data.truncate(k);
    }
    let len = if rng.chance(8) { rng.next() >> rng.below(64) } else { header.len() as u64 };
    let mut v = len.to_le_bytes().to_vec();
    v.extend(header);
    v.extend(data);
    v
}

#[test]
fn safetensors_header() {
    let dir = scratch("safetensors-input");
    let seeds = safetensors_seeds(&dir);
    let config = tiny_config_json();
    let n = cases(4000);
    // The header mutator differs from the generic one: `fuzz` gets the inputs made here as its
    // seeds, one per case, and runs each unchanged.
    let inputs: Vec<Vec<u8>> = (0..n as u64)
        .map(|case| {
            let mut rng = Rng::new("safetensors-header", case);
            let seed = rng.pick(&seeds).clone();
            if (case as usize) < seeds.len() {
                seeds[case as usize].clone()
            } else {
                mutate_safetensors(&mut rng, &seed)
            }
        })
        .collect();
    fuzz("safetensors", &inputs, n, |input| check_safetensors(&dir, &config, input));
}

// ---------------------------------------------------------------------------------------------
// Engine options: the run's option parsing, the model config.json, the --config TOML file.

#[test]
fn engine_options() {
    fuzz("options", &options_seeds(), cases(4000), check_options);
}

#[test]
fn model_config() {
    fuzz("model-config", &model_config_seeds(), cases(3000), check_model_config);
}

#[test]
fn run_toml() {
    let dir = scratch("toml-input");
    fuzz("run-toml", &run_toml_seeds(), cases(3000), |input| check_run_toml(&dir, input));
}

// ---------------------------------------------------------------------------------------------
// Regression tests: inputs that crashed a reader (or broke its one-line error), each kept by name.

/// A safetensors file from a header (JSON text) and a data section.
fn safetensors_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

/// Runs one input through a reader's check as the fuzzer does: no panic, one-line errors, no
/// allocation past the limit.
fn replay(reader: &str, input: &[u8], check: impl FnMut(&[u8]) -> Vec<String>) {
    fuzz(reader, &[input.to_vec()], 1, check);
}

#[test]
fn safetensors_header_claiming_a_2_pow_60_byte_tensor_is_an_error() {
    let dir = scratch("regress-st-huge");
    let st = safetensors_file(
        r#"{"w":{"dtype":"F32","shape":[268435456,1073741824],"data_offsets":[0,1152921504606846976]}}"#,
        &[0; 16],
    );
    replay("regress-st-huge", &st, |i| check_safetensors(&dir, &tiny_config_json(), i));
    std::fs::write(dir.join("model.safetensors"), &st).unwrap();
    let e = SafetensorsDir::open(&dir).err().expect("a 2^60-byte tensor in a 16-byte file is refused").to_string();
    assert!(e.contains("invalid safetensors file"), "{e}");
}

#[test]
fn safetensors_shape_whose_product_overflows_is_an_error() {
    let dir = scratch("regress-st-overflow");
    let st = safetensors_file(
        r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,0]}}"#,
        &[],
    );
    replay("regress-st-overflow", &st, |i| check_safetensors(&dir, &tiny_config_json(), i));
    std::fs::write(dir.join("model.safetensors"), &st).unwrap();
    assert!(SafetensorsDir::open(&dir).is_err());
}

#[test]
fn safetensors_empty_tensor_with_2_pow_60_rows_reads_columns_without_a_slice_per_row() {
    // 2^60 × 0 elements: zero bytes, a valid header. Reading its (empty) column range must not
    // make one slice per row.
    let dir = scratch("regress-st-empty-rows");
    let st = safetensors_file(r#"{"w":{"dtype":"F32","shape":[1152921504606846976,0],"data_offsets":[0,0]}}"#, &[]);
    replay("regress-st-empty-rows", &st, |i| check_safetensors(&dir, &tiny_config_json(), i));
}

#[test]
fn safetensors_tensor_name_with_a_newline_gives_a_one_line_error() {
    let dir = scratch("regress-st-newline");
    let st = safetensors_file(r#"{"a\nb":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, &[0; 12]);
    replay("regress-st-newline", &st, |i| check_safetensors(&dir, &tiny_config_json(), i));
}

#[test]
fn model_config_with_huge_shared_divisor_does_not_enumerate_it() {
    // Valid shapes whose gcd(heads, kv heads, intermediate) is 2^40: listing the tensor-parallel
    // sizes must not count to 2^40.
    let json = r#"{"vocab_size": 64, "hidden_size": 2199023255552, "intermediate_size": 1099511627776, "num_hidden_layers": 1, "num_attention_heads": 1099511627776, "num_key_value_heads": 1099511627776}"#;
    replay("regress-config-gcd", json.as_bytes(), check_model_config);
}

#[test]
fn engine_options_with_a_newline_give_a_one_line_error() {
    // Found by the fuzzer (options case 121): the options were quoted raw into the message.
    replay("regress-options-newline", b"{\"mo\r\ndel\": 1\x1fttft_ms=1\x1fauto\x1ffp16", check_options);
    let mut a = base_input();
    a.engine_options = "{\"a\":\n".into();
    let e = RunConfig::from_input(&a).unwrap_err().to_string();
    assert!(e.ends_with(r#"(got {"a":\n)"#), "{e}");
}

#[test]
fn dtype_with_a_newline_gives_a_one_line_error() {
    replay("regress-dtype-newline", b"{}\x1fttft_ms=1\x1fauto\x1ffp\n16", check_options);
}

#[test]
fn safetensors_unknown_dtype_with_a_newline_gives_a_one_line_error() {
    // Found by the fuzzer (safetensors case 666): serde's `unknown variant` quotes the value raw.
    let dir = scratch("regress-st-dtype-newline");
    let st = safetensors_file("{\"w\":{\"dtype\":\"a\\nb\",\"shape\":[2],\"data_offsets\":[0,8]}}", &[0; 8]);
    replay("regress-st-dtype-newline", &st, |i| check_safetensors(&dir, &tiny_config_json(), i));
}

#[test]
fn prompt_ids_past_i32_are_refused_whatever_the_vocabulary() {
    // Found by the fuzzer (prompts): with a vocabulary past 2^31 an id such as 4294967294 was
    // accepted and became a negative INT32 token.
    let dir = scratch("regress-prompts-i32");
    let path = dir.join("p.jsonl");
    std::fs::write(&path, "[1, 4294967294]\n").unwrap();
    let e = Workload::from_file(&path, u32::MAX, 4).unwrap_err().to_string();
    assert!(e.contains("token id 4294967294 at position 1 is outside the vocabulary [0, 2147483648)"), "{e}");
    std::fs::write(&path, "[2147483647]\n").unwrap();
    assert_eq!(Workload::from_file(&path, u32::MAX, 4).unwrap().prompts, vec![vec![i32::MAX]]);
}

#[test]
fn result_with_a_memory_time_of_f64_max_draws_without_hanging() {
    // Found by the fuzzer (result case in the 2500): a memory timeline time of 1.8e308 made the
    // HTML page's x axis infinite and plotters' tick search looped for ever.
    let seed = include_str!("../results/h200/mock_all_ranks_3g_5g.json");
    let mut v: serde_json::Value = serde_json::from_str(seed).unwrap();
    let t = v["ranks"][0]["memory"]["timeline"]["t_s"].as_array_mut().expect("a memory timeline");
    let last = t.len() - 1;
    t[last] = serde_json::json!(1.7976931348623157e308);
    let dir = scratch("regress-result-f64-max");
    replay("regress-result-f64-max", &serde_json::to_vec(&v).unwrap(), |i| check_result(&dir, i));
}
