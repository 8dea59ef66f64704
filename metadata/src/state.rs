//! The metadata state machine, pure: typed commands applied in Raft log order to the cluster
//! map, pools (with their PG maps), volumes, tenants and their S3 access keys, and the S3
//! object index (buckets, objects, multipart uploads, writes in progress, garbage), whose types
//! and command logic live in [`crate::objects`].
//!
//! Every replica applies the same commands in the same order and must end in the same state, so
//! `apply` reads no clock, draws no randomness and iterates only ordered maps. Whatever needs
//! randomness (a new access key's id and secret) is drawn by the proposer and carried in the
//! command. A command either applies whole or is refused with a typed error and changes nothing
//! (the admin API maps the errors to 400, 404 and 409).
//!
//! Secrets never reach logs: a secret key lives in [`SecretKey`], whose `Debug` is redacted and
//! which has no `Display`, so every type holding one (a [`Command`], an [`AccessKey`], the
//! [`MetaState`]) can be logged with `{:?}`.
//!
//! Around this module: [`crate::codec`] encodes commands for the Raft log (versioned JSON) and
//! [`crate::store`] persists the state in RocksDB, one record per disk, pool, volume, tenant,
//! access key, bucket, object, upload, pending write and garbage entry. This module and
//! [`crate::objects`] stay the only places where command logic lives.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use cairn_common::{DiskId, NodeId, OwnerId, PoolId, ReplicaId};
use serde::{Deserialize, Serialize};

use crate::{
    objects::{
        Bucket, BucketId, DocumentKind, Garbage, ObjectRecord, Part, PendingWrite, Quota,
        QuotaScope, S3Code, Segment, Upload, VersionId, Versions,
    },
    placement::{self, Disk, DiskState, FailureDomain, PoolPolicy},
};

/// Longest pool, volume or tenant name.
pub const NAME_BYTES_MAX: usize = 128;
/// Largest volume: 64 TiB, the most a single EVS volume is offered at.
pub const VOLUME_BYTES_MAX: u64 = 64 << 40;
/// Shortest access key id. AWS ids are 20 characters; 16 is the floor IAM documents.
pub const ACCESS_KEY_ID_BYTES_MIN: usize = 16;
/// Longest access key id (IAM's limit).
pub const ACCESS_KEY_ID_BYTES_MAX: usize = 128;
/// Shortest secret key: 32 characters of base64 carry 192 bits, enough for HMAC-SHA256 keys.
pub const SECRET_KEY_BYTES_MIN: usize = 32;
/// Longest secret key.
pub const SECRET_KEY_BYTES_MAX: usize = 128;
/// Access keys one tenant may hold. Rotation needs two at a time; 16 leaves room for a few
/// applications per tenant while bounding what one tenant adds to the replicated map.
pub const ACCESS_KEYS_PER_TENANT_MAX: usize = 16;

const _: () = assert!(ACCESS_KEY_ID_BYTES_MIN <= ACCESS_KEY_ID_BYTES_MAX);
const _: () = assert!(SECRET_KEY_BYTES_MIN <= SECRET_KEY_BYTES_MAX);

/// A volume's IOPS tier (DESIGN.md: 800 / 2,500 / 10,000 IOPS per volume).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QosTier {
    /// 800 IOPS.
    Normal,
    /// 2,500 IOPS.
    High,
    /// 10,000 IOPS.
    Ultra,
}

impl QosTier {
    /// The tier's IOPS limit.
    pub fn iops_max(self) -> u32 {
        match self {
            QosTier::Normal => 800,
            QosTier::High => 2500,
            QosTier::Ultra => 10_000,
        }
    }
}

/// Highest custom IOPS limit: far above what one volume can do, so it reads as "unlimited".
pub const VOLUME_IOPS_MAX: u32 = 1_000_000;
/// Lowest custom bandwidth limit, bytes per second: below 1 MB/s a volume cannot boot a VM.
pub const VOLUME_BYTES_PER_S_MIN: u64 = 1_000_000;
/// Shortest CHAP secret: RFC 7143 asks for at least 96 bits; 12 characters.
pub const CHAP_SECRET_BYTES_MIN: usize = 12;
/// Longest CHAP secret (the iSCSI text value limit is 255).
pub const CHAP_SECRET_BYTES_MAX: usize = 255;
/// Longest CHAP user name.
pub const CHAP_USER_BYTES_MAX: usize = 255;
/// Initiator names one volume's ACL may list.
pub const VOLUME_INITIATORS_MAX: usize = 64;
/// Longest iSCSI name (RFC 7143: 223 bytes).
pub const ISCSI_NAME_BYTES_MAX: usize = 223;
/// Largest persistent reservation state of one volume, encoded.
pub const RESERVATION_BYTES_MAX: usize = 64 << 10;
/// iSCSI portals the cluster may list.
pub const PORTALS_MAX: usize = 256;

/// A tenant's number, never reused: a tenant deleted and created again under the same name is
/// a different tenant, so nothing the old one owned carries over by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TenantId(pub u64);

/// One member of a PG: the disk holding its chunks and its Raft replica id. The replica's node
/// is the disk's host ([`host_node`]); a member replaced later gets a new replica id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgMember {
    /// The disk.
    pub disk: DiskId,
    /// The Raft replica.
    pub replica: ReplicaId,
    /// True for a member added after the pool was created ([`Command::MovePgMember`]): its
    /// node hosts it with an empty Raft log and the PG's leader adds it as a learner, instead
    /// of bootstrapping it with the PG's first configuration. Left out of the encoding when
    /// false, so records written before the field existed encode the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joined: bool,
}

/// The storage node that serves a host's disks: host `h` is node `h` (hosts number from 1).
pub fn host_node(host: crate::placement::HostId) -> NodeId {
    NodeId(u64::from(host.0))
}

/// A pool: its policy and where its PGs live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// The pool's id.
    pub id: PoolId,
    /// Replicas, failure-domain level and PG count.
    pub policy: PoolPolicy,
    /// Per PG, its members, preferred leader first.
    pub pg_map: Vec<Vec<PgMember>>,
    /// Bumped whenever the PG map changes; replicas reject requests of older epochs.
    pub epoch: u64,
}

/// A storage node: where its peers reach its PG replicas. Host `h` of the cluster map is node
/// `h` (see [`host_node`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    /// Its Raft transport (mutual TLS).
    pub raft_addr: std::net::SocketAddr,
    /// Its data API (volume bytes; pieces forwarded between nodes).
    pub data_addr: std::net::SocketAddr,
}

/// A block volume (EVS).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// The owner id its chunks are keyed by.
    pub id: OwnerId,
    /// The pool holding it.
    pub pool: String,
    /// Its size (thin: nothing is allocated until written).
    pub size_bytes: u64,
    /// Its IOPS tier.
    pub tier: QosTier,
    /// An IOPS limit set by the operator, replacing the tier's. Left out of the encoding when
    /// unset (as are the fields below), so records written before they existed encode the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops_max: Option<u32>,
    /// A bandwidth limit in bytes per second (unset: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_s_max: Option<u64>,
    /// Who may log in to the volume's iSCSI target (unset: the gateway's own CHAP credential,
    /// any initiator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iscsi: Option<IscsiAccess>,
    /// The volume's SCSI persistent reservations, as the iSCSI gateway encodes them: every
    /// gateway reads and changes them here, so all agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Reservation>,
}

impl Volume {
    /// The IOPS limit in force: the custom one, else the tier's.
    pub fn iops_limit(&self) -> u32 {
        self.iops_max.unwrap_or(self.tier.iops_max())
    }
}

/// One CHAP credential: the name and the shared secret (redacted in `Debug`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapCredential {
    /// CHAP_N.
    pub user: String,
    /// The secret.
    pub secret: SecretKey,
}

/// Who may log in to a volume's iSCSI target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IscsiAccess {
    /// What the initiator must prove (unset: the gateway's own credential).
    pub chap: Option<ChapCredential>,
    /// What the target proves back (mutual CHAP); needs `chap`.
    pub mutual: Option<ChapCredential>,
    /// The initiator names allowed to see and log in to the target (empty: any).
    pub initiators: Vec<String>,
}

/// A volume's persistent reservation state and its version, for compare-and-set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// Bumped by every [`Command::SetReservation`]; starts at 1 (0 means "none yet").
    pub version: u64,
    /// The state as the gateway encoded it (opaque here).
    pub state: Vec<u8>,
}

/// An iSCSI gateway's portal, where initiators connect (attach-info lists them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Portal {
    /// Its target portal group tag.
    pub group_tag: u16,
}

/// A tenant: the account S3 buckets and access keys belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// The tenant's id.
    pub id: TenantId,
    /// Its limits over all its buckets (absent from records: none). Its usage is the sum of
    /// its buckets' totals ([`MetaState::tenant_usage`]).
    #[serde(default, skip_serializing_if = "Quota::is_unlimited")]
    pub quota: Quota,
}

/// A secret: an access key's (as SigV4 uses it) or a CHAP secret.
///
/// Its `Debug` prints `SecretKey(<redacted>)` and it has no `Display`, so a secret cannot reach
/// a log through formatting; [`SecretKey::expose`] is the one way to read it. Serialization
/// (the Raft log, the store, snapshots) carries it in clear: those are protected as a whole.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretKey(String);

impl SecretKey {
    /// Wraps a secret drawn by the proposer (validated when the command is applied).
    pub fn new(secret: String) -> SecretKey {
        SecretKey(secret)
    }

    /// The secret itself, for computing signatures. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// An S3 access key: its id is the key of [`MetaState::access_key`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    /// The tenant it acts for.
    pub tenant: String,
    /// Its secret (redacted in `Debug`).
    pub secret_key: SecretKey,
}

