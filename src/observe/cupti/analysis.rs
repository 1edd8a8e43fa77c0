//! The analysis of `--cupti`: kernel records, per-step windows (from the engine's device steps or
//! from host token times), per-device activity, the rank's report, and the cross-rank summary.
//! Plain Rust over plain records, no FFI: tested without a GPU.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::record::histogram::{HistogramSummary, LatencyHistogram};

/// One kernel execution, on CLOCK_MONOTONIC (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    pub start: u64,
    pub end: u64,
    /// CUDA device ordinal in the process that launched it.
    pub device: u32,
    pub stream: u32,
    /// Index into the name table.
    pub name: u32,
    /// CUPTI's correlation id: the API call that launched it (every kernel node of one CUDA graph
    /// launch shares the launch's id).
    #[serde(default)]
    pub corr: u32,
}

/// NCCL's device kernels (`ncclDevKernel_AllReduce_…`, older `ncclKernel_…`), mangled or not.
pub fn is_nccl(name: &str) -> bool {
    name.contains("ncclDevKernel") || name.contains("ncclKernel")
}

/// Length of the union of intervals (they may overlap: several streams), each clipped to [lo, hi).
fn union_ns(iv: &mut [(u64, u64)], lo: u64, hi: u64) -> u64 {
    iv.sort_unstable();
    let (mut total, mut cur) = (0u64, None::<(u64, u64)>);
    for &(a, b) in iv.iter() {
        let (a, b) = (a.max(lo), b.min(hi));
        if b <= a {
            continue;
        }
        cur = match cur {
            Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                total += cb - ca;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    total + cur.map(|(a, b)| b - a).unwrap_or(0)
}

/// GPU activity inside one window (a decode step, or the prefill).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Activity {
    /// The window's length.
    pub wall_ns: u64,
    /// Time at least one kernel ran.
    pub busy_ns: u64,
    /// Time at least one NCCL kernel ran.
    pub nccl_ns: u64,
    /// Time at least one other kernel ran.
    pub compute_ns: u64,
    /// Kernels that started in the window.
    pub kernels: u32,
    /// NCCL kernels among them.
    pub nccl_kernels: u32,
}

impl Activity {
    fn of(kernels: &[&Kernel], nccl: &[bool], lo: u64, hi: u64) -> Activity {
        let mut all: Vec<(u64, u64)> = kernels.iter().map(|k| (k.start, k.end)).collect();
        let mut comm: Vec<(u64, u64)> =
            kernels.iter().filter(|k| nccl[k.name as usize]).map(|k| (k.start, k.end)).collect();
        let mut comp: Vec<(u64, u64)> =
            kernels.iter().filter(|k| !nccl[k.name as usize]).map(|k| (k.start, k.end)).collect();
        Activity {
            wall_ns: hi.saturating_sub(lo),
            busy_ns: union_ns(&mut all, lo, hi),
            nccl_ns: union_ns(&mut comm, lo, hi),
            compute_ns: union_ns(&mut comp, lo, hi),
            kernels: kernels.len() as u32,
            nccl_kernels: comm.len() as u32,
        }
    }
}

/// Where the decode steps came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepSource {
    /// The engine's device step times (CUDA events): windows reach halfway into the gaps between
    /// steps, so a small error in placing the events on the host clock moves no kernel.
    DeviceEvents,
    /// Host token times: step s runs from the moment every sample had its token s−1 to the moment
    /// every sample had token s.
    HostTokens,
}

/// Decode-step windows [lo, hi) from device step times (start, end), each widened halfway into the
/// gaps around it; the reported wall time stays the device step's own length.
pub fn windows_from_device_steps(steps: &[(u64, u64)]) -> Vec<(u64, u64, u64)> {
    let n = steps.len();
    (0..n)
        .map(|i| {
            let (s, e) = steps[i];
            let lo = if i > 0 {
                steps[i - 1].1 + s.saturating_sub(steps[i - 1].1) / 2
            } else if n > 1 {
                s.saturating_sub(steps[1].0.saturating_sub(steps[0].1) / 2)
            } else {
                s
            };
            let hi = if i + 1 < n {
                e + steps[i + 1].0.saturating_sub(e) / 2
            } else if n > 1 {
                e + steps[n - 1].0.saturating_sub(steps[n - 2].1) / 2
            } else {
                e
            };
            (lo, hi.max(lo), e.saturating_sub(s))
        })
        .collect()
}

