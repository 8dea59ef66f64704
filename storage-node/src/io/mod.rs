//! IO engines: how the chunk store reaches a disk.
//!
//! An engine takes owned [`AlignedBuf`]s with each request and gives them back on completion,
//! because io_uring needs the memory until the kernel is done with it. Three implementations sit
//! behind [`IoEngine`]:
//!
//! - [`uring::UringEngine`]: one io_uring ring per disk, driven by the threads that submit to
//!   it, with completions reaped on the caller's runtime (a thread per disk as a backstop),
//!   O_DIRECT files, registered buffers. The default.
//! - [`psync::PsyncEngine`]: positioned read/write on a small thread pool, chosen automatically
//!   where io_uring or O_DIRECT is unavailable (tmpfs refuses O_DIRECT; containers often block
//!   io_uring).
//! - [`fault::FaultyEngine`]: wraps either and injects EIO, bit flips, torn writes and latency,
//!   switchable at run time. Tests and `chaos/` use it.
//!
//! Every engine passes the same conformance suite (`tests/storage_node/conformance.rs`).
//!
//! Durability: a completed write is in the device's volatile cache at best (O_DIRECT) or in the
//! page cache (buffered fallback); only a completed [`IoOp::Sync`] on the file makes it durable.

pub mod buf;
pub mod fault;
pub mod psync;
pub mod uring;

use std::{
    fmt,
    fs::{File, OpenOptions},
    future::Future,
    io,
    os::{
        fd::{AsRawFd, RawFd},
        unix::fs::OpenOptionsExt,
    },
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

pub use buf::{AlignedBuf, BufferPool};
use cairn_common::BLOCK_SIZE;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Which engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring, O_DIRECT.
    Uring,
    /// pread/pwrite on a thread pool; `direct` tells whether files are opened O_DIRECT.
    Psync {
        /// True if files are opened with O_DIRECT.
        direct: bool,
    },
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineKind::Uring => f.write_str("io_uring (O_DIRECT)"),
            EngineKind::Psync { direct: true } => f.write_str("psync (O_DIRECT)"),
            EngineKind::Psync { direct: false } => f.write_str("psync (buffered)"),
        }
    }
}

/// A file opened through an engine. Requests hold an `Arc` to it, so it stays open until every
/// request on it has completed.
pub struct EngineFile {
    path: PathBuf,
    file: File,
}

impl EngineFile {
    /// The path the file was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length in bytes.
    pub fn size_bytes(&self) -> Result<u64> {
        let meta = self
            .file
            .metadata()
            .map_err(|e| Error::io("stat", &self.path, e))?;
        Ok(meta.len())
    }

    /// Reserves `size_bytes` of disk space for the file (fallocate), so later writes inside it
    /// need no allocation.
    pub fn allocate(&self, size_bytes: u64) -> Result<()> {
        let len = libc::off_t::try_from(size_bytes).expect("invariant: file size fits off_t");
        // SAFETY: plain syscall on a valid fd.
        let rc = unsafe { libc::fallocate(self.raw_fd(), 0, 0, len) };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(Error::io("fallocate", &self.path, error));
        }
        // Some file systems (ramfs, older NFS) cannot reserve space: only set the size. The
        // chunk store zero-fills new files, which allocates them anyway.
        if self.size_bytes()? < size_bytes {
            self.file
                .set_len(size_bytes)
                .map_err(|e| Error::io("ftruncate", &self.path, e))?;
        }
        Ok(())
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl fmt::Debug for EngineFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EngineFile({})", self.path.display())
    }
}

/// One request to an engine. Reads and writes transfer `buf[..buf.len()]`; offsets and lengths
/// must be multiples of [`BLOCK_SIZE`].
pub enum IoOp {
    /// Reads `buf.len()` bytes at `offset_bytes` into `buf`.
    Read {
        /// The file to read.
        file: Arc<EngineFile>,
        /// Where in the file.
        offset_bytes: u64,
        /// Where the bytes go.
        buf: AlignedBuf,
    },
    /// Writes `buf` at `offset_bytes`.
    Write {
        /// The file to write.
        file: Arc<EngineFile>,
        /// Where in the file.
        offset_bytes: u64,
        /// The bytes to write.
        buf: AlignedBuf,
    },
    /// Makes every completed write to the file durable (fdatasync).
    Sync {
        /// The file to sync.
        file: Arc<EngineFile>,
    },
}

