//! `osu_ialltoall`: see the `braid_osu` crate docs; `osu_ialltoall --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_ialltoall", std::env::args().collect())
}
