//! `iscsi-kill`: block writes over iSCSI survive SIGKILL of any storage node or gateway. One
//! `cairn meta`, three `cairn node run` processes and two stateless `cairn gateway iscsi`
//! processes; the writer of [`crate::dev_kill`] writes the volume through an iSCSI session on
//! one gateway (our own initiator, CHAP), moving to the other gateway when a write fails,
//! while one process at a time (a storage node, or a gateway one kill in three) is SIGKILLed
//! and restarted. A write is acknowledged when its SCSI status is GOOD; anything else leaves
//! it ambiguous. Afterwards every block is read back through the nodes' data APIs and must
//! hold its last acknowledged content.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use cairn_gateway_iscsi::initiator::Initiator;

use crate::{
    chunkstore_kill::Rng,
    cluster::{Cluster, log_file, path_str},
    dev_kill::{Endpoints, Sink, VOLUME, Verdict, Victim, run_with},
    free_port,
};

/// Storage nodes (ids 2, 3, 4; the metadata member is node 1).
const NODES: u64 = 3;
/// Gateway processes.
const GATEWAYS: usize = 2;
/// The gateways' CHAP secret (user `cairn`).
const CHAP_SECRET: &str = "chaos-chap-secret";
/// The initiator's name.
const INITIATOR: &str = "iqn.2026-12.io.cairn:chaos";
/// One kill in this many hits a gateway.
const GATEWAY_KILL_ONE_IN: u64 = 3;
/// How long an iSCSI connection or command may take before the writer gives up on it.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A `cairn gateway iscsi` process.
struct Gateway {
    name: String,
    portal: SocketAddr,
    child: Option<Child>,
}

struct IscsiKill {
    cluster: Cluster,
    cairn: PathBuf,
    dir: PathBuf,
    gateways: Vec<Gateway>,
}

impl IscsiKill {
    fn spawn_gateway(&mut self, index: usize) -> Result<(), String> {
        let admin = self.cluster.endpoints().admin_urls.join(",");
        let gateway = &mut self.gateways[index];
        let child = Command::new(&self.cairn)
            .args(["gateway", "iscsi", "--listen", &gateway.portal.to_string()])
            .args(["--token-file", &path_str(&self.dir.join("token"))])
            .args(["--chap-file", &path_str(&self.dir.join("chap"))])
            .env("CAIRN_ADMIN_URL", admin)
            .env("CAIRN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir, &gateway.name)?)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", gateway.name))?;
        gateway.child = Some(child);
        Ok(())
    }

    fn kill_gateway(&mut self, index: usize) {
        if let Some(mut child) = self.gateways[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for IscsiKill {
    fn drop(&mut self) {
        for index in 0..self.gateways.len() {
            self.kill_gateway(index);
        }
    }
}

/// The writer's iSCSI session, on one gateway at a time.
struct IscsiSink {
    portals: Vec<SocketAddr>,
    target: String,
    at: usize,
    session: Option<Initiator>,
}

impl IscsiSink {
    fn session(&mut self) -> Result<&mut Initiator, String> {
        if self.session.is_none() {
            let portal = self.portals[self.at % self.portals.len()];
            let mut session = Initiator::connect(portal, IO_TIMEOUT).map_err(|e| e.to_string())?;
            session
                .login(
                    INITIATOR,
                    &self.target,
                    Some(("cairn", CHAP_SECRET.as_bytes())),
                )
                .map_err(|e| e.to_string())?;
            session.read_capacity().map_err(|e| e.to_string())?;
            self.session = Some(session);
        }
        self.session.as_mut().ok_or_else(|| "no session".into())
    }
}

impl Sink for IscsiSink {
    fn write(&mut self, offset: u64, body: &[u8]) -> Result<(), String> {
        let session = self.session()?;
        session.write(offset / 512, body).map_err(|e| e.to_string())
    }

    fn fail_over(&mut self) {
        // A new session on the other gateway: the old one may be dead, or its command still
        // in flight (the write stays ambiguous either way).
        self.session = None;
        self.at += 1;
    }

    fn describe(&self) -> String {
        format!("iscsi://{}", self.portals[self.at % self.portals.len()])
    }
}

impl Victim for IscsiKill {
    fn endpoints(&self) -> Endpoints {
        self.cluster.endpoints()
    }

    fn sink(&self) -> Box<dyn Sink> {
        Box::new(IscsiSink {
            portals: self.gateways.iter().map(|g| g.portal).collect(),
            target: format!("iqn.2026-12.io.cairn:{VOLUME}"),
            at: 0,
            session: None,
        })
    }

    fn kill_and_restart(&mut self, rng: &mut Rng) -> Result<(), String> {
        if rng.below(GATEWAY_KILL_ONE_IN) == 0 {
            let index = rng.below(self.gateways.len() as u64) as usize;
            eprintln!(
                "{} iscsi-kill: SIGKILL {}",
                crate::utc_now(),
                self.gateways[index].name
            );
            self.kill_gateway(index);
            thread::sleep(Duration::from_millis(100 + rng.below(400)));
            return self.spawn_gateway(index);
        }
        let nodes = self.cluster.nodes();
        let index = nodes[rng.below(nodes.len() as u64) as usize];
        eprintln!(
            "{} iscsi-kill: SIGKILL {}",
            crate::utc_now(),
            self.cluster.name(index)
        );
        self.cluster.kill(index);
        // Down for a while: writes go on with two replicas of three.
        thread::sleep(Duration::from_millis(200 + rng.below(800)));
        self.cluster.spawn(index)
    }
}

/// Runs the scenario in `dir` for about `seconds`.
pub fn run(cairn: &Path, dir: &Path, seconds: f64, seed: u64) -> Result<Verdict, String> {
    let cluster = Cluster::start(cairn, dir, 1, NODES)?;
    fs::write(dir.join("chap"), CHAP_SECRET).map_err(|e| format!("write chap: {e}"))?;
    let mut gateways = Vec::new();
    for i in 1..=GATEWAYS {
        gateways.push(Gateway {
            name: format!("g{i}"),
            portal: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            child: None,
        });
    }
    let mut victim = IscsiKill {
        cluster,
        cairn: cairn.to_path_buf(),
        dir: dir.to_path_buf(),
        gateways,
    };
    for index in 0..GATEWAYS {
        victim.spawn_gateway(index)?;
    }
    run_with(&mut victim, seconds, seed, "iscsi-kill")
}
