//! The S3 operations over a [`Cluster`]: buckets, objects, listings, copies, batch deletes
//! and multipart uploads. Every operation first maps the signing key to its tenant and checks
//! that the tenant owns the bucket.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use s3s::{
    S3, S3Request, S3Response, S3Result,
    dto::{self, ETag, ETagCondition, Timestamp},
    s3_error,
};

use crate::{
    access::{Authorizer, Caller, Question},
    acl::{Acl, GrantHeaders},
    auth::{Keys, Owners, tenant},
    body::{self, Expected, cluster_error, hex},
    cluster::{
        Cluster, ClusterError, ListQuery, ObjectData, ObjectRecord, ObjectVersion, Segment,
        VersionQuery, Versioning,
    },
    cors::Cors,
    lifecycle::{Configuration, RuleError},
};

/// The `x-amz-grant-*` headers of an S3 input: all but `x-amz-grant-write` for objects (S3
/// gives objects no WRITE grant), all of them `with_write` for buckets.
macro_rules! grant_headers {
    ($input:expr) => {
        GrantHeaders {
            read: $input.grant_read.as_deref(),
            read_acp: $input.grant_read_acp.as_deref(),
            write_acp: $input.grant_write_acp.as_deref(),
            full_control: $input.grant_full_control.as_deref(),
            ..GrantHeaders::default()
        }
    };
    ($input:expr, with_write) => {
        GrantHeaders {
            write: $input.grant_write.as_deref(),
            ..grant_headers!($input)
        }
    };
}

/// Largest single PUT (S3's limit; larger objects need a multipart upload).
pub const PUT_BYTES_MAX: u64 = 5 << 30;
/// Largest part of a multipart upload.
pub const PART_BYTES_MAX: u64 = 5 << 30;
/// Highest part number.
pub const PART_NUMBER_MAX: i32 = 10_000;
/// Most keys in one listing page (S3's limit).
pub const LIST_KEYS_MAX: i32 = 1000;
/// Most keys in one DeleteObjects request (S3's limit).
pub const DELETE_KEYS_MAX: usize = 1000;
/// Largest stored lifecycle configuration: what the metadata service keeps of a bucket
/// document.
pub const LIFECYCLE_BYTES_MAX: usize = 64 << 10;
/// The region buckets report.
pub const REGION: &str = "us-east-1";

/// The S3 gateway over `C`.
pub struct Gateway<C> {
    cluster: C,
    keys: Arc<Keys<C>>,
    authorizer: Arc<Authorizer<C>>,
}

impl<C: Cluster> Gateway<C> {
    /// A gateway over `cluster`, looking keys up in `keys` (shared with the SigV4 check) and
    /// deciding access with `authorizer` (shared with the access hook, which runs first).
    pub fn new(cluster: C, keys: Arc<Keys<C>>, authorizer: Arc<Authorizer<C>>) -> Gateway<C> {
        Gateway {
            cluster,
            keys,
            authorizer,
        }
    }

    fn owners(&self) -> &Owners<C> {
        &self.authorizer.owners
    }

    /// The owner of `bucket`, which the access hook has let this request reach;
    /// `NoSuchBucket` if it does not exist.
    async fn tenant_bucket<T>(&self, req: &S3Request<T>, bucket: &str) -> S3Result<String> {
        if req.extensions.get::<Caller>().is_none() {
            // Every request passes the access hook first; one that did not is refused.
            return Err(s3_error!(AccessDenied, "Access Denied"));
        }
        match self.owners().get(bucket).await? {
            Some(entry) => Ok(entry.info.tenant.clone()),
            None => Err(s3_error!(
                NoSuchBucket,
                "The specified bucket does not exist"
            )),
        }
    }

    /// Stores (or, with `None`, removes) one of the bucket's documents, and forgets the cached
    /// bucket so this gateway applies it at once.
    async fn store_document(
        &self,
        bucket: &str,
        kind: &'static str,
        text: Option<String>,
    ) -> S3Result<()> {
        self.cluster
            .set_bucket_document(bucket.to_string(), kind, text)
            .await
            .map_err(cluster_error)?;
        self.owners().forget(bucket);
        Ok(())
    }

    /// The bucket as stored now, not a cached copy (what its owner reads back).
    async fn fresh_bucket(&self, bucket: &str) -> S3Result<Arc<crate::auth::BucketEntry>> {
        self.owners().forget(bucket);
        self.owners()
            .get(bucket)
            .await?
            .ok_or_else(|| s3_error!(NoSuchBucket, "The specified bucket does not exist"))
    }

