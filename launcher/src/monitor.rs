//! Running one job: setup, the monitor loop, fault handling and clean-up.
//!
//! The monitor is one loop that wakes every [`TICK`]: it drains PMI events, checks signals
//! and the time limit, and reaps ranks with `try_wait` (WNOHANG). The first fault decides the
//! job's exit status:
//!
//! | fault | message | exit |
//! |---|---|---|
//! | rank exits `s != 0` | `rank R (pid P, host H) exited with status s` | `s` |
//! | rank killed by signal `k` | `... was killed by signal k (SIGNAME)` | `128 + k` |
//! | rank exits 0 after PMI init without finalize | `... exited with status 0 without calling PMI finalize` | 1 |
//! | PMI `cmd=abort exitcode=N` | `rank R called abort with error code N` | `N`, or 1 if `N` is 0 |
//! | `--timeout S` | `job timed out after S seconds; terminating N ranks` | 124 |
//! | SIGINT / SIGTERM / SIGHUP to mpirun | `received SIGINT; terminating N ranks` | `128 + signal` |
//!
//! Then every rank's process group gets SIGTERM, and SIGKILL after [`TERM_GRACE`]; every
//! child is reaped, with all waits bounded. Exit 0 (status 0 without PMI, or with
//! finalize) is normal; groups are swept at the end of every job so that nothing a rank left
//! behind survives it.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use braid_pmi::ServerEvent;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::cli::{BindTo, Cli};
use crate::env::{self, RankEnv};
use crate::hosts::{self, HostSpec, Placement};
use crate::spawn::{self, Launch};
use crate::stdio::{Forwarders, Stream};
use crate::{EXIT_TIMEOUT, pmi, signals};

/// Monitor loop period.
pub const TICK: Duration = Duration::from_millis(10);
/// Time between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_millis(700);
/// How long to wait for the PMI connection of an exited rank to be drained (to see an abort
/// or finalize sent just before exit) before judging its exit.
pub const PMI_DRAIN: Duration = Duration::from_millis(300);
/// How long to keep forwarding output after the ranks are gone.
pub const STDIO_DRAIN: Duration = Duration::from_secs(1);

/// One started rank.
#[derive(Debug)]
struct Rank {
    /// The rank number.
    rank: u32,
    /// Host it was placed on.
    host: String,
    /// The child (the program, or the launch agent); also its process group id.
    child: Child,
    /// Exit status once reaped, and when it was seen.
    exited: Option<(ExitStatus, Instant)>,
    /// Whether its exit has been judged (fault or normal).
    judged: bool,
    /// PMI state, from server events.
    pmi_connected: bool,
    pmi_initialized: bool,
    pmi_finalized: bool,
    pmi_closed: bool,
}

impl Rank {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn describe(&self) -> String {
        format!(
            "rank {} (pid {}, host {})",
            self.rank,
            self.pid(),
            self.host
        )
    }
}

/// Why the job ended early.
#[derive(Debug)]
enum Fault {
    Abort { rank: u32, code: i32 },
    Exit { who: String, status: ExitStatus },
    NoFinalize { who: String },
    Signal(Signal),
    Timeout(u64),
}

