//! `osu_gatherv`: see the `braid_osu` crate docs; `osu_gatherv --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_gatherv", std::env::args().collect())
}
