//! The progress engine: drives the sans-IO point-to-point engine over the transports and
//! owns the raw user buffers of in-flight requests.
//!
//! Both front-ends (the Rust API here, the C ABI later) call into [`Core`] with raw buffers.
//! One `Core` exists per process, in a mutex biased to the thread that initialized Braid
//! ([`with_core`], [`cell`]).

mod cell;

use std::time::{Duration, Instant};

use braid_engine::wire::{FrameKind, HEADER_LEN, Header};
use braid_engine::{
    Completion, ContextId, Engine, FrameToken, IdMap, Outcome, Placement, Rank as ERank,
    RecvStatus, ReqId, SendMode, SeqMap, SourceSel, TagSel, Transmit,
};
use braid_shm::transport::ShmTransport;
use braid_transports::stream::COPY_LIMIT;
use braid_transports::tcp::TcpTransport;
use braid_transports::{Body, Dest, FrameSink, Take, Transport, TransportError};

use crate::error::Error;
use cell::BiasedCell;

/// Context of the world communicator's point-to-point traffic.
pub(crate) const WORLD_CONTEXT: ContextId = ContextId(0);
/// Context of the world communicator's collectives.
pub(crate) const WORLD_COLL_CONTEXT: ContextId = ContextId(1);

/// The process-wide runtime state; `None` before init and after finalize.
static CORE: BiasedCell<Option<Core>> = BiasedCell::new(None);

/// Runs `f` on the initialized core.
///
/// # Panics
/// When called before `initialize` or after finalize: the Rust API hands out communicators
/// only between the two, so this is a bug in Braid.
#[inline]
pub(crate) fn with_core<R>(f: impl FnOnce(&mut Core) -> R) -> R {
    CORE.take(|slot| {
        let core = slot
            .as_mut()
            .expect("braid communicators exist only between initialize and finalize");
        f(core)
    })
}

/// Installs the core, biased to the calling thread (see [`cell`]); false when one is
/// installed already.
pub(crate) fn install(core: Core) -> bool {
    let installed = CORE.take(|slot| {
        if slot.is_some() {
            return false;
        }
        *slot = Some(core);
        true
    });
    if installed {
        CORE.bias_to_caller();
    }
    installed
}

/// Removes the core (at finalize).
pub(crate) fn take() -> Option<Core> {
    CORE.take(Option::take)
}

/// Whether a core is installed.
pub(crate) fn is_installed() -> bool {
    CORE.take(|slot| slot.is_some())
}

/// A user buffer lent to an in-flight request.
#[derive(Clone, Copy, Debug)]
struct RawBuf {
    ptr: *mut u8,
    len: usize,
}

impl RawBuf {
    /// The `len` bytes at `offset`, if they lie inside the buffer (as a raw slice: whoever
    /// dereferences it answers for the buffer being alive and unaliased).
    fn part(&self, offset: u64, len: u64) -> Option<*mut [u8]> {
        let (off, len) = (usize::try_from(offset).ok()?, usize::try_from(len).ok()?);
        if off.checked_add(len)? > self.len {
            return None;
        }
        // `off <= self.len`: the pointer stays inside (or one past) the buffer.
        Some(std::ptr::slice_from_raw_parts_mut(
            self.ptr.wrapping_add(off),
            len,
        ))
    }
}

/// A send as a front-end starts it: `len` bytes at `ptr` with `tag` to world rank `to` in
/// context `ctx`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outgoing {
    pub(crate) ctx: ContextId,
    pub(crate) to: u32,
    pub(crate) tag: i32,
    pub(crate) ptr: *const u8,
    pub(crate) len: usize,
    pub(crate) mode: SendMode,
}

impl Outgoing {
    /// A send of `bytes`, which must stay valid as [`Core::start_send`] says.
    pub(crate) fn of(ctx: ContextId, to: u32, tag: i32, bytes: &[u8], mode: SendMode) -> Self {
        Self {
            ctx,
            to,
            tag,
            ptr: bytes.as_ptr(),
            len: bytes.len(),
            mode,
        }
    }

    /// A standard-mode send (what collectives send).
    pub(crate) fn standard(ctx: ContextId, to: u32, tag: i32, ptr: *const u8, len: usize) -> Self {
        Self {
            ctx,
            to,
            tag,
            ptr,
            len,
            mode: SendMode::Standard,
        }
    }
}

/// How [`Core::start_send`] started a send.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Started {
    /// It left at once and is complete; nothing was recorded for this request.
    Sent(ReqId),
    /// It is posted: wait for the request.
    Posted(ReqId),
}

impl Started {
    /// The request to wait for: `None` when the send is complete already.
    pub(crate) fn posted(self) -> Option<ReqId> {
        match self {
            Self::Sent(_) => None,
            Self::Posted(id) => Some(id),
        }
    }
}

/// Result of a finished request, kept until the front-end collects it.
pub(crate) type Finished = Result<RecvStatus, Error>;

/// How a wait spins before it blocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpinPolicy {
    /// How long to poll without blocking.
    pub(crate) spin: Duration,
    /// Yield the CPU between polls (more ranks than cores on this host).
    pub(crate) yield_between: bool,
}