/// A change to the metadata, as proposed to the Raft group.
///
/// Its `Debug` output never holds a secret (see [`SecretKey`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Command {
    /// Adds a disk to the cluster map (or refuses a known UUID).
    RegisterDisk(Disk),
    /// Records (or updates) where a storage node listens.
    RegisterNode {
        /// The node (its host number).
        id: u64,
        /// Where it listens.
        node: NodeRecord,
    },
    /// Marks a disk in or out.
    SetDiskState {
        /// The disk.
        disk: DiskId,
        /// Its new state.
        state: DiskState,
    },
    /// Creates a pool and places its PGs.
    CreatePool {
        /// Unique name.
        name: String,
        /// Replicas per PG.
        replicas: u32,
        /// Failure-domain level.
        domain: FailureDomain,
        /// PG count.
        pg_count: u32,
    },
    /// Creates a volume.
    CreateVolume {
        /// Unique name.
        name: String,
        /// The pool.
        pool: String,
        /// Size.
        size_bytes: u64,
        /// IOPS tier.
        tier: QosTier,
        /// A custom IOPS limit replacing the tier's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        iops_max: Option<u32>,
        /// A bandwidth limit, bytes per second.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes_per_s_max: Option<u64>,
    },
    /// Sets a volume's QoS whole: its tier and the custom limits (unset: none).
    SetVolumeQos {
        /// The volume.
        name: String,
        /// IOPS tier.
        tier: QosTier,
        /// A custom IOPS limit replacing the tier's.
        iops_max: Option<u32>,
        /// A bandwidth limit, bytes per second.
        bytes_per_s_max: Option<u64>,
    },
    /// Sets (or with `None` clears) who may log in to a volume's iSCSI target.
    SetVolumeAccess {
        /// The volume.
        name: String,
        /// The rules.
        access: Option<IscsiAccess>,
    },
    /// Replaces a volume's persistent reservation state if its version is still `expected`
    /// (0: none yet); refused with [`MetaError::Stale`] otherwise, so two gateways changing
    /// it at once cannot lose either change.
    SetReservation {
        /// The volume.
        name: String,
        /// The version the proposer read.
        expected: u64,
        /// The new state.
        state: Vec<u8>,
    },
    /// Records an iSCSI gateway's portal ("address:port").
    AddPortal {
        /// Where initiators connect.
        address: String,
        /// Its portal group.
        portal: Portal,
    },
    /// Forgets an iSCSI gateway's portal.
    RemovePortal {
        /// The address.
        address: String,
    },
    /// Grows a volume (shrinking would drop written data, so it is refused).
    ResizeVolume {
        /// The volume.
        name: String,
        /// The new size.
        size_bytes: u64,
    },
    /// Deletes a volume.
    DeleteVolume {
        /// The volume.
        name: String,
    },
    /// Creates a tenant.
    CreateTenant {
        /// Unique name.
        name: String,
    },
    /// Deletes a tenant. Refused with [`MetaError::NotEmpty`] (409) while the tenant still holds
    /// access keys or owns buckets: deleting them is an explicit step, so no credential or
    /// object disappears as a side effect and none outlives its tenant.
    DeleteTenant {
        /// The tenant.
        name: String,
    },
    /// Gives a tenant a new access key. The proposer draws the id and the secret (from the
    /// environment's randomness) so that applying stays deterministic.
    CreateAccessKey {
        /// The tenant.
        tenant: String,
        /// Unique id: 16-128 characters of A-Z, 0-9.
        access_key_id: String,
        /// The secret: 32-128 printable ASCII characters, no space.
        secret_key: SecretKey,
    },
    /// Deletes an access key.
    DeleteAccessKey {
        /// The key's id.
        access_key_id: String,
    },
    /// Removes a storage node and its disks from the cluster map. Refused with
    /// [`MetaError::NotEmpty`] (409) while any PG still has a member on one of its disks
    /// (drain it first), and as invalid if `disks` is not exactly the node's disks (the
    /// proposer lists them so the records to delete are known from the command alone).
    RemoveNode {
        /// The node (its host number).
        id: u64,
        /// Its disks.
        disks: Vec<DiskId>,
    },
    /// Makes `replica`, a member of the PG, its preferred leader (first in the map); the
    /// pool's epoch is bumped. Placement spreads preferred leaders over the disks; moves
    /// disturb that, and the scheduler evens it out again with this.
    SetPgLeader {
        /// The pool.
        pool: String,
        /// The PG's index in the pool.
        pg: u32,
        /// The member to lead.
        replica: ReplicaId,
    },
    /// Replaces one member of a PG by a new replica on another disk (recovery or rebalance).
    /// The new member gets a new replica id and `joined` set; the pool's epoch is bumped. If
    /// the replaced member was the preferred leader (first), the new one goes last, since the
    /// preferred leader must hold the PG's data; otherwise it takes the old one's place.
    MovePgMember {
        /// The pool.
        pool: String,
        /// The PG's index in the pool.
        pg: u32,
        /// The member replaced.
        from: ReplicaId,
        /// The disk of the new member.
        to: DiskId,
    },
    /// Lets the scheduler rebalance PGs onto new or emptier disks, or stops it (recovery of
    /// lost members goes on either way).
    SetRebalance {
        /// True to rebalance.
        enabled: bool,
    },
    /// Creates an S3 bucket. Refused with [`MetaError::BucketExists`] (naming the owner) if
    /// the name is taken, with [`S3Code::InvalidBucketName`] or [`S3Code::TooManyBuckets`].
    CreateBucket {
        /// Unique name, S3's rules.
        name: String,
        /// The owning tenant.
        tenant: String,
        /// The pool holding its objects' chunks.
        pool: String,
        /// The proposer's clock, ms since the Unix epoch.
        now_ms: u64,
    },
    /// Deletes a bucket; [`MetaError::NotEmpty`] while it holds objects, open uploads or
    /// writes in progress.
    DeleteBucket {
        /// The bucket.
        name: String,
    },
    /// Hands a gateway a new owner to write an object's or a part's chunks under
    /// ([`Applied::Owner`]); the owner is pending until committed or abandoned.
    BeginWrite {
        /// The bucket written to.
        bucket: String,
        /// The proposer's clock, ms since the Unix epoch.
        now_ms: u64,
    },
    /// Puts an object, replacing any under the key. Its segments' owners must be pending for
    /// this bucket; the replaced object's segments become garbage.
    PutObject {
        /// The bucket.
        bucket: String,
        /// The key (1 to 1024 bytes of UTF-8).
        key: String,
        /// The object; `modified_ms` is set to `now_ms`.
        record: ObjectRecord,
        /// The proposer's clock, ms since the Unix epoch.
        now_ms: u64,
    },
    /// Deletes an object (an absent key or version is no error). With a version id, removes
    /// that version (its segments become garbage); without, removes the object (unversioned
    /// bucket), adds a delete marker (versioning enabled) or a null delete marker in place of
    /// the null version (suspended). Answers [`Applied::Deleted`].
    DeleteObject {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The version to remove (absent from entries written before versioning).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version_id: Option<VersionId>,
        /// The proposer's clock, ms since the Unix epoch: a delete marker's time (absent from
        /// entries written before versioning).
        #[serde(default, skip_serializing_if = "is_zero")]
        now_ms: u64,
        /// The token of the S3 request ([`crate::objects::Request`]): a retry of a delete that
        /// added a delete marker adds no second one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<crate::objects::Request>,
        /// Without a version id: delete only if the key's newest version is this one, else
        /// [`MetaError::Stale`] (a lifecycle worker expiring what it judged, while another
        /// gateway's worker may be expiring it too).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_newest: Option<VersionId>,
    },
    /// Enables versioning on a bucket, or suspends it (a bucket never returns to
    /// unversioned).
    SetBucketVersioning {
        /// The bucket.
        bucket: String,
        /// True to enable, false to suspend.
        enabled: bool,
    },
    /// Sets (or, with `None`, removes) one of a bucket's documents: its policy, CORS or
    /// lifecycle configuration, which the gateways parse and enforce.
    SetBucketDocument {
        /// The bucket.
        bucket: String,
        /// Which document.
        kind: DocumentKind,
        /// Its text (at most [`DOCUMENT_BYTES_MAX`](crate::objects::DOCUMENT_BYTES_MAX)).
        document: Option<String>,
    },
    /// Replaces an object version's access control list (the newest version, or `version_id`).
    SetObjectAcl {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The version (absent: the newest).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version_id: Option<VersionId>,
        /// The list, as the gateways encode it (absent: none).
        acl: Option<String>,
    },
    /// Sets a bucket's or a tenant's limits; `None` removes a limit. Writes that would go
    /// over one are refused with [`S3Code::QuotaExceeded`].
    SetQuota {
        /// The bucket or tenant.
        scope: QuotaScope,
        /// Most bytes.
        bytes_max: Option<u64>,
        /// Most object versions.
        objects_max: Option<u64>,
    },
    /// Opens a multipart upload.
    CreateUpload {
        /// The bucket.
        bucket: String,
        /// The key the object will have.
        key: String,
        /// Unique id drawn by the proposer: 1-128 characters of A-Z, a-z, 0-9, '_', '-'.
        upload_id: String,
        /// The object's Content-Type.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_type: Option<String>,
        /// The object's user metadata.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        metadata: BTreeMap<String, String>,
        /// The proposer's clock, ms since the Unix epoch.
        now_ms: u64,
        /// The object's access control list, as the gateways encode it (the completed object
        /// gets it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        acl: Option<String>,
    },
    /// Records a part of an upload (replacing one of the same number, whose segment becomes
    /// garbage). The segment's owner must be pending for the upload's bucket.
    PutPart {
        /// The upload.
        upload_id: String,
        /// 1 to 10,000.
        part_number: u32,
        /// The part's bytes.
        segment: Segment,
        /// The part's ETag.
        etag: String,
        /// The proposer's clock, ms since the Unix epoch.
        now_ms: u64,
    },
    /// Completes an upload into an object made of the listed parts, in order.
    CompleteUpload {
        /// The upload.
        upload_id: String,
        /// Part numbers (strictly ascending) with the ETags the client was given.
        parts: Vec<(u32, String)>,
        /// The object's ETag, as the gateway computed it.
        etag: String,
        /// The proposer's clock, ms since the Unix epoch.
        now_ms: u64,
        /// The token of the S3 request ([`crate::objects::Request`]), kept on the object so
        /// that a retry, which finds the upload gone, can tell it was completed by itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<crate::objects::Request>,
    },
    /// Aborts an upload; its parts become garbage.
    AbortUpload {
        /// The upload.
        upload_id: String,
    },
    /// Turns writes in progress into garbage (a gateway's write failed, or a reclaim worker
    /// gave up on an old one). Owners not pending are ignored.
    AbandonWrites {
        /// The owners.
        owners: Vec<OwnerId>,
        /// How many bytes may have been written under each.
        length: u64,
    },
    /// Forgets garbage whose chunks were deleted. Unknown owners are ignored.
    ReclaimDone {
        /// The owners.
        owners: Vec<OwnerId>,
    },
}

/// Why a command was refused. Nothing changed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// The thing named does not exist (404).
    #[error("{kind} {name} not found")]
    NotFound {
        /// "disk", "pool", "volume", "tenant", "access key", "PG member" or "storage node".
        kind: &'static str,
        /// Its name or id.
        name: String,
    },
    /// The name or id is taken (409).
    #[error("{kind} {name} already exists")]
    AlreadyExists {
        /// "disk", "pool", "volume", "tenant" or "access key".
        kind: &'static str,
        /// Its name or id.
        name: String,
    },
    /// The thing still holds others that must be deleted first (409).
    #[error("{kind} {name} still holds {holds}")]
    NotEmpty {
        /// "tenant", "bucket" or "storage node".
        kind: &'static str,
        /// Its name.
        name: String,
        /// What it holds: "access keys", "buckets", "objects"...
        holds: &'static str,
    },
    /// The bucket name is taken (409), by `tenant`: the S3 gateway answers
    /// BucketAlreadyOwnedByYou or BucketAlreadyExists depending on who asks.
    #[error("bucket {name} already exists")]
    BucketExists {
        /// The bucket.
        name: String,
        /// Its owner.
        tenant: String,
    },
    /// An S3 request refused for a reason S3 names: the gateway answers with `code`
    /// (HTTP 400, or 503 for [`S3Code::SlowDown`]).
    #[error("{code}: {message}")]
    S3Refused {
        /// The S3 error code.
        code: S3Code,
        /// What was wrong.
        message: String,
    },
    /// The request is malformed or impossible as asked (400).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The thing changed since the proposer read it (412): read again and retry.
    #[error("{kind} of {name} is at version {current}, not {expected}")]
    Stale {
        /// "reservation".
        kind: &'static str,
        /// Whose.
        name: String,
        /// The version the proposer expected.
        expected: u64,
        /// The version now.
        current: u64,
    },
}

/// What an applied command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Applied {
    /// Done; nothing to return.
    Done,
    /// A pool was created with this id.
    Pool(PoolId),
    /// A volume was created with this owner id.
    Volume(OwnerId),
    /// A tenant was created with this id.
    Tenant(TenantId),
    /// A PG member was moved; the new member's replica.
    Replica(ReplicaId),
    /// A bucket was created with this id.
    Bucket(BucketId),
    /// A write may begin under this new owner.
    Owner(OwnerId),
    /// An object was written (`PutObject`, `CompleteUpload`) as this version; `None` in an
    /// unversioned bucket, whose objects S3 reports without a version id.
    Written {
        /// The new version.
        version: Option<VersionId>,
    },
    /// A `DeleteObject` applied.
    Deleted {
        /// The version removed or the delete marker made; `None` in an unversioned bucket.
        version: Option<VersionId>,
        /// Whether that version is a delete marker (made, or removed by id).
        marker: bool,
    },
}

/// The last id handed out of each kind; the next one is one more. Ids are never reused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Counters {
    pub(crate) next_pool: u32,
    pub(crate) next_owner: u64,
    pub(crate) next_tenant: u64,
    /// The last bucket id handed out (absent from records written before buckets existed).
    #[serde(default)]
    pub(crate) next_bucket: u64,
    /// Per host, the last replica number handed out on its node.
    #[serde(default)]
    pub(crate) replicas: BTreeMap<u32, u64>,
    /// The last object version id handed out (absent before versioning: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) next_version: u64,
}

/// Whether a number is zero: fields added later are left out while they are.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Cluster-wide switches an operator sets. Stored as one record; fields added later take
/// their default when an older record lacks them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Settings {
    /// Whether the scheduler rebalances PGs (recovery is not affected).
    pub(crate) rebalance: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        // A new cluster rebalances: a disk added later should fill without an operator step.
        Settings { rebalance: true }
    }
}

