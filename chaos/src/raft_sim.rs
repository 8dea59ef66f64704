//! Deterministic simulation of the multi-raft runtime (`cairn-raft`).
//!
//! One seed determines everything: the swarm options (node and group counts, fault rates),
//! every network delay, loss, duplication and partition, every crash, and every election
//! timeout. A run has two phases, like TigerBeetle's VOPR:
//!
//! - **safety**: faults on, clients proposing; the checkers run on every step;
//! - **liveness**: network healed and every node restarted; every group must elect a leader,
//!   commit a final probe entry and bring every member up to date within a bounded number of
//!   steps.
//!
//! Checkers:
//! - election safety: at most one leader per group per term;
//! - state-machine safety: every entry applied at an index, on any node, ever, is the same entry
//!   (so committed entries are never lost or changed and replicas apply one sequence);
//! - completeness: after liveness every member has applied every entry anyone ever applied;
//! - read linearizability: a read started after a write was acknowledged (first applied
//!   anywhere) is served at a read index at or past that write, whether a ReadIndex round
//!   confirmed it or, in runs with leader leases (half the seeds), the leader's lease did
//!   (simulated time: every node ticks once per step, one step being [`SIM_TICK`]);
//! - snapshot safety: each node's state machine is a hash chain over the entries it applied;
//!   a snapshot restored anywhere must carry the very state every node had at its index.
//!
//! Clients also ask leaders to transfer leadership now and then. Nodes compact their logs at
//! random (so lagging and restarted members catch up by snapshot), and leaders change their
//! groups' membership: a voter replaced by another node in one joint-consensus step, learners
//! added, promoted and removed. New members join with empty logs. After liveness every group
//! must have left any joint configuration, and every member of its final configuration must be
//! up to date.
//!
//! Crashes lose each node's unsynced log writes; one kind of crash strikes in the middle of a
//! group commit, after the writes and before the sync.

use std::collections::{BTreeMap, BTreeSet};

use cairn_common::{GroupId, NodeId, ReplicaId};
use cairn_raft::{
    Apply, MemberChange, NodeConfig, Outbox, RaftNode,
    log::{BOOTSTRAP_INDEX, MemLogStore},
    raft_types::{ConfState, Entry, Message, StateRole},
};

use crate::chunkstore_kill::Rng;

/// The time one step stands for, for leader leases.
const SIM_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// The shortest election timeout a node draws, in ticks: leases stay below it.
const ELECTION_TICKS_MIN: u64 = 10;

/// Steps after which an unapplied liveness probe is proposed again.
const PROBE_RETRY_STEPS: u64 = 200;

/// Options drawn from the seed (swarm testing: each seed explores a different corner).
#[derive(Clone, Debug)]
pub struct Options {
    /// Nodes in the cluster (3-5).
    pub nodes: u64,
    /// Raft groups (1-4).
    pub groups: u64,
    /// Voters per group (3, or 5 when there are 5 nodes).
    pub voters_per_group: u64,
    /// Steps (ticks) of the safety phase.
    pub safety_steps: u64,
    /// Steps the liveness phase may take.
    pub liveness_steps_max: u64,
    /// Per-mille chance that a message batch is lost.
    pub drop_per_mille: u64,
    /// Per-mille chance that a batch is delivered twice.
    pub duplicate_per_mille: u64,
    /// Largest network delay, in steps (reordering comes from unequal delays).
    pub delay_steps_max: u64,
    /// Per-mille chance per step that a partition starts.
    pub partition_per_mille: u64,
    /// Per-mille chance per step that a node crashes.
    pub crash_per_mille: u64,
    /// Per-mille chance per step that a client proposes to each group.
    pub propose_per_mille: u64,
    /// Per-mille chance per step that a client reads each group (ReadIndex) on a random member.
    pub read_per_mille: u64,
    /// Per-mille chance per step that a leader is asked to transfer leadership.
    pub transfer_per_mille: u64,
    /// Per-mille chance per step, per node and group, that the node compacts its log.
    pub compact_per_mille: u64,
    /// Per-mille chance per step, per group, that its leader changes the membership.
    pub member_change_per_mille: u64,
    /// Leaders serve reads under leases (three quarters of the shortest election timeout).
    pub read_lease: bool,
}

