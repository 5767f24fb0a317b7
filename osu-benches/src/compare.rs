//! `osu_compare`: runs one benchmark on Braid and on a system MPI in alternating rounds and
//! prints, per message size, the median of each and their ratio.
//!
//! Per round it starts two jobs, each writing JSON records to a temporary file:
//!
//! - Braid: `<braid-mpirun> -n N [--braid-args] <braid-bin-dir>/<bench> --format json --output F
//!   [bench args]`
//! - system MPI: `<system-mpirun> -n N [--mpi-args] <rsmpi-bin-dir>/<bench> --backend rsmpi
//!   --format json --output F [bench args]` with the `--env` variables set (for Open MPI,
//!   `OMPI_ALLOW_RUN_AS_ROOT=1` and `OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1` are always set).
//!
//! The order alternates (Braid first in even rounds, the system MPI first in odd rounds), so
//! slow drift of the machine does not favour either. The system-MPI binary is the same
//! benchmark built with the `rsmpi` feature against that MPI:
//!
//! ```text
//! CARGO_TARGET_DIR=target-rsmpi cargo build --release -p braid-osu --features rsmpi
//! MPICC=mpicc.mpich CARGO_TARGET_DIR=target-rsmpi-mpich cargo build --release -p braid-osu --features rsmpi
//! ```
//!
//! # Examples
//! ```text
//! osu_compare osu_bw --rounds 3 --mpi-args "--mca pml ob1 --mca btl self,tcp --mca btl_tcp_if_include lo" -- -m 65536:4194304
//! osu_compare osu_latency --system mpich --env MPIR_CVAR_NOLOCAL=1 -- -m 8:8
//! osu_compare osu_mbw_mr -n 4 --mpi-args "--oversubscribe"
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::options::Bench;
use crate::report::{self, Record};

/// The system MPI to compare with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SystemMpi {
    /// MPICH's hydra `mpiexec.mpich`; binary built with `MPICC=mpicc.mpich`.
    Mpich,
    /// Open MPI's `mpirun.openmpi`.
    Openmpi,
}

impl SystemMpi {
    fn name(self) -> &'static str {
        match self {
            Self::Mpich => "mpich",
            Self::Openmpi => "openmpi",
        }
    }

    fn default_launcher(self) -> &'static str {
        match self {
            Self::Mpich => "mpiexec.mpich",
            Self::Openmpi => "mpirun.openmpi",
        }
    }

    fn default_bin_dir(self) -> &'static str {
        match self {
            Self::Mpich => "target-rsmpi-mpich/release",
            Self::Openmpi => "target-rsmpi/release",
        }
    }
}

/// Options of `osu_compare`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "osu_compare",
    version,
    about = "Run an OSU benchmark on Braid and on a system MPI in alternating rounds and compare"
)]
pub struct CompareArgs {
    /// Benchmark to run: any bundled benchmark (`osu_latency`, `osu_bw`, `osu_allreduce`, ...);
    /// the comparison uses each record's headline value (latency, bandwidth, or for the
    /// nonblocking collectives the overall time).
    pub bench: String,

    /// Number of rounds (each runs Braid once and the system MPI once).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,

    /// Ranks per job (default 2; 4 for osu_mbw_mr and osu_multi_lat).
    #[arg(short = 'n', long = "np")]
    pub np: Option<u32>,

    /// Braid's launcher.
    #[arg(long, default_value = "target/release/mpirun")]
    pub braid_mpirun: PathBuf,

    /// Directory of the Braid-backend benchmark binaries.
    #[arg(long, default_value = "target/release")]
    pub braid_bin_dir: PathBuf,

    /// Extra arguments for Braid's launcher (split at whitespace).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub braid_args: String,

    /// System MPI to compare with.
    #[arg(long, value_enum, default_value_t = SystemMpi::Openmpi)]
    pub system: SystemMpi,

    /// The system MPI's launcher (default mpirun.openmpi or mpiexec.mpich).
    #[arg(long)]
    pub system_mpirun: Option<PathBuf>,

    /// Directory of the benchmark binaries built with `--features rsmpi` against the system
    /// MPI (default target-rsmpi/release, or target-rsmpi-mpich/release for MPICH).
    #[arg(long)]
    pub rsmpi_bin_dir: Option<PathBuf>,

    /// Extra arguments for the system launcher, e.g. "--mca btl self,tcp" (split at whitespace).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub mpi_args: String,

    /// Environment variable KEY=VALUE for the system-MPI jobs (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Time limit of each job in seconds; a job over it is killed and the comparison fails.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,

    /// Also write the comparison (every round's value per size) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Arguments for the benchmark itself, after `--` (e.g. `-- -m 1:4096 -i 1000`).
    #[arg(last = true)]
    pub bench_args: Vec<String>,
}

