//! `osu_reduce`: see the `braid_osu` crate docs; `osu_reduce --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_reduce", std::env::args().collect())
}
