//! Stray connections to a rank's listening ports must be refused (with a warning naming the
//! peer address) without disturbing the job.
//!
//! Rank 0 finds its own TCP listeners (the inodes of its socket fds in `/proc/self/fd`,
//! matched against LISTEN entries of `/proc/self/net/tcp{,6}`), then opens to each:
//! - `garbage`: 64 random bytes;
//! - `wrong-key`: a well-formed hello with a wrong job key and an out-of-range rank;
//! - `wrong-key-valid-rank`: a well-formed hello with a wrong key claiming rank 1 (or size-1);
//! - `partial`: 12 bytes of a hello, then end of stream;
//! - `silent`: connects, sends nothing (closed by us later).
//!
//! Meanwhile every rank keeps exchanging messages (ring and all pairs, eager and rendezvous).
//! Rank 0 checks that the runtime closed the first four (the server side of each is gone or
//! closed), then closes `silent` and checks that the runtime closed its side too, and the job
//! goes on and exits 0. For each stray rank 0 prints `stray KIND from ADDR` so the test can
//! look for the refusal warnings on stderr.
//!
//! Usage: `mpirun -n N p2p_stray [ROUNDS]`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use braid::traits::*;
use braid_tests::{Check, OrFail, check_pattern, ensure, pattern, run_rank, salt_of};
use rand::RngCore;

fn main() {
    let rounds: u64 = braid_tests::arg(1, 20);
    run_rank("p2p_stray", |world| {
        exchange(world, rounds, 0)?;
        let strays = if world.rank() == 0 {
            open_strays(world.size())?
        } else {
            Vec::new()
        };
        // Traffic while the refusals are being handled.
        exchange(world, rounds, 1)?;
        if world.rank() == 0 {
            check_strays(world, strays)?;
        }
        exchange(world, rounds, 2)?;
        world.barrier().or_fail("final barrier")
    });
}

struct Stray {
    kind: &'static str,
    stream: TcpStream,
    /// Address of the listener it connected to.
    server: SocketAddr,
    /// Its own address (what the runtime sees as the peer).
    local: SocketAddr,
}

/// One entry of `/proc/self/net/tcp{,6}`.
#[derive(Debug)]
struct Entry {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
    inode: u64,
}

fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut b = [0u8; 16];
            for w in 0..4 {
                let word = u32::from_str_radix(&ip[8 * w..8 * w + 8], 16).ok()?;
                b[4 * w..4 * w + 4].copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn tcp_table() -> Vec<Entry> {
    let mut out = Vec::new();
    for f in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let v: Vec<&str> = line.split_whitespace().collect();
            if v.len() < 10 {
                continue;
            }
            if let (Some(local), Some(remote), Ok(state), Ok(inode)) = (
                parse_addr(v[1]),
                parse_addr(v[2]),
                u8::from_str_radix(v[3], 16),
                v[9].parse(),
            ) {
                out.push(Entry {
                    local,
                    remote,
                    state,
                    inode,
                });
            }
        }
    }
    out
}

fn my_socket_inodes() -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let s = l.to_string_lossy().into_owned();
            s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// This process's listening TCP addresses, with unspecified addresses made loopback.
fn my_listeners() -> Vec<SocketAddr> {
    let inodes = my_socket_inodes();
    tcp_table()
        .into_iter()
        .filter(|e| e.state == 0x0A && inodes.contains(&e.inode))
        .map(|e| {
            let ip = match e.local.ip() {
                IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            SocketAddr::new(ip, e.local.port())
        })
        .collect()
}

fn hello(key: [u8; 16], rank: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(b"BRAIDv01");
    h[8..24].copy_from_slice(&key);
    h[24..28].copy_from_slice(&rank.to_le_bytes());
    h
}

fn open_strays(size: i32) -> Check<Vec<Stray>> {
    let listeners = my_listeners();
    ensure(!listeners.is_empty(), || {
        "found no listening socket of my own in /proc/self/net/tcp".into()
    })?;
    let mut rng = rand::thread_rng();
    let mut key = [0u8; 16];
    rng.fill_bytes(&mut key);
    let valid_rank = if size > 1 { 1 } else { 0 };
    let mut strays = Vec::new();
    for &server in &listeners {
        let mut garbage = [0u8; 64];
        rng.fill_bytes(&mut garbage);
        garbage[0] = b'X';
        let full = hello(key, 999_999);
        let wrong_valid = hello(key, valid_rank);
        let plan: [(&'static str, &[u8], bool); 5] = [
            ("garbage", &garbage[..], false),
            ("wrong-key", &full[..], false),
            ("wrong-key-valid-rank", &wrong_valid[..], false),
            ("partial", &full[..12], true),
            ("silent", &[], false),
        ];
        for (kind, bytes, shut) in plan {
            let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))
                .or_fail(format!("stray {kind}: connect to my listener {server}"))?;
            stream
                .write_all(bytes)
                .or_fail(format!("stray {kind}: write"))?;
            if shut {
                stream.shutdown(Shutdown::Write).or_fail("shutdown")?;
            }
            let local = stream.local_addr().or_fail("local_addr")?;
            println!("stray {kind} from {local} to {server}");
            strays.push(Stray {
                kind,
                stream,
                server,
                local,
            });
        }
    }
    Ok(strays)
}

