//! The virtual-cluster spec: TOML text, parsed with serde and then validated into a [`Spec`]
//! whose every name, rate and address is known to be usable.
//!
//! ```toml
//! name = "paper"              # [a-z][a-z0-9]{0,7}: prefix of every namespace and link
//! configuration = "driver.indep"   # optional: one of the paper's configurations
//! bond = "auto"               # "none" | "auto" (kernel bonding if present, else ECMP)
//! mtu = 1500
//!
//! [addresses]
//! base = 0                    # third-octet base; a testbed uses base..=base+15
//!
//! [[rails]]
//! name = "eth1"
//! rate = "1gbit"
//! pci = "0000:03:01.0"        # optional, for the Xen generators
//!
//! [[hosts]]
//! name = "n0"
//! slots = 4
//! rates = { eth4 = "720mbit" }    # optional per-host rate override
//! pci = { eth4 = "0000:01:04.0" } # optional per-host PCI address override
//!
//! [[hosts.guests]]
//! name = "g0"
//! vcpus = 1
//! cpus = [0]                  # pinning
//! memory = 512                # MiB
//! nics = ["eth1"]             # passthrough NICs (guest-byp); empty: a vif (guest.bond)
//! ```
//!
//! # Address plan
//!
//! With `B = addresses.base` (default 0), node index `i` (hosts first, then guests, in file
//! order) and rail index `r`:
//!
//! | what | address |
//! |---|---|
//! | rail `r` of host (or passthrough guest) `i` | `10.77.(B+1+r).(i+1)/24` |
//! | bond address of host `i` | `10.77.(B+9).(i+1)` (`/32` on `lo` for ECMP, `/24` on `bond0`) |
//! | bridged guest `k` (guest.bond) | `10.77.(B+10).(k+1)/32` |
//! | gateway of bridged guests on host `i` | `10.77.(B+11).(i+1)/32` on `xenbr0` |
//! | management of node `i` | `10.77.(B+12).(i+1)/24`; the root namespace is `.254` |
//!
//! So at most 8 rails and 253 nodes, and two testbeds coexist when their bases are 16 apart.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;

use crate::error::SpecError;

/// Most rails the address plan has room for.
pub const MAX_RAILS: usize = 8;
/// Most nodes (hosts plus guests) the address plan has room for (`.1` to `.253`).
pub const MAX_NODES: usize = 253;
/// Octets one testbed uses above its base.
pub const OCTETS_PER_TESTBED: u8 = 16;
/// Longest testbed name (it prefixes link names in the root namespace, which have 15 bytes).
pub const MAX_NAME_LEN: usize = 8;

/// One of the paper's named configurations (Strazdins et al. 2006, section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Configuration {
    /// Ranks in the driver domain (the host), rails combined by bonding.
    DriverBond,
    /// Ranks in the driver domain, one independent rail per process pair.
    DriverIndep,
    /// Ranks in guests that reach the network through a bridge in the driver domain, which
    /// bonds the rails.
    GuestBond,
    /// Ranks in guests that own passthrough NICs (VMM bypass), one rail each.
    GuestBypIndep,
}

impl Configuration {
    /// All configurations, in the paper's order.
    pub const ALL: [Self; 4] = [
        Self::DriverBond,
        Self::DriverIndep,
        Self::GuestBond,
        Self::GuestBypIndep,
    ];

    /// The paper's name (`driver.bond`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DriverBond => "driver.bond",
            Self::DriverIndep => "driver.indep",
            Self::GuestBond => "guest.bond",
            Self::GuestBypIndep => "guest-byp.indep",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Configuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How rails are combined into one address per host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BondMode {
    /// Kernel bonding where the kernel has it, else ECMP multipath routing with layer-4
    /// hashing as the stand-in.
    Auto,
    /// No bond address.
    None,
}

/// A link rate in bits per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate(u64);

impl Rate {
    /// Slowest rate accepted (tbf needs a sensible burst).
    pub const MIN: Self = Self(8_000);

    /// From bits per second.
    pub fn from_bits_per_sec(bps: u64) -> Self {
        Self(bps)
    }

    /// Bits per second.
    pub fn bits_per_sec(self) -> u64 {
        self.0
    }

    /// Bytes per second.
    pub fn bytes_per_sec(self) -> u64 {
        self.0 / 8
    }

