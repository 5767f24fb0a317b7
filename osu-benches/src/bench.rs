//! The benchmarks, written once over [`Backend`], and the program entry point.
//!
//! Each follows the loop of the OSU 7 C program of the same name; the differences are listed
//! at each function. Timing uses the backend's `MPI_Wtime`.
//!
//! # Collectives
//! `blocking` times one collective per iteration between barriers, like OSU's
//! `osu_allreduce.c` and siblings: each rank averages its own times, and rank 0 reports the
//! mean over the ranks of those averages, with their min and max. `nonblocking` follows
//! OSU's `osu_iallreduce.c` and siblings: it first times the collective alone (start, wait),
//! then starts it, computes for that long (OSU's `dummy_compute`, no `MPI_Test` calls: OSU's
//! default; with `-t N`, N tests of the request spread over the compute, whose time is
//! reported as `MPI_Test` and not counted as compute), and waits; overlap is
//! `max(0, 100 - 100 * (overall - compute) / pure)`.
//!
//! Rooted collectives use root 0, as OSU does by default. The v-forms use equal counts, as
//! OSU does. `osu_reduce_scatter` times `MPI_Reduce_scatter_block` (equal blocks of
//! `size / 4 / ranks` floats, at least one) rather than OSU's `MPI_Reduce_scatter` with a
//! remainder on some ranks: rsmpi 0.8, the system-MPI backend, has no `MPI_Reduce_scatter`,
//! and the block form keeps the two backends comparable. `osu_ireduce_scatter` times OSU's
//! `MPI_Ireduce_scatter` with OSU's counts (`floats / ranks` each, one more on the first
//! `floats % ranks` ranks); it runs on the Braid backend only, since rsmpi 0.8 has no
//! `MPI_Ireduce_scatter` either (the rsmpi backend reports an error naming it).
//!
//! Not implemented: OSU's `-r` (root rotation),
//! `osu_ialltoallw` and `osu_ireduce_scatter_block`, and datatypes other than
//! `MPI_CHAR`/`MPI_FLOAT`.

use std::fs;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Parser as _;
use hdrhistogram::Histogram;

use crate::backend::{Backend, Coll, ReduceOp};
use crate::options::{Args, BackendKind, Bench, Config, Family, Format};
use crate::report::{self, Record};
use crate::validation;

/// Tag of the ping-pong messages (OSU uses 1).
const LAT_TAG: i32 = 1;
/// Tag of the window messages (OSU uses 100).
const BW_TAG: i32 = 100;
/// Tag of the per-window acknowledgement (OSU uses 101).
const ACK_TAG: i32 = 101;
/// Largest one-way latency the histogram tells apart (one hour, in ns); longer ones saturate.
const HIST_MAX_NS: u64 = 3_600_000_000_000;
/// Size of the acknowledgement message (OSU sends 4 bytes).
const ACK_LEN: usize = 4;

