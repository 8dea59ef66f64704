//! The recovery and rebalance scheduler, pure: the metadata state and the storage nodes' latest
//! heartbeats in, the PG member moves to propose out. No IO and no clock: heartbeat ages and
//! how long this member has led come in as arguments.
//!
//! The metadata leader runs [`plan`] every second and proposes each move as a
//! [`Command::MovePgMember`]; storage nodes carry it out (the PG's leader adds the new member
//! as a learner, it copies the chunks, is promoted, and the old member is removed). The PG map
//! says where members should be; the PG leader's heartbeat says which configuration it
//! applied. A PG is *settled* once they agree, *settling* until then.
//!
//! Definitions (all from the inputs):
//! - a node is *fresh* if its latest heartbeat is at most `timeout` old;
//! - a member is *up* if a fresh heartbeat of its own node lists its replica;
//! - a member is *lost* if its disk is marked out, if a fresh heartbeat of its node reports
//!   its disk failed (taken out of service after an IO error; no timeout is waited for, the
//!   node has stopped the disk's replicas), if it reports it needs replacing, if it
//!   *diverged* (its digest of the PG's contents differs from the one a majority of the
//!   members report at the same log index: see [`crate::health`]), or if this member has led
//!   for at least `timeout` and the member is not up (a new leader has heard from no one yet,
//!   so silence is judged only after one timeout of leading); a *joining* member (one the
//!   PG's leader does not count as a voter yet) is lost by silence only once its disk is
//!   silent too (no fresh heartbeat lists it), since its node hosts it only after polling the
//!   new map and reports it a heartbeat later;
//! - a PG is *settled* when a fresh heartbeat reports its leader with `voters` equal to the
//!   map's members and no learners.
//!
//! Rules:
//! - at most [`MOVES_IN_FLIGHT_MAX`] PGs settle at once, cluster-wide: moves only start while
//!   fewer settle, counting the ones this plan starts;
//! - one move per PG per plan, and only for a settled PG: a PG whose last change has not
//!   settled could otherwise have two members copying at once;
//! - a settled PG whose leader diverged changes its preferred leader to an up member that did
//!   not (the PG's host hands leadership over), and moves no member meanwhile: a new member
//!   copies the leader's chunks;
//! - recovery first: a settled PG with a lost member and a strict majority of members up
//!   moves one lost member (a silent one before one merely marked out) to the target disk
//!   carrying the fewest PG members for its capacity (ties: lower disk id). Without a majority
//!   the PG cannot commit the configuration change, so nothing is tried;
//! - rebalance only when enabled, when no member anywhere is lost and after one timeout of
//!   leading (so the view of the nodes is whole): with `ideal = members x capacity / total
//!   capacity` over the disks in service on fresh nodes, a member moves from a disk at least
//!   one member over its ideal (most over first) to one at least one under (most under
//!   first). A move leaves both disks within their ideal's reach, so a balanced cluster plans
//!   nothing and no member moves back and forth;
//! - a target disk is in service (marked in, not reported failed), on a fresh node, holds no member of the PG and lies in a
//!   failure domain (at the pool's level) no remaining member uses. A node may still report
//!   a replica of the PG that the map dropped (it was away when it was replaced, and drops
//!   it only later): that does not rule it out. Only settled PGs move, and a settled PG's
//!   configuration is its map, so such a leftover is in no configuration any more; a node
//!   told to host a new member on the leftover's disk replaces the leftover (two replicas of
//!   one PG never share a disk). Ruling such nodes out left PGs degraded: with 4 nodes and 3
//!   replicas, the node that came back is often the only target.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use cairn_common::{DiskId, GroupId, ReplicaId};
use serde::Serialize;

use crate::{
    health::{Heartbeat, ReplicaReport, compare_digests},
    placement::{Disk, DiskState},
    state::{Command, MetaState, PgMember, Pool, host_node},
};

/// PGs settling at once, cluster-wide, beyond which no move starts. Each move copies a PG's
/// data under the recovery bandwidth budget; more at once only splits the budget and
/// stretches every moving PG's window of reduced redundancy.
pub const MOVES_IN_FLIGHT_MAX: usize = 4;

/// What the scheduler plans from.
pub struct SchedulerInput<'a> {
    /// The applied metadata state.
    pub state: &'a MetaState,
    /// Per node, its latest heartbeat and that heartbeat's age.
    pub heartbeats: &'a BTreeMap<u64, (Duration, Heartbeat)>,
    /// A node silent longer than this is lost.
    pub timeout: Duration,
    /// How long this member has led: silence is judged only once it is at least `timeout`.
    pub leading_for: Duration,
}

/// One run of the scheduler: the moves to propose and the PGs settling, for status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// [`Command::MovePgMember`]s, at most one per PG.
    pub moves: Vec<Command>,
    /// PGs whose configuration does not match their map yet, in pool and PG order.
    pub settling: Vec<Settling>,
}

/// A PG whose members are changing (or whose leader is unknown).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settling {
    /// The pool's name.
    pub pool: String,
    /// The PG's index.
    pub pg: u32,
    /// The map's members, preferred leader first.
    pub members: Vec<ReplicaId>,
    /// Members the PG's leader does not count as voters yet (empty if no leader is known).
    pub joining: Vec<ReplicaId>,
    /// Bytes copied into the joining members so far, as their nodes report.
    pub restored_bytes: u64,
    /// Bytes the joining members copy in all (the PG's size as its leader reports it, once
    /// per joining member; 0 while unknown).
    pub total_bytes: u64,
    /// The PG's leader, if a fresh heartbeat reports one.
    pub leader: Option<ReplicaId>,
}

