//! `tpprof verify`: the cuda engine checked against the cpu reference engine with identical weights
//! (the same seed: both engines generate them with one recipe), on every rank of a tensor-parallel
//! group. Per prompt: the last position's logits (each rank compares its vocabulary shard,
//! `|cuda − cpu| ≤ atol + rtol·|cpu|`), then the greedy tokens of both engines step by step, then
//! the logits of the cuda engine's last decode step (its decode attention over the whole cache)
//! against the cpu engine's prefill of the prompt plus the generated tokens; finally (2+ prompts) all
//! prompts as one batch, cut to different lengths, each sample's last decode step logits likewise.
//! Fresh random weights every run (the seed defaults to the clock and is printed).

use crate::cluster::World;
use crate::engine::builtin::cpu::mpi_comm::MpiComm;
use crate::engine::builtin::cpu::{CpuEngine, GenerateRequest};
use crate::engine::config::Config;
use crate::observe::gpu::HostGpus;

/// `tpprof verify`'s options as the face hands them over (meanings: `tpprof verify --help`).
#[derive(Debug, Clone)]
pub struct VerifyInput {
    pub model: String,
    pub weights: Option<std::path::PathBuf>,
    pub dtype: String,
    pub seed: Option<u64>,
    pub prompts: usize,
    pub prompt_tokens: usize,
    pub steps: usize,
    pub atol: Option<f32>,
    pub rtol: Option<f32>,
    pub timeout: f64,
}

/// One rank's comparison of one prompt's logits.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Compared {
    n: usize,
    bad: usize,
    max_abs: f32,
    max_ref: f32,
    worst: Option<(usize, f32, f32)>,
    first_bad: Vec<(usize, f32, f32)>,
}

fn compare(cpu: &[f32], gpu: &[f32], v0: usize, atol: f32, rtol: f32) -> Compared {
    let mut c = Compared { n: cpu.len(), ..Default::default() };
    for (i, (&r, &g)) in cpu.iter().zip(gpu).enumerate() {
        let diff = (g - r).abs();
        c.max_ref = c.max_ref.max(r.abs());
        if diff > c.max_abs || diff.is_nan() {
            c.max_abs = if diff.is_nan() { f32::INFINITY } else { diff };
            c.worst = Some((v0 + i, r, g));
        }
        // Written negated on purpose: a NaN difference fails.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let within = diff <= atol + rtol * r.abs();
        if !within {
            c.bad += 1;
            if c.first_bad.len() < 5 {
                c.first_bad.push((v0 + i, r, g));
            }
        }
    }
    if cpu.len() != gpu.len() {
        c.bad += cpu.len().abs_diff(gpu.len());
    }
    c
}