/// Sets up and runs the job described by `cli`; returns mpirun's exit code.
///
/// # Errors
///
/// Setup errors: bad host list or hostfile, a non-local host without `--launch-agent`, a
/// missing program ([`spawn::ProgramNotFound`]), a failure to start the PMI server or a rank.
/// Once ranks run, every outcome is an exit code, not an error.
pub fn run_job(cli: &Cli) -> Result<u8> {
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cpus = spawn::allowed_cpus();
    // `--testbed SPEC`: hosts, launch agent and PMI address come from the testbed.
    let testbed = cli
        .testbed
        .as_deref()
        .map(crate::testbed::job)
        .transpose()?;
    let (host_specs, launch_agent, pmi_addr) = match testbed {
        Some(t) => (t.hosts, Some(t.launch_agent), Some(t.pmi_addr)),
        None => (
            host_specs(cli, cpus.len())?,
            cli.launch_agent.clone(),
            cli.pmi_addr,
        ),
    };
    let total_slots: u32 = host_specs
        .iter()
        .map(|h| h.slots)
        .fold(0, u32::saturating_add);
    let n = cli.np.unwrap_or(total_slots).max(1);
    let placement = hosts::place(&host_specs, n, &hostname);
    if let (None, Some(p)) = (&launch_agent, placement.iter().find(|p| !p.is_local)) {
        bail!(
            "host '{}' is not this machine ({hostname}) and no --launch-agent was given to reach it",
            p.host
        );
    }
    let agent = launch_agent
        .as_deref()
        .map(spawn::split_words)
        .transpose()?;
    let (word, args) = cli.command.split_first().context("no program given")?;
    let program = spawn::resolve(word)?;
    let exports = env::exports(&cli.export)?;
    let any_remote = placement.iter().any(|p| !p.is_local);

    let received = signals::install()?;
    let pmi = pmi::start(n, any_remote, pmi_addr, &hostname)?;
    let job_id = env::new_job_id();
    let mut forwarders = Forwarders::new(cli.tag_output);
    let mut ranks: Vec<Rank> = Vec::with_capacity(placement.len());
    let start = Instant::now();

    for (r, place) in (0u32..).zip(&placement) {
        let launch = Launch {
            program: &program,
            args,
            env: RankEnv {
                pmi_port: if place.is_local {
                    &pmi.local_port
                } else {
                    &pmi.remote_port
                },
                rank: r,
                size: n,
                job_id: &job_id,
                host_id: (!place.is_local).then_some(place.host.as_str()),
                local_rank: place.local_rank,
                local_size: place.local_size,
                exports: &exports,
            },
            agent: if place.is_local {
                None
            } else {
                agent.as_deref()
            },
            host: &place.host,
        };
        let mut child = match launch.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("mpirun: {e:#}");
                terminate(&mut ranks);
                forwarders.wait_until(Instant::now() + STDIO_DRAIN);
                remove_segments(&job_id);
                return Ok(crate::EXIT_SETUP);
            }
        };
        if place.is_local && binds(cli.bind_to, place, cpus.len()) {
            let cpu = cpus[place.local_rank as usize % cpus.len()];
            // The child may already have exited; binding is best effort.
            let _ = spawn::bind(child.id(), cpu);
        }
        if let Some(out) = child.stdout.take() {
            forwarders.forward(r, Stream::Stdout, out);
        }
        if let Some(err) = child.stderr.take() {
            forwarders.forward(r, Stream::Stderr, err);
        }
        ranks.push(Rank {
            rank: r,
            host: place.host.clone(),
            child,
            exited: None,
            judged: false,
            pmi_connected: false,
            pmi_initialized: false,
            pmi_finalized: false,
            pmi_closed: false,
        });
    }

    let fault = watch(&mut ranks, &pmi.server, &received, cli.timeout, start);
    let code = match &fault {
        None => 0,
        Some(f) => report(f, &ranks),
    };
    terminate(&mut ranks);
    forwarders.wait_until(Instant::now() + STDIO_DRAIN);
    remove_segments(&job_id);
    Ok(code)
}

/// Removes shared segments the job's ranks left behind (ranks remove their own once wire-up
/// is done, so only a crash during start-up leaves any).
fn remove_segments(job_id: &str) {
    match braid_shm::unlink_job_segments(&format!("braid-{job_id}-")) {
        Ok(0) => {}
        Ok(n) => eprintln!("mpirun: removed {n} shared-memory segments left by the job"),
        Err(e) => eprintln!("mpirun: cannot remove the job's shared-memory segments: {e}"),
    }
}

