//! `osu_iallgatherv`: see the `braid_osu` crate docs; `osu_iallgatherv --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_iallgatherv", std::env::args().collect())
}
