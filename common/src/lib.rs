//! Types every Cairn crate shares: identifiers as newtypes, units and the limits they obey.
//!
//! This crate sits at the bottom of the dependency graph and must not depend on any other Cairn
//! crate, nor do IO. [`checksum`] holds CRC-32C, the checksum of every Cairn on-disk and wire
//! record. Later issues add the error codes, the versioned wire records, the `Env`
//! seam (clock, randomness, spawning) and the transport trait here.

pub mod checksum;

use std::fmt;

use serde::{Deserialize, Serialize};

/// The unit of checksumming and of direct IO: every chunk-store IO is a multiple of it.
pub const BLOCK_SIZE: u32 = 4096;

/// The default chunk size (DESIGN.md: "data lives in 4 MiB chunks").
pub const CHUNK_SIZE_DEFAULT: u32 = 4 << 20;

/// The smallest chunk a store may be formatted with: one block.
pub const CHUNK_SIZE_MIN: u32 = BLOCK_SIZE;

/// The largest chunk a store may be formatted with. 64 MiB keeps a chunk's per-block checksum
/// table at 64 KiB, small enough to rewrite whole at every flush of that chunk.
pub const CHUNK_SIZE_MAX: u32 = 64 << 20;

const _: () = assert!(CHUNK_SIZE_DEFAULT.is_multiple_of(BLOCK_SIZE));
const _: () = assert!(CHUNK_SIZE_MAX.is_multiple_of(BLOCK_SIZE));
const _: () = assert!(CHUNK_SIZE_MIN <= CHUNK_SIZE_DEFAULT && CHUNK_SIZE_DEFAULT <= CHUNK_SIZE_MAX);

/// A storage pool: a replica count, a failure-domain level and a set of placement groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PoolId(pub u32);

/// What a chunk belongs to: a volume, an object or a file, numbered by the metadata service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnerId(pub u64);

/// Names one chunk cluster-wide: the `index`-th chunk-sized piece of `owner` in `pool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId {
    /// The pool whose placement groups hold the chunk.
    pub pool: PoolId,
    /// The volume, object or file the chunk is part of.
    pub owner: OwnerId,
    /// The position of the chunk inside its owner, in chunks.
    pub index: u32,
}

impl ChunkId {
    /// The size of [`ChunkId::to_bytes`].
    pub const ENCODED_SIZE: usize = 16;

    /// Encodes the id in a fixed little-endian layout (on-disk and wire format).
    pub fn to_bytes(self) -> [u8; Self::ENCODED_SIZE] {
        let mut out = [0u8; Self::ENCODED_SIZE];
        out[0..4].copy_from_slice(&self.pool.0.to_le_bytes());
        out[4..12].copy_from_slice(&self.owner.0.to_le_bytes());
        out[12..16].copy_from_slice(&self.index.to_le_bytes());
        out
    }

    /// Decodes what [`ChunkId::to_bytes`] produced.
    pub fn from_bytes(bytes: [u8; Self::ENCODED_SIZE]) -> Self {
        let pool = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let mut owner = [0u8; 8];
        owner.copy_from_slice(&bytes[4..12]);
        let index = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        ChunkId {
            pool: PoolId(pool),
            owner: OwnerId(u64::from_le_bytes(owner)),
            index,
        }
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:x}/{}", self.pool.0, self.owner.0, self.index)
    }
}

/// A process in the cluster that hosts Raft replicas (a metadata server or a storage node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A Raft group: the metadata group, or one placement group. The default, 0, is no group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u64);

impl GroupId {
    /// The metadata service's group.
    pub const META: GroupId = GroupId(1);

    /// Placement group `index` of pool `pool`: the pool in the high 32 bits (plus one, so no
    /// PG collides with the metadata group), the index in the low.
    pub fn pg(pool: PoolId, index: u32) -> GroupId {
        GroupId(((u64::from(pool.0) + 1) << 32) | u64::from(index))
    }

    /// The pool of a PG's group (`None` for the metadata group).
    pub fn pool(self) -> Option<PoolId> {
        let high = self.0 >> 32;
        (high > 0).then(|| PoolId((high - 1) as u32))
    }

    /// The PG's index in its pool's PG map.
    pub fn pg_index(self) -> u32 {
        self.0 as u32
    }

    /// True if `chunk` belongs to this PG of a pool of `pg_count` PGs.
    pub fn holds(self, chunk: ChunkId, pg_count: u32) -> bool {
        self.pool() == Some(chunk.pool)
            && pg_of(chunk.owner, chunk.index, pg_count) == self.pg_index()
    }
}

