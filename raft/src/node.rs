//! A node of the multi-raft runtime: many Raft groups in one process, driven sans-IO.
//!
//! The node hosts *replicas*: each is one member of one group, known to raft-rs by its
//! [`ReplicaId`] (which names the hosting node, so messages route without a directory). A node
//! may host several replicas of one group (`cairn dev`, whose failure domains are disks);
//! messages between them go through the caller like any other, in the batch for this node's
//! own id.
//!
//! The caller owns time, the network and the loop. It calls [`RaftNode::tick`] on every tick,
//! [`RaftNode::step`] with every batch a peer sent, [`RaftNode::propose`] for new commands, and
//! [`RaftNode::process_ready`] after any of them. `process_ready` handles the Readies of all
//! groups as one round:
//!
//! 1. leaders first: collect each one's messages that may go before persistence (appends,
//!    heartbeats) and its committed entries, which are applied; appends and heartbeats to
//!    replicas hosted here are stepped into them at once;
//! 2. then every other group, which so takes those entries in this same round;
//! 3. write every group's new entries and hard state to the [`LogStore`] and sync it once for
//!    all groups (group commit), unless nothing needs it (only commit indexes moved);
//! 4. only then release the messages that claim persistence (votes, append responses) and
//!    advance each group.
//!
//! With all three replicas of a group on one node (`cairn dev`), a write so costs one sync,
//! not one for the leader and another for its followers a round later.
//!
//! Messages leave batched per peer node ([`Outbox`]), whatever group they belong to.
//!
//! # Snapshots and compaction
//!
//! The state machine belongs to the caller. It hands the runtime a snapshot of its state at
//! the applied index with [`RaftNode::compact`]; the runtime stores it durably, drops the log
//! entries it covers and sends it to followers that fell behind. A follower receiving one
//! replaces its log and gets [`Apply::Snapshot`] to restore its state machine from. On restart
//! a group first delivers `Apply::Snapshot` of its latest snapshot, then replays the committed
//! entries after it: a caller with a durable state machine skips what it has applied already.
//!
//! A group starts from a bootstrap snapshot of the empty state at
//! [`crate::log::BOOTSTRAP_INDEX`] holding the first voters. A member added later joins with
//! an empty log ([`RaftNode::join_group`]) and so catches up by snapshot.
//!
//! # Membership
//!
//! [`RaftNode::change_members`] proposes a configuration change: one change is applied
//! directly, several at once go through joint consensus and leave it automatically. Learners
//! receive the log without voting. A member whose latest applied configuration excludes it
//! drops the group once it has applied everything it knows committed. A removed member that
//! never learns its removal committed keeps the group until told ([`RaftNode::remove_group`]):
//! the metadata service garbage-collects such replicas.
//!
//! An error from `process_ready` means the store failed mid-round: the node must be dropped and
//! restarted from its store, as after a crash.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use cairn_common::{GroupId, NodeId, ReplicaId};
use prost::Message as _;
use raft::{
    Config, RawNode, SnapshotStatus, StateRole,
    eraftpb::{
        ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2,
        ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot, SnapshotMetadata,
    },
};

use crate::{
    log::{
        BOOTSTRAP_INDEX, BOOTSTRAP_TERM, GroupState, LogStore, SnapshotKind, bootstrap_snapshot,
    },
    storage::GroupStorage,
};

/// Per-node settings.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// Ticks between heartbeats.
    pub heartbeat_tick: usize,
    /// Election timeout range `[min, max)`, in ticks; raft-rs draws from it per election. A
    /// range of width one makes runs reproducible (raft-rs draws from an unseeded generator).
    pub election_tick_range: (usize, usize),
    /// Largest append message, in bytes.
    pub max_size_per_msg: u64,
    /// Appends in flight per follower.
    pub max_inflight_msgs: usize,
    /// Leader leases for reads ([`RaftNode::read`]): how long after the start of a ReadIndex
    /// round that confirmed its leadership a leader serves reads without another round.
    /// `None` (the default): every read is a ReadIndex round. It must stay below the minimum
    /// election timeout in real time (ticks times the caller's tick period): a follower that
    /// heard the confirming heartbeat votes for no one else for that long, and with a lease
    /// a replica also ignores vote requests for its first minimum election timeout after it
    /// starts (a restarted follower forgot the leader it heard).
    pub read_lease: Option<Duration>,
}

impl NodeConfig {
    /// Defaults for `id`: heartbeats every 2 ticks, elections after 10-20 quiet ticks.
    pub fn new(id: NodeId) -> NodeConfig {
        NodeConfig {
            id,
            heartbeat_tick: 2,
            election_tick_range: (10, 20),
            // 1 MiB keeps one append within a frame the transport can batch.
            max_size_per_msg: 1 << 20,
            // 256 appends in flight bounds memory per follower.
            max_inflight_msgs: 256,
            read_lease: None,
        }
    }

    fn raft_config(&self, replica: ReplicaId, applied: u64) -> Config {
        let (min, max) = self.election_tick_range;
        Config {
            id: replica.0,
            applied,
            election_tick: min,
            heartbeat_tick: self.heartbeat_tick,
            min_election_tick: min,
            max_election_tick: max,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            // Pre-vote keeps a node returning from a partition from disrupting a healthy
            // leader; check-quorum makes a partitioned leader step down.
            pre_vote: true,
            check_quorum: true,
            ..Config::default()
        }
    }
}

