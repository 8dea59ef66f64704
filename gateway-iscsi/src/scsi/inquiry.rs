//! INQUIRY: the standard data (SPC-4 6.6.2) and the vital product data pages (SPC-4 7.8,
//! SBC-4 6.6), and READ CAPACITY data, which share the LUN identity and limits.

use crate::scsi::{
    limits::{BlockLimits, Geometry},
    pr::{NameError, VolumeId, check_iscsi_name},
    sense::Sense,
};

/// T10 vendor identification, 8 bytes, space-padded.
pub const VENDOR_ID: &[u8; 8] = b"CAIRN   ";
/// Product identification, 16 bytes, space-padded.
pub const PRODUCT_ID: &[u8; 16] = b"VOLUME          ";
/// Product revision level, 4 bytes.
pub const PRODUCT_REVISION: &[u8; 4] = b"0001";

/// The longest unit serial number. The page length is one byte; 64 leaves room and is
/// longer than any serial we generate (32 hex digits of the volume id).
pub const SERIAL_BYTES_MAX: usize = 64;

/// The VPD pages we return, in the order of the supported pages page.
pub const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];

/// The identity a logical unit reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunIdentity {
    volume_id: VolumeId,
    serial: String,
    target_name: Option<String>,
}

/// The identity given to a logical unit is not one it can report.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The serial number is empty, too long or not printable ASCII.
    #[error("serial number of {length_bytes} bytes: want 1 to {SERIAL_BYTES_MAX} printable ASCII")]
    Serial {
        /// The serial number's length.
        length_bytes: usize,
    },
    /// The target name is not a usable iSCSI name.
    #[error(transparent)]
    TargetName(#[from] NameError),
}

impl LunIdentity {
    /// The identity of a logical unit backed by volume `volume_id`, with unit serial number
    /// `serial` and, when given, the iSCSI name of its target (reported in VPD page 0x83).
    pub fn new(
        volume_id: VolumeId,
        serial: &str,
        target_name: Option<&str>,
    ) -> Result<LunIdentity, IdentityError> {
        let printable = serial.bytes().all(|byte| (0x20..0x7F).contains(&byte));
        if serial.is_empty() || serial.len() > SERIAL_BYTES_MAX || !printable {
            return Err(IdentityError::Serial {
                length_bytes: serial.len(),
            });
        }
        if let Some(name) = target_name {
            check_iscsi_name("target name", name)?;
        }
        Ok(LunIdentity {
            volume_id,
            serial: serial.to_owned(),
            target_name: target_name.map(str::to_owned),
        })
    }

    /// The volume identifier.
    pub fn volume_id(&self) -> VolumeId {
        self.volume_id
    }
}

/// Length of our standard INQUIRY data: through the fourth version descriptor.
pub const STANDARD_INQUIRY_LEN: usize = 66;

/// The version descriptors of standard INQUIRY (SPC-4 table 150): SAM-5, iSCSI, SPC-4 and
/// SBC-3. Initiators read the SBC version from here to know that the SBC-3 block limits and
/// logical block provisioning VPD pages are there.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0960, 0x0460, 0x04C0];

/// Standard INQUIRY data: the 36 bytes SPC-4 requires, then the version descriptors.
pub fn standard_inquiry() -> Vec<u8> {
    let mut data = Vec::with_capacity(STANDARD_INQUIRY_LEN);
    data.push(0x00); // PERIPHERAL QUALIFIER 000b (connected), DEVICE TYPE 00h (direct access).
    data.push(0x00); // RMB 0: not removable.
    data.push(0x06); // VERSION: SPC-4.
    data.push(0x12); // HISUP (LUNs are hierarchical), RESPONSE DATA FORMAT 2.
    data.push((STANDARD_INQUIRY_LEN - 5) as u8); // ADDITIONAL LENGTH.
    data.push(0x00); // SCCS, ACC, TPGS 00b (no ALUA), 3PC, PROTECT all zero.
    data.push(0x00); // ENCSERV, MULTIP zero.
    data.push(0x02); // CMDQUE: full task management model.
    data.extend_from_slice(VENDOR_ID);
    data.extend_from_slice(PRODUCT_ID);
    data.extend_from_slice(PRODUCT_REVISION);
    assert_eq!(data.len(), 36);
    // Bytes 36..58: vendor specific, CLOCKING/QAS/IUS and reserved, all zero.
    data.resize(58, 0);
    for descriptor in VERSION_DESCRIPTORS {
        data.extend_from_slice(&descriptor.to_be_bytes());
    }
    assert_eq!(data.len(), STANDARD_INQUIRY_LEN);
    data
}

