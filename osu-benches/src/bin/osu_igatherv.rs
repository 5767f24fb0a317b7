//! `osu_igatherv`: see the `braid_osu` crate docs; `osu_igatherv --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_igatherv", std::env::args().collect())
}
