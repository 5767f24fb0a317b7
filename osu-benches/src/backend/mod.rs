//! The small message-passing interface the benchmarks are written against, and its two
//! implementations: [`braid`] (Braid's Rust API) and `rsmpi` (a system MPI, cargo feature
//! `rsmpi`).
//!
//! # Receive windows
//! As OSU does in C, [`Backend::window`] receives every message of a window into the same
//! buffer. Safe Rust cannot lend one `&mut` buffer to several outstanding receives, so both
//! backends post these receives through raw memory: Braid's
//! `immediate_receive_raw_with_tag`, and `MPI_Irecv` through rsmpi's `ffi` module.
//!
//! # Collectives
//! The collective benchmarks describe each call as a [`Coll`] over `MPI_COMM_WORLD`: bytes
//! (`MPI_CHAR`) for the data-movement collectives, `f32` (`MPI_FLOAT`) summed for the
//! reductions, as OSU 7 does. [`Backend::collective`] runs one blocking call;
//! [`Backend::immediate`] starts the nonblocking form, runs a closure (the benchmark's dummy
//! compute) and waits.

pub mod braid;
#[cfg(feature = "rsmpi")]
pub mod rsmpi;

/// A reduction the benchmarks need at rank 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// The largest value.
    Max,
    /// The smallest value.
    Min,
    /// The sum of the values.
    Sum,
}

impl ReduceOp {
    /// Combines two values.
    #[must_use]
    pub fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            Self::Max => a.max(b),
            Self::Min => a.min(b),
            Self::Sum => a + b,
        }
    }
}

/// One collective call on `MPI_COMM_WORLD`, with its buffers.
///
/// Rooted variants name their root; buffers only the root reads or writes (`recv` of gather
/// and reduce, `send` of scatter) are ignored at the other ranks. The v-forms take counts and
/// displacements in elements, one per rank (`Alltoallv` uses the same for send and receive).
///
/// # Standard section(s)
/// MPI-4.1 §6.3-§6.12.
#[derive(Debug)]
pub enum Coll<'a> {
    /// `MPI_Allgather`: block i of `recv` gets rank i's `send`.
    Allgather {
        /// This rank's block.
        send: &'a [u8],
        /// `size * send.len()` bytes.
        recv: &'a mut [u8],
    },
    /// `MPI_Allgatherv`.
    Allgatherv {
        /// This rank's block (`counts[rank]` bytes).
        send: &'a [u8],
        /// Receives rank i's block at `displs[i]`.
        recv: &'a mut [u8],
        /// Bytes from each rank.
        counts: &'a [i32],
        /// Offset of each rank's block in `recv`.
        displs: &'a [i32],
    },
    /// `MPI_Allreduce` with `MPI_SUM`.
    Allreduce {
        /// This rank's contribution.
        send: &'a [f32],
        /// The element-wise sum, same length as `send`.
        recv: &'a mut [f32],
    },
    /// `MPI_Alltoall`: block j of `send` goes to rank j; block i of `recv` comes from rank i.
    Alltoall {
        /// `size` equal blocks.
        send: &'a [u8],
        /// `size` equal blocks.
        recv: &'a mut [u8],
    },
    /// `MPI_Alltoallv` with the same counts and displacements on both sides.
    Alltoallv {
        /// Block j (at `displs[j]`, `counts[j]` bytes) goes to rank j.
        send: &'a [u8],
        /// Block i comes from rank i.
        recv: &'a mut [u8],
        /// Bytes per rank.
        counts: &'a [i32],
        /// Offset of each rank's block.
        displs: &'a [i32],
    },
    /// `MPI_Barrier`.
    Barrier,
    /// `MPI_Bcast`.
    Bcast {
        /// The rank whose `buf` is copied.
        root: i32,
        /// Source at the root, destination elsewhere.
        buf: &'a mut [u8],
    },
    /// `MPI_Gather`.
    Gather {
        /// Destination rank.
        root: i32,
        /// This rank's block.
        send: &'a [u8],
        /// `size * send.len()` bytes at the root.
        recv: &'a mut [u8],
    },
    /// `MPI_Gatherv`.
    Gatherv {
        /// Destination rank.
        root: i32,
        /// This rank's block.
        send: &'a [u8],
        /// Rank i's block lands at `displs[i]` (root only).
        recv: &'a mut [u8],
        /// Bytes from each rank.
        counts: &'a [i32],
        /// Offset of each rank's block in `recv`.
        displs: &'a [i32],
    },
    /// `MPI_Reduce` with `MPI_SUM`.
    Reduce {
        /// Destination rank.
        root: i32,
        /// This rank's contribution.
        send: &'a [f32],
        /// The sum (root only).
        recv: &'a mut [f32],
    },
    /// `MPI_Reduce_scatter` with `MPI_SUM`: rank i gets block i (`counts[i]` elements, blocks
    /// one after another) of the sum.
    ReduceScatter {
        /// The whole vector: the sum of `counts` elements.
        send: &'a [f32],
        /// This rank's block of the sum (`counts[rank]` elements).
        recv: &'a mut [f32],
        /// Elements of each rank's block.
        counts: &'a [i32],
    },
    /// `MPI_Reduce_scatter_block` with `MPI_SUM`: rank i gets block i of the sum.
    ReduceScatterBlock {
        /// `size` blocks of `recv.len()` elements.
        send: &'a [f32],
        /// This rank's block of the sum.
        recv: &'a mut [f32],
    },
    /// `MPI_Scatter`.
    Scatter {
        /// Source rank.
        root: i32,
        /// `size` equal blocks (root only).
        send: &'a [u8],
        /// This rank's block.
        recv: &'a mut [u8],
    },
    /// `MPI_Scatterv`.
    Scatterv {
        /// Source rank.
        root: i32,
        /// Rank i's block at `displs[i]` (root only).
        send: &'a [u8],
        /// This rank's block.
        recv: &'a mut [u8],
        /// Bytes for each rank.
        counts: &'a [i32],
        /// Offset of each rank's block in `send`.
        displs: &'a [i32],
    },
}

