//! Init and finalize: learning rank and size through PMI-1, exchanging business cards,
//! wiring up the transports, and tearing everything down.

use std::time::{Duration, Instant};

use braid_engine::{Config, Engine, Rank as ERank};
use braid_shm::transport::ShmTransport;
use braid_transports::JobKey;
use braid_transports::rail::rails_from_spec;
use braid_transports::tcp::{PeerCard, RailConfig, TcpTransport};

use crate::core::{self, Core, SpinPolicy, WORLD_COLL_CONTEXT};
use crate::env::Settings;
use crate::error::InitError;

const KEY_KEY: &str = "braid-key";

fn card_key(rank: u32) -> String {
    format!("braid-card-{rank}")
}

/// A value safe to put in the PMI key-value space (no spaces, no separators).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '|' && c != '=' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn hostname() -> String {
    nix_hostname().unwrap_or_else(|| "localhost".into())
}

fn nix_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for 256 bytes; gethostname writes a NUL-terminated name into it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok()
}

/// CPUs online on this host. Not `available_parallelism`, which shrinks to the affinity mask
/// of a rank that the launcher bound to one core.
fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Asks the kernel to kill this process when its parent (the launcher, or the process
/// manager's proxy that started it) dies: a launcher killed outright cannot end the job, and
/// ranks waiting on each other would otherwise run on forever.
fn die_with_parent() {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory of ours.
    let _ = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

fn random_key() -> JobKey {
    use rand::RngCore;
    let mut k = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut k);
    // An all-zero key means "not set" to the transport.
    k[0] |= 1;
    JobKey(k)
}

/// Initializes the runtime of this process.
///
/// Bootstrap order, each step closed by a PMI barrier: (1) every rank publishes its host
/// identity and TCP card, rank 0 also the job key; (2) ranks that share a host create their
/// shared segments and publish them; (3) they map each other's segments, then remove the
/// names, so nothing is left in `/dev/shm` whatever happens later. Finally TCP connections
/// are made to the ranks of other hosts.
pub(crate) fn init() -> Result<(u32, u32), InitError> {
    if core::is_installed() {
        return Err(InitError::UsageAlreadyInitialized);
    }
    let settings = Settings::from_env()?;
    let mut host = sanitize(&settings.host_id.clone().unwrap_or_else(hostname));
    let pmi = braid_pmi::PmiClient::from_env()?;
    let Some(mut pmi) = pmi else {
        let engine = Engine::new(Config::uniform(
            ERank(0),
            1,
            settings.eager_limit,
            settings.chunk_size,
        ));
        let spin = SpinPolicy {
            spin: settings.spin.unwrap_or(Duration::from_micros(1000)),
            yield_between: false,
        };
        let hosts = vec![host.clone()];
        if !core::install(Core::new(engine, None, None, None, host, hosts, spin)) {
            return Err(InitError::UsageAlreadyInitialized);
        }
        return Ok((0, 1));
    };
    let (rank, size) = (pmi.rank(), pmi.size());
    die_with_parent();
    if let Some(k) = settings.fake_hosts {
        host = format!("{host}#{}", rank % k);
    }
    let rails = rails_from_spec(settings.rails.as_deref(), &host)?;
    let wire = |source| InitError::LocalWireUp {
        rank: rank as i32,
        host: host.clone(),
        source,
    };
    let nrails = rails.len();
    let mut tcp = TcpTransport::bind(ERank(rank), size, rails).map_err(wire)?;
    let card = format!("{host}|{}", tcp.card().map_err(wire)?);
    pmi.put(&card_key(rank), &card)?;
    if rank == 0 {
        pmi.put(KEY_KEY, &random_key().to_hex())?;
    }
    pmi.barrier()?;
    let key_hex = pmi.get(KEY_KEY)?;
    let key = JobKey::from_hex(&key_hex).ok_or_else(|| InitError::PeerCard {
        rank: 0,
        card: key_hex.clone(),
    })?;
    let mut cards = Vec::with_capacity(size as usize);
    for r in 0..size {
        let text = if r == rank {
            card.clone()
        } else {
            pmi.get(&card_key(r))?
        };
        let (peer_host, tcp_card) = text.split_once('|').ok_or_else(|| InitError::PeerCard {
            rank: r as i32,
            card: text.clone(),
        })?;
        cards.push((peer_host.to_string(), tcp_card.to_string()));
    }
    let hosts: Vec<String> = cards.iter().map(|(h, _)| h.clone()).collect();
    let local: Vec<u32> = (0..size).filter(|r| hosts[*r as usize] == host).collect();

    let job = settings
        .job_id
        .clone()
        .unwrap_or_else(|| pmi.kvsname().to_string());
    // Every rank passes the same PMI barriers, whether it has local peers or not.
    let shm = if settings.shm && local.len() > 1 {
        Some(shm_wire_up(
            &mut pmi,
            &settings,
            &sanitize(&job),
            rank,
            size,
            &local,
        )?)
    } else {
        if settings.shm {
            pmi.barrier()?;
            pmi.barrier()?;
        }
        None
    };
    let reached_by_shm = |r: u32| shm.as_ref().is_some_and(|s| s.reaches(ERank(r)));
    // Local rank: position among the ranks with the same host identity (rail choice of
    // `indep`), computed from the cards so it holds under any PMI launcher.
    let local_rank = |r: u32| {
        (0..r)
            .filter(|q| hosts[*q as usize] == hosts[r as usize])
            .count()
    };
    let local_rank = |r: u32| u32::try_from(local_rank(r)).unwrap_or(u32::MAX);
    let peers: Vec<PeerCard> = (0..size)
        .filter(|r| *r != rank && !reached_by_shm(*r))
        .map(|r| PeerCard {
            rank: ERank(r),
            same_host: hosts[r as usize] == host,
            host: hosts[r as usize].clone(),
            local_rank: local_rank(r),
            card: cards[r as usize].1.clone(),
        })
        .collect();
    let rail_cfg = RailConfig {
        mode: settings.rail_mode,
        local_rank: local_rank(rank),
        stall_timeout: settings.rail_timeout,
    };
    tcp.wire_up(key, rail_cfg, &peers, settings.connect_timeout)
        .map_err(wire)?;
    // Striping needs chunks small enough that one message spreads over every rail.
    let chunk_size = if settings.rail_mode.is_multi() && nrails > 1 {
        settings.rail_chunk
    } else {
        settings.chunk_size
    };

    let oversubscribed = local.len() > online_cpus();
    let spin = SpinPolicy {
        spin: settings.spin.unwrap_or(if oversubscribed {
            Duration::from_micros(50)
        } else {
            Duration::from_micros(1000)
        }),
        yield_between: oversubscribed,
    };
    let mut cfg = Config::uniform(ERank(rank), size, settings.eager_limit, chunk_size);
    // Both ends copying pays only when each has a core of its own.
    cfg.split_min = settings
        .shm_split_min
        .unwrap_or(if oversubscribed { 0 } else { 64 * 1024 });
    if let Some(s) = &shm {
        for r in 0..size {
            if s.reaches(ERank(r)) {
                let (i, can_pull) = (r as usize, s.can_pull(ERank(r)));
                // With single-copy pulls, a rendezvous beats two ring copies from 8 KiB on
                // (osu_latency 8 KiB: 1.8 us against 2.3); without, it adds a round trip.
                let eager = if settings.shm_cma && can_pull {
                    4096
                } else {
                    8192
                };
                cfg.eager_limit[i] = settings.shm_eager_limit.unwrap_or(eager);
                cfg.offer_pull[i] = settings.shm_cma;
                cfg.can_pull[i] = can_pull;
            }
        }
    }
    let engine = Engine::new(cfg);
    if !core::install(Core::new(
        engine,
        Some(tcp),
        shm,
        Some(pmi),
        host,
        hosts,
        spin,
    )) {
        return Err(InitError::UsageAlreadyInitialized);
    }
    Ok((rank, size))
}

/// Creates this rank's shared segment, maps those of the other `local` ranks and removes the
/// segment names once every rank has mapped them.
fn shm_wire_up(
    pmi: &mut braid_pmi::PmiClient,
    settings: &Settings,
    job: &str,
    rank: u32,
    size: u32,
    local: &[u32],
) -> Result<ShmTransport, InitError> {
    let ring_size = settings
        .shm_ring_size
        .unwrap_or_else(|| default_ring_size(local.len(), settings.shm_cma));
    let mut shm = ShmTransport::create(job, ERank(rank), size, local.to_vec(), ring_size)?;
    pmi.put(&shm_key(rank), &shm.card())?;
    pmi.barrier()?;
    let mut peers = Vec::new();
    for &r in local.iter().filter(|r| **r != rank) {
        peers.push((ERank(r), pmi.get(&shm_key(r))?));
    }
    let attached = shm.connect(&peers, settings.shm_cma);
    // Every rank passes this barrier, attached or not, so no rank waits forever.
    pmi.barrier()?;
    if let Err(e) = shm.unlink() {
        eprintln!("braid: rank {rank}: cannot remove its shared segment: {e}");
    }
    attached?;
    if settings.shm_huge_pages {
        shm.back_with_huge_pages();
    }
    Ok(shm)
}

/// Bytes of each inbound ring when `BRAID_SHM_RING_SIZE` is not set: 4 MiB shared among the
/// `local - 1` peers, as a power of two from 64 KiB up to 256 KiB, or up to 1 MiB when
/// single-copy transfers are off and the rings carry large messages too (a ring that holds
/// more of a message lets both directions stream at once). With single-copy transfers,
/// rings beyond 256 KiB cost small messages more than they give 8 KiB ones.
fn default_ring_size(local: usize, cma: bool) -> usize {
    let share = (4usize << 20) / local.saturating_sub(1).max(1);
    let most = if cma { 256 << 10 } else { 1 << 20 };
    (1usize << share.ilog2()).clamp(64 << 10, most)
}

fn shm_key(rank: u32) -> String {
    format!("braid-shm-{rank}")
}

/// Finalizes: flushes outgoing data, waits for every rank, and tells the process manager.
pub(crate) fn finalize() {
    let flushed = core::with_core(|c| {
        c.flush(Instant::now() + Duration::from_secs(60))?;
        crate::collective::barrier(c, WORLD_COLL_CONTEXT)
    });
    if let Err(e) = flushed {
        eprintln!("braid: finalize: {e}");
    }
    if let Some(c) = core::take()
        && let Some(pmi) = c.pmi
        && let Err(e) = pmi.finalize()
    {
        eprintln!("braid: finalize: {e}");
    }
}

/// Ends the job with `code` (`MPI_Abort`).
pub(crate) fn abort(code: i32) -> ! {
    abort_with(code, "MPI_Abort called")
}

/// Ends the job with `code`, telling the process manager `why`.
pub(crate) fn abort_with(code: i32, why: &str) -> ! {
    if let Some(mut c) = core::take()
        && let Some(pmi) = c.pmi.as_mut()
    {
        let _ = pmi.abort(code, why);
    }
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::default_ring_size;

    #[test]
    fn ring_size_shrinks_with_local_peers() {
        for (local, cma, want) in [
            (1, false, 1 << 20),
            (2, false, 1 << 20),
            (5, false, 1 << 20),
            (8, false, 512 << 10),
            (17, false, 256 << 10),
            (2, true, 256 << 10),
            (17, true, 256 << 10),
            (33, true, 128 << 10),
            (64, true, 64 << 10),
            (1000, false, 64 << 10),
        ] {
            assert_eq!(default_ring_size(local, cma), want, "{local} local ranks");
        }
    }
}
