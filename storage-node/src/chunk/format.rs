//! The chunk file format, version 1.
//!
//! A pool file is a sequence of equal chunk slots; slot `k` starts at `k * slot_bytes`:
//!
//! ```text
//! file: [ slot 0 | slot 1 | ... | slot N-1 ]
//! slot: [ meta copy 0 | meta copy 1 | data: chunk_size bytes ]
//! ```
//!
//! Each meta copy is `meta_bytes` long (a multiple of the block size) and holds one image of the
//! chunk's metadata:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "CAIRNCHK"
//!      8     4  format version (1)
//!     12     4  block size (4096)
//!     16     4  chunk size in bytes
//!     20     4  state: 0 free, 1 in use
//!     24     8  sequence: +1 for every image written to this file
//!     32     8  generation: store-wide, +1 for every chunk created; the newest wins
//!     40    16  chunk id (pool u32, owner u64, index u32; little endian)
//!     56     8  reserved, zero
//!     64     B  written bitmap: bit i set = block i holds data (else it reads as zeros)
//!  64+B    4N  CRC-32C of each block's data, little endian
//!    end-4  4  CRC-32C of everything before it in the slot
//! ```
//!
//! Images alternate between the two copies (`sequence % 2`), so a torn image write leaves the
//! previous one intact; on open the valid image with the highest sequence wins. The number of
//! slots in a file follows from its size. All integers are little endian.

use cairn_common::{BLOCK_SIZE, CHUNK_SIZE_MAX, CHUNK_SIZE_MIN, ChunkId};

use crate::checksum::crc32c;

/// The magic at the start of every meta slot.
pub const META_MAGIC: [u8; 8] = *b"CAIRNCHK";

/// The chunk file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const HEADER_BYTES: usize = 64;

/// Sizes and offsets of chunk files for one chunk size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    chunk_size_bytes: u32,
    block_count: u32,
    meta_bytes: u32,
}

impl Geometry {
    /// The geometry of chunks of `chunk_size_bytes`, which must be a block multiple within the
    /// allowed range.
    pub fn new(chunk_size_bytes: u32) -> Option<Geometry> {
        let valid = (CHUNK_SIZE_MIN..=CHUNK_SIZE_MAX).contains(&chunk_size_bytes)
            && chunk_size_bytes.is_multiple_of(BLOCK_SIZE);
        if !valid {
            return None;
        }
        let block_count = chunk_size_bytes / BLOCK_SIZE;
        let used = HEADER_BYTES + block_count.div_ceil(8) as usize + 4 * block_count as usize + 4;
        let meta_bytes = used.next_multiple_of(BLOCK_SIZE as usize) as u32;
        Some(Geometry {
            chunk_size_bytes,
            block_count,
            meta_bytes,
        })
    }

    /// The chunk size.
    pub fn chunk_size_bytes(&self) -> u32 {
        self.chunk_size_bytes
    }

    /// Blocks per chunk.
    pub fn block_count(&self) -> u32 {
        self.block_count
    }

    /// The size of one meta copy.
    pub fn meta_bytes(&self) -> u32 {
        self.meta_bytes
    }

    /// Offset, inside a slot, of the meta copy an image of `sequence` goes to.
    pub fn meta_offset(&self, sequence: u64) -> u64 {
        (sequence % 2) * u64::from(self.meta_bytes)
    }

    /// Offset, inside a slot, of block `block_index` of the data.
    pub fn block_offset(&self, block_index: u32) -> u64 {
        assert!(
            block_index <= self.block_count,
            "block {block_index} out of range"
        );
        2 * u64::from(self.meta_bytes) + u64::from(block_index) * u64::from(BLOCK_SIZE)
    }

    /// The size of one chunk slot: both meta copies and the data.
    pub fn slot_bytes(&self) -> u64 {
        self.block_offset(self.block_count)
    }

    fn bitmap_bytes(&self) -> usize {
        self.block_count.div_ceil(8) as usize
    }
}

/// Whether a chunk file holds a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// In the pool, free to take.
    Free,
    /// Holds the chunk named in the image.
    InUse,
}

/// One meta image: what a chunk file holds and the checksum of every block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaImage {
    /// Free or in use.
    pub state: SlotState,
    /// Orders the images written to one file.
    pub sequence: u64,
    /// Orders chunk creations store-wide.
    pub generation: u64,
    /// The chunk (meaningless when free).
    pub chunk: ChunkId,
    /// Bit per block: holds data.
    pub written: Vec<u8>,
    /// CRC-32C per block (meaningful where written).
    pub crcs: Vec<u32>,
}

