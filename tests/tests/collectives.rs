//! Collectives, communicators, groups, topologies and datatypes end to end: real jobs of 1..8
//! ranks through `mpirun`, each running every check of `coll_all` (results compared with a
//! sequential reference computed locally), under default thresholds (one-host jobs: the
//! shared-memory component), with that component off, forced point-to-point algorithms (tiny
//! thresholds), and pretend multi-host layouts (two-level algorithms); and `coll_shm`, the
//! shared-memory component under stress, against the same program with the component off.
//!
//! Needs the binaries: `cargo build --workspace --bins` (same profile) first.

use std::process::Command;
use std::time::Duration;

use braid_tests::{Finished, binary, mpirun, run_with_deadline};

const DEADLINE: Duration = Duration::from_secs(120);

fn job(n: u32, env: &[(&str, &str)], args: &[&str]) -> Finished {
    job_of("coll_all", n, env, args)
}

fn job_of(bin: &str, n: u32, env: &[(&str, &str)], args: &[&str]) -> Finished {
    let mut cmd = Command::new(mpirun());
    cmd.arg("-n").arg(n.to_string());
    cmd.arg("--timeout").arg(DEADLINE.as_secs().to_string());
    for (k, v) in env {
        cmd.arg("-x").arg(format!("{k}={v}"));
    }
    cmd.arg(binary(bin)).args(args);
    run_with_deadline(&mut cmd, DEADLINE + Duration::from_secs(10))
}

fn assert_all_ok(n: u32, f: &Finished, what: &str) {
    assert_ok_as("coll_all", n, f, what);
}

