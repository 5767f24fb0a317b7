//! The shared-memory transport: frames between ranks of one host through byte rings, and
//! single-copy pulls of large messages.
//!
//! # Layout
//! Each rank owns one segment `braid-<job>-<rank>`: a doorbell, then one inbound ring per rank
//! of its host, then one inbound fast box per rank of its host, both indexed by the sender's
//! position among the host's ranks (sorted by world rank). A sender writes frames into its
//! ring (or, for a small frame, its fast box) in the receiver's segment and rings the
//! receiver's doorbell; the receiver polls its boxes and rings and sleeps on its doorbell.
//!
//! A frame goes to the fast box only when the ring to that peer is drained, so a box frame
//! never overtakes an earlier ring frame. A later ring frame can overtake it (the receiver
//! looked at the box just before the frame landed and then read the ring): such a frame is
//! an envelope, which the engine puts back in order by its sequence number, a data frame,
//! placed by its offset, or a control frame, which names its request and needs no order.
//!
//! # Lifetime
//! [`ShmTransport::create`] makes and formats the segment; [`ShmTransport::connect`] maps
//! the peers' segments once their cards are known; after a job-wide barrier
//! [`ShmTransport::unlink`] removes the names, so no file is left in `/dev/shm` whatever
//! happens to the job afterwards (mappings stay valid until the processes exit).

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use braid_engine::wire::{COMPACT, COMPACT_LEN, Header, header_len};
use braid_engine::{Rank, RecvStatus, ReqId};
pub use braid_transports::Take;
use braid_transports::stream::{ByteStream, FramedConn, ReadMode};
use braid_transports::{Body, FrameSink, HEADER_LEN, Transport, TransportError};

use crate::{
    DOORBELL_FOOTPRINT, Doorbell, FASTBOX_FOOTPRINT, FASTBOX_RECORD, FastboxConsumer,
    FastboxProducer, HugeBacking, MIN_OVERLAP, ReadPart, RingConsumer, RingProducer, Segment,
    allow_ptrace_from_any, attach_consumer, attach_fastbox_consumer, attach_fastbox_producer,
    attach_producer, cma_probe, cma_read, cma_read_many, cma_write, format_doorbell,
    format_fastbox, format_ring, ring_footprint,
};

/// Magic value other ranks read from this process to check that single-copy reads work.
static PROBE_WORD: u64 = 0x4252_4149_445f_434d;
const STAGING: usize = 64 * 1024;
/// Most bytes one poll writes to a peer from its queue, and reads from it: the peer frees
/// ring space while this side writes (and refills it while this side reads), so without a
/// bound a long stream would keep this side at one of the two, and traffic both ways would
/// take turns instead of flowing at once.
const POLL_BUDGET: usize = 256 * 1024;

/// A connection to one local peer: my ring and fast box in its segment, its ring and fast
/// box in mine.
struct ShmPipe {
    tx: RingProducer,
    rx: RingConsumer,
    box_tx: FastboxProducer,
    box_rx: FastboxConsumer,
    /// The peer's doorbell, rung after each write.
    bell: Doorbell,
}

impl ByteStream for ShmPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.rx.read(buf) {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // Frames are a header and at most one body: no allocation on this path.
        let mut srcs: [&[u8]; 4] = [&[]; 4];
        let k = bufs.len().min(srcs.len());
        for (d, b) in srcs.iter_mut().zip(bufs) {
            *d = b;
        }
        match self.tx.write_vectored(&srcs[..k]) {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => {
                self.bell.ring();
                Ok(n)
            }
        }
    }
}

/// Why the shared-memory transport could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// Creating or formatting this rank's segment failed.
    #[error("cannot create shared segment /dev/shm/{name}: {source}")]
    Create {
        /// Segment name.
        name: String,
        /// OS error.
        source: io::Error,
    },
    /// A peer's segment could not be mapped or is malformed.
    #[error("cannot attach to rank {peer}'s shared segment /dev/shm/{name}: {source}")]
    Attach {
        /// The peer.
        peer: Rank,
        /// Its segment.
        name: String,
        /// OS error.
        source: io::Error,
    },
    /// A peer's card is malformed.
    #[error("rank {peer} published a malformed shared-memory card '{card}'")]
    Card {
        /// The peer.
        peer: Rank,
        /// The card.
        card: String,
    },
}

