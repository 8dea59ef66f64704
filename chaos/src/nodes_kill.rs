//! `nodes-kill`: a metadata member and three `cairn node run` processes (one disk each, a
//! 3-replica pool with host as failure domain); a client writes a volume through the nodes'
//! data APIs while one storage node at a time is killed with SIGKILL and restarted. Afterwards
//! every block must hold its last acknowledged content (the checks of [`crate::dev_kill`]).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    chunkstore_kill::Rng,
    dev_kill::{Verdict, Victim, new_agent, run_with},
    free_port,
};

const TOKEN: &str = "chaos-nodes-token-0123456789";
/// Storage nodes (ids 2, 3, 4; the metadata member is node 1).
const NODES: u64 = 3;
/// How long the cluster may take to report healthy.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(60);

struct Nodes {
    cairn: PathBuf,
    dir: PathBuf,
    meta: Option<Child>,
    meta_api: String,
    nodes: Vec<Option<Child>>,
    ports: Vec<(u16, u16)>,
}

impl Nodes {
    fn log(&self, name: &str) -> Result<fs::File, String> {
        fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .map_err(|e| format!("log: {e}"))
    }

    fn start_node(&mut self, index: usize) -> Result<(), String> {
        let id = 2 + index as u64;
        let node_dir = self.dir.join(format!("n{id}"));
        let (raft, data) = self.ports[index];
        let child = Command::new(&self.cairn)
            .args(["node", "run", "--id", &id.to_string(), "--data"])
            .arg(&node_dir)
            .arg("--disk")
            .arg(node_dir.join("disk"))
            .args(["--raft-listen", &format!("127.0.0.1:{raft}")])
            .args(["--data-listen", &format!("127.0.0.1:{data}")])
            .arg("--certs")
            .arg(self.dir.join("certs"))
            .arg("--token-file")
            .arg(self.dir.join("token"))
            // Compactions every few dozen writes, so they happen while nodes die.
            .args(["--pg-compact-entries", "16"])
            .env("CAIRN_ADMIN_URL", &self.meta_api)
            .env("CAIRN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(self.log(&format!("n{id}"))?)
            .spawn()
            .map_err(|e| format!("spawn node {id}: {e}"))?;
        self.nodes[index] = Some(child);
        Ok(())
    }

    fn kill_node(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Polls the cluster status until `done` holds for its health.
    fn wait_health(&self, what: &str, done: impl Fn(&Value) -> bool) -> Result<(), String> {
        let agent = new_agent();
        let started = Instant::now();
        loop {
            let status = agent
                .get(&format!("{}/v1/cluster/status", self.meta_api))
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok());
            if status.is_some_and(|s| done(&s["health"])) {
                return Ok(());
            }
            if started.elapsed() > HEALTHY_DEADLINE {
                return Err(format!("the cluster never got {what}"));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill_node(index);
        }
        if let Some(mut meta) = self.meta.take() {
            let _ = meta.kill();
            let _ = meta.wait();
        }
    }
}

impl Victim for Nodes {
    fn admin_url(&self) -> String {
        self.meta_api.clone()
    }
    fn data_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|(_, data)| format!("http://127.0.0.1:{data}"))
            .collect()
    }
    fn token(&self) -> String {
        TOKEN.into()
    }
    fn pool(&self) -> &'static str {
        "p"
    }
    fn kill_and_restart(&mut self, rng: &mut Rng) -> Result<(), String> {
        let index = rng.below(NODES) as usize;
        self.kill_node(index);
        // Down for a while: writes go on with two replicas of three.
        thread::sleep(Duration::from_millis(200 + rng.below(800)));
        self.start_node(index)
    }
}

/// Runs the scenario in `dir` for about `seconds`.
pub fn run(cairn: &Path, dir: &Path, seconds: f64, seed: u64) -> Result<Verdict, String> {
    fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let run_cairn = |args: &[&str]| -> Result<(), String> {
        let status = Command::new(cairn)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cairn {args:?}: {e}"))?;
        status
            .success()
            .then_some(())
            .ok_or_else(|| format!("cairn {args:?} failed"))
    };
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    run_cairn(&["ca", "init", &path("ca")])?;
    for id in 1..=1 + NODES {
        run_cairn(&[
            "ca",
            "issue",
            &path("ca"),
            &id.to_string(),
            "--out",
            &path("certs"),
        ])?;
    }
    fs::write(dir.join("token"), TOKEN).map_err(|e| e.to_string())?;
    let api = format!("127.0.0.1:{}", free_port()?);
    let member = format!("1=127.0.0.1:{},{api}", free_port()?);
    let mut cluster = Nodes {
        cairn: cairn.to_path_buf(),
        dir: dir.to_path_buf(),
        meta: None,
        meta_api: format!("http://{api}"),
        nodes: (0..NODES).map(|_| None).collect(),
        ports: (0..NODES)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_, String>>()?,
    };
    let meta = Command::new(cairn)
        .args([
            "meta",
            "--id",
            "1",
            "--data",
            &path("meta"),
            "--certs",
            &path("certs"),
        ])
        .args(["--token-file", &path("token"), "--member", &member])
        .args(["--tick-ms", "20", "--heartbeat-timeout-s", "2"])
        .stdout(Stdio::null())
        .stderr(cluster.log("meta")?)
        .spawn()
        .map_err(|e| format!("spawn meta: {e}"))?;
    cluster.meta = Some(meta);
    for index in 0..NODES as usize {
        cluster.start_node(index)?;
    }
    cluster.wait_health("three disks reporting", |h| h["disks_in_reporting"] == 3)?;
    let agent = new_agent();
    let pool = serde_json::json!({ "name": "p", "replicas": 3, "domain": "host", "pg_count": 8 });
    agent
        .post(&format!("{}/v1/pools", cluster.meta_api))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send_json(&pool)
        .map_err(|e| format!("create pool: {e}"))?;
    cluster.wait_health("healthy", |h| h["pgs_healthy"] == 8)?;
    run_with(&mut cluster, seconds, seed, "nodes-kill")
}
