//! A deterministic N-rank harness for the engine: a virtual network whose rails are FIFO
//! queues per (sender, receiver, rail), delivered in a seeded random order, with the header
//! and the payload of each frame delivered as separate steps so other events interleave.
//!
//! Besides driving the engines it logs, per receiver, the order in which receives were posted
//! and envelopes became in-order (per-pair sequence numbers), which is what MPI matching
//! depends on; [`reference_matches`] replays that log through a plain reference matcher.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap, VecDeque};

use braid_engine::wire::{FrameKind, Header};
use braid_engine::{
    Body, Config, ContextId, Engine, FrameToken, Outcome, Placement, Rank, RecvStatus, ReqId,
    SendMode, SourceSel, Tag, TagSel,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A frame on a virtual rail.
#[derive(Debug, Clone)]
pub struct Frame {
    pub header: Header,
    pub payload: Vec<u8>,
}

/// What a receive finished with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvResult {
    Ok { status: RecvStatus, data: Vec<u8> },
    Lost(Rank),
}

/// Harness-side record of one rank.
#[derive(Debug)]
pub struct Node {
    pub engine: Engine,
    pub send_bufs: HashMap<ReqId, Vec<u8>>,
    pub recv_bufs: HashMap<ReqId, Vec<u8>>,
    pub sends_done: HashMap<ReqId, Outcome>,
    pub recvs_done: HashMap<ReqId, RecvResult>,
    /// Receiver-side log: `Post(req)` and `Release(src, seq)` in the order they happened.
    pub log: Vec<Event>,
    /// Per source: next expected envelope seq and early ones (mirrors the engine's rule).
    pub expect: Vec<(u64, BTreeMap<u64, ()>)>,
}

/// A matching-relevant event at a receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Post {
        req: ReqId,
        ctx: ContextId,
        source: SourceSel,
        tag: TagSel,
    },
    Release {
        src: Rank,
        seq: u64,
        ctx: ContextId,
        tag: Tag,
    },
}

/// Link key: (from, to, rail).
type Link = (u32, u32, usize);

/// A frame whose header was delivered and whose payload is pending.
#[derive(Debug)]
struct InProgress {
    frame: Frame,
    token: FrameToken,
    placement: Placement,
}

/// The virtual network of N ranks.
#[derive(Debug)]
pub struct Net {
    pub nodes: Vec<Node>,
    pub rails: usize,
    links: BTreeMap<Link, VecDeque<Frame>>,
    in_progress: BTreeMap<Link, InProgress>,
    pub rng: StdRng,
    /// Protocol errors seen (receiver, error text).
    pub errors: Vec<(u32, String)>,
    /// Pull addresses handed to the engines, and the data behind them.
    pulls: HashMap<u64, Vec<u8>>,
    /// Receive buffer addresses handed to the engines: (rank, request) by address.
    recv_addrs: HashMap<u64, (u32, ReqId)>,
    /// Probability that a pull fails (the engine must fall back to CTS and data).
    pub pull_failure: f64,
    /// Take the engine's fast paths where they apply: standard eager sends straight onto a
    /// rail ([`Engine::send_eager_now`]), receives from a named source taken straight from
    /// the front of a rail without posting ([`Engine::take_direct`]), and eager messages
    /// put straight into the posted receive they match ([`Engine::take_posted`]).
    pub fast: bool,
    /// Receives the fast path took.
    pub direct_takes: usize,
    /// Messages the fast path put straight into posted receives ([`Engine::take_posted`]).
    pub posted_takes: usize,
}

impl Net {
    pub fn new(n: u32, rails: usize, eager: u64, chunk: u64, seed: u64) -> Self {
        Self::with_pull(n, rails, eager, chunk, seed, false)
    }

    /// A network whose ranks offer and accept single-copy pulls (as on one host).
    pub fn with_pull(n: u32, rails: usize, eager: u64, chunk: u64, seed: u64, pull: bool) -> Self {
        Self::with_split(n, rails, eager, chunk, seed, pull, 0)
    }

    /// As [`Net::with_pull`], with pulled messages of at least `split_min` bytes split
    /// between a pull and a push (0: never).
    pub fn with_split(
        n: u32,
        rails: usize,
        eager: u64,
        chunk: u64,
        seed: u64,
        pull: bool,
        split_min: u64,
    ) -> Self {
        let nodes = (0..n)
            .map(|r| Node {
                engine: Engine::new(Config {
                    offer_pull: vec![pull; n as usize],
                    can_pull: vec![pull; n as usize],
                    split_min,
                    ..Config::uniform(Rank(r), n, eager, chunk)
                }),
                send_bufs: HashMap::new(),
                recv_bufs: HashMap::new(),
                sends_done: HashMap::new(),
                recvs_done: HashMap::new(),
                log: Vec::new(),
                expect: (0..n).map(|_| (0, BTreeMap::new())).collect(),
            })
            .collect();
        Self {
            nodes,
            rails: rails.max(1),
            links: BTreeMap::new(),
            in_progress: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
            errors: Vec::new(),
            pulls: HashMap::new(),
            recv_addrs: HashMap::new(),
            pull_failure: 0.0,
            fast: false,
            direct_takes: 0,
            posted_takes: 0,
        }
    }

