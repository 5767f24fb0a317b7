//! The TCP transport: one authenticated connection per peer pair over one rail, non-blocking
//! sockets driven by mio.
//!
//! # Wire-up
//! Every rank listens on each rail and publishes the listening addresses in its business
//! card. A rank connects to every lower rank and accepts connections from every higher one.
//! A new connection starts with a 32-byte hello: the magic `BRAIDv01`, the 16-byte job key,
//! the sender's rank (u32 LE), the rail (u16 LE) and two zero bytes. A connection with a wrong
//! magic, key or rank is closed with a warning; the listener stays open for the whole job,
//! so a stray connection can arrive at any time and is always refused.
//!
//! # Implementation notes
//! Reads go through a staging buffer, so one `read` call can carry many small frames;
//! a large payload that a receive is waiting for is read straight into the receive buffer.
//! Writes use `writev` of header and body; what the socket does not take at once is queued:
//! small bodies are copied, large ones stay borrowed from the send request until written.

use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use braid_engine::{Rank, ReqId};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::rail::{Rail, RailError, published_addrs};
use crate::stream::{ByteStream, FramedConn};
use crate::{Body, FrameSink, HEADER_LEN, JobKey, Transport, TransportError};

const MAGIC: &[u8; 8] = b"BRAIDv01";
const HELLO_LEN: usize = 32;
const STAGING: usize = 256 * 1024;
/// How long an accepted connection may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const LISTENER_BASE: usize = 1 << 30;
const PENDING_BASE: usize = 1 << 31;

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
    /// The peer's TCP card as published (see [`TcpTransport::card`]).
    pub card: String,
}

struct Pending {
    stream: TcpStream,
    addr: SocketAddr,
    hello: [u8; HELLO_LEN],
    got: usize,
    since: Instant,
}

