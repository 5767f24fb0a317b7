//! Every collective, on the world and on derived communicators, checked against a sequential
//! reference computed locally; plus groups, topologies, datatypes, nonblocking collectives
//! and misuse. One job runs every check; `coll_all big` adds 16 MiB buffers.

use braid::collective::{
    Partition, PartitionMut, SystemOperation, TypedBlock, UserOperation, ValueIndex,
};
use braid::datatype::{Datatype, MutView, Primitive, View};
use braid::group::GroupRelation;
use braid::topology::{CartesianCommunicator, dims_create};
use braid::traits::*;
use braid::{Color, CommunicatorRelation, Error, SimpleCommunicator};
use braid_tests::{Check, OrFail, ensure, matmul, run_rank};

/// A particle: a struct with a derived datatype.
#[derive(Clone, Copy, Debug, PartialEq, braid::Equivalence)]
#[repr(C)]
struct Particle {
    x: f64,
    y: f64,
    id: u64,
    kind: u32,
    flag: u32,
}

fn val(rank: usize, i: usize) -> i64 {
    ((rank * 7919 + i * 104_729) % 1000) as i64 - 500
}

fn mat(rank: usize, i: usize) -> [i64; 4] {
    [(rank + i) as i64 % 5 + 1, 1, 1, 0]
}

fn matop() -> UserOperation<[i64; 4]> {
    UserOperation::associative(|a: &[[i64; 4]], b: &mut [[i64; 4]]| {
        for (x, y) in a.iter().zip(b.iter_mut()) {
            *y = matmul(*x, *y);
        }
    })
}

fn same<T: PartialEq + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) -> Check {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} elements, want {}",
            got.len(),
            want.len()
        ));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            return Err(format!("{what}: element {i} is {g:?}, want {w:?}"));
        }
    }
    Ok(())
}

fn expect_err(what: &str, r: Result<(), Error>, ok: impl Fn(&Error) -> bool) -> Check {
    match r {
        Err(e) if ok(&e) => Ok(()),
        Err(e) => Err(format!("{what}: wrong error {e:?}")),
        Ok(()) => Err(format!("{what}: succeeded, want an error")),
    }
}

