//! The block device a logical unit serves, and an in-memory one for tests.
//!
//! In production the device is a Cairn volume reached through the client library: a write
//! returns once three replicas hold it, so there is no volatile cache to flush (WCE=0 in the
//! caching mode page). [`MemDevice`] keeps blocks in a sparse map and can be told to fail
//! chosen LBAs with a medium error, which is how the tests reach the error paths.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::{self, Future},
    sync::{Arc, Mutex, PoisonError},
};

/// Why a device operation failed. The SCSI layer maps each variant to a status and sense in
/// one place (`Lun::device_failure`).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The data at `offset_bytes` cannot be read or written, and retrying will not help.
    #[error("medium error at byte offset {offset_bytes}")]
    Medium {
        /// The offset of the first byte that failed.
        offset_bytes: u64,
    },
    /// The request names bytes past the end of the device (for example after a shrink raced
    /// the capacity check).
    #[error("range {offset_bytes}+{length_bytes} is past the end of the device")]
    OutOfRange {
        /// The offset asked for.
        offset_bytes: u64,
        /// The length asked for.
        length_bytes: u64,
    },
    /// The device cannot serve requests now but may later (for example the volume has lost
    /// its write quorum and is recovering).
    #[error("device busy")]
    Busy,
    /// Any other failure of the backend, with its cause.
    #[error("device failed during {operation}")]
    Failed {
        /// The operation that failed: "read", "write", "flush", "unmap" or "size".
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A block device: a volume of `size_bytes()` bytes addressed in logical blocks of
/// `block_size()` bytes. The SCSI layer only issues block-aligned requests within the size.
///
/// Every method is async because the production device is a remote, replicated volume.
pub trait BlockDevice: Send + Sync {
    /// The device size in bytes, a multiple of the block size. It may grow while the logical
    /// unit is in use (volume resize), so the SCSI layer reads it per command.
    fn size_bytes(&self) -> impl Future<Output = Result<u64, DeviceError>> + Send;

    /// The logical block size in bytes: 512 or 4096. Fixed for the life of the device.
    fn block_size(&self) -> impl Future<Output = Result<u32, DeviceError>> + Send;

    /// Reads `length_bytes` bytes at `offset_bytes`. Unwritten and unmapped ranges read as
    /// zeros.
    fn read(
        &self,
        offset_bytes: u64,
        length_bytes: u32,
    ) -> impl Future<Output = Result<Vec<u8>, DeviceError>> + Send;

    /// Writes `data` at `offset_bytes`. The data is durable when the future resolves: the
    /// backend acknowledges after three replicas hold it.
    fn write(
        &self,
        offset_bytes: u64,
        data: &[u8],
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Makes every completed write durable. A no-op for backends whose writes are durable on
    /// completion, kept so that a backend with a cache can be plugged in.
    fn flush(&self) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Deallocates `length_bytes` bytes at `offset_bytes`; they read as zeros afterwards.
    fn unmap(
        &self,
        offset_bytes: u64,
        length_bytes: u64,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;
}

/// A shared device is a device: the server keeps a handle to the volume (to resize it, or a
/// test to inject faults) while the logical unit serves it.
impl<T: BlockDevice> BlockDevice for Arc<T> {
    fn size_bytes(&self) -> impl Future<Output = Result<u64, DeviceError>> + Send {
        T::size_bytes(self)
    }

    fn block_size(&self) -> impl Future<Output = Result<u32, DeviceError>> + Send {
        T::block_size(self)
    }

    fn read(
        &self,
        offset_bytes: u64,
        length_bytes: u32,
    ) -> impl Future<Output = Result<Vec<u8>, DeviceError>> + Send {
        T::read(self, offset_bytes, length_bytes)
    }

    fn write(
        &self,
        offset_bytes: u64,
        data: &[u8],
    ) -> impl Future<Output = Result<(), DeviceError>> + Send {
        T::write(self, offset_bytes, data)
    }

    fn flush(&self) -> impl Future<Output = Result<(), DeviceError>> + Send {
        T::flush(self)
    }

    fn unmap(
        &self,
        offset_bytes: u64,
        length_bytes: u64,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send {
        T::unmap(self, offset_bytes, length_bytes)
    }
}

/// The largest [`MemDevice`]: it is a test device, and its size bounds the memory it may hold
/// (its map only holds written blocks, but every block may be written).
pub const MEM_DEVICE_SIZE_BYTES_MAX: u64 = 1 << 30;

/// An in-memory block device: a sparse map from LBA to block contents, with injectable
/// medium errors.
pub struct MemDevice {
    size_bytes: u64,
    block_size: u32,
    state: Mutex<MemState>,
}

#[derive(Default)]
struct MemState {
    /// Written blocks. A block not in the map reads as zeros.
    blocks: BTreeMap<u64, Box<[u8]>>,
    /// LBAs whose reads fail with a medium error.
    read_faults: BTreeSet<u64>,
    /// LBAs whose writes fail with a medium error.
    write_faults: BTreeSet<u64>,
}

impl MemDevice {
    /// A zero-filled device of `size_bytes` bytes in blocks of `block_size` bytes (512 or
    /// 4096).
    pub fn new(size_bytes: u64, block_size: u32) -> MemDevice {
        assert!(
            block_size == 512 || block_size == 4096,
            "block size {block_size}"
        );
        assert!(
            size_bytes.is_multiple_of(block_size.into()),
            "size {size_bytes}"
        );
        assert!(size_bytes <= MEM_DEVICE_SIZE_BYTES_MAX, "size {size_bytes}");
        MemDevice {
            size_bytes,
            block_size,
            state: Mutex::new(MemState::default()),
        }
    }

    /// Makes reads of `lba` fail with a medium error until [`MemDevice::clear_faults`].
    pub fn fail_reads(&self, lba: u64) {
        self.lock().read_faults.insert(lba);
    }

    /// Makes writes of `lba` fail with a medium error until [`MemDevice::clear_faults`].
    pub fn fail_writes(&self, lba: u64) {
        self.lock().write_faults.insert(lba);
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        let mut state = self.lock();
        state.read_faults.clear();
        state.write_faults.clear();
    }

    /// How many blocks are allocated (written and not unmapped), to observe UNMAP in tests.
    pub fn mapped_blocks(&self) -> u64 {
        self.lock().blocks.len() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        // A panic while holding the lock cannot leave the map half-updated (each update is
        // one map operation), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks a request and returns its block range. Misaligned requests are a bug in the
    /// caller (the SCSI layer only sends whole blocks); ranges past the end are errors.
    fn blocks_of(&self, offset_bytes: u64, length_bytes: u64) -> Result<(u64, u64), DeviceError> {
        let block_size = u64::from(self.block_size);
        assert!(
            offset_bytes.is_multiple_of(block_size),
            "offset {offset_bytes}"
        );
        assert!(
            length_bytes.is_multiple_of(block_size),
            "length {length_bytes}"
        );
        let end = offset_bytes.checked_add(length_bytes);
        if end.is_none_or(|end| end > self.size_bytes) {
            return Err(DeviceError::OutOfRange {
                offset_bytes,
                length_bytes,
            });
        }
        Ok((offset_bytes / block_size, length_bytes / block_size))
    }

    fn read_now(&self, offset_bytes: u64, length_bytes: u32) -> Result<Vec<u8>, DeviceError> {
        let (lba_first, count) = self.blocks_of(offset_bytes, length_bytes.into())?;
        let state = self.lock();
        let block_size = self.block_size as usize;
        if let Some(&lba) = state.read_faults.range(lba_first..lba_first + count).next() {
            return Err(DeviceError::Medium {
                offset_bytes: lba * u64::from(self.block_size),
            });
        }
        let mut data = vec![0u8; length_bytes as usize];
        for (&lba, block) in state.blocks.range(lba_first..lba_first + count) {
            let at = (lba - lba_first) as usize * block_size;
            data[at..at + block_size].copy_from_slice(block);
        }
        Ok(data)
    }

    fn write_now(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DeviceError> {
        let (lba_first, count) = self.blocks_of(offset_bytes, data.len() as u64)?;
        let mut state = self.lock();
        if let Some(&lba) = state
            .write_faults
            .range(lba_first..lba_first + count)
            .next()
        {
            // The write fails whole: a medium error leaves the other blocks as they were,
            // which is stronger than SBC-4 asks (their content would be indeterminate).
            return Err(DeviceError::Medium {
                offset_bytes: lba * u64::from(self.block_size),
            });
        }
        for (index, block) in data.chunks_exact(self.block_size as usize).enumerate() {
            state.blocks.insert(lba_first + index as u64, block.into());
        }
        Ok(())
    }

    fn unmap_now(&self, offset_bytes: u64, length_bytes: u64) -> Result<(), DeviceError> {
        let (lba_first, count) = self.blocks_of(offset_bytes, length_bytes)?;
        let mut state = self.lock();
        let unmapped: Vec<u64> = state
            .blocks
            .range(lba_first..lba_first + count)
            .map(|(&lba, _)| lba)
            .collect();
        for lba in unmapped {
            state.blocks.remove(&lba);
        }
        Ok(())
    }
}

impl BlockDevice for MemDevice {
    fn size_bytes(&self) -> impl Future<Output = Result<u64, DeviceError>> + Send {
        future::ready(Ok(self.size_bytes))
    }

    fn block_size(&self) -> impl Future<Output = Result<u32, DeviceError>> + Send {
        future::ready(Ok(self.block_size))
    }

    fn read(
        &self,
        offset_bytes: u64,
        length_bytes: u32,
    ) -> impl Future<Output = Result<Vec<u8>, DeviceError>> + Send {
        future::ready(self.read_now(offset_bytes, length_bytes))
    }

    fn write(
        &self,
        offset_bytes: u64,
        data: &[u8],
    ) -> impl Future<Output = Result<(), DeviceError>> + Send {
        future::ready(self.write_now(offset_bytes, data))
    }

    fn flush(&self) -> impl Future<Output = Result<(), DeviceError>> + Send {
        future::ready(Ok(()))
    }

    fn unmap(
        &self,
        offset_bytes: u64,
        length_bytes: u64,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send {
        future::ready(self.unmap_now(offset_bytes, length_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes, reads back, unmaps and reads zeros; then injects a read fault.
    #[tokio::test(flavor = "current_thread")]
    async fn write_read_unmap_fault() {
        let device = MemDevice::new(64 * 512, 512);
        let data: Vec<u8> = (0..1024u32).map(|index| index as u8).collect();
        device.write(512, &data).await.expect("in range");
        assert_eq!(device.read(512, 1024).await.expect("in range"), data);
        assert_eq!(device.mapped_blocks(), 2);
        device.unmap(0, 1024).await.expect("in range");
        let read = device.read(0, 2048).await.expect("in range");
        assert_eq!(&read[..1024], &[0u8; 1024]);
        assert_eq!(&read[1024..1536], &data[512..]);
        assert_eq!(device.mapped_blocks(), 1);
        device.fail_reads(3);
        match device.read(0, 2048).await {
            Err(DeviceError::Medium { offset_bytes }) => assert_eq!(offset_bytes, 3 * 512),
            other => panic!("expected a medium error, got {other:?}"),
        }
        assert!(matches!(
            device.read(63 * 512, 1024).await,
            Err(DeviceError::OutOfRange { .. })
        ));
    }
}
