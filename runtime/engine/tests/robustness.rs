//! The engine under hostile input: arbitrary header bytes, in any order, interleaved with
//! posted operations, never panic; every accepted frame can be finished with
//! `handle_payload`, and a rejected one leaves the engine usable.

use braid_engine::wire::{FrameKind, HEADER_LEN, Header};
use braid_engine::{Config, ContextId, Engine, Rank, ReqId, SendMode, SourceSel, Tag, TagSel};
use proptest::prelude::*;

/// A header made mostly of plausible field values, so decoding often succeeds and the
/// engine's own checks are exercised.
fn plausible_header() -> impl Strategy<Value = Vec<u8>> {
    (
        1u8..=6,
        0u8..4,
        0u32..3,
        0u32..3,
        0i32..4,
        0u64..6,
        0u64..300,
        0u64..8,
        0u64..8,
        0u64..300,
        0u64..300,
    )
        .prop_map(
            |(k, flags, ctx, src, tag, seq, len, sreq, rreq, off, plen)| {
                let kind = match k {
                    1 => FrameKind::Eager,
                    2 => FrameKind::Rts,
                    3 => FrameKind::Cts,
                    4 => FrameKind::Data,
                    5 => FrameKind::SyncAck,
                    _ => FrameKind::Fin,
                };
                let mut h = Header::new(kind, Rank(src));
                h.flags = flags;
                h.context = ContextId(ctx);
                h.tag = Tag(tag);
                h.seq = braid_engine::Seq(seq);
                h.msg_len = len;
                h.send_req = ReqId(sreq);
                h.recv_req = ReqId(rreq);
                h.offset = off;
                h.payload_len = if kind == FrameKind::Eager { len } else { plen };
                h.encode().to_vec()
            },
        )
}

fn any_header() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        plausible_header(),
        prop::collection::vec(any::<u8>(), HEADER_LEN..=HEADER_LEN),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Frame { from: u32, bytes: Vec<u8> },
    Send { to: u32, len: u64 },
    Recv { any: bool, cap: u64 },
    Lost(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..4, any_header()).prop_map(|(from, bytes)| Op::Frame { from, bytes }),
        2 => (0u32..3, 0u64..300).prop_map(|(to, len)| Op::Send { to, len }),
        2 => (any::<bool>(), 0u64..300).prop_map(|(any, cap)| Op::Recv { any, cap }),
        1 => (0u32..4).prop_map(Op::Lost),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 8 } else { 500 }))]

    #[test]
    fn hostile_frames_never_panic(ops in prop::collection::vec(op(), 1..60)) {
        let mut e = Engine::new(Config {
            offer_pull: vec![true; 3],
            can_pull: vec![true; 3],
            ..Config::uniform(Rank(1), 3, 64, 50)
        });
        for op in ops {
            match op {
                Op::Frame { from, bytes } => {
                    if let Ok(h) = Header::decode(&bytes)
                        && let Ok(inc) = e.handle_header(Rank(from), &h)
                    {
                        let n = e.payload_buffer(inc.token).len();
                        prop_assert!(n as u64 <= h.payload_len);
                        e.handle_payload(inc.token);
                    }
                }
                Op::Send { to, len } => {
                    let _ = e.post_send(ContextId(0), Rank(to), Tag(0), len, SendMode::Standard, 0x1000);
                }
                Op::Recv { any, cap } => {
                    let src = if any { SourceSel::Any } else { SourceSel::Rank(Rank(0)) };
                    let _ = e.post_recv(ContextId(0), src, TagSel::Any, cap);
                }
                Op::Lost(r) => e.handle_peer_lost(Rank(r)),
            }
            while e.poll_transmit().is_some() {}
            while let Some(p) = e.poll_pull() {
                e.handle_pull_done(p.req, false);
            }
            while e.poll_completion().is_some() {}
        }
    }
}
