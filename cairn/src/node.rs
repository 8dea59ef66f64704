//! `cairn node run`: a storage node process. It registers itself (where its Raft transport
//! and data API listen) and its disks with the metadata service, hosts the PG replicas the PG
//! maps place on its disks (new pools and changed maps are picked up within a second: a member
//! moved here joins and copies its PG's chunks), talks Raft with the other nodes over mutual
//! TLS, serves its replicas' chunks to peers copying or repairing from them
//! (`/v1/pg-chunks/...`), reports a heartbeat every second, and on SIGTERM flushes its chunk
//! stores before it exits.
//!
//! The metadata service is reached through the admin API (`--admin-url`, or
//! `CAIRN_ADMIN_URL`), with the token from `--token-file`. The node's id is its host number in
//! the cluster map; its certificate (`cairn ca issue`) names it.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{Path as UrlPath, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use cairn_client::{PgRouter, Piece};
use cairn_common::{ChunkId, DiskId, GroupId, NodeId, OwnerId, PoolId, ReplicaId};
use cairn_metadata::state::PgMember;
use cairn_raft::{
    tls::{IdentityPem, NodeIdentity},
    transport::TcpTransport,
};
use cairn_storage_node::{
    ChunkStore,
    pg::{
        ChunkSource, HostedReplica, PgError, PgStats, ReplicaDirectory, WRITE_BYTES_MAX,
        restore::{SourceFuture, pg_chunks, read_existing},
        service::{self, Network, PgHandle},
    },
};
use clap::Args;
use serde_json::{Value, json};

use crate::{
    admin::{Connection, Method, call},
    data::{self, DataError, Target, TargetCache},
    peer::{self, DataListener, DataPeer},
    storage::{self, PoolMap},
};

/// How often the node reports and looks for new pools and peers.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The least time between two refreshes, however often peers name newer maps.
const REFRESH_GAP_MIN: Duration = Duration::from_millis(50);

/// The header a forwarded piece carries: the epoch of the PG map its sender routed it by. A node
/// that knows an older map refreshes its own at once; one that knows a newer map says so in its
/// answer, and the sender refreshes at once. A header, not a query parameter, so that a node of
/// an older build (which refuses unknown parameters) still serves the piece.
const MAP_EPOCH_HEADER: &str = "x-cairn-map-epoch";

/// The header a forwarded write or discard carries: the time (Unix milliseconds) after which
/// its sender may give up on it and send it elsewhere, so the receiving node must not propose
/// it any more (see [`PgHandle::write_before`]). Without it a copy the network delivered late
/// (a partition healing) or a queue held could land after newer writes to the same blocks.
/// Absolute, so that late delivery counts: nodes' clocks must agree within
/// [`FORWARD_TIMEOUT`] minus [`FORWARD_DEADLINE`] (NTP does far better).
const DEADLINE_HEADER: &str = "x-cairn-deadline-ms";

/// How long a node has to propose a write or discard forwarded to it.
const FORWARD_DEADLINE: Duration = Duration::from_secs(4);

#[derive(Args)]
pub struct NodeArgs {
    /// This node's id (its host number in the cluster map; its certificate names it).
    #[arg(long)]
    id: u64,
    /// Directory of the node's Raft log (the write cache).
    #[arg(long)]
    data: PathBuf,
    /// A data directory (disk); repeat per disk.
    #[arg(long = "disk", required = true)]
    disks: Vec<PathBuf>,
    /// Where the Raft transport (mutual TLS) listens.
    #[arg(long)]
    raft_listen: SocketAddr,
    /// Where the data API will listen (registered with the metadata service).
    #[arg(long)]
    data_listen: SocketAddr,
    /// Directory holding `node-<ID>.crt`, `node-<ID>.key` and `ca.crt`.
    #[arg(long)]
    certs: PathBuf,
    /// File holding the admin API's bearer token.
    #[arg(long)]
    token_file: PathBuf,
    /// The node's rack in the cluster map.
    #[arg(long, default_value_t = 0)]
    rack: u32,
    /// The node's site in the cluster map.
    #[arg(long, default_value_t = 0)]
    site: u32,
    /// Entries a PG's log holds past its snapshot before its leader proposes a compaction.
    #[arg(long, default_value_t = cairn_storage_node::pg::COMPACT_ENTRIES_DEFAULT)]
    pg_compact_entries: u64,
    /// Seconds between the content digests each PG's leader proposes, which the metadata
    /// service compares across members (0: none).
    #[arg(long, default_value_t = 600)]
    pg_digest_secs: u64,
    /// The node's budget for copying chunks into joining replicas (recovery, rebalance), MB/s.
    #[arg(long, default_value_t = cairn_storage_node::pg::restore::RESTORE_MB_PER_S_DEFAULT)]
    restore_mb_per_s: u64,
    /// Serve every volume over iSCSI on this address too (through this node, like the data
    /// API); needs `--iscsi-chap-file`.
    #[arg(long, requires = "iscsi_chap_file")]
    iscsi_listen: Option<std::net::SocketAddr>,
    /// File holding the CHAP secret initiators log in with (user `cairn`; 12-16 characters
    /// suit every initiator).
    #[arg(long)]
    iscsi_chap_file: Option<PathBuf>,
    /// Run every disk behind a fault-injecting engine and serve
    /// `/v1/debug/disk-faults/{disk}` (chaos runs and tests only).
    #[arg(long, hide = true)]
    fault_injection: bool,
    #[command(flatten)]
    cache: storage::CacheArgs,
    #[command(flatten)]
    runtime: crate::runtime::RuntimeArgs,
}

pub fn run(args: NodeArgs, connection: &Connection) -> ExitCode {
    let token_file = args.token_file.clone();
    run_service(
        "cairn node",
        &token_file,
        connection,
        args.runtime,
        |connection, token| serve(args, connection, token),
    )
}

