//! The OSU-style benchmarks (`braid-osu`) run as real jobs through Braid's `mpirun`: headers,
//! message sizes, `Validation` = `Pass`, positive figures, and the JSON records; every
//! collective benchmark on 3 and 4 ranks and on 8 oversubscribed ranks.
//!
//! Needs the binaries of the same profile: `cargo build --workspace --bins` (or `--release`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use braid_tests::{Finished, binary, mpirun, run_with_deadline};

/// Time limit of one benchmark job.
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs `mpirun -n <np> <program> <args>` and checks it succeeded.
fn job(np: u32, program: &str, args: &[&str]) -> Finished {
    let mut cmd = Command::new(mpirun());
    cmd.arg("-n").arg(np.to_string()).arg(program).args(args);
    let done = run_with_deadline(&mut cmd, DEADLINE);
    assert!(
        done.status.success(),
        "{cmd:?} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        done.status,
        done.stdout,
        done.stderr
    );
    done
}

/// Path of a benchmark binary, as a string for the command line.
fn bench(name: &str) -> String {
    binary(name).display().to_string()
}

/// Powers of two from `min` to `max`.
fn pow2(min: usize, max: usize) -> Vec<usize> {
    std::iter::successors(Some(min), |s| Some(s * 2))
        .take_while(|s| *s <= max)
        .collect()
}

/// Checks OSU text output: the header lines, then one row per size of `sizes` with
/// `value_columns` numbers and a final `Pass`. The numbers are printed with two decimals, so a
/// tiny bandwidth can read `0.00`; they must be non-negative, and positive for the largest size.
fn check_text(stdout: &str, header: &[&str], sizes: &[usize], value_columns: usize) {
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    for (i, want) in header.iter().enumerate() {
        let got = lines.get(i).copied().unwrap_or("");
        assert!(
            got.starts_with(want),
            "header line {i}: want {want:?}, got {got:?}\n{stdout}"
        );
    }
    let size_line = lines
        .iter()
        .find(|l| l.starts_with("# Size"))
        .expect("a `# Size` line");
    assert!(
        size_line.trim_end().ends_with("Validation"),
        "{size_line:?}"
    );
    let rows: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let got_sizes: Vec<usize> = rows.iter().map(|r| r[0].parse().expect("size")).collect();
    assert_eq!(got_sizes, sizes, "sizes listed\n{stdout}");
    for row in &rows {
        assert_eq!(row.len(), 2 + value_columns, "columns of {row:?}");
        for v in &row[1..=value_columns] {
            let v: f64 = v
                .parse()
                .unwrap_or_else(|e| panic!("{v:?} in {row:?}: {e}"));
            assert!(v >= 0.0 && v.is_finite(), "value {v} in {row:?}");
            if row[0] == sizes[sizes.len() - 1].to_string() {
                assert!(v > 0.0, "value {v} for the largest size in {row:?}");
            }
        }
        assert_eq!(row[value_columns + 1], "Pass", "validation of {row:?}");
    }
}

#[test]
fn osu_latency_validates_and_prints_osu_format() {
    let done = job(
        2,
        &bench("osu_latency"),
        &["-m", "1:4096", "-i", "50", "-x", "5", "-c"],
    );
    check_text(
        &done.stdout,
        &[
            "# OSU MPI Latency Test v7.3",
            "# Size          Latency (us)",
        ],
        &pow2(1, 4096),
        1,
    );
}

#[test]
fn osu_bw_validates() {
    let done = job(
        2,
        &bench("osu_bw"),
        &["-m", "1:65536", "-i", "10", "-x", "2", "-W", "16", "-c"],
    );
    check_text(
        &done.stdout,
        &[
            "# OSU MPI Bandwidth Test v7.3",
            "# Size      Bandwidth (MB/s)",
        ],
        &pow2(1, 65536),
        1,
    );
}

#[test]
fn osu_bibw_validates() {
    let done = job(
        2,
        &bench("osu_bibw"),
        &["-m", "1:65536", "-i", "10", "-x", "2", "-c"],
    );
    check_text(
        &done.stdout,
        &[
            "# OSU MPI Bi-Directional Bandwidth Test v7.3",
            "# Size      Bandwidth (MB/s)",
        ],
        &pow2(1, 65536),
        1,
    );
}

