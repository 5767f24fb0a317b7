//! Communicators, processes, and the point-to-point operations on them.
//!
//! # Standard section(s)
//! MPI-4.1 §3 (point-to-point communication), §7 (groups, contexts, communicators).
//!
//! A communicator holds its group (communicator rank → world rank and back), this process's
//! rank, and a context slot: two matching contexts, one for point-to-point messages and one
//! for collectives. The engine speaks world ranks; statuses are translated back here.
//! Context slots are agreed collectively (the lowest slot free at every member, by an
//! allreduce of free-slot bit masks on the parent's collective context) and released when the
//! last handle of a communicator is dropped.
//!
//! # Not yet implemented
//! Intercommunicators, attributes, names, `MPI_Comm_idup`, buffered and ready send modes.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use braid_engine::{ContextId, SendMode};

use crate::collective::Over;
use crate::core::{Finished, Outgoing, with_core};
use crate::datatype::{Buffer, BufferMut, Datatype, Equivalence, zeroed_vec};
use crate::error::Error;
use crate::group::{Group, GroupRelation};
use crate::request::{Kind, Request, Scope, StaticScope};

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
    /// The status of a finished collective (no source, no tag).
    pub(crate) fn collective() -> Self {
        Self {
            source: -1,
            tag: -1,
            bytes: 0,
        }
    }

    /// The source translated from a world rank to a rank of `g`.
    pub(crate) fn translated(mut self, g: &Group) -> Self {
        if self.source >= 0
            && let Some(r) = g.rank_of_world(self.source as u32)
        {
            self.source = r;
        }
        self
    }

    /// Number of whole elements of `datatype` received (`MPI_Get_count`); `None` when the
    /// bytes are not whole elements (`MPI_UNDEFINED`).
    pub fn count_with(&self, datatype: &Datatype) -> Option<usize> {
        datatype.count_of(self.bytes)
    }

    /// Number of primitive elements received, given the datatype received with
    /// (`MPI_Get_elements`).
    pub fn elements_with(&self, datatype: &Datatype) -> Option<usize> {
        datatype.elements_of(self.bytes)
    }

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
            Kind::Send | Kind::Collective => Ok(Self {
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

/// The data behind a communicator.
pub(crate) fn sealed_data(c: &SimpleCommunicator) -> &CommData {
    &c.data
}

pub(crate) mod sealed {
    use braid_engine::ContextId;

    /// Implementation details every communicator provides.
    pub trait Sealed {
        #[allow(private_interfaces)]
        fn data(&self) -> &super::CommData;
    }

    /// Implementation details of a source or destination.
    pub trait Peer {
        fn context(&self) -> ContextId;
        #[allow(private_interfaces)]
        fn comm(&self) -> &super::CommData;
    }
}

/// Context slots: slot k owns contexts 2k (point-to-point) and 2k+1 (collectives). Slot 0 is
/// the world's.
const SLOTS: usize = 1024;

/// Which slots this process uses. Invariant: bit k set iff a live communicator holds slot k
/// (slot 0 always).
static USED: Mutex<[u64; SLOTS / 64]> = Mutex::new(initial_slots());

const fn initial_slots() -> [u64; SLOTS / 64] {
    let mut a = [0u64; SLOTS / 64];
    a[0] = 1;
    a
}

fn used() -> std::sync::MutexGuard<'static, [u64; SLOTS / 64]> {
    USED.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The free slots of this process as a bit mask.
fn free_mask() -> Vec<u64> {
    used().iter().map(|w| !w).collect()
}

/// Lowest slot free in `mask` (the AND of every member's free mask).
pub(crate) fn lowest_free(mask: &[u64]) -> Option<u32> {
    mask.iter()
        .enumerate()
        .find(|(_, w)| **w != 0)
        .map(|(i, w)| (i * 64) as u32 + w.trailing_zeros())
}

fn claim(slot: u32) {
    used()[slot as usize / 64] |= 1 << (slot % 64);
}

fn release(slot: u32) {
    if slot != 0 {
        used()[slot as usize / 64] &= !(1 << (slot % 64));
    }
}

/// Agrees with the other members on the lowest slot free at all of them (an allreduce with
/// bitwise and over the members' free masks). Not claimed yet.
fn agree_slot(over: Over<'_>, members: usize) -> Result<u32, Error> {
    let mut mask = free_mask();
    crate::collective::allreduce_band_u64(over, &mut mask)?;
    lowest_free(&mask).ok_or(Error::LocalContextsExhausted {
        members: members as Rank,
    })
}

/// What every communicator holds.
#[derive(Debug)]
pub(crate) struct CommData {
    /// Members; the group rank is the communicator rank.
    group: Group,
    /// This process's rank. Invariant: `group.world_of(rank)` is this process.
    rank: Rank,
    /// Context slot (see [`SLOTS`]); released when the last handle is dropped (`MPI_Comm_free`).
    slot: u32,
    /// What the collectives keep for this communicator (its host levels, its host-local
    /// sub-communicator), made at the first call that needs it and dropped with it.
    coll: crate::collective::CommState,
}

impl CommData {
    fn new(group: Group, rank: Rank, slot: u32) -> Self {
        claim(slot);
        Self {
            group,
            rank,
            slot,
            coll: crate::collective::CommState::default(),
        }
    }

    pub(crate) fn group(&self) -> &Group {
        &self.group
    }

    pub(crate) fn rank_index(&self) -> usize {
        self.rank as usize
    }

    pub(crate) fn context(&self) -> ContextId {
        ContextId(2 * self.slot)
    }

    pub(crate) fn coll_context(&self) -> ContextId {
        ContextId(2 * self.slot + 1)
    }

    fn size(&self) -> Rank {
        self.group.size()
    }

    pub(crate) fn coll(&self) -> &crate::collective::CommState {
        &self.coll
    }

    /// A communicator of `members` (ranks of this one, in order, this process among them) for
    /// the runtime's own use, as one part of a partition of this communicator. Collective over
    /// this whole communicator, every member naming its own part: all parts share the context
    /// slot agreed here (disjoint groups, so their contexts never meet), as in
    /// `MPI_Comm_split`.
    ///
    /// # Errors
    /// [`Error::LocalContextsExhausted`] (at every member alike); a lost peer.
    pub(crate) fn part(&self, members: &[usize]) -> Result<Self, Error> {
        let slot = agree_slot(Over::comm(self), self.size() as usize)?;
        let world = members.iter().map(|i| self.group.world_of(*i)).collect();
        let group = Group::from_world_ranks(world)?;
        let me = self.group.world_of(self.rank_index());
        let rank = group
            .rank_of_world(me)
            .ok_or_else(|| Error::UsageArgument("this process is not in its part".into()))?;
        Ok(Self::new(group, rank, slot))
    }

    /// A new communicator over `group` (this process a member) on a fresh slot.
    fn derived(&self, group: Group, slot: u32) -> Result<SimpleCommunicator, Error> {
        let me = with_core(|c| c.rank);
        let rank = group
            .rank_of_world(me)
            .ok_or_else(|| Error::UsageArgument("this process is not in the new group".into()))?;
        Ok(SimpleCommunicator {
            data: Arc::new(Self::new(group, rank, slot)),
        })
    }
}

impl Drop for CommData {
    fn drop(&mut self) {
        if self.slot != 0 {
            crate::collective::forget_context(self.coll_context());
            release(self.slot);
        }
    }
}

/// A split color (`MPI_Comm_split`): non-negative, or undefined (not in any part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Color(i32);

impl Color {
    /// `MPI_UNDEFINED`: this process joins no new communicator.
    pub fn undefined() -> Self {
        Self(crate::group::UNDEFINED)
    }

    /// A color value; must not be negative.
    pub fn with_value(v: i32) -> Self {
        Self(v)
    }
}

/// How two communicators relate (`MPI_Comm_compare`), MPI's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommunicatorRelation {
    /// The same communicator (`MPI_IDENT`).
    Identical,
    /// Same members in the same order, other context (`MPI_CONGRUENT`).
    Congruent,
    /// Same members, other order (`MPI_SIMILAR`).
    Similar,
    /// Different members (`MPI_UNEQUAL`).
    Unequal,
}

/// Operations of every communicator (rsmpi's `Communicator`). Sealed.
///
/// # Standard section(s)
/// MPI-4.1 §7.4 (communicator management).
pub trait Communicator: sealed::Sealed {
    /// This process's rank (`MPI_Comm_rank`).
    fn rank(&self) -> Rank {
        self.data().rank
    }

    /// Number of processes (`MPI_Comm_size`).
    fn size(&self) -> Rank {
        self.data().size()
    }

    /// The group of the members (`MPI_Comm_group`).
    fn group(&self) -> Group {
        self.data().group.clone()
    }

    /// The process at rank `r`, as a source or destination. An `r` outside the communicator
    /// gives [`Error::UsageInvalidRank`] when used.
    fn process_at_rank(&self, r: Rank) -> Process<'_>
    where
        Self: Sized,
    {
        Process {
            comm: self.data(),
            rank: r,
        }
    }

    /// Any process, as a source (`MPI_ANY_SOURCE`).
    fn any_process(&self) -> AnyProcess<'_>
    where
        Self: Sized,
    {
        AnyProcess { comm: self.data() }
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
        crate::collective::comm_barrier(self.data())
    }

    /// A communicator with the same members and a new context (`MPI_Comm_dup`). Collective.
    ///
    /// # Errors
    /// [`Error::LocalContextsExhausted`]; a lost peer.
    fn duplicate(&self) -> Result<SimpleCommunicator, Error> {
        let d = self.data();
        let slot = agree_slot(Over::comm(d), d.size() as usize)?;
        d.derived(d.group.clone(), slot)
    }

    /// Splits by color, ordering each part by parent rank (`MPI_Comm_split`). Collective;
    /// `None` for [`Color::undefined`].
    ///
    /// # Errors
    /// A negative color; [`Error::LocalContextsExhausted`]; a lost peer.
    fn split_by_color(&self, color: Color) -> Result<Option<SimpleCommunicator>, Error> {
        self.split_by_color_with_key(color, 0)
    }

    /// Splits by color, ordering each part by `(key, parent rank)` (`MPI_Comm_split`).
    ///
    /// # Errors
    /// As [`Communicator::split_by_color`].
    fn split_by_color_with_key(
        &self,
        color: Color,
        key: Rank,
    ) -> Result<Option<SimpleCommunicator>, Error> {
        split(self.data(), color, key)
    }

    /// Splits into the processes of each host (`MPI_Comm_split_type` with
    /// `MPI_COMM_TYPE_SHARED`); ranks keep their order.
    ///
    /// # Errors
    /// As [`Communicator::split_by_color`].
    fn split_shared(&self) -> Result<SimpleCommunicator, Error> {
        let d = self.data();
        let color = with_core(|c| {
            let mine = &c.hosts[c.rank as usize];
            d.group
                .world_ranks()
                .iter()
                .position(|w| &c.hosts[*w as usize] == mine)
                .unwrap_or(0)
        });
        split(d, Color::with_value(color as i32), d.rank)?
            .ok_or_else(|| Error::LocalOs("split_shared gave no communicator".into()))
    }

    /// A communicator of the members of `group`, in group order (`MPI_Comm_create`).
    /// Collective over this whole communicator; `None` at non-members.
    ///
    /// # Errors
    /// A group with processes outside this communicator; as [`Communicator::split_by_color`].
    fn split_by_subgroup_collective(
        &self,
        group: &Group,
    ) -> Result<Option<SimpleCommunicator>, Error> {
        let d = self.data();
        if group
            .world_ranks()
            .iter()
            .any(|w| d.group.rank_of_world(*w).is_none())
        {
            return Err(Error::UsageArgument(
                "the group has processes outside the communicator".into(),
            ));
        }
        let me = d.group.world_of(d.rank_index());
        let (color, key) = match group.rank_of_world(me) {
            Some(r) => (Color::with_value(0), r),
            None => (Color::undefined(), 0),
        };
        split(d, color, key)
    }

    /// A communicator of the members of `group`, called by those members only
    /// (`MPI_Comm_create_group`); `tag` tells concurrent creations apart.
    ///
    /// # Errors
    /// This process not in `group`; a group with processes outside this communicator; a
    /// negative tag; as [`Communicator::split_by_color`].
    fn split_by_subgroup(&self, group: &Group, tag: Tag) -> Result<SimpleCommunicator, Error> {
        let d = self.data();
        let tag = check_tag(tag)?;
        if tag >= crate::collective::GROUP_TAG {
            return Err(Error::UsageInvalidTag(tag));
        }
        if group
            .world_ranks()
            .iter()
            .any(|w| d.group.rank_of_world(*w).is_none())
        {
            return Err(Error::UsageArgument(
                "the group has processes outside the communicator".into(),
            ));
        }
        let me = d.group.world_of(d.rank_index());
        let my_index = group
            .rank_of_world(me)
            .ok_or_else(|| Error::UsageArgument("this process is not in the group".into()))?;
        let world: Vec<u32> = group.world_ranks().to_vec();
        let over = Over::subgroup(
            &world,
            my_index as usize,
            d.coll_context(),
            crate::collective::GROUP_TAG + tag,
        );
        let slot = agree_slot(over, world.len())?;
        d.derived(group.clone(), slot)
    }

    /// How this communicator relates to `other` (`MPI_Comm_compare`).
    fn compare<C: Communicator>(&self, other: &C) -> CommunicatorRelation
    where
        Self: Sized,
    {
        let (a, b) = (self.data(), other.data());
        if std::ptr::eq(a, b) || a.slot == b.slot && a.group == b.group {
            return CommunicatorRelation::Identical;
        }
        match a.group.compare(&b.group) {
            GroupRelation::Identical => CommunicatorRelation::Congruent,
            GroupRelation::Similar => CommunicatorRelation::Similar,
            GroupRelation::Unequal => CommunicatorRelation::Unequal,
        }
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

/// `MPI_Comm_split`: allgather of (color, key), agreement on a slot, then the new group.
fn split(d: &CommData, color: Color, key: Rank) -> Result<Option<SimpleCommunicator>, Error> {
    if color.0 < 0 && color != Color::undefined() {
        return Err(Error::UsageArgument(format!(
            "color {} is negative",
            color.0
        )));
    }
    let p = d.size() as usize;
    let mine = [color.0, key];
    let mut all = vec![0i32; 2 * p];
    crate::collective::allgather_bytes(
        Over::comm(d),
        crate::datatype::bytes_of(&mine),
        crate::datatype::bytes_of_mut(&mut all),
    )?;
    let slot = agree_slot(Over::comm(d), p)?;
    if color == Color::undefined() {
        return Ok(None);
    }
    let mut members: Vec<(Rank, usize)> = (0..p)
        .filter(|i| all[2 * i] == color.0)
        .map(|i| (all[2 * i + 1], i))
        .collect();
    members.sort_unstable();
    let world = members.iter().map(|(_, i)| d.group.world_of(*i)).collect();
    d.derived(Group::from_world_ranks(world)?, slot).map(Some)
}

/// A communicator (`MPI_Comm`): the world or one derived from it. Dropping the last handle
/// frees it (`MPI_Comm_free`); a freed communicator cannot be named in Rust, so its misuse
/// is a compile error.
#[derive(Debug)]
pub struct SimpleCommunicator {
    data: Arc<CommData>,
}

impl SimpleCommunicator {
    pub(crate) fn world(rank: u32, size: u32) -> Self {
        debug_assert_eq!(ContextId(0), crate::core::WORLD_CONTEXT);
        let group = Group::from_world_ranks((0..size).collect()).unwrap_or_else(|_| Group::empty());
        Self {
            data: Arc::new(CommData {
                group,
                rank: rank as Rank,
                slot: 0,
                coll: crate::collective::CommState::default(),
            }),
        }
    }
}

impl sealed::Sealed for SimpleCommunicator {
    #[allow(private_interfaces)]
    fn data(&self) -> &CommData {
        &self.data
    }
}

impl Communicator for SimpleCommunicator {}

/// One process of a communicator.
#[derive(Debug, Clone, Copy)]
pub struct Process<'a> {
    comm: &'a CommData,
    rank: Rank,
}

impl Process<'_> {
    /// Its rank.
    pub fn rank(&self) -> Rank {
        self.rank
    }

    pub(crate) fn comm_data(&self) -> &CommData {
        self.comm
    }

    /// Its world rank, checked.
    fn checked(&self) -> Result<u32, Error> {
        if (0..self.comm.size()).contains(&self.rank) {
            Ok(self.comm.group.world_of(self.rank as usize))
        } else {
            Err(Error::UsageInvalidRank {
                rank: self.rank,
                size: self.comm.size(),
            })
        }
    }
}

/// Every process of a communicator, as a receive source (`MPI_ANY_SOURCE`).
#[derive(Debug, Clone, Copy)]
pub struct AnyProcess<'a> {
    comm: &'a CommData,
}

