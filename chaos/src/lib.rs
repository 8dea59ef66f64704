//! Cairn's fault harness. Scenarios run real processes, inject faults (today: kill -9 of a chunk
//! store mid-IO), and check that nothing acknowledged was lost and nothing corrupt was served.
//! Also here: the deterministic Raft simulation and `meta-failover` (kill -9 of the metadata
//! leader, a wiped member rejoining by snapshot) and `dev-kill` (kill -9 of `cairn dev` under
//! a volume writer). The multi-node data-plane scenarios (issue 4) join here.

pub mod chunkstore_kill;
pub mod dev_kill;
pub mod journal;
pub mod kill;
pub mod meta_failover;
pub mod nodes_kill;
pub mod raft_sim;
pub mod raftlog_kill;