/// The VPD page `page_code`, or INVALID FIELD IN CDB if we do not have it.
pub fn vpd_page(page_code: u8, identity: &LunIdentity, block_size: u32) -> Result<Vec<u8>, Sense> {
    let payload = match page_code {
        0x00 => VPD_PAGES.to_vec(),
        0x80 => identity.serial.as_bytes().to_vec(),
        0x83 => device_identification(identity),
        0xB0 => block_limits(&BlockLimits::for_block_size(block_size)),
        0xB1 => block_device_characteristics(),
        0xB2 => logical_block_provisioning(),
        _ => return Err(Sense::invalid_field_in_cdb(2, None)),
    };
    let length = u16::try_from(payload.len()).expect("invariant: VPD pages are small");
    let mut page = Vec::with_capacity(4 + payload.len());
    page.extend_from_slice(&[0x00, page_code]);
    page.extend_from_slice(&length.to_be_bytes());
    page.extend_from_slice(&payload);
    Ok(page)
}

/// Device identification designators (SPC-4 7.8.6). The logical unit is named by a T10
/// vendor ID designator, "CAIRN   " followed by the volume id in hex: an NAA designator
/// would need an IEEE company id we do not have. The target, when named, gets an iSCSI
/// SCSI name string designator.
fn device_identification(identity: &LunIdentity) -> Vec<u8> {
    let mut designators = Vec::new();
    let mut t10 = VENDOR_ID.to_vec();
    t10.extend_from_slice(identity.volume_id.to_string().as_bytes());
    // CODE SET 2h (ASCII); PIV 0, ASSOCIATION 00b (logical unit), TYPE 1h (T10 vendor ID).
    designators.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
    designators.extend_from_slice(&t10);
    if let Some(name) = &identity.target_name {
        // NUL-terminated UTF-8, padded with NULs to a multiple of 4 bytes (SPC-4 7.8.6.11).
        let mut string = name.as_bytes().to_vec();
        string.push(0);
        while !string.len().is_multiple_of(4) {
            string.push(0);
        }
        // PROTOCOL IDENTIFIER 5h (iSCSI), CODE SET 3h (UTF-8); PIV 1, ASSOCIATION 10b
        // (target device), TYPE 8h (SCSI name string).
        let length = u8::try_from(string.len()).expect("invariant: iSCSI names are short");
        designators.extend_from_slice(&[0x53, 0xA8, 0x00, length]);
        designators.extend_from_slice(&string);
    }
    designators
}

