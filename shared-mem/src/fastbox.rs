//! A **fast box**: a single-producer single-consumer queue of small records in fixed
//! 512-byte slots, each slot stamped with the record's sequence number in the same cache
//! line as its first bytes.
//!
//! A byte ring ([`crate::RingConsumer`]) tells the reader that bytes arrived through its
//! `tail` word, on a line of its own: a receiver then takes two cache misses in a row, one
//! for `tail` and one for the data. A receiver polling a fast box spins on the slot itself,
//! so the miss that shows the stamp also brings the record. That is the whole point: for a
//! small message between two cores, the line transfer *is* the latency. A record longer
//! than the first line's 56 bytes continues on the slot's next lines, which the reader's copy
//! fetches together once the stamp has shown. On two cores of a Xeon under KVM a 256-byte
//! message takes 0.61 µs one way so, against about 0.75 µs through the ring; the larger slots
//! cost 8-byte messages nothing measurable against 128-byte ones.
//!
//! # Layout
//!
//! At a 128-byte aligned `offset`, [`FASTBOX_FOOTPRINT`] bytes:
//!
//! | bytes (from `offset`) | field | written by |
//! | --- | --- | --- |
//! | 0..8 | magic [`FASTBOX_MAGIC`] | `format_fastbox` |
//! | 128..136 | `freed`: records consumed | consumer |
//! | 256.. | [`FASTBOX_SLOTS`] slots of 512 bytes | producer |
//!
//! A slot is an 8-byte stamp followed by up to [`FASTBOX_RECORD`] record bytes. The `n`-th
//! record (from 0) goes to slot `n % FASTBOX_SLOTS` with stamp `(n + 1) << 16 | len`.
//!
//! # Synchronization
//!
//! - The producer copies the record into the slot, then stores the stamp with `Release`;
//!   the consumer loads the stamp with `Acquire` and accepts the slot only if it names the
//!   record it expects next. A stamp from an earlier lap names an earlier record, and a
//!   fresh (zeroed) slot names none, so stale bytes are never taken for new ones; payload
//!   bytes never occupy the stamp word, so user data cannot forge a stamp.
//! - The consumer copies the record out, then stores `freed` with `Release`; the producer
//!   loads `freed` with `Acquire` (only when its cached copy says all slots are in use)
//!   before reusing a slot. So a slot is never overwritten while it is read.
//!
//! # Trust
//!
//! As for rings: the peer is a process of the same job. A corrupt stamp length is clamped
//! to the slot, and a corrupt `freed` reads as "full"; neither makes this side touch memory
//! outside the box.

use std::fmt;
use std::io;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use crate::cache_padded::CachePadded;
use crate::primitive::sync::{AtomicU64, Ordering};
use crate::primitive::{prefetch, prefetch_write};
use crate::segment::Segment;

/// Format and version word of a fast box header: ASCII `BRDFBOX1`, little-endian.
pub const FASTBOX_MAGIC: u64 = u64::from_le_bytes(*b"BRDFBOX1");

/// Slots per box (a power of two). Loom models a tiny box so it can wrap.
#[cfg(not(braid_loom))]
pub const FASTBOX_SLOTS: usize = 32;
/// Slots per box (a power of two). Loom models a tiny box so it can wrap.
#[cfg(braid_loom)]
pub const FASTBOX_SLOTS: usize = 2;

/// Bytes per slot: eight cache lines, the stamp in the first.
const SLOT_LEN: usize = 512;
/// Bytes before a slot's record: the stamp.
const STAMP_LEN: usize = 8;
/// Largest record a slot holds.
pub const FASTBOX_RECORD: usize = SLOT_LEN - STAMP_LEN;
/// Bytes of header before the first slot: 256 (the header rounded up to 128 bytes).
const HEADER_LEN: usize = size_of::<BoxHeader>().next_multiple_of(128);
/// Bytes a box occupies in a segment; a multiple of 128.
pub const FASTBOX_FOOTPRINT: usize = HEADER_LEN + FASTBOX_SLOTS * SLOT_LEN;

