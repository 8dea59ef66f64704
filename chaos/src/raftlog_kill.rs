//! Scenario `raftlog-kill`: the Raft log loses no acknowledged entry to kill -9.
//!
//! A worker process runs a [`RaftNode`] with single-voter groups on a [`FileLogStore`] with
//! small segments (so they rotate), proposes entries with unique data, and journals every entry
//! the moment it is applied (committed, hence synced: that is when a client hears "done"). The
//! harness SIGKILLs the worker at random moments; after each kill it opens the log and checks
//! that every journaled entry is there at its index with its data. The next worker restarts
//! the node from that log, so every round also exercises recovery.

use std::{fs::OpenOptions, io::Write, path::Path};

use cairn_common::{GroupId, NodeId, ReplicaId};
use cairn_raft::{NodeConfig, Outbox, RaftNode, file_log::FileLogStore, log::LogStore};

use crate::chunkstore_kill::Rng;

/// Groups the worker hosts.
pub const GROUP_COUNT: u64 = 4;
/// Small segments, so a run rotates through many of them.
pub const SEGMENT_BYTES: u64 = 256 << 10;

/// What one verification found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Verdict {
    /// Entries journaled as acknowledged so far.
    pub acknowledged: u64,
    /// Acknowledged entries missing or different in the log.
    pub lost: u64,
}

/// The worker's single replica of group `g` (groups number from 0, replicas from 1).
fn replica_of(group: GroupId) -> ReplicaId {
    ReplicaId::new(NodeId(1), group.0 + 1)
}

/// The worker: proposes and journals acknowledged entries until killed.
pub fn worker(dir: &Path, journal_path: &Path, seed: u64) -> Result<(), String> {
    let store =
        FileLogStore::open_with_segment_size(dir, SEGMENT_BYTES).map_err(|e| e.to_string())?;
    // A restarted node applies its log again from its (bootstrap) snapshot; only entries past
    // what the log held at start are new acknowledgements.
    let floor: std::collections::BTreeMap<GroupId, u64> = store
        .load()
        .map_err(|e| e.to_string())?
        .into_values()
        .map(|state| {
            let base = state.snapshot.get_metadata().index;
            (state.group, base + state.entries.len() as u64)
        })
        .collect();
    let mut node = RaftNode::new(NodeConfig::new(NodeId(1)), store).map_err(|e| e.to_string())?;
    let existing: Vec<GroupId> = node.replicas().map(|(_, group)| group).collect();
    for g in 0..GROUP_COUNT {
        if !existing.contains(&GroupId(g)) {
            let replica = replica_of(GroupId(g));
            node.create_group(GroupId(g), replica, &[replica])
                .map_err(|e| e.to_string())?;
        }
    }
    let mut journal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(journal_path)
        .map_err(|e| e.to_string())?;
    let mut rng = Rng::new(seed);
    let mut outbox = Outbox::default();
    let mut counter = 0u64;
    loop {
        node.tick();
        for _ in 0..rng.below(8) {
            let group = GroupId(rng.below(GROUP_COUNT));
            counter += 1;
            let size = 16 + rng.below(3000) as usize;
            let mut data = format!("{seed}:{counter}:").into_bytes();
            data.resize(size, b'x');
            // Refused while the group is still electing itself after a restart; skipped.
            let _ = node.propose(replica_of(group), data);
        }
        let mut acknowledged = String::new();
        node.process_ready(&mut outbox, |_, group, apply| {
            // No compaction here: only the bootstrap snapshot, the empty state, comes.
            let cairn_raft::Apply::Entry(entry) = apply else {
                return;
            };
            let replayed = entry.index <= floor.get(&group).copied().unwrap_or(0);
            if !entry.data.is_empty() && !replayed {
                let digest = cairn_common::checksum::crc32c(&entry.data);
                acknowledged.push_str(&format!(
                    "{} {} {} {digest}\n",
                    group.0,
                    entry.index,
                    entry.data.len()
                ));
            }
        })
        .map_err(|e| e.to_string())?;
        if !acknowledged.is_empty() {
            journal
                .write_all(acknowledged.as_bytes())
                .map_err(|e| e.to_string())?;
            journal.sync_data().map_err(|e| e.to_string())?;
        }
    }
}

/// Checks every journaled entry against the log on disk.
pub fn verify(dir: &Path, journal_path: &Path) -> Result<Verdict, String> {
    let text = std::fs::read_to_string(journal_path).unwrap_or_default();
    let store =
        FileLogStore::open_with_segment_size(dir, SEGMENT_BYTES).map_err(|e| e.to_string())?;
    let state = store.load().map_err(|e| e.to_string())?;
    let mut verdict = Verdict::default();
    // A torn last line was never acted on.
    let complete = text.rsplit_once('\n').map_or("", |(head, _)| head);
    for line in complete.lines() {
        let fields: Vec<u64> = line.split(' ').filter_map(|f| f.parse().ok()).collect();
        let [group, index, length, digest] = fields[..] else {
            return Err(format!("bad journal line {line:?}"));
        };
        verdict.acknowledged += 1;
        let entry = state.get(&replica_of(GroupId(group))).and_then(|g| {
            let base = g.snapshot.get_metadata().index;
            let offset = index.checked_sub(base + 1)?;
            g.entries.get(usize::try_from(offset).ok()?)
        });
        let intact = entry.is_some_and(|e| {
            e.index == index
                && e.data.len() as u64 == length
                && u64::from(cairn_common::checksum::crc32c(&e.data)) == digest
        });
        if !intact {
            eprintln!("lost: group {group} index {index}");
            verdict.lost += 1;
        }
    }
    Ok(verdict)
}

/// The harness: start the worker, kill -9 it at a random moment, verify; repeat for `seconds`.
pub fn run(dir: &Path, seconds: f64, seed: u64) -> Result<Verdict, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let log_dir = dir.join("log");
    let journal_path = dir.join("journal");
    let verdicts = crate::kill::kill_rounds(
        "raftlog-worker",
        &log_dir,
        &journal_path,
        seconds,
        seed,
        100,
        |round| {
            let verdict = verify(&log_dir, &journal_path)?;
            eprintln!(
                "round {round}: acknowledged={} lost={}",
                verdict.acknowledged, verdict.lost
            );
            Ok(verdict)
        },
    )?;
    let acknowledged = verdicts.last().map_or(0, |v| v.acknowledged);
    Ok(Verdict {
        acknowledged,
        lost: verdicts.iter().map(|v| v.lost).sum(),
    })
}
