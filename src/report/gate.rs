//! `tpprof compare BASE.json NEW.json --fail-if 'itl_p50>+5%'`: a regression gate for CI. Each
//! threshold names a figure, a direction and a limit — relative to the baseline (`+5%`, `-3%`) or
//! absolute in the figure's own unit (`itl_p50>12`: ms) — and is checked on every run after the
//! baseline. A figure a run lacks fails the gate (a gate that cannot see must not pass).
//!
//! With `--repeat` results on both sides (summary.repeat), the medians of the repeated runs are
//! compared, and a relative change counts only when it also leaves the run-to-run spread: the
//! ranges [min, max] of the two runs do not overlap. Noise within the spread is not a regression.

use std::fmt;
use std::str::FromStr;

use super::{RunReport, Spread};

const GIB: f64 = (1u64 << 30) as f64;

/// A figure the gate can check, by the name used on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    ItlP50,
    ItlP90,
    ItlP99,
    ItlMax,
    ItlMean,
    TtftP50,
    TtftP90,
    TtftP99,
    TtftMax,
    TtftMean,
    Throughput,
    DecodeTokS,
    PrefillTokS,
    TotalTime,
    PeakMemory,
    Goodput,
    DeviceStepP50,
}

/// (name, metric, unit): the table the parser, the messages and the help text share.
const METRICS: &[(&str, Metric, &str)] = &[
    ("itl_p50", Metric::ItlP50, "ms"),
    ("itl_p90", Metric::ItlP90, "ms"),
    ("itl_p99", Metric::ItlP99, "ms"),
    ("itl_max", Metric::ItlMax, "ms"),
    ("itl_mean", Metric::ItlMean, "ms"),
    ("ttft_p50", Metric::TtftP50, "ms"),
    ("ttft_p90", Metric::TtftP90, "ms"),
    ("ttft_p99", Metric::TtftP99, "ms"),
    ("ttft_max", Metric::TtftMax, "ms"),
    ("ttft_mean", Metric::TtftMean, "ms"),
    ("throughput", Metric::Throughput, "tok/s"),
    ("decode_tok_s", Metric::DecodeTokS, "tok/s"),
    ("prefill_tok_s", Metric::PrefillTokS, "tok/s"),
    ("total_time", Metric::TotalTime, "s"),
    ("peak_memory", Metric::PeakMemory, "GiB"),
    ("goodput", Metric::Goodput, "%"),
    ("device_step_p50", Metric::DeviceStepP50, "ms"),
];

