//! The OSU-style benchmarks (`braid-osu`) run as real jobs through Braid's `mpirun`: headers,
//! message sizes, `Validation` = `Pass`, positive figures, and the JSON records.
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

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}
