//! The receive fast path (`Core::recv_direct`: a blocking receive naming one peer takes the
//! next message straight from the peer's TCP connection or shared ring) against everything
//! that must send it back to the general path, with every byte checked:
//! - a burst of small messages read in one go (the first is taken, the rest go to the engine);
//! - a message with another tag ahead of the wanted one, and non-overtaking on one tag;
//! - a message too long for the buffer (truncation error, then the stream is in sync);
//! - a burst of near-eager-limit messages longer than one read's staging buffer;
//! - a rendezvous message, a zero-length message, an any-tag receive;
//! - a ping-pong between ranks 0 and 1 while ranks 2.. send to rank 0 on another tag (the
//!   fast path's periodic progress pass must take those in);
//! - with 3 ranks or more, a ping-pong between ranks 0 and 1 that goes on until a
//!   synchronous send from rank 2 to a receive rank 0 posted on another communicator has
//!   completed: rank 0 only ever sends and receives from rank 1 meanwhile, so only the fast
//!   path's progress passes can match rank 2's message.
//!
//! Usage: `mpirun -n N p2p_direct [ROUND_TRIPS]` (N >= 2; default 2000 round trips).

use std::time::Duration;

use braid::traits::*;
use braid_tests::{Check, OrFail, check_pattern, ensure, pattern, run_rank, salt_of};

/// Messages each rank from 2 on sends to rank 0 during the ping-pong.
const SIDE_MESSAGES: usize = 20;

fn main() {
    let trips: usize = braid_tests::arg(1, 2000);
    run_rank("p2p_direct", |world| {
        ensure(world.size() >= 2, || "needs at least 2 ranks".into())?;
        let rank = world.rank();
        // Wire-up leaves every connection to be read once by a progress pass; after this the
        // fast path is open.
        world.barrier().or_fail("first barrier")?;
        match rank {
            0 => receiver(world)?,
            1 => sender(world)?,
            _ => {}
        }
        world.barrier().or_fail("barrier after the bursts")?;
        pingpong(world, trips)?;
        world.barrier().or_fail("barrier after the ping-pong")?;
        side_progress(world)?;
        world.barrier().or_fail("final barrier")
    });
}

/// Rank 1: the messages of every case, each case after rank 0 says it is ready.
fn sender(world: &braid::SimpleCommunicator) -> Check {
    let to = world.process_at_rank(0);
    let go = |case: i32| -> Check {
        let mut b = [0u8; 1];
        world
            .process_at_rank(0)
            .receive_into_with_tag(&mut b[..], 1000 + case)
            .or_fail(format!("go of case {case}"))
            .map(drop)
    };
    let send = |len: usize, salt: u64, tag: i32| -> Check {
        to.send_with_tag(&pattern(len, salt)[..], tag)
            .or_fail(format!("send of {len} B, tag {tag}"))
    };
    // Burst: 64 small messages back to back.
    go(0)?;
    for j in 0..64 {
        send(8 + j % 40, salt_of(&[0, j as u64]), 5)?;
    }
    // Another tag first, then two on one tag.
    go(1)?;
    send(10, salt_of(&[1, 0]), 7)?;
    send(12, salt_of(&[1, 1]), 8)?;
    send(20, salt_of(&[1, 2]), 9)?;
    send(21, salt_of(&[1, 3]), 9)?;
    // Too long for the receive buffer, then one that fits.
    go(2)?;
    send(100, salt_of(&[2, 0]), 10)?;
    send(8, salt_of(&[2, 1]), 10)?;
    // Near the eager limit, more than one read's staging buffer in all.
    go(3)?;
    for j in 0..6 {
        send(60_000, salt_of(&[3, j]), 11)?;
    }
    // Rendezvous.
    go(4)?;
    send(1 << 20, salt_of(&[4, 0]), 12)?;
    // Zero length, then any tag.
    go(5)?;
    send(0, 0, 13)?;
    send(8, salt_of(&[5, 1]), 14)
}

/// Rank 0: lets each case's messages pile up (a short sleep) before receiving them.
fn receiver(world: &braid::SimpleCommunicator) -> Check {
    let from = world.process_at_rank(1);
    let go = |case: i32| -> Check {
        from.send_with_tag(&[1u8][..], 1000 + case)
            .or_fail(format!("go of case {case}"))?;
        std::thread::sleep(Duration::from_millis(30));
        Ok(())
    };
    let recv = |len: usize, cap: usize, salt: u64, tag: i32| -> Check {
        let mut buf = vec![0u8; cap];
        let st = from
            .receive_into_with_tag(&mut buf[..], tag)
            .or_fail(format!("receive of {len} B, tag {tag}"))?;
        ensure(st.count_bytes() == len && st.tag() == tag, || {
            format!("receive of {len} B, tag {tag}: status {st:?}")
        })?;
        check_pattern(&buf[..len], salt).map_err(|e| format!("{len} B, tag {tag}: {e}"))
    };
    go(0)?;
    for j in 0..64 {
        recv(8 + j % 40, 64, salt_of(&[0, j as u64]), 5)?;
    }
    go(1)?;
    recv(12, 12, salt_of(&[1, 1]), 8)?;
    recv(10, 10, salt_of(&[1, 0]), 7)?;
    recv(20, 64, salt_of(&[1, 2]), 9)?;
    recv(21, 64, salt_of(&[1, 3]), 9)?;
    go(2)?;
    let mut small = [0u8; 10];
    match from.receive_into_with_tag(&mut small[..], 10) {
        Err(braid::Error::UsageTruncated { len: 100, .. }) => {
            check_pattern(&small, salt_of(&[2, 0])).map_err(|e| format!("truncated: {e}"))?;
        }
        other => {
            return Err(format!(
                "100 B into 10 B: want a truncation error, got {other:?}"
            ));
        }
    }
    recv(8, 8, salt_of(&[2, 1]), 10)?;
    go(3)?;
    for j in 0..6 {
        recv(60_000, 60_000, salt_of(&[3, j]), 11)?;
    }
    go(4)?;
    recv(1 << 20, 1 << 20, salt_of(&[4, 0]), 12)?;
    go(5)?;
    let mut buf = [0u8; 8];
    let st = from.receive_into(&mut buf[..]).or_fail("any-tag receive")?;
    ensure(st.tag() == 13 && st.count_bytes() == 0, || {
        format!("any-tag receive: want the empty message of tag 13, got {st:?}")
    })?;
    let st = from.receive_into(&mut buf[..]).or_fail("any-tag receive")?;
    ensure(st.tag() == 14 && st.count_bytes() == 8, || {
        format!("any-tag receive: want 8 B of tag 14, got {st:?}")
    })?;
    check_pattern(&buf, salt_of(&[5, 1]))
}