/// The hosts from `--hostfile` and `-H` (both may be given), or this machine with one slot
/// per usable core.
fn host_specs(cli: &Cli, ncpus: usize) -> Result<Vec<HostSpec>> {
    let mut specs = Vec::new();
    if let Some(path) = &cli.hostfile {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read hostfile {}", path.display()))?;
        specs.extend(hosts::parse_hostfile(&text, path)?);
    }
    for list in &cli.hosts {
        specs.extend(hosts::parse_host_list(list).with_context(|| format!("bad -H {list:?}"))?);
    }
    if specs.is_empty() {
        let slots = u32::try_from(ncpus.max(1)).unwrap_or(u32::MAX);
        specs.push(HostSpec {
            name: "localhost".to_owned(),
            slots,
        });
    }
    Ok(hosts::merge(specs))
}

/// Whether a local rank is bound: `--bind-to core`, or by default when the host's ranks fit
/// its cores.
fn binds(bind_to: Option<BindTo>, place: &Placement, ncpus: usize) -> bool {
    match bind_to {
        Some(BindTo::Core) => ncpus > 0,
        Some(BindTo::None) => false,
        None => ncpus > 0 && place.local_size as usize <= ncpus,
    }
}

/// The monitor loop; returns the first fault, or `None` when every rank ended normally.
fn watch(
    ranks: &mut [Rank],
    server: &braid_pmi::ThreadedServer,
    received: &signals::Received,
    timeout: Option<u64>,
    start: Instant,
) -> Option<Fault> {
    loop {
        while let Ok(ev) = server.events().try_recv() {
            if let Some(f) = on_event(ranks, ev) {
                return Some(f);
            }
        }
        if let Some(sig) = received.get() {
            return Some(Fault::Signal(sig));
        }
        if let Some(t) = timeout.filter(|&t| start.elapsed() >= Duration::from_secs(t)) {
            return Some(Fault::Timeout(t));
        }
        let now = Instant::now();
        for r in ranks.iter_mut().filter(|r| r.exited.is_none()) {
            if let Ok(Some(status)) = r.child.try_wait() {
                r.exited = Some((status, now));
            }
        }
        // Several ranks may be seen dead in one tick (a killed rank and the peers that
        // noticed it); blame a death by signal first, as it is the likely cause.
        let mut faults: Vec<(bool, Fault)> = Vec::new();
        for r in ranks.iter_mut().filter(|r| !r.judged) {
            let Some((status, seen)) = r.exited else {
                continue;
            };
            if r.pmi_connected && !r.pmi_closed && seen.elapsed() < PMI_DRAIN {
                continue; // let its last PMI lines (abort, finalize) arrive first
            }
            r.judged = true;
            if !status.success() {
                let by_signal = ExitStatusExt::signal(&status).is_some();
                faults.push((
                    by_signal,
                    Fault::Exit {
                        who: r.describe(),
                        status,
                    },
                ));
            } else if r.pmi_initialized && !r.pmi_finalized {
                faults.push((false, Fault::NoFinalize { who: r.describe() }));
            }
        }
        if let Some(i) = faults.iter().position(|(sig, _)| *sig) {
            return Some(faults.swap_remove(i).1);
        }
        if let Some((_, f)) = faults.into_iter().next() {
            return Some(f);
        }
        if ranks.iter().all(|r| r.judged) {
            return None;
        }
        std::thread::sleep(TICK);
    }
}

