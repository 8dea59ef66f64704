//! Cluster health from storage-node heartbeats, pure: the caller passes each node's latest
//! heartbeat with its age; nothing here reads a clock.
//!
//! Heartbeats live in the leader's memory (followers refuse them, so nodes follow the leader),
//! never in the Raft log: they change every second and only their freshness matters. A member
//! that becomes leader learns the nodes' state within one heartbeat interval.
//!
//! The overall word ([`Overall`]): down if a PG has no member up, else recovering if a PG is
//! settling (its members moving, see [`crate::scheduler`]), else degraded if a PG lacks a
//! member or a leader or its members hold different contents, else healthy.
//!
//! Contents: each replica reports its latest digest of its PG's chunks with the log index it
//! was taken at (the storage node's `PgCommand::Digest`, applied by every member at the same
//! index). Members whose digests at one index differ make the PG *inconsistent*; those in the
//! minority are named (all of them when no digest has a majority).
//!
//! A PG member is *up* when a heartbeat younger than the timeout from its node lists its
//! replica. A PG is healthy when every member is up and one of them leads, down when no member
//! is up, degraded otherwise.

use std::{collections::BTreeMap, time::Duration};

use cairn_common::{DiskId, ReplicaId};
use serde::{Deserialize, Serialize};

use crate::{placement::DiskState, state::MetaState};

/// Nodes whose heartbeats a member keeps: bounds the memory a flood of node ids can take.
pub const HEARTBEAT_NODES_MAX: usize = 4096;

/// What a storage node reports every heartbeat interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The reporting node.
    pub node: u64,
    /// Its disks.
    pub disks: Vec<DiskReport>,
    /// The PG replicas it hosts.
    pub replicas: Vec<ReplicaReport>,
}

/// One disk in a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskReport {
    /// The disk.
    pub id: DiskId,
    /// Bytes held by chunks.
    pub used_bytes: u64,
    /// Reads since the node started.
    pub reads: u64,
    /// Writes since the node started.
    pub writes: u64,
    /// Blocks whose checksum failed since the node started.
    pub corrupt_blocks: u64,
    /// Microseconds its reads took, summed (with `reads`, the mean read latency).
    #[serde(default)]
    pub read_micros: u64,
    /// Microseconds its writes took, summed.
    #[serde(default)]
    pub write_micros: u64,
    /// Set once the node took the disk out of service after an IO on it failed, with what
    /// failed: its members are replaced at once. Left out while the disk serves, so that a
    /// metadata service of an older build still takes the heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// One PG replica in a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaReport {
    /// The PG's Raft group.
    pub group: u64,
    /// The replica.
    pub replica: ReplicaId,
    /// True if it leads its PG.
    pub leader: bool,
    /// Its term.
    pub term: u64,
    /// Its commit index.
    pub commit: u64,
    /// Its applied index.
    pub applied: u64,
    /// The voters of the configuration it applied; reported by a PG's leader only (empty
    /// otherwise). The scheduler counts a PG settled once these are its map's members.
    #[serde(default)]
    pub voters: Vec<ReplicaId>,
    /// The learners of that configuration (members still copying), leader only.
    #[serde(default)]
    pub learners: Vec<ReplicaId>,
    /// True while the replica copies the PG's chunks from a peer (a member that joined).
    #[serde(default)]
    pub restoring: bool,
    /// Bytes copied into this replica from peers so far.
    #[serde(default)]
    pub restored_bytes: u64,
    /// The replica refused a snapshot lately: it holds state, its log is behind the leader's
    /// and it cannot take a copy, so it never catches up; the scheduler replaces it.
    #[serde(default)]
    pub needs_replacing: bool,
    /// For a leader with learners, the bytes of the PG's chunks: what each joining member
    /// copies in all.
    #[serde(default)]
    pub pg_bytes: u64,
    /// The replica's latest digest of its PG's chunks, if it took one since it started.
    /// Left out when there is none, so that a metadata service of an older build still takes
    /// the heartbeat until digests are proposed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<DigestReport>,
}

/// A replica's digest of its PG's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestReport {
    /// The log index it was taken at; digests compare at equal indexes only.
    pub index: u64,
    /// The digest.
    pub value: u64,
}

