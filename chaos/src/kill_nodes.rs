//! `kill-nodes`: recovery under fire. Three `cairn meta` members (ids 1-3, a node silent for
//! 2 s counts as down) and four `cairn node run` processes (ids 4-7, one disk each) with a
//! 3-replica pool of 8 PGs, host as failure domain; the volume writer of [`crate::dev_kill`]
//! writes through every node's data API while, every second or two, one of the seven
//! processes is SIGKILLed. At most one is down at a time:
//! - mostly a short outage (0.2-1 s) of any process, metadata members included: nothing
//!   moves, the process restarts on its directory and catches up;
//! - about one kill in four a long outage (6-10 s) of a storage node, well past the heartbeat
//!   timeout: the metadata leader's scheduler replaces its PG members on the other nodes (a
//!   new member copies the PG's chunks from the PG's leader, is promoted, the old one
//!   removed). The node then restarts on its directory and finds itself a stale member
//!   whose replicas get dropped, and rebalance gives it its share of PGs back.
//!
//! After the run: nothing is down (every kill restarts before the next), the writer stops,
//! and the cluster must heal, `status == "healthy"` with all 8 PGs healthy, within 120 s. Then
//! every block is checked as `dev-kill` does, and the nodes' unrepaired checksum errors are
//! summed (counters of processes killed meanwhile included: they were scraped just before each
//! kill). The verdict line:
//! `kill-nodes: acknowledged=N lost=L corrupt=C unrepaired=U degraded_pgs=D`, where D is the
//! number of PGs not healthy when the heal ended (0 if it completed); a PG whose members'
//! content digests differ (proposed every 2 s here) is not healthy either. Every kill is logged
//! with its UTC time to stderr and `DIR/kills.log`, to line up with `DIR/<process>.log`; every
//! change of the cluster's health (PG counts, replicas and leaders per node) goes to
//! `DIR/kills.log` too.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    chunkstore_kill::Rng,
    cluster::{
        Cluster, HEARTBEAT_TIMEOUT_S, POOL_PGS, Probe, Role, log_file, pgs_consistent_and_healthy,
    },
    dev_kill::{Endpoints, Verdict, Victim, run_with},
    utc_now,
};

/// Metadata members (ids 1-3): a majority survives one kill.
const METAS: u64 = 3;
/// Storage nodes (ids 4-7): one more than the replicas, so a long-dead node's members have
/// somewhere to go in another failure domain.
const NODES: u64 = 4;
/// One kill in this many is a long outage of a storage node.
const LONG_OUTAGE_ONE_IN: u64 = 4;
/// A short outage lasts this long plus up to `SHORT_OUTAGE_SPREAD_MS` (0.2-1 s): under the
/// heartbeat timeout, so nothing is moved.
const SHORT_OUTAGE_MS_MIN: u64 = 200;
const SHORT_OUTAGE_SPREAD_MS: u64 = 800;
/// A long outage lasts this long plus up to `LONG_OUTAGE_SPREAD_MS` (6-10 s): three heartbeat
/// timeouts and more, so the scheduler (once a second) has declared the node's members lost
/// and moved them before it returns.
const LONG_OUTAGE_MS_MIN: u64 = 6_000;
const LONG_OUTAGE_SPREAD_MS: u64 = 4_000;
/// How long the cluster may take to heal after the run: moves still copying finish (each PG
/// holds a few MiB, under the default restore budget), then rebalance brings members back
/// to a node that was away, at most a few PGs at a time.
pub(crate) const HEAL_DEADLINE: Duration = Duration::from_secs(120);
/// How often the health monitor looks: several looks per heartbeat timeout.
const MONITOR_INTERVAL: Duration = Duration::from_millis(250);

const _: () = assert!(SHORT_OUTAGE_MS_MIN + SHORT_OUTAGE_SPREAD_MS < HEARTBEAT_TIMEOUT_S * 1000);
const _: () = assert!(LONG_OUTAGE_MS_MIN >= 3 * HEARTBEAT_TIMEOUT_S * 1000);

/// What a run measured, beyond the writer's [`Verdict`].
#[derive(Debug, Default)]
pub struct Report {
    /// The writer and checker's verdict.
    pub verdict: Verdict,
    /// Checksum failures no replica could repair, summed over the storage nodes.
    pub unrepaired: u64,
    /// PGs not healthy when the heal ended (0 if it completed).
    pub degraded_pgs: u64,
    /// How long the heal took; `None` if it never completed.
    pub healed_after: Option<Duration>,
    /// Long outages among the kills.
    pub long_outages: u64,
    /// The storage nodes' counters summed (over restarts too), by name.
    pub counters: BTreeMap<String, u64>,
}

