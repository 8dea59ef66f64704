//! The IO engine conformance suite: every engine, and the fault wrapper with no fault active,
//! must behave the same.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use cairn_storage_node::{
    Error,
    io::{
        self, EngineChoice, EngineKind, IoDone, IoEngine, IoOp, fault::FaultyEngine, open_engine,
    },
};

use super::support::{
    block_on, disk_dir, engine, engine_cases, pattern, small_engine, with_ramfs_dir,
};

/// Runs every check against one engine whose files live in `dir`.
fn suite(name: &str, engine: &Arc<dyn IoEngine>, dir: &Path) {
    eprintln!("conformance: {name} ({})", engine.kind());
    round_trip_at_sizes_and_offsets(engine, dir);
    concurrent_io_keeps_every_byte(engine, dir);
    read_past_end_fails_and_returns_buffer(engine, dir);
    every_callback_runs_once_under_overload(engine, dir);
}

fn round_trip_at_sizes_and_offsets(engine: &Arc<dyn IoEngine>, dir: &Path) {
    block_on(async {
        let file = engine.open(&dir.join("round-trip"), true).expect("open");
        file.allocate(4 << 20).expect("allocate");
        for (i, (offset, len)) in [(0u64, 4096usize), (8192, 65536), (1 << 20, 256 << 10)]
            .into_iter()
            .enumerate()
        {
            let data = pattern(i as u64, len);
            let mut buf = engine.pool().acquire().await;
            buf.set_len(len);
            buf.copy_from_slice(&data);
            let buf = io::write(&**engine, &file, offset, buf)
                .await
                .expect("write");
            assert_eq!(buf.len(), len, "write hands the buffer back intact");
            drop(buf);
            io::sync(&**engine, &file).await.expect("sync");
            let mut buf = engine.pool().acquire().await;
            buf.set_len(len);
            buf.fill(0xaa);
            let buf = io::read(&**engine, &file, offset, buf).await.expect("read");
            assert!(
                buf[..] == data[..],
                "read returns what was written at {offset}+{len}"
            );
        }
    });
}

fn concurrent_io_keeps_every_byte(engine: &Arc<dyn IoEngine>, dir: &Path) {
    block_on(async {
        let file = engine.open(&dir.join("concurrent"), true).expect("open");
        let blocks = 256u64;
        file.allocate(blocks * 4096).expect("allocate");
        let writes = (0..blocks).map(|b| {
            let (engine, file) = (engine.clone(), file.clone());
            async move {
                let mut buf = engine.pool().acquire().await;
                buf.set_len(4096);
                buf.copy_from_slice(&pattern(b + 100, 4096));
                io::write(&*engine, &file, b * 4096, buf).await.map(drop)
            }
        });
        for result in join(writes.collect()).await {
            result.expect("concurrent write");
        }
        let reads = (0..blocks).map(|b| {
            let (engine, file) = (engine.clone(), file.clone());
            async move {
                let mut buf = engine.pool().acquire().await;
                buf.set_len(4096);
                let buf = io::read(&*engine, &file, b * 4096, buf)
                    .await
                    .expect("read");
                assert!(buf[..] == pattern(b + 100, 4096)[..], "block {b}");
            }
        });
        join(reads.collect()).await;
    });
}

fn read_past_end_fails_and_returns_buffer(engine: &Arc<dyn IoEngine>, dir: &Path) {
    block_on(async {
        let file = engine.open(&dir.join("short"), true).expect("open");
        file.allocate(4096).expect("allocate");
        let available = engine.pool().available();
        let mut buf = engine.pool().acquire().await;
        buf.set_len(8192);
        let (buf, result) = io::run(
            &**engine,
            IoOp::Read {
                file,
                offset_bytes: 0,
                buf,
            },
        )
        .await;
        assert!(
            matches!(result, Err(Error::Io { .. })),
            "short read is an error: {result:?}"
        );
        assert_eq!(
            buf.map(|b| b.len()),
            Some(8192),
            "buffer handed back on error"
        );
        assert_eq!(engine.pool().available(), available);
    });
}

fn every_callback_runs_once_under_overload(engine: &Arc<dyn IoEngine>, dir: &Path) {
    let file = engine.open(&dir.join("overload"), true).expect("open");
    let count = 2000;
    let (ok, busy) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (sender, receiver) = std::sync::mpsc::channel();
    for _ in 0..count {
        let (ok, busy, sender) = (ok.clone(), busy.clone(), sender.clone());
        engine.submit(
            IoOp::Sync { file: file.clone() },
            Box::new(move |done: IoDone| {
                match done.result {
                    Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        busy.fetch_add(1, Ordering::SeqCst)
                    }
                    Err(e) => panic!("unexpected error {e}"),
                };
                sender.send(()).expect("test waits");
            }),
        );
    }
    for _ in 0..count {
        receiver
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("every callback runs");
    }
    let (ok, busy) = (ok.load(Ordering::SeqCst), busy.load(Ordering::SeqCst));
    assert_eq!(ok + busy, count);
    assert!(
        ok >= 16,
        "at least a queue's worth succeeds: ok={ok} busy={busy}"
    );
}

