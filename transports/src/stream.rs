//! Framing over a byte stream: the part of a connection that TCP sockets and shared-memory
//! rings have in common.
//!
//! A [`FramedConn`] writes frames (header, then body) into a non-blocking [`ByteStream`],
//! queueing what the stream does not take at once, and parses incoming bytes into frames,
//! asking its [`FrameSink`] where each payload goes.
//!
//! # Implementation notes
//! Reads go through a caller-provided staging buffer, so one read can carry many small
//! frames; a large payload remainder is read straight into its destination. A body that the
//! stream cannot take at once is copied when it has no owner; one with an owning send request
//! stays borrowed until written, and the request is then reported through
//! [`FrameSink::on_sent`].

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use braid_engine::{FrameToken, Rank, ReqId};

use braid_engine::wire::{COMPACT_LEN, header_len};

use crate::{Body, FrameSink, HEADER_LEN, TransportError};

/// Eager bodies at most this long go without an owner (a transport copies what it cannot
/// write at once), so their sends complete at once; longer ones stay lent until written.
pub const COPY_LIMIT: usize = 64 * 1024;
/// Least storage of a queued copy: frames that the stream cannot take are copied into
/// buffers of this size, several small frames to a buffer.
const COPY_CHUNK: usize = 64 * 1024;
/// Most emptied copy buffers a connection keeps for reuse.
const SPARES: usize = 8;
/// Payload remainders at least this long are read straight into their destination.
const DIRECT_READ: usize = 32 * 1024;
/// In [`ReadMode::Exact`], a read for a header takes up to this many bytes, so a small
/// frame arrives in one read and its payload is copied from the staging buffer.
const EXACT_LOOKAHEAD: usize = 256;

/// How [`FramedConn::read_all`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Large reads into the staging buffer, so one system call carries many small frames;
    /// payload remainders of 32 KiB or more go straight to their destination. A short read
    /// ends the loop (edge-triggered sockets report new data as a new event). For sockets.
    Batched,
    /// Small reads: a header and up to 256 bytes after it through the
    /// staging buffer, longer payloads straight into their destination. For streams whose
    /// reads are cheap (shared-memory rings).
    Exact,
}