struct KillNodes {
    cluster: Cluster,
    notes: Notes,
    kills: u64,
    long_outages: u64,
    /// Counters of storage-node processes since killed, scraped just before their kill.
    counters: BTreeMap<String, u64>,
    healed_after: Option<Duration>,
    /// PGs healthy in the last health seen during the heal.
    pgs_healthy: u64,
}

/// Where a scenario's story goes: `DIR/<file>.log`, lines prefixed with the scenario's name.
#[derive(Clone)]
pub(crate) struct Notes {
    pub(crate) dir: PathBuf,
    pub(crate) scenario: &'static str,
    pub(crate) file: &'static str,
}

impl Notes {
    /// Appends `what` with the time to the log, and prints it on stderr if `loud`.
    pub(crate) fn note(&self, what: &str, loud: bool) {
        let line = format!("{} {}: {what}", utc_now(), self.scenario);
        if loud {
            eprintln!("{line}");
        }
        if let Ok(mut log) = log_file(&self.dir, self.file) {
            let _ = writeln!(log, "{line}");
        }
    }

    /// Notes that `cluster` is up, loudly, and each of its processes quietly.
    pub(crate) fn cluster_up(&self, cluster: &Cluster) {
        self.note(&format!("cluster up in {}", self.dir.display()), true);
        for index in 0..cluster.len() {
            self.note(&cluster.describe(index), false);
        }
    }
}

/// How a heal after a run ended (see [`wait_for_heal`]).
pub(crate) struct Heal {
    /// How long it took; `None` if it never completed.
    pub(crate) after: Option<Duration>,
    /// PGs healthy with agreeing digests in the last health seen.
    pub(crate) pgs_healthy: u64,
}

/// Waits up to [`HEAL_DEADLINE`] for `healed` to hold of the cluster's health, saying how
/// it went in `notes`.
pub(crate) fn wait_for_heal(
    cluster: &Cluster,
    notes: &Notes,
    healed: impl Fn(&Value) -> bool,
) -> Heal {
    notes.note("writer stopped; waiting for the heal", true);
    let started = Instant::now();
    let (done, last) = cluster.wait_health(HEAL_DEADLINE, healed);
    let pgs_healthy = last.as_ref().map_or(0, pgs_consistent_and_healthy);
    let after = done.then(|| started.elapsed());
    match after {
        Some(after) => notes.note(&format!("healed after {after:?}"), true),
        None => {
            let last = last.map_or("none".into(), |h| health_summary(&h));
            notes.note(
                &format!("NOT healed within {HEAL_DEADLINE:?}; last health: {last}"),
                true,
            );
        }
    }
    Heal { after, pgs_healthy }
}

/// Health in one line: the overall word, PG counts, and per node replicas/leaders (or
/// `silent`).
pub(crate) fn health_summary(health: &Value) -> String {
    let nodes: Vec<String> = health["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| match n["fresh"].as_bool() {
            Some(true) => format!("n{}:{}/{}", n["node"], n["replicas"], n["leaders"]),
            _ => format!("n{}:silent", n["node"]),
        })
        .collect();
    format!(
        "health {} healthy={} degraded={} down={} settling={} digests agree={} differ={} \
         replicas/leaders {}",
        health["status"],
        health["pgs_healthy"],
        health["pgs_degraded"],
        health["pgs_down"],
        health["pgs_settling"],
        health["pgs_consistent"],
        health["inconsistent"],
        nodes.join(" ")
    )
}

/// Logs every change of the cluster's health to the notes' log until `stop`.
pub(crate) fn monitor(probe: Probe, notes: Notes, stop: Arc<AtomicBool>) {
    let mut last = String::new();
    while !stop.load(Ordering::Relaxed) {
        let summary = probe.health().map_or_else(
            || "health unknown (no leader answers)".into(),
            |h| health_summary(&h),
        );
        if summary != last {
            notes.note(&summary, false);
            last = summary;
        }
        thread::sleep(MONITOR_INTERVAL);
    }
}

