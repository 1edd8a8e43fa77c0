//! Rank 0 turns every rank's `RankReport` (gathered over MPI) and its own recording into the
//! `RunReport`: histograms merged exactly, the seed-compatible summary, per-sample results.

use super::*;
use crate::observe::memory::GpuMemory;
use crate::record::histogram::LatencyHistogram;
use crate::record::Recording;
use crate::workload::Workload;

const GIB: f64 = (1u64 << 30) as f64;

/// The part of the report that is known before the engine runs.
#[derive(Debug, Clone)]
pub struct Header {
    pub config: ConfigReport,
    pub environment: Environment,
    pub engine: Option<EngineInfo>,
    pub topology: Option<Topology>,
}

/// A rank's histogram that could not be read or merged at rank 0.
#[derive(Debug, thiserror::Error)]
#[error("rank {rank}: {source}")]
pub struct RankHistogramError {
    pub rank: i32,
    pub source: crate::record::histogram::HistogramError,
}

impl Header {
    /// A report for a run that failed on one or more ranks.
    pub fn failed(self, failures: &[(i32, String)], ranks: Vec<RankReport>) -> RunReport {
        let failures: Vec<Failure> =
            failures.iter().map(|(rank, reason)| Failure { rank: *rank, reason: reason.clone() }).collect();
        RunReport {
            schema: SCHEMA.into(),
            status: Status {
                state: State::Failed,
                failed_rank: failures.first().map(|f| f.rank),
                reason: failures.first().map(|f| f.reason.clone()),
                failures,
                interruption: None,
            },
            config: self.config,
            environment: self.environment,
            engine: self.engine,
            topology: self.topology,
            summary: None,
            latency: None,
            skew: None,
            cupti: None,
            ranks,
            samples: Vec::new(),
        }
    }

    /// A report for a run a signal or `--timeout` ended: what reached rank 0 (its own rank report
    /// first), no summary (the figures of a part of a run are not the run's: `compare` treats
    /// them as missing), `reason` one line saying where it stopped. State `interrupted` after a
    /// signal; `failed` when a rank did not answer (its process died or was killed: mpirun then
    /// sends SIGTERM to the others), each such rank a failure, or when `--timeout` passed, each
    /// rank that made no progress a failure ([`Interruption::stuck`]).
    pub fn interrupted(self, interruption: Interruption, ranks: Vec<RankReport>) -> RunReport {
        let where_ = |rank: i32| {
            interruption
                .reached
                .iter()
                .find(|r| r.rank == rank)
                .map(|r| format!("{}, {} token{} so far", r.phase, r.tokens, if r.tokens == 1 { "" } else { "s" }))
        };
        let at = where_(0).map(|w| format!("; rank 0 was in {w}")).unwrap_or_default();
        let names = |r: &[i32]| {
            format!(
                "rank{} {}",
                if r.len() > 1 { "s" } else { "" },
                r.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
            )
        };
        let lost = &interruption.not_gathered;
        let lost_reason = "lost: no answer to rank 0 when the run was interrupted (the process died or was killed)";
        let (state, reason, failures): (State, String, Vec<Failure>) = match interruption.cause {
            StopCause::Timeout => {
                let after = interruption.timeout_s.unwrap_or(0.0);
                let stuck = interruption.stuck();
                let failures = stuck
                    .iter()
                    .map(|&rank| Failure {
                        rank,
                        reason: match where_(rank) {
                            Some(w) => format!("made no progress within --timeout {after:.1} s: still in {w}"),
                            None => format!("made no progress within --timeout {after:.1} s: {lost_reason}"),
                        },
                    })
                    .collect();
                let first = stuck.first().and_then(|&r| where_(r)).map(|w| format!(" (in {w})")).unwrap_or_default();
                let reason = format!(
                    "the run did not finish within --timeout {after:.1} s: {} made no progress{first}",
                    names(&stuck)
                );
                (State::Failed, reason, failures)
            }
            StopCause::ProcessEnd => {
                let (rank, call) = interruption
                    .process_end
                    .as_ref()
                    .map_or((interruption.signal_rank.unwrap_or(0), "an exit call".to_string()), |e| {
                        (e.rank, e.call.clone())
                    });
                let in_ = where_(rank).map(|w| format!(" in {w}")).unwrap_or_default();
                let mut failures = vec![Failure {
                    rank,
                    reason: format!(
                        "its process was ended from inside by {call}{in_} (not by tpprof: the engine, a library it loaded, or the MPI library)"
                    ),
                }];
                failures.extend(
                    lost.iter().filter(|&&r| r != rank).map(|&r| Failure { rank: r, reason: lost_reason.into() }),
                );
                let reason = format!(
                    "rank {rank}'s process was ended from inside by {call}{in_} (the engine, a library it loaded, or the MPI library); every rank exits 1"
                );
                (State::Failed, reason, failures)
            }
            StopCause::Signal => {
                let signal = format!(
                    "{} on rank {}",
                    interruption.signal.as_deref().unwrap_or("a signal"),
                    interruption.signal_rank.unwrap_or(0)
                );
                let failures: Vec<Failure> =
                    lost.iter().map(|&rank| Failure { rank, reason: lost_reason.into() }).collect();
                match lost.as_slice() {
                    [] => (State::Interrupted, format!("interrupted by {signal}{at}"), failures),
                    r => (
                        State::Failed,
                        format!("{} lost (no answer to rank 0: died or killed); then {signal}{at}", names(r)),
                        failures,
                    ),
                }
            }
        };
        RunReport {
            schema: SCHEMA.into(),
            status: Status {
                state,
                failed_rank: failures.first().map(|f| f.rank),
                reason: Some(reason),
                failures,
                interruption: Some(interruption),
            },
            config: self.config,
            environment: self.environment,
            engine: self.engine,
            topology: self.topology,
            summary: None,
            latency: None,
            skew: None,
            cupti: None,
            ranks,
            samples: Vec::new(),
        }
    }

