//! The server side of PMI-1 as a sans-IO state machine: [`KvsServer`].
//!
//! The driver (the launcher) owns the sockets. For each connection it calls
//! [`KvsServer::handle_connect`], then [`KvsServer::handle_line`] for every line received and
//! [`KvsServer::handle_disconnect`] when the peer goes away. After each input it drains
//! [`KvsServer::poll_transmit`] (lines to send, connections to close, in order) and then
//! [`KvsServer::poll_event`] (job-level happenings: init, finalize, abort, protocol errors).
//!
//! Not implemented: `mcmd=spawn`, `publish_name` / `lookup_name`, multiple KVS spaces.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::wire::Command;

/// Identifies one connection; chosen by the driver, unique while the connection lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Something the driver must do on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Close the connection (after sending anything queued before this).
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Send `command` (encode it with [`Command::encode`]).
    Send {
        /// The connection.
        conn: ConnId,
        /// The line to send.
        command: Command,
    },
}

/// A job-level happening the launcher may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A rank asked to abort the job (`cmd=abort exitcode=N`).
    Aborted {
        /// The rank.
        rank: u32,
        /// Its exit code (`exitcode=`, or `code=`; 1 if missing or not a number).
        code: i32,
        /// The `msg=` field, if any.
        message: Option<String>,
    },
    /// A rank's connection went away.
    Disconnected {
        /// The rank.
        rank: u32,
        /// Whether it had finalized before.
        finalized: bool,
    },
    /// A rank sent `cmd=finalize`.
    Finalized {
        /// The rank.
        rank: u32,
    },
    /// A connection was identified as `rank` (by `cmd=initack` or
    /// [`KvsServer::handle_connect_as`]). Queued before the replies to that line, so a driver
    /// that publishes events before sending replies lets the launcher see it before the rank
    /// can go on.
    Identified {
        /// The rank.
        rank: u32,
    },
    /// A rank sent `cmd=init`.
    Initialized {
        /// The rank.
        rank: u32,
    },
    /// A connection sent something the server cannot serve (the connection is kept unless a
    /// [`Transmit::Close`] was queued).
    ProtocolError {
        /// The connection.
        conn: ConnId,
        /// Its rank, if identified.
        rank: Option<u32>,
        /// What was wrong.
        reason: String,
    },
    /// A connection was refused at `initack` (bad or duplicate PMI id) and is being closed.
    Rejected {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: String,
    },
}

/// Advertised limits (`cmd=maxes`), hydra's values.
const KVSNAME_MAX: usize = 256;
const KEYLEN_MAX: usize = 64;
const VALLEN_MAX: usize = 1024;

/// The PMI-1 key-value server for one job.
#[derive(Debug)]
pub struct KvsServer {
    /// Number of ranks in the job; `>= 1`.
    size: u32,
    /// The job's single KVS name; wire-safe.
    kvsname: String,
    /// Rank of each live, identified connection; a rank appears at most once.
    conns: HashMap<ConnId, Option<u32>>,
    /// Connection of each identified rank; inverse of the `Some` entries of `conns`.
    rank_conn: BTreeMap<u32, ConnId>,
    /// Ranks that sent `finalize`.
    finalized: BTreeSet<u32>,
    /// The KVS; keys and values are wire-safe (they came out of decoded lines).
    kvs: HashMap<String, String>,
    /// Ranks inside the current barrier; all are live; cleared when it reaches `size`.
    barrier: BTreeSet<u32>,
    /// Output queue.
    transmits: VecDeque<Transmit>,
    /// Event queue.
    events: VecDeque<ServerEvent>,
}

