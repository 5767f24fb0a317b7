//! Helpers shared by Braid's integration tests: locating the built binaries and running jobs
//! with deadlines.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Path of a binary built in the same target directory and profile as the running test
/// (`target/<profile>/deps/test-xxxx` → `target/<profile>/NAME`).
///
/// # Panics
///
/// If the binary is not there, with a message saying how to build it.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe of the test");
    let dir = exe.parent().and_then(|deps| {
        if deps.ends_with("deps") {
            deps.parent()
        } else {
            Some(deps)
        }
    });
    let path = dir
        .map(|d| d.join(name))
        .expect("test executable has a parent directory");
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` (same profile as the tests) first",
        path.display()
    );
    path
}

/// Path of the built `mpirun`; see [`binary`].
pub fn mpirun() -> PathBuf {
    binary("mpirun")
}

/// What a finished command did.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout, lossily decoded.
    pub stdout: String,
    /// Everything it wrote to stderr, lossily decoded.
    pub stderr: String,
    /// Time from spawn to exit.
    pub elapsed: Duration,
}

impl Finished {
    /// The exit code (`None` if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs `cmd` with stdin from `/dev/null` and stdout/stderr captured, polling for its exit
/// until `deadline` has passed since the start.
///
/// # Panics
///
/// If it cannot be spawned, or is still running at the deadline (it is then killed and its
/// output so far is shown in the message).
pub fn run_with_deadline(cmd: &mut Command, deadline: Duration) -> Finished {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let out = drain(&mut child, true);
    let err = drain(&mut child, false);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let elapsed = start.elapsed();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            return Finished {
                status,
                stdout,
                stderr,
                elapsed,
            };
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "{cmd:?} still running after {deadline:?}; killed.\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn drain(child: &mut Child, stdout: bool) -> thread::JoinHandle<String> {
    let mut src: Box<dyn Read + Send> = if stdout {
        Box::new(child.stdout.take().expect("stdout is piped"))
    } else {
        Box::new(child.stderr.take().expect("stderr is piped"))
    };
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = src.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A string unique to this test process and call, to mark the processes of one job.
pub fn unique_marker(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Live (non-zombie) processes other than this one whose command line or environment contains
/// `marker`, as `(pid, command line)`.
pub fn processes_with_marker(marker: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let read = |f: &str| std::fs::read(entry.path().join(f)).unwrap_or_default();
        let stat = String::from_utf8_lossy(&read("stat")).into_owned();
        // Field 3 of /proc/PID/stat, after the parenthesised name, is the state; Z = zombie.
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        {
            continue;
        }
        let cmdline = read("cmdline");
        let environ = read("environ");
        let hit = |hay: &[u8]| hay.windows(marker.len()).any(|w| w == marker.as_bytes());
        if hit(&cmdline) || hit(&environ) {
            let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push((pid, cmd));
        }
    }
    found
}

/// Waits up to `within` for every process marked with `marker` to be gone; returns those left.
pub fn leftovers_after(marker: &str, within: Duration) -> Vec<(u32, String)> {
    let start = Instant::now();
    loop {
        let left = processes_with_marker(marker);
        if left.is_empty() || start.elapsed() > within {
            return left;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for the point-to-point test programs (`src/bin/p2p_*.rs`) and `tests/p2p.rs`.
// ---------------------------------------------------------------------------------------------

/// Outcome of one step of a test program: `Err` carries a message naming what went wrong.
pub type Check<T = ()> = Result<T, String>;

/// Adds context to any displayable error, turning it into a [`Check`] failure.
pub trait OrFail<T> {
    /// `Err(e)` becomes `Err("{what}: {e}")`.
    fn or_fail(self, what: impl std::fmt::Display) -> Check<T>;
}

impl<T, E: std::fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: impl std::fmt::Display) -> Check<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// The program's positional argument `i` (1 = the first) parsed as a `T`, or `default` when
/// it is missing or does not parse.
pub fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// `Err(msg())` unless `cond`.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Check {
    if cond { Ok(()) } else { Err(msg()) }
}

/// Runs the body of a test program on every rank: initializes Braid, runs `body`, and on
/// success finalizes and prints `NAME ok rank R of N`. On failure it prints
/// `NAME FAILED on rank R of N: ...` to stderr and exits 1 without finalizing (the launcher
/// then ends the job).
pub fn run_rank(name: &str, body: impl FnOnce(&braid::SimpleCommunicator) -> Check) {
    use braid::traits::Communicator;
    let universe = match braid::initialize() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("{name} FAILED: initialize: {e}");
            std::process::exit(1);
        }
    };
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    match body(&world) {
        Ok(()) => {
            drop(universe);
            println!("{name} ok rank {rank} of {size}");
        }
        Err(e) => {
            eprintln!("{name} FAILED on rank {rank} of {size}: {e}");
            std::process::exit(1);
        }
    }
}

/// The product `a * b` of 2x2 integer matrices (row-major, wrapping): associative, not
/// commutative, so reductions over it check that rank order is kept.
pub fn matmul(a: [i64; 4], b: [i64; 4]) -> [i64; 4] {
    [
        a[0].wrapping_mul(b[0])
            .wrapping_add(a[1].wrapping_mul(b[2])),
        a[0].wrapping_mul(b[1])
            .wrapping_add(a[1].wrapping_mul(b[3])),
        a[2].wrapping_mul(b[0])
            .wrapping_add(a[3].wrapping_mul(b[2])),
        a[2].wrapping_mul(b[1])
            .wrapping_add(a[3].wrapping_mul(b[3])),
    ]
}

/// Word `k` of the test pattern with salt `salt`: a function of the byte offset `8 * k`.
fn pattern_word(salt: u64, offset: u64) -> u64 {
    let mut z = salt.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    offset.wrapping_add(z).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (offset << 3)
}

/// Fills `buf` with the pattern of its byte offsets, salted by `salt`.
pub fn fill_pattern(buf: &mut [u8], salt: u64) {
    let mut chunks = buf.chunks_exact_mut(8);
    let mut off = 0u64;
    for c in &mut chunks {
        c.copy_from_slice(&pattern_word(salt, off).to_le_bytes());
        off += 8;
    }
    let rest = chunks.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&pattern_word(salt, off).to_le_bytes()[..n]);
}

/// A vector of `len` pattern bytes (see [`fill_pattern`]).
pub fn pattern(len: usize, salt: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(&mut v, salt);
    v
}

/// Checks that `buf` holds the pattern of [`fill_pattern`] with `salt` from byte `from` on;
/// the error names the first wrong offset.
pub fn check_pattern_from(buf: &[u8], salt: u64, from: usize) -> Check {
    let start = from / 8 * 8;
    for (i, c) in buf[start..].chunks(8).enumerate() {
        let off = (start + i * 8) as u64;
        let want = pattern_word(salt, off).to_le_bytes();
        if c != &want[..c.len()] {
            for (j, (got, want)) in c.iter().zip(want).enumerate() {
                let at = off as usize + j;
                if at >= from && *got != want {
                    return Err(format!(
                        "content wrong at byte {at} of {}: got {got:#04x}, want {want:#04x}",
                        buf.len()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// [`check_pattern_from`] from byte 0.
pub fn check_pattern(buf: &[u8], salt: u64) -> Check {
    check_pattern_from(buf, salt, 0)
}

/// A salt made of several small numbers (ranks, indices).
pub fn salt_of(parts: &[u64]) -> u64 {
    parts.iter().fold(0x00C0_FFEE_u64, |acc, p| {
        acc.rotate_left(13).wrapping_mul(31).wrapping_add(*p)
    })
}

/// Whether `mpiexec.mpich` (MPICH's hydra) is on `PATH`.
pub fn mpich_mpiexec() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("mpiexec.mpich"))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// Helpers for the namespace testbed tests (`tests/testbed.rs`).
// ---------------------------------------------------------------------------------------------

/// Prints the visible `SKIPPED: TEST: WHY` line for a test that cannot run here.
pub fn skipped(test: &str, why: &str) {
    eprintln!("SKIPPED: {test}: {why}");
}

/// Root of the workspace (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}