/// Messages to send, batched per destination node (this node's own id included, for replicas
/// of one group hosted side by side).
#[derive(Debug, Default)]
pub struct Outbox {
    /// Per node, the messages of all groups, in order.
    pub batches: BTreeMap<NodeId, Vec<(GroupId, Message)>>,
    /// Snapshots handed out in this round, reported as sent (see `process_ready`): the
    /// sending replica and the receiving one.
    snapshots_sent: Vec<(ReplicaId, u64)>,
}

impl Outbox {
    fn push(&mut self, group: GroupId, messages: Vec<Message>) {
        for message in messages {
            if message.msg_type == MessageType::MsgSnapshot as i32 {
                self.snapshots_sent
                    .push((ReplicaId(message.from), message.to));
            }
            self.batches
                .entry(ReplicaId(message.to).node())
                .or_default()
                .push((group, message));
        }
    }

    /// True if there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// Why a proposal was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node does not host the replica.
    #[error("replica not hosted here")]
    UnknownReplica,
    /// Not the leader; retry at the hinted leader if known.
    #[error("not the leader (leader hint {leader:?})")]
    NotLeader {
        /// The leader this replica knows of.
        leader: Option<ReplicaId>,
    },
    /// The leader refused it (e.g. while transferring leadership); retry.
    #[error("proposal dropped")]
    Dropped,
}

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum NodeError<E: std::error::Error + 'static> {
    /// The log store failed; the node must be restarted from its store.
    #[error("log store: {0}")]
    Log(#[source] E),
    /// raft-rs refused a configuration or state.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The replica is hosted here already.
    #[error("replica {0} exists already")]
    ReplicaExists(ReplicaId),
    /// This node does not host the replica.
    #[error("replica {0} not hosted here")]
    UnknownReplica(ReplicaId),
}

/// What the state machine is given, in log order.
#[derive(Clone, Copy, Debug)]
pub enum Apply<'a> {
    /// A committed entry. Configuration changes and the empty entries new leaders append come
    /// too (the runtime has applied the configuration already); state machines skip them.
    Entry(&'a Entry),
    /// Replace the whole state with this snapshot's, taken at `index`. Empty data is the empty
    /// state (the bootstrap snapshot).
    Snapshot {
        /// The last index the snapshot covers.
        index: u64,
        /// The state machine's data, as given to [`RaftNode::compact`].
        data: &'a [u8],
        /// True if a leader sent it (this replica's state is behind it); false at a restart,
        /// where it is this replica's own latest snapshot (a state machine that is durable on
        /// its own may hold that state already).
        installed: bool,
    },
}

/// A membership change of one replica in one group. A replica id is never re-added once
/// removed: a member that lost its state comes back as a new replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Adds a voter, or promotes a learner.
    AddVoter(ReplicaId),
    /// Adds a learner (receives the log, does not vote), or demotes a voter.
    AddLearner(ReplicaId),
    /// Removes a voter or learner.
    Remove(ReplicaId),
}

struct Group {
    group: GroupId,
    raw: RawNode<GroupStorage>,
    applied: u64,
    /// Reads confirmed by the leader at a read index, waiting for this node to apply it.
    reads_waiting: Vec<(u64, u64)>,
    /// Set at restart: the state machine has not been given the latest snapshot yet.
    restore_pending: bool,
    /// The latest configuration this node applied excludes it: the group goes once everything
    /// known committed is applied (a later entry could still add it back).
    removed: bool,
    /// The node's `read_lease`.
    read_lease: Option<Duration>,
    /// Ticks since this replica started here (saturating): with leases, vote requests are
    /// ignored until it reaches the minimum election timeout.
    ticks_alive: u64,
    /// ReadIndex rounds this replica started as leader, with their term and start: the one
    /// confirmed extends the lease. Bounded by [`LEASE_PROBES_MAX`].
    lease_probes: Vec<(u64, u64, Instant)>,
    /// Reads are served without a round until this instant, in this term.
    lease: Option<(u64, Instant)>,
    /// A term in which a leadership transfer started here: no lease in it (the transferee's
    /// campaign is forced past the followers' memory of this leader).
    transfer_term: Option<u64>,
}

/// ReadIndex rounds a leader remembers for its lease; older ones are forgotten (their reads
/// are still served, they only do not extend the lease).
const LEASE_PROBES_MAX: usize = 64;

/// How a read was started ([`RaftNode::read`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    /// Under the leader's lease, at its commit index: no round.
    Leased,
    /// A ReadIndex round (forwarded to the leader from a follower).
    ReadIndex,
}

impl Group {
    /// Ok if this node leads the group, else `NotLeader` with the leader it knows of.
    fn ensure_leader(&self) -> Result<(), ProposeError> {
        if self.raw.raft.state == StateRole::Leader {
            return Ok(());
        }
        let leader = self.raw.raft.leader_id;
        Err(ProposeError::NotLeader {
            leader: (leader != 0).then_some(ReplicaId(leader)),
        })
    }
}

