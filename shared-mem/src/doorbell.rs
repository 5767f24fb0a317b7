//! [`Doorbell`]: one futex word that many producers ring and one consumer sleeps on.

use std::fmt;
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use crate::cache_padded::CachePadded;
use crate::primitive::sync::{AtomicU32, Ordering, compiler_fence, fence};
use crate::primitive::{asymmetric_fences, futex_wait, futex_wake, heavy_barrier};
use crate::segment::Segment;

/// Format and version word of a doorbell: ASCII `BELL`, little-endian.
pub const DOORBELL_MAGIC: u32 = u32::from_le_bytes(*b"BELL");

/// Bytes a doorbell occupies in a segment (one 128-byte line); its offset must be a
/// multiple of this too.
pub const DOORBELL_FOOTPRINT: usize = size_of::<CachePadded<DoorbellWords>>();

/// The shared words. `repr(C)`: both processes must agree on the layout.
#[repr(C)]
struct DoorbellWords {
    /// [`DOORBELL_MAGIC`] once [`format_doorbell`] finished (stored last, `Release`).
    magic: AtomicU32,
    /// Futex word: incremented (wrapping) by a producer that saw `sleeping != 0`, before
    /// its futex wake. Never decremented.
    seq: AtomicU32,
    /// 1 between the consumer's [`Doorbell::prepare_wait`] and the end of its
    /// [`Doorbell::wait`] (or [`Doorbell::cancel_wait`]), else 0. Written only by the
    /// consumer.
    sleeping: AtomicU32,
    /// 1 while the consumer issues a process barrier ([`heavy_barrier`]) each time it
    /// announces sleep, so producers registered for asymmetric fences may skip theirs (see
    /// [`Doorbell::ring`]). Set at format by the consumer if its process could register;
    /// cleared for good if a barrier ever fails. Written only by the consumer.
    asymmetric: AtomicU32,
}

/// Writes a fresh doorbell at `offset` in `seg`.
///
/// # Panics
///
/// If `offset` is not a multiple of [`DOORBELL_FOOTPRINT`] or the doorbell does not fit.
///
/// # Safety
///
/// Nobody (in any process) may use a doorbell at this place while it is formatted, and the
/// bytes `offset..offset + DOORBELL_FOOTPRINT` must not be used for anything else.
pub unsafe fn format_doorbell(seg: &Segment, offset: usize) {
    assert!(
        offset.is_multiple_of(DOORBELL_FOOTPRINT),
        "doorbell offset {offset} misaligned"
    );
    assert!(
        offset
            .checked_add(DOORBELL_FOOTPRINT)
            .is_some_and(|end| end <= seg.len()),
        "doorbell at {offset} overflows a segment of {} bytes",
        seg.len()
    );
    let words = DoorbellWords {
        magic: AtomicU32::new(0),
        seq: AtomicU32::new(0),
        sleeping: AtomicU32::new(0),
        asymmetric: AtomicU32::new(u32::from(asymmetric_fences())),
    };
    // SAFETY: in bounds and aligned (checked above; the mapping is page-aligned); the caller
    // guarantees exclusive use during formatting.
    unsafe {
        let p = seg
            .as_ptr()
            .add(offset)
            .cast::<CachePadded<DoorbellWords>>();
        debug_assert!(p.is_aligned());
        p.cast::<u8>().write_bytes(0, DOORBELL_FOOTPRINT);
        p.write(CachePadded::new(words));
        (&*p).magic.store(DOORBELL_MAGIC, Ordering::Release);
    }
}

/// A doorbell in a receiver's segment: several producers (one per local peer) [`ring`] it
/// after writing to their rings, and the receiver sleeps on it when all its rings are empty.
///
/// `Send + Sync`: every operation is atomic. Producer and consumer sides are the same type;
/// only the consumer calls [`prepare_wait`], [`wait`] and [`cancel_wait`], and only one
/// consumer uses a given doorbell.
///
/// # Examples
///
/// ```
/// # use std::{sync::Arc, time::Duration};
/// # use braid_shm::{Doorbell, Segment, format_doorbell};
/// let seg = Arc::new(Segment::anonymous(4096)?);
/// // SAFETY: fresh segment, nothing else at offset 0.
/// unsafe { format_doorbell(&seg, 0) };
/// // SAFETY: formatted just above.
/// let bell = unsafe { Doorbell::attach(seg, 0)? };
/// # let rings_have_data = || false;
/// // Consumer loop body, once every ring was found empty:
/// let seen = bell.prepare_wait();
/// if rings_have_data() {
///     bell.cancel_wait();
/// } else {
///     bell.wait(seen, Duration::from_millis(1));
/// }
/// // Producer, after `RingProducer::write`:
/// bell.ring();
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// [`ring`]: Self::ring
/// [`prepare_wait`]: Self::prepare_wait
/// [`wait`]: Self::wait
/// [`cancel_wait`]: Self::cancel_wait
pub struct Doorbell {
    /// Keeps the mapping alive while `words` points into it.
    seg: Arc<Segment>,
    /// The shared words; valid, formatted (checked at attach) while `seg` lives.
    words: NonNull<CachePadded<DoorbellWords>>,
    /// This process is a target of consumers' barriers ([`asymmetric_fences`]).
    light: bool,
}

