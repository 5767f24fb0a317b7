//! The shared-memory collective component: blocking barrier, bcast, reduce, allreduce,
//! allgather, alltoall, gather, scatter, gatherv and scatterv among ranks of one host through a
//! per-communicator shared region with cache-line flags, instead of point-to-point messages
//! (Open MPI's `coll/sm`, MPICH's release/gather collectives play the same part).
//!
//! # Selection
//! A blocking collective takes this path when every member of the communicator has the same
//! host identity (as the two-level algorithms see it, so `BRAID_COLL_FAKE_HOSTS` splits it
//! too), there are 2 to [`MAX_RANKS`] members, `BRAID_SHM` and `BRAID_COLL_SHM` are on, and
//! the message (per rank) is at most `BRAID_COLL_SHM_MAX` bytes. Gatherv and scatterv take it
//! whatever their lengths, but only when the members agreed on single-copy transfers (below):
//! a member knows no length but its own. The choice depends only on values every member has,
//! so all members choose alike. Everything else, and every nonblocking collective, stays on
//! the point-to-point schedules of the parent module.
//!
//! A blocking barrier, bcast, reduce or allreduce on a communicator spread over hosts (two-level)
//! runs its phases inside each host as collectives on a communicator of that host's ranks, so
//! they take this path there under the same rules.
//!
//! # Lifetime
//! The region is made at the first collective call on a communicator that selects this path:
//! the leader (rank 0 of the communicator) creates `/dev/shm/braid-<job>-coll-<leader world
//! rank>-<context>-<n>` (mode 0600; `n` counts the leader's regions, so names never repeat)
//! and formats it, announces it with a point-to-point broadcast (0: no region), the others
//! map it, and a point-to-point allreduce tells everyone that all mapped it. The leader then
//! removes the name at once, so `/dev/shm` holds nothing whatever happens later (the
//! launcher's clean-up of `braid-<job>-*` covers a crash before that). If any step fails the
//! communicator stays on point-to-point for good. The mapping goes when the communicator is
//! freed ([`release`], keyed by its collective context id).
//!
//! # Layout
//! ```text
//! 0                 header: magic, ranks, slot bytes (128 bytes)
//! 128 + 256 r       control block of rank r (256 bytes, two cache-line pairs), one cache
//!                   line (the cell) per step parity k, at +128 k:
//!                     +0   posted: u64, the last step of parity k that rank r has posted
//!                     +8   descriptor: u64
//!                     +16  48 inline data bytes
//!                   and at +64 the pid: i32 (liveness checks)
//! 128 + 256 p + 128 r  doorbell of rank r (`braid_shm::Doorbell`): rank r rings it when it
//!                      posts; members waiting for its posts sleep on it
//! slots (4 KiB aligned) + (2 r + k) slot   data slot k of rank r (slot bytes each)
//! ```
//!
//! # Protocol
//! Every collective call is one or more *steps*; every member runs the same steps, numbered
//! from 1 by a counter each rank keeps per communicator (so nothing is ever reset). At step
//! `s` a rank (1) waits until every member has posted step `s - 1`, (2) writes its
//! descriptor (kind, root, length of the call) and data for the step into cell and slot
//! `s mod 2` (data of at most 48 bytes go inline in the cell), (3) stores the cell's
//! `posted = s` with release ordering, and (4) waits (acquire loads) for the posts of the
//! members whose data it needs at this step, checks their descriptors and reads their data.
//! The flag, the descriptor and short data share one cache line, so a reader that sees the
//! post has the data too; and the cell of step `s` is apart from the one that members
//! waiting for step `s - 1` poll, so their polls do not take the line from under the writer.
//! Posts are in step order, so a cell showing `posted >= s` means every step up to `s` is
//! posted. A rank reads step `s` data before it posts `s + 1`, so "everyone posted
//! `s - 1`" proves nobody still reads cell and slot `s mod 2` from step `s - 2`: two
//! alternating buffers suffice. Members that only receive at a step (broadcast) still post it
//! (as an arrival). Messages longer than a slot are pipelined through the two slots, one chunk
//! per step. Before the second step of a multi-step call every rank checks every member's
//! descriptor of the first step, so members whose lengths differ all stop after the first
//! step, with an error, and stay in step.
//!
//! An alltoall moves every member's blocks through its slot in pieces of at most `slot / p`
//! bytes per block (one step when the whole buffer fits), each member taking its own piece
//! out of every other member's chunk.
//!
//! Broadcasts, allgathers, alltoalls, gathers and scatters of at least [`CMA_MIN`] bytes per
//! rank (an alltoall: per block, not in place), and
//! reductions of at least [`REDUCE_CMA_MIN`], skip the slots when every member can read every
//! other's memory (`process_vm_readv`, `BRAID_SHM_CMA`; agreed when the region is made; the kernel
//! asks the same access for `process_vm_writev`): at a first step each member publishes its
//! buffer's address inline, the others copy straight from or to it (one copy instead of two), and
//! a second step tells each owner that everybody is done with its buffer. From
//! `BRAID_COLL_SHM_SPLIT` bytes per block a broadcast, gather or scatter splits each block's copy
//! between its two ends, so that two cores copy at once: the reader reads the head while the owner
//! of the data writes the tail (a broadcast: `n / p` bytes, [`Region::split_tail`]; a gather or
//! scatter: as much as balances the root's own local copy, [`Region::rooted_tail`]). Reductions of
//! at least [`SPLIT_REDUCE_MIN`] bytes (an allreduce, or a reduce over more than two members) are
//! a reduce-scatter then a gather: each member folds its block of the elements from everybody's
//! operand (so each reads and reduces about `n/p` bytes of each operand), publishes its block of
//! the result, and the members that need the result read the other blocks; a third step releases
//! the blocks. A reduce over two members from `BRAID_COLL_SHM_PAIR_MIN` bytes has the root fold
//! the head of the vector while the other member folds the tail and writes it into the root's
//! result ([`Region::reduce_pair`]). An allgather writes each member's block into the others'
//! buffers rather than reading it (the block was just copied and is still in the cache); an
//! alltoall writes its blocks likewise, each into the member it is for. Gatherv
//! and scatterv move short blocks through the slots (a scatterv packs the short blocks that fit
//! behind a table of where each block is) and long ones by single-copy transfers (a gatherv's
//! members write theirs into the root's buffer, at the addresses the root lists in a table in its
//! slot).
//!
//! Reductions fold operands in the same order on every rank, `x0 ∘ (x1 ∘ (… ∘ x(p-1)))`, so
//! the results are bitwise identical everywhere and non-commutative operations get MPI's
//! rank order.
//!
//! # Waiting
//! A wait polls the peer's `posted` word with one pause instruction between polls until the
//! core's spin budget (`BRAID_SPIN_US`: 1 ms, 50 µs when ranks outnumber cores) is spent,
//! yielding the core between polls when ranks outnumber cores; it reads the clock only every 64
//! polls. Then it sleeps on the peer's doorbell, so that a peer sharing the core gets it, and
//! the peer rings it when it posts: the handshake of the point-to-point rings, with `posted` as
//! the data (`braid_shm::Doorbell`: the sleeper announces itself and re-checks `posted`, the
//! poster stores `posted` and then looks for sleepers, so either the sleeper sees the post or
//! the poster sees the sleeper). Every 256 polls while
//! spinning and after every sleep (at most [`SLEEP_MAX`]) it makes point-to-point progress (so
//! pending nonblocking operations and collectives of other ranks advance) and fails with
//! [`Error::PeerLost`] if the core has lost that peer or its process is gone. A peer that is
//! alive but never arrives (an erroneous program) is a hang, as with point-to-point. The
//! two-level collectives depend on this: their other ranks of a host wait in this component
//! while the host's leader talks to the other hosts.
//!
//! # Cost model
//! Per step and rank: one cache line written (the own cell) and one read per peer it
//! waits on, plus for data beyond 48 bytes one copy into the own slot and one copy (or reduction)
//! out of each needed peer slot; with `c` the cost of a cache-line transfer between cores (about
//! 50-100 ns), an 8-byte allreduce or barrier on 2 ranks costs about `2c`, a broadcast of `n`
//! bytes two memory copies of `n` pipelined in slot-sized chunks, an allreduce of `n` bytes on `p`
//! ranks `p-1` reductions of `n` per rank; from [`CMA_MIN`] bytes a broadcast, allgather, gather
//! or scatter costs two synchronizations and one single-copy transfer of `n` per block moved (an
//! allgather writes its block into the others' buffers; split: `n - n/p` read at one end while
//! `n/p` is written at the other). Measured on two cores of a Xeon (Emerald Rapids, KVM) with
//! `osu_bcast`: 1 MiB in 24-31 µs split against 64 µs read by the receiver alone (a `memcpy` of
//! 1 MiB takes about 40 µs there); `osu_allgather`: 1 MiB in 136 µs written against 158 µs read;
//! `osu_reduce`: 1 MiB in 67 µs with the pair split against 150 µs folded by the root alone.
//!
//! # Not yet implemented
//! A probe of `process_vm_writev` apart from the read probe (the kernel applies the same ptrace
//! check to both, so a host that allows reads allows writes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use braid_engine::ContextId;
use braid_shm::{DOORBELL_FOOTPRINT, Doorbell, Segment, format_doorbell};

use super::op::ResolvedOp;
use super::{Over, VBlocks, bind, build_bcast, mismatch, run_blocking};
use crate::communicator::CommData;
use crate::core::{SpinPolicy, with_core};
use crate::error::Error;

/// Most ranks the component serves (every rank polls every other one: O(p²) line reads).
pub(crate) const MAX_RANKS: usize = 64;
/// "BRAID_CS".
const MAGIC: u64 = 0x4252_4149_445f_4353;
const HEADER: usize = 128;
/// Bytes of a control block.
const CTRL: usize = 256;
/// Offset of cell k (steps of parity k) in a control block is `k * CELL_STRIDE`: each cell
/// leads its own cache-line pair.
const CELL_STRIDE: usize = 128;
/// Offset of the descriptor in a cell (after `posted`).
const DESC: usize = 8;
/// Offset of the inline data in a cell (after the descriptor).
const DATA: usize = 16;
/// Inline data bytes of a cell: the rest of its cache line.
const INLINE: usize = 64 - DATA;
const PID: usize = 64;
/// Longest sleep of a long wait between liveness checks and point-to-point progress (a post
/// wakes the sleeper at once).
const SLEEP_MAX: Duration = Duration::from_millis(1);
// The pid has a line of its own, and the block holds both cells.
const _: () = assert!(PID >= 64 && PID + 4 <= CELL_STRIDE && 2 * CELL_STRIDE <= CTRL);
/// Messages longer than 2^40 bytes never take this path (descriptor field width).
const LEN_BITS: u32 = 40;
/// Broadcasts, allgathers, gathers and scatters of at least this many bytes (per rank) copy
/// straight from the owner's buffer with a single-copy read (`process_vm_readv`), when every
/// member can. At 8 KiB on two cores (Emerald Rapids, KVM) that takes 1.2-1.6 µs against
/// 1.8-2.2 µs through the slots, whose freshly written lines the reader must fetch from the
/// writer's cache.
const CMA_MIN: usize = 8 * 1024;
/// Reductions of at least this many bytes read the other operands straight from their
/// owners' buffers the same way (`osu_reduce`, 8 KiB on two ranks: 1.5 µs against 1.9).
const REDUCE_CMA_MIN: usize = 8 * 1024;
/// Single-copy reductions of at least this many bytes split the work: a reduce-scatter, then
/// a gather (an allreduce, or a reduce over more than two members; with two, the root reads as
/// much either way). Below it the extra step costs more than the halved work saves.
const SPLIT_REDUCE_MIN: usize = 512 * 1024;

