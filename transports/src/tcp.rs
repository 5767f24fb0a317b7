//! The TCP transport: authenticated connections between ranks over one or more rails,
//! non-blocking sockets driven by mio, spread over the rails as the [`RailMode`] says.
//!
//! # Wire-up
//! Every rank listens on each rail and publishes the listening addresses in its business
//! card. A rank connects to every lower rank and accepts connections from every higher one,
//! on the rails [`RailMode::rails_for_pair`] gives the pair (`single`: rail 0; `indep`: one
//! rail chosen from the two local ranks; `stripe`, `weighted`: every rail). A new connection
//! starts with a 32-byte hello: the magic `BRAIDv01`, the 16-byte job key, the sender's rank
//! (u32 LE), the rail (u16 LE) and the connection's generation on that rail (u16 LE: 0 at
//! wire-up, see the `conn` module on lanes). A connection with a wrong magic, key, rank, rail
//! or generation is closed with a warning; the listener stays open for the whole job, so a
//! stray connection can arrive at any time and is always refused. Connections made later
//! (failover, re-adoption, below) follow the same rule: the higher rank of the pair connects,
//! names rail and generation in its hello, and the lower rank adopts what it names, so both
//! ends always agree on the rails a pair uses.
//!
//! # Scheduling (`stripe`, `weighted`)
//! Every frame travels whole on one connection; the engine's per-pair sequence numbers put
//! envelopes back in order whatever rail delivered them. Small frames (RTS, CTS, short eager
//! messages, acknowledgements) take the least-queued rail, rail 0 when all are idle. Data
//! chunks and eager messages of 16 KiB or more go round-robin over the live rails (`stripe`), or to the rail that
//! would finish the chunk first given its backlog (bytes queued here and in the kernel) and
//! its measured drain rate (`weighted`): bytes the peer's host acknowledged per second while
//! the rail had a backlog, an EWMA sampled every 20 ms, so it adapts during the run. Rails
//! that would finish a chunk about as soon (within 15 % of its time; an idle rail counts as
//! fast as the fastest, its rate being unmeasured) take turns.
//!
//! # Rail failure
//! A connection whose write or read fails, whose kernel holds unacknowledged segments while no
//! ACK arrived for the stall timeout (2 s by default), whose local interface is down, or whose
//! TCP keepalive probes (an idle connection: after the stall timeout, then one per second
//! [`KEEPALIVE_PROBES`] times) go unanswered, is dropped, with a line on stderr naming rank,
//! rail, addresses, peer and host. A pair that may use several rails (its *rail set*: the
//! rails [`RailMode::rails_for_pair`] wires it on, then its fallbacks,
//! [`RailMode::fallback_rails`]) keeps every frame until the peer acknowledges it, so nothing
//! is lost with a connection (see the `conn` module: reliable connections):
//! - With other live connections to the peer, the frames the dead one held are resent whole
//!   on them, including those the dead socket had accepted but the peer never received.
//! - With none left (`indep`, whose pair uses one rail at a time, or every rail of a
//!   `stripe` pair gone), the pair *fails over*: the higher rank connects on the next rail of
//!   the set (in order, skipping rails whose interface here is down and the rail that just
//!   failed; each attempt bounded by the stall timeout), the lower rank waits for that
//!   connection (bounded: [`TcpTransport::failover_wait`]); frames sent meanwhile wait, and
//!   once connected the LOST exchange of the dead connection resends what it had not
//!   delivered, in the same way. In `indep` the new rail becomes the pair's rail on both sides.
//! - When no rail of the set is left (every attempt failed, or the lower rank waited in vain),
//!   the peer is reported lost with an error naming host, rails and the last failure.
//!
//! A closed connection (end of file, reset: what a peer's exit looks like) starts a failover
//! without messages: when the peer has exited, the higher rank's connections are refused and
//! end it at once, the lower rank's wait ends it within its bound.
//!
//! # Re-adoption (`stripe`, `weighted`)
//! A rail of the set that died while others carried on is reconnected by the higher rank
//! when its interface here is up again: tried every [`READOPT_EVERY`] (each attempt bounded by
//! the stall timeout, so a rail still down at the peer's end costs a few SYNs), logged on
//! stderr once it succeeds; from then on it carries traffic as before.
//!
//! # Implementation notes
//! Reads go through a staging buffer, so one `read` call can carry many small frames;
//! a large payload that a receive is waiting for is read straight into the receive buffer.
//! Writes gather several frames into one `writev`; what the socket does not take at once is
//! queued: small bodies are copied (bodies up to 64 bytes into the queue entry itself, no
//! allocation), large ones stay borrowed from the send request.
//!
//! The small-message path of a one-connection peer (`single`, or one rail) skips most of
//! that: a frame with a body of up to 1 KiB and nothing queued ahead of it is put
//! together in a scratch buffer and written with one `send`; a blocking receive that names
//! the peer reads its connection itself ([`TcpTransport::take_eager`]): the first frame of
//! the read goes straight into the receive buffer when the engine accepts it, the rest
//! through the framing as usual. With at most four connections (`DIRECT_POLL_MAX`), all of
//! one-connection peers, the connections are not registered with epoll at all ("bare"): an
//! edge-triggered registration makes the kernel run epoll's callback for every segment the
//! socket receives (on loopback inside the sender's `send`; ~0.16 us a message one way
//! here), although busy polling reads the socket anyway. Busy-polling calls read bare
//! connections directly, the poller's turn every 16th call reads them too, and a progress
//! call that may block waits in `poll(2)` on them and the epoll descriptor (which still
//! holds the listeners and connections being set up).
//!
//! Pairs that keep frames for failover (`indep`, `stripe`, `weighted` over several rails) take
//! neither shortcut, and their connections stay registered; their small-message path costs
//! what `single`'s general path does, up to the bookkeeping of the kept frames: a
//! busy-polling wait reads each peer's latency rail (its
//! first live rail, where small frames go) on every call and its other rails only while they
//! carry data (after 1024 empty reads in a row a rail is left to the poller, which runs
//! every 16th call), so a ping-pong makes one `read` per poll as in `single`; no clock is read
//! on that path; acknowledgements ride along with outgoing frames (see `conn`), so two-way
//! traffic sends none on its own.

mod conn;
mod failover;
mod sys;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use braid_engine::wire::{Header, header_len};
use braid_engine::{Rank, RecvStatus, ReqId};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use self::conn::{Conn, Entry, Event, Ident, KIND_LOST, Saved, control_header};
use crate::rail::{Rail, RailError, RailMode, published_addrs};
use crate::stream::ReadMode;
use crate::{Body, FrameSink, HEADER_LEN, JobKey, Take, Transport, TransportError};

const MAGIC: &[u8; 8] = b"BRAIDv01";
const HELLO_LEN: usize = 32;
/// Up to this many connections, a busy-polling wait reads the sockets directly.
const DIRECT_POLL_MAX: usize = 4;
/// A rail other than a peer's latency rail that found nothing in this many busy-polling reads
/// in a row is left to the poller (every 16th call) until it carries data again.
const COLD_AFTER: u32 = 1024;
const STAGING: usize = 256 * 1024;
/// How long an accepted connection may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection tokens are `peer * RAIL_SLOTS + rail`.
const RAIL_SLOTS: usize = 64;
const LISTENER_BASE: usize = 1 << 40;
const PENDING_BASE: usize = 1 << 41;
/// Tokens of outgoing connections in progress (failover, re-adoption): `CONNECT_BASE + slot`.
const CONNECT_BASE: usize = 1 << 42;
/// Unanswered keepalive probes (one per second once a connection was idle for the stall
/// timeout) after which the kernel fails a connection of a pair that can fail over.
pub const KEEPALIVE_PROBES: u32 = 3;
/// How often the higher rank of a `stripe` or `weighted` pair tries to reconnect a rail of the
/// pair that died.
pub const READOPT_EVERY: Duration = Duration::from_secs(1);
/// How often connections are checked for stalls.
const STALL_CHECK: Duration = Duration::from_millis(100);
/// How often drain rates are sampled (`weighted`).
const RATE_CHECK: Duration = Duration::from_millis(20);
/// `weighted`: rails whose expected finish time is within `WEIGHTED_TIE - 1` times one frame's
/// time on the fastest rail of the best one's take turns.
const WEIGHTED_TIE: f64 = 1.15;
/// Frames at least this long (header included) are spread over the rails like data chunks.
const SPREAD_MIN: usize = 16 * 1024;
/// Default stall timeout.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why wire-up failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireUpError {
    /// The rails could not be resolved.
    #[error(transparent)]
    Rail(#[from] RailError),
    /// Listening failed.
    #[error("cannot listen on rail {rail} ({addr}): {source}")]
    Listen {
        /// Rail name.
        rail: String,
        /// Address.
        addr: IpAddr,
        /// OS error.
        source: io::Error,
    },
    /// Connecting to a peer failed.
    #[error("cannot connect to rank {peer} at {addr} (from {local}): {source}")]
    Connect {
        /// The peer.
        peer: Rank,
        /// Its address.
        addr: SocketAddr,
        /// Our local address.
        local: IpAddr,
        /// OS error.
        source: io::Error,
    },
    /// A peer's card has no usable address.
    #[error("rank {peer} published no address reachable on rail {rail}: '{card}'")]
    BadCard {
        /// The peer.
        peer: Rank,
        /// Rail index.
        rail: usize,
        /// The card text.
        card: String,
    },
    /// Not every peer connected in time.
    #[error("timed out after {secs} s waiting for connections from ranks {missing:?}")]
    Timeout {
        /// Seconds waited.
        secs: u64,
        /// Ranks still missing.
        missing: Vec<u32>,
    },
    /// More rails than the transport supports.
    #[error("{0} rails given; at most {RAIL_SLOTS} are supported")]
    TooManyRails(usize),
    /// The poller failed.
    #[error("poller failed: {0}")]
    Poll(io::Error),
}

