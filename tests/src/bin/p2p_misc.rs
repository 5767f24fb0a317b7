//! Assorted point-to-point semantics, each a numbered section so a failure names it:
//! 1. send to self: immediate send to the own rank then receive (eager and rendezvous
//!    sizes), blocking eager send to self then receive, `send_receive_into` with self;
//! 2. synchronous send: an `immediate_synchronous_send` of an eager-sized message must not
//!    finish before the receiver posts its receive (the receiver only does so after a "go"
//!    message that is sent once the test has seen the send unfinished many times);
//!    blocking `synchronous_send` round trip;
//! 3. probe / iprobe: envelope of eager and rendezvous messages, tag selection, no match;
//! 4. `receive_vec` of rendezvous, eager and empty messages, any source;
//! 5. `wait_any` and `test_all` over receives from every other rank (`test_all` must say
//!    "not yet" while nobody has sent);
//! 6. raw receives (`immediate_receive_raw_with_tag`): a window of receives into one buffer
//!    (eager and rendezvous sizes) gets every message with its length, and a message longer
//!    than the raw buffer is a truncation error;
//! 7. threads: after the main thread, a second thread sends around a ring (eager and
//!    rendezvous sizes) while the main thread polls, then the main thread again (the core,
//!    biased to the main thread, passes to the mutex).
//!
//! Usage: `mpirun -n N p2p_misc` (N >= 1; sections 2-5 need N >= 2).

use braid::traits::*;
use braid_tests::{Check, OrFail, check_pattern, ensure, pattern, run_rank, salt_of};

fn main() {
    run_rank("p2p_misc", |world| {
        to_self(world).map_err(|e| format!("section 1 (send to self): {e}"))?;
        if world.size() >= 2 {
            synchronous(world).map_err(|e| format!("section 2 (synchronous send): {e}"))?;
            probes(world).map_err(|e| format!("section 3 (probe): {e}"))?;
            receive_vec(world).map_err(|e| format!("section 4 (receive_vec): {e}"))?;
            wait_any_test_all(world).map_err(|e| format!("section 5 (wait_any/test_all): {e}"))?;
            raw_window(world).map_err(|e| format!("section 6 (raw receives): {e}"))?;
        }
        threads(world).map_err(|e| format!("section 7 (threads): {e}"))?;
        world.barrier().or_fail("final barrier")
    });
}

fn to_self(world: &braid::SimpleCommunicator) -> Check {
    let me = world.this_process();
    let rank = world.rank();
    for size in [0usize, 1, 1000, 65536, 65537, 1 << 20, (3 << 20) + 1] {
        let salt = salt_of(&[rank as u64, size as u64, 11]);
        let msg = pattern(size, salt);
        let mut got = vec![0u8; size];
        let st = braid::request::scope(|scope| {
            let s = me
                .immediate_send_with_tag(scope, &msg[..], 3)
                .or_fail("isend to self")?;
            let st = me
                .receive_into_with_tag(&mut got[..], 3)
                .or_fail("receive from self")?;
            s.wait().or_fail("wait for the isend to self")?;
            Ok::<_, String>(st)
        })
        .map_err(|e| format!("{size} B: {e}"))?;
        ensure(
            (st.source(), st.tag(), st.count_bytes()) == (rank, 3, size),
            || format!("isend to self of {size} B: status {st:?}"),
        )?;
        check_pattern(&got, salt).map_err(|e| format!("isend to self of {size} B: {e}"))?;

        // Receive posted first, then the send.
        let mut got2 = vec![0u8; size];
        let st = braid::request::scope(|scope| {
            let r = me
                .immediate_receive_into(scope, &mut got2[..])
                .or_fail("irecv from self")?;
            me.immediate_send(scope, &msg[..])
                .or_fail("isend to self")?
                .wait()
                .or_fail("wait isend")?;
            r.wait().or_fail("wait irecv from self")
        })
        .map_err(|e| format!("{size} B, receive first: {e}"))?;
        ensure(st.count_bytes() == size, || {
            format!("irecv-first self {size} B: {st:?}")
        })?;
        check_pattern(&got2, salt).map_err(|e| format!("irecv-first self {size} B: {e}"))?;

        // MPI_Sendrecv with oneself is legal for any size.
        let mut got3 = vec![0u8; size];
        let st = braid::point_to_point::send_receive_into(&msg[..], &me, &mut got3[..], &me)
            .or_fail(format!("send_receive_into self with {size} B"))?;
        ensure(st.count_bytes() == size && st.source() == rank, || {
            format!("send_receive_into self {size} B: {st:?}")
        })?;
        check_pattern(&got3, salt).map_err(|e| format!("send_receive_into self {size} B: {e}"))?;
    }
    // Blocking standard send of an eager message to self completes (buffered), then receive.
    for size in [0usize, 8, 4096] {
        let salt = salt_of(&[rank as u64, size as u64, 12]);
        let msg = pattern(size, salt);
        me.send_with_tag(&msg[..], 4)
            .or_fail(format!("blocking send of {size} B to self"))?;
        let (v, st) = me
            .receive_vec_with_tag::<u8>(4)
            .or_fail("receive_vec from self")?;
        ensure(st.source() == rank && v.len() == size, || {
            format!("self {size} B: {st:?}")
        })?;
        check_pattern(&v, salt)?;
    }
    Ok(())
}