/// Runs a long-lived process of the cluster (a storage node, a gateway) on a tokio runtime
/// of `runtime`'s workers: reads its admin token, calls the admin API with it, and reports a
/// failure as `NAME: error` with a failing exit code.
pub(crate) fn run_service<F, Fut>(
    name: &str,
    token_file: &std::path::Path,
    connection: &Connection,
    runtime: crate::runtime::RuntimeArgs,
    serve: F,
) -> ExitCode
where
    F: FnOnce(Connection, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let result = crate::meta::read_token(token_file).and_then(|token| {
        let connection = connection.with_token(token.clone());
        runtime.build()?.block_on(serve(connection, token))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The pool maps a node knows, by pool name.
pub(crate) type Pools = BTreeMap<String, PoolMap>;

/// One pool's id, epoch and PG map, from the admin API.
async fn fetch_pool(connection: &Connection, name: &str) -> Result<PoolMap, String> {
    let shown = call(connection, format!("/v1/pools/{name}"), Method::Get).await?;
    let id = shown["id"].as_u64().ok_or("a pool without an id")?;
    let mut map = Vec::new();
    for members in shown["pg_map"].as_array().into_iter().flatten() {
        let mut pg = Vec::new();
        for member in members.as_array().into_iter().flatten() {
            let disk = member["disk"]
                .as_str()
                .and_then(|d| d.parse::<DiskId>().ok());
            let replica = member["replica"].as_u64().map(ReplicaId);
            let (Some(disk), Some(replica)) = (disk, replica) else {
                return Err(format!("pool {name}: malformed PG member {member}"));
            };
            let joined = member["joined"].as_bool().unwrap_or(false);
            pg.push(PgMember {
                disk,
                replica,
                joined,
            });
        }
        map.push(pg);
    }
    Ok(PoolMap {
        id: PoolId(id as u32),
        epoch: shown["epoch"].as_u64().unwrap_or_default(),
        pg_map: map,
    })
}

/// Brings `known` up to date: one call lists the pools and their epochs, and only a pool new
/// or at another epoch is fetched whole. Returns the pools fetched.
async fn refresh_pools(connection: &Connection, known: &mut Pools) -> Result<Vec<PoolMap>, String> {
    let list = call(connection, "/v1/pools".into(), Method::Get).await?;
    let mut fetched = Vec::new();
    for pool in list.as_array().into_iter().flatten() {
        let name = pool["name"].as_str().ok_or("a pool without a name")?;
        let epoch = pool["epoch"].as_u64();
        if known.get(name).is_some_and(|k| Some(k.epoch) == epoch) {
            continue;
        }
        let map = fetch_pool(connection, name).await?;
        known.insert(name.to_string(), map.clone());
        fetched.push(map);
    }
    Ok(fetched)
}

async fn serve(args: NodeArgs, connection: Connection, token: String) -> Result<(), String> {
    let me = NodeId(args.id);
    if args.id == 0 || args.id > ReplicaId::NODE_MAX {
        return Err(format!("node id {} out of range", args.id));
    }
    let identity = crate::meta::load_identity(&args.certs, me)?;
    let disks =
        storage::open_disks(&args.disks, args.fault_injection, args.cache.read_cache_mib).await?;
    let registration = json!({
        "raft_addr": args.raft_listen.to_string(),
        "data_addr": args.data_listen.to_string(),
    });
    call(
        &connection,
        format!("/v1/storage-nodes/{}", args.id),
        Method::Put(registration),
    )
    .await?;
    for (disk, path) in disks.iter().zip(&args.disks) {
        let body = json!({
            "id": disk.disk_id().to_string(),
            "host": args.id,
            "rack": args.rack,
            "site": args.site,
            "capacity_bytes": storage::capacity(path)?,
        });
        match call(&connection, "/v1/nodes/disks".into(), Method::Post(body)).await {
            Ok(_) => {}
            Err(e) if e.contains("409") => {}
            Err(e) => return Err(format!("register disk {}: {e}", disk.disk_id())),
        }
    }
    let (transport, _, incoming) = TcpTransport::start(&identity, args.raft_listen)
        .await
        .map_err(|e| e.to_string())?;
    let directory = Directory::default();
    let mut known = Pools::new();
    let (nodes, maps) = directory.refresh(&connection, &mut known).await?;
    set_peers(&transport, me, nodes);
    let wal = args.data.join("wal");
    let (mut host, created) = storage::start_host(me, &wal, &disks, &maps)?;
    host.set_compact_entries(args.pg_compact_entries.max(1));
    // The host ticks every 10 ms.
    host.set_digest_ticks(args.pg_digest_secs.saturating_mul(100));
    let hosted = host.replicas().count();
    let network = Network {
        transport: transport.clone(),
        incoming,
        source: Arc::new(HttpChunkSource::new(identity.pem(), directory.clone())?),
    };
    let stats = host.stats();
    let replicas = host.directory();
    let pgs = service::spawn(
        host,
        me,
        storage::PG_TICK,
        Some(network),
        args.restore_mb_per_s,
    );
    let backend = NodeBackend {
        connection: connection.clone(),
        token: token.clone(),
        pgs: pgs.clone(),
        chunk_size: disks[0].chunk_size_bytes(),
        forwarder: Forwarder::for_node(me, identity.pem(), directory.clone())?,
        replicas,
        targets: Arc::default(),
    };
    if let (Some(listen), Some(chap_file)) = (args.iscsi_listen, &args.iscsi_chap_file) {
        let secret = crate::gateway::read_chap_secret(chap_file)?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("iSCSI portal {listen}: {e}"))?;
        let config = crate::iscsi::GatewayConfig {
            connection: connection.clone(),
            chap: Some(crate::iscsi::Chap {
                user: crate::iscsi::CHAP_USER.into(),
                secret,
            }),
            advertise: None,
        };
        let gateway = backend.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::iscsi::serve(listener, gateway, config).await {
                tracing::error!("{e}");
                eprintln!("cairn node: {e}");
                std::process::exit(1);
            }
        });
    }
    let data_listen = args.data_listen;
    let served_disks = disks.clone();
    let served_as = identity.clone();
    let faults = args.fault_injection;
    tokio::spawn(async move {
        let served = serve_data(
            data_listen,
            &served_as,
            backend,
            stats,
            served_disks,
            faults,
        );
        if let Err(e) = served.await {
            tracing::error!("{e}");
            eprintln!("cairn node: {e}");
            std::process::exit(1);
        }
    });
    tokio::spawn(storage::stop_on_signal(
        format!("cairn node {}", args.id),
        disks.clone(),
    ));
    println!(
        "cairn node {}: up ({hosted} replicas, {created} created now)",
        args.id
    );
    loop {
        let refreshed = refresh(
            &wal,
            &connection,
            &transport,
            &pgs,
            &disks,
            me,
            &mut known,
            &directory,
        );
        if let Err(e) = refreshed.await {
            tracing::warn!("refresh: {e}");
        }
        directory.next_refresh(REFRESH_INTERVAL).await;
    }
}