/// Every collective on `comm`, whose members have world ranks `members` (comm order).
fn collectives(name: &str, comm: &SimpleCommunicator, big: bool) -> Check {
    let p = comm.size() as usize;
    let me = comm.rank() as usize;
    let w = |what: &str| {
        if std::env::var_os("COLL_TRACE").is_some() {
            eprintln!("[{me}] {name}: {what}");
        }
        format!("{name}: {what}")
    };
    comm.barrier().or_fail(w("barrier"))?;

    // Broadcast from every root, several sizes.
    for root in 0..p {
        for n in [0usize, 1, 7, 3000] {
            let want: Vec<i64> = (0..n).map(|i| val(root, i)).collect();
            let mut buf = if me == root { want.clone() } else { vec![0; n] };
            comm.process_at_rank(root as i32)
                .broadcast_into(&mut buf[..])
                .or_fail(w("bcast"))?;
            same(&w(&format!("bcast root {root} n {n}")), &buf, &want)?;
        }
    }
    let sizes: &[usize] = if big {
        &[0, 1, 5, 20_000, 2 << 20]
    } else {
        &[0, 1, 5, 20_000]
    };
    for &n in sizes {
        let mine: Vec<i64> = (0..n).map(|i| val(me, i)).collect();
        let sum: Vec<i64> = (0..n).map(|i| (0..p).map(|r| val(r, i)).sum()).collect();
        let mut out = vec![0i64; n];
        comm.all_reduce_into(&mine[..], &mut out[..], SystemOperation::sum())
            .or_fail(w("allreduce"))?;
        same(&w(&format!("allreduce sum n {n}")), &out, &sum)?;
        let mut inplace = mine.clone();
        comm.all_reduce_in_place(&mut inplace[..], SystemOperation::max())
            .or_fail(w("allreduce in place"))?;
        let max: Vec<i64> = (0..n)
            .map(|i| (0..p).map(|r| val(r, i)).max().unwrap_or(0))
            .collect();
        same(&w(&format!("allreduce max in place n {n}")), &inplace, &max)?;
        for root in [0, p - 1, p / 2] {
            if me == root {
                let mut o = vec![0i64; n];
                comm.process_at_rank(root as i32)
                    .reduce_into_root(&mine[..], &mut o[..], SystemOperation::sum())
                    .or_fail(w("reduce"))?;
                same(&w(&format!("reduce root {root} n {n}")), &o, &sum)?;
            } else {
                comm.process_at_rank(root as i32)
                    .reduce_into(&mine[..], SystemOperation::sum())
                    .or_fail(w("reduce"))?;
            }
        }
        // Non-commutative: matrix products in rank order.
        if n <= 20_000 {
            let m = n.min(3000);
            let mm: Vec<[i64; 4]> = (0..m).map(|i| mat(me, i)).collect();
            let prod: Vec<[i64; 4]> = (0..m)
                .map(|i| (1..p).fold(mat(0, i), |a, r| matmul(a, mat(r, i))))
                .collect();
            let mut o = vec![[0i64; 4]; m];
            comm.all_reduce_into(&mm[..], &mut o[..], matop())
                .or_fail(w("allreduce matop"))?;
            same(&w(&format!("allreduce non-commutative n {m}")), &o, &prod)?;
            let root = p - 1;
            if me == root {
                let mut o = vec![[0i64; 4]; m];
                comm.process_at_rank(root as i32)
                    .reduce_into_root(&mm[..], &mut o[..], matop())
                    .or_fail(w("reduce matop"))?;
                same(&w("reduce non-commutative"), &o, &prod)?;
            } else {
                comm.process_at_rank(root as i32)
                    .reduce_into(&mm[..], matop())
                    .or_fail(w("reduce matop"))?;
            }
            let mut sc = vec![[0i64; 4]; m];
            comm.scan_into(&mm[..], &mut sc[..], matop())
                .or_fail(w("scan matop"))?;
            let pre: Vec<[i64; 4]> = (0..m)
                .map(|i| (1..=me).fold(mat(0, i), |a, r| matmul(a, mat(r, i))))
                .collect();
            same(&w("scan non-commutative"), &sc, &pre)?;
            let mut ex = vec![[7i64; 4]; m];
            comm.exscan_into(&mm[..], &mut ex[..], matop())
                .or_fail(w("exscan matop"))?;
            if me > 0 {
                let pre: Vec<[i64; 4]> = (0..m)
                    .map(|i| (1..me).fold(mat(0, i), |a, r| matmul(a, mat(r, i))))
                    .collect();
                same(&w("exscan non-commutative"), &ex, &pre)?;
            }
            let blocks: Vec<[i64; 4]> = (0..m * p).map(|i| mat(me, i)).collect();
            let mut rs = vec![[0i64; 4]; m];
            comm.reduce_scatter_block_into(&blocks[..], &mut rs[..], matop())
                .or_fail(w("reduce_scatter_block matop"))?;
            let want: Vec<[i64; 4]> = (0..m)
                .map(|i| (1..p).fold(mat(0, me * m + i), |a, r| matmul(a, mat(r, me * m + i))))
                .collect();
            same(&w("reduce_scatter_block non-commutative"), &rs, &want)?;
        }
        // Scans with sum.
        let mut sc = vec![0i64; n];
        comm.scan_into(&mine[..], &mut sc[..], SystemOperation::sum())
            .or_fail(w("scan"))?;
        let pre: Vec<i64> = (0..n).map(|i| (0..=me).map(|r| val(r, i)).sum()).collect();
        same(&w(&format!("scan n {n}")), &sc, &pre)?;
        let mut ex = mine.clone();
        comm.exscan_in_place(&mut ex[..], SystemOperation::sum())
            .or_fail(w("exscan"))?;
        if me > 0 {
            let pre: Vec<i64> = (0..n).map(|i| (0..me).map(|r| val(r, i)).sum()).collect();
            same(&w(&format!("exscan in place n {n}")), &ex, &pre)?;
        }
        let mut sc2 = mine.clone();
        comm.scan_in_place(&mut sc2[..], SystemOperation::sum())
            .or_fail(w("scan in place"))?;
        same(&w("scan in place"), &sc2, &sc)?;
        // Reduce-scatter-block with sum.
        let blocks: Vec<i64> = (0..n * p).map(|i| val(me, i)).collect();
        let mut rs = vec![0i64; n];
        comm.reduce_scatter_block_into(&blocks[..], &mut rs[..], SystemOperation::sum())
            .or_fail(w("rsb"))?;
        let want: Vec<i64> = (0..n)
            .map(|i| (0..p).map(|r| val(r, me * n + i)).sum())
            .collect();
        same(&w(&format!("reduce_scatter_block n {n}")), &rs, &want)?;
        let mut rsi = blocks.clone();
        comm.reduce_scatter_block_in_place(&mut rsi[..], SystemOperation::sum())
            .or_fail(w("rsb in place"))?;
        // MPI: the in-place result is this rank's block, at the start of the buffer.
        same(&w("reduce_scatter_block in place"), &rsi[..n], &want)?;
    }

    // Every op on every type it applies to (small vectors).
    ops(comm, &w)?;

    // Gather / scatter / allgather / alltoall, uniform and variable, with roots.
    for n in [0usize, 3, 1000, 20_000] {
        let mine: Vec<i64> = (0..n).map(|i| val(me, i)).collect();
        let all: Vec<i64> = (0..p)
            .flat_map(|r| (0..n).map(move |i| val(r, i)))
            .collect();
        for root in [0, p - 1] {
            let rp = comm.process_at_rank(root as i32);
            if me == root {
                let mut o = vec![0i64; n * p];
                rp.gather_into_root(&mine[..], &mut o[..])
                    .or_fail(w("gather"))?;
                same(&w(&format!("gather root {root} n {n}")), &o, &all)?;
                let mut o2 = vec![0i64; n * p];
                o2[root * n..(root + 1) * n].copy_from_slice(&mine);
                rp.gather_in_place_root(&mut o2[..])
                    .or_fail(w("gather in place"))?;
                same(&w("gather in place"), &o2, &all)?;
                let mut s = vec![0i64; n];
                rp.scatter_into_root(&all[..], &mut s[..])
                    .or_fail(w("scatter"))?;
                same(&w("scatter"), &s, &mine)?;
                rp.scatter_in_place_root(&all[..])
                    .or_fail(w("scatter in place"))?;
            } else {
                rp.gather_into(&mine[..]).or_fail(w("gather"))?;
                rp.gather_into(&mine[..]).or_fail(w("gather in place"))?;
                let mut s = vec![0i64; n];
                rp.scatter_into(&mut s[..]).or_fail(w("scatter"))?;
                same(&w(&format!("scatter root {root} n {n}")), &s, &mine)?;
                let mut s = vec![0i64; n];
                rp.scatter_into(&mut s[..]).or_fail(w("scatter in place"))?;
                same(&w("scatter in place"), &s, &mine)?;
            }
        }
        let mut ag = vec![0i64; n * p];
        comm.all_gather_into(&mine[..], &mut ag[..])
            .or_fail(w("allgather"))?;
        same(&w(&format!("allgather n {n}")), &ag, &all)?;
        let mut agi = vec![0i64; n * p];
        agi[me * n..(me + 1) * n].copy_from_slice(&mine);
        comm.all_gather_in_place(&mut agi[..])
            .or_fail(w("allgather in place"))?;
        same(&w("allgather in place"), &agi, &all)?;
        // Alltoall: block j of rank r is val(r, j*n + i) + 1000 j.
        let sendb: Vec<i64> = (0..n * p)
            .map(|k| val(me, k) + 1000 * (k / n.max(1)) as i64)
            .collect();
        let want: Vec<i64> = (0..p)
            .flat_map(|r| (0..n).map(move |i| val(r, me * n + i) + 1000 * me as i64))
            .collect();
        let mut at = vec![0i64; n * p];
        comm.all_to_all_into(&sendb[..], &mut at[..])
            .or_fail(w("alltoall"))?;
        same(&w(&format!("alltoall n {n}")), &at, &want)?;
        let mut ati = sendb.clone();
        comm.all_to_all_in_place(&mut ati[..])
            .or_fail(w("alltoall in place"))?;
        same(&w("alltoall in place"), &ati, &want)?;
    }
    // Variable counts: rank r contributes r+1 elements (zero for the last on even sizes).
    let cnt = |r: usize| {
        if p.is_multiple_of(2) && r == p - 1 {
            0
        } else {
            r + 1
        }
    };
    let counts: Vec<i32> = (0..p).map(|r| cnt(r) as i32).collect();
    let displs: Vec<i32> = (0..p)
        .map(|r| (0..r).map(|q| cnt(q) as i32 + 1).sum())
        .collect();
    let total = (0..p).map(|r| cnt(r) + 1).sum::<usize>();
    let mine: Vec<i64> = (0..cnt(me)).map(|i| val(me, i)).collect();
    let mut want = vec![-1i64; total];
    for r in 0..p {
        for i in 0..cnt(r) {
            want[displs[r] as usize + i] = val(r, i);
        }
    }
    let root = p / 2;
    if me == root {
        let mut o = vec![-1i64; total];
        comm.process_at_rank(root as i32)
            .gather_varcount_into_root(
                &mine[..],
                &mut PartitionMut::new(&mut o[..], counts.clone(), displs.clone()),
            )
            .or_fail(w("gatherv"))?;
        same(&w("gatherv"), &o, &want)?;
        let mut s = vec![0i64; cnt(me)];
        comm.process_at_rank(root as i32)
            .scatter_varcount_into_root(
                &Partition::new(&want[..], counts.clone(), displs.clone()),
                &mut s[..],
            )
            .or_fail(w("scatterv"))?;
        same(&w("scatterv"), &s, &mine)?;
    } else {
        comm.process_at_rank(root as i32)
            .gather_varcount_into(&mine[..])
            .or_fail(w("gatherv"))?;
        let mut s = vec![0i64; cnt(me)];
        comm.process_at_rank(root as i32)
            .scatter_varcount_into(&mut s[..])
            .or_fail(w("scatterv"))?;
        same(&w("scatterv"), &s, &mine)?;
    }
    let mut o = vec![-1i64; total];
    comm.all_gather_varcount_into(
        &mine[..],
        &mut PartitionMut::new(&mut o[..], counts.clone(), displs.clone()),
    )
    .or_fail(w("allgatherv"))?;
    same(&w("allgatherv"), &o, &want)?;
    // Alltoallv: rank r sends (r + j) % 3 elements to j.
    let sc: Vec<i32> = (0..p).map(|j| ((me + j) % 3) as i32).collect();
    let sd: Vec<i32> = (0..p).map(|j| (0..j).map(|q| sc[q]).sum()).collect();
    let rc: Vec<i32> = (0..p).map(|r| ((r + me) % 3) as i32).collect();
    let rd: Vec<i32> = (0..p).map(|r| (0..r).map(|q| rc[q]).sum()).collect();
    let sbuf: Vec<i64> = (0..sc.iter().sum::<i32>() as usize)
        .map(|k| val(me, k))
        .collect();
    let mut rbuf = vec![0i64; rc.iter().sum::<i32>() as usize];
    comm.all_to_all_varcount_into(
        &Partition::new(&sbuf[..], sc, sd),
        &mut PartitionMut::new(&mut rbuf[..], rc.clone(), rd.clone()),
    )
    .or_fail(w("alltoallv"))?;
    let want: Vec<i64> = (0..p)
        .flat_map(|r| {
            let off: usize = (0..me).map(|q| (r + q) % 3).sum();
            (0..(r + me) % 3).map(move |i| val(r, off + i))
        })
        .collect();
    same(&w("alltoallv"), &rbuf, &want)?;

    nonblocking(comm, &w)?;
    nonblocking_rooted(comm, &w)?;
    nonblocking_varcount(comm, &w)?;
    reduce_scatter_varcount(comm, &w)?;
    alltoallw(comm, &w)?;
    progress(comm, &w)?;
    misuse(comm, &w)?;
    misuse_immediate(comm, &w)?;
    if big {
        let n = 16 << 20;
        let root = p - 1;
        let mut buf = vec![0u8; n];
        if me == root {
            braid_tests::fill_pattern(&mut buf, 77);
        }
        comm.process_at_rank(root as i32)
            .broadcast_into(&mut buf[..])
            .or_fail(w("bcast 16 MiB"))?;
        braid_tests::check_pattern(&buf, 77).map_err(|e| w(&format!("bcast 16 MiB: {e}")))?;
        let ones = vec![1u32; n / 4];
        let mut out = vec![0u32; n / 4];
        comm.all_reduce_into(&ones[..], &mut out[..], SystemOperation::sum())
            .or_fail(w("allreduce 16 MiB"))?;
        ensure(out.iter().all(|x| *x == p as u32), || {
            w("allreduce 16 MiB wrong")
        })?;
    }
    comm.barrier().or_fail(w("final barrier"))
}