/// The shared-memory transport of one rank.
pub struct ShmTransport {
    rank: Rank,
    /// World ranks on this host, sorted; a rank's position is its ring index.
    local: Vec<u32>,
    name: String,
    seg: Arc<Segment>,
    ring_capacity: usize,
    /// This rank's doorbell (consumer side).
    bell: Doorbell,
    /// Connection per world rank; `None` for ranks on other hosts and self.
    conns: Vec<Option<FramedConn<ShmPipe>>>,
    /// World ranks that have a connection (the ones to poll).
    connected: Vec<usize>,
    /// Process id of every local peer, for single-copy reads.
    pids: Vec<i32>,
    /// Per world rank: single-copy reads from that peer work.
    can_pull: Vec<bool>,
    /// Send requests whose bodies were handed over since the last progress call.
    sent: Vec<ReqId>,
    staging: Vec<u8>,
    /// Collapses large transfer buffers into huge pages ([`ShmTransport::note_buffer`]);
    /// `None` until [`ShmTransport::back_with_huge_pages`], or without kernel support.
    huge: Option<HugeBacking>,
}

impl std::fmt::Debug for ShmTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmTransport")
            .field("rank", &self.rank)
            .field("segment", &self.name)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

// SAFETY: the framed connections hold raw pointers into buffers of requests that stay alive
// until their completion is reported; the transport is used from one thread at a time (the
// runtime keeps it behind a mutex).
unsafe impl Send for ShmTransport {}

fn ring_offset(index: usize, capacity: usize) -> usize {
    DOORBELL_FOOTPRINT.next_multiple_of(crate::RING_ALIGN) + index * ring_footprint(capacity)
}

/// Where the fast box of the sender at `index` lies, after the `ranks` rings.
fn box_offset(index: usize, ranks: usize, capacity: usize) -> usize {
    ring_offset(ranks, capacity) + index * FASTBOX_FOOTPRINT
}

impl ShmTransport {
    /// Creates and formats this rank's segment. `local` lists the world ranks of this host
    /// (this rank included); `job` names the job.
    ///
    /// # Errors
    /// [`ShmError::Create`] naming the segment.
    pub fn create(
        job: &str,
        rank: Rank,
        size: u32,
        mut local: Vec<u32>,
        ring_capacity: usize,
    ) -> Result<Self, ShmError> {
        local.sort_unstable();
        let name = format!("braid-{job}-{}", rank.0);
        let create = |source| ShmError::Create {
            name: name.clone(),
            source,
        };
        let n = local.len();
        let len = box_offset(n, n, ring_capacity);
        let seg = Arc::new(Segment::create(&name, len).map_err(create)?);
        // SAFETY: the segment is fresh and only this process has it mapped yet; every offset
        // lies inside it (len covers the doorbell, all rings and all boxes).
        unsafe {
            format_doorbell(&seg, 0);
            for i in 0..n {
                format_ring(&seg, ring_offset(i, ring_capacity), ring_capacity);
                format_fastbox(&seg, box_offset(i, n, ring_capacity));
            }
        }
        // SAFETY: formatted just above; this rank is the only consumer of its doorbell.
        let bell = unsafe { Doorbell::attach(Arc::clone(&seg), 0) }.map_err(create)?;
        allow_ptrace_from_any();
        Ok(Self {
            rank,
            local,
            name,
            seg,
            ring_capacity,
            bell,
            conns: (0..size).map(|_| None).collect(),
            connected: Vec::new(),
            pids: vec![0; size as usize],
            can_pull: vec![false; size as usize],
            sent: Vec::new(),
            staging: vec![0; STAGING],
            huge: None,
        })
    }

    /// This rank's card: `segment;pid;probe-address`.
    pub fn card(&self) -> String {
        format!(
            "{};{};{}",
            self.name,
            std::process::id(),
            std::ptr::addr_of!(PROBE_WORD) as u64
        )
    }

