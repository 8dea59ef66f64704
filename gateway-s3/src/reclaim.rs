//! The reclaimer: discards the chunks of garbage (objects replaced or deleted, parts not
//! used, uploads aborted or failed) once it has been garbage for [`GARBAGE_GRACE`], and gives
//! up writes left pending longer than [`PENDING_AGE_MAX`] (a gateway died mid-upload).
//!
//! The grace lets GETs that looked an object up before it was replaced finish reading its
//! chunks (a GET re-checks its object after [`crate::body::RECHECK_AFTER`], half the grace).
//! The reclaimer times the grace from when it first saw an entry, on its own clock: never
//! earlier than the entry became garbage, so no clock comparison between machines is needed,
//! and a restarted reclaimer only waits longer. Every gateway may run one: discards are
//! idempotent, so two reclaimers racing do no harm.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub use crate::body::GARBAGE_GRACE;
use crate::{
    cluster::{Cluster, ClusterResult},
    ops::PUT_BYTES_MAX,
};

/// How often the reclaimer looks for work.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Garbage entries listed per round (and so tracked at most).
pub const LISTED_MAX: u32 = 10_000;

/// Garbage entries discarded per round: bounds the discards one round sends to the PGs.
pub const DISCARDS_PER_ROUND_MAX: usize = 256;

/// How long a write may stay pending before it is taken for abandoned. A single PUT is at
/// most 5 GiB; a day is far longer than any such upload takes.
pub const PENDING_AGE_MAX: Duration = Duration::from_secs(24 * 3600);

/// Garbage seen, by owner, with when this reclaimer first saw it.
#[derive(Default)]
pub struct Reclaimer {
    first_seen: HashMap<u64, Instant>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Reclaimer {
    /// One round: abandons old pending writes, discards garbage seen at least `grace` ago.
    /// Answers how many garbage entries were reclaimed.
    pub async fn round<C: Cluster>(
        &mut self,
        cluster: &C,
        grace: Duration,
    ) -> ClusterResult<usize> {
        let old = now_ms().saturating_sub(PENDING_AGE_MAX.as_millis() as u64);
        let stale: Vec<u64> = cluster
            .pending(old)
            .await?
            .into_iter()
            .map(|p| p.owner)
            .collect();
        if !stale.is_empty() {
            tracing::info!(
                writes = stale.len(),
                "abandoning writes pending for over a day"
            );
            cluster.abandon(stale, PUT_BYTES_MAX).await?;
        }
        let listed = cluster.garbage(LISTED_MAX).await?;
        let now = Instant::now();
        let mut seen = HashMap::with_capacity(listed.len());
        let mut ripe = Vec::new();
        for garbage in listed {
            let first = self.first_seen.get(&garbage.owner).copied().unwrap_or(now);
            seen.insert(garbage.owner, first);
            if now.duration_since(first) >= grace && ripe.len() < DISCARDS_PER_ROUND_MAX {
                ripe.push(garbage);
            }
        }
        // Entries no longer listed were reclaimed (by anyone): forget them.
        self.first_seen = seen;
        let mut done = Vec::new();
        for garbage in ripe {
            let owner = garbage.owner;
            match cluster.discard(garbage).await {
                Ok(()) => done.push(owner),
                Err(e) => tracing::warn!(owner, "reclaiming chunks: {e}"),
            }
        }
        let count = done.len();
        if count > 0 {
            cluster.reclaimed(done).await?;
            tracing::debug!(count, "reclaimed the chunks of replaced objects");
        }
        Ok(count)
    }
}

/// Runs rounds every [`INTERVAL`] (more often if `grace` is shorter) until the process ends,
/// discarding garbage `grace` after first seeing it ([`GARBAGE_GRACE`] in production; tests
/// shorten it).
pub async fn run<C: Cluster>(cluster: C, grace: Duration) {
    let interval = INTERVAL.min(grace).max(Duration::from_millis(200));
    let mut reclaimer = Reclaimer::default();
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = reclaimer.round(&cluster, grace).await {
            tracing::debug!("reclaimer: {e}");
        }
    }
}
