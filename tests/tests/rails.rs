//! Rail modes of the TCP transport on the namespace testbed: content-checked transfers in
//! every mode (`single`, `indep`, `stripe`, `weighted`) with the per-interface byte counters
//! showing which rails carried them, a rail taken down in the middle of a transfer (the job
//! completes with correct data; in `indep` the pairs of that rail move to another one), the
//! last rail taken down (the job fails promptly, naming host and rail), and bad settings
//! (clear errors).
//!
//! Needs root for the testbed tests (they print `SKIPPED: ...` and pass otherwise) and the
//! binaries `mpirun`, `p2p_large`, `p2p_wildcard` and `rail_stream`: `cargo build --release
//! --workspace --bins` first. Every test uses its own testbed name and address base, so they
//! run in parallel; each sweeps leftovers of its name first. All traffic stays inside
//! 10.77.0.0/16 (or loopback).

use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use braid_tests::{Finished, binary, mpirun, run_with_deadline, skipped, unique_marker};
use braid_xen::{Spec, Testbed, root_available};

const FOUR: &[&str] = &["eth1", "eth2", "eth3", "eth4"];
const JOB_DEADLINE: Duration = Duration::from_secs(60);

/// Whether namespace tests can run; prints the `SKIPPED` line if not.
fn can_run(test: &str) -> bool {
    match root_available() {
        Ok(()) => true,
        Err(why) => {
            skipped(test, &why);
            false
        }
    }
}

