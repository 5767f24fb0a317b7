//! Communicators, processes, and the point-to-point operations on them.
//!
//! # Standard section(s)
//! MPI-4.1 §3 (point-to-point communication), §7 (groups, contexts, communicators).
//!
//! # Not yet implemented
//! Communicator creation (dup, split), groups, topologies, buffered and ready send modes.

use braid_engine::{ContextId, ReqId, SendMode};

use crate::core::{Finished, WORLD_COLL_CONTEXT, WORLD_CONTEXT, with_core};
use crate::datatype::{Buffer, BufferMut, Equivalence, zeroed_vec};
use crate::error::Error;
use crate::request::{Kind, Request, Scope};

/// A process's rank in a communicator (rsmpi's `Rank`).
pub type Rank = i32;
/// A message tag.
pub type Tag = i32;

/// The envelope of a received message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    source: Rank,
    tag: Tag,
    bytes: usize,
}

impl Status {
    /// The sender's rank (`MPI_SOURCE`); -1 for a send.
    pub fn source(&self) -> Rank {
        self.source
    }

    /// The message's tag (`MPI_TAG`); -1 for a send.
    pub fn tag(&self) -> Tag {
        self.tag
    }

    /// Number of bytes received.
    pub fn count_bytes(&self) -> usize {
        self.bytes
    }

    /// Number of whole `T` elements received (`MPI_Get_count`).
    pub fn count<T: Equivalence>(&self) -> usize {
        self.bytes / size_of::<T>().max(1)
    }

    pub(crate) fn from_finished(f: Finished, kind: Kind) -> Result<Self, Error> {
        let s = f?;
        match kind {
            Kind::Send => Ok(Self {
                source: -1,
                tag: -1,
                bytes: 0,
            }),
            Kind::Recv { capacity } => {
                if s.truncated() {
                    return Err(Error::UsageTruncated {
                        source_rank: s.source.0 as Rank,
                        tag: s.tag.0,
                        len: s.len as usize,
                        capacity,
                    });
                }
                Ok(Self {
                    source: s.source.0 as Rank,
                    tag: s.tag.0,
                    bytes: s.stored as usize,
                })
            }
        }
    }
}

mod sealed {
    use braid_engine::ContextId;

    /// Implementation details every communicator provides.
    pub trait Sealed {
        fn contexts(&self) -> (ContextId, ContextId);
    }

    /// Implementation details of a source or destination.
    pub trait Peer {
        fn context(&self) -> ContextId;
        fn peer(&self) -> Option<u32>;
    }
}

/// Operations of every communicator (rsmpi's `Communicator`). Sealed.
pub trait Communicator: sealed::Sealed {
    /// This process's rank (`MPI_Comm_rank`).
    fn rank(&self) -> Rank;

    /// Number of processes (`MPI_Comm_size`).
    fn size(&self) -> Rank;

    /// The process at rank `r`, as a source or destination. An `r` outside the communicator
    /// gives [`Error::UsageInvalidRank`] when used.
    fn process_at_rank(&self, r: Rank) -> Process<'_>
    where
        Self: Sized,
    {
        Process {
            ctx: self.contexts().0,
            rank: r,
            size: self.size(),
            _comm: std::marker::PhantomData,
        }
    }

    /// Any process, as a source (`MPI_ANY_SOURCE`).
    fn any_process(&self) -> AnyProcess<'_>
    where
        Self: Sized,
    {
        AnyProcess {
            ctx: self.contexts().0,
            _comm: std::marker::PhantomData,
        }
    }

    /// This process, as a source or destination.
    fn this_process(&self) -> Process<'_>
    where
        Self: Sized,
    {
        self.process_at_rank(self.rank())
    }

    /// Blocks until every process has called it (`MPI_Barrier`).
    ///
    /// # Errors
    /// A lost peer or a local failure.
    fn barrier(&self) -> Result<(), Error> {
        let ctx = self.contexts().1;
        with_core(|c| crate::collective::barrier(c, ctx))
    }

    /// The name of the host this process runs on (`MPI_Get_processor_name`).
    ///
    /// # Errors
    /// None today; the signature leaves room for hosts whose name cannot be read.
    fn processor_name(&self) -> Result<String, Error> {
        Ok(with_core(|c| c.host.clone()))
    }

    /// Ends the whole job with `code` (`MPI_Abort`).
    fn abort(&self, code: i32) -> ! {
        crate::bootstrap::abort(code)
    }
}

/// The world communicator: every process of the job.
#[derive(Debug)]
pub struct SimpleCommunicator {
    rank: Rank,
    size: Rank,
}