// SAFETY: all access to `words` is through atomics, and `seg` (an Arc of a Send + Sync
// segment) keeps the pointer valid wherever the handle goes.
unsafe impl Send for Doorbell {}
// SAFETY: as above; every method takes `&self` and uses only atomics and futex calls.
unsafe impl Sync for Doorbell {}

impl Doorbell {
    /// Attaches to the doorbell at `offset`.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidData`] if `offset` is misaligned, out of bounds, or holds no
    /// formatted doorbell.
    ///
    /// # Safety
    ///
    /// If the bytes at `offset` hold a doorbell (right magic), it was made by
    /// [`format_doorbell`] and at most one consumer uses it.
    pub unsafe fn attach(seg: Arc<Segment>, offset: usize) -> io::Result<Self> {
        let fits = offset
            .checked_add(DOORBELL_FOOTPRINT)
            .is_some_and(|end| end <= seg.len());
        if !offset.is_multiple_of(DOORBELL_FOOTPRINT) || !fits {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "doorbell offset {offset} misaligned or beyond {} bytes",
                    seg.len()
                ),
            ));
        }
        // SAFETY: in bounds and aligned (checked above); non-null as part of a mapping.
        let words = unsafe {
            NonNull::new_unchecked(seg.as_ptr().add(offset)).cast::<CachePadded<DoorbellWords>>()
        };
        let bell = Self {
            seg,
            words,
            light: asymmetric_fences(),
        };
        let magic = bell.words().magic.load(Ordering::Acquire);
        if magic != DOORBELL_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("doorbell at offset {offset}: bad magic {magic:#010x}"),
            ));
        }
        Ok(bell)
    }

    fn words(&self) -> &DoorbellWords {
        // SAFETY: `words` points into the mapping kept alive by `self.seg`; atomics only.
        unsafe { self.words.as_ref() }
    }

    /// Producer side, after publishing data: wakes the consumer if it announced sleep.
    /// Cheap otherwise (a fence and a load).
    ///
    /// # Implementation notes
    ///
    /// The handshake is the one documented on [`crate::RingProducer::wake`], with "tail"
    /// standing for "any of the consumer's rings": publish, `fence(SeqCst)`, load
    /// `sleeping`, versus store `sleeping`, `fence(SeqCst)`, load `seq`, check the rings.
    ///
    /// The producer's fence costs more than the rest of a small send (it waits until the
    /// data's cache line has reached this core), and it matters only when the consumer
    /// goes to sleep, which is rare. So it is made *asymmetric* where the kernel allows
    /// (`membarrier`, as in liburcu and folly's `asymmetricHeavyBarrier`): the producer
    /// keeps only a compiler fence, and the consumer, after storing `sleeping`, makes every
    /// running thread of the registered processes execute a full fence. Either the
    /// producer's data store precedes that barrier (and the consumer's ring check sees
    /// it), or the producer's `sleeping` load follows it (and sees 1). A producer not
    /// registered, or a consumer that cannot issue the barrier, keeps the fence.
    pub fn ring(&self) {
        let w = self.words();
        if self.light && w.asymmetric.load(Ordering::Relaxed) != 0 {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
        if w.sleeping.load(Ordering::Relaxed) != 0 {
            w.seq.fetch_add(1, Ordering::Release);
            futex_wake(&w.seq, i32::MAX);
        }
    }

    /// Consumer side: announces that it is about to sleep and returns the doorbell value to
    /// pass to [`wait`](Self::wait). The caller must check its rings *after* this call and
    /// then call either `wait` or [`cancel_wait`](Self::cancel_wait).
    pub fn prepare_wait(&self) -> u32 {
        let w = self.words();
        w.sleeping.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if w.asymmetric.load(Ordering::Relaxed) != 0 && !heavy_barrier() {
            // Producers see this before their next ring; a wake-up they skip meanwhile is
            // bounded by the caller's timeout.
            w.asymmetric.store(0, Ordering::Relaxed);
            fence(Ordering::SeqCst);
        }
        w.seq.load(Ordering::Acquire)
    }

    /// Consumer side: blocks while the doorbell still reads `seen`, for at most about
    /// `timeout`, then clears the sleep announcement. Returns whether the doorbell rang
    /// since `seen` was read. May return early; callers re-check their rings.
    pub fn wait(&self, seen: u32, timeout: Duration) -> bool {
        let w = self.words();
        futex_wait(&w.seq, seen, timeout);
        w.sleeping.store(0, Ordering::Relaxed);
        w.seq.load(Ordering::Acquire) != seen
    }

    /// Consumer side: withdraws a [`prepare_wait`](Self::prepare_wait) without sleeping.
    pub fn cancel_wait(&self) {
        self.words().sleeping.store(0, Ordering::Relaxed);
    }

    /// Whether the consumer currently announces sleep (for statistics and tests).
    pub fn is_sleeping(&self) -> bool {
        self.words().sleeping.load(Ordering::Relaxed) != 0
    }
}