impl Options {
    /// Draws options from a seed.
    pub fn swarm(rng: &mut Rng) -> Options {
        let nodes = 3 + rng.below(3);
        Options {
            nodes,
            groups: 1 + rng.below(4),
            voters_per_group: if nodes == 5 && rng.below(2) == 0 {
                5
            } else {
                3
            },
            safety_steps: 1500 + rng.below(1500),
            liveness_steps_max: 3000,
            drop_per_mille: rng.below(150),
            duplicate_per_mille: rng.below(50),
            delay_steps_max: 1 + rng.below(8),
            partition_per_mille: rng.below(6),
            crash_per_mille: rng.below(6),
            propose_per_mille: 100 + rng.below(400),
            read_per_mille: rng.below(300),
            transfer_per_mille: rng.below(4),
            compact_per_mille: rng.below(30),
            member_change_per_mille: rng.below(8),
            read_lease: rng.below(2) == 0,
        }
    }
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Entries with client data that were committed (applied somewhere).
    pub committed: u64,
    /// Leaders elected (distinct group and term pairs).
    pub elections: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Crashes that struck mid-group-commit.
    pub crashes_mid_sync: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Steps the liveness phase needed.
    pub liveness_steps: u64,
    /// Reads served (and checked).
    pub reads: u64,
    /// Reads started under a leader's lease (no round).
    pub leased_reads: u64,
    /// Leadership transfers asked for.
    pub transfers: u64,
    /// Log compactions.
    pub compactions: u64,
    /// Snapshots restored by state machines (installed from a leader or at restart).
    pub snapshots_restored: u64,
    /// Membership changes a leader accepted.
    pub member_changes: u64,
}

/// What `process_ready` handed the state machine, owned.
enum Applied {
    Entry(Entry),
    Snapshot(u64, Vec<u8>),
}

impl From<Apply<'_>> for Applied {
    fn from(apply: Apply<'_>) -> Applied {
        match apply {
            Apply::Entry(entry) => Applied::Entry(entry.clone()),
            Apply::Snapshot { index, data, .. } => Applied::Snapshot(index, data.to_vec()),
        }
    }
}

struct Envelope {
    from: NodeId,
    to: NodeId,
    batch: Vec<(GroupId, Message)>,
}

/// A node's state machine for one group: a hash chain over the entries applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Machine {
    index: u64,
    hash: u64,
}

impl Machine {
    fn encode(self) -> Vec<u8> {
        let mut bytes = self.index.to_le_bytes().to_vec();
        bytes.extend_from_slice(&self.hash.to_le_bytes());
        bytes
    }

    fn decode(index: u64, data: &[u8]) -> Result<Machine, String> {
        if data.is_empty() {
            return Ok(Machine { index, hash: 0 });
        }
        let field = |at: usize| {
            data.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| format!("snapshot data of {} bytes", data.len()))
        };
        let machine = Machine {
            index: field(0)?,
            hash: field(8)?,
        };
        if machine.index != index {
            return Err(format!(
                "snapshot at {index} holds state at {}",
                machine.index
            ));
        }
        Ok(machine)
    }

    fn apply(&mut self, entry: &Entry) {
        let mut hash = self.hash ^ entry.term.rotate_left(17) ^ entry.index;
        for byte in &entry.data {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.hash = hash.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.index = entry.index;
    }
}

struct SimNode {
    config: NodeConfig,
    node: Option<RaftNode<MemLogStore>>,
    /// State machines, volatile: a crash loses them and the restart restores them.
    machines: BTreeMap<GroupId, Machine>,
    /// The store survives crashes; only its unsynced part is lost.
    parked_log: Option<MemLogStore>,
    down_until: u64,
}

