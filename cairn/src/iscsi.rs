//! The iSCSI gateway over Cairn volumes: every volume is a target with LUN 0, its bytes read
//! and written through the same data path as the HTTP data routes ([`data::read_range`],
//! [`data::write_range`]), so a write's status goes back to the initiator only once every
//! piece is committed by its PG.
//!
//! Target names derive from volume names ([`target_name`]); the gateway refreshes its target
//! list from the metadata service every [`REFRESH_INTERVAL`], so a new volume can be logged
//! into a second after it is created. Each volume's IOPS tier is enforced here, across all
//! its sessions, with a token bucket (`cairn_client::qos`).
//!
//! Not yet: persistent reservations live in this gateway's memory (one gateway per
//! `cairn dev`; the metadata service will hold them when gateways multiply), CHAP is one
//! credential for every target, and UNMAP writes zeros (the chunk store cannot deallocate).

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cairn_client::qos::{Qos, QosLimits};
use cairn_common::OwnerId;
use cairn_gateway_iscsi::{
    login::{ChapAuth, ChapCredentials, ChapSecret, CheckedConfig, LoginConfig, TargetConfig},
    scsi::{BlockDevice, DeviceError, MemReservationStore, VolumeId},
    server::{Server, ServerConfig, Volumes},
};

use crate::data::{self, Backend, DataError, Target};

/// The IQN every volume's target name starts with (RFC 7143 iSCSI names: `iqn.`, the month the
/// naming authority owned its domain, the reversed domain, then our own part).
pub const IQN_PREFIX: &str = "iqn.2026-12.io.cairn:";

/// The CHAP user every target asks for (`cairn dev` and `cairn node run --iscsi-listen`).
pub const CHAP_USER: &str = "cairn";

/// How often the gateway looks for volumes created or deleted.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The logical block size the gateway presents: what initiators expect of a disk.
pub const BLOCK_SIZE_BYTES: u32 = 512;

/// Largest zero write one UNMAP step makes (the chunk store has no deallocation yet, so
/// unmapped ranges are written with zeros).
const ZERO_STEP_BYTES: u64 = 4 << 20;