/// The shared header. `repr(C)`: both processes must agree on the layout.
#[repr(C)]
struct BoxHeader {
    /// [`FASTBOX_MAGIC`] once [`format_fastbox`] has finished (stored last, `Release`).
    magic: AtomicU64,
    /// Records consumed so far. Written only by the consumer, with `Release`.
    freed: CachePadded<AtomicU64>,
    /// Loom only: one tracked cell per slot's record bytes (raw copies are invisible to it).
    #[cfg(braid_loom)]
    shadow: [loom::cell::UnsafeCell<()>; FASTBOX_SLOTS],
}

/// One slot. `repr(C)`: the stamp is the first word of the slot's first cache line.
#[repr(C, align(128))]
struct Slot {
    /// `(n + 1) << 16 | len` once record `n` is in the slot. Written only by the producer,
    /// with `Release`, after the record bytes.
    stamp: AtomicU64,
    /// The record; plain bytes, accessed only through raw pointers.
    bytes: [u8; FASTBOX_RECORD],
}

const _: () = assert!(size_of::<Slot>() == SLOT_LEN);

/// The stamp of record `n` of `len` bytes.
fn stamp(n: u64, len: usize) -> u64 {
    (n.wrapping_add(1) << 16) | len as u64
}

/// Writes a fresh, empty box at `offset` in `seg`: magic, `freed = 0`, all stamps zero.
///
/// # Panics
///
/// If `offset` is not a multiple of 128 or the box would not fit in `seg`.
///
/// # Safety
///
/// No producer or consumer (in any process) may be attached to a box at this place while it
/// is formatted, and the bytes `offset..offset + FASTBOX_FOOTPRINT` must not be used for
/// anything else.
pub unsafe fn format_fastbox(seg: &Segment, offset: usize) {
    assert!(
        offset.is_multiple_of(128),
        "fast box offset {offset} not 128-aligned"
    );
    assert!(
        offset
            .checked_add(FASTBOX_FOOTPRINT)
            .is_some_and(|end| end <= seg.len()),
        "fast box at {offset} overflows a segment of {} bytes",
        seg.len()
    );
    // SAFETY: the box lies inside the mapping (checked above) and is 128-aligned (mapping
    // page-aligned); nobody else accesses it during formatting (the caller's promise).
    unsafe {
        let base = seg.as_ptr().add(offset);
        ptr::write_bytes(base, 0, FASTBOX_FOOTPRINT);
        ptr::write(
            base.cast::<BoxHeader>(),
            BoxHeader {
                magic: AtomicU64::new(0),
                freed: CachePadded::new(AtomicU64::new(0)),
                #[cfg(braid_loom)]
                shadow: std::array::from_fn(|_| loom::cell::UnsafeCell::new(())),
            },
        );
        for i in 0..FASTBOX_SLOTS {
            // Loom's atomics are objects, not bytes: build each stamp.
            ptr::write(
                base.add(HEADER_LEN + i * SLOT_LEN).cast::<AtomicU64>(),
                AtomicU64::new(0),
            );
        }
        (*base.cast::<BoxHeader>())
            .magic
            .store(FASTBOX_MAGIC, Ordering::Release);
    }
}

/// What both ends share: where the box is and what keeps it mapped.
struct RawBox {
    /// Keeps the mapping alive while `hdr` points into it.
    seg: Arc<Segment>,
    /// The header, followed by the slots; valid for [`FASTBOX_FOOTPRINT`] bytes while
    /// `seg` lives.
    hdr: NonNull<BoxHeader>,
}

