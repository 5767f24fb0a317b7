//! [`OsError`]: an OS error with the operation and its operands (path, pid, address).

use std::error::Error;
use std::fmt;
use std::io;

/// The payload of the [`io::Error`]s this crate returns for failed syscalls: what was being
/// done (with the path, pid, address and length involved) and the OS error.
///
/// The outer `io::Error` keeps the OS error's [`io::ErrorKind`]; the raw `errno` is
/// reachable with `err.get_ref()` → `downcast_ref::<OsError>()` → [`OsError::os_error`].
#[derive(Debug)]
pub struct OsError {
    /// What failed, e.g. `open /dev/shm/braid-7-0`.
    context: String,
    /// The error from the OS.
    source: io::Error,
}

impl OsError {
    /// What failed, with its operands.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The underlying OS error (with `raw_os_error()`).
    pub fn os_error(&self) -> &io::Error {
        &self.source
    }
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl Error for OsError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// Wraps `source` with `context`, keeping its kind.
pub(crate) fn with_context(source: io::Error, context: String) -> io::Error {
    io::Error::new(source.kind(), OsError { context, source })
}
