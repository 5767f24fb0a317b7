//! Command line, in the shape of Open MPI's and MPICH's `mpirun`.
//!
//! Open MPI's single-dash long options (`-np`, `-host`, `-hostfile`, `-machinefile`,
//! `-tag-output`, `-timeout`, `-bind-to`) are accepted and rewritten to their `--` forms
//! before clap sees them, but only before the program word.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Where ranks are pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BindTo {
    /// Rank with local rank `i` is bound to core `i mod cores` (of the cores mpirun may use).
    Core,
    /// No binding.
    None,
}

/// Text shown after `--help`: the environment each rank receives.
const AFTER_HELP: &str = "\
Environment of each rank:
  PMI_PORT=ADDR:PORT  PMI_ID=RANK  PMI_RANK=RANK  PMI_SIZE=N   PMI-1 bootstrap (TCP)
  BRAID_JOB_ID        unique id of this job
  BRAID_LOCAL_RANK    index of the rank among the ranks on its host
  BRAID_LOCAL_SIZE    number of ranks on its host
  BRAID_HOST_ID       host name given in -H/--hostfile (only for ranks started by --launch-agent)
  plus the -x variables; local ranks inherit mpirun's environment.

Exit status: 0 if every rank exits 0; a failed rank's status (128+N if killed by signal N);
the code of a PMI abort; 124 on --timeout; 130/143 on SIGINT/SIGTERM; 127 if the program is
not found; 1 for other launch errors; 2 for a bad command line.";

/// `mpirun [OPTIONS] PROGRAM [ARGS]...`
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mpirun",
    version,
    about = "Start a Braid (or any PMI-1) MPI job",
    after_help = AFTER_HELP,
    override_usage = "mpirun [OPTIONS] [--] PROGRAM [ARGS]..."
)]
pub struct Cli {
    /// Number of ranks (default: the number of slots; one host of `cores` slots if no -H).
    #[arg(short = 'n', long = "np", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub np: Option<u32>,

    /// Hosts, comma-separated, each with an optional slot count (default 1); repeatable.
    #[arg(short = 'H', long = "host", value_name = "HOST[:SLOTS],...")]
    pub hosts: Vec<String>,

    /// File of hosts: one per line, `host`, `host slots=N` or `host:N`; `#` starts a comment.
    #[arg(long = "hostfile", visible_alias = "machinefile", value_name = "FILE")]
    pub hostfile: Option<PathBuf>,

    /// Export VAR from mpirun's environment, or set VAR=VALUE, in every rank; repeatable.
    #[arg(short = 'x', value_name = "VAR[=VALUE]")]
    pub export: Vec<String>,

    /// Prefix each output line with `[1,RANK]<stdout>:` or `[1,RANK]<stderr>:`.
    #[arg(long = "tag-output")]
    pub tag_output: bool,

    /// End the job (exit 124) if it runs longer than SECONDS.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,

    /// Bind ranks to cores (default: core when a host's ranks fit its cores, else none).
    #[arg(long = "bind-to", value_enum, value_name = "core|none")]
    pub bind_to: Option<BindTo>,

    /// Command template to start a rank on a non-local host; `{host}` is replaced by the host
    /// name, e.g. `ssh {host}` or `ip netns exec {host}`. The rank runs as
    /// `AGENT... env K=V... PROGRAM ARGS...`.
    #[arg(long = "launch-agent", value_name = "CMD")]
    pub launch_agent: Option<String>,

    /// Address for the PMI server to listen on and to give to ranks (default: 127.0.0.1 when
    /// all hosts are local, else 0.0.0.0, advertised to remote ranks as this host's name).
    #[arg(long = "pmi-addr", value_name = "ADDR")]
    pub pmi_addr: Option<IpAddr>,

    /// Run on a braid-testbed virtual cluster (`braid-testbed up SPEC` first): the hosts are
    /// the spec's hosts (or guests) with their slots, each rank starts through
    /// `ip netns exec NETNS`, and the PMI server listens on the testbed's management address.
    #[arg(
        long,
        value_name = "SPEC",
        conflicts_with_all = ["hosts", "hostfile", "launch_agent", "pmi_addr"]
    )]
    pub testbed: Option<PathBuf>,

    /// The program and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = false,
        value_name = "PROGRAM"
    )]
    pub command: Vec<String>,
}

