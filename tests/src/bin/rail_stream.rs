//! A long one-way stream for rail tests: rank 0 sends `TOTAL` MiB to rank 1 in messages of
//! `MSG` MiB, every byte checked against a pattern of its offset salted by the message
//! index. Long enough that a rail can be taken down while it runs. Other ranks only join the
//! final barrier.
//!
//! Usage: `mpirun -n 2 rail_stream [TOTAL_MIB] [MSG_MIB]` (defaults 256 and 4). Rank 1 prints
//! `rail_stream received N MiB in S s (R MB/s)`.
//!
//! `rail_stream pingpong SECS`: instead, small messages (8 B to 2 KiB, the ones that take the
//! latency rail) go back and forth between ranks 0 and 1 for about SECS seconds, every byte
//! checked; rank 0 prints `rail_stream pingpong N round trips in S s (longest T ms)`.
//!
//! `rail_stream pairs TOTAL_MIB`: ranks 2k and 2k+1 form pair k (an odd last rank only joins
//! the final barrier). In every pair at once, the even rank sends the odd one about TOTAL_MIB
//! MiB in messages cycling through 4 MiB, 1000 B, 2 MiB and 40 KiB (rendezvous and eager), and
//! after every 8th message the odd rank answers with 8 bytes carrying the message index, which
//! the even rank checks; every byte is checked. The odd rank prints `rail_stream pairs: rank R
//! received N MiB from rank S in T s`.

use std::time::Instant;

use braid::traits::*;
use braid_tests::{
    OrFail, arg, check_pattern, check_pattern_from, ensure, fill_pattern, run_rank, salt_of,
};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("pingpong") {
        pingpong(arg(2, 3u64));
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("pairs") {
        pairs(arg(2, 256usize));
        return;
    }
    let (total, msg) = (arg(1, 256usize), arg(2, 4usize).max(1));
    let count = total.div_ceil(msg);
    let size = msg << 20;
    run_rank("rail_stream", |world| {
        ensure(world.size() >= 2, || "needs at least 2 ranks".into())?;
        let rank = world.rank();
        let mut buf = vec![0u8; size];
        let start = Instant::now();
        if rank < 2 {
            let peer = world.process_at_rank(1 - rank);
            for i in 0..count {
                let salt = salt_of(&[i as u64, 0x5a17]);
                let what = format!("message {i} of {count} ({msg} MiB)");
                if rank == 0 {
                    fill_pattern(&mut buf, salt);
                    peer.send_with_tag(&buf[..], 7).or_fail(&what)?;
                } else {
                    let st = peer.receive_into_with_tag(&mut buf[..], 7).or_fail(&what)?;
                    ensure(st.count_bytes() == size, || {
                        format!("{what}: status {st:?}")
                    })?;
                    check_pattern(&buf, salt).map_err(|e| format!("{what}: {e}"))?;
                }
            }
        }
        if rank == 1 {
            let secs = start.elapsed().as_secs_f64();
            println!(
                "rail_stream received {} MiB in {secs:.2} s ({:.1} MB/s)",
                count * msg,
                (count * size) as f64 / secs / 1e6
            );
        }
        world.barrier().or_fail("final barrier")
    });
}

