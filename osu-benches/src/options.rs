//! Command-line options shared by the benchmarks, in the shape of OSU 7's, and the loop
//! parameters (sizes, iterations, warm-up, window) they resolve to.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Largest default message size: 4 MiB (OSU's `MAX_MESSAGE_SIZE`).
pub const MAX_MESSAGE_SIZE: usize = 1 << 22;
/// Largest default message size of the collective benchmarks: 1 MiB (OSU's `MAX_MSG_SIZE_COLL`).
pub const MAX_MSG_SIZE_COLL: usize = 1 << 20;
/// Smallest default message size (OSU 7's `MIN_MESSAGE_SIZE`).
pub const MIN_MESSAGE_SIZE: usize = 1;
/// Messages larger than this use the "large" loop counts (OSU's `LARGE_MESSAGE_SIZE`).
pub const LARGE_MESSAGE_SIZE: usize = 8192;
/// Default window of the bandwidth benchmarks (OSU's `WINDOW_SIZE_LARGE`).
pub const DEFAULT_WINDOW: usize = 64;

/// Which benchmark is running; decides defaults, rank-count rules and output columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bench {
    /// `osu_allgather`: `MPI_Allgather` latency.
    Allgather,
    /// `osu_allgatherv`: `MPI_Allgatherv` latency (equal counts, as OSU).
    Allgatherv,
    /// `osu_allreduce`: `MPI_Allreduce` latency (`MPI_FLOAT`, `MPI_SUM`).
    Allreduce,
    /// `osu_alltoall`: `MPI_Alltoall` latency.
    Alltoall,
    /// `osu_alltoallv`: `MPI_Alltoallv` latency (equal counts, as OSU).
    Alltoallv,
    /// `osu_barrier`: `MPI_Barrier` latency.
    Barrier,
    /// `osu_bcast`: `MPI_Bcast` latency from rank 0.
    Bcast,
    /// `osu_bibw`: both ranks send a window to each other at once.
    Bibw,
    /// `osu_bw`: rank 0 sends windows to rank 1, which acknowledges each window.
    Bw,
    /// `osu_gather`: `MPI_Gather` latency to rank 0.
    Gather,
    /// `osu_gatherv`: `MPI_Gatherv` latency to rank 0 (equal counts, as OSU).
    Gatherv,
    /// `osu_iallgather`: `MPI_Iallgather` overlap.
    Iallgather,
    /// `osu_iallgatherv`: `MPI_Iallgatherv` overlap (equal counts, as OSU).
    Iallgatherv,
    /// `osu_iallreduce`: `MPI_Iallreduce` overlap (`MPI_FLOAT`, `MPI_SUM`).
    Iallreduce,
    /// `osu_ialltoall`: `MPI_Ialltoall` overlap.
    Ialltoall,
    /// `osu_ialltoallv`: `MPI_Ialltoallv` overlap (equal counts, as OSU).
    Ialltoallv,
    /// `osu_ibarrier`: `MPI_Ibarrier` overlap.
    Ibarrier,
    /// `osu_ibcast`: `MPI_Ibcast` overlap.
    Ibcast,
    /// `osu_igather`: `MPI_Igather` overlap, to rank 0.
    Igather,
    /// `osu_igatherv`: `MPI_Igatherv` overlap, to rank 0 (equal counts, as OSU).
    Igatherv,
    /// `osu_ireduce`: `MPI_Ireduce` overlap (`MPI_FLOAT`, `MPI_SUM`).
    Ireduce,
    /// `osu_ireduce_scatter`: `MPI_Ireduce_scatter` overlap (`MPI_FLOAT`, `MPI_SUM`, OSU's
    /// counts; Braid backend only: rsmpi 0.8 has no `MPI_Ireduce_scatter`).
    IreduceScatter,
    /// `osu_iscatter`: `MPI_Iscatter` overlap, from rank 0.
    Iscatter,
    /// `osu_iscatterv`: `MPI_Iscatterv` overlap, from rank 0 (equal counts, as OSU).
    Iscatterv,
    /// `osu_latency`: ping-pong between two ranks.
    Latency,
    /// `osu_mbw_mr`: `n/2` pairs stream windows at once; aggregate MB/s and messages/s.
    MbwMr,
    /// `osu_multi_lat`: `n/2` pairs ping-pong at once; average latency.
    MultiLat,
    /// `osu_reduce`: `MPI_Reduce` latency to rank 0 (`MPI_FLOAT`, `MPI_SUM`).
    Reduce,
    /// `osu_reduce_scatter`: reduce-scatter latency (`MPI_FLOAT`, `MPI_SUM`; see
    /// [`crate::bench`] for the equal-block form it times).
    ReduceScatter,
    /// `osu_scatter`: `MPI_Scatter` latency from rank 0.
    Scatter,
    /// `osu_scatterv`: `MPI_Scatterv` latency from rank 0 (equal counts, as OSU).
    Scatterv,
}

