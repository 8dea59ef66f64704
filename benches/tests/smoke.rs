//! Smoke test of `benches/chunkstore.sh`: a tiny run (one round, a fraction of a second per
//! workload, 16 MiB) must print one well-formed line per workload. Proves the script, the load
//! generator and fio work together; says nothing about speed.

use std::process::Command;

#[test]
fn chunkstore_script_prints_one_line_per_workload() {
    if Command::new("fio").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install fio (.ci/run)"
        );
        eprintln!("skipping: fio is not installed");
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/chunkstore.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg(dir.path())
        .env(
            "CAIRN_BENCH_BIN",
            env!("CARGO_BIN_EXE_cairn-bench-chunkstore"),
        )
        .env("CAIRN_BENCH_ROUNDS", "1")
        .env("CAIRN_BENCH_SECONDS", "0.3")
        .env("CAIRN_BENCH_RAMP", "0")
        .env("CAIRN_BENCH_SIZE_MIB", "16")
        .output()
        .expect("run chunkstore.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "chunkstore.sh failed:\n{stdout}\n{stderr}"
    );
    let workloads = [
        "4k-randread-qd1",
        "4k-randread-qd32",
        "4k-randwrite-qd1",
        "4k-randwrite-qd32",
        "1m-seqread-qd8",
        "1m-seqwrite-qd8",
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), workloads.len(), "{stdout}");
    for (line, workload) in lines.iter().zip(workloads) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 4, "{line}");
        assert_eq!(fields[0], workload);
        for (field, key) in fields[1..].iter().zip(["cairn", "fio", "ratio"]) {
            let value = field
                .strip_prefix(&format!("{key}="))
                .unwrap_or_else(|| panic!("{line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            assert!(value > 0.0, "{line}");
        }
    }
}

/// Smoke test of `benches/block.sh` with its Ceph peer left out: against a `cairn dev` (the
/// debug binary `cargo test --workspace` builds beside this crate's), a tiny run (one round,
/// half a second per workload, 16 MiB) must print one line per workload with a positive Cairn
/// rate and latency and `n/a` for Ceph. Proves the script, cairn-bench-block and `cairn dev`'s
/// data routes work together; says nothing about speed.
#[test]
fn block_script_measures_cairn_without_ceph() {
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_cairn-bench-block"));
    let cairn = bench.with_file_name("cairn");
    if !cairn.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs `cargo test --workspace`, which builds {}",
            cairn.display()
        );
        eprintln!(
            "skipping: no {} (build it: cargo build -p cairn)",
            cairn.display()
        );
        return;
    }
    // A free port for cairn dev's admin and data routes, released just before it binds them.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/block.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg(dir.path())
        .arg("0.5")
        .arg("1")
        .env("CAIRN_BENCH_BIN", bench)
        .env("CAIRN_BENCH_CAIRN", &cairn)
        .env("CAIRN_BENCH_CEPH", "0")
        .env("CAIRN_BENCH_RAMP", "0")
        .env("CAIRN_BENCH_SPAN_MIB", "16")
        .env("CAIRN_BENCH_PORT", port.to_string())
        .output()
        .expect("run block.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "block.sh failed:\n{stdout}\n{stderr}"
    );
    let workloads = [
        "4k-randwrite-qd1",
        "4k-randwrite-qd32",
        "4k-randread-qd32",
        "1m-seqwrite-qd8",
        "1m-seqread-qd8",
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), workloads.len(), "{stdout}\n{stderr}");
    for (line, workload) in lines.iter().zip(workloads) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 6, "{line}");
        assert_eq!(fields[0], workload);
        let keys = ["cairn", "ceph", "ratio", "cairn_p99_us", "ceph_p99_us"];
        for (field, key) in fields[1..].iter().zip(keys) {
            let value = field
                .strip_prefix(&format!("{key}="))
                .unwrap_or_else(|| panic!("{line}"));
            if key.starts_with("cairn") {
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
                assert!(value > 0.0, "{line}");
            } else {
                assert_eq!(value, "n/a", "{line}");
            }
        }
    }
}

/// Smoke test of `benches/iscsi.sh` with its tgt peer left out: against a `cairn dev` (the
/// debug binary `cargo test --workspace` builds beside this crate's), a tiny run (one round,
/// one second per workload, 16 MiB, one workload of each kind) must print one line per
/// workload with a positive Cairn rate and latency and `n/a` for tgt. Proves the script,
/// cairn-bench-iscsi (login with CHAP, prefill, reads checked against their stamps) and
/// `cairn dev`'s iSCSI gateway work together; says nothing about speed.
#[test]
fn iscsi_script_measures_cairn_without_tgt() {
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_cairn-bench-iscsi"));
    let cairn = bench.with_file_name("cairn");
    if !cairn.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs `cargo test --workspace`, which builds {}",
            cairn.display()
        );
        eprintln!(
            "skipping: no {} (build it: cargo build -p cairn)",
            cairn.display()
        );
        return;
    }
    // A free port for cairn dev's admin and data routes, released just before it binds them.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/iscsi.sh");
    let workloads = [
        "4k-randwrite-qd1",
        "4k-randread-qd32",
        "1m-seqwrite-qd8",
        "1m-seqread-qd8",
    ];
    let output = Command::new("bash")
        .arg(script)
        .arg(dir.path())
        .arg("1")
        .arg("1")
        .env("CAIRN_BENCH_ISCSI", bench)
        .env("CAIRN_BENCH_CAIRN", &cairn)
        .env("CAIRN_BENCH_TGT", "0")
        .env("CAIRN_BENCH_RAMP", "0")
        .env("CAIRN_BENCH_SPAN_MIB", "16")
        .env("CAIRN_BENCH_WORKLOADS", workloads.join(" "))
        .env("CAIRN_BENCH_PORT", port.to_string())
        .output()
        .expect("run iscsi.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "iscsi.sh failed:\n{stdout}\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), workloads.len(), "{stdout}\n{stderr}");
    for (line, workload) in lines.iter().zip(workloads) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 6, "{line}");
        assert_eq!(fields[0], workload);
        let keys = ["cairn", "tgt", "ratio", "cairn_p99_us", "tgt_p99_us"];
        for (field, key) in fields[1..].iter().zip(keys) {
            let value = field
                .strip_prefix(&format!("{key}="))
                .unwrap_or_else(|| panic!("{line}"));
            if key.starts_with("cairn") {
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
                assert!(value > 0.0, "{line}");
            } else {
                assert_eq!(value, "n/a", "{line}");
            }
        }
    }
}