/// A PG whose members hold different contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InconsistentPg {
    /// The PG's Raft group.
    pub group: u64,
    /// The log index the digests were taken at.
    pub index: u64,
    /// The members whose digest differs from the majority's (all that reported, if none has
    /// a majority).
    pub replicas: Vec<ReplicaId>,
    /// Whether more than half of the members compared agree: then `replicas` diverged from
    /// them, and the scheduler replaces them (see [`crate::scheduler`]).
    pub majority: bool,
}

/// The cluster in one word, worst first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overall {
    /// Some PG has no member up.
    Down,
    /// Some PG is settling (a member moving in) and none is down.
    Recovering,
    /// Some PG lacks a member or a leader, and nothing is moving.
    Degraded,
    /// Every PG has every member up and a leader.
    #[default]
    Healthy,
}

/// The cluster's health as heartbeats show it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Health {
    /// The cluster in one word.
    pub status: Overall,
    /// PGs whose Raft configuration does not match their map yet (members moving); filled
    /// by the leader from its scheduler's latest plan ([`Health::with_settling`]).
    pub pgs_settling: u64,
    /// PGs with every member up and a leader.
    pub pgs_healthy: u64,
    /// PGs with some members up, or no leader.
    pub pgs_degraded: u64,
    /// PGs with no member up.
    pub pgs_down: u64,
    /// PGs whose members' latest comparable digests agree (at least two members reported one
    /// at the same log index).
    pub pgs_consistent: u64,
    /// PGs whose members' digests at one log index differ (also counted above by liveness).
    pub pgs_inconsistent: u64,
    /// Those PGs and the members that differ.
    pub inconsistent: Vec<InconsistentPg>,
    /// Disks marked in whose node reports them.
    pub disks_in_reporting: u64,
    /// Disks marked in that no fresh heartbeat reports.
    pub disks_in_silent: u64,
    /// Disks marked in whose node took them out of service after an IO failed (counted
    /// here, not as reporting).
    pub disks_failed: u64,
    /// Disks marked out.
    pub disks_out: u64,
    /// Per node that sent a heartbeat: its age and what it reported.
    pub nodes: Vec<NodeHealth>,
}

/// One node's latest heartbeat, summarised.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeHealth {
    /// The node.
    pub node: u64,
    /// Milliseconds since its last heartbeat.
    pub age_ms: u64,
    /// True if the heartbeat is younger than the timeout.
    pub fresh: bool,
    /// Replicas it hosts.
    pub replicas: u64,
    /// Of which lead their PG.
    pub leaders: u64,
    /// Bytes its disks hold.
    pub used_bytes: u64,
    /// Checksum failures its disks saw.
    pub corrupt_blocks: u64,
    /// Per disk: mean read and write latency since the node started, in microseconds (the
    /// raw material of sub-health detection: a disk much slower than its peers).
    pub disks: Vec<DiskLatency>,
}

/// One disk's mean latencies.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiskLatency {
    /// The disk (its UUID, as operators see it).
    pub id: String,
    /// Mean read latency, microseconds (0 before the first read).
    pub read_us: u64,
    /// Mean write latency, microseconds (0 before the first write).
    pub write_us: u64,
    /// What failed, if the node took the disk out of service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl Health {
    /// The same health with `settling` PGs moving members, and the overall word again.
    pub fn with_settling(mut self, settling: u64) -> Health {
        self.pgs_settling = settling;
        self.status = self.overall();
        self
    }

    fn overall(&self) -> Overall {
        if self.pgs_down > 0 {
            Overall::Down
        } else if self.pgs_settling > 0 {
            Overall::Recovering
        } else if self.pgs_degraded > 0 || self.pgs_inconsistent > 0 {
            Overall::Degraded
        } else {
            Overall::Healthy
        }
    }
}

