//! The cpu engine's tensor-parallel collectives over MPI, on a communicator of its own (it lives with
//! the engine: cluster knows nothing of engines).

use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::topology::{Communicator, SimpleCommunicator};

use super::comm::{CommError, TpComm};

/// `TpComm` on an MPI communicator (a duplicate of the world, so engine traffic never matches the
/// profiler's own collectives). MPI reports errors through its error handler, which aborts the job
/// by default, so these calls only fail on size mismatches we check first.
pub struct MpiComm {
    comm: SimpleCommunicator,
    scratch: Vec<f32>,
}

impl MpiComm {
    pub fn new(comm: SimpleCommunicator) -> MpiComm {
        MpiComm { comm, scratch: Vec::new() }
    }
}

impl TpComm for MpiComm {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    fn world(&self) -> usize {
        self.comm.size() as usize
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
        if self.world() == 1 {
            return Ok(());
        }
        // MPI_Allreduce needs distinct buffers here; the scratch grows once and is reused.
        self.scratch.clear();
        self.scratch.extend_from_slice(buf);
        self.comm.all_reduce_into(&self.scratch[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn all_gather_f32(&mut self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        check_gather(send.len(), recv.len(), self.world())?;
        self.comm.all_gather_into(send, recv);
        Ok(())
    }

    fn all_gather_i32(&mut self, send: &[i32], recv: &mut [i32]) -> Result<(), CommError> {
        check_gather(send.len(), recv.len(), self.world())?;
        self.comm.all_gather_into(send, recv);
        Ok(())
    }
}

fn check_gather(send: usize, recv: usize, world: usize) -> Result<(), CommError> {
    if send * world != recv {
        return Err(CommError(format!("all-gather buffer sizes disagree: {send} per rank × {world} ranks != {recv}")));
    }
    Ok(())
}
