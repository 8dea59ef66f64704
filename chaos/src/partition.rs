//! `partition`: the network fails, the processes do not. The `kill-nodes` cluster (three
//! `cairn meta` members, ids 1-3, a node silent for 2 s counts as down; four storage nodes,
//! ids 4-7; a 3-replica pool of 8 PGs, host as failure domain), each process in a network
//! namespace of its own ([`crate::netns`]). The harness reaches every process all along, so
//! the volume writer of [`crate::dev_kill`] and a reader ([`crate::reads`]) keep using every
//! node's data API, including nodes cut off from the rest: the case where a node that lost
//! its PG (a leader on the wrong side) could serve old data or acknowledge writes the
//! majority never saw. Every second or two one cut, then a heal:
//! - one process cut off from every other (half the cuts): mostly 0.5-3 s; one in three of
//!   these, for a storage node, 6-10 s, well past the heartbeat timeout, so the metadata
//!   leader counts it down and its PG members are replaced elsewhere (the run checks that the
//!   leader did see it silent: the cut really cut);
//! - the seven processes split in two, 2 or 3 of them on the minority side (a quarter of the
//!   cuts), 1-5 s: the minority's metadata members cannot elect, its PG members cannot
//!   commit;
//! - two processes cut off from each other only (a quarter), 1-5 s: each still reaches the
//!   rest (a leader whose follower cannot hear it; two metadata members that cannot talk).
//!
//! Cuts drop packets silently, both ways. After the run the last cut is healed, the writer
//! and reader stop, and the cluster must heal (healthy, all 8 PGs healthy with agreeing
//! digests) within 120 s; then every block is checked as `dev-kill` does. The verdict line:
//! `partition: acknowledged=N lost=L corrupt=C unrepaired=U degraded_pgs=D`, where L counts
//! blocks read back wrong plus blocks the reader was served that their writes do not allow
//! (a stale read is one), C blocks the final read could not get, U the nodes' unrepaired
//! checksum errors and D the PGs not healthy when the heal ended. On stderr:
//! `cuts=K long_isolations=I seen_silent=S reads_checked=R reads_refused=F`. It succeeds iff
//! L, C, U and D are 0, N and R are not, and every long isolation was seen silent.

use std::{path::Path, thread, time::Duration};

use crate::{
    chunkstore_kill::Rng,
    cluster::{Cluster, HEARTBEAT_TIMEOUT_S, POOL_PGS, pgs_consistent_and_healthy},
    dev_kill::{Endpoints, Victim, Writes},
    kill_nodes::{Notes, run_monitored, wait_for_heal},
    reads::Reader,
};

/// Metadata members (ids 1-3): a majority survives one on the wrong side.
const METAS: u64 = 3;
/// Storage nodes (ids 4-7): one more than the replicas, so an isolated node's members have
/// somewhere to go.
const NODES: u64 = 4;
/// A short cut lasts this long plus up to `SHORT_CUT_SPREAD_MS`.
const SHORT_CUT_MS_MIN: u64 = 500;
const SHORT_CUT_SPREAD_MS: u64 = 2_500;
/// A split or a cut pair lasts this long plus up to `SPLIT_SPREAD_MS` (1-5 s): under and over
/// the heartbeat timeout.
const SPLIT_MS_MIN: u64 = 1_000;
const SPLIT_SPREAD_MS: u64 = 4_000;
/// A long isolation of a storage node lasts this long plus up to `LONG_CUT_SPREAD_MS`
/// (6-10 s): three heartbeat timeouts and more, so its PG members are moved.
const LONG_CUT_MS_MIN: u64 = 6_000;
const LONG_CUT_SPREAD_MS: u64 = 4_000;
/// One isolation in this many, of a storage node, is long.
const LONG_ONE_IN: u64 = 3;
const _: () = assert!(LONG_CUT_MS_MIN >= 3 * HEARTBEAT_TIMEOUT_S * 1000);

/// One cut: who is cut off from whom, for how long.
#[derive(Debug)]
struct Cut {
    a: Vec<usize>,
    b: Vec<usize>,
    millis: u64,
    /// A storage node isolated long enough to be counted down.
    long: Option<usize>,
    what: String,
}

struct Partition {
    cluster: Cluster,
    notes: Notes,
    cuts: u64,
    long_isolations: u64,
    seen_silent: u64,
    reader: Reader,
    seed: u64,
    healed_after: Option<Duration>,
    /// PGs healthy (digests agreeing) in the last health seen during the heal.
    pgs_healthy: u64,
}

impl Partition {
    fn names(&self, indexes: &[usize]) -> String {
        let names: Vec<String> = indexes.iter().map(|i| self.cluster.name(*i)).collect();
        names.join(",")
    }