/// The three kinds of benchmark, which differ in loops, defaults and output columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Blocking collectives: average/min/max latency over the ranks.
    Blocking,
    /// Nonblocking collectives: overall, compute, pure communication and overlap.
    Nonblocking,
    /// The point-to-point benchmarks.
    PointToPoint,
}

impl Bench {
    /// Every benchmark, in `builtin::NAMES` order.
    pub const ALL: [Self; 31] = [
        Self::Latency,
        Self::Bw,
        Self::Bibw,
        Self::MbwMr,
        Self::MultiLat,
        Self::Barrier,
        Self::Bcast,
        Self::Reduce,
        Self::Allreduce,
        Self::Allgather,
        Self::Allgatherv,
        Self::Alltoall,
        Self::Alltoallv,
        Self::Gather,
        Self::Gatherv,
        Self::Scatter,
        Self::Scatterv,
        Self::ReduceScatter,
        Self::Ibarrier,
        Self::Ibcast,
        Self::Iallreduce,
        Self::Iallgather,
        Self::Ialltoall,
        Self::Ireduce,
        Self::Igather,
        Self::Igatherv,
        Self::Iscatter,
        Self::Iscatterv,
        Self::Iallgatherv,
        Self::Ialltoallv,
        Self::IreduceScatter,
    ];

