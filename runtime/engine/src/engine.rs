//! The point-to-point state machine.

use std::collections::{BTreeMap, VecDeque};

use crate::ids::{ContextId, FrameToken, IdMap, Rank, ReqId, Seq, SeqMap, Tag};
use crate::wire::{FLAG_PULL, FLAG_SYNC, FrameKind, Header, MAX_PAYLOAD};

/// Engine parameters. Per-peer values are indexed by rank.
#[derive(Clone, Debug)]
pub struct Config {
    /// This process's rank.
    pub rank: Rank,
    /// Number of ranks in the job.
    pub size: u32,
    /// Messages up to this many bytes travel eagerly to each peer; larger ones use rendezvous.
    /// Indexed by peer rank; its length is `size`.
    pub eager_limit: Vec<u64>,
    /// Largest data chunk of a rendezvous transfer (at most [`MAX_PAYLOAD`]).
    pub chunk_size: u64,
    /// Per peer: offer the peer to pull large messages straight from this rank's memory
    /// (RTS with [`FLAG_PULL`]); set for peers on the same host. Length `size`.
    pub offer_pull: Vec<bool>,
    /// Per peer: this rank can read the peer's memory, so it accepts pull offers from it.
    /// Length `size`.
    pub can_pull: Vec<bool>,
    /// A pulled message of at least this many bytes, received whole into a buffer whose
    /// address the receive gave ([`Engine::post_recv_at`]), is split: the receiver pulls the
    /// first half while the sender writes the second half into the receive buffer
    /// ([`FrameKind::Push`], [`Push`]), so both processes copy. Not done while the receiver
    /// has rendezvous sends of its own waiting on that peer, and the sender declines its
    /// part while it has copying of its own queued (traffic both ways keeps both busy
    /// already). 0: never split.
    pub split_min: u64,
}

impl Config {
    /// A configuration with the same eager limit for every peer.
    pub fn uniform(rank: Rank, size: u32, eager_limit: u64, chunk_size: u64) -> Self {
        Self {
            rank,
            size,
            eager_limit: vec![eager_limit; size as usize],
            chunk_size: chunk_size.clamp(1, MAX_PAYLOAD),
            offer_pull: vec![false; size as usize],
            can_pull: vec![false; size as usize],
            split_min: 0,
        }
    }
}

/// Send mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendMode {
    /// Completes once the data has left the user buffer (MPI standard mode).
    Standard,
    /// Completes only once the receiver has matched the message (MPI synchronous mode).
    Synchronous,
}

/// Which sources a receive or probe accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceSel {
    /// Any source (`MPI_ANY_SOURCE`).
    Any,
    /// Exactly this rank.
    Rank(Rank),
}

/// Which tags a receive or probe accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagSel {
    /// Any tag (`MPI_ANY_TAG`).
    Any,
    /// Exactly this tag.
    Tag(Tag),
}

impl SourceSel {
    fn accepts(self, r: Rank) -> bool {
        match self {
            Self::Any => true,
            Self::Rank(x) => x == r,
        }
    }
}

impl TagSel {
    fn accepts(self, t: Tag) -> bool {
        match self {
            Self::Any => true,
            Self::Tag(x) => x == t,
        }
    }
}

/// A frame the driver must send.
#[derive(Debug)]
pub struct Transmit {
    /// Destination rank (may be this rank: the driver loops it back).
    pub to: Rank,
    /// The header to send first.
    pub header: Header,
    /// Where the payload comes from (`header.payload_len` bytes).
    pub body: Body,
}

/// The payload of a [`Transmit`].
#[derive(Debug, PartialEq, Eq)]
pub enum Body {
    /// No payload.
    None,
    /// Bytes `offset..offset + len` of send request `req`'s buffer. The driver must have
    /// copied or written them before it next calls [`Engine::poll_completion`].
    Send {
        /// The send request that owns the buffer.
        req: ReqId,
        /// Start offset in that buffer.
        offset: u64,
        /// Number of bytes.
        len: u64,
    },
}

/// Where the payload of a received frame goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    /// Write the first `take` payload bytes into receive request `req`'s buffer at `offset`,
    /// then read and discard `skip` more bytes.
    Request {
        /// The receive request owning the buffer.
        req: ReqId,
        /// Offset in the request's buffer.
        offset: u64,
        /// Bytes to store.
        take: u64,
        /// Bytes to discard after them (truncation).
        skip: u64,
    },
    /// Fill the engine-owned buffer [`Engine::payload_buffer`] of this frame.
    Buffer,
}

/// A frame whose header the engine accepted; finish it with [`Engine::handle_payload`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "the payload must be placed and then handed to Engine::handle_payload"]
pub struct Incoming {
    /// Names this frame in [`Engine::payload_buffer`] and [`Engine::handle_payload`].
    pub token: FrameToken,
    /// Where the payload goes (ignored when `header.payload_len` is zero).
    pub placement: Placement,
}

/// Bytes the driver must copy straight from the sender's memory into a receive buffer
/// (single-copy transfer), then report with [`Engine::handle_pull_done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pull {
    /// The receive request whose buffer gets the data.
    pub req: ReqId,
    /// The sender, whose memory holds the data.
    pub from: Rank,
    /// Address of the first byte to copy, in the sender's address space.
    pub addr: u64,
    /// Where in the receive buffer the bytes go.
    pub offset: u64,
    /// Bytes to copy.
    pub len: u64,
}

/// Bytes the driver must copy from a send buffer straight into the receiver's memory (the
/// sender's half of a split transfer), then report with [`Engine::handle_push_done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Push {
    /// The send request whose buffer holds the data.
    pub req: ReqId,
    /// The receiver, whose memory gets the data.
    pub to: Rank,
    /// The receiver's request (named in the answer).
    pub recv_req: ReqId,
    /// Where in the send buffer the bytes start.
    pub offset: u64,
    /// Address of the destination, in the receiver's address space.
    pub addr: u64,
    /// Bytes to copy.
    pub len: u64,
}

/// Status of a completed receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvStatus {
    /// The sender.
    pub source: Rank,
    /// The message's tag.
    pub tag: Tag,
    /// The message's length as sent.
    pub len: u64,
    /// Bytes stored in the receive buffer (less than `len` when truncated).
    pub stored: u64,
}

impl RecvStatus {
    /// Whether the message was longer than the receive buffer.
    pub fn truncated(&self) -> bool {
        self.stored < self.len
    }
}

/// Envelope of a message that a probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeInfo {
    /// The sender.
    pub source: Rank,
    /// The tag.
    pub tag: Tag,
    /// Message length in bytes.
    pub len: u64,
}

/// A finished request.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    /// The request.
    pub req: ReqId,
    /// How it ended.
    pub outcome: Outcome,
}

/// How a request ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A send finished: its buffer may be reused.
    Sent,
    /// A receive finished. When `buffered` is set, the driver copies its first
    /// `status.stored` bytes into the request's buffer; otherwise the data is already there.
    Received {
        /// Envelope and lengths.
        status: RecvStatus,
        /// Payload that arrived before the receive was matched. The driver hands it back
        /// with [`Engine::recycle`] once copied, for the next unexpected message.
        buffered: Option<Vec<u8>>,
    },
    /// The request cannot finish because its peer is gone.
    PeerLost {
        /// The lost peer.
        peer: Rank,
    },
}

