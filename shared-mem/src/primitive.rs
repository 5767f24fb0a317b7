//! The synchronization primitives the lock-free code uses, switched to
//! [loom](https://docs.rs/loom)'s model-checked versions under `cfg(braid_loom)`.
//!
//! Lock-free code imports atomics, fences, spin hints and the futex from here and nowhere
//! else, so that `RUSTFLAGS="--cfg braid_loom"` checks the very same code.
//! (Pattern: crossbeam `crossbeam-utils/src/lib.rs`, the `primitive` module.)
//!
//! Under loom the futex cannot be modeled: `futex_wait` yields to the model scheduler and
//! returns, which is a legal (spurious) futex outcome since every caller re-checks its
//! condition; `futex_wake` does nothing.

#[cfg(not(braid_loom))]
pub(crate) mod sync {
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, compiler_fence, fence};
}

#[cfg(braid_loom)]
pub(crate) mod sync {
    pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
    // Loom has no compiler fence; a full one is stronger and never used on that path anyway.
    pub(crate) use loom::sync::atomic::fence as compiler_fence;
}

use std::time::Duration;

use crate::sys::BarrierScope;

use sync::AtomicU32;

/// Shadow cells that let loom see the ring's plain data-byte accesses (raw copies are
/// invisible to it): one [`loom::cell::UnsafeCell`] per data byte of a (tiny) model ring.
#[cfg(braid_loom)]
pub(crate) mod shadow {
    /// Largest ring capacity the loom shadow covers.
    pub(crate) const MAX: usize = 16;

    /// One cell per data byte.
    pub(crate) type Cells = [loom::cell::UnsafeCell<()>; MAX];

    pub(crate) fn new() -> Cells {
        std::array::from_fn(|_| loom::cell::UnsafeCell::new(()))
    }

    /// Records a write of bytes `[start, start + len)`.
    pub(crate) fn write(cells: &Cells, start: usize, len: usize) {
        for c in &cells[start..start + len] {
            c.with_mut(|_| ());
        }
    }

    /// Records a read of bytes `[start, start + len)`.
    pub(crate) fn read(cells: &Cells, start: usize, len: usize) {
        for c in &cells[start..start + len] {
            c.with(|_| ());
        }
    }
}

/// Waits on a shared futex word; see [`crate::sys`]. Spurious returns are allowed.
#[cfg(not(braid_loom))]
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    crate::sys::futex_wait(word, expected, timeout);
}

/// Under loom: a yield (a spurious wake-up as far as callers can tell).
#[cfg(braid_loom)]
pub(crate) fn futex_wait(_word: &AtomicU32, _expected: u32, _timeout: Duration) {
    loom::thread::yield_now();
}

/// Wakes up to `n` futex waiters on `word`.
#[cfg(not(braid_loom))]
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) {
    crate::sys::futex_wake(word, n);
}

/// Under loom: nothing to wake (see [`futex_wait`]).
#[cfg(braid_loom)]
pub(crate) fn futex_wake(_word: &AtomicU32, _n: i32) {}

/// Whether this process takes part in asymmetric fences: it is registered as a target of
/// the barrier that a sleeping consumer issues ([`heavy_barrier`]), so as a producer it may
/// replace its `fence(SeqCst)` before checking for sleepers by a compiler fence. Registers on
/// the first call. Loom cannot model the barrier: there, never.
#[cfg(not(braid_loom))]
pub(crate) fn asymmetric_fences() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| crate::sys::register_barrier(BarrierScope::Registered))
}

/// Under loom: never (see above).
#[cfg(braid_loom)]
pub(crate) fn asymmetric_fences() -> bool {
    false
}

/// The consumer's half of an asymmetric fence: every running thread of the registered
/// processes executes a full fence before this returns. False when the kernel refused.
#[cfg(not(braid_loom))]
pub(crate) fn heavy_barrier() -> bool {
    crate::sys::barrier(BarrierScope::Registered).is_ok()
}

/// Under loom: never called ([`asymmetric_fences`] is false).
#[cfg(braid_loom)]
pub(crate) fn heavy_barrier() -> bool {
    false
}

/// Registers this process for [`process_barrier`]; false when the kernel refuses (before
/// Linux 4.14, or a seccomp filter).
pub fn register_process_barrier() -> bool {
    crate::sys::register_barrier(BarrierScope::ThisProcess)
}

/// Makes every running thread of this process execute a full memory barrier before this
/// returns (`membarrier`, private expedited): the heavy half of an asymmetric fence inside
/// one process. Needs [`register_process_barrier`] first.
///
/// # Errors
/// The kernel refused (not registered, or no `membarrier`).
pub fn process_barrier() -> std::io::Result<()> {
    crate::sys::barrier(BarrierScope::ThisProcess)
}

/// Asks the CPU to start loading the cache line at `p` for reading; no effect on memory or
/// on program order, and nothing on other targets or under loom.
#[inline]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(braid_loom)))]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(all(target_arch = "x86_64", not(braid_loom))))]
    let _ = p;
}

/// Asks the CPU to start fetching the cache line at `p` for writing (`prefetchw`: the line
/// comes exclusive, other cores' copies are invalidated); a hint like [`prefetch`]. Written
/// as assembly because the intrinsic needs the `prfchw` target feature at compile time;
/// x86-64 CPUs without the instruction execute its encoding as a no-op.
#[inline]
pub(crate) fn prefetch_write(p: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(braid_loom)))]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address, and writes no
    // register, flag or memory.
    unsafe {
        std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
    }
    #[cfg(not(all(target_arch = "x86_64", not(braid_loom))))]
    let _ = p;
}