/// Chunk of a split two-member reduce: read, folded while still in the cache, written.
const PAIR_CHUNK: usize = 256 * 1024;

/// Where the root's head ends in a two-member reduce of `n` bytes of `elem`-byte elements
/// ([`Region::reduce_pair`]), on a page boundary when elements tile pages: at 65% of the
/// elements, 70% up to 256 KiB (the other member makes two system calls to the root's one,
/// which weighs more on short vectors). Measured with `osu_reduce` on two cores (Emerald
/// Rapids, KVM): 60-70% within noise from 256 KiB, 70% best below.
fn pair_split(n: usize, elem: usize) -> usize {
    let elem = elem.max(1);
    let unit = if 4096 % elem == 0 { 4096 / elem } else { 1 };
    let percent = if n <= 256 * 1024 { 70 } else { 65 };
    (n / elem * percent / 100) / unit * unit * elem
}

/// Collective kinds in descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Allgather = 1,
    Alltoall = 10,
    Allreduce = 2,
    Barrier = 3,
    Bcast = 4,
    Gather = 6,
    Gatherv = 7,
    Reduce = 5,
    Scatter = 8,
    Scatterv = 9,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Allgather => "MPI_Allgather",
            Self::Alltoall => "MPI_Alltoall",
            Self::Allreduce => "MPI_Allreduce",
            Self::Barrier => "MPI_Barrier",
            Self::Bcast => "MPI_Bcast",
            Self::Gather => "MPI_Gather",
            Self::Gatherv => "MPI_Gatherv",
            Self::Reduce => "MPI_Reduce",
            Self::Scatter => "MPI_Scatter",
            Self::Scatterv => "MPI_Scatterv",
        }
    }
}

/// The kind and root of a descriptor, without its length (v-forms: lengths differ by member).
const KIND_ROOT: u64 = !((1 << LEN_BITS) - 1);
/// Length field of a descriptor.
const LEN_MASK: u64 = (1 << LEN_BITS) - 1;

