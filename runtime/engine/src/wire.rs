//! The frame header that every transport carries in front of a frame's payload.
//!
//! A frame is a fixed [`HEADER_LEN`]-byte header followed by `payload_len` bytes of payload.
//! All integers are little-endian:
//!
//! | bytes  | field         | meaning                                                     |
//! |--------|---------------|-------------------------------------------------------------|
//! | 0      | kind          | [`FrameKind`]                                               |
//! | 1      | flags         | bit 0: synchronous ([`FLAG_SYNC`]), bit 1: pull ([`FLAG_PULL`]) |
//! | 2..4   | reserved      | zero                                                        |
//! | 4..8   | context       | [`ContextId`] of an envelope                                |
//! | 8..12  | source        | sender's [`Rank`]                                           |
//! | 12..16 | tag           | [`Tag`], never negative                                     |
//! | 16..24 | seq           | per-(sender, receiver) [`Seq`] of an envelope               |
//! | 24..32 | msg_len       | message length (envelopes), accepted length (CTS), bytes (push) |
//! | 32..40 | send_req      | sender's request id (RTS, CTS, ack, push)                   |
//! | 40..48 | recv_req      | receiver's request id (CTS, data, push)                     |
//! | 48..56 | offset        | offset of a data chunk; pull address of an RTS; push target |
//! | 56..64 | payload_len   | bytes of payload that follow this header                    |
//!
//! Decoding checks everything a header alone can tell; the engine checks the rest against
//! its state (does the request exist, does the chunk fit).

use crate::ids::{ContextId, Rank, ReqId, Seq, Tag};

/// Size of an encoded [`Header`] in its full form.
pub const HEADER_LEN: usize = 64;

/// Size of the compact form: an eager, non-synchronous message needs only bytes 0..32 (its
/// payload length equals its message length, and the request fields are zero). Byte 0 then
/// carries [`COMPACT`] on top of the kind.
pub const COMPACT_LEN: usize = 32;

/// Bit of byte 0 marking the compact form.
pub const COMPACT: u8 = 0x80;

/// Length of the header that starts with byte `first`.
pub fn header_len(first: u8) -> usize {
    if first & COMPACT != 0 {
        COMPACT_LEN
    } else {
        HEADER_LEN
    }
}

/// Largest payload a single frame may carry (1 GiB); larger messages travel as several chunks.
pub const MAX_PAYLOAD: u64 = 1 << 30;

/// Flag bit: the envelope belongs to a synchronous-mode send and wants an acknowledgement.
pub const FLAG_SYNC: u8 = 1;

/// Flag bit on an RTS: the receiver may pull the data itself from the sender's memory at the
/// address in `offset` (single-copy transfer between processes of one host), then answer
/// with [`FrameKind::Fin`] instead of CTS.
pub const FLAG_PULL: u8 = 2;

/// What a frame is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A whole small message: envelope and payload.
    Eager = 1,
    /// Request to send (rendezvous): an envelope without payload.
    Rts = 2,
    /// Clear to send: the receiver matched an RTS and says how many bytes it accepts.
    Cts = 3,
    /// A chunk of a rendezvous message's payload.
    Data = 4,
    /// The receiver matched a synchronous eager message.
    SyncAck = 5,
    /// The receiver pulled a rendezvous message itself; the send is complete.
    Fin = 6,
    /// The receiver of a pull-offering RTS asks the sender to write the last `msg_len` bytes
    /// of the message into the receiver's memory at address `offset`, while it pulls the
    /// rest itself (split single-copy transfer).
    Push = 7,
    /// The sender's answer to [`FrameKind::Push`]: `msg_len` bytes were written (0: the
    /// write failed and the receiver must pull them).
    Pushed = 8,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Eager,
            2 => Self::Rts,
            3 => Self::Cts,
            4 => Self::Data,
            5 => Self::SyncAck,
            6 => Self::Fin,
            7 => Self::Push,
            8 => Self::Pushed,
            _ => return None,
        })
    }
}