fn ops(comm: &SimpleCommunicator, w: &dyn Fn(&str) -> String) -> Check {
    let p = comm.size() as usize;
    let me = comm.rank() as usize;
    macro_rules! int_ops {
        ($($t:ty),*) => { $( {
            let v = |r: usize, i: usize| -> $t { ((r * 37 + i * 11) % 97) as $t };
            let mine: Vec<$t> = (0..4).map(|i| v(me, i)).collect();
            let ops: [(SystemOperation, fn($t, $t) -> $t); 10] = [
                (SystemOperation::sum(), |a, b| a.wrapping_add(b)),
                (SystemOperation::product(), |a, b| a.wrapping_mul(b)),
                (SystemOperation::min(), |a, b| a.min(b)),
                (SystemOperation::max(), |a, b| a.max(b)),
                (SystemOperation::bitwise_and(), |a, b| a & b),
                (SystemOperation::bitwise_or(), |a, b| a | b),
                (SystemOperation::bitwise_xor(), |a, b| a ^ b),
                (SystemOperation::logical_and(), |a, b| ((a != 0) && (b != 0)) as $t),
                (SystemOperation::logical_or(), |a, b| ((a != 0) || (b != 0)) as $t),
                (SystemOperation::logical_xor(), |a, b| ((a != 0) != (b != 0)) as $t),
            ];
            for (op, f) in ops {
                let want: Vec<$t> = (0..4).map(|i| (1..p).fold(v(0, i), |a, r| f(a, v(r, i)))).collect();
                let mut out = vec![0 as $t; 4];
                comm.all_reduce_into(&mine[..], &mut out[..], op).or_fail(w(op.name()))?;
                same(&w(&format!("{} on {}", op.name(), stringify!($t))), &out, &want)?;
            }
        } )* };
    }
    int_ops!(
        i8, u8, i16, u16, i32, u32, i64, u64, i128, u128, isize, usize
    );
    macro_rules! float_ops {
        ($($t:ty),*) => { $( {
            let v = |r: usize, i: usize| -> $t { ((r * 37 + i * 11) % 13) as $t * 0.5 };
            let mine: Vec<$t> = (0..4).map(|i| v(me, i)).collect();
            let ops: [(SystemOperation, fn($t, $t) -> $t); 4] = [
                (SystemOperation::sum(), |a, b| a + b),
                (SystemOperation::product(), |a, b| a * b),
                (SystemOperation::min(), |a, b| a.min(b)),
                (SystemOperation::max(), |a, b| a.max(b)),
            ];
            for (op, f) in ops {
                let want: Vec<$t> = (0..4).map(|i| (1..p).fold(v(0, i), |a, r| f(a, v(r, i)))).collect();
                let mut out = vec![0.0 as $t; 4];
                comm.all_reduce_into(&mine[..], &mut out[..], op).or_fail(w(op.name()))?;
                // Exact: small halves sum exactly in any order.
                same(&w(&format!("{} on {}", op.name(), stringify!($t))), &out, &want)?;
            }
        } )* };
    }
    float_ops!(f32, f64);
    // MINLOC / MAXLOC.
    let v = |r: usize| ((r * 5) % 3) as f64;
    let mine = [ValueIndex {
        value: v(me),
        index: me as i64,
    }];
    let mut out = [ValueIndex {
        value: 0.0,
        index: 0,
    }];
    comm.all_reduce_into(&mine[..], &mut out[..], SystemOperation::min_loc())
        .or_fail(w("minloc"))?;
    let best = (0..p)
        .min_by(|a, b| v(*a).total_cmp(&v(*b)).then(a.cmp(b)))
        .unwrap_or(0);
    ensure(
        out[0]
            == ValueIndex {
                value: v(best),
                index: best as i64,
            },
        || w(&format!("minloc {:?}", out[0])),
    )?;
    comm.all_reduce_into(&mine[..], &mut out[..], SystemOperation::max_loc())
        .or_fail(w("maxloc"))?;
    let best = (0..p)
        .max_by(|a, b| v(*a).total_cmp(&v(*b)).then(b.cmp(a)))
        .unwrap_or(0);
    ensure(
        out[0]
            == ValueIndex {
                value: v(best),
                index: best as i64,
            },
        || w(&format!("maxloc {:?}", out[0])),
    )?;
    // Commutative user op on a derived struct.
    let part = Particle {
        x: me as f64,
        y: 1.0,
        id: me as u64,
        kind: 1,
        flag: 0,
    };
    let mut sum = [part];
    let op = UserOperation::commutative(|a: &[Particle], b: &mut [Particle]| {
        for (x, y) in a.iter().zip(b.iter_mut()) {
            y.x += x.x;
            y.y += x.y;
            y.id = y.id.max(x.id);
            y.kind += x.kind;
        }
    });
    comm.all_reduce_into(&[part][..], &mut sum[..], op)
        .or_fail(w("user op on struct"))?;
    let want = Particle {
        x: (0..p).map(|r| r as f64).sum(),
        y: p as f64,
        id: p as u64 - 1,
        kind: p as u32,
        flag: 0,
    };
    ensure(sum[0] == want, || {
        w(&format!("user op on struct: {:?}", sum[0]))
    })
}

fn nonblocking(comm: &SimpleCommunicator, w: &dyn Fn(&str) -> String) -> Check {
    let p = comm.size() as usize;
    let me = comm.rank() as usize;
    let b = comm.immediate_barrier().or_fail(w("ibarrier"))?;
    let n = 2000;
    let mine: Vec<i64> = (0..n).map(|i| val(me, i)).collect();
    let sum: Vec<i64> = (0..n).map(|i| (0..p).map(|r| val(r, i)).sum()).collect();
    let all: Vec<i64> = (0..p)
        .flat_map(|r| (0..n).map(move |i| val(r, i)))
        .collect();
    let mut out = vec![0i64; n];
    let mut ag = vec![0i64; n * p];
    let mut bc = if me == 0 { mine.clone() } else { vec![0; n] };
    let mut sc = vec![0i64; n];
    let mut red = vec![0i64; n];
    let sendb: Vec<i64> = (0..n * p).map(|k| val(me, k)).collect();
    let mut at = vec![0i64; n * p];
    braid::request::scope(|scope| -> Check {
        let r1 = comm
            .immediate_all_reduce_into(scope, &mine[..], &mut out[..], SystemOperation::sum())
            .or_fail(w("iallreduce"))?;
        let r2 = comm
            .immediate_all_gather_into(scope, &mine[..], &mut ag[..])
            .or_fail(w("iallgather"))?;
        let r3 = comm
            .process_at_rank(0)
            .immediate_broadcast_into(scope, &mut bc[..])
            .or_fail(w("ibcast"))?;
        let r4 = comm
            .immediate_scan_into(scope, &mine[..], &mut sc[..], SystemOperation::sum())
            .or_fail(w("iscan"))?;
        let r5 = if me == p - 1 {
            comm.process_at_rank((p - 1) as i32)
                .immediate_reduce_into_root(scope, &mine[..], &mut red[..], SystemOperation::sum())
        } else {
            comm.process_at_rank((p - 1) as i32).immediate_reduce_into(
                scope,
                &mine[..],
                SystemOperation::sum(),
            )
        }
        .or_fail(w("ireduce"))?;
        let r6 = comm
            .immediate_all_to_all_into(scope, &sendb[..], &mut at[..])
            .or_fail(w("ialltoall"))?;
        // Complete in a different order than started, with test polling on one of them.
        let mut r4 = r4;
        while r4.test().or_fail(w("test iscan"))?.is_none() {}
        r6.wait().or_fail(w("ialltoall"))?;
        r3.wait().or_fail(w("ibcast"))?;
        r5.wait().or_fail(w("ireduce"))?;
        r2.wait().or_fail(w("iallgather"))?;
        r1.wait().or_fail(w("iallreduce"))?;
        Ok(())
    })?;
    b.wait().or_fail(w("ibarrier"))?;
    same(&w("iallreduce"), &out, &sum)?;
    same(&w("iallgather"), &ag, &all)?;
    let root0: Vec<i64> = (0..n).map(|i| val(0, i)).collect();
    same(&w("ibcast"), &bc, &root0)?;
    let pre: Vec<i64> = (0..n).map(|i| (0..=me).map(|r| val(r, i)).sum()).collect();
    same(&w("iscan"), &sc, &pre)?;
    if me == p - 1 {
        same(&w("ireduce"), &red, &sum)?;
    }
    let want: Vec<i64> = (0..p)
        .flat_map(|r| (0..n).map(move |i| val(r, me * n + i)))
        .collect();
    same(&w("ialltoall"), &at, &want)
}

/// Waits for `reqs` in an order that depends on the rank (a rotation, reversed on odd ranks),
/// polling one of them with `test` first, so that every rank completes its outstanding
/// collectives in an order different from the one they were started in.
fn complete_shuffled<'a, S: braid::request::Scope<'a>>(
    mut reqs: Vec<(&'static str, braid::request::Request<'a, S>)>,
    me: usize,
    w: &dyn Fn(&str) -> String,
) -> Check {
    if reqs.is_empty() {
        return Ok(());
    }
    let k = me % reqs.len();
    reqs.rotate_left(k);
    if me % 2 == 1 {
        reqs.reverse();
    }
    let (first, mut r) = reqs.remove(0);
    loop {
        if r.test().or_fail(w(&format!("test {first}")))?.is_some() {
            break;
        }
    }
    for (what, r) in reqs {
        r.wait().or_fail(w(what))?;
    }
    Ok(())
}