    /// The report of a run that finished on every rank. `root` is rank 0's own recording (rank 0 is
    /// always an engine rank); `ranks` are all ranks' reports in rank order.
    pub fn finished(
        self,
        workload: &Workload,
        root: &Recording,
        ranks: Vec<RankReport>,
    ) -> Result<RunReport, RankHistogramError> {
        let mut ttft = LatencyHistogram::new();
        let mut decode = LatencyHistogram::new();
        for r in ranks.iter().filter(|r| r.role == Role::Engine) {
            let merge = |into: &mut LatencyHistogram, s: &HistogramSummary| -> Result<(), RankHistogramError> {
                let at = |source| RankHistogramError { rank: r.rank, source };
                let h = LatencyHistogram::from_base64(&s.hdr_v2_base64).map_err(at)?;
                into.add(&h).map_err(at)
            };
            merge(&mut ttft, &r.ttft)?;
            merge(&mut decode, &r.decode)?;
        }
        let (ttft, decode) = (ttft.summary(), decode.summary());
        let mut device = LatencyHistogram::new();
        let mut has_device = false;
        for r in ranks.iter().filter(|r| r.role == Role::Engine) {
            if let Some(s) = &r.device_decode {
                let at = |source| RankHistogramError { rank: r.rank, source };
                let h = LatencyHistogram::from_base64(&s.hdr_v2_base64).map_err(at)?;
                device.add(&h).map_err(at)?;
                has_device = true;
            }
        }
        let floor_ms = ranks
            .iter()
            .filter_map(|r| r.engine_stats.as_ref()?.get("floor_step_ms")?.as_f64())
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));

        let samples = sample_reports(workload, root, &ranks, self.config.record_tokens);
        let generated: u64 = samples.iter().map(|s| s.generated as u64).sum();
        let requested: u64 = samples.iter().map(|s| s.requested as u64).sum();
        let total_ns = root.last_token_ns().map(|t| t.saturating_sub(root.submit_ns)).unwrap_or(0);
        let total_s = total_ns as f64 / 1e9;
        let (peak_memory_gib, peak_memory_source) = peaks(&ranks);
        let prefill_ns = root.prefill_end_ns().map(|t| t.saturating_sub(root.submit_ns));
        let decode_ns = match (root.prefill_end_ns(), root.last_token_ns()) {
            (Some(a), Some(b)) if b > a => Some(b - a),
            _ => None,
        };
        let decode_tokens = generated.saturating_sub(samples.iter().filter(|s| s.generated > 0).count() as u64);
        let summary = Summary {
            total_time_s: total_s,
            throughput_tok_s: if total_s > 0.0 { generated as f64 / total_s } else { 0.0 },
            generated_tokens: generated,
            requested_tokens: requested,
            prompt_tokens: workload.prompt_tokens(),
            peak_memory_gib,
            peak_memory_source,
            ttft_ms: PercentilesMs::from(&ttft),
            itl_ms: PercentilesMs::from(&decode),
            prefill_tok_s: prefill_ns.filter(|&n| n > 0).map(|n| workload.prompt_tokens() as f64 / (n as f64 / 1e9)),
            decode_tok_s: decode_ns.map(|n| decode_tokens as f64 / (n as f64 / 1e9)),
            engine_load_s: ranks.iter().map(|r| r.timing.create_s).fold(0.0, f64::max),
            itl_over_floor: floor_ms.filter(|&f| f > 0.0 && decode.count > 0).map(|f| (decode.p50_ns as f64 / 1e6) / f),
            device_step_ms: has_device.then(|| PercentilesMs::from(&device.summary())),
            itl_p50_by_tenth_ms: root.decode_deciles_ms(),
            warmup: Some(warmup_summary(&self.config, &ranks, &ttft, &decode)),
            stationarity: None,
            goodput: self.config.slo.as_ref().map(|slo| Goodput::of(slo, &samples, total_s)),
            repeat: self.config.repeat.filter(|&n| n > 1).and_then(|_| {
                let r0 = ranks.iter().find(|r| r.rank == 0)?;
                let recorded = WarmupRun {
                    wall_s: r0.timing.generate_s.unwrap_or(total_s),
                    ttft_ms: (r0.ttft.count > 0).then(|| r0.ttft.p50_ns as f64 / 1e6),
                    itl_p50_ms: (r0.decode.count > 0).then(|| r0.decode.p50_ns as f64 / 1e6),
                    tokens: r0.tokens_generated,
                };
                Some(RepeatSummary::of(&[r0.timing.repeat_runs.clone(), vec![recorded]].concat()))
            }),
            merge_s: None, // set by the run once the report is assembled
        };
        let summary = Summary {
            stationarity: Some(stationarity(&summary, self.config.warmup_tolerance_pct.unwrap_or(5.0))),
            ..summary
        };

        let mut problems = Vec::new();
        let short: Vec<String> = samples
            .iter()
            .filter(|s| s.generated < s.requested)
            .map(|s| {
                format!("sample {} got {} of {} tokens ({:?})", s.index, s.generated, s.requested, s.finish_reason)
            })
            .collect();
        problems.extend(short);
        if samples.iter().any(|s| !s.ranks_agree) {
            problems.push("tensor-parallel ranks disagree on the generated tokens".into());
        }
        for r in &ranks {
            problems.extend(r.anomalies.iter().map(|a| format!("rank {}: {a}", r.rank)));
        }
        let status = Status {
            state: if problems.is_empty() { State::Ok } else { State::Incomplete },
            failed_rank: None,
            reason: (!problems.is_empty()).then(|| problems.join("; ")),
            failures: Vec::new(),
            interruption: None,
        };
        Ok(RunReport {
            schema: SCHEMA.into(),
            status,
            config: self.config,
            environment: self.environment,
            engine: self.engine,
            topology: self.topology,
            summary: Some(summary),
            latency: Some(Latency { ttft, decode }),
            skew: None,
            cupti: None,
            ranks,
            samples,
        })
    }
}