/// Options that take a value, in their `--` form (after rewriting) and short form.
const TAKES_VALUE: &[&str] = &[
    "-n",
    "--np",
    "-H",
    "--host",
    "--hostfile",
    "--machinefile",
    "-x",
    "--timeout",
    "--bind-to",
    "--launch-agent",
    "--pmi-addr",
    "--testbed",
];

/// Open MPI single-dash long options and their `--` forms.
const SINGLE_DASH: &[(&str, &str)] = &[
    ("-np", "--np"),
    ("-host", "--host"),
    ("-hostfile", "--hostfile"),
    ("-machinefile", "--hostfile"),
    ("-tag-output", "--tag-output"),
    ("-timeout", "--timeout"),
    ("-bind-to", "--bind-to"),
    ("-launch-agent", "--launch-agent"),
];

/// Rewrites Open MPI's single-dash long options, up to the program word or `--`.
pub fn normalize(argv: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut it = argv.into_iter();
    if let Some(argv0) = it.next() {
        out.push(argv0);
    }
    let mut expect_value = false;
    let mut in_options = true;
    for arg in it {
        if !in_options {
            out.push(arg);
            continue;
        }
        if expect_value {
            expect_value = false;
            out.push(arg);
            continue;
        }
        if arg == "--" || !arg.starts_with('-') || arg == "-" {
            in_options = false;
            out.push(arg);
            continue;
        }
        let arg = SINGLE_DASH
            .iter()
            .find(|(from, _)| *from == arg)
            .map_or(arg, |(_, to)| (*to).to_owned());
        expect_value = TAKES_VALUE.contains(&arg.as_str());
        out.push(arg);
    }
    out
}

/// Parses `argv` (with `argv[0]`); on a bad command line, `--help` or `--version`, prints
/// and exits as clap does (status 2 for errors, 0 otherwise).
pub fn parse(argv: Vec<String>) -> Cli {
    Cli::parse_from(normalize(argv))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Cli, clap::Error> {
        let argv = std::iter::once("mpirun")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        Cli::try_parse_from(normalize(argv))
    }

    #[test]
    fn open_mpi_style() {
        let c = p(&[
            "-np",
            "4",
            "-host",
            "a:2,b",
            "-x",
            "FOO=1",
            "-x",
            "BAR",
            "--tag-output",
            "prog",
            "-np",
            "x",
        ])
        .unwrap();
        assert_eq!(c.np, Some(4));
        assert_eq!(c.hosts, vec!["a:2,b"]);
        assert_eq!(c.export, vec!["FOO=1", "BAR"]);
        assert!(c.tag_output);
        assert_eq!(c.command, vec!["prog", "-np", "x"]);
    }

    #[test]
    fn program_args_with_dashes_and_double_dash() {
        let c = p(&["-n", "2", "--", "sh", "-c", "echo hi"]).unwrap();
        assert_eq!(c.command, vec!["sh", "-c", "echo hi"]);
        let c = p(&["-n", "2", "sh", "-c", "echo --tag-output"]).unwrap();
        assert_eq!(c.command, vec!["sh", "-c", "echo --tag-output"]);
        assert!(!c.tag_output);
    }

    #[test]
    fn bad_flags() {
        let e = p(&["--bogus", "prog"]).unwrap_err();
        assert!(e.to_string().contains("--bogus"), "{e}");
        assert!(p(&["-n", "0", "prog"]).is_err());
        assert!(p(&["-n", "2"]).is_err());
        assert!(p(&["--bind-to", "socket", "prog"]).is_err());
        let c = p(&[
            "--bind-to",
            "none",
            "--timeout",
            "3",
            "--launch-agent",
            "ssh {host}",
            "prog",
        ])
        .unwrap();
        assert_eq!(c.bind_to, Some(BindTo::None));
        assert_eq!(c.timeout, Some(3));
    }

    #[test]
    fn testbed_replaces_hosts_agent_and_pmi_addr() {
        let c = p(&["--testbed", "tb.toml", "-n", "2", "prog"]).unwrap();
        assert_eq!(c.testbed.as_deref(), Some(std::path::Path::new("tb.toml")));
        assert!(p(&["--testbed", "tb.toml", "-H", "a", "prog"]).is_err());
        assert!(
            p(&[
                "--testbed",
                "tb.toml",
                "--launch-agent",
                "ssh {host}",
                "prog"
            ])
            .is_err()
        );
    }
}
