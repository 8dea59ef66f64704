//! A cluster of real processes on loopback for the scenarios that kill parts of it: `cairn
//! meta` members (ids 1..=M, one group) and `cairn node run` storage nodes (ids M+1.., one disk
//! each unless [`NodeOptions`] say otherwise), one CA, one admin token, and a 3-replica pool [`POOL`] of [`POOL_PGS`] PGs with host
//! as failure domain, created once every disk reports.
//!
//! Each process logs to `DIR/<name>.log` at `CAIRN_LOG=info` (`m<ID>` for members, `n<ID>`
//! for nodes); a restart appends to the same file, so one file tells a process's whole story.
//! Storage nodes reach the metadata group through every member (`CAIRN_ADMIN_URL`, comma
//! separated); only the leader keeps heartbeats, so health is asked of every member.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    dev_kill::{Endpoints, new_agent},
    free_port,
    netns::Net,
};

const TOKEN: &str = "chaos-nodes-token-0123456789";
/// The pool the volume goes in.
pub(crate) const POOL: &str = "p";
/// PGs of the pool: a few per node, so every node leads some and kills hit leaders.
pub(crate) const POOL_PGS: u64 = 8;
/// Seconds without a heartbeat after which the metadata leader counts a storage node as down
/// and its scheduler replaces the node's PG members: short, so moves happen within a run.
pub(crate) const HEARTBEAT_TIMEOUT_S: u64 = 2;
/// Entries a PG logs past its snapshot before it compacts, which flushes every member's chunk
/// store (`--pg-compact-entries`): every few dozen writes, so compactions happen while nodes
/// die.
pub(crate) const PG_COMPACT_ENTRIES: u64 = 16;
/// Seconds between the content digests PG leaders propose (`--pg-digest-secs`): every few
/// seconds, so members' contents are compared while nodes die and at the end of every run.
pub(crate) const PG_DIGEST_SECS: u64 = 2;

/// The PGs a health report counts healthy whose members' digests also agree: one the
/// metadata leader finds inconsistent (members holding different contents) is not healthy,
/// whatever its liveness.
pub(crate) fn pgs_consistent_and_healthy(health: &Value) -> u64 {
    let healthy = health["pgs_healthy"].as_u64().unwrap_or(0);
    let inconsistent = health["pgs_inconsistent"].as_u64().unwrap_or(0);
    healthy.saturating_sub(inconsistent)
}
/// How long a new cluster may take to report every disk and every PG healthy (elections of
/// the metadata group and of each PG, on debug builds sharing two cores).
const SETUP_DEADLINE: Duration = Duration::from_secs(60);
/// How long a process gets to stop after SIGTERM (a storage node flushes its chunk stores).
const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// How long one health question waits: a member that was just killed must not stall a poll.
const HEALTH_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How the storage nodes run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeOptions {
    /// Data directories (disks) per node: `n<ID>/disk`, then `n<ID>/disk1`...
    pub(crate) disks: usize,
    /// `--fault-injection`: every disk behind a fault-injecting engine, and the node's data
    /// API takes `/v1/debug/disk-faults/{disk}`.
    pub(crate) fault_injection: bool,
    /// `--read-cache-mib` (`None`: the node's default).
    pub(crate) read_cache_mib: Option<u64>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            disks: 1,
            fault_injection: false,
            read_cache_mib: None,
        }
    }
}

/// What a process of the cluster is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// A `cairn meta` member.
    Meta,
    /// A `cairn node run` storage node.
    Node,
}

struct Process {
    id: u64,
    role: Role,
    /// Raft port, and the admin API port (members) or data API port (nodes).
    ports: (u16, u16),
    child: Option<Child>,
}

/// The processes: members first, then storage nodes; an index names one.
pub(crate) struct Cluster {
    cairn: PathBuf,
    dir: PathBuf,
    processes: Vec<Process>,
    agent: ureq::Agent,
    /// Set for a cluster whose processes run in network namespaces of their own, to be cut
    /// apart (see [`Cluster::start_partitionable`]); else every process is on loopback.
    net: Option<Net>,
    options: NodeOptions,
}

/// The log file `DIR/<name>.log`, appended to.
pub(crate) fn log_file(dir: &Path, name: &str) -> Result<fs::File, String> {
    fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .map_err(|e| format!("log {name}: {e}"))
}

