//! One TCP connection of the transport: its send queue (and, on a peer reached over several
//! rails, the history of frames not yet acknowledged), its receive-side bookkeeping, and the
//! transport's own control frames.
//!
//! # Reliable connections
//! A peer reached over more than one rail must survive the loss of a rail without losing
//! a frame, so its connections are *reliable*: every frame they carry (a *tracked* frame)
//! has a position on its connection (0, 1, 2, ... in write order), the receiver acknowledges
//! positions cumulatively ([`KIND_ACK`]), and the sender keeps each frame (a copy of a small
//! body, inside the queue entry up to 64 bytes; a borrowed large body, whose send request is
//! reported done only then) until it is acknowledged. An acknowledgement goes alone after
//! [`ACK_EVERY`] frames, a data chunk, or [`ACK_DELAY`]; but once [`PIGGYBACK_AT`] frames are
//! owed, the next frame to the peer carries it in the same `writev`, so two-way traffic
//! (ping-pong) never sends one alone. When a connection dies, each side tells the other how
//! many frames of it it received ([`KIND_LOST`], itself tracked) and the other resends the
//! rest, whole, on the remaining or replacement connections, each behind a [`KIND_RESEND`] tag
//! naming the frame's original identity (lane, position). A frame whose payload was partly
//! placed when its connection died is finished by its resend into the same destination, so
//! the engine sees every frame exactly once.
//!
//! # Lanes
//! A connection is named on the wire by its *lane*: its rail plus [`RAIL_SLOTS`] times its
//! generation on that rail (0 for the connection of wire-up, one more for each later
//! connection of the pair on the rail, see [`lane`]). A rail can thus carry a pair twice (a
//! rail re-adopted after it came back up) without the positions of the two connections
//! being confused.
//!
//! A peer that can only ever use one rail (mode `single`, or any mode with one rail) has
//! nothing to fail over to: its connection keeps no history and sends no control frames.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use braid_engine::{FrameToken, Rank, ReqId};
use mio::net::TcpStream;

use super::{RAIL_SLOTS, sys};
use crate::stream::{COPY_LIMIT, FramedConn, ReadMode};
use crate::{Body, Dest, FrameSink, HEADER_LEN, TransportError};

// Control kinds stay below the compact-header bit (0x80) and outside the engine's kinds, so
// the framing reads them as full headers and the engine would reject them.

/// Control frame, untracked: "I have received `pos` tracked frames of lane `lane`".
pub(crate) const KIND_ACK: u8 = 0x41;
/// Control frame, tracked: "lane `lane` is dead; I received `pos` of its tracked frames".
pub(crate) const KIND_LOST: u8 = 0x42;
/// Tag in front of a resent frame: "the next frame is frame `pos` of lane `lane`".
pub(crate) const KIND_RESEND: u8 = 0x43;
/// Token of control frames (they never reach the engine).
const CONTROL_TOKEN: FrameToken = FrameToken(u64::MAX);
/// Most frames gathered into one `writev`.
const GATHER: usize = 16;
/// Unacknowledged received frames that trigger an acknowledgement.
const ACK_EVERY: u64 = 32;
/// Longest an acknowledgement waits.
pub(crate) const ACK_DELAY: Duration = Duration::from_millis(2);
/// A connection is "backlogged" for rate sampling above this many queued bytes.
const BACKLOGGED: usize = 64 * 1024;
/// Least interval between two drain-rate samples.
const RATE_INTERVAL: Duration = Duration::from_millis(20);
/// Assumed drain rate before the first measurement (bytes/s, ~ GigE).
pub(crate) const DEFAULT_RATE: f64 = 110e6;
/// Bodies at most this long are kept inside their queue entry when they must be copied (no
/// allocation on the small-message path).
const INLINE_MAX: usize = 64;
/// Bodies at most this long go out through [`Conn::send_small`]: header and body copied into
/// one buffer, one `send` instead of a `writev` of two (up to 1 KiB the copy is cheap next to
/// the system call).
pub(crate) const SMALL_SEND: usize = 1024;
/// Unacknowledged received frames from which an outgoing frame to the peer carries the
/// acknowledgements along (in the same `writev`), before [`ACK_EVERY`] would send one alone.
pub(crate) const PIGGYBACK_AT: u64 = ACK_EVERY / 2;

