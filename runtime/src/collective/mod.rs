//! Collective operations on any communicator: blocking, in-place and nonblocking forms.
//!
//! Every collective is built as a `schedule::Schedule` of rounds by the algorithms in
//! `algorithms`, chosen by message size, communicator size and host layout (see [`info`]),
//! then run to completion (blocking) or started and advanced later (`immediate_*`). One
//! builder per collective (`do_*`) serves both modes. Collective traffic travels on the
//! communicator's collective context, one tag per collective call, so it never matches
//! point-to-point messages nor another collective in flight.
//!
//! Two-level (host-aware) versions of barrier, broadcast, reduce and allreduce run when a
//! communicator spans several hosts and some host holds several of its ranks: first among the
//! ranks of each host, then among one leader per host (the lowest rank on it), then (barrier,
//! broadcast, allreduce) among the ranks of each host again. The blocking forms run the phases
//! inside a host as blocking collectives on a communicator of the host's ranks, made at the
//! first such call and kept with the communicator, so that they go through the shared-memory
//! component (`shm`) where it applies; the nonblocking forms run every phase point-to-point.
//!
//! Every collective of MPI-4.1 §6 on intracommunicators has a blocking and an `immediate_`
//! form here (rsmpi's names; `MPI_Reduce_scatter` is `reduce_scatter_varcount_into`), and an
//! `_in_place` form of each where MPI allows `MPI_IN_PLACE`.
//!
//! # Progress
//! A nonblocking collective advances whenever this process calls into Braid's communication
//! layer: any wait or test (on any request, point-to-point or collective), any blocking send,
//! receive, probe or collective, posting any nonblocking operation (`immediate_*`), and
//! `immediate_probe`. Each such call advances every nonblocking collective in flight as far as
//! the messages already arrived allow (a round's messages are posted as soon as the previous
//! round has completed). There is no progress thread: while the caller computes without
//! calling Braid, nothing advances, so overlap with computation needs an occasional
//! `test` (OSU's `-t`), as with MPICH and Open MPI without their progress threads.
//!
//! # Standard section(s)
//! MPI-4.1 §6 (collective communication), §6.12 (nonblocking collectives).
//!
//! # Not yet implemented
//! Intercommunicator collectives, neighborhood collectives, persistent collectives,
//! collectives on non-contiguous [`View`]s (only blocking broadcast packs them; `MPI_Alltoallw`
//! takes per-peer datatypes instead), a progress thread.
//!
//! [`View`]: crate::datatype::View

pub(crate) mod algorithms;
pub(crate) mod op;
pub(crate) mod schedule;
pub(crate) mod shm;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use braid_engine::{ContextId, RecvStatus, ReqId};
pub use op::{Operation, SystemOperation, UserOperation, ValueIndex, reduce_local_into};

use self::algorithms as alg;
use self::algorithms::Team;
use self::op::ResolvedOp;
use self::schedule::{Exec, Loc, Schedule, Slice};
use crate::communicator::{CommData, Communicator, Process, Rank};
use crate::core::{Core, Finished, Outgoing, with_core};
use crate::datatype::{Buffer, BufferMut};
use crate::error::Error;
use crate::request::{Request, Scope};

/// Tags of barrier rounds of the finalize barrier on the world's collective context.
const BARRIER_TAG: i32 = 1;
/// Collective calls use tags `TAG_BASE + (call number mod TAG_SPAN)`.
const TAG_BASE: i32 = 1 << 16;
const TAG_SPAN: u32 = 1 << 29;
/// Communicator creation over a subgroup (`MPI_Comm_create_group`) uses `GROUP_TAG + tag`.
pub(crate) const GROUP_TAG: i32 = 1 << 30;

/// Dissemination barrier over the whole world, used by finalize (the core is already held).
pub(crate) fn barrier(c: &mut Core, ctx: ContextId) -> Result<(), Error> {
    let (me, p) = (c.rank, c.size);
    let mut dist = 1u32;
    let mut round = 0;
    while dist < p {
        let to = (me + dist) % p;
        let from = (me + p - dist) % p;
        let tag = BARRIER_TAG + round;
        // SAFETY: zero-length buffers: nothing is read or written through the pointers.
        let r = unsafe {
            c.irecv(
                ctx,
                Some(from),
                Some(tag),
                std::ptr::NonNull::dangling().as_ptr(),
                0,
            )
        }?;
        // SAFETY: as above.
        let s = unsafe {
            c.isend(Outgoing::standard(
                ctx,
                to,
                tag,
                std::ptr::NonNull::dangling().as_ptr(),
                0,
            ))
        }?;
        c.wait(s)??;
        c.wait(r)??;
        dist *= 2;
        round += 1;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Settings and algorithm selection
// ---------------------------------------------------------------------------------------------

/// Thresholds of algorithm selection (from `BRAID_COLL_*`, module `env`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CollSettings {
    pub(crate) bcast_long: usize,
    pub(crate) allreduce_short: usize,
    pub(crate) allgather_short: usize,
    pub(crate) gather_short: usize,
    pub(crate) hierarchy: bool,
    /// Testing: pretend this many hosts (0: the real ones).
    pub(crate) fake_hosts: usize,
}

impl Default for CollSettings {
    fn default() -> Self {
        Self {
            bcast_long: 128 * 1024,
            allreduce_short: 64 * 1024,
            allgather_short: 80 * 1024,
            gather_short: 64 * 1024,
            hierarchy: true,
            fake_hosts: 0,
        }
    }
}

/// The settings, read once (malformed variables were already reported by init).
fn settings() -> CollSettings {
    static S: OnceLock<CollSettings> = OnceLock::new();
    *S.get_or_init(|| match crate::env::Settings::from_env() {
        Ok(e) => CollSettings {
            bcast_long: e.coll_bcast_long as usize,
            allreduce_short: e.coll_allreduce_short as usize,
            allgather_short: e.coll_allgather_short as usize,
            gather_short: e.coll_gather_short as usize,
            hierarchy: e.coll_hierarchy,
            fake_hosts: e.coll_fake_hosts as usize,
        },
        Err(_) => CollSettings::default(),
    })
}

/// The algorithm chosen for a broadcast of `n` bytes over `p` ranks.
pub(crate) fn choose_bcast(s: &CollSettings, n: usize, p: usize) -> &'static str {
    if n >= s.bcast_long && p >= 8 {
        "scatter-allgather"
    } else {
        "binomial"
    }
}

/// The algorithm chosen for an allreduce of `n` bytes over `p` ranks.
pub(crate) fn choose_allreduce(
    s: &CollSettings,
    n: usize,
    elems: usize,
    p: usize,
    commutative: bool,
) -> &'static str {
    if n < s.allreduce_short || !commutative || elems < p {
        "recursive-doubling"
    } else if p.is_power_of_two() {
        "rabenseifner"
    } else {
        "ring"
    }
}

/// The algorithm chosen for an allgather producing `total` bytes.
pub(crate) fn choose_allgather(s: &CollSettings, total: usize) -> &'static str {
    if total < s.allgather_short {
        "bruck"
    } else {
        "ring"
    }
}

/// The algorithm chosen for a gather or scatter of `total` bytes at the root.
pub(crate) fn choose_gather(s: &CollSettings, total: usize) -> &'static str {
    if total < s.gather_short {
        "binomial"
    } else {
        "linear"
    }
}

/// A report of the algorithms and thresholds in force (for `braid-info` and logs).
pub fn info() -> String {
    let s = settings();
    format!(
        "braid collectives\n\
         barrier: dissemination (two-level across hosts; blocking forms run the phases inside a host \
         on the host's ranks, through shared memory where it applies)\n\
         bcast: binomial; scatter-allgather (van de Geijn) from BRAID_COLL_BCAST_LONG={} bytes and 8 ranks\n\
         reduce: binomial (rank-ordered for non-commutative ops; two-level across hosts)\n\
         allreduce: recursive doubling below BRAID_COLL_ALLREDUCE_SHORT={} bytes or non-commutative; \
         else Rabenseifner (power-of-two ranks) or ring\n\
         allgather: Bruck below BRAID_COLL_ALLGATHER_SHORT={} bytes of result; else ring; allgatherv: ring\n\
         gather/scatter: binomial below BRAID_COLL_GATHER_SHORT={} bytes at the root; else linear; v-forms linear\n\
         alltoall(v,w): pairwise exchange\n\
         reduce_scatter(_block): ring over the blocks (commutative) or reduce + scatter\n\
         scan/exscan: recursive doubling\n\
         hierarchy (BRAID_COLL_HIERARCHY): {}; BRAID_COLL_FAKE_HOSTS={}\n{}",
        s.bcast_long,
        s.allreduce_short,
        s.allgather_short,
        s.gather_short,
        if s.hierarchy { "on" } else { "off" },
        s.fake_hosts,
        shm::info()
    )
}

// ---------------------------------------------------------------------------------------------
// Call numbering and the registry of nonblocking collectives
// ---------------------------------------------------------------------------------------------

/// Next call number per collective context. Every member makes the same collective calls in
/// the same order (MPI's rule), so all members draw the same numbers.
/// A short list of (context, next call number), most recently used first: programs use few
/// communicators, so a linear scan beats hashing.
static CALLS: Mutex<Vec<(u32, u32)>> = Mutex::new(Vec::new());

pub(crate) fn next_tag(ctx: ContextId) -> i32 {
    let mut g = CALLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let i = match g.iter().position(|e| e.0 == ctx.0) {
        Some(i) => i,
        None => {
            g.push((ctx.0, 0));
            g.len() - 1
        }
    };
    if i > 0 {
        g.swap(0, i);
    }
    let n = &mut g[0].1;
    let t = TAG_BASE + (*n % TAG_SPAN) as i32;
    *n = n.wrapping_add(1);
    t
}

/// Forgets the call numbers of a freed context.
pub(crate) fn forget_context(ctx: ContextId) {
    let mut g = CALLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    g.retain(|e| e.0 != ctx.0);
    drop(g);
    shm::release(ctx);
}

type Shared = Arc<Mutex<Exec>>;

/// Nonblocking collectives in flight, advanced by every wait and test.
static ACTIVE: Mutex<Vec<Weak<Mutex<Exec>>>> = Mutex::new(Vec::new());

/// Length of `ACTIVE` as of its last change, so that the common case (no nonblocking
/// collective in flight) costs every point-to-point wait one atomic load, not a lock.
static ACTIVE_LEN: AtomicUsize = AtomicUsize::new(0);

fn active() -> Vec<Shared> {
    if ACTIVE_LEN.load(Ordering::Acquire) == 0 {
        return Vec::new();
    }
    let mut g = ACTIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    g.retain(|w| {
        w.upgrade()
            .is_some_and(|e| e.try_lock().map_or(true, |e| !e.is_done()))
    });
    ACTIVE_LEN.store(g.len(), Ordering::Release);
    g.iter().filter_map(Weak::upgrade).collect()
}

/// Whether no nonblocking collective is in flight.
pub(crate) fn nothing_active() -> bool {
    active().is_empty()
}

/// Advances every nonblocking collective not currently being advanced elsewhere. Errors stay
/// with their schedules (reported by their own wait).
pub(crate) fn progress_all() {
    for e in active() {
        if let Ok(mut e) = e.try_lock() {
            let _ = with_core(|c| e.advance(c, false));
        }
    }
}

/// Advances every nonblocking collective in flight, if any: called by every call that posts
/// point-to-point operations (`immediate_send`, `immediate_receive`, ...) and by probes, so
/// that any Braid call that drives the engine also drives the collectives in flight. Costs one
/// atomic load when none is in flight.
pub(crate) fn poke() {
    if ACTIVE_LEN.load(Ordering::Acquire) != 0 {
        progress_all();
    }
}

/// Blocks until a message matching (`ctx`, `from`, `tag`) is there (`MPI_Probe`), advancing
/// nonblocking collectives meanwhile.
pub(crate) fn probe_p2p(
    ctx: ContextId,
    from: Option<u32>,
    tag: Option<i32>,
) -> Result<RecvStatus, Error> {
    if active().is_empty() {
        return with_core(|c| c.probe(ctx, from, tag));
    }
    loop {
        progress_all();
        let got = with_core(|c| -> Result<Option<RecvStatus>, Error> {
            if let Some(s) = c.iprobe(ctx, from, tag)? {
                return Ok(Some(s));
            }
            c.progress(Some(Duration::from_micros(200)))?;
            Ok(None)
        })?;
        if let Some(s) = got {
            return Ok(s);
        }
    }
}

/// Looks for a message matching (`ctx`, `from`, `tag`) once (`MPI_Iprobe`), advancing
/// nonblocking collectives first.
pub(crate) fn iprobe_p2p(
    ctx: ContextId,
    from: Option<u32>,
    tag: Option<i32>,
) -> Result<Option<RecvStatus>, Error> {
    poke();
    with_core(|c| c.iprobe(ctx, from, tag))
}

/// Whether no nonblocking collective is in flight (blocking point-to-point calls then need
/// not advance any).
pub(crate) fn idle() -> bool {
    ACTIVE_LEN.load(Ordering::Acquire) == 0
}

/// Waits for point-to-point request `id`, advancing nonblocking collectives meanwhile.
pub(crate) fn wait_p2p(id: ReqId) -> Result<Finished, Error> {
    if active().is_empty() {
        return with_core(|c| c.wait(id));
    }
    loop {
        progress_all();
        let got = with_core(|c| -> Result<Option<Finished>, Error> {
            if let Some(f) = c.test(id)? {
                return Ok(Some(f));
            }
            c.progress(Some(Duration::from_micros(200)))?;
            Ok(None)
        })?;
        if let Some(f) = got {
            return Ok(f);
        }
    }
}

/// Tests a nonblocking collective once.
pub(crate) fn test_exec(e: &Shared) -> Result<bool, Error> {
    progress_all();
    let mut g = e.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    with_core(|c| g.advance(c, false))
}

/// Waits for a nonblocking collective, advancing the others too.
pub(crate) fn wait_exec(e: &Shared) -> Result<(), Error> {
    loop {
        if test_exec(e)? {
            return Ok(());
        }
        with_core(|c| c.progress(Some(Duration::from_micros(200))))?;
    }
}

