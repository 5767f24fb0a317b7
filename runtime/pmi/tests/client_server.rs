//! The client against the real threaded server over TCP on 127.0.0.1, and against a scripted
//! peer over a socketpair.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use braid_pmi::{Handshake, KvsServer, PmiClient, PmiError, ServerEvent, ThreadedServer};

const T: Duration = Duration::from_secs(10);

fn start(size: u32) -> ThreadedServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    ThreadedServer::spawn(listener, KvsServer::new(size, "kvs_test")).unwrap()
}

#[test]
fn three_clients_put_barrier_get() {
    let server = start(3);
    let addr = server.local_addr().to_string();
    let handles: Vec<_> = (0..3u32)
        .map(|id| {
            let addr = addr.clone();
            thread::spawn(move || {
                let mut c = PmiClient::connect(&addr, id, T).unwrap();
                assert_eq!(c.rank(), id);
                assert_eq!(c.size(), 3);
                assert_eq!(c.kvsname(), "kvs_test");
                assert_eq!(c.maxes().vallen_max, 1024);
                c.put(
                    &format!("card{id}"),
                    &format!("tcp:127.0.0.1:{}", 4000 + id),
                )
                .unwrap();
                c.barrier().unwrap();
                let next = (id + 1) % 3;
                assert_eq!(
                    c.get(&format!("card{next}")).unwrap(),
                    format!("tcp:127.0.0.1:{}", 4000 + next)
                );
                match c.get("nope") {
                    Err(PmiError::KeyNotFound { key, .. }) => assert_eq!(key, "nope"),
                    other => panic!("expected KeyNotFound, got {other:?}"),
                }
                assert!(matches!(c.put("k", "has space"), Err(PmiError::Usage(_))));
                assert!(matches!(c.put("k", "new\nline"), Err(PmiError::Usage(_))));
                assert_eq!(c.universe_size().unwrap(), 3);
                assert_eq!(c.appnum().unwrap(), 0);
                c.barrier().unwrap();
                c.finalize().unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut finalized = 0;
    while let Ok(ev) = server.events().recv_timeout(Duration::from_millis(500)) {
        if matches!(ev, ServerEvent::Finalized { .. }) {
            finalized += 1;
        }
    }
    assert_eq!(finalized, 3);
}

#[test]
fn out_of_range_id_is_rejected() {
    let server = start(2);
    let err = PmiClient::connect(&server.local_addr().to_string(), 5, T).unwrap_err();
    assert!(matches!(err, PmiError::Closed { .. }), "{err}");
    let ev = server.events().recv_timeout(T).unwrap();
    assert!(matches!(ev, ServerEvent::Rejected { .. }), "{ev:?}");
}

#[test]
fn connect_error_names_address() {
    // Bind then drop to get a port that is very likely closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = PmiClient::connect(&format!("127.0.0.1:{port}"), 0, T).unwrap_err();
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn abort_reaches_server() {
    let server = start(1);
    let mut c = PmiClient::connect(&server.local_addr().to_string(), 0, T).unwrap();
    c.abort(7, "").unwrap();
    loop {
        match server.events().recv_timeout(T).unwrap() {
            ServerEvent::Aborted {
                rank: 0, code: 7, ..
            } => break,
            ServerEvent::Initialized { .. } | ServerEvent::Identified { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A scripted peer on a socketpair: `PMI_FD` style (no initack), then a barrier that never
/// completes, which must time out naming the command.
#[test]
fn socketpair_known_rank_and_barrier_timeout() {
    let (a, b) = UnixStream::pair().unwrap();
    let peer = thread::spawn(move || {
        let mut r = BufReader::new(b.try_clone().unwrap());
        let mut w = b;
        let mut line = String::new();
        let mut expect = |want: &str, reply: &str| {
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.starts_with(want), "got {line:?}, want {want:?}");
            if !reply.is_empty() {
                w.write_all(reply.as_bytes()).unwrap();
            }
        };
        expect(
            "cmd=init pmi_version=1",
            "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n",
        );
        expect(
            "cmd=get_maxes",
            "cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024\n",
        );
        expect("cmd=get_my_kvsname", "cmd=my_kvsname kvsname=kvs_hydra\n");
        expect("cmd=barrier_in", "");
        expect(
            "cmd=get kvsname=kvs_hydra key=x",
            "cmd=get_result rc=0 msg=success\n",
        );
        expect("cmd=put kvsname=kvs_hydra key=y value=1", "cmd=bogus\n");
        expect("cmd=get_appnum", "not a pmi line\n");
    });
    let mut c = PmiClient::from_stream(
        a.into(),
        Handshake::Known { rank: 1, size: 4 },
        Duration::from_millis(200),
    )
    .unwrap();
    assert_eq!((c.rank(), c.size(), c.kvsname()), (1, 4, "kvs_hydra"));
    let err = c.barrier().unwrap_err();
    assert!(
        matches!(&err, PmiError::Timeout { command, .. } if command == "barrier_in"),
        "{err}"
    );
    c.set_timeout(T);
    let err = c.get("x").unwrap_err();
    assert!(
        matches!(err, PmiError::Unexpected { .. }),
        "missing value field: {err}"
    );
    let err = c.put("y", "1").unwrap_err();
    assert!(matches!(err, PmiError::Unexpected { .. }), "{err}");
    let err = c.appnum().unwrap_err();
    assert!(matches!(err, PmiError::Malformed { .. }), "{err}");
    peer.join().unwrap();
    let err = c.barrier().unwrap_err();
    assert!(
        matches!(err, PmiError::Closed { .. } | PmiError::Io { .. }),
        "{err}"
    );
}
