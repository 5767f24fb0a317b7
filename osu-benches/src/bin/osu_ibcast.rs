//! `osu_ibcast`: see the `braid_osu` crate docs; `osu_ibcast --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_ibcast", std::env::args().collect())
}
