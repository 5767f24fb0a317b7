//! `osu_compare`: runs an OSU benchmark on Braid and on a system MPI in alternating rounds and
//! prints the medians and their ratio per message size; see `braid_osu::compare`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::compare::main(std::env::args().collect())
}
