//! Platform code: every syscall of the crate lives below this module.
//!
//! Linux is the only supported target (`linux`: `/dev/shm`, `mmap`, `futex`,
//! `process_vm_readv`, `prctl`). Everything else gets `fallback`, which compiles everywhere:
//! segments and cross-memory attach report [`io::ErrorKind::Unsupported`] and the futex
//! becomes a bounded sleep, so the crate (and its callers) still build and fail cleanly.
//!
//! The interface both implementations provide:
//!
//! | item | what |
//! | --- | --- |
//! | `SHM_DIR` | directory holding named segments |
//! | `create_segment(path, len)` | create (exclusive, mode 0600), size and map a segment |
//! | `open_segment(path)` | map an existing segment, size from `fstat` |
//! | `unmap(ptr, len)` | undo a mapping |
//! | `anonymous_shared(len)` | a `MAP_SHARED` anonymous mapping (tests, benches, fork) |
//! | `futex_wait(word, expected, timeout)` / `futex_wake(word, n)` | shared (non-private) futex |
//! | `register_barrier(scope)` / `barrier(scope)` | `membarrier`, expedited: every running thread of the registered processes, or of this one, fences |
//! | `process_vm_read(pid, addr, dst)` | one `process_vm_readv` call |
//! | `process_vm_read_parts(pid, parts)` | one `process_vm_readv` call for several ranges |
//! | `process_vm_write(pid, addr, src)` | one `process_vm_writev` call |
//! | `collapse_huge(addr, len)` | `madvise(MADV_COLLAPSE)`: back aligned 2 MiB blocks with huge pages |
//! | `set_ptracer_any()` | `prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY)` |

// Both modules always exist for the doc table above; only one is compiled in.
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
mod fallback;
#[cfg(not(target_os = "linux"))]
pub(crate) use fallback::*;

#[cfg(doc)]
use std::io;

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn futex_wait_times_out_and_skips_on_mismatch() {
        let w = AtomicU32::new(3);
        let t = Instant::now();
        futex_wait(&w, 3, Duration::from_millis(30));
        assert!(
            t.elapsed() >= Duration::from_millis(25),
            "{:?}",
            t.elapsed()
        );
        let t = Instant::now();
        futex_wait(&w, 4, Duration::from_secs(10)); // value differs: returns at once
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(futex_wake(&w, 1), 0);
    }

    #[test]
    fn futex_wake_wakes_a_waiter() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = w.clone();
        let t = Instant::now();
        let waiter = std::thread::spawn(move || {
            while w2.load(Ordering::Acquire) == 0 {
                futex_wait(&w2, 0, Duration::from_secs(20));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        w.store(1, Ordering::Release);
        futex_wake(&w, 1);
        waiter.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
}
