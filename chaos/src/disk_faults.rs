//! `disk-faults`: disks fail under load. Three `cairn meta` members (ids 1-3) and four storage
//! nodes (ids 4-7) with two disks each, every disk behind a fault-injecting engine (`cairn
//! node run --fault-injection`); a 3-replica pool of 8 PGs over the 8 disks, host as failure
//! domain. The volume writer of [`crate::dev_kill`] and a reader ([`crate::reads`]) run
//! throughout. One disk at a time starts failing: through the node's
//! `/v1/debug/disk-faults/{disk}`, every write to it (half the faults), every read (a
//! quarter) or every fdatasync (a quarter) fails with EIO from then on, as a dying disk
//! does. The node must take the disk out of service and report it failed: the run fails
//! unless the metadata leader's health names it failed within [`FAULT_SEEN_DEADLINE`] (a
//! read fault fires when the reader or the scrub reads the disk, a sync fault at the next
//! compaction's flush, every 16 entries of a PG). Its PG members move at once, to the node's
//! other disk or to another node, and the node's other disk serves on. After 2-4 s the disk
//! is dealt with as an operator would, alternately (the first fault's disk is replaced): the
//! node restarts with the disk as it was (a transient fault: a reset controller, a loose
//! cable), or the disk is replaced: the node is killed, the disk's directory emptied (a new, blank disk, formatted
//! at the start under a new id), the old disk marked out, and the node restarted.
//! Before each fault the cluster must be healthy again (within [`HEAL_DEADLINE`]): three
//! replicas promise to survive one failure per recovery, not two at once.
//!
//! After the run the writer and reader stop, the cluster must heal (healthy, all 8 PGs
//! healthy with agreeing digests), and every block is checked as `dev-kill` does. The verdict
//! line: `disk-faults: acknowledged=N lost=L corrupt=C unrepaired=U degraded_pgs=D` (L
//! counts blocks read back wrong plus blocks the reader was served that no write allows);
//! on stderr `faults=K seen_failed=S replaced=R reads_checked=C reads_refused=F`. It
//! succeeds iff L, C, U and D are 0, N is not, K is not and S equals K. `DIR/faults.log`
//! tells each fault and repair with its UTC time.

use std::{
    collections::BTreeSet,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    chunkstore_kill::Rng,
    cluster::{
        Cluster, HEARTBEAT_TIMEOUT_S, NodeOptions, POOL_PGS, call, pgs_consistent_and_healthy,
        post_any,
    },
    dev_kill::{Endpoints, Victim, Writes, new_agent},
    kill_nodes::{HEAL_DEADLINE, Notes, run_monitored, wait_for_heal},
    reads::Reader,
};

/// Metadata members (ids 1-3).
const METAS: u64 = 3;
/// Storage nodes (ids 4-7).
const NODES: u64 = 4;
/// Disks per storage node: a node with a failed disk still has one that serves.
const DISKS: usize = 2;
/// How long a node and the metadata leader may take to see an injected fault fire: a read
/// or sync fault waits for a read of the disk or a flush.
const FAULT_SEEN_DEADLINE: Duration = Duration::from_secs(20);
/// A failed disk stays as it is this long plus up to `HOLD_SPREAD_MS` before it is dealt with.
const HOLD_MS_MIN: u64 = 2_000;
const HOLD_SPREAD_MS: u64 = 2_000;

/// What a run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Writes acknowledged.
    pub acknowledged: u64,
    /// Blocks read back wrong, plus blocks the reader was served that no write allows.
    pub lost: u64,
    /// Blocks the final read could not get.
    pub corrupt: u64,
    /// Unrepaired checksum errors summed over the storage nodes (and their restarts).
    pub unrepaired: u64,
    /// PGs not healthy (or with disagreeing digests) when the heal ended.
    pub degraded_pgs: u64,
    /// Faults injected.
    pub faults: u64,
    /// Faults the metadata leader saw as a failed disk.
    pub seen_failed: u64,
    /// Failed disks replaced by blank ones (the rest came back as they were).
    pub replaced: u64,
    /// Reads during the run whose bytes were checked.
    pub reads_checked: u64,
    /// Reads refused (errors, timeouts, anything but 200).
    pub reads_refused: u64,
    /// Writes whose outcome is unknown.
    pub ambiguous: u64,
    /// How long the final heal took; `None` if it never completed.
    pub healed_after: Option<Duration>,
}

