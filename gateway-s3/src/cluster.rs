//! What the gateway needs from the cluster: the metadata service's buckets, object index,
//! multipart uploads and garbage list, and the data plane's chunks. The gateway holds no state
//! of its own; `cairn` implements [`Cluster`] over the admin API and the PG data path.

use std::{collections::BTreeMap, future::Future};

/// Why a cluster call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterError {
    /// The bucket, object or upload does not exist.
    NotFound(String),
    /// The name is taken; `tenant` owns it when known.
    Exists {
        /// What the metadata service said.
        message: String,
        /// The tenant holding the name.
        tenant: Option<String>,
    },
    /// The bucket still holds objects or uploads.
    NotEmpty(String),
    /// The metadata service refused the request with an S3 error code of its own
    /// (`InvalidPart`, `InvalidPartOrder`, `EntityTooSmall`, `QuotaExceeded`...).
    Refused {
        /// The S3 error code.
        code: String,
        /// Why.
        message: String,
    },
    /// The request was malformed (a name out of the rules, a limit passed).
    Invalid(String),
    /// No metadata leader or storage node answered in time: retry later.
    Unavailable(String),
    /// Anything else.
    Failed(String),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterError::NotFound(m)
            | ClusterError::NotEmpty(m)
            | ClusterError::Invalid(m)
            | ClusterError::Unavailable(m)
            | ClusterError::Failed(m) => f.write_str(m),
            ClusterError::Exists { message, .. } | ClusterError::Refused { message, .. } => {
                f.write_str(message)
            }
        }
    }
}

/// A result of a cluster call.
pub type ClusterResult<T> = Result<T, ClusterError>;

/// An access key's owner and secret. The secret is wrapped so it cannot be logged.
#[derive(Clone)]
pub struct KeyInfo {
    /// The tenant the key acts for.
    pub tenant: String,
    /// The secret (never logged: `Debug` redacts it).
    pub secret: s3s::auth::SecretKey,
}

impl std::fmt::Debug for KeyInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyInfo")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// A bucket as the metadata service describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketInfo {
    /// Its name.
    pub name: String,
    /// The tenant owning it.
    pub tenant: String,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Its versioning state.
    pub versioning: Versioning,
    /// Its documents by kind ("policy", "cors", "lifecycle"), as stored.
    pub documents: BTreeMap<String, String>,
}

/// A bucket's versioning state, as S3 names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Versioning {
    /// Never enabled.
    #[default]
    Unversioned,
    /// Every write adds a version.
    Enabled,
    /// Writes replace the null version; older versions stay.
    Suspended,
}

/// One version of a key as a GET finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectVersion {
    /// Its id (S3's opaque text, `null` for the null version); `None` in an unversioned
    /// bucket, where S3 reports no version id.
    pub version_id: Option<String>,
    /// The object, or `None` for a delete marker.
    pub record: Option<ObjectRecord>,
}

/// What a delete did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// The version removed or the delete marker made; `None` in an unversioned bucket.
    pub version_id: Option<String>,
    /// Whether that version is a delete marker (made, or removed by id).
    pub delete_marker: bool,
}

/// What a version listing asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionQuery {
    /// Only keys starting with this.
    pub prefix: String,
    /// Roll keys up to the first delimiter after the prefix.
    pub delimiter: Option<String>,
    /// Only keys after this one, or with `version_id_marker` this key's versions after it.
    pub key_marker: Option<String>,
    /// The last version of the previous page.
    pub version_id_marker: Option<String>,
    /// At most this many versions and prefixes.
    pub max: u32,
}

/// One version or delete marker in a version listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionEntry {
    /// The key.
    pub key: String,
    /// The version id (`null` for the null version).
    pub version_id: String,
    /// Whether it is the key's newest version.
    pub is_latest: bool,
    /// Whether it is a delete marker.
    pub delete_marker: bool,
    /// When it was written (ms since the epoch).
    pub modified_ms: u64,
    /// The object's size (0 for a marker).
    pub size: u64,
    /// Its entity tag (empty for a marker).
    pub etag: String,
}

/// A page of a version listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionListing {
    /// Versions by key, newest first within a key.
    pub versions: Vec<VersionEntry>,
    /// Common prefixes, in byte order.
    pub prefixes: Vec<String>,
    /// Whether more follow.
    pub truncated: bool,
    /// The next page's key marker.
    pub next_key_marker: Option<String>,
    /// The next page's version id marker.
    pub next_version_id_marker: Option<String>,
}

/// Bytes stored as chunks under one owner id, from offset 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The owner id the chunks are keyed by.
    pub owner: u64,
    /// How many bytes.
    pub length: u64,
}

/// Where an object's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectData {
    /// In the index record itself (small objects).
    Inline(Vec<u8>),
    /// In chunks: the segments in order (one for a plain PUT, one per part after a multipart
    /// upload).
    Segments(Vec<Segment>),
}

