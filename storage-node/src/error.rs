//! The storage node's error type: one enum, structured fields, every variant classified.

use std::{io, path::PathBuf};

use cairn_common::ChunkId;

/// How a caller should react to an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later: a queue or pool was full.
    Retryable,
    /// Stored data failed its checksum: repair it from a replica; never serve it.
    Corrupt,
    /// The request itself was wrong (range, missing chunk): retrying cannot help.
    Invalid,
    /// The disk or its files failed: stop using this disk until an operator looks.
    Fatal,
}

/// Everything the IO engines and the chunk store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "fdatasync", ...).
        op: &'static str,
        /// The file it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A block's CRC-32C did not match its data: the data is never returned.
    #[error("checksum mismatch: chunk {chunk} block {block_index}")]
    Corrupt {
        /// The chunk holding the block.
        chunk: ChunkId,
        /// The block's index inside the chunk.
        block_index: u32,
    },
    /// The chunk does not exist on this disk.
    #[error("chunk {chunk} not found")]
    NotFound {
        /// The chunk asked for.
        chunk: ChunkId,
    },
    /// The chunk exists already.
    #[error("chunk {chunk} already exists")]
    AlreadyExists {
        /// The chunk asked for.
        chunk: ChunkId,
    },
    /// An IO range does not fit inside a chunk or exceeds the largest IO.
    #[error(
        "range {offset_bytes}+{size_bytes} invalid for chunk {chunk} (chunk size {chunk_size_bytes}, io size max {io_size_max})"
    )]
    OutOfRange {
        /// The chunk addressed.
        chunk: ChunkId,
        /// The requested offset inside the chunk.
        offset_bytes: u64,
        /// The requested length.
        size_bytes: u64,
        /// The store's chunk size.
        chunk_size_bytes: u32,
        /// The largest single IO the store accepts.
        io_size_max: u32,
    },
    /// The file system holding the disk is full.
    #[error("no space left for a new chunk file in {path}")]
    NoSpace {
        /// The data directory.
        path: PathBuf,
    },
    /// The engine's submission queue is full.
    #[error("IO queue full")]
    Busy,
    /// The engine stopped (its thread exited).
    #[error("IO engine stopped")]
    EngineStopped,
    /// The disk was taken out of service after an earlier IO on it failed
    /// ([`crate::ChunkStore::fail`]); nothing more is read from or written to it.
    #[error("disk failed earlier: {reason}")]
    DiskFailed {
        /// What failed first.
        reason: String,
    },
    /// A label or chunk file is not in a format this build understands.
    #[error("{path}: {reason}")]
    BadFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// Classifies the error for retry and repair decisions.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Busy => ErrorClass::Retryable,
            Error::Corrupt { .. } => ErrorClass::Corrupt,
            Error::NotFound { .. } | Error::AlreadyExists { .. } | Error::OutOfRange { .. } => {
                ErrorClass::Invalid
            }
            Error::Io { .. }
            | Error::NoSpace { .. }
            | Error::EngineStopped
            | Error::DiskFailed { .. }
            | Error::BadFormat { .. } => ErrorClass::Fatal,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return Error::NoSpace { path };
        }
        // The engines report a full queue and a stopped thread with these kinds.
        match source.kind() {
            io::ErrorKind::WouldBlock => return Error::Busy,
            io::ErrorKind::BrokenPipe => return Error::EngineStopped,
            _ => {}
        }
        Error::Io { op, path, source }
    }
}

/// The storage node's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
