//! A single-producer single-consumer **byte** ring inside a [`Segment`].
//!
//! # Layout
//!
//! At a 128-byte aligned `offset` in the segment, [`ring_footprint`]`(capacity)` bytes:
//!
//! | bytes (from `offset`) | field | written by |
//! | --- | --- | --- |
//! | 0..8 | magic [`RING_MAGIC`] (format and version) | `format_ring` |
//! | 8..16 | capacity (power of two) | `format_ring` |
//! | 128..136 | tail: total bytes published | producer |
//! | 256..264 | head: total bytes consumed | consumer |
//! | [`RING_HEADER_LEN`].. | `capacity` data bytes | producer |
//!
//! `head` and `tail` are free-running `u64` byte counts (no wrap in practice: 2^64 bytes);
//! the data index of position `p` is `p & (capacity - 1)`. Each of them sits on its own
//! 128-byte [`CachePadded`] line, written by one side only.
//!
//! # Synchronization
//!
//! Classic Lamport SPSC queue (L. Lamport, "Specifying concurrent program modules", TOPLAS
//! 1983), in the cached-index form of FastForward / MCRingBuffer (Lee, Bu, Chandranmenon,
//! "A lock-free, cache-efficient multi-core synchronization mechanism for line-rate network
//! traffic monitoring", IPDPS 2010):
//! - The producer copies bytes into free slots, then stores `tail` with `Release`; the
//!   consumer loads `tail` with `Acquire` before copying them out. So bytes are visible
//!   before the position that covers them.
//! - The consumer copies bytes out, then stores `head` with `Release`; the producer loads
//!   `head` with `Acquire` before overwriting those slots. So a slot is never overwritten
//!   while it is being read.
//! - Each side keeps a private copy of the other's index and reloads it only when the copy
//!   says "full" / "empty", so the shared lines bounce only when needed.
//!
//! # Trust
//!
//! The peer is another process of the same job, trusted not to be malicious, but its
//! indices are still never used unchecked: the capacity is read once at attach time and
//! kept privately, every index is masked, and a `tail - head` beyond the capacity is
//! clamped. A corrupt peer can garble the bytes it exchanges, never make this side access
//! memory outside the ring.
//!
//! # Sleeping
//!
//! A ring has no sleep words of its own: a consumer sleeps on a [`crate::Doorbell`], which
//! the producers of all its rings (and fast boxes) ring after writing.

use std::fmt;
use std::io;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use crate::cache_padded::CachePadded;
use crate::primitive::prefetch_write;
#[cfg(braid_loom)]
use crate::primitive::shadow;
use crate::primitive::sync::{AtomicU64, Ordering};
use crate::segment::Segment;

/// Format and version word of a ring header: ASCII `BRDRING1`, little-endian.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"BRDRING1");

/// Alignment of a ring's `offset` in its segment, and granularity of [`ring_footprint`].
pub const RING_ALIGN: usize = 128;

/// Most bytes after its write that a producer asks for ahead of the next write (16 lines:
/// about what a core keeps in flight).
const PREFETCH_MAX: usize = 1024;

/// Most bytes a write publishes, or a read releases, at once. A long transfer then streams:
/// the consumer copies one piece out while the producer copies the next one in, instead of
/// each side waiting for the other's whole copy (large messages without single-copy reads
/// cross the ring this way). Loom models a tiny piece so that its rings split writes.
#[cfg(not(braid_loom))]
pub(crate) const PIECE: usize = 64 * 1024;
/// Most bytes a write publishes, or a read releases, at once (see the non-loom definition).
#[cfg(braid_loom)]
pub(crate) const PIECE: usize = 2;

/// Largest accepted capacity (1 TiB on 64-bit targets, 1 GiB on 32-bit ones).
pub const MAX_RING_CAPACITY: usize = if usize::BITS >= 64 { 1 << 40 } else { 1 << 30 };

/// Bytes of header before the data; a multiple of [`RING_ALIGN`].
pub const RING_HEADER_LEN: usize = round_up(size_of::<RingHeader>());

/// Bytes a ring of `capacity` data bytes occupies in a segment (header plus data, rounded up
/// to a multiple of [`RING_ALIGN`]). Saturates at `usize::MAX` for absurd capacities, which
/// no segment can hold.
pub const fn ring_footprint(capacity: usize) -> usize {
    if capacity > MAX_RING_CAPACITY {
        return usize::MAX;
    }
    RING_HEADER_LEN + round_up(capacity)
}

/// `x` rounded up to a multiple of [`RING_ALIGN`]; `x` is at most `MAX_RING_CAPACITY` or a
/// struct size, so this cannot overflow.
const fn round_up(x: usize) -> usize {
    (x + RING_ALIGN - 1) & !(RING_ALIGN - 1)
}

