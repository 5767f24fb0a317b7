//! The collective algorithms, each building rounds of a [`Schedule`] over a [`Team`].
//!
//! Cost models use Hockney's α-β-γ model: α latency per message, β time per byte, γ time per
//! byte reduced; p ranks, n bytes per rank (the whole vector for bcast/reduce/allreduce).
//! Sources: Thakur, Rabenseifner and Gropp, "Optimization of Collective Communication
//! Operations in MPICH", IJHPCA 19(1), 2005 (algorithms and costs below follow it), and
//! MPICH's `src/mpi/coll/*` for the non-power-of-two handling.

use super::schedule::{Schedule, Slice};

/// A set of communicator ranks taking part in one algorithm: the whole communicator, the
/// ranks of one host, or the host leaders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Team {
    /// Communicator rank of each team member, in team order.
    pub(crate) members: Vec<usize>,
    /// This process's index in `members`.
    pub(crate) me: usize,
}

impl Team {
    pub(crate) fn p(&self) -> usize {
        self.members.len()
    }
    fn at(&self, i: usize) -> usize {
        self.members[i % self.p()]
    }
}

/// Largest power of two not above `p` (p >= 1).
pub(crate) fn pof2_floor(p: usize) -> usize {
    1usize << (usize::BITS - 1 - p.leading_zeros())
}

/// Byte range of chunk `i` when `n` elements of `elem` bytes are cut into `parts` chunks,
/// the first `n % parts` one element larger.
pub(crate) fn chunk(n_elems: usize, elem: usize, parts: usize, i: usize) -> (usize, usize) {
    let base = n_elems / parts;
    let extra = n_elems % parts;
    let start = i * base + i.min(extra);
    let len = base + usize::from(i < extra);
    (start * elem, len * elem)
}

/// Dissemination barrier (Hensgen, Finkel and Manber 1988): in round k rank i signals
/// i + 2^k and waits for i - 2^k. Cost: ⌈log2 p⌉ α.
pub(crate) fn barrier_dissemination(s: &mut Schedule, t: &Team) {
    let p = t.p();
    let mut d = 1;
    while d < p {
        s.round();
        s.send(t.at(t.me + d), Slice::empty());
        s.recv(t.at(t.me + p - d), Slice::empty());
        d *= 2;
    }
    s.round();
}

/// Binomial-tree broadcast. Cost: ⌈log2 p⌉ (α + nβ). Best for short messages.
pub(crate) fn bcast_binomial(s: &mut Schedule, t: &Team, root: usize, buf: Slice) {
    let p = t.p();
    let vr = (t.me + p - root) % p;
    let mut mask = 1;
    s.round();
    while mask < p {
        if vr & mask != 0 {
            s.recv(t.at(vr - mask + root), buf);
            s.round();
            break;
        }
        mask <<= 1;
    }
    mask >>= 1;
    while mask > 0 {
        if vr + mask < p {
            s.send(t.at(vr + mask + root), buf);
        }
        mask >>= 1;
    }
    s.round();
}

/// Scatter-allgather broadcast (van de Geijn; Barnett et al. 1994): binomial scatter of p
/// chunks, then a ring allgather. Cost: (⌈log2 p⌉ + p - 1) α + 2 (p-1)/p nβ. Best for long
/// messages.
pub(crate) fn bcast_scatter_allgather(s: &mut Schedule, t: &Team, root: usize, buf: Slice) {
    let p = t.p();
    let n = buf.len;
    let csz = n.div_ceil(p);
    let range = |a: usize, b: usize| {
        let lo = (a * csz).min(n);
        let hi = (b * csz).min(n);
        buf.sub(lo, hi - lo)
    };
    let vr = (t.me + p - root) % p;
    // Binomial scatter of chunk ranges: vr gets chunks [vr, vr + subtree) from its parent.
    let mut mask = 1;
    s.round();
    while mask < p {
        if vr & mask != 0 {
            s.recv(t.at(vr - mask + root), range(vr, (vr + mask).min(p)));
            s.round();
            break;
        }
        mask <<= 1;
    }
    mask >>= 1;
    while mask > 0 {
        if vr + mask < p {
            s.send(
                t.at(vr + mask + root),
                range(vr + mask, (vr + 2 * mask).min(p)),
            );
        }
        mask >>= 1;
    }
    s.round();
    // Ring allgather in virtual-rank order.
    for step in 0..p - 1 {
        let send_c = (vr + p - step) % p;
        let recv_c = (vr + 2 * p - step - 1) % p;
        s.send(t.at(vr + 1 + root), range(send_c, send_c + 1));
        s.recv(t.at(vr + p - 1 + root), range(recv_c, recv_c + 1));
        s.round();
    }
}