/// What a rank needs to know about a peer to connect to it.
#[derive(Debug, Clone)]
pub struct PeerCard {
    /// The peer.
    pub rank: Rank,
    /// Whether the peer runs on this host.
    pub same_host: bool,
    /// The peer's host identity, for messages.
    pub host: String,
    /// The peer's position among the ranks of its host (for [`RailMode::Indep`]).
    pub local_rank: u32,
    /// The peer's TCP card as published (see [`TcpTransport::card`]).
    pub card: String,
}

/// How the transport uses its rails; the same on every rank of a job.
#[derive(Debug, Clone, Copy)]
pub struct RailConfig {
    /// The rail mode.
    pub mode: RailMode,
    /// This rank's position among the ranks of its host.
    pub local_rank: u32,
    /// A connection with unacknowledged bytes and no ACK for this long is dropped.
    pub stall_timeout: Duration,
}

impl Default for RailConfig {
    fn default() -> Self {
        Self {
            mode: RailMode::Single,
            local_rank: 0,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

struct Pending {
    stream: TcpStream,
    addr: SocketAddr,
    hello: [u8; HELLO_LEN],
    got: usize,
    since: Instant,
}

/// An accepted connection whose hello passed, to be added by the caller of the poll (which
/// can replace an older connection of the pair on the rail, see `failover`).
#[derive(Debug)]
struct Accepted {
    /// The peer the hello named: a higher rank, not lost at the check.
    peer: Rank,
    /// A rail of the pair's set.
    rail: usize,
    /// At least the pair's next generation on `rail` at the check.
    generation: u16,
    /// The connection, deregistered from the poller.
    stream: TcpStream,
    /// Local and remote addresses, for messages.
    local: IpAddr,
    remote: SocketAddr,
}

/// An outgoing connection in progress (failover or re-adoption; wire-up connects blocking).
#[derive(Debug)]
struct Connecting {
    /// A lower rank, whose pair has no connection on `rail`.
    peer: u32,
    rail: usize,
    /// Generation the hello names (see the `conn` module on lanes): the pair's next one on
    /// `rail`, which becomes used only once the hello is written.
    generation: u16,
    /// Registered with token `CONNECT_BASE + slot`, for writability (connected or failed).
    stream: TcpStream,
    /// The peer's address on `rail`, and the local one bound.
    addr: SocketAddr,
    local: IpAddr,
    /// Given up when not connected within the stall timeout from here.
    since: Instant,
}

/// A pair without a live connection, moving to another rail of its set.
#[derive(Debug)]
struct Failover {
    /// When the pair lost its last connection (the lower rank waits from here).
    since: Instant,
    /// Rails that failed since then, the one that started it first, with why (for the error
    /// naming them when none is left).
    failed: Vec<(usize, String)>,
    /// The failure that started it, reported if no rail is left.
    cause: TransportError,
    /// Started by a closed connection (a peer's exit looks so): no messages.
    quiet: bool,
}

/// A connection of a peer that died, with the frames it held until the peer says which it
/// got.
#[derive(Debug)]
struct DeadRail {
    /// The connection's lane (rail and generation).
    lane: u16,
    /// Frames of the dead connection; `None` once resent or released.
    history: Option<std::collections::VecDeque<Entry>>,
    /// Tracked frames sent on it (the peer cannot have received more).
    sent_pos: u64,
    /// Tracked frames released by acknowledgement (the peer received at least these).
    acked_pos: u64,
}

/// Everything about one peer.
#[derive(Debug)]
struct Link {
    host: String,
    /// The peer's TCP card, to connect after wire-up.
    card: String,
    /// The peer runs on this host (chooses its address on the default rail).
    same_host: bool,
    /// Connection per rail index; `None`: not used, or dead.
    conns: Vec<Option<Conn>>,
    /// The pair's rail set in order of preference: the rails it is wired on, then its
    /// fallbacks ([`RailMode::fallback_rails`]). A rail the pair fails over to moves to the
    /// front; in `single` and `indep` frames take the first live rail of this list.
    rails: Vec<usize>,
    /// The rails the pair is wired on ([`RailMode::rails_for_pair`]), which re-adoption keeps
    /// connected.
    wired: Vec<usize>,
    /// Per rail index, the least generation a new connection of the pair on it may have
    /// (every connection of the pair on a rail has a generation of its own).
    next_gen: Vec<u16>,
    /// Per rail index, no re-adoption attempt before this.
    readopt_at: Vec<Option<Instant>>,
    /// The rail set has several rails: connections keep history and fail over.
    reliable: bool,
    /// Frames cut short on a dead connection, finished by their resends.
    partials: HashMap<Ident, Saved>,
    dead: Vec<DeadRail>,
    /// Frames sent while the pair had no live connection, in order, with settled bodies
    /// (copied, or borrowed from their send request until released); written once a
    /// connection is adopted. Empty unless `reliable`.
    parked: std::collections::VecDeque<Entry>,
    /// Set while the pair has no live connection and moves to another rail; `None` otherwise.
    failover: Option<Failover>,
    /// Round-robin cursor (`stripe`); the rail used last (`weighted`).
    rr: usize,
    /// Some connection owes the peer at least [`conn::PIGGYBACK_AT`] acknowledgements: the
    /// next tracked frame to it carries them.
    owed: bool,
    /// The peer is gone.
    lost: bool,
}

impl Link {
    fn live(&self) -> impl Iterator<Item = &Conn> {
        self.conns.iter().flatten().filter(|c| !c.broken)
    }

    fn live_count(&self) -> usize {
        self.live().count()
    }

    /// The rail and connection of a pair that keeps no frames for failover (it has exactly
    /// one connection); `None` for a reliable pair or while the connection is missing.
    fn single_conn(&mut self) -> Option<(usize, &mut Conn)> {
        if self.reliable {
            return None;
        }
        self.conns
            .iter_mut()
            .enumerate()
            .find_map(|(r, c)| Some((r, c.as_mut()?)))
    }
}

/// The TCP transport of one rank.
pub struct TcpTransport {
    rank: Rank,
    size: u32,
    /// The job key; all zero (accepting nothing) until wire-up sets it.
    key: JobKey,
    rails: Vec<Rail>,
    cfg: RailConfig,
    poll: Poll,
    events: Events,
    listeners: Vec<TcpListener>,
    /// Listening port per rail.
    ports: Vec<u16>,
    /// Per peer rank; `None` for self and peers not reached over TCP.
    links: Vec<Option<Link>>,
    /// Progress calls so far (paces the poller while busy polling directly).
    polls: u64,
    /// Accepted connections that have not sent their hello yet, by slot.
    pending: Vec<Option<Pending>>,
    /// Accepted connections whose hello passed, added at the end of the poll that read it.
    accepted: Vec<Accepted>,
    /// Outgoing connections in progress (failover, re-adoption), by slot.
    connecting: Vec<Option<Connecting>>,
    /// Some pair can use several rails: interfaces are checked for being down.
    any_reliable: bool,
    /// When re-adoption was last considered.
    last_readopt: Instant,
    /// Requests whose borrowed bodies are no longer needed since the last progress call.
    sent: Vec<ReqId>,
    /// Connections whose write failed inside `send`, killed at the next progress call.
    failed: Vec<(u32, usize, TransportError)>,
    /// Connections with queued output, as tokens.
    dirty: Vec<usize>,
    /// Peers with frames to acknowledge.
    ack_pending: Vec<u32>,
    /// Some acknowledgement is due whatever the time ([`conn::Rx::ack_urgent`]).
    ack_urgent: bool,
    /// No acknowledgement of `ack_pending` falls due by time before this (`None`: unknown).
    ack_at: Option<Instant>,
    /// Acknowledgements gathered to ride along with a frame (reused, never shrinks).
    piggyback: Vec<(u16, u64)>,
    /// What a busy-polling call reads directly: (peer, rail, whether it is read on every call:
    /// the connection of a one-rail peer, or the latency rail of a multi-rail peer). Rebuilt
    /// when `direct_stale` is set.
    direct: Vec<(u32, usize, bool)>,
    /// A connection was added or dropped since `direct` was built.
    direct_stale: bool,
    /// Readiness of the last poll (reused).
    ready: Vec<(usize, bool, bool)>,
    /// Control events of the read in progress.
    rail_events: Vec<Event>,
    staging: Vec<u8>,
    /// Read every connection at the next progress call (set during wire-up).
    recheck_all: bool,
    last_stall_check: Instant,
    last_rate_check: Instant,
    /// `send_acks` marked a connection broken.
    any_broken: bool,
    /// The next progress call runs the poller ([`Self::poll_next`]).
    poll_due: bool,
    /// Connections of one-connection peers stay out of the poller (set at wire-up when every
    /// pair has one connection and there are at most [`DIRECT_POLL_MAX`]): busy polling reads
    /// them, and a blocking progress call waits in `poll(2)` on them and the poller.
    bare: bool,
    /// A bare connection's peer that the next progress call does not read unless it waits
    /// ([`Self::poll_next`]).
    poll_except: Option<u32>,
    /// `poll(2)` set of a blocking call with bare connections (reused).
    pollfds: Vec<libc::pollfd>,
    /// Bare connections of that set, in its order after the poller's own descriptor.
    polled: Vec<(u32, usize)>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("rank", &self.rank)
            .field("rails", &self.rails)
            .field("mode", &self.cfg.mode)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Listens on every rail.
    ///
    /// # Errors
    /// [`WireUpError::Listen`] naming the rail.
    pub fn bind(rank: Rank, size: u32, rails: Vec<Rail>) -> Result<Self, WireUpError> {
        if rails.len() > RAIL_SLOTS {
            return Err(WireUpError::TooManyRails(rails.len()));
        }
        let poll = Poll::new().map_err(WireUpError::Poll)?;
        let mut listeners = Vec::new();
        let mut ports = Vec::new();
        for (i, rail) in rails.iter().enumerate() {
            let listen = |e| WireUpError::Listen {
                rail: rail.name.clone(),
                addr: rail.addr,
                source: e,
            };
            let mut l = TcpListener::bind(SocketAddr::new(rail.addr, 0)).map_err(listen)?;
            ports.push(l.local_addr().map_err(listen)?.port());
            poll.registry()
                .register(&mut l, Token(LISTENER_BASE + i), Interest::READABLE)
                .map_err(listen)?;
            listeners.push(l);
        }
        let now = Instant::now();
        Ok(Self {
            rank,
            size,
            key: JobKey([0; 16]),
            rails,
            cfg: RailConfig::default(),
            poll,
            events: Events::with_capacity(256),
            listeners,
            ports,
            links: (0..size).map(|_| None).collect(),
            polls: 0,
            pending: Vec::new(),
            accepted: Vec::new(),
            connecting: Vec::new(),
            any_reliable: false,
            last_readopt: now,
            sent: Vec::new(),
            failed: Vec::new(),
            dirty: Vec::new(),
            ack_pending: Vec::new(),
            ack_urgent: false,
            ack_at: None,
            piggyback: Vec::new(),
            direct: Vec::new(),
            direct_stale: true,
            ready: Vec::new(),
            rail_events: Vec::new(),
            staging: vec![0u8; STAGING],
            recheck_all: true,
            last_stall_check: now,
            last_rate_check: now,
            any_broken: false,
            poll_due: false,
            bare: false,
            poll_except: None,
            pollfds: Vec::new(),
            polled: Vec::new(),
        })
    }

    /// The business-card text: per rail `addr;addr;...@port`, rails separated by `,`.
    ///
    /// # Errors
    /// Listing interfaces failed.
    pub fn card(&self) -> Result<String, WireUpError> {
        let mut parts = Vec::new();
        for (rail, port) in self.rails.iter().zip(&self.ports) {
            let addrs: Vec<String> = published_addrs(rail)?
                .iter()
                .map(ToString::to_string)
                .collect();
            parts.push(format!("{}@{port}", addrs.join(";")));
        }
        Ok(parts.join(","))
    }

    /// The rails in use.
    pub fn rails(&self) -> &[Rail] {
        &self.rails
    }

    /// The rail mode in use.
    pub fn mode(&self) -> RailMode {
        self.cfg.mode
    }

    /// The receive fast path (a blocking receive naming one peer, see `braid::core`): reads
    /// the connection to `peer` once and, when the read starts with a whole eager frame whose
    /// payload fits `dst` and which `accept` accepts (returning its status, which commits to
    /// the frame), copies the payload straight into `dst`. Every other byte read goes through
    /// the framing into `sink` as a progress call would put it. No request, no poller.
    ///
    /// Returns [`Take::Empty`] when nothing was there, [`Take::Other`] when the general path
    /// must take over: the peer's connection keeps frames for failover (several rails), a
    /// frame is half read, output is queued, the read brought another frame first (it went
    /// to `sink`), or the connection failed (reported to `sink`).
    pub fn take_eager<S: FrameSink>(
        &mut self,
        peer: Rank,
        dst: &mut [u8],
        sink: &mut S,
        accept: impl FnOnce(&mut S, &Header) -> Option<RecvStatus>,
    ) -> Take {
        if self.recheck_all || !self.dirty.is_empty() || !self.failed.is_empty() {
            return Take::Other;
        }
        let Some(link) = self.links.get_mut(peer.0 as usize).and_then(Option::as_mut) else {
            return Take::Other;
        };
        if link.lost {
            return Take::Other;
        }
        let Some((rail, c)) = link.single_conn() else {
            return Take::Other;
        };
        if c.broken || !c.framed.at_frame_boundary() {
            return Take::Other;
        }
        let staging = &mut self.staging[..];
        let n = match sys::recv(c.framed.stream().as_raw_fd(), staging) {
            sys::Recv::Data(n) => n,
            sys::Recv::Empty => return Take::Empty,
            sys::Recv::Closed => {
                let err = c.framed.closed();
                self.kill_conn(peer.0, rail, err, None, sink);
                return Take::Other;
            }
            sys::Recv::Failed(e) => {
                let err = TransportError::LocalIo {
                    peer,
                    addr: c.framed_addr(),
                    op: "read",
                    source: e,
                };
                self.kill_conn(peer.0, rail, err, None, sink);
                return Take::Other;
            }
        };
        let got = &staging[..n];
        let hlen = header_len(got[0]);
        let mut taken = None;
        if let Some(head) = got.get(..hlen) {
            let mut full = [0u8; HEADER_LEN];
            full[..hlen].copy_from_slice(head);
            let len = usize::try_from(Header::peek_payload_len(&full)).unwrap_or(usize::MAX);
            if len <= dst.len()
                && len <= n - hlen
                && let Ok(h) = Header::decode(head)
                && let Some(status) = accept(sink, &h)
            {
                dst[..len].copy_from_slice(&got[hlen..hlen + len]);
                taken = Some((status, hlen + len));
            }
        }
        let from = taken.map_or(0, |t| t.1);
        let mut res = c.framed.feed(&staging[from..n], sink).map(|()| true);
        if res.is_ok() && n == staging.len() {
            // A full read: more may wait, and the edge-triggered poller will not say so.
            res = c.framed.read_all(staging, sink, ReadMode::Batched);
        }
        if let Err(err) = res {
            self.kill_conn(peer.0, rail, err, None, sink);
        }
        taken.map_or(Take::Other, |t| Take::Taken(t.0))
    }

    /// Makes the next [`Transport::progress`] call wait in the poller (with its timeout)
    /// instead of reading the connections directly, so new connections, writability and
    /// timers are looked at: for a caller that busy-polls `except` through
    /// [`Self::take_eager`], whose connection that call then leaves alone when it does not
    /// wait (its frames stay for the caller's fast path).
    pub fn poll_next(&mut self, except: Option<Rank>) {
        self.poll_due = true;
        self.poll_except = except.map(|r| r.0);
    }

    /// Connects to every lower rank of `peers` and accepts connections from every higher
    /// one, on the rails `cfg.mode` gives each pair, within `timeout`. From now on every
    /// connection must present `key`.
    ///
    /// # Errors
    /// [`WireUpError`] naming the peer, address or missing ranks.
    pub fn wire_up(
        &mut self,
        key: JobKey,
        cfg: RailConfig,
        peers: &[PeerCard],
        timeout: Duration,
    ) -> Result<(), WireUpError> {
        self.key = key;
        self.cfg = cfg;
        let deadline = Instant::now() + timeout;
        let me = self.rank;
        let nrails = self.rails.len();
        let mut conns = 0;
        for p in peers {
            let wired = cfg
                .mode
                .rails_for_pair(cfg.local_rank, p.local_rank, nrails);
            let mut rails = wired.clone();
            rails.extend(
                cfg.mode
                    .fallback_rails(cfg.local_rank, p.local_rank, nrails)
                    .into_iter()
                    .filter(|r| !wired.contains(r)),
            );
            let reliable = rails.len() > 1;
            self.any_reliable |= reliable;
            conns += wired.len();
            self.links[p.rank.0 as usize] = Some(Link {
                host: p.host.clone(),
                card: p.card.clone(),
                same_host: p.same_host,
                conns: (0..nrails).map(|_| None).collect(),
                rails,
                wired,
                next_gen: vec![0; nrails],
                readopt_at: vec![None; nrails],
                reliable,
                partials: HashMap::new(),
                dead: Vec::new(),
                parked: std::collections::VecDeque::new(),
                failover: None,
                rr: 0,
                owed: false,
                lost: false,
            });
        }
        self.bare = !self.any_reliable && conns <= DIRECT_POLL_MAX;
        for p in peers.iter().filter(|p| p.rank < me) {
            let wired = self.links[p.rank.0 as usize]
                .as_ref()
                .map(|l| l.wired.clone())
                .unwrap_or_default();
            for rail in wired {
                self.connect_rail(p, rail, deadline)?;
            }
        }
        loop {
            let missing: Vec<u32> = peers
                .iter()
                .filter(|p| p.rank > me)
                .filter(|p| {
                    self.links[p.rank.0 as usize]
                        .as_ref()
                        .is_some_and(|l| l.wired.iter().any(|r| l.conns[*r].is_none()))
                })
                .map(|p| p.rank.0)
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WireUpError::Timeout {
                    secs: timeout.as_secs(),
                    missing,
                });
            }
            self.poll_wire_up((deadline - now).min(Duration::from_millis(100)))
                .map_err(WireUpError::Poll)?;
        }
    }

    fn connect_rail(
        &mut self,
        p: &PeerCard,
        rail: usize,
        deadline: Instant,
    ) -> Result<(), WireUpError> {
        let (addr, local) = pick_addr(&self.rails, p.rank, &p.card, p.same_host, rail)?;
        let err = |e| WireUpError::Connect {
            peer: p.rank,
            addr,
            local,
            source: e,
        };
        let stream = connect(addr, local, deadline).map_err(err)?;
        let hello = self.hello(rail, 0);
        let mut std_stream: std::net::TcpStream = stream.into();
        std_stream
            .write_all(&hello)
            .and_then(|()| std_stream.set_nonblocking(true))
            .map_err(err)?;
        let local_ip = std_stream.local_addr().map_or(local, |a| a.ip());
        self.add_conn(
            p.rank,
            rail,
            0,
            TcpStream::from_std(std_stream),
            local_ip,
            addr,
        )
        .map_err(WireUpError::Poll)
    }

    /// The hello this rank sends on a new connection on `rail` of generation `generation`.
    fn hello(&self, rail: usize, generation: u16) -> [u8; HELLO_LEN] {
        let mut hello = [0u8; HELLO_LEN];
        hello[..8].copy_from_slice(MAGIC);
        hello[8..24].copy_from_slice(&self.key.0);
        hello[24..28].copy_from_slice(&self.rank.0.to_le_bytes());
        let rail16 = u16::try_from(rail).unwrap_or(u16::MAX);
        hello[28..30].copy_from_slice(&rail16.to_le_bytes());
        hello[30..32].copy_from_slice(&generation.to_le_bytes());
        hello
    }

    /// One poll during wire-up: accepts connections and reads hellos. Frames that peers which
    /// already finished wire-up send meanwhile stay in the socket until the first `progress`
    /// (which reads every connection once, since their readiness edges were consumed here).
    fn poll_wire_up(&mut self, timeout: Duration) -> io::Result<()> {
        self.recheck_all = true;
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let tokens: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
        for t in tokens {
            if t >= CONNECT_BASE {
                // None during wire-up.
            } else if t >= PENDING_BASE {
                self.read_hello(t - PENDING_BASE);
            } else if t >= LISTENER_BASE {
                self.accept(t - LISTENER_BASE);
            }
        }
        for a in std::mem::take(&mut self.accepted) {
            let taken = self.links[a.peer.0 as usize]
                .as_ref()
                .is_none_or(|l| l.conns[a.rail].is_some());
            if taken {
                eprintln!(
                    "braid: rank {}: refused a connection from {}: a second connection \
                     claiming rank {} on rail {} during wire-up",
                    self.rank, a.remote, a.peer, a.rail
                );
            } else if let Err(e) =
                self.add_conn(a.peer, a.rail, a.generation, a.stream, a.local, a.remote)
            {
                eprintln!(
                    "braid: rank {}: cannot register rank {}: {e}",
                    self.rank, a.peer
                );
            }
        }
        self.expire_pending();
        Ok(())
    }

    /// Registers a new connection of `peer` on `rail` with generation `generation`; callers
    /// then adopt one made after wire-up (`failover`).
    fn add_conn(
        &mut self,
        peer: Rank,
        rail: usize,
        generation: u16,
        mut stream: TcpStream,
        local: IpAddr,
        remote: SocketAddr,
    ) -> io::Result<()> {
        let i = peer.0 as usize;
        let stall = self.cfg.stall_timeout;
        let Some(link) = self.links.get_mut(i).and_then(Option::as_mut) else {
            return Err(io::Error::other(format!("rank {peer} is not a TCP peer")));
        };
        let lane = conn::lane(rail, generation).ok_or_else(|| {
            io::Error::other(format!(
                "rail {rail} has no generation {generation} (fewer than {})",
                conn::GENERATIONS
            ))
        })?;
        if link.reliable {
            // An idle connection over a dead path fails within stall + probes seconds, so the
            // higher rank of a pair learns of it even while it has nothing to send.
            let ka = socket2::TcpKeepalive::new()
                .with_time(stall.max(Duration::from_secs(1)))
                .with_interval(Duration::from_secs(1))
                .with_retries(KEEPALIVE_PROBES);
            socket2::SockRef::from(&stream).set_tcp_keepalive(&ka)?;
        }
        let bare = self.bare && !link.reliable;
        if !bare {
            self.poll.registry().register(
                &mut stream,
                Token(i * RAIL_SLOTS + rail),
                Interest::READABLE | Interest::WRITABLE,
            )?;
        }
        let rail_name = self
            .rails
            .get(rail)
            .map_or_else(|| format!("#{rail}"), |r| r.name.clone());
        let path = format!("{local} -> {}", remote.ip());
        let desc = format!("host {}, rail {rail_name}, {local} -> {remote}", link.host);
        let mut conn = Conn::new(lane, rail_name, path, desc, stream, peer, link.reliable);
        conn.registered = !bare;
        link.conns[rail] = Some(conn);
        link.next_gen[rail] = generation.saturating_add(1);
        link.readopt_at[rail] = None;
        self.direct_stale = true;
        Ok(())
    }

    fn accept(&mut self, li: usize) {
        loop {
            let (mut stream, addr) = match self.listeners[li].accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    eprintln!("braid: rank {}: accept failed: {e}", self.rank);
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            let slot = free_slot(&mut self.pending);
            if self
                .poll
                .registry()
                .register(&mut stream, Token(PENDING_BASE + slot), Interest::READABLE)
                .is_err()
            {
                continue;
            }
            self.pending[slot] = Some(Pending {
                stream,
                addr,
                hello: [0; HELLO_LEN],
                got: 0,
                since: Instant::now(),
            });
            self.read_hello(slot);
        }
    }

    fn read_hello(&mut self, slot: usize) {
        let Some(p) = self.pending.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let verdict: Option<Result<(Rank, usize, u16), String>> = loop {
            match Read::read(&mut p.stream, &mut p.hello[p.got..]) {
                Ok(0) => break Some(Err("closed before its hello".into())),
                Ok(n) => {
                    p.got += n;
                    if p.got == HELLO_LEN {
                        break Some(check_hello(&p.hello, &self.key, self.size, self.rank));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) => break Some(Err(e.to_string())),
            }
        };
        let Some(verdict) = verdict else { return };
        let Some(mut p) = self.pending[slot].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut p.stream);
        let verdict = verdict.and_then(|(peer, rail, generation)| {
            let link = self.links[peer.0 as usize]
                .as_ref()
                .ok_or_else(|| format!("rank {peer} is not a TCP peer of rank {}", self.rank))?;
            if !link.rails.contains(&rail) {
                return Err(format!(
                    "rank {peer} connected on rail {rail}, not one of {:?}",
                    link.rails
                ));
            }
            // A pair that cannot fail over never reconnects; any other pair's later connection
            // on a rail has a generation above all before it there.
            if link.lost || generation < link.next_gen[rail] || (!link.reliable && generation > 0) {
                return Err(format!(
                    "a second connection claiming rank {peer} on rail {rail} (generation \
                     {generation})"
                ));
            }
            Ok((peer, rail, generation))
        });
        match verdict {
            Ok((peer, rail, generation)) => {
                let local = p
                    .stream
                    .local_addr()
                    .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip());
                self.accepted.push(Accepted {
                    peer,
                    rail,
                    generation,
                    stream: p.stream,
                    local,
                    remote: p.addr,
                });
            }
            Err(why) => eprintln!(
                "braid: rank {}: refused a connection from {}: {why}",
                self.rank, p.addr
            ),
        }
    }

