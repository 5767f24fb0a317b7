//! `mpiexec`: the same program as `mpirun`, under MPICH's name. See `braid_launcher`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    braid_launcher::main_entry()
}
