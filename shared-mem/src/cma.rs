//! Cross-memory attach: single-copy reads from and writes to another process's address
//! space (`process_vm_readv`, `process_vm_writev`), for large messages (rendezvous) and the
//! shared-memory collectives.

use std::io;

use crate::error::with_context;
use crate::sys;

/// Copies `dst.len()` bytes from address `remote_addr` in process `pid` into `dst`, looping
/// over partial reads (the kernel stops at page or iovec boundaries).
///
/// The reader needs ptrace access to `pid`: same user, and under Yama `ptrace_scope = 1` the
/// *target* must have called [`allow_ptrace_from_any`].
///
/// # Errors
///
/// The OS error (`ESRCH`: no such process; `EPERM`: no ptrace access; `EFAULT`: bad remote
/// range) or [`io::ErrorKind::UnexpectedEof`] if the kernel reads 0 bytes before the end.
/// Messages name the pid, address and length.
pub fn cma_read(pid: i32, remote_addr: u64, dst: &mut [u8]) -> io::Result<()> {
    let len = dst.len();
    copy_all("process_vm_readv", pid, remote_addr, len, |done, addr| {
        sys::process_vm_read(pid, addr, &mut dst[done..])
    })
}

/// One range of a batched single-copy read ([`cma_read_many`]): `len` bytes at address
/// `remote` in the other process into `local` in this one.
#[derive(Clone, Copy, Debug)]
pub struct ReadPart {
    /// Address of the first byte in the other process.
    pub remote: u64,
    /// Where the bytes go in this process.
    pub local: *mut u8,
    /// Bytes to copy.
    pub len: usize,
}

/// Most parts one [`cma_read_many`] call copies.
pub const MAX_PARTS: usize = 16;

/// Reads several ranges of process `pid` with one `process_vm_readv` (one syscall entry,
/// one lookup of the process, instead of one per range: about a tenth of the cost of a
/// 64 KiB read). Returns how many leading parts were copied whole; the caller copies the
/// rest one by one ([`cma_read`], which also names the error). Parts past [`MAX_PARTS`] are
/// not copied.
///
/// # Safety
/// Every part's `local` is valid for writes of `len` bytes for the duration of the call
/// (parts may overlap: the kernel writes through raw addresses, no references are made).
pub unsafe fn cma_read_many(pid: i32, parts: &[ReadPart]) -> usize {
    // SAFETY: forwarded from the caller.
    let Ok(mut read) = (unsafe { sys::process_vm_read_parts(pid, parts) }) else {
        return 0;
    };
    parts[..parts.len().min(MAX_PARTS)]
        .iter()
        .take_while(|p| {
            let whole = read >= p.len;
            read = read.saturating_sub(p.len);
            whole
        })
        .count()
}

/// Copies `src` to address `remote_addr` in process `pid`, looping over partial writes: the
/// writing twin of [`cma_read`], with the same access rule (the kernel checks ptrace access
/// for both directions alike).
///
/// # Errors
///
/// As [`cma_read`]; messages name `process_vm_writev`, pid, address and length.
pub fn cma_write(pid: i32, remote_addr: u64, src: &[u8]) -> io::Result<()> {
    copy_all(
        "process_vm_writev",
        pid,
        remote_addr,
        src.len(),
        |done, addr| sys::process_vm_write(pid, addr, &src[done..]),
    )
}

/// Calls `step(done, address)` until `len` bytes are copied, retrying interrupted calls.
fn copy_all(
    op: &str,
    pid: i32,
    remote_addr: u64,
    len: usize,
    mut step: impl FnMut(usize, u64) -> io::Result<usize>,
) -> io::Result<()> {
    let ctx = |done: usize| {
        format!("{op}(pid {pid}, addr {remote_addr:#x}, len {len}) after {done} bytes")
    };
    let mut done = 0;
    while done < len {
        // `done < len <= isize::MAX` fits in u64.
        let addr = remote_addr.checked_add(done as u64).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: address overflow", ctx(done)),
            )
        })?;
        match step(done, addr) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: copied 0 bytes", ctx(done)),
                ));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(with_context(e, ctx(done))),
        }
    }
    Ok(())
}

/// Whether the 8 bytes at `remote_addr` in process `pid` can be read and equal `expected`
/// (native byte order). A cheap check that cross-memory attach works towards a peer before
/// choosing it for large transfers.
pub fn cma_probe(pid: i32, remote_addr: u64, expected: u64) -> bool {
    let mut buf = [0u8; 8];
    cma_read(pid, remote_addr, &mut buf).is_ok() && u64::from_ne_bytes(buf) == expected
}

