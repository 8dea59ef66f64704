//! What `cairn dev` and `cairn node` share to run a storage node: its disks, its PG replicas
//! from the PG maps, and the heartbeat it reports.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use cairn_common::{DiskId, GroupId, NodeId, PoolId, ReplicaId};
use cairn_metadata::{
    health::{DiskReport, Heartbeat, ReplicaReport},
    state::PgMember,
};
use cairn_raft::{NodeConfig, file_log::FileLogStore};
use cairn_storage_node::{
    ChunkStore, ChunkStoreOptions,
    io::EngineOptions,
    pg::{NewReplica, PgHost, PgStats},
};
use std::sync::atomic::AtomicU64;

/// A pool's PG map as the metadata service gave it.
#[derive(Clone, Debug)]
pub struct PoolMap {
    /// The pool.
    pub id: PoolId,
    /// The map's epoch.
    pub epoch: u64,
    /// Per PG, its members, preferred leader first.
    pub pg_map: Vec<Vec<PgMember>>,
}

/// Opens (formatting on first use) the chunk store in each directory.
pub async fn open_disks(paths: &[PathBuf]) -> Result<Vec<Arc<ChunkStore>>, String> {
    let options = ChunkStoreOptions {
        engine: EngineOptions {
            // 16 x 1 MiB pinned per disk: enough for the data API's 1 MiB pieces.
            buffer_count: 16,
            ..EngineOptions::default()
        },
        ..ChunkStoreOptions::default()
    };
    let mut disks = Vec::new();
    for path in paths {
        let store = ChunkStore::open(path, &options)
            .await
            .map_err(|e| format!("disk {}: {e}", path.display()))?;
        disks.push(Arc::new(store));
    }
    Ok(disks)
}