/// Health of `state`'s pools and disks given each node's latest heartbeat and its age.
pub fn summarize(
    state: &MetaState,
    heartbeats: &BTreeMap<u64, (Duration, Heartbeat)>,
    timeout: Duration,
) -> Health {
    let fresh: BTreeMap<u64, &Heartbeat> = heartbeats
        .iter()
        .filter(|(_, (age, _))| *age <= timeout)
        .map(|(node, (_, beat))| (*node, beat))
        .collect();
    let mut up: BTreeMap<ReplicaId, bool> = BTreeMap::new();
    let mut digests: BTreeMap<ReplicaId, (u64, DigestReport)> = BTreeMap::new();
    for beat in fresh.values() {
        for report in &beat.replicas {
            // A node speaks only for its own replicas.
            if report.replica.node().0 == beat.node {
                up.insert(report.replica, report.leader);
                if let Some(digest) = report.digest {
                    digests.insert(report.replica, (report.group, digest));
                }
            }
        }
    }
    let mut health = Health::default();
    for (_, pool) in state.pools() {
        for members in &pool.pg_map {
            let alive = members
                .iter()
                .filter(|m| up.contains_key(&m.replica))
                .count();
            let led = members.iter().any(|m| up.get(&m.replica) == Some(&true));
            if alive == 0 {
                health.pgs_down += 1;
            } else if alive == members.len() && led {
                health.pgs_healthy += 1;
            } else {
                health.pgs_degraded += 1;
            }
            let reports: Vec<(ReplicaId, u64, DigestReport)> = members
                .iter()
                .filter_map(|m| {
                    let (group, digest) = digests.get(&m.replica)?;
                    Some((m.replica, *group, *digest))
                })
                .collect();
            match compare_digests(&reports) {
                Some(Ok(())) => health.pgs_consistent += 1,
                Some(Err(inconsistent)) => {
                    health.pgs_inconsistent += 1;
                    health.inconsistent.push(inconsistent);
                }
                None => {}
            }
        }
    }
    let reported: BTreeMap<DiskId, bool> = fresh
        .values()
        .flat_map(|beat| beat.disks.iter().map(|d| (d.id, d.failure.is_some())))
        .collect();
    for disk in state.disks() {
        match disk.state {
            DiskState::Out => health.disks_out += 1,
            DiskState::In if reported.get(&disk.id) == Some(&true) => health.disks_failed += 1,
            DiskState::In if reported.contains_key(&disk.id) => health.disks_in_reporting += 1,
            DiskState::In => health.disks_in_silent += 1,
        }
    }
    for (node, (age, beat)) in heartbeats {
        health.nodes.push(NodeHealth {
            node: *node,
            age_ms: age.as_millis() as u64,
            fresh: *age <= timeout,
            replicas: beat.replicas.len() as u64,
            leaders: beat.replicas.iter().filter(|r| r.leader).count() as u64,
            used_bytes: beat.disks.iter().map(|d| d.used_bytes).sum(),
            corrupt_blocks: beat.disks.iter().map(|d| d.corrupt_blocks).sum(),
            disks: beat
                .disks
                .iter()
                .map(|d| DiskLatency {
                    id: d.id.to_string(),
                    read_us: d.read_micros.checked_div(d.reads).unwrap_or(0),
                    write_us: d.write_micros.checked_div(d.writes).unwrap_or(0),
                    failure: d.failure.clone(),
                })
                .collect(),
        });
    }
    health.status = health.overall();
    health
}

/// Compares one PG's members' digests at the newest index two or more of them report: `None`
/// if fewer than two can be compared, else whether they agree, with the members that differ
/// if not.
pub(crate) fn compare_digests(
    reports: &[(ReplicaId, u64, DigestReport)],
) -> Option<Result<(), InconsistentPg>> {
    let mut per_index: BTreeMap<u64, Vec<(ReplicaId, u64)>> = BTreeMap::new();
    for (replica, _, digest) in reports {
        per_index
            .entry(digest.index)
            .or_default()
            .push((*replica, digest.value));
    }
    let (index, at) = per_index.into_iter().rev().find(|(_, at)| at.len() >= 2)?;
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, value) in &at {
        *counts.entry(*value).or_default() += 1;
    }
    if counts.len() == 1 {
        return Some(Ok(()));
    }
    let majority = counts
        .iter()
        .find(|(_, count)| **count * 2 > at.len())
        .map(|(value, _)| *value);
    let replicas = at
        .iter()
        .filter(|(_, value)| Some(*value) != majority)
        .map(|(replica, _)| *replica)
        .collect();
    let group = reports.first().map_or(0, |(_, group, _)| *group);
    Some(Err(InconsistentPg {
        group,
        index,
        replicas,
        majority: majority.is_some(),
    }))
}

#[cfg(test)]
mod tests {
    use cairn_common::NodeId;