/// What the measured run stands on: rank 0's warm-up runs, the policy, and whether it reached a
/// steady state.
fn warmup_summary(
    config: &ConfigReport,
    ranks: &[RankReport],
    ttft: &HistogramSummary,
    decode: &HistogramSummary,
) -> WarmupSummary {
    let runs: &[WarmupRun] = ranks.first().map(|r| r.timing.warmup_runs.as_slice()).unwrap_or(&[]);
    let mode = config.warmup_mode.unwrap_or(WarmupMode::Fixed);
    let state = match mode {
        WarmupMode::Auto if warmup_converged(runs, config.warmup_tolerance_pct.unwrap_or(5.0)) => WarmupState::Steady,
        WarmupMode::Auto => WarmupState::NotConverged,
        WarmupMode::Fixed if runs.is_empty() && config.warmup == 0 => WarmupState::Cold,
        WarmupMode::Fixed => WarmupState::Fixed,
    };
    let measured = if decode.count > 0 {
        Some(decode.p50_ns as f64 / 1e6)
    } else {
        (ttft.count > 0).then(|| ttft.p50_ns as f64 / 1e6)
    };
    let mut key_ms: Vec<Option<f64>> = runs.iter().map(WarmupRun::key_ms).collect();
    key_ms.push(measured);
    WarmupSummary { mode, runs: runs.len() as u32, state, key_ms }
}

