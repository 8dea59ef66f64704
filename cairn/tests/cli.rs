//! The `cairn` binary end to end: disk format, show (text and JSON), scrub of a clean disk and
//! of a disk with a flipped bit, and clear errors on bad input.

use std::{path::Path, process::Command};

use cairn_common::{ChunkId, OwnerId, PoolId};
use cairn_storage_node::{ChunkStore, ChunkStoreOptions};

fn cairn(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("run cairn");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8 output");
    (
        output.status.code().unwrap_or(-1),
        text(output.stdout),
        text(output.stderr),
    )
}

fn write_chunks(dir: &Path) -> (std::path::PathBuf, u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let options = ChunkStoreOptions {
            create: false,
            slots_per_file: 4,
            ..ChunkStoreOptions::default()
        };
        let store = ChunkStore::open(dir, &options).await.expect("open");
        let id = ChunkId {
            pool: PoolId(1),
            owner: OwnerId(5),
            index: 0,
        };
        store.create(id).await.expect("create");
        store
            .write(id, 0, &vec![0x5a; 1 << 20])
            .await
            .expect("write");
        store.flush().await.expect("flush");
        let (path, _) = store.chunk_location(id).expect("location");
        (
            path,
            store.data_file_offset(id, 4096 * 3 + 10).expect("offset"),
        )
    })
}

#[test]
fn format_show_and_scrub_a_disk() {
    let root = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let disk = root.path().join("disk0");
    let disk_arg = disk.to_str().expect("utf-8 path");
    let (code, out, err) = cairn(&["disk", "format", disk_arg, "--chunk-size-kib", "1024"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("formatted"), "{out}");
    let (code, _, err) = cairn(&["disk", "format", disk_arg]);
    assert_ne!(code, 0, "relabelling must be refused");
    assert!(err.contains("already formatted"), "{err}");

    let (path, corrupt_at) = write_chunks(&disk);
    let (code, out, _) = cairn(&["disk", "show", disk_arg, "--json"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("\"chunk_size_bytes\":1048576") && out.contains("\"chunks\":1"),
        "{out}"
    );
    let (code, out, _) = cairn(&["disk", "scrub", disk_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1 chunks, 1 MiB verified, 0 corrupt blocks"),
        "{out}"
    );

    let mut bytes = std::fs::read(&path).expect("read pool file");
    bytes[corrupt_at as usize] ^= 0x10;
    std::fs::write(&path, bytes).expect("damage pool file");
    let (code, out, _) = cairn(&["disk", "scrub", disk_arg, "--json"]);
    assert_eq!(code, 1, "a corrupt block fails the scrub: {out}");
    assert!(out.contains("\"block_index\":3"), "{out}");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let root = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let dir = root.path().to_str().expect("utf-8 path");
    let (code, _, err) = cairn(&["disk", "format", dir, "--chunk-size-kib", "3"]);
    assert_eq!(code, 2);
    assert!(err.contains("multiple of 4 KiB"), "{err}");
    let (code, _, err) = cairn(&["disk", "show", dir]);
    assert_eq!(code, 1);
    assert!(err.contains("no Cairn disk label"), "{err}");
    let (code, _, err) = cairn(&["disk", "scrub", dir]);
    assert_ne!(code, 0);
    assert!(err.contains("no disk label"), "{err}");
    let (code, _, _) = cairn(&["no-such-command"]);
    assert_eq!(code, 2);
}
