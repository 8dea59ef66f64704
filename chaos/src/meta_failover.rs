//! `meta-failover`: a metadata group of real `cairn meta` processes on loopback, a client
//! creating volumes as fast as it can, and kill -9 of the leader, again and again.
//!
//! Phases:
//! 1. failover: every few seconds the leader is killed with SIGKILL and restarted two seconds
//!    later; the time from the kill to the next acknowledged creation must stay under 5 s;
//! 2. with 5 members, two followers die at once and creations must go on;
//! 3. a follower is killed, its data directory wiped, and it comes back with `--join`: it must
//!    catch up by snapshot (the group compacts every few hundred entries).
//!
//! Then every member must list every acknowledged volume exactly once. A creation whose
//! answer was lost (timeout, killed leader) is retried under the same name; a 409 for a name
//! whose earlier attempt was ambiguous means that attempt committed, and counts as
//! acknowledged. The verdict line: `meta-failover: acknowledged=N lost=L duplicated=D`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
    process::Child,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    cluster::{call, credentials, meta_command, post_any},
    free_port,
};

/// A failover slower than this fails the run (the bound).
const FAILOVER_MAX: Duration = Duration::from_secs(5);
const TOKEN: &str = "chaos-admin-token-0123456789";

/// What a run measured.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Creations acknowledged (201, or 409 after an ambiguous attempt).
    pub acknowledged: usize,
    /// Acknowledged volumes missing on some member.
    pub lost: usize,
    /// Names or ids listed more than once on some member.
    pub duplicated: usize,
    /// Leader kills.
    pub kills: usize,
    /// Slowest failover (kill to next acknowledged creation).
    pub failover_max: Duration,
    /// True if the wiped member caught up by snapshot.
    pub wiped_member_restored: bool,
}

/// How to run the scenario.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `cairn` binary.
    pub cairn: PathBuf,
    /// Working directory (data, certificates, logs).
    pub dir: PathBuf,
    /// Members of the group (3 or 5).
    pub members: u64,
    /// Length of the failover phase.
    pub seconds: f64,
}

struct Member {
    id: u64,
    raft: String,
    api: String,
    child: Option<Child>,
}

struct Cluster {
    options: Options,
    members: Vec<Member>,
    agent: ureq::Agent,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .http_status_as_error(false)
        .build()
        .into()
}

impl Cluster {
    fn create(options: Options) -> Result<Cluster, String> {
        credentials(&options.cairn, &options.dir, 1..=options.members, TOKEN)?;
        let mut members = Vec::new();
        for id in 1..=options.members {
            members.push(Member {
                id,
                raft: format!("127.0.0.1:{}", free_port()?),
                api: format!("127.0.0.1:{}", free_port()?),
                child: None,
            });
        }
        let mut cluster = Cluster {
            options,
            members,
            agent: agent(),
        };
        for index in 0..cluster.members.len() {
            cluster.start(index, false)?;
        }
        Ok(cluster)
    }

    /// A new group with three disks on three hosts and a pool `p` over them.
    fn with_pool(options: Options) -> Result<Cluster, String> {
        fs::create_dir_all(&options.dir).map_err(|e| e.to_string())?;
        let cluster = Cluster::create(options)?;
        cluster.wait_for_leader(Duration::from_secs(20))?;
        let setup = Duration::from_secs(15);
        for host in 1..=3u32 {
            let disk = json!({ "id": format!("00000000-0000-0000-0000-00000000000{host}"),
                "host": host, "capacity_bytes": 1u64 << 40 });
            cluster.post("/v1/nodes/disks", &disk, setup)?;
        }
        let pool = json!({ "name": "p", "replicas": 3, "domain": "host", "pg_count": 16 });
        cluster.post("/v1/pools", &pool, setup)?;
        Ok(cluster)
    }