/// Every nonblocking rooted collective (gather, scatter, reduce; plain and in place) and the
/// in-place forms of the others, several outstanding at once, with roots other than 0 and
/// zero-length buffers, each checked against the sequential reference.
fn nonblocking_rooted(comm: &SimpleCommunicator, w: &dyn Fn(&str) -> String) -> Check {
    let p = comm.size() as usize;
    let me = comm.rank() as usize;
    for (n, root) in [
        (0usize, p - 1),
        (3, p / 2),
        (700, p - 1),
        (5000, (p + 1) / 3),
    ] {
        let w = |what: &str| w(&format!("{what} n {n} root {root}"));
        let mine: Vec<i64> = (0..n).map(|i| val(me, i)).collect();
        let all: Vec<i64> = (0..p)
            .flat_map(|r| (0..n).map(move |i| val(r, i)))
            .collect();
        let sum: Vec<i64> = (0..n).map(|i| (0..p).map(|r| val(r, i)).sum()).collect();
        let at_root = me == root;
        let rp = comm.process_at_rank(root as i32);
        let mut g = vec![0i64; if at_root { n * p } else { 0 }];
        let mut gi = vec![0i64; if at_root { n * p } else { 0 }];
        if at_root {
            gi[root * n..(root + 1) * n].copy_from_slice(&mine);
        }
        let mut sc = vec![0i64; n];
        let mut sci = vec![0i64; n];
        let mut red = mine.clone();
        let mut ag = vec![0i64; n * p];
        ag[me * n..(me + 1) * n].copy_from_slice(&mine);
        let a2a: Vec<i64> = (0..n * p)
            .map(|k| val(me, k) + 1000 * (k / n.max(1)) as i64)
            .collect();
        let mut a2ai = a2a.clone();
        let mut ar = mine.clone();
        let mut scan = mine.clone();
        let mut ex = vec![-9i64; n];
        let mut exi = mine.clone();
        let blocks: Vec<i64> = (0..n * p).map(|i| val(me, i)).collect();
        let mut rsb = vec![0i64; n];
        let mut rsbi = blocks.clone();
        braid::request::scope(|scope| -> Check {
            let mut reqs = Vec::new();
            if at_root {
                reqs.push((
                    "igather",
                    rp.immediate_gather_into_root(scope, &mine[..], &mut g[..])
                        .or_fail(w("igather"))?,
                ));
                reqs.push((
                    "igather in place",
                    rp.immediate_gather_in_place_root(scope, &mut gi[..])
                        .or_fail(w("igather in place"))?,
                ));
                reqs.push((
                    "iscatter",
                    rp.immediate_scatter_into_root(scope, &all[..], &mut sc[..])
                        .or_fail(w("iscatter"))?,
                ));
                reqs.push((
                    "iscatter in place",
                    rp.immediate_scatter_in_place_root(scope, &all[..])
                        .or_fail(w("iscatter in place"))?,
                ));
                reqs.push((
                    "ireduce in place",
                    rp.immediate_reduce_in_place_root(scope, &mut red[..], SystemOperation::sum())
                        .or_fail(w("ireduce in place"))?,
                ));
            } else {
                reqs.push((
                    "igather",
                    rp.immediate_gather_into(scope, &mine[..])
                        .or_fail(w("igather"))?,
                ));
                reqs.push((
                    "igather in place",
                    rp.immediate_gather_into(scope, &mine[..])
                        .or_fail(w("igather (root in place)"))?,
                ));
                reqs.push((
                    "iscatter",
                    rp.immediate_scatter_into(scope, &mut sc[..])
                        .or_fail(w("iscatter"))?,
                ));
                reqs.push((
                    "iscatter in place",
                    rp.immediate_scatter_into(scope, &mut sci[..])
                        .or_fail(w("iscatter (root in place)"))?,
                ));
                reqs.push((
                    "ireduce in place",
                    rp.immediate_reduce_into(scope, &mine[..], SystemOperation::sum())
                        .or_fail(w("ireduce (root in place)"))?,
                ));
            }
            reqs.push((
                "iallgather in place",
                comm.immediate_all_gather_in_place(scope, &mut ag[..])
                    .or_fail(w("iallgather in place"))?,
            ));
            reqs.push((
                "ialltoall in place",
                comm.immediate_all_to_all_in_place(scope, &mut a2ai[..])
                    .or_fail(w("ialltoall in place"))?,
            ));
            reqs.push((
                "iallreduce in place",
                comm.immediate_all_reduce_in_place(scope, &mut ar[..], SystemOperation::max())
                    .or_fail(w("iallreduce in place"))?,
            ));
            reqs.push((
                "iscan in place",
                comm.immediate_scan_in_place(scope, &mut scan[..], SystemOperation::sum())
                    .or_fail(w("iscan in place"))?,
            ));
            reqs.push((
                "iexscan",
                comm.immediate_exclusive_scan_into(
                    scope,
                    &mine[..],
                    &mut ex[..],
                    SystemOperation::sum(),
                )
                .or_fail(w("iexscan"))?,
            ));
            reqs.push((
                "iexscan in place",
                comm.immediate_exclusive_scan_in_place(scope, &mut exi[..], SystemOperation::sum())
                    .or_fail(w("iexscan in place"))?,
            ));
            reqs.push((
                "ireduce_scatter_block",
                comm.immediate_reduce_scatter_block_into(
                    scope,
                    &blocks[..],
                    &mut rsb[..],
                    SystemOperation::sum(),
                )
                .or_fail(w("ireduce_scatter_block"))?,
            ));
            reqs.push((
                "ireduce_scatter_block in place",
                comm.immediate_reduce_scatter_block_in_place(
                    scope,
                    &mut rsbi[..],
                    SystemOperation::sum(),
                )
                .or_fail(w("ireduce_scatter_block in place"))?,
            ));
            complete_shuffled(reqs, me, &w)
        })?;
        if at_root {
            same(&w("igather"), &g, &all)?;
            same(&w("igather in place"), &gi, &all)?;
            same(&w("ireduce in place"), &red, &sum)?;
        } else {
            same(&w("iscatter in place"), &sci, &mine)?;
        }
        same(&w("iscatter"), &sc, &mine)?;
        same(&w("iallgather in place"), &ag, &all)?;
        let want: Vec<i64> = (0..p)
            .flat_map(|r| (0..n).map(move |i| val(r, me * n + i) + 1000 * me as i64))
            .collect();
        same(&w("ialltoall in place"), &a2ai, &want)?;
        let max: Vec<i64> = (0..n)
            .map(|i| (0..p).map(|r| val(r, i)).max().unwrap_or(0))
            .collect();
        same(&w("iallreduce in place"), &ar, &max)?;
        let pre: Vec<i64> = (0..n).map(|i| (0..=me).map(|r| val(r, i)).sum()).collect();
        same(&w("iscan in place"), &scan, &pre)?;
        if me > 0 {
            let pre: Vec<i64> = (0..n).map(|i| (0..me).map(|r| val(r, i)).sum()).collect();
            same(&w("iexscan"), &ex, &pre)?;
            same(&w("iexscan in place"), &exi, &pre)?;
        } else {
            same(&w("iexscan leaves rank 0 alone"), &ex, &vec![-9i64; n])?;
        }
        let want: Vec<i64> = (0..n)
            .map(|i| (0..p).map(|r| val(r, me * n + i)).sum())
            .collect();
        same(&w("ireduce_scatter_block"), &rsb, &want)?;
        same(&w("ireduce_scatter_block in place"), &rsbi[..n], &want)?;
    }
    // Non-commutative operations keep rank order in the nonblocking forms too.
    let m = 50;
    let mm: Vec<[i64; 4]> = (0..m).map(|i| mat(me, i)).collect();
    let mut ex = vec![[0i64; 4]; m];
    let blocks: Vec<[i64; 4]> = (0..m * p).map(|i| mat(me, i)).collect();
    let mut rs = vec![[0i64; 4]; m];
    braid::request::scope(|scope| -> Check {
        let a = comm
            .immediate_exclusive_scan_into(scope, &mm[..], &mut ex[..], matop())
            .or_fail(w("iexscan matop"))?;
        let b = comm
            .immediate_reduce_scatter_block_into(scope, &blocks[..], &mut rs[..], matop())
            .or_fail(w("ireduce_scatter_block matop"))?;
        b.wait().or_fail(w("ireduce_scatter_block matop"))?;
        a.wait().or_fail(w("iexscan matop")).map(drop)
    })?;
    if me > 0 {
        let pre: Vec<[i64; 4]> = (0..m)
            .map(|i| (1..me).fold(mat(0, i), |a, r| matmul(a, mat(r, i))))
            .collect();
        same(&w("iexscan non-commutative"), &ex, &pre)?;
    }
    let want: Vec<[i64; 4]> = (0..m)
        .map(|i| (1..p).fold(mat(0, me * m + i), |a, r| matmul(a, mat(r, me * m + i))))
        .collect();
    same(&w("ireduce_scatter_block non-commutative"), &rs, &want)
}