/// A linearizable read that can now be served: the state machine has applied `index`, which
/// the leader confirmed as its commit index after the read arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadReady {
    /// The replica the read was started at.
    pub replica: ReplicaId,
    /// The group read.
    pub group: GroupId,
    /// The caller's id for the read.
    pub request: u64,
    /// Serve the read from the state at (at least) this index.
    pub index: u64,
}

/// A snapshot of one replica's state, for status and checkers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group.
    pub group: GroupId,
    /// Leader, follower, candidate or pre-candidate.
    pub role: StateRole,
    /// Current term.
    pub term: u64,
    /// The leader this replica knows of.
    pub leader: Option<ReplicaId>,
    /// Highest index in the replica's log (committed or not).
    pub last_index: u64,
    /// The index its latest snapshot covers (the log starts after it).
    pub snapshot_index: u64,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index applied.
    pub applied: u64,
    /// Bytes of entry data its log holds after the snapshot.
    pub log_bytes: u64,
}

/// Many Raft replicas on one node, over one log store.
pub struct RaftNode<L: LogStore> {
    config: NodeConfig,
    log: L,
    groups: BTreeMap<ReplicaId, Group>,
    logger: slog::Logger,
}

impl<L: LogStore> RaftNode<L> {
    /// Starts a node on `log`, restarting every group the store holds. Groups replay their
    /// committed entries from index 1 (the state machine is rebuilt by applying them again).
    pub fn new(config: NodeConfig, log: L) -> Result<RaftNode<L>, NodeError<L::Error>> {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RaftNode {
            config,
            log,
            groups: BTreeMap::new(),
            logger,
        };
        for (replica, state) in node.log.load().map_err(NodeError::Log)? {
            node.start_group(replica, &state)?;
        }
        Ok(node)
    }

    fn start_group(
        &mut self,
        replica: ReplicaId,
        state: &GroupState,
    ) -> Result<(), NodeError<L::Error>> {
        assert_eq!(
            replica.node(),
            self.config.id,
            "a node hosts only its own replicas"
        );
        let mut storage = GroupStorage::from_durable(state);
        let snapshot_index = storage.snapshot_index();
        // A snapshot is committed by definition, whatever commit index was last written.
        if storage.hard_state().commit < snapshot_index {
            let mut hard_state = storage.hard_state().clone();
            hard_state.commit = snapshot_index;
            storage.set_hard_state(hard_state);
        }
        let config = self.config.raft_config(replica, snapshot_index);
        let raw = RawNode::new(&config, storage, &self.logger)?;
        self.groups.insert(
            replica,
            Group {
                group: state.group,
                raw,
                applied: snapshot_index,
                reads_waiting: Vec::new(),
                restore_pending: snapshot_index > 0,
                removed: false,
                read_lease: self.config.read_lease,
                ticks_alive: 0,
                lease_probes: Vec::new(),
                lease: None,
                transfer_term: None,
            },
        );
        Ok(())
    }

    /// Hosts `replica`, one of the first `voters` of `group`, from the bootstrap snapshot,
    /// and makes the record durable before returning: a member that forgot a group after a
    /// crash would never rejoin it (the simulation found exactly that).
    pub fn create_group(
        &mut self,
        group: GroupId,
        replica: ReplicaId,
        voters: &[ReplicaId],
    ) -> Result<(), NodeError<L::Error>> {
        if self.groups.contains_key(&replica) {
            return Err(NodeError::ReplicaExists(replica));
        }
        assert!(
            voters.contains(&replica),
            "a replica is created only as one of the group's voters"
        );
        let snapshot = bootstrap_snapshot(voters);
        let hard_state = HardState {
            term: BOOTSTRAP_TERM,
            vote: 0,
            commit: BOOTSTRAP_INDEX,
        };
        self.log
            .create_group(replica, group)
            .map_err(NodeError::Log)?;
        self.log
            .set_snapshot(replica, &snapshot, SnapshotKind::Install)
            .map_err(NodeError::Log)?;
        self.log
            .set_hard_state(replica, &hard_state)
            .map_err(NodeError::Log)?;
        self.log.sync().map_err(NodeError::Log)?;
        let state = GroupState {
            group,
            hard_state,
            snapshot,
            entries: Vec::new(),
        };
        self.start_group(replica, &state)
    }

    /// Hosts `replica`, being added to `group`, with an empty log: the leader sends it a
    /// snapshot, and with it the configuration. Durable before returning, like `create_group`.
    pub fn join_group(
        &mut self,
        group: GroupId,
        replica: ReplicaId,
    ) -> Result<(), NodeError<L::Error>> {
        if self.groups.contains_key(&replica) {
            return Err(NodeError::ReplicaExists(replica));
        }
        self.log
            .create_group(replica, group)
            .map_err(NodeError::Log)?;
        self.log.sync().map_err(NodeError::Log)?;
        let state = GroupState {
            group,
            ..GroupState::default()
        };
        self.start_group(replica, &state)
    }

    /// Stops running a replica without touching its log: it sends, answers and applies
    /// nothing more in this process, and its peers see it as silent. A restart runs it again
    /// from its log. For a replica whose disk failed: forgetting its log instead would let the
    /// node host the same replica again with an empty log, one that could vote as if it had
    /// never acknowledged entries it did.
    pub fn unload_group(&mut self, replica: ReplicaId) -> Result<(), NodeError<L::Error>> {
        self.groups
            .remove(&replica)
            .map(drop)
            .ok_or(NodeError::UnknownReplica(replica))
    }

