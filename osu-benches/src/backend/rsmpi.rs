//! The backend over a system MPI through rsmpi (cargo feature `rsmpi`).
//!
//! rsmpi reports MPI errors by aborting the job (MPI's default error handler), so these
//! methods only return errors for misuse detected here.

use anyhow::anyhow;
use mpi::collective::SystemOperation;
use mpi::traits::*;

use super::{Backend, ReduceOp, split_window};
use crate::options::Config;

/// The system MPI's `MPI_COMM_WORLD`, borrowed for one run.
pub struct RsmpiBackend<'w> {
    /// The world communicator; the universe that made it outlives this backend.
    world: &'w mpi::topology::SimpleCommunicator,
}

impl std::fmt::Debug for RsmpiBackend<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsmpiBackend")
            .field("rank", &self.world.rank())
            .field("size", &self.world.size())
            .finish()
    }
}

impl<'w> RsmpiBackend<'w> {
    /// Wraps `world`.
    #[must_use]
    pub fn new(world: &'w mpi::topology::SimpleCommunicator) -> Self {
        Self { world }
    }
}

/// Initializes the system MPI, runs `f` over its world communicator, then finalizes.
///
/// # Errors
/// MPI was already initialized, or `f`'s error.
pub fn with_backend<R>(
    config: &Config,
    f: impl FnOnce(&RsmpiBackend<'_>, &Config) -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    let universe = mpi::initialize().ok_or_else(|| anyhow!("MPI_Init: MPI already initialized"))?;
    let world = universe.world();
    let backend = RsmpiBackend::new(&world);
    // `world`, then `universe` (which finalizes), drop here in reverse declaration order.
    f(&backend, config)
}

impl Backend for RsmpiBackend<'_> {
    fn name(&self) -> &'static str {
        "rsmpi"
    }

    fn rank(&self) -> i32 {
        self.world.rank()
    }

    fn size(&self) -> i32 {
        self.world.size()
    }

    fn time(&self) -> f64 {
        mpi::time()
    }

    fn barrier(&self) -> anyhow::Result<()> {
        self.world.barrier();
        Ok(())
    }

    fn send(&self, dest: i32, tag: i32, buf: &[u8]) -> anyhow::Result<()> {
        self.world.process_at_rank(dest).send_with_tag(buf, tag);
        Ok(())
    }

    fn recv(&self, src: i32, tag: i32, buf: &mut [u8]) -> anyhow::Result<()> {
        let len = buf.len();
        let status = self
            .world
            .process_at_rank(src)
            .receive_into_with_tag(buf, tag);
        let count = usize::try_from(status.count(u8::equivalent_datatype())).unwrap_or(usize::MAX);
        anyhow::ensure!(
            count == len,
            "received {count} bytes from rank {src}, expected {len}"
        );
        Ok(())
    }

    fn window(
        &self,
        peer: i32,
        tag: i32,
        send: &[u8],
        sends: usize,
        recv: &mut [u8],
        recvs: usize,
    ) -> anyhow::Result<()> {
        let slices = split_window(recv, recvs)?;
        let process = self.world.process_at_rank(peer);
        mpi::request::multiple_scope(sends + recvs, |scope, coll| {
            for slice in slices {
                coll.add(process.immediate_receive_into_with_tag(scope, slice, tag));
            }
            for _ in 0..sends {
                coll.add(process.immediate_send_with_tag(scope, send, tag));
            }
            let mut done = Vec::with_capacity(sends + recvs);
            coll.wait_all(&mut done);
        });
        Ok(())
    }

    fn reduce_to_root(&self, value: f64, op: ReduceOp) -> anyhow::Result<f64> {
        let op = match op {
            ReduceOp::Max => SystemOperation::max(),
            ReduceOp::Sum => SystemOperation::sum(),
        };
        let root = self.world.process_at_rank(0);
        if self.rank() == 0 {
            let mut out = 0.0f64;
            root.reduce_into_root(&value, &mut out, op);
            Ok(out)
        } else {
            root.reduce_into(&value, op);
            Ok(value)
        }
    }
}
