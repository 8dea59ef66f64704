//! A digest of what a set of chunks holds, from the block checksums in memory: no disk reads.
//!
//! Replicas of one PG compare these (taken at the same log index) to find one that applied
//! something differently: a block written wrong with a checksum that matches it passes every
//! read and every scrub, but not this comparison.

use cairn_common::{
    BLOCK_SIZE, ChunkId,
    checksum::{Digest64, crc32c},
};

use super::ChunkStore;

impl ChunkStore {
    /// The digest of what `chunks` read as, in id order. Equal on two stores exactly when every
    /// block of those chunks reads the same on both (up to CRC collisions), however it got
    /// there: a block never written, one discarded and one written with zeros all count as
    /// zeros, and a chunk that reads as zeros throughout counts as absent (a copied replica
    /// keeps thin what its source wrote with zeros). Chunks not in this store count as absent.
    pub fn content_digest(&self, chunks: &[ChunkId]) -> u64 {
        let zeros = crc32c(&[0u8; BLOCK_SIZE as usize]);
        let mut ids = chunks.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut digest = Digest64::new();
        let mut bytes = Vec::new();
        for id in ids {
            let Ok(chunk) = self.chunk(id) else {
                continue;
            };
            bytes.clear();
            let mut all_zeros = true;
            {
                let meta = chunk.meta();
                if meta.deleted {
                    continue;
                }
                for block in 0..self.geometry.block_count() {
                    let crc = if meta.image.is_written(block) {
                        meta.image.crcs[block as usize]
                    } else {
                        zeros
                    };
                    all_zeros &= crc == zeros;
                    bytes.extend_from_slice(&crc.to_le_bytes());
                }
            }
            if all_zeros {
                continue;
            }
            digest.update(&id.to_bytes());
            digest.update(&bytes);
        }
        digest.finish()
    }
}