/// Parses `args` for the benchmark called `name`, runs it, and turns the outcome into an exit
/// code (see [`crate::builtin::run`]).
pub fn main(name: &str, args: Vec<String>) -> ExitCode {
    let Some(bench) = Bench::from_name(name) else {
        eprintln!(
            "braid-osu: unknown benchmark {name:?} (known: {})",
            crate::builtin::NAMES.join(", ")
        );
        return ExitCode::FAILURE;
    };
    let args = match Args::try_parse_from(args) {
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
    match run(bench, &args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{}: error: {e:#}", bench.name());
            ExitCode::FAILURE
        }
    }
}

/// Runs `bench` with `args` on the backend `args` selects; `Ok(false)` when validation failed.
///
/// # Errors
/// Bad options, a backend that is not built in, a wrong number of ranks, a communication
/// error, or an output file that cannot be written.
pub fn run(bench: Bench, args: &Args) -> anyhow::Result<bool> {
    let config = Config::new(bench, args).map_err(anyhow::Error::msg)?;
    match args.backend {
        BackendKind::Braid => {
            crate::backend::braid::with_backend(&config, |b, c| run_on(b, c, args))
        }
        #[cfg(feature = "rsmpi")]
        BackendKind::Rsmpi => {
            crate::backend::rsmpi::with_backend(&config, |b, c| run_on(b, c, args))
        }
        #[cfg(not(feature = "rsmpi"))]
        BackendKind::Rsmpi => bail!(
            "this binary was built without the rsmpi backend; rebuild with \
             `CARGO_TARGET_DIR=target-rsmpi cargo build --release -p braid-osu --features rsmpi` \
             and launch it with the system MPI's mpirun"
        ),
    }
}

/// Runs the benchmark of `config` on backend `b`; only rank 0 prints or writes results.
///
/// # Errors
/// As [`run`].
pub fn run_on<B: Backend>(b: &B, config: &Config, args: &Args) -> anyhow::Result<bool> {
    let n = b.size();
    let rank_rule = match config.bench {
        Bench::Bibw | Bench::Bw | Bench::Latency if n != 2 => {
            Some("This test requires exactly two processes")
        }
        Bench::MbwMr | Bench::MultiLat if n < 2 || n % 2 != 0 => {
            Some("This test requires an even number of processes")
        }
        _ => None,
    };
    if let Some(msg) = rank_rule {
        // Every rank says so: the first rank to exit ends the job, and its message must be
        // out by then whichever rank it is.
        bail!("{msg} (job has {n})");
    }
    let mut out = Output::new(b, config, args);
    out.start()?;
    match (config.bench, config.bench.family()) {
        (Bench::Bibw, _) => bandwidth(b, config, &mut out, true)?,
        (Bench::Bw, _) => bandwidth(b, config, &mut out, false)?,
        (Bench::Latency, _) => latency(b, config, &mut out)?,
        (Bench::MbwMr, _) => mbw_mr(b, config, &mut out)?,
        (Bench::MultiLat, _) => multi_lat(b, config, &mut out)?,
        (_, Family::Nonblocking) => nonblocking(b, config, &mut out)?,
        (_, _) => blocking(b, config, &mut out)?,
    }
    out.finish()
}

/// Collects records at rank 0 and prints them as they come (OSU text) or at the end.
#[derive(Debug)]
struct Output {
    /// Whether this is rank 0, the only rank that prints.
    root: bool,
    /// Print OSU text rows to stdout as they come.
    live_text: bool,
    format: Format,
    path: Option<PathBuf>,
    bench: Bench,
    backend: &'static str,
    ranks: i32,
    validate: bool,
    /// OSU's full listing (`-f`).
    full: bool,
    window: usize,
    /// Records so far (rank 0 only).
    records: Vec<Record>,
    /// Validation errors this rank saw itself.
    local_errors: u64,
}

impl Output {
    fn new<B: Backend>(b: &B, config: &Config, args: &Args) -> Self {
        Self {
            root: b.rank() == 0,
            live_text: args.output.is_some() || args.format == Format::Text,
            format: args.format,
            path: args.output.clone(),
            bench: config.bench,
            backend: b.name(),
            ranks: b.size(),
            validate: config.validate,
            full: config.full,
            window: config.window,
            records: Vec::new(),
            local_errors: 0,
        }
    }

    fn start(&self) -> anyhow::Result<()> {
        if self.root && self.live_text {
            let header = report::text_header(
                self.bench,
                self.validate,
                self.full,
                self.ranks / 2,
                self.window,
            );
            print_flush(&header)?;
        }
        Ok(())
    }

    /// A record with the fields every benchmark fills; `errors` is the job-wide count.
    fn record(
        &self,
        size: usize,
        value: f64,
        unit: &str,
        loops: (usize, usize),
        errors: f64,
    ) -> Record {
        Record {
            benchmark: self.bench.name().to_owned(),
            backend: self.backend.to_owned(),
            ranks: self.ranks,
            size,
            value,
            unit: unit.to_owned(),
            messages_per_sec: None,
            p50_us: None,
            p99_us: None,
            validation: self
                .validate
                .then(|| report::validation_status(if errors > 0.0 { 1 } else { 0 }).to_owned()),
            iterations: loops.0,
            warmup: loops.1,
            window: self.bench.has_window().then_some(self.window),
            ..Record::default()
        }
    }

    fn push(&mut self, r: Record) -> anyhow::Result<()> {
        if self.live_text {
            print_flush(&report::text_row(&r, self.full))?;
        }
        self.records.push(r);
        Ok(())
    }

    /// Writes the machine-readable results; `Ok(false)` if any validation failed.
    fn finish(self) -> anyhow::Result<bool> {
        if self.root {
            let body = report::render(
                self.format,
                self.bench,
                self.validate,
                self.full,
                self.ranks / 2,
                self.window,
                &self.records,
            );
            match &self.path {
                Some(path) => fs::write(path, body)
                    .with_context(|| format!("writing results to {}", path.display()))?,
                None if self.format != Format::Text => print_flush(&body)?,
                None => {}
            }
        }
        Ok(self.local_errors == 0 && !self.records.iter().any(Record::failed))
    }
}

fn print_flush(s: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(s.as_bytes())
        .context("writing to standard output")?;
    stdout.flush().context("writing to standard output")
}

/// Counts `1` if `buf` does not hold the validation pattern of iteration `iter`.
fn check(buf: &[u8], iter: usize) -> u64 {
    u64::from(!validation::check(buf, iter))
}

/// Seconds to whole nanoseconds for the histogram (at least 1, so it is never empty).
fn nanos(seconds: f64) -> u64 {
    // A negative or NaN time (clock step) saturates to 1 ns; huge values saturate at u64::MAX.
    (seconds * 1e9).max(1.0) as u64
}

/// A message buffer aligned to a page, as OSU's benchmarks allocate theirs
/// (`posix_memalign` to the page size). Where a buffer starts changes how fast it is copied,
/// so every size of a run, and both libraries under comparison, get the same start.
struct PageBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageBuf {
    /// Page size assumed for alignment (x86-64 and most aarch64 Linux systems).
    const PAGE: usize = 4096;

    /// `len` bytes of `byte`, starting on a page boundary.
    fn filled(len: usize, byte: u8) -> Self {
        let storage = vec![byte; len + Self::PAGE - 1];
        let start = storage.as_ptr().align_offset(Self::PAGE);
        Self {
            storage,
            start,
            len,
        }
    }
}

impl std::ops::Deref for PageBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// `osu_latency`: rank 0 sends `size` bytes to rank 1, which sends them back; latency is half
/// the round trip, averaged over the timed iterations.
///
/// Differences from OSU: each iteration is timed on its own, so the records also carry the
/// p50/p99 of the one-way latency (from an HDR histogram).
fn latency<B: Backend>(b: &B, c: &Config, out: &mut Output) -> anyhow::Result<()> {
    let me = b.rank();
    let peer = 1 - me;
    let mut sbuf = PageBuf::filled(c.max_size(), b'a');
    let mut rbuf = PageBuf::filled(c.max_size(), b'b');
    for &size in &c.sizes {
        let (iters, skip) = c.loops(size);
        let s = &mut sbuf[..size];
        let r = &mut rbuf[..size];
        let mut hist = Histogram::<u64>::new_with_bounds(1, HIST_MAX_NS, 3)
            .context("creating a latency histogram")?;
        let mut total = 0.0;
        let mut start = 0.0;
        let mut errors = 0u64;
        b.barrier()?;
        for i in 0..iters + skip {
            if c.validate {
                validation::fill(s, i);
                r.fill(0);
            }
            if me == 0 {
                // As OSU: the clock is read at the first timed iteration and after the loop,
                // unless each round trip is timed for percentiles.
                if i == skip {
                    start = b.time();
                }
                let t0 = if c.percentiles { b.time() } else { 0.0 };
                b.send(peer, LAT_TAG, s)?;
                b.recv(peer, LAT_TAG, r)?;
                if c.percentiles && i >= skip {
                    hist.saturating_record(nanos((b.time() - t0) / 2.0));
                }
            } else {
                b.recv(peer, LAT_TAG, r)?;
                b.send(peer, LAT_TAG, s)?;
            }
            if c.validate {
                errors += check(r, i);
            }
        }
        if me == 0 {
            total = b.time() - start;
        }
        out.local_errors += errors;
        let all_errors = b.reduce_to_root(errors as f64, ReduceOp::Sum)?;
        if me == 0 {
            let lat = total * 1e6 / (2.0 * iters as f64);
            let mut rec = out.record(size, lat, "us", (iters, skip), all_errors);
            if c.percentiles {
                rec.p50_us = Some(hist.value_at_quantile(0.5) as f64 / 1e3);
                rec.p99_us = Some(hist.value_at_quantile(0.99) as f64 / 1e3);
            }
            out.push(rec)?;
        }
    }
    Ok(())
}

/// `osu_bw` (`bidirectional == false`): rank 0 sends windows of `-W` messages to rank 1, which
/// answers each window with a 4-byte acknowledgement; MB/s = size * iterations * window / time.
///
/// `osu_bibw` (`bidirectional == true`): both ranks post a window of receives and a window of
/// sends at once, no acknowledgement; MB/s counts both directions.
///
/// As in OSU, every message of a window is received into the same buffer.
fn bandwidth<B: Backend>(
    b: &B,
    c: &Config,
    out: &mut Output,
    bidirectional: bool,
) -> anyhow::Result<()> {
    let me = b.rank();
    let peer = 1 - me;
    let w = c.window;
    let sending = bidirectional || me == 0;
    let receiving = bidirectional || me == 1;
    let mut sbuf = PageBuf::filled(if sending { c.max_size() } else { 0 }, b'a');
    let mut rbuf = PageBuf::filled(if receiving { c.max_size() } else { 0 }, b'b');
    let mut ack = [0u8; ACK_LEN];
    for &size in &c.sizes {
        let (iters, skip) = c.loops(size);
        let s = &mut sbuf[..if sending { size } else { 0 }];
        let r = &mut rbuf[..if receiving { size } else { 0 }];
        let (sends, recvs) = (if sending { w } else { 0 }, if receiving { w } else { 0 });
        let mut errors = 0u64;
        let mut t_start = 0.0;
        b.barrier()?;
        for i in 0..iters + skip {
            if i == skip {
                t_start = b.time();
            }
            if c.validate {
                validation::fill(s, i);
                r.fill(0);
            }
            b.window(peer, BW_TAG, s, sends, r, recvs)?;
            if !bidirectional {
                if me == 0 {
                    b.recv(peer, ACK_TAG, &mut ack)?;
                } else {
                    b.send(peer, ACK_TAG, &ack)?;
                }
            }
            if c.validate && receiving && size > 0 {
                errors += check(r, i);
            }
        }
        let elapsed = b.time() - t_start;
        out.local_errors += errors;
        let all_errors = b.reduce_to_root(errors as f64, ReduceOp::Sum)?;
        if me == 0 {
            let directions = if bidirectional { 2.0 } else { 1.0 };
            let mbps = size as f64 / 1e6 * iters as f64 * w as f64 * directions / elapsed;
            out.push(out.record(size, mbps, "MB/s", (iters, skip), all_errors))?;
        }
    }
    Ok(())
}

/// `osu_mbw_mr`: `n/2` pairs; rank `i < n/2` streams windows to rank `i + n/2`, which
/// acknowledges each window. All pairs start together after a barrier; the aggregate MB/s and
/// messages/s use the slowest sender's time.
fn mbw_mr<B: Backend>(b: &B, c: &Config, out: &mut Output) -> anyhow::Result<()> {
    let me = b.rank();
    let pairs = b.size() / 2;
    let sender = me < pairs;
    let peer = if sender { me + pairs } else { me - pairs };
    let w = c.window;
    let mut sbuf = PageBuf::filled(if sender { c.max_size() } else { 0 }, b'a');
    let mut rbuf = PageBuf::filled(if sender { 0 } else { c.max_size() }, b'b');
    let mut ack = [0u8; ACK_LEN];
    for &size in &c.sizes {
        let (iters, skip) = c.loops(size);
        let s = &mut sbuf[..if sender { size } else { 0 }];
        let r = &mut rbuf[..if sender { 0 } else { size }];
        let mut errors = 0u64;
        let mut t_start = 0.0;
        b.barrier()?;
        for i in 0..iters + skip {
            if i == skip {
                b.barrier()?;
                t_start = b.time();
            }
            if c.validate {
                validation::fill(s, i);
                r.fill(0);
            }
            if sender {
                b.window(peer, BW_TAG, s, w, &mut [], 0)?;
                b.recv(peer, ACK_TAG, &mut ack)?;
            } else {
                b.window(peer, BW_TAG, &[], 0, r, w)?;
                b.send(peer, ACK_TAG, &ack)?;
                if c.validate && size > 0 {
                    errors += check(r, i);
                }
            }
        }
        let elapsed = if sender { b.time() - t_start } else { 0.0 };
        let slowest = b.reduce_to_root(elapsed, ReduceOp::Max)?;
        out.local_errors += errors;
        let all_errors = b.reduce_to_root(errors as f64, ReduceOp::Sum)?;
        if me == 0 {
            let messages = f64::from(pairs) * iters as f64 * w as f64;
            let mut rec = out.record(
                size,
                messages * size as f64 / 1e6 / slowest,
                "MB/s",
                (iters, skip),
                all_errors,
            );
            rec.messages_per_sec = Some(messages / slowest);
            out.push(rec)?;
        }
    }
    Ok(())
}

/// `osu_multi_lat`: `n/2` pairs ping-pong at once (rank `i < n/2` starts, with rank
/// `i + n/2`); every rank measures its own latency and rank 0 prints the average.
fn multi_lat<B: Backend>(b: &B, c: &Config, out: &mut Output) -> anyhow::Result<()> {
    let me = b.rank();
    let n = b.size();
    let pairs = n / 2;
    let initiator = me < pairs;
    let peer = if initiator { me + pairs } else { me - pairs };
    let mut sbuf = PageBuf::filled(c.max_size(), b'a');
    let mut rbuf = PageBuf::filled(c.max_size(), b'b');
    for &size in &c.sizes {
        let (iters, skip) = c.loops(size);
        let s = &mut sbuf[..size];
        let r = &mut rbuf[..size];
        let mut errors = 0u64;
        let mut t_start = 0.0;
        b.barrier()?;
        for i in 0..iters + skip {
            if i == skip {
                t_start = b.time();
            }
            if c.validate {
                validation::fill(s, i);
                r.fill(0);
            }
            if initiator {
                b.send(peer, LAT_TAG, s)?;
                b.recv(peer, LAT_TAG, r)?;
            } else {
                b.recv(peer, LAT_TAG, r)?;
                b.send(peer, LAT_TAG, s)?;
            }
            if c.validate {
                errors += check(r, i);
            }
        }
        let lat = (b.time() - t_start) * 1e6 / (2.0 * iters as f64);
        let sum = b.reduce_to_root(lat, ReduceOp::Sum)?;
        out.local_errors += errors;
        let all_errors = b.reduce_to_root(errors as f64, ReduceOp::Sum)?;
        if me == 0 {
            out.push(out.record(size, sum / f64::from(n), "us", (iters, skip), all_errors))?;
        }
    }
    Ok(())
}

/// Root of the rooted collectives (OSU's default).
const ROOT: i32 = 0;

/// Buffers of a collective benchmark, allocated once for the largest size.
#[derive(Debug, Default)]
struct CollBuffers {
    send: Vec<u8>,
    recv: Vec<u8>,
    fsend: Vec<f32>,
    frecv: Vec<f32>,
    /// Per-rank counts of the v-forms (bytes), rebuilt per size.
    counts: Vec<i32>,
    /// Per-rank displacements of the v-forms (bytes), rebuilt per size.
    displs: Vec<i32>,
}

/// The buffer lengths one call of `bench` with `size`-byte messages uses on `p` ranks:
/// `(send bytes, recv bytes, send floats, recv floats)`.
fn coll_lengths(bench: Bench, size: usize, me: usize, p: usize) -> (usize, usize, usize, usize) {
    let floats = size / size_of::<f32>();
    match bench {
        Bench::Allgather
        | Bench::Allgatherv
        | Bench::Gather
        | Bench::Gatherv
        | Bench::Iallgather
        | Bench::Iallgatherv
        | Bench::Igather
        | Bench::Igatherv => (size, size * p, 0, 0),
        Bench::Alltoall | Bench::Alltoallv | Bench::Ialltoall | Bench::Ialltoallv => {
            (size * p, size * p, 0, 0)
        }
        Bench::Bcast | Bench::Ibcast => (0, size, 0, 0),
        Bench::Scatter | Bench::Scatterv | Bench::Iscatter | Bench::Iscatterv => {
            (size * p, size, 0, 0)
        }
        Bench::IreduceScatter => (0, 0, floats, reduce_scatter_count(floats, p, me)),
        Bench::Allreduce | Bench::Iallreduce | Bench::Ireduce | Bench::Reduce => {
            (0, 0, floats, floats)
        }
        Bench::ReduceScatter => {
            let portion = reduce_scatter_portion(size, p);
            (0, 0, portion * p, portion)
        }
        _ => (0, 0, 0, 0),
    }
}

/// Floats per rank of `osu_reduce_scatter` for a `size`-byte vector on `p` ranks (at least 1).
fn reduce_scatter_portion(size: usize, p: usize) -> usize {
    (size / size_of::<f32>() / p.max(1)).max(1)
}

/// OSU's `recvcounts[i]` of `MPI_Reduce_scatter` for a vector of `floats` elements on `p`
/// ranks: `floats / p` each, one more for the first `floats % p` ranks.
fn reduce_scatter_count(floats: usize, p: usize, i: usize) -> usize {
    let p = p.max(1);
    floats / p + usize::from(i < floats % p)
}

/// Where rank `i`'s block of [`reduce_scatter_count`]s starts: the sum of the counts before it.
fn reduce_scatter_offset(floats: usize, p: usize, i: usize) -> usize {
    let p = p.max(1);
    i * (floats / p) + i.min(floats % p)
}

impl CollBuffers {
    /// Buffers for every size of `c` on `p` ranks.
    fn new(c: &Config, me: usize, p: usize) -> Self {
        let mut out = Self::default();
        for &size in &c.sizes {
            let (s, r, fs, fr) = coll_lengths(c.bench, size, me, p);
            out.send.resize(out.send.len().max(s), b'a');
            out.recv.resize(out.recv.len().max(r), b'b');
            out.fsend.resize(out.fsend.len().max(fs), 1.0);
            out.frecv.resize(out.frecv.len().max(fr), 0.0);
        }
        out
    }

    /// Sets the v-form counts and displacements for `size` bytes per rank (for
    /// `osu_ireduce_scatter`: OSU's counts of floats, no displacements).
    fn set_partition(&mut self, bench: Bench, size: usize, p: usize) -> anyhow::Result<()> {
        if bench == Bench::IreduceScatter {
            let floats = size / size_of::<f32>();
            self.counts = (0..p.max(1))
                .map(|i| {
                    i32::try_from(reduce_scatter_count(floats, p, i)).context("count exceeds i32")
                })
                .collect::<anyhow::Result<_>>()?;
            self.displs.clear();
            return Ok(());
        }
        let count = i32::try_from(size).context("message size exceeds i32 counts")?;
        self.counts = vec![count; p];
        self.displs = (0..p)
            .map(|i| i32::try_from(i * size).context("displacement exceeds i32"))
            .collect::<anyhow::Result<_>>()?;
        Ok(())
    }

    /// The call of `bench` for `size` bytes on `p` ranks, over these buffers.
    fn call(&mut self, bench: Bench, size: usize, me: usize, p: usize) -> Coll<'_> {
        let (s, r, fs, fr) = coll_lengths(bench, size, me, p);
        let send = &self.send[..s];
        let recv = &mut self.recv[..r];
        let fsend = &self.fsend[..fs];
        let frecv = &mut self.frecv[..fr];
        let (counts, displs) = (&self.counts[..], &self.displs[..]);
        match bench {
            Bench::Allgather | Bench::Iallgather => Coll::Allgather { send, recv },
            Bench::Allgatherv | Bench::Iallgatherv => Coll::Allgatherv {
                send,
                recv,
                counts,
                displs,
            },
            Bench::Allreduce | Bench::Iallreduce => Coll::Allreduce {
                send: fsend,
                recv: frecv,
            },
            Bench::Alltoall | Bench::Ialltoall => Coll::Alltoall { send, recv },
            Bench::Alltoallv | Bench::Ialltoallv => Coll::Alltoallv {
                send,
                recv,
                counts,
                displs,
            },
            Bench::Bcast | Bench::Ibcast => Coll::Bcast {
                root: ROOT,
                buf: recv,
            },
            Bench::Gather | Bench::Igather => Coll::Gather {
                root: ROOT,
                send,
                recv,
            },
            Bench::Gatherv | Bench::Igatherv => Coll::Gatherv {
                root: ROOT,
                send,
                recv,
                counts,
                displs,
            },
            Bench::Reduce | Bench::Ireduce => Coll::Reduce {
                root: ROOT,
                send: fsend,
                recv: frecv,
            },
            Bench::ReduceScatter => Coll::ReduceScatterBlock {
                send: fsend,
                recv: frecv,
            },
            Bench::IreduceScatter => Coll::ReduceScatter {
                send: fsend,
                recv: frecv,
                counts,
            },
            Bench::Scatter | Bench::Iscatter => Coll::Scatter {
                root: ROOT,
                send,
                recv,
            },
            Bench::Scatterv | Bench::Iscatterv => Coll::Scatterv {
                root: ROOT,
                send,
                recv,
                counts,
                displs,
            },
            _ => Coll::Barrier,
        }
    }

    /// Fills the send buffers with iteration `iter`'s data and zeroes the receive buffers.
    fn fill(&mut self, bench: Bench, size: usize, me: usize, p: usize, iter: usize) {
        let (s, r, fs, fr) = coll_lengths(bench, size, me, p);
        self.recv[..r].fill(0);
        self.frecv[..fr].fill(0.0);
        match bench {
            Bench::Bcast | Bench::Ibcast => {
                if me == ROOT as usize {
                    validation::fill_salted(&mut self.recv[..r], ROOT as usize, iter);
                }
            }
            Bench::Alltoall | Bench::Alltoallv | Bench::Ialltoall | Bench::Ialltoallv
                if size > 0 =>
            {
                for (j, block) in self.send[..s].chunks_mut(size).enumerate() {
                    validation::fill_salted(block, me * p + j, iter);
                }
            }
            Bench::Scatter | Bench::Scatterv | Bench::Iscatter | Bench::Iscatterv if size > 0 => {
                for (j, block) in self.send[..s].chunks_mut(size).enumerate() {
                    validation::fill_salted(block, j, iter);
                }
            }
            _ => validation::fill_salted(&mut self.send[..s], me, iter),
        }
        for (k, v) in self.fsend[..fs].iter_mut().enumerate() {
            *v = validation::reduction_value(me, k, iter);
        }
    }

    /// Counts 1 if this rank's result of iteration `iter` is wrong (ranks that receive
    /// nothing check nothing).
    fn check(&self, bench: Bench, size: usize, me: usize, p: usize, iter: usize) -> u64 {
        let (_, r, _, fr) = coll_lengths(bench, size, me, p);
        let recv = &self.recv[..r];
        let frecv = &self.frecv[..fr];
        let root = me == ROOT as usize;
        let blocks_ok = |salt: &dyn Fn(usize) -> usize| {
            size == 0
                || recv
                    .chunks(size)
                    .enumerate()
                    .all(|(j, block)| validation::check_salted(block, salt(j), iter))
        };
        let sums_ok = |first: usize| {
            frecv
                .iter()
                .enumerate()
                .all(|(k, &v)| v == validation::reduction_sum(p, first + k, iter))
        };
        let ok = match bench {
            Bench::Allgather | Bench::Allgatherv | Bench::Iallgather | Bench::Iallgatherv => {
                blocks_ok(&|j| j)
            }
            Bench::Gather | Bench::Gatherv | Bench::Igather | Bench::Igatherv => {
                !root || blocks_ok(&|j| j)
            }
            Bench::Alltoall | Bench::Alltoallv | Bench::Ialltoall | Bench::Ialltoallv => {
                blocks_ok(&|j| j * p + me)
            }
            Bench::Bcast | Bench::Ibcast => validation::check_salted(recv, ROOT as usize, iter),
            Bench::Scatter | Bench::Scatterv | Bench::Iscatter | Bench::Iscatterv => {
                validation::check_salted(recv, me, iter)
            }
            Bench::Allreduce | Bench::Iallreduce => sums_ok(0),
            Bench::Reduce | Bench::Ireduce => !root || sums_ok(0),
            Bench::ReduceScatter => sums_ok(me * fr),
            Bench::IreduceScatter => sums_ok(reduce_scatter_offset(size / size_of::<f32>(), p, me)),
            _ => true,
        };
        u64::from(!ok)
    }
}