/// The measured run against its last warm-up run, and its first tenth against its last.
fn stationarity(s: &Summary, tolerance_pct: f64) -> Stationarity {
    let pct = |a: f64, b: f64| (a > 0.0).then(|| (b - a) / a * 100.0);
    let mut warnings = Vec::new();
    let mut vs_last_warmup_pct = None;
    if let Some(w) = &s.warmup {
        if let [.., Some(last), Some(measured)] = w.key_ms[..] {
            vs_last_warmup_pct = pct(last, measured);
            if !agrees(last, measured, tolerance_pct) {
                warnings.push(format!(
                    "the measured ITL p50 {measured:.3} ms differs {:+.1} % from the last warm-up run's {last:.3} ms (tolerance {tolerance_pct} %): still warming up, or run-to-run variance",
                    vs_last_warmup_pct.unwrap_or(0.0)
                ));
            }
        }
    }
    let mut first_to_last_tenth_pct = None;
    if let Some(t) = s.itl_p50_by_tenth_ms.as_ref().filter(|t| t.len() == 10) {
        let (first, last) = (t[0], t[9]);
        first_to_last_tenth_pct = pct(first, last);
        if !agrees(first, last, tolerance_pct) {
            warnings.push(format!(
                "the ITL p50 drifts {:+.1} % within the run, {first:.3} ms in the first tenth of the decode steps to {last:.3} ms in the last (tolerance {tolerance_pct} %; a growing context explains some growth)",
                first_to_last_tenth_pct.unwrap_or(0.0)
            ));
        }
    }
    Stationarity { tolerance_pct, vs_last_warmup_pct, first_to_last_tenth_pct, warnings }
}

fn sample_reports(
    workload: &Workload,
    root: &Recording,
    ranks: &[RankReport],
    record_tokens: bool,
) -> Vec<SampleReport> {
    root.samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mine = ranks.first().and_then(|r| r.samples.get(i));
            let agree = ranks
                .iter()
                .filter(|r| r.role == Role::Engine)
                .all(|r| r.samples.get(i).map(|x| Some(x) == mine).unwrap_or(false));
            SampleReport {
                index: i as u32,
                prompt_tokens: workload.prompts.get(i).map(|p| p.len() as u32).unwrap_or(0),
                requested: s.requested,
                generated: s.generated,
                finish_reason: s.finish_reason,
                ttft_ms: s.first_token_ns.map(|t| t.saturating_sub(root.submit_ns) as f64 / 1e6),
                e2e_ms: s.e2e_ns(root.submit_ns).map(|t| t as f64 / 1e6),
                tpot_ms: s.tpot_ns().map(|t| t / 1e6),
                itl_ms: (!s.itl_ns.is_empty()).then(|| {
                    let q = |x: f64| s.itl_quantile_ns(x).unwrap_or(0) as f64 / 1e6;
                    SampleItl { p50: q(0.5), p90: q(0.9), p99: q(0.99), max: q(1.0), count: s.itl_ns.len() as u64 }
                }),
                ranks_agree: agree,
                tokens: record_tokens.then(|| s.tokens.clone()),
            }
        })
        .collect()
}

/// Per-rank peak: the GPU memory of this run's processes on the rank's GPU when every rank measured
/// a non-zero one (the engine lives on the GPUs; a ONE_PROCESS engine's allocations on GPU r count
/// for rank r), else the host RSS peak (the larger of the sampled peak and the kernel's VmHWM) — e.g.
/// the cpu engine or the mock on a GPU machine. Never a 0 that looks like a GPU figure.
fn peaks(ranks: &[RankReport]) -> (Vec<f64>, MemorySource) {
    let (bytes, source) = rank_peaks(ranks);
    (bytes.into_iter().map(|b| b as f64 / GIB).collect(), source)
}

