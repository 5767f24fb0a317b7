//! Every `BRAID_*` environment variable the runtime reads, with its default. Nothing else in
//! the runtime reads the environment (PMI variables are the PMI client's).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BRAID_RAILS` | unset: one default rail | comma-separated interface names or IPv4 addresses, the same names on every host (`eth1,eth2`) |
//! | `BRAID_HOST_ID` | the host name | host identity in the business card; ranks with equal ids are on one host |
//! | `BRAID_EAGER_LIMIT` | 65536 | TCP messages up to this many bytes go eagerly; larger ones use rendezvous |
//! | `BRAID_CHUNK_SIZE` | 1048576 | largest data frame of a rendezvous transfer |
//! | `BRAID_SPIN_US` | 1000 (50 when oversubscribed) | how long a wait polls before it blocks in the poller |
//! | `BRAID_CONNECT_TIMEOUT` | 60 | seconds wire-up may take before init fails naming the missing ranks |
//! | `BRAID_SHM` | on | `off`: no shared memory, ranks of one host talk over TCP (comparison, debugging) |
//! | `BRAID_SHM_CMA` | on | `off`: never copy large messages straight from the sender's memory (`process_vm_readv`), nor collectives' data straight into another rank's memory (`process_vm_writev`); they go pipelined through the shared rings and slots instead |
//! | `BRAID_SHM_EAGER_LIMIT` | 4096 (8192 towards a peer without single-copy pulls) | shared-memory messages up to this many bytes are copied through the rings; larger ones use rendezvous (a single-copy pull where CMA works: from 8 KiB it beats two ring copies, 1.8 against 2.3 us, and a window of larger eager messages in both directions fills the rings) |
//! | `BRAID_SHM_HUGE_PAGES` | on | `off`: never back single-copy transfer buffers with huge pages; on: the 2 MiB blocks holding at least 512 KiB of such a buffer (point-to-point or a shared-memory collective's) are collapsed into transparent huge pages (`MADV_COLLAPSE`) when the buffer is used a second time |
//! | `BRAID_SHM_SPLIT_MIN` | 65536 (0 when oversubscribed) | single-copy messages of at least this many bytes are copied by both ends: the receiver reads the first half (`process_vm_readv`) while the sender writes the second half into the receive buffer (`process_vm_writev`); 0 turns it off |
//! | `BRAID_SHM_RING_SIZE` | 4 MiB shared among the local peers, within 64..256 KiB (64 KiB..1 MiB with `BRAID_SHM_CMA=off`) | bytes of each inbound ring (a power of two) |
//! | `BRAID_FAKE_HOSTS` | unset | testing aid: `k` splits the ranks of one host into `k` fake hosts (rank mod k), so they talk over TCP across the split |
//! | `BRAID_JOB_ID` | set by `mpirun` | names the job's shared segments (`/dev/shm/braid-<job>-<rank>`); otherwise the PMI kvsname |
//! | **rails** (read by `bootstrap`; see `braid_transports::rail::RailMode`) | | |
//! | `BRAID_RAIL_MODE` | single | how TCP traffic uses the rails of `BRAID_RAILS`, the same on every rank: `single` (one connection per peer, rail 0), `indep` (one rail per peer pair: min of the two local ranks mod rails), `stripe` (a connection per rail; data chunks round-robin), `weighted` (as stripe, chunks by measured rail rate) |
//! | `BRAID_RAIL_CHUNK` | 262144 | largest data frame of a rendezvous transfer in `stripe` and `weighted` mode with several rails (replaces `BRAID_CHUNK_SIZE` there, so a message spreads over the rails) |
//! | `BRAID_RAIL_TIMEOUT_MS` | 2000 | a TCP connection with unacknowledged bytes and no ACK from the peer's host for this long is dropped (its frames fail over to the other rails, in `indep` on a new connection; with no rail left the peer is lost) |
//! | **collectives** (read by `collective::settings`; see `braid::collective::info()`) | | |
//! | `BRAID_COLL_BCAST_LONG` | 131072 | broadcasts of at least this many bytes (and ≥ 8 ranks) use scatter-allgather instead of the binomial tree |
//! | `BRAID_COLL_ALLREDUCE_SHORT` | 65536 | allreduces below this many bytes use recursive doubling; longer commutative ones Rabenseifner (power-of-two ranks) or ring |
//! | `BRAID_COLL_ALLGATHER_SHORT` | 81920 | allgathers whose result is below this many bytes use Bruck; longer ones the ring |
//! | `BRAID_COLL_GATHER_SHORT` | 65536 | gathers/scatters whose whole buffer is below this many bytes use the binomial tree; longer ones are linear |
//! | `BRAID_COLL_HIERARCHY` | 1 | 0 turns off host-aware (two-level) collectives |
//! | `BRAID_COLL_SHM` | on | `off`: collectives on one-host communicators (and the phases inside a host of two-level ones) use point-to-point schedules instead of the shared-memory component (module `collective::shm`) |
//! | `BRAID_COLL_SHM_MAX` | 4194304 | longest message (bytes per rank) a blocking collective sends through the shared-memory component; longer ones use point-to-point |
//! | `BRAID_COLL_SHM_SLOT` | 32768 | bytes of each of the two data slots per rank in a communicator's shared region (the pipeline chunk); rounded up to a multiple of 128, at least 1k |
//! | `BRAID_COLL_SHM_PAIR_MIN` | 65536 | two-rank single-copy reduces of at least this many bytes split the work: the root folds the head of the vector, the other rank the tail, which it writes into the root's buffer (`process_vm_writev`) |
//! | `BRAID_COLL_SHM_SPLIT` | 32768 | single-copy broadcasts, gathers and scatters with blocks of at least this many bytes split the copying between both ends: the owner of a block writes its last 1/p (`process_vm_writev`) while the other end reads the rest |
//! | `BRAID_COLL_FAKE_HOSTS` | 0 | testing: when k > 0, collectives pretend world rank r is on host r·k/size (two-level algorithms on one machine); `split_shared` still uses real hosts |