    /// Picks the next cut.
    fn pick(&self, rng: &mut Rng) -> Cut {
        let all: Vec<usize> = (0..self.cluster.len()).collect();
        let kind = rng.below(4);
        if kind < 2 {
            let nodes = self.cluster.nodes();
            let long = rng.below(LONG_ONE_IN) == 0;
            let one = if long {
                nodes[rng.below(nodes.len() as u64) as usize]
            } else {
                rng.below(all.len() as u64) as usize
            };
            let rest: Vec<usize> = all.iter().copied().filter(|i| *i != one).collect();
            let millis = if long {
                LONG_CUT_MS_MIN + rng.below(LONG_CUT_SPREAD_MS + 1)
            } else {
                SHORT_CUT_MS_MIN + rng.below(SHORT_CUT_SPREAD_MS + 1)
            };
            let what = format!("{} cut off from the rest", self.cluster.name(one));
            return Cut {
                a: vec![one],
                b: rest,
                millis,
                long: long.then_some(one),
                what,
            };
        }
        let millis = SPLIT_MS_MIN + rng.below(SPLIT_SPREAD_MS + 1);
        let mut shuffled = all.clone();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let (a, b) = if kind == 2 {
            let minority = 2 + rng.below(2) as usize;
            (shuffled[..minority].to_vec(), shuffled[minority..].to_vec())
        } else {
            (vec![shuffled[0]], vec![shuffled[1]])
        };
        let what = if kind == 2 {
            format!("split {} | {}", self.names(&a), self.names(&b))
        } else {
            format!(
                "{} and {} cut off from each other",
                self.names(&a),
                self.names(&b)
            )
        };
        Cut {
            a,
            b,
            millis,
            long: None,
            what,
        }
    }

    /// Whether the metadata leader counts storage node `index` silent now.
    fn silent(&self, index: usize) -> bool {
        let Some(health) = self.cluster.health() else {
            return false;
        };
        let name = self.cluster.name(index);
        health["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| format!("n{}", n["node"]) == name && n["fresh"].as_bool() != Some(true))
    }
}

impl Victim for Partition {
    fn endpoints(&self) -> Endpoints {
        self.cluster.endpoints()
    }

    /// One cut, held, then healed.
    fn kill_and_restart(&mut self, rng: &mut Rng) -> Result<(), String> {
        let cut = self.pick(rng);
        self.cluster.cut(&cut.a, &cut.b)?;
        self.cuts += 1;
        self.notes.note(
            &format!("cut {}: {} for {} ms", self.cuts, cut.what, cut.millis),
            true,
        );
        thread::sleep(Duration::from_millis(cut.millis));
        if let Some(node) = cut.long {
            self.long_isolations += 1;
            if self.silent(node) {
                self.seen_silent += 1;
            } else {
                self.notes.note(
                    &format!(
                        "{} was cut off for {} ms but the metadata leader does not count it silent",
                        self.cluster.name(node),
                        cut.millis
                    ),
                    true,
                );
            }
        }
        self.cluster.heal()?;
        self.notes.note("healed", true);
        Ok(())
    }

    fn writing(&mut self, writes: &Writes) {
        let endpoints = self.cluster.endpoints();
        self.reader.start("partition", endpoints, writes, self.seed);
    }

    /// Every cut is healed (each heals before the next): stops the reader and waits for the
    /// cluster to heal, digests agreeing.
    fn settle(&mut self, _: &mut Rng) -> Result<u64, String> {
        self.reader.stop()?;
        let heal = wait_for_heal(&self.cluster, &self.notes, |h| {
            h["status"] == "healthy" && pgs_consistent_and_healthy(h) == POOL_PGS
        });
        (self.healed_after, self.pgs_healthy) = (heal.after, heal.pgs_healthy);
        Ok(0)
    }
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Writes acknowledged.
    pub acknowledged: u64,
    /// Blocks read back wrong, plus blocks the reader was served that no write allows.
    pub lost: u64,
    /// Blocks the final read could not get.
    pub corrupt: u64,
    /// Unrepaired checksum errors summed over the storage nodes.
    pub unrepaired: u64,
    /// PGs not healthy (or with disagreeing digests) when the heal ended.
    pub degraded_pgs: u64,
    /// Cuts made.
    pub cuts: u64,
    /// Long isolations of a storage node.
    pub long_isolations: u64,
    /// Long isolations the metadata leader counted silent before the heal.
    pub seen_silent: u64,
    /// Reads during the run whose bytes were checked.
    pub reads_checked: u64,
    /// Reads refused (errors, timeouts, anything but 200).
    pub reads_refused: u64,
    /// Writes whose outcome is unknown.
    pub ambiguous: u64,
    /// How long the heal took; `None` if it never completed.
    pub healed_after: Option<Duration>,
}

/// Runs the scenario in `dir` for about `seconds`.
pub fn run(cairn: &Path, dir: &Path, seconds: f64, seed: u64) -> Result<Report, String> {
    let cluster = Cluster::start_partitionable(cairn, dir, METAS, NODES)?;
    let notes = Notes {
        dir: dir.to_path_buf(),
        scenario: "partition",
        file: "cuts",
    };
    notes.cluster_up(&cluster);
    let mut victim = Partition {
        cluster,
        notes: notes.clone(),
        cuts: 0,
        long_isolations: 0,
        seen_silent: 0,
        reader: Reader::default(),
        seed,
        healed_after: None,
        pgs_healthy: 0,
    };
    let probe = victim.cluster.probe();
    let verdict = run_monitored(&mut victim, probe, notes, seconds, seed, "partition");
    let _ = victim.reader.stop();
    let verdict = verdict?;
    let unrepaired = victim.cluster.unrepaired()?;
    let reads = victim.reader.take_tally();
    Ok(Report {
        acknowledged: verdict.acknowledged,
        lost: verdict.lost + reads.bad_blocks,
        corrupt: verdict.corrupt,
        unrepaired,
        degraded_pgs: POOL_PGS.saturating_sub(victim.pgs_healthy),
        cuts: victim.cuts,
        long_isolations: victim.long_isolations,
        seen_silent: victim.seen_silent,
        reads_checked: reads.checked,
        reads_refused: reads.refused,
        ambiguous: verdict.ambiguous,
        healed_after: victim.healed_after,
    })
}
