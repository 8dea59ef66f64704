//! `cairn meta`: runs one member of the metadata Raft group with its admin API.

use std::{fs, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use cairn_common::NodeId;
use cairn_metadata::server::{Member, ServerConfig};
use cairn_raft::tls::{IdentityPem, NodeIdentity};
use clap::Args;

#[derive(Args)]
pub struct MetaArgs {
    /// This member's node id.
    #[arg(long)]
    id: u64,
    /// Data directory (Raft log and state machine).
    #[arg(long)]
    data: PathBuf,
    /// A member of the group, this one included: ID=RAFT_ADDR,API_ADDR. Repeat per member.
    #[arg(long = "member", required = true)]
    members: Vec<String>,
    /// Directory holding `node-<ID>.crt`, `node-<ID>.key` and `ca.crt` (see `cairn ca issue`).
    #[arg(long)]
    certs: PathBuf,
    /// File holding the admin API's bearer token.
    #[arg(long)]
    token_file: PathBuf,
    /// On an empty data directory, join the existing group (catching up by snapshot) instead
    /// of creating a new one with all members.
    #[arg(long)]
    join: bool,
    /// Raft tick in milliseconds (elections take 10-20 ticks).
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// Compact the Raft log after this many applied entries.
    #[arg(long, default_value_t = 10_000)]
    compact_every: u64,
    /// Seconds without a heartbeat after which a storage node counts as down.
    #[arg(long, default_value_t = 30)]
    heartbeat_timeout_s: u64,
}

fn parse_member(text: &str) -> Result<Member, String> {
    let bad = || format!("--member {text:?}: expected ID=RAFT_ADDR,API_ADDR");
    let (id, addrs) = text.split_once('=').ok_or_else(bad)?;
    let (raft, api) = addrs.split_once(',').ok_or_else(bad)?;
    Ok(Member {
        id: NodeId(id.parse().map_err(|_| bad())?),
        raft: raft.parse::<SocketAddr>().map_err(|_| bad())?,
        api: api.parse::<SocketAddr>().map_err(|_| bad())?,
    })
}

/// The node's mutual-TLS identity from `node-<id>.crt`, `node-<id>.key` and `ca.crt` in `certs`.
pub(crate) fn load_identity(certs: &std::path::Path, id: NodeId) -> Result<NodeIdentity, String> {
    let read = |name: String| {
        let path = certs.join(&name);
        fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))
    };
    let pem = IdentityPem {
        cert: read(format!("node-{}.crt", id.0))?,
        key: read(format!("node-{}.key", id.0))?,
        ca: read("ca.crt".into())?,
    };
    NodeIdentity::from_pem(id, pem).map_err(|e| e.to_string())
}

/// The admin token from its file (at least 16 characters).
pub(crate) fn read_token(path: &std::path::Path) -> Result<String, String> {
    let token = fs::read_to_string(path)
        .map_err(|e| format!("read {}: {e}", path.display()))?
        .trim()
        .to_string();
    if token.len() < 16 {
        return Err("the admin token must be at least 16 characters".into());
    }
    Ok(token)
}

fn config(args: MetaArgs) -> Result<ServerConfig, String> {
    let members = args
        .members
        .iter()
        .map(|m| parse_member(m))
        .collect::<Result<Vec<_>, _>>()?;
    let id = NodeId(args.id);
    let identity = load_identity(&args.certs, id)?;
    let token = read_token(&args.token_file)?;
    Ok(ServerConfig {
        id,
        data_dir: args.data,
        members,
        bootstrap: !args.join,
        identity,
        admin_token: token,
        tick: Duration::from_millis(args.tick_ms.max(1)),
        compact_every: args.compact_every,
        heartbeat_timeout: Duration::from_secs(args.heartbeat_timeout_s.max(1)),
    })
}

pub fn run(args: MetaArgs) -> ExitCode {
    let result =
        config(args).and_then(|c| cairn_metadata::server::run(c).map_err(|e| e.to_string()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn meta: {e}");
            ExitCode::FAILURE
        }
    }
}
