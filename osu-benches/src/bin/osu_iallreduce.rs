//! `osu_iallreduce`: see the `braid_osu` crate docs; `osu_iallreduce --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_iallreduce", std::env::args().collect())
}