/// The blocking collectives (`osu_barrier`, `osu_bcast`, `osu_allreduce`, ...): OSU's
/// `t_start; MPI_X; t_stop; MPI_Barrier` loop per size, with `-c` filling the buffers and
/// synchronizing before each timed call and checking the result after it.
fn blocking<B: Backend>(b: &B, c: &Config, out: &mut Output) -> anyhow::Result<()> {
    let me = usize::try_from(b.rank()).context("negative rank")?;
    let p = usize::try_from(b.size()).context("negative job size")?;
    let mut bufs = CollBuffers::new(c, me, p);
    for &size in &c.sizes {
        let (iters, skip) = c.loops(size);
        bufs.set_partition(c.bench, size, p)?;
        let mut timer = 0.0;
        let mut errors = 0u64;
        b.barrier()?;
        for i in 0..iters + skip {
            if c.validate {
                bufs.fill(c.bench, size, me, p, i);
                b.barrier()?;
            }
            let t0 = b.time();
            b.collective(bufs.call(c.bench, size, me, p))?;
            let t1 = b.time();
            if c.bench != Bench::Barrier {
                // OSU's barrier benchmark times back-to-back barriers.
                b.barrier()?;
            }
            if c.validate {
                errors += bufs.check(c.bench, size, me, p, i);
            }
            if i >= skip {
                timer += t1 - t0;
            }
        }
        let lat = timer * 1e6 / iters as f64;
        let min = b.reduce_to_root(lat, ReduceOp::Min)?;
        let max = b.reduce_to_root(lat, ReduceOp::Max)?;
        let sum = b.reduce_to_root(lat, ReduceOp::Sum)?;
        out.local_errors += errors;
        let all_errors = b.reduce_to_root(errors as f64, ReduceOp::Sum)?;
        if me == 0 {
            let mut rec = out.record(size, sum / p as f64, "us", (iters, skip), all_errors);
            rec.min_us = Some(min);
            rec.max_us = Some(max);
            out.push(rec)?;
        }
    }
    Ok(())
}