/// The nonblocking v-forms (gatherv, scatterv, allgatherv, alltoallv; plain and in place),
/// outstanding together, against the reference; blocking in-place v-forms too.
fn nonblocking_varcount(comm: &SimpleCommunicator, w: &dyn Fn(&str) -> String) -> Check {
    let p = comm.size() as usize;
    let me = comm.rank() as usize;
    // Rank r contributes r+1 elements (zero for the first on odd sizes), one gap after each.
    let cnt = |r: usize| if p % 2 == 1 && r == 0 { 0 } else { r + 1 };
    let counts: Vec<i32> = (0..p).map(|r| cnt(r) as i32).collect();
    let displs: Vec<i32> = (0..p)
        .map(|r| (0..r).map(|q| cnt(q) as i32 + 1).sum())
        .collect();
    let total = (0..p).map(|r| cnt(r) + 1).sum::<usize>();
    let mine: Vec<i64> = (0..cnt(me)).map(|i| val(me, i)).collect();
    // Where this rank's block sits in a gathered buffer.
    let mine_at = displs[me] as usize;
    let mut want = vec![-1i64; total];
    for r in 0..p {
        for i in 0..cnt(r) {
            want[displs[r] as usize + i] = val(r, i);
        }
    }
    // Alltoallv with symmetric counts (r + j) % 3, so that the in-place form applies too.
    let ac: Vec<i32> = (0..p).map(|j| ((me + j) % 3) as i32).collect();
    let ad: Vec<i32> = (0..p).map(|j| (0..j).map(|q| ac[q]).sum()).collect();
    let alen = ac.iter().sum::<i32>() as usize;
    let abuf: Vec<i64> = (0..alen).map(|k| val(me, k)).collect();
    let awant: Vec<i64> = (0..p)
        .flat_map(|r| {
            let off: usize = (0..me).map(|q| (r + q) % 3).sum();
            (0..(r + me) % 3).map(move |i| val(r, off + i))
        })
        .collect();
    for root in [p - 1, p / 2] {
        let w = |what: &str| w(&format!("{what} root {root}"));
        let rp = comm.process_at_rank(root as i32);
        let at_root = me == root;
        let mut g = vec![-1i64; total];
        let mut gi = vec![-1i64; total];
        if at_root {
            gi[mine_at..mine_at + mine.len()].copy_from_slice(&mine);
        }
        let mut s = vec![0i64; cnt(me)];
        let mut ag = vec![-1i64; total];
        let mut agi = vec![-1i64; total];
        agi[mine_at..mine_at + mine.len()].copy_from_slice(&mine);
        let mut ar = vec![0i64; alen];
        let mut ari = abuf.clone();
        {
            let mut gp = PartitionMut::new(&mut g[..], counts.clone(), displs.clone());
            let mut gip = PartitionMut::new(&mut gi[..], counts.clone(), displs.clone());
            let sp = Partition::new(&want[..], counts.clone(), displs.clone());
            let mut agp = PartitionMut::new(&mut ag[..], counts.clone(), displs.clone());
            let mut agip = PartitionMut::new(&mut agi[..], counts.clone(), displs.clone());
            let asp = Partition::new(&abuf[..], ac.clone(), ad.clone());
            let mut arp = PartitionMut::new(&mut ar[..], ac.clone(), ad.clone());
            let mut arip = PartitionMut::new(&mut ari[..], ac.clone(), ad.clone());
            let mut sv = vec![0i64; cnt(me)];
            braid::request::scope(|scope| -> Check {
                let mut reqs = Vec::new();
                if at_root {
                    reqs.push((
                        "igatherv",
                        rp.immediate_gather_varcount_into_root(scope, &mine[..], &mut gp)
                            .or_fail(w("igatherv"))?,
                    ));
                    reqs.push((
                        "igatherv in place",
                        rp.immediate_gather_varcount_in_place_root(scope, &mut gip)
                            .or_fail(w("igatherv in place"))?,
                    ));
                    reqs.push((
                        "iscatterv",
                        rp.immediate_scatter_varcount_into_root(scope, &sp, &mut s[..])
                            .or_fail(w("iscatterv"))?,
                    ));
                    reqs.push((
                        "iscatterv in place",
                        rp.immediate_scatter_varcount_in_place_root(scope, &sp)
                            .or_fail(w("iscatterv in place"))?,
                    ));
                } else {
                    reqs.push((
                        "igatherv",
                        rp.immediate_gather_varcount_into(scope, &mine[..])
                            .or_fail(w("igatherv"))?,
                    ));
                    reqs.push((
                        "igatherv in place",
                        rp.immediate_gather_varcount_into(scope, &mine[..])
                            .or_fail(w("igatherv (root in place)"))?,
                    ));
                    reqs.push((
                        "iscatterv",
                        rp.immediate_scatter_varcount_into(scope, &mut s[..])
                            .or_fail(w("iscatterv"))?,
                    ));
                    reqs.push((
                        "iscatterv in place",
                        rp.immediate_scatter_varcount_into(scope, &mut sv[..])
                            .or_fail(w("iscatterv (root in place)"))?,
                    ));
                }
                reqs.push((
                    "iallgatherv",
                    comm.immediate_all_gather_varcount_into(scope, &mine[..], &mut agp)
                        .or_fail(w("iallgatherv"))?,
                ));
                reqs.push((
                    "iallgatherv in place",
                    comm.immediate_all_gather_varcount_in_place(scope, &mut agip)
                        .or_fail(w("iallgatherv in place"))?,
                ));
                reqs.push((
                    "ialltoallv",
                    comm.immediate_all_to_all_varcount_into(scope, &asp, &mut arp)
                        .or_fail(w("ialltoallv"))?,
                ));
                reqs.push((
                    "ialltoallv in place",
                    comm.immediate_all_to_all_varcount_in_place(scope, &mut arip)
                        .or_fail(w("ialltoallv in place"))?,
                ));
                complete_shuffled(reqs, me, &w)
            })?;
            if !at_root {
                same(&w("iscatterv (root in place)"), &sv, &mine)?;
            }
        }
        if at_root {
            same(&w("igatherv"), &g, &want)?;
            same(&w("igatherv in place"), &gi, &want)?;
        }
        same(&w("iscatterv"), &s, &mine)?;
        same(&w("iallgatherv"), &ag, &want)?;
        same(&w("iallgatherv in place"), &agi, &want)?;
        same(&w("ialltoallv"), &ar, &awant)?;
        same(&w("ialltoallv in place"), &ari, &awant)?;
        // The blocking in-place v-forms.
        let mut o = vec![-1i64; total];
        if at_root {
            o[mine_at..mine_at + mine.len()].copy_from_slice(&mine);
            rp.gather_varcount_in_place_root(&mut PartitionMut::new(
                &mut o[..],
                counts.clone(),
                displs.clone(),
            ))
            .or_fail(w("gatherv in place"))?;
            same(&w("gatherv in place"), &o, &want)?;
            rp.scatter_varcount_in_place_root(&Partition::new(
                &want[..],
                counts.clone(),
                displs.clone(),
            ))
            .or_fail(w("scatterv in place"))?;
        } else {
            rp.gather_varcount_into(&mine[..])
                .or_fail(w("gatherv (root in place)"))?;
            let mut s = vec![0i64; cnt(me)];
            rp.scatter_varcount_into(&mut s[..])
                .or_fail(w("scatterv (root in place)"))?;
            same(&w("scatterv (root in place)"), &s, &mine)?;
        }
        let mut o = vec![-1i64; total];
        o[mine_at..mine_at + mine.len()].copy_from_slice(&mine);
        comm.all_gather_varcount_in_place(&mut PartitionMut::new(
            &mut o[..],
            counts.clone(),
            displs.clone(),
        ))
        .or_fail(w("allgatherv in place"))?;
        same(&w("allgatherv in place"), &o, &want)?;
        let mut o = abuf.clone();
        comm.all_to_all_varcount_in_place(&mut PartitionMut::new(
            &mut o[..],
            ac.clone(),
            ad.clone(),
        ))
        .or_fail(w("alltoallv in place"))?;
        same(&w("alltoallv in place"), &o, &awant)?;
    }
    Ok(())
}

/// `MPI_Reduce_scatter` with varying counts (zeros included), blocking and nonblocking, plain
/// and in place, commutative and not.
fn reduce_scatter_varcount(comm: &SimpleCommunicator, w: &dyn Fn(&str) -> String) -> Check {
    let p = comm.size() as usize;
    let me = comm.rank() as usize;
    for scale in [0usize, 1, 700] {
        let w = |what: &str| w(&format!("{what} scale {scale}"));
        // Rank r gets (r * scale + r) % 5 * scale elements (several zero blocks).
        let cnt = |r: usize| (r * 3 + 1) % 4 * scale;
        let counts: Vec<i32> = (0..p).map(|r| cnt(r) as i32).collect();
        let total: usize = (0..p).map(cnt).sum();
        let off: usize = (0..me).map(cnt).sum();
        let input: Vec<i64> = (0..total).map(|i| val(me, i)).collect();
        let want: Vec<i64> = (0..cnt(me))
            .map(|i| (0..p).map(|r| val(r, off + i)).sum())
            .collect();
        let mut out = vec![0i64; cnt(me)];
        comm.reduce_scatter_varcount_into(
            &input[..],
            &mut out[..],
            &counts,
            SystemOperation::sum(),
        )
        .or_fail(w("reduce_scatter"))?;
        same(&w("reduce_scatter"), &out, &want)?;
        let mut inp = input.clone();
        comm.reduce_scatter_varcount_in_place(&mut inp[..], &counts, SystemOperation::sum())
            .or_fail(w("reduce_scatter in place"))?;
        same(&w("reduce_scatter in place"), &inp[..cnt(me)], &want)?;
        let mm: Vec<[i64; 4]> = (0..total).map(|i| mat(me, i)).collect();
        let mwant: Vec<[i64; 4]> = (0..cnt(me))
            .map(|i| (1..p).fold(mat(0, off + i), |a, r| matmul(a, mat(r, off + i))))
            .collect();
        let mut iout = vec![0i64; cnt(me)];
        let mut iinp = input.clone();
        let mut mout = vec![[0i64; 4]; cnt(me)];
        braid::request::scope(|scope| -> Check {
            let a = comm
                .immediate_reduce_scatter_varcount_into(
                    scope,
                    &input[..],
                    &mut iout[..],
                    &counts,
                    SystemOperation::sum(),
                )
                .or_fail(w("ireduce_scatter"))?;
            let b = comm
                .immediate_reduce_scatter_varcount_in_place(
                    scope,
                    &mut iinp[..],
                    &counts,
                    SystemOperation::sum(),
                )
                .or_fail(w("ireduce_scatter in place"))?;
            let c = comm
                .immediate_reduce_scatter_varcount_into(
                    scope,
                    &mm[..],
                    &mut mout[..],
                    &counts,
                    matop(),
                )
                .or_fail(w("ireduce_scatter matop"))?;
            complete_shuffled(
                vec![
                    ("ireduce_scatter", a),
                    ("ireduce_scatter in place", b),
                    ("ireduce_scatter matop", c),
                ],
                me,
                &w,
            )
        })?;
        same(&w("ireduce_scatter"), &iout, &want)?;
        same(&w("ireduce_scatter in place"), &iinp[..cnt(me)], &want)?;
        same(&w("ireduce_scatter non-commutative"), &mout, &mwant)?;
        let mut mb = vec![[0i64; 4]; cnt(me)];
        comm.reduce_scatter_varcount_into(&mm[..], &mut mb[..], &counts, matop())
            .or_fail(w("reduce_scatter matop"))?;
        same(&w("reduce_scatter non-commutative"), &mb, &mwant)?;
    }
    Ok(())
}