/// The two-rank fast path of blocking collectives: one receive from and one send to the other
/// rank, on the call's tag, without building a schedule (no allocation, no round
/// bookkeeping). `local` runs while the messages are in flight; `after` runs once both have
/// completed without error. Used only when no nonblocking collective is in flight, so the
/// call numbers drawn here and by schedules stay in program order on every member.
///
/// # Safety
/// `send` must be valid for reads and `recv` for writes (and otherwise unaccessed until this
/// returns) of their lengths; `local` must not touch either range.
unsafe fn direct_pair(
    over: &Over<'_>,
    name: &'static str,
    send: Option<(*const u8, usize)>,
    recv: Option<(*mut u8, usize)>,
    local: impl FnOnce(),
    after: impl FnOnce(),
) -> Result<(), Error> {
    debug_assert_eq!(over.p(), 2);
    let peer = 1 - over.me;
    let pw = over.world[peer];
    let ctx = over.ctx;
    let tag = over.tag.unwrap_or_else(|| next_tag(ctx));
    with_core(|c| {
        let mut err: Option<Error> = None;
        let r = match recv {
            // SAFETY: the caller's contract.
            Some((p, len)) => match unsafe { c.irecv(ctx, Some(pw), Some(tag), p, len) } {
                Ok(id) => Some((id, len)),
                Err(e) => {
                    err = Some(e);
                    None
                }
            },
            None => None,
        };
        let sid = match send {
            Some((p, len)) if err.is_none() => {
                // SAFETY: the caller's contract.
                match unsafe { c.isend(Outgoing::standard(ctx, pw, tag, p, len)) } {
                    Ok(id) => Some(id),
                    Err(e) => {
                        err = Some(e);
                        None
                    }
                }
            }
            _ => None,
        };
        local();
        if let Some((id, cap)) = r {
            let e = match c.wait(id)? {
                Err(e) => Some(e),
                Ok(st) if st.truncated() => Some(Error::UsageTruncated {
                    source_rank: peer as i32,
                    tag: st.tag.0,
                    len: st.len as usize,
                    capacity: cap,
                }),
                Ok(st) if st.len as usize != cap => Some(mismatch(
                    name,
                    format!(
                        "rank {peer} sent {} bytes where {cap} were expected",
                        st.len
                    ),
                )),
                Ok(_) => None,
            };
            if let Some(e) = e {
                err.get_or_insert(e);
            }
        }
        if let Some(id) = sid
            && let Err(e) = c.wait(id)?
        {
            err.get_or_insert(e);
        }
        match err {
            Some(e) => Err(e),
            None => {
                after();
                Ok(())
            }
        }
    })
}

/// Whether a blocking collective over `over` may take the two-rank fast path.
fn pair_fast(over: &Over<'_>, mode: &Mode) -> bool {
    over.p() == 2 && matches!(mode, Mode::Blocking) && nothing_active()
}

/// Runs a schedule to completion.
fn run_blocking(s: Schedule) -> Result<(), Error> {
    if active().is_empty() {
        let mut e = Exec::new(s);
        return with_core(|c| e.advance(c, true)).map(drop);
    }
    let e = Arc::new(Mutex::new(Exec::new(s)));
    wait_exec(&e)
}

/// Starts a schedule as a nonblocking collective.
fn start(s: Schedule) -> Result<Shared, Error> {
    // The others first: their call numbers were drawn before this one's.
    poke();
    let e = Arc::new(Mutex::new(Exec::new(s)));
    {
        let mut g = e.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        with_core(|c| g.advance(c, false))?;
    }
    let mut g = ACTIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    g.push(Arc::downgrade(&e));
    ACTIVE_LEN.store(g.len(), Ordering::Release);
    drop(g);
    Ok(e)
}

// ---------------------------------------------------------------------------------------------
// Building schedules
// ---------------------------------------------------------------------------------------------

/// What a collective runs over: the members' world ranks, this rank, the context, their
/// hosts.
pub(crate) struct Over<'a> {
    world: &'a [u32],
    me: usize,
    ctx: ContextId,
    /// Fixed tag (subgroup creation); `None`: the next call number, drawn when the schedule
    /// starts.
    tag: Option<i32>,
    /// The communicator's collective state; `None` for a subgroup (always flat).
    state: Option<&'a CommState>,
}

impl<'a> Over<'a> {
    /// A collective call on `comm`.
    pub(crate) fn comm(comm: &'a CommData) -> Self {
        Self {
            world: comm.group().world_ranks(),
            me: comm.rank_index(),
            ctx: comm.coll_context(),
            tag: None,
            state: Some(comm.coll()),
        }
    }

    /// A collective among the ranks `world` only (`MPI_Comm_create_group`), with its own tag.
    pub(crate) fn subgroup(world: &'a [u32], me: usize, ctx: ContextId, tag: i32) -> Self {
        Self {
            world,
            me,
            ctx,
            tag: Some(tag),
            state: None,
        }
    }

    fn p(&self) -> usize {
        self.world.len()
    }

    fn schedule(&self, name: &'static str) -> Schedule {
        Schedule::new(name, self.world.to_vec(), self.ctx, self.tag)
    }

    fn team(&self) -> Team {
        Team {
            members: (0..self.p()).collect(),
            me: self.me,
        }
    }
}

/// What a communicator keeps for its collectives (`CommData::coll`), each part made at the
/// first call that needs it.
#[derive(Debug, Default)]
pub(crate) struct CommState {
    /// The communicator's host levels ([`levels`]); `None` inside: flat.
    levels: OnceLock<Option<Levels>>,
    /// The members of this rank's host (`Levels::node`) as a communicator, on which the
    /// blocking two-level collectives run their intra-host phases ([`two_level`]); `None`
    /// inside: no context slot was free when it was first asked for.
    node: OnceLock<Option<Box<CommData>>>,
}

/// The two levels of a team spread over hosts: this rank's host team and, on leaders, the
/// team of leaders; plus the leader index (in the full team) of every member.
#[derive(Debug)]
struct Levels {
    node: Team,
    leaders: Option<Team>,
    leader_of: Vec<usize>,
}

/// Splits the whole-communicator team by host, if that is worth it: computed once per
/// communicator (hosts and settings never change). Subgroups (`Over::subgroup`) stay flat.
fn levels<'a>(over: &Over<'a>) -> Option<&'a Levels> {
    let state = over.state?;
    state
        .levels
        .get_or_init(|| {
            if !settings().hierarchy || over.p() < 3 {
                return None;
            }
            let fake = settings().fake_hosts;
            let hosts = with_core(|c| {
                let host = |w: usize| match fake {
                    0 => c.hosts[w].clone(),
                    k => format!("fake{}", w * k / c.hosts.len().max(1)),
                };
                over.world
                    .iter()
                    .map(|w| host(*w as usize))
                    .collect::<Vec<_>>()
            });
            levels_of(&hosts, over.me)
        })
        .as_ref()
}

/// [`levels`] over explicit host names (unit-testable).
fn levels_of(hosts: &[String], me: usize) -> Option<Levels> {
    let p = hosts.len();
    let mut first: HashMap<&str, usize> = HashMap::new();
    let leader_of: Vec<usize> = (0..p)
        .map(|i| *first.entry(hosts[i].as_str()).or_insert(i))
        .collect();
    let nhosts = first.len();
    if nhosts < 2 || nhosts == p {
        return None;
    }
    let node = Team {
        members: (0..p).filter(|i| leader_of[*i] == leader_of[me]).collect(),
        me: (0..me).filter(|i| leader_of[*i] == leader_of[me]).count(),
    };
    let leaders = (leader_of[me] == me).then(|| {
        let members: Vec<usize> = (0..p).filter(|i| leader_of[*i] == *i).collect();
        let me = members.iter().position(|x| *x == me).unwrap_or(0);
        Team { members, me }
    });
    Some(Levels {
        node,
        leaders,
        leader_of,
    })
}

fn index_in(t: &Team, comm_rank: usize) -> usize {
    t.members.iter().position(|x| *x == comm_rank).unwrap_or(0)
}

fn bcast_flat(s: &mut Schedule, t: &Team, root: usize, buf: Slice) {
    if choose_bcast(&settings(), buf.len, t.p()) == "scatter-allgather" {
        alg::bcast_scatter_allgather(s, t, root, buf);
    } else {
        alg::bcast_binomial(s, t, root, buf);
    }
}

// Two-level collectives run three phases: (1) among the ranks of each host, (2) among the host
// leaders, (3) among the ranks of each host again (a broadcast has no phase 1, a reduce no
// phase 3). A nonblocking form runs them as rounds of one schedule (`build_*`, `*_into_acc`);
// a blocking form runs phases 1 and 3 as blocking collectives on the host-local
// sub-communicator ([`two_level`]), which take the shared-memory component where it applies and
// point-to-point otherwise, and phase 2 as a schedule over the whole communicator in which only
// the leaders (and a reduce's root) have steps ([`run_leaders`]). Both share the phase-2
// builders below.

/// Phase 2 of a barrier.
fn barrier_leaders(s: &mut Schedule, l: &Levels) {
    if let Some(lt) = &l.leaders {
        alg::barrier_dissemination(s, lt);
    }
}

/// A round boundary, then, unless `from` and `to` are the same rank, `buf` sent from `from`
/// to `to` in a round of its own (the hop between a root and its host's leader).
fn hop(s: &mut Schedule, me: usize, from: usize, to: usize, buf: Slice) {
    s.round();
    if from != to {
        if me == from {
            s.send(to, buf);
        } else if me == to {
            s.recv(from, buf);
        }
        s.round();
    }
}

/// Phase 2 of a broadcast from `root`: the root's data to its host's leader, then among the
/// leaders.
fn bcast_leaders(s: &mut Schedule, me: usize, l: &Levels, root: usize, buf: Slice) {
    let lr = l.leader_of[root];
    hop(s, me, root, lr, buf);
    if let Some(lt) = &l.leaders {
        bcast_flat(s, lt, index_in(lt, lr), buf);
    }
}

/// Phase 2 of a reduce to `root`: the leaders' partial results (in `acc`) reduced to the
/// root's leader, then sent on to the root (into its `acc`).
fn reduce_leaders(s: &mut Schedule, me: usize, l: &Levels, root: usize, acc: Slice, tmp: Slice) {
    let lr = l.leader_of[root];
    if let Some(lt) = &l.leaders {
        alg::reduce_binomial(s, lt, index_in(lt, lr), true, acc, tmp);
    }
    hop(s, me, lr, root, acc);
}

fn build_barrier(over: &Over<'_>) -> Schedule {
    let mut s = over.schedule("MPI_Barrier");
    match levels(over) {
        Some(l) => {
            alg::barrier_dissemination(&mut s, &l.node);
            barrier_leaders(&mut s, l);
            alg::barrier_dissemination(&mut s, &l.node);
        }
        None => alg::barrier_dissemination(&mut s, &over.team()),
    }
    s
}

fn build_bcast(over: &Over<'_>, root: usize, len: usize) -> Schedule {
    let mut s = over.schedule("MPI_Bcast");
    let buf = Slice::new(Loc::Recv, 0, len);
    match levels(over) {
        Some(l) => {
            bcast_leaders(&mut s, over.me, l, root, buf);
            alg::bcast_binomial(&mut s, &l.node, 0, buf);
        }
        None => bcast_flat(&mut s, &over.team(), root, buf),
    }
    s
}

fn allreduce_flat(s: &mut Schedule, t: &Team, op: &ResolvedOp, acc: Slice, tmp: Slice) {
    let elems = acc.len / op.elem.max(1);
    match choose_allreduce(&settings(), acc.len, elems, t.p(), op.commutative) {
        "rabenseifner" => alg::allreduce_rabenseifner(s, t, op.elem, acc, tmp),
        "ring" => alg::allreduce_ring(s, t, op.elem, acc, tmp),
        _ => alg::allreduce_recursive_doubling(s, t, acc, tmp),
    }
}

/// Allreduce of `acc` (holding this rank's operand) in place.
fn allreduce_into_acc(over: &Over<'_>, s: &mut Schedule, op: &ResolvedOp, acc: Slice) {
    let tmp = s.tmp(acc.len);
    match levels(over).filter(|_| op.commutative) {
        Some(l) => {
            alg::reduce_binomial(s, &l.node, 0, true, acc, tmp);
            if let Some(lt) = &l.leaders {
                allreduce_flat(s, lt, op, acc, tmp);
            }
            alg::bcast_binomial(s, &l.node, 0, acc);
        }
        None => allreduce_flat(s, &over.team(), op, acc, tmp),
    }
}

/// Reduce of `acc` to `root` (result in `acc` at the root).
fn reduce_into_acc(over: &Over<'_>, s: &mut Schedule, op: &ResolvedOp, root: usize, acc: Slice) {
    let tmp = s.tmp(acc.len);
    match levels(over).filter(|_| op.commutative) {
        Some(l) => {
            alg::reduce_binomial(s, &l.node, 0, true, acc, tmp);
            reduce_leaders(s, over.me, l, root, acc, tmp);
        }
        None => alg::reduce_binomial(s, &over.team(), root, op.commutative, acc, tmp),
    }
}

/// The host levels and host-local sub-communicator of a blocking two-level collective on
/// `comm` (one with a commutative operation, if any): `None` when `comm` is flat, or when no
/// context slot was free for the sub-communicator (the call then runs the one-schedule form).
/// The sub-communicator is made at the first call that asks, collectively over `comm` (every
/// member asks at the same call: the levels are the same everywhere), and kept with `comm`.
fn two_level(comm: &CommData, commutative: bool) -> Result<Option<(&Levels, &CommData)>, Error> {
    let Some(l) = levels(&Over::comm(comm)).filter(|_| commutative) else {
        return Ok(None);
    };
    let cell = &comm.coll().node;
    if let Some(node) = cell.get() {
        return Ok(node.as_deref().map(|n| (l, n)));
    }
    let made = match comm.part(&l.node.members) {
        Ok(c) => Some(Box::new(c)),
        Err(Error::LocalContextsExhausted { .. }) => None,
        Err(e) => return Err(e),
    };
    Ok(cell.get_or_init(|| made).as_deref().map(|n| (l, n)))
}

/// Phase 2 of a blocking two-level collective on `comm`: a schedule built by `build` on `acc`
/// (this rank's receive buffer, as a slice). Every member runs it, so all draw its call number;
/// members with no step in it finish at once.
fn run_leaders(
    comm: &CommData,
    name: &'static str,
    op: Option<&ResolvedOp>,
    acc: &mut [u8],
    build: impl FnOnce(&mut Schedule, Slice),
) -> Result<(), Error> {
    let mut s = Over::comm(comm).schedule(name);
    if let Some(op) = op {
        s.set_op(op.clone());
    }
    build(&mut s, Slice::new(Loc::Recv, 0, acc.len()));
    bind(&mut s, &[], acc);
    run_blocking(s)
}

/// Phase 1 of a blocking two-level reduction: the operands of the host's ranks reduced into
/// `acc` at the host leader (rank 0 of `node`). `mine` is this rank's operand (`None`: it is
/// in `acc`); `acc` is unused elsewhere.
fn reduce_to_leader(
    node: &CommData,
    mine: Option<&[u8]>,
    acc: &mut [u8],
    op: &ResolvedOp,
) -> Result<(), Error> {
    let (in_place, op, b) = (mine.is_none(), op.clone(), Mode::Blocking);
    if node.rank_index() == 0 {
        do_reduce(node, 0, mine.unwrap_or(&[]), Some(acc), in_place, op, b)
    } else {
        do_reduce(node, 0, mine.unwrap_or(acc), None, false, op, b)
    }
    .map(drop)
}

