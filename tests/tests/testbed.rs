//! The namespace testbed of `braid-xen` on real namespaces: build and teardown, connectivity
//! on every rail, the management network and the bond, rate limiting, spec errors, guests, and
//! `mpirun --testbed` jobs.
//!
//! Needs root (tests print `SKIPPED: ...` and pass otherwise) and the binaries
//! `braid-testbed` and `mpirun`: `cargo build --workspace --bins` (same profile) first. Every
//! test uses its own testbed name and address base, so they run in parallel; each sweeps
//! leftovers of its name first. All traffic stays inside 10.77.0.0/16.

use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread;
use std::time::Duration;

use braid_tests::{binary, mpirun, run_with_deadline, skipped, unique_marker, workspace_root};
use braid_xen::{BondFlavour, Spec, Testbed, root_available};

const QUICK: Duration = Duration::from_secs(15);

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

/// A spec text: `hosts` hosts with `slots` slots, rails `(name, rate)`.
fn spec_text(name: &str, base: u8, bond: &str, rails: &[(&str, &str)], hosts: usize) -> String {
    let mut t = format!("name = \"{name}\"\nbond = \"{bond}\"\n[addresses]\nbase = {base}\n");
    for (r, rate) in rails {
        t.push_str(&format!("[[rails]]\nname = \"{r}\"\nrate = \"{rate}\"\n"));
    }
    for h in 0..hosts {
        t.push_str(&format!("[[hosts]]\nname = \"n{h}\"\nslots = 1\n"));
    }
    t
}

/// Sweeps leftovers of `name` (a crashed earlier run) and builds the spec.
fn fresh(text: &str) -> Testbed {
    let spec = Spec::parse(text).expect("test spec is valid");
    Testbed::down_by_name(&spec.name).expect("sweep");
    Testbed::up(&spec).unwrap_or_else(|e| panic!("up {}: {e}", spec.name))
}

/// Everything of testbed `name` visible from the root namespace.
fn traces(name: &str) -> Vec<String> {
    let prefix = format!("{name}-");
    let out = |args: &[&str]| {
        let o = Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("ip/tc");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut found = Vec::new();
    for l in out(&["ip", "netns", "list"]).lines() {
        if l.starts_with(&prefix) {
            found.push(format!("netns {l}"));
        }
    }
    for l in out(&["ip", "-o", "link", "show"]).lines() {
        if l.split(": ").nth(1).is_some_and(|n| n.starts_with(&prefix)) {
            found.push(format!("link {l}"));
        }
    }
    for l in out(&["tc", "qdisc", "show"]).lines() {
        if l.contains(&format!("dev {prefix}")) {
            found.push(format!("qdisc {l}"));
        }
    }
    found
}

static PORT: AtomicU16 = AtomicU16::new(24_000);

/// Sends for `secs` from `from` (a node, or `None` for the root namespace) to `addr` in `to`;
/// returns the receiver's Mbit/s, or the error output.
fn transfer(
    tb: &Testbed,
    from: Option<&str>,
    to: Option<&str>,
    addr: std::net::Ipv4Addr,
    secs: f64,
) -> Result<f64, String> {
    let bin = binary("braid-testbed");
    let port = PORT.fetch_add(1, Ordering::Relaxed);
    let target = format!("{addr}:{port}");
    let cmd = |node: Option<&str>| match node {
        Some(n) => tb
            .command(n, bin.to_str().expect("utf-8 path"))
            .expect("node"),
        None => Command::new(&bin),
    };
    let mut sink = cmd(to);
    sink.args(["tcp-sink", &target, "--secs", &format!("{}", secs + 4.0)]);
    let sink = thread::spawn(move || run_with_deadline(&mut sink, QUICK));
    let mut source = cmd(from);
    source.args(["tcp-source", &target, "--secs", &format!("{secs}")]);
    let src = run_with_deadline(&mut source, QUICK);
    let got = sink.join().expect("sink thread");
    if src.code() != Some(0) || got.code() != Some(0) {
        return Err(format!(
            "{target}: source {:?} {} / sink {:?} {}",
            src.code(),
            src.stderr,
            got.code(),
            got.stderr
        ));
    }
    got.stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mbit="))
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("no rate in {:?}", got.stdout))
}