/// A layout for `MPI_Alltoallw` blocks: `kind` 0 is `count` contiguous f64s; 1 is `count`
/// elements of a vector type (2 f64 at stride 2, extent 3 f64); 2 is one element of a vector
/// type of `count` f64 at stride 2. Returns the block description at element offset `off` and
/// the element offsets (in f64) that hold its data, in typemap order.
fn w_layout(kind: usize, count: usize, off: usize) -> (TypedBlock, Vec<usize>) {
    let f64t = Datatype::primitive(Primitive::F64);
    match kind {
        1 => {
            let mut t = Datatype::vector(2, 1, 2, &f64t);
            t.commit();
            let at = (0..count)
                .flat_map(|e| [off + 3 * e, off + 3 * e + 2])
                .collect();
            (TypedBlock::new(count, off * 8, t), at)
        }
        2 if count > 0 => {
            let mut t = Datatype::vector(count, 1, 2, &f64t);
            t.commit();
            let at = (0..count).map(|e| off + 2 * e).collect();
            (TypedBlock::new(1, off * 8, t), at)
        }
        _ => (
            TypedBlock::new(count, off * 8, f64t),
            (off..off + count).collect(),
        ),
    }
}

/// Blocks of one side of an alltoallw: `spec(j) = (kind, count)` for peer j, laid out one
/// after another with a gap of one f64 after each; returns them, their data offsets and the
/// buffer length in f64s.
fn w_blocks(
    p: usize,
    spec: impl Fn(usize) -> (usize, usize),
) -> (Vec<TypedBlock>, Vec<Vec<usize>>, usize) {
    let mut off = 0;
    let (mut blocks, mut ats) = (Vec::new(), Vec::new());
    for j in 0..p {
        let (kind, count) = spec(j);
        let (b, at) = w_layout(kind, count, off);
        off = at.iter().max().map_or(off, |m| m + 1) + 1;
        blocks.push(b);
        ats.push(at);
    }
    (blocks, ats, off)
}

/// `MPI_Alltoallw` and `MPI_Ialltoallw` with contiguous and strided datatypes on both sides
/// (packed and unpacked through temporaries), plain and in place, against the reference.
fn alltoallw(comm: &SimpleCommunicator, w: &dyn Fn(&str) -> String) -> Check {
    let p = comm.size() as usize;
    let me = comm.rank() as usize;
    // Rank i sends j the f64s of a block of kind (i + j) % 2 (0 or 1) with (i + 2 j) % 3
    // elements; rank j receives them as contiguous f64s from even i, strided from odd i.
    let values = |i: usize, j: usize| ((i + 2 * j) % 3) * if (i + j) % 2 == 1 { 2 } else { 1 };
    let send_of = |i: usize| w_blocks(p, |j| ((i + j) % 2, (i + 2 * j) % 3));
    let (sblocks, _, slen) = send_of(me);
    let sbuf: Vec<f64> = (0..slen).map(|k| (me * 1000 + k) as f64).collect();
    let (rblocks, rat, rlen) = w_blocks(p, |i| (if i % 2 == 1 { 2 } else { 0 }, values(i, me)));
    let mut want = vec![-1.0f64; rlen];
    for i in 0..p {
        let (_, iat, _) = send_of(i);
        for (t, &src) in iat[me].iter().enumerate() {
            want[rat[i][t]] = (i * 1000 + src) as f64;
        }
    }
    let mut rbuf = vec![-1.0f64; rlen];
    comm.all_to_all_w_into(&sbuf[..], &sblocks, &mut rbuf[..], &rblocks)
        .or_fail(w("alltoallw"))?;
    same(&w("alltoallw"), &rbuf, &want)?;
    // In place: the same (symmetric) description on both sides.
    let sym = |a: usize, b: usize| ((a + b) % 2 + (a + b) % 3 % 2, (a * b + a + b) % 3);
    let (iblocks, iat, ilen) = w_blocks(p, |j| sym(me, j));
    let ibuf: Vec<f64> = (0..ilen).map(|k| (me * 1000 + k) as f64).collect();
    let mut iwant = ibuf.clone();
    for i in 0..p {
        let (_, peer_at, _) = w_blocks(p, |j| sym(i, j));
        for (t, &src) in peer_at[me].iter().enumerate() {
            iwant[iat[i][t]] = (i * 1000 + src) as f64;
        }
    }
    let mut inplace = ibuf.clone();
    comm.all_to_all_w_in_place(&mut inplace[..], &iblocks)
        .or_fail(w("alltoallw in place"))?;
    same(&w("alltoallw in place"), &inplace, &iwant)?;
    // Both nonblocking, outstanding together.
    let mut rbuf2 = vec![-1.0f64; rlen];
    let mut inplace2 = ibuf.clone();
    braid::request::scope(|scope| -> Check {
        let a = comm
            .immediate_all_to_all_w_into(scope, &sbuf[..], &sblocks, &mut rbuf2[..], &rblocks)
            .or_fail(w("ialltoallw"))?;
        let b = comm
            .immediate_all_to_all_w_in_place(scope, &mut inplace2[..], &iblocks)
            .or_fail(w("ialltoallw in place"))?;
        complete_shuffled(vec![("ialltoallw", a), ("ialltoallw in place", b)], me, w)
    })?;
    same(&w("ialltoallw"), &rbuf2, &want)?;
    same(&w("ialltoallw in place"), &inplace2, &iwant)?;
    // A block outside the buffer is refused locally.
    let mut bad = rblocks.clone();
    bad[0].displ = rlen * 8 + 8;
    match comm.all_to_all_w_into(&sbuf[..], &sblocks, &mut rbuf[..], &bad) {
        Err(e) if e.mpi_class() == "MPI_ERR_COUNT" => Ok(()),
        other => Err(w(&format!("alltoallw block outside the buffer: {other:?}"))),
    }
}

