//! Short versions of the chaos scenarios, run by `cargo test` (and so by CI). Long runs:
//! `chaos/run.sh <scenario> SECONDS`.

use std::{
    process::Command,
    sync::{Mutex, MutexGuard},
};

/// Taken by the tests that run clusters of `cairn` processes: two of them at once on a
/// two-core CI machine starve each other's elections and heartbeats into spurious failures.
static PROCESS_HEAVY: Mutex<()> = Mutex::new(());

/// One process-heavy test at a time; a failed (panicked) one does not block the others.
fn process_heavy() -> MutexGuard<'static, ()> {
    PROCESS_HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a kill -9 scenario for `seconds`; returns its verdict line after checking that it
/// succeeded and killed the worker at least three times.
fn run_kill_scenario(scenario: &str, seconds: &str) -> String {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_cairn-chaos"))
        .arg(scenario)
        .arg(dir.path())
        .arg(seconds)
        .output()
        .expect("run cairn-chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let rounds = stderr.lines().filter(|l| l.starts_with("round ")).count();
    assert!(rounds >= 3, "at least three kills: {stderr}");
    let line = stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        line.starts_with(&format!("{scenario}: acknowledged=")),
        "{line}\n{stderr}"
    );
    line
}

/// Goal: kill -9 of a chunk-store writer never loses a flushed write nor serves bytes nobody
/// wrote. Method: the real scenario binary for a few seconds (several kill rounds).
#[test]
fn chunkstore_kill_loses_nothing_acknowledged() {
    let line = run_kill_scenario("chunkstore-kill", "6");
    assert!(line.contains(" lost=0 corrupt=0 "), "{line}");
}

/// Goal: the multi-raft runtime keeps election safety, state-machine safety, completeness and
/// read linearizability under loss, duplication, reordering, partitions, crashes (some
/// mid-group-commit) and leadership transfers, and recovers when healed. Method: 200 seeds of
/// the deterministic simulation; a failure names the seed to replay with
/// `cairn-chaos raft-sim SEED`.
#[test]
fn raft_simulation_200_seeds() {
    let (mut committed, mut crashes_mid_sync, mut reads, mut transfers) = (0, 0, 0, 0);
    let mut leased_reads = 0;
    for seed in 1..=200 {
        let report = cairn_chaos::raft_sim::run(seed).unwrap_or_else(|e| panic!("{e}"));
        committed += report.committed;
        crashes_mid_sync += report.crashes_mid_sync;
        reads += report.reads;
        leased_reads += report.leased_reads;
        transfers += report.transfers;
    }
    assert!(
        leased_reads > 1_000,
        "reads under leader leases are checked: {leased_reads}"
    );
    assert!(committed > 10_000, "the workload commits: {committed}");
    assert!(
        crashes_mid_sync > 50,
        "crashes strike mid-group-commit: {crashes_mid_sync}"
    );
    assert!(reads > 1_000, "linearizable reads are checked: {reads}");
    assert!(transfers > 20, "leadership transfers happen: {transfers}");
}

/// Goal: a seed replays exactly. Method: run one seed twice and compare everything reported.
#[test]
fn raft_simulation_is_deterministic() {
    let first = cairn_chaos::raft_sim::run(7).expect("seed 7");
    let second = cairn_chaos::raft_sim::run(7).expect("seed 7");
    assert_eq!(format!("{first:?}"), format!("{second:?}"));
}

/// Goal: kill -9 of a Raft node never loses an entry it acknowledged, across segment rotations
/// and restarts. Method: the real scenario binary for a few seconds.
#[test]
fn raftlog_kill_loses_nothing_acknowledged() {
    let line = run_kill_scenario("raftlog-kill", "5");
    assert!(line.ends_with(" lost=0"), "{line}");
}

/// The `cairn` binary of this workspace, built by the same `cargo test` run (its integration
/// tests need it) or here if it is missing.
fn cairn_binary() -> std::path::PathBuf {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_cairn-chaos"));
    let cairn = exe.with_file_name("cairn");
    if !cairn.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "cairn", "--bin", "cairn"])
            .status()
            .expect("cargo build");
        assert!(status.success());
    }
    cairn
}

