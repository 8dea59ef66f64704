//! Commands in a placement group's Raft log: what a PG's replicas apply to their chunk stores.
//!
//! # Format, version 1
//!
//! ```text
//! version      u8    1
//! kind         u8    1 write, 2 compact, 3 discard, 4 digest
//! incarnation  u64   the proposing host's incarnation (answers go only to it)
//! request      u64   the proposer's request number
//! write:
//!   chunk      16    ChunkId::to_bytes
//!   offset     u32   byte offset inside the chunk
//!   length     u32   bytes of data that follow
//!   data
//! compact:
//!   index      u64   every replica compacts its log up to here
//! discard:
//!   chunk      16    ChunkId::to_bytes
//!   offset     u32   byte offset inside the chunk
//!   length     u32   bytes that read as zeros afterwards (no data follows)
//! digest:
//!   (no body)        every replica records a digest of its chunks as of this entry
//! ```
//!
//! All integers little endian. The log record around an entry carries its checksum; this
//! format only has to refuse what it does not understand, never guess.
//!
//! Kind 3 (discard) came after the first release of version 1. It is a new kind, not a new
//! version, because every entry written before it still decodes the same; but a build that
//! predates it skips a discard as undecodable, so every replica of a PG must run a build that
//! knows it before discards are proposed. Kind 4 (digest) came later still, the same way; a
//! build that predates it stops applying at one (see `PgHost::apply_entry`), so every node must
//! run a build that knows it before its leaders propose digests.

use cairn_common::{CHUNK_SIZE_MAX, ChunkId};

/// The version this build writes and reads.
pub const COMMAND_VERSION: u8 = 1;

/// The largest write one log entry carries. Callers split bigger writes (the client splits at
/// chunk boundaries and at this size): 1 MiB keeps an entry within one Raft append message.
pub const WRITE_BYTES_MAX: usize = 1 << 20;

const KIND_WRITE: u8 = 1;
const KIND_COMPACT: u8 = 2;
const KIND_DISCARD: u8 = 3;
const KIND_DIGEST: u8 = 4;
const HEADER_BYTES: usize = 1 + 1 + 8 + 8;
const WRITE_HEADER_BYTES: usize = ChunkId::ENCODED_SIZE + 4 + 4;
const DISCARD_BYTES: usize = ChunkId::ENCODED_SIZE + 4 + 4;

/// The largest discard one log entry carries: a whole chunk of the largest size. It carries
/// no data, so a discard is bounded by the chunk, not by [`WRITE_BYTES_MAX`].
pub const DISCARD_BYTES_MAX: u32 = CHUNK_SIZE_MAX;

/// What a PG's replicas do to their chunk stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgCommand {
    /// Write `data` at `offset` of `chunk`, creating the chunk if it does not exist yet.
    Write {
        /// The chunk.
        chunk: ChunkId,
        /// Byte offset inside the chunk.
        offset: u32,
        /// The bytes, at most [`WRITE_BYTES_MAX`].
        data: Vec<u8>,
    },
    /// Make `length` bytes at `offset` of `chunk` read as zeros, deallocating what they held
    /// (SCSI UNMAP); a chunk left empty is deleted, one that does not exist stays so.
    Discard {
        /// The chunk.
        chunk: ChunkId,
        /// Byte offset inside the chunk.
        offset: u32,
        /// Bytes, at most [`DISCARD_BYTES_MAX`] (and the chunk size, checked at proposal).
        length: u32,
    },
    /// Make the chunk store durable and compact the log up to `index`, chosen by the leader
    /// as an index every member holds, so that all replicas drop the same prefix and none
    /// ever needs a snapshot from another (TiKV's CompactLog, for the same reason).
    Compact {
        /// The last index to drop.
        index: u64,
    },
    /// Record a digest of the PG's chunks as they stand after the entries before this one
    /// (`ChunkStore::content_digest`). Every replica applies it at the same index, so their
    /// digests compare without stopping writes.
    Digest,
}