/// Identity of a tracked frame: the lane it was first queued on and its position there.
pub(crate) type Ident = (u16, u64);

/// Generations a rail can have for one pair (lanes must fit in 16 bits).
pub(crate) const GENERATIONS: u16 = (u16::MAX as usize / RAIL_SLOTS) as u16;

/// The lane of generation `generation` on `rail`; `None` when the rail is out of
/// generations (or not a rail slot).
pub(crate) fn lane(rail: usize, generation: u16) -> Option<u16> {
    if rail >= RAIL_SLOTS || generation >= GENERATIONS {
        return None;
    }
    u16::try_from(usize::from(generation) * RAIL_SLOTS + rail).ok()
}

/// The rail of a lane.
pub(crate) fn rail_of(lane: u16) -> usize {
    usize::from(lane) % RAIL_SLOTS
}

/// Encodes a control frame header (payload-free).
pub(crate) fn control_header(kind: u8, me: Rank, lane: u16, pos: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind;
    h[4..8].copy_from_slice(&u32::from(lane).to_le_bytes());
    h[8..12].copy_from_slice(&me.0.to_le_bytes());
    h[48..56].copy_from_slice(&pos.to_le_bytes());
    h
}

fn control_fields(h: &[u8; HEADER_LEN]) -> (u32, u64, u64) {
    let mut r = [0u8; 4];
    r.copy_from_slice(&h[4..8]);
    let mut p = [0u8; 8];
    p.copy_from_slice(&h[48..56]);
    let mut l = [0u8; 8];
    l.copy_from_slice(&h[56..64]);
    (
        u32::from_le_bytes(r),
        u64::from_le_bytes(p),
        u64::from_le_bytes(l),
    )
}

/// What a control frame told us, handled by the transport after the read.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Event {
    /// The peer received `pos` tracked frames of our connection `lane`.
    Ack { lane: u16, pos: u64 },
    /// The peer dropped connection `lane`; it received `pos` of our tracked frames there.
    Lost { lane: u16, pos: u64 },
}

/// Where the payload of a frame goes, kept so a resend can finish it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Saved {
    token: FrameToken,
    ptr: *mut u8,
    take: usize,
    skip: usize,
}

impl Saved {
    fn of(d: &Dest) -> Self {
        Self {
            token: d.token,
            ptr: d.ptr,
            take: d.take,
            skip: d.skip,
        }
    }

    fn dest(self) -> Dest {
        Dest {
            token: self.token,
            ptr: self.ptr,
            take: self.take,
            skip: self.skip,
        }
    }
}

#[derive(Debug)]
enum Payload {
    /// A copy of a body of at most [`INLINE_MAX`] bytes.
    Inline {
        buf: [u8; INLINE_MAX],
        len: u8,
    },
    Owned(Vec<u8>),
    /// Borrowed from a send request (`req`), or from the caller of `send` for the duration of
    /// the call (`req == None`; copied before the call returns).
    Borrowed {
        ptr: *const u8,
        len: usize,
        req: Option<ReqId>,
    },
}

/// One frame in a send queue.
#[derive(Debug)]
pub(crate) struct Entry {
    /// A [`KIND_RESEND`] tag written in front of the header, for a resent frame.
    tag: Option<[u8; HEADER_LEN]>,
    /// Original identity of a resent frame.
    resend_of: Option<Ident>,
    /// Position on this connection; `None` for untracked frames (acknowledgements) and on
    /// unreliable connections.
    pos: Option<u64>,
    /// Whether the frame counts as tracked (everything but acknowledgements).
    tracked: bool,
    header: [u8; HEADER_LEN],
    /// Header bytes on the wire (full, or compact for a compact eager header).
    hlen: usize,
    body: Payload,
}

