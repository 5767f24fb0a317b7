//! Linux implementation of [`crate::sys`].

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Calls a libc function and turns the C error convention (`-1` and `errno`) into
/// [`io::Error`]. Every syscall of the crate goes through here.
///
/// Source: mio `src/sys/unix/mod.rs`.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        #[allow(unused_unsafe)]
        // SAFETY: the caller of the macro upholds the libc function's contract; each use
        // site documents it.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// Directory where POSIX shared-memory objects live (glibc's `shm_open` uses it too).
pub(crate) const SHM_DIR: &str = "/dev/shm";

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Creates `path` exclusively with mode 0600, sizes it to `len` and maps it shared.
///
/// On any failure after the file exists, the file is unlinked again.
pub(crate) fn create_segment(path: &Path, len: usize) -> io::Result<NonNull<u8>> {
    let cpath = c_path(path)?;
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    let mode: libc::c_uint = 0o600;
    // SAFETY: `cpath` is a valid NUL-terminated string that outlives the call.
    let fd = syscall!(open(cpath.as_ptr(), flags, mode))?;
    // SAFETY: `open` just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sized = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment length too large"))
        .and_then(|len| syscall!(ftruncate(fd.as_raw_fd(), len)).map(drop))
        .and_then(|()| map_shared_fd(&fd, len));
    if sized.is_err() {
        // Best effort: the error being reported is the earlier one.
        let _ = syscall!(unlink(cpath.as_ptr()));
    }
    sized
}

/// Opens an existing segment read-write and maps all of it; returns the mapping and length.
pub(crate) fn open_segment(path: &Path) -> io::Result<(NonNull<u8>, usize)> {
    let cpath = c_path(path)?;
    let flags = libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: `cpath` is a valid NUL-terminated string that outlives the call.
    let fd = syscall!(open(cpath.as_ptr(), flags))?;
    // SAFETY: `open` just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one `stat`; `fd` is open.
    syscall!(fstat(fd.as_raw_fd(), st.as_mut_ptr()))?;
    // SAFETY: `fstat` succeeded, so it initialized `st`.
    let st = unsafe { st.assume_init() };
    let len = usize::try_from(st.st_size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative segment size"))?;
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "segment has size 0 (not yet sized by its creator?)",
        ));
    }
    Ok((map_shared_fd(&fd, len)?, len))
}

/// The crate's one `mmap` of a file (see also [`anonymous_shared`]).
#[allow(clippy::disallowed_methods)]
fn map_shared_fd(fd: &OwnedFd, len: usize) -> io::Result<NonNull<u8>> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a fresh mapping at a kernel-chosen address cannot alias any Rust object.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))
}

/// A `MAP_SHARED | MAP_ANONYMOUS` mapping of `len` bytes, zero-filled.
#[allow(clippy::disallowed_methods)]
pub(crate) fn anonymous_shared(len: usize) -> io::Result<NonNull<u8>> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
    // SAFETY: a fresh mapping at a kernel-chosen address cannot alias any Rust object.
    let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))
}

/// Unmaps a mapping made by this module.
///
/// # Safety
///
/// `ptr`/`len` must be exactly a mapping returned by this module, and no reference into it
/// may be used afterwards.
#[allow(clippy::disallowed_methods)]
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    syscall!(munmap(ptr.as_ptr().cast(), len)).map(drop)
}