/// The first error of a two-level collective's phases. Every phase runs whatever happened in
/// the earlier ones (as a schedule's rounds do), so that members which saw no error there are
/// not left waiting.
fn first_error<const N: usize>(phases: [Result<(), Error>; N]) -> Result<(), Error> {
    phases.into_iter().collect()
}

/// Whether this rank only sends in the reduce [`reduce_into_acc`] builds: the flat binomial
/// tree (no host levels), where it receives from nobody (an odd virtual rank, or the last).
fn reduce_leaf(over: &Over<'_>, op: &ResolvedOp, root: usize) -> bool {
    let p = over.p();
    let base = if op.commutative { root } else { 0 };
    let vr = (over.me + p - base) % p;
    let leaf = vr % 2 == 1 || vr + 1 == p;
    // The rank at `base` forwards a non-commutative result to the root: never a leaf (vr 0
    // is a leaf only when p == 1, where it is the root too).
    leaf && vr != 0 && (p < 3 || levels(over).filter(|_| op.commutative).is_none())
}

/// The per-rank blocks of a v-form's buffer: the caller's counts and displacements (in
/// elements) and the element size, read in place rather than collected. Invariant (made by
/// [`check_partition`]): one count and one displacement per rank, or none at all off the root
/// of a gatherv or scatterv (where nothing reads them); none negative; every block inside the
/// buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VBlocks<'a> {
    counts: &'a [i32],
    displs: &'a [i32],
    elem: usize,
}

impl VBlocks<'_> {
    /// The blocks a non-root passes to a gatherv or scatterv: none (it has no partition).
    const NONE: VBlocks<'static> = VBlocks {
        counts: &[],
        displs: &[],
        elem: 1,
    };

    /// Byte offset and length of rank `r`'s block.
    pub(crate) fn at(&self, r: usize) -> (usize, usize) {
        // Non-negative by the invariant.
        let (d, c) = (self.displs[r] as usize, self.counts[r] as usize);
        (d * self.elem, c * self.elem)
    }

    /// Every block, as slices of `loc` (for a schedule).
    fn slices(&self, loc: Loc) -> Vec<Slice> {
        (0..self.counts.len())
            .map(|r| {
                let (off, len) = self.at(r);
                Slice::new(loc, off, len)
            })
            .collect()
    }
}

fn uniform(loc: Loc, p: usize, n: usize) -> Vec<Slice> {
    (0..p).map(|i| Slice::new(loc, i * n, n)).collect()
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

fn check_root(root: Rank, p: usize) -> Result<usize, Error> {
    if (0..p as Rank).contains(&root) {
        Ok(root as usize)
    } else {
        Err(Error::UsageInvalidRoot {
            root,
            size: p as Rank,
        })
    }
}

fn mismatch(op: &'static str, detail: String) -> Error {
    Error::UsageCountMismatch { op, detail }
}

fn contiguous_send<B: Buffer + ?Sized>(op: &'static str, b: &B) -> Result<(), Error> {
    if matches!(b.packed(), std::borrow::Cow::Owned(_)) {
        return Err(Error::UsageDatatype(format!(
            "{op}: non-contiguous views are not supported in collectives"
        )));
    }
    Ok(())
}

fn contiguous_recv<B: BufferMut + ?Sized>(op: &'static str, b: &B) -> Result<(), Error> {
    if b.layout().is_some() {
        return Err(Error::UsageDatatype(format!(
            "{op}: non-contiguous views are not supported in collectives"
        )));
    }
    Ok(())
}

/// Validates `counts`/`displs` (elements of `elem` bytes) for `p` ranks against a buffer of
/// `len` elements.
fn check_partition<'a>(
    op: &'static str,
    p: usize,
    counts: &'a [i32],
    displs: &'a [i32],
    elem: usize,
    len: usize,
) -> Result<VBlocks<'a>, Error> {
    if counts.len() != p || displs.len() != p {
        return Err(mismatch(
            op,
            format!(
                "{} counts and {} displacements for {p} ranks",
                counts.len(),
                displs.len()
            ),
        ));
    }
    for (cnt, dis) in counts.iter().zip(displs) {
        let (Ok(cu), Ok(du)) = (usize::try_from(*cnt), usize::try_from(*dis)) else {
            return Err(mismatch(
                op,
                format!("negative count {cnt} or displacement {dis}"),
            ));
        };
        if du + cu > len {
            return Err(mismatch(
                op,
                format!("block {du}+{cu} outside a buffer of {len} elements"),
            ));
        }
    }
    Ok(VBlocks {
        counts,
        displs,
        elem,
    })
}

/// Checks the receive partition of a v-form; returns its blocks and its buffer's bytes.
fn recv_partition<'p, R: BufferMut + ?Sized>(
    op: &'static str,
    p: usize,
    part: &'p mut PartitionMut<'_, R>,
) -> Result<(VBlocks<'p>, &'p mut [u8]), Error> {
    contiguous_recv(op, &*part.buf)?;
    let elem = part.buf.item_datatype().size().max(1);
    let bytes = part.buf.as_bytes_mut();
    let v = check_partition(op, p, &part.counts, &part.displs, elem, bytes.len() / elem)?;
    Ok((v, bytes))
}

/// As [`recv_partition`], for a send partition.
fn send_partition<'p, S: Buffer + ?Sized>(
    op: &'static str,
    p: usize,
    part: &'p Partition<'_, S>,
) -> Result<(VBlocks<'p>, &'p [u8]), Error> {
    contiguous_send(op, part.buf)?;
    let elem = part.buf.item_datatype().size().max(1);
    let bytes = part.buf.as_bytes();
    let v = check_partition(op, p, &part.counts, &part.displs, elem, bytes.len() / elem)?;
    Ok((v, bytes))
}

/// Validates the per-rank counts (elements) of `MPI_Reduce_scatter`.
fn check_counts(op: &'static str, p: usize, counts: &[i32]) -> Result<Vec<usize>, Error> {
    if counts.len() != p {
        return Err(mismatch(
            op,
            format!("{} counts for {p} ranks", counts.len()),
        ));
    }
    counts
        .iter()
        .map(|c| usize::try_from(*c).map_err(|_| mismatch(op, format!("negative count {c}"))))
        .collect()
}

/// The request of an immediate form, from what its `do_*` returned.
fn immediate<'a, Sc: Scope<'a>>(
    started: Result<Option<Shared>, Error>,
    scope: Sc,
) -> Result<Request<'a, Sc>, Error> {
    Ok(Request::collective_opt(started?, scope))
}

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// A buffer cut into per-rank blocks by counts and displacements, in elements (rsmpi's
/// `Partition`), for the `_varcount` collectives.
#[derive(Debug)]
pub struct Partition<'a, B: ?Sized> {
    buf: &'a B,
    counts: Vec<i32>,
    displs: Vec<i32>,
}

impl<'a, B: Buffer + ?Sized> Partition<'a, B> {
    /// Block i is `counts[i]` elements from element `displs[i]` of `buf`.
    pub fn new(buf: &'a B, counts: impl Into<Vec<i32>>, displs: impl Into<Vec<i32>>) -> Self {
        Self {
            buf,
            counts: counts.into(),
            displs: displs.into(),
        }
    }
}

/// A mutable buffer cut into per-rank blocks (rsmpi's `PartitionMut`).
#[derive(Debug)]
pub struct PartitionMut<'a, B: ?Sized> {
    buf: &'a mut B,
    counts: Vec<i32>,
    displs: Vec<i32>,
}

impl<'a, B: BufferMut + ?Sized> PartitionMut<'a, B> {
    /// Block i is `counts[i]` elements from element `displs[i]` of `buf`.
    pub fn new(buf: &'a mut B, counts: impl Into<Vec<i32>>, displs: impl Into<Vec<i32>>) -> Self {
        Self {
            buf,
            counts: counts.into(),
            displs: displs.into(),
        }
    }
}

/// One rank's block of an `MPI_Alltoallw` buffer: `count` elements of `datatype`, laid out
/// from byte `displ` of the buffer (`sendcounts[i]`, `sdispls[i]`, `sendtypes[i]` in C).
///
/// # Standard section(s)
/// MPI-4.1 §6.8 (`MPI_Alltoallw`).
#[derive(Clone, Debug)]
pub struct TypedBlock {
    /// Number of elements.
    pub count: usize,
    /// Byte offset of the block's origin in the buffer.
    pub displ: usize,
    /// Layout of each element; must be committed.
    pub datatype: crate::datatype::Datatype,
}

impl TypedBlock {
    /// `count` elements of `datatype` from byte `displ`.
    pub fn new(count: usize, displ: usize, datatype: crate::datatype::Datatype) -> Self {
        Self {
            count,
            displ,
            datatype,
        }
    }
}

/// Either runs a schedule now or returns it started.
enum Mode {
    Blocking,
    Immediate,
}

fn finish(s: Schedule, mode: Mode) -> Result<Option<Shared>, Error> {
    match mode {
        Mode::Blocking => run_blocking(s).map(|()| None),
        Mode::Immediate => start(s).map(Some),
    }
}

fn finish_req<'a, Sc: Scope<'a>>(s: Schedule, scope: Sc) -> Result<Request<'a, Sc>, Error> {
    let e = start(s)?;
    Ok(Request::collective(e, scope))
}

/// Sets the schedule's user buffers.
fn bind(s: &mut Schedule, send: &[u8], recv: &mut [u8]) {
    // SAFETY: every caller either runs the schedule to completion before `send` and `recv`
    // go out of scope (blocking forms), or hands it to a `Request` whose lifetime 'a borrows
    // both buffers (immediate forms), and that request waits for it before it is dropped.
    unsafe { s.set_buffers(send, recv) };
}

fn do_allreduce(
    comm: &CommData,
    send: Option<&[u8]>,
    recv: &mut [u8],
    op: ResolvedOp,
    mode: Mode,
) -> Result<Option<Shared>, Error> {
    let name = "MPI_Allreduce";
    if let Some(sb) = send
        && sb.len() != recv.len()
    {
        return Err(mismatch(
            name,
            format!("send {} bytes, receive {} bytes", sb.len(), recv.len()),
        ));
    }
    if !recv.len().is_multiple_of(op.elem.max(1)) {
        return Err(mismatch(
            name,
            format!("{} bytes are not whole elements", recv.len()),
        ));
    }
    if matches!(mode, Mode::Blocking) {
        if let Some(r) = shm::allreduce(comm, send, recv, &op) {
            return r.map(|()| None);
        }
        if let Some((l, node)) = two_level(comm, op.commutative)? {
            let host = reduce_to_leader(node, send, recv, &op);
            let leaders = run_leaders(comm, name, Some(&op), recv, |s, acc| {
                if let Some(lt) = &l.leaders {
                    let tmp = s.tmp(acc.len);
                    allreduce_flat(s, lt, &op, acc, tmp);
                }
            });
            let back = do_bcast(node, 0, recv);
            return first_error([host, leaders, back]).map(|()| None);
        }
    }
    let over = Over::comm(comm);
    if pair_fast(&over, &mode) && recv.len() < settings().allreduce_short {
        let n = recv.len();
        let mut tmp = schedule::take_tmp(n);
        let (rp, tp) = (recv.as_mut_ptr(), tmp.as_mut_ptr());
        let first = over.me == 0;
        let src = send.map_or(rp.cast_const(), <[u8]>::as_ptr);
        // SAFETY: the receive goes into `tmp`, the send reads `send` (or, in place, `recv`,
        // which nothing writes before both messages completed); `local` writes `recv` only
        // when the send reads `send` (MPI forbids aliasing them); `after` runs after both.
        let r = unsafe {
            direct_pair(
                &over,
                name,
                Some((src, n)),
                Some((tp, n)),
                || {
                    if let Some(sb) = send {
                        std::ptr::copy_nonoverlapping(sb.as_ptr(), rp, n);
                    }
                },
                || {
                    let acc = std::slice::from_raw_parts_mut(rp, n);
                    let other = std::slice::from_raw_parts(tp.cast_const(), n);
                    // Both ranks compute a0 ∘ a1 (MPI's rank order).
                    if first {
                        op.apply_left(acc, other);
                    } else {
                        op.apply(other, acc);
                    }
                },
            )
        };
        schedule::give_tmp(tmp);
        return r.map(|()| None);
    }
    let mut s = over.schedule(name);
    let acc = Slice::new(Loc::Recv, 0, recv.len());
    if let Some(sb) = send {
        s.copy(Slice::new(Loc::Send, 0, sb.len()), acc);
    }
    s.set_op(op.clone());
    allreduce_into_acc(&over, &mut s, &op, acc);
    bind(&mut s, send.unwrap_or(&[]), recv);
    finish(s, mode)
}

/// Blocking broadcast of `buf` from `root`.
fn do_bcast(comm: &CommData, root: usize, buf: &mut [u8]) -> Result<(), Error> {
    if let Some(r) = shm::bcast(comm, root, buf) {
        return r;
    }
    if let Some((l, node)) = two_level(comm, true)? {
        let me = comm.rank_index();
        let leaders = run_leaders(comm, "MPI_Bcast", None, buf, |s, b| {
            bcast_leaders(s, me, l, root, b);
        });
        return first_error([leaders, do_bcast(node, 0, buf)]);
    }
    let mut s = build_bcast(&Over::comm(comm), root, buf.len());
    bind(&mut s, &[], buf);
    run_blocking(s)
}

fn do_reduce(
    comm: &CommData,
    root: usize,
    send: &[u8],
    recv: Option<&mut [u8]>,
    in_place: bool,
    op: ResolvedOp,
    mode: Mode,
) -> Result<Option<Shared>, Error> {
    let name = "MPI_Reduce";
    let over = Over::comm(comm);
    let n = if in_place {
        recv.as_ref().map_or(0, |r| r.len())
    } else {
        send.len()
    };
    let mut empty = [0u8; 0];
    let recv = match recv {
        Some(r) => {
            if r.len() != n {
                return Err(mismatch(
                    name,
                    format!("send {} bytes, receive {} bytes at the root", n, r.len()),
                ));
            }
            r
        }
        None => &mut empty[..],
    };
    if matches!(mode, Mode::Blocking) {
        let mine = (!in_place).then_some(send);
        if let Some(r) = shm::reduce(
            comm,
            root,
            mine,
            (over.me == root).then_some(&mut *recv),
            &op,
        ) {
            return r.map(|()| None);
        }
        if let Some((l, node)) = two_level(comm, op.commutative)? {
            // The accumulator: the result buffer at the root, a temporary at the other
            // leaders, nothing elsewhere.
            let leader = l.leader_of[over.me] == over.me;
            let mut tmp = (leader && over.me != root).then(|| schedule::take_tmp(n));
            let acc = match &mut tmp {
                Some(t) => &mut t[..n],
                None => recv,
            };
            let host = reduce_to_leader(node, mine, acc, &op);
            let leaders = run_leaders(comm, name, Some(&op), acc, |s, acc| {
                let tmp = s.tmp(if l.leaders.is_some() { n } else { 0 });
                reduce_leaders(s, over.me, l, root, acc, tmp);
            });
            if let Some(t) = tmp {
                schedule::give_tmp(t);
            }
            return first_error([host, leaders]).map(|()| None);
        }
    }
    let mut s = over.schedule(name);
    s.set_op(op.clone());
    if over.me != root && !in_place && reduce_leaf(&over, &op, root) {
        // A leaf of the flat binomial tree only sends its operand: straight from the send
        // buffer, without a copy into a temporary.
        let mine = Slice::new(Loc::Send, 0, n);
        alg::reduce_binomial(&mut s, &over.team(), root, op.commutative, mine, mine);
        bind(&mut s, send, recv);
        return finish(s, mode);
    }
    let acc = if over.me == root {
        Slice::new(Loc::Recv, 0, n)
    } else {
        s.tmp(n)
    };
    if !in_place {
        s.copy(Slice::new(Loc::Send, 0, n), acc);
    }
    reduce_into_acc(&over, &mut s, &op, root, acc);
    bind(&mut s, send, recv);
    finish(s, mode)
}