/// The driver of one rank.
pub(crate) struct Core {
    pub(crate) rank: u32,
    pub(crate) size: u32,
    pub(crate) host: String,
    /// Host identity of every world rank (equal strings: same host).
    pub(crate) hosts: Vec<String>,
    pub(crate) engine: Engine,
    /// The TCP transport; `None` in a singleton job.
    pub(crate) tcp: Option<TcpTransport>,
    /// The shared-memory transport to ranks of this host; `None` when there are none or
    /// `BRAID_SHM=off`.
    pub(crate) shm: Option<ShmTransport>,
    /// Whether the TCP transport has connections (else it is polled rarely, for strays).
    tcp_active: bool,
    /// Progress calls so far (paces the polling of an idle TCP transport).
    polls: u64,
    /// Empty spins of the TCP receive fast path so far (paces its progress passes, see
    /// [`Core::recv_direct`]).
    direct_spins: u32,
    pub(crate) pmi: Option<braid_pmi::PmiClient>,
    /// Send buffers of requests whose frames may still be emitted. Invariant: an entry lives
    /// until the engine completes the request and the transport returned every lent body.
    sends: SeqMap<ReqId, RawBuf>,
    /// Receive buffers of requests that may still get payload.
    recvs: SeqMap<ReqId, RawBuf>,
    /// Number of bodies of a send request that the transport still holds.
    lent: SeqMap<ReqId, u32>,
    /// Sends the engine completed while bodies were still lent.
    sent_waiting: SeqMap<ReqId, ()>,
    /// Finished requests not yet collected.
    finished: SeqMap<ReqId, Finished>,
    /// Why each lost peer was lost.
    lost: IdMap<u32, String>,
    pub(crate) spin: SpinPolicy,
}

// SAFETY: the raw buffer pointers are only dereferenced while the core's mutex is held, and
// the front-end keeps each buffer borrowed until its request is finished.
unsafe impl Send for Core {}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// What the transport reports into, split from [`Core`] so the transport can be borrowed
/// mutably at the same time.
struct Sink<'a> {
    engine: &'a mut Engine,
    recvs: &'a mut SeqMap<ReqId, RawBuf>,
    finished: &'a mut SeqMap<ReqId, Finished>,
    lent: &'a mut SeqMap<ReqId, u32>,
    returned: &'a mut Vec<ReqId>,
    lost: &'a mut IdMap<u32, String>,
}

// SAFETY: destinations point into receive buffers registered in `recvs` (kept alive by their
// requests until completion) or into engine payload buffers (boxed slices that the engine
// keeps, unmoved, until `handle_payload` for their token). A buffer that `take_whole` hands
// out finishes its request, but the front-end collects that request only after the transport
// call returns (the call holds the core), so the buffer is alive and untouched meanwhile.
unsafe impl FrameSink for Sink<'_> {
    /// Eager messages that posted receives wait for go straight into their buffers, and the
    /// receives finish, without a frame token, placement or completion
    /// ([`Engine::take_posted`]).
    fn take_whole(&mut self, from: ERank, h: &Header) -> Option<(*mut u8, usize)> {
        let (req, status) = self.engine.take_posted(from, h)?;
        self.finished.insert(req, Ok(status));
        // Every posted receive has its buffer registered (`Core::irecv`).
        let buf = self.recvs.remove(&req);
        debug_assert!(buf.is_some(), "posted receive {req} has no buffer");
        Some(buf.map_or((std::ptr::null_mut(), 0), |b| (b.ptr, b.len)))
    }

    fn on_header(&mut self, from: ERank, header: &[u8; HEADER_LEN]) -> Result<Dest, String> {
        let h = Header::decode(header).map_err(|e| e.to_string())?;
        let inc = self
            .engine
            .handle_header(from, &h)
            .map_err(|e| e.to_string())?;
        dest_for(
            self.engine,
            self.recvs,
            inc.token,
            &inc.placement,
            h.payload_len,
        )
    }

    fn on_payload(&mut self, _from: ERank, token: FrameToken) {
        self.engine.handle_payload(token);
    }

    fn on_sent(&mut self, req: ReqId) {
        if give_back(self.lent, req) {
            self.returned.push(req);
        }
    }

    fn on_peer_lost(&mut self, peer: ERank, error: TransportError) {
        self.lost.entry(peer.0).or_insert_with(|| error.to_string());
        self.engine.handle_peer_lost(peer);
    }
}

/// Returns one body lent by send request `req`; true when it was the last one.
fn give_back(lent: &mut SeqMap<ReqId, u32>, req: ReqId) -> bool {
    let Some(n) = lent.get_mut(&req) else {
        return false;
    };
    *n -= 1;
    if *n > 0 {
        return false;
    }
    lent.remove(&req);
    true
}