impl sealed::Peer for Process<'_> {
    fn context(&self) -> ContextId {
        self.comm.context()
    }
    #[allow(private_interfaces)]
    fn comm(&self) -> &CommData {
        self.comm
    }
}

impl sealed::Peer for AnyProcess<'_> {
    fn context(&self) -> ContextId {
        self.comm.context()
    }
    #[allow(private_interfaces)]
    fn comm(&self) -> &CommData {
        self.comm
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
        recv_into(self.comm(), self.source_rank()?, None, buf)
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
        recv_into(self.comm(), self.source_rank()?, Some(check_tag(tag)?), buf)
    }

    /// Receives one value.
    ///
    /// # Errors
    /// As [`Source::receive_into`].
    fn receive<T: Equivalence>(&self) -> Result<(T, Status), Error> {
        let mut v = zeroed_vec::<T>(1);
        let s = recv_into(self.comm(), self.source_rank()?, None, &mut v[..])?;
        Ok((v[0], s))
    }

    /// Receives a message of any length into a new vector (probe, then receive).
    ///
    /// # Errors
    /// A message that is not a whole number of `T`; a lost peer.
    fn receive_vec<T: Equivalence>(&self) -> Result<(Vec<T>, Status), Error> {
        recv_vec(self.comm(), self.source_rank()?, None)
    }

    /// Receives a message with tag `tag` into a new vector.
    ///
    /// # Errors
    /// As [`Source::receive_vec`]; a negative tag.
    fn receive_vec_with_tag<T: Equivalence>(&self, tag: Tag) -> Result<(Vec<T>, Status), Error> {
        recv_vec(self.comm(), self.source_rank()?, Some(check_tag(tag)?))
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
        irecv(self.comm(), self.source_rank()?, None, scope, buf)
    }

    /// Starts a receive of up to `len` bytes with tag `tag` into raw memory, as C programs
    /// call `MPI_Irecv`: unlike [`Source::immediate_receive_into_with_tag`], several
    /// outstanding receives may target the same memory (OSU's bandwidth benchmarks receive a
    /// whole window into one buffer). The bytes that land there are those of whichever
    /// message is written last.
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes, and not accessed other than through
    /// Braid, until the returned request has finished (waiting on it, testing it to
    /// completion or dropping it all wait for that).
    ///
    /// # Errors
    /// An invalid source or tag.
    unsafe fn immediate_receive_raw_with_tag(
        &self,
        ptr: *mut u8,
        len: usize,
        tag: Tag,
    ) -> Result<Request<'static, StaticScope>, Error> {
        let (from, tag) = (self.source_rank()?, check_tag(tag)?);
        // SAFETY: forwarded from the caller: `ptr` stays valid for `len` bytes until the
        // request finishes, and a request waits for completion when dropped.
        unsafe { irecv_raw(self.comm(), from, Some(tag), StaticScope, ptr, len) }
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
        irecv(
            self.comm(),
            self.source_rank()?,
            Some(check_tag(tag)?),
            scope,
            buf,
        )
    }

    /// Blocks until a message is available and returns its envelope (`MPI_Probe`).
    ///
    /// # Errors
    /// A lost peer.
    fn probe(&self) -> Result<Status, Error> {
        let (comm, src) = (self.comm(), self.source_rank()?);
        let ctx = comm.context();
        crate::collective::probe_p2p(ctx, src, None).map(|st| probe_status(st, comm))
    }

    /// Blocks until a message with tag `tag` is available.
    ///
    /// # Errors
    /// A lost peer; a negative tag.
    fn probe_with_tag(&self, tag: Tag) -> Result<Status, Error> {
        let (comm, src, tag) = (self.comm(), self.source_rank()?, check_tag(tag)?);
        let ctx = comm.context();
        crate::collective::probe_p2p(ctx, src, Some(tag)).map(|st| probe_status(st, comm))
    }

    /// Returns a message's envelope if one is available (`MPI_Iprobe`).
    ///
    /// # Errors
    /// A lost peer.
    fn immediate_probe(&self) -> Result<Option<Status>, Error> {
        let (comm, src) = (self.comm(), self.source_rank()?);
        let ctx = comm.context();
        crate::collective::iprobe_p2p(ctx, src, None).map(|o| o.map(|st| probe_status(st, comm)))
    }

    /// Returns the envelope of a message with tag `tag` if one is available.
    ///
    /// # Errors
    /// A lost peer; a negative tag.
    fn immediate_probe_with_tag(&self, tag: Tag) -> Result<Option<Status>, Error> {
        let (comm, src, tag) = (self.comm(), self.source_rank()?, check_tag(tag)?);
        let ctx = comm.context();
        crate::collective::iprobe_p2p(ctx, src, Some(tag))
            .map(|o| o.map(|st| probe_status(st, comm)))
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
        send(
            self.context(),
            self.destination_rank()?,
            0,
            buf,
            SendMode::Standard,
        )
    }

    /// Sends `buf` with tag `tag`.
    ///
    /// # Errors
    /// As [`Destination::send`]; a negative tag.
    fn send_with_tag<B: Buffer + ?Sized>(&self, buf: &B, tag: Tag) -> Result<(), Error> {
        send(
            self.context(),
            self.destination_rank()?,
            check_tag(tag)?,
            buf,
            SendMode::Standard,
        )
    }

    /// Sends `buf` and returns only once the receiver matched it (`MPI_Ssend`).
    ///
    /// # Errors
    /// As [`Destination::send`].
    fn synchronous_send<B: Buffer + ?Sized>(&self, buf: &B) -> Result<(), Error> {
        send(
            self.context(),
            self.destination_rank()?,
            0,
            buf,
            SendMode::Synchronous,
        )
    }

    /// Synchronous send with tag `tag`.
    ///
    /// # Errors
    /// As [`Destination::send_with_tag`].
    fn synchronous_send_with_tag<B: Buffer + ?Sized>(
        &self,
        buf: &B,
        tag: Tag,
    ) -> Result<(), Error> {
        let tag = check_tag(tag)?;
        send(
            self.context(),
            self.destination_rank()?,
            tag,
            buf,
            SendMode::Synchronous,
        )
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
        isend(
            self.context(),
            self.destination_rank()?,
            0,
            scope,
            buf,
            SendMode::Standard,
        )
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
        isend(
            self.context(),
            self.destination_rank()?,
            tag,
            scope,
            buf,
            SendMode::Standard,
        )
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
        isend(
            self.context(),
            self.destination_rank()?,
            0,
            scope,
            buf,
            SendMode::Synchronous,
        )
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
        isend(
            self.context(),
            self.destination_rank()?,
            tag,
            scope,
            buf,
            SendMode::Synchronous,
        )
    }
}

