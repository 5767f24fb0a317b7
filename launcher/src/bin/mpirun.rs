//! `mpirun`: starts an MPI job of Braid (or any PMI-1) programs. See `braid_launcher`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_launcher::main_entry()
}
