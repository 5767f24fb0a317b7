//! `--testbed SPEC`: a job on a `braid-testbed` virtual cluster (crate `braid-xen`).
//!
//! Hosts are the spec's hosts (or, where a host has guests, its guests) with their slots,
//! named by their network namespace; each rank starts through `ip netns exec {host}`; the PMI
//! server listens on the root namespace's management address, which every namespace reaches.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use braid_xen::{Spec, Testbed};

use crate::hosts::HostSpec;

/// What a testbed job uses instead of `-H`, `--launch-agent` and `--pmi-addr`.
#[derive(Debug, Clone)]
pub struct TestbedJob {
    /// One host per namespace where ranks run, with its slots.
    pub hosts: Vec<HostSpec>,
    /// `ip netns exec {host}`.
    pub launch_agent: String,
    /// The management address of the root namespace.
    pub pmi_addr: IpAddr,
}

/// Reads the spec at `path` and checks that its testbed is up.
///
/// # Errors
///
/// An invalid spec, or a testbed that is not up (naming the missing namespace).
pub fn job(path: &Path) -> Result<TestbedJob> {
    let spec = Spec::from_file(path).context("bad --testbed spec")?;
    Testbed::attach(&spec).with_context(|| {
        format!(
            "testbed {} is not up; run `braid-testbed up {}`",
            spec.name,
            path.display()
        )
    })?;
    let hosts = spec
        .mpi_nodes()
        .into_iter()
        .map(|(node, slots)| HostSpec {
            name: spec.netns(node),
            slots,
        })
        .collect();
    Ok(TestbedJob {
        hosts,
        launch_agent: "ip netns exec {host}".to_owned(),
        pmi_addr: spec.mgmt_root_addr().into(),
    })
}