/// A non-blocking byte stream: reads and writes return `WouldBlock` instead of waiting.
pub trait ByteStream {
    /// Reads available bytes; `Ok(0)` means the peer closed the stream.
    ///
    /// # Errors
    /// `WouldBlock` when nothing is available; any other error fails the connection.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes some of `bufs`, in order.
    ///
    /// # Errors
    /// `WouldBlock` when no byte fits; any other error fails the connection.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

enum Out {
    Owned {
        data: Vec<u8>,
        pos: usize,
    },
    Borrowed {
        ptr: *const u8,
        len: usize,
        pos: usize,
        req: ReqId,
    },
}

enum ReadState {
    Header {
        buf: [u8; HEADER_LEN],
        got: usize,
    },
    Payload {
        token: FrameToken,
        ptr: *mut u8,
        take: usize,
        skip: usize,
    },
}

/// One framed connection to a peer.
pub struct FramedConn<S> {
    /// The authenticated peer.
    peer: Rank,
    /// Peer address, for error messages.
    addr: String,
    /// The underlying stream.
    stream: S,
    /// Bytes queued for writing, in order. Borrowed entries point into send buffers whose
    /// requests stay incomplete until `on_sent` is reported for them.
    out: VecDeque<Out>,
    /// Where the next incoming bytes go. A `Payload` pointer is valid (sink's promise) until
    /// the payload completes.
    rd: ReadState,
    /// Storage of fully written copies, emptied, for the next ones (at most [`SPARES`]): a
    /// stream that keeps filling up would otherwise allocate, and fault in, fresh pages for
    /// every queued frame.
    spares: Vec<Vec<u8>>,
}

impl<S> std::fmt::Debug for FramedConn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedConn")
            .field("peer", &self.peer)
            .field("addr", &self.addr)
            .field("queued", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl<S: ByteStream> FramedConn<S> {
    /// Wraps a stream connected to `peer`.
    pub fn new(peer: Rank, addr: String, stream: S) -> Self {
        Self {
            peer,
            addr,
            stream,
            out: VecDeque::new(),
            rd: ReadState::Header {
                buf: [0; HEADER_LEN],
                got: 0,
            },
            spares: Vec::new(),
        }
    }

    /// The peer.
    pub fn peer(&self) -> Rank {
        self.peer
    }

    /// The stream.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Whether the next incoming byte starts a frame (no frame is half read).
    pub fn at_frame_boundary(&self) -> bool {
        matches!(self.rd, ReadState::Header { got: 0, .. })
    }

    /// Whether bytes are queued for writing.
    pub fn has_pending_writes(&self) -> bool {
        !self.out.is_empty()
    }

    /// Requests whose bodies are still queued (to release them when the connection dies).
    pub fn borrowed_requests(&self) -> impl Iterator<Item = ReqId> + '_ {
        self.out.iter().filter_map(|o| match o {
            Out::Borrowed { req, .. } => Some(*req),
            Out::Owned { .. } => None,
        })
    }

    /// The error for a closed stream.
    pub fn closed(&self) -> TransportError {
        TransportError::PeerClosed {
            peer: self.peer,
            addr: self.addr.clone(),
        }
    }

    fn io_err(&self, op: &'static str, source: io::Error) -> TransportError {
        TransportError::LocalIo {
            peer: self.peer,
            addr: self.addr.clone(),
            op,
            source,
        }
    }

    /// Writes or queues a frame. Requests whose body was fully handed over are appended to
    /// `sent`.
    ///
    /// # Safety
    /// As [`crate::Transport::send`].
    ///
    /// # Errors
    /// A write error; the connection is then unusable.
    pub unsafe fn send(
        &mut self,
        header: &[u8; HEADER_LEN],
        body: Body,
        sent: &mut Vec<ReqId>,
    ) -> Result<(), TransportError> {
        let body_slice: &[u8] = if body.len == 0 {
            &[]
        } else {
            // SAFETY: the caller guarantees `ptr` is valid for `len` bytes.
            unsafe { std::slice::from_raw_parts(body.ptr, body.len) }
        };
        let header = &header[..header_len(header[0])];
        let hlen = header.len();
        let mut written = 0;
        let total = hlen + body.len;
        if self.out.is_empty() {
            while written < total {
                let res = if written < hlen {
                    let bufs = [IoSlice::new(&header[written..]), IoSlice::new(body_slice)];
                    self.stream.write_vectored(&bufs)
                } else {
                    let bufs = [IoSlice::new(&body_slice[written - hlen..])];
                    self.stream.write_vectored(&bufs)
                };
                match res {
                    Ok(0) => break,
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.io_err("write", e)),
                }
            }
            if written == total {
                sent.extend(body.owner);
                return Ok(());
            }
        }
        let body_done = written.saturating_sub(hlen);
        let rest = body.len - body_done;
        let head = &header[written.min(hlen)..];
        match body.owner {
            Some(req) if rest > 0 => {
                if !head.is_empty() {
                    self.queue_copy(&[head]);
                }
                self.out.push_back(Out::Borrowed {
                    // SAFETY: body_done <= len, inside the caller's buffer.
                    ptr: unsafe { body.ptr.add(body_done) },
                    len: rest,
                    pos: 0,
                    req,
                });
            }
            _ => {
                self.queue_copy(&[head, &body_slice[body_done..]]);
                sent.extend(body.owner);
            }
        }
        Ok(())
    }

    /// Queues copies of `parts`: appended to the last queued copy while its storage has room
    /// (one buffer for a run of small frames, and never a reallocation), else in a new copy
    /// of at least [`COPY_CHUNK`] bytes of storage, a spare one when there is one.
    fn queue_copy(&mut self, parts: &[&[u8]]) {
        let need = parts.iter().map(|p| p.len()).sum::<usize>();
        if need == 0 {
            return;
        }
        if let Some(Out::Owned { data, .. }) = self.out.back_mut()
            && data.capacity() - data.len() >= need
        {
            for p in parts {
                data.extend_from_slice(p);
            }
            return;
        }
        let mut data = match self.spares.pop() {
            Some(d) if d.capacity() >= need => d,
            _ => Vec::with_capacity(need.max(COPY_CHUNK)),
        };
        for p in parts {
            data.extend_from_slice(p);
        }
        self.out.push_back(Out::Owned { data, pos: 0 });
    }

    /// Writes queued output. Returns whether any byte was written; requests whose borrowed
    /// bodies are now fully written are appended to `sent`.
    ///
    /// # Errors
    /// A write error; the connection is then unusable.
    pub fn flush(&mut self, sent: &mut Vec<ReqId>) -> Result<bool, TransportError> {
        self.flush_at_most(sent, usize::MAX)
    }

