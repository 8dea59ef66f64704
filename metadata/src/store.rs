//! [`MetaStore`]: the [`MetaState`] persisted in RocksDB, applied in Raft log order.
//!
//! All command logic stays in [`MetaState::apply`]; the store writes down what it changed.
//! Memory is the truth for reads ([`MetaStore::state`]); RocksDB holds one record per object, so
//! that a restart reloads the state without replaying the whole log, and so that the keyspace
//! can later be split into ranges by prefix.
//!
//! # Key layout
//!
//! | key                       | value                                         |
//! |---------------------------|-----------------------------------------------|
//! | `map/disk/<32 hex digits>`| [`Disk`]; the id in lower-case hex, fixed width |
//! | `map/node/<16 hex digits>`| [`NodeRecord`](crate::state::NodeRecord): where a storage node listens |
//! | `pool/<name>`             | [`Pool`](crate::state::Pool): policy, PG map, epoch |
//! | `vol/<name>`              | [`Volume`](crate::state::Volume)              |
//! | `ten/<name>`              | [`Tenant`](crate::state::Tenant)              |
//! | `key/<access key id>`     | [`AccessKey`](crate::state::AccessKey) (holds the secret) |
//! | `portal/<address>`        | [`Portal`](crate::state::Portal): an iSCSI gateway's portal |
//! | `bkt/<name>`              | [`Bucket`](crate::objects::Bucket): owner, pool, totals |
//! | `obj/<bucket>/<key>`      | [`Versions`](crate::objects::Versions): the key's versions; any UTF-8 key |
//! | `upl/<upload id>`         | [`Upload`](crate::objects::Upload) with its parts |
//! | `pend/<16 hex digits>`    | [`PendingWrite`](crate::objects::PendingWrite), by owner id |
//! | `gc/<16 hex digits>`      | [`Garbage`](crate::objects::Garbage), by owner id |
//! | `sys/counters`            | the last pool, owner, tenant, bucket and version ids handed out |
//! | `sys/settings`            | operator switches (rebalance on or off)       |
//! | `sys/applied`             | the index of the last Raft entry applied      |
//!
//! A key holding only a null object version (every key of an unversioned bucket) stores that
//! [`ObjectRecord`](crate::objects::ObjectRecord) alone, as before versioning, so old stores
//! load unchanged; any other holds `{"versions": [...]}`.
//!
//! Names, bucket names, upload ids and access key ids hold no `/` (the state refuses them), so
//! each key parses back unambiguously; an object key is everything after its bucket's `/`.
//! Every value is versioned JSON ([`crate::codec`]: a format-version byte, then JSON). Loading
//! checks each value against its key (a disk's id, say) and the whole state against the
//! invariants `apply` keeps.
//!
//! # Which records a command changes
//!
//! [`touched`] maps a command to the keys it may change, from the command and the state before
//! it is applied (a pure `match`, so a new command cannot be forgotten): a command that replaces
//! or deletes an object, completes or aborts an upload or replaces a part turns segments only
//! the state knows into `gc/` records, and `BeginWrite`'s new owner is the counter's next.
//! After a successful apply, each touched key is rewritten from the new state, or deleted if
//! its object is gone. A refused command changes
//! nothing and writes only `sys/applied`. A property test checks that every record that differs
//! between the states before and after a command is among the touched keys.
//!
//! # Crash ordering
//!
//! Each applied entry is one atomic `WriteBatch`: its records and `sys/applied` = its index.
//! The batch is written without sync (`sync = false`): it reaches RocksDB's WAL in the OS page
//! cache, which survives a process crash but not a power loss. After a power loss, RocksDB
//! recovers a consistent prefix of the batches (point-in-time WAL recovery, set explicitly), so
//! the store reopens at some applied index `i` holding exactly the records of entries `<= i`,
//! and the Raft runtime replays entries `> i` from its own durable log. This needs two rules
//! from the runtime:
//!
//! 1. it never compacts its log past an entry until [`MetaStore::flush`] has returned after
//!    that entry was applied (flush syncs the WAL);
//! 2. it replays from [`MetaStore::applied_index`] + 1 after a restart and never hands an
//!    entry at or below the applied index to [`MetaStore::apply`] (asserted: a replayed entry
//!    is a runtime bug, and re-applying a create would hand out a second id).
//!
//! [`MetaStore::restore`] replaces everything in one batch written with `sync = true`: after a
//! snapshot is installed, the runtime drops the log entries it covers, so it must be durable
//! first. A crash before the batch is durable leaves the old content whole.
//!
//! If a write fails, the entry is applied in memory but not on disk; the store then refuses
//! every further apply and flush ([`StoreError::Failed`]), since a later batch would advance
//! `sys/applied` past the lost one. The process must reopen the store, and replay.
//!
//! # Snapshots
//!
//! [`MetaStore::snapshot`] is the whole state at the applied index as one blob, all integers
//! little-endian:
//!
//! ```text
//! magic "CAIRNMET" (8) | version u32 = 1 | CRC-32C u32 of every byte after it |
//! applied index u64 | record count u64 | per record, in key order:
//!     key length u32 | key | value length u32 | value
//! ```
//!
//! The records are the same keys and values as in RocksDB, less `sys/applied`, which the header
//! carries. [`MetaStore::restore`] checks the magic, version, checksum, layout, each record and
//! the invariants before it touches anything.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use cairn_common::{DiskId, OwnerId, checksum::crc32c};
use rocksdb::{
    DB, DBCompressionType, DBRecoveryMode, IteratorMode, Options, WriteBatch, WriteOptions,
};

use crate::{
    codec::{self, CodecError},
    objects::{self, QuotaScope},
    placement::Disk,
    state::{self, Applied, Command, Counters, MetaError, MetaState, Settings},
};

/// The key of the applied index.
const APPLIED_KEY: &[u8] = b"sys/applied";
/// The key of the id counters.
const COUNTERS_KEY: &[u8] = b"sys/counters";
/// The key of the operator settings. A store written before settings existed lacks it: the
/// state then keeps the defaults.
const SETTINGS_KEY: &[u8] = b"sys/settings";
const DISK_PREFIX: &str = "map/disk/";
const NODE_PREFIX: &str = "map/node/";
const POOL_PREFIX: &str = "pool/";
const VOLUME_PREFIX: &str = "vol/";
const TENANT_PREFIX: &str = "ten/";
const ACCESS_KEY_PREFIX: &str = "key/";
const PORTAL_PREFIX: &str = "portal/";
const BUCKET_PREFIX: &str = "bkt/";
const OBJECT_PREFIX: &str = "obj/";
const UPLOAD_PREFIX: &str = "upl/";
const PENDING_PREFIX: &str = "pend/";
const GARBAGE_PREFIX: &str = "gc/";

/// The first bytes of every snapshot blob.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"CAIRNMET";
/// The snapshot layout this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Magic, version and checksum: the bytes before the checksummed body.
const SNAPSHOT_HEADER_BYTES: usize = 16;

