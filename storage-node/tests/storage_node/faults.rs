//! Disk faults through the fault-injecting engine: every fault is an error or a detected
//! corruption, never wrong data and never a panic; removing the fault restores service.

use std::{sync::Arc, time::Duration};

use cairn_storage_node::{
    ChunkStore, Error, ErrorClass,
    io::{
        EngineChoice, IoEngine,
        fault::{Fault, FaultyEngine},
    },
};

use super::support::{block_on, chunk, disk_dir, engine, pattern, small_store};

struct Rig {
    _dir: tempfile::TempDir,
    faulty: Arc<FaultyEngine>,
    store: ChunkStore,
}

async fn rig(choice: EngineChoice) -> Rig {
    let dir = disk_dir();
    let faulty = Arc::new(FaultyEngine::new(engine(dir.path(), choice)));
    let as_engine: Arc<dyn IoEngine> = faulty.clone();
    let store = ChunkStore::open_with_engine(dir.path(), as_engine, &small_store(choice))
        .await
        .expect("open");
    store.create(chunk(0)).await.expect("create");
    store
        .write(chunk(0), 0, &pattern(1, 16384))
        .await
        .expect("write");
    Rig {
        _dir: dir,
        faulty,
        store,
    }
}

#[test]
fn bit_flip_on_read_is_a_checksum_error_naming_chunk_and_block() {
    for choice in [EngineChoice::Uring, EngineChoice::Psync] {
        block_on(async {
            let Rig {
                faulty,
                store,
                _dir,
            } = rig(choice).await;
            let (path, _) = store.chunk_location(chunk(0)).expect("location");
            let offset_bytes = store
                .data_file_offset(chunk(0), 2 * 4096 + 17)
                .expect("offset");
            let id = faulty.inject(Fault::BitFlip {
                path,
                offset_bytes,
                bit: 3,
            });
            let error = store
                .read(chunk(0), 0, 16384)
                .await
                .err()
                .expect("corruption detected");
            assert!(
                matches!(error, Error::Corrupt { block_index: 2, .. }),
                "{error}"
            );
            assert_eq!(error.class(), ErrorClass::Corrupt);
            assert!(error.to_string().contains("block 2"), "{error}");
            // Blocks around it are fine; a partial write into the bad block refuses to merge.
            assert!(store.read(chunk(0), 0, 8192).await.is_ok());
            assert!(matches!(
                store.write(chunk(0), 8192 + 5, b"x").await,
                Err(Error::Corrupt { .. })
            ));
            assert!(faulty.hits(id) >= 2);
            faulty.remove(id);
            let got = store.read(chunk(0), 0, 16384).await.expect("clean again");
            assert!(got[..] == pattern(1, 16384)[..]);
        });
    }
}

#[test]
fn eio_on_read_write_and_sync_propagates_as_errors() {
    block_on(async {
        let Rig {
            faulty,
            store,
            _dir,
        } = rig(EngineChoice::Auto).await;
        let (path, _) = store.chunk_location(chunk(0)).expect("location");
        let data = data_range(&store);
        let read = faulty.inject(Fault::ReadError {
            path: path.clone(),
            range: data.clone(),
        });
        let error = store.read(chunk(0), 0, 4096).await.err().expect("EIO");
        assert!(
            matches!(&error, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EIO))
        );
        assert_eq!(error.class(), ErrorClass::Fatal);
        faulty.remove(read);

        let write = faulty.inject(Fault::WriteError {
            path: path.clone(),
            range: data,
        });
        assert!(matches!(
            store.write(chunk(0), 0, &pattern(2, 4096)).await,
            Err(Error::Io { .. })
        ));
        faulty.remove(write);
        // The failed write changed nothing.
        assert!(store.read(chunk(0), 0, 4096).await.expect("read")[..] == pattern(1, 4096)[..]);

        let sync = faulty.inject(Fault::SyncError { path: path.clone() });
        assert!(
            store.flush().await.is_err(),
            "fdatasync EIO fails the flush"
        );
        faulty.remove(sync);
        store
            .flush()
            .await
            .expect("the retried flush persists everything");
    });
}

#[test]
fn torn_and_lost_writes_are_detected_on_read() {
    block_on(async {
        let Rig {
            faulty,
            store,
            _dir,
        } = rig(EngineChoice::Auto).await;
        let (path, _) = store.chunk_location(chunk(0)).expect("location");
        let range = data_range(&store);
        // A 3-block write of which only the first block reaches the disk.
        let torn = faulty.inject(Fault::TornWrite {
            path: path.clone(),
            range: range.clone(),
            keep_blocks: 1,
        });
        store
            .write(chunk(0), 0, &pattern(7, 12288))
            .await
            .expect("the disk claims success");
        faulty.remove(torn);
        assert!(
            store
                .read(chunk(0), 0, 4096)
                .await
                .expect("first block landed")[..]
                == pattern(7, 4096)[..]
        );
        let error = store
            .read(chunk(0), 4096, 8192)
            .await
            .err()
            .expect("torn rest detected");
        assert!(
            matches!(error, Error::Corrupt { block_index: 1, .. }),
            "{error}"
        );
        // A write lost entirely.
        let lost = faulty.inject(Fault::TornWrite {
            path,
            range,
            keep_blocks: 0,
        });
        store
            .write(chunk(0), 12288, &pattern(8, 4096))
            .await
            .expect("claims success");
        faulty.remove(lost);
        assert!(matches!(
            store.read(chunk(0), 12288, 4096).await,
            Err(Error::Corrupt { block_index: 3, .. })
        ));
    });
}

#[test]
fn latency_is_added_and_removable_at_run_time() {
    block_on(async {
        let Rig {
            faulty,
            store,
            _dir,
        } = rig(EngineChoice::Auto).await;
        let delay = Duration::from_millis(150);
        let id = faulty.inject(Fault::Latency { path: None, delay });
        let start = std::time::Instant::now();
        store.read(chunk(0), 0, 4096).await.expect("slow read");
        assert!(start.elapsed() >= delay, "latency applied");
        faulty.remove(id);
        faulty.clear();
        store.read(chunk(0), 0, 4096).await.expect("read");
    });
}

fn data_range(store: &ChunkStore) -> std::ops::Range<u64> {
    let start = store.data_file_offset(chunk(0), 0).expect("offset");
    start..start + (64 << 10)
}