use std::time::Duration;

/// Settings read from the environment once, at init.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) rails: Option<String>,
    pub(crate) host_id: Option<String>,
    pub(crate) eager_limit: u64,
    pub(crate) chunk_size: u64,
    pub(crate) spin: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) shm: bool,
    pub(crate) shm_cma: bool,
    pub(crate) shm_huge_pages: bool,
    /// `BRAID_SHM_EAGER_LIMIT`; `None`: the default, which depends on single-copy pulls.
    pub(crate) shm_eager_limit: Option<u64>,
    /// `BRAID_SHM_SPLIT_MIN`; `None`: the default, which depends on oversubscription.
    pub(crate) shm_split_min: Option<u64>,
    /// `BRAID_SHM_RING_SIZE`; `None`: the default, which depends on the number of local ranks.
    pub(crate) shm_ring_size: Option<usize>,
    pub(crate) fake_hosts: Option<u32>,
    pub(crate) job_id: Option<String>,
    // ---- rails (bootstrap) ----
    /// `BRAID_RAIL_MODE`.
    pub(crate) rail_mode: braid_transports::rail::RailMode,
    /// `BRAID_RAIL_CHUNK`.
    pub(crate) rail_chunk: u64,
    /// `BRAID_RAIL_TIMEOUT_MS`.
    pub(crate) rail_timeout: Duration,
    // ---- collectives: thresholds of algorithm selection (module `collective`) ----
    /// `BRAID_COLL_BCAST_LONG`.
    pub(crate) coll_bcast_long: u64,
    /// `BRAID_COLL_ALLREDUCE_SHORT`.
    pub(crate) coll_allreduce_short: u64,
    /// `BRAID_COLL_ALLGATHER_SHORT`.
    pub(crate) coll_allgather_short: u64,
    /// `BRAID_COLL_GATHER_SHORT`.
    pub(crate) coll_gather_short: u64,
    /// `BRAID_COLL_HIERARCHY`.
    pub(crate) coll_hierarchy: bool,
    /// `BRAID_COLL_FAKE_HOSTS`.
    pub(crate) coll_fake_hosts: u64,
    /// `BRAID_COLL_SHM`.
    pub(crate) coll_shm: bool,
    /// `BRAID_COLL_SHM_MAX`.
    pub(crate) coll_shm_max: u64,
    /// `BRAID_COLL_SHM_SLOT`.
    pub(crate) coll_shm_slot: u64,
    /// `BRAID_COLL_SHM_PAIR_MIN`.
    pub(crate) coll_shm_pair_min: u64,
    /// `BRAID_COLL_SHM_SPLIT`.
    pub(crate) coll_shm_split: u64,
}