/// Why the store failed. Refused commands are not errors here: they are the inner
/// `Err(MetaError)` of [`MetaStore::apply`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB could not open the database.
    #[error("opening metadata store {path}: {source}")]
    Open {
        /// The database directory.
        path: PathBuf,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// A RocksDB read or write failed.
    #[error("metadata store {operation}: {source}")]
    Rocks {
        /// What was being done: "read", "write" or "flush".
        operation: &'static str,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// A stored record's value does not decode.
    #[error("corrupt record {key}: {source}")]
    CorruptValue {
        /// The record's key (lossy UTF-8).
        key: String,
        /// Why it did not decode.
        #[source]
        source: CodecError,
    },
    /// A stored record's key is unknown or disagrees with its value.
    #[error("corrupt record {key}: {reason}")]
    CorruptRecord {
        /// The record's key (lossy UTF-8).
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A snapshot blob is truncated, of another format, or fails its checksum.
    #[error("corrupt snapshot: {reason}")]
    CorruptSnapshot {
        /// What is wrong.
        reason: &'static str,
    },
    /// The records decode but together break an invariant of the state.
    #[error("inconsistent metadata records: {detail}")]
    Inconsistent {
        /// The first broken invariant.
        detail: String,
    },
    /// An earlier write failed, so the disk is behind memory; the store must be reopened.
    #[error("an earlier write failed; the metadata store must be reopened")]
    Failed,
}

/// One record of the state, by key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RecordKey {
    Disk(DiskId),
    Node(u64),
    Pool(String),
    Volume(String),
    Tenant(String),
    AccessKey(String),
    Portal(String),
    Bucket(String),
    /// Bucket and key.
    Object(String, String),
    Upload(String),
    Pending(OwnerId),
    Garbage(OwnerId),
    Counters,
    Settings,
}

impl RecordKey {
    fn to_bytes(&self) -> Vec<u8> {
        let key = match self {
            RecordKey::Disk(id) => {
                let hex: String = id.0.iter().map(|b| format!("{b:02x}")).collect();
                format!("{DISK_PREFIX}{hex}")
            }
            RecordKey::Node(id) => format!("{NODE_PREFIX}{id:016x}"),
            RecordKey::Pool(name) => format!("{POOL_PREFIX}{name}"),
            RecordKey::Volume(name) => format!("{VOLUME_PREFIX}{name}"),
            RecordKey::Tenant(name) => format!("{TENANT_PREFIX}{name}"),
            RecordKey::AccessKey(id) => format!("{ACCESS_KEY_PREFIX}{id}"),
            RecordKey::Portal(address) => format!("{PORTAL_PREFIX}{address}"),
            RecordKey::Bucket(name) => format!("{BUCKET_PREFIX}{name}"),
            RecordKey::Object(bucket, key) => format!("{OBJECT_PREFIX}{bucket}/{key}"),
            RecordKey::Upload(id) => format!("{UPLOAD_PREFIX}{id}"),
            RecordKey::Pending(owner) => format!("{PENDING_PREFIX}{:016x}", owner.0),
            RecordKey::Garbage(owner) => format!("{GARBAGE_PREFIX}{:016x}", owner.0),
            RecordKey::Counters => return COUNTERS_KEY.to_vec(),
            RecordKey::Settings => return SETTINGS_KEY.to_vec(),
        };
        key.into_bytes()
    }

    /// Parses a key (not `sys/applied`); names are checked as the state checks them.
    fn parse(key: &[u8]) -> Option<RecordKey> {
        if key == COUNTERS_KEY {
            return Some(RecordKey::Counters);
        }
        if key == SETTINGS_KEY {
            return Some(RecordKey::Settings);
        }
        let key = std::str::from_utf8(key).ok()?;
        let parsed = if let Some(hex) = key.strip_prefix(DISK_PREFIX) {
            RecordKey::Disk(parse_disk_id(hex)?)
        } else if let Some(hex) = key.strip_prefix(NODE_PREFIX) {
            RecordKey::Node(parse_hex_u64(hex)?)
        } else if let Some(hex) = key.strip_prefix(PENDING_PREFIX) {
            RecordKey::Pending(OwnerId(parse_hex_u64(hex)?))
        } else if let Some(hex) = key.strip_prefix(GARBAGE_PREFIX) {
            RecordKey::Garbage(OwnerId(parse_hex_u64(hex)?))
        } else if let Some(name) = key.strip_prefix(BUCKET_PREFIX) {
            objects::check_bucket_name(name).ok()?;
            RecordKey::Bucket(name.to_string())
        } else if let Some(rest) = key.strip_prefix(OBJECT_PREFIX) {
            // Bucket names hold no '/': the first one ends the bucket.
            let (bucket, object) = rest.split_once('/')?;
            objects::check_bucket_name(bucket).ok()?;
            objects::check_object_key(object).ok()?;
            RecordKey::Object(bucket.to_string(), object.to_string())
        } else if let Some(id) = key.strip_prefix(UPLOAD_PREFIX) {
            objects::check_upload_id(id).ok()?;
            RecordKey::Upload(id.to_string())
        } else if let Some(name) = key.strip_prefix(POOL_PREFIX) {
            RecordKey::Pool(name.to_string())
        } else if let Some(name) = key.strip_prefix(VOLUME_PREFIX) {
            RecordKey::Volume(name.to_string())
        } else if let Some(name) = key.strip_prefix(TENANT_PREFIX) {
            RecordKey::Tenant(name.to_string())
        } else if let Some(id) = key.strip_prefix(ACCESS_KEY_PREFIX) {
            state::check_access_key_id(id).ok()?;
            return Some(RecordKey::AccessKey(id.to_string()));
        } else if let Some(address) = key.strip_prefix(PORTAL_PREFIX) {
            // The state checks the address when it is loaded (invariant_violation).
            return Some(RecordKey::Portal(address.to_string()));
        } else {
            return None;
        };
        match &parsed {
            RecordKey::Pool(name) | RecordKey::Volume(name) | RecordKey::Tenant(name) => {
                state::check_name(name).ok()?;
            }
            _ => {}
        }
        assert_eq!(parsed.to_bytes(), key.as_bytes(), "keys round-trip");
        Some(parsed)
    }
}

/// Parses exactly 16 lower-case hex digits.
fn parse_hex_u64(hex: &str) -> Option<u64> {
    let lower = hex.len() == 16 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if !lower {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Parses exactly 32 lower-case hex digits.
fn parse_disk_id(hex: &str) -> Option<DiskId> {
    let digits = hex.as_bytes();
    if digits.len() != 32 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = (nibble(digits[2 * i])? << 4) | nibble(digits[2 * i + 1])?;
    }
    Some(DiskId(id))
}

/// The records a command may change, from the command and `state`, the state before it is
/// applied. A superset is harmless (an unchanged record is rewritten as it was); a missing key
/// would lose a change on restart.
fn touched(state: &MetaState, command: &Command) -> Vec<RecordKey> {
    match command {
        Command::RegisterDisk(disk) => vec![RecordKey::Disk(disk.id)],
        Command::RegisterNode { id, .. } => vec![RecordKey::Node(*id)],
        Command::SetDiskState { disk, .. } => vec![RecordKey::Disk(*disk)],
        Command::CreatePool { name, .. } => {
            vec![RecordKey::Pool(name.clone()), RecordKey::Counters]
        }
        Command::CreateVolume { name, .. } => {
            vec![RecordKey::Volume(name.clone()), RecordKey::Counters]
        }
        Command::ResizeVolume { name, .. }
        | Command::DeleteVolume { name }
        | Command::SetVolumeQos { name, .. }
        | Command::SetVolumeAccess { name, .. }
        | Command::SetReservation { name, .. } => vec![RecordKey::Volume(name.clone())],
        Command::AddPortal { address, .. } | Command::RemovePortal { address } => {
            vec![RecordKey::Portal(address.clone())]
        }
        Command::CreateTenant { name } => {
            vec![RecordKey::Tenant(name.clone()), RecordKey::Counters]
        }
        Command::DeleteTenant { name } => vec![RecordKey::Tenant(name.clone())],
        Command::CreateAccessKey { access_key_id, .. }
        | Command::DeleteAccessKey { access_key_id } => {
            vec![RecordKey::AccessKey(access_key_id.clone())]
        }
        Command::MovePgMember { pool, .. } => {
            vec![RecordKey::Pool(pool.clone()), RecordKey::Counters]
        }
        Command::SetRebalance { .. } => vec![RecordKey::Settings],
        Command::SetPgLeader { pool, .. } => vec![RecordKey::Pool(pool.clone())],
        Command::RemoveNode { id, disks } => std::iter::once(RecordKey::Node(*id))
            .chain(disks.iter().map(|d| RecordKey::Disk(*d)))
            .collect(),
        command @ (Command::CreateBucket { .. }
        | Command::DeleteBucket { .. }
        | Command::BeginWrite { .. }
        | Command::PutObject { .. }
        | Command::DeleteObject { .. }
        | Command::SetBucketVersioning { .. }
        | Command::SetBucketDocument { .. }
        | Command::SetObjectAcl { .. }
        | Command::SetQuota { .. }
        | Command::CreateUpload { .. }
        | Command::PutPart { .. }
        | Command::CompleteUpload { .. }
        | Command::AbortUpload { .. }
        | Command::AbandonWrites { .. }
        | Command::ReclaimDone { .. }) => touched_objects(state, command),
    }
}

/// The garbage records the segments of the version a new object or null delete marker at
/// `bucket`/`key` replaces in `state` would become.
fn replaced(state: &MetaState, bucket: &str, key: &str) -> Vec<RecordKey> {
    let version = state.replaced_version(bucket, key);
    let segments = version.into_iter().flat_map(|v| v.segments());
    segments.map(|s| RecordKey::Garbage(s.owner)).collect()
}

/// The records a new version of `bucket`/`key` changes: the key's, the bucket's (totals) and
/// the counters (its id).
fn new_version(bucket: &str, key: &str) -> [RecordKey; 3] {
    [
        RecordKey::Object(bucket.to_string(), key.to_string()),
        RecordKey::Bucket(bucket.to_string()),
        RecordKey::Counters,
    ]
}

/// [`touched`] for the object index's commands.
fn touched_objects(state: &MetaState, command: &Command) -> Vec<RecordKey> {
    match command {
        Command::CreateBucket { name, .. } => {
            vec![RecordKey::Bucket(name.clone()), RecordKey::Counters]
        }
        Command::DeleteBucket { name }
        | Command::SetBucketVersioning { bucket: name, .. }
        | Command::SetBucketDocument { bucket: name, .. }
        | Command::SetQuota {
            scope: QuotaScope::Bucket(name),
            ..
        } => vec![RecordKey::Bucket(name.clone())],
        Command::SetQuota {
            scope: QuotaScope::Tenant(name),
            ..
        } => vec![RecordKey::Tenant(name.clone())],
        Command::BeginWrite { .. } => {
            let next = OwnerId(state.counters.next_owner + 1);
            vec![RecordKey::Pending(next), RecordKey::Counters]
        }
        Command::PutObject {
            bucket,
            key,
            record,
            ..
        } => {
            let pending = record
                .segments()
                .iter()
                .map(|s| RecordKey::Pending(s.owner));
            let mut keys: Vec<RecordKey> = pending.collect();
            keys.extend(replaced(state, bucket, key));
            keys.extend(new_version(bucket, key));
            keys
        }
        Command::DeleteObject {
            bucket,
            key,
            version_id,
            ..
        } => {
            let mut keys = match version_id {
                Some(id) => {
                    let version = state.object_version(bucket, key, Some(*id));
                    let segments = version.into_iter().flat_map(|v| v.segments());
                    segments.map(|s| RecordKey::Garbage(s.owner)).collect()
                }
                None => replaced(state, bucket, key),
            };
            keys.extend(new_version(bucket, key));
            keys
        }
        Command::SetObjectAcl { bucket, key, .. } => {
            vec![RecordKey::Object(bucket.clone(), key.clone())]
        }
        Command::AbandonWrites { owners, .. } => owners
            .iter()
            .flat_map(|o| [RecordKey::Pending(*o), RecordKey::Garbage(*o)])
            .collect(),
        Command::ReclaimDone { owners } => owners.iter().map(|o| RecordKey::Garbage(*o)).collect(),
        command => touched_uploads(state, command),
    }
}

/// [`touched`] for the multipart upload commands.
fn touched_uploads(state: &MetaState, command: &Command) -> Vec<RecordKey> {
    // The segments of an upload's parts now: garbage if it is completed or aborted.
    let parts = |upload: Option<&objects::Upload>| -> Vec<RecordKey> {
        let parts = upload.into_iter().flat_map(|u| u.parts.values());
        parts.map(|p| RecordKey::Garbage(p.segment.owner)).collect()
    };
    match command {
        Command::CreateUpload { upload_id, .. } | Command::AbortUpload { upload_id } => {
            let mut keys = parts(state.upload(upload_id));
            keys.push(RecordKey::Upload(upload_id.clone()));
            keys
        }
        Command::PutPart {
            upload_id,
            part_number,
            segment,
            ..
        } => {
            let upload = state.upload(upload_id);
            let old = upload.and_then(|u| u.parts.get(part_number));
            let old = old.map(|p| RecordKey::Garbage(p.segment.owner));
            let new = [
                RecordKey::Pending(segment.owner),
                RecordKey::Upload(upload_id.clone()),
            ];
            new.into_iter().chain(old).collect()
        }
        Command::CompleteUpload { upload_id, .. } => {
            let upload = state.upload(upload_id);
            let mut keys = parts(upload);
            keys.push(RecordKey::Upload(upload_id.clone()));
            if let Some(upload) = upload {
                keys.extend(replaced(state, &upload.bucket, &upload.key));
                keys.extend(new_version(&upload.bucket, &upload.key));
            }
            keys
        }
        other => unreachable!("touched routes only object index commands here: {other:?}"),
    }
}

/// A record's value in `state`, or `None` if its object does not exist.
fn record_value(state: &MetaState, key: &RecordKey) -> Option<Vec<u8>> {
    match key {
        RecordKey::Disk(id) => state.disks.get(id).map(codec::encode),
        RecordKey::Node(id) => state.nodes.get(id).map(codec::encode),
        RecordKey::Pool(name) => state.pools.get(name).map(codec::encode),
        RecordKey::Volume(name) => state.volumes.get(name).map(codec::encode),
        RecordKey::Tenant(name) => state.tenants.get(name).map(codec::encode),
        RecordKey::AccessKey(id) => state.access_keys.get(id).map(codec::encode),
        RecordKey::Portal(address) => state.portals.get(address).map(codec::encode),
        RecordKey::Bucket(name) => state.buckets.get(name).map(codec::encode),
        RecordKey::Object(bucket, key) => state.versions(bucket, key).map(codec::encode),
        RecordKey::Upload(id) => state.uploads.get(id).map(codec::encode),
        RecordKey::Pending(owner) => state.pending.get(owner).map(codec::encode),
        RecordKey::Garbage(owner) => state.garbage.get(owner).map(codec::encode),
        RecordKey::Counters => Some(codec::encode(&state.counters)),
        RecordKey::Settings => Some(codec::encode(&state.settings)),
    }
}

/// Every record of `state`, by key: what the store holds besides `sys/applied`.
fn records(state: &MetaState) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let keys = (state.disks.keys().map(|id| RecordKey::Disk(*id)))
        .chain(state.nodes.keys().map(|id| RecordKey::Node(*id)))
        .chain(state.pools.keys().map(|n| RecordKey::Pool(n.clone())))
        .chain(state.volumes.keys().map(|n| RecordKey::Volume(n.clone())))
        .chain(state.tenants.keys().map(|n| RecordKey::Tenant(n.clone())))
        .chain(
            state
                .access_keys
                .keys()
                .map(|id| RecordKey::AccessKey(id.clone())),
        )
        .chain(state.portals.keys().map(|a| RecordKey::Portal(a.clone())))
        .chain(state.buckets.keys().map(|n| RecordKey::Bucket(n.clone())))
        .chain(state.objects.iter().flat_map(|(bucket, objects)| {
            objects
                .keys()
                .map(|key| RecordKey::Object(bucket.clone(), key.clone()))
        }))
        .chain(state.uploads.keys().map(|id| RecordKey::Upload(id.clone())))
        .chain(state.pending.keys().map(|o| RecordKey::Pending(*o)))
        .chain(state.garbage.keys().map(|o| RecordKey::Garbage(*o)))
        .chain([RecordKey::Counters, RecordKey::Settings]);
    keys.map(|key| {
        let value = record_value(state, &key).expect("invariant: listed records exist");
        (key.to_bytes(), value)
    })
    .collect()
}

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn decode_value<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    codec::decode(value).map_err(|source| StoreError::CorruptValue {
        key: lossy(key),
        source,
    })
}

