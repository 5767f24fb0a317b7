//! Compile-everywhere stand-in for [`crate::sys`] on targets other than Linux.
//!
//! Segments and cross-memory attach are [`io::ErrorKind::Unsupported`]; the futex is a short
//! sleep (callers always re-check, so that is correct, only slower).

use std::io;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

pub(crate) const SHM_DIR: &str = "/dev/shm";

fn unsupported() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "braid-shm supports Linux only")
}

pub(crate) fn create_segment(_path: &Path, _len: usize) -> io::Result<NonNull<u8>> {
    Err(unsupported())
}

pub(crate) fn open_segment(_path: &Path) -> io::Result<(NonNull<u8>, usize)> {
    Err(unsupported())
}

pub(crate) fn anonymous_shared(_len: usize) -> io::Result<NonNull<u8>> {
    Err(unsupported())
}

/// # Safety
///
/// Never called: no mapping can be made on this target.
pub(crate) unsafe fn unmap(_ptr: NonNull<u8>, _len: usize) -> io::Result<()> {
    Err(unsupported())
}

pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    if word.load(std::sync::atomic::Ordering::Acquire) == expected {
        std::thread::sleep(timeout.min(Duration::from_micros(50)));
    }
}

pub(crate) fn futex_wake(_word: &AtomicU32, _n: i32) -> usize {
    0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BarrierScope {
    Registered,
    ThisProcess,
}

pub(crate) fn register_barrier(_scope: BarrierScope) -> bool {
    false
}

pub(crate) fn barrier(_scope: BarrierScope) -> io::Result<()> {
    Err(unsupported())
}

pub(crate) fn process_vm_read(_pid: i32, _addr: u64, _dst: &mut [u8]) -> io::Result<usize> {
    Err(unsupported())
}

/// # Safety
/// As the Linux version: every part's `local` is writable for `len` bytes.
pub(crate) unsafe fn process_vm_read_parts(
    _pid: i32,
    _parts: &[crate::cma::ReadPart],
) -> io::Result<usize> {
    Err(unsupported())
}

pub(crate) fn process_vm_write(_pid: i32, _addr: u64, _src: &[u8]) -> io::Result<usize> {
    Err(unsupported())
}

pub(crate) fn collapse_huge(_addr: usize, _len: usize) -> io::Result<()> {
    Err(unsupported())
}

pub(crate) fn set_ptracer_any() -> io::Result<()> {
    Ok(())
}