fn desc(kind: Kind, root: usize, len: usize) -> u64 {
    ((kind as u64) << 56) | (((root as u64) & 0xffff) << LEN_BITS) | len as u64
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// The component's settings (module `env`).
#[derive(Clone, Copy, Debug)]
struct ShmSettings {
    /// `BRAID_SHM` and `BRAID_COLL_SHM` are both on.
    enabled: bool,
    /// `BRAID_COLL_SHM_MAX`: longest message per rank, in bytes.
    max: usize,
    /// `BRAID_COLL_SHM_SLOT`: bytes per data slot (a multiple of 128, at least 1 KiB).
    slot: usize,
    /// `BRAID_COLL_FAKE_HOSTS`.
    fake_hosts: usize,
    /// `BRAID_SHM_CMA`: single-copy reads allowed.
    cma: bool,
    /// `BRAID_COLL_SHM_PAIR_MIN`: single-copy reduces to a root of two members of at least
    /// this many bytes split the work between both ([`Region::reduce_pair`]).
    pair_min: usize,
    /// `BRAID_COLL_SHM_SPLIT`: single-copy broadcasts, gathers and scatters of at least this
    /// many bytes per block split the copying between both ends ([`Region::split_tail`]).
    split: usize,
}

fn settings() -> ShmSettings {
    static S: OnceLock<ShmSettings> = OnceLock::new();
    *S.get_or_init(|| match crate::env::Settings::from_env() {
        Ok(e) => ShmSettings {
            enabled: e.shm && e.coll_shm,
            max: usize::try_from(e.coll_shm_max)
                .unwrap_or(usize::MAX)
                .min((1 << LEN_BITS) - 1),
            slot: usize::try_from(e.coll_shm_slot)
                .unwrap_or(usize::MAX)
                .clamp(1024, 1 << 24)
                .next_multiple_of(128),
            fake_hosts: usize::try_from(e.coll_fake_hosts).unwrap_or(0),
            cma: e.shm_cma,
            pair_min: usize::try_from(e.coll_shm_pair_min).unwrap_or(usize::MAX),
            split: usize::try_from(e.coll_shm_split).unwrap_or(usize::MAX),
        },
        Err(_) => ShmSettings {
            enabled: false,
            max: 0,
            slot: 32 * 1024,
            fake_hosts: 0,
            cma: false,
            pair_min: usize::MAX,
            split: usize::MAX,
        },
    })
}

/// One line for [`super::info`].
pub(crate) fn info() -> String {
    let s = settings();
    format!(
        "shared-memory collectives (one-host communicators: barrier, bcast, reduce, allreduce, \
         allgather, gather, scatter, gatherv, scatterv): BRAID_COLL_SHM={}; \
         BRAID_COLL_SHM_MAX={} bytes; BRAID_COLL_SHM_SLOT={} bytes; single-copy transfers \
         (BRAID_SHM_CMA={}) from {CMA_MIN} bytes, reductions from {REDUCE_CMA_MIN}; copies \
         split between both ends from BRAID_COLL_SHM_SPLIT={} bytes; two-rank reduces split \
         from BRAID_COLL_SHM_PAIR_MIN={} bytes",
        if s.enabled { "on" } else { "off" },
        s.max,
        s.slot,
        if s.cma { "on" } else { "off" },
        s.split,
        s.pair_min,
    )
}

// ---------------------------------------------------------------------------------------------
// Entry points (blocking collectives); `None`: not for this path, use point-to-point
// ---------------------------------------------------------------------------------------------

/// Notes the buffers of a collective that other members may copy from or into with
/// single-copy transfers, so that reused large ones get huge pages
/// ([`braid_shm::HugeBacking`]). Small collectives do not take the core for it.
fn note_buffers(bufs: &[Option<&[u8]>]) {
    let large = || {
        bufs.iter()
            .flatten()
            .filter(|b| b.len() >= braid_shm::MIN_OVERLAP)
    };
    if large().next().is_some() {
        with_core(|c| large().for_each(|b| c.note_buffer(None, b.as_ptr(), b.len())));
    }
}

/// `MPI_Barrier`.
pub(crate) fn barrier(comm: &CommData) -> Option<Result<(), Error>> {
    let region = region_for(comm, 0)?;
    Some(region.and_then(|r| lock(&r).barrier()))
}

/// `MPI_Bcast` of `buf` (the root's data on the root).
pub(crate) fn bcast(comm: &CommData, root: usize, buf: &mut [u8]) -> Option<Result<(), Error>> {
    let region = region_for(comm, buf.len())?;
    note_buffers(&[Some(buf)]);
    Some(region.and_then(|r| lock(&r).bcast(root, buf)))
}

/// `MPI_Allreduce`; `send` is `None` in place (the operand is in `recv`).
pub(crate) fn allreduce(
    comm: &CommData,
    send: Option<&[u8]>,
    recv: &mut [u8],
    op: &ResolvedOp,
) -> Option<Result<(), Error>> {
    if op.elem > settings().slot {
        return None;
    }
    let region = region_for(comm, recv.len())?;
    note_buffers(&[send, Some(recv)]);
    Some(region.and_then(|r| lock(&r).reduce(Kind::Allreduce, None, send, Some(recv), op)))
}

/// `MPI_Reduce` to `root` of `n` bytes; `send` is `None` in place (root only: the operand is
/// in `recv`); `recv` is `None` off the root.
pub(crate) fn reduce(
    comm: &CommData,
    root: usize,
    send: Option<&[u8]>,
    recv: Option<&mut [u8]>,
    op: &ResolvedOp,
) -> Option<Result<(), Error>> {
    let n = match (&send, &recv) {
        (Some(s), _) => s.len(),
        (None, Some(r)) => r.len(),
        (None, None) => 0,
    };
    if op.elem > settings().slot {
        return None;
    }
    let region = region_for(comm, n)?;
    note_buffers(&[send, recv.as_deref()]);
    Some(region.and_then(|r| lock(&r).reduce(Kind::Reduce, Some(root), send, recv, op)))
}

/// `MPI_Allgather` of blocks of `n` bytes; `send` is `None` in place (this rank's block is
/// already in `recv`).
pub(crate) fn allgather(
    comm: &CommData,
    send: Option<&[u8]>,
    recv: &mut [u8],
    n: usize,
) -> Option<Result<(), Error>> {
    every_block(comm, send, recv, n, Region::allgather)
}

/// `MPI_Alltoall` of blocks of `n` bytes; `send` is `None` in place (the blocks to send are
/// in `recv`, and are replaced by the ones received).
pub(crate) fn alltoall(
    comm: &CommData,
    send: Option<&[u8]>,
    recv: &mut [u8],
    n: usize,
) -> Option<Result<(), Error>> {
    every_block(comm, send, recv, n, Region::alltoall)
}

/// A [`Region`] method running a collective where every member ends with `p` blocks of `n`
/// bytes in `recv`.
type EveryBlock = fn(&mut Region, Option<&[u8]>, &mut [u8], usize) -> Result<(), Error>;

/// A collective where every member ends with `p` blocks of `n` bytes in `recv`, run by `run`.
fn every_block(
    comm: &CommData,
    send: Option<&[u8]>,
    recv: &mut [u8],
    n: usize,
    run: EveryBlock,
) -> Option<Result<(), Error>> {
    let region = region_for(comm, n)?;
    note_buffers(&[send, Some(recv)]);
    Some(region.and_then(|r| run(&mut lock(&r), send, recv, n)))
}

/// `MPI_Gather` of `n`-byte blocks to `root`; `send` is `None` in place (the root's block is
/// already in `recv`); `recv` is the root's buffer of `p` blocks (empty elsewhere).
pub(crate) fn gather(
    comm: &CommData,
    root: usize,
    send: Option<&[u8]>,
    recv: &mut [u8],
    n: usize,
) -> Option<Result<(), Error>> {
    let region = region_for(comm, n)?;
    note_buffers(&[send, Some(recv)]);
    Some(region.and_then(|r| lock(&r).gather(root, send, recv, n)))
}

/// `MPI_Scatter` of `n`-byte blocks from `root`; `send` is the root's buffer of `p` blocks
/// (empty elsewhere); `recv` is `None` in place (the root keeps its block in `send`).
pub(crate) fn scatter(
    comm: &CommData,
    root: usize,
    send: &[u8],
    recv: Option<&mut [u8]>,
    n: usize,
) -> Option<Result<(), Error>> {
    let region = region_for(comm, n)?;
    note_buffers(&[Some(send), recv.as_deref()]);
    Some(region.and_then(|r| lock(&r).scatter(root, send, recv, n)))
}

/// `MPI_Gatherv` to `root`: `send` is this member's block (`None` in place at the root);
/// `blocks` gives, at the root, each member's offset and length in bytes in `recv`. Only with
/// single-copy transfers: a member knows no length but its own, so the path may not depend on
/// them, and without single-copy reads a long block would need a pipeline whose length only
/// its owner knows.
pub(crate) fn gatherv(
    comm: &CommData,
    root: usize,
    send: Option<&[u8]>,
    recv: &mut [u8],
    blocks: VBlocks<'_>,
) -> Option<Result<(), Error>> {
    let region = match region_for(comm, 0)? {
        Ok(r) => r,
        Err(e) => return Some(Err(e)),
    };
    note_buffers(&[send, Some(recv)]);
    let mut g = lock(&region);
    g.cma.then(|| g.gatherv(root, send, recv, blocks))
}

/// `MPI_Scatterv` from `root`: `blocks` gives, at the root, each member's offset and length
/// in bytes in `send`; `recv` is this member's block (`None` in place at the root). Only with
/// single-copy transfers, as [`gatherv`].
pub(crate) fn scatterv(
    comm: &CommData,
    root: usize,
    send: &[u8],
    blocks: VBlocks<'_>,
    recv: Option<&mut [u8]>,
) -> Option<Result<(), Error>> {
    let region = match region_for(comm, 0)? {
        Ok(r) => r,
        Err(e) => return Some(Err(e)),
    };
    note_buffers(&[Some(send), recv.as_deref()]);
    let mut g = lock(&region);
    g.cma.then(|| g.scatterv(root, send, blocks, recv))
}

/// Forgets (and unmaps, once no call uses it) the region of a freed communicator.
pub(crate) fn release(ctx: ContextId) {
    let removed = {
        let mut g = registry();
        g.iter()
            .position(|e| e.0 == ctx.0)
            .map(|i| g.swap_remove(i))
    };
    drop(removed);
}

// ---------------------------------------------------------------------------------------------
// The registry of regions, by collective context id
// ---------------------------------------------------------------------------------------------

type Shared = Arc<Mutex<Region>>;

/// Per communicator (collective context id): `None` when the path is off for it for good.
static REGISTRY: Mutex<Vec<(u32, Option<Shared>)>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<(u32, Option<Shared>)>> {
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock(r: &Shared) -> std::sync::MutexGuard<'_, Region> {
    r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The region of `comm` for a message of `n` bytes per rank: `None` when this call goes
/// point-to-point; made at the first call that selects the path.
fn region_for(comm: &CommData, n: usize) -> Option<Result<Shared, Error>> {
    let s = settings();
    let p = comm.group().world_ranks().len();
    if !s.enabled || n > s.max || !(2..=MAX_RANKS).contains(&p) {
        return None;
    }
    let ctx = comm.coll_context();
    {
        let mut g = registry();
        if let Some(i) = g.iter().position(|e| e.0 == ctx.0) {
            if i > 0 {
                g.swap(0, i);
            }
            return g[0].1.clone().map(Ok);
        }
    }
    // First call on this communicator (the registry is not held meanwhile: creation talks to
    // the other members).
    let made = if one_host(comm, s.fake_hosts) {
        match Region::establish(comm, s.slot) {
            Ok(r) => r.map(|r| Arc::new(Mutex::new(r))),
            Err(e) => return Some(Err(e)),
        }
    } else {
        None
    };
    registry().push((ctx.0, made.clone()));
    made.map(Ok)
}

/// Whether every member has the same host identity (pretend hosts as the two-level
/// algorithms see them).
fn one_host(comm: &CommData, fake: usize) -> bool {
    let world = comm.group().world_ranks();
    with_core(|c| {
        let host = |w: u32| match fake {
            0 => c.hosts[w as usize].clone(),
            k => format!("fake{}", w as usize * k / c.hosts.len().max(1)),
        };
        let first = host(world[0]);
        world.iter().all(|w| host(*w) == first)
    })
}

// ---------------------------------------------------------------------------------------------
// The region
// ---------------------------------------------------------------------------------------------

/// One communicator's mapping of its region, and this rank's protocol state.
struct Region {
    /// The mapping. Invariant: at least `slots_off + 2 * p * slot` bytes, formatted.
    seg: Arc<Segment>,
    /// Each member's doorbell, in the mapping.
    bells: Vec<Doorbell>,
    /// Members.
    p: usize,
    /// This rank's index among them.
    me: usize,
    /// World rank of each member (for lost-peer checks and messages).
    world: Vec<u32>,
    /// Bytes per data slot (a multiple of 128).
    slot: usize,
    /// Offset of the first slot (4 KiB aligned).
    slots_off: usize,
    /// The last step this rank used; the next call starts at `step + 1`.
    step: u64,
    /// Per member: a value its `posted` word has reached (a lower bound; saves loads).
    seen: Vec<u64>,
    /// Process id of each member (0: unknown).
    pids: Vec<i32>,
    /// Every member can read every other member's memory (`process_vm_readv`).
    cma: bool,
    spin: SpinPolicy,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("seg", &self.seg)
            .field("p", &self.p)
            .field("me", &self.me)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

/// Where member `r`'s doorbell is, for `p` ranks.
fn bell_offset(p: usize, r: usize) -> usize {
    HEADER + p * CTRL + r * DOORBELL_FOOTPRINT
}

/// Where the slots start for `p` ranks.
fn slots_offset(p: usize) -> usize {
    bell_offset(p, p).next_multiple_of(4096)
}

fn job_name() -> String {
    let job = crate::env::Settings::from_env()
        .ok()
        .and_then(|s| s.job_id)
        .or_else(|| with_core(|c| c.pmi.as_ref().map(|p| p.kvsname().to_string())))
        .unwrap_or_else(|| "singleton".into());
    job.chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '|' | '=' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Region {
    /// Creates (leader) or maps (others) the region of `comm`, through two point-to-point
    /// collectives. `Ok(None)`: some member could not, the path stays off for `comm`.
    fn establish(comm: &CommData, slot: usize) -> Result<Option<Self>, Error> {
        static MADE: AtomicU64 = AtomicU64::new(0);
        let world = comm.group().world_ranks().to_vec();
        let (p, me) = (world.len(), comm.rank_index());
        let len = slots_offset(p) + 2 * p * slot;
        let ctx = comm.coll_context();
        let n = if me == 0 {
            MADE.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        let name = |n: u64| format!("braid-{}-coll-{}-{}-{n}", job_name(), world[0], ctx.0);
        let mut created = None;
        if me == 0 {
            match Segment::create(&name(n), len) {
                Ok(seg) => {
                    // SAFETY: the header is inside the fresh mapping (len > HEADER), 8-byte
                    // aligned (page-aligned mapping), and nobody else has the name's mapping
                    // yet.
                    unsafe {
                        for r in 0..p {
                            format_doorbell(&seg, bell_offset(p, r));
                        }
                        let h = seg.as_ptr().cast::<u64>();
                        h.add(1).write(p as u64);
                        h.add(2).write(slot as u64);
                        h.write(MAGIC);
                    }
                    created = Some(seg);
                }
                Err(e) => eprintln!(
                    "braid: rank {}: no shared-memory collectives: {e}",
                    world[0]
                ),
            }
        }
        // Announce: the region's number, 0 for none.
        let mut word = [if created.is_some() { n } else { 0 }];
        {
            let over = Over::comm(comm);
            let mut s = build_bcast(&over, 0, 8);
            bind(&mut s, &[], crate::datatype::bytes_of_mut(&mut word));
            if let Err(e) = run_blocking(s) {
                if created.is_some() {
                    let _ = Segment::unlink(&name(n));
                }
                return Err(e);
            }
        }
        if word[0] == 0 {
            return Ok(None);
        }
        let seg = match created {
            Some(s) => Some(s),
            None => match Segment::open(&name(word[0])) {
                Ok(s) if s.len() >= len && header_ok(&s, p, slot) => Some(s),
                Ok(s) => {
                    eprintln!("braid: rank {}: malformed region {:?}", world[me], s.path());
                    None
                }
                Err(e) => {
                    eprintln!(
                        "braid: rank {}: no shared-memory collectives: {e}",
                        world[me]
                    );
                    None
                }
            },
        };
        let mapped = seg.and_then(|seg| {
            let seg = Arc::new(seg);
            let bells = (0..p)
                // SAFETY: the leader formatted every member's doorbell before it wrote the
                // header's magic (checked above); nothing else lives at these offsets.
                .map(|r| unsafe { Doorbell::attach(Arc::clone(&seg), bell_offset(p, r)) })
                .collect::<Result<Vec<_>, _>>();
            match bells {
                Ok(bells) => Some((seg, bells)),
                Err(e) => {
                    eprintln!("braid: rank {}: malformed region: {e}", world[me]);
                    None
                }
            }
        });
        let me_world = world[me];
        let cma = settings().cma
            && with_core(|c| {
                c.shm.as_ref().is_some_and(|t| {
                    world
                        .iter()
                        .all(|w| *w == me_world || t.can_pull(braid_engine::Rank(*w)))
                })
            });
        let mut ok = [u64::from(mapped.is_some()), u64::from(cma)];
        let res = super::allreduce_band_u64(Over::comm(comm), &mut ok);
        if me == 0
            && let Err(e) = Segment::unlink(&name(word[0]))
        {
            eprintln!("braid: rank {}: {e}", world[0]);
        }
        res?;
        let Some((seg, bells)) = mapped.filter(|_| ok[0] == 1) else {
            return Ok(None);
        };
        let spin = with_core(|c| c.spin);
        let r = Self {
            seg,
            bells,
            p,
            me,
            world,
            slot,
            slots_off: slots_offset(p),
            step: 0,
            seen: vec![0; p],
            pids: vec![0; p],
            cma: ok[1] == 1,
            spin,
        };
        // SAFETY: inside this rank's control block (in bounds by the invariant), 4-aligned;
        // only this rank writes it, others read it after the barrier below.
        unsafe {
            r.ctrl(me)
                .add(PID)
                .cast::<i32>()
                .write_volatile(std::process::id() as i32);
        }
        let mut r = r;
        r.barrier()?;
        for q in 0..p {
            // SAFETY: as above; written by rank q before its barrier post, read after ours.
            r.pids[q] = unsafe { r.ctrl(q).add(PID).cast::<i32>().read_volatile() };
        }
        Ok(Some(r))
    }

    /// Start of member `r`'s control block.
    fn ctrl(&self, r: usize) -> *mut u8 {
        debug_assert!(r < self.p);
        // SAFETY: HEADER + r * CTRL + CTRL <= slots_off <= the mapping's length.
        unsafe { self.seg.as_ptr().add(HEADER + r * CTRL) }
    }

    /// Member `r`'s cell of step `s` (of the step's parity).
    fn cell(&self, r: usize, s: u64) -> *mut u8 {
        // SAFETY: both cells lie inside the control block (CTRL >= 2 CELL_STRIDE).
        unsafe { self.ctrl(r).add((s % 2) as usize * CELL_STRIDE) }
    }

    /// Member `r`'s `posted` word for steps of the parity of `s`.
    fn posted(&self, r: usize, s: u64) -> &AtomicU64 {
        // SAFETY: 8-aligned (128-aligned cell in a page-aligned mapping), in bounds, and only
        // ever accessed atomically, by every process; lives as long as `self.seg`.
        unsafe { AtomicU64::from_ptr(self.cell(r, s).cast::<u64>()) }
    }

    /// Member `r`'s descriptor word of step `s`.
    fn desc_word(&self, r: usize, s: u64) -> &AtomicU64 {
        // SAFETY: as for `posted`: 8-aligned, in the cell, atomic only.
        unsafe { AtomicU64::from_ptr(self.cell(r, s).add(DESC).cast::<u64>()) }
    }

    /// Where member `r`'s data of step `s` lives, for a chunk of `len` bytes (valid for
    /// `len <= max(INLINE, slot)` bytes).
    fn data(&self, r: usize, s: u64, len: usize) -> *mut u8 {
        let k = (s % 2) as usize;
        if len <= INLINE {
            // SAFETY: the inline data fill the rest of the cell's line, inside the block.
            unsafe { self.cell(r, s).add(DATA) }
        } else {
            debug_assert!(len <= self.slot);
            // SAFETY: slot (2r + k) lies inside the mapping by the invariant.
            unsafe {
                self.seg
                    .as_ptr()
                    .add(self.slots_off + (2 * r + k) * self.slot)
            }
        }
    }

    /// Begins step `s` of this rank: waits until nobody still reads cell and slot `s mod 2`
    /// of step `s - 2`, then writes the descriptor and the data chunk `src`, if any. The
    /// caller posts with [`Region::post`].
    fn write(&mut self, s: u64, d: u64, src: Option<&[u8]>) -> Result<(), Error> {
        self.wait_all(s - 1)?;
        self.desc_word(self.me, s).store(d, Ordering::Relaxed);
        if let Some(src) = src {
            let dst = self.data(self.me, s, src.len());
            // SAFETY: `dst` holds src.len() bytes (data's contract; chunks are at most a slot
            // or inline); no member reads this cell or slot now (every member posted s - 1,
            // so it finished reading step s - 2) and no member reads it before our post.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        }
        Ok(())
    }

    /// Posts step `s`: releases this step's descriptor and data to the other members.
    fn post(&mut self, s: u64) {
        self.posted(self.me, s).store(s, Ordering::Release);
        self.seen[self.me] = s;
        // The poster's half of the handshake with a sleeper in `wait` (module docs, Waiting).
        self.bells[self.me].ring();
    }

    /// Checks member `r`'s descriptor of step `s` (after its post was seen).
    fn check(&self, r: usize, s: u64, want: u64, kind: Kind) -> Result<(), Error> {
        let got = self.desc_word(r, s).load(Ordering::Relaxed);
        if got == want {
            return Ok(());
        }
        let mask = (1u64 << LEN_BITS) - 1;
        let detail = if got >> 56 != want >> 56 {
            format!(
                "rank {r} called another collective (kind {}) on this communicator",
                got >> 56
            )
        } else if got & mask != want & mask {
            format!(
                "rank {r} has {} bytes where this rank has {}",
                got & mask,
                want & mask
            )
        } else {
            format!("rank {r} named another root")
        };
        Err(mismatch(kind.name(), detail))
    }

    /// Waits until member `r` has posted step `s`.
    fn wait(&mut self, r: usize, s: u64) -> Result<(), Error> {
        if self.seen[r] >= s {
            return Ok(());
        }
        let mut polls: u32 = 0;
        let mut start: Option<Instant> = None;
        let mut sleeping = false;
        loop {
            let v = self.posted(r, s).load(Ordering::Acquire);
            if v >= s {
                self.seen[r] = v;
                return Ok(());
            }
            polls = polls.wrapping_add(1);
            if sleeping {
                // The spin budget is spent: give the core away for real (the peer may be
                // waiting for it) until the peer posts.
                self.sleep_on(r, s);
                if self.posted(r, s).load(Ordering::Acquire) < s {
                    self.stalled(r)?;
                }
                continue;
            }
            // One pause per poll (about 40 cycles before Skylake, 140 since: Intel
            // optimization manual, "Pause latency in Skylake microarchitecture"): a longer
            // backoff would only delay us, since polling a line nobody writes stays in L1.
            if polls >= 16 && self.spin.yield_between {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            // The clock only every 64 polls: a read costs several polls' time (more in a
            // virtual machine) and would delay seeing the post.
            if polls.is_multiple_of(64) {
                sleeping = start.get_or_insert_with(Instant::now).elapsed() >= self.spin.spin;
            }
            if polls.is_multiple_of(256) {
                self.stalled(r)?;
            }
        }
    }

    /// The sleeper's half of the handshake with `post` (module docs, Waiting): sleeps on
    /// member `r`'s bell unless it has posted step `s`, for at most [`SLEEP_MAX`].
    fn sleep_on(&self, r: usize, s: u64) {
        let bell = &self.bells[r];
        let seen = bell.prepare_wait();
        if self.posted(r, s).load(Ordering::Acquire) < s {
            bell.wait(seen, SLEEP_MAX);
        } else {
            bell.cancel_wait();
        }
    }

    /// Waits until every member has posted step `s`.
    fn wait_all(&mut self, s: u64) -> Result<(), Error> {
        for r in 0..self.p {
            if r != self.me {
                self.wait(r, s)?;
            }
        }
        Ok(())
    }

    /// A long wait for member `r`: makes point-to-point progress, and fails when `r` is lost.
    fn stalled(&self, r: usize) -> Result<(), Error> {
        let w = self.world[r];
        super::progress_all();
        with_core(|c| -> Result<(), Error> {
            c.progress(Some(Duration::ZERO))?;
            match c.lost_reason(w) {
                Some(why) => Err(Error::PeerLost {
                    rank: w as i32,
                    reason: why.to_string(),
                }),
                None => Ok(()),
            }
        })?;
        let pid = self.pids[r];
        // SAFETY: signal 0 only checks that the process exists; no signal is sent.
        if pid > 0 && unsafe { libc::kill(pid, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Err(Error::PeerLost {
                    rank: w as i32,
                    reason: format!(
                        "process {pid} is gone (waiting in a shared-memory collective)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Number of steps and chunk length for `n` bytes in chunks of at most `cs`.
    fn chunks(n: usize, cs: usize) -> (usize, usize) {
        (n.div_ceil(cs).max(1), cs)
    }

    /// The descriptor check before the second step of a multi-step call: every member's
    /// first-step descriptor (so all members stop after the first step on a mismatch).
    fn check_first(&mut self, first: u64, want: u64, kind: Kind) -> Result<(), Error> {
        self.wait_all(first)?;
        for r in 0..self.p {
            if r != self.me {
                self.check(r, first, want, kind)?;
            }
        }
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), Error> {
        self.step += 1;
        let s = self.step;
        let d = desc(Kind::Barrier, 0, 0);
        self.write(s, d, None)?;
        self.post(s);
        self.wait_all(s)?;
        for r in 0..self.p {
            if r != self.me {
                self.check(r, s, d, Kind::Barrier)?;
            }
        }
        Ok(())
    }

    fn bcast(&mut self, root: usize, buf: &mut [u8]) -> Result<(), Error> {
        let n = buf.len();
        let d = desc(Kind::Bcast, root, n);
        if self.cma && n >= CMA_MIN {
            return self.bcast_cma(root, buf, d);
        }
        let (k, cs) = Self::chunks(n, self.slot);
        let first = self.step + 1;
        self.step += k as u64;
        for j in 0..k {
            let s = first + j as u64;
            if j == 1 {
                self.check_first(first, d, Kind::Bcast)?;
            }
            let (off, len) = (j * cs, cs.min(n - j * cs));
            if self.me == root {
                self.write(s, d, Some(&buf[off..off + len]))?;
                self.post(s);
            } else {
                self.write(s, d, None)?;
                self.post(s);
                self.wait(root, s)?;
                self.check(root, s, d, Kind::Bcast)?;
                let src = self.data(root, s, len);
                // SAFETY: the root posted step s, so its chunk is there, and it is not
                // rewritten before we post s + 1; the destination is our own buffer.
                unsafe { std::ptr::copy_nonoverlapping(src, buf[off..].as_mut_ptr(), len) };
            }
        }
        Ok(())
    }

    /// Broadcast by single-copy transfers: at the first step every member publishes its
    /// buffer's address, and every member checks every descriptor (as before the second step
    /// of a slot pipeline, so on a mismatch all stop here, none having copied). Then each
    /// other member reads the head of the message from the root while the root writes the
    /// tail ([`Region::split_tail`] bytes) into every other member's buffer, so that two
    /// cores copy at once. At the second step the root says it has written (and whether that
    /// worked) and the others that they have read; the root returns once all have read, the
    /// others once the root has written.
    fn bcast_cma(&mut self, root: usize, buf: &mut [u8], d: u64) -> Result<(), Error> {
        self.step += 1;
        let s = self.step;
        let n = buf.len();
        let addr = (buf.as_ptr() as u64).to_ne_bytes();
        self.write(s, d, Some(&addr[..]))?;
        self.post(s);
        self.check_first(s, d, Kind::Bcast)?;
        self.step += 1;
        let head = n - self.split_tail(n);
        let res = if self.me == root {
            (0..self.p)
                .filter(|r| *r != root)
                .try_for_each(|r| self.cma_to_at(r, s, 0, head, &buf[head..]))
        } else {
            self.cma_from_at(root, s, 0, &mut buf[..head])
        };
        // "Done", posted even after a failed copy, so nobody hangs.
        self.write(s + 1, d, Some(&u64::from(res.is_err()).to_ne_bytes()))?;
        self.post(s + 1);
        if self.me == root {
            self.wait_all(s + 1)?;
        } else if head < n {
            self.wait(root, s + 1)?;
            if self.addr(root, s + 1, 0) != 0 {
                return res.and(Err(Error::LocalOs(format!(
                    "MPI_Bcast: root (rank {}) failed to write the end of the message",
                    self.world[root]
                ))));
            }
        }
        res
    }

    /// Allreduce (`root == None`) or reduce to `root`. `send` is `None` in place (operand in
    /// `recv`); `recv` is the result buffer (`None` off the root of a reduce).
    fn reduce(
        &mut self,
        kind: Kind,
        root: Option<usize>,
        send: Option<&[u8]>,
        mut recv: Option<&mut [u8]>,
        op: &ResolvedOp,
    ) -> Result<(), Error> {
        let n = send.map_or_else(|| recv.as_ref().map_or(0, |r| r.len()), <[u8]>::len);
        let d = desc(kind, root.unwrap_or(0), n);
        if self.cma && n >= REDUCE_CMA_MIN {
            if let Some(r) = root
                && self.p == 2
                && n >= settings().pair_min
            {
                return self.reduce_pair(r, send, recv, op, d);
            }
            return self.reduce_cma(kind, root, send, recv, op, d);
        }
        let cs = self.slot / op.elem.max(1) * op.elem.max(1);
        let (k, cs) = Self::chunks(n, cs);
        let first = self.step + 1;
        self.step += k as u64;
        let folds = root.is_none_or(|r| r == self.me);
        // Our chunks go to the slots when another member reads them, or in place (over more
        // than two members) as our own copy of the operand the result overwrites.
        let publish = !folds || root.is_none() || (send.is_none() && self.p > 2);
        for j in 0..k {
            let s = first + j as u64;
            if j == 1 && !folds {
                self.check_first(first, d, kind)?;
            }
            let (off, len) = (j * cs, cs.min(n - j * cs));
            let own: &[u8] = match (send, recv.as_deref()) {
                (Some(sb), _) => &sb[off..off + len],
                (None, Some(rb)) => &rb[off..off + len],
                (None, None) => &[],
            };
            let own = own.as_ptr();
            // SAFETY: `own` points at `len` bytes of the caller's operand.
            let chunk = unsafe { std::slice::from_raw_parts(own, len) };
            self.write(s, d, publish.then_some(chunk))?;
            self.post(s);
            if !folds {
                continue;
            }
            self.wait_all(s)?;
            for r in 0..self.p {
                if r != self.me {
                    self.check(r, s, d, kind)?;
                }
            }
            if let Some(rb) = recv.as_deref_mut() {
                self.fold(s, op, own, publish, &mut rb[off..off + len]);
            }
        }
        Ok(())
    }

    /// Reduce of two members by single-copy reads and writes, both members working: at a
    /// first step the root publishes the addresses of its operand and of its result buffer,
    /// the other member that of its operand, and both check both descriptors. The root then
    /// reads the head of the other operand (bytes `[0, a)`, [`pair_split`]) and folds it into
    /// its result, while the other member reads the tail of the root's operand, folds it with
    /// its own and writes the result's tail into the root's buffer, each in chunks of
    /// [`PAIR_CHUNK`] bytes (read data still in the cache when folded). At the second step
    /// each says it is done (and whether it worked) and waits for the other.
    ///
    /// In place the root's operand is its result buffer; the other member reads the tail of it
    /// just before writing the same bytes, and the root touches only the head.
    ///
    /// # Implementation notes
    /// With `c` the cost per byte of a single-copy transfer and `f` of a fold, the root alone
    /// takes `n (c + f)`; here the root takes `a (c + f)` and the other member
    /// `(n - a) (2c + f)`, balanced at `a / n = (2c + f) / (3c + 2f)`, about 0.6 for the
    /// measured `c ≈ 2f` (1 MiB of `f32`: 2.4 times faster than the root alone).
    fn reduce_pair(
        &mut self,
        root: usize,
        send: Option<&[u8]>,
        recv: Option<&mut [u8]>,
        op: &ResolvedOp,
        d: u64,
    ) -> Result<(), Error> {
        self.step += 1;
        let s = self.step;
        let n = send.map_or_else(|| recv.as_ref().map_or(0, |r| r.len()), <[u8]>::len);
        // Our operand: the send buffer, or in place (root only) the result buffer.
        let own = send.map_or_else(
            || recv.as_deref().map_or(std::ptr::null(), <[u8]>::as_ptr),
            <[u8]>::as_ptr,
        );
        let out = recv.as_deref().map_or(0, |r| r.as_ptr() as u64);
        let mut words = [0u8; 16];
        words[..8].copy_from_slice(&(own as u64).to_ne_bytes());
        words[8..].copy_from_slice(&out.to_ne_bytes());
        let k = if self.me == root { 16 } else { 8 };
        self.write(s, d, Some(&words[..k]))?;
        self.post(s);
        // On a mismatch both stop here, neither having read.
        self.check_first(s, d, Kind::Reduce)?;
        self.step += 1;
        let peer = 1 - self.me;
        let a = pair_split(n, op.elem);
        let res = match (recv, send) {
            (Some(out), _) if self.me == root => self.pair_head(s, peer, op, send, out, a),
            (_, Some(sb)) if self.me != root => self.pair_tail(s, root, op, sb, a),
            _ => Ok(()),
        };
        // "Done", posted even after a failure, so nobody hangs.
        let written = self.write(s + 1, d, Some(&u64::from(res.is_err()).to_ne_bytes()));
        self.post(s + 1);
        let mut res = res.and(written).and(self.wait(peer, s + 1));
        if res.is_ok() && self.me == root && self.addr(peer, s + 1, 0) != 0 {
            res = Err(Error::LocalOs(format!(
                "MPI_Reduce: rank {} failed to reduce its part of the message",
                self.world[peer]
            )));
        }
        res
    }

    /// The root's part of [`Region::reduce_pair`]: `out[..a] = x_root ∘ x_peer` (in rank
    /// order) over the head, reading the peer's operand published at step `s`; our operand is
    /// `send`, or `out` itself in place.
    fn pair_head(
        &self,
        s: u64,
        peer: usize,
        op: &ResolvedOp,
        send: Option<&[u8]>,
        out: &mut [u8],
        a: usize,
    ) -> Result<(), Error> {
        let root_first = self.me < peer;
        let mut tmp = Vec::new();
        for off in (0..a).step_by(PAIR_CHUNK) {
            let len = PAIR_CHUNK.min(a - off);
            let o = &mut out[off..off + len];
            if let Some(sb) = send {
                self.cma_from_at(peer, s, off, o)?;
                let mine = &sb[off..off + len];
                if root_first {
                    op.apply(mine, o);
                } else {
                    op.apply_left(o, mine);
                }
            } else {
                // In place: `o` holds our operand.
                if tmp.is_empty() {
                    tmp = super::schedule::take_tmp(PAIR_CHUNK.min(a));
                }
                let t = &mut tmp[..len];
                self.cma_from_at(peer, s, off, t)?;
                if root_first {
                    op.apply_left(o, t);
                } else {
                    op.apply(t, o);
                }
            }
        }
        super::schedule::give_tmp(tmp);
        Ok(())
    }

    /// The other member's part of [`Region::reduce_pair`]: the tail `[a, n)` of the result,
    /// from the root's operand (read) and ours, written into the root's result buffer; both
    /// published at step `s`.
    fn pair_tail(
        &self,
        s: u64,
        root: usize,
        op: &ResolvedOp,
        own: &[u8],
        a: usize,
    ) -> Result<(), Error> {
        let n = own.len();
        if a >= n {
            return Ok(());
        }
        let mut tmp = super::schedule::take_tmp(PAIR_CHUNK.min(n - a));
        let mut res = Ok(());
        for off in (a..n).step_by(PAIR_CHUNK) {
            let len = PAIR_CHUNK.min(n - off);
            let t = &mut tmp[..len];
            res = self.cma_from_at(root, s, off, t);
            if res.is_err() {
                break;
            }
            let mine = &own[off..off + len];
            // Rank order: the lower rank's operand on the left.
            if root < self.me {
                op.apply_left(t, mine);
            } else {
                op.apply(mine, t);
            }
            res = self.cma_to_at(root, s, 1, off, t);
            if res.is_err() {
                break;
            }
        }
        super::schedule::give_tmp(tmp);
        res
    }

    /// Reduction by single-copy reads, as a reduce-scatter then a gather: at a first step
    /// every member publishes the address of its operand and all check all descriptors;
    /// member j reads block j (its share of the elements) of every operand and folds it in
    /// rank order; at the second step it publishes where its block of the result is (and so
    /// says it has read the operands); the members that need the result copy the others'
    /// blocks from there; at the third step those readers say they are done, and a member
    /// returns only once every reader of its operand and its block is.
    fn reduce_cma(
        &mut self,
        kind: Kind,
        root: Option<usize>,
        send: Option<&[u8]>,
        recv: Option<&mut [u8]>,
        op: &ResolvedOp,
        d: u64,
    ) -> Result<(), Error> {
        self.step += 1;
        let s = self.step;
        // In place the result overwrites our operand while others may still read it: they
        // read a copy instead.
        let kept = match (send, recv.as_deref()) {
            (None, Some(rb)) => {
                let mut k = super::schedule::take_tmp(rb.len());
                k.clear();
                k.extend_from_slice(rb);
                Some(k)
            }
            _ => None,
        };
        let own = match (send, &kept) {
            (Some(sb), _) => sb.as_ptr(),
            (None, Some(k)) => k.as_ptr(),
            (None, None) => std::ptr::null(),
        };
        self.write(s, d, Some(&(own as u64).to_ne_bytes()))?;
        self.post(s);
        // On a mismatch every member stops here, none having read.
        self.check_first(s, d, kind)?;
        let n = send.map_or_else(|| recv.as_ref().map_or(0, |r| r.len()), <[u8]>::len);
        let readers = root.is_none_or(|r| r == self.me);
        let (res, block) = if n >= SPLIT_REDUCE_MIN && (root.is_none() || self.p != 2) {
            self.step += 2;
            self.reduce_split(s, op, own, n, readers, recv, d)
        } else {
            // The members that need the result fold the whole operands themselves.
            self.step += 1;
            let res = match recv {
                Some(out) if readers => self.fold_cma_block(s, op, own, 0, out),
                _ => Ok(()),
            };
            (res, None)
        };
        // Last step: done reading; a member's operand (and block) must outlive every reader.
        let done = self.step;
        let written = self.write(done, d, None);
        self.post(done);
        let waited = match root {
            None => self.wait_all(done),
            Some(r) if r != self.me => self.wait(r, done),
            Some(_) => Ok(()),
        };
        for t in kept.into_iter().chain(block) {
            super::schedule::give_tmp(t);
        }
        res.and(written).and(waited)
    }

    /// The middle of a split [`Region::reduce_cma`] (reduce-scatter, then gather): member j
    /// folds block j of the result (its share of the elements) from the operands published at
    /// step `s`, publishes where that block is at step `s + 1` (which also says it has read the
    /// operands), and the members that need the result copy the other blocks from there.
    /// Returns the outcome and the temporary holding this member's block when it keeps no
    /// result, which must outlive the readers.
    #[allow(clippy::too_many_arguments)]
    fn reduce_split(
        &mut self,
        s: u64,
        op: &ResolvedOp,
        own: *const u8,
        n: usize,
        readers: bool,
        mut recv: Option<&mut [u8]>,
        d: u64,
    ) -> (Result<(), Error>, Option<Vec<u8>>) {
        let (lo, hi) = self.block(self.me, n, op.elem);
        let mut mine = (!readers).then(|| {
            let mut t = super::schedule::take_tmp(hi - lo);
            t.resize(hi - lo, 0);
            t
        });
        let res = match (&mut mine, recv.as_deref_mut()) {
            (Some(t), _) => self.fold_cma_block(s, op, own, lo, t),
            (None, Some(out)) => self.fold_cma_block(s, op, own, lo, &mut out[lo..hi]),
            (None, None) => Ok(()),
        };
        // The block's base, so that base + lo is the block.
        let base = match (&mine, recv.as_deref()) {
            (Some(t), _) => (t.as_ptr() as u64).wrapping_sub(lo as u64),
            (None, Some(out)) => out.as_ptr() as u64,
            (None, None) => 0,
        };
        let written = self.write(s + 1, d, Some(&base.to_ne_bytes()));
        self.post(s + 1);
        let mut res = res.and(written).and(self.wait_all(s + 1));
        if res.is_ok()
            && readers
            && let Some(out) = recv
        {
            for r in (0..self.p).filter(|r| *r != self.me) {
                let (a, b) = self.block(r, n, op.elem);
                res = self.cma_from_at(r, s + 1, a, &mut out[a..b]);
                if res.is_err() {
                    break;
                }
            }
        }
        (res, mine)
    }

    /// Member `r`'s block of an `n`-byte reduction of `elem`-byte elements: byte range
    /// `[lo, hi)`, whole elements, blocks in rank order covering everything.
    fn block(&self, r: usize, n: usize, elem: usize) -> (usize, usize) {
        let elem = elem.max(1);
        let m = n / elem;
        let hi = if r + 1 == self.p {
            n
        } else {
            (r + 1) * m / self.p * elem
        };
        (r * m / self.p * elem, hi)
    }

    /// Address `k` (0 or 1) that member `r` published inline at step `s`.
    fn addr(&self, r: usize, s: u64, k: usize) -> u64 {
        debug_assert!(k < INLINE / 8);
        let mut a = [0u8; 8];
        // SAFETY: member r posted step s with its addresses inline (8 bytes each, at most
        // INLINE); the cell is not rewritten before our next post.
        unsafe { std::ptr::copy_nonoverlapping(self.data(r, s, 8).add(8 * k), a.as_mut_ptr(), 8) };
        u64::from_ne_bytes(a)
    }

    /// Copies `dst.len()` bytes at offset `off` of the buffer member `r` published at step `s`
    /// (its first address; single-copy read).
    fn cma_from_at(&self, r: usize, s: u64, off: usize, dst: &mut [u8]) -> Result<(), Error> {
        if dst.is_empty() {
            return Ok(());
        }
        let addr = self.addr(r, s, 0).wrapping_add(off as u64);
        braid_shm::cma_read(self.pids[r], addr, dst).map_err(|e| {
            Error::LocalOs(format!(
                "single-copy read from rank {} in a shared-memory collective: {e}",
                self.world[r]
            ))
        })
    }

    /// Copies `src` to offset `off` of the buffer member `r` published as its address `k` at
    /// step `s` (single-copy write).
    fn cma_to_at(&self, r: usize, s: u64, k: usize, off: usize, src: &[u8]) -> Result<(), Error> {
        if src.is_empty() {
            return Ok(());
        }
        let addr = self.addr(r, s, k).wrapping_add(off as u64);
        braid_shm::cma_write(self.pids[r], addr, src).map_err(|e| {
            Error::LocalOs(format!(
                "single-copy write to rank {} in a shared-memory collective: {e}",
                self.world[r]
            ))
        })
    }

    /// Block `[lo, lo + out.len())` of `x0 ∘ (x1 ∘ (… ∘ x(p-1)))` over the operands published
    /// at step `s` for single-copy reads; ours is at `own` (not `out`).
    fn fold_cma_block(
        &self,
        s: u64,
        op: &ResolvedOp,
        own: *const u8,
        lo: usize,
        out: &mut [u8],
    ) -> Result<(), Error> {
        let len = out.len();
        if len == 0 {
            return Ok(());
        }
        // SAFETY: `own` is the caller's send buffer or our copy of the operand, n >= lo + len
        // bytes that nobody writes during the call, distinct from `out`.
        let own = unsafe { std::slice::from_raw_parts(own.add(lo), len) };
        let last = self.p - 1;
        let mut tmp = super::schedule::take_tmp(len);
        tmp.resize(len, 0);
        let mut res = if last == self.me {
            out.copy_from_slice(own);
            Ok(())
        } else {
            self.cma_from_at(last, s, lo, out)
        };
        for r in (0..last).rev() {
            if res.is_err() {
                break;
            }
            if r == self.me {
                op.apply(own, out);
            } else {
                res = self.cma_from_at(r, s, lo, &mut tmp);
                if res.is_ok() {
                    op.apply(&tmp, out);
                }
            }
        }
        super::schedule::give_tmp(tmp);
        res
    }

    /// `out = x0 ∘ (x1 ∘ (… ∘ x(p-1)))` over the members' chunks of step `s`; this rank's
    /// operand is read from `own`, which may be `out` itself (in place): then from our own
    /// copy in our slot if `published`, else (a reduce over two members, where only this root
    /// needs the result) straight from `out`.
    fn fold(&self, s: u64, op: &ResolvedOp, own: *const u8, published: bool, out: &mut [u8]) {
        let len = out.len();
        if len == 0 {
            // Nothing to fold (and empty slices may share one dangling address, which
            // would look in place).
            return;
        }
        let in_place = std::ptr::eq(own, out.as_ptr());
        let last = self.p - 1;
        if in_place && !published {
            debug_assert!(self.p == 2);
            let peer = 1 - self.me;
            // SAFETY: the peer posted step s; its chunk holds `len` bytes, not ours, that
            // nobody writes before our next post.
            let x = unsafe { std::slice::from_raw_parts(self.data(peer, s, len), len) };
            if self.me == 1 {
                op.apply(x, out);
            } else {
                op.apply_left(out, x);
            }
            return;
        }
        let operand = |r: usize| -> &[u8] {
            let p = if r != self.me {
                self.data(r, s, len)
            } else if in_place {
                self.data(self.me, s, len)
            } else {
                own
            };
            // SAFETY: the operand holds `len` bytes (a posted peer chunk, our own copy of
            // ours, or our send buffer), none of which is `out` (in place, our own copy is
            // read instead) and none of which anybody writes before our next post.
            unsafe { std::slice::from_raw_parts(p, len) }
        };
        op.apply3(operand(last - 1), operand(last), out);
        for r in (0..last - 1).rev() {
            op.apply(operand(r), out);
        }
    }

    /// Allgather of `n`-byte blocks into `recv` (`send` `None`: in place).
    fn allgather(&mut self, send: Option<&[u8]>, recv: &mut [u8], n: usize) -> Result<(), Error> {
        let d = desc(Kind::Allgather, 0, n);
        if self.cma && n >= CMA_MIN {
            return self.push_blocks(Kind::Allgather, recv, n, send);
        }
        let (k, cs) = Self::chunks(n, self.slot);
        let first = self.step + 1;
        self.step += k as u64;
        let me = self.me;
        for j in 0..k {
            let s = first + j as u64;
            let (off, len) = (j * cs, cs.min(n - j * cs));
            let src = match send {
                Some(sb) => &sb[off..off + len],
                None => &recv[me * n + off..me * n + off + len],
            };
            self.write(s, d, Some(src))?;
            self.post(s);
            if let Some(sb) = send {
                recv[me * n + off..me * n + off + len].copy_from_slice(&sb[off..off + len]);
            }
            self.wait_all(s)?;
            for r in 0..self.p {
                if r != me {
                    self.check(r, s, d, Kind::Allgather)?;
                }
            }
            for r in (0..self.p).filter(|r| *r != me) {
                let from = self.data(r, s, len);
                let to = &mut recv[r * n + off..r * n + off + len];
                // SAFETY: member r posted step s; its chunk holds `len` bytes that nobody
                // rewrites before our next post; `to` is our own buffer.
                unsafe { std::ptr::copy_nonoverlapping(from, to.as_mut_ptr(), len) };
            }
        }
        Ok(())
    }
}

impl Region {
    /// Allgather or alltoall by single-copy writes: every member publishes the address of its
    /// result buffer `recv` and copies its own block there (from `send`: an allgather's own
    /// block, `None` in place; an alltoall's `p` blocks, of which ours); then (every
    /// descriptor checked) it writes its block for each other member `r` straight into `r`'s
    /// buffer at our block's place (`me * n`): block `r` of `send` (an alltoall), or our own
    /// block of `recv` (an allgather). It starts with the next member so that the writers
    /// spread over the readers; at the second step each says it is done (and whether it
    /// worked) and returns once all are.
    ///
    /// # Implementation notes
    /// Writing the block just copied (still in the cache) costs less than reading the others'
    /// send buffers from their caches: an allgather of 1 MiB on two ranks (Emerald Rapids,
    /// KVM) 126-136 µs against 142-173 µs in a C model of both.
    fn push_blocks(
        &mut self,
        kind: Kind,
        recv: &mut [u8],
        n: usize,
        send: Option<&[u8]>,
    ) -> Result<(), Error> {
        let d = desc(kind, 0, n);
        let (me, p) = (self.me, self.p);
        // An alltoall sends block r to member r; an allgather its own block to everyone.
        let blocks = send.filter(|_| kind == Kind::Alltoall);
        let own = blocks.map_or(send, |b| Some(&b[me * n..(me + 1) * n]));
        self.step += 1;
        let s = self.step;
        self.write(s, d, Some(&(recv.as_ptr() as u64).to_ne_bytes()))?;
        self.post(s);
        if let Some(o) = own {
            recv[me * n..(me + 1) * n].copy_from_slice(o);
        }
        // On a mismatch every member stops here, none having written.
        self.check_first(s, d, kind)?;
        self.step += 1;
        let block =
            |r: usize| blocks.map_or(&recv[me * n..(me + 1) * n], |b| &b[r * n..(r + 1) * n]);
        let res = (1..p)
            .map(|k| (me + k) % p)
            .try_for_each(|r| self.cma_to_at(r, s, 0, me * n, block(r)));
        // "Done", posted even after a failure, so nobody hangs.
        self.write(s + 1, d, Some(&u64::from(res.is_err()).to_ne_bytes()))?;
        self.post(s + 1);
        self.wait_all(s + 1)?;
        res?;
        match (0..p).find(|r| *r != me && self.addr(*r, s + 1, 0) != 0) {
            Some(r) => Err(Error::LocalOs(format!(
                "{}: rank {} failed to write its block",
                kind.name(),
                self.world[r]
            ))),
            None => Ok(()),
        }
    }
}

/// Alltoall.
impl Region {
    /// Alltoall of `n`-byte blocks. Through the cells and slots, every member's blocks in
    /// pieces of at most `slot / p` bytes: at step `j` each member writes piece `j` of each
    /// of its `p` blocks into its chunk (the piece for member `t` at `t` pieces in), and
    /// reads its own piece from every other member's chunk; a call that fits a slot takes one
    /// step. From [`CMA_MIN`]-byte blocks with single-copy transfers (not in place: our
    /// blocks to send would be overwritten while others still read them), every member
    /// writes its blocks straight into the others' buffers instead ([`Region::push_blocks`]).
    fn alltoall(&mut self, send: Option<&[u8]>, recv: &mut [u8], n: usize) -> Result<(), Error> {
        let d = desc(Kind::Alltoall, 0, n);
        let (me, p) = (self.me, self.p);
        if send.is_some() && self.cma && n >= CMA_MIN {
            return self.push_blocks(Kind::Alltoall, recv, n, send);
        }
        let (k, cs) = Self::chunks(n, (self.slot / p).max(1));
        let first = self.step + 1;
        self.step += k as u64;
        for j in 0..k {
            let s = first + j as u64;
            let (off, len) = (j * cs, cs.min(n - j * cs));
            let src = send.unwrap_or(&*recv);
            self.write(s, d, None)?;
            let to = self.data(me, s, p * len);
            for t in 0..p {
                let piece = &src[t * n + off..t * n + off + len];
                // SAFETY: piece t lies inside our `p * len`-byte chunk of step s (at most a
                // slot: len <= slot / p); nobody reads it before our post.
                unsafe { std::ptr::copy_nonoverlapping(piece.as_ptr(), to.add(t * len), len) };
            }
            self.post(s);
            if let Some(sb) = send {
                recv[me * n + off..me * n + off + len]
                    .copy_from_slice(&sb[me * n + off..me * n + off + len]);
            }
            if j == 0 {
                self.check_first(s, d, Kind::Alltoall)?;
            }
            for r in (1..p).map(|i| (me + i) % p) {
                self.wait(r, s)?;
                let from = self.data(r, s, p * len);
                let to = &mut recv[r * n + off..r * n + off + len];
                // SAFETY: member r posted step s (and its descriptor matched ours at the first
                // step), so its chunk holds p pieces of `len` bytes that nobody rewrites
                // before our next post; `to` is our own buffer. In place, piece j of block r
                // was copied into our chunk above, before this overwrites it.
                unsafe { std::ptr::copy_nonoverlapping(from.add(me * len), to.as_mut_ptr(), len) };
            }
        }
        Ok(())
    }
}

/// Rooted gathers and scatters.
impl Region {
    /// Bytes at the end of an `n`-byte single-copy broadcast that the root writes into every
    /// other member's buffer while they read the rest: `n / p`, whole pages, from
    /// `BRAID_COLL_SHM_SPLIT` bytes. The root then copies `(p - 1) n / p` bytes and each other
    /// member `(p - 1) n / p`, instead of the root idling while each other member copies `n`.
    fn split_tail(&self, n: usize) -> usize {
        if n < settings().split {
            return 0;
        }
        n / self.p / 4096 * 4096
    }

    /// Bytes at the end of each `n`-byte block of a single-copy gather (scatter) that the other
    /// member writes into (the root writes into the other member's buffer) while the reader
    /// reads the rest, chosen by the root (which alone knows whether it copies its own block,
    /// `local`) so that both ends finish together, counting a local copy like a transfer: a
    /// gather with a local copy has the others write whole blocks (`n`), one in place
    /// `(p - 1) n / p`; a scatter with a local copy has the others read whole blocks (0), one
    /// in place `n / p`. Only from `BRAID_COLL_SHM_SPLIT` bytes (below, the reader copies
    /// all), in whole pages.
    fn rooted_tail(&self, n: usize, kind: Kind, local: bool) -> usize {
        if n < settings().split {
            return 0;
        }
        let p = self.p;
        match (kind, local) {
            (Kind::Gather, true) => n,
            (Kind::Gather, false) => n / p * (p - 1) / 4096 * 4096,
            (_, true) => 0,
            (_, false) => n / p / 4096 * 4096,
        }
    }

    /// Gather of `n`-byte blocks to `root` (`send` `None`: in place at the root). Short blocks
    /// go through the slots in a pipeline of slot-sized chunks: each other member writes its
    /// chunk, the root copies all of them out.
    fn gather(
        &mut self,
        root: usize,
        send: Option<&[u8]>,
        recv: &mut [u8],
        n: usize,
    ) -> Result<(), Error> {
        let d = desc(Kind::Gather, root, n);
        if self.cma && n >= CMA_MIN {
            return self.gather_cma(root, send, recv, n, d);
        }
        let me = self.me;
        let (k, cs) = Self::chunks(n, self.slot);
        let first = self.step + 1;
        self.step += k as u64;
        if me == root
            && let Some(sb) = send
        {
            recv[me * n..(me + 1) * n].copy_from_slice(sb);
        }
        let mine = send.unwrap_or(&[]);
        for j in 0..k {
            let s = first + j as u64;
            let (off, len) = (j * cs, cs.min(n - j * cs));
            if me != root {
                if j == 1 {
                    self.check_first(first, d, Kind::Gather)?;
                }
                self.write(s, d, Some(&mine[off..off + len]))?;
                self.post(s);
                continue;
            }
            self.write(s, d, None)?;
            self.post(s);
            self.wait_all(s)?;
            for r in (0..self.p).filter(|r| *r != me) {
                self.check(r, s, d, Kind::Gather)?;
                let from = self.data(r, s, len);
                let to = &mut recv[r * n + off..r * n + off + len];
                // SAFETY: member r posted step s; its chunk holds `len` bytes that nobody
                // rewrites before our next post; `to` is our own buffer.
                unsafe { std::ptr::copy_nonoverlapping(from, to.as_mut_ptr(), len) };
            }
        }
        Ok(())
    }

    /// Gather by single-copy transfers: at a first step the root publishes its buffer's
    /// address and how many bytes at the end of each block the others write
    /// ([`Region::rooted_tail`]), every other member its block's address, and all check all
    /// descriptors. The root copies its own block and reads the heads of the others while each
    /// other member writes the tail of its own into the root's buffer. At the second step each
    /// says it is done (and whether it worked); the root returns once all are done, the others
    /// once the root has read.
    fn gather_cma(
        &mut self,
        root: usize,
        send: Option<&[u8]>,
        recv: &mut [u8],
        n: usize,
        d: u64,
    ) -> Result<(), Error> {
        self.step += 1;
        let s = self.step;
        let me = self.me;
        let mine = send.unwrap_or(&[]);
        let mut words = [0u8; 16];
        if me == root {
            let tail = self.rooted_tail(n, Kind::Gather, send.is_some());
            words[..8].copy_from_slice(&(recv.as_ptr() as u64).to_ne_bytes());
            words[8..].copy_from_slice(&(tail as u64).to_ne_bytes());
            self.write(s, d, Some(&words))?;
        } else {
            words[..8].copy_from_slice(&(mine.as_ptr() as u64).to_ne_bytes());
            self.write(s, d, Some(&words[..8]))?;
        }
        self.post(s);
        if me == root
            && let Some(sb) = send
        {
            recv[me * n..(me + 1) * n].copy_from_slice(sb);
        }
        // On a mismatch every member stops here, none having copied into another.
        self.check_first(s, d, Kind::Gather)?;
        self.step += 1;
        let tail = usize::try_from(self.addr(root, s, 1)).map_or(n, |t| t.min(n));
        let head = n - tail;
        let res = if me == root {
            (0..self.p)
                .filter(|r| *r != me)
                .try_for_each(|r| self.cma_from_at(r, s, 0, &mut recv[r * n..r * n + head]))
        } else {
            self.cma_to_at(root, s, 0, me * n + head, &mine[head..n])
        };
        self.done(s + 1, d, Kind::Gather, root, res, head < n)
    }

    /// The last step of a rooted single-copy gather or scatter: posts step `s` with our status
    /// (also after a failure, so nobody hangs); the root waits until every other member is
    /// done with its buffer, the others until the root is done with theirs. When the writers
    /// `wrote` (the other members into the root's buffer for a gather, the root into theirs
    /// for a scatter), a reader whose writer failed fails too.
    fn done(
        &mut self,
        s: u64,
        d: u64,
        kind: Kind,
        root: usize,
        res: Result<(), Error>,
        wrote: bool,
    ) -> Result<(), Error> {
        self.write(s, d, Some(&u64::from(res.is_err()).to_ne_bytes()))?;
        self.post(s);
        if self.me == root {
            self.wait_all(s)?;
        } else {
            self.wait(root, s)?;
        }
        res?;
        let reader_is_root = kind == Kind::Gather;
        if !wrote || reader_is_root != (self.me == root) {
            return Ok(());
        }
        let failed = (0..self.p)
            .filter(|r| *r != self.me && (self.me == root || *r == root))
            .find(|r| self.addr(*r, s, 0) != 0);
        match failed {
            Some(r) => Err(Error::LocalOs(format!(
                "{}: rank {} failed to write its part",
                kind.name(),
                self.world[r]
            ))),
            None => Ok(()),
        }
    }

    /// Scatter of `n`-byte blocks from `root` (`recv` `None`: in place at the root). Short
    /// blocks go through the root's slots: the other members' blocks, in rank order, as one
    /// stream in slot-sized chunks, of which each member copies its part.
    fn scatter(
        &mut self,
        root: usize,
        send: &[u8],
        recv: Option<&mut [u8]>,
        n: usize,
    ) -> Result<(), Error> {
        let d = desc(Kind::Scatter, root, n);
        if self.cma && n >= CMA_MIN {
            return self.scatter_cma(root, send, recv, n, d);
        }
        let me = self.me;
        let mut recv = recv;
        if me == root
            && let Some(rb) = recv.as_deref_mut()
        {
            rb.copy_from_slice(&send[me * n..(me + 1) * n]);
        }
        // Member r's block in the stream.
        let pos = |r: usize| if r < root { r } else { r - 1 } * n;
        let total = (self.p - 1) * n;
        let (k, cs) = Self::chunks(total, self.slot);
        let first = self.step + 1;
        self.step += k as u64;
        for j in 0..k {
            let s = first + j as u64;
            let (off, len) = (j * cs, cs.min(total - j * cs));
            if j == 1 {
                self.check_first(first, d, Kind::Scatter)?;
            }
            self.write(s, d, None)?;
            if me == root {
                let to = self.data(me, s, len);
                for q in (0..self.p).filter(|q| *q != root) {
                    let (lo, hi) = (pos(q).max(off), (pos(q) + n).min(off + len));
                    if lo < hi {
                        let from = &send[q * n + lo - pos(q)..q * n + hi - pos(q)];
                        // SAFETY: our chunk of step s holds `len` bytes (data's contract) and
                        // [lo - off, hi - off) lies inside it; nobody reads it before our post
                        // (`write` waited until everybody finished step s - 2).
                        unsafe {
                            std::ptr::copy_nonoverlapping(from.as_ptr(), to.add(lo - off), hi - lo);
                        }
                    }
                }
                self.post(s);
                continue;
            }
            self.post(s);
            self.wait(root, s)?;
            self.check(root, s, d, Kind::Scatter)?;
            let (lo, hi) = (pos(me).max(off), (pos(me) + n).min(off + len));
            if lo < hi
                && let Some(rb) = recv.as_deref_mut()
            {
                let from = self.data(root, s, len);
                let to = &mut rb[lo - pos(me)..hi - pos(me)];
                // SAFETY: the root posted step s; its chunk holds `len` bytes, of which
                // [lo - off, hi - off) is our part, not rewritten before we post s + 1; `to` is
                // our own buffer.
                unsafe {
                    std::ptr::copy_nonoverlapping(from.add(lo - off), to.as_mut_ptr(), hi - lo)
                };
            }
        }
        Ok(())
    }

    /// Scatter by single-copy transfers: at a first step the root publishes its buffer's
    /// address and how many bytes at the end of each block it writes
    /// ([`Region::rooted_tail`]), every other member its block's address, and all check all
    /// descriptors. Each other member reads the head of its block while the root copies its
    /// own block and writes the tails; the second step as in [`Region::gather_cma`].
    fn scatter_cma(
        &mut self,
        root: usize,
        send: &[u8],
        recv: Option<&mut [u8]>,
        n: usize,
        d: u64,
    ) -> Result<(), Error> {
        self.step += 1;
        let s = self.step;
        let me = self.me;
        let mut recv = recv;
        let mut words = [0u8; 16];
        if me == root {
            let tail = self.rooted_tail(n, Kind::Scatter, recv.is_some());
            words[..8].copy_from_slice(&(send.as_ptr() as u64).to_ne_bytes());
            words[8..].copy_from_slice(&(tail as u64).to_ne_bytes());
            self.write(s, d, Some(&words))?;
        } else {
            let addr = recv.as_deref().map_or(std::ptr::null(), <[u8]>::as_ptr);
            words[..8].copy_from_slice(&(addr as u64).to_ne_bytes());
            self.write(s, d, Some(&words[..8]))?;
        }
        self.post(s);
        if me == root
            && let Some(rb) = recv.as_deref_mut()
        {
            rb.copy_from_slice(&send[me * n..(me + 1) * n]);
        }
        self.check_first(s, d, Kind::Scatter)?;
        self.step += 1;
        let tail = usize::try_from(self.addr(root, s, 1)).map_or(n, |t| t.min(n));
        let head = n - tail;
        let res = if me == root {
            (0..self.p)
                .filter(|r| *r != me)
                .try_for_each(|r| self.cma_to_at(r, s, 0, head, &send[r * n + head..(r + 1) * n]))
        } else {
            match recv {
                Some(rb) => self.cma_from_at(root, s, me * n, &mut rb[..head]),
                None => Ok(()),
            }
        };
        self.done(s + 1, d, Kind::Scatter, root, res, head < n)
    }

    /// Whether a v-form block of `len` bytes goes through the slots (else its owner publishes
    /// its address for a single-copy transfer).
    fn v_short(&self, len: usize) -> bool {
        len < CMA_MIN && len <= self.slot
    }

    /// The v-forms' first-step check: every member's kind and root (lengths differ by design;
    /// the root checks them against its counts).
    fn check_first_v(&mut self, s: u64, d: u64, kind: Kind) -> Result<(), Error> {
        self.wait_all(s)?;
        for r in (0..self.p).filter(|r| *r != self.me) {
            let got = self.desc_word(r, s).load(Ordering::Relaxed);
            if got & KIND_ROOT != d & KIND_ROOT {
                // Reported like a whole-word mismatch of kind or root.
                self.check(r, s, (got & LEN_MASK) | (d & KIND_ROOT), kind)?;
            }
        }
        Ok(())
    }

    /// Gatherv to `root`: at a first step the root puts in its slot a table of `(address,
    /// length)` of each member's block in its buffer, and every other member publishes its
    /// block's length in its descriptor and a short block ([`Region::v_short`]) itself; all
    /// check all kinds and roots. The root checks each length against its counts, copies its
    /// own block and the short ones, while each member with a long block checks its entry's
    /// length and writes the block straight into the root's buffer. At the second step each
    /// says it is done (and whether it worked); the root returns once all are, if any wrote.
    fn gatherv(
        &mut self,
        root: usize,
        send: Option<&[u8]>,
        recv: &mut [u8],
        blocks: VBlocks<'_>,
    ) -> Result<(), Error> {
        self.step += 1;
        let s = self.step;
        let (me, p) = (self.me, self.p);
        let mine = send.unwrap_or(&[]);
        let table = 16 * p;
        let d = if me == root {
            let d = desc(Kind::Gatherv, root, table);
            self.write(s, d, None)?;
            let to = self.data(me, s, table);
            for r in 0..p {
                let (off, len) = blocks.at(r);
                let mut e = [0u8; 16];
                e[..8].copy_from_slice(&(recv[off..].as_ptr() as u64).to_ne_bytes());
                e[8..].copy_from_slice(&(len as u64).to_ne_bytes());
                // SAFETY: the table's 16 p bytes are our chunk of step s (in the cell or the
                // slot, as `data` says); nobody reads it before our post.
                unsafe { std::ptr::copy_nonoverlapping(e.as_ptr(), to.add(16 * r), 16) };
            }
            d
        } else {
            let d = desc(Kind::Gatherv, root, mine.len());
            self.write(s, d, self.v_short(mine.len()).then_some(mine))?;
            d
        };
        self.post(s);
        if me == root
            && let Some(sb) = send
        {
            let (off, _) = blocks.at(me);
            recv[off..off + sb.len()].copy_from_slice(sb);
        }
        self.check_first_v(s, d, Kind::Gatherv)?;
        self.step += 1;
        let mut res = Ok(());
        // Whether some member writes into our buffer (then we wait for it to finish).
        let mut written = false;
        if me == root {
            for r in (0..p).filter(|r| *r != me) {
                let got = (self.desc_word(r, s).load(Ordering::Relaxed) & LEN_MASK) as usize;
                let (off, want) = blocks.at(r);
                written |= !self.v_short(got);
                if got != want {
                    res = res.and(Err(mismatch(
                        Kind::Gatherv.name(),
                        format!("rank {r} sends {got} bytes into a block of {want} bytes"),
                    )));
                } else if self.v_short(got) {
                    let to = &mut recv[off..off + got];
                    // SAFETY: member r posted step s with its `got`-byte block in its cell or
                    // slot, not rewritten before we post s + 1; `to` is our own buffer.
                    unsafe {
                        std::ptr::copy_nonoverlapping(self.data(r, s, got), to.as_mut_ptr(), got);
                    }
                }
            }
        } else if !self.v_short(mine.len()) {
            let (w, want) = self.v_entry(root, s, me);
            res = if want == Some(mine.len()) {
                braid_shm::cma_write(self.pids[root], w, mine).map_err(|e| {
                    Error::LocalOs(format!(
                        "single-copy write to rank {} in a shared-memory collective: {e}",
                        self.world[root]
                    ))
                })
            } else {
                Err(mismatch(
                    Kind::Gatherv.name(),
                    format!(
                        "this rank sends {} bytes into a block of {want:?}",
                        mine.len()
                    ),
                ))
            };
        }
        // "Done", posted even after a failure, so nobody hangs.
        self.write(s + 1, d, Some(&u64::from(res.is_err()).to_ne_bytes()))?;
        self.post(s + 1);
        if written {
            self.wait_all(s + 1)?;
            if let Some(r) = (0..p).find(|r| *r != me && self.addr(*r, s + 1, 0) != 0) {
                return res.and(Err(Error::LocalOs(format!(
                    "MPI_Gatherv: rank {} failed to write its block",
                    self.world[r]
                ))));
            }
        }
        res
    }

    /// Entry `r` of the table member `root` published at step `s` (a gatherv's or scatterv's):
    /// its first word and its length, `None` when the table is malformed.
    fn v_entry(&self, root: usize, s: u64, r: usize) -> (u64, Option<usize>) {
        let used = (self.desc_word(root, s).load(Ordering::Relaxed) & LEN_MASK) as usize;
        if used < 16 * self.p || used > self.slot {
            return (0, None);
        }
        let mut e = [0u8; 16];
        // SAFETY: the root posted step s with a table of 16 p bytes at the start of its
        // `used`-byte chunk (a slot), not rewritten before we post s + 1.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data(root, s, used).add(16 * r), e.as_mut_ptr(), 16)
        };
        let w = u64::from_ne_bytes(e[..8].try_into().unwrap_or_default());
        let len = u64::from_ne_bytes(e[8..].try_into().unwrap_or_default());
        (w, usize::try_from(len).ok())
    }

    /// Scatterv from `root`: at a first step the root puts in its slot a table of
    /// `(where, length)` per member, followed by the short blocks that fit (`where` is then
    /// [`PACKED`] plus the block's offset in the slot; else it is the block's address for a
    /// single-copy read), with the table's and packed blocks' length in its descriptor; every
    /// other member gives its receive length in its own. All check all kinds and roots; each
    /// other member checks its entry's length against its own and copies or reads its block.
    /// At the second step they say they are done; the root waits for them when it published an
    /// address.
    fn scatterv(
        &mut self,
        root: usize,
        send: &[u8],
        blocks: VBlocks<'_>,
        recv: Option<&mut [u8]>,
    ) -> Result<(), Error> {
        self.step += 1;
        let s = self.step;
        let (me, p) = (self.me, self.p);
        let mut recv = recv;
        let table = 16 * p;
        let mut exposed = false;
        let d = if me == root {
            // Lay out the slot: the table, then short blocks while they fit. Two passes over
            // the same layout: the first sizes it (the descriptor says where the data lives),
            // the second writes it.
            let slot = self.slot;
            let packed = |r: usize, used: usize| {
                let len = blocks.at(r).1;
                r != me && len < CMA_MIN && used + len <= slot
            };
            let mut used = table;
            for r in 0..p {
                if packed(r, used) {
                    used += blocks.at(r).1;
                }
            }
            let d = desc(Kind::Scatterv, root, used);
            self.write(s, d, None)?;
            let to = self.data(me, s, used);
            let mut at = table;
            for r in 0..p {
                let (off, len) = blocks.at(r);
                let w = if r == me {
                    0
                } else if packed(r, at) {
                    let w = PACKED | at as u64;
                    // SAFETY: the packed block lies inside our `used`-byte chunk of step s
                    // (a slot), after the table and apart from every other block; nobody reads
                    // it before our post.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            send[off..off + len].as_ptr(),
                            to.add(at),
                            len,
                        );
                    }
                    at += len;
                    w
                } else {
                    exposed = true;
                    send[off..].as_ptr() as u64
                };
                let len = if r == me { 0 } else { len as u64 };
                let mut e = [0u8; 16];
                e[..8].copy_from_slice(&w.to_ne_bytes());
                e[8..].copy_from_slice(&len.to_ne_bytes());
                // SAFETY: the table's 16 p bytes lie at the start of our `used`-byte chunk of
                // step s (in the cell or the slot, as `data` says); nobody reads it before our
                // post.
                unsafe { std::ptr::copy_nonoverlapping(e.as_ptr(), to.add(16 * r), 16) };
            }
            debug_assert_eq!(at, used, "both passes lay the slot out alike");
            d
        } else {
            let len = recv.as_deref().map_or(0, <[u8]>::len);
            let d = desc(Kind::Scatterv, root, len);
            self.write(s, d, None)?;
            d
        };
        self.post(s);
        if me == root
            && let Some(rb) = recv.as_deref_mut()
        {
            let (off, len) = blocks.at(me);
            rb.copy_from_slice(&send[off..off + len]);
        }
        self.check_first_v(s, d, Kind::Scatterv)?;
        self.step += 1;
        let mut res = Ok(());
        if me != root
            && let Some(rb) = recv
        {
            let used = (self.desc_word(root, s).load(Ordering::Relaxed) & LEN_MASK) as usize;
            let (w, len) = self.v_entry(root, s, me);
            let len = len.unwrap_or(usize::MAX);
            let at = (w & !PACKED) as usize;
            if len != rb.len() {
                res = Err(mismatch(
                    Kind::Scatterv.name(),
                    format!("the root sends {len} bytes into {} bytes", rb.len()),
                ));
            } else if w & PACKED != 0 {
                if at.checked_add(len).is_some_and(|end| end <= used) {
                    // SAFETY: the root posted step s with its `used`-byte chunk in its slot
                    // (`v_entry` checked `used` against the slot), not rewritten before we post
                    // s + 1; the block lies inside it (checked); `rb` is our own buffer.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            self.data(root, s, used).add(at),
                            rb.as_mut_ptr(),
                            len,
                        )
                    };
                } else {
                    res = Err(Error::LocalOs(format!(
                        "MPI_Scatterv: malformed table from rank {}",
                        self.world[root]
                    )));
                }
            } else if len > 0 {
                res = braid_shm::cma_read(self.pids[root], w, rb).map_err(|e| {
                    Error::LocalOs(format!(
                        "single-copy read from rank {} in a shared-memory collective: {e}",
                        self.world[root]
                    ))
                });
            }
        }
        // "Done", posted even after a failure, so nobody hangs.
        self.write(s + 1, d, None)?;
        self.post(s + 1);
        if me == root && exposed {
            self.wait_all(s + 1)?;
        }
        res
    }
}

/// Marks a scatterv table entry whose block is in the root's slot (at the offset in the low
/// bits) rather than at an address in its memory (user-space addresses stay below 2^63).
const PACKED: u64 = 1 << 63;

/// Whether a mapped region's header matches what this rank expects.
fn header_ok(seg: &Segment, p: usize, slot: usize) -> bool {
    // SAFETY: the header's three words are in bounds (checked len > HEADER by the caller's
    // length check) and were written by the leader before its announcement.
    let (m, pp, sl) = unsafe {
        let h = seg.as_ptr().cast::<u64>();
        (
            h.read_volatile(),
            h.add(1).read_volatile(),
            h.add(2).read_volatile(),
        )
    };
    m == MAGIC && pp == p as u64 && sl == slot as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_page_aligned() {
        assert_eq!(slots_offset(2) % 4096, 0);
        assert!(slots_offset(MAX_RANKS) >= HEADER + MAX_RANKS * CTRL);
    }

    #[test]
    fn descriptors_differ_by_kind_root_and_length() {
        let a = desc(Kind::Bcast, 1, 8);
        assert_ne!(a, desc(Kind::Bcast, 2, 8));
        assert_ne!(a, desc(Kind::Bcast, 1, 9));
        assert_ne!(a, desc(Kind::Reduce, 1, 8));
        assert_eq!(a & ((1 << LEN_BITS) - 1), 8);
    }

    #[test]
    fn pair_split_is_whole_elements_and_pages() {
        for n in [
            0usize,
            4,
            4096,
            65536,
            100_000,
            262_144,
            1 << 20,
            (1 << 20) + 12,
        ] {
            for elem in [1usize, 4, 8, 12, 32, 4096] {
                let n = n / elem * elem;
                let a = pair_split(n, elem);
                assert!(a <= n && a.is_multiple_of(elem), "n {n} elem {elem}: {a}");
                if 4096 % elem == 0 {
                    assert!(a.is_multiple_of(4096), "n {n} elem {elem}: {a}");
                }
            }
        }
        assert_eq!(pair_split(1 << 20, 4), 679_936); // 65%, in pages
        assert_eq!(pair_split(65536, 4), 45_056); // 70%, in pages
    }

    #[test]
    fn chunking() {
        assert_eq!(Region::chunks(0, 100), (1, 100));
        assert_eq!(Region::chunks(100, 100), (1, 100));
        assert_eq!(Region::chunks(101, 100), (2, 100));
    }
}