/// Decode-step windows from host token times: `tokens` are (sample, step, t_ns on CLOCK_MONOTONIC)
/// of a batch of `batch` samples of at most `max_steps` tokens each (events outside those bounds,
/// and repeats, are ignored: the recording reports them as anomalies). Step s runs from the moment
/// every running sample had token s−1 to the moment every sample still running had token s.
/// Returns (first token moment, windows).
pub fn windows_from_tokens(
    tokens: &[(u32, u32, u64)],
    batch: u32,
    max_steps: u32,
) -> Option<(u64, Vec<(u64, u64, u64)>)> {
    let n = (max_steps as usize).min(tokens.len());
    let mut done = vec![None::<u64>; n];
    let mut seen = std::collections::HashSet::new();
    for &(sample, step, t) in tokens {
        if sample >= batch || step as usize >= n || !seen.insert((sample, step)) {
            continue;
        }
        let d = &mut done[step as usize];
        *d = Some(d.map_or(t, |x: u64| x.max(t)));
    }
    let first = done.first().copied().flatten()?;
    let mut w = Vec::new();
    let mut prev = first;
    for d in done.iter().skip(1) {
        let Some(t) = *d else { break };
        let t = t.max(prev);
        w.push((prev, t, t - prev));
        prev = t;
    }
    Some((first, w))
}

/// Per-step activity of the kernels of one device. `windows` are (lo, hi, wall) sorted and
/// disjoint; a kernel belongs to the window holding its start, except that the kernels of one
/// launch (one correlation id: the nodes of a CUDA graph launch) stay together in the step most of
/// them fall in, so a small disagreement between the device-event and CUPTI clocks cannot move the
/// first or last kernel of a step into its neighbour. Each kernel counts whole in its step.
pub fn per_step(kernels: &[Kernel], nccl: &[bool], windows: &[(u64, u64, u64)]) -> Vec<Activity> {
    let bucket = |k: &Kernel| {
        let i = windows.partition_point(|w| w.0 <= k.start);
        (i > 0 && k.start < windows[i - 1].1).then(|| i - 1)
    };
    let mut at: Vec<Option<usize>> = kernels.iter().map(bucket).collect();
    let mut votes: std::collections::HashMap<u32, std::collections::HashMap<usize, u32>> =
        std::collections::HashMap::new();
    for (k, b) in kernels.iter().zip(&at) {
        if let (true, Some(b)) = (k.corr != 0, b) {
            *votes.entry(k.corr).or_default().entry(*b).or_default() += 1;
        }
    }
    let home: std::collections::HashMap<u32, usize> = votes
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(c, v)| {
            (c, v.into_iter().max_by_key(|&(b, n)| (n, std::cmp::Reverse(b))).map(|(b, _)| b).expect("non-empty"))
        })
        .collect();
    for (k, b) in kernels.iter().zip(at.iter_mut()) {
        if let (Some(h), Some(_)) = (home.get(&k.corr), *b) {
            *b = Some(*h);
        }
    }
    let mut buckets: Vec<Vec<&Kernel>> = vec![Vec::new(); windows.len()];
    for (k, b) in kernels.iter().zip(&at) {
        if let Some(b) = b {
            buckets[*b].push(k);
        }
    }
    windows
        .iter()
        .zip(&buckets)
        .map(|(&(_, _, wall), b)| {
            let mut a = Activity::of(b, nccl, 0, u64::MAX);
            a.wall_ns = wall;
            a
        })
        .collect()
}

/// Total time per kernel name in the decode steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopKernel {
    /// Kernel name as CUPTI reports it (mangled or not).
    pub name: String,
    /// An NCCL kernel.
    pub nccl: bool,
    /// Executions in the decode steps.
    pub count: u64,
    /// Their total time, ms.
    pub total_ms: f64,
    /// Their mean time, µs.
    pub mean_us: f64,
    /// Of all kernel time in the decode steps.
    pub share: f64,
}