impl Destination for Process<'_> {
    fn destination_rank(&self) -> Result<u32, Error> {
        self.checked()
    }
}

fn probe_status(s: braid_engine::RecvStatus, comm: &CommData) -> Status {
    Status {
        source: s.source.0 as Rank,
        tag: s.tag.0,
        bytes: s.len as usize,
    }
    .translated(&comm.group)
}

/// Translates the world rank in a truncation error to a communicator rank.
fn translate_err(e: Error, g: &Group) -> Error {
    match e {
        Error::UsageTruncated {
            source_rank,
            tag,
            len,
            capacity,
        } => Error::UsageTruncated {
            source_rank: g.rank_of_world(source_rank as u32).unwrap_or(source_rank),
            tag,
            len,
            capacity,
        },
        other => other,
    }
}

pub(crate) fn send<B: Buffer + ?Sized>(
    ctx: ContextId,
    to: u32,
    tag: i32,
    buf: &B,
    mode: SendMode,
) -> Result<(), Error> {
    let bytes = buf.packed();
    let m = Outgoing::of(ctx, to, tag, &bytes, mode);
    // SAFETY: `bytes` stays borrowed until `wait_p2p` has collected the request.
    let Some(id) = with_core(|c| unsafe { c.start_send(m) })?.posted() else {
        return Ok(());
    };
    let finished = crate::collective::wait_p2p(id)?;
    Status::from_finished(finished, Kind::Send).map(drop)
}

