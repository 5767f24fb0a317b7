//! Linux socket introspection for the TCP transport: how many bytes a socket still holds and
//! whether its peer is acknowledging them; `poll(2)` over sockets kept out of the poller. All
//! `unsafe` of the TCP transport is here, save the borrowed send bodies of `conn`.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// What a non-blocking [`recv`] found.
#[derive(Debug)]
pub(crate) enum Recv {
    /// This many bytes, at the start of the buffer.
    Data(usize),
    /// Nothing yet (`EAGAIN`, or interrupted).
    Empty,
    /// The peer closed the connection.
    Closed,
    /// The connection failed.
    Failed(io::Error),
}

/// One non-blocking `recv(2)` into `buf` (not empty): the busy-polling read, without building
/// an `io::Error` when nothing is there.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> Recv {
    debug_assert!(!buf.is_empty());
    // SAFETY: the pointer and length describe `buf`, writable for the whole call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    match usize::try_from(n) {
        Ok(0) => Recv::Closed,
        Ok(n) => Recv::Data(n),
        Err(_) => {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Recv::Empty,
                _ => Recv::Failed(e),
            }
        }
    }
}

/// One non-blocking `send(2)` of `buf` (no `SIGPIPE`); `Ok(0)` when the socket takes nothing
/// now (`EAGAIN`, or interrupted).
///
/// # Errors
/// The connection failed.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: the pointer and length describe `buf`, readable for the whole call.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) };
    match usize::try_from(n) {
        Ok(n) => Ok(n),
        Err(_) => {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(0),
                _ => Err(e),
            }
        }
    }
}

/// Waits up to `timeout` (rounded up to whole milliseconds) until one of `fds` is ready, as
/// `poll(2)` does; returns the number of ready entries (their `revents` are set).
///
/// # Errors
/// `poll` failed; `Interrupted` is returned as such.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: the pointer and count describe `fds`, a live slice of pollfd the kernel may
    // write (`revents`) during the call, and `n` is at most its length.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(rc).unwrap_or(0))
}

/// What the kernel knows about a connection's send side.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Health {
    /// Segments sent and not yet acknowledged.
    pub(crate) unacked: u32,
    /// Milliseconds since the last ACK arrived.
    pub(crate) last_ack_recv_ms: u32,
    /// Smoothed round-trip time, microseconds.
    pub(crate) rtt_us: u32,
    /// The window the peer last advertised, bytes (0 on kernels before 5.4, which do not
    /// report it).
    pub(crate) snd_wnd: u32,
}

/// Bytes in the socket's send queue: written by us and not yet acknowledged by the peer
/// (`SIOCOUTQ`, see tcp(7)).
///
/// # Errors
/// The ioctl failed (not a TCP socket).
pub(crate) fn unacked_bytes(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (alias TIOCOUTQ) writes one c_int through the pointer, which points to
    // a live local.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// The connection's `TCP_INFO` fields that tell a dead path from a slow reader: a slow reader
/// keeps acknowledging (window probes), a dead path acknowledges nothing.
///
/// # Errors
/// `getsockopt` failed.
pub(crate) fn health(fd: RawFd) -> io::Result<Health> {
    // SAFETY: tcp_info is plain old data (integers only), for which all-zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(size_of::<libc::tcp_info>()).unwrap_or(0);
    // SAFETY: the pointer and length describe `info`, which lives across the call; the kernel
    // writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Health {
        unacked: info.tcpi_unacked,
        last_ack_recv_ms: info.tcpi_last_ack_recv,
        rtt_us: info.tcpi_rtt,
        snd_wnd: info.tcpi_snd_wnd,
    })
}

/// Which of the interfaces `names` are down (administratively, or without carrier), from the
/// OS's interface list. Names that are not interfaces (a rail given as an address) never
/// count as down.
///
/// # Errors
/// Listing the interfaces failed.
pub(crate) fn links_down(names: &[&str]) -> io::Result<Vec<usize>> {
    use nix::net::if_::InterfaceFlags;
    let mut seen = vec![None; names.len()];
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        if let Some(i) = names.iter().position(|n| *n == ifa.interface_name) {
            let up = ifa
                .flags
                .contains(InterfaceFlags::IFF_UP | InterfaceFlags::IFF_RUNNING);
            seen[i] = Some(seen[i].unwrap_or(false) || up);
        }
    }
    Ok(seen
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == Some(false))
        .map(|(i, _)| i)
        .collect())
}
