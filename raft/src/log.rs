//! Durable Raft state: per hosted replica, its group, the hard state, the latest snapshot and
//! the log.
//!
//! The runtime writes everything a round of Readies produced for all its groups, then calls
//! [`LogStore::sync`] once (group commit) before it sends any message that claims persistence
//! or advances a group. A crash may lose what was written since the last completed `sync`, and
//! nothing else.

use std::collections::BTreeMap;

use cairn_common::{GroupId, ReplicaId};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

/// The index and term a group's log starts from when its members create it: a bootstrap
/// snapshot of the empty state at this index holds the first configuration. A member added
/// later starts with an empty log and so must receive a snapshot from the leader (an empty log
/// cannot be matched at this index), which is how it learns the configuration (TiKV does the
/// same).
pub const BOOTSTRAP_INDEX: u64 = 5;
/// See [`BOOTSTRAP_INDEX`].
pub const BOOTSTRAP_TERM: u64 = 5;

/// The bootstrap snapshot of a group whose first voters are `voters`.
pub fn bootstrap_snapshot(voters: &[ReplicaId]) -> Snapshot {
    let voters: Vec<u64> = voters.iter().map(|r| r.0).collect();
    Snapshot {
        data: Vec::new(),
        metadata: Some(SnapshotMetadata {
            conf_state: Some(ConfState::from((voters, vec![]))),
            index: BOOTSTRAP_INDEX,
            term: BOOTSTRAP_TERM,
        }),
    }
}

/// What a log store holds for one hosted replica.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupState {
    /// The group the replica belongs to.
    pub group: GroupId,
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// The latest snapshot: its index, term, configuration and state-machine data. Empty
    /// (index 0) for a member that has not received one yet.
    pub snapshot: Snapshot,
    /// The entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

/// How a snapshot relates to the log it lands on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Taken locally from the applied state: entries after it stay.
    Compact,
    /// Received from a leader: it replaces the whole log.
    Install,
}

/// Durable storage of the Raft state of many replicas (of many groups), keyed by replica id.
pub trait LogStore {
    /// The error a store reports.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Records that this node hosts `replica` of `group` (its state comes by snapshot and
    /// appends).
    fn create_group(&mut self, replica: ReplicaId, group: GroupId) -> Result<(), Self::Error>;

    /// Forgets a replica: this node no longer hosts it.
    fn remove_group(&mut self, replica: ReplicaId) -> Result<(), Self::Error>;

    /// Appends entries to a replica's log, first truncating any entries at or after the first
    /// new index (a new leader overwrote an uncommitted tail).
    fn append(&mut self, replica: ReplicaId, entries: &[Entry]) -> Result<(), Self::Error>;

    /// Replaces a replica's hard state.
    fn set_hard_state(
        &mut self,
        replica: ReplicaId,
        hard_state: &HardState,
    ) -> Result<(), Self::Error>;

    /// Records a snapshot as the replica's base (see [`SnapshotKind`]); entries it covers may
    /// be discarded.
    fn set_snapshot(
        &mut self,
        replica: ReplicaId,
        snapshot: &Snapshot,
        kind: SnapshotKind,
    ) -> Result<(), Self::Error>;

    /// Makes everything written so far durable.
    fn sync(&mut self) -> Result<(), Self::Error>;

    /// Every hosted replica's durable state, to restart from.
    fn load(&self) -> Result<BTreeMap<ReplicaId, GroupState>, Self::Error>;
}

/// Applies one durable write to the state of the groups; shared by the stores' replay so they
/// agree on what a record means. Entries of a group may arrive with a gap (an older segment
/// holding covered entries was discarded); [`finish_replay`] checks that the snapshot covers it.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    groups: BTreeMap<ReplicaId, ReplayGroup>,
}

#[derive(Debug, Default)]
struct ReplayGroup {
    group: GroupId,
    hard_state: HardState,
    snapshot: Snapshot,
    entries: BTreeMap<u64, Entry>,
}

impl Replay {
    pub(crate) fn create(&mut self, replica: ReplicaId, group: GroupId) {
        self.groups.entry(replica).or_default().group = group;
    }

    pub(crate) fn remove(&mut self, replica: ReplicaId) {
        self.groups.remove(&replica);
    }

    pub(crate) fn append(&mut self, replica: ReplicaId, entries: Vec<Entry>) {
        let state = self.groups.entry(replica).or_default();
        if let Some(first) = entries.first() {
            // A new leader overwrote an uncommitted tail.
            state.entries.split_off(&first.index);
        }
        state
            .entries
            .extend(entries.into_iter().map(|e| (e.index, e)));
    }

    pub(crate) fn hard_state(&mut self, replica: ReplicaId, hard_state: HardState) {
        self.groups.entry(replica).or_default().hard_state = hard_state;
    }

    pub(crate) fn snapshot(&mut self, replica: ReplicaId, snapshot: Snapshot, kind: SnapshotKind) {
        let state = self.groups.entry(replica).or_default();
        let index = snapshot.get_metadata().index;
        match kind {
            SnapshotKind::Compact => state.entries = state.entries.split_off(&(index + 1)),
            SnapshotKind::Install => state.entries.clear(),
        }
        state.snapshot = snapshot;
    }

