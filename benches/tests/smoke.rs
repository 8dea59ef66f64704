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