/// An object's index record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRecord {
    /// Its length in bytes.
    pub size: u64,
    /// Its entity tag, without quotes.
    pub etag: String,
    /// When it was written, in milliseconds since the Unix epoch (set by the metadata service).
    pub modified_ms: u64,
    /// Its Content-Type.
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-*` without the prefix).
    pub metadata: BTreeMap<String, String>,
    /// Its bytes.
    pub data: ObjectData,
    /// Its access control list, as [`crate::acl::Acl::to_text`] encodes it (`None`: only the
    /// owner's full control).
    pub acl: Option<String>,
}

/// One key in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// The key.
    pub key: String,
    /// The object's size.
    pub size: u64,
    /// Its entity tag, without quotes.
    pub etag: String,
    /// When it was written (ms since the epoch).
    pub modified_ms: u64,
}

/// A page of a bucket listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Keys, in byte order.
    pub objects: Vec<ListEntry>,
    /// Common prefixes (with a delimiter), in byte order.
    pub prefixes: Vec<String>,
    /// Whether more keys follow.
    pub truncated: bool,
    /// The last key or prefix of this page, to continue after.
    pub next: Option<String>,
}

/// What to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only keys starting with this.
    pub prefix: String,
    /// Roll keys up to the first delimiter after the prefix.
    pub delimiter: Option<String>,
    /// Only keys (and prefixes) after this one.
    pub after: Option<String>,
    /// At most this many keys and prefixes.
    pub max: u32,
}

/// An open multipart upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadInfo {
    /// Its id.
    pub upload_id: String,
    /// Its bucket.
    pub bucket: String,
    /// The key it will complete to.
    pub key: String,
    /// When it was created (ms since the epoch).
    pub created_ms: u64,
    /// The Content-Type the object will get.
    pub content_type: Option<String>,
    /// The user metadata the object will get.
    pub metadata: BTreeMap<String, String>,
    /// Parts uploaded so far, by number.
    pub parts: Vec<PartInfo>,
}

/// One uploaded part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartInfo {
    /// Its number (1 to 10,000).
    pub part_number: u32,
    /// Its entity tag (MD5, hex, no quotes).
    pub etag: String,
    /// Its size.
    pub size: u64,
    /// When it was uploaded (ms since the epoch).
    pub modified_ms: u64,
}

/// A page of open uploads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadListing {
    /// Uploads ordered by key, then id.
    pub uploads: Vec<UploadInfo>,
    /// Whether more follow.
    pub truncated: bool,
}

/// Chunks to reclaim: an owner whose bytes no object refers to any more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Garbage {
    /// The owner id.
    pub owner: u64,
    /// The pool holding its chunks.
    pub pool: String,
    /// That pool's id.
    pub pool_id: u32,
    /// That pool's PG count.
    pub pg_count: u32,
    /// How many bytes from offset 0 may hold data.
    pub length: u64,
}

/// A write in progress: an owner id handed to a gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingWrite {
    /// The owner id.
    pub owner: u64,
    /// When it was handed out (ms since the epoch).
    pub started_ms: u64,
}

/// The cluster as the S3 gateway uses it. Every method may be called from many tasks at once.
pub trait Cluster: Clone + Send + Sync + 'static {
    /// The access key `id`, or `None` if no such key exists.
    fn access_key(&self, id: String)
    -> impl Future<Output = ClusterResult<Option<KeyInfo>>> + Send;

    /// Creates bucket `name` for `tenant`.
    fn create_bucket(
        &self,
        tenant: String,
        name: String,
    ) -> impl Future<Output = ClusterResult<()>> + Send;
    /// The bucket `name`, or `None`.
    fn bucket(
        &self,
        name: String,
    ) -> impl Future<Output = ClusterResult<Option<BucketInfo>>> + Send;
    /// The buckets of `tenant`, by name; every bucket when `tenant` is empty (the lifecycle
    /// worker's walk).
    fn buckets(
        &self,
        tenant: String,
    ) -> impl Future<Output = ClusterResult<Vec<BucketInfo>>> + Send;
    /// Sets (or, with `None`, removes) the bucket's document `kind`: "policy", "cors" or
    /// "lifecycle".
    fn set_bucket_document(
        &self,
        bucket: String,
        kind: &'static str,
        document: Option<String>,
    ) -> impl Future<Output = ClusterResult<()>> + Send;
    /// Deletes an empty bucket (no version or delete marker left).
    fn delete_bucket(&self, name: String) -> impl Future<Output = ClusterResult<()>> + Send;
    /// Enables versioning on `bucket`, or suspends it.
    fn set_versioning(
        &self,
        bucket: String,
        enabled: bool,
    ) -> impl Future<Output = ClusterResult<()>> + Send;

    /// The version `version_id` of `key` in `bucket`, or its newest without one (either may
    /// be a delete marker); `None` if there is no such key or version. A malformed version id
    /// Replaces the access control list of object `key` (the newest version, or
    /// `version_id`), leaving its bytes alone.
    fn set_object_acl(
        &self,
        bucket: String,
        key: String,
        version_id: Option<String>,
        acl: Option<String>,
    ) -> impl Future<Output = ClusterResult<()>> + Send;
    /// is [`ClusterError::Invalid`].
    fn object(
        &self,
        bucket: String,
        key: String,
        version_id: Option<String>,
    ) -> impl Future<Output = ClusterResult<Option<ObjectVersion>>> + Send;
    /// A page of the bucket's versions and delete markers.
    fn list_versions(
        &self,
        bucket: String,
        query: VersionQuery,
    ) -> impl Future<Output = ClusterResult<VersionListing>> + Send;
    /// A page of the bucket's keys.
    fn list(
        &self,
        bucket: String,
        query: ListQuery,
    ) -> impl Future<Output = ClusterResult<Listing>> + Send;
    /// Makes `record` the newest version of `key` (atomically replacing the null version
    /// unless versioning is enabled); answers the record as stored (with the modification
    /// time the metadata service set) and its version id (`None` in an unversioned bucket).
    fn put_object(
        &self,
        bucket: String,
        key: String,
        record: ObjectRecord,
    ) -> impl Future<Output = ClusterResult<(ObjectRecord, Option<String>)>> + Send;
    /// Deletes the object `key` as S3 does (nothing if there is none): with a version id,
    /// that version; without, the object, or a delete marker in a versioned bucket.
    fn delete_object(
        &self,
        bucket: String,
        key: String,
        version_id: Option<String>,
    ) -> impl Future<Output = ClusterResult<Deleted>> + Send;
    /// Deletes the object `key` as [`Cluster::delete_object`] without a version id does, but
    /// only while its newest version is `newest`; `None` if it no longer is (another writer
    /// or lifecycle worker came first) and nothing changed.
    fn expire_object(
        &self,
        bucket: String,
        key: String,
        newest: String,
    ) -> impl Future<Output = ClusterResult<Option<Deleted>>> + Send;

    /// A fresh owner id to write an object's or part's chunks under, recorded as pending.
    fn begin_write(&self, bucket: String) -> impl Future<Output = ClusterResult<u64>> + Send;
    /// Gives up pending writes: their chunks (up to `length` bytes each) become garbage.
    fn abandon(
        &self,
        owners: Vec<u64>,
        length: u64,
    ) -> impl Future<Output = ClusterResult<()>> + Send;
    /// Writes `data` at `offset` of `owner`'s chunks in `bucket`'s pool, durably (acknowledged
    /// by a majority of each PG's replicas).
    fn write(
        &self,
        bucket: String,
        owner: u64,
        offset: u64,
        data: Vec<u8>,
    ) -> impl Future<Output = ClusterResult<()>> + Send;
    /// Reads `length` bytes at `offset` of `owner`'s chunks in `bucket`'s pool.
    fn read(
        &self,
        bucket: String,
        owner: u64,
        offset: u64,
        length: u64,
    ) -> impl Future<Output = ClusterResult<Vec<u8>>> + Send;

    /// Opens a multipart upload; answers its id.
    fn create_upload(
        &self,
        bucket: String,
        key: String,
        content_type: Option<String>,
        metadata: BTreeMap<String, String>,
        acl: Option<String>,
    ) -> impl Future<Output = ClusterResult<String>> + Send;
    /// The upload `id`, or `None`.
    fn upload(&self, id: String) -> impl Future<Output = ClusterResult<Option<UploadInfo>>> + Send;
    /// Open uploads of `bucket` whose key starts with `prefix`, after (`key`, `id`).
    fn uploads(
        &self,
        bucket: String,
        prefix: String,
        after: Option<(String, String)>,
        max: u32,
    ) -> impl Future<Output = ClusterResult<UploadListing>> + Send;
    /// Records part `number` of upload `id` as the pending write `segment`.
    fn put_part(
        &self,
        id: String,
        number: u32,
        segment: Segment,
        etag: String,
    ) -> impl Future<Output = ClusterResult<()>> + Send;
    /// Completes upload `id` of `bucket`/`key` from `parts` (number, etag), giving the object
    /// `etag`; answers the record and its version id (`None` in an unversioned bucket).
    fn complete_upload(
        &self,
        id: String,
        bucket: String,
        key: String,
        parts: Vec<(u32, String)>,
        etag: String,
    ) -> impl Future<Output = ClusterResult<(ObjectRecord, Option<String>)>> + Send;
    /// Aborts upload `id`: its parts become garbage.
    fn abort_upload(&self, id: String) -> impl Future<Output = ClusterResult<()>> + Send;

    /// Garbage to reclaim, at most `max` entries.
    fn garbage(&self, max: u32) -> impl Future<Output = ClusterResult<Vec<Garbage>>> + Send;
    /// Deallocates a garbage entry's chunks.
    fn discard(&self, garbage: Garbage) -> impl Future<Output = ClusterResult<()>> + Send;
    /// Forgets reclaimed garbage.
    fn reclaimed(&self, owners: Vec<u64>) -> impl Future<Output = ClusterResult<()>> + Send;
    /// Pending writes started before `before_ms`.
    fn pending(
        &self,
        before_ms: u64,
    ) -> impl Future<Output = ClusterResult<Vec<PendingWrite>>> + Send;
}