/// Plans the next moves (module docs for the rules).
pub fn plan(input: &SchedulerInput) -> Plan {
    let view = View::new(input);
    let state = input.state;
    let mut plan = Plan::default();
    let mut settled = Vec::new();
    let mut stuck = Vec::new();
    let mut any_lost = false;
    for (name, pool) in state.pools() {
        for (index, members) in pool.pg_map.iter().enumerate() {
            let pg = Pg {
                name,
                pool,
                index: u32::try_from(index).expect("invariant: PG counts are u32"),
                members,
            };
            any_lost |= members.iter().any(|m| view.lost(state, m));
            match view.settling(&pg) {
                Some(settling) => {
                    // A member lost while it joins would keep its PG settling forever.
                    let lost_joining = members.iter().position(|m| {
                        settling.joining.contains(&m.replica) && view.lost_joining(state, m)
                    });
                    if let Some(from) = lost_joining
                        && settling.leader.is_some()
                    {
                        stuck.push((pg, from));
                    }
                    plan.settling.push(settling);
                }
                None => settled.push(pg),
            }
        }
    }
    let mut moves = Moves {
        budget: MOVES_IN_FLIGHT_MAX.saturating_sub(plan.settling.len()),
        counts: member_counts(state),
        moved: BTreeSet::new(),
        commands: Vec::new(),
    };
    // Replacing a member that never became a voter is safe at any time; it does not add a
    // PG to those settling, so it needs no budget. The PG is not settled, so a replica of it
    // its map no longer lists may still be a voter: no disk of a node reporting one is a
    // target (a node replaces such a leftover on the disk it is told to use).
    for (pg, from) in &stuck {
        let reported = view.groups.get(&pg.group()).into_iter().flatten();
        let holding: BTreeSet<u64> = reported.map(|r| r.replica.node().0).collect();
        let candidates = state.disks().filter(|d| {
            view.may_take(state, pg, *from, d) && !holding.contains(&host_node(d.host).0)
        });
        if let Some(target) = candidates.min_by(|a, b| by_load(&moves.counts, a, b)) {
            moves.budget += 1;
            moves.push(pg, *from, target.id);
        }
    }
    recover(state, &view, &settled, &mut moves);
    if state.rebalance_enabled() && !any_lost && view.judge_silence {
        rebalance(state, &view, &settled, &mut moves);
    }
    let quiet = moves.commands.is_empty() && plan.settling.is_empty() && !any_lost;
    if quiet && view.judge_silence {
        moves.commands.extend(balance_leaders(state));
    }
    plan.moves = moves.commands;
    plan
}

/// Once nothing moves, one PG's preferred leader (the map's first member) from the disk
/// preferred for the most PGs to a member of that PG on a disk preferred for at least two
/// fewer, so leaders spread over the disks again after moves (placement spread them at
/// creation). One change per plan: each moves leadership, which costs a transfer.
fn balance_leaders(state: &MetaState) -> Option<Command> {
    let mut leads: BTreeMap<DiskId, u64> = BTreeMap::new();
    for (_, pool) in state.pools() {
        for members in &pool.pg_map {
            for (i, member) in members.iter().enumerate() {
                *leads.entry(member.disk).or_default() += u64::from(i == 0);
            }
        }
    }
    let mut best: Option<(u64, Command)> = None;
    for (name, pool) in state.pools() {
        for (index, members) in pool.pg_map.iter().enumerate() {
            let Some(first) = members.first() else {
                continue;
            };
            let high = leads[&first.disk];
            let low = members[1..].iter().min_by_key(|m| (leads[&m.disk], m.disk));
            let Some(low) = low.filter(|m| leads[&m.disk] + 2 <= high) else {
                continue;
            };
            let gain = high - leads[&low.disk];
            if best.as_ref().is_none_or(|(g, _)| gain > *g) {
                let command = Command::SetPgLeader {
                    pool: name.clone(),
                    pg: u32::try_from(index).expect("invariant: PG counts are u32"),
                    replica: low.replica,
                };
                best = Some((gain, command));
            }
        }
    }
    best.map(|(_, command)| command)
}

/// One PG of one pool.
struct Pg<'a> {
    name: &'a str,
    pool: &'a Pool,
    index: u32,
    members: &'a [PgMember],
}

impl Pg<'_> {
    fn group(&self) -> u64 {
        GroupId::pg(self.pool.id, self.index).0
    }
}

/// The heartbeats, indexed.
struct View<'a> {
    fresh_nodes: BTreeSet<u64>,
    /// Replicas listed by a fresh heartbeat of their own node.
    up: BTreeMap<ReplicaId, &'a ReplicaReport>,
    /// Per Raft group, the replicas of it that fresh heartbeats list.
    groups: BTreeMap<u64, Vec<&'a ReplicaReport>>,
    /// True once this member has led for a timeout: silence means lost.
    judge_silence: bool,
    /// Members whose digest differs from their PG's majority's (module docs).
    diverged: BTreeSet<ReplicaId>,
    /// Disks a fresh heartbeat of their own node reports failed (taken out of service after
    /// an IO error): their members are lost and they take no new ones.
    failed_disks: BTreeSet<DiskId>,
    /// Disks fresh heartbeats list, failed or not.
    reported_disks: BTreeSet<DiskId>,
}