    /// Forgets the log of a replica [`RaftNode::unload_group`] stopped (durable at the next
    /// sync). For one that will never run again: its PG replaced it.
    pub fn remove_unloaded(&mut self, replica: ReplicaId) -> Result<(), NodeError<L::Error>> {
        if self.groups.contains_key(&replica) {
            return Err(NodeError::ReplicaExists(replica));
        }
        self.log.remove_group(replica).map_err(NodeError::Log)
    }

    /// Stops hosting a replica and forgets its log (durable at the next sync; a restart before
    /// that finds the replica again, re-applies the configuration without it, and drops it
    /// again).
    pub fn remove_group(&mut self, replica: ReplicaId) -> Result<(), NodeError<L::Error>> {
        self.groups
            .remove(&replica)
            .ok_or(NodeError::UnknownReplica(replica))?;
        self.log.remove_group(replica).map_err(NodeError::Log)
    }

    /// Records a snapshot of the state machine as it is now (at the group's applied index) and
    /// drops the log entries it covers. The caller's state must be durable at that index
    /// before the next sync, or a crash could lose entries that exist nowhere else on this
    /// node. Compacting at or below the current snapshot does nothing.
    pub fn compact(
        &mut self,
        replica: ReplicaId,
        data: Vec<u8>,
    ) -> Result<(), NodeError<L::Error>> {
        let applied = self
            .groups
            .get(&replica)
            .ok_or(NodeError::UnknownReplica(replica))?
            .applied;
        self.compact_at(replica, applied, data)
    }

    /// [`RaftNode::compact`] at `index`, at most the applied index: for a state machine whose
    /// durable state is at `index` (a PG replica whose chunk stores were flushed there), or
    /// that keeps entries a lagging sibling still needs.
    pub fn compact_at(
        &mut self,
        replica: ReplicaId,
        index: u64,
        data: Vec<u8>,
    ) -> Result<(), NodeError<L::Error>> {
        let state = self
            .groups
            .get_mut(&replica)
            .ok_or(NodeError::UnknownReplica(replica))?;
        assert!(index <= state.applied, "compaction past the applied index");
        let storage = state.raw.store();
        if index <= storage.snapshot_index() {
            return Ok(());
        }
        let term = storage
            .term_at(index)
            .expect("invariant: applied entries are in the log");
        let snapshot = Snapshot {
            data,
            metadata: Some(SnapshotMetadata {
                conf_state: Some(storage.conf_state().clone()),
                index,
                term,
            }),
        };
        self.log
            .set_snapshot(replica, &snapshot, SnapshotKind::Compact)
            .map_err(NodeError::Log)?;
        state.raw.mut_store().set_snapshot(snapshot, true);
        Ok(())
    }

    /// Proposes a membership change to a group this node leads. Several changes at once go
    /// through joint consensus, left automatically once it is committed. Only one change may
    /// be in progress: raft refuses (drops) another until the first is applied.
    pub fn change_members(
        &mut self,
        replica: ReplicaId,
        changes: &[MemberChange],
    ) -> Result<(), ProposeError> {
        self.change_members_with(replica, changes, Vec::new())
    }

    /// [`RaftNode::change_members`] carrying `context`, which every member sees with the
    /// applied entry ([`conf_change_context`]): a PG leader records there the map epoch it
    /// acted on, so a later leader holding an older map does not undo the change.
    pub fn change_members_with(
        &mut self,
        replica: ReplicaId,
        changes: &[MemberChange],
        context: Vec<u8>,
    ) -> Result<(), ProposeError> {
        let group = self.group_mut(replica)?;
        group.ensure_leader()?;
        let changes = changes
            .iter()
            .map(|change| {
                let (change_type, member) = match *change {
                    MemberChange::AddVoter(member) => (ConfChangeType::AddNode, member),
                    MemberChange::AddLearner(member) => (ConfChangeType::AddLearnerNode, member),
                    MemberChange::Remove(member) => (ConfChangeType::RemoveNode, member),
                };
                ConfChangeSingle {
                    change_type: change_type as i32,
                    node_id: member.0,
                }
            })
            .collect();
        let change = ConfChangeV2 {
            transition: ConfChangeTransition::Auto as i32,
            changes,
            context,
        };
        group
            .raw
            .propose_conf_change(Vec::new(), change)
            .map_err(|_| ProposeError::Dropped)
    }