    /// Maps the segments of the local peers from their cards (`(rank, card)`), and checks
    /// whether single-copy reads from each of them work (unless `cma` is false).
    ///
    /// # Errors
    /// [`ShmError`] naming the peer and segment.
    pub fn connect(&mut self, peers: &[(Rank, String)], cma: bool) -> Result<(), ShmError> {
        let me = self.index_of(self.rank.0).unwrap_or(0);
        for (peer, card) in peers {
            let bad = || ShmError::Card {
                peer: *peer,
                card: card.clone(),
            };
            let mut parts = card.split(';');
            let (Some(name), Some(pid), Some(probe)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let pid: i32 = pid.parse().map_err(|_| bad())?;
            let probe: u64 = probe.parse().map_err(|_| bad())?;
            let theirs = self.index_of(peer.0).ok_or_else(bad)?;
            let attach = |source| ShmError::Attach {
                peer: *peer,
                name: name.to_string(),
                source,
            };
            let seg = Arc::new(Segment::open(name).map_err(attach)?);
            let (n, cap) = (self.local.len(), self.ring_capacity);
            // SAFETY: the peer formatted its doorbell, rings and boxes before publishing its
            // card; this rank is the only producer of ring and box `me` in the peer's segment
            // and the only consumer of ring and box `theirs` in its own; attach checks magic
            // and bounds.
            let pipe = unsafe {
                ShmPipe {
                    tx: attach_producer(Arc::clone(&seg), ring_offset(me, cap)).map_err(attach)?,
                    rx: attach_consumer(Arc::clone(&self.seg), ring_offset(theirs, cap))
                        .map_err(attach)?,
                    box_tx: attach_fastbox_producer(Arc::clone(&seg), box_offset(me, n, cap))
                        .map_err(attach)?,
                    box_rx: attach_fastbox_consumer(
                        Arc::clone(&self.seg),
                        box_offset(theirs, n, cap),
                    )
                    .map_err(attach)?,
                    bell: Doorbell::attach(seg, 0).map_err(attach)?,
                }
            };
            let i = peer.0 as usize;
            self.pids[i] = pid;
            self.can_pull[i] = cma && cma_probe(pid, probe, PROBE_WORD);
            self.connected.push(i);
            self.conns[i] = Some(FramedConn::new(*peer, format!("shm:{name}"), pipe));
        }
        Ok(())
    }

    /// Has [`ShmTransport::note_buffer`] back reused large transfer buffers with huge pages
    /// ([`HugeBacking`]), if the kernel supports it and single-copy transfers work with at
    /// least one peer.
    pub fn back_with_huge_pages(&mut self) {
        if self.can_pull.contains(&true) {
            self.huge = HugeBacking::new();
        }
    }

    /// Notes a send or receive buffer of a transfer with `peer` (`None`: any peer). A buffer
    /// of at least [`MIN_OVERLAP`] bytes that single-copy transfers reach goes to
    /// [`HugeBacking::note`], which collapses its blocks once they are used again; the rest
    /// cost one comparison.
    #[inline]
    pub fn note_buffer(&mut self, peer: Option<Rank>, ptr: *const u8, len: usize) {
        if len < MIN_OVERLAP || peer.is_some_and(|p| !self.can_pull(p)) {
            return;
        }
        if let Some(h) = self.huge.as_mut() {
            h.note(ptr, len);
        }
    }

    /// Removes this rank's segment name (mappings stay valid).
    ///
    /// # Errors
    /// The OS refused.
    pub fn unlink(&self) -> io::Result<()> {
        Segment::unlink(&self.name)
    }

    /// Whether single-copy reads from `peer` work.
    pub fn can_pull(&self, peer: Rank) -> bool {
        self.can_pull.get(peer.0 as usize) == Some(&true)
    }

    /// Whether `peer` is reached through this transport.
    pub fn reaches(&self, peer: Rank) -> bool {
        self.conns.get(peer.0 as usize).is_some_and(Option::is_some)
    }

    /// Copies `dst.len()` bytes at `addr` in `peer`'s memory into `dst`. Returns false when
    /// the copy failed.
    pub fn pull(&self, peer: Rank, addr: u64, dst: &mut [u8]) -> bool {
        self.can_pull(peer) && cma_read(self.pids[peer.0 as usize], addr, dst).is_ok()
    }

    /// Copies several ranges of `peer`'s memory with one call ([`cma_read_many`]); returns
    /// how many leading parts were copied whole (the caller copies the rest with
    /// [`ShmTransport::pull`]).
    ///
    /// # Safety
    /// As [`cma_read_many`]: every part's `local` is writable for its length.
    pub unsafe fn pull_many(&self, peer: Rank, parts: &[ReadPart]) -> usize {
        if !self.can_pull(peer) {
            return 0;
        }
        // SAFETY: forwarded from the caller.
        unsafe { cma_read_many(self.pids[peer.0 as usize], parts) }
    }

    /// Copies `src` to `addr` in `peer`'s memory. Returns false when the copy failed.
    pub fn push(&self, peer: Rank, addr: u64, src: &[u8]) -> bool {
        self.can_pull(peer) && cma_write(self.pids[peer.0 as usize], addr, src).is_ok()
    }

    fn index_of(&self, rank: u32) -> Option<usize> {
        self.local.binary_search(&rank).ok()
    }

    fn poll_once(&mut self, sink: &mut dyn FrameSink) -> bool {
        let mut did = false;
        for k in 0..self.connected.len() {
            let i = self.connected[k];
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            let mut res = if c.has_pending_writes() {
                c.flush_at_most(&mut self.sent, POLL_BUDGET)
            } else {
                Ok(false)
            };
            // Whole small frames that the sink takes (posted receives) go straight from
            // shared memory to their place; the general path below delivers the rest. An
            // idle peer costs the two loads of the first step (box stamp, ring tail).
            let peer = c.peer();
            let mut take = |h: &Header| sink.take_whole(peer, h);
            let mut next = Next::Taken;
            while next == Next::Taken {
                // SAFETY: the sink's contract (`FrameSink::take_whole`) covers the
                // destinations.
                next = unsafe { take_next(c, &mut take) };
                did |= next == Next::Taken;
            }
            if next == Next::Other {
                if res.is_ok() && c.stream().box_rx.ready() {
                    res = drain_box(c, sink).map(|()| true);
                }
                if c.stream_mut().rx.available_for(1) > 0 {
                    res = res.and_then(|w| {
                        Ok(w | c.read_at_most(
                            &mut self.staging,
                            sink,
                            ReadMode::Exact,
                            POLL_BUDGET,
                        )?)
                    });
                }
            }
            match res {
                Ok(d) => did |= d,
                Err(e) => {
                    if let Some(c) = self.conns[i].take() {
                        self.sent.extend(c.borrowed_requests());
                        sink.on_peer_lost(c.peer(), e);
                    }
                    did = true;
                }
            }
        }
        if !self.sent.is_empty() {
            for req in self.sent.drain(..) {
                sink.on_sent(req);
            }
            did = true;
        }
        did
    }

    /// The receive fast path: when the next frame from `peer` (in its fast box, else in its
    /// ring) is a whole compact eager frame whose payload fits `dst` and `accept` accepts its
    /// header (returning the status, which commits to the frame), copies the payload
    /// straight from shared memory into `dst` and consumes the frame. No staging buffer, no
    /// sink, no request.
    pub fn take_eager(
        &mut self,
        peer: Rank,
        dst: &mut [u8],
        accept: impl FnOnce(&Header) -> Option<RecvStatus>,
    ) -> Take {
        let Some(c) = self.conns.get_mut(peer.0 as usize).and_then(Option::as_mut) else {
            return Take::Other;
        };
        let (ptr, cap) = (dst.as_mut_ptr(), dst.len());
        let mut accept = Some(accept);
        let mut status = None;
        // SAFETY: `dst` is valid for writes of `cap` bytes and mutably borrowed meanwhile.
        let next = unsafe {
            take_next(c, &mut |h: &Header| {
                if h.payload_len > cap as u64 {
                    return None;
                }
                status = accept.take()?(h);
                status.map(|_| (ptr, cap))
            })
        };
        match (next, status) {
            (Next::Taken, Some(status)) => Take::Taken(status),
            (Next::Empty, _) => Take::Empty,
            _ => Take::Other,
        }
    }

    /// Whether some local peer has written frames not yet read (two loads per peer).
    pub fn has_input(&self) -> bool {
        self.connected.iter().any(|&i| {
            self.conns[i].as_ref().is_some_and(|c| {
                let pipe = c.stream();
                pipe.box_rx.ready() || pipe.rx.available() > 0
            })
        })
    }
}

/// What [`take_next`] did with the next frame from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Took it.
    Taken,
    /// There is none yet.
    Empty,
    /// Left it to the general path: another kind, partly written, or declined.
    Other,
}