/// A frame that breaks the protocol. The peer that sent it is at fault; the driver closes
/// that connection and reports the peer lost.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The header's source field is not the peer the frame came from.
    #[error("frame from rank {from} claims source rank {claimed}")]
    WrongSource {
        /// The authenticated peer.
        from: Rank,
        /// What the header said.
        claimed: Rank,
    },
    /// A rank outside the job.
    #[error("frame from rank {0}, which is outside the job")]
    UnknownRank(Rank),
    /// An envelope whose sequence number was already seen.
    #[error("duplicate sequence number {seq} from rank {from}")]
    DuplicateSeq {
        /// The peer.
        from: Rank,
        /// The repeated number.
        seq: Seq,
    },
    /// An eager message above the limit the receiver allows.
    #[error("eager message of {len} bytes from rank {from} exceeds the limit of {limit}")]
    EagerTooLarge {
        /// The peer.
        from: Rank,
        /// Message length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A CTS, ack or data frame naming a request that is not waiting for one.
    #[error("{kind:?} frame from rank {from} names request {req}, which is not waiting for it")]
    UnknownRequest {
        /// The peer.
        from: Rank,
        /// The frame kind.
        kind: FrameKind,
        /// The request named.
        req: ReqId,
    },
    /// A data chunk outside the accepted length, or a CTS accepting more than was offered.
    #[error("frame from rank {from} is out of bounds: offset {offset} length {len} limit {limit}")]
    OutOfBounds {
        /// The peer.
        from: Rank,
        /// Chunk offset.
        offset: u64,
        /// Chunk length.
        len: u64,
        /// The bound.
        limit: u64,
    },
}

/// A usage error the caller made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// A rank outside `0..size`.
    #[error("rank {rank} is out of range for a job of {size} ranks")]
    InvalidRank {
        /// The rank given.
        rank: Rank,
        /// Job size.
        size: u32,
    },
    /// A negative tag.
    #[error("tag {0} is negative")]
    InvalidTag(Tag),
    /// A request the engine does not know (already completed or never issued).
    #[error("request {0} is unknown")]
    UnknownRequest(ReqId),
}

/// One incoming envelope: an eager message or an RTS.
#[derive(Debug)]
struct Arrival {
    /// Sender.
    source: Rank,
    /// Context it is addressed to.
    context: ContextId,
    /// Its tag.
    tag: Tag,
    /// Message length.
    len: u64,
    /// Eager or rendezvous details.
    kind: ArrivalKind,
    /// Set for synchronous eager sends: the sender request to acknowledge on match.
    sync_ack: Option<ReqId>,
    /// The receive it matched, once it did.
    matched: Option<ReqId>,
}

#[derive(Debug)]
enum ArrivalKind {
    /// An eager message. `buffer` holds its payload when it was not placed straight into a
    /// receive; `complete` says all payload bytes are there.
    Eager {
        buffer: Option<Vec<u8>>,
        complete: bool,
    },
    /// An RTS from send request `send_req`; `pull` is the sender's data address when it
    /// offered a pull.
    Rts { send_req: ReqId, pull: Option<u64> },
}

/// Matching queues of one context. Invariant: no entry of `posted` matches any arrival in
/// `unexpected` (each new entry is matched against the other queue before it is queued).
#[derive(Debug, Default)]
struct Queues {
    /// Receives not yet matched, in posting order.
    posted: VecDeque<Posted>,
    /// In-order arrivals not yet matched, in arrival order (ids into `Engine::arrivals`).
    unexpected: VecDeque<u64>,
}

