//! Point-to-point end to end: real jobs of the `p2p_*` test programs (and `ring`) through
//! `mpirun` (and MPICH's hydra), with 1, 2, 4 and 8 ranks on loopback.
//!
//! Needs the binaries: `cargo build --release --workspace --bins` first, then
//! `cargo test --release -p braid-tests --test p2p`.
//!
//! Jobs run one at a time (a lock), so that the timing assertions of the fault tests are not
//! skewed by other jobs on a 2-core machine; every job has a deadline.

use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use braid_tests::{
    Finished, binary, leftovers_after, mpich_mpiexec, mpirun, processes_with_marker,
    run_with_deadline, unique_marker,
};

/// Deadline of a job that should take a few seconds at most.
const DEADLINE: Duration = Duration::from_secs(90);

static JOBS: Mutex<()> = Mutex::new(());

fn one_job_at_a_time() -> MutexGuard<'static, ()> {
    JOBS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `mpirun -n N BIN ARGS...` with extra environment.
fn job_env(n: u32, bin: &str, args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut cmd = Command::new(mpirun());
    cmd.arg("-n").arg(n.to_string()).arg(binary(bin)).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_deadline(&mut cmd, DEADLINE)
}

fn job(n: u32, bin: &str, args: &[&str]) -> Finished {
    job_env(n, bin, args, &[])
}

fn show(f: &Finished) -> String {
    format!(
        "exit {:?} after {:?}\nstdout:\n{}\nstderr:\n{}",
        f.status, f.elapsed, f.stdout, f.stderr
    )
}

/// Asserts exit 0 and one `NAME ok rank R of N` line per rank.
fn assert_all_ok(f: &Finished, name: &str, n: u32) {
    assert_eq!(
        f.code(),
        Some(0),
        "{name} with {n} ranks failed: {}",
        show(f)
    );
    for r in 0..n {
        let want = format!("{name} ok rank {r} of {n}");
        assert!(
            f.stdout.lines().any(|l| l.trim() == want),
            "missing '{want}': {}",
            show(f)
        );
    }
}

// ----------------------------------------------------------------------------------------
// 1. ring
// ----------------------------------------------------------------------------------------

#[test]
fn ring_passes_token_around() {
    let _g = one_job_at_a_time();
    for n in [1u32, 2, 4, 8] {
        let f = job(n, "ring", &["200"]);
        assert_eq!(f.code(), Some(0), "ring -n {n}: {}", show(&f));
        let mut lines: Vec<&str> = f.stdout.lines().collect();
        lines.sort_unstable();
        let mut want: Vec<String> = (0..n).map(|r| format!("ring ok rank {r} of {n}")).collect();
        want.sort_unstable();
        assert_eq!(lines, want, "ring -n {n}: {}", show(&f));
    }
}

#[test]
fn ring_runs_as_singleton_without_launcher() {
    let _g = one_job_at_a_time();
    let mut cmd = Command::new(binary("ring"));
    cmd.arg("50");
    for v in ["PMI_FD", "PMI_PORT", "PMI_RANK", "PMI_SIZE", "PMI_ID"] {
        cmd.env_remove(v);
    }
    let f = run_with_deadline(&mut cmd, DEADLINE);
    assert_eq!(f.code(), Some(0), "singleton ring: {}", show(&f));
    assert_eq!(f.stdout.trim(), "ring ok rank 0 of 1", "{}", show(&f));
}

// ----------------------------------------------------------------------------------------
// 2. all pairs
// ----------------------------------------------------------------------------------------

#[test]
fn all_pairs_exchange_every_size() {
    let _g = one_job_at_a_time();
    for n in [1u32, 2, 4, 8] {
        let f = job(n, "p2p_pairs", &["2"]);
        assert_all_ok(&f, "p2p_pairs", n);
    }
}

// ----------------------------------------------------------------------------------------
// 3. wildcard stress
// ----------------------------------------------------------------------------------------

#[test]
fn wildcard_stress_everyone_to_rank0() {
    let _g = one_job_at_a_time();
    // (ranks, seed, messages per sender): thousands of messages in all.
    for (n, seed, count) in [(2u32, "11", "1500"), (4, "12", "700"), (8, "13", "400")] {
        let f = job(n, "p2p_wildcard", &[seed, count, "to0"]);
        assert_all_ok(&f, "p2p_wildcard", n);
    }
}

