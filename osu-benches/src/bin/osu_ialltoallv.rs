//! `osu_ialltoallv`: see the `braid_osu` crate docs; `osu_ialltoallv --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_ialltoallv", std::env::args().collect())
}