/// Lets any process (of the same user) ptrace this one, so that peers can
/// [`cma_read`] from it under Yama `ptrace_scope = 1`. Errors are ignored: without Yama the
/// call fails and is not needed.
pub fn allow_ptrace_from_any() {
    let _ = sys::set_ptracer_any();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> i32 {
        i32::try_from(std::process::id()).unwrap()
    }

    #[test]
    fn reads_own_memory_across_pages() {
        let src: Vec<u8> = (0..3 * 4096 + 123).map(|i| (i * 7 % 251) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        cma_read(me(), src.as_ptr() as u64, &mut dst).unwrap();
        assert_eq!(src, dst);
        cma_read(me(), src.as_ptr() as u64, &mut []).unwrap();
    }

    #[test]
    fn writes_own_memory_across_pages() {
        let src: Vec<u8> = (0..2 * 4096 + 77).map(|i| (i * 13 % 251) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        cma_write(me(), dst.as_mut_ptr() as u64, &src).unwrap();
        assert_eq!(src, dst);
        let e = cma_write(me(), 0, &src).unwrap_err();
        assert!(e.to_string().contains("process_vm_writev"), "{e}");
    }

    #[test]
    fn reads_many_parts_in_one_call() {
        let src: Vec<u8> = (0..5 * 4096 + 321).map(|i| (i * 11 % 251) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        let base = src.as_ptr() as u64;
        let d = dst.as_mut_ptr();
        // Out of order, of uneven sizes, one of them empty.
        let cuts = [
            (4096, 8192),
            (0, 4096),
            (12_288, 12_288),
            (8192, 12_288),
            (12_288, src.len()),
        ];
        let parts: Vec<ReadPart> = cuts
            .iter()
            .map(|&(a, b)| ReadPart {
                remote: base + a as u64,
                local: d.wrapping_add(a),
                len: b - a,
            })
            .collect();
        // SAFETY: every part lies inside `dst`.
        assert_eq!(unsafe { cma_read_many(me(), &parts) }, parts.len());
        assert_eq!(src, dst);
        // A bad third part: the first two are whole, the rest is left to the caller.
        let mut bad = parts.clone();
        bad[2] = ReadPart {
            remote: 8,
            local: d,
            len: 16,
        };
        dst.fill(0);
        // SAFETY: as above.
        let whole = unsafe { cma_read_many(me(), &bad) };
        assert_eq!(whole, 2);
        assert_eq!(dst[..8192], src[..8192]);
        // Nothing is copied past MAX_PARTS.
        let many = vec![parts[1]; MAX_PARTS + 3];
        // SAFETY: as above.
        assert_eq!(unsafe { cma_read_many(me(), &many) }, MAX_PARTS);
    }

    #[test]
    fn probe() {
        let word: u64 = 0xB4A1_D000_1234_5678;
        let addr = &raw const word as u64;
        assert!(cma_probe(me(), addr, word));
        assert!(!cma_probe(me(), addr, word + 1));
        assert!(!cma_probe(me(), 0, word)); // unmapped page 0
    }

    #[test]
    fn bogus_pid_and_address_fail_with_context() {
        let mut dst = [0u8; 16];
        // pid_max is at most 2^22, so this pid cannot exist.
        let e = cma_read(i32::MAX - 1, 0x1000, &mut dst).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&format!("pid {}", i32::MAX - 1)), "{msg}");
        assert!(
            msg.contains("addr 0x1000") && msg.contains("len 16"),
            "{msg}"
        );
        let os = e
            .get_ref()
            .and_then(|e| e.downcast_ref::<crate::OsError>())
            .unwrap();
        assert_eq!(os.os_error().raw_os_error(), Some(libc::ESRCH));
        let e = cma_read(me(), 8, &mut dst).unwrap_err();
        let os = e
            .get_ref()
            .and_then(|e| e.downcast_ref::<crate::OsError>())
            .unwrap();
        assert_eq!(os.os_error().raw_os_error(), Some(libc::EFAULT), "{e}");
    }

    #[test]
    fn allow_ptrace_is_harmless() {
        allow_ptrace_from_any();
        let word = 5u64;
        assert!(cma_probe(me(), &raw const word as u64, 5));
    }
}
