//! Messages between ranks 0 and 1 of every size class: around the shared-memory fast box's
//! limits (the end of a slot's first cache line, the largest payload a slot holds), the eager
//! thresholds and the rendezvous chunk size, and 64 MiB, in each direction in turn and in both
//! directions at once; every byte is checked against a pattern of its offset. Other ranks only
//! join the barriers.
//!
//! Usage: `mpirun -n 2 p2p_large [MIB]` (MIB: size of the largest message, default 64).
//! Reads `BRAID_EAGER_LIMIT`, `BRAID_SHM_EAGER_LIMIT` and `BRAID_CHUNK_SIZE` (plain byte
//! counts) if set, to aim at the runtime's thresholds.

use braid::traits::*;
use braid_tests::{OrFail, check_pattern, ensure, fill_pattern, run_rank, salt_of};

fn env_bytes(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let mib: usize = braid_tests::arg(1, 64);
    let eager = env_bytes("BRAID_EAGER_LIMIT", 64 << 10);
    let shm_eager = env_bytes("BRAID_SHM_EAGER_LIMIT", 8 << 10);
    let chunk = env_bytes("BRAID_CHUNK_SIZE", 1 << 20);
    // A fast-box record is the compact header and the payload; the slot's first line holds
    // its stamp (8 bytes), the header and the first payload bytes.
    let header = braid_engine::wire::COMPACT_LEN;
    let first_line = 64 - 8 - header;
    let boxed = braid_shm::FASTBOX_RECORD - header;
    let sizes = [
        0,
        1,
        first_line,
        first_line + 1,
        boxed - 1,
        boxed,
        boxed + 1,
        shm_eager - 1,
        shm_eager,
        shm_eager + 1,
        eager - 1,
        eager,
        eager + 1,
        chunk - 1,
        chunk,
        chunk + 1,
        3 * chunk + 7,
        mib << 20,
    ];
    run_rank("p2p_large", |world| {
        ensure(world.size() >= 2, || "needs at least 2 ranks".into())?;
        let rank = world.rank();
        // One send and one receive buffer, reused for every size.
        let max = *sizes.iter().max().unwrap_or(&0);
        let mut sbuf = vec![0u8; max];
        let mut rbuf = vec![0u8; max + 8];
        for (i, &size) in sizes.iter().enumerate() {
            world.barrier().or_fail("barrier")?;
            if rank > 1 {
                continue;
            }
            let peer = world.process_at_rank(1 - rank);
            let tag = i as i32;
            // 0 -> 1, then 1 -> 0, with blocking calls.
            for dir in 0..2 {
                let salt = salt_of(&[size as u64, dir, 1]);
                let what = format!(
                    "{size} B blocking, direction {}",
                    if dir == 0 { "0->1" } else { "1->0" }
                );
                if rank as u64 == dir {
                    fill_pattern(&mut sbuf[..size], salt);
                    peer.send_with_tag(&sbuf[..size], tag).or_fail(&what)?;
                } else {
                    rbuf[size..].fill(0x5A);
                    let st = peer
                        .receive_into_with_tag(&mut rbuf[..size + 8], tag)
                        .or_fail(&what)?;
                    ensure(
                        (st.source(), st.tag(), st.count_bytes()) == (1 - rank, tag, size),
                        || format!("{what}: status {st:?}"),
                    )?;
                    check_pattern(&rbuf[..size], salt).map_err(|e| format!("{what}: {e}"))?;
                    ensure(rbuf[size..].iter().all(|b| *b == 0x5A), || {
                        format!("{what}: bytes past the message end were written")
                    })?;
                }
            }
            // Both directions at once.
            let what = format!("{size} B both directions at once");
            let salt_out = salt_of(&[size as u64, rank as u64, 2]);
            let salt_in = salt_of(&[size as u64, 1 - rank as u64, 2]);
            fill_pattern(&mut sbuf[..size], salt_out);
            let st = braid::request::scope(|scope| {
                let r = peer
                    .immediate_receive_into_with_tag(scope, &mut rbuf[..size], tag)
                    .or_fail(&what)?;
                let s = peer
                    .immediate_send_with_tag(scope, &sbuf[..size], tag)
                    .or_fail(&what)?;
                s.wait().or_fail(format!("{what}: send"))?;
                r.wait().or_fail(format!("{what}: receive"))
            })?;
            ensure(st.count_bytes() == size && st.source() == 1 - rank, || {
                format!("{what}: status {st:?}")
            })?;
            check_pattern(&rbuf[..size], salt_in).map_err(|e| format!("{what}: {e}"))?;
        }
        Ok(())
    });
}
