//! The admin API: REST and JSON over axum, every route behind a bearer token.
//!
//! Routes (all under `/v1`):
//!
//! ```text
//! GET    /cluster/status                 this member's Raft view, the members, counts, health
//!                                        and "status": healthy, recovering, degraded or down
//!                                        (health and status from the leader only; null elsewhere)
//! POST   /cluster/members/{id}/rejoin    replace a member's replica by a new one (its disk was lost)
//! POST   /nodes/{id}/heartbeat           a storage node's heartbeat (disks, PG replicas);
//!                                        leader only: a follower answers 503 naming the leader
//! GET    /storage-nodes                  where each storage node listens
//! PUT    /storage-nodes/{id}             {raft_addr, data_addr}: a node registers itself
//! POST   /storage-nodes/{id}/drain       marks every disk of the node out; answers the disks
//! GET    /rebalance                      {enabled, settling, moves_planned, pgs_total}; leader only
//! POST   /rebalance/{start|pause|resume} turns rebalancing on (start, resume) or off (pause)
//! GET    /nodes                          disks of the cluster map
//! POST   /nodes/disks                    register a disk {id, host, rack, site, capacity_bytes}
//! POST   /nodes/disks/{id}/state         {state: "in" | "out"}
//! GET    /pools            POST /pools   {name, replicas, domain, pg_count}
//! GET    /pools/{name}
//! GET    /volumes          POST /volumes {name, pool, size_bytes, tier, iops_max?,
//!                                        bytes_per_s_max?}
//! GET    /volumes/{name}   DELETE /volumes/{name}
//!        (QoS, iSCSI access, reservations and portals: see the `iscsi` module)
//! POST   /volumes/{name}/resize          {size_bytes}
//! GET    /tenants          POST /tenants {name}         DELETE /tenants/{name}
//!                                        (a tenant's usage and quota: see the `s3` module)
//! POST   /tenants/{name}/keys            creates an access key; the only answer holding its secret
//! DELETE /keys/{id}
//!        (S3 buckets, objects, uploads, writes and garbage: see the `s3` module)
//! ```
//!
//! Errors are JSON `{"error": message}` with 400 (malformed), 401 (no or wrong token), 404,
//! 409 (exists, or not empty; a taken bucket name adds `"tenant"`, its owner), 400 with
//! `"code"` (an S3 error code) for refusals S3 names, 503 with `"code": "SlowDown"` when the
//! cluster holds too many uploads or writes in progress, 412 (changed since read: read again)
//! and 503 (no leader, timeout; `leader_api` names the leader
//! when known, so a client can retry there). Reads are linearizable on every member; writes
//! go to the leader.

// Handlers answer with `Response` on both paths; boxing the error side would only add noise.
#![allow(clippy::result_large_err)]

use std::io::Read;

