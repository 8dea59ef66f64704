//! Chunk store discards (SCSI UNMAP) on real files: whole blocks cleared without data IO,
//! partial edges zeroed, a chunk emptied by discards deleted and its slot reused only after a
//! flush, durability across reopen, concurrency with reads and writes, and the replay of
//! writes and discards after a crash against a byte model.

use std::{collections::BTreeMap, sync::Arc};

use cairn_common::{BLOCK_SIZE, ChunkId};
use cairn_storage_node::{
    ChunkStore, Error, ErrorClass,
    io::{
        EngineChoice, IoEngine,
        fault::{Fault, FaultyEngine},
    },
};
use proptest::prelude::*;

use super::support::{block_on, chunk, disk_dir, engine, open_store, pattern, small_store};

const CHOICES: [EngineChoice; 2] = [EngineChoice::Uring, EngineChoice::Psync];
/// `small_store`'s chunk size.
const CHUNK: usize = 64 << 10;
const BLOCK: usize = BLOCK_SIZE as usize;

/// A whole chunk as the store holds it: a chunk that does not exist reads as zeros. Through
/// the read cache (the whole chunk is one cacheable IO), so a discard that left a block there
/// would show.
async fn content(store: &ChunkStore, at: ChunkId) -> Result<Vec<u8>, Error> {
    match store.read_cached(at, 0, CHUNK).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(Error::NotFound { .. }) => Ok(vec![0; CHUNK]),
        Err(e) => Err(e),
    }
}

/// Writes, creating the chunk first if it does not exist (as a PG replica applies a write).
async fn write_creating(
    store: &ChunkStore,
    at: ChunkId,
    offset: usize,
    data: &[u8],
    replaying: bool,
) -> Result<(), Error> {
    for _ in 0..2 {
        let result = if replaying {
            store.write_replaying(at, offset as u64, data).await
        } else {
            store.write(at, offset as u64, data).await
        };
        match result {
            Err(Error::NotFound { .. }) => match store.create(at).await {
                Ok(()) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            },
            other => return other,
        }
    }
    Err(Error::NotFound { chunk: at })
}

/// Goal: blocks a discard covers whole become unwritten without any data IO and read as zeros;
/// the rest of the chunk keeps its data. Method: a fault-injecting engine fails every read and
/// write of the discarded blocks' data; the discard succeeds and the faults never fire.
#[test]
fn whole_blocks_are_cleared_without_data_io() {
    for choice in CHOICES {
        let dir = disk_dir();
        block_on(async {
            let faulty = Arc::new(FaultyEngine::new(engine(dir.path(), choice)));
            let as_engine: Arc<dyn IoEngine> = faulty.clone();
            let store = ChunkStore::open_with_engine(dir.path(), as_engine, &small_store(choice))
                .await
                .expect("open");
            store.create(chunk(0)).await.expect("create");
            let data = pattern(1, 6 * BLOCK);
            store.write(chunk(0), 0, &data).await.expect("write");
            let (path, _) = store.chunk_location(chunk(0)).expect("location");
            let start = store
                .data_file_offset(chunk(0), 2 * BLOCK as u64)
                .expect("at");
            let range = start..start + 3 * BLOCK as u64;
            let read = faulty.inject(Fault::ReadError {
                path: path.clone(),
                range: range.clone(),
            });
            let write = faulty.inject(Fault::WriteError { path, range });
            store
                .discard(chunk(0), 2 * BLOCK as u64, 3 * BLOCK as u64)
                .await
                .expect("discard");
            let zeros = store
                .read(chunk(0), 2 * BLOCK as u64, 3 * BLOCK)
                .await
                .expect("cleared blocks read without IO");
            assert!(zeros.iter().all(|b| *b == 0), "{choice:?}");
            assert_eq!(faulty.remove(read), 0, "no data read");
            assert_eq!(faulty.remove(write), 0, "no data written");
            let mut expected = data.clone();
            expected[2 * BLOCK..5 * BLOCK].fill(0);
            let got = store.read(chunk(0), 0, 6 * BLOCK).await.expect("read");
            assert!(got[..] == expected[..], "{choice:?}: the rest is kept");
            assert_eq!(
                store.chunk_ids(),
                vec![chunk(0)],
                "blocks 0, 1 and 5 hold data"
            );
        });
    }
}