/// A decoded frame header. Fields that a kind does not use are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the frame is for.
    pub kind: FrameKind,
    /// Flag bits ([`FLAG_SYNC`]).
    pub flags: u8,
    /// Context of an envelope.
    pub context: ContextId,
    /// The sender.
    pub source: Rank,
    /// Tag of an envelope.
    pub tag: Tag,
    /// Sequence number of an envelope.
    pub seq: Seq,
    /// Message length (envelopes) or accepted length (CTS).
    pub msg_len: u64,
    /// Sender's request (RTS, CTS, ack).
    pub send_req: ReqId,
    /// Receiver's request (CTS, data).
    pub recv_req: ReqId,
    /// Offset of a data chunk.
    pub offset: u64,
    /// Payload bytes following the header.
    pub payload_len: u64,
}

/// Why a header could not be decoded. The peer that sent it is at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("frame header truncated: {0} of {HEADER_LEN} bytes")]
    Truncated(usize),
    /// Byte 0 names no frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Undefined flag bits or non-zero reserved bytes.
    #[error("reserved header bits set (flags {flags:#x}, reserved {reserved:#x})")]
    Reserved {
        /// The flags byte.
        flags: u8,
        /// The reserved bytes.
        reserved: u16,
    },
    /// A tag below zero.
    #[error("negative tag {0}")]
    NegativeTag(i32),
    /// A payload on a kind that has none, a payload over [`MAX_PAYLOAD`], or an eager
    /// payload whose length differs from the message length.
    #[error("bad payload length {payload_len} for {kind:?} frame (message length {msg_len})")]
    PayloadLength {
        /// The frame kind.
        kind: FrameKind,
        /// Declared payload length.
        payload_len: u64,
        /// Declared message length.
        msg_len: u64,
    },
    /// `offset + payload_len` overflows.
    #[error("data chunk offset {offset} + length {payload_len} overflows")]
    Overflow {
        /// Chunk offset.
        offset: u64,
        /// Chunk length.
        payload_len: u64,
    },
}

