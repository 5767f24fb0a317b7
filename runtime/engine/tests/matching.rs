//! Engine tests in the deterministic N-rank harness: unit scenarios and property tests that
//! compare the engine's matching with a reference matcher under random delivery order over
//! several rails.

mod util;

use std::collections::HashMap;

use braid_engine::wire::{FrameKind, Header};
use braid_engine::{
    ContextId, Outcome, PeerError, Rank, ReqId, SendMode, Seq, SourceSel, Tag, TagSel,
};
use proptest::prelude::*;
use rand::Rng;
use util::{Net, RecvResult, payload_for, reference_matches};

const EAGER: u64 = 64;
const CHUNK: u64 = 50;

fn ok_data(net: &Net, rank: u32, req: ReqId) -> (braid_engine::RecvStatus, Vec<u8>) {
    match net.nodes[rank as usize].recvs_done.get(&req) {
        Some(RecvResult::Ok { status, data }) => (*status, data.clone()),
        other => panic!("receive {req} at rank {rank} not complete: {other:?}"),
    }
}

#[test]
fn eager_unexpected_then_posted() {
    let mut net = Net::new(2, 1, EAGER, CHUNK, 1);
    let s = net.send(0, 1, 5, payload_for(1, 20), SendMode::Standard);
    net.drive();
    assert_eq!(net.nodes[0].sends_done.get(&s), Some(&Outcome::Sent));
    let p = net.nodes[1]
        .engine
        .probe(ContextId(0), SourceSel::Any, TagSel::Any);
    assert_eq!(
        p.map(|p| (p.source, p.tag, p.len)),
        Some((Rank(0), Tag(5), 20))
    );
    let r = net.recv(1, SourceSel::Rank(Rank(0)), TagSel::Tag(Tag(5)), 100);
    let (st, data) = ok_data(&net, 1, r);
    assert_eq!((st.len, st.stored), (20, 20));
    assert_eq!(data, payload_for(1, 20));
}

#[test]
fn rendezvous_posted_first_and_truncated() {
    let mut net = Net::new(2, 3, EAGER, CHUNK, 2);
    let r = net.recv(1, SourceSel::Any, TagSel::Any, 120);
    let s = net.send(0, 1, 0, payload_for(9, 333), SendMode::Standard);
    net.drive();
    let (st, data) = ok_data(&net, 1, r);
    assert!(st.truncated());
    assert_eq!((st.len, st.stored), (333, 120));
    assert_eq!(data, payload_for(9, 333)[..120].to_vec());
    assert_eq!(net.nodes[0].sends_done.get(&s), Some(&Outcome::Sent));
    assert_eq!(
        net.nodes[0].engine.pending() + net.nodes[1].engine.pending(),
        0
    );
}

#[test]
fn split_transfer_pulls_the_head_and_the_sender_pushes_the_tail() {
    let mut net = Net::with_split(2, 1, EAGER, CHUNK, 8, true, 1);
    let len = 3 * 4096 + 100;
    let s = net.send(0, 1, 0, payload_for(5, len), SendMode::Standard);
    let r = net.recv(1, SourceSel::Rank(Rank(0)), TagSel::Any, len);
    let mut frames = 0;
    while net.step() {
        frames += 1;
    }
    let (st, data) = ok_data(&net, 1, r);
    assert_eq!((st.len, st.stored), (len as u64, len as u64));
    assert_eq!(data, payload_for(5, len));
    assert_eq!(net.nodes[0].sends_done.get(&s), Some(&Outcome::Sent));
    // RTS, PUSH, PUSHED and FIN: no data frames.
    assert_eq!(frames, 4);
    assert_eq!(
        net.nodes[0].engine.pending() + net.nodes[1].engine.pending(),
        0
    );
}

/// `n` engines on one host that split pulled messages from one byte.
fn split_engines(n: u32) -> Vec<braid_engine::Engine> {
    (0..n)
        .map(|r| {
            braid_engine::Engine::new(braid_engine::Config {
                offer_pull: vec![true; n as usize],
                can_pull: vec![true; n as usize],
                split_min: 1,
                ..braid_engine::Config::uniform(Rank(r), n, EAGER, CHUNK)
            })
        })
        .collect()
}

/// Hands every frame engine `from` emitted to its destination; returns their kinds.
fn deliver_all(e: &mut [braid_engine::Engine], from: usize) -> Vec<FrameKind> {
    let mut kinds = Vec::new();
    while let Some(t) = e[from].poll_transmit() {
        kinds.push(t.header.kind);
        // Control frames only: no payload to place.
        let _ = e[t.to.0 as usize]
            .handle_header(Rank(from as u32), &t.header)
            .expect("valid frame");
    }
    kinds
}

