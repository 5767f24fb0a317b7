//! Minimal ping-pong between ranks 0 and 1; prints the one-way latency of each size.

use braid::traits::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = braid::initialize()?;
    let world = universe.world();
    let rank = world.rank();
    let iters: usize = braid_tests::arg(1, 10000);
    for size in [8usize, 1024] {
        let mut buf = vec![0u8; size];
        for pass in 0..2 {
            world.barrier()?;
            let t = braid::time();
            for _ in 0..iters {
                if rank == 0 {
                    world.process_at_rank(1).send(&buf[..])?;
                    world.process_at_rank(1).receive_into(&mut buf[..])?;
                } else if rank == 1 {
                    world.process_at_rank(0).receive_into(&mut buf[..])?;
                    world.process_at_rank(0).send(&buf[..])?;
                }
            }
            let dt = braid::time() - t;
            if rank == 0 && pass == 1 {
                println!("{size} B one-way {:.2} us", dt / iters as f64 / 2.0 * 1e6);
            }
        }
    }
    Ok(())
}