    /// Leader replicas that need a newer snapshot for a follower: the caller answers each
    /// with [`RaftNode::compact`] (raft retries the follower on its own).
    pub fn snapshots_wanted(&self) -> Vec<ReplicaId> {
        self.groups
            .iter()
            .filter(|(_, g)| g.raw.store().take_snapshot_wanted())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The group's configuration as this replica has applied it.
    pub fn membership(&self, replica: ReplicaId) -> Option<ConfState> {
        let group = self.groups.get(&replica)?;
        Some(group.raw.raft.prs().conf().to_conf_state())
    }

    /// Advances every group's clock by one tick.
    pub fn tick(&mut self) {
        for group in self.groups.values_mut() {
            tick_one(group);
        }
    }

    /// Advances by one tick the clocks of the replicas in `slice` of `slices` (by replica
    /// id). Calling it for every slice in turn is one [`RaftNode::tick`] spread over time:
    /// the heartbeats of many groups then go out, and their answers come back, in small
    /// batches instead of in one round that holds up every write behind it.
    pub fn tick_slice(&mut self, slice: u64, slices: u64) {
        assert!(slice < slices, "slice {slice} of {slices}");
        for (id, group) in &mut self.groups {
            if id.0 % slices == slice {
                tick_one(group);
            }
        }
    }

    /// Feeds a batch a peer sent. Messages for replicas not hosted here, or naming another
    /// group than the replica's, are dropped (the sender retries; membership comes from the
    /// metadata service), as are messages raft refuses.
    pub fn step(&mut self, batch: Vec<(GroupId, Message)>) {
        for (group_id, message) in batch {
            let hosted = self.groups.get_mut(&ReplicaId(message.to));
            if let Some(group) = hosted.filter(|g| g.group == group_id) {
                step_one(group, message);
            }
        }
    }

    /// The hosted replica `replica`.
    fn group_mut(&mut self, replica: ReplicaId) -> Result<&mut Group, ProposeError> {
        self.groups
            .get_mut(&replica)
            .ok_or(ProposeError::UnknownReplica)
    }

    /// Proposes a command through `replica`, which must be its group's leader.
    pub fn propose(&mut self, replica: ReplicaId, data: Vec<u8>) -> Result<(), ProposeError> {
        let group = self.group_mut(replica)?;
        group.ensure_leader()?;
        group
            .raw
            .propose(Vec::new(), data)
            .map_err(|_| ProposeError::Dropped)
    }

    /// Starts a linearizable read (ReadIndex): the leader confirms its leadership with a
    /// heartbeat round and answers with its commit index; followers forward to the leader. The
    /// read shows up in [`RaftNode::take_reads`] once this node has applied that index.
    /// `Dropped` (retry) where raft-rs would drop the read silently: a follower that knows no
    /// leader, a leader without a commit in its term yet. A read can still be lost on the way
    /// (a forwarded read whose leader just changed): callers time out and retry.
    pub fn read_index(&mut self, replica: ReplicaId, request: u64) -> Result<(), ProposeError> {
        let group = self.group_mut(replica)?;
        let raft = &group.raw.raft;
        let servable = match raft.state {
            StateRole::Leader => {
                raft.raft_log.term(raft.raft_log.committed).ok() == Some(raft.term)
            }
            _ => raft.leader_id != raft::INVALID_ID,
        };
        if !servable {
            return Err(ProposeError::Dropped);
        }
        group.raw.read_index(request.to_le_bytes().to_vec());
        Ok(())
    }

    /// Starts a linearizable read at `now`: under the leader's lease, if `replica` leads with
    /// one (see [`NodeConfig::read_lease`]), at its commit index with no round; otherwise a
    /// ReadIndex round ([`RaftNode::read_index`]) whose confirmation starts or extends the
    /// lease. Either way the read shows up in [`RaftNode::take_reads`] once applied. A lease
    /// past half its life is renewed by a ReadIndex round under the same request id beside
    /// the leased read (the caller serves a request id once).
    pub fn read(
        &mut self,
        replica: ReplicaId,
        request: u64,
        now: Instant,
    ) -> Result<ReadPath, ProposeError> {
        let group = self.group_mut(replica)?;
        let Some(lease_span) = group.read_lease else {
            self.read_index(replica, request)?;
            return Ok(ReadPath::ReadIndex);
        };
        let raft = &group.raw.raft;
        let leads = raft.state == StateRole::Leader;
        let lease_left = group
            .lease
            .filter(|(term, _)| *term == raft.term)
            .and_then(|(_, until)| until.checked_duration_since(now))
            .filter(|left| !left.is_zero());
        let leased = leads
            && lease_left.is_some()
            && raft.lead_transferee.is_none()
            && group.transfer_term != Some(raft.term)
            && raft.raft_log.term(raft.raft_log.committed).ok() == Some(raft.term);
        if leased {
            let commit = raft.raft_log.committed;
            group.reads_waiting.push((request, commit));
            if lease_left.is_some_and(|left| left < lease_span / 2) {
                // Best effort: a renewal refused now leaves the lease to run out.
                let _ = self.read_index_probing(replica, request, now);
            }
            return Ok(ReadPath::Leased);
        }
        self.read_index_probing(replica, request, now)?;
        Ok(ReadPath::ReadIndex)
    }

    /// A ReadIndex round that, started by a leader, extends its lease once confirmed.
    fn read_index_probing(
        &mut self,
        replica: ReplicaId,
        request: u64,
        now: Instant,
    ) -> Result<(), ProposeError> {
        self.read_index(replica, request)?;
        let group = self.group_mut(replica)?;
        if group.raw.raft.state == StateRole::Leader {
            if group.lease_probes.len() >= LEASE_PROBES_MAX {
                group.lease_probes.remove(0);
            }
            let term = group.raw.raft.term;
            group.lease_probes.push((request, term, now));
        }
        Ok(())
    }

    /// Asks `replica`, its group's leader, to hand leadership to `to`.
    pub fn transfer_leader(
        &mut self,
        replica: ReplicaId,
        to: ReplicaId,
    ) -> Result<(), ProposeError> {
        let group = self.group_mut(replica)?;
        group.ensure_leader()?;
        // The transferee's campaign is forced past the followers' memory of this leader: no
        // lease for the rest of this term.
        group.transfer_term = Some(group.raw.raft.term);
        group.lease = None;
        group.raw.transfer_leader(to.0);
        Ok(())
    }

    /// Reads that can be served now (see [`RaftNode::read_index`]).
    pub fn take_reads(&mut self) -> Vec<ReadReady> {
        let mut ready = Vec::new();
        for (&id, group) in &mut self.groups {
            let applied = group.applied;
            let group_id = group.group;
            group.reads_waiting.retain(|&(request, index)| {
                let servable = index <= applied;
                if servable {
                    ready.push(ReadReady {
                        replica: id,
                        group: group_id,
                        request,
                        index,
                    });
                }
                !servable
            });
        }
        ready
    }

    /// Handles every replica's Ready in one round with one sync (see the module docs),
    /// applying committed entries through `apply` (called with the replica and its group) and
    /// adding outgoing messages to `outbox`. Messages added before an error may be sent: they
    /// never claim persistence.
    pub fn process_ready(
        &mut self,
        outbox: &mut Outbox,
        mut apply: impl FnMut(ReplicaId, GroupId, Apply<'_>),
    ) -> Result<(), NodeError<L::Error>> {
        // Leaders first: their appends and heartbeats to replicas hosted here are stepped in
        // directly, so those followers persist the same entries in this round's one sync
        // (a leader may send before it persists, raft thesis 10.2.1) instead of a round later.
        let mut round = Vec::new();
        let mut durable = false;
        let mut local = Vec::new();
        let mut leaders = BTreeSet::new();
        for (&id, group) in &mut self.groups {
            if group.raw.raft.state != StateRole::Leader {
                continue;
            }
            let Some(mut ready) = take_ready(&mut self.log, id, group, &mut apply)? else {
                continue;
            };
            durable |= ready.must_sync();
            for message in ready.take_messages() {
                let direct = message.msg_type == MessageType::MsgAppend as i32
                    || message.msg_type == MessageType::MsgHeartbeat as i32;
                if direct && ReplicaId(message.to).node() == self.config.id {
                    local.push((group.group, message));
                } else {
                    outbox.push(group.group, vec![message]);
                }
            }
            leaders.insert(id);
            round.push((id, ready));
        }
        for (group_id, message) in local {
            let to = ReplicaId(message.to);
            let in_round = leaders.contains(&to);
            match self.groups.get_mut(&to) {
                // A replica whose Ready is taken already (another leader of an older term)
                // gets it next round, like any message.
                Some(group) if !in_round && group.group == group_id => step_one(group, message),
                _ => outbox.push(group_id, vec![message]),
            }
        }
        for (&id, group) in &mut self.groups {
            if leaders.contains(&id) {
                continue;
            }
            let Some(mut ready) = take_ready(&mut self.log, id, group, &mut apply)? else {
                continue;
            };
            durable |= ready.must_sync();
            outbox.push(group.group, ready.take_messages());
            round.push((id, ready));
        }
        self.report_snapshots(outbox);
        if round.is_empty() {
            return self.drop_removed_groups();
        }
        // Nothing to make durable (a round that only moved commit indexes, which are
        // recovered from the leader): no fdatasync. What was written rides with the next sync.
        if durable {
            self.log.sync().map_err(NodeError::Log)?;
        }
        for (id, mut ready) in round {
            let group = self
                .groups
                .get_mut(&id)
                .expect("invariant: group in this round");
            outbox.push(group.group, ready.take_persisted_messages());
            let mut light = group.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                let mut hard_state = group.raw.store().hard_state().clone();
                hard_state.commit = commit;
                group.raw.mut_store().set_hard_state(hard_state.clone());
                // Not synced now: the commit index is recovered from the leader if lost.
                self.log
                    .set_hard_state(id, &hard_state)
                    .map_err(NodeError::Log)?;
            }
            outbox.push(group.group, light.take_messages());
            apply_all(id, group, light.take_committed_entries(), &mut apply);
            group.raw.advance_apply_to(group.applied);
            leave_joint_if_stuck(group);
        }
        self.report_snapshots(outbox);
        self.drop_removed_groups()
    }

    /// Reports every snapshot handed to the transport as delivered. raft-rs keeps a follower
    /// paused until told; if the snapshot was in fact lost, the follower refuses the next
    /// append and the leader sends a snapshot again, so optimism costs one round trip.
    fn report_snapshots(&mut self, outbox: &mut Outbox) {
        for (from, to) in outbox.snapshots_sent.drain(..) {
            if let Some(group) = self.groups.get_mut(&from) {
                group.raw.report_snapshot(to, SnapshotStatus::Finish);
            }
        }
    }

    fn drop_removed_groups(&mut self) -> Result<(), NodeError<L::Error>> {
        let removed: Vec<ReplicaId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.removed && g.applied >= g.raw.raft.raft_log.committed)
            .map(|(id, _)| *id)
            .collect();
        for replica in removed {
            self.remove_group(replica)?;
        }
        Ok(())
    }

