//! `osu_ibarrier`: see the `braid_osu` crate docs; `osu_ibarrier --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_ibarrier", std::env::args().collect())
}
