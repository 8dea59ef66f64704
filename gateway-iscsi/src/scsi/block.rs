//! The block commands: READ, WRITE, WRITE AND VERIFY, VERIFY, WRITE SAME, UNMAP, COMPARE AND
//! WRITE (SBC-4 5.x). Each handler checks the LBA range against the device's current
//! geometry, then calls the device; the caller holds the per-LUN write lock as needed.

use crate::scsi::{
    cdb::{BlockRange, VerifyCheck},
    device::{BlockDevice, DeviceError},
    limits::{BlockLimits, Geometry},
    lun::Failure,
    sense::{AdditionalSense, Sense, SenseKey},
};

/// Which way data was moving when the device failed, to pick the sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Reading the medium.
    Read,
    /// Writing, unmapping or flushing the medium.
    Write,
}

/// Maps a device error to the command's failure, in one place:
/// - medium errors become MEDIUM ERROR with UNRECOVERED READ ERROR or WRITE ERROR and the
///   failing LBA in INFORMATION (SBC-4 4.14);
/// - a range past the end (a shrink raced the check) becomes LBA OUT OF RANGE;
/// - a busy device becomes BUSY status, which initiators retry;
/// - any other backend failure becomes HARDWARE ERROR, INTERNAL TARGET FAILURE: the data
///   may be fine, the target failed to reach it.
pub fn device_failure(error: DeviceError, direction: Direction, block_size: u32) -> Failure {
    match error {
        DeviceError::Medium { offset_bytes } => {
            let additional = match direction {
                Direction::Read => AdditionalSense::UnrecoveredReadError,
                Direction::Write => AdditionalSense::WriteError,
            };
            let lba = offset_bytes / u64::from(block_size);
            Failure::Check(Sense::new(SenseKey::MediumError, additional).information_u64(lba))
        }
        DeviceError::OutOfRange { .. } => Failure::Check(Sense::lba_out_of_range()),
        DeviceError::Busy => Failure::Busy,
        DeviceError::Failed { .. } => Failure::Check(Sense::new(
            SenseKey::HardwareError,
            AdditionalSense::InternalTargetFailure,
        )),
    }
}

fn check_range(geometry: &Geometry, range: &BlockRange) -> Result<(), Failure> {
    if !geometry.contains(range.lba, range.blocks.into()) {
        return Err(Failure::Check(Sense::lba_out_of_range()));
    }
    Ok(())
}

fn bytes_of(geometry: &Geometry, blocks: u32) -> u32 {
    // Limits were checked by `Lun::prepare`: a transfer is at most TRANSFER_BYTES_MAX.
    blocks
        .checked_mul(geometry.block_size)
        .expect("invariant: transfer within limits")
}

/// Reads the range; the result is exactly `blocks x block_size` bytes.
pub async fn read<D: BlockDevice>(
    device: &D,
    geometry: &Geometry,
    range: &BlockRange,
) -> Result<Vec<u8>, Failure> {
    check_range(geometry, range)?;
    if range.blocks == 0 {
        return Ok(Vec::new());
    }
    let length_bytes = bytes_of(geometry, range.blocks);
    let data = device
        .read(geometry.offset_bytes(range.lba), length_bytes)
        .await
        .map_err(|error| device_failure(error, Direction::Read, geometry.block_size))?;
    // A backend returning the wrong length is a backend bug; we fail the command rather
    // than hand the initiator wrong data.
    if data.len() != length_bytes as usize {
        return Err(Failure::Check(Sense::new(
            SenseKey::HardwareError,
            AdditionalSense::InternalTargetFailure,
        )));
    }
    Ok(data)
}

/// Writes `data` (exactly the range's bytes) to the range.
pub async fn write<D: BlockDevice>(
    device: &D,
    geometry: &Geometry,
    range: &BlockRange,
    data: &[u8],
) -> Result<(), Failure> {
    check_range(geometry, range)?;
    assert_eq!(
        data.len() as u64,
        u64::from(range.blocks) * u64::from(geometry.block_size)
    );
    if range.blocks == 0 {
        return Ok(());
    }
    device
        .write(geometry.offset_bytes(range.lba), data)
        .await
        .map_err(|error| device_failure(error, Direction::Write, geometry.block_size))
}

/// The offset of the first byte where `given` and `found` differ.
fn first_difference(given: &[u8], found: &[u8]) -> Option<usize> {
    assert_eq!(given.len(), found.len());
    given.iter().zip(found).position(|(a, b)| a != b)
}

