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
    health::{DigestReport, DiskReport, Heartbeat, ReplicaReport},
    state::PgMember,
};
use cairn_raft::{NodeConfig, file_log::FileLogStore};
use cairn_storage_node::{
    ChunkStore, ChunkStoreOptions,
    io::EngineOptions,
    pg::{NewReplica, PgHost, PgStats, PgTarget},
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

/// The PG hosts' Raft tick.
pub const PG_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// Memory each disk's read cache may take by default, MiB (`--read-cache-mib`).
pub const READ_CACHE_MIB_DEFAULT: u64 = 512;

/// The largest `--read-cache-mib`: 1 TiB per disk, far beyond any host's memory.
pub const READ_CACHE_MIB_MAX: u64 = 1 << 20;

/// `--read-cache-mib`, shared by the commands that run disks (`cairn dev`, `cairn node run`).
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct CacheArgs {
    /// Memory each disk's read cache of hot blocks may take, MiB (0: off).
    #[arg(long, default_value_t = READ_CACHE_MIB_DEFAULT,
          value_parser = clap::value_parser!(u64).range(0..=READ_CACHE_MIB_MAX))]
    pub read_cache_mib: u64,
}

/// Opens (formatting on first use) the chunk store in each directory, each with a read cache
/// of up to `read_cache_mib`; with `fault_injection`
/// (chaos runs and tests) each behind a fault-injecting engine ([`fault_routes`]). A disk
/// that fails to open is left out, loudly: the node serves with the others (the replicas the
/// missing disk held do not run, and the metadata service replaces them once its heartbeat
/// timeout finds them silent). An error only if none opens.
pub async fn open_disks(
    paths: &[PathBuf],
    fault_injection: bool,
    read_cache_mib: u64,
) -> Result<Vec<Arc<ChunkStore>>, String> {
    // A caller polling for its completion holds a runtime worker from the network and Raft
    // tasks while it spins: worth it only with cores to spare (the chunk-store benchmark runs
    // one disk alone; a node runs several beside everything else).
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let spin_us = if cores >= 2 * (paths.len() + 1) {
        EngineOptions::default().spin_us
    } else {
        0
    };
    let options = ChunkStoreOptions {
        engine: EngineOptions {
            // 16 x 1 MiB pinned per disk: enough for the data API's 1 MiB pieces.
            buffer_count: 16,
            spin_us,
            ..EngineOptions::default()
        },
        fault_injection,
        read_cache_bytes: read_cache_mib << 20,
        ..ChunkStoreOptions::default()
    };
    let mut disks = Vec::new();
    let mut failed = Vec::new();
    for path in paths {
        match ChunkStore::open(path, &options).await {
            Ok(store) => disks.push(Arc::new(store)),
            Err(e) => {
                let why = format!("disk {}: {e}", path.display());
                tracing::error!("{why}; serving without it");
                eprintln!("cairn: {why}; serving without it");
                failed.push(why);
            }
        }
    }
    if disks.is_empty() {
        return Err(format!("no disk opened: {}", failed.join("; ")));
    }
    Ok(disks)
}

/// The fault-injection route of a node started with `--fault-injection` (chaos runs and
/// tests, never production): `POST /v1/debug/disk-faults/{disk}` with `{"fault":
/// "read-error" | "write-error" | "sync-error"}` makes every such IO on the disk fail with
/// EIO from then on, as a dying disk does; `DELETE` clears the disk's faults (a disk the node
/// already took out of service stays out until the node restarts). Behind the admin token
/// like the rest of the data API.
pub fn fault_routes(disks: Vec<Arc<ChunkStore>>) -> axum::Router {
    use axum::{Json, extract::Path as UrlPath};
    use cairn_storage_node::io::fault::Fault;
    let find = move |disk: &str| {
        disks
            .iter()
            .find(|d| d.disk_id().to_string() == disk)
            .cloned()
    };
    let inject_find = find.clone();
    let inject = move |UrlPath(disk): UrlPath<String>, Json(body): Json<serde_json::Value>| {
        let found = inject_find(&disk);
        async move {
            let Some(store) = found else {
                return (StatusCode::NOT_FOUND, format!("no disk {disk} here")).into_response();
            };
            let Some(faults) = store.faults() else {
                return (StatusCode::CONFLICT, "opened without fault injection").into_response();
            };
            let path = store.dir().to_path_buf();
            let whole = 0..u64::MAX;
            let fault = match body["fault"].as_str() {
                Some("read-error") => Fault::ReadError { path, range: whole },
                Some("write-error") => Fault::WriteError { path, range: whole },
                Some("sync-error") => Fault::SyncError { path },
                _ => {
                    let why = "fault must be read-error, write-error or sync-error";
                    return (StatusCode::BAD_REQUEST, why).into_response();
                }
            };
            faults.inject(fault);
            tracing::warn!(%disk, fault = %body["fault"], "fault injected");
            Json(serde_json::json!({ "disk": disk, "fault": body["fault"] })).into_response()
        }
    };
    let clear = move |UrlPath(disk): UrlPath<String>| {
        let found = find(&disk);
        async move {
            match found.as_ref().and_then(|store| store.faults()) {
                Some(faults) => {
                    faults.clear();
                    tracing::warn!(%disk, "injected faults cleared");
                    StatusCode::NO_CONTENT.into_response()
                }
                None => {
                    (StatusCode::NOT_FOUND, format!("no faulty disk {disk} here")).into_response()
                }
            }
        }
    };
    axum::Router::new().route(
        "/v1/debug/disk-faults/{disk}",
        axum::routing::post(inject).delete(clear),
    )
}