#[test]
fn wildcard_stress_all_to_all() {
    let _g = one_job_at_a_time();
    for (n, seed, count) in [(2u32, "21", "800"), (4, "22", "250"), (8, "23", "60")] {
        let f = job(n, "p2p_wildcard", &[seed, count, "all"]);
        assert_all_ok(&f, "p2p_wildcard", n);
    }
}

// ----------------------------------------------------------------------------------------
// 4. large messages
// ----------------------------------------------------------------------------------------

#[test]
fn large_messages_64mib_and_threshold_sizes() {
    let _g = one_job_at_a_time();
    let f = job(2, "p2p_large", &["64"]);
    assert_all_ok(&f, "p2p_large", 2);
}

#[test]
fn large_messages_with_odd_eager_limit_and_chunk_size() {
    let _g = one_job_at_a_time();
    // Thresholds that are not powers of two, so chunk and eager edges fall mid-word.
    let f = job_env(
        4,
        "p2p_large",
        &["8"],
        &[
            ("BRAID_EAGER_LIMIT", "10007"),
            ("BRAID_CHUNK_SIZE", "100003"),
        ],
    );
    assert_all_ok(&f, "p2p_large", 4);
}

// ----------------------------------------------------------------------------------------
// 5. truncation
// ----------------------------------------------------------------------------------------

#[test]
fn truncation_is_an_error_and_the_job_goes_on() {
    let _g = one_job_at_a_time();
    for n in [2u32, 4] {
        // Cases 0..=5: eager and rendezvous, blocking, any-source and immediate receives.
        let f = job(n, "p2p_truncate", &["0", "1", "2", "3", "4", "5"]);
        assert_all_ok(&f, "p2p_truncate", n);
    }
}

/// An eager message too long for one read is read straight into the (too small) receive
/// buffer; the transport must then skip the rest of the payload. Demonstrates the skip bug in
/// the direct-read path of `transports/src/tcp.rs` (`read_conn`).
#[test]
fn truncation_of_long_eager_message_keeps_stream_in_sync() {
    let _g = one_job_at_a_time();
    let f = job_env(
        2,
        "p2p_truncate",
        &["6"],
        &[("BRAID_EAGER_LIMIT", "8388608"), ("BRAID_SHM", "off")],
    );
    assert_all_ok(&f, "p2p_truncate", 2);
}

/// Ranks of one host use shared memory by default; the same programs over TCP only.
#[test]
fn point_to_point_over_tcp() {
    let _g = one_job_at_a_time();
    let tcp = [("BRAID_SHM", "off")];
    for (n, bin, args) in [
        (4u32, "p2p_pairs", &["2"][..]),
        (4, "p2p_wildcard", &["5", "300", "all"][..]),
        (2, "p2p_large", &[][..]),
        (2, "p2p_truncate", &["0", "1", "2", "3", "4", "5"][..]),
        (4, "p2p_misc", &[][..]),
        (2, "p2p_stray", &["20"][..]),
    ] {
        let f = job_env(n, bin, args, &tcp);
        assert_all_ok(&f, bin, n);
    }
}

/// The receive fast path (a blocking receive naming one peer reads that peer's connection or
/// ring itself) hands everything it does not take to the general path intact: bursts, other
/// tags first, truncation, bursts longer than a read, rendezvous, empty and any-tag messages,
/// other ranks' messages during a ping-pong, and it keeps the rest of the job progressing
/// (a synchronous send from a third rank completes during a ping-pong); over TCP with 2, 3
/// and 8 ranks (oversubscribed: the 8-rank job must still progress; 3 ranks as 3 hosts too,
/// where no rank counts as oversubscribed and the fast path spins), and over shared memory.
#[test]
fn direct_receives_hand_the_rest_to_the_general_path() {
    let _g = one_job_at_a_time();
    for (n, env) in [
        (2u32, &[("BRAID_SHM", "off")][..]),
        (3, &[("BRAID_SHM", "off")][..]),
        (3, &[("BRAID_FAKE_HOSTS", "3")][..]),
        (8, &[("BRAID_SHM", "off")][..]),
        (3, &[][..]),
    ] {
        let f = job_env(n, "p2p_direct", &[], env);
        assert_all_ok(&f, "p2p_direct", n);
    }
}

