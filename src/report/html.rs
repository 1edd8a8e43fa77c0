//! `tpprof report FILE... --html OUT.html`: saved runs as one self-contained page — the summary
//! tables, then charts drawn from what the JSONs hold (plot.rs: inline SVG, no script, no URL):
//! the ITL CDF merged and per rank (decoded from the HdrHistograms), ITL by position in the decode,
//! TTFT per sample, memory per rank over time with the phases and peaks, CUPTI's per-step GPU time.
//! Several files are overlaid, one colour per file. Data a JSON lacks gets a sentence, not a chart.
//! The page is written as `tpprof run` writes its JSON: never over an existing file without
//! --force, through a temp file renamed at the end.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::plot::{self, Band, BarChart, Line, LineChart, Mark, PlotError, Rgb, Scale};
use super::summary::LoadError;
use super::writer::{OutputFile, WriteError};
use super::*;
use crate::observe::cupti::DeviceActivity;
use crate::observe::memory::{GpuMemory, MemoryReport};
use crate::record::histogram::{HistogramError, HistogramSummary, LatencyHistogram};

const GIB: f64 = (1u64 << 30) as f64;

/// Why `tpprof report --html` wrote no page; one line naming the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{} already exists: pass --force to replace it, or choose another --html path", .0.display())]
    Exists(PathBuf),
    #[error("--html {} is a directory: give a file name, e.g. {}", .0.display(), .0.join("report.html").display())]
    IsDir(PathBuf),
    #[error("the directory of --html {} does not exist ({}): create it first, or choose another path", path.display(), dir.display())]
    NoDir { path: PathBuf, dir: PathBuf },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{file}: the {what} histogram is not HdrHistogram V2 base64 ({source}): the JSON was altered after tpprof wrote it; use the original or run the workload again")]
    Histogram { file: String, what: String, source: HistogramError },
    #[error(transparent)]
    Plot(#[from] PlotError),
}

impl HtmlError {
    /// The user's input is at fault (a file, the output path), not this machine (a full disk).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, HtmlError::Write(WriteError::Unwritable { .. }) | HtmlError::Plot(_))
    }
}

/// `tpprof report FILE... --html OUT`: loads every file (summary::load), renders the page and
/// writes it; returns the path written. The output is checked before anything is loaded.
pub fn write_report(files: &[PathBuf], out: &Path, force: bool) -> Result<PathBuf, HtmlError> {
    if out.is_dir() {
        return Err(HtmlError::IsDir(out.to_path_buf()));
    }
    if out.exists() && !force {
        return Err(HtmlError::Exists(out.to_path_buf()));
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(HtmlError::NoDir { path: out.to_path_buf(), dir });
    }
    let claimed = OutputFile::claim(out, force)?;
    let runs = files
        .iter()
        .map(|f| Ok((f.display().to_string(), super::summary::load(f)?)))
        .collect::<Result<Vec<_>, HtmlError>>()?;
    let page = render(&runs)?;
    match claimed.write_bytes(page.as_bytes())? {
        super::writer::Written::Yes(p) | super::writer::Written::KeptExisting(p) => Ok(p),
    }
}

/// The page of the given runs (file name as given, its report), in that order.
pub fn render(runs: &[(String, RunReport)]) -> Result<String, HtmlError> {
    let mut p = Page { html: String::new() };
    p.head(runs);
    p.summary_table(runs);
    p.itl_cdf(runs)?;
    p.itl_by_position(runs)?;
    p.ttft(runs)?;
    p.memory(runs)?;
    p.cupti(runs)?;
    p.html.push_str("</main>\n</body>\n</html>\n");
    Ok(p.html)
}

/// Text for HTML: the five characters that mean something there, escaped.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A run's short name in chart legends: letter, engine, TP degree, file name.
fn label(i: usize, file: &str, r: &RunReport) -> String {
    let name =
        Path::new(file).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| file.to_string());
    format!("{}: {} TP={} {name}", super::compare::letter(i), engine_name(r), r.config.world_size)
}

fn engine_name(r: &RunReport) -> String {
    r.engine.as_ref().map(|e| e.name.clone()).unwrap_or_else(|| r.config.engine.clone())
}

fn decode(file: &str, what: &str, s: &HistogramSummary) -> Result<LatencyHistogram, HtmlError> {
    LatencyHistogram::from_base64(&s.hdr_v2_base64).map_err(|source| HtmlError::Histogram {
        file: file.to_string(),
        what: what.to_string(),
        source,
    })
}

/// The order the memory phases happen in (`PHASES` is declaration order: `--repeat`'s earlier
/// measured runs, phase `generate`, come before the recorded run's prefill; an observer rank has
/// `generate` in place of prefill and decode).
const PHASE_ORDER: [&str; 7] = ["start", "engine_load", "prepare", "generate", "prefill", "decode", "finish"];

