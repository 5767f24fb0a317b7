//! Forwarding of each rank's stdout and stderr to mpirun's, line by line.
//!
//! One thread per stream reads whole lines and writes each with a single `write_all` under
//! the lock of mpirun's stdout or stderr, so lines of different ranks never interleave. A line
//! longer than [`MAX_LINE`] is forwarded in pieces; a last line without a newline gets one.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread;
use std::time::Instant;

/// Longest piece forwarded at once.
pub const MAX_LINE: u64 = 64 * 1024;

/// Which of mpirun's streams to write to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// stdout.
    Stdout,
    /// stderr.
    Stderr,
}

/// Tracks the forwarding threads so that the job can wait, bounded, for their last lines.
#[derive(Debug)]
pub struct Forwarders {
    /// Each thread sends one message when its stream ends.
    done_tx: Sender<()>,
    /// Receives those messages.
    done_rx: Receiver<()>,
    /// Threads started.
    started: usize,
    /// Completion messages received.
    finished: usize,
    /// Whether to prefix lines with `[1,RANK]<stream>:`.
    tag: bool,
}

impl Forwarders {
    /// No threads yet.
    pub fn new(tag: bool) -> Self {
        let (done_tx, done_rx) = channel();
        Self {
            done_tx,
            done_rx,
            started: 0,
            finished: 0,
            tag,
        }
    }

    /// Forwards `source` (a rank's pipe) to mpirun's `to` stream.
    pub fn forward<R: Read + Send + 'static>(&mut self, rank: u32, to: Stream, source: R) {
        let prefix = if self.tag {
            let name = match to {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            format!("[1,{rank}]<{name}>:").into_bytes()
        } else {
            Vec::new()
        };
        let done = self.done_tx.clone();
        let spawned = thread::Builder::new()
            .name(format!("stdio-{rank}"))
            .spawn(move || {
                copy_lines(source, &prefix, to);
                let _ = done.send(());
            });
        if spawned.is_ok() {
            self.started += 1;
        }
    }

    /// Waits until every stream has ended or `deadline` passes (a grandchild of a rank may
    /// keep a pipe open); returns whether all ended.
    pub fn wait_until(&mut self, deadline: Instant) -> bool {
        while self.finished < self.started {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.done_rx.recv_timeout(left).is_err() {
                return false;
            }
            self.finished += 1;
        }
        true
    }
}

fn copy_lines<R: Read>(source: R, prefix: &[u8], to: Stream) {
    let mut reader = BufReader::new(source);
    let mut line = Vec::with_capacity(256);
    let mut out = Vec::with_capacity(256);
    loop {
        line.clear();
        match reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        out.clear();
        out.extend_from_slice(prefix);
        out.extend_from_slice(&line);
        if !line.ends_with(b"\n") {
            out.push(b'\n');
        }
        // A closed stdout (mpirun | head) must not stop the rank: keep draining its pipe.
        let _ = match to {
            Stream::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(&out).and_then(|()| o.flush())
            }
            Stream::Stderr => std::io::stderr().lock().write_all(&out),
        };
    }
}
