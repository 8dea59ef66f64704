//! The S3 gateway's view of the cluster ([`S3Cluster`]): metadata through the admin API (as
//! every gateway reaches it: over HTTP from a gateway process, or through the router itself
//! inside `cairn dev`), object bytes through a data [`Backend`] (the in-process PG host in
//! `cairn dev`, the storage nodes' data APIs in a stateless gateway).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    http::{Request, header},
};
use tower::ServiceExt as _;

use cairn_common::{OwnerId, PoolId};
use cairn_gateway_s3::cluster::{
    BucketInfo, Cluster, ClusterError, ClusterResult, Deleted, Garbage, KeyInfo, ListEntry,
    ListQuery, Listing, ObjectData, ObjectRecord, ObjectVersion, PartInfo, PendingWrite, Segment,
    UploadInfo, UploadListing, VersionEntry, VersionListing, VersionQuery, Versioning,
};
use serde_json::{Value, json};

use crate::{
    admin::{Client, Connection, Failure, Method},
    data::{self, Backend, DataError, Target},
};

/// Largest object (S3's limit): the extent of an owner's address space the data path accepts.
const OBJECT_BYTES_MAX: u64 = 5 << 40;

/// How long a bucket's placement (pool id and PG count) is trusted.
const PLACEMENT_FRESH: Duration = Duration::from_secs(2);

/// How long a call retries while the metadata group has no leader (503).
const RETRY_FOR: Duration = Duration::from_secs(15);

/// Largest admin API answer read in process (a listing page of 1,000 keys with their
/// records is well under it).
const ANSWER_BYTES_MAX: usize = 64 << 20;

/// How the gateway reaches the admin API.
#[derive(Clone)]
enum Api {
    /// Over HTTP, following the leader (a gateway process of its own).
    Http(Arc<Client>),
    /// The admin API's router in this process (`cairn dev`): the same routes, JSON and token
    /// check, without a socket, an HTTP parser or a blocking thread per call. A profile of
    /// 4 KiB GETs had the loopback HTTP hop (thread hand-offs, two HTTP stacks) as the largest
    /// cost after the request itself.
    Local { router: Router, token: String },
}

/// The cluster over the admin API and the data plane `backend`.
#[derive(Clone)]
pub struct S3Cluster<B> {
    api: Api,
    backend: B,
    placements: Arc<std::sync::Mutex<BTreeMap<String, (Placement, std::time::Instant)>>>,
    tokens: Arc<Tokens>,
}

/// Tokens for the object writes this gateway proposes, so that a call retried after its
/// first try committed is not applied twice (`cairn_metadata::objects::Request`): a random
/// start and a counter. The metadata service compares a token only with the newest version
/// of the key written, so uniqueness within a gateway is what matters.
struct Tokens(std::sync::atomic::AtomicU64);

impl Tokens {
    fn new() -> Tokens {
        use std::hash::{BuildHasher, Hasher};
        // std seeds every RandomState from the operating system's randomness.
        let seed = std::hash::RandomState::new().build_hasher().finish();
        Tokens(std::sync::atomic::AtomicU64::new(seed))
    }

