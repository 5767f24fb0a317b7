//! The cell that holds the process's [`Core`](super::Core): a mutex, biased towards one
//! thread.
//!
//! Every Braid call takes the core, and an uncontended `Mutex` costs two locked instructions
//! per take (measured at 14 ns a pair on the reference machine, over 20% of a small
//! message's time). Nearly every MPI program calls Braid from one thread only, so the cell
//! starts *biased* to the thread that installs the core: that thread takes it with plain
//! loads and stores, and never touches the mutex.
//!
//! # Revocation
//!
//! The first time another thread takes the core, it revokes the bias for good, under the
//! mutex: it stores [`REVOKED`], issues a process-wide memory barrier (`membarrier`,
//! `MEMBARRIER_CMD_PRIVATE_EXPEDITED`), then waits until the owner is not inside. From then
//! on every thread, the owner too, takes the mutex.
//!
//! This is Dekker's handshake with the owner's fence moved to the revoker: the owner stores
//! `inside` then loads `state` with only a compiler fence between them; the revoker stores
//! `state` then loads `inside` with a `membarrier` between them, which makes every running
//! thread of the process execute a full fence. So either the owner's `inside` store is
//! visible to the revoker after the barrier (and the revoker waits for it to clear), or the
//! owner's `state` load comes after the barrier and reads [`REVOKED`] (and the owner falls
//! back to the mutex). The owner clears `inside` with `Release` after its last access, and
//! the revoker reads it with `Acquire` before its first.
//!
//! Without `membarrier` (old kernels, seccomp filters) the cell is never biased: it is then a
//! plain mutex.
//!
//! # Semantics
//!
//! As with the mutex alone, a thread holds the core for a whole call, waits included: a
//! second thread's call waits for the first one's to return.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering, compiler_fence};
use std::sync::{Mutex, PoisonError};

/// No thread holds the bias: every take locks the mutex.
const UNBIASED: u8 = 0;
/// The thread named by `owner` takes the value without the mutex.
const BIASED: u8 = 1;
/// A second thread came: every take locks the mutex, for good.
const REVOKED: u8 = 2;

thread_local! {
    /// This thread's number for [`BiasedCell::owner`]; 0 until first asked for.
    static THREAD: Cell<u64> = const { Cell::new(0) };
}

/// A number for the calling thread, unique in the process and never 0.
#[inline]
fn thread_number() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = THREAD.get();
    if n != 0 {
        return n;
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    THREAD.set(n);
    n
}

/// A value behind a mutex that one thread may bypass; see the module documentation.
pub(super) struct BiasedCell<T> {
    state: AtomicU8,
    /// [`thread_number`] of the thread the cell is biased to (meaningful once `BIASED`).
    owner: AtomicU64,
    /// The owner is inside an unlocked take. Written only by the owner.
    inside: AtomicBool,
    lock: Mutex<()>,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through `take`, which gives one thread at a time access:
// the owner while biased (revokers wait for it to leave), otherwise whoever holds `lock`.
unsafe impl<T: Send> Sync for BiasedCell<T> {}

impl<T> BiasedCell<T> {
    pub(super) const fn new(value: T) -> Self {
        Self {
            state: AtomicU8::new(UNBIASED),
            owner: AtomicU64::new(0),
            inside: AtomicBool::new(false),
            lock: Mutex::new(()),
            value: UnsafeCell::new(value),
        }
    }

    /// Whether the calling thread takes the value without the mutex.
    fn owned_here(&self) -> bool {
        self.state.load(Ordering::Relaxed) == BIASED
            && self.owner.load(Ordering::Relaxed) == thread_number()
    }

    /// Runs `f` with exclusive access to the value.
    ///
    /// # Panics
    /// When called again from inside `f` (a bug in Braid).
    #[inline]
    pub(super) fn take<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        if self.owned_here() {
            assert!(
                !self.inside.load(Ordering::Relaxed),
                "braid: the core was taken again from inside a call"
            );
            self.inside.store(true, Ordering::Relaxed);
            // The revoker's membarrier supplies the hardware fence (module docs).
            compiler_fence(Ordering::SeqCst);
            let leave = Leave(&self.inside);
            if self.state.load(Ordering::Relaxed) == BIASED {
                // SAFETY: biased to this thread, and `inside` is visible to any revoker, which
                // waits for it to clear before touching the value; no other thread takes it
                // unlocked.
                return f(unsafe { &mut *self.value.get() });
            }
            drop(leave);
        }
        self.take_locked(f)
    }

    /// The mutex path of [`BiasedCell::take`]; revokes the bias of another thread first.
    #[inline(never)]
    fn take_locked<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if self.state.load(Ordering::Relaxed) == BIASED
            && self.owner.load(Ordering::Relaxed) != thread_number()
        {
            self.state.store(REVOKED, Ordering::Relaxed);
            process_barrier();
            while self.inside.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
        }
        // SAFETY: under `lock`, and no thread takes the value unlocked any more: the bias is
        // revoked above or was never granted (or this is the owner, which takes the mutex
        // only once the bias is gone).
        f(unsafe { &mut *self.value.get() })
    }

    /// Biases the cell to the calling thread, if no thread was ever given the bias and
    /// this process can issue the barrier that revocation needs. Returns whether the cell
    /// is now biased to the caller.
    pub(super) fn bias_to_caller(&self) -> bool {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if self.state.load(Ordering::Relaxed) == UNBIASED && braid_shm::register_process_barrier() {
            self.owner.store(thread_number(), Ordering::Relaxed);
            self.state.store(BIASED, Ordering::Relaxed);
        }
        self.owned_here()
    }
}

/// Clears the owner's `inside` flag, also when the call unwinds.
struct Leave<'a>(&'a AtomicBool);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Makes every running thread of this process execute a full memory barrier
/// ([`braid_shm::process_barrier`]).
fn process_barrier() {
    if let Err(e) = braid_shm::process_barrier() {
        // The registration succeeded, so the kernel cannot refuse this; if it did anyway,
        // going on could let two threads use the core at once.
        eprintln!("braid: membarrier failed after registration ({e}); aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read-modify-write that loses updates if two threads run it at once.
    fn bump(v: &mut u64) {
        let x = std::hint::black_box(*v);
        for _ in 0..20 {
            std::hint::spin_loop();
        }
        *v = std::hint::black_box(x + 1);
    }

    /// The owner keeps taking the cell without the mutex while a second thread arrives: the
    /// second revokes the bias, and from then on both serialize (no update is lost).
    #[test]
    fn a_second_thread_revokes_the_bias() {
        const N: u64 = 200_000;
        let cell = BiasedCell::new(0u64);
        if !cell.bias_to_caller() {
            eprintln!("SKIPPED: membarrier refused here; the cell is a plain mutex");
        }
        std::thread::scope(|s| {
            s.spawn(|| (0..N).for_each(|_| cell.take(bump)));
            (0..N).for_each(|_| cell.take(bump));
        });
        assert_eq!(cell.take(|v| *v), 2 * N);
        assert!(!cell.owned_here(), "the bias outlived a second thread");
    }

    /// An owner that panics inside its take leaves the cell usable by others.
    #[test]
    fn a_panic_inside_leaves_the_cell_free() {
        let cell = BiasedCell::new(1u64);
        cell.bias_to_caller();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cell.take(|_| panic!("inside"));
        }));
        assert!(r.is_err());
        let got = std::thread::scope(|s| s.spawn(|| cell.take(|v| *v)).join().unwrap());
        assert_eq!(got, 1);
    }
}