/// A large send of `len` bytes from `from` to `to` whose RTS has reached `to`, and the
/// receive `to` then posts for it (into a buffer at `dest`), matched at once.
fn matched_rts(e: &mut [braid_engine::Engine], from: u32, to: u32, len: u64, dest: u64) -> ReqId {
    let ctx = ContextId(0);
    e[from as usize]
        .post_send(
            ctx,
            Rank(to),
            Tag(0),
            len,
            SendMode::Standard,
            0x1000 * (1 + u64::from(from)),
        )
        .unwrap();
    assert_eq!(deliver_all(e, from as usize), [FrameKind::Rts]);
    e[to as usize]
        .post_recv_at(ctx, SourceSel::Rank(Rank(from)), TagSel::Any, len, dest)
        .unwrap()
}

#[test]
fn split_is_decided_when_the_pull_is_taken() {
    let len = 4 * 4096;
    let ctx = ContextId(0);
    for own_send in [false, true] {
        let mut e = split_engines(2);
        // The receive matches the waiting RTS at once; this rank's own large send to the
        // same peer comes after, before the driver takes the pull.
        let r = matched_rts(&mut e, 0, 1, len, 1 << 40);
        if own_send {
            e[1].post_send(ctx, Rank(0), Tag(1), len, SendMode::Standard, 0x8000)
                .unwrap();
        }
        let p = e[1].poll_pull().expect("a pull");
        assert_eq!((p.req, p.offset), (r, 0));
        let kinds = deliver_all(&mut e, 1);
        if own_send {
            // Traffic both ways: the receiver copies the whole message, no PUSH.
            assert_eq!(p.len, len);
            assert_eq!(kinds, [FrameKind::Rts]);
            assert!(e[0].poll_push().is_none());
        } else {
            assert_eq!(p.len, len / 2);
            assert_eq!(kinds, [FrameKind::Push]);
            let push = e[0].poll_push().expect("the sender's part");
            assert_eq!(
                (push.offset, push.len, push.addr),
                (len / 2, len / 2, (1 << 40) + len / 2)
            );
        }
    }
}

#[test]
fn a_sender_with_copying_queued_declines_its_part() {
    let len = 4 * 4096;
    let mut e = split_engines(3);
    // Rank 0 has a pull of its own queued (rank 2's message) ...
    let _ = matched_rts(&mut e, 2, 0, len, 1 << 42);
    // ... when rank 1 asks it to write half of the message rank 0 sends it.
    let r = matched_rts(&mut e, 0, 1, len, 1 << 40);
    let head = e[1].poll_pull().expect("rank 1's pull");
    assert_eq!((head.req, head.len), (r, len / 2));
    assert_eq!(deliver_all(&mut e, 1), [FrameKind::Push]);
    assert!(e[0].poll_push().is_none(), "rank 0 declined");
    assert_eq!(deliver_all(&mut e, 0), [FrameKind::Pushed]);
    // Rank 1 copies the tail itself, next; the receive completes after both parts.
    e[1].handle_pull_done(head.req, true);
    assert!(e[1].poll_completion().is_none());
    let tail = e[1].poll_pull().expect("the declined part");
    assert_eq!((tail.req, tail.offset, tail.len), (r, len / 2, len / 2));
    e[1].handle_pull_done(tail.req, true);
    assert_eq!(e[1].poll_completion().map(|c| c.req), Some(r));
    assert_eq!(deliver_all(&mut e, 1), [FrameKind::Fin]);
}

#[test]
fn pull_replaces_cts_and_data() {
    let mut net = Net::with_pull(2, 1, EAGER, CHUNK, 8, true);
    let s = net.send(0, 1, 0, payload_for(4, 500), SendMode::Standard);
    let r = net.recv(1, SourceSel::Any, TagSel::Any, 500);
    let mut kinds = Vec::new();
    while net.step() {
        kinds.push(());
    }
    let (st, data) = ok_data(&net, 1, r);
    assert_eq!((st.len, st.stored), (500, 500));
    assert_eq!(data, payload_for(4, 500));
    assert_eq!(net.nodes[0].sends_done.get(&s), Some(&Outcome::Sent));
    // RTS and FIN only: no data frames crossed the network.
    assert_eq!(kinds.len(), 2);
}

