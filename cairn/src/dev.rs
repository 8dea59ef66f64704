//! `cairn dev`: a complete single-host cluster in one process, under one data directory.
//!
//! - a metadata service of one member (`DIR/meta`), serving the admin API on `--listen`;
//! - one storage node (node 1 = host 1) with three data directories (`DIR/disk0..2`) as three
//!   failure domains, a pool `default` of three replicas per PG over them, and the Raft log of
//!   every PG replica in `DIR/wal` (the write cache);
//! - volume data over HTTP beside the admin API, behind the same token:
//!   `PUT /v1/volumes/NAME/data?offset=N` (the body is written) and
//!   `GET /v1/volumes/NAME/data?offset=N&length=L` (`cairn volume write|read` use them).
//!
//! - the iSCSI gateway on `--iscsi-listen` and the S3 gateway on `--s3-listen`, both talking
//!   to this process's own admin API like any other gateway; a tenant `dev` with one access
//!   key (`DIR/s3.access-key`, `DIR/s3.secret-key`) for S3 clients.
//!
//! The first start creates everything; a restart on the same directory finds it all again,
//! nothing lost. `DIR/endpoints.env` (shell-sourceable) is written once the cluster serves.
//! The node-to-node TLS identity is generated in memory at each start: nothing else talks to
//! this process's Raft port.

use std::{
    fs,
    io::Read,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    response::{IntoResponse, Response},
    routing::get,
};
use cairn_client::Piece;
use cairn_common::{GroupId, NodeId, OwnerId, PoolId};
use cairn_metadata::{
    placement::{Disk, DiskState, FailureDomain, HostId, RackId, SiteId},
    server::{DriverHandle, Member, RequestError, ServerConfig},
    state::{Command, MetaError, PgMember, SecretKey},
};
use cairn_raft::tls::ClusterCa;
use cairn_storage_node::{
    ChunkStore,
    pg::{
        PgStats,
        service::{self, PgHandle},
    },
};
use clap::Args;
use serde_json::json;

use crate::{
    admin::Connection,
    data::{self, DataError, Target, TargetCache},
    iscsi, s3, storage,
};
use cairn_gateway_iscsi::login::ChapSecret;

/// The tenant owning the S3 access key `cairn dev` prints.
const S3_TENANT: &str = "dev";

/// The CHAP user every iSCSI target asks for (the secret is in `DIR/iscsi-chap.secret`).
const ISCSI_CHAP_USER: &str = iscsi::CHAP_USER;

/// The storage node's id, which is also its host number in the cluster map.
const NODE: NodeId = NodeId(1);
/// Data directories, one failure domain each.
const DISK_COUNT: usize = 3;
/// The pool `cairn dev` creates.
const POOL: &str = "default";
/// How often the storage node reports to the metadata service.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A development cluster reports a silent node after a few missed heartbeats.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the first start waits for the metadata member to elect itself.
const SETUP_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct DevArgs {
    /// Data directory (created if missing). Restart on the same directory to keep the data.
    #[arg(long, default_value = "cairn-dev")]
    data: PathBuf,
    /// Address of the admin API and the volume data routes.
    #[arg(long, default_value = "127.0.0.1:7200")]
    listen: SocketAddr,
    /// PGs of the `default` pool (used on the first start only).
    #[arg(long, default_value_t = 32)]
    pg_count: u32,
    /// Address of the iSCSI portal (port 0: any free port, written to endpoints.env).
    #[arg(long, default_value = "127.0.0.1:3260")]
    iscsi_listen: SocketAddr,
    /// Address of the S3 endpoint (port 0: any free port, written to endpoints.env).
    #[arg(long, default_value = "127.0.0.1:9000")]
    s3_listen: SocketAddr,
    /// The domain of virtual-host-style S3 requests (`BUCKET.DOMAIN`).
    #[arg(long, default_value = "localhost")]
    s3_domain: String,
    /// Seconds garbage (chunks of replaced or deleted objects) waits before it is discarded.
    /// Tests shorten it; GETs longer than half of it re-check their object.
    #[arg(long, default_value_t = 600, hide = true)]
    s3_garbage_grace_secs: u64,
    /// Seconds an S3 lifecycle day lasts (86,400 normally). Tests shorten it so rules of a
    /// day or two act in seconds; the lifecycle worker runs every half day (200 ms to 60 s).
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..), hide = true)]
    s3_lifecycle_day_secs: u64,
    /// PEM certificate chain: the S3 endpoint serves HTTPS (needs --s3-tls-key).
    #[arg(long, requires = "s3_tls_key")]
    s3_tls_cert: Option<PathBuf>,
    /// PEM private key of --s3-tls-cert.
    #[arg(long, requires = "s3_tls_cert")]
    s3_tls_key: Option<PathBuf>,
    #[command(flatten)]
    cache: storage::CacheArgs,
    #[command(flatten)]
    runtime: crate::runtime::RuntimeArgs,
}

