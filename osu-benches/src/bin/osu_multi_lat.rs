//! `osu_multi_lat`: see the `braid_osu` crate docs; `osu_multi_lat --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_multi_lat", std::env::args().collect())
}
