//! The rank side of PMI-1: [`PmiClient`].
//!
//! Start-up sequence, as MPICH's simple PMI client does it:
//! 1. `PMI_PORT` only: `cmd=initack pmiid=ID` → `cmd=initack`, `cmd=set size=N`,
//!    `cmd=set rank=R`, `cmd=set debug=D`. With `PMI_FD`, rank and size come from `PMI_RANK`
//!    and `PMI_SIZE` instead.
//! 2. `cmd=init pmi_version=1 pmi_subversion=1` → `cmd=response_to_init ... rc=0`.
//! 3. `cmd=get_maxes` → `cmd=maxes kvsname_max= keylen_max= vallen_max=`.
//! 4. `cmd=get_my_kvsname` → `cmd=my_kvsname kvsname=`.
//!
//! Not implemented: `PMI_Spawn`, name publishing, `get_ranks2hosts`.

use std::env;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::sys;
use crate::wire::{Command, DecodeError, LineReader, WireError};

/// An error from the PMI client, naming what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PmiError {
    /// The server closed the connection while a reply was awaited.
    #[error("PMI server closed the connection while waiting for the reply to cmd={command}")]
    Closed {
        /// The command whose reply was awaited.
        command: String,
    },
    /// Connecting to the `PMI_PORT` address failed.
    #[error("cannot connect to PMI server at {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
    /// An environment variable the client needs is missing or malformed.
    #[error("environment variable {var}={value:?} is invalid: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value (empty when missing).
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The `PMI_FD` descriptor cannot be used.
    #[error("PMI_FD={fd} cannot be used: {reason}")]
    Fd {
        /// The descriptor number.
        fd: i32,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the PMI socket failed.
    #[error("PMI I/O error during cmd={command}: {source}")]
    Io {
        /// The command being sent or awaited.
        command: String,
        /// The OS error.
        source: io::Error,
    },
    /// `get` found no such key (the server answered `rc != 0`).
    #[error("PMI get of key {key:?} failed: rc={rc}{}", msg_suffix(.msg))]
    KeyNotFound {
        /// The key asked for.
        key: String,
        /// The server's return code.
        rc: i64,
        /// The server's `msg=`, if any.
        msg: Option<String>,
    },
    /// The server's reply could not be decoded.
    #[error("malformed PMI reply to cmd={command}: {line:?}: {source}")]
    Malformed {
        /// The command whose reply was awaited.
        command: String,
        /// The reply as received (lossily decoded, possibly cut).
        line: String,
        /// The decode error.
        source: DecodeError,
    },
    /// The server answered a command with `rc != 0`.
    #[error("PMI cmd={command} failed: rc={rc}{}", msg_suffix(.msg))]
    Rc {
        /// The command.
        command: String,
        /// The server's return code.
        rc: i64,
        /// The server's `msg=`, if any.
        msg: Option<String>,
    },
    /// No reply arrived before the deadline.
    #[error("PMI cmd={command} timed out after {after:?} without a reply")]
    Timeout {
        /// The command whose reply was awaited.
        command: String,
        /// The time limit that expired.
        after: Duration,
    },
    /// The server answered with another command than the one expected, or left out a field.
    #[error("unexpected PMI reply to cmd={command}: expected {expected}, got {got:?}")]
    Unexpected {
        /// The command sent.
        command: String,
        /// What was expected.
        expected: String,
        /// The reply received, re-encoded.
        got: String,
    },
    /// A key or value given by the caller cannot be put on the wire (space, newline, `=` in a
    /// key) or exceeds the server's limits.
    #[error("invalid PMI argument: {0}")]
    Usage(#[from] WireError),
    /// A key or value is longer than the server's advertised maximum.
    #[error("PMI {what} of {len} bytes exceeds the server's maximum of {max}")]
    UsageTooLong {
        /// `key` or `value`.
        what: &'static str,
        /// The length given.
        len: usize,
        /// The server's limit.
        max: usize,
    },
}

fn msg_suffix(msg: &Option<String>) -> String {
    msg.as_ref().map(|m| format!(" ({m})")).unwrap_or_default()
}

/// The connected socket to the PMI server.
#[derive(Debug)]
#[non_exhaustive]
pub enum PmiStream {
    /// A TCP connection (`PMI_PORT`).
    Tcp(TcpStream),
    /// A Unix-domain socket (`PMI_FD` from hydra, or a socketpair in tests).
    Unix(UnixStream),
}

impl PmiStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(t),
            Self::Unix(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_write_timeout(t),
            Self::Unix(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for PmiStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for PmiStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            Self::Unix(s) => s.flush(),
        }
    }
}

