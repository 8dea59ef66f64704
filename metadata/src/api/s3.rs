//! Admin API routes for the S3 object index: what S3 gateways and the reclaim worker call.
//!
//! ```text
//! GET    /s3/keys/{id}                    {tenant, secret_key}: an access key, for SigV4
//! GET    /buckets?tenant=T                [bucket]; all buckets without a tenant
//! POST   /buckets                         {name, tenant, pool?="default"} -> 201 bucket
//! GET    /buckets/{name}                  bucket + {pool_id, pg_count}   DELETE -> 204
//! PUT    /buckets/{name}/versioning       {enabled} -> bucket
//! PUT    /buckets/{name}/quota            {bytes_max?, objects_max?} -> bucket (absent: no limit)
//! PUT    /buckets/{name}/documents/{kind} {document} -> bucket; kind: policy, cors, lifecycle
//! DELETE /buckets/{name}/documents/{kind} -> bucket
//! PUT    /buckets/{name}/object/acl?key=K&version_id=V  {acl: text|null} -> {}: an object
//!                                         version's ACL (the newest without version_id)
//! PUT    /tenants/{name}/quota            {bytes_max?, objects_max?} -> tenant
//! GET    /buckets/{name}/objects?prefix=&delimiter=&after=&max=    one listing page
//! GET    /buckets/{name}/versions?prefix=&delimiter=&key_marker=&version_id_marker=&max=
//!                                         {versions: [{key, version_id, is_latest,
//!                                         delete_marker, modified_ms, size?, etag?}], prefixes,
//!                                         truncated, next_key_marker, next_version_id_marker}
//! GET    /buckets/{name}/object?key=K&version_id=V   the newest version or version V: an
//!                                         object record + {key, version_id, delete_marker:
//!                                         false}, or {key, version_id, delete_marker: true,
//!                                         modified_ms}
//! PUT    /buckets/{name}/object?key=K     body: object record -> {version_id}
//! DELETE /buckets/{name}/object?key=K&version_id=V  -> {version_id, delete_marker}
//! POST   /buckets/{name}/writes           {owner}: a new owner to write chunks under
//! POST   /s3/abandon                      {owners, length} -> 204
//! GET    /s3/garbage?max=N                [{owner, pool, pool_id, pg_count, length}]
//! POST   /s3/reclaimed                    {owners} -> 204
//! GET    /s3/pending?older_than_ms=N&max=M  [{owner, bucket, started_ms}]
//! POST   /buckets/{name}/uploads          {key, content_type?, metadata?} -> {upload_id}
//! GET    /buckets/{name}/uploads?prefix=&after_key=&after_upload=&max=
//!                                         {uploads: [{key, upload_id, created_ms}], truncated}
//! GET    /uploads/{id}                    upload: {upload_id, bucket, key, created_ms,
//!                                         content_type, metadata, parts: [{part_number, etag,
//!                                         size, modified_ms}]}         DELETE -> 204
//! PUT    /uploads/{id}/parts/{n}          {owner, length, etag} -> {}
//! POST   /uploads/{id}/complete           {parts: [[n, etag], ...], etag} -> object record
//!                                         without data, + {key, version_id}
//! ```
//!
//! A bucket is `{name, id, tenant, pool, created_ms, objects, bytes, versioning, quota:
//! {bytes_max, objects_max}, documents: {policy?, cors?, lifecycle?}}`: `versioning` is "unversioned", "enabled" or "suspended";
//! `objects` and `bytes` count every stored version; a limit not set is null. A tenant is
//! `{name, id, access_keys, objects, bytes, quota}`, its usage summed over its buckets.
//! Version ids are S3's opaque text (`null` for the null version); answers give `version_id`
//! null in an unversioned bucket, where S3 reports none, and a malformed id is refused (400).
//! An object record is `{size, etag, modified_ms, content_type?, metadata?, data}` with `data`
//! either `{"Inline": {"data": "<standard base64, padded>"}}` or
//! `{"Segments": [{"owner": N, "length": N}, ...]}` (see [`crate::objects::ObjectData`]); on a
//! PUT, `modified_ms` may be left out (the server's clock sets it). A listing page is
//! `{objects: [{key, size, etag, modified_ms}], prefixes: [..], truncated, next}`, `next` the
//! last key or prefix returned when truncated (the next page's `after`), else null.
//!
//! Refusals S3 names answer `{"error": message, "code": "<S3 error code>"}`, HTTP 400 (503 for
//! SlowDown); a taken bucket name answers 409 `{"error": message, "tenant": "<owner>"}`. Query
//! parameters are percent-decoded (`+` is a space); unknown or repeated ones are refused.
//! Times are ms since the Unix epoch, drawn from this server's clock (the proposer's).

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::{Path, RawQuery, State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use cairn_common::OwnerId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Api, body, error, random_text, read, read_value, write};
use crate::{
    objects::{
        Bucket, DocumentKind, LIST_KEYS_MAX, ListQuery, OWNERS_PER_COMMAND_MAX, ObjectRecord,
        Quota, QuotaScope, Request, Segment, Version, VersionId, VersionQuery, Versioning,
    },
    state::{Applied, Command, MetaError, MetaState},
};

/// The pool a bucket created without one gets.
pub const DEFAULT_POOL: &str = "default";
/// Entries a garbage listing returns when not told.
const GARBAGE_LIST_DEFAULT: usize = 100;
/// Entries a pending listing returns when not told.
const PENDING_LIST_DEFAULT: usize = 1000;
/// Characters of a drawn upload id: 32 of 62 symbols carry 190 bits, unguessable.
const UPLOAD_ID_CHARS: usize = 32;

/// The routes, for [`super::router_with`] to merge.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/s3/keys/{id}", get(access_key))
        .route("/v1/s3/abandon", post(abandon))
        .route("/v1/s3/garbage", get(garbage))
        .route("/v1/s3/reclaimed", post(reclaimed))
        .route("/v1/s3/pending", get(pending))
        .route("/v1/buckets", get(list_buckets).post(create_bucket))
        .route("/v1/buckets/{name}", get(show_bucket).delete(delete_bucket))
        .route("/v1/buckets/{name}/objects", get(list_objects))
        .route("/v1/buckets/{name}/versions", get(list_versions))
        .route("/v1/buckets/{name}/versioning", put(set_versioning))
        .route("/v1/buckets/{name}/object/acl", put(set_object_acl))
        .route(
            "/v1/buckets/{name}/documents/{kind}",
            put(set_document).delete(remove_document),
        )
        .route("/v1/buckets/{name}/quota", put(set_bucket_quota))
        .route("/v1/tenants/{name}/quota", put(set_tenant_quota))
        .route(
            "/v1/buckets/{name}/object",
            get(show_object).put(put_object).delete(delete_object),
        )
        .route("/v1/buckets/{name}/writes", post(begin_write))
        .route(
            "/v1/buckets/{name}/uploads",
            get(list_uploads).post(create_upload),
        )
        .route("/v1/uploads/{id}", get(show_upload).delete(abort_upload))
        .route("/v1/uploads/{id}/parts/{number}", put(put_part))
        .route("/v1/uploads/{id}/complete", post(complete_upload))
}