pub(crate) fn recv_into<B: BufferMut + ?Sized>(
    comm: &CommData,
    from: Option<u32>,
    tag: Option<i32>,
    buf: &mut B,
) -> Result<Status, Error> {
    let ctx = comm.context();
    if let Some((count, dt)) = buf.layout() {
        let mut packed = vec![0u8; dt.pack_size(count)];
        let st = recv_into(comm, from, tag, &mut packed[..])?;
        let whole = dt.count_of(st.bytes).unwrap_or(st.bytes / dt.size().max(1));
        let mut pos = 0;
        dt.unpack_from(&packed[..st.bytes], &mut pos, buf.as_bytes_mut(), whole)?;
        return Ok(st);
    }
    let bytes = buf.as_bytes_mut();
    let capacity = bytes.len();
    // A small message from a shared-memory peer comes straight from its ring when nothing
    // else is pending (see `Core::recv_direct`).
    let direct = match from {
        Some(r) if crate::collective::idle() => {
            // SAFETY: `bytes` is mutably borrowed for the whole call.
            with_core(|c| unsafe { c.recv_direct(ctx, r, tag, bytes.as_mut_ptr(), capacity) })
        }
        _ => None,
    };
    let finished = match direct {
        Some(status) => Ok(Ok(status)),
        None => {
            let id = with_core(|c| -> Result<_, Error> {
                // SAFETY: `bytes` stays mutably borrowed until `wait_p2p` has collected the
                // request.
                let id = unsafe { c.irecv(ctx, from, tag, bytes.as_mut_ptr(), capacity) }?;
                // A single-copy transfer the receive matched is copied now, not at the next
                // progress call: the caller waits at once and has nothing of its own to post.
                c.pump();
                Ok(id)
            })?;
            crate::collective::wait_p2p(id)
        }
    };
    finished
        .and_then(|f| Status::from_finished(f, Kind::Recv { capacity }))
        .map(|s| s.translated(&comm.group))
        .map_err(|e| translate_err(e, &comm.group))
}