    pub fn send(&mut self, from: u32, to: u32, tag: i32, data: Vec<u8>, mode: SendMode) -> ReqId {
        let addr = 0x1000 + self.pulls.len() as u64 * 0x1000;
        self.pulls.insert(addr, data.clone());
        if self.fast && mode == SendMode::Standard {
            let now = self.nodes[from as usize]
                .engine
                .send_eager_now(ContextId(0), Rank(to), Tag(tag), data.len() as u64)
                .expect("valid send");
            if let Some((req, header)) = now {
                let rail = self.rng.gen_range(0..self.rails);
                self.links
                    .entry((from, to, rail))
                    .or_default()
                    .push_back(Frame {
                        header,
                        payload: data,
                    });
                self.nodes[from as usize]
                    .sends_done
                    .insert(req, Outcome::Sent);
                return req;
            }
        }
        let n = &mut self.nodes[from as usize];
        let req = n
            .engine
            .post_send(
                ContextId(0),
                Rank(to),
                Tag(tag),
                data.len() as u64,
                mode,
                addr,
            )
            .expect("valid send");
        n.send_bufs.insert(req, data);
        self.pump(from);
        req
    }

    pub fn recv(&mut self, at: u32, source: SourceSel, tag: TagSel, capacity: usize) -> ReqId {
        if self.fast
            && let SourceSel::Rank(src) = source
            && let Some(req) = self.take_direct(at, src.0, tag, capacity)
        {
            return req;
        }
        // Far from the send addresses, and spaced wider than any test buffer.
        let addr = (1 << 40) + self.recv_addrs.len() as u64 * (1 << 32);
        let n = &mut self.nodes[at as usize];
        let req = n
            .engine
            .post_recv_at(ContextId(0), source, tag, capacity as u64, addr)
            .expect("valid receive");
        self.recv_addrs.insert(addr, (at, req));
        n.recv_bufs.insert(req, vec![0u8; capacity]);
        n.log.push(Event::Post {
            req,
            ctx: ContextId(0),
            source,
            tag,
        });
        self.pump(at);
        req
    }

    /// The receive fast path: when the engine allows it, looks at the first frame of every
    /// rail from `src` to `at` (not already half delivered) and takes the one the engine
    /// accepts as a completed receive, logged as a post followed by the envelope's release.
    fn take_direct(&mut self, at: u32, src: u32, tag: TagSel, capacity: usize) -> Option<ReqId> {
        let ctx = ContextId(0);
        if !self.nodes[at as usize]
            .engine
            .can_take_direct(ctx, Rank(src), tag)
        {
            return None;
        }
        for rail in 0..self.rails {
            let link = (src, at, rail);
            if self.in_progress.contains_key(&link) {
                continue;
            }
            let Some(header) = self
                .links
                .get(&link)
                .and_then(|q| q.front())
                .map(|f| f.header)
            else {
                continue;
            };
            let n = &mut self.nodes[at as usize];
            let Some(status) = n
                .engine
                .take_direct(Rank(src), &header, ctx, tag, capacity as u64)
            else {
                continue;
            };
            let frame = self.links.get_mut(&link)?.pop_front()?;
            // Only a receive with no id from the engine's general path: use a fresh one far
            // above the engine's so the two never collide.
            let req = ReqId(u64::MAX / 2 + n.log.len() as u64);
            n.log.push(Event::Post {
                req,
                ctx,
                source: SourceSel::Rank(Rank(src)),
                tag,
            });
            self.log_envelope(at, src, header.seq.0);
            self.direct_takes += 1;
            let n = &mut self.nodes[at as usize];
            n.recvs_done.insert(
                req,
                RecvResult::Ok {
                    status,
                    data: frame.payload,
                },
            );
            return Some(req);
        }
        None
    }