#[test]
fn synchronous_eager_send_waits_for_match() {
    let mut net = Net::new(2, 1, EAGER, CHUNK, 3);
    let s = net.send(0, 1, 1, payload_for(3, 10), SendMode::Synchronous);
    net.drive();
    assert!(
        !net.nodes[0].sends_done.contains_key(&s),
        "completed before the match"
    );
    let r = net.recv(1, SourceSel::Any, TagSel::Tag(Tag(1)), 10);
    net.drive();
    assert_eq!(net.nodes[0].sends_done.get(&s), Some(&Outcome::Sent));
    assert_eq!(ok_data(&net, 1, r).1, payload_for(3, 10));
}

#[test]
fn send_to_self_and_zero_length() {
    let mut net = Net::new(1, 1, EAGER, CHUNK, 4);
    let r0 = net.recv(0, SourceSel::Rank(Rank(0)), TagSel::Any, 0);
    let s0 = net.send(0, 0, 2, Vec::new(), SendMode::Standard);
    let s1 = net.send(0, 0, 3, payload_for(5, 200), SendMode::Standard);
    let r1 = net.recv(0, SourceSel::Any, TagSel::Tag(Tag(3)), 200);
    net.drive();
    assert_eq!(ok_data(&net, 0, r0).0.len, 0);
    assert_eq!(ok_data(&net, 0, r1).1, payload_for(5, 200));
    assert!(net.nodes[0].sends_done.contains_key(&s0) && net.nodes[0].sends_done.contains_key(&s1));
}

#[test]
fn fast_receive_takes_only_the_next_message_in_order() {
    let mut net = Net::new(2, 2, EAGER, CHUNK, 9);
    net.fast = true;
    // Three eager sends without requests; the rails may hold them in any order.
    for id in 0..3 {
        let _ = net.send(0, 1, 4, payload_for(id, 16), SendMode::Standard);
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let r = net.recv(1, SourceSel::Rank(Rank(0)), TagSel::Tag(Tag(4)), 16);
        net.drive();
        got.push(ok_data(&net, 1, r).1);
    }
    assert_eq!(
        got,
        (0..3).map(|id| payload_for(id, 16)).collect::<Vec<_>>()
    );
    assert!(net.direct_takes > 0, "the fast path was never taken");
    // A posted receive on the context turns the fast path off: it would match first.
    let posted = net.recv(1, SourceSel::Any, TagSel::Tag(Tag(7)), 16);
    let _ = net.send(0, 1, 4, payload_for(5, 16), SendMode::Standard);
    assert!(
        !net.nodes[1]
            .engine
            .can_take_direct(ContextId(0), Rank(0), TagSel::Tag(Tag(4)))
    );
    let _ = net.send(0, 1, 7, payload_for(6, 16), SendMode::Standard);
    net.drive();
    assert_eq!(ok_data(&net, 1, posted).1, payload_for(6, 16));
}

#[test]
fn posted_receives_take_only_whole_standard_messages_that_fit() {
    let mut net = Net::new(2, 1, EAGER, CHUNK, 11);
    net.fast = true;
    let posted =
        |net: &mut Net, cap| net.recv(1, SourceSel::Rank(Rank(0)), TagSel::Tag(Tag(4)), cap);
    // Fits: straight into the receive.
    let r = posted(&mut net, 16);
    let _ = net.send(0, 1, 4, payload_for(1, 16), SendMode::Standard);
    net.drive();
    assert_eq!(ok_data(&net, 1, r).1, payload_for(1, 16));
    assert_eq!(net.posted_takes, 1);
    // Too long for the receive: the general path reports the truncation.
    let r = posted(&mut net, 8);
    let _ = net.send(0, 1, 4, payload_for(2, 16), SendMode::Standard);
    net.drive();
    let (st, data) = ok_data(&net, 1, r);
    assert_eq!((st.len, st.stored), (16, 8));
    assert_eq!(data, payload_for(2, 16)[..8].to_vec());
    // Synchronous: the general path, which acknowledges it.
    let r = posted(&mut net, 16);
    let s = net.send(0, 1, 4, payload_for(3, 16), SendMode::Synchronous);
    net.drive();
    assert_eq!(ok_data(&net, 1, r).1, payload_for(3, 16));
    assert_eq!(net.nodes[0].sends_done.get(&s), Some(&Outcome::Sent));
    assert_eq!(net.posted_takes, 1);
    assert!(net.errors.is_empty(), "{:?}", net.errors);
}

