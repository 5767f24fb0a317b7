//! Rail modes of the TCP transport on the namespace testbed: content-checked transfers in
//! every mode (`single`, `indep`, `stripe`, `weighted`) with the per-interface byte counters
//! showing which rails carried them, a rail taken down in the middle of a transfer (the job
//! completes with correct data), the last rail taken down (the job fails promptly, naming
//! host and rail), and bad settings (clear errors).
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
    let ns = b.tb.netns(host).expect("netns");
    let rail_owned = rail.to_string();
    let downer = thread::spawn(move || {
        thread::sleep(after);
        let st = Command::new("ip")
            .args(["-n", &ns, "link", "set", &rail_owned, "down"])
            .status();
        assert!(st.is_ok_and(|s| s.success()), "ip link set down failed");
    });
    let f = run_with_deadline(cmd, JOB_DEADLINE);
    downer.join().expect("downer thread");
    b.tb.set_link(host, rail, true).expect("link up again");
    f
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
