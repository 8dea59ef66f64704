//! The chunk store: fixed-size chunks in preallocated files, a CRC-32C per 4 KiB block.
//!
//! PERF-CRITICAL: `read` and `write` are on every client IO. No logging on their success paths,
//! no lock held across an await except the chunk's block range lock.
//!
//! # Layout
//!
//! A data directory holds the disk label ([`crate::label`]) and `chunks/`, the pool: chunk files
//! named by a 16-hex-digit number, each holding `slots_per_file` chunk slots (see [`format`]).
//! Files are created, fully allocated and zero-filled ahead of use, so a chunk write never
//! changes a file's size or extents: it is one direct write into a slot's data area. Creating a
//! chunk takes a free slot from the pool; deleting returns it.
//!
//! Why many slots per file rather than a file per chunk: on ext4 a write to a file whose
//! timestamps have not been updated in the current clock tick dirties its inode in the journal.
//! Random writes over a file per 4 MiB chunk hit a different inode almost every time; fio itself
//! measured 17,900 vs 24,900 4 KiB random-write IOPS at qd1 over 256 files vs one file on this
//! machine. Fewer files also mean one fdatasync per dirty file at flush instead of one per dirty
//! chunk, and fewer open descriptors.
//!
//! # Checksums
//!
//! Every block written records its CRC-32C in the chunk's in-memory meta image; every read
//! verifies each block it returns against it. A mismatch is [`Error::Corrupt`] naming the chunk
//! and block: bad data is never returned. Blocks never written read as zeros without touching
//! the disk (thin chunks), which also makes reused pool files safe.
//!
//! # Durability: what is durable when a call returns
//!
//! | call                 | visible to reads | durable (survives power loss)          |
//! |----------------------|------------------|----------------------------------------|
//! | `write`              | yes              | no: after the next `flush` returns     |
//! | `create`             | yes              | no: after the next `flush` returns     |
//! | `delete`             | yes              | no: after the next `flush` returns     |
//! | `discard`            | yes              | no: after the next `flush` returns     |
//! | `flush`              | -                | every call that returned before it began |
//!
//! This is a disk with a volatile write cache and a FLUSH command, which is what the layer above
//! needs: the Raft log (the write cache device) is the durable record of every acknowledged
//! write, and a `flush` is its checkpoint; after a crash the log is replayed from the last
//! checkpoint.
//!
//! # Crash ordering of `flush`
//!
//! 1. Capture the meta image of every dirty chunk (bitmap + checksums of completed writes).
//! 2. fdatasync each file holding a dirty chunk: the data those images describe is durable.
//! 3. Write each image into the meta copy *not* holding the last durable image.
//! 4. fdatasync each file again: the new images are durable.
//!
//! A crash before 4 completes leaves, per chunk, the previous durable image or the new one (a torn
//! image fails its own checksum and the other slot is used). A block written after the last
//! durable image but overwritten on disk then reads as a checksum error (detected, repaired from
//! a replica by the layer above) or as its previous content; never as unchecked data.
//!
//! A deleted chunk's slot is reused only after the flush that made its deletion durable, so a
//! crash can never pair an old chunk's durable image with a new chunk's data.
//!
//! A discard clears the blocks it covers whole in the meta image (no data IO), zeroes the
//! blocks it covers in part by read-modify-write, and deletes a chunk left with no written
//! block (see `discard.rs` for its crash ordering and replay).

mod cache;
mod digest;
mod discard;
mod files;
mod flush;
mod format;
mod lock;

