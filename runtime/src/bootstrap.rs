//! Init and finalize: learning rank and size through PMI-1, exchanging business cards,
//! wiring up the transports, and tearing everything down.

use std::time::{Duration, Instant};

use braid_engine::{Config, Engine, Rank as ERank};
use braid_transports::JobKey;
use braid_transports::rail::rails_from_spec;
use braid_transports::tcp::{PeerCard, TcpTransport};

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
        .map(|c| if c.is_ascii_graphic() && c != '|' && c != '=' { c } else { '_' })
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

fn random_key() -> JobKey {
    use rand::RngCore;
    let mut k = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut k);
    // An all-zero key means "not set" to the transport.
    k[0] |= 1;
    JobKey(k)
}

/// Initializes the runtime of this process.
pub(crate) fn init() -> Result<(u32, u32), InitError> {
    if core::is_installed() {
        return Err(InitError::UsageAlreadyInitialized);
    }
    let settings = Settings::from_env()?;
    let host = sanitize(&settings.host_id.clone().unwrap_or_else(hostname));
    let pmi = braid_pmi::PmiClient::from_env()?;
    let Some(mut pmi) = pmi else {
        let engine = Engine::new(Config::uniform(ERank(0), 1, settings.eager_limit, settings.chunk_size));
        let spin = SpinPolicy {
            spin: settings.spin.unwrap_or(Duration::from_micros(1000)),
            yield_between: false,
        };
        let hosts = vec![host.clone()];
        if !core::install(Core::new(engine, None, None, host, hosts, spin)) {
            return Err(InitError::UsageAlreadyInitialized);
        }
        return Ok((0, 1));
    };
    let (rank, size) = (pmi.rank(), pmi.size());
    let rails = rails_from_spec(settings.rails.as_deref(), &host)?;
    let wire = |source| InitError::LocalWireUp {
        rank: rank as i32,
        host: host.clone(),
        source,
    };
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
    let mut peers = Vec::new();
    let mut hosts = Vec::new();
    let mut local = 0usize;
    for r in 0..size {
        let text = if r == rank { card.clone() } else { pmi.get(&card_key(r))? };
        let (peer_host, tcp_card) = text.split_once('|').ok_or_else(|| InitError::PeerCard {
            rank: r as i32,
            card: text.clone(),
        })?;
        if peer_host == host {
            local += 1;
        }
        hosts.push(peer_host.to_string());
        if r != rank {
            peers.push(PeerCard {
                rank: ERank(r),
                same_host: peer_host == host,
                card: tcp_card.to_string(),
            });
        }
    }
    tcp.wire_up(key, &peers, settings.connect_timeout).map_err(wire)?;
    let cores = online_cpus();
    let oversubscribed = local > cores;
    let spin = SpinPolicy {
        spin: settings.spin.unwrap_or(if oversubscribed {
            Duration::from_micros(50)
        } else {
            Duration::from_micros(1000)
        }),
        yield_between: oversubscribed,
    };
    let engine = Engine::new(Config::uniform(ERank(rank), size, settings.eager_limit, settings.chunk_size));
    if !core::install(Core::new(engine, Some(tcp), Some(pmi), host, hosts, spin)) {
        return Err(InitError::UsageAlreadyInitialized);
    }
    Ok((rank, size))
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
    if let Some(mut c) = core::take()
        && let Some(pmi) = c.pmi.as_mut()
    {
        let _ = pmi.abort(code, "MPI_Abort called");
    }
    std::process::exit(code)
}