    /// [`Self::flush`], stopping once about `budget` bytes are written (the rest stays
    /// queued for the next call).
    ///
    /// # Errors
    /// As [`Self::flush`].
    pub fn flush_at_most(
        &mut self,
        sent: &mut Vec<ReqId>,
        mut budget: usize,
    ) -> Result<bool, TransportError> {
        let mut did = false;
        while let Some(front) = self.out.front_mut() {
            if budget == 0 {
                break;
            }
            let res = match front {
                Out::Owned { data, pos } => {
                    self.stream.write_vectored(&[IoSlice::new(&data[*pos..])])
                }
                Out::Borrowed { ptr, len, pos, .. } => {
                    // SAFETY: the owner request keeps the buffer alive until on_sent.
                    let s = unsafe { std::slice::from_raw_parts(ptr.add(*pos), *len - *pos) };
                    self.stream.write_vectored(&[IoSlice::new(s)])
                }
            };
            let left = match front {
                Out::Owned { data, pos } => data.len() - *pos,
                Out::Borrowed { len, pos, .. } => *len - *pos,
            };
            match res {
                Ok(0) => break,
                Ok(n) => {
                    did = true;
                    budget = budget.saturating_sub(n);
                    if n >= left {
                        match self.out.pop_front() {
                            Some(Out::Borrowed { req, .. }) => sent.push(req),
                            Some(Out::Owned { mut data, .. }) if self.spares.len() < SPARES => {
                                data.clear();
                                self.spares.push(data);
                            }
                            _ => {}
                        }
                    } else {
                        match front {
                            Out::Owned { pos, .. } | Out::Borrowed { pos, .. } => *pos += n,
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err("write", e)),
            }
        }
        Ok(did)
    }

    /// Reads everything available into frames (see [`ReadMode`]). Returns whether any byte
    /// was read.
    ///
    /// # Errors
    /// The stream closed or failed, or the sink rejected a frame; the connection is then
    /// unusable and must be dropped.
    pub fn read_all(
        &mut self,
        staging: &mut [u8],
        sink: &mut dyn FrameSink,
        mode: ReadMode,
    ) -> Result<bool, TransportError> {
        self.read_at_most(staging, sink, mode, usize::MAX)
    }

    /// [`Self::read_all`], stopping once about `budget` bytes are read (the rest stays in
    /// the stream for the next call).
    ///
    /// # Errors
    /// As [`Self::read_all`].
    pub fn read_at_most(
        &mut self,
        staging: &mut [u8],
        sink: &mut dyn FrameSink,
        mode: ReadMode,
        mut budget: usize,
    ) -> Result<bool, TransportError> {
        let (direct_from, short_read_drains) = match mode {
            ReadMode::Batched => (DIRECT_READ, true),
            ReadMode::Exact => (1, false),
        };
        let mut did = false;
        loop {
            if budget == 0 {
                return Ok(did);
            }
            // A payload remainder goes straight to its destination.
            if let ReadState::Payload {
                ptr, take, skip, ..
            } = &mut self.rd
                && *take >= direct_from
            {
                // SAFETY: the sink promised `ptr` is valid for `take` bytes until on_payload.
                let dst = unsafe { std::slice::from_raw_parts_mut(*ptr, (*take).min(budget)) };
                match self.stream.read(dst) {
                    Ok(0) => return Err(self.closed()),
                    Ok(n) => {
                        did = true;
                        budget -= n;
                        // SAFETY: n <= take, so the pointer stays inside the destination.
                        *ptr = unsafe { ptr.add(n) };
                        *take -= n;
                        if *take == 0 && *skip == 0 {
                            self.finish_payload(sink);
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(did),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.io_err("read", e)),
                }
            }
            let limit = match (mode, &self.rd) {
                (ReadMode::Batched, _) => staging.len(),
                (ReadMode::Exact, ReadState::Header { buf, got }) => {
                    // The first byte says how long the header is; until it is in, read
                    // only the compact length. Reading a little more takes a small frame's
                    // payload (and maybe the next frames) in the same read.
                    let need = if *got == 0 {
                        COMPACT_LEN
                    } else {
                        header_len(buf[0])
                    };
                    (need - *got).max(EXACT_LOOKAHEAD.min(staging.len()))
                }
                (ReadMode::Exact, ReadState::Payload { skip, .. }) => (*skip).min(staging.len()),
            };
            let n = match self.stream.read(&mut staging[..limit]) {
                Ok(0) => return Err(self.closed()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(did),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_err("read", e)),
            };
            did = true;
            budget = budget.saturating_sub(n);
            self.consume(&staging[..n], sink)?;
            if short_read_drains && n < staging.len() {
                return Ok(did);
            }
        }
    }

    /// Parses bytes the caller read from the stream itself (a receive fast path that took
    /// the first frame of a read and hands the rest back), as [`Self::read_all`] would have.
    ///
    /// # Errors
    /// The sink rejected a frame; the connection is then unusable and must be dropped.
    pub fn feed(&mut self, bytes: &[u8], sink: &mut dyn FrameSink) -> Result<(), TransportError> {
        self.consume(bytes, sink)
    }

    /// Parses staged bytes.
    fn consume(
        &mut self,
        mut bytes: &[u8],
        sink: &mut dyn FrameSink,
    ) -> Result<(), TransportError> {
        while !bytes.is_empty() {
            match &mut self.rd {
                ReadState::Header { buf, got } => {
                    let need = if *got == 0 {
                        bytes.first().map_or(HEADER_LEN, |b| header_len(*b))
                    } else {
                        header_len(buf[0])
                    };
                    let k = (need - *got).min(bytes.len());
                    buf[*got..*got + k].copy_from_slice(&bytes[..k]);
                    *got += k;
                    bytes = &bytes[k..];
                    if *got == need {
                        let hdr = *buf;
                        let dest = sink.on_header(self.peer, &hdr).map_err(|reason| {
                            TransportError::PeerProtocol {
                                peer: self.peer,
                                addr: self.addr.clone(),
                                reason,
                            }
                        })?;
                        self.rd = ReadState::Payload {
                            token: dest.token,
                            ptr: dest.ptr,
                            take: dest.take,
                            skip: dest.skip,
                        };
                        if dest.take == 0 && dest.skip == 0 {
                            self.finish_payload(sink);
                        }
                    }
                }
                ReadState::Payload {
                    ptr, take, skip, ..
                } => {
                    let k = (*take).min(bytes.len());
                    if k > 0 {
                        // SAFETY: the sink promised `ptr` is valid for `take` bytes; k <= take.
                        unsafe {
                            std::ptr::copy_nonoverlapping(bytes.as_ptr(), *ptr, k);
                            *ptr = ptr.add(k);
                        }
                        *take -= k;
                        bytes = &bytes[k..];
                    }
                    let s = (*skip).min(bytes.len());
                    *skip -= s;
                    bytes = &bytes[s..];
                    if *take == 0 && *skip == 0 {
                        self.finish_payload(sink);
                    }
                }
            }
        }
        Ok(())
    }

    /// Hands `sink` one whole frame, header and payload, that arrived outside the stream
    /// (e.g. through a shared-memory fast box). It does not disturb a frame half read from
    /// the stream.
    ///
    /// # Errors
    /// The frame is shorter than its header or its payload length disagrees with the header,
    /// or the sink rejected it; the connection is then unusable.
    pub fn deliver(&self, frame: &[u8], sink: &mut dyn FrameSink) -> Result<(), TransportError> {
        let bad = |reason: String| TransportError::PeerProtocol {
            peer: self.peer,
            addr: self.addr.clone(),
            reason,
        };
        let hlen = frame.first().map_or(HEADER_LEN, |b| header_len(*b));
        if frame.len() < hlen {
            return Err(bad(format!(
                "a {}-byte frame cannot hold its {hlen}-byte header",
                frame.len()
            )));
        }
        let mut hdr = [0; HEADER_LEN];
        hdr[..hlen].copy_from_slice(&frame[..hlen]);
        let dest = sink.on_header(self.peer, &hdr).map_err(bad)?;
        let payload = &frame[hlen..];
        if dest.take.checked_add(dest.skip) != Some(payload.len()) {
            return Err(bad(format!(
                "frame carries {} payload bytes, its header says {}",
                payload.len(),
                dest.take.saturating_add(dest.skip)
            )));
        }
        if dest.take > 0 {
            // SAFETY: the sink promised `ptr` is valid for `take` bytes; `take <= payload.len()`.
            unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), dest.ptr, dest.take) };
        }
        sink.on_payload(self.peer, dest.token);
        Ok(())
    }

