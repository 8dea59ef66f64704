//! `discard`: deallocating a byte range of a chunk (SCSI UNMAP, WRITE SAME with UNMAP).
//!
//! PERF-CRITICAL: a discard is client IO. Whole blocks cost no data IO at all: their bits are
//! cleared in the meta image (with their checksums), so they read as zeros like blocks never
//! written. Only a block the range covers in part is read, verified, zeroed there and written
//! back (at most two per discard: the head and the tail), like the edges of an unaligned
//! write; a block that ends up all zeros is cleared instead of written. A chunk left with no
//! written block is deleted, so its slot returns to the pool after the next flush.
//!
//! # Crash ordering
//!
//! As for a write: an edge block's data is written before its new checksum enters the meta
//! image, and nothing is durable before the next `flush`. A crash before it leaves the last
//! durable image: cleared blocks are written again there, with the checksums of the data
//! still on disk (a clear never touches data), and an edge block may hold the zeroed bytes
//! under the old checksum, which reads as a checksum error, never as unchecked data. The layer
//! above replays its log from its last flush: see [`ChunkStore::discard_replaying`].
//!
//! # Replay
//!
//! Every write and discard sets the bytes of its range and keeps every other byte of the
//! chunk's content (an unwritten block, or a missing chunk, being zeros). A block is cleared,
//! and a chunk deleted, only when its content is all zeros, so the content a replay starts
//! from holds, at every byte no replayed entry covers, the value it had at the last flush; a
//! byte that one covers ends with the value of the last such entry. Merging an edge block as
//! stored (unverified) during a replay is therefore as safe for a discard as for a write.

use std::sync::Arc;

use cairn_common::{BLOCK_SIZE, ChunkId};

use super::{Chunk, ChunkStore, State, lock::Mode};
use crate::{
    checksum::crc32c,
    error::{Error, Result},
    io::{self as engine_io, AlignedBuf},
};

/// What a discard leaves in a block it covers only in part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edge {
    /// All zeros now: unwritten.
    Cleared,
    /// Zeroed in part and written back with this checksum.
    Written(u32),
}

impl ChunkStore {
    /// Makes `length_bytes` at `offset_bytes` of a chunk read as zeros: whole blocks become
    /// unwritten without data IO, partial blocks at the edges are read (verified), zeroed and
    /// written back, and a chunk left without any written block is deleted. A chunk that does
    /// not exist is left alone (it reads as zeros already). Visible to reads on return;
    /// durable after the next `flush`. Unlike a write, the range may span the whole chunk.
    ///
    /// A write waiting for the range that finds the chunk deleted fails with `NotFound`, as
    /// after [`ChunkStore::delete`].
    pub async fn discard(&self, id: ChunkId, offset_bytes: u64, length_bytes: u64) -> Result<()> {
        self.discard_checked(id, offset_bytes, length_bytes, true)
            .await
    }

    /// [`ChunkStore::discard`] for a log replay after a crash: a partial edge block is merged
    /// as stored, its checksum not verified (see [`ChunkStore::write_replaying`] and the
    /// module docs of `discard` for why that is safe). Only for entries the log held before
    /// the crash.
    pub async fn discard_replaying(
        &self,
        id: ChunkId,
        offset_bytes: u64,
        length_bytes: u64,
    ) -> Result<()> {
        self.discard_checked(id, offset_bytes, length_bytes, false)
            .await
    }

