//! A small threaded TCP driver for [`KvsServer`]: what `mpirun` runs, and what the tests use.
//!
//! Threads: one acceptor (non-blocking accept polled every 10 ms, so it can stop), one reader
//! per connection (blocking reads of whole lines), and one dispatcher that owns the
//! [`KvsServer`], feeds it every input in arrival order and writes its replies. Job-level
//! [`ServerEvent`]s come out of a channel.
//!
//! Writes have a 5 s timeout, so one stalled rank cannot block the dispatcher for longer.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::Duration;

use crate::server::{ConnId, KvsServer, ServerEvent, Transmit};
use crate::wire::LineReader;

/// How long a write to one rank may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the acceptor checks for shutdown.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// What the reader and acceptor threads tell the dispatcher.
enum Input {
    Connected(ConnId, TcpStream),
    Line(ConnId, Vec<u8>),
    Closed(ConnId, Option<String>),
    Stop,
}

/// A running PMI-1 server on a TCP listener. Stops its threads when dropped.
#[derive(Debug)]
pub struct ThreadedServer {
    /// The listener's address (what `PMI_PORT` should point at, port-wise).
    local_addr: SocketAddr,
    /// Events from the [`KvsServer`], in order.
    events: Receiver<ServerEvent>,
    /// Set on drop; the acceptor polls it.
    stop: Arc<AtomicBool>,
    /// To wake the dispatcher on drop.
    inputs: Sender<Input>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Input")
    }
}

impl ThreadedServer {
    /// Starts serving `server` on `listener`.
    ///
    /// # Errors
    ///
    /// The OS error if the listener cannot be switched to non-blocking mode or a thread cannot
    /// be started.
    pub fn spawn(listener: TcpListener, server: KvsServer) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let (in_tx, in_rx) = mpsc::channel::<Input>();
        let (ev_tx, ev_rx) = mpsc::channel::<ServerEvent>();
        let stop = Arc::new(AtomicBool::new(false));
        thread::Builder::new()
            .name("pmi-dispatch".into())
            .spawn(move || dispatch(server, &in_rx, &ev_tx))?;
        let acc_stop = Arc::clone(&stop);
        let acc_tx = in_tx.clone();
        thread::Builder::new()
            .name("pmi-accept".into())
            .spawn(move || accept(&listener, &acc_tx, &acc_stop))?;
        Ok(Self {
            local_addr,
            events: ev_rx,
            stop,
            inputs: in_tx,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The event channel; drain it with `try_recv` or `recv_timeout`.
    pub fn events(&self) -> &Receiver<ServerEvent> {
        &self.events
    }
}

impl Drop for ThreadedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.inputs.send(Input::Stop);
    }
}

fn accept(listener: &TcpListener, tx: &Sender<Input>, stop: &AtomicBool) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                let conn = ConnId(NEXT.fetch_add(1, Ordering::Relaxed));
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
                let Ok(reader) = stream.try_clone() else {
                    continue;
                };
                if tx.send(Input::Connected(conn, stream)).is_err() {
                    return;
                }
                let tx = tx.clone();
                let spawned = thread::Builder::new()
                    .name("pmi-conn".into())
                    .spawn(move || read_lines(conn, reader, &tx));
                if spawned.is_err() {
                    // The dispatcher still holds the stream; it will be closed at drop.
                    continue;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Transient errors (EMFILE, ECONNABORTED): back off and retry.
            Err(_) => thread::sleep(ACCEPT_POLL),
        }
    }
}

fn read_lines(conn: ConnId, mut stream: TcpStream, tx: &Sender<Input>) {
    let mut reader = LineReader::new();
    loop {
        match reader.read_line(&mut stream) {
            Ok(Some(line)) => {
                if tx.send(Input::Line(conn, line)).is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx.send(Input::Closed(conn, Some(e.to_string())));
                return;
            }
        }
    }
    let _ = tx.send(Input::Closed(conn, None));
}

fn dispatch(mut server: KvsServer, rx: &Receiver<Input>, events: &Sender<ServerEvent>) {
    let mut streams: HashMap<ConnId, TcpStream> = HashMap::new();
    while let Ok(input) = rx.recv() {
        match input {
            Input::Connected(conn, stream) => {
                streams.insert(conn, stream);
                server.handle_connect(conn);
            }
            Input::Line(conn, line) => server.handle_line(conn, &line),
            Input::Closed(conn, error) => {
                if let Some(reason) = error {
                    let rank = server.rank_of(conn);
                    let _ = events.send(ServerEvent::ProtocolError { conn, rank, reason });
                }
                streams.remove(&conn);
                server.handle_disconnect(conn);
            }
            Input::Stop => break,
        }
        // Events first: a rank can only go on after it reads a reply, so the launcher sees
        // e.g. `Identified` before the rank can do anything else (or exit).
        while let Some(ev) = server.poll_event() {
            let _ = events.send(ev);
        }
        while let Some(t) = server.poll_transmit() {
            match t {
                Transmit::Send { conn, command } => {
                    let Some(s) = streams.get_mut(&conn) else {
                        continue;
                    };
                    if s.write_all(command.encode().as_bytes()).is_err() {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
                Transmit::Close { conn } => {
                    if let Some(s) = streams.get(&conn) {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
            }
        }
    }
    for s in streams.values() {
        let _ = s.shutdown(Shutdown::Both);
    }
}
