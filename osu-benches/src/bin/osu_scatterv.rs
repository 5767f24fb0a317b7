//! `osu_scatterv`: see the `braid_osu` crate docs; `osu_scatterv --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_scatterv", std::env::args().collect())
}