    /// One replica's state.
    pub fn status(&self, replica: ReplicaId) -> Option<GroupStatus> {
        let group = self.groups.get(&replica)?;
        let raft = &group.raw.raft;
        Some(GroupStatus {
            group: group.group,
            role: raft.state,
            term: raft.term,
            leader: (raft.leader_id != 0).then_some(ReplicaId(raft.leader_id)),
            last_index: raft.raft_log.last_index(),
            snapshot_index: group.raw.store().snapshot_index(),
            log_bytes: group.raw.store().entry_bytes(),
            commit: raft.raft_log.committed,
            applied: group.applied,
        })
    }

    /// For a leader, the highest index every member of its group (voters and learners) holds:
    /// the log below it can be compacted without any member needing a snapshot. `None` on a
    /// replica that does not lead.
    pub fn min_matched(&self, replica: ReplicaId) -> Option<u64> {
        let group = self.groups.get(&replica)?;
        let raft = &group.raw.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        raft.prs()
            .iter()
            .map(|(_, progress)| progress.matched)
            .min()
    }

    /// For a leader, how much of the log each member (voters and learners) holds: its
    /// matched index. `None` on a replica that does not lead.
    pub fn progress(&self, replica: ReplicaId) -> Option<BTreeMap<ReplicaId, u64>> {
        let group = self.groups.get(&replica)?;
        let raft = &group.raw.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        Some(
            raft.prs()
                .iter()
                .map(|(id, progress)| (ReplicaId(*id), progress.matched))
                .collect(),
        )
    }