/// Tells the transport where every other node's Raft listens.
fn set_peers(transport: &TcpTransport, me: NodeId, nodes: Vec<(NodeId, SocketAddr)>) {
    for (id, raft) in nodes {
        if id != me {
            transport.set_peer_address(id, raft);
        }
    }
}

/// One refresh: heartbeat, peers, and replicas of pools created or changed since.
#[allow(clippy::too_many_arguments)]
async fn refresh(
    wal: &std::path::Path,
    connection: &Connection,
    transport: &TcpTransport,
    pgs: &PgHandle,
    disks: &[Arc<ChunkStore>],
    me: NodeId,
    known: &mut Pools,
    directory: &Directory,
) -> Result<(), String> {
    let replicas = pgs.report().await.map_err(|e| e.to_string())?;
    let beat = storage::heartbeat(me, disks, replicas);
    let body = serde_json::to_value(&beat).map_err(|e| e.to_string())?;
    call(
        connection,
        format!("/v1/nodes/{}/heartbeat", me.0),
        Method::Post(body),
    )
    .await?;
    let (nodes, fetched) = directory.refresh(connection, known).await?;
    set_peers(transport, me, nodes);
    if !fetched.is_empty() {
        pgs.set_targets(storage::targets(&fetched))
            .map_err(|e| e.to_string())?;
    }
    let wanted = storage::local_replicas(me, disks, &fetched);
    storage::record_replicas(wal, &wanted)?;
    if !wanted.is_empty() {
        let count = wanted.len();
        // Replicas hosted already (a map at a new epoch) are left as they are. If the host
        // refuses, the pools are fetched again next time.
        if let Err(e) = pgs.host(wanted).await {
            known.retain(|_, k| fetched.iter().all(|f| f.id != k.id));
            return Err(e.to_string());
        }
        tracing::info!(count, "hosting the replicas of a new or changed pool");
    }
    Ok(())
}

/// What the refresh loop learns for the data path: other nodes' data API addresses and the
/// PG map (with the leaders last heard of).
#[derive(Clone, Default)]
pub(crate) struct Directory {
    data_addrs: Arc<Mutex<BTreeMap<u64, SocketAddr>>>,
    router: Arc<Mutex<PgRouter>>,
    /// Wakes the refresh loop before its interval: a peer named a newer map than ours.
    soon: Arc<tokio::sync::Notify>,
}

impl Directory {
    /// The epoch of the map `group`'s route came from, if the group is known.
    fn epoch(&self, group: GroupId) -> Option<u64> {
        self.router.lock().expect("not poisoned").epoch(group)
    }

    /// Asks the refresh loop to run now rather than at its next interval. Requests coalesce:
    /// any number before the next refresh cause one.
    pub(crate) fn refresh_soon(&self) {
        self.soon.notify_one();
    }

    /// Takes the map epoch a peer named for `group`: a newer one than ours (or a group we do
    /// not know) means our map is stale, so it is fetched now, not within the interval.
    fn heard_epoch(&self, group: GroupId, epoch: u64) {
        if self.epoch(group).is_none_or(|mine| epoch > mine) {
            self.refresh_soon();
        }
    }

    /// Waits until the next refresh is due: `interval` after the last, or sooner when asked
    /// ([`Directory::refresh_soon`]), but never within [`REFRESH_GAP_MIN`] of the last.
    pub(crate) async fn next_refresh(&self, interval: Duration) {
        tokio::time::sleep(REFRESH_GAP_MIN).await;
        let rest = interval.saturating_sub(REFRESH_GAP_MIN);
        let _ = tokio::time::timeout(rest, self.soon.notified()).await;
    }

    /// Learns the storage nodes and brings `known` up to date, remembering the PG maps of the
    /// pools new or changed; returns each node's Raft address (for a node's transport) and
    /// the pools fetched.
    pub(crate) async fn refresh(
        &self,
        connection: &Connection,
        known: &mut Pools,
    ) -> Result<(Vec<(NodeId, SocketAddr)>, Vec<PoolMap>), String> {
        let nodes = self.learn_nodes(connection).await?;
        let fetched = refresh_pools(connection, known).await?;
        self.remember_members(&fetched);
        Ok((nodes, fetched))
    }

    /// Learns where every storage node's data API listens; returns each node with its Raft
    /// address.
    async fn learn_nodes(
        &self,
        connection: &Connection,
    ) -> Result<Vec<(NodeId, SocketAddr)>, String> {
        let nodes = call(connection, "/v1/storage-nodes".into(), Method::Get).await?;
        let mut raft_addrs = Vec::new();
        for node in nodes.as_array().into_iter().flatten() {
            let id = node["id"].as_u64().map(NodeId);
            let raft = node["raft_addr"].as_str().and_then(|a| a.parse().ok());
            let data = node["data_addr"].as_str().and_then(|a| a.parse().ok());
            if let (Some(id), Some(raft), Some(data)) = (id, raft, data) {
                raft_addrs.push((id, raft));
                let mut addrs = self.data_addrs.lock().expect("not poisoned");
                addrs.insert(id.0, data);
            }
        }
        Ok(raft_addrs)
    }

    /// Gives the router every pool's PG map (an older epoch than the one held is ignored).
    fn remember_members(&self, pools: &[PoolMap]) {
        let mut router = self.router.lock().expect("not poisoned");
        for pool in pools {
            let map: Vec<Vec<ReplicaId>> = pool
                .pg_map
                .iter()
                .map(|pg| pg.iter().map(|m| m.replica).collect())
                .collect();
            router.update_pool(pool.id, pool.epoch, &map);
        }
    }
}

/// Forwarding hops a piece may take before the client is told to retry.
const FORWARD_HOPS_MAX: usize = 3;

/// Sends pieces to the storage node leading their PG, over its data API: from a node over
/// mutual TLS (see [`crate::peer`]), from a gateway over HTTP behind the token. One HTTP agent
/// for all of them, so connections to a node are kept and reused.
#[derive(Clone)]
pub(crate) struct Forwarder {
    /// This process's node, if it is one: pieces for it are not sent over the network, and
    /// `agent` speaks mutual TLS as it.
    me: Option<NodeId>,
    /// A gateway's admin token (`None` on a node, whose certificate speaks for it).
    token: Option<String>,
    directory: Directory,
    agent: ureq::Agent,
}