fn envelope(kind: FrameKind, src: u32, seq: u64, len: u64) -> Header {
    let mut h = Header::new(kind, Rank(src));
    h.seq = Seq(seq);
    h.msg_len = len;
    if kind == FrameKind::Eager {
        h.payload_len = len;
    }
    h
}

#[test]
fn protocol_violations_are_peer_errors() {
    let mut net = Net::new(3, 1, EAGER, CHUNK, 5);
    let e = &mut net.nodes[1].engine;
    // Wrong source field.
    let h = envelope(FrameKind::Eager, 2, 0, 0);
    assert!(matches!(
        e.handle_header(Rank(0), &h),
        Err(PeerError::WrongSource { .. })
    ));
    // Duplicate sequence number.
    let h = envelope(FrameKind::Eager, 0, 0, 0);
    let _ = e.handle_header(Rank(0), &h).expect("first is fine");
    assert!(matches!(
        e.handle_header(Rank(0), &h),
        Err(PeerError::DuplicateSeq { .. })
    ));
    // Eager above the limit.
    let h = envelope(FrameKind::Eager, 0, 1, EAGER + 1);
    assert!(matches!(
        e.handle_header(Rank(0), &h),
        Err(PeerError::EagerTooLarge { .. })
    ));
    // CTS, ack and data for requests that do not exist.
    for kind in [FrameKind::Cts, FrameKind::SyncAck, FrameKind::Data] {
        let mut h = Header::new(kind, Rank(0));
        h.send_req = ReqId(77);
        h.recv_req = ReqId(77);
        assert!(matches!(
            e.handle_header(Rank(0), &h),
            Err(PeerError::UnknownRequest { .. })
        ));
    }
    // A rank outside the job.
    assert!(matches!(
        e.handle_header(Rank(9), &envelope(FrameKind::Eager, 9, 0, 0)),
        Err(PeerError::UnknownRank(_))
    ));
}

#[test]
fn data_outside_the_accepted_length_is_rejected() {
    let mut net = Net::new(2, 1, EAGER, CHUNK, 6);
    let r = net.recv(1, SourceSel::Any, TagSel::Any, 100);
    let mut rts = envelope(FrameKind::Rts, 0, 0, 500);
    rts.send_req = ReqId(1);
    let e = &mut net.nodes[1].engine;
    let _ = e.handle_header(Rank(0), &rts).expect("rts");
    let mut d = Header::new(FrameKind::Data, Rank(0));
    d.recv_req = r;
    d.offset = 90;
    d.payload_len = 20;
    assert!(matches!(
        e.handle_header(Rank(0), &d),
        Err(PeerError::OutOfBounds { .. })
    ));
}

#[test]
fn lost_peer_fails_what_depends_on_it() {
    let mut net = Net::new(3, 1, EAGER, CHUNK, 7);
    let from1 = net.recv(0, SourceSel::Rank(Rank(1)), TagSel::Any, 10);
    let any = net.recv(0, SourceSel::Any, TagSel::Any, 10);
    let big = net.send(0, 1, 0, payload_for(1, 300), SendMode::Standard);
    net.nodes[0].engine.handle_peer_lost(Rank(1));
    net.pump(0);
    assert_eq!(
        net.nodes[0].recvs_done.get(&from1),
        Some(&RecvResult::Lost(Rank(1)))
    );
    assert_eq!(
        net.nodes[0].sends_done.get(&big),
        Some(&Outcome::PeerLost { peer: Rank(1) })
    );
    // A wildcard receive can still be satisfied by rank 2.
    assert!(!net.nodes[0].recvs_done.contains_key(&any));
    let _ = net.send(2, 0, 0, payload_for(2, 10), SendMode::Standard);
    net.drive_bounded(10_000);
    assert_eq!(ok_data(&net, 0, any).0.source, Rank(2));
    // Later operations towards the lost rank fail at once.
    let late = net.recv(0, SourceSel::Rank(Rank(1)), TagSel::Any, 10);
    assert_eq!(
        net.nodes[0].recvs_done.get(&late),
        Some(&RecvResult::Lost(Rank(1)))
    );
}

/// One message of a generated program.
#[derive(Debug, Clone)]
struct Msg {
    src: u32,
    dst: u32,
    tag: i32,
    len: usize,
    sync: bool,
    /// 0 exact, 1 any source, 2 any tag, 3 both wildcards.
    wild: u8,
    /// Receive capacity as a fraction of the length, in percent (truncation below 100).
    cap_pct: u32,
}

