//! `cairn gateway iscsi`: a stateless iSCSI gateway process. It holds no data and no state of
//! its own: targets, credentials, QoS limits and persistent reservations come from the
//! metadata service (admin API), and every piece of a volume goes to the storage node leading
//! its PG over that node's data API. Run as many as wanted; kill any of them at any time.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use cairn_client::Piece;
use cairn_common::{CHUNK_SIZE_DEFAULT, GroupId};
use cairn_gateway_iscsi::login::ChapSecret;
use clap::{Args, Subcommand};

use crate::{
    admin::Connection,
    data::{self, DataError, Target, TargetCache},
    iscsi,
    node::{self, Directory, Forwarder, PieceOp, Pools},
    runtime::RuntimeArgs,
    s3,
};

/// How often the gateway learns storage nodes and PG maps.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Subcommand)]
pub enum GatewayCommand {
    /// Serves every volume as an iSCSI target.
    Iscsi(IscsiArgs),
    /// Serves every bucket over the S3 API.
    S3(S3Args),
}

#[derive(Args)]
pub struct S3Args {
    /// Where S3 clients connect.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// The domain of virtual-host-style requests (`BUCKET.DOMAIN`); path-style always works.
    #[arg(long)]
    domain: Option<String>,
    /// File holding the admin API's bearer token.
    #[arg(long)]
    token_file: PathBuf,
    /// PEM certificate chain: serve HTTPS instead of HTTP (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
pub struct IscsiArgs {
    /// Where initiators connect.
    #[arg(long, default_value = "127.0.0.1:3260")]
    listen: SocketAddr,
    /// The portal `attach-info` names, when initiators reach this gateway at another address
    /// than `--listen` (a wildcard listen address is never registered).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// File holding the admin API's bearer token.
    #[arg(long)]
    token_file: PathBuf,
    /// File holding the CHAP secret (user `cairn`) of targets whose volume sets no
    /// credential of its own (`cairn volume access`); 12-255 characters.
    #[arg(long)]
    chap_file: PathBuf,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(command: GatewayCommand, connection: &Connection) -> ExitCode {
    match command {
        GatewayCommand::Iscsi(args) => {
            let token_file = args.token_file.clone();
            node::run_service(
                "cairn gateway iscsi",
                &token_file,
                connection,
                args.runtime,
                |c, token| serve(args, c, token),
            )
        }
        GatewayCommand::S3(args) => {
            let token_file = args.token_file.clone();
            node::run_service(
                "cairn gateway s3",
                &token_file,
                connection,
                args.runtime,
                |c, token| serve_s3(args, c, token),
            )
        }
    }
}

/// Reads a CHAP secret from `path` and checks its length.
pub(crate) fn read_chap_secret(path: &std::path::Path) -> Result<ChapSecret, String> {
    let secret = std::fs::read_to_string(path)
        .map_err(|e| format!("read {}: {e}", path.display()))?
        .trim()
        .to_string();
    if !(12..=255).contains(&secret.len()) {
        return Err("the iSCSI CHAP secret must be 12 to 255 characters".into());
    }
    Ok(ChapSecret::new(secret))
}

/// A backend forwarding pieces to storage nodes, with the directory of nodes and PG maps
/// refreshed every [`REFRESH_INTERVAL`].
fn forwarding_backend(connection: &Connection, token: String) -> GatewayBackend {
    let directory = Directory::default();
    let backend = GatewayBackend {
        connection: connection.clone(),
        forwarder: Forwarder::new(token, directory.clone()),
        targets: Arc::default(),
    };
    let refreshing = connection.clone();
    tokio::spawn(async move {
        let mut known = Pools::new();
        loop {
            if let Err(e) = directory.refresh(&refreshing, &mut known).await {
                tracing::warn!("refresh: {e}");
            }
            directory.next_refresh(REFRESH_INTERVAL).await;
        }
    });
    backend
}

async fn serve(args: IscsiArgs, connection: Connection, token: String) -> Result<(), String> {
    let secret = read_chap_secret(&args.chap_file)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("iSCSI portal {}: {e}", args.listen))?;
    let backend = forwarding_backend(&connection, token);
    let config = iscsi::GatewayConfig {
        connection,
        chap: Some(iscsi::Chap {
            user: iscsi::CHAP_USER.into(),
            secret,
        }),
        advertise: args.advertise,
    };
    println!("cairn gateway iscsi: serving on {}", args.listen);
    iscsi::serve(listener, backend, config).await
}

async fn serve_s3(args: S3Args, connection: Connection, token: String) -> Result<(), String> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(cairn_gateway_s3::tls::server_config(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("S3 endpoint {}: {e}", args.listen))?;
    let backend = forwarding_backend(&connection, token);
    let cluster = s3::S3Cluster::new(&connection, backend)?;
    tokio::spawn(cairn_gateway_s3::reclaim::run(
        cluster.clone(),
        cairn_gateway_s3::reclaim::GARBAGE_GRACE,
    ));
    tokio::spawn(cairn_gateway_s3::lifecycle::run(
        cluster.clone(),
        cairn_gateway_s3::lifecycle::DAY,
    ));
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("cairn gateway s3: serving on {scheme}://{}", args.listen);
    let config = cairn_gateway_s3::Config {
        domain: args.domain,
    };
    cairn_gateway_s3::serve(listener, cluster, config, tls)
        .await
        .map_err(|e| format!("S3 endpoint: {e}"))
}

/// A gateway's data path: volumes from the admin API, every piece forwarded to the node
/// leading its PG.
#[derive(Clone)]
struct GatewayBackend {
    connection: Connection,
    forwarder: Forwarder,
    targets: Arc<TargetCache>,
}

impl data::Backend for GatewayBackend {
    async fn target(&self, name: String) -> Result<Target, DataError> {
        self.targets
            .get(name, async |name| {
                node::lookup(&self.connection, name).await
            })
            .await
    }

    fn chunk_size(&self) -> Result<u32, DataError> {
        // Storage nodes format every disk with the default chunk size.
        Ok(CHUNK_SIZE_DEFAULT)
    }

    async fn write(&self, group: GroupId, piece: Piece, data: Vec<u8>) -> Result<(), DataError> {
        let op = PieceOp::Write(data);
        self.forwarder
            .piece(None, group, piece, op)
            .await
            .map(|_| ())
    }

    async fn read(&self, group: GroupId, piece: Piece) -> Result<Vec<u8>, DataError> {
        self.forwarder
            .piece(None, group, piece, PieceOp::Read)
            .await
    }

    async fn discard(&self, group: GroupId, piece: Piece) -> Result<(), DataError> {
        let op = PieceOp::Discard;
        self.forwarder
            .piece(None, group, piece, op)
            .await
            .map(|_| ())
    }
}
