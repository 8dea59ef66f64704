//! The Cairn storage node's local storage: IO engines and the checksummed chunk store.
//!
//! - [`io`]: how bytes reach a disk: io_uring on a thread per disk, a positioned-IO fallback,
//!   and a fault-injecting wrapper; owned, aligned buffers from a bounded pool.
//! - [`chunk`]: fixed-size chunks in preallocated files with a CRC-32C per 4 KiB block, verified
//!   on every read, with documented flush semantics and crash ordering.
//! - [`label`]: the disk label whose UUID identifies a disk wherever it is mounted.
//! - [`pg`]: placement-group replicas as Raft groups applying committed writes and discards
//!   to the chunk store of their disk; linearizable reads.
//!
//! Later issues add the read cache, disk health scoring and the `cairn node` server here. This crate must not depend on the
//! metadata service or any gateway.

pub mod chunk;
pub mod error;
pub mod io;
mod join;
pub mod label;
pub mod pg;

pub use cairn_common::checksum;
pub use chunk::{ChunkStore, ChunkStoreOptions, ReadBuf};
pub use error::{Error, ErrorClass, Result};
