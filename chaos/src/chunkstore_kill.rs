//! Scenario `chunkstore-kill`: a chunk store survives kill -9 with its durability contract.
//!
//! A worker process writes batches of 4 KiB blocks, each block's content naming its chunk,
//! block and a unique value. Before a batch it journals its intent; after the batch's `flush`
//! returns it journals the batch as durable (see [`crate::journal`]). The harness kills the
//! worker with SIGKILL at a random moment, reopens the store in its own process (the real
//! recovery path), and reads every block:
//!
//! - a block whose last write is durable must read exactly that value;
//! - a block written by a batch that was not durable at the kill may read as its durable value,
//!   as any value from such batches, or as a checksum error (detected, never served);
//! - bytes that match no allowed value are silent corruption; an error or a wrong value for a
//!   durable block is a lost acknowledged write. Both must stay at zero.

use std::{
    path::{Path, PathBuf},
    rc::Rc,
};

use cairn_common::{BLOCK_SIZE, ChunkId, OwnerId, PoolId};
use cairn_storage_node::{ChunkStore, ChunkStoreOptions, Error};

use crate::journal::{self, BlockKey, JournalWriter};

/// Chunks the worker writes into.
pub const CHUNK_COUNT: u32 = 8;
/// 256 KiB chunks: 64 blocks each, small enough to verify every block each round.
pub const CHUNK_BYTES: u32 = 256 << 10;
const BLOCKS_PER_CHUNK: u32 = CHUNK_BYTES / BLOCK_SIZE;
/// The most writes in one batch.
pub const BATCH_WRITES_MAX: u64 = 48;
const MAGIC: u32 = 0x4348_4b31;

fn chunk(index: u32) -> ChunkId {
    ChunkId {
        pool: PoolId(9),
        owner: OwnerId(9),
        index,
    }
}

fn options() -> ChunkStoreOptions {
    ChunkStoreOptions {
        create: true,
        chunk_size_bytes: CHUNK_BYTES,
        preallocate_slots: CHUNK_COUNT,
        slots_per_file: 4,
        ..ChunkStoreOptions::default()
    }
}

/// xorshift64: the scenario's only randomness, from a printed seed.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; distinct seeds give distinct streams).
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed: xorshift needs a non-zero state, and `seed | 1` would make
        // seeds 2k and 2k+1 the same run.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// The content of a block holding `value`: a header naming it, then bytes derived from it.
pub fn block_content(key: BlockKey, value: u64) -> Vec<u8> {
    let mut out = vec![0u8; BLOCK_SIZE as usize];
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&key.0.to_le_bytes());
    out[8..12].copy_from_slice(&key.1.to_le_bytes());
    out[16..24].copy_from_slice(&value.to_le_bytes());
    let mut rng = Rng::new(value ^ 0x9e37_79b9_7f4a_7c15);
    for byte in &mut out[24..] {
        *byte = rng.next_u64() as u8;
    }
    out
}

/// What a block's bytes hold: `Some(0)` for never written (zeros), `Some(value)` for a
/// well-formed block of this key, `None` for anything else.
fn decode(key: BlockKey, bytes: &[u8]) -> Option<u64> {
    if bytes.iter().all(|b| *b == 0) {
        return Some(0);
    }
    let value = u64::from_le_bytes(bytes[16..24].try_into().ok()?);
    (block_content(key, value) == bytes).then_some(value)
}