/// Block limits (SBC-4 6.6.4), payload of 0x3C bytes.
fn block_limits(limits: &BlockLimits) -> Vec<u8> {
    let mut data = Vec::with_capacity(0x3C);
    data.push(0x01); // WSNZ: WRITE SAME with zero blocks (the rest of the device) is refused.
    data.push(limits.compare_and_write_blocks_max);
    let granularity = u16::try_from(limits.granularity_blocks).expect("invariant: <= 8");
    data.extend_from_slice(&granularity.to_be_bytes());
    data.extend_from_slice(&limits.transfer_blocks_max.to_be_bytes());
    data.extend_from_slice(&limits.optimal_transfer_blocks.to_be_bytes());
    data.extend_from_slice(&0u32.to_be_bytes()); // MAXIMUM PREFETCH LENGTH: no PRE-FETCH.
    data.extend_from_slice(&limits.unmap_blocks_max.to_be_bytes());
    data.extend_from_slice(&limits.unmap_descriptors_max.to_be_bytes());
    data.extend_from_slice(&limits.granularity_blocks.to_be_bytes());
    // UGAVALID set, UNMAP GRANULARITY ALIGNMENT 0: granules start at LBA 0.
    data.extend_from_slice(&0x8000_0000u32.to_be_bytes());
    data.extend_from_slice(&limits.write_same_blocks_max.to_be_bytes());
    // Atomic transfer fields (WRITE ATOMIC is not implemented): 20 bytes of zeros.
    data.extend_from_slice(&[0; 20]);
    assert_eq!(data.len(), 0x3C);
    data
}

/// Block device characteristics (SBC-4 6.6.2), payload of 0x3C bytes.
fn block_device_characteristics() -> Vec<u8> {
    let mut data = vec![0u8; 0x3C];
    // MEDIUM ROTATION RATE 0001h: non-rotating medium (solid state).
    data[0..2].copy_from_slice(&1u16.to_be_bytes());
    data
}

/// Logical block provisioning (SBC-4 6.6.5), payload of 4 bytes, no provisioning group
/// descriptor.
fn logical_block_provisioning() -> Vec<u8> {
    vec![
        0x00, // THRESHOLD EXPONENT: no thresholds.
        0xE4, // LBPU, LBPWS, LBPWS10, LBPRZ 001b (unmapped blocks read zeros); ANC_SUP 0.
        0x02, // PROVISIONING TYPE 010b: thin.
        0x00, // THRESHOLD PERCENTAGE.
    ]
}

/// The length of READ CAPACITY (10) data, which has no allocation length.
pub const READ_CAPACITY_10_LEN: usize = 8;

/// READ CAPACITY (10) data: the last LBA, 0xFFFFFFFF when it does not fit (the initiator
/// then uses READ CAPACITY (16)), and the block size.
pub fn read_capacity_10(geometry: &Geometry) -> Vec<u8> {
    let last_lba = geometry.block_count.saturating_sub(1);
    let returned = u32::try_from(last_lba).unwrap_or(u32::MAX);
    let mut data = Vec::with_capacity(READ_CAPACITY_10_LEN);
    data.extend_from_slice(&returned.to_be_bytes());
    data.extend_from_slice(&geometry.block_size.to_be_bytes());
    data
}

