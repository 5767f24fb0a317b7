//! Criterion benchmarks of the engine alone: header framing, and the engine's share of an
//! eager message (post, header, payload, completion) and of a matched RTS.

use braid_engine::wire::{FrameKind, Header};
use braid_engine::{Config, ContextId, Engine, Rank, SendMode, SourceSel, Tag, TagSel};
use criterion::{Criterion, black_box, criterion_group, criterion_main};

fn framing(c: &mut Criterion) {
    let mut h = Header::new(FrameKind::Eager, Rank(1));
    h.msg_len = 8;
    h.payload_len = 8;
    let bytes = h.encode();
    c.bench_function("header encode", |b| b.iter(|| black_box(&h).encode()));
    c.bench_function("header decode", |b| {
        b.iter(|| Header::decode(black_box(&bytes)))
    });
}

/// One eager message from rank 0 to rank 1, receive posted first: what the two engines do.
fn eager_round(c: &mut Criterion) {
    let mut tx = Engine::new(Config::uniform(Rank(0), 2, 4096, 1 << 20));
    let mut rx = Engine::new(Config::uniform(Rank(1), 2, 4096, 1 << 20));
    c.bench_function("eager message, receive posted", |b| {
        b.iter(|| {
            let r = rx
                .post_recv(
                    ContextId(0),
                    SourceSel::Rank(Rank(0)),
                    TagSel::Tag(Tag(3)),
                    8,
                )
                .expect("receive");
            let _ = tx
                .post_send(ContextId(0), Rank(1), Tag(3), 8, SendMode::Standard, 0)
                .expect("send");
            let t = tx.poll_transmit().expect("frame");
            let _ = tx.poll_completion();
            let inc = rx.handle_header(Rank(0), &t.header).expect("header");
            rx.handle_payload(inc.token);
            let done = rx.poll_completion().expect("completion");
            assert_eq!(done.req, r);
        });
    });
    c.bench_function("eager message, unexpected", |b| {
        b.iter(|| {
            let _ = tx
                .post_send(ContextId(0), Rank(1), Tag(3), 8, SendMode::Standard, 0)
                .expect("send");
            let t = tx.poll_transmit().expect("frame");
            let _ = tx.poll_completion();
            let inc = rx.handle_header(Rank(0), &t.header).expect("header");
            rx.handle_payload(inc.token);
            let _ = rx
                .post_recv(ContextId(0), SourceSel::Any, TagSel::Any, 8)
                .expect("receive");
            black_box(rx.poll_completion().expect("completion"));
        });
    });
}

criterion_group!(benches, framing, eager_round);
criterion_main!(benches);