    /// Parses `N[.F]UNIT`: `bit`, `kbit`, `mbit`, `gbit` (decimal, as tc), or bytes per
    /// second `bps`, `kbps`, `mbps`, `gbps` (tc's spelling, x8) and `MB/s`-style `kB/s`,
    /// `MB/s`, `GB/s`.
    ///
    /// # Errors
    ///
    /// [`SpecError::BadRate`] naming the text and what is wrong.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let bad = |why: &str| SpecError::BadRate {
            text: text.to_owned(),
            why: why.to_owned(),
        };
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("no unit (use bit, kbit, mbit, gbit, mbps or MB/s)"))?;
        let (num, unit) = t.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| bad("the number part is not a number"))?;
        let mult: f64 = match unit.trim() {
            "bit" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            "bps" | "B/s" => 8.0,
            "kbps" | "kB/s" | "KB/s" => 8e3,
            "mbps" | "MB/s" => 8e6,
            "gbps" | "GB/s" => 8e9,
            other => return Err(bad(&format!("unknown unit {other:?}"))),
        };
        let bps = value * mult;
        if !bps.is_finite() || bps > 1e12 {
            return Err(bad("more than 1000 gbit"));
        }
        if bps < Self::MIN.0 as f64 {
            return Err(bad("less than 8 kbit"));
        }
        // In range 8e3..=1e12 (checked above), so the cast neither truncates nor wraps.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(Self(bps.round() as u64))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b.is_multiple_of(1_000_000_000) {
            write!(f, "{}gbit", b / 1_000_000_000)
        } else if b.is_multiple_of(1_000_000) {
            write!(f, "{}mbit", b / 1_000_000)
        } else if b.is_multiple_of(1_000) {
            write!(f, "{}kbit", b / 1_000)
        } else {
            write!(f, "{b}bit")
        }
    }
}

// ------------------------------------------------------------------------------------------
// Raw (serde) form.
// ------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    #[serde(default)]
    configuration: Option<String>,
    #[serde(default = "default_bond")]
    bond: BondMode,
    #[serde(default = "default_mtu")]
    mtu: u32,
    #[serde(default)]
    addresses: RawAddresses,
    hosts: Vec<RawHost>,
    rails: Vec<RawRail>,
}

fn default_bond() -> BondMode {
    BondMode::Auto
}

fn default_mtu() -> u32 {
    1500
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAddresses {
    #[serde(default)]
    base: u8,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRail {
    name: String,
    rate: String,
    #[serde(default)]
    pci: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: String,
    #[serde(default = "one")]
    slots: u32,
    #[serde(default)]
    rates: BTreeMap<String, String>,
    #[serde(default)]
    pci: BTreeMap<String, String>,
    #[serde(default)]
    guests: Vec<RawGuest>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    name: String,
    #[serde(default = "one")]
    vcpus: u32,
    #[serde(default)]
    cpus: Vec<u32>,
    #[serde(default = "default_memory")]
    memory: u32,
    #[serde(default)]
    slots: Option<u32>,
    #[serde(default)]
    nics: Vec<String>,
}

fn default_memory() -> u32 {
    512
}

// ------------------------------------------------------------------------------------------
// Validated form.
// ------------------------------------------------------------------------------------------

/// A validated virtual-cluster spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Testbed name: `[a-z][a-z0-9]{0,7}`, the prefix of every namespace and root link.
    pub name: String,
    /// The paper's configuration this spec models (given, or inferred from the guests).
    pub configuration: Configuration,
    /// Bond flavour requested.
    pub bond: BondMode,
    /// MTU of every rail and management link.
    pub mtu: u32,
    /// Third-octet base of the address plan.
    pub base: u8,
    /// Rails, in file order; index = rail index.
    pub rails: Vec<Rail>,
    /// Hosts, in file order; index = host index.
    pub hosts: Vec<Host>,
}

/// One rail (a NIC present on every host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rail {
    /// Interface name on every host (`eth1`).
    pub name: String,
    /// Rate on hosts without an override.
    pub rate: Rate,
    /// PCI address of the NIC on hosts without an override.
    pub pci: Option<String>,
}

