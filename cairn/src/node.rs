//! `cairn node run`: a storage node process. It registers itself (where its Raft transport
//! and data API listen) and its disks with the metadata service, hosts the PG replicas the PG
//! maps place on its disks (new pools are picked up within a second), talks Raft with the other
//! nodes over mutual TLS, and reports a heartbeat every second.
//!
//! The metadata service is reached through the admin API (`--admin-url`, or
//! `CAIRN_ADMIN_URL`), with the token from `--token-file`. The node's id is its host number in
//! the cluster map; its certificate (`cairn ca issue`) names it.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use cairn_common::{DiskId, NodeId, PoolId, ReplicaId};
use cairn_metadata::state::PgMember;
use cairn_raft::transport::TcpTransport;
use cairn_storage_node::{
    ChunkStore,
    pg::service::{self, Network, PgHandle},
};
use clap::Args;
use serde_json::{Value, json};

use crate::{
    admin::{Connection, Method, api_call},
    storage,
};

/// How often the node reports and looks for new pools and peers.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

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
}

pub fn run(args: NodeArgs, connection: &Connection) -> ExitCode {
    let result = crate::meta::read_token(&args.token_file).and_then(|token| {
        let connection = connection.with_token(token);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?
            .block_on(serve(args, connection))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn node: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An admin API call off the async threads (the client blocks).
async fn call(connection: &Connection, path: String, method: Method) -> Result<Value, String> {
    let connection = connection.clone();
    tokio::task::spawn_blocking(move || api_call(&connection, &path, method))
        .await
        .map_err(|e| format!("admin call: {e}"))?
}

/// Parses a disk id as the admin API prints it (a UUID).
fn parse_disk_id(text: &str) -> Option<DiskId> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        let pair = std::str::from_utf8(&hex[2 * i..2 * i + 2]).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(DiskId(id))
}

/// Every pool's id and PG map, from the admin API.
async fn pools(connection: &Connection) -> Result<Vec<(PoolId, Vec<Vec<PgMember>>)>, String> {
    let list = call(connection, "/v1/pools".into(), Method::Get).await?;
    let mut out = Vec::new();
    for pool in list.as_array().into_iter().flatten() {
        let name = pool["name"].as_str().ok_or("a pool without a name")?;
        let shown = call(connection, format!("/v1/pools/{name}"), Method::Get).await?;
        let id = shown["id"].as_u64().ok_or("a pool without an id")?;
        let mut map = Vec::new();
        for members in shown["pg_map"].as_array().into_iter().flatten() {
            let mut pg = Vec::new();
            for member in members.as_array().into_iter().flatten() {
                let disk = member["disk"].as_str().and_then(parse_disk_id);
                let replica = member["replica"].as_u64().map(ReplicaId);
                let (Some(disk), Some(replica)) = (disk, replica) else {
                    return Err(format!("pool {name}: malformed PG member {member}"));
                };
                pg.push(PgMember { disk, replica });
            }
            map.push(pg);
        }
        out.push((PoolId(id as u32), map));
    }
    Ok(out)
}

async fn serve(args: NodeArgs, connection: Connection) -> Result<(), String> {
    let me = NodeId(args.id);
    if args.id == 0 || args.id > ReplicaId::NODE_MAX {
        return Err(format!("node id {} out of range", args.id));
    }
    let identity = crate::meta::load_identity(&args.certs, me)?;
    let disks = storage::open_disks(&args.disks).await?;
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
    set_peers(&connection, &transport, me).await?;
    let known = pools(&connection).await?;
    let (host, created) = storage::start_host(me, &args.data.join("wal"), &disks, &known)?;
    let hosted = Arc::new(Mutex::new(
        host.replicas().map(|(r, _)| r).collect::<Vec<_>>(),
    ));
    let network = Network {
        transport: transport.clone(),
        incoming,
    };
    let pgs = service::spawn(host, me, Duration::from_millis(10), Some(network));
    println!(
        "cairn node {}: up ({} replicas, {created} created now)",
        args.id,
        hosted.lock().expect("not poisoned").len()
    );
    let mut ticker = tokio::time::interval(REFRESH_INTERVAL);
    loop {
        ticker.tick().await;
        if let Err(e) = refresh(&connection, &transport, &pgs, &disks, me, &hosted).await {
            tracing::warn!("refresh: {e}");
        }
    }
}

/// Tells the transport where every other node listens.
async fn set_peers(
    connection: &Connection,
    transport: &TcpTransport,
    me: NodeId,
) -> Result<(), String> {
    let nodes = call(connection, "/v1/storage-nodes".into(), Method::Get).await?;
    for node in nodes.as_array().into_iter().flatten() {
        let id = node["id"].as_u64().map(NodeId);
        let addr = node["raft_addr"].as_str().and_then(|a| a.parse().ok());
        if let (Some(id), Some(addr)) = (id, addr)
            && id != me
        {
            transport.set_peer_address(id, addr);
        }
    }
    Ok(())
}

/// One refresh: heartbeat, peers, and replicas of pools created since.
async fn refresh(
    connection: &Connection,
    transport: &TcpTransport,
    pgs: &PgHandle,
    disks: &[Arc<ChunkStore>],
    me: NodeId,
    hosted: &Mutex<Vec<ReplicaId>>,
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
    set_peers(connection, transport, me).await?;
    let wanted = storage::local_replicas(me, disks, &pools(connection).await?);
    let new: Vec<_> = {
        let hosted = hosted.lock().expect("not poisoned");
        wanted
            .into_iter()
            .filter(|w| !hosted.contains(&w.replica))
            .collect()
    };
    if !new.is_empty() {
        let replicas: Vec<ReplicaId> = new.iter().map(|w| w.replica).collect();
        pgs.host(new).await.map_err(|e| e.to_string())?;
        tracing::info!(count = replicas.len(), "hosting the replicas of a new pool");
        hosted.lock().expect("not poisoned").extend(replicas);
    }
    Ok(())
}
