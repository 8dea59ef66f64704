//! The iSCSI gateway over Cairn volumes: every volume is a target with LUN 0, its bytes read
//! and written through the same data path as the HTTP data routes ([`data::read_range`],
//! [`data::write_range`]), so a write's status goes back to the initiator only once every
//! piece is committed by its PG.
//!
//! Everything a gateway knows comes from the metadata service through the admin API, so any
//! number of gateways (`cairn gateway iscsi`, each `cairn node run --iscsi-listen`, the one in
//! `cairn dev`) serve the same targets and agree:
//! - every [`REFRESH_INTERVAL`] the gateway lists the targets (`/v1/iscsi/targets`): target
//!   names derive from volume names (`cairn_metadata::api::target_name`), each with its CHAP
//!   credentials and initiator ACL (or the gateway's own credential), and its QoS limits,
//!   enforced here across all its sessions with token buckets (`cairn_client::qos`);
//! - persistent reservations live in the volume's metadata record ([`MetaReservations`]);
//! - the gateway registers its portal, so `attach-info` can name it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use cairn_client::qos::{Qos, QosLimits};
use cairn_common::OwnerId;
use cairn_gateway_iscsi::{
    login::{ChapAuth, ChapCredentials, ChapSecret, CheckedConfig, LoginConfig, TargetConfig},
    scsi::{
        BlockDevice, DeviceError, Nexus, PrOutRequest, PrRefusal, ReservationState,
        ReservationStore, StoreError, VolumeId,
    },
    server::{Server, ServerConfig, Volumes},
};
pub use cairn_metadata::api::{DEFAULT_CHAP_USER as CHAP_USER, IQN_PREFIX};
use cairn_metadata::api::{hex, unhex};
use serde_json::{Value, json};

use crate::{
    admin::{Connection, Method, call},
    data::{self, Backend, DataError, Target},
};

/// How often the gateway looks for volumes created, deleted or changed.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The logical block size the gateway presents: what initiators expect of a disk.
pub const BLOCK_SIZE_BYTES: u32 = 512;

/// How long a gateway trusts the reservation state it read. A change that can take access
/// away waits this long (and a margin) before it is acknowledged, so by then every gateway
/// has read the new state: a preempted initiator cannot write through another gateway after
/// the preempting one was told GOOD (a lease, as in leader leases).
const RESERVATION_TRUST: Duration = Duration::from_secs(1);

/// What a revoking reservation change waits beyond [`RESERVATION_TRUST`] (clock-rate skew
/// between gateways, scheduling).
const RESERVATION_MARGIN: Duration = Duration::from_millis(200);

/// Compare-and-set rounds a reservation change tries against other gateways' changes.
const RESERVATION_ATTEMPTS_MAX: usize = 16;

/// The 16-byte identity SCSI reports for a volume (VPD page 0x83, the serial number): its
/// owner id, which no other volume ever gets.
fn volume_id(owner: OwnerId) -> VolumeId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(b"CAIRNVOL");
    id[8..].copy_from_slice(&owner.0.to_be_bytes());
    VolumeId(id)
}

/// The owner id inside a [`volume_id`].
fn owner_of(volume: VolumeId) -> Option<OwnerId> {
    let (tag, owner) = volume.0.split_at(8);
    (tag == b"CAIRNVOL").then(|| OwnerId(u64::from_be_bytes(owner.try_into().unwrap_or([0; 8]))))
}

/// A CHAP credential the gateway asks for when a volume sets none of its own.
#[derive(Clone, Debug)]
pub struct Chap {
    /// CHAP_N.
    pub user: String,
    /// The shared secret (redacted in `Debug`).
    pub secret: ChapSecret,
}

/// One target as the metadata service lists it.
#[derive(Clone, Debug)]
struct Listed {
    volume: String,
    owner: OwnerId,
    /// Its target name, as the metadata service derives it from the volume name.
    target: String,
    limits: QosLimits,
    /// The volume's own CHAP credential and mutual one, if set.
    chap: Option<ChapAuth>,
    initiators: Vec<String>,
}

fn credential(value: &Value) -> Option<ChapCredentials> {
    Some(ChapCredentials {
        user: value["user"].as_str()?.to_string(),
        secret: ChapSecret::new(value["secret"].as_str()?.to_string()),
    })
}

