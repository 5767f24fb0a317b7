//! `osu_scatter`: see the `braid_osu` crate docs; `osu_scatter --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_scatter", std::env::args().collect())
}