/// Waits for SIGTERM or SIGINT, then flushes every chunk store and exits the process (0).
/// A stop is then clean: every write applied to a store is durable with its checksums, so
/// nothing needs replaying or reads as torn after it (a kill -9 is still safe: the Raft log
/// replays). Writes applied after the flush began are in the Raft log like any other.
pub async fn stop_on_signal(name: String, disks: Vec<Arc<ChunkStore>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("no signal handler: a stop will not flush the chunk stores first");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("{name}: stopping: flushing the chunk stores");
    let mut code = 0;
    for disk in &disks {
        if let Err(e) = disk.flush().await {
            eprintln!("{name}: flush of disk {}: {e}", disk.disk_id());
            code = 1;
        }
    }
    eprintln!("{name}: stopped");
    std::process::exit(code);
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
        let pg_count = pool.pg_map.len() as u32;
        for (index, members) in pool.pg_map.iter().enumerate() {
            let listed: Vec<ReplicaId> = members.iter().map(|m| m.replica).collect();
            let first_voters: Vec<ReplicaId> = members
                .iter()
                .filter(|m| !m.joined)
                .map(|m| m.replica)
                .collect();
            for member in members {
                if member.replica.node() == node && local.contains(&member.disk) {
                    out.push(NewReplica {
                        group: GroupId::pg(pool.id, index as u32),
                        replica: member.replica,
                        members: listed.clone(),
                        joined: member.joined,
                        first_voters: first_voters.clone(),
                        disk: member.disk,
                        pg_count,
                        epoch: pool.epoch,
                    });
                }
            }
        }
    }
    out
}

/// What `pools`' maps say of every PG (local leaders follow them; replicas a map dropped
/// learn it).
pub fn targets(pools: &[PoolMap]) -> Vec<PgTarget> {
    let mut out = Vec::new();
    for pool in pools {
        let pg_count = pool.pg_map.len() as u32;
        for (index, members) in pool.pg_map.iter().enumerate() {
            out.push(PgTarget {
                group: GroupId::pg(pool.id, index as u32),
                members: members.iter().map(|m| m.replica).collect(),
                pg_count,
                epoch: pool.epoch,
            });
        }
    }
    out
}

/// The file beside the Raft log naming each replica's disk: a replica the maps no longer list
/// (it moved away, and is leaving) is still in the log at a restart and needs its disk.
const REPLICAS_FILE: &str = "replicas.json";