fn assert_ok_as(bin: &str, n: u32, f: &Finished, what: &str) {
    let oks = f
        .stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{bin} ok rank")))
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

/// The point-to-point algorithms on one host (the shared-memory component off).
#[test]
fn every_collective_with_the_shared_memory_component_off() {
    for n in [2, 3, 8] {
        let f = job(n, &[("BRAID_COLL_SHM", "0")], &[]);
        assert_all_ok(n, &f, "BRAID_COLL_SHM=0");
    }
}

/// Tiny thresholds force the long-message algorithms: scatter-allgather bcast, Rabenseifner
/// (power-of-two) and ring (other sizes) allreduce, ring allgather, linear gather/scatter.
#[test]
fn long_message_algorithms_forced() {
    let env = [
        ("BRAID_COLL_SHM", "0"),
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

/// 16 MiB broadcast and allreduce (point-to-point beyond `BRAID_COLL_SHM_MAX`, and pipelined
/// through the shared-memory slots with the limit raised).
#[test]
fn large_buffers() {
    assert_all_ok(5, &job(5, &[], &["big"]), "16 MiB buffers");
    let env = [("BRAID_COLL_SHM_MAX", "64m")];
    assert_all_ok(3, &job(3, &env, &["big"]), "16 MiB buffers, shared memory");
}

/// The line `key value` a rank printed.
fn printed<'a>(f: &'a Finished, key: &str) -> Option<&'a str> {
    f.stdout
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
}

/// Names in /dev/shm that belong to the job of `f`.
fn segments_of(f: &Finished) -> Vec<String> {
    let Some(job) = printed(f, "job") else {
        return vec!["(the job printed no id)".into()];
    };
    let prefix = format!("braid-{job}-");
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `coll_shm` (which prints a digest of its results) as `what`, checks that it passed
/// and left nothing in /dev/shm, and returns the digest.
fn coll_shm_digest(n: u32, env: &[(&str, &str)], args: &[&str], what: &str) -> Option<String> {
    let f = job_of("coll_shm", n, env, args);
    assert_ok_as("coll_shm", n, &f, what);
    let left = segments_of(&f);
    assert!(left.is_empty(), "{what}: left in /dev/shm: {left:?}");
    printed(&f, "digest").map(str::to_owned)
}

/// The shared-memory component against the point-to-point path: long runs of alternating
/// sizes across slot boundaries (small slots: many pipelined chunks), interleaved
/// communicators, regions unlinked while mapped and unmapped when freed, identical results
/// with the component on and off, nothing left in /dev/shm.
#[test]
fn shared_memory_component_matches_point_to_point() {
    // Broadcasts, allgathers, gathers and scatters from 8 KiB go by single-copy transfers,
    // unless BRAID_SHM_CMA is off; from BRAID_COLL_SHM_SPLIT (32 KiB) both ends copy; reduces
    // on two ranks from BRAID_COLL_SHM_PAIR_MIN (64 KiB) split the folding. The last cases
    // move those thresholds: never split, and split from 4 KiB blocks.
    let cases = [
        (2, "1k", "on", "32k", "64k"),
        (3, "1k", "on", "32k", "64k"),
        (5, "2k", "on", "32k", "64k"),
        (4, "32k", "on", "32k", "64k"),
        (3, "32k", "off", "32k", "64k"),
        (2, "32k", "on", "1g", "1g"),
        (2, "4k", "on", "4k", "8k"),
        (3, "4k", "on", "4k", "8k"),
    ];
    for (n, slot, cma, split, pair) in cases {
        let mut digests = Vec::new();
        for shm in ["1", "0"] {
            let env = [
                ("BRAID_COLL_SHM", shm),
                ("BRAID_COLL_SHM_SLOT", slot),
                ("BRAID_SHM_CMA", cma),
                ("BRAID_COLL_SHM_SPLIT", split),
                ("BRAID_COLL_SHM_PAIR_MIN", pair),
            ];
            let what = format!(
                "coll_shm, BRAID_COLL_SHM={shm}, slot {slot}, CMA {cma}, split {split}, pair {pair}"
            );
            digests.push(coll_shm_digest(n, &env, &[], &what));
        }
        assert!(digests[0].is_some(), "{n} ranks: no digest");
        assert_eq!(
            digests[0], digests[1],
            "{n} ranks: results differ on and off"
        );
    }
}

/// The blocking two-level barrier, bcast, reduce and allreduce over pretend hosts run their
/// intra-host phases through the shared-memory component (each rank maps its host's region,
/// which `coll_shm` checks), with results identical to the component forced off (every phase
/// point-to-point), and nothing left in /dev/shm.
#[test]
fn hierarchical_intra_host_phases_use_shared_memory() {
    for (n, hosts) in [(4, "2"), (7, "3")] {
        let mut digests = Vec::new();
        for shm in ["1", "0"] {
            let env = [("BRAID_COLL_FAKE_HOSTS", hosts), ("BRAID_COLL_SHM", shm)];
            let what = format!("coll_shm, {hosts} pretend hosts, BRAID_COLL_SHM={shm}");
            digests.push(coll_shm_digest(n, &env, &["quick"], &what));
        }
        assert!(digests[0].is_some(), "{n} ranks: no digest");
        assert_eq!(
            digests[0], digests[1],
            "{n} ranks over {hosts} pretend hosts: results differ on and off"
        );
    }
}

/// 8 ranks on fewer cores: waits yield, and the job still finishes promptly.
#[test]
fn shared_memory_component_oversubscribed() {
    let f = job_of("coll_shm", 8, &[("BRAID_COLL_SHM_SLOT", "4k")], &["quick"]);
    assert_ok_as("coll_shm", 8, &f, "coll_shm, 8 ranks");
    assert!(segments_of(&f).is_empty(), "left in /dev/shm");
    assert!(
        f.elapsed < Duration::from_secs(60),
        "8 oversubscribed ranks took {:?}",
        f.elapsed
    );
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

/// A rank that dies while the others wait for it in shared-memory barriers ends the job
/// promptly, with its status (the launcher saw it first) or with a waiter's report of the lost
/// peer (a waiter saw it first), and nothing is left in /dev/shm.
#[test]
fn shared_memory_component_dead_rank() {
    let f = job_of("coll_shm", 3, &[], &["die"]);
    let waiter_saw_it = f.code() == Some(1) && f.stderr.contains("rank 2 is lost");
    assert!(
        f.code() == Some(3) || waiter_saw_it,
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        f.code(),
        f.stdout,
        f.stderr
    );
    assert!(f.elapsed < Duration::from_secs(30), "took {:?}", f.elapsed);
    assert!(segments_of(&f).is_empty(), "left in /dev/shm");
}
