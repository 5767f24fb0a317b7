//! `osu_mbw_mr`: see the `braid_osu` crate docs; `osu_mbw_mr --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_mbw_mr", std::env::args().collect())
}
