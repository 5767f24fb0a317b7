//! `osu_ireduce_scatter`: see the `braid_osu` crate docs; `osu_ireduce_scatter --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_ireduce_scatter", std::env::args().collect())
}
