//! The pool of chunk files: loading it at open and growing it.
//!
//! Crash ordering of preallocation: a new file is created as `N.tmp`, allocated, zero-filled,
//! given a free meta image and synced, then renamed to `N.chk` and the directory synced. A crash
//! leaves at most a `.tmp` file, which the next open deletes; every `.chk` file is complete.

use std::{
    fs,
    sync::{Arc, Mutex},
};

use super::{Chunk, ChunkMeta, ChunkStore, FreeFile, MetaImage, SlotState, lock::RangeLocks};
use crate::{
    error::{Error, Result},
    io::{self as engine_io, EngineFile},
    label::sync_dir,
};

/// What a chunk file held at open.
enum Loaded {
    Chunk(Arc<Chunk>),
    Free(FreeFile),
    Damaged,
}

impl ChunkStore {
    /// Scans `chunks/`: removes unfinished preallocations, reads each file's newest valid meta
    /// image, and rebuilds the chunk index and the free pool.
    pub(super) async fn load(&self) -> Result<()> {
        let dir = &self.chunks_dir;
        let mut numbers = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io("readdir", dir, e))? {
            let path = entry.map_err(|e| Error::io("readdir", dir, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let parsed = name.split_once('.').and_then(|(stem, extension)| {
                Some((u64::from_str_radix(stem, 16).ok()?, extension))
            });
            match parsed {
                Some((_, "tmp")) => {
                    tracing::info!(path = %path.display(), "removing unfinished preallocation");
                    fs::remove_file(&path).map_err(|e| Error::io("unlink", &path, e))?;
                }
                Some((number, "chk")) => numbers.push(number),
                _ => tracing::warn!(path = %path.display(), "ignoring unknown file in chunks/"),
            }
        }
        numbers.sort_unstable();
        for number in numbers {
            let loaded = self.load_file(number).await?;
            let mut state = self.state();
            state.next_file_number = state.next_file_number.max(number + 1);
            match loaded {
                Loaded::Free(free) => state.free.push(free),
                Loaded::Damaged => state.damaged.push(self.file_path(number, "chk")),
                Loaded::Chunk(chunk) => {
                    let generation = chunk.meta().image.generation;
                    state.next_generation = state.next_generation.max(generation);
                    if let Some(loser) = self.insert_loaded(&mut state, chunk) {
                        // The same chunk in two files: a crash between deleting it in one and
                        // recreating it in another. The newer generation wins; the older file
                        // is freed by the next flush.
                        tracing::warn!(chunk = %loser.id, "older duplicate of chunk freed");
                        loser.meta().image.state = SlotState::Free;
                        loser.meta().dirty = true;
                        state.dirty.push(loser.clone());
                        state.freeing.push(loser);
                    }
                }
            }
        }
        let state = self.state();
        tracing::info!(
            chunks = state.chunks.len(),
            free = state.free.len(),
            damaged = state.damaged.len(),
            disk = %self.label.disk_id,
            "chunk store opened"
        );
        Ok(())
    }

    /// Inserts a loaded chunk; returns the older of two files holding the same chunk, if any.
    fn insert_loaded(&self, state: &mut super::State, chunk: Arc<Chunk>) -> Option<Arc<Chunk>> {
        use std::collections::hash_map::Entry;
        match state.chunks.entry(chunk.id) {
            Entry::Vacant(slot) => {
                slot.insert(chunk);
                None
            }
            Entry::Occupied(mut slot) => {
                let existing = slot.get().meta().image.generation;
                if chunk.meta().image.generation > existing {
                    Some(slot.insert(chunk))
                } else {
                    Some(chunk)
                }
            }
        }
    }

    async fn load_file(&self, number: u64) -> Result<Loaded> {
        let path = self.file_path(number, "chk");
        let file = self.engine.open(&path, false)?;
        let size = file.size_bytes()?;
        if size != self.geometry.file_size_bytes() {
            tracing::error!(path = %path.display(), size, "chunk file has the wrong size");
            return Ok(Loaded::Damaged);
        }
        let meta_bytes = self.geometry.meta_bytes() as usize;
        let mut images = Vec::with_capacity(2);
        for slot in 0..2u64 {
            let mut buf = self.engine.pool().acquire().await;
            buf.set_len(meta_bytes);
            let offset = self.geometry.slot_offset(slot);
            let buf = engine_io::read(&*self.engine, &file, offset, buf).await?;
            match MetaImage::decode(&self.geometry, &buf) {
                Ok(image) if image.sequence % 2 == slot => images.push(image),
                Ok(_) => tracing::warn!(path = %path.display(), slot, "image in the wrong slot"),
                // A never-written second slot is normal; only report when neither is valid.
                Err(_) => {}
            }
        }
        let Some(image) = images.into_iter().max_by_key(|image| image.sequence) else {
            tracing::error!(path = %path.display(), "no valid meta image; file set aside");
            return Ok(Loaded::Damaged);
        };
        let durable_sequence = image.sequence;
        Ok(match image.state {
            SlotState::Free => Loaded::Free(FreeFile { number, file, durable_sequence }),
            SlotState::InUse => Loaded::Chunk(Arc::new(Chunk {
                id: image.chunk,
                number,
                file,
                meta: Mutex::new(ChunkMeta { image, durable_sequence, dirty: false, deleted: false }),
                locks: RangeLocks::default(),
            })),
        })
    }

    /// Creates free files until the pool holds at least `count`.
    pub async fn preallocate_to(&self, count: u32) -> Result<()> {
        while self.free_file_count() < count as usize {
            self.preallocate_one().await?;
        }
        Ok(())
    }

    /// Creates one complete, zero-filled, free chunk file and adds it to the pool.
    pub(super) async fn preallocate_one(&self) -> Result<()> {
        let number = {
            let mut state = self.state();
            state.next_file_number += 1;
            state.next_file_number - 1
        };
        let temporary = self.file_path(number, "tmp");
        let result = self.fill_new_file(number).await;
        if result.is_err() {
            // Best effort: a leftover .tmp is also removed by the next open.
            let _ = fs::remove_file(&temporary);
        }
        let file = result?;
        let durable_sequence = 0;
        self.state().free.push(FreeFile { number, file, durable_sequence });
        Ok(())
    }

    async fn fill_new_file(&self, number: u64) -> Result<Arc<EngineFile>> {
        let temporary = self.file_path(number, "tmp");
        let file = self.engine.open(&temporary, true)?;
        let total = self.geometry.file_size_bytes();
        file.allocate(total)?;
        // Zero-fill everything so that later writes land on written extents: no extent
        // conversion (a metadata change) on the data path.
        let mut buf = self.engine.pool().acquire().await;
        let step = buf.capacity() as u64;
        let mut offset = 0;
        while offset < total {
            let len = step.min(total - offset);
            buf.set_len(len as usize);
            buf.fill(0);
            if offset == 0 {
                let meta_bytes = self.geometry.meta_bytes() as usize;
                let image = MetaImage::free(&self.geometry, 0, 0);
                image.encode(&self.geometry, &mut buf[..meta_bytes]);
            }
            buf = engine_io::write(&*self.engine, &file, offset, buf).await?;
            offset += len;
        }
        drop(buf);
        engine_io::sync(&*self.engine, &file).await?;
        drop(file);
        let path = self.file_path(number, "chk");
        fs::rename(&temporary, &path).map_err(|e| Error::io("rename", &path, e))?;
        sync_dir(&self.chunks_dir)?;
        self.engine.open(&path, false)
    }
}
