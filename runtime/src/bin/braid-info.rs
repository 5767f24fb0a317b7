//! Prints the collective algorithms and thresholds in force (from the `BRAID_COLL_*`
//! environment variables); needs no job.

fn main() {
    println!("{}", braid::collective::info());
}