impl From<TcpStream> for PmiStream {
    fn from(s: TcpStream) -> Self {
        Self::Tcp(s)
    }
}

impl From<UnixStream> for PmiStream {
    fn from(s: UnixStream) -> Self {
        Self::Unix(s)
    }
}

/// How the client learns its rank and size on a fresh stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// `PMI_PORT` style: send `cmd=initack pmiid=ID`, the server answers with size and rank.
    InitAck {
        /// The PMI id to announce (`PMI_ID`).
        pmi_id: u32,
    },
    /// `PMI_FD` style: rank and size are already known from the environment.
    Known {
        /// This process's rank.
        rank: u32,
        /// The number of ranks.
        size: u32,
    },
}

/// The server's limits from `cmd=maxes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maxes {
    /// Longest kvsname.
    pub kvsname_max: usize,
    /// Longest key.
    pub keylen_max: usize,
    /// Longest value.
    pub vallen_max: usize,
}

/// A connected, initialized PMI-1 client.
///
/// # Examples
///
/// ```no_run
/// use braid_pmi::PmiClient;
///
/// match PmiClient::from_env()? {
///     None => println!("singleton: rank 0 of 1"),
///     Some(mut pmi) => {
///         pmi.put(&format!("card{}", pmi.rank()), "tcp:127.0.0.1:4000")?;
///         pmi.barrier()?;
///         let peer = (pmi.rank() + 1) % pmi.size();
///         let card = pmi.get(&format!("card{peer}"))?;
///         println!("{card}");
///         pmi.finalize()?;
///     }
/// }
/// # Ok::<(), braid_pmi::PmiError>(())
/// ```
#[derive(Debug)]
pub struct PmiClient {
    /// The socket; in blocking mode, with a read timeout set before each read.
    stream: PmiStream,
    /// Bytes received and not yet consumed.
    reader: LineReader,
    /// This process's rank, `< size`.
    rank: u32,
    /// Ranks in the job, `>= 1`.
    size: u32,
    /// The job's KVS name, from `cmd=my_kvsname`.
    kvsname: String,
    /// The server's limits.
    maxes: Maxes,
    /// Deadline for each reply.
    timeout: Duration,
}

impl PmiClient {
    /// Default deadline for each reply. Generous, because `barrier` waits for the slowest rank.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    /// Connects as the environment says, with [`PmiClient::DEFAULT_TIMEOUT`].
    ///
    /// Returns `Ok(None)` when neither `PMI_FD` nor `PMI_PORT` is set: a singleton run, rank 0
    /// of 1.
    ///
    /// # Errors
    ///
    /// [`PmiError::Env`] for missing or malformed `PMI_*` variables, [`PmiError::Fd`] for an
    /// unusable `PMI_FD`, [`PmiError::Connect`] when `PMI_PORT` cannot be reached, and any
    /// error of the start-up exchange.
    pub fn from_env() -> Result<Option<Self>, PmiError> {
        Self::from_env_with_timeout(Self::DEFAULT_TIMEOUT)
    }

    /// Like [`PmiClient::from_env`] with a per-reply deadline of `timeout`.
    ///
    /// # Errors
    ///
    /// As [`PmiClient::from_env`].
    pub fn from_env_with_timeout(timeout: Duration) -> Result<Option<Self>, PmiError> {
        if let Some(fd) = env_var("PMI_FD") {
            let fd: i32 = parse_env("PMI_FD", &fd)?;
            let rank = parse_env("PMI_RANK", &env_var("PMI_RANK").unwrap_or_default())?;
            let size = parse_env("PMI_SIZE", &env_var("PMI_SIZE").unwrap_or_default())?;
            let stream = sys::adopt_inherited_socket(fd).map_err(|e| PmiError::Fd {
                fd,
                reason: e.to_string(),
            })?;
            return Self::from_stream(stream.into(), Handshake::Known { rank, size }, timeout)
                .map(Some);
        }
        if let Some(port) = env_var("PMI_PORT") {
            let id = match env_var("PMI_ID") {
                Some(id) => parse_env("PMI_ID", &id)?,
                None => parse_env("PMI_RANK", &env_var("PMI_RANK").unwrap_or_default())?,
            };
            return Self::connect(&port, id, timeout).map(Some);
        }
        Ok(None)
    }