fn synchronous(world: &braid::SimpleCommunicator) -> Check {
    let rank = world.rank();
    if rank > 1 {
        return Ok(());
    }
    let peer = world.process_at_rank(1 - rank);
    let msg = pattern(100, 21);
    if rank == 0 {
        braid::request::scope(|scope| {
            let mut s = peer
                .immediate_synchronous_send_with_tag(scope, &msg[..], 21)
                .or_fail("issend")?;
            // The receiver cannot have posted its receive yet: it waits for "go".
            for i in 0..2000 {
                if let Some(st) = s.test().or_fail("test of the issend")? {
                    return Err(format!(
                        "issend of 100 B finished ({st:?}) at test #{i}, before the receiver posted a receive (it behaves like a standard send)"
                    ));
                }
            }
            peer.send_with_tag(&[1u8][..], 22).or_fail("send go")?;
            s.wait().or_fail("wait issend").map(drop)
        })?;
        // Blocking synchronous round trip.
        peer.synchronous_send_with_tag(&msg[..], 23)
            .or_fail("ssend")?;
        let mut back = [0u8; 100];
        peer.receive_into_with_tag(&mut back[..], 24)
            .or_fail("receive ssend reply")?;
        ensure(back[..] == msg[..], || "ssend reply differs".into())
    } else {
        let mut go = [0u8; 1];
        peer.receive_into_with_tag(&mut go[..], 22)
            .or_fail("receive go")?;
        let mut got = [0u8; 100];
        let st = peer
            .receive_into_with_tag(&mut got[..], 21)
            .or_fail("receive issend message")?;
        ensure(st.count_bytes() == 100 && got[..] == msg[..], || {
            format!("issend message wrong: {st:?}")
        })?;
        peer.receive_into_with_tag(&mut got[..], 23)
            .or_fail("receive ssend message")?;
        peer.synchronous_send_with_tag(&got[..], 24)
            .or_fail("ssend reply")
    }
}

