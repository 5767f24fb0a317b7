//! `braid-xen`: the virtual cluster of Strazdins, Alexander and Barr (2006) — SMP nodes with
//! several GigE NICs, optionally split into Xen guests that own passthrough NICs — as a spec,
//! as Xen configuration, and as a testbed on one Linux machine.
//!
//! - [`spec`]: the TOML spec (hosts, rails with rates and PCI addresses, guests with vCPUs,
//!   pinning and passthrough NICs, the paper's named configurations) and its address plan.
//! - [`xl`]: generators of `xl` domain configs, `xl pci-assignable-add` commands and IRQ
//!   affinity settings for a real Xen cluster.
//! - [`testbed`]: the same spec built from network namespaces, veth pairs, bridges and
//!   `tc tbf` ([`Testbed`]), and torn down again, also after a crash.
//!
//! What it does not do: it starts no Xen domains and touches no real NIC; the testbed needs
//! root and iproute2, changes nothing outside namespaces and links whose names start with the
//! spec's name, and only ever assigns addresses in 10.77.0.0/16. It trusts its spec only
//! after validation; nothing is built from an invalid one.
//!
//! # Glossary
//! - *host*: a cluster node; the Xen driver domain (`domain0`) when it has guests.
//! - *guest*: a Xen guest domain; a namespace of its own in the testbed.
//! - *rail*: one NIC present on every host (`eth1`), the same name everywhere.
//! - *bond*: one address per host spread over all its rails (kernel bonding or the ECMP
//!   stand-in).
//! - *passthrough* (VMM bypass): a NIC owned by a guest, not by the driver domain.
//! - *node*: a host or a guest, i.e. a place where ranks run.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod error;
pub mod spec;
mod sys;
pub mod testbed;
pub mod xl;

pub use error::{SpecError, TestbedError};
pub use spec::{BondMode, Configuration, Node, Rate, Spec};
pub use testbed::{BondFlavour, DownReport, Testbed, root_available, status, tbf_params};