/// READ CAPACITY (16) data (SBC-4 5.16.2), 32 bytes.
pub fn read_capacity_16(geometry: &Geometry) -> Vec<u8> {
    let mut data = Vec::with_capacity(32);
    data.extend_from_slice(&geometry.block_count.saturating_sub(1).to_be_bytes());
    data.extend_from_slice(&geometry.block_size.to_be_bytes());
    data.push(0x00); // P_TYPE, PROT_EN: no protection.
    data.push(geometry.blocks_per_physical_exponent()); // P_I_EXPONENT 0 | exponent.
    data.push(0xC0); // LBPME, LBPRZ; LOWEST ALIGNED LBA 0.
    data.push(0x00);
    data.extend_from_slice(&[0; 16]);
    assert_eq!(data.len(), 32);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(target_name: Option<&str>) -> LunIdentity {
        let volume = VolumeId([
            0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0, 0, 0, 0, 0, 0, 0, 1,
        ]);
        LunIdentity::new(volume, "0123456789abcdef", target_name).expect("valid identity")
    }

    /// Standard INQUIRY, checked byte by byte against SPC-4 table 148.
    #[test]
    fn standard_inquiry_layout() {
        let mut expected = vec![0x00, 0x00, 0x06, 0x12, 61, 0x00, 0x00, 0x02];
        expected.extend_from_slice(b"CAIRN   VOLUME          0001");
        expected.resize(58, 0);
        expected.extend_from_slice(&[0x00, 0xA0, 0x09, 0x60, 0x04, 0x60, 0x04, 0xC0]);
        assert_eq!(standard_inquiry(), expected);
    }

    /// Device identification with both designators, hand-assembled.
    #[test]
    fn device_identification_layout() {
        let page = vpd_page(0x83, &identity(Some("iqn.a:b")), 512).expect("page 0x83");
        let mut expected = vec![0x00, 0x83, 0x00, 4 + 40 + 4 + 8];
        expected.extend_from_slice(&[0x02, 0x01, 0x00, 40]);
        expected.extend_from_slice(b"CAIRN   0123456789abcdef0000000000000001");
        expected.extend_from_slice(&[0x53, 0xA8, 0x00, 8]);
        expected.extend_from_slice(b"iqn.a:b\0");
        assert_eq!(page, expected);
        let page = vpd_page(0x83, &identity(None), 512).expect("page 0x83");
        assert_eq!(page.len(), 4 + 44);
    }

    #[test]
    fn provisioning_and_characteristics() {
        let page = vpd_page(0xB2, &identity(None), 4096).expect("page 0xB2");
        assert_eq!(page, vec![0x00, 0xB2, 0x00, 0x04, 0x00, 0xE4, 0x02, 0x00]);
        let page = vpd_page(0xB1, &identity(None), 4096).expect("page 0xB1");
        assert_eq!(page.len(), 64);
        assert_eq!(&page[..6], &[0x00, 0xB1, 0x00, 0x3C, 0x00, 0x01]);
        let page = vpd_page(0x00, &identity(None), 4096).expect("page 0x00");
        assert_eq!(
            page,
            vec![0x00, 0x00, 0x00, 0x06, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
        );
        assert_eq!(
            vpd_page(0x81, &identity(None), 4096),
            Err(Sense::invalid_field_in_cdb(2, None))
        );
    }

    #[test]
    fn block_limits_layout() {
        let page = vpd_page(0xB0, &identity(None), 512).expect("page 0xB0");
        assert_eq!(page.len(), 64);
        assert_eq!(&page[..8], &[0x00, 0xB0, 0x00, 0x3C, 0x01, 16, 0x00, 0x08]);
        assert_eq!(&page[8..12], &8192u32.to_be_bytes()); // 4 MiB / 512.
        assert_eq!(&page[20..24], &524_288u32.to_be_bytes()); // 256 MiB / 512.
        assert_eq!(&page[24..28], &256u32.to_be_bytes());
        assert_eq!(&page[28..32], &8u32.to_be_bytes());
        assert_eq!(&page[32..36], &[0x80, 0, 0, 0]);
        assert_eq!(&page[36..44], &65_535u64.to_be_bytes());
    }

    /// READ CAPACITY (16) of a 512-byte LUN of 2^33 blocks, hand-assembled.
    #[test]
    fn read_capacity_16_layout() {
        let geometry = Geometry {
            block_size: 512,
            block_count: 1 << 33,
        };
        let mut expected = vec![0x00, 0x00, 0x00, 0x01, 0xFF, 0xFF, 0xFF, 0xFF];
        expected.extend_from_slice(&[0x00, 0x00, 0x02, 0x00, 0x00, 0x03, 0xC0, 0x00]);
        expected.extend_from_slice(&[0; 16]);
        assert_eq!(read_capacity_16(&geometry), expected);
        assert_eq!(
            read_capacity_10(&geometry),
            vec![0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 2, 0]
        );
    }

    #[test]
    fn identity_checks() {
        assert!(matches!(
            LunIdentity::new(VolumeId([0; 16]), "", None),
            Err(IdentityError::Serial { length_bytes: 0 })
        ));
        assert!(LunIdentity::new(VolumeId([0; 16]), "bad\u{7}", None).is_err());
        assert!(LunIdentity::new(VolumeId([0; 16]), "ok", Some("a,b")).is_err());
    }
}
