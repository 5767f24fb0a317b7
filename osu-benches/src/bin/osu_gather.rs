//! `osu_gather`: see the `braid_osu` crate docs; `osu_gather --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_gather", std::env::args().collect())
}