struct Sim {
    options: Options,
    rng: Rng,
    now: u64,
    nodes: Vec<SimNode>,
    in_flight: BTreeMap<(u64, u64), Envelope>,
    sequence: u64,
    /// One side of the current partition and when it heals.
    partition: Option<(BTreeSet<NodeId>, u64)>,
    groups: Vec<GroupId>,
    /// Per group and index, the state-machine hash after applying it (the first seen).
    hashes: BTreeMap<(GroupId, u64), u64>,
    leaders: BTreeMap<(GroupId, u64), NodeId>,
    applied: BTreeMap<GroupId, BTreeMap<u64, (u64, Vec<u8>)>>,
    proposals: u64,
    report: Report,
    faults: bool,
    /// Per group, the highest index acknowledged to a client so far.
    acknowledged: BTreeMap<GroupId, u64>,
    /// Reads in progress: request id -> (group, highest acknowledged index when it started).
    reads: BTreeMap<u64, (GroupId, u64)>,
    next_read: u64,
    /// Simulated time zero (step 0).
    epoch: std::time::Instant,
    /// Per node, the number of its next new replica (replica ids are never reused).
    next_replica: BTreeMap<NodeId, u64>,
}

/// Runs one seed; `Err` names the violated property (or the panic) and how to replay.
pub fn run(seed: u64) -> Result<Report, String> {
    // raft-rs asserts its own invariants (e.g. a commit index beyond a follower's log after
    // lost writes): a panic is a failed seed like any checker's.
    std::panic::catch_unwind(|| run_unchecked(seed)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("seed {seed}: panic: {message}"))
    })
}

fn run_unchecked(seed: u64) -> Result<Report, String> {
    let mut rng = Rng::new(seed);
    let options = Options::swarm(&mut rng);
    let mut sim = Sim::new(options, rng)?;
    let fail = |sim: &Sim, e: String| {
        format!(
            "seed {seed}: step {}: {e}\noptions: {:?}",
            sim.now, sim.options
        )
    };
    for _ in 0..sim.options.safety_steps {
        sim.step().map_err(|e| fail(&sim, e))?;
    }
    sim.heal().map_err(|e| fail(&sim, e))?;
    sim.converge().map_err(|e| fail(&sim, e))?;
    sim.report.elections = sim.leaders.len() as u64;
    sim.report.committed = sim
        .applied
        .values()
        .flat_map(|log| log.values())
        .filter(|(_, data)| !data.is_empty())
        .count() as u64;
    Ok(sim.report.clone())
}

impl Sim {
    fn new(options: Options, mut rng: Rng) -> Result<Sim, String> {
        let mut nodes = Vec::new();
        for i in 1..=options.nodes {
            let mut config = NodeConfig::new(NodeId(i));
            // A width-one range per node: reproducible, and unequal across nodes.
            let timeout = ELECTION_TICKS_MIN as usize + rng.below(20) as usize;
            config.election_tick_range = (timeout, timeout + 1);
            if options.read_lease {
                config.read_lease = Some(SIM_TICK * ELECTION_TICKS_MIN as u32 * 3 / 4);
            }
            let node =
                RaftNode::new(config.clone(), MemLogStore::new()).map_err(|e| e.to_string())?;
            nodes.push(SimNode {
                config,
                node: Some(node),
                machines: BTreeMap::new(),
                parked_log: None,
                down_until: 0,
            });
        }
        let mut groups = Vec::new();
        for g in 1..=options.groups {
            let group = GroupId(g);
            let mut all: Vec<NodeId> = (1..=options.nodes).map(NodeId).collect();
            while all.len() as u64 > options.voters_per_group {
                all.remove(rng.below(all.len() as u64) as usize);
            }
            // Group g's first replicas are number g on their nodes.
            let voters: Vec<ReplicaId> = all.iter().map(|n| ReplicaId::new(*n, g)).collect();
            for member in &voters {
                let node = nodes[(member.node().0 - 1) as usize]
                    .node
                    .as_mut()
                    .expect("fresh node is up");
                node.create_group(group, *member, &voters)
                    .map_err(|e| e.to_string())?;
            }
            groups.push(group);
        }
        let next_replica = (1..=options.nodes)
            .map(|n| (NodeId(n), options.groups + 1))
            .collect();
        Ok(Sim {
            options,
            rng,
            now: 0,
            nodes,
            in_flight: BTreeMap::new(),
            sequence: 0,
            partition: None,
            groups,
            hashes: BTreeMap::new(),
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            proposals: 0,
            report: Report::default(),
            faults: true,
            acknowledged: BTreeMap::new(),
            reads: BTreeMap::new(),
            next_read: 0,
            epoch: std::time::Instant::now(),
            next_replica,
        })
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.rng.below(1000) < per_mille
    }

