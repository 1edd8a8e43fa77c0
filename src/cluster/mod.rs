//! The MPI world: init, local rank (shared-memory split), byte gathers, agreement on errors, and the
//! watchdog. Every collective the profiler itself runs lives here, on a duplicate of MPI_COMM_WORLD
//! so that engine traffic (the cpu engine's all-reduces, an adapter's MPI) never matches ours.

use std::time::Duration;

use mpi::collective::CommunicatorCollectives;
use mpi::datatype::PartitionMut;
use mpi::point_to_point::{Destination, Source};
use mpi::topology::{Communicator, Rank, SimpleCommunicator};
use mpi::traits::Root;
use mpi::Threading;

use crate::clock::mono_ns;

pub mod interrupt;
pub mod wire;
pub use wire::{Json, Wire, WireError};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("MPI was already initialised in this process")]
    AlreadyInitialised,
    #[error("the MPI library provides thread level {0:?}, tpprof needs MPI_THREAD_MULTIPLE (engines call back from their own threads); use an MPI built with thread support")]
    ThreadLevel(Threading),
}

/// The rank the launcher gave this process, read from its environment before MPI_Init (used only to
/// decide who prints a command-line error).
pub fn launcher_rank() -> Option<i32> {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// Failures on one or more ranks, as every rank learns them from `World::agree`.
#[derive(Debug, Clone)]
pub struct RankFailures {
    /// (rank, one-line message), in rank order.
    pub list: Vec<(i32, String)>,
    /// The world's size when every rank took part (so "all N ranks" can be said), else None.
    pub world_size: Option<i32>,
}

/// One line: each distinct message once, with the ranks that reported it ("rank 1: X",
/// "ranks 0, 1: Y", "all 2 ranks: Z"), in the order the messages first appear.
impl std::fmt::Display for RankFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut groups: Vec<(&str, Vec<i32>)> = Vec::new();
        for (r, m) in &self.list {
            match groups.iter_mut().find(|(g, _)| *g == m.as_str()) {
                Some((_, ranks)) => ranks.push(*r),
                None => groups.push((m.as_str(), vec![*r])),
            }
        }
        let parts: Vec<String> = groups
            .iter()
            .map(|(m, ranks)| match ranks.as_slice() {
                [r] => format!("rank {r}: {m}"),
                rs if self.world_size == Some(rs.len() as i32) => format!("all {} ranks: {m}", rs.len()),
                rs => format!("ranks {}: {m}", rs.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")),
            })
            .collect();
        write!(f, "{}", parts.join("; "))
    }
}

impl std::error::Error for RankFailures {}

impl RankFailures {
    /// One rank's failure (rank 0's checks, the assembly of the report).
    pub fn one(rank: i32, message: impl Into<String>) -> RankFailures {
        RankFailures { list: vec![(rank, message.into())], world_size: None }
    }

    pub fn first_rank(&self) -> i32 {
        self.list.first().map(|(r, _)| *r).unwrap_or(0)
    }
}

pub struct World {
    /// SIGINT / SIGTERM during a run (`watch_interrupts`). First: it stops, and its thread is
    /// joined, before the communicators are freed and MPI finalised.
    interrupts: std::sync::OnceLock<interrupt::Watcher>,
    /// Our own duplicate of MPI_COMM_WORLD.
    comm: SimpleCommunicator,
    pub rank: i32,
    pub size: i32,
    pub local_rank: i32,
    pub local_size: i32,
    pub host: String,
    // Last: fields drop in order, and dropping the universe calls MPI_Finalize.
    _universe: mpi::environment::Universe,
}