/// Turns an engine placement into transport memory.
fn dest_for(
    engine: &mut Engine,
    recvs: &SeqMap<ReqId, RawBuf>,
    token: FrameToken,
    placement: &Placement,
    payload_len: u64,
) -> Result<Dest, String> {
    let payload = usize::try_from(payload_len).map_err(|_| "payload too large".to_string())?;
    match *placement {
        _ if payload == 0 => Ok(Dest {
            token,
            ptr: std::ptr::null_mut(),
            take: 0,
            skip: 0,
        }),
        Placement::Request {
            req,
            offset,
            take,
            skip,
        } => {
            let buf = recvs
                .get(&req)
                .ok_or_else(|| format!("no buffer for request {req}"))?;
            let (offset, take, skip) = (offset as usize, take as usize, skip as usize);
            if offset.checked_add(take).is_none_or(|end| end > buf.len) {
                return Err(format!(
                    "chunk {offset}+{take} outside a {}-byte buffer",
                    buf.len
                ));
            }
            // SAFETY: offset + take <= buf.len, checked above.
            let ptr = unsafe { buf.ptr.add(offset) };
            Ok(Dest {
                token,
                ptr,
                take,
                skip,
            })
        }
        Placement::Buffer => {
            let b = engine.payload_buffer(token);
            Ok(Dest {
                token,
                ptr: b.as_mut_ptr(),
                take: b.len().min(payload),
                skip: payload - b.len().min(payload),
            })
        }
    }
}

impl Core {
    /// Builds a core around a wired-up engine and transport.
    pub(crate) fn new(
        engine: Engine,
        tcp: Option<TcpTransport>,
        shm: Option<ShmTransport>,
        pmi: Option<braid_pmi::PmiClient>,
        host: String,
        hosts: Vec<String>,
        spin: SpinPolicy,
    ) -> Self {
        let tcp_active = (0..engine.size())
            .any(|r| r != engine.rank().0 && !shm.as_ref().is_some_and(|s| s.reaches(ERank(r))));
        Self {
            shm,
            tcp_active,
            polls: 0,
            direct_spins: 0,
            rank: engine.rank().0,
            size: engine.size(),
            host,
            hosts,
            engine,
            tcp,
            pmi,
            sends: SeqMap::default(),
            recvs: SeqMap::default(),
            lent: SeqMap::default(),
            sent_waiting: SeqMap::default(),
            finished: SeqMap::default(),
            lost: IdMap::default(),
            spin,
        }
    }

    /// Starts a send from raw memory.
    ///
    /// # Safety
    /// `ptr` must be valid for reads of `len` bytes until the request is finished and
    /// collected with [`Core::wait`] or [`Core::test`].
    pub(crate) unsafe fn isend(&mut self, m: Outgoing) -> Result<ReqId, Error> {
        // SAFETY: forwarded from the caller.
        match unsafe { self.start_send(m) }? {
            Started::Sent(req) => {
                self.finished.insert(req, Ok(sent_status()));
                Ok(req)
            }
            Started::Posted(req) => Ok(req),
        }
    }

    /// Starts a send: a small standard one leaves at once ([`Core::send_now`]), any other is
    /// posted ([`Core::post_send`]).
    ///
    /// # Safety
    /// As [`Core::isend`].
    pub(crate) unsafe fn start_send(&mut self, m: Outgoing) -> Result<Started, Error> {
        // SAFETY: `ptr` is valid for `len` bytes for longer than this call.
        if let Some(req) = unsafe { self.send_now(&m) }? {
            return Ok(Started::Sent(req));
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.post_send(&m) }.map(Started::Posted)
    }

    /// Posts a send request to the engine (the general path of [`Core::isend`], for any
    /// length and mode).
    ///
    /// # Safety
    /// As [`Core::isend`].
    unsafe fn post_send(&mut self, m: &Outgoing) -> Result<ReqId, Error> {
        let req = self
            .engine
            .post_send(
                m.ctx,
                ERank(m.to),
                braid_engine::Tag(m.tag),
                m.len as u64,
                m.mode,
                m.ptr as u64,
            )
            .map_err(usage)?;
        self.sends.insert(
            req,
            RawBuf {
                ptr: m.ptr.cast_mut(),
                len: m.len,
            },
        );
        self.note_buffer(Some(m.to), m.ptr, m.len);
        self.pump_posted();
        Ok(req)
    }

    /// Sends a small standard message at once, without request state: the transports copy
    /// what they cannot write, so the buffer is free when this returns. Returns the (already
    /// complete) request's id, or `None` when the message must go through [`Core::isend`]'s
    /// general path (too long, another mode, frames queued ahead of it).
    ///
    /// # Safety
    /// `ptr` must be valid for reads of `len` bytes during the call.
    unsafe fn send_now(&mut self, m: &Outgoing) -> Result<Option<ReqId>, Error> {
        if m.mode != SendMode::Standard || m.len > COPY_LIMIT {
            return Ok(None);
        }
        let Some((req, header)) = self
            .engine
            .send_eager_now(m.ctx, ERank(m.to), braid_engine::Tag(m.tag), m.len as u64)
            .map_err(usage)?
        else {
            return Ok(None);
        };
        let body = Body {
            ptr: m.ptr,
            len: m.len,
            owner: None,
        };
        // SAFETY: `ptr` is valid for `len` bytes (caller's promise); without an owner the
        // transport reads it only during the call.
        unsafe { self.hand_over(ERank(m.to), &header, body) };
        Ok(Some(req))
    }

