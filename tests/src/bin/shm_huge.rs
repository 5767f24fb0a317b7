//! Large transfers from and into the same buffers, round after round, as applications and
//! benchmarks do: the runtime backs those buffers with huge pages on their second use
//! (`BRAID_SHM_HUGE_PAGES`), while the peer may be copying them.
//!
//! Usage: `mpirun -n 2 shm_huge ROUNDS MIB [p2p|bcast]`.
//!
//! - `p2p` (the default): ranks 0 and 1 each keep one send and one receive buffer of MIB MiB.
//!   Every round both send at once (immediate receive, then send, then wait for both), with
//!   contents that change each round, and check what they received byte for byte.
//! - `bcast`: one buffer of MIB MiB per rank; every round one rank, in turn, broadcasts new
//!   contents from it (the collectives' single-copy path) and the other checks them.
//!
//! At the end each rank prints `huge KB` with the huge-page backing (`AnonHugePages` of
//! `/proc/self/smaps`) of the mappings that hold its buffers.

use braid::traits::*;
use braid_tests::{Check, OrFail, arg, check_pattern, ensure, fill_pattern, run_rank, salt_of};

const TAG: i32 = 9;

/// Kilobytes of huge pages in the mappings that overlap `[start, end)`.
fn huge_kb(ranges: &[(usize, usize)]) -> Check<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").or_fail("read /proc/self/smaps")?;
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            inside = ranges.iter().any(|&(s, e)| s < hi && lo < e);
        } else if inside && let Some(kb) = line.strip_prefix("AnonHugePages:") {
            total += kb
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    Ok(total)
}

fn main() {
    let (rounds, mib, mode): (usize, usize, String) = (arg(1, 6), arg(2, 6), arg(3, "p2p".into()));
    run_rank("shm_huge", |world| -> Check {
        let me = world.rank();
        ensure(world.size() == 2, || "run with 2 ranks".into())?;
        let span = |v: &[u8]| (v.as_ptr() as usize, v.as_ptr() as usize + v.len());
        if mode == "bcast" {
            let mut buf = vec![0u8; mib << 20];
            for round in 0..rounds {
                let root = (round % 2) as i32;
                let salt = salt_of(&[round as u64, root as u64, 8]);
                if me == root {
                    fill_pattern(&mut buf, salt);
                } else {
                    buf.fill(0xA5);
                }
                world
                    .process_at_rank(root)
                    .broadcast_into(&mut buf[..])
                    .or_fail(format!("broadcast round {round}"))?;
                check_pattern(&buf, salt).map_err(|e| format!("broadcast round {round}: {e}"))?;
            }
            println!("huge {}", huge_kb(&[span(&buf)])?);
            return Ok(());
        }
        let peer = world.process_at_rank(1 - me);
        let len = mib << 20;
        let mut send = vec![0u8; len];
        let mut recv = vec![0u8; len];
        for round in 0..rounds {
            fill_pattern(&mut send, salt_of(&[round as u64, me as u64, 7]));
            recv.fill(0xA5);
            let status = braid::request::scope(|scope| -> Check<braid::Status> {
                let r = peer
                    .immediate_receive_into_with_tag(scope, &mut recv[..], TAG)
                    .or_fail(format!("round {round}: receive"))?;
                let s = peer
                    .immediate_send_with_tag(scope, &send[..], TAG)
                    .or_fail(format!("round {round}: send"))?;
                let mut done =
                    braid::request::wait_all(vec![r, s]).or_fail(format!("round {round}: wait"))?;
                Ok(done.swap_remove(0))
            })?;
            ensure(status.count_bytes() == len, || {
                format!("round {round}: received {status:?}")
            })?;
            check_pattern(&recv, salt_of(&[round as u64, 1 - me as u64, 7]))
                .map_err(|e| format!("round {round}: {e}"))?;
        }
        println!("huge {}", huge_kb(&[span(&send), span(&recv)])?);
        Ok(())
    });
}
