//! Chunk store behaviour on real files: round trips, read-modify-write, thin reads, durability
//! across reopen and crash, the file pool, disk labels and roaming, and concurrency.

use std::{fs, sync::Arc};

use cairn_common::BLOCK_SIZE;
use cairn_storage_node::{
    ChunkStore, ChunkStoreOptions, Error, ErrorClass, chunk::Geometry, io::EngineChoice, label,
};

use super::support::{block_on, chunk, disk_dir, open_store, pattern, small_store, with_ramfs_dir};

const CHOICES: [EngineChoice; 2] = [EngineChoice::Uring, EngineChoice::Psync];

#[test]
fn write_read_round_trip_aligned_unaligned_and_thin() {
    for choice in CHOICES {
        let dir = disk_dir();
        block_on(async {
            let store = open_store(dir.path(), choice).await;
            store.create(chunk(0)).await.expect("create");
            // Unwritten space reads as zeros.
            assert!(
                store
                    .read(chunk(0), 100, 9000)
                    .await
                    .expect("read")
                    .iter()
                    .all(|b| *b == 0)
            );
            let aligned = pattern(1, 8192);
            store
                .write(chunk(0), 4096, &aligned)
                .await
                .expect("aligned write");
            // Unaligned write spanning a partial head block, a full block and a partial tail.
            let odd = pattern(2, 6000);
            store
                .write(chunk(0), 3000, &odd)
                .await
                .expect("unaligned write");
            let mut expected = vec![0u8; 64 << 10];
            expected[4096..12288].copy_from_slice(&aligned);
            expected[3000..9000].copy_from_slice(&odd);
            // A tiny write inside one block.
            store
                .write(chunk(0), 20_001, b"cairn")
                .await
                .expect("tiny write");
            expected[20_001..20_006].copy_from_slice(b"cairn");
            let got = store.read(chunk(0), 0, 64 << 10).await.expect("read all");
            assert!(got[..] == expected[..], "{choice:?}: content matches");
            let got = store
                .read(chunk(0), 2999, 13)
                .await
                .expect("read unaligned");
            assert_eq!(&got[..], &expected[2999..3012]);
        });
    }
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let dir = disk_dir();
    block_on(async {
        let store = open_store(dir.path(), EngineChoice::Auto).await;
        assert!(matches!(
            store.read(chunk(9), 0, 10).await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            store.write(chunk(9), 0, b"x").await,
            Err(Error::NotFound { .. })
        ));
        store.create(chunk(1)).await.expect("create");
        assert!(matches!(
            store.create(chunk(1)).await,
            Err(Error::AlreadyExists { .. })
        ));
        store.write(chunk(1), 0, b"keep").await.expect("write");
        let size = 64 << 10;
        for (offset, len) in [
            (size - 1, 2usize),
            (0, 0),
            (u64::MAX, 1),
            (0, (256 << 10) + 1),
        ] {
            let error = store
                .read(chunk(1), offset, len)
                .await
                .err()
                .expect("refused");
            assert!(matches!(error, Error::OutOfRange { .. }), "{error}");
            assert_eq!(error.class(), ErrorClass::Invalid);
            let data = vec![7u8; len];
            assert!(store.write(chunk(1), offset, &data).await.is_err());
        }
        assert_eq!(
            &store.read(chunk(1), 0, 4).await.expect("read")[..],
            b"keep"
        );
    });
}

