//! `osu_alltoallv`: see the `braid_osu` crate docs; `osu_alltoallv --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_alltoallv", std::env::args().collect())
}