/// One device's activity over the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceActivity {
    /// CUDA device ordinal in this rank's process (CUPTI's deviceId).
    pub device: u32,
    /// Kernels recorded on this device (from engine creation on: warm-up, graph capture, prefill,
    /// decode; the weight load is not recorded).
    pub kernels_total: u64,
    /// Submit → first token: the prefill.
    pub prefill: Option<Activity>,
    /// Decode steps analysed.
    pub steps: u64,
    /// Where the decode steps came from.
    pub step_source: StepSource,
    /// Per decode step: GPU busy / NCCL / compute / idle (wall − busy) time.
    pub busy: Option<HistogramSummary>,
    /// Per decode step: time at least one NCCL kernel ran, ns.
    pub nccl: Option<HistogramSummary>,
    /// Per decode step: time at least one other kernel ran, ns.
    pub compute: Option<HistogramSummary>,
    /// Per decode step: wall − busy time, ns.
    pub idle: Option<HistogramSummary>,
    /// Kernels per decode step: mean, and the least and most.
    pub kernels_per_step_mean: f64,
    /// Fewest kernels in a decode step.
    pub kernels_per_step_min: u32,
    /// Most kernels in a decode step.
    pub kernels_per_step_max: u32,
    /// NCCL kernels per decode step, mean.
    pub nccl_kernels_per_step_mean: f64,
    /// Sums over the decode steps ÷ summed step wall time.
    pub busy_share: f64,
    /// NCCL time ÷ step wall time over the decode steps.
    pub nccl_share: f64,
    /// Compute time ÷ step wall time over the decode steps.
    pub compute_share: f64,
    /// The most expensive kernels of the decode steps (by total time, at most 12).
    pub top_kernels: Vec<TopKernel>,
}

/// What `--cupti` adds to a rank's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CuptiReport {
    /// CUPTI's API version (cuptiGetVersion).
    pub cupti_version: u32,
    /// `monotonic_callback`: CUPTI timestamps taken from CLOCK_MONOTONIC; `measured_offset`: CUPTI's
    /// own clock shifted by an offset measured at start and end (`offset_drift_ns` says how stable).
    pub clock: String,
    /// With `measured_offset`: how far the offset moved between start and end, ns.
    pub offset_drift_ns: Option<i64>,
    /// Kernel records received, and those CUPTI reported dropped (buffers full).
    pub records: u64,
    /// Kernel records CUPTI dropped.
    pub dropped: u64,
    /// One entry per device the process ran kernels on (one for ALL_RANKS engines; rank 0 of a
    /// ONE_PROCESS engine has one per GPU it drives).
    pub devices: Vec<DeviceActivity>,
}

fn hist(v: impl Iterator<Item = u64>) -> Option<HistogramSummary> {
    let h: LatencyHistogram = v.collect();
    (h.count() > 0).then(|| h.summary())
}

/// Analyses one device: `windows` are the decode steps, `prefill` the (submit, first token) window.
pub fn analyse_device(
    device: u32,
    kernels: &[Kernel],
    names: &[String],
    windows: &[(u64, u64, u64)],
    source: StepSource,
    prefill: Option<(u64, u64)>,
) -> (DeviceActivity, Vec<Activity>) {
    let nccl: Vec<bool> = names.iter().map(|n| is_nccl(n)).collect();
    let steps = per_step(kernels, &nccl, windows);
    let prefill = prefill.map(|(lo, hi)| {
        let ks: Vec<&Kernel> = kernels.iter().filter(|k| k.start >= lo && k.start < hi).collect();
        Activity::of(&ks, &nccl, lo, hi)
    });
    let sum = |f: fn(&Activity) -> u64| steps.iter().map(f).sum::<u64>();
    let wall = sum(|a| a.wall_ns).max(1) as f64;
    // Top kernels in the decode steps.
    let (lo, hi) = (windows.first().map(|w| w.0).unwrap_or(0), windows.last().map(|w| w.1).unwrap_or(0));
    let mut by_name: std::collections::HashMap<u32, (u64, u64)> = std::collections::HashMap::new();
    for k in kernels.iter().filter(|k| k.start >= lo && k.start < hi) {
        let e = by_name.entry(k.name).or_default();
        e.0 += 1;
        e.1 += k.end.saturating_sub(k.start);
    }
    let all_kernel_ns = by_name.values().map(|v| v.1).sum::<u64>().max(1) as f64;
    let mut top: Vec<TopKernel> = by_name
        .iter()
        .map(|(&n, &(count, ns))| TopKernel {
            name: names.get(n as usize).cloned().unwrap_or_default(),
            nccl: nccl.get(n as usize).copied().unwrap_or(false),
            count,
            total_ms: ns as f64 / 1e6,
            mean_us: ns as f64 / count as f64 / 1e3,
            share: ns as f64 / all_kernel_ns,
        })
        .collect();
    top.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms).then_with(|| a.name.cmp(&b.name)));
    top.truncate(12);
    let n = steps.len().max(1) as f64;
    let d = DeviceActivity {
        device,
        kernels_total: kernels.len() as u64,
        prefill,
        steps: steps.len() as u64,
        step_source: source,
        busy: hist(steps.iter().map(|a| a.busy_ns)),
        nccl: hist(steps.iter().map(|a| a.nccl_ns)),
        compute: hist(steps.iter().map(|a| a.compute_ns)),
        idle: hist(steps.iter().map(|a| a.wall_ns.saturating_sub(a.busy_ns))),
        kernels_per_step_mean: steps.iter().map(|a| a.kernels as f64).sum::<f64>() / n,
        kernels_per_step_min: steps.iter().map(|a| a.kernels).min().unwrap_or(0),
        kernels_per_step_max: steps.iter().map(|a| a.kernels).max().unwrap_or(0),
        nccl_kernels_per_step_mean: steps.iter().map(|a| a.nccl_kernels as f64).sum::<f64>() / n,
        busy_share: sum(|a| a.busy_ns) as f64 / wall,
        nccl_share: sum(|a| a.nccl_ns) as f64 / wall,
        compute_share: sum(|a| a.compute_ns) as f64 / wall,
        top_kernels: top,
    };
    (d, steps)
}