/// Why verify stopped before a verdict.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Failures every rank agreed on (each names its rank): rank 0 reports them.
    #[error(transparent)]
    Ranks(#[from] crate::cluster::RankFailures),
    #[error("{}", crate::engine::builtin::NO_CUDA)]
    NoCuda,
    #[error("--timeout must be a positive number of seconds (got {0})")]
    Timeout(f64),
    #[error(transparent)]
    Cpu(#[from] crate::engine::builtin::cpu::CpuError),
    #[error(transparent)]
    Cuda(#[from] crate::engine::builtin::cuda::CudaError),
}

impl VerifyError {
    /// Whether this rank alone knows it (rank 0 may be waiting for it in a collective).
    pub fn is_local(&self) -> bool {
        !matches!(self, VerifyError::Ranks(_) | VerifyError::NoCuda | VerifyError::Timeout(_))
    }
}

/// `tpprof verify` on this rank: whether every comparison passed, or why it stopped. The caller
/// owns the world (it says why before MPI_Finalize).
pub fn main(world: &World, args: VerifyInput) -> Result<bool, VerifyError> {
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        return Err(VerifyError::Timeout(args.timeout));
    }
    world.start_watchdog(std::time::Duration::from_secs_f64(args.timeout));
    run(world, &args)
}

fn run(world: &World, args: &VerifyInput) -> Result<bool, VerifyError> {
    use crate::engine::builtin::cuda::{CudaEngine, Dtype, BUILT};
    if !BUILT {
        return Err(VerifyError::NoCuda);
    }

    let dtype = world.agree(Dtype::parse(&args.dtype))?;
    let cfg = {
        let p = args.weights.clone().unwrap_or_else(|| std::path::PathBuf::from(&args.model));
        if p.exists() {
            Config::from_json_file(&p)
        } else {
            Config::preset(&args.model)
        }
    };
    let cfg = world.agree(cfg.and_then(|c| c.check_tensor_parallel(world.size as usize).map(|_| c)))?;
    let seed_local = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let seed = u64::from_le_bytes(world.broadcast_bytes(&seed_local.to_le_bytes())[..8].try_into().expect("8 bytes"));
    let (atol, rtol) = match dtype {
        Dtype::F16 => (args.atol.unwrap_or(1e-2), args.rtol.or(args.atol).unwrap_or(1e-2)),
        Dtype::Bf16 => (args.atol.unwrap_or(5e-2), args.rtol.or(args.atol).unwrap_or(5e-2)),
    };
    let gpu = world.agree(
        HostGpus::probe().bind(world.local_rank, None).and_then(|g| g.ok_or(crate::observe::gpu::BindError::Missing)),
    )?;
    let id = if world.is_root() { crate::engine::builtin::cuda::nccl_unique_id().map(Some) } else { Ok(None) };
    let id = world.agree(id)?.unwrap_or_default();
    let id = world.broadcast_bytes(&id);
    let dir = match &args.weights {
        Some(d) => Some(world.agree(crate::engine::safetensors::SafetensorsDir::open(d))?),
        None => None,
    };
    let comm = Box::new(MpiComm::new(world.duplicate()));
    let cpu = match &dir {
        Some(d) => CpuEngine::from_safetensors(d, comm),
        None => CpuEngine::new(&cfg, seed, comm),
    };
    let mut cpu = world.agree(cpu)?;
    let init = match &dir {
        Some(d) => crate::engine::builtin::cuda::WeightInit::Checkpoint(d),
        None => crate::engine::builtin::cuda::WeightInit::Seeded(seed),
    };
    let cuda = CudaEngine::new(&cfg, dtype, init, gpu.ordinal as usize, world.rank as usize, world.size as usize, &id);
    let mut cuda = world.agree(cuda)?;
    cuda.skip_breakdown();
    let v0 = crate::engine::builtin::cpu::Shard { rank: world.rank as usize, world: world.size as usize }
        .range(cfg.vocab_size)
        .start;

    if world.is_root() {
        crate::outln!(
            "verify: cuda ({}, {}) vs cpu (f32), model {}, {} rank(s), {}, |cuda-cpu| <= {atol} + {rtol}*|cpu|",
            dtype.name(),
            cuda.device_name(),
            args.weights.as_ref().map(|d| d.display().to_string()).unwrap_or(args.model.clone()),
            world.size,
            if dir.is_some() { "checkpoint weights".to_string() } else { format!("seed {seed}") }
        );
    }
    let prompts = crate::workload::Workload::random(
        args.prompts as u32,
        args.prompt_tokens as u32,
        cfg.vocab_size as u32,
        seed ^ 0x5eed,
        args.steps as u32,
    )
    .prompts;
    let mut ok = true;
    for (i, p) in prompts.iter().enumerate() {
        // Logits of the last prompt position, this rank's shard.
        let (lc, _) = cpu.prefill_logits(p)?;
        let (lg, _) = cuda.prefill_logits(p)?;
        let prefill = gather_compared(world, compare(&lc, &lg, v0, atol, rtol));
        // Greedy tokens of both engines.
        let req = GenerateRequest { prompts: std::slice::from_ref(p), max_new_tokens: args.steps, exact_length: true };
        let mut tc = Vec::new();
        cpu.generate(&req, &mut |_, _, t, _| tc.push(t))?;
        let mut tg = Vec::new();
        cuda.generate(std::slice::from_ref(p), args.steps, true, &mut |_, _, t, _| tg.push(t))?;
        let same = tc.iter().zip(&tg).take_while(|(a, b)| a == b).count();
        // The last decode step: it fed tg[steps-2] at position len+steps-2 and produced tg[steps-1].
        let decode = if args.steps >= 2 && tg.len() == args.steps {
            let lgd = cuda.last_logits(1)?;
            let mut ext = p.clone();
            ext.extend_from_slice(&tg[..args.steps - 1]);
            let (lcd, _) = cpu.prefill_logits(&ext)?;
            Some(gather_compared(world, compare(&lcd, &lgd, v0, atol, rtol)))
        } else {
            None
        };
        let Totals { bad, n, max_abs, max_ref } = Totals::of(prefill.iter().chain(decode.iter().flatten()));
        let pass = bad == 0 && same == args.steps;
        ok &= pass;
        if world.is_root() {
            if i == 0 {
                // Which decode attention kernel these decode steps ran (a silent fallback would
                // otherwise pass unnoticed).
                crate::outln!("decode attention: {}", cuda.decode_attention().unwrap_or_else(|| "unknown".into()));
                crate::outln!("prefill attention: {}", cuda.prefill_attention());
            }
            crate::outln!(
                "prompt {i} ({} tokens): logits {}/{} within tolerance ({}), max |diff| {max_abs:.3e} (max |cpu| {max_ref:.3e}); greedy tokens identical for {same}/{} steps {}",
                p.len(), n - bad, n, if decode.is_some() { "after prefill and after the last decode step" } else { "after prefill" }, args.steps, if pass { "PASS" } else { "FAIL" }
            );
            for (what, cs) in [("prefill", Some(&prefill)), ("last decode step", decode.as_ref())] {
                for (r, c) in cs.into_iter().flatten().enumerate() {
                    for (idx, a, b) in &c.first_bad {
                        crate::outln!("  {what}, rank {r}: token {idx}: cpu {a:.6} cuda {b:.6}");
                    }
                }
            }
            if same < args.steps {
                crate::outln!("  cpu : {:?}\n  cuda: {:?}", tc, tg);
            }
        }
    }
    // The prompts once more, as one batch, each cut to another length (every sample's cache ends
    // elsewhere; the decode step attends over all of them at once): each sample's tokens, and its
    // row of the last decode step's logits against the cpu engine's prefill of that sample's prompt
    // plus its generated tokens.
    if prompts.len() >= 2 && args.steps >= 2 {
        let batch: Vec<Vec<i32>> =
            prompts.iter().enumerate().map(|(s, p)| p[..p.len().saturating_sub(13 * s).max(1)].to_vec()).collect();
        let mut toks: Vec<Vec<i32>> = vec![Vec::new(); batch.len()];
        cuda.generate(&batch, args.steps, true, &mut |s, _, t, _| toks[s].push(t))?;
        let complete = toks.iter().all(|t| t.len() == args.steps);
        let rows = if complete { cuda.last_logits(batch.len())? } else { Vec::new() };
        let v_local = rows.len() / batch.len();
        let mut all = Vec::new();
        if complete {
            for (s, p) in batch.iter().enumerate() {
                let mut ext = p.clone();
                ext.extend_from_slice(&toks[s][..args.steps - 1]);
                let (lc, _) = cpu.prefill_logits(&ext)?;
                all.extend(gather_compared(world, compare(&lc, &rows[s * v_local..(s + 1) * v_local], v0, atol, rtol)));
            }
        }
        let Totals { bad, n, max_abs, .. } = Totals::of(&all);
        let pass = complete && bad == 0;
        ok &= pass;
        if world.is_root() {
            crate::outln!(
                "batch of {} (prompt lengths {:?}; {}): {}, last decode step logits {}/{n} within tolerance, max |diff| {max_abs:.3e} {}",
                batch.len(),
                batch.iter().map(Vec::len).collect::<Vec<_>>(),
                cuda.decode_attention().unwrap_or_else(|| "decode attention unknown".into()),
                if complete { format!("{} tokens per sample", args.steps) } else { format!("INCOMPLETE: {:?} tokens", toks.iter().map(Vec::len).collect::<Vec<_>>()) },
                n - bad,
                if pass { "PASS" } else { "FAIL" }
            );
            for (i, c) in all.iter().enumerate() {
                for (idx, a, b) in &c.first_bad {
                    crate::outln!(
                        "  sample {}, rank {}: token {idx}: cpu {a:.6} cuda {b:.6}",
                        i / world.size as usize,
                        i % world.size as usize
                    );
                }
            }
        }
    }
    if world.is_root() {
        crate::outln!("verify: {}", if ok { "PASS" } else { "FAIL" });
    }
    Ok(ok)
}

/// Comparisons added up: values out of tolerance, values compared, largest difference and logit.
struct Totals {
    bad: usize,
    n: usize,
    max_abs: f32,
    max_ref: f32,
}

impl Totals {
    fn of<'a>(cs: impl IntoIterator<Item = &'a Compared>) -> Totals {
        cs.into_iter().fold(Totals { bad: 0, n: 0, max_abs: 0.0, max_ref: 0.0 }, |t, c| Totals {
            bad: t.bad + c.bad,
            n: t.n + c.n,
            max_abs: t.max_abs.max(c.max_abs),
            max_ref: t.max_ref.max(c.max_ref),
        })
    }
}

/// Every rank's comparison, at every rank.
fn gather_compared(world: &World, mine: Compared) -> Vec<Compared> {
    world
        .all_gather_bytes(&serde_json::to_vec(&mine).expect("serializes"))
        .iter()
        .map(|b| serde_json::from_slice(b).expect("our own JSON"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_is_absolute_plus_relative() {
        let c = compare(&[1.0, -2.0, 0.0], &[1.005, -2.05, 0.02], 100, 0.01, 0.01);
        assert_eq!(c.bad, 2, "{c:?}");
        assert_eq!(c.first_bad.iter().map(|b| b.0).collect::<Vec<_>>(), vec![101, 102]);
        assert!((c.max_abs - 0.05).abs() < 1e-6);
        let nan = compare(&[1.0], &[f32::NAN], 0, 1.0, 1.0);
        assert_eq!(nan.bad, 1);
    }
}