    fn expire_pending(&mut self) {
        for slot in 0..self.pending.len() {
            if let Some(p) = &self.pending[slot]
                && p.since.elapsed() > HELLO_TIMEOUT
                && let Some(mut p) = self.pending[slot].take()
            {
                let _ = self.poll.registry().deregister(&mut p.stream);
                eprintln!(
                    "braid: rank {}: refused a connection from {}: no hello within {:?}",
                    self.rank, p.addr, HELLO_TIMEOUT
                );
            }
        }
    }

    /// The live connection a frame to `peer` goes on.
    fn choose(&mut self, peer: u32, data: bool, len: usize) -> Option<usize> {
        let mode = self.cfg.mode;
        let link = self.links.get_mut(peer as usize)?.as_mut()?;
        if link.lost {
            return None;
        }
        if !link.reliable {
            return link.live().next().map(|c| c.rail as usize);
        }
        if !mode.is_multi() {
            // The pair's rail: the first live one of its set (both ends agree: a rail the pair
            // fails over to moves to the front of the set on both).
            return link
                .rails
                .iter()
                .copied()
                .find(|r| link.conns[*r].as_ref().is_some_and(|c| !c.broken));
        }
        let n = link.live_count();
        if n <= 1 {
            return link.live().next().map(|c| c.rail as usize);
        }
        if !data {
            // The latency rail (the first live one) unless it is backed up: then the
            // least-queued.
            let first = link.live().next()?;
            if first.queued == 0 {
                return Some(first.rail as usize);
            }
            return link
                .live()
                .min_by_key(|c| (c.queued, c.rail))
                .map(|c| c.rail as usize);
        }
        match mode {
            RailMode::Weighted => {
                // Expected finish time of the frame on each rail; among the rails within a
                // fraction (WEIGHTED_TIE - 1) of one frame's time of the best, take turns (the
                // next after the last one used), so idle rails of equal speed share messages
                // as in `stripe` (each rail's queue, and a rate-limited link's token bucket,
                // get time to drain) while a slower or backed-up rail gets only what it
                // finishes in time.
                // An idle rail's rate is not being measured (its estimate drifts towards half the
                // best rail's), so an idle rail counts as fast as the fastest: idle rails take
                // turns, and measured rates decide as soon as rails have a backlog.
                let fastest = link.live().map(|c| c.rate.max(1e6)).fold(1e6, f64::max);
                let mut est = [(0usize, 0.0f64); RAIL_SLOTS];
                let mut k = 0;
                for c in link.live() {
                    if let Some(slot) = est.get_mut(k) {
                        let backlog = c.backlog();
                        let rate = if backlog == 0 {
                            fastest
                        } else {
                            c.rate.max(1e6)
                        };
                        *slot = (c.rail as usize, (backlog + len) as f64 / rate);
                        k += 1;
                    }
                }
                let est = &est[..k];
                let best = est.iter().map(|e| e.1).fold(f64::INFINITY, f64::min);
                let tie = best + (WEIGHTED_TIE - 1.0) * len as f64 / fastest;
                let last = link.rr;
                let pick = est
                    .iter()
                    .filter(|e| e.1 <= tie)
                    .min_by_key(|e| (e.0 <= last, e.0))
                    .map(|e| e.0);
                if let Some(r) = pick {
                    link.rr = r;
                }
                pick
            }
            _ => {
                link.rr = link.rr.wrapping_add(1);
                let k = link.rr % n;
                link.live().nth(k).map(|c| c.rail as usize)
            }
        }
    }

