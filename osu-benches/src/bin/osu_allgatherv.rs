//! `osu_allgatherv`: see the `braid_osu` crate docs; `osu_allgatherv --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_allgatherv", std::env::args().collect())
}