    fn finish_payload(&mut self, sink: &mut dyn FrameSink) {
        if let ReadState::Payload { token, .. } = self.rd {
            self.rd = ReadState::Header {
                buf: [0; HEADER_LEN],
                got: 0,
            };
            sink.on_payload(self.peer, token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_engine::wire::{FrameKind, Header};

    /// An in-memory stream that takes at most `room` bytes until the test makes more room.
    struct Tight {
        written: Vec<u8>,
        room: usize,
    }

    impl ByteStream for Tight {
        fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(self.room - n);
                self.written.extend_from_slice(&b[..k]);
                n += k;
            }
            self.room -= n;
            if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }
    }

    /// Copies queued while the stream is full share one buffer while it has room, and a
    /// written buffer is reused for the next run of copies instead of fresh memory.
    #[test]
    fn queued_copies_reuse_their_storage() {
        let mut conn = FramedConn::new(
            Rank(1),
            "test".into(),
            Tight {
                written: Vec::new(),
                room: 0,
            },
        );
        let body = vec![7u8; 3000];
        let queue = |conn: &mut FramedConn<Tight>, frames: usize| {
            let mut sent = Vec::new();
            for _ in 0..frames {
                let h = Header::new(FrameKind::Eager, Rank(0)).encode_short().0;
                let b = Body {
                    ptr: body.as_ptr(),
                    len: body.len(),
                    owner: None,
                };
                // SAFETY: `body` outlives the connection's use of it (flushed below).
                unsafe { conn.send(&h, b, &mut sent) }.unwrap();
            }
        };
        let storage = |conn: &FramedConn<Tight>| match conn.out.front() {
            Some(Out::Owned { data, .. }) => data.as_ptr(),
            _ => panic!("no queued copy"),
        };
        queue(&mut conn, 10);
        assert_eq!(conn.out.len(), 1, "small copies share a buffer");
        let first = storage(&conn);
        conn.stream_mut().room = usize::MAX / 2;
        conn.flush(&mut Vec::new()).unwrap();
        assert!(!conn.has_pending_writes());
        assert_eq!(conn.spares.len(), 1, "the written buffer was not kept");
        conn.stream_mut().room = 0;
        queue(&mut conn, 3);
        assert!(conn.spares.is_empty(), "the kept buffer was not taken");
        assert_eq!(storage(&conn), first);
    }

    /// Frames that do not fit are queued whole and in order: bodies without an owner copied,
    /// owned ones (small or large) borrowed until written.
    #[test]
    fn queued_frames_keep_order_and_borrow_only_owned_bodies() {
        let mut conn = FramedConn::new(
            Rank(1),
            "test".into(),
            Tight {
                written: Vec::new(),
                room: 100,
            },
        );
        let bodies: Vec<Vec<u8>> = [40usize, 8192, 0, COPY_LIMIT + 5000, 300]
            .iter()
            .enumerate()
            .map(|(i, &len)| (0..len).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        let mut want = Vec::new();
        let mut sent = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let mut h = Header::new(FrameKind::Eager, Rank(0));
            h.msg_len = body.len() as u64;
            let bytes = h.encode_short().0;
            want.extend_from_slice(&bytes[..header_len(bytes[0])]);
            want.extend_from_slice(body);
            let b = Body {
                ptr: body.as_ptr(),
                len: body.len(),
                owner: [1, 3].contains(&i).then_some(ReqId(i as u64)),
            };
            // SAFETY: every body outlives the connection's use of it (flushed below).
            unsafe { conn.send(&bytes, b, &mut sent) }.unwrap();
        }
        // Both owned bodies (requests 1 and 3) are still borrowed; the rest were copied.
        assert!(sent.is_empty(), "{sent:?}");
        assert_eq!(
            conn.borrowed_requests().collect::<Vec<_>>(),
            [ReqId(1), ReqId(3)]
        );
        let mut rounds = 0;
        while conn.has_pending_writes() {
            conn.stream_mut().room = 4096;
            conn.flush(&mut sent).unwrap();
            rounds += 1;
            assert!(rounds < 1000, "flush makes no progress");
        }
        assert_eq!(sent, [1, 3].map(ReqId));
        assert!(conn.stream().written == want, "bytes out of order or lost");
    }
}
