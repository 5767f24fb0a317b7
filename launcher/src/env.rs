//! Every environment variable the launcher sets in a rank, and the one place that builds them.
//!
//! | variable | value |
//! |---|---|
//! | `PMI_PORT` | `ADDR:PORT` of the PMI-1 server |
//! | `PMI_ID` | the rank (the id announced in `cmd=initack`) |
//! | `PMI_RANK` | the rank |
//! | `PMI_SIZE` | the number of ranks |
//! | `BRAID_JOB_ID` | a unique id of the job (`PID-NANOS` of mpirun) |
//! | `BRAID_HOST_ID` | the host name from the placement; set only for ranks started through `--launch-agent`, removed for local ranks |
//! | `BRAID_LOCAL_RANK` | index of the rank among the ranks placed on the same host |
//! | `BRAID_LOCAL_SIZE` | number of ranks placed on that host |
//!
//! `PMI_FD` is removed from local ranks, so that an `mpirun` started under another launcher
//! does not hand its own PMI socket down. The launcher reads no `BRAID_*` variable itself.

use anyhow::{Result, bail};

/// PMI server address.
pub const PMI_PORT: &str = "PMI_PORT";
/// PMI id.
pub const PMI_ID: &str = "PMI_ID";
/// Rank.
pub const PMI_RANK: &str = "PMI_RANK";
/// Job size.
pub const PMI_SIZE: &str = "PMI_SIZE";
/// Inherited PMI socket of an outer launcher; removed.
pub const PMI_FD: &str = "PMI_FD";
/// Unique job id.
pub const BRAID_JOB_ID: &str = "BRAID_JOB_ID";
/// Host the rank was placed on (launch-agent ranks only).
pub const BRAID_HOST_ID: &str = "BRAID_HOST_ID";
/// Local rank.
pub const BRAID_LOCAL_RANK: &str = "BRAID_LOCAL_RANK";
/// Local size.
pub const BRAID_LOCAL_SIZE: &str = "BRAID_LOCAL_SIZE";

/// Turns the `-x` arguments into `(name, value)` pairs: `VAR=VALUE` sets, `VAR` copies from
/// mpirun's environment.
///
/// # Errors
///
/// A bare `VAR` that mpirun's environment does not have, or an empty or invalid name.
pub fn exports(args: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for a in args {
        let (name, value) = match a.split_once('=') {
            Some((n, v)) => (n.to_owned(), v.to_owned()),
            None => match std::env::var(a) {
                Ok(v) => (a.clone(), v),
                Err(_) => {
                    bail!("-x {a}: {a} is not set in mpirun's environment (use -x {a}=VALUE)")
                }
            },
        };
        if name.is_empty()
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || name.as_bytes()[0].is_ascii_digit()
        {
            bail!("-x {a}: {name:?} is not a valid variable name");
        }
        out.push((name, value));
    }
    Ok(out)
}

/// A fresh job id: mpirun's pid and the time in nanoseconds.
pub fn new_job_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// What varies per rank.
#[derive(Debug, Clone)]
pub struct RankEnv<'a> {
    /// `ADDR:PORT` to reach the PMI server from this rank.
    pub pmi_port: &'a str,
    /// The rank.
    pub rank: u32,
    /// Job size.
    pub size: u32,
    /// Job id.
    pub job_id: &'a str,
    /// Placement host, for launch-agent ranks.
    pub host_id: Option<&'a str>,
    /// Local rank.
    pub local_rank: u32,
    /// Local size.
    pub local_size: u32,
    /// `-x` variables.
    pub exports: &'a [(String, String)],
}

impl RankEnv<'_> {
    /// The variables to set, in a stable order (launcher variables first, then `-x`, so that
    /// `-x` can override them on purpose).
    pub fn vars(&self) -> Vec<(String, String)> {
        let mut v = vec![
            (PMI_PORT.to_owned(), self.pmi_port.to_owned()),
            (PMI_ID.to_owned(), self.rank.to_string()),
            (PMI_RANK.to_owned(), self.rank.to_string()),
            (PMI_SIZE.to_owned(), self.size.to_string()),
            (BRAID_JOB_ID.to_owned(), self.job_id.to_owned()),
        ];
        if let Some(h) = self.host_id {
            v.push((BRAID_HOST_ID.to_owned(), h.to_owned()));
        }
        v.push((BRAID_LOCAL_RANK.to_owned(), self.local_rank.to_string()));
        v.push((BRAID_LOCAL_SIZE.to_owned(), self.local_size.to_string()));
        v.extend(self.exports.iter().cloned());
        v
    }

    /// Variables to remove from an inherited environment.
    pub fn removed(&self) -> &'static [&'static str] {
        if self.host_id.is_some() {
            &[PMI_FD]
        } else {
            &[PMI_FD, BRAID_HOST_ID]
        }
    }
}