fn recv_vec<T: Equivalence>(
    comm: &CommData,
    from: Option<u32>,
    tag: Option<i32>,
) -> Result<(Vec<T>, Status), Error> {
    let p = crate::collective::probe_p2p(comm.context(), from, tag)?;
    let elem = size_of::<T>().max(1);
    let len = p.len as usize;
    if !len.is_multiple_of(elem) {
        return Err(Error::UsageElementSize { len, elem });
    }
    let mut v = zeroed_vec::<T>(len / elem);
    // The probed message is the first from its source with its tag, so a receive naming both
    // gets exactly it.
    let s = recv_into(comm, Some(p.source.0), Some(p.tag.0), &mut v[..])?;
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
    let packed = buf.packed();
    let m = Outgoing::of(ctx, to, tag, &packed, mode);
    // SAFETY: `buf` is borrowed for 'a, and a packed copy moves into the request below (its
    // heap memory does not move); the request (or its scope) waits for completion before 'a
    // ends.
    let id = with_core(|c| unsafe { c.start_send(m) })?.posted();
    crate::collective::poke();
    let Some(id) = id else {
        return Ok(Request::sent(scope));
    };
    let r: Request<'a, S> = Request::new(id, scope, Kind::Send);
    Ok(match packed {
        Cow::Owned(v) => r.with_group(Group::empty(), Some(v)),
        Cow::Borrowed(_) => r,
    })
}