impl Entry {
    /// A frame of the engine (or a [`KIND_LOST`]); `body.ptr` must stay valid until the entry
    /// is settled by [`Conn::push`] (or, with an owner, until released).
    pub(crate) fn frame(header: &[u8; HEADER_LEN], body: Body) -> Self {
        Self {
            tag: None,
            resend_of: None,
            pos: None,
            tracked: true,
            header: *header,
            hlen: braid_engine::wire::header_len(header[0]),
            body: Payload::Borrowed {
                ptr: body.ptr,
                len: body.len,
                req: body.owner,
            },
        }
    }

    /// Bytes already encoded (the unwritten rest of a frame), owned.
    fn raw(bytes: &[u8]) -> Self {
        let body = match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= INLINE_MAX => {
                let mut buf = [0; INLINE_MAX];
                buf[..bytes.len()].copy_from_slice(bytes);
                Payload::Inline { buf, len }
            }
            _ => Payload::Owned(bytes.to_vec()),
        };
        Self {
            tag: None,
            resend_of: None,
            pos: None,
            tracked: true,
            header: [0; HEADER_LEN],
            hlen: 0,
            body,
        }
    }

    /// An acknowledgement.
    pub(crate) fn ack(me: Rank, lane: u16, pos: u64) -> Self {
        Self {
            tag: None,
            resend_of: None,
            pos: None,
            tracked: false,
            header: control_header(KIND_ACK, me, lane, pos),
            hlen: HEADER_LEN,
            body: Payload::Inline {
                buf: [0; INLINE_MAX],
                len: 0,
            },
        }
    }

    /// Whether this is a rendezvous data chunk.
    pub(crate) fn is_data(&self) -> bool {
        self.header[0] == braid_engine::wire::FrameKind::Data as u8
    }

    fn body_len(&self) -> usize {
        match &self.body {
            Payload::Inline { len, .. } => usize::from(*len),
            Payload::Owned(v) => v.len(),
            Payload::Borrowed { len, .. } => *len,
        }
    }

    /// Bytes this entry puts on the wire.
    pub(crate) fn wire_len(&self) -> usize {
        self.tag.map_or(0, |_| HEADER_LEN) + self.hlen + self.body_len()
    }

    fn body(&self) -> &[u8] {
        match &self.body {
            Payload::Inline { buf, len } => &buf[..usize::from(*len)],
            Payload::Owned(v) => v,
            Payload::Borrowed { len: 0, .. } => &[],
            Payload::Borrowed { ptr, len, .. } => {
                // SAFETY: a borrowed body stays valid until its request is released
                // (`Entry::release`) or, without a request, until `Conn::push` returns.
                unsafe { std::slice::from_raw_parts(*ptr, *len) }
            }
        }
    }

    /// Stores the slices of the bytes from `off` on at `out[*n..]`, advancing `*n`.
    fn slices<'a>(&'a self, mut off: usize, out: &mut [IoSlice<'a>], n: &mut usize) {
        let parts: [&'a [u8]; 3] = [
            self.tag.as_ref().map_or(&[][..], |t| &t[..]),
            &self.header[..self.hlen],
            self.body(),
        ];
        for p in parts {
            if off >= p.len() {
                off -= p.len();
                continue;
            }
            if let Some(slot) = out.get_mut(*n) {
                *slot = IoSlice::new(&p[off..]);
                *n += 1;
            }
            off = 0;
        }
    }

    /// Copies a small or unowned borrowed body, reporting its request done.
    /// Large bodies of a send request stay borrowed: until written on an unreliable
    /// connection, until acknowledged on a reliable one (or, while the entry waits for a
    /// connection, until it is released).
    pub(crate) fn settle(&mut self, sent: &mut Vec<ReqId>) {
        if let Payload::Borrowed { len, req, .. } = self.body {
            let keep = req.is_some() && len > COPY_LIMIT;
            if !keep {
                self.body = match u8::try_from(len) {
                    Ok(small) if len <= INLINE_MAX => {
                        let mut buf = [0; INLINE_MAX];
                        buf[..len].copy_from_slice(self.body());
                        Payload::Inline { buf, len: small }
                    }
                    _ => Payload::Owned(self.body().to_vec()),
                };
                sent.extend(req);
            }
        }
    }

    /// Gives a borrowed body back to its request.
    pub(crate) fn release(self, sent: &mut Vec<ReqId>) {
        if let Payload::Borrowed { req: Some(r), .. } = self.body {
            sent.push(r);
        }
    }

    /// The identity of this tracked frame on connection `lane`.
    pub(crate) fn ident(&self, lane: u16) -> Option<Ident> {
        self.resend_of.or(self.pos.map(|p| (lane, p)))
    }

    pub(crate) fn pos(&self) -> Option<u64> {
        self.pos
    }

    pub(crate) fn tracked(&self) -> bool {
        self.tracked
    }

    /// Turns a frame of a dead connection into its resend.
    pub(crate) fn into_resend(mut self, me: Rank, ident: Ident) -> Self {
        self.tag = Some(control_header(KIND_RESEND, me, ident.0, ident.1));
        self.resend_of = Some(ident);
        self.pos = None;
        self
    }
}