/// Longest a forwarded piece may take before its sender gives up and tries the PG's leader as
/// its map then names: a node cut off from its PG by a partition must not hold writes for
/// the whole partition (a 15 s timeout held them up to 13 s in `chaos/run.sh partition`).
/// Past [`FORWARD_DEADLINE`], so that the receiver has stopped proposing by then.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

const _: () = assert!(FORWARD_TIMEOUT.as_millis() >= FORWARD_DEADLINE.as_millis() + 1000);

/// Milliseconds since the Unix epoch, by this node's clock.
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The local instant matching a [`DEADLINE_HEADER`] value read at `now_ms`: `Err` if it
/// has passed, `Ok(None)` without a (readable) header.
fn deadline_from(header: Option<&str>, now_ms: u64) -> Result<Option<Instant>, ()> {
    let Some(at) = header.and_then(|v| v.parse::<u64>().ok()) else {
        return Ok(None);
    };
    match at.checked_sub(now_ms) {
        Some(left) if left > 0 => Ok(Some(Instant::now() + Duration::from_millis(left))),
        _ => Err(()),
    }
}

impl Forwarder {
    /// A gateway's forwarder: HTTP with the token.
    pub(crate) fn new(token: String, directory: Directory) -> Forwarder {
        let agent = peer::agent(
            ureq::Agent::config_builder()
                .timeout_global(Some(FORWARD_TIMEOUT))
                .http_status_as_error(false)
                .build(),
        );
        Forwarder {
            me: None,
            token: Some(token),
            directory,
            agent,
        }
    }

    /// Node `me`'s forwarder: mutual TLS as `identity`.
    pub(crate) fn for_node(
        me: NodeId,
        identity: &IdentityPem,
        directory: Directory,
    ) -> Result<Forwarder, String> {
        let agent = peer::node_agent(identity, directory.data_addrs.clone(), FORWARD_TIMEOUT)?;
        Ok(Forwarder {
            me: Some(me),
            token: None,
            directory,
            agent,
        })
    }

    fn forget_leader(&self, group: GroupId) {
        let mut router = self.directory.router.lock().expect("not poisoned");
        router.forget_leader(group);
    }

    /// Tries another member of `group` next: `node` did not answer (see
    /// [`cairn_client::PgRouter::skip_node`]).
    fn skip_node(&self, group: GroupId, node: NodeId) {
        let mut router = self.directory.router.lock().expect("not poisoned");
        router.skip_node(group, node);
    }

    /// The node to send a piece of `group` to: the leader last heard of (`hint` first), else
    /// the preferred one; `None` if that is this node or unknown.
    fn next_hop(&self, group: GroupId, hint: Option<ReplicaId>) -> Option<(NodeId, SocketAddr)> {
        let node = {
            let mut router = self.directory.router.lock().expect("not poisoned");
            if let Some(hint) = hint {
                router.note_leader(group, hint);
            }
            router.target(group)?
        };
        if Some(node) == self.me {
            return None;
        }
        let addrs = self.directory.data_addrs.lock().expect("not poisoned");
        Some((node, addrs.get(&node.0).copied()?))
    }

    /// Sends a piece request to another node's data API.
    async fn forward(
        &self,
        (node, addr): (NodeId, SocketAddr),
        group: GroupId,
        piece: Piece,
        op: &PieceOp,
    ) -> Result<Vec<u8>, DataError> {
        let c = piece.chunk;
        let mut path = format!(
            "/v1/pieces/{}/{}/{}/{}?offset={}",
            group.0, c.pool.0, c.owner.0, c.index, piece.offset
        );
        if !matches!(op, PieceOp::Write(_)) {
            path.push_str(&format!("&length={}", piece.length));
        }
        let (url, auth) = match &self.token {
            Some(token) => (
                format!("http://{addr}{path}"),
                Some(format!("Bearer {token}")),
            ),
            None => (peer::node_url(node, addr.port(), &path), None),
        };
        // Unknown (no map yet) goes as 0: any node with a map then answers with a newer one.
        let epoch = self.directory.epoch(group).unwrap_or(0).to_string();
        // Reads change nothing: any copy may run whenever it arrives.
        let deadline = (!matches!(op, PieceOp::Read))
            .then(|| (unix_millis() + FORWARD_DEADLINE.as_millis() as u64).to_string());
        let agent = self.agent.clone();
        let op = op.clone();
        let answer = tokio::task::spawn_blocking(move || {
            fn headed<B>(
                request: ureq::RequestBuilder<B>,
                auth: &Option<String>,
                epoch: &str,
                deadline: Option<&str>,
            ) -> ureq::RequestBuilder<B> {
                let request = request.header(MAP_EPOCH_HEADER, epoch);
                let request = match deadline {
                    Some(deadline) => request.header(DEADLINE_HEADER, deadline),
                    None => request,
                };
                match auth {
                    Some(auth) => request.header("Authorization", auth),
                    None => request,
                }
            }
            let deadline = deadline.as_deref();
            let response = match &op {
                PieceOp::Write(data) => {
                    headed(agent.put(&url), &auth, &epoch, deadline).send(&data[..])
                }
                PieceOp::Read => headed(agent.get(&url), &auth, &epoch, None).call(),
                PieceOp::Discard => headed(agent.delete(&url), &auth, &epoch, deadline).call(),
            };
            let mut response = response.map_err(|e| format!("{url}: {e}"))?;
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .with_config()
                .limit(u64::from(WRITE_BYTES_MAX as u32) + 1)
                .read_to_vec()
                .map_err(|e| format!("{url}: {e}"))?;
            Ok::<_, String>((status, body))
        })
        .await
        .map_err(|e| DataError::Failed(format!("forward: {e}")))?;
        let (status, body) = answer.map_err(DataError::Unavailable)?;
        match status {
            200 | 204 => Ok(body),
            400 => Err(DataError::BadRequest(String::from_utf8_lossy(&body).into())),
            _ => Err(DataError::Unavailable(format!(
                "node at {addr}: HTTP {status} {}",
                String::from_utf8_lossy(&body)
            ))),
        }
    }

