//! `osu_bibw`: see the `braid_osu` crate docs; `osu_bibw --help` lists the options.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::builtin::run("osu_bibw", std::env::args().collect())
}
