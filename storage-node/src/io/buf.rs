//! Aligned IO buffers from a bounded, preallocated pool.
//!
//! Direct IO needs buffers aligned to the device's block size; io_uring can pin them once
//! (registered buffers) if they never move. So a pool allocates one aligned region at start-up,
//! cuts it into `count` buffers of `size_bytes`, and hands them out as owned [`AlignedBuf`]s that
//! return themselves on drop. The pool never grows: when it is empty, `acquire` waits, which is
//! what bounds the IO in flight per engine.

use std::{
    alloc::{self, Layout},
    fmt,
    ops::{Deref, DerefMut},
    ptr::NonNull,
    sync::{Arc, Mutex},
};

use cairn_common::BLOCK_SIZE;
use tokio::sync::Semaphore;

/// Buffers a pool may hold: io_uring registers at most 16384 buffers per ring.
pub const POOL_BUFFER_COUNT_MAX: u32 = 16384;

/// The largest buffer a pool may hand out; also the largest single chunk-store IO.
pub const POOL_BUFFER_SIZE_MAX: u32 = 64 << 20;

const ALIGN: usize = BLOCK_SIZE as usize;

struct Region {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the region is plain memory; disjoint buffers are handed out one owner at a time.
unsafe impl Send for Region {}
// SAFETY: as above; the region itself is never accessed through a shared reference.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `BufferPool::new` with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

struct PoolShared {
    region: Region,
    size_bytes: usize,
    count: u32,
    free: Mutex<Vec<u32>>,
    available: Semaphore,
}

/// A fixed set of aligned buffers. Cheap to clone: clones share the same buffers.
#[derive(Clone)]
pub struct BufferPool {
    shared: Arc<PoolShared>,
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("count", &self.shared.count)
            .field("size_bytes", &self.shared.size_bytes)
            .finish()
    }
}

impl BufferPool {
    /// Allocates `count` zeroed buffers of `size_bytes` each, aligned to [`BLOCK_SIZE`].
    pub fn new(count: u32, size_bytes: u32) -> BufferPool {
        assert!(
            count > 0 && count <= POOL_BUFFER_COUNT_MAX,
            "buffer count {count}"
        );
        assert!(
            size_bytes > 0 && size_bytes <= POOL_BUFFER_SIZE_MAX,
            "buffer size {size_bytes}"
        );
        assert!(
            size_bytes.is_multiple_of(BLOCK_SIZE),
            "buffer size {size_bytes} not block aligned"
        );
        let total = count as usize * size_bytes as usize;
        let layout = Layout::from_size_align(total, ALIGN).expect("invariant: valid pool layout");
        // SAFETY: layout has a non-zero size (asserted above).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        BufferPool {
            shared: Arc::new(PoolShared {
                region: Region { ptr, layout },
                size_bytes: size_bytes as usize,
                count,
                free: Mutex::new((0..count).rev().collect()),
                available: Semaphore::new(count as usize),
            }),
        }
    }

    /// The size of every buffer in the pool.
    pub fn buffer_size_bytes(&self) -> u32 {
        self.shared.size_bytes as u32
    }

    /// The number of buffers in the pool.
    pub fn count(&self) -> u32 {
        self.shared.count
    }

    /// The buffers not handed out right now.
    pub fn available(&self) -> usize {
        self.shared.available.available_permits()
    }

    /// Takes a buffer, waiting for one to come back if all are in use. Its length starts at its
    /// full capacity; its contents are whatever the last user left.
    pub async fn acquire(&self) -> AlignedBuf {
        let permit = self
            .shared
            .available
            .acquire()
            .await
            .expect("invariant: never closed");
        permit.forget();
        self.take()
    }

    /// Takes a buffer if one is free right now.
    pub fn try_acquire(&self) -> Option<AlignedBuf> {
        let permit = self.shared.available.try_acquire().ok()?;
        permit.forget();
        Some(self.take())
    }

    fn take(&self) -> AlignedBuf {
        let index = {
            let mut free = self
                .shared
                .free
                .lock()
                .expect("invariant: pool lock not poisoned");
            free.pop()
                .expect("invariant: a permit guarantees a free buffer")
        };
        let offset = index as usize * self.shared.size_bytes;
        // SAFETY: offset < total size of the region.
        let ptr = unsafe { self.shared.region.ptr.add(offset) };
        AlignedBuf {
            ptr,
            len: self.shared.size_bytes,
            index,
            pool: self.shared.clone(),
        }
    }

    /// The iovecs covering every buffer, in index order, for io_uring buffer registration.
    pub(crate) fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.shared.count as usize)
            .map(|i| libc::iovec {
                // SAFETY: inside the region.
                iov_base: unsafe { self.shared.region.ptr.add(i * self.shared.size_bytes) }
                    .as_ptr()
                    .cast(),
                iov_len: self.shared.size_bytes,
            })
            .collect()
    }

    /// True if `buf` came from this pool (so its registered index is valid here).
    pub(crate) fn owns(&self, buf: &AlignedBuf) -> bool {
        Arc::ptr_eq(&self.shared, &buf.pool)
    }
}

/// An owned, block-aligned buffer from a [`BufferPool`]; returns to the pool on drop.
///
/// `len` is the number of bytes in use (what deref shows, and what an IO transfers); it can be
/// set to any value up to the pool's buffer size.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    index: u32,
    pool: Arc<PoolShared>,
}

// SAFETY: the buffer is exclusively owned memory inside a region kept alive by `pool`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// The most bytes this buffer can hold.
    pub fn capacity(&self) -> usize {
        self.pool.size_bytes
    }

    /// Sets the length in use. Panics if larger than the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity(),
            "length {len} over capacity {}",
            self.capacity()
        );
        self.len = len;
    }

    /// The buffer's index in its pool (its registered-buffer index in io_uring).
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len lies inside this buffer, which this value owns.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AlignedBuf(index {}, len {})", self.index, self.len)
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let mut free = self
            .pool
            .free
            .lock()
            .expect("invariant: pool lock not poisoned");
        free.push(self.index);
        drop(free);
        self.pool.available.add_permits(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_return_on_drop() {
        let pool = BufferPool::new(2, 8192);
        let a = pool.try_acquire().expect("first");
        let b = pool.try_acquire().expect("second");
        assert!(pool.try_acquire().is_none(), "pool must not grow");
        assert_eq!(a.as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert_ne!(a.index(), b.index());
        drop(a);
        assert_eq!(pool.available(), 1);
        let c = pool.try_acquire().expect("returned buffer is reusable");
        assert_eq!(c.len(), 8192);
    }
}