impl MetaImage {
    /// A free image with no block written.
    pub fn free(geometry: &Geometry, sequence: u64, generation: u64) -> MetaImage {
        MetaImage {
            state: SlotState::Free,
            sequence,
            generation,
            chunk: ChunkId::from_bytes([0; ChunkId::ENCODED_SIZE]),
            written: vec![0; geometry.bitmap_bytes()],
            crcs: vec![0; geometry.block_count as usize],
        }
    }

    /// True if block `index` holds data.
    pub fn is_written(&self, index: u32) -> bool {
        self.written[index as usize / 8] & (1 << (index % 8)) != 0
    }

    /// Marks block `index` written with checksum `crc`.
    pub fn set_written(&mut self, index: u32, crc: u32) {
        self.written[index as usize / 8] |= 1 << (index % 8);
        self.crcs[index as usize] = crc;
    }

    /// Marks block `index` unwritten (it reads as zeros) and clears its checksum.
    pub fn clear_written(&mut self, index: u32) {
        self.written[index as usize / 8] &= !(1 << (index % 8));
        self.crcs[index as usize] = 0;
    }

    /// True if any block holds data. Bits past the last block (a decoded image may carry
    /// stray ones) do not count.
    pub fn any_written(&self) -> bool {
        let block_count = u32::try_from(self.crcs.len()).expect("invariant: blocks fit u32");
        (0..block_count).any(|index| self.is_written(index))
    }

