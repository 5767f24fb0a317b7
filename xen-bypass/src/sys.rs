//! The only place that starts processes: `ip`, `tc`, `sysctl` and `kill`, Linux only.

use std::process::{Command, Stdio};

use crate::error::TestbedError;

/// Runs `words` to completion; returns its stdout, or an error with its stderr.
///
/// Every command here is a short `ip`/`tc`/`sysctl` call that ends by itself.
pub(crate) fn run(words: &[&str]) -> Result<String, TestbedError> {
    let line = words.join(" ");
    let (prog, args) = words.split_first().ok_or_else(|| TestbedError::Spawn {
        command: String::new(),
        source: std::io::Error::other("empty command"),
    })?;
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| TestbedError::Spawn {
            command: line.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(TestbedError::Command {
            command: line,
            status: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Names of all named network namespaces (`ip netns list`).
pub(crate) fn netns_list() -> Result<Vec<String>, TestbedError> {
    Ok(run(&["ip", "netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Names of the links of the root namespace (or of `netns`).
pub(crate) fn links(netns: Option<&str>) -> Result<Vec<String>, TestbedError> {
    let text = match netns {
        Some(ns) => run(&["ip", "-n", ns, "-o", "link", "show"])?,
        None => run(&["ip", "-o", "link", "show"])?,
    };
    // `7: name@peer: <FLAGS> ...`
    Ok(text
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect())
}

/// Whether this process runs as root (effective uid 0, from `/proc/self/status`).
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}