/// The shared header. `repr(C)`: both processes must agree on the layout.
#[repr(C)]
struct RingHeader {
    /// [`RING_MAGIC`] once [`format_ring`] has finished (stored last, with `Release`);
    /// anything else means "not a ring (yet)".
    magic: AtomicU64,
    /// Number of data bytes, a power of two `<= MAX_RING_CAPACITY`. Written before `magic`,
    /// never changed afterwards; each end reads it once at attach time.
    capacity: AtomicU64,
    /// Total bytes published. Written only by the producer, with `Release`, after the bytes;
    /// monotonic (wrapping); `tail - head <= capacity`.
    tail: CachePadded<AtomicU64>,
    /// Total bytes consumed. Written only by the consumer, with `Release`, after the bytes
    /// were copied out; monotonic (wrapping); `head <= tail`.
    head: CachePadded<AtomicU64>,
    /// Loom only: one tracked cell per data byte (see [`crate::primitive`]).
    #[cfg(braid_loom)]
    shadow: shadow::Cells,
}

impl RingHeader {
    fn new(capacity: u64) -> Self {
        Self {
            magic: AtomicU64::new(0),
            capacity: AtomicU64::new(capacity),
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            #[cfg(braid_loom)]
            shadow: shadow::new(),
        }
    }
}

/// Writes a fresh, empty ring header at `offset` in `seg` (the data bytes are left as they
/// are). Either side may format, before either attaches.
///
/// # Panics
///
/// If `offset` is not a multiple of [`RING_ALIGN`], `capacity` is not a power of two or
/// exceeds [`MAX_RING_CAPACITY`], or `offset + ring_footprint(capacity)` exceeds `seg.len()`.
///
/// # Safety
///
/// No producer or consumer (in any process) may be attached to a ring at this place while
/// it is formatted, and the bytes `offset..offset + ring_footprint(capacity)` must not be
/// used for anything else.
pub unsafe fn format_ring(seg: &Segment, offset: usize, capacity: usize) {
    assert!(
        offset.is_multiple_of(RING_ALIGN),
        "ring offset {offset} not {RING_ALIGN}-aligned"
    );
    assert!(
        capacity.is_power_of_two() && capacity <= MAX_RING_CAPACITY,
        "ring capacity {capacity} is not a power of two <= {MAX_RING_CAPACITY}"
    );
    #[cfg(braid_loom)]
    assert!(
        capacity <= shadow::MAX,
        "loom rings hold at most {} bytes",
        shadow::MAX
    );
    let end = offset.checked_add(ring_footprint(capacity));
    assert!(
        end.is_some_and(|end| end <= seg.len()),
        "ring at {offset} of {capacity} bytes overflows a segment of {} bytes",
        seg.len()
    );
    // SAFETY: checked just above: `offset + RING_HEADER_LEN <= seg.len()`, and the mapping
    // is 128-aligned (page-aligned) so the header is aligned. The caller guarantees nobody
    // else accesses these bytes during formatting.
    unsafe {
        let hdr = seg.as_ptr().add(offset);
        debug_assert!(hdr.cast::<RingHeader>().is_aligned());
        ptr::write_bytes(hdr, 0, RING_HEADER_LEN);
        // `capacity <= MAX_RING_CAPACITY` fits in u64.
        ptr::write(hdr.cast::<RingHeader>(), RingHeader::new(capacity as u64));
        (&*hdr.cast::<RingHeader>())
            .magic
            .store(RING_MAGIC, Ordering::Release);
    }
}

/// The parts both ends share: where the ring is and what keeps it mapped.
struct RawRing {
    /// Keeps the mapping alive while `hdr` and `data` point into it.
    seg: Arc<Segment>,
    /// The header; valid and formatted (checked at attach) for as long as `seg` lives.
    hdr: NonNull<RingHeader>,
    /// First data byte, `RING_HEADER_LEN` after `hdr`; valid for `capacity` bytes.
    data: NonNull<u8>,
    /// Data capacity, a power of two; read once at attach, never re-read from shared memory.
    capacity: u64,
    /// The offset of the ring in `seg` (for messages).
    offset: usize,
}