/// One row of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Message size in bytes.
    pub size: usize,
    /// Unit of the values (`us` or `MB/s`).
    pub unit: String,
    /// Braid's value in each round.
    pub braid: Vec<f64>,
    /// The system MPI's value in each round.
    pub system: Vec<f64>,
    /// Median of `braid`.
    pub braid_median: f64,
    /// Median of `system`.
    pub system_median: f64,
    /// `braid_median / system_median`.
    pub ratio: f64,
}

/// Entry point of `osu_compare`.
pub fn main(args: Vec<String>) -> ExitCode {
    let args = match CompareArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("osu_compare: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the comparison and prints the table.
///
/// # Errors
/// An unknown benchmark, a job that fails, times out or writes no valid JSON.
pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    let Some(bench) = Bench::from_name(&args.bench) else {
        bail!(
            "unknown benchmark {:?} (known: {})",
            args.bench,
            crate::builtin::NAMES.join(", ")
        );
    };
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    let np = args.np.unwrap_or(match bench {
        Bench::MbwMr | Bench::MultiLat => 4,
        _ => 2,
    });
    let jobs = [braid_job(args, bench, np), system_job(args, bench, np)];
    let system = args.system.name();
    println!(
        "# osu_compare {}: {} round(s), braid vs {system}\n#   braid:  {}\n#   {system}: {}",
        bench.name(),
        args.rounds,
        jobs[0].display(),
        jobs[1].display()
    );

    let mut results: [Vec<Vec<Record>>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let records = jobs[which].run(round, Duration::from_secs(args.timeout))?;
            results[which].push(records);
        }
    }
    let rows = combine(&results[0], &results[1]);
    print!("{}", render_table(&rows, system));
    if let Some(path) = &args.output {
        let body = serde_json::to_string_pretty(&rows).context("serializing the comparison")?;
        fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A launcher command line that runs one benchmark job.
#[derive(Clone, Debug)]
struct Job {
    label: &'static str,
    program: PathBuf,
    /// Launcher arguments, the benchmark program and (for rsmpi) its `--backend` option.
    args: Vec<String>,
    /// The benchmark's own arguments; the output options go between `args` and these.
    bench_args: Vec<String>,
    env: Vec<(String, String)>,
}

fn braid_job(a: &CompareArgs, bench: Bench, np: u32) -> Job {
    let mut args = vec!["-n".to_owned(), np.to_string()];
    args.extend(a.braid_args.split_whitespace().map(str::to_owned));
    args.push(a.braid_bin_dir.join(bench.name()).display().to_string());
    let bench_args = a.bench_args.clone();
    Job {
        label: "braid",
        program: a.braid_mpirun.clone(),
        args,
        bench_args,
        env: Vec::new(),
    }
}

fn system_job(a: &CompareArgs, bench: Bench, np: u32) -> Job {
    let sys = a.system;
    let mut args = vec!["-n".to_owned(), np.to_string()];
    args.extend(a.mpi_args.split_whitespace().map(str::to_owned));
    let dir = a
        .rsmpi_bin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(sys.default_bin_dir()));
    args.push(dir.join(bench.name()).display().to_string());
    args.extend(["--backend".to_owned(), "rsmpi".to_owned()]);
    let mut env = Vec::new();
    if sys == SystemMpi::Openmpi {
        env.push(("OMPI_ALLOW_RUN_AS_ROOT".to_owned(), "1".to_owned()));
        env.push(("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM".to_owned(), "1".to_owned()));
    }
    for kv in &a.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        env.push((k.to_owned(), v.to_owned()));
    }
    let program = a
        .system_mpirun
        .clone()
        .unwrap_or_else(|| PathBuf::from(sys.default_launcher()));
    Job {
        label: sys.name(),
        program,
        args,
        bench_args: a.bench_args.clone(),
        env,
    }
}

impl Job {
    fn display(&self) -> String {
        let env: String = self.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let all: Vec<&str> = self
            .args
            .iter()
            .chain(&self.bench_args)
            .map(String::as_str)
            .collect();
        format!("{env}{} {}", self.program.display(), all.join(" "))
    }

    /// Runs the job with `--format json --output <tmp>` and returns its records.
    fn run(&self, round: usize, timeout: Duration) -> anyhow::Result<Vec<Record>> {
        let tmp = std::env::temp_dir();
        let stem = format!(
            "braid-osu-compare-{}-{round}-{}",
            std::process::id(),
            self.label
        );
        let json = tmp.join(format!("{stem}.json"));
        let log = tmp.join(format!("{stem}.log"));
        let result = self.run_inner(&json, &log, timeout);
        let _ = fs::remove_file(&json);
        let _ = fs::remove_file(&log);
        result
    }