pub fn run(args: DevArgs) -> ExitCode {
    let result = args
        .runtime
        .build()
        .and_then(|runtime| runtime.block_on(serve(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn dev: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the admin token, creating a random one on the first start.
fn token(dir: &Path) -> Result<String, String> {
    secret(dir, "admin.token", 24)
}

/// Reads the secret kept in `DIR/name`, creating a random one of `bytes` bytes (in hex) on the
/// first start.
fn secret(dir: &Path, name: &str, bytes: usize) -> Result<String, String> {
    let path = dir.join(name);
    if let Ok(token) = fs::read_to_string(&path) {
        return Ok(token.trim().to_string());
    }
    let mut random = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| format!("read /dev/urandom: {e}"))?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &token)?;
    Ok(token)
}

/// Writes a file readable by its owner only, atomically (a temporary file renamed).
fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let temporary = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|e| format!("create {}: {e}", temporary.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("write {}: {e}", temporary.display()))?;
    fs::rename(&temporary, path).map_err(|e| format!("rename to {}: {e}", path.display()))
}

async fn open_disks(dir: &Path, read_cache_mib: u64) -> Result<Vec<Arc<ChunkStore>>, String> {
    let paths: Vec<PathBuf> = (0..DISK_COUNT)
        .map(|i| dir.join(format!("disk{i}")))
        .collect();
    storage::open_disks(&paths, false, read_cache_mib).await
}

async fn serve(args: DevArgs) -> Result<(), String> {
    let dir = args.data.clone();
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let token = token(&dir)?;
    // CHAP secrets must be 12 to 16 bytes for some initiators (Windows); 16 hex characters.
    let chap_secret = secret(&dir, "iscsi-chap.secret", 8)?;
    let chap = iscsi::Chap {
        user: ISCSI_CHAP_USER.into(),
        secret: ChapSecret::new(chap_secret.clone()),
    };
    let iscsi_listener = tokio::net::TcpListener::bind(args.iscsi_listen)
        .await
        .map_err(|e| format!("iSCSI portal {}: {e}", args.iscsi_listen))?;
    let portal = iscsi_listener
        .local_addr()
        .map_err(|e| format!("iSCSI portal: {e}"))?;
    let s3_tls = match (&args.s3_tls_cert, &args.s3_tls_key) {
        (Some(cert), Some(key)) => Some(cairn_gateway_s3::tls::server_config(cert, key)?),
        _ => None,
    };
    let s3_scheme = if s3_tls.is_some() { "https" } else { "http" };
    let s3_listener = tokio::net::TcpListener::bind(args.s3_listen)
        .await
        .map_err(|e| format!("S3 endpoint {}: {e}", args.s3_listen))?;
    let s3_endpoint = s3_listener
        .local_addr()
        .map_err(|e| format!("S3 endpoint: {e}"))?;
    // Access key ids are upper-case letters and digits; 10 random bytes give 20 of them.
    let s3_key_id = format!(
        "CAIRN{}",
        secret(&dir, "s3.access-key", 10)?.to_ascii_uppercase()
    );
    let s3_secret = secret(&dir, "s3.secret-key", 20)?;
    let disks = open_disks(&dir, args.cache.read_cache_mib).await?;
    let ca = ClusterCa::generate().map_err(|e| e.to_string())?;
    let identity = ca.issue(NODE).map_err(|e| e.to_string())?;
    let config = ServerConfig {
        id: NODE,
        data_dir: dir.join("meta"),
        members: vec![Member {
            id: NODE,
            raft: "127.0.0.1:0".parse().expect("invariant: a valid address"),
            api: args.listen,
        }],
        bootstrap: true,
        identity,
        admin_token: token.clone(),
        tick: Duration::from_millis(50),
        compact_every: 10_000,
        heartbeat_timeout: HEARTBEAT_TIMEOUT,
    };
    // The gateway reads its targets and reservations from this process's own admin API, as
    // every other gateway does.
    let iscsi_config = iscsi::GatewayConfig {
        connection: Connection::new(format!("http://{}", args.listen), token.clone()),
        chap: Some(chap.clone()),
        advertise: None,
    };
    let s3_token = token.clone();
    let s3_members = config.members.clone();
    let s3_grace = Duration::from_secs(args.s3_garbage_grace_secs);
    let s3_day = Duration::from_secs(args.s3_lifecycle_day_secs);
    let s3_config = cairn_gateway_s3::Config {
        domain: Some(args.s3_domain.clone()),
    };
    let storage: Arc<OnceLock<Storage>> = Arc::new(OnceLock::new());
    let setup = Setup {
        dir: dir.clone(),
        disks,
        pg_count: args.pg_count,
        storage: storage.clone(),
        endpoints: format!(
            "ADMIN_URL=http://{}\nADMIN_TOKEN={token}\nISCSI_PORTAL={portal}\n\
             ISCSI_TARGET={}\nISCSI_CHAP_USER={}\nISCSI_CHAP_SECRET={}\n\
             S3_ENDPOINT={s3_scheme}://{s3_endpoint}\nS3_ACCESS_KEY={s3_key_id}\n\
             S3_SECRET_KEY={s3_secret}\nS3_REGION={}\n",
            args.listen,
            iscsi::IQN_PREFIX,
            chap.user,
            chap_secret,
            cairn_gateway_s3::REGION,
        ),
        s3_key: (s3_key_id, s3_secret),
    };
    let extra = move |meta: DriverHandle| {
        let backend = DevBackend {
            meta: meta.clone(),
            storage,
            targets: Arc::default(),
        };
        let gateway = backend.clone();
        // The S3 gateway calls the admin API's own routes in process (see `S3Cluster::local`).
        let api = cairn_metadata::api::router(meta.clone(), s3_token.clone(), s3_members);
        let cluster = s3::S3Cluster::local(api, s3_token, backend.clone());
        tokio::spawn(cairn_gateway_s3::reclaim::run(cluster.clone(), s3_grace));
        tokio::spawn(cairn_gateway_s3::lifecycle::run(cluster.clone(), s3_day));
        tokio::spawn(async move {
            if let Err(e) = cairn_gateway_s3::serve(s3_listener, cluster, s3_config, s3_tls).await {
                tracing::error!("S3 endpoint: {e}");
                eprintln!("cairn dev: S3 endpoint: {e}");
                std::process::exit(1);
            }
        });
        tokio::spawn(async move {
            if let Err(e) = iscsi::serve(iscsi_listener, gateway, iscsi_config).await {
                tracing::error!("{e}");
                eprintln!("cairn dev: {e}");
                std::process::exit(1);
            }
        });
        tokio::spawn(async move {
            if let Err(e) = setup.run(meta).await {
                tracing::error!("cairn dev setup failed: {e}");
                eprintln!("cairn dev: setup failed: {e}");
                std::process::exit(1);
            }
        });
        Router::new()
            .route("/metrics", get(metrics))
            .with_state(backend.clone())
            .merge(data::routes(backend))
    };
    cairn_metadata::server::serve_with(config, extra)
        .await
        .map_err(|e| e.to_string())
}

/// The running storage node: its PG task, its counters, its disks.
struct Storage {
    pgs: PgHandle,
    stats: Arc<PgStats>,
    disks: Vec<Arc<ChunkStore>>,
}

struct Setup {
    dir: PathBuf,
    disks: Vec<Arc<ChunkStore>>,
    pg_count: u32,
    storage: Arc<OnceLock<Storage>>,
    endpoints: String,
    /// The `dev` tenant's access key: id and secret.
    s3_key: (String, String),
}

/// Proposes a command, retrying while the member elects itself; "already exists" is success
/// (a restart repeats the first start's commands).
async fn propose(meta: &DriverHandle, command: Command) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + SETUP_DEADLINE;
    loop {
        match meta.propose(command.clone()).await {
            Ok(_) | Err(RequestError::Refused(MetaError::AlreadyExists { .. })) => return Ok(()),
            Err(RequestError::Refused(e)) => return Err(e.to_string()),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(format!("metadata service: {e:?}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

impl Setup {
    async fn run(self, meta: DriverHandle) -> Result<(), String> {
        for (i, disk) in self.disks.iter().enumerate() {
            let capacity_bytes = storage::capacity(&self.dir.join(format!("disk{i}")))?;
            let record = Disk {
                id: disk.disk_id(),
                host: HostId(NODE.0 as u32),
                rack: RackId(0),
                site: SiteId(0),
                capacity_bytes,
                state: DiskState::In,
            };
            propose(&meta, Command::RegisterDisk(record)).await?;
        }
        let pool = Command::CreatePool {
            name: POOL.into(),
            replicas: DISK_COUNT as u32,
            domain: FailureDomain::Disk,
            pg_count: self.pg_count,
        };
        propose(&meta, pool).await?;
        propose(
            &meta,
            Command::CreateTenant {
                name: S3_TENANT.into(),
            },
        )
        .await?;
        let (access_key_id, secret) = self.s3_key.clone();
        let key = Command::CreateAccessKey {
            tenant: S3_TENANT.into(),
            access_key_id,
            secret_key: SecretKey::new(secret),
        };
        propose(&meta, key).await?;
        let pool = read_pool(&meta).await?;
        let pg_count = pool.pg_map.len();
        let disks = self.disks.clone();
        let (host, created) = storage::start_host(NODE, &self.dir.join("wal"), &disks, &[pool])?;
        let stats = host.stats();
        let pgs = service::spawn(
            host,
            NODE,
            storage::PG_TICK,
            None,
            cairn_storage_node::pg::restore::RESTORE_MB_PER_S_DEFAULT,
        );
        tokio::spawn(heartbeats(meta.clone(), pgs.clone(), disks.clone()));
        tokio::spawn(storage::stop_on_signal("cairn dev".into(), disks.clone()));
        let _ = self.storage.set(Storage { pgs, stats, disks });
        write_private(&self.dir.join("endpoints.env"), &self.endpoints)?;
        println!(
            "cairn dev: ready ({pg_count} PGs, {created} replicas created now); endpoints in {}",
            self.dir.join("endpoints.env").display()
        );
        Ok(())
    }
}

/// Reports the node's disks and PG replicas to the metadata service every second.
async fn heartbeats(meta: DriverHandle, pgs: PgHandle, disks: Vec<Arc<ChunkStore>>) {
    let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        ticker.tick().await;
        let Ok(replicas) = pgs.report().await else {
            return;
        };
        if let Err(e) = meta.heartbeat(storage::heartbeat(NODE, &disks, replicas)) {
            tracing::warn!("heartbeat not delivered: {e:?}");
        }
    }
}

async fn read_pool(meta: &DriverHandle) -> Result<storage::PoolMap, String> {
    let value = meta
        .read(Box::new(|state| {
            let pool = state.pool(POOL).ok_or(MetaError::NotFound {
                kind: "pool",
                name: POOL.into(),
            })?;
            Ok(json!({ "id": pool.id.0, "epoch": pool.epoch, "pg_map": pool.pg_map }))
        }))
        .await
        .map_err(|e| format!("read pool: {e:?}"))?;
    let id = value["id"].as_u64().ok_or("pool without an id")?;
    let map: Vec<Vec<PgMember>> =
        serde_json::from_value(value["pg_map"].clone()).map_err(|e| e.to_string())?;
    Ok(storage::PoolMap {
        id: PoolId(id as u32),
        epoch: value["epoch"].as_u64().unwrap_or_default(),
        pg_map: map,
    })
}

/// `cairn dev`'s data backend: volumes from the in-process metadata member, pieces through
/// the in-process PG host.
#[derive(Clone)]
struct DevBackend {
    meta: DriverHandle,
    storage: Arc<OnceLock<Storage>>,
    targets: Arc<TargetCache>,
}

impl DevBackend {
    fn storage(&self) -> Result<&Storage, DataError> {
        self.storage
            .get()
            .ok_or_else(|| DataError::Unavailable("the storage node is starting; retry".into()))
    }
}

impl data::Backend for DevBackend {
    async fn target(&self, name: String) -> Result<Target, DataError> {
        self.targets
            .get(name, async |name| self.lookup(name).await)
            .await
    }

    fn chunk_size(&self) -> Result<u32, DataError> {
        // Every disk of a node is formatted with the default chunk size.
        Ok(self.storage()?.disks[0].chunk_size_bytes())
    }

    async fn write(&self, group: GroupId, piece: Piece, data: Vec<u8>) -> Result<(), DataError> {
        let pgs = self.storage()?.pgs.clone();
        Ok(pgs.write(group, piece.chunk, piece.offset, data).await?)
    }

    async fn read(&self, group: GroupId, piece: Piece) -> Result<Vec<u8>, DataError> {
        let pgs = self.storage()?.pgs.clone();
        Ok(pgs
            .read(group, piece.chunk, piece.offset, piece.length)
            .await?)
    }

    async fn discard(&self, group: GroupId, piece: Piece) -> Result<(), DataError> {
        let pgs = self.storage()?.pgs.clone();
        Ok(pgs
            .discard(group, piece.chunk, piece.offset, piece.length)
            .await?)
    }
}

impl DevBackend {
    /// The volume `name` as the metadata member has it now.
    async fn lookup(&self, name: String) -> Result<Target, DataError> {
        let value = self
            .meta
            .read(Box::new(move |state| {
                let not_found = |kind: &'static str, name: &str| MetaError::NotFound {
                    kind,
                    name: name.to_string(),
                };
                let volume = state
                    .volume(&name)
                    .ok_or_else(|| not_found("volume", &name))?;
                let pool = state
                    .pool(&volume.pool)
                    .ok_or_else(|| not_found("pool", &volume.pool))?;
                Ok(json!({
                    "owner": volume.id.0,
                    "pool": pool.id.0,
                    "pg_count": pool.policy.pg_count,
                    "size_bytes": volume.size_bytes,
                }))
            }))
            .await
            .map_err(|e| match e {
                RequestError::Refused(MetaError::NotFound { .. }) => {
                    DataError::NotFound(format!("{e:?}"))
                }
                RequestError::Refused(e) => DataError::BadRequest(e.to_string()),
                other => DataError::Unavailable(format!("{other:?}")),
            })?;
        let field = |key: &str| value[key].as_u64().unwrap_or_default();
        Ok(Target {
            owner: OwnerId(field("owner")),
            pool: PoolId(field("pool") as u32),
            pg_count: field("pg_count") as u32,
            size_bytes: field("size_bytes"),
        })
    }
}

/// Prometheus text exposition of the storage node's counters (behind the admin token, like
/// every route: give the scraper the token as its bearer token).
async fn metrics(State(api): State<DevBackend>) -> Response {
    match api.storage() {
        Ok(storage) => storage::metrics(&storage.stats, &storage.disks),
        Err(e) => e.into_response(),
    }
}
