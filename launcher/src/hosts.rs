//! Host lists (`-H`, `--hostfile`) and placement of ranks on them.
//!
//! Placement fills hosts by slots in the order given: with `-H a:2,b:2`, ranks 0-1 go to `a`
//! and 2-3 to `b`. More ranks than slots is allowed (oversubscription): rank `i` takes slot
//! `i mod total_slots`.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// One host and its slot count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// The name as given.
    pub name: String,
    /// Ranks it takes per round of placement; `>= 1`.
    pub slots: u32,
}

/// Where one rank runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Host name as given.
    pub host: String,
    /// Whether the host is this machine.
    pub is_local: bool,
    /// Index among the ranks on the same host.
    pub local_rank: u32,
    /// Number of ranks on the same host.
    pub local_size: u32,
}

/// Parses `host[:slots],host[:slots],...`.
///
/// # Errors
///
/// An empty host name or a slot count that is not a positive number.
pub fn parse_host_list(list: &str) -> Result<Vec<HostSpec>> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, slots) = match item.rsplit_once(':') {
            // A bracketed or bare IPv6 address keeps its colons.
            Some((n, s)) if !n.contains(':') || n.ends_with(']') => (n, Some(s)),
            _ => (item, None),
        };
        out.push(host(name, slots).with_context(|| format!("in host list entry {item:?}"))?);
    }
    if out.is_empty() {
        bail!("empty host list {list:?}");
    }
    Ok(out)
}

/// Parses a hostfile: `host`, `host slots=N`, `host:N`; `#` starts a comment; other `key=value`
/// words (such as `max_slots=`) are ignored.
///
/// # Errors
///
/// A line that does not fit those forms, naming the file and line.
pub fn parse_hostfile(text: &str, path: &Path) -> Result<Vec<HostSpec>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let ctx = || format!("{}:{}: {raw:?}", path.display(), i + 1);
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        let mut spec = parse_host_list(first).with_context(ctx)?;
        if spec.len() != 1 {
            bail!("{}: one host per line", ctx());
        }
        let mut spec = spec.remove(0);
        for w in words {
            match w.split_once('=') {
                Some(("slots", n)) => spec.slots = slots(n).with_context(ctx)?,
                Some(_) => {}
                None => bail!("{}: unexpected word {w:?} (expected slots=N)", ctx()),
            }
        }
        out.push(spec);
    }
    if out.is_empty() {
        bail!("hostfile {} lists no hosts", path.display());
    }
    Ok(out)
}

fn host(name: &str, slots_text: Option<&str>) -> Result<HostSpec> {
    if name.is_empty() {
        bail!("empty host name");
    }
    let slots = match slots_text {
        Some(s) => slots(s)?,
        None => 1,
    };
    Ok(HostSpec {
        name: name.to_owned(),
        slots,
    })
}

fn slots(s: &str) -> Result<u32> {
    match s.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => bail!("slot count {s:?} is not a positive number"),
    }
}

/// Merges repeated names (`a,a` = `a:2`), keeping first-seen order.
pub fn merge(hosts: Vec<HostSpec>) -> Vec<HostSpec> {
    let mut out: Vec<HostSpec> = Vec::new();
    for h in hosts {
        match out.iter_mut().find(|o| o.name == h.name) {
            Some(o) => o.slots = o.slots.saturating_add(h.slots),
            None => out.push(h),
        }
    }
    out
}

/// Whether `name` is this machine: `localhost`, a loopback address, or this host's name
/// (`my_hostname`, compared also without its domain).
pub fn is_local(name: &str, my_hostname: &str) -> bool {
    let short = |s: &str| s.split('.').next().unwrap_or(s).to_ascii_lowercase();
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        || name == "[::1]"
        || (!my_hostname.is_empty()
            && (name.eq_ignore_ascii_case(my_hostname)
                || (!name.contains('.') || !my_hostname.contains('.'))
                    && short(name) == short(my_hostname)))
}

/// Places `n` ranks on `hosts` by slots.
pub fn place(hosts: &[HostSpec], n: u32, my_hostname: &str) -> Vec<Placement> {
    let slots: Vec<usize> = hosts
        .iter()
        .enumerate()
        .flat_map(|(i, h)| std::iter::repeat_n(i, h.slots as usize))
        .collect();
    if slots.is_empty() {
        return Vec::new();
    }
    let host_of: Vec<usize> = (0..n as usize).map(|r| slots[r % slots.len()]).collect();
    let mut count = vec![0u32; hosts.len()];
    for &h in &host_of {
        count[h] += 1;
    }
    let mut next = vec![0u32; hosts.len()];
    host_of
        .iter()
        .map(|&h| {
            let local_rank = next[h];
            next[h] += 1;
            Placement {
                host: hosts[h].name.clone(),
                is_local: is_local(&hosts[h].name, my_hostname),
                local_rank,
                local_size: count[h],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lists() {
        let h = parse_host_list("a:2, b,c:3").unwrap();
        assert_eq!(
            h,
            vec![
                HostSpec {
                    name: "a".into(),
                    slots: 2
                },
                HostSpec {
                    name: "b".into(),
                    slots: 1
                },
                HostSpec {
                    name: "c".into(),
                    slots: 3
                }
            ]
        );
        assert!(parse_host_list("a:0").is_err());
        assert!(parse_host_list("a:x").is_err());
        assert!(parse_host_list(":2").is_err());
        assert!(parse_host_list(",").is_err());
        assert_eq!(parse_host_list("::1").unwrap()[0].name, "::1");
        assert_eq!(merge(parse_host_list("a,b,a:2").unwrap())[0].slots, 3);
    }

    #[test]
    fn hostfiles() {
        let text = "# cluster\nnode1 slots=2\nnode2:3  # comment\n\nnode3 max_slots=8\n";
        let h = parse_hostfile(text, Path::new("hf")).unwrap();
        assert_eq!(
            h.iter()
                .map(|h| (h.name.as_str(), h.slots))
                .collect::<Vec<_>>(),
            vec![("node1", 2), ("node2", 3), ("node3", 1)]
        );
        let e = parse_hostfile("node1 slots=zero\n", Path::new("hf")).unwrap_err();
        assert!(format!("{e:#}").contains("hf:1"), "{e:#}");
        assert!(parse_hostfile("# nothing\n", Path::new("hf")).is_err());
        assert!(parse_hostfile("a b\n", Path::new("hf")).is_err());
    }

    #[test]
    fn placement_fills_by_slots_and_oversubscribes() {
        let hosts = parse_host_list("a:2,b:1").unwrap();
        let p = place(&hosts, 5, "me");
        let got: Vec<_> = p
            .iter()
            .map(|p| (p.host.as_str(), p.local_rank, p.local_size))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", 0, 4),
                ("a", 1, 4),
                ("b", 0, 1),
                ("a", 2, 4),
                ("a", 3, 4)
            ]
        );
        assert!(p.iter().all(|p| !p.is_local));
    }

    #[test]
    fn locality() {
        assert!(is_local("localhost", "node7"));
        assert!(is_local("127.0.0.1", "node7"));
        assert!(is_local("::1", "node7"));
        assert!(is_local("node7", "node7.example.org"));
        assert!(is_local("NODE7.example.org", "node7.example.org"));
        assert!(!is_local("node8", "node7"));
        assert!(!is_local("node7.other.org", "node7.example.org"));
        assert!(!is_local("fakehost", ""));
    }
}