    /// Refuses unless the caller may read the object `key` of `bucket` (a copy's source).
    async fn may_read<T>(
        &self,
        req: &S3Request<T>,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> S3Result<()> {
        let caller = req
            .extensions
            .get::<Caller>()
            .ok_or_else(|| s3_error!(AccessDenied, "Access Denied"))?;
        self.authorizer
            .check(&Question {
                caller,
                operation: "GetObject",
                bucket,
                key: Some(key),
                versioned: version_id.is_some(),
                version_id,
                prefix: None,
                delimiter: None,
            })
            .await
    }

    /// The object a GET, HEAD or copy reads: the version `version_id`, or the newest, with
    /// its version id (`None` in an unversioned bucket). A delete marker answers as S3 does:
    /// NoSuchKey (404) if it is the newest, MethodNotAllowed (405) if asked for by id, both
    /// with `x-amz-delete-marker: true`.
    async fn object(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> S3Result<(ObjectRecord, Option<String>)> {
        let found = self
            .cluster
            .object(
                bucket.to_string(),
                key.to_string(),
                version_id.map(str::to_string),
            )
            .await
            .map_err(|e| match e {
                ClusterError::Invalid(_) => {
                    s3_error!(InvalidArgument, "Invalid version id specified")
                }
                e => cluster_error(e),
            })?;
        match found {
            Some(ObjectVersion {
                version_id: id,
                record: Some(record),
            }) => Ok((record, id)),
            Some(ObjectVersion {
                version_id: id,
                record: None,
            }) => Err(delete_marker_error(version_id.is_some(), id)),
            None if version_id.is_some() => Err(s3_error!(
                NoSuchVersion,
                "The specified version does not exist."
            )),
            None => Err(s3_error!(NoSuchKey, "The specified key does not exist.")),
        }
    }
}

/// What S3 answers when a read finds a delete marker: 404 NoSuchKey for the newest version,
/// 405 MethodNotAllowed for one asked for by id; `x-amz-delete-marker: true` either way.
fn delete_marker_error(by_id: bool, version_id: Option<String>) -> s3s::S3Error {
    let mut error = if by_id {
        s3_error!(
            MethodNotAllowed,
            "The specified method is not allowed against this resource."
        )
    } else {
        s3_error!(NoSuchKey, "The specified key does not exist.")
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-amz-delete-marker",
        http::HeaderValue::from_static("true"),
    );
    let id = version_id.and_then(|id| http::HeaderValue::from_str(&id).ok());
    if let Some(id) = id {
        headers.insert("x-amz-version-id", id);
    }
    error.set_headers(headers);
    error
}

/// The source of a copy, as S3 refuses it: a delete marker named by id is an invalid
/// request, not a method the resource refuses.
fn copy_source_error(e: s3s::S3Error) -> s3s::S3Error {
    if *e.code() == s3s::S3ErrorCode::MethodNotAllowed {
        s3_error!(
            InvalidRequest,
            "The source of a copy request may not specifically refer to a delete marker by version id."
        )
    } else {
        e
    }
}

fn timestamp(ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

fn millis(t: Timestamp) -> u64 {
    let t: time::OffsetDateTime = t.into();
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn etag(value: &str) -> ETag {
    ETag::Strong(value.to_string())
}

fn matches(condition: &ETagCondition, value: &str) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(tag) => tag.value() == value,
    }
}

/// RFC 9110 13.2.2's order: If-Match, then If-Unmodified-Since (only without If-Match), then
/// If-None-Match, then If-Modified-Since (only without If-None-Match; GET and HEAD).
fn check_conditions(
    record: &ObjectRecord,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<Timestamp>,
    if_unmodified_since: Option<Timestamp>,
) -> S3Result<()> {
    // HTTP dates have whole seconds.
    let modified_s = record.modified_ms / 1000;
    if let Some(c) = if_match {
        if !matches(c, &record.etag) {
            return Err(s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            ));
        }
    } else if let Some(t) = if_unmodified_since
        && modified_s > millis(t) / 1000
    {
        return Err(s3_error!(
            PreconditionFailed,
            "At least one of the pre-conditions you specified did not hold"
        ));
    }
    if let Some(c) = if_none_match {
        if matches(c, &record.etag) {
            return Err(s3_error!(NotModified));
        }
    } else if let Some(t) = if_modified_since
        && modified_s <= millis(t) / 1000
    {
        return Err(s3_error!(NotModified));
    }
    Ok(())
}

fn user_metadata(metadata: Option<dto::Metadata>) -> BTreeMap<String, String> {
    metadata.unwrap_or_default().into_iter().collect()
}

fn output_metadata(metadata: &BTreeMap<String, String>) -> Option<dto::Metadata> {
    (!metadata.is_empty()).then(|| metadata.clone().into_iter().collect())
}

/// Percent-encodes a key for `encoding-type=url` listings (RFC 3986 unreserved and `/` kept).
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encoder(encoding: Option<&dto::EncodingType>) -> impl Fn(String) -> String + use<> {
    let url = encoding.is_some_and(|e| e.as_str() == dto::EncodingType::URL);
    move |s| if url { url_encode(&s) } else { s }
}

fn max_keys(max: Option<i32>) -> S3Result<u32> {
    match max {
        None => Ok(LIST_KEYS_MAX as u32),
        Some(m) if m < 0 => Err(s3_error!(InvalidArgument, "max-keys must not be negative")),
        Some(m) => Ok(m.min(LIST_KEYS_MAX) as u32),
    }
}

/// The expected digests of an upload, from its headers; trailers are read after the body.
fn expected(
    md5: Option<String>,
    crc32: Option<String>,
    crc32c: Option<String>,
    sha256: Option<String>,
    headers: &http::HeaderMap,
) -> Expected {
    let trailer = headers
        .get("x-amz-trailer")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    Expected {
        want_sha256: sha256.is_some() || trailer.contains("sha256"),
        md5,
        crc32,
        crc32c,
        sha256,
    }
}

fn trailing(trailers: Option<s3s::TrailingHeaders>) -> impl FnOnce() -> Expected {
    move || {
        let get = |headers: &http::HeaderMap, name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        trailers
            .and_then(|t| {
                t.read(|h| Expected {
                    crc32: get(h, "x-amz-checksum-crc32"),
                    crc32c: get(h, "x-amz-checksum-crc32c"),
                    sha256: get(h, "x-amz-checksum-sha256"),
                    ..Expected::default()
                })
            })
            .unwrap_or_default()
    }
}

/// Byte range of a GET: the whole object, or the requested range (`InvalidRange` past it).
fn byte_range(range: Option<&dto::Range>, size: u64) -> S3Result<(std::ops::Range<u64>, bool)> {
    match range {
        None => Ok((0..size, false)),
        Some(r) => {
            let range = r.check(size)?;
            Ok((range, true))
        }
    }
}

#[async_trait::async_trait]
impl<C: Cluster> S3 for Gateway<C> {
    async fn list_buckets(
        &self,
        req: S3Request<dto::ListBucketsInput>,
    ) -> S3Result<S3Response<dto::ListBucketsOutput>> {
        let tenant = tenant(&self.keys, &req).await?;
        let buckets = self
            .cluster
            .buckets(tenant.clone())
            .await
            .map_err(cluster_error)?;
        let prefix = req.input.prefix.unwrap_or_default();
        let buckets = buckets
            .into_iter()
            .filter(|b| b.name.starts_with(&prefix))
            .map(|b| dto::Bucket {
                name: Some(b.name),
                creation_date: Some(timestamp(b.created_ms)),
                bucket_region: Some(REGION.into()),
            })
            .collect();
        Ok(S3Response::new(dto::ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(dto::Owner {
                display_name: Some(tenant.clone()),
                id: Some(tenant),
            }),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<dto::CreateBucketInput>,
    ) -> S3Result<S3Response<dto::CreateBucketOutput>> {
        let tenant = tenant(&self.keys, &req).await?;
        let input = req.input;
        let acl = Acl::from_request(
            input.acl.as_ref().map(|a| a.as_str()),
            &grant_headers!(input, with_write),
            None,
        )?;
        let name = input.bucket;
        match self
            .cluster
            .create_bucket(tenant.clone(), name.clone())
            .await
        {
            Ok(()) => {}
            Err(ClusterError::Exists {
                tenant: Some(owner),
                ..
            }) if owner == tenant => {
                return Err(s3_error!(
                    BucketAlreadyOwnedByYou,
                    "Your previous request to create the named bucket succeeded and you already own it."
                ));
            }
            Err(ClusterError::Exists { .. }) => {
                return Err(s3_error!(
                    BucketAlreadyExists,
                    "The requested bucket name is not available."
                ));
            }
            Err(ClusterError::Invalid(m)) => return Err(s3_error!(InvalidBucketName, "{m}")),
            Err(e) => return Err(cluster_error(e)),
        }
        if let Some(acl) = acl.filter(|a| !a.grants.is_empty()) {
            self.store_document(&name, "acl", Some(acl.to_text()))
                .await?;
        }
        self.owners().forget(&name);
        Ok(S3Response::new(dto::CreateBucketOutput {
            location: Some(format!("/{name}")),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<dto::DeleteBucketInput>,
    ) -> S3Result<S3Response<dto::DeleteBucketOutput>> {
        let name = req.input.bucket.clone();
        self.tenant_bucket(&req, &name).await?;
        match self.cluster.delete_bucket(name.clone()).await {
            Ok(()) => {}
            Err(ClusterError::NotEmpty(_)) => {
                return Err(s3_error!(
                    BucketNotEmpty,
                    "The bucket you tried to delete is not empty"
                ));
            }
            Err(ClusterError::NotFound(_)) => {
                return Err(s3_error!(
                    NoSuchBucket,
                    "The specified bucket does not exist"
                ));
            }
            Err(e) => return Err(cluster_error(e)),
        }
        self.owners().forget(&name);
        Ok(S3Response::new(dto::DeleteBucketOutput {}))
    }

    async fn head_bucket(
        &self,
        req: S3Request<dto::HeadBucketInput>,
    ) -> S3Result<S3Response<dto::HeadBucketOutput>> {
        let name = req.input.bucket.clone();
        self.tenant_bucket(&req, &name).await?;
        Ok(S3Response::new(dto::HeadBucketOutput {
            bucket_region: Some(REGION.into()),
            ..Default::default()
        }))
    }

    async fn put_bucket_policy(
        &self,
        req: S3Request<dto::PutBucketPolicyInput>,
    ) -> S3Result<S3Response<dto::PutBucketPolicyOutput>> {
        let bucket = req.input.bucket.clone();
        self.tenant_bucket(&req, &bucket).await?;
        // Parsed here so nothing a gateway cannot enforce is ever stored.
        crate::policy::Policy::parse(&req.input.policy)
            .map_err(|why| s3_error!(MalformedPolicy, "{why}"))?;
        self.store_document(&bucket, "policy", Some(req.input.policy))
            .await?;
        Ok(S3Response::new(dto::PutBucketPolicyOutput::default()))
    }

    async fn get_bucket_policy(
        &self,
        req: S3Request<dto::GetBucketPolicyInput>,
    ) -> S3Result<S3Response<dto::GetBucketPolicyOutput>> {
        let bucket = req.input.bucket.clone();
        self.tenant_bucket(&req, &bucket).await?;
        // Read through: the owner sees what is stored now, not a cached copy.
        let entry = self.fresh_bucket(&bucket).await?;
        let policy = entry
            .info
            .documents
            .get("policy")
            .cloned()
            .ok_or_else(|| s3_error!(NoSuchBucketPolicy, "The bucket policy does not exist"))?;
        Ok(S3Response::new(dto::GetBucketPolicyOutput {
            policy: Some(policy),
        }))
    }

    async fn delete_bucket_policy(
        &self,
        req: S3Request<dto::DeleteBucketPolicyInput>,
    ) -> S3Result<S3Response<dto::DeleteBucketPolicyOutput>> {
        let bucket = req.input.bucket.clone();
        self.tenant_bucket(&req, &bucket).await?;
        self.store_document(&bucket, "policy", None).await?;
        Ok(S3Response::new(dto::DeleteBucketPolicyOutput::default()))
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<dto::GetBucketAclInput>,
    ) -> S3Result<S3Response<dto::GetBucketAclOutput>> {
        let bucket = req.input.bucket.clone();
        let owner = self.tenant_bucket(&req, &bucket).await?;
        let entry = self.fresh_bucket(&bucket).await?;
        let acl = entry
            .info
            .documents
            .get("acl")
            .map(|text| Acl::from_text(text))
            .unwrap_or_default();
        let (owner, grants) = acl.to_dto(&owner);
        Ok(S3Response::new(dto::GetBucketAclOutput {
            grants: Some(grants),
            owner: Some(owner),
        }))
    }

    async fn put_bucket_acl(
        &self,
        req: S3Request<dto::PutBucketAclInput>,
    ) -> S3Result<S3Response<dto::PutBucketAclOutput>> {
        let bucket = req.input.bucket.clone();
        self.tenant_bucket(&req, &bucket).await?;
        let input = req.input;
        let acl = Acl::from_request(
            input.acl.as_ref().map(|a| a.as_str()),
            &grant_headers!(input, with_write),
            input.access_control_policy.as_ref(),
        )?
        .ok_or_else(|| {
            s3_error!(
                MissingSecurityHeader,
                "give an ACL: canned, grants or a document"
            )
        })?;
        let text = (!acl.grants.is_empty()).then(|| acl.to_text());
        self.store_document(&bucket, "acl", text).await?;
        Ok(S3Response::new(dto::PutBucketAclOutput::default()))
    }

    async fn get_object_acl(
        &self,
        req: S3Request<dto::GetObjectAclInput>,
    ) -> S3Result<S3Response<dto::GetObjectAclOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let owner = self.tenant_bucket(&req, &bucket).await?;
        let (record, _) = self
            .object(&bucket, &key, req.input.version_id.as_deref())
            .await?;
        let acl = record
            .acl
            .as_deref()
            .map(Acl::from_text)
            .unwrap_or_default();
        let (owner, grants) = acl.to_dto(&owner);
        Ok(S3Response::new(dto::GetObjectAclOutput {
            grants: Some(grants),
            owner: Some(owner),
            ..Default::default()
        }))
    }

    async fn put_object_acl(
        &self,
        req: S3Request<dto::PutObjectAclInput>,
    ) -> S3Result<S3Response<dto::PutObjectAclOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.tenant_bucket(&req, &bucket).await?;
        let input = req.input;
        let acl = Acl::from_request(
            input.acl.as_ref().map(|a| a.as_str()),
            &grant_headers!(input),
            input.access_control_policy.as_ref(),
        )?
        .ok_or_else(|| {
            s3_error!(
                MissingSecurityHeader,
                "give an ACL: canned, grants or a document"
            )
        })?;
        let text = (!acl.grants.is_empty()).then(|| acl.to_text());
        match self
            .cluster
            .set_object_acl(bucket, key, input.version_id, text)
            .await
        {
            Ok(()) => Ok(S3Response::new(dto::PutObjectAclOutput::default())),
            Err(ClusterError::NotFound(_)) => {
                Err(s3_error!(NoSuchKey, "The specified key does not exist."))
            }
            Err(e) => Err(cluster_error(e)),
        }
    }

    async fn put_bucket_cors(
        &self,
        req: S3Request<dto::PutBucketCorsInput>,
    ) -> S3Result<S3Response<dto::PutBucketCorsOutput>> {
        let bucket = req.input.bucket.clone();
        self.tenant_bucket(&req, &bucket).await?;
        let cors = Cors::from_dto(&req.input.cors_configuration)?;
        self.store_document(&bucket, "cors", Some(cors.to_text()))
            .await?;
        Ok(S3Response::new(dto::PutBucketCorsOutput::default()))
    }

    async fn get_bucket_cors(
        &self,
        req: S3Request<dto::GetBucketCorsInput>,
    ) -> S3Result<S3Response<dto::GetBucketCorsOutput>> {
        let bucket = req.input.bucket.clone();
        self.tenant_bucket(&req, &bucket).await?;
        let entry = self.fresh_bucket(&bucket).await?;
        let cors = entry.info.documents.get("cors").ok_or_else(|| {
            s3_error!(
                NoSuchCORSConfiguration,
                "The CORS configuration does not exist"
            )
        })?;
        Ok(S3Response::new(dto::GetBucketCorsOutput {
            cors_rules: Some(Cors::from_text(cors).to_dto()),
        }))
    }

    async fn delete_bucket_cors(
        &self,
        req: S3Request<dto::DeleteBucketCorsInput>,
    ) -> S3Result<S3Response<dto::DeleteBucketCorsOutput>> {
        let bucket = req.input.bucket.clone();
        self.tenant_bucket(&req, &bucket).await?;
        self.store_document(&bucket, "cors", None).await?;
        Ok(S3Response::new(dto::DeleteBucketCorsOutput::default()))
    }

    async fn put_bucket_lifecycle_configuration(
        &self,
        req: S3Request<dto::PutBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<dto::PutBucketLifecycleConfigurationOutput>> {
        let bucket = req.input.bucket.clone();
        self.tenant_bucket(&req, &bucket).await?;
        let given = req.input.lifecycle_configuration.as_ref().ok_or_else(|| {
            s3_error!(MalformedXML, "the request holds no lifecycle configuration")
        })?;
        // Parsed and checked here so nothing the worker cannot enforce is ever stored.
        let config = Configuration::from_dto(given).map_err(lifecycle_error)?;
        let text = config.to_json();
        if text.len() > LIFECYCLE_BYTES_MAX {
            return Err(s3_error!(
                InvalidRequest,
                "the lifecycle configuration is over {LIFECYCLE_BYTES_MAX} bytes once stored"
            ));
        }
        self.store_document(&bucket, "lifecycle", Some(text))
            .await?;
        Ok(S3Response::new(
            dto::PutBucketLifecycleConfigurationOutput::default(),
        ))
    }

    async fn get_bucket_lifecycle_configuration(
        &self,
        req: S3Request<dto::GetBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<dto::GetBucketLifecycleConfigurationOutput>> {
        let name = req.input.bucket.clone();
        self.tenant_bucket(&req, &name).await?;
        // Not the ownership cache: the owner sees what is stored now.
        let bucket = self
            .cluster
            .bucket(name)
            .await
            .map_err(cluster_error)?
            .ok_or_else(|| s3_error!(NoSuchBucket, "The specified bucket does not exist"))?;
        let text = bucket.documents.get("lifecycle").ok_or_else(|| {
            s3_error!(
                NoSuchLifecycleConfiguration,
                "The lifecycle configuration does not exist"
            )
        })?;
        let config = Configuration::from_json(text).map_err(|e| s3_error!(InternalError, "{e}"))?;
        Ok(S3Response::new(
            dto::GetBucketLifecycleConfigurationOutput {
                rules: Some(config.to_dto()),
                ..Default::default()
            },
        ))
    }

    async fn delete_bucket_lifecycle(
        &self,
        req: S3Request<dto::DeleteBucketLifecycleInput>,
    ) -> S3Result<S3Response<dto::DeleteBucketLifecycleOutput>> {
        let bucket = req.input.bucket.clone();
        self.tenant_bucket(&req, &bucket).await?;
        self.store_document(&bucket, "lifecycle", None).await?;
        Ok(S3Response::new(dto::DeleteBucketLifecycleOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<dto::GetBucketLocationInput>,
    ) -> S3Result<S3Response<dto::GetBucketLocationOutput>> {
        let name = req.input.bucket.clone();
        self.tenant_bucket(&req, &name).await?;
        // us-east-1 is reported as an empty LocationConstraint, as S3 does.
        Ok(S3Response::new(dto::GetBucketLocationOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<dto::PutObjectInput>,
    ) -> S3Result<S3Response<dto::PutObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.tenant_bucket(&req, &bucket).await?;
        let input = req.input;
        let acl = Acl::from_request(
            input.acl.as_ref().map(|a| a.as_str()),
            &grant_headers!(input),
            None,
        )?;
        let body = input
            .body
            .ok_or_else(|| s3_error!(IncompleteBody, "the request has no body"))?;
        if input
            .content_length
            .is_some_and(|l| l as u64 > PUT_BYTES_MAX)
        {
            return Err(s3_error!(
                EntityTooLarge,
                "at most {PUT_BYTES_MAX} bytes in one PUT: use a multipart upload"
            ));
        }
        let want = expected(
            input.content_md5,
            input.checksum_crc32,
            input.checksum_crc32c,
            input.checksum_sha256,
            &req.headers,
        );
        let stored = body::ingest(
            &self.cluster,
            &bucket,
            body,
            true,
            PUT_BYTES_MAX,
            want,
            trailing(req.trailing_headers),
        )
        .await?;
        let record = ObjectRecord {
            size: stored.size,
            etag: hex(&stored.md5),
            modified_ms: now_ms(),
            content_type: input.content_type.map(|c| c.to_string()),
            metadata: user_metadata(input.metadata),
            data: stored.data,
            acl: acl.map(|a| a.to_text()),
        };
        let (written, version_id) = self.commit(&bucket, &key, record).await?;
        Ok(S3Response::new(dto::PutObjectOutput {
            e_tag: Some(etag(&written.etag)),
            version_id,
            checksum_crc32: Some(stored.crc32),
            checksum_crc32c: Some(stored.crc32c),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<dto::GetObjectInput>,
    ) -> S3Result<S3Response<dto::GetObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.tenant_bucket(&req, &bucket).await?;
        let (record, version_id) = self
            .object(&bucket, &key, req.input.version_id.as_deref())
            .await?;
        let input = req.input;
        check_conditions(
            &record,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since,
            input.if_unmodified_since,
        )?;
        let (range, partial) = byte_range(input.range.as_ref(), record.size)?;
        let length = range.end - range.start;
        let content_range = partial.then(|| {
            format!(
                "bytes {}-{}/{}",
                range.start,
                range.end.saturating_sub(1),
                record.size
            )
        });
        let stream = body::stream(
            self.cluster.clone(),
            bucket,
            key,
            version_id.clone(),
            record.data.clone(),
            range,
        );
        let content_type = input
            .response_content_type
            .or(record.content_type.clone())
            .and_then(|c| c.parse().ok());
        Ok(S3Response::new(dto::GetObjectOutput {
            body: Some(stream),
            content_length: Some(length as i64),
            content_range,
            content_type,
            accept_ranges: Some("bytes".into()),
            e_tag: Some(etag(&record.etag)),
            last_modified: Some(timestamp(record.modified_ms)),
            metadata: output_metadata(&record.metadata),
            version_id,
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<dto::HeadObjectInput>,
    ) -> S3Result<S3Response<dto::HeadObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.tenant_bucket(&req, &bucket).await?;
        let (record, version_id) = self
            .object(&bucket, &key, req.input.version_id.as_deref())
            .await?;
        let input = req.input;
        check_conditions(
            &record,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since,
            input.if_unmodified_since,
        )?;
        let (range, _) = byte_range(input.range.as_ref(), record.size)?;
        Ok(S3Response::new(dto::HeadObjectOutput {
            content_length: Some((range.end - range.start) as i64),
            content_type: record.content_type.and_then(|c| c.parse().ok()),
            accept_ranges: Some("bytes".into()),
            e_tag: Some(etag(&record.etag)),
            last_modified: Some(timestamp(record.modified_ms)),
            metadata: output_metadata(&record.metadata),
            version_id,
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<dto::DeleteObjectInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.tenant_bucket(&req, &bucket).await?;
        let deleted = self
            .cluster
            .delete_object(bucket, key, req.input.version_id)
            .await
            .map_err(cluster_error)?;
        Ok(S3Response::new(dto::DeleteObjectOutput {
            delete_marker: deleted.delete_marker.then_some(true),
            version_id: deleted.version_id,
            ..Default::default()
        }))
    }

    async fn delete_objects(
        &self,
        req: S3Request<dto::DeleteObjectsInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectsOutput>> {
        let bucket = req.input.bucket.clone();
        self.tenant_bucket(&req, &bucket).await?;
        let delete = req.input.delete;
        if delete.objects.len() > DELETE_KEYS_MAX {
            return Err(s3_error!(
                MalformedXML,
                "at most {DELETE_KEYS_MAX} keys in one request"
            ));
        }
        let quiet = delete.quiet.unwrap_or(false);
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for object in delete.objects {
            let result = self
                .cluster
                .delete_object(
                    bucket.clone(),
                    object.key.clone(),
                    object.version_id.clone(),
                )
                .await
                .map_err(cluster_error);
            match result {
                Ok(_) if quiet => {}
                Ok(done) => {
                    // A version named is echoed; a marker made or removed is named too.
                    let marker_id = done.delete_marker.then(|| done.version_id.clone());
                    deleted.push(dto::DeletedObject {
                        key: Some(object.key),
                        version_id: object.version_id,
                        delete_marker: done.delete_marker.then_some(true),
                        delete_marker_version_id: marker_id.flatten(),
                    });
                }
                Err(e) => errors.push(dto::Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(object.key),
                    message: e.message().map(str::to_string),
                    version_id: object.version_id,
                }),
            }
        }
        Ok(S3Response::new(dto::DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<dto::CopyObjectInput>,
    ) -> S3Result<S3Response<dto::CopyObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.tenant_bucket(&req, &bucket).await?;
        let dto::CopySource::Bucket {
            bucket: source_bucket,
            key: source_key,
            version_id,
        } = &req.input.copy_source
        else {
            return Err(s3_error!(NotImplemented, "access point copy sources"));
        };
        self.may_read(&req, source_bucket, source_key, version_id.as_deref())
            .await?;
        let input = req.input.clone();
        let dto::CopySource::Bucket {
            bucket: source_bucket,
            key: source_key,
            version_id,
        } = &input.copy_source
        else {
            return Err(s3_error!(NotImplemented, "access point copy sources"));
        };
        let acl = Acl::from_request(
            input.acl.as_ref().map(|a| a.as_str()),
            &grant_headers!(input),
            None,
        )?;
        let (source, source_version) = self
            .object(source_bucket, source_key, version_id.as_deref())
            .await
            .map_err(copy_source_error)?;
        check_conditions(
            &source,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since,
            input.copy_source_if_unmodified_since,
        )
        .map_err(|e| {
            // A copy answers 412 for every failed condition (there is nothing to "not modify").
            if *e.code() == s3s::S3ErrorCode::NotModified {
                s3_error!(
                    PreconditionFailed,
                    "At least one of the pre-conditions you specified did not hold"
                )
            } else {
                e
            }
        })?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == dto::MetadataDirective::REPLACE);
        if !replace
            && version_id.is_none()
            && source_bucket.as_ref() == bucket
            && source_key.as_ref() == key
        {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata."
            ));
        }
        let (content_type, metadata) = if replace {
            (
                input.content_type.map(|c| c.to_string()),
                user_metadata(input.metadata),
            )
        } else {
            (source.content_type.clone(), source.metadata.clone())
        };
        let (data, md5) = self
            .copy_data(
                (source_bucket, source_key, source_version.clone()),
                &bucket,
                &source,
            )
            .await?;
        let record = ObjectRecord {
            size: source.size,
            // A copy is one object, not parts: its ETag is its MD5 (the source's, if inline).
            etag: md5.map_or_else(|| source.etag.clone(), |m| hex(&m)),
            modified_ms: now_ms(),
            content_type,
            metadata,
            data,
            acl: acl.map(|a| a.to_text()),
        };
        let (written, written_version) = self.commit(&bucket, &key, record).await?;
        Ok(S3Response::new(dto::CopyObjectOutput {
            copy_object_result: Some(dto::CopyObjectResult {
                e_tag: Some(etag(&written.etag)),
                last_modified: Some(timestamp(written.modified_ms)),
                ..Default::default()
            }),
            version_id: written_version,
            copy_source_version_id: source_version,
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<dto::ListObjectsInput>,
    ) -> S3Result<S3Response<dto::ListObjectsOutput>> {
        let bucket = req.input.bucket.clone();
        let tenant = self.tenant_bucket(&req, &bucket).await?;
        let input = req.input;
        let max = max_keys(input.max_keys)?;
        let query = ListQuery {
            prefix: input.prefix.clone().unwrap_or_default(),
            delimiter: input.delimiter.clone().filter(|d| !d.is_empty()),
            after: input.marker.clone().filter(|m| !m.is_empty()),
            max,
        };
        let listing = self.list(&bucket, query).await?;
        let enc = encoder(input.encoding_type.as_ref());
        // Given whenever truncated: a page may end early on deleted keys, with no key of its
        // own to continue after.
        let next_marker = listing
            .truncated
            .then(|| listing.next.clone().map(&enc))
            .flatten();
        Ok(S3Response::new(dto::ListObjectsOutput {
            name: Some(bucket),
            prefix: Some(enc(input.prefix.unwrap_or_default())),
            marker: Some(enc(input.marker.unwrap_or_default())),
            max_keys: Some(max as i32),
            is_truncated: Some(listing.truncated),
            contents: Some(contents(&listing.objects, &tenant, &enc)),
            common_prefixes: Some(prefixes(listing.prefixes, &enc)),
            delimiter: input.delimiter.map(&enc),
            next_marker,
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<dto::ListObjectsV2Input>,
    ) -> S3Result<S3Response<dto::ListObjectsV2Output>> {
        let bucket = req.input.bucket.clone();
        let tenant = self.tenant_bucket(&req, &bucket).await?;
        let input = req.input;
        let max = max_keys(input.max_keys)?;
        // The continuation token is the last key or prefix of the previous page; it wins
        // over start-after.
        let after = input
            .continuation_token
            .clone()
            .or(input.start_after.clone())
            .filter(|a| !a.is_empty());
        let query = ListQuery {
            prefix: input.prefix.clone().unwrap_or_default(),
            delimiter: input.delimiter.clone().filter(|d| !d.is_empty()),
            after,
            max,
        };
        let listing = self.list(&bucket, query).await?;
        let enc = encoder(input.encoding_type.as_ref());
        let owner = input.fetch_owner.unwrap_or(false).then_some(tenant);
        let objects = contents(&listing.objects, owner.as_deref().unwrap_or_default(), &enc);
        let objects = if owner.is_some() {
            objects
        } else {
            objects
                .into_iter()
                .map(|o| dto::Object { owner: None, ..o })
                .collect()
        };
        let key_count = (listing.objects.len() + listing.prefixes.len()) as i32;
        Ok(S3Response::new(dto::ListObjectsV2Output {
            name: Some(bucket),
            prefix: Some(enc(input.prefix.unwrap_or_default())),
            max_keys: Some(max as i32),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            is_truncated: Some(listing.truncated),
            next_continuation_token: listing.truncated.then_some(listing.next).flatten(),
            contents: Some(objects),
            common_prefixes: Some(prefixes(listing.prefixes, &enc)),
            delimiter: input.delimiter.map(&enc),
            start_after: input.start_after.map(&enc),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn put_bucket_versioning(
        &self,
        req: S3Request<dto::PutBucketVersioningInput>,
    ) -> S3Result<S3Response<dto::PutBucketVersioningOutput>> {
        let bucket = req.input.bucket.clone();
        self.tenant_bucket(&req, &bucket).await?;
        let status = req.input.versioning_configuration.status;
        let enabled = match status.as_ref().map(dto::BucketVersioningStatus::as_str) {
            Some(dto::BucketVersioningStatus::ENABLED) => true,
            Some(dto::BucketVersioningStatus::SUSPENDED) => false,
            _ => {
                return Err(s3_error!(
                    MalformedXML,
                    "The versioning status must be Enabled or Suspended"
                ));
            }
        };
        self.cluster
            .set_versioning(bucket, enabled)
            .await
            .map_err(cluster_error)?;
        Ok(S3Response::new(dto::PutBucketVersioningOutput::default()))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<dto::GetBucketVersioningInput>,
    ) -> S3Result<S3Response<dto::GetBucketVersioningOutput>> {
        let name = req.input.bucket.clone();
        self.tenant_bucket(&req, &name).await?;
        // Not the ownership cache: the state changes while the owner stays.
        let bucket = self
            .cluster
            .bucket(name)
            .await
            .map_err(cluster_error)?
            .ok_or_else(|| s3_error!(NoSuchBucket, "The specified bucket does not exist"))?;
        let status = match bucket.versioning {
            Versioning::Unversioned => None,
            Versioning::Enabled => Some(dto::BucketVersioningStatus::ENABLED),
            Versioning::Suspended => Some(dto::BucketVersioningStatus::SUSPENDED),
        };
        Ok(S3Response::new(dto::GetBucketVersioningOutput {
            status: status.map(dto::BucketVersioningStatus::from_static),
            ..Default::default()
        }))
    }

    async fn list_object_versions(
        &self,
        req: S3Request<dto::ListObjectVersionsInput>,
    ) -> S3Result<S3Response<dto::ListObjectVersionsOutput>> {
        let bucket = req.input.bucket.clone();
        let tenant = self.tenant_bucket(&req, &bucket).await?;
        let input = req.input;
        let max = max_keys(input.max_keys)?;
        let key_marker = input.key_marker.clone().filter(|k| !k.is_empty());
        let version_id_marker = input.version_id_marker.clone().filter(|v| !v.is_empty());
        if version_id_marker.is_some() && key_marker.is_none() {
            return Err(s3_error!(
                InvalidArgument,
                "A version-id marker cannot be specified without a key marker."
            ));
        }
        let query = VersionQuery {
            prefix: input.prefix.clone().unwrap_or_default(),
            delimiter: input.delimiter.clone().filter(|d| !d.is_empty()),
            key_marker,
            version_id_marker,
            max,
        };
        let listing = if max == 0 {
            crate::cluster::VersionListing::default()
        } else {
            self.cluster
                .list_versions(bucket.clone(), query)
                .await
                .map_err(|e| match e {
                    ClusterError::Invalid(_) => {
                        s3_error!(InvalidArgument, "Invalid version id specified")
                    }
                    e => cluster_error(e),
                })?
        };
        let enc = encoder(input.encoding_type.as_ref());
        let owner = || dto::Owner {
            display_name: Some(tenant.clone()),
            id: Some(tenant.clone()),
        };
        let (mut versions, mut markers) = (Vec::new(), Vec::new());
        for v in listing.versions {
            if v.delete_marker {
                markers.push(dto::DeleteMarkerEntry {
                    is_latest: Some(v.is_latest),
                    key: Some(enc(v.key)),
                    last_modified: Some(timestamp(v.modified_ms)),
                    owner: Some(owner()),
                    version_id: Some(v.version_id),
                });
            } else {
                versions.push(dto::ObjectVersion {
                    e_tag: Some(etag(&v.etag)),
                    is_latest: Some(v.is_latest),
                    key: Some(enc(v.key)),
                    last_modified: Some(timestamp(v.modified_ms)),
                    owner: Some(owner()),
                    size: Some(v.size as i64),
                    storage_class: Some(dto::ObjectVersionStorageClass::from_static(
                        dto::ObjectVersionStorageClass::STANDARD,
                    )),
                    version_id: Some(v.version_id),
                    ..Default::default()
                });
            }
        }
        Ok(S3Response::new(dto::ListObjectVersionsOutput {
            name: Some(bucket),
            prefix: Some(enc(input.prefix.unwrap_or_default())),
            key_marker: Some(enc(input.key_marker.unwrap_or_default())),
            version_id_marker: Some(input.version_id_marker.unwrap_or_default()),
            max_keys: Some(max as i32),
            is_truncated: Some(listing.truncated),
            next_key_marker: listing.next_key_marker.map(&enc),
            next_version_id_marker: listing.next_version_id_marker,
            versions: Some(versions),
            delete_markers: Some(markers),
            common_prefixes: Some(prefixes(listing.prefixes, &enc)),
            delimiter: input.delimiter.map(&enc),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<dto::CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CreateMultipartUploadOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.tenant_bucket(&req, &bucket).await?;
        let input = req.input;
        // Kept with the upload; the completed object gets it.
        let acl = Acl::from_request(
            input.acl.as_ref().map(|a| a.as_str()),
            &grant_headers!(input),
            None,
        )?;
        let id = self
            .cluster
            .create_upload(
                bucket.clone(),
                key.clone(),
                input.content_type.map(|c| c.to_string()),
                user_metadata(input.metadata),
                acl.map(|a| a.to_text()),
            )
            .await
            .map_err(cluster_error)?;
        Ok(S3Response::new(dto::CreateMultipartUploadOutput {
            bucket: Some(bucket),
            key: Some(key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<dto::UploadPartInput>,
    ) -> S3Result<S3Response<dto::UploadPartOutput>> {
        let bucket = req.input.bucket.clone();
        self.tenant_bucket(&req, &bucket).await?;
        let input = req.input;
        let number = part_number(input.part_number)?;
        self.upload_of(&input.upload_id, &bucket, &input.key)
            .await?;
        let body = input
            .body
            .ok_or_else(|| s3_error!(IncompleteBody, "the request has no body"))?;
        let want = expected(
            input.content_md5,
            input.checksum_crc32,
            input.checksum_crc32c,
            input.checksum_sha256,
            &req.headers,
        );
        let stored = body::ingest(
            &self.cluster,
            &bucket,
            body,
            false,
            PART_BYTES_MAX,
            want,
            trailing(req.trailing_headers),
        )
        .await?;
        let ObjectData::Segments(segments) = stored.data else {
            return Err(s3_error!(InternalError, "a part was kept inline"));
        };
        let [segment] = segments[..] else {
            return Err(s3_error!(InternalError, "a part took several segments"));
        };
        let tag = hex(&stored.md5);
        if let Err(e) = self
            .cluster
            .put_part(input.upload_id.clone(), number, segment, tag.clone())
            .await
        {
            self.abandon(segment).await;
            return Err(match e {
                ClusterError::NotFound(_) => no_such_upload(),
                e => cluster_error(e),
            });
        }
        Ok(S3Response::new(dto::UploadPartOutput {
            e_tag: Some(etag(&tag)),
            checksum_crc32: Some(stored.crc32),
            checksum_crc32c: Some(stored.crc32c),
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<dto::UploadPartCopyInput>,
    ) -> S3Result<S3Response<dto::UploadPartCopyOutput>> {
        let bucket = req.input.bucket.clone();
        self.tenant_bucket(&req, &bucket).await?;
        if let dto::CopySource::Bucket {
            bucket: source_bucket,
            key: source_key,
            version_id,
        } = &req.input.copy_source
        {
            self.may_read(&req, source_bucket, source_key, version_id.as_deref())
                .await?;
        }
        let input = req.input;
        let number = part_number(input.part_number)?;
        self.upload_of(&input.upload_id, &bucket, &input.key)
            .await?;
        let dto::CopySource::Bucket {
            bucket: source_bucket,
            key: source_key,
            version_id,
        } = &input.copy_source
        else {
            return Err(s3_error!(NotImplemented, "access point copy sources"));
        };
        let (source, source_version) = self
            .object(source_bucket, source_key, version_id.as_deref())
            .await
            .map_err(copy_source_error)?;
        let range = match &input.copy_source_range {
            None => 0..source.size,
            Some(text) => copy_range(text, source.size)?,
        };
        let length = range.end - range.start;
        if length > PART_BYTES_MAX {
            return Err(s3_error!(
                EntityTooLarge,
                "a part holds at most {PART_BYTES_MAX} bytes"
            ));
        }
        let owner = self
            .cluster
            .begin_write(bucket.clone())
            .await
            .map_err(cluster_error)?;
        let segment = Segment { owner, length };
        let copied = self
            .copy_range(
                (source_bucket, source_key, source_version.clone()),
                &source,
                range,
                &bucket,
                owner,
            )
            .await;
        let md5 = match copied {
            Ok(md5) => md5,
            Err(e) => {
                self.abandon(segment).await;
                return Err(e);
            }
        };
        let tag = hex(&md5);
        if let Err(e) = self
            .cluster
            .put_part(input.upload_id.clone(), number, segment, tag.clone())
            .await
        {
            self.abandon(segment).await;
            return Err(match e {
                ClusterError::NotFound(_) => no_such_upload(),
                e => cluster_error(e),
            });
        }
        Ok(S3Response::new(dto::UploadPartCopyOutput {
            copy_part_result: Some(dto::CopyPartResult {
                e_tag: Some(etag(&tag)),
                last_modified: Some(timestamp(now_ms())),
                ..Default::default()
            }),
            copy_source_version_id: source_version,
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<dto::CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CompleteMultipartUploadOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.tenant_bucket(&req, &bucket).await?;
        let input = req.input;
        self.upload_of(&input.upload_id, &bucket, &key).await?;
        let listed = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if listed.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "You must specify at least one part"
            ));
        }
        let mut parts = Vec::with_capacity(listed.len());
        let mut md5s = Vec::with_capacity(listed.len() * 16);
        for part in listed {
            let number = part_number(part.part_number.unwrap_or(0))?;
            let tag = part
                .e_tag
                .map(|t| t.value().trim_matches('"').to_ascii_lowercase())
                .ok_or_else(|| s3_error!(InvalidPart, "part {number} has no ETag"))?;
            let raw = unhex(&tag).ok_or_else(|| {
                s3_error!(
                    InvalidPart,
                    "part {number}: {tag:?} is not an ETag this gateway gave"
                )
            })?;
            md5s.extend_from_slice(&raw);
            parts.push((number, tag));
        }
        let digest = {
            use s3s::crypto::Checksum;
            let mut md5 = s3s::crypto::Md5::new();
            md5.update(&md5s);
            let raw: [u8; 16] = md5.finalize();
            raw
        };
        let tag = format!("{}-{}", hex(&digest), parts.len());
        let (record, version_id) = self
            .cluster
            .complete_upload(input.upload_id, bucket.clone(), key.clone(), parts, tag)
            .await
            .map_err(|e| match e {
                ClusterError::NotFound(_) => no_such_upload(),
                e => cluster_error(e),
            })?;
        Ok(S3Response::new(dto::CompleteMultipartUploadOutput {
            bucket: Some(bucket.clone()),
            key: Some(key.clone()),
            e_tag: Some(etag(&record.etag)),
            location: Some(format!("/{bucket}/{key}")),
            version_id,
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<dto::AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::AbortMultipartUploadOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.tenant_bucket(&req, &bucket).await?;
        self.upload_of(&req.input.upload_id, &bucket, &key).await?;
        self.cluster
            .abort_upload(req.input.upload_id)
            .await
            .map_err(|e| match e {
                ClusterError::NotFound(_) => no_such_upload(),
                e => cluster_error(e),
            })?;
        Ok(S3Response::new(dto::AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<dto::ListPartsInput>,
    ) -> S3Result<S3Response<dto::ListPartsOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.tenant_bucket(&req, &bucket).await?;
        let input = req.input;
        let upload = self.upload_of(&input.upload_id, &bucket, &key).await?;
        let max = input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
        let after = input.part_number_marker.unwrap_or(0).max(0) as u32;
        let remaining: Vec<_> = upload
            .parts
            .iter()
            .filter(|p| p.part_number > after)
            .collect();
        let page = &remaining[..remaining.len().min(max)];
        let truncated = remaining.len() > page.len();
        Ok(S3Response::new(dto::ListPartsOutput {
            bucket: Some(bucket),
            key: Some(key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: page.last().map(|p| p.part_number as i32),
            parts: Some(
                page.iter()
                    .map(|p| dto::Part {
                        e_tag: Some(etag(&p.etag)),
                        last_modified: Some(timestamp(p.modified_ms)),
                        part_number: Some(p.part_number as i32),
                        size: Some(p.size as i64),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<dto::ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<dto::ListMultipartUploadsOutput>> {
        let bucket = req.input.bucket.clone();
        self.tenant_bucket(&req, &bucket).await?;
        let input = req.input;
        let max = input.max_uploads.unwrap_or(1000).clamp(0, 1000) as u32;
        let after = input
            .key_marker
            .clone()
            .filter(|k| !k.is_empty())
            .map(|k| (k, input.upload_id_marker.clone().unwrap_or_default()));
        let listing = self
            .cluster
            .uploads(
                bucket.clone(),
                input.prefix.clone().unwrap_or_default(),
                after,
                max,
            )
            .await
            .map_err(cluster_error)?;
        let last = listing.uploads.last().cloned();
        Ok(S3Response::new(dto::ListMultipartUploadsOutput {
            bucket: Some(bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(max as i32),
            is_truncated: Some(listing.truncated),
            next_key_marker: last.as_ref().map(|u| u.key.clone()),
            next_upload_id_marker: last.map(|u| u.upload_id),
            uploads: Some(
                listing
                    .uploads
                    .into_iter()
                    .map(|u| dto::MultipartUpload {
                        key: Some(u.key),
                        upload_id: Some(u.upload_id),
                        initiated: Some(timestamp(u.created_ms)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }
}

/// The S3 error of a refused lifecycle configuration.
fn lifecycle_error(e: RuleError) -> s3s::S3Error {
    match e {
        RuleError::Malformed(m) => s3_error!(MalformedXML, "{m}"),
        RuleError::Invalid(m) => s3_error!(InvalidArgument, "{m}"),
        RuleError::Unsupported(m) => s3_error!(NotImplemented, "{m}"),
    }
}

fn no_such_upload() -> s3s::S3Error {
    s3_error!(
        NoSuchUpload,
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed."
    )
}

fn part_number(number: i32) -> S3Result<u32> {
    if (1..=PART_NUMBER_MAX).contains(&number) {
        Ok(number as u32)
    } else {
        Err(s3_error!(
            InvalidArgument,
            "Part number must be an integer between 1 and {PART_NUMBER_MAX}, inclusive"
        ))
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 32 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses `bytes=first-last` of UploadPartCopy.
fn copy_range(text: &str, size: u64) -> S3Result<std::ops::Range<u64>> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "x-amz-copy-source-range must be bytes=first-last inside the source"
        )
    };
    let (first, last) = text
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let first: u64 = first.parse().map_err(|_| bad())?;
    let last: u64 = last.parse().map_err(|_| bad())?;
    if first > last || last >= size {
        return Err(bad());
    }
    Ok(first..last + 1)
}

fn contents(
    objects: &[crate::cluster::ListEntry],
    tenant: &str,
    enc: &impl Fn(String) -> String,
) -> Vec<dto::Object> {
    objects
        .iter()
        .map(|o| dto::Object {
            key: Some(enc(o.key.clone())),
            size: Some(o.size as i64),
            e_tag: Some(etag(&o.etag)),
            last_modified: Some(timestamp(o.modified_ms)),
            storage_class: Some(dto::ObjectStorageClass::from_static(
                dto::ObjectStorageClass::STANDARD,
            )),
            owner: Some(dto::Owner {
                display_name: Some(tenant.to_string()),
                id: Some(tenant.to_string()),
            }),
            ..Default::default()
        })
        .collect()
}

fn prefixes(prefixes: Vec<String>, enc: &impl Fn(String) -> String) -> Vec<dto::CommonPrefix> {
    prefixes
        .into_iter()
        .map(|p| dto::CommonPrefix {
            prefix: Some(enc(p)),
        })
        .collect()
}

impl<C: Cluster> Gateway<C> {
    async fn list(&self, bucket: &str, query: ListQuery) -> S3Result<crate::cluster::Listing> {
        if query.max == 0 {
            return Ok(crate::cluster::Listing::default());
        }
        self.cluster
            .list(bucket.to_string(), query)
            .await
            .map_err(cluster_error)
    }

    /// Makes `record` the object; a failure hands its chunks to the reclaimer.
    async fn commit(
        &self,
        bucket: &str,
        key: &str,
        record: ObjectRecord,
    ) -> S3Result<(ObjectRecord, Option<String>)> {
        let segments = match &record.data {
            ObjectData::Segments(s) => s.clone(),
            ObjectData::Inline(_) => Vec::new(),
        };
        match self
            .cluster
            .put_object(bucket.to_string(), key.to_string(), record)
            .await
        {
            Ok(written) => Ok(written),
            Err(e) => {
                for segment in segments {
                    self.abandon(segment).await;
                }
                Err(match e {
                    ClusterError::NotFound(_) => {
                        s3_error!(NoSuchBucket, "The specified bucket does not exist")
                    }
                    e => cluster_error(e),
                })
            }
        }
    }

    async fn abandon(&self, segment: Segment) {
        if let Err(e) = self
            .cluster
            .abandon(vec![segment.owner], segment.length)
            .await
        {
            // The pending write stays listed; the reclaimer abandons it once it is old.
            tracing::warn!(owner = segment.owner, "abandoning a write: {e}");
        }
    }

    /// The upload `id`, if it belongs to `bucket` and `key`.
    async fn upload_of(
        &self,
        id: &str,
        bucket: &str,
        key: &str,
    ) -> S3Result<crate::cluster::UploadInfo> {
        match self.cluster.upload(id.to_string()).await {
            Ok(Some(upload)) if upload.bucket == bucket && upload.key == key => Ok(upload),
            Ok(_) => Err(no_such_upload()),
            Err(e) => Err(cluster_error(e)),
        }
    }

    /// The bytes of a copy: inline bytes are copied as they are; chunks are read and written
    /// to a new owner (objects never share chunks, so reclaiming one never touches another).
    async fn copy_data(
        &self,
        (source_bucket, source_key, source_version): (&str, &str, Option<String>),
        bucket: &str,
        source: &ObjectRecord,
    ) -> S3Result<(ObjectData, Option<[u8; 16]>)> {
        if let ObjectData::Inline(bytes) = &source.data {
            return Ok((ObjectData::Inline(bytes.clone()), None));
        }
        let owner = self
            .cluster
            .begin_write(bucket.to_string())
            .await
            .map_err(cluster_error)?;
        let segment = Segment {
            owner,
            length: source.size,
        };
        match self
            .copy_range(
                (source_bucket, source_key, source_version),
                source,
                0..source.size,
                bucket,
                owner,
            )
            .await
        {
            Ok(md5) => Ok((ObjectData::Segments(vec![segment]), Some(md5))),
            Err(e) => {
                self.abandon(segment).await;
                Err(e)
            }
        }
    }

    /// Copies `range` of the object `source` (bucket, key and version as it was read) to
    /// offset 0 of `owner` in `bucket`'s pool, a piece at a time; answers the MD5 of the bytes
    /// copied.
    async fn copy_range(
        &self,
        (source_bucket, source_key, source_version): (&str, &str, Option<String>),
        source: &ObjectRecord,
        range: std::ops::Range<u64>,
        bucket: &str,
        owner: u64,
    ) -> S3Result<[u8; 16]> {
        use futures::StreamExt;
        use s3s::crypto::Checksum;
        let mut stream = body::stream(
            self.cluster.clone(),
            source_bucket.to_string(),
            source_key.to_string(),
            source_version,
            source.data.clone(),
            range,
        );
        let mut md5 = s3s::crypto::Md5::new();
        let mut offset = 0u64;
        while let Some(piece) = stream.next().await {
            let piece =
                piece.map_err(|e| s3_error!(InternalError, "reading the copy source: {e}"))?;
            md5.update(&piece);
            let length = piece.len() as u64;
            self.cluster
                .write(bucket.to_string(), owner, offset, piece.to_vec())
                .await
                .map_err(cluster_error)?;
            offset += length;
        }
        Ok(md5.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(etag: &str, modified_ms: u64) -> ObjectRecord {
        ObjectRecord {
            acl: None,
            size: 1,
            etag: etag.into(),
            modified_ms,
            content_type: None,
            metadata: BTreeMap::new(),
            data: ObjectData::Inline(vec![1]),
        }
    }

    #[test]
    fn conditions_follow_rfc_9110_order() {
        let r = record("abc", 10_000);
        let tag = |t: &str| ETagCondition::ETag(ETag::Strong(t.into()));
        let at = |s: u64| timestamp(s * 1000);
        assert!(check_conditions(&r, Some(&tag("abc")), None, None, None).is_ok());
        let e = check_conditions(&r, Some(&tag("x")), None, None, None).unwrap_err();
        assert_eq!(*e.code(), s3s::S3ErrorCode::PreconditionFailed);
        let e = check_conditions(&r, None, Some(&tag("abc")), None, None).unwrap_err();
        assert_eq!(*e.code(), s3s::S3ErrorCode::NotModified);
        let e = check_conditions(&r, None, Some(&ETagCondition::Any), None, None).unwrap_err();
        assert_eq!(*e.code(), s3s::S3ErrorCode::NotModified);
        // Not modified since a later time; modified since an earlier one.
        assert!(check_conditions(&r, None, None, Some(at(9)), None).is_ok());
        let e = check_conditions(&r, None, None, Some(at(10)), None).unwrap_err();
        assert_eq!(*e.code(), s3s::S3ErrorCode::NotModified);
        let e = check_conditions(&r, None, None, None, Some(at(9))).unwrap_err();
        assert_eq!(*e.code(), s3s::S3ErrorCode::PreconditionFailed);
        // If-Match wins over If-Unmodified-Since; If-None-Match over If-Modified-Since.
        assert!(check_conditions(&r, Some(&tag("abc")), None, None, Some(at(9))).is_ok());
        assert!(check_conditions(&r, None, Some(&tag("x")), Some(at(10)), None).is_ok());
    }

    #[test]
    fn url_encoding_keeps_unreserved_and_slashes() {
        assert_eq!(url_encode("a b/c+d%é"), "a%20b/c%2Bd%25%C3%A9");
        assert_eq!(url_encode("plain-key_1.txt~"), "plain-key_1.txt~");
    }

    #[test]
    fn copy_ranges_stay_inside_the_source() {
        assert_eq!(copy_range("bytes=0-9", 10).unwrap(), 0..10);
        assert_eq!(copy_range("bytes=5-5", 10).unwrap(), 5..6);
        for bad in ["bytes=0-10", "bytes=5-4", "0-1", "bytes=a-1", "bytes=-1"] {
            assert!(copy_range(bad, 10).is_err(), "{bad}");
        }
    }

    #[test]
    fn part_etags_round_trip_through_hex() {
        let raw: Vec<u8> = (0..16).collect();
        assert_eq!(unhex(&hex(&raw)), Some(raw));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(&"g".repeat(32)), None);
    }
}
