//! Point-to-point operations that involve two processes at once.
//!
//! # Standard section(s)
//! MPI-4.1 §3.10 (send-receive).

use crate::communicator::{Destination, Source, Status, Tag};
use crate::datatype::{Buffer, BufferMut};
use crate::error::Error;

/// Sends `msg` to `destination` and receives into `buf` from `source` at the same time
/// (`MPI_Sendrecv`), both with tag 0.
///
/// # Errors
/// Truncation, invalid ranks, a lost peer.
pub fn send_receive_into<M, D, B, S>(
    msg: &M,
    destination: &D,
    buf: &mut B,
    source: &S,
) -> Result<Status, Error>
where
    M: Buffer + ?Sized,
    D: Destination,
    B: BufferMut + ?Sized,
    S: Source,
{
    send_receive_into_with_tags(msg, destination, 0, buf, source, None)
}

/// [`send_receive_into`] with a send tag and an optional receive tag (`None`: any tag).
///
/// # Errors
/// As [`send_receive_into`]; a negative tag.
pub fn send_receive_into_with_tags<M, D, B, S>(
    msg: &M,
    destination: &D,
    send_tag: Tag,
    buf: &mut B,
    source: &S,
    receive_tag: Option<Tag>,
) -> Result<Status, Error>
where
    M: Buffer + ?Sized,
    D: Destination,
    B: BufferMut + ?Sized,
    S: Source,
{
    if send_tag < 0 {
        return Err(Error::UsageInvalidTag(send_tag));
    }
    crate::request::scope(|scope| {
        let r = match receive_tag {
            Some(t) => source.immediate_receive_into_with_tag(scope, buf, t)?,
            None => source.immediate_receive_into(scope, buf)?,
        };
        destination.send_with_tag(msg, send_tag)?;
        r.wait()
    })
}
