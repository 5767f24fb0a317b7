//! `osu_bcast`: see the `braid_osu` crate docs; `osu_bcast --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_bcast", std::env::args().collect())
}