/// The one step of the receive fast paths (a blocking receive's [`ShmTransport::take_eager`],
/// and [`FrameSink::take_whole`] while polling): when the next frame from `c`'s peer (in its
/// fast box, else in its ring) is a whole compact eager frame and `place` accepts its header
/// (returning a destination and its length, which commits to the frame), copies the payload
/// (at most that length) straight from shared memory there and frees the space.
///
/// # Safety
/// A destination `place` returns must be valid for writes of its length, and not otherwise
/// accessed during the call.
unsafe fn take_next(
    c: &mut FramedConn<ShmPipe>,
    place: &mut impl FnMut(&Header) -> Option<(*mut u8, usize)>,
) -> Next {
    let pipe = c.stream_mut();
    if let Some(rec) = pipe.box_rx.front() {
        let (Some(head), Some(body)) = (rec.get(..COMPACT_LEN), rec.get(COMPACT_LEN..)) else {
            return Next::Other;
        };
        let Some(h) = compact_eager(head).filter(|h| h.payload_len == body.len() as u64) else {
            return Next::Other;
        };
        let Some((dst, cap)) = place(&h) else {
            return Next::Other;
        };
        let n = body.len().min(cap);
        if n > 0 {
            // SAFETY: `dst` is valid for `cap >= n` bytes (the caller's promise) and does not
            // overlap the slot, which is shared memory of this transport.
            unsafe { std::ptr::copy_nonoverlapping(body.as_ptr(), dst, n) };
        }
        pipe.box_rx.pop();
        return Next::Taken;
    }
    if !c.at_frame_boundary() {
        return Next::Other;
    }
    let rx = &mut c.stream_mut().rx;
    let avail = rx.available_for(COMPACT_LEN);
    if avail == 0 {
        return Next::Empty;
    }
    let mut head = [0u8; COMPACT_LEN];
    if avail < COMPACT_LEN || rx.peek(&mut head) < COMPACT_LEN {
        return Next::Other;
    }
    let Some((h, len)) = compact_eager(&head)
        .and_then(|h| Some((h, usize::try_from(h.payload_len).ok()?)))
        .filter(|&(_, len)| {
            rx.available_for(COMPACT_LEN.saturating_add(len))
                .saturating_sub(COMPACT_LEN)
                >= len
        })
    else {
        return Next::Other;
    };
    let Some((dst, cap)) = place(&h) else {
        return Next::Other;
    };
    rx.consume(COMPACT_LEN);
    let n = len.min(cap);
    if n > 0 {
        // SAFETY: as above; `dst` holds `cap >= n` writable bytes.
        rx.read(unsafe { std::slice::from_raw_parts_mut(dst, n) });
    }
    rx.consume(len - n);
    Next::Taken
}

