//! The testbed: a [`Spec`] built from network namespaces, veth pairs, bridges and `tc tbf` on
//! one machine.
//!
//! # Layout
//!
//! - Every host is a namespace `<name>-<host>`, every guest `<name>-<host>-<guest>`.
//! - Rails: one namespace `<name>-sw` (the switch) holds one bridge per rail (`r0`, `r1`,
//!   ...). Each host (or the passthrough guest owning that NIC) gets a veth pair whose inner
//!   end carries the rail's name (`eth1`) and whose outer end `h<H>r<R>` is a port of the
//!   rail's bridge. One switch namespace rather than a bridge per rail in the root namespace
//!   keeps the rails off the root namespace (nothing there can route into them by accident),
//!   keeps switch-side names short and private, so testbeds never collide, and makes the
//!   switch one namespace to delete.
//! - Both ends of every rail veth get `tc qdisc ... root tbf` at the host's rate for that rail
//!   ([`tbf_params`]), so each direction is limited, like a NIC and its switch port.
//! - Management: a bridge `<name>-mg` in the root namespace with `.254`, and a veth `mgmt` in
//!   every host and guest (root side `<name>-m<K>`), not rate-limited.
//! - Bond: kernel bonding (`bond0`, balance-xor, layer3+4 hash, rails enslaved) when
//!   `bond = "auto"` and the kernel can create a bond; otherwise the stand-in: the bond
//!   address as a `/32` on `lo` of every host, reached from the other hosts by one ECMP route
//!   with one next hop per shared rail, and `net.ipv4.fib_multipath_hash_policy=1`
//!   (layer-4 hash) in every host namespace.
//! - guest.bond: a bridge `xenbr0` in the host namespace with the guests' gateway; each
//!   bridged guest has a veth `eth0` (host side `vif<G>`) with a `/32` address, routed by
//!   its host over the bond (kernel or ECMP). guest-byp: the rail veth lives in the guest.
//!
//! # Implementation notes
//!
//! Every name outside the testbed's own namespaces starts with `<name>-`, and the name has no
//! `-`, so [`Testbed::down_by_name`] can find everything, also after a crash. `up` checks
//! that nothing of the name exists, and on any failure removes what it built.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::process::{Command, Output};

use crate::error::TestbedError;
use crate::spec::{BondMode, Node, Rate, Spec};
use crate::sys;

/// Which bond was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BondFlavour {
    /// ECMP multipath routes with layer-4 hashing; the stand-in where the kernel has no
    /// bonding driver.
    Ecmp,
    /// The kernel's bonding driver.
    Kernel,
    /// No bond (`bond = "none"`).
    None,
}

impl fmt::Display for BondFlavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ecmp => "ECMP multipath (layer-4 hash) stand-in",
            Self::Kernel => "kernel bonding",
            Self::None => "none",
        })
    }
}

/// `tc tbf` parameters for one rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TbfParams {
    /// The rate.
    pub rate: Rate,
    /// Bucket size in bytes.
    pub burst: u64,
    /// Most time a packet may wait in the queue, in milliseconds.
    pub latency_ms: u64,
}

/// The tbf parameters used for `rate`: a bucket of 5 ms at the rate, at least 64 KiB (one
/// full GSO segment, so veth's large segments pass without being split), and a queue of 20
/// ms.
///
/// tbf counts every packet with its Ethernet, IP and TCP headers, so at MTU 1500 a TCP stream
/// can carry at most 1448/1514 = 95.6% of the rate as payload. Measured on a 2-core VM, one
/// TCP stream per rail for 2-3 s (iperf3 and `braid-testbed tcp-source`, receiver side):
/// 1gbit → 955-959 Mbit/s, 720mbit → 689-691, 100mbit → 95.7-96.2: all within 0.5% of that
/// payload maximum. Four 1gbit rails at once: 4 x 955 = 3.82 Gbit/s; the ECMP bond with 8
/// streams: 3.82 Gbit/s. Smaller buckets (16-128 KiB) gave 935-943 Mbit/s at 1gbit.
pub fn tbf_params(rate: Rate) -> TbfParams {
    let five_ms = rate.bytes_per_sec() / 200;
    TbfParams {
        rate,
        burst: five_ms.max(64 * 1024),
        latency_ms: 20,
    }
}