impl Coll<'_> {
    /// The MPI name of the call, for error messages.
    #[must_use]
    pub fn mpi_name(&self) -> &'static str {
        match self {
            Self::Allgather { .. } => "MPI_Allgather",
            Self::Allgatherv { .. } => "MPI_Allgatherv",
            Self::Allreduce { .. } => "MPI_Allreduce",
            Self::Alltoall { .. } => "MPI_Alltoall",
            Self::Alltoallv { .. } => "MPI_Alltoallv",
            Self::Barrier => "MPI_Barrier",
            Self::Bcast { .. } => "MPI_Bcast",
            Self::Gather { .. } => "MPI_Gather",
            Self::Gatherv { .. } => "MPI_Gatherv",
            Self::Reduce { .. } => "MPI_Reduce",
            Self::ReduceScatter { .. } => "MPI_Reduce_scatter",
            Self::ReduceScatterBlock { .. } => "MPI_Reduce_scatter_block",
            Self::Scatter { .. } => "MPI_Scatter",
            Self::Scatterv { .. } => "MPI_Scatterv",
        }
    }
}

/// Point-to-point operations on `MPI_COMM_WORLD` (bytes only), as the benchmarks use them.
///
/// Errors are `anyhow` errors naming the operation and the peer rank.
pub trait Backend {
    /// Backend name for the records (`braid`, `rsmpi`).
    fn name(&self) -> &'static str;
    /// This process's rank.
    fn rank(&self) -> i32;
    /// Number of ranks in the job.
    fn size(&self) -> i32;
    /// Wall-clock time in seconds (`MPI_Wtime`).
    fn time(&self) -> f64;
    /// Blocks until every rank has called it.
    ///
    /// # Errors
    /// The library's error.
    fn barrier(&self) -> anyhow::Result<()>;
    /// Blocking standard-mode send of `buf` to `dest` with `tag`.
    ///
    /// # Errors
    /// The library's error.
    fn send(&self, dest: i32, tag: i32, buf: &[u8]) -> anyhow::Result<()>;
    /// Blocking receive of exactly `buf.len()` bytes from `src` with `tag`.
    ///
    /// # Errors
    /// The library's error.
    fn recv(&self, src: i32, tag: i32, buf: &mut [u8]) -> anyhow::Result<()>;
    /// Posts `recvs` nonblocking receives of `recv.len()` bytes from `peer`, all into `recv`,
    /// then `sends` nonblocking sends of all of `send` to `peer`, then waits for all of them
    /// (OSU's `MPI_Irecv` x w into one buffer, `MPI_Isend` x w from one buffer, `MPI_Waitall`).
    ///
    /// # Errors
    /// The library's error.
    fn window(
        &self,
        peer: i32,
        tag: i32,
        send: &[u8],
        sends: usize,
        recv: &mut [u8],
        recvs: usize,
    ) -> anyhow::Result<()>;
    /// Combines `value` of every rank with `op`; the result is meaningful at rank 0 only.
    ///
    /// # Errors
    /// The library's error.
    fn reduce_to_root(&self, value: f64, op: ReduceOp) -> anyhow::Result<f64>;
    /// Runs one blocking collective call.
    ///
    /// # Errors
    /// The library's error.
    fn collective(&self, op: Coll<'_>) -> anyhow::Result<()>;
    /// Starts the nonblocking form of `op` (`MPI_I...`), calls `between` once it has started,
    /// then waits for it (OSU's `MPI_I...`, dummy compute, `MPI_Wait`). `between` gets a
    /// function that tests the request once (`MPI_Test`; a no-op once it has completed), for
    /// OSU's `-t`.
    ///
    /// # Errors
    /// The library's error; a collective the library has no nonblocking form of.
    fn immediate(&self, op: Coll<'_>, between: &mut Between<'_>) -> anyhow::Result<()>;
}

/// What a nonblocking benchmark does between starting a collective and waiting for it: it is
/// handed a function that tests the request once.
pub type Between<'b> = dyn FnMut(&mut dyn FnMut()) + 'b;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_ops_apply() {
        assert_eq!(ReduceOp::Max.apply(1.0, 2.0), 2.0);
        assert_eq!(ReduceOp::Min.apply(1.0, 2.0), 1.0);
        assert_eq!(ReduceOp::Sum.apply(1.0, 2.0), 3.0);
    }
}