/// A variable that is set but does not parse.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}='{value}' is not {expected}")]
pub struct EnvError {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// What it should be.
    pub expected: &'static str,
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn number(name: &'static str, default: u64) -> Result<u64, EnvError> {
    match var(name) {
        None => Ok(default),
        Some(v) => parse_size(&v).ok_or(EnvError {
            name,
            value: v,
            expected: "a number (suffixes k, m, g allowed)",
        }),
    }
}

fn switch(name: &'static str, default: bool) -> Result<bool, EnvError> {
    match var(name).as_deref() {
        None => Ok(default),
        Some("1" | "on" | "yes" | "true" | "auto") => Ok(true),
        Some("0" | "off" | "no" | "false") => Ok(false),
        Some(v) => Err(EnvError {
            name,
            value: v.into(),
            expected: "on or off",
        }),
    }
}

fn ring_size() -> Result<Option<usize>, EnvError> {
    if var("BRAID_SHM_RING_SIZE").is_none() {
        return Ok(None);
    }
    let n = number("BRAID_SHM_RING_SIZE", 0)?;
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if !n.is_power_of_two() || !(4096..=1 << 30).contains(&n) {
        return Err(EnvError {
            name: "BRAID_SHM_RING_SIZE",
            value: n.to_string(),
            expected: "a power of two between 4k and 1g",
        });
    }
    Ok(Some(n))
}

fn rail_mode() -> Result<braid_transports::rail::RailMode, EnvError> {
    match var("BRAID_RAIL_MODE") {
        None => Ok(braid_transports::rail::RailMode::default()),
        Some(v) => v.parse().map_err(|_| EnvError {
            name: "BRAID_RAIL_MODE",
            value: v,
            expected: "one of single, indep, stripe, weighted",
        }),
    }
}

/// Parses `123`, `64k`, `1m`, `2g` (binary multiples).
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last()?.to_ascii_lowercase() {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

impl Settings {
    /// Reads the environment.
    pub(crate) fn from_env() -> Result<Self, EnvError> {
        Ok(Self {
            rails: var("BRAID_RAILS"),
            host_id: var("BRAID_HOST_ID"),
            eager_limit: number("BRAID_EAGER_LIMIT", 64 * 1024)?,
            chunk_size: number("BRAID_CHUNK_SIZE", 1 << 20)?.max(1),
            spin: var("BRAID_SPIN_US")
                .map(|_| number("BRAID_SPIN_US", 0).map(Duration::from_micros))
                .transpose()?,
            connect_timeout: Duration::from_secs(number("BRAID_CONNECT_TIMEOUT", 60)?),
            shm: switch("BRAID_SHM", true)?,
            shm_cma: switch("BRAID_SHM_CMA", true)?,
            shm_huge_pages: switch("BRAID_SHM_HUGE_PAGES", true)?,
            shm_eager_limit: var("BRAID_SHM_EAGER_LIMIT")
                .map(|_| number("BRAID_SHM_EAGER_LIMIT", 0))
                .transpose()?,
            shm_split_min: var("BRAID_SHM_SPLIT_MIN")
                .map(|_| number("BRAID_SHM_SPLIT_MIN", 0))
                .transpose()?,
            shm_ring_size: ring_size()?,
            fake_hosts: var("BRAID_FAKE_HOSTS")
                .map(|_| number("BRAID_FAKE_HOSTS", 1))
                .transpose()?
                .map(|k| u32::try_from(k.max(1)).unwrap_or(u32::MAX)),
            job_id: var("BRAID_JOB_ID"),
            // ---- rails ----
            rail_mode: rail_mode()?,
            rail_chunk: number("BRAID_RAIL_CHUNK", 256 * 1024)?.max(1),
            rail_timeout: Duration::from_millis(number("BRAID_RAIL_TIMEOUT_MS", 2000)?.max(1)),
            // ---- collectives ----
            coll_bcast_long: number("BRAID_COLL_BCAST_LONG", 128 * 1024)?,
            coll_allreduce_short: number("BRAID_COLL_ALLREDUCE_SHORT", 64 * 1024)?,
            coll_allgather_short: number("BRAID_COLL_ALLGATHER_SHORT", 80 * 1024)?,
            coll_gather_short: number("BRAID_COLL_GATHER_SHORT", 64 * 1024)?,
            coll_hierarchy: number("BRAID_COLL_HIERARCHY", 1)? != 0,
            coll_fake_hosts: number("BRAID_COLL_FAKE_HOSTS", 0)?,
            coll_shm: switch("BRAID_COLL_SHM", true)?,
            coll_shm_max: number("BRAID_COLL_SHM_MAX", 4 << 20)?,
            coll_shm_slot: number("BRAID_COLL_SHM_SLOT", 32 << 10)?,
            coll_shm_pair_min: number("BRAID_COLL_SHM_PAIR_MIN", 64 << 10)?,
            coll_shm_split: number("BRAID_COLL_SHM_SPLIT", 32 << 10)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }
}