    /// Finds a benchmark by program name (`osu_latency`, ...); a path prefix is ignored.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        let base = name.rsplit('/').next().unwrap_or(name);
        Self::ALL.into_iter().find(|b| b.name() == base)
    }

    /// The program name, e.g. `osu_bw`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Allgather => "osu_allgather",
            Self::Allgatherv => "osu_allgatherv",
            Self::Allreduce => "osu_allreduce",
            Self::Alltoall => "osu_alltoall",
            Self::Alltoallv => "osu_alltoallv",
            Self::Barrier => "osu_barrier",
            Self::Bcast => "osu_bcast",
            Self::Bibw => "osu_bibw",
            Self::Bw => "osu_bw",
            Self::Gather => "osu_gather",
            Self::Gatherv => "osu_gatherv",
            Self::Iallgather => "osu_iallgather",
            Self::Iallgatherv => "osu_iallgatherv",
            Self::Iallreduce => "osu_iallreduce",
            Self::Ialltoall => "osu_ialltoall",
            Self::Ialltoallv => "osu_ialltoallv",
            Self::Ibarrier => "osu_ibarrier",
            Self::Ibcast => "osu_ibcast",
            Self::Igather => "osu_igather",
            Self::Igatherv => "osu_igatherv",
            Self::Ireduce => "osu_ireduce",
            Self::IreduceScatter => "osu_ireduce_scatter",
            Self::Iscatter => "osu_iscatter",
            Self::Iscatterv => "osu_iscatterv",
            Self::Latency => "osu_latency",
            Self::MbwMr => "osu_mbw_mr",
            Self::MultiLat => "osu_multi_lat",
            Self::Reduce => "osu_reduce",
            Self::ReduceScatter => "osu_reduce_scatter",
            Self::Scatter => "osu_scatter",
            Self::Scatterv => "osu_scatterv",
        }
    }

    /// Which kind of benchmark this is.
    #[must_use]
    pub fn family(self) -> Family {
        match self {
            Self::Bibw | Self::Bw | Self::Latency | Self::MbwMr | Self::MultiLat => {
                Family::PointToPoint
            }
            Self::Iallgather
            | Self::Iallgatherv
            | Self::Iallreduce
            | Self::Ialltoall
            | Self::Ialltoallv
            | Self::Ibarrier
            | Self::Ibcast
            | Self::Igather
            | Self::Igatherv
            | Self::Ireduce
            | Self::IreduceScatter
            | Self::Iscatter
            | Self::Iscatterv => Family::Nonblocking,
            _ => Family::Blocking,
        }
    }

    /// Whether the benchmark reduces `MPI_FLOAT`s (4-byte elements; smaller sizes are skipped,
    /// as OSU skips sizes that hold no element).
    #[must_use]
    pub fn is_reduction(self) -> bool {
        matches!(
            self,
            Self::Allreduce
                | Self::Iallreduce
                | Self::Ireduce
                | Self::IreduceScatter
                | Self::Reduce
                | Self::ReduceScatter
        )
    }

    /// Whether the benchmark has no message size (barriers): it runs once, as size 0.
    #[must_use]
    pub fn is_sizeless(self) -> bool {
        matches!(self, Self::Barrier | Self::Ibarrier)
    }

    /// Whether the benchmark keeps a window of messages in flight (`-W` applies).
    #[must_use]
    pub fn has_window(self) -> bool {
        matches!(self, Self::Bibw | Self::Bw | Self::MbwMr)
    }

    /// The default message sizes (`-m` absent): OSU visits 1 B .. 4 MiB for point-to-point
    /// and 1 B .. 1 MiB for collectives.
    #[must_use]
    pub fn default_sizes(self) -> SizeRange {
        match self.family() {
            Family::PointToPoint => SizeRange::default(),
            Family::Blocking | Family::Nonblocking => SizeRange {
                min: MIN_MESSAGE_SIZE,
                max: MAX_MSG_SIZE_COLL,
            },
        }
    }

    /// Default `(iterations, warm-up)` for a message of `size` bytes (OSU 7.4 `osu_util.h`:
    /// `LAT_LOOP_*`/`LAT_SKIP_*`, `BW_LOOP_*`/`BW_SKIP_*` and `COLL_LOOP_*`/`COLL_SKIP_*`).
    #[must_use]
    pub fn default_loops(self, size: usize) -> (usize, usize) {
        let large = size > LARGE_MESSAGE_SIZE;
        if self.family() != Family::PointToPoint {
            return if large { (100, 10) } else { (1_000, 100) };
        }
        match (self.has_window(), large) {
            (false, false) => (10_000, 100),
            (false, true) => (1_000, 10),
            (true, false) => (100, 10),
            (true, true) => (20, 2),
        }
    }
}

/// Which message-passing library the benchmark runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Braid's Rust API.
    #[default]
    Braid,
    /// A system MPI through rsmpi (needs the `rsmpi` cargo feature).
    Rsmpi,
}

impl BackendKind {
    /// The name used in output records.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Braid => "braid",
            Self::Rsmpi => "rsmpi",
        }
    }
}

/// Format of the results written to standard output (or to `--output`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One CSV row per message size, with a header row.
    Csv,
    /// A JSON array with one object per message size.
    Json,
    /// OSU's text table.
    #[default]
    Text,
}

/// An inclusive range of message sizes, from OSU's `-m [MIN:]MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeRange {
    /// Smallest message size in bytes.
    pub min: usize,
    /// Largest message size in bytes.
    pub max: usize,
}

impl Default for SizeRange {
    fn default() -> Self {
        Self {
            min: MIN_MESSAGE_SIZE,
            max: MAX_MESSAGE_SIZE,
        }
    }
}

