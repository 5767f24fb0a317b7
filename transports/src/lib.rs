//! Braid's transports: the [`Transport`] trait, rails, and the TCP transport.
//!
//! A transport moves frames (a [`HEADER_LEN`]-byte header and its payload) between ranks. It
//! does not interpret headers beyond what its [`FrameSink`] tells it: the runtime decodes
//! each header, asks the engine where its payload goes, and returns that destination.
//!
//! # What it does not do
//! No matching and no protocol: that is the engine's (`braid-engine`). It trusts nothing
//! from the network: every connection must present the per-job key before any frame is
//! accepted, and a connection whose frames the sink rejects is closed and its peer
//! reported lost.
//!
//! # Glossary
//! - **rank**: a process's index in the job.
//! - **rail**: one network interface (one local address) on every host; see [`rail`].
//! - **job key**: a random secret shared by the ranks of one job; connections without it are
//!   refused.
//! - **frame**: a header plus payload; the unit a transport moves.
//!
//! Rail modes (`single`, `indep`, `stripe`, `weighted`) and rail failover with resend of
//! in-flight frames are in [`tcp`]; the shared-memory transport is in `braid-shm`, on top of
//! the stream framing of [`stream`].
//!
//! # Not yet implemented
//! Failover in `single` mode (one rail by definition); moving an `indep` pair back to its own
//! rail when that rail comes back up; measuring rail latency to choose the small-frame rail.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod rail;
pub mod stream;
pub mod tcp;

use std::fmt;
use std::time::Duration;

pub use braid_engine::wire::HEADER_LEN;
use braid_engine::wire::Header;
use braid_engine::{FrameToken, Rank, RecvStatus, ReqId};

/// The per-job secret that authenticates connections.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct JobKey(pub [u8; 16]);

impl fmt::Debug for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobKey(..)")
    }
}

impl JobKey {
    /// Hex form, for the business card.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses the hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut k = [0u8; 16];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(k))
    }
}

/// Where the payload of an incoming frame goes, as decided by the [`FrameSink`].
#[derive(Debug)]
pub struct Dest {
    /// Passed back to [`FrameSink::on_payload`] when the payload is placed.
    pub token: FrameToken,
    /// Start of the memory that receives the first `take` payload bytes.
    pub ptr: *mut u8,
    /// Payload bytes to store at `ptr`.
    pub take: usize,
    /// Payload bytes to read and discard after them.
    pub skip: usize,
}

/// The payload of an outgoing frame.
#[derive(Debug, Clone, Copy)]
pub struct Body {
    /// Start of the bytes.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
    /// The send request owning the bytes. With `Some`, the transport may keep the pointer
    /// until it reports [`FrameSink::on_sent`] for that request; with `None` it copies what
    /// it cannot write at once.
    pub owner: Option<ReqId>,
}

impl Body {
    /// No payload.
    pub const EMPTY: Self = Self {
        ptr: std::ptr::null(),
        len: 0,
        owner: None,
    };
}

/// Receives what a transport reads.
///
/// # Safety
/// Every [`Dest`] returned by `on_header` must point to memory valid for writes of `take`
/// bytes that nothing else accesses until `on_payload` is called with its token or
/// `on_peer_lost` is called for the peer. Every destination returned by `take_whole` must be
/// valid for writes of the length returned with it, and not otherwise accessed during the
/// transport call that asked.
pub unsafe trait FrameSink {
    /// A whole small frame from `from` can be copied at once from where it lies (shared
    /// memory): return where its payload goes and how many bytes fit there (at most that many
    /// are written), which takes the frame, or `None` to have it delivered through
    /// [`FrameSink::on_header`] as usual. Offered only for compact eager frames whose payload
    /// is complete; the default declines.
    fn take_whole(&mut self, from: Rank, header: &Header) -> Option<(*mut u8, usize)> {
        let _ = (from, header);
        None
    }
    /// A frame header arrived from `from`. Return where its payload goes (`take + skip` must
    /// equal the payload length), or an error that closes the connection.
    ///
    /// # Errors
    /// A description of the protocol violation.
    fn on_header(&mut self, from: Rank, header: &[u8; HEADER_LEN]) -> Result<Dest, String>;
    /// The payload of the frame `token` has been placed.
    fn on_payload(&mut self, from: Rank, token: FrameToken);
    /// All bytes that request `req` lent the transport are written; its buffer is free.
    fn on_sent(&mut self, req: ReqId);
    /// The connection to `peer` failed.
    fn on_peer_lost(&mut self, peer: Rank, error: TransportError);
}

/// What a transport's receive fast path (`take_eager`) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The frame was taken; the receive is complete.
    Taken(RecvStatus),
    /// No frame from the peer yet.
    Empty,
    /// A frame the fast path does not take (another kind, not accepted, partly written,
    /// too long): the general path must read it.
    Other,
}

/// A transport failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer closed the connection.
    #[error("connection to rank {peer} ({addr}) closed by the peer")]
    PeerClosed {
        /// The peer.
        peer: Rank,
        /// Its address.
        addr: String,
    },
    /// The peer sent a frame that broke the protocol.
    #[error("rank {peer} ({addr}) sent a bad frame: {reason}")]
    PeerProtocol {
        /// The peer.
        peer: Rank,
        /// Its address.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// A socket call failed.
    #[error("{op} on the connection to rank {peer} ({addr}) failed: {source}")]
    LocalIo {
        /// The peer.
        peer: Rank,
        /// Its address.
        addr: String,
        /// The call.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// There is no connection to that rank.
    #[error("no connection to rank {0}")]
    NotConnected(Rank),
    /// Every rail to the peer failed and no other rail could take over.
    #[error("no rail left to rank {peer} on host {host}: {why}; last failure: {last}")]
    NoRailLeft {
        /// The peer.
        peer: Rank,
        /// Its host.
        host: String,
        /// What was tried (rails and how each failed), or what was waited for.
        why: String,
        /// The failure of the pair's last connection.
        #[source]
        last: Box<Self>,
    },
}

/// A way to move frames between ranks.
pub trait Transport {
    /// Queues or writes a frame to `to`.
    ///
    /// # Safety
    /// `body.ptr` must be valid for reads of `body.len` bytes until this call returns, or,
    /// when `body.owner` is set, until [`FrameSink::on_sent`] reports that request.
    ///
    /// # Errors
    /// [`TransportError`] when the peer is not connected or the write failed.
    unsafe fn send(
        &mut self,
        to: Rank,
        header: &[u8; HEADER_LEN],
        body: Body,
    ) -> Result<(), TransportError>;

    /// Makes progress: writes queued frames and reads incoming ones into `sink`. Waits up to
    /// `timeout` for something to happen when nothing is ready (`Some(ZERO)`: do not wait).
    /// Returns whether anything was read or written.
    ///
    /// # Errors
    /// An OS failure of the poller itself; connection failures go to the sink.
    fn progress(
        &mut self,
        sink: &mut dyn FrameSink,
        timeout: Option<Duration>,
    ) -> std::io::Result<bool>;

    /// Whether frames are still queued for writing.
    fn has_pending_writes(&self) -> bool;
}
