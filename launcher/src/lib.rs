//! `mpirun` / `mpiexec` for Braid: starts the ranks of a job, serves them PMI-1, forwards
//! their output, and turns any failure into a prompt, non-zero job exit with nothing left
//! behind.
//!
//! Flow of one job ([`main_entry`]):
//! 1. [`cli`] parses Open MPI / MPICH style flags.
//! 2. [`hosts`] reads `-H` / `--hostfile` and places ranks on hosts by slots.
//! 3. [`spawn`] resolves the program (path, `PATH`, or a bundled benchmark), then starts each
//!    rank in its own process group, locally or through `--launch-agent`, with the
//!    environment of [`mod@env`], and binds local ranks to cores.
//! 4. [`pmi`] runs the PMI-1 server ([`braid_pmi::KvsServer`]) on TCP.
//! 5. [`stdio`] forwards each rank's output line by line.
//!    With `--testbed SPEC`, [`mod@testbed`] supplies hosts, launch agent and PMI address.
//! 6. [`monitor`] waits for the ranks and handles exits, signals, aborts and the time limit.
//!
//! What it does not do: it does not copy programs to other hosts, authenticate PMI peers
//! (the server listens on loopback unless the job spans hosts), or support MPMD (`:`) command
//! lines, `PMI_Spawn`, or PMI-2.
//!
//! # Glossary
//! - *rank*: index of a process in the job, `0..n`.
//! - *slot*: room for one rank on a host; `-H a:2,b:2` gives four.
//! - *local rank*: index of a rank among the ranks on its host.
//! - *launch agent*: a command template that starts a rank on another host (`ssh {host}`,
//!   `ip netns exec {host}`).
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

use std::process::ExitCode;

pub mod cli;
pub mod env;
pub mod hosts;
pub mod monitor;
pub mod pmi;
pub mod signals;
pub mod spawn;
pub mod stdio;
pub mod testbed;

/// Exit code when the launcher itself cannot start the job (bad host list, spawn failure).
pub const EXIT_SETUP: u8 = 1;
/// Exit code when the program cannot be found, as a shell does.
pub const EXIT_NOT_FOUND: u8 = 127;
/// Exit code when `--timeout` expires, as `timeout(1)` does.
pub const EXIT_TIMEOUT: u8 = 124;

#[cfg(feature = "builtin")]
fn run_builtin(name: &str, args: Vec<String>) -> ExitCode {
    braid_osu::builtin::run(name, args)
}

#[cfg(not(feature = "builtin"))]
fn run_builtin(name: &str, _args: Vec<String>) -> ExitCode {
    eprintln!(
        "mpirun: bundled benchmark {name:?} unavailable: built without the `builtin` feature"
    );
    ExitCode::from(EXIT_NOT_FOUND)
}

/// The `mpirun` / `mpiexec` main: handles `--braid-builtin NAME ARGS...` (re-execution as a
/// bundled benchmark), then parses the command line and runs the job.
pub fn main_entry() -> ExitCode {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if argv.get(1).map(String::as_str) == Some(spawn::BUILTIN_FLAG) {
        let Some(name) = argv.get(2).cloned() else {
            eprintln!("mpirun: {} needs a benchmark name", spawn::BUILTIN_FLAG);
            return ExitCode::from(2);
        };
        return run_builtin(&name, argv[2..].to_vec());
    }
    let cli = cli::parse(argv);
    match monitor::run_job(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("mpirun: {e:#}");
            let code = if e.downcast_ref::<spawn::ProgramNotFound>().is_some() {
                EXIT_NOT_FOUND
            } else {
                EXIT_SETUP
            };
            ExitCode::from(code)
        }
    }
}
