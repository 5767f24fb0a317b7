//! `osu_allreduce`: see the `braid_osu` crate docs; `osu_allreduce --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_allreduce", std::env::args().collect())
}
