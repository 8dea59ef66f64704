//! Durable Raft state: per group, the hard state, the voter set and the log.
//!
//! The runtime writes everything a round of Readies produced for all its groups, then calls
//! [`LogStore::sync`] once (group commit) before it sends any message that claims persistence
//! or advances a group. A crash may lose what was written since the last completed `sync`, and
//! nothing else.

use std::collections::BTreeMap;

use cairn_common::{GroupId, NodeId};
use raft::eraftpb::{Entry, HardState};

/// What a log store holds for one group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupState {
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// The group's voters when it was created.
    pub voters: Vec<NodeId>,
    /// Every entry from index 1 (no compaction yet).
    pub entries: Vec<Entry>,
}

/// Durable storage of many groups' Raft state.
pub trait LogStore {
    /// The error a store reports.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Records a new group and its voters.
    fn create_group(&mut self, group: GroupId, voters: &[NodeId]) -> Result<(), Self::Error>;

    /// Appends entries to a group's log, first truncating any entries at or after the first
    /// new index (a new leader overwrote an uncommitted tail).
    fn append(&mut self, group: GroupId, entries: &[Entry]) -> Result<(), Self::Error>;

    /// Replaces a group's hard state.
    fn set_hard_state(&mut self, group: GroupId, hard_state: &HardState)
    -> Result<(), Self::Error>;

    /// Makes everything written so far durable.
    fn sync(&mut self) -> Result<(), Self::Error>;

    /// Every group's durable state, to restart from.
    fn load(&self) -> Result<BTreeMap<GroupId, GroupState>, Self::Error>;
}

/// The in-memory store's only failure: a simulated power loss during `sync`.
#[derive(Debug, thiserror::Error)]
#[error("simulated power loss during sync")]
pub struct PowerLoss;

/// An in-memory log store that models a disk with a volatile cache: writes queue as pending
/// operations, [`LogStore::sync`] applies them to the durable state, and
/// [`MemLogStore::crash`] throws away what was not synced. The simulation's disk.
#[derive(Clone, Debug, Default)]
pub struct MemLogStore {
    durable: BTreeMap<GroupId, GroupState>,
    pending: Vec<Pending>,
    syncs: u64,
    fail_next_sync: bool,
}

/// A write not yet synced.
#[derive(Clone, Debug)]
enum Pending {
    Create(GroupId, Vec<NodeId>),
    Append(GroupId, Vec<Entry>),
    HardState(GroupId, HardState),
}

impl MemLogStore {
    /// An empty store.
    pub fn new() -> MemLogStore {
        MemLogStore::default()
    }

    /// Loses everything written since the last sync, as power loss would.
    pub fn crash(&mut self) {
        self.pending.clear();
    }

    /// Makes the next `sync` lose power instead: the unsynced writes are gone and it fails.
    pub fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }

    /// Disarms a pending `fail_next_sync`.
    pub fn clear_faults(&mut self) {
        self.fail_next_sync = false;
    }

    /// Completed syncs (group commits).
    pub fn sync_count(&self) -> u64 {
        self.syncs
    }
}

impl LogStore for MemLogStore {
    type Error = PowerLoss;

    fn create_group(&mut self, group: GroupId, voters: &[NodeId]) -> Result<(), PowerLoss> {
        self.pending.push(Pending::Create(group, voters.to_vec()));
        Ok(())
    }

    fn append(&mut self, group: GroupId, entries: &[Entry]) -> Result<(), PowerLoss> {
        if let Some(first) = entries.first() {
            assert!(first.index >= 1, "raft indexes start at 1");
            self.pending.push(Pending::Append(group, entries.to_vec()));
        }
        Ok(())
    }

    fn set_hard_state(&mut self, group: GroupId, hard_state: &HardState) -> Result<(), PowerLoss> {
        self.pending
            .push(Pending::HardState(group, hard_state.clone()));
        Ok(())
    }

    fn sync(&mut self) -> Result<(), PowerLoss> {
        if std::mem::take(&mut self.fail_next_sync) {
            self.crash();
            return Err(PowerLoss);
        }
        for write in self.pending.drain(..) {
            match write {
                Pending::Create(group, voters) => {
                    self.durable.entry(group).or_default().voters = voters
                }
                Pending::HardState(group, hard_state) => {
                    self.durable.entry(group).or_default().hard_state = hard_state;
                }
                Pending::Append(group, entries) => {
                    let state = self.durable.entry(group).or_default();
                    let first = entries[0].index;
                    let keep = usize::try_from(first - 1).expect("invariant: index fits usize");
                    assert!(keep <= state.entries.len(), "gap before index {first}");
                    // A new leader overwrote an uncommitted tail.
                    state.entries.truncate(keep);
                    state.entries.extend(entries);
                }
            }
        }
        self.syncs += 1;
        Ok(())
    }

    fn load(&self) -> Result<BTreeMap<GroupId, GroupState>, PowerLoss> {
        Ok(self.durable.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    #[test]
    fn crash_loses_only_the_unsynced_tail() {
        let mut store = MemLogStore::new();
        let g = GroupId(1);
        store
            .create_group(g, &[NodeId(1), NodeId(2)])
            .expect("create");
        store
            .append(g, &[entry(1, 1), entry(2, 1)])
            .expect("append");
        store.sync().expect("sync");
        store.append(g, &[entry(3, 1)]).expect("append");
        store.crash();
        let state = &store.load().expect("load")[&g];
        assert_eq!(state.entries.len(), 2);
        assert_eq!(state.voters, vec![NodeId(1), NodeId(2)]);
    }

    #[test]
    fn append_truncates_a_conflicting_tail() {
        let mut store = MemLogStore::new();
        let g = GroupId(1);
        store
            .append(g, &[entry(1, 1), entry(2, 1), entry(3, 1)])
            .expect("append");
        store.append(g, &[entry(2, 2)]).expect("append");
        store.sync().expect("sync");
        let terms: Vec<u64> = store.load().expect("load")[&g]
            .entries
            .iter()
            .map(|e| e.term)
            .collect();
        assert_eq!(terms, vec![1, 2]);
    }
}