impl KvsServer {
    /// A server for a job of `size` ranks whose KVS is called `kvsname`.
    ///
    /// A `kvsname` that is empty or not wire-safe is replaced by `kvs_0`; `size` 0 is taken as 1.
    pub fn new(size: u32, kvsname: &str) -> Self {
        let kvsname = match Command::new("x").and_then(|c| c.arg("k", kvsname)) {
            Ok(_) if !kvsname.is_empty() && kvsname.len() <= KVSNAME_MAX => kvsname.to_owned(),
            _ => "kvs_0".to_owned(),
        };
        Self {
            size: size.max(1),
            kvsname,
            conns: HashMap::new(),
            rank_conn: BTreeMap::new(),
            finalized: BTreeSet::new(),
            kvs: HashMap::new(),
            barrier: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The job's KVS name.
    pub fn kvsname(&self) -> &str {
        &self.kvsname
    }

    /// The rank behind `conn`, once identified.
    pub fn rank_of(&self, conn: ConnId) -> Option<u32> {
        self.conns.get(&conn).copied().flatten()
    }

    /// Ranks currently waiting in the barrier.
    pub fn in_barrier(&self) -> impl Iterator<Item = u32> + '_ {
        self.barrier.iter().copied()
    }

    /// A new connection whose first line must be `cmd=initack pmiid=N` (`PMI_PORT` style).
    pub fn handle_connect(&mut self, conn: ConnId) {
        self.conns.insert(conn, None);
    }

    /// A new connection already known to belong to `rank` (`PMI_FD` style).
    ///
    /// # Errors
    ///
    /// Returns the reason if the rank is out of range or already connected; the driver should
    /// then close the connection.
    pub fn handle_connect_as(&mut self, conn: ConnId, rank: u32) -> Result<(), String> {
        self.check_new_rank(rank)?;
        self.conns.insert(conn, Some(rank));
        self.rank_conn.insert(rank, conn);
        self.events.push_back(ServerEvent::Identified { rank });
        Ok(())
    }

    /// The peer of `conn` closed it (or the driver did).
    pub fn handle_disconnect(&mut self, conn: ConnId) {
        if let Some(Some(rank)) = self.conns.remove(&conn) {
            self.rank_conn.remove(&rank);
            self.barrier.remove(&rank);
            self.events.push_back(ServerEvent::Disconnected {
                rank,
                finalized: self.finalized.contains(&rank),
            });
        }
    }

    /// One line received on `conn`. Malformed lines produce a
    /// [`ServerEvent::ProtocolError`] and close the connection.
    pub fn handle_line(&mut self, conn: ConnId, line: &[u8]) {
        match Command::decode(line) {
            Ok(cmd) => self.handle_command(conn, &cmd),
            Err(e) => {
                let rank = self.rank_of(conn);
                self.events.push_back(ServerEvent::ProtocolError {
                    conn,
                    rank,
                    reason: format!("malformed line: {e}"),
                });
                self.transmits.push_back(Transmit::Close { conn });
            }
        }
    }

    /// One decoded command received on `conn`.
    pub fn handle_command(&mut self, conn: ConnId, cmd: &Command) {
        let Some(&state) = self.conns.get(&conn) else {
            self.events.push_back(ServerEvent::ProtocolError {
                conn,
                rank: None,
                reason: format!(
                    "cmd={} on a connection never announced with handle_connect",
                    cmd.name()
                ),
            });
            return;
        };
        let Some(rank) = state else {
            self.handle_unidentified(conn, cmd);
            return;
        };
        match cmd.name() {
            "init" => {
                let ok = cmd.get("pmi_version") == Some("1");
                let rc = if ok { "0" } else { "-1" };
                self.send(
                    conn,
                    "response_to_init",
                    vec![
                        ("pmi_version", "1".into()),
                        ("pmi_subversion", "1".into()),
                        ("rc", rc.into()),
                    ],
                );
                if ok {
                    self.events.push_back(ServerEvent::Initialized { rank });
                }
            }
            "get_maxes" => self.send(
                conn,
                "maxes",
                vec![
                    ("kvsname_max", KVSNAME_MAX.to_string()),
                    ("keylen_max", KEYLEN_MAX.to_string()),
                    ("vallen_max", VALLEN_MAX.to_string()),
                ],
            ),
            "get_my_kvsname" => {
                self.send(conn, "my_kvsname", vec![("kvsname", self.kvsname.clone())])
            }
            "get_universe_size" => {
                self.send(conn, "universe_size", vec![("size", self.size.to_string())])
            }
            "get_appnum" => self.send(conn, "appnum", vec![("appnum", "0".into())]),
            "put" => {
                let (rc, msg) = match (cmd.get("kvsname"), cmd.get("key"), cmd.get("value")) {
                    (Some(k), _, _) if k != self.kvsname => ("-1", "unknown_kvsname".to_owned()),
                    (_, Some(key), Some(value))
                        if key.len() <= KEYLEN_MAX && value.len() <= VALLEN_MAX =>
                    {
                        self.kvs.insert(key.to_owned(), value.to_owned());
                        ("0", "success".to_owned())
                    }
                    (_, Some(_), Some(_)) => ("-1", "key_or_value_too_long".to_owned()),
                    _ => ("-1", "missing_key_or_value".to_owned()),
                };
                self.send(conn, "put_result", vec![("rc", rc.into()), ("msg", msg)]);
            }
            "get" => {
                let args = match (cmd.get("kvsname"), cmd.get("key")) {
                    (Some(k), _) if k != self.kvsname => {
                        vec![("rc", "-1".into()), ("msg", "unknown_kvsname".into())]
                    }
                    (_, Some(key)) => match self.kvs.get(key) {
                        Some(v) => vec![
                            ("rc", "0".into()),
                            ("msg", "success".into()),
                            ("value", v.clone()),
                        ],
                        None => vec![("rc", "-1".into()), ("msg", format!("key_{key}_not_found"))],
                    },
                    (_, None) => vec![("rc", "-1".into()), ("msg", "missing_key".into())],
                };
                self.send(conn, "get_result", args);
            }
            "barrier_in" => {
                self.barrier.insert(rank);
                if self.barrier.len() >= self.size as usize {
                    let ranks = std::mem::take(&mut self.barrier);
                    for r in ranks {
                        if let Some(&c) = self.rank_conn.get(&r) {
                            self.send(c, "barrier_out", vec![]);
                        }
                    }
                }
            }
            "finalize" => {
                self.finalized.insert(rank);
                self.send(conn, "finalize_ack", vec![]);
                self.events.push_back(ServerEvent::Finalized { rank });
            }
            "abort" => {
                let code = cmd
                    .get("exitcode")
                    .or_else(|| cmd.get("code"))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                let message = cmd.get("msg").map(str::to_owned);
                self.events.push_back(ServerEvent::Aborted {
                    rank,
                    code,
                    message,
                });
            }
            other => self.events.push_back(ServerEvent::ProtocolError {
                conn,
                rank: Some(rank),
                reason: format!("unsupported command cmd={other}"),
            }),
        }
    }

    /// The next thing to send or close, in order.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next job-level event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    fn handle_unidentified(&mut self, conn: ConnId, cmd: &Command) {
        let reject = |this: &mut Self, reason: String| {
            this.events
                .push_back(ServerEvent::Rejected { conn, reason });
            this.transmits.push_back(Transmit::Close { conn });
            this.conns.remove(&conn);
        };
        if cmd.name() != "initack" {
            return reject(
                self,
                format!("first command must be cmd=initack, got cmd={}", cmd.name()),
            );
        }
        let Some(id) = cmd.get("pmiid") else {
            return reject(self, "cmd=initack without pmiid".to_owned());
        };
        let Ok(rank) = id.parse::<u32>() else {
            return reject(self, format!("pmiid={id} is not a rank number"));
        };
        if let Err(reason) = self.check_new_rank(rank) {
            return reject(self, reason);
        }
        self.conns.insert(conn, Some(rank));
        self.rank_conn.insert(rank, conn);
        self.events.push_back(ServerEvent::Identified { rank });
        self.send(conn, "initack", vec![]);
        self.send(conn, "set", vec![("size", self.size.to_string())]);
        self.send(conn, "set", vec![("rank", rank.to_string())]);
        self.send(conn, "set", vec![("debug", "0".into())]);
    }