/// VERIFY: reads the range and compares it as BYTCHK asks. A miscompare reports the offset
/// of the first differing byte from the start of the verified range (for BYTCHK 01b that is
/// also the offset in the data-out).
pub async fn verify<D: BlockDevice>(
    device: &D,
    geometry: &Geometry,
    range: &BlockRange,
    check: VerifyCheck,
    data_out: &[u8],
) -> Result<(), Failure> {
    let found = read(device, geometry, range).await?;
    let difference = match check {
        VerifyCheck::Medium => None,
        VerifyCheck::Compare => first_difference(data_out, &found),
        VerifyCheck::CompareOneBlock => {
            let block_size = geometry.block_size as usize;
            found
                .chunks_exact(block_size)
                .enumerate()
                .find_map(|(index, block)| {
                    first_difference(data_out, block).map(|offset| index * block_size + offset)
                })
        }
    };
    match difference {
        Some(offset) => Err(Failure::Check(Sense::miscompare(offset as u64))),
        None => Ok(()),
    }
}

/// WRITE AND VERIFY: writes, then reads back (the medium check of BYTCHK 00b) and, with
/// BYTCHK 01b, compares with what was written.
pub async fn write_and_verify<D: BlockDevice>(
    device: &D,
    geometry: &Geometry,
    range: &BlockRange,
    compare: bool,
    data: &[u8],
) -> Result<(), Failure> {
    write(device, geometry, range, data).await?;
    let check = if compare {
        VerifyCheck::Compare
    } else {
        VerifyCheck::Medium
    };
    verify(device, geometry, range, check, data).await
}

/// WRITE SAME: deallocates the range when UNMAP is set and the block is all zeros (which is
/// what unmapped blocks read as, LBPRZ=1), else writes the block to every LBA, in pieces of
/// at most the transfer limit so memory stays bounded.
pub async fn write_same<D: BlockDevice>(
    device: &D,
    geometry: &Geometry,
    range: &BlockRange,
    unmap: bool,
    block: &[u8],
) -> Result<(), Failure> {
    check_range(geometry, range)?;
    assert_eq!(block.len(), geometry.block_size as usize);
    assert!(range.blocks > 0, "WSNZ: prepare refuses zero blocks");
    let offset_bytes = geometry.offset_bytes(range.lba);
    let block_size = u64::from(geometry.block_size);
    let map_error = |error| device_failure(error, Direction::Write, geometry.block_size);
    if unmap && block.iter().all(|&byte| byte == 0) {
        let length_bytes = u64::from(range.blocks) * block_size;
        return device
            .unmap(offset_bytes, length_bytes)
            .await
            .map_err(map_error);
    }
    let limits = BlockLimits::for_block_size(geometry.block_size);
    let piece_blocks = range.blocks.min(limits.transfer_blocks_max);
    let piece = block.repeat(piece_blocks as usize);
    let mut written_blocks = 0u32;
    while written_blocks < range.blocks {
        let blocks = (range.blocks - written_blocks).min(piece_blocks);
        let at = offset_bytes + u64::from(written_blocks) * block_size;
        let bytes = blocks as usize * block.len();
        device.write(at, &piece[..bytes]).await.map_err(map_error)?;
        written_blocks += blocks;
    }
    assert_eq!(written_blocks, range.blocks);
    Ok(())
}

/// One UNMAP block descriptor, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmapDescriptor {
    /// The first LBA.
    pub lba: u64,
    /// How many blocks; never zero.
    pub blocks: u32,
}