use std::{
    collections::HashMap,
    fs,
    ops::Deref,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use cache::{BlockCache, CACHED_IO_BYTES_MAX};
use cairn_common::{BLOCK_SIZE, CHUNK_SIZE_DEFAULT, ChunkId, DiskId};
pub use format::{FORMAT_VERSION, Geometry, MetaImage, SlotState};
use lock::{Mode, RangeLocks};

use crate::{
    checksum::block_crcs,
    error::{Error, Result},
    io::{self as engine_io, AlignedBuf, EngineFile, EngineOptions, IoEngine, fault::FaultyEngine},
    label::{self, Label},
};

/// Meta images a flush writes at once; bounds the buffers it holds (each takes one).
pub const FLUSH_BATCH_MAX: usize = 32;

/// Chunk slots per new pool file by default: 64 x 4 MiB = 256 MiB files, so a 10 TB disk needs
/// about 40,000 open files.
pub const SLOTS_PER_FILE_DEFAULT: u32 = 64;

/// The most chunk slots one pool file may hold.
pub const SLOTS_PER_FILE_MAX: u32 = 4096;

/// How to open a chunk store.
#[derive(Clone, Debug)]
pub struct ChunkStoreOptions {
    /// Format the directory if it has no label yet.
    pub create: bool,
    /// Chunk size when formatting; must match the label when opening.
    pub chunk_size_bytes: u32,
    /// Free chunk slots to have ready after open (pool files are created now if missing).
    pub preallocate_slots: u32,
    /// Chunk slots in each new pool file.
    pub slots_per_file: u32,
    /// The IO engine's choice and sizes.
    pub engine: EngineOptions,
    /// Runs the engine behind a [`FaultyEngine`] ([`ChunkStore::faults`]), so a running node
    /// can be told to fail this disk's IO: for chaos runs and tests, never in production (each
    /// request then takes a lock to match the rules).
    pub fault_injection: bool,
    /// Memory for the read cache of verified blocks ([`ChunkStore::read_cached`]); 0 turns
    /// it off. Taken as blocks are cached, not up front.
    pub read_cache_bytes: u64,
}

impl Default for ChunkStoreOptions {
    fn default() -> Self {
        ChunkStoreOptions {
            create: true,
            chunk_size_bytes: CHUNK_SIZE_DEFAULT,
            preallocate_slots: 0,
            slots_per_file: SLOTS_PER_FILE_DEFAULT,
            engine: EngineOptions::default(),
            fault_injection: false,
            read_cache_bytes: 0,
        }
    }
}

/// Counters since open.
#[derive(Debug, Default)]
pub struct Stats {
    /// Completed reads.
    pub reads: AtomicU64,
    /// Completed writes.
    pub writes: AtomicU64,
    /// Microseconds spent in completed reads, from the call to the data (latency, summed).
    pub read_micros: AtomicU64,
    /// Microseconds spent in completed writes.
    pub write_micros: AtomicU64,
    /// Blocks whose checksum failed on read.
    pub corrupt_blocks: AtomicU64,
    /// Completed flushes.
    pub flushes: AtomicU64,
    /// Completed discards of chunks that existed.
    pub discards: AtomicU64,
    /// Reads served from the read cache (counted in `reads` too).
    pub cached_reads: AtomicU64,
}

/// Where a chunk slot is: a pool file and the slot's byte offset in it.
#[derive(Clone)]
struct Place {
    file: Arc<EngineFile>,
    file_number: u64,
    slot_index: u32,
    base_bytes: u64,
}

impl Place {
    fn same_slot(&self, other: &Place) -> bool {
        (self.file_number, self.slot_index) == (other.file_number, other.slot_index)
    }
}

/// A chunk slot in the pool, not holding a chunk.
struct FreeSlot {
    place: Place,
    durable_sequence: u64,
}

struct ChunkMeta {
    image: MetaImage,
    /// The sequence of the image last made durable in this file.
    durable_sequence: u64,
    /// Changed since the last captured image.
    dirty: bool,
    /// Deleted: ops that waited for a lock must not touch it.
    deleted: bool,
}

struct Chunk {
    id: ChunkId,
    place: Place,
    meta: Mutex<ChunkMeta>,
    locks: RangeLocks,
}

impl Chunk {
    fn meta(&self) -> std::sync::MutexGuard<'_, ChunkMeta> {
        self.meta
            .lock()
            .expect("invariant: chunk meta lock not poisoned")
    }
}