/// Receive-side state of a connection.
#[derive(Debug, Default)]
pub(crate) struct Rx {
    /// Tracked frames completely received.
    pub(crate) pos: u64,
    /// The last position acknowledged to the peer.
    pub(crate) acked: u64,
    /// When the first unacknowledged frame completed.
    pub(crate) since: Option<Instant>,
    /// A data chunk completed since the last acknowledgement (the sender holds its buffer).
    pub(crate) urgent: bool,
    /// Acknowledge even without news (an earlier acknowledgement may have died with a rail).
    pub(crate) force: bool,
    /// The frame whose header was handled and whose payload is not complete.
    cur: Option<Cur>,
    /// Identity announced by a [`KIND_RESEND`] tag for the next frame.
    next_resend: Option<Ident>,
}

#[derive(Debug)]
enum Cur {
    Control,
    Engine {
        ident: Ident,
        saved: Saved,
        data: bool,
    },
}

impl Rx {
    /// Whether an acknowledgement is due at `now`.
    pub(crate) fn ack_due(&self, now: Instant) -> bool {
        (self.pos > self.acked || self.force)
            && (self.force
                || self.urgent
                || self.pos - self.acked >= ACK_EVERY
                || self
                    .since
                    .is_some_and(|t| now.duration_since(t) >= ACK_DELAY))
    }

    /// Whether frames wait for an acknowledgement.
    pub(crate) fn ack_pending(&self) -> bool {
        self.pos > self.acked || self.force
    }

    /// Tracked frames received and not acknowledged yet.
    pub(crate) fn unacked(&self) -> u64 {
        self.pos - self.acked
    }

    /// Whether an acknowledgement is due whatever the time: a data chunk arrived, the count
    /// reached [`ACK_EVERY`], or one is forced.
    pub(crate) fn ack_urgent(&self) -> bool {
        self.force || (self.pos > self.acked && (self.urgent || self.pos - self.acked >= ACK_EVERY))
    }

    pub(crate) fn mark_acked(&mut self) {
        self.acked = self.pos;
        self.since = None;
        self.urgent = false;
        self.force = false;
    }
}

/// The sink a reliable connection reads through: it handles control frames, numbers the
/// tracked ones and finishes partly received frames from their resends.
struct RailSink<'a> {
    inner: &'a mut dyn FrameSink,
    rx: &'a mut Rx,
    partials: &'a mut HashMap<Ident, Saved>,
    events: &'a mut Vec<Event>,
    lane: u16,
    nrails: usize,
}