/// Runs `cairn-chaos SCENARIO DIR ARGS...` in a fresh directory, one process-heavy scenario
/// at a time; it must succeed and its verdict line end with `clean`. Returns the verdict line
/// and the scenario's stderr. On failure the directory (the processes' logs) is kept.
fn scenario(name: &str, args: &[&str], clean: &str) -> (String, String) {
    let _heavy = process_heavy();
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_cairn-chaos"))
        .arg(name)
        .arg(dir.path())
        .args(args)
        .env("CAIRN_BIN", cairn_binary())
        .output()
        .expect("run cairn-chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let line = stdout.lines().last().unwrap_or_default().to_string();
    if !output.status.success() || !line.ends_with(clean) {
        let kept = dir.keep();
        panic!("{stdout}\n{stderr}\n(logs kept in {})", kept.display());
    }
    (line, stderr)
}

fn meta_failover(seconds: &str, members: &str) -> String {
    let (line, stderr) = scenario("meta-failover", &[seconds, members], " lost=0 duplicated=0");
    assert!(
        stderr.contains("wiped_member_restored_by_snapshot=true"),
        "{stderr}"
    );
    line
}

/// Goal: issue 3's failover promise with real processes on loopback: kill -9 of the metadata
/// leader during a stream of volume creations, a new leader serving within 5 s, every
/// acknowledged creation present once on every member, the killed member catching up, and a
/// wiped member rejoining by snapshot. Method: `cairn-chaos meta-failover` with 3 members.
#[test]
fn metadata_group_survives_leader_kills_and_a_wiped_member() {
    let line = meta_failover("6", "3");
    eprintln!("{line}");
}

/// Goal: a 5-member metadata group keeps serving with two members down. Method: the same
/// scenario with 5 members; its second phase kills two followers at once and requires
/// creations to go on.
#[test]
fn five_member_group_survives_two_failures() {
    let line = meta_failover("3", "5");
    eprintln!("{line}");
}

/// Runs a volume-writer kill scenario and returns its verdict line (which must end with
/// `clean`) and its stderr.
fn kill_scenario(name: &str, seconds: &str, seed: &str, clean: &str) -> (String, String) {
    scenario(name, &[seconds, seed], clean)
}

/// Goal: issue 4's durability promise for `cairn dev`: a volume write acknowledged by the
/// data API survives SIGKILL of the whole process at any moment, and nothing read back is
/// corrupt. Method: `cairn-chaos dev-kill` for 6 s (several kills), then every block of the
/// volume checked against its last acknowledged (or still ambiguous) content.
#[test]
fn cairn_dev_keeps_acknowledged_writes_across_kills() {
    eprintln!(
        "{}",
        kill_scenario("dev-kill", "6", "11", " lost=0 corrupt=0").0
    );
}

/// Goal: issue 4's durability promise across storage-node processes: a volume write
/// acknowledged through any node's data API survives SIGKILL of any one storage node, and
/// nothing read back is corrupt. Method: `cairn-chaos nodes-kill` for 6 s (one `cairn meta`,
/// three `cairn node run`, one node killed and restarted at a time).
#[test]
fn storage_nodes_keep_acknowledged_writes_across_kills() {
    eprintln!(
        "{}",
        kill_scenario("nodes-kill", "6", "5", " lost=0 corrupt=0").0
    );
}

/// Goal: issue 5's durability promise: a block write acknowledged to an iSCSI initiator
/// (status GOOD) survives SIGKILL of any storage node or of the gateway it went through, and
/// nothing read back is corrupt. Method: `cairn-chaos iscsi-kill` for 8 s (one `cairn meta`,
/// three `cairn node run`, two `cairn gateway iscsi`; the writer's session moves to the other
/// gateway when a write fails).
#[test]
fn iscsi_writes_survive_node_and_gateway_kills() {
    eprintln!(
        "{}",
        kill_scenario("iscsi-kill", "8", "3", " lost=0 corrupt=0").0
    );
}

/// Goal: the recovery scheduler under fire: with SIGKILL of any metadata member or storage
/// node (one at a time, some storage nodes away past the heartbeat timeout so their PG
/// members move, then back as stale members), no acknowledged write is lost, nothing read
/// back is corrupt, no checksum error goes unrepaired, and the cluster heals to 8 healthy PGs.
/// Method: `cairn-chaos kill-nodes` for 12 s (3 members, 4 nodes); seed 18 first kills a
/// metadata member, then takes node 4 away for 6.5 s, so members move in every run.
#[test]
fn cluster_heals_after_member_and_node_kills() {
    let clean = " lost=0 corrupt=0 unrepaired=0 degraded_pgs=0";
    let (line, stderr) = kill_scenario("kill-nodes", "12", "18", clean);
    assert!(!stderr.contains("long_outages=0 "), "{stderr}");
    eprintln!("{line}");
}

/// Goal: silent corruption is caught and repaired, never served: with single bits flipped in
/// one replica's chunk file at a time under a volume writer, every read that answers serves
/// written contents, every block reads back right through every node, no checksum error
/// goes unrepaired and no corrupt block is left on any disk. Method: `cairn-chaos bitflip`
/// for 8 s (1 member, 3 nodes, a flip every 100-300 ms, a reader through random nodes), the
/// volume read through each node, the chunk stores flushed, then `cairn disk scrub` offline.
#[test]
fn flipped_bits_are_repaired_never_served() {
    let clean = " lost=0 corrupt=0 unrepaired=0 degraded_pgs=0";
    let (line, stderr) = kill_scenario("bitflip", "8", "3", clean);
    assert!(!stderr.contains(" flips=0 "), "{stderr}");
    assert!(!stderr.contains(" repairs=0 "), "{stderr}");
    eprintln!("{line}");
}

/// Goal: network partitions lose nothing and serve nothing stale: with the network cut
/// (silently, both ways) between metadata members and storage nodes while the writer and a
/// reader keep using every node, cut off or not, no acknowledged write is lost, no read
/// returns contents older than a write acknowledged before it began, and the cluster heals
/// to 8 healthy PGs whose members agree. Method: `cairn-chaos partition` for 15 s (3 members,
/// 4 nodes, each in a network namespace); seed 7 first splits n7 and m3 from the rest, then
/// cuts n7 off for 9 s (its PG members move; the metadata leader must see it silent), then
/// cuts two members off from each other.
#[test]
fn partitions_lose_nothing_and_serve_nothing_stale() {
    let clean = " lost=0 corrupt=0 unrepaired=0 degraded_pgs=0";
    let (line, stderr) = kill_scenario("partition", "15", "7", clean);
    assert!(!stderr.contains(" long_isolations=0 "), "{stderr}");
    assert!(!stderr.contains(" reads_checked=0 "), "{stderr}");
    eprintln!("{line}");
}

/// Goal: a failing disk loses nothing and takes only itself out: with disks failing with EIO
/// one at a time under the writer and a reader (every write, read or fdatasync of the disk
/// failing from then on), each node takes the failed disk out of service and reports it,
/// its PG members move at once, the node's other disk serves on, and after the disk comes
/// back or is replaced by a blank one the cluster heals to 8 healthy PGs whose members agree,
/// with no acknowledged write lost and nothing wrong served. Method: `cairn-chaos
/// disk-faults` for 20 s (3 members, 4 nodes of 2 disks behind fault-injecting engines);
/// the first failed disk is replaced by a blank one, the next comes back as it was.
#[test]
fn failing_disks_lose_nothing_and_take_only_themselves_out() {
    let clean = " lost=0 corrupt=0 unrepaired=0 degraded_pgs=0";
    let (line, stderr) = kill_scenario("disk-faults", "20", "1", clean);
    assert!(!stderr.contains(" faults=0 "), "{stderr}");
    assert!(!stderr.contains(" replaced=0 "), "{stderr}");
    assert!(!stderr.contains(" reads_checked=0 "), "{stderr}");
    eprintln!("{line}");
}