    /// Runs a piece: through `local` first when given (this node's PG host), else, or while
    /// the leader is elsewhere, on the node leading the PG. Answers the bytes read (empty for
    /// writes and discards). A node forwards at most [`FORWARD_HOPS_MAX`] times and leaves
    /// longer waits to its client; a gateway (no `local`) is the client, so it keeps trying
    /// for up to [`GATEWAY_RETRY_FOR`] (elections, a node restarting, leaders moving), as an
    /// initiator would otherwise see BUSY.
    pub(crate) async fn piece(
        &self,
        local: Option<&PgHandle>,
        group: GroupId,
        piece: Piece,
        op: PieceOp,
    ) -> Result<Vec<u8>, DataError> {
        let deadline = Instant::now() + GATEWAY_RETRY_FOR;
        let mut hint = None;
        let mut hops = 0;
        loop {
            hops += 1;
            let out_of_tries = match local {
                Some(_) => hops > FORWARD_HOPS_MAX,
                None => hops > 1 && Instant::now() >= deadline,
            };
            if out_of_tries {
                return Err(DataError::Unavailable(format!(
                    "{group}: no leader answered after {hops} tries; retry"
                )));
            }
            if let Some(pgs) = local {
                match run_local(pgs, group, piece, &op, None).await {
                    Ok(done) => return Ok(done),
                    Err(PgError::NotLeader { leader, .. }) => hint = leader,
                    Err(PgError::UnknownGroup(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let Some(addr) = self.next_hop(group, hint.take()) else {
                if local.is_some() {
                    return Err(DataError::Unavailable(format!("{group}: no leader known")));
                }
                // A gateway with no map yet, or the leader's node not yet known.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            match self.forward(addr, group, piece, &op).await {
                Err(DataError::Unavailable(why)) => {
                    // That node did not lead (or answer, or host the PG): follow its hint,
                    // else ask the map again next time; a newer map it names is fetched now.
                    let answer = NodeAnswer::parse(&why);
                    if let Some(epoch) = answer.epoch {
                        self.directory.heard_epoch(group, epoch);
                    }
                    hint = answer.leader;
                    if hint.is_none() && NodeAnswer::answered(&why) {
                        self.forget_leader(group);
                    } else if hint.is_none() {
                        self.skip_node(group, addr.0);
                    }
                    tokio::time::sleep(Duration::from_millis(if hint.is_some() { 5 } else { 100 }))
                        .await;
                }
                other => return other,
            }
        }
    }
}

/// How long a gateway retries a piece before answering the initiator BUSY.
const GATEWAY_RETRY_FOR: Duration = Duration::from_secs(10);

/// What a node said in a 503 answer to a forwarded piece (`{"leader": REPLICA, "epoch": N}`):
/// the leader it knows of and the epoch of its map, each if it named one.
#[derive(Debug, Default, PartialEq, Eq)]
struct NodeAnswer {
    leader: Option<ReplicaId>,
    epoch: Option<u64>,
}

impl NodeAnswer {
    /// True if the node answered at all (an HTTP status), false for a connection refused,
    /// reset or timed out.
    fn answered(error: &str) -> bool {
        error.starts_with("node at ") && error.contains(": HTTP ")
    }

    /// Reads `Forwarder::forward`'s error text; anything else (a refused connection, another
    /// status, a body that is not JSON) names nothing.
    fn parse(error: &str) -> NodeAnswer {
        let Some((_, body)) = error.split_once(" HTTP 503 ") else {
            return NodeAnswer::default();
        };
        let Ok(value) = serde_json::from_str::<Value>(body) else {
            return NodeAnswer::default();
        };
        NodeAnswer {
            leader: value["leader"].as_u64().map(ReplicaId),
            epoch: value["epoch"].as_u64(),
        }
    }
}

/// What is done with a piece.
#[derive(Clone)]
pub(crate) enum PieceOp {
    Read,
    Write(Vec<u8>),
    Discard,
}

/// Runs a piece on this node's PG host only; the bytes read, empty for writes and discards.
async fn run_local(
    pgs: &PgHandle,
    group: GroupId,
    piece: Piece,
    op: &PieceOp,
    deadline: Option<Instant>,
) -> Result<Vec<u8>, PgError> {
    let Piece {
        chunk,
        offset,
        length,
        ..
    } = piece;
    match op {
        PieceOp::Read => pgs.read(group, chunk, offset, length).await,
        PieceOp::Write(data) => pgs
            .write_before(group, chunk, offset, data.clone(), deadline)
            .await
            .map(|()| Vec::new()),
        PieceOp::Discard => pgs
            .discard_before(group, chunk, offset, length, deadline)
            .await
            .map(|()| Vec::new()),
    }
}

/// `cairn node run`'s data backend: volumes from the admin API, pieces through the local PG
/// host when it holds the PG's leader (or, for reads, any replica), else forwarded to the node
/// that leads it.
#[derive(Clone)]
struct NodeBackend {
    connection: Connection,
    token: String,
    pgs: PgHandle,
    chunk_size: u32,
    forwarder: Forwarder,
    /// The replicas hosted here (peers copy and repair from them).
    replicas: ReplicaDirectory,
    targets: Arc<TargetCache>,
}

/// Maps an admin API error ("message (HTTP status)") to the data API's, keeping the message.
fn api_error(e: String) -> DataError {
    let message = e
        .rsplit_once(" (HTTP ")
        .map_or(e.as_str(), |(message, _)| message)
        .to_string();
    if e.ends_with("(HTTP 404)") {
        DataError::NotFound(message)
    } else if e.ends_with("(HTTP 400)") {
        DataError::BadRequest(message)
    } else {
        DataError::Unavailable(message)
    }
}

impl NodeBackend {
    /// A replica hosted here, for a peer's copy or repair.
    fn hosted(&self, replica: u64) -> Result<HostedReplica, DataError> {
        let replicas = self.replicas.read().expect("not poisoned");
        replicas
            .get(&ReplicaId(replica))
            .cloned()
            .ok_or_else(|| DataError::NotFound(format!("replica {replica} is not here")))
    }
}

impl data::Backend for NodeBackend {
    async fn target(&self, name: String) -> Result<Target, DataError> {
        self.targets
            .get(name, async |name| self.lookup(name).await)
            .await
    }

    fn chunk_size(&self) -> Result<u32, DataError> {
        Ok(self.chunk_size)
    }

    async fn write(&self, group: GroupId, piece: Piece, data: Vec<u8>) -> Result<(), DataError> {
        let op = PieceOp::Write(data);
        let local = Some(&self.pgs);
        self.forwarder
            .piece(local, group, piece, op)
            .await
            .map(|_| ())
    }

    async fn read(&self, group: GroupId, piece: Piece) -> Result<Vec<u8>, DataError> {
        let local = Some(&self.pgs);
        self.forwarder
            .piece(local, group, piece, PieceOp::Read)
            .await
    }

    async fn discard(&self, group: GroupId, piece: Piece) -> Result<(), DataError> {
        let local = Some(&self.pgs);
        let op = PieceOp::Discard;
        self.forwarder
            .piece(local, group, piece, op)
            .await
            .map(|_| ())
    }
}

impl NodeBackend {
    async fn lookup(&self, name: String) -> Result<Target, DataError> {
        lookup(&self.connection, name).await
    }
}

/// The volume `name` as the metadata service has it now.
pub(crate) async fn lookup(connection: &Connection, name: String) -> Result<Target, DataError> {
    let volume = call(connection, format!("/v1/volumes/{name}"), Method::Get)
        .await
        .map_err(api_error)?;
    let pool_name = volume["pool"].as_str().unwrap_or_default().to_string();
    let pool = call(connection, format!("/v1/pools/{pool_name}"), Method::Get)
        .await
        .map_err(api_error)?;
    let owner = volume["id"]
        .as_str()
        .and_then(|id| u64::from_str_radix(id, 16).ok())
        .ok_or_else(|| DataError::Failed(format!("volume {name} without an id")))?;
    Ok(Target {
        owner: OwnerId(owner),
        pool: PoolId(pool["id"].as_u64().unwrap_or_default() as u32),
        pg_count: pool["pg_count"].as_u64().unwrap_or_default() as u32,
        size_bytes: volume["size_bytes"].as_u64().unwrap_or_default(),
    })
}

/// One piece from another node, run here only (no further forwarding): 503 with the leader's
/// replica id when this node does not lead the PG, or with none when it does not host it; both
/// name the epoch of this node's map, and a sender's newer epoch makes this node refresh.
async fn piece_route(
    State(backend): State<NodeBackend>,
    UrlPath((group, pool, owner, index)): UrlPath<(u64, u32, u64, u32)>,
    RawQuery(query): RawQuery,
    method: axum::http::Method,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let directory = &backend.forwarder.directory;
    let sender_epoch = headers
        .get(MAP_EPOCH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(epoch) = sender_epoch {
        directory.heard_epoch(GroupId(group), epoch);
    }
    let deadline = headers.get(DEADLINE_HEADER).and_then(|v| v.to_str().ok());
    let Ok(deadline) = deadline_from(deadline, unix_millis()) else {
        // Its sender may have sent it elsewhere by now: running it could undo newer writes.
        // Every one refused points at a clock apart or a network holding requests for
        // seconds: said at most every 10 s, not once per request.
        static LAST_WARNED_S: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now_s = unix_millis() / 1000;
        let last = LAST_WARNED_S.load(std::sync::atomic::Ordering::Relaxed);
        if now_s >= last + 10 {
            LAST_WARNED_S.store(now_s, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                group,
                "a forwarded write arrived past its sender's deadline and was refused: is this node's clock ahead of its peers'?"
            );
        }
        let answer = json!({
            "error": "the forwarded request's deadline passed before it arrived (clocks apart?)",
            "leader": null,
            "epoch": directory.epoch(GroupId(group)),
        });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(answer)).into_response();
    };
    let op = match method {
        axum::http::Method::PUT => PieceOp::Write(body.to_vec()),
        axum::http::Method::DELETE => PieceOp::Discard,
        _ => PieceOp::Read,
    };
    let answers_bytes = matches!(op, PieceOp::Read);
    let result: Result<Vec<u8>, Response> = async {
        let need_length = !matches!(op, PieceOp::Write(_));
        let (offset, length) =
            data::range(query.as_deref(), need_length).map_err(IntoResponse::into_response)?;
        let bad =
            |what: &str| DataError::BadRequest(format!("{what} past a chunk")).into_response();
        let length = match &op {
            PieceOp::Write(data) => data.len() as u64,
            _ => length.unwrap_or_default(),
        };
        let piece = Piece {
            chunk: ChunkId {
                pool: PoolId(pool),
                owner: OwnerId(owner),
                index,
            },
            offset: u32::try_from(offset).map_err(|_| bad("offset"))?,
            length: u32::try_from(length).map_err(|_| bad("length"))?,
            buffer_offset: 0,
        };
        let answer = run_local(&backend.pgs, GroupId(group), piece, &op, deadline).await;
        answer.map_err(|e| {
            let leader = match &e {
                PgError::NotLeader { leader, .. } => leader.map(|r| r.0),
                // Not hosted here: the sender's map is older than this node's, or newer.
                PgError::UnknownGroup(_) => None,
                _ => return DataError::from(e).into_response(),
            };
            let epoch = directory.epoch(GroupId(group));
            let answer = json!({ "error": e.to_string(), "leader": leader, "epoch": epoch });
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(answer)).into_response()
        })
    }
    .await;
    match result {
        Ok(_) if !answers_bytes => StatusCode::NO_CONTENT.into_response(),
        Ok(data) => (StatusCode::OK, data).into_response(),
        Err(response) => response,
    }
}

/// Where a joining replica here copies chunks from a replica on another node: that node's
/// data API (`/v1/pg-chunks/...`, behind the token).
/// Over mutual TLS, as this node (see [`crate::peer`]): only nodes may copy a PG's chunks.
struct HttpChunkSource {
    directory: Directory,
    agent: ureq::Agent,
}

impl HttpChunkSource {
    fn new(identity: &IdentityPem, directory: Directory) -> Result<HttpChunkSource, String> {
        let agent = peer::node_agent(
            identity,
            directory.data_addrs.clone(),
            Duration::from_secs(30),
        )?;
        Ok(HttpChunkSource { directory, agent })
    }

    /// GETs `path` from the data API of `from`'s node, at most `limit` bytes.
    async fn get(&self, from: ReplicaId, path: String, limit: u64) -> Result<Vec<u8>, String> {
        let node = from.node();
        let addr = {
            let addrs = self.directory.data_addrs.lock().expect("not poisoned");
            addrs.get(&node.0).copied()
        };
        let addr = addr.ok_or_else(|| format!("no data address known for {node}"))?;
        let url = peer::node_url(node, addr.port(), &path);
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || {
            let mut response = agent.get(&url).call().map_err(|e| format!("{url}: {e}"))?;
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .with_config()
                .limit(limit)
                .read_to_vec()
                .map_err(|e| format!("{url}: {e}"))?;
            if status != 200 {
                return Err(format!(
                    "{url}: HTTP {status} {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Ok(body)
        })
        .await
        .map_err(|e| format!("copy request: {e}"))?
    }
}

/// Chunks one PG listing may name: a PG of 64 TiB in 4 MiB chunks holds 16 Mi; the listing is
/// 16 bytes a chunk, so this bounds it to 256 MiB.
const PG_CHUNKS_MAX: u64 = 16 << 20;

impl ChunkSource for HttpChunkSource {
    fn list(&self, from: ReplicaId, _group: GroupId) -> SourceFuture<'_, Vec<ChunkId>> {
        Box::pin(async move {
            let path = format!("/v1/pg-chunks/{}", from.0);
            let body = self.get(from, path, PG_CHUNKS_MAX * 16).await?;
            if !body.len().is_multiple_of(ChunkId::ENCODED_SIZE) {
                return Err(format!("a chunk listing of {} bytes", body.len()));
            }
            Ok(body
                .chunks_exact(ChunkId::ENCODED_SIZE)
                .map(|c| ChunkId::from_bytes(c.try_into().expect("invariant: exact chunks")))
                .collect())
        })
    }

    fn read(
        &self,
        from: ReplicaId,
        chunk: ChunkId,
        offset: u32,
        length: u32,
        min_applied: u64,
    ) -> SourceFuture<'_, Vec<u8>> {
        Box::pin(async move {
            let path = format!(
                "/v1/pg-chunks/{}/{}/{}/{}?offset={offset}&length={length}&min_applied={min_applied}",
                from.0, chunk.pool.0, chunk.owner.0, chunk.index
            );
            self.get(from, path, u64::from(length) + 1).await
        })
    }
}

/// The chunks a replica here holds of its PG, 16 bytes each (`ChunkId::to_bytes`): the list a
/// joining replica copies.
async fn pg_chunks_route(
    State(backend): State<NodeBackend>,
    UrlPath(replica): UrlPath<u64>,
) -> Response {
    match backend.hosted(replica) {
        Ok(hosted) if hosted.pg_count > 0 => {
            let chunks = pg_chunks(&hosted.store, hosted.group, hosted.pg_count);
            let body: Vec<u8> = chunks.iter().flat_map(|c| c.to_bytes()).collect();
            (StatusCode::OK, body).into_response()
        }
        Ok(_) => DataError::Unavailable(format!(
            "replica {replica}: its pool's map is not known yet"
        ))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Splits `min_applied=N` off a query string (the rest is an offset and length).
fn take_min_applied(query: Option<&str>) -> Result<(u64, String), DataError> {
    let mut min_applied = 0;
    let mut rest = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        match pair.strip_prefix("min_applied=") {
            Some(value) => {
                min_applied = value.parse().map_err(|_| {
                    DataError::BadRequest(format!("min_applied={value:?} is not a number"))
                })?
            }
            None => rest.push(pair),
        }
    }
    Ok((min_applied, rest.join("&")))
}

/// A range of one chunk as a replica here holds it (checksums verified; a chunk it does not
/// hold is 404, never zeros).
async fn pg_chunk_route(
    State(backend): State<NodeBackend>,
    UrlPath((replica, pool, owner, index)): UrlPath<(u64, u32, u64, u32)>,
    RawQuery(query): RawQuery,
) -> Response {
    let chunk = ChunkId {
        pool: PoolId(pool),
        owner: OwnerId(owner),
        index,
    };
    let (min_applied, query) = match take_min_applied(query.as_deref()) {
        Ok(split) => split,
        Err(e) => return e.into_response(),
    };
    let range = match data::range(Some(&query), true) {
        Ok((offset, Some(length))) => u32::try_from(offset).ok().zip(u32::try_from(length).ok()),
        Ok(_) => None,
        Err(e) => return e.into_response(),
    };
    let Some((offset, length)) = range.filter(|(_, l)| *l as usize <= WRITE_BYTES_MAX) else {
        return DataError::BadRequest(format!(
            "offset and length (at most {WRITE_BYTES_MAX}) inside a chunk"
        ))
        .into_response();
    };
    let hosted = match backend.hosted(replica) {
        Ok(hosted) => hosted,
        Err(e) => return e.into_response(),
    };
    if !hosted.group.holds(chunk, hosted.pg_count) {
        return DataError::BadRequest(format!("{chunk} is not in {}", hosted.group))
            .into_response();
    }
    let applied = hosted.applied.load(std::sync::atomic::Ordering::Relaxed);
    if applied < min_applied {
        return DataError::Unavailable(format!(
            "replica {replica} applied {applied}, behind {min_applied}"
        ))
        .into_response();
    }
    match read_existing(&hosted.store, chunk, offset, length).await {
        Ok(data) => (StatusCode::OK, data).into_response(),
        Err(e) => DataError::NotFound(e).into_response(),
    }
}

/// Where block `?block=B` of a chunk lies in the files of this node's disks that hold the
/// chunk: `[{"disk", "path", "offset"}]` (for tools and fault-injection tests that inspect
/// or damage chunk files; behind the token like everything here).
fn chunk_location(
    disks: &[Arc<ChunkStore>],
    pool: u32,
    owner: u64,
    index: u32,
    query: Option<&str>,
) -> Response {
    let chunk = ChunkId {
        pool: PoolId(pool),
        owner: OwnerId(owner),
        index,
    };
    let block = query
        .and_then(|q| q.strip_prefix("block="))
        .and_then(|b| b.parse::<u64>().ok());
    let Some(block) = block else {
        return DataError::BadRequest("block=N is required".into()).into_response();
    };
    let mut found = Vec::new();
    for disk in disks {
        let bytes = block * u64::from(cairn_common::BLOCK_SIZE);
        if bytes >= u64::from(disk.chunk_size_bytes()) {
            return DataError::BadRequest(format!("block {block} past the chunk")).into_response();
        }
        if let (Ok((path, _)), Ok(offset)) = (
            disk.chunk_location(chunk),
            disk.data_file_offset(chunk, bytes),
        ) {
            found.push(json!({
                "disk": disk.disk_id().to_string(),
                "path": path.display().to_string(),
                "offset": offset,
            }));
        }
    }
    axum::Json(Value::Array(found)).into_response()
}

/// Refuses requests without the admin token (compared in constant time), unless they come
/// from a node of the cluster (a TLS connection with its certificate: see [`crate::peer`]).
async fn require_token(
    State(token): State<Arc<String>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if peer::from_node(&request) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "error": "missing or wrong bearer token" })),
        )
            .into_response()
    }
}