/// Gather of uniform (`vblocks == None`) or variable blocks (known at the root only: empty
/// elsewhere); `send` is unused in place.
#[allow(clippy::too_many_arguments)]
fn do_gather(
    comm: &CommData,
    root: usize,
    send: &[u8],
    recv: &mut [u8],
    vblocks: Option<VBlocks<'_>>,
    in_place: bool,
    mode: Mode,
) -> Result<Option<Shared>, Error> {
    let name = "MPI_Gather";
    let over = Over::comm(comm);
    let p = over.p();
    let is_root = over.me == root;
    let blocking = matches!(mode, Mode::Blocking);
    // The schedule is built only once the shared-memory path has declined the call.
    let mut s = match vblocks {
        None => {
            let n = if in_place {
                recv.len() / p.max(1)
            } else {
                send.len()
            };
            if is_root && recv.len() != n * p {
                return Err(mismatch(
                    name,
                    format!("{p} blocks of {n} bytes into {} bytes", recv.len()),
                ));
            }
            if blocking
                && let Some(r) = shm::gather(comm, root, (!in_place).then_some(send), recv, n)
            {
                return r.map(|()| None);
            }
            let mut s = over.schedule(name);
            let mine = if in_place {
                Slice::new(Loc::Recv, root * n, n)
            } else {
                Slice::new(Loc::Send, 0, n)
            };
            if choose_gather(&settings(), n * p) == "binomial" {
                let work = if is_root {
                    s.tmp(n * p)
                } else {
                    s.tmp(alg_subtree_bytes(over.me, root, p, n))
                };
                let out = is_root.then(|| Slice::new(Loc::Recv, 0, n * p));
                alg::gather_binomial(&mut s, &over.team(), root, mine, work.sub(0, work.len), out);
            } else {
                let b = uniform(Loc::Recv, p, n);
                alg::gather_linear(&mut s, &over.team(), root, mine, is_root.then_some(&b[..]));
            }
            s
        }
        Some(v) => {
            if is_root && !in_place && send.len() != v.at(root).1 {
                return Err(mismatch(
                    name,
                    format!(
                        "root sends {} bytes into a {}-byte block",
                        send.len(),
                        v.at(root).1
                    ),
                ));
            }
            if blocking
                && let Some(r) = shm::gatherv(comm, root, (!in_place).then_some(send), recv, v)
            {
                return r.map(|()| None);
            }
            let mut s = over.schedule(name);
            let b = v.slices(Loc::Recv);
            let mine = if in_place {
                b[root]
            } else {
                Slice::new(Loc::Send, 0, send.len())
            };
            alg::gather_linear(&mut s, &over.team(), root, mine, is_root.then_some(&b[..]));
            s
        }
    };
    bind(&mut s, send, recv);
    finish(s, mode)
}

/// Work bytes a non-root needs in the binomial gather (its subtree's blocks; the tree may
/// write up to p blocks at the root).
fn alg_subtree_bytes(me: usize, root: usize, p: usize, n: usize) -> usize {
    let vr = (me + p - root) % p;
    let k = if vr == 0 {
        p
    } else {
        (vr & vr.wrapping_neg()).min(p - vr)
    };
    k.max(1) * n
}

/// Scatter of uniform (`vblocks == None`) or variable blocks (known at the root only: empty
/// elsewhere); `recv` is unused in place.
#[allow(clippy::too_many_arguments)]
fn do_scatter(
    comm: &CommData,
    root: usize,
    send: &[u8],
    recv: &mut [u8],
    vblocks: Option<VBlocks<'_>>,
    in_place: bool,
    mode: Mode,
) -> Result<Option<Shared>, Error> {
    let name = "MPI_Scatter";
    let over = Over::comm(comm);
    let p = over.p();
    let is_root = over.me == root;
    let blocking = matches!(mode, Mode::Blocking);
    // The schedule is built only once the shared-memory path has declined the call.
    let mut s = match vblocks {
        None => {
            let n = if is_root {
                send.len() / p.max(1)
            } else {
                recv.len()
            };
            if is_root && send.len() != n * p {
                return Err(mismatch(
                    name,
                    format!("{} bytes are not {p} equal blocks", send.len()),
                ));
            }
            if is_root && !in_place && recv.len() != n {
                return Err(mismatch(
                    name,
                    format!("blocks of {n} bytes into {} bytes", recv.len()),
                ));
            }
            if blocking
                && let Some(r) =
                    shm::scatter(comm, root, send, (!in_place).then_some(&mut *recv), n)
            {
                return r.map(|()| None);
            }
            let mut s = over.schedule(name);
            let mine = if in_place {
                s.tmp(n)
            } else {
                Slice::new(Loc::Recv, 0, n)
            };
            if choose_gather(&settings(), n * p) == "binomial" {
                let work = s.tmp(if is_root {
                    n * p
                } else {
                    alg_subtree_bytes(over.me, root, p, n)
                });
                let src = is_root.then(|| Slice::new(Loc::Send, 0, n * p));
                alg::scatter_binomial(&mut s, &over.team(), root, src, work, mine);
            } else {
                let b = uniform(Loc::Send, p, n);
                alg::scatter_linear(&mut s, &over.team(), root, is_root.then_some(&b[..]), mine);
            }
            s
        }
        Some(v) => {
            if is_root && !in_place && recv.len() != v.at(root).1 {
                return Err(mismatch(
                    name,
                    format!(
                        "root block of {} bytes into {} bytes",
                        v.at(root).1,
                        recv.len()
                    ),
                ));
            }
            if blocking
                && let Some(r) =
                    shm::scatterv(comm, root, send, v, (!in_place).then_some(&mut *recv))
            {
                return r.map(|()| None);
            }
            let mut s = over.schedule(name);
            let b = v.slices(Loc::Send);
            let mine = if in_place {
                s.tmp(b[root].len)
            } else {
                Slice::new(Loc::Recv, 0, recv.len())
            };
            alg::scatter_linear(&mut s, &over.team(), root, is_root.then_some(&b[..]), mine);
            s
        }
    };
    bind(&mut s, send, recv);
    finish(s, mode)
}

fn do_allgather(
    comm: &CommData,
    send: &[u8],
    recv: &mut [u8],
    vblocks: Option<VBlocks<'_>>,
    in_place: bool,
    mode: Mode,
) -> Result<Option<Shared>, Error> {
    let name = "MPI_Allgather";
    let over = Over::comm(comm);
    let p = over.p();
    let me = over.me;
    let blks = match vblocks {
        None => {
            let n = if in_place {
                recv.len() / p.max(1)
            } else {
                send.len()
            };
            if recv.len() != n * p {
                return Err(mismatch(
                    name,
                    format!("{p} blocks of {n} bytes into {} bytes", recv.len()),
                ));
            }
            if matches!(mode, Mode::Blocking)
                && let Some(r) = shm::allgather(comm, (!in_place).then_some(send), recv, n)
            {
                return r.map(|()| None);
            }
            if choose_allgather(&settings(), n * p) == "bruck" && p > 1 {
                let mut s = over.schedule(name);
                let mine = if in_place {
                    Slice::new(Loc::Recv, me * n, n)
                } else {
                    Slice::new(Loc::Send, 0, n)
                };
                let work = s.tmp(n * p);
                alg::allgather_bruck(
                    &mut s,
                    &over.team(),
                    mine,
                    work,
                    Slice::new(Loc::Recv, 0, n * p),
                );
                bind(&mut s, send, recv);
                return finish(s, mode);
            }
            uniform(Loc::Recv, p, n)
        }
        Some(v) => {
            let mine = v.at(me).1;
            if !in_place && send.len() != mine {
                return Err(mismatch(
                    name,
                    format!("sends {} bytes into a {mine}-byte block", send.len()),
                ));
            }
            v.slices(Loc::Recv)
        }
    };
    let mut s = over.schedule(name);
    if !in_place {
        s.copy(Slice::new(Loc::Send, 0, blks[me].len), blks[me]);
    }
    alg::allgather_ring(&mut s, &over.team(), &blks);
    bind(&mut s, send, recv);
    finish(s, mode)
}

#[allow(clippy::too_many_arguments)]
fn do_alltoall(
    comm: &CommData,
    send: &[u8],
    recv: &mut [u8],
    sblocks: Option<Vec<Slice>>,
    rblocks: Option<Vec<Slice>>,
    in_place: bool,
    mode: Mode,
) -> Result<Option<Shared>, Error> {
    let name = "MPI_Alltoall";
    let over = Over::comm(comm);
    let p = over.p();
    let n = recv.len() / p.max(1);
    if rblocks.is_none() && recv.len() != n * p {
        return Err(mismatch(
            name,
            format!("{} bytes are not {p} equal blocks", recv.len()),
        ));
    }
    if rblocks.is_none() && !in_place && send.len() != recv.len() {
        return Err(mismatch(
            name,
            format!("send {} bytes, receive {} bytes", send.len(), recv.len()),
        ));
    }
    if matches!(mode, Mode::Blocking)
        && sblocks.is_none()
        && rblocks.is_none()
        && let Some(r) = shm::alltoall(comm, (!in_place).then_some(send), recv, n)
    {
        return r.map(|()| None);
    }
    let mut s = over.schedule(name);
    let rb = rblocks.unwrap_or_else(|| uniform(Loc::Recv, p, n));
    let sb = if in_place {
        let tmp = s.tmp(recv.len());
        s.copy(Slice::new(Loc::Recv, 0, recv.len()), tmp);
        s.round();
        rb.iter()
            .map(|b| Slice::new(tmp.loc, b.off, b.len))
            .collect()
    } else {
        sblocks.unwrap_or_else(|| uniform(Loc::Send, p, n))
    };
    alg::alltoall_pairwise(&mut s, &over.team(), &sb, &rb);
    bind(&mut s, send, recv);
    finish(s, mode)
}

/// Checks that `b` stays inside a `len`-byte buffer; returns its packed length and whether
/// it is one contiguous byte range.
fn typed_block(name: &'static str, b: &TypedBlock, len: usize) -> Result<(usize, bool), Error> {
    if b.displ > len {
        return Err(mismatch(
            name,
            format!("displacement {} outside a {len}-byte buffer", b.displ),
        ));
    }
    b.datatype.check_span(b.count, len - b.displ)?;
    Ok((b.datatype.pack_size(b.count), b.datatype.is_contiguous()))
}

/// `MPI_Alltoallw`: the block `sblocks[j]` of `send` goes to rank j and the block `rblocks[i]`
/// of `recv` comes from rank i, each with its own datatype. `sblocks` `None` is
/// `MPI_IN_PLACE`: the blocks of `recv` are sent and replaced. Contiguous blocks travel
/// straight from and into the caller's buffers; the others are packed into and unpacked from
/// temporaries. Algorithm: pairwise exchange, as `MPI_Alltoallv`.
fn do_alltoallw(
    comm: &CommData,
    send: &[u8],
    sblocks: Option<&[TypedBlock]>,
    recv: &mut [u8],
    rblocks: &[TypedBlock],
    mode: Mode,
) -> Result<Option<Shared>, Error> {
    let name = "MPI_Alltoallw";
    let over = Over::comm(comm);
    let p = over.p();
    if rblocks.len() != p || sblocks.is_some_and(|b| b.len() != p) {
        return Err(mismatch(
            name,
            format!(
                "{} send and {} receive blocks for {p} ranks",
                sblocks.map_or(p, <[TypedBlock]>::len),
                rblocks.len()
            ),
        ));
    }
    let mut s = over.schedule(name);
    let (slen, rlen) = (send.len(), recv.len());
    let mut recvs = Vec::with_capacity(p);
    let mut unpacks = Vec::new();
    for b in rblocks {
        let (n, contiguous) = typed_block(name, b, rlen)?;
        if contiguous {
            recvs.push(Slice::new(Loc::Recv, b.displ, n));
        } else {
            let t = s.tmp(n);
            unpacks.push((b, t));
            recvs.push(t);
        }
    }
    let mut sends = Vec::with_capacity(p);
    let (src, src_blocks, src_len) = match sblocks {
        Some(sb) => (Loc::Send, sb, slen),
        None => (Loc::Recv, rblocks, rlen),
    };
    for b in src_blocks {
        let (n, contiguous) = typed_block(name, b, src_len)?;
        let whole = Slice::new(src, b.displ, n);
        if contiguous && sblocks.is_some() {
            sends.push(whole);
        } else {
            // In place, even contiguous blocks are copied out first: they are overwritten.
            let t = s.tmp(n);
            if contiguous {
                s.copy(whole, t);
            } else {
                s.pack(
                    &b.datatype,
                    b.count,
                    Slice::new(src, b.displ, src_len - b.displ),
                    t,
                );
            }
            sends.push(t);
        }
    }
    if sends[over.me].len != recvs[over.me].len {
        return Err(mismatch(
            name,
            format!(
                "this rank sends itself {} bytes into a {}-byte block",
                sends[over.me].len, recvs[over.me].len
            ),
        ));
    }
    alg::alltoall_pairwise(&mut s, &over.team(), &sends, &recvs);
    for (b, t) in unpacks {
        s.unpack(
            &b.datatype,
            b.count,
            t,
            Slice::new(Loc::Recv, b.displ, rlen - b.displ),
        );
    }
    s.round();
    bind(&mut s, send, recv);
    finish(s, mode)
}

fn do_reduce_scatter_block(
    comm: &CommData,
    send: Option<&[u8]>,
    recv: &mut [u8],
    op: ResolvedOp,
    mode: Mode,
) -> Result<Option<Shared>, Error> {
    let name = "MPI_Reduce_scatter_block";
    let p = comm.group().size() as usize;
    let n = match send {
        Some(sb) => {
            if sb.len() != recv.len() * p {
                return Err(mismatch(
                    name,
                    format!(
                        "send {} bytes for {p} blocks of {} bytes",
                        sb.len(),
                        recv.len()
                    ),
                ));
            }
            recv.len()
        }
        None => {
            let n = recv.len() / p.max(1);
            if n * p != recv.len() {
                return Err(mismatch(
                    name,
                    format!("{} bytes are not {p} equal blocks", recv.len()),
                ));
            }
            n
        }
    };
    if !n.is_multiple_of(op.elem.max(1)) {
        return Err(mismatch(name, format!("{n} bytes are not whole elements")));
    }
    let counts = vec![n / op.elem.max(1); p];
    do_reduce_scatter(comm, name, send, recv, &counts, op, mode)
}

