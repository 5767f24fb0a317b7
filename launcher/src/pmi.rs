//! The job's PMI-1 server: a [`braid_pmi::KvsServer`] driven by [`braid_pmi::ThreadedServer`]
//! on a TCP port, and the addresses ranks use to reach it.
//!
//! Listening address: `--pmi-addr` if given; else 127.0.0.1 when every host is local, else
//! 0.0.0.0. Local ranks are told `127.0.0.1:PORT` unless `--pmi-addr` names a specific
//! address; remote ranks are told `--pmi-addr` if it is specific, else this host's name.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

use anyhow::{Context, Result};
use braid_pmi::{KvsServer, ThreadedServer};

/// A running PMI server and the `PMI_PORT` values to hand out.
#[derive(Debug)]
pub struct PmiServer {
    /// The server threads and their event channel.
    pub server: ThreadedServer,
    /// `PMI_PORT` for ranks on this machine.
    pub local_port: String,
    /// `PMI_PORT` for ranks started through a launch agent.
    pub remote_port: String,
}

/// Starts the server for `size` ranks.
///
/// # Errors
///
/// Binding the listener or starting the threads failed; the error names the address.
pub fn start(
    size: u32,
    any_remote: bool,
    pmi_addr: Option<IpAddr>,
    hostname: &str,
) -> Result<PmiServer> {
    let bind_ip = pmi_addr.unwrap_or(if any_remote {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::LOCALHOST.into()
    });
    let bind = SocketAddr::new(bind_ip, 0);
    let listener =
        TcpListener::bind(bind).with_context(|| format!("cannot listen for PMI on {bind}"))?;
    let kvsname = format!("kvs_{}_0", std::process::id());
    let server = ThreadedServer::spawn(listener, KvsServer::new(size, &kvsname))
        .with_context(|| format!("cannot start the PMI server on {bind}"))?;
    let port = server.local_addr().port();
    let specific = !bind_ip.is_unspecified();
    let fmt = |ip: IpAddr| SocketAddr::new(ip, port).to_string();
    let local_port = if specific {
        fmt(bind_ip)
    } else {
        fmt(Ipv4Addr::LOCALHOST.into())
    };
    let remote_port = if specific {
        fmt(bind_ip)
    } else {
        format!("{hostname}:{port}")
    };
    Ok(PmiServer {
        server,
        local_port,
        remote_port,
    })
}