fn phase_color(phase: &str) -> Rgb {
    match phase {
        "engine_load" => (120, 120, 120),
        "prepare" => (230, 180, 20),
        "generate" => (148, 103, 189),
        "prefill" => (255, 127, 14),
        "decode" => (44, 160, 44),
        _ => (190, 190, 190),
    }
}

/// Each phase's span of time (name, from s, to s) on a rank's memory timeline. The sampler counts
/// each phase's readings and keeps every `stride`-th reading in the timeline, in time order, so
/// the k-th reading of the run sits at timeline point k / stride: the spans are exact to one kept
/// point.
pub fn phase_spans(m: &MemoryReport) -> Vec<(String, f64, f64)> {
    let t = &m.timeline.t_s;
    if t.is_empty() {
        return Vec::new();
    }
    let stride = m.timeline.stride.max(1);
    let at = |reading: u64| t[((reading / stride) as usize).min(t.len() - 1)];
    let mut spans = Vec::new();
    let mut first = 0u64;
    for name in PHASE_ORDER {
        let Some(p) = m.phase_peaks.iter().find(|p| p.phase == name) else { continue };
        if p.samples == 0 {
            continue;
        }
        spans.push((name.to_string(), at(first), at(first + p.samples)));
        first += p.samples;
    }
    spans
}

struct Page {
    html: String,
}

impl Page {
    fn push(&mut self, s: &str) {
        self.html.push_str(s);
    }

    fn figure(&mut self, kind: &str, svg: &str, caption: &str) {
        let _ =
            write!(self.html, "<figure data-plot=\"{kind}\">\n{svg}<figcaption>{caption}</figcaption>\n</figure>\n");
    }

    fn missing(&mut self, kind: &str, sentence: &str) {
        let _ = writeln!(self.html, "<p class=\"missing\" data-missing=\"{kind}\">{}</p>", esc(sentence));
    }

    fn head(&mut self, runs: &[(String, RunReport)]) {
        let _ = write!(
            self.html,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>tpprof report: {}</title>\n<style>\n{}</style>\n</head>\n<body>\n<main>\n",
            esc(&runs.iter().map(|(f, _)| Path::new(f).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()).collect::<Vec<_>>().join(", ")),
            STYLE
        );
        let _ = writeln!(
            self.html,
            "<h1>tpprof report</h1>\n<p>{} result file(s), written by <code>tpprof report --html</code> {}. Every chart is drawn from the JSONs; where a JSON lacks the data a sentence says so.</p>",
            runs.len(),
            esc(env!("CARGO_PKG_VERSION"))
        );
        self.push("<ul class=\"legend\">\n");
        for (i, (file, r)) in runs.iter().enumerate() {
            let _ = writeln!(
                self.html,
                "<li><span class=\"swatch\" style=\"background:{}\"></span>{}</li>",
                plot::css(plot::palette(i)),
                esc(&super::compare::legend(i, file, r))
            );
        }
        self.push("</ul>\n");
        if runs.len() > 1 {
            for n in super::compare::workload_notes(runs) {
                let _ = writeln!(self.html, "<p class=\"note\">Note: the runs' {}.</p>", esc(&n));
            }
        }
    }

