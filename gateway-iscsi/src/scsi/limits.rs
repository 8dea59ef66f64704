//! The limits this logical unit advertises in the block limits VPD page and enforces.
//!
//! Limits are chosen in bytes, then expressed in logical blocks of the device's block size,
//! so a 4096-byte LUN and a 512-byte LUN move the same amount of memory per command.

use cairn_common::{BLOCK_SIZE, CHUNK_SIZE_DEFAULT};

/// The largest READ or WRITE, in bytes: one default chunk (4 MiB). A command's data sits in
/// memory whole, so with the iSCSI layer's command window of 128 a session pins at most
/// 512 MiB. Linux caps its requests to this (max_hw_sectors_kb).
pub const TRANSFER_BYTES_MAX: u32 = CHUNK_SIZE_DEFAULT;

/// The most bytes one UNMAP (all descriptors together) or WRITE SAME may cover: 256 MiB,
/// 64 default chunks, so one command stays well under the initiator's command timeout even
/// when the backend deallocates chunk by chunk.
pub const UNMAP_BYTES_MAX: u64 = 256 << 20;

/// The most block descriptors in one UNMAP parameter list. 8 + 16 x 256 = 4104 bytes of
/// parameter data.
pub const UNMAP_DESCRIPTORS_MAX: u32 = 256;

/// The most bytes one WRITE SAME may cover; it writes in pieces of [`TRANSFER_BYTES_MAX`].
pub const WRITE_SAME_BYTES_MAX: u64 = UNMAP_BYTES_MAX;

/// The most blocks one WRITE SAME may cover whatever the block size: what WRITE SAME (10)'s
/// 16-bit length can say, so both forms share one limit (32 MiB at 512-byte blocks; at
/// 4096-byte blocks [`WRITE_SAME_BYTES_MAX`] binds first). Initiators discard through
/// UNMAP, whose limit is larger; this keeps a WRITE SAME's work near a READ's or WRITE's.
pub const WRITE_SAME_BLOCKS_MAX: u64 = u16::MAX as u64;

/// The most blocks one COMPARE AND WRITE may cover. VMware's ATS uses one; 16 blocks keep
/// the exclusive section short (64 KiB at 4096-byte blocks).
pub const COMPARE_AND_WRITE_BLOCKS_MAX: u8 = 16;

/// The logical block sizes a device may have.
pub const BLOCK_SIZES: [u32; 2] = [512, 4096];

const _: () = assert!(TRANSFER_BYTES_MAX.is_multiple_of(4096));
const _: () = assert!(UNMAP_BYTES_MAX.is_multiple_of(TRANSFER_BYTES_MAX as u64));
const _: () = assert!(BLOCK_SIZE.is_multiple_of(512) && BLOCK_SIZE >= 4096);
// The UNMAP parameter list must fit the 16-bit PARAMETER LIST LENGTH.
const _: () = assert!(8 + 16 * UNMAP_DESCRIPTORS_MAX <= u16::MAX as u32);

/// The device's shape: how big a block is and how many there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// The logical block size in bytes (512 or 4096).
    pub block_size: u32,
    /// How many logical blocks the device has.
    pub block_count: u64,
}

impl Geometry {
    /// Whether `blocks` blocks from `lba` lie within the device. SBC-4 says an LBA past the
    /// last one is out of range even for a zero-length transfer.
    pub fn contains(&self, lba: u64, blocks: u64) -> bool {
        lba < self.block_count
            && lba
                .checked_add(blocks)
                .is_some_and(|end| end <= self.block_count)
    }

    /// The byte offset of `lba`.
    pub fn offset_bytes(&self, lba: u64) -> u64 {
        lba * u64::from(self.block_size)
    }

    /// The logical blocks per backend block, as the exponent READ CAPACITY (16) reports (the
    /// backend checksums and writes whole 4096-byte blocks).
    pub fn blocks_per_physical_exponent(&self) -> u8 {
        (BLOCK_SIZE / self.block_size).trailing_zeros() as u8
    }
}

/// The block limits for one block size, in logical blocks (SBC-4 6.6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLimits {
    /// MAXIMUM TRANSFER LENGTH.
    pub transfer_blocks_max: u32,
    /// OPTIMAL TRANSFER LENGTH GRANULARITY and OPTIMAL UNMAP GRANULARITY: one backend block.
    pub granularity_blocks: u32,
    /// OPTIMAL TRANSFER LENGTH: one chunk.
    pub optimal_transfer_blocks: u32,
    /// MAXIMUM UNMAP LBA COUNT.
    pub unmap_blocks_max: u32,
    /// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
    pub unmap_descriptors_max: u32,
    /// MAXIMUM WRITE SAME LENGTH.
    pub write_same_blocks_max: u64,
    /// MAXIMUM COMPARE AND WRITE LENGTH.
    pub compare_and_write_blocks_max: u8,
}

impl BlockLimits {
    /// The limits for a device with `block_size`-byte blocks.
    pub fn for_block_size(block_size: u32) -> BlockLimits {
        assert!(BLOCK_SIZES.contains(&block_size), "block size {block_size}");
        BlockLimits {
            transfer_blocks_max: TRANSFER_BYTES_MAX / block_size,
            granularity_blocks: BLOCK_SIZE / block_size,
            optimal_transfer_blocks: CHUNK_SIZE_DEFAULT / block_size,
            unmap_blocks_max: (UNMAP_BYTES_MAX / u64::from(block_size)) as u32,
            unmap_descriptors_max: UNMAP_DESCRIPTORS_MAX,
            write_same_blocks_max: (WRITE_SAME_BYTES_MAX / u64::from(block_size))
                .min(WRITE_SAME_BLOCKS_MAX),
            compare_and_write_blocks_max: COMPARE_AND_WRITE_BLOCKS_MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_range_checks() {
        let geometry = Geometry {
            block_size: 512,
            block_count: 100,
        };
        assert!(geometry.contains(0, 100));
        assert!(geometry.contains(99, 0));
        assert!(!geometry.contains(100, 0));
        assert!(!geometry.contains(99, 2));
        assert!(!geometry.contains(u64::MAX, 1));
        assert_eq!(geometry.blocks_per_physical_exponent(), 3);
        let limits = BlockLimits::for_block_size(4096);
        assert_eq!(limits.transfer_blocks_max, 1024);
        assert_eq!(limits.granularity_blocks, 1);
        assert_eq!(limits.write_same_blocks_max, 65_535);
        assert_eq!(
            BlockLimits::for_block_size(512).write_same_blocks_max,
            65_535
        );
    }
}
