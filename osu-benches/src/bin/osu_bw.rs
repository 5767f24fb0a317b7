//! `osu_bw`: see the `braid_osu` crate docs; `osu_bw --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_bw", std::env::args().collect())
}