struct DiskFaults {
    cluster: Cluster,
    notes: Notes,
    faults: u64,
    seen_failed: u64,
    replaced: u64,
    /// Unrepaired checksum errors of node processes since killed, scraped before each kill.
    unrepaired: u64,
    reader: Reader,
    seed: u64,
    healed_after: Option<Duration>,
    pgs_healthy: u64,
}

/// Whether `health` names `disk` failed.
fn seen_failed(health: &Value, disk: &str) -> bool {
    let nodes = health["nodes"].as_array().into_iter().flatten();
    nodes
        .flat_map(|n| n["disks"].as_array().into_iter().flatten())
        .any(|d| d["id"] == disk && d["failure"].is_string())
}

impl DiskFaults {
    fn note(&self, what: &str) {
        self.notes.note(what, true);
    }

    fn unrepaired_of(&self, index: usize) -> u64 {
        let counters = self.cluster.counters(index).unwrap_or_default();
        let counter = counters.get("cairn_pg_unrepaired_checksum_errors_total");
        counter.copied().unwrap_or(0)
    }

    /// SIGKILLs storage node `index`, keeping its counters.
    fn kill(&mut self, index: usize) {
        self.unrepaired += self.unrepaired_of(index);
        self.cluster.kill(index);
    }

    /// The id of disk `disk` of node `index`, from its label.
    fn disk_id(&self, index: usize, disk: usize) -> Result<String, String> {
        let dir = self.cluster.disk_dir(index, disk);
        match cairn_storage_node::label::read(&dir) {
            Ok(Some(label)) => Ok(label.disk_id.to_string()),
            Ok(None) => Err(format!("{}: no disk label", dir.display())),
            Err(e) => Err(format!("{}: {e}", dir.display())),
        }
    }

    /// The disks the pool's PG map places members on.
    fn member_disks(&self) -> Result<BTreeSet<String>, String> {
        let endpoints = self.cluster.endpoints();
        let agent = new_agent();
        for url in &endpoints.admin_urls {
            let path = format!("{url}/v1/pools/{}", endpoints.pool);
            let Ok((200, pool)) = call(&agent, &path, &endpoints.token, None) else {
                continue;
            };
            let members = pool["pg_map"].as_array().into_iter().flatten();
            let members = members.flat_map(|m| m.as_array().into_iter().flatten());
            return Ok(members
                .filter_map(|m| Some(m["disk"].as_str()?.to_string()))
                .collect());
        }
        Err("no metadata member answered for the PG map".into())
    }

    /// Replaces disk `disk` of node `index` (down) by a blank one, and marks the old one
    /// out as its operator would.
    fn replace(&mut self, index: usize, disk: usize, old: &str) -> Result<(), String> {
        let dir = self.cluster.disk_dir(index, disk);
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let endpoints = self.cluster.endpoints();
        let (status, body, _) = post_any(
            &new_agent(),
            &endpoints.admin_urls,
            &endpoints.token,
            &format!("/v1/nodes/disks/{old}/state"),
            &json!({ "state": "out" }),
            HEAL_DEADLINE,
        )?;
        if status != 200 {
            return Err(format!("mark disk {old} out: HTTP {status} {body}"));
        }
        self.replaced += 1;
        Ok(())
    }
}

impl Victim for DiskFaults {
    fn endpoints(&self) -> Endpoints {
        self.cluster.endpoints()
    }