/// Decodes one record into `state`.
fn load_record(state: &mut MetaState, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    let corrupt = |reason| StoreError::CorruptRecord {
        key: lossy(key),
        reason,
    };
    let parsed = RecordKey::parse(key).ok_or_else(|| corrupt("unknown or malformed key"))?;
    match parsed {
        RecordKey::Disk(id) => {
            let disk: Disk = decode_value(key, value)?;
            if disk.id != id {
                return Err(corrupt("the disk's id differs from its key"));
            }
            state.disks.insert(id, disk);
        }
        RecordKey::Node(id) => {
            state.nodes.insert(id, decode_value(key, value)?);
        }
        RecordKey::Pool(name) => {
            state.pools.insert(name, decode_value(key, value)?);
        }
        RecordKey::Volume(name) => {
            state.volumes.insert(name, decode_value(key, value)?);
        }
        RecordKey::Tenant(name) => {
            state.tenants.insert(name, decode_value(key, value)?);
        }
        RecordKey::AccessKey(id) => {
            state.access_keys.insert(id, decode_value(key, value)?);
        }
        RecordKey::Portal(address) => {
            state.portals.insert(address, decode_value(key, value)?);
        }
        RecordKey::Bucket(name) => {
            state.buckets.insert(name, decode_value(key, value)?);
        }
        RecordKey::Object(bucket, object) => {
            let record = decode_value(key, value)?;
            state
                .objects
                .entry(bucket)
                .or_default()
                .insert(object, record);
        }
        RecordKey::Upload(id) => {
            state.uploads.insert(id, decode_value(key, value)?);
        }
        RecordKey::Pending(owner) => {
            state.pending.insert(owner, decode_value(key, value)?);
        }
        RecordKey::Garbage(owner) => {
            state.garbage.insert(owner, decode_value(key, value)?);
        }
        RecordKey::Counters => state.counters = decode_value::<Counters>(key, value)?,
        RecordKey::Settings => state.settings = decode_value::<Settings>(key, value)?,
    }
    Ok(())
}