/// Whether the runtime still holds an open server-side socket for this stray.
fn server_side_open(s: &Stray) -> bool {
    tcp_table().iter().any(|e| {
        e.local.port() == s.server.port()
            && e.remote.port() == s.local.port()
            // ESTABLISHED or CLOSE_WAIT: the runtime has not closed it.
            && (e.state == 0x01 || e.state == 0x08)
    })
}

/// Makes Braid progress (accepts, hello reads) without taking any message.
fn progress(world: &braid::SimpleCommunicator) -> Check {
    world
        .any_process()
        .immediate_probe_with_tag(424_242)
        .or_fail("iprobe")
        .map(drop)
}

fn wait_closed(world: &braid::SimpleCommunicator, s: &Stray) -> Check {
    let deadline = Instant::now() + Duration::from_secs(8);
    while server_side_open(s) {
        ensure(Instant::now() < deadline, || {
            format!(
                "stray {} from {} still open on the runtime's side after 8 s",
                s.kind, s.local
            )
        })?;
        progress(world)?;
        std::thread::yield_now();
    }
    Ok(())
}

fn check_strays(world: &braid::SimpleCommunicator, strays: Vec<Stray>) -> Check {
    let mut silent = Vec::new();
    for mut s in strays {
        if s.kind == "silent" {
            // Not refused for a while (it may still send its hello).
            progress(world)?;
            ensure(server_side_open(&s), || {
                "silent stray was closed at once".into()
            })?;
            silent.push(s);
            continue;
        }
        wait_closed(world, &s)?;
        // Our side sees the end of stream (or a reset, for unread garbage).
        s.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .or_fail("set_read_timeout")?;
        let mut b = [0u8; 16];
        match s.stream.read(&mut b) {
            Ok(0) | Err(_) => {}
            Ok(n) => {
                return Err(format!(
                    "stray {}: the runtime sent {n} bytes: {:?}",
                    s.kind,
                    &b[..n]
                ));
            }
        }
    }
    for s in silent {
        let probe = Stray {
            kind: s.kind,
            stream: s.stream.try_clone().or_fail("try_clone")?,
            server: s.server,
            local: s.local,
        };
        drop(s);
        drop(probe.stream.shutdown(Shutdown::Both));
        wait_closed(world, &probe)?;
    }
    Ok(())
}

fn exchange(world: &braid::SimpleCommunicator, rounds: u64, phase: u64) -> Check {
    let (rank, n) = (world.rank(), world.size());
    let next = world.process_at_rank((rank + 1) % n);
    let prev = world.process_at_rank((rank + n - 1) % n);
    for round in 0..rounds {
        let size = [0usize, 100, 70_000, 300_000][round as usize % 4];
        let out = pattern(size, salt_of(&[rank as u64, round, phase]));
        let mut got = vec![0u8; size];
        let st = braid::point_to_point::send_receive_into(&out[..], &next, &mut got[..], &prev)
            .or_fail(format!(
                "phase {phase} round {round}: ring exchange of {size} B"
            ))?;
        ensure(st.count_bytes() == size, || format!("ring status {st:?}"))?;
        check_pattern(&got, salt_of(&[((rank + n - 1) % n) as u64, round, phase]))
            .map_err(|e| format!("phase {phase} round {round}: {e}"))?;
    }
    Ok(())
}
