//! OSU micro-benchmarks 7.x look-alikes for Braid, written once over a small [`Backend`] trait.
//!
//! The point-to-point benchmarks (`osu_latency`, `osu_bw`, `osu_bibw`, `osu_mbw_mr`,
//! `osu_multi_lat`) follow the OSU micro-benchmarks 7.3 point-to-point programs: the same
//! default message sizes, loop counts, window size, validation pattern and text output, so
//! scripts that parse OSU output parse these too. The collective benchmarks (`osu_barrier`,
//! `osu_bcast`, `osu_reduce`, `osu_allreduce`, `osu_allgather(v)`, `osu_alltoall(v)`,
//! `osu_gather(v)`, `osu_scatter(v)`, `osu_reduce_scatter`) and the nonblocking ones
//! (`osu_ibarrier`, `osu_ibcast`, `osu_iallreduce`, `osu_iallgather(v)`, `osu_ialltoall(v)`,
//! `osu_ireduce`, `osu_igather(v)`, `osu_iscatter(v)`, `osu_ireduce_scatter`) follow OSU 7.3's
//! collective programs the same way (see [`mod@bench`]). Each benchmark runs over one of two backends, chosen at run time with `--backend`:
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
//! accelerator (CUDA/ROCm) buffers, datatypes other than `MPI_CHAR` (and `MPI_FLOAT` for
//! reductions), sessions, tail-latency options beyond the p50/p99 fields of the
//! machine-readable records, or the collectives listed as missing in [`mod@bench`].
//!
//! # Glossary
//! - *rank*: a process of the job, numbered from 0; only rank 0 prints results.
//! - *window*: the number of nonblocking messages a bandwidth benchmark keeps in flight before
//!   it waits for all of them (`-W`, default 64).
//! - *pair*: in `osu_mbw_mr` and `osu_multi_lat`, rank `i < n/2` and rank `i + n/2`.
//! - *warm-up*: iterations run before timing starts (`-x`), not counted in the results.
//! - *overlap*: for a nonblocking collective, the share of its pure communication time hidden
//!   behind computation between its start and its wait (OSU's `Overlap(%)`).
// Unsafe code only where a window of receives shares one buffer (`Backend::window`).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod compare;
pub mod options;
pub mod paper;
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
        "osu_barrier",
        "osu_bcast",
        "osu_reduce",
        "osu_allreduce",
        "osu_allgather",
        "osu_allgatherv",
        "osu_alltoall",
        "osu_alltoallv",
        "osu_gather",
        "osu_gatherv",
        "osu_scatter",
        "osu_scatterv",
        "osu_reduce_scatter",
        "osu_ibarrier",
        "osu_ibcast",
        "osu_iallreduce",
        "osu_iallgather",
        "osu_ialltoall",
        "osu_ireduce",
        "osu_igather",
        "osu_igatherv",
        "osu_iscatter",
        "osu_iscatterv",
        "osu_iallgatherv",
        "osu_ialltoallv",
        "osu_ireduce_scatter",
    ];

    /// Runs bundled benchmark `name` with command-line `args` (`args[0]` is the program name).
    ///
    /// Prints usage errors and run-time errors to standard error and returns a failure exit
    /// code for them, and for a run whose validation (`-c`) failed.
    pub fn run(name: &str, args: Vec<String>) -> ExitCode {
        crate::bench::main(name, args)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtin_names_match_the_benchmarks() {
        let names: Vec<&str> = crate::options::Bench::ALL
            .iter()
            .map(|b| b.name())
            .collect();
        assert_eq!(names, crate::builtin::NAMES);
        for name in crate::builtin::NAMES {
            let bin = format!("{}/src/bin/{name}.rs", env!("CARGO_MANIFEST_DIR"));
            assert!(std::path::Path::new(&bin).exists(), "{bin} is missing");
        }
    }
}
