//! The shared-memory collective component (`braid::collective`, module `shm`) under stress:
//! long runs of barrier, bcast, reduce (every root, in place, non-commutative), allreduce,
//! allgather, alltoall, gather, scatter, gatherv and scatterv (plain and in place) with sizes
//! alternating across the slot, inline, single-copy and split boundaries, several
//! communicators used interleaved (dup, splits, freed and re-made), results checked against a
//! sequential reference and bitwise identical on every rank. Prints `digest <hex>` (rank 0), a
//! hash of every result, so that runs with the component forced off and on can be compared,
//! and `job <id>` so that the caller can look for left-over segments.
//!
//! While it runs it also checks `/proc/self/maps`: with the component on, every communicator
//! that ran a collective maps one region `/dev/shm/braid-<job>-coll-...`, already deleted;
//! the mapping goes when the communicator is freed. When the world spans several hosts (or
//! pretend ones, `BRAID_COLL_FAKE_HOSTS`) its blocking barrier, bcast, reduce and allreduce
//! are two-level, and the one region each rank maps is that of its host's communicator (no
//! region on a host of one rank); the interleaved communicators are left out. `coll_shm quick` runs a shorter
//! sequence (oversubscribed jobs); `coll_shm die` kills a rank while the others wait for it.

use braid::collective::{Partition, PartitionMut, SystemOperation, UserOperation};
use braid::traits::*;
use braid::{Color, SimpleCommunicator};
use braid_tests::{Check, OrFail, ensure, matmul, run_rank};

/// FNV-1a over the results.
#[derive(Debug)]
struct Digest(u64);

impl Digest {
    fn add(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn add_i64(&mut self, v: &[i64]) {
        for x in v {
            self.add(&x.to_le_bytes());
        }
    }
}

fn val(rank: usize, i: usize, round: usize) -> i64 {
    ((rank * 7919 + i * 104_729 + round * 31) % 2001) as i64 - 1000
}

fn same<T: PartialEq + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) -> Check {
    ensure(got.len() == want.len(), || {
        format!("{what}: {} elements, want {}", got.len(), want.len())
    })?;
    match got.iter().zip(want).position(|(g, w)| g != w) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}: element {i} of {} is {:?}, want {:?}",
            got.len(),
            got[i],
            want[i]
        )),
    }
}

fn shm_on() -> bool {
    !matches!(
        std::env::var("BRAID_COLL_SHM").as_deref(),
        Ok("0" | "off" | "no" | "false")
    ) && !matches!(std::env::var("BRAID_SHM").as_deref(), Ok("0" | "off"))
}

