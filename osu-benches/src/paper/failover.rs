//! `osu_paper failover`: what losing a rail in the middle of a transfer costs a job.
//!
//! Rank 0 streams to rank 1 over every rail (`stripe` or `weighted`) in osu_bw's loop (a
//! window of messages, then an acknowledgement); rank 1 stamps the wall-clock time at which
//! each window completed. Once the stream runs, `osu_paper` takes one rail's veth down in one
//! host's namespace (`ip link set ethN down`, as a pulled cable or a dead NIC would), and
//! brings it back up after the job. From the timeline it reports the bandwidth before the
//! failure, the bandwidth after it (one rail fewer), the stall (the longest gap between two
//! completed windows after the failure, less the usual gap), and the time the whole transfer
//! lost against the same bytes at the bandwidth before the failure.
//!
//! Two shapes by default: a stream of 4 MiB messages (window 8), and 256 MiB messages one at a
//! time (the "rail failure during a 256 MiB transfer": the message that was in flight
//! takes `time lost` longer than the ones before).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail, ensure};
use clap::Args as ClapArgs;
use serde::{Deserialize, Serialize};

use super::{Common, Testbed, describe, run_checked, write_json, write_text};
use crate::backend::Backend;

const STREAM_TAG: i32 = 0x7b1;
const STREAM_ACK: i32 = 0x7b2;
/// What rank 1 prints once the stream runs (`osu_paper` waits for it before the failure).
const STARTED: &str = "failover-stream: started";

/// Options of `failover`.
#[derive(Debug, ClapArgs)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub(super) common: Common,
    /// Rail modes.
    #[arg(long, value_delimiter = ',', default_value = "stripe,weighted")]
    modes: Vec<String>,
    /// Rails taken down, one run each (the first rail carries the small frames).
    #[arg(long, value_delimiter = ',', default_value = "eth2,eth1")]
    down: Vec<String>,
    /// Host whose end of the rail goes down.
    #[arg(long, default_value = "n1")]
    host: String,
    /// Shapes `SIZE_BYTES:WINDOW:COUNT_OF_WINDOWS:DOWN_AFTER_MS`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "4194304:8:64:1500,268435456:1:8:1700"
    )]
    shapes: Vec<String>,
    /// `BRAID_RAIL_TIMEOUT_MS` for the jobs (default: the runtime's, 2000).
    #[arg(long)]
    rail_timeout_ms: Option<u64>,
}

/// Options of the hidden stream program.
#[derive(Debug, ClapArgs)]
pub struct StreamRankArgs {
    /// Message size.
    #[arg(long)]
    size: usize,
    /// Messages per window.
    #[arg(long)]
    window: usize,
    /// Windows.
    #[arg(long)]
    count: usize,
    /// JSON timeline (rank 1).
    #[arg(long)]
    output: PathBuf,
}