impl RawRing {
    /// Checks the header at `offset` and builds the handle.
    ///
    /// # Safety
    ///
    /// If the bytes at `offset` hold a ring (right magic), it must be a ring formatted by
    /// [`format_ring`] whose other users follow this module's protocol.
    unsafe fn attach(seg: Arc<Segment>, offset: usize) -> io::Result<Self> {
        let where_ = || match seg.path() {
            Some(p) => format!("ring at offset {offset} of {}", p.display()),
            None => format!("ring at offset {offset} of an anonymous segment"),
        };
        let corrupt = |what: String| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", where_()))
        };
        if !offset.is_multiple_of(RING_ALIGN) {
            return Err(corrupt(format!("offset not {RING_ALIGN}-aligned")));
        }
        if offset
            .checked_add(RING_HEADER_LEN)
            .is_none_or(|end| end > seg.len())
        {
            return Err(corrupt(format!(
                "header beyond the segment's {} bytes",
                seg.len()
            )));
        }
        // SAFETY: `offset + RING_HEADER_LEN <= seg.len()` (checked above), so the header lies
        // inside the mapping, aligned (page-aligned mapping, 128-aligned offset). Its words
        // are atomics, so shared references are sound even while other processes write.
        let hdr = unsafe { NonNull::new_unchecked(seg.as_ptr().add(offset)).cast::<RingHeader>() };
        // SAFETY: as just argued, `hdr` is valid for reads for as long as `seg` lives.
        let h = unsafe { hdr.as_ref() };
        let magic = h.magic.load(Ordering::Acquire);
        if magic != RING_MAGIC {
            return Err(corrupt(format!(
                "bad magic {magic:#018x}, expected {RING_MAGIC:#018x}"
            )));
        }
        let capacity = h.capacity.load(Ordering::Relaxed);
        let max = MAX_RING_CAPACITY as u64;
        #[cfg(braid_loom)]
        let max = max.min(shadow::MAX as u64);
        if !capacity.is_power_of_two() || capacity > max {
            return Err(corrupt(format!(
                "capacity {capacity} not a power of two <= {max}"
            )));
        }
        // `capacity <= MAX_RING_CAPACITY` fits in usize.
        let footprint = ring_footprint(capacity as usize);
        if offset
            .checked_add(footprint)
            .is_none_or(|end| end > seg.len())
        {
            return Err(corrupt(format!(
                "{footprint} bytes overflow the segment's {} bytes",
                seg.len()
            )));
        }
        let (head, tail) = (
            h.head.load(Ordering::Acquire),
            h.tail.load(Ordering::Acquire),
        );
        if tail.wrapping_sub(head) > capacity {
            return Err(corrupt(format!(
                "head {head} and tail {tail} are {capacity}+ apart"
            )));
        }
        // SAFETY: `offset + footprint <= seg.len()`, and the data starts RING_HEADER_LEN
        // after the header, so it lies inside the mapping.
        let data = unsafe { hdr.cast::<u8>().add(RING_HEADER_LEN) };
        Ok(Self {
            seg,
            hdr,
            data,
            capacity,
            offset,
        })
    }

    fn hdr(&self) -> &RingHeader {
        // SAFETY: `hdr` points into the mapping kept alive by `self.seg` (invariant of the
        // field); the header consists of atomics, so sharing it is sound.
        unsafe { self.hdr.as_ref() }
    }

    /// Data index of position `pos`.
    fn index(&self, pos: u64) -> usize {
        // Masked by `capacity - 1 < MAX_RING_CAPACITY`, so fits in usize.
        (pos & (self.capacity - 1)) as usize
    }

    /// Copies `src` into the data area at position `pos` (wrapping around the end).
    ///
    /// # Safety
    ///
    /// `src.len()` bytes from `pos` must be free: not published to the consumer.
    unsafe fn copy_in(&self, pos: u64, src: &[u8]) {
        let start = self.index(pos);
        // `capacity` fits in usize (checked at attach), and so does `capacity - start`.
        let first = src.len().min(self.capacity as usize - start);
        debug_assert!(src.len() as u64 <= self.capacity);
        #[cfg(braid_loom)]
        {
            shadow::write(&self.hdr().shadow, start, first);
            shadow::write(&self.hdr().shadow, 0, src.len() - first);
        }
        // SAFETY: `start + first <= capacity` and `src.len() - first <= start <= capacity`,
        // so both destinations lie in the data area; the caller guarantees the consumer is
        // not reading these slots; `src` is local memory, so no overlap.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), self.data.as_ptr().add(start), first);
            if first < src.len() {
                ptr::copy_nonoverlapping(
                    src.as_ptr().add(first),
                    self.data.as_ptr(),
                    src.len() - first,
                );
            }
        }
    }

    /// Copies `dst.len()` bytes from position `pos` out of the data area.
    ///
    /// # Safety
    ///
    /// `dst.len()` bytes from `pos` must be published and not yet released to the producer.
    unsafe fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let start = self.index(pos);
        let first = dst.len().min(self.capacity as usize - start);
        debug_assert!(dst.len() as u64 <= self.capacity);
        #[cfg(braid_loom)]
        {
            shadow::read(&self.hdr().shadow, start, first);
            shadow::read(&self.hdr().shadow, 0, dst.len() - first);
        }
        let rest = dst.len() - first;
        // SAFETY: as in `copy_in`, both sources lie inside the data area, which the producer
        // does not write while they are published and unreleased; `dst` is local memory.
        unsafe {
            ptr::copy_nonoverlapping(self.data.as_ptr().add(start), dst.as_mut_ptr(), first);
            if rest > 0 {
                ptr::copy_nonoverlapping(self.data.as_ptr(), dst.as_mut_ptr().add(first), rest);
            }
        }
    }
}

