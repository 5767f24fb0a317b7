//! The backend over a system MPI through rsmpi (cargo feature `rsmpi`).
//!
//! rsmpi reports MPI errors by aborting the job (MPI's default error handler), so these
//! methods only return errors for misuse detected here.
//!
//! Every [`Coll`] maps onto the rsmpi call of the same name (`mpi::collective`), blocking or
//! nonblocking, except `MPI_Reduce_scatter` (`Coll::ReduceScatter`): rsmpi 0.8 has neither it
//! nor `MPI_Ireduce_scatter`, so `osu_ireduce_scatter` does not run on this backend.

use anyhow::{anyhow, bail};
use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::request::{LocalScope, Request, Scope};
use mpi::traits::*;

use super::{Backend, Between, Coll, ReduceOp};
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

    #[allow(unsafe_code)]
    fn window(
        &self,
        peer: i32,
        tag: i32,
        send: &[u8],
        sends: usize,
        recv: &mut [u8],
        recvs: usize,
    ) -> anyhow::Result<()> {
        use mpi::ffi;
        use mpi::raw::AsRaw;
        let too_long = |n: usize| anyhow!("a {n}-byte message exceeds MPI's int count");
        let rcount = i32::try_from(recv.len()).map_err(|_| too_long(recv.len()))?;
        let scount = i32::try_from(send.len()).map_err(|_| too_long(send.len()))?;
        let comm = self.world.as_raw();
        // rsmpi's safe receives need disjoint buffers; OSU receives the whole window into one,
        // so this goes to the C API as OSU does.
        // SAFETY: the null request handle is a plain value; the array is overwritten below.
        let mut reqs = vec![unsafe { ffi::RSMPI_REQUEST_NULL }; sends + recvs];
        for r in &mut reqs[..recvs] {
            // SAFETY: `recv` is valid for `rcount` bytes and stays borrowed, untouched, until
            // MPI_Waitall below has completed every request.
            unsafe {
                ffi::MPI_Irecv(
                    recv.as_mut_ptr().cast(),
                    rcount,
                    ffi::RSMPI_UINT8_T,
                    peer,
                    tag,
                    comm,
                    r,
                );
            }
        }
        for r in &mut reqs[recvs..] {
            // SAFETY: `send` is valid for `scount` bytes and borrowed until MPI_Waitall.
            unsafe {
                ffi::MPI_Isend(
                    send.as_ptr().cast_mut().cast(),
                    scount,
                    ffi::RSMPI_UINT8_T,
                    peer,
                    tag,
                    comm,
                    r,
                );
            }
        }
        // SAFETY: `reqs` holds `sends + recvs` valid request handles; statuses are ignored.
        unsafe {
            ffi::MPI_Waitall(
                reqs.len() as i32,
                reqs.as_mut_ptr(),
                ffi::RSMPI_STATUSES_IGNORE,
            );
        }
        Ok(())
    }

    fn reduce_to_root(&self, value: f64, op: ReduceOp) -> anyhow::Result<f64> {
        let op = match op {
            ReduceOp::Max => SystemOperation::max(),
            ReduceOp::Min => SystemOperation::min(),
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

    fn collective(&self, op: Coll<'_>) -> anyhow::Result<()> {
        let me = self.rank();
        let w = self.world;
        let sum = SystemOperation::sum;
        match op {
            Coll::Allgather { send, recv } => w.all_gather_into(send, recv),
            Coll::Allgatherv {
                send,
                recv,
                counts,
                displs,
            } => w.all_gather_varcount_into(send, &mut PartitionMut::new(recv, counts, displs)),
            Coll::Allreduce { send, recv } => w.all_reduce_into(send, recv, sum()),
            Coll::Alltoall { send, recv } => w.all_to_all_into(send, recv),
            Coll::Alltoallv {
                send,
                recv,
                counts,
                displs,
            } => w.all_to_all_varcount_into(
                &Partition::new(send, counts, displs),
                &mut PartitionMut::new(recv, counts, displs),
            ),
            Coll::Barrier => w.barrier(),
            Coll::Bcast { root, buf } => w.process_at_rank(root).broadcast_into(buf),
            Coll::Gather { root, send, recv } => {
                let p = w.process_at_rank(root);
                if me == root {
                    p.gather_into_root(send, recv);
                } else {
                    p.gather_into(send);
                }
            }
            Coll::Gatherv {
                root,
                send,
                recv,
                counts,
                displs,
            } => {
                let p = w.process_at_rank(root);
                if me == root {
                    p.gather_varcount_into_root(send, &mut PartitionMut::new(recv, counts, displs));
                } else {
                    p.gather_varcount_into(send);
                }
            }
            Coll::Reduce { root, send, recv } => {
                let p = w.process_at_rank(root);
                if me == root {
                    p.reduce_into_root(send, recv, sum());
                } else {
                    p.reduce_into(send, sum());
                }
            }
            Coll::ReduceScatter { .. } => bail!(NO_REDUCE_SCATTER),
            Coll::ReduceScatterBlock { send, recv } => {
                w.reduce_scatter_block_into(send, recv, sum());
            }
            Coll::Scatter { root, send, recv } => {
                let p = w.process_at_rank(root);
                if me == root {
                    p.scatter_into_root(send, recv);
                } else {
                    p.scatter_into(recv);
                }
            }
            Coll::Scatterv {
                root,
                send,
                recv,
                counts,
                displs,
            } => {
                let p = w.process_at_rank(root);
                if me == root {
                    p.scatter_varcount_into_root(&Partition::new(send, counts, displs), recv);
                } else {
                    p.scatter_varcount_into(recv);
                }
            }
        }
        Ok(())
    }

    fn immediate(&self, op: Coll<'_>, between: &mut Between<'_>) -> anyhow::Result<()> {
        let me = self.rank();
        let w = self.world;
        let sum = SystemOperation::sum;
        // Each arm starts its request in a scope (`scoped`), computes, and waits. The partitions
        // of the v-forms are made first, since requests borrow them for the scope's lifetime.
        match op {
            Coll::Allgather { send, recv } => {
                scoped(between, |s| w.immediate_all_gather_into(s, send, recv));
            }
            Coll::Allgatherv {
                send,
                recv,
                counts,
                displs,
            } => {
                let mut part = PartitionMut::new(recv, counts, displs);
                scoped(between, |s| {
                    w.immediate_all_gather_varcount_into(s, send, &mut part)
                });
            }
            Coll::Allreduce { send, recv } => {
                scoped(between, |s| {
                    w.immediate_all_reduce_into(s, send, recv, sum())
                });
            }
            Coll::Alltoall { send, recv } => {
                scoped(between, |s| w.immediate_all_to_all_into(s, send, recv));
            }
            Coll::Alltoallv {
                send,
                recv,
                counts,
                displs,
            } => {
                let sp = Partition::new(send, counts, displs);
                let mut rp = PartitionMut::new(recv, counts, displs);
                scoped(between, |s| {
                    w.immediate_all_to_all_varcount_into(s, &sp, &mut rp)
                });
            }
            Coll::Barrier => overlap(w.immediate_barrier(), between),
            Coll::Bcast { root, buf } => {
                scoped(between, |s| {
                    w.process_at_rank(root).immediate_broadcast_into(s, buf)
                });
            }
            Coll::Gather { root, send, recv } => {
                scoped(between, |s| {
                    let p = w.process_at_rank(root);
                    if me == root {
                        p.immediate_gather_into_root(s, send, recv)
                    } else {
                        p.immediate_gather_into(s, send)
                    }
                });
            }
            Coll::Gatherv {
                root,
                send,
                recv,
                counts,
                displs,
            } => {
                let p = w.process_at_rank(root);
                // The root's request borrows the partition, the others' their send buffer.
                if me == root {
                    let mut part = PartitionMut::new(recv, counts, displs);
                    scoped(between, |s| {
                        p.immediate_gather_varcount_into_root(s, send, &mut part)
                    });
                } else {
                    scoped(between, |s| p.immediate_gather_varcount_into(s, send));
                }
            }
            Coll::Reduce { root, send, recv } => {
                scoped(between, |s| {
                    let p = w.process_at_rank(root);
                    if me == root {
                        p.immediate_reduce_into_root(s, send, recv, sum())
                    } else {
                        p.immediate_reduce_into(s, send, sum())
                    }
                });
            }
            Coll::ReduceScatter { .. } => bail!(NO_REDUCE_SCATTER),
            Coll::ReduceScatterBlock { send, recv } => {
                scoped(between, |s| {
                    w.immediate_reduce_scatter_block_into(s, send, recv, sum())
                });
            }
            Coll::Scatter { root, send, recv } => {
                scoped(between, |s| {
                    let p = w.process_at_rank(root);
                    if me == root {
                        p.immediate_scatter_into_root(s, send, recv)
                    } else {
                        p.immediate_scatter_into(s, recv)
                    }
                });
            }
            Coll::Scatterv {
                root,
                send,
                recv,
                counts,
                displs,
            } => {
                let part = Partition::new(send, counts, displs);
                scoped(between, |s| {
                    let p = w.process_at_rank(root);
                    if me == root {
                        p.immediate_scatter_varcount_into_root(s, &part, recv)
                    } else {
                        p.immediate_scatter_varcount_into(s, recv)
                    }
                });
            }
        }
        Ok(())
    }
}

/// Runs `start` in a new request scope, then [`overlap`]s the request it started.
fn scoped<'a, D: ?Sized + 'a, F>(between: &mut Between<'_>, start: F)
where
    F: for<'s> FnOnce(&'s LocalScope<'a>) -> Request<'a, D, &'s LocalScope<'a>>,
{
    mpi::request::scope(|scope| overlap(start(scope), between));
}

/// OSU's overlap step: runs `between` (the dummy compute, which may test the request), then
/// waits unless a test saw the request complete.
fn overlap<'a, D: ?Sized, S: Scope<'a>>(request: Request<'a, D, S>, between: &mut Between<'_>) {
    let mut slot = Some(request);
    between(&mut || {
        if let Some(r) = slot.take()
            && let Err(r) = r.test()
        {
            slot = Some(r);
        }
    });
    if let Some(r) = slot {
        r.wait();
    }
}

/// Why `Coll::ReduceScatter` does not run here.
const NO_REDUCE_SCATTER: &str = "rsmpi 0.8 has no MPI_Reduce_scatter nor MPI_Ireduce_scatter \
     (only the _block forms); run osu_ireduce_scatter on the braid backend";