fn probes(world: &braid::SimpleCommunicator) -> Check {
    let rank = world.rank();
    if rank > 1 {
        return Ok(());
    }
    let peer = world.process_at_rank(1 - rank);
    if rank == 0 {
        peer.send_with_tag(&pattern(1000, 31)[..], 7)
            .or_fail("send 1000 B tag 7")?;
        // Rendezvous-sized: the standard send blocks until matched, so post it immediately.
        let big = pattern(300_000, 32);
        braid::request::scope(|scope| {
            let s = peer
                .immediate_send_with_tag(scope, &big[..], 8)
                .or_fail("isend 300000 B tag 8")?;
            s.wait().or_fail("wait isend tag 8").map(drop)
        })?;
        let mut done = [0u8; 1];
        peer.receive_into_with_tag(&mut done[..], 9)
            .or_fail("receive done")?;
        Ok(())
    } else {
        // Nothing with tag 99 is ever sent.
        let st = peer.probe().or_fail("probe any tag")?;
        ensure(
            (st.source(), st.tag(), st.count_bytes()) == (0, 7, 1000),
            || format!("probe: {st:?}"),
        )?;
        let again = peer.immediate_probe().or_fail("iprobe")?;
        ensure(again == Some(st), || {
            format!("iprobe after probe: {again:?}")
        })?;
        ensure(
            world
                .any_process()
                .immediate_probe_with_tag(99)
                .or_fail("iprobe tag 99")?
                .is_none(),
            || "iprobe for tag 99 found something".into(),
        )?;
        let st8 = loop {
            if let Some(s) = world
                .any_process()
                .immediate_probe_with_tag(8)
                .or_fail("iprobe tag 8")?
            {
                break s;
            }
        };
        ensure(
            (st8.source(), st8.tag(), st8.count_bytes()) == (0, 8, 300_000),
            || format!("iprobe of the rendezvous message: {st8:?}"),
        )?;
        let st8b = peer.probe_with_tag(8).or_fail("probe tag 8")?;
        ensure(st8b == st8, || format!("probe tag 8: {st8b:?}"))?;
        // Receive the later (tag 8) message first, then tag 7.
        let mut big = vec![0u8; 300_000];
        peer.receive_into_with_tag(&mut big[..], 8)
            .or_fail("receive tag 8")?;
        check_pattern(&big, 32)?;
        let mut small = vec![0u8; 1000];
        peer.receive_into_with_tag(&mut small[..], 7)
            .or_fail("receive tag 7")?;
        check_pattern(&small, 31)?;
        ensure(
            peer.immediate_probe().or_fail("iprobe at end")?.is_none(),
            || "a message is left after receiving both".into(),
        )?;
        peer.send_with_tag(&[0u8][..], 9).or_fail("send done")
    }
}

fn receive_vec(world: &braid::SimpleCommunicator) -> Check {
    let (rank, n) = (world.rank(), world.size());
    let sizes = [0usize, 3, 70_000, 1 << 20];
    if rank == 0 {
        let mut seen = vec![0usize; n as usize * sizes.len()];
        for _ in 1..n {
            for _ in sizes {
                let (v, st) = world
                    .any_process()
                    .receive_vec::<u64>()
                    .or_fail("receive_vec")?;
                let (src, k) = (st.source(), st.tag() as usize);
                ensure(src > 0 && src < n && k < sizes.len(), || {
                    format!("receive_vec status {st:?}")
                })?;
                ensure(v.len() == sizes[k] && st.count::<u64>() == sizes[k], || {
                    format!(
                        "receive_vec from {src}: {} elements, want {}",
                        v.len(),
                        sizes[k]
                    )
                })?;
                ensure(
                    v.iter()
                        .enumerate()
                        .all(|(i, x)| *x == (src as u64) << 40 | i as u64),
                    || format!("receive_vec from {src}: content wrong"),
                )?;
                seen[src as usize * sizes.len() + k] += 1;
            }
        }
        ensure(seen.iter().skip(sizes.len()).all(|c| *c == 1), || {
            format!("receive_vec counts {seen:?}")
        })
    } else {
        let dest = world.process_at_rank(0);
        let vs: Vec<Vec<u64>> = sizes
            .iter()
            .map(|&s| (0..s as u64).map(|i| (rank as u64) << 40 | i).collect())
            .collect();
        braid::request::scope(|scope| {
            let mut reqs = Vec::new();
            for (k, v) in vs.iter().enumerate() {
                reqs.push(
                    dest.immediate_send_with_tag(scope, &v[..], k as i32)
                        .or_fail("isend")?,
                );
            }
            braid::request::wait_all(reqs).or_fail("wait_all").map(drop)
        })
    }
}