/// Rebuilds a state from its records and checks it.
fn state_from_records<'a>(
    records: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<MetaState, StoreError> {
    let mut state = MetaState::default();
    for (key, value) in records {
        load_record(&mut state, key, value)?;
    }
    match state.invariant_violation() {
        None => Ok(state),
        Some(detail) => Err(StoreError::Inconsistent { detail }),
    }
}

/// The metadata state machine on RocksDB. See the module docs for the layout and the crash
/// ordering.
pub struct MetaStore {
    db: DB,
    state: MetaState,
    applied_index: u64,
    /// Set when a write failed after memory changed: the disk is behind memory.
    failed: bool,
}

impl MetaStore {
    /// Opens the store in `dir`, creating an empty one if there is none, and loads the state.
    pub fn open(dir: &Path) -> Result<MetaStore, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        // After a power loss, recover the longest consistent prefix of the batches: the Raft
        // log replays the rest (module docs, crash ordering).
        options.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        options.set_paranoid_checks(true);
        options.set_compression_type(DBCompressionType::None);
        let db = DB::open(&options, dir).map_err(|source| StoreError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut applied_index = 0;
        let mut stored = Vec::new();
        for item in db.iterator(IteratorMode::Start) {
            let (key, value) = item.map_err(|source| StoreError::Rocks {
                operation: "read",
                source,
            })?;
            if &*key == APPLIED_KEY {
                applied_index = decode_value(&key, &value)?;
            } else {
                stored.push((key, value));
            }
        }
        let state = state_from_records(stored.iter().map(|(k, v)| (&**k, &**v)))?;
        if applied_index == 0 && state != MetaState::default() {
            return Err(StoreError::CorruptRecord {
                key: lossy(APPLIED_KEY),
                reason: "records without an applied index",
            });
        }
        Ok(MetaStore {
            db,
            state,
            applied_index,
            failed: false,
        })
    }

    /// Applies the command of Raft entry `index` and persists what changed, with the applied
    /// index, in one batch (not synced: see the module docs). A refused command changes no
    /// record but still advances the applied index. The outer error is the store's; the inner
    /// one is the command's refusal, the same on every replica.
    ///
    /// Panics if `index` is not above the applied index: the runtime must never replay an
    /// applied entry. Indexes may skip (entries that carry no command are not applied here).
    pub fn apply(
        &mut self,
        index: u64,
        command: &Command,
    ) -> Result<Result<Applied, MetaError>, StoreError> {
        if self.failed {
            return Err(StoreError::Failed);
        }
        assert!(
            index > self.applied_index,
            "entry {index} replayed: the applied index is {}",
            self.applied_index
        );
        // Before applying: some records a command changes are known only to the state.
        let touched = touched(&self.state, command);
        let outcome = self.state.apply(command.clone());
        let mut batch = WriteBatch::default();
        if outcome.is_ok() {
            for key in touched {
                match record_value(&self.state, &key) {
                    Some(value) => batch.put(key.to_bytes(), value),
                    None => batch.delete(key.to_bytes()),
                }
            }
        }
        batch.put(APPLIED_KEY, codec::encode(&index));
        // Memory now holds the entry whatever the write does: reads and snapshots stay at a
        // consistent index, and a failed write stops further applies below.
        self.applied_index = index;
        let mut options = WriteOptions::default();
        options.set_sync(false);
        if let Err(source) = self.db.write_opt(batch, &options) {
            self.failed = true;
            return Err(StoreError::Rocks {
                operation: "write",
                source,
            });
        }
        Ok(outcome)
    }

