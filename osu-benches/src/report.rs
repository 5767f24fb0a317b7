//! Results: one [`Record`] per message size, printed as OSU 7.3 text, JSON or CSV.
//!
//! The text layout is OSU's: a `# OSU MPI ... Test v7.3` title, column headers left-aligned
//! in 10 characters for the size and right-aligned in 18 for each value, two decimals.
//! Collectives print OSU's `Avg Latency(us)` (plus `Min Latency(us)`, `Max Latency(us)` and
//! `Iterations` with `-f`); nonblocking collectives print `Overall(us)`, `Compute(us)`,
//! `Pure Comm.(us)` and `Overlap(%)` (plus `Coll. Init(us)`, `MPI_Test(us)` and `MPI_Wait(us)`
//! with `-f`). Barriers have no size column, as in OSU.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::options::{Bench, Family};

/// The OSU version whose output this crate imitates.
pub const OSU_VERSION: &str = "7.3";

/// Width of the size column (left-aligned).
const SIZE_WIDTH: usize = 10;
/// Width of each value column (right-aligned).
const FIELD_WIDTH: usize = 18;

/// The result for one message size.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Program name, e.g. `osu_latency`.
    pub benchmark: String,
    /// `braid` or `rsmpi`.
    pub backend: String,
    /// Ranks in the job.
    pub ranks: i32,
    /// Message size in bytes.
    pub size: usize,
    /// The headline figure: latency in microseconds or bandwidth in MB/s (10^6 bytes/s).
    pub value: f64,
    /// Unit of `value`: `us` or `MB/s`.
    pub unit: String,
    /// Messages per second (`osu_mbw_mr` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_sec: Option<f64>,
    /// Median one-way latency in microseconds (`osu_latency` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<f64>,
    /// 99th-percentile one-way latency in microseconds (`osu_latency` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<f64>,
    /// `Pass` or `Fail` when the run validated data (`-c`), absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
    /// Timed iterations.
    pub iterations: usize,
    /// Warm-up iterations.
    pub warmup: usize,
    /// Window size (bandwidth benchmarks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    /// Smallest per-rank mean latency in microseconds (blocking collectives only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_us: Option<f64>,
    /// Largest per-rank mean latency in microseconds (blocking collectives only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_us: Option<f64>,
    /// Mean dummy-compute time per iteration in microseconds (nonblocking collectives only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_us: Option<f64>,
    /// Mean time of the collective alone (start then wait) in microseconds (nonblocking only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pure_comm_us: Option<f64>,
    /// OSU's overlap: `max(0, 100 - 100 * (overall - compute) / pure)` (nonblocking only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_pct: Option<f64>,
    /// Mean time of the starting call in microseconds (nonblocking only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_us: Option<f64>,
    /// Mean time of the `MPI_Test` calls during the compute in microseconds (nonblocking only;
    /// `-t`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_us: Option<f64>,
    /// Mean time of the final wait in microseconds (nonblocking only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_us: Option<f64>,
}

impl Record {
    /// Whether validation ran and failed.
    #[must_use]
    pub fn failed(&self) -> bool {
        self.validation.as_deref() == Some("Fail")
    }
}

/// OSU's validation column text.
#[must_use]
pub fn validation_status(errors: u64) -> &'static str {
    if errors > 0 { "Fail" } else { "Pass" }
}

/// The OSU title of `bench`.
#[must_use]
pub fn title(bench: Bench) -> String {
    let name = match bench {
        Bench::Allgather => "Allgather Latency Test",
        Bench::Allgatherv => "Allgatherv Latency Test",
        Bench::Allreduce => "Allreduce Latency Test",
        Bench::Alltoall => "All-to-All Personalized Exchange Latency Test",
        Bench::Alltoallv => "All-to-Allv Personalized Exchange Latency Test",
        Bench::Barrier => "Barrier Latency Test",
        Bench::Bcast => "Broadcast Latency Test",
        Bench::Bibw => "Bi-Directional Bandwidth Test",
        Bench::Bw => "Bandwidth Test",
        Bench::Gather => "Gather Latency Test",
        Bench::Gatherv => "Gatherv Latency Test",
        Bench::Iallgather => "Non-blocking Allgather Latency Test",
        Bench::Iallgatherv => "Non-blocking Allgatherv Latency Test",
        Bench::Iallreduce => "Non-blocking Allreduce Latency Test",
        Bench::Ialltoall => "Non-blocking All-to-All Latency Test",
        Bench::Ialltoallv => "Non-blocking All-to-Allv Personalized Exchange Latency Test",
        Bench::Ibarrier => "Non-blocking Barrier Latency Test",
        Bench::Ibcast => "Non-blocking Broadcast Latency Test",
        Bench::Igather => "Non-blocking Gather Latency Test",
        Bench::Igatherv => "Non-blocking Gatherv Latency Test",
        Bench::Ireduce => "Non-blocking Reduce Latency Test",
        Bench::IreduceScatter => "Non-blocking Reduce_scatter Latency Test",
        Bench::Iscatter => "Non-blocking Scatter Latency Test",
        Bench::Iscatterv => "Non-blocking Scatterv Latency Test",
        Bench::Latency => "Latency Test",
        Bench::MbwMr => "Multiple Bandwidth / Message Rate Test",
        Bench::MultiLat => "Multi Latency Test",
        Bench::Reduce => "Reduce Latency Test",
        Bench::ReduceScatter => "Reduce_scatter Latency Test",
        Bench::Scatter => "Scatter Latency Test",
        Bench::Scatterv => "Scatterv Latency Test",
    };
    format!("# OSU MPI {name} v{OSU_VERSION}")
}