    fn summary_table(&mut self, runs: &[(String, RunReport)]) {
        self.push("<h2 id=\"summary\">Summary</h2>\n<div class=\"wide\"><table>\n<thead><tr><th></th>");
        for (i, _) in runs.iter().enumerate() {
            let _ = write!(
                self.html,
                "<th><span class=\"swatch\" style=\"background:{}\"></span>{}</th>",
                plot::css(plot::palette(i)),
                super::compare::letter(i)
            );
        }
        self.push("</tr></thead>\n<tbody>\n");
        type Cell = dyn Fn(&str, &RunReport) -> Option<String>; // (file, its report) → the cell
        fn f(d: usize, v: f64) -> String {
            format!("{v:.d$}")
        }
        fn s(r: &RunReport) -> Option<&Summary> {
            r.summary.as_ref()
        }
        fn pct(p: &PercentilesMs, d: usize) -> String {
            format!("{} / {} / {} / {}", f(d, p.p50), f(d, p.p90), f(d, p.p99), f(d, p.max))
        }
        let rows: Vec<(&str, Box<Cell>)> = vec![
            (
                "engine",
                Box::new(|_, r| {
                    Some(
                        r.engine
                            .as_ref()
                            .map(|e| format!("{} ({})", e.name, e.kind))
                            .unwrap_or_else(|| r.config.engine.clone()),
                    )
                }),
            ),
            ("model", Box::new(|_, r| Some(r.config.model.clone()))),
            ("dtype", Box::new(|_, r| Some(r.config.dtype.clone()))),
            ("TP (ranks)", Box::new(|_, r| Some(r.config.world_size.to_string()))),
            (
                "GPU",
                Box::new(|_, r| {
                    Some(
                        r.ranks
                            .iter()
                            .find_map(|k| k.gpu.as_ref().map(|g| g.name.clone()))
                            .unwrap_or_else(|| "no GPU".into()),
                    )
                }),
            ),
            (
                "batch × prompt → generated",
                Box::new(|_, r| {
                    let prompt = match &r.config.prompts {
                        crate::workload::PromptSource::Random { tokens_per_prompt, .. } => {
                            tokens_per_prompt.to_string()
                        }
                        crate::workload::PromptSource::File { path } => format!("file {path}"),
                    };
                    Some(format!("{} × {prompt} → {}", r.config.batch, r.config.generated_tokens))
                }),
            ),
            ("--cupti", Box::new(|_, r| Some(if r.config.cupti { "yes" } else { "no" }.into()))),
            ("state", Box::new(|_, r| Some(super::summary::state_label(&r.status)))),
            (
                "warm-up",
                Box::new(|_, r| {
                    s(r).and_then(|s| s.warmup.as_ref())
                        .map(|w| format!("{:?}, {} run(s)", w.state, w.runs).to_lowercase())
                        .or_else(|| Some(format!("{} run(s)", r.config.warmup)))
                }),
            ),
            ("total s", Box::new(|_, r| s(r).map(|s| f(3, s.total_time_s)))),
            ("throughput tok/s", Box::new(|_, r| s(r).map(|s| f(1, s.throughput_tok_s)))),
            ("decode tok/s", Box::new(|_, r| s(r).and_then(|s| s.decode_tok_s).map(|v| f(1, v)))),
            ("TTFT ms p50 / p90 / p99 / max", Box::new(|_, r| s(r).map(|s| pct(&s.ttft_ms, 1)))),
            ("ITL ms p50 / p90 / p99 / max", Box::new(|_, r| s(r).map(|s| pct(&s.itl_ms, 3)))),
            ("ITL p50 ÷ decode floor", Box::new(|_, r| s(r).and_then(|s| s.itl_over_floor).map(|v| f(2, v)))),
            ("device step p50 ms", Box::new(|_, r| s(r).and_then(|s| s.device_step_ms.as_ref()).map(|d| f(3, d.p50)))),
            (
                "peak memory per rank GiB",
                Box::new(|_, r| {
                    if r.ranks.is_empty() {
                        return None;
                    }
                    let (peaks, source) = super::build::rank_peaks(&r.ranks);
                    let v: Vec<String> = peaks.iter().map(|&b| f(2, b as f64 / GIB)).collect();
                    Some(format!("{} ({})", v.join(" / "), super::summary::source_label(&source)))
                }),
            ),
            (
                "CUPTI NCCL % of step per rank",
                Box::new(|_, r| {
                    r.cupti.as_ref().map(|c| {
                        c.nccl_share
                            .iter()
                            .map(|x| x.map(|x| f(1, x * 100.0)).unwrap_or_else(|| "—".into()))
                            .collect::<Vec<_>>()
                            .join(" / ")
                    })
                }),
            ),
            ("engine load s", Box::new(|_, r| s(r).map(|s| f(1, s.engine_load_s)))),
        ];
        for (name, cell) in rows {
            let _ = write!(self.html, "<tr><th>{}</th>", esc(name));
            for (file, r) in runs {
                let _ = write!(self.html, "<td>{}</td>", esc(&cell(file, r).unwrap_or_else(|| "—".into())));
            }
            self.push("</tr>\n");
        }
        self.push("</tbody>\n</table></div>\n");
        for (i, (file, r)) in runs.iter().enumerate() {
            let _ = writeln!(
                self.html,
                "<details><summary>{}: <code>tpprof report {}</code></summary>\n<pre>{}</pre>\n</details>",
                super::compare::letter(i),
                esc(file),
                esc(&super::summary::render(r))
            );
        }
    }

