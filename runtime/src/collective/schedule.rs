//! Collective schedules: every collective is built as a list of rounds of point-to-point
//! steps and local steps, then run to completion (blocking) or advanced on every wait and
//! test (nonblocking), in the manner of libNBC (Hoefler, Lumsdaine and Rehm, SC 2007).
//!
//! A round posts all its sends and receives at once; when they have all completed, its local
//! steps (copies and reductions) run in order and the next round starts. Messages between two
//! ranks within one schedule therefore match in program order (MPI's non-overtaking rule), and
//! concurrent schedules never match each other because each carries its own tag.

use braid_engine::{ContextId, ReqId};

use super::op::ResolvedOp;
use crate::core::{Core, Outgoing};
use crate::datatype::Datatype;
use crate::error::Error;

/// Which memory a slice lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loc {
    /// The caller's send buffer (read only).
    Send,
    /// The caller's receive buffer.
    Recv,
    /// Temporary buffer `i`, owned by the schedule.
    Tmp(usize),
}

/// A byte range of one buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slice {
    pub(crate) loc: Loc,
    pub(crate) off: usize,
    pub(crate) len: usize,
}

impl Slice {
    pub(crate) fn new(loc: Loc, off: usize, len: usize) -> Self {
        Self { loc, off, len }
    }

    /// The sub-range `[from, from + len)` of this slice.
    pub(crate) fn sub(self, from: usize, len: usize) -> Self {
        debug_assert!(
            from + len <= self.len,
            "sub-slice {from}+{len} of {}",
            self.len
        );
        Self {
            loc: self.loc,
            off: self.off + from,
            len,
        }
    }

    /// A zero-length slice (for barrier messages).
    pub(crate) fn empty() -> Self {
        Self::new(Loc::Recv, 0, 0)
    }
}

/// One step of a round. Peers are communicator ranks.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    Send {
        to: usize,
        src: Slice,
    },
    Recv {
        from: usize,
        dst: Slice,
    },
    Copy {
        src: Slice,
        dst: Slice,
    },
    /// `inout = input ∘ inout`.
    Reduce {
        input: Slice,
        inout: Slice,
    },
    /// `left = left ∘ right`.
    ReduceLeft {
        left: Slice,
        right: Slice,
    },
    /// Packs `count` elements of datatype `types[ty]` laid out from the start of `src` into
    /// `dst` (`MPI_Pack`; `MPI_Alltoallw` with non-contiguous types).
    Pack {
        ty: usize,
        count: usize,
        src: Slice,
        dst: Slice,
    },
    /// Unpacks `src` into `count` elements of `types[ty]` laid out from the start of `dst`.
    Unpack {
        ty: usize,
        count: usize,
        src: Slice,
        dst: Slice,
    },
}

/// A collective, ready to run.
#[derive(Debug)]
pub(crate) struct Schedule {
    /// Name of the MPI operation, for errors.
    pub(crate) name: &'static str,
    /// Every step, round after round (one flat vector: building a schedule allocates little).
    steps: Vec<Step>,
    /// Index in `steps` of the first step of each round; never empty.
    starts: Vec<usize>,
    tmps: Vec<Vec<u8>>,
    /// Caller's send buffer. Invariant: valid for reads of `send.1` bytes while the schedule
    /// runs (the request handle borrows it).
    send: (*const u8, usize),
    /// Caller's receive buffer. Invariant: valid for writes of `recv.1` bytes, and accessed only
    /// through the schedule, while it runs.
    recv: (*mut u8, usize),
    op: Option<ResolvedOp>,
    /// Datatypes of the `Pack`/`Unpack` steps (indexed by their `ty`).
    types: Vec<Datatype>,
    /// World rank of each communicator rank.
    world: Vec<u32>,
    ctx: ContextId,
    /// The call's tag; `None` until the schedule starts, so that a call refused by local
    /// checks draws no call number (see `collective::next_tag`).
    tag: Option<i32>,
}

impl Schedule {
    /// An empty schedule over a communicator (`world`: world rank of each rank) whose
    /// messages travel on `ctx` with `tag`.
    pub(crate) fn new(
        name: &'static str,
        world: Vec<u32>,
        ctx: ContextId,
        tag: Option<i32>,
    ) -> Self {
        Self {
            name,
            steps: Vec::with_capacity(8),
            starts: vec![0],
            tmps: Vec::new(),
            send: (std::ptr::null(), 0),
            recv: (std::ptr::null_mut(), 0),
            op: None,
            types: Vec::new(),
            world,
            ctx,
            tag,
        }
    }