    fn step(&mut self) -> Result<(), String> {
        self.now += 1;
        if self.faults {
            self.inject_faults();
        }
        self.restart_due()?;
        for sim_node in &mut self.nodes {
            if let Some(node) = sim_node.node.as_mut() {
                node.tick();
            }
        }
        self.deliver();
        if self.faults {
            self.propose();
            self.read_and_transfer();
            self.change_members();
            self.compact()?;
        }
        for index in 0..self.nodes.len() {
            self.process(index)?;
        }
        self.check_leaders()
    }

    fn inject_faults(&mut self) {
        if self
            .partition
            .as_ref()
            .is_some_and(|(_, until)| *until <= self.now)
        {
            self.partition = None;
        } else if self.partition.is_none() && self.chance(self.options.partition_per_mille) {
            let side: BTreeSet<NodeId> = (1..=self.options.nodes)
                .filter(|_| self.rng.below(2) == 0)
                .map(NodeId)
                .collect();
            let until = self.now + 20 + self.rng.below(200);
            self.partition = Some((side, until));
            self.report.partitions += 1;
        }
        if self.chance(self.options.crash_per_mille) {
            let index = self.rng.below(self.options.nodes) as usize;
            if self.nodes[index].node.is_some() {
                if self.rng.below(2) == 0 {
                    // Power loss in the middle of the next group commit.
                    if let Some(node) = self.nodes[index].node.as_mut() {
                        node.log_mut().fail_next_sync();
                    }
                } else {
                    self.crash(index);
                }
            }
        }
    }

    fn crash(&mut self, index: usize) {
        let down_for = 10 + self.rng.below(150);
        let sim_node = &mut self.nodes[index];
        let Some(node) = sim_node.node.take() else {
            return;
        };
        let mut log = node.into_log();
        log.crash();
        sim_node.parked_log = Some(log);
        sim_node.machines.clear();
        sim_node.down_until = self.now + down_for;
        self.report.crashes += 1;
    }

