//! Errors of the runtime, split by who is at fault: the peer (`Peer*`), this process or its
//! OS (`Local*`), or the caller (`Usage*`).

use crate::Rank;

/// Why [`crate::initialize`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The library is already initialized in this process.
    #[error("braid is already initialized in this process")]
    UsageAlreadyInitialized,
    /// An environment variable is malformed.
    #[error(transparent)]
    UsageEnv(#[from] crate::env::EnvError),
    /// Talking to the process manager failed.
    #[error("bootstrap through PMI failed: {0}")]
    LocalPmi(#[from] braid_pmi::PmiError),
    /// A business card from the process manager is malformed.
    #[error("rank {rank} published a malformed business card '{card}'")]
    PeerCard {
        /// The rank.
        rank: Rank,
        /// The card.
        card: String,
    },
    /// The rails named by `BRAID_RAILS` cannot be used.
    #[error(transparent)]
    LocalRail(#[from] braid_transports::rail::RailError),
    /// The shared-memory transport could not be set up.
    #[error(transparent)]
    LocalShm(#[from] braid_shm::transport::ShmError),
    /// Connecting to the other ranks failed.
    #[error("rank {rank} on host {host}: wire-up failed: {source}")]
    LocalWireUp {
        /// This rank.
        rank: Rank,
        /// This host.
        host: String,
        /// What failed.
        source: braid_transports::tcp::WireUpError,
    },
}

/// A communication error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message was longer than the receive buffer (`MPI_ERR_TRUNCATE`). The first
    /// `stored` bytes were received.
    #[error(
        "message truncated: {len} bytes from rank {source_rank} (tag {tag}) into a buffer of {capacity} bytes"
    )]
    UsageTruncated {
        /// Sender.
        source_rank: Rank,
        /// Tag.
        tag: i32,
        /// Message length.
        len: usize,
        /// Receive buffer size.
        capacity: usize,
    },
    /// A rank outside the communicator (`MPI_ERR_RANK`).
    #[error("rank {rank} is out of range for a communicator of {size} ranks")]
    UsageInvalidRank {
        /// The rank given.
        rank: Rank,
        /// Communicator size.
        size: Rank,
    },
    /// A negative or reserved tag (`MPI_ERR_TAG`).
    #[error("tag {0} is invalid (tags are 0..=i32::MAX)")]
    UsageInvalidTag(i32),
    /// A receive buffer whose size is not a multiple of the element size.
    #[error("message of {len} bytes is not a whole number of {elem}-byte elements")]
    UsageElementSize {
        /// Message length.
        len: usize,
        /// Element size.
        elem: usize,
    },
    /// The peer is gone: its connection failed or it broke the protocol
    /// (`MPI_ERR_PROC_FAILED`).
    #[error("rank {rank} is lost: {reason}")]
    PeerLost {
        /// The peer.
        rank: Rank,
        /// What happened.
        reason: String,
    },
    /// The poller or another OS facility failed (`MPI_ERR_OTHER`).
    #[error("local failure: {0}")]
    LocalOs(String),
    // ---- communicators, groups, collectives, datatypes ----
    /// A root outside the communicator (`MPI_ERR_ROOT`).
    #[error("root {root} is out of range for a communicator of {size} ranks")]
    UsageInvalidRoot {
        /// The root given.
        root: Rank,
        /// Communicator size.
        size: Rank,
    },
    /// Buffer lengths that do not fit the operation (`MPI_ERR_COUNT`), found locally before
    /// any communication or when a message of the wrong length arrived.
    #[error("count mismatch in {op}: {detail}")]
    UsageCountMismatch {
        /// The operation.
        op: &'static str,
        /// What did not fit.
        detail: String,
    },
    /// A predefined operation applied to a type it is not defined on (`MPI_ERR_OP`).
    #[error("operation {op} is not defined on datatype {datatype}")]
    UsageOpType {
        /// The operation.
        op: &'static str,
        /// The datatype.
        datatype: String,
    },
    /// An invalid argument: bad group rank list, topology, color (`MPI_ERR_ARG`).
    #[error("invalid argument: {0}")]
    UsageArgument(String),
    /// A datatype that cannot be used as given (`MPI_ERR_TYPE`): uncommitted, negative
    /// extent, out-of-range layout.
    #[error("invalid datatype: {0}")]
    UsageDatatype(String),
    /// Every communication context is in use at some member (`MPI_ERR_INTERN`).
    #[error("no free communication context common to all {members} members")]
    LocalContextsExhausted {
        /// Number of members that took part in the allocation.
        members: Rank,
    },
}

impl Error {
    /// The MPI error class of this error (`MPI_Error_class`), as its C constant's name.
    pub fn mpi_class(&self) -> &'static str {
        match self {
            Self::UsageTruncated { .. } => "MPI_ERR_TRUNCATE",
            Self::UsageInvalidRank { .. } => "MPI_ERR_RANK",
            Self::UsageInvalidTag(_) => "MPI_ERR_TAG",
            Self::UsageElementSize { .. } | Self::UsageCountMismatch { .. } => "MPI_ERR_COUNT",
            Self::PeerLost { .. } => "MPI_ERR_PROC_FAILED",
            Self::LocalOs(_) => "MPI_ERR_OTHER",
            Self::UsageInvalidRoot { .. } => "MPI_ERR_ROOT",
            Self::UsageOpType { .. } => "MPI_ERR_OP",
            Self::UsageArgument(_) => "MPI_ERR_ARG",
            Self::UsageDatatype(_) => "MPI_ERR_TYPE",
            Self::LocalContextsExhausted { .. } => "MPI_ERR_INTERN",
        }
    }
}