    /// Starts a receive into raw memory. `from`/`tag` of `None` are wildcards.
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes, and not otherwise accessed, until the
    /// request is finished and collected.
    pub(crate) unsafe fn irecv(
        &mut self,
        ctx: ContextId,
        from: Option<u32>,
        tag: Option<i32>,
        ptr: *mut u8,
        len: usize,
    ) -> Result<ReqId, Error> {
        let src = from.map_or(SourceSel::Any, |r| SourceSel::Rank(ERank(r)));
        let tag = tag.map_or(TagSel::Any, |t| TagSel::Tag(braid_engine::Tag(t)));
        let req = self
            .engine
            .post_recv_at(ctx, src, tag, len as u64, ptr as u64)
            .map_err(usage)?;
        self.recvs.insert(req, RawBuf { ptr, len });
        self.note_buffer(from, ptr, len);
        self.pump_posted();
        Ok(req)
    }

    /// Notes a buffer that single-copy transfers with world rank `peer` (`None`: any rank,
    /// as in a collective) may reach, for huge-page backing ([`ShmTransport::note_buffer`]).
    #[inline]
    pub(crate) fn note_buffer(&mut self, peer: Option<u32>, ptr: *const u8, len: usize) {
        if let Some(shm) = self.shm.as_mut() {
            shm.note_buffer(peer.map(ERank), ptr, len);
        }
    }

    /// The fast path of a blocking receive from `from`: when the engine says nothing already
    /// here could match it ([`Engine::can_take_direct`]), watches the peer's shared-memory ring
    /// or TCP connection and takes the next message straight into the buffer, without a
    /// request. Returns `None` when the general path must run the receive: another kind of
    /// frame comes, other input or output waits, or the spin budget is used up (the general
    /// path then blocks). On shared memory that leaves everything as it was; over TCP,
    /// frames read meanwhile have gone into the engine as a progress call would put them.
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes during the call.
    pub(crate) unsafe fn recv_direct(
        &mut self,
        ctx: ContextId,
        from: u32,
        tag: Option<i32>,
        ptr: *mut u8,
        len: usize,
    ) -> Option<RecvStatus> {
        let src = ERank(from);
        let tsel = tag.map_or(TagSel::Any, |t| TagSel::Tag(braid_engine::Tag(t)));
        if self.engine.has_output() || !self.engine.can_take_direct(ctx, src, tsel) {
            return None;
        }
        let dst = if len == 0 {
            &mut [][..]
        } else {
            // SAFETY: the caller's promise.
            unsafe { std::slice::from_raw_parts_mut(ptr, len) }
        };
        if self.shm.as_ref().is_some_and(|s| s.reaches(src)) {
            if self.tcp_active {
                return None;
            }
            return self.recv_direct_shm(ctx, src, tsel, dst);
        }
        self.recv_direct_tcp(ctx, src, tsel, dst)
    }

    /// [`Core::recv_direct`] from a peer on shared memory (with no TCP peers to poll).
    fn recv_direct_shm(
        &mut self,
        ctx: ContextId,
        src: ERank,
        tsel: TagSel,
        dst: &mut [u8],
    ) -> Option<RecvStatus> {
        let Self {
            engine, shm, spin, ..
        } = self;
        let shm = shm.as_mut()?;
        let cap = dst.len() as u64;
        let mut waiter = Waiter::new(*spin);
        let mut spins = 0u32;
        loop {
            let take = shm.take_eager(src, dst, |h| engine.take_direct(src, h, ctx, tsel, cap));
            match take {
                Take::Taken(status) => return Some(status),
                Take::Other => return None,
                Take::Empty => {}
            }
            spins = spins.wrapping_add(1);
            // Oversubscribed ranks yield in the general path's wait instead.
            if spin.yield_between {
                return None;
            }
            if spins.is_multiple_of(QUIET_SPINS)
                && (shm.has_input()
                    || shm.has_pending_writes()
                    || waiter.next_timeout() != Some(Duration::ZERO))
            {
                return None;
            }
            std::hint::spin_loop();
        }
    }

    /// [`Core::recv_direct`] from a peer over TCP: one `recv` of the peer's connection per
    /// spin ([`TcpTransport::take_eager`]), no request, no poller. Every [`TCP_POLL_EVERY`]
    /// spins a full progress pass (with the poller) looks at everything else: other peers,
    /// new connections, queued output, timers (it leaves `src`'s connection to the fast path
    /// where it can); the fast path ends when that pass leaves the engine with output or with
    /// a candidate for this receive. The spins are counted across calls, so a ping-pong
    /// whose every receive finds its message within a few spins still makes those passes.
    fn recv_direct_tcp(
        &mut self,
        ctx: ContextId,
        src: ERank,
        tsel: TagSel,
        dst: &mut [u8],
    ) -> Option<RecvStatus> {
        let cap = dst.len() as u64;
        let mut waiter = Waiter::new(self.spin);
        let mut returned = Vec::new();
        loop {
            let (_, tcp, mut sink) = self.transports_and_sink(&mut returned);
            let take = tcp?.take_eager(src, dst, &mut sink, |s, h| {
                s.engine.take_direct(src, h, ctx, tsel, cap)
            });
            if !returned.is_empty() {
                self.settle_returned(&mut returned);
            }
            match take {
                Take::Taken(status) => return Some(status),
                Take::Other => return None,
                Take::Empty => {}
            }
            self.direct_spins = self.direct_spins.wrapping_add(1);
            if self.spin.yield_between {
                return None;
            }
            if self.direct_spins.is_multiple_of(TCP_POLL_EVERY) {
                if waiter.next_timeout() != Some(Duration::ZERO) {
                    return None;
                }
                if let Some(tcp) = self.tcp.as_mut() {
                    tcp.poll_next(Some(src));
                }
                if self.progress(Some(Duration::ZERO)).is_err()
                    || self.engine.has_output()
                    || !self.engine.can_take_direct(ctx, src, tsel)
                {
                    return None;
                }
            }
        }
    }