/// The OSU text header: title, the pairs/window line of `osu_mbw_mr`, column headers and
/// the datatype line, each ending in a newline. `full` is OSU's `-f`.
#[must_use]
pub fn text_header(bench: Bench, validate: bool, full: bool, pairs: i32, window: usize) -> String {
    let mut s = title(bench);
    s.push('\n');
    if bench.family() != Family::PointToPoint {
        collective_header(&mut s, bench, validate, full);
        return s;
    }
    if bench == Bench::MbwMr {
        let _ = writeln!(s, "# [ pairs: {pairs} ] [ window size: {window} ]");
    }
    let _ = write!(s, "{:<SIZE_WIDTH$}", "# Size");
    match bench {
        Bench::Bibw | Bench::Bw => {
            let _ = write!(s, "{:>FIELD_WIDTH$}", "Bandwidth (MB/s)");
        }
        Bench::MbwMr => {
            let _ = write!(s, "{:>FIELD_WIDTH$}{:>FIELD_WIDTH$}", "MB/s", "Messages/s");
        }
        _ => {
            let _ = write!(s, "{:>FIELD_WIDTH$}", "Latency (us)");
        }
    }
    if validate {
        let _ = write!(s, "{:>FIELD_WIDTH$}", "Validation");
    }
    s.push('\n');
    s.push_str("# Datatype: MPI_CHAR.\n");
    s
}

/// The collective part of [`text_header`] after the title (OSU 7 `print_preamble` and
/// `print_preamble_nbc`): datatype, the nonblocking legend, column headers.
fn collective_header(s: &mut String, bench: Bench, validate: bool, full: bool) {
    if !bench.is_sizeless() {
        let dt = if bench.is_reduction() {
            "MPI_FLOAT"
        } else {
            "MPI_CHAR"
        };
        let _ = writeln!(s, "# Datatype: {dt}.");
    }
    let columns: &[&str] = if bench.family() == Family::Nonblocking {
        s.push_str("# Overall = Coll. Init + Compute + MPI_Test + MPI_Wait\n\n");
        if bench.is_sizeless() {
            s.push_str("# Overall(us)");
        } else {
            let _ = write!(
                s,
                "{:<SIZE_WIDTH$}{:>FIELD_WIDTH$}",
                "# Size", "Overall(us)"
            );
        }
        if full {
            &[
                "Compute(us)",
                "Coll. Init(us)",
                "MPI_Test(us)",
                "MPI_Wait(us)",
                "Pure Comm.(us)",
                "Overlap(%)",
            ]
        } else {
            &["Compute(us)", "Pure Comm.(us)", "Overlap(%)"]
        }
    } else {
        if bench.is_sizeless() {
            s.push_str("# Avg Latency(us)");
        } else {
            let _ = write!(
                s,
                "{:<SIZE_WIDTH$}{:>FIELD_WIDTH$}",
                "# Size", "Avg Latency(us)"
            );
        }
        if full {
            &["Min Latency(us)", "Max Latency(us)"]
        } else {
            &[]
        }
    };
    for c in columns {
        let _ = write!(s, "{c:>FIELD_WIDTH$}");
    }
    if full && bench.family() == Family::Blocking {
        let _ = write!(s, "{:>ITER_WIDTH$}", "Iterations");
    }
    if validate {
        let _ = write!(s, "{:>FIELD_WIDTH$}", "Validation");
    }
    s.push('\n');
}

