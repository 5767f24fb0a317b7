//! Truncation: a message longer than the receive buffer gives `Error::UsageTruncated` naming
//! source, tag, length and capacity, for eager and rendezvous sizes and blocking and
//! immediate receives, with a specific and any source; the job then goes on (the next
//! messages, eager and rendezvous, arrive intact) and exits 0.
//!
//! Usage: `mpirun -n 2 p2p_truncate [CASE...]` (CASE: index into `CASES`; default all).
//! Ranks beyond 1 only join the barrier.

use braid::traits::*;
use braid_tests::{Check, OrFail, check_pattern, ensure, pattern, run_rank, salt_of};

/// (message length, receive capacity, how to receive).
/// Case 6 is rendezvous by default and eager under `BRAID_EAGER_LIMIT=8388608`, where the
/// payload is too long to arrive in one read, so the receiver reads it straight into the
/// buffer and must then skip the tail.
const CASES: [(usize, usize, Recv); 7] = [
    (100, 50, Recv::Blocking),
    (100, 0, Recv::AnySource),
    (65536, 65535, Recv::Blocking),
    (200 << 10, 100 << 10, Recv::Blocking),
    (3 << 20, 1 << 20, Recv::Immediate),
    (300 << 10, 10, Recv::AnySource),
    ((3 << 20) + 5, 1 << 20, Recv::Blocking),
];

#[derive(Clone, Copy, Debug)]
enum Recv {
    Blocking,
    AnySource,
    Immediate,
}

fn main() {
    let picked: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    run_rank("p2p_truncate", |world| {
        ensure(world.size() >= 2, || "needs at least 2 ranks".into())?;
        let rank = world.rank();
        for (i, &(len, cap, how)) in CASES.iter().enumerate() {
            if !picked.is_empty() && !picked.contains(&i) {
                continue;
            }
            let tag = 100 + i as i32;
            let salt = salt_of(&[i as u64, 5]);
            if rank == 0 {
                let msg = pattern(len, salt);
                world
                    .process_at_rank(1)
                    .send_with_tag(&msg[..], tag)
                    .or_fail(format!(
                        "send of {len} B (tag {tag}) that the receiver truncates to {cap} B"
                    ))?;
                // Then one intact message of the same size, to see the stream is in sync.
                world
                    .process_at_rank(1)
                    .send_with_tag(&msg[..], tag)
                    .or_fail(format!("send of {len} B after the truncated one"))?;
            } else if rank == 1 {
                truncated(world, len, cap, how, tag, salt)?;
                let mut full = vec![0u8; len];
                let st = world
                    .process_at_rank(0)
                    .receive_into_with_tag(&mut full[..], tag)
                    .or_fail(format!("receive of {len} B after a truncated one"))?;
                ensure(st.count_bytes() == len, || format!("status {st:?}"))?;
                check_pattern(&full, salt)
                    .map_err(|e| format!("{len} B after a truncated one: {e}"))?;
            }
        }
        // A ping-pong in the other direction still works.
        if rank < 2 {
            let peer = world.process_at_rank(1 - rank);
            let v = [rank as u64 + 40; 3];
            let mut got = [0u64; 3];
            braid::point_to_point::send_receive_into(&v[..], &peer, &mut got[..], &peer)
                .or_fail("final exchange")?;
            ensure(got == [(1 - rank) as u64 + 40; 3], || {
                format!("final exchange got {got:?}")
            })?;
        }
        world.barrier().or_fail("final barrier")
    });
}

fn truncated(
    world: &braid::SimpleCommunicator,
    len: usize,
    cap: usize,
    how: Recv,
    tag: i32,
    salt: u64,
) -> Check {
    let what = format!("{how:?} receive of {len} B into {cap} B (tag {tag})");
    let mut buf = vec![0u8; cap];
    let res = match how {
        Recv::Blocking => world
            .process_at_rank(0)
            .receive_into_with_tag(&mut buf[..], tag),
        Recv::AnySource => world.any_process().receive_into_with_tag(&mut buf[..], tag),
        Recv::Immediate => braid::request::scope(|scope| {
            world
                .process_at_rank(0)
                .immediate_receive_into_with_tag(scope, &mut buf[..], tag)?
                .wait()
        }),
    };
    match res {
        Err(braid::Error::UsageTruncated {
            source_rank,
            tag: t,
            len: l,
            capacity,
        }) => {
            ensure((source_rank, t, l, capacity) == (0, tag, len, cap), || {
                format!(
                    "{what}: error names source {source_rank}, tag {t}, len {l}, capacity {capacity}"
                )
            })?;
            // Documented: the first `capacity` bytes were received.
            check_pattern(&buf, salt).map_err(|e| format!("{what}: stored prefix: {e}"))
        }
        Err(e) => Err(format!("{what}: want UsageTruncated, got error: {e}")),
        Ok(st) => Err(format!("{what}: want UsageTruncated, got Ok({st:?})")),
    }
}