/// Goal: a discard that starts or ends inside a block zeroes exactly its bytes there and
/// keeps the others, whatever the alignment, and the result is durable after a flush. Method:
/// discards with a partial head, a partial tail, both, inside one block, and over a block
/// never written, checked against a model before and after a flush and reopen.
#[test]
fn partial_edges_are_zeroed_and_survive_reopen() {
    for choice in CHOICES {
        let dir = disk_dir();
        block_on(async {
            let store = open_store(dir.path(), choice).await;
            store.create(chunk(0)).await.expect("create");
            let mut model = pattern(2, CHUNK);
            model[14 * BLOCK..].fill(0);
            store
                .write(chunk(0), 0, &model[..14 * BLOCK])
                .await
                .expect("write");
            let discards: [(usize, usize); 6] = [
                (100, 3 * BLOCK),            // Partial head, whole blocks, partial tail.
                (5 * BLOCK, BLOCK + 7),      // Whole block, partial tail.
                (7 * BLOCK - 1, 2),          // Two partial blocks.
                (9 * BLOCK + 10, 20),        // Inside one block.
                (12 * BLOCK + 5, BLOCK),     // Partial head over a written and a blank block.
                (15 * BLOCK + 1, BLOCK - 2), // Inside a block never written.
            ];
            for (offset, length) in discards {
                store
                    .discard(chunk(0), offset as u64, length as u64)
                    .await
                    .expect("discard");
                model[offset..offset + length].fill(0);
                let got = content(&store, chunk(0)).await.expect("read");
                assert!(
                    got == model,
                    "{choice:?}: after discarding {offset}+{length}"
                );
            }
            store.flush().await.expect("flush");
            drop(store);
            let store = open_store(dir.path(), choice).await;
            let got = content(&store, chunk(0)).await.expect("read after reopen");
            assert!(got == model, "{choice:?}: after reopen");
        });
    }
}

/// Goal: a chunk whose every written block is discarded is deleted: it is gone at once, its
/// slot returns to the pool only after the flush that makes the deletion durable, and a reopen
/// does not bring it back. A partial discard that leaves a block all zeros clears it too.
/// Method: count free slots around discards of two chunks, one emptied by whole blocks, one by
/// a discard inside its only written block.
#[test]
fn an_emptied_chunk_is_deleted_and_its_slot_freed_after_flush() {
    let dir = disk_dir();
    block_on(async {
        let store = open_store(dir.path(), EngineChoice::Auto).await;
        store.create(chunk(0)).await.expect("create");
        store.create(chunk(1)).await.expect("create");
        store
            .write(chunk(0), 3 * BLOCK as u64, &pattern(3, 2 * BLOCK))
            .await
            .expect("write");
        store
            .write(chunk(1), 50, &pattern(4, 100))
            .await
            .expect("write");
        store.flush().await.expect("flush");
        assert_eq!(store.free_slot_count(), 0);
        // Part of it first: the chunk stays.
        store
            .discard(chunk(0), 0, 4 * BLOCK as u64)
            .await
            .expect("discard");
        assert!(store.chunk_ids().contains(&chunk(0)));
        store
            .discard(chunk(0), 4 * BLOCK as u64, (CHUNK - 4 * BLOCK) as u64)
            .await
            .expect("discard");
        // The written bytes of chunk 1 only, unaligned: its block becomes all zeros.
        store.discard(chunk(1), 40, 200).await.expect("discard");
        assert!(store.chunk_ids().is_empty(), "both chunks deleted");
        assert!(matches!(
            store.read(chunk(0), 0, 1).await,
            Err(Error::NotFound { .. })
        ));
        assert_eq!(store.free_slot_count(), 0, "not reusable before a flush");
        store.flush().await.expect("flush");
        assert_eq!(store.free_slot_count(), 2, "reusable after it");
        // Reuse: a new chunk in a freed slot reads zeros.
        store.create(chunk(2)).await.expect("create");
        assert!(
            content(&store, chunk(2))
                .await
                .expect("read")
                .iter()
                .all(|b| *b == 0)
        );
        store.flush().await.expect("flush");
        drop(store);
        let store = open_store(dir.path(), EngineChoice::Auto).await;
        assert_eq!(
            store.chunk_ids(),
            vec![chunk(2)],
            "the deletions were durable"
        );
    });
}