/// Total bytes of the file system holding `dir`: the disk's capacity in the cluster map.
pub fn capacity(dir: &Path) -> Result<u64, String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| format!("{} has a NUL byte", dir.display()))?;
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stats` a writable statvfs.
    let status = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
    if status != 0 {
        return Err(format!(
            "statvfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok((stats.f_blocks as u64)
        .saturating_mul(stats.f_frsize as u64)
        .max(1))
}

/// The members of `pools`' PG maps that live on one of `disks` of `node`.
pub fn local_replicas(
    node: NodeId,
    disks: &[Arc<ChunkStore>],
    pools: &[PoolMap],
) -> Vec<NewReplica> {
    let local: Vec<DiskId> = disks.iter().map(|d| d.disk_id()).collect();
    let mut out = Vec::new();
    for pool in pools {
        for (index, members) in pool.pg_map.iter().enumerate() {
            let voters: Vec<ReplicaId> = members.iter().map(|m| m.replica).collect();
            for member in members {
                if member.replica.node() == node && local.contains(&member.disk) {
                    out.push(NewReplica {
                        group: GroupId::pg(pool.id, index as u32),
                        replica: member.replica,
                        voters: voters.clone(),
                        disk: member.disk,
                    });
                }
            }
        }
    }
    out
}

/// Starts the PG host of `node` on its Raft log in `wal` and its `disks`, hosting every member
/// of `pools`' PG maps that lives on one of them (created on first sight), each PG's first
/// member named its preferred leader. Returns the host and how many replicas were created.
pub fn start_host(
    node: NodeId,
    wal: &Path,
    disks: &[Arc<ChunkStore>],
    pools: &[PoolMap],
) -> Result<(PgHost<FileLogStore>, usize), String> {
    let wanted = local_replicas(node, disks, pools);
    let placement: BTreeMap<ReplicaId, DiskId> =
        wanted.iter().map(|r| (r.replica, r.disk)).collect();
    let log = FileLogStore::open(wal).map_err(|e| e.to_string())?;
    let mut config = NodeConfig::new(node);
    config.election_tick_range = (10, 20);
    let mut host =
        PgHost::new(config, log, disks.to_vec(), placement).map_err(|e| e.to_string())?;
    let mut created = 0;
    for new in wanted {
        // Also names each PG's preferred leader (the PG map's first member).
        if host.host_new(new).map_err(|e| e.to_string())? {
            created += 1;
        }
    }
    Ok((host, created))
}

/// The heartbeat of `node`: its disks and what its PG host reports.
pub fn heartbeat(
    node: NodeId,
    disks: &[Arc<ChunkStore>],
    replicas: Vec<cairn_storage_node::pg::ReplicaState>,
) -> Heartbeat {
    use std::sync::atomic::Ordering::Relaxed;
    Heartbeat {
        node: node.0,
        disks: disks
            .iter()
            .map(|d| DiskReport {
                id: d.disk_id(),
                used_bytes: d.chunk_ids().len() as u64 * u64::from(d.chunk_size_bytes()),
                reads: d.stats().reads.load(Relaxed),
                writes: d.stats().writes.load(Relaxed),
                corrupt_blocks: d.stats().corrupt_blocks.load(Relaxed),
                read_micros: d.stats().read_micros.load(Relaxed),
                write_micros: d.stats().write_micros.load(Relaxed),
            })
            .collect(),
        replicas: replicas
            .into_iter()
            .map(|r| ReplicaReport {
                group: r.group.0,
                replica: r.replica,
                leader: r.leader,
                term: r.term,
                commit: r.commit,
                applied: r.applied,
            })
            .collect(),
    }
}

/// The Prometheus text exposition of a storage node's counters: its PG host's and each
/// disk's.
pub fn metrics(stats: &PgStats, disks: &[Arc<ChunkStore>]) -> Response {
    use std::{fmt::Write as _, sync::atomic::Ordering::Relaxed};
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let node_counters: [(&str, &str, &AtomicU64); 4] = [
        (
            "cairn_pg_read_repairs_total",
            "Blocks repaired from another replica after a checksum failure.",
            &stats.read_repairs,
        ),
        (
            "cairn_pg_unrepaired_checksum_errors_total",
            "Checksum failures no replica could repair (the IO failed).",
            &stats.unrepaired,
        ),
        (
            "cairn_pg_writes_applied_total",
            "Writes applied to chunk stores, counted per replica.",
            &stats.writes_applied,
        ),
        (
            "cairn_pg_reads_served_total",
            "Linearizable reads served.",
            &stats.reads_served,
        ),
    ];
    for (name, help, value) in node_counters {
        counter(name, help, vec![(String::new(), value.load(Relaxed))]);
    }
    type DiskCounter = fn(&ChunkStore) -> &AtomicU64;
    let disk_counters: [(&str, &str, DiskCounter); 5] = [
        (
            "cairn_disk_read_micros_total",
            "Microseconds spent in chunk-store reads (with the read count: mean latency).",
            |d| &d.stats().read_micros,
        ),
        (
            "cairn_disk_write_micros_total",
            "Microseconds spent in chunk-store writes.",
            |d| &d.stats().write_micros,
        ),
        (
            "cairn_disk_reads_total",
            "Chunk-store reads completed.",
            |d| &d.stats().reads,
        ),
        (
            "cairn_disk_writes_total",
            "Chunk-store writes completed.",
            |d| &d.stats().writes,
        ),
        (
            "cairn_disk_corrupt_blocks_total",
            "Blocks whose checksum failed on read.",
            |d| &d.stats().corrupt_blocks,
        ),
    ];
    for (name, help, value) in disk_counters {
        let samples = disks
            .iter()
            .map(|d| {
                (
                    format!("{{disk=\"{}\"}}", d.disk_id()),
                    value(d).load(Relaxed),
                )
            })
            .collect();
        counter(name, help, samples);
    }
    let content_type = [("content-type", "text/plain; version=0.0.4")];
    (StatusCode::OK, content_type, out).into_response()
}