impl Queues {
    /// Removes and returns the first posted receive that accepts a message from `from` with
    /// `tag`; with `need`, only if its buffer holds that many bytes (else `None`, queue
    /// unchanged).
    fn pop_posted(&mut self, from: Rank, tag: Tag, need: Option<u64>) -> Option<Posted> {
        let accepts = |p: &Posted| p.source.accepts(from) && p.tag.accepts(tag);
        // The oldest posted receive usually matches: look at it before setting up a search,
        // and pop it rather than remove from the middle.
        let i = match self.posted.front() {
            Some(p) if accepts(p) => 0,
            _ => self.posted.iter().position(accepts)?,
        };
        if need.is_some_and(|n| self.posted[i].capacity < n) {
            return None;
        }
        if i == 0 {
            self.posted.pop_front()
        } else {
            self.posted.remove(i)
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Posted {
    req: ReqId,
    source: SourceSel,
    tag: TagSel,
    capacity: u64,
    /// Address of the receive buffer in this process (0: not given, no split transfers).
    addr: u64,
}

/// Per-peer sequencing state.
#[derive(Debug, Default)]
struct Peer {
    /// Sequence number of the next envelope this rank sends to the peer.
    next_send: u64,
    /// Sequence number of the next envelope to release to matching from the peer.
    next_recv: u64,
    /// Envelopes that arrived ahead of `next_recv` (ids into `Engine::arrivals`), by seq.
    early: BTreeMap<u64, u64>,
    /// The peer is gone: nothing more is sent to or expected from it.
    lost: bool,
}

#[derive(Debug)]
enum SendState {
    /// Eager synchronous send waiting for the receiver's ack.
    AwaitAck { to: Rank },
    /// Rendezvous send waiting for CTS.
    AwaitCts { to: Rank, len: u64 },
}

#[derive(Debug)]
enum RecvState {
    /// Matched an eager arrival whose payload is still arriving; `capacity` is the size of
    /// the receive buffer.
    Eager { arrival: u64, capacity: u64 },
    /// Matched a pull-offering RTS; the driver is copying the data (see [`Pull`]), and for a
    /// split transfer the sender is writing bytes `push.0..push.0 + push.1`.
    Pull {
        from: Rank,
        status: RecvStatus,
        send_req: ReqId,
        /// Address of the message in the sender's memory.
        addr: u64,
        /// Copies not yet done (pulls, and the push).
        parts: u8,
        /// A pull failed: once every part is done, fall back to CTS.
        failed: bool,
        /// Offset and length of the part the sender writes; length 0 once it answered.
        push: (u64, u64),
        /// Where the receive buffer is (this rank's memory) when the transfer may still be
        /// split; 0 once decided (see [`Engine::poll_pull`]).
        split_at: u64,
    },
    /// Matched an RTS; `received` of `accepted` bytes of data are placed.
    Data {
        from: Rank,
        status: RecvStatus,
        accepted: u64,
        received: u64,
    },
}

/// A frame whose payload the driver is placing.
#[derive(Debug)]
enum InFlight {
    /// Eager payload of an arrival (placed into the request or the arrival's buffer).
    Eager { arrival: u64 },
    /// A data chunk for a rendezvous receive.
    Data { req: ReqId, len: u64 },
    /// Eager payload going straight into receive `req`, which matched at header time; it
    /// completes with `status` when the payload is placed.
    Direct { req: ReqId, status: RecvStatus },
    /// A frame without payload (nothing to do on completion).
    Empty,
}

/// The sans-IO point-to-point engine of one rank.
///
/// It matches receives against incoming envelopes per context (`MPI_ANY_SOURCE` and
/// `MPI_ANY_TAG` included), keeps MPI's non-overtaking order with a sequence number per
/// (sender, receiver) pair whatever path delivered a frame, and runs the eager protocol
/// below the peer's eager limit and the rendezvous protocol (RTS, CTS, data chunks) above
/// it. It reads no clock and does no I/O.
///
/// # Polling order
/// After any call that may make progress (`post_*`, `handle_*`):
/// 1. drain [`Engine::poll_transmit`] and send (or copy) every frame, including its body;
/// 2. drain [`Engine::poll_pull`] and [`Engine::poll_push`], perform each copy and report it
///    with [`Engine::handle_pull_done`] / [`Engine::handle_push_done`] (which may queue more
///    frames: go back to 1);
/// 3. then drain [`Engine::poll_completion`]. A send completes only after its last frame was
///    handed out, so the driver never reports a send complete while its buffer is still
///    needed.
///
/// Receiving a frame: decode its header, call [`Engine::handle_header`], place the payload
/// as the returned [`Placement`] says, then call [`Engine::handle_payload`] with the token.
#[derive(Debug)]
pub struct Engine {
    /// Parameters; `eager_limit.len() == size`.
    cfg: Config,
    /// Next request id to hand out; ids start at 1 so 0 never names a request.
    next_req: u64,
    /// Next frame token.
    next_token: u64,
    /// Next arrival id.
    next_arrival: u64,
    /// Per-peer sequencing, indexed by rank.
    peers: Vec<Peer>,
    /// Matching queues per context.
    queues: IdMap<ContextId, Queues>,
    /// Envelopes released to matching or waiting for their turn.
    arrivals: SeqMap<u64, Arrival>,
    /// Sends waiting for the peer (sync ack or CTS).
    sends: SeqMap<ReqId, SendState>,
    /// Receives matched but not yet complete.
    recvs: SeqMap<ReqId, RecvState>,
    /// Number of posted receives not yet matched, over all contexts' queues.
    posted_len: usize,
    /// Frames whose payload is being placed.
    in_flight: SeqMap<FrameToken, InFlight>,
    /// Frames to send, in order.
    transmits: VecDeque<Transmit>,
    /// Single-copy transfers for the driver, in order.
    pulls: VecDeque<Pull>,
    /// The sender's halves of split transfers, in order.
    pushes: VecDeque<Push>,
    /// Finished requests, in order.
    completions: VecDeque<Completion>,
    /// Emptied payload buffers of unexpected messages ([`Engine::recycle`]), for the next
    /// ones: a burst of unexpected messages would otherwise allocate, and after the heap
    /// shrinks fault in, fresh memory for each.
    spare_buffers: Vec<Vec<u8>>,
}

/// Most payload buffers of unexpected messages an engine keeps for reuse.
const SPARE_BUFFERS: usize = 64;
/// Largest payload buffer an engine keeps for reuse (the default TCP eager limit).
const SPARE_BUFFER_MAX: usize = 64 << 10;

/// A buffer of `len` bytes for an unexpected payload: the most recently kept one that is
/// large enough, else a new one.
fn take_spare(spares: &mut Vec<Vec<u8>>, len: usize) -> Vec<u8> {
    match spares.iter().rposition(|b| b.capacity() >= len) {
        Some(i) => {
            let mut b = spares.swap_remove(i);
            b.resize(len, 0);
            b
        }
        None => vec![0; len],
    }
}

impl Engine {
    /// Creates the engine of rank `cfg.rank`.
    pub fn new(mut cfg: Config) -> Self {
        cfg.eager_limit.resize(cfg.size as usize, 0);
        cfg.offer_pull.resize(cfg.size as usize, false);
        cfg.can_pull.resize(cfg.size as usize, false);
        cfg.chunk_size = cfg.chunk_size.clamp(1, MAX_PAYLOAD);
        let peers = (0..cfg.size).map(|_| Peer::default()).collect();
        Self {
            cfg,
            next_req: 1,
            next_token: 1,
            next_arrival: 1,
            peers,
            queues: IdMap::default(),
            arrivals: SeqMap::default(),
            sends: SeqMap::default(),
            recvs: SeqMap::default(),
            posted_len: 0,
            in_flight: SeqMap::default(),
            transmits: VecDeque::new(),
            pulls: VecDeque::new(),
            pushes: VecDeque::new(),
            completions: VecDeque::new(),
            spare_buffers: Vec::new(),
        }
    }

    /// This rank.
    pub fn rank(&self) -> Rank {
        self.cfg.rank
    }

    /// Job size.
    pub fn size(&self) -> u32 {
        self.cfg.size
    }

    /// The eager limit towards `peer`.
    pub fn eager_limit(&self, peer: Rank) -> u64 {
        self.cfg
            .eager_limit
            .get(peer.0 as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Number of requests still in progress (sends waiting for a peer, receives posted or
    /// matched but incomplete).
    pub fn pending(&self) -> usize {
        self.sends.len() + self.recvs.len() + self.posted_len
    }

    /// Starts a send of `len` bytes to `to`. The driver keeps the buffer until completion.
    /// `pull_addr` is the buffer's address, offered to peers that may pull (see
    /// [`Config::offer_pull`]); pass 0 when there is none.
    ///
    /// # Errors
    /// [`UsageError`] for a rank outside the job or a negative tag.
    pub fn post_send(
        &mut self,
        context: ContextId,
        to: Rank,
        tag: Tag,
        len: u64,
        mode: SendMode,
        pull_addr: u64,
    ) -> Result<ReqId, UsageError> {
        self.check_send(to, tag)?;
        let req = self.new_req();
        let peer = &mut self.peers[to.0 as usize];
        if peer.lost {
            self.completions.push_back(Completion {
                req,
                outcome: Outcome::PeerLost { peer: to },
            });
            return Ok(req);
        }
        let mut header = self.envelope(context, to, tag, len);
        if len <= self.eager_limit(to) {
            header.payload_len = len;
            // A standard eager send needs no answer, so it names no request (and travels
            // in the compact header form).
            if mode == SendMode::Synchronous {
                header.flags = FLAG_SYNC;
                header.send_req = req;
            }
            self.transmits.push_back(Transmit {
                to,
                header,
                body: if len == 0 {
                    Body::None
                } else {
                    Body::Send {
                        req,
                        offset: 0,
                        len,
                    }
                },
            });
            match mode {
                SendMode::Standard => self.complete(req, Outcome::Sent),
                SendMode::Synchronous => {
                    self.sends.insert(req, SendState::AwaitAck { to });
                }
            }
        } else {
            header.kind = FrameKind::Rts;
            header.send_req = req;
            if pull_addr != 0 && self.cfg.offer_pull.get(to.0 as usize) == Some(&true) {
                header.flags |= FLAG_PULL;
                header.offset = pull_addr;
            }
            self.transmits.push_back(Transmit {
                to,
                header,
                body: Body::None,
            });
            self.sends.insert(req, SendState::AwaitCts { to, len });
        }
        Ok(req)
    }

    /// The fast path of a standard-mode eager send: when the message fits the eager limit
    /// towards `to` and no frame is queued ahead of it, draws its sequence number and returns
    /// a request id and the frame's header, which the driver hands to the transport at once
    /// with the whole buffer as payload. The send is complete once the transport took the
    /// frame; no request state is kept. `None` when the general path
    /// ([`Engine::post_send`]) must take the send: too long, a lost or self peer, frames
    /// still queued.
    ///
    /// # Errors
    /// [`UsageError`] for a rank outside the job or a negative tag.
    pub fn send_eager_now(
        &mut self,
        context: ContextId,
        to: Rank,
        tag: Tag,
        len: u64,
    ) -> Result<Option<(ReqId, Header)>, UsageError> {
        self.check_send(to, tag)?;
        if to == self.cfg.rank
            || len > self.eager_limit(to)
            || !self.transmits.is_empty()
            || self.peers[to.0 as usize].lost
        {
            return Ok(None);
        }
        let mut header = self.envelope(context, to, tag, len);
        header.payload_len = len;
        Ok(Some((self.new_req(), header)))
    }

    /// The eager envelope of the next message to `to`, with its sequence number drawn.
    fn envelope(&mut self, context: ContextId, to: Rank, tag: Tag, len: u64) -> Header {
        let peer = &mut self.peers[to.0 as usize];
        let seq = Seq(peer.next_send);
        peer.next_send += 1;
        let mut header = Header::new(FrameKind::Eager, self.cfg.rank);
        header.context = context;
        header.tag = tag;
        header.seq = seq;
        header.msg_len = len;
        header
    }

    /// Whether a receive from `source` with tag `tag` on `context`, posted now, would find
    /// nothing to match yet and be the only candidate for the next message from `source`:
    /// no receive is posted on the context, no unexpected message there matches, and no
    /// envelope from `source` waits for an earlier one. The driver may then take that
    /// message straight from the transport with [`Engine::take_direct`] instead of posting.
    pub fn can_take_direct(&self, context: ContextId, source: Rank, tag: TagSel) -> bool {
        let Some(peer) = self.peers.get(source.0 as usize) else {
            return false;
        };
        if peer.lost || !peer.early.is_empty() {
            return false;
        }
        self.queues.get(&context).is_none_or(|q| {
            q.posted.is_empty()
                && !q.unexpected.iter().any(|id| {
                    self.arrivals
                        .get(id)
                        .is_some_and(|a| a.source == source && tag.accepts(a.tag))
                })
        })
    }

    /// Accepts eager frame `h` from `from` for an unposted receive (see
    /// [`Engine::can_take_direct`]) on `context` accepting `tag` with room for `capacity`
    /// bytes: when it is the next envelope from `from` in order, standard-mode, on that
    /// context, accepted by `tag` and fits, the engine counts it delivered and returns its
    /// status; the driver then copies the payload into the receive. `None` (engine
    /// unchanged) for any other frame, which the general path must then take.
    pub fn take_direct(
        &mut self,
        from: Rank,
        h: &Header,
        context: ContextId,
        tag: TagSel,
        capacity: u64,
    ) -> Option<RecvStatus> {
        if !self.is_next_whole_eager(from, h)
            || h.context != context
            || !tag.accepts(h.tag)
            || h.msg_len > capacity
        {
            return None;
        }
        self.peers[from.0 as usize].next_recv += 1;
        Some(whole_status(from, h))
    }

    /// Whether `h` is the next envelope from `from` and a whole standard-mode eager message
    /// within the eager limit: what the receive fast paths may take.
    fn is_next_whole_eager(&self, from: Rank, h: &Header) -> bool {
        self.peers.get(from.0 as usize).is_some_and(|peer| {
            h.kind == FrameKind::Eager
                && h.flags == 0
                && h.source == from
                && h.seq.0 == peer.next_recv
                && h.payload_len == h.msg_len
                && h.msg_len <= self.eager_limit(from)
        })
    }

    /// Accepts eager frame `h` from `from` for the posted receive it matches: when it is the
    /// next envelope from `from` in order, standard-mode, whole (the payload in this frame)
    /// and fits that receive's buffer, the receive is complete and the engine returns its id
    /// and status; the driver copies the payload into the receive's buffer before it reports
    /// the request finished (no [`Completion`] follows). `None` (engine unchanged) for any
    /// other frame, which the general path ([`Engine::handle_header`]) must then take.
    pub fn take_posted(&mut self, from: Rank, h: &Header) -> Option<(ReqId, RecvStatus)> {
        if !self.is_next_whole_eager(from, h) {
            return None;
        }
        let p = self.pop_posted(from, h, true)?;
        self.peers[from.0 as usize].next_recv += 1;
        self.release_early(from);
        Some((p.req, whole_status(from, h)))
    }

    /// Posts a receive into a buffer of `capacity` bytes.
    ///
    /// # Errors
    /// [`UsageError`] for a source rank outside the job or a negative tag.
    pub fn post_recv(
        &mut self,
        context: ContextId,
        source: SourceSel,
        tag: TagSel,
        capacity: u64,
    ) -> Result<ReqId, UsageError> {
        self.post_recv_at(context, source, tag, capacity, 0)
    }

    /// [`Engine::post_recv`] into a buffer at address `addr` of this process, which a
    /// sender on the same host may then write into (split transfers, [`Push`]).
    ///
    /// # Errors
    /// As [`Engine::post_recv`].
    pub fn post_recv_at(
        &mut self,
        context: ContextId,
        source: SourceSel,
        tag: TagSel,
        capacity: u64,
        addr: u64,
    ) -> Result<ReqId, UsageError> {
        if let SourceSel::Rank(r) = source {
            self.check_rank(r)?;
        }
        if let TagSel::Tag(t) = tag
            && t.0 < 0
        {
            return Err(UsageError::InvalidTag(t));
        }
        let req = self.new_req();
        let posted = Posted {
            req,
            source,
            tag,
            capacity,
            addr,
        };
        let q = self.queues.entry(context).or_default();
        let found = q.unexpected.iter().position(|id| {
            self.arrivals
                .get(id)
                .is_some_and(|a| source.accepts(a.source) && tag.accepts(a.tag))
        });
        if let Some(i) = found {
            let id = q.unexpected.remove(i).unwrap_or_default();
            self.bind(id, posted);
        } else if let SourceSel::Rank(r) = source
            && self.peers[r.0 as usize].lost
        {
            self.complete(req, Outcome::PeerLost { peer: r });
        } else {
            q.posted.push_back(posted);
            self.posted_len += 1;
        }
        Ok(req)
    }

    /// Looks for a matched-in-order message without receiving it (`MPI_Iprobe`).
    pub fn probe(&self, context: ContextId, source: SourceSel, tag: TagSel) -> Option<ProbeInfo> {
        let q = self.queues.get(&context)?;
        q.unexpected.iter().find_map(|id| {
            let a = self.arrivals.get(id)?;
            (source.accepts(a.source) && tag.accepts(a.tag)).then_some(ProbeInfo {
                source: a.source,
                tag: a.tag,
                len: a.len,
            })
        })
    }

    /// Cancels a posted receive that has not matched yet. Returns whether it was cancelled;
    /// a cancelled request produces no completion.
    pub fn cancel_recv(&mut self, req: ReqId) -> bool {
        for q in self.queues.values_mut() {
            if let Some(i) = q.posted.iter().position(|p| p.req == req) {
                q.posted.remove(i);
                self.posted_len -= 1;
                return true;
            }
        }
        false
    }

    /// Takes the header of a frame received from `from` (the authenticated peer).
    ///
    /// # Errors
    /// [`PeerError`] when the frame breaks the protocol; the engine state is unchanged and the
    /// driver should drop the connection and call [`Engine::handle_peer_lost`].
    pub fn handle_header(&mut self, from: Rank, h: &Header) -> Result<Incoming, PeerError> {
        if from.0 >= self.cfg.size {
            return Err(PeerError::UnknownRank(from));
        }
        if h.source != from {
            return Err(PeerError::WrongSource {
                from,
                claimed: h.source,
            });
        }
        let token = FrameToken(self.next_token);
        self.next_token += 1;
        match h.kind {
            FrameKind::Eager | FrameKind::Rts => self.handle_envelope(from, h, token),
            FrameKind::Cts => {
                let Some(SendState::AwaitCts { to, len }) = self.sends.get(&h.send_req) else {
                    return Err(self.unknown(from, h.kind, h.send_req));
                };
                if *to != from {
                    return Err(self.unknown(from, h.kind, h.send_req));
                }
                if h.msg_len > *len {
                    return Err(PeerError::OutOfBounds {
                        from,
                        offset: 0,
                        len: h.msg_len,
                        limit: *len,
                    });
                }
                let sreq = h.send_req;
                self.sends.remove(&sreq);
                let mut offset = 0;
                while offset < h.msg_len {
                    let n = (h.msg_len - offset).min(self.cfg.chunk_size);
                    let mut d = Header::new(FrameKind::Data, self.cfg.rank);
                    d.recv_req = h.recv_req;
                    d.offset = offset;
                    d.payload_len = n;
                    self.transmits.push_back(Transmit {
                        to: from,
                        header: d,
                        body: Body::Send {
                            req: sreq,
                            offset,
                            len: n,
                        },
                    });
                    offset += n;
                }
                self.complete(sreq, Outcome::Sent);
                Ok(self.empty(token))
            }
            FrameKind::Push => {
                let Some(SendState::AwaitCts { to, len }) = self.sends.get(&h.send_req) else {
                    return Err(self.unknown(from, h.kind, h.send_req));
                };
                if *to != from {
                    return Err(self.unknown(from, h.kind, h.send_req));
                }
                if h.msg_len == 0 || h.msg_len > *len {
                    return Err(PeerError::OutOfBounds {
                        from,
                        offset: 0,
                        len: h.msg_len,
                        limit: *len,
                    });
                }
                let p = Push {
                    req: h.send_req,
                    to: from,
                    recv_req: h.recv_req,
                    offset: *len - h.msg_len,
                    addr: h.offset,
                    len: h.msg_len,
                };
                if self.pulls.is_empty() {
                    self.pushes.push_back(p);
                } else {
                    // This rank has copying of its own queued (traffic both ways): it declines,
                    // and the receiver copies the part itself, so neither end idles while
                    // the other does all the work.
                    self.handle_push_done(&p, false);
                }
                Ok(self.empty(token))
            }
            FrameKind::Pushed => {
                let Some(RecvState::Pull {
                    from: src,
                    addr,
                    parts,
                    push,
                    ..
                }) = self.recvs.get_mut(&h.recv_req)
                else {
                    return Err(self.unknown(from, h.kind, h.recv_req));
                };
                if *src != from || push.1 == 0 {
                    return Err(self.unknown(from, h.kind, h.recv_req));
                }
                let (offset, len) = std::mem::take(push);
                if h.msg_len == len {
                    *parts = parts.saturating_sub(1);
                    if *parts == 0 {
                        self.finish_pull(h.recv_req);
                    }
                } else {
                    // The sender could not (or would not) write its part: pull it too, next,
                    // so this receive completes before the heads of later ones.
                    let addr = addr.wrapping_add(offset);
                    self.pulls.push_front(Pull {
                        req: h.recv_req,
                        from,
                        addr,
                        offset,
                        len,
                    });
                }
                Ok(self.empty(token))
            }
            FrameKind::SyncAck | FrameKind::Fin => {
                match (h.kind, self.sends.get(&h.send_req)) {
                    (FrameKind::SyncAck, Some(SendState::AwaitAck { to }))
                    | (FrameKind::Fin, Some(SendState::AwaitCts { to, .. }))
                        if *to == from => {}
                    _ => return Err(self.unknown(from, h.kind, h.send_req)),
                }
                self.sends.remove(&h.send_req);
                self.complete(h.send_req, Outcome::Sent);
                Ok(self.empty(token))
            }
            FrameKind::Data => {
                let Some(RecvState::Data {
                    from: src,
                    accepted,
                    ..
                }) = self.recvs.get(&h.recv_req)
                else {
                    return Err(self.unknown(from, h.kind, h.recv_req));
                };
                if *src != from {
                    return Err(self.unknown(from, h.kind, h.recv_req));
                }
                let end = h.offset.saturating_add(h.payload_len);
                if end > *accepted {
                    return Err(PeerError::OutOfBounds {
                        from,
                        offset: h.offset,
                        len: h.payload_len,
                        limit: *accepted,
                    });
                }
                self.in_flight.insert(
                    token,
                    InFlight::Data {
                        req: h.recv_req,
                        len: h.payload_len,
                    },
                );
                Ok(Incoming {
                    token,
                    placement: Placement::Request {
                        req: h.recv_req,
                        offset: h.offset,
                        take: h.payload_len,
                        skip: 0,
                    },
                })
            }
        }
    }

    /// The engine-owned buffer for a frame placed as [`Placement::Buffer`]; empty for any
    /// other token.
    pub fn payload_buffer(&mut self, token: FrameToken) -> &mut [u8] {
        let arrival = match self.in_flight.get(&token) {
            Some(InFlight::Eager { arrival }) => *arrival,
            _ => return &mut [],
        };
        match self.arrivals.get_mut(&arrival) {
            Some(Arrival {
                kind: ArrivalKind::Eager {
                    buffer: Some(b), ..
                },
                ..
            }) => b,
            _ => &mut [],
        }
    }

    /// Takes back the buffer of a finished receive ([`Outcome::Received`]'s `buffered`) for
    /// the payload of a later unexpected message. Keeps at most 64 buffers of at most 64 KiB
    /// each.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        if buffer.capacity() <= SPARE_BUFFER_MAX && self.spare_buffers.len() < SPARE_BUFFERS {
            self.spare_buffers.push(buffer);
        }
    }

    /// Says that the payload of frame `token` has been placed completely.
    pub fn handle_payload(&mut self, token: FrameToken) {
        match self.in_flight.remove(&token) {
            Some(InFlight::Eager { arrival }) => {
                let Some(a) = self.arrivals.get_mut(&arrival) else {
                    return;
                };
                if let ArrivalKind::Eager { complete, .. } = &mut a.kind {
                    *complete = true;
                }
                if let Some(req) = a.matched
                    && let Some(RecvState::Eager { capacity, .. }) = self.recvs.remove(&req)
                {
                    self.finish_eager(arrival, req, capacity);
                }
            }
            Some(InFlight::Data { req, len }) => {
                let done = match self.recvs.get_mut(&req) {
                    Some(RecvState::Data {
                        accepted, received, ..
                    }) => {
                        *received += len;
                        *received >= *accepted
                    }
                    _ => false,
                };
                if done && let Some(RecvState::Data { status, .. }) = self.recvs.remove(&req) {
                    self.complete(
                        req,
                        Outcome::Received {
                            status,
                            buffered: None,
                        },
                    );
                }
            }
            Some(InFlight::Direct { req, status }) => self.complete(
                req,
                Outcome::Received {
                    status,
                    buffered: None,
                },
            ),
            Some(InFlight::Empty) | None => {}
        }
    }

    /// Says that `peer` is gone (connection lost, protocol error, process died). Every
    /// request that depends on it fails with [`Outcome::PeerLost`].
    pub fn handle_peer_lost(&mut self, peer: Rank) {
        let Some(p) = self.peers.get_mut(peer.0 as usize) else {
            return;
        };
        if p.lost {
            return;
        }
        p.lost = true;
        let early: Vec<u64> = std::mem::take(&mut p.early).into_values().collect();
        for id in early {
            self.arrivals.remove(&id);
        }
        let mut failed: Vec<ReqId> = Vec::new();
        self.sends.retain(|req, st| {
            let to = match st {
                SendState::AwaitAck { to } | SendState::AwaitCts { to, .. } => *to,
            };
            if to == peer {
                failed.push(*req);
            }
            to != peer
        });
        let mut dropped: Vec<u64> = Vec::new();
        let arrivals = &self.arrivals;
        self.recvs.retain(|req, st| {
            let from = match st {
                RecvState::Data { from, .. } | RecvState::Pull { from, .. } => *from,
                RecvState::Eager { arrival, .. } => {
                    arrivals.get(arrival).map_or(peer, |a| a.source)
                }
            };
            if from == peer {
                failed.push(*req);
            }
            from != peer
        });
        let mut unposted = 0;
        for q in self.queues.values_mut() {
            q.posted.retain(|p| {
                let lost = p.source == SourceSel::Rank(peer);
                if lost {
                    failed.push(p.req);
                    unposted += 1;
                }
                !lost
            });
            q.unexpected.retain(|id| {
                // Complete eager messages stay receivable; partial ones and RTS cannot finish.
                let keep = arrivals.get(id).is_some_and(|a| {
                    a.source != peer || matches!(a.kind, ArrivalKind::Eager { complete: true, .. })
                });
                if !keep {
                    dropped.push(*id);
                }
                keep
            });
        }
        for id in dropped {
            self.arrivals.remove(&id);
        }
        let arrivals = &self.arrivals;
        self.in_flight.retain(|_, f| match f {
            InFlight::Eager { arrival } => arrivals.get(arrival).is_some_and(|a| a.source != peer),
            InFlight::Direct { req, status } => {
                if status.source == peer {
                    failed.push(*req);
                }
                status.source != peer
            }
            InFlight::Data { .. } | InFlight::Empty => true,
        });
        self.posted_len -= unposted;
        failed.sort();
        for req in failed {
            self.complete(req, Outcome::PeerLost { peer });
        }
    }

    /// The next single-copy transfer the driver must perform.
    ///
    /// A whole message that may be split is split here, unless this rank has rendezvous
    /// sends of its own waiting on that peer (the peer then copies those, and both are
    /// busy already): the returned pull is the page-aligned first half, and a PUSH asking
    /// the sender to write the rest is queued. The driver sends it
    /// ([`Engine::poll_transmit`]) before it copies.
    #[inline]
    pub fn poll_pull(&mut self) -> Option<Pull> {
        let p = self.pulls.pop_front()?;
        Some(self.take_pull(p))
    }

    /// As [`Engine::poll_pull`], but only a pull from `peer` of at most `max_len` bytes (whole
    /// message, before any split): lets the driver copy several in one call.
    pub fn poll_pull_from(&mut self, peer: Rank, max_len: u64) -> Option<Pull> {
        let next = self.pulls.front()?;
        if next.from != peer || next.len > max_len {
            return None;
        }
        let p = self.pulls.pop_front()?;
        Some(self.take_pull(p))
    }

    /// Splits pull `p` as [`Engine::poll_pull`] says, if it may be split.
    fn take_pull(&mut self, mut p: Pull) -> Pull {
        let Some(RecvState::Pull {
            status,
            send_req,
            parts,
            push,
            split_at,
            ..
        }) = self.recvs.get_mut(&p.req)
        else {
            return p;
        };
        let dest = std::mem::take(split_at);
        if dest == 0
            || self
                .sends
                .iter()
                .any(|(_, s)| matches!(s, SendState::AwaitCts { to, .. } if *to == p.from))
        {
            return p;
        }
        // The head is page-aligned so both copies start on pages.
        let stored = status.stored;
        let head = match stored / 2 {
            h if h >= 4096 => h.next_multiple_of(4096).min(stored),
            h => h,
        };
        if head == stored {
            return p;
        }
        *parts = 2;
        *push = (head, stored - head);
        let mut h = Header::new(FrameKind::Push, self.cfg.rank);
        h.send_req = *send_req;
        h.recv_req = p.req;
        h.offset = dest.wrapping_add(head);
        h.msg_len = stored - head;
        self.transmits.push_back(Transmit {
            to: p.from,
            header: h,
            body: Body::None,
        });
        p.len = head;
        p
    }

    /// Says how a pull for receive `req` went. Once every part of the transfer is done the
    /// receive completes and the sender is told; if a pull failed, the engine then falls back
    /// to the sender pushing the whole message as data frames (CTS).
    pub fn handle_pull_done(&mut self, req: ReqId, ok: bool) {
        let Some(RecvState::Pull { parts, failed, .. }) = self.recvs.get_mut(&req) else {
            return;
        };
        *parts = parts.saturating_sub(1);
        *failed |= !ok;
        if *parts == 0 {
            self.finish_pull(req);
        }
    }

    /// The sender's half of a split transfer for which the driver must do (see [`Push`]).
    #[inline]
    pub fn poll_push(&mut self) -> Option<Push> {
        self.pushes.pop_front()
    }

    /// Says how push `p` went; the receiver is told (and pulls the bytes itself if it failed).
    pub fn handle_push_done(&mut self, p: &Push, ok: bool) {
        if self.peers.get(p.to.0 as usize).is_none_or(|peer| peer.lost) {
            return;
        }
        let mut h = Header::new(FrameKind::Pushed, self.cfg.rank);
        h.send_req = p.req;
        h.recv_req = p.recv_req;
        h.msg_len = if ok { p.len } else { 0 };
        self.transmits.push_back(Transmit {
            to: p.to,
            header: h,
            body: Body::None,
        });
    }

    /// Ends a pulled receive whose parts are all done: FIN and completion, or CTS if a pull
    /// failed.
    fn finish_pull(&mut self, req: ReqId) {
        let Some(RecvState::Pull {
            from,
            status,
            send_req,
            failed,
            ..
        }) = self.recvs.remove(&req)
        else {
            return;
        };
        if !failed {
            self.send_fin(from, send_req);
            self.complete(
                req,
                Outcome::Received {
                    status,
                    buffered: None,
                },
            );
        } else {
            let mut cts = Header::new(FrameKind::Cts, self.cfg.rank);
            cts.send_req = send_req;
            cts.recv_req = req;
            cts.msg_len = status.stored;
            self.transmits.push_back(Transmit {
                to: from,
                header: cts,
                body: Body::None,
            });
            self.recvs.insert(
                req,
                RecvState::Data {
                    from,
                    status,
                    accepted: status.stored,
                    received: 0,
                },
            );
        }
    }

    fn send_fin(&mut self, to: Rank, send_req: ReqId) {
        let mut fin = Header::new(FrameKind::Fin, self.cfg.rank);
        fin.send_req = send_req;
        self.transmits.push_back(Transmit {
            to,
            header: fin,
            body: Body::None,
        });
    }

    /// Whether any of [`Engine::poll_transmit`], [`Engine::poll_pull`] or
    /// [`Engine::poll_completion`] has something: a cheap check for an idle driver loop.
    #[inline]
    pub fn has_output(&self) -> bool {
        !(self.transmits.is_empty()
            && self.pulls.is_empty()
            && self.pushes.is_empty()
            && self.completions.is_empty())
    }

    /// The next frame to send.
    #[inline]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next finished request. Drain [`Engine::poll_transmit`] first.
    #[inline]
    pub fn poll_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    fn handle_envelope(
        &mut self,
        from: Rank,
        h: &Header,
        token: FrameToken,
    ) -> Result<Incoming, PeerError> {
        let peer = &self.peers[from.0 as usize];
        if h.seq.0 < peer.next_recv || peer.early.contains_key(&h.seq.0) {
            return Err(PeerError::DuplicateSeq { from, seq: h.seq });
        }
        let kind = if h.kind == FrameKind::Eager {
            let limit = self.eager_limit(from);
            if h.msg_len > limit {
                return Err(PeerError::EagerTooLarge {
                    from,
                    len: h.msg_len,
                    limit,
                });
            }
            ArrivalKind::Eager {
                buffer: None,
                complete: h.msg_len == 0,
            }
        } else {
            ArrivalKind::Rts {
                send_req: h.send_req,
                pull: (h.flags & FLAG_PULL != 0).then_some(h.offset),
            }
        };
        if let Some(inc) = self.match_direct(from, h, token) {
            return Ok(inc);
        }
        let id = self.next_arrival;
        self.next_arrival += 1;
        self.arrivals.insert(
            id,
            Arrival {
                source: from,
                context: h.context,
                tag: h.tag,
                len: h.msg_len,
                kind,
                sync_ack: (h.kind == FrameKind::Eager && h.is_sync()).then_some(h.send_req),
                matched: None,
            },
        );
        let peer = &mut self.peers[from.0 as usize];
        if h.seq.0 == peer.next_recv {
            peer.next_recv += 1;
            self.release(id);
            self.release_early(from);
        } else {
            peer.early.insert(h.seq.0, id);
        }
        if h.kind == FrameKind::Rts || h.msg_len == 0 {
            return Ok(self.empty(token));
        }
        self.in_flight
            .insert(token, InFlight::Eager { arrival: id });
        // Straight into the receive when the arrival matched at once; else into a buffer.
        let placement = match self.arrivals.get_mut(&id) {
            Some(a) => match (a.matched, &mut a.kind) {
                (Some(req), ArrivalKind::Eager { buffer: None, .. })
                    if matches!(self.recvs.get(&req), Some(RecvState::Eager { .. })) =>
                {
                    let stored = match self.recvs.get(&req) {
                        Some(RecvState::Eager { capacity, .. }) => a.len.min(*capacity),
                        _ => 0,
                    };
                    Placement::Request {
                        req,
                        offset: 0,
                        take: stored,
                        skip: a.len - stored,
                    }
                }
                (_, ArrivalKind::Eager { buffer, .. }) => {
                    *buffer = Some(take_spare(&mut self.spare_buffers, usize_of(a.len)));
                    Placement::Buffer
                }
                (_, ArrivalKind::Rts { .. }) => Placement::Buffer,
            },
            None => Placement::Buffer,
        };
        Ok(Incoming { token, placement })
    }

    /// Removes and returns the first posted receive that accepts envelope `h` from `from`;
    /// with `fits`, only if its buffer holds the whole message (else `None`, queue unchanged).
    fn pop_posted(&mut self, from: Rank, h: &Header, fits: bool) -> Option<Posted> {
        let need = fits.then_some(h.msg_len);
        let p = self
            .queues
            .get_mut(&h.context)?
            .pop_posted(from, h.tag, need)?;
        self.posted_len -= 1;
        Some(p)
    }

    /// The fast path of the common case: an in-order eager message with payload that a
    /// posted receive accepts goes straight into that receive, with no arrival record.
    fn match_direct(&mut self, from: Rank, h: &Header, token: FrameToken) -> Option<Incoming> {
        if h.kind != FrameKind::Eager
            || h.msg_len == 0
            || h.seq.0 != self.peers[from.0 as usize].next_recv
        {
            return None;
        }
        let p = self.pop_posted(from, h, false)?;
        self.peers[from.0 as usize].next_recv += 1;
        if h.is_sync() {
            let mut ack = Header::new(FrameKind::SyncAck, self.cfg.rank);
            ack.send_req = h.send_req;
            self.transmits.push_back(Transmit {
                to: from,
                header: ack,
                body: Body::None,
            });
        }
        let stored = h.msg_len.min(p.capacity);
        let status = RecvStatus {
            source: from,
            tag: h.tag,
            len: h.msg_len,
            stored,
        };
        self.in_flight
            .insert(token, InFlight::Direct { req: p.req, status });
        self.release_early(from);
        Some(Incoming {
            token,
            placement: Placement::Request {
                req: p.req,
                offset: 0,
                take: stored,
                skip: h.msg_len - stored,
            },
        })
    }

    /// Releases the early arrivals from `from` that are now in order.
    #[inline]
    fn release_early(&mut self, from: Rank) {
        if !self.peers[from.0 as usize].early.is_empty() {
            self.release_early_slow(from);
        }
    }

    /// [`Engine::release_early`] once some arrival from `from` came early.
    fn release_early_slow(&mut self, from: Rank) {
        let peer = &mut self.peers[from.0 as usize];
        let mut more = Vec::new();
        while let Some(next) = peer.early.remove(&peer.next_recv) {
            peer.next_recv += 1;
            more.push(next);
        }
        for next in more {
            self.release(next);
        }
    }

    /// Releases an in-order arrival to matching: binds it to the first posted receive that
    /// accepts it, or queues it as unexpected.
    fn release(&mut self, id: u64) {
        let Some(a) = self.arrivals.get(&id) else {
            return;
        };
        let (ctx, src, tag) = (a.context, a.source, a.tag);
        let q = self.queues.entry(ctx).or_default();
        match q.pop_posted(src, tag, None) {
            Some(p) => {
                self.posted_len -= 1;
                self.bind(id, p);
            }
            None => q.unexpected.push_back(id),
        }
    }

    /// Binds arrival `id` to receive `p`.
    fn bind(&mut self, id: u64, p: Posted) {
        let Some(a) = self.arrivals.get_mut(&id) else {
            return;
        };
        a.matched = Some(p.req);
        let stored = a.len.min(p.capacity);
        if let Some(sreq) = a.sync_ack.take() {
            let mut ack = Header::new(FrameKind::SyncAck, self.cfg.rank);
            ack.send_req = sreq;
            self.transmits.push_back(Transmit {
                to: a.source,
                header: ack,
                body: Body::None,
            });
        }
        match a.kind {
            ArrivalKind::Eager { complete, .. } => {
                if complete {
                    self.finish_eager(id, p.req, p.capacity);
                } else {
                    // The payload is still to come: straight into the request when the match
                    // happened at header time, else into the arrival's buffer.
                    self.recvs.insert(
                        p.req,
                        RecvState::Eager {
                            arrival: id,
                            capacity: p.capacity,
                        },
                    );
                }
            }
            ArrivalKind::Rts { send_req, pull } => {
                let status = RecvStatus {
                    source: a.source,
                    tag: a.tag,
                    len: a.len,
                    stored,
                };
                let to = a.source;
                self.arrivals.remove(&id);
                if let Some(addr) = pull
                    && self.cfg.can_pull.get(to.0 as usize) == Some(&true)
                {
                    if stored == 0 {
                        self.send_fin(to, send_req);
                        self.complete(
                            p.req,
                            Outcome::Received {
                                status,
                                buffered: None,
                            },
                        );
                    } else {
                        // Whether to split is decided when the driver takes the pull
                        // (`poll_pull`): by then this rank has posted what it was about to
                        // send, which a receive matched at post time has not seen yet.
                        let splittable = self.cfg.split_min > 0
                            && p.addr != 0
                            && stored == status.len
                            && stored >= self.cfg.split_min;
                        self.pulls.push_back(Pull {
                            req: p.req,
                            from: to,
                            addr,
                            offset: 0,
                            len: stored,
                        });
                        self.recvs.insert(
                            p.req,
                            RecvState::Pull {
                                from: to,
                                status,
                                send_req,
                                addr,
                                parts: 1,
                                failed: false,
                                push: (0, 0),
                                split_at: if splittable { p.addr } else { 0 },
                            },
                        );
                    }
                    return;
                }
                let mut cts = Header::new(FrameKind::Cts, self.cfg.rank);
                cts.send_req = send_req;
                cts.recv_req = p.req;
                cts.msg_len = stored;
                self.transmits.push_back(Transmit {
                    to,
                    header: cts,
                    body: Body::None,
                });
                if stored == 0 {
                    self.complete(
                        p.req,
                        Outcome::Received {
                            status,
                            buffered: None,
                        },
                    );
                } else {
                    self.recvs.insert(
                        p.req,
                        RecvState::Data {
                            from: to,
                            status,
                            accepted: stored,
                            received: 0,
                        },
                    );
                }
            }
        }
    }

    /// Completes receive `req` with eager arrival `id`, whose payload is all there.
    fn finish_eager(&mut self, id: u64, req: ReqId, capacity: u64) {
        let Some(a) = self.arrivals.remove(&id) else {
            return;
        };
        let buffered = match a.kind {
            ArrivalKind::Eager { buffer, .. } => buffer,
            ArrivalKind::Rts { .. } => None,
        };
        let status = RecvStatus {
            source: a.source,
            tag: a.tag,
            len: a.len,
            stored: a.len.min(capacity),
        };
        self.complete(req, Outcome::Received { status, buffered });
    }

    fn new_req(&mut self) -> ReqId {
        let r = ReqId(self.next_req);
        self.next_req += 1;
        r
    }

    /// The destination and tag of a send are valid.
    fn check_send(&self, to: Rank, tag: Tag) -> Result<(), UsageError> {
        self.check_rank(to)?;
        if tag.0 < 0 {
            return Err(UsageError::InvalidTag(tag));
        }
        Ok(())
    }

    fn check_rank(&self, r: Rank) -> Result<(), UsageError> {
        if r.0 < self.cfg.size {
            Ok(())
        } else {
            Err(UsageError::InvalidRank {
                rank: r,
                size: self.cfg.size,
            })
        }
    }

    fn unknown(&self, from: Rank, kind: FrameKind, req: ReqId) -> PeerError {
        PeerError::UnknownRequest { from, kind, req }
    }

    fn empty(&mut self, token: FrameToken) -> Incoming {
        self.in_flight.insert(token, InFlight::Empty);
        Incoming {
            token,
            placement: Placement::Buffer,
        }
    }

    fn complete(&mut self, req: ReqId, outcome: Outcome) {
        self.completions.push_back(Completion { req, outcome });
    }
}

/// The status of a receive that got the whole of envelope `h` from `from`.
fn whole_status(from: Rank, h: &Header) -> RecvStatus {
    RecvStatus {
        source: from,
        tag: h.tag,
        len: h.msg_len,
        stored: h.msg_len,
    }
}

/// Converts a message length that the engine accepted (at most [`MAX_PAYLOAD`] for eager
/// payloads) to `usize`.
fn usize_of(len: u64) -> usize {
    usize::try_from(len).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::{Config, Engine, Rank, SPARE_BUFFER_MAX, SPARE_BUFFERS, take_spare};

    /// An unexpected payload reuses the storage of a recycled buffer that is large enough;
    /// the engine keeps only bounded numbers of bounded buffers.
    #[test]
    fn unexpected_buffers_are_reused() {
        let mut e = Engine::new(Config::uniform(Rank(0), 2, 1024, 1024));
        let b = vec![7u8; 4096];
        let at = b.as_ptr();
        e.recycle(b);
        let small = take_spare(&mut e.spare_buffers, 100);
        assert_eq!(small.as_ptr(), at, "a kept buffer was not reused");
        assert_eq!(small.len(), 100);
        e.recycle(small);
        let large = take_spare(&mut e.spare_buffers, 8192);
        assert_ne!(large.as_ptr(), at, "a buffer too small was reused");
        assert_eq!(large.len(), 8192);
        e.recycle(vec![0; SPARE_BUFFER_MAX + 1]);
        assert_eq!(e.spare_buffers.len(), 1, "an oversized buffer was kept");
        for _ in 0..2 * SPARE_BUFFERS {
            e.recycle(vec![0; 16]);
        }
        assert_eq!(e.spare_buffers.len(), SPARE_BUFFERS);
    }
}