impl SimpleCommunicator {
    pub(crate) fn world(rank: u32, size: u32) -> Self {
        Self {
            rank: rank as Rank,
            size: size as Rank,
        }
    }
}

impl sealed::Sealed for SimpleCommunicator {
    fn contexts(&self) -> (ContextId, ContextId) {
        (WORLD_CONTEXT, WORLD_COLL_CONTEXT)
    }
}

impl Communicator for SimpleCommunicator {
    fn rank(&self) -> Rank {
        self.rank
    }
    fn size(&self) -> Rank {
        self.size
    }
}

/// One process of a communicator.
#[derive(Debug, Clone, Copy)]
pub struct Process<'a> {
    ctx: ContextId,
    rank: Rank,
    size: Rank,
    _comm: std::marker::PhantomData<&'a ()>,
}

impl Process<'_> {
    /// Its rank.
    pub fn rank(&self) -> Rank {
        self.rank
    }

    fn checked(&self) -> Result<u32, Error> {
        if (0..self.size).contains(&self.rank) {
            Ok(self.rank as u32)
        } else {
            Err(Error::UsageInvalidRank {
                rank: self.rank,
                size: self.size,
            })
        }
    }
}

/// Every process of a communicator, as a receive source (`MPI_ANY_SOURCE`).
#[derive(Debug, Clone, Copy)]
pub struct AnyProcess<'a> {
    ctx: ContextId,
    _comm: std::marker::PhantomData<&'a ()>,
}

impl sealed::Peer for Process<'_> {
    fn context(&self) -> ContextId {
        self.ctx
    }
    fn peer(&self) -> Option<u32> {
        Some(self.rank as u32)
    }
}

impl sealed::Peer for AnyProcess<'_> {
    fn context(&self) -> ContextId {
        self.ctx
    }
    fn peer(&self) -> Option<u32> {
        None
    }
}

fn check_tag(tag: Tag) -> Result<i32, Error> {
    if tag < 0 {
        Err(Error::UsageInvalidTag(tag))
    } else {
        Ok(tag)
    }
}

/// Something messages can be received from: one process or any (rsmpi's `Source`).
pub trait Source: sealed::Peer {
    /// Checks the source before use.
    #[doc(hidden)]
    fn source_rank(&self) -> Result<Option<u32>, Error>;

    /// Receives into `buf`, any tag (`MPI_Recv`).
    ///
    /// # Errors
    /// [`Error::UsageTruncated`] when the message is longer than `buf`; a lost peer.
    fn receive_into<B: BufferMut + ?Sized>(&self, buf: &mut B) -> Result<Status, Error> {
        recv_into(self.context(), self.source_rank()?, None, buf)
    }

    /// Receives into `buf` a message with tag `tag`.
    ///
    /// # Errors
    /// As [`Source::receive_into`]; a negative tag.
    fn receive_into_with_tag<B: BufferMut + ?Sized>(
        &self,
        buf: &mut B,
        tag: Tag,
    ) -> Result<Status, Error> {
        recv_into(self.context(), self.source_rank()?, Some(check_tag(tag)?), buf)
    }

    /// Receives one value.
    ///
    /// # Errors
    /// As [`Source::receive_into`].
    fn receive<T: Equivalence>(&self) -> Result<(T, Status), Error> {
        let mut v = zeroed_vec::<T>(1);
        let s = recv_into(self.context(), self.source_rank()?, None, &mut v[..])?;
        Ok((v[0], s))
    }

    /// Receives a message of any length into a new vector (probe, then receive).
    ///
    /// # Errors
    /// A message that is not a whole number of `T`; a lost peer.
    fn receive_vec<T: Equivalence>(&self) -> Result<(Vec<T>, Status), Error> {
        recv_vec(self.context(), self.source_rank()?, None)
    }

    /// Receives a message with tag `tag` into a new vector.
    ///
    /// # Errors
    /// As [`Source::receive_vec`]; a negative tag.
    fn receive_vec_with_tag<T: Equivalence>(&self, tag: Tag) -> Result<(Vec<T>, Status), Error> {
        recv_vec(self.context(), self.source_rank()?, Some(check_tag(tag)?))
    }