/// A built testbed. Dropping it tears it down, unless [`Testbed::persist`] was called.
#[derive(Debug)]
pub struct Testbed {
    /// The spec it was built from.
    spec: Spec,
    /// Which bond was built.
    bond: BondFlavour,
    /// Whether drop leaves it standing.
    persistent: bool,
}

/// What [`Testbed::down_by_name`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DownReport {
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Root-namespace links deleted.
    pub links: Vec<String>,
    /// Processes killed because they still ran in a deleted namespace.
    pub killed: Vec<u32>,
}

impl DownReport {
    /// Whether nothing was there.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.links.is_empty()
    }
}

/// Whether this process can build testbeds: root, `ip` and `tc` present, namespaces
/// creatable.
///
/// # Errors
///
/// Why not, as a sentence for a `SKIPPED: ...` line.
pub fn root_available() -> Result<(), String> {
    if !sys::is_root() {
        return Err("not running as root (network namespaces need CAP_SYS_ADMIN)".to_owned());
    }
    sys::run(&["tc", "-V"]).map_err(|e| format!("tc (iproute2) is not usable: {e}"))?;
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!("braidprobe{}x{n}", std::process::id());
    sys::run(&["ip", "netns", "add", &probe])
        .map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let _ = sys::run(&["ip", "netns", "del", &probe]);
    Ok(())
}

impl Testbed {
    /// Builds `spec`. Nothing of that name may exist yet (see [`Testbed::down_by_name`]).
    ///
    /// # Errors
    ///
    /// [`TestbedError::AlreadyUp`], [`TestbedError::SubnetInUse`], or the first command that
    /// failed; in every case nothing of the testbed is left.
    pub fn up(spec: &Spec) -> Result<Self, TestbedError> {
        precheck(spec)?;
        let mut tb = Self {
            spec: spec.clone(),
            bond: BondFlavour::None,
            persistent: false,
        };
        // On error, `tb` is dropped here and tears down what was built.
        tb.build()?;
        Ok(tb)
    }

    /// Attaches to a testbed that is already up (for `exec`, `status`, `mpirun --testbed`).
    /// Dropping the handle leaves the testbed standing.
    ///
    /// # Errors
    ///
    /// [`TestbedError::UnknownNode`] naming the first namespace that is missing.
    pub fn attach(spec: &Spec) -> Result<Self, TestbedError> {
        let have: BTreeSet<String> = sys::netns_list()?.into_iter().collect();
        for node in spec.nodes() {
            let ns = spec.netns(node);
            if !have.contains(&ns) {
                return Err(TestbedError::Command {
                    command: format!("attach to testbed {}", spec.name),
                    status: 1,
                    stderr: format!(
                        "namespace {ns} does not exist: the testbed is not up (braid-testbed up)"
                    ),
                });
            }
        }
        let bond = detect_bond(spec);
        Ok(Self {
            spec: spec.clone(),
            bond,
            persistent: true,
        })
    }

    /// Keeps the testbed when this handle is dropped (the CLI's `up`).
    pub fn persist(mut self) {
        self.persistent = true;
    }

    /// Tears the testbed down now.
    ///
    /// # Errors
    ///
    /// As [`Testbed::down_by_name`].
    pub fn down(mut self) -> Result<DownReport, TestbedError> {
        self.persistent = true;
        Self::down_by_name(&self.spec.name)
    }