use axum::{
    Json, Router,
    extract::{Path, Request, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use cairn_common::DiskId;
use serde::Deserialize;
use serde_json::{Value, json};

mod iscsi;
mod s3;

pub use iscsi::{DEFAULT_CHAP_USER, IQN_PREFIX, hex, target_name, unhex};
pub use s3::DEFAULT_POOL;

use crate::{
    objects::S3Code,
    placement::{Disk, DiskState, FailureDomain, HostId, RackId, SiteId},
    server::{DriverHandle, Member, RequestError},
    state::{Applied, Command, MetaError, MetaState, QosTier, SecretKey},
};

#[derive(Clone)]
struct Api {
    driver: DriverHandle,
    token: String,
    members: Vec<Member>,
}

/// The admin API's routes over a running driver.
pub fn router(driver: DriverHandle, token: String, members: Vec<Member>) -> Router {
    router_with(driver, token, members, Router::new())
}

/// The admin API with `extra` routes beside it, behind the same bearer token (`cairn dev`
/// adds the volume data routes).
pub fn router_with(
    driver: DriverHandle,
    token: String,
    members: Vec<Member>,
    extra: Router,
) -> Router {
    let api = Api {
        driver,
        token,
        members,
    };
    Router::new()
        .route("/v1/cluster/status", get(cluster_status))
        .route("/v1/cluster/members/{id}/rejoin", post(rejoin))
        .route("/v1/nodes", get(list_disks))
        .route("/v1/nodes/disks", post(register_disk))
        .route("/v1/nodes/{id}/heartbeat", post(heartbeat))
        .route("/v1/storage-nodes", get(list_storage_nodes))
        .route(
            "/v1/storage-nodes/{id}",
            axum::routing::put(register_storage_node).delete(remove_storage_node),
        )
        .route("/v1/storage-nodes/{id}/drain", post(drain_storage_node))
        .route("/v1/rebalance", get(rebalance_status))
        .route("/v1/rebalance/{action}", post(set_rebalance))
        .route("/v1/nodes/disks/{id}/state", post(set_disk_state))
        .route("/v1/pools", get(list_pools).post(create_pool))
        .route("/v1/pools/{name}", get(show_pool))
        .route("/v1/volumes", get(list_volumes).post(create_volume))
        .route("/v1/volumes/{name}", get(show_volume).delete(delete_volume))
        .route("/v1/volumes/{name}/resize", post(resize_volume))
        .route("/v1/volumes/{name}/qos", put(iscsi::set_qos))
        .route(
            "/v1/volumes/{name}/iscsi-access",
            put(iscsi::set_access).delete(iscsi::clear_access),
        )
        .route(
            "/v1/volumes/{name}/reservation",
            get(iscsi::reservation).put(iscsi::set_reservation),
        )
        .route("/v1/volumes/{name}/attach-info", get(iscsi::attach_info))
        .route("/v1/iscsi/targets", get(iscsi::targets))
        .route("/v1/iscsi/portals", get(iscsi::portals))
        .route(
            "/v1/iscsi/portals/{address}",
            put(iscsi::add_portal).delete(iscsi::remove_portal),
        )
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route("/v1/tenants/{name}", axum::routing::delete(delete_tenant))
        .route("/v1/tenants/{name}/keys", post(create_key))
        .route("/v1/keys/{id}", axum::routing::delete(delete_key))
        .merge(s3::routes())
        .with_state(api.clone())
        .merge(extra)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(api, authorize))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        match self {
            RequestError::Refused(e) => {
                let message = e.to_string();
                let (status, extra) = match e {
                    MetaError::NotFound { .. } => (StatusCode::NOT_FOUND, None),
                    MetaError::AlreadyExists { .. } | MetaError::NotEmpty { .. } => {
                        (StatusCode::CONFLICT, None)
                    }
                    // The S3 gateway tells BucketAlreadyOwnedByYou from BucketAlreadyExists.
                    MetaError::BucketExists { tenant, .. } => {
                        (StatusCode::CONFLICT, Some(("tenant", tenant)))
                    }
                    MetaError::Invalid(_) => (StatusCode::BAD_REQUEST, None),
                    MetaError::Stale { .. } => (StatusCode::PRECONDITION_FAILED, None),
                    // The S3 gateway answers with `code` as the S3 error code.
                    MetaError::S3Refused { code, .. } => {
                        let status = match code {
                            S3Code::SlowDown => StatusCode::SERVICE_UNAVAILABLE,
                            _ => StatusCode::BAD_REQUEST,
                        };
                        (status, Some(("code", code.as_str().to_string())))
                    }
                };
                let mut body = json!({ "error": message });
                if let Some((field, value)) = extra {
                    body[field] = json!(value);
                }
                (status, Json(body)).into_response()
            }
            RequestError::NotLeader(leader) => {
                let body = json!({
                    "error": "this member is not the leader; retry at the leader",
                    "leader_api": leader.map(|m| format!("http://{}", m.api)),
                });
                (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
            }
            RequestError::Unavailable(why) => error(StatusCode::SERVICE_UNAVAILABLE, why),
        }
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(
    State(api): State<Api>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if same_secret(token.as_bytes(), api.token.as_bytes()) => {
            next.run(request).await
        }
        // The token itself is never logged.
        _ => error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"),
    }
}

/// A JSON body, with a malformed one answered 400 in our error shape.
fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, Response> {
    parsed
        .map(|Json(value)| value)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))
}