impl fmt::Debug for RawRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawRing")
            .field("segment", &self.seg.path())
            .field("offset", &self.offset)
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// The writing end of a ring. One per ring, across all processes.
#[derive(Debug)]
pub struct RingProducer {
    raw: RawRing,
    /// Our copy of the shared `tail`: we are its only writer, so the two are equal.
    tail: u64,
    /// A value of the shared `head` seen earlier. `head` only grows, so at least
    /// `capacity - (tail - cached_head)` bytes are free; reloaded only when that is too few.
    cached_head: u64,
}

// SAFETY: the producer is the unique writer of `tail` and of the free slots; moving it to
// another thread moves that role along. The pointers stay valid because `raw.seg` (an Arc)
// moves with them.
unsafe impl Send for RingProducer {}

/// Attaches the producer end of the ring at `offset`.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidData`] if `offset` is misaligned or the header is not a formatted
/// ring (bad magic, capacity not a power of two, ring beyond the segment, inconsistent
/// indices). The message names the segment and offset.
///
/// # Safety
///
/// There is at most one producer of this ring at a time, in all processes; the ring was
/// made by [`format_ring`], and its consumer follows this module's protocol.
pub unsafe fn attach_producer(seg: Arc<Segment>, offset: usize) -> io::Result<RingProducer> {
    // SAFETY: forwarded from the caller.
    let raw = unsafe { RawRing::attach(seg, offset)? };
    let tail = raw.hdr().tail.load(Ordering::Relaxed);
    let cached_head = raw.hdr().head.load(Ordering::Acquire);
    Ok(RingProducer {
        raw,
        tail,
        cached_head,
    })
}

/// Attaches the consumer end of the ring at `offset`.
///
/// # Errors
///
/// As for [`attach_producer`].
///
/// # Safety
///
/// There is at most one consumer of this ring at a time, in all processes; the ring was
/// made by [`format_ring`], and its producer follows this module's protocol.
pub unsafe fn attach_consumer(seg: Arc<Segment>, offset: usize) -> io::Result<RingConsumer> {
    // SAFETY: forwarded from the caller.
    let raw = unsafe { RawRing::attach(seg, offset)? };
    let head = raw.hdr().head.load(Ordering::Relaxed);
    let cached_tail = raw.hdr().tail.load(Ordering::Acquire);
    Ok(RingConsumer {
        raw,
        head,
        cached_tail,
    })
}

impl RingProducer {
    /// Formats a ring at `offset` ([`format_ring`]) and attaches its producer.
    ///
    /// # Panics
    ///
    /// As [`format_ring`].
    ///
    /// # Safety
    ///
    /// As [`format_ring`] and [`attach_producer`].
    pub unsafe fn init(seg: Arc<Segment>, offset: usize, capacity: usize) -> Self {
        // SAFETY: forwarded from the caller.
        unsafe { format_ring(&seg, offset, capacity) };
        // `format_ring` asserted alignment and bounds, so `RawRing::attach`'s checks would
        // pass; build the handle directly instead of unwrapping a `Result`.
        // SAFETY: `offset + ring_footprint(capacity) <= seg.len()` (asserted by format_ring).
        let hdr = unsafe { NonNull::new_unchecked(seg.as_ptr().add(offset)).cast::<RingHeader>() };
        // SAFETY: likewise, the data area is inside the mapping.
        let data = unsafe { hdr.cast::<u8>().add(RING_HEADER_LEN) };
        let raw = RawRing {
            seg,
            hdr,
            data,
            capacity: capacity as u64,
            offset,
        };
        Self {
            raw,
            tail: 0,
            cached_head: 0,
        }
    }

    /// Data capacity of the ring in bytes.
    pub fn capacity(&self) -> usize {
        // Checked at attach to fit in usize.
        self.raw.capacity as usize
    }

    /// Bytes that can be written now (`Acquire` load of the consumer's `head`).
    pub fn free(&self) -> usize {
        let head = self.raw.hdr().head.load(Ordering::Acquire);
        self.free_given(head)
    }

    /// Free bytes if the consumer's head is `head`; 0 if `head` is inconsistent.
    fn free_given(&self, head: u64) -> usize {
        let used = self.tail.wrapping_sub(head);
        // A used count above capacity means a corrupt head: report full rather than
        // overwrite unread data. `capacity - used <= capacity` fits in usize.
        self.raw
            .capacity
            .checked_sub(used)
            .map_or(0, |f| f as usize)
    }