    /// The ITL CDF: every file's merged histogram overlaid, then one chart per file with its ranks.
    fn itl_cdf(&mut self, runs: &[(String, RunReport)]) -> Result<(), HtmlError> {
        self.push("<h2 id=\"itl-cdf\">Inter-token latency: distribution</h2>\n");
        let mut chart = LineChart::new(
            "ITL CDF, merged over the engine ranks",
            "inter-token latency, ms (log scale)",
            "fraction of gaps ≤ x",
        );
        chart.x_scale = Scale::Log;
        chart.y_range = Some(0.0..1.02);
        let mut lacking = Vec::new();
        for (i, (file, r)) in runs.iter().enumerate() {
            match r.latency.as_ref().filter(|l| l.decode.count > 0) {
                Some(l) => {
                    let h = decode(file, "merged decode", &l.decode)?;
                    chart.lines.push(Line::new(
                        label(i, file, r),
                        plot::palette(i),
                        plot::staircase(&plot::cdf(&h, plot::CDF_POINTS)),
                    ));
                }
                None => lacking.push(super::compare::letter(i)),
            }
        }
        if !chart.lines.is_empty() {
            self.figure(
                "itl-cdf",
                &chart.svg()?,
                "Fraction of inter-token gaps at or below each latency, every engine rank's gaps together (<code>latency.decode</code>: the ranks' HdrHistograms merged by tpprof, decoded here bucket by bucket; each step of the curve is a recorded bucket at its highest equivalent value, as the JSON's percentiles are).",
            );
        }
        if !lacking.is_empty() {
            self.missing("itl-cdf", &format!("{}: no inter-token gaps in the JSON (no merged decode histogram, or fewer than two tokens per sample): no ITL CDF.", lacking.join(", ")));
        }
        for (i, (file, r)) in runs.iter().enumerate() {
            let ranks: Vec<&RankReport> =
                r.ranks.iter().filter(|k| k.role == Role::Engine && k.decode.count > 0).collect();
            if ranks.is_empty() {
                self.missing(
                    "itl-cdf-ranks",
                    &format!("{}: no rank has inter-token gaps: no per-rank ITL CDF.", super::compare::letter(i)),
                );
                continue;
            }
            let mut chart = LineChart::new(
                format!("ITL CDF per rank — {}", label(i, file, r)),
                "inter-token latency, ms (log scale)",
                "fraction of gaps ≤ x",
            );
            chart.x_scale = Scale::Log;
            chart.y_range = Some(0.0..1.02);
            for k in &ranks {
                let h = decode(file, &format!("rank {} decode", k.rank), &k.decode)?;
                let mut line = Line::new(
                    format!("rank {} ({} gaps)", k.rank, k.decode.count),
                    plot::palette(k.rank as usize),
                    plot::staircase(&plot::cdf(&h, plot::CDF_POINTS)),
                );
                line.width = 2;
                chart.lines.push(line);
            }
            if let Some(l) = r.latency.as_ref().filter(|l| l.decode.count > 0 && ranks.len() > 1) {
                let h = decode(file, "merged decode", &l.decode)?;
                let mut merged = Line::new("merged", (0, 0, 0), plot::staircase(&plot::cdf(&h, plot::CDF_POINTS)));
                merged.dashed = true;
                merged.width = 1;
                chart.lines.push(merged);
            }
            self.figure(
                "itl-cdf-ranks",
                &chart.svg()?,
                &format!("{}: each engine rank's own gaps (<code>ranks[].decode</code>, HdrHistogram), the merged curve dashed.", super::compare::letter(i)),
            );
        }
        Ok(())
    }

    fn itl_by_position(&mut self, runs: &[(String, RunReport)]) -> Result<(), HtmlError> {
        self.push("<h2 id=\"itl-position\">Inter-token latency against position in the decode</h2>\n");
        let mut chart = LineChart::new(
            "ITL p50 by tenth of the decode steps (rank 0)",
            "tenth of the decode steps (1 = first, 10 = last)",
            "ITL p50, ms",
        );
        chart.legend = plot::LegendAt::LowerRight;
        let mut lacking = Vec::new();
        for (i, (file, r)) in runs.iter().enumerate() {
            match r.summary.as_ref().and_then(|s| s.itl_p50_by_tenth_ms.as_ref()).filter(|t| !t.is_empty()) {
                Some(t) => {
                    let mut line = Line::new(
                        label(i, file, r),
                        plot::palette(i),
                        t.iter().enumerate().map(|(k, v)| ((k + 1) as f64, *v)).collect(),
                    );
                    line.dots = true;
                    chart.lines.push(line);
                }
                None => lacking.push(super::compare::letter(i)),
            }
        }
        if !chart.lines.is_empty() {
            self.figure(
                "itl-position",
                &chart.svg()?,
                "What it is: rank 0's median inter-token latency in each tenth of the decode steps, in step order (<code>summary.itl_p50_by_tenth_ms</code>), so a cost that grows with the context shows as a rising line. Rank by rank below, for runs of several engine ranks (<code>ranks[].itl_p50_by_tenth_ms</code>); every token of every rank is in <code>tpprof run --token-log</code>'s CSV.",
            );
        }
        if !lacking.is_empty() {
            self.missing(
                "itl-position",
                &format!("{}: the JSON holds no ITL by position (summary.itl_p50_by_tenth_ms is written by later tpprof builds, for runs with decode steps): no chart.", lacking.join(", ")),
            );
        }
        // Rank by rank, for runs of more than one engine rank: a rank whose step cost grows apart
        // from the others' (its own context, its own GPU's clock) shows as its own line.
        for (i, (file, r)) in runs.iter().enumerate() {
            let engines = r.ranks.iter().filter(|k| k.role == Role::Engine && k.decode.count > 0).count();
            if engines < 2 {
                continue;
            }
            let ranks: Vec<(&RankReport, &Vec<f64>)> = r
                .ranks
                .iter()
                .filter(|k| k.role == Role::Engine)
                .filter_map(|k| k.itl_p50_by_tenth_ms.as_ref().filter(|t| !t.is_empty()).map(|t| (k, t)))
                .collect();
            if ranks.is_empty() {
                self.missing(
                    "itl-position-ranks",
                    &format!(
                        "{}: the JSON holds no ITL by position per rank (ranks[].itl_p50_by_tenth_ms is written by later tpprof builds): no per-rank chart.",
                        super::compare::letter(i)
                    ),
                );
                continue;
            }
            let mut chart = LineChart::new(
                format!("ITL p50 by tenth of the decode steps per rank — {}", label(i, file, r)),
                "tenth of the decode steps (1 = first, 10 = last)",
                "ITL p50, ms",
            );
            chart.legend = plot::LegendAt::LowerRight;
            for (k, t) in &ranks {
                let mut line = Line::new(
                    format!("rank {}", k.rank),
                    plot::palette(k.rank as usize),
                    t.iter().enumerate().map(|(n, v)| ((n + 1) as f64, *v)).collect(),
                );
                line.dots = true;
                chart.lines.push(line);
            }
            self.figure(
                "itl-position-ranks",
                &chart.svg()?,
                &format!(
                    "{}: each engine rank's median inter-token latency in each tenth of its own decode steps (<code>ranks[].itl_p50_by_tenth_ms</code>).",
                    super::compare::letter(i)
                ),
            );
        }
        Ok(())
    }