/// One host (a node of the cluster; the Xen driver domain when it has guests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Name (`[a-z0-9][a-z0-9_]{0,15}`).
    pub name: String,
    /// Ranks placed on it when it has no guests.
    pub slots: u32,
    /// Rate per rail, overrides applied; same order as [`Spec::rails`].
    pub rates: Vec<Rate>,
    /// PCI address per rail, overrides applied; same order as [`Spec::rails`].
    pub pci: Vec<Option<String>>,
    /// Its guests.
    pub guests: Vec<Guest>,
}

/// One Xen guest, built as a namespace of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    /// Name, unique within its host.
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Physical CPUs it is pinned to (empty: no pinning).
    pub cpus: Vec<u32>,
    /// Memory in MiB.
    pub memory: u32,
    /// Ranks placed on it.
    pub slots: u32,
    /// Indices of the rails passed through to it (VMM bypass); empty: a vif on the host's
    /// bridge.
    pub nics: Vec<usize>,
}

impl Guest {
    /// Whether it owns passthrough NICs.
    pub fn is_bypass(&self) -> bool {
        !self.nics.is_empty()
    }
}

/// Where an MPI rank can run: a host, or a guest of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// Host index.
    Host(usize),
    /// Host index and guest index within it.
    Guest(usize, usize),
}

impl Spec {
    /// Reads and validates a spec file.
    ///
    /// # Errors
    ///
    /// [`SpecError::Read`] if the file cannot be read, else as [`Spec::parse`].
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            SpecError::Toml { message, .. } => SpecError::Toml {
                file: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates spec text.
    ///
    /// # Errors
    ///
    /// [`SpecError::Toml`] (malformed TOML, unknown or missing field; the message has line and
    /// column) or a validation error naming the offending item.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let raw: RawSpec = toml::from_str(text).map_err(|e| SpecError::Toml {
            file: "<spec>".to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        validate(raw)
    }

    /// Number of nodes (hosts plus guests).
    pub fn node_count(&self) -> usize {
        self.hosts.len() + self.hosts.iter().map(|h| h.guests.len()).sum::<usize>()
    }

    /// Every node: hosts first, then guests, in file order; the position is the node index of
    /// the address plan.
    pub fn nodes(&self) -> Vec<Node> {
        let hosts = (0..self.hosts.len()).map(Node::Host);
        let guests = self
            .hosts
            .iter()
            .enumerate()
            .flat_map(|(h, host)| (0..host.guests.len()).map(move |g| Node::Guest(h, g)));
        hosts.chain(guests).collect()
    }

    /// Index of `node` in [`Spec::nodes`].
    pub fn node_index(&self, node: Node) -> usize {
        self.nodes().iter().position(|n| *n == node).unwrap_or(0)
    }

    /// The display name of a node: `host` or `host.guest`.
    pub fn node_name(&self, node: Node) -> String {
        match node {
            Node::Host(h) => self.hosts[h].name.clone(),
            Node::Guest(h, g) => format!("{}.{}", self.hosts[h].name, self.hosts[h].guests[g].name),
        }
    }

    /// Finds a node by display name (`host` or `host.guest`).
    pub fn find_node(&self, name: &str) -> Option<Node> {
        self.nodes()
            .into_iter()
            .find(|n| self.node_name(*n) == name)
    }

    /// Network namespace of a node: `<name>-<host>` or `<name>-<host>-<guest>`.
    pub fn netns(&self, node: Node) -> String {
        match node {
            Node::Host(h) => format!("{}-{}", self.name, self.hosts[h].name),
            Node::Guest(h, g) => format!(
                "{}-{}-{}",
                self.name, self.hosts[h].name, self.hosts[h].guests[g].name
            ),
        }
    }

    /// Namespace of the rail switch (one bridge per rail).
    pub fn switch_netns(&self) -> String {
        format!("{}-sw", self.name)
    }

    /// Name of the management bridge in the root namespace.
    pub fn mgmt_bridge(&self) -> String {
        format!("{}-mg", self.name)
    }

    /// Index of a rail by name.
    pub fn rail_index(&self, name: &str) -> Option<usize> {
        self.rails.iter().position(|r| r.name == name)
    }

    /// The node that holds rail `rail` of host `host`: the passthrough guest owning it, or the
    /// host.
    pub fn rail_owner(&self, host: usize, rail: usize) -> Node {
        self.hosts[host]
            .guests
            .iter()
            .position(|g| g.nics.contains(&rail))
            .map_or(Node::Host(host), |g| Node::Guest(host, g))
    }