/// Reduce-scatter of blocks of `counts[i]` elements (`MPI_Reduce_scatter`; with equal counts
/// `MPI_Reduce_scatter_block`): rank i gets block i of the reduction of every rank's vector.
/// `send` holds the whole vector; `None` is `MPI_IN_PLACE`: `recv` holds it and gets this
/// rank's block at its start, as MPI specifies.
///
/// Algorithm: ring reduce-scatter over the blocks for commutative operations, else a
/// rank-ordered binomial reduce to rank 0 followed by a linear scatter of the blocks.
fn do_reduce_scatter(
    comm: &CommData,
    name: &'static str,
    send: Option<&[u8]>,
    recv: &mut [u8],
    counts: &[usize],
    op: ResolvedOp,
    mode: Mode,
) -> Result<Option<Shared>, Error> {
    let over = Over::comm(comm);
    let p = over.p();
    let elem = op.elem.max(1);
    if counts.len() != p {
        return Err(mismatch(
            name,
            format!("{} counts for {p} ranks", counts.len()),
        ));
    }
    let mut parts = Vec::with_capacity(p);
    let mut total = 0usize;
    for &c in counts {
        parts.push((total, c * elem));
        total += c * elem;
    }
    let mine = parts[over.me].1;
    match send {
        Some(sb) if sb.len() != total || recv.len() != mine => {
            return Err(mismatch(
                name,
                format!(
                    "send {} bytes and receive {} bytes where the counts give {total} and {mine}",
                    sb.len(),
                    recv.len()
                ),
            ));
        }
        None if recv.len() < total => {
            return Err(mismatch(
                name,
                format!(
                    "in place: a {}-byte buffer for {total} bytes of input",
                    recv.len()
                ),
            ));
        }
        _ => {}
    }
    let mut s = over.schedule(name);
    s.set_op(op.clone());
    let acc = s.tmp(total);
    let src = if send.is_some() { Loc::Send } else { Loc::Recv };
    s.copy(Slice::new(src, 0, total), acc);
    let t = over.team();
    let tmp = s.tmp(total);
    let out = Slice::new(Loc::Recv, 0, mine);
    if op.commutative {
        alg::reduce_scatter_ring_blocks(&mut s, &t, &parts, acc, tmp);
        s.copy(acc.sub(parts[over.me].0, mine), out);
    } else {
        alg::reduce_binomial(&mut s, &t, 0, false, acc, tmp);
        let b: Vec<Slice> = parts.iter().map(|&(o, l)| acc.sub(o, l)).collect();
        alg::scatter_linear(&mut s, &t, 0, (over.me == 0).then_some(&b[..]), out);
    }
    s.round();
    bind(&mut s, send.unwrap_or(&[]), recv);
    finish(s, mode)
}

fn do_scan(
    comm: &CommData,
    send: Option<&[u8]>,
    recv: &mut [u8],
    op: ResolvedOp,
    exclusive: bool,
    mode: Mode,
) -> Result<Option<Shared>, Error> {
    let name = if exclusive { "MPI_Exscan" } else { "MPI_Scan" };
    if let Some(sb) = send
        && sb.len() != recv.len()
    {
        return Err(mismatch(
            name,
            format!("send {} bytes, receive {} bytes", sb.len(), recv.len()),
        ));
    }
    let over = Over::comm(comm);
    let n = recv.len();
    let mut s = over.schedule(name);
    s.set_op(op);
    let partial = s.tmp(n);
    let tmp = s.tmp(n);
    let src = if send.is_some() { Loc::Send } else { Loc::Recv };
    s.copy(Slice::new(src, 0, n), partial);
    let out = Slice::new(Loc::Recv, 0, n);
    if !exclusive && send.is_some() {
        s.copy(Slice::new(Loc::Send, 0, n), out);
    }
    alg::scan_recursive_doubling(&mut s, &over.team(), partial, tmp, out, exclusive);
    s.round();
    bind(&mut s, send.unwrap_or(&[]), recv);
    finish(s, mode)
}

/// Internal blocking allgather of equal byte blocks (communicator creation).
pub(crate) fn allgather_bytes(over: Over<'_>, mine: &[u8], out: &mut [u8]) -> Result<(), Error> {
    let mut s = over.schedule("MPI_Allgather");
    let n = mine.len();
    let b = uniform(Loc::Recv, over.p(), n);
    s.copy(Slice::new(Loc::Send, 0, n), b[over.me]);
    alg::allgather_ring(&mut s, &over.team(), &b);
    bind(&mut s, mine, out);
    run_blocking(s)
}

/// Internal blocking allreduce of u64 words with bitwise and (context allocation).
pub(crate) fn allreduce_band_u64(over: Over<'_>, words: &mut [u64]) -> Result<(), Error> {
    let op = SystemOperation::BitwiseAnd.resolve(&crate::datatype::Datatype::primitive(
        crate::datatype::Primitive::U64,
    ))?;
    let bytes = crate::datatype::bytes_of_mut(words);
    let mut s = over.schedule("context allocation");
    s.set_op(op.clone());
    let acc = Slice::new(Loc::Recv, 0, bytes.len());
    let tmp = s.tmp(bytes.len());
    alg::allreduce_recursive_doubling(&mut s, &over.team(), acc, tmp);
    bind(&mut s, &[], bytes);
    run_blocking(s)
}

/// Blocking barrier over a communicator.
pub(crate) fn comm_barrier(comm: &CommData) -> Result<(), Error> {
    if let Some(r) = shm::barrier(comm) {
        return r;
    }
    if let Some((l, node)) = two_level(comm, true)? {
        let arrive = comm_barrier(node);
        let leaders = run_leaders(comm, "MPI_Barrier", None, &mut [], |s, _| {
            barrier_leaders(s, l);
        });
        return first_error([arrive, leaders, comm_barrier(node)]);
    }
    let over = Over::comm(comm);
    if pair_fast(&over, &Mode::Blocking) {
        let z = std::ptr::NonNull::<u8>::dangling().as_ptr();
        // SAFETY: zero-length buffers: nothing is read or written through the pointers.
        return unsafe {
            direct_pair(
                &over,
                "MPI_Barrier",
                Some((z.cast_const(), 0)),
                Some((z, 0)),
                || {},
                || {},
            )
        };
    }
    run_blocking(build_barrier(&over))
}

