//! The PMI-1 "simple" wire protocol, as MPICH's simple PMI client and its hydra `mpiexec` speak
//! it: the way ranks of a job learn who they are and exchange business cards at start-up.
//!
//! This crate holds three pieces that share one codec:
//! - [`Command`] and [`LineReader`] ([`wire`]): the text codec, `cmd=NAME key=value ...\n`.
//!   Decoding never panics; malformed or over-long lines are errors ([`DecodeError`]).
//! - [`PmiClient`] ([`client`]): used by the runtime in each rank. It connects through
//!   `PMI_FD` (an inherited socket, hydra's way) or `PMI_PORT` + `PMI_ID` (a TCP address,
//!   Braid's `mpirun` way), then offers `put`, `barrier`, `get`, `abort` and `finalize`.
//!   Every read has a deadline.
//! - [`KvsServer`] ([`server`]): the server side as a sans-IO state machine. `mpirun` feeds
//!   it decoded lines per connection and sends what it returns; it does no I/O itself, so it
//!   is tested without sockets. [`ThreadedServer`] ([`serve`]) drives it over TCP with threads.
//!
//! What this crate does not do: it does not spawn or watch processes (the launcher does), it
//! does not implement PMI-2 or the `mcmd=spawn` dynamic-process commands, and it does not
//! authenticate peers: anyone who can reach the server's port can speak to it, so the
//! launcher binds it to loopback unless the job spans hosts. Nothing read from the wire is
//! trusted: lengths are capped and every field is checked before use.
//!
//! # Glossary
//! - *rank*: a process's index in the job, `0..size`.
//! - *KVS*: the job-wide key-value space; one per job, named by its *kvsname*.
//! - *business card*: the value a rank `put`s so that others can reach it (addresses,
//!   shared-segment names); written before a barrier, read after it.
//! - *barrier*: `barrier_in` from every rank releases all of them with `barrier_out`; it is
//!   also the point after which all earlier `put`s are visible to `get`.
//! - *PMI id*: the number a `PMI_PORT` client announces in its first line (`cmd=initack
//!   pmiid=N`); Braid's `mpirun` sets it to the rank.
//!
//! # Standard section(s)
//! PMI is not part of the MPI standard; MPI-4.1 §11.8 (process startup) leaves it to the
//! implementation. The wire format follows MPICH's `src/pmi/simple` and hydra's PMI-1 server.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod client;
pub mod serve;
pub mod server;
mod sys;
pub mod wire;

pub use client::{Handshake, Maxes, PmiClient, PmiError, PmiStream};
pub use serve::ThreadedServer;
pub use server::{ConnId, KvsServer, ServerEvent, Transmit};
pub use wire::{Command, DecodeError, LineReader, MAX_LINE_LEN, WireError};