impl IoOp {
    /// The file the request addresses.
    pub fn file(&self) -> &Arc<EngineFile> {
        match self {
            IoOp::Read { file, .. } | IoOp::Write { file, .. } | IoOp::Sync { file } => file,
        }
    }

    /// A name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            IoOp::Read { .. } => "read",
            IoOp::Write { .. } => "write",
            IoOp::Sync { .. } => "fdatasync",
        }
    }

    fn assert_aligned(&self) {
        if let IoOp::Read {
            offset_bytes, buf, ..
        }
        | IoOp::Write {
            offset_bytes, buf, ..
        } = self
        {
            assert!(
                offset_bytes % u64::from(BLOCK_SIZE) == 0,
                "unaligned offset {offset_bytes}"
            );
            assert!(
                buf.len() % BLOCK_SIZE as usize == 0,
                "unaligned length {}",
                buf.len()
            );
            assert!(!buf.is_empty(), "empty IO");
        }
    }

    fn into_buf(self) -> Option<AlignedBuf> {
        match self {
            IoOp::Read { buf, .. } | IoOp::Write { buf, .. } => Some(buf),
            IoOp::Sync { .. } => None,
        }
    }
}

/// A finished request: the buffer it carried (for reads and writes) and the outcome.
pub struct IoDone {
    /// The request's buffer, handed back.
    pub buf: Option<AlignedBuf>,
    /// The outcome; reads and writes either transfer every byte or fail.
    pub result: io::Result<()>,
}

/// Called exactly once when a request finishes, on whichever thread finds it finished: an
/// engine thread, a reaper task, or a caller inside [`IoEngine::submit`] (never under an
/// engine lock). It must not block.
pub type Callback = Box<dyn FnOnce(IoDone) + Send + 'static>;

/// A disk's IO engine. Implementations must call every callback exactly once, including when
/// they shut down.
pub trait IoEngine: Send + Sync + 'static {
    /// Which engine this is.
    fn kind(&self) -> EngineKind;

    /// The buffers requests to this engine should use.
    fn pool(&self) -> &BufferPool;

    /// Opens (or creates) a file the way this engine needs it (O_DIRECT where it can).
    fn open(&self, path: &Path, create: bool) -> Result<Arc<EngineFile>>;

    /// Queues a request; `done` runs when it finishes.
    fn submit(&self, op: IoOp, done: Callback);

    /// How long a caller that just submitted should keep its thread busy (re-polling, other
    /// ready tasks first) before letting it sleep. An engine answers `Some` only when a
    /// completion is likely within that time and nothing else would keep the caller busy: on a
    /// nearly idle disk, where waking a parked thread costs more than the IO itself.
    fn caller_spin(&self) -> Option<Duration> {
        None
    }

    /// Runs the callbacks of finished requests now, if the engine can without waiting; a
    /// spinning caller calls it between polls. Engines whose own threads run callbacks need
    /// nothing here.
    fn poll_completions(&self) {}

    /// Tells the engine whether a caller's spin caught its completion (`true`) or ran out.
    fn spin_outcome(&self, _caught: bool) {}
}

/// Whether spinning callers catch their completions, so that they stop spinning where it does
/// not pay. A spin that runs out costs its CPU time and more: a waiter that never sleeps is never
/// woken by the disk's interrupt either, and so never moved by the scheduler to the CPU that
/// takes those interrupts (measured on this VM: 4 KiB writes at qd1 spinning on the other vCPU
/// took 70-100 µs against 53 µs for a sleeping waiter, and 47 µs spinning on the right one).
#[derive(Debug, Default)]
pub struct SpinGauge {
    /// Rises with caught spins, falls faster with missed ones; no spinning while negative, and
    /// each request that did not spin raises it, so spinning is tried again now and then.
    score: std::sync::atomic::AtomicI32,
}

impl SpinGauge {
    const CAUGHT: i32 = 1;
    const MISSED: i32 = 4;
    const HIGH: i32 = 16;
    const LOW: i32 = -64;

    /// True if the next waiter should spin.
    pub fn spin(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.score.load(Relaxed) >= 0 {
            return true;
        }
        self.score.fetch_add(1, Relaxed);
        false
    }