    /// Makes every entry applied so far durable (syncs RocksDB's WAL). The Raft runtime calls
    /// it before compacting its log.
    pub fn flush(&self) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Failed);
        }
        self.db.flush_wal(true).map_err(|source| StoreError::Rocks {
            operation: "flush",
            source,
        })
    }

    /// The index of the last entry applied.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The state at the applied index.
    pub fn state(&self) -> &MetaState {
        &self.state
    }

    /// The whole state at the applied index as one checksummed blob (module docs, snapshots).
    pub fn snapshot(&self) -> Vec<u8> {
        let records = records(&self.state);
        let mut body = Vec::new();
        body.extend_from_slice(&self.applied_index.to_le_bytes());
        body.extend_from_slice(&(records.len() as u64).to_le_bytes());
        for (key, value) in &records {
            for bytes in [key, value] {
                let len = u32::try_from(bytes.len()).expect("invariant: a record is under 4 GiB");
                body.extend_from_slice(&len.to_le_bytes());
                body.extend_from_slice(bytes);
            }
        }
        let mut blob = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + body.len());
        blob.extend_from_slice(&SNAPSHOT_MAGIC);
        blob.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        blob.extend_from_slice(&crc32c(&body).to_le_bytes());
        blob.extend_from_slice(&body);
        blob
    }

    /// Replaces the whole content with a snapshot blob's: checks it fully, then deletes every
    /// old key and writes the new records and applied index in one synced batch. A bad blob is
    /// an error and changes nothing. Which snapshot to install (and that it is newer) is the
    /// Raft runtime's decision.
    pub fn restore(&mut self, blob: &[u8]) -> Result<(), StoreError> {
        let (applied_index, records) = parse_snapshot(blob)?;
        let state = state_from_records(records.iter().copied())?;
        let mut batch = WriteBatch::default();
        for item in self.db.iterator(IteratorMode::Start) {
            let (key, _) = item.map_err(|source| StoreError::Rocks {
                operation: "read",
                source,
            })?;
            batch.delete(key);
        }
        for (key, value) in &records {
            batch.put(key, value);
        }
        batch.put(APPLIED_KEY, codec::encode(&applied_index));
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .map_err(|source| StoreError::Rocks {
                operation: "write",
                source,
            })?;
        // Disk and memory agree again, even if an earlier apply had failed.
        self.state = state;
        self.applied_index = applied_index;
        self.failed = false;
        Ok(())
    }
}

/// Takes `count` bytes off the front of `bytes`.
fn take<'a>(bytes: &mut &'a [u8], count: usize) -> Result<&'a [u8], StoreError> {
    if bytes.len() < count {
        return Err(StoreError::CorruptSnapshot {
            reason: "truncated",
        });
    }
    let (head, tail) = bytes.split_at(count);
    *bytes = tail;
    Ok(head)
}

fn take_u32(bytes: &mut &[u8]) -> Result<u32, StoreError> {
    let head = take(bytes, 4)?;
    Ok(u32::from_le_bytes(
        head.try_into().expect("invariant: took 4 bytes"),
    ))
}

fn take_u64(bytes: &mut &[u8]) -> Result<u64, StoreError> {
    let head = take(bytes, 8)?;
    Ok(u64::from_le_bytes(
        head.try_into().expect("invariant: took 8 bytes"),
    ))
}

/// A blob's applied index and records (keys strictly increasing), checked but not decoded.
type SnapshotParts<'a> = (u64, Vec<(&'a [u8], &'a [u8])>);