impl RawBox {
    /// Checks the box at `offset` and builds the handle.
    ///
    /// # Safety
    ///
    /// If the bytes at `offset` carry the magic, they must be a box formatted by
    /// [`format_fastbox`] whose other user follows this module's protocol.
    unsafe fn attach(seg: Arc<Segment>, offset: usize) -> io::Result<Self> {
        let corrupt = |what: &str| {
            let at = seg.path().map_or_else(
                || "an anonymous segment".into(),
                |p| p.display().to_string(),
            );
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("fast box at offset {offset} of {at}: {what}"),
            )
        };
        if !offset.is_multiple_of(128)
            || offset
                .checked_add(FASTBOX_FOOTPRINT)
                .is_none_or(|end| end > seg.len())
        {
            return Err(corrupt("misaligned or beyond the segment"));
        }
        // SAFETY: inside the mapping and aligned (checked above); the header words are
        // atomics, so a shared reference is sound while the other process writes them.
        let hdr = unsafe { NonNull::new_unchecked(seg.as_ptr().add(offset)).cast::<BoxHeader>() };
        // SAFETY: as just argued.
        if unsafe { hdr.as_ref() }.magic.load(Ordering::Acquire) != FASTBOX_MAGIC {
            return Err(corrupt("bad magic"));
        }
        Ok(Self { seg, hdr })
    }

    fn hdr(&self) -> &BoxHeader {
        // SAFETY: `hdr` points into the mapping kept alive by `self.seg`; atomics only.
        unsafe { self.hdr.as_ref() }
    }

    /// The slot of record `n`.
    fn slot(&self, n: u64) -> NonNull<Slot> {
        // The mask keeps the index below FASTBOX_SLOTS.
        let i = (n as usize) & (FASTBOX_SLOTS - 1);
        // SAFETY: slot `i` lies within FASTBOX_FOOTPRINT bytes of the header (checked at
        // attach), so the pointer stays inside the mapping.
        unsafe {
            NonNull::new_unchecked(
                self.hdr
                    .as_ptr()
                    .cast::<u8>()
                    .add(HEADER_LEN + i * SLOT_LEN),
            )
            .cast::<Slot>()
        }
    }

    fn stamp_of(&self, n: u64) -> &AtomicU64 {
        // SAFETY: the slot is inside the live mapping and aligned; its stamp is an atomic.
        unsafe { &(*self.slot(n).as_ptr()).stamp }
    }

    /// Pointer to the record bytes of record `n`'s slot.
    fn bytes_of(&self, n: u64) -> *mut u8 {
        // SAFETY: inside the live mapping; no reference to the bytes is created here.
        unsafe { ptr::addr_of_mut!((*self.slot(n).as_ptr()).bytes).cast::<u8>() }
    }
}

impl fmt::Debug for RawBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawBox")
            .field("segment", &self.seg.path())
            .finish_non_exhaustive()
    }
}

/// The writing end of a fast box. One per box, across all processes.
#[derive(Debug)]
pub struct FastboxProducer {
    raw: RawBox,
    /// Records written so far.
    next: u64,
    /// A value of the shared `freed` seen earlier; reloaded only when all slots look used.
    cached_freed: u64,
}

// SAFETY: the producer is the unique writer of the stamps and free slots; moving it moves
// that role. `raw.seg` (an Arc) keeps the pointers valid.
unsafe impl Send for FastboxProducer {}

/// The reading end of a fast box. One per box, across all processes.
#[derive(Debug)]
pub struct FastboxConsumer {
    raw: RawBox,
    /// Records consumed so far (the shared `freed`, of which we are the only writer).
    next: u64,
}

// SAFETY: the consumer is the unique writer of `freed` and reader of published slots.
unsafe impl Send for FastboxConsumer {}

/// Attaches the producer end of the box at `offset`.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidData`] naming the segment and offset if the box is misaligned,
/// beyond the segment or not formatted.
///
/// # Safety
///
/// At most one producer of this box at a time, in all processes; the box was made by
/// [`format_fastbox`] and its consumer follows this module's protocol.
pub unsafe fn attach_fastbox_producer(
    seg: Arc<Segment>,
    offset: usize,
) -> io::Result<FastboxProducer> {
    // SAFETY: forwarded from the caller.
    let raw = unsafe { RawBox::attach(seg, offset)? };
    let freed = raw.hdr().freed.load(Ordering::Acquire);
    Ok(FastboxProducer {
        raw,
        next: freed,
        cached_freed: freed,
    })
}

/// Attaches the consumer end of the box at `offset`.
///
/// # Errors
///
/// As [`attach_fastbox_producer`].
///
/// # Safety
///
/// At most one consumer of this box at a time, in all processes; the box was made by
/// [`format_fastbox`] and its producer follows this module's protocol.
pub unsafe fn attach_fastbox_consumer(
    seg: Arc<Segment>,
    offset: usize,
) -> io::Result<FastboxConsumer> {
    // SAFETY: forwarded from the caller.
    let raw = unsafe { RawBox::attach(seg, offset)? };
    let next = raw.hdr().freed.load(Ordering::Relaxed);
    Ok(FastboxConsumer { raw, next })
}