    /// Looks for a matchable message (`MPI_Iprobe`), making progress first.
    pub(crate) fn iprobe(
        &mut self,
        ctx: ContextId,
        from: Option<u32>,
        tag: Option<i32>,
    ) -> Result<Option<RecvStatus>, Error> {
        let src = from.map_or(SourceSel::Any, |r| SourceSel::Rank(ERank(r)));
        let tsel = tag.map_or(TagSel::Any, |t| TagSel::Tag(braid_engine::Tag(t)));
        let find = |e: &Engine| {
            e.probe(ctx, src, tsel).map(|p| RecvStatus {
                source: p.source,
                tag: p.tag,
                len: p.len,
                stored: p.len,
            })
        };
        if let Some(s) = find(&self.engine) {
            return Ok(Some(s));
        }
        self.progress(Some(Duration::ZERO))?;
        if let Some(s) = find(&self.engine) {
            return Ok(Some(s));
        }
        if let Some(r) = from
            && let Some(why) = self.lost.get(&r)
        {
            return Err(Error::PeerLost {
                rank: r as i32,
                reason: why.clone(),
            });
        }
        Ok(None)
    }

    /// Blocks until a matchable message is there (`MPI_Probe`).
    pub(crate) fn probe(
        &mut self,
        ctx: ContextId,
        from: Option<u32>,
        tag: Option<i32>,
    ) -> Result<RecvStatus, Error> {
        let mut waiter = Waiter::new(self.spin);
        loop {
            if let Some(s) = self.iprobe(ctx, from, tag)? {
                return Ok(s);
            }
            let t = waiter.next_timeout();
            self.progress(t)?;
        }
    }

    /// Takes the result of request `req` if it has finished, making progress first.
    pub(crate) fn test(&mut self, req: ReqId) -> Result<Option<Finished>, Error> {
        if let Some(f) = self.finished.remove(&req) {
            return Ok(Some(f));
        }
        self.progress(Some(Duration::ZERO))?;
        Ok(self.finished.remove(&req))
    }

    /// Whether request `req` has finished (without collecting it).
    pub(crate) fn is_finished(&self, req: ReqId) -> bool {
        self.finished.contains_key(&req)
    }

    /// Collects a finished request.
    pub(crate) fn collect(&mut self, req: ReqId) -> Option<Finished> {
        self.finished.remove(&req)
    }

    /// Blocks until request `req` finishes and returns its result.
    pub(crate) fn wait(&mut self, req: ReqId) -> Result<Finished, Error> {
        let mut waiter = Waiter::new(self.spin);
        loop {
            if let Some(f) = self.finished.remove(&req) {
                return Ok(f);
            }
            // What the engine has queued (a pull, above all) may finish `req` without the
            // poll of every peer that a progress pass adds.
            if self.pump() {
                continue;
            }
            let t = waiter.next_timeout();
            self.spin_for_input(t);
            self.progress(t)?;
        }
    }

    /// Before a non-blocking poll of a rank whose only peers are on shared memory and that
    /// has nothing to send: watches the rings' write indices (one load per peer) for up to
    /// [`QUIET_SPINS`] rounds, so the full progress pass runs once input is there instead of
    /// on every spin (which would add half a pass to the latency of each message).
    fn spin_for_input(&self, timeout: Option<Duration>) {
        if timeout != Some(Duration::ZERO)
            || self.spin.yield_between
            || self.tcp_active
            || self.engine.has_output()
            || !self.lent.is_empty()
        {
            return;
        }
        let Some(shm) = &self.shm else {
            return;
        };
        if shm.has_pending_writes() {
            return;
        }
        for _ in 0..QUIET_SPINS {
            if shm.has_input() {
                return;
            }
            std::hint::spin_loop();
        }
    }

    /// Blocks until any of `reqs` finishes; returns its index (not collected).
    pub(crate) fn wait_any(&mut self, reqs: &[ReqId]) -> Result<usize, Error> {
        let mut waiter = Waiter::new(self.spin);
        loop {
            if let Some(i) = reqs.iter().position(|r| self.finished.contains_key(r)) {
                return Ok(i);
            }
            if self.pump() {
                continue;
            }
            let t = waiter.next_timeout();
            self.spin_for_input(t);
            self.progress(t)?;
        }
    }

