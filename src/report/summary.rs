//! The human summary of a run: printed by rank 0 at the end of `tpprof run`, and by `tpprof report`.

use std::fmt::Write as _;

use super::*;

const GIB: f64 = (1u64 << 30) as f64;

/// Reads a result JSON written by `tpprof run`; the error is one line naming the file and the cause.
/// Fields added to the schema later are optional when reading, so results of earlier builds still
/// load; a file that lacks a field this build cannot do without says which.
pub fn load(path: &std::path::Path) -> Result<RunReport, LoadError> {
    let path_buf = || path.to_path_buf();
    // Only regular files, and not beyond a size no result reaches: /dev/zero must not be read
    // without end, nor a FIFO block.
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Read { path: path_buf(), source })?;
    if !meta.is_file() {
        return Err(LoadError::NotAFile { path: path_buf() });
    }
    if meta.len() > MAX_RESULT_BYTES {
        return Err(LoadError::TooLarge { path: path_buf(), bytes: meta.len() });
    }
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path_buf(), source })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| LoadError::NotJson { path: path_buf(), source })?;
    match value.get("schema").and_then(|s| s.as_str()) {
        Some(SCHEMA) => {}
        Some(other) => return Err(LoadError::Schema { path: path_buf(), found: other.to_string() }),
        None => return Err(LoadError::NoSchema { path: path_buf() }),
    }
    serde_json::from_value::<RunReport>(value).map_err(|source| LoadError::Older { path: path_buf(), source })
}

/// The largest result JSON `load` reads (a 16-rank 20K-token run with --cupti is a few MB).
pub const MAX_RESULT_BYTES: u64 = 1 << 30;

/// Why `--percentiles` cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum PercentilesError {
    #[error("--percentiles takes numbers in (0, 100], comma-separated, e.g. 50,90,99.9 (got `{0}`)")]
    Spec(String),
    #[error("{file}: its {what} histogram cannot be read ({source})")]
    Histogram { file: String, what: &'static str, source: crate::record::histogram::HistogramError },
}

/// `--percentiles 50,99.99`: the percents asked for, each in (0, 100].
pub fn parse_percentiles(spec: &str) -> Result<Vec<f64>, PercentilesError> {
    spec.split(',')
        .map(|p| match p.trim().trim_start_matches('p').parse::<f64>() {
            Ok(v) if v > 0.0 && v <= 100.0 => Ok(v),
            _ => Err(PercentilesError::Spec(spec.to_string())),
        })
        .collect()
}

/// The chosen percentiles of TTFT and ITL (merged over the engine ranks, then rank by rank), read
/// from the HdrHistograms the JSON carries — any percentile, not only the ones the JSON lists.
pub fn render_percentiles(file: &str, r: &RunReport, percents: &[f64]) -> Result<String, PercentilesError> {
    use crate::record::histogram::LatencyHistogram;
    let decode = |what: &'static str, s: &HistogramSummary| {
        LatencyHistogram::from_base64(&s.hdr_v2_base64).map_err(|source| PercentilesError::Histogram {
            file: file.to_string(),
            what,
            source,
        })
    };
    let mut out = String::new();
    let heads: Vec<String> = percents.iter().map(|p| format!("p{p}")).collect();
    let _ = writeln!(out, "chosen percentiles, ms");
    let _ = writeln!(out, "  {:<14} {}", "", heads.iter().map(|h| format!("{h:>10}")).collect::<Vec<_>>().join(""));
    let mut row = |name: String, h: &LatencyHistogram| {
        let cells: String =
            percents.iter().map(|p| format!("{:>10.3}", h.at_quantile(p / 100.0) as f64 / 1e6)).collect();
        let _ = writeln!(out, "  {name:<14} {cells}   (n = {})", h.count());
    };
    if let Some(l) = &r.latency {
        row("TTFT".into(), &decode("merged TTFT", &l.ttft)?);
        row("ITL".into(), &decode("merged ITL", &l.decode)?);
    }
    for k in &r.ranks {
        row(format!("ITL rank {}", k.rank), &decode("rank ITL", &k.decode)?);
    }
    Ok(out)
}