impl SizeRange {
    /// The sizes OSU visits: `min`, then doubling (0 is followed by 1) while `<= max`.
    #[must_use]
    pub fn sizes(self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut size = self.min;
        while size <= self.max {
            out.push(size);
            size = match size {
                0 => 1,
                s => match s.checked_mul(2) {
                    Some(next) => next,
                    None => break,
                },
            };
        }
        out
    }
}

/// Parses `MAX`, `MIN:MAX` or `MIN:` (OSU's `-m`); the maximum defaults to 4 MiB.
///
/// # Errors
/// A message naming the problem when a number does not parse or `MIN > MAX`.
pub fn parse_size_range(s: &str) -> Result<SizeRange, String> {
    let num = |t: &str| -> Result<usize, String> {
        t.trim()
            .parse::<usize>()
            .map_err(|e| format!("bad message size {t:?}: {e}"))
    };
    let range = match s.split_once(':') {
        None => SizeRange {
            min: MIN_MESSAGE_SIZE.min(num(s)?),
            max: num(s)?,
        },
        Some((min, "")) => SizeRange {
            min: num(min)?,
            max: MAX_MESSAGE_SIZE.max(num(min)?),
        },
        Some(("", max)) => SizeRange {
            min: MIN_MESSAGE_SIZE.min(num(max)?),
            max: num(max)?,
        },
        Some((min, max)) => SizeRange {
            min: num(min)?,
            max: num(max)?,
        },
    };
    if range.min > range.max {
        return Err(format!(
            "minimum message size {} exceeds maximum {}",
            range.min, range.max
        ));
    }
    Ok(range)
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Command-line options of every benchmark (OSU 7 names where OSU has the option).
#[derive(Clone, Debug, Parser)]
#[command(version, about = "OSU-style MPI benchmark over Braid or a system MPI")]
pub struct Args {
    /// Message sizes: `MAX`, `MIN:MAX` or `MIN:` in bytes (default 1:4194304 point-to-point,
    /// 1:1048576 collectives; reductions skip sizes below 4 bytes, one `MPI_FLOAT`).
    #[arg(short = 'm', long = "message-size", value_name = "[MIN:]MAX", value_parser = parse_size_range)]
    pub message_size: Option<SizeRange>,

    /// Timed iterations per size (default: 10000 small / 1000 large for latency, 100 / 20 for
    /// bandwidth, 1000 / 100 for collectives; "large" is above 8192 bytes).
    #[arg(short = 'i', long = "iterations", value_name = "ITER", value_parser = parse_positive)]
    pub iterations: Option<usize>,

    /// Warm-up iterations per size (default: 100 / 10 for latency, 10 / 2 for bandwidth,
    /// 100 / 10 for collectives).
    #[arg(short = 'x', long = "warmup", value_name = "WARMUP")]
    pub warmup: Option<usize>,

    /// Messages in flight per window (bandwidth benchmarks only, default 64).
    #[arg(short = 'W', long = "window-size", value_name = "WINDOW", value_parser = parse_positive)]
    pub window: Option<usize>,

    /// Validate received data (OSU's `-c`); adds a `Validation` column, exits non-zero on Fail.
    #[arg(short = 'c', long = "validation")]
    pub validate: bool,

    /// Format of the results: OSU text, JSON or CSV. Goes to standard output, or to `--output`
    /// (then standard output still gets OSU text).
    #[arg(long = "format", value_enum, default_value_t)]
    pub format: Format,

    /// OSU's full listing (`-f`): collectives also print min and max latency and iterations;
    /// nonblocking ones also print init, test and wait times.
    #[arg(short = 'f', long = "full")]
    pub full: bool,

    /// `osu_latency`: time every round trip and report the median and 99th percentile
    /// (`p50_us`, `p99_us` in JSON/CSV). Adds two clock reads per iteration to the timed
    /// loop, so it is off by default: like OSU, the plain run times the whole loop.
    #[arg(long = "percentiles")]
    pub percentiles: bool,

    /// Nonblocking collectives: call `MPI_Test` this many times, evenly spread, during the
    /// dummy compute (OSU's `-t`; default 0: no test calls).
    #[arg(short = 't', long = "num_test_calls", value_name = "CALLS")]
    pub num_test_calls: Option<usize>,

    /// Write the results in `--format` to this file (rank 0 only).
    #[arg(long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Message-passing library: `braid` or `rsmpi` (a system MPI; needs the `rsmpi` feature).
    #[arg(long = "backend", value_enum, default_value_t)]
    pub backend: BackendKind,
}

/// The resolved parameters of one run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Which benchmark.
    pub bench: Bench,
    /// Message sizes, in visiting order.
    pub sizes: Vec<usize>,
    /// `-i`, overriding the per-size default when set.
    pub iterations: Option<usize>,
    /// `-x`, overriding the per-size default when set.
    pub warmup: Option<usize>,
    /// Window for the bandwidth benchmarks (1 for the latency ones).
    pub window: usize,
    /// Whether to validate received data.
    pub validate: bool,
    /// Time every `osu_latency` round trip for percentiles (`--percentiles`).
    pub percentiles: bool,
    /// OSU's full listing (`-f`).
    pub full: bool,
    /// `MPI_Test` calls during the dummy compute of the nonblocking collectives (OSU's `-t`).
    pub test_calls: usize,
}