/// OSU's `dummy_compute`: busy work on a small array until `seconds` have passed.
fn dummy_compute<B: Backend>(b: &B, seconds: f64, work: &mut [f32]) {
    let start = b.time();
    while b.time() - start < seconds {
        for x in work.iter_mut() {
            *x = std::hint::black_box(*x * 0.999 + 1.0);
        }
    }
}

/// The nonblocking collectives (`osu_ibarrier`, `osu_ibcast`, `osu_iallreduce`, ...), as
/// OSU's `osu_iallreduce.c`: per size, time start+wait alone (the pure communication time),
/// then start, compute for that long, and wait; rank 0 reports the means over the ranks.
fn nonblocking<B: Backend>(b: &B, c: &Config, out: &mut Output) -> anyhow::Result<()> {
    let me = usize::try_from(b.rank()).context("negative rank")?;
    let p = usize::try_from(b.size()).context("negative job size")?;
    let mut bufs = CollBuffers::new(c, me, p);
    // OSU's compute kernel works on 25 x 25 floats.
    let mut work = vec![1.0f32; 625];
    for &size in &c.sizes {
        let (iters, skip) = c.loops(size);
        bufs.set_partition(c.bench, size, p)?;
        let mut errors = 0u64;
        b.barrier()?;
        let mut pure = 0.0;
        for i in 0..iters + skip {
            if c.validate {
                bufs.fill(c.bench, size, me, p, i);
            }
            let t0 = b.time();
            b.immediate(bufs.call(c.bench, size, me, p), &mut |_| {})?;
            let t1 = b.time();
            if i >= skip {
                pure += t1 - t0;
            }
            b.barrier()?;
            if c.validate {
                errors += bufs.check(c.bench, size, me, p, i);
            }
        }
        let pure_secs = pure / iters as f64;
        b.barrier()?;
        let (mut overall, mut compute, mut init, mut wait, mut tests) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for i in 0..iters + skip {
            if c.validate {
                bufs.fill(c.bench, size, me, p, i);
            }
            let mut marks = (0.0, 0.0, 0.0);
            let t0 = b.time();
            b.immediate(bufs.call(c.bench, size, me, p), &mut |test| {
                marks.0 = b.time();
                marks.2 = compute_and_test(b, pure_secs, &mut work, c.test_calls, test);
                marks.1 = b.time();
            })?;
            let t1 = b.time();
            if i >= skip {
                overall += t1 - t0;
                compute += marks.1 - marks.0 - marks.2;
                tests += marks.2;
                init += marks.0 - t0;
                wait += t1 - marks.1;
            }
            b.barrier()?;
            if c.validate {
                errors += bufs.check(c.bench, size, me, p, i);
            }
        }
        let per_iter_us = 1e6 / iters as f64;
        let mut means = [0.0; 6];
        for (m, v) in means
            .iter_mut()
            .zip([overall, compute, pure, init, wait, tests])
        {
            *m = b.reduce_to_root(v * per_iter_us, ReduceOp::Sum)? / p as f64;
        }
        out.local_errors += errors;
        let all_errors = b.reduce_to_root(errors as f64, ReduceOp::Sum)?;
        if me == 0 {
            let [overall, compute, pure, init, wait, tests] = means;
            let mut rec = out.record(size, overall, "us", (iters, skip), all_errors);
            rec.compute_us = Some(compute);
            rec.pure_comm_us = Some(pure);
            rec.overlap_pct = Some(overlap(overall, compute, pure));
            rec.init_us = Some(init);
            rec.wait_us = Some(wait);
            rec.test_us = Some(tests);
            out.push(rec)?;
        }
    }
    Ok(())
}