/// Ranks 0 and 1 bounce a counter; ranks 2.. send to rank 0 meanwhile, which takes their
/// messages after the ping-pong.
fn pingpong(world: &braid::SimpleCommunicator, trips: usize) -> Check {
    let (rank, size) = (world.rank(), world.size());
    if rank >= 2 {
        for j in 0..SIDE_MESSAGES {
            std::thread::sleep(Duration::from_micros(500));
            world
                .process_at_rank(0)
                .send_with_tag(&pattern(16, salt_of(&[9, rank as u64, j as u64]))[..], 50)
                .or_fail("side message")?;
        }
        return Ok(());
    }
    let peer = world.process_at_rank(1 - rank);
    let mut v = [0u64; 1];
    for i in 0..trips as u64 {
        if rank == 0 {
            peer.send(&[2 * i][..]).or_fail("ping")?;
            peer.receive_into(&mut v[..]).or_fail("pong")?;
            ensure(v[0] == 2 * i + 1, || format!("trip {i}: got {}", v[0]))?;
        } else {
            peer.receive_into(&mut v[..]).or_fail("ping")?;
            ensure(v[0] == 2 * i, || format!("trip {i}: got {}", v[0]))?;
            peer.send(&[2 * i + 1][..]).or_fail("pong")?;
        }
    }
    if rank == 0 {
        for r in 2..size {
            for j in 0..SIDE_MESSAGES {
                let mut b = [0u8; 16];
                world
                    .process_at_rank(r)
                    .receive_into_with_tag(&mut b[..], 50)
                    .or_fail(format!("side message {j} from rank {r}"))?;
                check_pattern(&b, salt_of(&[9, r as u64, j as u64]))
                    .map_err(|e| format!("side message {j} from rank {r}: {e}"))?;
            }
        }
    }
    Ok(())
}

/// Round trips after which [`side_progress`] gives up (some seconds).
const SIDE_MAX_TRIPS: u64 = 400_000;

/// Ranks 0 and 1 ping-pong until rank 1 hears (tag 77) that rank 2's synchronous send to
/// rank 0, on a duplicate of the world, completed.
fn side_progress(world: &braid::SimpleCommunicator) -> Check {
    let (rank, size) = (world.rank(), world.size());
    let dup = world.duplicate().or_fail("duplicate")?;
    if size < 3 {
        return Ok(());
    }
    const STOP: u64 = u64::MAX;
    match rank {
        0 => {
            let peer = world.process_at_rank(1);
            let mut got = [0u8; 8];
            braid::request::scope(|scope| -> Check {
                let side = dup
                    .process_at_rank(2)
                    .immediate_receive_into_with_tag(scope, &mut got[..], 60)
                    .or_fail("post the side receive")?;
                let mut v = [0u64; 1];
                loop {
                    peer.receive_into(&mut v[..]).or_fail("side ping")?;
                    if v[0] == STOP {
                        break;
                    }
                    peer.send(&[v[0] + 1][..]).or_fail("side pong")?;
                }
                side.wait().or_fail("side receive").map(drop)
            })?;
            ensure(got == *b"synchron", || format!("side message {got:?}"))
        }
        1 => {
            let peer = world.process_at_rank(0);
            let mut v = [0u64; 1];
            for i in 0..SIDE_MAX_TRIPS {
                if i % 64 == 0
                    && world
                        .process_at_rank(2)
                        .immediate_probe_with_tag(77)
                        .or_fail("probe")?
                        .is_some()
                {
                    let mut b = [0u8; 1];
                    world
                        .process_at_rank(2)
                        .receive_into_with_tag(&mut b[..], 77)
                        .or_fail("note from rank 2")?;
                    return peer.send(&[STOP][..]).or_fail("stop");
                }
                peer.send(&[2 * i][..]).or_fail("side ping")?;
                peer.receive_into(&mut v[..]).or_fail("side pong")?;
                ensure(v[0] == 2 * i + 1, || format!("side trip {i}: got {}", v[0]))?;
            }
            peer.send(&[STOP][..]).or_fail("stop")?;
            Err(format!(
                "rank 2's synchronous send to rank 0 did not complete in {SIDE_MAX_TRIPS} round \
                 trips of a ping-pong between ranks 0 and 1"
            ))
        }
        2 => {
            dup.process_at_rank(0)
                .synchronous_send_with_tag(&b"synchron"[..], 60)
                .or_fail("synchronous side send")?;
            world
                .process_at_rank(1)
                .send_with_tag(&[1u8][..], 77)
                .or_fail("note to rank 1")
        }
        _ => Ok(()),
    }
}
