//! Errors, split by who is at fault: the spec's author ([`SpecError`]) or the machine
//! ([`TestbedError`]).

use std::io;

/// A spec that cannot be read or is not valid. Nothing has been built when one is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A second item of the same kind with the same name.
    #[error("duplicate {kind} name {name:?}")]
    Duplicate {
        /// `host`, `rail` or `guest`.
        kind: &'static str,
        /// The repeated name.
        name: String,
    },
    /// The address plan cannot hold the spec.
    #[error("address plan: {what}")]
    AddressPlan {
        /// What does not fit.
        what: String,
    },
    /// A rate string that is not a rate.
    #[error("bad rate {text:?}: {why}")]
    BadRate {
        /// The text as given.
        text: String,
        /// What is wrong, and where.
        why: String,
    },
    /// A name that cannot be used.
    #[error("bad {kind} {name:?}: {why}")]
    BadName {
        /// What the name is of.
        kind: &'static str,
        /// The name.
        name: String,
        /// The rule it breaks.
        why: String,
    },
    /// The hosts and guests do not fit the named configuration.
    #[error("configuration {configuration}: {why}")]
    Configuration {
        /// The paper's name of the configuration.
        configuration: &'static str,
        /// What does not fit.
        why: String,
    },
    /// Any other invalid value.
    #[error("invalid spec: {what}")]
    Invalid {
        /// What is wrong.
        what: String,
    },
    /// The spec file cannot be read.
    #[error("cannot read spec file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// Malformed TOML, an unknown field or a missing one; the message has line and column.
    #[error("{file}: {message}")]
    Toml {
        /// File name, or `<spec>` for text.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// A host override or a guest NIC names a rail the spec does not have.
    #[error("{host} names rail {rail:?}, which is not a rail of this spec (rails: {})", .known.join(", "))]
    UnknownRail {
        /// The host (or `host.guest`) with the bad reference.
        host: String,
        /// The rail name given.
        rail: String,
        /// The rails the spec has.
        known: Vec<String>,
    },
}

/// A testbed operation that failed on this machine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestbedError {
    /// A testbed of this name (or leftovers of one) already exists.
    #[error("testbed {name} already exists ({what}); run `braid-testbed down` first")]
    AlreadyUp {
        /// The testbed name.
        name: String,
        /// What was found.
        what: String,
    },
    /// A command of the build failed; what was built so far has been removed.
    #[error("`{command}` failed (exit {status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status, or -1 if killed by a signal.
        status: i32,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A command could not be started at all.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: io::Error,
    },
    /// The management subnet is already in use in the root namespace.
    #[error(
        "management subnet {subnet} is already used in the root namespace (by {by}); choose another addresses.base"
    )]
    SubnetInUse {
        /// The subnet.
        subnet: String,
        /// The device that holds it.
        by: String,
    },
    /// No such host or guest in the spec.
    #[error("testbed {testbed} has no host or guest {name:?} (has: {})", .known.join(", "))]
    UnknownNode {
        /// The testbed name.
        testbed: String,
        /// The name given.
        name: String,
        /// The names it has.
        known: Vec<String>,
    },
    /// No such rail on that node.
    #[error("{node} of testbed {testbed} has no rail {rail:?}")]
    UnknownRail {
        /// The testbed name.
        testbed: String,
        /// The node.
        node: String,
        /// The rail name given.
        rail: String,
    },
    /// The spec is not valid.
    #[error(transparent)]
    Spec(#[from] SpecError),
}
