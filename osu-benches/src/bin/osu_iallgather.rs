//! `osu_iallgather`: see the `braid_osu` crate docs; `osu_iallgather --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_iallgather", std::env::args().collect())
}
