//! [`CachePadded`]: keeps a hot shared word on a cache line (pair) of its own.

use std::fmt;
use std::ops::Deref;

/// Pads and aligns `T` to 128 bytes so that two hot words written by different cores never
/// share a cache line (false sharing).
///
/// 128 rather than 64: on x86-64 the L2 spatial prefetcher fetches cache lines in aligned
/// pairs, and Apple/ARM big cores have 128-byte lines. Source: crossbeam
/// `crossbeam-utils/src/cache_padded.rs`; Intel 64 and IA-32 Architectures Optimization
/// Reference Manual, "Spatial Prefetcher".
///
/// Unlike crossbeam's type this one is `repr(C)` with one fixed alignment on every target:
/// it lays out memory shared between processes, so the layout must be stated, not chosen by
/// the compiler.
#[repr(C, align(128))]
#[derive(Default)]
pub(crate) struct CachePadded<T> {
    value: T,
}

impl<T> CachePadded<T> {
    /// Wraps `value`.
    pub(crate) const fn new(value: T) -> Self {
        Self { value }
    }
}

impl<T> Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for CachePadded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachePadded")
            .field("value", &self.value)
            .finish()
    }
}

const _: () = assert!(size_of::<CachePadded<u64>>() == 128);
const _: () = assert!(align_of::<CachePadded<u8>>() == 128);
