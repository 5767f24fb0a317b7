//! Passes a token around the ring of all ranks, checking its value at every hop.

use braid::traits::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = braid::initialize()?;
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    let rounds: u64 = braid_tests::arg(1, 10);
    let next = world.process_at_rank((rank + 1) % size);
    let prev = world.process_at_rank((rank + size - 1) % size);
    for round in 0..rounds {
        if rank == 0 {
            next.send(&round)?;
            let (v, _) = prev.receive::<u64>()?;
            assert_eq!(v, round + size as u64 - 1, "token corrupted");
        } else {
            let (v, st) = prev.receive::<u64>()?;
            assert_eq!(st.source(), (rank + size - 1) % size);
            next.send(&(v + 1))?;
        }
    }
    world.barrier()?;
    println!("ring ok rank {rank} of {size}");
    Ok(())
}
