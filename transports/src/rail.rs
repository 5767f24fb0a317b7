//! Rails: the network interfaces a job's TCP traffic uses.
//!
//! A rail is one network interface (one local IPv4 address) on every host. The rail list
//! comes from `BRAID_RAILS`: comma-separated interface names (the same on every host, as on
//! a real cluster: `eth1,eth2`) or literal IPv4 addresses. Without it a rank uses one
//! default rail: loopback towards ranks of the same host, and otherwise the host's first
//! non-loopback IPv4 address.
//!
//! How a job spreads its traffic over the rails is its [`RailMode`] (`BRAID_RAIL_MODE`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// How the TCP transport uses the rails (`BRAID_RAIL_MODE`). The mode must be the same on
/// every rank of a job.
///
/// The names follow Strazdins, Alexander and Barr (2006), section 4: `single` over a kernel
/// bond device is their `driver.bond`, `indep` is `driver.indep`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum RailMode {
    /// Connection-parallel: each peer pair uses one rail, `min(local rank of a, local rank of
    /// b) mod rails`, so the local ranks of a host spread over the rails. When that rail fails,
    /// the pair moves to another one ([`RailMode::fallback_rails`]).
    Indep,
    /// One connection per peer pair, on rail 0.
    #[default]
    Single,
    /// One connection per rail per peer pair; rendezvous data chunks go round-robin over the
    /// live rails, everything else on the least-loaded (normally the first) rail.
    Stripe,
    /// As `Stripe`, but each data chunk goes to the rail expected to finish it first, from
    /// the rail's backlog and its measured drain rate (rails about as good take turns).
    Weighted,
}

impl RailMode {
    /// Every mode, by name, for messages.
    pub const NAMES: &'static str = "single, indep, stripe, weighted";

    /// Whether the mode holds one connection per rail per peer pair.
    pub fn is_multi(self) -> bool {
        matches!(self, Self::Stripe | Self::Weighted)
    }

    /// The rails a pair of ranks connects on, given the local ranks of both (the position of
    /// each among the ranks of its host) and the number of rails. Symmetric in the two local
    /// ranks, so both ends agree.
    pub fn rails_for_pair(self, local_a: u32, local_b: u32, nrails: usize) -> Vec<usize> {
        let n = nrails.max(1);
        match self {
            Self::Single => vec![0],
            Self::Indep => vec![local_a.min(local_b) as usize % n],
            Self::Stripe | Self::Weighted => (0..n).collect(),
        }
    }

    /// The rails a pair may move to when its rails of [`Self::rails_for_pair`] fail, in the
    /// order they are tried: in `indep` the job's other rails, from the one after the pair's
    /// own on, cyclically (so the pairs of a failed rail move to its neighbour, not all to
    /// rail 0). None in the other modes: `single` means one rail (over a bond device, the bond
    /// fails over by itself), and `stripe` and `weighted` use every rail already. Symmetric in
    /// the two local ranks, as `rails_for_pair`.
    pub fn fallback_rails(self, local_a: u32, local_b: u32, nrails: usize) -> Vec<usize> {
        let n = nrails.max(1);
        match self {
            Self::Indep => {
                let own = local_a.min(local_b) as usize % n;
                (1..n).map(|k| (own + k) % n).collect()
            }
            Self::Single | Self::Stripe | Self::Weighted => Vec::new(),
        }
    }
}

impl fmt::Display for RailMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Indep => "indep",
            Self::Single => "single",
            Self::Stripe => "stripe",
            Self::Weighted => "weighted",
        })
    }
}

/// A `BRAID_RAIL_MODE` value that names no mode.
#[derive(Debug, thiserror::Error)]
#[error("unknown rail mode '{0}' (expected one of: {names})", names = RailMode::NAMES)]
pub struct UnknownRailMode(pub String);

impl FromStr for RailMode {
    type Err = UnknownRailMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "indep" => Ok(Self::Indep),
            "single" => Ok(Self::Single),
            "stripe" => Ok(Self::Stripe),
            "weighted" => Ok(Self::Weighted),
            _ => Err(UnknownRailMode(s.into())),
        }
    }
}

/// Index of a rail in the job's rail list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RailId(pub u16);

/// One rail on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rail {
    /// Position in the rail list.
    pub id: RailId,
    /// Interface name (or the address as written when the spec gave an address).
    pub name: String,
    /// The local address connections on this rail bind to.
    pub addr: IpAddr,
}

/// Why the rail list could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RailError {
    /// The spec names an interface this host does not have.
    #[error(
        "rail '{name}' does not exist on host {host} (interfaces with IPv4 addresses: {available})"
    )]
    NoSuchInterface {
        /// The name given.
        name: String,
        /// This host.
        host: String,
        /// What exists.
        available: String,
    },
    /// The spec is empty or has an empty entry.
    #[error("BRAID_RAILS '{0}' has an empty entry")]
    Empty(String),
    /// Listing interfaces failed.
    #[error("cannot list network interfaces: {0}")]
    Os(#[from] nix::Error),
}

