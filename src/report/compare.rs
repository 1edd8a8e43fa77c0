//! `tpprof compare A.json B.json …`: saved runs side by side — engines, tensor-parallel degrees or
//! builds on one workload — each figure with its change against the first run (the baseline), as
//! aligned text or as a Markdown table for a results page.

use std::fmt::Write as _;

use super::summary::{source_label, state_label};
use super::*;

const GIB: f64 = (1u64 << 30) as f64;

/// `tpprof compare FILE FILE...` (`markdown`: a Markdown table).
/// Why `tpprof compare` has no table.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("compare needs at least two result JSONs (got {0}): tpprof compare BASELINE.json OTHER.json …")]
    TooFew(usize),
    #[error(transparent)]
    Load(#[from] super::summary::LoadError),
    #[error(transparent)]
    Threshold(#[from] super::gate::ThresholdError),
}

/// What `tpprof compare` prints, and whether a `--fail-if` threshold was crossed.
pub struct Comparison {
    pub table: String,
    /// The gate's lines (empty without thresholds).
    pub gate: String,
    pub regressed: bool,
}

/// `tpprof compare`: the table of the given result files, the first the baseline, and the gate's
/// verdict on the `--fail-if` thresholds (checked before any file is read).
pub fn compare_files(
    files: &[std::path::PathBuf],
    markdown: bool,
    fail_if: &[String],
) -> Result<Comparison, CompareError> {
    if files.len() < 2 {
        return Err(CompareError::TooFew(files.len()));
    }
    let thresholds = fail_if.iter().map(|s| s.parse()).collect::<Result<Vec<super::gate::Threshold>, _>>()?;
    let runs = files
        .iter()
        .map(|f| Ok((f.display().to_string(), super::summary::load(f)?)))
        .collect::<Result<Vec<_>, CompareError>>()?;
    let table = render(&runs, markdown);
    if thresholds.is_empty() {
        return Ok(Comparison { table, gate: String::new(), regressed: false });
    }
    let reports: Vec<&RunReport> = runs.iter().map(|(_, r)| r).collect();
    let findings = super::gate::check(&reports, &thresholds);
    Ok(Comparison {
        table,
        gate: super::gate::render(&findings, letter),
        regressed: findings.iter().any(|f| f.failed()),
    })
}

/// One row of the table: a text per run, or a number per run (with the decimals to print).
enum Cells {
    Text(Vec<String>),
    Num(usize, Vec<Option<f64>>),
}

struct Row {
    name: &'static str,
    cells: Cells,
}

/// Column letters: A, B, …, Z, then A2, B2, … (nobody compares 27 runs, but it must not panic).
pub fn letter(i: usize) -> String {
    let c = (b'A' + (i % 26) as u8) as char;
    if i < 26 {
        c.to_string()
    } else {
        format!("{c}{}", i / 26 + 1)
    }
}

fn rows(runs: &[(String, RunReport)]) -> Vec<Row> {
    let mut out = Vec::new();
    let mut num = |name: &'static str, decimals: usize, f: &dyn Fn(&RunReport) -> Option<f64>| {
        let values: Vec<Option<f64>> = runs.iter().map(|(_, r)| f(r)).collect();
        if values.iter().any(Option::is_some) {
            out.push(Row { name, cells: Cells::Num(decimals, values) });
        }
    };
    fn s(r: &RunReport) -> Option<&Summary> {
        r.summary.as_ref()
    }
    num("total time s", 3, &|r| s(r).map(|s| s.total_time_s));
    num("throughput tok/s (gen ÷ total)", 1, &|r| s(r).map(|s| s.throughput_tok_s));
    num("TTFT p50 ms", 1, &|r| s(r).map(|s| s.ttft_ms.p50));
    num("TTFT max ms", 1, &|r| s(r).map(|s| s.ttft_ms.max));
    num("ITL p50 ms", 3, &|r| s(r).map(|s| s.itl_ms.p50));
    num("ITL p90 ms", 3, &|r| s(r).map(|s| s.itl_ms.p90));
    num("ITL p99 ms", 3, &|r| s(r).map(|s| s.itl_ms.p99));
    num("ITL max ms", 3, &|r| s(r).map(|s| s.itl_ms.max));
    num("prefill tok/s", 0, &|r| s(r).and_then(|s| s.prefill_tok_s));
    num("decode tok/s", 1, &|r| s(r).and_then(|s| s.decode_tok_s));
    num("ITL p50, last tenth of decode ms", 3, &|r| {
        s(r).and_then(|s| s.itl_p50_by_tenth_ms.as_ref()).and_then(|t| t.last().copied())
    });
    num("ITL p50 ÷ decode floor", 2, &|r| s(r).and_then(|s| s.itl_over_floor));
    num("device step p50 ms", 3, &|r| s(r).and_then(|s| s.device_step_ms.as_ref()).map(|d| d.p50));
    num("peak memory, largest rank GiB", 2, &|r| {
        super::build::rank_peaks(&r.ranks).0.into_iter().map(|b| b as f64).reduce(f64::max).map(|b| b / GIB)
    });
    num("peak memory, smallest rank GiB", 2, &|r| {
        super::build::rank_peaks(&r.ranks).0.into_iter().map(|b| b as f64).reduce(f64::min).map(|b| b / GIB)
    });
    num("skew: step start spread p50 µs", 1, &|r| r.skew.as_ref().map(|k| k.start_spread.p50_ns as f64 / 1e3));
    num("skew: step start spread p99 µs", 1, &|r| r.skew.as_ref().map(|k| k.start_spread.p99_ns as f64 / 1e3));
    num("skew: step end spread p50 µs", 1, &|r| r.skew.as_ref().map(|k| k.end_spread.p50_ns as f64 / 1e3));
    let most = |v: &[Option<f64>]| v.iter().flatten().copied().reduce(f64::max);
    let least = |v: &[Option<f64>]| v.iter().flatten().copied().reduce(f64::min);
    num("CUPTI: NCCL % of step, highest", 1, &|r| {
        r.cupti.as_ref().and_then(|c| most(&c.nccl_share)).map(|x| x * 100.0)
    });
    num("CUPTI: NCCL ms per step, highest", 3, &|r| r.cupti.as_ref().and_then(|c| most(&c.nccl_ms_mean)));
    num("CUPTI: GPU busy % of step, lowest", 1, &|r| {
        r.cupti.as_ref().and_then(|c| least(&c.busy_share)).map(|x| x * 100.0)
    });
    num("CUPTI: kernels per step (rank 0)", 0, &|r| {
        r.ranks.first().and_then(|k| k.cupti.as_ref()).and_then(|c| c.devices.first()).map(|d| d.kernels_per_step_mean)
    });
    num("engine load s", 3, &|r| s(r).map(|s| s.engine_load_s));
    out
}

