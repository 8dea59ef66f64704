//! Shared helpers: runtimes, directories on the file systems each engine needs, engines.

use std::{path::Path, sync::Arc};

use cairn_common::{BLOCK_SIZE, ChunkId, OwnerId, PoolId};
use cairn_storage_node::{
    ChunkStore, ChunkStoreOptions,
    io::{EngineChoice, EngineKind, EngineOptions, IoEngine, open_engine},
};
use tempfile::TempDir;

/// A single-threaded runtime with the drivers a store needs (io_uring completions are reaped
/// through the IO driver).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// A directory on a disk file system (O_DIRECT works).
pub fn disk_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("cairn-test-")
        .tempdir_in(env_tmp())
        .expect("tempdir")
}

/// Runs `body` on a directory of a ramfs, which refuses O_DIRECT (tmpfs accepts it since Linux
/// 6.6). The test binary re-executes the named test inside a private mount namespace where the
/// ramfs is mounted, so nothing leaks into the host's mounts.
pub fn with_ramfs_dir(test_path: &str, body: impl FnOnce(&Path)) {
    if let Some(dir) = std::env::var_os("CAIRN_TEST_RAMFS") {
        body(Path::new(&dir));
        return;
    }
    let mount_point = disk_dir();
    let exe = std::env::current_exe().expect("test binary path");
    let script =
        r#"mount -t ramfs cairn-test "$1" && exec "$2" --exact "$3" --nocapture --test-threads 1"#;
    let output = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(mount_point.path())
        .arg(&exe)
        .arg(test_path)
        .env("CAIRN_TEST_RAMFS", mount_point.path())
        .output()
        .expect("run unshare (util-linux)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success()
        && std::env::var_os("CI").is_none()
        && stderr.contains("Operation not permitted")
    {
        eprintln!("skipping {test_path}: needs root for a private ramfs mount (CI runs it)");
        return;
    }
    assert!(
        output.status.success(),
        "{test_path} on ramfs failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "{test_path} did not run on ramfs:\n{stdout}"
    );
}

fn env_tmp() -> std::path::PathBuf {
    std::env::var_os("CAIRN_TEST_DIR").map_or_else(|| "/var/tmp".into(), Into::into)
}

/// The engines every suite runs against, each with the directory it needs.
pub fn engine_cases() -> Vec<(&'static str, EngineChoice, TempDir, EngineKind)> {
    vec![
        (
            "io_uring",
            EngineChoice::Uring,
            disk_dir(),
            EngineKind::Uring,
        ),
        (
            "psync-direct",
            EngineChoice::Psync,
            disk_dir(),
            EngineKind::Psync { direct: true },
        ),
    ]
}

pub fn small_engine(choice: EngineChoice) -> EngineOptions {
    EngineOptions {
        choice,
        queue_depth_max: 16,
        buffer_count: 16,
        buffer_size_bytes: 256 << 10,
        psync_threads: 3,
        spin_us: 20,
    }
}

pub fn engine(dir: &Path, choice: EngineChoice) -> Arc<dyn IoEngine> {
    open_engine(dir, &small_engine(choice)).expect("engine")
}

/// Options for a small store: 64 KiB chunks, 256 KiB IO max.
pub fn small_store(choice: EngineChoice) -> ChunkStoreOptions {
    ChunkStoreOptions {
        create: true,
        chunk_size_bytes: 64 << 10,
        preallocate_slots: 2,
        slots_per_file: 2,
        engine: small_engine(choice),
        fault_injection: false,
        // A chunk and a half (16 blocks each): whole-chunk reads hit, and the model tests,
        // over three chunks, meet evictions.
        read_cache_bytes: 24 * u64::from(BLOCK_SIZE),
    }
}

pub async fn open_store(dir: &Path, choice: EngineChoice) -> ChunkStore {
    ChunkStore::open(dir, &small_store(choice))
        .await
        .expect("open store")
}

pub fn chunk(index: u32) -> ChunkId {
    ChunkId {
        pool: PoolId(1),
        owner: OwnerId(42),
        index,
    }
}

/// Deterministic bytes that differ by seed and position.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