impl<'a> View<'a> {
    fn new(input: &SchedulerInput<'a>) -> View<'a> {
        let mut view = View {
            fresh_nodes: BTreeSet::new(),
            up: BTreeMap::new(),
            groups: BTreeMap::new(),
            judge_silence: input.leading_for >= input.timeout,
            diverged: BTreeSet::new(),
            failed_disks: BTreeSet::new(),
            reported_disks: BTreeSet::new(),
        };
        for (node, (age, beat)) in input.heartbeats {
            if *age > input.timeout {
                continue;
            }
            view.fresh_nodes.insert(*node);
            let failed = beat.disks.iter().filter(|d| d.failure.is_some());
            view.failed_disks.extend(failed.map(|d| d.id));
            view.reported_disks.extend(beat.disks.iter().map(|d| d.id));
            // A node speaks only for its own replicas.
            let own = beat.replicas.iter().filter(|r| r.replica.node().0 == *node);
            for report in own {
                view.up.insert(report.replica, report);
                view.groups.entry(report.group).or_default().push(report);
            }
        }
        for (_, pool) in input.state.pools() {
            for members in &pool.pg_map {
                let digests: Vec<_> = members
                    .iter()
                    .filter_map(|m| {
                        let report = view.up.get(&m.replica)?;
                        Some((m.replica, report.group, report.digest?))
                    })
                    .collect();
                if let Some(Err(differing)) = compare_digests(&digests)
                    && differing.majority
                {
                    view.diverged.extend(differing.replicas);
                }
            }
        }
        view
    }

    fn lost(&self, state: &MetaState, member: &PgMember) -> bool {
        let silent = self.judge_silence && !self.up.contains_key(&member.replica);
        silent || self.lost_present(state, member)
    }

    /// Whether a member its PG's leader does not count as a voter yet is lost. Its node
    /// hosts it only once it has polled the new map, and reports it at its next heartbeat:
    /// a second or two during which the member is not up. Judged by its replica's silence
    /// like a voter, each new member was moved again at the next plan, one a second, and a
    /// PG settled never (found by `chaos disk-faults`). So silence counts only once its disk
    /// is silent too (its node down, or the disk gone from it); a fresh node reporting the
    /// disk is about to host the member.
    fn lost_joining(&self, state: &MetaState, member: &PgMember) -> bool {
        let silent = self.judge_silence
            && !self.up.contains_key(&member.replica)
            && !self.reported_disks.contains(&member.disk);
        silent || self.lost_present(state, member)
    }

    /// Whether a member is lost for a reason other than silence.
    fn lost_present(&self, state: &MetaState, member: &PgMember) -> bool {
        let out = state
            .disk(member.disk)
            .is_none_or(|d| d.state == DiskState::Out);
        let stuck = self
            .up
            .get(&member.replica)
            .is_some_and(|r| r.needs_replacing);
        let diverged = self.diverged.contains(&member.replica);
        let failed = self.failed_disks.contains(&member.disk);
        out || stuck || diverged || failed
    }

    /// The PG's leader as reported: of several claims (a deposed leader not yet told), the
    /// highest term's.
    fn leader(&self, group: u64) -> Option<&'a ReplicaReport> {
        let reports = self.groups.get(&group)?;
        let leaders = reports.iter().filter(|r| r.leader);
        leaders.max_by_key(|r| (r.term, r.replica)).copied()
    }

    /// The PG's status entry if it is settling, `None` if settled.
    fn settling(&self, pg: &Pg) -> Option<Settling> {
        let members: Vec<ReplicaId> = pg.members.iter().map(|m| m.replica).collect();
        let leader = self.leader(pg.group());
        if let Some(leader) = leader {
            let voters: BTreeSet<ReplicaId> = leader.voters.iter().copied().collect();
            let wanted: BTreeSet<ReplicaId> = members.iter().copied().collect();
            if voters == wanted && leader.learners.is_empty() {
                return None;
            }
        }
        let joining: Vec<ReplicaId> = match leader {
            Some(leader) => members
                .iter()
                .copied()
                .filter(|m| !leader.voters.contains(m))
                .collect(),
            None => Vec::new(),
        };
        let restored_bytes = joining
            .iter()
            .filter_map(|r| self.up.get(r))
            .map(|r| r.restored_bytes)
            .sum();
        let total_bytes = leader.map_or(0, |l| l.pg_bytes) * joining.len() as u64;
        Some(Settling {
            pool: pg.name.to_string(),
            pg: pg.index,
            members,
            joining,
            restored_bytes,
            total_bytes,
            leader: leader.map(|l| l.replica),
        })
    }

    /// Whether `disk` may take the place of member `from` of `pg` (module docs, target rules).
    fn may_take(&self, state: &MetaState, pg: &Pg, from: usize, disk: &Disk) -> bool {
        let node = host_node(disk.host);
        if disk.state != DiskState::In
            || !self.fresh_nodes.contains(&node.0)
            || self.failed_disks.contains(&disk.id)
        {
            return false;
        }
        if pg.members.iter().any(|m| m.disk == disk.id) {
            return false;
        }
        let level = pg.pool.policy.domain;
        let remaining = pg.members.iter().enumerate().filter(|(i, _)| *i != from);
        remaining
            .filter_map(|(_, m)| state.disk(m.disk))
            .all(|d| d.domain(level) != disk.domain(level))
    }
}

/// The moves of one plan so far.
struct Moves {
    /// PGs that may still start settling.
    budget: usize,
    /// PG members per disk (all pools), as the planned moves leave them.
    counts: BTreeMap<DiskId, u64>,
    /// PGs moved by this plan: (pool name, PG index).
    moved: BTreeSet<(String, u32)>,
    commands: Vec<Command>,
}

impl Moves {
    fn push(&mut self, pg: &Pg, from: usize, to: DiskId) {
        assert!(self.budget > 0);
        let member = pg.members[from];
        let fresh = self.moved.insert((pg.name.to_string(), pg.index));
        assert!(fresh, "one move per PG per plan");
        *self.counts.entry(member.disk).or_default() -= 1;
        *self.counts.entry(to).or_default() += 1;
        self.budget -= 1;
        self.commands.push(Command::MovePgMember {
            pool: pg.name.to_string(),
            pg: pg.index,
            from: member.replica,
            to,
        });
    }

    fn may_move(&self, pg: &Pg) -> bool {
        !self.moved.contains(&(pg.name.to_string(), pg.index))
    }
}

/// PG members per disk, over all pools; every disk of the map has an entry.
fn member_counts(state: &MetaState) -> BTreeMap<DiskId, u64> {
    let mut counts: BTreeMap<DiskId, u64> = state.disks().map(|d| (d.id, 0)).collect();
    for (_, pool) in state.pools() {
        for member in pool.pg_map.iter().flatten() {
            *counts.entry(member.disk).or_default() += 1;
        }
    }
    counts
}

/// Orders disks by members per byte of capacity, fewest first, then by id.
fn by_load(counts: &BTreeMap<DiskId, u64>, a: &Disk, b: &Disk) -> Ordering {
    let load = |d: &Disk| u128::from(counts.get(&d.id).copied().unwrap_or(0));
    let left = load(a) * u128::from(b.capacity_bytes);
    let right = load(b) * u128::from(a.capacity_bytes);
    left.cmp(&right).then(a.id.cmp(&b.id))
}