fn wait_any_test_all(world: &braid::SimpleCommunicator) -> Check {
    let (rank, n) = (world.rank(), world.size());
    let sizes = |r: i32| if r % 2 == 0 { 5000usize } else { 150_000 };
    if rank == 0 {
        // Phase A: test_all must report "not yet" until the go.
        let mut bufs: Vec<Vec<u8>> = (1..n).map(|r| vec![0u8; sizes(r)]).collect();
        braid::request::scope(|scope| {
            let mut reqs = Vec::new();
            for (r, b) in (1..n).zip(bufs.iter_mut()) {
                reqs.push(
                    world
                        .process_at_rank(r)
                        .immediate_receive_into_with_tag(scope, &mut b[..], 51)
                        .or_fail("irecv")?,
                );
            }
            for _ in 0..100 {
                if test_all_now(&mut reqs)?.is_some() {
                    return Err("test_all finished before anybody sent".to_string());
                }
            }
            for r in 1..n {
                world
                    .process_at_rank(r)
                    .send_with_tag(&[1u8][..], 50)
                    .or_fail("send go")?;
            }
            let sts = loop {
                if let Some(s) = test_all_now(&mut reqs)? {
                    break s;
                }
            };
            ensure(reqs.is_empty(), || "test_all left requests behind".into())?;
            for (i, st) in sts.iter().enumerate() {
                let r = i as i32 + 1;
                ensure((st.source(), st.count_bytes()) == (r, sizes(r)), || {
                    format!("test_all status {i}: {st:?}")
                })?;
            }
            Ok(())
        })?;
        for (r, b) in (1..n).zip(&bufs) {
            check_pattern(b, salt_of(&[r as u64, 51]))
                .map_err(|e| format!("test_all data from {r}: {e}"))?;
        }
        // Phase B: wait_any, ranks answer in reverse order of a token chain.
        let mut bufs: Vec<Vec<u8>> = (1..n).map(|r| vec![0u8; sizes(r)]).collect();
        braid::request::scope(|scope| {
            let mut reqs = Vec::new();
            let mut owner = Vec::new();
            for (r, b) in (1..n).zip(bufs.iter_mut()) {
                reqs.push(
                    world
                        .any_process()
                        .immediate_receive_into_with_tag(scope, &mut b[..], 60 + r)
                        .or_fail("irecv")?,
                );
                owner.push(r);
            }
            world
                .process_at_rank(n - 1)
                .send_with_tag(&[1u8][..], 59)
                .or_fail("send token")?;
            // Ranks send in the order n-1, n-2, ..., 1 (each after the previous one's data
            // was taken by wait_any here and a token passed on).
            for want in (1..n).rev() {
                let (i, st) = braid::request::wait_any(&mut reqs).or_fail("wait_any")?;
                let r = owner.remove(i);
                ensure(
                    r == want && st.source() == want && st.tag() == 60 + want,
                    || format!("wait_any gave request of rank {r} with {st:?}, want rank {want}"),
                )?;
                if want > 1 {
                    world
                        .process_at_rank(want - 1)
                        .send_with_tag(&[1u8][..], 59)
                        .or_fail("send token")?;
                }
            }
            ensure(reqs.is_empty(), || "wait_any left requests".into())?;
            ensure(braid::request::wait_any(&mut reqs).is_err(), || {
                "wait_any on no requests succeeded".into()
            })
        })?;
        for (r, b) in (1..n).zip(&bufs) {
            check_pattern(b, salt_of(&[r as u64, 60]))
                .map_err(|e| format!("wait_any data from {r}: {e}"))?;
        }
        Ok(())
    } else {
        let zero = world.process_at_rank(0);
        let mut go = [0u8; 1];
        zero.receive_into_with_tag(&mut go[..], 50)
            .or_fail("receive go")?;
        zero.send_with_tag(&pattern(sizes(rank), salt_of(&[rank as u64, 51]))[..], 51)
            .or_fail("send data")?;
        zero.receive_into_with_tag(&mut go[..], 59)
            .or_fail("receive token")?;
        zero.send_with_tag(
            &pattern(sizes(rank), salt_of(&[rank as u64, 60]))[..],
            60 + rank,
        )
        .or_fail("send data")
    }
}

fn test_all_now<'a, S: braid::request::Scope<'a>>(
    reqs: &mut Vec<braid::request::Request<'a, S>>,
) -> Check<Option<Vec<braid::Status>>> {
    braid::request::test_all(reqs).or_fail("test_all")
}