    /// The replicas hosted here, with their groups.
    pub fn replicas(&self) -> impl Iterator<Item = (ReplicaId, GroupId)> + '_ {
        self.groups.iter().map(|(id, g)| (*id, g.group))
    }

    /// The replicas of `group` hosted here (one, except in `cairn dev`).
    pub fn replicas_of(&self, group: GroupId) -> impl Iterator<Item = ReplicaId> + '_ {
        self.replicas()
            .filter(move |(_, g)| *g == group)
            .map(|(id, _)| id)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The node's log store (tests arm faults on it).
    pub fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }

    /// Stops the node and hands back its log store (to restart it, or to crash it in tests).
    pub fn into_log(self) -> L {
        self.log
    }
}

/// The context a configuration change entry carries (see
/// [`RaftNode::change_members_with`]); `None` for other entries and empty contexts.
pub fn conf_change_context(entry: &Entry) -> Option<Vec<u8>> {
    if entry.get_entry_type() != EntryType::EntryConfChangeV2 {
        return None;
    }
    let change = ConfChangeV2::decode(entry.data.as_slice()).ok()?;
    (!change.context.is_empty()).then_some(change.context)
}

/// Advances one replica's clock by a tick.
fn tick_one(group: &mut Group) {
    group.ticks_alive = group.ticks_alive.saturating_add(1);
    group.raw.tick();
}

/// Steps one message into a hosted replica of its group.
fn step_one(group: &mut Group, mut message: Message) {
    let vote = message.msg_type == MessageType::MsgRequestVote as i32
        || message.msg_type == MessageType::MsgRequestPreVote as i32;
    // With leases, a replica that just started ignores votes for a minimum election timeout:
    // it may have acknowledged a heartbeat that gave a leader its lease and then restarted,
    // forgetting the leader (raft-rs refuses votes only while it remembers one). A campaign
    // forced by a leadership transfer passes: that leader gave up its lease to start it.
    let min_election = group.raw.raft.election_timeout() as u64;
    if vote
        && group.read_lease.is_some()
        && group.ticks_alive < min_election
        && message.context != raft::CAMPAIGN_TRANSFER
    {
        return;
    }
    if message.msg_type == MessageType::MsgTransferLeader as i32 {
        // A transfer asked by a peer: no lease in this term either (see transfer_leader).
        group.transfer_term = Some(group.raw.raft.term);
        group.lease = None;
    }
    // A leader that still counts entries this member lost with its disk sends a commit index
    // past its log, on which raft-rs would abort; a heartbeat's commit is advisory, so it is
    // clamped.
    if message.msg_type == MessageType::MsgHeartbeat as i32 {
        let last = group.raw.raft.raft_log.last_index();
        message.commit = message.commit.min(last);
    }
    // Errors here are peers the group does not know or local-only message types: a
    // misbehaving or stale peer, never ours to fail on.
    let _ = group.raw.step(message);
}

/// A ReadIndex round this leader started confirmed its leadership: the lease runs from the
/// round's start (before its heartbeats went out), in the term it was started in, while that
/// term lasts and no transfer started in it.
fn confirm_lease(group: &mut Group, request: u64) {
    let Some(span) = group.read_lease else {
        return;
    };
    let Some(at) = group.lease_probes.iter().position(|(r, ..)| *r == request) else {
        return;
    };
    let (_, term, started) = group.lease_probes[at];
    // Rounds are confirmed in order: older ones are confirmed or lost.
    group.lease_probes.drain(..=at);
    let raft = &group.raw.raft;
    if raft.state != StateRole::Leader || raft.term != term || group.transfer_term == Some(term) {
        return;
    }
    let until = started + span;
    if group.lease.is_none_or(|(t, u)| t != term || u < until) {
        group.lease = Some((term, until));
    }
}