    fn start(&mut self, index: usize, join: bool) -> Result<(), String> {
        let dir = &self.options.dir;
        let member_args: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={},{}", m.id, m.raft, m.api))
            .collect();
        let member = &self.members[index];
        let mut command = meta_command(&self.options.cairn, dir, member.id, &member_args)?;
        command.args(["--tick-ms", "50", "--compact-every", "200"]);
        if join {
            command.arg("--join");
        }
        let child = command
            .spawn()
            .map_err(|e| format!("spawn cairn meta: {e}"))?;
        self.members[index].child = Some(child);
        Ok(())
    }

    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            // SIGKILL: no shutdown path runs.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.api))
            .collect()
    }

    /// The index of the member that says it leads, among those running.
    fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| {
            m.child.is_some()
                && call(
                    &self.agent,
                    &format!("http://{}/v1/cluster/status", m.api),
                    TOKEN,
                    None,
                )
                .is_ok_and(|(_, v)| v["member"]["role"] == "leader")
        })
    }

    fn wait_for_leader(&self, within: Duration) -> Result<usize, String> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(index) = self.leader() {
                return Ok(index);
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(format!("no leader within {within:?}"))
    }

    /// Posts to any member, following the leader, until `deadline`.
    fn post(&self, path: &str, body: &Value, deadline: Duration) -> Result<(u16, Value), String> {
        post_any(&self.agent, &self.urls(), TOKEN, path, body, deadline).map(|(s, v, _)| (s, v))
    }

    fn stop_all(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The client: creates volumes v1, v2, ... until told to stop; records what was acknowledged.
struct Workload {
    acknowledged: Mutex<Vec<(String, Instant)>>,
    stop: AtomicBool,
}

fn workload(agent: ureq::Agent, urls: Vec<String>, shared: Arc<Workload>) {
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let name = format!("v{n}");
        let body = json!({ "name": name, "pool": "p", "size_bytes": 1u64 << 30 });
        let mut ambiguous = false;
        loop {
            if shared.stop.load(Ordering::Relaxed) && !ambiguous {
                return;
            }
            match post_any(
                &agent,
                &urls,
                TOKEN,
                "/v1/volumes",
                &body,
                Duration::from_secs(2),
            ) {
                Ok((201, _, _)) => break,
                // An earlier attempt committed after all.
                Ok((409, _, earlier)) if ambiguous || earlier => break,
                Ok((status, v, _)) if status != 503 => {
                    eprintln!("meta-failover: create {name}: unexpected {status} {v}");
                    return;
                }
                _ => ambiguous = true,
            }
        }
        let mut acked = shared.acknowledged.lock().expect("invariant: not poisoned");
        acked.push((name, Instant::now()));
    }
}

