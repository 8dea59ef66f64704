//! The read cache: verified 4 KiB blocks of one store in memory, so a hot block is read from
//! the disk once (DESIGN.md, "Read cache": the memory half; the SSD half comes with the
//! write-cache work of roadmap 8).
//!
//! # Coherence
//!
//! Entries are keyed by the chunk's generation (store-wide, never reused while the store is
//! open, so a deleted and recreated chunk never meets its predecessor's blocks) and the block
//! index. Every change of a block's content (write, read-modify-write, discard) takes the
//! block's exclusive range lock and drops its entry while holding it, before any data IO; a
//! read inserts only blocks it read and verified under the shared lock on them. So no reader
//! can insert a block's old content after a writer dropped it, and a hit is always the block's
//! current, checksum-verified content. A deleted chunk's entries are never hit again (reads
//! check the chunk is live before the cache) and age out.
//!
//! # Eviction
//!
//! CLOCK (second chance) over a fixed number of slots: a hit sets the slot's reference bit;
//! the hand clears bits until it finds one clear and reuses that slot. Memory grows with use
//! up to the capacity and is reused after; one mutex guards it (a hit is a hash lookup and a
//! 4 KiB copy).
//!
//! Only small reads fill it ([`CACHED_IO_BYTES_MAX`]): a sequential scan would evict the hot
//! set. Reads of any size are served from it when every block they cover is there (blocks
//! the leader wrote through, or small reads filled).

use std::{collections::HashMap, sync::Mutex};

use cairn_common::BLOCK_SIZE;

/// Reads of at most this many bytes fill the cache (any read is served from it).
pub const CACHED_IO_BYTES_MAX: usize = 64 * 1024;

/// A chunk instance's generation and a block index in it.
type Key = (u64, u32);

struct Slot {
    key: Key,
    /// False once invalidated: the slot is on the free list.
    live: bool,
    referenced: bool,
    data: Box<[u8]>,
}

#[derive(Default)]
struct Inner {
    index: HashMap<Key, u32>,
    slots: Vec<Slot>,
    /// Slots invalidated, to be reused before the hand evicts anything.
    free: Vec<u32>,
    hand: usize,
}

/// The block cache of one chunk store.
pub(crate) struct BlockCache {
    capacity_blocks: usize,
    inner: Mutex<Inner>,
}

