//! Cairn's fault harness. Scenarios run real processes, inject faults (today: kill -9 of a chunk
//! store mid-IO), and check that nothing acknowledged was lost and nothing corrupt was served.
//! Also here: the deterministic Raft simulation and `meta-failover` (kill -9 of the metadata
//! leader, a wiped member rejoining by snapshot), `dev-kill` (kill -9 of `cairn dev` under
//! a volume writer), `nodes-kill` (kill -9 of storage nodes under a volume writer) and
//! `kill-nodes` (kill -9 of any metadata member or storage node, long outages that make the
//! scheduler move PG members, then heal), `bitflip` (bits flipped in chunk files under a
//! volume writer and a reader: every damaged block must be repaired, none served),
//! `partition` (network cuts between the processes) and `disk-faults` (disks failing with
//! EIO, then restarted or replaced by blank ones).

pub mod bitflip;
pub mod chunkstore_kill;
mod cluster;
pub mod dev_kill;
pub mod disk_faults;
pub mod iscsi_kill;
pub mod journal;
pub mod kill;
pub mod kill_nodes;
pub mod meta_failover;
mod netns;
pub mod nodes_kill;
pub mod partition;
mod reads;

/// The UTC time of day, `HH:MM:SS.mmm`, as the `cairn` processes' logs print it: lines a
/// scenario prints can be lined up with theirs.
pub(crate) fn utc_now() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, millis) = (now.as_secs() % 86_400, now.subsec_millis());
    format!(
        "{:02}:{:02}:{:02}.{millis:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

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
    // Ports handed out before are never handed out again by this process: a scenario picks
    // all its ports before starting the processes that bind them, and two picks of the same
    // free port (about one scenario in 400) made a node fail with "address in use".
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for attempt in 0..COUNT {
        let port = FIRST + (seed.wrapping_add(attempt.wrapping_mul(7_919)) % COUNT);
        let port = u16::try_from(port).expect("invariant: below 32768");
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    Err("no free loopback port below 32768".into())
}
pub mod raft_sim;
pub mod raftlog_kill;