/// Blocks while `*word == expected`, for at most `timeout` (a shared futex: works across
/// processes mapping the same page). Returns normally on wake-up, timeout, signal and
/// value mismatch alike: callers re-check their condition.
#[cfg_attr(braid_loom, allow(dead_code))] // loom replaces the futex (crate::primitive)
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    // `subsec_nanos() < 1e9` always fits a c_long; `try_from` because c_long is i32 on
    // 32-bit targets, where `From<u32>` does not exist.
    #[allow(clippy::unnecessary_fallible_conversions)]
    let tv_nsec = libc::c_long::try_from(timeout.subsec_nanos()).unwrap_or(0);
    let ts = libc::timespec {
        // Saturate: a timeout of centuries is as good as infinite.
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec,
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; FUTEX_WAIT only
    // reads it. The timespec outlives the call. Not FUTEX_PRIVATE: the word may be shared.
    let r = syscall!(syscall(
        libc::SYS_futex,
        word.as_ptr(),
        libc::FUTEX_WAIT,
        expected,
        &raw const ts,
        std::ptr::null::<u32>(),
        0u32,
    ));
    // EAGAIN (value changed), ETIMEDOUT and EINTR are all "go and re-check".
    debug_assert!(
        r.is_ok()
            || matches!(
                r.as_ref().map_err(io::Error::raw_os_error),
                Err(Some(libc::EAGAIN | libc::ETIMEDOUT | libc::EINTR))
            ),
        "futex_wait: {r:?}"
    );
}

/// Wakes up to `n` waiters blocked on `word`; returns how many were woken.
#[cfg_attr(braid_loom, allow(dead_code))]
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) -> usize {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not access it.
    let r = syscall!(syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n));
    // A non-negative count fits in usize; an error (impossible with a valid address) is 0.
    r.map_or(0, |n| usize::try_from(n).unwrap_or(0))
}

/// Whom a [`barrier`] makes fence (`membarrier`'s expedited commands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BarrierScope {
    /// Every running thread of every process registered for this scope
    /// (`MEMBARRIER_CMD_GLOBAL_EXPEDITED`).
    Registered,
    /// Every running thread of this process (`MEMBARRIER_CMD_PRIVATE_EXPEDITED`).
    ThisProcess,
}

impl BarrierScope {
    /// The `(register, issue)` commands.
    fn commands(self) -> (libc::c_long, libc::c_long) {
        match self {
            Self::Registered => (1 << 2, 1 << 1),
            Self::ThisProcess => (1 << 4, 1 << 3),
        }
    }
}

/// Registers this process for [`barrier`]s of `scope` (as a target of `Registered` ones; as
/// the issuer of `ThisProcess` ones); false when the kernel refuses (before Linux 4.14/4.16,
/// or a seccomp filter).
pub(crate) fn register_barrier(scope: BarrierScope) -> bool {
    // SAFETY: membarrier takes no pointers.
    syscall!(syscall(libc::SYS_membarrier, scope.commands().0, 0)).is_ok()
}

/// Makes every running thread that `scope` names execute a full memory barrier before this
/// returns (retried when a signal interrupts it). Needs [`register_barrier`] first.
pub(crate) fn barrier(scope: BarrierScope) -> io::Result<()> {
    let mut tries = 0;
    loop {
        // SAFETY: membarrier takes no pointers.
        match syscall!(syscall(libc::SYS_membarrier, scope.commands().1, 0)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted && tries < 1000 => tries += 1,
            r => return r.map(drop),
        }
    }
}

/// One `process_vm_readv` of `dst.len()` bytes at `addr` in process `pid`; returns the
/// number of bytes read (may be short).
pub(crate) fn process_vm_read(pid: i32, addr: u64, dst: &mut [u8]) -> io::Result<usize> {
    let local = libc::iovec {
        iov_base: dst.as_mut_ptr().cast(),
        iov_len: dst.len(),
    };
    let remote = libc::iovec {
        // The remote address is only an integer to the kernel; it is never dereferenced here.
        iov_base: usize::try_from(addr)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "address too large"))?
            as *mut libc::c_void,
        iov_len: dst.len(),
    };
    // SAFETY: `local` describes `dst`, which is valid for writes of its length; the remote
    // iovec is checked by the kernel against the other process's address space.
    let n = syscall!(process_vm_readv(
        pid,
        &raw const local,
        1,
        &raw const remote,
        1,
        0
    ))?;
    // `n` is non-negative here (errors were -1).
    Ok(n.unsigned_abs())
}

