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

/// A CRC-64 (NVMe polynomial) over a stream of bytes: a digest that is the same on every
/// build and machine (std's hashers promise neither), for comparing what replicas hold.
pub struct Digest64(crc_fast::Digest);

impl Digest64 {
    /// An empty digest.
    pub fn new() -> Digest64 {
        Digest64(crc_fast::Digest::new(CrcAlgorithm::Crc64Nvme))
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything added.
    pub fn finish(&self) -> u64 {
        self.0.finalize()
    }
}

impl Default for Digest64 {
    fn default() -> Digest64 {
        Digest64::new()
    }
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

    /// Golden: replicas on different builds compare these, so the function may never change.
    #[test]
    fn digest64_is_crc64_nvme() {
        let mut digest = Digest64::new();
        digest.update(b"1234");
        digest.update(b"56789");
        assert_eq!(digest.finish(), 0xae8b_1486_0a79_9888);
    }
}