/// A testbed of two hosts (one slot each: ranks alternate between them) and its spec file;
/// dropping it tears the testbed down and removes the file.
struct Bed {
    tb: Testbed,
    dir: PathBuf,
    path: PathBuf,
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bed(name: &str, base: u8, rails: &[(&str, &str)]) -> Bed {
    let mut t = format!("name = \"{name}\"\nbond = \"none\"\n[addresses]\nbase = {base}\n");
    for (r, rate) in rails {
        t.push_str(&format!("[[rails]]\nname = \"{r}\"\nrate = \"{rate}\"\n"));
    }
    for h in 0..2 {
        t.push_str(&format!("[[hosts]]\nname = \"n{h}\"\nslots = 1\n"));
    }
    let spec = Spec::parse(&t).expect("test spec is valid");
    Testbed::down_by_name(&spec.name).expect("sweep");
    let tb = Testbed::up(&spec).unwrap_or_else(|e| panic!("up {name}: {e}"));
    let dir = std::env::temp_dir().join(unique_marker(name));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("spec.toml");
    std::fs::write(&path, &t).expect("write spec");
    Bed { tb, dir, path }
}

fn gigabit(rails: &[&'static str]) -> Vec<(&'static str, &'static str)> {
    rails.iter().map(|r| (*r, "1gbit")).collect()
}

/// Bytes sent so far on each rail of `host`.
fn tx_bytes(b: &Bed, host: &str, rails: &[&str]) -> Vec<u64> {
    rails
        .iter()
        .map(|r| {
            let path = format!("/sys/class/net/{r}/statistics/tx_bytes");
            let o = b.tb.exec(host, &["cat", &path]).expect("cat tx_bytes");
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("tx_bytes of {r} on {host}: {o:?}"))
        })
        .collect()
}

/// Bytes both hosts sent on each rail while `f` ran.
fn traffic(b: &Bed, rails: &[&str], f: impl FnOnce()) -> Vec<u64> {
    let before: Vec<u64> = ["n0", "n1"]
        .iter()
        .map(|h| tx_bytes(b, h, rails))
        .fold(vec![0; rails.len()], |a, v| {
            a.iter().zip(v).map(|(x, y)| x + y).collect()
        });
    f();
    let after: Vec<u64> = ["n0", "n1"]
        .iter()
        .map(|h| tx_bytes(b, h, rails))
        .fold(vec![0; rails.len()], |a, v| {
            a.iter().zip(v).map(|(x, y)| x + y).collect()
        });
    after.iter().zip(&before).map(|(a, b)| a - b).collect()
}

/// `mpirun --testbed` with `n` ranks, the rails and mode, and extra `-x` settings.
fn job(
    b: &Bed,
    n: u32,
    mode: &str,
    rails: &str,
    env: &[&str],
    prog: &str,
    args: &[&str],
) -> Command {
    let mut c = Command::new(mpirun());
    c.arg("--testbed")
        .arg(&b.path)
        .args(["-n", &n.to_string(), "--timeout", "50"])
        .args(["-x", &format!("BRAID_RAILS={rails}")])
        .args(["-x", &format!("BRAID_RAIL_MODE={mode}")]);
    for e in env {
        c.args(["-x", e]);
    }
    c.arg(binary(prog)).args(args);
    c
}

fn assert_ok(f: &Finished, what: &str) {
    assert_eq!(
        f.code(),
        Some(0),
        "{what}: stdout:\n{}\nstderr:\n{}",
        f.stdout,
        f.stderr
    );
}

/// Runs the content-checked programs in `mode` over four rails; returns bytes per rail.
fn checked_transfers(b: &Bed, mode: &str, wildcard_ranks: u32) -> Vec<u64> {
    let rails = FOUR.join(",");
    traffic(b, FOUR, || {
        let f = run_with_deadline(
            &mut job(b, 2, mode, &rails, &[], "p2p_large", &["16"]),
            JOB_DEADLINE,
        );
        assert_ok(&f, &format!("{mode}: p2p_large 16"));
        let count = if wildcard_ranks > 4 { "60" } else { "200" };
        let f = run_with_deadline(
            &mut job(
                b,
                wildcard_ranks,
                mode,
                &rails,
                &[],
                "p2p_wildcard",
                &["11", count, "all"],
            ),
            JOB_DEADLINE,
        );
        assert_ok(&f, &format!("{mode}: p2p_wildcard"));
    })
}

fn shares(bytes: &[u64]) -> Vec<f64> {
    let total: u64 = bytes.iter().sum();
    bytes
        .iter()
        .map(|b| *b as f64 / total.max(1) as f64)
        .collect()
}

#[test]
fn single_mode_moves_checked_data_on_rail_zero_only() {
    if !can_run("single_mode_moves_checked_data_on_rail_zero_only") {
        return;
    }
    let b = bed("rlsingle", 227, &gigabit(FOUR));
    let bytes = checked_transfers(&b, "single", 4);
    let s = shares(&bytes);
    eprintln!("single: bytes per rail {bytes:?}");
    assert!(
        bytes[0] > 50 << 20 && s[0] > 0.95,
        "single mode used other rails: {bytes:?}"
    );
}

#[test]
fn indep_mode_spreads_process_pairs_over_every_rail() {
    if !can_run("indep_mode_spreads_process_pairs_over_every_rail") {
        return;
    }
    let b = bed("rlindep", 229, &gigabit(FOUR));
    // 8 ranks alternate between the hosts: local ranks 0..3 on each, so the cross-host pairs
    // cover min(local ranks) = 0..3, one rail each.
    // (p2p_large runs on ranks 0 and 1 only: rail 0.) Pairs with min(local ranks) = 0 are the
    // most numerous, so rail 0 carries most.
    let bytes = checked_transfers(&b, "indep", 8);
    eprintln!("indep: bytes per rail {bytes:?}");
    assert!(
        bytes.iter().all(|b| *b > 1 << 20),
        "indep left a rail unused: {bytes:?}"
    );
}

#[test]
fn stripe_mode_spreads_data_over_every_rail() {
    if !can_run("stripe_mode_spreads_data_over_every_rail") {
        return;
    }
    let b = bed("rlstripe", 231, &gigabit(FOUR));
    let bytes = checked_transfers(&b, "stripe", 4);
    let s = shares(&bytes);
    eprintln!("stripe: bytes per rail {bytes:?}");
    assert!(
        s.iter().all(|x| *x > 0.12),
        "stripe share too small on a rail: {bytes:?}"
    );
}

#[test]
fn weighted_mode_spreads_data_over_every_rail() {
    if !can_run("weighted_mode_spreads_data_over_every_rail") {
        return;
    }
    let b = bed("rlweight", 233, &gigabit(FOUR));
    let bytes = checked_transfers(&b, "weighted", 4);
    let s = shares(&bytes);
    eprintln!("weighted: bytes per rail {bytes:?}");
    assert!(
        s.iter().all(|x| *x > 0.10),
        "weighted share too small on a rail: {bytes:?}"
    );
}

/// Takes `rail` of `host` down after `after` while `cmd` runs; returns how the job ended.
fn with_rail_down(b: &Bed, host: &str, rail: &str, after: Duration, cmd: &mut Command) -> Finished {
    with_link_changes(b, &[(host, rail, after, false)], cmd).0
}

/// Sets each `(host, rail)` down (`false`) or up (`true`) at its time from the start, in
/// order, while `cmd` runs. Returns how the job ended and, per change, the bytes both hosts
/// had sent on that rail just after it. Every rail changed is up again afterwards.
fn with_link_changes(
    b: &Bed,
    changes: &[(&str, &str, Duration, bool)],
    cmd: &mut Command,
) -> (Finished, Vec<u64>) {
    let (f, sent) = thread::scope(|s| {
        let changer = s.spawn(|| {
            let start = std::time::Instant::now();
            let mut sent = Vec::new();
            for (host, rail, at, up) in changes {
                thread::sleep(at.saturating_sub(start.elapsed()));
                b.tb.set_link(host, rail, *up)
                    .unwrap_or_else(|e| panic!("set {rail} of {host} up={up}: {e}"));
                sent.push(
                    ["n0", "n1"]
                        .iter()
                        .map(|h| tx_bytes(b, h, &[rail])[0])
                        .sum(),
                );
            }
            sent
        });
        let f = run_with_deadline(cmd, JOB_DEADLINE);
        (f, changer.join().expect("link changer thread"))
    });
    for (host, rail, _, _) in changes {
        b.tb.set_link(host, rail, true).expect("link up again");
    }
    (f, sent)
}

#[test]
fn rail_down_mid_transfer_fails_over_with_correct_data() {
    if !can_run("rail_down_mid_transfer_fails_over_with_correct_data") {
        return;
    }
    let b = bed("rlfail", 235, &gigabit(FOUR));
    let rails = FOUR.join(",");
    for (mode, rail) in [("stripe", "eth2"), ("weighted", "eth3")] {
        // 1 GiB at ~300-400 MB/s: the rail goes down in the middle.
        let mut cmd = job(
            &b,
            2,
            mode,
            &rails,
            &["BRAID_RAIL_TIMEOUT_MS=1000"],
            "rail_stream",
            &["1024", "4"],
        );
        let f = with_rail_down(&b, "n1", rail, Duration::from_millis(1200), &mut cmd);
        assert_ok(&f, &format!("{mode} with {rail} down"));
        assert!(
            f.stdout.contains("rail_stream received 1024 MiB"),
            "{mode}: {}",
            f.stdout
        );
        assert!(
            f.stderr.contains(&format!("lost rail {rail} (")) && f.stderr.contains("rail(s) left"),
            "{mode}: no rail-loss message for {rail}:\n{}",
            f.stderr
        );
        eprintln!(
            "{mode} with {rail} down: {}",
            f.stdout.lines().next().unwrap_or("")
        );
    }
}

#[test]
fn latency_rail_down_mid_pingpong_fails_over_with_correct_data() {
    if !can_run("latency_rail_down_mid_pingpong_fails_over_with_correct_data") {
        return;
    }
    // Small frames take the first rail and are kept (inline copies) until acknowledged, with
    // acknowledgements riding along with the frames of the other direction: losing that rail
    // in the middle of a ping-pong must lose none of them.
    let b = bed("rlfaillt", 239, &gigabit(FOUR));
    let rails = FOUR.join(",");
    for mode in ["stripe", "weighted"] {
        let mut cmd = job(
            &b,
            2,
            mode,
            &rails,
            &["BRAID_RAIL_TIMEOUT_MS=1000"],
            "rail_stream",
            &["pingpong", "4"],
        );
        let f = with_rail_down(&b, "n1", "eth1", Duration::from_millis(1500), &mut cmd);
        assert_ok(&f, &format!("{mode} pingpong with eth1 down"));
        assert!(
            f.stdout.contains("rail_stream pingpong"),
            "{mode}: {}",
            f.stdout
        );
        assert!(
            f.stderr.contains("lost rail eth1 (") && f.stderr.contains("rail(s) left"),
            "{mode}: no rail-loss message for eth1:\n{}",
            f.stderr
        );
        eprintln!(
            "{mode} pingpong with eth1 down: {}",
            f.stdout.lines().next().unwrap_or("")
        );
    }
}

#[test]
fn indep_rail_down_mid_stream_moves_its_pairs_to_another_rail() {
    if !can_run("indep_rail_down_mid_stream_moves_its_pairs_to_another_rail") {
        return;
    }
    // 4 ranks alternate between the hosts: pair (0, 1) has local ranks (0, 0), rail eth1;
    // pair (2, 3) has (1, 1), rail eth2. Both stream at once; eth1 goes down in the middle,
    // first on n1 (the side of the higher ranks, which connect: rank 1 sees its interface
    // down and connects on eth2), then, in a second job, on n0 (the side that waits: rank 1
    // notices by the stall of what it sends). The idle cross pairs (0, 3) and (2, 1), also
    // on eth1, move too and carry the final barrier.
    let b = bed("rlindepf", 226, &gigabit(&["eth1", "eth2"]));
    for host in ["n1", "n0"] {
        let mut cmd = job(
            &b,
            4,
            "indep",
            "eth1,eth2",
            &["BRAID_RAIL_TIMEOUT_MS=1000"],
            "rail_stream",
            &["pairs", "384"],
        );
        let f = with_rail_down(&b, host, "eth1", Duration::from_millis(1500), &mut cmd);
        assert_ok(&f, &format!("indep with eth1 down on {host}"));
        for (rx, tx) in [(1, 0), (3, 2)] {
            assert!(
                f.stdout.contains(&format!(
                    "rail_stream pairs: rank {rx} received 384 MiB from rank {tx}"
                )),
                "eth1 down on {host}: pair ({tx}, {rx}) incomplete:\n{}",
                f.stdout
            );
        }
        assert!(
            f.stderr.contains("lost rail eth1 (") && f.stderr.contains("failed over to rail eth2"),
            "eth1 down on {host}: no message naming the lost rail and the new one:\n{}",
            f.stderr
        );
        assert!(
            !f.stderr.contains("lost rail eth2"),
            "eth1 down on {host}: eth2 reported lost:\n{}",
            f.stderr
        );
        eprintln!(
            "indep with eth1 down on {host}: {}",
            f.stdout
                .lines()
                .filter(|l| l.contains("received"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
}

#[test]
fn indep_last_rail_down_ends_the_job_naming_host_and_rail() {
    if !can_run("indep_last_rail_down_ends_the_job_naming_host_and_rail") {
        return;
    }
    // The pair fails over from eth1 to eth2; when eth2 goes too, no rail is left.
    // Rails going down on n1 (rank 1, which connects) or on n0 (rank 0, which waits).
    let b = bed("rlindepl", 228, &gigabit(&["eth1", "eth2"]));
    for host in ["n1", "n0"] {
        let mut cmd = job(
            &b,
            2,
            "indep",
            "eth1,eth2",
            &["BRAID_RAIL_TIMEOUT_MS=1000"],
            "rail_stream",
            &["4096", "4"],
        );
        // The second rail goes only once the first failover is surely done: with eth1 down on
        // n0, rank 1 may be idle (waiting for data) and notice by keepalive, within the stall
        // timeout plus 3 probes a second apart.
        let changes = [
            (host, "eth1", Duration::from_millis(1000), false),
            (host, "eth2", Duration::from_millis(8000), false),
        ];
        let (f, _) = with_link_changes(&b, &changes, &mut cmd);
        assert_ne!(
            f.code(),
            Some(0),
            "{host}: job survived losing every rail:\n{}",
            f.stderr
        );
        assert_ne!(
            f.code(),
            Some(124),
            "{host}: job hung until mpirun's timeout:\n{}",
            f.stderr
        );
        assert!(
            f.elapsed < Duration::from_secs(25),
            "{host}: took {:?}",
            f.elapsed
        );
        assert!(
            f.stderr.contains("lost rail eth1 (") && f.stderr.contains("failed over to rail eth2"),
            "{host}: no failover from eth1 to eth2 before the end:\n{}",
            f.stderr
        );
        assert!(
            f.stderr.contains("FAILED")
                && f.stderr.contains("no rail left")
                && f.stderr.contains("rail eth2")
                && (f.stderr.contains("host rlindepl-n1") || f.stderr.contains("host rlindepl-n0")),
            "{host}: error does not name host and rail:\n{}",
            f.stderr
        );
        eprintln!(
            "indep, every rail down on {host}: failed after {:?}",
            f.elapsed
        );
    }
}

#[test]
fn rail_back_up_is_readopted_in_stripe_and_weighted() {
    if !can_run("rail_back_up_is_readopted_in_stripe_and_weighted") {
        return;
    }
    // eth2 goes down on n1 in the middle of a long stream and comes back 1.5 s later: the
    // higher rank reconnects it and it carries data again.
    let b = bed("rlreadop", 224, &gigabit(FOUR));
    let rails = FOUR.join(",");
    for mode in ["stripe", "weighted"] {
        let mut cmd = job(
            &b,
            2,
            mode,
            &rails,
            &["BRAID_RAIL_TIMEOUT_MS=1000"],
            "rail_stream",
            &["3072", "4"],
        );
        let changes = [
            ("n1", "eth2", Duration::from_millis(1200), false),
            ("n1", "eth2", Duration::from_millis(2700), true),
        ];
        let (f, sent) = with_link_changes(&b, &changes, &mut cmd);
        let after = ["n0", "n1"]
            .iter()
            .map(|h| tx_bytes(&b, h, &["eth2"])[0])
            .sum::<u64>();
        assert_ok(&f, &format!("{mode} with eth2 down and up again"));
        assert!(
            f.stdout.contains("rail_stream received 3072 MiB"),
            "{mode}: {}",
            f.stdout
        );
        assert!(
            f.stderr.contains("lost rail eth2 (") && f.stderr.contains("re-adopted rail eth2 ("),
            "{mode}: no messages of eth2 lost and re-adopted:\n{}",
            f.stderr
        );
        let again = after - sent[1];
        assert!(
            again > 16 << 20,
            "{mode}: eth2 carried only {again} bytes after it came back"
        );
        eprintln!(
            "{mode} with eth2 down and up again: {} MiB on eth2 after it came back; {}",
            again >> 20,
            f.stdout.lines().next().unwrap_or("")
        );
    }
}

#[test]
fn last_rail_down_ends_the_job_naming_host_and_rail() {
    if !can_run("last_rail_down_ends_the_job_naming_host_and_rail") {
        return;
    }
    let b = bed("rllast", 237, &gigabit(&["eth1"]));
    let mut cmd = job(&b, 2, "single", "eth1", &[], "rail_stream", &["4096", "4"]);
    let f = with_rail_down(&b, "n1", "eth1", Duration::from_millis(1000), &mut cmd);
    assert_ne!(
        f.code(),
        Some(0),
        "job survived losing its only rail:\n{}",
        f.stderr
    );
    assert_ne!(
        f.code(),
        Some(124),
        "job hung until mpirun's timeout:\n{}",
        f.stderr
    );
    assert!(f.elapsed < Duration::from_secs(20), "took {:?}", f.elapsed);
    assert!(
        f.stderr.contains("FAILED")
            && f.stderr.contains("rail eth1")
            && (f.stderr.contains("host rllast-n1") || f.stderr.contains("host rllast-n0")),
        "error does not name host and rail:\n{}",
        f.stderr
    );
}

#[test]
fn bad_rail_mode_and_missing_rail_are_clear_errors() {
    let run = |env: &[&str]| {
        let mut c = Command::new(mpirun());
        c.args(["-n", "2", "--timeout", "30", "-x", "BRAID_SHM=off"]);
        for e in env {
            c.args(["-x", e]);
        }
        c.arg(binary("p2p_large")).arg("1");
        run_with_deadline(&mut c, Duration::from_secs(40))
    };
    let f = run(&["BRAID_RAIL_MODE=bond"]);
    assert_ne!(f.code(), Some(0));
    assert!(
        f.stderr.contains("BRAID_RAIL_MODE")
            && f.stderr.contains("bond")
            && f.stderr.contains("stripe"),
        "{}",
        f.stderr
    );
    let f = run(&["BRAID_RAILS=lo,nosuch0", "BRAID_RAIL_MODE=stripe"]);
    assert_ne!(f.code(), Some(0));
    assert!(
        f.stderr.contains("nosuch0") && f.stderr.contains("does not exist"),
        "{}",
        f.stderr
    );
    // On loopback with two rails, stripe mode works.
    let f = run(&["BRAID_RAILS=127.0.0.1,127.0.0.2", "BRAID_RAIL_MODE=stripe"]);
    assert_ok(&f, "stripe over two loopback rails");
}
