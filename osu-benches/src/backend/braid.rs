//! The backend over Braid's Rust API (crate `braid`).
//!
//! Braid has no reductions yet, so [`Backend::reduce_to_root`] gathers the values to rank 0
//! over point-to-point messages with a reserved tag.

use std::fmt::Display;

use anyhow::{Context as _, anyhow};
use braid::traits::*;

use super::{Backend, ReduceOp, split_window};
use crate::options::Config;

/// Tag of the messages carrying reduction values (apart from every benchmark tag).
const REDUCE_TAG: i32 = 0x0b5e;

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
        let result = braid::request::scope(|scope| {
            let mut requests = Vec::with_capacity(sends + recvs);
            for slice in slices {
                requests.push(process.immediate_receive_into_with_tag(scope, slice, tag)?);
            }
            for _ in 0..sends {
                requests.push(process.immediate_send_with_tag(scope, send, tag)?);
            }
            braid::request::wait_all(requests)?;
            Ok::<_, braid::Error>(())
        });
        ctx(result, || {
            format!("window of {recvs} receives and {sends} sends with rank {peer}")
        })
    }

    fn reduce_to_root(&self, value: f64, op: ReduceOp) -> anyhow::Result<f64> {
        if self.rank() != 0 {
            let bytes = value.to_le_bytes();
            self.send(0, REDUCE_TAG, &bytes)
                .context("reduction to rank 0")?;
            return Ok(value);
        }
        let mut acc = value;
        for r in 1..self.size() {
            let mut bytes = [0u8; 8];
            self.recv(r, REDUCE_TAG, &mut bytes)
                .context("reduction at rank 0")?;
            acc = op.apply(acc, f64::from_le_bytes(bytes));
        }
        Ok(acc)
    }
}
