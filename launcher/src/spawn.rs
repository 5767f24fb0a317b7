//! Program resolution and starting one rank (locally or through a launch agent), each in its
//! own process group so that the whole group can be killed.
//!
//! Resolution order for the program word: a name with `/` is a path; otherwise the first
//! executable file of that name on `PATH`; otherwise a bundled benchmark
//! ([`BUILTIN_NAMES`]): the sibling binary next to `mpirun` if there is one, else
//! `mpirun --braid-builtin NAME ARGS...`.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

use crate::env::RankEnv;

/// First argument that makes `mpirun` run a bundled benchmark instead of a job.
pub const BUILTIN_FLAG: &str = "--braid-builtin";

/// Names of the bundled benchmarks.
#[cfg(feature = "builtin")]
pub const BUILTIN_NAMES: &[&str] = braid_osu::builtin::NAMES;
/// Names of the bundled benchmarks (none: built without the `builtin` feature).
#[cfg(not(feature = "builtin"))]
pub const BUILTIN_NAMES: &[&str] = &[];

/// The program word named nothing runnable.
#[derive(Debug)]
pub struct ProgramNotFound(pub String);

impl std::fmt::Display for ProgramNotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "program '{}' not found in PATH or among the bundled benchmarks",
            self.0
        )
    }
}

impl std::error::Error for ProgramNotFound {}

/// A resolved program: what to exec and the arguments that go before the user's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The executable to start locally.
    pub exe: PathBuf,
    /// `argv[0]` as the user wrote it.
    pub argv0: String,
    /// Arguments inserted before the user's (`--braid-builtin NAME` for re-execution).
    pub pre_args: Vec<String>,
    /// What a launch agent should run: the word as given for `PATH` programs (the remote
    /// `env` searches its own `PATH`), else the absolute path.
    pub remote_word: String,
}

/// Resolves the program word.
///
/// # Errors
///
/// [`ProgramNotFound`] when nothing matches.
pub fn resolve(word: &str) -> Result<Program> {
    let not_found = || anyhow::Error::new(ProgramNotFound(word.to_owned()));
    if word.contains('/') {
        let p = Path::new(word);
        if !p.is_file() {
            return Err(not_found());
        }
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        return Ok(Program {
            remote_word: abs.to_string_lossy().into_owned(),
            exe: abs,
            argv0: word.to_owned(),
            pre_args: vec![],
        });
    }
    if let Some(exe) = search_path(word, std::env::var_os("PATH")) {
        return Ok(Program {
            exe,
            argv0: word.to_owned(),
            pre_args: vec![],
            remote_word: word.to_owned(),
        });
    }
    if BUILTIN_NAMES.contains(&word) {
        let me = std::env::current_exe().context("cannot locate mpirun's own executable")?;
        if let Some(sibling) = me
            .parent()
            .map(|d| d.join(word))
            .filter(|p| is_executable(p))
        {
            return Ok(Program {
                remote_word: sibling.to_string_lossy().into_owned(),
                exe: sibling,
                argv0: word.to_owned(),
                pre_args: vec![],
            });
        }
        return Ok(Program {
            remote_word: me.to_string_lossy().into_owned(),
            exe: me,
            argv0: "mpirun".to_owned(),
            pre_args: vec![BUILTIN_FLAG.to_owned(), word.to_owned()],
        });
    }
    Err(not_found())
}

fn search_path(word: &str, path: Option<OsString>) -> Option<PathBuf> {
    let path = path?;
    std::env::split_paths(&path)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(word))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Splits a launch-agent template into words: whitespace separates, single and double quotes