/// Goal: discarding a chunk that does not exist succeeds and creates nothing; a range that
/// is empty or leaves the chunk is refused and changes nothing; a whole chunk (more than one
/// IO's worth) is one discard.
#[test]
fn missing_chunks_bad_ranges_and_whole_chunks() {
    let dir = disk_dir();
    block_on(async {
        let store = open_store(dir.path(), EngineChoice::Auto).await;
        store
            .discard(chunk(9), 0, CHUNK as u64)
            .await
            .expect("no-op");
        assert!(store.chunk_ids().is_empty(), "nothing created");
        store.create(chunk(1)).await.expect("create");
        store.write(chunk(1), 0, b"keep").await.expect("write");
        for (offset, length) in [(0, 0), (CHUNK as u64 - 1, 2), (u64::MAX, 1), (1, u64::MAX)] {
            let error = store
                .discard(chunk(1), offset, length)
                .await
                .expect_err("refused");
            assert!(matches!(error, Error::OutOfRange { .. }), "{error}");
            assert_eq!(error.class(), ErrorClass::Invalid);
        }
        assert_eq!(
            &store.read(chunk(1), 0, 4).await.expect("read")[..],
            b"keep"
        );
        store
            .discard(chunk(1), 0, CHUNK as u64)
            .await
            .expect("whole chunk");
        assert!(store.chunk_ids().is_empty());
        assert_eq!(
            store
                .stats()
                .discards
                .load(std::sync::atomic::Ordering::Relaxed),
            1,
            "the discard of a missing chunk does not count"
        );
    });
}

/// Goal: data written over a discarded range reads back, with zeros around it, before and
/// after a flush and reopen; a chunk deleted by a discard is created again by the write.
/// Method: discard, rewrite part of the range unaligned; empty the chunk, write again.
#[test]
fn writes_after_a_discard_read_back() {
    for choice in CHOICES {
        let dir = disk_dir();
        block_on(async {
            let store = open_store(dir.path(), choice).await;
            store.create(chunk(0)).await.expect("create");
            let mut model = pattern(5, CHUNK);
            store
                .write(chunk(0), 0, &model[..8 * BLOCK])
                .await
                .expect("write");
            store
                .write(chunk(0), 8 * BLOCK as u64, &model[8 * BLOCK..])
                .await
                .expect("write");
            store
                .discard(chunk(0), 1000, 10 * BLOCK as u64)
                .await
                .expect("discard");
            model[1000..1000 + 10 * BLOCK].fill(0);
            let new = pattern(6, 3 * BLOCK);
            store.write(chunk(0), 5000, &new).await.expect("rewrite");
            model[5000..5000 + 3 * BLOCK].copy_from_slice(&new);
            assert!(
                content(&store, chunk(0)).await.expect("read") == model,
                "{choice:?}"
            );
            store.flush().await.expect("flush");
            drop(store);
            let store = open_store(dir.path(), choice).await;
            assert!(
                content(&store, chunk(0)).await.expect("read") == model,
                "{choice:?}"
            );
            store
                .discard(chunk(0), 0, CHUNK as u64)
                .await
                .expect("discard");
            assert!(store.chunk_ids().is_empty());
            write_creating(&store, chunk(0), 4097, b"again", false)
                .await
                .expect("write recreates");
            let got = store.read(chunk(0), 4090, 20).await.expect("read");
            assert_eq!(&got[7..12], b"again");
            assert!(got[..7].iter().chain(&got[12..]).all(|b| *b == 0));
        });
    }
}