/// Each rank's peak in bytes and the one source they all come from: the job's GPU memory (NVML)
/// when every rank's GPU holds some of this run's memory, else the host's (peak RSS / VmHWM) — an
/// engine that never touches the GPU (the cpu engine, python:test) on a GPU host is not "0 GiB of GPU".
/// `summary.peak_memory_gib`, the summary's rank table and `compare` all use this one rule.
pub(super) fn rank_peaks(ranks: &[RankReport]) -> (Vec<u64>, MemorySource) {
    let all_gpu = !ranks.is_empty()
        && ranks.iter().all(|r| matches!(r.memory.gpu, GpuMemory::Measured { job_peak, .. } if job_peak.bytes > 0));
    let bytes = ranks
        .iter()
        .map(|r| match (&r.memory.gpu, all_gpu) {
            (GpuMemory::Measured { job_peak, .. }, true) => job_peak.bytes,
            _ => r.memory.host.peak_rss.bytes.max(r.memory.host.vm_hwm_bytes.unwrap_or(0)),
        })
        .collect();
    (bytes, if all_gpu { MemorySource::GpuNvmlProcess } else { MemorySource::HostRss })
}

/// The cross-rank skew of decode steps: `steps[r]` are rank r's (start, end) on its own clock,
/// `offsets[r]` its clock minus rank 0's. None unless at least two ranks measured steps.
pub fn skew(steps: &[Vec<(u64, u64)>], offsets: &[i64]) -> Option<Skew> {
    let ranks: Vec<usize> = (0..steps.len()).filter(|&r| !steps[r].is_empty()).collect();
    if ranks.len() < 2 || offsets.len() != steps.len() {
        return None;
    }
    let n = ranks.iter().map(|&r| steps[r].len()).min().unwrap_or(0);
    let on_root = |r: usize, t: u64| t as i128 - offsets[r] as i128;
    let mut start = LatencyHistogram::new();
    let mut end = LatencyHistogram::new();
    let mut last = vec![0u64; steps.len()];
    for i in 0..n {
        let s: Vec<(usize, i128)> = ranks.iter().map(|&r| (r, on_root(r, steps[r][i].0))).collect();
        let e: Vec<i128> = ranks.iter().map(|&r| on_root(r, steps[r][i].1)).collect();
        let (lo, hi) = (s.iter().map(|x| x.1).min().unwrap_or(0), s.iter().map(|x| x.1).max().unwrap_or(0));
        start.record((hi - lo) as u64);
        end.record((e.iter().max().unwrap_or(&0) - e.iter().min().unwrap_or(&0)) as u64);
        if let Some((r, _)) = s.iter().max_by_key(|x| x.1) {
            last[*r] += 1;
        }
    }
    Some(Skew {
        steps: n as u64,
        clock_offsets_ns: offsets.to_vec(),
        start_spread: start.summary(),
        end_spread: end.summary(),
        last_to_start_steps: last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_uses_the_clock_offsets_and_names_the_late_rank() {
        // Rank 1's clock runs 1 ms ahead; on rank 0's clock it starts every step 30 µs later.
        let r0: Vec<(u64, u64)> = (0..10).map(|i| (i * 10_000_000, i * 10_000_000 + 8_000_000)).collect();
        let r1: Vec<(u64, u64)> = r0.iter().map(|&(a, b)| (a + 1_000_000 + 30_000, b + 1_000_000 + 2_000)).collect();
        let s = skew(&[r0.clone(), r1], &[0, 1_000_000]).unwrap();
        assert_eq!(s.steps, 10);
        assert_eq!(s.last_to_start_steps, vec![0, 10]);
        assert_eq!(s.start_spread.count, 10);
        assert!(s.start_spread.p50_ns >= 30_000 && s.start_spread.p50_ns <= 30_100, "{}", s.start_spread.p50_ns);
        assert!(s.end_spread.max_ns >= 2_000 && s.end_spread.max_ns <= 2_010);
        // One rank, or no device steps: no skew.
        assert!(skew(&[r0.clone()], &[0]).is_none());
        assert!(skew(&[r0, vec![]], &[0, 0]).is_none());
    }
}