    /// Free bytes, reloading `head` only if the cached value says fewer than `want`.
    fn free_for(&mut self, want: usize) -> usize {
        let free = self.free_given(self.cached_head);
        if free >= want {
            return free;
        }
        let head = self.raw.hdr().head.load(Ordering::Acquire);
        if self.tail.wrapping_sub(head) <= self.raw.capacity {
            self.cached_head = head;
        }
        self.free_given(head)
    }

    /// Whether the consumer has read everything written so far (reloads `head` only when
    /// the cached copy says it has not).
    pub fn is_drained(&mut self) -> bool {
        if self.cached_head == self.tail {
            return true;
        }
        let head = self.raw.hdr().head.load(Ordering::Acquire);
        if self.tail.wrapping_sub(head) <= self.raw.capacity {
            self.cached_head = head;
        }
        self.cached_head == self.tail
    }

    /// Copies as much of `src` as fits (possibly nothing) and publishes it with `Release`.
    /// Never blocks. Returns the number of bytes written, a prefix of `src`.
    ///
    /// Ring the consumer's [`crate::Doorbell`] afterwards if it may be asleep.
    pub fn write(&mut self, src: &[u8]) -> usize {
        self.write_vectored(&[src])
    }

    /// Copies as much of the concatenation of `srcs` as fits and publishes it; a long part
    /// is copied and published in pieces of 64 KiB, so the consumer copies one piece out
    /// while this side copies the next in. Returns the number of bytes written (a prefix of
    /// the concatenation).
    pub fn write_vectored(&mut self, srcs: &[&[u8]]) -> usize {
        let want = srcs.iter().fold(0usize, |n, s| n.saturating_add(s.len()));
        let free = self.free_for(want);
        let start = self.tail;
        let mut written = 0;
        for src in srcs {
            let n = src.len().min(free - written);
            for piece in src[..n].chunks(PIECE) {
                // SAFETY: `written + piece.len() <= free`: those bytes after `start` (the
                // `tail` this call found) are not published and (per `head`, loaded with
                // Acquire) no longer read by the consumer.
                unsafe { self.raw.copy_in(start.wrapping_add(written as u64), piece) };
                written += piece.len();
                if piece.len() == PIECE {
                    self.publish(start, written);
                }
            }
            if n < src.len() {
                break;
            }
        }
        self.publish(start, written);
        self.prefetch_next(written.min(free - written));
        written
    }

    /// Asks for the lines of the next `len` free bytes (capped at [`PREFETCH_MAX`]) in
    /// exclusive state: the consumer read them a lap ago, and fetching them now overlaps
    /// those transfers with the gap until the next write, which is likely as long as the
    /// last one.
    fn prefetch_next(&self, len: usize) {
        let start = self.raw.index(self.tail);
        // Not past the end of the data area: the rest of a wrapping write fetches itself.
        let end = (start + len.min(PREFETCH_MAX)).min(self.raw.capacity as usize);
        let data = self.raw.data.as_ptr();
        for at in (start..end).step_by(64) {
            prefetch_write(data.wrapping_add(at));
        }
    }

    /// Writes all of `src`, or nothing if it does not fit, handing it back.
    ///
    /// # Errors
    ///
    /// `Err(src)` when fewer than `src.len()` bytes are free; nothing was written.
    pub fn try_write<'a>(&mut self, src: &'a [u8]) -> Result<(), &'a [u8]> {
        self.try_write_vectored(&[src]).map_err(|_| src)
    }

    /// Writes the whole concatenation of `srcs` (e.g. a frame header and its payload), or
    /// nothing.
    ///
    /// # Errors
    ///
    /// `Err(srcs)` when fewer bytes than their total length are free; nothing was written.
    pub fn try_write_vectored<'a, 'b>(
        &mut self,
        srcs: &'a [&'b [u8]],
    ) -> Result<(), &'a [&'b [u8]]> {
        let want = srcs.iter().fold(0usize, |n, s| n.saturating_add(s.len()));
        if self.free_for(want) < want {
            return Err(srcs);
        }
        let written = self.write_vectored(srcs);
        debug_assert_eq!(written, want);
        Ok(())
    }

    /// Publishes `tail` at `n` bytes after `start`, unless it is there already.
    fn publish(&mut self, start: u64, n: usize) {
        let tail = start.wrapping_add(n as u64);
        if tail == self.tail {
            return;
        }
        self.tail = tail;
        self.raw.hdr().tail.store(tail, Ordering::Release);
    }
}

/// The reading end of a ring. One per ring, across all processes.
#[derive(Debug)]
pub struct RingConsumer {
    raw: RawRing,
    /// Our copy of the shared `head`: we are its only writer, so the two are equal.
    head: u64,
    /// A value of the shared `tail` seen earlier. `tail` only grows, so at least
    /// `cached_tail - head` bytes are readable; reloaded only when that is too few.
    cached_tail: u64,
}