/// Calls (and failed calls) of each system call in an `strace -c` summary.
fn strace_counts(summary: &str) -> std::collections::HashMap<String, (u64, u64)> {
    let mut m = std::collections::HashMap::new();
    for line in summary.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        let (Some(name), true) = (t.last(), matches!(t.len(), 5 | 6)) else {
            continue;
        };
        let (Ok(calls), errors) = (t[3].parse::<u64>(), t.get(4).filter(|_| t.len() == 6)) else {
            continue;
        };
        let errors = errors.and_then(|e| e.parse().ok()).unwrap_or(0);
        m.insert((*name).to_string(), (calls, errors));
    }
    m
}

/// The TCP small-message path in system calls (`strace -c` of each rank of a ping-pong of
/// 8-byte and 1 KiB messages): one `sendto` per message and no `writev`; one successful
/// `recvfrom` per message (header and payload in one read); `epoll_wait` far fewer than
/// messages (the busy-polling receive does not go through the poller). Skipped where strace
/// cannot trace.
#[test]
fn tcp_small_messages_cost_one_send_and_one_read() {
    let _g = one_job_at_a_time();
    let traces = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !traces {
        braid_tests::skipped(
            "tcp_small_messages_cost_one_send_and_one_read",
            "strace is not installed or may not trace here",
        );
        return;
    }
    let dir = std::env::temp_dir().join(unique_marker("braid-strace"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let iters = 1000u64;
    // pingpong: 2 sizes x 2 passes x iters round trips; each rank sends one message per trip.
    let messages = 4 * iters;
    let mut cmd = Command::new(mpirun());
    cmd.args(["-n", "2", "sh", "-c"])
        .arg(r#"exec strace -f -qq -c -o "$0/rank$PMI_RANK" "$@""#)
        .arg(&dir)
        .arg(binary("pingpong"))
        .arg(iters.to_string())
        .env("BRAID_SHM", "off");
    let f = run_with_deadline(&mut cmd, DEADLINE);
    assert_eq!(f.code(), Some(0), "pingpong under strace: {}", show(&f));
    for rank in 0..2 {
        let path = dir.join(format!("rank{rank}"));
        let summary = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}
{}",
                path.display(),
                show(&f)
            )
        });
        let c = strace_counts(&summary);
        let calls = |s: &str| c.get(s).copied().unwrap_or((0, 0));
        let (sends, _) = calls("sendto");
        let (reads, empty) = calls("recvfrom");
        let gathered = calls("writev").0 + calls("sendmsg").0;
        let polls = calls("epoll_wait").0;
        let why = format!(
            "rank {rank}, {messages} messages each way:
{summary}"
        );
        // Start-up, wire-up and the barriers add a few hundred calls at most.
        assert!(
            (messages..messages + 300).contains(&sends),
            "{sends} sendto: {why}"
        );
        assert!(gathered < 50, "{gathered} writev/sendmsg: {why}");
        assert!(
            reads - empty < messages + 300,
            "{} successful recvfrom: {why}",
            reads - empty
        );
        assert!(polls < messages / 8, "{polls} epoll_wait: {why}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ----------------------------------------------------------------------------------------
// 6. synchronous send, self, probe, receive_vec, wait_any / test_all
// ----------------------------------------------------------------------------------------

#[test]
fn misc_semantics() {
    let _g = one_job_at_a_time();
    for n in [1u32, 2, 4, 8] {
        let f = job(n, "p2p_misc", &[]);
        assert_all_ok(&f, "p2p_misc", n);
    }
}

// ----------------------------------------------------------------------------------------
// 7-8. faults
// ----------------------------------------------------------------------------------------

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Runs `p2p_fault MODE` with a marker; returns the result and the time from rank 1's death
/// to mpirun's exit. Asserts that no process of the job is left.
fn fault_job(n: u32, mode: &str) -> (Finished, Duration) {
    fault_job_env(n, mode, &[])
}

/// [`fault_job`] with extra environment.
fn fault_job_env(n: u32, mode: &str, env: &[(&str, &str)]) -> (Finished, Duration) {
    let marker = unique_marker("p2pfault");
    let start = unix_nanos();
    let f = job_env(n, "p2p_fault", &[mode, &marker], env);
    let end = start + f.elapsed.as_nanos();
    let died: u128 = f
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("rank 1 dies at "))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("rank 1 did not report its death: {}", show(&f)));
    let after = Duration::from_nanos(end.saturating_sub(died) as u64);
    let left = leftovers_after(&marker, Duration::from_secs(3));
    assert!(
        left.is_empty(),
        "{mode} -n {n}: processes left behind: {left:?}\n{}",
        show(&f)
    );
    (f, after)
}