fn engine_name(r: &RunReport) -> String {
    r.engine.as_ref().map(|e| e.name.clone()).unwrap_or_else(|| r.config.engine.clone())
}

/// The element type the built-in engines computed in (another engine's is in its options).
fn dtype_label(r: &RunReport) -> String {
    match engine_name(r).as_str() {
        "cuda" => r.config.dtype.clone(),
        "cpu" => "f32".to_string(),
        _ => r.config.engine_options.get("dtype").and_then(|d| d.as_str()).unwrap_or("engine's own").to_string(),
    }
}

fn gpu_name(r: &RunReport) -> String {
    r.ranks.iter().find_map(|k| k.gpu.as_ref().map(|g| g.name.clone())).unwrap_or_else(|| "no GPU".into())
}

/// One line per run: what it was.
pub(super) fn legend(i: usize, file: &str, r: &RunReport) -> String {
    let c = &r.config;
    let engine = engine_name(r);
    let prompt = match &c.prompts {
        crate::workload::PromptSource::Random { tokens_per_prompt, .. } => tokens_per_prompt.to_string(),
        crate::workload::PromptSource::File { path } => format!("prompts from {path}"),
    };
    let gpu = gpu_name(r);
    let state = state_label(&r.status);
    let tokens = r
        .summary
        .as_ref()
        .map(|s| format!(", {}/{} tokens", s.generated_tokens, s.requested_tokens))
        .unwrap_or_default();
    let build = if r.environment.tpprof_commit.is_empty() {
        String::new()
    } else {
        format!(", build {}", r.environment.tpprof_commit)
    };
    // The element type means something for the built-in engines only.
    let dtype = match engine.as_str() {
        "cuda" => format!(" {}", c.dtype),
        "cpu" => " f32".to_string(),
        _ => String::new(),
    };
    format!(
        "{}: {file} — {engine} {}{dtype}, {} rank(s), batch {}, {prompt} → {}{}, {gpu}, {state}{tokens}{build}{}",
        letter(i),
        c.model,
        c.world_size,
        c.batch,
        c.generated_tokens,
        if c.exact_length { "" } else { " (EOS may stop)" },
        if c.cupti { ", --cupti" } else { "" }
    )
}