impl fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Doorbell")
            .field("segment", &self.seg.path())
            .field("words", &self.words)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::ring::{RingProducer, attach_consumer, ring_footprint};

    fn bell_at(seg: &Arc<Segment>, offset: usize) -> Doorbell {
        // SAFETY: the tests format each doorbell once before any attach.
        unsafe {
            format_doorbell(seg, offset);
            Doorbell::attach(seg.clone(), offset).unwrap()
        }
    }

    #[test]
    fn layout_and_attach_checks() {
        assert_eq!(DOORBELL_FOOTPRINT, 128);
        let seg = Arc::new(Segment::anonymous(4096).unwrap());
        // SAFETY: unformatted memory is rejected before use.
        let e = unsafe { Doorbell::attach(seg.clone(), 0) }.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // SAFETY: as above.
        assert!(unsafe { Doorbell::attach(seg.clone(), 64) }.is_err());
        // SAFETY: as above.
        assert!(unsafe { Doorbell::attach(seg.clone(), 4096) }.is_err());
        let bell = bell_at(&seg, 256);
        assert!(!bell.is_sleeping());
        let seen = bell.prepare_wait();
        assert!(bell.is_sleeping());
        bell.cancel_wait();
        assert!(!bell.is_sleeping());
        let t = Instant::now();
        assert!(!bell.wait(seen, Duration::from_millis(20)));
        assert!(t.elapsed() >= Duration::from_millis(15));
    }

    /// Three producers, one consumer sleeping on one doorbell; every message arrives before a
    /// deadline although the consumer sleeps with a long timeout.
    #[test]
    fn many_producers_one_sleeper() {
        const PEERS: usize = 3;
        const MSGS: u64 = 2_000;
        let cap = 256;
        let fp = ring_footprint(cap);
        let seg = Arc::new(Segment::anonymous(DOORBELL_FOOTPRINT + PEERS * fp).unwrap());
        let bell = Arc::new(bell_at(&seg, 0));
        let mut consumers = Vec::new();
        let mut producers = Vec::new();
        for i in 0..PEERS {
            let off = DOORBELL_FOOTPRINT + i * fp;
            // SAFETY: disjoint ring areas; one producer and one consumer each.
            unsafe {
                let p = RingProducer::init(seg.clone(), off, cap);
                consumers.push(attach_consumer(seg.clone(), off).unwrap());
                let bell = bell.clone();
                producers.push(std::thread::spawn(move || {
                    let mut p = p;
                    for m in 0..MSGS {
                        while p.try_write(&m.to_le_bytes()).is_err() {
                            std::thread::yield_now();
                        }
                        bell.ring();
                        if m % 64 == 0 {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                }));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = [0u64; PEERS];
        let mut sleeps = 0;
        while next.iter().any(|&n| n < MSGS) {
            let mut got = false;
            for (i, c) in consumers.iter_mut().enumerate() {
                let mut b = [0u8; 8];
                while c.available() >= 8 {
                    assert_eq!(c.read(&mut b), 8);
                    assert_eq!(u64::from_le_bytes(b), next[i]);
                    next[i] += 1;
                    got = true;
                }
            }
            if !got {
                let seen = bell.prepare_wait();
                if consumers.iter().any(|c| c.available() >= 8) {
                    bell.cancel_wait();
                } else {
                    // A lost wake-up would show as a 5 s stall per message batch.
                    bell.wait(seen, Duration::from_secs(5));
                    sleeps += 1;
                }
            }
            assert!(Instant::now() < deadline, "stuck at {next:?}");
        }
        for p in producers {
            p.join().unwrap();
        }
        assert!(sleeps > 0);
    }
}