fn control_dest() -> Dest {
    Dest {
        token: CONTROL_TOKEN,
        ptr: std::ptr::null_mut(),
        take: 0,
        skip: 0,
    }
}

// SAFETY: destinations are either the inner sink's (forwarded under its promise), saved ones
// of the inner sink whose token has not been completed yet (still valid by the same promise:
// the payload was cut short, so `on_payload` was not called), or empty.
unsafe impl FrameSink for RailSink<'_> {
    fn on_header(&mut self, from: Rank, header: &[u8; HEADER_LEN]) -> Result<Dest, String> {
        let kind = header[0];
        if matches!(kind, KIND_ACK | KIND_LOST | KIND_RESEND) {
            let (lane, pos, len) = control_fields(header);
            let lane = u16::try_from(lane)
                .ok()
                .filter(|l| len == 0 && rail_of(*l) < self.nrails)
                .ok_or_else(|| {
                    format!("bad rail control frame {kind:#x} (lane {lane}, payload {len})")
                })?;
            match kind {
                KIND_ACK => self.events.push(Event::Ack { lane, pos }),
                KIND_LOST => {
                    self.rx.pos += 1;
                    self.rx.since.get_or_insert_with(Instant::now);
                    self.events.push(Event::Lost { lane, pos });
                }
                _ => {
                    if self.rx.next_resend.is_some() {
                        return Err("two resend tags in a row".into());
                    }
                    self.rx.next_resend = Some((lane, pos));
                }
            }
            self.rx.cur = Some(Cur::Control);
            return Ok(control_dest());
        }
        let ident = self
            .rx
            .next_resend
            .take()
            .unwrap_or((self.lane, self.rx.pos));
        let data = kind == braid_engine::wire::FrameKind::Data as u8;
        if let Some(saved) = (!self.partials.is_empty())
            .then(|| self.partials.remove(&ident))
            .flatten()
        {
            let len = braid_engine::wire::Header::peek_payload_len(header);
            if len != (saved.take + saved.skip) as u64 {
                return Err(format!("resent frame {ident:?} changed its length"));
            }
            self.rx.cur = Some(Cur::Engine { ident, saved, data });
            return Ok(saved.dest());
        }
        let d = self.inner.on_header(from, header)?;
        self.rx.cur = Some(Cur::Engine {
            ident,
            saved: Saved::of(&d),
            data,
        });
        Ok(d)
    }

    fn on_payload(&mut self, from: Rank, _token: FrameToken) {
        if let Some(Cur::Engine { saved, data, .. }) = self.rx.cur.take() {
            self.rx.pos += 1;
            self.rx.since.get_or_insert_with(Instant::now);
            self.rx.urgent |= data;
            self.inner.on_payload(from, saved.token);
        }
    }

    fn on_sent(&mut self, req: ReqId) {
        self.inner.on_sent(req);
    }

    fn on_peer_lost(&mut self, peer: Rank, error: TransportError) {
        self.inner.on_peer_lost(peer, error);
    }
}

