//! `osu_paper`: the tables and figures of Strazdins, Alexander and Barr (2006) on the namespace
//! testbed of `braid-xen`, one subcommand per table.
//!
//! - `modes`: `osu_bw`, `osu_bibw`, `osu_latency` between two hosts for rail modes
//!   `single`/`stripe`/`weighted` over 1, 2 and 4 rails (the paper's Table 1 and Figures 2-3:
//!   bandwidth against message size, one line per configuration).
//! - `pairs`: 1, 2 and 4 process pairs across two hosts in `indep` (4 rails) against `single`
//!   (one rail): `osu_mbw_mr` aggregate and a per-pair timing (the paper's methodology: every
//!   pair timed separately, 10 repetitions, mean and spread per pair; Table 3).
//! - `hetero`: `stripe` against `weighted` over three 1 Gbit rails and one 720 Mbit rail, with a
//!   TCP aggregate reference measured by `braid-testbed tcp-source`/`tcp-sink`.
//! - `openmpi`: the `modes` bandwidth runs through the rsmpi backend on Open MPI, its daemons
//!   started inside the testbed's namespaces by a small `plm_rsh_agent` script.
//! - `failover`: a rail taken down in the middle of a stream; bandwidth before and after, the
//!   stall and the time lost (see [`failover`]).
//!
//! Every subcommand brings the spec's testbed up when it is not (and down at the end unless
//! `--keep`), launches jobs with `mpirun --testbed` on a copy of the spec with the number of
//! slots per host the run needs, collects the benchmarks' JSON records and writes, under
//! `--out`: `raw/` (every job's JSON), a CSV and a JSON summary, SVG plots of bandwidth against
//! message size, and prints OSU-style tables.
//!
//! The hidden subcommands `pair-rank` and `stream-rank` are the per-pair and failover
//! benchmarks themselves; they run as the ranks of a Braid job (`mpirun ... osu_paper
//! pair-rank`).

pub mod failover;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use clap::{Args as ClapArgs, Parser, Subcommand};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::report::{Record, parse_json};

/// Command line of `osu_paper`.
#[derive(Debug, Parser)]
#[command(
    name = "osu_paper",
    version,
    about = "The paper's tables on the namespace testbed"
)]
pub struct Cli {
    /// Which table.
    #[command(subcommand)]
    pub command: Cmd,
}

/// One subcommand per table of the paper.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// osu_bw, osu_bibw, osu_latency per rail mode and rail count (Figures 2-3, Table 1).
    Modes(ModesArgs),
    /// 1, 2, 4 pairs in indep vs single: osu_mbw_mr and per-pair mean/spread (Table 3).
    Pairs(PairsArgs),
    /// stripe vs weighted over heterogeneous rails, with a TCP aggregate reference.
    Hetero(HeteroArgs),
    /// osu_bw through the rsmpi backend on Open MPI across the testbed hosts.
    Openmpi(OpenmpiArgs),
    /// A rail taken down mid-transfer: bandwidth before/after, stall, time lost.
    Failover(failover::FailoverArgs),
    /// The per-pair benchmark, run as the ranks of a job (used by `pairs`).
    #[command(hide = true)]
    PairRank(PairRankArgs),
    /// The failover stream, run as the ranks of a job (used by `failover`).
    #[command(hide = true)]
    StreamRank(failover::StreamRankArgs),
}

/// Options every table takes.
#[derive(Debug, Clone, ClapArgs)]
pub struct Common {
    /// Testbed spec (TOML) of `braid-xen`.
    #[arg(long)]
    pub spec: PathBuf,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Leave the testbed up at the end (it is always left up if it was up before).
    #[arg(long)]
    pub keep: bool,
    /// Directory of `mpirun` and `braid-testbed` (default: the directory of this program).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Seconds a single job may take before it is ended (`mpirun --timeout`).
    #[arg(long, default_value_t = 600)]
    pub job_timeout: u64,
}

/// Options of `modes`.
#[derive(Debug, ClapArgs)]
pub struct ModesArgs {
    #[command(flatten)]
    common: Common,
    /// Configurations `MODE:RAILS` (default: single:1, stripe:2, stripe:4, weighted:2,
    /// weighted:4; `single` uses only the first rail whatever the count, so single:2 and
    /// single:4 add nothing but time).
    #[arg(long, value_delimiter = ',')]
    configs: Option<Vec<String>>,
    /// Run the full 3 x 3 matrix (single/stripe/weighted x 1/2/4 rails).
    #[arg(long)]
    all: bool,
    /// Message sizes of the bandwidth runs (`-m`).
    #[arg(long, default_value = "1:4194304")]
    bw_sizes: String,
    /// Iterations of the bandwidth runs (`-i`).
    #[arg(long, default_value_t = 20)]
    bw_iters: usize,
    /// Warm-up of the bandwidth runs (`-x`).
    #[arg(long, default_value_t = 2)]
    bw_warmup: usize,
    /// Window of the bandwidth runs (`-W`).
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Message sizes of the latency runs.
    #[arg(long, default_value = "1:4194304")]
    lat_sizes: String,
    /// Iterations of the latency runs.
    #[arg(long, default_value_t = 50)]
    lat_iters: usize,
    /// Warm-up of the latency runs.
    #[arg(long, default_value_t = 5)]
    lat_warmup: usize,
    /// Skip osu_bibw and osu_latency.
    #[arg(long)]
    bw_only: bool,
}

/// Options of `pairs`.
#[derive(Debug, ClapArgs)]
pub struct PairsArgs {
    #[command(flatten)]
    common: Common,
    /// Pair counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pairs: Vec<usize>,
    /// Message sizes of the per-pair runs.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1024,16384,262144,4194304"
    )]
    sizes: Vec<usize>,
    /// Repetitions of every per-pair data point.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Timed windows per repetition.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Warm-up windows per repetition.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Messages per window.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Skip the osu_mbw_mr aggregate runs.
    #[arg(long)]
    no_mbw_mr: bool,
}

/// Options of `hetero`.
#[derive(Debug, ClapArgs)]
pub struct HeteroArgs {
    #[command(flatten)]
    common: Common,
    /// Message sizes (`-m`).
    #[arg(long, default_value = "4096:4194304")]
    sizes: String,
    /// Iterations (`-i`).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Warm-up (`-x`).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Window (`-W`).
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Seconds of the TCP reference (all rails at once).
    #[arg(long, default_value_t = 3)]
    tcp_secs: u64,
}

