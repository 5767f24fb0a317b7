//! `osu_igather`: see the `braid_osu` crate docs; `osu_igather --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_igather", std::env::args().collect())
}
