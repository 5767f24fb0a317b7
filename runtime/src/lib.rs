//! Braid: an MPI-compatible message-passing runtime for clusters of multi-NIC SMP nodes.
//!
//! This crate is what applications link. Its Rust API has the shape of rsmpi's, so rsmpi code
//! ports with few edits:
//!
//! ```no_run
//! use braid::traits::*;
//!
//! let universe = braid::initialize().expect("init");
//! let world = universe.world();
//! if world.rank() == 0 {
//!     world.process_at_rank(1).send(&[1.0f64, 2.0][..]).expect("send");
//! } else if world.rank() == 1 {
//!     let (v, status) = world.any_process().receive_vec::<f64>().expect("receive");
//!     assert_eq!((v.len(), status.source()), (2, 0));
//! }
//! ```
//!
//! Run it with `mpirun -n 2 ./program` (Braid's launcher) or any PMI-1 launcher such as
//! MPICH's `mpiexec`.
//!
//! # What it does and does not do
//! It bootstraps through PMI-1, maps shared-memory rings between the ranks of a host
//! (`braid-shm`, with single-copy pulls of large messages), wires up TCP connections over one
//! or several rails (`BRAID_RAILS`, `BRAID_RAIL_MODE`) authenticated by a per-job key, and
//! runs the sans-IO engine of `braid-engine` over them. All I/O happens in the progress
//! engine (module `core`), driven from the calling thread when it waits. Nothing read from the
//! network is trusted. Communicators and groups (dup, split, create, Cartesian topologies),
//! blocking and nonblocking collectives with size- and host-aware algorithm choice, and
//! derived datatypes are in modules `communicator`, `group`, `topology`, `collective` and
//! `datatype`. Not yet: intercommunicators, one-sided operations and the global address
//! space, a progress thread.
//!
//! # Glossary
//! - **rank**: a process's index in a communicator.
//! - **rail**: one network interface used on every host (`BRAID_RAILS`).
//! - **context**: the matching space of a communicator.
//! - **eager**: small messages travel with their envelope; the send completes locally.
//! - **rendezvous**: large messages wait for the receiver to match, then move straight into
//!   the receive buffer.
//! - **business card**: what a rank publishes through PMI: host identity and addresses.
//! - **group**: an ordered set of processes; a communicator's members.
//! - **schedule**: the rounds of messages and local reductions one collective call runs.
//! - **typemap**: a datatype's sequence of (displacement, primitive type) pairs.
//!
//! Environment variables are listed in one place: module `env` (see the README).

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod bootstrap;
pub mod collective;
pub mod communicator;
mod core;
pub mod datatype;
mod env;
pub mod error;
pub mod group;
pub mod point_to_point;
pub mod request;
pub mod topology;

use std::sync::OnceLock;
use std::time::Instant;

/// `#[derive(Equivalence)]` for structs whose fields are all [`traits::Equivalence`].
pub use braid_derive::Equivalence;
pub use communicator::{
    AnyProcess, Color, CommunicatorRelation, Process, Rank, SimpleCommunicator, Status, Tag,
};
pub use env::EnvError;
pub use error::{Error, InitError};

/// The traits most programs need in scope: `use braid::traits::*;`.
pub mod traits {
    pub use crate::collective::{CommunicatorCollectives, Operation, Root};
    pub use crate::communicator::{Communicator, Destination, Source};
    pub use crate::datatype::{Buffer, BufferMut, Equivalence};
}

/// The initialized library. Dropping it finalizes (`MPI_Finalize`).
#[derive(Debug)]
#[must_use = "dropping the universe finalizes the library"]
pub struct Universe {
    rank: u32,
    size: u32,
}

impl Universe {
    /// The world communicator (`MPI_COMM_WORLD`).
    pub fn world(&self) -> SimpleCommunicator {
        SimpleCommunicator::world(self.rank, self.size)
    }
}

impl Drop for Universe {
    /// Finalizes (`MPI_Finalize`). While the thread unwinds from a panic it aborts the job
    /// instead: finalizing waits for every rank, and the others may be waiting for this one.
    fn drop(&mut self) {
        if std::thread::panicking() {
            bootstrap::abort_with(101, "a rank panicked");
        }
        bootstrap::finalize();
    }
}

/// Initializes the library (`MPI_Init`): learns rank and size from the PMI-1 process manager
/// (or runs as a singleton without one) and connects to the other ranks.
///
/// # Errors
/// [`InitError`] naming what failed: PMI, a malformed environment variable, a missing rail, a
/// peer that could not be reached.
pub fn initialize() -> Result<Universe, InitError> {
    let _ = epoch();
    let (rank, size) = bootstrap::init()?;
    Ok(Universe { rank, size })
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Seconds since an arbitrary point in the past (`MPI_Wtime`).
pub fn time() -> f64 {
    epoch().elapsed().as_secs_f64()
}

/// Resolution of [`time`] in seconds (`MPI_Wtick`).
pub fn time_resolution() -> f64 {
    1e-9
}
