//! The `cairn` binary end to end: disk format, show (text and JSON), scrub of a clean disk and
//! of a disk with a flipped bit, and clear errors on bad input.

use std::{path::Path, process::Command};

use cairn_common::{ChunkId, OwnerId, PoolId, ReplicaId};
use cairn_storage_node::{ChunkStore, ChunkStoreOptions};

fn cairn(args: &[&str]) -> (i32, String, String) {
    cairn_with_env(args, &[])
}

fn cairn_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run cairn");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8 output");
    (
        output.status.code().unwrap_or(-1),
        text(output.stdout),
        text(output.stderr),
    )
}

/// Runs `future` on a runtime of its own (chunk stores opened by a test).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// Polls `done` every 100 ms until it holds; fails the test after `seconds`.
fn wait_until(what: &str, seconds: u64, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn write_chunks(dir: &Path) -> (std::path::PathBuf, u64) {
    block_on(async {
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
            to: cairn_common::ReplicaId::new(NodeId(2), 1).0,
            from: cairn_common::ReplicaId::new(NodeId(1), 1).0,
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

/// A single-member metadata group on loopback, stopped (SIGKILL) when dropped.
struct MetaMember {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for MetaMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TOKEN: &str = "test-admin-token-0123456789";

/// A loopback port nothing listens on, below the kernel's ephemeral range: a process
/// restarted on the same port must find it free, and an ephemeral port can meanwhile become
/// the local end of an outgoing connection.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    loop {
        let attempt = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(attempt.wrapping_mul(7_919)) % 12_000);
        let port = u16::try_from(port).expect("below 32768");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
        assert!(attempt < 100_000, "no free port");
    }
}

fn start_meta() -> MetaMember {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    assert_eq!(cairn(&["ca", "init", &path("ca")]).0, 0);
    assert_eq!(
        cairn(&["ca", "issue", &path("ca"), "1", "--out", &path("certs")]).0,
        0
    );
    std::fs::write(dir.path().join("token"), TOKEN).expect("token");
    let api = format!("127.0.0.1:{}", free_port());
    let member = format!("1=127.0.0.1:{},{api}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "meta",
            "--id",
            "1",
            "--data",
            &path("data"),
            "--certs",
            &path("certs"),
        ])
        .args([
            "--token-file",
            &path("token"),
            "--member",
            &member,
            "--tick-ms",
            "20",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn cairn meta");
    MetaMember {
        child,
        url: format!("http://{api}"),
        _dir: dir,
    }
}

fn admin(member: &MetaMember, args: &[&str]) -> (i32, String, String) {
    let env = [
        ("CAIRN_ADMIN_URL", member.url.as_str()),
        ("CAIRN_ADMIN_TOKEN", TOKEN),
    ];
    cairn_with_env(args, &env)
}

/// Goal: the operator CLI drives the admin API of a real `cairn meta`: pools, volumes, disks
/// and tenants with tables and `--json`, and clear errors with a non-zero exit for 400, 401,
/// 404 and 409, none of which changes what is stored. Method: one member on loopback, the CLI
/// as a user runs it.
#[test]
fn operator_cli_over_the_admin_api() {
    let member = start_meta();
    // The CLI retries while the member elects itself.
    let (code, out, err) = admin(&member, &["cluster", "status", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"role\""), "{out}");
    for host in 1..=3 {
        let id = format!("00000000-0000-0000-0000-00000000000{host}");
        let host = host.to_string();
        let (code, out, err) = admin(
            &member,
            &[
                "node",
                "add-disk",
                "--id",
                &id,
                "--host",
                &host,
                "--capacity",
                "1T",
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
    }
    let (code, out, err) = admin(&member, &["pool", "create", "p", "--pg-count", "32"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = admin(
        &member,
        &["volume", "create", "vol1", "--pool", "p", "--size", "10G"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("vol1") && out.contains("10 GiB"),
        "a table: {out}"
    );
    let (code, out, _) = admin(&member, &["volume", "list", "--json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(list[0]["size_bytes"], 10u64 << 30);
    // 409, 404, 400: clear message, non-zero exit, nothing changed.
    let (code, _, err) = admin(
        &member,
        &["volume", "create", "vol1", "--pool", "p", "--size", "1G"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("already exists") && err.contains("409"),
        "{err}"
    );
    let (code, _, err) = admin(&member, &["volume", "show", "nope"]);
    assert!(code != 0 && err.contains("404"), "{err}");
    let (code, _, err) = admin(
        &member,
        &[
            "volume",
            "create",
            "bad name!",
            "--pool",
            "p",
            "--size",
            "1G",
        ],
    );
    assert!(code != 0 && err.contains("400"), "{err}");
    let (code, _, err) = admin(&member, &["volume", "resize", "vol1", "--size", "1G"]);
    assert!(
        code != 0 && err.contains("400"),
        "shrinking is refused: {err}"
    );
    let (code, _, err) = admin(
        &member,
        &["volume", "create", "v2", "--pool", "p", "--size", "lots"],
    );
    assert!(code != 0 && err.contains("size"), "{err}");
    let (code, out, _) = admin(&member, &["volume", "show", "vol1", "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains(&(10u64 << 30).to_string()), "unchanged: {out}");
    assert_eq!(
        admin(&member, &["volume", "resize", "vol1", "--size", "20G"]).0,
        0
    );
    assert_eq!(admin(&member, &["volume", "delete", "vol1"]).0, 0);
    let (_, out, _) = admin(&member, &["volume", "list", "--json"]);
    assert_eq!(out.trim(), "[]");
    // Tenants and keys: the secret is shown once, at creation.
    assert_eq!(admin(&member, &["tenant", "create", "acme"]).0, 0);
    let (code, out, err) = admin(&member, &["tenant", "create-key", "acme", "--json"]);
    assert_eq!(code, 0, "{err}");
    let key: serde_json::Value = serde_json::from_str(&out).expect("json");
    let secret = key["secret_key"].as_str().expect("secret").to_string();
    let (_, out, _) = admin(&member, &["tenant", "list", "--json"]);
    assert!(!out.contains(&secret), "listing never shows a secret");
    let (code, _, err) = admin(&member, &["tenant", "delete", "acme"]);
    assert!(code != 0 && err.contains("409"), "{err}");
    // A wrong token is refused.
    let output = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["pool", "list"])
        .env("CAIRN_ADMIN_URL", &member.url)
        .env("CAIRN_ADMIN_TOKEN", "wrong-token-wrong-token")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && err.contains("401"), "{err}");
}

/// A `cairn dev` process, stopped (SIGKILL) when dropped.
struct Dev {
    child: std::process::Child,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cairn dev` on `dir` and waits for its `endpoints.env`; returns the process and the
/// environment a user would source from that file.
fn start_dev(dir: &Path, listen: &str, iscsi: &str) -> (Dev, Vec<(String, String)>) {
    start_dev_with(dir, listen, iscsi, &[])
}

/// [`start_dev`] with more arguments.
fn start_dev_with(
    dir: &Path,
    listen: &str,
    iscsi: &str,
    extra: &[&str],
) -> (Dev, Vec<(String, String)>) {
    let endpoints = dir.join("endpoints.env");
    let _ = std::fs::remove_file(&endpoints);
    let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["dev", "--data", &dir.to_string_lossy(), "--listen", listen])
        .args(["--pg-count", "8", "--iscsi-listen", iscsi])
        .args(["--s3-listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn cairn dev");
    let dev = Dev { child };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&endpoints) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cairn dev never got ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut env = Vec::new();
    for line in text.lines() {
        let (key, value) = line.split_once('=').expect("KEY=VALUE lines");
        let key = match key {
            "ADMIN_URL" => "CAIRN_ADMIN_URL",
            "ADMIN_TOKEN" => "CAIRN_ADMIN_TOKEN",
            other => other,
        };
        env.push((key.to_string(), value.to_string()));
    }
    (dev, env)
}

/// A plain HTTP GET with a bearer token; the whole response as text.
fn http_get(addr: &str, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: cairn\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("receive");
    response
}

/// Runs the CLI with some environment.
type Runner<'a> = dyn Fn(&[&str]) -> (i32, String, String) + 'a;

/// Goal: `cairn dev` is a working cluster: a volume's bytes written with the CLI read back
/// exactly, unwritten space reads as zeros, a range past the end is refused with a non-zero
/// exit, and everything survives a SIGKILL and a restart on the same directory. Method: the
/// real binary, as a newcomer runs it, with the environment from `endpoints.env`.
#[test]
fn cairn_dev_stores_volume_bytes_across_a_kill() {
    let dir = tempfile::Builder::new()
        .prefix("cairn-dev-test-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let listen = format!("127.0.0.1:{}", free_port());
    let iscsi = format!("127.0.0.1:{}", free_port());
    let (dev, env) = start_dev(dir.path(), &listen, &iscsi);
    let run = |args: &[&str]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cairn_with_env(args, &env)
    };
    let (code, out, err) = run(&[
        "volume", "create", "vm1", "--pool", "default", "--size", "64M",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // 5 MiB + 3 bytes at an unaligned offset: several chunks, unaligned both ends.
    let data: Vec<u8> = (0..(5 << 20) + 3).map(|i: u32| (i % 251) as u8).collect();
    let file = dir.path().join("in.bin");
    std::fs::write(&file, &data).expect("write input");
    let offset = 4_000_001u64;
    let (code, out, err) = run(&[
        "volume",
        "write",
        "vm1",
        &offset.to_string(),
        &file.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let back = dir.path().join("back.bin");
    let read_back = |run: &Runner| {
        let length = data.len().to_string();
        let (code, out, err) = run(&[
            "volume",
            "read",
            "vm1",
            &offset.to_string(),
            &length,
            "--out",
            &back.to_string_lossy(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
        std::fs::read(&back).expect("read output")
    };
    assert!(
        read_back(&run) == data,
        "the bytes read back are the bytes written"
    );
    let (code, out, err) = run(&[
        "volume",
        "read",
        "vm1",
        "60M",
        "4096",
        "--out",
        &back.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read(&back).expect("read"),
        vec![0u8; 4096],
        "thin: zeros"
    );
    let (code, _, err) = run(&[
        "volume",
        "read",
        "vm1",
        "64M",
        "1",
        "--out",
        &back.to_string_lossy(),
    ]);
    assert_ne!(code, 0, "past the end is refused");
    assert!(err.contains("HTTP 400"), "{err}");

    // The storage node reports every second: all PGs healthy, all three disks reporting.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, out, err) = run(&["cluster", "status", "--json"]);
        assert_eq!(code, 0, "{out}{err}");
        let status: serde_json::Value = serde_json::from_str(&out).expect("json");
        let health = &status["health"];
        if health["pgs_healthy"] == 8 && health["disks_in_reporting"] == 3 {
            assert_eq!(health["pgs_degraded"], 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never healthy: {out}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, out, _) = run(&["cluster", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("8 healthy, 0 degraded, 0 down"), "{out}");
    let token = &env
        .iter()
        .find(|(k, _)| k == "CAIRN_ADMIN_TOKEN")
        .expect("token")
        .1;
    // Every piece on every replica (followers apply once they learn the commit: poll).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = http_get(&listen, "/metrics", token);
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        let applied = metrics
            .lines()
            .find_map(|l| l.strip_prefix("cairn_pg_writes_applied_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("writes applied counter");
        if applied >= 3 * 6 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {applied} applied"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The leaders wrote through their disks' read caches; leased reads are counted.
    let metrics = http_get(&listen, "/metrics", token);
    let cached: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("cairn_disk_read_cache_bytes{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(cached > 0, "no block in any read cache: {metrics}");
    assert!(
        metrics.contains("\ncairn_pg_reads_leased_total "),
        "{metrics}"
    );
    assert!(http_get(&listen, "/metrics", "wrong-token").starts_with("HTTP/1.1 401"));

    drop(dev);
    let (_dev, env2) = start_dev(dir.path(), &listen, &iscsi);
    // The S3 endpoint listens on any free port in these tests: everything else is the same.
    let fixed = |env: &[(String, String)]| -> Vec<(String, String)> {
        env.iter()
            .filter(|(k, _)| k != "S3_ENDPOINT")
            .cloned()
            .collect()
    };
    assert_eq!(
        fixed(&env2),
        fixed(&env),
        "the same endpoints, token and keys after a restart"
    );
    assert!(
        read_back(&run) == data,
        "acknowledged bytes survive SIGKILL and restart"
    );
}

/// A process killed (SIGKILL) when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops a process with SIGTERM (a storage node flushes its chunk stores) and waits for it.
fn terminate(mut process: Killed) {
    let pid = libc::pid_t::try_from(process.0.id()).expect("pid");
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM");
    let status = process.0.wait().expect("wait");
    assert!(status.success(), "stopped with {status}");
}

/// `cairn node run` for node `id` with one disk under `dir`, on fixed ports.
fn start_node(dir: &Path, id: u64, ports: (u16, u16), env: &[(&str, &str)]) -> Killed {
    start_node_with(dir, id, ports, env, &[])
}

/// [`start_node`] with more arguments.
fn start_node_with(
    dir: &Path,
    id: u64,
    ports: (u16, u16),
    env: &[(&str, &str)],
    more: &[&str],
) -> Killed {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let node_dir = dir.join(format!("n{id}"));
    let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["node", "run", "--id", &id.to_string()])
        .args(["--data", &node_dir.to_string_lossy()])
        .args(["--disk", &node_dir.join("disk").to_string_lossy()])
        .args(["--raft-listen", &format!("127.0.0.1:{}", ports.0)])
        .args(["--data-listen", &format!("127.0.0.1:{}", ports.1)])
        .args(["--certs", &path("certs"), "--token-file", &path("token")])
        .args(more)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(test_log(&format!("n{id}")))
        .spawn()
        .expect("spawn cairn node run");
    Killed(child)
}

/// Where a process of a test logs: `$CAIRN_TEST_LOGS/NAME.log` (at info level, appended)
/// when that is set, to read after a failure; nowhere otherwise.
fn test_log(name: &str) -> std::process::Stdio {
    let Some(dir) = std::env::var_os("CAIRN_TEST_LOGS") else {
        return std::process::Stdio::null();
    };
    let path = Path::new(&dir).join(format!("{name}.log"));
    std::fs::create_dir_all(&dir).expect("log dir");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("log file");
    file.into()
}

/// Polls `cluster status --json` until `done` holds for its health (or 30 s pass).
fn wait_health(env: &[(&str, &str)], what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    wait_health_for(env, what, 30, done)
}

/// [`wait_health`] for up to `seconds`.
fn wait_health_for(
    env: &[(&str, &str)],
    what: &str,
    seconds: u64,
    done: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let (code, out, err) = cairn_with_env(&["cluster", "status", "--json"], env);
        assert_eq!(code, 0, "{out}{err}");
        let status: serde_json::Value = serde_json::from_str(&out).expect("json");
        if done(&status["health"]) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never {what}: {out}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A metadata member (node 1, heartbeat timeout 2 s) for storage-node tests, with the CA,
/// certificates for nodes 1 to `nodes_max` and the token under a new directory in
/// `/var/tmp` (the storage nodes need a disk file system). Returns the directory, the member
/// (killed when dropped) and its admin URL.
fn start_cluster_meta(prefix: &str, nodes_max: u64) -> (tempfile::TempDir, Killed, String) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    assert_eq!(cairn(&["ca", "init", &path("ca")]).0, 0);
    for id in 1..=nodes_max {
        let id = id.to_string();
        assert_eq!(
            cairn(&["ca", "issue", &path("ca"), &id, "--out", &path("certs")]).0,
            0
        );
    }
    std::fs::write(dir.path().join("token"), TOKEN).expect("token");
    let api = format!("127.0.0.1:{}", free_port());
    let member = format!("1=127.0.0.1:{},{api}", free_port());
    let meta = Killed(
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["meta", "--id", "1", "--data", &path("meta")])
            .args(["--certs", &path("certs"), "--token-file", &path("token")])
            .args(["--member", &member, "--tick-ms", "20"])
            .args(["--heartbeat-timeout-s", "2"])
            .stderr(test_log("m1"))
            .spawn()
            .expect("spawn cairn meta"),
    );
    (dir, meta, format!("http://{api}"))
}

/// Starts storage nodes 2, 3 and 4 (ports from `ports`), then a 3-replica pool `p` of 8 PGs
/// by host and a 64 MiB volume `v` on it, once every PG is healthy.
fn start_three_nodes_with_a_volume(
    dir: &Path,
    ports: &[(u16, u16)],
    env: &[(&str, &str)],
    first_node_args: &[&str],
) -> Vec<Killed> {
    start_three_nodes_with_args(dir, ports, env, |i| {
        if i == 0 {
            first_node_args.to_vec()
        } else {
            Vec::new()
        }
    })
}

/// [`start_three_nodes_with_a_volume`] with more arguments for node `2 + i` from `args(i)`.
fn start_three_nodes_with_args<'a>(
    dir: &Path,
    ports: &[(u16, u16)],
    env: &[(&str, &str)],
    args: impl Fn(usize) -> Vec<&'a str>,
) -> Vec<Killed> {
    let nodes: Vec<Killed> = (0..3)
        .map(|i| start_node_with(dir, 2 + i as u64, ports[i], env, &args(i)))
        .collect();
    wait_health(env, "three disks reporting", |h| {
        h["disks_in_reporting"] == 3
    });
    let pool = [
        "pool",
        "create",
        "p",
        "--replicas",
        "3",
        "--domain",
        "host",
        "--pg-count",
        "8",
    ];
    let (code, out, err) = cairn_with_env(&pool, env);
    assert_eq!(code, 0, "{out}{err}");
    wait_health(env, "healthy", |h| h["pgs_healthy"] == 8);
    let volume = ["volume", "create", "v", "--pool", "p", "--size", "64M"];
    let (code, out, err) = cairn_with_env(&volume, env);
    assert_eq!(code, 0, "{out}{err}");
    nodes
}

/// The environment the CLI needs to reach the metadata member at `url`.
fn admin_env(url: &str) -> [(&str, &str); 2] {
    [("CAIRN_ADMIN_URL", url), ("CAIRN_ADMIN_TOKEN", TOKEN)]
}

/// Free (Raft, data) port pairs for `count` storage nodes.
fn node_ports(count: usize) -> Vec<(u16, u16)> {
    (0..count).map(|_| (free_port(), free_port())).collect()
}

/// Runs the CLI against a storage node's data API (volume bytes through that node).
fn via_node(port: u16, args: &[&str]) -> (i32, String, String) {
    let url = format!("http://127.0.0.1:{port}");
    cairn_with_env(
        args,
        &[("CAIRN_ADMIN_URL", &url), ("CAIRN_ADMIN_TOKEN", TOKEN)],
    )
}

/// Goal: PG replicas on three storage-node processes replicate over mutual TLS: every PG of a
/// 3-replica pool gets a leader and all members report; a SIGKILLed node degrades its PGs
/// (the other two keep a leader); restarted, it catches up and the PGs are healthy again.
/// Method: one `cairn meta` (node 1) and `cairn node run` for nodes 2-4, one disk each, a pool
/// with host as failure domain, `cluster status` as an operator reads it.
#[test]
fn storage_nodes_replicate_pgs_across_processes() {
    let (dir, _meta, url) = start_cluster_meta("cairn-nodes-test-", 4);
    let env = admin_env(&url);
    let ports = node_ports(3);
    // Node 2 also serves the volumes over iSCSI.
    let portal = format!("127.0.0.1:{}", free_port());
    let chap_file = dir.path().join("chap");
    let secret = "chap-secret-123";
    std::fs::write(&chap_file, secret).expect("chap file");
    let chap_path = chap_file.to_string_lossy().into_owned();
    let iscsi_args = ["--iscsi-listen", &portal, "--iscsi-chap-file", &chap_path];
    let mut nodes = start_three_nodes_with_a_volume(dir.path(), &ports, &env, &iscsi_args);
    // Volume bytes through any node's data API: pieces go to the nodes leading their PGs.
    let run_via = |i: usize, args: &[&str]| via_node(ports[i].1, args);
    let bytes: Vec<u8> = (0..(9 << 20) + 5).map(|i: u32| (i % 253) as u8).collect();
    let input = dir.path().join("in.bin");
    std::fs::write(&input, &bytes).expect("input");
    let output = dir.path().join("out.bin");
    let write_via = |i: usize| {
        let (code, out, err) = run_via(
            i,
            &["volume", "write", "v", "1000", &input.to_string_lossy()],
        );
        assert_eq!(code, 0, "write via node {}: {out}{err}", i + 2);
    };
    let length = bytes.len().to_string();
    let read_back = |i: usize| {
        let out_path = output.to_string_lossy();
        let (code, out, err) = run_via(
            i,
            &["volume", "read", "v", "1000", &length, "--out", &out_path],
        );
        assert_eq!(code, 0, "read via node {}: {out}{err}", i + 2);
        std::fs::read(&output).expect("output") == bytes
    };
    write_via(0);
    assert!(read_back(2), "written through node 2, read through node 4");
    // Node 2's replicas apply the writes as followers learn the commit index: poll.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = http_get(&format!("127.0.0.1:{}", ports[0].1), "/metrics", TOKEN);
        let applied = metrics
            .lines()
            .find_map(|l| l.strip_prefix("cairn_pg_writes_applied_total "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if applied.is_some_and(|n| n > 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 2 applied no write: {metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // iSCSI through node 2: the volume's target, CHAP, a write that every node then serves.
    let target = "iqn.2026-12.io.cairn:v";
    let iscsi_data: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 241) as u8).collect();
    let iscsi_lba = 50_000u64;
    let iscsi_write = |data: &[u8]| {
        // The gateway lists new volumes within a second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            match iscsi_session(&portal, target, secret).and_then(|mut initiator| {
                initiator
                    .write(iscsi_lba, data)
                    .map_err(|e| e.to_string())?;
                initiator
                    .read(iscsi_lba, (data.len() / 512) as u32)
                    .map_err(|e| e.to_string())
            }) {
                Ok(read) => return read,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("iSCSI not yet: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(300));
                }
                Err(e) => panic!("iSCSI through node 2: {e}"),
            }
        }
    };
    assert!(
        iscsi_write(&iscsi_data) == iscsi_data,
        "read back over iSCSI"
    );
    let iscsi_back = |i: usize| {
        let out_path = output.to_string_lossy();
        let offset = (iscsi_lba * 512).to_string();
        let length = iscsi_data.len().to_string();
        let (code, out, err) = run_via(
            i,
            &["volume", "read", "v", &offset, &length, "--out", &out_path],
        );
        assert_eq!(code, 0, "read via node {}: {out}{err}", i + 2);
        std::fs::read(&output).expect("output")
    };
    assert!(
        iscsi_back(2) == iscsi_data,
        "written over iSCSI, read through node 4"
    );

    // A stateless gateway process: the same target, its pieces forwarded to the PG leaders.
    let gateway_portal = format!("127.0.0.1:{}", free_port());
    let _gateway = start_gateway(dir.path(), &gateway_portal, &chap_path, &env);
    let through_gateway = |lba: u64, blocks: u32, data: Option<&[u8]>| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let attempt = iscsi_session(&gateway_portal, target, secret).and_then(|mut s| {
                if let Some(data) = data {
                    s.write(lba, data).map_err(|e| e.to_string())?;
                }
                s.read(lba, blocks).map_err(|e| e.to_string())
            });
            match attempt {
                Ok(read) => return read,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("gateway not yet: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(300));
                }
                Err(e) => panic!("iSCSI through the gateway: {e}"),
            }
        }
    };
    let blocks = (iscsi_data.len() / 512) as u32;
    assert!(
        through_gateway(iscsi_lba, blocks, None) == iscsi_data,
        "written through node 2's target, read through the stateless gateway"
    );
    let gateway_lba = 70_000u64;
    let gateway_data: Vec<u8> = (0..64 << 10).map(|i: u32| (i % 239) as u8).collect();
    let gateway_blocks = (gateway_data.len() / 512) as u32;
    through_gateway(gateway_lba, gateway_blocks, Some(&gateway_data));
    let via_node_2 = iscsi_session(&portal, target, secret)
        .and_then(|mut s| {
            s.read(gateway_lba, gateway_blocks)
                .map_err(|e| e.to_string())
        })
        .expect("read through node 2");
    assert!(
        via_node_2 == gateway_data,
        "written through the gateway, read through node 2"
    );
    persistent_reservations_hold_across_gateways(&portal, &gateway_portal, target, secret);

    drop(nodes.remove(1)); // SIGKILL node 3
    wait_health(&env, "degraded", |h| {
        h["pgs_degraded"] == 8 && h["disks_in_silent"] == 1
    });
    assert!(read_back(0), "read with a node down");
    write_via(2);
    let second: Vec<u8> = iscsi_data.iter().map(|b| b ^ 0x5a).collect();
    assert!(
        iscsi_write(&second) == second,
        "iSCSI writes go on with a storage node SIGKILLed"
    );
    nodes.insert(1, start_node(dir.path(), 3, ports[1], &env));
    wait_health(&env, "healthy again", |h| h["pgs_healthy"] == 8);
    assert!(read_back(1), "read through the restarted node");
    assert!(
        iscsi_back(1) == second,
        "the iSCSI write acknowledged during the outage, read through the restarted node"
    );
    assert!(
        through_gateway(iscsi_lba, blocks, None) == second,
        "and through the stateless gateway"
    );
}

/// A PERSISTENT RESERVE OUT (SPC-4 6.15): `action` (0 register, 1 reserve, 3 clear,
/// 4 preempt), type 1 (write exclusive), the keys in its 24-byte parameter list.
fn prout(
    session: &mut cairn_gateway_iscsi::initiator::Initiator,
    action: u8,
    key: u64,
    service_action_key: u64,
) -> Result<(), String> {
    let cdb = [0x5f, action, 0x01, 0, 0, 0, 0, 0, 24, 0];
    let mut parameters = [0u8; 24];
    parameters[..8].copy_from_slice(&key.to_be_bytes());
    parameters[8..16].copy_from_slice(&service_action_key.to_be_bytes());
    session
        .command(&cdb, &parameters, 0)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Goal: persistent reservations are one state for every gateway: a reservation taken
/// through one gateway fences writes through another, and once a PREEMPT through one gateway
/// is acknowledged, the preempted initiator can no longer write through any gateway.
/// Method: initiator A registers and reserves (write exclusive) through gateway 1; B, through
/// gateway 2, may read but its write is RESERVATION CONFLICT; B registers and preempts A
/// through gateway 2; A's very next write through gateway 1 is RESERVATION CONFLICT while B
/// writes; B clears the state.
fn persistent_reservations_hold_across_gateways(
    gateway_1: &str,
    gateway_2: &str,
    target: &str,
    secret: &str,
) {
    const RESERVATION_CONFLICT: &str = "SCSI status 0x18";
    let session = |portal: &str, name: &str| {
        let mut session = iscsi_session_as(portal, target, secret, name).expect("login");
        session.read_capacity().expect("read capacity");
        session
    };
    let mut a = session(gateway_1, "iqn.2026-12.org.example:host-a");
    let mut b = session(gateway_2, "iqn.2026-12.org.example:host-b");
    let block = vec![0xa5u8; 512];
    prout(&mut a, 0, 0, 0xa).expect("A registers");
    prout(&mut a, 1, 0xa, 0).expect("A reserves");
    a.write(90_000, &block).expect("the holder writes");
    b.read(90_000, 1).expect("write exclusive lets others read");
    let refused = b.write(90_000, &block).expect_err("B is fenced");
    assert!(
        refused.to_string().contains(RESERVATION_CONFLICT),
        "{refused}"
    );
    prout(&mut b, 0, 0, 0xb).expect("B registers");
    prout(&mut b, 4, 0xb, 0xa).expect("B preempts A");
    let refused = a.write(90_000, &block).expect_err("A is fenced at once");
    assert!(
        refused.to_string().contains(RESERVATION_CONFLICT),
        "{refused}"
    );
    b.write(90_000, &block).expect("the new holder writes");
    prout(&mut b, 3, 0xb, 0).expect("B clears");
    a.write(90_000, &block).expect("no reservation left");
}

/// `cairn gateway iscsi` on `portal`, default CHAP secret from `chap_path`.
fn start_gateway(dir: &Path, portal: &str, chap_path: &str, env: &[(&str, &str)]) -> Killed {
    let token = dir.join("token").to_string_lossy().into_owned();
    let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "gateway",
            "iscsi",
            "--listen",
            portal,
            "--token-file",
            &token,
        ])
        .args(["--chap-file", chap_path])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(test_log("gateway"))
        .spawn()
        .expect("spawn cairn gateway iscsi");
    Killed(child)
}

/// A logged-in iSCSI session on `target` at `portal` with CHAP user `cairn`.
fn iscsi_session(
    portal: &str,
    target: &str,
    secret: &str,
) -> Result<cairn_gateway_iscsi::initiator::Initiator, String> {
    iscsi_session_as(portal, target, secret, "iqn.2026-12.io.cairn:node-test")
}

/// [`iscsi_session`] as initiator `initiator`.
fn iscsi_session_as(
    portal: &str,
    target: &str,
    secret: &str,
    initiator_name: &str,
) -> Result<cairn_gateway_iscsi::initiator::Initiator, String> {
    let address: std::net::SocketAddr = portal.parse().map_err(|e| format!("{e}"))?;
    let mut initiator = cairn_gateway_iscsi::initiator::Initiator::connect(
        address,
        std::time::Duration::from_secs(10),
    )
    .map_err(|e| e.to_string())?;
    initiator
        .login(initiator_name, target, Some(("cairn", secret.as_bytes())))
        .map_err(|e| e.to_string())?;
    Ok(initiator)
}

/// Goal: a replica whose contents differ from its PG's other members' (bytes written behind
/// the PG's back with a checksum that matches them, which no read or scrub can tell) is found
/// by the content digests and replaced by a copy of the leader's; the volume reads as the
/// majority holds it. Method: nodes 2-4 proposing digests every second, 1 MiB written; node
/// 4 stopped, one never-written block of its copy of chunk 0 written straight into its chunk
/// store; node 4 back: health names its member as differing; rebalance paused and node 5
/// added: node 4's copy of chunk 0 goes (its member moved) and every PG is healthy with its
/// members agreeing; the volume reads back as written through nodes 2 and 5. With diverged
/// members not counted as lost, the test fails.
#[test]
fn a_replica_whose_contents_differ_is_replaced() {
    let (dir, _meta, url) = start_cluster_meta("cairn-diverge-test-", 6);
    let env = admin_env(&url);
    let ports = node_ports(4);
    let digests = ["--pg-digest-secs", "1"];
    let mut nodes = start_three_nodes_with_args(dir.path(), &ports, &env, |_| digests.to_vec());
    let bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    let input = dir.path().join("in.bin");
    std::fs::write(&input, &bytes).expect("input");
    let (code, out, err) = via_node(
        ports[0].1,
        &["volume", "write", "v", "0", &input.to_string_lossy()],
    );
    assert_eq!(code, 0, "write: {out}{err}");
    wait_health_for(&env, "digests agreeing", 60, |h| {
        h["pgs_consistent"] == 8 && h["pgs_inconsistent"] == 0
    });
    let id = |kind: &str| {
        let (code, out, err) = cairn_with_env(&[kind, "list", "--json"], &env);
        assert_eq!(code, 0, "{out}{err}");
        let list: serde_json::Value = serde_json::from_str(&out).expect("json");
        list.as_array().expect("a list")[0]["id"].clone()
    };
    let pool = id("pool").as_u64().expect("pool id");
    let owner = u64::from_str_radix(id("volume").as_str().expect("volume id"), 16).expect("hex");
    let chunk = ChunkId {
        pool: PoolId(u32::try_from(pool).expect("pool id")),
        owner: OwnerId(owner),
        index: 0,
    };

    // Node 4 (every node holds every chunk: 3 hosts, 3 replicas) gets other bytes in block
    // 1000 of chunk 0, past the 1 MiB written: no log entry rewrites it at the restart. First
    // it must have applied the write (acknowledged once two members hold it).
    let location = format!("/v1/debug/chunk-location/{pool}/{owner}/0?block=0");
    let node4 = format!("127.0.0.1:{}", ports[2].1);
    let node4_holds_it = || http_get(&node4, &location, TOKEN).contains("\"path\"");
    wait_until("node 4 storing chunk 0", 30, node4_holds_it);
    terminate(nodes.remove(2));
    block_on(async {
        let options = ChunkStoreOptions {
            create: false,
            ..ChunkStoreOptions::default()
        };
        let disk = dir.path().join("n4").join("disk");
        let store = ChunkStore::open(&disk, &options)
            .await
            .expect("open node 4's disk");
        store
            .write(chunk, 1000 * 4096, &[0xd1; 4096])
            .await
            .expect("write behind the PG's back");
        store.flush().await.expect("flush");
    });
    nodes.push(start_node_with(dir.path(), 4, ports[2], &env, &digests));
    wait_health_for(&env, "node 4's member named as differing", 60, |h| {
        h["inconsistent"].as_array().is_some_and(|pgs| {
            pgs.iter().any(|pg| {
                let replicas = pg["replicas"].as_array().into_iter().flatten();
                pg["majority"] == true
                    && replicas
                        .filter_map(|r| r.as_u64())
                        .any(|r| ReplicaId(r).node().0 == 4)
            })
        })
    });
    // Only a recovery may move members from here: node 5 is the free host for the move.
    let (code, out, err) = cairn_with_env(&["rebalance", "pause"], &env);
    assert_eq!(code, 0, "{out}{err}");
    nodes.push(start_node_with(dir.path(), 5, ports[3], &env, &digests));
    wait_until("node 4's differing member replaced", 120, || {
        !node4_holds_it()
    });
    wait_health_for(&env, "healthy with every PG's members agreeing", 60, |h| {
        h["status"] == "healthy" && h["pgs_consistent"] == 8 && h["pgs_inconsistent"] == 0
    });
    let output = dir.path().join("out.bin");
    for port in [ports[0].1, ports[3].1] {
        let out_path = output.to_string_lossy();
        let length = bytes.len().to_string();
        let (code, out, err) = via_node(
            port,
            &["volume", "read", "v", "0", &length, "--out", &out_path],
        );
        assert_eq!(code, 0, "read: {out}{err}");
        assert!(
            std::fs::read(&output).expect("output") == bytes,
            "read back"
        );
    }
    let tail = 1000 * 4096;
    let (code, out, err) = via_node(
        ports[3].1,
        &[
            "volume",
            "read",
            "v",
            &tail.to_string(),
            "4096",
            "--out",
            &output.to_string_lossy(),
        ],
    );
    assert_eq!(code, 0, "read: {out}{err}");
    assert!(
        std::fs::read(&output)
            .expect("output")
            .iter()
            .all(|b| *b == 0),
        "the block written behind the PG's back is not what the volume holds"
    );
}

/// Goal: the scheduler moves PG members: a node added to a running cluster receives its share
/// of the PGs (rebalance), a drained node gives its members away and can then be removed,
/// and a node lost for good has its members replaced on the others (recovery); every move
/// copies the PG's chunks to the new member before the old one goes, so every byte written
/// reads back. Method: one `cairn meta` and nodes 2-4, a 3-replica pool of 8 PGs by host,
/// 6 MiB written; node 5 joins and the cluster settles with node 5 hosting members; `node
/// remove 4` is refused, `node drain 4` empties it and `node remove 4` then succeeds; node 6
/// joins and takes members; node 3 is SIGKILLed for good and the cluster settles healthy on
/// nodes 2, 5 and 6; the bytes read back through several nodes, and a new write too.
#[test]
fn storage_nodes_rebalance_drain_and_recover() {
    let (dir, _meta, url) = start_cluster_meta("cairn-moves-test-", 6);
    let env = admin_env(&url);
    let ports = node_ports(4);
    let mut nodes = start_three_nodes_with_a_volume(dir.path(), &ports, &env, &[]);
    let via = |i: usize, args: &[&str]| via_node(ports[i].1, args);
    let bytes: Vec<u8> = (0..(6 << 20) + 77).map(|i: u32| (i % 251) as u8).collect();
    let input = dir.path().join("in.bin");
    std::fs::write(&input, &bytes).expect("input");
    let (code, out, err) = via(
        0,
        &["volume", "write", "v", "3000", &input.to_string_lossy()],
    );
    assert_eq!(code, 0, "write: {out}{err}");
    let output = dir.path().join("out.bin");
    let length = bytes.len().to_string();
    let read_back = |i: usize| {
        let out_path = output.to_string_lossy();
        let (code, out, err) = via(
            i,
            &["volume", "read", "v", "3000", &length, "--out", &out_path],
        );
        assert_eq!(code, 0, "read via node {}: {out}{err}", i + 2);
        std::fs::read(&output).expect("output") == bytes
    };
    let replicas_on = |status: &serde_json::Value, node: u64| {
        status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["node"] == node && n["fresh"] == true)
            .and_then(|n| n["replicas"].as_u64())
            .unwrap_or(0)
    };

    // Rebalance: node 5 joins and takes its share (24 members over 4 hosts: 6 each).
    nodes.push(start_node(dir.path(), 5, ports[3], &env));
    wait_health_for(&env, "node 5 holding its share", 90, |h| {
        h["status"] == "healthy" && replicas_on(h, 5) >= 5 && replicas_on(h, 2) <= 7
    });
    let (code, out, err) = cairn_with_env(&["rebalance", "status", "--json"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(read_back(3), "read through node 5 after the rebalance");
    // The copies above went over mutual TLS between nodes; the admin token alone copies
    // nothing.
    let copy = http_get(
        &format!("127.0.0.1:{}", ports[0].1),
        "/v1/pg-chunks/1",
        TOKEN,
    );
    assert!(copy.starts_with("HTTP/1.1 403"), "{copy}");
    // A node holding members cannot be removed; drained, it can.
    let (code, out, err) = cairn_with_env(&["node", "remove", "4"], &env);
    assert_ne!(code, 0, "node 4 holds members: {out}{err}");
    let (code, out, err) = cairn_with_env(&["node", "drain", "4"], &env);
    assert_eq!(code, 0, "{out}{err}");
    wait_health_for(&env, "node 4 drained", 90, |h| {
        h["status"] == "healthy" && replicas_on(h, 4) == 0
    });
    let (code, out, err) = cairn_with_env(&["node", "remove", "4"], &env);
    assert_eq!(code, 0, "{out}{err}");
    drop(nodes.remove(2));
    assert!(read_back(0), "read through node 2 after node 4 left");

    // Recovery: node 6 joins; node 3 is lost for good; its members move to nodes 2, 5 and 6.
    let port6 = (free_port(), free_port());
    nodes.push(start_node(dir.path(), 6, port6, &env));
    wait_health_for(&env, "node 6 holding members", 90, |h| {
        h["status"] == "healthy" && replicas_on(h, 6) >= 5
    });
    drop(nodes.remove(1));
    wait_health_for(&env, "healthy without node 3", 90, |h| {
        h["status"] == "healthy" && h["pgs_healthy"] == 8 && replicas_on(h, 3) == 0
    });
    assert!(read_back(0), "read through node 2 after the recovery");
    let (code, out, err) = via(
        3,
        &["volume", "write", "v", "5000", &input.to_string_lossy()],
    );
    assert_eq!(code, 0, "write after the recovery: {out}{err}");
    let out_path = output.to_string_lossy();
    let (code, out, err) = via(
        0,
        &["volume", "read", "v", "5000", &length, "--out", &out_path],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        std::fs::read(&output).expect("output") == bytes,
        "read after the recovery"
    );
}

/// Runs one of libiscsi's tools (Debian libiscsi-bin, which scripts/prerequisites.sh installs).
fn iscsi_tool(name: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} (Debian package libiscsi-bin): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Goal: `cairn dev` serves its volumes over iSCSI to real initiators, behind CHAP, and
/// what an initiator writes is the volume's bytes, still there after a kill -9.
/// Method: a volume; libiscsi's iscsi-ls (discovery), iscsi-inq and iscsi-readcapacity16
/// (with the CHAP from endpoints.env, and with a wrong secret), a subset of iscsi-test-cu;
/// our own initiator writes an unaligned range, the HTTP data route reads it back, then the
/// initiator reads it again after a SIGKILL and restart.
#[test]
fn cairn_dev_serves_volumes_over_iscsi() {
    use cairn_gateway_iscsi::initiator::Initiator;
    let dir = tempfile::Builder::new()
        .prefix("cairn-dev-iscsi-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let listen = format!("127.0.0.1:{}", free_port());
    let portal = format!("127.0.0.1:{}", free_port());
    let (dev, env) = start_dev(dir.path(), &listen, &portal);
    let get = |key: &str| {
        env.iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("{key} in endpoints.env"))
            .1
            .clone()
    };
    assert_eq!(get("ISCSI_PORTAL"), portal);
    let (user, secret, prefix) = (
        get("ISCSI_CHAP_USER"),
        get("ISCSI_CHAP_SECRET"),
        get("ISCSI_TARGET"),
    );
    let run = |args: &[&str]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cairn_with_env(args, &env)
    };
    let (code, out, err) = run(&[
        "volume", "create", "disk-a", "--pool", "default", "--size", "16M", "--tier", "ultra",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let target = format!("{prefix}disk-a");
    // The gateway registers its portal within a second or so of the start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let info = loop {
        let (code, out, err) = run(&["volume", "attach-info", "disk-a", "--json"]);
        assert_eq!(code, 0, "{out}{err}");
        let info: serde_json::Value = serde_json::from_str(&out).expect("json");
        if !info["portal"].is_null() || std::time::Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(info["target"], target.as_str());
    assert_eq!(info["portal"], portal.as_str());
    assert_eq!(info["lun"], 0);

    // The gateway picks new volumes up within a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (_, out) = iscsi_tool("iscsi-ls", &[&format!("iscsi://{portal}")]);
        if out.contains(&format!("Target:{target} Portal:{portal}")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never listed: {out}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let url = format!("iscsi://{user}%{secret}@{portal}/{target}/0");
    let (code, out) = iscsi_tool("iscsi-inq", &[&url]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("DIRECT_ACCESS"), "{out}");
    let (code, out) = iscsi_tool("iscsi-readcapacity16", &[&url]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("RETURNED LOGICAL BLOCK ADDRESS:32767")
            && out.contains("LOGICAL BLOCK LENGTH IN BYTES:512"),
        "{out}"
    );
    let wrong = format!("iscsi://{user}%not-the-secret-1@{portal}/{target}/0");
    let (code, out) = iscsi_tool("iscsi-inq", &[&wrong]);
    assert!(
        code != 0 || out.contains("Login Failed"),
        "a wrong secret must not log in: {out}"
    );
    assert!(!out.contains(&secret));

    // A subset of the conformance suite over the replicated volume (the whole suite runs
    // against the gateway's in-memory LUNs in gateway-iscsi's tests).
    let (code, out) = iscsi_tool(
        "iscsi-test-cu",
        &[
            "-d",
            "-s",
            "-i",
            "iqn.2026-12.io.cairn:test-1",
            "-I",
            "iqn.2026-12.io.cairn:test-2",
            "-t",
            "SCSI.Write10,SCSI.Read10,SCSI.Write16,SCSI.CompareAndWrite,SCSI.WriteSame10,SCSI.Unmap,\
             SCSI.ProutRegister,SCSI.ProutReserve,SCSI.PrinReadKeys,SCSI.Inquiry,\
             iSCSI.iSCSIResiduals",
            &url,
            &url,
        ],
    );
    assert_eq!(code, 0, "{out}");
    let tests: Vec<u64> = out
        .lines()
        .find(|l| l.trim_start().starts_with("tests "))
        .unwrap_or_else(|| panic!("no CUnit summary: {out}"))
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // Total, ran, passed, failed, inactive.
    assert!(
        tests.len() == 5 && tests[1] >= 60 && tests[3] == 0,
        "iscsi-test-cu: {tests:?}\n{out}"
    );

    // Bytes through our initiator, checked through the HTTP data route, then after a kill.
    let data: Vec<u8> = (0..(1 << 20) + 3 * 512)
        .map(|i: u32| (i % 253) as u8)
        .collect();
    let lba = 77;
    let address: std::net::SocketAddr = portal.parse().expect("portal");
    let login = || {
        let mut initiator =
            Initiator::connect(address, std::time::Duration::from_secs(10)).expect("connect");
        initiator
            .login(
                "iqn.2026-12.io.cairn:cli-test",
                &target,
                Some((&user, secret.as_bytes())),
            )
            .expect("login with CHAP");
        initiator
    };
    let mut initiator = login();
    initiator.write(lba, &data).expect("write over iSCSI");
    initiator.logout().expect("logout");
    let back = dir.path().join("back.bin");
    let (code, out, err) = run(&[
        "volume",
        "read",
        "disk-a",
        &(lba * 512).to_string(),
        &data.len().to_string(),
        "--out",
        &back.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        std::fs::read(&back).expect("read") == data,
        "the volume holds what the initiator wrote"
    );
    drop(dev);
    let (_dev, _) = start_dev(dir.path(), &listen, &portal);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let read = loop {
        // The target list is refreshed a second after the start.
        let attempt = std::panic::catch_unwind(|| {
            let mut initiator = login();
            initiator
                .read(lba, (data.len() / 512) as u32)
                .expect("read over iSCSI")
        });
        match attempt {
            Ok(read) => break read,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            Err(e) => std::panic::resume_unwind(e),
        }
    };
    assert!(
        read == data,
        "bytes acknowledged over iSCSI survive SIGKILL and restart"
    );
}

/// Goal: operators set a volume's QoS and who may log in to its target, and every gateway
/// applies it within seconds; secrets never show in listings.
/// Method: on `cairn dev`, custom limits through `cairn volume create|qos` (shown back, refused
/// out of range); a volume given its own CHAP credential and an initiator ACL: discovery
/// shows it only to the listed initiator, the gateway's default credential no longer logs in
/// and the volume's own does, attach-info names its CHAP user, `--clear` restores the default.
#[test]
fn cairn_dev_applies_volume_qos_and_iscsi_access() {
    use cairn_gateway_iscsi::initiator::Initiator;
    let dir = tempfile::Builder::new()
        .prefix("cairn-dev-access-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let listen = format!("127.0.0.1:{}", free_port());
    let portal = format!("127.0.0.1:{}", free_port());
    let (_dev, env) = start_dev(dir.path(), &listen, &portal);
    let get = |key: &str| {
        env.iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("{key} in endpoints.env"))
            .1
            .clone()
    };
    let run = |args: &[&str]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cairn_with_env(args, &env)
    };
    let json = |args: &[&str]| {
        let mut args = args.to_vec();
        args.push("--json");
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        serde_json::from_str::<serde_json::Value>(&out).expect("json")
    };

    let created = json(&[
        "volume", "create", "fast", "--pool", "default", "--size", "8M", "--iops", "40000",
        "--mbps", "300",
    ]);
    assert_eq!(created["iops_max"], 40_000);
    assert_eq!(created["bytes_per_s_max"], 300_000_000u64);
    let changed = json(&["volume", "qos", "fast", "--tier", "high"]);
    assert_eq!(changed["iops_max"], 2500, "back to the tier's limit");
    assert_eq!(changed["bytes_per_s_max"], serde_json::Value::Null);
    let (code, out, err) = run(&["volume", "qos", "fast", "--iops", "0"]);
    assert_ne!(code, 0, "an IOPS limit of 0 is refused: {out}");
    assert!(err.contains("IOPS limit"), "{err}");

    json(&[
        "volume", "create", "private", "--pool", "default", "--size", "8M",
    ]);
    let secret_file = dir.path().join("alice.secret");
    std::fs::write(&secret_file, "alice-secret-42\n").expect("secret");
    let allowed = "iqn.2026-12.org.example:allowed";
    let access = json(&[
        "volume",
        "access",
        "private",
        "--chap-user",
        "alice",
        "--chap-secret-file",
        &secret_file.to_string_lossy(),
        "--initiator",
        allowed,
    ]);
    assert!(!access.to_string().contains("alice-secret"), "{access}");
    let shown = json(&["volume", "show", "private"]);
    assert_eq!(shown["iscsi_access"]["chap"]["user"], "alice");
    assert!(!shown.to_string().contains("alice-secret"), "{shown}");
    let target = format!("{}private", get("ISCSI_TARGET"));
    let listed = |initiator: &str| {
        let (_, out) = iscsi_tool("iscsi-ls", &["-i", initiator, &format!("iscsi://{portal}")]);
        out.contains(&format!("Target:{target} "))
    };
    // The gateway may have listed the volume before its rules were set: wait for the rules.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !listed(allowed) || listed("iqn.2026-12.org.example:other") {
        assert!(
            std::time::Instant::now() < deadline,
            "discovery never showed the target to the listed initiator alone"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The gateway registers its portal before it lists targets.
    let info = json(&["volume", "attach-info", "private"]);
    assert_eq!(info["chap_user"], "alice");
    assert_eq!(
        info["portal"],
        portal.as_str(),
        "the gateway registered its portal"
    );

    let address: std::net::SocketAddr = portal.parse().expect("portal");
    let login = |initiator: &str, user: &str, secret: &str| {
        let mut session =
            Initiator::connect(address, std::time::Duration::from_secs(10)).expect("connect");
        session
            .login(initiator, &target, Some((user, secret.as_bytes())))
            .map(|()| session)
    };
    let (user, default_secret) = (get("ISCSI_CHAP_USER"), get("ISCSI_CHAP_SECRET"));
    assert!(login(allowed, &user, &default_secret).is_err());
    assert!(login("iqn.2026-12.org.example:other", "alice", "alice-secret-42").is_err());
    let mut session = login(allowed, "alice", "alice-secret-42").expect("the volume's own CHAP");
    session.write(8, &[0x5a; 4096]).expect("write");
    assert_eq!(session.read(8, 8).expect("read"), vec![0x5a; 4096]);
    session.logout().expect("logout");

    json(&["volume", "access", "private", "--clear"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while login("iqn.2026-12.org.example:other", &user, &default_secret).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "defaults never restored"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The Python that has boto3: `CAIRN_PYTHON`, else the virtual environment
/// `scripts/prerequisites.sh` makes (`~/.cache/cairn-py`).
fn boto3_python() -> String {
    std::env::var("CAIRN_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/cairn-py/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    })
}

/// Runs an S3 client tool with `env`; panics with its output unless it succeeds.
fn s3_tool(program: &str, args: &[&str], env: &[(String, String)]) -> String {
    let out = Command::new(program)
        .args(args)
        // A CA bundle from the environment makes rclone refuse a plain-HTTP endpoint.
        .env_remove("AWS_CA_BUNDLE")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (see scripts/prerequisites.sh)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// Goal: `cairn dev` serves S3 to the clients people use, and what they store survives a
/// kill -9. Method: boto3 (current, from pip) runs `s3_boto3.py`: bucket and object life
/// cycle, ranges, conditions, CRC-32 trailers, Content-MD5, listings, copies, batch deletes,
/// multipart (errors included), presigned and virtual-host URLs with curl, wrong and unknown
/// keys, anonymous access; `s3_versions.py` checks versioning (versions, delete markers,
/// suspension, listing) and bucket and tenant quotas set through the CLI; `s3_policy.py`
/// bucket policies; `s3_lifecycle.py` lifecycle rules, with a lifecycle day shortened to a
/// second. Then Debian's
/// awscli 2 uploads and downloads a 200 MiB file (multipart), s3cmd and rclone run a life
/// cycle, `cairn dev` is killed and restarted, and every object reads back.
#[test]
fn cairn_dev_serves_s3_to_real_clients() {
    let dir = tempfile::Builder::new()
        .prefix("cairn-dev-s3-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let listen = format!("127.0.0.1:{}", free_port());
    // Garbage waits a second; a lifecycle day lasts one (s3_lifecycle.py).
    let flags = [
        "--s3-garbage-grace-secs",
        "1",
        "--s3-lifecycle-day-secs",
        "1",
    ];
    let (dev, env) = start_dev_with(dir.path(), &listen, "127.0.0.1:0", &flags);
    let get = |key: &str| {
        env.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{key} in endpoints.env"))
    };
    let endpoint = get("S3_ENDPOINT");
    let token = get("CAIRN_ADMIN_TOKEN");
    let mut env = env.clone();
    env.push(("BUCKET".into(), "boto".into()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3_boto3.py");
    let out = s3_tool(&boto3_python(), &[script], &env);
    assert!(out.contains("boto3 checks passed"), "{out}");

    // Versioning and quotas (set through the CLI, which the script runs).
    let mut versions_env = env.clone();
    versions_env.push(("CAIRN_BIN".into(), env!("CARGO_BIN_EXE_cairn").into()));
    let versions = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3_versions.py");
    let out = s3_tool(&boto3_python(), &[versions], &versions_env);
    assert!(out.contains("versioning and quota checks passed"), "{out}");

    // Bucket policies: a second tenant and its key, made with the CLI.
    let cli_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, _, err) = cairn_with_env(&["tenant", "create", "other"], &cli_env);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) =
        cairn_with_env(&["--json", "key", "create", "--tenant", "other"], &cli_env);
    assert_eq!(code, 0, "{err}");
    let key: serde_json::Value = serde_json::from_str(&out).expect("key JSON");
    let mut policy_env = env.clone();
    for (name, field) in [
        ("OTHER_ACCESS_KEY", "access_key_id"),
        ("OTHER_SECRET_KEY", "secret_key"),
    ] {
        let value = key[field].as_str().expect("key field").to_string();
        policy_env.push((name.into(), value));
    }
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3_policy.py");
    let out = s3_tool(&boto3_python(), &[policies], &policy_env);
    assert!(out.contains("policy checks passed"), "{out}");

    // Lifecycle rules, applied by the worker with the day shortened to a second.
    let lifecycle = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3_lifecycle.py");
    let out = s3_tool(&boto3_python(), &[lifecycle], &policy_env);
    assert!(out.contains("lifecycle checks passed"), "{out}");

    // Random signed requests: no crash, no 500, nothing changed that was not named.
    let mut fuzz_env = env.clone();
    fuzz_env.push(("BUCKET".into(), "fuzz".into()));
    fuzz_env.push((
        "FUZZ_SEED".into(),
        std::env::var("CAIRN_FUZZ_SEED").unwrap_or("7".into()),
    ));
    fuzz_env.push(("FUZZ_COUNT".into(), "300".into()));
    let fuzz = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3_fuzz.py");
    let out = s3_tool(&boto3_python(), &[fuzz], &fuzz_env);
    assert!(out.contains("no crash, no 500"), "{out}");

    // awscli 2 (Debian's), with a file large enough for a multipart upload.
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let aws_env: Vec<(String, String)> = vec![
        ("HOME".into(), home.to_string_lossy().into()),
        ("AWS_ACCESS_KEY_ID".into(), get("S3_ACCESS_KEY")),
        ("AWS_SECRET_ACCESS_KEY".into(), get("S3_SECRET_KEY")),
        ("AWS_DEFAULT_REGION".into(), get("S3_REGION")),
        ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
        ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
    ];
    let aws = |args: &[&str]| {
        let mut all = vec!["--endpoint-url", endpoint.as_str()];
        all.extend_from_slice(args);
        s3_tool("/usr/bin/aws", &all, &aws_env)
    };
    let big = dir.path().join("big.bin");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&big).expect("create");
        let mut block = vec![0u8; 1 << 20];
        for i in 0..200u32 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i as usize * 31 + j * 7 % 251) as u8;
            }
            block[..4].copy_from_slice(&i.to_le_bytes());
            file.write_all(&block).expect("write");
        }
    }
    let big_path = big.to_string_lossy().to_string();
    aws(&["s3", "mb", "s3://awscli"]);
    aws(&["s3", "cp", &big_path, "s3://awscli/big.bin"]);
    let head = aws(&[
        "s3api",
        "head-object",
        "--bucket",
        "awscli",
        "--key",
        "big.bin",
    ]);
    assert!(head.contains("209715200") && head.contains('-'), "{head}");
    let back = dir.path().join("big.back");
    aws(&["s3", "cp", "s3://awscli/big.bin", &back.to_string_lossy()]);
    assert!(std::fs::read(&back).expect("read") == std::fs::read(&big).expect("read"));
    let listing = aws(&["s3", "ls", "s3://awscli/"]);
    assert!(listing.contains("big.bin"), "{listing}");

    // s3cmd: path-style against the endpoint, no TLS.
    let host = endpoint.trim_start_matches("http://").to_string();
    let s3cmd = |args: &[&str]| {
        let access = format!("--access_key={}", get("S3_ACCESS_KEY"));
        let secret = format!("--secret_key={}", get("S3_SECRET_KEY"));
        let host_arg = format!("--host={host}");
        let bucket_arg = format!("--host-bucket={host}");
        let mut all = vec![
            "--config=/dev/null",
            "--no-ssl",
            "--region=us-east-1",
            access.as_str(),
            secret.as_str(),
            host_arg.as_str(),
            bucket_arg.as_str(),
        ];
        all.extend_from_slice(args);
        s3_tool("s3cmd", &all, &aws_env)
    };
    let small = dir.path().join("small.txt");
    std::fs::write(&small, b"from s3cmd\n").expect("write");
    s3cmd(&["mb", "s3://s3cmd"]);
    s3cmd(&["put", &small.to_string_lossy(), "s3://s3cmd/dir/small.txt"]);
    let listing = s3cmd(&["ls", "--recursive", "s3://s3cmd"]);
    assert!(listing.contains("s3://s3cmd/dir/small.txt"), "{listing}");
    let fetched = dir.path().join("small.back");
    s3cmd(&[
        "get",
        "s3://s3cmd/dir/small.txt",
        &fetched.to_string_lossy(),
    ]);
    assert_eq!(std::fs::read(&fetched).expect("read"), b"from s3cmd\n");
    s3cmd(&["del", "s3://s3cmd/dir/small.txt"]);
    s3cmd(&["rb", "s3://s3cmd"]);

    // rclone: copy a tree up, check it, sync a deletion.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    std::fs::write(tree.join("a.txt"), b"alpha").expect("write");
    std::fs::write(tree.join("sub/b.bin"), vec![7u8; 300_000]).expect("write");
    let rclone_env: Vec<(String, String)> = vec![
        ("HOME".into(), home.to_string_lossy().into()),
        ("RCLONE_CONFIG".into(), "/dev/null".into()),
        ("RCLONE_CONFIG_CAIRN_TYPE".into(), "s3".into()),
        ("RCLONE_CONFIG_CAIRN_PROVIDER".into(), "Other".into()),
        ("RCLONE_CONFIG_CAIRN_ENDPOINT".into(), endpoint.clone()),
        (
            "RCLONE_CONFIG_CAIRN_ACCESS_KEY_ID".into(),
            get("S3_ACCESS_KEY"),
        ),
        (
            "RCLONE_CONFIG_CAIRN_SECRET_ACCESS_KEY".into(),
            get("S3_SECRET_KEY"),
        ),
        ("RCLONE_CONFIG_CAIRN_REGION".into(), get("S3_REGION")),
        ("RCLONE_CONFIG_CAIRN_FORCE_PATH_STYLE".into(), "true".into()),
    ];
    let rclone = |args: &[&str]| s3_tool("rclone", args, &rclone_env);
    let tree_path = tree.to_string_lossy().to_string();
    rclone(&["mkdir", "cairn:rclone"]);
    rclone(&["copy", &tree_path, "cairn:rclone/tree"]);
    rclone(&["check", &tree_path, "cairn:rclone/tree"]);
    std::fs::remove_file(tree.join("a.txt")).expect("rm");
    rclone(&["sync", &tree_path, "cairn:rclone/tree"]);
    let listing = rclone(&["ls", "cairn:rclone"]);
    assert!(
        listing.contains("tree/sub/b.bin") && !listing.contains("a.txt"),
        "{listing}"
    );

    // The chunks of every object replaced, deleted or never completed are reclaimed: the
    // garbage list drains and no write is left pending.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let garbage = http_get(&listen, "/v1/s3/garbage", &token);
        let pending = http_get(
            &listen,
            "/v1/s3/pending?older_than_ms=99999999999999",
            &token,
        );
        assert!(garbage.starts_with("HTTP/1.1 200"), "{garbage}");
        if garbage.ends_with("\r\n\r\n[]") && pending.ends_with("\r\n\r\n[]") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "garbage never reclaimed:\n{garbage}\n{pending}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    // Everything acknowledged survives a kill -9 and a restart.
    drop(dev);
    let (_dev, _) = start_dev_with(dir.path(), &listen, "127.0.0.1:0", &flags);
    let endpoint_after = std::fs::read_to_string(dir.path().join("endpoints.env"))
        .expect("endpoints")
        .lines()
        .find_map(|l| l.strip_prefix("S3_ENDPOINT=").map(str::to_string))
        .expect("S3_ENDPOINT");
    let aws_after = |args: &[&str]| {
        let mut all = vec!["--endpoint-url", endpoint_after.as_str()];
        all.extend_from_slice(args);
        s3_tool("/usr/bin/aws", &all, &aws_env)
    };
    let again = dir.path().join("big.again");
    aws_after(&["s3", "cp", "s3://awscli/big.bin", &again.to_string_lossy()]);
    assert!(std::fs::read(&again).expect("read") == std::fs::read(&big).expect("read"));
    let small_again = dir.path().join("hello.again");
    aws_after(&[
        "s3",
        "cp",
        "s3://boto/docs/hello.txt",
        &small_again.to_string_lossy(),
    ]);
    assert_eq!(
        std::fs::read(&small_again).expect("read"),
        b"hello, cairn\n"
    );
}

/// Goal: given a certificate, `cairn dev` serves S3 over HTTPS, and current boto3's uploads
/// there (aws-chunked bodies with CRC-32 trailers, which SDKs send only over HTTPS) are checked
/// and stored. Method: a self-signed certificate for localhost; boto3 verifies it; a PUT of
/// 6 MiB and one of 3 bytes read back; a plain-HTTP request to the port fails.
#[test]
fn cairn_dev_serves_s3_over_tls() {
    let dir = tempfile::Builder::new()
        .prefix("cairn-dev-s3tls-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("certificate");
    let (cert, key) = (dir.path().join("s3.crt"), dir.path().join("s3.key"));
    std::fs::write(&cert, certified.cert.pem()).expect("write");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write");
    let listen = format!("127.0.0.1:{}", free_port());
    let (cert_arg, key_arg) = (cert.to_string_lossy(), key.to_string_lossy());
    let tls = ["--s3-tls-cert", &cert_arg, "--s3-tls-key", &key_arg];
    let (_dev, env) = start_dev_with(dir.path(), &listen, "127.0.0.1:0", &tls);
    let endpoint = env
        .iter()
        .find(|(k, _)| k == "S3_ENDPOINT")
        .map(|(_, v)| v.clone())
        .expect("S3_ENDPOINT");
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    let script = r#"
import os, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"], verify=os.environ["CA"],
                  aws_access_key_id=os.environ["S3_ACCESS_KEY"],
                  aws_secret_access_key=os.environ["S3_SECRET_KEY"], region_name=os.environ["S3_REGION"],
                  config=Config(s3={"addressing_style": "path"}))
s3.create_bucket(Bucket="secure")
big = os.urandom(6 * 1024 * 1024 + 5)
s3.put_object(Bucket="secure", Key="big", Body=big)
s3.put_object(Bucket="secure", Key="small", Body=b"abc")
assert s3.get_object(Bucket="secure", Key="big")["Body"].read() == big
assert s3.get_object(Bucket="secure", Key="small")["Body"].read() == b"abc"
print("tls checks passed")
"#;
    let mut env = env.clone();
    env.push(("CA".into(), cert.to_string_lossy().into()));
    let out = s3_tool(&boto3_python(), &["-c", script], &env);
    assert!(out.contains("tls checks passed"), "{out}");
    let plain = endpoint.replace("https://", "http://");
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            &plain,
        ])
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "000",
        "plain HTTP is not served"
    );
}