/// Why a file is not a result this build can read; one line naming the file and the cause.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{} is not a regular file: give the path of a result JSON", path.display())]
    NotAFile { path: std::path::PathBuf },
    #[error("{} is {bytes} bytes, more than any result JSON (at most 1 GiB is read): is it the right file?", path.display())]
    TooLarge { path: std::path::PathBuf, bytes: u64 },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("{} is not a tpprof result JSON ({source})", path.display())]
    NotJson { path: std::path::PathBuf, source: serde_json::Error },
    #[error("{} has schema `{found}`, this tpprof reads `{reads}`", path.display(), reads = SCHEMA)]
    Schema { path: std::path::PathBuf, found: String },
    #[error("{} is not a tpprof result JSON (no `schema` field)", path.display())]
    NoSchema { path: std::path::PathBuf },
    #[error("{} was written by an earlier tpprof build whose JSON lacks what this one needs ({source}): read it with the tpprof that wrote it, or run the workload again", path.display())]
    Older { path: std::path::PathBuf, source: serde_json::Error },
}

/// Per request (rank 0's clock): TPOT = (e2e − TTFT) / (n − 1) and end to end, median and worst.
fn per_request_line(samples: &[SampleReport]) -> Option<String> {
    let stat = |mut v: Vec<f64>| -> Option<(f64, f64)> {
        v.sort_by(f64::total_cmp);
        Some((*v.get((v.len().checked_sub(1)?) / 2)?, *v.last()?))
    };
    let (tp50, tmax) = stat(samples.iter().filter_map(|s| s.tpot_ms).collect())?;
    let (e50, emax) = stat(samples.iter().filter_map(|s| s.e2e_ms).collect())?;
    Some(format!("per request: TPOT (e2e − TTFT)/(n − 1) median {tp50:.3} ms, max {tmax:.3} ms; end to end median {e50:.3} ms, max {emax:.3} ms"))
}

fn row(out: &mut String, name: &str, p: &PercentilesMs) {
    let _ = writeln!(
        out,
        "  {name:<6} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8}",
        p.min, p.p50, p.p90, p.p95, p.p99, p.p999, p.max, p.mean, p.std, p.count
    );
}