    async fn discard_checked(
        &self,
        id: ChunkId,
        offset_bytes: u64,
        length_bytes: u64,
        verify_edges: bool,
    ) -> Result<()> {
        self.check_in_service()?;
        let (first, last) = self.check_discard_range(id, offset_bytes, length_bytes)?;
        let chunk = match self.chunk(id) {
            Ok(chunk) => chunk,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let emptied = {
            let _range = chunk.locks.lock(first, last, Mode::Exclusive).await;
            let generation = {
                let meta = chunk.meta();
                if meta.deleted {
                    // Deleted while this discard waited: it reads as zeros.
                    return Ok(());
                }
                meta.image.generation
            };
            // Before any IO, under the exclusive lock (see `cache.rs`).
            self.cache.invalidate(generation, first, last);
            let edges = self
                .zero_edges(&chunk, offset_bytes, length_bytes, verify_edges)
                .await?;
            let (emptied, newly_dirty) = {
                let mut meta = chunk.meta();
                for index in first..=last {
                    match edges.iter().find(|(edge, _)| *edge == index) {
                        Some((_, Edge::Written(crc))) => meta.image.set_written(index, *crc),
                        Some((_, Edge::Cleared)) | None => meta.image.clear_written(index),
                    }
                }
                let emptied = !meta.image.any_written();
                (emptied, !std::mem::replace(&mut meta.dirty, true))
            };
            if newly_dirty {
                self.state().dirty.push(chunk.clone());
            }
            emptied
        };
        if emptied {
            self.delete_if_empty(&chunk).await;
        }
        self.stats
            .discards
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Checks a discard range: not empty, inside the chunk. Returns its first and last block.
    fn check_discard_range(
        &self,
        id: ChunkId,
        offset_bytes: u64,
        length_bytes: u64,
    ) -> Result<(u32, u32)> {
        let chunk_size = u64::from(self.geometry.chunk_size_bytes());
        let end = offset_bytes.checked_add(length_bytes);
        if length_bytes == 0 || end.is_none_or(|end| end > chunk_size) {
            return Err(Error::OutOfRange {
                chunk: id,
                offset_bytes,
                size_bytes: length_bytes,
                chunk_size_bytes: self.geometry.chunk_size_bytes(),
                io_size_max: self.io_size_max(),
            });
        }
        let block = u64::from(BLOCK_SIZE);
        let first = u32::try_from(offset_bytes / block).expect("invariant: inside a chunk");
        let last = u32::try_from((offset_bytes + length_bytes - 1) / block)
            .expect("invariant: inside a chunk");
        assert!(first <= last && last < self.geometry.block_count());
        Ok((first, last))
    }

    /// Zeroes the part of the range inside each block it covers only in part (the head and
    /// the tail, or one block), writing each back unless it became all zeros. The caller holds
    /// the range's lock. Returns each such block with what it now is.
    async fn zero_edges(
        &self,
        chunk: &Chunk,
        offset_bytes: u64,
        length_bytes: u64,
        verify: bool,
    ) -> Result<Vec<(u32, Edge)>> {
        let block = u64::from(BLOCK_SIZE);
        let end = offset_bytes + length_bytes;
        let first = offset_bytes / block;
        let last = (end - 1) / block;
        let mut partial = Vec::with_capacity(2);
        for index in [first, last] {
            let (block_start, block_end) = (index * block, (index + 1) * block);
            let (from, to) = (offset_bytes.max(block_start), end.min(block_end));
            let whole = from == block_start && to == block_end;
            if !whole && !partial.iter().any(|(i, _, _)| *i == index) {
                let range = ((from - block_start) as usize, (to - block_start) as usize);
                partial.push((index, range.0, range.1));
            }
        }
        let mut edges = Vec::with_capacity(partial.len());
        if partial.is_empty() {
            return Ok(edges);
        }
        let mut buf = self.engine.pool().acquire().await;
        for (index, from, to) in partial {
            let index = u32::try_from(index).expect("invariant: inside a chunk");
            let (back, edge) = self
                .zero_block(chunk, index, (from, to), verify, buf)
                .await?;
            buf = back;
            edges.push((index, edge));
        }
        Ok(edges)
    }

    /// Zeroes bytes `from..to` of block `index` (read, and verified unless a replay asks
    /// otherwise): a block that becomes all zeros is cleared without IO, any other is written
    /// back.
    async fn zero_block(
        &self,
        chunk: &Chunk,
        index: u32,
        (from, to): (usize, usize),
        verify: bool,
        buf: AlignedBuf,
    ) -> Result<(AlignedBuf, Edge)> {
        assert!(from < to && to <= BLOCK_SIZE as usize, "{from}..{to}");
        let mut buf = self.read_block(chunk, index, verify, buf).await?;
        assert_eq!(buf.len(), BLOCK_SIZE as usize);
        buf[from..to].fill(0);
        if buf.iter().all(|byte| *byte == 0) {
            return Ok((buf, Edge::Cleared));
        }
        let crc = crc32c(&buf);
        let offset = chunk.place.base_bytes + self.geometry.block_offset(index);
        let buf = engine_io::write(&*self.engine, &chunk.place.file, offset, buf).await?;
        Ok((buf, Edge::Written(crc)))
    }

    /// Deletes a chunk a discard left without any written block, unless IO since then wrote
    /// one or it is gone already. It waits for every block's lock first, so that no write in
    /// flight elsewhere in the chunk is lost with it.
    async fn delete_if_empty(&self, chunk: &Arc<Chunk>) {
        let last = self.geometry.block_count() - 1;
        let _all = chunk.locks.lock(0, last, Mode::Exclusive).await;
        let mut state = self.state();
        let indexed = state
            .chunks
            .get(&chunk.id)
            .is_some_and(|current| Arc::ptr_eq(current, chunk));
        if !indexed || chunk.meta().image.any_written() {
            return;
        }
        state.chunks.remove(&chunk.id);
        retire(&mut state, chunk);
    }
}

/// Marks a chunk just removed from the index deleted: ops that waited for its locks find it
/// gone, and its free image goes out with the next flush, which returns its slot to the pool
/// (never before: see the module docs of `chunk`). The caller holds every block's lock.
pub(super) fn retire(state: &mut State, chunk: &Arc<Chunk>) {
    let newly_dirty = {
        let mut meta = chunk.meta();
        assert!(!meta.deleted, "chunk {} retired twice", chunk.id);
        meta.deleted = true;
        meta.image.state = super::SlotState::Free;
        !std::mem::replace(&mut meta.dirty, true)
    };
    if newly_dirty {
        state.dirty.push(chunk.clone());
    }
    state.freeing.push(chunk.clone());
}
