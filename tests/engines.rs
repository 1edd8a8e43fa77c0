//! Engines we did not write, through their glue: the Python bridge (python:test), the C++ adapter glue (mock executor), the lmdeploy driver against a stand-in lmdeploy.

use crate::util::*;

#[test]
fn python_driver_runs_under_mpirun_with_native_timestamps() {
    if !python_available() {
        return;
    }
    let r = run(
        2,
        &[
            "--engine",
            "python:test",
            "--engine-options",
            r#"{"token_us": 2000, "vocab_size": 1000}"#,
            "--batch",
            "2",
            "--prompt-tokens",
            "16",
            "--generated-tokens",
            "20",
            "--record-tokens",
        ],
    );
    let j = ok(&r);
    check_counts(j, 2, 2, 20);
    assert_eq!(j["engine"]["kind"], "python");
    for rank in j["ranks"].as_array().unwrap() {
        // The driver busy-waits 2 ms per step in Python; the native callback timestamps each token.
        assert!(u(&rank["decode"]["min_ns"]) >= 1_998_000, "min gap {} below the script", rank["decode"]["min_ns"]);
    }
    assert_eq!(tokens(j)[0][..3], [1, 8, 15], "the test driver's token formula");
    // A Python exception on one rank: one line with its type and message, every rank exits non-zero.
    let r = rejected(
        2,
        &["--engine", "python:test", "--engine-options", r#"{"fail_create": "no model here"}"#],
        1,
        "python driver `test`",
    );
    assert!(r.error_lines()[0].contains("no model here"), "{}", r.error_lines()[0]);
    rejected(1, &["--engine", "python:does_not_exist"], 1, "does_not_exist");
    // An option the driver does not take is an error, not silently ignored.
    let r = rejected(
        2,
        &["--engine", "python:test", "--engine-options", r#"{"tokn_us": 2000}"#],
        1,
        "python driver `test`",
    );
    assert!(r.error_lines()[0].contains("unknown option(s) tokn_us"), "{}", r.error_lines()[0]);
}

/// A child the engine forks (a multiprocessing worker) ends with its own exit code at once: the
/// hold of a process end is for the rank's process only (the child inherits the flags, not the
/// watcher: it was held 6 s and ended with 1).
#[test]
fn a_forked_child_of_the_engine_exits_as_it_chooses() {
    if !python_available() {
        return;
    }
    let r =
        run(2, &["--engine", "python:test", "--engine-options", r#"{"fork_child": true}"#, "--generated-tokens", "8"]);
    let j = ok(&r);
    check_counts(j, 2, 1, 8);
    assert!(!r.stderr().contains("ended from inside"), "{}", r.stderr());
}

/// A Python engine that ends its own process (os._exit, as some engines do on a fatal error) is
/// reported like an adapter's _exit: every rank exits 1, rank 0 writes a failed JSON naming the
/// rank and the call, with both ranks' measurements.
#[test]
fn python_driver_that_ends_its_process_fails_the_run() {
    if !python_available() {
        return;
    }
    let r = run(
        2,
        &[
            "--engine",
            "python:test",
            "--engine-options",
            r#"{"token_us": 1000, "exit_at_step": 4, "exit_code": 3}"#,
            "--warmup",
            "0",
            "--generated-tokens",
            "20",
        ],
    );
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let j = r.json();
    let i = &j["status"]["interruption"];
    assert_eq!(j["status"]["state"], "failed", "{}", j["status"]);
    // Every rank runs the driver, so both call os._exit; rank 0 reports whichever reached it first.
    let rank = i["process_end"]["rank"].as_i64().unwrap();
    assert_eq!(i["process_end"], serde_json::json!({"rank": rank, "call": "_exit(3)", "code": 3}), "{i}");
    let ranks = j["ranks"].as_array().unwrap();
    assert!(!ranks.is_empty() && ranks.iter().all(|x| x["tokens_generated"] == 4), "{ranks:?}");
}

// ---- the C++ adapter glue (ffi/adapters/common) through the mock executor adapter ----

#[test]
fn mock_executor_counts_every_token_of_a_multi_token_response() {
    // Three tokens per response: each is its own on_token call, step and decode gap.
    let r = run_mx(
        2,
        r#"{"burst": 3, "token_us": 300}"#,
        &["--batch", "3", "--prompt-tokens", "8", "--generated-tokens", "10", "--record-tokens"],
    );
    let j = ok(&r);
    check_counts(j, 2, 3, 10);
    assert_eq!(j["engine"]["name"], "mock_executor");
    assert_eq!(j["topology"], "all_ranks");
    assert_eq!(tokens(j)[1][..3], [32, 39, 46], "the fake executor's token formula, in order");
    // Tokens that arrived together have (almost) no gap between them: the decode minimum is far
    // below the 300 µs step, which a glue that dropped or merged tokens could not produce.
    for rank in j["ranks"].as_array().unwrap() {
        assert!(u(&rank["decode"]["min_ns"]) < 300_000, "rank {}: min gap {}", rank["rank"], rank["decode"]["min_ns"]);
    }
    // The final flag in a separate, empty response after the last token; four tokens a response.
    let r = run_mx(
        1,
        r#"{"burst": 4, "empty_final": true}"#,
        &["--batch", "2", "--prompt-tokens", "4", "--generated-tokens", "9"],
    );
    check_counts(ok(&r), 1, 2, 9);
    // ONE_PROCESS: rank 0 drives, rank 1 observes.
    let r = run_mx(
        2,
        r#"{"topology": "one_process", "burst": 2}"#,
        &["--batch", "2", "--prompt-tokens", "4", "--generated-tokens", "5"],
    );
    let j = ok(&r);
    check_counts(j, 2, 2, 5);
    assert_eq!(j["ranks"][1]["role"], "observer");
}

#[test]
fn mock_executor_finish_reasons_reach_the_json() {
    // Exact length (the default): the executor ignores EOS.
    let r = run_mx(
        1,
        r#"{"eos_at_step": 3, "burst": 2}"#,
        &["--batch", "2", "--prompt-tokens", "4", "--generated-tokens", "10"],
    );
    check_counts(ok(&r), 1, 2, 10);
    // --allow-eos: EOS after 4 tokens, arriving in a response of two.
    let r = run_mx(
        2,
        r#"{"eos_at_step": 3, "burst": 2}"#,
        &["--batch", "2", "--prompt-tokens", "4", "--generated-tokens", "10", "--allow-eos"],
    );
    let j = r.json();
    assert_eq!(j["status"]["state"], "incomplete", "{}", r.stderr());
    for s in j["samples"].as_array().unwrap() {
        assert_eq!(s["finish_reason"], "eos");
        assert_eq!(u(&s["generated"]), 4);
    }
    assert_eq!(u(&j["summary"]["generated_tokens"]), 8);
    // An engine that silently clips the length (TensorRT-LLM at its max_seq_len): the short
    // samples are reported with the engine's reason, not hidden.
    let r = run_mx(
        1,
        r#"{"clip_tokens": 6, "burst": 4}"#,
        &["--batch", "2", "--prompt-tokens", "4", "--generated-tokens", "10"],
    );
    let j = r.json();
    assert_eq!(j["status"]["state"], "incomplete");
    assert!(j["status"]["reason"].as_str().unwrap().contains("sample 1 got 6 of 10 tokens"), "{}", j["status"]);
    assert_eq!(j["samples"][0]["finish_reason"], "length");
}

#[test]
fn mock_executor_failures_are_one_line_errors_on_every_rank() {
    let gen = ["--batch", "3", "--prompt-tokens", "8", "--generated-tokens", "12"];
    let r = rejected_mx(2, r#"{"error_rank": 1, "error_at_token": 4, "token_us": 200}"#, &gen, "rank 1: ");
    assert!(r.error_lines()[0].contains("injected executor error at token 4"), "{}", r.error_lines()[0]);
    assert_eq!(r.json()["status"]["failed_rank"], 1);
    rejected_mx(
        2,
        r#"{"enqueue_fail_sample": 1, "token_us": 1000}"#,
        &gen,
        "enqueue of sample 1 failed: injected enqueue failure",
    );
    rejected_mx(2, r#"{"extra_tokens": 2, "burst": 5}"#, &gen, "more than max_new_tokens = 12 tokens");
    rejected_mx(2, r#"{"fail_create_rank": 1}"#, &gen, "injected failure in create() on rank 1");
    // Options the adapter refuses (create() says invalid argument) are bad input: exit 2, no file.
    let bad_option = |opts: &str, needle: &str| {
        let args = crate::util::mock_executor(opts, &gen);
        crate::util::rejected(1, &args.iter().map(String::as_str).collect::<Vec<_>>(), 2, needle);
    };
    bad_option(r#"{"tokens_us": 5}"#, "unknown engine option \"tokens_us\"");
    bad_option(r#"{"burst": [1, 2]}"#, "flat values only");
    bad_option(r#"{"burst": 0}"#, "\"burst\" must be a whole number in [1,");
    // A hung executor: the glue's response timeout ends generate() on that rank, not a hang.
    let r = rejected_mx(
        2,
        r#"{"stall_rank": 1, "stall_at_token": 3, "response_timeout_s": 1, "cancel_grace_s": 0.5}"#,
        &gen,
        "no response from the engine for 1 s",
    );
    assert!(r.elapsed < Duration::from_secs(30), "took {:?}", r.elapsed);
}

/// A stand-in `lmdeploy` package with TurboMind's streaming interface: three tokens per output, either
/// every token so far with `num_token` (lmdeploy 0.7 .. 0.10.1) or only the new ones (0.10.2 on).
/// It behaves as lmdeploy 0.18 did on the H200 where the driver once went wrong: TurboMind builds a
/// tokenizer from the checkpoint (none in a written checkpoint), its min-length penalty aborts without
/// end ids, and closing a stream before it ends cancels the request (logged to $FAKE_LMDEPLOY_LOG).
const FAKE_LMDEPLOY: &[(&str, &str)] = &[
    ("lmdeploy/__init__.py", "__version__ = '0.0.stand-in'\n"),
    (
        "lmdeploy/messages.py",
        r#"
import dataclasses, enum

@dataclasses.dataclass
class TurbomindEngineConfig:
    tp: int = 1
    session_len: int = None
    enable_prefix_caching: bool = False

@dataclasses.dataclass
class GenerationConfig:
    max_new_tokens: int = 512
    min_new_tokens: int = None
    top_k: int = 50
    ignore_eos: bool = False
    stop_token_ids: list = None

class ResponseType(enum.Enum):
    SUCCESS = 1
    FINISH = 2
    INTERNAL_ENGINE_ERROR = 3

@dataclasses.dataclass
class EngineOutput:
    status: ResponseType
    token_ids: list
    num_token: int = None
"#,
    ),
    ("lmdeploy/turbomind/__init__.py", "from .turbomind import TurboMind\n"),
    (
        "lmdeploy/turbomind/turbomind.py",
        r#"
import asyncio, os
from lmdeploy.messages import EngineOutput, ResponseType

MODE = os.environ['FAKE_LMDEPLOY_MODE']

def log(what):
    with open(os.environ['FAKE_LMDEPLOY_LOG'], 'a') as f:
        f.write(what + '\n')

class Tokenizer:
    def __init__(self, path):
        if not os.path.exists(os.path.join(path, 'tokenizer.json')):
            raise OSError('Can\'t load tokenizer for %r' % path)

class _Inst:
    async def async_stream_infer(self, session_id, input_ids, gen_config=None, stream_output=False, **kw):
        assert gen_config.ignore_eos and not gen_config.stop_token_ids
        if gen_config.min_new_tokens and not gen_config.stop_token_ids:
            log('abort: min-length penalty without end ids')
            os.abort()
        n, out = gen_config.max_new_tokens, []
        try:
            for i in range(n):
                out.append((session_id * 31 + i * 7 + 1) % 1000)
                last = i == n - 1
                if len(out) % 3 == 0 or last:
                    await asyncio.sleep(0.001)
                    st = ResponseType.FINISH if last else ResponseType.SUCCESS
                    if MODE == 'cumulative':
                        yield EngineOutput(st, list(out), len(out))
                    else:
                        yield EngineOutput(st, out[-(len(out) % 3 or 3):])
        except GeneratorExit:
            log('cancel: session %d closed before its stream ended' % session_id)
            raise

class TurboMind:
    @classmethod
    def from_pretrained(cls, path, engine_config=None):
        Tokenizer(path)
        return cls()

    def create_instance(self):
        return _Inst()
"#,
    ),
];

#[test]
fn lmdeploy_driver_counts_every_token_against_a_stand_in_lmdeploy() {
    if !python_available() {
        return;
    }
    let pkg = tempfile::tempdir().unwrap();
    for (path, text) in FAKE_LMDEPLOY {
        let p = pkg.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let pythonpath = pkg.path().to_str().unwrap();
    // A checkpoint directory without tokenizer files, as `tpprof write-checkpoint` writes it.
    let ckpt = tempfile::tempdir().unwrap();
    let options = format!(r#"{{"model_path": "{}", "vocab_size": 1000}}"#, ckpt.path().display());
    let args = [
        "--engine",
        "python:lmdeploy",
        "--engine-options",
        &options,
        "--batch",
        "3",
        "--prompt-tokens",
        "5",
        "--generated-tokens",
        "10",
        "--record-tokens",
    ];
    for mode in ["cumulative", "incremental"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.json");
        let log = dir.path().join("lmdeploy.log");
        let envs =
            [("PYTHONPATH", pythonpath), ("FAKE_LMDEPLOY_MODE", mode), ("FAKE_LMDEPLOY_LOG", log.to_str().unwrap())];
        let r = run_env(2, &args, &out, dir, &envs);
        let j = ok(&r);
        check_counts(j, 2, 3, 10);
        assert_eq!(j["topology"], "one_process", "{mode}");
        // Warm-up runs (the default, auto) use sessions of their own: 3 per run before the measured one.
        let session = 1 + 3 * j["config"]["warmup"].as_u64().unwrap();
        let first: Vec<i64> = (0..4).map(|i| ((session * 31 + i * 7 + 1) % 1000) as i64).collect();
        assert_eq!(tokens(j)[0][..4], first[..], "{mode}: session {session}'s tokens, in order");
        assert_eq!(j["engine"]["details"]["tokenizer"], "stand-in (the checkpoint has none)", "{mode}");
        assert!(j["engine"]["details"]["libraries"].is_array(), "{mode}: which cuBLAS/NCCL TurboMind runs with");
        // Every stream ran to its end (no cancel), and nothing aborted.
        assert!(!log.exists(), "{mode}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        // The driver's stats: 10 tokens per sample in outputs of 3, 3, 3 and 1 (rank 0 drives the engine).
        let stats = &j["ranks"][0]["engine_stats"];
        assert_eq!(stats["stream_tokens"], 30, "{mode}: {stats}");
        assert_eq!(stats["stream_outputs"], 12, "{mode}: {stats}");
        assert_eq!(stats["outputs_with_several_tokens"], 9, "{mode}: {stats}");
        assert_eq!(stats["max_tokens_per_output"], 3, "{mode}: {stats}");
        assert!(j["ranks"][1]["engine_stats"].is_null(), "{mode}: the observer rank has none");
    }
}
