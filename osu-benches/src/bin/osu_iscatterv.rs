//! `osu_iscatterv`: see the `braid_osu` crate docs; `osu_iscatterv --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_iscatterv", std::env::args().collect())
}