    /// Moves what rank `r`'s engine emitted onto the rails and records completions.
    pub fn pump(&mut self, r: u32) {
        loop {
            let mut any = false;
            while let Some(t) = self.nodes[r as usize].engine.poll_transmit() {
                any = true;
                let payload = match t.body {
                    Body::None => Vec::new(),
                    Body::Send { req, offset, len } => {
                        let b = &self.nodes[r as usize].send_bufs[&req];
                        b[offset as usize..(offset + len) as usize].to_vec()
                    }
                };
                let rail = self.rng.gen_range(0..self.rails);
                self.links
                    .entry((r, t.to.0, rail))
                    .or_default()
                    .push_back(Frame {
                        header: t.header,
                        payload,
                    });
            }
            while let Some(p) = self.nodes[r as usize].engine.poll_pull() {
                any = true;
                let ok = !self.rng.gen_bool(self.pull_failure);
                if ok {
                    let src = &self.pulls[&(p.addr - p.offset)];
                    let (off, len) = (p.offset as usize, p.len as usize);
                    let dst = self.nodes[r as usize]
                        .recv_bufs
                        .get_mut(&p.req)
                        .expect("pull into a live receive");
                    dst[off..off + len].copy_from_slice(&src[off..off + len]);
                }
                self.nodes[r as usize].engine.handle_pull_done(p.req, ok);
            }
            while let Some(p) = self.nodes[r as usize].engine.poll_push() {
                any = true;
                let ok = !self.rng.gen_bool(self.pull_failure);
                if ok {
                    let (off, len) = (p.offset as usize, p.len as usize);
                    let src = self.nodes[r as usize].send_bufs[&p.req][off..off + len].to_vec();
                    let (&base, &(at, rreq)) = self
                        .recv_addrs
                        .iter()
                        .find(|(base, _)| (**base..**base + (1 << 32)).contains(&p.addr))
                        .expect("push into a posted receive buffer");
                    assert_eq!(at, p.to.0, "push to the rank that owns the buffer");
                    let at_off = (p.addr - base) as usize;
                    let dst = self.nodes[at as usize]
                        .recv_bufs
                        .get_mut(&rreq)
                        .expect("push into a live receive");
                    dst[at_off..at_off + len].copy_from_slice(&src);
                }
                self.nodes[r as usize].engine.handle_push_done(&p, ok);
            }
            while let Some(c) = self.nodes[r as usize].engine.poll_completion() {
                any = true;
                let n = &mut self.nodes[r as usize];
                match c.outcome {
                    Outcome::Received { status, buffered } => {
                        let mut buf = n.recv_bufs.remove(&c.req).expect("receive buffer");
                        if let Some(b) = buffered {
                            let k = status.stored as usize;
                            buf[..k].copy_from_slice(&b[..k]);
                        }
                        buf.truncate(status.stored as usize);
                        n.recvs_done
                            .insert(c.req, RecvResult::Ok { status, data: buf });
                    }
                    Outcome::PeerLost { peer } => {
                        if n.recv_bufs.remove(&c.req).is_some() {
                            n.recvs_done.insert(c.req, RecvResult::Lost(peer));
                        } else {
                            n.sends_done.insert(c.req, Outcome::PeerLost { peer });
                        }
                    }
                    Outcome::Sent => {
                        n.sends_done.insert(c.req, Outcome::Sent);
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    /// Number of steps still possible.
    pub fn busy(&self) -> bool {
        self.links.values().any(|q| !q.is_empty()) || !self.in_progress.is_empty()
    }

    /// Performs one random delivery step; false when nothing is in flight.
    pub fn step(&mut self) -> bool {
        let ready: Vec<Link> = self
            .links
            .iter()
            .filter(|(k, q)| !q.is_empty() && !self.in_progress.contains_key(k))
            .map(|(k, _)| *k)
            .chain(self.in_progress.keys().copied())
            .collect();
        if ready.is_empty() {
            return false;
        }
        let link = ready[self.rng.gen_range(0..ready.len())];
        if let Some(p) = self.in_progress.remove(&link) {
            self.finish(link, p);
        } else {
            let frame = self
                .links
                .get_mut(&link)
                .and_then(VecDeque::pop_front)
                .expect("non-empty link");
            self.header(link, frame);
        }
        true
    }

    /// Runs until quiescent (bounded).
    pub fn drive(&mut self) {
        assert!(self.drive_bounded(1_000_000), "network did not go quiet");
    }

    pub fn drive_bounded(&mut self, max_steps: usize) -> bool {
        for _ in 0..max_steps {
            if !self.step() {
                return true;
            }
        }
        !self.busy()
    }

    fn header(&mut self, link: Link, frame: Frame) {
        let (from, to, _) = link;
        let h = frame.header;
        // Log the release order exactly as MPI sequencing defines it.
        if matches!(h.kind, FrameKind::Eager | FrameKind::Rts) {
            self.log_envelope(to, from, h.seq.0);
        }
        let n = &mut self.nodes[to as usize];
        if self.fast
            && let Some((req, status)) = n.engine.take_posted(Rank(from), &h)
        {
            // The driver's posted-receive fast path: the payload goes straight into the
            // receive, which is finished with no completion from the engine.
            let buf = n
                .recv_bufs
                .get_mut(&req)
                .expect("posted receive has a buffer");
            buf[..frame.payload.len()].copy_from_slice(&frame.payload);
            let data = buf[..status.stored as usize].to_vec();
            n.recvs_done.insert(req, RecvResult::Ok { status, data });
            self.posted_takes += 1;
            self.pump(to);
            return;
        }
        match n.engine.handle_header(Rank(from), &h) {
            Ok(inc) => {
                let p = InProgress {
                    frame,
                    token: inc.token,
                    placement: inc.placement,
                };
                if p.frame.payload.is_empty() {
                    self.finish(link, p);
                } else {
                    self.in_progress.insert(link, p);
                }
            }
            Err(e) => self.errors.push((to, e.to_string())),
        }
        self.pump(to);
    }

    /// Logs envelope `seq` from `from` arriving at `to`, and the releases it allows.
    fn log_envelope(&mut self, to: u32, from: u32, seq: u64) {
        let n = &mut self.nodes[to as usize];
        let (next, early) = &mut n.expect[from as usize];
        early.insert(seq, ());
        let mut released = Vec::new();
        while early.remove(next).is_some() {
            released.push(*next);
            *next += 1;
        }
        for seq in released {
            // The tag/context of early envelopes are looked up from the sender's frames;
            // the harness only needs (src, seq) here and fills in the rest lazily.
            n.log.push(Event::Release {
                src: Rank(from),
                seq,
                ctx: ContextId(0),
                tag: Tag(-1),
            });
        }
    }

    fn finish(&mut self, link: Link, p: InProgress) {
        let (_, to, _) = link;
        let n = &mut self.nodes[to as usize];
        if !p.frame.payload.is_empty() {
            match p.placement {
                Placement::Request {
                    req,
                    offset,
                    take,
                    skip,
                } => {
                    assert_eq!(take + skip, p.frame.payload.len() as u64);
                    let buf = n
                        .recv_bufs
                        .get_mut(&req)
                        .expect("placement into a live receive");
                    let (o, t) = (offset as usize, take as usize);
                    buf[o..o + t].copy_from_slice(&p.frame.payload[..t]);
                }
                Placement::Buffer => {
                    let b = n.engine.payload_buffer(p.token);
                    assert_eq!(
                        b.len(),
                        p.frame.payload.len(),
                        "buffer sized to the payload"
                    );
                    b.copy_from_slice(&p.frame.payload);
                }
            }
        }
        n.engine.handle_payload(p.token);
        self.pump(to);
    }
}

/// A message's identity inside its payload: the first 8 bytes.
pub fn payload_for(id: u64, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + id * 7) as u8).collect();
    if len >= 8 {
        v[..8].copy_from_slice(&id.to_le_bytes());
    }
    v
}

/// Replays a receiver log through the reference matcher. `envelopes` maps (src, seq) to
/// (tag, message id). Returns, per posted receive, the message id it matched (if any).
pub fn reference_matches(
    log: &[Event],
    envelopes: &HashMap<(u32, u64), (i32, u64)>,
) -> HashMap<ReqId, u64> {
    let mut posted: Vec<(ReqId, SourceSel, TagSel)> = Vec::new();
    let mut unexpected: Vec<(u32, i32, u64)> = Vec::new();
    let mut out = HashMap::new();
    let accepts = |s: SourceSel, t: TagSel, src: u32, tag: i32| {
        (s == SourceSel::Any || s == SourceSel::Rank(Rank(src)))
            && (t == TagSel::Any || t == TagSel::Tag(Tag(tag)))
    };
    for e in log {
        match e {
            Event::Post {
                req, source, tag, ..
            } => {
                if let Some(i) = unexpected
                    .iter()
                    .position(|(s, t, _)| accepts(*source, *tag, *s, *t))
                {
                    let (_, _, id) = unexpected.remove(i);
                    out.insert(*req, id);
                } else {
                    posted.push((*req, *source, *tag));
                }
            }
            Event::Release { src, seq, .. } => {
                let (tag, id) = envelopes[&(src.0, *seq)];
                if let Some(i) = posted
                    .iter()
                    .position(|(_, s, t)| accepts(*s, *t, src.0, tag))
                {
                    let (req, _, _) = posted.remove(i);
                    out.insert(req, id);
                } else {
                    unexpected.push((src.0, tag, id));
                }
            }
        }
    }
    out
}
