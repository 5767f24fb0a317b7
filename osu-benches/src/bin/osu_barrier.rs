//! `osu_barrier`: see the `braid_osu` crate docs; `osu_barrier --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_barrier", std::env::args().collect())
}