/// One connection to a peer on one rail.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Index of its rail.
    pub(crate) rail: u16,
    /// Its name on the wire: `rail` plus [`RAIL_SLOTS`] times its generation ([`lane`]).
    pub(crate) lane: u16,
    /// Rail (interface) name.
    pub(crate) rail_name: String,
    /// `local -> remote` addresses, for messages.
    pub(crate) path: String,
    /// Host, rail and addresses, for errors.
    desc: String,
    /// Framing of the incoming bytes; its stream is written directly.
    pub(crate) framed: FramedConn<TcpStream>,
    /// Keeps unacknowledged frames and exchanges control frames (the pair can use several
    /// rails).
    reliable: bool,
    /// Frames: acknowledged ones are gone; `q[..wr_idx]` are written (reliable only),
    /// `q[wr_idx]` has `wr_off` bytes written, the rest are unwritten.
    q: VecDeque<Entry>,
    /// Entries ever removed from the front of `q`.
    base: u64,
    wr_idx: usize,
    wr_off: usize,
    /// Unwritten bytes in `q`.
    pub(crate) queued: usize,
    /// Bytes written into the socket since it opened.
    pub(crate) written: u64,
    /// Position of the next tracked frame.
    pub(crate) next_pos: u64,
    /// Tracked frames below this position are acknowledged and released.
    pub(crate) acked_pos: u64,
    /// Receive side.
    pub(crate) rx: Rx,
    /// Since when the kernel reports unacknowledged segments (stall detection).
    busy_since: Option<Instant>,
    /// Measured drain rate, bytes/s (EWMA); [`DEFAULT_RATE`] until measured.
    pub(crate) rate: f64,
    measured: bool,
    /// Last rate sample: when, bytes delivered then, whether backlogged then.
    mark: Option<(Instant, u64, bool)>,
    /// A write failed; the transport kills the connection at its next progress call.
    pub(crate) broken: bool,
    /// The last write attempt left bytes unwritten (the socket was full): new frames wait for
    /// the next flush instead of trying at once.
    blocked: bool,
    /// Consecutive busy-polling reads that found nothing (see `TcpTransport::progress`).
    pub(crate) idle_reads: u32,
    /// Registered with the transport's poller; otherwise read by busy polling and watched
    /// with `poll(2)` when the transport blocks (see `TcpTransport::progress`).
    pub(crate) registered: bool,
    /// Where [`Self::send_small`] puts a frame together (no state between calls).
    scratch: Box<[u8; HEADER_LEN + SMALL_SEND]>,
}

impl Conn {
    pub(crate) fn new(
        lane: u16,
        rail_name: String,
        path: String,
        desc: String,
        stream: TcpStream,
        peer: Rank,
        reliable: bool,
    ) -> Self {
        Self {
            rail: u16::try_from(rail_of(lane)).unwrap_or(u16::MAX),
            lane,
            rail_name,
            path,
            framed: FramedConn::new(peer, desc.clone(), stream),
            desc,
            reliable,
            q: VecDeque::new(),
            base: 0,
            wr_idx: 0,
            wr_off: 0,
            queued: 0,
            written: 0,
            next_pos: 0,
            acked_pos: 0,
            rx: Rx::default(),
            busy_since: None,
            rate: DEFAULT_RATE,
            measured: false,
            mark: None,
            broken: false,
            blocked: false,
            idle_reads: 0,
            registered: true,
            scratch: Box::new([0; HEADER_LEN + SMALL_SEND]),
        }
    }

    /// Host, rail and addresses of the connection, for errors.
    pub(crate) fn framed_addr(&self) -> String {
        self.desc.clone()
    }

    /// Queues a frame and writes what the socket takes. Requests whose bodies are no longer
    /// needed are appended to `sent`. The entry's borrowed body must be valid for the call.
    ///
    /// # Errors
    /// A write error; the connection is unusable (the frame stays queued).
    pub(crate) fn push(&mut self, e: Entry, sent: &mut Vec<ReqId>) -> io::Result<()> {
        let gi = self.base + self.q.len() as u64;
        self.queue(e);
        let res = if !self.blocked && !self.broken {
            self.flush(sent).map(|_| ())
        } else {
            Ok(())
        };
        if gi >= self.base
            && let Some(e) = usize::try_from(gi - self.base)
                .ok()
                .and_then(|i| self.q.get_mut(i))
        {
            e.settle(sent);
        }
        res
    }

