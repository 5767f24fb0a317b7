//! The shared-memory transport: frames between ranks of one host through byte rings, and
//! single-copy pulls of large messages.
//!
//! # Layout
//! Each rank owns one segment `braid-<job>-<rank>`: a doorbell, then one inbound ring per rank
//! of its host, indexed by the sender's position among the host's ranks (sorted by world
//! rank). A sender writes frames into its ring in the receiver's segment and rings the
//! receiver's doorbell; the receiver polls its rings and sleeps on its doorbell.
//!
//! # Lifetime
//! [`ShmTransport::create`] makes and formats the segment; [`ShmTransport::connect`] maps
//! the peers' segments once their cards are known; after a job-wide barrier
//! [`ShmTransport::unlink`] removes the names, so no file is left in `/dev/shm` whatever
//! happens to the job afterwards (mappings stay valid until the processes exit).

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use braid_engine::wire::{COMPACT, COMPACT_LEN, Header};
use braid_engine::{Rank, RecvStatus, ReqId};
pub use braid_transports::Take;
use braid_transports::stream::{ByteStream, FramedConn, ReadMode};
use braid_transports::{Body, FrameSink, HEADER_LEN, Transport, TransportError};

use crate::{
    DOORBELL_FOOTPRINT, Doorbell, RingConsumer, RingProducer, Segment, allow_ptrace_from_any,
    attach_consumer, attach_producer, cma_probe, cma_read, format_doorbell, format_ring,
    ring_footprint,
};

/// Magic value other ranks read from this process to check that single-copy reads work.
static PROBE_WORD: u64 = 0x4252_4149_445f_434d;
const STAGING: usize = 64 * 1024;

/// A connection to one local peer: my ring in its segment, its ring in mine.
struct ShmPipe {
    tx: RingProducer,
    rx: RingConsumer,
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
        let len = ring_offset(local.len(), ring_capacity);
        let seg = Arc::new(Segment::create(&name, len).map_err(create)?);
        // SAFETY: the segment is fresh and only this process has it mapped yet; every offset
        // lies inside it (len covers the doorbell and all rings).
        unsafe {
            format_doorbell(&seg, 0);
            for i in 0..local.len() {
                format_ring(&seg, ring_offset(i, ring_capacity), ring_capacity);
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
            // SAFETY: the peer formatted its doorbell and rings before publishing its card;
            // this rank is the only producer of ring `me` in the peer's segment and the only
            // consumer of ring `theirs` in its own; attach checks magic and bounds.
            let (tx, rx, bell) = unsafe {
                (
                    attach_producer(Arc::clone(&seg), ring_offset(me, self.ring_capacity))
                        .map_err(attach)?,
                    attach_consumer(
                        Arc::clone(&self.seg),
                        ring_offset(theirs, self.ring_capacity),
                    )
                    .map_err(attach)?,
                    Doorbell::attach(seg, 0).map_err(attach)?,
                )
            };
            let i = peer.0 as usize;
            self.pids[i] = pid;
            self.can_pull[i] = cma && cma_probe(pid, probe, PROBE_WORD);
            self.connected.push(i);
            self.conns[i] = Some(FramedConn::new(
                *peer,
                format!("shm:{name}"),
                ShmPipe { tx, rx, bell },
            ));
        }
        Ok(())
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
                c.flush(&mut self.sent)
            } else {
                Ok(false)
            };
            // Reading only when bytes are there keeps the idle poll to one load per peer.
            if c.stream().rx.available() > 0 {
                res = res
                    .and_then(|w| Ok(w | c.read_all(&mut self.staging, sink, ReadMode::Exact)?));
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

    /// The receive fast path: when the next frame from `peer` is a whole compact eager
    /// frame whose payload fits `dst` and `accept` accepts its header (returning the status,
    /// which commits to the frame), copies the payload straight from the ring into `dst`
    /// and consumes the frame. No staging buffer, no sink, no request.
    pub fn take_eager(
        &mut self,
        peer: Rank,
        dst: &mut [u8],
        accept: impl FnOnce(&Header) -> Option<RecvStatus>,
    ) -> Take {
        let Some(c) = self.conns.get_mut(peer.0 as usize).and_then(Option::as_mut) else {
            return Take::Other;
        };
        if !c.at_frame_boundary() {
            return Take::Other;
        }
        let rx = &mut c.stream_mut().rx;
        let avail = rx.available();
        if avail == 0 {
            return Take::Empty;
        }
        let mut head = [0u8; COMPACT_LEN];
        if avail < COMPACT_LEN || rx.peek(&mut head) < COMPACT_LEN || head[0] & COMPACT == 0 {
            return Take::Other;
        }
        let Ok(h) = Header::decode(&head) else {
            return Take::Other;
        };
        let Ok(len) = usize::try_from(h.payload_len) else {
            return Take::Other;
        };
        if len > dst.len() || avail - COMPACT_LEN < len {
            return Take::Other;
        }
        let Some(status) = accept(&h) else {
            return Take::Other;
        };
        rx.consume(COMPACT_LEN);
        rx.read(&mut dst[..len]);
        Take::Taken(status)
    }

    /// Whether some local peer has written bytes not yet read (one load per peer).
    pub fn has_input(&self) -> bool {
        self.connected.iter().any(|&i| {
            self.conns[i]
                .as_ref()
                .is_some_and(|c| c.stream().rx.available() > 0)
        })
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