    use super::*;
    use crate::{
        placement::FailureDomain,
        state::{Command, tests::disk},
    };

    /// Three disks on hosts 1-3, a pool of 4 PGs with 3 replicas each.
    fn cluster() -> MetaState {
        let mut state = MetaState::default();
        for n in 0..3u8 {
            let applied = state.apply(Command::RegisterDisk(disk(n, 1 + u32::from(n))));
            assert!(applied.is_ok());
        }
        let pool = Command::CreatePool {
            name: "p".into(),
            replicas: 3,
            domain: FailureDomain::Host,
            pg_count: 4,
        };
        assert!(state.apply(pool).is_ok());
        state
    }

    /// Each node's heartbeat listing its replicas of every PG; node 1 leads them all.
    fn beats(state: &MetaState, nodes: &[u64]) -> Vec<Heartbeat> {
        let pool = state.pool("p").expect("pool");
        nodes
            .iter()
            .map(|node| Heartbeat {
                node: *node,
                disks: state
                    .disks()
                    .filter(|d| u64::from(d.host.0) == *node)
                    .map(|d| DiskReport {
                        id: d.id,
                        used_bytes: 1 << 20,
                        reads: 1,
                        writes: 2,
                        corrupt_blocks: 0,
                        read_micros: 30,
                        write_micros: 100,
                        failure: None,
                    })
                    .collect(),
                replicas: pool
                    .pg_map
                    .iter()
                    .enumerate()
                    .flat_map(|(i, members)| members.iter().map(move |m| (i, m)))
                    .filter(|(_, m)| m.replica.node() == NodeId(*node))
                    .map(|(i, m)| ReplicaReport {
                        group: i as u64,
                        replica: m.replica,
                        leader: *node == 1,
                        term: 6,
                        commit: 9,
                        applied: 9,
                        voters: Vec::new(),
                        learners: Vec::new(),
                        restoring: false,
                        restored_bytes: 0,
                        needs_replacing: false,
                        pg_bytes: 0,
                        digest: None,
                    })
                    .collect(),
            })
            .collect()
    }

    fn at(age_s: u64, beats: Vec<Heartbeat>) -> BTreeMap<u64, (Duration, Heartbeat)> {
        beats
            .into_iter()
            .map(|b| (b.node, (Duration::from_secs(age_s), b)))
            .collect()
    }

    #[test]
    fn every_member_up_with_a_leader_is_healthy() {
        let state = cluster();
        let health = summarize(
            &state,
            &at(1, beats(&state, &[1, 2, 3])),
            Duration::from_secs(30),
        );
        assert_eq!(
            (health.pgs_healthy, health.pgs_degraded, health.pgs_down),
            (4, 0, 0)
        );
        assert_eq!((health.disks_in_reporting, health.disks_in_silent), (3, 0));
        assert_eq!(health.nodes.len(), 3);
        assert_eq!(health.nodes[0].leaders, 4);
        assert_eq!(health.nodes[0].disks[0].read_us, 30);
        assert_eq!(health.nodes[0].disks[0].write_us, 50);
        assert_eq!(health.status, Overall::Healthy);
        assert_eq!(health.with_settling(1).status, Overall::Recovering);
    }

    /// Goal: a disk its node took out of service counts as failed, names what failed, and
    /// a healthy disk's report leaves the field out (older metadata builds refuse unknown
    /// fields). Method: node 3 reports its disk failed.
    #[test]
    fn a_failed_disk_is_counted_and_named() {
        let state = cluster();
        let mut beats = beats(&state, &[1, 2, 3]);
        let healthy = serde_json::to_string(&beats[0].disks[0]).expect("encode");
        assert!(!healthy.contains("failure"), "{healthy}");
        beats[2].disks[0].failure = Some("write chunks/0: EIO".into());
        let health = summarize(&state, &at(1, beats), Duration::from_secs(30));
        assert_eq!(
            (
                health.disks_in_reporting,
                health.disks_failed,
                health.disks_in_silent
            ),
            (2, 1, 0)
        );
        let failure = health.nodes[2].disks[0].failure.as_deref();
        assert_eq!(failure, Some("write chunks/0: EIO"));
    }

