//! `osu_paper`: the paper's tables and figures on the namespace testbed; see
//! `braid_osu::paper` and `osu_paper --help`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_osu::paper::main()
}