/// The target name of volume `volume` (chunks keyed by `owner`). A volume name that is already
/// a valid iSCSI name part (a-z, 0-9, '-', '.') is used as it is; any other is lowercased, '_'
/// becomes '-', and the owner id follows after a ':' (a character volume names never hold), so
/// two volumes never share a target name although iSCSI names ignore case.
pub fn target_name(volume: &str, owner: OwnerId) -> String {
    let plain = volume
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if plain {
        return format!("{IQN_PREFIX}{volume}");
    }
    let mapped: String = volume
        .chars()
        .map(|c| match c {
            '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    format!("{IQN_PREFIX}{mapped}:{}", owner.0)
}

/// The 16-byte identity SCSI reports for a volume (VPD page 0x83, the serial number): its
/// owner id, which no other volume ever gets.
fn volume_id(owner: OwnerId) -> VolumeId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(b"CAIRNVOL");
    id[8..].copy_from_slice(&owner.0.to_be_bytes());
    VolumeId(id)
}

/// CHAP the gateway asks of every initiator logging in to a target (one-way; discovery is
/// open, as it reveals only target names).
#[derive(Clone, Debug)]
pub struct Chap {
    /// CHAP_N.
    pub user: String,
    /// The shared secret (redacted in `Debug`).
    pub secret: ChapSecret,
}

/// A volume as the gateway serves it.
pub struct VolumeDevice<B> {
    backend: B,
    /// The volume's name: each IO looks it up (through the backend's cache), so a resize
    /// shows and a deleted volume stops taking writes.
    volume: String,
    /// The volume's buckets, shared by every session on it.
    qos: Arc<Mutex<Qos>>,
}

impl<B: Backend> VolumeDevice<B> {
    /// The volume as the backend knows it now.
    async fn target(&self, operation: &'static str) -> Result<Target, DeviceError> {
        self.backend
            .target(self.volume.clone())
            .await
            .map_err(|e| device_error(operation, e))
    }

    /// Waits for the volume's QoS to admit an IO of `bytes`.
    async fn admit(&self, bytes: u64) {
        let wait = self
            .qos
            .lock()
            .expect("invariant: not poisoned")
            .admit(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

fn device_error(operation: &'static str, error: DataError) -> DeviceError {
    match error {
        DataError::Unavailable(_) => DeviceError::Busy,
        other => DeviceError::Failed {
            operation,
            source: format!("{other:?}").into(),
        },
    }
}

impl<B: Backend> BlockDevice for VolumeDevice<B> {
    async fn size_bytes(&self) -> Result<u64, DeviceError> {
        let block = u64::from(BLOCK_SIZE_BYTES);
        Ok(self.target("size").await?.size_bytes / block * block)
    }

    async fn block_size(&self) -> Result<u32, DeviceError> {
        Ok(BLOCK_SIZE_BYTES)
    }

    async fn read(&self, offset_bytes: u64, length_bytes: u32) -> Result<Vec<u8>, DeviceError> {
        self.admit(u64::from(length_bytes)).await;
        let target = self.target("read").await?;
        data::read_range(
            &self.backend,
            &target,
            offset_bytes,
            u64::from(length_bytes),
        )
        .await
        .map_err(|e| device_error("read", e))
    }

    async fn write(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.admit(data.len() as u64).await;
        let target = self.target("write").await?;
        data::write_range(&self.backend, &target, offset_bytes, data)
            .await
            .map_err(|e| device_error("write", e))
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        // Every write is durable on three replicas when it completes: nothing is cached here.
        Ok(())
    }

    async fn unmap(&self, offset_bytes: u64, length_bytes: u64) -> Result<(), DeviceError> {
        self.admit(0).await;
        let target = self.target("unmap").await?;
        let zeros = vec![0u8; ZERO_STEP_BYTES.min(length_bytes) as usize];
        let mut at = 0;
        while at < length_bytes {
            let step = (length_bytes - at).min(ZERO_STEP_BYTES) as usize;
            data::write_range(&self.backend, &target, offset_bytes + at, &zeros[..step])
                .await
                .map_err(|e| device_error("unmap", e))?;
            at += step as u64;
        }
        Ok(())
    }
}

/// The volumes behind the gateway's targets, by target name.
#[derive(Clone)]
pub struct VolumeTargets<B> {
    backend: B,
    /// Lowercased target name to volume name, as of the last refresh.
    names: Arc<Mutex<BTreeMap<String, String>>>,
    /// Per volume name, its QoS buckets (kept across sessions, so logging in again does not
    /// refill them).
    qos: Arc<Mutex<BTreeMap<String, Arc<Mutex<Qos>>>>>,
}

impl<B: Backend> VolumeTargets<B> {
    /// No targets until the first [`VolumeTargets::refresh`].
    pub fn new(backend: B) -> VolumeTargets<B> {
        VolumeTargets {
            backend,
            names: Arc::default(),
            qos: Arc::default(),
        }
    }

    /// Takes the volumes that exist now (name and owner id) and returns the login
    /// configuration listing one target per volume, each behind `chap`.
    pub fn refresh(
        &self,
        volumes: &[(String, OwnerId)],
        chap: Option<&Chap>,
    ) -> Result<Arc<CheckedConfig>, String> {
        let mut names = BTreeMap::new();
        let mut targets = Vec::new();
        for (volume, owner) in volumes {
            let name = target_name(volume, *owner);
            names.insert(name.to_ascii_lowercase(), volume.clone());
            targets.push(TargetConfig {
                name,
                alias: Some(volume.clone()),
                chap: chap.map(|chap| ChapAuth {
                    initiator: ChapCredentials {
                        user: chap.user.clone(),
                        secret: chap.secret.clone(),
                    },
                    target: None,
                }),
                allowed_initiators: Vec::new(),
            });
        }
        let config = LoginConfig {
            targets,
            ..LoginConfig::default()
        }
        .check()
        .map_err(|e| format!("iSCSI targets: {e}"))?;
        self.qos
            .lock()
            .expect("invariant: not poisoned")
            .retain(|volume, _| names.values().any(|v| v == volume));
        *self.names.lock().expect("invariant: not poisoned") = names;
        Ok(config)
    }
}

impl<B: Backend> Volumes for VolumeTargets<B> {
    type Device = VolumeDevice<B>;

    async fn open(&self, target_name: &str) -> Result<(VolumeDevice<B>, VolumeId), String> {
        let volume = self
            .names
            .lock()
            .expect("invariant: not poisoned")
            .get(&target_name.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| format!("no volume behind target {target_name}"))?;
        let target = self
            .backend
            .target(volume.clone())
            .await
            .map_err(|e| format!("volume {volume}: {e:?}"))?;
        let id = volume_id(target.owner);
        let limits = QosLimits {
            iops: u64::from(target.iops_max.max(1)),
            bytes_per_s: None,
        };
        let qos = self
            .qos
            .lock()
            .expect("invariant: not poisoned")
            .entry(volume.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Qos::new(limits, Instant::now()))))
            .clone();
        let device = VolumeDevice {
            backend: self.backend.clone(),
            volume,
            qos,
        };
        Ok((device, id))
    }
}

/// Serves iSCSI on `listener` for the volumes `list` names (name and owner id; asked every
/// [`REFRESH_INTERVAL`]), each target behind `chap`, until the process ends.
pub async fn serve<B, L, F>(
    listener: tokio::net::TcpListener,
    backend: B,
    chap: Option<Chap>,
    list: L,
) -> Result<(), String>
where
    B: Backend,
    L: Fn() -> F + Send + 'static,
    F: Future<Output = Result<Vec<(String, OwnerId)>, String>> + Send,
{
    let targets = VolumeTargets::new(backend);
    let login = targets.refresh(&[], chap.as_ref())?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("iSCSI listener: {e}"))?;
    let portal = format!("{address},{}", login.get().portal_group_tag);
    let server = Server::new(
        ServerConfig::new(login, portal),
        targets.clone(),
        Arc::new(MemReservationStore::default()),
    );
    let refreshed = server.clone();
    tokio::spawn(async move {
        let mut known = None;
        loop {
            match list().await {
                Ok(volumes) if known.as_ref() != Some(&volumes) => {
                    match targets.refresh(&volumes, chap.as_ref()) {
                        Ok(config) => {
                            tracing::info!(targets = volumes.len(), "iSCSI targets refreshed");
                            refreshed.set_login_config(config);
                            known = Some(volumes);
                        }
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("iSCSI targets not refreshed: {e}"),
            }
            tokio::time::sleep(REFRESH_INTERVAL).await;
        }
    });
    server
        .serve(listener, std::future::pending())
        .await
        .map_err(|e| format!("iSCSI server on {address}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_are_valid_and_distinct() {
        assert_eq!(
            target_name("vol-1.a", OwnerId(9)),
            "iqn.2026-12.io.cairn:vol-1.a"
        );
        let upper = target_name("Vol_1", OwnerId(9));
        let lower = target_name("vol-1", OwnerId(10));
        assert_eq!(upper, "iqn.2026-12.io.cairn:vol-1:9");
        assert_ne!(upper.to_ascii_lowercase(), lower.to_ascii_lowercase());
        for name in [upper, lower] {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b)),
                "{name}"
            );
        }
    }
}
