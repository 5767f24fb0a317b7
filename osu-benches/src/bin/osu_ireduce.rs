//! `osu_ireduce`: see the `braid_osu` crate docs; `osu_ireduce --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_ireduce", std::env::args().collect())
}
