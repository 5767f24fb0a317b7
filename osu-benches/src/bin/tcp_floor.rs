//! `tcp_floor`: the floor for any TCP design on this machine: a busy-polling ping-pong of
//! raw TCP over loopback between two processes, each pinned to a core (as `mpirun --bind-to
//! core` pins two ranks), `TCP_NODELAY`, non-blocking sockets, each side spinning on `read`
//! until the reply is there and writing its message with one `write`. No framing, no
//! matching: what is left is the kernel's cost of a message and of the spinning reads.
//!
//! Prints the one-way latency (half the round trip) of each batch's median and minimum, as
//! `osu_latency` prints its figure:
//!
//! ```text
//! target/release/tcp_floor [-i ITERATIONS] [-x WARMUP] [-s SIZE] [-b BATCHES] [--cores A,B]
//! ```
#![forbid(unsafe_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;

/// How long either side waits for the other before giving up.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(about = "Busy-polling TCP ping-pong over loopback: the floor of TCP latency here")]
struct Args {
    /// Timed round trips (split into batches).
    #[arg(short = 'i', long, default_value_t = 100_000)]
    iterations: u32,
    /// Untimed round trips first.
    #[arg(short = 'x', long, default_value_t = 10_000)]
    warmup: u32,
    /// Message size in bytes.
    #[arg(short = 's', long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=65536))]
    size: u32,
    /// Batches the timed round trips are split into; the median batch is the figure.
    #[arg(short = 'b', long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batches: u32,
    /// Cores of the timing process and of its partner.
    #[arg(long, default_value = "0,1", value_parser = parse_cores)]
    cores: (usize, usize),
    /// Internal: run as the partner connecting to this port.
    #[arg(long, hide = true)]
    partner: Option<u16>,
}

fn parse_cores(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("'{s}' is not two cores A,B"))?;
    let core = |c: &str| {
        c.trim()
            .parse::<usize>()
            .map_err(|_| format!("'{c}' is not a core number"))
    };
    Ok((core(a)?, core(b)?))
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcp_floor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.iterations >= args.batches,
        "{} iterations cannot fill {} batches",
        args.iterations,
        args.batches
    );
    let size = args.size as usize;
    if let Some(port) = args.partner {
        pin(args.cores.1)?;
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        let mut s = prepare(s)?;
        let mut buf = vec![0u8; size];
        for _ in 0..u64::from(args.warmup) + u64::from(args.iterations) {
            read_exact_spinning(&mut s, &mut buf)?;
            s.write_all(&buf).context("partner write")?;
        }
        return Ok(());
    }
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .context("listening on 127.0.0.1")?;
    let port = listener.local_addr().context("local address")?.port();
    let exe = std::env::current_exe().context("own executable")?;
    // Started before this process pins itself, so that it may pin itself elsewhere.
    let mut partner = Command::new(exe)
        .args(std::env::args().skip(1))
        .arg("--partner")
        .arg(port.to_string())
        .spawn()
        .context("starting the partner process")?;
    if let Err(e) = pin(args.cores.0) {
        let _ = partner.kill();
        let _ = partner.wait();
        return Err(e);
    }
    listener
        .set_nonblocking(true)
        .context("non-blocking listener")?;
    let start = Instant::now();
    let s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if let Some(status) = partner.try_wait().context("partner status")? {
                    bail!("the partner exited before connecting: {status}");
                }
                if start.elapsed() > PATIENCE {
                    let _ = partner.kill();
                    let _ = partner.wait();
                    bail!("the partner did not connect within {PATIENCE:?}");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                let _ = partner.kill();
                let _ = partner.wait();
                return Err(e).context("accepting the partner's connection");
            }
        }
    };
    let result = ping(prepare(s)?, &args, size);
    let status = partner.wait().context("waiting for the partner")?;
    let lat = result?;
    ensure!(status.success(), "the partner failed: {status}");
    println!(
        "# tcp_floor: busy-polling TCP ping-pong over loopback, cores {}+{}",
        args.cores.0, args.cores.1
    );
    println!(
        "# {} round trips in {} batches; one-way latency (us) of the median and fastest batch",
        args.iterations, args.batches
    );
    println!("# Size          Median        Min");
    println!("{:<10}{:>12.2}{:>11.2}", size, lat.0, lat.1);
    Ok(())
}

/// The timing side: warm-up, then the batches; returns the median and minimum one-way
/// latency of a batch, in microseconds.
fn ping(mut s: TcpStream, args: &Args, size: usize) -> anyhow::Result<(f64, f64)> {
    let mut buf = vec![b'a'; size];
    for _ in 0..args.warmup {
        s.write_all(&buf).context("write")?;
        read_exact_spinning(&mut s, &mut buf)?;
    }
    let per = args.iterations / args.batches;
    let mut lat = Vec::with_capacity(args.batches as usize);
    let mut done = 0;
    for b in 0..args.batches {
        let n = if b + 1 == args.batches {
            args.iterations - done
        } else {
            per
        };
        let t = Instant::now();
        for _ in 0..n {
            s.write_all(&buf).context("write")?;
            read_exact_spinning(&mut s, &mut buf)?;
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6 / (2.0 * f64::from(n)));
        done += n;
    }
    lat.sort_by(f64::total_cmp);
    Ok((lat[lat.len() / 2], lat[0]))
}

fn prepare(s: TcpStream) -> anyhow::Result<TcpStream> {
    s.set_nodelay(true).context("TCP_NODELAY")?;
    s.set_nonblocking(true).context("non-blocking socket")?;
    Ok(s)
}

/// Reads exactly `buf.len()` bytes, spinning on `read` while nothing is there.
fn read_exact_spinning(s: &mut TcpStream, buf: &mut [u8]) -> anyhow::Result<()> {
    let mut got = 0;
    let mut since: Option<Instant> = None;
    let mut spins = 0u32;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => bail!("the other side closed the connection"),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                spins = spins.wrapping_add(1);
                // Bounded: look at the clock now and then only, not on every spin.
                if spins.is_multiple_of(1 << 16)
                    && since.get_or_insert_with(Instant::now).elapsed() > PATIENCE
                {
                    bail!("no reply within {PATIENCE:?}");
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("read"),
        }
    }
    Ok(())
}

fn pin(core: usize) -> anyhow::Result<()> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let id = ids
        .into_iter()
        .find(|c| c.id == core)
        .with_context(|| format!("no core {core} to pin to"))?;
    ensure!(
        core_affinity::set_for_current(id),
        "cannot pin to core {core}"
    );
    Ok(())
}