    /// Queues `entry` to `peer` on the connection [`Self::choose`] picks. Returns false when
    /// the peer has no live connection and cannot get one; a tracked frame to a pair that can
    /// fail over waits in [`Link::parked`] for its next connection instead.
    fn enqueue(&mut self, peer: u32, mut entry: Entry) -> bool {
        // Large eager messages spread like data chunks; small frames keep the fast rail.
        let data = entry.is_data() || entry.wire_len() >= SPREAD_MIN;
        let Some(rail) = self.choose(peer, data, entry.wire_len()) else {
            if let Some(link) = self
                .links
                .get_mut(peer as usize)
                .and_then(Option::as_mut)
                .filter(|l| l.reliable && !l.lost && entry.tracked())
            {
                // The body may be the caller's for this call only: copy it unless its send
                // request lends it.
                entry.settle(&mut self.sent);
                link.parked.push_back(entry);
                return true;
            }
            entry.release(&mut self.sent);
            return false;
        };
        let token = peer as usize * RAIL_SLOTS + rail;
        let me = self.rank;
        let Some(link) = self.links.get_mut(peer as usize).and_then(Option::as_mut) else {
            return false;
        };
        // Acknowledgements ride along with a tracked frame once enough are owed, in the same
        // `writev`: in two-way traffic (ping-pong) none is ever sent alone.
        self.piggyback.clear();
        if link.owed && entry.tracked() {
            link.owed = false;
            for c in link.conns.iter_mut().flatten() {
                if c.rx.ack_pending() {
                    self.piggyback.push((c.lane, c.rx.pos));
                    c.rx.mark_acked();
                }
            }
        }
        let Some(c) = link.conns[rail].as_mut() else {
            return false;
        };
        for &(r, pos) in &self.piggyback {
            c.queue(Entry::ack(me, r, pos));
        }
        if let Err(e) = c.push(entry, &mut self.sent) {
            c.broken = true;
            let err = TransportError::LocalIo {
                peer: Rank(peer),
                addr: c.framed_addr(),
                op: "write",
                source: e,
            };
            self.failed.push((peer, rail, err));
        }
        if c.queued > 0 {
            self.dirty.push(token);
        }
        true
    }

