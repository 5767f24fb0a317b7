//! The backend over Braid's Rust API (crate `braid`).
//!
//! Every [`Coll`] maps onto the `braid::collective` call of the same name, blocking or
//! nonblocking (`immediate_*`). Braid advances a nonblocking collective inside its own calls
//! only (any wait, test, send, receive or probe; no progress thread). The benchmarks' dummy
//! compute makes none by default, so the overlap figures then show how much of a collective
//! completes at its start; with OSU's `-t N` each of the N tests advances it.

use std::fmt::Display;

use anyhow::anyhow;
use braid::collective::{Partition, PartitionMut, SystemOperation};
use braid::request::{LocalScope, Request, Scope};
use braid::traits::*;

use super::{Backend, Between, Coll, ReduceOp};
use crate::options::Config;

/// Turns a braid error (any `Display`) into an `anyhow` error naming what failed.
fn ctx<T, E: Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> anyhow::Result<T> {
    r.map_err(|e| anyhow!("{}: {e}", what()))
}

/// Braid's `MPI_COMM_WORLD`, borrowed for one run.
pub struct BraidBackend<'w> {
    /// The world communicator; the universe that made it outlives this backend.
    world: &'w braid::SimpleCommunicator,
}

impl std::fmt::Debug for BraidBackend<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BraidBackend")
            .field("rank", &self.world.rank())
            .field("size", &self.world.size())
            .finish()
    }
}

impl<'w> BraidBackend<'w> {
    /// Wraps `world`.
    #[must_use]
    pub fn new(world: &'w braid::SimpleCommunicator) -> Self {
        Self { world }
    }
}