/// Binomial-tree reduce into `acc` at team index `root`. `acc` holds this rank's operand on
/// entry and, at the root, the result on exit (elsewhere it is clobbered); `tmp` has `acc`'s
/// length. A non-commutative operation is reduced towards index 0 in rank order, then sent to
/// the root. Cost: ⌈log2 p⌉ (α + nβ + nγ) (+ α + nβ for a non-commutative op, root ≠ 0).
pub(crate) fn reduce_binomial(
    s: &mut Schedule,
    t: &Team,
    root: usize,
    commutative: bool,
    acc: Slice,
    tmp: Slice,
) {
    let p = t.p();
    let base = if commutative { root } else { 0 };
    let vr = (t.me + p - base) % p;
    let mut mask = 1;
    s.round();
    while mask < p {
        if vr & mask == 0 {
            let src = vr | mask;
            if src < p {
                s.recv(t.at(src + base), tmp);
                s.reduce_left(acc, tmp);
                s.round();
            }
        } else {
            s.send(t.at((vr & !mask) + base), acc);
            s.round();
            break;
        }
        mask <<= 1;
    }
    if base != root {
        if t.me == base {
            s.send(t.at(root), acc);
        } else if t.me == root {
            s.recv(t.at(base), acc);
        }
        s.round();
    }
}

/// Folds the first 2·rem ranks pairwise so that a power of two of them remain (MPICH's
/// non-power-of-two step); returns this rank's new index, `None` if it sat out.
fn fold_in(s: &mut Schedule, t: &Team, rem: usize, acc: Slice, tmp: Slice) -> Option<usize> {
    let me = t.me;
    s.round();
    if me < 2 * rem {
        if me.is_multiple_of(2) {
            s.send(t.at(me + 1), acc);
            s.round();
            None
        } else {
            s.recv(t.at(me - 1), tmp);
            s.reduce(tmp, acc);
            s.round();
            Some(me / 2)
        }
    } else {
        Some(me - rem)
    }
}

/// Hands the result back to the ranks that sat out in [`fold_in`].
fn fold_out(s: &mut Schedule, t: &Team, rem: usize, acc: Slice) {
    if t.me < 2 * rem {
        if t.me.is_multiple_of(2) {
            s.recv(t.at(t.me + 1), acc);
        } else {
            s.send(t.at(t.me - 1), acc);
        }
    }
    s.round();
}

/// Team index of new index `nr` after [`fold_in`].
fn unfold(nr: usize, rem: usize) -> usize {
    if nr < rem { nr * 2 + 1 } else { nr + rem }
}

/// Recursive-doubling allreduce (with the non-power-of-two fold). Keeps rank order, so it
/// serves non-commutative operations. Cost: ⌈log2 p⌉ (α + nβ + nγ) (+ 2(α + nβ) + nγ when p
/// is not a power of two). Best for short messages.
pub(crate) fn allreduce_recursive_doubling(s: &mut Schedule, t: &Team, acc: Slice, tmp: Slice) {
    let p = t.p();
    let pof2 = pof2_floor(p);
    let rem = p - pof2;
    if let Some(nr) = fold_in(s, t, rem, acc, tmp) {
        let mut mask = 1;
        while mask < pof2 {
            let dst = unfold(nr ^ mask, rem);
            s.send(t.at(dst), acc);
            s.recv(t.at(dst), tmp);
            if dst < t.me {
                s.reduce(tmp, acc);
            } else {
                s.reduce_left(acc, tmp);
            }
            s.round();
            mask <<= 1;
        }
    }
    fold_out(s, t, rem, acc);
}