fn msg_strategy(n: u32) -> impl Strategy<Value = Msg> {
    (
        0..n,
        0..n,
        0i32..3,
        prop_oneof![8usize..=EAGER as usize, (EAGER as usize + 1)..=220],
        any::<bool>(),
        0u8..4,
        prop_oneof![Just(100u32), Just(150), 50u32..100],
    )
        .prop_map(|(src, dst, tag, len, sync, wild, cap_pct)| Msg {
            src,
            dst,
            tag,
            len,
            sync,
            wild,
            cap_pct,
        })
}

/// Runs a program: posts every send and receive in a random interleaving with network steps,
/// then drives to quiescence and checks the engine against the reference matcher.
fn run_program(n: u32, rails: usize, seed: u64, msgs: &[Msg]) -> Result<(), TestCaseError> {
    run_program_with(Net::new(n, rails, EAGER, CHUNK, seed), n, msgs)
}

fn run_program_with(mut net: Net, n: u32, msgs: &[Msg]) -> Result<(), TestCaseError> {
    let mut ops: Vec<(bool, usize)> = (0..msgs.len())
        .flat_map(|i| [(true, i), (false, i)])
        .collect();
    // Shuffle deterministically from the seed.
    for i in (1..ops.len()).rev() {
        let j = net.rng.gen_range(0..=i);
        ops.swap(i, j);
    }
    if net.fast {
        // Stream-style programs: each message's receive after its send, at once or a few
        // operations later, so receives often find the message still on its rail.
        ops.clear();
        let mut deferred: Vec<usize> = Vec::new();
        for i in 0..msgs.len() {
            ops.push((true, i));
            if net.rng.gen_bool(0.5) {
                ops.push((false, i));
            } else {
                deferred.push(i);
            }
            while !deferred.is_empty() && net.rng.gen_bool(0.4) {
                ops.push((false, deferred.remove(0)));
            }
        }
        ops.extend(deferred.into_iter().map(|i| (false, i)));
    }
    let mut seq_of: HashMap<(u32, u32), u64> = HashMap::new();
    let mut envelopes: Vec<HashMap<(u32, u64), (i32, u64)>> = vec![HashMap::new(); n as usize];
    let mut send_req: HashMap<usize, ReqId> = HashMap::new();
    let mut recv_req: Vec<(u32, ReqId, usize)> = Vec::new();
    for (is_send, i) in ops {
        let m = &msgs[i];
        if is_send {
            let seq = seq_of.entry((m.src, m.dst)).or_insert(0);
            envelopes[m.dst as usize].insert((m.src, *seq), (m.tag, i as u64));
            *seq += 1;
            let mode = if m.sync {
                SendMode::Synchronous
            } else {
                SendMode::Standard
            };
            let r = net.send(m.src, m.dst, m.tag, payload_for(i as u64, m.len), mode);
            send_req.insert(i, r);
        } else {
            let source = if m.wild & 1 == 0 {
                SourceSel::Rank(Rank(m.src))
            } else {
                SourceSel::Any
            };
            let tag = if m.wild & 2 == 0 {
                TagSel::Tag(Tag(m.tag))
            } else {
                TagSel::Any
            };
            let cap = (m.len * m.cap_pct as usize / 100).max(8);
            let r = net.recv(m.dst, source, tag, cap);
            recv_req.push((m.dst, r, cap));
        }
        // The receive fast path takes frames still on a rail: deliver less eagerly then.
        let steps = net.rng.gen_range(0..if net.fast { 2 } else { 6 });
        for _ in 0..steps {
            net.step();
        }
    }
    prop_assert!(net.drive_bounded(1_000_000), "did not go quiet");
    prop_assert!(net.errors.is_empty(), "protocol errors: {:?}", net.errors);
    let mut matched_msgs = HashMap::new();
    for dst in 0..n {
        let expected = reference_matches(&net.nodes[dst as usize].log, &envelopes[dst as usize]);
        for (d, req, cap) in recv_req.iter().filter(|(d, _, _)| *d == dst) {
            let got = net.nodes[*d as usize].recvs_done.get(req);
            match expected.get(req) {
                Some(&id) => {
                    let m = &msgs[id as usize];
                    let Some(RecvResult::Ok { status, data }) = got else {
                        return Err(TestCaseError::fail(format!(
                            "receive {req} at {d} should have matched message {id}, got {got:?}"
                        )));
                    };
                    let stored = m.len.min(*cap);
                    prop_assert_eq!(status.source, Rank(m.src));
                    prop_assert_eq!(status.tag, Tag(m.tag));
                    prop_assert_eq!(status.len, m.len as u64);
                    prop_assert_eq!(status.stored, stored as u64);
                    prop_assert_eq!(
                        &data[..],
                        &payload_for(id, m.len)[..stored],
                        "message {}",
                        id
                    );
                    prop_assert!(
                        matched_msgs.insert(id, *req).is_none(),
                        "message {} twice",
                        id
                    );
                }
                None => prop_assert!(got.is_none(), "receive {} completed without a match", req),
            }
        }
    }
    for (i, m) in msgs.iter().enumerate() {
        let done = net.nodes[m.src as usize].sends_done.get(&send_req[&i]);
        let needs_match = m.sync || m.len as u64 > EAGER;
        if needs_match && !matched_msgs.contains_key(&(i as u64)) {
            prop_assert!(done.is_none(), "send {} completed without a match", i);
        } else {
            prop_assert_eq!(done, Some(&Outcome::Sent), "send {} did not complete", i);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 300 }))]

    /// With wildcards, matching follows MPI's rules exactly (same result as the reference
    /// matcher on the same post/release order), whatever order the rails deliver frames in.
    #[test]
    fn matching_agrees_with_reference(
        seed in any::<u64>(),
        n in 1u32..5,
        rails in 1usize..4,
        msgs in prop::collection::vec(msg_strategy(4), 1..40),
    ) {
        let msgs: Vec<Msg> = msgs
            .into_iter()
            .map(|mut m| { m.src %= n; m.dst %= n; m })
            .collect();
        run_program(n, rails, seed, &msgs)?;
    }

    /// Single-copy pulls (ranks of one host), with pulls that sometimes fail and fall back to
    /// CTS and data: same matching, same data.
    #[test]
    fn pulls_and_their_fallback_agree_with_reference(
        seed in any::<u64>(),
        n in 1u32..4,
        failure in prop_oneof![Just(0.0), Just(0.5)],
        msgs in prop::collection::vec(msg_strategy(3), 1..40),
    ) {
        let msgs: Vec<Msg> = msgs
            .into_iter()
            .map(|mut m| { m.src %= n; m.dst %= n; m })
            .collect();
        let mut net = Net::with_pull(n, 2, EAGER, CHUNK, seed, true);
        net.pull_failure = failure;
        run_program_with(net, n, &msgs)?;
    }

    /// Split transfers (the receiver pulls the head, the sender pushes the tail), with pulls
    /// and pushes that sometimes fail: same matching, same data.
    #[test]
    fn split_transfers_agree_with_reference(
        seed in any::<u64>(),
        n in 1u32..4,
        failure in prop_oneof![Just(0.0), Just(0.3)],
        split_min in prop_oneof![Just(1u64), Just(EAGER + 1), Just(3000)],
        msgs in prop::collection::vec(msg_strategy(3), 1..40),
    ) {
        let msgs: Vec<Msg> = msgs
            .into_iter()
            .map(|mut m| { m.src %= n; m.dst %= n; m })
            .collect();
        let mut net = Net::with_split(n, 2, EAGER, CHUNK, seed, true, split_min);
        net.pull_failure = failure;
        run_program_with(net, n, &msgs)?;
    }

    /// The fast paths (standard eager sends without a request, receives taken straight from
    /// the front of a rail without posting, messages put straight into the posted receive
    /// they match) mixed with the general path: same matching, same data and truncations,
    /// whatever the delivery order.
    #[test]
    fn fast_paths_agree_with_reference(
        seed in any::<u64>(),
        n in 1u32..4,
        rails in 1usize..4,
        msgs in prop::collection::vec(msg_strategy(3), 1..40),
    ) {
        let msgs: Vec<Msg> = msgs
            .into_iter()
            .map(|mut m| { m.src %= n; m.dst %= n; m.wild &= 2; m })
            .collect();
        let mut net = Net::new(n, rails, EAGER, CHUNK, seed);
        net.fast = true;
        run_program_with(net, n, &msgs)?;
    }

    /// Without wildcards and with room for every message, every message is delivered exactly
    /// once, intact, and every send completes.
    #[test]
    fn exact_receives_deliver_everything(
        seed in any::<u64>(),
        rails in 1usize..4,
        msgs in prop::collection::vec(msg_strategy(3), 1..60),
    ) {
        let msgs: Vec<Msg> = msgs
            .into_iter()
            .map(|mut m| { m.wild = 0; m.cap_pct = 100; m })
            .collect();
        run_program(3, rails, seed, &msgs)?;
    }
}
