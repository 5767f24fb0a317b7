//! Exchanges a business card with the next rank through PMI and prints it. Runs under Braid's
//! `mpirun` (`PMI_PORT`) and under MPICH's hydra `mpiexec` (`PMI_FD`), or alone (singleton).

use std::process::ExitCode;

use braid_pmi::PmiClient;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pmi_hello: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), braid_pmi::PmiError> {
    let Some(mut pmi) = PmiClient::from_env()? else {
        println!("singleton: rank 0 of 1");
        return Ok(());
    };
    let (rank, size) = (pmi.rank(), pmi.size());
    pmi.put(&format!("card{rank}"), &format!("hello-from-{rank}"))?;
    pmi.barrier()?;
    let next = (rank + 1) % size;
    let card = pmi.get(&format!("card{next}"))?;
    println!(
        "rank {rank} of {size} (kvs {}): card{next}={card}",
        pmi.kvsname()
    );
    pmi.barrier()?;
    pmi.finalize()
}