    /// Records a spin's outcome.
    pub fn record(&self, caught: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let score = self.score.load(Relaxed);
        let next = if caught {
            (score + Self::CAUGHT).min(Self::HIGH)
        } else {
            (score - Self::MISSED).max(Self::LOW)
        };
        // A lost update between racing callers only blurs a heuristic.
        self.score.store(next, Relaxed);
    }
}

/// Submits `op` and waits for it. On failure the error names the op and the file.
pub async fn run(engine: &dyn IoEngine, op: IoOp) -> (Option<AlignedBuf>, Result<()>) {
    let (tx, rx) = oneshot::channel();
    let op_name = op.name();
    let path = op.file().path.clone();
    engine.submit(
        op,
        Box::new(move |done: IoDone| {
            // The receiver is gone only if the caller stopped waiting; nothing to do then.
            let _ = tx.send(done);
        }),
    );
    let spin_until = engine.caller_spin().map(|spin| Instant::now() + spin);
    match (Completion {
        engine,
        receiver: rx,
        spin_until,
    })
    .await
    {
        Ok(IoDone { buf, result }) => (buf, result.map_err(|e| Error::io(op_name, path, e))),
        Err(_) => (None, Err(Error::EngineStopped)),
    }
}

/// Waits for a request's completion. Until `spin_until` it asks to be polled again at once
/// instead of only on the engine's wake-up, so the caller's runtime runs its other ready tasks
/// and then comes back rather than parking its thread.
struct Completion<'a> {
    engine: &'a dyn IoEngine,
    receiver: oneshot::Receiver<IoDone>,
    spin_until: Option<Instant>,
}

impl Future for Completion<'_> {
    type Output = Result<IoDone, oneshot::error::RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let poll = Pin::new(&mut self.receiver).poll(cx);
        if poll.is_ready() {
            if self.spin_until.is_some() {
                self.engine.spin_outcome(true);
            }
            return poll;
        }
        match self.spin_until {
            Some(until) if Instant::now() < until => {
                self.engine.poll_completions();
                let poll = Pin::new(&mut self.receiver).poll(cx);
                if poll.is_pending() {
                    cx.waker().wake_by_ref();
                } else {
                    self.engine.spin_outcome(true);
                }
                poll
            }
            Some(_) => {
                self.spin_until = None;
                self.engine.spin_outcome(false);
                poll
            }
            None => poll,
        }
    }
}

/// Reads `buf.len()` bytes at `offset_bytes` of `file` into `buf`.
pub async fn read(
    engine: &dyn IoEngine,
    file: &Arc<EngineFile>,
    offset_bytes: u64,
    buf: AlignedBuf,
) -> Result<AlignedBuf> {
    let (buf, result) = run(
        engine,
        IoOp::Read {
            file: file.clone(),
            offset_bytes,
            buf,
        },
    )
    .await;
    result?;
    Ok(buf.expect("invariant: a read hands its buffer back"))
}

/// Writes `buf` at `offset_bytes` of `file` and returns the buffer.
pub async fn write(
    engine: &dyn IoEngine,
    file: &Arc<EngineFile>,
    offset_bytes: u64,
    buf: AlignedBuf,
) -> Result<AlignedBuf> {
    let (buf, result) = run(
        engine,
        IoOp::Write {
            file: file.clone(),
            offset_bytes,
            buf,
        },
    )
    .await;
    result?;
    Ok(buf.expect("invariant: a write hands its buffer back"))
}

/// Makes every completed write to `file` durable.
pub async fn sync(engine: &dyn IoEngine, file: &Arc<EngineFile>) -> Result<()> {
    run(engine, IoOp::Sync { file: file.clone() }).await.1
}

/// How to pick and size an engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Which engine to run.
    pub choice: EngineChoice,
    /// Requests in flight at once. io_uring's ring is sized from it.
    pub queue_depth_max: u32,
    /// Buffers in the engine's pool.
    pub buffer_count: u32,
    /// Size of each buffer: the largest single IO.
    pub buffer_size_bytes: u32,
    /// Threads of the positioned-IO fallback.
    pub psync_threads: u32,
    /// How long a caller waiting for an io_uring completion polls before it sleeps, in
    /// microseconds, when at most [`uring::SPIN_IN_FLIGHT_MAX`] requests are in flight and
    /// spinning has been paying ([`SpinGauge`]); 0 never polls. Trades CPU for latency on a
    /// lightly loaded disk.
    pub spin_us: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            choice: EngineChoice::Auto,
            // 128 keeps a fast NVMe device busy while bounding pinned memory.
            queue_depth_max: 128,
            // 64 x 1 MiB = 64 MiB of pinned buffers per disk.
            buffer_count: 64,
            buffer_size_bytes: 1 << 20,
            // Enough to keep a few requests in flight on a device without io_uring.
            psync_threads: 4,
            // Covers the gap between a completion and the caller's next request on a busy disk;
            // see benches/chunkstore.sh for the effect.
            spin_us: 50,
        }
    }
}

