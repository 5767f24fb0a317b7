//! A long one-way stream for rail tests: rank 0 sends `TOTAL` MiB to rank 1 in messages of
//! `MSG` MiB, every byte checked against a pattern of its offset salted by the message
//! index. Long enough that a rail can be taken down while it runs. Other ranks only join the
//! final barrier.
//!
//! Usage: `mpirun -n 2 rail_stream [TOTAL_MIB] [MSG_MIB]` (defaults 256 and 4). Rank 1 prints
//! `rail_stream received N MiB in S s (R MB/s)`.

use std::time::Instant;

use braid::traits::*;
use braid_tests::{OrFail, check_pattern, ensure, fill_pattern, run_rank, salt_of};

fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (total, msg) = (arg(1, 256), arg(2, 4).max(1));
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
