//! Snapshot transfer for PG replicas: a replica joining a PG copies the PG's chunks from the
//! replica that sent it a snapshot, then installs that snapshot.
//!
//! A PG snapshot carries only an index (see the compaction in the module above): the state is
//! the chunks themselves. When a leader sends a joining replica a snapshot at index `J`, the
//! host holds the message back and asks for a copy ([`RestoreWanted`]); the caller runs
//! [`copy_pg`] against a [`ChunkSource`] (a sibling store on this node, or the sender's node
//! over the network), and once the copy is flushed the next snapshot message at an index of
//! at most `J` is stepped into Raft. Raft resends the snapshot on every heartbeat until it is
//! taken, so holding it back needs no timer.
//!
//! # Why a fuzzy copy is correct
//!
//! The source keeps applying writes while it is copied, so each block arrives as of some index
//! `k >= J` (the source had applied `J` when it sent the snapshot: a snapshot never passes the
//! applied index). After the install, the replica replays every entry after `J`. PG entries
//! are overwrites of byte ranges applied in log order, so the final value of each byte is that
//! of the last write to it after `J` (replayed here) or, if none, its value at `J`, which is
//! what the copy holds since no write touched it between `J` and `k`. Partial-block writes
//! merge into the copied block the same way (byte by byte). A discard is an overwrite with
//! zeros, and a chunk a discard deleted is all zeros (it is deleted only once no block of it
//! holds data), so discards keep the argument: a discarded block copies as zeros, and a chunk
//! deleted before it is listed is not copied (reading as zeros here too). A listed chunk that
//! a discard deletes before its copy ends fails the copy (see [`ChunkSource::read`]), which is
//! retried with the next snapshot. Two conditions follow and are
//! enforced by the host: the copy must have been started after the snapshot it installs
//! (snapshot index <= the one that asked for the copy), and the replica must apply nothing
//! while its store is being overwritten, so only replicas that have applied nothing yet (a
//! new, empty member) are restored; a lagging member with state refuses snapshots and is
//! replaced by the scheduler instead.
//!
//! The copy deletes the destination's other chunks of the PG (left by an earlier, interrupted
//! copy), and flushes before it reports success: the installed snapshot is durable in the Raft
//! log, so the chunks it stands for must be durable first.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use cairn_common::{BLOCK_SIZE, ChunkId, GroupId, ReplicaId};

use super::{WRITE_BYTES_MAX, read_chunk, write_chunk};
use crate::ChunkStore;

/// Bytes one copy request moves: one 1 MiB piece, the largest a PG write is, so a piece fits
/// one data-API request and one engine buffer.
pub const COPY_PIECE_BYTES: u32 = WRITE_BYTES_MAX as u32;

/// Copies running at once per node: each holds a 1 MiB piece in flight and shares the
/// recovery bandwidth budget; more at once would only split the budget.
pub const RESTORES_RUNNING_MAX: usize = 4;

/// The default recovery bandwidth budget per node, in MB/s: a quarter of a SATA SSD's
/// sequential write rate, leaving the rest to client IO (DESIGN.md invariant 4).
pub const RESTORE_MB_PER_S_DEFAULT: u64 = 128;

/// A future a [`ChunkSource`] returns.
pub type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Where a joining replica copies a PG's chunks from.
pub trait ChunkSource: Send + Sync {
    /// The chunks replica `from` holds of `group`.
    fn list(&self, from: ReplicaId, group: GroupId) -> SourceFuture<'_, Vec<ChunkId>>;

    /// `length` bytes at `offset` of `chunk` as replica `from` holds them, checksums verified
    /// (a corrupt block fails the copy, which is retried), once `from` has applied at least
    /// `min_applied` (an error before: a repair must not take a block older than the one it
    /// replaces). A chunk the source no longer has is an error, never zeros: the copy must
    /// not turn data into holes.
    fn read(
        &self,
        from: ReplicaId,
        chunk: ChunkId,
        offset: u32,
        length: u32,
        min_applied: u64,
    ) -> SourceFuture<'_, Vec<u8>>;
}

/// A source on this node: the store of a sibling replica.
pub struct LocalSource {
    /// The sibling's store.
    pub store: Arc<ChunkStore>,
    /// The PG count of the pool (to tell which chunks belong to the PG).
    pub pg_count: u32,
}

impl ChunkSource for LocalSource {
    fn list(&self, _from: ReplicaId, group: GroupId) -> SourceFuture<'_, Vec<ChunkId>> {
        let chunks = pg_chunks(&self.store, group, self.pg_count);
        Box::pin(async move { Ok(chunks) })
    }

    fn read(
        &self,
        _from: ReplicaId,
        chunk: ChunkId,
        offset: u32,
        length: u32,
        _min_applied: u64,
    ) -> SourceFuture<'_, Vec<u8>> {
        Box::pin(async move { read_existing(&self.store, chunk, offset, length).await })
    }
}