    /// The replicas' states, or a description of the first replica whose log has a hole.
    pub(crate) fn finish(self) -> Result<BTreeMap<ReplicaId, GroupState>, String> {
        let mut out = BTreeMap::new();
        for (replica, mut state) in self.groups {
            let base = state.snapshot.get_metadata().index;
            let entries: Vec<Entry> = state.entries.split_off(&(base + 1)).into_values().collect();
            for (offset, entry) in entries.iter().enumerate() {
                if entry.index != base + 1 + offset as u64 {
                    return Err(format!(
                        "{replica}: log has a hole before index {} (snapshot at {base})",
                        entry.index
                    ));
                }
            }
            let state = GroupState {
                group: state.group,
                hard_state: state.hard_state,
                snapshot: state.snapshot,
                entries,
            };
            out.insert(replica, state);
        }
        Ok(out)
    }
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
    durable: Vec<Pending>,
    pending: Vec<Pending>,
    syncs: u64,
    fail_next_sync: bool,
}

/// A write not yet synced.
#[derive(Clone, Debug)]
enum Pending {
    Create(ReplicaId, GroupId),
    Remove(ReplicaId),
    Append(ReplicaId, Vec<Entry>),
    HardState(ReplicaId, HardState),
    Snapshot(ReplicaId, Snapshot, SnapshotKind),
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

    /// Folds the durable history into its net effect, as a segment cleaner would, so the
    /// history stays small over long simulations.
    fn compact_history(&mut self) {
        let Ok(state) = self.load() else {
            return;
        };
        self.durable.clear();
        for (replica, state) in state {
            self.durable.push(Pending::Create(replica, state.group));
            self.durable.push(Pending::Snapshot(
                replica,
                state.snapshot,
                SnapshotKind::Install,
            ));
            self.durable
                .push(Pending::HardState(replica, state.hard_state));
            self.durable.push(Pending::Append(replica, state.entries));
        }
    }
}

impl LogStore for MemLogStore {
    type Error = PowerLoss;

    fn create_group(&mut self, replica: ReplicaId, group: GroupId) -> Result<(), PowerLoss> {
        self.pending.push(Pending::Create(replica, group));
        Ok(())
    }

    fn remove_group(&mut self, replica: ReplicaId) -> Result<(), PowerLoss> {
        self.pending.push(Pending::Remove(replica));
        Ok(())
    }

    fn append(&mut self, replica: ReplicaId, entries: &[Entry]) -> Result<(), PowerLoss> {
        if let Some(first) = entries.first() {
            assert!(first.index >= 1, "raft indexes start at 1");
            self.pending
                .push(Pending::Append(replica, entries.to_vec()));
        }
        Ok(())
    }

    fn set_hard_state(
        &mut self,
        replica: ReplicaId,
        hard_state: &HardState,
    ) -> Result<(), PowerLoss> {
        self.pending
            .push(Pending::HardState(replica, hard_state.clone()));
        Ok(())
    }

    fn set_snapshot(
        &mut self,
        replica: ReplicaId,
        snapshot: &Snapshot,
        kind: SnapshotKind,
    ) -> Result<(), PowerLoss> {
        self.pending
            .push(Pending::Snapshot(replica, snapshot.clone(), kind));
        Ok(())
    }

    fn sync(&mut self) -> Result<(), PowerLoss> {
        if std::mem::take(&mut self.fail_next_sync) {
            self.crash();
            return Err(PowerLoss);
        }
        self.durable.append(&mut self.pending);
        self.syncs += 1;
        if self.durable.len() > 4096 {
            self.compact_history();
        }
        Ok(())
    }

    fn load(&self) -> Result<BTreeMap<ReplicaId, GroupState>, PowerLoss> {
        let mut replay = Replay::default();
        for write in self.durable.iter().cloned() {
            match write {
                Pending::Create(replica, group) => replay.create(replica, group),
                Pending::Remove(replica) => replay.remove(replica),
                Pending::HardState(replica, state) => replay.hard_state(replica, state),
                Pending::Append(replica, entries) => replay.append(replica, entries),
                Pending::Snapshot(replica, snap, kind) => replay.snapshot(replica, snap, kind),
            }
        }
        Ok(replay
            .finish()
            .expect("invariant: the runtime never leaves a hole in a log"))
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
        let g = ReplicaId::new(cairn_common::NodeId(1), 1);
        store.create_group(g, GroupId(1)).expect("create");
        store
            .append(g, &[entry(1, 1), entry(2, 1)])
            .expect("append");
        store.sync().expect("sync");
        store.append(g, &[entry(3, 1)]).expect("append");
        store.crash();
        let state = &store.load().expect("load")[&g];
        assert_eq!(state.entries.len(), 2);
    }

    #[test]
    fn append_truncates_a_conflicting_tail() {
        let mut store = MemLogStore::new();
        let g = ReplicaId::new(cairn_common::NodeId(1), 1);
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