/// Moves one lost member of each settled PG that keeps a majority up, while the budget lasts.
fn recover(state: &MetaState, view: &View, settled: &[Pg], moves: &mut Moves) {
    for pg in settled {
        if moves.budget == 0 {
            return;
        }
        if let Some(leader) = view.leader(pg.group())
            && view.diverged.contains(&leader.replica)
        {
            // A new member would copy this leader's chunks: lead from a member that did not
            // diverge first (module docs).
            let sound = pg
                .members
                .iter()
                .find(|m| view.up.contains_key(&m.replica) && !view.diverged.contains(&m.replica));
            let preferred = pg.members.first().map(|m| m.replica);
            if let Some(sound) = sound
                && preferred != Some(sound.replica)
            {
                moves.commands.push(Command::SetPgLeader {
                    pool: pg.name.to_string(),
                    pg: pg.index,
                    replica: sound.replica,
                });
            }
            continue;
        }
        let up = pg
            .members
            .iter()
            .filter(|m| view.up.contains_key(&m.replica));
        if up.count() * 2 <= pg.members.len() {
            continue;
        }
        // Silent members first: they are the ones no longer holding a copy.
        let mut lost: Vec<usize> = (0..pg.members.len())
            .filter(|i| view.lost(state, &pg.members[*i]))
            .collect();
        lost.sort_by_key(|i| view.up.contains_key(&pg.members[*i].replica));
        for from in lost {
            let candidates = state.disks().filter(|d| view.may_take(state, pg, from, d));
            let target = candidates.min_by(|a, b| by_load(&moves.counts, a, b));
            if let Some(target) = target {
                moves.push(pg, from, target.id);
                break;
            }
        }
    }
}

/// Moves members from disks over their ideal share to disks under it, while the budget lasts.
///
/// Cost: each move scans sources x PGs x targets; fine for the control plane at the
/// cluster sizes this serves, and the budget bounds the moves per plan.
fn rebalance(state: &MetaState, view: &View, settled: &[Pg], moves: &mut Moves) {
    let eligible: Vec<&Disk> = state
        .disks()
        .filter(|d| d.state == DiskState::In)
        .filter(|d| view.fresh_nodes.contains(&host_node(d.host).0))
        .collect();
    let capacity: u128 = eligible.iter().map(|d| u128::from(d.capacity_bytes)).sum();
    if capacity == 0 {
        return;
    }
    let total: u64 = eligible.iter().map(|d| moves.counts[&d.id]).sum();
    let ideal = |d: &Disk| total as f64 * (d.capacity_bytes as f64 / capacity as f64);
    while moves.budget > 0 {
        let excess = |d: &&Disk| moves.counts[&d.id] as f64 - ideal(d);
        let mut sources: Vec<&Disk> = eligible
            .iter()
            .copied()
            .filter(|d| excess(d) >= 1.0)
            .collect();
        let mut targets: Vec<&Disk> = eligible
            .iter()
            .copied()
            .filter(|d| -excess(d) >= 1.0)
            .collect();
        sources.sort_by(|a, b| excess(b).total_cmp(&excess(a)).then(a.id.cmp(&b.id)));
        targets.sort_by(|a, b| excess(a).total_cmp(&excess(b)).then(a.id.cmp(&b.id)));
        let Some((pg, from, to)) = first_move(state, view, settled, moves, &sources, &targets)
        else {
            return;
        };
        moves.push(pg, from, to);
    }
}