    /// Removes every namespace and root link of testbed `name`, including leftovers of a
    /// crashed run, killing processes still inside its namespaces. Idempotent.
    ///
    /// # Errors
    ///
    /// A name that is not a testbed name (so nothing else can be matched), or a failed `ip`.
    pub fn down_by_name(name: &str) -> Result<DownReport, TestbedError> {
        let valid = name.len() <= crate::spec::MAX_NAME_LEN
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !valid {
            return Err(crate::error::SpecError::BadName {
                kind: "testbed name",
                name: name.to_owned(),
                why: "must be a lower-case letter, then up to 7 lower-case letters and digits"
                    .to_owned(),
            }
            .into());
        }
        let prefix = format!("{name}-");
        let mut report = DownReport::default();
        // Root links first: deleting a veth deletes its peer at once, whereas the links of a
        // deleted namespace go away asynchronously.
        for link in sys::links(None)? {
            if link.starts_with(&prefix) && sys::run(&["ip", "link", "del", &link]).is_ok() {
                report.links.push(link);
            }
        }
        for ns in sys::netns_list()? {
            if !ns.starts_with(&prefix) {
                continue;
            }
            if let Ok(pids) = sys::run(&["ip", "netns", "pids", &ns]) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                {
                    if sys::run(&["kill", "-KILL", &pid.to_string()]).is_ok() {
                        report.killed.push(pid);
                    }
                }
            }
            sys::run(&["ip", "netns", "del", &ns])?;
            report.namespaces.push(ns);
        }
        Ok(report)
    }

    /// The spec.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Which bond was built.
    pub fn bond_flavour(&self) -> BondFlavour {
        self.bond
    }

    fn node(&self, name: &str) -> Result<Node, TestbedError> {
        self.spec
            .find_node(name)
            .ok_or_else(|| TestbedError::UnknownNode {
                testbed: self.spec.name.clone(),
                name: name.to_owned(),
                known: self
                    .spec
                    .nodes()
                    .into_iter()
                    .map(|n| self.spec.node_name(n))
                    .collect(),
            })
    }

    fn rail(&self, node: Node, rail: &str) -> Result<usize, TestbedError> {
        self.spec
            .rail_index(rail)
            .filter(|r| self.spec.node_rails(node).contains(r))
            .ok_or_else(|| TestbedError::UnknownRail {
                testbed: self.spec.name.clone(),
                node: self.spec.node_name(node),
                rail: rail.to_owned(),
            })
    }

    fn host_of(node: Node) -> usize {
        match node {
            Node::Host(h) | Node::Guest(h, _) => h,
        }
    }

    /// Namespace of host (or `host.guest`) `name`.
    ///
    /// # Errors
    ///
    /// [`TestbedError::UnknownNode`].
    pub fn netns(&self, name: &str) -> Result<String, TestbedError> {
        Ok(self.spec.netns(self.node(name)?))
    }

    /// Address of `rail` on host (or passthrough guest) `name`.
    ///
    /// # Errors
    ///
    /// [`TestbedError::UnknownNode`] or [`TestbedError::UnknownRail`] (the node does not
    /// hold that rail).
    pub fn rail_addr(&self, name: &str, rail: &str) -> Result<Ipv4Addr, TestbedError> {
        let node = self.node(name)?;
        let r = self.rail(node, rail)?;
        Ok(self.spec.rail_addr(Self::host_of(node), r))
    }

    /// Management address of host (or guest) `name`.
    ///
    /// # Errors
    ///
    /// [`TestbedError::UnknownNode`].
    pub fn mgmt_addr(&self, name: &str) -> Result<Ipv4Addr, TestbedError> {
        Ok(self.spec.mgmt_addr(self.node(name)?))
    }

    /// Bond address of host `name` (kernel bond or ECMP stand-in; `None` without a bond or
    /// for a guest).
    ///
    /// # Errors
    ///
    /// [`TestbedError::UnknownNode`].
    pub fn bond_addr(&self, name: &str) -> Result<Option<Ipv4Addr>, TestbedError> {
        Ok(match self.node(name)? {
            Node::Host(h) if self.bond != BondFlavour::None => Some(self.spec.bond_addr(h)),
            _ => None,
        })
    }

    /// A command that runs `program args` inside the namespace of `name`
    /// (`ip netns exec NS program args...`); the caller runs it and bounds its time.
    ///
    /// # Errors
    ///
    /// [`TestbedError::UnknownNode`].
    pub fn command(&self, name: &str, program: &str) -> Result<Command, TestbedError> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns(name)?, program]);
        Ok(c)
    }

    /// Runs `argv` inside `name` to completion and returns its output. For commands that end
    /// by themselves; use [`Testbed::command`] to bound the time.
    ///
    /// # Errors
    ///
    /// [`TestbedError::UnknownNode`], or [`TestbedError::Spawn`] if `ip` cannot start.
    pub fn exec(&self, name: &str, argv: &[&str]) -> Result<Output, TestbedError> {
        let (prog, args) = argv.split_first().ok_or_else(|| TestbedError::Spawn {
            command: String::new(),
            source: std::io::Error::other("empty command"),
        })?;
        let mut c = self.command(name, prog)?;
        c.args(args);
        c.output().map_err(|source| TestbedError::Spawn {
            command: argv.join(" "),
            source,
        })
    }

    /// Sets `rail` of host (or passthrough guest) `name` up or down, as a NIC or cable
    /// failure would.
    ///
    /// # Errors
    ///
    /// Unknown node or rail, or a failed `ip link set`.
    pub fn set_link(&self, name: &str, rail: &str, up: bool) -> Result<(), TestbedError> {
        let node = self.node(name)?;
        self.rail(node, rail)?;
        let ns = self.spec.netns(node);
        sys::run(&[
            "ip",
            "-n",
            &ns,
            "link",
            "set",
            rail,
            if up { "up" } else { "down" },
        ])?;
        Ok(())
    }

    fn build(&mut self) -> Result<(), TestbedError> {
        let s = self.spec.clone();
        let sw = s.switch_netns();
        let mut all_ns = vec![sw.clone()];
        all_ns.extend(s.nodes().into_iter().map(|n| s.netns(n)));
        for ns in &all_ns {
            sys::run(&["ip", "netns", "add", ns])?;
            ip(ns, &["link", "set", "lo", "up"])?;
        }
        self.bond = match s.bond {
            BondMode::None => BondFlavour::None,
            BondMode::Auto if kernel_bonding(&s.netns(Node::Host(0))) => BondFlavour::Kernel,
            BondMode::Auto => BondFlavour::Ecmp,
        };
        let mtu = s.mtu.to_string();
        for node in s.nodes() {
            let ns = s.netns(node);
            let mut kv = vec![
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.fib_multipath_hash_policy=1",
            ];
            if matches!(node, Node::Host(_)) {
                kv.push("net.ipv4.ip_forward=1");
            }
            let mut words = vec!["ip", "netns", "exec", &ns, "sysctl", "-qw"];
            words.extend(kv);
            sys::run(&words)?;
        }

        // Rails.
        for (r, rail) in s.rails.iter().enumerate() {
            let br = format!("r{r}");
            ip(&sw, &["link", "add", &br, "type", "bridge"])?;
            ip(&sw, &["link", "set", &br, "mtu", &mtu, "up"])?;
            for (h, host) in s.hosts.iter().enumerate() {
                let owner = s.rail_owner(h, r);
                let ns = s.netns(owner);
                let port = format!("h{h}r{r}");
                ip(
                    &sw,
                    &[
                        "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name",
                        &rail.name, "mtu", &mtu, "netns", &ns,
                    ],
                )?;
                ip(&sw, &["link", "set", &port, "master", &br, "up"])?;
                let tbf = tbf_params(host.rates[r]);
                add_tbf(&sw, &port, tbf)?;
                add_tbf(&ns, &rail.name, tbf)?;
                let enslave = self.bond == BondFlavour::Kernel && matches!(owner, Node::Host(_));
                if !enslave {
                    let addr = format!("{}/24", s.rail_addr(h, r));
                    ip(&ns, &["addr", "add", &addr, "dev", &rail.name])?;
                    ip(&ns, &["link", "set", &rail.name, "up"])?;
                }
            }
        }

        // Management network.
        let mg = s.mgmt_bridge();
        sys::run(&["ip", "link", "add", &mg, "type", "bridge"])?;
        let root = format!("{}/24", s.mgmt_root_addr());
        sys::run(&["ip", "addr", "add", &root, "dev", &mg])?;
        sys::run(&["ip", "link", "set", &mg, "mtu", &mtu, "up"])?;
        for (k, node) in s.nodes().into_iter().enumerate() {
            let ns = s.netns(node);
            let port = format!("{}-m{k}", s.name);
            sys::run(&[
                "ip", "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", "mgmt",
                "mtu", &mtu, "netns", &ns,
            ])?;
            sys::run(&["ip", "link", "set", &port, "master", &mg, "up"])?;
            let addr = format!("{}/24", s.mgmt_addr(node));
            ip(&ns, &["addr", "add", &addr, "dev", "mgmt"])?;
            ip(&ns, &["link", "set", "mgmt", "up"])?;
        }

        // Bond.
        for (h, _) in s.hosts.iter().enumerate() {
            let ns = s.netns(Node::Host(h));
            match self.bond {
                BondFlavour::None => {}
                BondFlavour::Ecmp => {
                    let addr = format!("{}/32", s.bond_addr(h));
                    ip(&ns, &["addr", "add", &addr, "dev", "lo"])?;
                }
                BondFlavour::Kernel => {
                    ip(
                        &ns,
                        &[
                            "link",
                            "add",
                            "bond0",
                            "type",
                            "bond",
                            "mode",
                            "balance-xor",
                            "xmit_hash_policy",
                            "layer3+4",
                            "miimon",
                            "100",
                        ],
                    )?;
                    for r in s.host_rails(h) {
                        let name = &s.rails[r].name;
                        ip(&ns, &["link", "set", name, "down"])?;
                        ip(&ns, &["link", "set", name, "master", "bond0"])?;
                    }
                    let addr = format!("{}/24", s.bond_addr(h));
                    ip(&ns, &["addr", "add", &addr, "dev", "bond0"])?;
                    ip(&ns, &["link", "set", "bond0", "mtu", &mtu, "up"])?;
                }
            }
        }
        if self.bond == BondFlavour::Ecmp {
            for h in 0..s.hosts.len() {
                for j in (0..s.hosts.len()).filter(|&j| j != h) {
                    let dst = format!("{}/32", s.bond_addr(j));
                    let src = s.bond_addr(h).to_string();
                    self.route_to_host(h, j, &dst, Some(&src))?;
                }
            }
        }

        // Bridged guests (guest.bond).
        for (h, host) in s.hosts.iter().enumerate() {
            let bridged: Vec<usize> = (0..host.guests.len())
                .filter(|&g| !host.guests[g].is_bypass())
                .collect();
            if bridged.is_empty() {
                continue;
            }
            let ns = s.netns(Node::Host(h));
            let gw = s.guest_gateway(h);
            ip(&ns, &["link", "add", "xenbr0", "type", "bridge"])?;
            ip(&ns, &["addr", "add", &format!("{gw}/32"), "dev", "xenbr0"])?;
            ip(&ns, &["link", "set", "xenbr0", "mtu", &mtu, "up"])?;
            for g in bridged {
                let gns = s.netns(Node::Guest(h, g));
                let vif = format!("vif{g}");
                ip(
                    &ns,
                    &[
                        "link", "add", &vif, "mtu", &mtu, "type", "veth", "peer", "name", "eth0",
                        "mtu", &mtu, "netns", &gns,
                    ],
                )?;
                ip(&ns, &["link", "set", &vif, "master", "xenbr0", "up"])?;
                let ga = s.guest_addr(h, g);
                ip(&gns, &["addr", "add", &format!("{ga}/32"), "dev", "eth0"])?;
                ip(&gns, &["link", "set", "eth0", "up"])?;
                ip(&gns, &["route", "add", &format!("{gw}/32"), "dev", "eth0"])?;
                ip(
                    &gns,
                    &[
                        "route",
                        "add",
                        "10.77.0.0/16",
                        "via",
                        &gw.to_string(),
                        "dev",
                        "eth0",
                        "src",
                        &ga.to_string(),
                    ],
                )?;
                let gw_s = gw.to_string();
                ip(
                    &ns,
                    &[
                        "route",
                        "add",
                        &format!("{ga}/32"),
                        "dev",
                        "xenbr0",
                        "src",
                        &gw_s,
                    ],
                )?;
                for j in (0..s.hosts.len()).filter(|&j| j != h) {
                    self.route_to_host(j, h, &format!("{ga}/32"), None)?;
                }
            }
        }
        Ok(())
    }

    /// Adds, on host `from`, a route to `dst` through host `to`: over `bond0` (kernel bond),
    /// else one ECMP next hop per rail both hosts hold. Skipped if they share no rail.
    fn route_to_host(
        &self,
        from: usize,
        to: usize,
        dst: &str,
        src: Option<&str>,
    ) -> Result<(), TestbedError> {
        let s = &self.spec;
        let ns = s.netns(Node::Host(from));
        let mut words: Vec<String> = vec!["route".into(), "add".into(), dst.into()];
        if let Some(src) = src {
            words.extend(["src".into(), src.into()]);
        }
        if self.bond == BondFlavour::Kernel {
            words.extend([
                "via".into(),
                s.bond_addr(to).to_string(),
                "dev".into(),
                "bond0".into(),
            ]);
        } else {
            let theirs = s.host_rails(to);
            let shared: Vec<usize> = s
                .host_rails(from)
                .into_iter()
                .filter(|r| theirs.contains(r))
                .collect();
            if shared.is_empty() {
                return Ok(());
            }
            for r in shared {
                words.extend([
                    "nexthop".into(),
                    "via".into(),
                    s.rail_addr(to, r).to_string(),
                    "dev".into(),
                    s.rails[r].name.clone(),
                    "weight".into(),
                    "1".into(),
                ]);
            }
        }
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        ip(&ns, &w)?;
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if !self.persistent {
            let _ = Self::down_by_name(&self.spec.name);
        }
    }
}