/// Nonblocking collectives advance inside any call that drives the engine, not only inside
/// waits and tests on them: the last rank tells rank 0 that its nonblocking barrier completed,
/// and rank 0 learns it by probing (blocking, then polling), without touching its own request.
/// Rank 0 starts first (the others sleep), so with 3 or more ranks the barrier needs rank 0 to
/// post its later rounds from inside the probe: a probe that did not advance it would hang.
fn progress(comm: &SimpleCommunicator, w: &dyn Fn(&str) -> String) -> Check {
    let p = comm.size() as usize;
    let me = comm.rank() as usize;
    if p < 2 {
        return Ok(());
    }
    let last = comm.process_at_rank(p as i32 - 1);
    let first = comm.process_at_rank(0);
    for (tag, polling) in [(77, false), (78, true)] {
        let what = if polling { "immediate_probe" } else { "probe" };
        comm.barrier().or_fail(w("barrier"))?;
        if me != 0 {
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
        let b = comm.immediate_barrier().or_fail(w("ibarrier"))?;
        if me == 0 {
            if polling {
                while last
                    .immediate_probe_with_tag(tag)
                    .or_fail(w(what))?
                    .is_none()
                {}
            } else {
                last.probe_with_tag(tag).or_fail(w(what))?;
            }
            last.receive_into_with_tag(&mut [0u8][..], tag)
                .or_fail(w(&format!("receive after {what}")))?;
            b.wait().or_fail(w(&format!("ibarrier driven by {what}")))?;
        } else {
            b.wait().or_fail(w("ibarrier"))?;
            if me == p - 1 {
                first.send_with_tag(&[1u8][..], tag).or_fail(w("send"))?;
            }
        }
    }
    Ok(())
}

/// Misuse of the nonblocking forms: each is refused with its MPI error class before anything
/// is sent, so no rank hangs.
fn misuse_immediate(comm: &SimpleCommunicator, w: &dyn Fn(&str) -> String) -> Check {
    let p = comm.size() as usize;
    let me = comm.rank() as usize;
    let class = |what: &str, r: Result<(), Error>, want: &str| -> Check {
        match r {
            Err(e) if e.mpi_class() == want => Ok(()),
            Err(e) => Err(w(&format!("{what}: {e:?} is not {want}"))),
            Ok(()) => Err(w(&format!("{what}: succeeded, want {want}"))),
        }
    };
    use braid::request::scope;
    let a = [1i64, 2, 3];
    let mut b = vec![0i64; 3 * p + 1];
    let root = comm.process_at_rank(0);
    if me == 0 {
        class(
            "igather non-root form at the root",
            scope(|sc| root.immediate_gather_into(sc, &a[..]).map(drop)),
            "MPI_ERR_ARG",
        )?;
        class(
            "igather root buffer size",
            scope(|sc| {
                root.immediate_gather_into_root(sc, &a[..], &mut b[..])
                    .map(drop)
            }),
            "MPI_ERR_COUNT",
        )?;
    } else {
        class(
            "iscatter root form off the root",
            scope(|sc| {
                root.immediate_scatter_into_root(sc, &a[..], &mut b[..3])
                    .map(drop)
            }),
            "MPI_ERR_ARG",
        )?;
    }
    class(
        "igatherv invalid root",
        scope(|sc| {
            comm.process_at_rank(p as i32)
                .immediate_gather_varcount_into(sc, &a[..])
                .map(drop)
        }),
        "MPI_ERR_ROOT",
    )?;
    class(
        "ireduce_scatter counts length",
        scope(|sc| {
            comm.immediate_reduce_scatter_varcount_into(
                sc,
                &a[..],
                &mut b[..1],
                &vec![1; p + 1],
                SystemOperation::sum(),
            )
            .map(drop)
        }),
        "MPI_ERR_COUNT",
    )?;
    class(
        "ireduce_scatter negative count",
        scope(|sc| {
            comm.immediate_reduce_scatter_varcount_into(
                sc,
                &a[..],
                &mut b[..1],
                &vec![-1; p],
                SystemOperation::sum(),
            )
            .map(drop)
        }),
        "MPI_ERR_COUNT",
    )?;
    // 3 elements never make p blocks of 2.
    class(
        "ireduce_scatter_block send length",
        scope(|sc| {
            comm.immediate_reduce_scatter_block_into(
                sc,
                &a[..],
                &mut b[..2],
                SystemOperation::sum(),
            )
            .map(drop)
        }),
        "MPI_ERR_COUNT",
    )?;
    let f = [1.0f64];
    let mut g = [0.0f64];
    class(
        "iexscan band on f64",
        scope(|sc| {
            comm.immediate_exclusive_scan_into(
                sc,
                &f[..],
                &mut g[..],
                SystemOperation::bitwise_and(),
            )
            .map(drop)
        }),
        "MPI_ERR_OP",
    )?;
    let mut part = PartitionMut::new(&mut b[..], vec![2; p], vec![3 * p as i32; p]);
    class(
        "iallgatherv block outside the buffer",
        scope(|sc| {
            comm.immediate_all_gather_varcount_into(sc, &a[..2], &mut part)
                .map(drop)
        }),
        "MPI_ERR_COUNT",
    )?;
    comm.barrier().or_fail(w("barrier after immediate misuse"))
}

/// A non-contiguous partition buffer is refused with `MPI_ERR_TYPE` by every v-form, blocking,
/// in place and immediate alike, before any communication: gatherv and scatterv at the root
/// (rank 0; the other ranks take no part), allgatherv and alltoallv everywhere.
fn varcount_views(comm: &SimpleCommunicator, w: &dyn Fn(&str) -> String) -> Check {
    use braid::request::scope;
    let p = comm.size() as usize;
    let root = comm.process_at_rank(0);
    let class = |what: &str, r: Result<(), Error>| -> Check {
        match r {
            Err(e) if e.mpi_class() == "MPI_ERR_TYPE" => Ok(()),
            Err(e) => Err(w(&format!("{what}: {e:?} is not MPI_ERR_TYPE"))),
            Ok(()) => Err(w(&format!("{what}: succeeded, want MPI_ERR_TYPE"))),
        }
    };
    // Column 0 of a 2 x 5 row-major matrix of f64.
    let mut col = Datatype::vector(2, 1, 5, &Datatype::primitive(Primitive::F64));
    col.commit();
    let (counts, displs) = (vec![0; p], vec![0; p]);
    let mine = [0.0f64; 0];
    let mut m = [0.0f64; 10];
    let mut got = [0.0f64; 0];
    let mut plain = [0.0f64; 1];
    {
        let mut view = MutView::with_count_and_datatype(&mut m[..], 1, &col).or_fail("mutview")?;
        let mut part = PartitionMut::new(&mut view, counts.clone(), displs.clone());
        if comm.rank() == 0 {
            class(
                "gatherv into a view",
                root.gather_varcount_into_root(&mine[..], &mut part),
            )?;
            class(
                "gatherv in place into a view",
                root.gather_varcount_in_place_root(&mut part),
            )?;
            class(
                "igatherv into a view",
                scope(|sc| {
                    root.immediate_gather_varcount_into_root(sc, &mine[..], &mut part)
                        .map(drop)
                }),
            )?;
        }
        class(
            "allgatherv into a view",
            comm.all_gather_varcount_into(&mine[..], &mut part),
        )?;
        class(
            "allgatherv in place into a view",
            comm.all_gather_varcount_in_place(&mut part),
        )?;
        class(
            "iallgatherv into a view",
            scope(|sc| {
                comm.immediate_all_gather_varcount_into(sc, &mine[..], &mut part)
                    .map(drop)
            }),
        )?;
        let plain_part = Partition::new(&plain[..], counts.clone(), displs.clone());
        class(
            "alltoallv into a view",
            comm.all_to_all_varcount_into(&plain_part, &mut part),
        )?;
        class(
            "alltoallv in place in a view",
            comm.all_to_all_varcount_in_place(&mut part),
        )?;
    }
    let view = View::with_count_and_datatype(&m[..], 1, &col).or_fail("view")?;
    let part = Partition::new(&view, counts.clone(), displs.clone());
    if comm.rank() == 0 {
        class(
            "scatterv from a view",
            root.scatter_varcount_into_root(&part, &mut got[..]),
        )?;
        class(
            "scatterv in place from a view",
            root.scatter_varcount_in_place_root(&part),
        )?;
        class(
            "iscatterv from a view",
            scope(|sc| {
                root.immediate_scatter_varcount_into_root(sc, &part, &mut got[..])
                    .map(drop)
            }),
        )?;
    }
    let mut plain_part = PartitionMut::new(&mut plain[..], counts, displs);
    class(
        "alltoallv from a view",
        comm.all_to_all_varcount_into(&part, &mut plain_part),
    )?;
    class(
        "ialltoallv from a view",
        scope(|sc| {
            comm.immediate_all_to_all_varcount_into(sc, &part, &mut plain_part)
                .map(drop)
        }),
    )
}

fn misuse(comm: &SimpleCommunicator, w: &dyn Fn(&str) -> String) -> Check {
    let p = comm.size();
    let me = comm.rank();
    let a = [1i64, 2, 3];
    let mut b = [0i64; 2];
    expect_err(
        &w("allreduce length mismatch"),
        comm.all_reduce_into(&a[..], &mut b[..], SystemOperation::sum()),
        |e| matches!(e, Error::UsageCountMismatch { .. }),
    )?;
    let mut c = [0i64; 3];
    expect_err(
        &w("bcast invalid root"),
        comm.process_at_rank(p).broadcast_into(&mut c[..]),
        |e| matches!(e, Error::UsageInvalidRoot { .. }),
    )?;
    expect_err(
        &w("reduce invalid root"),
        comm.process_at_rank(-1)
            .reduce_into(&a[..], SystemOperation::sum()),
        |e| matches!(e, Error::UsageInvalidRoot { .. }),
    )?;
    let f = [1.0f64];
    let mut g = [0.0f64];
    expect_err(
        &w("band on f64"),
        comm.all_reduce_into(&f[..], &mut g[..], SystemOperation::bitwise_and()),
        |e| matches!(e, Error::UsageOpType { .. }),
    )?;
    let root = comm.process_at_rank(0);
    if me != 0 {
        let mut r = [0i64; 1];
        expect_err(
            &w("reduce_into_root off root"),
            root.reduce_into_root(&a[..], &mut r[..], SystemOperation::sum()),
            |e| matches!(e, Error::UsageArgument(_)),
        )?;
    } else {
        let mut r = vec![0i64; 3 * p as usize + 1];
        expect_err(
            &w("gather root buffer size"),
            root.gather_into_root(&a[..], &mut r[..]),
            |e| matches!(e, Error::UsageCountMismatch { .. }),
        )?;
    }
    varcount_views(comm, w)?;
    // Counts that differ between ranks: every rank gets an error, none hangs.
    if p > 1 {
        let n = if me == 0 { 3 } else { 4 };
        let x = vec![1i64; n];
        let mut y = vec![0i64; n];
        expect_err(
            &w("allreduce counts differ across ranks"),
            comm.all_reduce_into(&x[..], &mut y[..], SystemOperation::sum()),
            |e| {
                matches!(
                    e,
                    Error::UsageCountMismatch { .. } | Error::UsageTruncated { .. }
                )
            },
        )
        .or_else(|e| if me > 0 && p > 2 { Ok(()) } else { Err(e) })?;
    }
    comm.barrier().or_fail(w("barrier after misuse"))
}

fn communicators(world: &SimpleCommunicator) -> Check {
    let p = world.size();
    let me = world.rank();
    let wg = world.group();
    ensure(wg.size() == p && wg.rank() == Some(me), || {
        "world group".into()
    })?;
    // Dup.
    let dup = world.duplicate().or_fail("dup")?;
    ensure(
        dup.compare(world) == CommunicatorRelation::Congruent,
        || "dup not congruent".into(),
    )?;
    ensure(
        world.compare(world) == CommunicatorRelation::Identical,
        || "world not identical".into(),
    )?;
    // Split by parity, reversed order by key.
    let half = world
        .split_by_color_with_key(Color::with_value(me % 2), -me)
        .or_fail("split")?
        .ok_or("split gave none")?;
    let mates: Vec<i32> = (0..p).filter(|r| r % 2 == me % 2).rev().collect();
    ensure(half.size() as usize == mates.len(), || "split size".into())?;
    ensure(
        half.rank() == mates.iter().position(|r| *r == me).unwrap_or(99) as i32,
        || format!("split rank {}", half.rank()),
    )?;
    let hg = half.group();
    ensure(
        (0..half.size()).all(|r| hg.translate_rank(r, &wg) == Some(mates[r as usize])),
        || "split group translation".into(),
    )?;
    ensure(
        half.compare(world)
            == if p == 1 {
                CommunicatorRelation::Similar
            } else {
                CommunicatorRelation::Unequal
            }
            || p == 1,
        || "split compare".into(),
    )?;
    // Point-to-point status on a split communicator gives its ranks.
    if half.size() > 1 {
        let hr = half.rank();
        let hs = half.size();
        let next = half.process_at_rank((hr + 1) % hs);
        let prev = half.process_at_rank((hr + hs - 1) % hs);
        let (v, st) = braid::point_to_point::send_receive_into_with_tags(
            &[hr][..],
            &next,
            5,
            &mut [0i32][..],
            &prev,
            Some(5),
        )
        .map(|s| (0, s))
        .or_fail("sendrecv on split")?;
        let _ = v;
        ensure(st.source() == (hr + hs - 1) % hs, || {
            format!("status source {} on split", st.source())
        })?;
        let any = half.any_process();
        let mut x = [0i32];
        let st = braid::request::scope(|scope| -> Result<braid::Status, Error> {
            let req = any.immediate_receive_into_with_tag(scope, &mut x[..], 6)?;
            next.send_with_tag(&[hr][..], 6)?;
            req.wait()
        })
        .or_fail("irecv on split")?;
        let r = (x[0], st);
        ensure(r.0 == (hr + hs - 1) % hs && r.1.source() == r.0, || {
            format!("any-source status {:?}", r)
        })?;
    }
    // Undefined color.
    let none = world
        .split_by_color(if me == 0 {
            Color::undefined()
        } else {
            Color::with_value(1)
        })
        .or_fail("split undefined")?;
    ensure(none.is_some() == (me != 0), || "undefined color".into())?;
    // Create from a group, in reverse order (collective), and create_group (members only).
    let rev: Vec<i32> = (0..p).rev().filter(|r| r % 3 != 1).collect();
    let g = wg.include(&rev).or_fail("include")?;
    let sub = world.split_by_subgroup_collective(&g).or_fail("create")?;
    ensure(sub.is_some() == (me % 3 != 1), || {
        "create membership".into()
    })?;
    if let Some(sub) = &sub {
        ensure(
            sub.rank() == rev.iter().position(|r| *r == me).unwrap_or(0) as i32,
            || "create rank".into(),
        )?;
        ensure(sub.group().compare(&g) == GroupRelation::Identical, || {
            "create group".into()
        })?;
        let sub2 = world.split_by_subgroup(&g, 3).or_fail("create_group")?;
        ensure(sub2.compare(sub) == CommunicatorRelation::Congruent, || {
            "create_group congruent".into()
        })?;
        collectives("create_group", &sub2, false)?;
    }
    let shared = world.split_shared().or_fail("split_shared")?;
    let host = world.processor_name().or_fail("name")?;
    let _ = host;
    // Cartesian topology.
    let mut dims = [0, 0];
    dims_create(p, &mut dims).or_fail("dims_create")?;
    let cart = CartesianCommunicator::new(world, &dims, &[true, false], false)
        .or_fail("cart")?
        .ok_or("cart none")?;
    let c = cart.coordinates();
    ensure(
        cart.coordinates_to_rank(&c).or_fail("cart rank")? == cart.rank(),
        || "cart coords".into(),
    )?;
    let (src, dst) = cart.shift(0, 1).or_fail("shift")?;
    let (s, d) = (src.ok_or("periodic src")?, dst.ok_or("periodic dst")?);
    let mut got = [0i32];
    braid::point_to_point::send_receive_into(
        &[cart.rank()][..],
        &cart.process_at_rank(d),
        &mut got[..],
        &cart.process_at_rank(s),
    )
    .or_fail("cart exchange")?;
    ensure(got[0] == s, || "cart shift exchange".into())?;
    let (_, up) = cart.shift(1, 1).or_fail("shift 1")?;
    ensure(up.is_some() == (c[1] + 1 < dims[1]), || {
        "non-periodic shift".into()
    })?;
    cart.barrier().or_fail("cart barrier")?;
    // Collectives on the derived communicators.
    collectives("dup", &dup, false)?;
    collectives("split", &half, false)?;
    collectives("shared", &shared, false)?;
    // Many communicators: contexts are freed on drop and reused.
    for i in 0..50 {
        let d = dup.duplicate().or_fail(format!("dup {i}"))?;
        d.barrier().or_fail("barrier on dup")?;
    }
    Ok(())
}

fn datatypes(world: &SimpleCommunicator) -> Check {
    let p = world.size();
    let me = world.rank();
    // A column of a 4x5 row-major matrix, sent as a vector type.
    let mut col = Datatype::vector(4, 1, 5, &Datatype::primitive(Primitive::F64));
    col.commit();
    ensure(col.size() == 32 && col.extent() == 8 * 16, || {
        format!("vector extent {}", col.extent())
    })?;
    let m: Vec<f64> = (0..20).map(f64::from).collect();
    if p > 1 {
        if me == 0 {
            world
                .process_at_rank(1)
                .send(&View::with_count_and_datatype(&m[2..], 1, &col).or_fail("view")?)
                .or_fail("send column")?;
        } else if me == 1 {
            let mut r = vec![0.0f64; 20];
            let st = world
                .process_at_rank(0)
                .receive_into(
                    &mut MutView::with_count_and_datatype(&mut r[1..], 1, &col)
                        .or_fail("mutview")?,
                )
                .or_fail("receive column")?;
            ensure(
                st.count_with(&col) == Some(1) && st.elements_with(&col) == Some(4),
                || "count with type".into(),
            )?;
            let want: Vec<f64> = (0..20)
                .map(|i| {
                    if i % 5 == 1 && i < 20 {
                        (i + 1) as f64
                    } else {
                        0.0
                    }
                })
                .collect();
            same("received column", &r, &want)?;
        }
        // Derived struct with the derive macro.
        let parts: Vec<Particle> = (0..3)
            .map(|i| Particle {
                x: i as f64,
                y: -1.0,
                id: i,
                kind: 7,
                flag: 1,
            })
            .collect();
        if me == 0 {
            world
                .process_at_rank(1)
                .send(&parts[..])
                .or_fail("send particles")?;
        } else if me == 1 {
            let (v, _) = world
                .process_at_rank(0)
                .receive_vec::<Particle>()
                .or_fail("receive particles")?;
            same("particles", &v, &parts)?;
        }
    }
    let dt = <Particle as Equivalence>::equivalent_datatype();
    ensure(dt.size() == 32 && dt.extent() == 32, || {
        "particle datatype".into()
    })?;
    // Broadcast into a non-contiguous view.
    let mut b = [0.0f64; 20];
    if me == 0 {
        b.copy_from_slice(&m);
    }
    world
        .process_at_rank(0)
        .broadcast_into(
            &mut MutView::with_count_and_datatype(&mut b[..], 1, &col).or_fail("bview")?,
        )
        .or_fail("bcast view")?;
    ensure((0..4).all(|r| b[r * 5] == m[r * 5]), || "bcast view".into())?;
    // Uncommitted types are refused.
    let raw = Datatype::vector(2, 1, 2, &Datatype::primitive(Primitive::I32));
    ensure(
        matches!(
            View::with_count_and_datatype(&[1i32, 2, 3][..], 1, &raw),
            Err(Error::UsageDatatype(_))
        ),
        || "uncommitted accepted".into(),
    )?;
    Ok(())
}

fn main() {
    let big = std::env::args().any(|a| a == "big");
    run_rank("coll_all", |world| {
        collectives("world", world, big)?;
        communicators(world)?;
        datatypes(world)?;
        if world.rank() == 0 {
            println!("{}", braid::collective::info().lines().next().unwrap_or(""));
        }
        Ok(())
    });
}