#[derive(Default)]
struct State {
    chunks: HashMap<ChunkId, Arc<Chunk>>,
    free: Vec<FreeSlot>,
    /// Deleted; their free image is not durable yet.
    freeing: Vec<Arc<Chunk>>,
    /// Chunks with `dirty` set, each once.
    dirty: Vec<Arc<Chunk>>,
    next_file_number: u64,
    next_generation: u64,
    damaged: Vec<(PathBuf, u32)>,
}

/// The checksummed chunk store of one disk.
pub struct ChunkStore {
    slots_per_file: u32,
    chunks_dir: PathBuf,
    label: Label,
    geometry: Geometry,
    engine: Arc<dyn IoEngine>,
    state: Mutex<State>,
    flush_lock: tokio::sync::Mutex<()>,
    stats: Stats,
    /// Why the disk was taken out of service, once it was ([`ChunkStore::fail`]).
    failure: OnceLock<String>,
    /// The fault-injecting engine this store runs on, if opened with `fault_injection`.
    faults: Option<Arc<FaultyEngine>>,
    /// Verified blocks in memory, for client reads.
    cache: BlockCache,
}

/// Data read from a chunk: a pool buffer and the window of it that was asked for.
pub struct ReadBuf {
    buf: AlignedBuf,
    start: usize,
    len: usize,
}

impl Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl ChunkStore {
    /// Opens (formatting if allowed and needed) the store in `dir` with its own engine.
    pub async fn open(dir: &Path, options: &ChunkStoreOptions) -> Result<ChunkStore> {
        fs::create_dir_all(dir).map_err(|e| Error::io("mkdir", dir, e))?;
        let engine = engine_io::open_engine(dir, &options.engine)?;
        if options.fault_injection {
            let faulty = Arc::new(FaultyEngine::new(engine));
            let mut store = ChunkStore::open_with_engine(dir, faulty.clone(), options).await?;
            store.faults = Some(faulty);
            return Ok(store);
        }
        ChunkStore::open_with_engine(dir, engine, options).await
    }

    /// Opens the store in `dir` on a given engine (tests pass a fault-injecting one).
    pub async fn open_with_engine(
        dir: &Path,
        engine: Arc<dyn IoEngine>,
        options: &ChunkStoreOptions,
    ) -> Result<ChunkStore> {
        let label = match label::read(dir)? {
            Some(label) => label,
            None if options.create => label::format(dir, options.chunk_size_bytes)?,
            None => {
                return Err(Error::BadFormat {
                    path: dir.join(label::LABEL_FILE),
                    reason: "no disk label (not a Cairn data directory)".into(),
                });
            }
        };
        let geometry = Geometry::new(label.chunk_size_bytes).ok_or_else(|| Error::BadFormat {
            path: dir.join(label::LABEL_FILE),
            reason: format!("unsupported chunk size {}", label.chunk_size_bytes),
        })?;
        let buffer_size = engine.pool().buffer_size_bytes();
        assert!(
            geometry.meta_bytes() <= buffer_size,
            "meta image must fit one buffer"
        );
        let chunks_dir = dir.join("chunks");
        fs::create_dir_all(&chunks_dir).map_err(|e| Error::io("mkdir", &chunks_dir, e))?;
        engine_io::raise_open_files_limit();
        let slots_per_file = options.slots_per_file;
        assert!(
            slots_per_file > 0 && slots_per_file <= SLOTS_PER_FILE_MAX,
            "{slots_per_file}"
        );
        let store = ChunkStore {
            slots_per_file,
            chunks_dir,
            label,
            geometry,
            engine,
            state: Mutex::new(State::default()),
            flush_lock: tokio::sync::Mutex::new(()),
            stats: Stats::default(),
            failure: OnceLock::new(),
            faults: None,
            cache: BlockCache::new(options.read_cache_bytes),
        };
        store.load().await?;
        store.preallocate_to(options.preallocate_slots).await?;
        Ok(store)
    }

    /// Takes the disk out of service: every later read, write, create, delete, discard and
    /// flush fails with [`Error::DiskFailed`]. For a disk that failed an IO: a disk that
    /// returned EIO once is not trusted with more (what it holds comes back from replicas
    /// elsewhere). Returns false if it was out of service already (the first reason stays).
    pub fn fail(&self, reason: String) -> bool {
        self.failure.set(reason).is_ok()
    }