    fn ttft(&mut self, runs: &[(String, RunReport)]) -> Result<(), HtmlError> {
        self.push("<h2 id=\"ttft\">Time to first token per sample</h2>\n");
        let mut chart = LineChart::new("TTFT per sample", "sample (request) index", "TTFT, ms");
        let mut lacking = Vec::new();
        for (i, (file, r)) in runs.iter().enumerate() {
            let points: Vec<(f64, f64)> =
                r.samples.iter().filter_map(|s| s.ttft_ms.map(|t| (s.index as f64, t))).collect();
            if points.is_empty() {
                lacking.push(super::compare::letter(i));
                continue;
            }
            let mut line = Line::new(label(i, file, r), plot::palette(i), points);
            line.dots = true;
            chart.lines.push(line);
        }
        if !chart.lines.is_empty() {
            self.figure("ttft", &chart.svg()?, "Each sample's time to first token, submit to its first token on rank 0's clock (<code>samples[].ttft_ms</code>); a batch is submitted together.");
        }
        if !lacking.is_empty() {
            self.missing(
                "ttft",
                &format!("{}: no sample has a first token in the JSON: no TTFT chart.", lacking.join(", ")),
            );
        }
        Ok(())
    }

    fn memory(&mut self, runs: &[(String, RunReport)]) -> Result<(), HtmlError> {
        self.push("<h2 id=\"memory\">Memory per rank over time</h2>\n");
        for (i, (file, r)) in runs.iter().enumerate() {
            let letter = super::compare::letter(i);
            let with_timeline: Vec<&RankReport> =
                r.ranks.iter().filter(|k| !k.memory.timeline.t_s.is_empty()).collect();
            if with_timeline.is_empty() {
                self.missing(
                    "memory",
                    &format!("{letter}: no memory timeline in the JSON (no ranks, or no readings): no memory chart."),
                );
                continue;
            }
            // GPU memory where every rank has a full GPU timeline, else every rank's host RSS.
            let gpu = with_timeline.iter().all(|k| {
                matches!(k.memory.gpu, GpuMemory::Measured { .. })
                    && k.memory.timeline.gpu_job_bytes.len() == k.memory.timeline.t_s.len()
            });
            let what = if gpu {
                "GPU memory of the job's processes (NVML)"
            } else {
                "host memory (RSS): no GPU memory measured"
            };
            let mut chart = LineChart::new(format!("{letter}: {what}"), "seconds since the run's start", "GiB");
            chart.legend = plot::LegendAt::LowerRight;
            for k in &with_timeline {
                let tl = &k.memory.timeline;
                let bytes = if gpu { &tl.gpu_job_bytes } else { &tl.rss_bytes };
                let points: Vec<(f64, f64)> = tl.t_s.iter().zip(bytes).map(|(t, b)| (*t, *b as f64 / GIB)).collect();
                let peak = match (&k.memory.gpu, gpu) {
                    (GpuMemory::Measured { job_peak, .. }, true) => *job_peak,
                    _ => k.memory.host.peak_rss,
                };
                let c = plot::palette(k.rank as usize);
                chart.lines.push(Line::new(
                    format!("rank {}: peak {:.2} GiB at {:.1} s", k.rank, peak.bytes as f64 / GIB, peak.at_s),
                    c,
                    plot::thin(points, 500),
                ));
                chart.marks.push(Mark { x: peak.at_s, y: peak.bytes as f64 / GIB, color: c });
            }
            let first = with_timeline[0];
            for (phase, x0, x1) in phase_spans(&first.memory) {
                chart.bands.push(Band { x0, x1, label: phase.replace('_', " "), color: phase_color(&phase) });
            }
            let tl = &first.memory.timeline;
            self.figure(
                "memory",
                &chart.svg()?,
                &format!(
                    "{}: each rank's {} from its memory timeline (<code>ranks[].memory.timeline</code>, a reading every {} ms{}). Shaded: rank {}'s phases of the run, placed by each phase's reading count (<code>memory.phase_peaks</code>; the ranks move through them together). Rings: each rank's peak as the sampler recorded it (every reading counts, also those the timeline thinned out).",
                    esc(&label(i, file, r)),
                    if gpu { "GPU memory held by this run's processes" } else { "resident set" },
                    first.memory.interval_ms,
                    if tl.stride > 1 { format!(", one in {} kept", tl.stride) } else { String::new() },
                    first.rank
                ),
            );
        }
        Ok(())
    }

