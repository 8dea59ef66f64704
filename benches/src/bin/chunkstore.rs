//! Chunk store load generator for `benches/chunkstore.sh`.
//!
//! ```text
//! cairn-bench-chunkstore prepare DIR SIZE_MIB
//! cairn-bench-chunkstore run DIR WORKLOAD SECONDS [RAMP_SECONDS]
//! ```
//!
//! `prepare` formats a store in DIR, creates SIZE_MIB of 4 MiB chunks, writes every byte and
//! flushes, so reads hit written, checksummed blocks. `run` opens the store and drives WORKLOAD
//! (e.g. `4k-randread-qd32`) for SECONDS after RAMP_SECONDS (default 1) of warm-up, with
//! queue-depth-many concurrent tasks on one thread (the engine adds its own IO thread, as fio
//! adds the kernel's). It prints one line: `iops=<n> mbps=<n> p50_us=<n> p99_us=<n>`.
//! Writes go through the store's copying `write` path with fresh checksums, as the Raft apply
//! path will. `CAIRN_SPIN_US` overrides the engine's spin (`EngineOptions::spin_us`) for A/B
//! measurements.

use std::{
    cell::RefCell,
    path::{Path, PathBuf},
    process::ExitCode,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use cairn_benches::{Workload, percentile};
use cairn_common::{ChunkId, OwnerId, PoolId};
use cairn_storage_node::{ChunkStore, ChunkStoreOptions};

const CHUNK_BYTES: u64 = 4 << 20;

fn chunk(index: u32) -> ChunkId {
    ChunkId {
        pool: PoolId(1),
        owner: OwnerId(1),
        index,
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: cairn-bench-chunkstore prepare DIR SIZE_MIB");
    eprintln!("       cairn-bench-chunkstore run DIR WORKLOAD SECONDS [RAMP_SECONDS]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("warn")
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["prepare", dir, size_mib] => match size_mib.parse::<u64>() {
            Ok(size_mib) if size_mib >= 4 => runtime.block_on(prepare(Path::new(dir), size_mib)),
            _ => return usage(),
        },
        ["run", dir, workload, seconds, ref ramp @ ..] => {
            let Some(workload) = Workload::parse(workload) else {
                return usage();
            };
            let ramp = ramp.first().map_or(Ok(1.0), |r| r.parse::<f64>());
            let (Ok(seconds), Ok(ramp)) = (seconds.parse::<f64>(), ramp) else {
                return usage();
            };
            let (seconds, ramp) = (
                Duration::from_secs_f64(seconds),
                Duration::from_secs_f64(ramp),
            );
            runtime.block_on(run(PathBuf::from(dir), workload, seconds, ramp))
        }
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cairn-bench-chunkstore: {error}");
            ExitCode::FAILURE
        }
    }
}

fn options(create: bool) -> ChunkStoreOptions {
    let mut options = ChunkStoreOptions {
        create,
        chunk_size_bytes: CHUNK_BYTES as u32,
        ..ChunkStoreOptions::default()
    };
    if let Some(spin_us) = std::env::var("CAIRN_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options.engine.spin_us = spin_us;
    }
    options
}

async fn prepare(dir: &Path, size_mib: u64) -> cairn_storage_node::Result<()> {
    let chunks = (size_mib * (1 << 20) / CHUNK_BYTES) as u32;
    let store = ChunkStore::open(dir, &options(true)).await?;
    store.preallocate_to(chunks).await?;
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for index in 0..chunks {
        if store.chunk_ids().contains(&chunk(index)) {
            continue;
        }
        store.create(chunk(index)).await?;
        for piece in 0..CHUNK_BYTES / (1 << 20) {
            store.write(chunk(index), piece << 20, &data).await?;
        }
    }
    store.flush().await?;
    eprintln!("prepared {chunks} chunks of 4 MiB in {}", dir.display());
    Ok(())
}

/// The shared position of a sequential stream, and the random generator state.
struct Cursor {
    next_slot: u64,
    rng: u64,
}

impl Cursor {
    fn next_offset(&mut self, workload: &Workload, dataset_bytes: u64) -> u64 {
        let slots = dataset_bytes / u64::from(workload.block_bytes);
        let slot = if workload.random {
            // xorshift64: cheap, good enough to spread IO over the data set.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % slots
        } else {
            self.next_slot = (self.next_slot + 1) % slots;
            self.next_slot
        };
        slot * u64::from(workload.block_bytes)
    }
}

struct Outcome {
    ops: u64,
    latencies: Vec<Duration>,
}

async fn run(
    dir: PathBuf,
    workload: Workload,
    seconds: Duration,
    ramp: Duration,
) -> cairn_storage_node::Result<()> {
    let store = Arc::new(ChunkStore::open(&dir, &options(false)).await?);
    let chunks = store.chunk_ids().len() as u64;
    if chunks == 0 {
        eprintln!("no chunks in {}: run `prepare` first", dir.display());
        std::process::exit(2);
    }
    let dataset_bytes = chunks * CHUNK_BYTES;
    let data: Rc<Vec<u8>> = Rc::new((0..workload.block_bytes).map(|i| (i % 251) as u8).collect());
    let cursor = Rc::new(RefCell::new(Cursor {
        next_slot: 0,
        rng: 0x2545_f491_4f6c_dd1d,
    }));
    let outcome = Rc::new(RefCell::new(Outcome {
        ops: 0,
        latencies: Vec::new(),
    }));
    let start = Instant::now();
    let (measure_from, end) = (start + ramp, start + ramp + seconds);
    let local = tokio::task::LocalSet::new();
    let mut tasks = Vec::new();
    for _ in 0..workload.queue_depth {
        let (store, data, cursor, outcome) =
            (store.clone(), data.clone(), cursor.clone(), outcome.clone());
        tasks.push(local.spawn_local(async move {
            loop {
                let offset = cursor.borrow_mut().next_offset(&workload, dataset_bytes);
                let id = chunk((offset / CHUNK_BYTES) as u32);
                let within = offset % CHUNK_BYTES;
                let issued = Instant::now();
                if issued >= end {
                    return Ok::<(), cairn_storage_node::Error>(());
                }
                if workload.write {
                    store.write(id, within, &data).await?;
                } else {
                    let got = store
                        .read(id, within, workload.block_bytes as usize)
                        .await?;
                    assert_eq!(got.len(), workload.block_bytes as usize);
                }
                let done = Instant::now();
                if issued >= measure_from && done <= end {
                    let mut outcome = outcome.borrow_mut();
                    outcome.ops += 1;
                    outcome.latencies.push(done - issued);
                }
            }
        }));
    }
    local.await;
    for task in tasks {
        task.await.expect("benchmark task panicked")?;
    }
    // Untimed: without it the next run would open to a crash's state (see the store's durability
    // table) and find the overwritten blocks' checksums stale.
    store.flush().await?;
    let mut outcome = outcome.borrow_mut();
    let elapsed = seconds.as_secs_f64();
    let iops = outcome.ops as f64 / elapsed;
    let mbps = iops * f64::from(workload.block_bytes) / 1e6;
    let p50 = percentile(&mut outcome.latencies, 0.50).as_micros();
    let p99 = percentile(&mut outcome.latencies, 0.99).as_micros();
    println!("iops={iops:.0} mbps={mbps:.1} p50_us={p50} p99_us={p99}");
    let corrupt = store
        .stats()
        .corrupt_blocks
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(corrupt, 0, "a benchmark never reads corrupt data");
    Ok(())
}
