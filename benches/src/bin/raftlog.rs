//! Group commit of the Raft log: how many entries one fdatasync carries.
//!
//! ```text
//! cairn-bench-raftlog DIR [SECONDS] [ENTRY_BYTES]
//! ```
//!
//! For 1, 8, 64 and 256 single-voter groups on one [`FileLogStore`] in DIR, every round proposes
//! one entry to each group and runs `process_ready` once, which appends all of them and syncs
//! once. Prints per group count: `groups=<n> entries_per_s=<n> syncs_per_s=<n>
//! entries_per_sync=<n> mb_per_s=<n>`. With group commit, entries per second grow with the
//! number of groups while syncs per second stay near the device's fsync rate.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use cairn_common::{GroupId, NodeId, ReplicaId};
use cairn_raft::{NodeConfig, Outbox, RaftNode, file_log::FileLogStore};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: cairn-bench-raftlog DIR [SECONDS] [ENTRY_BYTES]");
        return ExitCode::from(2);
    };
    let seconds: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let entry_bytes: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4096);
    for groups in [1u64, 8, 64, 256] {
        let run_dir = dir.join(format!("raftlog-{groups}"));
        let _ = std::fs::remove_dir_all(&run_dir);
        match run(
            &run_dir,
            groups,
            Duration::from_secs_f64(seconds),
            entry_bytes,
        ) {
            Ok(line) => println!("{line}"),
            Err(error) => {
                eprintln!("cairn-bench-raftlog: {error}");
                return ExitCode::FAILURE;
            }
        }
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    ExitCode::SUCCESS
}

fn run(
    dir: &std::path::Path,
    groups: u64,
    duration: Duration,
    entry_bytes: usize,
) -> Result<String, String> {
    let store = FileLogStore::open(dir).map_err(|e| e.to_string())?;
    let mut node = RaftNode::new(NodeConfig::new(NodeId(1)), store).map_err(|e| e.to_string())?;
    for g in 0..groups {
        let replica = ReplicaId::new(NodeId(1), g + 1);
        node.create_group(GroupId(g), replica, &[replica])
            .map_err(|e| e.to_string())?;
    }
    let mut outbox = Outbox::default();
    // Elect every group (single voter: itself, after its election timeout).
    for _ in 0..64 {
        node.tick();
        node.process_ready(&mut outbox, |_, _, _| {})
            .map_err(|e| e.to_string())?;
    }
    let data = vec![0x5a; entry_bytes];
    let syncs_before = node.log_mut().sync_count();
    let mut committed = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        for g in 0..groups {
            node.propose(ReplicaId::new(NodeId(1), g + 1), data.clone())
                .map_err(|e| format!("propose: {e}"))?;
        }
        node.process_ready(&mut outbox, |_, _, apply| {
            if let cairn_raft::Apply::Entry(entry) = apply {
                committed += u64::from(!entry.data.is_empty());
            }
        })
        .map_err(|e| e.to_string())?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let syncs = node.log_mut().sync_count() - syncs_before;
    Ok(format!(
        "groups={groups} entries_per_s={:.0} syncs_per_s={:.0} entries_per_sync={:.1} mb_per_s={:.1}",
        committed as f64 / elapsed,
        syncs as f64 / elapsed,
        committed as f64 / syncs.max(1) as f64,
        committed as f64 * entry_bytes as f64 / elapsed / 1e6
    ))
}
