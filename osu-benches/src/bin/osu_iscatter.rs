//! `osu_iscatter`: see the `braid_osu` crate docs; `osu_iscatter --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_iscatter", std::env::args().collect())
}