/// Goal: an IO whose blocks do not fit one engine buffer is refused, never a panic (an
/// unaligned IO of the largest size touches one block more than the buffer holds; `cairn dev`
/// found the panic). Method: 1 MiB chunks over 256 KiB buffers; unaligned and aligned IOs of
/// the largest size.
#[test]
fn an_io_whose_blocks_overflow_a_buffer_is_refused() {
    let dir = disk_dir();
    block_on(async {
        let options = ChunkStoreOptions {
            chunk_size_bytes: 1 << 20,
            ..small_store(EngineChoice::Auto)
        };
        let store = ChunkStore::open(dir.path(), &options).await.expect("open");
        let io_max = store.io_size_max() as usize;
        assert_eq!(io_max, 256 << 10);
        store.create(chunk(1)).await.expect("create");
        let data = pattern(3, io_max);
        let error = store
            .write(chunk(1), 100, &data)
            .await
            .expect_err("refused");
        assert!(matches!(error, Error::OutOfRange { .. }), "{error}");
        let error = store
            .read(chunk(1), 100, io_max)
            .await
            .err()
            .expect("refused");
        assert!(matches!(error, Error::OutOfRange { .. }), "{error}");
        store.write(chunk(1), 4096, &data).await.expect("aligned");
        let short = &data[..io_max - 4096];
        store.write(chunk(1), 100, short).await.expect("fits");
        let back = store.read(chunk(1), 100, short.len()).await.expect("read");
        assert_eq!(&back[..], short);
    });
}

#[test]
fn flushed_data_survives_reopen_and_crash() {
    for choice in CHOICES {
        let dir = disk_dir();
        block_on(async {
            let store = open_store(dir.path(), choice).await;
            let disk = store.disk_id();
            for i in 0..3 {
                store.create(chunk(i)).await.expect("create");
                store
                    .write(chunk(i), 4096 * u64::from(i), &pattern(u64::from(i), 5000))
                    .await
                    .expect("write");
            }
            store.flush().await.expect("flush");
            // Unflushed overwrite, then a crash (drop without flush).
            store
                .write(chunk(0), 0, &pattern(99, 4096))
                .await
                .expect("write");
            store.create(chunk(7)).await.expect("create");
            drop(store);
            let store = open_store(dir.path(), choice).await;
            assert_eq!(store.disk_id(), disk, "same label after reopen");
            for i in 1..3 {
                let got = store
                    .read(chunk(i), 4096 * u64::from(i), 5000)
                    .await
                    .expect("read");
                assert!(got[..] == pattern(u64::from(i), 5000)[..], "chunk {i}");
            }
            // The unflushed overwrite landed on disk but not its checksum: detected, not served.
            match store.read(chunk(0), 0, 4096).await {
                Err(Error::Corrupt {
                    chunk: c,
                    block_index: 0,
                }) => assert_eq!(c, chunk(0)),
                other => panic!(
                    "expected a checksum error, got {:?}",
                    other.map(|b| b.len())
                ),
            }
            // Block 1 of chunk 0 was written before the flush and is intact.
            let got = store.read(chunk(0), 4096, 904).await.expect("read");
            assert!(got[..] == pattern(0, 5000)[4096..]);
            // The unflushed creation is gone.
            assert!(matches!(
                store.read(chunk(7), 0, 1).await,
                Err(Error::NotFound { .. })
            ));
            // A full-block rewrite heals the detected block.
            store
                .write(chunk(0), 0, &pattern(5, 4096))
                .await
                .expect("rewrite");
            store.flush().await.expect("flush");
            drop(store);
            let store = open_store(dir.path(), choice).await;
            assert!(store.read(chunk(0), 0, 4096).await.expect("read")[..] == pattern(5, 4096)[..]);
        });
    }
}