/// Collective operations of every communicator (rsmpi's `CommunicatorCollectives`).
///
/// Operations on buffers of Equivalence types with [`SystemOperation`]s or
/// [`UserOperation`]s. Every member must call the same collectives in the same order.
///
/// # Errors
/// Locally detectable misuse (mismatched lengths, invalid roots, undefined operations) is
/// reported before any communication; a message of the wrong length from a peer gives
/// [`Error::UsageCountMismatch`] or [`Error::UsageTruncated`]; a lost peer [`Error::PeerLost`].
///
/// # Standard section(s)
/// MPI-4.1 §6.4-§6.12.
pub trait CommunicatorCollectives: Communicator {
    /// `MPI_Allgather`: block i of `recv` gets rank i's `send`.
    ///
    /// # Errors
    /// See the trait.
    fn all_gather_into<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        send: &S,
        recv: &mut R,
    ) -> Result<(), Error> {
        contiguous_send("MPI_Allgather", send)?;
        contiguous_recv("MPI_Allgather", recv)?;
        do_allgather(
            self.data(),
            send.as_bytes(),
            recv.as_bytes_mut(),
            None,
            false,
            Mode::Blocking,
        )
        .map(drop)
    }

    /// `MPI_Allgather` with `MPI_IN_PLACE`: this rank's block is already in `buf`.
    ///
    /// # Errors
    /// See the trait.
    fn all_gather_in_place<R: BufferMut + ?Sized>(&self, buf: &mut R) -> Result<(), Error> {
        contiguous_recv("MPI_Allgather", buf)?;
        do_allgather(
            self.data(),
            &[],
            buf.as_bytes_mut(),
            None,
            true,
            Mode::Blocking,
        )
        .map(drop)
    }

    /// `MPI_Allgatherv`.
    ///
    /// # Errors
    /// See the trait.
    fn all_gather_varcount_into<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        send: &S,
        recv: &mut PartitionMut<'_, R>,
    ) -> Result<(), Error> {
        contiguous_send("MPI_Allgatherv", send)?;
        let (v, rb) = recv_partition("MPI_Allgatherv", self.size() as usize, recv)?;
        do_allgather(
            self.data(),
            send.as_bytes(),
            rb,
            Some(v),
            false,
            Mode::Blocking,
        )
        .map(drop)
    }

    /// `MPI_Alltoall`: block j of `send` goes to rank j; block i of `recv` comes from rank i.
    ///
    /// # Errors
    /// See the trait.
    fn all_to_all_into<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        send: &S,
        recv: &mut R,
    ) -> Result<(), Error> {
        contiguous_send("MPI_Alltoall", send)?;
        contiguous_recv("MPI_Alltoall", recv)?;
        do_alltoall(
            self.data(),
            send.as_bytes(),
            recv.as_bytes_mut(),
            None,
            None,
            false,
            Mode::Blocking,
        )
        .map(drop)
    }

    /// `MPI_Alltoall` with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn all_to_all_in_place<R: BufferMut + ?Sized>(&self, buf: &mut R) -> Result<(), Error> {
        contiguous_recv("MPI_Alltoall", buf)?;
        do_alltoall(
            self.data(),
            &[],
            buf.as_bytes_mut(),
            None,
            None,
            true,
            Mode::Blocking,
        )
        .map(drop)
    }

    /// `MPI_Alltoallv`.
    ///
    /// # Errors
    /// See the trait.
    fn all_to_all_varcount_into<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        send: &Partition<'_, S>,
        recv: &mut PartitionMut<'_, R>,
    ) -> Result<(), Error> {
        let p = self.size() as usize;
        let (sv, sbytes) = send_partition("MPI_Alltoallv", p, send)?;
        let (rv, rbytes) = recv_partition("MPI_Alltoallv", p, recv)?;
        do_alltoall(
            self.data(),
            sbytes,
            rbytes,
            Some(sv.slices(Loc::Send)),
            Some(rv.slices(Loc::Recv)),
            false,
            Mode::Blocking,
        )
        .map(drop)
    }

    /// `MPI_Allreduce`.
    ///
    /// # Errors
    /// See the trait.
    fn all_reduce_into<S: Buffer + ?Sized, R: BufferMut + ?Sized, O: Operation>(
        &self,
        send: &S,
        recv: &mut R,
        op: O,
    ) -> Result<(), Error> {
        contiguous_send("MPI_Allreduce", send)?;
        contiguous_recv("MPI_Allreduce", recv)?;
        let op = op.resolve(&send.item_datatype())?;
        do_allreduce(
            self.data(),
            Some(send.as_bytes()),
            recv.as_bytes_mut(),
            op,
            Mode::Blocking,
        )
        .map(drop)
    }

    /// `MPI_Allreduce` with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn all_reduce_in_place<R: BufferMut + ?Sized, O: Operation>(
        &self,
        buf: &mut R,
        op: O,
    ) -> Result<(), Error> {
        contiguous_recv("MPI_Allreduce", buf)?;
        let op = op.resolve(&buf.item_datatype())?;
        do_allreduce(self.data(), None, buf.as_bytes_mut(), op, Mode::Blocking).map(drop)
    }

    /// `MPI_Reduce_scatter_block`: rank i gets block i of the reduction of every `send`.
    ///
    /// # Errors
    /// See the trait.
    fn reduce_scatter_block_into<S: Buffer + ?Sized, R: BufferMut + ?Sized, O: Operation>(
        &self,
        send: &S,
        recv: &mut R,
        op: O,
    ) -> Result<(), Error> {
        contiguous_send("MPI_Reduce_scatter_block", send)?;
        contiguous_recv("MPI_Reduce_scatter_block", recv)?;
        let op = op.resolve(&send.item_datatype())?;
        do_reduce_scatter_block(
            self.data(),
            Some(send.as_bytes()),
            recv.as_bytes_mut(),
            op,
            Mode::Blocking,
        )
        .map(drop)
    }

    /// `MPI_Reduce_scatter_block` with `MPI_IN_PLACE`: `buf` holds all p blocks; as MPI
    /// specifies, this rank's block of the result is stored at the start of `buf` (the rest
    /// of `buf` is left unspecified).
    ///
    /// # Errors
    /// See the trait.
    fn reduce_scatter_block_in_place<R: BufferMut + ?Sized, O: Operation>(
        &self,
        buf: &mut R,
        op: O,
    ) -> Result<(), Error> {
        contiguous_recv("MPI_Reduce_scatter_block", buf)?;
        let op = op.resolve(&buf.item_datatype())?;
        do_reduce_scatter_block(self.data(), None, buf.as_bytes_mut(), op, Mode::Blocking).map(drop)
    }

    /// `MPI_Reduce_scatter`: rank i gets the `counts[i]` elements of block i (blocks laid out
    /// one after another in `send`, in rank order) of the reduction of every `send`.
    ///
    /// # Errors
    /// See the trait; `counts` not one non-negative count per rank, `send` not their sum or
    /// `recv` not `counts[rank]` elements: [`Error::UsageCountMismatch`].
    ///
    /// # Standard section(s)
    /// MPI-4.1 §6.10.2.
    fn reduce_scatter_varcount_into<S: Buffer + ?Sized, R: BufferMut + ?Sized, O: Operation>(
        &self,
        send: &S,
        recv: &mut R,
        counts: &[i32],
        op: O,
    ) -> Result<(), Error> {
        let name = "MPI_Reduce_scatter";
        contiguous_send(name, send)?;
        contiguous_recv(name, recv)?;
        let counts = check_counts(name, self.size() as usize, counts)?;
        let op = op.resolve(&send.item_datatype())?;
        let (sb, rb) = (send.as_bytes(), recv.as_bytes_mut());
        do_reduce_scatter(self.data(), name, Some(sb), rb, &counts, op, Mode::Blocking).map(drop)
    }

    /// `MPI_Reduce_scatter` with `MPI_IN_PLACE`: `buf` holds the whole vector (the sum of
    /// `counts` elements); this rank's block of the result is stored at its start.
    ///
    /// # Errors
    /// As [`CommunicatorCollectives::reduce_scatter_varcount_into`].
    fn reduce_scatter_varcount_in_place<R: BufferMut + ?Sized, O: Operation>(
        &self,
        buf: &mut R,
        counts: &[i32],
        op: O,
    ) -> Result<(), Error> {
        let name = "MPI_Reduce_scatter";
        contiguous_recv(name, buf)?;
        let counts = check_counts(name, self.size() as usize, counts)?;
        let op = op.resolve(&buf.item_datatype())?;
        let b = buf.as_bytes_mut();
        do_reduce_scatter(self.data(), name, None, b, &counts, op, Mode::Blocking).map(drop)
    }

    /// `MPI_Allgatherv` with `MPI_IN_PLACE`: this rank's block is already in place in `recv`.
    ///
    /// # Errors
    /// See the trait.
    fn all_gather_varcount_in_place<R: BufferMut + ?Sized>(
        &self,
        recv: &mut PartitionMut<'_, R>,
    ) -> Result<(), Error> {
        let (v, rb) = recv_partition("MPI_Allgatherv", self.size() as usize, recv)?;
        do_allgather(self.data(), &[], rb, Some(v), true, Mode::Blocking).map(drop)
    }

    /// `MPI_Alltoallv` with `MPI_IN_PLACE`: block i of `buf` goes to rank i and is replaced by
    /// rank i's block for this rank (the same counts on both sides, as MPI requires).
    ///
    /// # Errors
    /// See the trait.
    fn all_to_all_varcount_in_place<R: BufferMut + ?Sized>(
        &self,
        buf: &mut PartitionMut<'_, R>,
    ) -> Result<(), Error> {
        let (v, bytes) = recv_partition("MPI_Alltoallv", self.size() as usize, buf)?;
        do_alltoall(
            self.data(),
            &[],
            bytes,
            None,
            Some(v.slices(Loc::Recv)),
            true,
            Mode::Blocking,
        )
        .map(drop)
    }

    /// `MPI_Scan`: rank i gets the reduction of ranks 0..=i.
    ///
    /// # Errors
    /// See the trait.
    fn scan_into<S: Buffer + ?Sized, R: BufferMut + ?Sized, O: Operation>(
        &self,
        send: &S,
        recv: &mut R,
        op: O,
    ) -> Result<(), Error> {
        contiguous_send("MPI_Scan", send)?;
        contiguous_recv("MPI_Scan", recv)?;
        let op = op.resolve(&send.item_datatype())?;
        do_scan(
            self.data(),
            Some(send.as_bytes()),
            recv.as_bytes_mut(),
            op,
            false,
            Mode::Blocking,
        )
        .map(drop)
    }

    /// `MPI_Scan` with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn scan_in_place<R: BufferMut + ?Sized, O: Operation>(
        &self,
        buf: &mut R,
        op: O,
    ) -> Result<(), Error> {
        contiguous_recv("MPI_Scan", buf)?;
        let op = op.resolve(&buf.item_datatype())?;
        do_scan(
            self.data(),
            None,
            buf.as_bytes_mut(),
            op,
            false,
            Mode::Blocking,
        )
        .map(drop)
    }

    /// `MPI_Exscan`: rank i > 0 gets the reduction of ranks 0..i; rank 0's `recv` is left
    /// untouched.
    ///
    /// # Errors
    /// See the trait.
    fn exscan_into<S: Buffer + ?Sized, R: BufferMut + ?Sized, O: Operation>(
        &self,
        send: &S,
        recv: &mut R,
        op: O,
    ) -> Result<(), Error> {
        contiguous_send("MPI_Exscan", send)?;
        contiguous_recv("MPI_Exscan", recv)?;
        let op = op.resolve(&send.item_datatype())?;
        do_scan(
            self.data(),
            Some(send.as_bytes()),
            recv.as_bytes_mut(),
            op,
            true,
            Mode::Blocking,
        )
        .map(drop)
    }

    /// `MPI_Exscan` with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn exscan_in_place<R: BufferMut + ?Sized, O: Operation>(
        &self,
        buf: &mut R,
        op: O,
    ) -> Result<(), Error> {
        contiguous_recv("MPI_Exscan", buf)?;
        let op = op.resolve(&buf.item_datatype())?;
        do_scan(
            self.data(),
            None,
            buf.as_bytes_mut(),
            op,
            true,
            Mode::Blocking,
        )
        .map(drop)
    }

    /// `MPI_Alltoallw`: block j of `send` (`send_blocks[j]`: count, byte displacement and
    /// datatype) goes to rank j; block i of `recv` (`recv_blocks[i]`) comes from rank i.
    /// Non-contiguous datatypes are packed and unpacked through temporaries.
    ///
    /// # Errors
    /// See the trait; a block outside its buffer or an uncommitted datatype:
    /// [`Error::UsageDatatype`].
    fn all_to_all_w_into<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        send: &S,
        send_blocks: &[TypedBlock],
        recv: &mut R,
        recv_blocks: &[TypedBlock],
    ) -> Result<(), Error> {
        contiguous_send("MPI_Alltoallw", send)?;
        contiguous_recv("MPI_Alltoallw", recv)?;
        let (sb, rb) = (send.as_bytes(), recv.as_bytes_mut());
        do_alltoallw(
            self.data(),
            sb,
            Some(send_blocks),
            rb,
            recv_blocks,
            Mode::Blocking,
        )
        .map(drop)
    }

    /// `MPI_Alltoallw` with `MPI_IN_PLACE`: block i of `buf` (`blocks[i]`) goes to rank i and
    /// is replaced by rank i's block for this rank.
    ///
    /// # Errors
    /// As [`CommunicatorCollectives::all_to_all_w_into`].
    fn all_to_all_w_in_place<R: BufferMut + ?Sized>(
        &self,
        buf: &mut R,
        blocks: &[TypedBlock],
    ) -> Result<(), Error> {
        contiguous_recv("MPI_Alltoallw", buf)?;
        let b = buf.as_bytes_mut();
        do_alltoallw(self.data(), &[], None, b, blocks, Mode::Blocking).map(drop)
    }

    /// `MPI_Exscan` under rsmpi's name; the same as [`CommunicatorCollectives::exscan_into`].
    ///
    /// # Errors
    /// See the trait.
    fn exclusive_scan_into<S: Buffer + ?Sized, R: BufferMut + ?Sized, O: Operation>(
        &self,
        send: &S,
        recv: &mut R,
        op: O,
    ) -> Result<(), Error> {
        self.exscan_into(send, recv, op)
    }

    /// `MPI_Ibarrier`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_barrier(&self) -> Result<Request<'static, crate::request::StaticScope>, Error> {
        let s = build_barrier(&Over::comm(self.data()));
        finish_req(s, crate::request::StaticScope)
    }

    /// `MPI_Iallreduce`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_all_reduce_into<
        'a,
        Sc: Scope<'a>,
        S: Buffer + ?Sized,
        R: BufferMut + ?Sized,
        O: Operation,
    >(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut R,
        op: O,
    ) -> Result<Request<'a, Sc>, Error> {
        contiguous_send("MPI_Iallreduce", send)?;
        contiguous_recv("MPI_Iallreduce", recv)?;
        let op = op.resolve(&send.item_datatype())?;
        let e = do_allreduce(
            self.data(),
            Some(send.as_bytes()),
            recv.as_bytes_mut(),
            op,
            Mode::Immediate,
        )?;
        Ok(Request::collective_opt(e, scope))
    }

    /// `MPI_Iallgather`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_all_gather_into<'a, Sc: Scope<'a>, S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error> {
        contiguous_send("MPI_Iallgather", send)?;
        contiguous_recv("MPI_Iallgather", recv)?;
        let e = do_allgather(
            self.data(),
            send.as_bytes(),
            recv.as_bytes_mut(),
            None,
            false,
            Mode::Immediate,
        )?;
        Ok(Request::collective_opt(e, scope))
    }

    /// `MPI_Ialltoall`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_all_to_all_into<'a, Sc: Scope<'a>, S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error> {
        contiguous_send("MPI_Ialltoall", send)?;
        contiguous_recv("MPI_Ialltoall", recv)?;
        let e = do_alltoall(
            self.data(),
            send.as_bytes(),
            recv.as_bytes_mut(),
            None,
            None,
            false,
            Mode::Immediate,
        )?;
        Ok(Request::collective_opt(e, scope))
    }

    /// `MPI_Iscan`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_scan_into<
        'a,
        Sc: Scope<'a>,
        S: Buffer + ?Sized,
        R: BufferMut + ?Sized,
        O: Operation,
    >(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut R,
        op: O,
    ) -> Result<Request<'a, Sc>, Error> {
        contiguous_send("MPI_Iscan", send)?;
        contiguous_recv("MPI_Iscan", recv)?;
        let op = op.resolve(&send.item_datatype())?;
        let e = do_scan(
            self.data(),
            Some(send.as_bytes()),
            recv.as_bytes_mut(),
            op,
            false,
            Mode::Immediate,
        )?;
        Ok(Request::collective_opt(e, scope))
    }

    /// `MPI_Iallreduce` with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_all_reduce_in_place<'a, Sc: Scope<'a>, R: BufferMut + ?Sized, O: Operation>(
        &self,
        scope: Sc,
        buf: &'a mut R,
        op: O,
    ) -> Result<Request<'a, Sc>, Error> {
        contiguous_recv("MPI_Iallreduce", buf)?;
        let op = op.resolve(&buf.item_datatype())?;
        let e = do_allreduce(self.data(), None, buf.as_bytes_mut(), op, Mode::Immediate);
        immediate(e, scope)
    }

    /// `MPI_Iallgather` with `MPI_IN_PLACE`: this rank's block is already in `buf`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_all_gather_in_place<'a, Sc: Scope<'a>, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        buf: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error> {
        contiguous_recv("MPI_Iallgather", buf)?;
        let b = buf.as_bytes_mut();
        immediate(
            do_allgather(self.data(), &[], b, None, true, Mode::Immediate),
            scope,
        )
    }

    /// `MPI_Iallgatherv`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_all_gather_varcount_into<
        'a,
        Sc: Scope<'a>,
        S: Buffer + ?Sized,
        R: BufferMut + ?Sized,
    >(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut PartitionMut<'_, R>,
    ) -> Result<Request<'a, Sc>, Error> {
        let name = "MPI_Iallgatherv";
        contiguous_send(name, send)?;
        let (v, rb) = recv_partition(name, self.size() as usize, recv)?;
        immediate(
            do_allgather(
                self.data(),
                send.as_bytes(),
                rb,
                Some(v),
                false,
                Mode::Immediate,
            ),
            scope,
        )
    }

    /// `MPI_Iallgatherv` with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_all_gather_varcount_in_place<'a, Sc: Scope<'a>, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        recv: &'a mut PartitionMut<'_, R>,
    ) -> Result<Request<'a, Sc>, Error> {
        let (v, rb) = recv_partition("MPI_Iallgatherv", self.size() as usize, recv)?;
        immediate(
            do_allgather(self.data(), &[], rb, Some(v), true, Mode::Immediate),
            scope,
        )
    }

    /// `MPI_Ialltoall` with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_all_to_all_in_place<'a, Sc: Scope<'a>, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        buf: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error> {
        contiguous_recv("MPI_Ialltoall", buf)?;
        let b = buf.as_bytes_mut();
        immediate(
            do_alltoall(self.data(), &[], b, None, None, true, Mode::Immediate),
            scope,
        )
    }

    /// `MPI_Ialltoallv`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_all_to_all_varcount_into<
        'a,
        Sc: Scope<'a>,
        S: Buffer + ?Sized,
        R: BufferMut + ?Sized,
    >(
        &self,
        scope: Sc,
        send: &'a Partition<'_, S>,
        recv: &'a mut PartitionMut<'_, R>,
    ) -> Result<Request<'a, Sc>, Error> {
        let name = "MPI_Ialltoallv";
        let p = self.size() as usize;
        let (sv, sbytes) = send_partition(name, p, send)?;
        let (rv, rbytes) = recv_partition(name, p, recv)?;
        let e = do_alltoall(
            self.data(),
            sbytes,
            rbytes,
            Some(sv.slices(Loc::Send)),
            Some(rv.slices(Loc::Recv)),
            false,
            Mode::Immediate,
        );
        immediate(e, scope)
    }

    /// `MPI_Ialltoallv` with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_all_to_all_varcount_in_place<'a, Sc: Scope<'a>, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        buf: &'a mut PartitionMut<'_, R>,
    ) -> Result<Request<'a, Sc>, Error> {
        let (v, bytes) = recv_partition("MPI_Ialltoallv", self.size() as usize, buf)?;
        immediate(
            do_alltoall(
                self.data(),
                &[],
                bytes,
                None,
                Some(v.slices(Loc::Recv)),
                true,
                Mode::Immediate,
            ),
            scope,
        )
    }

    /// `MPI_Ireduce_scatter_block`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_reduce_scatter_block_into<
        'a,
        Sc: Scope<'a>,
        S: Buffer + ?Sized,
        R: BufferMut + ?Sized,
        O: Operation,
    >(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut R,
        op: O,
    ) -> Result<Request<'a, Sc>, Error> {
        contiguous_send("MPI_Ireduce_scatter_block", send)?;
        contiguous_recv("MPI_Ireduce_scatter_block", recv)?;
        let op = op.resolve(&send.item_datatype())?;
        let (sb, rb) = (send.as_bytes(), recv.as_bytes_mut());
        immediate(
            do_reduce_scatter_block(self.data(), Some(sb), rb, op, Mode::Immediate),
            scope,
        )
    }

    /// `MPI_Ireduce_scatter_block` with `MPI_IN_PLACE` (result at the start of `buf`).
    ///
    /// # Errors
    /// See the trait.
    fn immediate_reduce_scatter_block_in_place<
        'a,
        Sc: Scope<'a>,
        R: BufferMut + ?Sized,
        O: Operation,
    >(
        &self,
        scope: Sc,
        buf: &'a mut R,
        op: O,
    ) -> Result<Request<'a, Sc>, Error> {
        contiguous_recv("MPI_Ireduce_scatter_block", buf)?;
        let op = op.resolve(&buf.item_datatype())?;
        let b = buf.as_bytes_mut();
        immediate(
            do_reduce_scatter_block(self.data(), None, b, op, Mode::Immediate),
            scope,
        )
    }

    /// `MPI_Ireduce_scatter` (see [`CommunicatorCollectives::reduce_scatter_varcount_into`]).
    ///
    /// # Errors
    /// See the trait.
    fn immediate_reduce_scatter_varcount_into<
        'a,
        Sc: Scope<'a>,
        S: Buffer + ?Sized,
        R: BufferMut + ?Sized,
        O: Operation,
    >(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut R,
        counts: &[i32],
        op: O,
    ) -> Result<Request<'a, Sc>, Error> {
        let name = "MPI_Ireduce_scatter";
        contiguous_send(name, send)?;
        contiguous_recv(name, recv)?;
        let counts = check_counts(name, self.size() as usize, counts)?;
        let op = op.resolve(&send.item_datatype())?;
        let (sb, rb) = (send.as_bytes(), recv.as_bytes_mut());
        let e = do_reduce_scatter(
            self.data(),
            name,
            Some(sb),
            rb,
            &counts,
            op,
            Mode::Immediate,
        );
        immediate(e, scope)
    }

    /// `MPI_Ireduce_scatter` with `MPI_IN_PLACE` (result at the start of `buf`).
    ///
    /// # Errors
    /// See the trait.
    fn immediate_reduce_scatter_varcount_in_place<
        'a,
        Sc: Scope<'a>,
        R: BufferMut + ?Sized,
        O: Operation,
    >(
        &self,
        scope: Sc,
        buf: &'a mut R,
        counts: &[i32],
        op: O,
    ) -> Result<Request<'a, Sc>, Error> {
        let name = "MPI_Ireduce_scatter";
        contiguous_recv(name, buf)?;
        let counts = check_counts(name, self.size() as usize, counts)?;
        let op = op.resolve(&buf.item_datatype())?;
        let b = buf.as_bytes_mut();
        let e = do_reduce_scatter(self.data(), name, None, b, &counts, op, Mode::Immediate);
        immediate(e, scope)
    }

    /// `MPI_Iscan` with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_scan_in_place<'a, Sc: Scope<'a>, R: BufferMut + ?Sized, O: Operation>(
        &self,
        scope: Sc,
        buf: &'a mut R,
        op: O,
    ) -> Result<Request<'a, Sc>, Error> {
        contiguous_recv("MPI_Iscan", buf)?;
        let op = op.resolve(&buf.item_datatype())?;
        let b = buf.as_bytes_mut();
        immediate(
            do_scan(self.data(), None, b, op, false, Mode::Immediate),
            scope,
        )
    }

    /// `MPI_Iexscan` (rsmpi's name): rank i > 0 gets the reduction of ranks 0..i; rank 0's
    /// `recv` is left untouched.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_exclusive_scan_into<
        'a,
        Sc: Scope<'a>,
        S: Buffer + ?Sized,
        R: BufferMut + ?Sized,
        O: Operation,
    >(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut R,
        op: O,
    ) -> Result<Request<'a, Sc>, Error> {
        contiguous_send("MPI_Iexscan", send)?;
        contiguous_recv("MPI_Iexscan", recv)?;
        let op = op.resolve(&send.item_datatype())?;
        let (sb, rb) = (send.as_bytes(), recv.as_bytes_mut());
        immediate(
            do_scan(self.data(), Some(sb), rb, op, true, Mode::Immediate),
            scope,
        )
    }

    /// `MPI_Iexscan` with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_exclusive_scan_in_place<'a, Sc: Scope<'a>, R: BufferMut + ?Sized, O: Operation>(
        &self,
        scope: Sc,
        buf: &'a mut R,
        op: O,
    ) -> Result<Request<'a, Sc>, Error> {
        contiguous_recv("MPI_Iexscan", buf)?;
        let op = op.resolve(&buf.item_datatype())?;
        let b = buf.as_bytes_mut();
        immediate(
            do_scan(self.data(), None, b, op, true, Mode::Immediate),
            scope,
        )
    }

    /// `MPI_Ialltoallw` (see [`CommunicatorCollectives::all_to_all_w_into`]).
    ///
    /// # Errors
    /// As [`CommunicatorCollectives::all_to_all_w_into`].
    fn immediate_all_to_all_w_into<'a, Sc: Scope<'a>, S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        send: &'a S,
        send_blocks: &[TypedBlock],
        recv: &'a mut R,
        recv_blocks: &[TypedBlock],
    ) -> Result<Request<'a, Sc>, Error> {
        contiguous_send("MPI_Ialltoallw", send)?;
        contiguous_recv("MPI_Ialltoallw", recv)?;
        let (sb, rb) = (send.as_bytes(), recv.as_bytes_mut());
        let e = do_alltoallw(
            self.data(),
            sb,
            Some(send_blocks),
            rb,
            recv_blocks,
            Mode::Immediate,
        );
        immediate(e, scope)
    }

    /// `MPI_Ialltoallw` with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// As [`CommunicatorCollectives::all_to_all_w_into`].
    fn immediate_all_to_all_w_in_place<'a, Sc: Scope<'a>, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        buf: &'a mut R,
        blocks: &[TypedBlock],
    ) -> Result<Request<'a, Sc>, Error> {
        contiguous_recv("MPI_Ialltoallw", buf)?;
        let b = buf.as_bytes_mut();
        immediate(
            do_alltoallw(self.data(), &[], None, b, blocks, Mode::Immediate),
            scope,
        )
    }
}

