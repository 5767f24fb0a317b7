//! Wildcard stress: many messages of random sizes (0 B to 200 KiB, across the eager /
//! rendezvous threshold) received with `ANY_SOURCE`, `ANY_TAG`, specific tags and specific
//! sources mixed.
//!
//! Usage: `mpirun -n N p2p_wildcard SEED COUNT MODE` where MODE is `to0` (every rank sends
//! COUNT messages to rank 0) or `all` (every rank sends COUNT messages to every other rank).
//!
//! Every sender posts all its sends as immediate sends up front (so a receive for any tag
//! that is still owed can always be matched: no deadlock whatever the receive order), then
//! receives. The message list of every (sender, receiver) pair is derived from the seed, so
//! the receiver knows what it is owed. Every message carries (sender, sequence, tag, length)
//! in its first 16 bytes when it is that long, and a pattern salted by (sender, receiver,
//! sequence) everywhere else. For each receive the program checks that the message matched is
//! the earliest not yet received one from its source that the receive's tag selector accepts
//! (MPI's non-overtaking rule), that its status (source, tag, count) is right, that its content
//! is right, and at the end that every message arrived exactly once.

use braid::traits::*;
use braid_tests::{Check, OrFail, check_pattern_from, ensure, fill_pattern, run_rank, salt_of};
use rand::{Rng, SeedableRng, rngs::StdRng};

const MAX: usize = 200 << 10;
const TAGS: i32 = 5;

#[derive(Clone, Copy, Debug)]
struct Msg {
    tag: i32,
    len: usize,
}

/// The messages `from` sends to `to`, in send order.
fn plan(seed: u64, from: i32, to: i32, count: usize) -> Vec<Msg> {
    let mut rng = StdRng::seed_from_u64(salt_of(&[seed, from as u64, to as u64]));
    (0..count)
        .map(|_| {
            let len = match rng.gen_range(0..100) {
                0..50 => rng.gen_range(0..=64),
                50..75 => rng.gen_range(65..65535),
                75..85 => [65535, 65536, 65537][rng.gen_range(0..3)],
                _ => rng.gen_range(65538..=MAX),
            };
            Msg {
                tag: rng.gen_range(0..TAGS),
                len,
            }
        })
        .collect()
}

fn salt(from: i32, to: i32, seq: usize) -> u64 {
    salt_of(&[from as u64, to as u64, seq as u64, 77])
}

fn body(from: i32, to: i32, seq: usize, m: Msg) -> Vec<u8> {
    let mut b = vec![0u8; m.len];
    fill_pattern(&mut b, salt(from, to, seq));
    if m.len >= 16 {
        b[0..4].copy_from_slice(&(from as u32).to_le_bytes());
        b[4..8].copy_from_slice(&(seq as u32).to_le_bytes());
        b[8..12].copy_from_slice(&(m.tag as u32).to_le_bytes());
        b[12..16].copy_from_slice(&(m.len as u32).to_le_bytes());
    }
    b
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let all = match args.next().as_deref() {
        None | Some("to0") => false,
        Some("all") => true,
        Some(other) => {
            eprintln!("p2p_wildcard: MODE must be to0 or all, not {other}");
            std::process::exit(2);
        }
    };
    run_rank("p2p_wildcard", |world| run(world, seed, count, all));
}

fn run(world: &braid::SimpleCommunicator, seed: u64, count: usize, all: bool) -> Check {
    let (rank, n) = (world.rank(), world.size());
    let dests: Vec<i32> = if all {
        (0..n).filter(|r| *r != rank).collect()
    } else if rank != 0 {
        vec![0]
    } else {
        vec![]
    };
    let sources: Vec<i32> = if all || rank == 0 {
        (0..n).filter(|r| *r != rank).collect()
    } else {
        vec![]
    };
    // Interleave the sends to the different destinations.
    let mut outgoing = Vec::new();
    let plans: Vec<Vec<Msg>> = dests.iter().map(|&d| plan(seed, rank, d, count)).collect();
    for seq in 0..count {
        for (plan, &d) in plans.iter().zip(&dests) {
            let m = plan[seq];
            outgoing.push((d, seq, m, body(rank, d, seq, m)));
        }
    }
    braid::request::scope(|scope| {
        let mut sends = Vec::new();
        for (d, seq, m, b) in &outgoing {
            let r = world
                .process_at_rank(*d)
                .immediate_send_with_tag(scope, &b[..], m.tag)
                .or_fail(format!("isend #{seq} ({} B, tag {}) to {d}", m.len, m.tag))?;
            sends.push(r);
        }
        receive_all(world, seed, count, &sources)?;
        braid::request::wait_all(sends).or_fail("wait_all of the sends")?;
        Ok::<_, String>(())
    })?;
    world.barrier().or_fail("final barrier")?;
    Ok(())
}

/// What the receiver knows about one sender.
struct Owed {
    rank: i32,
    plan: Vec<Msg>,
    got: Vec<bool>,
}

