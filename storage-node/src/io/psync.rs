//! The fallback engine: positioned read and write (`pread`/`pwrite`) on a small thread pool.
//!
//! Chosen where io_uring is unavailable (old kernels, seccomp filters) or where the file system
//! refuses O_DIRECT (tmpfs); in that case files are opened buffered and durability still comes
//! only from `IoOp::Sync` (fdatasync).

use std::{
    io,
    os::fd::RawFd,
    path::Path,
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread::JoinHandle,
};

use super::{BufferPool, Callback, EngineFile, EngineKind, EngineOptions, IoDone, IoEngine, IoOp};
use crate::error::Result;

/// The most worker threads one fallback engine runs.
pub const PSYNC_THREADS_MAX: u32 = 64;

struct Request {
    op: IoOp,
    done: Callback,
}

/// A positioned-IO engine for one disk. Dropping it finishes queued requests and joins its
/// threads.
pub struct PsyncEngine {
    sender: Option<SyncSender<Request>>,
    pool: BufferPool,
    direct: bool,
    threads: Vec<JoinHandle<()>>,
}

impl PsyncEngine {
    /// Starts `options.psync_threads` workers; files are opened O_DIRECT if `direct`.
    pub fn new(options: &EngineOptions, direct: bool) -> PsyncEngine {
        let thread_count = options.psync_threads;
        assert!(
            thread_count > 0 && thread_count <= PSYNC_THREADS_MAX,
            "threads {thread_count}"
        );
        assert!(options.queue_depth_max > 0, "queue depth must be positive");
        let pool = BufferPool::new(options.buffer_count, options.buffer_size_bytes);
        let (sender, receiver) = mpsc::sync_channel(options.queue_depth_max as usize);
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = (0..thread_count)
            .map(|i| {
                let receiver = receiver.clone();
                std::thread::Builder::new()
                    .name(format!("cairn-psync-{i}"))
                    .spawn(move || worker(&receiver))
                    .expect("spawning an IO thread at start-up")
            })
            .collect();
        PsyncEngine {
            sender: Some(sender),
            pool,
            direct,
            threads,
        }
    }
}

impl IoEngine for PsyncEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Psync {
            direct: self.direct,
        }
    }

    fn pool(&self) -> &BufferPool {
        &self.pool
    }

    fn open(&self, path: &Path, create: bool) -> Result<Arc<EngineFile>> {
        super::open_file(path, create, self.direct)
    }

    fn submit(&self, op: IoOp, done: Callback) {
        op.assert_aligned();
        let sender = self
            .sender
            .as_ref()
            .expect("invariant: sender lives until drop");
        if let Err(error) = sender.try_send(Request { op, done }) {
            let (request, message) = match error {
                TrySendError::Full(request) => (request, "psync queue full"),
                TrySendError::Disconnected(request) => (request, "psync threads stopped"),
            };
            let result = Err(io::Error::new(io::ErrorKind::WouldBlock, message));
            (request.done)(IoDone {
                buf: request.op.into_buf(),
                result,
            });
        }
    }
}

impl Drop for PsyncEngine {
    fn drop(&mut self) {
        drop(self.sender.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn worker(receiver: &Mutex<Receiver<Request>>) {
    loop {
        let request = {
            let receiver = receiver
                .lock()
                .expect("invariant: receiver lock not poisoned");
            match receiver.recv() {
                Ok(request) => request,
                Err(_) => return,
            }
        };
        let Request { mut op, done } = request;
        let result = execute(&mut op);
        done(IoDone {
            buf: op.into_buf(),
            result,
        });
    }
}

fn execute(op: &mut IoOp) -> io::Result<()> {
    match op {
        IoOp::Read {
            file,
            offset_bytes,
            buf,
        } => {
            let (fd, offset) = (file.raw_fd(), *offset_bytes);
            let len = buf.len();
            let ptr = buf.as_mut_ptr();
            transfer(len, |done| {
                // SAFETY: ptr+done..ptr+len lies inside the owned buffer.
                unsafe { pread(fd, ptr.add(done), len - done, offset + done as u64) }
            })
        }
        IoOp::Write {
            file,
            offset_bytes,
            buf,
        } => {
            let (fd, offset) = (file.raw_fd(), *offset_bytes);
            let len = buf.len();
            let ptr = buf.as_ptr();
            transfer(len, |done| {
                // SAFETY: ptr+done..ptr+len lies inside the owned buffer.
                unsafe { pwrite(fd, ptr.add(done), len - done, offset + done as u64) }
            })
        }
        IoOp::Sync { file } => {
            // SAFETY: plain syscall on an open fd.
            if unsafe { libc::fdatasync(file.raw_fd()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }
}

/// Repeats a positioned transfer until `len` bytes moved; zero bytes moved is end of file.
fn transfer(len: usize, mut step: impl FnMut(usize) -> isize) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let moved = step(done);
        if moved < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if moved == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short transfer",
            ));
        }
        done += moved as usize;
    }
    Ok(())
}

/// # Safety
/// `ptr..ptr+len` must be writable memory owned by the caller.
unsafe fn pread(fd: RawFd, ptr: *mut u8, len: usize, offset: u64) -> isize {
    let offset = libc::off_t::try_from(offset).expect("invariant: offset fits off_t");
    // SAFETY: guaranteed by the caller.
    unsafe { libc::pread(fd, ptr.cast(), len, offset) }
}

/// # Safety
/// `ptr..ptr+len` must be readable memory owned by the caller.
unsafe fn pwrite(fd: RawFd, ptr: *const u8, len: usize, offset: u64) -> isize {
    let offset = libc::off_t::try_from(offset).expect("invariant: offset fits off_t");
    // SAFETY: guaranteed by the caller.
    unsafe { libc::pwrite(fd, ptr.cast(), len, offset) }
}