/// Serves the data API (volume data, pieces from other nodes, Prometheus counters) on
/// `listen`: plain HTTP behind the token, and mutual TLS for the other nodes as `identity`.
async fn serve_data(
    listen: SocketAddr,
    identity: &NodeIdentity,
    backend: NodeBackend,
    stats: Arc<PgStats>,
    disks: Vec<Arc<ChunkStore>>,
    fault_injection: bool,
) -> Result<(), String> {
    let token = Arc::new(backend.token.clone());
    let faults = match fault_injection {
        true => storage::fault_routes(disks.clone()),
        false => axum::Router::new(),
    };
    let located_disks = disks.clone();
    let metrics = axum::routing::get(move || {
        let (stats, disks) = (stats.clone(), disks.clone());
        async move { storage::metrics(&stats, &disks) }
    });
    let locate = axum::routing::get(
        move |UrlPath((pool, owner, index)): UrlPath<(u32, u64, u32)>,
              RawQuery(query): RawQuery| {
            let disks = located_disks.clone();
            async move { chunk_location(&disks, pool, owner, index, query.as_deref()) }
        },
    );
    let router = axum::Router::new()
        .route("/metrics", metrics)
        .route("/v1/debug/chunk-location/{pool}/{owner}/{index}", locate)
        .route(
            "/v1/pieces/{group}/{pool}/{owner}/{index}",
            axum::routing::get(piece_route)
                .put(piece_route)
                .delete(piece_route),
        )
        .route(
            "/v1/pg-chunks/{replica}",
            axum::routing::get(pg_chunks_route)
                .layer(axum::middleware::from_fn(peer::require_node)),
        )
        .route(
            "/v1/pg-chunks/{replica}/{pool}/{owner}/{index}",
            axum::routing::get(pg_chunk_route).layer(axum::middleware::from_fn(peer::require_node)),
        )
        .layer(axum::extract::DefaultBodyLimit::max(WRITE_BYTES_MAX + 4096))
        .with_state(backend.clone())
        .merge(data::routes(backend))
        .merge(faults)
        .layer(axum::middleware::from_fn_with_state(token, require_token));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    let listener = DataListener::new(listener, identity)?;
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<DataPeer>(),
    )
    .await
    .map_err(|e| format!("data API: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_hints_and_map_epochs_come_from_503_answers_only() {
        let answer =
            r#"node at 127.0.0.1:9: HTTP 503 {"error":"not leader","leader":8589934593,"epoch":7}"#;
        assert_eq!(
            NodeAnswer::parse(answer),
            NodeAnswer {
                leader: Some(ReplicaId(8_589_934_593)),
                epoch: Some(7)
            }
        );
        let unhosted =
            r#"node at 127.0.0.1:9: HTTP 503 {"error":"unknown","leader":null,"epoch":9}"#;
        assert_eq!(
            NodeAnswer::parse(unhosted),
            NodeAnswer {
                leader: None,
                epoch: Some(9)
            }
        );
        // An older node names no epoch.
        let older = r#"node at 127.0.0.1:9: HTTP 503 {"error":"not leader","leader":null}"#;
        assert_eq!(NodeAnswer::parse(older), NodeAnswer::default());
        let other = "node at 127.0.0.1:9: HTTP 500 {\"leader\":1,\"epoch\":3}";
        assert_eq!(NodeAnswer::parse(other), NodeAnswer::default());
        assert_eq!(
            NodeAnswer::parse("connection refused"),
            NodeAnswer::default()
        );
        // A status means the node answered; a transport error does not.
        assert!(NodeAnswer::answered(unhosted));
        assert!(!NodeAnswer::answered(
            "https://n4.cairn:7100/v1/pieces/1/1/1/0?offset=0: timeout: global"
        ));
        assert_eq!(
            NodeAnswer::parse("node at 127.0.0.1:9: HTTP 503 <html>"),
            NodeAnswer::default()
        );
    }

    /// Goal: a forwarded write's deadline header becomes a local instant while it is ahead,
    /// is refused once it has passed, and is absent (no deadline) when missing or unreadable.
    #[test]
    fn forwarded_deadlines_are_read_against_the_local_clock() {
        let now = 1_000_000;
        let ahead = deadline_from(Some("1002000"), now)
            .expect("ahead")
            .expect("a deadline");
        let left = ahead.saturating_duration_since(Instant::now());
        assert!(left > Duration::from_millis(1900) && left <= Duration::from_secs(2));
        assert_eq!(deadline_from(Some("1000000"), now), Err(()));
        assert_eq!(deadline_from(Some("999999"), now), Err(()));
        assert_eq!(deadline_from(None, now), Ok(None));
        assert_eq!(deadline_from(Some("soon"), now), Ok(None));
    }

    /// Goal: a peer naming a newer map (or a PG this process does not know) wakes the refresh
    /// loop at once; an older or equal one does not, and requests coalesce.
    #[test]
    fn a_newer_map_epoch_from_a_peer_refreshes_at_once() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let directory = Directory::default();
            let pool = PoolId(1);
            let group = GroupId::pg(pool, 0);
            directory.router.lock().expect("not poisoned").update_pool(
                pool,
                5,
                &[vec![ReplicaId(1)]],
            );
            let wait = Duration::from_secs(30);
            // A refresh asked for comes after REFRESH_GAP_MIN (50 ms); one not asked for after
            // `wait`. 300 ms tells them apart on a loaded machine too.
            let woke = |directory: Directory| async move {
                tokio::time::timeout(Duration::from_millis(300), directory.next_refresh(wait))
                    .await
                    .is_ok()
            };
            directory.heard_epoch(group, 5);
            directory.heard_epoch(group, 4);
            assert!(
                !woke(directory.clone()).await,
                "same or older map: no refresh"
            );
            directory.heard_epoch(group, 6);
            directory.heard_epoch(group, 7);
            assert!(
                woke(directory.clone()).await,
                "a newer map refreshes at once"
            );
            assert!(
                !woke(directory.clone()).await,
                "two requests made one refresh"
            );
            directory.heard_epoch(GroupId::pg(PoolId(2), 0), 1);
            assert!(
                woke(directory.clone()).await,
                "an unknown PG refreshes at once"
            );
        });
    }
}