/// Checked small-message ping-pong for about `secs` seconds. The first 8 bytes of every
/// message are its round-trip index, with the top bit set on the last one.
fn pingpong(secs: u64) {
    run_rank("rail_stream pingpong", |world| {
        ensure(world.size() >= 2, || "needs at least 2 ranks".into())?;
        let rank = world.rank();
        let start = Instant::now();
        let mut longest = std::time::Duration::ZERO;
        let mut i = 0u64;
        if rank < 2 {
            let peer = world.process_at_rank(1 - rank);
            let mut buf = vec![0u8; 2048];
            loop {
                let size = 8usize << (i % 9);
                let last = rank == 0 && start.elapsed().as_secs() >= secs;
                let what = |dir: &str| format!("round trip {i} ({size} B, {dir})");
                let t = Instant::now();
                if rank == 0 {
                    fill_pattern(&mut buf[..size], salt_of(&[i, 1]));
                    let tagged = i | if last { 1 << 63 } else { 0 };
                    buf[..8].copy_from_slice(&tagged.to_le_bytes());
                    peer.send_with_tag(&buf[..size], 9).or_fail(what("ping"))?;
                    let st = peer
                        .receive_into_with_tag(&mut buf[..size], 9)
                        .or_fail(what("pong"))?;
                    ensure(st.count_bytes() == size, || {
                        format!("{}: {st:?}", what("pong"))
                    })?;
                    check_pattern_from(&buf[..size], salt_of(&[i, 2]), 8)
                        .map_err(|e| format!("{}: {e}", what("pong")))?;
                } else {
                    let st = peer
                        .receive_into_with_tag(&mut buf[..size], 9)
                        .or_fail(what("ping"))?;
                    ensure(st.count_bytes() == size, || {
                        format!("{}: {st:?}", what("ping"))
                    })?;
                    check_pattern_from(&buf[..size], salt_of(&[i, 1]), 8)
                        .map_err(|e| format!("{}: {e}", what("ping")))?;
                    let mut head = [0u8; 8];
                    head.copy_from_slice(&buf[..8]);
                    let tagged = u64::from_le_bytes(head);
                    ensure(tagged & !(1 << 63) == i, || {
                        format!("{}: carries index {}", what("ping"), tagged & !(1 << 63))
                    })?;
                    fill_pattern(&mut buf[..size], salt_of(&[i, 2]));
                    buf[..8].copy_from_slice(&tagged.to_le_bytes());
                    peer.send_with_tag(&buf[..size], 9).or_fail(what("pong"))?;
                    if tagged >> 63 == 1 {
                        break;
                    }
                }
                longest = longest.max(t.elapsed());
                i += 1;
                if last {
                    break;
                }
            }
        }
        if rank == 0 {
            println!(
                "rail_stream pingpong {i} round trips in {:.2} s (longest {:.1} ms)",
                start.elapsed().as_secs_f64(),
                longest.as_secs_f64() * 1e3
            );
        }
        world.barrier().or_fail("final barrier")
    });
}

/// Checked streams of mixed message sizes in every pair (2k, 2k+1) at once, with a short answer
/// after every 8th message; about `total_mib` MiB per pair.
fn pairs(total_mib: usize) {
    const SIZES: [usize; 4] = [4 << 20, 1000, 2 << 20, 40 << 10];
    let mut sizes = Vec::new();
    let mut sum = 0;
    while sum < total_mib << 20 {
        let n = SIZES[sizes.len() % SIZES.len()];
        sizes.push(n);
        sum += n;
    }
    run_rank("rail_stream pairs", |world| {
        let (rank, size) = (world.rank(), world.size());
        ensure(size >= 2, || "needs at least 2 ranks".into())?;
        let start = Instant::now();
        let peer_rank = rank ^ 1;
        if peer_rank < size {
            let peer = world.process_at_rank(peer_rank);
            let pair = (rank / 2) as u64;
            let mut buf = vec![0u8; SIZES[0]];
            for (i, &n) in sizes.iter().enumerate() {
                let salt = salt_of(&[pair, i as u64, 0x9a1e]);
                let what = format!("pair {pair} message {i} of {} ({n} B)", sizes.len());
                let answer = i % 8 == 7;
                if rank % 2 == 0 {
                    fill_pattern(&mut buf[..n], salt);
                    peer.send_with_tag(&buf[..n], 7).or_fail(&what)?;
                    if answer {
                        let mut a = [0u8; 8];
                        let st = peer
                            .receive_into_with_tag(&mut a[..], 8)
                            .or_fail(format!("{what}: answer"))?;
                        ensure(
                            st.count_bytes() == 8 && u64::from_le_bytes(a) == i as u64,
                            || format!("{what}: answer {a:?}, status {st:?}"),
                        )?;
                    }
                } else {
                    let st = peer
                        .receive_into_with_tag(&mut buf[..n], 7)
                        .or_fail(&what)?;
                    ensure(st.count_bytes() == n, || format!("{what}: status {st:?}"))?;
                    check_pattern(&buf[..n], salt).map_err(|e| format!("{what}: {e}"))?;
                    if answer {
                        let a = (i as u64).to_le_bytes();
                        peer.send_with_tag(&a[..], 8)
                            .or_fail(format!("{what}: answer"))?;
                    }
                }
            }
            if rank % 2 == 1 {
                println!(
                    "rail_stream pairs: rank {rank} received {} MiB from rank {peer_rank} in \
                     {:.2} s",
                    sum >> 20,
                    start.elapsed().as_secs_f64()
                );
            }
        }
        world.barrier().or_fail("final barrier")
    });
}