/// Options of `openmpi`.
#[derive(Debug, ClapArgs)]
pub struct OpenmpiArgs {
    #[command(flatten)]
    common: Common,
    /// The rsmpi build of `osu_bw` (`CARGO_TARGET_DIR=target-rsmpi cargo build --release -p
    /// braid-osu --features rsmpi`).
    #[arg(long, default_value = "target-rsmpi/release/osu_bw")]
    osu_bw: PathBuf,
    /// The rsmpi build of `osu_latency`.
    #[arg(long, default_value = "target-rsmpi/release/osu_latency")]
    osu_latency: PathBuf,
    /// Open MPI's launcher.
    #[arg(long, default_value = "mpirun.openmpi")]
    mpirun: String,
    /// Rail counts (`btl_tcp_if_include` = the first N rails; Braid gets the same rails).
    #[arg(long, value_delimiter = ',', default_value = "4")]
    rails: Vec<usize>,
    /// Braid rail modes run against Open MPI (osu_bw and osu_latency); `single` runs
    /// osu_latency only, as the small-message reference.
    #[arg(long, value_delimiter = ',', default_value = "stripe,weighted,single")]
    modes: Vec<String>,
    /// Rounds; each runs every configuration once, Open MPI and Braid interleaved. The
    /// summary takes the median of the rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Message sizes of osu_bw (`-m`; empty: no osu_bw runs).
    #[arg(long, default_value = "65536:4194304")]
    sizes: String,
    /// Iterations (`-i`).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Warm-up (`-x`).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Window (`-W`).
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Message sizes of osu_latency (empty: no latency runs).
    #[arg(long, default_value = "8:65536")]
    lat_sizes: String,
    /// Iterations of osu_latency.
    #[arg(long, default_value_t = 2000)]
    lat_iters: usize,
    /// Warm-up of osu_latency.
    #[arg(long, default_value_t = 200)]
    lat_warmup: usize,
}

/// Options of the hidden per-pair rank program.
#[derive(Debug, ClapArgs)]
pub struct PairRankArgs {
    /// Message sizes.
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Repetitions.
    #[arg(long)]
    reps: usize,
    /// Timed windows per repetition.
    #[arg(long)]
    iters: usize,
    /// Warm-up windows.
    #[arg(long)]
    warmup: usize,
    /// Messages per window.
    #[arg(long)]
    window: usize,
    /// JSON output (rank 0).
    #[arg(long)]
    output: PathBuf,
}

/// Entry point of the binary.
#[must_use]
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Modes(a) => with_testbed(&a.common.clone(), |tb| modes(tb, &a)),
        Cmd::Pairs(a) => with_testbed(&a.common.clone(), |tb| pairs(tb, &a)),
        Cmd::Hetero(a) => with_testbed(&a.common.clone(), |tb| hetero(tb, &a)),
        Cmd::Openmpi(a) => with_testbed(&a.common.clone(), |tb| openmpi(tb, &a)),
        Cmd::Failover(a) => with_testbed(&a.common.clone(), |tb| failover::failover(tb, &a)),
        Cmd::PairRank(a) => pair_rank(&a),
        Cmd::StreamRank(a) => failover::stream_rank(&a),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("osu_paper: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Testbed and jobs
// ---------------------------------------------------------------------------------------------

/// A running testbed and where the tools are.
#[derive(Debug)]
struct Testbed {
    common: Common,
    /// The spec's `name`.
    name: String,
    /// The spec's text.
    text: String,
    mpirun: PathBuf,
    testbed: PathBuf,
    /// Interfaces of the rails, in spec order.
    rails: Vec<String>,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The quoted value of `key = "..."` on a line of its own (top level or first match).
fn toml_string(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix(key)?.trim_start().strip_prefix('=')?.trim();
        let rest = rest.strip_prefix('"')?;
        Some(rest[..rest.find('"')?].to_owned())
    })
}

fn rails_of(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_rail = false;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            in_rail = t == "[[rails]]";
        } else if in_rail && let Some(n) = toml_string(t, "name") {
            out.push(n);
            in_rail = false;
        }
    }
    out
}

fn with_testbed(
    common: &Common,
    f: impl FnOnce(&Testbed) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    ensure!(
        is_root(),
        "osu_paper needs root (the namespace testbed does); run it as root"
    );
    ensure!(
        common.spec.is_file(),
        "spec {} is missing",
        common.spec.display()
    );
    let text = std::fs::read_to_string(&common.spec)
        .with_context(|| format!("reading spec {}", common.spec.display()))?;
    let name = toml_string(&text, "name")
        .ok_or_else(|| anyhow!("spec {} has no top-level name", common.spec.display()))?;
    let bin_dir = match &common.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no directory of this program"))?
            .to_path_buf(),
    };
    let mpirun = bin_dir.join("mpirun");
    let testbed = bin_dir.join("braid-testbed");
    for p in [&mpirun, &testbed] {
        ensure!(
            p.is_file(),
            "{} is missing (cargo build --release --workspace --bins)",
            p.display()
        );
    }
    std::fs::create_dir_all(common.out.join("raw"))
        .with_context(|| format!("creating {}", common.out.display()))?;
    let tb = Testbed {
        common: common.clone(),
        rails: rails_of(&text),
        name,
        text,
        mpirun,
        testbed,
    };
    let was_up = tb.is_up()?;
    if !was_up {
        eprintln!("osu_paper: bringing testbed {} up", tb.name);
        run_checked(Command::new(&tb.testbed).arg("up").arg(&common.spec))?;
    }
    let r = f(&tb);
    if !was_up && !common.keep {
        eprintln!("osu_paper: taking testbed {} down", tb.name);
        run_checked(Command::new(&tb.testbed).arg("down").arg(&common.spec))?;
    }
    r
}

fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        let _ = write!(
            s,
            "{}={} ",
            k.to_string_lossy(),
            v.map(|v| v.to_string_lossy()).unwrap_or_default()
        );
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to the end, echoing it; its standard output on success.
fn run_checked(cmd: &mut Command) -> anyhow::Result<String> {
    let line = describe(cmd);
    eprintln!("+ {line}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{line}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n{}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

impl Testbed {
    fn is_up(&self) -> anyhow::Result<bool> {
        let out = Command::new(&self.testbed)
            .arg("status")
            .arg(&self.common.spec)
            .output()
            .with_context(|| format!("running {} status", self.testbed.display()))?;
        let s = String::from_utf8_lossy(&out.stdout);
        Ok(s.lines()
            .next()
            .is_some_and(|l| l.trim_end().ends_with(": up")))
    }

    /// A copy of the spec with `slots` per host (same name: mpirun attaches to the testbed).
    fn spec_with_slots(&self, slots: usize) -> anyhow::Result<PathBuf> {
        let text: String = self
            .text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("slots") {
                    format!("slots = {slots}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let p = self
            .common
            .out
            .join(format!("spec-{}-slots{slots}.toml", self.name));
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }

    fn rail_list(&self, n: usize) -> anyhow::Result<String> {
        ensure!(
            n >= 1 && n <= self.rails.len(),
            "spec has {} rails, {n} asked",
            self.rails.len()
        );
        Ok(self.rails[..n].join(","))
    }

    /// `mpirun --testbed SPEC -n N -x K=V... PROGRAM ARGS`; fails naming the command.
    fn mpirun(
        &self,
        spec: &Path,
        n: usize,
        env: &[(&str, String)],
        prog: &[String],
    ) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.mpirun);
        cmd.arg("--testbed")
            .arg(spec)
            .arg("--timeout")
            .arg(self.common.job_timeout.to_string())
            .arg("-n")
            .arg(n.to_string());
        for (k, v) in env {
            cmd.arg("-x").arg(format!("{k}={v}"));
        }
        cmd.args(prog);
        let t = Instant::now();
        let out = run_checked(&mut cmd)?;
        eprintln!("  ({:.1} s)", t.elapsed().as_secs_f64());
        Ok(out)
    }
}

fn read_records(p: &Path) -> anyhow::Result<Vec<Record>> {
    let s = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    parse_json(&s).with_context(|| format!("parsing {}", p.display()))
}

fn write_json<T: Serialize>(p: &Path, v: &T) -> anyhow::Result<()> {
    std::fs::write(p, serde_json::to_string_pretty(v)?)
        .with_context(|| format!("writing {}", p.display()))?;
    eprintln!("wrote {}", p.display());
    Ok(())
}

fn write_text(p: &Path, s: &str) -> anyhow::Result<()> {
    std::fs::write(p, s).with_context(|| format!("writing {}", p.display()))?;
    eprintln!("wrote {}", p.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tables and plots
// ---------------------------------------------------------------------------------------------

/// One point of a summary: a configuration, a benchmark, a size and its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    /// Configuration label, e.g. `stripe-4rail`.
    pub config: String,
    /// Benchmark, e.g. `osu_bw`.
    pub benchmark: String,
    /// Message size in bytes.
    pub size: usize,
    /// MB/s or us.
    pub value: f64,
    /// Unit of `value`.
    pub unit: String,
}

fn human_size(s: usize) -> String {
    if s >= 1 << 20 && s.is_multiple_of(1 << 20) {
        format!("{}M", s >> 20)
    } else if s >= 1 << 10 && s.is_multiple_of(1 << 10) {
        format!("{}K", s >> 10)
    } else {
        s.to_string()
    }
}

/// OSU-style table: one row per size, one column per configuration.
fn table(title: &str, unit: &str, points: &[&Point]) -> String {
    let mut configs: Vec<&str> = Vec::new();
    let mut cells: BTreeMap<usize, BTreeMap<&str, f64>> = BTreeMap::new();
    for p in points {
        if !configs.contains(&p.config.as_str()) {
            configs.push(&p.config);
        }
        cells.entry(p.size).or_default().insert(&p.config, p.value);
    }
    let width = configs
        .iter()
        .map(|c| c.len() + 2)
        .max()
        .unwrap_or(0)
        .max(16);
    let mut s = format!("# {title} ({unit})\n# {:<10}", "Size");
    for c in &configs {
        let _ = write!(s, "{c:>w$}", w = width);
    }
    s.push('\n');
    for (size, row) in &cells {
        let _ = write!(s, "{size:<12}");
        for c in &configs {
            match row.get(c) {
                Some(v) => {
                    let _ = write!(s, "{v:>w$.2}", w = width);
                }
                None => {
                    let _ = write!(s, "{:>w$}", "-", w = width);
                }
            }
        }
        s.push('\n');
    }
    s
}

/// A line of a plot: label, points `(size, mean, min, max)`.
type Line = (String, Vec<(usize, f64, f64, f64)>);

/// SVG plot of value against log2 message size, one line per entry; draws min-max bars when
/// they differ from the mean.
fn plot(path: &Path, title: &str, ylabel: &str, lines: &[Line]) -> anyhow::Result<()> {
    let sizes = lines.iter().flat_map(|l| l.1.iter().map(|p| p.0));
    let xmin = sizes.clone().min().unwrap_or(1).max(1) as f64;
    let xmax = sizes.max().unwrap_or(2).max(2) as f64;
    let ymax = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.3.max(p.1)))
        .fold(1.0f64, f64::max)
        * 1.1;
    let (x0, x1) = (xmin.log2(), xmax.log2().max(xmin.log2() + 1.0));
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(x0..x1, 0.0..ymax)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("message size (bytes)")
        .y_desc(ylabel)
        .x_labels(((x1 - x0) as usize + 1).min(24))
        .x_label_formatter(&|x| human_size(2f64.powf(x.round()) as usize))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (label, pts)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = ShapeStyle::from(&color).stroke_width(2);
        let xy: Vec<(f64, f64)> = pts
            .iter()
            .map(|p| ((p.0.max(1) as f64).log2(), p.1))
            .collect();
        chart
            .draw_series(LineSeries::new(xy, style))
            .map_err(|e| err(&e))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        let bars = pts.iter().filter(|p| p.3 > p.2).flat_map(|p| {
            let x = (p.0.max(1) as f64).log2();
            let w = 0.08;
            [
                PathElement::new(vec![(x, p.2), (x, p.3)], style),
                PathElement::new(vec![(x - w, p.2), (x + w, p.2)], style),
                PathElement::new(vec![(x - w, p.3), (x + w, p.3)], style),
            ]
        });
        chart.draw_series(bars).map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn lines_of(points: &[&Point]) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    for p in points {
        match out.iter_mut().find(|l| l.0 == p.config) {
            Some(l) => l.1.push((p.size, p.value, p.value, p.value)),
            None => out.push((p.config.clone(), vec![(p.size, p.value, p.value, p.value)])),
        }
    }
    out
}

fn points_csv(points: &[Point]) -> String {
    let mut s = String::from("config,benchmark,size,value,unit\n");
    for p in points {
        let _ = writeln!(
            s,
            "{},{},{},{:.3},{}",
            p.config, p.benchmark, p.size, p.value, p.unit
        );
    }
    s
}

/// Writes CSV, JSON, plots per bandwidth benchmark and prints the tables.
fn summarize(out: &Path, stem: &str, what: &str, points: &[Point]) -> anyhow::Result<()> {
    write_text(&out.join(format!("{stem}.csv")), &points_csv(points))?;
    write_json(&out.join(format!("{stem}.json")), &points)?;
    let mut benches: Vec<&str> = Vec::new();
    for p in points {
        if !benches.contains(&p.benchmark.as_str()) {
            benches.push(&p.benchmark);
        }
    }
    for b in benches {
        let sel: Vec<&Point> = points.iter().filter(|p| p.benchmark == b).collect();
        let unit = sel[0].unit.clone();
        println!("{}", table(&format!("{what}: {b}"), &unit, &sel));
        let ylabel = if unit == "us" {
            "latency (us)"
        } else {
            "bandwidth (MB/s)"
        };
        plot(
            &out.join(format!("{stem}-{b}.svg")),
            &format!("{what}: {b}"),
            ylabel,
            &lines_of(&sel),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// modes
// ---------------------------------------------------------------------------------------------

fn parse_config(s: &str) -> anyhow::Result<(String, usize)> {
    let (mode, rails) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("configuration `{s}` is not MODE:RAILS"))?;
    Ok((
        mode.to_owned(),
        rails
            .parse()
            .with_context(|| format!("rail count in `{s}`"))?,
    ))
}

fn modes(tb: &Testbed, a: &ModesArgs) -> anyhow::Result<()> {
    let configs: Vec<(String, usize)> = if a.all {
        ["single", "stripe", "weighted"]
            .iter()
            .flat_map(|m| [1, 2, 4].map(|r| ((*m).to_owned(), r)))
            .collect()
    } else {
        let list = a.configs.clone().unwrap_or_else(|| {
            [
                "single:1",
                "stripe:2",
                "stripe:4",
                "weighted:2",
                "weighted:4",
            ]
            .map(str::to_owned)
            .to_vec()
        });
        list.iter()
            .map(|s| parse_config(s))
            .collect::<anyhow::Result<_>>()?
    };
    let spec = tb.spec_with_slots(1)?;
    let mut points = Vec::new();
    for (mode, rails) in &configs {
        let label = format!("{mode}-{rails}rail");
        let env = [
            ("BRAID_RAILS", tb.rail_list(*rails)?),
            ("BRAID_RAIL_MODE", mode.clone()),
        ];
        let mut benches = vec![("osu_bw", &a.bw_sizes, a.bw_iters, a.bw_warmup, true)];
        if !a.bw_only {
            benches.push(("osu_bibw", &a.bw_sizes, a.bw_iters, a.bw_warmup, true));
            benches.push((
                "osu_latency",
                &a.lat_sizes,
                a.lat_iters,
                a.lat_warmup,
                false,
            ));
        }
        for (bench, sizes, iters, warmup, windowed) in benches {
            let file = tb
                .common
                .out
                .join("raw")
                .join(format!("{label}-{bench}.json"));
            let prog = osu_json_job(
                bench,
                &file,
                sizes,
                iters,
                warmup,
                windowed.then_some(a.window),
            );
            tb.mpirun(&spec, 2, &env, &prog)?;
            for r in read_records(&file)? {
                points.push(Point {
                    config: label.clone(),
                    benchmark: bench.into(),
                    size: r.size,
                    value: r.value,
                    unit: r.unit,
                });
            }
        }
    }
    summarize(
        &tb.common.out,
        "modes",
        &format!("{} rail modes", tb.name),
        &points,
    )
}

// ---------------------------------------------------------------------------------------------
// pairs
// ---------------------------------------------------------------------------------------------

/// What `pair-rank` writes: the per-pair bandwidth of every repetition and size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairRun {
    /// Number of pairs.
    pub pairs: usize,
    /// Messages per window.
    pub window: usize,
    /// Timed windows per repetition.
    pub iters: usize,
    /// `mbps[rep][size index][pair]` in MB/s (10^6 bytes/s).
    pub mbps: Vec<Vec<Vec<f64>>>,
    /// Message sizes.
    pub sizes: Vec<usize>,
}

/// Per-pair statistics of one size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairStat {
    /// Configuration, e.g. `indep-4p`.
    pub config: String,
    /// Pair index (rank i with rank i + k).
    pub pair: usize,
    /// Message size.
    pub size: usize,
    /// Mean over repetitions (MB/s).
    pub mean: f64,
    /// Smallest repetition.
    pub min: f64,
    /// Largest repetition.
    pub max: f64,
    /// Sample standard deviation.
    pub stddev: f64,
    /// Repetitions.
    pub reps: usize,
}

const PAIR_TAG: i32 = 0x7a1;
const PAIR_ACK: i32 = 0x7a2;
const PAIR_TIME: i32 = 0x7a3;

/// The per-pair benchmark: rank `i < k` streams `window` messages per iteration to rank
/// `i + k`, which acknowledges each window (osu_bw's loop); all pairs start together after a
/// barrier and every sender times itself; rank 0 collects the times.
fn pair_rank(a: &PairRankArgs) -> anyhow::Result<()> {
    let universe = braid::initialize().map_err(|e| anyhow!("initializing Braid: {e}"))?;
    let world = universe.world();
    let b = crate::backend::braid::BraidBackend::new(&world);
    let (me, n) = (b.rank(), b.size());
    ensure!(
        n >= 2 && n % 2 == 0,
        "pair-rank needs an even number of ranks (job has {n})"
    );
    let k = n / 2;
    let sender = me < k;
    let peer = if sender { me + k } else { me - k };
    let max = a.sizes.iter().copied().max().unwrap_or(0);
    let sbuf = vec![b'a'; if sender { max } else { 0 }];
    let mut rbuf = vec![0u8; if sender { 0 } else { max }];
    let mut ack = [0u8; 4];
    let mut mbps = Vec::new();
    for _ in 0..a.reps {
        let mut per_size = Vec::new();
        for &size in &a.sizes {
            b.barrier()?;
            let mut t0 = b.time();
            for i in 0..a.iters + a.warmup {
                if i == a.warmup {
                    t0 = b.time();
                }
                if sender {
                    b.window(peer, PAIR_TAG, &sbuf[..size], a.window, &mut [], 0)?;
                    b.recv(peer, PAIR_ACK, &mut ack)?;
                } else {
                    b.window(peer, PAIR_TAG, &[], 0, &mut rbuf[..size], a.window)?;
                    b.send(peer, PAIR_ACK, &ack)?;
                }
            }
            let elapsed = b.time() - t0;
            let bw = |t: f64| (size * a.window * a.iters) as f64 / 1e6 / t;
            if me == 0 {
                let mut row = vec![bw(elapsed)];
                for src in 1..k {
                    let mut t = [0u8; 8];
                    b.recv(src, PAIR_TIME, &mut t)?;
                    row.push(bw(f64::from_le_bytes(t)));
                }
                per_size.push(row);
            } else if sender {
                b.send(0, PAIR_TIME, &elapsed.to_le_bytes())?;
            }
        }
        mbps.push(per_size);
    }
    b.barrier()?;
    if me == 0 {
        let run = PairRun {
            pairs: k as usize,
            window: a.window,
            iters: a.iters,
            mbps,
            sizes: a.sizes.clone(),
        };
        std::fs::write(&a.output, serde_json::to_string(&run)?)
            .with_context(|| format!("writing {}", a.output.display()))?;
    }
    Ok(())
}

fn stats(config: &str, run: &PairRun) -> Vec<PairStat> {
    let mut out = Vec::new();
    for (si, &size) in run.sizes.iter().enumerate() {
        for pair in 0..run.pairs {
            let v: Vec<f64> = run.mbps.iter().map(|rep| rep[si][pair]).collect();
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let var = if v.len() > 1 {
                v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
            } else {
                0.0
            };
            out.push(PairStat {
                config: config.to_owned(),
                pair,
                size,
                mean,
                min: v.iter().copied().fold(f64::INFINITY, f64::min),
                max: v.iter().copied().fold(0.0, f64::max),
                stddev: var.sqrt(),
                reps: v.len(),
            });
        }
    }
    out
}

fn pairs(tb: &Testbed, a: &PairsArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let all = tb.rails.len();
    let sizes = a
        .sizes
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut all_stats: Vec<PairStat> = Vec::new();
    let mut aggregate: Vec<Point> = Vec::new();
    for &k in &a.pairs {
        ensure!(k >= 1, "a pair count of 0");
        let spec = tb.spec_with_slots(k)?;
        for (mode, rails) in [("indep", all), ("single", 1)] {
            let label = format!("{mode}-{k}p");
            let env = [
                ("BRAID_RAILS", tb.rail_list(rails)?),
                ("BRAID_RAIL_MODE", mode.to_owned()),
            ];
            if !a.no_mbw_mr {
                let file = tb
                    .common
                    .out
                    .join("raw")
                    .join(format!("{label}-osu_mbw_mr.json"));
                let min = a.sizes.iter().min().copied().unwrap_or(1);
                let max = a.sizes.iter().max().copied().unwrap_or(1);
                let prog = osu_json_job(
                    "osu_mbw_mr",
                    &file,
                    &format!("{min}:{max}"),
                    a.iters,
                    a.warmup,
                    Some(a.window),
                );
                tb.mpirun(&spec, 2 * k, &env, &prog)?;
                for r in read_records(&file)? {
                    aggregate.push(Point {
                        config: label.clone(),
                        benchmark: "osu_mbw_mr".into(),
                        size: r.size,
                        value: r.value,
                        unit: r.unit,
                    });
                }
            }
            let file = tb
                .common
                .out
                .join("raw")
                .join(format!("{label}-pairs.json"));
            let prog: Vec<String> = vec![
                exe.display().to_string(),
                "pair-rank".into(),
                "--sizes".into(),
                sizes.clone(),
                "--reps".into(),
                a.reps.to_string(),
                "--iters".into(),
                a.iters.to_string(),
                "--warmup".into(),
                a.warmup.to_string(),
                "--window".into(),
                a.window.to_string(),
                "--output".into(),
                file.display().to_string(),
            ];
            tb.mpirun(&spec, 2 * k, &env, &prog)?;
            let run: PairRun = serde_json::from_str(&std::fs::read_to_string(&file)?)
                .with_context(|| format!("parsing {}", file.display()))?;
            for (si, &size) in run.sizes.iter().enumerate() {
                let mean_sum = run
                    .mbps
                    .iter()
                    .map(|rep| rep[si].iter().sum::<f64>())
                    .sum::<f64>()
                    / run.mbps.len() as f64;
                aggregate.push(Point {
                    config: label.clone(),
                    benchmark: "sum_of_pairs".into(),
                    size,
                    value: mean_sum,
                    unit: "MB/s".into(),
                });
            }
            all_stats.extend(stats(&label, &run));
        }
    }
    let out = &tb.common.out;
    let mut csv = String::from("config,pair,size,mean_mbps,min_mbps,max_mbps,stddev_mbps,reps\n");
    for s in &all_stats {
        let _ = writeln!(
            csv,
            "{},{},{},{:.3},{:.3},{:.3},{:.3},{}",
            s.config, s.pair, s.size, s.mean, s.min, s.max, s.stddev, s.reps
        );
    }
    write_text(&out.join("pairs.csv"), &csv)?;
    write_json(&out.join("pairs.json"), &all_stats)?;
    // Per-pair table and figure per pair count.
    for &k in &a.pairs {
        let sel: Vec<&PairStat> = all_stats
            .iter()
            .filter(|s| s.config.ends_with(&format!("-{k}p")))
            .collect();
        let mut t = format!(
            "# {k} pair(s): per-pair bandwidth, mean ± stddev [min..max] over {} reps (MB/s)\n",
            a.reps
        );
        let _ = writeln!(
            t,
            "# {:<10}{:>14}{:>6}{:>12}{:>10}{:>22}",
            "Size", "config", "pair", "mean", "stddev", "min..max"
        );
        let mut lines: Vec<Line> = Vec::new();
        for s in &sel {
            let _ = writeln!(
                t,
                "{:<12}{:>14}{:>6}{:>12.2}{:>10.2}{:>22}",
                s.size,
                s.config,
                s.pair,
                s.mean,
                s.stddev,
                format!("{:.1}..{:.1}", s.min, s.max)
            );
            let label = format!("{} pair {}", s.config, s.pair);
            match lines.iter_mut().find(|l| l.0 == label) {
                Some(l) => l.1.push((s.size, s.mean, s.min, s.max)),
                None => lines.push((label, vec![(s.size, s.mean, s.min, s.max)])),
            }
        }
        println!("{t}");
        plot(
            &out.join(format!("pairs-{k}p.svg")),
            &format!("{k} pair(s): per-pair bandwidth (mean, min-max over reps)"),
            "bandwidth per pair (MB/s)",
            &lines,
        )?;
    }
    summarize(
        out,
        "pairs-aggregate",
        &format!("{} pairs aggregate", tb.name),
        &aggregate,
    )
}

// ---------------------------------------------------------------------------------------------
// hetero
// ---------------------------------------------------------------------------------------------

/// Rail addresses of `host` from `braid-testbed status` (`ethN  A.B.C.D/24 ...`).
fn host_addrs(status: &str, host: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for l in status.lines() {
        if !l.starts_with(' ') {
            inside = l.starts_with(&format!("{host} ("));
            continue;
        }
        let mut w = l.split_whitespace();
        if inside
            && let (Some(ifc), Some(addr)) = (w.next(), w.next())
            && let Some((ip, _)) = addr.split_once('/')
        {
            out.insert(ifc.to_owned(), ip.to_owned());
        }
    }
    out
}

fn mbit_of(s: &str) -> Option<f64> {
    s.split_whitespace()
        .find_map(|w| w.strip_prefix("mbit=")?.parse().ok())
}

fn spawn_piped(cmd: &mut Command) -> anyhow::Result<Child> {
    let line = describe(cmd);
    eprintln!("+ {line} &");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{line}`"))
}

fn finish(child: Child, what: &str) -> anyhow::Result<String> {
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {what}"))?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{what} failed ({}): {s}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(s)
}

/// All rails at once with `tcp-sink` in the second host and `tcp-source` in the first;
/// per-rail MB/s as the sinks measured them.
fn tcp_reference(tb: &Testbed, secs: u64) -> anyhow::Result<Vec<(String, f64)>> {
    let status = run_checked(Command::new(&tb.testbed).arg("status").arg(&tb.common.spec))?;
    let hosts: Vec<String> = tb
        .text
        .split("[[hosts]]")
        .skip(1)
        .filter_map(|h| toml_string(h, "name"))
        .collect();
    ensure!(hosts.len() >= 2, "spec has fewer than two hosts");
    let dst = host_addrs(&status, &hosts[1]);
    let mut sinks = Vec::new();
    for (i, rail) in tb.rails.iter().enumerate() {
        let ip = dst.get(rail).ok_or_else(|| {
            anyhow!(
                "no address of {} on {rail} in `braid-testbed status`",
                hosts[1]
            )
        })?;
        let addr = format!("{ip}:{}", 15_201 + i);
        let child = spawn_piped(
            Command::new(&tb.testbed)
                .arg("exec")
                .arg(&tb.common.spec)
                .arg(&hosts[1])
                .arg("--")
                .arg(&tb.testbed)
                .arg("tcp-sink")
                .arg(&addr)
                .arg("--secs")
                .arg((secs + 10).to_string()),
        )?;
        sinks.push((rail.clone(), addr, child));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut sources = Vec::new();
    for (rail, addr, _) in &sinks {
        let child = spawn_piped(
            Command::new(&tb.testbed)
                .arg("exec")
                .arg(&tb.common.spec)
                .arg(&hosts[0])
                .arg("--")
                .arg(&tb.testbed)
                .arg("tcp-source")
                .arg(addr)
                .arg("--secs")
                .arg(secs.to_string()),
        )?;
        sources.push((rail.clone(), child));
    }
    for (rail, c) in sources {
        finish(c, &format!("tcp-source on {rail}"))?;
    }
    let mut out = Vec::new();
    for (rail, _, c) in sinks {
        let s = finish(c, &format!("tcp-sink on {rail}"))?;
        let mbit =
            mbit_of(&s).ok_or_else(|| anyhow!("tcp-sink on {rail} printed no mbit=: {s}"))?;
        out.push((rail, mbit / 8.0));
    }
    Ok(out)
}

fn hetero(tb: &Testbed, a: &HeteroArgs) -> anyhow::Result<()> {
    let spec = tb.spec_with_slots(1)?;
    let all = tb.rails.len();
    let mut points = Vec::new();
    for mode in ["stripe", "weighted"] {
        let label = format!("{mode}-{all}rail");
        let env = [
            ("BRAID_RAILS", tb.rail_list(all)?),
            ("BRAID_RAIL_MODE", mode.to_owned()),
        ];
        let file = tb
            .common
            .out
            .join("raw")
            .join(format!("{label}-osu_bw.json"));
        let prog = osu_json_job("osu_bw", &file, &a.sizes, a.iters, a.warmup, Some(a.window));
        tb.mpirun(&spec, 2, &env, &prog)?;
        for r in read_records(&file)? {
            points.push(Point {
                config: label.clone(),
                benchmark: "osu_bw".into(),
                size: r.size,
                value: r.value,
                unit: r.unit,
            });
        }
    }
    let tcp = tcp_reference(tb, a.tcp_secs)?;
    let total: f64 = tcp.iter().map(|t| t.1).sum();
    let mut t = String::from(
        "# TCP reference: one stream per rail, all rails at once (MB/s, as the sinks measured)\n",
    );
    for (rail, mbps) in &tcp {
        let _ = writeln!(t, "{rail:<8}{mbps:>12.2}");
    }
    let _ = writeln!(t, "{:<8}{total:>12.2}", "total");
    println!("{t}");
    write_text(&tb.common.out.join("hetero-tcp.txt"), &t)?;
    let sizes: Vec<usize> = points
        .iter()
        .map(|p| p.size)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for s in sizes {
        points.push(Point {
            config: "tcp-aggregate".into(),
            benchmark: "osu_bw".into(),
            size: s,
            value: total,
            unit: "MB/s".into(),
        });
    }
    summarize(
        &tb.common.out,
        "hetero",
        &format!("{} heterogeneous rails", tb.name),
        &points,
    )
}

// ---------------------------------------------------------------------------------------------
// openmpi
// ---------------------------------------------------------------------------------------------

/// The `plm_rsh_agent` script: `AGENT HOST CMD...` runs CMD (joined by spaces, as ssh does)
/// in HOST's namespace with HOST as its host name, so that Open MPI sees distinct nodes.
fn agent_script(map: &[(String, String)]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# plm_rsh_agent for Open MPI on a braid-testbed (written by osu_paper)\n",
    );
    s.push_str("while [ $# -gt 0 ]; do case \"$1\" in -*) shift ;; *) break ;; esac; done\n");
    s.push_str("host=\"$1\"; shift\ncase \"$host\" in\n");
    for (host, ns) in map {
        let _ = writeln!(s, "  {host}) ns={ns} ;;");
    }
    s.push_str("  *) echo \"agent: unknown host $host\" >&2; exit 1 ;;\nesac\n");
    s.push_str("exec ip netns exec \"$ns\" unshare --uts sh -c \"hostname $host; $*\"\n");
    s
}

fn openmpi(tb: &Testbed, a: &OpenmpiArgs) -> anyhow::Result<()> {
    let lat = !a.lat_sizes.is_empty();
    let bw = !a.sizes.is_empty();
    for p in bw
        .then_some(&a.osu_bw)
        .into_iter()
        .chain(lat.then_some(&a.osu_latency))
    {
        ensure!(
            p.is_file(),
            "{} is missing: build it with `CARGO_TARGET_DIR=target-rsmpi cargo build --release -p braid-osu --features rsmpi`",
            p.display()
        );
    }
    let status = run_checked(Command::new(&tb.testbed).arg("status").arg(&tb.common.spec))?;
    // Host lines look like `n0 (paper-n0):`.
    let map: Vec<(String, String)> = status
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| {
            let (h, rest) = l.split_once(" (")?;
            let ns = rest.strip_suffix("):")?;
            Some((h.to_owned(), ns.to_owned()))
        })
        .collect();
    ensure!(
        map.len() >= 2,
        "could not find two hosts in `braid-testbed status`:\n{status}"
    );
    let mgmt = host_addrs(&status, &map[0].0)
        .get("mgmt")
        .cloned()
        .ok_or_else(|| anyhow!("no mgmt address in `braid-testbed status`"))?;
    let ompi = OmpiJob {
        mpirun: a.mpirun.clone(),
        hosts: format!("{},{}", map[0].0, map[1].0),
        agent: std::fs::canonicalize(&tb.common.out)?.join("ompi-agent.sh"),
        mgmt_net: format!("{}.0/24", mgmt.rsplit_once('.').map_or("10.77.0", |x| x.0)),
    };
    write_text(&ompi.agent, &agent_script(&map))?;
    run_checked(Command::new("chmod").arg("+x").arg(&ompi.agent))?;
    let raw = std::fs::canonicalize(&tb.common.out)?.join("raw");
    let spec = tb.spec_with_slots(1)?;
    let mut points = Vec::new();
    let mut collect = |file: &Path, config: &str, bench: &str| -> anyhow::Result<()> {
        for r in read_records(file)? {
            // The median one-way latency as well: on a shared machine the mean carries every
            // scheduling delay.
            if let Some(p50) = r.p50_us {
                points.push(Point {
                    config: config.to_owned(),
                    benchmark: format!("{bench}_p50"),
                    size: r.size,
                    value: p50,
                    unit: r.unit.clone(),
                });
            }
            points.push(Point {
                config: config.to_owned(),
                benchmark: bench.into(),
                size: r.size,
                value: r.value,
                unit: r.unit,
            });
        }
        Ok(())
    };
    for round in 0..a.rounds {
        for &rails in &a.rails {
            let list = tb.rail_list(rails)?;
            let mut benches = Vec::new();
            if bw {
                benches.push((
                    "osu_bw",
                    &a.osu_bw,
                    &a.sizes,
                    a.iters,
                    a.warmup,
                    Some(a.window),
                ));
            }
            if lat {
                benches.push((
                    "osu_latency",
                    &a.osu_latency,
                    &a.lat_sizes,
                    a.lat_iters,
                    a.lat_warmup,
                    None,
                ));
            }
            for (bench, exe, sizes, iters, warmup, window) in benches {
                // Open MPI, then each Braid mode, back to back.
                let label = format!("openmpi-{rails}rail");
                let file = raw.join(format!("{label}-{bench}-r{round}.json"));
                let mut prog = osu_json_job(
                    &std::fs::canonicalize(exe)?.display().to_string(),
                    &file,
                    sizes,
                    iters,
                    warmup,
                    window,
                );
                prog.extend(["--backend".into(), "rsmpi".into()]);
                ompi.run(&list, &prog, tb.common.job_timeout)?;
                collect(&file, &label, bench)?;
                for mode in &a.modes {
                    if mode == "single" && bench != "osu_latency" {
                        continue;
                    }
                    let label = format!("braid-{mode}-{rails}rail");
                    let file = raw.join(format!("{label}-{bench}-r{round}.json"));
                    let env = [
                        ("BRAID_RAILS", list.clone()),
                        ("BRAID_RAIL_MODE", mode.clone()),
                    ];
                    let prog = osu_json_job(bench, &file, sizes, iters, warmup, window);
                    tb.mpirun(&spec, 2, &env, &prog)?;
                    collect(&file, &label, bench)?;
                }
            }
        }
    }
    // Median over the rounds per configuration, benchmark and size.
    let mut groups: BTreeMap<(String, String, usize), (Vec<f64>, String)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for p in points {
        if !order.contains(&p.config) {
            order.push(p.config.clone());
        }
        let g = groups
            .entry((p.config, p.benchmark, p.size))
            .or_insert_with(|| (Vec::new(), p.unit));
        g.0.push(p.value);
    }
    let mut med: Vec<Point> = Vec::new();
    for c in &order {
        for ((config, bench, size), (v, unit)) in &groups {
            if config == c {
                let mut v = v.clone();
                v.sort_by(f64::total_cmp);
                med.push(Point {
                    config: config.clone(),
                    benchmark: bench.clone(),
                    size: *size,
                    value: v[v.len() / 2],
                    unit: unit.clone(),
                });
            }
        }
    }
    let t = comparison(&med, &a.rails);
    println!("{t}");
    write_text(&tb.common.out.join("openmpi-vs-braid.txt"), &t)?;
    summarize(
        &tb.common.out,
        "openmpi",
        &format!(
            "{} Braid vs Open MPI (median of {} rounds)",
            tb.name, a.rounds
        ),
        &med,
    )
}

/// Braid against Open MPI at the sizes the issue names: osu_bw at 64 KiB, 256 KiB and 4 MiB
/// (higher is better), osu_latency (mean and median) at 8 B, 1 KiB, 16 KiB and 64 KiB (lower
/// is better).
fn comparison(points: &[Point], rails: &[usize]) -> String {
    let get = |config: &str, bench: &str, size: usize| {
        points
            .iter()
            .find(|p| p.config == config && p.benchmark == bench && p.size == size)
            .map(|p| p.value)
    };
    let mut t = String::from(
        "# Braid / Open MPI (bandwidth: Braid over Open MPI, > 1 is better; latency: Open MPI \
         over Braid, > 1 is better)\n",
    );
    let _ = writeln!(
        t,
        "# {:<22}{:>12}{:>10}{:>12}{:>12}{:>9}",
        "braid config", "benchmark", "size", "braid", "openmpi", "ratio"
    );
    for &r in rails {
        let ompi = format!("openmpi-{r}rail");
        let mut configs: Vec<&str> = points
            .iter()
            .map(|p| p.config.as_str())
            .filter(|c| c.starts_with("braid-") && c.ends_with(&format!("-{r}rail")))
            .collect();
        configs.dedup();
        for c in configs {
            for (bench, size) in [
                ("osu_bw", 65_536),
                ("osu_bw", 262_144),
                ("osu_bw", 4_194_304),
                ("osu_latency", 8),
                ("osu_latency", 1024),
                ("osu_latency", 16_384),
                ("osu_latency", 65_536),
                ("osu_latency_p50", 8),
                ("osu_latency_p50", 1024),
                ("osu_latency_p50", 16_384),
                ("osu_latency_p50", 65_536),
            ] {
                if let (Some(b), Some(o)) = (get(c, bench, size), get(&ompi, bench, size)) {
                    let ratio = if bench == "osu_bw" { b / o } else { o / b };
                    let _ = writeln!(
                        t,
                        "{c:<24}{bench:>12}{:>10}{b:>12.2}{o:>12.2}{ratio:>9.3}",
                        human_size(size)
                    );
                }
            }
        }
    }
    t
}

/// How Open MPI runs on the testbed: its daemons enter the namespaces through the agent.
#[derive(Debug)]
struct OmpiJob {
    mpirun: String,
    /// `n0,n1`.
    hosts: String,
    /// The `plm_rsh_agent` script.
    agent: PathBuf,
    /// The management subnet (Open MPI's out-of-band channel).
    mgmt_net: String,
}

impl OmpiJob {
    /// Runs `prog` on two ranks with the tcp btl over `rails`, within `timeout_s`.
    fn run(&self, rails: &str, prog: &[String], timeout_s: u64) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.mpirun);
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            // Every namespace "node" would bind its rank to core 0 of the same machine (both
            // ranks on one core, a 4 ms scheduler tick per message): no binding.
            .args(["-n", "2", "--bind-to", "none", "--host", &self.hosts])
            .args(["--mca", "plm_rsh_agent"])
            .arg(&self.agent)
            .args(["--mca", "pml", "ob1", "--mca", "btl", "self,tcp"])
            .args(["--mca", "btl_tcp_if_include", rails])
            .args(["--mca", "oob_tcp_if_include", &self.mgmt_net])
            .args(prog);
        let line = describe(&cmd);
        eprintln!("+ {line}");
        let t = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting `{line}`"))?;
        let deadline = Instant::now() + Duration::from_secs(timeout_s);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("`{line}` took longer than {timeout_s} s and was killed");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        ensure!(status.success(), "`{line}` failed ({status})");
        eprintln!("  ({:.1} s)", t.elapsed().as_secs_f64());
        Ok(())
    }
}

/// The command line of one OSU job writing JSON records to `file`: `-m sizes -i iters -x
/// warmup`, and `-W window` for the windowed benchmarks.
fn osu_json_job(
    bench: &str,
    file: &Path,
    sizes: &str,
    iters: usize,
    warmup: usize,
    window: Option<usize>,
) -> Vec<String> {
    let mut prog: Vec<String> = [bench, "--format", "json", "--output"]
        .map(str::to_owned)
        .to_vec();
    prog.push(file.display().to_string());
    prog.extend([
        "-m".into(),
        sizes.to_owned(),
        "-i".into(),
        iters.to_string(),
        "-x".into(),
        warmup.to_string(),
    ]);
    if let Some(w) = window {
        prog.extend(["-W".into(), w.to_string()]);
    }
    // The tables report the median latency too.
    if bench.ends_with("osu_latency") {
        prog.push("--percentiles".into());
    }
    prog
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_helpers() {
        let t = "name = \"paper\"\n[[rails]]\nname = \"eth1\"\nrate = \"1gbit\"\n[[rails]]\nname = \"eth2\"\n[[hosts]]\nname = \"n0\"\nslots = 4\n";
        assert_eq!(toml_string(t, "name").as_deref(), Some("paper"));
        assert_eq!(rails_of(t), vec!["eth1", "eth2"]);
        let st = "n1 (paper-n1):\n  eth1     10.77.1.2/24       up\n  mgmt     10.77.12.2/24      up\nswitch x\n";
        assert_eq!(host_addrs(st, "n1")["eth1"], "10.77.1.2");
        assert_eq!(mbit_of("bytes=1 secs=2 mbit=940.5"), Some(940.5));
        assert_eq!(human_size(4 << 20), "4M");
    }
}