/// Now, as commands carry it: this server proposes, so its clock is the one recorded.
fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    since.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn not_found(kind: &'static str, name: String) -> MetaError {
    MetaError::NotFound { kind, name }
}

/// Decodes one query component: `%XX` escapes and `+` for a space, then UTF-8.
fn decode_component(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                at += 3;
            }
            b'+' => {
                out.push(b' ');
                at += 1;
            }
            b => {
                out.push(b);
                at += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A query string's parameters, decoded; each at most once and among `allowed`.
fn parse_query(raw: Option<&str>, allowed: &[&str]) -> Result<BTreeMap<String, String>, String> {
    let mut params = BTreeMap::new();
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode_component(name).ok_or("a parameter name is not percent-encoded UTF-8")?;
        let Some(value) = decode_component(value) else {
            return Err(format!("parameter {name}: not percent-encoded UTF-8"));
        };
        if !allowed.contains(&name.as_str()) {
            return Err(format!(
                "unknown parameter {name:?} (known: {})",
                allowed.join(", ")
            ));
        }
        if params.insert(name.clone(), value).is_some() {
            return Err(format!("parameter {name} given twice"));
        }
    }
    Ok(params)
}

/// The query's parameters, a bad query answered 400.
fn query(raw: &Option<String>, allowed: &[&str]) -> Result<BTreeMap<String, String>, Response> {
    parse_query(raw.as_deref(), allowed).map_err(|e| error(StatusCode::BAD_REQUEST, e))
}

/// A numeric parameter: `default` when absent, at most `max`.
fn number(
    params: &BTreeMap<String, String>,
    name: &str,
    default: u64,
    max: u64,
) -> Result<u64, Response> {
    let Some(text) = params.get(name) else {
        return Ok(default);
    };
    let value: u64 = text.parse().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            format!("parameter {name}: a non-negative integer"),
        )
    })?;
    Ok(value.min(max))
}

/// The `key` parameter, required.
fn object_key(raw: &Option<String>) -> Result<String, Response> {
    object_version_key(raw, &["key"]).map(|(key, _)| key)
}

/// A version id's text parsed; a malformed one answered 400.
fn version_id(text: &str) -> Result<VersionId, Response> {
    VersionId::parse(text).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            format!("version id {text:?}: not one this service gave"),
        )
    })
}

/// The `key` parameter, required, and `version_id`, optional (if `allowed`).
fn object_version_key(
    raw: &Option<String>,
    allowed: &[&str],
) -> Result<(String, Option<VersionId>), Response> {
    key_and_version(&mut query(raw, allowed)?)
}

/// Takes the `key` parameter, required, and `version_id`, optional, out of `params`.
fn key_and_version(
    params: &mut BTreeMap<String, String>,
) -> Result<(String, Option<VersionId>), Response> {
    let key = params
        .remove("key")
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "parameter key is required"))?;
    let version = params.remove("version_id").map(|v| version_id(&v));
    Ok((key, version.transpose()?))
}

/// A version id as answers carry it: null in an unversioned bucket.
fn version_json(versioning: Versioning, id: VersionId) -> Value {
    if versioning.is_unversioned() {
        Value::Null
    } else {
        json!(id.text())
    }
}

fn quota_json(quota: &Quota) -> Value {
    json!({ "bytes_max": quota.bytes_max, "objects_max": quota.objects_max })
}

fn bucket_json(name: &str, bucket: &Bucket) -> Value {
    json!({
        "name": name,
        "id": bucket.id.0,
        "tenant": bucket.tenant,
        "pool": bucket.pool,
        "created_ms": bucket.created_ms,
        "objects": bucket.objects,
        "bytes": bucket.bytes,
        "versioning": bucket.versioning.as_str(),
        "quota": quota_json(&bucket.quota),
        "documents": bucket
            .documents
            .iter()
            .map(|(kind, text)| (kind.as_str().to_string(), json!(text)))
            .collect::<serde_json::Map<_, _>>(),
    })
}

/// A tenant as JSON: its keys, its usage summed over its buckets and its limits.
pub(super) fn tenant_json(state: &MetaState, name: &str) -> Result<Value, MetaError> {
    let tenant = state
        .tenant(name)
        .ok_or_else(|| not_found("tenant", name.to_string()))?;
    let keys: Vec<&String> = state
        .access_keys()
        .filter(|(_, key)| key.tenant == name)
        .map(|(id, _)| id)
        .collect();
    let usage = state.tenant_usage(name);
    Ok(json!({
        "name": name,
        "id": tenant.id.0,
        "access_keys": keys,
        "objects": usage.objects,
        "bytes": usage.bytes,
        "quota": quota_json(&tenant.quota),
    }))
}

/// An object record as JSON with its key; `data` left out unless `with_data`.
fn object_json(key: &str, record: &ObjectRecord, with_data: bool) -> Value {
    let mut value =
        serde_json::to_value(record).expect("invariant: object records serialize to JSON");
    value["key"] = json!(key);
    if let Some(fields) = value.as_object_mut() {
        // The writer's retry token is the metadata service's business alone.
        fields.remove("request");
        if !with_data {
            fields.remove("data");
        }
    }
    value
}

/// The pool id and PG count of `pool`, which chunk placement needs.
fn placement(state: &MetaState, pool: &str) -> Result<(u32, u32), MetaError> {
    let found = state
        .pool(pool)
        .ok_or_else(|| not_found("pool", pool.to_string()))?;
    Ok((found.id.0, found.policy.pg_count))
}

async fn access_key(State(api): State<Api>, Path(id): Path<String>) -> Response {
    read(&api, move |state| {
        let key = state
            .access_key(&id)
            .ok_or_else(|| not_found("access key", id.clone()))?;
        Ok(json!({ "tenant": key.tenant, "secret_key": key.secret_key.expose() }))
    })
    .await
}