    /// Waits for health, fails one disk, holds, then restarts its node with the disk as it
    /// was or with a blank one.
    fn kill_and_restart(&mut self, rng: &mut Rng) -> Result<(), String> {
        let (healthy, last) = self.cluster.wait_health(HEAL_DEADLINE, |h| {
            h["status"] == "healthy" && h["pgs_healthy"].as_u64() == Some(POOL_PGS)
        });
        if !healthy {
            return Err(format!(
                "not healthy before the next fault within {HEAL_DEADLINE:?}: {last:?}"
            ));
        }
        // A disk holding PG members: a blank disk rebalance has not filled yet sees no IO, and
        // its fault would never fire.
        let holding = self.member_disks()?;
        let mut candidates = Vec::new();
        for index in self.cluster.nodes() {
            for disk in 0..DISKS {
                let id = self.disk_id(index, disk)?;
                if holding.contains(&id) {
                    candidates.push((index, disk, id));
                }
            }
        }
        if candidates.is_empty() {
            return Err("no disk holds a PG member".into());
        }
        let (index, disk, id) = candidates.swap_remove(rng.below(candidates.len() as u64) as usize);
        let fault = match rng.below(4) {
            0 | 1 => "write-error",
            2 => "read-error",
            _ => "sync-error",
        };
        let name = self.cluster.name(index);
        let path = format!("/v1/debug/disk-faults/{id}");
        let (status, body) = self
            .cluster
            .post_node(index, &path, &json!({ "fault": fault }))?;
        if status != 200 {
            return Err(format!("inject {fault} on {name}: HTTP {status} {body}"));
        }
        self.faults += 1;
        self.note(&format!(
            "fault {}: every {fault} on {name} disk {disk} ({id})",
            self.faults
        ));
        let started = Instant::now();
        let (seen, _) = self
            .cluster
            .wait_health(FAULT_SEEN_DEADLINE, |h| seen_failed(h, &id));
        if seen {
            self.seen_failed += 1;
            self.note(&format!(
                "disk {id} seen failed after {:?}",
                started.elapsed()
            ));
        } else {
            self.note(&format!(
                "disk {id} NOT seen failed within {FAULT_SEEN_DEADLINE:?}"
            ));
        }
        thread::sleep(Duration::from_millis(
            HOLD_MS_MIN + rng.below(HOLD_SPREAD_MS + 1),
        ));
        self.kill(index);
        // Alternately, the first one replaced: every run, however short, sees both.
        if self.faults % 2 == 1 {
            self.replace(index, disk, &id)?;
            self.note(&format!(
                "{name} killed, disk {disk} replaced by a blank one ({id} marked out)"
            ));
        } else {
            self.note(&format!("{name} killed; its disk comes back as it was"));
        }
        self.cluster.spawn(index)?;
        // Its data API answers before the next fault may be injected through it.
        let started = Instant::now();
        while self.cluster.counters(index).is_none() {
            if started.elapsed() > HEAL_DEADLINE {
                return Err(format!("{name} did not come back within {HEAL_DEADLINE:?}"));
            }
            thread::sleep(Duration::from_millis(100));
        }
        self.note(&format!("restarted {name}"));
        Ok(())
    }

    fn writing(&mut self, writes: &Writes) {
        let endpoints = self.cluster.endpoints();
        self.reader
            .start("disk-faults", endpoints, writes, self.seed);
    }

    /// Every failed disk was dealt with: stops the reader and waits for the heal, judged
    /// once the last restart shows in the health (before, the restarted node's last
    /// heartbeats still counted it up).
    fn settle(&mut self, _: &mut Rng) -> Result<u64, String> {
        self.reader.stop()?;
        thread::sleep(Duration::from_secs(HEARTBEAT_TIMEOUT_S + 1));
        let heal = wait_for_heal(&self.cluster, &self.notes, |h| {
            h["status"] == "healthy" && pgs_consistent_and_healthy(h) == POOL_PGS
        });
        (self.healed_after, self.pgs_healthy) = (heal.after, heal.pgs_healthy);
        Ok(0)
    }
}

/// Runs the scenario in `dir` for about `seconds`.
pub fn run(cairn: &Path, dir: &Path, seconds: f64, seed: u64) -> Result<Report, String> {
    let options = NodeOptions {
        disks: DISKS,
        fault_injection: true,
        ..NodeOptions::default()
    };
    let cluster = Cluster::start_with(cairn, dir, METAS, NODES, options)?;
    let notes = Notes {
        dir: dir.to_path_buf(),
        scenario: "disk-faults",
        file: "faults",
    };
    notes.cluster_up(&cluster);
    let mut victim = DiskFaults {
        cluster,
        notes: notes.clone(),
        faults: 0,
        seen_failed: 0,
        replaced: 0,
        unrepaired: 0,
        reader: Reader::default(),
        seed,
        healed_after: None,
        pgs_healthy: 0,
    };
    let probe = victim.cluster.probe();
    let verdict = run_monitored(&mut victim, probe, notes, seconds, seed, "disk-faults");
    let _ = victim.reader.stop();
    let verdict = verdict?;
    let unrepaired = victim.unrepaired + victim.cluster.unrepaired()?;
    let reads = victim.reader.take_tally();
    Ok(Report {
        acknowledged: verdict.acknowledged,
        lost: verdict.lost + reads.bad_blocks,
        corrupt: verdict.corrupt,
        unrepaired,
        degraded_pgs: POOL_PGS.saturating_sub(victim.pgs_healthy),
        faults: victim.faults,
        seen_failed: victim.seen_failed,
        replaced: victim.replaced,
        reads_checked: reads.checked,
        reads_refused: reads.refused,
        ambiguous: verdict.ambiguous,
        healed_after: victim.healed_after,
    })
}
