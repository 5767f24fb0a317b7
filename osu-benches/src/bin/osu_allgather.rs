//! `osu_allgather`: see the `braid_osu` crate docs; `osu_allgather --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_allgather", std::env::args().collect())
}