/// The header in `head`, if it is a valid compact (small eager) header.
fn compact_eager(head: &[u8]) -> Option<Header> {
    if head.first()? & COMPACT == 0 {
        return None;
    }
    Header::decode(head).ok()
}

/// Hands every published fast-box record of `c`'s peer to `sink`, releasing each slot
/// before the engine sees the frame.
fn drain_box(c: &mut FramedConn<ShmPipe>, sink: &mut dyn FrameSink) -> Result<(), TransportError> {
    let mut rec = [0u8; FASTBOX_RECORD];
    loop {
        let n = {
            let pipe = c.stream_mut();
            let Some(bytes) = pipe.box_rx.front() else {
                return Ok(());
            };
            rec[..bytes.len()].copy_from_slice(bytes);
            let n = bytes.len();
            pipe.box_rx.pop();
            n
        };
        c.deliver(&rec[..n], sink)?;
    }
}

impl Transport for ShmTransport {
    unsafe fn send(
        &mut self,
        to: Rank,
        header: &[u8; HEADER_LEN],
        body: Body,
    ) -> Result<(), TransportError> {
        let Some(c) = self.conns.get_mut(to.0 as usize).and_then(Option::as_mut) else {
            return Err(TransportError::NotConnected(to));
        };
        // A small frame (a small eager message, or a control frame: RTS, FIN, PUSH...)
        // takes the fast box, unless ring frames are still unread: then it follows them
        // through the ring, so frames arrive in order (the engine would reorder envelopes
        // anyway, but at the cost of holding early ones).
        let hlen = header_len(header[0]);
        if body.len <= FASTBOX_RECORD - hlen
            && !c.has_pending_writes()
            && c.stream_mut().tx.is_drained()
        {
            let body_slice: &[u8] = if body.len == 0 {
                &[]
            } else {
                // SAFETY: the caller guarantees `ptr` is valid for `len` bytes.
                unsafe { std::slice::from_raw_parts(body.ptr, body.len) }
            };
            let pipe = c.stream_mut();
            if pipe.box_tx.try_write(&[&header[..hlen], body_slice]) {
                pipe.bell.ring();
                self.sent.extend(body.owner);
                return Ok(());
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { c.send(header, body, &mut self.sent) }
    }

    fn progress(
        &mut self,
        sink: &mut dyn FrameSink,
        timeout: Option<Duration>,
    ) -> io::Result<bool> {
        if self.poll_once(sink) {
            return Ok(true);
        }
        let wait = timeout.unwrap_or(Duration::from_millis(100));
        if wait.is_zero() || self.has_pending_writes() {
            return Ok(false);
        }
        let seen = self.bell.prepare_wait();
        if self.has_input() {
            self.bell.cancel_wait();
        } else {
            self.bell.wait(seen, wait);
        }
        Ok(self.poll_once(sink))
    }

    fn has_pending_writes(&self) -> bool {
        self.conns
            .iter()
            .flatten()
            .any(FramedConn::has_pending_writes)
    }
}