/// Parses and checks an UNMAP parameter list (SBC-4 5.32.2) whole, before anything is
/// unmapped, so a bad descriptor fails the command without a partial unmap.
pub fn unmap_descriptors(
    parameters: &[u8],
    geometry: &Geometry,
) -> Result<Vec<UnmapDescriptor>, Failure> {
    if parameters.is_empty() {
        return Ok(Vec::new());
    }
    if parameters.len() < 8 {
        return Err(Failure::Check(Sense::parameter_list_length_error()));
    }
    // The descriptor data length may claim more than was sent; only whole descriptors that
    // are present count (an incomplete last descriptor is ignored, as SBC-4 says).
    let claimed = usize::from(u16::from_be_bytes([parameters[2], parameters[3]]));
    let present = claimed.min(parameters.len() - 8);
    let count = present / 16;
    let limits = BlockLimits::for_block_size(geometry.block_size);
    if count > limits.unmap_descriptors_max as usize {
        return Err(Failure::Check(Sense::invalid_field_in_parameter_list(
            2, None,
        )));
    }
    let mut descriptors = Vec::with_capacity(count);
    let mut total_blocks = 0u64;
    for (index, bytes) in parameters[8..8 + count * 16].chunks_exact(16).enumerate() {
        let mut lba = [0u8; 8];
        lba.copy_from_slice(&bytes[..8]);
        let lba = u64::from_be_bytes(lba);
        let blocks = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if blocks == 0 {
            continue;
        }
        if !geometry.contains(lba, blocks.into()) {
            return Err(Failure::Check(Sense::lba_out_of_range()));
        }
        total_blocks += u64::from(blocks);
        if total_blocks > u64::from(limits.unmap_blocks_max) {
            let field = (8 + index * 16 + 8) as u16;
            return Err(Failure::Check(Sense::invalid_field_in_parameter_list(
                field, None,
            )));
        }
        descriptors.push(UnmapDescriptor { lba, blocks });
    }
    Ok(descriptors)
}

/// Deallocates every descriptor's range.
pub async fn unmap<D: BlockDevice>(
    device: &D,
    geometry: &Geometry,
    descriptors: &[UnmapDescriptor],
) -> Result<(), Failure> {
    for descriptor in descriptors {
        let length_bytes = u64::from(descriptor.blocks) * u64::from(geometry.block_size);
        device
            .unmap(geometry.offset_bytes(descriptor.lba), length_bytes)
            .await
            .map_err(|error| device_failure(error, Direction::Write, geometry.block_size))?;
    }
    Ok(())
}

/// COMPARE AND WRITE (SBC-4 5.3): the first half of `data` is compared with the range; on
/// a match the second half is written. The caller holds the write lock exclusive.
pub async fn compare_and_write<D: BlockDevice>(
    device: &D,
    geometry: &Geometry,
    range: &BlockRange,
    data: &[u8],
) -> Result<(), Failure> {
    let found = read(device, geometry, range).await?;
    assert_eq!(data.len(), 2 * found.len());
    let (expected, replacement) = data.split_at(found.len());
    if let Some(offset) = first_difference(expected, &found) {
        return Err(Failure::Check(Sense::miscompare(offset as u64)));
    }
    write(device, geometry, range, replacement).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEOMETRY: Geometry = Geometry {
        block_size: 512,
        block_count: 1000,
    };

    fn descriptor(lba: u64, blocks: u32) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&lba.to_be_bytes());
        bytes[8..12].copy_from_slice(&blocks.to_be_bytes());
        bytes
    }

    fn parameter_list(descriptors: &[[u8; 16]]) -> Vec<u8> {
        let length = (16 * descriptors.len()) as u16;
        let mut list = (length + 6).to_be_bytes().to_vec();
        list.extend_from_slice(&length.to_be_bytes());
        list.extend_from_slice(&[0; 4]);
        for descriptor in descriptors {
            list.extend_from_slice(descriptor);
        }
        list
    }

    #[test]
    fn unmap_parameter_list_checks() {
        let list = parameter_list(&[descriptor(0, 8), descriptor(10, 0), descriptor(990, 10)]);
        let parsed = unmap_descriptors(&list, &GEOMETRY).expect("valid list");
        assert_eq!(
            parsed,
            vec![
                UnmapDescriptor { lba: 0, blocks: 8 },
                UnmapDescriptor {
                    lba: 990,
                    blocks: 10
                }
            ]
        );
        let list = parameter_list(&[descriptor(0, 8), descriptor(995, 10)]);
        assert_eq!(
            unmap_descriptors(&list, &GEOMETRY),
            Err(Failure::Check(Sense::lba_out_of_range()))
        );
        assert_eq!(
            unmap_descriptors(&list[..5], &GEOMETRY),
            Err(Failure::Check(Sense::parameter_list_length_error()))
        );
        // A truncated last descriptor is ignored.
        let list = parameter_list(&[descriptor(0, 8), descriptor(995, 10)]);
        assert_eq!(
            unmap_descriptors(&list[..30], &GEOMETRY)
                .expect("one whole")
                .len(),
            1
        );
        let many = vec![descriptor(0, 1); 257];
        assert_eq!(
            unmap_descriptors(&parameter_list(&many), &GEOMETRY),
            Err(Failure::Check(Sense::invalid_field_in_parameter_list(
                2, None
            )))
        );
    }
}