    fn restart_due(&mut self) -> Result<(), String> {
        for sim_node in &mut self.nodes {
            if sim_node.node.is_none() && sim_node.down_until <= self.now {
                let log = sim_node
                    .parked_log
                    .take()
                    .expect("invariant: a down node parks its log");
                let node = RaftNode::new(sim_node.config.clone(), log)
                    .map_err(|e| format!("restart: {e}"))?;
                sim_node.node = Some(node);
            }
        }
        Ok(())
    }

    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|(side, _)| side.contains(&a) != side.contains(&b))
    }

    fn deliver(&mut self) {
        let due: Vec<(u64, u64)> = self
            .in_flight
            .range(..(self.now + 1, 0))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let envelope = self.in_flight.remove(&key).expect("invariant: key listed");
            if self.cut(envelope.from, envelope.to) {
                continue;
            }
            if let Some(node) = self.nodes[(envelope.to.0 - 1) as usize].node.as_mut() {
                node.step(envelope.batch);
            }
        }
    }

    fn send(&mut self, from: NodeId, outbox: Outbox) {
        for (to, batch) in outbox.batches {
            if self.faults && (self.cut(from, to) || self.chance(self.options.drop_per_mille)) {
                continue;
            }
            let copies = if self.faults && self.chance(self.options.duplicate_per_mille) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = 1 + self.rng.below(self.options.delay_steps_max);
                self.sequence += 1;
                let envelope = Envelope {
                    from,
                    to,
                    batch: batch.clone(),
                };
                self.in_flight
                    .insert((self.now + delay, self.sequence), envelope);
            }
        }
    }

    fn node(&self, id: NodeId) -> Option<&RaftNode<MemLogStore>> {
        self.nodes[(id.0 - 1) as usize].node.as_ref()
    }

    fn node_mut(&mut self, id: NodeId) -> Option<&mut RaftNode<MemLogStore>> {
        self.nodes[(id.0 - 1) as usize].node.as_mut()
    }

    /// The replica of `group` on node `id`, if it is up and hosts one (never more than one
    /// here).
    fn replica(&self, id: NodeId, group: GroupId) -> Option<ReplicaId> {
        self.node(id)?.replicas_of(group).next()
    }

    fn status(&self, id: NodeId, group: GroupId) -> Option<cairn_raft::GroupStatus> {
        self.node(id)?.status(self.replica(id, group)?)
    }

    /// The leader a client would find: the highest-term leader among the nodes up.
    fn leader(&self, group: GroupId) -> Option<ReplicaId> {
        (1..=self.options.nodes)
            .map(NodeId)
            .filter_map(|id| {
                let replica = self.replica(id, group)?;
                let status = self.node(id)?.status(replica)?;
                (status.role == StateRole::Leader).then_some((status.term, replica))
            })
            .max()
            .map(|(_, replica)| replica)
    }

    /// The replicas of `group` on nodes that are up.
    fn hosts(&self, group: GroupId) -> Vec<ReplicaId> {
        (1..=self.options.nodes)
            .filter_map(|id| self.replica(NodeId(id), group))
            .collect()
    }

    fn propose(&mut self) {
        for group in self.groups.clone() {
            if !self.chance(self.options.propose_per_mille) {
                continue;
            }
            if let Some(leader) = self.leader(group) {
                self.proposals += 1;
                let data = format!("{group}:{}", self.proposals).into_bytes();
                if let Some(node) = self.node_mut(leader.node()) {
                    // Refusals (a stale leader, a transfer) are normal; the client moves on.
                    let _ = node.propose(leader, data);
                }
            }
        }
    }

    fn read_and_transfer(&mut self) {
        for group in self.groups.clone() {
            let hosts = self.hosts(group);
            if hosts.is_empty() {
                continue;
            }
            if self.chance(self.options.read_per_mille) {
                let member = hosts[self.rng.below(hosts.len() as u64) as usize];
                self.next_read += 1;
                let request = self.next_read;
                let required = self.acknowledged.get(&group).copied().unwrap_or(0);
                let now = self.epoch + SIM_TICK * self.now as u32;
                if let Some(node) = self.node_mut(member.node())
                    && let Ok(path) = node.read(member, request, now)
                {
                    if path == cairn_raft::ReadPath::Leased {
                        self.report.leased_reads += 1;
                    }
                    self.reads.insert(request, (group, required));
                }
            }
            if self.chance(self.options.transfer_per_mille) {
                let to = hosts[self.rng.below(hosts.len() as u64) as usize];
                if let Some(leader) = self.leader(group).filter(|l| *l != to)
                    && let Some(node) = self.node_mut(leader.node())
                    && node.transfer_leader(leader, to).is_ok()
                {
                    self.report.transfers += 1;
                }
            }
        }
    }

    /// A leader changes its group's membership: replace a voter (joint consensus), add a
    /// learner, promote or remove one. New members join with an empty log first.
    fn change_members(&mut self) {
        for group in self.groups.clone() {
            if !self.chance(self.options.member_change_per_mille) {
                continue;
            }
            let Some(leader) = self.leader(group) else {
                continue;
            };
            let Some(conf) = self.node(leader.node()).and_then(|n| n.membership(leader)) else {
                continue;
            };
            if !conf.voters_outgoing.is_empty() {
                continue;
            }
            // Only nodes that host nothing of the group join it: one still holding it from an
            // earlier membership would drop it on applying its old removal (a scheduler waits
            // for that too).
            let in_conf = |id: NodeId| {
                conf.voters
                    .iter()
                    .chain(&conf.learners)
                    .any(|m| ReplicaId(*m).node() == id)
            };
            let outsiders: Vec<NodeId> = (1..=self.options.nodes)
                .map(NodeId)
                .filter(|id| !in_conf(*id))
                .filter(|id| self.node(*id).is_some() && self.replica(*id, group).is_none())
                .collect();
            let pick = |rng: &mut crate::chunkstore_kill::Rng, from: &[u64]| {
                ReplicaId(from[rng.below(from.len() as u64) as usize])
            };
            let new_replica = |sim: &mut Sim| {
                let node = outsiders[sim.rng.below(outsiders.len() as u64) as usize];
                let number = sim.next_replica.entry(node).or_insert(1);
                *number += 1;
                ReplicaId::new(node, *number - 1)
            };
            let changes = match self.rng.below(3) {
                0 if !outsiders.is_empty() => {
                    let new = new_replica(self);
                    let old = pick(&mut self.rng, &conf.voters);
                    vec![MemberChange::AddVoter(new), MemberChange::Remove(old)]
                }
                1 if !outsiders.is_empty() => {
                    let new = new_replica(self);
                    vec![MemberChange::AddLearner(new)]
                }
                2 if !conf.learners.is_empty() => {
                    let learner = pick(&mut self.rng, &conf.learners);
                    if self.rng.below(2) == 0 {
                        vec![MemberChange::AddVoter(learner)]
                    } else {
                        vec![MemberChange::Remove(learner)]
                    }
                }
                _ => continue,
            };
            // The metadata service tells a new member to host the group before the change.
            let joining = changes.iter().find_map(|c| match c {
                MemberChange::AddVoter(n) | MemberChange::AddLearner(n)
                    if !conf.learners.contains(&n.0) =>
                {
                    Some(*n)
                }
                _ => None,
            });
            if let Some(joining) = joining {
                let sim_node = &mut self.nodes[(joining.node().0 - 1) as usize];
                let Some(node) = sim_node.node.as_mut() else {
                    continue;
                };
                if node.join_group(group, joining).is_err() {
                    continue;
                }
                // A state machine left from an earlier membership starts over.
                sim_node.machines.remove(&group);
            }
            if let Some(node) = self.node_mut(leader.node())
                && node.change_members(leader, &changes).is_ok()
            {
                self.report.member_changes += 1;
            }
        }
    }

    /// Nodes compact their logs at random, snapshotting their state machines.
    fn compact(&mut self) -> Result<(), String> {
        for index in 0..self.nodes.len() {
            for group in self.groups.clone() {
                if !self.chance(self.options.compact_per_mille) {
                    continue;
                }
                let sim_node = &mut self.nodes[index];
                let (Some(node), Some(machine)) =
                    (sim_node.node.as_mut(), sim_node.machines.get(&group))
                else {
                    continue;
                };
                let Some(replica) = node.replicas_of(group).next() else {
                    // Removed from the group: its state machine goes too.
                    sim_node.machines.remove(&group);
                    continue;
                };
                let applied = node.status(replica).map_or(0, |s| s.applied);
                if applied != machine.index {
                    return Err(format!(
                        "{}: {group} applied {applied} but its state machine is at {}",
                        node.id(),
                        machine.index
                    ));
                }
                node.compact(replica, machine.encode())
                    .map_err(|e| format!("compact: {e}"))?;
                self.report.compactions += 1;
            }
        }
        Ok(())
    }

    fn check_reads(
        &mut self,
        node: NodeId,
        served: Vec<cairn_raft::ReadReady>,
    ) -> Result<(), String> {
        for read in served {
            // A read whose node crashed and came back may be served by the new incarnation
            // only if it was asked again; unknown ids were already served or abandoned.
            let Some((group, required)) = self.reads.remove(&read.request) else {
                continue;
            };
            if group != read.group {
                return Err(format!(
                    "read {} answered for {} instead of {group}",
                    read.request, read.group
                ));
            }
            if read.index < required {
                return Err(format!(
                    "read linearizability: {node} served read {} of {group} at index {}, but index {required} was acknowledged before it started",
                    read.request, read.index
                ));
            }
            self.report.reads += 1;
        }
        Ok(())
    }

    fn process(&mut self, index: usize) -> Result<(), String> {
        let Some(node) = self.nodes[index].node.as_mut() else {
            return Ok(());
        };
        let id = node.id();
        let mut outbox = Outbox::default();
        let mut applied_now: Vec<(GroupId, Applied)> = Vec::new();
        let result = node.process_ready(&mut outbox, |_, group, apply| {
            applied_now.push((group, Applied::from(apply)))
        });
        for (group, applied) in applied_now {
            match applied {
                Applied::Entry(entry) => {
                    self.check_apply(id, group, &entry)?;
                    self.apply_to_machine(index, group, &entry)?;
                    let acknowledged = self.acknowledged.entry(group).or_default();
                    *acknowledged = (*acknowledged).max(entry.index);
                }
                Applied::Snapshot(at, data) => self.restore_machine(index, group, at, &data)?,
            }
        }
        // A follower joined after the latest snapshot: the leader takes a fresh one.
        let wanted = self.nodes[index]
            .node
            .as_ref()
            .map(RaftNode::snapshots_wanted)
            .unwrap_or_default();
        for replica in wanted {
            let sim_node = &mut self.nodes[index];
            let Some(node) = sim_node.node.as_mut() else {
                continue;
            };
            let Some(group) = node.status(replica).map(|s| s.group) else {
                continue;
            };
            if let Some(machine) = sim_node.machines.get(&group) {
                node.compact(replica, machine.encode())
                    .map_err(|e| format!("compact: {e}"))?;
                self.report.compactions += 1;
            }
        }
        let served = node_reads(&mut self.nodes[index].node);
        self.check_reads(id, served)?;
        // Messages that left before a failure were on the wire already.
        self.send(id, outbox);
        if result.is_err() {
            self.report.crashes_mid_sync += 1;
            self.crash(index);
        }
        Ok(())
    }

    fn apply_to_machine(
        &mut self,
        index: usize,
        group: GroupId,
        entry: &Entry,
    ) -> Result<(), String> {
        let node = NodeId(index as u64 + 1);
        let Some(machine) = self.nodes[index].machines.get_mut(&group) else {
            return Err(format!(
                "{node}: {group} entry {} before any snapshot",
                entry.index
            ));
        };
        if entry.index != machine.index + 1 {
            return Err(format!(
                "{node}: {group} applies {} after {}",
                entry.index, machine.index
            ));
        }
        machine.apply(entry);
        let hash = machine.hash;
        let first = *self.hashes.entry((group, entry.index)).or_insert(hash);
        if first != hash {
            return Err(format!(
                "state-machine safety: {node} {group} state at {} differs from another node's",
                entry.index
            ));
        }
        Ok(())
    }

    fn restore_machine(
        &mut self,
        index: usize,
        group: GroupId,
        at: u64,
        data: &[u8],
    ) -> Result<(), String> {
        let node = NodeId(index as u64 + 1);
        let machine = Machine::decode(at, data).map_err(|e| format!("{node}: {group}: {e}"))?;
        let expected = if at == BOOTSTRAP_INDEX {
            Some(0)
        } else {
            self.hashes.get(&(group, at)).copied()
        };
        if expected != Some(machine.hash) {
            return Err(format!(
                "snapshot safety: {node} restored {group} at {at} to a state no node had there"
            ));
        }
        self.nodes[index].machines.insert(group, machine);
        self.report.snapshots_restored += 1;
        Ok(())
    }

    fn check_apply(&mut self, node: NodeId, group: GroupId, entry: &Entry) -> Result<(), String> {
        let log = self.applied.entry(group).or_default();
        match log.get(&entry.index) {
            None => {
                log.insert(entry.index, (entry.term, entry.data.clone()));
                Ok(())
            }
            Some((term, data)) if *term == entry.term && *data == entry.data => Ok(()),
            Some((term, _)) => Err(format!(
                "state-machine safety: {node} applied {group} index {} term {} but term {term} was applied there before",
                entry.index, entry.term
            )),
        }
    }

    fn check_leaders(&mut self) -> Result<(), String> {
        for sim_node in &self.nodes {
            let Some(node) = sim_node.node.as_ref() else {
                continue;
            };
            for (replica, group) in node.replicas() {
                let status = node.status(replica).expect("invariant: listed replica");
                if status.role != StateRole::Leader {
                    continue;
                }
                let leader = *self
                    .leaders
                    .entry((group, status.term))
                    .or_insert(node.id());
                if leader != node.id() {
                    return Err(format!(
                        "election safety: {group} term {} has leaders {leader} and {}",
                        status.term,
                        node.id()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Ends every fault and brings every node up.
    fn heal(&mut self) -> Result<(), String> {
        self.faults = false;
        self.partition = None;
        for sim_node in &mut self.nodes {
            sim_node.down_until = 0;
            if let Some(node) = sim_node.node.as_mut() {
                // A power loss armed during safety must not strike during liveness.
                node.log_mut().clear_faults();
            }
        }
        self.restart_due()
    }

    /// Liveness: within the step budget every group elects a leader, leaves any joint
    /// configuration, commits a probe, and every member of its configuration applies
    /// everything ever applied anywhere.
    fn converge(&mut self) -> Result<(), String> {
        let mut probed: BTreeMap<GroupId, Vec<u8>> = BTreeMap::new();
        let mut probed_at: BTreeMap<GroupId, u64> = BTreeMap::new();
        let start = self.now;
        while self.now - start < self.options.liveness_steps_max {
            self.step()?;
            for group in self.groups.clone() {
                // An accepted probe can still be lost (its leader handed over leadership before
                // committing it): a client retries, and so does this one.
                let applied = probed
                    .get(&group)
                    .is_some_and(|data| self.is_applied(group, data));
                let stale = probed_at
                    .get(&group)
                    .is_some_and(|at| self.now - at > PROBE_RETRY_STEPS);
                if probed.contains_key(&group) && (applied || !stale) {
                    continue;
                }
                let Some(leader) = self.leader(group) else {
                    continue;
                };
                let data = format!("probe:{group}:{}", self.now).into_bytes();
                if let Some(node) = self.node_mut(leader.node())
                    && node.propose(leader, data.clone()).is_ok()
                {
                    probed.insert(group, data);
                    probed_at.insert(group, self.now);
                }
            }
            if probed.len() == self.groups.len() && self.converged(&probed) {
                self.report.liveness_steps = self.now - start;
                return Ok(());
            }
        }
        Err(format!(
            "liveness: not converged after {} steps: {}",
            self.options.liveness_steps_max,
            self.why_not()
        ))
    }

    fn is_applied(&self, group: GroupId, data: &[u8]) -> bool {
        self.applied
            .get(&group)
            .is_some_and(|log| log.values().any(|(_, d)| d == data))
    }

    /// The configuration of the group's leader, if it has one.
    fn configuration(&self, group: GroupId) -> Option<ConfState> {
        let leader = self.leader(group)?;
        self.node(leader.node())?.membership(leader)
    }

    fn converged(&self, probed: &BTreeMap<GroupId, Vec<u8>>) -> bool {
        self.groups.iter().all(|group| {
            let Some(log) = self.applied.get(group) else {
                return false;
            };
            let Some(conf) = self.configuration(*group) else {
                return false;
            };
            let probe_applied = log
                .values()
                .any(|(_, data)| Some(data) == probed.get(group));
            let last = log.keys().next_back().copied().unwrap_or(0);
            probe_applied
                && conf.voters_outgoing.is_empty()
                && conf.voters.iter().chain(&conf.learners).all(|m| {
                    let member = ReplicaId(*m);
                    self.node(member.node())
                        .and_then(|n| n.status(member))
                        .is_some_and(|s| s.applied >= last)
                })
        })
    }

    fn why_not(&self) -> String {
        let mut out = String::new();
        for group in &self.groups {
            out.push_str(&format!("{group} conf {:?}: ", self.configuration(*group)));
            for m in self.hosts(*group) {
                let status = self.status(m.node(), *group);
                out.push_str(&format!("{group}@{m}: {status:?}; "));
            }
        }
        out
    }
}

fn node_reads(node: &mut Option<RaftNode<MemLogStore>>) -> Vec<cairn_raft::ReadReady> {
    node.as_mut().map(RaftNode::take_reads).unwrap_or_default()
}