/// What the stream program writes: when each window completed at the receiver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timeline {
    /// Message size.
    pub size: usize,
    /// Messages per window.
    pub window: usize,
    /// Wall-clock time (s since the Unix epoch) when the first window was posted.
    pub start: f64,
    /// Wall-clock time at which each window completed.
    pub done: Vec<f64>,
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverResult {
    /// Rail mode.
    pub mode: String,
    /// Rail taken down.
    pub rail: String,
    /// Message size.
    pub size: usize,
    /// Messages per window.
    pub window: usize,
    /// Seconds from the first window to the failure.
    pub down_at: f64,
    /// MB/s before the failure.
    pub bw_before: f64,
    /// MB/s after the stall.
    pub bw_after: f64,
    /// Longest gap between two windows after the failure (s).
    pub longest_gap: f64,
    /// That gap less the median gap before the failure (s).
    pub stall: f64,
    /// Whole transfer: its time less the same bytes at `bw_before` (s).
    pub time_lost: f64,
    /// Seconds the transfer took.
    pub total: f64,
    /// Bytes moved.
    pub bytes: u64,
}

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The stream: rank 0 sends `count` windows of `window` messages of `size` to rank 1, which
/// acknowledges each window and stamps its completion.
pub(super) fn stream_rank(a: &StreamRankArgs) -> anyhow::Result<()> {
    let universe = braid::initialize().map_err(|e| anyhow!("initializing Braid: {e}"))?;
    let world = universe.world();
    let b = crate::backend::braid::BraidBackend::new(&world);
    let me = b.rank();
    ensure!(b.size() == 2, "stream-rank needs 2 ranks");
    let sbuf = vec![b's'; if me == 0 { a.size } else { 0 }];
    let mut rbuf = vec![0u8; if me == 1 { a.size } else { 0 }];
    let mut ack = [0u8; 4];
    let mut done = Vec::with_capacity(a.count);
    b.barrier()?;
    let start = wall();
    if me == 1 {
        println!("{STARTED}");
    }
    for _ in 0..a.count {
        if me == 0 {
            b.window(1, STREAM_TAG, &sbuf, a.window, &mut [], 0)?;
            b.recv(1, STREAM_ACK, &mut ack)?;
        } else {
            b.window(0, STREAM_TAG, &[], 0, &mut rbuf, a.window)?;
            done.push(wall());
            b.send(0, STREAM_ACK, &ack)?;
        }
    }
    b.barrier()?;
    if me == 1 {
        let t = Timeline {
            size: a.size,
            window: a.window,
            start,
            done,
        };
        std::fs::write(&a.output, serde_json::to_string(&t)?)
            .with_context(|| format!("writing {}", a.output.display()))?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The figures of a timeline with the failure at wall-clock time `down`.
fn analyse(mode: &str, rail: &str, t: &Timeline, down: f64) -> anyhow::Result<FailoverResult> {
    ensure!(t.done.len() >= 3, "timeline has {} windows", t.done.len());
    let wbytes = (t.size * t.window) as f64;
    // Window i spans [ends[i-1], ends[i]], window 0 starts at `start`.
    let mut ends = vec![t.start];
    ends.extend(&t.done);
    let gaps: Vec<(f64, f64)> = ends.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
    // Before: windows that ended before the failure, without the first (slow start, rate
    // measurement) when there are others.
    let mut before: Vec<f64> = gaps
        .iter()
        .filter(|(s, g)| s + g <= down)
        .map(|g| g.1)
        .collect();
    if before.len() > 1 {
        before.remove(0);
    }
    ensure!(
        !before.is_empty(),
        "no window completed before the rail went down ({:.2} s after the start): start the \
         failure later",
        down - t.start
    );
    // The median window: robust against a window slowed by something else (a shared machine).
    let typical = median(before);
    let bw_before = wbytes / typical / 1e6;
    // The stall: the longest gap of a window that was still running at the failure or later.
    let (stall_i, longest_gap) = gaps
        .iter()
        .enumerate()
        .filter(|(_, (s, g))| s + g > down)
        .map(|(i, (_, g))| (i, *g))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .ok_or_else(|| anyhow!("the transfer ended before the rail went down"))?;
    let after: Vec<f64> = gaps.iter().skip(stall_i + 1).map(|g| g.1).collect();
    let bw_after = if after.is_empty() {
        0.0
    } else {
        wbytes * after.len() as f64 / after.iter().sum::<f64>() / 1e6
    };
    let total = ends[ends.len() - 1] - t.start;
    let bytes = (wbytes as u64) * t.done.len() as u64;
    Ok(FailoverResult {
        mode: mode.into(),
        rail: rail.into(),
        size: t.size,
        window: t.window,
        down_at: down - t.start,
        bw_before,
        bw_after,
        longest_gap,
        stall: longest_gap - typical,
        time_lost: total - bytes as f64 / (bw_before * 1e6),
        total,
        bytes,
    })
}

fn parse_shape(s: &str) -> anyhow::Result<(usize, usize, usize, u64)> {
    let v: Vec<&str> = s.split(':').collect();
    ensure!(
        v.len() == 4,
        "shape `{s}` is not SIZE:WINDOW:COUNT:DOWN_AFTER_MS"
    );
    let n = |i: usize| -> anyhow::Result<u64> {
        v[i].parse().with_context(|| format!("field {i} of `{s}`"))
    };
    Ok((
        usize::try_from(n(0)?)?,
        usize::try_from(n(1)?)?.max(1),
        usize::try_from(n(2)?)?,
        n(3)?,
    ))
}

/// Sets `rail` of `host` up or down through `braid-testbed exec`.
fn set_link(tb: &Testbed, host: &str, rail: &str, up: bool) -> anyhow::Result<()> {
    run_checked(
        Command::new(&tb.testbed)
            .arg("exec")
            .arg(&tb.common.spec)
            .arg(host)
            .args(["--", "ip", "link", "set", rail])
            .arg(if up { "up" } else { "down" }),
    )
    .map(drop)
}

/// One job: starts the stream, takes `rail` down `after` once it runs, brings it back up.
/// Returns the timeline and the wall-clock time of the failure.
fn run_one(
    tb: &Testbed,
    env: &[(String, String)],
    shape: (usize, usize, usize, u64),
    rail: &str,
    host: &str,
    file: &std::path::Path,
) -> anyhow::Result<(Timeline, f64)> {
    let (size, window, count, after) = shape;
    let exe = std::env::current_exe()?;
    let spec = tb.spec_with_slots(1)?;
    let mut cmd = Command::new(&tb.mpirun);
    cmd.arg("--testbed")
        .arg(&spec)
        .arg("--timeout")
        .arg(tb.common.job_timeout.to_string())
        .args(["-n", "2"]);
    for (k, v) in env {
        cmd.arg("-x").arg(format!("{k}={v}"));
    }
    cmd.arg(&exe)
        .arg("stream-rank")
        .args(["--size", &size.to_string()])
        .args(["--window", &window.to_string()])
        .args(["--count", &count.to_string()])
        .arg("--output")
        .arg(file);
    let line = describe(&cmd);
    eprintln!("+ {line}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{line}`"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("  | {l}");
            let _ = writeln!(s, "{l}");
        }
        s
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let outs = std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if l.contains(STARTED) {
                let _ = tx.send(());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(tb.common.job_timeout);
    let started = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| anyhow!("`{line}`: the stream did not start within 60 s"));
    // The wall-clock time of the failure.
    let down = started.and_then(|()| {
        std::thread::sleep(Duration::from_millis(after));
        set_link(tb, host, rail, false)?;
        Ok(wall())
    });
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let up = set_link(tb, host, rail, true);
    let _ = outs.join();
    let err_text = errs.join().unwrap_or_default();
    let down = down?;
    up?;
    let Some(status) = status else {
        bail!(
            "`{line}` took longer than {} s and was killed",
            tb.common.job_timeout
        );
    };
    ensure!(status.success(), "`{line}` failed ({status}):\n{err_text}");
    let t: Timeline = serde_json::from_str(&std::fs::read_to_string(file)?)
        .with_context(|| format!("parsing {}", file.display()))?;
    Ok((t, down))
}

pub(super) fn failover(tb: &Testbed, a: &FailoverArgs) -> anyhow::Result<()> {
    let all = tb.rails.len();
    ensure!(all >= 2, "failover needs a spec with at least two rails");
    let mut results = Vec::new();
    for shape_s in &a.shapes {
        let shape = parse_shape(shape_s)?;
        for mode in &a.modes {
            for rail in &a.down {
                ensure!(
                    tb.rails.contains(rail),
                    "rail {rail} is not in the spec ({:?})",
                    tb.rails
                );
                let mut env = vec![
                    ("BRAID_RAILS".to_owned(), tb.rail_list(all)?),
                    ("BRAID_RAIL_MODE".to_owned(), mode.clone()),
                ];
                if let Some(ms) = a.rail_timeout_ms {
                    env.push(("BRAID_RAIL_TIMEOUT_MS".into(), ms.to_string()));
                }
                let file = std::fs::canonicalize(&tb.common.out)?
                    .join("raw")
                    .join(format!(
                        "failover-{mode}-{rail}-{}x{}.json",
                        shape.0, shape.1
                    ));
                let (t, down) = run_one(tb, &env, shape, rail, &a.host, &file)?;
                let r = analyse(mode, rail, &t, down)?;
                eprintln!(
                    "  {mode} {rail} down: before {:.1} MB/s, after {:.1} MB/s, stall {:.3} s, \
                     lost {:.3} s",
                    r.bw_before, r.bw_after, r.stall, r.time_lost
                );
                results.push(r);
            }
        }
    }
    let mut t = format!(
        "# {}: a rail down mid-transfer (host {}), {} rails; time lost = transfer time less \
         the same bytes at the bandwidth before\n",
        tb.name, a.host, all
    );
    let _ = writeln!(
        t,
        "# {:<9}{:>6}{:>11}{:>7}{:>9}{:>12}{:>12}{:>10}{:>11}{:>9}",
        "mode",
        "down",
        "size",
        "window",
        "at (s)",
        "before MB/s",
        "after MB/s",
        "stall s",
        "lost (s)",
        "total s"
    );
    let mut csv = String::from(
        "mode,rail,size,window,down_at_s,bw_before_mbps,bw_after_mbps,longest_gap_s,stall_s,\
         time_lost_s,total_s,bytes\n",
    );
    for r in &results {
        let _ = writeln!(
            t,
            "{:<11}{:>6}{:>11}{:>7}{:>9.2}{:>12.1}{:>12.1}{:>10.3}{:>11.3}{:>9.2}",
            r.mode,
            r.rail,
            r.size,
            r.window,
            r.down_at,
            r.bw_before,
            r.bw_after,
            r.stall,
            r.time_lost,
            r.total
        );
        let _ = writeln!(
            csv,
            "{},{},{},{},{:.3},{:.2},{:.2},{:.4},{:.4},{:.4},{:.3},{}",
            r.mode,
            r.rail,
            r.size,
            r.window,
            r.down_at,
            r.bw_before,
            r.bw_after,
            r.longest_gap,
            r.stall,
            r.time_lost,
            r.total,
            r.bytes
        );
    }
    println!("{t}");
    let out = &tb.common.out;
    write_text(&out.join("failover.txt"), &t)?;
    write_text(&out.join("failover.csv"), &csv)?;
    write_json(&out.join("failover.json"), &results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_finds_the_stall() {
        // 10 windows of 100 MB at 1 s each, the 5th takes 3 s: 2 s lost.
        let mut done = Vec::new();
        let mut t = 0.0;
        for i in 0..10 {
            t += if i == 4 { 3.0 } else { 1.0 };
            done.push(t);
        }
        let tl = Timeline {
            size: 100_000_000,
            window: 1,
            start: 0.0,
            done,
        };
        let r = analyse("stripe", "eth2", &tl, 4.5).unwrap();
        assert!((r.bw_before - 100.0).abs() < 1e-9, "{r:?}");
        assert!((r.stall - 2.0).abs() < 1e-9, "{r:?}");
        assert!((r.time_lost - 2.0).abs() < 1e-9, "{r:?}");
        assert!((r.bw_after - 100.0).abs() < 1e-9, "{r:?}");
        assert_eq!(parse_shape("4:2:3:100").unwrap(), (4, 2, 3, 100));
        assert!(parse_shape("4:2").is_err());
    }
}