/// OSU's `do_compute_and_probe`: the dummy compute for `seconds`, cut into `calls` equal parts
/// each preceded by one test of the request (OSU's `-t`; with 0 calls, one plain compute).
/// Returns the time spent in the tests.
fn compute_and_test<B: Backend>(
    b: &B,
    seconds: f64,
    work: &mut [f32],
    calls: usize,
    test: &mut dyn FnMut(),
) -> f64 {
    if calls == 0 {
        dummy_compute(b, seconds, work);
        return 0.0;
    }
    let part = seconds / calls as f64;
    let mut spent = 0.0;
    for _ in 0..calls {
        let t = b.time();
        test();
        spent += b.time() - t;
        dummy_compute(b, part, work);
    }
    spent
}

/// OSU's overlap in percent: `max(0, 100 - 100 * (overall - compute) / pure)` (0 when the
/// pure time is 0).
fn overlap(overall: f64, compute: f64, pure: f64) -> f64 {
    if pure <= 0.0 {
        return 0.0;
    }
    (100.0 - 100.0 * (overall - compute) / pure).max(0.0)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::sync::{Arc, Barrier};
    use std::time::Instant;

    use super::*;
    use crate::backend::Between;

    /// An in-process backend: one thread per rank, unbounded channels as the network (so
    /// sends never block and a window can send before it receives).
    struct ThreadBackend {
        rank: i32,
        peers: Vec<Sender<(i32, i32, Vec<u8>)>>,
        inbox: Receiver<(i32, i32, Vec<u8>)>,
        /// Messages that arrived before a matching receive.
        unexpected: RefCell<Vec<(i32, i32, Vec<u8>)>>,
        barrier: Arc<Barrier>,
        epoch: Instant,
    }

    impl Backend for ThreadBackend {
        fn name(&self) -> &'static str {
            "threads"
        }
        fn rank(&self) -> i32 {
            self.rank
        }
        fn size(&self) -> i32 {
            self.peers.len() as i32
        }
        fn time(&self) -> f64 {
            self.epoch.elapsed().as_secs_f64()
        }
        fn barrier(&self) -> anyhow::Result<()> {
            self.barrier.wait();
            Ok(())
        }
        fn send(&self, dest: i32, tag: i32, buf: &[u8]) -> anyhow::Result<()> {
            self.peers[dest as usize].send((self.rank, tag, buf.to_vec()))?;
            Ok(())
        }
        fn recv(&self, src: i32, tag: i32, buf: &mut [u8]) -> anyhow::Result<()> {
            let hit = |m: &(i32, i32, Vec<u8>)| m.0 == src && m.1 == tag;
            let pos = self.unexpected.borrow().iter().position(hit);
            let msg = match pos {
                Some(i) => self.unexpected.borrow_mut().remove(i),
                None => loop {
                    let m = self.inbox.recv()?;
                    if hit(&m) {
                        break m;
                    }
                    self.unexpected.borrow_mut().push(m);
                },
            };
            anyhow::ensure!(msg.2.len() == buf.len(), "length mismatch");
            buf.copy_from_slice(&msg.2);
            Ok(())
        }
        fn window(
            &self,
            peer: i32,
            tag: i32,
            send: &[u8],
            sends: usize,
            recv: &mut [u8],
            recvs: usize,
        ) -> anyhow::Result<()> {
            for _ in 0..sends {
                self.send(peer, tag, send)?;
            }
            for _ in 0..recvs {
                self.recv(peer, tag, recv)?;
            }
            Ok(())
        }
        fn reduce_to_root(&self, value: f64, op: ReduceOp) -> anyhow::Result<f64> {
            if self.rank != 0 {
                self.send(0, 999, &value.to_le_bytes())?;
                return Ok(value);
            }
            let mut acc = value;
            for r in 1..self.size() {
                let mut b = [0u8; 8];
                self.recv(r, 999, &mut b)?;
                acc = op.apply(acc, f64::from_le_bytes(b));
            }
            Ok(acc)
        }
        fn collective(&self, op: Coll<'_>) -> anyhow::Result<()> {
            match op {
                Coll::Barrier => self.barrier(),
                Coll::Bcast { root, buf } => {
                    if self.rank == root {
                        for r in (0..self.size()).filter(|&r| r != root) {
                            self.send(r, 998, buf)?;
                        }
                        Ok(())
                    } else {
                        self.recv(root, 998, buf)
                    }
                }
                Coll::Allreduce { send, recv } => {
                    // Everyone sends to everyone; sum in rank order.
                    let bytes: Vec<u8> = send.iter().flat_map(|v| v.to_le_bytes()).collect();
                    for r in 0..self.size() {
                        self.send(r, 997, &bytes)?;
                    }
                    recv.fill(0.0);
                    let mut tmp = vec![0u8; bytes.len()];
                    for r in 0..self.size() {
                        self.recv(r, 997, &mut tmp)?;
                        for (acc, v) in recv.iter_mut().zip(tmp.chunks(4)) {
                            *acc += f32::from_le_bytes(v.try_into().unwrap());
                        }
                    }
                    Ok(())
                }
                other => anyhow::bail!("threads: no {}", other.mpi_name()),
            }
        }
        fn immediate(&self, op: Coll<'_>, between: &mut Between<'_>) -> anyhow::Result<()> {
            between(&mut || {});
            self.collective(op)
        }
    }

    /// Runs `argv` on `n` thread ranks; returns rank 0's outcome and the JSON file it wrote.
    fn run_threads(n: usize, argv: &[&str]) -> (bool, Vec<Record>) {
        let dir = std::env::temp_dir().join(format!(
            "braid-osu-unit-{}-{}",
            std::process::id(),
            argv.join("_").replace(['/', ':'], "")
        ));
        let file = dir.with_extension("json");
        let mut argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        argv.extend([
            "--format".into(),
            "json".into(),
            "--output".into(),
            file.display().to_string(),
        ]);
        let args = Args::try_parse_from(&argv).unwrap();
        let config = Config::new(Bench::from_name(&argv[0]).unwrap(), &args).unwrap();
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| channel()).unzip();
        let barrier = Arc::new(Barrier::new(n));
        let epoch = Instant::now();
        let handles: Vec<_> = rxs
            .into_iter()
            .enumerate()
            .map(|(rank, inbox)| {
                let (peers, barrier, args, config) =
                    (txs.clone(), barrier.clone(), args.clone(), config.clone());
                std::thread::spawn(move || {
                    let b = ThreadBackend {
                        rank: rank as i32,
                        peers,
                        inbox,
                        unexpected: RefCell::new(Vec::new()),
                        barrier,
                        epoch,
                    };
                    run_on(&b, &config, &args).unwrap()
                })
            })
            .collect();
        let oks: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let records = report::parse_json(&fs::read_to_string(&file).unwrap()).unwrap();
        let _ = fs::remove_file(&file);
        (oks.iter().all(|&ok| ok), records)
    }

    #[test]
    fn reduce_scatter_offsets_are_prefix_sums_of_counts() {
        for (floats, p) in [(0, 1), (1, 3), (7, 3), (10, 4), (1024, 7)] {
            let mut at = 0;
            for i in 0..p {
                assert_eq!(
                    reduce_scatter_offset(floats, p, i),
                    at,
                    "{floats} on {p}, rank {i}"
                );
                at += reduce_scatter_count(floats, p, i);
            }
            assert_eq!(at, floats);
        }
    }

    #[test]
    fn every_benchmark_validates_over_threads() {
        for (n, argv) in [
            (
                2,
                &[
                    "osu_latency",
                    "-m",
                    "0:1024",
                    "-i",
                    "20",
                    "-x",
                    "2",
                    "-c",
                    "--percentiles",
                ][..],
            ),
            (
                2,
                &[
                    "osu_bw", "-m", "1:1024", "-i", "5", "-x", "1", "-W", "4", "-c",
                ][..],
            ),
            (
                2,
                &[
                    "osu_bibw", "-m", "1:1024", "-i", "5", "-x", "1", "-W", "4", "-c",
                ][..],
            ),
            (
                4,
                &[
                    "osu_mbw_mr",
                    "-m",
                    "1:1024",
                    "-i",
                    "5",
                    "-x",
                    "1",
                    "-W",
                    "4",
                    "-c",
                ][..],
            ),
            (
                4,
                &["osu_multi_lat", "-m", "1:1024", "-i", "20", "-x", "2", "-c"][..],
            ),
            (
                3,
                &["osu_bcast", "-m", "1:1024", "-i", "20", "-x", "2", "-c"][..],
            ),
            (
                3,
                &["osu_allreduce", "-m", "1:1024", "-i", "20", "-x", "2", "-c"][..],
            ),
            (
                3,
                &[
                    "osu_iallreduce",
                    "-m",
                    "1:1024",
                    "-i",
                    "20",
                    "-x",
                    "2",
                    "-c",
                ][..],
            ),
        ] {
            let (ok, records) = run_threads(n, argv);
            assert!(ok, "{argv:?} failed validation");
            let min = match argv[0] {
                "osu_latency" => 0,
                "osu_allreduce" | "osu_iallreduce" => 4,
                _ => 1,
            };
            assert_eq!(records.first().map(|r| r.size), Some(min), "{argv:?}");
            assert_eq!(records.last().map(|r| r.size), Some(1024), "{argv:?}");
            for r in &records {
                assert_eq!(r.validation.as_deref(), Some("Pass"), "{r:?}");
                assert!(r.value > 0.0 && r.value.is_finite(), "{r:?}");
                assert_eq!(r.ranks, n as i32);
                assert_eq!(r.iterations, if r.unit == "us" { 20 } else { 5 });
            }
            if argv[0] == "osu_iallreduce" {
                assert!(records.iter().all(|r| {
                    r.compute_us.is_some() && r.pure_comm_us.is_some() && r.overlap_pct >= Some(0.0)
                }));
            }
            if argv[0] == "osu_bcast" {
                assert!(
                    records
                        .iter()
                        .all(|r| r.min_us <= r.max_us && r.min_us.is_some())
                );
            }
            if argv[0] == "osu_mbw_mr" {
                assert!(
                    records
                        .iter()
                        .all(|r| r.messages_per_sec.is_some_and(|m| m > 0.0))
                );
            }
            if argv[0] == "osu_latency" {
                assert!(
                    records
                        .iter()
                        .all(|r| r.p50_us.is_some() && r.p99_us >= r.p50_us)
                );
            }
        }
    }

    #[test]
    fn wrong_rank_count_is_an_error_at_rank_0() {
        let args = Args::try_parse_from(["osu_bw", "-m", "1:1"]).unwrap();
        let config = Config::new(Bench::Bw, &args).unwrap();
        let (tx, rx) = channel();
        let b = ThreadBackend {
            rank: 0,
            peers: vec![tx],
            inbox: rx,
            unexpected: RefCell::new(Vec::new()),
            barrier: Arc::new(Barrier::new(1)),
            epoch: Instant::now(),
        };
        let err = run_on(&b, &config, &args).unwrap_err();
        assert!(err.to_string().contains("exactly two processes"), "{err}");
    }

    #[cfg(not(feature = "rsmpi"))]
    #[test]
    fn rsmpi_without_the_feature_is_a_clear_error() {
        let args = Args::try_parse_from(["osu_latency", "--backend", "rsmpi"]).unwrap();
        let err = run(Bench::Latency, &args).unwrap_err();
        assert!(
            err.to_string().contains("without the rsmpi backend"),
            "{err}"
        );
    }

    #[test]
    fn validation_failure_is_reported() {
        // A corrupted buffer fails the check the benchmarks use.
        let mut buf = vec![0u8; 16];
        validation::fill(&mut buf, 7);
        assert_eq!(check(&buf, 7), 0);
        buf[3] = buf[3].wrapping_add(1);
        assert_eq!(check(&buf, 7), 1);
        assert_eq!(nanos(-1.0), 1);
        assert_eq!(overlap(15.0, 10.0, 10.0), 50.0);
        assert_eq!(overlap(30.0, 10.0, 10.0), 0.0);
        assert_eq!(overlap(1.0, 0.0, 0.0), 0.0);
        assert_eq!(nanos(1e-6), 1000);
    }
}
