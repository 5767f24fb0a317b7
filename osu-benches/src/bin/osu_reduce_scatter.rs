//! `osu_reduce_scatter`: see the `braid_osu` crate docs; `osu_reduce_scatter --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_reduce_scatter", std::env::args().collect())
}
