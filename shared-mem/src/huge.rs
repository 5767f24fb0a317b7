//! Huge-page backing for the buffers that large single-copy transfers use again and again.
//!
//! A single-copy transfer makes the kernel pin every page of the remote buffer, one 4 KiB
//! page at a time, and walk its page tables; on two cores that costs about a third of a
//! 4 MiB `process_vm_readv` when both ranks copy at once. A buffer backed by transparent
//! huge pages is pinned 2 MiB at a time. Applications seldom ask for that backing (the
//! system default is usually `madvise`), so [`HugeBacking`] asks for it on their behalf
//! with `madvise(MADV_COLLAPSE)`, which copies a 2 MiB block into a huge page in place
//! (the contents stay the same).
//!
//! Measured with `osu_bibw` at 2 and 4 MiB: +20-30%; `osu_bcast` and `osu_allreduce` at
//! 2 and 4 MiB: 8-14% less time.
//!
//! - **When:** collapsing costs a copy of the block (0.3-0.7 ms), so only blocks seen in a
//!   second transfer are collapsed: a buffer used once is left alone, a buffer used in a
//!   loop (the common case: halo buffers, benchmark buffers) pays once.
//! - **Which blocks:** the aligned 2 MiB blocks that hold at least [`MIN_OVERLAP`] (a
//!   quarter block) of the buffer. The rest of such a block may hold other data of the
//!   application, which keeps its contents, or pages never touched, which then take memory:
//!   at most three times the part of the buffer in that block.
//! - **Where it cannot:** blocks that stick out of their mapping, mappings that refuse huge
//!   pages, and kernels without `MADV_COLLAPSE` are left as they are. `BRAID_SHM_HUGE_PAGES=off`
//!   turns it off.

use crate::sys;

/// Size (and alignment) of the blocks [`HugeBacking`] collapses: one x86-64 PMD page.
pub(crate) const HUGE_BLOCK: usize = 2 << 20;

/// A block is collapsed only when a buffer covers at least this much of it: the collapse
/// also backs the rest of the block (other data of the application, or pages it never
/// touched) with the huge page, which should stay a small part.
pub const MIN_OVERLAP: usize = HUGE_BLOCK / 4;

/// Blocks remembered (first-in first-out): 512 MiB of buffers, enough for the windows of
/// large transfers applications keep, and a linear search costs far less than copying the
/// 512 KiB that a note needs at least. Buffers used in turn that span more blocks than this
/// push their own first blocks out before they come round again, and stay as they are.
const TRACKED: usize = 256;

/// Collapses are tried this many times per block: a block the peer is copying at that
/// moment is pinned and cannot move (the kernel answers `EAGAIN`), and a block in a mapping
/// that cannot take huge pages fails every time.
const TRIES: u8 = 8;

/// What is known about one block: its address, and how many collapses were tried (`TRIES`
/// once it is huge or will never be).
#[derive(Clone, Copy, Debug, Default)]
struct Block {
    addr: usize,
    tries: u8,
}

/// Tracks the 2 MiB blocks of large transfer buffers and collapses those used twice into
/// huge pages. Why and when: the docs of `shared-mem/src/huge.rs`.
#[derive(Debug)]
pub struct HugeBacking {
    blocks: Box<[Block; TRACKED]>,
    next: usize,
    collapsed: u64,
}

impl HugeBacking {
    /// A tracker, or `None` when the kernel has no `MADV_COLLAPSE` (before Linux 6.1, or
    /// not Linux).
    pub fn new() -> Option<Self> {
        // A zero-length probe at any page-aligned address: the kernel checks the advice
        // before the range, and an empty range touches nothing.
        sys::collapse_huge(HUGE_BLOCK, 0).ok()?;
        Some(Self {
            blocks: Box::new([Block::default(); TRACKED]),
            next: 0,
            collapsed: 0,
        })
    }

    /// Notes a transfer buffer; collapses each aligned block that holds at least
    /// [`MIN_OVERLAP`] bytes of it, was seen before and is not huge yet. Best effort:
    /// failures only leave the block as it was.
    pub fn note(&mut self, ptr: *const u8, len: usize) {
        let (start, end) = (ptr as usize, (ptr as usize).saturating_add(len));
        let mut block = start & !(HUGE_BLOCK - 1);
        while block < end {
            let overlap = end.min(block + HUGE_BLOCK) - start.max(block);
            if overlap >= MIN_OVERLAP {
                self.note_block(block);
            }
            block += HUGE_BLOCK;
        }
    }

    fn note_block(&mut self, addr: usize) {
        let Some(b) = self.blocks.iter_mut().find(|b| b.addr == addr) else {
            self.blocks[self.next] = Block { addr, tries: 0 };
            self.next = (self.next + 1) % TRACKED;
            return;
        };
        if b.tries >= TRIES {
            return;
        }
        b.tries += 1;
        match sys::collapse_huge(addr, HUGE_BLOCK) {
            Ok(()) => {
                b.tries = TRIES;
                self.collapsed += 1;
            }
            // Pages pinned or locked at the moment (the peer is copying them): later.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => {}
            // Not wholly inside one mapping that can take huge pages (`EINVAL`, `ENOMEM`
            // for a range partly unmapped), or no huge page to be had: never.
            Err(_) => b.tries = TRIES,
        }
    }

    /// How many blocks this tracker has collapsed.
    pub fn collapsed(&self) -> u64 {
        self.collapsed
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// A buffer of `len` bytes holding a pattern (glibc maps buffers this large on their
    /// own, as private anonymous memory).
    fn buffer(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// A tracker, or `None` (with the visible skip line) without kernel support.
    fn tracker(test: &str) -> Option<HugeBacking> {
        let h = HugeBacking::new();
        if h.is_none() {
            eprintln!("SKIPPED: {test}: this kernel has no MADV_COLLAPSE");
        }
        h
    }

    #[test]
    fn collapses_blocks_seen_twice_and_keeps_the_contents() {
        let Some(mut h) = tracker("collapses_blocks_seen_twice") else {
            return;
        };
        // 5 MiB: at least one whole aligned block.
        let buf = buffer(5 << 20);
        h.note(buf.as_ptr(), buf.len());
        assert_eq!(h.collapsed(), 0, "the first sighting collapses nothing");
        h.note(buf.as_ptr(), buf.len());
        assert!(h.collapsed() >= 1, "no block collapsed: {h:?}");
        let collapsed = h.collapsed();
        h.note(buf.as_ptr(), buf.len());
        assert_eq!(
            h.collapsed(),
            collapsed,
            "a huge block is not collapsed again"
        );
        assert!(
            buf.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
            "contents changed"
        );
    }

    #[test]
    fn small_parts_of_a_block_are_left_alone() {
        let Some(mut h) = tracker("small_parts_of_a_block_are_left_alone") else {
            return;
        };
        let buf = buffer(5 << 20);
        // The part of the buffer in its first whole block, cut below the minimum overlap.
        let block = (buf.as_ptr() as usize).next_multiple_of(HUGE_BLOCK);
        let at = block - buf.as_ptr() as usize;
        for _ in 0..3 {
            h.note(buf[at..].as_ptr(), MIN_OVERLAP - 1);
        }
        assert_eq!(h.collapsed(), 0);
    }
}