/// Rabenseifner's allreduce: reduce-scatter by recursive halving, then allgather by
/// recursive doubling (with the non-power-of-two fold). Commutative operations only. Cost:
/// 2 log2 p α + 2 (p-1)/p nβ + (p-1)/p nγ. Best for long messages on power-of-two teams.
pub(crate) fn allreduce_rabenseifner(
    s: &mut Schedule,
    t: &Team,
    elem: usize,
    acc: Slice,
    tmp: Slice,
) {
    let p = t.p();
    let pof2 = pof2_floor(p);
    let rem = p - pof2;
    let n = acc.len / elem.max(1);
    let cnt = |i: usize| chunk(n, elem, pof2, i);
    let span = |a: usize, b: usize, buf: Slice| {
        if a >= b {
            return buf.sub(0, 0);
        }
        let lo = cnt(a).0;
        let (hs, hl) = cnt(b - 1);
        buf.sub(lo, hs + hl - lo)
    };
    if let Some(nr) = fold_in(s, t, rem, acc, tmp) {
        let (mut send_idx, mut recv_idx, mut last_idx) = (0usize, 0usize, pof2);
        let mut mask = 1;
        while mask < pof2 {
            let dst = unfold(nr ^ mask, rem);
            let (sa, sb, ra, rb);
            if nr < (nr ^ mask) {
                send_idx = recv_idx + pof2 / (mask * 2);
                (sa, sb, ra, rb) = (send_idx, last_idx, recv_idx, send_idx);
            } else {
                recv_idx = send_idx + pof2 / (mask * 2);
                (sa, sb, ra, rb) = (send_idx, recv_idx, recv_idx, last_idx);
            }
            s.send(t.at(dst), span(sa, sb, acc));
            s.recv(t.at(dst), span(ra, rb, tmp));
            s.reduce(span(ra, rb, tmp), span(ra, rb, acc));
            s.round();
            send_idx = recv_idx;
            mask <<= 1;
            if mask < pof2 {
                last_idx = recv_idx + pof2 / mask;
            }
        }
        mask >>= 1;
        while mask > 0 {
            let dst = unfold(nr ^ mask, rem);
            let (sa, sb, ra, rb);
            if nr < (nr ^ mask) {
                if mask != pof2 / 2 {
                    last_idx += pof2 / (mask * 2);
                }
                recv_idx = send_idx + pof2 / (mask * 2);
                (sa, sb, ra, rb) = (send_idx, recv_idx, recv_idx, last_idx);
            } else {
                recv_idx = send_idx - pof2 / (mask * 2);
                (sa, sb, ra, rb) = (send_idx, last_idx, recv_idx, send_idx);
            }
            s.send(t.at(dst), span(sa, sb, acc));
            s.recv(t.at(dst), span(ra, rb, acc));
            s.round();
            if nr > (nr ^ mask) {
                send_idx = recv_idx;
            }
            mask >>= 1;
        }
    }
    fold_out(s, t, rem, acc);
}

/// Ring reduce-scatter over the p byte ranges `parts[i] = (offset, len)` of `acc` (any sizes,
/// zero included); afterwards index i holds range `(i + shift) mod p` fully reduced. `tmp`
/// has `acc`'s length. Commutative operations only. Cost: (p-1)(α + n/p β + n/p γ) for equal
/// ranges; with unequal ones each step costs as much as the largest range moved in it.
fn reduce_scatter_ring(
    s: &mut Schedule,
    t: &Team,
    parts: &[(usize, usize)],
    acc: Slice,
    tmp: Slice,
    shift: usize,
) {
    let p = t.p();
    let part = |i: usize, buf: Slice| {
        let (o, l) = parts[i % p];
        buf.sub(o, l)
    };
    s.round();
    for step in 0..p - 1 {
        let sc = t.me + 2 * p + shift - step - 1;
        let rc = t.me + 2 * p + shift - step - 2;
        s.send(t.at(t.me + 1), part(sc, acc));
        s.recv(t.at(t.me + p - 1), part(rc, tmp));
        s.reduce(part(rc, tmp), part(rc, acc));
        s.round();
    }
}

/// The p near-equal chunks of [`chunk`] as byte ranges.
fn equal_parts(n_elems: usize, elem: usize, p: usize) -> Vec<(usize, usize)> {
    (0..p).map(|i| chunk(n_elems, elem, p, i)).collect()
}

/// Ring allreduce: ring reduce-scatter then ring allgather. Commutative operations only.
/// Cost: 2(p-1) α + 2 (p-1)/p nβ + (p-1)/p nγ; bandwidth-optimal for any p. Used for long
/// messages when p is not a power of two.
pub(crate) fn allreduce_ring(s: &mut Schedule, t: &Team, elem: usize, acc: Slice, tmp: Slice) {
    let p = t.p();
    if p == 1 {
        return;
    }
    let n = acc.len / elem.max(1);
    let parts = equal_parts(n, elem, p);
    let part = |i: usize| {
        let (o, l) = parts[i % p];
        acc.sub(o, l)
    };
    reduce_scatter_ring(s, t, &parts, acc, tmp, 0);
    // Index i now owns chunk i; circulate.
    for step in 0..p - 1 {
        s.send(t.at(t.me + 1), part(t.me + p - step));
        s.recv(t.at(t.me + p - 1), part(t.me + 2 * p - step - 1));
        s.round();
    }
}