    /// Why the disk was taken out of service, if it was.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    pub(crate) fn check_in_service(&self) -> Result<()> {
        match self.failure.get() {
            None => Ok(()),
            Some(reason) => Err(Error::DiskFailed {
                reason: reason.clone(),
            }),
        }
    }

    /// The fault-injecting engine under this store, if it was opened with
    /// [`ChunkStoreOptions::fault_injection`].
    pub fn faults(&self) -> Option<&Arc<FaultyEngine>> {
        self.faults.as_ref()
    }

    /// The disk's data directory (holding its label and `chunks/`).
    pub fn dir(&self) -> &Path {
        self.chunks_dir.parent().unwrap_or(&self.chunks_dir)
    }

    /// The disk's identity, from its label.
    pub fn disk_id(&self) -> DiskId {
        self.label.disk_id
    }

    /// The disk's label.
    pub fn label(&self) -> &Label {
        &self.label
    }

    /// The chunk size.
    pub fn chunk_size_bytes(&self) -> u32 {
        self.geometry.chunk_size_bytes()
    }

    /// The largest single read or write: one engine buffer, counting whole blocks (an IO that
    /// starts or ends inside a block counts those blocks whole).
    pub fn io_size_max(&self) -> u32 {
        self.engine
            .pool()
            .buffer_size_bytes()
            .min(self.geometry.chunk_size_bytes())
    }

    /// The engine this store runs on.
    pub fn engine(&self) -> &Arc<dyn IoEngine> {
        &self.engine
    }

    /// Counters since open.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The chunks stored, in no particular order.
    pub fn chunk_ids(&self) -> Vec<ChunkId> {
        self.state().chunks.keys().copied().collect()
    }

    /// Free chunk slots in the pool.
    pub fn free_slot_count(&self) -> usize {
        self.state().free.len()
    }

    /// Chunk slots found unreadable at open (no valid meta image), as (file, slot index): set
    /// aside, never reused.
    pub fn damaged_slots(&self) -> Vec<(PathBuf, u32)> {
        self.state().damaged.clone()
    }

    /// The file holding `chunk` and the offset of its slot in it (for tests and tools that
    /// inspect or damage it).
    pub fn chunk_location(&self, chunk: ChunkId) -> Result<(PathBuf, u64)> {
        let chunk = self.chunk(chunk)?;
        Ok((
            chunk.place.file.path().to_path_buf(),
            chunk.place.base_bytes,
        ))
    }

    /// The file offset of byte `offset_bytes` of a chunk's data.
    pub fn data_file_offset(&self, chunk: ChunkId, offset_bytes: u64) -> Result<u64> {
        let base = self.chunk(chunk)?.place.base_bytes;
        Ok(base + self.geometry.block_offset(0) + offset_bytes)
    }

    /// The chunk geometry (slot layout) of this store.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("invariant: store state lock not poisoned")
    }

    fn chunk(&self, id: ChunkId) -> Result<Arc<Chunk>> {
        self.state()
            .chunks
            .get(&id)
            .cloned()
            .ok_or(Error::NotFound { chunk: id })
    }

    /// Creates an empty chunk (every block reads as zeros) from a free file.
    pub async fn create(&self, id: ChunkId) -> Result<()> {
        self.check_in_service()?;
        loop {
            {
                let mut state = self.state();
                if state.chunks.contains_key(&id) {
                    return Err(Error::AlreadyExists { chunk: id });
                }
                if let Some(free) = state.free.pop() {
                    state.next_generation += 1;
                    let mut image = MetaImage::free(&self.geometry, 0, state.next_generation);
                    image.state = SlotState::InUse;
                    image.chunk = id;
                    let chunk = Arc::new(Chunk {
                        id,
                        place: free.place,
                        meta: Mutex::new(ChunkMeta {
                            image,
                            durable_sequence: free.durable_sequence,
                            dirty: true,
                            deleted: false,
                        }),
                        locks: RangeLocks::default(),
                    });
                    state.dirty.push(chunk.clone());
                    state.chunks.insert(id, chunk);
                    return Ok(());
                }
            }
            self.preallocate_file().await?;
        }
    }

    /// Deletes a chunk; its file returns to the pool once the deletion is durable.
    pub async fn delete(&self, id: ChunkId) -> Result<()> {
        self.check_in_service()?;
        let chunk = self
            .state()
            .chunks
            .remove(&id)
            .ok_or(Error::NotFound { chunk: id })?;
        // Wait for the IO already admitted on the chunk to finish.
        let last = self.geometry.block_count() - 1;
        let _all = chunk.locks.lock(0, last, Mode::Exclusive).await;
        discard::retire(&mut self.state(), &chunk);
        Ok(())
    }

    /// Checks an IO range; it must fit the chunk, and the whole blocks it touches must fit one
    /// engine buffer (so an unaligned IO of `io_size_max` bytes, which touches one block more,
    /// is refused: callers split at multiples of `io_size_max`).
    fn check_range(&self, id: ChunkId, offset_bytes: u64, size_bytes: usize) -> Result<(u32, u32)> {
        let end = offset_bytes.checked_add(size_bytes as u64);
        let block = u64::from(BLOCK_SIZE);
        let span = end.map(|end| end.div_ceil(block) * block - offset_bytes / block * block);
        let valid = size_bytes > 0
            && span.is_some_and(|span| span <= u64::from(self.io_size_max()))
            && end.is_some_and(|end| end <= u64::from(self.geometry.chunk_size_bytes()));
        if !valid {
            return Err(Error::OutOfRange {
                chunk: id,
                offset_bytes,
                size_bytes: size_bytes as u64,
                chunk_size_bytes: self.geometry.chunk_size_bytes(),
                io_size_max: self.io_size_max(),
            });
        }
        let block = u64::from(BLOCK_SIZE);
        let first = u32::try_from(offset_bytes / block).expect("invariant: inside a chunk");
        let last = u32::try_from((offset_bytes + size_bytes as u64 - 1) / block)
            .expect("invariant: inside a chunk");
        Ok((first, last))
    }

    /// Reads `size_bytes` at `offset_bytes` of a chunk from the disk, verifying every block's
    /// checksum. For checks of what the disk holds (scrub, repair, copies): the read cache is
    /// neither used nor filled.
    pub async fn read(&self, id: ChunkId, offset_bytes: u64, size_bytes: usize) -> Result<ReadBuf> {
        self.read_with(id, offset_bytes, size_bytes, false).await
    }

    /// [`ChunkStore::read`] for clients: a read whose written blocks are all in the read
    /// cache is served from memory, and one of at most 64 KiB that is not fills it (see
    /// `cache.rs`).
    pub async fn read_cached(
        &self,
        id: ChunkId,
        offset_bytes: u64,
        size_bytes: usize,
    ) -> Result<ReadBuf> {
        self.read_with(id, offset_bytes, size_bytes, true).await
    }

    async fn read_with(
        &self,
        id: ChunkId,
        offset_bytes: u64,
        size_bytes: usize,
        cached: bool,
    ) -> Result<ReadBuf> {
        let started = std::time::Instant::now();
        self.check_in_service()?;
        let (first, last) = self.check_range(id, offset_bytes, size_bytes)?;
        let chunk = self.chunk(id)?;
        let _range = chunk.locks.lock(first, last, Mode::Shared).await;
        let mut buf = self.engine.pool().acquire().await;
        buf.set_len((last - first + 1) as usize * BLOCK_SIZE as usize);
        let cached = cached && self.cache.enabled();
        // Per block, written or not: only a read through the cache needs them one by one
        // (they hold while this read holds the range lock: writes and discards exclude it).
        let (any_written, written, generation) = {
            let meta = chunk.meta();
            if meta.deleted {
                return Err(Error::NotFound { chunk: id });
            }
            let blocks = first..=last;
            let written: Vec<bool> = if cached {
                blocks.clone().map(|b| meta.image.is_written(b)).collect()
            } else {
                Vec::new()
            };
            let any = if cached {
                written.contains(&true)
            } else {
                blocks.into_iter().any(|b| meta.image.is_written(b))
            };
            (any, written, meta.image.generation)
        };
        if !any_written {
            buf.fill(0);
        } else if cached && self.cache.get(generation, first, &written, &mut buf) {
            self.stats.cached_reads.fetch_add(1, Ordering::Relaxed);
        } else {
            let offset = chunk.place.base_bytes + self.geometry.block_offset(first);
            buf = engine_io::read(&*self.engine, &chunk.place.file, offset, buf).await?;
            self.verify(&chunk, first, &mut buf)?;
            if cached && buf.len() <= CACHED_IO_BYTES_MAX {
                let blocks = buf.chunks_exact(BLOCK_SIZE as usize).zip(&written);
                for (i, (data, _)) in blocks.enumerate().filter(|(_, (_, w))| **w) {
                    self.cache.insert(generation, first + i as u32, data);
                }
            }
        }
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let micros = started.elapsed().as_micros() as u64;
        self.stats.read_micros.fetch_add(micros, Ordering::Relaxed);
        let start = (offset_bytes % u64::from(BLOCK_SIZE)) as usize;
        Ok(ReadBuf {
            buf,
            start,
            len: size_bytes,
        })
    }

    /// Blocks in the read cache now.
    pub fn cached_blocks(&self) -> usize {
        self.cache.len()
    }

    /// Checks the blocks in `buf` (starting at block `first`) against their checksums and zeroes
    /// the ones never written. The caller holds a lock on the blocks.
    fn verify(&self, chunk: &Chunk, first: u32, buf: &mut AlignedBuf) -> Result<()> {
        let mut actual = Vec::with_capacity(buf.len() / BLOCK_SIZE as usize);
        block_crcs(buf, &mut actual);
        let meta = chunk.meta();
        for (i, crc) in actual.iter().enumerate() {
            let block = first + i as u32;
            if !meta.image.is_written(block) {
                let at = i * BLOCK_SIZE as usize;
                buf[at..at + BLOCK_SIZE as usize].fill(0);
            } else if meta.image.crcs[block as usize] != *crc {
                self.stats.corrupt_blocks.fetch_add(1, Ordering::Relaxed);
                return Err(Error::Corrupt {
                    chunk: chunk.id,
                    block_index: block,
                });
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset_bytes` of a chunk. Partial blocks are read, verified and merged
    /// first (read-modify-write). Visible to reads on return; durable after the next `flush`.
    pub async fn write(&self, id: ChunkId, offset_bytes: u64, data: &[u8]) -> Result<()> {
        self.write_checked(id, offset_bytes, data, true, false)
            .await
    }

    /// [`ChunkStore::write`] whose blocks also go into the read cache (write-through): for
    /// the replica that serves reads, where a block just written is the likeliest to be read.
    pub async fn write_cached(&self, id: ChunkId, offset_bytes: u64, data: &[u8]) -> Result<()> {
        self.write_checked(id, offset_bytes, data, true, true).await
    }

    /// [`ChunkStore::write`] for a log replay after a crash: a partial edge block is merged as
    /// stored, its checksum not verified. After a crash a block written since the last flush
    /// holds newer bytes than the checksum the flush recorded; the replay rewrites every such
    /// write in order, so the bytes a partial write does not cover are either rewritten by a
    /// later replayed write or unchanged since the flush. Only for entries the log held before
    /// the crash: anywhere else a mismatch is corruption and must fail.
    pub async fn write_replaying(&self, id: ChunkId, offset_bytes: u64, data: &[u8]) -> Result<()> {
        self.write_checked(id, offset_bytes, data, false, false)
            .await
    }

    async fn write_checked(
        &self,
        id: ChunkId,
        offset_bytes: u64,
        data: &[u8],
        verify_edges: bool,
        fill_cache: bool,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        self.check_in_service()?;
        let (first, last) = self.check_range(id, offset_bytes, data.len())?;
        let chunk = self.chunk(id)?;
        let _range = chunk.locks.lock(first, last, Mode::Exclusive).await;
        let generation = {
            let meta = chunk.meta();
            if meta.deleted {
                return Err(Error::NotFound { chunk: id });
            }
            meta.image.generation
        };
        // Dropped before any IO, under the exclusive lock: no reader can cache the old
        // content again, whether this write completes or fails.
        self.cache.invalidate(generation, first, last);
        let mut buf = self.engine.pool().acquire().await;
        let block = BLOCK_SIZE as usize;
        let start = (offset_bytes % u64::from(BLOCK_SIZE)) as usize;
        let span = (last - first + 1) as usize * block;
        let head_partial = start != 0 || (first == last && data.len() != block);
        let tail_partial = first != last && !(start + data.len()).is_multiple_of(block);
        if head_partial || tail_partial {
            let edges = (head_partial, tail_partial);
            buf = self
                .merge_edges(&chunk, first, last, edges, verify_edges, buf)
                .await?;
        }
        buf.set_len(span);
        buf[start..start + data.len()].copy_from_slice(data);
        let mut crcs = Vec::with_capacity(span / block);
        block_crcs(&buf, &mut crcs);
        let offset = chunk.place.base_bytes + self.geometry.block_offset(first);
        let buf = engine_io::write(&*self.engine, &chunk.place.file, offset, buf).await?;
        if fill_cache {
            // Still under the exclusive lock: what goes in is what the disk now holds.
            for (i, data) in buf.chunks_exact(block).enumerate() {
                self.cache.insert(generation, first + i as u32, data);
            }
        }
        drop(buf);
        let newly_dirty = {
            let mut meta = chunk.meta();
            for (i, crc) in crcs.into_iter().enumerate() {
                meta.image.set_written(first + i as u32, crc);
            }
            !std::mem::replace(&mut meta.dirty, true)
        };
        if newly_dirty {
            self.state().dirty.push(chunk.clone());
        }
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        let micros = started.elapsed().as_micros() as u64;
        self.stats.write_micros.fetch_add(micros, Ordering::Relaxed);
        Ok(())
    }

    /// Fills the first and last block of `buf` (span `first..=last`) with their current,
    /// verified content (zeros if never written) for a read-modify-write.
    async fn merge_edges(
        &self,
        chunk: &Chunk,
        first: u32,
        last: u32,
        (head, tail): (bool, bool),
        verify: bool,
        mut buf: AlignedBuf,
    ) -> Result<AlignedBuf> {
        let block = BLOCK_SIZE as usize;
        // The tail block is read into the buffer's first block and set aside, since IO always
        // lands at the start of the buffer; then the head block is read in place.
        let mut tail_content = None;
        if tail {
            buf = self.read_block(chunk, last, verify, buf).await?;
            tail_content = Some(buf[..block].to_vec());
        }
        if head {
            buf = self.read_block(chunk, first, verify, buf).await?;
        }
        buf.set_len((last - first + 1) as usize * block);
        if let Some(content) = tail_content {
            let at = (last - first) as usize * block;
            buf[at..at + block].copy_from_slice(&content);
        }
        Ok(buf)
    }

    /// Reads one block into the start of `buf` (zeros if never written), verified unless a
    /// replay asks otherwise.
    async fn read_block(
        &self,
        chunk: &Chunk,
        index: u32,
        verify: bool,
        mut buf: AlignedBuf,
    ) -> Result<AlignedBuf> {
        buf.set_len(BLOCK_SIZE as usize);
        if !chunk.meta().image.is_written(index) {
            buf.fill(0);
            return Ok(buf);
        }
        let offset = chunk.place.base_bytes + self.geometry.block_offset(index);
        buf = engine_io::read(&*self.engine, &chunk.place.file, offset, buf).await?;
        if verify {
            self.verify(chunk, index, &mut buf)?;
        }
        Ok(buf)
    }
}