    /// Polls the transport once (waiting at most `timeout`) and processes what the engine
    /// produced. Returns whether anything happened.
    pub(crate) fn progress(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        let mut did = self.pump();
        self.polls = self.polls.wrapping_add(1);
        let mut returned = Vec::new();
        let blocking = !did && timeout.is_some_and(|t| !t.is_zero());
        let (tcp_active, polls) = (self.tcp_active, self.polls);
        let (mut shm, tcp, mut sink) = self.transports_and_sink(&mut returned);
        if let Some(shm) = shm.as_mut() {
            // With TCP peers too, block in the poller instead (it can watch both with a
            // short timeout); with shared-memory peers only, sleep on the doorbell.
            let t = if blocking && !tcp_active {
                timeout
            } else {
                Some(Duration::ZERO)
            };
            did |= shm
                .progress(&mut sink, t)
                .map_err(|e| Error::LocalOs(format!("shared-memory progress failed: {e}")))?;
        }
        let poll_tcp = tcp_active || polls.is_multiple_of(256) || (blocking && shm.is_none());
        let no_transport = tcp.is_none() && shm.is_none();
        if let Some(tcp) = tcp
            && poll_tcp
        {
            let t = if did {
                Some(Duration::ZERO)
            } else if shm.is_some() {
                timeout.map(|t| t.min(Duration::from_millis(1)))
            } else {
                timeout
            };
            did |= tcp
                .progress(&mut sink, t)
                .map_err(|e| Error::LocalOs(format!("poll failed: {e}")))?;
        } else if no_transport && blocking {
            std::thread::sleep(Duration::from_millis(1));
        }
        did |= self.settle_returned(&mut returned);
        did |= self.pump();
        Ok(did)
    }