    /// Sets the caller's buffers.
    ///
    /// # Safety
    /// `send` must stay valid for reads and `recv` for writes (and otherwise unaccessed) until
    /// the schedule has finished running.
    pub(crate) unsafe fn set_buffers(&mut self, send: &[u8], recv: &mut [u8]) {
        self.send = (send.as_ptr(), send.len());
        self.recv = (recv.as_mut_ptr(), recv.len());
    }

    /// Sets the reduction operation.
    pub(crate) fn set_op(&mut self, op: ResolvedOp) {
        self.op = Some(op);
    }

    /// A new temporary buffer of `len` bytes, as a slice.
    ///
    /// Temporaries come from a small per-thread pool (see [`take_tmp`]): their contents are
    /// unspecified (stale bytes of an earlier collective), and every algorithm writes a
    /// temporary range (by a receive or a copy) before it reads it.
    pub(crate) fn tmp(&mut self, len: usize) -> Slice {
        self.tmps.push(take_tmp(len));
        Slice::new(Loc::Tmp(self.tmps.len() - 1), 0, len)
    }

    /// Ends the current round; later steps go into a new one.
    pub(crate) fn round(&mut self) {
        if self.starts.last().is_some_and(|&b| b < self.steps.len()) {
            self.starts.push(self.steps.len());
        }
    }

    fn push(&mut self, s: Step) {
        self.steps.push(s);
    }

    /// Number of rounds.
    fn rounds(&self) -> usize {
        self.starts.len()
    }

    /// Indices in `steps` of round `r`.
    fn round_steps(&self, r: usize) -> std::ops::Range<usize> {
        self.starts[r]..self.starts.get(r + 1).copied().unwrap_or(self.steps.len())
    }

    pub(crate) fn send(&mut self, to: usize, src: Slice) {
        self.push(Step::Send { to, src });
    }
    pub(crate) fn recv(&mut self, from: usize, dst: Slice) {
        self.push(Step::Recv { from, dst });
    }
    pub(crate) fn copy(&mut self, src: Slice, dst: Slice) {
        debug_assert_eq!(src.len, dst.len);
        if src != dst && src.len > 0 {
            self.push(Step::Copy { src, dst });
        }
    }
    pub(crate) fn reduce(&mut self, input: Slice, inout: Slice) {
        debug_assert_eq!(input.len, inout.len);
        self.push(Step::Reduce { input, inout });
    }
    pub(crate) fn reduce_left(&mut self, left: Slice, right: Slice) {
        debug_assert_eq!(left.len, right.len);
        self.push(Step::ReduceLeft { left, right });
    }
    /// Packs `count` elements of `dt` whose layout starts at `src` into `dst` (the caller has
    /// checked that the layout stays inside `src` with [`Datatype::check_span`]).
    pub(crate) fn pack(&mut self, dt: &Datatype, count: usize, src: Slice, dst: Slice) {
        self.types.push(dt.clone());
        let ty = self.types.len() - 1;
        self.push(Step::Pack {
            ty,
            count,
            src,
            dst,
        });
    }
    /// Unpacks `src` into `count` elements of `dt` laid out from the start of `dst`.
    pub(crate) fn unpack(&mut self, dt: &Datatype, count: usize, src: Slice, dst: Slice) {
        self.types.push(dt.clone());
        let ty = self.types.len() - 1;
        self.push(Step::Unpack {
            ty,
            count,
            src,
            dst,
        });
    }

    fn ptr(&mut self, s: Slice) -> *mut u8 {
        let (base, len) = match s.loc {
            Loc::Send => (self.send.0.cast_mut(), self.send.1),
            Loc::Recv => (self.recv.0, self.recv.1),
            Loc::Tmp(i) => (self.tmps[i].as_mut_ptr(), self.tmps[i].len()),
        };
        assert!(
            s.off + s.len <= len,
            "{}: slice {s:?} outside a {len}-byte buffer",
            self.name
        );
        if s.len == 0 {
            return std::ptr::NonNull::dangling().as_ptr();
        }
        // SAFETY: off + len <= the buffer's length, checked above.
        unsafe { base.add(s.off) }
    }