/// One `process_vm_readv` of several parts (`crate::cma::ReadPart`): part `i` reads `len`
/// bytes at `remote` in process `pid` into `local`. Returns the bytes read in total (may be
/// short). At most [`crate::cma::MAX_PARTS`] parts.
///
/// # Safety
/// Every part's `local` is valid for writes of `len` bytes for the duration of the call.
pub(crate) unsafe fn process_vm_read_parts(
    pid: i32,
    parts: &[crate::cma::ReadPart],
) -> io::Result<usize> {
    const EMPTY: libc::iovec = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let n = parts.len().min(crate::cma::MAX_PARTS);
    let (mut local, mut remote) = (
        [EMPTY; crate::cma::MAX_PARTS],
        [EMPTY; crate::cma::MAX_PARTS],
    );
    for (i, p) in parts[..n].iter().enumerate() {
        local[i] = libc::iovec {
            iov_base: p.local.cast(),
            iov_len: p.len,
        };
        remote[i] = libc::iovec {
            // The remote address is only an integer to the kernel; it is never dereferenced
            // here.
            iov_base: usize::try_from(p.remote)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "address too large"))?
                as *mut libc::c_void,
            iov_len: p.len,
        };
    }
    // SAFETY: the first `n` local iovecs describe memory the caller guarantees writable; the
    // remote ones are checked by the kernel against the other process's address space. `n`
    // is at most MAX_PARTS (16), far below IOV_MAX.
    let r = syscall!(process_vm_readv(
        pid,
        local.as_ptr(),
        n as libc::c_ulong,
        remote.as_ptr(),
        n as libc::c_ulong,
        0
    ))?;
    // `r` is non-negative here (errors were -1).
    Ok(r.unsigned_abs())
}

/// `process_vm_writev` of `src` to `addr` in process `pid`; returns the bytes written.
pub(crate) fn process_vm_write(pid: i32, addr: u64, src: &[u8]) -> io::Result<usize> {
    let local = libc::iovec {
        iov_base: src.as_ptr().cast_mut().cast(),
        iov_len: src.len(),
    };
    let remote = libc::iovec {
        // The remote address is only an integer to the kernel; it is never dereferenced here.
        iov_base: usize::try_from(addr)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "address too large"))?
            as *mut libc::c_void,
        iov_len: src.len(),
    };
    // SAFETY: `local` describes `src`, which is valid for reads of its length (the kernel
    // only reads through it); the remote iovec is checked by the kernel against the other
    // process's address space.
    let n = syscall!(process_vm_writev(
        pid,
        &raw const local,
        1,
        &raw const remote,
        1,
        0
    ))?;
    // `n` is non-negative here (errors were -1).
    Ok(n.unsigned_abs())
}

/// `madvise(MADV_COLLAPSE)` (Linux 6.1): backs the whole 2 MiB-aligned blocks inside
/// `[addr, addr + len)` with transparent huge pages now, copying what is there. The contents
/// stay the same; only the backing changes. `addr` must be page-aligned.
pub(crate) fn collapse_huge(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: MADV_COLLAPSE never changes what the range reads as (the kernel copies the
    // pages it replaces, and gives up on any page it cannot move), so no memory of ours
    // changes meaning; an unmapped range is an error, not a fault.
    syscall!(madvise(addr as *mut libc::c_void, len, libc::MADV_COLLAPSE)).map(drop)
}

/// `prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY)`: lets any process of the same user attach
/// (and so `process_vm_readv`) to this one under Yama `ptrace_scope = 1`.
pub(crate) fn set_ptracer_any() -> io::Result<()> {
    // SAFETY: PR_SET_PTRACER takes one integer argument and touches no memory of ours.
    syscall!(prctl(
        libc::PR_SET_PTRACER,
        libc::PR_SET_PTRACER_ANY,
        0,
        0,
        0
    ))
    .map(drop)
}
