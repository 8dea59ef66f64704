//! [`Volumes`] over in-memory devices, for tests, `cairn-iscsi-mem` and benchmarks.

use std::{
    collections::HashMap,
    future::{self, Future},
    sync::{Arc, Mutex, PoisonError},
};

use super::Volumes;
use crate::scsi::{MemDevice, VolumeId};

/// Targets backed by [`MemDevice`]s. Every session of a target sees the same device.
#[derive(Default)]
pub struct MemVolumes {
    targets: Mutex<HashMap<String, (Arc<MemDevice>, VolumeId)>>,
}

impl MemVolumes {
    /// No targets yet.
    pub fn new() -> MemVolumes {
        MemVolumes::default()
    }

    /// Adds (or replaces) the device of `target_name`: `size_bytes` bytes in blocks of
    /// `block_size` bytes. Returns the device, to inspect or to inject faults.
    pub fn add(&self, target_name: &str, size_bytes: u64, block_size: u32) -> Arc<MemDevice> {
        let device = Arc::new(MemDevice::new(size_bytes, block_size));
        let mut targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        // A volume id derived from the target's position makes serial numbers distinct.
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(b"cairnmem");
        id[8..].copy_from_slice(&(targets.len() as u64 + 1).to_be_bytes());
        targets.insert(
            target_name.to_ascii_lowercase(),
            (Arc::clone(&device), VolumeId(id)),
        );
        device
    }
}

impl Volumes for MemVolumes {
    type Device = Arc<MemDevice>;

    fn open(
        &self,
        target_name: &str,
    ) -> impl Future<Output = Result<(Self::Device, VolumeId), String>> + Send {
        let targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        let found = targets
            .get(&target_name.to_ascii_lowercase())
            .map(|(device, id)| (Arc::clone(device), *id))
            .ok_or_else(|| format!("no device for target {target_name}"));
        future::ready(found)
    }
}