/// One call with `token`: status and JSON body, or a transport error.
pub(crate) fn call(
    agent: &ureq::Agent,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let auth = format!("Bearer {token}");
    let response = match body {
        Some(body) => agent
            .post(url)
            .header("Authorization", &auth)
            .send_json(body),
        None => agent.get(url).header("Authorization", &auth).call(),
    };
    let mut response = response.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_json::<Value>()
        .unwrap_or(Value::Null);
    Ok((status, body))
}

/// Posts `body` to `path` on any member of `urls`, following the leader's address a 503
/// names, until `deadline`. Also says whether an earlier attempt may have been applied (its
/// answer was lost, or the leader gave up waiting), which makes a later 409 for a creation its
/// success.
pub(crate) fn post_any(
    agent: &ureq::Agent,
    urls: &[String],
    token: &str,
    path: &str,
    body: &Value,
    deadline: Duration,
) -> Result<(u16, Value, bool), String> {
    let mut ambiguous = false;
    let start = Instant::now();
    let mut next = 0;
    let mut leader: Option<String> = None;
    let mut last = String::new();
    while start.elapsed() < deadline {
        let base = leader
            .take()
            .unwrap_or_else(|| urls[next % urls.len()].clone());
        match call(agent, &format!("{base}{path}"), token, Some(body)) {
            Ok((503, v)) => {
                last = v.to_string();
                leader = v["leader_api"].as_str().map(str::to_string);
                // "Not the leader" proposed nothing; a timeout may have.
                ambiguous |= leader.is_none();
                if leader.is_none() {
                    next += 1;
                }
            }
            Ok((status, v)) => return Ok((status, v, ambiguous)),
            Err(e) => {
                last = e;
                ambiguous = true;
                next += 1;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{path}: no answer within {deadline:?}: {last}"))
}

/// A path as a command-line argument.
pub(crate) fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Runs `cairn ARGS...` to completion; its stderr is the error.
pub(crate) fn run_cairn(cairn: &Path, args: &[&str]) -> Result<(), String> {
    let output = Command::new(cairn)
        .args(args)
        .output()
        .map_err(|e| format!("run {}: {e}", cairn.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cairn {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `cairn meta` for member `id` of `members` (`ID=RAFT_ADDR,API_ADDR` each): data in
/// `DIR/m<ID>`, certificates in `DIR/certs`, the token in `DIR/token`, `CAIRN_LOG=info` to
/// `DIR/m<ID>.log`. Callers add their tuning flags.
pub(crate) fn meta_command(
    cairn: &Path,
    dir: &Path,
    id: u64,
    members: &[String],
) -> Result<Command, String> {
    meta_args(Command::new(cairn), dir, id, members)
}

/// [`meta_command`]'s arguments added to `command` (which runs `cairn`).
fn meta_args(
    mut command: Command,
    dir: &Path,
    id: u64,
    members: &[String],
) -> Result<Command, String> {
    command
        .arg("meta")
        .args(["--id", &id.to_string()])
        .args(["--data", &path_str(&dir.join(format!("m{id}")))])
        .args(["--certs", &path_str(&dir.join("certs"))])
        .args(["--token-file", &path_str(&dir.join("token"))])
        .env("CAIRN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file(dir, &format!("m{id}"))?);
    for member in members {
        command.args(["--member", member]);
    }
    Ok(command)
}

/// A CA in `DIR/ca`, a certificate per id in `DIR/certs`, and `token` in `DIR/token`.
pub(crate) fn credentials(
    cairn: &Path,
    dir: &Path,
    ids: impl Iterator<Item = u64>,
    token: &str,
) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let ca = path_str(&dir.join("ca"));
    run_cairn(cairn, &["ca", "init", &ca])?;
    for id in ids {
        let certs = path_str(&dir.join("certs"));
        run_cairn(
            cairn,
            &["ca", "issue", &ca, &id.to_string(), "--out", &certs],
        )?;
    }
    fs::write(dir.join("token"), token).map_err(|e| format!("write token: {e}"))
}

/// Sums Prometheus text samples per metric name (labels dropped). Lines that do not parse are
/// skipped: the counters are diagnostics, and a scrape cut short by a kill is not an error.
fn parse_counters(text: &str) -> BTreeMap<String, u64> {
    let mut counters = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series).trim();
        *counters.entry(name.to_string()).or_default() += value;
    }
    counters
}

impl Cluster {
    /// Starts `metas` members and `nodes` storage nodes in `dir`, creates the pool and waits
    /// until every PG is healthy.
    pub(crate) fn start(cairn: &Path, dir: &Path, metas: u64, nodes: u64) -> Result<Self, String> {
        Self::start_on(cairn, dir, metas, nodes, None, NodeOptions::default())
    }

    /// [`Cluster::start`] with storage nodes run as `options` say.
    pub(crate) fn start_with(
        cairn: &Path,
        dir: &Path,
        metas: u64,
        nodes: u64,
        options: NodeOptions,
    ) -> Result<Self, String> {
        Self::start_on(cairn, dir, metas, nodes, None, options)
    }

    /// [`Cluster::start`] with every process in a network namespace of its own (see
    /// [`crate::netns`]), so that [`Cluster::cut`] can partition them.
    pub(crate) fn start_partitionable(
        cairn: &Path,
        dir: &Path,
        metas: u64,
        nodes: u64,
    ) -> Result<Self, String> {
        let net = Net::create((metas + nodes) as usize)?;
        Self::start_on(cairn, dir, metas, nodes, Some(net), NodeOptions::default())
    }

    fn start_on(
        cairn: &Path,
        dir: &Path,
        metas: u64,
        nodes: u64,
        net: Option<Net>,
        options: NodeOptions,
    ) -> Result<Self, String> {
        assert!(metas >= 1);
        assert!(nodes >= 3, "3 replicas on distinct hosts");
        credentials(cairn, dir, 1..=metas + nodes, TOKEN)?;
        let mut processes = Vec::new();
        for id in 1..=metas + nodes {
            processes.push(Process {
                id,
                role: if id <= metas { Role::Meta } else { Role::Node },
                ports: (free_port()?, free_port()?),
                child: None,
            });
        }
        let mut cluster = Cluster {
            cairn: cairn.to_path_buf(),
            dir: dir.to_path_buf(),
            processes,
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(HEALTH_CALL_TIMEOUT))
                .http_status_as_error(false)
                .build()
                .into(),
            net,
            options,
        };
        for index in 0..cluster.len() {
            cluster.spawn(index)?;
        }
        let (reporting, last) = cluster.wait_health(SETUP_DEADLINE, |h| {
            h["disks_in_reporting"].as_u64() == Some(nodes * options.disks as u64)
        });
        if !reporting {
            return Err(format!("the disks never all reported: {last:?}"));
        }
        let pool = json!({
            "name": POOL, "replicas": 3, "domain": "host", "pg_count": POOL_PGS
        });
        let endpoints = cluster.endpoints();
        let (status, body, _) = post_any(
            &new_agent(),
            &endpoints.admin_urls,
            &endpoints.token,
            "/v1/pools",
            &pool,
            SETUP_DEADLINE,
        )?;
        if status != 201 {
            return Err(format!("create pool: HTTP {status} {body}"));
        }
        let (healthy, last) = cluster.wait_health(SETUP_DEADLINE, |h| {
            h["pgs_healthy"].as_u64() == Some(POOL_PGS)
        });
        if !healthy {
            return Err(format!("the new pool never got healthy: {last:?}"));
        }
        Ok(cluster)
    }

    /// Processes, members and nodes.
    pub(crate) fn len(&self) -> usize {
        self.processes.len()
    }

    pub(crate) fn role(&self, index: usize) -> Role {
        self.processes[index].role
    }

    /// Indexes of the storage nodes.
    pub(crate) fn nodes(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|i| self.role(*i) == Role::Node)
            .collect()
    }

    /// `m<ID>` or `n<ID>`: the name of its log and directory.
    pub(crate) fn name(&self, index: usize) -> String {
        let process = &self.processes[index];
        match process.role {
            Role::Meta => format!("m{}", process.id),
            Role::Node => format!("n{}", process.id),
        }
    }

    /// Process `index`'s address: its namespace's, or loopback.
    fn host(&self, index: usize) -> String {
        match &self.net {
            Some(net) => net.address(index),
            None => "127.0.0.1".into(),
        }
    }

    /// Where process `index` listens: `n5 raft 127.0.0.1:P data http://127.0.0.1:Q`.
    pub(crate) fn describe(&self, index: usize) -> String {
        let (raft, api) = self.processes[index].ports;
        let kind = match self.role(index) {
            Role::Meta => "admin",
            Role::Node => "data",
        };
        let host = self.host(index);
        format!(
            "{} raft {host}:{raft} {kind} http://{host}:{api}",
            self.name(index)
        )
    }

    /// Disk `disk` (0-based) of storage node `index`: its data directory.
    pub(crate) fn disk_dir(&self, index: usize, disk: usize) -> PathBuf {
        let node_dir = self.dir.join(self.name(index));
        match disk {
            0 => node_dir.join("disk"),
            k => node_dir.join(format!("disk{k}")),
        }
    }

    /// Process `index`'s API: the admin API of a member, the data API of a node.
    pub(crate) fn api_url(&self, index: usize) -> String {
        format!(
            "http://{}:{}",
            self.host(index),
            self.processes[index].ports.1
        )
    }

    pub(crate) fn admin_urls(&self) -> Vec<String> {
        (0..self.len())
            .filter(|i| self.role(*i) == Role::Meta)
            .map(|i| self.api_url(i))
            .collect()
    }

    /// Cuts processes `a` off from processes `b`, both ways, until [`Cluster::heal`]. Only
    /// for a cluster made by [`Cluster::start_partitionable`].
    pub(crate) fn cut(&self, a: &[usize], b: &[usize]) -> Result<(), String> {
        self.net
            .as_ref()
            .ok_or("not a partitionable cluster")?
            .cut(a, b)
    }

    /// Ends every cut.
    pub(crate) fn heal(&self) -> Result<(), String> {
        self.net
            .as_ref()
            .ok_or("not a partitionable cluster")?
            .heal()
    }

    /// Where the writer and checker of [`crate::dev_kill`] go.
    pub(crate) fn endpoints(&self) -> Endpoints {
        Endpoints {
            admin_urls: self.admin_urls(),
            data_urls: self.nodes().iter().map(|i| self.api_url(*i)).collect(),
            token: TOKEN.into(),
            pool: POOL,
        }
    }

    /// Starts process `index` on its directory (new or left by an earlier run).
    pub(crate) fn spawn(&mut self, index: usize) -> Result<(), String> {
        assert!(
            self.processes[index].child.is_none(),
            "one process per index"
        );
        let (id, (raft, api)) = (self.processes[index].id, self.processes[index].ports);
        let name = self.name(index);
        let host = self.host(index);
        // In a namespace: `ip netns exec NS cairn ...`, which execs cairn (one pid to kill).
        let cairn = match &self.net {
            Some(net) => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", &net.namespace(index)])
                    .arg(&self.cairn);
                command
            }
            None => Command::new(&self.cairn),
        };
        let mut command = match self.role(index) {
            Role::Meta => {
                let members: Vec<String> = (0..self.len())
                    .filter(|i| self.role(*i) == Role::Meta)
                    .map(|i| {
                        let (p, h) = (&self.processes[i], self.host(i));
                        format!("{}={h}:{},{h}:{}", p.id, p.ports.0, p.ports.1)
                    })
                    .collect();
                let mut command = meta_args(cairn, &self.dir, id, &members)?;
                // Fast elections (20 ms ticks) and a short heartbeat timeout.
                let timeout = HEARTBEAT_TIMEOUT_S.to_string();
                command.args(["--tick-ms", "20", "--heartbeat-timeout-s", &timeout]);
                command
            }
            Role::Node => {
                let node_dir = self.dir.join(&name);
                let mut command = cairn;
                command
                    .args(["node", "run", "--id", &id.to_string()])
                    .args(["--data", &path_str(&node_dir)]);
                for disk in 0..self.options.disks {
                    command.args(["--disk", &path_str(&self.disk_dir(index, disk))]);
                }
                if self.options.fault_injection {
                    command.arg("--fault-injection");
                }
                if let Some(mib) = self.options.read_cache_mib {
                    command.args(["--read-cache-mib", &mib.to_string()]);
                }
                command
                    .args(["--raft-listen", &format!("{host}:{raft}")])
                    .args(["--data-listen", &format!("{host}:{api}")])
                    .args(["--certs", &path_str(&self.dir.join("certs"))])
                    .args(["--token-file", &path_str(&self.dir.join("token"))])
                    .args(["--pg-compact-entries", &PG_COMPACT_ENTRIES.to_string()])
                    .args(["--pg-digest-secs", &PG_DIGEST_SECS.to_string()])
                    .env("CAIRN_ADMIN_URL", self.admin_urls().join(","))
                    .env("CAIRN_LOG", "info")
                    .stdout(Stdio::null())
                    .stderr(log_file(&self.dir, &name)?);
                command
            }
        };
        let child = command.spawn().map_err(|e| format!("spawn {name}: {e}"))?;
        self.processes[index].child = Some(child);
        Ok(())
    }

    /// Stops process `index` cleanly if it runs: SIGTERM (a storage node flushes its chunk
    /// stores, then exits), then waits for it, SIGKILLing it after `STOP_DEADLINE`.
    pub(crate) fn stop(&mut self, index: usize) -> Result<(), String> {
        let Some(mut child) = self.processes[index].child.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(child.id()).map_err(|e| format!("pid: {e}"))?;
        // SAFETY: kill(2) with a pid this harness spawned and has not reaped yet.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) } == 0;
        let deadline = std::time::Instant::now() + STOP_DEADLINE;
        while sent && std::time::Instant::now() < deadline {
            if let Ok(Some(exit)) = child.try_wait() {
                return exit
                    .success()
                    .then_some(())
                    .ok_or_else(|| format!("{} stopped with {exit}", self.name(index)));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!("{} did not stop on SIGTERM", self.name(index)))
    }

    /// SIGKILLs process `index` (no shutdown path runs) if it runs.
    pub(crate) fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.processes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the metadata members for health, from any thread.
    pub(crate) fn probe(&self) -> Probe {
        Probe {
            admin_urls: self.admin_urls(),
            agent: self.agent.clone(),
        }
    }

    /// The metadata leader's health (see [`Probe::health`]).
    pub(crate) fn health(&self) -> Option<Value> {
        self.probe().health()
    }

    /// Polls health until `done` holds or `within` passes; says which, with the last health
    /// seen.
    pub(crate) fn wait_health(
        &self,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> (bool, Option<Value>) {
        let started = Instant::now();
        let mut last = None;
        loop {
            if let Some(health) = self.health() {
                let ok = done(&health);
                last = Some(health);
                if ok {
                    return (true, last);
                }
            }
            if started.elapsed() > within {
                return (false, last);
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The storage nodes' checksum errors no replica could repair, summed over the nodes
    /// running now; an error if one does not answer.
    pub(crate) fn unrepaired(&self) -> Result<u64, String> {
        let mut sum = 0;
        for index in self.nodes() {
            let counters = self
                .counters(index)
                .ok_or_else(|| format!("{}: counters unreadable", self.name(index)))?;
            let counter = counters.get("cairn_pg_unrepaired_checksum_errors_total");
            sum += counter.copied().unwrap_or(0);
        }
        Ok(sum)
    }

    /// Posts `body` to `path` on storage node `index`'s data API: status and JSON body.
    pub(crate) fn post_node(
        &self,
        index: usize,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value), String> {
        assert_eq!(self.role(index), Role::Node);
        let url = format!("{}{path}", self.api_url(index));
        call(&self.agent, &url, TOKEN, Some(body))
    }

    /// Storage node `index`'s Prometheus counters, summed per name; `None` if it does not
    /// answer.
    pub(crate) fn counters(&self, index: usize) -> Option<BTreeMap<String, u64>> {
        assert_eq!(self.role(index), Role::Node);
        let url = format!("{}/metrics", self.api_url(index));
        let mut response = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .ok()?;
        if response.status().as_u16() != 200 {
            return None;
        }
        let text = response.body_mut().read_to_string().ok()?;
        Some(parse_counters(&text))
    }
}

/// Health questions to the metadata members.
#[derive(Clone)]
pub(crate) struct Probe {
    admin_urls: Vec<String>,
    agent: ureq::Agent,
}

impl Probe {
    /// The metadata leader's health, from whichever member reports one (followers report
    /// null; a member that is down refuses the connection at once).
    pub(crate) fn health(&self) -> Option<Value> {
        self.admin_urls.iter().find_map(|url| {
            let mut response = self
                .agent
                .get(&format!("{url}/v1/cluster/status"))
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .call()
                .ok()?;
            let status = response.body_mut().read_json::<Value>().ok()?;
            let health = &status["health"];
            (!health.is_null()).then(|| health.clone())
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Storage nodes first: a node outliving the metadata group only logs retries.
        for index in (0..self.len()).rev() {
            self.kill(index);
        }
        // `net`, the last field, drops after this: the namespaces go after their processes.
    }
}

#[cfg(test)]
mod tests {
    use super::parse_counters;

    #[test]
    fn counters_sum_over_labels_and_skip_comments() {
        let text = "# HELP a x\n# TYPE a counter\na 3\nb{disk=\"1\"} 2\nb{disk=\"2\"} 5\nc nan\n";
        let counters = parse_counters(text);
        assert_eq!(counters.get("a"), Some(&3));
        assert_eq!(counters.get("b"), Some(&7));
        assert_eq!(counters.get("c"), None);
    }
}
