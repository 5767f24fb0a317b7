//! Generators for a real Xen cluster: one `xl` domain config per guest, and per host a shell
//! script that makes the passthrough NICs assignable (`xl pci-assignable-add`) and steers each
//! NIC's interrupts to the CPUs of the guest that owns it (`/proc/irq/N/smp_affinity`), as in
//! Strazdins et al. 2006, section 4.1.
//!
//! IRQ numbers are not in the spec (they depend on the machine), so the script reads them from
//! variables `IRQ_<HOST>_<RAIL>` and stops with a message if one is unset.

use std::fmt::Write as _;

use crate::spec::{Guest, Spec};

/// One guest's `xl` config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    /// Suggested file name (`<host>-<guest>.cfg`).
    pub file: String,
    /// The config text.
    pub text: String,
}

/// The `xl` configs of every guest, in spec order.
pub fn domain_configs(spec: &Spec) -> Vec<DomainConfig> {
    let mut out = Vec::new();
    for host in &spec.hosts {
        for g in &host.guests {
            let name = format!("{}-{}", host.name, g.name);
            let mut t = String::new();
            let _ = writeln!(
                t,
                "# {} guest {} of host {} (testbed {})",
                spec.configuration, g.name, host.name, spec.name
            );
            let _ = writeln!(t, "name = \"{name}\"");
            let _ = writeln!(t, "vcpus = {}", g.vcpus);
            if !g.cpus.is_empty() {
                let _ = writeln!(t, "cpus = \"{}\"", cpu_list(&g.cpus));
            }
            let _ = writeln!(t, "memory = {}", g.memory);
            if g.is_bypass() {
                let devs: Vec<String> = g
                    .nics
                    .iter()
                    .map(|&r| {
                        format!(
                            "'{}'",
                            pci_or_placeholder(spec, host_index(spec, &host.name), r)
                        )
                    })
                    .collect();
                let _ = writeln!(t, "pci = [ {} ]", devs.join(", "));
                let _ = writeln!(t, "# VMM bypass: no vif, the guest drives its NICs itself");
                let _ = writeln!(t, "vif = [ ]");
            } else {
                let _ = writeln!(t, "vif = [ 'bridge=xenbr0' ]");
            }
            out.push(DomainConfig {
                file: format!("{name}.cfg"),
                text: t,
            });
        }
    }
    out
}

/// Per-host setup script: PCI assignability and IRQ affinity for passthrough NICs.
pub fn setup_script(spec: &Spec) -> String {
    let mut t = String::from(
        "#!/bin/sh\n# Run in domain0 of each host before creating the guests.\nset -eu\n",
    );
    for (h, host) in spec.hosts.iter().enumerate() {
        let _ = writeln!(t, "\nif [ \"$(hostname -s)\" = \"{}\" ]; then", host.name);
        let mut any = false;
        for g in &host.guests {
            for &r in &g.nics {
                any = true;
                let rail = &spec.rails[r].name;
                let bdf = pci_or_placeholder(spec, h, r);
                let var = format!(
                    "IRQ_{}_{}",
                    host.name.to_ascii_uppercase(),
                    rail.to_ascii_uppercase().replace('.', "_")
                );
                let _ = writeln!(t, "  # {rail} ({bdf}) -> guest {}", g.name);
                let _ = writeln!(t, "  xl pci-assignable-add {bdf}");
                match affinity_mask(g) {
                    Some(mask) => {
                        let _ = writeln!(
                            t,
                            "  : \"${{{var}:?set {var} to the IRQ number of {bdf} ({rail}), see /proc/interrupts}}\""
                        );
                        let _ = writeln!(t, "  echo {mask} > /proc/irq/${var}/smp_affinity");
                    }
                    None => {
                        let _ = writeln!(
                            t,
                            "  # guest {} has no cpus pinning: IRQ affinity of {rail} left as is",
                            g.name
                        );
                    }
                }
            }
        }
        if !any {
            let _ = writeln!(t, "  : # no passthrough NICs on {}", host.name);
        }
        t.push_str("fi\n");
    }
    t
}

fn host_index(spec: &Spec, name: &str) -> usize {
    spec.hosts.iter().position(|h| h.name == name).unwrap_or(0)
}

fn pci_or_placeholder(spec: &Spec, host: usize, rail: usize) -> String {
    spec.hosts[host].pci[rail].clone().unwrap_or_else(|| {
        format!(
            "PCI_OF_{}_ON_{}",
            spec.rails[rail].name, spec.hosts[host].name
        )
    })
}

/// `0-3,6` style list.
fn cpu_list(cpus: &[u32]) -> String {
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// Hex CPU mask for `smp_affinity` (comma every 32 bits, as the kernel prints it).
fn affinity_mask(g: &Guest) -> Option<String> {
    let max = *g.cpus.iter().max()?;
    let words = max / 32 + 1;
    let mut w = vec![0u32; words as usize];
    for &c in &g.cpus {
        w[(c / 32) as usize] |= 1 << (c % 32);
    }
    let text: Vec<String> = w.iter().rev().map(|x| format!("{x:08x}")).collect();
    let joined = text.join(",");
    Some(
        joined
            .trim_start_matches('0')
            .trim_start_matches(',')
            .to_owned(),
    )
    .map(|s| if s.is_empty() { "0".to_owned() } else { s })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_masks() {
        assert_eq!(cpu_list(&[3, 0, 1, 2, 6]), "0-3,6");
        let g = |cpus: Vec<u32>| Guest {
            name: "g".into(),
            vcpus: 1,
            cpus,
            memory: 1,
            slots: 1,
            nics: vec![],
        };
        assert_eq!(affinity_mask(&g(vec![1])).as_deref(), Some("2"));
        assert_eq!(affinity_mask(&g(vec![0, 3])).as_deref(), Some("9"));
        assert_eq!(affinity_mask(&g(vec![32])).as_deref(), Some("1,00000000"));
        assert_eq!(affinity_mask(&g(vec![])), None);
    }

    #[test]
    fn passthrough_configs() {
        let s = Spec::parse(
            r#"
name = "x"
configuration = "guest-byp.indep"
[[rails]]
name = "eth1"
rate = "1gbit"
pci = "0000:03:04.0"
[[rails]]
name = "eth2"
rate = "1gbit"
[[hosts]]
name = "n0"
[[hosts.guests]]
name = "g0"
cpus = [1]
nics = ["eth1"]
[[hosts.guests]]
name = "g1"
nics = ["eth2"]
"#,
        )
        .unwrap();
        let c = domain_configs(&s);
        assert_eq!(c[0].file, "n0-g0.cfg");
        assert!(
            c[0].text.contains("pci = [ '0000:03:04.0' ]"),
            "{}",
            c[0].text
        );
        assert!(c[0].text.contains("cpus = \"1\""));
        assert!(c[1].text.contains("PCI_OF_eth2_ON_n0"));
        let sh = setup_script(&s);
        assert!(sh.contains("xl pci-assignable-add 0000:03:04.0"), "{sh}");
        assert!(
            sh.contains("echo 2 > /proc/irq/$IRQ_N0_ETH1/smp_affinity"),
            "{sh}"
        );
    }
}
