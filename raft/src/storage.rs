//! One group's Raft state in memory, as raft-rs reads it: hard state, configuration, the latest
//! snapshot (with its data, so a leader can send it) and the log entries after it.
//!
//! raft-rs's own `MemStorage` keeps no snapshot data (its snapshots are metadata only), so it
//! cannot serve a follower that fell behind a compaction; this one can. It is a cache of what
//! the [`crate::log::LogStore`] holds durably: the runtime writes both, the store first.

use raft::{
    GetEntriesContext, RaftState, Storage, StorageError,
    eraftpb::{ConfState, Entry, HardState, Snapshot},
    util::limit_size,
};

use crate::log::GroupState;

/// See the module docs. Invariant: `entries[0].index == snapshot.metadata.index + 1`.
#[derive(Clone, Debug, Default)]
pub struct GroupStorage {
    hard_state: HardState,
    /// The configuration at the snapshot, then as changed by entries applied since (a restart
    /// starts from the snapshot's and applies the rest again).
    conf_state: ConfState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
    /// Bytes of entry data in `entries`: what the log holds in memory (and a restart replays).
    entry_bytes: u64,
    /// Set when raft asked for a snapshot the latest one cannot serve (it predates the
    /// requesting member's addition): the runtime asks the state machine for a new one.
    wanted: std::cell::Cell<bool>,
}

impl GroupStorage {
    /// The in-memory state of a group restarted from its durable state.
    pub fn from_durable(state: &GroupState) -> GroupStorage {
        let conf_state = state
            .snapshot
            .metadata
            .as_ref()
            .map(|m| m.get_conf_state().clone())
            .unwrap_or_default();
        let storage = GroupStorage {
            hard_state: state.hard_state.clone(),
            conf_state,
            snapshot: state.snapshot.clone(),
            entries: state.entries.clone(),
            entry_bytes: data_bytes(&state.entries),
            wanted: std::cell::Cell::new(false),
        };
        storage.assert_contiguous();
        storage
    }

    fn assert_contiguous(&self) {
        if let Some(first) = self.entries.first() {
            assert_eq!(
                first.index,
                self.snapshot_index() + 1,
                "invariant: the log continues right after the snapshot"
            );
        }
    }

    /// The latest snapshot's index (0 if the group never had one).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    /// The latest snapshot.
    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    /// True (once) if a follower needs a newer snapshot than the latest.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.wanted.replace(false)
    }

    /// The current hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Replaces the hard state.
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// Records a configuration change that was applied.
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// Appends entries, dropping any existing ones at or after the first new index.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let base = self.snapshot_index();
        assert!(
            first.index > base && first.index <= self.last() + 1,
            "append at {} outside ({base}, {}]",
            first.index,
            self.last() + 1
        );
        let keep = usize::try_from(first.index - base - 1).expect("invariant: log fits memory");
        self.entry_bytes -= data_bytes(self.entries.get(keep..).unwrap_or_default());
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        self.entry_bytes += data_bytes(entries);
    }

    /// Bytes of entry data the log holds after its snapshot.
    pub fn entry_bytes(&self) -> u64 {
        self.entry_bytes
    }

    /// Makes `snapshot` the group's base and drops the entries it covers. A snapshot taken
    /// locally (`keep_after`) keeps the entries after it; one received from a leader replaces
    /// the whole log, since this log did not match the leader's at the snapshot's index.
    pub fn set_snapshot(&mut self, snapshot: Snapshot, keep_after: bool) {
        let metadata = snapshot.get_metadata();
        let index = metadata.index;
        if keep_after {
            assert!(index <= self.last(), "compaction past the log's end");
            let drop =
                usize::try_from(index - self.snapshot_index()).expect("invariant: log fits memory");
            let drop = drop.min(self.entries.len());
            self.entry_bytes -= data_bytes(&self.entries[..drop]);
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
            self.entry_bytes = 0;
            self.conf_state = metadata.get_conf_state().clone();
            self.hard_state.term = self.hard_state.term.max(metadata.term);
            self.hard_state.commit = self.hard_state.commit.max(index);
        }
        self.snapshot = snapshot;
        self.assert_contiguous();
    }

    fn first(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }

    /// The term of the entry at `index`, if this log still has it (or it is the snapshot's).
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index() {
            return Some(self.snapshot.get_metadata().term);
        }
        if index < self.first() || index > self.last() {
            return None;
        }
        let offset = usize::try_from(index - self.first()).expect("invariant: log fits memory");
        Some(self.entries[offset].term)
    }

    /// The configuration as of the last applied change.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }
}