/// Width of OSU's `Iterations` column.
const ITER_WIDTH: usize = 12;
/// Width of the first value of a barrier row, which has no size column (OSU prints `%17.2f`).
const SIZELESS_WIDTH: usize = 17;

/// One OSU text row for `r`, ending in a newline; `full` is OSU's `-f`.
#[must_use]
pub fn text_row(r: &Record, full: bool) -> String {
    let bench = Bench::from_name(&r.benchmark);
    let family = bench.map_or(Family::PointToPoint, Bench::family);
    let mut s = match bench {
        Some(b) if b.is_sizeless() => format!("{:>SIZELESS_WIDTH$.2}", r.value),
        _ => format!("{:<SIZE_WIDTH$}{:>FIELD_WIDTH$.2}", r.size, r.value),
    };
    let num = |s: &mut String, v: Option<f64>| {
        let _ = write!(s, "{:>FIELD_WIDTH$.2}", v.unwrap_or(f64::NAN));
    };
    match family {
        Family::PointToPoint => {
            if let Some(rate) = r.messages_per_sec {
                num(&mut s, Some(rate));
            }
        }
        Family::Blocking => {
            if full {
                num(&mut s, r.min_us);
                num(&mut s, r.max_us);
                let _ = write!(s, "{:>ITER_WIDTH$}", r.iterations);
            }
        }
        Family::Nonblocking => {
            num(&mut s, r.compute_us);
            if full {
                num(&mut s, r.init_us);
                num(&mut s, Some(r.test_us.unwrap_or(0.0)));
                num(&mut s, r.wait_us);
            }
            num(&mut s, r.pure_comm_us);
            num(&mut s, r.overlap_pct);
        }
    }
    if let Some(v) = &r.validation {
        let _ = write!(s, "{v:>FIELD_WIDTH$}");
    }
    s.push('\n');
    s
}

/// The CSV header row.
pub const CSV_HEADER: &str = "benchmark,backend,ranks,size,value,unit,messages_per_sec,p50_us,\
                              p99_us,validation,iterations,warmup,window";

/// One CSV row for `r` (empty fields for absent values), ending in a newline.
#[must_use]
pub fn csv_row(r: &Record) -> String {
    fn opt<T: ToString>(v: Option<T>) -> String {
        v.map(|v| v.to_string()).unwrap_or_default()
    }
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
        r.benchmark,
        r.backend,
        r.ranks,
        r.size,
        r.value,
        r.unit,
        opt(r.messages_per_sec),
        opt(r.p50_us),
        opt(r.p99_us),
        opt(r.validation.as_deref()),
        r.iterations,
        r.warmup,
        opt(r.window),
    )
}

/// All of `records` in `format` (text needs the header parameters of the run).
#[must_use]
pub fn render(
    format: crate::options::Format,
    bench: Bench,
    validate: bool,
    full: bool,
    pairs: i32,
    window: usize,
    records: &[Record],
) -> String {
    use crate::options::Format;
    match format {
        Format::Text => {
            let mut s = text_header(bench, validate, full, pairs, window);
            records.iter().for_each(|r| s.push_str(&text_row(r, full)));
            s
        }
        Format::Csv => {
            let mut s = format!("{CSV_HEADER}\n");
            records.iter().for_each(|r| s.push_str(&csv_row(r)));
            s
        }
        Format::Json => {
            // One record per line inside the array, so the file also reads well in a pager.
            let mut s = String::from("[\n");
            for (i, r) in records.iter().enumerate() {
                // Serializing a plain struct of strings and numbers cannot fail; a NaN would
                // become `null`, which is still valid JSON.
                s.push_str(&serde_json::to_string(r).unwrap_or_else(|_| "null".to_owned()));
                s.push_str(if i + 1 < records.len() { ",\n" } else { "\n" });
            }
            s.push_str("]\n");
            s
        }
    }
}