    /// Connects over TCP to `addr` (`host:port`) and announces `pmi_id`.
    ///
    /// # Errors
    ///
    /// [`PmiError::Connect`] if no address of `addr` accepts within `timeout`, then any error
    /// of the start-up exchange.
    pub fn connect(addr: &str, pmi_id: u32, timeout: Duration) -> Result<Self, PmiError> {
        let connect_err = |source| PmiError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let addrs = addr.to_socket_addrs().map_err(connect_err)?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        for sa in addrs {
            match TcpStream::connect_timeout(&sa, timeout) {
                Ok(s) => {
                    // Small request/reply lines: do not let Nagle delay them.
                    let _ = s.set_nodelay(true);
                    return Self::from_stream(s.into(), Handshake::InitAck { pmi_id }, timeout);
                }
                Err(e) => last = e,
            }
        }
        Err(connect_err(last))
    }

    /// Runs the start-up exchange on an already connected stream (tests, custom launchers).
    ///
    /// # Errors
    ///
    /// Any error of the exchange: I/O, timeout, closed connection, malformed or unexpected
    /// replies, `rc != 0` from `init`, or a rank/size the server reports inconsistently.
    pub fn from_stream(
        stream: PmiStream,
        handshake: Handshake,
        timeout: Duration,
    ) -> Result<Self, PmiError> {
        let mut client = Self {
            stream,
            reader: LineReader::new(),
            rank: 0,
            size: 1,
            kvsname: String::new(),
            maxes: Maxes {
                kvsname_max: 256,
                keylen_max: 64,
                vallen_max: 1024,
            },
            timeout,
        };
        client
            .stream
            .set_write_timeout(Some(timeout))
            .map_err(|source| PmiError::Io {
                command: "init".into(),
                source,
            })?;
        match handshake {
            Handshake::Known { rank, size } => {
                client.rank = rank;
                client.size = size;
            }
            Handshake::InitAck { pmi_id } => client.initack(pmi_id)?,
        }
        if client.size == 0 || client.rank >= client.size {
            return Err(PmiError::Unexpected {
                command: "initack".into(),
                expected: "rank < size and size >= 1".into(),
                got: format!("rank={} size={}", client.rank, client.size),
            });
        }
        let reply = client.call(
            &Command::trusted(
                "init",
                vec![("pmi_version", "1".into()), ("pmi_subversion", "1".into())],
            ),
            "response_to_init",
        )?;
        check_rc("init", &reply)?;
        let reply = client.call(&Command::trusted("get_maxes", vec![]), "maxes")?;
        client.maxes = Maxes {
            kvsname_max: field(&reply, "get_maxes", "kvsname_max")?,
            keylen_max: field(&reply, "get_maxes", "keylen_max")?,
            vallen_max: field(&reply, "get_maxes", "vallen_max")?,
        };
        let reply = client.call(&Command::trusted("get_my_kvsname", vec![]), "my_kvsname")?;
        client.kvsname = field::<String>(&reply, "get_my_kvsname", "kvsname")?;
        Ok(client)
    }