impl<C: Communicator> CommunicatorCollectives for C {}

/// Rooted collectives, called on the root process (rsmpi's `Root`): every member calls the
/// same method on `comm.process_at_rank(root)`; the `_root` forms are for the root, the others
/// for the rest.
///
/// # Errors
/// As [`CommunicatorCollectives`]; an invalid root gives [`Error::UsageInvalidRoot`].
///
/// # Standard section(s)
/// MPI-4.1 §6.4 (bcast), §6.5 (gather), §6.6 (scatter), §6.9 (reduce).
pub trait Root {
    /// `MPI_Bcast`: the root's `buf` is copied into every other member's.
    ///
    /// # Errors
    /// See the trait.
    fn broadcast_into<B: BufferMut + ?Sized>(&self, buf: &mut B) -> Result<(), Error>;
    /// `MPI_Ibcast`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_broadcast_into<'a, Sc: Scope<'a>, B: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        buf: &'a mut B,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Gather` at a non-root.
    ///
    /// # Errors
    /// See the trait.
    fn gather_into<S: Buffer + ?Sized>(&self, send: &S) -> Result<(), Error>;
    /// `MPI_Gather` at the root.
    ///
    /// # Errors
    /// See the trait.
    fn gather_into_root<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        send: &S,
        recv: &mut R,
    ) -> Result<(), Error>;
    /// `MPI_Gather` at the root with `MPI_IN_PLACE` (its block is already in `recv`).
    ///
    /// # Errors
    /// See the trait.
    fn gather_in_place_root<R: BufferMut + ?Sized>(&self, recv: &mut R) -> Result<(), Error>;
    /// `MPI_Gatherv` at a non-root.
    ///
    /// # Errors
    /// See the trait.
    fn gather_varcount_into<S: Buffer + ?Sized>(&self, send: &S) -> Result<(), Error>;
    /// `MPI_Gatherv` at the root.
    ///
    /// # Errors
    /// See the trait.
    fn gather_varcount_into_root<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        send: &S,
        recv: &mut PartitionMut<'_, R>,
    ) -> Result<(), Error>;
    /// `MPI_Scatter` at a non-root.
    ///
    /// # Errors
    /// See the trait.
    fn scatter_into<R: BufferMut + ?Sized>(&self, recv: &mut R) -> Result<(), Error>;
    /// `MPI_Scatter` at the root.
    ///
    /// # Errors
    /// See the trait.
    fn scatter_into_root<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        send: &S,
        recv: &mut R,
    ) -> Result<(), Error>;
    /// `MPI_Scatter` at the root with `MPI_IN_PLACE` (the root keeps its block in `send`).
    ///
    /// # Errors
    /// See the trait.
    fn scatter_in_place_root<S: Buffer + ?Sized>(&self, send: &S) -> Result<(), Error>;
    /// `MPI_Scatterv` at a non-root.
    ///
    /// # Errors
    /// See the trait.
    fn scatter_varcount_into<R: BufferMut + ?Sized>(&self, recv: &mut R) -> Result<(), Error>;
    /// `MPI_Scatterv` at the root.
    ///
    /// # Errors
    /// See the trait.
    fn scatter_varcount_into_root<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        send: &Partition<'_, S>,
        recv: &mut R,
    ) -> Result<(), Error>;
    /// `MPI_Reduce` at a non-root.
    ///
    /// # Errors
    /// See the trait.
    fn reduce_into<S: Buffer + ?Sized, O: Operation>(&self, send: &S, op: O) -> Result<(), Error>;
    /// `MPI_Reduce` at the root.
    ///
    /// # Errors
    /// See the trait.
    fn reduce_into_root<S: Buffer + ?Sized, R: BufferMut + ?Sized, O: Operation>(
        &self,
        send: &S,
        recv: &mut R,
        op: O,
    ) -> Result<(), Error>;
    /// `MPI_Reduce` at the root with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn reduce_in_place_root<R: BufferMut + ?Sized, O: Operation>(
        &self,
        buf: &mut R,
        op: O,
    ) -> Result<(), Error>;
    /// `MPI_Ireduce` at the root.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_reduce_into_root<
        'a,
        Sc: Scope<'a>,
        S: Buffer + ?Sized,
        R: BufferMut + ?Sized,
        O: Operation,
    >(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut R,
        op: O,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Ireduce` at a non-root.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_reduce_into<'a, Sc: Scope<'a>, S: Buffer + ?Sized, O: Operation>(
        &self,
        scope: Sc,
        send: &'a S,
        op: O,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Ireduce` at the root with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_reduce_in_place_root<'a, Sc: Scope<'a>, R: BufferMut + ?Sized, O: Operation>(
        &self,
        scope: Sc,
        buf: &'a mut R,
        op: O,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Gatherv` at the root with `MPI_IN_PLACE` (its block is already in `recv`).
    ///
    /// # Errors
    /// See the trait.
    fn gather_varcount_in_place_root<R: BufferMut + ?Sized>(
        &self,
        recv: &mut PartitionMut<'_, R>,
    ) -> Result<(), Error>;
    /// `MPI_Scatterv` at the root with `MPI_IN_PLACE` (the root keeps its block in `send`).
    ///
    /// # Errors
    /// See the trait.
    fn scatter_varcount_in_place_root<S: Buffer + ?Sized>(
        &self,
        send: &Partition<'_, S>,
    ) -> Result<(), Error>;
    /// `MPI_Igather` at a non-root.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_gather_into<'a, Sc: Scope<'a>, S: Buffer + ?Sized>(
        &self,
        scope: Sc,
        send: &'a S,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Igather` at the root.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_gather_into_root<'a, Sc: Scope<'a>, S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Igather` at the root with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_gather_in_place_root<'a, Sc: Scope<'a>, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        recv: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Igatherv` at a non-root.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_gather_varcount_into<'a, Sc: Scope<'a>, S: Buffer + ?Sized>(
        &self,
        scope: Sc,
        send: &'a S,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Igatherv` at the root.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_gather_varcount_into_root<
        'a,
        Sc: Scope<'a>,
        S: Buffer + ?Sized,
        R: BufferMut + ?Sized,
    >(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut PartitionMut<'_, R>,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Igatherv` at the root with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_gather_varcount_in_place_root<'a, Sc: Scope<'a>, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        recv: &'a mut PartitionMut<'_, R>,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Iscatter` at a non-root.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_scatter_into<'a, Sc: Scope<'a>, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        recv: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Iscatter` at the root.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_scatter_into_root<'a, Sc: Scope<'a>, S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Iscatter` at the root with `MPI_IN_PLACE` (the root keeps its block in `send`).
    ///
    /// # Errors
    /// See the trait.
    fn immediate_scatter_in_place_root<'a, Sc: Scope<'a>, S: Buffer + ?Sized>(
        &self,
        scope: Sc,
        send: &'a S,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Iscatterv` at a non-root.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_scatter_varcount_into<'a, Sc: Scope<'a>, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        recv: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Iscatterv` at the root.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_scatter_varcount_into_root<
        'a,
        Sc: Scope<'a>,
        S: Buffer + ?Sized,
        R: BufferMut + ?Sized,
    >(
        &self,
        scope: Sc,
        send: &'a Partition<'_, S>,
        recv: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error>;
    /// `MPI_Iscatterv` at the root with `MPI_IN_PLACE`.
    ///
    /// # Errors
    /// See the trait.
    fn immediate_scatter_varcount_in_place_root<'a, Sc: Scope<'a>, S: Buffer + ?Sized>(
        &self,
        scope: Sc,
        send: &'a Partition<'_, S>,
    ) -> Result<Request<'a, Sc>, Error>;
}

impl Process<'_> {
    fn root(&self) -> Result<usize, Error> {
        check_root(self.rank(), self.comm_data().group().size() as usize)
    }

    fn not_root(&self, what: &'static str) -> Result<usize, Error> {
        let r = self.root()?;
        if r == self.comm_data().rank_index() {
            return Err(Error::UsageArgument(format!(
                "{what}: the root must call the _root form"
            )));
        }
        Ok(r)
    }

    fn is_root(&self, what: &'static str) -> Result<usize, Error> {
        let r = self.root()?;
        if r != self.comm_data().rank_index() {
            return Err(Error::UsageArgument(format!(
                "{what}: only the root may call the _root form"
            )));
        }
        Ok(r)
    }

    /// Gather(v) at a non-root, run in `mode`.
    fn gather_nonroot<S: Buffer + ?Sized>(
        &self,
        what: &'static str,
        send: &S,
        varcount: bool,
        mode: Mode,
    ) -> Result<Option<Shared>, Error> {
        let root = self.not_root(what)?;
        contiguous_send(what, send)?;
        let v = varcount.then_some(VBlocks::NONE);
        do_gather(
            self.comm_data(),
            root,
            send.as_bytes(),
            &mut [],
            v,
            false,
            mode,
        )
    }

    /// Scatter(v) at a non-root, run in `mode`.
    fn scatter_nonroot<R: BufferMut + ?Sized>(
        &self,
        what: &'static str,
        recv: &mut R,
        varcount: bool,
        mode: Mode,
    ) -> Result<Option<Shared>, Error> {
        let root = self.not_root(what)?;
        contiguous_recv(what, recv)?;
        let v = varcount.then_some(VBlocks::NONE);
        do_scatter(
            self.comm_data(),
            root,
            &[],
            recv.as_bytes_mut(),
            v,
            false,
            mode,
        )
    }

    /// Gather at the root, run in `mode`; `send` is `None` in place.
    fn gather_root<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        what: &'static str,
        send: Option<&S>,
        recv: &mut R,
        mode: Mode,
    ) -> Result<Option<Shared>, Error> {
        let root = self.is_root(what)?;
        if let Some(sb) = send {
            contiguous_send(what, sb)?;
        }
        contiguous_recv(what, recv)?;
        let (sb, in_place) = send.map_or((&[][..], true), |sb| (sb.as_bytes(), false));
        let (c, rb) = (self.comm_data(), recv.as_bytes_mut());
        do_gather(c, root, sb, rb, None, in_place, mode)
    }

    /// Scatter at the root, run in `mode`; `recv` is `None` in place.
    fn scatter_root<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        what: &'static str,
        send: &S,
        recv: Option<&mut R>,
        mode: Mode,
    ) -> Result<Option<Shared>, Error> {
        let root = self.is_root(what)?;
        contiguous_send(what, send)?;
        if let Some(rb) = &recv {
            contiguous_recv(what, &**rb)?;
        }
        let (rb, in_place) = recv.map_or((&mut [][..], true), |rb| (rb.as_bytes_mut(), false));
        let (c, sb) = (self.comm_data(), send.as_bytes());
        do_scatter(c, root, sb, rb, None, in_place, mode)
    }

    /// Reduce at a non-root, run in `mode`.
    fn reduce_nonroot<S: Buffer + ?Sized, O: Operation>(
        &self,
        what: &'static str,
        send: &S,
        op: O,
        mode: Mode,
    ) -> Result<Option<Shared>, Error> {
        let root = self.not_root(what)?;
        contiguous_send(what, send)?;
        let op = op.resolve(&send.item_datatype())?;
        let (c, sb) = (self.comm_data(), send.as_bytes());
        do_reduce(c, root, sb, None, false, op, mode)
    }

    /// Reduce at the root, run in `mode`; `send` is `None` in place.
    fn reduce_root<S: Buffer + ?Sized, R: BufferMut + ?Sized, O: Operation>(
        &self,
        what: &'static str,
        send: Option<&S>,
        recv: &mut R,
        op: O,
        mode: Mode,
    ) -> Result<Option<Shared>, Error> {
        let root = self.is_root(what)?;
        if let Some(sb) = send {
            contiguous_send(what, sb)?;
        }
        contiguous_recv(what, recv)?;
        let op = match send {
            Some(sb) => op.resolve(&sb.item_datatype())?,
            None => op.resolve(&recv.item_datatype())?,
        };
        let (sb, in_place) = send.map_or((&[][..], true), |sb| (sb.as_bytes(), false));
        let (c, rb) = (self.comm_data(), Some(recv.as_bytes_mut()));
        do_reduce(c, root, sb, rb, in_place, op, mode)
    }

    /// Gatherv at the root, run in `mode`; `send` is `None` in place.
    fn gatherv_root<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        what: &'static str,
        send: Option<&S>,
        recv: &mut PartitionMut<'_, R>,
        mode: Mode,
    ) -> Result<Option<Shared>, Error> {
        let root = self.is_root(what)?;
        if let Some(sb) = send {
            contiguous_send(what, sb)?;
        }
        let p = self.comm_data().group().size() as usize;
        let (v, rb) = recv_partition(what, p, recv)?;
        let (sb, in_place) = send.map_or((&[][..], true), |sb| (sb.as_bytes(), false));
        do_gather(self.comm_data(), root, sb, rb, Some(v), in_place, mode)
    }

    /// Scatterv at the root, run in `mode`; `recv` is `None` in place.
    fn scatterv_root<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        what: &'static str,
        send: &Partition<'_, S>,
        recv: Option<&mut R>,
        mode: Mode,
    ) -> Result<Option<Shared>, Error> {
        let root = self.is_root(what)?;
        if let Some(rb) = &recv {
            contiguous_recv(what, &**rb)?;
        }
        let p = self.comm_data().group().size() as usize;
        let (v, sb) = send_partition(what, p, send)?;
        let (rb, in_place) = recv.map_or((&mut [][..], true), |rb| (rb.as_bytes_mut(), false));
        do_scatter(self.comm_data(), root, sb, rb, Some(v), in_place, mode)
    }
}