/// A command with the envelope that lets its proposer recognise it when it is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The proposing host's incarnation.
    pub incarnation: u64,
    /// The proposer's request number.
    pub request: u64,
    /// The command.
    pub command: PgCommand,
}

/// Why bytes are not a command.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Shorter than its header or its declared length.
    #[error("command truncated: {0} bytes")]
    Truncated(usize),
    /// Written by another format version.
    #[error("command format version {0}, this build reads {COMMAND_VERSION}")]
    Version(u8),
    /// A kind this build does not know.
    #[error("unknown command kind {0}")]
    Kind(u8),
    /// The declared length disagrees with the bytes present, or exceeds the limit.
    #[error("write of {declared} bytes in a command holding {present}")]
    Length {
        /// The length field.
        declared: u32,
        /// The bytes after the header.
        present: usize,
    },
    /// A discard longer than [`DISCARD_BYTES_MAX`].
    #[error("discard of {0} bytes, more than {DISCARD_BYTES_MAX}")]
    DiscardLength(u32),
}

impl Proposal {
    /// Encodes the proposal for the log.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + WRITE_HEADER_BYTES);
        out.push(COMMAND_VERSION);
        out.push(match self.command {
            PgCommand::Write { .. } => KIND_WRITE,
            PgCommand::Compact { .. } => KIND_COMPACT,
            PgCommand::Discard { .. } => KIND_DISCARD,
            PgCommand::Digest => KIND_DIGEST,
        });
        out.extend_from_slice(&self.incarnation.to_le_bytes());
        out.extend_from_slice(&self.request.to_le_bytes());
        match &self.command {
            PgCommand::Write {
                chunk,
                offset,
                data,
            } => {
                assert!(
                    data.len() <= WRITE_BYTES_MAX,
                    "write of {} bytes",
                    data.len()
                );
                out.extend_from_slice(&chunk.to_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                let length = u32::try_from(data.len()).expect("invariant: at most WRITE_BYTES_MAX");
                out.extend_from_slice(&length.to_le_bytes());
                out.extend_from_slice(data);
            }
            PgCommand::Compact { index } => out.extend_from_slice(&index.to_le_bytes()),
            PgCommand::Discard {
                chunk,
                offset,
                length,
            } => {
                assert!(*length <= DISCARD_BYTES_MAX, "discard of {length} bytes");
                out.extend_from_slice(&chunk.to_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&length.to_le_bytes());
            }
            PgCommand::Digest => {}
        }
        out
    }

    /// Decodes what [`Proposal::encode`] produced; anything else is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Proposal, CommandError> {
        if bytes.len() < HEADER_BYTES {
            return Err(CommandError::Truncated(bytes.len()));
        }
        if bytes[0] != COMMAND_VERSION {
            return Err(CommandError::Version(bytes[0]));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let (incarnation, request) = (u64_at(2), u64_at(10));
        let body = &bytes[HEADER_BYTES..];
        let command = match bytes[1] {
            KIND_WRITE => {
                if body.len() < WRITE_HEADER_BYTES {
                    return Err(CommandError::Truncated(bytes.len()));
                }
                let id: [u8; ChunkId::ENCODED_SIZE] = body[..ChunkId::ENCODED_SIZE]
                    .try_into()
                    .expect("invariant: sliced to size");
                let u32_at =
                    |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4"));
                let offset = u32_at(ChunkId::ENCODED_SIZE);
                let declared = u32_at(ChunkId::ENCODED_SIZE + 4);
                let data = &body[WRITE_HEADER_BYTES..];
                if declared as usize != data.len() || data.len() > WRITE_BYTES_MAX {
                    return Err(CommandError::Length {
                        declared,
                        present: data.len(),
                    });
                }
                PgCommand::Write {
                    chunk: ChunkId::from_bytes(id),
                    offset,
                    data: data.to_vec(),
                }
            }
            KIND_COMPACT => {
                let index: [u8; 8] = body
                    .try_into()
                    .map_err(|_| CommandError::Truncated(bytes.len()))?;
                PgCommand::Compact {
                    index: u64::from_le_bytes(index),
                }
            }
            KIND_DISCARD => decode_discard(body, bytes.len())?,
            KIND_DIGEST if body.is_empty() => PgCommand::Digest,
            KIND_DIGEST => {
                return Err(CommandError::Length {
                    declared: 0,
                    present: body.len(),
                });
            }
            other => return Err(CommandError::Kind(other)),
        };
        Ok(Proposal {
            incarnation,
            request,
            command,
        })
    }
}