    /// Goal: heartbeats from nodes built before the recovery fields still decode. Method: a
    /// replica report without them.
    #[test]
    fn replica_reports_without_recovery_fields_decode() {
        let old = r#"{"group":4294967296,"replica":1099511627777,"leader":true,"term":2,
            "commit":5,"applied":5}"#;
        let report: ReplicaReport = serde_json::from_str(old).expect("old report");
        assert!(report.voters.is_empty() && report.learners.is_empty());
        assert!(!report.restoring);
        assert_eq!(report.restored_bytes, 0);
        let unknown = old.replace("\"term\"", "\"terms\"");
        assert!(serde_json::from_str::<ReplicaReport>(&unknown).is_err());
    }

    #[test]
    fn a_silent_node_degrades_its_pgs_and_stale_means_silent() {
        let state = cluster();
        let health = summarize(
            &state,
            &at(1, beats(&state, &[1, 2])),
            Duration::from_secs(30),
        );
        assert_eq!((health.pgs_healthy, health.pgs_degraded), (0, 4));
        assert_eq!(health.status, Overall::Degraded);
        assert_eq!(health.disks_in_silent, 1);
        let stale = summarize(
            &state,
            &at(31, beats(&state, &[1, 2, 3])),
            Duration::from_secs(30),
        );
        assert_eq!(stale.pgs_down, 4);
        assert_eq!(stale.clone().with_settling(2).status, Overall::Down);
        assert!(stale.nodes.iter().all(|n| !n.fresh));
        let leaderless = summarize(
            &state,
            &at(1, beats(&state, &[2, 3])),
            Duration::from_secs(30),
        );
        assert_eq!(leaderless.pgs_degraded, 4, "no leader up");
    }

    /// Goal: members whose digests at one index differ make their PG inconsistent (and the
    /// cluster degraded), naming the odd member; digests at different indexes, or from one
    /// member only, are not compared; agreement is healthy.
    #[test]
    fn members_holding_different_contents_are_found() {
        let state = cluster();
        let digest = |index, value| Some(DigestReport { index, value });
        let mut beats = beats(&state, &[1, 2, 3]);
        let none = summarize(&state, &at(1, beats.clone()), Duration::from_secs(30));
        assert_eq!((none.pgs_consistent, none.pgs_inconsistent), (0, 0));
        for beat in &mut beats {
            for report in &mut beat.replicas {
                report.digest = digest(40, 7);
            }
        }
        let healthy = summarize(&state, &at(1, beats.clone()), Duration::from_secs(30));
        assert_eq!((healthy.pgs_consistent, healthy.pgs_inconsistent), (4, 0));
        assert_eq!(healthy.status, Overall::Healthy);
        // Node 3's member of PG 0 differs at index 40.
        let odd = beats[2].replicas[0].replica;
        beats[2].replicas[0].digest = digest(40, 8);
        let health = summarize(&state, &at(1, beats.clone()), Duration::from_secs(30));
        assert_eq!((health.pgs_consistent, health.pgs_inconsistent), (3, 1));
        assert_eq!(health.inconsistent[0].replicas, vec![odd]);
        assert_eq!(health.inconsistent[0].index, 40);
        assert!(health.inconsistent[0].majority);
        assert_eq!(health.status, Overall::Degraded);
        // At a newer index the others have not reached yet: nothing to compare there, and the
        // newest index two members share (40, where they agree) is used.
        beats[2].replicas[0].digest = digest(50, 8);
        let ahead = summarize(&state, &at(1, beats.clone()), Duration::from_secs(30));
        assert_eq!(ahead.pgs_inconsistent, 0);
        // No majority: every member that reported is named.
        beats[2].replicas[0].digest = digest(40, 8);
        beats[1].replicas[0].digest = digest(40, 9);
        let split = summarize(&state, &at(1, beats), Duration::from_secs(30));
        assert_eq!(split.inconsistent[0].replicas.len(), 3);
        assert!(!split.inconsistent[0].majority);
    }

    #[test]
    fn a_node_cannot_report_another_nodes_replicas() {
        let state = cluster();
        let mut forged = beats(&state, &[1, 2, 3]);
        let stolen = forged[2].replicas.clone();
        forged[0].replicas.extend(stolen);
        forged.truncate(2);
        let health = summarize(&state, &at(1, forged), Duration::from_secs(30));
        assert_eq!(
            health.pgs_healthy, 0,
            "node 3's replicas are not up on node 1's word"
        );
    }
}