    /// Starts a receive into `buf` (`MPI_Irecv`).
    ///
    /// # Errors
    /// An invalid source.
    fn immediate_receive_into<'a, S: Scope<'a>, B: BufferMut + ?Sized>(
        &self,
        scope: S,
        buf: &'a mut B,
    ) -> Result<Request<'a, S>, Error> {
        irecv(self.context(), self.source_rank()?, None, scope, buf)
    }

    /// Starts a receive of a message with tag `tag` into `buf`.
    ///
    /// # Errors
    /// An invalid source or tag.
    fn immediate_receive_into_with_tag<'a, S: Scope<'a>, B: BufferMut + ?Sized>(
        &self,
        scope: S,
        buf: &'a mut B,
        tag: Tag,
    ) -> Result<Request<'a, S>, Error> {
        irecv(self.context(), self.source_rank()?, Some(check_tag(tag)?), scope, buf)
    }

    /// Blocks until a message is available and returns its envelope (`MPI_Probe`).
    ///
    /// # Errors
    /// A lost peer.
    fn probe(&self) -> Result<Status, Error> {
        let (ctx, src) = (self.context(), self.source_rank()?);
        with_core(|c| c.probe(ctx, src, None)).map(probe_status)
    }

    /// Blocks until a message with tag `tag` is available.
    ///
    /// # Errors
    /// A lost peer; a negative tag.
    fn probe_with_tag(&self, tag: Tag) -> Result<Status, Error> {
        let (ctx, src, tag) = (self.context(), self.source_rank()?, check_tag(tag)?);
        with_core(|c| c.probe(ctx, src, Some(tag))).map(probe_status)
    }

    /// Returns a message's envelope if one is available (`MPI_Iprobe`).
    ///
    /// # Errors
    /// A lost peer.
    fn immediate_probe(&self) -> Result<Option<Status>, Error> {
        let (ctx, src) = (self.context(), self.source_rank()?);
        with_core(|c| c.iprobe(ctx, src, None)).map(|o| o.map(probe_status))
    }

    /// Returns the envelope of a message with tag `tag` if one is available.
    ///
    /// # Errors
    /// A lost peer; a negative tag.
    fn immediate_probe_with_tag(&self, tag: Tag) -> Result<Option<Status>, Error> {
        let (ctx, src, tag) = (self.context(), self.source_rank()?, check_tag(tag)?);
        with_core(|c| c.iprobe(ctx, src, Some(tag))).map(|o| o.map(probe_status))
    }
}

impl Source for Process<'_> {
    fn source_rank(&self) -> Result<Option<u32>, Error> {
        self.checked().map(Some)
    }
}

impl Source for AnyProcess<'_> {
    fn source_rank(&self) -> Result<Option<u32>, Error> {
        Ok(None)
    }
}

/// Something messages can be sent to (rsmpi's `Destination`).
pub trait Destination: sealed::Peer {
    /// Checks the destination before use.
    #[doc(hidden)]
    fn destination_rank(&self) -> Result<u32, Error>;

    /// Sends `buf` with tag 0 (`MPI_Send`).
    ///
    /// # Errors
    /// An invalid destination; a lost peer.
    fn send<B: Buffer + ?Sized>(&self, buf: &B) -> Result<(), Error> {
        send(self.context(), self.destination_rank()?, 0, buf, SendMode::Standard)
    }

    /// Sends `buf` with tag `tag`.
    ///
    /// # Errors
    /// As [`Destination::send`]; a negative tag.
    fn send_with_tag<B: Buffer + ?Sized>(&self, buf: &B, tag: Tag) -> Result<(), Error> {
        send(self.context(), self.destination_rank()?, check_tag(tag)?, buf, SendMode::Standard)
    }

    /// Sends `buf` and returns only once the receiver matched it (`MPI_Ssend`).
    ///
    /// # Errors
    /// As [`Destination::send`].
    fn synchronous_send<B: Buffer + ?Sized>(&self, buf: &B) -> Result<(), Error> {
        send(self.context(), self.destination_rank()?, 0, buf, SendMode::Synchronous)
    }

    /// Synchronous send with tag `tag`.
    ///
    /// # Errors
    /// As [`Destination::send_with_tag`].
    fn synchronous_send_with_tag<B: Buffer + ?Sized>(&self, buf: &B, tag: Tag) -> Result<(), Error> {
        let tag = check_tag(tag)?;
        send(self.context(), self.destination_rank()?, tag, buf, SendMode::Synchronous)
    }