#[test]
fn up_then_down_leaves_nothing_even_after_a_panic() {
    if !can_run("up_then_down_leaves_nothing_even_after_a_panic") {
        return;
    }
    let text = spec_text(
        "tbud",
        112,
        "auto",
        &[("eth1", "1gbit"), ("eth2", "1gbit")],
        2,
    );
    {
        let tb = fresh(&text);
        let ns = tb.netns("n0").unwrap();
        let q = Command::new("tc")
            .args(["-n", &ns, "qdisc", "show", "dev", "eth2"])
            .output()
            .unwrap();
        let q = String::from_utf8_lossy(&q.stdout).into_owned();
        assert!(q.contains("tbf") && q.contains("rate 1Gbit"), "{q}");
        assert!(!traces("tbud").is_empty());
        assert_ne!(tb.bond_flavour(), BondFlavour::None);
        // A second `up` of the same name is refused and does not harm the first.
        let again = Testbed::up(tb.spec()).unwrap_err().to_string();
        assert!(again.contains("already exists"), "{again}");
    }
    assert_eq!(traces("tbud"), Vec::<String>::new(), "left after drop");

    // A panic while the testbed is up: unwinding drops it.
    let t = text.clone();
    let r = thread::spawn(move || {
        let _tb = fresh(&t);
        panic!("deliberate panic with the testbed up");
    })
    .join();
    assert!(r.is_err());
    assert_eq!(traces("tbud"), Vec::<String>::new(), "left after panic");

    // A crash (no drop at all): down_by_name sweeps the leftovers, and is idempotent.
    fresh(&text).persist();
    assert!(!traces("tbud").is_empty());
    let rep = Testbed::down_by_name("tbud").unwrap();
    assert_eq!(rep.namespaces.len(), 3, "{rep:?}");
    assert!(Testbed::down_by_name("tbud").unwrap().is_empty());
    assert_eq!(traces("tbud"), Vec::<String>::new(), "left after sweep");
}

#[test]
fn every_rail_management_and_bond_connect() {
    if !can_run("every_rail_management_and_bond_connect") {
        return;
    }
    let rails = [("eth1", "1gbit"), ("eth2", "1gbit"), ("eth3", "1gbit")];
    let tb = fresh(&spec_text("tbcon", 128, "auto", &rails, 2));
    for (rail, _) in rails {
        let a = tb.rail_addr("n1", rail).unwrap();
        transfer(&tb, Some("n0"), Some("n1"), a, 0.05).unwrap_or_else(|e| panic!("{rail}: {e}"));
        let b = tb.rail_addr("n0", rail).unwrap();
        transfer(&tb, Some("n1"), Some("n0"), b, 0.05).unwrap_or_else(|e| panic!("{rail}: {e}"));
    }
    // Management: host to host, root to host, host to root.
    let m1 = tb.mgmt_addr("n1").unwrap();
    transfer(&tb, Some("n0"), Some("n1"), m1, 0.05).expect("mgmt n0 -> n1");
    transfer(&tb, None, Some("n1"), m1, 0.05).expect("mgmt root -> n1");
    let root = tb.spec().mgmt_root_addr();
    transfer(&tb, Some("n1"), None, root, 0.05).expect("mgmt n1 -> root");
    // Bond address (kernel bond or the ECMP stand-in).
    assert_ne!(tb.bond_flavour(), BondFlavour::None);
    let b1 = tb.bond_addr("n1").unwrap().expect("bond address");
    transfer(&tb, Some("n0"), Some("n1"), b1, 0.05).expect("bond n0 -> n1");
    // A rail taken down stops carrying traffic; up again, it carries it again.
    tb.set_link("n1", "eth2", false).unwrap();
    let a = tb.rail_addr("n1", "eth2").unwrap();
    assert!(transfer(&tb, Some("n0"), Some("n1"), a, 0.05).is_err());
    tb.set_link("n1", "eth2", true).unwrap();
    transfer(&tb, Some("n0"), Some("n1"), a, 0.05).expect("eth2 back up");
    let e = tb.rail_addr("n0", "eth9").unwrap_err().to_string();
    assert!(e.contains("eth9"), "{e}");
}