impl World {
    /// MPI_Init_thread(MPI_THREAD_MULTIPLE); a singleton run without mpirun works too.
    pub fn init() -> Result<World, ClusterError> {
        let (universe, level) =
            mpi::initialize_with_threading(Threading::Multiple).ok_or(ClusterError::AlreadyInitialised)?;
        if level < Threading::Multiple {
            return Err(ClusterError::ThreadLevel(level));
        }
        let world = universe.world();
        let comm = world.duplicate();
        let rank = comm.rank();
        let local = comm.split_shared(rank);
        let host = mpi::environment::processor_name().unwrap_or_else(|_| "unknown".into());
        abort_on_panic(rank);
        Ok(World {
            interrupts: std::sync::OnceLock::new(),
            rank,
            size: comm.size(),
            local_rank: local.rank(),
            local_size: local.size(),
            host,
            comm,
            _universe: universe,
        })
    }

    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// A fresh duplicate of the world communicator, for an engine's own traffic.
    pub fn duplicate(&self) -> SimpleCommunicator {
        self.comm.duplicate()
    }

    /// Every rank's bytes, on every rank (MPI_Allgather of lengths, then MPI_Allgatherv).
    pub fn all_gather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        let mine = &framed(mine);
        let n = self.size as usize;
        let mut lens = vec![0u64; n];
        self.comm.all_gather_into(&(mine.len() as u64), &mut lens[..]);
        let (counts, displs) = partition(&lens);
        let mut all = vec![0u8; lens.iter().sum::<u64>() as usize];
        {
            let mut part = PartitionMut::new(&mut all[..], counts.clone(), &displs[..]);
            self.comm.all_gather_varcount_into(mine, &mut part);
        }
        split(&all, &counts, &displs)
    }

    /// Every rank's bytes at rank 0 (MPI_Gather of lengths, then MPI_Gatherv); None elsewhere.
    pub fn gather_bytes(&self, mine: &[u8]) -> Option<Vec<Vec<u8>>> {
        let mine = &framed(mine);
        let root = self.comm.process_at_rank(0);
        let len = mine.len() as u64;
        if !self.is_root() {
            root.gather_into(&len);
            root.gather_varcount_into(mine);
            return None;
        }
        let mut lens = vec![0u64; self.size as usize];
        root.gather_into_root(&len, &mut lens[..]);
        let (counts, displs) = partition(&lens);
        let mut all = vec![0u8; lens.iter().sum::<u64>() as usize];
        {
            let mut part = PartitionMut::new(&mut all[..], counts.clone(), &displs[..]);
            root.gather_varcount_into_root(mine, &mut part);
        }
        Some(split(&all, &counts, &displs))
    }

    /// Rank 0's bytes on every rank.
    pub fn broadcast_bytes(&self, mine: &[u8]) -> Vec<u8> {
        let root = self.comm.process_at_rank(0);
        let mut len = mine.len() as u64;
        root.broadcast_into(&mut len);
        let mut buf = if self.is_root() { mine.to_vec() } else { vec![0u8; len as usize] };
        if len > 0 {
            root.broadcast_into(&mut buf[..]);
        }
        buf
    }

    /// Every rank's value, on every rank.
    pub fn all_gather<T: Wire>(&self, mine: &T) -> Vec<Result<T, WireError>> {
        self.all_gather_bytes(&mine.to_wire()).iter().map(|b| T::from_wire(b)).collect()
    }

    /// Every rank's value at rank 0 (by rank); None elsewhere.
    pub fn gather<T: Wire>(&self, mine: &T) -> Option<Vec<Result<T, WireError>>> {
        self.gather_bytes(&mine.to_wire()).map(|all| all.iter().map(|b| T::from_wire(b)).collect())
    }

    /// Rank 0's value on every rank: rank 0 passes `Some`, the others `None`.
    pub fn broadcast<T: Wire>(&self, root_value: Option<&T>) -> Result<T, WireError> {
        let bytes = self.broadcast_bytes(&root_value.map(Wire::to_wire).unwrap_or_default());
        T::from_wire(&bytes)
    }

    /// Every rank brings its local outcome; every rank leaves with the same verdict: Ok only if all
    /// ranks were Ok, else every failure with its rank. This is how one failing rank stops the others
    /// instead of leaving them waiting in a later collective.
    pub fn agree<T, E: std::fmt::Display>(&self, local: Result<T, E>) -> Result<T, RankFailures> {
        let msg = match &local {
            Ok(_) => Vec::new(),
            Err(e) => {
                let mut m = vec![1u8];
                m.extend_from_slice(e.to_string().as_bytes());
                m
            }
        };
        let all = self.all_gather_bytes(&msg);
        let failures: Vec<(i32, String)> = all
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.is_empty())
            .map(|(r, m)| (r as i32, String::from_utf8_lossy(&m[1..]).into_owned()))
            .collect();
        if failures.is_empty() {
            local.map_err(|_| unreachable_failure())
        } else {
            Err(RankFailures { list: failures, world_size: Some(self.size) })
        }
    }

    /// A barrier that sleeps instead of spinning while it waits, so a rank that finished early (or
    /// only observes, in ONE_PROCESS mode) does not steal a core from the ranks still generating.
    pub fn idle_barrier(&self) {
        let mut req = self.comm.immediate_barrier();
        loop {
            match req.test() {
                Ok(_) => return,
                Err(r) => {
                    req = r;
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        }
    }

    /// Ends the whole job from any thread: MPI_Abort on MPI_COMM_WORLD.
    pub fn abort_all(code: i32) -> ! {
        interrupt::own_exit();
        // SAFETY: MPI_Abort is callable from any thread once MPI is initialised with
        // MPI_THREAD_MULTIPLE (World::init guarantees it); it does not return.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
        }
        std::process::exit(code)
    }

    /// From now on SIGINT and SIGTERM are handled by a watcher thread on a communicator of its own
    /// (see `interrupt`): collective, every rank calls it at the same point, once.
    pub fn watch_interrupts(&self) -> Result<(), std::io::Error> {
        let watcher = interrupt::Watcher::start(self.comm.duplicate())?;
        let _ = self.interrupts.set(watcher);
        Ok(())
    }

    /// What an interruption does in the run's current state (None: the process just exits with
    /// 128 + the signal).
    pub fn on_interrupt(&self, handler: Option<std::sync::Arc<dyn interrupt::InterruptHandler>>) {
        if let Some(w) = self.interrupts.get() {
            w.set_handler(handler);
        }
    }

    /// Ends the job after `after`. With the interrupt watcher running (`tpprof run`), rank 0
    /// gathers what every rank measured, names the rank(s) that made no progress, once, and the
    /// run writes a `failed` JSON (see `interrupt::Watcher::arm_timeout`). Otherwise a thread aborts
    /// the job, naming the cause on stderr.
    pub fn start_watchdog(&self, after: Duration) {
        if let Some(w) = self.interrupts.get() {
            w.arm_timeout(after);
            return;
        }
        let rank = self.rank;
        std::thread::Builder::new()
            .name("tpprof-watchdog".into())
            .spawn(move || {
                std::thread::sleep(after);
                eprintln!(
                    "error: rank {rank}: the run did not finish within --timeout {:.1} s; aborting every rank",
                    after.as_secs_f64()
                );
                World::abort_all(1);
            })
            .expect("spawn the watchdog thread");
    }

    /// Every rank's offset of its CLOCK_MONOTONIC from rank 0's, in ns (rank 0: 0), at rank 0; an
    /// empty vector elsewhere. Per rank, `rounds` ping-pongs; the one with the shortest round trip
    /// gives offset = t_rank − (t_send + t_recv)/2 (Cristian's method). Ranks on rank 0's host
    /// share its clock and measure ~0.
    pub fn clock_offsets(&self, rounds: usize) -> Vec<i64> {
        let mut offsets = Vec::new();
        if self.is_root() {
            offsets.push(0);
            for r in 1..self.size {
                let peer = self.comm.process_at_rank(r);
                let mut best = (u64::MAX, 0i64);
                for _ in 0..rounds {
                    let t0 = mono_ns();
                    peer.send(&t0);
                    let (t1, _) = peer.receive::<u64>();
                    let t2 = mono_ns();
                    let rtt = t2 - t0;
                    if rtt < best.0 {
                        best = (rtt, t1 as i64 - ((t0 + t2) / 2) as i64);
                    }
                }
                offsets.push(best.1);
            }
        } else {
            let root = self.comm.process_at_rank(0);
            for _ in 0..rounds {
                let (_t0, _) = root.receive::<u64>();
                root.send(&mono_ns());
            }
        }
        offsets
    }

    pub fn mpi_library_version() -> String {
        mpi::environment::library_version()
            // Open MPI 4.1.6 pads the string with NUL bytes (seen on the GPU machines' doctor output).
            .map(|s| s.replace('\0', "").trim().lines().next().unwrap_or("").trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    }
}

/// A panic on any rank ends the whole job at once: one line naming the rank and the place, then
/// MPI_Abort — never a panicking rank stuck in MPI_Finalize while the others wait in a collective.
fn abort_on_panic(rank: i32) {
    std::panic::set_hook(Box::new(move |info| {
        let place =
            info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_else(|| "an unknown place".into());
        let p = info.payload();
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        // One write: formatted first, so another rank's output (mpirun merges them) cannot split it.
        let line = format!("error: rank {rank}: internal error at {place}: {what} (a tpprof bug: please report it); aborting every rank\n");
        use std::io::Write as _;
        let _ = std::io::stderr().write_all(line.as_bytes());
        World::abort_all(1);
    }));
}

fn unreachable_failure() -> RankFailures {
    RankFailures::one(-1, "internal: agreement lost a failure")
}

fn partition(lens: &[u64]) -> (Vec<Rank>, Vec<Rank>) {
    let counts: Vec<Rank> = lens.iter().map(|&l| l as Rank).collect();
    let displs: Vec<Rank> = counts
        .iter()
        .scan(0, |acc, &c| {
            let d = *acc;
            *acc += c;
            Some(d)
        })
        .collect();
    (counts, displs)
}

/// Every message travels with one leading byte: an empty Rust slice's pointer is 0x1, which Open MPI
/// reads as MPI_IN_PLACE, so no buffer handed to MPI may be empty.
fn framed(mine: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(mine.len() + 1);
    v.push(0xA5);
    v.extend_from_slice(mine);
    v
}

/// Cuts the gathered bytes back into per-rank messages, dropping each leading frame byte.
fn split(all: &[u8], counts: &[Rank], displs: &[Rank]) -> Vec<Vec<u8>> {
    counts.iter().zip(displs).map(|(&c, &d)| all[d as usize + 1..(d + c) as usize].to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_prefix_sum() {
        let (c, d) = partition(&[3, 1, 5]);
        assert_eq!(c, vec![3, 1, 5]);
        assert_eq!(d, vec![0, 3, 4]);
        let all = [framed(b"ab"), framed(b""), framed(b"defg")].concat();
        assert_eq!(split(&all, &c, &d), vec![b"ab".to_vec(), vec![], b"defg".to_vec()]);
    }

    #[test]
    fn failures_name_ranks() {
        let f = RankFailures { list: vec![(1, "boom".into()), (3, "bang".into())], world_size: Some(4) };
        assert_eq!(f.to_string(), "rank 1: boom; rank 3: bang");
        assert_eq!(f.first_rank(), 1);
        // The same message from several ranks: said once, with every rank that said it.
        let same = RankFailures {
            list: vec![(0, "no GPU".into()), (1, "boom".into()), (2, "no GPU".into())],
            world_size: Some(3),
        };
        assert_eq!(same.to_string(), "ranks 0, 2: no GPU; rank 1: boom");
        // Every rank with the same message: "all N ranks", once.
        let all = RankFailures { list: vec![(0, "no GPU".into()), (1, "no GPU".into())], world_size: Some(2) };
        assert_eq!(all.to_string(), "all 2 ranks: no GPU");
        // Without the world's size, the ranks are listed.
        let unknown = RankFailures { list: all.list.clone(), world_size: None };
        assert_eq!(unknown.to_string(), "ranks 0, 1: no GPU");
    }
}