    fn next(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

#[derive(Clone, Copy)]
struct Placement {
    pool: PoolId,
    pg_count: u32,
}

/// Percent-encodes one path segment or query value (everything but RFC 3986 unreserved).
fn enc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn failed(what: &str) -> ClusterError {
    ClusterError::Failed(format!(
        "the metadata service answered {what} in an unexpected shape"
    ))
}

fn text(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or_default().to_string()
}

fn number(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or_default()
}

/// A string field, `None` when absent or null.
fn optional(value: &Value, key: &str) -> Option<String> {
    value[key].as_str().map(str::to_string)
}

fn versioning(value: &Value) -> Versioning {
    match value["versioning"].as_str() {
        Some("enabled") => Versioning::Enabled,
        Some("suspended") => Versioning::Suspended,
        _ => Versioning::Unversioned,
    }
}

fn version_entry(value: &Value) -> VersionEntry {
    VersionEntry {
        key: text(value, "key"),
        version_id: text(value, "version_id"),
        is_latest: value["is_latest"].as_bool().unwrap_or(false),
        delete_marker: value["delete_marker"].as_bool().unwrap_or(false),
        modified_ms: number(value, "modified_ms"),
        size: number(value, "size"),
        etag: text(value, "etag"),
    }
}

fn data_error(e: DataError) -> ClusterError {
    match e {
        DataError::Unavailable(m) => ClusterError::Unavailable(m),
        DataError::NotFound(m) => ClusterError::NotFound(m),
        DataError::BadRequest(m) => ClusterError::Invalid(m),
        DataError::Failed(m) => ClusterError::Failed(m),
    }
}

/// An object record as the admin API carries it: inline bytes in base64.
fn record_json(record: &ObjectRecord) -> Value {
    let data = match &record.data {
        ObjectData::Inline(bytes) => json!({ "Inline": { "data": base64(bytes) } }),
        ObjectData::Segments(segments) => json!({
            "Segments": segments
                .iter()
                .map(|s| json!({ "owner": s.owner, "length": s.length }))
                .collect::<Vec<_>>()
        }),
    };
    let mut value = json!({
        "size": record.size,
        "etag": record.etag,
        "modified_ms": record.modified_ms,
        "data": data,
    });
    if let Some(content_type) = &record.content_type {
        value["content_type"] = json!(content_type);
    }
    if !record.metadata.is_empty() {
        value["metadata"] = json!(record.metadata);
    }
    if let Some(acl) = &record.acl {
        value["acl"] = json!(acl);
    }
    value
}

fn parse_record(value: &Value) -> ClusterResult<ObjectRecord> {
    let data = &value["data"];
    let data = if let Some(inline) = data.get("Inline") {
        let encoded = inline["data"].as_str().ok_or_else(|| failed("an object"))?;
        ObjectData::Inline(unbase64(encoded).ok_or_else(|| failed("inline data"))?)
    } else if let Some(segments) = data.get("Segments").and_then(Value::as_array) {
        ObjectData::Segments(
            segments
                .iter()
                .map(|s| Segment {
                    owner: number(s, "owner"),
                    length: number(s, "length"),
                })
                .collect(),
        )
    } else {
        return Err(failed("an object"));
    };
    Ok(ObjectRecord {
        size: number(value, "size"),
        etag: text(value, "etag"),
        modified_ms: number(value, "modified_ms"),
        content_type: value["content_type"].as_str().map(str::to_string),
        metadata: serde_json::from_value(value["metadata"].clone()).unwrap_or_default(),
        data,
        acl: value["acl"].as_str().map(str::to_string),
    })
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unbase64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn upload_info(value: &Value) -> UploadInfo {
    UploadInfo {
        upload_id: text(value, "upload_id"),
        bucket: text(value, "bucket"),
        key: text(value, "key"),
        created_ms: number(value, "created_ms"),
        content_type: value["content_type"].as_str().map(str::to_string),
        metadata: serde_json::from_value(value["metadata"].clone()).unwrap_or_default(),
        parts: value["parts"]
            .as_array()
            .map(|parts| {
                parts
                    .iter()
                    .map(|p| PartInfo {
                        part_number: number(p, "part_number") as u32,
                        etag: text(p, "etag"),
                        size: number(p, "size"),
                        modified_ms: number(p, "modified_ms"),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

impl<B: Backend> S3Cluster<B> {
    /// The cluster behind the admin API at `connection`, with bytes through `backend`.
    pub fn new(connection: &Connection, backend: B) -> Result<S3Cluster<B>, String> {
        let api = Client::new(connection).map_err(|Failure(m)| m)?;
        Ok(S3Cluster {
            api: Api::Http(Arc::new(api)),
            backend,
            placements: Arc::default(),
            tokens: Arc::new(Tokens::new()),
        })
    }

    /// The cluster behind `router`, the admin API of this process, which checks `token`.
    pub fn local(router: Router, token: String, backend: B) -> S3Cluster<B> {
        S3Cluster {
            api: Api::Local { router, token },
            backend,
            placements: Arc::default(),
            tokens: Arc::new(Tokens::new()),
        }
    }

    /// One admin API call; statuses of 300 and above become errors.
    async fn call(&self, path: String, method: Method) -> ClusterResult<Value> {
        let answer = match &self.api {
            Api::Http(client) => {
                // ureq blocks: off the async threads.
                let client = client.clone();
                tokio::task::spawn_blocking(move || client.request(&path, &method))
                    .await
                    .map_err(|e| ClusterError::Failed(format!("admin call: {e}")))?
            }
            Api::Local { router, token } => local_call(router, token, &path, &method).await,
        };
        let (status, body) = answer.map_err(ClusterError::Unavailable)?;
        let message = || text(&body, "error");
        match status {
            200..=299 => Ok(body),
            404 => Err(ClusterError::NotFound(message())),
            // A bucket name taken names its tenant; "still holds" is a bucket (or tenant) that
            // is not empty; other conflicts are names taken.
            409 if body.get("tenant").is_none() && message().contains("still holds") => {
                Err(ClusterError::NotEmpty(message()))
            }
            409 => Err(ClusterError::Exists {
                message: message(),
                tenant: body["tenant"].as_str().map(str::to_string),
            }),
            400 if body["code"].is_string() => Err(ClusterError::Refused {
                code: text(&body, "code"),
                message: message(),
            }),
            400 => Err(ClusterError::Invalid(message())),
            // A conditional command whose condition no longer holds.
            412 => Err(ClusterError::Refused {
                code: "PreconditionFailed".into(),
                message: message(),
            }),
            503 => Err(ClusterError::Unavailable(message())),
            _ => Err(ClusterError::Failed(format!("{status}: {}", message()))),
        }
    }

    /// Where `bucket`'s chunks go.
    async fn placement(&self, bucket: &str) -> ClusterResult<Placement> {
        let cached = self
            .placements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(bucket)
            .copied();
        if let Some((placement, at)) = cached
            && at.elapsed() < PLACEMENT_FRESH
        {
            return Ok(placement);
        }
        let value = self
            .call(format!("/v1/buckets/{}", enc(bucket)), Method::Get)
            .await?;
        let placement = Placement {
            pool: PoolId(number(&value, "pool_id") as u32),
            pg_count: number(&value, "pg_count") as u32,
        };
        if placement.pg_count == 0 {
            return Err(failed("a bucket"));
        }
        let mut placements = self.placements.lock().unwrap_or_else(|p| p.into_inner());
        if placements.len() >= 4096 {
            placements.clear();
        }
        placements.insert(bucket.to_string(), (placement, std::time::Instant::now()));
        Ok(placement)
    }

    fn target(placement: Placement, owner: u64) -> Target {
        Target {
            owner: OwnerId(owner),
            pool: placement.pool,
            pg_count: placement.pg_count,
            size_bytes: OBJECT_BYTES_MAX,
        }
    }
}

/// One call to the admin API's router in this process, retried while the metadata group
/// elects a leader (503), as [`Client::request`] retries over HTTP.
async fn local_call(
    router: &Router,
    token: &str,
    path: &str,
    method: &Method,
) -> Result<(u16, Value), String> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        let (verb, json) = match method {
            Method::Get => ("GET", None),
            Method::Delete => ("DELETE", None),
            Method::Post(v) => ("POST", Some(v)),
            Method::Put(v) => ("PUT", Some(v)),
        };
        let builder = Request::builder()
            .method(verb)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let request = match json {
            Some(v) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string())),
            None => builder.body(Body::empty()),
        }
        .map_err(|e| format!("{path}: {e}"))?;
        let response = match router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), ANSWER_BYTES_MAX)
            .await
            .map_err(|e| format!("{path}: reading the answer: {e}"))?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({ "error": "the server sent no JSON" }));
        if status != 503 || started.elapsed() >= RETRY_FOR {
            return Ok((status, body));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

impl<B: Backend> Cluster for S3Cluster<B> {
    async fn access_key(&self, id: String) -> ClusterResult<Option<KeyInfo>> {
        match self
            .call(format!("/v1/s3/keys/{}", enc(&id)), Method::Get)
            .await
        {
            Ok(value) => Ok(Some(KeyInfo {
                tenant: text(&value, "tenant"),
                secret: text(&value, "secret_key").into(),
            })),
            Err(ClusterError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create_bucket(&self, tenant: String, name: String) -> ClusterResult<()> {
        let body = json!({ "name": name, "tenant": tenant });
        self.call("/v1/buckets".into(), Method::Post(body)).await?;
        Ok(())
    }

    async fn bucket(&self, name: String) -> ClusterResult<Option<BucketInfo>> {
        match self
            .call(format!("/v1/buckets/{}", enc(&name)), Method::Get)
            .await
        {
            Ok(value) => Ok(Some(BucketInfo {
                name,
                tenant: text(&value, "tenant"),
                created_ms: number(&value, "created_ms"),
                versioning: versioning(&value),
                documents: serde_json::from_value(value["documents"].clone()).unwrap_or_default(),
            })),
            Err(ClusterError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn buckets(&self, tenant: String) -> ClusterResult<Vec<BucketInfo>> {
        let path = if tenant.is_empty() {
            "/v1/buckets".to_string()
        } else {
            format!("/v1/buckets?tenant={}", enc(&tenant))
        };
        let value = self.call(path, Method::Get).await?;
        let list = value.as_array().ok_or_else(|| failed("a bucket list"))?;
        Ok(list
            .iter()
            .map(|b| BucketInfo {
                name: text(b, "name"),
                tenant: text(b, "tenant"),
                created_ms: number(b, "created_ms"),
                versioning: versioning(b),
                documents: serde_json::from_value(b["documents"].clone()).unwrap_or_default(),
            })
            .collect())
    }

    async fn set_object_acl(
        &self,
        bucket: String,
        key: String,
        version_id: Option<String>,
        acl: Option<String>,
    ) -> ClusterResult<()> {
        let mut path = format!("/v1/buckets/{}/object/acl?key={}", enc(&bucket), enc(&key));
        if let Some(version) = version_id {
            path.push_str(&format!("&version_id={}", enc(&version)));
        }
        self.call(path, Method::Put(json!({ "acl": acl }))).await?;
        Ok(())
    }

    async fn set_bucket_document(
        &self,
        bucket: String,
        kind: &'static str,
        document: Option<String>,
    ) -> ClusterResult<()> {
        let path = format!("/v1/buckets/{}/documents/{kind}", enc(&bucket));
        let method = match document {
            Some(document) => Method::Put(json!({ "document": document })),
            None => Method::Delete,
        };
        self.call(path, method).await?;
        Ok(())
    }

    async fn delete_bucket(&self, name: String) -> ClusterResult<()> {
        self.call(format!("/v1/buckets/{}", enc(&name)), Method::Delete)
            .await?;
        Ok(())
    }

    async fn set_versioning(&self, bucket: String, enabled: bool) -> ClusterResult<()> {
        let path = format!("/v1/buckets/{}/versioning", enc(&bucket));
        self.call(path, Method::Put(json!({ "enabled": enabled })))
            .await?;
        Ok(())
    }

    async fn object(
        &self,
        bucket: String,
        key: String,
        version_id: Option<String>,
    ) -> ClusterResult<Option<ObjectVersion>> {
        let mut path = format!("/v1/buckets/{}/object?key={}", enc(&bucket), enc(&key));
        if let Some(id) = &version_id {
            path.push_str(&format!("&version_id={}", enc(id)));
        }
        match self.call(path, Method::Get).await {
            Ok(value) => {
                let marker = value["delete_marker"].as_bool().unwrap_or(false);
                let record = if marker {
                    None
                } else {
                    Some(parse_record(&value)?)
                };
                Ok(Some(ObjectVersion {
                    version_id: optional(&value, "version_id"),
                    record,
                }))
            }
            Err(ClusterError::NotFound(m)) if !m.starts_with("bucket ") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_versions(
        &self,
        bucket: String,
        query: VersionQuery,
    ) -> ClusterResult<VersionListing> {
        let mut path = format!(
            "/v1/buckets/{}/versions?prefix={}&max={}",
            enc(&bucket),
            enc(&query.prefix),
            query.max
        );
        let optional_params = [
            ("delimiter", &query.delimiter),
            ("key_marker", &query.key_marker),
            ("version_id_marker", &query.version_id_marker),
        ];
        for (name, value) in optional_params {
            if let Some(value) = value {
                path.push_str(&format!("&{name}={}", enc(value)));
            }
        }
        let value = self.call(path, Method::Get).await?;
        let versions = value["versions"].as_array();
        let prefixes = value["prefixes"].as_array();
        Ok(VersionListing {
            versions: versions
                .map(|v| v.iter().map(version_entry).collect())
                .unwrap_or_default(),
            prefixes: prefixes
                .map(|p| {
                    p.iter()
                        .filter_map(|p| p.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            truncated: value["truncated"].as_bool().unwrap_or(false),
            next_key_marker: optional(&value, "next_key_marker"),
            next_version_id_marker: optional(&value, "next_version_id_marker"),
        })
    }

    async fn list(&self, bucket: String, query: ListQuery) -> ClusterResult<Listing> {
        let mut path = format!(
            "/v1/buckets/{}/objects?prefix={}&max={}",
            enc(&bucket),
            enc(&query.prefix),
            query.max
        );
        if let Some(delimiter) = &query.delimiter {
            path.push_str(&format!("&delimiter={}", enc(delimiter)));
        }
        if let Some(after) = &query.after {
            path.push_str(&format!("&after={}", enc(after)));
        }
        let value = self.call(path, Method::Get).await?;
        let strings = |key: &str| -> Vec<String> {
            value[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Listing {
            objects: value["objects"]
                .as_array()
                .map(|objects| {
                    objects
                        .iter()
                        .map(|o| ListEntry {
                            key: text(o, "key"),
                            size: number(o, "size"),
                            etag: text(o, "etag"),
                            modified_ms: number(o, "modified_ms"),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            prefixes: strings("prefixes"),
            truncated: value["truncated"].as_bool().unwrap_or(false),
            next: value["next"].as_str().map(str::to_string),
        })
    }

    async fn put_object(
        &self,
        bucket: String,
        key: String,
        record: ObjectRecord,
    ) -> ClusterResult<(ObjectRecord, Option<String>)> {
        let path = format!("/v1/buckets/{}/object?key={}", enc(&bucket), enc(&key));
        let mut body = record_json(&record);
        body["request"] = json!(self.tokens.next());
        let answer = self.call(path, Method::Put(body)).await?;
        // The metadata service sets the modification time; everything else is as sent.
        let modified_ms = answer["modified_ms"].as_u64().unwrap_or(record.modified_ms);
        let record = ObjectRecord {
            modified_ms,
            ..record
        };
        Ok((record, optional(&answer, "version_id")))
    }

    async fn delete_object(
        &self,
        bucket: String,
        key: String,
        version_id: Option<String>,
    ) -> ClusterResult<Deleted> {
        let mut path = format!("/v1/buckets/{}/object?key={}", enc(&bucket), enc(&key));
        match &version_id {
            Some(id) => path.push_str(&format!("&version_id={}", enc(id))),
            // Only a delete that adds a marker needs protecting from its own retry.
            None => path.push_str(&format!("&request={}", self.tokens.next())),
        }
        let answer = self.call(path, Method::Delete).await?;
        Ok(Deleted {
            version_id: optional(&answer, "version_id"),
            delete_marker: answer["delete_marker"].as_bool().unwrap_or(false),
        })
    }

    async fn expire_object(
        &self,
        bucket: String,
        key: String,
        newest: String,
    ) -> ClusterResult<Option<Deleted>> {
        let path = format!(
            "/v1/buckets/{}/object?key={}&if_newest={}&request={}",
            enc(&bucket),
            enc(&key),
            enc(&newest),
            self.tokens.next()
        );
        match self.call(path, Method::Delete).await {
            Ok(answer) => Ok(Some(Deleted {
                version_id: optional(&answer, "version_id"),
                delete_marker: answer["delete_marker"].as_bool().unwrap_or(false),
            })),
            Err(ClusterError::Refused { code, .. }) if code == "PreconditionFailed" => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn begin_write(&self, bucket: String) -> ClusterResult<u64> {
        let path = format!("/v1/buckets/{}/writes", enc(&bucket));
        let value = self.call(path, Method::Post(json!({}))).await?;
        value["owner"].as_u64().ok_or_else(|| failed("a write"))
    }

    async fn abandon(&self, owners: Vec<u64>, length: u64) -> ClusterResult<()> {
        let body = json!({ "owners": owners, "length": length });
        self.call("/v1/s3/abandon".into(), Method::Post(body))
            .await?;
        Ok(())
    }

    async fn write(
        &self,
        bucket: String,
        owner: u64,
        offset: u64,
        data: Vec<u8>,
    ) -> ClusterResult<()> {
        let placement = self.placement(&bucket).await?;
        data::write_range(
            &self.backend,
            &Self::target(placement, owner),
            offset,
            &data,
        )
        .await
        .map_err(data_error)
    }

    async fn read(
        &self,
        bucket: String,
        owner: u64,
        offset: u64,
        length: u64,
    ) -> ClusterResult<Vec<u8>> {
        let placement = self.placement(&bucket).await?;
        data::read_range(
            &self.backend,
            &Self::target(placement, owner),
            offset,
            length,
        )
        .await
        .map_err(data_error)
    }

    async fn create_upload(
        &self,
        bucket: String,
        key: String,
        content_type: Option<String>,
        metadata: BTreeMap<String, String>,
        acl: Option<String>,
    ) -> ClusterResult<String> {
        let path = format!("/v1/buckets/{}/uploads", enc(&bucket));
        let mut body = json!({ "key": key, "metadata": metadata });
        if let Some(content_type) = content_type {
            body["content_type"] = json!(content_type);
        }
        if let Some(acl) = acl {
            body["acl"] = json!(acl);
        }
        let value = self.call(path, Method::Post(body)).await?;
        value["upload_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| failed("an upload"))
    }

    async fn upload(&self, id: String) -> ClusterResult<Option<UploadInfo>> {
        match self
            .call(format!("/v1/uploads/{}", enc(&id)), Method::Get)
            .await
        {
            Ok(value) => {
                let mut upload = upload_info(&value);
                if upload.upload_id.is_empty() {
                    upload.upload_id = id;
                }
                Ok(Some(upload))
            }
            Err(ClusterError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn uploads(
        &self,
        bucket: String,
        prefix: String,
        after: Option<(String, String)>,
        max: u32,
    ) -> ClusterResult<UploadListing> {
        let mut path = format!(
            "/v1/buckets/{}/uploads?prefix={}&max={max}",
            enc(&bucket),
            enc(&prefix)
        );
        if let Some((key, upload)) = after {
            path.push_str(&format!(
                "&after_key={}&after_upload={}",
                enc(&key),
                enc(&upload)
            ));
        }
        let value = self.call(path, Method::Get).await?;
        Ok(UploadListing {
            uploads: value["uploads"]
                .as_array()
                .map(|u| u.iter().map(upload_info).collect())
                .unwrap_or_default(),
            truncated: value["truncated"].as_bool().unwrap_or(false),
        })
    }

    async fn put_part(
        &self,
        id: String,
        number: u32,
        segment: Segment,
        etag: String,
    ) -> ClusterResult<()> {
        let path = format!("/v1/uploads/{}/parts/{number}", enc(&id));
        let body = json!({ "owner": segment.owner, "length": segment.length, "etag": etag });
        self.call(path, Method::Put(body)).await?;
        Ok(())
    }

    async fn complete_upload(
        &self,
        id: String,
        bucket: String,
        key: String,
        parts: Vec<(u32, String)>,
        etag: String,
    ) -> ClusterResult<(ObjectRecord, Option<String>)> {
        let path = format!("/v1/uploads/{}/complete", enc(&id));
        let body = json!({ "parts": parts, "etag": etag, "bucket": bucket, "key": key,
            "request": self.tokens.next() });
        let value = self.call(path, Method::Post(body)).await?;
        let record = ObjectRecord {
            size: number(&value, "size"),
            etag: value["etag"].as_str().map_or(etag, str::to_string),
            modified_ms: number(&value, "modified_ms"),
            content_type: value["content_type"].as_str().map(str::to_string),
            metadata: BTreeMap::new(),
            data: ObjectData::Segments(Vec::new()),
            acl: None,
        };
        Ok((record, optional(&value, "version_id")))
    }

    async fn abort_upload(&self, id: String) -> ClusterResult<()> {
        self.call(format!("/v1/uploads/{}", enc(&id)), Method::Delete)
            .await?;
        Ok(())
    }

    async fn garbage(&self, max: u32) -> ClusterResult<Vec<Garbage>> {
        let value = self
            .call(format!("/v1/s3/garbage?max={max}"), Method::Get)
            .await?;
        let list = value.as_array().ok_or_else(|| failed("the garbage list"))?;
        Ok(list
            .iter()
            .map(|g| Garbage {
                owner: number(g, "owner"),
                pool: text(g, "pool"),
                pool_id: number(g, "pool_id") as u32,
                pg_count: number(g, "pg_count") as u32,
                length: number(g, "length"),
            })
            .collect())
    }

    async fn discard(&self, garbage: Garbage) -> ClusterResult<()> {
        if garbage.length == 0 {
            return Ok(());
        }
        let placement = Placement {
            pool: PoolId(garbage.pool_id),
            pg_count: garbage.pg_count,
        };
        if placement.pg_count == 0 {
            return Err(failed("a garbage entry"));
        }
        let target = Self::target(placement, garbage.owner);
        data::discard_range(
            &self.backend,
            &target,
            0,
            garbage.length.min(OBJECT_BYTES_MAX),
        )
        .await
        .map_err(data_error)
    }

    async fn reclaimed(&self, owners: Vec<u64>) -> ClusterResult<()> {
        let body = json!({ "owners": owners });
        self.call("/v1/s3/reclaimed".into(), Method::Post(body))
            .await?;
        Ok(())
    }

    async fn pending(&self, before_ms: u64) -> ClusterResult<Vec<PendingWrite>> {
        let value = self
            .call(
                format!("/v1/s3/pending?older_than_ms={before_ms}"),
                Method::Get,
            )
            .await?;
        let list = value.as_array().ok_or_else(|| failed("the pending list"))?;
        Ok(list
            .iter()
            .map(|p| PendingWrite {
                owner: number(p, "owner"),
                started_ms: number(p, "started_ms"),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_api_json() {
        let mut metadata = BTreeMap::new();
        metadata.insert("colour".to_string(), "blue".to_string());
        for data in [
            ObjectData::Inline(vec![0, 1, 2, 255]),
            ObjectData::Inline(Vec::new()),
            ObjectData::Segments(vec![
                Segment {
                    owner: 7,
                    length: 5 << 20,
                },
                Segment {
                    owner: 9,
                    length: 3,
                },
            ]),
        ] {
            let record = ObjectRecord {
                size: 4,
                etag: "abc".into(),
                modified_ms: 12,
                content_type: Some("text/plain".into()),
                metadata: metadata.clone(),
                data,
                acl: Some("{\"grants\":[]}".into()),
            };
            assert_eq!(parse_record(&record_json(&record)).unwrap(), record);
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(enc("a/b c&d=e?f#g%"), "a%2Fb%20c%26d%3De%3Ff%23g%25");
        assert_eq!(enc("photos-2026_01.jpg~"), "photos-2026_01.jpg~");
    }
}