/// What differs between the runs' workloads (a comparison across them measures the workload too).
pub(super) fn workload_notes(runs: &[(String, RunReport)]) -> Vec<String> {
    let mut notes = Vec::new();
    let mut differs = |what: &str, vals: Vec<String>| {
        if vals.iter().any(|v| *v != vals[0]) {
            let each: Vec<String> = vals.iter().enumerate().map(|(i, v)| format!("{} {v}", letter(i))).collect();
            notes.push(format!("{what} differ: {}", each.join(", ")));
        }
    };
    differs(
        "prompts",
        runs.iter()
            .map(|(_, r)| match &r.config.prompts {
                crate::workload::PromptSource::Random { tokens_per_prompt, seed } => {
                    format!("{tokens_per_prompt} random (seed {seed})")
                }
                crate::workload::PromptSource::File { path } => path.clone(),
            })
            .collect(),
    );
    differs("generated tokens", runs.iter().map(|(_, r)| r.config.generated_tokens.to_string()).collect());
    differs("batch sizes", runs.iter().map(|(_, r)| r.config.batch.to_string()).collect());
    differs(
        "warm-up policies",
        runs.iter()
            .map(|(_, r)| match r.config.warmup_mode {
                Some(WarmupMode::Auto) => "auto".to_string(),
                _ => format!("--warmup {}", r.config.warmup),
            })
            .collect(),
    );
    differs(
        "EOS handling",
        runs.iter()
            .map(|(_, r)| if r.config.exact_length { "exact length" } else { "EOS may stop" }.to_string())
            .collect(),
    );
    differs("models", runs.iter().map(|(_, r)| r.config.model.clone()).collect());
    // What the figures were measured with: engine, element type, ranks, build, GPU.
    differs("engines", runs.iter().map(|(_, r)| engine_name(r)).collect());
    differs("element types", runs.iter().map(|(_, r)| dtype_label(r)).collect());
    differs("rank counts", runs.iter().map(|(_, r)| r.config.world_size.to_string()).collect());
    differs(
        "builds",
        runs.iter()
            .map(|(_, r)| {
                if r.environment.tpprof_commit.is_empty() {
                    "unknown".to_string()
                } else {
                    r.environment.tpprof_commit.clone()
                }
            })
            .collect(),
    );
    differs("GPUs", runs.iter().map(|(_, r)| gpu_name(r)).collect());
    differs(
        "peak memory sources (GPU memory vs host RSS: not like for like)",
        runs.iter()
            .map(|(_, r)| {
                if r.ranks.is_empty() {
                    "none".to_string()
                } else {
                    source_label(&super::build::rank_peaks(&r.ranks).1).to_string()
                }
            })
            .collect(),
    );
    notes
}