/// The first (source, PG, target) in preference order that the target rules allow: the PG,
/// the member's index in it, and the target disk.
fn first_move<'p, 'a>(
    state: &MetaState,
    view: &View,
    settled: &'p [Pg<'a>],
    moves: &Moves,
    sources: &[&Disk],
    targets: &[&Disk],
) -> Option<(&'p Pg<'a>, usize, DiskId)> {
    for source in sources {
        for pg in settled.iter().filter(|pg| moves.may_move(pg)) {
            let Some(from) = pg.members.iter().position(|m| m.disk == source.id) else {
                continue;
            };
            let target = targets.iter().find(|d| view.may_take(state, pg, from, d));
            if let Some(target) = target {
                return Some((pg, from, target.id));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use cairn_common::NodeId;

    use super::*;
    use crate::{
        health::{DigestReport, DiskReport},
        placement::FailureDomain,
        state::{Applied, tests::disk},
    };

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// Disk `n` on host `n + 1` for each of `hosts`, and a pool "p" of `pg_count` PGs with 3
    /// replicas, host domain.
    fn cluster(hosts: u8, pg_count: u32) -> MetaState {
        let mut state = MetaState::default();
        for n in 0..hosts {
            let applied = state.apply(Command::RegisterDisk(disk(n, 1 + u32::from(n))));
            assert_eq!(applied, Ok(Applied::Done));
        }
        let pool = Command::CreatePool {
            name: "p".into(),
            replicas: 3,
            domain: FailureDomain::Host,
            pg_count,
        };
        assert!(state.apply(pool).is_ok());
        state
    }

    fn report(group: u64, replica: ReplicaId) -> ReplicaReport {
        ReplicaReport {
            group,
            replica,
            leader: false,
            term: 3,
            commit: 7,
            applied: 7,
            voters: Vec::new(),
            learners: Vec::new(),
            restoring: false,
            restored_bytes: 0,
            needs_replacing: false,
            pg_bytes: 0,
            digest: None,
        }
    }

    fn disk_report(id: DiskId, failure: Option<&str>) -> DiskReport {
        DiskReport {
            id,
            used_bytes: 0,
            reads: 0,
            writes: 0,
            corrupt_blocks: 0,
            read_micros: 0,
            write_micros: 0,
            failure: failure.map(str::to_string),
        }
    }

    /// One second old heartbeats of `alive` nodes, each listing its members of every PG; the
    /// first alive member of each PG leads with the map's members as voters (settled).
    fn beats(state: &MetaState, alive: &[u64]) -> BTreeMap<u64, (Duration, Heartbeat)> {
        let mut out: BTreeMap<u64, (Duration, Heartbeat)> = alive
            .iter()
            .map(|node| {
                let disks = state.disks().filter(|d| u64::from(d.host.0) == *node);
                let beat = Heartbeat {
                    node: *node,
                    disks: disks.map(|d| disk_report(d.id, None)).collect(),
                    replicas: Vec::new(),
                };
                (*node, (Duration::from_secs(1), beat))
            })
            .collect();
        for (_, pool) in state.pools() {
            for (index, members) in pool.pg_map.iter().enumerate() {
                let group = GroupId::pg(pool.id, index as u32).0;
                let voters: Vec<ReplicaId> = members.iter().map(|m| m.replica).collect();
                let mut led = false;
                for member in members {
                    let Some((_, beat)) = out.get_mut(&member.replica.node().0) else {
                        continue;
                    };
                    let mut report = report(group, member.replica);
                    if !led {
                        (report.leader, report.voters, led) = (true, voters.clone(), true);
                    }
                    beat.replicas.push(report);
                }
            }
        }
        out
    }

    fn input<'a>(
        state: &'a MetaState,
        heartbeats: &'a BTreeMap<u64, (Duration, Heartbeat)>,
    ) -> SchedulerInput<'a> {
        SchedulerInput {
            state,
            heartbeats,
            timeout: TIMEOUT,
            leading_for: TIMEOUT,
        }
    }

    fn hosts_of(state: &MetaState, members: &[PgMember]) -> Vec<u32> {
        let host = |m: &PgMember| state.disk(m.disk).expect("disk").host.0;
        members.iter().map(host).collect()
    }

    fn apply_all(state: &mut MetaState, moves: &[Command]) {
        for command in moves {
            let applied = state.apply(command.clone());
            let leader = matches!(command, Command::SetPgLeader { .. });
            let expected = if leader {
                matches!(applied, Ok(Applied::Done))
            } else {
                matches!(applied, Ok(Applied::Replica(_)))
            };
            assert!(expected, "{command:?}: {applied:?}");
        }
    }

    /// Runs plan-apply rounds, with heartbeats of `alive` nodes that follow the map at once,
    /// until a plan has no moves; returns the rounds that moved members (leader changes follow).
    fn settle(state: &mut MetaState, alive: &[u64]) -> usize {
        let mut member_rounds = 0;
        for _ in 0..100 {
            let heartbeats = beats(state, alive);
            let plan = plan(&input(state, &heartbeats));
            assert!(plan.settling.is_empty());
            assert!(plan.moves.len() <= MOVES_IN_FLIGHT_MAX);
            if plan.moves.is_empty() {
                return member_rounds;
            }
            let members = |c: &Command| matches!(c, Command::MovePgMember { .. });
            member_rounds += usize::from(plan.moves.iter().any(members));
            apply_all(state, &plan.moves);
        }
        panic!("the scheduler never stopped moving");
    }

    fn counts(state: &MetaState) -> Vec<u64> {
        member_counts(state).into_values().collect()
    }

    /// Goal: the members of a lost node are replaced on the free host, never one a remaining
    /// member uses, at most MOVES_IN_FLIGHT_MAX at once. Method: 4 hosts, 8 PGs of 3; host 1
    /// silent; plan, check each move, apply them.
    #[test]
    fn a_lost_nodes_members_move_to_another_host() {
        let mut state = cluster(4, 8);
        let heartbeats = beats(&state, &[2, 3, 4]);
        let plan = plan(&input(&state, &heartbeats));
        assert!(plan.settling.is_empty());
        let pool = state.pool("p").expect("pool").clone();
        let affected = pool
            .pg_map
            .iter()
            .filter(|pg| hosts_of(&state, pg).contains(&1));
        assert_eq!(plan.moves.len(), affected.count().min(MOVES_IN_FLIGHT_MAX));
        for command in &plan.moves {
            let Command::MovePgMember {
                pool: name,
                pg,
                from,
                to,
            } = command
            else {
                panic!("{command:?}");
            };
            assert_eq!(name, "p");
            assert_eq!(from.node(), NodeId(1), "only host 1's members move");
            let members = &pool.pg_map[*pg as usize];
            let target = state.disk(*to).expect("target").host.0;
            assert!(!hosts_of(&state, members).contains(&target));
        }
        apply_all(&mut state, &plan.moves);
        assert_eq!(state.invariant_violation(), None);
    }

    /// Goal: a PG without a majority up is left alone; with one member lost it moves.
    /// Method: 5 hosts, one PG; silence two of its members' nodes, then one.
    #[test]
    fn no_move_without_a_majority_up() {
        let state = cluster(5, 1);
        let members = state.pool("p").expect("pool").pg_map[0].clone();
        let nodes: Vec<u64> = members.iter().map(|m| m.replica.node().0).collect();
        let others: Vec<u64> = (1..=5).filter(|n| !nodes.contains(n)).collect();
        let alive: Vec<u64> = others.iter().copied().chain([nodes[0]]).collect();
        let heartbeats = beats(&state, &alive);
        let planned = plan(&input(&state, &heartbeats));
        assert!(planned.moves.is_empty(), "{planned:?}");
        let alive: Vec<u64> = others.iter().copied().chain([nodes[0], nodes[1]]).collect();
        let heartbeats = beats(&state, &alive);
        let planned = plan(&input(&state, &heartbeats));
        assert_eq!(planned.moves.len(), 1);
        let Command::MovePgMember { from, .. } = &planned.moves[0] else {
            panic!("not a move");
        };
        assert_eq!(*from, members[2].replica);
    }

    /// Goal: a member that reports it needs replacing (it refused a snapshot: its log is
    /// behind the leader's and it holds state) is replaced though its node is alive.
    /// Method: 4 hosts, one PG, every node fresh; one member flags itself.
    #[test]
    fn a_member_that_needs_replacing_is_replaced() {
        let state = cluster(4, 1);
        let members = state.pool("p").expect("pool").pg_map[0].clone();
        let mut heartbeats = beats(&state, &[1, 2, 3, 4]);
        let planned = plan(&input(&state, &heartbeats));
        assert!(planned.moves.is_empty(), "{planned:?}");
        let stuck = members[1].replica;
        for (_, beat) in heartbeats.values_mut() {
            for report in &mut beat.replicas {
                report.needs_replacing = report.replica == stuck;
            }
        }
        let planned = plan(&input(&state, &heartbeats));
        assert_eq!(planned.moves.len(), 1, "{planned:?}");
        let Command::MovePgMember { from, .. } = &planned.moves[0] else {
            panic!("not a move");
        };
        assert_eq!(*from, stuck);
    }

    /// Goal: a member whose disk its node reports failed is replaced at once, before any
    /// timeout of silence, and a failed disk takes no member. Method: 4 hosts, one PG, a
    /// member just elected (silence not judged yet); the node of member 1 reports its disk
    /// failed and no longer lists the replica (the node stopped it): it moves to host 4's
    /// disk. Then host 4's disk is reported failed instead: member 1 (silent, judged now)
    /// has nowhere to go.
    #[test]
    fn a_member_on_a_failed_disk_is_replaced_at_once() {
        let state = cluster(4, 1);
        let members = state.pool("p").expect("pool").pg_map[0].clone();
        let spare = (1..=4u64)
            .find(|n| members.iter().all(|m| m.replica.node().0 != *n))
            .expect("a host without a member");
        let fail = |beats: &mut BTreeMap<u64, (Duration, Heartbeat)>, node: u64| {
            let disk = state
                .disks()
                .find(|d| d.host.0 == node as u32)
                .expect("the node's disk");
            let (_, beat) = beats.get_mut(&node).expect("a fresh node");
            beat.replicas.clear();
            beat.disks = vec![disk_report(disk.id, Some("write: EIO"))];
        };
        let failed_node = members[1].replica.node().0;
        let mut heartbeats = beats(&state, &[1, 2, 3, 4]);
        fail(&mut heartbeats, failed_node);
        let mut just_elected = input(&state, &heartbeats);
        just_elected.leading_for = Duration::ZERO;
        let planned = plan(&just_elected);
        assert_eq!(planned.moves.len(), 1, "{planned:?}");
        let Command::MovePgMember { from, to, .. } = &planned.moves[0] else {
            panic!("not a move");
        };
        assert_eq!(*from, members[1].replica);
        assert_eq!(state.disk(*to).expect("target").host.0, spare as u32);

        let mut heartbeats = beats(&state, &[1, 2, 3, 4]);
        heartbeats
            .get_mut(&failed_node)
            .expect("fresh")
            .1
            .replicas
            .clear();
        fail(&mut heartbeats, spare);
        let planned = plan(&input(&state, &heartbeats));
        assert!(
            planned.moves.is_empty(),
            "a failed disk took a member: {planned:?}"
        );
    }

    /// Sets the digest every member of PG 0 reports: `odd` reports another value.
    fn digests(beats: &mut BTreeMap<u64, (Duration, Heartbeat)>, group: u64, odd: &[ReplicaId]) {
        for (_, beat) in beats.values_mut() {
            for report in beat.replicas.iter_mut().filter(|r| r.group == group) {
                let value = if odd.contains(&report.replica) { 8 } else { 7 };
                report.digest = Some(DigestReport { index: 40, value });
            }
        }
    }

    /// Goal: a member whose contents differ from the majority's is replaced (the new member
    /// copies the leader's chunks); a leader that differs first hands the PG's leadership to
    /// a member that does not; with no majority nothing moves. Method: 4 hosts, one PG, every
    /// node fresh, digests set per member.
    #[test]
    fn a_member_whose_contents_differ_is_replaced() {
        let mut state = cluster(4, 1);
        let members = state.pool("p").expect("pool").pg_map[0].clone();
        let group = GroupId::pg(state.pool("p").expect("pool").id, 0).0;
        let mut heartbeats = beats(&state, &[1, 2, 3, 4]);
        digests(&mut heartbeats, group, &[]);
        let planned = plan(&input(&state, &heartbeats));
        assert!(planned.moves.is_empty(), "agreeing members: {planned:?}");

        // A follower differs: it moves, to the free host.
        digests(&mut heartbeats, group, &[members[2].replica]);
        let planned = plan(&input(&state, &heartbeats));
        let [Command::MovePgMember { from, to, .. }] = &planned.moves[..] else {
            panic!("one move: {planned:?}");
        };
        assert_eq!(*from, members[2].replica);
        assert!(!hosts_of(&state, &members).contains(&state.disk(*to).expect("disk").host.0));

        // The leader (the first member: see `beats`) differs: leadership moves first.
        digests(&mut heartbeats, group, &[members[0].replica]);
        let planned = plan(&input(&state, &heartbeats));
        let [Command::SetPgLeader { replica, .. }] = &planned.moves[..] else {
            panic!("one leader change: {planned:?}");
        };
        assert_eq!(*replica, members[1].replica);
        apply_all(&mut state, &planned.moves);
        // Until the leader changes, nothing more (the map already prefers the sound member).
        let planned = plan(&input(&state, &heartbeats));
        assert!(planned.moves.is_empty(), "{planned:?}");
        // Once it leads, the odd member moves.
        for (_, beat) in heartbeats.values_mut() {
            for report in beat.replicas.iter_mut().filter(|r| r.group == group) {
                let voters = report.voters.clone();
                report.leader = report.replica == members[1].replica;
                report.voters = if report.leader {
                    members.iter().map(|m| m.replica).collect()
                } else {
                    voters
                };
            }
        }
        let planned = plan(&input(&state, &heartbeats));
        let [Command::MovePgMember { from, .. }] = &planned.moves[..] else {
            panic!("one move: {planned:?}");
        };
        assert_eq!(*from, members[0].replica);

        // No majority (all three differ): nobody knows which is right; nothing moves.
        for (_, beat) in heartbeats.values_mut() {
            for report in beat.replicas.iter_mut().filter(|r| r.group == group) {
                let value = report.replica.0;
                report.digest = Some(DigestReport { index: 40, value });
            }
        }
        let planned = plan(&input(&state, &heartbeats));
        assert!(planned.moves.is_empty(), "{planned:?}");
    }

    /// Goal: after a recovery the preferred leaders are spread over the disks again (within
    /// one), and a spread cluster plans no leader change. Method: 5 hosts, 16 PGs; host 1
    /// silent; settle; count first members per disk.
    #[test]
    fn leaders_spread_again_after_a_recovery() {
        let mut state = cluster(5, 16);
        settle(&mut state, &[2, 3, 4, 5]);
        let mut leads: BTreeMap<DiskId, u64> = BTreeMap::new();
        for disk in state.disks().filter(|d| d.host.0 != 1) {
            leads.insert(disk.id, 0);
        }
        for members in &state.pool("p").expect("pool").pg_map {
            *leads.get_mut(&members[0].disk).expect("a live disk leads") += 1;
        }
        let (most, least) = (leads.values().max(), leads.values().min());
        assert!(
            most.zip(least).is_some_and(|(m, l)| m - l <= 1),
            "{leads:?}"
        );
        let heartbeats = beats(&state, &[2, 3, 4, 5]);
        assert!(plan(&input(&state, &heartbeats)).moves.is_empty());
    }

    /// Goal: no move starts while MOVES_IN_FLIGHT_MAX PGs settle; with fewer settling, only
    /// as many as fit. Method: host 1 silent; 4, then 3 unsettled PGs not involving host 1.
    #[test]
    fn no_move_while_four_pgs_settle() {
        let state = cluster(5, 32);
        let pool = state.pool("p").expect("pool").clone();
        let unaffected: Vec<u64> = (0..32u32)
            .filter(|i| !hosts_of(&state, &pool.pg_map[*i as usize]).contains(&1))
            .map(|i| GroupId::pg(pool.id, i).0)
            .collect();
        assert!(unaffected.len() >= MOVES_IN_FLIGHT_MAX);
        let unsettle = |count: usize| {
            let mut heartbeats = beats(&state, &[2, 3, 4, 5]);
            for (_, (_, beat)) in heartbeats.iter_mut() {
                for report in &mut beat.replicas {
                    if report.leader && unaffected[..count].contains(&report.group) {
                        report.learners.push(ReplicaId::new(NodeId(9), 1));
                    }
                }
            }
            heartbeats
        };
        let heartbeats = unsettle(MOVES_IN_FLIGHT_MAX);
        let planned = plan(&input(&state, &heartbeats));
        assert_eq!(planned.settling.len(), MOVES_IN_FLIGHT_MAX);
        assert!(planned.moves.is_empty(), "{planned:?}");
        let heartbeats = unsettle(MOVES_IN_FLIGHT_MAX - 1);
        let planned = plan(&input(&state, &heartbeats));
        assert_eq!(planned.moves.len(), 1);
    }

    /// Goal: a member that became leader judges no node silent before it has led for a
    /// timeout, but a disk marked out is lost at once. Method: host 1 silent, led for less
    /// than the timeout; then host 2's disk also out.
    #[test]
    fn nothing_is_judged_silent_before_leading_for_the_timeout() {
        let mut state = cluster(5, 8);
        let heartbeats = beats(&state, &[2, 3, 4, 5]);
        let early = SchedulerInput {
            leading_for: TIMEOUT - Duration::from_millis(1),
            ..input(&state, &heartbeats)
        };
        assert!(plan(&early).moves.is_empty());
        let out = Command::SetDiskState {
            disk: DiskId([1; 16]),
            state: DiskState::Out,
        };
        assert_eq!(state.apply(out), Ok(Applied::Done));
        let heartbeats = beats(&state, &[2, 3, 4, 5]);
        let early = SchedulerInput {
            leading_for: Duration::ZERO,
            ..input(&state, &heartbeats)
        };
        let planned = plan(&early);
        assert!(!planned.moves.is_empty());
        for command in &planned.moves {
            let Command::MovePgMember { from, .. } = command else {
                panic!("not a move");
            };
            assert_eq!(from.node(), NodeId(2), "only the out disk's members move");
        }
    }

    /// Goal: a new, empty node receives PGs until the cluster is balanced, and a balanced
    /// cluster plans nothing (no member moves back and forth). Method: 3 hosts, 16 PGs of 3
    /// (every host holds every PG); add host 4; plan-apply rounds until no move; each disk
    /// then holds 12 members. Also a cluster placed balanced from the start plans nothing.
    #[test]
    fn a_new_node_fills_until_balanced_and_then_nothing_moves() {
        let mut state = cluster(3, 16);
        assert_eq!(counts(&state), vec![16, 16, 16]);
        let heartbeats = beats(&state, &[1, 2, 3]);
        assert!(plan(&input(&state, &heartbeats)).moves.is_empty());
        let added = state.apply(Command::RegisterDisk(disk(3, 4)));
        assert_eq!(added, Ok(Applied::Done));
        let rounds = settle(&mut state, &[1, 2, 3, 4]);
        assert_eq!(rounds, 3, "12 moves, 4 at a time");
        assert_eq!(counts(&state), vec![12, 12, 12, 12]);
        assert_eq!(state.invariant_violation(), None);
        for _ in 0..3 {
            let heartbeats = beats(&state, &[1, 2, 3, 4]);
            assert!(plan(&input(&state, &heartbeats)).moves.is_empty());
        }

        let mut paused = cluster(3, 16);
        let off = Command::SetRebalance { enabled: false };
        assert_eq!(paused.apply(off), Ok(Applied::Done));
        let added = paused.apply(Command::RegisterDisk(disk(3, 4)));
        assert_eq!(added, Ok(Applied::Done));
        assert_eq!(settle(&mut paused, &[1, 2, 3, 4]), 0, "paused: no moves");

        // Placement balances within a member of the ideal (24 here): nothing to do.
        let mut balanced = cluster(5, 40);
        let before = counts(&balanced);
        assert!(before.iter().all(|c| c.abs_diff(24) < 1), "{before:?}");
        assert_eq!(settle(&mut balanced, &[1, 2, 3, 4, 5]), 0);
    }

    /// Goal: a disk marked out is drained while its node still serves. Method: 4 hosts; host
    /// 1's disk out, every node alive; plan-apply rounds until no move; nothing remains on it.
    #[test]
    fn a_disk_marked_out_is_drained() {
        let mut state = cluster(4, 16);
        let out = Command::SetDiskState {
            disk: DiskId([0; 16]),
            state: DiskState::Out,
        };
        assert_eq!(state.apply(out), Ok(Applied::Done));
        settle(&mut state, &[1, 2, 3, 4]);
        assert_eq!(counts(&state), vec![0, 16, 16, 16]);
    }

    /// Goal: a node that still reports a replica of the PG the map dropped (a leftover from
    /// before it was away) remains a target: the PG is settled, so the leftover is in no
    /// configuration, and that node's host replaces it. Method: 4 hosts, one PG, one member's
    /// node silent; the only free node reports a leftover replica of the PG: the move goes
    /// there.
    #[test]
    fn a_leftover_replica_does_not_rule_its_node_out() {
        let state = cluster(4, 1);
        let pool = state.pool("p").expect("pool").clone();
        let members = &pool.pg_map[0];
        let nodes: Vec<u64> = members.iter().map(|m| m.replica.node().0).collect();
        let free: Vec<u64> = (1..=4).filter(|n| !nodes.contains(n)).collect();
        assert_eq!(free.len(), 1);
        let alive: Vec<u64> = free.iter().copied().chain([nodes[0], nodes[1]]).collect();
        let group = GroupId::pg(pool.id, 0).0;
        let mut heartbeats = beats(&state, &alive);
        let beat = &mut heartbeats.get_mut(&free[0]).expect("beat").1;
        beat.replicas
            .push(report(group, ReplicaId::new(NodeId(free[0]), 77)));
        let planned = plan(&input(&state, &heartbeats));
        let [Command::MovePgMember { to, .. }] = planned.moves.as_slice() else {
            panic!("{planned:?}");
        };
        assert_eq!(u64::from(state.disk(*to).expect("disk").host.0), free[0]);
    }

    /// Moves member 1 of PG 0 to the first host holding no member of it; returns the old
    /// members, the new replica and the hosts that were free.
    fn move_to_free_host(
        state: &mut MetaState,
        hosts: u32,
    ) -> (Vec<PgMember>, ReplicaId, Vec<u32>) {
        let old = state.pool("p").expect("pool").pg_map[0].clone();
        let free: Vec<u32> = (1..=hosts)
            .filter(|h| !hosts_of(state, &old).contains(h))
            .collect();
        let to = DiskId([u8::try_from(free[0] - 1).expect("disk"); 16]);
        let command = Command::MovePgMember {
            pool: "p".into(),
            pg: 0,
            from: old[1].replica,
            to,
        };
        let Ok(Applied::Replica(new)) = state.apply(command) else {
            panic!("move refused");
        };
        (old, new, free)
    }

    /// The PG's leader reports the old members as voters and `new` as a learner.
    fn report_joining(
        heartbeats: &mut BTreeMap<u64, (Duration, Heartbeat)>,
        old: &[PgMember],
        new: ReplicaId,
    ) {
        for (_, (_, beat)) in heartbeats.iter_mut() {
            for report in beat.replicas.iter_mut().filter(|r| r.leader) {
                report.voters = old.iter().map(|m| m.replica).collect();
                report.learners = vec![new];
            }
        }
    }

    /// Goal: a member lost while it joins (its node died during the copy) is replaced,
    /// though its PG is settling: it never became a voter, and otherwise the PG would settle
    /// never; but not while its node, up, has yet to host it. Method: 5 hosts, one PG; move
    /// a member to a free host; the leader reports the new member as a learner; its node
    /// does not report it yet (no move), then that host falls silent (moved).
    #[test]
    fn a_member_lost_while_joining_is_replaced() {
        let mut state = cluster(5, 1);
        let (old, new, free) = move_to_free_host(&mut state, 5);
        // Its node is up and reports the disk but has not hosted it yet: it is not lost.
        let mut heartbeats = beats(&state, &[1, 2, 3, 4, 5]);
        report_joining(&mut heartbeats, &old, new);
        let beat = &mut heartbeats.get_mut(&new.node().0).expect("beat").1;
        beat.replicas.retain(|r| r.replica != new);
        let planned = plan(&input(&state, &heartbeats));
        assert!(planned.moves.is_empty(), "{planned:?}");
        let alive: Vec<u64> = (1..=5u64).filter(|n| *n != u64::from(free[0])).collect();
        let mut heartbeats = beats(&state, &alive);
        report_joining(&mut heartbeats, &old, new);
        // The member being replaced is still a voter, and its node says so.
        let leaving = old[1].replica;
        let group = GroupId::pg(state.pool("p").expect("pool").id, 0).0;
        let beat = &mut heartbeats.get_mut(&leaving.node().0).expect("beat").1;
        beat.replicas.push(report(group, leaving));
        let planned = plan(&input(&state, &heartbeats));
        let [Command::MovePgMember { from, to, .. }] = planned.moves.as_slice() else {
            panic!("{planned:?}");
        };
        assert_eq!(*from, new, "the joining member is the one replaced");
        assert_eq!(
            u64::from(state.disk(*to).expect("disk").host.0),
            u64::from(free[1])
        );
    }

    /// Goal: status shows a settling PG's joining member and the bytes copied into it.
    /// Method: apply a move; the leader reports the old voters and the new member as a
    /// learner; the new member's node reports its progress.
    #[test]
    fn settling_pgs_show_joining_members_and_progress() {
        let mut state = cluster(4, 1);
        let (old, new, _) = move_to_free_host(&mut state, 4);
        let mut heartbeats = beats(&state, &[1, 2, 3, 4]);
        report_joining(&mut heartbeats, &old, new);
        for (_, (_, beat)) in heartbeats.iter_mut() {
            for report in &mut beat.replicas {
                if report.leader {
                    report.pg_bytes = 8 << 20;
                }
                if report.replica == new {
                    (report.restoring, report.restored_bytes) = (true, 3 << 20);
                }
            }
        }
        let planned = plan(&input(&state, &heartbeats));
        let members: Vec<ReplicaId> = state.pool("p").expect("pool").pg_map[0]
            .iter()
            .map(|m| m.replica)
            .collect();
        let expected = Settling {
            pool: "p".into(),
            pg: 0,
            members,
            joining: vec![new],
            restored_bytes: 3 << 20,
            total_bytes: 8 << 20,
            leader: Some(old[0].replica),
        };
        assert_eq!(planned.settling, vec![expected]);

        let silent = beats(&state, &[]);
        let planned = plan(&input(&state, &silent));
        assert_eq!(planned.settling.len(), 1, "no leader known: settling");
        assert!(planned.settling[0].joining.is_empty());
        assert!(planned.moves.is_empty(), "no majority up");
    }
}