impl FastboxProducer {
    /// Writes the concatenation of `parts` as one record and publishes it, or returns false
    /// (writing nothing) when it is longer than [`FASTBOX_RECORD`] or every slot is in use.
    /// Never blocks; ring the consumer's [`crate::Doorbell`] afterwards.
    pub fn try_write(&mut self, parts: &[&[u8]]) -> bool {
        let len = parts.iter().fold(0usize, |n, p| n.saturating_add(p.len()));
        if len > FASTBOX_RECORD {
            return false;
        }
        if self.next.wrapping_sub(self.cached_freed) >= FASTBOX_SLOTS as u64 {
            let freed = self.raw.hdr().freed.load(Ordering::Acquire);
            // A `freed` ahead of what was written is corrupt: stay "full".
            if freed.wrapping_sub(self.cached_freed) <= self.next.wrapping_sub(self.cached_freed) {
                self.cached_freed = freed;
            }
            if self.next.wrapping_sub(self.cached_freed) >= FASTBOX_SLOTS as u64 {
                return false;
            }
        }
        let dst = self.raw.bytes_of(self.next);
        #[cfg(braid_loom)]
        self.raw.hdr().shadow[(self.next as usize) & (FASTBOX_SLOTS - 1)].with_mut(|_| ());
        let mut at = 0;
        for p in parts {
            // SAFETY: `at + p.len() <= len <= FASTBOX_RECORD`, inside the slot's bytes. The
            // slot is free: its previous record was released (`freed`, loaded with Acquire,
            // counts it), and the consumer reads a slot only once its stamp names the
            // record, which is stored below, after these bytes. `p` is local memory.
            unsafe { ptr::copy_nonoverlapping(p.as_ptr(), dst.add(at), p.len()) };
            at += p.len();
        }
        self.raw
            .stamp_of(self.next)
            .store(stamp(self.next, len), Ordering::Release);
        self.next = self.next.wrapping_add(1);
        // The next slot's lines were last read by the consumer, so writing them will need
        // them back: ask for them now (when that slot is known free), so the transfers
        // overlap the rest of this send instead of stalling the next one. As many lines as
        // this record took: the next one is likely as long.
        if self.next.wrapping_sub(self.cached_freed) < FASTBOX_SLOTS as u64 {
            let next = self.raw.slot(self.next).as_ptr().cast::<u8>();
            for line in 0..(STAMP_LEN + len).div_ceil(64) {
                // Inside the slot: STAMP_LEN + len <= SLOT_LEN.
                prefetch_write(next.wrapping_add(line * 64));
            }
        }
        true
    }
}

impl FastboxConsumer {
    /// Whether the next record is published (one `Acquire` load of its slot's stamp).
    pub fn ready(&self) -> bool {
        self.front_len().is_some()
    }

    fn front_len(&self) -> Option<usize> {
        let s = self.raw.stamp_of(self.next).load(Ordering::Acquire);
        // Low 16 bits: the length, clamped to the slot (a corrupt peer cannot widen it).
        (s >> 16 == self.next.wrapping_add(1) & (u64::MAX >> 16))
            .then(|| ((s & 0xffff) as usize).min(FASTBOX_RECORD))
    }

    /// The next record, if published. It stays valid (the producer does not reuse its slot)
    /// until [`pop`](Self::pop), which the borrow keeps from running meanwhile.
    pub fn front(&self) -> Option<&[u8]> {
        let len = self.front_len()?;
        #[cfg(braid_loom)]
        self.raw.hdr().shadow[(self.next as usize) & (FASTBOX_SLOTS - 1)].with(|_| ());
        // SAFETY: the stamp (loaded with Acquire) names this record, so its `len` bytes were
        // written before it and the producer does not touch the slot again until `freed`
        // passes it, which only `pop` (needing `&mut self`) does.
        Some(unsafe { std::slice::from_raw_parts(self.raw.bytes_of(self.next), len) })
    }

    /// Releases the front record to the producer (`Release` store of `freed`). Call only
    /// after [`front`](Self::front) returned it; does nothing if no record is published.
    pub fn pop(&mut self) {
        if self.front_len().is_none() {
            return;
        }
        self.next = self.next.wrapping_add(1);
        self.raw.hdr().freed.store(self.next, Ordering::Release);
        // In a burst the records after the new front are published already: start fetching
        // the one after it, so its line transfer overlaps the work on the front record.
        prefetch(self.raw.slot(self.next.wrapping_add(1)).as_ptr().cast());
    }
}

