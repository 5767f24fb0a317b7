//! Collective operations.
//!
//! # Standard section(s)
//! MPI-4.1 §6 (collective communication).
//!
//! # Not yet implemented
//! Everything but barrier.

use braid_engine::{ContextId, SendMode};

use crate::core::Core;
use crate::error::Error;

/// Tags of barrier rounds on a communicator's collective context.
const BARRIER_TAG: i32 = 1;

/// Dissemination barrier (Hensgen, Finkel and Manber 1988): in round k each rank signals
/// rank + 2^k and waits for rank - 2^k. ceil(log2 p) rounds of one zero-byte message each.
pub(crate) fn barrier(c: &mut Core, ctx: ContextId) -> Result<(), Error> {
    let (me, p) = (c.rank, c.size);
    let mut dist = 1u32;
    let mut round = 0;
    while dist < p {
        let to = (me + dist) % p;
        let from = (me + p - dist) % p;
        let tag = BARRIER_TAG + round;
        // SAFETY: zero-length buffers: nothing is read or written through the pointers.
        let r = unsafe { c.irecv(ctx, Some(from), Some(tag), std::ptr::NonNull::dangling().as_ptr(), 0) }?;
        // SAFETY: as above.
        let s = unsafe { c.isend(ctx, to, tag, std::ptr::NonNull::dangling().as_ptr(), 0, SendMode::Standard) }?;
        c.wait(s)??;
        c.wait(r)??;
        dist *= 2;
        round += 1;
    }
    Ok(())
}