impl Root for Process<'_> {
    fn broadcast_into<B: BufferMut + ?Sized>(&self, buf: &mut B) -> Result<(), Error> {
        let root = self.root()?;
        if let Some((count, dt)) = buf.layout() {
            // Non-contiguous: broadcast the packed form, then unpack.
            let mut packed = vec![0u8; dt.pack_size(count)];
            if root == self.comm_data().rank_index() {
                let mut pos = 0;
                dt.pack_into(buf.as_bytes_mut(), count, &mut packed, &mut pos)?;
            }
            do_bcast(self.comm_data(), root, &mut packed)?;
            let mut pos = 0;
            return dt.unpack_from(&packed, &mut pos, buf.as_bytes_mut(), count);
        }
        do_bcast(self.comm_data(), root, buf.as_bytes_mut())
    }

    fn immediate_broadcast_into<'a, Sc: Scope<'a>, B: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        buf: &'a mut B,
    ) -> Result<Request<'a, Sc>, Error> {
        let root = self.root()?;
        contiguous_recv("MPI_Ibcast", buf)?;
        let bytes = buf.as_bytes_mut();
        let mut s = build_bcast(&Over::comm(self.comm_data()), root, bytes.len());
        bind(&mut s, &[], bytes);
        finish_req(s, scope)
    }

    fn gather_into<S: Buffer + ?Sized>(&self, send: &S) -> Result<(), Error> {
        self.gather_nonroot("MPI_Gather", send, false, Mode::Blocking)
            .map(drop)
    }

    fn gather_into_root<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        send: &S,
        recv: &mut R,
    ) -> Result<(), Error> {
        self.gather_root("MPI_Gather", Some(send), recv, Mode::Blocking)
            .map(drop)
    }

    fn gather_in_place_root<R: BufferMut + ?Sized>(&self, recv: &mut R) -> Result<(), Error> {
        self.gather_root("MPI_Gather", None::<&[u8]>, recv, Mode::Blocking)
            .map(drop)
    }

    fn gather_varcount_into<S: Buffer + ?Sized>(&self, send: &S) -> Result<(), Error> {
        self.gather_nonroot("MPI_Gatherv", send, true, Mode::Blocking)
            .map(drop)
    }

    fn gather_varcount_into_root<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        send: &S,
        recv: &mut PartitionMut<'_, R>,
    ) -> Result<(), Error> {
        self.gatherv_root("MPI_Gatherv", Some(send), recv, Mode::Blocking)
            .map(drop)
    }

    fn scatter_into<R: BufferMut + ?Sized>(&self, recv: &mut R) -> Result<(), Error> {
        self.scatter_nonroot("MPI_Scatter", recv, false, Mode::Blocking)
            .map(drop)
    }

    fn scatter_into_root<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        send: &S,
        recv: &mut R,
    ) -> Result<(), Error> {
        self.scatter_root("MPI_Scatter", send, Some(recv), Mode::Blocking)
            .map(drop)
    }

    fn scatter_in_place_root<S: Buffer + ?Sized>(&self, send: &S) -> Result<(), Error> {
        self.scatter_root("MPI_Scatter", send, None::<&mut [u8]>, Mode::Blocking)
            .map(drop)
    }

    fn scatter_varcount_into<R: BufferMut + ?Sized>(&self, recv: &mut R) -> Result<(), Error> {
        self.scatter_nonroot("MPI_Scatterv", recv, true, Mode::Blocking)
            .map(drop)
    }

    fn scatter_varcount_into_root<S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        send: &Partition<'_, S>,
        recv: &mut R,
    ) -> Result<(), Error> {
        self.scatterv_root("MPI_Scatterv", send, Some(recv), Mode::Blocking)
            .map(drop)
    }

    fn reduce_into<S: Buffer + ?Sized, O: Operation>(&self, send: &S, op: O) -> Result<(), Error> {
        self.reduce_nonroot("MPI_Reduce", send, op, Mode::Blocking)
            .map(drop)
    }

    fn reduce_into_root<S: Buffer + ?Sized, R: BufferMut + ?Sized, O: Operation>(
        &self,
        send: &S,
        recv: &mut R,
        op: O,
    ) -> Result<(), Error> {
        self.reduce_root("MPI_Reduce", Some(send), recv, op, Mode::Blocking)
            .map(drop)
    }

    fn reduce_in_place_root<R: BufferMut + ?Sized, O: Operation>(
        &self,
        buf: &mut R,
        op: O,
    ) -> Result<(), Error> {
        self.reduce_root("MPI_Reduce", None::<&[u8]>, buf, op, Mode::Blocking)
            .map(drop)
    }

    fn immediate_reduce_into_root<
        'a,
        Sc: Scope<'a>,
        S: Buffer + ?Sized,
        R: BufferMut + ?Sized,
        O: Operation,
    >(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut R,
        op: O,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.reduce_root("MPI_Ireduce", Some(send), recv, op, Mode::Immediate);
        immediate(started, scope)
    }

    fn immediate_reduce_into<'a, Sc: Scope<'a>, S: Buffer + ?Sized, O: Operation>(
        &self,
        scope: Sc,
        send: &'a S,
        op: O,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.reduce_nonroot("MPI_Ireduce", send, op, Mode::Immediate);
        immediate(started, scope)
    }

    fn immediate_reduce_in_place_root<'a, Sc: Scope<'a>, R: BufferMut + ?Sized, O: Operation>(
        &self,
        scope: Sc,
        buf: &'a mut R,
        op: O,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.reduce_root("MPI_Ireduce", None::<&[u8]>, buf, op, Mode::Immediate);
        immediate(started, scope)
    }

    fn gather_varcount_in_place_root<R: BufferMut + ?Sized>(
        &self,
        recv: &mut PartitionMut<'_, R>,
    ) -> Result<(), Error> {
        self.gatherv_root("MPI_Gatherv", None::<&[u8]>, recv, Mode::Blocking)
            .map(drop)
    }

    fn scatter_varcount_in_place_root<S: Buffer + ?Sized>(
        &self,
        send: &Partition<'_, S>,
    ) -> Result<(), Error> {
        self.scatterv_root("MPI_Scatterv", send, None::<&mut [u8]>, Mode::Blocking)
            .map(drop)
    }

    fn immediate_gather_into<'a, Sc: Scope<'a>, S: Buffer + ?Sized>(
        &self,
        scope: Sc,
        send: &'a S,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.gather_nonroot("MPI_Igather", send, false, Mode::Immediate);
        immediate(started, scope)
    }

    fn immediate_gather_into_root<'a, Sc: Scope<'a>, S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.gather_root("MPI_Igather", Some(send), recv, Mode::Immediate);
        immediate(started, scope)
    }

    fn immediate_gather_in_place_root<'a, Sc: Scope<'a>, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        recv: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.gather_root("MPI_Igather", None::<&[u8]>, recv, Mode::Immediate);
        immediate(started, scope)
    }

    fn immediate_gather_varcount_into<'a, Sc: Scope<'a>, S: Buffer + ?Sized>(
        &self,
        scope: Sc,
        send: &'a S,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.gather_nonroot("MPI_Igatherv", send, true, Mode::Immediate);
        immediate(started, scope)
    }

    fn immediate_gather_varcount_into_root<
        'a,
        Sc: Scope<'a>,
        S: Buffer + ?Sized,
        R: BufferMut + ?Sized,
    >(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut PartitionMut<'_, R>,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.gatherv_root("MPI_Igatherv", Some(send), recv, Mode::Immediate);
        immediate(started, scope)
    }

    fn immediate_gather_varcount_in_place_root<'a, Sc: Scope<'a>, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        recv: &'a mut PartitionMut<'_, R>,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.gatherv_root("MPI_Igatherv", None::<&[u8]>, recv, Mode::Immediate);
        immediate(started, scope)
    }

    fn immediate_scatter_into<'a, Sc: Scope<'a>, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        recv: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.scatter_nonroot("MPI_Iscatter", recv, false, Mode::Immediate);
        immediate(started, scope)
    }

    fn immediate_scatter_into_root<'a, Sc: Scope<'a>, S: Buffer + ?Sized, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        send: &'a S,
        recv: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.scatter_root("MPI_Iscatter", send, Some(recv), Mode::Immediate);
        immediate(started, scope)
    }

    fn immediate_scatter_in_place_root<'a, Sc: Scope<'a>, S: Buffer + ?Sized>(
        &self,
        scope: Sc,
        send: &'a S,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.scatter_root("MPI_Iscatter", send, None::<&mut [u8]>, Mode::Immediate);
        immediate(started, scope)
    }

    fn immediate_scatter_varcount_into<'a, Sc: Scope<'a>, R: BufferMut + ?Sized>(
        &self,
        scope: Sc,
        recv: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.scatter_nonroot("MPI_Iscatterv", recv, true, Mode::Immediate);
        immediate(started, scope)
    }

    fn immediate_scatter_varcount_into_root<
        'a,
        Sc: Scope<'a>,
        S: Buffer + ?Sized,
        R: BufferMut + ?Sized,
    >(
        &self,
        scope: Sc,
        send: &'a Partition<'_, S>,
        recv: &'a mut R,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.scatterv_root("MPI_Iscatterv", send, Some(recv), Mode::Immediate);
        immediate(started, scope)
    }

    fn immediate_scatter_varcount_in_place_root<'a, Sc: Scope<'a>, S: Buffer + ?Sized>(
        &self,
        scope: Sc,
        send: &'a Partition<'_, S>,
    ) -> Result<Request<'a, Sc>, Error> {
        let started = self.scatterv_root("MPI_Iscatterv", send, None::<&mut [u8]>, Mode::Immediate);
        immediate(started, scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection() {
        let s = CollSettings::default();
        assert_eq!(choose_bcast(&s, 100, 64), "binomial");
        assert_eq!(choose_bcast(&s, 1 << 20, 8), "scatter-allgather");
        assert_eq!(choose_bcast(&s, 1 << 20, 4), "binomial");
        assert_eq!(choose_allreduce(&s, 8, 1, 8, true), "recursive-doubling");
        assert_eq!(
            choose_allreduce(&s, 1 << 20, 1 << 17, 8, true),
            "rabenseifner"
        );
        assert_eq!(choose_allreduce(&s, 1 << 20, 1 << 17, 6, true), "ring");
        assert_eq!(
            choose_allreduce(&s, 1 << 20, 1 << 17, 6, false),
            "recursive-doubling"
        );
        assert_eq!(choose_allgather(&s, 10), "bruck");
        assert_eq!(choose_allgather(&s, 1 << 20), "ring");
        assert_eq!(choose_gather(&s, 10), "binomial");
        assert_eq!(choose_gather(&s, 1 << 20), "linear");
        assert!(info().contains("BRAID_COLL_ALLREDUCE_SHORT"));
    }

    #[test]
    fn host_levels() {
        let h = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(levels_of(&h(&["a", "a", "a"]), 0).is_none());
        assert!(levels_of(&h(&["a", "b", "c"]), 0).is_none());
        let l = levels_of(&h(&["a", "b", "a", "b", "a"]), 2).unwrap();
        assert_eq!(l.node.members, vec![0, 2, 4]);
        assert_eq!(l.node.me, 1);
        assert!(l.leaders.is_none());
        assert_eq!(l.leader_of, vec![0, 1, 0, 1, 0]);
        let l = levels_of(&h(&["a", "b", "a", "b", "a"]), 1).unwrap();
        assert_eq!(l.leaders.unwrap().members, vec![0, 1]);
        assert_eq!(l.node.members, vec![1, 3]);
    }

    #[test]
    fn tags_advance_per_context() {
        let a = next_tag(ContextId(9001));
        let b = next_tag(ContextId(9001));
        let c = next_tag(ContextId(9003));
        assert_eq!(b, a + 1);
        assert_eq!(c, TAG_BASE);
        forget_context(ContextId(9001));
        assert_eq!(next_tag(ContextId(9001)), TAG_BASE);
    }
}
