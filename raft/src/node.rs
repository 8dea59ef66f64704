//! A node of the multi-raft runtime: many Raft groups in one process, driven sans-IO.
//!
//! The caller owns time, the network and the loop. It calls [`RaftNode::tick`] on every tick,
//! [`RaftNode::step`] with every batch a peer sent, [`RaftNode::propose`] for new commands, and
//! [`RaftNode::process_ready`] after any of them. `process_ready` handles the Readies of all
//! groups as one round:
//!
//! 1. collect each group's messages that may go before persistence (a leader's appends) and its
//!    committed entries, which are applied;
//! 2. write every group's new entries and hard state to the [`LogStore`];
//! 3. sync the store once for all groups (group commit);
//! 4. only then release the messages that claim persistence (votes, append responses) and
//!    advance each group.
//!
//! Messages leave batched per peer node ([`Outbox`]), whatever group they belong to.
//!
//! An error from `process_ready` means the store failed mid-round: the node must be dropped and
//! restarted from its store, as after a crash.

use std::collections::BTreeMap;

use cairn_common::{GroupId, NodeId};
use raft::{
    Config, RawNode, StateRole,
    eraftpb::{ConfState, Entry, Message},
    storage::MemStorage,
};

use crate::log::{GroupState, LogStore};

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
        }
    }

    fn raft_config(&self) -> Config {
        let (min, max) = self.election_tick_range;
        Config {
            id: self.id.0,
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

/// Messages to send, batched per destination node.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Per peer node, the messages of all groups, in order.
    pub batches: BTreeMap<NodeId, Vec<(GroupId, Message)>>,
}

impl Outbox {
    fn push(&mut self, group: GroupId, messages: Vec<Message>) {
        for message in messages {
            self.batches
                .entry(NodeId(message.to))
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
    /// This node does not host the group.
    #[error("group not hosted here")]
    UnknownGroup,
    /// Not the leader; retry at the hinted leader if known.
    #[error("not the leader (leader hint {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
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
    /// A group already exists.
    #[error("group {0} exists already")]
    GroupExists(GroupId),
}

struct Group {
    raw: RawNode<MemStorage>,
    applied: u64,
    /// Reads confirmed by the leader at a read index, waiting for this node to apply it.
    reads_waiting: Vec<(u64, u64)>,
}

impl Group {
    /// Ok if this node leads the group, else `NotLeader` with the leader it knows of.
    fn ensure_leader(&self) -> Result<(), ProposeError> {
        if self.raw.raft.state == StateRole::Leader {
            return Ok(());
        }
        let leader = self.raw.raft.leader_id;
        Err(ProposeError::NotLeader {
            leader: (leader != 0).then_some(NodeId(leader)),
        })
    }
}

/// A linearizable read that can now be served: the state machine has applied `index`, which
/// the leader confirmed as its commit index after the read arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadReady {
    /// The group read.
    pub group: GroupId,
    /// The caller's id for the read.
    pub request: u64,
    /// Serve the read from the state at (at least) this index.
    pub index: u64,
}

/// A snapshot of one group's state on this node, for status and checkers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// Leader, follower, candidate or pre-candidate.
    pub role: StateRole,
    /// Current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index applied.
    pub applied: u64,
}

/// Many Raft groups on one node, over one log store.
pub struct RaftNode<L: LogStore> {
    config: NodeConfig,
    log: L,
    groups: BTreeMap<GroupId, Group>,
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
        for (group, state) in node.log.load().map_err(NodeError::Log)? {
            node.start_group(group, &state)?;
        }
        Ok(node)
    }

    fn start_group(
        &mut self,
        group: GroupId,
        state: &GroupState,
    ) -> Result<(), NodeError<L::Error>> {
        let voters: Vec<u64> = state.voters.iter().map(|n| n.0).collect();
        let storage = MemStorage::new_with_conf_state(ConfState::from((voters, vec![])));
        {
            let mut core = storage.wl();
            core.set_hardstate(state.hard_state.clone());
            core.append(&state.entries)?;
        }
        let raw = RawNode::new(&self.config.raft_config(), storage, &self.logger)?;
        self.groups.insert(
            group,
            Group {
                raw,
                applied: 0,
                reads_waiting: Vec::new(),
            },
        );
        Ok(())
    }

    /// Creates a group whose members are `voters` (this node among them) and makes the record
    /// durable before returning: a member that forgot a group after a crash would never rejoin
    /// it (the simulation found exactly that).
    pub fn create_group(
        &mut self,
        group: GroupId,
        voters: &[NodeId],
    ) -> Result<(), NodeError<L::Error>> {
        if self.groups.contains_key(&group) {
            return Err(NodeError::GroupExists(group));
        }
        assert!(
            voters.contains(&self.config.id),
            "a node creates only groups it is a voter of"
        );
        self.log
            .create_group(group, voters)
            .map_err(NodeError::Log)?;
        self.log.sync().map_err(NodeError::Log)?;
        let state = GroupState {
            voters: voters.to_vec(),
            ..GroupState::default()
        };
        self.start_group(group, &state)
    }

    /// Advances every group's clock by one tick.
    pub fn tick(&mut self) {
        for group in self.groups.values_mut() {
            group.raw.tick();
        }
    }

    /// Feeds a batch a peer sent. Messages for groups not hosted here are dropped (the sender
    /// retries; membership comes from the metadata service), as are messages raft refuses.
    pub fn step(&mut self, batch: Vec<(GroupId, Message)>) {
        for (group, message) in batch {
            if let Some(group) = self.groups.get_mut(&group) {
                // Errors here are peers the group does not know or local-only message types:
                // a misbehaving or stale peer, never ours to fail on.
                let _ = group.raw.step(message);
            }
        }
    }

    /// Proposes a command to a group whose leader is this node.
    pub fn propose(&mut self, group: GroupId, data: Vec<u8>) -> Result<(), ProposeError> {
        let group = self
            .groups
            .get_mut(&group)
            .ok_or(ProposeError::UnknownGroup)?;
        group.ensure_leader()?;
        group
            .raw
            .propose(Vec::new(), data)
            .map_err(|_| ProposeError::Dropped)
    }

    /// Starts a linearizable read (ReadIndex): the leader confirms its leadership with a
    /// heartbeat round and answers with its commit index; followers forward to the leader. The
    /// read shows up in [`RaftNode::take_reads`] once this node has applied that index. A read
    /// can be dropped silently (no leader, a leader without a commit in its term yet): callers
    /// time out and retry.
    pub fn read_index(&mut self, group: GroupId, request: u64) -> Result<(), ProposeError> {
        let group = self
            .groups
            .get_mut(&group)
            .ok_or(ProposeError::UnknownGroup)?;
        group.raw.read_index(request.to_le_bytes().to_vec());
        Ok(())
    }

    /// Asks the leader of `group` (this node) to hand leadership to `to`.
    pub fn transfer_leader(&mut self, group: GroupId, to: NodeId) -> Result<(), ProposeError> {
        let group = self
            .groups
            .get_mut(&group)
            .ok_or(ProposeError::UnknownGroup)?;
        group.ensure_leader()?;
        group.raw.transfer_leader(to.0);
        Ok(())
    }

    /// Reads that can be served now (see [`RaftNode::read_index`]).
    pub fn take_reads(&mut self) -> Vec<ReadReady> {
        let mut ready = Vec::new();
        for (&id, group) in &mut self.groups {
            let applied = group.applied;
            group.reads_waiting.retain(|&(request, index)| {
                let servable = index <= applied;
                if servable {
                    ready.push(ReadReady {
                        group: id,
                        request,
                        index,
                    });
                }
                !servable
            });
        }
        ready
    }

    /// Handles every group's Ready in one round with one sync (see the module docs), applying
    /// committed entries through `apply` and adding outgoing messages to `outbox`. Messages
    /// added before an error may be sent: they never claim persistence.
    pub fn process_ready(
        &mut self,
        outbox: &mut Outbox,
        mut apply: impl FnMut(GroupId, &Entry),
    ) -> Result<(), NodeError<L::Error>> {
        let mut round = Vec::new();
        for (&id, group) in &mut self.groups {
            if !group.raw.has_ready() {
                continue;
            }
            let mut ready = group.raw.ready();
            outbox.push(id, ready.take_messages());
            for read in ready.take_read_states() {
                let request = read.request_ctx.try_into().map(u64::from_le_bytes);
                // Contexts are ours (8 bytes); anything else came from a confused peer.
                if let Ok(request) = request {
                    group.reads_waiting.push((request, read.index));
                }
            }
            // No group compacts its log yet, so no snapshot is ever sent or received.
            assert!(
                ready.snapshot().is_empty(),
                "snapshots are not supported yet"
            );
            apply_all(id, group, ready.take_committed_entries(), &mut apply);
            if !ready.entries().is_empty() {
                group.raw.mut_store().wl().append(ready.entries())?;
                self.log
                    .append(id, ready.entries())
                    .map_err(NodeError::Log)?;
            }
            if let Some(hard_state) = ready.hs() {
                group.raw.mut_store().wl().set_hardstate(hard_state.clone());
                self.log
                    .set_hard_state(id, hard_state)
                    .map_err(NodeError::Log)?;
            }
            round.push((id, ready));
        }
        if round.is_empty() {
            return Ok(());
        }
        self.log.sync().map_err(NodeError::Log)?;
        for (id, mut ready) in round {
            let group = self
                .groups
                .get_mut(&id)
                .expect("invariant: group in this round");
            outbox.push(id, ready.take_persisted_messages());
            let mut light = group.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                let mut core = group.raw.mut_store().wl();
                core.mut_hard_state().commit = commit;
                let hard_state = core.hard_state().clone();
                drop(core);
                // Not synced now: the commit index is recovered from the leader if lost.
                self.log
                    .set_hard_state(id, &hard_state)
                    .map_err(NodeError::Log)?;
            }
            outbox.push(id, light.take_messages());
            apply_all(id, group, light.take_committed_entries(), &mut apply);
            group.raw.advance_apply();
        }
        Ok(())
    }

    /// One group's state on this node.
    pub fn status(&self, group: GroupId) -> Option<GroupStatus> {
        let group = self.groups.get(&group)?;
        let raft = &group.raw.raft;
        Some(GroupStatus {
            role: raft.state,
            term: raft.term,
            leader: (raft.leader_id != 0).then_some(NodeId(raft.leader_id)),
            commit: raft.raft_log.committed,
            applied: group.applied,
        })
    }

    /// The groups hosted here.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
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

fn apply_all(
    id: GroupId,
    group: &mut Group,
    entries: Vec<Entry>,
    apply: &mut impl FnMut(GroupId, &Entry),
) {
    for entry in &entries {
        assert_eq!(
            entry.index,
            group.applied + 1,
            "entries apply in order without gaps"
        );
        apply(id, entry);
        group.applied = entry.index;
    }
}
