//! Braid's point-to-point engine: the sans-IO core of MPI messaging.
//!
//! The engine is a pure state machine. It takes API calls (post a send, post a receive,
//! probe) and incoming frame headers, and produces frames to send and request completions.
//! It owns MPI matching (posted and unexpected queues per context, `MPI_ANY_SOURCE`,
//! `MPI_ANY_TAG`), per-peer sequence numbers that keep MPI's non-overtaking order whatever
//! path delivered a frame, and the eager and rendezvous protocols.
//!
//! # What it does not do
//! No I/O: it opens no socket, maps no memory and reads no clock. It never touches user
//! buffers either: frames name byte ranges of requests ([`Body`], [`Placement`]) and the
//! driver moves the bytes. It trusts nothing from the wire: every header is decoded with
//! bounds checks ([`wire::Header::decode`]) and checked against the engine's state
//! ([`PeerError`]).
//!
//! # Glossary
//! - **rank**: a process's index in the job.
//! - **context**: a matching space; each communicator owns its own.
//! - **envelope**: (source, context, tag, sequence number) of a message.
//! - **eager**: the protocol for small messages: envelope and payload in one frame.
//! - **rendezvous**: the protocol for large messages: RTS (request to send), CTS (clear to
//!   send, once a receive matched), then data chunks written straight into the receive
//!   buffer.
//! - **rail**: one network path between two ranks; frames of one pair may travel over
//!   several, so they may arrive out of order.
//!
//! # Not yet implemented
//! Cancellation of sends, matched probe (`MPI_Mprobe`), persistent requests. (Frames lost
//! with a rail are resent by the TCP transport, below the engine.)

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod engine;
mod ids;
pub mod wire;

pub use engine::{
    Body, Completion, Config, Engine, Incoming, Outcome, PeerError, Placement, ProbeInfo, Pull,
    Push, RecvStatus, SendMode, SourceSel, TagSel, Transmit, UsageError,
};
pub use ids::{
    ContextId, FrameToken, IdBuildHasher, IdHasher, IdMap, Rank, ReqId, Seq, SeqKey, SeqMap, Tag,
};