/// Takes `group`'s Ready, if it has one: applies what it commits (and a snapshot it installs)
/// through `apply`, collects its read states, and writes its entries and hard state to `log`
/// (unsynced). The caller sends its messages and syncs.
fn take_ready<L: LogStore>(
    log: &mut L,
    id: ReplicaId,
    group: &mut Group,
    apply: &mut impl FnMut(ReplicaId, GroupId, Apply<'_>),
) -> Result<Option<raft::Ready>, NodeError<L::Error>> {
    if std::mem::take(&mut group.restore_pending) {
        let snapshot = group.raw.store().snapshot_ref();
        let index = snapshot.get_metadata().index;
        apply(
            id,
            group.group,
            Apply::Snapshot {
                index,
                data: &snapshot.data,
                installed: false,
            },
        );
    }
    if !group.raw.has_ready() {
        return Ok(None);
    }
    let mut ready = group.raw.ready();
    for read in ready.take_read_states() {
        let request = read.request_ctx.try_into().map(u64::from_le_bytes);
        // Contexts are ours (8 bytes); anything else came from a confused peer.
        if let Ok(request) = request {
            group.reads_waiting.push((request, read.index));
            confirm_lease(group, request);
        }
    }
    if !ready.snapshot().is_empty() {
        // From the leader: this log did not match its, so the snapshot replaces it.
        let snapshot = ready.snapshot().clone();
        log.set_snapshot(id, &snapshot, SnapshotKind::Install)
            .map_err(NodeError::Log)?;
        let index = snapshot.get_metadata().index;
        apply(
            id,
            group.group,
            Apply::Snapshot {
                index,
                data: &snapshot.data,
                installed: true,
            },
        );
        group.raw.mut_store().set_snapshot(snapshot, false);
        group.applied = index;
    }
    apply_all(id, group, ready.take_committed_entries(), apply);
    if !ready.entries().is_empty() {
        group.raw.mut_store().append(ready.entries());
        log.append(id, ready.entries()).map_err(NodeError::Log)?;
    }
    if let Some(hard_state) = ready.hs() {
        group.raw.mut_store().set_hard_state(hard_state.clone());
        log.set_hard_state(id, hard_state).map_err(NodeError::Log)?;
    }
    Ok(Some(ready))
}

fn apply_all(
    id: ReplicaId,
    group: &mut Group,
    entries: Vec<Entry>,
    apply: &mut impl FnMut(ReplicaId, GroupId, Apply<'_>),
) {
    for entry in &entries {
        assert_eq!(
            entry.index,
            group.applied + 1,
            "entries apply in order without gaps"
        );
        apply_conf_change(group, entry);
        apply(id, group.group, Apply::Entry(entry));
        group.applied = entry.index;
    }
}

/// Applies a configuration change entry to the group's Raft state (other entries pass).
fn apply_conf_change(group: &mut Group, entry: &Entry) {
    let applied = match entry.get_entry_type() {
        EntryType::EntryNormal => return,
        EntryType::EntryConfChange => ConfChange::decode(entry.data.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|cc| group.raw.apply_conf_change(&cc).map_err(|e| e.to_string())),
        EntryType::EntryConfChangeV2 => ConfChangeV2::decode(entry.data.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|cc| group.raw.apply_conf_change(&cc).map_err(|e| e.to_string())),
    };
    // raft-rs refuses invalid changes when they are proposed, so a committed one applies; if
    // one does not, every member refuses it alike and it is a no-op, never a reason to stop.
    let Ok(conf_state) = applied else {
        return;
    };
    let me = group.raw.raft.id;
    let member = [
        &conf_state.voters,
        &conf_state.learners,
        &conf_state.voters_outgoing,
        &conf_state.learners_next,
    ]
    .iter()
    .any(|set| set.contains(&me));
    let voter = conf_state.voters.contains(&me) || conf_state.voters_outgoing.contains(&me);
    group.raw.mut_store().set_conf_state(conf_state);
    if !voter && group.raw.raft.state == StateRole::Leader {
        // A leader removed or demoted (the change was proposed before it led) steps down at
        // once; raft-rs would otherwise go on leading without a place in the configuration.
        let term = group.raw.raft.term;
        group.raw.raft.become_follower(term, raft::INVALID_ID);
    }
    // A member replaying history may apply its own old removal before a later re-addition:
    // the flag follows the latest configuration, and the group goes only once it is caught up.
    group.removed = !member;
}

/// raft-rs leaves a joint configuration automatically only if the leader that entered it is
/// still leading when it applies it; a later leader must propose the leave itself.
fn leave_joint_if_stuck(group: &mut Group) {
    let raft = &group.raw.raft;
    // The stored configuration follows every applied change; no copy on this per-round path.
    let joint = !group.raw.store().conf_state().voters_outgoing.is_empty();
    if raft.state == StateRole::Leader && joint && raft.pending_conf_index <= group.applied {
        // An empty V2 change is "leave the joint configuration"; refused while one is pending.
        let _ = group
            .raw
            .propose_conf_change(Vec::new(), ConfChangeV2::default());
    }
}