async fn join<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    let mut handles = Vec::new();
    let local = tokio::task::LocalSet::new();
    for future in futures {
        handles.push(local.spawn_local(future));
    }
    local.await;
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}

#[test]
fn conformance_every_engine() {
    for (name, choice, dir, kind) in engine_cases() {
        let engine = engine(dir.path(), choice);
        assert_eq!(engine.kind(), kind, "{name}");
        suite(name, &engine, dir.path());
        let faulty: Arc<dyn IoEngine> = Arc::new(FaultyEngine::new(engine));
        suite(&format!("faulty({name})"), &faulty, dir.path());
    }
}

#[test]
fn auto_choice_picks_uring_where_direct_io_works() {
    let disk = disk_dir();
    let options = small_engine(EngineChoice::Auto);
    assert_eq!(
        open_engine(disk.path(), &options).expect("engine").kind(),
        EngineKind::Uring
    );
}

/// Goal: where O_DIRECT is refused, the buffered fallback is chosen automatically and passes the
/// same suite. Method: a ramfs in a private mount namespace.
#[test]
fn auto_choice_falls_back_to_buffered_psync_without_direct_io() {
    with_ramfs_dir(
        "storage_node::conformance::auto_choice_falls_back_to_buffered_psync_without_direct_io",
        |dir| {
            let engine = open_engine(dir, &small_engine(EngineChoice::Auto)).expect("engine");
            assert_eq!(engine.kind(), EngineKind::Psync { direct: false });
            let uring = small_engine(EngineChoice::Uring);
            assert!(
                open_engine(dir, &uring).is_err(),
                "io_uring engine needs O_DIRECT"
            );
            suite("psync-buffered", &engine, dir);
            let faulty: Arc<dyn IoEngine> = Arc::new(FaultyEngine::new(engine));
            suite("faulty(psync-buffered)", &faulty, dir);
        },
    );
}

#[test]
fn dropping_an_engine_completes_in_flight_requests() {
    for (name, choice, dir, _) in engine_cases() {
        let engine = engine(dir.path(), choice);
        let file = engine.open(&dir.path().join("drop"), true).expect("open");
        let (sender, receiver) = std::sync::mpsc::channel();
        for _ in 0..8 {
            let sender = sender.clone();
            engine.submit(
                IoOp::Sync { file: file.clone() },
                Box::new(move |_| {
                    let _ = sender.send(());
                }),
            );
        }
        drop(engine);
        for _ in 0..8 {
            receiver
                .try_recv()
                .unwrap_or_else(|_| panic!("{name}: callback ran before drop returned"));
        }
    }
}

/// Submits `count` syncs of `file` and returns a receiver that hears each completion.
fn submit_syncs(
    engine: &Arc<dyn IoEngine>,
    file: &Arc<io::EngineFile>,
    count: usize,
) -> std::sync::mpsc::Receiver<std::io::Result<()>> {
    let (sender, receiver) = std::sync::mpsc::channel();
    for _ in 0..count {
        let sender = sender.clone();
        engine.submit(
            IoOp::Sync { file: file.clone() },
            Box::new(move |done: IoDone| {
                let _ = sender.send(done.result);
            }),
        );
    }
    receiver
}

fn expect_completions(receiver: &std::sync::mpsc::Receiver<std::io::Result<()>>, count: usize) {
    for i in 0..count {
        receiver
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("completion {i} of {count} never came"))
            .expect("sync succeeds");
    }
}

/// Goal: io_uring completions are reaped on the submitting runtime, but no request depends on
/// that runtime: one that stops being driven, or shuts down with requests in flight, leaves them
/// to the engine's own thread. Method: the reaper task is started on runtime A (an IO through
/// it), then A is left undriven while a plain thread submits; then A is dropped right after
/// submitting more.
#[test]
fn uring_completions_do_not_depend_on_one_runtime() {
    let dir = disk_dir();
    let engine = engine(dir.path(), EngineChoice::Uring);
    let file = engine
        .open(&dir.path().join("runtimes"), true)
        .expect("open");
    let runtime_a = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime_a.block_on(async {
        io::sync(&*engine, &file).await.expect("sync on A");
    });
    // A holds the reaper task and is no longer driven.
    let receiver = submit_syncs(&engine, &file, 12);
    expect_completions(&receiver, 12);
    // Submitted from A's thread, then A shuts down: its reaper task is dropped.
    let receiver = runtime_a.block_on(async { submit_syncs(&engine, &file, 12) });
    drop(runtime_a);
    expect_completions(&receiver, 12);
    // A new runtime takes the reaper role again.
    block_on(async {
        for _ in 0..4 {
            io::sync(&*engine, &file).await.expect("sync on B");
        }
    });
}
