//! `cairn ca`: the cluster certificate authority that node-to-node mutual TLS trusts.
//!
//! `init` creates the CA in a directory (`ca.crt`, and `ca.key` readable by its owner only);
//! `issue` signs a node's certificate for `n<id>.cairn` and writes it with its key and the CA
//! certificate. Keys are written to files with mode 0600 and never printed.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::ExitCode,
};

use cairn_common::NodeId;
use cairn_raft::tls::ClusterCa;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum CaCommand {
    /// Creates a new cluster CA in DIR (refuses if one exists).
    Init {
        /// Where the CA lives.
        dir: PathBuf,
    },
    /// Issues node NODE_ID a certificate signed by the CA in DIR.
    Issue {
        /// Where the CA lives.
        dir: PathBuf,
        /// The node's id.
        node_id: u64,
        /// Where to write the node's files (default: DIR).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(command: CaCommand) -> ExitCode {
    let result = match command {
        CaCommand::Init { dir } => init(&dir),
        CaCommand::Issue { dir, node_id, out } => {
            issue(&dir, NodeId(node_id), out.as_deref().unwrap_or(&dir))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cairn: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `contents` to a new file (never over an existing one) with `mode`, and syncs it.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    file.sync_all()
        .map_err(|e| format!("fsync {}: {e}", path.display()))
}

fn init(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    if dir.join("ca.key").exists() || dir.join("ca.crt").exists() {
        return Err(format!(
            "{} already holds a CA; refusing to replace it",
            dir.display()
        ));
    }
    let ca = ClusterCa::generate().map_err(|e| e.to_string())?;
    write_new(&dir.join("ca.key"), &ca.key_pem(), 0o600)?;
    write_new(&dir.join("ca.crt"), &ca.cert_pem, 0o644)?;
    println!(
        "created cluster CA in {} (ca.crt; ca.key is secret)",
        dir.display()
    );
    Ok(())
}

fn issue(dir: &Path, node: NodeId, out: &Path) -> Result<(), String> {
    let read = |name: &str| {
        fs::read_to_string(dir.join(name))
            .map_err(|e| format!("read {}: {e}", dir.join(name).display()))
    };
    let ca = ClusterCa::from_pem(&read("ca.crt")?, &read("ca.key")?).map_err(|e| e.to_string())?;
    let identity = ca.issue(node).map_err(|e| e.to_string())?;
    fs::create_dir_all(out).map_err(|e| format!("mkdir {}: {e}", out.display()))?;
    let pem = identity.pem();
    let base = format!("node-{}", node.0);
    write_new(&out.join(format!("{base}.key")), &pem.key, 0o600)?;
    write_new(&out.join(format!("{base}.crt")), &pem.cert, 0o644)?;
    // Several nodes' files may share a directory: the CA certificate is written once.
    let ca_path = out.join("ca.crt");
    let same_ca = fs::read_to_string(&ca_path).is_ok_and(|existing| existing == pem.ca);
    if out != dir && !same_ca {
        write_new(&ca_path, &pem.ca, 0o644)?;
    }
    println!(
        "issued {} for node {} in {}",
        cairn_raft::tls::node_name(node),
        node.0,
        out.display()
    );
    Ok(())
}