fn slot() -> usize {
    std::env::var("BRAID_COLL_SHM_SLOT")
        .ok()
        .and_then(|v| {
            let v = v.to_ascii_lowercase();
            match v.strip_suffix('k') {
                Some(k) => k.parse::<usize>().ok().map(|k| k * 1024),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(32 * 1024)
}

/// Region mappings of this process (`/dev/shm/braid-<job>-coll-*`), and whether every one is
/// already unlinked.
fn regions() -> (usize, bool) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let job = std::env::var("BRAID_JOB_ID").unwrap_or_default();
    let prefix = format!("/dev/shm/braid-{job}-coll-");
    let mut names: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.find(&prefix).map(|i| &l[i..]))
        .collect();
    names.sort_unstable();
    names.dedup();
    let deleted = names.iter().all(|n| n.ends_with("(deleted)"));
    (names.len(), deleted)
}

/// `BRAID_COLL_FAKE_HOSTS` (0: unset).
fn fake_hosts() -> usize {
    std::env::var("BRAID_COLL_FAKE_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Number of world ranks on this rank's host as the collectives see it (pretend hosts
/// included). Collective: on real hosts, a split of the world by host.
fn host_mates(world: &SimpleCommunicator) -> Result<usize, String> {
    let (p, me) = (world.size() as usize, world.rank() as usize);
    Ok(match fake_hosts() {
        0 => world.split_shared().or_fail("split by host")?.size() as usize,
        k => (0..p).filter(|w| w * k / p == me * k / p).count(),
    })
}

/// One round of every collective at `n` i64 elements on `comm`.
fn round(comm: &SimpleCommunicator, n: usize, r: usize, d: &mut Digest, what: &str) -> Check {
    let p = comm.size() as usize;
    let me = comm.rank() as usize;
    let w = |op: &str| format!("{what}: {op} of {n} elements, round {r}");
    let mine: Vec<i64> = (0..n).map(|i| val(me, i, r)).collect();

    let root = r % p;
    let want: Vec<i64> = (0..n).map(|i| val(root, i, r)).collect();
    let mut b = if me == root { want.clone() } else { vec![0; n] };
    comm.process_at_rank(root as i32)
        .broadcast_into(&mut b[..])
        .or_fail(w("bcast"))?;
    same(&w("bcast"), &b, &want)?;
    d.add_i64(&b);

    let sum: Vec<i64> = (0..n).map(|i| (0..p).map(|q| val(q, i, r)).sum()).collect();
    let mut out = vec![0i64; n];
    comm.all_reduce_into(&mine[..], &mut out[..], SystemOperation::sum())
        .or_fail(w("allreduce"))?;
    same(&w("allreduce"), &out, &sum)?;
    d.add_i64(&out);

    let mut inplace = mine.clone();
    comm.all_reduce_in_place(&mut inplace[..], SystemOperation::min())
        .or_fail(w("allreduce in place"))?;
    let min: Vec<i64> = (0..n)
        .map(|i| (0..p).map(|q| val(q, i, r)).min().unwrap_or(0))
        .collect();
    same(&w("allreduce in place"), &inplace, &min)?;
    d.add_i64(&inplace);

    // Floating point: values exact in binary, so every bracketing gives the same sum.
    let f: Vec<f64> = mine.iter().map(|x| *x as f64 * 0.25).collect();
    let mut fo = vec![0.0f64; n];
    comm.all_reduce_into(&f[..], &mut fo[..], SystemOperation::sum())
        .or_fail(w("allreduce f64"))?;
    let fs: Vec<f64> = sum.iter().map(|x| *x as f64 * 0.25).collect();
    same(&w("allreduce f64"), &fo, &fs)?;

    let rroot = (r + 1) % p;
    if me == rroot {
        let mut o = vec![0i64; n];
        comm.process_at_rank(rroot as i32)
            .reduce_into_root(&mine[..], &mut o[..], SystemOperation::sum())
            .or_fail(w("reduce"))?;
        same(&w("reduce"), &o, &sum)?;
        d.add_i64(&o);
    } else {
        comm.process_at_rank(rroot as i32)
            .reduce_into(&mine[..], SystemOperation::sum())
            .or_fail(w("reduce"))?;
    }

    reduce_variants(comm, n, r, d, &w)?;

    let all: Vec<i64> = (0..p)
        .flat_map(|q| (0..n).map(move |i| val(q, i, r)))
        .collect();
    gather_scatter(comm, n, r, &mine, &all, d, &w)?;
    varcount(comm, n, r, d, &w)?;

    let mut ag = vec![0i64; n * p];
    comm.all_gather_into(&mine[..], &mut ag[..])
        .or_fail(w("allgather"))?;
    same(&w("allgather"), &ag, &all)?;
    let mut agi = vec![0i64; n * p];
    agi[me * n..(me + 1) * n].copy_from_slice(&mine);
    comm.all_gather_in_place(&mut agi[..])
        .or_fail(w("allgather in place"))?;
    same(&w("allgather in place"), &agi, &all)?;
    d.add_i64(&ag);

    alltoall(comm, n, r, d, &w)?;
    comm.barrier().or_fail(w("barrier"))
}

/// Alltoall of `n` elements per block, plain and in place: element `i` of the block rank
/// `q` sends to rank `t` is `val(q * p + t, i, r)`.
fn alltoall(
    comm: &SimpleCommunicator,
    n: usize,
    r: usize,
    d: &mut Digest,
    w: &dyn Fn(&str) -> String,
) -> Check {
    let p = comm.size() as usize;
    let me = comm.rank() as usize;
    let blocks = |from: &dyn Fn(usize) -> (usize, usize)| -> Vec<i64> {
        (0..p)
            .flat_map(|b| {
                let (q, t) = from(b);
                (0..n).map(move |i| val(q * p + t, i, r))
            })
            .collect()
    };
    let send = blocks(&|t| (me, t));
    let want = blocks(&|q| (q, me));
    let mut got = vec![0i64; n * p];
    comm.all_to_all_into(&send[..], &mut got[..])
        .or_fail(w("alltoall"))?;
    same(&w("alltoall"), &got, &want)?;
    d.add_i64(&got);
    let mut inplace = send;
    comm.all_to_all_in_place(&mut inplace[..])
        .or_fail(w("alltoall in place"))?;
    same(&w("alltoall in place"), &inplace, &want)
}

fn mat(rank: usize, i: usize, round: usize) -> [i64; 4] {
    let v = |k: usize| (rank * 3 + i * 5 + round + k) as i64 % 5 - 2;
    [v(0), v(1), v(2), v(3)]
}

/// Reduces to every root in turn, plain and in place, with a commutative operation and with a
/// non-commutative one (2x2 matrix products, rank order), over `n` elements (i64 or matrices
/// of the same byte length, so the same thresholds are crossed).
fn reduce_variants(
    comm: &SimpleCommunicator,
    n: usize,
    r: usize,
    d: &mut Digest,
    w: &dyn Fn(&str) -> String,
) -> Check {
    let p = comm.size() as usize;
    let me = comm.rank() as usize;
    let sum: Vec<i64> = (0..n).map(|i| (0..p).map(|q| val(q, i, r)).sum()).collect();
    let m = n / 4;
    let mm: Vec<[i64; 4]> = (0..m).map(|i| mat(me, i, r)).collect();
    let prod: Vec<[i64; 4]> = (0..m)
        .map(|i| (1..p).fold(mat(0, i, r), |a, q| matmul(a, mat(q, i, r))))
        .collect();
    let matop = || {
        UserOperation::<[i64; 4]>::associative(|a, b| {
            for (x, y) in a.iter().zip(b.iter_mut()) {
                *y = matmul(*x, *y);
            }
        })
    };
    for root in 0..p {
        let rp = comm.process_at_rank(root as i32);
        if me == root {
            let mut o = (0..n).map(|i| val(me, i, r)).collect::<Vec<i64>>();
            rp.reduce_in_place_root(&mut o[..], SystemOperation::sum())
                .or_fail(w(&format!("reduce in place, root {root}")))?;
            same(&w(&format!("reduce in place, root {root}")), &o, &sum)?;
            d.add_i64(&o);
            let mut o = vec![[0i64; 4]; m];
            rp.reduce_into_root(&mm[..], &mut o[..], matop())
                .or_fail(w(&format!("reduce matop, root {root}")))?;
            same(&w(&format!("reduce matop, root {root}")), &o, &prod)?;
            let mut o = mm.clone();
            rp.reduce_in_place_root(&mut o[..], matop())
                .or_fail(w(&format!("reduce matop in place, root {root}")))?;
            same(
                &w(&format!("reduce matop in place, root {root}")),
                &o,
                &prod,
            )?;
        } else {
            let mine: Vec<i64> = (0..n).map(|i| val(me, i, r)).collect();
            rp.reduce_into(&mine[..], SystemOperation::sum())
                .or_fail(w(&format!("reduce in place, root {root}")))?;
            rp.reduce_into(&mm[..], matop())
                .or_fail(w(&format!("reduce matop, root {root}")))?;
            rp.reduce_into(&mm[..], matop())
                .or_fail(w(&format!("reduce matop in place, root {root}")))?;
        }
    }
    let mut o = vec![[0i64; 4]; m];
    comm.all_reduce_into(&mm[..], &mut o[..], matop())
        .or_fail(w("allreduce matop"))?;
    same(&w("allreduce matop"), &o, &prod)?;
    let mut o = mm.clone();
    comm.all_reduce_in_place(&mut o[..], matop())
        .or_fail(w("allreduce matop in place"))?;
    same(&w("allreduce matop in place"), &o, &prod)
}

/// Gather and scatter of `n` elements per rank to and from a rotating root, plain and in
/// place.
fn gather_scatter(
    comm: &SimpleCommunicator,
    n: usize,
    r: usize,
    mine: &[i64],
    all: &[i64],
    d: &mut Digest,
    w: &dyn Fn(&str) -> String,
) -> Check {
    let p = comm.size() as usize;
    let me = comm.rank() as usize;
    let root = (r + 2) % p;
    let rp = comm.process_at_rank(root as i32);
    if me == root {
        let mut g = vec![0i64; n * p];
        rp.gather_into_root(mine, &mut g[..]).or_fail(w("gather"))?;
        same(&w("gather"), &g, all)?;
        d.add_i64(&g);
        let mut g = vec![0i64; n * p];
        g[me * n..(me + 1) * n].copy_from_slice(mine);
        rp.gather_in_place_root(&mut g[..])
            .or_fail(w("gather in place"))?;
        same(&w("gather in place"), &g, all)?;
        let mut sc = vec![0i64; n];
        rp.scatter_into_root(all, &mut sc[..])
            .or_fail(w("scatter"))?;
        same(&w("scatter"), &sc, mine)?;
        rp.scatter_in_place_root(all)
            .or_fail(w("scatter in place"))?;
    } else {
        rp.gather_into(mine).or_fail(w("gather"))?;
        rp.gather_into(mine).or_fail(w("gather in place"))?;
        for what in ["scatter", "scatter in place"] {
            let mut sc = vec![0i64; n];
            rp.scatter_into(&mut sc[..]).or_fail(w(what))?;
            same(&w(what), &sc, mine)?;
            d.add_i64(&sc);
        }
    }
    Ok(())
}

/// Gatherv and scatterv (plain and in place) with blocks of mixed lengths (`n`, none, about
/// `n/3`, `2n + 1` elements, by rank and round: inline, in the slots, packed, and by
/// single-copy transfers), laid out in reverse rank order with gaps.
fn varcount(
    comm: &SimpleCommunicator,
    n: usize,
    r: usize,
    d: &mut Digest,
    w: &dyn Fn(&str) -> String,
) -> Check {
    let p = comm.size() as usize;
    let me = comm.rank() as usize;
    let cnt = |q: usize| match (q + r) % 4 {
        0 => n,
        1 => 0,
        2 => n / 3 + 1,
        _ => 2 * n + 1,
    };
    let counts: Vec<i32> = (0..p).map(|q| cnt(q) as i32).collect();
    let displs: Vec<i32> = (0..p)
        .map(|q| (q + 1..p).map(|k| cnt(k) as i32 + 1).sum())
        .collect();
    let total: usize = (0..p).map(|q| cnt(q) + 1).sum();
    let block = |q: usize| -> Vec<i64> { (0..cnt(q)).map(|i| val(q, i, r + 7)).collect() };
    let mut want = vec![-1i64; total];
    for q in 0..p {
        let at = displs[q] as usize;
        want[at..at + cnt(q)].copy_from_slice(&block(q));
    }
    let mine = block(me);
    let root = (r + 1) % p;
    let rp = comm.process_at_rank(root as i32);
    if me == root {
        let mut o = vec![-1i64; total];
        rp.gather_varcount_into_root(
            &mine[..],
            &mut PartitionMut::new(&mut o[..], counts.clone(), displs.clone()),
        )
        .or_fail(w("gatherv"))?;
        same(&w("gatherv"), &o, &want)?;
        d.add_i64(&o);
        let mut o = vec![-1i64; total];
        let at = displs[me] as usize;
        o[at..at + mine.len()].copy_from_slice(&mine);
        rp.gather_varcount_in_place_root(&mut PartitionMut::new(
            &mut o[..],
            counts.clone(),
            displs.clone(),
        ))
        .or_fail(w("gatherv in place"))?;
        same(&w("gatherv in place"), &o, &want)?;
        let mut s = vec![0i64; cnt(me)];
        rp.scatter_varcount_into_root(
            &Partition::new(&want[..], counts.clone(), displs.clone()),
            &mut s[..],
        )
        .or_fail(w("scatterv"))?;
        same(&w("scatterv"), &s, &mine)?;
        rp.scatter_varcount_in_place_root(&Partition::new(
            &want[..],
            counts.clone(),
            displs.clone(),
        ))
        .or_fail(w("scatterv in place"))?;
    } else {
        rp.gather_varcount_into(&mine[..]).or_fail(w("gatherv"))?;
        rp.gather_varcount_into(&mine[..])
            .or_fail(w("gatherv in place"))?;
        for what in ["scatterv", "scatterv in place"] {
            let mut s = vec![0i64; cnt(me)];
            rp.scatter_varcount_into(&mut s[..]).or_fail(w(what))?;
            same(&w(what), &s, &mine)?;
            d.add_i64(&s);
        }
    }
    Ok(())
}

/// Sizes (in i64 elements) around the inline (48 bytes) and slot boundaries.
fn sizes(quick: bool) -> Vec<usize> {
    let s = slot() / 8;
    let mut v = vec![0, 1, 2, 3, 6, 7, s - 1, s, s + 1, 2 * s + 3];
    if !quick {
        // Around the single-copy thresholds (16 KiB broadcasts, gathers and scatters; 32 KiB
        // split copies; 64 KiB two-rank split reduces). 70_001 elements (560 KiB) also cross
        // the split-reduction threshold, with uneven blocks, and the chunk of a two-rank
        // split reduce (256 KiB) several times.
        v.extend([
            5 * s + 7,
            1,
            4 * s,
            2047,
            2048,
            4095,
            4097,
            8191,
            8192,
            8193,
            70_001,
        ]);
    }
    v
}

/// Many consecutive collectives, sizes alternating small and large.
fn alternating(world: &SimpleCommunicator, quick: bool, d: &mut Digest) -> Check {
    let sz = sizes(quick);
    let rounds = if quick { 1 } else { 3 };
    for r in 0..rounds {
        for (k, &n) in sz.iter().enumerate() {
            round(world, n, r * 100 + k, d, "world")?;
            // A tiny one between every pair, so consecutive calls straddle slot parity.
            round(world, 1 + k % 2, r * 100 + k + 50, d, "world tiny")?;
        }
    }
    Ok(())
}

/// Floating-point sums with rounding: every rank must hold the same bits.
fn bitwise_identical(world: &SimpleCommunicator, mates: usize, d: &mut Digest) -> Check {
    let p = world.size() as usize;
    let me = world.rank() as usize;
    for n in [1usize, 3, 1000, slot() / 8 * 3 + 5] {
        let x: Vec<f64> = (0..n)
            .map(|i| 1.0 / (1.0 + (me * 31 + i) as f64) + 1e10 * (me % 3) as f64)
            .collect();
        let mut s = vec![0.0f64; n];
        world
            .all_reduce_into(&x[..], &mut s[..], SystemOperation::sum())
            .or_fail("allreduce f64 with rounding")?;
        let mut h = Digest(0xcbf2_9ce4_8422_2325);
        for v in &s {
            h.add(&v.to_bits().to_le_bytes());
        }
        let mut hs = vec![0u64; p];
        world
            .all_gather_into(&h.0, &mut hs[..])
            .or_fail("allgather of hashes")?;
        ensure(hs.iter().all(|v| *v == hs[0]), || {
            format!("f64 allreduce of {n} differs between ranks: {hs:x?}")
        })?;
        if shm_on() && mates == p {
            // The component folds x0 + (x1 + (... + x(p-1))) on every rank (with pretend
            // hosts the two-level allreduce brackets by host).
            let want: Vec<f64> = (0..n)
                .map(|i| {
                    (0..p).rev().fold(None, |acc: Option<f64>, q| {
                        let xq = 1.0 / (1.0 + (q * 31 + i) as f64) + 1e10 * (q % 3) as f64;
                        Some(acc.map_or(xq, |a| xq + a))
                    })
                })
                .map(|v| v.unwrap_or(0.0))
                .collect();
            same("f64 rank-order fold", &s, &want)?;
        }
    }
    // (Not in the digest: other algorithms may round differently.)
    let _ = d;
    Ok(())
}

/// Several communicators used interleaved; some freed and re-made on the way.
fn interleaved(world: &SimpleCommunicator, quick: bool, d: &mut Digest) -> Check {
    let p = world.size() as usize;
    let me = world.rank() as usize;
    let base = regions().0;
    let mut comms: Vec<(String, SimpleCommunicator)> = Vec::new();
    comms.push(("dup".into(), world.duplicate().or_fail("dup")?));
    if let Some(c) = world
        .split_by_color(Color::with_value((me % 2) as i32))
        .or_fail("split parity")?
    {
        comms.push(("parity".into(), c));
    }
    if let Some(c) = world
        .split_by_color_with_key(Color::with_value(0), -(me as i32))
        .or_fail("split reversed")?
    {
        comms.push(("reversed".into(), c));
    }
    comms.push((
        "shared".into(),
        world.split_shared().or_fail("split_shared")?,
    ));
    let s = slot() / 8;
    let ns = [1usize, s + 3, 2, 2 * s];
    let rounds = if quick { 2 } else { 4 };
    for r in 0..rounds {
        for (k, (name, c)) in comms.iter().enumerate() {
            round(c, ns[(r + k) % ns.len()], r * 10 + k, d, name)?;
        }
    }
    let multi = comms.iter().filter(|(_, c)| c.size() > 1).count();
    let (n, deleted) = regions();
    if shm_on() {
        ensure(deleted, || "a region is still linked in /dev/shm".into())?;
        ensure(n == base + multi, || {
            format!("{n} regions mapped, want {base} + {multi} (one per communicator)")
        })?;
    } else {
        ensure(n == 0, || {
            format!("{n} regions mapped with the component off")
        })?;
    }
    // Free half of them, make new ones (context ids are reused), and go on.
    comms.truncate(1);
    world.barrier().or_fail("barrier after free")?;
    if shm_on() && p > 1 {
        let (n, _) = regions();
        ensure(n == base + 1, || {
            format!("{n} regions mapped after freeing, want {}", base + 1)
        })?;
    }
    comms.push(("dup2".into(), world.duplicate().or_fail("dup 2")?));
    comms.push(("dup3".into(), comms[0].1.duplicate().or_fail("dup of dup")?));
    for r in 0..rounds {
        for (k, (name, c)) in comms.iter().enumerate() {
            round(c, ns[(r + k + 1) % ns.len()], 500 + r * 10 + k, d, name)?;
        }
    }
    Ok(())
}

/// `coll_shm die`: the last rank exits with status 3 while the others wait for it in
/// shared-memory barriers; the job must end promptly with that status.
fn die(world: &SimpleCommunicator) -> Check {
    let me = world.rank();
    world.barrier().or_fail("first barrier")?;
    if me == 0 {
        println!(
            "job {}",
            std::env::var("BRAID_JOB_ID").unwrap_or_else(|_| "-".into())
        );
    }
    if me == world.size() - 1 {
        std::process::exit(3);
    }
    loop {
        world.barrier().or_fail("barrier with a dead rank")?;
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    if std::env::args().any(|a| a == "die") {
        run_rank("coll_shm", die);
        return;
    }
    run_rank("coll_shm", |world| {
        let me = world.rank();
        let start = std::time::Instant::now();
        let mut d = Digest(0xcbf2_9ce4_8422_2325);
        let mates = host_mates(world)?;
        world.barrier().or_fail("first barrier")?;
        world.barrier().or_fail("second barrier")?;
        let (n, deleted) = regions();
        // Over several (or pretend) hosts the world runs two-level collectives, whose
        // intra-host phases run on a communicator of this rank's host: its region is the one
        // mapped.
        if shm_on() && mates > 1 {
            ensure(n == 1 && deleted, || {
                format!("after the first barriers: {n} regions, all unlinked: {deleted}")
            })?;
        }
        alternating(world, quick, &mut d)?;
        bitwise_identical(world, mates, &mut d)?;
        if mates == world.size() as usize {
            interleaved(world, quick, &mut d)?;
        }
        world.barrier().or_fail("last barrier")?;
        if me == 0 {
            println!("digest {:016x}", d.0);
            println!(
                "job {}",
                std::env::var("BRAID_JOB_ID").unwrap_or_else(|_| "-".into())
            );
            println!("elapsed {:.3} s", start.elapsed().as_secs_f64());
        }
        Ok(())
    });
}