/// group, backslash escapes the next character outside single quotes.
///
/// # Errors
///
/// An unterminated quote or an empty template.
pub fn split_words(template: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => bail!("unterminated ' in launch agent {template:?}"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => cur.extend(chars.next()),
                        Some(x) => cur.push(x),
                        None => bail!("unterminated \" in launch agent {template:?}"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    if words.is_empty() {
        bail!("empty launch agent");
    }
    Ok(words)
}

/// Everything needed to start one rank.
#[derive(Debug)]
pub struct Launch<'a> {
    /// The program.
    pub program: &'a Program,
    /// The user's arguments.
    pub args: &'a [String],
    /// The rank's environment.
    pub env: RankEnv<'a>,
    /// Launch agent words, for a non-local host.
    pub agent: Option<&'a [String]>,
    /// Host name (for `{host}`).
    pub host: &'a str,
}

impl Launch<'_> {
    /// Builds the command: local, or `AGENT... env K=V... PROGRAM ARGS...` with `{host}`
    /// replaced. Stdin is `/dev/null`, stdout and stderr are pipes, and the process leads a new
    /// process group.
    pub fn command(&self) -> Command {
        let mut cmd = match self.agent {
            None => {
                let mut c = Command::new(&self.program.exe);
                c.arg0(&self.program.argv0)
                    .args(&self.program.pre_args)
                    .args(self.args);
                for k in self.env.removed() {
                    c.env_remove(k);
                }
                c.envs(self.env.vars());
                c
            }
            Some(words) => {
                let mut words = words.iter().map(|w| w.replace("{host}", self.host));
                // `words` is non-empty: split_words never returns an empty list.
                let mut c = Command::new(words.next().unwrap_or_default());
                c.args(words).arg("env");
                c.args(self.env.vars().into_iter().map(|(k, v)| format!("{k}={v}")));
                c.arg(&self.program.remote_word)
                    .args(&self.program.pre_args)
                    .args(self.args);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd
    }

    /// Starts the rank.
    ///
    /// # Errors
    ///
    /// The OS error of `posix_spawn`/`exec`, naming the program and rank.
    pub fn spawn(&self) -> Result<Child> {
        let what = if self.agent.is_some() {
            "launch agent for"
        } else {
            "program"
        };
        self.command().spawn().with_context(|| {
            format!(
                "cannot start {what} '{}' for rank {} on host {}",
                self.program.argv0, self.env.rank, self.host
            )
        })
    }
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&i| set.is_set(i).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, usize::from)).collect(),
    }
}

/// Pins process `pid` to `cpu`.
///
/// # Errors
///
/// The OS error (the process may already have exited).
pub fn bind(pid: u32, cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    let pid = i32::try_from(pid).context("pid out of range")?;
    sched_setaffinity(Pid::from_raw(pid), &set)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        assert_eq!(
            split_words("ip netns exec {host}").unwrap(),
            vec!["ip", "netns", "exec", "{host}"]
        );
        assert_eq!(
            split_words(r#"ssh -o 'A B' "x\"y" a\ b"#).unwrap(),
            vec!["ssh", "-o", "A B", "x\"y", "a b"]
        );
        assert_eq!(split_words("env ''").unwrap(), vec!["env", ""]);
        assert!(split_words("  ").is_err());
        assert!(split_words("ssh 'x").is_err());
    }

    #[test]
    fn resolution() {
        let sh = resolve("sh").unwrap();
        assert!(sh.exe.is_absolute() && sh.exe.ends_with("sh"));
        assert_eq!(sh.remote_word, "sh");
        let e = resolve("surely-no-such-program-xyz").unwrap_err();
        assert!(e.downcast_ref::<ProgramNotFound>().is_some());
        assert!(
            e.to_string()
                .contains("'surely-no-such-program-xyz' not found in PATH"),
            "{e}"
        );
        assert!(resolve("./no/such/file").is_err());
        if let Some(name) = BUILTIN_NAMES.first() {
            let b = resolve(name).unwrap();
            assert!(b.pre_args.is_empty() || b.pre_args[0] == BUILTIN_FLAG);
        }
    }

    #[test]
    fn agent_command_line() {
        let program = Program {
            exe: "/bin/prog".into(),
            argv0: "prog".into(),
            pre_args: vec![],
            remote_word: "prog".into(),
        };
        let exports = vec![("FOO".to_owned(), "bar".to_owned())];
        let agent = split_words("ssh {host} -x").unwrap();
        let l = Launch {
            program: &program,
            args: &["a1".to_owned()],
            env: RankEnv {
                pmi_port: "h:1",
                rank: 3,
                size: 4,
                job_id: "j",
                host_id: Some("n1"),
                local_rank: 1,
                local_size: 2,
                exports: &exports,
            },
            agent: Some(&agent),
            host: "n1",
        };
        let c = l.command();
        assert_eq!(c.get_program(), "ssh");
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            vec![
                "n1",
                "-x",
                "env",
                "PMI_PORT=h:1",
                "PMI_ID=3",
                "PMI_RANK=3",
                "PMI_SIZE=4",
                "BRAID_JOB_ID=j",
                "BRAID_HOST_ID=n1",
                "BRAID_LOCAL_RANK=1",
                "BRAID_LOCAL_SIZE=2",
                "FOO=bar",
                "prog",
                "a1"
            ]
        );
    }
}
