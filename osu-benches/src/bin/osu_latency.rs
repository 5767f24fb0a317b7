//! `osu_latency`: see the `braid_osu` crate docs; `osu_latency --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_latency", std::env::args().collect())
}
