//! OSU micro-benchmarks 7.x look-alikes for Braid, written once over a small [`Backend`] trait.
//!
//! The benchmarks (`osu_latency`, `osu_bw`, `osu_bibw`, `osu_mbw_mr`, `osu_multi_lat`) follow
//! the OSU micro-benchmarks 7.3 point-to-point programs: the same default message sizes, loop
//! counts, window size, validation pattern and text output, so scripts that parse OSU output
//! parse these too. Each benchmark runs over one of two backends, chosen at run time with
//! `--backend`:
//!
//! - `braid` (default): Braid's own Rust API (crate `braid`).
//! - `rsmpi` (cargo feature `rsmpi`): a system MPI (Open MPI or MPICH) through the rsmpi crate,
//!   so the very same benchmark code can be run side by side on Braid and on a system MPI.
//!
//! Besides OSU's text, results can be written as JSON or CSV (`--format`, `--output`), one
//! record per message size; `osu_compare` runs a benchmark on Braid and on a system MPI in
//! alternating rounds and prints the ratio per size (see [`compare`]).
//!
//! What this crate does not do: it opens no sockets and spawns no ranks itself (`mpirun` does),
//! except for `osu_compare`, which only spawns launchers; it does not implement OSU's
//! accelerator (CUDA/ROCm) buffers, datatypes other than `MPI_CHAR`, sessions, or tail-latency
//! options beyond the p50/p99 fields of the machine-readable records.
//!
//! # Glossary
//! - *rank*: a process of the job, numbered from 0; only rank 0 prints results.
//! - *window*: the number of nonblocking messages a bandwidth benchmark keeps in flight before
//!   it waits for all of them (`-W`, default 64).
//! - *pair*: in `osu_mbw_mr` and `osu_multi_lat`, rank `i < n/2` and rank `i + n/2`.
//! - *warm-up*: iterations run before timing starts (`-x`), not counted in the results.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod compare;
pub mod options;
pub mod report;
pub mod validation;

pub use backend::Backend;

/// Benchmarks that `mpirun` can run by name without a path.
pub mod builtin {
    use std::process::ExitCode;

    /// Names of the bundled benchmark programs.
    pub const NAMES: &[&str] = &[
        "osu_latency",
        "osu_bw",
        "osu_bibw",
        "osu_mbw_mr",
        "osu_multi_lat",
    ];

    /// Runs bundled benchmark `name` with command-line `args` (args[0] is the program name).
    ///
    /// Prints usage errors and run-time errors to standard error and returns a failure exit
    /// code for them, and for a run whose validation (`-c`) failed.
    pub fn run(name: &str, args: Vec<String>) -> ExitCode {
        crate::bench::main(name, args)
    }
}