    /// Encodes the image into `out`, which must be exactly `geometry.meta_bytes()` long.
    pub fn encode(&self, geometry: &Geometry, out: &mut [u8]) {
        assert_eq!(out.len(), geometry.meta_bytes as usize);
        assert_eq!(self.written.len(), geometry.bitmap_bytes());
        assert_eq!(self.crcs.len(), geometry.block_count as usize);
        out.fill(0);
        out[0..8].copy_from_slice(&META_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        out[16..20].copy_from_slice(&geometry.chunk_size_bytes.to_le_bytes());
        let state: u32 = match self.state {
            SlotState::Free => 0,
            SlotState::InUse => 1,
        };
        out[20..24].copy_from_slice(&state.to_le_bytes());
        out[24..32].copy_from_slice(&self.sequence.to_le_bytes());
        out[32..40].copy_from_slice(&self.generation.to_le_bytes());
        out[40..56].copy_from_slice(&self.chunk.to_bytes());
        let bitmap_end = HEADER_BYTES + self.written.len();
        out[HEADER_BYTES..bitmap_end].copy_from_slice(&self.written);
        for (i, crc) in self.crcs.iter().enumerate() {
            let at = bitmap_end + 4 * i;
            out[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        }
        let end = out.len() - 4;
        let crc = crc32c(&out[..end]);
        out[end..].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a slot; an error says why the slot is not a valid image of this geometry.
    pub fn decode(geometry: &Geometry, slot: &[u8]) -> Result<MetaImage, String> {
        if slot.len() != geometry.meta_bytes as usize {
            return Err(format!(
                "slot is {} bytes, expected {}",
                slot.len(),
                geometry.meta_bytes
            ));
        }
        if slot[0..8] != META_MAGIC {
            return Err("no chunk magic".into());
        }
        let end = slot.len() - 4;
        let stored = u32_at(slot, end);
        if crc32c(&slot[..end]) != stored {
            return Err("meta checksum mismatch".into());
        }
        let version = u32_at(slot, 8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "chunk format version {version}, this build reads 1"
            ));
        }
        if u32_at(slot, 12) != BLOCK_SIZE {
            return Err(format!("block size {}", u32_at(slot, 12)));
        }
        if u32_at(slot, 16) != geometry.chunk_size_bytes {
            return Err(format!(
                "chunk size {} differs from the disk's",
                u32_at(slot, 16)
            ));
        }
        let state = match u32_at(slot, 20) {
            0 => SlotState::Free,
            1 => SlotState::InUse,
            other => return Err(format!("unknown state {other}")),
        };
        let mut id = [0u8; ChunkId::ENCODED_SIZE];
        id.copy_from_slice(&slot[40..56]);
        let bitmap_end = HEADER_BYTES + geometry.bitmap_bytes();
        let crcs = (0..geometry.block_count as usize).map(|i| u32_at(slot, bitmap_end + 4 * i));
        Ok(MetaImage {
            state,
            sequence: u64_at(slot, 24),
            generation: u64_at(slot, 32),
            chunk: ChunkId::from_bytes(id),
            written: slot[HEADER_BYTES..bitmap_end].to_vec(),
            crcs: crcs.collect(),
        })
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(
        bytes[at..at + 4]
            .try_into()
            .expect("invariant: 4-byte slice"),
    )
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(
        bytes[at..at + 8]
            .try_into()
            .expect("invariant: 8-byte slice"),
    )
}

#[cfg(test)]
mod tests {
    use cairn_common::{OwnerId, PoolId};

    use super::*;

    #[test]
    fn geometry_of_default_chunk() {
        let g = Geometry::new(4 << 20).expect("valid");
        assert_eq!(g.block_count(), 1024);
        assert_eq!(g.meta_bytes(), 8192);
        assert_eq!(g.block_offset(0), 16384);
        assert_eq!(g.slot_bytes(), 16384 + (4 << 20));
        assert_eq!(g.meta_offset(7), 8192);
        assert!(Geometry::new(4097).is_none());
        assert!(Geometry::new(CHUNK_SIZE_MAX + BLOCK_SIZE).is_none());
    }

    /// Goal: version 1 images keep decoding forever. Method: a fixed image encoded by hand in
    /// the documented layout must decode to the expected fields, and re-encode to the same bytes.
    #[test]
    fn golden_v1_image() {
        let g = Geometry::new(BLOCK_SIZE * 2).expect("valid");
        let mut golden = vec![0u8; g.meta_bytes() as usize];
        golden[0..8].copy_from_slice(b"CAIRNCHK");
        golden[8..12].copy_from_slice(&[1, 0, 0, 0]);
        golden[12..16].copy_from_slice(&[0, 0x10, 0, 0]);
        golden[16..20].copy_from_slice(&[0, 0x20, 0, 0]);
        golden[20..24].copy_from_slice(&[1, 0, 0, 0]);
        golden[24..32].copy_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0]);
        golden[32..40].copy_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0]);
        golden[40..56].copy_from_slice(&[3, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
        golden[64] = 0b10;
        golden[65..69].copy_from_slice(&[0, 0, 0, 0]);
        golden[69..73].copy_from_slice(&[0xef, 0xbe, 0xad, 0xde]);
        let end = golden.len() - 4;
        let crc = crc32c(&golden[..end]);
        golden[end..].copy_from_slice(&crc.to_le_bytes());

        let image = MetaImage::decode(&g, &golden).expect("golden decodes");
        let chunk = ChunkId {
            pool: PoolId(3),
            owner: OwnerId(7),
            index: 2,
        };
        assert_eq!(image.state, SlotState::InUse);
        assert_eq!(
            (image.sequence, image.generation, image.chunk),
            (5, 9, chunk)
        );
        assert!(!image.is_written(0) && image.is_written(1));
        assert_eq!(image.crcs, vec![0, 0xdead_beef]);
        let mut again = vec![0u8; g.meta_bytes() as usize];
        image.encode(&g, &mut again);
        assert_eq!(again, golden);
    }

    proptest::proptest! {
        /// Goal: no bytes on disk can make decoding panic, and anything accepted is exactly
        /// what it encodes to. Method: mutate a valid image anywhere and, half the time, re-seal
        /// its checksum so decoding gets past it.
        #[test]
        fn decode_of_mutated_images_never_panics(
            mutations in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8),
            reseal in proptest::prelude::any::<bool>(),
        ) {
            let g = Geometry::new(BLOCK_SIZE * 16).expect("valid");
            let mut image = MetaImage::free(&g, 3, 4);
            image.set_written(5, 77);
            let mut bytes = vec![0u8; g.meta_bytes() as usize];
            image.encode(&g, &mut bytes);
            let size = bytes.len();
            for (at, value) in mutations {
                bytes[at % size] = value;
            }
            if reseal {
                let end = bytes.len() - 4;
                let crc = crc32c(&bytes[..end]);
                bytes[end..].copy_from_slice(&crc.to_le_bytes());
            }
            if let Ok(decoded) = MetaImage::decode(&g, &bytes) {
                let mut again = vec![0u8; bytes.len()];
                decoded.encode(&g, &mut again);
                // Reserved bytes and stray bitmap bits are not kept; everything else is.
                let decoded_again = MetaImage::decode(&g, &again).expect("re-encoded decodes");
                proptest::prop_assert_eq!(decoded_again, decoded);
            }
            let _ = MetaImage::decode(&g, &bytes[..bytes.len() / 2]);
        }
    }

    #[test]
    fn damaged_images_are_refused() {
        let g = Geometry::new(BLOCK_SIZE * 4).expect("valid");
        let mut image = MetaImage::free(&g, 1, 1);
        image.set_written(2, 42);
        let mut bytes = vec![0u8; g.meta_bytes() as usize];
        image.encode(&g, &mut bytes);
        assert_eq!(MetaImage::decode(&g, &bytes).as_ref(), Ok(&image));
        for at in [0, 20, 70, 100] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(
                MetaImage::decode(&g, &bad).is_err(),
                "flip at {at} must be detected"
            );
        }
        let other = Geometry::new(BLOCK_SIZE * 8).expect("valid");
        assert!(MetaImage::decode(&other, &bytes).is_err());
        assert!(MetaImage::decode(&g, &vec![0u8; g.meta_bytes() as usize]).is_err());
    }
}