/// Reduce-scatter by the ring over blocks of any sizes: `blocks[i] = (offset, len)` in bytes
/// of `acc`; index i ends with block i of `acc` reduced (`MPI_Reduce_scatter` and, with equal
/// blocks, `MPI_Reduce_scatter_block`). Commutative operations only; `tmp` has `acc`'s length.
pub(crate) fn reduce_scatter_ring_blocks(
    s: &mut Schedule,
    t: &Team,
    blocks: &[(usize, usize)],
    acc: Slice,
    tmp: Slice,
) {
    debug_assert_eq!(blocks.len(), t.p());
    if t.p() > 1 {
        reduce_scatter_ring(s, t, blocks, acc, tmp, 0);
    }
}

/// Subtree size of virtual rank `vr` in a binomial tree over p ranks.
fn subtree(vr: usize, p: usize) -> usize {
    if vr == 0 {
        p
    } else {
        (vr & vr.wrapping_neg()).min(p - vr)
    }
}

/// Binomial gather of `n`-byte blocks to team index `root`. `work` (p·n bytes) collects
/// blocks in virtual-rank order; at the root the blocks are rotated into `out` (p·n bytes, in
/// team order). `mine` is this rank's block. Cost: ⌈log2 p⌉ α + (p-1)/p · p n β.
pub(crate) fn gather_binomial(
    s: &mut Schedule,
    t: &Team,
    root: usize,
    mine: Slice,
    work: Slice,
    out: Option<Slice>,
) {
    let p = t.p();
    let n = mine.len;
    let vr = (t.me + p - root) % p;
    s.round();
    s.copy(mine, work.sub(0, n));
    s.round();
    let mut mask = 1;
    while mask < p {
        if vr & mask == 0 {
            let src = vr + mask;
            if src < p {
                let k = subtree(src, p);
                s.recv(t.at(src + root), work.sub(mask * n, k * n));
            }
        } else {
            break;
        }
        mask <<= 1;
    }
    s.round();
    if vr != 0 {
        let parent = vr & (vr - 1);
        s.send(t.at(parent + root), work.sub(0, subtree(vr, p) * n));
        s.round();
    } else if let Some(out) = out {
        // Virtual rank j is team index (j + root) mod p.
        let head = p - root;
        s.copy(work.sub(0, head * n), out.sub(root * n, head * n));
        s.copy(work.sub(head * n, root * n), out.sub(0, root * n));
        s.round();
    }
}

/// Binomial scatter of `n`-byte blocks from team index `root` (inverse of
/// [`gather_binomial`]). `src` (p·n bytes, team order) is read at the root; `work` is p·n
/// bytes; this rank's block lands in `mine`.
pub(crate) fn scatter_binomial(
    s: &mut Schedule,
    t: &Team,
    root: usize,
    src: Option<Slice>,
    work: Slice,
    mine: Slice,
) {
    let p = t.p();
    let n = mine.len;
    let vr = (t.me + p - root) % p;
    s.round();
    if vr == 0 {
        if let Some(src) = src {
            let head = p - root;
            s.copy(src.sub(root * n, head * n), work.sub(0, head * n));
            s.copy(src.sub(0, root * n), work.sub(head * n, root * n));
        }
        s.round();
    } else {
        let parent = vr & (vr - 1);
        s.recv(t.at(parent + root), work.sub(0, subtree(vr, p) * n));
        s.round();
    }
    let mut mask = if vr == 0 {
        pof2_floor(p.max(1))
    } else {
        (vr & vr.wrapping_neg()) >> 1
    };
    if vr == 0 && mask >= p {
        mask >>= 1;
    }
    while mask > 0 {
        let dst = vr + mask;
        if dst < p {
            s.send(t.at(dst + root), work.sub(mask * n, subtree(dst, p) * n));
        }
        mask >>= 1;
    }
    s.copy(work.sub(0, n), mine);
    s.round();
}

/// Bruck's allgather (Bruck et al. 1997): ⌈log2 p⌉ rounds of doubling blocks, then a local
/// rotation. Cost: ⌈log2 p⌉ α + (p-1)/p · p n β. Best for short messages and any p.
pub(crate) fn allgather_bruck(s: &mut Schedule, t: &Team, mine: Slice, work: Slice, out: Slice) {
    let p = t.p();
    let n = mine.len;
    s.round();
    s.copy(mine, work.sub(0, n));
    s.round();
    let mut k = 1;
    while k < p {
        let cnt = k.min(p - k);
        s.send(t.at(t.me + p - k), work.sub(0, cnt * n));
        s.recv(t.at(t.me + k), work.sub(k * n, cnt * n));
        s.round();
        k *= 2;
    }
    // work[j] is the block of index (me + j) mod p.
    let head = p - t.me;
    s.copy(work.sub(0, head * n), out.sub(t.me * n, head * n));
    s.copy(work.sub(head * n, t.me * n), out.sub(0, t.me * n));
    s.round();
}

