//! The tensor-parallel communicator the cpu engine needs: all-reduce (row-parallel layers) and
//! all-gather (global argmax over the vocab-parallel LM head). MPI implements it elsewhere;
//! here are the trivial world-1 communicator and an in-process, thread-based one for tests.

use std::sync::{Arc, Barrier, Mutex};

/// A failed collective (the message says which and why).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CommError(pub String);

/// Collectives over the ranks of one tensor-parallel group. Every rank must call the same
/// collectives in the same order with the same lengths (the engine guarantees it).
pub trait TpComm {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// In-place element-wise sum over all ranks.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CommError>;
    /// Every rank contributes send (same length on all ranks); recv.len() == send.len()*world, rank-major.
    fn all_gather_f32(&mut self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError>;
    fn all_gather_i32(&mut self, send: &[i32], recv: &mut [i32]) -> Result<(), CommError>;
}

/// World of one: the all-reduce is the identity and the all-gather a copy.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleRank;

impl TpComm for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _buf: &mut [f32]) -> Result<(), CommError> {
        Ok(())
    }
    fn all_gather_f32(&mut self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        copy_checked(send, recv)
    }
    fn all_gather_i32(&mut self, send: &[i32], recv: &mut [i32]) -> Result<(), CommError> {
        copy_checked(send, recv)
    }
}

fn copy_checked<T: Copy>(send: &[T], recv: &mut [T]) -> Result<(), CommError> {
    if recv.len() != send.len() {
        return Err(CommError(format!(
            "all_gather: receive buffer of {} for {} elements x world 1",
            recv.len(),
            send.len()
        )));
    }
    recv.copy_from_slice(send);
    Ok(())
}

/// In-process communicator: one per thread, the ranks of a group meet at a barrier and exchange
/// data through shared slots. Deterministic: the all-reduce sums the contributions in rank order,
/// so every rank gets bit-identical results. Meant for tests and single-process experiments.
pub struct ThreadComm {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    world: usize,
    barrier: Barrier,
    /// One contribution per rank for the collective in progress.
    f32_slots: Mutex<Vec<Vec<f32>>>,
    i32_slots: Mutex<Vec<Vec<i32>>>,
}

impl ThreadComm {
    /// `world` connected communicators; hand element r to the thread playing rank r.
    pub fn group(world: usize) -> Vec<ThreadComm> {
        let shared = Arc::new(Shared {
            world,
            barrier: Barrier::new(world.max(1)),
            f32_slots: Mutex::new(vec![Vec::new(); world]),
            i32_slots: Mutex::new(vec![Vec::new(); world]),
        });
        (0..world).map(|rank| ThreadComm { rank, shared: Arc::clone(&shared) }).collect()
    }

    /// Publishes this rank's contribution, waits for all, lets `read` see all contributions,
    /// then waits again so that no rank overwrites a slot another rank is still reading.
    /// Every rank passes both barriers even on error, so a length mismatch cannot deadlock.
    fn exchange<T: Clone, R>(
        &self,
        slots: &Mutex<Vec<Vec<T>>>,
        send: &[T],
        read: impl FnOnce(&[Vec<T>]) -> Result<R, CommError>,
    ) -> Result<R, CommError> {
        let poisoned = |_| CommError("thread communicator: a rank panicked".to_string());
        let published = slots.lock().map_err(poisoned).map(|mut s| s[self.rank] = send.to_vec());
        self.shared.barrier.wait();
        let result = published.and_then(|_| {
            let all = slots.lock().map_err(poisoned)?;
            if all.iter().any(|c| c.len() != send.len()) {
                let lens: Vec<_> = all.iter().map(Vec::len).collect();
                return Err(CommError(format!("collective with different lengths per rank: {lens:?}")));
            }
            read(&all)
        });
        self.shared.barrier.wait();
        result
    }

    fn gather<T: Copy>(&self, slots: &Mutex<Vec<Vec<T>>>, send: &[T], recv: &mut [T]) -> Result<(), CommError> {
        let world = self.shared.world;
        let size_ok = recv.len() == send.len() * world;
        self.exchange(slots, send, |all| {
            if !size_ok {
                return Err(CommError(format!(
                    "all_gather: receive buffer of {} for {} elements x world {world}",
                    recv.len(),
                    send.len()
                )));
            }
            for (dst, src) in recv.chunks_exact_mut(send.len().max(1)).zip(all) {
                dst.copy_from_slice(src);
            }
            Ok(())
        })
    }
}

impl TpComm for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.shared.world
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
        let sum = self.exchange(&self.shared.f32_slots, buf, |all| {
            // Rank order, so all ranks compute the identical sum.
            let mut sum = vec![0.0f32; buf.len()];
            for contribution in all {
                sum.iter_mut().zip(contribution).for_each(|(s, v)| *s += v);
            }
            Ok(sum)
        })?;
        buf.copy_from_slice(&sum);
        Ok(())
    }
    fn all_gather_f32(&mut self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        self.gather(&self.shared.f32_slots, send, recv)
    }
    fn all_gather_i32(&mut self, send: &[i32], recv: &mut [i32]) -> Result<(), CommError> {
        self.gather(&self.shared.i32_slots, send, recv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_comm_collectives() {
        let handles: Vec<_> = ThreadComm::group(3)
            .into_iter()
            .map(|mut comm| {
                std::thread::spawn(move || {
                    let r = comm.rank() as f32;
                    let mut buf = vec![r, 10.0 * r];
                    comm.all_reduce_sum(&mut buf).unwrap();
                    let mut gathered = vec![0.0; 3];
                    comm.all_gather_f32(&[r], &mut gathered).unwrap();
                    let mut ids = vec![0; 6];
                    comm.all_gather_i32(&[comm.rank() as i32, -1], &mut ids).unwrap();
                    // A mismatched length is an error on every rank, not a deadlock.
                    let mismatch = comm.all_gather_i32(&vec![0; comm.rank() + 1], &mut vec![0; 3 * (comm.rank() + 1)]);
                    (buf, gathered, ids, mismatch.is_err())
                })
            })
            .collect();
        for h in handles {
            let (buf, gathered, ids, mismatch_failed) = h.join().unwrap();
            assert_eq!(buf, vec![3.0, 30.0]);
            assert_eq!(gathered, vec![0.0, 1.0, 2.0]);
            assert_eq!(ids, vec![0, -1, 1, -1, 2, -1]);
            assert!(mismatch_failed);
        }
    }

    #[test]
    fn single_rank_is_identity() {
        let mut c = SingleRank;
        let mut buf = vec![1.5, 2.5];
        c.all_reduce_sum(&mut buf).unwrap();
        assert_eq!(buf, vec![1.5, 2.5]);
        let mut out = vec![0; 2];
        c.all_gather_i32(&[4, 5], &mut out).unwrap();
        assert_eq!(out, vec![4, 5]);
        assert!(c.all_gather_f32(&[1.0], &mut [0.0; 2]).is_err());
    }
}
