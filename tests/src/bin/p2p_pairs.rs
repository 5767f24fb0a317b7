//! All-pairs exchange: every ordered pair of ranks exchanges messages of 0 B, 1 B, 8 KiB,
//! 64 KiB + 1 and 1 MiB, first with `send_receive_into` (one peer offset at a time), then with
//! immediate sends and receives to and from every peer at once; every byte is checked.
//!
//! Usage: `mpirun -n N p2p_pairs [ROUNDS]`.

use braid::traits::*;
use braid_tests::{Check, OrFail, check_pattern, ensure, pattern, run_rank, salt_of};

const SIZES: [usize; 5] = [0, 1, 8 << 10, (64 << 10) + 1, 1 << 20];

fn main() {
    let rounds: u64 = braid_tests::arg(1, 1);
    run_rank("p2p_pairs", |world| {
        for round in 0..rounds {
            sendrecv_all(world, round)?;
            immediate_all(world, round)?;
        }
        Ok(())
    });
}

fn salt(from: i32, to: i32, size: usize, round: u64, kind: u64) -> u64 {
    salt_of(&[from as u64, to as u64, size as u64, round, kind])
}

fn sendrecv_all(world: &braid::SimpleCommunicator, round: u64) -> Check {
    let (rank, n) = (world.rank(), world.size());
    for &size in &SIZES {
        for d in 1..n {
            let to = (rank + d) % n;
            let from = (rank + n - d) % n;
            let sbuf = pattern(size, salt(rank, to, size, round, 1));
            // One spare byte: the count must say `size`, not the capacity.
            let mut rbuf = vec![0xAAu8; size + 1];
            let what = || format!("send_receive_into {size} B to {to} / from {from}");
            let st = braid::point_to_point::send_receive_into(
                &sbuf[..],
                &world.process_at_rank(to),
                &mut rbuf[..],
                &world.process_at_rank(from),
            )
            .or_fail(what())?;
            ensure(
                (st.source(), st.tag(), st.count_bytes()) == (from, 0, size),
                || format!("{}: status {st:?}", what()),
            )?;
            check_pattern(&rbuf[..size], salt(from, rank, size, round, 1))
                .map_err(|e| format!("{}: {e}", what()))?;
            ensure(rbuf[size] == 0xAA, || {
                format!("{}: wrote past the message end", what())
            })?;
        }
    }
    Ok(())
}

fn immediate_all(world: &braid::SimpleCommunicator, round: u64) -> Check {
    let (rank, n) = (world.rank(), world.size());
    let peers: Vec<i32> = (0..n).filter(|p| *p != rank).collect();
    for (si, &size) in SIZES.iter().enumerate() {
        let tag = si as i32 + 10;
        let sbufs: Vec<Vec<u8>> = peers
            .iter()
            .map(|&to| pattern(size, salt(rank, to, size, round, 2)))
            .collect();
        let mut rbufs: Vec<Vec<u8>> = peers.iter().map(|_| vec![0u8; size]).collect();
        let statuses = braid::request::scope(|scope| {
            let mut recvs = Vec::new();
            for (&from, rb) in peers.iter().zip(rbufs.iter_mut()) {
                let r = world
                    .process_at_rank(from)
                    .immediate_receive_into_with_tag(scope, &mut rb[..], tag)
                    .or_fail(format!("irecv {size} B from {from}"))?;
                recvs.push(r);
            }
            let mut sends = Vec::new();
            for (&to, sb) in peers.iter().zip(sbufs.iter()) {
                let r = world
                    .process_at_rank(to)
                    .immediate_send_with_tag(scope, &sb[..], tag)
                    .or_fail(format!("isend {size} B to {to}"))?;
                sends.push(r);
            }
            braid::request::wait_all(sends).or_fail(format!("wait_all sends of {size} B"))?;
            braid::request::wait_all(recvs).or_fail(format!("wait_all receives of {size} B"))
        })?;
        for ((&from, rb), st) in peers.iter().zip(&rbufs).zip(&statuses) {
            ensure(
                (st.source(), st.tag(), st.count_bytes()) == (from, tag, size),
                || format!("immediate {size} B from {from}: status {st:?}"),
            )?;
            check_pattern(rb, salt(from, rank, size, round, 2))
                .map_err(|e| format!("immediate {size} B from {from}: {e}"))?;
        }
    }
    Ok(())
}