/// Parses `/v1/iscsi/targets`.
fn parse_targets(listing: &Value) -> Result<Vec<Listed>, String> {
    let mut targets = Vec::new();
    for target in listing.as_array().ok_or("targets: not a list")? {
        let volume = target["name"].as_str().ok_or("a target without a name")?;
        let owner = target["id"]
            .as_str()
            .and_then(|id| u64::from_str_radix(id, 16).ok())
            .ok_or_else(|| format!("volume {volume} without an id"))?;
        let name = target["target"]
            .as_str()
            .ok_or_else(|| format!("volume {volume} without a target name"))?;
        let access = &target["access"];
        let chap = credential(&access["chap"]).map(|initiator| ChapAuth {
            initiator,
            target: credential(&access["mutual"]),
        });
        let initiators = access["initiators"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|name| name.as_str().map(str::to_string))
            .collect();
        targets.push(Listed {
            volume: volume.to_string(),
            owner: OwnerId(owner),
            target: name.to_string(),
            limits: QosLimits {
                iops: target["iops_max"].as_u64().unwrap_or(800).max(1),
                bytes_per_s: target["bytes_per_s_max"].as_u64().filter(|b| *b > 0),
            },
            chap,
            initiators,
        });
    }
    Ok(targets)
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
            .unwrap_or_else(PoisonError::into_inner)
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
        data::discard_range(&self.backend, &target, offset_bytes, length_bytes)
            .await
            .map_err(|e| device_error("unmap", e))
    }
}

/// A volume's QoS buckets and the limits they were made for.
type Buckets = (QosLimits, Arc<Mutex<Qos>>);

/// The volumes behind the gateway's targets, by target name.
#[derive(Clone)]
pub struct VolumeTargets<B> {
    backend: B,
    /// Lowercased target name to volume name, as of the last refresh.
    names: Arc<Mutex<BTreeMap<String, String>>>,
    /// Owner id to volume name (reservations are keyed by the SCSI volume id).
    owners: Arc<Mutex<HashMap<OwnerId, String>>>,
    /// Per volume name, its QoS buckets (kept across sessions, so logging in again does not
    /// refill them; replaced when the limits change).
    qos: Arc<Mutex<BTreeMap<String, Buckets>>>,
}

impl<B: Backend> VolumeTargets<B> {
    /// No targets until the first refresh.
    pub fn new(backend: B) -> VolumeTargets<B> {
        VolumeTargets {
            backend,
            names: Arc::default(),
            owners: Arc::default(),
            qos: Arc::default(),
        }
    }

    /// Takes the targets listed now and returns the login configuration: one target per
    /// volume, each behind its own CHAP credential or else `chap`, and its initiator ACL.
    fn refresh(
        &self,
        listed: &[Listed],
        chap: Option<&Chap>,
    ) -> Result<Arc<CheckedConfig>, String> {
        let served = listed
            .len()
            .min(cairn_gateway_iscsi::login::config::TARGETS_MAX);
        if served < listed.len() {
            tracing::warn!(
                volumes = listed.len(),
                served,
                "more volumes than one gateway serves as targets; the rest are not served"
            );
        }
        let listed = &listed[..served];
        let default = chap.map(|chap| ChapAuth {
            initiator: ChapCredentials {
                user: chap.user.clone(),
                secret: chap.secret.clone(),
            },
            target: None,
        });
        let mut names = BTreeMap::new();
        let mut targets = Vec::new();
        for target in listed {
            names.insert(target.target.to_ascii_lowercase(), target.volume.clone());
            targets.push(TargetConfig {
                name: target.target.clone(),
                alias: Some(target.volume.clone()),
                chap: target.chap.clone().or_else(|| default.clone()),
                allowed_initiators: target.initiators.clone(),
            });
        }
        let config = LoginConfig {
            targets,
            ..LoginConfig::default()
        }
        .check()
        .map_err(|e| format!("iSCSI targets: {e}"))?;
        let now = Instant::now();
        {
            let mut qos = self.qos.lock().unwrap_or_else(PoisonError::into_inner);
            let served: HashSet<&String> = listed.iter().map(|t| &t.volume).collect();
            qos.retain(|volume, _| served.contains(volume));
            for target in listed {
                match qos.get_mut(&target.volume) {
                    Some((limits, buckets)) if *limits != target.limits => {
                        *limits = target.limits;
                        *buckets.lock().unwrap_or_else(PoisonError::into_inner) =
                            Qos::new(target.limits, now);
                    }
                    Some(_) => {}
                    None => {
                        let buckets = Arc::new(Mutex::new(Qos::new(target.limits, now)));
                        qos.insert(target.volume.clone(), (target.limits, buckets));
                    }
                }
            }
        }
        *self.owners.lock().unwrap_or_else(PoisonError::into_inner) =
            listed.iter().map(|t| (t.owner, t.volume.clone())).collect();
        *self.names.lock().unwrap_or_else(PoisonError::into_inner) = names;
        Ok(config)
    }

