//! `mpirun` end to end, with plain shell programs (no Braid runtime needed): output, tags,
//! environment, exit codes, faults, time limits, hosts, launch agents and PMI abort.
//!
//! Needs the binaries: `cargo build --workspace --bins` (same profile) first.

use std::process::Command;
use std::time::Duration;

use braid_tests::{Finished, leftovers_after, mpirun, run_with_deadline, unique_marker};

/// Deadline for jobs that should end at once.
const QUICK: Duration = Duration::from_secs(20);

fn run(args: &[&str]) -> Finished {
    run_with_deadline(Command::new(mpirun()).args(args), QUICK)
}

fn assert_ok(f: &Finished) {
    assert_eq!(
        f.code(),
        Some(0),
        "mpirun failed.\nstdout:\n{}\nstderr:\n{}",
        f.stdout,
        f.stderr
    );
}

#[test]
fn every_rank_runs_once() {
    for n in [1u32, 2, 4, 8] {
        let f = run(&[
            "-n",
            &n.to_string(),
            "sh",
            "-c",
            "echo rank $PMI_RANK of $PMI_SIZE local $BRAID_LOCAL_RANK",
        ]);
        assert_ok(&f);
        let mut lines: Vec<&str> = f.stdout.lines().collect();
        lines.sort_unstable();
        let mut want: Vec<String> = (0..n)
            .map(|r| format!("rank {r} of {n} local {r}"))
            .collect();
        want.sort_unstable();
        assert_eq!(lines, want, "n={n}; stderr:\n{}", f.stderr);
    }
}

#[test]
fn open_mpi_np_spelling_and_job_env() {
    let f = run(&[
        "-np",
        "2",
        "sh",
        "-c",
        "echo $PMI_ID:$BRAID_LOCAL_SIZE:${BRAID_JOB_ID:+job}:${BRAID_HOST_ID:-nohost}:${PMI_PORT%:*}",
    ]);
    assert_ok(&f);
    let mut lines: Vec<&str> = f.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        vec!["0:2:job:nohost:127.0.0.1", "1:2:job:nohost:127.0.0.1"]
    );
}

#[test]
fn tag_output_prefixes_lines() {
    let f = run(&[
        "-n",
        "2",
        "--tag-output",
        "sh",
        "-c",
        "echo out$PMI_RANK; echo err$PMI_RANK >&2",
    ]);
    assert_ok(&f);
    for r in 0..2 {
        assert!(
            f.stdout
                .lines()
                .any(|l| l == format!("[1,{r}]<stdout>:out{r}")),
            "stdout:\n{}",
            f.stdout
        );
        assert!(
            f.stderr
                .lines()
                .any(|l| l == format!("[1,{r}]<stderr>:err{r}")),
            "stderr:\n{}",
            f.stderr
        );
    }
}

#[test]
fn long_output_lines_are_not_interleaved() {
    // Each rank prints 200 lines of 2000 identical characters; any interleaving breaks a line.
    let script = "i=0; l=$(printf \"%2000s\" \"\" | tr \" \" \"$PMI_RANK\"); while [ $i -lt 200 ]; do echo \"$l\"; i=$((i+1)); done";
    let f = run(&["-n", "4", "sh", "-c", script]);
    assert_ok(&f);
    assert_eq!(f.stdout.lines().count(), 800);
    for line in f.stdout.lines() {
        assert_eq!(line.len(), 2000);
        let first = line.as_bytes()[0];
        assert!(line.bytes().all(|b| b == first), "interleaved line");
    }
}

#[test]
fn exported_variables_reach_ranks() {
    let f = run_with_deadline(
        Command::new(mpirun())
            .env("BRAIDTEST_FROM_ENV", "inherited")
            .args([
                "-n",
                "2",
                "-x",
                "FOO=bar",
                "-x",
                "BRAIDTEST_FROM_ENV",
                "sh",
                "-c",
                "echo $FOO $BRAIDTEST_FROM_ENV",
            ]),
        QUICK,
    );
    assert_ok(&f);
    assert_eq!(
        f.stdout.lines().filter(|l| *l == "bar inherited").count(),
        2,
        "{}",
        f.stdout
    );
    let f = run(&["-n", "1", "-x", "BRAIDTEST_SURELY_UNSET_VAR", "true"]);
    assert_ne!(f.code(), Some(0));
    assert!(
        f.stderr.contains("BRAIDTEST_SURELY_UNSET_VAR"),
        "{}",
        f.stderr
    );
}

#[test]
fn exit_code_of_failed_rank_is_propagated() {
    let f = run(&[
        "-n",
        "3",
        "sh",
        "-c",
        "if [ $PMI_RANK = 2 ]; then exit 3; fi; sleep 30",
    ]);
    assert_eq!(f.code(), Some(3), "stderr:\n{}", f.stderr);
    assert!(
        f.stderr.contains("rank 2") && f.stderr.contains("exited with status 3"),
        "{}",
        f.stderr
    );
    assert!(f.elapsed < Duration::from_secs(5), "took {:?}", f.elapsed);
}