impl Config {
    /// Resolves `args` for `bench`.
    ///
    /// # Errors
    /// `-W` given to a benchmark without a window.
    pub fn new(bench: Bench, args: &Args) -> Result<Self, String> {
        if args.window.is_some() && !bench.has_window() {
            return Err(format!("{} has no window: -W does not apply", bench.name()));
        }
        if args.num_test_calls.is_some() && bench.family() != Family::Nonblocking {
            return Err(format!(
                "{} is not a nonblocking collective: -t does not apply",
                bench.name()
            ));
        }
        let range = args.message_size.unwrap_or_else(|| bench.default_sizes());
        let sizes = if bench.is_sizeless() {
            vec![0]
        } else if bench.is_reduction() {
            // OSU: `num_elements = size / sizeof(float); if (num_elements == 0) continue;`
            range
                .sizes()
                .into_iter()
                .filter(|&s| s >= size_of::<f32>())
                .collect()
        } else {
            range.sizes()
        };
        Ok(Self {
            bench,
            sizes,
            iterations: args.iterations,
            warmup: args.warmup,
            window: if bench.has_window() {
                args.window.unwrap_or(DEFAULT_WINDOW)
            } else {
                1
            },
            validate: args.validate,
            percentiles: args.percentiles,
            full: args.full,
            test_calls: args.num_test_calls.unwrap_or(0),
        })
    }

    /// `(iterations, warm-up)` for a message of `size` bytes.
    #[must_use]
    pub fn loops(&self, size: usize) -> (usize, usize) {
        let (iters, skip) = self.bench.default_loops(size);
        (
            self.iterations.unwrap_or(iters),
            self.warmup.unwrap_or(skip),
        )
    }

    /// The largest message size of the run (0 if there are none).
    #[must_use]
    pub fn max_size(&self) -> usize {
        self.sizes.iter().copied().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(args).unwrap()
    }

    #[test]
    fn default_sizes_are_osu_7() {
        let sizes = SizeRange::default().sizes();
        assert_eq!(sizes.len(), 23);
        assert_eq!(sizes[0], 1);
        assert_eq!(*sizes.last().unwrap(), 4 << 20);
    }

    #[test]
    fn size_ranges_parse_like_osu() {
        assert_eq!(
            parse_size_range("1:4096").unwrap(),
            SizeRange { min: 1, max: 4096 }
        );
        assert_eq!(
            parse_size_range("64").unwrap(),
            SizeRange { min: 1, max: 64 }
        );
        assert_eq!(parse_size_range("0:2").unwrap().sizes(), vec![0, 1, 2]);
        assert_eq!(parse_size_range("1024:").unwrap().max, MAX_MESSAGE_SIZE);
        assert_eq!(parse_size_range("3:20").unwrap().sizes(), vec![3, 6, 12]);
        assert!(parse_size_range("8:4").is_err());
        assert!(parse_size_range("x").is_err());
    }

