//! Windows of immediate sends and receives between every pair of ranks, in both directions
//! at once (as `osu_bibw` does, but with a separate buffer per message and checked contents):
//! several single-copy transfers from one peer are in flight together, so the runtime copies
//! them in batches, decides per message whether to split it, and may decline its part of a
//! split.
//!
//! Usage: `mpirun -n N p2p_window SEED ROUNDS WINDOW`. In every round each rank posts, for
//! every other rank, WINDOW immediate receives (one tag, so they match in order) and then
//! WINDOW immediate sends of random sizes from 0 to 300 KiB, derived from the seed, round and
//! pair; then it waits for all of them and checks every receive's status and bytes, and that
//! nothing was written past a message's end.

use braid::traits::*;
use braid_tests::{Check, OrFail, arg, check_pattern, ensure, fill_pattern, run_rank, salt_of};
use rand::{Rng, SeedableRng, rngs::StdRng};

const MAX: usize = 300 << 10;
const TAG: i32 = 4;
const GUARD: usize = 64;

/// The sizes `from` sends to `to` in `round`, in send order.
fn plan(seed: u64, round: usize, from: i32, to: i32, window: usize) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(salt_of(&[seed, round as u64, from as u64, to as u64]));
    (0..window)
        .map(|_| match rng.gen_range(0..10) {
            0 => rng.gen_range(0..=64),
            1..4 => rng.gen_range(65..=64 << 10),
            _ => rng.gen_range((64 << 10) + 1..=MAX),
        })
        .collect()
}

fn salt(round: usize, from: i32, to: i32, seq: usize) -> u64 {
    salt_of(&[round as u64, from as u64, to as u64, seq as u64, 91])
}

fn main() {
    let (seed, rounds, window): (u64, usize, usize) = (arg(1, 1), arg(2, 4), arg(3, 16));
    run_rank("p2p_window", |world| -> Check {
        let (me, n) = (world.rank(), world.size());
        for round in 0..rounds {
            let peers: Vec<i32> = (0..n).filter(|&p| p != me).collect();
            let outgoing: Vec<Vec<Vec<u8>>> = peers
                .iter()
                .map(|&to| {
                    plan(seed, round, me, to, window)
                        .into_iter()
                        .enumerate()
                        .map(|(seq, len)| {
                            let mut b = vec![0u8; len];
                            fill_pattern(&mut b, salt(round, me, to, seq));
                            b
                        })
                        .collect()
                })
                .collect();
            let wanted: Vec<Vec<usize>> = peers
                .iter()
                .map(|&from| plan(seed, round, from, me, window))
                .collect();
            // Every receive buffer is GUARD bytes longer than its message, filled with 0xA5.
            let mut incoming: Vec<Vec<Vec<u8>>> = wanted
                .iter()
                .map(|sizes| sizes.iter().map(|&len| vec![0xA5u8; len + GUARD]).collect())
                .collect();
            let statuses = braid::request::scope(|scope| -> Check<Vec<braid::Status>> {
                let mut reqs = Vec::new();
                for (&from, bufs) in peers.iter().zip(incoming.iter_mut()) {
                    let p = world.process_at_rank(from);
                    for buf in bufs.iter_mut() {
                        reqs.push(
                            p.immediate_receive_into_with_tag(scope, &mut buf[..], TAG)
                                .or_fail(format!("round {round}: receive from {from}"))?,
                        );
                    }
                }
                for (k, &to) in peers.iter().enumerate() {
                    let p = world.process_at_rank(to);
                    for msg in &outgoing[k] {
                        reqs.push(
                            p.immediate_send_with_tag(scope, &msg[..], TAG)
                                .or_fail(format!("round {round}: send to {to}"))?,
                        );
                    }
                }
                braid::request::wait_all(reqs).or_fail(format!("round {round}: wait"))
            })?;
            for (k, &from) in peers.iter().enumerate() {
                for (seq, &len) in wanted[k].iter().enumerate() {
                    let what = format!("round {round}: message {seq} from {from} ({len} B)");
                    let st = &statuses[k * window + seq];
                    ensure(
                        (st.source(), st.tag(), st.count_bytes()) == (from, TAG, len),
                        || format!("{what}: status {st:?}"),
                    )?;
                    let buf = &incoming[k][seq];
                    check_pattern(&buf[..len], salt(round, from, me, seq))
                        .map_err(|e| format!("{what}: {e}"))?;
                    ensure(buf[len..].iter().all(|&b| b == 0xA5), || {
                        format!("{what}: bytes past the message end were written")
                    })?;
                }
            }
        }
        Ok(())
    });
}
