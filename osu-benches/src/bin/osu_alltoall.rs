//! `osu_alltoall`: see the `braid_osu` crate docs; `osu_alltoall --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_alltoall", std::env::args().collect())
}