/// Which engine [`open_engine`] starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    /// io_uring with O_DIRECT where both work in the directory, else the positioned-IO fallback.
    Auto,
    /// io_uring with O_DIRECT, or an error.
    Uring,
    /// The positioned-IO fallback, with O_DIRECT if the directory supports it.
    Psync,
}

/// Starts the engine for the disk mounted at `dir`, probing what the directory supports, and
/// logs which engine runs.
pub fn open_engine(dir: &Path, options: &EngineOptions) -> Result<Arc<dyn IoEngine>> {
    let direct = probe_direct(dir)?;
    let engine: Arc<dyn IoEngine> = match (options.choice, direct) {
        (EngineChoice::Psync, _) => Arc::new(psync::PsyncEngine::new(options, direct)),
        (EngineChoice::Uring, false) => {
            return Err(Error::io(
                "open O_DIRECT",
                dir,
                io::Error::new(io::ErrorKind::Unsupported, "O_DIRECT unsupported here"),
            ));
        }
        (EngineChoice::Uring, true) => Arc::new(uring::UringEngine::new(options)?),
        (EngineChoice::Auto, false) => Arc::new(psync::PsyncEngine::new(options, false)),
        (EngineChoice::Auto, true) => match uring::UringEngine::new(options) {
            Ok(engine) => Arc::new(engine),
            Err(error) => {
                tracing::warn!(%error, "io_uring unavailable; falling back to positioned IO");
                Arc::new(psync::PsyncEngine::new(options, true))
            }
        },
    };
    tracing::info!(dir = %dir.display(), engine = %engine.kind(), "IO engine selected");
    Ok(engine)
}

/// Tells whether files in `dir` can be opened with O_DIRECT (tmpfs, for one, refuses).
fn probe_direct(dir: &Path) -> Result<bool> {
    let path = dir.join(".cairn-direct-probe");
    let result = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path);
    let direct = match result {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => false,
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    std::fs::remove_file(&path).map_err(|e| Error::io("unlink", &path, e))?;
    Ok(direct)
}

/// Opens a file for an engine, with O_DIRECT if `direct`.
pub(crate) fn open_file(path: &Path, create: bool, direct: bool) -> Result<Arc<EngineFile>> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(create);
    let mut flags = libc::O_CLOEXEC | libc::O_NOATIME;
    if direct {
        flags |= libc::O_DIRECT;
    }
    options.custom_flags(flags);
    let file = match options.open(path) {
        // O_NOATIME is refused on files the process does not own; retry without it.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            options.custom_flags(flags & !libc::O_NOATIME).open(path)
        }
        other => other,
    }
    .map_err(|e| Error::io("open", path, e))?;
    Ok(Arc::new(EngineFile {
        path: path.to_path_buf(),
        file,
    }))
}

/// Raises this process's open-file limit to its hard limit (each chunk file stays open) and
/// returns the new soft limit.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to a rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: valid pointer to a rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::SpinGauge;

    /// Goal: spinning stops after spins run out, and is tried again after some requests that
    /// did not spin; caught spins keep it on.
    #[test]
    fn the_spin_gauge_stops_spinning_that_does_not_pay_and_tries_again() {
        let gauge = SpinGauge::default();
        assert!(gauge.spin(), "spinning starts on");
        for _ in 0..100 {
            gauge.record(true);
        }
        assert!(gauge.spin(), "caught spins keep it on");
        for _ in 0..5 {
            gauge.record(false);
        }
        let skipped = (0..100).take_while(|_| !gauge.spin()).count();
        assert!(
            (1..100).contains(&skipped),
            "off for a while, then tried again: {skipped} requests without spinning"
        );
    }
}