/// Decodes the body of a discard, which must be exactly the size of one (`total` is the
/// command's size, for the error).
fn decode_discard(body: &[u8], total: usize) -> Result<PgCommand, CommandError> {
    if body.len() != DISCARD_BYTES {
        return Err(CommandError::Truncated(total));
    }
    let id: [u8; ChunkId::ENCODED_SIZE] = body[..ChunkId::ENCODED_SIZE]
        .try_into()
        .expect("invariant: sliced to size");
    let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4"));
    let offset = u32_at(ChunkId::ENCODED_SIZE);
    let length = u32_at(ChunkId::ENCODED_SIZE + 4);
    if length > DISCARD_BYTES_MAX {
        return Err(CommandError::DiscardLength(length));
    }
    Ok(PgCommand::Discard {
        chunk: ChunkId::from_bytes(id),
        offset,
        length,
    })
}

#[cfg(test)]
mod tests {
    use cairn_common::{OwnerId, PoolId};
    use proptest::prelude::*;

    use super::*;

    fn write(data: Vec<u8>) -> Proposal {
        Proposal {
            incarnation: 7,
            request: 9,
            command: PgCommand::Write {
                chunk: ChunkId {
                    pool: PoolId(1),
                    owner: OwnerId(2),
                    index: 3,
                },
                offset: 4096,
                data,
            },
        }
    }

    fn discard(offset: u32, length: u32) -> Proposal {
        Proposal {
            incarnation: 7,
            request: 9,
            command: PgCommand::Discard {
                chunk: ChunkId {
                    pool: PoolId(1),
                    owner: OwnerId(2),
                    index: 3,
                },
                offset,
                length,
            },
        }
    }