#[test]
fn osu_mbw_mr_four_ranks_validates() {
    let done = job(
        4,
        &bench("osu_mbw_mr"),
        &["-m", "1:16384", "-i", "10", "-x", "2", "-W", "8", "-c"],
    );
    check_text(
        &done.stdout,
        &[
            "# OSU MPI Multiple Bandwidth / Message Rate Test v7.3",
            "# [ pairs: 2 ] [ window size: 8 ]",
            "# Size                  MB/s        Messages/s",
        ],
        &pow2(1, 16384),
        2,
    );
}

#[test]
fn osu_multi_lat_four_ranks_validates() {
    let done = job(
        4,
        &bench("osu_multi_lat"),
        &["-m", "1:4096", "-i", "50", "-x", "5", "-c"],
    );
    check_text(
        &done.stdout,
        &[
            "# OSU MPI Multi Latency Test v7.3",
            "# Size          Latency (us)",
        ],
        &pow2(1, 4096),
        1,
    );
}

#[test]
fn bundled_benchmark_runs_by_name() {
    let done = job(
        2,
        "osu_latency",
        &["-m", "1:64", "-i", "20", "-x", "2", "-c"],
    );
    check_text(
        &done.stdout,
        &["# OSU MPI Latency Test v7.3"],
        &pow2(1, 64),
        1,
    );
}

#[test]
fn json_records_parse() {
    let done = job(
        2,
        &bench("osu_bw"),
        &[
            "-m", "1:1024", "-i", "10", "-x", "2", "-c", "--format", "json",
        ],
    );
    let records: Vec<serde_json::Value> = serde_json::from_str(&done.stdout)
        .unwrap_or_else(|e| panic!("stdout is not a JSON array ({e}):\n{}", done.stdout));
    let sizes: Vec<u64> = records
        .iter()
        .map(|r| r["size"].as_u64().expect("size"))
        .collect();
    assert_eq!(
        sizes,
        pow2(1, 1024).iter().map(|&s| s as u64).collect::<Vec<_>>()
    );
    for r in &records {
        assert_eq!(r["benchmark"], "osu_bw");
        assert_eq!(r["backend"], "braid");
        assert_eq!(r["ranks"], 2);
        assert_eq!(r["unit"], "MB/s");
        assert_eq!(r["validation"], "Pass");
        assert!(r["value"].as_f64().is_some_and(|v| v > 0.0), "{r}");
    }
}