/// The disks of the replicas recorded in `wal` (empty if none were).
pub fn recorded_replicas(wal: &Path) -> Result<BTreeMap<ReplicaId, DiskId>, String> {
    let path = wal.join(REPLICAS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Adds `new` to the replicas recorded in `wal`, durably (written aside, synced, renamed,
/// directory synced), before the replicas are hosted.
pub fn record_replicas(wal: &Path, new: &[NewReplica]) -> Result<(), String> {
    let mut recorded = recorded_replicas(wal)?;
    let before = recorded.len();
    for replica in new {
        recorded.insert(replica.replica, replica.disk);
    }
    if recorded.len() == before {
        return Ok(());
    }
    std::fs::create_dir_all(wal).map_err(|e| format!("{}: {e}", wal.display()))?;
    let text = serde_json::to_string(&recorded).map_err(|e| e.to_string())?;
    let path = wal.join(REPLICAS_FILE);
    let aside = wal.join(format!("{REPLICAS_FILE}.new"));
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&aside)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&aside, &path)?;
        std::fs::File::open(wal)?.sync_all()
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
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
    record_replicas(wal, &wanted)?;
    let placement = recorded_replicas(wal)?;
    let log = FileLogStore::open(wal).map_err(|e| e.to_string())?;
    let mut config = NodeConfig::new(node);
    config.election_tick_range = (10, 20);
    // Three quarters of the minimum election timeout: followers that confirmed a leader
    // vote for no one else for the whole timeout (see `NodeConfig::read_lease`); the
    // quarter left covers clock rates and the time a confirmation takes to be processed.
    config.read_lease = Some(PG_TICK * config.election_tick_range.0 as u32 * 3 / 4);
    let mut host =
        PgHost::new(config, log, disks.to_vec(), placement).map_err(|e| e.to_string())?;
    let mut created = 0;
    for target in targets(pools) {
        host.set_target(target).map_err(|e| e.to_string())?;
    }
    for new in wanted {
        // Also names each PG's preferred leader (the PG map's first member). One refused (its
        // disk still holds a leaving replica of the PG) is hosted on a later refresh.
        match host.host_new(new) {
            Ok(true) => created += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!("{e}"),
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
                failure: d.failure().map(str::to_string),
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
                voters: r.voters,
                learners: r.learners,
                restoring: r.restoring,
                restored_bytes: r.restored_bytes,
                needs_replacing: r.needs_replacing,
                pg_bytes: r.pg_bytes,
                digest: r.digest.map(|d| DigestReport {
                    index: d.index,
                    value: d.value,
                }),
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
    let node_counters: [(&str, &str, &AtomicU64); 11] = [
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
        (
            "cairn_pg_reads_leased_total",
            "Reads started under the leader's lease, without a ReadIndex round.",
            &stats.reads_leased,
        ),
        (
            "cairn_pg_restores_total",
            "Snapshot copies completed into joining replicas.",
            &stats.restores,
        ),
        (
            "cairn_pg_restored_bytes_total",
            "Bytes copied into joining replicas.",
            &stats.restored_bytes,
        ),
        (
            "cairn_pg_snapshots_refused_total",
            "Snapshots refused by replicas holding state (they are replaced instead).",
            &stats.snapshots_refused,
        ),
        (
            "cairn_pg_scrubbed_bytes_total",
            "Bytes the background scrub read and verified.",
            &stats.scrubbed_bytes,
        ),
        (
            "cairn_pg_scrub_passes_total",
            "Full passes of the background scrub over the node's replicas.",
            &stats.scrub_passes,
        ),
        (
            "cairn_pg_replicas_dropped_total",
            "Replicas that left their PG, their chunks deleted.",
            &stats.replicas_dropped,
        ),
    ];
    for (name, help, value) in node_counters {
        counter(name, help, vec![(String::new(), value.load(Relaxed))]);
    }
    type DiskCounter = fn(&ChunkStore) -> &AtomicU64;
    let disk_counters: [(&str, &str, DiskCounter); 6] = [
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
        (
            "cairn_disk_cached_reads_total",
            "Chunk-store reads served from the read cache (counted in reads too).",
            |d| &d.stats().cached_reads,
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
    let _ = writeln!(
        out,
        "# HELP cairn_disk_read_cache_bytes Memory the disk's read cache holds now.\n\
         # TYPE cairn_disk_read_cache_bytes gauge"
    );
    for disk in disks {
        let bytes = disk.cached_blocks() as u64 * u64::from(cairn_common::BLOCK_SIZE);
        let _ = writeln!(
            out,
            "cairn_disk_read_cache_bytes{{disk=\"{}\"}} {bytes}",
            disk.disk_id()
        );
    }
    let _ = writeln!(
        out,
        "# HELP cairn_disk_failed 1 once the node took the disk out of service after an IO error.\n\
         # TYPE cairn_disk_failed gauge"
    );
    for disk in disks {
        let failed = u8::from(disk.failure().is_some());
        let _ = writeln!(
            out,
            "cairn_disk_failed{{disk=\"{}\"}} {failed}",
            disk.disk_id()
        );
    }
    let content_type = [("content-type", "text/plain; version=0.0.4")];
    (StatusCode::OK, content_type, out).into_response()
}
