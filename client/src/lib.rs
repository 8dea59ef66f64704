//! The client library every gateway shares: where a byte of a volume, object or file lives,
//! and (next) the PG map cache, leader routing, retries under a deadline and QoS.
//!
//! Today it holds the two pure pieces the data path is built on:
//!
//! - [`pg_of`]: the placement group of a chunk, `hash(owner, index) mod pg_count`, so no
//!   per-chunk location table exists anywhere (DESIGN.md, "Data model");
//! - [`pieces`]: a byte range of an owner cut at chunk boundaries and at the largest request a
//!   PG takes.
//!
//! Routing, retries and the volume API over the storage nodes are the rest of issue 4.

use cairn_common::{ChunkId, OwnerId, PoolId};

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

/// One piece of a byte range: a request to one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The chunk.
    pub chunk: ChunkId,
    /// Byte offset inside the chunk.
    pub offset: u32,
    /// Bytes.
    pub length: u32,
    /// Where the piece starts in the caller's buffer.
    pub buffer_offset: u64,
}

/// Cuts `length` bytes at byte `offset` of `owner` (in `pool`, with `chunk_size`-byte chunks)
/// into pieces that each stay inside one chunk and hold at most `piece_max` bytes.
pub fn pieces(
    pool: PoolId,
    owner: OwnerId,
    offset: u64,
    length: u64,
    chunk_size: u32,
    piece_max: u32,
) -> impl Iterator<Item = Piece> {
    assert!(chunk_size > 0 && piece_max > 0, "sizes must be positive");
    let end = offset
        .checked_add(length)
        .expect("invariant: callers check ranges against the volume size");
    let chunk_size = u64::from(chunk_size);
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let index = at / chunk_size;
        let within = at % chunk_size;
        let room = (chunk_size - within).min(u64::from(piece_max));
        let take = room.min(end - at);
        let piece = Piece {
            chunk: ChunkId {
                pool,
                owner,
                index: u32::try_from(index).expect("invariant: owners stay below 2^32 chunks"),
            },
            offset: within as u32,
            length: take as u32,
            buffer_offset: at - offset,
        };
        at += take;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Golden values: a change here would move every stored chunk to another PG.
    #[test]
    fn pg_of_is_stable() {
        let got: Vec<u32> = (0..8).map(|i| pg_of(OwnerId(42), i, 128)).collect();
        assert_eq!(got, GOLDEN);
    }

    // Computed independently (Python, same formula).
    const GOLDEN: [u32; 8] = [83, 94, 108, 47, 44, 29, 105, 41];

    #[test]
    fn pg_of_spreads_a_volume_evenly() {
        let pg_count = 64u32;
        let mut counts = vec![0u32; pg_count as usize];
        for owner in 1..=16u64 {
            for index in 0..4096 {
                counts[pg_of(OwnerId(owner), index, pg_count) as usize] += 1;
            }
        }
        let ideal = 16 * 4096 / pg_count;
        for (pg, count) in counts.iter().enumerate() {
            assert!(
                count.abs_diff(ideal) * 10 < ideal,
                "PG {pg} holds {count} chunks, ideal {ideal}"
            );
        }
    }

    proptest! {
        /// The pieces cover the range exactly, in order, each inside one chunk and within
        /// the size limit.
        #[test]
        fn pieces_tile_the_range(
            offset in 0u64..1 << 34,
            length in 0u64..1 << 22,
            chunk_shift in 12u32..23,
            piece_max in 1u32..1 << 21,
        ) {
            let chunk_size = 1u32 << chunk_shift;
            let mut next = offset;
            for piece in pieces(PoolId(1), OwnerId(9), offset, length, chunk_size, piece_max) {
                let start = u64::from(piece.chunk.index) * u64::from(chunk_size) + u64::from(piece.offset);
                prop_assert_eq!(start, next);
                prop_assert_eq!(piece.buffer_offset, next - offset);
                prop_assert!(piece.length > 0 && piece.length <= piece_max);
                prop_assert!(u64::from(piece.offset) + u64::from(piece.length) <= u64::from(chunk_size));
                next += u64::from(piece.length);
            }
            prop_assert_eq!(next, offset + length);
        }

        #[test]
        fn pg_of_stays_in_range(owner: u64, index: u32, pg_count in 1u32..100_000) {
            prop_assert!(pg_of(OwnerId(owner), index, pg_count) < pg_count);
        }
    }
}
