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

/// Goal: `cairn ca` creates a CA and issues node identities that work for mutual TLS, keeps
/// keys private, and never replaces a CA. Method: init, issue two nodes into files, load them
/// and exchange a batch over the real transport.
#[test]
fn ca_init_and_issue_produce_working_identities() {
    use std::os::unix::fs::PermissionsExt;

    use cairn_common::{GroupId, NodeId};
    use cairn_raft::{
        raft_types::Message,
        tls::{IdentityPem, NodeIdentity},
        transport::{TcpTransport, Transport},
    };

    let root = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let ca_dir = root.path().join("ca");
    let ca_arg = ca_dir.to_str().expect("utf-8 path");
    let (code, out, err) = cairn(&["ca", "init", ca_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("PRIVATE KEY"),
        "keys are never printed: {out}"
    );
    let (code, _, err) = cairn(&["ca", "init", ca_arg]);
    assert_ne!(code, 0);
    assert!(err.contains("refusing to replace"), "{err}");
    let mode = |path: std::path::PathBuf| {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    };
    assert_eq!(mode(ca_dir.join("ca.key")), 0o600);

    let node2_dir = root.path().join("n2");
    assert_eq!(cairn(&["ca", "issue", ca_arg, "1"]).0, 0);
    assert_eq!(
        cairn(&[
            "ca",
            "issue",
            ca_arg,
            "2",
            "--out",
            node2_dir.to_str().expect("utf-8")
        ])
        .0,
        0
    );
    assert_eq!(mode(node2_dir.join("node-2.key")), 0o600);
    let load = |dir: &std::path::Path, id: u64| {
        let read = |name: String| std::fs::read_to_string(dir.join(name)).expect("read pem");
        let pem = IdentityPem {
            cert: read(format!("node-{id}.crt")),
            key: read(format!("node-{id}.key")),
            ca: read("ca.crt".into()),
        };
        NodeIdentity::from_pem(NodeId(id), pem).expect("load identity")
    };
    let (one, two) = (load(&ca_dir, 1), load(&node2_dir, 2));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let localhost = "127.0.0.1:0".parse().expect("addr");
        let (a, _, _) = TcpTransport::start(&one, localhost).await.expect("node 1");
        let (_b, b_addr, mut b_in) = TcpTransport::start(&two, localhost).await.expect("node 2");
        a.set_peer_address(NodeId(2), b_addr);
        let message = Message {
            to: 2,
            from: 1,
            term: 1,
            msg_type: 8,
            ..Message::default()
        };
        assert!(a.send(NodeId(2), vec![(GroupId(1), message)]));
        let received = tokio::time::timeout(std::time::Duration::from_secs(10), b_in.recv()).await;
        let (from, _) = received.expect("in time").expect("delivered");
        assert_eq!(from, NodeId(1));
    });
}