/// The whole metadata state.
///
/// The fields are visible to the crate so that [`crate::store`] can rebuild a state from its
/// records; everything else changes it only through [`MetaState::apply`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetaState {
    pub(crate) disks: BTreeMap<DiskId, Disk>,
    pub(crate) nodes: BTreeMap<u64, NodeRecord>,
    pub(crate) pools: BTreeMap<String, Pool>,
    pub(crate) volumes: BTreeMap<String, Volume>,
    pub(crate) tenants: BTreeMap<String, Tenant>,
    pub(crate) access_keys: BTreeMap<String, AccessKey>,
    pub(crate) counters: Counters,
    pub(crate) settings: Settings,
    pub(crate) portals: BTreeMap<String, Portal>,
    pub(crate) buckets: BTreeMap<String, Bucket>,
    /// Per bucket holding at least one version, its keys' versions by key: ordered, so
    /// listing by prefix is a range scan. A bucket without versions has no entry.
    pub(crate) objects: BTreeMap<String, BTreeMap<String, Versions>>,
    pub(crate) uploads: BTreeMap<String, Upload>,
    pub(crate) pending: BTreeMap<OwnerId, PendingWrite>,
    pub(crate) garbage: BTreeMap<OwnerId, Garbage>,
}

/// Checks a pool, volume or tenant name: such names become store keys, so they hold no `/`.
pub(crate) fn check_name(name: &str) -> Result<(), MetaError> {
    let valid = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(MetaError::Invalid(format!(
            "name {name:?}: 1-{NAME_BYTES_MAX} characters of a-z, A-Z, 0-9, '-', '_', '.'"
        )))
    }
}

/// Checks an access key id: upper-case letters and digits, as AWS issues them.
pub(crate) fn check_access_key_id(id: &str) -> Result<(), MetaError> {
    let valid = (ACCESS_KEY_ID_BYTES_MIN..=ACCESS_KEY_ID_BYTES_MAX).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(MetaError::Invalid(format!(
            "access key id {id:?}: {ACCESS_KEY_ID_BYTES_MIN}-{ACCESS_KEY_ID_BYTES_MAX} \
             characters of A-Z, 0-9"
        )))
    }
}

/// Checks a secret key: printable ASCII without space (it travels in config files and
/// environment variables). The error never quotes the secret.
fn check_secret_key(secret: &SecretKey) -> Result<(), MetaError> {
    let secret = secret.expose();
    let valid = (SECRET_KEY_BYTES_MIN..=SECRET_KEY_BYTES_MAX).contains(&secret.len())
        && secret.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(())
    } else {
        Err(MetaError::Invalid(format!(
            "secret key: {SECRET_KEY_BYTES_MIN}-{SECRET_KEY_BYTES_MAX} printable ASCII \
             characters, no space"
        )))
    }
}

fn check_qos(iops_max: Option<u32>, bytes_per_s_max: Option<u64>) -> Result<(), MetaError> {
    if iops_max.is_some_and(|iops| iops == 0 || iops > VOLUME_IOPS_MAX) {
        return Err(MetaError::Invalid(format!(
            "IOPS limit: 1 to {VOLUME_IOPS_MAX}"
        )));
    }
    if bytes_per_s_max.is_some_and(|b| b < VOLUME_BYTES_PER_S_MIN) {
        return Err(MetaError::Invalid(format!(
            "bandwidth limit: at least {VOLUME_BYTES_PER_S_MIN} bytes per second"
        )));
    }
    Ok(())
}

/// Checks CHAP credentials and initiator names. Errors never quote a secret.
fn check_access(access: &IscsiAccess) -> Result<(), MetaError> {
    let credentials = access.chap.iter().chain(&access.mutual);
    for (i, credential) in credentials.enumerate() {
        let which = if i == 0 && access.chap.is_some() {
            "CHAP"
        } else {
            "mutual CHAP"
        };
        let user = &credential.user;
        if user.is_empty()
            || user.len() > CHAP_USER_BYTES_MAX
            || !user.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(MetaError::Invalid(format!(
                "{which} user: 1-{CHAP_USER_BYTES_MAX} printable characters, no space"
            )));
        }
        let secret = credential.secret.expose();
        if !(CHAP_SECRET_BYTES_MIN..=CHAP_SECRET_BYTES_MAX).contains(&secret.len())
            || !secret.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(MetaError::Invalid(format!(
                "{which} secret: {CHAP_SECRET_BYTES_MIN}-{CHAP_SECRET_BYTES_MAX} printable \
                 characters, no space"
            )));
        }
    }
    if access.mutual.is_some() && access.chap.is_none() {
        return Err(MetaError::Invalid(
            "mutual CHAP needs the initiator's CHAP credential too".into(),
        ));
    }
    if let (Some(chap), Some(mutual)) = (&access.chap, &access.mutual)
        && chap.secret == mutual.secret
    {
        // RFC 7143 12.1.3: the two directions must not share a secret.
        return Err(MetaError::Invalid(
            "mutual CHAP needs a secret of its own, not the initiator's".into(),
        ));
    }
    if access.initiators.len() > VOLUME_INITIATORS_MAX {
        return Err(MetaError::Invalid(format!(
            "at most {VOLUME_INITIATORS_MAX} initiator names"
        )));
    }
    for name in &access.initiators {
        let lower = name.to_ascii_lowercase();
        let valid = name.len() <= ISCSI_NAME_BYTES_MAX
            && (lower.starts_with("iqn.")
                || lower.starts_with("eui.")
                || lower.starts_with("naa."))
            && name.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(MetaError::Invalid(format!(
                "initiator {name:?}: an iSCSI name (iqn., eui. or naa.) of at most \
                 {ISCSI_NAME_BYTES_MAX} bytes"
            )));
        }
    }
    Ok(())
}

/// Checks a portal address: an IP address and port, as initiators are given it.
fn check_portal(address: &str) -> Result<(), MetaError> {
    match address.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.port() != 0 && !addr.ip().is_unspecified() => Ok(()),
        _ => Err(MetaError::Invalid(format!(
            "portal {address:?}: an address and port initiators can reach"
        ))),
    }
}

fn check_size(size_bytes: u64) -> Result<(), MetaError> {
    let block = u64::from(cairn_common::BLOCK_SIZE);
    if size_bytes == 0 || size_bytes > VOLUME_BYTES_MAX || !size_bytes.is_multiple_of(block) {
        return Err(MetaError::Invalid(format!(
            "size {size_bytes}: a positive multiple of {block} bytes up to {VOLUME_BYTES_MAX}"
        )));
    }
    Ok(())
}

