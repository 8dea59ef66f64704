//! `flush`: making every completed change durable (see the crash ordering in the module docs).

use std::sync::{Arc, atomic::Ordering};

use super::{Chunk, ChunkStore, FLUSH_BATCH_MAX, FreeSlot, SlotState};
use crate::{
    error::Result,
    io::{self as engine_io},
    join::join_all,
};

/// One captured image, waiting to be written.
struct Pending {
    chunk: Arc<Chunk>,
    sequence: u64,
    bytes: Vec<u8>,
    free: bool,
}

impl ChunkStore {
    /// Makes every write, create and delete that returned before this call durable. Concurrent
    /// calls are serialized; IO continues meanwhile.
    pub async fn flush(&self) -> Result<()> {
        self.check_in_service()?;
        let _serial = self.flush_lock.lock().await;
        let dirty = std::mem::take(&mut self.state().dirty);
        let pending: Vec<Pending> = dirty.into_iter().filter_map(|c| self.capture(c)).collect();
        let mut result = Ok(());
        let mut done = Vec::with_capacity(pending.len());
        let mut batches = pending.into_iter().peekable();
        while batches.peek().is_some() {
            let batch: Vec<Pending> = batches.by_ref().take(FLUSH_BATCH_MAX).collect();
            match self.persist(&batch).await {
                Ok(()) => done.extend(batch),
                Err(error) => {
                    // Not durable: every chunk not yet persisted becomes dirty again.
                    self.redirty(batch.into_iter().chain(batches.by_ref()));
                    result = Err(error);
                    break;
                }
            }
        }
        self.complete(done);
        if result.is_ok() {
            self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Captures a dirty chunk's image with the next sequence; `None` if it is clean by now.
    fn capture(&self, chunk: Arc<Chunk>) -> Option<Pending> {
        let mut meta = chunk.meta();
        if !meta.dirty {
            return None;
        }
        meta.dirty = false;
        let sequence = meta.durable_sequence + 1;
        meta.image.sequence = sequence;
        let mut bytes = vec![0u8; self.geometry.meta_bytes() as usize];
        meta.image.encode(&self.geometry, &mut bytes);
        let free = meta.image.state == SlotState::Free;
        drop(meta);
        Some(Pending {
            chunk,
            sequence,
            bytes,
            free,
        })
    }

    /// Steps 2-4 of the crash ordering for one batch.
    async fn persist(&self, batch: &[Pending]) -> Result<()> {
        let engine = &*self.engine;
        // One fdatasync per file, however many of its chunks are in the batch.
        let mut files: Vec<_> = batch
            .iter()
            .map(|p| (p.chunk.place.file_number, &p.chunk.place.file))
            .collect();
        files.sort_by_key(|(number, _)| *number);
        files.dedup_by_key(|(number, _)| *number);
        let sync_all = || {
            join_all(
                files
                    .iter()
                    .map(|(_, file)| engine_io::sync(engine, file))
                    .collect(),
            )
        };
        sync_all().await.into_iter().collect::<Result<Vec<()>>>()?;
        let writes = batch.iter().map(|p| async move {
            let mut buf = engine.pool().acquire().await;
            buf.set_len(p.bytes.len());
            buf.copy_from_slice(&p.bytes);
            let offset = p.chunk.place.base_bytes + self.geometry.meta_offset(p.sequence);
            engine_io::write(engine, &p.chunk.place.file, offset, buf)
                .await
                .map(drop)
        });
        join_all(writes.collect())
            .await
            .into_iter()
            .collect::<Result<Vec<()>>>()?;
        sync_all().await.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(())
    }

    fn redirty(&self, failed: impl Iterator<Item = Pending>) {
        let mut state = self.state();
        for pending in failed {
            let newly_dirty = !std::mem::replace(&mut pending.chunk.meta().dirty, true);
            if newly_dirty {
                state.dirty.push(pending.chunk);
            }
        }
    }

    /// Records durable sequences and returns durably freed slots to the pool.
    fn complete(&self, done: Vec<Pending>) {
        let mut state = self.state();
        for pending in done {
            pending.chunk.meta().durable_sequence = pending.sequence;
            if !pending.free {
                continue;
            }
            let place = &pending.chunk.place;
            let before = state.freeing.len();
            state.freeing.retain(|chunk| !chunk.place.same_slot(place));
            assert_eq!(
                before,
                state.freeing.len() + 1,
                "a freed chunk was being freed"
            );
            state.free.push(FreeSlot {
                place: place.clone(),
                durable_sequence: pending.sequence,
            });
        }
    }
}