    /// The small-message path of an unreliable connection with nothing queued: writes the
    /// frame (header, and a body of at most [`SMALL_SEND`] bytes) with one `send` of one
    /// buffer and queues a copy of what the socket did not take. Returns `Ok(false)`, having
    /// done nothing, when the frame must go through [`Self::push`] instead. A request owning
    /// the body is appended to `sent` once the body is written or copied.
    ///
    /// # Errors
    /// A write error; the connection is unusable.
    pub(crate) fn send_small(
        &mut self,
        header: &[u8; HEADER_LEN],
        body: Body,
        sent: &mut Vec<ReqId>,
    ) -> io::Result<bool> {
        if self.reliable
            || self.blocked
            || self.broken
            || !self.q.is_empty()
            || body.len > SMALL_SEND
        {
            return Ok(false);
        }
        let hlen = braid_engine::wire::header_len(header[0]);
        let total = hlen + body.len;
        let buf = &mut self.scratch[..total];
        buf[..hlen].copy_from_slice(&header[..hlen]);
        if body.len > 0 {
            // SAFETY: the caller lends `body.ptr` valid for `body.len` bytes for this call
            // (`Transport::send`).
            let b = unsafe { std::slice::from_raw_parts(body.ptr, body.len) };
            buf[hlen..].copy_from_slice(b);
        }
        let n = sys::send(self.framed.stream().as_raw_fd(), buf)?;
        self.written += n as u64;
        if n < total {
            let rest = Entry::raw(&self.scratch[n..total]);
            self.queue(rest);
            self.blocked = true;
        }
        sent.extend(body.owner);
        Ok(true)
    }

    /// Queues a frame that owns its body (an acknowledgement) without writing: the next
    /// [`Self::push`] or [`Self::flush`] writes it together with what follows.
    pub(crate) fn queue(&mut self, mut e: Entry) {
        if self.reliable && e.tracked {
            e.pos = Some(self.next_pos);
            self.next_pos += 1;
        }
        self.queued += e.wire_len();
        self.q.push_back(e);
    }