/// Initializes Braid, runs `f` over its world communicator, then finalizes.
///
/// # Errors
/// Braid's initialization error, or `f`'s.
pub fn with_backend<R>(
    config: &Config,
    f: impl FnOnce(&BraidBackend<'_>, &Config) -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    let universe = ctx(braid::initialize(), || "initializing Braid".to_owned())?;
    let world = universe.world();
    let backend = BraidBackend::new(&world);
    // `world`, then `universe` (which finalizes), drop here in reverse declaration order.
    f(&backend, config)
}

impl Backend for BraidBackend<'_> {
    fn name(&self) -> &'static str {
        "braid"
    }

    fn rank(&self) -> i32 {
        self.world.rank()
    }

    fn size(&self) -> i32 {
        self.world.size()
    }

    fn time(&self) -> f64 {
        braid::time()
    }

    fn barrier(&self) -> anyhow::Result<()> {
        ctx(self.world.barrier(), || {
            format!("barrier at rank {}", self.rank())
        })
    }

    fn send(&self, dest: i32, tag: i32, buf: &[u8]) -> anyhow::Result<()> {
        ctx(
            self.world.process_at_rank(dest).send_with_tag(buf, tag),
            || format!("send of {} bytes to rank {dest}", buf.len()),
        )
    }

    fn recv(&self, src: i32, tag: i32, buf: &mut [u8]) -> anyhow::Result<()> {
        let len = buf.len();
        let status = ctx(
            self.world
                .process_at_rank(src)
                .receive_into_with_tag(buf, tag),
            || format!("receive of {len} bytes from rank {src}"),
        )?;
        anyhow::ensure!(
            status.count_bytes() == len,
            "received {} bytes from rank {src}, expected {len}",
            status.count_bytes()
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
        let process = self.world.process_at_rank(peer);
        let (ptr, len) = (recv.as_mut_ptr(), recv.len());
        let result = braid::request::scope(|scope| {
            let mut receives = Vec::with_capacity(recvs);
            for _ in 0..recvs {
                // SAFETY: `recv` stays mutably borrowed, and untouched, until `wait_all`
                // below has finished every receive (on an error, dropping them waits).
                receives.push(unsafe { process.immediate_receive_raw_with_tag(ptr, len, tag)? });
            }
            let mut requests = Vec::with_capacity(sends);
            for _ in 0..sends {
                requests.push(process.immediate_send_with_tag(scope, send, tag)?);
            }
            // Waiting for either set progresses both.
            braid::request::wait_all(receives)?;
            braid::request::wait_all(requests)?;
            Ok::<_, braid::Error>(())
        });
        ctx(result, || {
            format!("window of {recvs} receives and {sends} sends with rank {peer}")
        })
    }

    fn reduce_to_root(&self, value: f64, op: ReduceOp) -> anyhow::Result<f64> {
        let sys = match op {
            ReduceOp::Max => SystemOperation::max(),
            ReduceOp::Min => SystemOperation::min(),
            ReduceOp::Sum => SystemOperation::sum(),
        };
        let root = self.world.process_at_rank(0);
        let result = if self.rank() == 0 {
            let mut out = [0.0f64];
            root.reduce_into_root(&[value][..], &mut out[..], sys)
                .map(|()| out[0])
        } else {
            root.reduce_into(&[value][..], sys).map(|()| value)
        };
        ctx(result, || {
            format!("MPI_Reduce of one double at rank {}", self.rank())
        })
    }

    fn collective(&self, op: Coll<'_>) -> anyhow::Result<()> {
        let name = op.mpi_name();
        let me = self.rank();
        let w = self.world;
        let sum = SystemOperation::sum;
        let result = match op {
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
                    p.gather_into_root(send, recv)
                } else {
                    p.gather_into(send)
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
                    p.gather_varcount_into_root(send, &mut PartitionMut::new(recv, counts, displs))
                } else {
                    p.gather_varcount_into(send)
                }
            }
            Coll::Reduce { root, send, recv } => {
                let p = w.process_at_rank(root);
                if me == root {
                    p.reduce_into_root(send, recv, sum())
                } else {
                    p.reduce_into(send, sum())
                }
            }
            Coll::ReduceScatter { send, recv, counts } => {
                w.reduce_scatter_varcount_into(send, recv, counts, sum())
            }
            Coll::ReduceScatterBlock { send, recv } => {
                w.reduce_scatter_block_into(send, recv, sum())
            }
            Coll::Scatter { root, send, recv } => {
                let p = w.process_at_rank(root);
                if me == root {
                    p.scatter_into_root(send, recv)
                } else {
                    p.scatter_into(recv)
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
                    p.scatter_varcount_into_root(&Partition::new(send, counts, displs), recv)
                } else {
                    p.scatter_varcount_into(recv)
                }
            }
        };
        ctx(result, || format!("{name} at rank {me}"))
    }

    fn immediate(&self, op: Coll<'_>, between: &mut Between<'_>) -> anyhow::Result<()> {
        let name = op.mpi_name();
        let me = self.rank();
        let w = self.world;
        let sum = SystemOperation::sum;
        // Each arm starts its request in a scope (`scoped`), computes, and waits. The partitions
        // of the v-forms are made first, since requests borrow them for the scope's lifetime.
        let result = match op {
            Coll::Allgather { send, recv } => {
                scoped(between, |s| w.immediate_all_gather_into(s, send, recv))
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
                })
            }
            Coll::Allreduce { send, recv } => scoped(between, |s| {
                w.immediate_all_reduce_into(s, send, recv, sum())
            }),
            Coll::Alltoall { send, recv } => {
                scoped(between, |s| w.immediate_all_to_all_into(s, send, recv))
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
                })
            }
            Coll::Barrier => overlap(w.immediate_barrier(), between),
            Coll::Bcast { root, buf } => scoped(between, |s| {
                w.process_at_rank(root).immediate_broadcast_into(s, buf)
            }),
            Coll::Gather { root, send, recv } => scoped(between, |s| {
                let p = w.process_at_rank(root);
                if me == root {
                    p.immediate_gather_into_root(s, send, recv)
                } else {
                    p.immediate_gather_into(s, send)
                }
            }),
            Coll::Gatherv {
                root,
                send,
                recv,
                counts,
                displs,
            } => {
                let mut part = PartitionMut::new(recv, counts, displs);
                scoped(between, |s| {
                    let p = w.process_at_rank(root);
                    if me == root {
                        p.immediate_gather_varcount_into_root(s, send, &mut part)
                    } else {
                        p.immediate_gather_varcount_into(s, send)
                    }
                })
            }
            Coll::Reduce { root, send, recv } => scoped(between, |s| {
                let p = w.process_at_rank(root);
                if me == root {
                    p.immediate_reduce_into_root(s, send, recv, sum())
                } else {
                    p.immediate_reduce_into(s, send, sum())
                }
            }),
            Coll::ReduceScatter { send, recv, counts } => scoped(between, |s| {
                w.immediate_reduce_scatter_varcount_into(s, send, recv, counts, sum())
            }),
            Coll::ReduceScatterBlock { send, recv } => scoped(between, |s| {
                w.immediate_reduce_scatter_block_into(s, send, recv, sum())
            }),
            Coll::Scatter { root, send, recv } => scoped(between, |s| {
                let p = w.process_at_rank(root);
                if me == root {
                    p.immediate_scatter_into_root(s, send, recv)
                } else {
                    p.immediate_scatter_into(s, recv)
                }
            }),
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
                })
            }
        };
        ctx(result, || format!("nonblocking {name} at rank {me}"))
    }
}

/// Runs `start` in a new request scope, then [`overlap`]s the request it started.
fn scoped<'a, F>(between: &mut Between<'_>, start: F) -> Result<(), braid::Error>
where
    F: for<'s> FnOnce(&'s LocalScope<'a>) -> Result<Request<'a, &'s LocalScope<'a>>, braid::Error>,
{
    braid::request::scope(|scope| overlap(start(scope), between))
}

/// OSU's overlap step: once the request has started, runs `between` (the dummy compute,
/// which may test the request), then waits unless a test saw it complete.
fn overlap<'a, S: Scope<'a>>(
    started: Result<Request<'a, S>, braid::Error>,
    between: &mut Between<'_>,
) -> Result<(), braid::Error> {
    let mut request = started?;
    let mut outcome: Option<Result<(), braid::Error>> = None;
    between(&mut || {
        if outcome.is_none() {
            match request.test() {
                Ok(None) => {}
                Ok(Some(_)) => outcome = Some(Ok(())),
                Err(e) => outcome = Some(Err(e)),
            }
        }
    });
    match outcome {
        Some(r) => {
            // Completed (and collected) by a test: dropping the request does not wait.
            drop(request);
            r
        }
        None => request.wait().map(drop),
    }
}