    /// Starts a send of `buf` (`MPI_Isend`).
    ///
    /// # Errors
    /// An invalid destination.
    fn immediate_send<'a, S: Scope<'a>, B: Buffer + ?Sized>(
        &self,
        scope: S,
        buf: &'a B,
    ) -> Result<Request<'a, S>, Error> {
        isend(self.context(), self.destination_rank()?, 0, scope, buf, SendMode::Standard)
    }

    /// Starts a send of `buf` with tag `tag`.
    ///
    /// # Errors
    /// An invalid destination or tag.
    fn immediate_send_with_tag<'a, S: Scope<'a>, B: Buffer + ?Sized>(
        &self,
        scope: S,
        buf: &'a B,
        tag: Tag,
    ) -> Result<Request<'a, S>, Error> {
        let tag = check_tag(tag)?;
        isend(self.context(), self.destination_rank()?, tag, scope, buf, SendMode::Standard)
    }

    /// Starts a synchronous send (`MPI_Issend`).
    ///
    /// # Errors
    /// An invalid destination.
    fn immediate_synchronous_send<'a, S: Scope<'a>, B: Buffer + ?Sized>(
        &self,
        scope: S,
        buf: &'a B,
    ) -> Result<Request<'a, S>, Error> {
        isend(self.context(), self.destination_rank()?, 0, scope, buf, SendMode::Synchronous)
    }

    /// Starts a synchronous send with tag `tag`.
    ///
    /// # Errors
    /// An invalid destination or tag.
    fn immediate_synchronous_send_with_tag<'a, S: Scope<'a>, B: Buffer + ?Sized>(
        &self,
        scope: S,
        buf: &'a B,
        tag: Tag,
    ) -> Result<Request<'a, S>, Error> {
        let tag = check_tag(tag)?;
        isend(self.context(), self.destination_rank()?, tag, scope, buf, SendMode::Synchronous)
    }
}

impl Destination for Process<'_> {
    fn destination_rank(&self) -> Result<u32, Error> {
        self.checked()
    }
}

fn probe_status(s: braid_engine::RecvStatus) -> Status {
    Status {
        source: s.source.0 as Rank,
        tag: s.tag.0,
        bytes: s.len as usize,
    }
}

pub(crate) fn send<B: Buffer + ?Sized>(
    ctx: ContextId,
    to: u32,
    tag: i32,
    buf: &B,
    mode: SendMode,
) -> Result<(), Error> {
    let bytes = buf.as_bytes();
    with_core(|c| {
        // SAFETY: `bytes` stays borrowed until `wait` below has collected the request.
        let id = unsafe { c.isend(ctx, to, tag, bytes.as_ptr(), bytes.len(), mode) }?;
        c.wait(id).and_then(|f| Status::from_finished(f, Kind::Send)).map(drop)
    })
}

pub(crate) fn recv_into<B: BufferMut + ?Sized>(
    ctx: ContextId,
    from: Option<u32>,
    tag: Option<i32>,
    buf: &mut B,
) -> Result<Status, Error> {
    let bytes = buf.as_bytes_mut();
    let capacity = bytes.len();
    with_core(|c| {
        // SAFETY: `bytes` stays mutably borrowed until `wait` below has collected the request.
        let id = unsafe { c.irecv(ctx, from, tag, bytes.as_mut_ptr(), capacity) }?;
        c.wait(id)
            .and_then(|f| Status::from_finished(f, Kind::Recv { capacity }))
    })
}

fn recv_vec<T: Equivalence>(
    ctx: ContextId,
    from: Option<u32>,
    tag: Option<i32>,
) -> Result<(Vec<T>, Status), Error> {
    let p = with_core(|c| c.probe(ctx, from, tag))?;
    let elem = size_of::<T>().max(1);
    let len = p.len as usize;
    if !len.is_multiple_of(elem) {
        return Err(Error::UsageElementSize { len, elem });
    }
    let mut v = zeroed_vec::<T>(len / elem);
    // The probed message is the first from its source with its tag, so a receive naming both
    // gets exactly it.
    let s = recv_into(ctx, Some(p.source.0), Some(p.tag.0), &mut v[..])?;
    Ok((v, s))
}

fn isend<'a, S: Scope<'a>, B: Buffer + ?Sized>(
    ctx: ContextId,
    to: u32,
    tag: i32,
    scope: S,
    buf: &'a B,
    mode: SendMode,
) -> Result<Request<'a, S>, Error> {
    let bytes = buf.as_bytes();
    // SAFETY: `buf` is borrowed for 'a, and the request (or its scope) waits for completion
    // before 'a ends.
    let id: ReqId = with_core(|c| unsafe { c.isend(ctx, to, tag, bytes.as_ptr(), bytes.len(), mode) })?;
    Ok(Request::new(id, scope, Kind::Send))
}

fn irecv<'a, S: Scope<'a>, B: BufferMut + ?Sized>(
    ctx: ContextId,
    from: Option<u32>,
    tag: Option<i32>,
    scope: S,
    buf: &'a mut B,
) -> Result<Request<'a, S>, Error> {
    let bytes = buf.as_bytes_mut();
    let capacity = bytes.len();
    // SAFETY: `buf` is mutably borrowed for 'a, and the request (or its scope) waits for
    // completion before 'a ends.
    let id = with_core(|c| unsafe { c.irecv(ctx, from, tag, bytes.as_mut_ptr(), capacity) })?;
    Ok(Request::new(id, scope, Kind::Recv { capacity }))
}