fn raw_window(world: &braid::SimpleCommunicator) -> Check {
    const WINDOW: usize = 16;
    let rank = world.rank();
    if rank > 1 {
        return Ok(());
    }
    let peer = world.process_at_rank(1 - rank);
    for size in [1usize, 4000, 200_000] {
        let salt = salt_of(&[size as u64, 61]);
        let msg = pattern(size, salt);
        if rank == 0 {
            for _ in 0..WINDOW {
                peer.send_with_tag(&msg[..], 61).or_fail("send")?;
            }
            continue;
        }
        let mut buf = vec![0u8; size];
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        let mut reqs = Vec::new();
        for _ in 0..WINDOW {
            // SAFETY: `buf` is not touched until every request below has been waited for.
            reqs.push(
                unsafe { peer.immediate_receive_raw_with_tag(ptr, len, 61) }
                    .or_fail("raw irecv")?,
            );
        }
        let sts = braid::request::wait_all(reqs).or_fail("wait raw receives")?;
        for st in &sts {
            ensure(st.count_bytes() == size, || {
                format!("a raw receive got {} of {size} bytes", st.count_bytes())
            })?;
            ensure(st.source() == 0, || {
                format!("raw receive from {}", st.source())
            })?;
        }
        check_pattern(&buf, salt)?;
    }
    // A message longer than the raw buffer: one that takes a fast-box slot, one that does
    // not. The receive is posted before the message comes.
    for long in [40usize, 600] {
        if rank == 0 {
            peer.receive_vec_with_tag::<u8>(63).or_fail("go")?;
            peer.send_with_tag(&vec![7u8; long][..], 62)
                .or_fail("send long")?;
        } else {
            let mut small = [0u8; 10];
            // SAFETY: `small` outlives the request, which is waited for at once.
            let r =
                unsafe { peer.immediate_receive_raw_with_tag(small.as_mut_ptr(), small.len(), 62) }
                    .or_fail("raw irecv")?;
            peer.send_with_tag(&[0u8][..], 63).or_fail("go")?;
            match r.wait() {
                Err(braid::Error::UsageTruncated { .. }) => {}
                other => {
                    return Err(format!(
                        "{long} bytes into a 10-byte raw receive gave {other:?}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Section 7: a second thread takes over. The main thread (which initialized Braid) has
/// communicated; now another thread sends around a ring while the main thread keeps polling
/// (`iprobe` on an unused tag), then the main thread sends around the ring again.
fn threads(world: &braid::SimpleCommunicator) -> Check {
    let (rank, size) = (world.rank(), world.size());
    let ring = |tag: i32, round: u64| -> Check {
        let next = world.process_at_rank((rank + 1) % size);
        let prev = world.process_at_rank((rank + size - 1) % size);
        for len in [8usize, 100, 70_000] {
            let salt = salt_of(&[rank as u64, len as u64, round]);
            let from = salt_of(&[((rank + size - 1) % size) as u64, len as u64, round]);
            let msg = pattern(len, salt);
            let mut got = vec![0u8; len];
            braid::request::scope(|scope| {
                let s = next
                    .immediate_send_with_tag(scope, &msg[..], tag)
                    .or_fail("ring send")?;
                prev.receive_into_with_tag(&mut got[..], tag)
                    .or_fail("ring receive")?;
                s.wait().or_fail("ring send wait").map(drop)
            })
            .map_err(|e| format!("{len} B: {e}"))?;
            check_pattern(&got, from).map_err(|e| format!("{len} B: {e}"))?;
        }
        Ok(())
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            let r = ring(71, 1).map_err(|e| format!("second thread: {e}"));
            done.store(true, std::sync::atomic::Ordering::Release);
            r
        });
        let mut polls = 0u64;
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            let unused = world
                .any_process()
                .immediate_probe_with_tag(72)
                .or_fail("iprobe")?;
            ensure(unused.is_none(), || {
                "a message on an unused tag".to_string()
            })?;
            polls += 1;
            ensure(polls < 50_000_000, || {
                "the second thread never finished".to_string()
            })?;
        }
        other
            .join()
            .map_err(|_| "the second thread panicked".to_string())?
    })?;
    ring(73, 2).map_err(|e| format!("main thread afterwards: {e}"))
}
