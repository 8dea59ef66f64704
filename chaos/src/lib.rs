//! Cairn's fault harness. Scenarios run real processes, inject faults (today: kill -9 of a chunk
//! store mid-IO), and check that nothing acknowledged was lost and nothing corrupt was served.
//! The deterministic simulation (issue 3) and the multi-process cluster scenarios of
//! `chaos/run.sh` (issue 4) join here.

pub mod chunkstore_kill;
pub mod journal;
pub mod kill;
pub mod raft_sim;
pub mod raftlog_kill;