    /// Rebuilds the list of connections a busy-polling call reads directly: every connection,
    /// marked whether it is read on every call (a one-rail peer's, or a multi-rail peer's first
    /// live rail, where its small frames arrive) or only while it carries data.
    fn rebuild_direct(&mut self) {
        self.direct_stale = false;
        self.direct.clear();
        for (peer, link) in self.links.iter().enumerate() {
            let Some(l) = link.as_ref().filter(|l| !l.lost) else {
                continue;
            };
            let peer = u32::try_from(peer).unwrap_or(u32::MAX);
            let first = l.conns.iter().position(Option::is_some);
            for (rail, c) in l.conns.iter().enumerate() {
                if c.is_some() {
                    let every = !l.reliable || Some(rail) == first;
                    self.direct.push((peer, rail, every));
                }
            }
        }
    }

    /// Whether a connection has found nothing for [`COLD_AFTER`] busy-polling reads.
    fn is_cold(&self, peer: u32, rail: usize) -> bool {
        self.links
            .get(peer as usize)
            .and_then(Option::as_ref)
            .and_then(|l| l.conns.get(rail))
            .and_then(Option::as_ref)
            .is_none_or(|c| c.idle_reads >= COLD_AFTER)
    }

    /// Reads everything available on one connection; handles its control events and its
    /// failure. Returns whether bytes were read.
    fn read_conn(&mut self, peer: u32, rail: usize, sink: &mut dyn FrameSink) -> bool {
        let nrails = self.rails.len();
        let Some(link) = self.links.get_mut(peer as usize).and_then(Option::as_mut) else {
            return false;
        };
        let Some(c) = link.conns.get_mut(rail).and_then(Option::as_mut) else {
            return false;
        };
        let res = c.read(
            &mut self.staging,
            sink,
            &mut link.partials,
            &mut self.rail_events,
            nrails,
        );
        if matches!(res, Ok(true)) {
            c.idle_reads = 0;
        } else {
            c.idle_reads = c.idle_reads.saturating_add(1);
        }
        if link.reliable && c.rx.ack_pending() {
            self.ack_urgent |= c.rx.ack_urgent();
            link.owed |= c.rx.unacked() >= conn::PIGGYBACK_AT;
            if !self.ack_pending.contains(&peer) {
                self.ack_pending.push(peer);
            }
        }
        if !self.rail_events.is_empty() {
            let mut events = std::mem::take(&mut self.rail_events);
            for ev in events.drain(..) {
                self.handle_event(peer, ev, sink);
            }
            if self.rail_events.is_empty() {
                self.rail_events = events; // keep the capacity
            }
        }
        match res {
            Ok(did) => did,
            Err(e) => {
                self.kill_conn(peer, rail, e, None, sink);
                true
            }
        }
    }