    /// Rails that stay with host `host` (not passed through to a guest).
    pub fn host_rails(&self, host: usize) -> Vec<usize> {
        (0..self.rails.len())
            .filter(|&r| self.rail_owner(host, r) == Node::Host(host))
            .collect()
    }

    /// Rails of a node: those it holds.
    pub fn node_rails(&self, node: Node) -> Vec<usize> {
        match node {
            Node::Host(h) => self.host_rails(h),
            Node::Guest(h, g) => self.hosts[h].guests[g].nics.clone(),
        }
    }

    fn octet(&self, offset: u8) -> u8 {
        // validate() checks base + OCTETS_PER_TESTBED - 1 <= 255.
        self.base.saturating_add(offset)
    }

    fn host_octet(index: usize) -> u8 {
        // validate() checks at most MAX_NODES nodes, so index + 1 <= 253.
        u8::try_from(index + 1).unwrap_or(u8::MAX)
    }

    /// Address of rail `rail` on host `host` (held by the host or its passthrough guest).
    pub fn rail_addr(&self, host: usize, rail: usize) -> Ipv4Addr {
        let third = self.octet(1 + u8::try_from(rail).unwrap_or(0));
        Ipv4Addr::new(10, 77, third, Self::host_octet(host))
    }

    /// Bond address of host `host` (kernel bond or ECMP stand-in).
    pub fn bond_addr(&self, host: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.octet(9), Self::host_octet(host))
    }

    /// Address of a bridged (guest.bond) guest.
    pub fn guest_addr(&self, host: usize, guest: usize) -> Ipv4Addr {
        let k = self.node_index(Node::Guest(host, guest)) - self.hosts.len();
        Ipv4Addr::new(10, 77, self.octet(10), Self::host_octet(k))
    }

    /// Gateway address of bridged guests on host `host` (on its `xenbr0`).
    pub fn guest_gateway(&self, host: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.octet(11), Self::host_octet(host))
    }

    /// Management address of a node.
    pub fn mgmt_addr(&self, node: Node) -> Ipv4Addr {
        Ipv4Addr::new(
            10,
            77,
            self.octet(12),
            Self::host_octet(self.node_index(node)),
        )
    }

    /// Management address of the root namespace (where `mpirun` runs).
    pub fn mgmt_root_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.octet(12), 254)
    }

    /// Where ranks run: `(node, slots)` for every host without guests and every guest.
    pub fn mpi_nodes(&self) -> Vec<(Node, u32)> {
        self.nodes()
            .into_iter()
            .filter_map(|n| match n {
                Node::Host(h) if self.hosts[h].guests.is_empty() => Some((n, self.hosts[h].slots)),
                Node::Host(_) => None,
                Node::Guest(h, g) => Some((n, self.hosts[h].guests[g].slots)),
            })
            .collect()
    }
}

