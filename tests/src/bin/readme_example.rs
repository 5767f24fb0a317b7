//! The README's API example, compiled so it cannot rot; runs with any number of ranks.

use braid::collective::SystemOperation;
use braid::traits::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = braid::initialize()?;
    let world = universe.world();
    let mut sum = 0.0f64;
    world.all_reduce_into(&(world.rank() as f64), &mut sum, SystemOperation::sum())?;
    let n = f64::from(world.size());
    assert_eq!(sum, n * (n - 1.0) / 2.0);
    let mut data = [0u32; 16];
    if world.rank() == 0 {
        data.iter_mut().enumerate().for_each(|(i, x)| *x = i as u32);
    }
    world.process_at_rank(0).broadcast_into(&mut data[..])?;
    assert_eq!(data[15], 15);
    let half = world.split_by_color(braid::communicator::Color::with_value(world.rank() % 2))?;
    assert!(half.is_some());
    let node = world.split_shared()?;
    assert!(node.size() >= 1);
    println!(
        "readme_example ok rank {} of {}",
        world.rank(),
        world.size()
    );
    Ok(())
}