fn ip(ns: &str, args: &[&str]) -> Result<String, TestbedError> {
    let mut w = vec!["ip", "-n", ns];
    w.extend_from_slice(args);
    sys::run(&w)
}

fn add_tbf(ns: &str, dev: &str, p: TbfParams) -> Result<(), TestbedError> {
    let rate = format!("{}bit", p.rate.bits_per_sec());
    let burst = p.burst.to_string();
    let latency = format!("{}ms", p.latency_ms);
    ip(ns, &["link", "show", dev])?;
    let words = [
        "tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst,
        "latency", &latency,
    ];
    sys::run(&words)?;
    Ok(())
}

/// Whether the kernel can create a bond device (tried, then removed, in `ns`).
fn kernel_bonding(ns: &str) -> bool {
    let ok = ip(ns, &["link", "add", "bondprobe", "type", "bond"]).is_ok();
    if ok {
        let _ = ip(ns, &["link", "del", "bondprobe"]);
    }
    ok
}

/// Which bond a standing testbed has, from what exists in its first host.
fn detect_bond(spec: &Spec) -> BondFlavour {
    let ns = spec.netns(Node::Host(0));
    if sys::links(Some(&ns)).is_ok_and(|l| l.iter().any(|n| n == "bond0")) {
        return BondFlavour::Kernel;
    }
    let lo = ip(&ns, &["-4", "-o", "addr", "show", "dev", "lo"]).unwrap_or_default();
    if lo.contains(&format!("{}/32", spec.bond_addr(0))) {
        BondFlavour::Ecmp
    } else {
        BondFlavour::None
    }
}