#[test]
fn tbf_limits_a_rail_to_its_rate() {
    if !can_run("tbf_limits_a_rail_to_its_rate") {
        return;
    }
    let tb = fresh(&spec_text("tbrate", 144, "none", &[("eth1", "100mbit")], 2));
    let a = tb.rail_addr("n1", "eth1").unwrap();
    let mbit = transfer(&tb, Some("n0"), Some("n1"), a, 1.5).expect("transfer");
    eprintln!("100mbit rail: measured {mbit:.1} Mbit/s");
    assert!(
        (60.0..=110.0).contains(&mbit),
        "measured {mbit} Mbit/s on a 100mbit rail"
    );
}

#[test]
fn bad_specs_are_refused_and_build_nothing() {
    let good = spec_text("tbbad", 208, "none", &[("eth1", "1gbit")], 2);
    let e = Spec::parse(&good.replace("[[hosts]]", "[[hosts]"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("line") && e.contains("column"), "{e}");
    let e = Spec::parse(&good.replace("slots = 1", "slots = 1\nspeed = 3"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("speed"), "{e}");
    let bad = format!("{good}rates = {{ eth7 = \"10mbit\" }}\n");
    let e = Spec::parse(&bad).unwrap_err().to_string();
    assert!(e.contains("eth7") && e.contains("n1"), "{e}");
    let e = Spec::parse(&good.replace("1gbit", "fast"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fast"), "{e}");
    if !can_run("bad_specs_are_refused_and_build_nothing (testbed part)") {
        return;
    }
    assert!(traces("tbbad").is_empty());
    // The CLI says the same and builds nothing.
    let dir = std::env::temp_dir().join(unique_marker("tbbad"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, &bad).unwrap();
    let f = run_with_deadline(
        Command::new(binary("braid-testbed")).arg("up").arg(&path),
        QUICK,
    );
    assert_ne!(f.code(), Some(0));
    assert!(
        f.stderr.contains("eth7") && f.stderr.contains("nothing was built"),
        "{}",
        f.stderr
    );
    assert!(traces("tbbad").is_empty());
    // Two testbeds on the same management subnet: the second is refused, nothing of it left.
    let first = fresh(&good);
    let clash = Spec::parse(&good.replace("tbbad", "tbclash")).unwrap();
    Testbed::down_by_name("tbclash").unwrap();
    let e = Testbed::up(&clash).unwrap_err().to_string();
    assert!(e.contains("already used"), "{e}");
    assert!(traces("tbclash").is_empty());
    drop(first);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn guests_bypass_and_bridged() {
    if !can_run("guests_bypass_and_bridged") {
        return;
    }
    let byp = "name = \"tbgb\"\nconfiguration = \"guest-byp.indep\"\nbond = \"none\"\n\
               [addresses]\nbase = 176\n\
               [[rails]]\nname = \"eth1\"\nrate = \"1gbit\"\n\
               [[rails]]\nname = \"eth2\"\nrate = \"1gbit\"\n\
               [[hosts]]\nname = \"n0\"\n[[hosts.guests]]\nname = \"g0\"\nnics = [\"eth1\"]\n\
               [[hosts.guests]]\nname = \"g1\"\nnics = [\"eth2\"]\n\
               [[hosts]]\nname = \"n1\"\n[[hosts.guests]]\nname = \"g0\"\nnics = [\"eth1\"]\n\
               [[hosts.guests]]\nname = \"g1\"\nnics = [\"eth2\"]\n";
    let tb = fresh(byp);
    let a = tb.rail_addr("n1.g1", "eth2").unwrap();
    transfer(&tb, Some("n0.g1"), Some("n1.g1"), a, 0.05).expect("passthrough eth2");
    assert!(
        tb.rail_addr("n1", "eth2").is_err(),
        "eth2 belongs to the guest"
    );
    let m = tb.mgmt_addr("n1.g0").unwrap();
    transfer(&tb, None, Some("n1.g0"), m, 0.05).expect("mgmt to guest");
    drop(tb);

    let bond = byp
        .replace("tbgb", "tbgo")
        .replace("guest-byp.indep", "guest.bond")
        .replace("bond = \"none\"", "bond = \"auto\"")
        .replace("base = 176", "base = 192")
        .replace("nics = [\"eth1\"]\n", "")
        .replace("nics = [\"eth2\"]\n", "");
    let tb = fresh(&bond);
    let ga = tb.spec().guest_addr(1, 1);
    transfer(&tb, Some("n0.g0"), Some("n1.g1"), ga, 0.05).expect("bridged guests via the bond");
}

fn write_spec(text: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(unique_marker("tbspec"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("spec.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Two-level collectives between two namespace hosts of two ranks each, over two rails:
/// every collective of `coll_all` checked against its sequential reference, and `coll_shm`
/// (which checks that each rank maps its host's shared region: the intra-host phases went
/// through the shared-memory component) with results identical to the component forced off.
#[test]
fn two_level_collectives_across_namespace_hosts() {
    if !can_run("two_level_collectives_across_namespace_hosts") {
        return;
    }
    let rails = [("eth1", "1gbit"), ("eth2", "1gbit")];
    let text = spec_text("tbcoll", 192, "none", &rails, 2).replace("slots = 1", "slots = 2");
    let tb = fresh(&text);
    let (dir, path) = write_spec(&text);
    let job = |bin: &str, env: &[&str], args: &[&str]| {
        let mut c = Command::new(mpirun());
        c.arg("--testbed")
            .arg(&path)
            .args(["-n", "4", "--timeout", "120"]);
        c.args([
            "-x",
            "BRAID_RAILS=eth1,eth2",
            "-x",
            "BRAID_RAIL_MODE=stripe",
        ]);
        for e in env {
            c.args(["-x", e]);
        }
        let f = run_with_deadline(c.arg(binary(bin)).args(args), Duration::from_secs(130));
        assert_eq!(
            f.code(),
            Some(0),
            "{bin} {env:?}: stdout:\n{}\nstderr:\n{}",
            f.stdout,
            f.stderr
        );
        f
    };
    job("coll_all", &[], &[]);
    let digest = |f: &braid_tests::Finished| {
        f.stdout
            .lines()
            .find_map(|l| l.strip_prefix("digest "))
            .map(str::to_owned)
    };
    let on = digest(&job("coll_shm", &[], &["quick"]));
    let off = digest(&job("coll_shm", &["BRAID_COLL_SHM=0"], &["quick"]));
    assert!(on.is_some(), "coll_shm printed no digest");
    assert_eq!(
        on, off,
        "results differ with the shared-memory component on and off"
    );
    drop(tb);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mpirun_testbed_places_ranks_in_two_namespaces() {
    if !can_run("mpirun_testbed_places_ranks_in_two_namespaces") {
        return;
    }
    let text = spec_text("tbmpi", 160, "none", &[("eth1", "1gbit")], 2);
    let tb = fresh(&text);
    let (dir, path) = write_spec(&text);
    let f = run_with_deadline(
        Command::new(mpirun())
            .arg("--testbed")
            .arg(&path)
            .args(["-n", "2", "sh", "-c"])
            .arg("echo rank=$PMI_RANK netns=$(ip netns identify) eth1=$(ip -o -4 addr show dev eth1 | awk '{print $4}')"),
        QUICK,
    );
    assert_eq!(
        f.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        f.stdout,
        f.stderr
    );
    let mut lines: Vec<&str> = f.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        vec![
            "rank=0 netns=tbmpi-n0 eth1=10.77.161.1/24",
            "rank=1 netns=tbmpi-n1 eth1=10.77.161.2/24"
        ],
        "stderr:\n{}",
        f.stderr
    );

    let ring = workspace_root().join("target/release/ring");
    if ring.is_file() {
        let f = run_with_deadline(
            Command::new(mpirun())
                .arg("--testbed")
                .arg(&path)
                .args(["-n", "2", "--timeout", "30", "-x", "BRAID_RAILS=eth1"])
                .arg(&ring)
                .arg("10"),
            Duration::from_secs(40),
        );
        assert_eq!(
            f.code(),
            Some(0),
            "ring: stdout:\n{}\nstderr:\n{}",
            f.stdout,
            f.stderr
        );
    } else {
        skipped(
            "mpirun_testbed_places_ranks_in_two_namespaces (ring part)",
            "target/release/ring not built",
        );
    }
    drop(tb);
    // Not up: a clear error.
    let f = run_with_deadline(
        Command::new(mpirun())
            .arg("--testbed")
            .arg(&path)
            .args(["-n", "2", "true"]),
        QUICK,
    );
    assert_ne!(f.code(), Some(0));
    assert!(f.stderr.contains("not up"), "{}", f.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}