fn u32_at(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Header {
    /// A header with every optional field zero.
    pub fn new(kind: FrameKind, source: Rank) -> Self {
        Self {
            kind,
            flags: 0,
            context: ContextId(0),
            source,
            tag: Tag(0),
            seq: Seq(0),
            msg_len: 0,
            send_req: ReqId(0),
            recv_req: ReqId(0),
            offset: 0,
            payload_len: 0,
        }
    }

    /// Encodes the header. Cannot fail.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = self.envelope_bytes();
        b[1] = self.flags;
        b[32..40].copy_from_slice(&self.send_req.0.to_le_bytes());
        b[40..48].copy_from_slice(&self.recv_req.0.to_le_bytes());
        b[48..56].copy_from_slice(&self.offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.payload_len.to_le_bytes());
        b
    }

    /// The payload length of an encoded header (either form), read without full validation,
    /// so a stream reader can size its next read. Call [`Header::decode`] before trusting the
    /// frame.
    pub fn peek_payload_len(bytes: &[u8; HEADER_LEN]) -> u64 {
        if bytes[0] & COMPACT != 0 {
            u64_at(bytes, 24)
        } else {
            u64_at(bytes, 56)
        }
    }

    /// Encodes the header in its shortest form: compact ([`COMPACT_LEN`] bytes) for an eager,
    /// non-synchronous message, full otherwise. Returns the buffer and the encoded length.
    pub fn encode_short(&self) -> ([u8; HEADER_LEN], usize) {
        if self.kind == FrameKind::Eager && self.flags == 0 && self.send_req.0 == 0 {
            // Bytes 0..32 of the full form, the compact bit on top of the kind.
            let mut b = self.envelope_bytes();
            b[0] |= COMPACT;
            (b, COMPACT_LEN)
        } else {
            (self.encode(), HEADER_LEN)
        }
    }

    /// The kind and the envelope (bytes 0..32 of either form, without the flags); the rest
    /// zero.
    #[inline]
    fn envelope_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.kind as u8;
        b[4..8].copy_from_slice(&self.context.0.to_le_bytes());
        b[8..12].copy_from_slice(&self.source.0.to_le_bytes());
        b[12..16].copy_from_slice(&self.tag.0.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.msg_len.to_le_bytes());
        b
    }

    /// Decodes and validates a header, in either form (see [`header_len`]).
    ///
    /// # Errors
    /// [`DecodeError`] when the bytes are not a well-formed header; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let first = *bytes.first().ok_or(DecodeError::Truncated(0))?;
        if first & COMPACT != 0 {
            return Self::decode_compact(bytes);
        }
        let b: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Truncated(bytes.len()))?;
        let kind = FrameKind::from_u8(b[0]).ok_or(DecodeError::UnknownKind(b[0]))?;
        let flags = b[1];
        let reserved = u16::from_le_bytes([b[2], b[3]]);
        if flags & !(FLAG_SYNC | FLAG_PULL) != 0 || reserved != 0 {
            return Err(DecodeError::Reserved { flags, reserved });
        }
        let tag = u32_at(b, 12).cast_signed();
        if tag < 0 {
            return Err(DecodeError::NegativeTag(tag));
        }
        let h = Self {
            kind,
            flags,
            context: ContextId(u32_at(b, 4)),
            source: Rank(u32_at(b, 8)),
            tag: Tag(tag),
            seq: Seq(u64_at(b, 16)),
            msg_len: u64_at(b, 24),
            send_req: ReqId(u64_at(b, 32)),
            recv_req: ReqId(u64_at(b, 40)),
            offset: u64_at(b, 48),
            payload_len: u64_at(b, 56),
        };
        let bad_len = match kind {
            FrameKind::Eager => h.payload_len != h.msg_len,
            FrameKind::Data => false,
            FrameKind::Rts
            | FrameKind::Cts
            | FrameKind::SyncAck
            | FrameKind::Fin
            | FrameKind::Push
            | FrameKind::Pushed => h.payload_len != 0,
        };
        if bad_len || h.payload_len > MAX_PAYLOAD {
            return Err(DecodeError::PayloadLength {
                kind,
                payload_len: h.payload_len,
                msg_len: h.msg_len,
            });
        }
        if kind == FrameKind::Data && h.offset.checked_add(h.payload_len).is_none() {
            return Err(DecodeError::Overflow {
                offset: h.offset,
                payload_len: h.payload_len,
            });
        }
        Ok(h)
    }

    /// [`Header::decode`] of the compact form: an eager envelope whose payload length is its
    /// message length and whose request fields and offset are zero, checked as the full form
    /// with those fields would be.
    fn decode_compact(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut b = [0u8; HEADER_LEN];
        b[..COMPACT_LEN].copy_from_slice(
            bytes
                .get(..COMPACT_LEN)
                .ok_or(DecodeError::Truncated(bytes.len()))?,
        );
        if FrameKind::from_u8(b[0] & !COMPACT) != Some(FrameKind::Eager) {
            return Err(DecodeError::UnknownKind(b[0]));
        }
        let flags = b[1];
        let reserved = u16::from_le_bytes([b[2], b[3]]);
        if flags & !(FLAG_SYNC | FLAG_PULL) != 0 || reserved != 0 {
            return Err(DecodeError::Reserved { flags, reserved });
        }
        let tag = u32_at(&b, 12).cast_signed();
        if tag < 0 {
            return Err(DecodeError::NegativeTag(tag));
        }
        let msg_len = u64_at(&b, 24);
        if msg_len > MAX_PAYLOAD {
            return Err(DecodeError::PayloadLength {
                kind: FrameKind::Eager,
                payload_len: msg_len,
                msg_len,
            });
        }
        Ok(Self {
            kind: FrameKind::Eager,
            flags,
            context: ContextId(u32_at(&b, 4)),
            source: Rank(u32_at(&b, 8)),
            tag: Tag(tag),
            seq: Seq(u64_at(&b, 16)),
            msg_len,
            send_req: ReqId(0),
            recv_req: ReqId(0),
            offset: 0,
            payload_len: msg_len,
        })
    }

    /// Whether the synchronous flag is set.
    pub fn is_sync(&self) -> bool {
        self.flags & FLAG_SYNC != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            kind: FrameKind::Eager,
            flags: FLAG_SYNC,
            context: ContextId(7),
            source: Rank(3),
            tag: Tag(42),
            seq: Seq(99),
            msg_len: 5,
            send_req: ReqId(11),
            recv_req: ReqId(0),
            offset: 0,
            payload_len: 5,
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        // Synchronous: no compact form.
        assert_eq!(h.encode_short().1, HEADER_LEN);
        let mut plain = h;
        plain.flags = 0;
        plain.send_req = ReqId(0);
        let (b, n) = plain.encode_short();
        assert_eq!(n, COMPACT_LEN);
        assert_eq!(header_len(b[0]), COMPACT_LEN);
        assert_eq!(Header::decode(&b[..n]), Ok(plain));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(Header::decode(&[0u8; 10]), Err(DecodeError::Truncated(10)));
        assert_eq!(
            Header::decode(&[0x83u8; 40]),
            Err(DecodeError::UnknownKind(0x83))
        );
        let mut b = sample().encode();
        b[0] = 77;
        assert_eq!(Header::decode(&b), Err(DecodeError::UnknownKind(77)));
        let mut b = sample().encode();
        b[1] = 0x80;
        assert!(matches!(
            Header::decode(&b),
            Err(DecodeError::Reserved { .. })
        ));
        let mut h = sample();
        h.payload_len = 4;
        assert!(matches!(
            Header::decode(&h.encode()),
            Err(DecodeError::PayloadLength { .. })
        ));
        let mut h = sample();
        h.tag = Tag(-1);
        assert_eq!(
            Header::decode(&h.encode()),
            Err(DecodeError::NegativeTag(-1))
        );
        let mut h = sample();
        h.kind = FrameKind::Data;
        h.offset = u64::MAX;
        assert!(matches!(
            Header::decode(&h.encode()),
            Err(DecodeError::Overflow { .. })
        ));
    }

    /// The compact form decodes as its full form would: bytes 0..32 without the compact
    /// bit, the payload length equal to the message length, the rest zero.
    #[test]
    fn compact_decodes_as_its_full_form() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for i in 0..50_000 {
            let mut b = [0u8; COMPACT_LEN];
            rng.fill(&mut b[..]);
            // Mostly plausible headers, so that the checks after the kind are reached too.
            if i % 4 != 0 {
                b[0] = FrameKind::Eager as u8;
                b[2..4].fill(0);
                b[15] &= 0x7f;
                b[29..32].fill(0);
                if i % 3 != 0 {
                    b[1] &= FLAG_SYNC | FLAG_PULL;
                }
            }
            b[0] |= COMPACT;
            let mut full = [0u8; HEADER_LEN];
            full[..COMPACT_LEN].copy_from_slice(&b);
            full[0] &= !COMPACT;
            let reference = if FrameKind::from_u8(full[0]) == Some(FrameKind::Eager) {
                full.copy_within(24..32, 56);
                Header::decode(&full)
            } else {
                Err(DecodeError::UnknownKind(b[0]))
            };
            assert_eq!(Header::decode(&b), reference, "compact header {b:?}");
        }
    }

    #[test]
    fn decode_never_panics_on_random_bytes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..20_000 {
            let n = rng.gen_range(0..80);
            let bytes: Vec<u8> = (0..n).map(|_| rng.r#gen()).collect();
            let _ = Header::decode(&bytes);
        }
    }
}