/// The chunks of `group` (a PG of a pool of `pg_count` PGs) in `store`.
pub fn pg_chunks(store: &ChunkStore, group: GroupId, pg_count: u32) -> Vec<ChunkId> {
    let mut chunks: Vec<ChunkId> = store
        .chunk_ids()
        .into_iter()
        .filter(|c| group.holds(*c, pg_count))
        .collect();
    chunks.sort();
    chunks
}

/// Reads a range of a chunk that must exist (a copy source's read).
pub async fn read_existing(
    store: &ChunkStore,
    chunk: ChunkId,
    offset: u32,
    length: u32,
) -> Result<Vec<u8>, String> {
    if !store.chunk_ids().contains(&chunk) {
        return Err(format!("{chunk} is not on disk {}", store.disk_id()));
    }
    read_chunk(store, chunk, offset, length)
        .await
        .map_err(|e| format!("{chunk}: {e}"))
}

/// A snapshot a replica here was sent and holds back until its chunks are copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreWanted {
    /// The replica to fill.
    pub replica: ReplicaId,
    /// Its PG.
    pub group: GroupId,
    /// The replica that sent the snapshot (the leader): the copy's source.
    pub from: ReplicaId,
    /// The snapshot's index.
    pub index: u64,
}

/// Paces a copy to a byte rate.
pub struct Pacer {
    bytes_per_s: u64,
    started: tokio::time::Instant,
    moved: u64,
}

impl Pacer {
    /// A pacer allowing `mb_per_s` MB/s (at least 1).
    pub fn new(mb_per_s: u64) -> Pacer {
        Pacer {
            bytes_per_s: mb_per_s.max(1) * 1_000_000,
            started: tokio::time::Instant::now(),
            moved: 0,
        }
    }

    /// Counts `bytes` moved and sleeps while the copy is ahead of its budget. Idle time is
    /// not saved up: after a pause the budget starts afresh instead of allowing a burst.
    pub async fn moved(&mut self, bytes: u64) {
        let idle = Duration::from_secs_f64(self.moved as f64 / self.bytes_per_s as f64);
        if self.started.elapsed() > idle + Duration::from_secs(1) {
            self.started = tokio::time::Instant::now();
            self.moved = 0;
        }
        self.moved += bytes;
        let due = Duration::from_secs_f64(self.moved as f64 / self.bytes_per_s as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// Copies every chunk `wanted.from` holds of the PG into `dest`, deletes `dest`'s other chunks
/// of the PG, and flushes `dest`. `progress` counts the bytes copied. Returns the bytes copied.
pub async fn copy_pg(
    wanted: RestoreWanted,
    pg_count: u32,
    source: &dyn ChunkSource,
    dest: &ChunkStore,
    pacer: &mut Pacer,
    progress: &AtomicU64,
) -> Result<u64, String> {
    let mut chunks = source.list(wanted.from, wanted.group).await?;
    chunks.sort();
    chunks.dedup();
    let chunk_size = dest.chunk_size_bytes();
    let piece_max = COPY_PIECE_BYTES.min(dest.io_size_max());
    assert!(piece_max >= BLOCK_SIZE && piece_max.is_multiple_of(BLOCK_SIZE));
    let present = pg_chunks(dest, wanted.group, pg_count);
    let mut copied = 0u64;
    for &chunk in &chunks {
        if !wanted.group.holds(chunk, pg_count) {
            return Err(format!(
                "the source listed {chunk}, which is not in {}",
                wanted.group
            ));
        }
        let existed = present.binary_search(&chunk).is_ok();
        let mut offset = 0u32;
        while offset < chunk_size {
            let length = piece_max.min(chunk_size - offset);
            let data = source.read(wanted.from, chunk, offset, length, 0).await?;
            if data.len() != length as usize {
                return Err(format!(
                    "{chunk}: asked {length} bytes at {offset}, got {}",
                    data.len()
                ));
            }
            // A thin chunk stays thin: zeros need no write unless they replace stale bytes.
            if existed || data.iter().any(|b| *b != 0) {
                write_chunk(dest, chunk, offset, &data)
                    .await
                    .map_err(|e| format!("{chunk} on disk {}: {e}", dest.disk_id()))?;
            }
            offset += length;
            copied += u64::from(length);
            progress.fetch_add(u64::from(length), Ordering::Relaxed);
            pacer.moved(u64::from(length)).await;
        }
    }
    for stale in present {
        if chunks.binary_search(&stale).is_err() {
            dest.delete(stale)
                .await
                .map_err(|e| format!("{stale} on disk {}: {e}", dest.disk_id()))?;
        }
    }
    dest.flush()
        .await
        .map_err(|e| format!("flush disk {}: {e}", dest.disk_id()))?;
    Ok(copied)
}