#[test]
fn deleted_files_return_to_the_pool_only_after_flush() {
    let dir = disk_dir();
    block_on(async {
        let store = open_store(dir.path(), EngineChoice::Auto).await;
        assert_eq!(store.free_slot_count(), 2, "preallocated");
        store.create(chunk(0)).await.expect("create");
        store
            .write(chunk(0), 0, &pattern(3, 4096))
            .await
            .expect("write");
        store.flush().await.expect("flush");
        let (path, _) = store.chunk_location(chunk(0)).expect("location");
        let size = fs::metadata(&path).expect("stat").len();
        store.delete(chunk(0)).await.expect("delete");
        assert!(matches!(
            store.read(chunk(0), 0, 1).await,
            Err(Error::NotFound { .. })
        ));
        assert_eq!(
            store.free_slot_count(),
            1,
            "not reusable before its deletion is durable"
        );
        store.flush().await.expect("flush");
        assert_eq!(store.free_slot_count(), 2);
        // Reuse: the new chunk reads zeros, not the old chunk's data.
        store.create(chunk(1)).await.expect("create");
        store.create(chunk(2)).await.expect("create");
        store
            .create(chunk(3))
            .await
            .expect("create from a new file when the pool is empty");
        assert_eq!(store.free_slot_count(), 1, "a new pool file of two slots");
        for i in 1..4 {
            assert!(
                store
                    .read(chunk(i), 0, 4096)
                    .await
                    .expect("read")
                    .iter()
                    .all(|b| *b == 0)
            );
        }
        assert_eq!(
            fs::metadata(&path).expect("stat").len(),
            size,
            "file sizes never change"
        );
        store.flush().await.expect("flush");
        drop(store);
        let store = open_store(dir.path(), EngineChoice::Auto).await;
        let mut ids = store.chunk_ids();
        ids.sort();
        assert_eq!(ids, vec![chunk(1), chunk(2), chunk(3)]);
    });
}

#[test]
fn disk_is_recognised_after_moving_to_another_path() {
    let parent = disk_dir();
    let first = parent.path().join("slot-a");
    let second = parent.path().join("slot-b");
    block_on(async {
        let store = open_store(&first, EngineChoice::Auto).await;
        let disk = store.disk_id();
        store.create(chunk(0)).await.expect("create");
        store.write(chunk(0), 0, b"roaming").await.expect("write");
        store.flush().await.expect("flush");
        drop(store);
        fs::rename(&first, &second).expect("move the disk");
        let found = label::find_disks(&[first.clone(), second.clone()]).expect("scan");
        assert_eq!(found, vec![(disk, second.clone())]);
        let options = ChunkStoreOptions {
            create: false,
            ..small_store(EngineChoice::Auto)
        };
        let store = ChunkStore::open(&second, &options)
            .await
            .expect("open moved disk");
        assert_eq!(store.disk_id(), disk);
        assert_eq!(
            &store.read(chunk(0), 0, 7).await.expect("read")[..],
            b"roaming"
        );
        // An unlabelled directory is not silently formatted when creation is off.
        let empty = parent.path().join("empty");
        fs::create_dir(&empty).expect("mkdir");
        assert!(ChunkStore::open(&empty, &options).await.is_err());
    });
}

#[test]
fn a_cloned_disk_is_refused() {
    let parent = disk_dir();
    let a = parent.path().join("a");
    fs::create_dir(&a).expect("mkdir");
    label::format(&a, 64 << 10).expect("format");
    let b = parent.path().join("b");
    fs::create_dir(&b).expect("mkdir");
    fs::copy(a.join(label::LABEL_FILE), b.join(label::LABEL_FILE)).expect("clone label");
    assert!(label::find_disks(&[a, b]).is_err());
}