    /// The volume of a SCSI volume id, as of the last refresh.
    fn volume_of(&self, volume: VolumeId) -> Option<String> {
        let owner = owner_of(volume)?;
        let owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        owners.get(&owner).cloned()
    }
}

impl<B: Backend> Volumes for VolumeTargets<B> {
    type Device = VolumeDevice<B>;

    async fn open(&self, target_name: &str) -> Result<(VolumeDevice<B>, VolumeId), String> {
        let volume = self
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&target_name.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| format!("no volume behind target {target_name}"))?;
        let target = self
            .backend
            .target(volume.clone())
            .await
            .map_err(|e| format!("volume {volume}: {e:?}"))?;
        let id = volume_id(target.owner);
        let qos = self
            .qos
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&volume)
            .map(|(_, buckets)| buckets.clone())
            .ok_or_else(|| format!("volume {volume} has no QoS yet"))?;
        let device = VolumeDevice {
            backend: self.backend.clone(),
            volume,
            qos,
        };
        Ok((device, id))
    }
}

/// A reservation state read from the metadata service, and when the read began.
#[derive(Clone)]
struct Read {
    state: Arc<ReservationState>,
    version: u64,
    at: Instant,
}

/// Persistent reservations kept in the metadata service (each volume's record), so every
/// gateway applies PERSISTENT RESERVE OUT to the same state in one order: a change is a
/// compare-and-set on the record's version, retried from a fresh read when another gateway
/// changed it first. Reads are cached for [`RESERVATION_TRUST`] (every SCSI command checks
/// the state); a change that can take access away is acknowledged only after every other
/// gateway's cached copy has expired.
pub struct MetaReservations<B> {
    connection: Connection,
    targets: VolumeTargets<B>,
    cache: Mutex<HashMap<VolumeId, Read>>,
}

fn store_error(volume: VolumeId, why: String) -> StoreError {
    StoreError {
        volume,
        source: why.into(),
    }
}

impl<B: Backend> MetaReservations<B> {
    fn name(&self, volume: VolumeId) -> Result<String, StoreError> {
        self.targets
            .volume_of(volume)
            .ok_or_else(|| store_error(volume, "no volume with this id is listed".into()))
    }

    /// Reads the state from the metadata service (and caches it).
    async fn fetch(&self, volume: VolumeId) -> Result<Read, StoreError> {
        let name = self.name(volume)?;
        let at = Instant::now();
        let value = call(
            &self.connection,
            format!("/v1/volumes/{name}/reservation"),
            Method::Get,
        )
        .await
        .map_err(|e| store_error(volume, e))?;
        let version = value["version"].as_u64().unwrap_or_default();
        let bytes = unhex(value["state"].as_str().unwrap_or_default())
            .ok_or_else(|| store_error(volume, "reservation state is not hexadecimal".into()))?;
        let state = if version == 0 {
            ReservationState::default()
        } else {
            ReservationState::decode(&bytes).map_err(|e| store_error(volume, e.to_string()))?
        };
        let read = Read {
            state: Arc::new(state),
            version,
            at,
        };
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(volume, read.clone());
        Ok(read)
    }
}

/// Whether going from `before` to `after` can keep some nexus from a command it could run.
fn may_revoke(before: &ReservationState, after: &ReservationState) -> bool {
    before.reservation != after.reservation
        || before
            .registrations
            .iter()
            .any(|r| !after.registrations.contains(r))
}

impl<B: Backend> ReservationStore for MetaReservations<B> {
    async fn load(&self, volume: VolumeId) -> Result<Arc<ReservationState>, StoreError> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&volume)
            .filter(|read| read.at.elapsed() < RESERVATION_TRUST)
            .map(|read| read.state.clone());
        match cached {
            Some(state) => Ok(state),
            None => Ok(self.fetch(volume).await?.state),
        }
    }

    async fn apply(
        &self,
        volume: VolumeId,
        nexus: &Nexus,
        request: &PrOutRequest,
    ) -> Result<Result<(), PrRefusal>, StoreError> {
        let name = self.name(volume)?;
        for _ in 0..RESERVATION_ATTEMPTS_MAX {
            let read = self.fetch(volume).await?;
            let mut state = (*read.state).clone();
            if let Err(refusal) = state.apply(nexus, request) {
                return Ok(Err(refusal));
            }
            let body = json!({ "expected": read.version, "state": hex(&state.encode()) });
            let put = call(
                &self.connection,
                format!("/v1/volumes/{name}/reservation"),
                Method::Put(body),
            )
            .await;
            match put {
                Ok(_) => {
                    self.cache
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&volume);
                    if may_revoke(&read.state, &state) {
                        tokio::time::sleep(RESERVATION_TRUST + RESERVATION_MARGIN).await;
                    }
                    return Ok(Ok(()));
                }
                // Another gateway changed it since the read: read again.
                Err(e) if e.ends_with("(HTTP 412)") => continue,
                Err(e) => return Err(store_error(volume, e)),
            }
        }
        Err(store_error(
            volume,
            format!("{RESERVATION_ATTEMPTS_MAX} attempts lost to other gateways' changes"),
        ))
    }
}