impl Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let from = usize::try_from(low - self.first()).expect("invariant: log fits memory");
        let to = usize::try_from(high - self.first()).expect("invariant: log fits memory");
        let mut entries = self.entries[from..to].to_vec();
        limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.snapshot_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_at(index)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // Only compaction (or bootstrap) makes a snapshot. raft-rs asks for one when a
        // follower needs entries that were compacted or has an empty log. The latest serves
        // unless the follower needs a newer index or joined after it was taken (a member
        // refuses a snapshot whose configuration lacks it); then the runtime has the state
        // machine take a new one and raft asks again.
        let conf = self.snapshot.get_metadata().get_conf_state();
        let knows_to = [
            &conf.voters,
            &conf.learners,
            &conf.voters_outgoing,
            &conf.learners_next,
        ]
        .iter()
        .any(|set| set.contains(&to));
        if self.snapshot_index() == 0 || self.snapshot_index() < request_index || !knows_to {
            self.wanted.set(true);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

fn data_bytes(entries: &[Entry]) -> u64 {
    entries.iter().map(|e| e.data.len() as u64).sum()
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::SnapshotMetadata;

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    fn snapshot(index: u64, term: u64) -> Snapshot {
        Snapshot {
            data: vec![7],
            metadata: Some(SnapshotMetadata {
                index,
                term,
                conf_state: Some(ConfState::from((vec![1, 2, 3], vec![]))),
            }),
        }
    }

    #[test]
    fn compaction_keeps_the_tail_and_installation_replaces_the_log() {
        let mut storage = GroupStorage::default();
        storage.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>());
        storage.set_snapshot(snapshot(4, 1), true);
        assert_eq!(storage.first_index().ok(), Some(5));
        assert_eq!(storage.last_index().ok(), Some(10));
        assert_eq!(storage.term(4).ok(), Some(1));
        assert!(storage.term(3).is_err());
        assert!(
            storage
                .entries(4, 6, None, GetEntriesContext::empty(false))
                .is_err()
        );
        let got = storage
            .entries(5, 11, None, GetEntriesContext::empty(false))
            .expect("entries");
        assert_eq!(got.len(), 6);

        storage.set_snapshot(snapshot(20, 3), false);
        assert_eq!(storage.first_index().ok(), Some(21));
        assert_eq!(storage.last_index().ok(), Some(20));
        assert_eq!(storage.hard_state().commit, 20);
        assert_eq!(storage.hard_state().term, 3);
        assert_eq!(storage.snapshot(0, 2).expect("snapshot").data, vec![7]);
        storage.append(&[entry(21, 3)]);
        assert_eq!(storage.last_index().ok(), Some(21));
    }

    #[test]
    fn entry_bytes_follow_appends_truncations_and_compactions() {
        let sized = |index: u64, term: u64, bytes: usize| Entry {
            data: vec![1; bytes],
            ..entry(index, term)
        };
        let mut storage = GroupStorage::default();
        storage.append(&(1..=10).map(|i| sized(i, 1, 100)).collect::<Vec<_>>());
        assert_eq!(storage.entry_bytes(), 1000);
        // A conflicting tail from a new leader replaces entries 8..=10.
        storage.append(&[sized(8, 2, 7)]);
        assert_eq!(storage.entry_bytes(), 707);
        storage.set_snapshot(snapshot(4, 1), true);
        assert_eq!(storage.entry_bytes(), 307);
        storage.set_snapshot(snapshot(20, 3), false);
        assert_eq!(storage.entry_bytes(), 0);
    }
}