impl MetaState {
    /// Applies one command, whole or not at all.
    pub fn apply(&mut self, command: Command) -> Result<Applied, MetaError> {
        match command {
            Command::RegisterDisk(disk) => self.register_disk(disk),
            Command::RegisterNode { id, node } => {
                if id == 0 || id > ReplicaId::NODE_MAX {
                    return Err(MetaError::Invalid(format!(
                        "node {id} out of range: nodes number from 1 to {}",
                        ReplicaId::NODE_MAX
                    )));
                }
                self.nodes.insert(id, node);
                Ok(Applied::Done)
            }
            Command::SetDiskState { disk, state } => self.set_disk_state(disk, state),
            Command::CreatePool {
                name,
                replicas,
                domain,
                pg_count,
            } => self.create_pool(
                name,
                PoolPolicy {
                    replicas,
                    domain,
                    pg_count,
                },
            ),
            Command::CreateVolume {
                name,
                pool,
                size_bytes,
                tier,
                iops_max,
                bytes_per_s_max,
            } => {
                check_qos(iops_max, bytes_per_s_max)?;
                let volume = Volume {
                    id: OwnerId(0),
                    pool,
                    size_bytes,
                    tier,
                    iops_max,
                    bytes_per_s_max,
                    iscsi: None,
                    reservation: None,
                };
                self.create_volume(name, volume)
            }
            Command::SetVolumeQos {
                name,
                tier,
                iops_max,
                bytes_per_s_max,
            } => {
                check_qos(iops_max, bytes_per_s_max)?;
                let volume = self.volume_mut(&name)?;
                volume.tier = tier;
                volume.iops_max = iops_max;
                volume.bytes_per_s_max = bytes_per_s_max;
                Ok(Applied::Done)
            }
            Command::SetVolumeAccess { name, access } => {
                if let Some(access) = &access {
                    check_access(access)?;
                }
                self.volume_mut(&name)?.iscsi = access;
                Ok(Applied::Done)
            }
            Command::SetReservation {
                name,
                expected,
                state,
            } => self.set_reservation(name, expected, state),
            Command::AddPortal { address, portal } => {
                check_portal(&address)?;
                if !self.portals.contains_key(&address) && self.portals.len() >= PORTALS_MAX {
                    return Err(MetaError::Invalid(format!(
                        "the cluster lists {PORTALS_MAX} iSCSI portals already"
                    )));
                }
                self.portals.insert(address, portal);
                Ok(Applied::Done)
            }
            Command::RemovePortal { address } => match self.portals.remove(&address) {
                Some(_) => Ok(Applied::Done),
                None => Err(MetaError::NotFound {
                    kind: "portal",
                    name: address,
                }),
            },
            Command::ResizeVolume { name, size_bytes } => self.resize_volume(name, size_bytes),
            Command::DeleteVolume { name } => match self.volumes.remove(&name) {
                Some(_) => Ok(Applied::Done),
                None => Err(MetaError::NotFound {
                    kind: "volume",
                    name,
                }),
            },
            Command::CreateTenant { name } => self.create_tenant(name),
            Command::DeleteTenant { name } => self.delete_tenant(name),
            Command::CreateAccessKey {
                tenant,
                access_key_id,
                secret_key,
            } => self.create_access_key(tenant, access_key_id, secret_key),
            Command::DeleteAccessKey { access_key_id } => {
                match self.access_keys.remove(&access_key_id) {
                    Some(_) => Ok(Applied::Done),
                    None => Err(MetaError::NotFound {
                        kind: "access key",
                        name: access_key_id,
                    }),
                }
            }
            Command::MovePgMember { pool, pg, from, to } => {
                self.move_pg_member(&pool, pg, from, to)
            }
            Command::RemoveNode { id, disks } => self.remove_node(id, disks),
            Command::SetPgLeader { pool, pg, replica } => self.set_pg_leader(&pool, pg, replica),
            Command::SetRebalance { enabled } => {
                self.settings.rebalance = enabled;
                Ok(Applied::Done)
            }
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
            | Command::ReclaimDone { .. }) => self.apply_object_command(command),
        }
    }

    /// Applies the S3 object index's commands ([`crate::objects`]).
    fn apply_object_command(&mut self, command: Command) -> Result<Applied, MetaError> {
        match command {
            Command::CreateBucket {
                name,
                tenant,
                pool,
                now_ms,
            } => self.create_bucket(name, tenant, pool, now_ms),
            Command::DeleteBucket { name } => self.delete_bucket(name),
            Command::BeginWrite { bucket, now_ms } => self.begin_write(bucket, now_ms),
            Command::PutObject {
                bucket,
                key,
                record,
                now_ms,
            } => self.put_object(bucket, key, record, now_ms),
            Command::DeleteObject {
                bucket,
                key,
                version_id,
                now_ms,
                request,
                if_newest,
            } => self.delete_object(bucket, key, version_id, request, if_newest, now_ms),
            Command::SetBucketVersioning { bucket, enabled } => {
                self.set_bucket_versioning(&bucket, enabled)
            }
            Command::SetBucketDocument {
                bucket,
                kind,
                document,
            } => self.set_bucket_document(&bucket, kind, document),
            Command::SetObjectAcl {
                bucket,
                key,
                version_id,
                acl,
            } => self.set_object_acl(&bucket, &key, version_id, acl),
            Command::SetQuota {
                scope,
                bytes_max,
                objects_max,
            } => self.set_quota(
                &scope,
                Quota {
                    bytes_max,
                    objects_max,
                },
            ),
            Command::CreateUpload {
                bucket,
                key,
                upload_id,
                content_type,
                metadata,
                now_ms,
                acl,
            } => {
                let upload = Upload {
                    bucket,
                    key,
                    created_ms: now_ms,
                    content_type,
                    metadata,
                    parts: BTreeMap::new(),
                    acl,
                };
                self.create_upload(upload_id, upload)
            }
            Command::PutPart {
                upload_id,
                part_number,
                segment,
                etag,
                now_ms,
            } => {
                let part = Part {
                    segment,
                    etag,
                    modified_ms: now_ms,
                };
                self.put_part(upload_id, part_number, part)
            }
            Command::CompleteUpload {
                upload_id,
                parts,
                etag,
                now_ms,
                request,
            } => self.complete_upload(upload_id, &parts, etag, request, now_ms),
            Command::AbortUpload { upload_id } => self.abort_upload(upload_id),
            Command::AbandonWrites { owners, length } => self.abandon_writes(&owners, length),
            Command::ReclaimDone { owners } => self.reclaim_done(&owners),
            other => unreachable!("apply routes only object index commands here: {other:?}"),
        }
    }

    fn register_disk(&mut self, disk: Disk) -> Result<Applied, MetaError> {
        if self.disks.contains_key(&disk.id) {
            return Err(MetaError::AlreadyExists {
                kind: "disk",
                name: disk.id.to_string(),
            });
        }
        if disk.capacity_bytes == 0 {
            return Err(MetaError::Invalid("a disk needs a capacity".into()));
        }
        if disk.host.0 == 0 || u64::from(disk.host.0) > ReplicaId::NODE_MAX {
            return Err(MetaError::Invalid(format!(
                "host {} out of range: hosts number from 1 to {}",
                disk.host.0,
                ReplicaId::NODE_MAX
            )));
        }
        self.disks.insert(disk.id, disk);
        Ok(Applied::Done)
    }

    fn set_disk_state(&mut self, disk: DiskId, state: DiskState) -> Result<Applied, MetaError> {
        let entry = self.disks.get_mut(&disk);
        let entry = entry.ok_or_else(|| MetaError::NotFound {
            kind: "disk",
            name: disk.to_string(),
        })?;
        entry.state = state;
        Ok(Applied::Done)
    }

    fn create_pool(&mut self, name: String, policy: PoolPolicy) -> Result<Applied, MetaError> {
        check_name(&name)?;
        if self.pools.contains_key(&name) {
            return Err(MetaError::AlreadyExists { kind: "pool", name });
        }
        let disks: Vec<Disk> = self.disks.values().cloned().collect();
        let placed =
            placement::place(&disks, &policy).map_err(|e| MetaError::Invalid(e.to_string()))?;
        let mut pg_map = Vec::with_capacity(placed.len());
        for members in placed {
            let members = members
                .into_iter()
                .map(|i| {
                    let host = disks[i].host;
                    let number = self.counters.replicas.entry(host.0).or_default();
                    *number += 1;
                    PgMember {
                        disk: disks[i].id,
                        replica: ReplicaId::new(host_node(host), *number),
                        joined: false,
                    }
                })
                .collect();
            pg_map.push(members);
        }
        self.counters.next_pool += 1;
        let id = PoolId(self.counters.next_pool);
        self.pools.insert(
            name,
            Pool {
                id,
                policy,
                pg_map,
                epoch: 1,
            },
        );
        Ok(Applied::Pool(id))
    }

    fn set_pg_leader(
        &mut self,
        pool_name: &str,
        pg: u32,
        replica: ReplicaId,
    ) -> Result<Applied, MetaError> {
        let pool = self
            .pools
            .get_mut(pool_name)
            .ok_or_else(|| MetaError::NotFound {
                kind: "pool",
                name: pool_name.to_string(),
            })?;
        let members = pool
            .pg_map
            .get_mut(pg as usize)
            .ok_or_else(|| MetaError::Invalid(format!("pool {pool_name} has no PG {pg}")))?;
        let at = members
            .iter()
            .position(|m| m.replica == replica)
            .ok_or_else(|| MetaError::NotFound {
                kind: "PG member",
                name: replica.to_string(),
            })?;
        if at > 0 {
            let member = members.remove(at);
            members.insert(0, member);
            pool.epoch += 1;
        }
        Ok(Applied::Done)
    }

    fn move_pg_member(
        &mut self,
        pool_name: &str,
        pg: u32,
        from: ReplicaId,
        to: DiskId,
    ) -> Result<Applied, MetaError> {
        let pool = self
            .pools
            .get(pool_name)
            .ok_or_else(|| MetaError::NotFound {
                kind: "pool",
                name: pool_name.to_string(),
            })?;
        if pg >= pool.policy.pg_count {
            return Err(MetaError::Invalid(format!(
                "pool {pool_name} has {} PGs; there is no PG {pg}",
                pool.policy.pg_count
            )));
        }
        let members = &pool.pg_map[pg as usize];
        let index = members.iter().position(|m| m.replica == from);
        let index = index.ok_or_else(|| MetaError::NotFound {
            kind: "PG member",
            name: format!("{from} of {pool_name}/{pg}"),
        })?;
        let target = self.disks.get(&to).ok_or_else(|| MetaError::NotFound {
            kind: "disk",
            name: to.to_string(),
        })?;
        self.check_target(pool, pg, index, target)?;
        let host = target.host;
        let number = self.counters.replicas.entry(host.0).or_default();
        *number += 1;
        let joined = PgMember {
            disk: to,
            replica: ReplicaId::new(host_node(host), *number),
            joined: true,
        };
        let pool = self
            .pools
            .get_mut(pool_name)
            .expect("invariant: the pool was found above");
        let members = &mut pool.pg_map[pg as usize];
        if index == 0 {
            // The preferred leader must hold the PG's data: the next member takes its place.
            members.remove(0);
            members.push(joined);
        } else {
            members[index] = joined;
        }
        pool.epoch += 1;
        Ok(Applied::Replica(joined.replica))
    }

    /// Checks that `target` may take the place of member `index` of PG `pg` of `pool`: in
    /// service, holding no member of the PG, in a failure domain no remaining member uses.
    fn check_target(
        &self,
        pool: &Pool,
        pg: u32,
        index: usize,
        target: &Disk,
    ) -> Result<(), MetaError> {
        if target.state != DiskState::In {
            return Err(MetaError::Invalid(format!(
                "disk {} is out of service",
                target.id
            )));
        }
        let members = &pool.pg_map[pg as usize];
        if members.iter().any(|m| m.disk == target.id) {
            return Err(MetaError::Invalid(format!(
                "disk {} already holds a member of PG {pg}",
                target.id
            )));
        }
        let level = pool.policy.domain;
        let shared = members
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .filter_map(|(_, m)| self.disks.get(&m.disk))
            .any(|d| d.domain(level) == target.domain(level));
        if shared {
            return Err(MetaError::Invalid(format!(
                "disk {} shares a {level:?} failure domain with a member of PG {pg}",
                target.id
            )));
        }
        Ok(())
    }

    /// Creates `volume` (its id is handed out here).
    fn create_volume(&mut self, name: String, mut volume: Volume) -> Result<Applied, MetaError> {
        check_name(&name)?;
        if self.volumes.contains_key(&name) {
            return Err(MetaError::AlreadyExists {
                kind: "volume",
                name,
            });
        }
        if !self.pools.contains_key(&volume.pool) {
            return Err(MetaError::NotFound {
                kind: "pool",
                name: volume.pool,
            });
        }
        check_size(volume.size_bytes)?;
        self.counters.next_owner += 1;
        let id = OwnerId(self.counters.next_owner);
        volume.id = id;
        self.volumes.insert(name, volume);
        Ok(Applied::Volume(id))
    }

    fn volume_mut(&mut self, name: &str) -> Result<&mut Volume, MetaError> {
        self.volumes
            .get_mut(name)
            .ok_or_else(|| MetaError::NotFound {
                kind: "volume",
                name: name.to_string(),
            })
    }

    fn set_reservation(
        &mut self,
        name: String,
        expected: u64,
        state: Vec<u8>,
    ) -> Result<Applied, MetaError> {
        if state.len() > RESERVATION_BYTES_MAX {
            return Err(MetaError::Invalid(format!(
                "reservation state of {} bytes (at most {RESERVATION_BYTES_MAX})",
                state.len()
            )));
        }
        let volume = self.volume_mut(&name)?;
        let current = volume.reservation.as_ref().map_or(0, |r| r.version);
        if current != expected {
            return Err(MetaError::Stale {
                kind: "reservation",
                name,
                expected,
                current,
            });
        }
        volume.reservation = Some(Reservation {
            version: current + 1,
            state,
        });
        Ok(Applied::Done)
    }

    fn resize_volume(&mut self, name: String, size_bytes: u64) -> Result<Applied, MetaError> {
        check_size(size_bytes)?;
        let volume = self.volumes.get_mut(&name);
        let volume = volume.ok_or_else(|| MetaError::NotFound {
            kind: "volume",
            name: name.clone(),
        })?;
        if size_bytes < volume.size_bytes {
            return Err(MetaError::Invalid(format!(
                "volume {name} is {} bytes; shrinking to {size_bytes} would drop data",
                volume.size_bytes
            )));
        }
        volume.size_bytes = size_bytes;
        Ok(Applied::Done)
    }

    fn create_tenant(&mut self, name: String) -> Result<Applied, MetaError> {
        check_name(&name)?;
        if self.tenants.contains_key(&name) {
            return Err(MetaError::AlreadyExists {
                kind: "tenant",
                name,
            });
        }
        self.counters.next_tenant += 1;
        let id = TenantId(self.counters.next_tenant);
        let tenant = Tenant {
            id,
            quota: Quota::default(),
        };
        self.tenants.insert(name, tenant);
        Ok(Applied::Tenant(id))
    }

    fn delete_tenant(&mut self, name: String) -> Result<Applied, MetaError> {
        if !self.tenants.contains_key(&name) {
            return Err(MetaError::NotFound {
                kind: "tenant",
                name,
            });
        }
        if self.access_keys_of(&name).next().is_some() {
            return Err(MetaError::NotEmpty {
                kind: "tenant",
                name,
                holds: "access keys; delete them first",
            });
        }
        if self.buckets_of(&name).next().is_some() {
            return Err(MetaError::NotEmpty {
                kind: "tenant",
                name,
                holds: "buckets; delete them first",
            });
        }
        self.tenants.remove(&name);
        Ok(Applied::Done)
    }

    fn remove_node(&mut self, id: u64, mut disks: Vec<DiskId>) -> Result<Applied, MetaError> {
        let mut held: Vec<DiskId> = self
            .disks
            .values()
            .filter(|d| u64::from(d.host.0) == id)
            .map(|d| d.id)
            .collect();
        if held.is_empty() && !self.nodes.contains_key(&id) {
            return Err(MetaError::NotFound {
                kind: "storage node",
                name: id.to_string(),
            });
        }
        held.sort();
        disks.sort();
        if held != disks {
            return Err(MetaError::Invalid(format!(
                "storage node {id} has {} disks, the request named {}; retry",
                held.len(),
                disks.len()
            )));
        }
        let used = self.pools.values().any(|pool| {
            pool.pg_map
                .iter()
                .flatten()
                .any(|member| held.contains(&member.disk))
        });
        if used {
            return Err(MetaError::NotEmpty {
                kind: "storage node",
                name: id.to_string(),
                holds: "PG members; drain it first (cairn node drain)",
            });
        }
        for disk in held {
            self.disks.remove(&disk);
        }
        self.nodes.remove(&id);
        Ok(Applied::Done)
    }

    fn create_access_key(
        &mut self,
        tenant: String,
        access_key_id: String,
        secret_key: SecretKey,
    ) -> Result<Applied, MetaError> {
        check_access_key_id(&access_key_id)?;
        check_secret_key(&secret_key)?;
        if !self.tenants.contains_key(&tenant) {
            return Err(MetaError::NotFound {
                kind: "tenant",
                name: tenant,
            });
        }
        if self.access_keys.contains_key(&access_key_id) {
            return Err(MetaError::AlreadyExists {
                kind: "access key",
                name: access_key_id,
            });
        }
        // A scan of every key: fine for the control plane, and it needs no second index that
        // could disagree with the keys themselves.
        let held = self.access_keys_of(&tenant).count();
        if held >= ACCESS_KEYS_PER_TENANT_MAX {
            return Err(MetaError::Invalid(format!(
                "tenant {tenant} holds {held} access keys, the most allowed"
            )));
        }
        let key = AccessKey { tenant, secret_key };
        self.access_keys.insert(access_key_id, key);
        Ok(Applied::Done)
    }

    /// A disk by id.
    pub fn disk(&self, id: DiskId) -> Option<&Disk> {
        self.disks.get(&id)
    }

    /// Disks in id order.
    pub fn disks(&self) -> impl Iterator<Item = &Disk> {
        self.disks.values()
    }

    /// Storage nodes by id.
    pub fn nodes(&self) -> impl Iterator<Item = (u64, &NodeRecord)> {
        self.nodes.iter().map(|(id, node)| (*id, node))
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }

    /// Pools in name order.
    pub fn pools(&self) -> impl Iterator<Item = (&String, &Pool)> {
        self.pools.iter()
    }

    /// A volume by name.
    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.get(name)
    }

    /// Volumes in name order.
    pub fn volumes(&self) -> impl Iterator<Item = (&String, &Volume)> {
        self.volumes.iter()
    }

    /// The iSCSI portals gateways registered, by address.
    pub fn portals(&self) -> impl Iterator<Item = (&String, &Portal)> {
        self.portals.iter()
    }

    /// Whether the scheduler may rebalance PGs ([`Command::SetRebalance`]).
    pub fn rebalance_enabled(&self) -> bool {
        self.settings.rebalance
    }

    /// A tenant by name.
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.get(name)
    }

    /// Tenants in name order.
    pub fn tenants(&self) -> impl Iterator<Item = (&String, &Tenant)> {
        self.tenants.iter()
    }

    /// An access key by id (what SigV4 looks up).
    pub fn access_key(&self, access_key_id: &str) -> Option<&AccessKey> {
        self.access_keys.get(access_key_id)
    }

    /// Access keys in id order.
    pub fn access_keys(&self) -> impl Iterator<Item = (&String, &AccessKey)> {
        self.access_keys.iter()
    }

    /// A tenant's access keys in id order (a scan of all keys).
    pub fn access_keys_of<'a>(
        &'a self,
        tenant: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a AccessKey)> {
        self.access_keys
            .iter()
            .filter(move |(_, key)| key.tenant == tenant)
    }

    /// Describes the first broken invariant, if any: what `apply` keeps true, checked again
    /// when a state is rebuilt from the store or a snapshot.
    pub(crate) fn invariant_violation(&self) -> Option<String> {
        for (id, disk) in &self.disks {
            if *id != disk.id || disk.capacity_bytes == 0 {
                return Some(format!("disk {id}: id mismatch or no capacity"));
            }
        }
        self.pool_violation()
            .or_else(|| self.volume_violation())
            .or_else(|| self.tenant_violation())
            .or_else(|| self.objects_violation())
    }

    fn pool_violation(&self) -> Option<String> {
        let mut ids = BTreeSet::new();
        for (name, pool) in &self.pools {
            if check_name(name).is_err() || !ids.insert(pool.id) {
                return Some(format!("pool {name:?}: bad name or duplicate id"));
            }
            if pool.id.0 == 0 || pool.id.0 > self.counters.next_pool {
                return Some(format!("pool {name}: id {} not handed out", pool.id.0));
            }
            if pool.pg_map.len() != pool.policy.pg_count as usize {
                return Some(format!("pool {name}: PG map length differs from PG count"));
            }
            for members in &pool.pg_map {
                let distinct: BTreeSet<_> = members.iter().map(|m| m.disk).collect();
                let known = members.iter().all(|m| {
                    self.disks.get(&m.disk).is_some_and(|d| {
                        m.replica.node() == host_node(d.host)
                            && m.replica.number()
                                <= self.counters.replicas.get(&d.host.0).copied().unwrap_or(0)
                    })
                });
                if members.len() != pool.policy.replicas as usize
                    || distinct.len() != members.len()
                    || !known
                {
                    return Some(format!("pool {name}: a PG's members are wrong"));
                }
            }
        }
        None
    }

    fn volume_violation(&self) -> Option<String> {
        let mut ids = BTreeSet::new();
        for (name, volume) in &self.volumes {
            if check_name(name).is_err() || !ids.insert(volume.id) {
                return Some(format!("volume {name:?}: bad name or duplicate id"));
            }
            if volume.id.0 == 0 || volume.id.0 > self.counters.next_owner {
                return Some(format!("volume {name}: id {} not handed out", volume.id.0));
            }
            if !self.pools.contains_key(&volume.pool) || check_size(volume.size_bytes).is_err() {
                return Some(format!("volume {name}: unknown pool or bad size"));
            }
            let access_bad = volume
                .iscsi
                .as_ref()
                .is_some_and(|a| check_access(a).is_err());
            if check_qos(volume.iops_max, volume.bytes_per_s_max).is_err() || access_bad {
                return Some(format!("volume {name}: bad QoS or iSCSI access"));
            }
        }
        if self.portals.len() > PORTALS_MAX || self.portals.keys().any(|a| check_portal(a).is_err())
        {
            return Some("bad iSCSI portals".into());
        }
        None
    }

    fn tenant_violation(&self) -> Option<String> {
        let mut ids = BTreeSet::new();
        for (name, tenant) in &self.tenants {
            if check_name(name).is_err() || !ids.insert(tenant.id) {
                return Some(format!("tenant {name:?}: bad name or duplicate id"));
            }
            if tenant.id.0 == 0 || tenant.id.0 > self.counters.next_tenant {
                return Some(format!("tenant {name}: id {} not handed out", tenant.id.0));
            }
        }
        let mut held: BTreeMap<&str, usize> = BTreeMap::new();
        for (id, key) in &self.access_keys {
            if check_access_key_id(id).is_err() || check_secret_key(&key.secret_key).is_err() {
                return Some(format!("access key {id:?}: bad id or secret"));
            }
            if !self.tenants.contains_key(&key.tenant) {
                return Some(format!("access key {id}: unknown tenant {}", key.tenant));
            }
            let count = held.entry(&key.tenant).or_default();
            *count += 1;
            if *count > ACCESS_KEYS_PER_TENANT_MAX {
                return Some(format!("tenant {}: too many access keys", key.tenant));
            }
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::placement::{HostId, RackId, SiteId};

    /// A valid access key id and secret, for tests.
    pub(crate) const KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
    pub(crate) const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    pub(crate) fn disk(n: u8, host: u32) -> Disk {
        Disk {
            id: DiskId([n; 16]),
            host: HostId(host),
            rack: RackId(0),
            site: SiteId(0),
            capacity_bytes: 1 << 40,
            state: DiskState::In,
        }
    }

    #[test]
    fn pools_volumes_and_clear_refusals() {
        let mut state = MetaState::default();
        for n in 0..6 {
            state
                .apply(Command::RegisterDisk(disk(n, 1 + u32::from(n / 2))))
                .expect("disk");
        }
        assert!(matches!(
            state.apply(Command::RegisterDisk(disk(0, 1))),
            Err(MetaError::AlreadyExists { .. })
        ));
        let pool = Command::CreatePool {
            name: "ssd".into(),
            replicas: 3,
            domain: FailureDomain::Host,
            pg_count: 64,
        };
        assert_eq!(state.apply(pool.clone()), Ok(Applied::Pool(PoolId(1))));
        assert_eq!(state.pool("ssd").expect("pool").pg_map.len(), 64);
        assert!(matches!(
            state.apply(pool),
            Err(MetaError::AlreadyExists { .. })
        ));
        let racks = Command::CreatePool {
            name: "r".into(),
            replicas: 3,
            domain: FailureDomain::Rack,
            pg_count: 8,
        };
        assert!(
            matches!(state.apply(racks), Err(MetaError::Invalid(_))),
            "one rack cannot hold 3 replicas"
        );
        let volume = |name: &str, size: u64| Command::CreateVolume {
            name: name.into(),
            pool: "ssd".into(),
            size_bytes: size,
            tier: QosTier::High,
            iops_max: None,
            bytes_per_s_max: None,
        };
        assert_eq!(
            state.apply(volume("vm-1", 10 << 30)),
            Ok(Applied::Volume(OwnerId(1)))
        );
        assert!(matches!(
            state.apply(volume("vm-1", 1 << 30)),
            Err(MetaError::AlreadyExists { .. })
        ));
        assert!(matches!(
            state.apply(volume("bad name!", 1 << 30)),
            Err(MetaError::Invalid(_))
        ));
        assert!(matches!(
            state.apply(volume("odd", 1000)),
            Err(MetaError::Invalid(_))
        ));
        let shrink = Command::ResizeVolume {
            name: "vm-1".into(),
            size_bytes: 1 << 30,
        };
        assert!(matches!(state.apply(shrink), Err(MetaError::Invalid(_))));
        state
            .apply(Command::ResizeVolume {
                name: "vm-1".into(),
                size_bytes: 20 << 30,
            })
            .expect("grow");
        assert_eq!(state.volume("vm-1").expect("volume").size_bytes, 20 << 30);
        state
            .apply(Command::DeleteVolume {
                name: "vm-1".into(),
            })
            .expect("delete");
        assert!(matches!(
            state.apply(Command::DeleteVolume {
                name: "vm-1".into()
            }),
            Err(MetaError::NotFound { .. })
        ));
        assert_eq!(QosTier::Ultra.iops_max(), 10_000);
        assert_eq!(state.pools().count(), 1);
        assert_eq!(state.disk(DiskId([0; 16])), Some(&disk(0, 1)));
        assert_eq!(state.invariant_violation(), None);
    }

    /// A state with pool "ssd" and volume "vm-1" (High tier).
    fn with_volume() -> MetaState {
        let mut state = MetaState::default();
        for n in 0..3 {
            state
                .apply(Command::RegisterDisk(disk(n, 1 + u32::from(n))))
                .expect("disk");
        }
        state
            .apply(Command::CreatePool {
                name: "ssd".into(),
                replicas: 3,
                domain: FailureDomain::Host,
                pg_count: 8,
            })
            .expect("pool");
        state
            .apply(Command::CreateVolume {
                name: "vm-1".into(),
                pool: "ssd".into(),
                size_bytes: 1 << 30,
                tier: QosTier::High,
                iops_max: None,
                bytes_per_s_max: None,
            })
            .expect("volume");
        state
    }

    #[test]
    fn volume_qos_custom_limits_replace_the_tier() {
        let mut state = with_volume();
        assert_eq!(state.volume("vm-1").expect("volume").iops_limit(), 2500);
        let qos = |iops_max, bytes_per_s_max| Command::SetVolumeQos {
            name: "vm-1".into(),
            tier: QosTier::Ultra,
            iops_max,
            bytes_per_s_max,
        };
        state
            .apply(qos(Some(50_000), Some(200_000_000)))
            .expect("qos");
        let volume = state.volume("vm-1").expect("volume");
        assert_eq!(
            (volume.iops_limit(), volume.bytes_per_s_max),
            (50_000, Some(200_000_000))
        );
        state.apply(qos(None, None)).expect("back to the tier");
        assert_eq!(state.volume("vm-1").expect("volume").iops_limit(), 10_000);
        for bad in [
            qos(Some(0), None),
            qos(Some(2_000_000), None),
            qos(None, Some(999)),
        ] {
            assert!(matches!(state.apply(bad), Err(MetaError::Invalid(_))));
        }
        assert_eq!(state.volume("vm-1").expect("volume").iops_limit(), 10_000);
        let missing = Command::SetVolumeQos {
            name: "nope".into(),
            tier: QosTier::Normal,
            iops_max: None,
            bytes_per_s_max: None,
        };
        assert!(matches!(
            state.apply(missing),
            Err(MetaError::NotFound { .. })
        ));
        assert_eq!(state.invariant_violation(), None);
    }

    #[test]
    fn volume_access_is_checked_and_never_quotes_secrets() {
        let mut state = with_volume();
        let credential = |user: &str, secret: &str| ChapCredential {
            user: user.into(),
            secret: SecretKey::new(secret.into()),
        };
        let access = |chap, mutual, initiators: &[&str]| Command::SetVolumeAccess {
            name: "vm-1".into(),
            access: Some(IscsiAccess {
                chap,
                mutual,
                initiators: initiators.iter().map(|s| s.to_string()).collect(),
            }),
        };
        let good = access(
            Some(credential("alice", "alice-secret-1")),
            Some(credential("target", "target-secret-1")),
            &["iqn.2026-12.org.example:host-1"],
        );
        state.apply(good).expect("access");
        let held = state
            .volume("vm-1")
            .expect("volume")
            .iscsi
            .clone()
            .expect("access");
        assert_eq!(held.initiators, ["iqn.2026-12.org.example:host-1"]);
        let bad = [
            access(Some(credential("alice", "short")), None, &[]),
            access(Some(credential("", "long-enough-secret")), None, &[]),
            access(None, Some(credential("t", "long-enough-secret")), &[]),
            access(
                Some(credential("a", "same-secret-here")),
                Some(credential("t", "same-secret-here")),
                &[],
            ),
            access(None, None, &["host-1"]),
        ];
        for command in bad {
            let refused = state.apply(command).expect_err("refused");
            assert!(matches!(refused, MetaError::Invalid(_)), "{refused}");
            let text = refused.to_string();
            assert!(
                !text.contains("short") && !text.contains("same-secret"),
                "{text}"
            );
        }
        assert_eq!(state.volume("vm-1").expect("volume").iscsi, Some(held));
        state
            .apply(Command::SetVolumeAccess {
                name: "vm-1".into(),
                access: None,
            })
            .expect("clear");
        assert_eq!(state.volume("vm-1").expect("volume").iscsi, None);
        assert_eq!(state.invariant_violation(), None);
    }

    #[test]
    fn reservations_change_only_from_the_version_read() {
        let mut state = with_volume();
        let set = |expected, state: &[u8]| Command::SetReservation {
            name: "vm-1".into(),
            expected,
            state: state.to_vec(),
        };
        state.apply(set(0, b"one")).expect("first");
        let refused = state.apply(set(0, b"lost")).expect_err("stale");
        assert!(matches!(refused, MetaError::Stale { current: 1, .. }));
        state.apply(set(1, b"two")).expect("second");
        let held = state.volume("vm-1").expect("volume").reservation.clone();
        assert_eq!(
            held,
            Some(Reservation {
                version: 2,
                state: b"two".to_vec()
            })
        );
        let huge = set(2, &vec![0; RESERVATION_BYTES_MAX + 1]);
        assert!(matches!(state.apply(huge), Err(MetaError::Invalid(_))));
    }

    #[test]
    fn portals_are_listed_and_checked() {
        let mut state = MetaState::default();
        let add = |address: &str| Command::AddPortal {
            address: address.into(),
            portal: Portal { group_tag: 1 },
        };
        state.apply(add("127.0.0.1:3260")).expect("portal");
        state
            .apply(add("127.0.0.1:3260"))
            .expect("again: idempotent");
        for bad in ["0.0.0.0:3260", "127.0.0.1:0", "host:3260"] {
            assert!(matches!(state.apply(add(bad)), Err(MetaError::Invalid(_))));
        }
        assert_eq!(state.portals().count(), 1);
        state
            .apply(Command::RemovePortal {
                address: "127.0.0.1:3260".into(),
            })
            .expect("remove");
        assert_eq!(state.portals().count(), 0);
    }

    fn create_key(tenant: &str, id: &str, secret: &str) -> Command {
        Command::CreateAccessKey {
            tenant: tenant.into(),
            access_key_id: id.into(),
            secret_key: SecretKey::new(secret.into()),
        }
    }

    /// Goal: tenants and access keys apply, refuse bad input with the documented errors, and a
    /// tenant cannot be deleted while it holds keys. Method: one scripted sequence.
    #[test]
    fn tenants_and_access_keys() {
        let mut state = MetaState::default();
        let tenant = |name: &str| Command::CreateTenant { name: name.into() };
        assert_eq!(
            state.apply(tenant("acme")),
            Ok(Applied::Tenant(TenantId(1)))
        );
        assert!(matches!(
            state.apply(tenant("acme")),
            Err(MetaError::AlreadyExists { kind: "tenant", .. })
        ));
        assert!(matches!(
            state.apply(tenant("a/b")),
            Err(MetaError::Invalid(_))
        ));
        assert!(matches!(
            state.apply(create_key("nobody", KEY_ID, SECRET)),
            Err(MetaError::NotFound { kind: "tenant", .. })
        ));
        let short_id = "AKIA0123456789A";
        let bad_ids = [short_id, "akiaiosfodnn7example", "AKIAIOSFODNN7EXAMPL-"];
        for id in bad_ids {
            let refused = state.apply(create_key("acme", id, SECRET));
            assert!(matches!(refused, Err(MetaError::Invalid(_))), "{id}");
        }
        let long_id = "A".repeat(ACCESS_KEY_ID_BYTES_MAX + 1);
        assert!(matches!(
            state.apply(create_key("acme", &long_id, SECRET)),
            Err(MetaError::Invalid(_))
        ));
        let bad_secrets = [
            &SECRET[..31],
            "wJalrXUtnFEMI K7MDENG/bPxRfiCYEXAMPLEKEY",
            "é".repeat(20).as_str(),
        ]
        .map(String::from);
        for secret in &bad_secrets {
            let refused = state.apply(create_key("acme", KEY_ID, secret));
            let Err(MetaError::Invalid(message)) = refused else {
                panic!("secret accepted: {refused:?}");
            };
            assert!(
                !message.contains(secret.as_str()),
                "the error quotes the secret"
            );
        }
        assert_eq!(
            state.apply(create_key("acme", KEY_ID, SECRET)),
            Ok(Applied::Done)
        );
        assert!(matches!(
            state.apply(create_key("acme", KEY_ID, SECRET)),
            Err(MetaError::AlreadyExists {
                kind: "access key",
                ..
            })
        ));
        let key = state.access_key(KEY_ID).expect("key");
        assert_eq!(
            (key.tenant.as_str(), key.secret_key.expose()),
            ("acme", SECRET)
        );
        assert_eq!(
            state.apply(Command::DeleteTenant {
                name: "acme".into()
            }),
            Err(MetaError::NotEmpty {
                kind: "tenant",
                name: "acme".into(),
                holds: "access keys; delete them first"
            })
        );
        let delete_key = Command::DeleteAccessKey {
            access_key_id: KEY_ID.into(),
        };
        assert_eq!(state.apply(delete_key.clone()), Ok(Applied::Done));
        assert!(matches!(
            state.apply(delete_key),
            Err(MetaError::NotFound {
                kind: "access key",
                ..
            })
        ));
        let delete = Command::DeleteTenant {
            name: "acme".into(),
        };
        assert_eq!(state.apply(delete.clone()), Ok(Applied::Done));
        assert!(matches!(
            state.apply(delete),
            Err(MetaError::NotFound { kind: "tenant", .. })
        ));
        assert_eq!(
            state.apply(tenant("acme")),
            Ok(Applied::Tenant(TenantId(2))),
            "ids are never reused"
        );
        assert_eq!(state.invariant_violation(), None);
    }

    /// Goal: a tenant holds at most ACCESS_KEYS_PER_TENANT_MAX keys. Method: fill it up.
    #[test]
    fn access_keys_per_tenant_are_bounded() {
        let mut state = MetaState::default();
        state
            .apply(Command::CreateTenant { name: "t".into() })
            .expect("tenant");
        for n in 0..=ACCESS_KEYS_PER_TENANT_MAX {
            let id = format!("AKIA{n:016}");
            let result = state.apply(create_key("t", &id, SECRET));
            if n < ACCESS_KEYS_PER_TENANT_MAX {
                assert_eq!(result, Ok(Applied::Done));
            } else {
                assert!(matches!(result, Err(MetaError::Invalid(_))));
            }
        }
        assert_eq!(
            state.access_keys_of("t").count(),
            ACCESS_KEYS_PER_TENANT_MAX
        );
        assert_eq!(state.access_keys().count(), ACCESS_KEYS_PER_TENANT_MAX);
    }

    /// Goal: no `Debug` output of anything holding a secret shows it. Method: format the
    /// command, the key and the whole state.
    #[test]
    fn secrets_never_reach_debug_output() {
        let mut state = MetaState::default();
        state
            .apply(Command::CreateTenant {
                name: "acme".into(),
            })
            .expect("tenant");
        let command = create_key("acme", KEY_ID, SECRET);
        state.apply(command.clone()).expect("key");
        let key = state.access_key(KEY_ID).expect("key");
        for text in [
            format!("{command:?}"),
            format!("{command:#?}"),
            format!("{key:?}"),
            format!("{state:?}"),
            format!("{:?}", key.secret_key),
        ] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(!text.contains(&SECRET[..16]), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
    }

    /// Four disks on hosts 1-4 and a pool "p" of 4 PGs with 3 replicas each (host domain),
    /// then disk 5 on host 5 (no member yet).
    fn move_cluster() -> MetaState {
        let mut state = MetaState::default();
        for n in 0..4u8 {
            let applied = state.apply(Command::RegisterDisk(disk(n, 1 + u32::from(n))));
            assert_eq!(applied, Ok(Applied::Done));
        }
        let pool = Command::CreatePool {
            name: "p".into(),
            replicas: 3,
            domain: FailureDomain::Host,
            pg_count: 4,
        };
        assert_eq!(state.apply(pool), Ok(Applied::Pool(PoolId(1))));
        let applied = state.apply(Command::RegisterDisk(disk(5, 5)));
        assert_eq!(applied, Ok(Applied::Done));
        state
    }

    fn move_member(pg: u32, from: ReplicaId, to: u8) -> Command {
        Command::MovePgMember {
            pool: "p".into(),
            pg,
            from,
            to: DiskId([to; 16]),
        }
    }

    /// Goal: a move replaces the member by a new, joined replica on the target's host, keeps
    /// a data-holding member first, and bumps the epoch. Method: move a middle member, then
    /// the first one; check the map, the ids and the epoch.
    #[test]
    fn move_pg_member_replaces_in_place_or_appends_the_first() {
        let mut state = move_cluster();
        let before = state.pool("p").expect("pool").clone();
        let members = before.pg_map[0].clone();
        let used = |host: u32| members.iter().any(|m| state.disks[&m.disk].host.0 == host);
        let free = (1..=4)
            .find(|h| !used(*h))
            .expect("one host of four is free");
        let to = u8::try_from(free - 1).expect("disk n sits on host n + 1");
        let counter = state.counters.replicas.get(&free).copied().unwrap_or(0);
        let applied = state.apply(move_member(0, members[1].replica, to));
        let new = ReplicaId::new(NodeId(u64::from(free)), counter + 1);
        assert_eq!(applied, Ok(Applied::Replica(new)));
        let pool = state.pool("p").expect("pool");
        let expected = PgMember {
            disk: DiskId([to; 16]),
            replica: new,
            joined: true,
        };
        assert_eq!(
            pool.pg_map[0],
            vec![members[0], expected, members[2]],
            "a member other than the first is replaced in place"
        );
        assert_eq!(pool.epoch, before.epoch + 1);
        assert_eq!(
            &pool.pg_map[1..],
            &before.pg_map[1..],
            "other PGs unchanged"
        );

        let from = state.pool("p").expect("pool").pg_map[0][0].replica;
        let applied = state.apply(move_member(0, from, 5));
        assert!(matches!(applied, Ok(Applied::Replica(_))), "{applied:?}");
        let pool = state.pool("p").expect("pool");
        assert_eq!(pool.pg_map[0][0], expected, "the next member leads");
        assert_eq!(pool.pg_map[0][1], members[2]);
        assert_eq!(
            pool.pg_map[0][2].disk,
            DiskId([5; 16]),
            "the new member goes last"
        );
        assert_eq!(state.invariant_violation(), None);
    }

    /// Goal: a storage node leaves the map only once no PG has a member on it, and only with
    /// its exact disk list; nothing changes on a refusal. Method: host 5 holds no member (it
    /// joined after the pool); host 1 holds members.
    #[test]
    fn remove_node_only_when_drained() {
        let mut state = move_cluster();
        let before = state.clone();
        let remove = |id: u64, disks: &[u8]| Command::RemoveNode {
            id,
            disks: disks.iter().map(|d| DiskId([*d; 16])).collect(),
        };
        assert!(matches!(
            state.apply(remove(1, &[0])),
            Err(MetaError::NotEmpty { .. })
        ));
        assert!(matches!(
            state.apply(remove(5, &[])),
            Err(MetaError::Invalid(_))
        ));
        assert!(matches!(
            state.apply(remove(9, &[])),
            Err(MetaError::NotFound { .. })
        ));
        assert_eq!(state, before, "refusals change nothing");
        assert_eq!(state.apply(remove(5, &[5])), Ok(Applied::Done));
        assert!(state.disk(DiskId([5; 16])).is_none());
        assert!(matches!(
            state.apply(remove(5, &[])),
            Err(MetaError::NotFound { .. })
        ));
    }

    /// Goal: each documented refusal of a move, and a refused move changes nothing. Method:
    /// one command per refusal against the same state.
    #[test]
    fn move_pg_member_refusals() {
        let mut state = move_cluster();
        let members = state.pool("p").expect("pool").pg_map[0].clone();
        let free = (1..=4u32)
            .find(|h| !members.iter().any(|m| state.disks[&m.disk].host.0 == *h))
            .expect("free host");
        let free_disk = u8::try_from(free - 1).expect("disk");
        let from = members[1].replica;
        // Disk 6 shares a host with the PG's third member.
        let third_host = state.disks[&members[2].disk].host.0;
        let applied = state.apply(Command::RegisterDisk(disk(6, third_host)));
        assert_eq!(applied, Ok(Applied::Done));
        let before = state.clone();
        let other_pool = Command::MovePgMember {
            pool: "nope".into(),
            pg: 0,
            from,
            to: DiskId([free_disk; 16]),
        };
        assert!(matches!(
            state.apply(other_pool),
            Err(MetaError::NotFound { kind: "pool", .. })
        ));
        assert!(matches!(
            state.apply(move_member(4, from, free_disk)),
            Err(MetaError::Invalid(_))
        ));
        let stranger = ReplicaId::new(NodeId(u64::from(free)), 999);
        assert!(matches!(
            state.apply(move_member(0, stranger, free_disk)),
            Err(MetaError::NotFound {
                kind: "PG member",
                ..
            })
        ));
        assert!(matches!(
            state.apply(move_member(0, from, 42)),
            Err(MetaError::NotFound { kind: "disk", .. })
        ));
        let taken = state.disks[&members[2].disk].id.0[0];
        assert!(matches!(
            state.apply(move_member(0, from, taken)),
            Err(MetaError::Invalid(_))
        ));
        let shared = state.apply(move_member(0, from, 6));
        let Err(MetaError::Invalid(message)) = shared else {
            panic!("a shared host accepted: {shared:?}");
        };
        assert!(message.contains("failure domain"), "{message}");
        assert_eq!(state, before, "refusals changed nothing");
        state
            .apply(Command::SetDiskState {
                disk: DiskId([free_disk; 16]),
                state: DiskState::Out,
            })
            .expect("out");
        let out = state.apply(move_member(0, from, free_disk));
        let Err(MetaError::Invalid(message)) = out else {
            panic!("an out disk accepted: {out:?}");
        };
        assert!(message.contains("out of service"), "{message}");
    }

    /// Goal: rebalancing is on by default and the switch applies. Method: flip it.
    #[test]
    fn rebalance_switch_defaults_on() {
        let mut state = MetaState::default();
        assert!(state.rebalance_enabled());
        let off = Command::SetRebalance { enabled: false };
        assert_eq!(state.apply(off), Ok(Applied::Done));
        assert!(!state.rebalance_enabled());
        let on = Command::SetRebalance { enabled: true };
        assert_eq!(state.apply(on), Ok(Applied::Done));
        assert!(state.rebalance_enabled());
    }

    /// Member selectors: a move's `from` below this (node 0, never a real replica) names the
    /// PG's member at that index, modulo the PG's size (see [`resolve`]).
    const SELECTORS: u64 = 3;

    /// Owner selectors: an owner id above `u64::MAX - OWNER_SELECTORS` (never handed out)
    /// names the pending write (or, in `ReclaimDone`, the garbage entry) at that index, modulo
    /// their count (see [`resolve`]).
    const OWNER_SELECTORS: u64 = 4;

    /// A completion listing only `(0, ALL_PARTS)` lists every uploaded part of the upload,
    /// in order, with its ETag (see [`resolve`]).
    const ALL_PARTS: &str = "*";

    /// The owner `owner` selects among `owners`, or `owner` itself.
    fn select_owner(owner: OwnerId, owners: &[OwnerId]) -> OwnerId {
        let index = u64::MAX - owner.0;
        if index < OWNER_SELECTORS && !owners.is_empty() {
            owners[(index as usize) % owners.len()]
        } else {
            owner
        }
    }

    /// Replaces owner selectors in object commands by the owners they select in `state`.
    fn resolve_owners(state: &MetaState, command: Command) -> Command {
        let pending: Vec<OwnerId> = state.pending.keys().copied().collect();
        let garbage: Vec<OwnerId> = state.garbage.keys().copied().collect();
        let pick = |owner| select_owner(owner, &pending);
        match command {
            Command::PutObject {
                bucket,
                key,
                mut record,
                now_ms,
            } => {
                if let crate::objects::ObjectData::Segments(segments) = &mut record.data {
                    for segment in segments {
                        segment.owner = pick(segment.owner);
                    }
                }
                Command::PutObject {
                    bucket,
                    key,
                    record,
                    now_ms,
                }
            }
            Command::PutPart {
                upload_id,
                part_number,
                mut segment,
                etag,
                now_ms,
            } => {
                segment.owner = pick(segment.owner);
                Command::PutPart {
                    upload_id,
                    part_number,
                    segment,
                    etag,
                    now_ms,
                }
            }
            Command::AbandonWrites { owners, length } => Command::AbandonWrites {
                owners: owners.into_iter().map(pick).collect(),
                length,
            },
            Command::DeleteObject {
                bucket,
                key,
                version_id,
                now_ms,
                request,
                if_newest: _,
            } => {
                let versions = state.versions(&bucket, &key);
                let ids: Vec<OwnerId> = versions
                    .map(|v| v.all().iter().map(|v| OwnerId(v.id().0)).collect())
                    .unwrap_or_default();
                let version_id =
                    version_id.map(|id| VersionId(select_owner(OwnerId(id.0), &ids).0));
                Command::DeleteObject {
                    bucket,
                    key,
                    version_id,
                    now_ms,
                    request,
                    if_newest: None,
                }
            }
            Command::ReclaimDone { owners } => Command::ReclaimDone {
                owners: owners
                    .into_iter()
                    .map(|o| select_owner(o, &garbage))
                    .collect(),
            },
            Command::CompleteUpload {
                upload_id,
                parts,
                etag,
                now_ms,
                request,
            } => {
                let every = parts == [(0, ALL_PARTS.to_string())];
                let uploaded = state.uploads.get(&upload_id).filter(|_| every);
                let parts = match uploaded {
                    Some(upload) => (upload.parts.iter())
                        .map(|(number, part)| (*number, part.etag.clone()))
                        .collect(),
                    None => parts,
                };
                Command::CompleteUpload {
                    upload_id,
                    parts,
                    etag,
                    now_ms,
                    request,
                }
            }
            command => command,
        }
    }

    /// Replaces a move's member selector by the member it selects in `state`, if the PG
    /// exists, owner selectors by pending or garbage owners and a completion's part selector
    /// by the uploaded parts; every other command is
    /// returned as it is. A test applying `command()`s resolves each against its state first,
    /// so that random moves name real members and random writes commit real pending owners.
    pub(crate) fn resolve(state: &MetaState, command: Command) -> Command {
        let Command::MovePgMember { pool, pg, from, to } = command else {
            return resolve_owners(state, command);
        };
        let members = state
            .pools
            .get(&pool)
            .and_then(|p| p.pg_map.get(pg as usize));
        let from = match members {
            Some(members) if from.0 < SELECTORS && !members.is_empty() => {
                members[(from.0 as usize) % members.len()].replica
            }
            _ => from,
        };
        Command::MovePgMember { pool, pg, from, to }
    }

    /// Disks 0-6 on hosts 1-5, a pool "a" of 4 PGs with 3 replicas, a tenant "a", its bucket
    /// "bk1" in pool "a" and an upload "u1" there: a cluster where moves and object commands
    /// can apply, for random sequences to start from.
    pub(crate) fn setup() -> Vec<Command> {
        let mut commands: Vec<Command> = (0..7u8)
            .map(|n| Command::RegisterDisk(disk(n, 1 + u32::from(n % 5))))
            .collect();
        commands.push(Command::CreatePool {
            name: "a".into(),
            replicas: 3,
            domain: FailureDomain::Host,
            pg_count: 4,
        });
        commands.push(Command::CreateTenant { name: "a".into() });
        commands.push(Command::CreateBucket {
            name: "bk1".into(),
            tenant: "a".into(),
            pool: "a".into(),
            now_ms: 1,
        });
        commands.push(Command::CreateUpload {
            bucket: "bk1".into(),
            key: "k1".into(),
            upload_id: "u1".into(),
            content_type: None,
            metadata: BTreeMap::new(),
            now_ms: 2,
            acl: None,
        });
        commands
    }

    /// Versions to delete: none (the key's newest), the null version, a raw id (rarely
    /// real), or a selector of the key's versions that `resolve` replaces.
    fn version_selector() -> impl Strategy<Value = Option<VersionId>> {
        prop_oneof![
            3 => Just(None),
            1 => Just(Some(VersionId::NULL)),
            1 => (1u64..6).prop_map(|id| Some(VersionId(id))),
            3 => (0..OWNER_SELECTORS).prop_map(|i| Some(VersionId(u64::MAX - i))),
        ]
    }

    /// Owners: mostly selectors of pending writes, sometimes raw ids (rarely real).
    fn owner() -> impl Strategy<Value = OwnerId> + Clone {
        prop_oneof![
            3 => (0..OWNER_SELECTORS).prop_map(|i| OwnerId(u64::MAX - i)),
            1 => (1u64..12).prop_map(OwnerId),
        ]
    }

    /// Segment lengths around the part limits.
    fn length() -> impl Strategy<Value = u64> + Clone {
        prop_oneof![
            1 => Just(0),
            2 => Just(100),
            3 => Just(crate::objects::PART_BYTES_MIN),
            2 => Just(crate::objects::PART_BYTES_MIN + 1),
            1 => Just(crate::objects::SEGMENT_BYTES_MAX + 1),
        ]
    }

    /// Object records: inline or in segments, sizes right or (rarely) wrong.
    fn record() -> impl Strategy<Value = crate::objects::ObjectRecord> {
        use crate::objects::{ObjectData, ObjectRecord, Segment};
        let segments = proptest::collection::vec(
            (owner(), length()).prop_map(|(owner, length)| Segment { owner, length }),
            0..3,
        );
        let data = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..4)
                .prop_map(|data| ObjectData::Inline { data }),
            segments.prop_map(ObjectData::Segments),
        ];
        (data, any::<bool>(), 0usize..3).prop_map(|(data, right, metadata)| {
            let size = match &data {
                ObjectData::Inline { data } => data.len() as u64,
                ObjectData::Segments(s) => s.iter().map(|s| s.length).sum(),
            };
            ObjectRecord {
                size: if right { size } else { size + 1 },
                etag: "\"e\"".into(),
                modified_ms: 0,
                content_type: (metadata == 1).then(|| "text/plain".to_string()),
                metadata: (0..metadata)
                    .map(|i| (format!("m{i}"), "v".repeat(i * 2100)))
                    .collect(),
                data,
                acl: (metadata == 2).then(|| "{\"grants\":[]}".to_string()),
                request: None,
            }
        })
    }

    /// Commands of the S3 object index over small name sets, so that they collide.
    fn object_command() -> impl Strategy<Value = Command> {
        let bucket = prop_oneof![
            4 => Just("bk1".to_string()),
            2 => Just("bk2".to_string()),
            1 => Just("b".to_string()),
            1 => Just("10.0.0.1".to_string()),
        ];
        let key = prop_oneof![
            Just("k1".to_string()),
            Just("k2".to_string()),
            Just("d/k3".to_string()),
            Just(String::new()),
        ];
        let upload_id = prop_oneof![
            4 => Just("u1".to_string()),
            2 => Just("u2".to_string()),
            1 => Just("bad id".to_string()),
        ];
        let tenant = prop_oneof![Just("a".to_string()), Just("b".to_string())];
        let pool = prop_oneof![3 => Just("a".to_string()), 1 => Just("b".to_string())];
        let etag = prop_oneof![3 => Just("e1".to_string()), 1 => Just("e2".to_string())];
        // Mostly ascending part lists with the usual ETag, so completions apply too.
        let parts = prop_oneof![
            3 => Just(vec![(0, ALL_PARTS.to_string())]),
            2 => proptest::sample::subsequence(vec![1u32, 2, 3], 0..=3)
                .prop_map(|numbers| numbers.into_iter().map(|n| (n, "e1".to_string())).collect()),
            1 => proptest::collection::vec((0u32..4, etag.clone()), 0..4),
        ];
        let owners = proptest::collection::vec(owner(), 0..3);
        prop_oneof![
            1 => (bucket.clone(), tenant, pool, 0u64..9).prop_map(|(name, tenant, pool, now_ms)| {
                Command::CreateBucket {
                    name,
                    tenant,
                    pool,
                    now_ms,
                }
            }),
            1 => bucket.clone().prop_map(|name| Command::DeleteBucket { name }),
            3 => (bucket.clone(), 0u64..9)
                .prop_map(|(bucket, now_ms)| Command::BeginWrite { bucket, now_ms }),
            3 => (bucket.clone(), key.clone(), record(), 0u64..9).prop_map(
                |(bucket, key, record, now_ms)| Command::PutObject {
                    bucket,
                    key,
                    record,
                    now_ms,
                }
            ),
            2 => (bucket.clone(), key.clone(), version_selector(), 0u64..9).prop_map(
                |(bucket, key, version_id, now_ms)| Command::DeleteObject {
                    bucket,
                    key,
                    version_id,
                    now_ms, request: None, if_newest: None,
                }
            ),
            1 => (bucket.clone(), any::<bool>())
                .prop_map(|(bucket, enabled)| Command::SetBucketVersioning { bucket, enabled }),
            1 => (bucket.clone(), key.clone(), proptest::option::of(Just("{}".to_string())))
                .prop_map(|(bucket, key, acl)| Command::SetObjectAcl { bucket, key, version_id: None, acl }),
            1 => (bucket.clone(), prop_oneof![Just(DocumentKind::Policy), Just(DocumentKind::Cors)],
                  proptest::option::of(prop_oneof![Just(String::new()), Just("{}".to_string())]))
                .prop_map(|(bucket, kind, document)| Command::SetBucketDocument { bucket, kind, document }),
            1 => (bucket.clone(), any::<bool>(), proptest::option::of(0u64..3),
                  proptest::option::of(prop_oneof![Just(0u64), Just(5), Just(1 << 30)]))
                .prop_map(|(name, bucket, objects_max, bytes_max)| Command::SetQuota {
                    scope: if bucket {
                        crate::objects::QuotaScope::Bucket(name)
                    } else {
                        // Tenants are named "a" and "b"; buckets never are.
                        crate::objects::QuotaScope::Tenant(
                            if name == "bk1" { "a" } else { "b" }.to_string(),
                        )
                    },
                    bytes_max,
                    objects_max,
                }),
            1 => (bucket, key, upload_id.clone(), any::<bool>()).prop_map(
                |(bucket, key, upload_id, typed)| Command::CreateUpload {
                    bucket,
                    key,
                    upload_id,
                    content_type: typed.then(|| "text/plain".to_string()),
                    metadata: BTreeMap::new(),
                    now_ms: 3, acl: None,
                }
            ),
            3 => (upload_id.clone(), 0u32..4, owner(), length(), etag.clone()).prop_map(
                |(upload_id, part_number, owner, length, etag)| Command::PutPart {
                    upload_id,
                    part_number,
                    segment: Segment { owner, length },
                    etag,
                    now_ms: 4,
                }
            ),
            2 => (upload_id.clone(), parts, etag).prop_map(|(upload_id, parts, etag)| {
                Command::CompleteUpload {
                    upload_id,
                    parts,
                    etag,
                    now_ms: 5, request: None,
                }
            }),
            1 => upload_id.prop_map(|upload_id| Command::AbortUpload { upload_id }),
            1 => (owners.clone(), length())
                .prop_map(|(owners, length)| Command::AbandonWrites { owners, length }),
            1 => owners.prop_map(|owners| Command::ReclaimDone { owners }),
        ]
    }

    /// Any command of [`base_command`] or [`object_command`].
    pub(crate) fn command() -> impl Strategy<Value = Command> {
        prop_oneof![3 => base_command(), 2 => object_command()]
    }

    /// Commands over small name sets, so that they collide: valid and invalid names, ids and
    /// secrets, so both applied and refused commands are drawn.
    fn base_command() -> impl Strategy<Value = Command> {
        let name = prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("c".to_string()),
            Just("".to_string())
        ];
        let tier = prop_oneof![
            Just(QosTier::Normal),
            Just(QosTier::High),
            Just(QosTier::Ultra)
        ];
        let key_id = prop_oneof![
            Just(KEY_ID.to_string()),
            Just("AKIA0000000000000001".to_string()),
            Just("AKIA0000000000000002".to_string()),
            Just("akia-bad".to_string()),
        ];
        let secret = prop_oneof![
            Just(SecretKey::new(SECRET.to_string())),
            Just(SecretKey::new("too short".to_string())),
        ];
        // Mostly the pool `setup` creates.
        let moved_pool = prop_oneof![3 => Just("a".to_string()), 1 => name.clone()];
        let member = prop_oneof![
            (1u64..5, 1u64..12).prop_map(|(node, number)| ReplicaId::new(NodeId(node), number)),
            (0..SELECTORS).prop_map(ReplicaId),
        ];
        prop_oneof![
            (0u8..8, 1u32..5).prop_map(|(n, host)| Command::RegisterDisk(disk(n, host))),
            (0u64..5, 1u16..4).prop_map(|(id, port)| Command::RegisterNode {
                id,
                node: NodeRecord {
                    raft_addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    data_addr: std::net::SocketAddr::from(([127, 0, 0, 1], port + 1)),
                },
            }),
            (0u8..8, any::<bool>()).prop_map(|(n, out)| Command::SetDiskState {
                disk: DiskId([n; 16]),
                state: if out { DiskState::Out } else { DiskState::In },
            }),
            (name.clone(), 1u32..5, 0u32..40).prop_map(|(name, replicas, pg_count)| {
                Command::CreatePool {
                    name,
                    replicas,
                    domain: FailureDomain::Host,
                    pg_count,
                }
            }),
            (name.clone(), name.clone(), 0u64..64, tier.clone()).prop_map(
                |(name, pool, blocks, tier)| {
                    Command::CreateVolume {
                        name,
                        pool,
                        size_bytes: blocks * 4096,
                        tier,
                        iops_max: None,
                        bytes_per_s_max: None,
                    }
                }
            ),
            (
                name.clone(),
                tier,
                proptest::option::of(0u32..3),
                any::<bool>()
            )
                .prop_map(|(name, tier, iops, bandwidth)| Command::SetVolumeQos {
                    name,
                    tier,
                    iops_max: iops.map(|i| i * 1000),
                    bytes_per_s_max: bandwidth.then_some(50_000_000),
                }),
            (name.clone(), any::<bool>(), 0usize..2).prop_map(|(name, chap, initiators)| {
                let credential = ChapCredential {
                    user: "u".into(),
                    secret: SecretKey::new(if chap { "twelve-chars" } else { "short" }.into()),
                };
                Command::SetVolumeAccess {
                    name,
                    access: (initiators > 0 || chap).then(|| IscsiAccess {
                        chap: Some(credential),
                        mutual: None,
                        initiators: vec!["iqn.2026-12.org.example:h".into(); initiators],
                    }),
                }
            }),
            (name.clone(), 0u64..3, any::<u8>()).prop_map(|(name, expected, byte)| {
                Command::SetReservation {
                    name,
                    expected,
                    state: vec![byte; 3],
                }
            }),
            (any::<bool>(), 1u16..3).prop_map(|(add, port)| {
                let address = format!("127.0.0.1:{port}");
                if add {
                    Command::AddPortal {
                        address,
                        portal: Portal { group_tag: 1 },
                    }
                } else {
                    Command::RemovePortal { address }
                }
            }),
            (name.clone(), 0u64..64).prop_map(|(name, blocks)| Command::ResizeVolume {
                name,
                size_bytes: blocks * 4096
            }),
            name.clone().prop_map(|name| Command::DeleteVolume { name }),
            name.clone().prop_map(|name| Command::CreateTenant { name }),
            name.clone().prop_map(|name| Command::DeleteTenant { name }),
            (name.clone(), key_id.clone(), secret).prop_map(
                |(tenant, access_key_id, secret_key)| {
                    Command::CreateAccessKey {
                        tenant,
                        access_key_id,
                        secret_key,
                    }
                }
            ),
            key_id.prop_map(|access_key_id| Command::DeleteAccessKey { access_key_id }),
            // Either a replica id (rarely a member) or a member selector that `resolve`
            // turns into a member of the PG, so that moves apply too.
            (moved_pool, 0u32..4, member, 0u8..8).prop_map(|(pool, pg, from, to)| {
                Command::MovePgMember {
                    pool,
                    pg,
                    from,
                    to: DiskId([to; 16]),
                }
            }),
            any::<bool>().prop_map(|enabled| Command::SetRebalance { enabled }),
        ]
    }

    proptest! {
        /// Goal: replicas applying the same log agree, refused commands change nothing, and the
        /// invariants hold. Method: random command sequences applied to two states (one also
        /// cloned before each command to compare on refusal).
        #[test]
        fn apply_is_deterministic_atomic_and_keeps_invariants(
            set_up in any::<bool>(),
            commands in proptest::collection::vec(command(), 1..60),
        ) {
            let (mut a, mut b) = (MetaState::default(), MetaState::default());
            let prefix = if set_up { setup() } else { Vec::new() };
            for command in prefix.into_iter().chain(commands) {
                let command = resolve(&a, command);
                let before = a.clone();
                let result_a = a.apply(command.clone());
                let result_b = b.apply(command);
                prop_assert_eq!(&result_a, &result_b);
                prop_assert_eq!(&a, &b);
                if result_a.is_err() {
                    prop_assert_eq!(&a, &before, "a refused command changed the state");
                }
                prop_assert_eq!(a.invariant_violation(), None);
                for (_, volume) in a.volumes() {
                    prop_assert!(a.pool(&volume.pool).is_some(), "a volume's pool exists");
                    prop_assert!(volume.size_bytes > 0 && volume.size_bytes % 4096 == 0);
                }
                for (_, key) in a.access_keys() {
                    prop_assert!(a.tenant(&key.tenant).is_some(), "a key's tenant exists");
                }
                for pool in a.pools.values() {
                    prop_assert_eq!(pool.pg_map.len() as u32, pool.policy.pg_count);
                    for members in &pool.pg_map {
                        let hosts: std::collections::BTreeSet<_> =
                            members.iter().map(|m| a.disks[&m.disk].host).collect();
                        prop_assert_eq!(hosts.len(), members.len(), "distinct hosts per PG");
                        let replicas: std::collections::BTreeSet<_> =
                            members.iter().map(|m| m.replica).collect();
                        prop_assert_eq!(replicas.len(), members.len(), "distinct replicas");
                    }
                }
                if let Ok(Applied::Owner(owner)) = result_a {
                    prop_assert!(a.pending.contains_key(&owner), "a new owner is pending");
                    prop_assert!(!before.pending.contains_key(&owner), "the owner is new");
                }
                if let Ok(Applied::Replica(new)) = result_a {
                    let placed = a.pools.values().flat_map(|p| p.pg_map.iter().flatten());
                    let placed: Vec<_> = placed.filter(|m| m.replica == new).collect();
                    prop_assert_eq!(placed.len(), 1, "a new replica id is used once");
                    prop_assert!(placed[0].joined, "a moved-in member is marked joined");
                    let moved = before.pools.values().flat_map(|p| p.pg_map.iter().flatten());
                    prop_assert!(moved.clone().all(|m| m.replica != new), "the id is new");
                }
            }
        }
    }
}
