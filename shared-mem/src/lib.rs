//! Braid's intra-node transport substrate: named shared-memory [`Segment`]s, lock-free
//! single-producer single-consumer byte rings inside them, fast boxes of stamped slots for
//! small frames ([`FastboxProducer`]), [`Doorbell`]s to sleep on, and
//! single-copy cross-memory reads ([`cma_read`]) for large messages.
//!
//! Ranks on one host each own a segment (`/dev/shm/braid-<jobid>-<rank>`); a peer writes to
//! a ring in the receiver's segment ([`RingProducer::write`]) and rings its doorbell; the
//! receiver polls its rings ([`RingConsumer::read`]) and sleeps on the doorbell when they
//! are empty. Large payloads go by rendezvous: the receiver reads them straight out of the
//! sender's memory with [`cma_read`].
//!
//! # What this crate does not do
//!
//! - No framing, matching or protocol: the rings carry bytes; the transport on top
//!   (`transport` module, owned by the runtime) frames them.
//! - No I/O besides the syscalls in the private `sys` module (open/mmap/futex/`process_vm_readv`/prctl), and
//!   no threads or clocks of its own (timeouts are passed in).
//! - No trust boundary: peers are processes of the same job and user. Data from a peer is
//!   never used to index memory unchecked, so a *buggy* peer cannot make us touch memory
//!   outside a ring, but it can garble the bytes it sends.
//! - Linux only; other targets compile (see the `sys` module) and report `Unsupported`.
//!
//! # Glossary
//!
//! - **rank**: a process of an MPI job, numbered from 0.
//! - **segment**: a shared-memory file mapped by several ranks on one host ([`Segment`]).
//! - **ring**: a bounded SPSC byte queue at an offset in a segment ([`format_ring`]).
//! - **fast box**: a bounded SPSC queue of small records in stamped slots, which the reader
//!   polls on the data's own cache line ([`format_fastbox`]).
//! - **doorbell**: a futex word a sleeping receiver waits on ([`Doorbell`]).
//! - **eager**: a message copied through a ring; **rendezvous**: a large message announced
//!   through the ring and pulled by the receiver with [`cma_read`].
//! - **rail**: a network path between hosts; none here — this crate is the on-host path.
//! - **context**: a communicator's matching scope; not visible at this layer.
//!
//! # Testing
//!
//! Unit tests run with `cargo test -p braid-shm`; the rings are model-checked with loom by
//! `shared-mem/ci/loom.sh` (`RUSTFLAGS="--cfg braid_loom"`); `cargo bench -p braid-shm`
//! measures ring throughput and ping-pong latency.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod cache_padded;
mod cma;
mod doorbell;
mod error;
mod fastbox;
mod huge;
mod primitive;
mod ring;
mod segment;
mod sys;
pub mod transport;

pub use cma::{
    MAX_PARTS, ReadPart, allow_ptrace_from_any, cma_probe, cma_read, cma_read_many, cma_write,
};
pub use doorbell::{DOORBELL_FOOTPRINT, DOORBELL_MAGIC, Doorbell, format_doorbell};
pub use error::OsError;
pub use fastbox::{
    FASTBOX_FOOTPRINT, FASTBOX_MAGIC, FASTBOX_RECORD, FASTBOX_SLOTS, FastboxConsumer,
    FastboxProducer, attach_fastbox_consumer, attach_fastbox_producer, format_fastbox,
};
pub use huge::{HugeBacking, MIN_OVERLAP};
pub use primitive::{process_barrier, register_process_barrier};
pub use ring::{
    MAX_RING_CAPACITY, RING_ALIGN, RING_HEADER_LEN, RING_MAGIC, RingConsumer, RingProducer,
    attach_consumer, attach_producer, format_ring, ring_footprint,
};
pub use segment::{Segment, unlink_job_segments};