/// Goal: discards are ordered with overlapping reads and writes like writes are: no reader
/// ever sees a torn block or a checksum error, and IO racing a discard that deletes the chunk
/// neither fails nor panics (a write finds it gone and creates it again). Method: tasks fill
/// whole blocks with one repeated byte, discard blocks, and read; every block read must be
/// uniform.
#[test]
fn concurrent_discards_writes_and_reads_are_consistent() {
    let dir = disk_dir();
    block_on(async {
        let store = Arc::new(open_store(dir.path(), EngineChoice::Auto).await);
        let local = tokio::task::LocalSet::new();
        for task in 0..12u64 {
            let store = store.clone();
            local.spawn_local(async move {
                for step in 0..40u64 {
                    let block = ((task * 5 + step * 3) % 14) as usize;
                    let blocks = 1 + (step % 3) as usize;
                    let offset = block * BLOCK;
                    match (task + step) % 3 {
                        0 => {
                            let data = vec![(task * 40 + step) as u8 | 1; blocks * BLOCK];
                            write_creating(&store, chunk(0), offset, &data, false)
                                .await
                                .expect("write");
                        }
                        1 => store
                            .discard(chunk(0), offset as u64, (blocks * BLOCK) as u64)
                            .await
                            .expect("discard"),
                        _ => {
                            let got =
                                match store.read(chunk(0), offset as u64, blocks * BLOCK).await {
                                    Ok(got) => got.to_vec(),
                                    Err(Error::NotFound { .. }) => continue,
                                    Err(e) => panic!("read failed: {e}"),
                                };
                            for block in got.chunks(BLOCK) {
                                assert!(block.iter().all(|b| *b == block[0]), "torn block");
                            }
                        }
                    }
                }
            });
        }
        local.await;
        assert_eq!(
            store
                .stats()
                .corrupt_blocks
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        // The last write to each block wins over earlier discards, and vice versa: whatever
        // the order was, every block reads uniform and without error.
        let got = content(&store, chunk(0)).await.expect("read");
        for block in got.chunks(BLOCK) {
            assert!(block.iter().all(|b| *b == block[0]), "torn block");
        }
    });
}

/// Goal: why a replay needs `discard_replaying`. A discard applied but not flushed before a
/// crash leaves its partial edge block zeroed on disk under the checksum of the last flush;
/// replaying it verified fails on that block, replaying it as stored restores the right
/// bytes, and a write replayed after it then verifies. Method: the smallest case the replay
/// property test finds without it: write, flush, unaligned discard, crash, replay.
#[test]
fn a_replayed_discard_merges_its_edge_block_as_stored() {
    for choice in CHOICES {
        let dir = disk_dir();
        block_on(async {
            let store = open_store(dir.path(), choice).await;
            let data = pattern(7, 1415);
            write_creating(&store, chunk(0), 0, &data, false)
                .await
                .expect("write");
            store.flush().await.expect("flush");
            let (offset, length) = (707, 50_004);
            store
                .discard(chunk(0), offset, length)
                .await
                .expect("discard");
            drop(store); // A crash: the discard is not durable.
            let store = open_store(dir.path(), choice).await;
            let error = store
                .discard(chunk(0), offset, length)
                .await
                .expect_err("the edge block's checksum is stale");
            assert!(
                matches!(error, Error::Corrupt { block_index: 0, .. }),
                "{error}"
            );
            store
                .discard_replaying(chunk(0), offset, length)
                .await
                .expect("replayed as stored");
            let more = pattern(8, 100);
            write_creating(&store, chunk(0), 3000, &more, false)
                .await
                .expect("a later write verifies");
            let mut expected = vec![0u8; CHUNK];
            expected[..707].copy_from_slice(&data[..707]);
            expected[3000..3100].copy_from_slice(&more);
            assert!(content(&store, chunk(0)).await.expect("read") == expected);
        });
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        chunk: u32,
        offset: usize,
        len: usize,
        seed: u64,
    },
    Discard {
        chunk: u32,
        offset: usize,
        len: usize,
    },
    Flush,
}

const CHUNKS: u32 = 2;

fn op() -> impl Strategy<Value = Op> {
    // Offsets near block edges half the time, so partial blocks are common.
    let offset = prop_oneof![
        0..CHUNK,
        (0..CHUNK / BLOCK, 0..3usize).prop_map(|(b, d)| (b * BLOCK + d).min(CHUNK - 1)),
    ];
    let write = offset
        .clone()
        .prop_flat_map(|offset| (Just(offset), 1..=(CHUNK - offset).min(12_000)));
    let discard = offset.prop_flat_map(|offset| (Just(offset), 1..=CHUNK - offset));
    prop_oneof![
        5 => (0..CHUNKS, write, any::<u64>())
            .prop_map(|(chunk, (offset, len), seed)| Op::Write { chunk, offset, len, seed }),
        4 => (0..CHUNKS, discard)
            .prop_map(|(chunk, (offset, len))| Op::Discard { chunk, offset, len }),
        1 => Just(Op::Flush),
    ]
}

/// Applies an op as a PG replica does; a replay retries a checksum error as a replay.
async fn apply(store: &ChunkStore, op: &Op, replaying: bool) -> Result<(), Error> {
    match op {
        Op::Write {
            chunk: c,
            offset,
            len,
            seed,
        } => {
            let data = pattern(*seed, *len);
            match write_creating(store, chunk(*c), *offset, &data, false).await {
                Err(Error::Corrupt { .. }) if replaying => {
                    write_creating(store, chunk(*c), *offset, &data, true).await
                }
                other => other,
            }
        }
        Op::Discard {
            chunk: c,
            offset,
            len,
        } => {
            let (at, offset, len) = (chunk(*c), *offset as u64, *len as u64);
            match store.discard(at, offset, len).await {
                Err(Error::Corrupt { .. }) if replaying => {
                    store.discard_replaying(at, offset, len).await
                }
                other => other,
            }
        }
        Op::Flush => store.flush().await,
    }
}

fn apply_to_model(model: &mut BTreeMap<u32, Vec<u8>>, op: &Op) {
    match op {
        Op::Write {
            chunk,
            offset,
            len,
            seed,
        } => {
            let image = model.entry(*chunk).or_insert_with(|| vec![0; CHUNK]);
            image[*offset..offset + len].copy_from_slice(&pattern(*seed, *len));
        }
        Op::Discard { chunk, offset, len } => {
            if let Some(image) = model.get_mut(chunk) {
                image[*offset..offset + len].fill(0);
            }
        }
        Op::Flush => {}
    }
}

/// Runs `ops`, crashes (drops the store without a flush: completed data writes stay on disk,
/// meta images only as of the last flush), then replays every op after the flush that
/// `start` picks (the last one or an earlier one, as a PG whose compaction lags its last
/// flush does), crashing again after `interrupt` ops of the first replay. The store must then
/// hold the model, with no checksum error, and keep it across a flush and reopen.
fn run_replay(
    choice: EngineChoice,
    ops: Vec<Op>,
    start: prop::sample::Index,
    interrupt: usize,
) -> Result<(), TestCaseError> {
    let dir = disk_dir();
    block_on(async {
        let mut store = open_store(dir.path(), choice).await;
        let mut model = BTreeMap::new();
        for op in &ops {
            apply(&store, op, false)
                .await
                .expect("no error before a crash");
            apply_to_model(&mut model, op);
        }
        // Replay from the start of the log or just after one of its flushes.
        let flushes: Vec<usize> = std::iter::once(0)
            .chain(
                ops.iter()
                    .enumerate()
                    .filter(|(_, op)| matches!(op, Op::Flush))
                    .map(|(i, _)| i + 1),
            )
            .collect();
        let from = flushes[start.index(flushes.len())];
        let replayed = &ops[from..];
        drop(store);
        store = open_store(dir.path(), choice).await;
        for op in replayed.iter().take(interrupt) {
            apply(&store, op, true).await.expect("replay");
        }
        drop(store);
        store = open_store(dir.path(), choice).await;
        for op in replayed {
            apply(&store, op, true).await.expect("replay");
        }
        for reopen in [false, true] {
            for c in 0..CHUNKS {
                let expected = model.get(&c).cloned().unwrap_or_else(|| vec![0; CHUNK]);
                match content(&store, chunk(c)).await {
                    Ok(got) => prop_assert!(got == expected, "chunk {c}, reopened {reopen}"),
                    Err(e) => prop_assert!(false, "chunk {c}, reopened {reopen}: {e}"),
                }
            }
            store.flush().await.expect("flush");
            drop(store);
            store = open_store(dir.path(), choice).await;
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Goal: a log replay after a crash leaves every chunk holding exactly what the writes and
    /// discards say, with no checksum error, including discards replayed over blocks written
    /// since the flush and writes replayed after discards, and a replay itself interrupted by
    /// a crash. Method: random writes, discards (up to whole chunks) and flushes, then
    /// `run_replay`.
    #[test]
    fn replay_after_a_crash_restores_writes_and_discards(
        uring in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..30),
        start in any::<prop::sample::Index>(),
        interrupt in 0usize..30,
    ) {
        let choice = if uring { EngineChoice::Uring } else { EngineChoice::Psync };
        run_replay(choice, ops, start, interrupt)?;
    }
}