fn validate(raw: RawSpec) -> Result<Spec, SpecError> {
    let usage = |what: String| SpecError::Invalid { what };
    check_name("testbed name", &raw.name, MAX_NAME_LEN, false)?;
    if raw.mtu < 576 || raw.mtu > 65_535 {
        return Err(usage(format!("mtu {} is outside 576..=65535", raw.mtu)));
    }
    if raw.addresses.base > u8::MAX - (OCTETS_PER_TESTBED - 1) {
        return Err(SpecError::AddressPlan {
            what: format!(
                "addresses.base {} leaves no room for the {OCTETS_PER_TESTBED} octets a testbed \
                 uses (at most {})",
                raw.addresses.base,
                u8::MAX - (OCTETS_PER_TESTBED - 1)
            ),
        });
    }
    if raw.rails.is_empty() {
        return Err(usage("the spec has no rails".to_owned()));
    }
    if raw.hosts.is_empty() {
        return Err(usage("the spec has no hosts".to_owned()));
    }
    if raw.rails.len() > MAX_RAILS {
        return Err(SpecError::AddressPlan {
            what: format!(
                "{} rails, but the address plan has room for {MAX_RAILS}",
                raw.rails.len()
            ),
        });
    }
    let mut rails = Vec::with_capacity(raw.rails.len());
    let mut seen = BTreeSet::new();
    for r in &raw.rails {
        check_ifname(&r.name)?;
        if !seen.insert(r.name.clone()) {
            return Err(SpecError::Duplicate {
                kind: "rail",
                name: r.name.clone(),
            });
        }
        let rate = Rate::parse(&r.rate).map_err(|e| in_item(e, format!("rail {}", r.name)))?;
        if let Some(p) = &r.pci {
            check_pci(p, &format!("rail {}", r.name))?;
        }
        rails.push(Rail {
            name: r.name.clone(),
            rate,
            pci: r.pci.clone(),
        });
    }
    let rail_index = |host: &str, name: &str| {
        rails
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| SpecError::UnknownRail {
                host: host.to_owned(),
                rail: name.to_owned(),
                known: rails.iter().map(|r| r.name.clone()).collect(),
            })
    };
    let mut hosts = Vec::with_capacity(raw.hosts.len());
    let mut seen = BTreeSet::new();
    for h in &raw.hosts {
        check_name("host name", &h.name, 16, true)?;
        if !seen.insert(h.name.clone()) {
            return Err(SpecError::Duplicate {
                kind: "host",
                name: h.name.clone(),
            });
        }
        if h.slots == 0 {
            return Err(usage(format!("host {}: slots must be at least 1", h.name)));
        }
        let mut rates: Vec<Rate> = rails.iter().map(|r| r.rate).collect();
        for (rail, text) in &h.rates {
            let i = rail_index(&h.name, rail)?;
            rates[i] = Rate::parse(text)
                .map_err(|e| in_item(e, format!("host {} rate override for {rail}", h.name)))?;
        }
        let mut pci: Vec<Option<String>> = rails.iter().map(|r| r.pci.clone()).collect();
        for (rail, addr) in &h.pci {
            let i = rail_index(&h.name, rail)?;
            check_pci(addr, &format!("host {} pci of {rail}", h.name))?;
            pci[i] = Some(addr.clone());
        }
        let mut guests = Vec::with_capacity(h.guests.len());
        let mut gseen = BTreeSet::new();
        let mut owned = BTreeMap::new();
        for g in &h.guests {
            let at = format!("{}.{}", h.name, g.name);
            check_name("guest name", &g.name, 16, true)?;
            if !gseen.insert(g.name.clone()) {
                return Err(SpecError::Duplicate {
                    kind: "guest",
                    name: at,
                });
            }
            if g.vcpus == 0 || g.memory == 0 || g.slots == Some(0) {
                return Err(usage(format!(
                    "guest {at}: vcpus, memory and slots must be > 0"
                )));
            }
            let mut nics = Vec::new();
            for n in &g.nics {
                let i = rail_index(&at, n)?;
                if let Some(other) = owned.insert(i, g.name.clone()) {
                    return Err(usage(format!(
                        "rail {n} of host {} is passed through to both guest {other} and guest {}",
                        h.name, g.name
                    )));
                }
                nics.push(i);
            }
            guests.push(Guest {
                name: g.name.clone(),
                vcpus: g.vcpus,
                cpus: g.cpus.clone(),
                memory: g.memory,
                slots: g.slots.unwrap_or(g.vcpus),
                nics,
            });
        }
        hosts.push(Host {
            name: h.name.clone(),
            slots: h.slots,
            rates,
            pci,
            guests,
        });
    }
    let spec = Spec {
        name: raw.name.clone(),
        configuration: Configuration::DriverIndep,
        bond: raw.bond,
        mtu: raw.mtu,
        base: raw.addresses.base,
        rails,
        hosts,
    };
    if spec.node_count() > MAX_NODES {
        return Err(SpecError::AddressPlan {
            what: format!(
                "{} hosts and guests, but the address plan has room for {MAX_NODES}",
                spec.node_count()
            ),
        });
    }
    let configuration = match raw.configuration.as_deref() {
        Some(text) => Configuration::parse(text).ok_or_else(|| {
            usage(format!(
                "unknown configuration {text:?} (expected one of {})",
                Configuration::ALL.map(Configuration::as_str).join(", ")
            ))
        })?,
        None => infer_configuration(&spec),
    };
    check_configuration(&spec, configuration)?;
    Ok(Spec {
        configuration,
        ..spec
    })
}

fn infer_configuration(spec: &Spec) -> Configuration {
    let guests = spec.hosts.iter().flat_map(|h| &h.guests);
    let mut any = false;
    let mut all_byp = true;
    for g in guests {
        any = true;
        all_byp &= g.is_bypass();
    }
    match (any, all_byp, spec.bond) {
        (true, true, _) => Configuration::GuestBypIndep,
        (true, false, _) => Configuration::GuestBond,
        (false, _, BondMode::Auto) => Configuration::DriverBond,
        (false, _, BondMode::None) => Configuration::DriverIndep,
    }
}