/// The placement group (0-based index into the pool's PG map) holding chunk `index` of
/// `owner`, for a pool of `pg_count` PGs. Stable forever: changing it moves every chunk.
///
/// The hash is the SplitMix64 finalizer over the owner mixed with the index: cheap,
/// well-distributed for sequential indexes and owners, and specified here rather than borrowed
/// from a library whose output could change with a version.
pub fn pg_of(owner: OwnerId, index: u32, pg_count: u32) -> u32 {
    assert!(pg_count > 0, "a pool has at least one PG");
    let mut x = owner.0 ^ (u64::from(index)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    // Lemire's multiply-shift range reduction: unbiased enough and no division.
    ((u128::from(x) * u128::from(pg_count)) >> 64) as u32
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// One member of one Raft group: the peer id raft-rs knows it by. A node hosts many replicas
/// (of different groups; of the same group only in `cairn dev`, where disks of one node are the
/// failure domains), and a replica lost with its disk is replaced by a new replica with a new
/// id, never re-created under the old one: the old id may have voted in terms the new replica
/// knows nothing of, and voting again in them could elect two leaders in one term.
///
/// The id encodes the node that hosts the replica (the high [`ReplicaId::NODE_BITS`] bits) and
/// a number the node's allocator never reuses (the low bits), so any node can route a message
/// to a replica without a directory, and a transport can check that a node only speaks for
/// replicas it hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplicaId(pub u64);

impl ReplicaId {
    /// Bits of the node id. 2^24 nodes are far beyond any cluster this design serves.
    pub const NODE_BITS: u32 = 24;
    /// Bits of the per-node replica number: 2^40 replicas created per node over its life.
    pub const NUMBER_BITS: u32 = 64 - Self::NODE_BITS;
    /// The largest node id a replica id can carry.
    pub const NODE_MAX: u64 = (1 << Self::NODE_BITS) - 1;
    /// The largest per-node replica number.
    pub const NUMBER_MAX: u64 = (1 << Self::NUMBER_BITS) - 1;

    /// Replica `number` (at least 1) of `node` (1 to [`ReplicaId::NODE_MAX`]).
    pub fn new(node: NodeId, number: u64) -> ReplicaId {
        assert!(
            (1..=Self::NODE_MAX).contains(&node.0),
            "node id {} out of range",
            node.0
        );
        assert!(
            (1..=Self::NUMBER_MAX).contains(&number),
            "replica number {number} out of range"
        );
        ReplicaId((node.0 << Self::NUMBER_BITS) | number)
    }

    /// The node hosting this replica.
    pub fn node(self) -> NodeId {
        NodeId(self.0 >> Self::NUMBER_BITS)
    }

    /// The replica's number on its node.
    pub fn number(self) -> u64 {
        self.0 & Self::NUMBER_MAX
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.r{}", self.node(), self.number())
    }
}

/// A disk's identity: the UUID in its label, stable when the disk changes slot or path.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DiskId(pub [u8; 16]);

impl fmt::Display for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for DiskId {
    type Err = String;

    /// Parses a UUID as [`DiskId`]'s `Display` writes it (dashes optional, either case).
    fn from_str(text: &str) -> Result<DiskId, String> {
        let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
        let invalid = || format!("disk id {text:?} is not a UUID");
        if hex.len() != 32 {
            return Err(invalid());
        }
        let mut id = [0u8; 16];
        for (byte, pair) in id.iter_mut().zip(hex.chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| invalid())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| invalid())?;
        }
        Ok(DiskId(id))
    }
}

impl fmt::Debug for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiskId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_round_trips() {
        let id = ChunkId {
            pool: PoolId(7),
            owner: OwnerId(0xdead_beef_0042),
            index: 99,
        };
        assert_eq!(ChunkId::from_bytes(id.to_bytes()), id);
        assert_eq!(id.to_string(), "7/deadbeef0042/99");
    }

    #[test]
    fn replica_id_carries_its_node() {
        let id = ReplicaId::new(NodeId(7), 3);
        assert_eq!(id.node(), NodeId(7));
        assert_eq!(id.number(), 3);
        assert_eq!(id.to_string(), "n7.r3");
        let max = ReplicaId::new(NodeId(ReplicaId::NODE_MAX), ReplicaId::NUMBER_MAX);
        assert_eq!(max.0, u64::MAX);
        assert_eq!(max.node(), NodeId(ReplicaId::NODE_MAX));
    }

    #[test]
    fn disk_id_formats_as_uuid() {
        let id = DiskId([0x12; 16]);
        assert_eq!(id.to_string(), "12121212-1212-1212-1212-121212121212");
        assert_eq!(id.to_string().parse::<DiskId>(), Ok(id));
        assert_eq!("12121212121212121212121212121212".parse::<DiskId>(), Ok(id));
        assert!("1212".parse::<DiskId>().is_err());
        assert!(
            "zz121212-1212-1212-1212-121212121212"
                .parse::<DiskId>()
                .is_err()
        );
    }
}