fn precheck(spec: &Spec) -> Result<(), TestbedError> {
    let prefix = format!("{}-", spec.name);
    if let Some(ns) = sys::netns_list()?
        .into_iter()
        .find(|n| n.starts_with(&prefix))
    {
        return Err(TestbedError::AlreadyUp {
            name: spec.name.clone(),
            what: format!("namespace {ns}"),
        });
    }
    if let Some(l) = sys::links(None)?
        .into_iter()
        .find(|n| n.starts_with(&prefix))
    {
        return Err(TestbedError::AlreadyUp {
            name: spec.name.clone(),
            what: format!("link {l}"),
        });
    }
    let root = spec.mgmt_root_addr().octets();
    let subnet = format!("10.77.{}.", root[2]);
    let addrs = sys::run(&["ip", "-4", "-o", "addr", "show"])?;
    if let Some(line) = addrs
        .lines()
        .find(|l| l.contains(&format!("inet {subnet}")))
    {
        return Err(TestbedError::SubnetInUse {
            subnet: format!("{subnet}0/24"),
            by: line.split_whitespace().nth(1).unwrap_or("?").to_owned(),
        });
    }
    Ok(())
}

/// What exists of a testbed, for `braid-testbed status`.
///
/// # Errors
///
/// A failed `ip` or `tc` listing.
pub fn status(spec: &Spec) -> Result<String, TestbedError> {
    use std::fmt::Write as _;
    let prefix = format!("{}-", spec.name);
    let namespaces: Vec<String> = sys::netns_list()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "testbed {} ({}): {}",
        spec.name,
        spec.configuration,
        if namespaces.is_empty() { "down" } else { "up" }
    );
    if namespaces.is_empty() {
        return Ok(out);
    }
    let _ = writeln!(out, "bond: {}", detect_bond(spec));
    let _ = writeln!(
        out,
        "management: bridge {} with {}/24 in the root namespace",
        spec.mgmt_bridge(),
        spec.mgmt_root_addr()
    );
    for node in spec.nodes() {
        let ns = spec.netns(node);
        if !namespaces.contains(&ns) {
            let _ = writeln!(out, "{} ({ns}): MISSING", spec.node_name(node));
            continue;
        }
        let _ = writeln!(out, "{} ({ns}):", spec.node_name(node));
        let addrs = ip(&ns, &["-4", "-o", "addr", "show"])?;
        let qdiscs = sys::run(&["tc", "-n", &ns, "qdisc", "show"])?;
        let links = ip(&ns, &["-o", "link", "show"])?;
        for line in addrs.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let (Some(dev), Some(addr)) = (w.get(1), w.get(3)) else {
                continue;
            };
            let state = links
                .lines()
                .find(|l| {
                    l.split(": ")
                        .nth(1)
                        .is_some_and(|n| n.split('@').next() == Some(dev))
                })
                .map_or("", |l| {
                    if l.contains(",UP") || l.contains("<UP") {
                        "up"
                    } else {
                        "down"
                    }
                });
            let rate = qdiscs
                .lines()
                .find(|l| l.contains(&format!("dev {dev} ")) && l.contains("tbf"))
                .and_then(|l| l.split("rate ").nth(1))
                .and_then(|r| r.split_whitespace().next())
                .map_or(String::new(), |r| format!(" tbf rate {r}"));
            let _ = writeln!(out, "  {dev:<8} {addr:<18} {state}{rate}");
        }
    }
    let sw = spec.switch_netns();
    let _ = writeln!(
        out,
        "switch {sw}: {}",
        if namespaces.contains(&sw) {
            format!("{} rail bridges", spec.rails.len())
        } else {
            "MISSING".to_owned()
        }
    );
    Ok(out)
}