fn irecv<'a, S: Scope<'a>, B: BufferMut + ?Sized>(
    comm: &CommData,
    from: Option<u32>,
    tag: Option<i32>,
    scope: S,
    buf: &'a mut B,
) -> Result<Request<'a, S>, Error> {
    if buf.layout().is_some() {
        return Err(Error::UsageDatatype(
            "nonblocking receives into non-contiguous views are not supported yet".into(),
        ));
    }
    let bytes = buf.as_bytes_mut();
    // SAFETY: `buf` is mutably borrowed for 'a, and the request (or its scope) waits for
    // completion before 'a ends.
    unsafe { irecv_raw(comm, from, tag, scope, bytes.as_mut_ptr(), bytes.len()) }
}

/// Posts a receive into `len` bytes at `ptr`, advances nonblocking collectives, and wraps the
/// receive in a request of `scope`.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes, and not otherwise accessed, until the
/// request finishes (the request, or its scope, waits for that).
unsafe fn irecv_raw<'a, S: Scope<'a>>(
    comm: &CommData,
    from: Option<u32>,
    tag: Option<i32>,
    scope: S,
    ptr: *mut u8,
    len: usize,
) -> Result<Request<'a, S>, Error> {
    let ctx = comm.context();
    // SAFETY: forwarded from the caller.
    let id = with_core(|c| unsafe { c.irecv(ctx, from, tag, ptr, len) })?;
    crate::collective::poke();
    let r = Request::new(id, scope, Kind::Recv { capacity: len });
    // Sources need translating only when group ranks differ from world ranks.
    Ok(if comm.group.is_identity() {
        r
    } else {
        r.with_group(comm.group.clone(), None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_agreement() {
        // Free masks of three members: the lowest slot free at all of them wins.
        let a = [!0b0111u64, !0];
        let b = [!0b1011u64, !0];
        let c = [!0b0001u64, !0];
        let and: Vec<u64> = (0..2).map(|i| a[i] & b[i] & c[i]).collect();
        assert_eq!(lowest_free(&and), Some(4));
        assert_eq!(lowest_free(&[0, 0b100]), Some(66));
        assert_eq!(lowest_free(&[0, 0]), None);
        // Claim and release keep the table consistent; slot 0 (world) is never freed.
        claim(700);
        assert_eq!(free_mask()[700 / 64] & (1 << (700 % 64)), 0);
        release(700);
        assert_ne!(free_mask()[700 / 64] & (1 << (700 % 64)), 0);
        release(0);
        assert_eq!(free_mask()[0] & 1, 0);
    }
}
