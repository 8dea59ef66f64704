//! Model-based property test: random writes, reads, flushes, clean reopens and crashes against
//! an in-memory model of exactly what the store promises. Reads and writes go through the
//! read cache or around it at random, and the cache holds only a few blocks, so hits, misses,
//! evictions and invalidations all meet the model.
//!
//! The model keeps, per block, the latest content and the content as of the last flush. A crash
//! (drop without flush) keeps every completed direct write on disk but only the flushed meta
//! images, so after a crash a block reads as its flushed content if that equals the latest, as
//! zeros if it was never flushed written, and otherwise as a checksum error until a full-block
//! write replaces it.

use cairn_common::BLOCK_SIZE;
use cairn_storage_node::{ChunkStore, Error, io::EngineChoice};
use proptest::prelude::*;

use super::support::{block_on, chunk, disk_dir, open_store, pattern};

const CHUNKS: u32 = 3;
const CHUNK_BYTES: usize = 64 << 10;
const BLOCKS: usize = CHUNK_BYTES / BLOCK_SIZE as usize;

#[derive(Clone, Debug)]
enum Op {
    Write {
        chunk: u32,
        offset: usize,
        len: usize,
        seed: u64,
        cached: bool,
    },
    Read {
        chunk: u32,
        offset: usize,
        len: usize,
        cached: bool,
    },
    Flush,
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..CHUNK_BYTES)
        .prop_flat_map(|offset| (Just(offset), 1..=(CHUNK_BYTES - offset).min(20_000)));
    prop_oneof![
        6 => (0..CHUNKS, range.clone(), any::<u64>(), any::<bool>())
            .prop_map(|(chunk, (offset, len), seed, cached)| Op::Write { chunk, offset, len, seed, cached }),
        6 => (0..CHUNKS, range, any::<bool>())
            .prop_map(|(chunk, (offset, len), cached)| Op::Read { chunk, offset, len, cached }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

#[derive(Clone, PartialEq)]
enum Block {
    /// Never written: reads as zeros.
    Zero,
    Data(Vec<u8>),
    Corrupt,
}

#[derive(Clone)]
struct ModelBlock {
    latest: Block,
    /// `None`: not written as of the last flush (reads as zeros).
    flushed: Option<Vec<u8>>,
}

struct Model {
    blocks: Vec<Vec<ModelBlock>>,
}

impl Model {
    fn new() -> Model {
        let zero = ModelBlock {
            latest: Block::Zero,
            flushed: None,
        };
        Model {
            blocks: vec![vec![zero; BLOCKS]; CHUNKS as usize],
        }
    }

    fn block_range(offset: usize, len: usize) -> std::ops::RangeInclusive<usize> {
        offset / BLOCK_SIZE as usize..=(offset + len - 1) / BLOCK_SIZE as usize
    }

    /// The first corrupt block of the range, if any, else the bytes.
    fn read(&self, chunk: u32, offset: usize, len: usize) -> Result<Vec<u8>, usize> {
        let mut bytes = Vec::new();
        for index in Self::block_range(offset, len) {
            match &self.blocks[chunk as usize][index].latest {
                Block::Data(data) => bytes.extend_from_slice(data),
                Block::Zero => bytes.extend_from_slice(&[0; BLOCK_SIZE as usize]),
                Block::Corrupt => return Err(index),
            }
        }
        let start = offset % BLOCK_SIZE as usize;
        Ok(bytes[start..start + len].to_vec())
    }

    /// Applies a write; a partial write touching a corrupt edge block fails and changes nothing.
    fn write(&mut self, chunk: u32, offset: usize, data: &[u8]) -> Result<(), usize> {
        let block = BLOCK_SIZE as usize;
        let range = Self::block_range(offset, data.len());
        let (first, last) = (*range.start(), *range.end());
        let end = offset + data.len();
        let blocks = &mut self.blocks[chunk as usize];
        let head_partial = !offset.is_multiple_of(block) || (first == last && data.len() != block);
        let tail_partial = first != last && !end.is_multiple_of(block);
        // The store reads the tail edge first.
        for (partial, index) in [(tail_partial, last), (head_partial, first)] {
            if partial && blocks[index].latest == Block::Corrupt {
                return Err(index);
            }
        }
        for index in range {
            let mut content = match &blocks[index].latest {
                Block::Data(data) => data.clone(),
                Block::Zero | Block::Corrupt => vec![0; block],
            };
            let (block_start, block_end) = (index * block, (index + 1) * block);
            let (from, to) = (offset.max(block_start), end.min(block_end));
            content[from - block_start..to - block_start]
                .copy_from_slice(&data[from - offset..to - offset]);
            blocks[index].latest = Block::Data(content);
        }
        Ok(())
    }

    fn flush(&mut self) {
        for block in self.blocks.iter_mut().flatten() {
            if let Block::Data(data) = &block.latest {
                block.flushed = Some(data.clone());
            }
        }
    }

    fn crash(&mut self) {
        for block in self.blocks.iter_mut().flatten() {
            block.latest = match (&block.flushed, &block.latest) {
                (None, _) => Block::Zero,
                (Some(flushed), Block::Data(latest)) if flushed == latest => {
                    Block::Data(latest.clone())
                }
                (Some(_), _) => Block::Corrupt,
            };
        }
    }
}

fn run(choice: EngineChoice, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = disk_dir();
    block_on(async {
        let mut store: ChunkStore = open_store(dir.path(), choice).await;
        let mut model = Model::new();
        for i in 0..CHUNKS {
            store.create(chunk(i)).await.expect("create");
        }
        store.flush().await.expect("flush");
        for op in ops {
            match op {
                Op::Write {
                    chunk: c,
                    offset,
                    len,
                    seed,
                    cached,
                } => {
                    let data = pattern(seed, len);
                    let expected = model.write(c, offset, &data);
                    let got = if cached {
                        store.write_cached(chunk(c), offset as u64, &data).await
                    } else {
                        store.write(chunk(c), offset as u64, &data).await
                    };
                    match (got, expected) {
                        (Ok(()), Ok(())) => {}
                        (Err(Error::Corrupt { block_index, .. }), Err(index)) => {
                            prop_assert_eq!(block_index as usize, index)
                        }
                        (got, expected) => {
                            prop_assert!(false, "write {got:?} vs model {expected:?}")
                        }
                    }
                }
                Op::Read {
                    chunk: c,
                    offset,
                    len,
                    cached,
                } => {
                    let got = if cached {
                        store.read_cached(chunk(c), offset as u64, len).await
                    } else {
                        store.read(chunk(c), offset as u64, len).await
                    };
                    match (got, model.read(c, offset, len)) {
                        (Ok(bytes), Ok(expected)) => {
                            prop_assert!(bytes[..] == expected[..], "read mismatch")
                        }
                        (Err(Error::Corrupt { block_index, .. }), Err(index)) => {
                            prop_assert_eq!(block_index as usize, index)
                        }
                        (got, expected) => prop_assert!(
                            false,
                            "read {:?} vs model {:?}",
                            got.map(|b| b.len()),
                            expected.map(|b| b.len())
                        ),
                    }
                }
                Op::Flush => {
                    store.flush().await.expect("flush");
                    model.flush();
                }
                Op::Reopen => {
                    store.flush().await.expect("flush");
                    model.flush();
                    drop(store);
                    store = open_store(dir.path(), choice).await;
                }
                Op::Crash => {
                    drop(store);
                    model.crash();
                    store = open_store(dir.path(), choice).await;
                }
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn chunk_store_matches_model(
        uring in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let choice = if uring { EngineChoice::Uring } else { EngineChoice::Psync };
        run(choice, ops)?;
    }
}