/// Runs the scenario (see the module docs).
pub fn run(options: Options) -> Result<Verdict, String> {
    let mut cluster = Cluster::with_pool(options.clone())?;

    let shared = Arc::new(Workload {
        acknowledged: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let client = {
        let (agent, urls, shared) = (agent(), cluster.urls(), shared.clone());
        thread::spawn(move || workload(agent, urls, shared))
    };
    let mut verdict = Verdict::default();
    let result = faults(&mut cluster, &shared, &mut verdict);
    shared.stop.store(true, Ordering::Relaxed);
    let _ = client.join();
    result?;
    let acknowledged: Vec<String> = shared
        .acknowledged
        .lock()
        .expect("invariant: not poisoned")
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    verdict.acknowledged = acknowledged.len();
    check(&cluster, &acknowledged, &mut verdict)?;
    cluster.stop_all();
    Ok(verdict)
}

fn acked_count(shared: &Workload) -> usize {
    shared
        .acknowledged
        .lock()
        .expect("invariant: not poisoned")
        .len()
}

/// Waits until the client has at least `count` acknowledgements; returns when it happened.
fn wait_acked(shared: &Workload, count: usize, within: Duration) -> Result<Instant, String> {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some((_, at)) = shared
            .acknowledged
            .lock()
            .expect("invariant: not poisoned")
            .get(count - 1)
        {
            return Ok(*at);
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "no progress within {within:?} (waiting for {count} acknowledgements)"
    ))
}

fn faults(cluster: &mut Cluster, shared: &Workload, verdict: &mut Verdict) -> Result<(), String> {
    let start = Instant::now();
    wait_acked(shared, 1, Duration::from_secs(10))?;
    // Phase 1: kill the leader, measure, restart it.
    while start.elapsed().as_secs_f64() < cluster.options.seconds {
        thread::sleep(Duration::from_millis(1500));
        let leader = cluster.wait_for_leader(Duration::from_secs(10))?;
        let before = acked_count(shared);
        let killed_at = Instant::now();
        cluster.kill(leader);
        verdict.kills += 1;
        let acked_at = wait_acked(shared, before + 1, Duration::from_secs(15))?;
        let failover = acked_at.saturating_duration_since(killed_at);
        eprintln!(
            "round {}: killed leader m{}, next acknowledgement after {failover:?}",
            verdict.kills, cluster.members[leader].id
        );
        verdict.failover_max = verdict.failover_max.max(failover);
        thread::sleep(Duration::from_millis(1500));
        cluster.start(leader, false)?;
    }
    if verdict.failover_max > FAILOVER_MAX {
        return Err(format!("a failover took {:?}", verdict.failover_max));
    }
    thread::sleep(Duration::from_secs(2));
    // Phase 2: with five members, two followers die together; the other three go on.
    if cluster.members.len() == 5 {
        let leader = cluster.wait_for_leader(Duration::from_secs(10))?;
        let followers: Vec<usize> = (0..5).filter(|i| *i != leader).take(2).collect();
        for &f in &followers {
            cluster.kill(f);
        }
        let before = acked_count(shared);
        wait_acked(shared, before + 20, Duration::from_secs(10))
            .map_err(|e| format!("with two members down: {e}"))?;
        eprintln!("two followers down: creations go on");
        for &f in &followers {
            cluster.start(f, false)?;
        }
    }
    // Phase 3: a follower loses its disk and rejoins by snapshot.
    let leader = cluster.wait_for_leader(Duration::from_secs(10))?;
    let wiped = (0..cluster.members.len())
        .find(|i| *i != leader)
        .expect("invariant: more than one member");
    cluster.kill(wiped);
    let data = cluster
        .options
        .dir
        .join(format!("m{}", cluster.members[wiped].id));
    fs::remove_dir_all(&data).map_err(|e| format!("wipe {}: {e}", data.display()))?;
    let before = acked_count(shared);
    // Enough creations for the group to compact past everything the wiped member had.
    wait_acked(shared, before + 250, Duration::from_secs(30))?;
    cluster.start(wiped, true)?;
    thread::sleep(Duration::from_secs(3));
    let log = fs::read_to_string(
        cluster
            .options
            .dir
            .join(format!("m{}.log", cluster.members[wiped].id)),
    )
    .unwrap_or_default();
    verdict.wiped_member_restored = log.contains("restored metadata snapshot");
    Ok(())
}

/// Every member lists every acknowledged volume once.
fn check(cluster: &Cluster, acknowledged: &[String], verdict: &mut Verdict) -> Result<(), String> {
    let wanted: BTreeSet<&String> = acknowledged.iter().collect();
    let mut lost = BTreeSet::new();
    for member in &cluster.members {
        let url = format!("http://{}/v1/volumes", member.api);
        // Linearizable: the member answers once it has applied the leader's commit index.
        let start = Instant::now();
        let list = loop {
            match call(&cluster.agent, &url, TOKEN, None) {
                Ok((200, Value::Array(list))) => break list,
                other if start.elapsed() > Duration::from_secs(20) => {
                    return Err(format!("m{}: list volumes: {other:?}", member.id));
                }
                _ => thread::sleep(Duration::from_millis(200)),
            }
        };
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut ids: BTreeMap<String, usize> = BTreeMap::new();
        for volume in &list {
            *names
                .entry(volume["name"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
            *ids.entry(volume["id"].to_string()).or_default() += 1;
        }
        verdict.duplicated += names
            .values()
            .chain(ids.values())
            .filter(|c| **c > 1)
            .count();
        for name in &wanted {
            if !names.contains_key(name.as_str()) {
                lost.insert((member.id, (*name).clone()));
            }
        }
        eprintln!("m{}: {} volumes listed", member.id, list.len());
    }
    verdict.lost = lost.len();
    for (member, name) in lost.iter().take(10) {
        eprintln!("lost: {name} on m{member}");
    }
    Ok(())
}

/// Throughput of a healthy group, for `benches/meta.sh`.
#[derive(Debug, Default)]
pub struct BenchResult {
    /// Volume creations acknowledged per second.
    pub create_ops_per_s: f64,
    /// Linearizable volume reads per second.
    pub read_ops_per_s: f64,
}

/// Runs `clients` concurrent clients against a fresh group: creations for `seconds`, then
/// reads of the created volumes for `seconds`.
pub fn bench(options: Options, clients: usize) -> Result<BenchResult, String> {
    let seconds = options.seconds;
    let mut cluster = Cluster::with_pool(options)?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10))?;
    let leader_url = format!("http://{}", cluster.members[leader].api);
    let duration = Duration::from_secs_f64(seconds);
    let run = |reads: bool| -> Result<f64, String> {
        let start = Instant::now();
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let url = leader_url.clone();
                thread::spawn(move || {
                    let agent = agent();
                    let mut done = 0u64;
                    while start.elapsed() < duration {
                        let name = format!("c{c}-{done}");
                        let ok = if reads {
                            call(&agent, &format!("{url}/v1/volumes/c{c}-0"), TOKEN, None)
                                .is_ok_and(|(s, _)| s == 200)
                        } else {
                            let body =
                                json!({ "name": name, "pool": "p", "size_bytes": 1u64 << 30 });
                            call(&agent, &format!("{url}/v1/volumes"), TOKEN, Some(&body))
                                .is_ok_and(|(s, _)| s == 201)
                        };
                        if !ok {
                            return Err(format!("client {c}: request failed"));
                        }
                        done += 1;
                    }
                    Ok(done)
                })
            })
            .collect();
        let mut total = 0;
        for worker in workers {
            total += worker.join().map_err(|_| "client panicked".to_string())??;
        }
        Ok(total as f64 / start.elapsed().as_secs_f64())
    };
    let create_ops_per_s = run(false)?;
    let read_ops_per_s = run(true)?;
    cluster.stop_all();
    Ok(BenchResult {
        create_ops_per_s,
        read_ops_per_s,
    })
}