    fn handle_event(&mut self, peer: u32, ev: Event, sink: &mut dyn FrameSink) {
        let Some(link) = self.links.get_mut(peer as usize).and_then(Option::as_mut) else {
            return;
        };
        if link.lost {
            return;
        }
        match ev {
            Event::Ack { lane, pos } => {
                let Some(c) = link
                    .conns
                    .get_mut(conn::rail_of(lane))
                    .and_then(Option::as_mut)
                    .filter(|c| c.lane == lane)
                else {
                    return; // a connection that died meanwhile: its LOST exchange settles it
                };
                if let Err(reason) = c.ack(pos, &mut self.sent) {
                    let addr = c.framed_addr();
                    let err = TransportError::PeerProtocol {
                        peer: Rank(peer),
                        addr,
                        reason,
                    };
                    self.lose_peer(peer, err, sink);
                }
            }
            Event::Lost { lane, pos } => {
                let rail = conn::rail_of(lane);
                if !link.rails.contains(&rail) {
                    let err = TransportError::PeerProtocol {
                        peer: Rank(peer),
                        addr: format!("host {}", link.host),
                        reason: format!("reported rail {rail} lost, which this pair does not use"),
                    };
                    self.lose_peer(peer, err, sink);
                    return;
                }
                if link.conns[rail].as_ref().is_some_and(|c| c.lane == lane) {
                    // Take what already arrived on it, then drop it as the peer did.
                    self.read_conn(peer, rail, sink);
                    let conn = self
                        .links
                        .get(peer as usize)
                        .and_then(Option::as_ref)
                        .and_then(|l| l.conns[rail].as_ref())
                        .filter(|c| c.lane == lane);
                    if let Some(c) = conn {
                        let err = TransportError::LocalIo {
                            peer: Rank(peer),
                            addr: c.framed_addr(),
                            op: "read",
                            source: io::Error::other(format!("rank {peer} reported the rail lost")),
                        };
                        self.kill_conn(peer, rail, err, Some(pos), sink);
                        return;
                    }
                }
                self.resend_from(peer, lane, pos, sink);
            }
        }
    }

    /// Drops connection `rail` of `peer`. Its frames move to the pair's other connections once
    /// the peer's received count is known (`remote`, or its LOST frame later); with none left
    /// the pair fails over to another rail of its set (see the `failover` module), and a pair
    /// that has no other rail (or broke the protocol) is lost.
    fn kill_conn(
        &mut self,
        peer: u32,
        rail: usize,
        err: TransportError,
        remote: Option<u64>,
        sink: &mut dyn FrameSink,
    ) {
        let me = self.rank;
        let Some(link) = self.links.get_mut(peer as usize).and_then(Option::as_mut) else {
            return;
        };
        let Some(mut c) = link.conns.get_mut(rail).and_then(Option::take) else {
            return;
        };
        self.direct_stale = true;
        if c.registered {
            let _ = self.poll.registry().deregister(c.framed.stream_mut());
        }
        if let Some((ident, saved)) = c.partial() {
            link.partials.insert(ident, saved);
        }
        let rx_pos = c.rx.pos;
        let quiet = remote.is_none() && is_quiet(&err);
        let protocol = matches!(err, TransportError::PeerProtocol { .. });
        let left = link.live_count();
        let lane = c.lane;
        link.dead.push(DeadRail {
            lane,
            sent_pos: c.next_pos,
            acked_pos: c.acked_pos,
            history: None,
        });
        let (rail_name, path) = (c.rail_name.clone(), c.path.clone());
        let hist = c.into_history();
        if let Some(d) = link.dead.last_mut() {
            d.history = Some(hist);
        }
        if !link.reliable || protocol {
            self.lose_peer(peer, err, sink);
            return;
        }
        if !quiet {
            let next = match (left, peer < me.0) {
                (0, true) => ", failing over to another rail".to_string(),
                (0, false) => format!(", waiting for rank {peer} to connect on another rail"),
                _ => String::new(),
            };
            eprintln!(
                "braid: rank {me} lost rail {rail_name} ({path}) to rank {peer} on host {}: \
                 {err}; {left} rail(s) left{next}",
                link.host
            );
        }
        // Acknowledgements for the other rails may have gone down with this one.
        for c in link.conns.iter_mut().flatten() {
            c.rx.force = true;
        }
        self.ack_urgent = true;
        if !self.ack_pending.contains(&peer) {
            self.ack_pending.push(peer);
        }
        // Without a live connection the LOST frame and the resends wait for the next one.
        let lost = control_header(KIND_LOST, me, lane, rx_pos);
        self.enqueue(peer, Entry::frame(&lost, Body::EMPTY));
        if let Some(pos) = remote {
            self.resend_from(peer, lane, pos, sink);
        }
        if left == 0 {
            self.start_failover(peer, rail, err, quiet, sink);
        }
    }

    /// The peer received `pos` tracked frames of dead connection `lane`: release those, resend
    /// the rest on the live connections.
    fn resend_from(&mut self, peer: u32, lane: u16, pos: u64, sink: &mut dyn FrameSink) {
        let me = self.rank;
        let Some(link) = self.links.get_mut(peer as usize).and_then(Option::as_mut) else {
            return;
        };
        let rail = conn::rail_of(lane);
        let Some(d) = link.dead.iter_mut().find(|d| d.lane == lane) else {
            return;
        };
        let Some(hist) = d.history.take() else {
            return; // resent already
        };
        if pos > d.sent_pos || pos < d.acked_pos {
            let reason = format!(
                "says it received {pos} frames of rail {rail}, but {} were sent and {} \
                 acknowledged",
                d.sent_pos, d.acked_pos
            );
            let addr = format!("host {}", link.host);
            for e in hist {
                e.release(&mut self.sent);
            }
            self.lose_peer(
                peer,
                TransportError::PeerProtocol {
                    peer: Rank(peer),
                    addr,
                    reason,
                },
                sink,
            );
            return;
        }
        for e in hist {
            match (e.tracked(), e.pos()) {
                (true, Some(p)) if p >= pos => {
                    let ident = e.ident(lane).unwrap_or((lane, p));
                    self.enqueue(peer, e.into_resend(me, ident));
                }
                _ => e.release(&mut self.sent),
            }
        }
    }

    /// The peer is gone: release everything held for it and tell the sink.
    fn lose_peer(&mut self, peer: u32, err: TransportError, sink: &mut dyn FrameSink) {
        let Some(link) = self.links.get_mut(peer as usize).and_then(Option::as_mut) else {
            return;
        };
        if link.lost {
            return;
        }
        link.lost = true;
        self.direct_stale = true;
        for slot in &mut link.conns {
            if let Some(mut c) = slot.take() {
                if c.registered {
                    let _ = self.poll.registry().deregister(c.framed.stream_mut());
                }
                for e in c.into_history() {
                    e.release(&mut self.sent);
                }
            }
        }
        for d in &mut link.dead {
            for e in d.history.take().into_iter().flatten() {
                e.release(&mut self.sent);
            }
        }
        for e in link.parked.drain(..) {
            e.release(&mut self.sent);
        }
        link.failover = None;
        link.partials.clear();
        for slot in &mut self.connecting {
            if slot.as_ref().is_some_and(|c| c.peer == peer)
                && let Some(mut c) = slot.take()
            {
                let _ = self.poll.registry().deregister(&mut c.stream);
            }
        }
        sink.on_peer_lost(Rank(peer), err);
    }

    fn flush_token(&mut self, t: usize, sink: &mut dyn FrameSink) -> bool {
        let (peer, rail) = ((t / RAIL_SLOTS) as u32, t % RAIL_SLOTS);
        let Some(c) = self
            .links
            .get_mut(peer as usize)
            .and_then(Option::as_mut)
            .and_then(|l| l.conns.get_mut(rail))
            .and_then(Option::as_mut)
        else {
            return false;
        };
        if c.broken {
            return false;
        }
        match c.flush(&mut self.sent) {
            Ok(did) => {
                if c.queued > 0 {
                    self.dirty.push(t);
                }
                did
            }
            Err(e) => {
                let err = TransportError::LocalIo {
                    peer: Rank(peer),
                    addr: c.framed_addr(),
                    op: "write",
                    source: e,
                };
                self.kill_conn(peer, rail, err, None, sink);
                true
            }
        }
    }