/// Generous bound on the time from a rank's death to mpirun's exit (the target is 2 s).
const PROMPT: Duration = Duration::from_secs(4);

/// The job `what` failed (non-zero exit) within [`PROMPT`] of rank 1's death, and its
/// stderr says every one of `says`.
fn assert_failed_promptly(f: &Finished, after: Duration, what: &str, says: &[&str]) {
    assert!(
        f.code().is_some_and(|c| c != 0),
        "{what}: want a non-zero exit: {}",
        show(f)
    );
    assert!(
        after < PROMPT,
        "{what}: mpirun took {after:?} after rank 1 died: {}",
        show(f)
    );
    for s in says {
        assert!(
            f.stderr.contains(s),
            "{what}: stderr does not say {s:?}: {}",
            show(f)
        );
    }
}

#[test]
fn killed_rank_ends_job_promptly() {
    let _g = one_job_at_a_time();
    for (n, mode) in [
        (2u32, "kill"),
        (4, "kill"),
        (2, "kill-any"),
        (4, "kill-any"),
    ] {
        let (f, after) = fault_job(n, mode);
        assert_failed_promptly(&f, after, &format!("{mode} -n {n}"), &["rank 1"]);
    }
}

/// As `killed_rank_ends_job_promptly`, over TCP: rank 0 waits in the TCP receive fast path
/// when rank 1 dies.
#[test]
fn killed_rank_ends_job_promptly_over_tcp() {
    let _g = one_job_at_a_time();
    for n in [2u32, 4] {
        let (f, after) = fault_job_env(n, "kill", &[("BRAID_SHM", "off")]);
        assert_failed_promptly(&f, after, &format!("kill -n {n} over TCP"), &["rank 1"]);
    }
}

/// mpirun itself (not only the surviving rank's error) must name the rank that was killed,
/// even when the survivor notices first and exits with an error of its own
/// (`launcher/src/monitor.rs` blames a death by signal before the errors it caused).
#[test]
fn killed_rank_is_named_by_mpirun() {
    let _g = one_job_at_a_time();
    for n in [2u32, 4] {
        let (f, _) = fault_job(n, "kill");
        let mpirun_lines: Vec<&str> = f
            .stderr
            .lines()
            .filter(|l| l.starts_with("mpirun:"))
            .collect();
        assert!(
            mpirun_lines
                .iter()
                .any(|l| l.contains("rank 1 ") && (l.contains("signal 9") || l.contains("SIGKILL"))),
            "kill -n {n}: mpirun's own messages {mpirun_lines:?} do not say that rank 1 was killed by SIGKILL: {}",
            show(&f)
        );
    }
}

#[test]
fn abort_ends_job_with_its_code() {
    let _g = one_job_at_a_time();
    for n in [2u32, 4] {
        let (f, after) = fault_job(n, "abort");
        assert_eq!(f.code(), Some(5), "abort -n {n}: {}", show(&f));
        assert!(
            after < PROMPT,
            "abort -n {n}: mpirun took {after:?} after the abort: {}",
            show(&f)
        );
        assert!(
            f.stderr.contains("rank 1 called abort with error code 5"),
            "abort -n {n}: {}",
            show(&f)
        );
    }
}

#[test]
fn panicking_rank_ends_job_promptly() {
    let _g = one_job_at_a_time();
    for n in [2u32, 4] {
        let (f, after) = fault_job(n, "panic");
        let says = ["panics on purpose", "rank 1"];
        assert_failed_promptly(&f, after, &format!("panic -n {n}"), &says);
    }
}

