//! Connections made after wire-up: failover of a pair that lost its last connection, and
//! re-adoption of a `stripe` or `weighted` rail that came back up.
//!
//! # One mechanism
//! Every pair has a *rail set* ([`super::Link::rails`]): the rails it is wired on, then its
//! fallbacks ([`crate::rail::RailMode::fallback_rails`]). A connection of the pair can be
//! made on any rail of the set at any time, by the same rule as at wire-up: the higher rank
//! connects and names the rail and a generation in its hello; the lower rank accepts what the
//! hello names if it is a rail of the set and a generation above every earlier one of the pair
//! there, and adopts it ([`TcpTransport::adopt`]). Both ends therefore always agree on the
//! connections of a pair. What a new connection is for follows from the pair's state:
//! - The pair has no live connection ([`super::Link::failover`] is set): the new connection
//!   ends the failover. In `single` and `indep` its rail moves to the front of the set on both
//!   ends, so all frames take it. The frames sent meanwhile ([`super::Link::parked`]), led by
//!   the LOST frame of the dead connection, go out on it, and the LOST exchange resends what
//!   the dead connection had not delivered (see the `conn` module).
//! - Otherwise (`stripe`, `weighted`) it re-adopts a rail of the set that had died.
//!
//! An accepted connection on a rail where the pair still has one (of an older generation)
//! replaces it: the higher rank connects on a rail only after dropping its connection there.
//!
//! # Bounds
//! The higher rank tries the rails of the set in order, skipping the ones whose interface
//! here is down and the ones that failed since the pair lost its last connection; each attempt
//! is bounded by the connect timeout (the stall timeout, at least 0.5 s). The lower rank waits
//! at most [`TcpTransport::failover_wait`], and gives up at once when every rail of the set is
//! down here. Either side then reports the peer lost with
//! [`TransportError::NoRailLeft`], naming host, rails and the last failure.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use braid_engine::Rank;
use mio::net::TcpStream;
use mio::{Interest, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::{
    Accepted, CONNECT_BASE, Connecting, Failover, HELLO_LEN, KEEPALIVE_PROBES, READOPT_EVERY,
    STALL_CHECK, TcpTransport, conn, pick_addr,
};
use crate::{FrameSink, TransportError};

impl TcpTransport {
    /// How long the lower rank of a pair that lost its last connection waits for the higher
    /// rank to connect on another rail before it reports the peer lost: the longest the higher
    /// rank takes to notice (the stall timeout; or, idle, keepalive: the stall timeout of
    /// silence, then [`KEEPALIVE_PROBES`] probes a second apart), plus one connect timeout per
    /// rail, plus 2 s.
    pub fn failover_wait(&self) -> Duration {
        let notice = self.cfg.stall_timeout.max(Duration::from_secs(1))
            + Duration::from_secs(KEEPALIVE_PROBES.into())
            + STALL_CHECK;
        let nrails = u32::try_from(self.rails.len()).unwrap_or(u32::MAX);
        notice
            .saturating_add(self.connect_timeout().saturating_mul(nrails))
            .saturating_add(Duration::from_secs(2))
    }

    /// Longest a connection attempt after wire-up may take.
    fn connect_timeout(&self) -> Duration {
        self.cfg.stall_timeout.max(Duration::from_millis(500))
    }

    /// The pair of `peer` lost its last connection, on `rail`, to `err`: it fails over. The
    /// higher rank connects on the next rail of the set; the lower rank waits for that.
    pub(super) fn start_failover(
        &mut self,
        peer: u32,
        rail: usize,
        err: TransportError,
        quiet: bool,
        sink: &mut dyn FrameSink,
    ) {
        let Some(link) = self.links.get_mut(peer as usize).and_then(Option::as_mut) else {
            return;
        };
        let why = short(&err);
        match &mut link.failover {
            Some(f) => {
                f.failed.push((rail, why));
                f.cause = err;
            }
            None => {
                link.failover = Some(Failover {
                    since: Instant::now(),
                    failed: vec![(rail, why)],
                    cause: err,
                    quiet,
                });
            }
        }
        let busy = self.connecting.iter().flatten().any(|c| c.peer == peer);
        if peer < self.rank.0 && !busy {
            self.failover_next(peer, sink);
        }
    }

    /// Connects on the next rail of the set that has not failed and whose interface here is
    /// up; with none left, gives up.
    fn failover_next(&mut self, peer: u32, sink: &mut dyn FrameSink) {
        let down = self.links_down();
        loop {
            let Some(link) = self.links.get_mut(peer as usize).and_then(Option::as_mut) else {
                return;
            };
            let super::Link {
                rails,
                conns,
                failover,
                ..
            } = link;
            let Some(f) = failover.as_mut() else {
                return;
            };
            let mut pick = None;
            for &r in rails.iter() {
                if conns[r].is_some() || f.failed.iter().any(|(x, _)| *x == r) {
                    continue;
                }
                if down.contains(&r) {
                    f.failed.push((r, "interface down on this host".into()));
                    continue;
                }
                pick = Some(r);
                break;
            }
            let Some(rail) = pick else {
                self.give_up(peer, None, sink);
                return;
            };
            match self.start_connect(peer, rail) {
                Ok(()) => return,
                Err(why) => {
                    if let Some(f) = self
                        .links
                        .get_mut(peer as usize)
                        .and_then(Option::as_mut)
                        .and_then(|l| l.failover.as_mut())
                    {
                        f.failed.push((rail, why));
                    }
                }
            }
        }
    }

    /// Starts a non-blocking connection to `peer` on `rail`, with the pair's next generation
    /// there.
    ///
    /// # Errors
    /// Why the attempt could not start.
    fn start_connect(&mut self, peer: u32, rail: usize) -> Result<(), String> {
        let link = self
            .links
            .get(peer as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("rank {peer} is not a TCP peer"))?;
        // The generation counts as used once the hello is written (`connect_ready`): an attempt
        // that never reached the peer does not use one up.
        let generation = link.next_gen[rail];
        if conn::lane(rail, generation).is_none() {
            return Err(format!("no connection generation left on rail {rail}"));
        }
        let (addr, local) = pick_addr(&self.rails, Rank(peer), &link.card, link.same_host, rail)
            .map_err(|e| e.to_string())?;
        let open = || -> io::Result<Socket> {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            s.set_nonblocking(true)?;
            if !local.is_unspecified() {
                s.bind(&SocketAddr::new(local, 0).into())?;
            }
            s.set_nodelay(true)?;
            match s.connect(&addr.into()) {
                Ok(()) => Ok(s),
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
                Err(e) => Err(e),
            }
        };
        let sock = open().map_err(|e| format!("connect to {addr}: {e}"))?;
        let mut stream = TcpStream::from_std(sock.into());
        let slot = super::free_slot(&mut self.connecting);
        self.poll
            .registry()
            .register(&mut stream, Token(CONNECT_BASE + slot), Interest::WRITABLE)
            .map_err(|e| format!("register a connection to {addr}: {e}"))?;
        self.connecting[slot] = Some(Connecting {
            peer,
            rail,
            generation,
            stream,
            addr,
            local,
            since: Instant::now(),
        });
        Ok(())
    }

    /// The poller reported connection attempt `slot`: when connected, sends the hello and
    /// adopts the connection; when failed, moves on.
    pub(super) fn connect_ready(&mut self, slot: usize, sink: &mut dyn FrameSink) {
        let Some(c) = self.connecting.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let state = match c.stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match c.stream.peer_addr() {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                Err(e) => Err(e),
            },
        };
        if matches!(state, Ok(false)) {
            return; // still connecting
        }
        let Some(mut c) = self.connecting[slot].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        let hello = self.hello(c.rail, c.generation);
        // A fresh connection's send buffer takes the 32 bytes at once.
        let sent = state.and_then(|_| {
            let mut off = 0;
            while off < HELLO_LEN {
                match Write::write(&mut c.stream, &hello[off..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => off += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        if let Err(e) = sent {
            let why = format!("connect to {}: {e}", c.addr);
            self.connect_failed(c.peer, c.rail, why, sink);
            return;
        }
        let Some(link) = self.links.get_mut(c.peer as usize).and_then(Option::as_mut) else {
            return;
        };
        link.next_gen[c.rail] = c.generation.saturating_add(1);
        if link.lost || link.conns[c.rail].is_some() {
            return; // dropped: the peer sees it close
        }
        let local = c.stream.local_addr().map_or(c.local, |a| a.ip());
        match self.add_conn(Rank(c.peer), c.rail, c.generation, c.stream, local, c.addr) {
            Ok(()) => self.adopt(c.peer, c.rail),
            Err(e) => self.connect_failed(c.peer, c.rail, format!("register: {e}"), sink),
        }
    }

    /// A connection attempt to `peer` on `rail` failed: the failover tries the next rail; a
    /// re-adoption waits for its next turn.
    fn connect_failed(&mut self, peer: u32, rail: usize, why: String, sink: &mut dyn FrameSink) {
        let me = self.rank;
        let name = self.rails.get(rail).map_or("?", |r| r.name.as_str());
        let Some(link) = self.links.get_mut(peer as usize).and_then(Option::as_mut) else {
            return;
        };
        if link.lost {
            return;
        }
        match link.failover.as_mut() {
            Some(f) => {
                if !f.quiet {
                    eprintln!(
                        "braid: rank {me}: failover to rank {peer} on host {} over rail {name} \
                         failed: {why}",
                        link.host
                    );
                }
                f.failed.push((rail, why));
                self.failover_next(peer, sink);
            }
            None => link.readopt_at[rail] = Some(Instant::now() + READOPT_EVERY),
        }
    }

    /// The pair of `peer` has no rail left: reports the peer lost, naming host, the rails that
    /// failed and the last failure. `waited`: why the lower rank stopped waiting.
    fn give_up(&mut self, peer: u32, waited: Option<String>, sink: &mut dyn FrameSink) {
        let Some(link) = self.links.get_mut(peer as usize).and_then(Option::as_mut) else {
            return;
        };
        let Some(f) = link.failover.take() else {
            return;
        };
        let tried: Vec<String> = f
            .failed
            .iter()
            .map(|(r, why)| {
                let name = self.rails.get(*r).map_or("?", |x| x.name.as_str());
                format!("rail {name} ({why})")
            })
            .collect();
        let mut why = format!("lost {}", tried.join(", "));
        if let Some(w) = waited {
            why = format!("{why}; {w}");
        }
        let err = TransportError::NoRailLeft {
            peer: Rank(peer),
            host: link.host.clone(),
            why,
            last: Box::new(f.cause),
        };
        if !f.quiet {
            eprintln!("braid: rank {}: {err}", self.rank);
        }
        self.lose_peer(peer, err, sink);
    }

    /// Periodic work (every stall check): connection attempts past their time, lower ranks
    /// that waited long enough, and re-adoption of dead rails (`stripe`, `weighted`). `down`:
    /// the rails whose interface here is down.
    pub(super) fn check_failovers(
        &mut self,
        now: Instant,
        down: &[usize],
        sink: &mut dyn FrameSink,
    ) {
        let limit = self.connect_timeout();
        for slot in 0..self.connecting.len() {
            let late = self.connecting[slot]
                .as_ref()
                .is_some_and(|c| now.duration_since(c.since) >= limit);
            if late && let Some(mut c) = self.connecting[slot].take() {
                let _ = self.poll.registry().deregister(&mut c.stream);
                let why = format!(
                    "connect to {}: no answer within {:.1} s",
                    c.addr,
                    limit.as_secs_f64()
                );
                self.connect_failed(c.peer, c.rail, why, sink);
            }
        }
        let me = self.rank.0;
        let wait = self.failover_wait();
        let mut expired = Vec::new();
        for (peer, link) in self.links.iter().enumerate() {
            let Some(l) = link.as_ref().filter(|l| !l.lost) else {
                continue;
            };
            let Some(f) = l.failover.as_ref() else {
                continue;
            };
            let peer = u32::try_from(peer).unwrap_or(u32::MAX);
            if peer <= me {
                continue; // the higher rank moves on by its attempts
            }
            if now.duration_since(f.since) >= wait {
                expired.push((
                    peer,
                    format!(
                        "rank {peer} did not connect on another rail within {:.1} s",
                        wait.as_secs_f64()
                    ),
                ));
            } else if l.rails.iter().all(|r| down.contains(r)) {
                expired.push((peer, "every rail of the pair is down on this host".into()));
            }
        }
        for (peer, why) in expired {
            self.give_up(peer, Some(why), sink);
        }
        if self.cfg.mode.is_multi() && now.duration_since(self.last_readopt) >= READOPT_EVERY {
            self.last_readopt = now;
            self.readopt(now, down);
        }
    }

    /// Tries to reconnect every dead rail of the pairs this rank connects (`stripe`,
    /// `weighted`) whose interface here is up, at most once per [`READOPT_EVERY`] per rail.
    fn readopt(&mut self, now: Instant, down: &[usize]) {
        let me = self.rank.0;
        let mut todo = Vec::new();
        for (peer, link) in self.links.iter_mut().enumerate() {
            let Some(l) = link
                .as_mut()
                .filter(|l| l.reliable && !l.lost && l.failover.is_none())
            else {
                continue;
            };
            let peer = u32::try_from(peer).unwrap_or(u32::MAX);
            if peer >= me {
                continue;
            }
            for &r in &l.wired {
                let due = l.readopt_at[r].is_none_or(|t| now >= t);
                if l.conns[r].is_none() && due && !down.contains(&r) {
                    l.readopt_at[r] = Some(now + READOPT_EVERY);
                    todo.push((peer, r));
                }
            }
        }
        for (peer, rail) in todo {
            let busy = self
                .connecting
                .iter()
                .flatten()
                .any(|c| c.peer == peer && c.rail == rail);
            if !busy {
                // A failed start waits for the next turn like a failed attempt.
                let _ = self.start_connect(peer, rail);
            }
        }
    }

    /// Adds a connection whose hello passed (after wire-up), replacing the pair's older one on
    /// that rail, and adopts it.
    pub(super) fn accept_conn(&mut self, a: Accepted, sink: &mut dyn FrameSink) {
        let (peer, rail) = (a.peer.0, a.rail);
        let replaced = self
            .links
            .get(peer as usize)
            .and_then(Option::as_ref)
            .is_some_and(|l| !l.lost && l.conns[rail].is_some());
        if replaced {
            // The peer dropped its end (it connects on a rail only then): take what arrived on
            // ours and drop it too, quietly; its LOST frame follows.
            self.read_conn(peer, rail, sink);
            let addr = self
                .links
                .get(peer as usize)
                .and_then(Option::as_ref)
                .and_then(|l| l.conns[rail].as_ref())
                .map(super::Conn::framed_addr);
            if let Some(addr) = addr {
                let err = TransportError::LocalIo {
                    peer: a.peer,
                    addr,
                    op: "read",
                    source: io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("rank {peer} replaced the connection"),
                    ),
                };
                self.kill_conn(peer, rail, err, None, sink);
            }
        }
        let usable = self
            .links
            .get(peer as usize)
            .and_then(Option::as_ref)
            .is_some_and(|l| !l.lost && l.conns[rail].is_none());
        if !usable {
            return;
        }
        match self.add_conn(a.peer, rail, a.generation, a.stream, a.local, a.remote) {
            Ok(()) => self.adopt(peer, rail),
            Err(e) => eprintln!(
                "braid: rank {}: cannot register rank {peer}: {e}",
                self.rank
            ),
        }
    }

    /// A connection made after wire-up on `rail` of `peer` is in place (on either end): it ends
    /// a failover (in `single` and `indep` becoming the pair's rail) or re-adopts the rail,
    /// and takes the frames that waited.
    fn adopt(&mut self, peer: u32, rail: usize) {
        let me = self.rank;
        let multi = self.cfg.mode.is_multi();
        let Some(link) = self.links.get_mut(peer as usize).and_then(Option::as_mut) else {
            return;
        };
        let failover = link.failover.take();
        if !multi {
            link.rails.retain(|r| *r != rail);
            link.rails.insert(0, rail);
        }
        let (name, path) = link.conns[rail]
            .as_ref()
            .map(|c| (c.rail_name.clone(), c.path.clone()))
            .unwrap_or_default();
        match failover {
            Some(f) if !f.quiet => {
                let lost: Vec<&str> = f
                    .failed
                    .iter()
                    .map(|(r, _)| self.rails.get(*r).map_or("?", |x| x.name.as_str()))
                    .collect();
                eprintln!(
                    "braid: rank {me} failed over to rail {name} ({path}) for rank {peer} on \
                     host {} after losing rail(s) {}",
                    link.host,
                    lost.join(", ")
                );
            }
            Some(_) => {}
            None if multi => eprintln!(
                "braid: rank {me} re-adopted rail {name} ({path}) to rank {peer} on host {}",
                link.host
            ),
            None => eprintln!(
                "braid: rank {me}: rank {peer} on host {} moved the pair to rail {name} ({path})",
                link.host
            ),
        }
        let parked = std::mem::take(&mut link.parked);
        // Bytes may have come with the hello, before the connection was registered.
        self.recheck_all = true;
        for e in parked {
            self.enqueue(peer, e);
        }
    }
}

/// The gist of a connection failure, for the list of failed rails.
fn short(err: &TransportError) -> String {
    match err {
        TransportError::LocalIo { op, source, .. } => format!("{op}: {source}"),
        TransportError::PeerClosed { .. } => "closed by the peer".into(),
        other => other.to_string(),
    }
}