fn on_event(ranks: &mut [Rank], ev: ServerEvent) -> Option<Fault> {
    match ev {
        ServerEvent::Aborted { rank, code, .. } => return Some(Fault::Abort { rank, code }),
        ServerEvent::Disconnected { rank, .. } => {
            if let Some(r) = ranks.get_mut(rank as usize) {
                r.pmi_connected = true;
                r.pmi_closed = true;
            }
        }
        ServerEvent::Identified { rank } => {
            if let Some(r) = ranks.get_mut(rank as usize) {
                r.pmi_connected = true;
            }
        }
        ServerEvent::Finalized { rank } => {
            if let Some(r) = ranks.get_mut(rank as usize) {
                r.pmi_finalized = true;
            }
        }
        ServerEvent::Initialized { rank } => {
            if let Some(r) = ranks.get_mut(rank as usize) {
                r.pmi_connected = true;
                r.pmi_initialized = true;
            }
        }
        ServerEvent::ProtocolError { rank, reason, .. } => {
            let who = rank.map_or_else(
                || "an unidentified connection".to_owned(),
                |r| format!("rank {r}"),
            );
            eprintln!("mpirun: warning: PMI protocol error from {who}: {reason}");
        }
        ServerEvent::Rejected { reason, .. } => {
            eprintln!("mpirun: warning: refused a PMI connection: {reason}")
        }
        _ => {}
    }
    None
}

/// Prints the fault and returns the exit code.
fn report(fault: &Fault, ranks: &[Rank]) -> u8 {
    let running = ranks.iter().filter(|r| r.exited.is_none()).count();
    match fault {
        Fault::Abort { rank, code } => {
            eprintln!("mpirun: rank {rank} called abort with error code {code}");
            u8::try_from(*code).ok().filter(|&c| c != 0).unwrap_or(1)
        }
        Fault::Exit { who, status } => {
            if let Some(sig) = status.signal() {
                let name = Signal::try_from(sig)
                    .map_or_else(|_| "unknown".to_owned(), |s| s.as_str().to_owned());
                eprintln!("mpirun: {who} was killed by signal {sig} ({name})");
                u8::try_from(128 + sig).unwrap_or(255)
            } else {
                let code = status.code().unwrap_or(1);
                eprintln!("mpirun: {who} exited with status {code}");
                u8::try_from(code).ok().filter(|&c| c != 0).unwrap_or(1)
            }
        }
        Fault::NoFinalize { who } => {
            eprintln!(
                "mpirun: {who} exited with status 0 after PMI init without calling PMI finalize"
            );
            1
        }
        Fault::Signal(sig) => {
            eprintln!(
                "mpirun: received {}; terminating {running} ranks",
                sig.as_str()
            );
            u8::try_from(128 + *sig as i32).unwrap_or(255)
        }
        Fault::Timeout(t) => {
            eprintln!("mpirun: job timed out after {t} seconds; terminating {running} ranks");
            EXIT_TIMEOUT
        }
    }
}

/// SIGTERM to every rank's process group, SIGKILL after [`TERM_GRACE`], and reaping, all
/// bounded. Groups of ranks that already exited are swept too.
fn terminate(ranks: &mut [Rank]) {
    signal_groups(ranks, Signal::SIGTERM);
    let deadline = Instant::now() + TERM_GRACE;
    while reap(ranks) && Instant::now() < deadline {
        std::thread::sleep(TICK);
    }
    signal_groups(ranks, Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(2);
    while reap(ranks) && Instant::now() < deadline {
        std::thread::sleep(TICK);
    }
    for r in ranks.iter().filter(|r| r.exited.is_none()) {
        eprintln!(
            "mpirun: warning: {} did not exit after SIGKILL",
            r.describe()
        );
    }
}

/// Reaps what has exited; returns whether any rank still runs.
fn reap(ranks: &mut [Rank]) -> bool {
    let now = Instant::now();
    let mut running = false;
    for r in ranks.iter_mut().filter(|r| r.exited.is_none()) {
        match r.child.try_wait() {
            Ok(Some(status)) => r.exited = Some((status, now)),
            Ok(None) => running = true,
            Err(_) => r.exited = Some((ExitStatus::from_raw(0), now)),
        }
    }
    running
}

fn signal_groups(ranks: &[Rank], sig: Signal) {
    for r in ranks {
        if let Ok(pgid) = i32::try_from(r.pid()) {
            // ESRCH: the group is already empty.
            let _ = killpg(Pid::from_raw(pgid), sig);
        }
    }
}