/// Parses the JSON written by [`render`].
///
/// # Errors
/// The input is not a JSON array of records.
pub fn parse_json(s: &str) -> Result<Vec<Record>, serde_json::Error> {
    serde_json::from_str(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Format;

    fn rec(size: usize, value: f64) -> Record {
        Record {
            benchmark: "osu_latency".into(),
            backend: "braid".into(),
            ranks: 2,
            size,
            value,
            unit: "us".into(),
            messages_per_sec: None,
            p50_us: Some(5.0),
            p99_us: None,
            validation: Some("Pass".into()),
            iterations: 50,
            warmup: 5,
            window: None,
            ..Record::default()
        }
    }

    #[test]
    fn latency_text_matches_osu_layout() {
        let h = text_header(Bench::Latency, false, false, 1, 1);
        assert_eq!(
            h,
            "# OSU MPI Latency Test v7.3\n# Size          Latency (us)\n# Datatype: MPI_CHAR.\n"
        );
        let mut r = rec(1, 5.1);
        r.validation = None;
        assert_eq!(text_row(&r, false), "1                       5.10\n");
        let r = rec(4_194_304, 1234.567);
        assert_eq!(
            text_row(&r, false),
            "4194304              1234.57              Pass\n"
        );
        assert!(
            text_header(Bench::Latency, true, false, 1, 1)
                .contains("Latency (us)        Validation\n")
        );
    }

    #[test]
    fn bandwidth_and_mbw_mr_headers() {
        let h = text_header(Bench::Bw, false, false, 1, 64);
        assert!(h.starts_with("# OSU MPI Bandwidth Test v7.3\n# Size      Bandwidth (MB/s)\n"));
        assert!(
            text_header(Bench::Bibw, false, false, 1, 64)
                .starts_with("# OSU MPI Bi-Directional Bandwidth Test v7.3\n")
        );
        let h = text_header(Bench::MbwMr, false, false, 2, 64);
        assert!(h.starts_with(
            "# OSU MPI Multiple Bandwidth / Message Rate Test v7.3\n\
             # [ pairs: 2 ] [ window size: 64 ]\n\
             # Size                  MB/s        Messages/s\n"
        ));
        let mut r = rec(1, 8.36);
        r.messages_per_sec = Some(8_361_985.11);
        r.validation = None;
        assert_eq!(
            text_row(&r, false),
            "1                       8.36        8361985.11\n"
        );
        assert!(
            text_header(Bench::MultiLat, false, false, 2, 1)
                .starts_with("# OSU MPI Multi Latency Test v7.3\n# Size          Latency (us)\n")
        );
    }

    #[test]
    fn json_and_csv_round_trip() {
        let records = vec![rec(1, 1.5), rec(2, 2.5)];
        let json = render(Format::Json, Bench::Latency, true, false, 1, 1, &records);
        assert_eq!(parse_json(&json).unwrap(), records);
        assert_eq!(
            parse_json(&render(
                Format::Json,
                Bench::Latency,
                true,
                false,
                1,
                1,
                &[]
            ))
            .unwrap(),
            vec![]
        );
        let csv = render(Format::Csv, Bench::Latency, true, false, 1, 1, &records);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].split(',').count(), lines[1].split(',').count());
        assert_eq!(lines[1], "osu_latency,braid,2,1,1.5,us,,5,,Pass,50,5,");
    }

    #[test]
    fn collective_text_matches_osu_layout() {
        assert_eq!(
            text_header(Bench::Allreduce, false, false, 1, 1),
            "# OSU MPI Allreduce Latency Test v7.3\n# Datatype: MPI_FLOAT.\n\
             # Size       Avg Latency(us)\n"
        );
        let h = text_header(Bench::Bcast, true, true, 1, 1);
        assert!(h.ends_with(concat!(
            "# Size       Avg Latency(us)   Min Latency(us)   Max Latency(us)  Iterations",
            "        Validation\n"
        )));
        assert!(h.contains("# Datatype: MPI_CHAR.\n"));
        assert_eq!(
            text_header(Bench::Barrier, false, false, 1, 1),
            "# OSU MPI Barrier Latency Test v7.3\n# Avg Latency(us)\n"
        );
        let h = text_header(Bench::Iallreduce, false, false, 1, 1);
        assert!(h.ends_with(
            "# Overall = Coll. Init + Compute + MPI_Test + MPI_Wait\n\n\
             # Size           Overall(us)       Compute(us)    Pure Comm.(us)        Overlap(%)\n"
        ));
        let mut r = rec(1024, 12.5);
        r.benchmark = "osu_bcast".into();
        r.validation = None;
        r.min_us = Some(10.0);
        r.max_us = Some(15.0);
        assert_eq!(text_row(&r, false), "1024                   12.50\n");
        assert_eq!(
            text_row(&r, true),
            "1024                   12.50             10.00             15.00          50\n"
        );
        r.benchmark = "osu_barrier".into();
        assert_eq!(text_row(&r, false), "            12.50\n");
        let mut r = rec(8, 20.0);
        r.benchmark = "osu_ibcast".into();
        r.compute_us = Some(10.0);
        r.pure_comm_us = Some(10.0);
        r.overlap_pct = Some(0.0);
        let row = text_row(&r, false);
        assert_eq!(row.split_whitespace().count(), 6, "{row}");
        assert!(row.ends_with("0.00              Pass\n"), "{row}");
    }
}
