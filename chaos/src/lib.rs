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

/// A loopback port nothing listens on, below the kernel's ephemeral range (32768-60999 by
/// default): a process restarted on the same port must find it free, and a port from the
/// ephemeral range can meanwhile become the local end of some outgoing connection.
pub fn free_port() -> Result<u16, String> {
    use std::time::{SystemTime, UNIX_EPOCH};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for attempt in 0..COUNT {
        let port = FIRST + (seed.wrapping_add(attempt.wrapping_mul(7_919)) % COUNT);
        let port = u16::try_from(port).expect("invariant: below 32768");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free loopback port below 32768".into())
}
pub mod raft_sim;
pub mod raftlog_kill;
