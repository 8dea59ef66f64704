//! Block range locks for one chunk.
//!
//! A write must be the only IO on its blocks: two overlapping writes could land in either order
//! while their checksums are recorded in the other, and a read overlapping a write could see new
//! data with an old checksum. Reads share; writes (and read-modify-write) exclude. Waiters are
//! woken on every release and re-check; the set of holders is bounded by the IO in flight.

use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Shared,
    Exclusive,
}

#[derive(Clone, Copy, Debug)]
struct Held {
    id: u64,
    first: u32,
    last: u32,
    mode: Mode,
}

impl Held {
    fn conflicts(&self, first: u32, last: u32, mode: Mode) -> bool {
        let overlap = self.first <= last && first <= self.last;
        overlap && (self.mode == Mode::Exclusive || mode == Mode::Exclusive)
    }
}

#[derive(Default)]
struct Table {
    next_id: u64,
    held: Vec<Held>,
}

#[derive(Default)]
pub(crate) struct RangeLocks {
    table: Mutex<Table>,
    released: Notify,
}

impl RangeLocks {
    /// Waits until blocks `first..=last` can be held in `mode`, then holds them until the guard
    /// drops.
    pub(crate) async fn lock(&self, first: u32, last: u32, mode: Mode) -> RangeGuard<'_> {
        assert!(first <= last, "empty range {first}..={last}");
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check, so a release between check and wait is not missed.
            released.as_mut().enable();
            {
                let mut table = self
                    .table
                    .lock()
                    .expect("invariant: lock table not poisoned");
                if !table
                    .held
                    .iter()
                    .any(|held| held.conflicts(first, last, mode))
                {
                    table.next_id += 1;
                    let id = table.next_id;
                    table.held.push(Held {
                        id,
                        first,
                        last,
                        mode,
                    });
                    return RangeGuard { locks: self, id };
                }
            }
            released.await;
        }
    }
}

pub(crate) struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    id: u64,
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut table = self
            .locks
            .table
            .lock()
            .expect("invariant: lock table not poisoned");
        let position = table.held.iter().position(|held| held.id == self.id);
        table
            .held
            .swap_remove(position.expect("invariant: a guard's entry exists"));
        drop(table);
        self.locks.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shared_overlap_exclusive_waits() {
        let locks = RangeLocks::default();
        let a = locks.lock(0, 3, Mode::Shared).await;
        let _b = locks.lock(2, 5, Mode::Shared).await;
        let _c = locks.lock(6, 9, Mode::Exclusive).await;
        let waiting = locks.lock(3, 6, Mode::Exclusive);
        tokio::pin!(waiting);
        let poll = futures_poll(waiting.as_mut());
        assert!(
            poll.is_none(),
            "exclusive lock overlapping holders must wait"
        );
        drop(a);
    }

    fn futures_poll<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match future.poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
