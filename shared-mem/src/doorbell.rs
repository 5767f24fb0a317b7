//! [`Doorbell`]: one futex word that producers ring and waiters sleep on: the one sleep and
//! wake-up handshake of Braid's shared memory (rings and fast boxes of a receiver, the posts of
//! a member in the shared-memory collectives).

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
    /// Futex word: incremented (wrapping) by a producer that saw `sleepers != 0`, before
    /// its futex wake. Never decremented.
    seq: AtomicU32,
    /// Waiters between their [`Doorbell::prepare_wait`] and the end of their
    /// [`Doorbell::wait`] (or [`Doorbell::cancel_wait`]).
    sleepers: AtomicU32,
    /// 1 while waiters issue a process barrier ([`heavy_barrier`]) each time they announce
    /// sleep, so producers registered for asymmetric fences may skip theirs (see
    /// [`Doorbell::ring`]). Set at format if the formatting process could register; cleared
    /// for good by a waiter whose barrier fails.
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
        sleepers: AtomicU32::new(0),
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

/// A doorbell in shared memory: producers [`ring`] it after publishing data (a receiver's
/// local peers after writing to its rings; a collective member after posting a step), and
/// waiters sleep on it until the data they wait for is there (the receiver when all its rings
/// are empty; members waiting for that post).
///
/// `Send + Sync`: every operation is atomic. Producers and waiters use the same type; any
/// number of either, in any processes.
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
    /// This process is a target of waiters' barriers ([`asymmetric_fences`]).
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
    /// [`format_doorbell`].
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

    /// Producer side, after publishing data: wakes every waiter that announced sleep.
    /// Cheap otherwise (a fence and a load). Returns whether there were waiters to wake.
    ///
    /// # Implementation notes
    ///
    /// A Dekker-style handshake. Producer: publish the data, `fence(SeqCst)`, load
    /// `sleepers`. Waiter: count itself in `sleepers`, `fence(SeqCst)`, load `seq`, check
    /// the data. The two fences are ordered one way or the other (C++20
    /// \[atomics.fences\]): if the producer's comes first, the waiter's check sees the data
    /// and it does not sleep; otherwise the producer's load sees the waiter and wakes it.
    /// The futex compares `seq` against the value read before the check, so a wake that
    /// lands before the waiter blocks makes `FUTEX_WAIT` return at once.
    ///
    /// The producer's fence costs more than the rest of a small send (it waits until the
    /// data's cache line has reached this core), and it matters only when a waiter
    /// goes to sleep, which is rare. So it is made *asymmetric* where the kernel allows
    /// (`membarrier`, as in liburcu and folly's `asymmetricHeavyBarrier`): the producer
    /// keeps only a compiler fence, and a waiter, after counting itself in `sleepers`,
    /// makes every running thread of the registered processes execute a full fence. Either
    /// the producer's data store precedes that barrier (and the waiter's check sees it),
    /// or the producer's `sleepers` load follows it (and sees the waiter). A producer not
    /// registered, or a waiter that cannot issue the barrier, keeps the fence.
    pub fn ring(&self) -> bool {
        let w = self.words();
        if self.light && w.asymmetric.load(Ordering::Relaxed) != 0 {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
        if w.sleepers.load(Ordering::Relaxed) == 0 {
            return false;
        }
        w.seq.fetch_add(1, Ordering::Release);
        futex_wake(&w.seq, i32::MAX);
        true
    }

    /// Waiter side: announces that it is about to sleep and returns the doorbell value to
    /// pass to [`wait`](Self::wait). The caller must check for its data *after* this call
    /// and then call either `wait` or [`cancel_wait`](Self::cancel_wait).
    pub fn prepare_wait(&self) -> u32 {
        let w = self.words();
        w.sleepers.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if w.asymmetric.load(Ordering::Relaxed) != 0 && !heavy_barrier() {
            // Producers see this before their next ring; a wake-up they skip meanwhile is
            // bounded by the caller's timeout.
            w.asymmetric.store(0, Ordering::Relaxed);
            fence(Ordering::SeqCst);
        }
        w.seq.load(Ordering::Acquire)
    }

    /// Waiter side: blocks while the doorbell still reads `seen`, for at most about
    /// `timeout`, then withdraws the sleep announcement. Returns whether the doorbell rang
    /// since `seen` was read. May return early; callers re-check their data.
    pub fn wait(&self, seen: u32, timeout: Duration) -> bool {
        let w = self.words();
        futex_wait(&w.seq, seen, timeout);
        w.sleepers.fetch_sub(1, Ordering::Relaxed);
        w.seq.load(Ordering::Acquire) != seen
    }

    /// Waiter side: withdraws a [`prepare_wait`](Self::prepare_wait) without sleeping.
    pub fn cancel_wait(&self) {
        self.words().sleepers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether some waiter currently announces sleep (for statistics and tests).
    pub fn is_sleeping(&self) -> bool {
        self.words().sleepers.load(Ordering::Relaxed) != 0
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

    /// Several waiters sleep on one doorbell at once (a collective member's posts); one ring
    /// wakes them all long before their timeout, and withdrawn announcements leave no
    /// sleeper behind.
    #[test]
    fn one_ring_wakes_every_waiter() {
        use std::sync::atomic::AtomicU64;
        const WAITERS: usize = 3;
        let seg = Arc::new(Segment::anonymous(4096).unwrap());
        let bell = Arc::new(bell_at(&seg, 0));
        assert!(!bell.ring(), "nobody sleeps yet");
        let posted = Arc::new(AtomicU64::new(0));
        let waiters: Vec<_> = (0..WAITERS)
            .map(|_| {
                let (bell, posted) = (bell.clone(), posted.clone());
                std::thread::spawn(move || {
                    let t = Instant::now();
                    while posted.load(Ordering::Acquire) == 0 {
                        let seen = bell.prepare_wait();
                        if posted.load(Ordering::Acquire) == 0 {
                            bell.wait(seen, Duration::from_secs(20));
                        } else {
                            bell.cancel_wait();
                        }
                        assert!(t.elapsed() < Duration::from_secs(60), "never woken");
                    }
                    t.elapsed()
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while bell.words().sleepers.load(Ordering::Relaxed) < WAITERS as u32 {
            assert!(Instant::now() < deadline, "waiters never announced sleep");
            std::thread::sleep(Duration::from_millis(1));
        }
        posted.store(1, Ordering::Release);
        assert!(bell.ring(), "the waiters were asleep");
        for w in waiters {
            let waited = w.join().unwrap();
            assert!(
                waited < Duration::from_secs(10),
                "woken only by timeout: {waited:?}"
            );
        }
        assert!(!bell.is_sleeping());
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
