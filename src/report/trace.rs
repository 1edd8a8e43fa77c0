//! `--trace FILE`: a Chrome / Perfetto trace (the JSON "Trace Event Format", open it in
//! ui.perfetto.dev or chrome://tracing) with one process per rank: every token as an instant event,
//! each decode step on the device as a slice, and the rank's memory as a counter track — all on
//! rank 0's clock (each rank's CLOCK_MONOTONIC minus its measured offset), so ranks line up.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::observe::memory::Timeline;

const GIB: f64 = (1u64 << 30) as f64;

/// What one rank contributes to the trace (gathered at rank 0 only when a trace is asked for).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RankTrace {
    pub rank: i32,
    pub label: String,
    /// CLOCK_MONOTONIC (ns) of the run's epoch on this rank: token and memory times count from it.
    pub epoch_mono_ns: u64,
    /// (sample, step, token id, ns since the epoch)
    pub tokens: Vec<(u32, u32, i32, u64)>,
    /// Device decode steps, (start, end) on this rank's CLOCK_MONOTONIC.
    pub device_steps: Vec<(u64, u64)>,
    pub memory: Timeline,
    /// --cupti: kernels (start, end on this rank's CLOCK_MONOTONIC, device, stream, name index).
    #[serde(default)]
    pub kernels: Vec<(u64, u64, u32, u32, u32)>,
    #[serde(default)]
    pub kernel_names: Vec<String>,
}

/// The trace document. `offsets[r]`: rank r's clock minus rank 0's (ns).
pub fn build(traces: &[RankTrace], offsets: &[i64]) -> Value {
    let t0 = traces.first().map(|t| t.epoch_mono_ns as i128).unwrap_or(0);
    let mut ev = Vec::new();
    for t in traces {
        let off = offsets.get(t.rank as usize).copied().unwrap_or(0) as i128;
        // µs since rank 0's epoch, on rank 0's clock.
        let us = |abs_ns: i128| (abs_ns - off - t0) as f64 / 1e3;
        let pid = t.rank;
        ev.push(json!({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": t.label}}));
        ev.push(json!({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}}));
        ev.push(json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": 1, "args": {"name": "tokens (host)"}}));
        ev.push(
            json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": 2, "args": {"name": "decode steps (device)"}}),
        );
        for &(sample, step, token, ns) in &t.tokens {
            ev.push(json!({"ph": "i", "s": "t", "name": "token", "pid": pid, "tid": 1,
                           "ts": us(t.epoch_mono_ns as i128 + ns as i128), "args": {"sample": sample, "step": step, "id": token}}));
        }
        for (i, &(a, b)) in t.device_steps.iter().enumerate() {
            ev.push(json!({"ph": "X", "name": "decode step", "pid": pid, "tid": 2,
                           "ts": us(a as i128), "dur": b.saturating_sub(a) as f64 / 1e3, "args": {"step": i + 1}}));
        }
        // One track per (device, stream) the process ran kernels on (ONE_PROCESS engines drive
        // several GPUs; kernels of different streams may overlap, which one track cannot show).
        let mut tracks: Vec<(u32, u32)> = t.kernels.iter().map(|k| (k.2, k.3)).collect();
        tracks.sort_unstable();
        tracks.dedup();
        let tid = |dev: u32, stream: u32| 1000 + tracks.binary_search(&(dev, stream)).unwrap_or(0) as i64;
        for &(d, st) in &tracks {
            ev.push(json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid(d, st), "args": {"name": format!("GPU{d} stream {st} kernels (CUPTI)")}}));
        }
        for &(a, b, dev, stream, name) in &t.kernels {
            let name = t.kernel_names.get(name as usize).map(String::as_str).unwrap_or("?");
            let cat = if crate::observe::cupti::is_nccl(name) { "nccl" } else { "compute" };
            ev.push(json!({"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": tid(dev, stream),
                           "ts": us(a as i128), "dur": b.saturating_sub(a) as f64 / 1e3}));
        }
        let m = &t.memory;
        for (i, &ts) in m.t_s.iter().enumerate() {
            let mut args = serde_json::Map::new();
            args.insert("host_rss_gib".into(), json!(m.rss_bytes.get(i).copied().unwrap_or(0) as f64 / GIB));
            if let Some(g) = m.gpu_job_bytes.get(i) {
                args.insert("gpu_job_gib".into(), json!(*g as f64 / GIB));
            }
            ev.push(json!({"ph": "C", "name": "memory", "pid": pid, "ts": us(t.epoch_mono_ns as i128 + (ts * 1e9) as i128), "args": args}));
        }
    }
    json!({"traceEvents": ev, "displayTimeUnit": "ms", "otherData": {"producer": format!("tpprof {}", crate::VERSION), "clock": "rank 0 CLOCK_MONOTONIC, µs since its run epoch"}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_land_on_rank_0s_clock() {
        let r0 = RankTrace {
            rank: 0,
            label: "rank 0".into(),
            epoch_mono_ns: 1_000_000,
            tokens: vec![(0, 0, 5, 2_000)],
            ..Default::default()
        };
        // Rank 1's clock is 500 µs ahead and its epoch 10 µs later in real time.
        let r1 = RankTrace {
            rank: 1,
            label: "rank 1".into(),
            epoch_mono_ns: 1_000_000 + 500_000 + 10_000,
            tokens: vec![(0, 0, 5, 2_000)],
            device_steps: vec![(1_000_000 + 500_000 + 20_000, 1_000_000 + 500_000 + 28_000)],
            memory: Timeline {
                t_s: vec![0.0],
                rss_bytes: vec![1 << 30],
                gpu_job_bytes: vec![],
                gpu_device_used_bytes: vec![],
                stride: 1,
            },
            kernels: vec![(1_000_000 + 500_000 + 21_000, 1_000_000 + 500_000 + 23_000, 0, 7, 1)],
            kernel_names: vec!["gemm".into(), "ncclDevKernel_AllReduce_Sum_f16".into()],
        };
        let v = build(&[r0, r1], &[0, 500_000]);
        let ev = v["traceEvents"].as_array().unwrap();
        let tokens: Vec<f64> = ev.iter().filter(|e| e["name"] == "token").map(|e| e["ts"].as_f64().unwrap()).collect();
        assert_eq!(tokens, vec![2.0, 12.0]);
        let step = ev.iter().find(|e| e["name"] == "decode step").unwrap();
        assert_eq!((step["ts"].as_f64().unwrap(), step["dur"].as_f64().unwrap()), (20.0, 8.0));
        let mem = ev.iter().find(|e| e["ph"] == "C").unwrap();
        assert_eq!(mem["args"]["host_rss_gib"], 1.0);
        assert_eq!(mem["ts"].as_f64().unwrap(), 10.0);
        let k = ev.iter().find(|e| e["cat"] == "nccl").unwrap();
        assert_eq!((k["ts"].as_f64().unwrap(), k["dur"].as_f64().unwrap(), k["pid"].as_i64().unwrap()), (21.0, 2.0, 1));
        assert_eq!(k["name"], "ncclDevKernel_AllReduce_Sum_f16");
    }
}