// SAFETY: the consumer is the unique writer of `head` and reader of the published slots;
// moving it moves that role. `raw.seg` (an Arc) keeps the pointers valid.
unsafe impl Send for RingConsumer {}

impl RingConsumer {
    /// Data capacity of the ring in bytes.
    pub fn capacity(&self) -> usize {
        // Checked at attach to fit in usize.
        self.raw.capacity as usize
    }

    /// Bytes readable now (`Acquire` load of the producer's `tail`).
    pub fn available(&self) -> usize {
        let tail = self.raw.hdr().tail.load(Ordering::Acquire);
        self.available_given(tail)
    }

    /// Readable bytes if the producer's tail is `tail`, clamped to the capacity (a larger
    /// distance means a corrupt tail; clamping keeps every access inside the ring).
    fn available_given(&self, tail: u64) -> usize {
        // `<= capacity`, which fits in usize.
        tail.wrapping_sub(self.head).min(self.raw.capacity) as usize
    }

    /// Readable bytes, reloading `tail` (`Acquire`) only if the value seen last says fewer
    /// than `want`: a reader that keeps up with a busy producer then leaves the `tail` line
    /// with the producer, instead of taking it back for every frame.
    pub fn available_for(&mut self, want: usize) -> usize {
        let avail = self.available_given(self.cached_tail);
        if avail >= want {
            return avail;
        }
        self.cached_tail = self.raw.hdr().tail.load(Ordering::Acquire);
        self.available_given(self.cached_tail)
    }

    /// Copies up to `dst.len()` available bytes into `dst` (possibly none), then releases
    /// them to the producer (`Release` store of `head`). Never blocks. Returns the count.
    ///
    /// A long read copies and releases in pieces of at most 64 KiB, so the producer refills
    /// the ring behind it while the rest is copied.
    pub fn read(&mut self, dst: &mut [u8]) -> usize {
        let n = self.available_for(dst.len()).min(dst.len());
        for piece in dst[..n].chunks_mut(PIECE) {
            // SAFETY: the `n` bytes from the `head` this call started from are published
            // (tail loaded with Acquire) and not yet released; `release` advances `head`
            // past each piece once it is copied.
            unsafe { self.raw.copy_out(self.head, piece) };
            self.release(piece.len());
        }
        n
    }

    /// Copies up to `dst.len()` available bytes into `dst` without consuming them (e.g. to
    /// look at a frame header). Returns the count.
    pub fn peek(&mut self, dst: &mut [u8]) -> usize {
        let n = self.available_for(dst.len()).min(dst.len());
        // SAFETY: `n` bytes from `head` are published (tail loaded with Acquire) and not yet
        // released.
        unsafe { self.raw.copy_out(self.head, &mut dst[..n]) };
        n
    }

    /// Discards up to `n` available bytes (e.g. after [`peek`](Self::peek)); returns how
    /// many were discarded.
    pub fn consume(&mut self, n: usize) -> usize {
        let n = self.available_for(n).min(n);
        self.release(n);
        n
    }

    /// Advances and publishes `head` by `n` bytes.
    fn release(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        #[cfg(braid_loom)]
        {
            // The consumed bytes were read (by `peek`, or not at all by `consume`): mark
            // them as read here too so a skipped byte still orders against the producer.
            let start = self.raw.index(self.head);
            let first = n.min(self.raw.capacity as usize - start);
            shadow::read(&self.raw.hdr().shadow, start, first);
            shadow::read(&self.raw.hdr().shadow, 0, n - first);
        }
        self.head = self.head.wrapping_add(n as u64);
        self.raw.hdr().head.store(self.head, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// xorshift64*: deterministic sizes without a `rand` dependency.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
        }
    }

    /// Byte `i` of the test stream.
    fn byte(i: u64) -> u8 {
        (i.wrapping_mul(31) ^ (i >> 8)) as u8
    }

    fn pair(capacity: usize, offset: usize) -> (RingProducer, RingConsumer) {
        let seg = Arc::new(Segment::anonymous(offset + ring_footprint(capacity)).unwrap());
        // SAFETY: fresh segment; one producer and one consumer are attached below.
        unsafe {
            let p = RingProducer::init(seg.clone(), offset, capacity);
            (p, attach_consumer(seg, offset).unwrap())
        }
    }

    #[test]
    fn drained_only_once_the_consumer_read_everything() {
        let (mut p, mut c) = pair(64, 0);
        assert!(p.is_drained());
        assert_eq!(p.write(&[1, 2, 3]), 3);
        assert!(!p.is_drained());
        let mut buf = [0u8; 2];
        assert_eq!(c.read(&mut buf), 2);
        assert!(!p.is_drained());
        assert_eq!(c.read(&mut buf), 1);
        assert!(p.is_drained());
    }

