//! Ring throughput (1 KiB and 64 KiB messages streamed through a 1 MiB ring) and ping-pong
//! latency (8-byte and 1 KiB messages over two rings) between two threads; and the
//! single-thread write+read cost.
//!
//! Run with `cargo bench -p braid-shm --bench ring`. Both sides poll (spin, then yield; no
//! futex), so the two-thread numbers are the ring's cost plus cache-line transfers between
//! cores, and are only meaningful on an otherwise idle machine with 2+ free cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_shm::{RingConsumer, RingProducer, Segment, attach_consumer, ring_footprint};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A connected ring pair in an anonymous segment.
fn ring(capacity: usize) -> (RingProducer, RingConsumer) {
    let seg = Arc::new(Segment::anonymous(ring_footprint(capacity)).expect("mmap"));
    // SAFETY: fresh segment; exactly one producer and one consumer.
    unsafe {
        let p = RingProducer::init(seg.clone(), 0, capacity);
        (p, attach_consumer(seg, 0).expect("formatted just above"))
    }
}

/// Waiting for the other thread: spin a little, then yield (CI machines have 2 cores and
/// other load; pure spinning there measures the scheduler).
fn idle(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn write_all(p: &mut RingProducer, mut buf: &[u8]) {
    let mut spins = 0;
    while !buf.is_empty() {
        let n = p.write(buf);
        buf = &buf[n..];
        if n == 0 {
            idle(&mut spins);
        }
    }
}

fn read_exact(c: &mut RingConsumer, mut buf: &mut [u8]) {
    let mut spins = 0;
    while !buf.is_empty() {
        let n = c.read(buf);
        buf = &mut buf[n..];
        if n == 0 {
            idle(&mut spins);
        }
    }
}

/// Write then read in one thread: the ring's own cost (copies and index updates) with no
/// cache-line transfer between cores.
fn single_thread(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("ring_single_thread");
    for size in [64usize, 1024, 64 * 1024] {
        let (mut p, mut c) = ring(1 << 20);
        let msg = vec![0xA5u8; size];
        let mut buf = vec![0u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                assert_eq!(p.write(&msg), size);
                assert_eq!(c.read(&mut buf), size);
            });
        });
    }
    g.finish();
}

fn throughput(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("ring_throughput");
    for size in [1024usize, 64 * 1024] {
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{}KiB", size / 1024), |b| {
            b.iter_custom(|iters| {
                let (mut p, mut c) = ring(1 << 20);
                let msg = vec![0xA5u8; size];
                let writer = std::thread::spawn(move || {
                    for _ in 0..iters {
                        write_all(&mut p, &msg);
                    }
                });
                let mut buf = vec![0u8; size];
                let t = Instant::now();
                for _ in 0..iters {
                    read_exact(&mut c, &mut buf);
                }
                let dt = t.elapsed();
                writer.join().expect("writer");
                dt
            });
        });
    }
    g.finish();
}

fn ping_pong(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("ring_ping_pong");
    for size in [8usize, 1024] {
        g.bench_function(format!("{size}B_round_trip"), |b| {
            b.iter_custom(|iters| {
                let (mut ping_p, mut ping_c) = ring(64 * 1024);
                let (mut pong_p, mut pong_c) = ring(64 * 1024);
                let echo = std::thread::spawn(move || {
                    let mut buf = vec![0u8; size];
                    for _ in 0..iters {
                        read_exact(&mut ping_c, &mut buf);
                        write_all(&mut pong_p, &buf);
                    }
                });
                let mut buf = vec![1u8; size];
                let t = Instant::now();
                for _ in 0..iters {
                    write_all(&mut ping_p, &buf);
                    read_exact(&mut pong_c, &mut buf);
                }
                let dt = t.elapsed();
                echo.join().expect("echo");
                dt
            });
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = single_thread, throughput, ping_pong
}
criterion_main!(benches);
