//! Platform code: turning the inherited `PMI_FD` descriptor into an owned socket.
//!
//! This is the only place in the crate that uses `unsafe`.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::stat::{SFlag, fstat};

/// Set once `PMI_FD` has been adopted, so that a second adoption cannot create a second owner.
static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Why an inherited descriptor was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AdoptError {
    /// The descriptor was adopted before by this process.
    AlreadyAdopted,
    /// The descriptor is negative or reserved for stdio.
    OutOfRange,
    /// `fcntl(F_GETFD)` or `fstat` failed: the descriptor is not open.
    NotOpen(nix::Error),
    /// The descriptor is open but is not a socket.
    NotASocket,
}

impl std::fmt::Display for AdoptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AlreadyAdopted => f.write_str("it was already adopted by this process"),
            Self::OutOfRange => f.write_str("it is negative or one of stdin/stdout/stderr"),
            Self::NotOpen(e) => write!(f, "it is not an open descriptor ({e})"),
            Self::NotASocket => f.write_str("it is not a socket"),
        }
    }
}

/// Takes ownership of the inherited, connected socket `fd` named by `PMI_FD`.
///
/// Succeeds at most once per process.
pub(crate) fn adopt_inherited_socket(fd: RawFd) -> Result<UnixStream, AdoptError> {
    if fd <= 2 {
        return Err(AdoptError::OutOfRange);
    }
    fcntl(fd, FcntlArg::F_GETFD).map_err(AdoptError::NotOpen)?;
    let st = fstat(fd).map_err(AdoptError::NotOpen)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(AdoptError::NotASocket);
    }
    if ADOPTED.swap(true, Ordering::AcqRel) {
        return Err(AdoptError::AlreadyAdopted);
    }
    debug_assert!(fd > 2);
    // SAFETY: `fd` is open (F_GETFD succeeded) and is a socket (fstat). It was inherited from
    // the launcher through exec and named in PMI_FD for this process's PMI client alone: no
    // other object in this process owns it (std only wraps stdio, and fd > 2), and the
    // ADOPTED flag guarantees this function creates at most one owner for it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    Ok(stream)
}