/// Cross-rank view of the NCCL time per step (rank 0 builds it from every rank's per-step NCCL
/// time): inside a step with a collective, the rank that arrives last waits least, so the rank
/// with the least NCCL time in a step is the one the others waited for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CuptiSummary {
    /// Who is compared: one entry per rank with CUPTI data ("rank 1 GPU1"), or, for a rank whose
    /// process drives several GPUs (ONE_PROCESS engines), one per GPU ("rank 0 GPU0", "rank 0
    /// GPU1"). Observer ranks (no kernels of their own) are not listed. Every vector below follows
    /// this order.
    #[serde(default)]
    pub participants: Vec<String>,
    /// Steps every participant has.
    pub steps: u64,
    /// NCCL time ÷ step wall time over the decode steps (null: no kernels).
    pub nccl_share: Vec<Option<f64>>,
    /// GPU busy ÷ step wall time.
    pub busy_share: Vec<Option<f64>>,
    /// Mean NCCL time per step, ms.
    pub nccl_ms_mean: Vec<Option<f64>>,
    /// How many steps each participant had the least NCCL time (was waited for); steps where the
    /// NCCL times are all equal (e.g. no collective) count for nobody.
    pub waited_for_steps: Vec<u64>,
    /// Steps where every participant had the same NCCL time (no one to blame).
    #[serde(default)]
    pub tied_steps: u64,
    /// Per step: most − least NCCL time over the participants (the wait the slowest one imposed).
    pub nccl_spread: Option<HistogramSummary>,
}

/// Participants of the cross-rank summary from every rank's per-device step activity (None: the
/// rank recorded nothing, e.g. a ONE_PROCESS observer).
pub fn participants(per_rank: &[Option<Vec<(u32, Vec<Activity>)>>]) -> (Vec<String>, Vec<Option<Vec<Activity>>>) {
    let mut names = Vec::new();
    let mut data = Vec::new();
    for (r, devs) in per_rank.iter().enumerate() {
        let Some(devs) = devs else { continue };
        if devs.is_empty() {
            names.push(format!("rank {r}"));
            data.push(Some(Vec::new()));
        }
        for (d, steps) in devs {
            names.push(format!("rank {r} GPU{d}"));
            data.push(Some(steps.clone()));
        }
    }
    (names, data)
}