    #[test]
    fn footprint_is_aligned() {
        assert_eq!(RING_HEADER_LEN % RING_ALIGN, 0);
        assert_eq!(RING_HEADER_LEN, 384);
        for cap in [1, 2, 4, 64, 100, 128, 129, 4096, 1 << 20] {
            let f = ring_footprint(cap);
            assert_eq!(f % RING_ALIGN, 0, "{cap}");
            assert!(f >= RING_HEADER_LEN + cap);
            assert!(f < RING_HEADER_LEN + cap + RING_ALIGN);
        }
        assert_eq!(ring_footprint(MAX_RING_CAPACITY + 1), usize::MAX);
    }

    #[test]
    fn wraparound_single_thread_random_sizes() {
        let (mut p, mut c) = pair(64, 128);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut wpos, mut rpos) = (0u64, 0u64);
        let mut buf = [0u8; 100];
        for round in 0..20_000 {
            let n = rng.below(100);
            let src: Vec<u8> = (0..n as u64).map(|i| byte(wpos + i)).collect();
            let w = if round % 3 == 0 {
                let k = rng.below(n + 1);
                p.write_vectored(&[&src[..k], &[], &src[k..]])
            } else {
                p.write(&src)
            };
            assert_eq!(w, n.min(64 - (wpos - rpos) as usize));
            assert_eq!(p.free(), 64 - (wpos + w as u64 - rpos) as usize);
            wpos += w as u64;
            assert_eq!(c.available(), (wpos - rpos) as usize);
            let m = rng.below(100);
            let r = c.read(&mut buf[..m]);
            assert_eq!(r, m.min((wpos - rpos) as usize));
            for (i, b) in buf[..r].iter().enumerate() {
                assert_eq!(*b, byte(rpos + i as u64), "round {round}");
            }
            rpos += r as u64;
        }
        assert!(wpos > 100_000, "{wpos}");
    }

    #[test]
    fn try_write_peek_consume() {
        let (mut p, mut c) = pair(16, 0);
        assert_eq!(p.capacity(), 16);
        assert_eq!(c.capacity(), 16);
        p.try_write(&[1; 10]).unwrap();
        assert_eq!(p.try_write(&[2; 7]), Err(&[2u8; 7][..]));
        assert_eq!(
            p.try_write_vectored(&[&[3; 3], &[4; 4]]).unwrap_err().len(),
            2
        );
        p.try_write_vectored(&[&[3; 3], &[4; 3]]).unwrap();
        assert_eq!(p.free(), 0);
        assert_eq!(p.write(&[9]), 0);
        let mut hdr = [0u8; 4];
        assert_eq!(c.peek(&mut hdr), 4);
        assert_eq!(c.available(), 16);
        assert_eq!(c.consume(10), 10);
        let mut rest = [0u8; 32];
        assert_eq!(c.read(&mut rest), 6);
        assert_eq!(rest[..6], [3, 3, 3, 4, 4, 4]);
        assert_eq!(c.consume(1), 0);
        assert!(p.try_write(&[0; 16]).is_ok());
    }

    #[test]
    fn two_threads_stream_with_deadline() {
        const TOTAL: u64 = 4 << 20;
        let (mut p, mut c) = pair(256, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        let producer = std::thread::spawn(move || {
            let mut rng = Rng(7);
            let mut pos = 0u64;
            let mut chunk = vec![0u8; 700];
            while pos < TOTAL {
                let n = rng.below(chunk.len()).min((TOTAL - pos) as usize);
                for (i, b) in chunk[..n].iter_mut().enumerate() {
                    *b = byte(pos + i as u64);
                }
                let mut done = 0;
                while done < n {
                    done += p.write(&chunk[done..n]);
                    assert!(Instant::now() < deadline, "producer stuck at {pos}");
                }
                pos += n as u64;
            }
        });
        let mut rng = Rng(11);
        consume_checked(&mut c, TOTAL, 500, || 1 + rng.below(499), deadline);
        producer.join().unwrap();
        assert_eq!(c.available(), 0);
    }

    /// Writes and reads much longer than a piece: the producer's calls publish several
    /// pieces each and the consumer's calls release several, while both run at once.
    #[test]
    fn long_transfers_cross_in_pieces() {
        const TOTAL: u64 = 24 << 20;
        let (mut p, mut c) = pair(4 * PIECE, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        let producer = std::thread::spawn(move || {
            let mut pos = 0u64;
            let mut chunk = vec![0u8; 3 * PIECE + 777];
            while pos < TOTAL {
                let n = chunk.len().min((TOTAL - pos) as usize);
                for (i, b) in chunk[..n].iter_mut().enumerate() {
                    *b = byte(pos + i as u64);
                }
                let mut done = 0;
                while done < n {
                    done += p.write_vectored(&[
                        &chunk[done..n.min(done + 5)],
                        &chunk[n.min(done + 5)..n],
                    ]);
                    assert!(Instant::now() < deadline, "producer stuck at {pos}");
                }
                pos += n as u64;
            }
        });
        consume_checked(&mut c, TOTAL, 5 * PIECE / 2, || 5 * PIECE / 2, deadline);
        producer.join().unwrap();
        assert_eq!(c.available(), 0);
    }

    /// Reads `total` bytes from `c`, at most `len()` (up to `cap`) per call, checking each
    /// against [`byte`]; fails once `deadline` passes.
    fn consume_checked(
        c: &mut RingConsumer,
        total: u64,
        cap: usize,
        mut len: impl FnMut() -> usize,
        deadline: Instant,
    ) {
        let mut pos = 0u64;
        let mut buf = vec![0u8; cap];
        while pos < total {
            let r = c.read(&mut buf[..len().min(cap)]);
            if r == 0 {
                std::thread::yield_now();
            }
            for (i, b) in buf[..r].iter().enumerate() {
                assert_eq!(*b, byte(pos + i as u64), "at {}", pos + i as u64);
            }
            pos += r as u64;
            assert!(Instant::now() < deadline, "consumer stuck at {pos}");
        }
    }

    /// Writes a header word at `off` in a formatted ring's segment.
    fn poke(seg: &Segment, off: usize, v: u64) {
        // SAFETY: tests pass in-bounds, 8-aligned header offsets; no concurrent users.
        unsafe { seg.as_ptr().add(off).cast::<u64>().write(v) };
    }

    #[test]
    fn corrupt_headers_are_rejected() {
        let seg = Arc::new(Segment::anonymous(ring_footprint(64) + 128).unwrap());
        let attach = |off: usize| {
            // SAFETY: single-threaded test; the attached handles are dropped at once.
            unsafe { attach_consumer(seg.clone(), off).map(drop) }
        };
        let expect_invalid = |r: io::Result<()>, what: &str| {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}");
            assert!(e.to_string().contains("ring at offset"), "{e}");
        };
        expect_invalid(attach(0), "unformatted");
        expect_invalid(attach(64), "misaligned");
        expect_invalid(attach(seg.len()), "beyond");
        expect_invalid(attach(usize::MAX - 127), "overflow");
        let reformat = || {
            // SAFETY: no handle is attached between tests.
            unsafe { format_ring(&seg, 0, 64) }
        };
        reformat();
        attach(0).unwrap();
        // SAFETY: as above.
        unsafe { attach_producer(seg.clone(), 0).unwrap() };
        poke(&seg, 0, RING_MAGIC ^ 1);
        expect_invalid(attach(0), "magic");
        reformat();
        poke(&seg, 8, 48);
        expect_invalid(attach(0), "capacity not a power of two");
        poke(&seg, 8, 1 << 20);
        expect_invalid(attach(0), "capacity beyond the segment");
        reformat();
        poke(&seg, 128, 65); // tail 65 past head 0
        expect_invalid(attach(0), "indices");
        reformat();
        poke(&seg, 256, 1); // head past tail
        expect_invalid(attach(0), "head past tail");
    }

    #[test]
    fn corrupt_indices_at_run_time_stay_in_bounds() {
        let seg = Arc::new(Segment::anonymous(ring_footprint(16)).unwrap());
        // SAFETY: fresh segment; one producer, one consumer.
        let (mut p, mut c) = unsafe {
            (
                RingProducer::init(seg.clone(), 0, 16),
                attach_consumer(seg.clone(), 0).unwrap(),
            )
        };
        assert_eq!(p.write(&[1; 32]), 16); // full as far as the producer knows
        poke(&seg, 256, 5_000_000); // head far past our tail
        assert_eq!(p.free(), 0);
        assert_eq!(p.write(&[1; 8]), 0);
        poke(&seg, 128, 1_000_000); // tail far ahead of the consumer's head
        assert_eq!(c.available(), 16);
        let mut b = [0u8; 64];
        assert_eq!(c.read(&mut b), 16);
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn format_rejects_bad_capacity() {
        let seg = Segment::anonymous(4096).unwrap();
        // SAFETY: fresh segment; panics before touching it.
        unsafe { format_ring(&seg, 0, 100) };
    }

    #[test]
    #[should_panic(expected = "overflows")]
    fn format_rejects_overflow() {
        let seg = Segment::anonymous(4096).unwrap();
        // SAFETY: fresh segment; panics before touching it.
        unsafe { format_ring(&seg, 0, 4096) };
    }
}