/// How a gateway serves: where initiators are told to connect, and the default credential.
pub struct GatewayConfig {
    /// The admin API (with its token).
    pub connection: Connection,
    /// The CHAP credential of targets whose volume sets none (`None`: no CHAP for them).
    pub chap: Option<Chap>,
    /// The portal registered for attach-info ("address:port"); `None` registers the
    /// listener's address unless it is a wildcard.
    pub advertise: Option<std::net::SocketAddr>,
}

/// Serves iSCSI on `listener` for every volume the metadata service lists, until the
/// process ends.
pub async fn serve<B: Backend>(
    listener: tokio::net::TcpListener,
    backend: B,
    config: GatewayConfig,
) -> Result<(), String> {
    let targets = VolumeTargets::new(backend);
    let login = targets.refresh(&[], config.chap.as_ref())?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("iSCSI listener: {e}"))?;
    let group_tag = login.get().portal_group_tag;
    let portal = format!("{address},{group_tag}");
    let reservations = MetaReservations {
        connection: config.connection.clone(),
        targets: targets.clone(),
        cache: Mutex::default(),
    };
    let server = Server::new(
        ServerConfig::new(login, portal),
        targets.clone(),
        Arc::new(reservations),
    );
    let advertised = config
        .advertise
        .or((!address.ip().is_unspecified()).then_some(address));
    if advertised.is_none() {
        tracing::warn!(%address, "iSCSI portal on a wildcard address: not registered for attach-info");
    }
    let refreshed = server.clone();
    let connection = config.connection;
    let chap = config.chap;
    tokio::spawn(async move {
        let mut known = None;
        let mut registered = false;
        loop {
            if let (Some(portal), false) = (advertised, registered) {
                let path = format!("/v1/iscsi/portals/{portal}");
                let body = json!({ "group_tag": group_tag });
                match call(&connection, path, Method::Put(body)).await {
                    Ok(_) => {
                        tracing::info!(%portal, "iSCSI portal registered");
                        registered = true;
                    }
                    Err(e) => tracing::debug!("iSCSI portal not registered yet: {e}"),
                }
            }
            match call(&connection, "/v1/iscsi/targets".into(), Method::Get).await {
                Ok(listing) if known.as_ref() != Some(&listing) => {
                    let refresh = parse_targets(&listing)
                        .and_then(|listed| targets.refresh(&listed, chap.as_ref()));
                    match refresh {
                        Ok(config) => {
                            let count = listing.as_array().map_or(0, Vec::len);
                            tracing::info!(targets = count, "iSCSI targets refreshed");
                            refreshed.set_login_config(config);
                            known = Some(listing);
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
    fn volume_ids_carry_the_owner() {
        assert_eq!(owner_of(volume_id(OwnerId(77))), Some(OwnerId(77)));
        assert_eq!(owner_of(VolumeId([0; 16])), None);
    }

    #[test]
    fn listings_parse_with_credentials_and_limits() {
        let listing = json!([
            { "name": "a", "id": "1f", "target": "iqn.2026-12.io.cairn:a", "iops_max": 2500,
              "bytes_per_s_max": null, "access": null },
            { "name": "b", "id": "20", "target": "iqn.2026-12.io.cairn:b", "iops_max": 50000,
              "bytes_per_s_max": 100000000,
              "access": { "chap": { "user": "u", "secret": "secret-of-u!" },
                          "mutual": null, "initiators": ["iqn.2026-12.org.x:h"] } },
        ]);
        let listed = parse_targets(&listing).expect("parse");
        assert_eq!(listed[0].owner, OwnerId(0x1f));
        assert!(listed[0].chap.is_none());
        assert_eq!(listed[1].limits.bytes_per_s, Some(100_000_000));
        let chap = listed[1].chap.as_ref().expect("chap");
        assert_eq!(chap.initiator.user, "u");
        assert_eq!(listed[1].initiators, ["iqn.2026-12.org.x:h"]);
        assert!(parse_targets(&json!([{ "name": "c" }])).is_err());
    }
}