    fn cupti(&mut self, runs: &[(String, RunReport)]) -> Result<(), HtmlError> {
        self.push("<h2 id=\"cupti\">GPU time per decode step (CUPTI)</h2>\n");
        let kinds: [(&str, Rgb, fn(&DeviceActivity) -> &Option<HistogramSummary>); 4] = [
            ("busy", (31, 119, 180), |d| &d.busy),
            ("NCCL", (214, 39, 40), |d| &d.nccl),
            ("compute", (44, 160, 44), |d| &d.compute),
            ("idle", (150, 150, 150), |d| &d.idle),
        ];
        for (i, (file, r)) in runs.iter().enumerate() {
            let letter = super::compare::letter(i);
            let devices: Vec<(i32, &DeviceActivity)> = r
                .ranks
                .iter()
                .flat_map(|k| {
                    k.cupti.iter().flat_map(|c| c.devices.iter()).filter(|d| d.steps > 0).map(move |d| (k.rank, d))
                })
                .collect();
            if devices.is_empty() {
                let why = if r.config.cupti {
                    "the run had --cupti but recorded no decode steps"
                } else {
                    "the run was made without --cupti"
                };
                self.missing("cupti", &format!("{letter}: no CUPTI data ({why}): no per-step GPU time chart."));
                continue;
            }
            let ms = |ns: u64| ns as f64 / 1e6;
            let chart = BarChart {
                title: format!("{letter}: GPU time per decode step, p50 (whisker: p90)"),
                y_desc: "ms per decode step".into(),
                groups: devices.iter().map(|(rank, d)| format!("rank {rank} GPU{}", d.device)).collect(),
                kinds: kinds.iter().map(|(n, c, _)| (n.to_string(), *c)).collect(),
                values: devices
                    .iter()
                    .map(|(_, d)| {
                        kinds.iter().map(|(_, _, get)| get(d).as_ref().map(|h| (ms(h.p50_ns), ms(h.p90_ns)))).collect()
                    })
                    .collect(),
            };
            let shares: Vec<String> = devices
                .iter()
                .map(|(rank, d)| {
                    format!(
                        "rank {rank}: busy {:.0} %, NCCL {:.0} %, {:.0} kernels/step",
                        d.busy_share * 100.0,
                        d.nccl_share * 100.0,
                        d.kernels_per_step_mean
                    )
                })
                .collect();
            self.figure(
                "cupti",
                &chart.svg()?,
                &format!(
                    "{}: per decode step, from each rank's CUPTI kernel records (<code>ranks[].cupti.devices[]</code>, histograms over {} steps): busy = time any kernel ran, NCCL = time an NCCL kernel ran (communication and waiting for the other ranks), compute = time another kernel ran, idle = step wall time − busy. Over the whole decode: {}.",
                    esc(&label(i, file, r)),
                    devices[0].1.steps,
                    esc(&shares.join("; "))
                ),
            );
        }
        Ok(())
    }
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#fafafa;color:#222}
main{max-width:1000px;margin:0 auto;padding:16px 24px;background:#fff}
h1{margin-top:8px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:14px;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
tbody th{font-weight:600;background:#f6f6f6;white-space:nowrap}td{font-variant-numeric:tabular-nums}
.swatch{display:inline-block;width:12px;height:12px;margin-right:6px;border-radius:2px;vertical-align:-1px}
ul.legend{list-style:none;padding:0;font-size:14px}ul.legend li{margin:3px 0}
div.wide{overflow-x:auto}figure{margin:16px 0}svg.plot{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#444;margin-top:4px}
p.missing{font-style:italic;color:#8a5a00;background:#fff8e6;padding:6px 10px;border-left:3px solid #e0a800}
p.note{color:#8a5a00}pre{font-size:12px;overflow-x:auto;background:#f6f6f6;padding:8px}details{margin:6px 0}
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::memory::{PhasePeak, Timeline};

    fn committed(name: &str) -> (String, RunReport) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/h200/tp-scaling-x4").join(name);
        (path.display().to_string(), super::super::summary::load(&path).unwrap())
    }

    fn count(page: &str, needle: &str) -> usize {
        page.matches(needle).count()
    }

    /// TP=1 without CUPTI and TP=4 with it (committed H200 results): one `<svg` per chart the data
    /// allows — the merged CDF, a rank CDF and a memory chart per file, TTFT, CUPTI for the second —
    /// and a sentence for each chart a JSON lacks the data for.
    #[test]
    fn one_svg_per_expected_plot() {
        let runs = [
            committed("qwen2.5-32b_fp16_tp1_10k-800_default.json"),
            committed("qwen2.5-32b_fp16_tp4_10k-800_cupti.json"),
        ];
        let page = render(&runs).unwrap();
        for (kind, n) in
            [("itl-cdf", 1), ("itl-cdf-ranks", 2), ("itl-position", 0), ("ttft", 1), ("memory", 2), ("cupti", 1)]
        {
            assert_eq!(count(&page, &format!("<figure data-plot=\"{kind}\">")), n, "{kind}");
        }
        assert_eq!(count(&page, "<svg"), 7);
        assert_eq!(count(&page, "</svg>"), 7);
        // The per-rank CDF of TP=4 has four ranks and the dashed merged line; TP=1 has no merged line.
        assert!(page.contains("rank 3 (799 gaps)"), "TP=4's rank 3 in its legend");
        // These JSONs predate itl_p50_by_tenth_ms; A has no CUPTI.
        assert!(page.contains("data-missing=\"itl-position\">A, B: the JSON holds no ITL by position"));
        assert!(page.contains("data-missing=\"cupti\">A: no CUPTI data (the run was made without --cupti)"));
        // B has four engine ranks but predates ranks[].itl_p50_by_tenth_ms; A has one rank: no sentence.
        assert!(page.contains("data-missing=\"itl-position-ranks\">B: the JSON holds no ITL by position per rank"));
        assert_eq!(count(&page, "class=\"missing\""), 3);
        // The memory chart shades the phases and marks each rank's peak.
        assert!(page.contains("\ndecode\n</text>") && page.contains("\nengine load\n</text>"), "phase legend");
        assert!(page.contains("rank 0: peak 67.83 GiB"), "TP=1's peak: 72831991808 B");
        // The legend names each file with its engine and TP.
        assert!(page.contains("A: cuda TP=1 qwen2.5-32b_fp16_tp1_10k-800_default.json"));
        assert!(page.contains("B: cuda TP=4 qwen2.5-32b_fp16_tp4_10k-800_cupti.json"));
    }

    /// What a JSON lacks gets a sentence in the page, never a chart of nothing and never a panic.
    #[test]
    fn missing_data_gives_sentences() {
        let (file, mut r) = committed("qwen2.5-32b_fp16_tp2_10k-800_cupti.json");
        for k in &mut r.ranks {
            k.memory.timeline = Timeline::default();
            k.cupti = None;
            k.decode = LatencyHistogram::new().summary();
        }
        r.cupti = None;
        r.latency = None;
        r.samples.iter_mut().for_each(|s| s.ttft_ms = None);
        let page = render(&[(file.clone(), r.clone())]).unwrap();
        assert_eq!(count(&page, "<svg"), 0, "nothing to draw");
        for kind in ["itl-cdf", "itl-cdf-ranks", "itl-position", "ttft", "memory", "cupti"] {
            assert_eq!(count(&page, &format!("data-missing=\"{kind}\"")), 1, "{kind}");
        }
        assert!(page.contains("the run had --cupti but recorded no decode steps"));
        // The summary table is there all the same.
        assert!(page.contains("<th>TP (ranks)</th><td>2</td>"));
        // Data that appears gets its chart: ITL by tenth.
        r.summary.as_mut().unwrap().itl_p50_by_tenth_ms = Some(vec![1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9]);
        let page = render(&[(file, r)]).unwrap();
        assert_eq!(count(&page, "<figure data-plot=\"itl-position\">"), 1);
        assert_eq!(count(&page, "<svg"), 1);
    }

    /// Each engine rank's ITL by tenth is its own line: rank 2 scripted to slow down late shows
    /// apart from the others, and a one-rank file gets no per-rank chart.
    #[test]
    fn itl_by_position_per_rank() {
        let (file, mut r) = committed("qwen2.5-32b_fp16_tp4_10k-800_cupti.json");
        for k in &mut r.ranks {
            let late = if k.rank == 2 { 0.5 } else { 0.0 };
            k.itl_p50_by_tenth_ms =
                Some((0..10).map(|d| 7.0 + 0.01 * d as f64 + late * (d >= 5) as u8 as f64).collect());
        }
        let page = render(&[(file, r), committed("qwen2.5-32b_fp16_tp1_10k-800_default.json")]).unwrap();
        assert_eq!(count(&page, "<figure data-plot=\"itl-position-ranks\">"), 1);
        assert!(page.contains("ITL p50 by tenth of the decode steps per rank — A: cuda TP=4"));
        for k in 0..4 {
            assert!(page.contains(&format!("\nrank {k}\n</text>")), "rank {k} in the legend");
        }
        assert!(!page.contains("data-missing=\"itl-position-ranks\""));
    }

    /// Nothing in the page reaches outside it: no URL, no external script, style, font or image.
    #[test]
    fn the_page_is_self_contained() {
        let runs = [
            committed("qwen2.5-32b_fp16_tp2_10k-800_default.json"),
            committed("qwen2.5-32b_fp16_tp2_10k-800_cupti.json"),
        ];
        let page = render(&runs).unwrap();
        for needle in ["http://", "https://", "src=", "href=", "url(", "@import", "<script", "<link", "<img", "<iframe"]
        {
            assert!(!page.contains(needle), "the page contains {needle:?}");
        }
        assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
        assert!(page.contains("<meta charset=\"utf-8\">"));
    }

    #[test]
    fn text_from_the_json_is_escaped() {
        let (file, mut r) = committed("qwen2.5-32b_fp16_tp1_10k-800_default.json");
        r.config.model = "<script>alert(1)</script>".into();
        let page = render(&[(file, r)]).unwrap();
        assert!(!page.contains("<script"), "model name reached the page unescaped");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    /// Phases placed by reading counts: 20 readings kept every 2nd (stride 2) at t = 0..9 s.
    #[test]
    fn phase_spans_follow_the_reading_counts() {
        let mut m = committed("qwen2.5-32b_fp16_tp1_10k-800_default.json").1.ranks[0].memory.clone();
        m.timeline = Timeline { t_s: (0..10).map(f64::from).collect(), stride: 2, ..Default::default() };
        let pp = |phase: &str, samples: u64| PhasePeak { phase: phase.into(), bytes: Some(1), samples };
        // In PHASES (declaration) order, as the JSON lists them; `generate` (--repeat) ran before prefill.
        m.phase_peaks = vec![
            pp("engine_load", 4),
            pp("prepare", 6),
            pp("prefill", 2),
            pp("decode", 6),
            pp("generate", 2),
            pp("finish", 0),
        ];
        let spans = phase_spans(&m);
        let expect = [
            ("engine_load", 0.0, 2.0),
            ("prepare", 2.0, 5.0),
            ("generate", 5.0, 6.0),
            ("prefill", 6.0, 7.0),
            ("decode", 7.0, 9.0),
        ];
        assert_eq!(spans.len(), expect.len(), "{spans:?}");
        for ((n, a, b), (en, ea, eb)) in spans.iter().zip(expect) {
            assert_eq!((n.as_str(), *a, *b), (en, ea, eb));
        }
        m.timeline = Timeline::default();
        assert!(phase_spans(&m).is_empty());
    }

    #[test]
    fn bad_output_paths_are_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let good = [PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/results/h200/tp-scaling-x4/qwen2.5-32b_fp16_tp1_10k-800_default.json"
        ))];
        let e = write_report(&good, &dir.path().join("no/such/dir/r.html"), false).unwrap_err();
        assert!(matches!(e, HtmlError::NoDir { .. }) && e.to_string().contains("create it first"), "{e}");
        let e = write_report(&good, dir.path(), false).unwrap_err();
        assert!(matches!(e, HtmlError::IsDir(_)), "{e}");
        let out = dir.path().join("r.html");
        std::fs::write(&out, "earlier").unwrap();
        let e = write_report(&good, &out, false).unwrap_err();
        assert!(matches!(e, HtmlError::Exists(_)) && e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier", "left as it was");
        let e = write_report(
            &[PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))],
            &dir.path().join("x.html"),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("is not a tpprof result JSON"), "{e}");
        assert!(!dir.path().join("x.html").exists(), "nothing written for bad input");
        assert_eq!(write_report(&good, &out, true).unwrap(), out);
        assert!(std::fs::read_to_string(&out).unwrap().contains("<svg"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left behind");
    }
}