async fn list_buckets(
    State(api): State<Api>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Response> {
    let tenant = query(&raw, &["tenant"])?.remove("tenant");
    Ok(read(&api, move |state| {
        let buckets = state
            .buckets()
            .filter(|(_, b)| tenant.as_ref().is_none_or(|t| *t == b.tenant))
            .map(|(name, bucket)| bucket_json(name, bucket));
        Ok(Value::Array(buckets.collect()))
    })
    .await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBucket {
    name: String,
    tenant: String,
    pool: Option<String>,
}

async fn create_bucket(
    State(api): State<Api>,
    parsed: Result<Json<CreateBucket>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let command = Command::CreateBucket {
        name: request.name.clone(),
        tenant: request.tenant,
        pool: request.pool.unwrap_or_else(|| DEFAULT_POOL.to_string()),
        now_ms: now_ms(),
    };
    write(&api, command).await?;
    let name = request.name;
    let view = read_value(&api, move |state| {
        let bucket = state
            .bucket(&name)
            .ok_or_else(|| not_found("bucket", name.clone()))?;
        Ok(bucket_json(&name, bucket))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn show_bucket(State(api): State<Api>, Path(name): Path<String>) -> Response {
    read(&api, move |state| {
        let bucket = state
            .bucket(&name)
            .ok_or_else(|| not_found("bucket", name.clone()))?;
        let (pool_id, pg_count) = placement(state, &bucket.pool)?;
        let mut view = bucket_json(&name, bucket);
        view["pool_id"] = json!(pool_id);
        view["pg_count"] = json!(pg_count);
        Ok(view)
    })
    .await
}

async fn delete_bucket(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Response, Response> {
    write(&api, Command::DeleteBucket { name }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_objects(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Response> {
    let mut params = query(&raw, &["prefix", "delimiter", "after", "max"])?;
    let max = number(&params, "max", LIST_KEYS_MAX as u64, LIST_KEYS_MAX as u64)? as usize;
    let prefix = params.remove("prefix").unwrap_or_default();
    let delimiter = params.remove("delimiter").unwrap_or_default();
    let after = params.remove("after").unwrap_or_default();
    Ok(read(&api, move |state| {
        let query = ListQuery {
            prefix: &prefix,
            delimiter: &delimiter,
            after: &after,
            max,
        };
        let listing = state.list_objects(&name, &query)?;
        let objects: Vec<Value> = listing
            .objects
            .iter()
            .map(|(key, record)| {
                json!({
                    "key": key,
                    "size": record.size,
                    "etag": record.etag,
                    "modified_ms": record.modified_ms,
                })
            })
            .collect();
        Ok(json!({
            "objects": objects,
            "prefixes": listing.prefixes,
            "truncated": listing.truncated,
            "next": listing.next,
        }))
    })
    .await)
}

async fn show_object(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Response> {
    let (key, version) = object_version_key(&raw, &["key", "version_id"])?;
    Ok(read(&api, move |state| {
        let Some(bucket) = state.bucket(&name) else {
            return Err(not_found("bucket", name));
        };
        let versioning = bucket.versioning;
        let missing = || match version {
            Some(id) => not_found("version", format!("{name}/{key} {}", id.text())),
            None => not_found("object", format!("{name}/{key}")),
        };
        let found = state.object_version(&name, &key, version);
        let found = found.ok_or_else(missing)?;
        let mut value = match found {
            Version::Object { record, .. } => object_json(&key, record, true),
            Version::DeleteMarker { modified_ms, .. } => {
                json!({ "key": key, "modified_ms": modified_ms })
            }
        };
        value["version_id"] = version_json(versioning, found.id());
        value["delete_marker"] = json!(found.record().is_none());
        Ok(value)
    })
    .await)
}

async fn put_object(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    parsed: Result<Json<ObjectRecord>, JsonRejection>,
) -> Result<Response, Response> {
    let key = object_key(&raw)?;
    let record = body(parsed)?;
    let command = Command::PutObject {
        bucket: name,
        key,
        record,
        now_ms: now_ms(),
    };
    let applied = write(&api, command).await?;
    Ok(Json(written_json(&applied)).into_response())
}

/// `{version_id}` of an object written.
fn written_json(applied: &Applied) -> Value {
    match applied {
        Applied::Written { version } => json!({ "version_id": version.map(VersionId::text) }),
        _ => json!({ "version_id": null }),
    }
}

async fn delete_object(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Response> {
    let mut params = query(&raw, &["key", "version_id", "request", "if_newest"])?;
    let if_newest = params
        .remove("if_newest")
        .map(|v| version_id(&v))
        .transpose()?;
    let (key, version_id) = key_and_version(&mut params)?;
    let request = params
        .remove("request")
        .map(|text| {
            text.parse().map(Request).map_err(|_| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("request {text:?}: not a token (a decimal u64)"),
                )
            })
        })
        .transpose()?;
    let command = Command::DeleteObject {
        bucket: name,
        key,
        version_id,
        now_ms: now_ms(),
        request,
        if_newest,
    };
    let (version, marker) = match write(&api, command).await? {
        Applied::Deleted { version, marker } => (version, marker),
        _ => (None, false),
    };
    let view = json!({ "version_id": version.map(VersionId::text), "delete_marker": marker });
    Ok(Json(view).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetAcl {
    acl: Option<String>,
}

async fn set_object_acl(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    parsed: Result<Json<SetAcl>, JsonRejection>,
) -> Result<Response, Response> {
    let (key, version_id) = object_version_key(&raw, &["key", "version_id"])?;
    let request = body(parsed)?;
    let command = Command::SetObjectAcl {
        bucket: name,
        key,
        version_id,
        acl: request.acl,
    };
    write(&api, command).await?;
    Ok(Json(json!({})).into_response())
}

async fn list_versions(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Response> {
    let allowed = [
        "prefix",
        "delimiter",
        "key_marker",
        "version_id_marker",
        "max",
    ];
    let mut params = query(&raw, &allowed)?;
    let max = number(&params, "max", LIST_KEYS_MAX as u64, LIST_KEYS_MAX as u64)? as usize;
    let prefix = params.remove("prefix").unwrap_or_default();
    let delimiter = params.remove("delimiter").unwrap_or_default();
    let key_marker = params.remove("key_marker").unwrap_or_default();
    let marker = params.remove("version_id_marker").filter(|m| !m.is_empty());
    let version_marker = marker.map(|m| version_id(&m)).transpose()?;
    Ok(read(&api, move |state| {
        let query = VersionQuery {
            prefix: &prefix,
            delimiter: &delimiter,
            key_marker: &key_marker,
            version_marker,
            max,
        };
        let listing = state.list_object_versions(&name, &query)?;
        let versions: Vec<Value> = listing
            .versions
            .iter()
            .map(|listed| {
                let version = listed.version;
                let mut entry = json!({
                    "key": listed.key,
                    "version_id": version.id().text(),
                    "is_latest": listed.latest,
                    "delete_marker": version.record().is_none(),
                    "modified_ms": version.modified_ms(),
                });
                if let Some(record) = version.record() {
                    entry["size"] = json!(record.size);
                    entry["etag"] = json!(record.etag);
                }
                entry
            })
            .collect();
        Ok(json!({
            "versions": versions,
            "prefixes": listing.prefixes,
            "truncated": listing.truncated,
            "next_key_marker": listing.next_key,
            "next_version_id_marker": listing.next_version.map(VersionId::text),
        }))
    })
    .await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetDocument {
    document: String,
}

async fn set_document(
    State(api): State<Api>,
    Path((name, kind)): Path<(String, String)>,
    parsed: Result<Json<SetDocument>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    change_document(api, name, kind, Some(request.document)).await
}

async fn remove_document(
    State(api): State<Api>,
    Path((name, kind)): Path<(String, String)>,
) -> Result<Response, Response> {
    change_document(api, name, kind, None).await
}

async fn change_document(
    api: Api,
    name: String,
    kind: String,
    document: Option<String>,
) -> Result<Response, Response> {
    let kind = DocumentKind::parse(&kind).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("no bucket document {kind:?}: policy, cors or lifecycle"),
        )
    })?;
    let command = Command::SetBucketDocument {
        bucket: name.clone(),
        kind,
        document,
    };
    write(&api, command).await?;
    Ok(read(&api, move |state| {
        let bucket = state
            .bucket(&name)
            .ok_or_else(|| not_found("bucket", name.clone()))?;
        Ok(bucket_json(&name, bucket))
    })
    .await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetVersioning {
    enabled: bool,
}

async fn set_versioning(
    State(api): State<Api>,
    Path(name): Path<String>,
    parsed: Result<Json<SetVersioning>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let command = Command::SetBucketVersioning {
        bucket: name.clone(),
        enabled: request.enabled,
    };
    write(&api, command).await?;
    Ok(read(&api, move |state| {
        let bucket = state
            .bucket(&name)
            .ok_or_else(|| not_found("bucket", name.clone()))?;
        Ok(bucket_json(&name, bucket))
    })
    .await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetQuota {
    bytes_max: Option<u64>,
    objects_max: Option<u64>,
}

async fn set_bucket_quota(
    State(api): State<Api>,
    Path(name): Path<String>,
    parsed: Result<Json<SetQuota>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let command = Command::SetQuota {
        scope: QuotaScope::Bucket(name.clone()),
        bytes_max: request.bytes_max,
        objects_max: request.objects_max,
    };
    write(&api, command).await?;
    Ok(read(&api, move |state| {
        let bucket = state
            .bucket(&name)
            .ok_or_else(|| not_found("bucket", name.clone()))?;
        Ok(bucket_json(&name, bucket))
    })
    .await)
}

async fn set_tenant_quota(
    State(api): State<Api>,
    Path(name): Path<String>,
    parsed: Result<Json<SetQuota>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let command = Command::SetQuota {
        scope: QuotaScope::Tenant(name.clone()),
        bytes_max: request.bytes_max,
        objects_max: request.objects_max,
    };
    write(&api, command).await?;
    Ok(read(&api, move |state| tenant_json(state, &name)).await)
}

async fn begin_write(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Response, Response> {
    let command = Command::BeginWrite {
        bucket: name,
        now_ms: now_ms(),
    };
    match write(&api, command).await? {
        Applied::Owner(owner) => Ok(Json(json!({ "owner": owner.0 })).into_response()),
        other => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("BeginWrite applied as {other:?}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Abandon {
    owners: Vec<u64>,
    length: u64,
}

async fn abandon(
    State(api): State<Api>,
    parsed: Result<Json<Abandon>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let command = Command::AbandonWrites {
        owners: request.owners.into_iter().map(OwnerId).collect(),
        length: request.length,
    };
    write(&api, command).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reclaimed {
    owners: Vec<u64>,
}

async fn reclaimed(
    State(api): State<Api>,
    parsed: Result<Json<Reclaimed>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let command = Command::ReclaimDone {
        owners: request.owners.into_iter().map(OwnerId).collect(),
    };
    write(&api, command).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn garbage(State(api): State<Api>, RawQuery(raw): RawQuery) -> Result<Response, Response> {
    let params = query(&raw, &["max"])?;
    let limit = OWNERS_PER_COMMAND_MAX as u64;
    let max = number(&params, "max", GARBAGE_LIST_DEFAULT as u64, limit)? as usize;
    Ok(read(&api, move |state| {
        let mut entries = Vec::new();
        for (owner, garbage) in state.garbage().take(max) {
            let (pool_id, pg_count) = placement(state, &garbage.pool)?;
            entries.push(json!({
                "owner": owner.0,
                "pool": garbage.pool,
                "pool_id": pool_id,
                "pg_count": pg_count,
                "length": garbage.length,
            }));
        }
        Ok(Value::Array(entries))
    })
    .await)
}

async fn pending(State(api): State<Api>, RawQuery(raw): RawQuery) -> Result<Response, Response> {
    let params = query(&raw, &["older_than_ms", "max"])?;
    let older_than_ms = number(&params, "older_than_ms", 0, u64::MAX)?;
    let limit = OWNERS_PER_COMMAND_MAX as u64;
    let max = number(&params, "max", PENDING_LIST_DEFAULT as u64, limit)? as usize;
    let now = now_ms();
    Ok(read(&api, move |state| {
        let old = state
            .pending_writes()
            .filter(|(_, w)| now.saturating_sub(w.started_ms) >= older_than_ms)
            .take(max)
            .map(|(owner, w)| {
                json!({ "owner": owner.0, "bucket": w.bucket, "started_ms": w.started_ms })
            });
        Ok(Value::Array(old.collect()))
    })
    .await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUpload {
    key: String,
    content_type: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    acl: Option<String>,
}

async fn create_upload(
    State(api): State<Api>,
    Path(name): Path<String>,
    parsed: Result<Json<CreateUpload>, JsonRejection>,
) -> Result<Response, Response> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let request = body(parsed)?;
    let upload_id = random_text(ALPHABET, UPLOAD_ID_CHARS)?;
    let command = Command::CreateUpload {
        bucket: name,
        key: request.key,
        upload_id: upload_id.clone(),
        content_type: request.content_type,
        metadata: request.metadata,
        now_ms: now_ms(),
        acl: request.acl,
    };
    write(&api, command).await?;
    Ok(Json(json!({ "upload_id": upload_id })).into_response())
}

async fn list_uploads(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Response> {
    let mut params = query(&raw, &["prefix", "after_key", "after_upload", "max"])?;
    let max = number(&params, "max", LIST_KEYS_MAX as u64, LIST_KEYS_MAX as u64)? as usize;
    let prefix = params.remove("prefix").unwrap_or_default();
    let after_key = params.remove("after_key").unwrap_or_default();
    let after_upload = params.remove("after_upload");
    Ok(read(&api, move |state| {
        let after_upload = after_upload.as_deref();
        let listing = state.list_uploads(&name, &prefix, &after_key, after_upload, max)?;
        let uploads: Vec<Value> = listing
            .uploads
            .iter()
            .map(|(key, id, upload)| {
                json!({ "key": key, "upload_id": id, "created_ms": upload.created_ms })
            })
            .collect();
        Ok(json!({ "uploads": uploads, "truncated": listing.truncated }))
    })
    .await)
}

async fn show_upload(State(api): State<Api>, Path(id): Path<String>) -> Response {
    read(&api, move |state| {
        let upload = state
            .upload(&id)
            .ok_or_else(|| not_found("upload", id.clone()))?;
        let parts: Vec<Value> = upload
            .parts
            .iter()
            .map(|(number, part)| {
                json!({
                    "part_number": number,
                    "etag": part.etag,
                    "size": part.segment.length,
                    "modified_ms": part.modified_ms,
                })
            })
            .collect();
        Ok(json!({
            "upload_id": id,
            "bucket": upload.bucket,
            "key": upload.key,
            "created_ms": upload.created_ms,
            "content_type": upload.content_type,
            "metadata": upload.metadata,
            "parts": parts,
        }))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutPart {
    owner: u64,
    length: u64,
    etag: String,
}

async fn put_part(
    State(api): State<Api>,
    Path((id, number)): Path<(String, String)>,
    parsed: Result<Json<PutPart>, JsonRejection>,
) -> Result<Response, Response> {
    let part_number: u32 = number.parse().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            format!("part number {number:?}: a positive integer"),
        )
    })?;
    let request = body(parsed)?;
    let command = Command::PutPart {
        upload_id: id,
        part_number,
        segment: Segment {
            owner: OwnerId(request.owner),
            length: request.length,
        },
        etag: request.etag,
        now_ms: now_ms(),
    };
    write(&api, command).await?;
    Ok(Json(json!({})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteUpload {
    parts: Vec<(u32, String)>,
    etag: String,
    /// The gateway's token for the request, with the bucket and key the S3 request named:
    /// a retry that finds the upload gone answers as the first try if the key's newest
    /// version was completed with this token.
    request: Option<Request>,
    bucket: Option<String>,
    key: Option<String>,
}

/// The answer to a completion retried after its first try committed (see
/// [`CompleteUpload`]); `None` if `asked` is not such a retry.
async fn completed_before(
    api: &Api,
    request: Option<Request>,
    bucket: Option<&str>,
    key: Option<&str>,
) -> Option<Response> {
    let (Some(request), Some(bucket), Some(key)) = (request, bucket, key) else {
        return None;
    };
    let (bucket, key) = (bucket.to_string(), key.to_string());
    let found = read_value(api, move |state| {
        let versioning = state
            .bucket(&bucket)
            .map(|b| b.versioning)
            .ok_or_else(|| not_found("bucket", bucket.clone()))?;
        match state.object_version(&bucket, &key, None) {
            Some(version @ Version::Object { record, .. }) if record.request == Some(request) => {
                let mut value = object_json(&key, record, false);
                value["version_id"] = version_json(versioning, version.id());
                Ok(value)
            }
            _ => Ok(Value::Null),
        }
    })
    .await
    .ok()?;
    (!found.is_null()).then(|| Json(found).into_response())
}

async fn complete_upload(
    State(api): State<Api>,
    Path(id): Path<String>,
    parsed: Result<Json<CompleteUpload>, JsonRejection>,
) -> Result<Response, Response> {
    let CompleteUpload {
        parts,
        etag,
        request,
        bucket: asked_bucket,
        key: asked_key,
    } = body(parsed)?;
    let retried = || completed_before(&api, request, asked_bucket.as_deref(), asked_key.as_deref());
    // The upload is gone once completed: its bucket and key are read first.
    let wanted = id.clone();
    let target = read_value(&api, move |state| {
        let upload = state
            .upload(&wanted)
            .ok_or_else(|| not_found("upload", wanted.clone()))?;
        Ok(json!([upload.bucket, upload.key]))
    })
    .await;
    let target = match target {
        Ok(target) => target,
        Err(refused) => return retried().await.ok_or(refused),
    };
    let (Some(bucket), Some(key)) = (target[0].as_str(), target[1].as_str()) else {
        return Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "upload without bucket",
        ));
    };
    let (bucket, key) = (bucket.to_string(), key.to_string());
    let command = Command::CompleteUpload {
        upload_id: id,
        parts,
        etag,
        now_ms: now_ms(),
        request,
    };
    let applied = match write(&api, command).await {
        Ok(applied) => applied,
        Err(refused) => return retried().await.ok_or(refused),
    };
    let version_id = written_json(&applied)["version_id"].clone();
    // The version just written, not whatever is newest by the time of this read.
    let written = match &applied {
        Applied::Written { version } => Some(version.unwrap_or(VersionId::NULL)),
        _ => None,
    };
    Ok(read(&api, move |state| {
        match state
            .object_version(&bucket, &key, written)
            .and_then(Version::record)
        {
            Some(record) => {
                let mut value = object_json(&key, record, false);
                value["version_id"] = version_id;
                Ok(value)
            }
            None => Err(not_found("object", format!("{bucket}/{key}"))),
        }
    })
    .await)
}

async fn abort_upload(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    write(&api, Command::AbortUpload { upload_id: id }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::{
        placement::FailureDomain,
        server::DriverHandle,
        state::{
            SecretKey,
            tests::{KEY_ID, SECRET, disk},
        },
    };

    const TOKEN: &str = "test-token";

    /// A state with pool "default" (id 1, 4 PGs), tenants "acme" and "other", and an access key
    /// of "acme".
    fn state() -> MetaState {
        let mut state = MetaState::default();
        let mut commands: Vec<Command> = (0..3)
            .map(|n| Command::RegisterDisk(disk(n, 1 + u32::from(n))))
            .collect();
        commands.extend([
            Command::CreatePool {
                name: DEFAULT_POOL.into(),
                replicas: 3,
                domain: FailureDomain::Host,
                pg_count: 4,
            },
            Command::CreateTenant {
                name: "acme".into(),
            },
            Command::CreateTenant {
                name: "other".into(),
            },
            Command::CreateAccessKey {
                tenant: "acme".into(),
                access_key_id: KEY_ID.into(),
                secret_key: SecretKey::new(SECRET.into()),
            },
        ]);
        for command in commands {
            state.apply(command).expect("set-up command");
        }
        state
    }

    /// The admin API over [`state`] with no Raft, served on a loopback port by its own
    /// runtime (kept alive by the returned value).
    fn serve() -> (tokio::runtime::Runtime, std::net::SocketAddr) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let addr = runtime.block_on(async {
            let driver = DriverHandle::over_state(state());
            let router = super::super::router(driver, TOKEN.into(), Vec::new());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move { axum::serve(listener, router).await });
            addr
        });
        (runtime, addr)
    }

    /// One HTTP/1.1 request; the status and the JSON body (null when empty).
    fn call(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.write_all(request.as_bytes()).expect("send");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).expect("receive");
        let response = String::from_utf8(response).expect("UTF-8 response");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).expect("a JSON body")
        };
        (status, body)
    }

    /// Goal: the bucket and object routes answer the documented JSON, and refusals carry
    /// their S3 code or owning tenant. Method: drive them over HTTP against a state machine
    /// without Raft.
    #[test]
    fn bucket_and_object_routes() {
        let (_runtime, addr) = serve();
        let (status, key) = call(addr, "GET", &format!("/v1/s3/keys/{KEY_ID}"), None);
        assert_eq!(
            (status, key),
            (200, json!({ "tenant": "acme", "secret_key": SECRET }))
        );
        assert_eq!(
            call(addr, "GET", "/v1/s3/keys/AKIANOSUCHKEY0000000", None).0,
            404
        );
        let create = |name: &str, tenant: &str| {
            call(
                addr,
                "POST",
                "/v1/buckets",
                Some(json!({ "name": name, "tenant": tenant })),
            )
        };
        let (status, bucket) = create("photos", "acme");
        assert_eq!(status, 201, "{bucket}");
        assert_eq!(bucket["pool"], "default");
        assert_eq!(
            (bucket["objects"].clone(), bucket["bytes"].clone()),
            (json!(0), json!(0))
        );
        let (status, taken) = create("photos", "other");
        assert_eq!(
            (status, taken["tenant"].clone()),
            (409, json!("acme")),
            "{taken}"
        );
        let (status, bad) = create("Bad_Name", "acme");
        assert_eq!(
            (status, bad["code"].clone()),
            (400, json!("InvalidBucketName")),
            "{bad}"
        );
        let (status, shown) = call(addr, "GET", "/v1/buckets/photos", None);
        assert_eq!(
            (status, shown["pool_id"].clone(), shown["pg_count"].clone()),
            (200, json!(1), json!(4))
        );
        let (_, listed) = call(addr, "GET", "/v1/buckets?tenant=other", None);
        assert_eq!(listed, json!([]));
        let (_, listed) = call(addr, "GET", "/v1/buckets", None);
        assert_eq!(listed.as_array().map(Vec::len), Some(1));

        let inline = json!({ "size": 5, "etag": "\"e1\"", "content_type": "text/plain",
            "metadata": { "color": "blue" }, "data": { "Inline": { "data": "aGVsbG8=" } } });
        let path = "/v1/buckets/photos/object?key=a%2Fhello+world.txt";
        assert_eq!(
            call(addr, "PUT", path, Some(inline.clone())),
            (200, json!({ "version_id": null }))
        );
        let (status, object) = call(addr, "GET", path, None);
        assert_eq!(status, 200);
        assert_eq!(object["key"], "a/hello world.txt");
        assert_eq!(object["data"], inline["data"]);
        assert_eq!(object["metadata"], inline["metadata"]);
        assert!(
            object["modified_ms"].as_u64().is_some_and(|ms| ms > 0),
            "{object}"
        );
        let (_, owner) = call(addr, "POST", "/v1/buckets/photos/writes", None);
        let segments = json!([{ "owner": owner["owner"], "length": 9 }]);
        let big = json!({ "size": 9, "etag": "\"e2\"", "data": { "Segments": segments } });
        assert_eq!(
            call(addr, "PUT", "/v1/buckets/photos/object?key=top", Some(big)).0,
            200
        );
        let too_long = format!("/v1/buckets/photos/object?key={}", "k".repeat(1025));
        let (status, refused) = call(addr, "PUT", &too_long, Some(inline));
        assert_eq!(
            (status, refused["code"].clone()),
            (400, json!("KeyTooLongError"))
        );
        let (status, page) = call(
            addr,
            "GET",
            "/v1/buckets/photos/objects?delimiter=%2F&max=1",
            None,
        );
        assert_eq!(status, 200);
        assert_eq!(
            page,
            json!({ "objects": [], "prefixes": ["a/"], "truncated": true, "next": "a/" })
        );
        let (_, page) = call(
            addr,
            "GET",
            "/v1/buckets/photos/objects?delimiter=%2F&after=a%2F",
            None,
        );
        assert_eq!(page["objects"][0]["key"], "top");
        assert_eq!(page["objects"][0]["size"], 9);
        assert_eq!(
            (page["truncated"].clone(), page["next"].clone()),
            (json!(false), Value::Null)
        );
        assert_eq!(
            call(addr, "GET", "/v1/buckets/photos/objects?limit=1", None).0,
            400
        );
        assert_eq!(call(addr, "GET", "/v1/buckets/nope/objects", None).0, 404);
        assert_eq!(
            call(addr, "DELETE", "/v1/buckets/photos", None).0,
            409,
            "not empty"
        );
        let path = "/v1/buckets/photos/object?key=a%2Fhello+world.txt";
        assert_eq!(call(addr, "DELETE", path, None).0, 200);
        assert_eq!(call(addr, "DELETE", path, None).0, 200, "idempotent");
        assert_eq!(call(addr, "GET", path, None).0, 404);
    }

    /// Goal: a gateway's retry of a PUT or DELETE that committed is answered as the first try
    /// and changes nothing; a malformed token is refused. Method: over HTTP, a PUT in segments
    /// and a DELETE in a versioned bucket, each sent twice with its token.
    #[test]
    fn retried_writes_with_tokens_apply_once() {
        let (_runtime, addr) = serve();
        let bucket = json!({ "name": "photos", "tenant": "acme" });
        assert_eq!(call(addr, "POST", "/v1/buckets", Some(bucket)).0, 201);
        let enable = json!({ "enabled": true });
        let path = "/v1/buckets/photos/versioning";
        assert_eq!(call(addr, "PUT", path, Some(enable)).0, 200);
        let (_, owner) = call(addr, "POST", "/v1/buckets/photos/writes", None);
        let segments = json!([{ "owner": owner["owner"], "length": 9 }]);
        let big = json!({ "size": 9, "etag": "\"e\"", "data": { "Segments": segments },
            "request": 41 });
        let path = "/v1/buckets/photos/object?key=k";
        let first = call(addr, "PUT", path, Some(big.clone()));
        assert_eq!(first.0, 200);
        assert_eq!(call(addr, "PUT", path, Some(big)), first, "retried PUT");
        let (_, shown) = call(addr, "GET", path, None);
        assert!(
            shown.get("request").is_none(),
            "the token stays inside: {shown}"
        );
        let deleted = call(
            addr,
            "DELETE",
            "/v1/buckets/photos/object?key=k&request=42",
            None,
        );
        assert_eq!(deleted.0, 200);
        assert_eq!(deleted.1["delete_marker"], true);
        assert_eq!(
            call(
                addr,
                "DELETE",
                "/v1/buckets/photos/object?key=k&request=42",
                None
            ),
            deleted,
            "retried DELETE"
        );
        let (_, page) = call(addr, "GET", "/v1/buckets/photos/versions", None);
        assert_eq!(
            page["versions"].as_array().map(Vec::len),
            Some(2),
            "one object, one marker: {page}"
        );
        let bad = "/v1/buckets/photos/object?key=k&request=x";
        assert_eq!(call(addr, "DELETE", bad, None).0, 400);
    }

    /// Goal: writes begun, committed, abandoned and reclaimed through the routes gateways and
    /// the reclaim worker use. Method: drive them over HTTP.
    #[test]
    fn write_and_garbage_routes() {
        let (_runtime, addr) = serve();
        let bucket = json!({ "name": "photos", "tenant": "acme" });
        assert_eq!(call(addr, "POST", "/v1/buckets", Some(bucket)).0, 201);
        let (status, owner) = call(addr, "POST", "/v1/buckets/photos/writes", None);
        assert_eq!(status, 200);
        let owner = owner["owner"].as_u64().expect("an owner");
        let segments = json!([{ "owner": owner, "length": 9 }]);
        let big = json!({ "size": 9, "etag": "\"e2\"", "data": { "Segments": segments } });
        let path = "/v1/buckets/photos/object?key=top";
        assert_eq!(call(addr, "PUT", path, Some(big.clone())).0, 200);
        let (status, again) = call(addr, "PUT", path, Some(big));
        assert_eq!(status, 400, "the owner is no longer pending: {again}");
        assert_eq!(call(addr, "DELETE", path, None).0, 200);
        let (_, garbage) = call(addr, "GET", "/v1/s3/garbage", None);
        let entry = json!({ "owner": owner, "pool": "default", "pool_id": 1, "pg_count": 4,
            "length": 9 });
        assert_eq!(garbage, json!([entry]));
        let reclaimed = json!({ "owners": [owner] });
        assert_eq!(
            call(addr, "POST", "/v1/s3/reclaimed", Some(reclaimed)).0,
            204
        );
        assert_eq!(call(addr, "GET", "/v1/s3/garbage?max=5", None).1, json!([]));
        let (_, write) = call(addr, "POST", "/v1/buckets/photos/writes", None);
        let (_, pending) = call(addr, "GET", "/v1/s3/pending?older_than_ms=0", None);
        assert_eq!(pending[0]["owner"], write["owner"]);
        assert_eq!(pending[0]["bucket"], "photos");
        let (_, recent) = call(addr, "GET", "/v1/s3/pending?older_than_ms=3600000", None);
        assert_eq!(recent, json!([]), "a write just begun is not old");
        let (status, busy) = call(addr, "DELETE", "/v1/buckets/photos", None);
        assert_eq!(status, 409, "a write in progress keeps the bucket: {busy}");
        let abandon = json!({ "owners": [write["owner"]], "length": 100 });
        assert_eq!(call(addr, "POST", "/v1/s3/abandon", Some(abandon)).0, 204);
        let (_, garbage) = call(addr, "GET", "/v1/s3/garbage", None);
        assert_eq!(garbage[0]["length"], 100);
        assert_eq!(call(addr, "DELETE", "/v1/buckets/photos", None).0, 204);
        assert_eq!(call(addr, "GET", "/v1/buckets/photos", None).0, 404);
    }

    /// Goal: the multipart routes, from creation to completion, with part-order and part
    /// refusals carrying their S3 code. Method: drive them over HTTP.
    #[test]
    fn multipart_routes() {
        let (_runtime, addr) = serve();
        let bucket = json!({ "name": "media", "tenant": "acme", "pool": "default" });
        assert_eq!(call(addr, "POST", "/v1/buckets", Some(bucket)).0, 201);
        let request =
            json!({ "key": "film.mp4", "content_type": "video/mp4", "metadata": { "a": "b" } });
        let (status, created) = call(addr, "POST", "/v1/buckets/media/uploads", Some(request));
        assert_eq!(status, 200, "{created}");
        let id = created["upload_id"]
            .as_str()
            .expect("an upload id")
            .to_string();
        assert_eq!(id.len(), UPLOAD_ID_CHARS);
        for (number, length) in [(1, 5u64 << 20), (2, 3)] {
            let (_, owner) = call(addr, "POST", "/v1/buckets/media/writes", None);
            let part =
                json!({ "owner": owner["owner"], "length": length, "etag": format!("p{number}") });
            let path = format!("/v1/uploads/{id}/parts/{number}");
            assert_eq!(call(addr, "PUT", &path, Some(part)), (200, json!({})));
        }
        let (_, owner) = call(addr, "POST", "/v1/buckets/media/writes", None);
        let part = json!({ "owner": owner["owner"], "length": 1, "etag": "x" });
        let (status, refused) = call(
            addr,
            "PUT",
            &format!("/v1/uploads/{id}/parts/0"),
            Some(part.clone()),
        );
        assert_eq!(
            (status, refused["code"].clone()),
            (400, json!("InvalidArgument"))
        );
        assert_eq!(
            call(
                addr,
                "PUT",
                &format!("/v1/uploads/{id}/parts/x"),
                Some(part.clone())
            )
            .0,
            400
        );
        assert_eq!(
            call(addr, "PUT", "/v1/uploads/nope/parts/1", Some(part)).0,
            404
        );
        let (status, upload) = call(addr, "GET", &format!("/v1/uploads/{id}"), None);
        assert_eq!(status, 200);
        assert_eq!(
            (upload["bucket"].clone(), upload["key"].clone()),
            (json!("media"), json!("film.mp4"))
        );
        assert_eq!(upload["parts"][1]["size"], 3);
        assert_eq!(upload["parts"][0]["etag"], "p1");
        let (_, listed) = call(addr, "GET", "/v1/buckets/media/uploads?prefix=film", None);
        assert_eq!(listed["uploads"][0]["upload_id"], json!(id));
        assert_eq!(listed["truncated"], false);
        let complete = |parts: Value| {
            let body = json!({ "parts": parts, "etag": "\"m-2\"", "request": 5,
                "bucket": "media", "key": "film.mp4" });
            call(
                addr,
                "POST",
                &format!("/v1/uploads/{id}/complete"),
                Some(body),
            )
        };
        let (status, refused) = complete(json!([[2, "p2"], [1, "p1"]]));
        assert_eq!(
            (status, refused["code"].clone()),
            (400, json!("InvalidPartOrder")),
            "{refused}"
        );
        assert!(
            refused["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("InvalidPartOrder"))
        );
        let (status, refused) = complete(json!([[1, "p1"], [2, "wrong"]]));
        assert_eq!(
            (status, refused["code"].clone()),
            (400, json!("InvalidPart"))
        );
        let (status, object) = complete(json!([[1, "p1"], [2, "p2"]]));
        assert_eq!(status, 200, "{object}");
        let expected = json!({ "key": "film.mp4", "size": (5 << 20) + 3, "etag": "\"m-2\"",
            "modified_ms": object["modified_ms"], "content_type": "video/mp4", "version_id": null,
            "metadata": { "a": "b" } });
        assert_eq!(object, expected);
        assert_eq!(call(addr, "GET", &format!("/v1/uploads/{id}"), None).0, 404);
        // The gateway's retry (same token) finds the upload gone and the object its own;
        // another request is told the upload is gone.
        let (status, again) = complete(json!([[1, "p1"], [2, "p2"]]));
        assert_eq!(
            (status, again),
            (200, expected.clone()),
            "retried completion"
        );
        let other = json!({ "parts": [[1, "p1"]], "etag": "\"m-1\"", "request": 6,
            "bucket": "media", "key": "film.mp4" });
        let path = format!("/v1/uploads/{id}/complete");
        assert_eq!(call(addr, "POST", &path, Some(other)).0, 404);
        let (_, listed) = call(addr, "GET", "/v1/buckets/media/uploads", None);
        assert_eq!(listed, json!({ "uploads": [], "truncated": false }));
        let request = json!({ "key": "other" });
        let (_, created) = call(addr, "POST", "/v1/buckets/media/uploads", Some(request));
        let path = format!("/v1/uploads/{}", created["upload_id"].as_str().expect("id"));
        assert_eq!(call(addr, "DELETE", &path, None).0, 204);
        assert_eq!(call(addr, "DELETE", &path, None).0, 404);
    }

    /// Goal: the versioning, version listing and quota routes answer the documented JSON;
    /// a quota refusal carries code QuotaExceeded. Method: drive them over HTTP.
    #[test]
    fn versioning_and_quota_routes() {
        let (_runtime, addr) = serve();
        let bucket = json!({ "name": "vers", "tenant": "acme" });
        let (_, created) = call(addr, "POST", "/v1/buckets", Some(bucket));
        assert_eq!(created["versioning"], "unversioned");
        assert_eq!(
            created["quota"],
            json!({ "bytes_max": null, "objects_max": null })
        );
        let enable = json!({ "enabled": true });
        let (status, shown) = call(addr, "PUT", "/v1/buckets/vers/versioning", Some(enable));
        assert_eq!(
            (status, shown["versioning"].clone()),
            (200, json!("enabled"))
        );
        let inline =
            |data: &str| json!({ "size": 1, "etag": "e", "data": { "Inline": { "data": data } } });
        let path = "/v1/buckets/vers/object?key=k";
        let (_, first) = call(addr, "PUT", path, Some(inline("YQ==")));
        let (_, second) = call(addr, "PUT", path, Some(inline("Yg==")));
        let first_id = first["version_id"]
            .as_str()
            .expect("a version id")
            .to_string();
        assert_ne!(first["version_id"], second["version_id"]);
        let old = format!("{path}&version_id={first_id}");
        let (_, got) = call(addr, "GET", &old, None);
        assert_eq!(got["data"]["Inline"]["data"], "YQ==");
        assert_eq!(
            (got["version_id"].as_str(), got["delete_marker"].clone()),
            (Some(first_id.as_str()), json!(false))
        );
        let (status, deleted) = call(addr, "DELETE", path, None);
        assert_eq!(
            (status, deleted["delete_marker"].clone()),
            (200, json!(true))
        );
        let (status, marker) = call(addr, "GET", path, None);
        assert_eq!(
            (status, marker["delete_marker"].clone()),
            (200, json!(true)),
            "{marker}"
        );
        let (_, page) = call(addr, "GET", "/v1/buckets/vers/versions?max=2", None);
        assert_eq!(page["versions"][0]["delete_marker"], true);
        assert_eq!(page["versions"][0]["is_latest"], true);
        assert_eq!(page["versions"][1]["version_id"], second["version_id"]);
        assert_eq!(
            (page["truncated"].clone(), page["next_key_marker"].clone()),
            (json!(true), json!("k"))
        );
        let next = format!(
            "/v1/buckets/vers/versions?key_marker=k&version_id_marker={}",
            page["next_version_id_marker"].as_str().expect("a marker")
        );
        let (_, rest) = call(addr, "GET", &next, None);
        assert_eq!(rest["versions"][0]["version_id"], json!(first_id));
        assert_eq!(rest["truncated"], false);
        assert_eq!(
            call(addr, "GET", &format!("{path}&version_id=junk"), None).0,
            400
        );
        let marker_id = deleted["version_id"].as_str().expect("marker id");
        let (status, undone) = call(
            addr,
            "DELETE",
            &format!("{path}&version_id={marker_id}"),
            None,
        );
        assert_eq!(
            (status, undone["delete_marker"].clone()),
            (200, json!(true))
        );
        assert_eq!(
            call(addr, "GET", path, None).1["data"]["Inline"]["data"],
            "Yg=="
        );

        let quota = json!({ "objects_max": 2 });
        let (status, shown) = call(addr, "PUT", "/v1/buckets/vers/quota", Some(quota));
        assert_eq!(
            (status, shown["quota"]["objects_max"].clone()),
            (200, json!(2))
        );
        let (status, refused) = call(addr, "PUT", path, Some(inline("Yw==")));
        assert_eq!(
            (status, refused["code"].clone()),
            (400, json!("QuotaExceeded")),
            "{refused}"
        );
        let tenant_quota = json!({ "bytes_max": 10 });
        let (status, tenant) = call(addr, "PUT", "/v1/tenants/acme/quota", Some(tenant_quota));
        assert_eq!(status, 200, "{tenant}");
        assert_eq!(
            (tenant["objects"].clone(), tenant["bytes"].clone()),
            (json!(2), json!(2))
        );
        assert_eq!(
            tenant["quota"],
            json!({ "bytes_max": 10, "objects_max": null })
        );
        let (_, tenants) = call(addr, "GET", "/v1/tenants", None);
        assert_eq!(tenants[0]["quota"]["bytes_max"], 10);
        assert_eq!(
            call(addr, "PUT", "/v1/tenants/nobody/quota", Some(json!({}))).0,
            404
        );
    }

    /// Goal: query components decode as browsers and SDKs encode them, and junk is refused.
    #[test]
    fn query_components_decode() {
        assert_eq!(decode_component("a%2Fb+c"), Some("a/b c".into()));
        assert_eq!(decode_component("%C3%A9%26%3D"), Some("é&=".into()));
        assert_eq!(decode_component(""), Some(String::new()));
        for junk in ["%", "%2", "%zz", "%+1", "%FF"] {
            assert_eq!(decode_component(junk), None, "{junk}");
        }
    }

    /// Goal: parameters parse once each, unknown and repeated ones are refused.
    #[test]
    fn query_parameters_parse_strictly() {
        let params = parse_query(
            Some("prefix=a%2F&delimiter=%2F&max="),
            &["prefix", "delimiter", "max"],
        );
        let params = params.expect("parses");
        assert_eq!(params["prefix"], "a/");
        assert_eq!(params["delimiter"], "/");
        assert_eq!(params["max"], "");
        assert!(parse_query(None, &["key"]).expect("empty").is_empty());
        assert!(parse_query(Some("key=a&key=b"), &["key"]).is_err());
        assert!(parse_query(Some("kee=a"), &["key"]).is_err());
        assert!(parse_query(Some("key=%FF"), &["key"]).is_err());
    }

    /// Goal: the object JSON is the record's serde shape plus its key, data optional.
    #[test]
    fn object_json_shape() {
        let record = ObjectRecord {
            size: 2,
            etag: "\"e\"".into(),
            modified_ms: 7,
            content_type: None,
            metadata: BTreeMap::new(),
            data: crate::objects::ObjectData::Inline { data: vec![1, 2] },
            acl: None,
            request: None,
        };
        let full = object_json("k/1", &record, true);
        assert_eq!(
            full,
            json!({ "key": "k/1", "size": 2, "etag": "\"e\"", "modified_ms": 7,
                    "data": { "Inline": { "data": "AQI=" } } })
        );
        let bare = object_json("k/1", &record, false);
        assert_eq!(
            bare,
            json!({ "key": "k/1", "size": 2, "etag": "\"e\"", "modified_ms": 7 })
        );
    }
}
