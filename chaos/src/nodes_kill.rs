//! `nodes-kill`: a metadata member and three `cairn node run` processes (one disk each, a
//! 3-replica pool with host as failure domain); a client writes a volume through the nodes'
//! data APIs while one storage node at a time is killed with SIGKILL and restarted. Afterwards
//! every block must hold its last acknowledged content (the checks of [`crate::dev_kill`]).

use std::{path::Path, thread, time::Duration};

use crate::{
    chunkstore_kill::Rng,
    cluster::Cluster,
    dev_kill::{Endpoints, Verdict, Victim, run_with},
};

/// Storage nodes (ids 2, 3, 4; the metadata member is node 1).
const NODES: u64 = 3;

struct NodesKill(Cluster);

impl Victim for NodesKill {
    fn endpoints(&self) -> Endpoints {
        self.0.endpoints()
    }
    fn kill_and_restart(&mut self, rng: &mut Rng) -> Result<(), String> {
        let nodes = self.0.nodes();
        let index = nodes[rng.below(nodes.len() as u64) as usize];
        self.0.kill(index);
        // Down for a while: writes go on with two replicas of three.
        thread::sleep(Duration::from_millis(200 + rng.below(800)));
        self.0.spawn(index)
    }
}

/// Runs the scenario in `dir` for about `seconds`.
pub fn run(cairn: &Path, dir: &Path, seconds: f64, seed: u64) -> Result<Verdict, String> {
    let mut cluster = NodesKill(Cluster::start(cairn, dir, 1, NODES)?);
    run_with(&mut cluster, seconds, seed, "nodes-kill")
}