    #[test]
    fn options_parse() {
        let a = parse(&[
            "osu_bw", "-m", "1:4096", "-i", "50", "-x", "5", "-W", "8", "-c",
        ]);
        let c = Config::new(Bench::Bw, &a).unwrap();
        assert_eq!(c.sizes.len(), 13);
        assert_eq!(c.loops(1), (50, 5));
        assert_eq!(c.loops(1 << 20), (50, 5));
        assert_eq!(c.window, 8);
        assert!(c.validate);
        assert_eq!(a.backend, BackendKind::Braid);
        assert_eq!(a.format, Format::Text);

        let a = parse(&[
            "osu_latency",
            "--format",
            "json",
            "--output",
            "r.json",
            "--backend",
            "rsmpi",
        ]);
        assert_eq!(a.format, Format::Json);
        assert_eq!(a.backend, BackendKind::Rsmpi);
        let c = Config::new(Bench::Latency, &a).unwrap();
        assert_eq!(c.loops(8192), (10_000, 100));
        assert_eq!(c.loops(8193), (1_000, 10));
        assert_eq!(c.window, 1);

        assert!(Config::new(Bench::Latency, &parse(&["osu_latency", "-W", "4"])).is_err());
        let c = Config::new(Bench::Igather, &parse(&["osu_igather", "-t", "100"])).unwrap();
        assert_eq!(c.test_calls, 100);
        assert_eq!(
            Config::new(Bench::Iscatterv, &parse(&["osu_iscatterv"]))
                .unwrap()
                .test_calls,
            0
        );
        assert!(Config::new(Bench::Gather, &parse(&["osu_gather", "-t", "10"])).is_err());
        assert!(Args::try_parse_from(["osu_bw", "-i", "0"]).is_err());
        assert!(Args::try_parse_from(["osu_bw", "--backend", "mpich"]).is_err());
    }

    #[test]
    fn bench_names_round_trip() {
        for b in Bench::ALL {
            assert_eq!(Bench::from_name(b.name()), Some(b));
        }
        assert_eq!(Bench::from_name("/x/y/osu_mbw_mr"), Some(Bench::MbwMr));
        assert_eq!(Bench::from_name("osu_allreduce"), Some(Bench::Allreduce));
        assert_eq!(Bench::from_name("osu_iscatter"), Some(Bench::Iscatter));
        assert_eq!(Bench::from_name("osu_ialltoallw"), None);
        assert_eq!(Bench::Bw.default_loops(1), (100, 10));
        assert_eq!(Bench::MbwMr.default_loops(1 << 20), (20, 2));
        assert_eq!(Bench::Bcast.default_loops(8192), (1_000, 100));
        assert_eq!(Bench::Ibcast.default_loops(8193), (100, 10));
    }

    #[test]
    fn collective_sizes_follow_osu() {
        let c = Config::new(Bench::Allreduce, &parse(&["osu_allreduce"])).unwrap();
        assert_eq!(c.sizes.first(), Some(&4), "reductions start at one float");
        assert_eq!(c.sizes.last(), Some(&(1 << 20)));
        let c = Config::new(Bench::Bcast, &parse(&["osu_bcast", "-f"])).unwrap();
        assert_eq!((c.sizes[0], c.sizes.len()), (1, 21));
        assert!(c.full);
        let c = Config::new(Bench::Barrier, &parse(&["osu_barrier", "-m", "1:64"])).unwrap();
        assert_eq!(c.sizes, vec![0]);
        assert_eq!(
            Config::new(Bench::Ireduce, &parse(&["osu_ireduce", "-m", "2:16"]))
                .unwrap()
                .sizes,
            vec![4, 8, 16]
        );
    }
}