impl Metric {
    pub fn name(self) -> &'static str {
        METRICS.iter().find(|(_, m, _)| *m == self).map(|(n, _, _)| *n).unwrap_or("?")
    }

    fn unit(self) -> &'static str {
        METRICS.iter().find(|(_, m, _)| *m == self).map(|(_, _, u)| *u).unwrap_or("")
    }

    /// Every name the gate accepts, for messages and help.
    pub fn names() -> String {
        METRICS.iter().map(|(n, _, _)| *n).collect::<Vec<_>>().join(", ")
    }

    /// The figure in a run's summary (peak memory: the largest rank's).
    fn value(self, r: &RunReport) -> Option<f64> {
        let s = r.summary.as_ref()?;
        Some(match self {
            Metric::ItlP50 => s.itl_ms.p50,
            Metric::ItlP90 => s.itl_ms.p90,
            Metric::ItlP99 => s.itl_ms.p99,
            Metric::ItlMax => s.itl_ms.max,
            Metric::ItlMean => s.itl_ms.mean,
            Metric::TtftP50 => s.ttft_ms.p50,
            Metric::TtftP90 => s.ttft_ms.p90,
            Metric::TtftP99 => s.ttft_ms.p99,
            Metric::TtftMax => s.ttft_ms.max,
            Metric::TtftMean => s.ttft_ms.mean,
            Metric::Throughput => s.throughput_tok_s,
            Metric::DecodeTokS => s.decode_tok_s?,
            Metric::PrefillTokS => s.prefill_tok_s?,
            Metric::TotalTime => s.total_time_s,
            Metric::PeakMemory => super::build::rank_peaks(&r.ranks).0.into_iter().max()? as f64 / GIB,
            Metric::Goodput => s.goodput.as_ref()?.share_pct,
            Metric::DeviceStepP50 => s.device_step_ms.as_ref()?.p50,
        })
    }

    /// The spread over `--repeat` runs, for the figures repeated runs record.
    fn spread(self, r: &RunReport) -> Option<&Spread> {
        let rep = r.summary.as_ref()?.repeat.as_ref()?;
        match self {
            Metric::ItlP50 => rep.itl_p50_ms.as_ref(),
            Metric::TtftP50 => rep.ttft_p50_ms.as_ref(),
            Metric::TotalTime => rep.wall_s.as_ref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Direction {
    /// `>`: fails when the figure rises beyond the limit.
    Above,
    /// `<`: fails when it falls beyond the limit.
    Below,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// Percent change against the baseline (signed as written: `+5%` is 5.0, `-3%` is -3.0).
    Relative(f64),
    /// The figure itself, in its unit.
    Absolute(f64),
}

/// One `--fail-if` threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub metric: Metric,
    pub direction: Direction,
    pub limit: Limit,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ThresholdError {
    #[error("--fail-if `{0}`: write METRIC>LIMIT or METRIC<LIMIT, e.g. 'itl_p50>+5%' (relative to the baseline) or 'itl_p50>12' (ms)")]
    Shape(String),
    #[error("--fail-if `{spec}`: unknown figure `{name}`; one of: {known}")]
    Metric { spec: String, name: String, known: String },
    #[error("--fail-if `{0}`: the limit is not a number (write +5% or 12.5)")]
    Number(String),
    #[error("--fail-if `{0}`: a relative limit needs the direction's sign: METRIC>+N% or METRIC<-N%")]
    Sign(String),
}

impl FromStr for Threshold {
    type Err = ThresholdError;

    fn from_str(spec: &str) -> Result<Threshold, ThresholdError> {
        let compact: String = spec.chars().filter(|c| !c.is_whitespace()).collect();
        let (at, direction) = match (compact.find('>'), compact.find('<')) {
            (Some(i), None) => (i, Direction::Above),
            (None, Some(i)) => (i, Direction::Below),
            _ => return Err(ThresholdError::Shape(spec.into())),
        };
        let (name, limit) = (&compact[..at], &compact[at + 1..]);
        let metric = METRICS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, m, _)| *m)
            .ok_or_else(|| ThresholdError::Metric { spec: spec.into(), name: name.into(), known: Metric::names() })?;
        let limit = match limit.strip_suffix('%') {
            Some(pct) => {
                let v: f64 = pct.parse().map_err(|_| ThresholdError::Number(spec.into()))?;
                let signed = pct.starts_with('+') || pct.starts_with('-');
                // `>+5%` and `<-5%` say what they mean; `>-5%` or a bare `>5%` is a typo waiting to pass.
                if !signed || (direction == Direction::Above) != (v >= 0.0) {
                    return Err(ThresholdError::Sign(spec.into()));
                }
                Limit::Relative(v)
            }
            None => Limit::Absolute(limit.parse().map_err(|_| ThresholdError::Number(spec.into()))?),
        };
        if matches!(limit, Limit::Relative(v) | Limit::Absolute(v) if !v.is_finite()) {
            return Err(ThresholdError::Number(spec.into()));
        }
        Ok(Threshold { metric, direction, limit })
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.direction {
            Direction::Above => '>',
            Direction::Below => '<',
        };
        match self.limit {
            Limit::Relative(v) => write!(f, "{}{op}{v:+}%", self.metric.name()),
            Limit::Absolute(v) => write!(f, "{}{op}{v}", self.metric.name()),
        }
    }
}

/// What one threshold found on one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The run's index in the compared files (1 = the first after the baseline).
    pub run: usize,
    pub threshold: Threshold,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Within the limit.
    Held { value: f64, base: Option<f64> },
    /// Beyond the limit: a regression.
    Crossed { value: f64, base: Option<f64> },
    /// Beyond the limit, but inside the run-to-run spread of repeated runs: not counted.
    WithinSpread { value: f64, base: f64, spread: Spread, base_spread: Spread },
    /// The run (or the baseline, for a relative limit) lacks the figure: counted as crossed.
    Missing { in_baseline: bool },
}

impl Finding {
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Crossed { .. } | Outcome::Missing { .. })
    }
}

/// Every threshold on every run after the baseline, in that order.
pub fn check(runs: &[&RunReport], thresholds: &[Threshold]) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some((base, rest)) = runs.split_first() else { return out };
    for (i, run) in rest.iter().enumerate() {
        for t in thresholds {
            out.push(Finding { run: i + 1, threshold: *t, outcome: judge(base, run, t) });
        }
    }
    out
}