/// IPv4 addresses of this host's interfaces, by name, in the order the OS lists them.
///
/// # Errors
/// The OS refused to list interfaces.
pub fn interfaces() -> Result<Vec<(String, Ipv4Addr)>, RailError> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        if let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            out.push((ifa.interface_name.clone(), addr.ip()));
        }
    }
    Ok(out)
}

/// Builds the rail list from a `BRAID_RAILS` spec, or the default rail when `spec` is None.
///
/// # Errors
/// [`RailError`] naming the missing interface and what exists.
pub fn rails_from_spec(spec: Option<&str>, host: &str) -> Result<Vec<Rail>, RailError> {
    let ifs = interfaces()?;
    let Some(spec) = spec else {
        return Ok(vec![Rail {
            id: RailId(0),
            name: "default".into(),
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }]);
    };
    let mut rails = Vec::new();
    for (i, entry) in spec.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            return Err(RailError::Empty(spec.into()));
        }
        let id = RailId(u16::try_from(i).unwrap_or(u16::MAX));
        let addr = match entry.parse::<IpAddr>() {
            Ok(a) => a,
            Err(_) => match ifs.iter().find(|(n, _)| n == entry) {
                Some((_, a)) => IpAddr::V4(*a),
                None => {
                    let available = ifs
                        .iter()
                        .map(|(n, a)| format!("{n} ({a})"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(RailError::NoSuchInterface {
                        name: entry.into(),
                        host: host.into(),
                        available,
                    });
                }
            },
        };
        rails.push(Rail {
            id,
            name: entry.into(),
            addr,
        });
    }
    Ok(rails)
}

/// The addresses a rank publishes for a rail: for the default rail (unspecified address),
/// loopback first and then every non-loopback IPv4 address of the host; otherwise the rail
/// address itself.
///
/// # Errors
/// The OS refused to list interfaces.
pub fn published_addrs(rail: &Rail) -> Result<Vec<IpAddr>, RailError> {
    if !rail.addr.is_unspecified() {
        return Ok(vec![rail.addr]);
    }
    let mut v = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    for (_, a) in interfaces()? {
        if !a.is_loopback() {
            v.push(IpAddr::V4(a));
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rail() {
        let r = rails_from_spec(None, "h").unwrap();
        assert_eq!(r.len(), 1);
        assert!(published_addrs(&r[0]).unwrap()[0].is_loopback());
    }

    #[test]
    fn named_rails() {
        let r = rails_from_spec(Some("lo,127.0.0.1"), "h").unwrap();
        assert_eq!(r[0].addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(r[1].id, RailId(1));
    }

    #[test]
    fn modes_parse_and_pick_rails() {
        for m in ["single", "indep", "stripe", "Weighted"] {
            let mode: RailMode = m.parse().unwrap();
            assert_eq!(mode.to_string(), m.to_ascii_lowercase());
        }
        let e = "bond".parse::<RailMode>().unwrap_err().to_string();
        assert!(e.contains("bond") && e.contains("stripe"), "{e}");
        assert_eq!(RailMode::Indep.rails_for_pair(3, 1, 4), vec![1]);
        assert_eq!(RailMode::Indep.rails_for_pair(1, 3, 4), vec![1]);
        assert_eq!(RailMode::Indep.rails_for_pair(6, 5, 4), vec![1]);
        assert_eq!(RailMode::Single.rails_for_pair(3, 3, 4), vec![0]);
        assert_eq!(RailMode::Stripe.rails_for_pair(0, 0, 3), vec![0, 1, 2]);
        assert!(RailMode::Weighted.is_multi() && !RailMode::Indep.is_multi());
        assert_eq!(RailMode::Indep.fallback_rails(3, 1, 4), vec![2, 3, 0]);
        assert_eq!(RailMode::Indep.fallback_rails(1, 3, 4), vec![2, 3, 0]);
        assert!(RailMode::Indep.fallback_rails(0, 0, 1).is_empty());
        for m in [RailMode::Single, RailMode::Stripe, RailMode::Weighted] {
            assert!(m.fallback_rails(0, 1, 4).is_empty(), "{m}");
        }
    }

    #[test]
    fn missing_interface_is_named() {
        let e = rails_from_spec(Some("lo,nosuch9"), "hostA").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("nosuch9") && msg.contains("hostA") && msg.contains("lo"),
            "{msg}"
        );
        assert!(rails_from_spec(Some("lo,,"), "h").is_err());
    }
}
