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