fn check_configuration(spec: &Spec, c: Configuration) -> Result<(), SpecError> {
    let bad = |why: String| SpecError::Configuration {
        configuration: c.as_str(),
        why,
    };
    for h in &spec.hosts {
        let byp = h.guests.iter().filter(|g| g.is_bypass()).count();
        let bridged = h.guests.len() - byp;
        match c {
            Configuration::DriverBond | Configuration::DriverIndep if !h.guests.is_empty() => {
                return Err(bad(format!(
                    "host {} has guests; ranks run on hosts",
                    h.name
                )));
            }
            Configuration::GuestBond if byp > 0 => {
                return Err(bad(format!(
                    "host {} has guests with passthrough NICs; guests use vifs",
                    h.name
                )));
            }
            Configuration::GuestBypIndep if bridged > 0 => {
                return Err(bad(format!(
                    "host {} has guests without passthrough NICs",
                    h.name
                )));
            }
            _ => {}
        }
        if matches!(c, Configuration::GuestBond | Configuration::GuestBypIndep)
            && h.guests.is_empty()
        {
            return Err(bad(format!("host {} has no guests", h.name)));
        }
    }
    if matches!(c, Configuration::DriverBond | Configuration::GuestBond)
        && spec.bond == BondMode::None
    {
        return Err(bad("it needs bond = \"auto\"".to_owned()));
    }
    Ok(())
}

fn in_item(e: SpecError, item: String) -> SpecError {
    match e {
        SpecError::BadRate { text, why } => SpecError::BadRate {
            text,
            why: format!("{why} (in {item})"),
        },
        other => other,
    }
}

fn check_name(
    kind: &'static str,
    name: &str,
    max: usize,
    underscore: bool,
) -> Result<(), SpecError> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || (underscore && c.is_ascii_digit()));
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || (underscore && c == '_'));
    if !first_ok || !rest_ok || name.len() > max {
        let allowed = if underscore {
            "lower-case letters, digits and _"
        } else {
            "a lower-case letter, then lower-case letters and digits"
        };
        return Err(SpecError::BadName {
            kind,
            name: name.to_owned(),
            why: format!("must be 1 to {max} characters: {allowed}"),
        });
    }
    Ok(())
}

fn check_ifname(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !matches!(name, "lo" | "mgmt" | "bond0" | "xenbr0");
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadName {
            kind: "rail name",
            name: name.to_owned(),
            why: "must be an interface name of 1 to 15 letters, digits, _ or ., other than lo, \
                  mgmt, bond0 and xenbr0"
                .to_owned(),
        })
    }
}

