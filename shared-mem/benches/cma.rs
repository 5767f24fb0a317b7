//! The ceiling of single-copy transfers: what `process_vm_readv` ([`cma_read`]) moves
//! between two processes at 64 KiB, 1 MiB and 4 MiB, against `memcpy` of the same size.
//!
//! Three groups:
//!
//! - `memcpy`: one process copies between two of its own buffers (no cross-process cost).
//! - `cma_read_one_way`: this process reads a forked child's buffer while the child sleeps,
//!   the shape of `osu_bw` when only the receiver copies.
//! - `cma_read_two_way`: the same while the child reads this process's buffer in a loop, the
//!   shape of `osu_bibw` (each rank pulls what the other sends). Twice the reported rate is
//!   the most any library built on `process_vm_readv` can reach in `osu_bibw`.
//!
//! Run with `cargo bench -p braid-shm --bench cma` on an otherwise idle machine with two
//! cores; pin with `taskset -c 0` so the child (pinned to the next core) gets its own core.

use std::time::Duration;

use braid_shm::{allow_ptrace_from_any, cma_read};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [usize; 3] = [64 << 10, 1 << 20, 4 << 20];

/// A forked child that owns a copy of `src` and, if `read_back`, reads `src`'s address in
/// this process into its own buffer until it is killed.
struct Child {
    pid: libc::pid_t,
}

impl Child {
    fn spawn(src: &[u8], read_back: bool) -> Self {
        allow_ptrace_from_any();
        let parent = i32::try_from(std::process::id()).expect("pid fits i32");
        let addr = src.as_ptr() as u64;
        let mut sink = vec![0u8; src.len()];
        // SAFETY: criterion runs benchmarks on this one thread, so the child is a copy of a
        // single-threaded process; it only makes system calls on memory it owns (`sink`,
        // allocated before the fork) and never returns into Rust code that could unwind.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: as above; the loop ends when the parent kills this process.
            unsafe {
                pin_to(next_cpu());
                loop {
                    if read_back {
                        let _ = cma_read(parent, addr, &mut sink);
                    } else {
                        libc::pause();
                    }
                }
            }
        }
        Self { pid }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: `pid` is our own child; waiting reaps it.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// The CPU after the one this process may run on first (wrapping), for the child.
fn next_cpu() -> usize {
    // SAFETY: plain syscall on a zeroed set of the right size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .unwrap_or(0);
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        (first + 1) % n.max(2)
    }
}

/// Pins the calling process to `cpu`; best effort (the figures only lose their meaning).
fn pin_to(cpu: usize) {
    // SAFETY: plain syscall on a set built here.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let _ = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn memcpy(c: &mut Criterion) {
    let mut g = c.benchmark_group("memcpy");
    for n in SIZES {
        let src = vec![1u8; n];
        let mut dst = vec![0u8; n];
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| dst.copy_from_slice(std::hint::black_box(&src)));
        });
    }
    g.finish();
}

fn cma(c: &mut Criterion, name: &str, read_back: bool) {
    let mut g = c.benchmark_group(name);
    for n in SIZES {
        let src = vec![1u8; n];
        let mut dst = vec![0u8; n];
        let child = Child::spawn(&src, read_back);
        let addr = src.as_ptr() as u64;
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| cma_read(child.pid, addr, &mut dst).expect("process_vm_readv"));
        });
        drop(child);
    }
    g.finish();
}

fn one_way(c: &mut Criterion) {
    cma(c, "cma_read_one_way", false);
}

fn two_way(c: &mut Criterion) {
    cma(c, "cma_read_two_way", true);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = memcpy, one_way, two_way
}
criterion_main!(benches);