    /// The transports, and a [`Sink`] over the state they deliver into (the sink's fields
    /// are borrowed apart from the transports', so both are usable at once). Sends whose
    /// lent bodies the transports give back go to `returned`.
    fn transports_and_sink<'a>(
        &'a mut self,
        returned: &'a mut Vec<ReqId>,
    ) -> (
        Option<&'a mut ShmTransport>,
        Option<&'a mut TcpTransport>,
        Sink<'a>,
    ) {
        let sink = Sink {
            engine: &mut self.engine,
            recvs: &mut self.recvs,
            finished: &mut self.finished,
            lent: &mut self.lent,
            returned,
            lost: &mut self.lost,
        };
        (self.shm.as_mut(), self.tcp.as_mut(), sink)
    }

    /// Finishes the sends among `returned` (requests whose last lent body the transport gave
    /// back) that the engine completed already; empties `returned`. Returns whether any
    /// finished.
    fn settle_returned(&mut self, returned: &mut Vec<ReqId>) -> bool {
        let mut did = false;
        for req in returned.drain(..) {
            if self.sent_waiting.remove(&req).is_some() {
                self.sends.remove(&req);
                self.finished.insert(req, Ok(sent_status()));
                did = true;
            }
        }
        did
    }

    /// Sends what the engine emitted, performs its single-copy pulls and records
    /// completions. Returns whether it did anything.
    #[inline]
    pub(crate) fn pump(&mut self) -> bool {
        self.engine.has_output() && self.pump_output(true)
    }

    /// [`Core::pump`] after posting a send or receive: frames go out at once, but pulls wait
    /// for the next progress call. A receive posted against a waiting RTS would otherwise
    /// copy the whole message before the caller gets to post its own sends, and a peer
    /// waiting for those sends would idle meanwhile (the two ranks of `osu_bibw` would take
    /// turns instead of copying at the same time).
    #[inline]
    fn pump_posted(&mut self) {
        if self.engine.has_output() {
            self.pump_output(false);
        }
    }

    /// The body of [`Core::pump`] once the engine has output (kept out of line so the idle
    /// check inlines into every poll). Each pull's answer goes out as soon as the copy is
    /// done, so the sender's request completes without waiting for the other pulls.
    #[inline(never)]
    fn pump_output(&mut self, pulls: bool) -> bool {
        let mut did = false;
        loop {
            let mut any = self.transmit_all();
            if pulls && let Some(p) = self.engine.poll_push() {
                did = true;
                let ok = self.push(&p);
                self.engine.handle_push_done(&p, ok);
                continue;
            }
            if pulls && let Some(first) = self.engine.poll_pull() {
                did = true;
                // Smaller pulls from the same peer that are queued behind it are copied in
                // the same call.
                let mut batch = [first; PULL_BATCH];
                let (mut n, mut bytes) = (1, first.len);
                while n < PULL_BATCH
                    && let Some(p) = self
                        .engine
                        .poll_pull_from(first.from, PULL_BATCH_BYTES.saturating_sub(bytes))
                {
                    batch[n] = p;
                    n += 1;
                    bytes += p.len;
                }
                // A split pull asked the sender for its part: that goes out first, so both
                // copy at once.
                self.transmit_all();
                let whole = self.pull_many(&batch[..n]);
                for (i, p) in batch[..n].iter().enumerate() {
                    let ok = i < whole || self.pull(p);
                    self.engine.handle_pull_done(p.req, ok);
                }
                continue;
            }
            while let Some(c) = self.engine.poll_completion() {
                any = true;
                self.complete(c);
            }
            did |= any;
            if !any {
                return did;
            }
        }
    }

    /// Sends every frame the engine emitted; returns whether there was any.
    fn transmit_all(&mut self) -> bool {
        let mut any = false;
        while let Some(t) = self.engine.poll_transmit() {
            any = true;
            self.transmit(t);
        }
        any
    }

    fn transmit(&mut self, t: Transmit) {
        let (ptr, len, owner) = match t.body {
            braid_engine::Body::None => (std::ptr::null(), 0, None),
            braid_engine::Body::Send { req, offset, len } => match self.sends.get(&req) {
                // SAFETY: the engine only names ranges inside the length it was given.
                Some(b) => (
                    unsafe { b.ptr.add(offset as usize) }.cast_const(),
                    len as usize,
                    Some(req),
                ),
                None => (std::ptr::null(), 0, None),
            },
        };
        // A small eager body goes without an owner: a transport copies what it cannot write
        // at once, so the send completes as soon as the engine says so (programs that send
        // before they receive rely on that). Rendezvous data goes to a matched receive, so a
        // copy would only add work: it stays lent until written.
        let owner = owner.filter(|_| t.header.kind == FrameKind::Data || len > COPY_LIMIT);
        if t.to.0 == self.rank {
            self.loopback(&t.header, ptr, len);
            return;
        }
        // SAFETY: `ptr` is inside a send buffer registered in `sends`, which stays registered
        // (and borrowed by its request) until the transport returns it through on_sent.
        unsafe { self.hand_over(t.to, &t.header, Body { ptr, len, owner }) };
    }

    /// Hands a frame to the transport that reaches `to`; a failure marks the peer lost.
    ///
    /// # Safety
    /// As [`Transport::send`]: `body` is readable for its length, until `on_sent` when it
    /// has an owner.
    unsafe fn hand_over(&mut self, to: ERank, header: &Header, body: Body) {
        // Small eager messages take the compact header form (fewer bytes to copy, fewer cache
        // lines of a shared ring).
        let bytes = header.encode_short().0;
        let transport: &mut dyn Transport = match (self.shm.as_mut(), self.tcp.as_mut()) {
            (Some(shm), _) if shm.reaches(to) => shm,
            (_, Some(tcp)) => tcp,
            _ => return,
        };
        if let Some(req) = body.owner {
            *self.lent.get_or_insert_with(req, || 0) += 1;
        }
        // SAFETY: forwarded from the caller.
        let res = unsafe { transport.send(to, &bytes, body) };
        if let Err(e) = res {
            // The engine completes a send after its frames are handed out, so nothing waits
            // on the buffer yet: dropping the count is enough.
            if let Some(req) = body.owner {
                give_back(&mut self.lent, req);
            }
            self.lost.entry(to.0).or_insert_with(|| e.to_string());
            self.engine.handle_peer_lost(to);
        }
    }

    /// Copies a message straight out of the sender's memory into a receive buffer. Returns
    /// false when the copy failed (the engine then asks the sender to push the data).
    fn pull(&mut self, p: &braid_engine::Pull) -> bool {
        let (Some(shm), Some(part)) = (
            self.shm.as_ref(),
            self.recvs.get(&p.req).and_then(|b| b.part(p.offset, p.len)),
        ) else {
            return false;
        };
        // SAFETY: the receive buffer is valid for writes and borrowed by its request.
        shm.pull(p.from, p.addr, unsafe { &mut *part })
    }

    /// Copies the pulls of `batch` (all from one peer, at least one) with one call; returns
    /// how many leading ones were copied whole (the caller copies the rest with
    /// [`Core::pull`], which also handles a failure on its own).
    fn pull_many(&mut self, batch: &[braid_engine::Pull]) -> usize {
        let Some(shm) = self.shm.as_ref() else {
            return 0;
        };
        let mut parts = [braid_shm::ReadPart {
            remote: 0,
            local: std::ptr::null_mut(),
            len: 0,
        }; PULL_BATCH];
        for (part, p) in parts.iter_mut().zip(batch) {
            let Some(dst) = self.recvs.get(&p.req).and_then(|b| b.part(p.offset, p.len)) else {
                return 0;
            };
            *part = braid_shm::ReadPart {
                remote: p.addr,
                local: dst.cast(),
                len: dst.len(),
            };
        }
        // SAFETY: each part lies inside a receive buffer that is valid for writes and
        // borrowed by its request until the request completes, after this call.
        unsafe { shm.pull_many(batch[0].from, &parts[..batch.len()]) }
    }

    /// Copies the sender's part of a split transfer straight into the receiver's buffer.
    /// Returns false when the copy failed (the receiver then pulls those bytes itself).
    fn push(&mut self, p: &braid_engine::Push) -> bool {
        let (Some(shm), Some(part)) = (
            self.shm.as_ref(),
            self.sends.get(&p.req).and_then(|b| b.part(p.offset, p.len)),
        ) else {
            return false;
        };
        // SAFETY: the send buffer is valid for reads until its request completes, which
        // needs the receiver's FIN after this push.
        shm.push(p.to, p.addr, unsafe { &*part })
    }

    /// Delivers a frame addressed to this rank.
    fn loopback(&mut self, h: &Header, ptr: *const u8, len: usize) {
        let me = ERank(self.rank);
        let inc = match self.engine.handle_header(me, h) {
            Ok(i) => i,
            Err(e) => {
                self.lost.entry(self.rank).or_insert_with(|| e.to_string());
                return;
            }
        };
        if let Ok(d) = dest_for(
            &mut self.engine,
            &self.recvs,
            inc.token,
            &inc.placement,
            h.payload_len,
        ) && d.take > 0
        {
            // SAFETY: `ptr` holds `len` readable bytes of a send buffer; `d.ptr` holds
            // `d.take` writable bytes; d.take <= payload_len == len. The regions belong to
            // different requests (MPI forbids aliasing send and receive buffers).
            unsafe { std::ptr::copy_nonoverlapping(ptr, d.ptr, d.take.min(len)) };
        }
        self.engine.handle_payload(inc.token);
    }

    fn complete(&mut self, c: Completion) {
        let result = match c.outcome {
            Outcome::Sent => {
                if self.lent.contains_key(&c.req) {
                    self.sent_waiting.insert(c.req, ());
                    return;
                }
                self.sends.remove(&c.req);
                Ok(sent_status())
            }
            Outcome::Received { status, buffered } => {
                let buf = self.recvs.remove(&c.req);
                if let Some(data) = buffered {
                    if let Some(buf) = buf {
                        let n = (status.stored as usize).min(buf.len).min(data.len());
                        // SAFETY: the receive buffer is valid for buf.len bytes, n <= buf.len.
                        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.ptr, n) };
                    }
                    self.engine.recycle(data);
                }
                Ok(status)
            }
            Outcome::PeerLost { peer } => {
                self.sends.remove(&c.req);
                self.recvs.remove(&c.req);
                Err(Error::PeerLost {
                    rank: peer.0 as i32,
                    reason: self
                        .lost
                        .get(&peer.0)
                        .cloned()
                        .unwrap_or_else(|| "connection lost".into()),
                })
            }
        };
        self.finished.insert(c.req, result);
    }

    /// Writes every queued frame (bounded by `deadline`).
    pub(crate) fn flush(&mut self, deadline: Instant) -> Result<(), Error> {
        while self.tcp.as_ref().is_some_and(Transport::has_pending_writes)
            || self.shm.as_ref().is_some_and(Transport::has_pending_writes)
            || !self.lent.is_empty()
        {
            if Instant::now() >= deadline {
                return Err(Error::LocalOs("timed out flushing outgoing data".into()));
            }
            self.progress(Some(Duration::from_millis(10)))?;
        }
        Ok(())
    }

    /// Why world rank `rank` was lost, if it was (shared-memory collectives poll this while
    /// they wait for a peer).
    pub(crate) fn lost_reason(&self, rank: u32) -> Option<&str> {
        self.lost.get(&rank).map(String::as_str)
    }
}