/// Runs `victim` under the writer ([`run_with`]) while [`monitor`] logs the cluster's health
/// changes to `notes`.
pub(crate) fn run_monitored(
    victim: &mut dyn Victim,
    probe: Probe,
    notes: Notes,
    seconds: f64,
    seed: u64,
    name: &'static str,
) -> Result<Verdict, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let stop = stop.clone();
        thread::spawn(move || monitor(probe, notes, stop))
    };
    let verdict = run_with(victim, seconds, seed, name);
    stop.store(true, Ordering::Relaxed);
    monitor.join().map_err(|_| "health monitor panicked")?;
    verdict
}

impl KillNodes {
    fn note(&self, what: &str) {
        self.notes.note(what, true);
    }

    fn add_counters(&mut self, index: usize) {
        match self.cluster.counters(index) {
            Some(counters) => {
                for (name, value) in counters {
                    *self.counters.entry(name).or_default() += value;
                }
            }
            None => self.note(&format!(
                "{}: counters unreadable, left out",
                self.cluster.name(index)
            )),
        }
    }
}

impl Victim for KillNodes {
    fn endpoints(&self) -> Endpoints {
        self.cluster.endpoints()
    }

    fn kill_and_restart(&mut self, rng: &mut Rng) -> Result<(), String> {
        let long = rng.below(LONG_OUTAGE_ONE_IN) == 0;
        let index = if long {
            let nodes = self.cluster.nodes();
            nodes[rng.below(nodes.len() as u64) as usize]
        } else {
            rng.below(self.cluster.len() as u64) as usize
        };
        let outage = if long {
            LONG_OUTAGE_MS_MIN + rng.below(LONG_OUTAGE_SPREAD_MS + 1)
        } else {
            SHORT_OUTAGE_MS_MIN + rng.below(SHORT_OUTAGE_SPREAD_MS + 1)
        };
        if self.cluster.role(index) == Role::Node {
            self.add_counters(index);
        }
        self.cluster.kill(index);
        self.kills += 1;
        self.long_outages += u64::from(long);
        let name = self.cluster.name(index);
        let kind = if long { "long" } else { "short" };
        self.note(&format!(
            "kill {}: SIGKILL {name}, {kind} outage of {outage} ms",
            self.kills
        ));
        thread::sleep(Duration::from_millis(outage));
        self.cluster.spawn(index)?;
        self.note(&format!("restarted {name}"));
        Ok(())
    }

    /// Nothing is down (every kill restarted before returning): waits for the heal.
    fn settle(&mut self, _: &mut Rng) -> Result<u64, String> {
        let heal = wait_for_heal(&self.cluster, &self.notes, |h| {
            h["status"] == "healthy" && h["pgs_healthy"].as_u64() == Some(POOL_PGS)
        });
        (self.healed_after, self.pgs_healthy) = (heal.after, heal.pgs_healthy);
        Ok(0)
    }
}

/// Runs the scenario in `dir` for about `seconds`.
pub fn run(cairn: &Path, dir: &Path, seconds: f64, seed: u64) -> Result<Report, String> {
    let cluster = Cluster::start(cairn, dir, METAS, NODES)?;
    let notes = Notes {
        dir: dir.to_path_buf(),
        scenario: "kill-nodes",
        file: "kills",
    };
    let mut victim = KillNodes {
        cluster,
        notes: notes.clone(),
        kills: 0,
        long_outages: 0,
        counters: BTreeMap::new(),
        healed_after: None,
        pgs_healthy: 0,
    };
    victim.note(&format!("cluster up in {}", dir.display()));
    for index in 0..victim.cluster.len() {
        notes.note(&victim.cluster.describe(index), false);
    }
    let probe = victim.cluster.probe();
    let verdict = run_monitored(&mut victim, probe, notes, seconds, seed, "kill-nodes")?;
    assert_eq!(verdict.kills, victim.kills, "settle kills nothing");
    // After the read-back: the checks may have met checksum errors too.
    for index in victim.cluster.nodes() {
        victim.add_counters(index);
    }
    let counter = |name: &str| victim.counters.get(name).copied().unwrap_or(0);
    Ok(Report {
        unrepaired: counter("cairn_pg_unrepaired_checksum_errors_total"),
        degraded_pgs: POOL_PGS.saturating_sub(victim.pgs_healthy),
        healed_after: victim.healed_after,
        long_outages: victim.long_outages,
        counters: victim.counters.clone(),
        verdict,
    })
}
