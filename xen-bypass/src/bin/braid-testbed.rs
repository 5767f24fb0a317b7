//! `braid-testbed`: build, inspect and remove a namespace testbed, or print Xen configuration,
//! from a virtual-cluster spec.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use braid_xen::{Spec, Testbed, tbf_params, xl};
use clap::{Parser, Subcommand};

/// Virtual-cluster testbed for Braid (network namespaces standing in for nodes, guests, NICs).
#[derive(Debug, Parser)]
#[command(name = "braid-testbed", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate SPEC and print the plan, building nothing.
    Check {
        /// Spec file (TOML).
        spec: PathBuf,
    },
    /// Build the testbed (namespaces, rails, management network, bond).
    Up {
        /// Spec file (TOML).
        spec: PathBuf,
    },
    /// Remove everything of the spec's name, also leftovers of a crashed run. Idempotent.
    Down {
        /// Spec file (TOML), or a bare testbed name.
        spec: String,
    },
    /// Run CMD inside HOST (or HOST.GUEST) and exit with its status.
    Exec {
        /// Spec file (TOML).
        spec: PathBuf,
        /// Host or `host.guest`.
        host: String,
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// What exists: namespaces, addresses, rates, bond flavour.
    Status {
        /// Spec file (TOML).
        spec: PathBuf,
    },
    /// Print Xen `xl` domain configs and the PCI/IRQ setup script.
    Xl {
        /// Spec file (TOML).
        spec: PathBuf,
    },
    /// Measurement helper (run inside a host with `exec`): accept one TCP connection on ADDR,
    /// read it to the end, print `bytes=N secs=T mbit=R` (R measured from the first byte).
    TcpSink {
        /// Address to listen on (a testbed address, 10.77.x.y:port).
        addr: SocketAddr,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// Measurement helper: connect to ADDR (retrying for 2 s), send for SECS seconds, print
    /// `bytes=N secs=T mbit=R` as seen by the sender.
    TcpSource {
        /// Address of a `tcp-sink` (must be in 10.77.0.0/16 or loopback).
        addr: SocketAddr,
        /// How long to send (at most 10).
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("braid-testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<Spec> {
    Spec::from_file(path).context("invalid spec; nothing was built")
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Check { spec } => {
            let s = load(&spec)?;
            print!("{}", plan(&s));
        }
        Cmd::Up { spec } => {
            let s = load(&spec)?;
            let tb = Testbed::up(&s).with_context(|| format!("cannot build testbed {}", s.name))?;
            print!("{}", plan(&s));
            println!("bond: {}", tb.bond_flavour());
            println!(
                "up: testbed {} is built; `braid-testbed down` removes it",
                s.name
            );
            tb.persist();
        }
        Cmd::Down { spec } => {
            let name = if spec.ends_with(".toml") || Path::new(&spec).is_file() {
                load(Path::new(&spec))?.name
            } else {
                spec
            };
            let r = Testbed::down_by_name(&name)?;
            if r.is_empty() {
                println!("down: nothing of testbed {name} was left");
            } else {
                println!(
                    "down: removed {} namespaces ({}) and {} links ({}){}",
                    r.namespaces.len(),
                    r.namespaces.join(" "),
                    r.links.len(),
                    r.links.join(" "),
                    if r.killed.is_empty() {
                        String::new()
                    } else {
                        format!("; killed {} processes left inside", r.killed.len())
                    }
                );
            }
        }
        Cmd::Exec { spec, host, cmd } => {
            let s = load(&spec)?;
            let tb = Testbed::attach(&s)?;
            let Some((prog, args)) = cmd.split_first() else {
                bail!("no command given");
            };
            let status = tb
                .command(&host, prog)?
                .args(args)
                .status()
                .with_context(|| format!("cannot run {prog} in {host}"))?;
            return Ok(ExitCode::from(
                u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
            ));
        }
        Cmd::Status { spec } => {
            let s = load(&spec)?;
            print!("{}", braid_xen::status(&s)?);
        }
        Cmd::Xl { spec } => {
            let s = load(&spec)?;
            for c in xl::domain_configs(&s) {
                println!("### {}\n{}", c.file, c.text);
            }
            if s.hosts.iter().all(|h| h.guests.is_empty()) {
                println!(
                    "### no guests: configuration {} runs ranks in domain0\n",
                    s.configuration
                );
            }
            println!("### setup.sh\n{}", xl::setup_script(&s));
        }
        Cmd::TcpSink { addr, secs } => tcp_sink(addr, secs)?,
        Cmd::TcpSource { addr, secs } => tcp_source(addr, secs)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The planned nodes, namespaces, addresses and rates.
fn plan(s: &Spec) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "testbed {} ({}), mtu {}, management {} (root) ",
        s.name,
        s.configuration,
        s.mtu,
        s.mgmt_root_addr()
    );
    for node in s.nodes() {
        let _ = write!(
            t,
            "  {:<12} netns {:<16} mgmt {}",
            s.node_name(node),
            s.netns(node),
            s.mgmt_addr(node)
        );
        let h = match node {
            braid_xen::Node::Host(h) | braid_xen::Node::Guest(h, _) => h,
        };
        for r in s.node_rails(node) {
            let p = tbf_params(s.hosts[h].rates[r]);
            let _ = write!(
                t,
                "  {} {} {} (burst {} B)",
                s.rails[r].name,
                s.rail_addr(h, r),
                p.rate,
                p.burst
            );
        }
        t.push('\n');
    }
    t
}

/// Only loopback and the testbed range (the project's test network rule).
fn check_target(addr: SocketAddr) -> Result<()> {
    let ok = match addr.ip() {
        IpAddr::V4(v4) => v4.is_loopback() || (v4.octets()[0] == 10 && v4.octets()[1] == 77),
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    if !ok {
        bail!("{addr} is outside 10.77.0.0/16 and loopback; refusing");
    }
    Ok(())
}

fn report(bytes: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    // Display only: precision loss above 2^53 bytes is irrelevant.
    #[allow(clippy::cast_precision_loss)]
    let mbit = bytes as f64 * 8.0 / secs / 1e6;
    println!("bytes={bytes} secs={secs:.3} mbit={mbit:.1}");
}

fn tcp_sink(addr: SocketAddr, secs: f64) -> Result<()> {
    check_target(addr)?;
    let limit = Duration::from_secs_f64(secs.clamp(0.1, 60.0));
    let deadline = Instant::now() + limit;
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("no connection on {addr} within {secs} s");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("accept"),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut bytes = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    loop {
        if Instant::now() > deadline {
            bail!("sender still sending after {secs} s");
        }
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                last = Instant::now();
                first.get_or_insert(last);
                bytes += n as u64;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("read"),
        }
    }
    report(bytes, first.map_or(Duration::ZERO, |f| last - f));
    Ok(())
}

fn tcp_source(addr: SocketAddr, secs: f64) -> Result<()> {
    check_target(addr)?;
    let run = Duration::from_secs_f64(secs.clamp(0.01, 10.0));
    let start = Instant::now();
    let mut conn = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(c) => break c,
            Err(e) if start.elapsed() < Duration::from_secs(2) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot connect to {addr}")),
        }
    };
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let buf = vec![0x5au8; 64 * 1024];
    let begin = Instant::now();
    let mut bytes = 0u64;
    while begin.elapsed() < run {
        conn.write_all(&buf).context("write")?;
        bytes += buf.len() as u64;
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    // Wait for the sink to close, so the sink has counted everything.
    let mut b = [0u8; 1];
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    let _ = conn.read(&mut b);
    report(bytes, begin.elapsed());
    Ok(())
}