/// Accepts `BB:DD.F` or `DDDD:BB:DD.F` (hex).
fn check_pci(addr: &str, item: &str) -> Result<(), SpecError> {
    let parts: Vec<&str> = addr.split([':', '.']).collect();
    let widths: &[usize] = match parts.len() {
        3 => &[2, 2, 1],
        4 => &[4, 2, 2, 1],
        _ => &[],
    };
    let ok = !widths.is_empty()
        && parts
            .iter()
            .zip(widths)
            .all(|(p, w)| p.len() == *w && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(SpecError::Invalid {
            what: format!("{item}: PCI address {addr:?} is not of the form 0000:03:04.0"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t1"
[[rails]]
name = "eth1"
rate = "1gbit"
[[rails]]
name = "eth4"
rate = "90MB/s"
[[hosts]]
name = "n0"
slots = 2
[[hosts]]
name = "n1"
rates = { eth4 = "720mbit" }
"#;

    #[test]
    fn rates() {
        assert_eq!(Rate::parse("1gbit").unwrap().bits_per_sec(), 1_000_000_000);
        assert_eq!(Rate::parse("720mbit").unwrap().bits_per_sec(), 720_000_000);
        assert_eq!(Rate::parse("90MB/s").unwrap().bits_per_sec(), 720_000_000);
        assert_eq!(Rate::parse("1.5gbit").unwrap().to_string(), "1500mbit");
        for bad in [
            "",
            "fast",
            "10",
            "10 furlongs",
            "0mbit",
            "1..2gbit",
            "5000gbit",
        ] {
            let e = Rate::parse(bad).unwrap_err();
            assert!(e.to_string().contains("rate"), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_and_plans_addresses() {
        let s = Spec::parse(GOOD).unwrap();
        assert_eq!(s.configuration, Configuration::DriverBond);
        assert_eq!(s.hosts[1].rates[1].to_string(), "720mbit");
        assert_eq!(s.hosts[0].rates[1].to_string(), "720mbit");
        assert_eq!(s.rail_addr(1, 0), Ipv4Addr::new(10, 77, 1, 2));
        assert_eq!(s.rail_addr(0, 1), Ipv4Addr::new(10, 77, 2, 1));
        assert_eq!(s.mgmt_addr(Node::Host(1)), Ipv4Addr::new(10, 77, 12, 2));
        assert_eq!(s.mgmt_root_addr(), Ipv4Addr::new(10, 77, 12, 254));
        assert_eq!(s.netns(Node::Host(0)), "t1-n0");
        assert_eq!(s.mpi_nodes(), vec![(Node::Host(0), 2), (Node::Host(1), 1)]);
    }

    fn err(text: &str) -> String {
        Spec::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let e = err("name = \"x\"\nhosts = [\n");
        assert!(e.contains("line"), "{e}");
        let e = err(&GOOD.replace("slots = 2", "slots = 2\ncolour = 1"));
        assert!(e.contains("colour"), "{e}");
        let e = err(&GOOD.replace("eth4 = \"720mbit\"", "eth9 = \"720mbit\""));
        assert!(
            e.contains("eth9") && e.contains("n1") && e.contains("eth1, eth4"),
            "{e}"
        );
        let e = err(&GOOD.replace("name = \"n1\"", "name = \"n0\""));
        assert!(e.contains("duplicate host") && e.contains("n0"), "{e}");
        let e = err(&GOOD.replace("name = \"eth4\"", "name = \"eth1\""));
        assert!(e.contains("duplicate rail"), "{e}");
        let e = err(&GOOD.replace("1gbit", "1 gigabit"));
        assert!(e.contains("1 gigabit") && e.contains("rail eth1"), "{e}");
        let e = err(&GOOD.replace("name = \"t1\"", "name = \"much-too-long\""));
        assert!(e.contains("testbed name"), "{e}");
        let e = err(&GOOD.replace("name = \"t1\"", "name = \"t1\"\n[addresses]\nbase = 250"));
        assert!(e.contains("address plan") && e.contains("base"), "{e}");
        let mut many =
            String::from("name = \"big\"\n[[rails]]\nname = \"eth1\"\nrate = \"1gbit\"\n");
        for i in 0..254 {
            many.push_str(&format!("[[hosts]]\nname = \"h{i}\"\n"));
        }
        let e = err(&many);
        assert!(e.contains("254 hosts") && e.contains("253"), "{e}");
    }

    #[test]
    fn guest_configurations() {
        let byp = r#"
name = "gb"
configuration = "guest-byp.indep"
[[rails]]
name = "eth1"
rate = "1gbit"
pci = "0000:03:04.0"
[[hosts]]
name = "n0"
[[hosts.guests]]
name = "g0"
cpus = [1]
nics = ["eth1"]
"#;
        let s = Spec::parse(byp).unwrap();
        assert_eq!(s.rail_owner(0, 0), Node::Guest(0, 0));
        assert!(s.host_rails(0).is_empty());
        assert_eq!(s.mpi_nodes(), vec![(Node::Guest(0, 0), 1)]);
        let e = err(&byp.replace("guest-byp.indep", "guest.bond"));
        assert!(e.contains("guest.bond"), "{e}");
        let e = err(&byp.replace("guest-byp.indep", "driver.bond"));
        assert!(e.contains("has guests"), "{e}");
        let e = err(&byp.replace("0000:03:04.0", "slot 4"));
        assert!(e.contains("PCI"), "{e}");
    }
}

#[cfg(test)]
mod shipped_specs {
    use super::*;

    #[test]
    fn every_shipped_spec_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("specs");
        let mut names = BTreeSet::new();
        let mut bases = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let s = Spec::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(names.insert(s.name.clone()), "name {} reused", s.name);
            assert!(bases.insert(s.base), "base {} reused", s.base);
        }
        assert!(names.len() >= 7);
    }
}