pub fn render(runs: &[(String, RunReport)], markdown: bool) -> String {
    let mut out = String::new();
    for (i, (file, r)) in runs.iter().enumerate() {
        let _ = writeln!(out, "{}{}", if markdown { "- " } else { "" }, legend(i, file, r));
    }
    for n in workload_notes(runs) {
        let _ = writeln!(out, "{}note: the runs' {n}", if markdown { "- " } else { "" });
    }
    if markdown {
        out.push('\n');
    }
    let mut table = rows(runs);
    // Status first (text), then the figures.
    table.insert(
        0,
        Row {
            name: "status",
            cells: Cells::Text(runs.iter().map(|(_, r)| format!("{:?}", r.status.state).to_lowercase()).collect()),
        },
    );
    // What each measured run stands on: warm-up state and the stationarity warnings.
    if runs.iter().any(|(_, r)| r.summary.as_ref().is_some_and(|s| s.warmup.is_some())) {
        let warm = |r: &RunReport| -> String {
            match r.summary.as_ref().and_then(|s| s.warmup.as_ref()) {
                None => "—".into(),
                Some(w) => {
                    let state = match w.state {
                        WarmupState::Steady => "steady",
                        WarmupState::NotConverged => "not converged",
                        WarmupState::Fixed => "fixed",
                        WarmupState::Cold => "cold",
                    };
                    format!("{state}, {} run(s)", w.runs)
                }
            }
        };
        let warnings = |r: &RunReport| -> String {
            match r.summary.as_ref().and_then(|s| s.stationarity.as_ref()) {
                None => "—".into(),
                Some(st) if st.warnings.is_empty() => "none".into(),
                Some(st) => {
                    let mut parts = Vec::new();
                    if let Some(p) = st.vs_last_warmup_pct.filter(|p| p.abs() > st.tolerance_pct) {
                        parts.push(format!("{p:+.1} % vs warm-up"));
                    }
                    if let Some(p) = st.first_to_last_tenth_pct.filter(|p| p.abs() > st.tolerance_pct) {
                        parts.push(format!("{p:+.1} % drift"));
                    }
                    if parts.is_empty() {
                        parts.push(format!("{} warning(s)", st.warnings.len()));
                    }
                    parts.join(", ")
                }
            }
        };
        table.insert(1, Row { name: "warm-up", cells: Cells::Text(runs.iter().map(|(_, r)| warm(r)).collect()) });
        table.insert(
            2,
            Row { name: "not stationary", cells: Cells::Text(runs.iter().map(|(_, r)| warnings(r)).collect()) },
        );
    }
    // Cells: the value, and from the second run on its change against the first.
    let cells: Vec<Vec<String>> = table
        .iter()
        .map(|row| match &row.cells {
            Cells::Text(t) => t.clone(),
            Cells::Num(d, values) => values
                .iter()
                .enumerate()
                .map(|(i, v)| match (v, change_pct(values[0], *v)) {
                    (None, _) => "—".to_string(),
                    (Some(v), Some(c)) if i > 0 => format!("{v:.d$} ({c:+.1} %)", d = *d),
                    (Some(v), _) => format!("{v:.d$}", d = *d),
                })
                .collect(),
        })
        .collect();
    let heads: Vec<String> =
        (0..runs.len()).map(|i| if i == 0 { format!("{} (baseline)", letter(i)) } else { letter(i) }).collect();
    if markdown {
        let _ = writeln!(out, "| | {} |", heads.join(" | "));
        let _ = writeln!(out, "| --- |{}", " --- |".repeat(runs.len()));
        for (row, c) in table.iter().zip(&cells) {
            let _ = writeln!(out, "| {} | {} |", row.name, c.join(" | "));
        }
    } else {
        let name_w = table.iter().map(|r| r.name.chars().count()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..runs.len())
            .map(|i| cells.iter().map(|c| c[i].chars().count()).chain([heads[i].chars().count()]).max().unwrap_or(0))
            .collect();
        let line = |name: &str, cols: &[String]| {
            let mut l = format!("{name:<name_w$}");
            for (c, w) in cols.iter().zip(&widths) {
                let pad = w.saturating_sub(c.chars().count());
                let _ = write!(l, "  {}{c}", " ".repeat(pad));
            }
            l
        };
        let _ = writeln!(out, "{}", line("", &heads));
        for (row, c) in table.iter().zip(&cells) {
            let _ = writeln!(out, "{}", line(row.name, c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_against_the_baseline() {
        assert_eq!(change_pct(Some(10.0), Some(5.0)), Some(-50.0));
        assert_eq!(change_pct(Some(10.0), Some(12.5)), Some(25.0));
        assert_eq!(change_pct(Some(0.0), Some(1.0)), None);
        assert_eq!(change_pct(None, Some(1.0)), None);
        assert_eq!(change_pct(Some(1.0), None), None);
        assert_eq!(letter(0), "A");
        assert_eq!(letter(25), "Z");
        assert_eq!(letter(26), "A2");
    }
}