    /// `cmd=initack pmiid=N` and the four-line answer.
    fn initack(&mut self, pmi_id: u32) -> Result<(), PmiError> {
        let cmd = Command::trusted("initack", vec![("pmiid", pmi_id.to_string())]);
        let reply = self.call(&cmd, "initack")?;
        check_rc("initack", &reply)?;
        let mut got_size = None;
        let mut got_rank = None;
        for _ in 0..3 {
            let line = self.recv("initack")?;
            if line.name() != "set" {
                return Err(unexpected("initack", "cmd=set", &line));
            }
            if let Some(v) = line.get("size") {
                got_size = Some(parse_field("initack", "size", v)?);
            } else if let Some(v) = line.get("rank") {
                got_rank = Some(parse_field("initack", "rank", v)?);
            }
        }
        match (got_rank, got_size) {
            (Some(rank), Some(size)) => {
                self.rank = rank;
                self.size = size;
                Ok(())
            }
            _ => Err(PmiError::Unexpected {
                command: "initack".into(),
                expected: "cmd=set size=N and cmd=set rank=R".into(),
                got: "fewer set lines".into(),
            }),
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// The number of ranks in the job.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The job's KVS name.
    pub fn kvsname(&self) -> &str {
        &self.kvsname
    }

    /// The server's size limits.
    pub fn maxes(&self) -> Maxes {
        self.maxes
    }

    /// The per-reply deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the per-reply deadline.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Publishes `key=value` in the job's KVS. Other ranks see it after the next barrier.
    ///
    /// # Errors
    ///
    /// [`PmiError::Usage`] / [`PmiError::UsageTooLong`] if the key or value is not wire-safe or
    /// too long; [`PmiError::Rc`] if the server refuses; I/O and timeout errors.
    pub fn put(&mut self, key: &str, value: &str) -> Result<(), PmiError> {
        self.check_len("key", key.len(), self.maxes.keylen_max)?;
        self.check_len("value", value.len(), self.maxes.vallen_max)?;
        let cmd = Command::new("put")?
            .arg("kvsname", &self.kvsname)?
            .arg("key", key)?
            .arg("value", value)?;
        let reply = self.call(&cmd, "put_result")?;
        check_rc("put", &reply)
    }

    /// Reads `key` from the job's KVS.
    ///
    /// # Errors
    ///
    /// [`PmiError::KeyNotFound`] naming the key when the server has no such key (`rc != 0`);
    /// [`PmiError::Usage`] for a key that is not wire-safe; I/O and timeout errors.
    pub fn get(&mut self, key: &str) -> Result<String, PmiError> {
        self.check_len("key", key.len(), self.maxes.keylen_max)?;
        let cmd = Command::new("get")?
            .arg("kvsname", &self.kvsname)?
            .arg("key", key)?;
        let reply = self.call(&cmd, "get_result")?;
        let rc: i64 = field(&reply, "get", "rc")?;
        if rc != 0 {
            return Err(PmiError::KeyNotFound {
                key: key.to_owned(),
                rc,
                msg: reply.get("msg").map(str::to_owned),
            });
        }
        field(&reply, "get", "value")
    }

    /// Waits until every rank has entered the barrier.
    ///
    /// # Errors
    ///
    /// [`PmiError::Timeout`] if not all ranks arrive within the timeout; I/O errors.
    pub fn barrier(&mut self) -> Result<(), PmiError> {
        self.call(&Command::trusted("barrier_in", vec![]), "barrier_out")
            .map(drop)
    }

    /// The universe size (`cmd=get_universe_size`).
    ///
    /// # Errors
    ///
    /// I/O, timeout and malformed-reply errors.
    pub fn universe_size(&mut self) -> Result<u32, PmiError> {
        let reply = self.call(
            &Command::trusted("get_universe_size", vec![]),
            "universe_size",
        )?;
        field(&reply, "get_universe_size", "size")
    }

    /// The application number (`cmd=get_appnum`); 0 for a single-program job.
    ///
    /// # Errors
    ///
    /// I/O, timeout and malformed-reply errors.
    pub fn appnum(&mut self) -> Result<i32, PmiError> {
        let reply = self.call(&Command::trusted("get_appnum", vec![]), "appnum")?;
        field(&reply, "get_appnum", "appnum")
    }

    /// Asks the launcher to end the whole job with exit code `code` (hydra's
    /// `cmd=abort exitcode=N`). No reply is awaited; the launcher kills the job.
    ///
    /// The wire form carries no message, so `msg`, if non-empty, is written to this process's
    /// stderr as `aborting job: MSG`, as MPICH's simple PMI client does.
    ///
    /// # Errors
    ///
    /// I/O errors while sending.
    pub fn abort(&mut self, code: i32, msg: &str) -> Result<(), PmiError> {
        if !msg.is_empty() {
            eprintln!("aborting job: {msg}");
        }
        self.send(&Command::trusted(
            "abort",
            vec![("exitcode", code.to_string())],
        ))
    }

    /// Leaves PMI: `cmd=finalize` → `cmd=finalize_ack`.
    ///
    /// # Errors
    ///
    /// I/O, timeout and unexpected-reply errors.
    pub fn finalize(mut self) -> Result<(), PmiError> {
        self.call(&Command::trusted("finalize", vec![]), "finalize_ack")
            .map(drop)
    }

    fn check_len(&self, what: &'static str, len: usize, max: usize) -> Result<(), PmiError> {
        if len > max {
            Err(PmiError::UsageTooLong { what, len, max })
        } else {
            Ok(())
        }
    }

    /// Sends `cmd` and waits for a reply named `expect`.
    fn call(&mut self, cmd: &Command, expect: &str) -> Result<Command, PmiError> {
        self.send(cmd)?;
        let reply = self.recv(cmd.name())?;
        if reply.name() != expect {
            return Err(unexpected(cmd.name(), &format!("cmd={expect}"), &reply));
        }
        Ok(reply)
    }

    fn send(&mut self, cmd: &Command) -> Result<(), PmiError> {
        let line = cmd.encode();
        self.stream
            .write_all(line.as_bytes())
            .and_then(|()| self.stream.flush())
            .map_err(|source| PmiError::Io {
                command: cmd.name().to_owned(),
                source,
            })
    }

    /// Reads one reply line to `command`, within the timeout.
    fn recv(&mut self, command: &str) -> Result<Command, PmiError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let line = self
                .reader
                .next_buffered()
                .map_err(|source| PmiError::Malformed {
                    command: command.to_owned(),
                    line: String::new(),
                    source,
                })?;
            if let Some(line) = line {
                return Command::decode(&line).map_err(|source| PmiError::Malformed {
                    command: command.to_owned(),
                    line: String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned(),
                    source,
                });
            }
            if self.reader.is_eof() {
                return Err(PmiError::Closed {
                    command: command.to_owned(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PmiError::Timeout {
                    command: command.to_owned(),
                    after: self.timeout,
                });
            }
            let io_err = |source| PmiError::Io {
                command: command.to_owned(),
                source,
            };
            self.stream.set_read_timeout(Some(left)).map_err(io_err)?;
            match self.reader.fill(&mut self.stream) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    return Err(PmiError::Io {
                        command: command.to_owned(),
                        source: e,
                    });
                }
            }
        }
    }
}