    /// Waits up to `timeout` for events: in the poller alone, or, with bare connections and a
    /// non-zero timeout, in `poll(2)` on the poller's descriptor and the bare connections (for
    /// reading, and for writing those with queued bytes). Leaves the poller's events in
    /// `self.events` and the bare connections to look at in `self.polled`: after a wait,
    /// with their `revents` in `self.pollfds[1..]`; without one, all of them, `pollfds` empty.
    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.polled.clear();
        self.pollfds.clear();
        let except = self.poll_except.take().filter(|_| timeout.is_zero());
        if self.bare {
            if self.direct_stale {
                self.rebuild_direct();
            }
            for &(peer, rail, _) in &self.direct {
                if except == Some(peer) {
                    continue;
                }
                let c = self.links[peer as usize]
                    .as_ref()
                    .and_then(|l| l.conns[rail].as_ref());
                if let Some(c) = c.filter(|c| !c.registered && !c.broken) {
                    self.polled.push((peer, rail));
                    if !timeout.is_zero() {
                        let out = if c.queued > 0 { libc::POLLOUT } else { 0 };
                        self.pollfds.push(libc::pollfd {
                            fd: c.framed.stream().as_raw_fd(),
                            events: libc::POLLIN | libc::POLLRDHUP | out,
                            revents: 0,
                        });
                    }
                }
            }
        }
        let mut poller_timeout = timeout;
        if !self.pollfds.is_empty() {
            let me = libc::pollfd {
                fd: self.poll.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            self.pollfds.insert(0, me);
            match sys::poll(&mut self.pollfds, timeout) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if self.pollfds[0].revents == 0 {
                self.events.clear();
                return Ok(());
            }
            poller_timeout = Duration::ZERO;
        }
        match self.poll.poll(&mut self.events, Some(poller_timeout)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stall checks and drain-rate samples.
    fn check_rails(&mut self, now: Instant, sink: &mut dyn FrameSink) {
        if self.cfg.mode == RailMode::Weighted
            && now.duration_since(self.last_rate_check) >= RATE_CHECK
        {
            self.last_rate_check = now;
            for link in self.links.iter_mut().flatten() {
                let mut best = 0.0f64;
                let mut idle = Vec::new();
                for c in link.conns.iter_mut().flatten() {
                    if !c.sample_rate(now) {
                        idle.push(c.rail);
                    }
                    best = best.max(c.rate);
                }
                // An idle rail is measured no more, so a low estimate would starve it for
                // good: let the estimate of an idle rail recover towards half the best rail's,
                // so it gets traffic again and is measured afresh.
                for c in link.conns.iter_mut().flatten() {
                    if idle.contains(&c.rail) {
                        c.rate = c.rate.max(0.5 * best);
                    }
                }
            }
        }
        if now.duration_since(self.last_stall_check) < STALL_CHECK {
            return;
        }
        self.last_stall_check = now;
        let down = self.links_down();
        self.check_links(&down, sink);
        let timeout = self.cfg.stall_timeout;
        let mut stalled = Vec::new();
        for (peer, link) in self.links.iter_mut().enumerate() {
            for c in link.iter_mut().flat_map(|l| l.conns.iter_mut().flatten()) {
                if c.written > 0
                    && let Some(why) = c.stalled(now, timeout)
                {
                    stalled.push((peer as u32, c.rail as usize, c.framed_addr(), why));
                }
            }
        }
        for (peer, rail, addr, why) in stalled {
            let err = TransportError::LocalIo {
                peer: Rank(peer),
                addr,
                op: "write",
                source: io::Error::new(io::ErrorKind::TimedOut, why),
            };
            self.kill_conn(peer, rail, err, None, sink);
        }
        self.check_failovers(now, &down, sink);
    }

    /// The rails whose interface here is down (link down, no carrier); always none when no
    /// pair can fail over.
    fn links_down(&self) -> Vec<usize> {
        if !self.any_reliable || self.rails.len() < 2 {
            return Vec::new();
        }
        let names: Vec<&str> = self.rails.iter().map(|r| r.name.as_str()).collect();
        sys::links_down(&names).unwrap_or_default()
    }

    /// Drops the connections on the rails `down`: the peer hears of it at once through a LOST
    /// frame on another connection, instead of both sides waiting out the stall timeout. Only
    /// pairs that can fail over.
    fn check_links(&mut self, down: &[usize], sink: &mut dyn FrameSink) {
        for &rail in down {
            let name = self.rails[rail].name.clone();
            let victims: Vec<(u32, String)> = self
                .links
                .iter()
                .enumerate()
                .filter_map(|(peer, l)| {
                    let l = l.as_ref().filter(|l| l.reliable)?;
                    let c = l.conns.get(rail)?.as_ref()?;
                    Some((u32::try_from(peer).ok()?, c.framed_addr()))
                })
                .collect();
            for (peer, addr) in victims {
                let err = TransportError::LocalIo {
                    peer: Rank(peer),
                    addr,
                    op: "link check",
                    source: io::Error::new(
                        io::ErrorKind::NotConnected,
                        format!("interface {name} is down"),
                    ),
                };
                self.kill_conn(peer, rail, err, None, sink);
            }
        }
    }

    /// Sends the acknowledgements that are due.
    fn send_acks(&mut self, now: Instant) {
        let me = self.rank;
        self.ack_urgent = false;
        let peers = std::mem::take(&mut self.ack_pending);
        for peer in peers {
            let mut acks = std::mem::take(&mut self.piggyback);
            acks.clear();
            let Some(link) = self.links.get_mut(peer as usize).and_then(Option::as_mut) else {
                self.piggyback = acks;
                continue;
            };
            if link.lost {
                self.piggyback = acks;
                continue;
            }
            let mut still = false;
            for c in link.conns.iter_mut().flatten() {
                if c.rx.ack_due(now) {
                    acks.push((c.lane, c.rx.pos));
                    c.rx.mark_acked();
                } else if c.rx.ack_pending() {
                    still = true;
                }
            }
            for &(lane, pos) in &acks {
                // On its own connection unless that one is backed up.
                let rail = conn::rail_of(lane);
                let own = peer as usize * RAIL_SLOTS + rail;
                let link = self.links[peer as usize].as_mut();
                let direct = link
                    .and_then(|l| l.conns[rail].as_mut())
                    .filter(|c| !c.broken && c.queued < 256 * 1024);
                match direct {
                    Some(c) => {
                        if c.push(Entry::ack(me, lane, pos), &mut self.sent).is_err() {
                            c.broken = true;
                            self.any_broken = true;
                        }
                        if c.queued > 0 {
                            self.dirty.push(own);
                        }
                    }
                    None => {
                        self.enqueue(peer, Entry::ack(me, lane, pos));
                    }
                }
            }
            self.piggyback = acks;
            if still {
                self.ack_pending.push(peer);
            }
        }
        // The earliest time an acknowledgement left pending falls due.
        self.ack_at = None;
        for &peer in &self.ack_pending {
            let Some(link) = self.links.get(peer as usize).and_then(Option::as_ref) else {
                continue;
            };
            for c in link.conns.iter().flatten() {
                if let Some(t) = c.rx.since.filter(|_| c.rx.ack_pending()) {
                    let due = t + conn::ACK_DELAY;
                    self.ack_at = Some(self.ack_at.map_or(due, |a| a.min(due)));
                }
            }
        }
    }

    /// A write failed for a connection that `send_acks` marked broken: find them.
    fn collect_broken(&mut self) {
        if !std::mem::take(&mut self.any_broken) {
            return;
        }
        for (peer, link) in self.links.iter().enumerate() {
            for c in link.iter().flat_map(|l| l.conns.iter().flatten()) {
                if c.broken
                    && !self
                        .failed
                        .iter()
                        .any(|(p, r, _)| *p == peer as u32 && *r == c.rail as usize)
                {
                    self.failed.push((
                        peer as u32,
                        c.rail as usize,
                        TransportError::LocalIo {
                            peer: Rank(peer as u32),
                            addr: c.framed_addr(),
                            op: "write",
                            source: io::Error::other("write failed"),
                        },
                    ));
                }
            }
        }
    }
}

// SAFETY: connections hold raw pointers into buffers of requests
// that stay alive until their completion is reported; the transport is used from one thread
// at a time (the runtime keeps it behind a mutex), so moving it between threads is sound.
unsafe impl Send for TcpTransport {}

impl Transport for TcpTransport {
    unsafe fn send(
        &mut self,
        to: Rank,
        header: &[u8; HEADER_LEN],
        body: Body,
    ) -> Result<(), TransportError> {
        let Some(link) = self
            .links
            .get_mut(to.0 as usize)
            .and_then(Option::as_mut)
            .filter(|l| !l.lost)
        else {
            return Err(TransportError::NotConnected(to));
        };
        // A small frame to a one-connection peer with nothing queued: one `send`.
        if let Some((rail, c)) = link.single_conn() {
            match c.send_small(header, body, &mut self.sent) {
                Ok(false) => {}
                Ok(true) => {
                    if c.queued > 0 {
                        self.dirty.push(to.0 as usize * RAIL_SLOTS + rail);
                    }
                    return Ok(());
                }
                Err(e) => {
                    c.broken = true;
                    let err = TransportError::LocalIo {
                        peer: to,
                        addr: c.framed_addr(),
                        op: "write",
                        source: e,
                    };
                    self.failed.push((to.0, rail, err));
                    self.sent.extend(body.owner);
                    return Ok(());
                }
            }
        }
        // The entry borrows `body` for this call (see # Safety); `Conn::push` copies what it
        // must keep without an owner.
        if self.enqueue(to.0, Entry::frame(header, body)) {
            Ok(())
        } else {
            Err(TransportError::NotConnected(to))
        }
    }

    fn progress(
        &mut self,
        sink: &mut dyn FrameSink,
        timeout: Option<Duration>,
    ) -> io::Result<bool> {
        let mut did = false;
        if std::mem::take(&mut self.recheck_all) {
            for peer in 0..self.links.len() {
                for rail in 0..self.rails.len() {
                    did |= self.read_conn(peer as u32, rail, sink);
                }
            }
        }
        self.collect_broken();
        for (peer, rail, err) in std::mem::take(&mut self.failed) {
            self.kill_conn(peer, rail, err, None, sink);
            did = true;
        }
        if !self.dirty.is_empty() {
            let mut dirty = std::mem::take(&mut self.dirty);
            dirty.sort_unstable();
            dirty.dedup();
            for t in dirty.drain(..) {
                did |= self.flush_token(t, sink);
            }
            if self.dirty.is_empty() {
                self.dirty = dirty; // keep the capacity
            }
        }
        self.polls = self.polls.wrapping_add(1);
        let poll_due = std::mem::take(&mut self.poll_due);
        if timeout == Some(Duration::ZERO)
            && !did
            && self.sent.is_empty()
            && !self.polls.is_multiple_of(16)
            && !poll_due
            && self.dirty.is_empty()
        {
            if self.direct_stale {
                self.rebuild_direct();
            }
            let always = self.direct.iter().filter(|d| d.2).count();
            if always > 0 && always <= DIRECT_POLL_MAX {
                // Busy polling with few connections: reading each socket directly costs one
                // system call, less than epoll_wait followed by the read. The poller still
                // runs every 16th call for new connections, hellos, writability, cold rails,
                // stall checks and delayed acknowledgements; no clock is read here.
                for i in 0..self.direct.len() {
                    let (peer, rail, every) = self.direct[i];
                    if !every && self.is_cold(peer, rail) {
                        continue;
                    }
                    did |= self.read_conn(peer, rail, sink);
                }
                if self.ack_urgent {
                    self.send_acks(self.last_stall_check);
                }
                for req in self.sent.drain(..) {
                    sink.on_sent(req);
                }
                return Ok(did);
            }
        }
        let now = Instant::now();
        self.check_rails(now, sink);
        let timeout = if did || !self.sent.is_empty() {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        // Wake up for delayed acknowledgements and stall checks.
        let cap = if self.ack_pending.is_empty() {
            STALL_CHECK
        } else {
            conn::ACK_DELAY
        };
        let timeout = timeout.map_or(cap, |t| t.min(cap));
        self.wait(timeout)?;
        let mut tokens = std::mem::take(&mut self.ready);
        tokens.clear();
        tokens.extend(self.events.iter().map(|e| {
            (
                e.token().0,
                // An error (a keepalive timeout, say) shows when reading.
                e.is_readable() || e.is_read_closed() || e.is_error(),
                e.is_writable(),
            )
        }));
        for &(t, readable, writable) in &tokens {
            if t >= CONNECT_BASE {
                self.connect_ready(t - CONNECT_BASE, sink);
            } else if t >= PENDING_BASE {
                self.read_hello(t - PENDING_BASE);
            } else if t >= LISTENER_BASE {
                self.accept(t - LISTENER_BASE);
            } else {
                if writable {
                    did |= self.flush_token(t, sink);
                }
                if readable {
                    did |= self.read_conn((t / RAIL_SLOTS) as u32, t % RAIL_SLOTS, sink);
                }
            }
        }
        let bare = std::mem::take(&mut self.polled);
        for (i, &(peer, rail)) in bare.iter().enumerate() {
            // Without a wait every bare connection is read; after one, those that woke it.
            let revents = self.pollfds.get(i + 1).map_or(libc::POLLIN, |p| p.revents);
            if revents & libc::POLLOUT != 0 {
                did |= self.flush_token(peer as usize * RAIL_SLOTS + rail, sink);
            }
            if revents & !libc::POLLOUT != 0 {
                did |= self.read_conn(peer, rail, sink);
            }
        }
        self.polled = bare;
        self.ready = tokens;
        for a in std::mem::take(&mut self.accepted) {
            self.accept_conn(a, sink);
            did = true;
        }
        if !self.ack_pending.is_empty() {
            let now = Instant::now();
            if self.ack_urgent || self.ack_at.is_none_or(|t| now >= t) {
                self.send_acks(now);
            }
        }
        if !self.pending.is_empty() {
            self.expire_pending();
        }
        for req in self.sent.drain(..) {
            sink.on_sent(req);
        }
        Ok(did)
    }

    fn has_pending_writes(&self) -> bool {
        self.links.iter().flatten().any(|l| {
            (!l.lost && !l.parked.is_empty())
                || l.conns.iter().flatten().any(|c| c.queued > 0 && !c.broken)
        })
    }
}

/// Index of an empty entry of `slots` (a token table), appending one when all are taken.
fn free_slot<T>(slots: &mut Vec<Option<T>>) -> usize {
    slots.iter().position(Option::is_none).unwrap_or_else(|| {
        slots.push(None);
        slots.len() - 1
    })
}

/// Whether a connection error is what a peer closing its end looks like (process exit): no
/// message for those; a dead path shows up as a stall or another error instead.
fn is_quiet(err: &TransportError) -> bool {
    match err {
        TransportError::PeerClosed { .. } => true,
        TransportError::LocalIo { source, .. } => matches!(
            source.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

/// Checks a hello; returns the peer, the rail and the generation it names.
fn check_hello(
    h: &[u8; HELLO_LEN],
    key: &JobKey,
    size: u32,
    me: Rank,
) -> Result<(Rank, usize, u16), String> {
    if &h[..8] != MAGIC {
        return Err("not a Braid hello (bad magic)".into());
    }
    if key.0 == [0; 16] || h[8..24] != key.0 {
        return Err("wrong job key".into());
    }
    let rank = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if rank >= size || rank <= me.0 {
        return Err(format!(
            "claims rank {rank}, which may not connect to rank {me}"
        ));
    }
    let rail = u16::from_le_bytes([h[28], h[29]]);
    let generation = u16::from_le_bytes([h[30], h[31]]);
    if generation >= conn::GENERATIONS {
        return Err(format!("generation {generation} out of range"));
    }
    Ok((Rank(rank), usize::from(rail), generation))
}

/// The address to connect to on `rail` of peer `peer` (TCP card `card`), and the local address
/// to bind.
fn pick_addr(
    rails: &[Rail],
    peer: Rank,
    card: &str,
    same_host: bool,
    rail: usize,
) -> Result<(SocketAddr, IpAddr), WireUpError> {
    let bad = || WireUpError::BadCard {
        peer,
        rail,
        card: card.into(),
    };
    let part = card.split(',').nth(rail).ok_or_else(bad)?;
    let (addrs, port) = part.rsplit_once('@').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let addrs: Vec<IpAddr> = addrs.split(';').filter_map(|a| a.parse().ok()).collect();
    let local = rails.get(rail).map(|r| r.addr).ok_or_else(bad)?;
    let chosen = if local.is_unspecified() {
        addrs
            .iter()
            .find(|a| a.is_loopback() == same_host)
            .or(addrs.first())
            .copied()
    } else {
        addrs.first().copied()
    };
    Ok((SocketAddr::new(chosen.ok_or_else(bad)?, port), local))
}

fn connect(addr: SocketAddr, local: IpAddr, deadline: Instant) -> io::Result<Socket> {
    let mut last = io::Error::new(io::ErrorKind::TimedOut, "connect deadline passed");
    // The peer may still be starting: retry refused connections until the deadline.
    while Instant::now() < deadline {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if !local.is_unspecified() {
            s.bind(&SocketAddr::new(local, 0).into())?;
        }
        s.set_nodelay(true)?;
        let left = deadline.saturating_duration_since(Instant::now());
        match s.connect_timeout(&addr.into(), left.max(Duration::from_millis(1))) {
            Ok(()) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                last = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

impl crate::stream::ByteStream for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        Write::write_vectored(self, bufs)
    }
}