    fn check_new_rank(&self, rank: u32) -> Result<(), String> {
        if rank >= self.size {
            return Err(format!(
                "pmiid={rank} is out of range for a job of {} ranks",
                self.size
            ));
        }
        if self.rank_conn.contains_key(&rank) {
            return Err(format!("rank {rank} is already connected"));
        }
        Ok(())
    }

    fn send(&mut self, conn: ConnId, name: &'static str, args: Vec<(&'static str, String)>) {
        self.transmits.push_back(Transmit::Send {
            conn,
            command: Command::trusted(name, args),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(s: &mut KvsServer) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        while let Some(t) = s.poll_transmit() {
            match t {
                Transmit::Send { conn, command } => {
                    out.push((conn.0, command.encode().trim_end().to_owned()))
                }
                Transmit::Close { conn } => out.push((conn.0, "CLOSE".to_owned())),
            }
        }
        out
    }

    fn events(s: &mut KvsServer) -> Vec<ServerEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn connect(s: &mut KvsServer, conn: u64, id: u32) {
        s.handle_connect(ConnId(conn));
        s.handle_line(ConnId(conn), format!("cmd=initack pmiid={id}\n").as_bytes());
    }

    #[test]
    fn initack_answers_size_and_rank() {
        let mut s = KvsServer::new(3, "kvs_7");
        connect(&mut s, 10, 2);
        assert_eq!(
            sent(&mut s),
            vec![
                (10, "cmd=initack".into()),
                (10, "cmd=set size=3".into()),
                (10, "cmd=set rank=2".into()),
                (10, "cmd=set debug=0".into())
            ]
        );
        assert_eq!(s.rank_of(ConnId(10)), Some(2));
    }

    #[test]
    fn rejects_out_of_range_duplicate_and_missing_initack() {
        let mut s = KvsServer::new(2, "kvs");
        connect(&mut s, 1, 5);
        assert_eq!(sent(&mut s), vec![(1, "CLOSE".into())]);
        assert!(
            matches!(&events(&mut s)[..], [ServerEvent::Rejected { reason, .. }] if reason.contains("out of range"))
        );
        connect(&mut s, 2, 0);
        sent(&mut s);
        connect(&mut s, 3, 0);
        assert_eq!(sent(&mut s), vec![(3, "CLOSE".into())]);
        s.handle_connect(ConnId(4));
        s.handle_line(ConnId(4), b"cmd=init pmi_version=1 pmi_subversion=1\n");
        assert_eq!(sent(&mut s), vec![(4, "CLOSE".into())]);
        s.handle_line(ConnId(2), b"garbage\n");
        assert_eq!(sent(&mut s), vec![(2, "CLOSE".into())]);
    }

    #[test]
    fn put_barrier_get_abort_finalize() {
        let mut s = KvsServer::new(2, "kvs");
        connect(&mut s, 0, 0);
        connect(&mut s, 1, 1);
        sent(&mut s);
        assert_eq!(
            events(&mut s),
            vec![
                ServerEvent::Identified { rank: 0 },
                ServerEvent::Identified { rank: 1 }
            ]
        );
        s.handle_line(ConnId(0), b"cmd=init pmi_version=1 pmi_subversion=1\n");
        assert_eq!(
            sent(&mut s),
            vec![(
                0,
                "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0".into()
            )]
        );
        assert_eq!(events(&mut s), vec![ServerEvent::Initialized { rank: 0 }]);
        s.handle_line(ConnId(0), b"cmd=put kvsname=kvs key=a value=x=1\n");
        assert_eq!(
            sent(&mut s),
            vec![(0, "cmd=put_result rc=0 msg=success".into())]
        );
        s.handle_line(ConnId(0), b"cmd=put kvsname=other key=a value=1\n");
        assert_eq!(
            sent(&mut s),
            vec![(0, "cmd=put_result rc=-1 msg=unknown_kvsname".into())]
        );
        s.handle_line(ConnId(1), b"cmd=barrier_in\n");
        assert!(sent(&mut s).is_empty());
        s.handle_line(ConnId(0), b"cmd=barrier_in\n");
        assert_eq!(
            sent(&mut s),
            vec![(0, "cmd=barrier_out".into()), (1, "cmd=barrier_out".into())]
        );
        s.handle_line(ConnId(1), b"cmd=get kvsname=kvs key=a\n");
        assert_eq!(
            sent(&mut s),
            vec![(1, "cmd=get_result rc=0 msg=success value=x=1".into())]
        );
        s.handle_line(ConnId(1), b"cmd=get kvsname=kvs key=b\n");
        assert_eq!(
            sent(&mut s),
            vec![(1, "cmd=get_result rc=-1 msg=key_b_not_found".into())]
        );
        s.handle_line(ConnId(1), b"cmd=get_universe_size\n");
        s.handle_line(ConnId(1), b"cmd=get_appnum\n");
        assert_eq!(
            sent(&mut s),
            vec![
                (1, "cmd=universe_size size=2".into()),
                (1, "cmd=appnum appnum=0".into())
            ]
        );
        s.handle_line(ConnId(1), b"cmd=abort exitcode=7\n");
        assert_eq!(
            events(&mut s),
            vec![ServerEvent::Aborted {
                rank: 1,
                code: 7,
                message: None
            }]
        );
        s.handle_line(ConnId(0), b"cmd=finalize\n");
        assert_eq!(sent(&mut s), vec![(0, "cmd=finalize_ack".into())]);
        s.handle_disconnect(ConnId(0));
        assert_eq!(
            events(&mut s),
            vec![
                ServerEvent::Finalized { rank: 0 },
                ServerEvent::Disconnected {
                    rank: 0,
                    finalized: true
                }
            ]
        );
    }

    #[test]
    fn disconnect_leaves_barrier() {
        let mut s = KvsServer::new(2, "kvs");
        connect(&mut s, 0, 0);
        connect(&mut s, 1, 1);
        sent(&mut s);
        s.handle_line(ConnId(0), b"cmd=barrier_in\n");
        s.handle_disconnect(ConnId(0));
        assert_eq!(s.in_barrier().count(), 0);
        s.handle_line(ConnId(1), b"cmd=barrier_in\n");
        assert!(sent(&mut s).is_empty());
    }
}