fn env_var(name: &str) -> Option<String> {
    env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

fn parse_env<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<T, PmiError>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e: T::Err| PmiError::Env {
        var,
        value: value.to_owned(),
        reason: if value.is_empty() {
            "missing".into()
        } else {
            e.to_string()
        },
    })
}

fn unexpected(command: &str, expected: &str, got: &Command) -> PmiError {
    let mut got = got.encode();
    got.pop();
    PmiError::Unexpected {
        command: command.to_owned(),
        expected: expected.to_owned(),
        got,
    }
}

fn parse_field<T: std::str::FromStr>(command: &str, key: &str, v: &str) -> Result<T, PmiError> {
    v.parse().map_err(|_| PmiError::Unexpected {
        command: command.to_owned(),
        expected: format!("a valid {key}"),
        got: format!("{key}={v}"),
    })
}

fn field<T: std::str::FromStr>(reply: &Command, command: &str, key: &str) -> Result<T, PmiError> {
    match reply.get(key) {
        Some(v) => parse_field(command, key, v),
        None => Err(unexpected(command, &format!("a {key}= field"), reply)),
    }
}

fn check_rc(command: &str, reply: &Command) -> Result<(), PmiError> {
    // hydra omits rc= in some replies (initack); absent means success.
    let rc: i64 = match reply.get("rc") {
        Some(v) => parse_field(command, "rc", v)?,
        None => 0,
    };
    if rc != 0 {
        return Err(PmiError::Rc {
            command: command.to_owned(),
            rc,
            msg: reply.get("msg").map(str::to_owned),
        });
    }
    Ok(())
}