#[test]
fn killed_rank_ends_job_and_leaves_nothing_behind() {
    let marker = unique_marker("braidtest_kill");
    let script = "if [ $PMI_RANK = 1 ]; then sleep 0.3; kill -9 $$; fi; sleep 30";
    let f = run_with_deadline(
        Command::new(mpirun()).args([
            "-n",
            "4",
            "-x",
            &format!("BRAIDTEST_MARKER={marker}"),
            "sh",
            "-c",
            script,
            &marker,
        ]),
        QUICK,
    );
    assert_eq!(f.code(), Some(128 + 9), "stderr:\n{}", f.stderr);
    assert!(
        f.stderr.contains("rank 1") && f.stderr.contains("signal 9 (SIGKILL)"),
        "{}",
        f.stderr
    );
    assert!(
        f.elapsed < Duration::from_millis(2300 + 300),
        "took {:?}",
        f.elapsed
    );
    let left = leftovers_after(&marker, Duration::from_millis(500));
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn ranks_ignoring_sigterm_are_killed() {
    let marker = unique_marker("braidtest_term");
    let script = "trap '' TERM; if [ $PMI_RANK = 0 ]; then exit 5; fi; sleep 30; sleep 30";
    let f = run_with_deadline(
        Command::new(mpirun()).args([
            "-n",
            "2",
            "-x",
            &format!("BRAIDTEST_MARKER={marker}"),
            "sh",
            "-c",
            script,
            &marker,
        ]),
        QUICK,
    );
    assert_eq!(f.code(), Some(5), "stderr:\n{}", f.stderr);
    assert!(f.elapsed < Duration::from_secs(4), "took {:?}", f.elapsed);
    let left = leftovers_after(&marker, Duration::from_millis(500));
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn timeout_ends_job_with_124() {
    let marker = unique_marker("braidtest_timeout");
    let f = run_with_deadline(
        Command::new(mpirun()).args([
            "--timeout",
            "1",
            "-n",
            "2",
            "-x",
            &format!("BRAIDTEST_MARKER={marker}"),
            "sh",
            "-c",
            "sleep 30",
            &marker,
        ]),
        QUICK,
    );
    assert_eq!(f.code(), Some(124), "stderr:\n{}", f.stderr);
    assert!(
        f.stderr.contains("timed out after 1 seconds"),
        "{}",
        f.stderr
    );
    assert!(f.elapsed < Duration::from_secs(4), "took {:?}", f.elapsed);
    assert!(leftovers_after(&marker, Duration::from_millis(500)).is_empty());
}

#[test]
fn sigterm_to_mpirun_kills_ranks() {
    let marker = unique_marker("braidtest_sig");
    let mut child = Command::new(mpirun())
        .args([
            "-n",
            "2",
            "-x",
            &format!("BRAIDTEST_MARKER={marker}"),
            "sleep",
            "30",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > QUICK {
            let _ = child.kill();
            panic!("mpirun did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(143));
    assert!(leftovers_after(&marker, Duration::from_millis(500)).is_empty());
}

#[test]
fn bad_flag_is_named() {
    let f = run(&["--no-such-flag", "-n", "1", "true"]);
    assert_eq!(f.code(), Some(2));
    assert!(f.stderr.contains("--no-such-flag"), "{}", f.stderr);
}

#[test]
fn missing_program_is_named_and_nothing_starts() {
    let f = run(&["-n", "2", "braidtest-no-such-program"]);
    assert_eq!(f.code(), Some(127));
    assert!(
        f.stderr.contains(
            "program 'braidtest-no-such-program' not found in PATH or among the bundled benchmarks"
        ),
        "{}",
        f.stderr
    );
}

#[test]
fn non_local_host_needs_launch_agent() {
    let f = run(&["-H", "braidtest-fakehost:2", "true"]);
    assert_ne!(f.code(), Some(0));
    assert!(
        f.stderr.contains("braidtest-fakehost") && f.stderr.contains("--launch-agent"),
        "{}",
        f.stderr
    );
}

#[test]
fn launch_agent_template_is_used() {
    let f = run(&[
        "-H",
        "fakehost:2",
        "--launch-agent",
        "env BRAIDTEST_AGENT={host}",
        "sh",
        "-c",
        "echo $BRAIDTEST_AGENT $BRAID_HOST_ID $PMI_RANK $BRAID_LOCAL_RANK/$BRAID_LOCAL_SIZE",
    ]);
    assert_ok(&f);
    let mut lines: Vec<&str> = f.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        vec!["fakehost fakehost 0 0/2", "fakehost fakehost 1 1/2"]
    );
}

#[test]
fn hostfile_places_ranks_by_slots() {
    let dir = std::env::temp_dir().join(unique_marker("braidtest_hostfile"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hosts");
    std::fs::write(&path, "# test hosts\nlocalhost slots=2\nnodeb:1 # remote\n").unwrap();
    let f = run(&[
        "--hostfile",
        path.to_str().unwrap(),
        "-n",
        "3",
        "--launch-agent",
        "env",
        "sh",
        "-c",
        "echo $PMI_RANK ${BRAID_HOST_ID:-local} $BRAID_LOCAL_RANK/$BRAID_LOCAL_SIZE",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_ok(&f);
    let mut lines: Vec<&str> = f.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, vec!["0 local 0/2", "1 local 1/2", "2 nodeb 0/1"]);
}

/// A minimal PMI-1 client in bash over `/dev/tcp`.
const PMI_HELLO: &str = r#"
exec 3<>/dev/tcp/${PMI_PORT%:*}/${PMI_PORT##*:}
echo "cmd=initack pmiid=$PMI_ID" >&3
for i in 1 2 3 4; do read -r l <&3; done
echo "cmd=init pmi_version=1 pmi_subversion=1" >&3; read -r l <&3
"#;

fn has_bash() -> bool {
    Command::new("bash")
        .arg("-c")
        .arg("true")
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn pmi_abort_ends_job_with_its_code() {
    if !has_bash() {
        eprintln!("skipped: no bash");
        return;
    }
    let script = format!(
        "{PMI_HELLO}\nif [ $PMI_RANK = 1 ]; then echo 'cmd=abort exitcode=7' >&3; sleep 30; fi\n\
         echo cmd=barrier_in >&3; read -r l <&3; sleep 30"
    );
    let f = run(&["-n", "3", "bash", "-c", &script]);
    assert_eq!(f.code(), Some(7), "stderr:\n{}", f.stderr);
    assert!(
        f.stderr.contains("rank 1 called abort with error code 7"),
        "{}",
        f.stderr
    );
    assert!(f.elapsed < Duration::from_secs(4), "took {:?}", f.elapsed);
}

#[test]
fn pmi_put_barrier_get_finalize() {
    if !has_bash() {
        eprintln!("skipped: no bash");
        return;
    }
    let script = format!(
        "{PMI_HELLO}\n\
         echo cmd=get_my_kvsname >&3; read -r l <&3; kvs=${{l##*kvsname=}}\n\
         echo \"cmd=put kvsname=$kvs key=card$PMI_RANK value=card-of-$PMI_RANK\" >&3; read -r l <&3\n\
         echo cmd=barrier_in >&3; read -r l <&3\n\
         echo \"cmd=get kvsname=$kvs key=card$(( (PMI_RANK + 1) % PMI_SIZE ))\" >&3; read -r l <&3\n\
         echo \"$PMI_RANK ${{l##*value=}}\"\n\
         if [ \"$0\" = nofin ] && [ $PMI_RANK = 0 ]; then exit 0; fi\n\
         echo cmd=finalize >&3; read -r l <&3; [ \"$l\" = cmd=finalize_ack ] || exit 9"
    );
    let f = run(&["-n", "3", "bash", "-c", &script, "pmi"]);
    assert_ok(&f);
    let mut lines: Vec<&str> = f.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, vec!["0 card-of-1", "1 card-of-2", "2 card-of-0"]);

    // A rank that did PMI init and exits 0 without finalize ends the job with an error.
    let f = run(&["-n", "3", "bash", "-c", &script, "nofin"]);
    assert_ne!(f.code(), Some(0));
    assert!(
        f.stderr.contains("rank 0") && f.stderr.contains("without calling PMI finalize"),
        "{}",
        f.stderr
    );
}

/// MPICH's own PMI-1 client (inside `libmpich`) against our server, when MPICH is installed.
#[test]
fn mpich_program_runs_and_aborts() {
    let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
    if !ok(Command::new("mpicc.mpich").arg("-v")) {
        eprintln!("skipped: no mpicc.mpich");
        return;
    }
    let dir = std::env::temp_dir().join(unique_marker("braidtest_mpich"));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("hello.c");
    let exe = dir.join("hello");
    std::fs::write(
        &src,
        "#include <mpi.h>\n#include <stdio.h>\n\
         int main(int argc, char **argv) { int r, n, s = 0; MPI_Init(&argc, &argv);\n\
         MPI_Comm_rank(MPI_COMM_WORLD, &r); MPI_Comm_size(MPI_COMM_WORLD, &n);\n\
         MPI_Allreduce(&r, &s, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);\n\
         printf(\"rank %d of %d sum %d\\n\", r, n, s);\n\
         if (argc > 1 && r == 1) MPI_Abort(MPI_COMM_WORLD, 9);\n\
         MPI_Finalize(); return 0; }\n",
    )
    .unwrap();
    assert!(
        ok(Command::new("mpicc.mpich").arg("-o").arg(&exe).arg(&src)),
        "mpicc.mpich failed"
    );
    let exe_s = exe.to_str().unwrap();
    let f = run(&["-n", "3", exe_s]);
    assert_ok(&f);
    let mut lines: Vec<&str> = f.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        vec![
            "rank 0 of 3 sum 3",
            "rank 1 of 3 sum 3",
            "rank 2 of 3 sum 3"
        ]
    );
    let f = run(&["-n", "3", exe_s, "abort"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(f.code(), Some(9), "stderr:\n{}", f.stderr);
    assert!(
        f.stderr.contains("rank 1 called abort with error code 9"),
        "{}",
        f.stderr
    );
}
