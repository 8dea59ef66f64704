//! CRC-32C (Castagnoli), the checksum of every stored block and meta image; the same polynomial
//! iSCSI digests use.

use crate::BLOCK_SIZE;
use crc_fast::CrcAlgorithm;

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let crc = crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, data);
    u32::try_from(crc).expect("invariant: a CRC-32 fits u32")
}

/// CRC-32C of each block of `data`, whose length must be a block multiple, into `out`.
pub fn block_crcs(data: &[u8], out: &mut Vec<u32>) {
    assert!(
        data.len().is_multiple_of(BLOCK_SIZE as usize),
        "length {} not block aligned",
        data.len()
    );
    out.clear();
    out.extend(data.chunks_exact(BLOCK_SIZE as usize).map(crc32c));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 3720 appendix B.4: 32 bytes of zeros, and the standard check value.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }
}