    /// Runs the local steps of round `r`.
    fn local(&mut self, r: usize) -> Result<(), Error> {
        for i in self.round_steps(r) {
            let s = self.steps[i];
            match s {
                Step::Send { .. } | Step::Recv { .. } => {}
                Step::Pack {
                    ty,
                    count,
                    src,
                    dst,
                }
                | Step::Unpack {
                    ty,
                    count,
                    src,
                    dst,
                } => {
                    let (a, b) = (self.ptr(src), self.ptr(dst));
                    // SAFETY: both ranges are inside their buffers (checked by `ptr`); pack
                    // and unpack steps always join a temporary with a caller's buffer, so the
                    // two views do not alias.
                    let (x, y) = unsafe {
                        (
                            std::slice::from_raw_parts(a.cast_const(), src.len),
                            std::slice::from_raw_parts_mut(b, dst.len),
                        )
                    };
                    let dt = &self.types[ty];
                    let r = if matches!(s, Step::Pack { .. }) {
                        dt.pack_into(x, count, y, &mut 0)
                    } else {
                        dt.unpack_from(x, &mut 0, y, count)
                    };
                    r?;
                }
                Step::Copy { src, dst } => {
                    let (a, b) = (self.ptr(src), self.ptr(dst));
                    // SAFETY: both ranges are inside their buffers (checked by `ptr`); copy
                    // allows overlap.
                    unsafe { std::ptr::copy(a, b, src.len) };
                }
                Step::Reduce { input, inout }
                | Step::ReduceLeft {
                    left: inout,
                    right: input,
                } => {
                    if self.op.is_none() {
                        return Err(Error::LocalOs(format!(
                            "{}: reduction without an operation",
                            self.name
                        )));
                    }
                    if input.len == 0 {
                        continue;
                    }
                    let (a, b) = (self.ptr(input), self.ptr(inout));
                    let Some(op) = self.op.as_ref() else {
                        continue;
                    };
                    // SAFETY: both ranges are inside their buffers; algorithms never reduce a
                    // range into an overlapping one, so the shared and the exclusive view do
                    // not alias.
                    let (x, y) = unsafe {
                        (
                            std::slice::from_raw_parts(a.cast_const(), input.len),
                            std::slice::from_raw_parts_mut(b, inout.len),
                        )
                    };
                    if matches!(s, Step::Reduce { .. }) {
                        op.apply(x, y);
                    } else {
                        op.apply_left(y, x);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Schedule {
    fn drop(&mut self) {
        for v in self.tmps.drain(..) {
            give_tmp(v);
        }
    }
}

/// Temporaries kept for reuse: at most this many buffers per thread...
const POOL_BUFS: usize = 4;
/// ...of at most this many bytes each.
const POOL_MAX_BYTES: usize = 16 << 20;

thread_local! {
    /// Temporary buffers of finished schedules. Reusing them spares every collective with
    /// temporaries an allocation and, for large ones, the page faults and zeroing of fresh
    /// `mmap`ed memory (hundreds of microseconds per MiB), which dominated large reduces.
    static POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer of `len` initialized (but unspecified) bytes.
pub(crate) fn take_tmp(len: usize) -> Vec<u8> {
    if len == 0 {
        return Vec::new();
    }
    let got = POOL
        .try_with(|p| {
            let mut p = p.borrow_mut();
            // Smallest buffer that fits, else the largest (grown below).
            let fit = (0..p.len())
                .filter(|&i| p[i].capacity() >= len)
                .min_by_key(|&i| p[i].capacity());
            let pick = fit.or_else(|| (0..p.len()).max_by_key(|&i| p[i].capacity()));
            pick.map(|i| p.swap_remove(i))
        })
        .ok()
        .flatten();
    let mut v = got.unwrap_or_default();
    // The buffer keeps its whole initialized length (slices address only their `len` bytes),
    // so a reused buffer is never zeroed again.
    if v.len() < len {
        v.resize(len, 0);
    }
    v
}

/// Returns a temporary buffer to the pool.
pub(crate) fn give_tmp(v: Vec<u8>) {
    if v.capacity() == 0 || v.capacity() > POOL_MAX_BYTES {
        return;
    }
    let _ = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_BUFS {
            p.push(v);
        } else if let Some(i) = (0..p.len()).min_by_key(|&i| p[i].capacity())
            && p[i].capacity() < v.capacity()
        {
            p[i] = v;
        }
    });
}

/// A schedule being run.
#[derive(Debug)]
pub(crate) struct Exec {
    sched: Schedule,
    /// Index of the round in progress.
    round: usize,
    /// Whether the current round's messages have been posted.
    posted: bool,
    /// Posted requests not yet collected, with the length a receive must deliver.
    pending: Vec<(ReqId, Option<usize>, usize)>,
    /// First error seen; reported when the schedule ends and on every later advance.
    error: Option<Error>,
    done: bool,
}

// SAFETY: the raw buffer pointers are dereferenced only while the request handle that owns
// this Exec keeps the buffers borrowed; the registry that may advance it from another call
// site takes the Exec's mutex first.
unsafe impl Send for Exec {}

impl Exec {
    pub(crate) fn new(mut sched: Schedule) -> Self {
        if sched.tag.is_none() {
            sched.tag = Some(super::next_tag(sched.ctx));
        }
        Self {
            sched,
            round: 0,
            posted: false,
            pending: Vec::with_capacity(4),
            error: None,
            done: false,
        }
    }

    /// An already finished, empty schedule.
    pub(crate) fn finished() -> Self {
        let mut e = Self::new(Schedule::new("none", Vec::new(), ContextId(0), Some(0)));
        e.done = true;
        e
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Posts the messages of the current round.
    fn post(&mut self, c: &mut Core) -> Result<(), Error> {
        let tag = self.sched.tag.unwrap_or(0);
        for i in self.sched.round_steps(self.round) {
            match self.sched.steps[i] {
                Step::Send { to, src } => {
                    let p = self.sched.ptr(src);
                    let w = self.sched.world[to];
                    let m = Outgoing::standard(self.sched.ctx, w, tag, p, src.len);
                    // SAFETY: the range is inside a buffer that lives until the schedule ends
                    // (see the invariants of `Schedule::send`/`recv`/`tmps`).
                    let id = unsafe { c.isend(m) }?;
                    self.pending.push((id, None, to));
                }
                Step::Recv { from, dst } => {
                    let p = self.sched.ptr(dst);
                    let w = self.sched.world[from];
                    // SAFETY: as above, and the range is written only by this receive until it
                    // completes.
                    let id = unsafe { c.irecv(self.sched.ctx, Some(w), Some(tag), p, dst.len) }?;
                    self.pending.push((id, Some(dst.len), from));
                }
                _ => {}
            }
        }
        self.posted = true;
        Ok(())
    }

    fn record(&mut self, f: crate::core::Finished, expect: Option<usize>, peer: usize) {
        let e = match f {
            Err(e) => Some(e),
            Ok(s) => match expect {
                Some(cap) if s.truncated() => Some(Error::UsageTruncated {
                    source_rank: peer as i32,
                    tag: s.tag.0,
                    len: s.len as usize,
                    capacity: cap,
                }),
                Some(cap) if s.len as usize != cap => Some(Error::UsageCountMismatch {
                    op: self.sched.name,
                    detail: format!("rank {peer} sent {} bytes where {cap} were expected", s.len),
                }),
                _ => None,
            },
        };
        if let Some(e) = e {
            self.error.get_or_insert(e);
        }
    }

    /// Advances as far as possible. With `block`, waits for every request and returns only
    /// when the schedule is finished. Returns whether it is finished.
    ///
    /// # Errors
    /// The first error of any step, once every posted request has completed.
    pub(crate) fn advance(&mut self, c: &mut Core, block: bool) -> Result<bool, Error> {
        loop {
            if self.done {
                return match &self.error {
                    Some(e) => Err(e.clone()),
                    None => Ok(true),
                };
            }
            while let Some(&(id, expect, peer)) = self.pending.first() {
                let f = if block {
                    c.wait(id)?
                } else {
                    match c.test(id)? {
                        Some(f) => f,
                        None => return Ok(false),
                    }
                };
                self.pending.remove(0);
                self.record(f, expect, peer);
            }
            if self.round >= self.sched.rounds() {
                self.done = true;
                return match &self.error {
                    Some(e) => Err(e.clone()),
                    None => Ok(true),
                };
            }
            if self.posted {
                // After an error the rounds still run (without local steps) so that the
                // other members, which may not have seen it, are not left waiting.
                if self.error.is_none()
                    && let Err(e) = self.sched.local(self.round)
                {
                    self.error = Some(e);
                }
                self.round += 1;
                self.posted = false;
            } else if let Err(e) = self.post(c) {
                self.error.get_or_insert(e);
                self.posted = true;
            }
        }
    }
}
