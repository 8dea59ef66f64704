//! Short versions of the chaos scenarios, run by `cargo test` (and so by CI). Long runs:
//! `chaos/run.sh <scenario> SECONDS`.

use std::process::Command;

/// Goal: kill -9 of a chunk-store writer never loses a flushed write nor serves bytes nobody
/// wrote. Method: the real scenario binary for a few seconds (several kill rounds).
#[test]
fn chunkstore_kill_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_cairn-chaos"))
        .arg("chunkstore-kill")
        .arg(dir.path())
        .arg("6")
        .output()
        .expect("run cairn-chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    assert!(line.starts_with("chunkstore-kill: acknowledged="), "{line}");
    assert!(line.contains(" lost=0 corrupt=0 "), "{line}\n{stderr}");
    let rounds = stderr.lines().filter(|l| l.starts_with("round ")).count();
    assert!(rounds >= 3, "at least three kills: {stderr}");
}