fn parse_snapshot(blob: &[u8]) -> Result<SnapshotParts<'_>, StoreError> {
    let corrupt = |reason| StoreError::CorruptSnapshot { reason };
    let mut rest = blob;
    if take(&mut rest, SNAPSHOT_MAGIC.len())? != SNAPSHOT_MAGIC {
        return Err(corrupt("bad magic"));
    }
    if take_u32(&mut rest)? != SNAPSHOT_VERSION {
        return Err(corrupt("unknown version"));
    }
    let crc = take_u32(&mut rest)?;
    if crc32c(rest) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let applied_index = take_u64(&mut rest)?;
    let count = take_u64(&mut rest)?;
    // No allocation sized by `count`: each record takes at least 8 bytes, so the loop is
    // bounded by the blob's length.
    let mut records: Vec<(&[u8], &[u8])> = Vec::new();
    for _ in 0..count {
        let key_len = take_u32(&mut rest)? as usize;
        let key = take(&mut rest, key_len)?;
        let value_len = take_u32(&mut rest)? as usize;
        let value = take(&mut rest, value_len)?;
        if key == APPLIED_KEY {
            return Err(corrupt("sys/applied among the records"));
        }
        if records.last().is_some_and(|(last, _)| *last >= key) {
            return Err(corrupt("records out of key order"));
        }
        records.push((key, value));
    }
    if !rest.is_empty() {
        return Err(corrupt("bytes after the last record"));
    }
    Ok((applied_index, records))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{
        objects::{ObjectData, ObjectRecord, PART_BYTES_MIN, Segment},
        placement::FailureDomain,
        state::{
            QosTier, SecretKey,
            tests::{KEY_ID, SECRET, command, disk, resolve, setup},
        },
    };

    /// A sequence touching every record kind, with refusals mixed in.
    fn script() -> Vec<Command> {
        let mut commands: Vec<Command> = (0..6)
            .map(|n| Command::RegisterDisk(disk(n, 1 + u32::from(n / 2))))
            .collect();
        commands.extend([
            Command::RegisterNode {
                id: 2,
                node: crate::state::NodeRecord {
                    raft_addr: "127.0.0.1:7001".parse().expect("addr"),
                    data_addr: "127.0.0.1:7002".parse().expect("addr"),
                },
            },
            Command::RegisterNode {
                id: 0,
                node: crate::state::NodeRecord {
                    raft_addr: "127.0.0.1:7001".parse().expect("addr"),
                    data_addr: "127.0.0.1:7002".parse().expect("addr"),
                },
            },
            Command::CreatePool {
                name: "ssd".into(),
                replicas: 3,
                domain: FailureDomain::Host,
                pg_count: 32,
            },
            Command::SetDiskState {
                disk: DiskId([5; 16]),
                state: crate::placement::DiskState::Out,
            },
            Command::CreateVolume {
                name: "vm-1".into(),
                pool: "ssd".into(),
                size_bytes: 1 << 30,
                tier: QosTier::Ultra,
                iops_max: None,
                bytes_per_s_max: None,
            },
            Command::CreateVolume {
                name: "vm-2".into(),
                pool: "nope".into(),
                size_bytes: 1 << 30,
                tier: QosTier::Normal,
                iops_max: None,
                bytes_per_s_max: None,
            },
            Command::CreateVolume {
                name: "vm-3".into(),
                pool: "ssd".into(),
                size_bytes: 1 << 30,
                tier: QosTier::Normal,
                iops_max: None,
                bytes_per_s_max: None,
            },
            Command::ResizeVolume {
                name: "vm-1".into(),
                size_bytes: 2 << 30,
            },
            Command::DeleteVolume {
                name: "vm-3".into(),
            },
            Command::CreateTenant {
                name: "acme".into(),
            },
            Command::CreateTenant {
                name: "gone".into(),
            },
            Command::DeleteTenant {
                name: "gone".into(),
            },
            Command::CreateAccessKey {
                tenant: "acme".into(),
                access_key_id: KEY_ID.into(),
                secret_key: SecretKey::new(SECRET.into()),
            },
            Command::SetRebalance { enabled: false },
        ]);
        // A move within host 1 (disks 0 and 1): PG 0 has a member there, host domain.
        let mut state = MetaState::default();
        for command in &commands {
            let _ = state.apply(command.clone());
        }
        let pool = state.pool("ssd").expect("the script creates the pool");
        let on_host_one = pool.pg_map[0]
            .iter()
            .find(|m| m.disk == DiskId([0; 16]) || m.disk == DiskId([1; 16]))
            .expect("3 replicas over 3 hosts use host 1");
        let to = if on_host_one.disk == DiskId([0; 16]) {
            1
        } else {
            0
        };
        let moved = Command::MovePgMember {
            pool: "ssd".into(),
            pg: 0,
            from: on_host_one.replica,
            to: DiskId([to; 16]),
        };
        state.apply(moved.clone()).expect("the move applies");
        commands.push(moved);
        commands.extend(object_script(&mut state));
        commands
    }

    /// Applies `command` to `state` and records it.
    fn run(state: &mut MetaState, commands: &mut Vec<Command>, command: Command) -> Applied {
        let outcome = state.apply(command.clone());
        commands.push(command);
        outcome.unwrap_or(Applied::Done)
    }

    /// A write begun in bucket "photos": its new owner.
    fn begin(state: &mut MetaState, commands: &mut Vec<Command>) -> OwnerId {
        let command = Command::BeginWrite {
            bucket: "photos".into(),
            now_ms: 20,
        };
        let Applied::Owner(owner) = run(state, commands, command) else {
            panic!("BeginWrite handed out no owner");
        };
        owner
    }

    fn put(key: &str, size: u64, data: ObjectData) -> Command {
        Command::PutObject {
            bucket: "photos".into(),
            key: key.into(),
            record: ObjectRecord {
                size,
                etag: format!("\"{key}\""),
                modified_ms: 0,
                content_type: None,
                metadata: BTreeMap::new(),
                data,
                acl: None,
                request: None,
            },
            now_ms: 30,
        }
    }

    fn part(upload: &str, number: u32, owner: OwnerId, length: u64) -> Command {
        Command::PutPart {
            upload_id: upload.into(),
            part_number: number,
            segment: Segment { owner, length },
            etag: format!("p{number}"),
            now_ms: 40,
        }
    }

    /// Object index commands on top of `state`, which the script has built (applied as they
    /// are built, so the owners `BeginWrite` hands out are known): every record kind (bucket,
    /// object inline and in segments, upload, pending write, garbage), with refusals mixed in.
    /// Ends with bucket "photos" holding "small.txt", "a/big.bin" and "multi", upload "u2"
    /// open with one part, one pending write and one garbage entry.
    fn object_script(state: &mut MetaState) -> Vec<Command> {
        let mut commands = Vec::new();
        let c = &mut commands;
        let bucket = |name: &str| Command::CreateBucket {
            name: name.into(),
            tenant: "acme".into(),
            pool: "ssd".into(),
            now_ms: 10,
        };
        run(state, c, bucket("photos"));
        run(state, c, bucket("gone-bucket"));
        run(state, c, bucket("Bad_Name"));
        let gone = Command::DeleteBucket {
            name: "gone-bucket".into(),
        };
        run(state, c, gone);
        let hello = b"hello".to_vec();
        run(
            state,
            c,
            put("small.txt", 5, ObjectData::Inline { data: hello }),
        );
        run(
            state,
            c,
            put("bad", 9, ObjectData::Inline { data: vec![1] }),
        );
        let first = begin(state, c);
        let segment = |owner, length| ObjectData::Segments(vec![Segment { owner, length }]);
        run(state, c, put("a/big.bin", 1000, segment(first, 1000)));
        let second = begin(state, c);
        run(state, c, put("a/big.bin", 2000, segment(second, 2000)));
        let _left_pending = begin(state, c);
        let abandoned = begin(state, c);
        let abandon = Command::AbandonWrites {
            owners: vec![abandoned],
            length: 4096,
        };
        run(state, c, abandon);
        run(
            state,
            c,
            Command::ReclaimDone {
                owners: vec![first],
            },
        );
        for (id, key) in [("u1", "multi"), ("u2", "open")] {
            let upload = Command::CreateUpload {
                bucket: "photos".into(),
                key: key.into(),
                upload_id: id.into(),
                content_type: Some("video/mp4".into()),
                metadata: BTreeMap::from([("camera".to_string(), "x".to_string())]),
                now_ms: 35,
                acl: None,
            };
            run(state, c, upload);
        }
        let (one, two, open) = (begin(state, c), begin(state, c), begin(state, c));
        run(state, c, part("u1", 1, one, PART_BYTES_MIN));
        run(state, c, part("u1", 2, two, 10));
        run(state, c, part("u2", 1, open, 7));
        let complete = Command::CompleteUpload {
            upload_id: "u1".into(),
            parts: vec![(1, "p1".into()), (2, "p2".into())],
            etag: "\"m-2\"".into(),
            now_ms: 50,
            request: None,
        };
        run(state, c, complete);
        run(
            state,
            c,
            put("deleted", 0, ObjectData::Inline { data: vec![] }),
        );
        let delete = Command::DeleteObject {
            bucket: "photos".into(),
            key: "deleted".into(),
            version_id: None,
            now_ms: 7,
            request: None,
            if_newest: None,
        };
        run(state, c, delete);
        commands.extend(versioned_script(state));
        commands
    }

    /// A versioned bucket "archive" with a quota: key "k" holds a delete marker over two
    /// object versions; tenant "acme" gets a quota too.
    fn versioned_script(state: &mut MetaState) -> Vec<Command> {
        let mut commands = Vec::new();
        let c = &mut commands;
        let bucket = Command::CreateBucket {
            name: "archive".into(),
            tenant: "acme".into(),
            pool: "ssd".into(),
            now_ms: 60,
        };
        run(state, c, bucket);
        let enable = Command::SetBucketVersioning {
            bucket: "archive".into(),
            enabled: true,
        };
        run(state, c, enable);
        for size in [3u64, 4] {
            let Command::PutObject { record, .. } = put(
                "k",
                size,
                ObjectData::Inline {
                    data: vec![1; size as usize],
                },
            ) else {
                unreachable!("put builds a PutObject")
            };
            let put = Command::PutObject {
                bucket: "archive".into(),
                key: "k".into(),
                record,
                now_ms: 61,
            };
            run(state, c, put);
        }
        let marker = Command::DeleteObject {
            bucket: "archive".into(),
            key: "k".into(),
            version_id: None,
            now_ms: 62,
            request: None,
            if_newest: None,
        };
        run(state, c, marker);
        for scope in [
            objects::QuotaScope::Bucket("archive".into()),
            objects::QuotaScope::Tenant("acme".into()),
        ] {
            let quota = Command::SetQuota {
                scope,
                bytes_max: Some(1 << 40),
                objects_max: None,
            };
            run(state, c, quota);
        }
        commands
    }

    /// Applies `commands` at indexes 1, 2, ... to the store and to a plain state; checks that
    /// both agree.
    fn apply_all(store: &mut MetaStore, commands: &[Command]) -> MetaState {
        let mut expected = MetaState::default();
        let first = store.applied_index() + 1;
        for (index, command) in (first..).zip(commands) {
            let command = resolve(&expected, command.clone());
            let outcome = store.apply(index, &command).expect("store");
            assert_eq!(outcome, expected.apply(command));
        }
        assert_eq!(store.state(), &expected);
        expected
    }

    /// Goal: what was applied survives closing and reopening, refusals included in the
    /// applied index. Method: apply a script, drop the store, reopen, compare.
    #[test]
    fn reopen_yields_equal_state_and_applied_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let commands = script();
        let expected = {
            let mut store = MetaStore::open(dir.path()).expect("open");
            assert_eq!(store.applied_index(), 0);
            let expected = apply_all(&mut store, &commands);
            store.flush().expect("flush");
            expected
        };
        let store = MetaStore::open(dir.path()).expect("reopen");
        assert_eq!(store.state(), &expected);
        assert_eq!(store.applied_index(), commands.len() as u64);
        assert_eq!(store.state().volumes().count(), 1);
        assert_eq!(store.state().tenants().count(), 1);
        let key = store.state().access_key(KEY_ID).expect("key");
        assert_eq!(key.secret_key.expose(), SECRET);
        assert!(
            !store.state().rebalance_enabled(),
            "the switch is persisted"
        );
        let moved = store.state().pool("ssd").expect("pool").pg_map[0].iter();
        assert_eq!(
            moved.filter(|m| m.joined).count(),
            1,
            "the move is persisted"
        );
        let photos = store.state().bucket("photos").expect("bucket");
        assert_eq!(
            (photos.objects, photos.bytes),
            (3, 5 + 2000 + PART_BYTES_MIN + 10)
        );
        assert!(store.state().bucket("gone-bucket").is_none());
        let multi = store
            .state()
            .object("photos", "multi")
            .expect("completed upload");
        assert_eq!(multi.segments().len(), 2);
        assert_eq!(multi.content_type.as_deref(), Some("video/mp4"));
        let small = store
            .state()
            .object("photos", "small.txt")
            .expect("inline object");
        assert_eq!(
            small.data,
            ObjectData::Inline {
                data: b"hello".to_vec()
            }
        );
        assert!(store.state().upload("u2").is_some() && store.state().upload("u1").is_none());
        assert_eq!(store.state().pending_writes().count(), 1);
        assert_eq!(store.state().garbage().count(), 1);
        let archive = store.state().bucket("archive").expect("versioned bucket");
        assert_eq!((archive.objects, archive.bytes), (2, 7));
        assert_eq!(archive.quota.bytes_max, Some(1 << 40));
        let versions = store.state().versions("archive", "k").expect("versions");
        assert_eq!(versions.all().len(), 3);
        assert!(
            versions.latest().record().is_none(),
            "a delete marker on top"
        );
        let acme = store.state().tenant("acme").expect("tenant");
        assert_eq!(acme.quota.bytes_max, Some(1 << 40));
    }

    /// Goal: an applied entry is never applied again. Method: apply index 1 twice.
    #[test]
    #[should_panic(expected = "replayed")]
    fn replayed_index_panics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = MetaStore::open(dir.path()).expect("open");
        let command = Command::CreateTenant { name: "t".into() };
        store.apply(1, &command).expect("store").expect("applied");
        let _ = store.apply(1, &command);
    }

    /// Goal: a snapshot carries the whole state and restores into another store, replacing
    /// what it held. Method: snapshot a scripted store; restore into a fresh store and into one
    /// with other content; compare state, applied index and the content after reopen.
    #[test]
    fn snapshot_restores_into_another_store() {
        let source_dir = tempfile::tempdir().expect("tempdir");
        let mut source = MetaStore::open(source_dir.path()).expect("open");
        let expected = apply_all(&mut source, &script());
        let blob = source.snapshot();
        assert_eq!(&blob[..8], &SNAPSHOT_MAGIC);

        let target_dir = tempfile::tempdir().expect("tempdir");
        {
            let mut target = MetaStore::open(target_dir.path()).expect("open");
            let other = [
                Command::CreateTenant {
                    name: "other".into(),
                },
                Command::RegisterDisk(disk(9, 9)),
            ];
            apply_all(&mut target, &other);
            target.restore(&blob).expect("restore");
            assert_eq!(target.state(), &expected);
            assert_eq!(target.applied_index(), source.applied_index());
            assert_eq!(target.snapshot(), blob, "snapshots are deterministic");
            let next = Command::CreateTenant {
                name: "next".into(),
            };
            let applied = target
                .apply(source.applied_index() + 1, &next)
                .expect("store");
            assert!(applied.is_ok());
        }
        let reopened = MetaStore::open(target_dir.path()).expect("reopen");
        let mut after = expected.clone();
        after
            .apply(Command::CreateTenant {
                name: "next".into(),
            })
            .expect("next");
        assert_eq!(
            reopened.state(),
            &after,
            "old records are gone, new ones durable"
        );
        assert!(reopened.state().tenant("other").is_none());
        assert_eq!(reopened.applied_index(), source.applied_index() + 1);
    }

    /// Goal: a damaged blob is refused with a typed error and changes nothing. Method: flip a
    /// byte in each region, truncate, append, change magic and version; check the store after
    /// each, and after reopening.
    #[test]
    fn corrupt_snapshot_is_refused_and_changes_nothing() {
        let source_dir = tempfile::tempdir().expect("tempdir");
        let mut source = MetaStore::open(source_dir.path()).expect("open");
        apply_all(&mut source, &script());
        let blob = source.snapshot();

        let target_dir = tempfile::tempdir().expect("tempdir");
        let mut target = MetaStore::open(target_dir.path()).expect("open");
        let mine = apply_all(
            &mut target,
            &[Command::CreateTenant {
                name: "mine".into(),
            }],
        );
        let mut bad: Vec<Vec<u8>> = Vec::new();
        for at in [0, 8, 12, 16, 24, 40, blob.len() / 2, blob.len() - 1] {
            let mut flipped = blob.clone();
            flipped[at] ^= 0x40;
            bad.push(flipped);
        }
        bad.push(blob[..blob.len() - 1].to_vec());
        bad.push(blob[..10].to_vec());
        bad.push(Vec::new());
        let mut longer = blob.clone();
        longer.push(0);
        bad.push(longer);
        for blob in &bad {
            let error = target.restore(blob).expect_err("corrupt blob restored");
            assert!(
                matches!(error, StoreError::CorruptSnapshot { .. }),
                "{error}"
            );
            assert_eq!(target.state(), &mine);
            assert_eq!(target.applied_index(), 1);
        }
        drop(target);
        let reopened = MetaStore::open(target_dir.path()).expect("reopen");
        assert_eq!(reopened.state(), &mine);
        assert_eq!(reopened.applied_index(), 1);
    }

    /// Goal: a blob whose checksum is right but whose records are wrong is refused too.
    /// Method: build blobs by hand around a bad record, an unknown key and a broken invariant.
    #[test]
    fn snapshot_with_bad_records_is_refused() {
        let blob_of = |records: &[(&[u8], Vec<u8>)]| {
            let mut body = Vec::new();
            body.extend_from_slice(&7u64.to_le_bytes());
            body.extend_from_slice(&(records.len() as u64).to_le_bytes());
            for (key, value) in records {
                for bytes in [*key, value.as_slice()] {
                    body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                    body.extend_from_slice(bytes);
                }
            }
            let mut blob = SNAPSHOT_MAGIC.to_vec();
            blob.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
            blob.extend_from_slice(&crc32c(&body).to_le_bytes());
            blob.extend_from_slice(&body);
            blob
        };
        let tenant = codec::encode(&crate::state::Tenant {
            id: crate::state::TenantId(1),
            quota: Default::default(),
        });
        let counters = codec::encode(&Counters {
            next_tenant: 1,
            ..Counters::default()
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = MetaStore::open(dir.path()).expect("open");
        let good = blob_of(&[
            (b"sys/counters", counters.clone()),
            (b"ten/t", tenant.clone()),
        ]);
        store.restore(&good).expect("a well-formed blob restores");
        assert_eq!(store.applied_index(), 7);
        assert!(
            store.state().rebalance_enabled(),
            "a blob without sys/settings (an older build's) restores the defaults"
        );
        let cases: [(&[u8], Vec<u8>, &str); 5] = [
            (b"ten/t", b"\x01{".to_vec(), "CorruptValue"),
            (b"ten/t", b"\x02{}".to_vec(), "CorruptValue"),
            (b"zzz/t", tenant.clone(), "CorruptRecord"),
            (b"ten/a b", tenant.clone(), "CorruptRecord"),
            (b"ten/t", tenant.clone(), "Inconsistent"),
        ];
        for (key, value, expected) in cases {
            let error = store
                .restore(&blob_of(&[(key, value)]))
                .expect_err("bad records restored");
            assert!(format!("{error:?}").starts_with(expected), "{error:?}");
            assert_eq!(store.applied_index(), 7);
            assert!(store.state().tenant("t").is_some());
        }
        let unordered = blob_of(&[(b"ten/t", tenant.clone()), (b"sys/counters", counters)]);
        assert!(matches!(
            store.restore(&unordered),
            Err(StoreError::CorruptSnapshot { .. })
        ));
    }

    /// Goal: record keys parse back to what wrote them, and nothing else parses.
    #[test]
    fn record_keys_round_trip() {
        let keys = [
            RecordKey::Disk(DiskId([0xab; 16])),
            RecordKey::Pool("ssd".into()),
            RecordKey::Volume("vm-1".into()),
            RecordKey::Tenant("acme".into()),
            RecordKey::AccessKey(KEY_ID.into()),
            RecordKey::Bucket("photos.2026".into()),
            RecordKey::Object("photos".into(), "a/b/ c/é/".into()),
            RecordKey::Object("photos".into(), "/".into()),
            RecordKey::Upload("Ab_-9".into()),
            RecordKey::Pending(OwnerId(0xab)),
            RecordKey::Garbage(OwnerId(u64::MAX)),
            RecordKey::Counters,
            RecordKey::Settings,
        ];
        for key in keys {
            assert_eq!(RecordKey::parse(&key.to_bytes()), Some(key));
        }
        assert_eq!(
            RecordKey::Disk(DiskId([0xab; 16])).to_bytes(),
            b"map/disk/abababababababababababababababab"
        );
        assert_eq!(
            RecordKey::Object("photos".into(), "a/b".into()).to_bytes(),
            b"obj/photos/a/b"
        );
        assert_eq!(
            RecordKey::Garbage(OwnerId(0xab)).to_bytes(),
            b"gc/00000000000000ab"
        );
        let bad: [&[u8]; 15] = [
            b"map/disk/ABABABABABABABABABABABABABABABAB",
            b"map/disk/abab",
            b"pool/",
            b"vol/a/b",
            b"key/lowercase-id",
            b"sys/applied",
            b"\xff",
            b"bkt/ab",
            b"bkt/Photos",
            b"obj/photos",
            b"obj/photos/",
            b"obj/ph/x",
            b"upl/a b",
            b"pend/00000000000000AB",
            b"gc/ab",
        ];
        for key in bad {
            assert_eq!(RecordKey::parse(key), None, "{key:?}");
        }
    }

    proptest! {
        /// Goal: `touched` names every record a command changes. Method: random sequences on a
        /// plain state; compare all records before and after each command. Cheap: no RocksDB.
        #[test]
        fn touched_records_cover_every_change(
            set_up in any::<bool>(),
            commands in proptest::collection::vec(command(), 1..60),
        ) {
            let mut state = MetaState::default();
            let prefix = if set_up { setup() } else { Vec::new() };
            for command in prefix.into_iter().chain(commands) {
                let command = resolve(&state, command);
                let before = records(&state);
                let touched = touched(&state, &command);
                let outcome = state.apply(command.clone());
                let after = records(&state);
                let touched: Vec<Vec<u8>> = touched.iter().map(RecordKey::to_bytes).collect();
                let keys: std::collections::BTreeSet<_> =
                    before.keys().chain(after.keys()).collect();
                for key in keys {
                    if before.get(key) != after.get(key) {
                        prop_assert!(outcome.is_ok(), "a refused command changed {}", lossy(key));
                        prop_assert!(touched.contains(key), "{:?} changed {}", command, lossy(key));
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// Goal: any sequence of commands survives a reopen, and a snapshot of it restores to
        /// the same state. Method: apply random sequences (refusals included) to a store and a
        /// plain state, reopen, compare; restore the snapshot into a fresh store, compare.
        /// Few cases: each opens RocksDB three times.
        #[test]
        fn random_sequences_survive_reopen(
            set_up in any::<bool>(),
            commands in proptest::collection::vec(command(), 1..60),
        ) {
            let prefix = if set_up { setup() } else { Vec::new() };
            let commands: Vec<Command> = prefix.into_iter().chain(commands).collect();
            let dir = tempfile::tempdir().expect("tempdir");
            let expected = {
                let mut store = MetaStore::open(dir.path()).expect("open");
                apply_all(&mut store, &commands)
            };
            let store = MetaStore::open(dir.path()).expect("reopen");
            prop_assert_eq!(store.state(), &expected);
            prop_assert_eq!(store.applied_index(), commands.len() as u64);
            let fresh_dir = tempfile::tempdir().expect("tempdir");
            let mut fresh = MetaStore::open(fresh_dir.path()).expect("open");
            fresh.restore(&store.snapshot()).expect("restore");
            prop_assert_eq!(fresh.state(), &expected);
            prop_assert_eq!(fresh.applied_index(), commands.len() as u64);
        }
    }
}