#[cfg(all(test, not(braid_loom)))]
mod tests {
    use super::*;

    fn pair() -> (FastboxProducer, FastboxConsumer) {
        let seg = Arc::new(Segment::anonymous(128 + FASTBOX_FOOTPRINT).unwrap());
        // SAFETY: fresh segment; one producer and one consumer are attached below.
        unsafe {
            format_fastbox(&seg, 128);
            (
                attach_fastbox_producer(Arc::clone(&seg), 128).unwrap(),
                attach_fastbox_consumer(seg, 128).unwrap(),
            )
        }
    }

    #[test]
    fn records_arrive_whole_in_order_and_the_box_fills() {
        let (mut p, mut c) = pair();
        assert!(c.front().is_none());
        for lap in 0..3u8 {
            for i in 0..FASTBOX_SLOTS as u8 {
                let len = usize::from(i) % (FASTBOX_RECORD + 1);
                let rec: Vec<u8> = (0..len).map(|k| k as u8 ^ i ^ lap).collect();
                assert!(
                    p.try_write(&[&rec[..len / 2], &rec[len / 2..]]),
                    "lap {lap} slot {i}"
                );
            }
            assert!(!p.try_write(&[b"full"]), "a full box took a record");
            for i in 0..FASTBOX_SLOTS as u8 {
                let len = usize::from(i) % (FASTBOX_RECORD + 1);
                let want: Vec<u8> = (0..len).map(|k| k as u8 ^ i ^ lap).collect();
                assert_eq!(c.front(), Some(&want[..]), "lap {lap} record {i}");
                c.pop();
            }
            assert!(c.front().is_none() && !c.ready());
        }
    }

    #[test]
    fn oversized_record_is_refused_and_nothing_is_written() {
        let (mut p, c) = pair();
        assert!(!p.try_write(&[&[7; FASTBOX_RECORD], &[1]]));
        assert!(c.front().is_none());
        assert!(p.try_write(&[&[7; FASTBOX_RECORD]]));
        assert_eq!(c.front().map(<[u8]>::len), Some(FASTBOX_RECORD));
    }

    #[test]
    fn a_stale_stamp_from_an_earlier_lap_is_not_a_record() {
        let (mut p, mut c) = pair();
        for _ in 0..FASTBOX_SLOTS {
            assert!(p.try_write(&[b"x"]));
            c.pop();
        }
        // Slot 0 still holds record 0's stamp; the consumer now expects record SLOTS there.
        assert!(c.front().is_none());
        assert!(p.try_write(&[b"new"]));
        assert_eq!(c.front(), Some(&b"new"[..]));
    }

    #[test]
    fn unformatted_memory_is_refused() {
        let seg = Arc::new(Segment::anonymous(FASTBOX_FOOTPRINT).unwrap());
        // SAFETY: nothing else uses the segment.
        let err = unsafe { attach_fastbox_consumer(seg, 0) }.unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
    }

    #[test]
    fn two_threads_stream_records() {
        let (mut p, mut c) = pair();
        const N: u32 = 200_000;
        let t = std::thread::spawn(move || {
            for i in 0..N {
                let len = (i % 100) as usize + 4;
                let mut rec = [0u8; FASTBOX_RECORD];
                rec[..4].copy_from_slice(&i.to_le_bytes());
                rec[4..len].fill(i as u8);
                while !p.try_write(&[&rec[..len]]) {
                    std::thread::yield_now();
                }
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut next = 0u32;
        while next < N {
            assert!(
                std::time::Instant::now() < deadline,
                "stalled at record {next}"
            );
            let Some(rec) = c.front() else {
                std::thread::yield_now();
                continue;
            };
            assert_eq!(rec.len(), (next % 100) as usize + 4);
            assert_eq!(rec[..4], next.to_le_bytes());
            assert!(
                rec[4..].iter().all(|&b| b == next as u8),
                "record {next} torn"
            );
            c.pop();
            next += 1;
        }
        t.join().unwrap();
    }
}