/// Ring allgather of variable blocks `blocks[i]` of `out` (block `me` already in place).
/// Cost: (p-1) α + (p-1)/p · total β. Best for long messages.
pub(crate) fn allgather_ring(s: &mut Schedule, t: &Team, blocks: &[Slice]) {
    let p = t.p();
    s.round();
    for step in 0..p.saturating_sub(1) {
        let sc = (t.me + p - step) % p;
        let rc = (t.me + 2 * p - step - 1) % p;
        s.send(t.at(t.me + 1), blocks[sc]);
        s.recv(t.at(t.me + p - 1), blocks[rc]);
        s.round();
    }
}

/// Pairwise-exchange all-to-all: in step k, send to i + k and receive from i - k. Cost: (p-1)
/// (α + nβ) for blocks of n bytes. `sends[j]` goes to j, `recvs[j]` comes from j.
pub(crate) fn alltoall_pairwise(s: &mut Schedule, t: &Team, sends: &[Slice], recvs: &[Slice]) {
    let p = t.p();
    s.round();
    s.copy(sends[t.me], recvs[t.me]);
    s.round();
    for k in 1..p {
        let to = (t.me + k) % p;
        let from = (t.me + p - k) % p;
        s.send(t.at(to), sends[to]);
        s.recv(t.at(from), recvs[from]);
        s.round();
    }
}

/// Linear gather of variable blocks: the root posts every receive at once. Cost: (p-1) α +
/// total β at the root.
pub(crate) fn gather_linear(
    s: &mut Schedule,
    t: &Team,
    root: usize,
    mine: Slice,
    blocks: Option<&[Slice]>,
) {
    s.round();
    if t.me == root {
        if let Some(b) = blocks {
            for (i, blk) in b.iter().enumerate() {
                if i == root {
                    s.copy(mine, *blk);
                } else {
                    s.recv(t.at(i), *blk);
                }
            }
        }
    } else {
        s.send(t.at(root), mine);
    }
    s.round();
}

/// Linear scatter of variable blocks: the root posts every send at once. Cost: (p-1) α +
/// total β at the root.
pub(crate) fn scatter_linear(
    s: &mut Schedule,
    t: &Team,
    root: usize,
    blocks: Option<&[Slice]>,
    mine: Slice,
) {
    s.round();
    if t.me == root {
        if let Some(b) = blocks {
            for (i, blk) in b.iter().enumerate() {
                if i == root {
                    s.copy(*blk, mine);
                } else {
                    s.send(t.at(i), *blk);
                }
            }
        }
    } else {
        s.recv(t.at(root), mine);
    }
    s.round();
}

/// Recursive-doubling inclusive scan (MPICH's `MPIR_Scan_intra_recursive_doubling`), in rank
/// order. `partial` holds this rank's operand on entry; `out` receives the prefix result and
/// must hold the operand too on entry. Cost: ⌈log2 p⌉ (α + nβ + 2nγ).
pub(crate) fn scan_recursive_doubling(
    s: &mut Schedule,
    t: &Team,
    partial: Slice,
    tmp: Slice,
    out: Slice,
    exclusive: bool,
) {
    let p = t.p();
    let mut mask = 1;
    let mut have = !exclusive;
    s.round();
    while mask < p {
        let dst = t.me ^ mask;
        if dst < p {
            s.send(t.at(dst), partial);
            s.recv(t.at(dst), tmp);
            if t.me > dst {
                s.reduce(tmp, partial);
                if have {
                    s.reduce(tmp, out);
                } else {
                    s.copy(tmp, out);
                    have = true;
                }
            } else {
                s.reduce_left(partial, tmp);
            }
            s.round();
        }
        mask <<= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover() {
        for n in 0..20 {
            for parts in 1..9 {
                let mut next = 0;
                for i in 0..parts {
                    let (o, l) = chunk(n, 4, parts, i);
                    assert_eq!(o, next);
                    next = o + l;
                }
                assert_eq!(next, n * 4);
            }
        }
        assert_eq!(pof2_floor(1), 1);
        assert_eq!(pof2_floor(7), 4);
        assert_eq!(pof2_floor(8), 8);
        assert_eq!(subtree(0, 7), 7);
        assert_eq!(subtree(4, 7), 3);
        assert_eq!(subtree(6, 7), 1);
    }
}