fn judge(base: &RunReport, run: &RunReport, t: &Threshold) -> Outcome {
    let m = t.metric;
    // With repeated runs on both sides, the medians stand for the runs.
    let spreads = m.spread(base).zip(m.spread(run));
    let (b, v) = match spreads {
        Some((bs, rs)) => (Some(bs.median), Some(rs.median)),
        None => (m.value(base), m.value(run)),
    };
    let Some(v) = v else { return Outcome::Missing { in_baseline: false } };
    let beyond = |x: f64, limit: f64| match t.direction {
        Direction::Above => x > limit,
        Direction::Below => x < limit,
    };
    match t.limit {
        Limit::Absolute(limit) => {
            if beyond(v, limit) {
                Outcome::Crossed { value: v, base: b }
            } else {
                Outcome::Held { value: v, base: b }
            }
        }
        Limit::Relative(pct) => {
            let Some(b) = b else { return Outcome::Missing { in_baseline: true } };
            let Some(change) = super::change_pct(Some(b), Some(v)) else {
                return Outcome::Missing { in_baseline: true };
            };
            if !beyond(change, pct) {
                return Outcome::Held { value: v, base: Some(b) };
            }
            match spreads {
                // The ranges must not overlap in the direction of the change.
                Some((bs, rs))
                    if !match t.direction {
                        Direction::Above => rs.min > bs.max,
                        Direction::Below => rs.max < bs.min,
                    } =>
                {
                    Outcome::WithinSpread { value: v, base: b, spread: rs.clone(), base_spread: bs.clone() }
                }
                _ => Outcome::Crossed { value: v, base: Some(b) },
            }
        }
    }
}

