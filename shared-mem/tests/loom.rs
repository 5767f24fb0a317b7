//! loom model checks of the SPSC ring: every interleaving (and, for atomics, every allowed
//! reordering) of a tiny producer and consumer, with the data bytes tracked as loom cells so
//! that a missing `Release`/`Acquire` shows up as a data race.
//!
//! Only built under `RUSTFLAGS="--cfg braid_loom"`; run by `shared-mem/ci/loom.sh`.
#![cfg(braid_loom)]

use std::sync::Arc;

use braid_shm::{
    FASTBOX_FOOTPRINT, RingConsumer, RingProducer, Segment, attach_consumer,
    attach_fastbox_consumer, attach_fastbox_producer, attach_producer, format_fastbox, format_ring,
    ring_footprint,
};

/// One segment for all iterations (mmap per iteration would dominate); the ring is
/// re-formatted at the start of each iteration, before any thread of it starts.
fn segment(capacity: usize) -> Arc<Segment> {
    Arc::new(Segment::anonymous(ring_footprint(capacity)).unwrap())
}

fn attach(seg: &Arc<Segment>, capacity: usize) -> (RingProducer, RingConsumer) {
    // SAFETY: each model iteration formats before it attaches, with no thread of the
    // iteration running yet; one producer and one consumer.
    unsafe {
        format_ring(seg, 0, capacity);
        (
            attach_producer(seg.clone(), 0).unwrap(),
            attach_consumer(seg.clone(), 0).unwrap(),
        )
    }
}

/// Producer writes 3 chunks of 3 bytes into a 4-byte ring (so it wraps and fills); the
/// consumer reads with a 3-byte buffer. Whatever the consumer gets is a prefix of the
/// stream, and bytes are never overwritten before they are read (loom's cell tracking).
#[test]
fn stream_wraps_in_order() {
    let seg = segment(4);
    loom::model(move || {
        let (mut p, mut c) = attach(&seg, 4);
        let t = loom::thread::spawn(move || {
            let mut sent = 0u8;
            for chunk in [[0u8, 1, 2], [3, 4, 5], [6, 7, 8]] {
                let n = p.write(&chunk);
                sent += n as u8;
                if n < chunk.len() {
                    // Partial write: stop, so the stream stays contiguous.
                    break;
                }
            }
            sent
        });
        let mut got = Vec::new();
        for _ in 0..2 {
            let mut buf = [0u8; 3];
            let n = c.read(&mut buf);
            got.extend_from_slice(&buf[..n]);
        }
        let sent = t.join().unwrap();
        // Drain what is left.
        let mut buf = [0u8; 4];
        let n = c.read(&mut buf);
        got.extend_from_slice(&buf[..n]);
        assert_eq!(got.len(), usize::from(sent));
        assert!(
            got.iter().enumerate().all(|(i, &b)| usize::from(b) == i),
            "{got:?}"
        );
    });
}

/// Both sides go around a 2-byte ring several times with single-byte-granular reads:
/// exercises wrap at every index and the cached-index reloads.
#[test]
fn wraps_repeatedly() {
    let seg = segment(2);
    loom::model(move || {
        let (mut p, mut c) = attach(&seg, 2);
        let t = loom::thread::spawn(move || {
            let mut next = 0u8;
            for _ in 0..3 {
                let n = p.write(&[next, next + 1]);
                next += n as u8;
            }
            next
        });
        let mut expect = 0u8;
        for _ in 0..3 {
            let mut b = [0u8; 1];
            if c.read(&mut b) == 1 {
                assert_eq!(b[0], expect);
                expect += 1;
            }
        }
        let sent = t.join().unwrap();
        let mut b = [0u8; 2];
        let n = c.read(&mut b);
        for &x in &b[..n] {
            assert_eq!(x, expect);
            expect += 1;
        }
        assert_eq!(expect, sent);
    });
}

/// `try_write_vectored` is all-or-nothing and `peek`/`consume` never release bytes twice.
#[test]
fn vectored_and_peek() {
    let seg = segment(8);
    loom::model(move || {
        let (mut p, mut c) = attach(&seg, 8);
        let t = loom::thread::spawn(move || {
            let mut frames = 0u8;
            for f in 0..3u8 {
                let hdr = [f; 1];
                let body = [f; 3];
                if p.try_write_vectored(&[&hdr, &body]).is_ok() {
                    frames += 1;
                }
            }
            frames
        });
        let mut seen = 0u8;
        for _ in 0..2 {
            let mut hdr = [0u8; 4];
            if c.peek(&mut hdr) == 4 {
                assert_eq!(hdr, [seen; 4]);
                assert_eq!(c.consume(4), 4);
                seen += 1;
            }
        }
        let frames = t.join().unwrap();
        let mut rest = [0u8; 8];
        let n = c.read(&mut rest);
        assert_eq!(usize::from(seen) * 4 + n, usize::from(frames) * 4);
    });
}

/// A fast box of 2 slots: the producer writes 3 records (so it wraps and must wait for
/// `freed`); the consumer pops what it sees. Records arrive whole and in order, and a slot is
/// never rewritten while it is read (loom's cell tracking).
#[test]
fn fastbox_wraps_in_order() {
    let seg = Arc::new(Segment::anonymous(FASTBOX_FOOTPRINT).unwrap());
    loom::model(move || {
        // SAFETY: formatted before any thread of this iteration runs; one producer and one
        // consumer.
        let (mut p, mut c) = unsafe {
            format_fastbox(&seg, 0);
            (
                attach_fastbox_producer(seg.clone(), 0).unwrap(),
                attach_fastbox_consumer(seg.clone(), 0).unwrap(),
            )
        };
        let t = loom::thread::spawn(move || {
            let mut sent = 0u8;
            for r in 0..3u8 {
                if !p.try_write(&[&[r, r]]) {
                    break;
                }
                sent += 1;
            }
            sent
        });
        let mut got = Vec::new();
        for _ in 0..2 {
            if let Some(rec) = c.front() {
                got.push(rec.to_vec());
                c.pop();
            }
        }
        let sent = t.join().unwrap();
        while let Some(rec) = c.front() {
            got.push(rec.to_vec());
            c.pop();
        }
        assert_eq!(got.len(), usize::from(sent));
        for (i, rec) in got.iter().enumerate() {
            assert_eq!(rec, &[i as u8, i as u8]);
        }
    });
}