pub fn render(r: &RunReport) -> String {
    let mut out = String::new();
    let c = &r.config;
    let engine = r.engine.as_ref().map(|e| format!("{} ({})", e.name, e.kind)).unwrap_or_else(|| c.engine.clone());
    let prompt = match &c.prompts {
        crate::workload::PromptSource::Random { tokens_per_prompt, .. } => format!("{tokens_per_prompt}"),
        crate::workload::PromptSource::File { path } => format!("prompts from {path}"),
    };
    let _ = writeln!(
        out,
        "tpprof {}: engine {engine}, model {}, {} rank(s) on {} host(s), batch {}, {prompt} → {} tokens{}",
        r.environment.tpprof_version,
        c.model,
        c.world_size,
        r.environment.hosts.len(),
        c.batch,
        c.generated_tokens,
        if c.exact_length { " (exact length)" } else { "" }
    );
    let state = state_label(&r.status);
    let _ = writeln!(out, "status: {state}{}", r.status.reason.as_ref().map(|s| format!(": {s}")).unwrap_or_default());
    if let Some(s) = &r.summary {
        let _ = writeln!(
            out,
            "tokens: {}/{} generated, {} prompt tokens; total {:.3} s, throughput {:.2} tok/s (generated ÷ total)",
            s.generated_tokens, s.requested_tokens, s.prompt_tokens, s.total_time_s, s.throughput_tok_s
        );
        let opt = |v: Option<f64>| v.map(|x| format!("{x:.1} tok/s")).unwrap_or_else(|| "n/a".into());
        let _ = writeln!(
            out,
            "prefill {}, decode {}, engine load {:.3} s",
            opt(s.prefill_tok_s),
            opt(s.decode_tok_s),
            s.engine_load_s
        );
        let _ = writeln!(
            out,
            "  {:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "ms", "min", "p50", "p90", "p95", "p99", "p99.9", "max", "mean", "std", "count"
        );
        row(&mut out, "TTFT", &s.ttft_ms);
        row(&mut out, "ITL", &s.itl_ms);
        let engine_ranks = r.ranks.iter().filter(|k| k.role == Role::Engine).count();
        let _ = writeln!(
            out,
            "  (counts: {} request(s), TTFT and ITL per rank merged over {engine_ranks} engine rank(s))",
            r.samples.len()
        );
        if let Some(line) = per_request_line(&r.samples) {
            let _ = writeln!(out, "{line}");
        }
        if let Some(rp) = &s.repeat {
            let f = |name: &str, sp: &Option<Spread>, unit: &str| {
                sp.as_ref().map(|x| format!("{name} {:.3} / {:.3} / {:.3} {unit}", x.min, x.median, x.max))
            };
            let parts: Vec<String> =
                [f("ITL p50", &rp.itl_p50_ms, "ms"), f("TTFT p50", &rp.ttft_p50_ms, "ms"), f("wall", &rp.wall_s, "s")]
                    .into_iter()
                    .flatten()
                    .collect();
            let _ =
                writeln!(out, "repeat: {} measured runs (rank 0), min / median / max: {}", rp.runs, parts.join("; "));
        }
        if let Some(g) = &s.goodput {
            let b = |name: &str, v: Option<f64>| v.map(|v| format!("{name} ≤ {v} ms"));
            let bounds: Vec<String> = [
                b("TTFT", g.slo.ttft_ms),
                b("TPOT", g.slo.tpot_ms),
                b("every ITL", g.slo.itl_ms),
                b("e2e", g.slo.e2e_ms),
            ]
            .into_iter()
            .flatten()
            .collect();
            let _ = writeln!(
                out,
                "goodput: {}/{} requests ({:.1} %) within {}; {:.3} requests/s",
                g.met,
                g.requests,
                g.share_pct,
                bounds.join(", "),
                g.requests_per_s
            );
        }
        if let Some(t) = s.itl_p50_by_tenth_ms.as_ref().filter(|t| t.len() >= 2) {
            let (first, last) = (t[0], t[t.len() - 1]);
            let growth = if first > 0.0 {
                format!(
                    " (last {} {:+.1} % against the first)",
                    if t.len() == 10 { "tenth" } else { "part" },
                    (last - first) / first * 100.0
                )
            } else {
                String::new()
            };
            let v: Vec<String> = t.iter().map(|x| format!("{x:.3}")).collect();
            let _ = writeln!(out, "ITL p50 by tenth of the decode steps (rank 0), ms: {}{growth}", v.join(" "));
        }
    }
    if let Some(w) = r.summary.as_ref().and_then(|s| s.warmup.as_ref()) {
        let _ = writeln!(out, "{}", warmup_line(w, r.config.warmup_tolerance_pct.unwrap_or(5.0)));
        for warning in
            r.summary.as_ref().and_then(|s| s.stationarity.as_ref()).map(|s| s.warnings.as_slice()).unwrap_or(&[])
        {
            let _ = writeln!(out, "warning: not stationary: {warning}");
        }
    } else if let Some(k) = r.ranks.first().filter(|k| !k.timing.warmup_s.is_empty()) {
        let times: Vec<String> = k.timing.warmup_s.iter().map(|s| format!("{s:.3}")).collect();
        let _ = writeln!(
            out,
            "warm-up: {} unmeasured run(s) of the workload before the clock, rank 0: {} s",
            times.len(),
            times.join(" / ")
        );
    }
    if let Some(k) = &r.skew {
        let _ = writeln!(
            out,
            "cross-rank skew over {} decode steps (device events, rank 0's clock): start spread p50 {:.1} µs / p99 {:.1} µs, end spread p50 {:.1} µs; last to start per rank: {:?}",
            k.steps,
            k.start_spread.p50_ns as f64 / 1e3,
            k.start_spread.p99_ns as f64 / 1e3,
            k.end_spread.p50_ns as f64 / 1e3,
            k.last_to_start_steps
        );
    }
    if let Some(c) = &r.cupti {
        let pct = |v: &[Option<f64>]| {
            v.iter()
                .map(|x| x.map(|x| format!("{:.1}%", x * 100.0)).unwrap_or_else(|| "-".into()))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(out, "CUPTI participants: {}", c.participants.join(", "));
        let waited = if c.waited_for_steps.len() > 1 && c.steps > 0 {
            format!("; waited for (least NCCL): {:?} of {} steps ({} tied)", c.waited_for_steps, c.steps, c.tied_steps)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "CUPTI, decode steps: GPU busy {}, NCCL {} of step time{waited}",
            pct(&c.busy_share),
            pct(&c.nccl_share)
        );
        for k in &r.ranks {
            if let Some(c) = k.cupti.as_ref().filter(|c| c.dropped > 0) {
                let _ = writeln!(out, "  WARNING rank {}: CUPTI dropped {} kernel records (buffers full): its busy/NCCL figures are too low", k.rank, c.dropped);
            }
            for d in k.cupti.iter().flat_map(|c| &c.devices) {
                let p50 = |h: &Option<crate::record::histogram::HistogramSummary>| {
                    h.as_ref().map(|h| format!("{:.3}", h.p50_ns as f64 / 1e6)).unwrap_or_else(|| "-".into())
                };
                let _ = writeln!(
                    out,
                    "  rank {} GPU{}: per step p50 busy {} ms, NCCL {} ms, compute {} ms, idle {} ms; {:.0} kernels/step; top: {}",
                    k.rank,
                    d.device,
                    p50(&d.busy),
                    p50(&d.nccl),
                    p50(&d.compute),
                    p50(&d.idle),
                    d.kernels_per_step_mean,
                    d.top_kernels.first().map(|t| format!("{} ({:.0}%)", truncate(&t.name, 40), t.share * 100.0)).unwrap_or_default()
                );
            }
        }
    }
    if !r.ranks.is_empty() {
        let _ = writeln!(
            out,
            "  {:<5} {:<16} {:<9} {:<24} {:>10} {:>10} {:>10}",
            "rank", "host", "role", "device", "peak GiB", "ITL p50", "ITL p99"
        );
        let (peaks, source) = super::build::rank_peaks(&r.ranks);
        for (k, &peak) in r.ranks.iter().zip(&peaks) {
            let device =
                k.gpu.as_ref().map(|g| format!("GPU{} {}", g.ordinal, g.name)).unwrap_or_else(|| "no GPU".into());
            let src = source_label(&source);
            let peak = peak as f64 / GIB;
            let _ = writeln!(
                out,
                "  {:<5} {:<16} {:<9} {:<24} {:>6.3} {:<4}{:>9.3} {:>10.3}",
                k.rank,
                truncate(&k.host, 16),
                format!("{:?}", k.role).to_lowercase(),
                truncate(&device, 24),
                peak,
                src,
                k.decode.p50_ns as f64 / 1e6,
                k.decode.p99_ns as f64 / 1e6
            );
        }
    }
    out
}

/// "ok", "INCOMPLETE", "FAILED on rank R" or "INTERRUPTED" (the reason names the signal).
pub(super) fn state_label(s: &Status) -> String {
    match s.state {
        State::Ok => "ok".to_string(),
        State::Incomplete => "INCOMPLETE".to_string(),
        State::Failed => format!("FAILED on rank {}", s.failed_rank.unwrap_or(-1)),
        State::Interrupted => "INTERRUPTED".to_string(),
    }
}

/// The short label of a peak's source in tables: "gpu" (NVML, this run's processes) or "host" (RSS).
pub(super) fn source_label(source: &MemorySource) -> &'static str {
    match source {
        MemorySource::GpuNvmlProcess => "gpu",
        MemorySource::HostRss => "host",
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

/// One line on what the measured run stands on: warmed up to a steady state, or not, with the
/// figures (rank 0's ITL p50 of each warm-up run, then the measured run's).
pub fn warmup_line(w: &WarmupSummary, tolerance_pct: f64) -> String {
    let figs: Vec<String> = w.key_ms.iter().map(|k| k.map_or_else(|| "n/a".into(), |v| format!("{v:.3}"))).collect();
    let (warm, measured) = figs.split_at(figs.len().saturating_sub(1));
    let series = if warm.is_empty() {
        String::new()
    } else {
        format!("ITL p50 (TTFT without decode) {} ms, measured {} ms", warm.join(" → "), measured.join(""))
    };
    match w.state {
        WarmupState::Steady => format!("warm-up: auto, {} run(s) until two in a row agreed within {tolerance_pct} %: steady state ({series})", w.runs),
        WarmupState::NotConverged => format!(
            "warning: warm-up: auto, {} run(s) and no two in a row within {tolerance_pct} %: the engine may not have reached a steady state ({series}; more with --warmup-max)",
            w.runs
        ),
        WarmupState::Fixed => format!("warm-up: {} run(s) (--warmup {}, not checked for a steady state; --warmup auto checks) ({series})", w.runs, w.runs),
        WarmupState::Cold => "warm-up: none (--warmup 0): cold, the first request of the process was measured, not a steady state".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--percentiles` reads the JSON's own histograms: p50 / p90 / p99 agree with the summary's.
    #[test]
    fn chosen_percentiles_come_from_the_histograms() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/results/h200/mock_all_ranks_3g_5g.json");
        let r = load(std::path::Path::new(path)).unwrap();
        let text = render_percentiles(path, &r, &[50.0, 90.0, 99.0, 99.99]).unwrap();
        let itl = text.lines().find(|l| l.trim_start().starts_with("ITL ") && !l.contains("rank")).unwrap();
        let s = r.summary.as_ref().unwrap();
        for v in [s.itl_ms.p50, s.itl_ms.p90, s.itl_ms.p99] {
            assert!(itl.contains(&format!("{v:.3}")), "{v} in {itl}");
        }
        assert_eq!(text.lines().filter(|l| l.contains("ITL rank")).count(), r.ranks.len());
        assert_eq!(parse_percentiles("50, p99.9,100").unwrap(), vec![50.0, 99.9, 100.0]);
        for bad in ["0", "101", "abc", "50,,90", ""] {
            assert!(parse_percentiles(bad).is_err(), "{bad}");
        }
    }
}
