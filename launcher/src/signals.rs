//! SIGINT, SIGTERM and SIGHUP to mpirun: recorded by `signal-hook` handlers (async-signal-safe
//! atomic stores) and read by the monitor loop.
//!
//! Handlers rather than blocking + `sigwait`: a blocked mask would be inherited by the ranks
//! (std does not reset it on spawn) and make them deaf to the SIGTERM that ends a job, while
//! caught signals are reset to their default action by `exec`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

/// The last terminating signal received, as a number (0: none).
#[derive(Debug, Clone, Default)]
pub struct Received(Arc<AtomicUsize>);

impl Received {
    /// The signal received, if any.
    pub fn get(&self) -> Option<Signal> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            n => i32::try_from(n).ok().and_then(|n| Signal::try_from(n).ok()),
        }
    }
}

/// Installs the handlers.
///
/// # Errors
///
/// The OS error of `sigaction`.
pub fn install() -> Result<Received> {
    let received = Received::default();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        let n = sig as i32;
        // Signal numbers are small positive integers.
        let value = usize::try_from(n).unwrap_or(usize::MAX);
        signal_hook::flag::register_usize(n, Arc::clone(&received.0), value)
            .with_context(|| format!("cannot install a handler for {}", sig.as_str()))?;
    }
    Ok(received)
}