    fn run_inner(&self, json: &Path, log: &Path, timeout: Duration) -> anyhow::Result<Vec<Record>> {
        let cmdline = self.display();
        let mut args = self.args.clone();
        args.extend([
            "--format".to_owned(),
            "json".to_owned(),
            "--output".to_owned(),
        ]);
        args.push(json.display().to_string());
        args.extend(self.bench_args.iter().cloned());
        let log_file =
            fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let log_err = log_file
            .try_clone()
            .context("duplicating the log file handle")?;
        let mut child = Command::new(&self.program)
            .args(&args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("starting `{cmdline}`"))?;
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("waiting for `{cmdline}`"))?
            {
                break status;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "`{cmdline}` did not finish within {} s; killed it",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = fs::read_to_string(log).unwrap_or_default();
        if !status.success() {
            bail!(
                "`{cmdline}` failed ({status}); its output ends with:\n{}",
                tail(&output, 20)
            );
        }
        let text = fs::read_to_string(json)
            .with_context(|| format!("`{cmdline}` wrote no results to {}", json.display()))?;
        report::parse_json(&text)
            .with_context(|| format!("parsing the JSON results of `{cmdline}`"))
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Joins the rounds of both sides by message size (sizes present on both sides only).
#[must_use]
pub fn combine(braid: &[Vec<Record>], system: &[Vec<Record>]) -> Vec<Row> {
    fn by_size(rounds: &[Vec<Record>]) -> BTreeMap<usize, (String, Vec<f64>)> {
        let mut map: BTreeMap<usize, (String, Vec<f64>)> = BTreeMap::new();
        for rec in rounds.iter().flatten() {
            map.entry(rec.size)
                .or_insert_with(|| (rec.unit.clone(), Vec::new()))
                .1
                .push(rec.value);
        }
        map
    }
    let b = by_size(braid);
    let s = by_size(system);
    b.into_iter()
        .filter_map(|(size, (unit, braid))| {
            let system = s.get(&size)?.1.clone();
            let (bm, sm) = (median(&braid), median(&system));
            Some(Row {
                size,
                unit,
                braid,
                system,
                braid_median: bm,
                system_median: sm,
                ratio: bm / sm,
            })
        })
        .collect()
}

/// The comparison table: size, medians, ratio, and each side's min..max over the rounds.
#[must_use]
pub fn render_table(rows: &[Row], system: &str) -> String {
    use std::fmt::Write as _;
    let unit = rows.first().map_or("", |r| r.unit.as_str());
    let mut s = format!(
        "{:<10}{:>18}{:>18}{:>14}{:>24}{:>24}\n",
        "# Size",
        format!("braid ({unit})"),
        format!("{system} ({unit})"),
        "braid/system",
        "braid min..max",
        format!("{system} min..max"),
    );
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.2}..{hi:.2}")
    };
    for r in rows {
        let _ = writeln!(
            s,
            "{:<10}{:>18.2}{:>18.2}{:>14.3}{:>24}{:>24}",
            r.size,
            r.braid_median,
            r.system_median,
            r.ratio,
            range(&r.braid),
            range(&r.system)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(size: usize, value: f64) -> Record {
        Record {
            benchmark: "osu_bw".into(),
            backend: "x".into(),
            ranks: 2,
            size,
            value,
            unit: "MB/s".into(),
            messages_per_sec: None,
            p50_us: None,
            p99_us: None,
            validation: None,
            iterations: 1,
            warmup: 0,
            window: Some(64),
            ..Record::default()
        }
    }

    #[test]
    fn combine_takes_medians_and_ratio() {
        let braid = vec![
            vec![rec(1, 10.0), rec(2, 1.0)],
            vec![rec(1, 30.0)],
            vec![rec(1, 20.0)],
        ];
        let system = vec![vec![rec(1, 10.0)], vec![rec(1, 10.0)]];
        let rows = combine(&braid, &system);
        assert_eq!(rows.len(), 1, "size 2 has no system value");
        assert_eq!(rows[0].braid_median, 20.0);
        assert_eq!(rows[0].ratio, 2.0);
        let table = render_table(&rows, "openmpi");
        assert!(table.starts_with("# Size"));
        assert!(table.contains("10.00..30.00"));
    }

    #[test]
    fn jobs_split_launcher_and_bench_args() {
        let a = CompareArgs::try_parse_from([
            "osu_compare",
            "osu_bw",
            "--mpi-args",
            "--mca btl self,tcp",
            "--env",
            "A=1",
            "--",
            "-m",
            "1:8",
        ])
        .unwrap();
        let j = system_job(&a, Bench::Bw, 2);
        assert_eq!(j.program, PathBuf::from("mpirun.openmpi"));
        assert_eq!(
            j.args,
            [
                "-n",
                "2",
                "--mca",
                "btl",
                "self,tcp",
                "target-rsmpi/release/osu_bw",
                "--backend",
                "rsmpi"
            ]
        );
        assert_eq!(j.bench_args, ["-m", "1:8"]);
        assert!(j.env.contains(&("A".to_owned(), "1".to_owned())));
        let b = braid_job(&a, Bench::Bw, 2);
        assert_eq!(b.args, ["-n", "2", "target/release/osu_bw"]);
        assert_eq!(median(&[3.0, 1.0]), 2.0);
    }
}