    /// Writes queued frames. Returns whether any byte was written.
    ///
    /// # Errors
    /// A write error; the connection is unusable.
    pub(crate) fn flush(&mut self, sent: &mut Vec<ReqId>) -> io::Result<bool> {
        let mut did = false;
        while self.wr_idx < self.q.len() {
            let res = {
                let mut slices = [IoSlice::new(&[]); 3 * GATHER];
                let mut n = 0;
                let mut off = self.wr_off;
                for e in self.q.range(self.wr_idx..).take(GATHER) {
                    e.slices(off, &mut slices, &mut n);
                    off = 0;
                }
                self.framed.stream_mut().write_vectored(&slices[..n])
            };
            match res {
                Ok(0) => break,
                Ok(n) => {
                    did = true;
                    self.written += n as u64;
                    self.advance(n, sent);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.blocked = self.wr_idx < self.q.len();
        Ok(did)
    }

    fn advance(&mut self, mut n: usize, sent: &mut Vec<ReqId>) {
        while n > 0 && self.wr_idx < self.q.len() {
            let left = self.q[self.wr_idx].wire_len() - self.wr_off;
            if n < left {
                self.wr_off += n;
                self.queued -= n;
                return;
            }
            n -= left;
            self.queued -= left;
            self.wr_off = 0;
            if self.reliable && (self.wr_idx > 0 || self.q[0].tracked) {
                self.wr_idx += 1;
            } else if let Some(e) = self.q.pop_front() {
                self.base += 1;
                e.release(sent);
            }
        }
    }

    /// The peer received `pos` tracked frames: release them.
    ///
    /// # Errors
    /// The peer acknowledged frames never sent.
    pub(crate) fn ack(&mut self, pos: u64, sent: &mut Vec<ReqId>) -> Result<(), String> {
        if pos > self.next_pos {
            return Err(format!(
                "acknowledged {pos} frames on rail {} of {} sent",
                self.rail_name, self.next_pos
            ));
        }
        while self.wr_idx > 0 {
            let done = self
                .q
                .front()
                .is_some_and(|f| f.pos.is_none_or(|p| p < pos));
            if !done {
                break;
            }
            if let Some(e) = self.q.pop_front() {
                self.base += 1;
                self.wr_idx -= 1;
                if let Some(p) = e.pos {
                    self.acked_pos = p + 1;
                }
                e.release(sent);
            }
        }
        Ok(())
    }

    /// Reads what is available; control events go to `events`.
    ///
    /// # Errors
    /// As [`FramedConn::read_all`].
    pub(crate) fn read(
        &mut self,
        staging: &mut [u8],
        sink: &mut dyn FrameSink,
        partials: &mut HashMap<Ident, Saved>,
        events: &mut Vec<Event>,
        nrails: usize,
    ) -> Result<bool, TransportError> {
        if !self.reliable {
            return self.framed.read_all(staging, sink, ReadMode::Batched);
        }
        let mut rs = RailSink {
            inner: sink,
            rx: &mut self.rx,
            partials,
            events,
            lane: self.lane,
            nrails,
        };
        self.framed.read_all(staging, &mut rs, ReadMode::Batched)
    }

    /// The frame cut short on this connection, to be finished by its resend.
    pub(crate) fn partial(&self) -> Option<(Ident, Saved)> {
        match &self.rx.cur {
            Some(Cur::Engine { ident, saved, .. }) => Some((*ident, *saved)),
            _ => None,
        }
    }

    /// Every frame still held: unacknowledged, partly written and unwritten ones.
    pub(crate) fn into_history(self) -> VecDeque<Entry> {
        self.q
    }

    /// Checks whether the path is dead, and returns why. Dead: for `timeout` no ACK arrived
    /// while the kernel had segments in flight, or had bytes it did not send although the
    /// peer's window was open (the local interface is down: no route). A slow reader is not
    /// a stall: its window closes and nothing is in flight (zero-window probes carry no new
    /// data).
    pub(crate) fn stalled(&mut self, now: Instant, timeout: Duration) -> Option<String> {
        let fd = self.framed.stream().as_raw_fd();
        let h = sys::health(fd).ok()?;
        let unsent = if h.unacked == 0 && h.snd_wnd > 0 {
            sys::unacked_bytes(fd).unwrap_or(0)
        } else {
            0
        };
        if h.unacked == 0 && unsent == 0 {
            self.busy_since = None;
            return None;
        }
        let since = *self.busy_since.get_or_insert(now);
        let quiet = Duration::from_millis(u64::from(h.last_ack_recv_ms));
        (now.duration_since(since) >= timeout && quiet >= timeout).then(|| {
            let what = if h.unacked > 0 {
                format!("{} segment(s) in flight", h.unacked)
            } else {
                format!("{unsent} byte(s) the kernel could not send")
            };
            format!(
                "rail stalled: no acknowledgement for {:.1} s with {what} (round-trip time \
                 was {} us)",
                quiet.as_secs_f64(),
                h.rtt_us
            )
        })
    }

    /// Bytes queued here or in the kernel, not yet acknowledged by the peer's host.
    pub(crate) fn backlog(&self) -> usize {
        self.queued + sys::unacked_bytes(self.framed.stream().as_raw_fd()).unwrap_or(0)
    }

    /// Samples the drain rate: acknowledged bytes per second while the connection had a
    /// backlog throughout.
    /// Returns whether the connection has a backlog now.
    pub(crate) fn sample_rate(&mut self, now: Instant) -> bool {
        let outq = sys::unacked_bytes(self.framed.stream().as_raw_fd()).unwrap_or(0);
        let delivered = self.written.saturating_sub(outq as u64);
        let busy = self.queued + outq >= BACKLOGGED;
        if let Some((t0, d0, busy0)) = self.mark {
            let dt = now.duration_since(t0);
            if dt < RATE_INTERVAL {
                return busy;
            }
            if busy0 && busy && delivered > d0 {
                let sample = (delivered - d0) as f64 / dt.as_secs_f64();
                self.rate = if self.measured {
                    0.7 * self.rate + 0.3 * sample
                } else {
                    sample
                };
                self.measured = true;
            }
        }
        self.mark = Some((now, delivered, busy));
        busy
    }
}