/// The worker: writes and flushes batches until killed.
pub fn worker(dir: &Path, journal_path: &Path, seed: u64) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let store = Rc::new(
            ChunkStore::open(dir, &options())
                .await
                .map_err(|e| e.to_string())?,
        );
        for index in 0..CHUNK_COUNT {
            match store.create(chunk(index)).await {
                Ok(()) | Err(Error::AlreadyExists { .. }) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
        store.flush().await.map_err(|e| e.to_string())?;
        let expected = journal::read(journal_path).map_err(|e| e.to_string())?;
        let mut journal = JournalWriter::open(journal_path).map_err(|e| e.to_string())?;
        let mut rng = Rng::new(seed);
        let mut batch = expected.last_batch;
        loop {
            batch += 1;
            let count = 1 + rng.below(BATCH_WRITES_MAX);
            let writes: Vec<(BlockKey, u64)> = (0..count)
                .map(|i| {
                    let key = (
                        rng.below(u64::from(CHUNK_COUNT)) as u32,
                        rng.below(u64::from(BLOCKS_PER_CHUNK)) as u32,
                    );
                    (key, (batch << 16) | i)
                })
                .collect();
            journal.intent(batch, &writes).map_err(|e| e.to_string())?;
            // Writes to the same block within a batch run one after the other (the last one
            // wins); distinct blocks run concurrently.
            let local = tokio::task::LocalSet::new();
            let mut handles = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (key, value) in writes.iter().rev().copied() {
                if !seen.insert(key) {
                    continue;
                }
                let store = store.clone();
                handles.push(local.spawn_local(async move {
                    let offset = u64::from(key.1) * u64::from(BLOCK_SIZE);
                    store
                        .write(chunk(key.0), offset, &block_content(key, value))
                        .await
                }));
            }
            local.await;
            for handle in handles {
                handle
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            }
            store.flush().await.map_err(|e| e.to_string())?;
            journal.durable(batch).map_err(|e| e.to_string())?;
        }
    })
}

/// What one verification found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Verdict {
    /// Durable block writes recorded so far.
    pub acknowledged: u64,
    /// Durable blocks that read wrong or failed.
    pub lost: u64,
    /// Reads that returned bytes matching no allowed value.
    pub corrupt: u64,
    /// Checksum errors on blocks an interrupted batch touched (allowed, detected).
    pub detected: u64,
}

/// Reopens the store after a kill and checks every block against the journal. Journal
/// entries supersede one another in order, so the final durable value of each block counts.
pub fn verify(dir: &Path, journal_path: &Path) -> Result<Verdict, String> {
    let expected = journal::read(journal_path).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let store = ChunkStore::open(dir, &options()).await.map_err(|e| e.to_string())?;
        let mut verdict = Verdict { acknowledged: expected.acknowledged, ..Verdict::default() };
        for index in 0..CHUNK_COUNT {
            for block in 0..BLOCKS_PER_CHUNK {
                let key = (index, block);
                let durable = expected.durable.get(&key).copied().unwrap_or(0);
                let maybe = expected.maybe.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                let offset = u64::from(block) * u64::from(BLOCK_SIZE);
                match store.read(chunk(index), offset, BLOCK_SIZE as usize).await {
                    Ok(bytes) => match decode(key, &bytes) {
                        Some(value) if value == durable || maybe.contains(&value) => {}
                        Some(value) if durable != 0 => {
                            eprintln!("lost: chunk {index} block {block} reads value {value:#x}, durable {durable:#x}");
                            verdict.lost += 1;
                        }
                        Some(_) | None => {
                            eprintln!("corrupt: chunk {index} block {block} returned bytes nobody wrote");
                            verdict.corrupt += 1;
                        }
                    },
                    Err(Error::Corrupt { .. }) if !maybe.is_empty() => verdict.detected += 1,
                    Err(Error::NotFound { .. }) if durable == 0 && expected.acknowledged == 0 => {}
                    Err(error) => {
                        eprintln!("lost: chunk {index} block {block}: {error}");
                        verdict.lost += 1;
                    }
                }
            }
        }
        Ok(verdict)
    })
}

/// The harness: start the worker, kill -9 it at a random moment, verify; repeat for `seconds`.
pub fn run(dir: &Path, seconds: f64, seed: u64) -> Result<Verdict, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let store_dir = dir.join("store");
    let journal_path: PathBuf = dir.join("journal");
    let verdicts = crate::kill::kill_rounds(
        "chunkstore-worker",
        &store_dir,
        &journal_path,
        seconds,
        seed,
        50,
        |round| {
            let verdict = verify(&store_dir, &journal_path)?;
            eprintln!(
                "round {round}: acknowledged={} lost={} corrupt={} detected={}",
                verdict.acknowledged, verdict.lost, verdict.corrupt, verdict.detected
            );
            Ok(verdict)
        },
    )?;
    let mut totals = Verdict::default();
    for verdict in verdicts {
        totals.acknowledged = verdict.acknowledged;
        totals.lost += verdict.lost;
        totals.corrupt += verdict.corrupt;
        totals.detected += verdict.detected;
    }
    Ok(totals)
}