/// One line per finding, the verdict last: what a CI log shows. `letter` names run i.
pub fn render(findings: &[Finding], letter: impl Fn(usize) -> String) -> String {
    let mut out = String::new();
    for f in findings {
        let m = f.threshold.metric;
        let u = m.unit();
        let run = letter(f.run);
        let vs = |value: f64, base: Option<f64>| match base {
            Some(b) => {
                let c = super::change_pct(Some(b), Some(value)).map(|c| format!(" ({c:+.1} %)")).unwrap_or_default();
                format!("{value:.3} {u} vs {:.3} {u}{c}", b)
            }
            None => format!("{value:.3} {u}"),
        };
        let line = match &f.outcome {
            Outcome::Held { value, base } => format!("ok      {run} {}: {}", f.threshold, vs(*value, *base)),
            Outcome::Crossed { value, base } => format!("FAILED  {run} {}: {}", f.threshold, vs(*value, *base)),
            Outcome::WithinSpread { value, base, spread, base_spread } => format!(
                "ok      {run} {}: {} — within the run-to-run spread ({:.3}–{:.3} vs {:.3}–{:.3} {u})",
                f.threshold,
                vs(*value, Some(*base)),
                spread.min,
                spread.max,
                base_spread.min,
                base_spread.max
            ),
            Outcome::Missing { in_baseline } => format!(
                "FAILED  {run} {}: {} has no {} figure",
                f.threshold,
                if *in_baseline { letter(0) } else { run.clone() },
                m.name()
            ),
        };
        out.push_str("gate: ");
        out.push_str(&line);
        out.push('\n');
    }
    let failed = findings.iter().filter(|f| f.failed()).count();
    if failed == 0 {
        out.push_str(&format!("gate: passed ({} check(s))\n", findings.len()));
    } else {
        out.push_str(&format!("gate: FAILED: {failed} of {} check(s) crossed their limit\n", findings.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_bad_ones_say_why() {
        let t: Threshold = "itl_p50>+5%".parse().unwrap();
        assert_eq!(t, Threshold { metric: Metric::ItlP50, direction: Direction::Above, limit: Limit::Relative(5.0) });
        let t: Threshold = " throughput < -3.5% ".parse().unwrap();
        assert_eq!(
            t,
            Threshold { metric: Metric::Throughput, direction: Direction::Below, limit: Limit::Relative(-3.5) }
        );
        let t: Threshold = "peak_memory>70".parse().unwrap();
        assert_eq!(t.limit, Limit::Absolute(70.0));
        assert_eq!(t.to_string(), "peak_memory>70");
        assert_eq!("itl_p50>+5%".parse::<Threshold>().unwrap().to_string(), "itl_p50>+5%");
        assert!(matches!("itl_p50=5".parse::<Threshold>(), Err(ThresholdError::Shape(_))));
        assert!(matches!("itl_p50>5<3".parse::<Threshold>(), Err(ThresholdError::Shape(_))));
        assert!(matches!("itl_p51>+5%".parse::<Threshold>(), Err(ThresholdError::Metric { .. })));
        assert!(matches!("itl_p50>abc%".parse::<Threshold>(), Err(ThresholdError::Number(_))));
        assert!(matches!("itl_p50>inf".parse::<Threshold>(), Err(ThresholdError::Number(_))));
        // A relative limit's sign must match its direction.
        assert!(matches!("itl_p50>5%".parse::<Threshold>(), Err(ThresholdError::Sign(_))));
        assert!(matches!("itl_p50>-5%".parse::<Threshold>(), Err(ThresholdError::Sign(_))));
        assert!(matches!("throughput<+5%".parse::<Threshold>(), Err(ThresholdError::Sign(_))));
        let e = "itl_p51>+5%".parse::<Threshold>().unwrap_err().to_string();
        assert!(e.contains("itl_p51") && e.contains("itl_p50") && e.contains("peak_memory"), "{e}");
    }

    /// A committed run (a mock on the H200 host) with its ITL p50 and TTFT p50 set.
    fn run(itl_p50: f64, ttft_p50: f64) -> RunReport {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/results/h200/mock_all_ranks_3g_5g.json");
        let mut r = crate::report::summary::load(std::path::Path::new(path)).unwrap();
        let s = r.summary.as_mut().unwrap();
        s.itl_ms.p50 = itl_p50;
        s.ttft_ms.p50 = ttft_p50;
        s.repeat = None;
        r
    }

    fn with_repeat(mut r: RunReport, itl: (f64, f64, f64)) -> RunReport {
        let s = r.summary.as_mut().unwrap();
        s.repeat = Some(crate::report::RepeatSummary {
            runs: 3,
            itl_p50_ms: Some(Spread { min: itl.0, median: itl.1, max: itl.2 }),
            ttft_p50_ms: None,
            wall_s: None,
        });
        r
    }

    fn t(s: &str) -> Threshold {
        s.parse().unwrap()
    }

    #[test]
    fn relative_and_absolute_limits_judge_each_run_after_the_baseline() {
        let (a, b, c) = (run(10.0, 100.0), run(10.4, 100.0), run(10.6, 90.0));
        let f = check(&[&a, &b, &c], &[t("itl_p50>+5%"), t("ttft_p50<-5%"), t("itl_p50>10.5")]);
        let failed: Vec<(usize, String)> =
            f.iter().filter(|f| f.failed()).map(|f| (f.run, f.threshold.to_string())).collect();
        // B: +4 % ITL held, TTFT unchanged, 10.4 ≤ 10.5. C: +6 % ITL, −10 % TTFT, 10.6 > 10.5.
        assert_eq!(failed, vec![(2, "itl_p50>+5%".into()), (2, "ttft_p50<-5%".into()), (2, "itl_p50>10.5".into())]);
        assert_eq!(f.len(), 6);
        // The baseline against itself: nothing moves.
        assert!(check(&[&a, &a], &[t("itl_p50>+0%")]).iter().all(|f| !f.failed()));
        let text = render(&f, |i| ["A", "B", "C"][i].to_string());
        assert!(text.contains("FAILED  C itl_p50>+5%: 10.600 ms vs 10.000 ms (+6.0 %)"), "{text}");
        assert!(text.contains("ok      B itl_p50>+5%: 10.400 ms vs 10.000 ms (+4.0 %)"), "{text}");
        assert!(text.ends_with("gate: FAILED: 3 of 6 check(s) crossed their limit\n"), "{text}");
        assert!(render(&f[..1], |_| "B".into()).ends_with("gate: passed (1 check(s))\n"));
    }

    #[test]
    fn a_missing_figure_fails_the_gate() {
        let a = run(10.0, 100.0);
        let mut b = run(10.0, 100.0);
        b.summary.as_mut().unwrap().goodput = None;
        let f = check(&[&a, &b], &[t("goodput<-1%")]);
        assert_eq!(f[0].outcome, Outcome::Missing { in_baseline: false });
        let mut failed = b.clone();
        failed.summary = None;
        assert!(check(&[&a, &failed], &[t("itl_p50>20")])[0].failed());
    }

    #[test]
    fn with_repeats_only_a_change_beyond_the_spread_counts() {
        let base = with_repeat(run(10.0, 100.0), (9.6, 10.0, 10.4));
        // Median +6 %, but the ranges overlap (10.3 < 10.4): noise.
        let noisy = with_repeat(run(99.0, 100.0), (10.3, 10.6, 11.0));
        // Median +8 % and every run above the baseline's slowest: a regression.
        let slower = with_repeat(run(99.0, 100.0), (10.5, 10.8, 11.0));
        let f = check(&[&base, &noisy, &slower], &[t("itl_p50>+5%")]);
        assert!(
            matches!(f[0].outcome, Outcome::WithinSpread { value, .. } if (value - 10.6).abs() < 1e-9),
            "{:?}",
            f[0]
        );
        assert!(!f[0].failed());
        // The medians were compared, not the recorded run's 99 ms.
        assert_eq!(f[1].outcome, Outcome::Crossed { value: 10.8, base: Some(10.0) });
        // Without repeats on both sides, the recorded figures are compared.
        let single = run(10.3, 100.0);
        assert_eq!(
            check(&[&base, &single], &[t("itl_p50>+5%")])[0].outcome,
            Outcome::Held { value: 10.3, base: Some(10.0) }
        );
    }
}