#[test]
fn torn_or_destroyed_meta_images() {
    let dir = disk_dir();
    block_on(async {
        let store = open_store(dir.path(), EngineChoice::Auto).await;
        store.create(chunk(0)).await.expect("create");
        store.create(chunk(1)).await.expect("create");
        store
            .write(chunk(0), 0, &pattern(1, 4096))
            .await
            .expect("write");
        store
            .write(chunk(1), 0, &pattern(2, 4096))
            .await
            .expect("write");
        store.flush().await.expect("flush");
        store
            .write(chunk(0), 8192, &pattern(3, 4096))
            .await
            .expect("write");
        store.flush().await.expect("flush");
        let (path0, base0) = store.chunk_location(chunk(0)).expect("location");
        let (path1, base1) = store.chunk_location(chunk(1)).expect("location");
        let slot1 = base1 / store.geometry().slot_bytes();
        drop(store);
        // Tear the newest image of chunk 0: the previous image takes over.
        let meta_bytes = u64::from(Geometry::new(64 << 10).expect("geometry").meta_bytes());
        let mut bytes = fs::read(&path0).expect("read");
        let newest = (0..2u64)
            .max_by_key(|copy| {
                let at = (base0 + copy * meta_bytes) as usize;
                u64::from_le_bytes(bytes[at + 24..at + 32].try_into().expect("8"))
            })
            .expect("two copies");
        bytes[(base0 + newest * meta_bytes) as usize + 100] ^= 0xff;
        fs::write(&path0, &bytes).expect("write");
        // Destroy both images of chunk 1.
        let mut bytes = fs::read(&path1).expect("read");
        bytes[base1 as usize..(base1 + 2 * meta_bytes) as usize].fill(0x5a);
        fs::write(&path1, &bytes).expect("write");

        let store = open_store(dir.path(), EngineChoice::Auto).await;
        assert!(
            store.read(chunk(0), 0, 4096).await.expect("older image")[..] == pattern(1, 4096)[..]
        );
        // The older image predates the second write: its block reads as never written.
        assert!(
            store
                .read(chunk(0), 8192, 4096)
                .await
                .expect("read")
                .iter()
                .all(|b| *b == 0)
        );
        assert!(matches!(
            store.read(chunk(1), 0, 1).await,
            Err(Error::NotFound { .. })
        ));
        assert_eq!(store.damaged_slots(), vec![(path1, slot1 as u32)]);
    });
}

#[test]
fn unfinished_preallocation_is_removed_on_open() {
    let dir = disk_dir();
    block_on(async {
        drop(open_store(dir.path(), EngineChoice::Auto).await);
        let stray = dir.path().join("chunks").join("00000000000000ff.tmp");
        fs::write(&stray, b"half").expect("write");
        let store = open_store(dir.path(), EngineChoice::Auto).await;
        assert!(!stray.exists());
        assert_eq!(store.free_slot_count(), 2);
    });
}

#[test]
fn buffered_fallback_stores_and_checks() {
    let test = "storage_node::chunk_store::buffered_fallback_stores_and_checks";
    with_ramfs_dir(test, |dir| {
        block_on(async {
            let store = open_store(dir, EngineChoice::Auto).await;
            assert_eq!(
                store.engine().kind(),
                cairn_storage_node::io::EngineKind::Psync { direct: false }
            );
            store.create(chunk(0)).await.expect("create");
            store
                .write(chunk(0), 123, &pattern(8, 10_000))
                .await
                .expect("write");
            store.flush().await.expect("flush");
            drop(store);
            let store = open_store(dir, EngineChoice::Auto).await;
            assert!(
                store.read(chunk(0), 123, 10_000).await.expect("read")[..]
                    == pattern(8, 10_000)[..]
            );
        })
    });
}

/// Goal: overlapping concurrent reads and writes never produce a checksum error or a torn
/// block. Method: writers fill whole blocks with one repeated byte; readers check that each block
/// they see is uniform and that no read fails.
#[test]
fn concurrent_overlapping_io_is_consistent() {
    let dir = disk_dir();
    block_on(async {
        let store = Arc::new(open_store(dir.path(), EngineChoice::Auto).await);
        store.create(chunk(0)).await.expect("create");
        let local = tokio::task::LocalSet::new();
        for task in 0..16u64 {
            let store = store.clone();
            local.spawn_local(async move {
                for step in 0..40u64 {
                    let block = (task * 7 + step * 3) % 14;
                    let blocks = 1 + (step % 3) as usize;
                    let offset = block * u64::from(BLOCK_SIZE);
                    if (task + step) % 2 == 0 {
                        let fill = (task * 40 + step) as u8;
                        let data = vec![fill; blocks * BLOCK_SIZE as usize];
                        store.write(chunk(0), offset, &data).await.expect("write");
                    } else {
                        let got = store
                            .read(chunk(0), offset, blocks * BLOCK_SIZE as usize)
                            .await
                            .expect("read never fails");
                        for block in got.chunks(BLOCK_SIZE as usize) {
                            assert!(block.iter().all(|b| *b == block[0]), "torn block");
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
    });
}