/// `per_rank[i]`: participant i's per-step activity (None: no CUPTI data); `participants` are set
/// by the caller (see `participants`).
pub fn summarise(per_rank: &[Option<Vec<Activity>>]) -> Option<CuptiSummary> {
    if per_rank.iter().all(|r| r.is_none()) {
        return None;
    }
    let share = |f: fn(&Activity) -> u64| -> Vec<Option<f64>> {
        per_rank
            .iter()
            .map(|r| {
                r.as_ref().filter(|v| !v.is_empty()).map(|v| {
                    v.iter().map(f).sum::<u64>() as f64 / v.iter().map(|a| a.wall_ns).sum::<u64>().max(1) as f64
                })
            })
            .collect()
    };
    let with: Vec<&Vec<Activity>> = per_rank.iter().flatten().collect();
    let steps = if with.len() == per_rank.len() { with.iter().map(|v| v.len()).min().unwrap_or(0) } else { 0 };
    let mut waited = vec![0u64; per_rank.len()];
    let mut tied = 0u64;
    let mut spread = LatencyHistogram::new();
    if per_rank.len() > 1 {
        for s in 0..steps {
            let nccl: Vec<u64> = with.iter().map(|v| v[s].nccl_ns).collect();
            let (min_r, &min) = nccl.iter().enumerate().min_by_key(|(_, &x)| x).expect("ranks");
            let max = *nccl.iter().max().expect("ranks");
            if max == min {
                tied += 1;
            } else {
                waited[min_r] += 1;
            }
            spread.record(max - min);
        }
    }
    Some(CuptiSummary {
        participants: (0..per_rank.len()).map(|i| format!("#{i}")).collect(),
        steps: steps as u64,
        nccl_share: share(|a| a.nccl_ns),
        busy_share: share(|a| a.busy_ns),
        nccl_ms_mean: per_rank
            .iter()
            .map(|r| {
                r.as_ref()
                    .filter(|v| !v.is_empty())
                    .map(|v| v.iter().map(|a| a.nccl_ns).sum::<u64>() as f64 / v.len() as f64 / 1e6)
            })
            .collect(),
        waited_for_steps: waited,
        tied_steps: tied,
        nccl_spread: (spread.count() > 0).then(|| spread.summary()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(start: u64, end: u64, name: u32) -> Kernel {
        Kernel { start, end, device: 0, stream: 7, name, corr: 0 }
    }

    #[test]
    fn a_graph_launch_stays_in_one_step() {
        // Steps [100, 200) and [300, 400): windows split at 250. The second launch (correlation
        // 5) has its first kernel placed 15 ns early by a clock disagreement: it still counts in
        // step 1, with its launch-mates.
        let w = windows_from_device_steps(&[(100, 200), (300, 400)]);
        let names = vec!["gemm".to_string()];
        let g = |start, end, corr| Kernel { start, end, device: 0, stream: 1, name: 0, corr };
        let ks = [g(110, 150, 4), g(150, 190, 4), g(245, 300, 5), g(300, 350, 5), g(350, 390, 5)];
        let (_, steps) = analyse_device(0, &ks, &names, &w, StepSource::DeviceEvents, None);
        assert_eq!((steps[0].kernels, steps[1].kernels), (2, 3));
        assert_eq!(steps[1].busy_ns, 145);
        // Without correlation ids (eager launches) the start decides.
        let eager: Vec<Kernel> = ks.iter().map(|k| Kernel { corr: 0, ..*k }).collect();
        let (_, steps) = analyse_device(0, &eager, &names, &w, StepSource::DeviceEvents, None);
        assert_eq!((steps[0].kernels, steps[1].kernels), (3, 2));
    }

    #[test]
    fn unions_count_overlaps_once() {
        assert_eq!(union_ns(&mut [(0, 10), (5, 20), (30, 40)], 0, 100), 30);
        assert_eq!(union_ns(&mut [(0, 10), (5, 20), (30, 40)], 8, 35), 17);
        assert_eq!(union_ns(&mut [], 0, 10), 0);
    }

    #[test]
    fn nccl_kernels_are_recognised() {
        assert!(is_nccl("_Z39ncclDevKernel_AllReduce_Sum_f16_RING_LL24ncclDevKernelArgsStorageILm4096EE"));
        assert!(is_nccl("ncclKernel_AllReduce_RING_LL_Sum_half"));
        assert!(!is_nccl("rmsnorm_f16"));
    }

    #[test]
    fn kernels_fall_into_their_steps() {
        // Two device steps [100, 200) and [300, 400): windows reach halfway into the gap (250).
        let w = windows_from_device_steps(&[(100, 200), (300, 400)]);
        assert_eq!(w, vec![(50, 250, 100), (250, 450, 100)]);
        let names = vec!["gemm".to_string(), "ncclDevKernel_AllReduce".to_string()];
        // A kernel placed 5 ns before its step's event (clock placement error) still counts there.
        let ks = [k(95, 150, 0), k(150, 190, 1), k(300, 320, 0), k(310, 390, 1), k(600, 700, 0)];
        let (d, steps) = analyse_device(0, &ks, &names, &w, StepSource::DeviceEvents, Some((0, 90)));
        assert_eq!(steps.len(), 2);
        assert_eq!((steps[0].kernels, steps[0].busy_ns, steps[0].nccl_ns, steps[0].compute_ns), (2, 95, 40, 55));
        // Overlapping compute and NCCL on two streams: busy is the union.
        assert_eq!((steps[1].kernels, steps[1].busy_ns, steps[1].nccl_ns, steps[1].compute_ns), (2, 90, 80, 20));
        assert_eq!(steps[1].wall_ns, 100);
        assert_eq!(d.kernels_total, 5);
        assert_eq!(d.prefill.unwrap().kernels, 0);
        assert!((d.nccl_share - 120.0 / 200.0).abs() < 1e-12);
        assert_eq!(d.top_kernels[0].name, "ncclDevKernel_AllReduce");
        assert_eq!(d.top_kernels[0].count, 2);
        assert!(d.top_kernels[0].nccl);
        assert_eq!(d.kernels_per_step_max, 2);
        assert_eq!(d.idle.as_ref().unwrap().count, 2);
    }

    #[test]
    fn host_token_windows_wait_for_every_sample() {
        // Two samples; sample 1 is 3 ns behind; sample 1 stops after step 2.
        let t = [(0, 0, 100), (1, 0, 103), (0, 1, 200), (1, 1, 210), (0, 2, 300), (1, 2, 305), (0, 3, 400)];
        let (first, w) = windows_from_tokens(&t, 2, 10).unwrap();
        assert_eq!(first, 103);
        // Step 3: only sample 0 still runs.
        assert_eq!(w, vec![(103, 210, 107), (210, 305, 95), (305, 400, 95)]);
        assert!(windows_from_tokens(&[], 2, 10).is_none());
        // Out-of-range and repeated events are ignored, not trusted.
        let bad = [(0, 0, 100), (0, u32::MAX, 5), (7, 1, 900), (0, 1, 200), (0, 1, 950)];
        assert_eq!(windows_from_tokens(&bad, 1, 4).unwrap(), (100, vec![(100, 200, 100)]));
    }

    #[test]
    fn one_process_gpus_are_participants() {
        let a = |nccl| Activity {
            wall_ns: 100,
            busy_ns: 90,
            nccl_ns: nccl,
            compute_ns: 90 - nccl,
            kernels: 3,
            nccl_kernels: 1,
        };
        // Rank 0 drives GPU0 and GPU1 (ONE_PROCESS), rank 1 observes (None).
        let (names, data) = participants(&[Some(vec![(0, vec![a(30)]), (1, vec![a(5)])]), None]);
        assert_eq!(names, vec!["rank 0 GPU0", "rank 0 GPU1"]);
        let s = summarise(&data).unwrap();
        assert_eq!((s.steps, s.waited_for_steps.clone()), (1, vec![0, 1]));
    }

    #[test]
    fn the_rank_with_least_nccl_was_waited_for() {
        let a = |nccl| Activity {
            wall_ns: 100,
            busy_ns: 90,
            nccl_ns: nccl,
            compute_ns: 90 - nccl,
            kernels: 3,
            nccl_kernels: 1,
        };
        let s = summarise(&[Some(vec![a(40), a(10), a(40)]), Some(vec![a(10), a(30), a(12)])]).unwrap();
        assert_eq!(s.steps, 3);
        assert_eq!(s.waited_for_steps, vec![1, 2]);
        assert_eq!(s.nccl_spread.as_ref().unwrap().count, 3);
        assert!((s.nccl_share[0].unwrap() - 0.3).abs() < 1e-12);
        assert!(summarise(&[None, None]).is_none());
        // Equal NCCL time (here: none at all) blames nobody.
        let s = summarise(&[Some(vec![a(0), a(0)]), Some(vec![a(0), a(5)])]).unwrap();
        assert_eq!((s.waited_for_steps.clone(), s.tied_steps), (vec![1, 0], 1));
        // A rank without data: shares per rank, no cross-rank steps.
        let s = summarise(&[Some(vec![a(40)]), None]).unwrap();
        assert_eq!((s.steps, s.nccl_share[1]), (0, None));
    }
}
