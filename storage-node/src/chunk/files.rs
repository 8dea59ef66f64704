//! The pool of chunk files: loading it at open and growing it.
//!
//! Crash ordering of preallocation: a new file is created as `N.tmp`, allocated, zero-filled,
//! given a free meta image in every slot and synced, then renamed to `N.chk` and the directory
//! synced. A crash leaves at most a `.tmp` file, which the next open deletes; every `.chk` file
//! is complete.

use std::{
    fs,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use super::{
    Chunk, ChunkMeta, ChunkStore, FreeSlot, MetaImage, Place, SlotState, State, lock::RangeLocks,
};
use crate::{
    error::{Error, Result},
    io::{self as engine_io, EngineFile},
    join::join_all,
    label::sync_dir,
};

/// What a chunk slot held at open.
enum Loaded {
    Chunk(Arc<Chunk>),
    Free(FreeSlot),
    Damaged,
}

impl ChunkStore {
    /// Scans `chunks/`: removes unfinished preallocations, reads each slot's newest valid meta
    /// image, and rebuilds the chunk index and the free pool.
    pub(super) async fn load(&self) -> Result<()> {
        let dir = &self.chunks_dir;
        let mut numbers = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io("readdir", dir, e))? {
            let path = entry.map_err(|e| Error::io("readdir", dir, e))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
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
            self.load_file(number).await?;
        }
        let state = self.state();
        tracing::info!(
            chunks = state.chunks.len(),
            free_slots = state.free.len(),
            damaged_slots = state.damaged.len(),
            disk = %self.label.disk_id,
            "chunk store opened"
        );
        Ok(())
    }

    async fn load_file(&self, number: u64) -> Result<()> {
        let path = self.file_path(number, "chk");
        let file = self.engine.open(&path, false)?;
        let size = file.size_bytes()?;
        let slot_bytes = self.geometry.slot_bytes();
        {
            let mut state = self.state();
            state.next_file_number = state.next_file_number.max(number + 1);
        }
        if size == 0 || size % slot_bytes != 0 {
            // Not a whole number of slots of this geometry: nothing in it can be trusted.
            tracing::error!(path = %path.display(), size, "pool file has the wrong size; set aside");
            self.state().damaged.push((path, u32::MAX));
            return Ok(());
        }
        let slot_count = u32::try_from(size / slot_bytes).expect("invariant: bounded file size");
        let places = (0..slot_count).map(|slot_index| Place {
            file: file.clone(),
            file_number: number,
            slot_index,
            base_bytes: u64::from(slot_index) * slot_bytes,
        });
        let loads = places.map(|place| self.load_slot(place)).collect();
        for (slot_index, loaded) in join_all(loads).await.into_iter().enumerate() {
            let mut state = self.state();
            match loaded? {
                Loaded::Free(free) => state.free.push(free),
                Loaded::Damaged => state.damaged.push((path.clone(), slot_index as u32)),
                Loaded::Chunk(chunk) => self.insert_loaded(&mut state, chunk),
            }
        }
        Ok(())
    }

    /// Inserts a loaded chunk. The same chunk in two slots means a crash between deleting it in
    /// one and recreating it in another: the newer generation wins, the older slot is freed by
    /// the next flush.
    fn insert_loaded(&self, state: &mut State, chunk: Arc<Chunk>) {
        let generation = chunk.meta().image.generation;
        state.next_generation = state.next_generation.max(generation);
        let loser = match state.chunks.get(&chunk.id) {
            None => {
                state.chunks.insert(chunk.id, chunk);
                return;
            }
            Some(existing) if existing.meta().image.generation < generation => state
                .chunks
                .insert(chunk.id, chunk)
                .expect("invariant: present"),
            Some(_) => chunk,
        };
        tracing::warn!(chunk = %loser.id, "older duplicate of chunk freed");
        {
            let mut meta = loser.meta();
            meta.image.state = SlotState::Free;
            meta.deleted = true;
            meta.dirty = true;
        }
        state.dirty.push(loser.clone());
        state.freeing.push(loser);
    }

    async fn load_slot(&self, place: Place) -> Result<Loaded> {
        let meta_bytes = self.geometry.meta_bytes() as usize;
        let mut images = Vec::with_capacity(2);
        for copy in 0..2u64 {
            let mut buf = self.engine.pool().acquire().await;
            buf.set_len(meta_bytes);
            let offset = place.base_bytes + self.geometry.meta_offset(copy);
            let buf = engine_io::read(&*self.engine, &place.file, offset, buf).await?;
            // A never-written second copy is normal; only report when neither is valid.
            if let Ok(image) = MetaImage::decode(&self.geometry, &buf)
                && image.sequence % 2 == copy
            {
                images.push(image);
            }
        }
        let Some(image) = images.into_iter().max_by_key(|image| image.sequence) else {
            let path = place.file.path().display();
            tracing::error!(path = %path, slot = place.slot_index, "no valid meta image; slot set aside");
            return Ok(Loaded::Damaged);
        };
        let durable_sequence = image.sequence;
        Ok(match image.state {
            SlotState::Free => Loaded::Free(FreeSlot {
                place,
                durable_sequence,
            }),
            SlotState::InUse => Loaded::Chunk(Arc::new(Chunk {
                id: image.chunk,
                place,
                meta: Mutex::new(ChunkMeta {
                    image,
                    durable_sequence,
                    dirty: false,
                    deleted: false,
                }),
                locks: RangeLocks::default(),
            })),
        })
    }

    /// Creates pool files until at least `count` chunk slots are free.
    pub async fn preallocate_to(&self, count: u32) -> Result<()> {
        while self.free_slot_count() < count as usize {
            self.preallocate_file().await?;
        }
        Ok(())
    }

    /// Creates one complete, zero-filled pool file of free slots and adds them to the pool.
    pub(super) async fn preallocate_file(&self) -> Result<()> {
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
        let slot_bytes = self.geometry.slot_bytes();
        let mut state = self.state();
        // Pushed in reverse so that slots are taken from the start of the file.
        for slot_index in (0..self.slots_per_file).rev() {
            let base_bytes = u64::from(slot_index) * slot_bytes;
            let place = Place {
                file: file.clone(),
                file_number: number,
                slot_index,
                base_bytes,
            };
            state.free.push(FreeSlot {
                place,
                durable_sequence: 0,
            });
        }
        Ok(())
    }

    async fn fill_new_file(&self, number: u64) -> Result<Arc<EngineFile>> {
        let temporary = self.file_path(number, "tmp");
        let file = self.engine.open(&temporary, true)?;
        let slot_bytes = self.geometry.slot_bytes();
        let total = slot_bytes * u64::from(self.slots_per_file);
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
            buf = engine_io::write(&*self.engine, &file, offset, buf).await?;
            offset += len;
        }
        let meta_bytes = self.geometry.meta_bytes() as usize;
        buf.set_len(meta_bytes);
        MetaImage::free(&self.geometry, 0, 0).encode(&self.geometry, &mut buf);
        for slot_index in 0..u64::from(self.slots_per_file) {
            buf = engine_io::write(&*self.engine, &file, slot_index * slot_bytes, buf).await?;
        }
        drop(buf);
        engine_io::sync(&*self.engine, &file).await?;
        drop(file);
        let path = self.file_path(number, "chk");
        fs::rename(&temporary, &path).map_err(|e| Error::io("rename", &path, e))?;
        sync_dir(&self.chunks_dir)?;
        self.engine.open(&path, false)
    }

    pub(super) fn file_path(&self, number: u64, extension: &str) -> PathBuf {
        self.chunks_dir.join(format!("{number:016x}.{extension}"))
    }
}