async fn write(api: &Api, command: Command) -> Result<Applied, Response> {
    api.driver
        .propose(command)
        .await
        .map_err(IntoResponse::into_response)
}

async fn read(
    api: &Api,
    f: impl FnOnce(&MetaState) -> Result<Value, MetaError> + Send + 'static,
) -> Response {
    match api.driver.read(Box::new(f)).await {
        Ok(value) => Json(value).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Like [`read`], the value kept for the handler (errors already answered).
async fn read_value(
    api: &Api,
    f: impl FnOnce(&MetaState) -> Result<Value, MetaError> + Send + 'static,
) -> Result<Value, Response> {
    api.driver
        .read(Box::new(f))
        .await
        .map_err(IntoResponse::into_response)
}

async fn cluster_status(State(api): State<Api>) -> Response {
    let raft = match api.driver.status().await {
        Ok(view) => view,
        Err(e) => return e.into_response(),
    };
    let members: Vec<Value> = api
        .members
        .iter()
        .map(|m| json!({ "id": m.id.0, "raft": m.raft.to_string(), "api": m.api.to_string() }))
        .collect();
    // Counts come from this member's applied state through a linearizable read when a leader
    // exists; without one the Raft view alone still helps an operator.
    let counts = api
        .driver
        .read(Box::new(|state: &MetaState| {
            Ok(json!({
                "disks": state.disks().count(),
                "pools": state.pools().count(),
                "volumes": state.volumes().count(),
                "tenants": state.tenants().count(),
            }))
        }))
        .await
        .ok();
    // Only the leader keeps heartbeats: elsewhere health and status are null.
    let health = api.driver.health().await.ok();
    let status = health.as_ref().map(|h| h.status);
    Json(json!({
        "member": raft,
        "members": members,
        "counts": counts,
        "status": status,
        "health": health,
    }))
    .into_response()
}

async fn rebalance_status(State(api): State<Api>) -> Response {
    match api.driver.rebalance().await {
        Ok(view) => Json(view).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn set_rebalance(
    State(api): State<Api>,
    Path(action): Path<String>,
) -> Result<Response, Response> {
    let enabled = match action.as_str() {
        "start" | "resume" => true,
        "pause" => false,
        other => {
            return Err(error(
                StatusCode::NOT_FOUND,
                format!("rebalance action {other:?}: start, pause or resume"),
            ));
        }
    };
    write(&api, Command::SetRebalance { enabled }).await?;
    Ok(Json(json!({ "enabled": enabled })).into_response())
}

/// The disks of storage node `id` (host `id`), read linearizably.
async fn node_disks(api: &Api, id: u64) -> Result<Vec<DiskId>, Response> {
    let listed = api
        .driver
        .read(Box::new(move |state: &MetaState| {
            let disks = state.disks().filter(|d| u64::from(d.host.0) == id);
            Ok(json!(disks.map(|d| d.id.to_string()).collect::<Vec<_>>()))
        }))
        .await
        .map_err(IntoResponse::into_response)?;
    let mut disks = Vec::new();
    for text in listed.as_array().into_iter().flatten() {
        disks.push(parse_disk_id(text.as_str().unwrap_or_default())?);
    }
    Ok(disks)
}

/// Marks every disk of storage node `id` (host `id`) out, so the scheduler moves its PG
/// members elsewhere. One command per disk: a retry after a partial failure marks the rest.
async fn drain_storage_node(
    State(api): State<Api>,
    Path(id): Path<u64>,
) -> Result<Response, Response> {
    let disks = node_disks(&api, id).await?;
    if disks.is_empty() {
        return Err(RequestError::Refused(MetaError::NotFound {
            kind: "storage node",
            name: id.to_string(),
        })
        .into_response());
    }
    let mut marked = Vec::new();
    for disk in disks {
        let command = Command::SetDiskState {
            disk,
            state: DiskState::Out,
        };
        write(&api, command).await?;
        marked.push(disk.to_string());
    }
    Ok(Json(json!({ "node": id, "disks_out": marked })).into_response())
}

/// Removes a drained storage node and its disks from the cluster map (409 while a PG still
/// has a member on it).
async fn remove_storage_node(
    State(api): State<Api>,
    Path(id): Path<u64>,
) -> Result<Response, Response> {
    let disks = node_disks(&api, id).await?;
    let count = disks.len();
    write(&api, Command::RemoveNode { id, disks }).await?;
    Ok(Json(json!({ "removed": id, "disks": count })).into_response())
}

async fn list_storage_nodes(State(api): State<Api>) -> Response {
    read(&api, |state| {
        let nodes: Vec<Value> = state
            .nodes()
            .map(|(id, node)| {
                json!({
                    "id": id,
                    "raft_addr": node.raft_addr.to_string(),
                    "data_addr": node.data_addr.to_string(),
                })
            })
            .collect();
        Ok(json!(nodes))
    })
    .await
}

async fn register_storage_node(
    State(api): State<Api>,
    Path(id): Path<u64>,
    parsed: Result<Json<crate::state::NodeRecord>, JsonRejection>,
) -> Result<Response, Response> {
    let node = body(parsed)?;
    write(&api, Command::RegisterNode { id, node }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn heartbeat(
    State(api): State<Api>,
    Path(id): Path<u64>,
    parsed: Result<Json<crate::health::Heartbeat>, JsonRejection>,
) -> Result<Response, Response> {
    let beat = body(parsed)?;
    if beat.node != id {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("heartbeat of node {} posted for node {id}", beat.node),
        ));
    }
    api.driver
        .report_heartbeat(beat)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn rejoin(State(api): State<Api>, Path(id): Path<u64>) -> Result<Response, Response> {
    let replica = api
        .driver
        .rejoin(cairn_common::NodeId(id))
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Json(json!({ "rejoined": id, "replica": replica.0 })).into_response())
}

fn disk_json(disk: &Disk) -> Value {
    json!({
        "id": disk.id.to_string(),
        "host": disk.host.0,
        "rack": disk.rack.0,
        "site": disk.site.0,
        "capacity_bytes": disk.capacity_bytes,
        "state": match disk.state { DiskState::In => "in", DiskState::Out => "out" },
    })
}

async fn list_disks(State(api): State<Api>) -> Response {
    read(&api, |state| {
        Ok(Value::Array(state.disks().map(disk_json).collect()))
    })
    .await
}

/// Parses a UUID as `cairn disk show` prints it (hex, dashes optional).
fn parse_disk_id(text: &str) -> Result<DiskId, Response> {
    text.parse()
        .map_err(|e: String| error(StatusCode::BAD_REQUEST, e))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterDisk {
    id: String,
    host: u32,
    #[serde(default)]
    rack: u32,
    #[serde(default)]
    site: u32,
    capacity_bytes: u64,
}

async fn register_disk(
    State(api): State<Api>,
    parsed: Result<Json<RegisterDisk>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let disk = Disk {
        id: parse_disk_id(&request.id)?,
        host: HostId(request.host),
        rack: RackId(request.rack),
        site: SiteId(request.site),
        capacity_bytes: request.capacity_bytes,
        state: DiskState::In,
    };
    let view = disk_json(&disk);
    write(&api, Command::RegisterDisk(disk)).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetDiskState {
    state: String,
}

async fn set_disk_state(
    State(api): State<Api>,
    Path(id): Path<String>,
    parsed: Result<Json<SetDiskState>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let state = match request.state.to_ascii_lowercase().as_str() {
        "in" => DiskState::In,
        "out" => DiskState::Out,
        other => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("state {other:?}: in or out"),
            ));
        }
    };
    let disk = parse_disk_id(&id)?;
    write(&api, Command::SetDiskState { disk, state }).await?;
    Ok(Json(json!({ "id": disk.to_string(), "state": request.state })).into_response())
}

fn domain_name(domain: FailureDomain) -> &'static str {
    match domain {
        FailureDomain::Disk => "disk",
        FailureDomain::Host => "host",
        FailureDomain::Rack => "rack",
        FailureDomain::Site => "site",
    }
}

fn pool_json(name: &str, pool: &crate::state::Pool, with_map: bool) -> Value {
    let mut value = json!({
        "name": name,
        "id": pool.id.0,
        "replicas": pool.policy.replicas,
        "domain": domain_name(pool.policy.domain),
        "pg_count": pool.policy.pg_count,
        "epoch": pool.epoch,
    });
    if with_map {
        let map: Vec<Vec<Value>> = pool
            .pg_map
            .iter()
            .map(|members| {
                members
                    .iter()
                    .map(|m| {
                        json!({
                            "disk": m.disk.to_string(),
                            "replica": m.replica.0,
                            "joined": m.joined,
                        })
                    })
                    .collect()
            })
            .collect();
        value["pg_map"] = json!(map);
    }
    value
}

async fn list_pools(State(api): State<Api>) -> Response {
    read(&api, |state| {
        Ok(Value::Array(
            state.pools().map(|(n, p)| pool_json(n, p, false)).collect(),
        ))
    })
    .await
}

async fn show_pool(State(api): State<Api>, Path(name): Path<String>) -> Response {
    read(&api, move |state| match state.pool(&name) {
        Some(pool) => Ok(pool_json(&name, pool, true)),
        None => Err(MetaError::NotFound { kind: "pool", name }),
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePool {
    name: String,
    #[serde(default = "three")]
    replicas: u32,
    #[serde(default = "host")]
    domain: String,
    #[serde(default = "pg_count_default")]
    pg_count: u32,
}

fn three() -> u32 {
    3
}

fn host() -> String {
    "host".into()
}

fn pg_count_default() -> u32 {
    128
}

async fn create_pool(
    State(api): State<Api>,
    parsed: Result<Json<CreatePool>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let domain = match request.domain.to_ascii_lowercase().as_str() {
        "disk" => FailureDomain::Disk,
        "host" => FailureDomain::Host,
        "rack" => FailureDomain::Rack,
        "site" => FailureDomain::Site,
        other => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("domain {other:?}: disk, host, rack or site"),
            ));
        }
    };
    let name = request.name.clone();
    let command = Command::CreatePool {
        name: request.name,
        replicas: request.replicas,
        domain,
        pg_count: request.pg_count,
    };
    let applied = write(&api, command).await?;
    let id = match applied {
        Applied::Pool(id) => Some(id.0),
        _ => None,
    };
    let view = json!({ "name": name, "id": id, "replicas": request.replicas,
        "domain": domain_name(domain), "pg_count": request.pg_count });
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

fn tier_name(tier: QosTier) -> &'static str {
    match tier {
        QosTier::Normal => "normal",
        QosTier::High => "high",
        QosTier::Ultra => "ultra",
    }
}

fn volume_json(name: &str, volume: &crate::state::Volume) -> Value {
    json!({
        "name": name,
        "id": format!("{:x}", volume.id.0),
        "pool": volume.pool,
        "size_bytes": volume.size_bytes,
        "tier": tier_name(volume.tier),
        "iops_max": volume.iops_limit(),
        "iops_custom": volume.iops_max.is_some(),
        "bytes_per_s_max": volume.bytes_per_s_max,
        "iscsi_access": iscsi::access_json(volume.iscsi.as_ref(), false),
    })
}

/// A tier by name, any case.
fn parse_tier(name: &str) -> Result<QosTier, Response> {
    match name.to_ascii_lowercase().as_str() {
        "normal" => Ok(QosTier::Normal),
        "high" => Ok(QosTier::High),
        "ultra" => Ok(QosTier::Ultra),
        other => Err(error(
            StatusCode::BAD_REQUEST,
            format!("tier {other:?}: normal, high or ultra"),
        )),
    }
}

async fn list_volumes(State(api): State<Api>) -> Response {
    read(&api, |state| {
        Ok(Value::Array(
            state.volumes().map(|(n, v)| volume_json(n, v)).collect(),
        ))
    })
    .await
}

async fn show_volume(State(api): State<Api>, Path(name): Path<String>) -> Response {
    read(&api, move |state| match state.volume(&name) {
        Some(volume) => Ok(volume_json(&name, volume)),
        None => Err(MetaError::NotFound {
            kind: "volume",
            name,
        }),
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateVolume {
    name: String,
    pool: String,
    size_bytes: u64,
    #[serde(default = "normal")]
    tier: String,
    iops_max: Option<u32>,
    bytes_per_s_max: Option<u64>,
}

fn normal() -> String {
    "normal".into()
}

async fn create_volume(
    State(api): State<Api>,
    parsed: Result<Json<CreateVolume>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let tier = parse_tier(&request.tier)?;
    let command = Command::CreateVolume {
        name: request.name.clone(),
        pool: request.pool.clone(),
        size_bytes: request.size_bytes,
        tier,
        iops_max: request.iops_max,
        bytes_per_s_max: request.bytes_per_s_max,
    };
    write(&api, command).await?;
    let name = request.name;
    let view = read_value(&api, move |state| {
        let volume = state.volume(&name).ok_or_else(|| MetaError::NotFound {
            kind: "volume",
            name: name.clone(),
        })?;
        Ok(volume_json(&name, volume))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn delete_volume(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Response, Response> {
    write(&api, Command::DeleteVolume { name: name.clone() }).await?;
    Ok(Json(json!({ "deleted": name })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    size_bytes: u64,
}

async fn resize_volume(
    State(api): State<Api>,
    Path(name): Path<String>,
    parsed: Result<Json<Resize>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let command = Command::ResizeVolume {
        name: name.clone(),
        size_bytes: request.size_bytes,
    };
    write(&api, command).await?;
    Ok(Json(json!({ "name": name, "size_bytes": request.size_bytes })).into_response())
}

async fn list_tenants(State(api): State<Api>) -> Response {
    read(&api, |state| {
        let tenants = state
            .tenants()
            .map(|(name, _)| s3::tenant_json(state, name));
        Ok(Value::Array(tenants.collect::<Result<_, _>>()?))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: String,
}

async fn create_tenant(
    State(api): State<Api>,
    parsed: Result<Json<CreateTenant>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let applied = write(
        &api,
        Command::CreateTenant {
            name: request.name.clone(),
        },
    )
    .await?;
    let id = match applied {
        Applied::Tenant(id) => Some(id.0),
        _ => None,
    };
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": request.name, "id": id })),
    )
        .into_response())
}

async fn delete_tenant(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Response, Response> {
    write(&api, Command::DeleteTenant { name: name.clone() }).await?;
    Ok(Json(json!({ "deleted": name })).into_response())
}

/// `count` characters drawn uniformly from `alphabet`, from the kernel's generator.
fn random_text(alphabet: &[u8], count: usize) -> Result<String, Response> {
    let mut urandom = std::fs::File::open("/dev/urandom").map_err(randomness_failed)?;
    // Rejection sampling keeps the distribution uniform; a byte is kept with probability at
    // least 1/2, so a few reads always suffice.
    let limit = 256 - 256 % alphabet.len();
    let mut text = String::with_capacity(count);
    let mut bytes = vec![0u8; count * 2];
    while text.len() < count {
        urandom.read_exact(&mut bytes).map_err(randomness_failed)?;
        let kept = bytes.iter().filter(|b| usize::from(**b) < limit);
        let needed = count - text.len();
        text.extend(
            kept.take(needed)
                .map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()])),
        );
    }
    Ok(text)
}

fn randomness_failed(e: std::io::Error) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("randomness: {e}"),
    )
}

async fn create_key(
    State(api): State<Api>,
    Path(tenant): Path<String>,
) -> Result<Response, Response> {
    const ID: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+";
    let access_key_id = random_text(ID, 20)?;
    let secret = random_text(SECRET, 40)?;
    let command = Command::CreateAccessKey {
        tenant: tenant.clone(),
        access_key_id: access_key_id.clone(),
        secret_key: SecretKey::new(secret.clone()),
    };
    write(&api, command).await?;
    let view = json!({ "tenant": tenant, "access_key_id": access_key_id, "secret_key": secret });
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn delete_key(State(api): State<Api>, Path(id): Path<String>) -> Result<Response, Response> {
    write(
        &api,
        Command::DeleteAccessKey {
            access_key_id: id.clone(),
        },
    )
    .await?;
    Ok(Json(json!({ "deleted": id })).into_response())
}