/// The TCP transport of one rank.
pub struct TcpTransport {
    rank: Rank,
    size: u32,
    /// The job key; all zero (accepting nothing) until wire-up sets it.
    key: JobKey,
    rails: Vec<Rail>,
    poll: Poll,
    events: Events,
    listeners: Vec<TcpListener>,
    /// Listening port per rail.
    ports: Vec<u16>,
    /// Connection per peer rank (index); `None` for self and unconnected peers.
    conns: Vec<Option<FramedConn<TcpStream>>>,
    /// Accepted connections that have not sent their hello yet, by slot.
    pending: Vec<Option<Pending>>,
    /// Requests whose borrowed bodies were fully written since the last progress call.
    sent: Vec<ReqId>,
    /// Connections that failed inside `send`, reported at the next progress call.
    failed: Vec<(Rank, TransportError)>,
    /// Conn indices with queued output.
    dirty: Vec<usize>,
    staging: Vec<u8>,
    /// Read every connection at the next progress call (set during wire-up).
    recheck_all: bool,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("rank", &self.rank)
            .field("rails", &self.rails)
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
        Ok(Self {
            rank,
            size,
            key: JobKey([0; 16]),
            rails,
            poll,
            events: Events::with_capacity(256),
            listeners,
            ports,
            conns: (0..size).map(|_| None).collect(),
            pending: Vec::new(),
            sent: Vec::new(),
            failed: Vec::new(),
            dirty: Vec::new(),
            staging: vec![0u8; STAGING],
            recheck_all: true,
        })
    }

    /// The business-card text: per rail `addr;addr;...@port`, rails separated by `,`.
    ///
    /// # Errors
    /// Listing interfaces failed.
    pub fn card(&self) -> Result<String, WireUpError> {
        let mut parts = Vec::new();
        for (rail, port) in self.rails.iter().zip(&self.ports) {
            let addrs: Vec<String> = published_addrs(rail)?.iter().map(ToString::to_string).collect();
            parts.push(format!("{}@{port}", addrs.join(";")));
        }
        Ok(parts.join(","))
    }

    /// The rails in use.
    pub fn rails(&self) -> &[Rail] {
        &self.rails
    }

    /// Connects to every lower rank of `peers` and accepts a connection from every higher
    /// one, within `timeout`. From now on every connection must present `key`.
    ///
    /// # Errors
    /// [`WireUpError`] naming the peer, address or missing ranks.
    pub fn wire_up(
        &mut self,
        key: JobKey,
        peers: &[PeerCard],
        timeout: Duration,
    ) -> Result<(), WireUpError> {
        self.key = key;
        let deadline = Instant::now() + timeout;
        let me = self.rank;
        for p in peers.iter().filter(|p| p.rank < me) {
            let (addr, local) = self.pick_addr(p, 0)?;
            let stream = connect(addr, local, deadline).map_err(|e| WireUpError::Connect {
                peer: p.rank,
                addr,
                local,
                source: e,
            })?;
            let mut hello = [0u8; HELLO_LEN];
            hello[..8].copy_from_slice(MAGIC);
            hello[8..24].copy_from_slice(&self.key.0);
            hello[24..28].copy_from_slice(&self.rank.0.to_le_bytes());
            let mut std_stream: std::net::TcpStream = stream.into();
            std_stream
                .write_all(&hello)
                .and_then(|()| std_stream.set_nonblocking(true))
                .map_err(|e| WireUpError::Connect {
                    peer: p.rank,
                    addr,
                    local,
                    source: e,
                })?;
            self.add_conn(p.rank, TcpStream::from_std(std_stream), addr.to_string())
                .map_err(WireUpError::Poll)?;
        }
        loop {
            let missing: Vec<u32> = peers
                .iter()
                .map(|p| p.rank.0)
                .filter(|r| *r > me.0 && self.conns[*r as usize].is_none())
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
            if t >= PENDING_BASE {
                self.read_hello(t - PENDING_BASE);
            } else if t >= LISTENER_BASE {
                self.accept(t - LISTENER_BASE);
            }
        }
        self.expire_pending();
        Ok(())
    }

    fn pick_addr(&self, p: &PeerCard, rail: usize) -> Result<(SocketAddr, IpAddr), WireUpError> {
        let bad = || WireUpError::BadCard {
            peer: p.rank,
            rail,
            card: p.card.clone(),
        };
        let part = p.card.split(',').nth(rail).ok_or_else(bad)?;
        let (addrs, port) = part.rsplit_once('@').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let addrs: Vec<IpAddr> = addrs.split(';').filter_map(|a| a.parse().ok()).collect();
        let local = self.rails.get(rail).map(|r| r.addr).ok_or_else(bad)?;
        let chosen = if local.is_unspecified() {
            addrs
                .iter()
                .find(|a| a.is_loopback() == p.same_host)
                .or(addrs.first())
                .copied()
        } else {
            addrs.first().copied()
        };
        Ok((SocketAddr::new(chosen.ok_or_else(bad)?, port), local))
    }

    fn add_conn(&mut self, peer: Rank, mut stream: TcpStream, addr: String) -> io::Result<()> {
        let i = peer.0 as usize;
        self.poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.conns[i] = Some(FramedConn::new(peer, addr, stream));
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
            let slot = self.pending.iter().position(Option::is_none).unwrap_or_else(|| {
                self.pending.push(None);
                self.pending.len() - 1
            });
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
        let verdict: Option<Result<Rank, String>> = loop {
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
        match verdict {
            Ok(peer) if self.conns[peer.0 as usize].is_none() => {
                if let Err(e) = self.add_conn(peer, p.stream, p.addr.to_string()) {
                    eprintln!("braid: rank {}: cannot register rank {peer}: {e}", self.rank);
                }
            }
            Ok(peer) => eprintln!(
                "braid: rank {}: refused a second connection claiming rank {peer} from {}",
                self.rank, p.addr
            ),
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

    fn fail(&mut self, i: usize, sink: &mut dyn FrameSink, err: TransportError) {
        if let Some(mut c) = self.conns[i].take() {
            let _ = self.poll.registry().deregister(c.stream_mut());
            // Queued bodies will never be written: give their buffers back.
            self.sent.extend(c.borrowed_requests());
            sink.on_peer_lost(c.peer(), err);
        }
    }

    /// Reads everything available on connection `i`. Returns whether bytes were read.
    fn read_conn(&mut self, i: usize, sink: &mut dyn FrameSink) -> bool {
        let Some(c) = self.conns[i].as_mut() else {
            return false;
        };
        match c.read_all(&mut self.staging, sink, true) {
            Ok(did) => did,
            Err(e) => {
                self.fail(i, sink, e);
                true
            }
        }
    }

    fn flush(&mut self, i: usize) -> Result<bool, TransportError> {
        match self.conns[i].as_mut() {
            Some(c) => c.flush(&mut self.sent),
            None => Ok(false),
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
        let i = to.0 as usize;
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else {
            return Err(TransportError::NotConnected(to));
        };
        // SAFETY: forwarded from the caller (see # Safety).
        let res = unsafe { c.send(header, body, &mut self.sent) };
        if let Err(e) = res {
            if let Some(mut c) = self.conns[i].take() {
                let _ = self.poll.registry().deregister(c.stream_mut());
                self.sent.extend(c.borrowed_requests());
            }
            return Err(e);
        }
        if self.conns[i].as_ref().is_some_and(FramedConn::has_pending_writes) {
            self.dirty.push(i);
        }
        Ok(())
    }

    fn progress(
        &mut self,
        sink: &mut dyn FrameSink,
        timeout: Option<Duration>,
    ) -> io::Result<bool> {
        let mut did = false;
        if std::mem::take(&mut self.recheck_all) {
            for i in 0..self.conns.len() {
                did |= self.read_conn(i, sink);
            }
        }
        for (peer, err) in std::mem::take(&mut self.failed) {
            sink.on_peer_lost(peer, err);
        }
        let dirty = std::mem::take(&mut self.dirty);
        for i in dirty {
            match self.flush(i) {
                Ok(d) => did |= d,
                Err(e) => self.fail(i, sink, e),
            }
            if self.conns[i].as_ref().is_some_and(FramedConn::has_pending_writes) {
                self.dirty.push(i);
            }
        }
        self.dirty.sort_unstable();
        self.dirty.dedup();
        let timeout = if did || !self.sent.is_empty() {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let tokens: Vec<(usize, bool, bool)> = self
            .events
            .iter()
            .map(|e| (e.token().0, e.is_readable() || e.is_read_closed(), e.is_writable()))
            .collect();
        for (t, readable, writable) in tokens {
            if t >= PENDING_BASE {
                self.read_hello(t - PENDING_BASE);
            } else if t >= LISTENER_BASE {
                self.accept(t - LISTENER_BASE);
            } else {
                if writable {
                    match self.flush(t) {
                        Ok(d) => did |= d,
                        Err(e) => self.fail(t, sink, e),
                    }
                }
                if readable {
                    did |= self.read_conn(t, sink);
                }
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
        self.conns.iter().flatten().any(FramedConn::has_pending_writes)
    }
}

fn check_hello(h: &[u8; HELLO_LEN], key: &JobKey, size: u32, me: Rank) -> Result<Rank, String> {
    if &h[..8] != MAGIC {
        return Err("not a Braid hello (bad magic)".into());
    }
    if key.0 == [0; 16] || h[8..24] != key.0 {
        return Err("wrong job key".into());
    }
    let rank = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if rank >= size || rank <= me.0 {
        return Err(format!("claims rank {rank}, which may not connect to rank {me}"));
    }
    Ok(Rank(rank))
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

impl ByteStream for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Write::write_vectored(self, bufs)
    }
}