/// The status of a completed send.
pub(crate) fn sent_status() -> RecvStatus {
    RecvStatus {
        source: ERank(0),
        tag: braid_engine::Tag(0),
        len: 0,
        stored: 0,
    }
}

fn usage(e: braid_engine::UsageError) -> Error {
    match e {
        braid_engine::UsageError::InvalidRank { rank, size } => Error::UsageInvalidRank {
            rank: rank.0 as i32,
            size: size as i32,
        },
        braid_engine::UsageError::InvalidTag(t) => Error::UsageInvalidTag(t.0),
        other => Error::LocalOs(other.to_string()),
    }
}

/// Spins of the TCP receive fast path ([`Core::recv_direct`]) between two full progress
/// passes: with a `read` per spin, some 20 microseconds.
const TCP_POLL_EVERY: u32 = 64;

/// Most single-copy pulls from one peer copied in one call (`process_vm_readv` with several
/// ranges): the syscall's fixed cost is about a tenth of a 64 KiB copy.
const PULL_BATCH: usize = 8;
const _: () = assert!(PULL_BATCH <= braid_shm::MAX_PARTS);

/// Most bytes one batch of pulls copies; larger pulls go alone. Bounds how long the first
/// pull's FIN waits for the others (about 10 us).
const PULL_BATCH_BYTES: u64 = 256 << 10;

/// Rounds of [`Core::spin_for_input`] between two full progress passes (a few hundred
/// nanoseconds: idle TCP listeners and timers are still polled often).
const QUIET_SPINS: u32 = 64;

/// Spin-then-block schedule of one wait.
#[derive(Debug)]
struct Waiter {
    policy: SpinPolicy,
    /// When the wait started, read at its 8th poll.
    start: Option<Instant>,
    polls: u32,
    /// The spin budget is used up: every further poll blocks.
    blocking: bool,
}

impl Waiter {
    fn new(policy: SpinPolicy) -> Self {
        Self {
            policy,
            start: None,
            polls: 0,
            blocking: false,
        }
    }

    /// Timeout for the next poll: zero while spinning, then a bounded block.
    fn next_timeout(&mut self) -> Option<Duration> {
        if self.blocking {
            return Some(Duration::from_millis(50));
        }
        self.polls = self.polls.wrapping_add(1);
        // The clock is read only once the wait has lasted a few polls: short waits (the
        // latency-critical ones) never pay for it.
        if self.polls.is_multiple_of(8) {
            let start = *self.start.get_or_insert_with(Instant::now);
            if start.elapsed() >= self.policy.spin {
                self.blocking = true;
            }
        }
        if self.policy.yield_between {
            std::thread::yield_now();
        }
        Some(Duration::ZERO)
    }
}