/// mpirun killed outright (it cannot end the job then): the kernel kills its ranks.
#[test]
fn ranks_die_with_a_killed_mpirun() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let _g = one_job_at_a_time();
    let n = 4;
    let marker = unique_marker("p2phang");
    let mut child = Command::new(mpirun())
        .arg("-n")
        .arg(n.to_string())
        .arg(binary("p2p_fault"))
        .args(["hang", &marker])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mpirun");
    // Wait (bounded: the reader ends when mpirun is killed) until every rank is blocked.
    let out = child.stdout.take().expect("piped");
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = done.clone();
    let watchdog = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while !watch.load(std::sync::atomic::Ordering::Acquire) {
            if start.elapsed() > DEADLINE {
                // mpirun is still our unreaped child here, so the pid is still its own.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let waiting = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains(" waits"))
        .take(n)
        .count();
    let alive = processes_with_marker(&marker).len();
    child.kill().expect("kill mpirun");
    done.store(true, std::sync::atomic::Ordering::Release);
    let _ = watchdog.join();
    let _ = child.wait();
    assert_eq!(waiting, n, "not every rank reported that it waits");
    assert_eq!(alive, n + 1, "mpirun and {n} ranks");
    let left = leftovers_after(&marker, Duration::from_secs(3));
    assert!(left.is_empty(), "ranks outlived mpirun: {left:?}");
}

// ----------------------------------------------------------------------------------------
// 9. stray connections
// ----------------------------------------------------------------------------------------

#[test]
fn stray_connections_are_refused_and_job_goes_on() {
    let _g = one_job_at_a_time();
    for n in [1u32, 2, 4] {
        let f = job(n, "p2p_stray", &["20"]);
        assert_all_ok(&f, "p2p_stray", n);
        let strays: Vec<(&str, &str)> = f
            .stdout
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("stray ")?;
                let (kind, rest) = rest.split_once(" from ")?;
                Some((kind, rest.split_whitespace().next()?))
            })
            .collect();
        assert!(
            strays.len() >= 5,
            "-n {n}: strays not reported: {}",
            show(&f)
        );
        for (kind, addr) in strays {
            let want = format!("refused a connection from {addr}");
            assert!(
                f.stderr.contains(&want),
                "-n {n}: stray '{kind}': no '{want}' on stderr: {}",
                show(&f)
            );
        }
    }
}

// ----------------------------------------------------------------------------------------
// 10. PMI interoperability with MPICH's hydra
// ----------------------------------------------------------------------------------------

#[test]
fn ring_and_pairs_under_mpich_hydra() {
    let Some(mpiexec) = mpich_mpiexec() else {
        println!("SKIPPED: mpiexec.mpich not installed");
        return;
    };
    let _g = one_job_at_a_time();
    for n in [2u32, 4] {
        let f = run_with_deadline(
            Command::new(&mpiexec)
                .arg("-n")
                .arg(n.to_string())
                .arg(binary("ring"))
                .arg("10"),
            DEADLINE,
        );
        assert_eq!(f.code(), Some(0), "hydra ring -n {n}: {}", show(&f));
        assert_eq!(
            f.stdout
                .lines()
                .filter(|l| l.starts_with("ring ok rank"))
                .count(),
            n as usize,
            "{}",
            show(&f)
        );
    }
    let f = run_with_deadline(
        Command::new(&mpiexec)
            .args(["-n", "4"])
            .arg(binary("p2p_pairs")),
        DEADLINE,
    );
    assert_all_ok(&f, "p2p_pairs", 4);
}

// ----------------------------------------------------------------------------------------
// 11. launcher error exits
// ----------------------------------------------------------------------------------------

#[test]
fn launcher_error_exits() {
    let f = run_with_deadline(
        Command::new(mpirun()).args(["-n", "2", "nonexistent_program_xyz"]),
        DEADLINE,
    );
    assert!(f.code().is_some_and(|c| c != 0), "{}", show(&f));
    assert!(f.stderr.contains("nonexistent_program_xyz"), "{}", show(&f));
    let f = run_with_deadline(Command::new(mpirun()).arg("--no-such-flag"), DEADLINE);
    assert!(f.code().is_some_and(|c| c != 0), "{}", show(&f));
    assert!(f.stderr.contains("--no-such-flag"), "{}", show(&f));
}

/// The README's API example compiles (it is a test program) and runs.
#[test]
fn readme_example_runs() {
    let _g = one_job_at_a_time();
    for n in [1u32, 3] {
        let f = job(n, "readme_example", &[]);
        assert_all_ok(&f, "readme_example", n);
    }
}