    /// Golden bytes: a change to the format must change the version.
    #[test]
    fn write_encodes_to_the_documented_layout() {
        let bytes = write(b"ab".to_vec()).encode();
        let mut expected = vec![1u8, 1];
        expected.extend_from_slice(&7u64.to_le_bytes());
        expected.extend_from_slice(&9u64.to_le_bytes());
        expected.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0]);
        expected.extend_from_slice(&4096u32.to_le_bytes());
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(b"ab");
        assert_eq!(bytes, expected);
        assert_eq!(Proposal::decode(&bytes), Ok(write(b"ab".to_vec())));
    }

    #[test]
    fn compact_round_trips_and_refuses_a_short_index() {
        let compact = Proposal {
            incarnation: 1,
            request: 0,
            command: PgCommand::Compact { index: 77 },
        };
        let bytes = compact.encode();
        assert_eq!(bytes.len(), 18 + 8);
        assert_eq!(bytes[1], 2);
        assert_eq!(Proposal::decode(&bytes), Ok(compact));
        assert!(Proposal::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    /// Golden bytes of a digest: the header alone; anything after it is refused.
    #[test]
    fn digest_is_a_header_alone() {
        let digest = Proposal {
            incarnation: 3,
            request: 0,
            command: PgCommand::Digest,
        };
        let bytes = digest.encode();
        let mut expected = vec![1u8, 4];
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(Proposal::decode(&bytes), Ok(digest));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Proposal::decode(&longer).is_err());
    }

    /// Goal: entries logged before discards existed decode as they did. Method: a compaction
    /// spelled out byte by byte (the write's golden bytes are above).
    #[test]
    fn a_compaction_logged_before_discards_still_decodes() {
        let mut golden = vec![1u8, 2];
        golden.extend_from_slice(&1u64.to_le_bytes());
        golden.extend_from_slice(&0u64.to_le_bytes());
        golden.extend_from_slice(&[77, 0, 0, 0, 0, 0, 0, 0]);
        let expected = Proposal {
            incarnation: 1,
            request: 0,
            command: PgCommand::Compact { index: 77 },
        };
        assert_eq!(Proposal::decode(&golden), Ok(expected));
    }

    /// Golden bytes of a discard: kind 3, then the chunk, offset and length, and no data.
    #[test]
    fn discard_encodes_to_the_documented_layout() {
        let proposal = discard(8192, 4 << 20);
        let bytes = proposal.encode();
        let mut expected = vec![1u8, 3];
        expected.extend_from_slice(&7u64.to_le_bytes());
        expected.extend_from_slice(&9u64.to_le_bytes());
        expected.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0]);
        expected.extend_from_slice(&[0, 0x20, 0, 0]);
        expected.extend_from_slice(&[0, 0, 0x40, 0]);
        assert_eq!(bytes, expected);
        assert_eq!(Proposal::decode(&bytes), Ok(proposal));
    }

    /// Goal: a discard of the wrong size or beyond the largest chunk is refused, not guessed
    /// at. Method: cut and extend a valid one; set its length past the limit.
    #[test]
    fn discards_of_the_wrong_size_or_length_are_refused() {
        let bytes = discard(0, DISCARD_BYTES_MAX).encode();
        assert_eq!(bytes.len(), 18 + 24);
        assert!(Proposal::decode(&bytes).is_ok());
        let short = &bytes[..bytes.len() - 1];
        assert_eq!(
            Proposal::decode(short),
            Err(CommandError::Truncated(short.len()))
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Proposal::decode(&longer).is_err());
        let mut too_long = bytes.clone();
        let at = too_long.len() - 4;
        too_long[at..].copy_from_slice(&(DISCARD_BYTES_MAX + 1).to_le_bytes());
        assert_eq!(
            Proposal::decode(&too_long),
            Err(CommandError::DiscardLength(DISCARD_BYTES_MAX + 1))
        );
    }

    #[test]
    fn other_versions_and_kinds_are_refused() {
        let mut bytes = write(vec![1; 10]).encode();
        bytes[0] = 2;
        assert_eq!(Proposal::decode(&bytes), Err(CommandError::Version(2)));
        bytes[0] = 1;
        bytes[1] = 9;
        assert_eq!(Proposal::decode(&bytes), Err(CommandError::Kind(9)));
    }

    proptest! {
        #[test]
        fn round_trips(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            offset in any::<u32>(),
            length in 0..=DISCARD_BYTES_MAX,
        ) {
            let proposal = write(data);
            prop_assert_eq!(Proposal::decode(&proposal.encode()), Ok(proposal));
            let proposal = discard(offset, length);
            prop_assert_eq!(Proposal::decode(&proposal.encode()), Ok(proposal));
        }

        /// No input makes decoding panic; a truncated or extended command is refused.
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128), cut in 0usize..64) {
            let _ = Proposal::decode(&bytes);
            let good = write(vec![5; 20]).encode();
            let cut = cut.min(good.len() - 1);
            prop_assert!(Proposal::decode(&good[..cut]).is_err());
            let mut longer = good.clone();
            longer.push(0);
            prop_assert!(Proposal::decode(&longer).is_err());
            let good = discard(4096, 8192).encode();
            prop_assert!(Proposal::decode(&good[..cut.min(good.len() - 1)]).is_err());
            let mut longer = good.clone();
            longer.push(0);
            prop_assert!(Proposal::decode(&longer).is_err());
            // Any bytes after a discard's header decode to a discard or an error.
            let mut noisy = good.clone();
            noisy.truncate(HEADER_BYTES);
            noisy.extend(bytes.iter().take(DISCARD_BYTES));
            let _ = Proposal::decode(&noisy);
        }
    }
}