impl BlockCache {
    /// A cache of up to `capacity_bytes` (rounded down to whole blocks; 0 turns it off).
    pub(crate) fn new(capacity_bytes: u64) -> BlockCache {
        let blocks = capacity_bytes / u64::from(BLOCK_SIZE);
        BlockCache {
            capacity_blocks: usize::try_from(blocks).unwrap_or(usize::MAX),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// True if the cache may hold anything.
    pub(crate) fn enabled(&self) -> bool {
        self.capacity_blocks > 0
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("invariant: cache lock not poisoned")
    }

    /// Copies blocks `first..` of chunk instance `generation` into `out` (whole blocks) if
    /// every written one is cached (`written[i]` tells block `first + i`; the others read as
    /// zeros and are not cached); false, and `out` untouched, otherwise. A miss is found at
    /// the first written block not cached.
    pub(crate) fn get(
        &self,
        generation: u64,
        first: u32,
        written: &[bool],
        out: &mut [u8],
    ) -> bool {
        let block = BLOCK_SIZE as usize;
        debug_assert!(out.len().is_multiple_of(block));
        let count = out.len() / block;
        if written.len() != count {
            return false;
        }
        let mut found = Vec::with_capacity(count);
        let mut inner = self.inner();
        for (i, written) in written.iter().enumerate() {
            if !written {
                found.push(None);
                continue;
            }
            match inner.index.get(&(generation, first + i as u32)) {
                Some(slot) => found.push(Some(*slot)),
                None => return false,
            }
        }
        for (i, slot) in found.into_iter().enumerate() {
            let target = &mut out[i * block..(i + 1) * block];
            match slot {
                Some(slot) => {
                    let slot = &mut inner.slots[slot as usize];
                    slot.referenced = true;
                    target.copy_from_slice(&slot.data);
                }
                None => target.fill(0),
            }
        }
        true
    }

    /// Caches one block's verified content.
    pub(crate) fn insert(&self, generation: u64, index: u32, data: &[u8]) {
        debug_assert_eq!(data.len(), BLOCK_SIZE as usize);
        if !self.enabled() {
            return;
        }
        let key = (generation, index);
        let mut inner = self.inner();
        if let Some(&slot) = inner.index.get(&key) {
            let slot = &mut inner.slots[slot as usize];
            slot.data.copy_from_slice(data);
            slot.referenced = true;
            return;
        }
        let slot = match inner.free.pop() {
            Some(slot) => slot,
            None if inner.slots.len() < self.capacity_blocks => {
                inner.slots.push(Slot {
                    key,
                    live: false,
                    referenced: false,
                    data: vec![0; BLOCK_SIZE as usize].into_boxed_slice(),
                });
                u32::try_from(inner.slots.len() - 1).expect("invariant: cache slots fit u32")
            }
            None => inner.evict(),
        };
        let entry = &mut inner.slots[slot as usize];
        entry.key = key;
        entry.live = true;
        entry.referenced = false;
        entry.data.copy_from_slice(data);
        inner.index.insert(key, slot);
    }

    /// Drops blocks `first..=last` of chunk instance `generation`. The caller holds their
    /// exclusive range lock.
    pub(crate) fn invalidate(&self, generation: u64, first: u32, last: u32) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.inner();
        if inner.index.is_empty() {
            return;
        }
        for index in first..=last {
            if let Some(slot) = inner.index.remove(&(generation, index)) {
                inner.slots[slot as usize].live = false;
                inner.free.push(slot);
            }
        }
    }

    /// Blocks held now.
    pub(crate) fn len(&self) -> usize {
        self.inner().index.len()
    }
}

impl Inner {
    /// Frees a slot by CLOCK and returns it; the cache is full and has no free slot.
    fn evict(&mut self) -> u32 {
        assert!(!self.slots.is_empty(), "evict from an empty cache");
        // Two sweeps clear every reference bit, so a victim is found within them.
        for _ in 0..2 * self.slots.len() + 1 {
            let at = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let slot = &mut self.slots[at];
            if !slot.live {
                continue;
            }
            if slot.referenced {
                slot.referenced = false;
                continue;
            }
            slot.live = false;
            let key = slot.key;
            self.index.remove(&key);
            return u32::try_from(at).expect("invariant: cache slots fit u32");
        }
        unreachable!("a full cache with no free slot has a live slot to evict")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(byte: u8) -> Vec<u8> {
        vec![byte; BLOCK_SIZE as usize]
    }

    /// Every block of `out` written.
    fn all(out: &[u8]) -> Vec<bool> {
        vec![true; out.len() / BLOCK_SIZE as usize]
    }

    #[test]
    fn hits_need_every_block_and_invalidation_drops_them() {
        let cache = BlockCache::new(u64::from(BLOCK_SIZE) * 8);
        cache.insert(1, 0, &block(1));
        cache.insert(1, 1, &block(2));
        let mut out = vec![0; 2 * BLOCK_SIZE as usize];
        assert!(cache.get(1, 0, &all(&out), &mut out));
        assert_eq!(&out[..BLOCK_SIZE as usize], &block(1)[..]);
        assert_eq!(&out[BLOCK_SIZE as usize..], &block(2)[..]);
        // Another generation of the same chunk id shares nothing.
        assert!(!cache.get(2, 0, &[true], &mut out[..BLOCK_SIZE as usize]));
        // A range with one block missing is a miss and leaves `out` alone.
        let mut three = vec![7; 3 * BLOCK_SIZE as usize];
        assert!(!cache.get(1, 0, &all(&three), &mut three));
        assert!(three.iter().all(|b| *b == 7));
        cache.invalidate(1, 1, 5);
        assert!(!cache.get(1, 0, &all(&out), &mut out));
        assert!(cache.get(1, 0, &[true], &mut out[..BLOCK_SIZE as usize]));
        assert_eq!(cache.len(), 1);
        // A block never written is no miss: it reads as zeros.
        let mut two = vec![7; 2 * BLOCK_SIZE as usize];
        assert!(cache.get(1, 0, &[true, false], &mut two));
        assert_eq!(&two[..BLOCK_SIZE as usize], &block(1)[..]);
        assert!(two[BLOCK_SIZE as usize..].iter().all(|b| *b == 0));
    }

    #[test]
    fn stays_within_capacity_and_keeps_referenced_blocks() {
        let cache = BlockCache::new(u64::from(BLOCK_SIZE) * 4);
        for index in 0..4 {
            cache.insert(9, index, &block(index as u8));
        }
        let mut out = block(0);
        // Block 0 is hot: it survives the next inserts, which evict the cold ones.
        assert!(cache.get(9, 0, &all(&out), &mut out));
        for index in 4..7 {
            cache.insert(9, index, &block(index as u8));
        }
        assert_eq!(cache.len(), 4);
        assert!(cache.get(9, 0, &all(&out), &mut out));
        assert_eq!(out, block(0));
        for index in 4..7 {
            assert!(cache.get(9, index, &[true], &mut out));
            assert_eq!(out, block(index as u8));
        }
    }

    #[test]
    fn a_zero_capacity_cache_holds_nothing() {
        let cache = BlockCache::new(100);
        assert!(!cache.enabled());
        cache.insert(1, 0, &block(1));
        let mut out = block(0);
        assert!(!cache.get(1, 0, &all(&out), &mut out));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn invalidated_slots_are_reused_before_eviction() {
        let cache = BlockCache::new(u64::from(BLOCK_SIZE) * 2);
        cache.insert(1, 0, &block(1));
        cache.insert(1, 1, &block(2));
        cache.invalidate(1, 0, 0);
        cache.insert(1, 2, &block(3));
        let mut out = block(0);
        assert!(
            cache.get(1, 1, &all(&out), &mut out),
            "the live block was not evicted"
        );
        assert!(cache.get(1, 2, &all(&out), &mut out));
        assert_eq!(cache.len(), 2);
    }
}
