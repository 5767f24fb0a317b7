//! Collectives, communicators, groups, topologies and datatypes end to end: real jobs of 1..8
//! ranks through `mpirun`, each running every check of `coll_all` (results compared with a
//! sequential reference computed locally), under default thresholds, forced algorithms
//! (tiny thresholds), and pretend multi-host layouts (two-level algorithms).
//!
//! Needs the binaries: `cargo build --workspace --bins` (same profile) first.

use std::process::Command;
use std::time::Duration;

use braid_tests::{Finished, binary, mpirun, run_with_deadline};

const DEADLINE: Duration = Duration::from_secs(120);

fn job(n: u32, env: &[(&str, &str)], args: &[&str]) -> Finished {
    let mut cmd = Command::new(mpirun());
    cmd.arg("-n").arg(n.to_string());
    for (k, v) in env {
        cmd.arg("-x").arg(format!("{k}={v}"));
    }
    cmd.arg(binary("coll_all")).args(args);
    run_with_deadline(&mut cmd, DEADLINE)
}

fn assert_all_ok(n: u32, f: &Finished, what: &str) {
    let oks = f
        .stdout
        .lines()
        .filter(|l| l.starts_with("coll_all ok rank"))
        .count();
    assert!(
        f.code() == Some(0) && oks == n as usize,
        "{what}, {n} ranks: exit {:?}, {oks} ranks ok\nstdout:\n{}\nstderr:\n{}",
        f.code(),
        f.stdout,
        f.stderr
    );
}

#[test]
fn every_collective_on_1_to_8_ranks() {
    for n in 1..=8 {
        let f = job(n, &[], &[]);
        assert_all_ok(n, &f, "default thresholds");
    }
}

/// Tiny thresholds force the long-message algorithms: scatter-allgather bcast, Rabenseifner
/// (power-of-two) and ring (other sizes) allreduce, ring allgather, linear gather/scatter.
#[test]
fn long_message_algorithms_forced() {
    let env = [
        ("BRAID_COLL_HIERARCHY", "0"),
        ("BRAID_COLL_ALLREDUCE_SHORT", "64"),
        ("BRAID_COLL_BCAST_LONG", "64"),
        ("BRAID_COLL_ALLGATHER_SHORT", "16"),
        ("BRAID_COLL_GATHER_SHORT", "16"),
    ];
    for n in [3, 6, 8] {
        assert_all_ok(n, &job(n, &env, &[]), "forced long algorithms");
    }
}

/// Two-level (host-aware) barrier, bcast, reduce and allreduce over pretend hosts.
#[test]
fn hierarchical_algorithms_on_pretend_hosts() {
    for (n, hosts) in [(4, "2"), (5, "2"), (7, "3")] {
        assert_all_ok(
            n,
            &job(n, &[("BRAID_COLL_FAKE_HOSTS", hosts)], &[]),
            "pretend hosts",
        );
    }
    let env = [
        ("BRAID_COLL_FAKE_HOSTS", "3"),
        ("BRAID_COLL_ALLREDUCE_SHORT", "64"),
        ("BRAID_COLL_BCAST_LONG", "64"),
    ];
    assert_all_ok(6, &job(6, &env, &[]), "pretend hosts, long algorithms");
}

/// 16 MiB broadcast and allreduce.
#[test]
fn large_buffers() {
    assert_all_ok(5, &job(5, &[], &["big"]), "16 MiB buffers");
}

#[test]
fn info_reports_thresholds() {
    let f = run_with_deadline(
        Command::new(binary("braid-info")).env("BRAID_COLL_ALLREDUCE_SHORT", "4k"),
        Duration::from_secs(10),
    );
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    assert!(
        f.stdout.contains("BRAID_COLL_ALLREDUCE_SHORT=4096"),
        "{}",
        f.stdout
    );
}