#[test]
fn output_file_gets_json_while_stdout_keeps_text() {
    let dir = std::env::temp_dir().join(braid_tests::unique_marker("osu_json"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lat.json");
    let done = job(
        2,
        &bench("osu_latency"),
        &[
            "-m",
            "8:16",
            "-i",
            "20",
            "-x",
            "2",
            "--format",
            "json",
            "--output",
            path_str(&file),
            "--percentiles",
        ],
    );
    assert!(
        done.stdout.starts_with("# OSU MPI Latency Test v7.3"),
        "{}",
        done.stdout
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let records: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r["unit"], "us");
        let (p50, p99) = (r["p50_us"].as_f64().unwrap(), r["p99_us"].as_f64().unwrap());
        assert!(p50 > 0.0 && p99 >= p50, "{r}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_rank_count_fails_with_a_message() {
    let mut cmd = Command::new(mpirun());
    cmd.args(["-n", "3"])
        .arg(bench("osu_latency"))
        .args(["-m", "1:1", "-i", "1"]);
    let done = run_with_deadline(&mut cmd, DEADLINE);
    assert!(
        !done.status.success(),
        "osu_latency on 3 ranks succeeded:\n{}",
        done.stdout
    );
    assert!(
        done.stderr.contains("exactly two processes"),
        "stderr:\n{}",
        done.stderr
    );
}

/// Every collective benchmark: name, OSU title, whether it reduces floats, nonblocking.
const COLLECTIVES: &[(&str, &str, bool, bool)] = &[
    ("osu_barrier", "Barrier Latency Test", false, false),
    ("osu_bcast", "Broadcast Latency Test", false, false),
    ("osu_reduce", "Reduce Latency Test", true, false),
    ("osu_allreduce", "Allreduce Latency Test", true, false),
    ("osu_allgather", "Allgather Latency Test", false, false),
    ("osu_allgatherv", "Allgatherv Latency Test", false, false),
    (
        "osu_alltoall",
        "All-to-All Personalized Exchange Latency Test",
        false,
        false,
    ),
    (
        "osu_alltoallv",
        "All-to-Allv Personalized Exchange Latency Test",
        false,
        false,
    ),
    ("osu_gather", "Gather Latency Test", false, false),
    ("osu_gatherv", "Gatherv Latency Test", false, false),
    ("osu_scatter", "Scatter Latency Test", false, false),
    ("osu_scatterv", "Scatterv Latency Test", false, false),
    (
        "osu_reduce_scatter",
        "Reduce_scatter Latency Test",
        true,
        false,
    ),
    (
        "osu_ibarrier",
        "Non-blocking Barrier Latency Test",
        false,
        true,
    ),
    (
        "osu_ibcast",
        "Non-blocking Broadcast Latency Test",
        false,
        true,
    ),
    (
        "osu_iallreduce",
        "Non-blocking Allreduce Latency Test",
        true,
        true,
    ),
    (
        "osu_iallgather",
        "Non-blocking Allgather Latency Test",
        false,
        true,
    ),
    (
        "osu_ialltoall",
        "Non-blocking All-to-All Latency Test",
        false,
        true,
    ),
    (
        "osu_ireduce",
        "Non-blocking Reduce Latency Test",
        true,
        true,
    ),
    (
        "osu_igather",
        "Non-blocking Gather Latency Test",
        false,
        true,
    ),
    (
        "osu_igatherv",
        "Non-blocking Gatherv Latency Test",
        false,
        true,
    ),
    (
        "osu_iscatter",
        "Non-blocking Scatter Latency Test",
        false,
        true,
    ),
    (
        "osu_iscatterv",
        "Non-blocking Scatterv Latency Test",
        false,
        true,
    ),
    (
        "osu_iallgatherv",
        "Non-blocking Allgatherv Latency Test",
        false,
        true,
    ),
    (
        "osu_ialltoallv",
        "Non-blocking All-to-Allv Personalized Exchange Latency Test",
        false,
        true,
    ),
    (
        "osu_ireduce_scatter",
        "Non-blocking Reduce_scatter Latency Test",
        true,
        true,
    ),
];

/// Checks the OSU text of a collective benchmark run with `-m 1:<max> -c`: title, datatype
/// line, column line, one row per size (none for barriers) with its value columns and `Pass`.
fn check_collective_text(stdout: &str, entry: (&str, &str, bool, bool), max: usize, np: u32) {
    let (name, title, reduction, nonblocking) = entry;
    let ctx = format!("{name} on {np} ranks:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines[0], format!("# OSU MPI {title} v7.3"), "{ctx}");
    let sizeless = name.ends_with("barrier");
    if !sizeless {
        let dt = if reduction { "MPI_FLOAT" } else { "MPI_CHAR" };
        assert_eq!(lines[1], format!("# Datatype: {dt}."), "{ctx}");
    }
    let want_columns = match (sizeless, nonblocking) {
        (false, false) => "# Size       Avg Latency(us)",
        (true, false) => "# Avg Latency(us)",
        (false, true) => "# Size           Overall(us)       Compute(us)    Pure Comm.(us)",
        (true, true) => "# Overall(us)       Compute(us)    Pure Comm.(us)",
    };
    let columns = lines
        .iter()
        .find(|l| l.starts_with(want_columns))
        .unwrap_or_else(|| panic!("no {want_columns:?} line; {ctx}"));
    assert!(columns.ends_with("Validation"), "{ctx}");
    if nonblocking {
        assert!(
            lines.contains(&"# Overall = Coll. Init + Compute + MPI_Test + MPI_Wait"),
            "{ctx}"
        );
    }
    let rows: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let values = if nonblocking { 4 } else { 1 };
    let size_column = usize::from(!sizeless);
    if sizeless {
        assert_eq!(rows.len(), 1, "{ctx}");
    } else {
        let sizes: Vec<usize> = rows.iter().map(|r| r[0].parse().expect("size")).collect();
        assert_eq!(sizes, pow2(if reduction { 4 } else { 1 }, max), "{ctx}");
    }
    for row in &rows {
        assert_eq!(row.len(), size_column + values + 1, "{row:?}; {ctx}");
        for v in &row[size_column..size_column + values] {
            let v: f64 = v.parse().unwrap_or_else(|e| panic!("{v:?}: {e}; {ctx}"));
            assert!(v >= 0.0 && v.is_finite(), "{v}; {ctx}");
        }
        assert!(
            row[size_column].parse::<f64>().unwrap() > 0.0,
            "latency; {ctx}"
        );
        assert_eq!(row[size_column + values], "Pass", "{ctx}");
    }
}

#[test]
fn collectives_validate_on_three_and_four_ranks() {
    // 16 KiB crosses OSU's 8 KiB large-message threshold and Braid's algorithm switches.
    let max = 16384;
    let m = format!("1:{max}");
    for np in [3, 4] {
        for &entry in COLLECTIVES {
            let done = job(np, &bench(entry.0), &["-m", &m, "-i", "5", "-x", "1", "-c"]);
            check_collective_text(&done.stdout, entry, max, np);
        }
    }
}

#[test]
fn collectives_complete_on_eight_oversubscribed_ranks() {
    for &entry in COLLECTIVES {
        // Run by name: the bundled benchmarks.
        let done = job(8, entry.0, &["-m", "1:1024", "-i", "3", "-x", "1", "-c"]);
        check_collective_text(&done.stdout, entry, 1024, 8);
    }
}

#[test]
fn collective_json_records_parse() {
    for name in ["osu_allreduce", "osu_iallreduce", "osu_barrier"] {
        let done = job(
            3,
            &bench(name),
            &[
                "-m", "1:256", "-i", "5", "-x", "1", "-c", "--format", "json",
            ],
        );
        let records: Vec<serde_json::Value> =
            serde_json::from_str(&done.stdout).unwrap_or_else(|e| {
                panic!("{name}: stdout is not a JSON array ({e}):\n{}", done.stdout)
            });
        let sizes: Vec<u64> = records
            .iter()
            .map(|r| r["size"].as_u64().unwrap())
            .collect();
        let want: Vec<u64> = match name {
            "osu_barrier" => vec![0],
            _ => pow2(4, 256).iter().map(|&s| s as u64).collect(),
        };
        assert_eq!(sizes, want, "{name}");
        for r in &records {
            assert_eq!(r["benchmark"], name);
            assert_eq!(
                (r["ranks"].clone(), r["unit"].clone()),
                (3.into(), "us".into())
            );
            assert_eq!(r["validation"], "Pass", "{r}");
            assert_eq!(r["iterations"], 5, "{r}");
            let value = r["value"].as_f64().unwrap();
            assert!(value > 0.0, "{r}");
            if name == "osu_iallreduce" {
                let overlap = r["overlap_pct"].as_f64().unwrap();
                assert!((0.0..=100.0).contains(&overlap), "{r}");
                assert!(r["pure_comm_us"].as_f64().unwrap() > 0.0, "{r}");
                assert!(r["compute_us"].as_f64().is_some(), "{r}");
            } else {
                let (min, max) = (r["min_us"].as_f64().unwrap(), r["max_us"].as_f64().unwrap());
                assert!(min <= value && value <= max, "{r}");
            }
        }
    }
}

#[test]
fn full_listing_adds_osu_columns() {
    let done = job(
        3,
        &bench("osu_bcast"),
        &["-m", "1:8", "-i", "5", "-x", "1", "-f"],
    );
    assert!(
        done.stdout.contains(
            "# Size       Avg Latency(us)   Min Latency(us)   Max Latency(us)  Iterations\n"
        ),
        "{}",
        done.stdout
    );
    for row in done.stdout.lines().filter(|l| !l.starts_with('#')) {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols.len(), 5, "{row}");
        assert_eq!(cols[4], "5", "{row}");
        let (avg, min, max): (f64, f64, f64) = (
            cols[1].parse().unwrap(),
            cols[2].parse().unwrap(),
            cols[3].parse().unwrap(),
        );
        assert!(min <= avg && avg <= max, "{row}");
    }
    let done = job(
        2,
        &bench("osu_ibcast"),
        &["-m", "1:8", "-i", "5", "-x", "1", "-f", "-t", "10"],
    );
    assert!(
        done.stdout
            .contains("Coll. Init(us)      MPI_Test(us)      MPI_Wait(us)"),
        "{}",
        done.stdout
    );
    // `-t 10`: ten tests during the compute, timed in the MPI_Test column.
    let rows: Vec<&str> = done
        .stdout
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(rows.len(), 4, "{}", done.stdout);
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        let test: f64 = cols[4].parse().unwrap();
        assert!(test > 0.0, "{row}");
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}