impl Owed {
    /// The earliest message not yet received whose tag `tag` accepts.
    fn earliest(&self, tag: Option<i32>) -> Option<usize> {
        (0..self.plan.len()).find(|&i| !self.got[i] && tag.is_none_or(|t| self.plan[i].tag == t))
    }
}

fn receive_all(
    world: &braid::SimpleCommunicator,
    seed: u64,
    count: usize,
    sources: &[i32],
) -> Check {
    let rank = world.rank();
    let mut owed: Vec<Owed> = sources
        .iter()
        .map(|&s| Owed {
            rank: s,
            plan: plan(seed, s, rank, count),
            got: vec![false; count],
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(salt_of(&[seed, rank as u64, 99]));
    let mut buf = vec![0u8; MAX + 16];
    let total = count * sources.len();
    for i in 0..total {
        // Pick a selector that some owed message satisfies.
        let open: Vec<usize> = (0..owed.len())
            .filter(|&o| owed[o].earliest(None).is_some())
            .collect();
        let pick = open[rng.gen_range(0..open.len())];
        let some_owed_tag = {
            let o = &owed[pick];
            let left: Vec<i32> = (0..count)
                .filter(|&k| !o.got[k])
                .map(|k| o.plan[k].tag)
                .collect();
            left[rng.gen_range(0..left.len())]
        };
        let (src, tag) = match rng.gen_range(0..100) {
            0..40 => (None, None),
            40..70 => (None, Some(some_owed_tag)),
            70..85 => (Some(owed[pick].rank), None),
            _ => (Some(owed[pick].rank), Some(some_owed_tag)),
        };
        let what = format!(
            "receive #{i} (source {}, tag {})",
            src.map_or("ANY".into(), |s: i32| s.to_string()),
            tag.map_or("ANY".into(), |t: i32| t.to_string())
        );
        let st = match (src, tag) {
            (None, None) => world.any_process().receive_into(&mut buf[..]),
            (None, Some(t)) => world.any_process().receive_into_with_tag(&mut buf[..], t),
            (Some(s), None) => world.process_at_rank(s).receive_into(&mut buf[..]),
            (Some(s), Some(t)) => world
                .process_at_rank(s)
                .receive_into_with_tag(&mut buf[..], t),
        }
        .or_fail(&what)?;
        let from = st.source();
        let o = owed.iter_mut().find(|o| o.rank == from).ok_or_else(|| {
            format!("{what}: status names source {from}, which sends nothing here")
        })?;
        ensure(src.is_none_or(|s| s == from), || {
            format!("{what}: matched source {from}")
        })?;
        ensure(tag.is_none_or(|t| t == st.tag()), || {
            format!("{what}: matched tag {}", st.tag())
        })?;
        let seq = o.earliest(tag).ok_or_else(|| {
            format!(
                "{what}: got {} B with tag {} from {from}, which owes no such message",
                st.count_bytes(),
                st.tag()
            )
        })?;
        let m = o.plan[seq];
        let data = &buf[..st.count_bytes()];
        // Non-overtaking: the match must be the earliest owed message the selector accepts.
        if data.len() >= 16 {
            let word = |k: usize| {
                u32::from_le_bytes(data[4 * k..4 * k + 4].try_into().unwrap_or_default())
            };
            let (hs, hq, ht, hl) = (word(0), word(1), word(2), word(3));
            ensure(
                hs == from as u32 && ht == st.tag() as u32 && hl as usize == data.len(),
                || {
                    format!(
                        "{what}: header says sender {hs} seq {hq} tag {ht} len {hl}, status says source {from} tag {} count {}",
                        st.tag(),
                        data.len()
                    )
                },
            )?;
            ensure(hq as usize == seq, || {
                format!(
                    "{what}: non-overtaking violated: got message #{hq} (tag {ht}) from {from}, but #{seq} (tag {}, {} B) is earlier and unreceived{}",
                    m.tag,
                    m.len,
                    if (hq as usize) < count && o.got[hq as usize] {
                        " (and #{hq} was already received: duplicate)"
                    } else {
                        ""
                    }
                )
            })?;
        }
        ensure((st.tag(), st.count_bytes()) == (m.tag, m.len), || {
            format!(
                "{what}: non-overtaking or status wrong: from {from} got tag {} count {}, expected message #{seq} tag {} len {}",
                st.tag(),
                st.count_bytes(),
                m.tag,
                m.len
            )
        })?;
        check_pattern_from(
            data,
            salt(from, rank, seq),
            if data.len() >= 16 { 16 } else { 0 },
        )
        .map_err(|e| format!("{what}: message #{seq} from {from}: {e}"))?;
        o.got[seq] = true;
    }
    for o in &owed {
        ensure(o.got.iter().all(|g| *g), || {
            format!("messages from {} missing", o.rank)
        })?;
    }
    // Nothing more may arrive.
    if let Some(st) = world
        .any_process()
        .immediate_probe()
        .or_fail("final iprobe")?
    {
        return Err(format!("an extra message arrived: {st:?}"));
    }
    Ok(())
}
