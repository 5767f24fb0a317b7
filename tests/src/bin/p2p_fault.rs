//! A rank dies mid-run while rank 0 is blocked in a receive from it.
//!
//! Usage: `mpirun -n N p2p_fault MODE [MARKER]` with MODE
//! - `kill`: rank 1 sends itself SIGKILL while rank 0 waits in a receive from rank 1;
//! - `kill-any`: the same, rank 0 waits in an `ANY_SOURCE` receive;
//! - `abort`: rank 1 calls `world.abort(5)` while rank 0 waits in a receive from rank 1;
//! - `panic`: rank 1 panics while rank 0 waits in a receive from rank 1 (unwinding drops the
//!   universe, which must end the job rather than wait in finalize for rank 0);
//! - `hang`: every rank prints `rank R waits` and blocks in a receive that never matches (the
//!   test then kills mpirun itself).
//!
//! MARKER is ignored; the test puts it on the command line to find leftover processes.
//! Before dying rank 1 prints `rank 1 dies at UNIX_NANOS` so the test can time the job's end.
//! Ranks 2.. wait in a receive that never matches. If rank 0's receive returns, it reports
//! what it got on stderr and exits 3.

use std::io::Write;

use braid::traits::*;
use braid_tests::{OrFail, check_pattern, ensure, pattern, run_rank};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if !["kill", "kill-any", "abort", "panic", "hang"].contains(&mode.as_str()) {
        eprintln!("p2p_fault: MODE must be kill, kill-any, abort, panic or hang, not '{mode}'");
        std::process::exit(2);
    }
    run_rank("p2p_fault", |world| {
        let (rank, n) = (world.rank(), world.size());
        ensure(n >= 2, || "needs at least 2 ranks".into())?;
        if rank >= 2 || mode == "hang" {
            if mode == "hang" {
                println!("rank {rank} waits");
                let _ = std::io::stdout().flush();
            }
            let mut b = [0u8; 1];
            let r = world
                .process_at_rank(0)
                .receive_into_with_tag(&mut b[..], 999);
            return Err(format!(
                "rank {rank}: receive that never matches returned {r:?}"
            ));
        }
        let peer = world.process_at_rank(1 - rank);
        // Some traffic first, eager and rendezvous.
        for (i, size) in [8usize, 70_000, 1 << 20, 100].into_iter().enumerate() {
            let out = pattern(size, i as u64 + 10 * rank as u64);
            let mut back = vec![0u8; size];
            braid::point_to_point::send_receive_into(&out[..], &peer, &mut back[..], &peer)
                .or_fail(format!("exchange of {size} B"))?;
            check_pattern(&back, i as u64 + 10 * (1 - rank) as u64)?;
        }
        if rank == 0 {
            peer.send_with_tag(&[1u8][..], 1)
                .or_fail("send 'about to block'")?;
            let mut b = [0u8; 16];
            let r = if mode == "kill-any" {
                world.any_process().receive_into_with_tag(&mut b[..], 2)
            } else {
                peer.receive_into_with_tag(&mut b[..], 2)
            };
            eprintln!("p2p_fault: rank 0: blocking receive from rank 1 returned {r:?}");
            if let Err(e) = r {
                eprintln!("p2p_fault: rank 0: error text: {e}");
            }
            std::process::exit(3);
        }
        let mut b = [0u8; 1];
        peer.receive_into_with_tag(&mut b[..], 1)
            .or_fail("receive 'about to block'")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        println!("rank 1 dies at {now}");
        let _ = std::io::stdout().flush();
        if mode == "abort" {
            world.abort(5);
        }
        if mode == "panic" {
            panic!("p2p_fault: rank 1 panics on purpose");
        }
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).or_fail("raise SIGKILL")?;
        Err("still alive after SIGKILL".into())
    });
}
