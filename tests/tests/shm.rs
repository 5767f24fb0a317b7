//! The shared-memory path end to end: content-checked transfers of every size class over the
//! rings and by single-copy pull, the pipelined fallback when single-copy is off, 8 ranks
//! all-to-all, jobs that mix shared memory and TCP, and no segment left in `/dev/shm` after
//! any job, successful or killed.
//!
//! Needs `cargo build --release --workspace --bins` first. Jobs run one at a time, because
//! the `/dev/shm` checks look for any Braid segment.

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use braid_tests::{Finished, binary, leftovers_after, mpirun, run_with_deadline, unique_marker};

const DEADLINE: Duration = Duration::from_secs(120);

static JOBS: Mutex<()> = Mutex::new(());

fn one_job_at_a_time() -> MutexGuard<'static, ()> {
    JOBS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn job(n: u32, bin: &str, args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut cmd = Command::new(mpirun());
    cmd.arg("-n").arg(n.to_string()).arg(binary(bin)).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_deadline(&mut cmd, DEADLINE)
}

fn show(f: &Finished) -> String {
    format!(
        "exit {:?} after {:?}\nstdout:\n{}\nstderr:\n{}",
        f.status, f.elapsed, f.stdout, f.stderr
    )
}

/// Braid segments currently in /dev/shm.
fn segments() -> Vec<String> {
    std::fs::read_dir(Path::new("/dev/shm"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("braid-"))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_ok(f: &Finished, what: &str) {
    assert_eq!(f.code(), Some(0), "{what}: {}", show(f));
    let left = segments();
    assert!(left.is_empty(), "{what} left segments behind: {left:?}");
}

#[test]
fn large_and_threshold_sizes_single_copy() {
    let _g = one_job_at_a_time();
    // Sizes around the shared-memory eager limit (16 KiB) are covered by pointing the
    // program's threshold probes at it; 64 MiB goes by single-copy pull.
    let f = job(
        2,
        "p2p_large",
        &[],
        &[
            ("BRAID_EAGER_LIMIT", "16384"),
            ("BRAID_SHM_EAGER_LIMIT", "16384"),
        ],
    );
    assert_ok(&f, "p2p_large over shared memory");
}

#[test]
fn large_sizes_pipelined_through_the_rings() {
    let _g = one_job_at_a_time();
    let f = job(
        2,
        "p2p_large",
        &["16"],
        &[
            ("BRAID_SHM_CMA", "off"),
            ("BRAID_EAGER_LIMIT", "16384"),
            ("BRAID_SHM_EAGER_LIMIT", "16384"),
            ("BRAID_CHUNK_SIZE", "100003"),
        ],
    );
    assert_ok(&f, "p2p_large with BRAID_SHM_CMA=off");
}

#[test]
fn small_rings_wrap_many_times() {
    let _g = one_job_at_a_time();
    let f = job(
        4,
        "p2p_pairs",
        &["3"],
        &[
            ("BRAID_SHM_RING_SIZE", "4096"),
            ("BRAID_SHM_EAGER_LIMIT", "3000"),
        ],
    );
    assert_ok(&f, "p2p_pairs with 4 KiB rings");
}

#[test]
fn eight_ranks_all_to_all_random_sizes() {
    let _g = one_job_at_a_time();
    let f = job(8, "p2p_wildcard", &["7", "150", "all"], &[]);
    assert_ok(&f, "p2p_wildcard all-to-all, 8 ranks");
}

#[test]
fn windows_both_ways_batch_and_split_single_copy_transfers() {
    let _g = one_job_at_a_time();
    // Many pulls from one peer queued at once (copied in batches), traffic both ways (no
    // split), and with the split forced on from one byte; 8 ranks oversubscribed too.
    for (n, env) in [
        (2, &[][..]),
        (2, &[("BRAID_SHM_SPLIT_MIN", "1")][..]),
        (4, &[("BRAID_SHM_SPLIT_MIN", "1")][..]),
        (8, &[][..]),
        (2, &[("BRAID_SHM_CMA", "off")][..]),
    ] {
        let f = job(n, "p2p_window", &["5", "4", "24"], env);
        assert_ok(&f, &format!("p2p_window, {n} ranks, {env:?}"));
    }
}

/// The `huge KB` figure of each rank's output line, in output order.
fn huge_kb(f: &Finished) -> Vec<u64> {
    f.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("huge ")?.trim().parse().ok())
        .collect()
}

#[test]
fn reused_large_buffers_get_huge_pages_and_keep_their_contents() {
    let _g = one_job_at_a_time();
    let supported = braid_shm::HugeBacking::new().is_some();
    if !supported {
        braid_tests::skipped(
            "reused_large_buffers_get_huge_pages_and_keep_their_contents",
            "this kernel has no MADV_COLLAPSE (Linux 6.1); only the contents are checked",
        );
    }
    // Six rounds of 6 MiB from and into the same buffers (each holds at least two whole
    // 2 MiB blocks), both ways at once, then six broadcasts of 6 MiB: contents change every
    // round and are checked.
    for mode in ["p2p", "bcast"] {
        let f = job(2, "shm_huge", &["6", "6", mode], &[]);
        assert_ok(&f, &format!("shm_huge {mode}"));
        let kb = huge_kb(&f);
        assert_eq!(kb.len(), 2, "{}", show(&f));
        // A collapse can fail when no free 2 MiB page is to be had, but not on every block
        // of every buffer of both ranks on an idle test machine.
        assert!(
            !supported || kb.iter().all(|&k| k >= 2048),
            "{mode}: huge pages: {kb:?}\n{}",
            show(&f)
        );
    }

    let f = job(
        2,
        "shm_huge",
        &["3", "6"],
        &[("BRAID_SHM_HUGE_PAGES", "off")],
    );
    assert_ok(&f, "shm_huge with BRAID_SHM_HUGE_PAGES=off");
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !thp.contains("[always]") {
        assert_eq!(huge_kb(&f), [0, 0], "{}", show(&f));
    }
}

#[test]
fn split_transfers_all_to_all_random_sizes() {
    let _g = one_job_at_a_time();
    // Every rendezvous message is copied by both ends (the receiver reads the head, the
    // sender writes the tail), with wildcard receives, oversubscribed.
    let f = job(
        8,
        "p2p_wildcard",
        &["11", "150", "all"],
        &[
            ("BRAID_SHM_SPLIT_MIN", "1"),
            ("BRAID_SHM_EAGER_LIMIT", "256"),
        ],
    );
    assert_ok(&f, "p2p_wildcard all-to-all with split transfers, 8 ranks");
}

#[test]
fn misc_semantics_over_shared_memory() {
    let _g = one_job_at_a_time();
    let f = job(4, "p2p_misc", &[], &[]);
    assert_ok(&f, "p2p_misc, 4 ranks");
}

#[test]
fn mixed_shared_memory_and_tcp() {
    let _g = one_job_at_a_time();
    // Two fake hosts: ranks 0,2 share one, 1,3 the other; traffic within a pair goes through
    // shared memory, across pairs through TCP.
    for (bin, args) in [
        ("p2p_pairs", &["2"][..]),
        ("p2p_wildcard", &["11", "120", "all"][..]),
        ("p2p_large", &["8"][..]),
    ] {
        let f = job(4, bin, args, &[("BRAID_FAKE_HOSTS", "2")]);
        assert_ok(&f, &format!("{bin} over two fake hosts"));
    }
}

#[test]
fn tcp_only_when_shared_memory_is_off() {
    let _g = one_job_at_a_time();
    let f = job(4, "p2p_pairs", &["2"], &[("BRAID_SHM", "off")]);
    assert_ok(&f, "p2p_pairs with BRAID_SHM=off");
}

#[test]
fn killed_rank_leaves_no_segment() {
    let _g = one_job_at_a_time();
    for mode in ["kill", "kill-any"] {
        let marker = unique_marker("shmkill");
        let f = job(2, "p2p_fault", &[mode, &marker], &[]);
        assert_ne!(f.code(), Some(0), "{mode}: job should fail: {}", show(&f));
        assert!(
            f.elapsed < Duration::from_secs(6),
            "{mode}: job took {:?}",
            f.elapsed
        );
        let left = segments();
        assert!(left.is_empty(), "{mode}: segments left: {left:?}");
        let procs = leftovers_after(&marker, Duration::from_secs(3));
        assert!(procs.is_empty(), "{mode}: processes left: {procs:?}");
    }
}

#[test]
fn uneven_hosts_through_a_launch_agent() {
    let _g = one_job_at_a_time();
    // Three hosts of 3, 2 and 1 ranks (the agent runs them here with BRAID_HOST_ID set): a
    // host with a single rank has no shared-memory peers but must pass the same bootstrap
    // barriers as the others.
    for (bin, args) in [("p2p_pairs", &["2"][..]), ("coll_all", &[][..])] {
        let mut cmd = Command::new(mpirun());
        cmd.args([
            "-H",
            "hosta:3,hostb:2,hostc:1",
            "--launch-agent",
            "env",
            "-n",
            "6",
        ])
        .arg(binary(bin))
        .args(args);
        let f = run_with_deadline(&mut cmd, DEADLINE);
        assert_ok(&f, &format!("{bin} on three uneven hosts"));
    }
}
