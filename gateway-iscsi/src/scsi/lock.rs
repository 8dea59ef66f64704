//! The per-LUN lock that makes COMPARE AND WRITE atomic with respect to other writes.
//!
//! COMPARE AND WRITE must not let another write land between its read and its write (SBC-4
//! 5.3). Writes take the lock shared, so they still run in parallel with each other;
//! COMPARE AND WRITE takes it exclusive. Reads do not take it: a read racing a COMPARE AND
//! WRITE sees the old or the new data, as with any racing write.
//!
//! Waiters are served in arrival order, so a stream of writes cannot starve a COMPARE AND
//! WRITE (VMware's ATS heartbeat depends on it completing). The crate has no async runtime
//! dependency, so this is a small FIFO read-write lock over a std mutex and wakers.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
};

/// Commands waiting for the lock at once. The iSCSI layer bounds commands in flight per
/// session (its CmdSN window); this bounds them across sessions. Past it, commands get BUSY.
pub const LOCK_WAITERS_MAX: usize = 1024;

/// How a command holds the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Plain writes: many at once.
    Shared,
    /// COMPARE AND WRITE: alone.
    Exclusive,
}

/// The lock is full: [`LOCK_WAITERS_MAX`] commands already wait.
#[derive(Debug, PartialEq, Eq)]
pub struct LockBusy;

/// A FIFO read-write lock whose guards may be held across awaits.
#[derive(Default)]
pub struct WriteLock {
    state: Mutex<LockState>,
}

#[derive(Default)]
struct LockState {
    shared_holders: u32,
    exclusive_held: bool,
    waiters: VecDeque<Waiter>,
    /// Waiters granted the lock whose futures have not yet observed it.
    granted: Vec<u64>,
    id_next: u64,
}

struct Waiter {
    id: u64,
    mode: LockMode,
    waker: Waker,
}

impl LockState {
    fn compatible(&self, mode: LockMode) -> bool {
        match mode {
            LockMode::Shared => !self.exclusive_held,
            LockMode::Exclusive => !self.exclusive_held && self.shared_holders == 0,
        }
    }

    fn take(&mut self, mode: LockMode) {
        assert!(self.compatible(mode));
        match mode {
            LockMode::Shared => self.shared_holders += 1,
            LockMode::Exclusive => self.exclusive_held = true,
        }
    }

    fn release(&mut self, mode: LockMode) {
        match mode {
            LockMode::Shared => {
                assert!(self.shared_holders > 0);
                assert!(!self.exclusive_held);
                self.shared_holders -= 1;
            }
            LockMode::Exclusive => {
                assert!(self.exclusive_held);
                assert_eq!(self.shared_holders, 0);
                self.exclusive_held = false;
            }
        }
        self.grant_waiters();
    }

    /// Grants the lock to waiters at the head of the queue while they are compatible, in
    /// order: stopping at the first incompatible one is what makes the lock fair.
    fn grant_waiters(&mut self) {
        while let Some(waiter) = self.waiters.front() {
            if !self.compatible(waiter.mode) {
                break;
            }
            let mode = waiter.mode;
            self.take(mode);
            let waiter = self.waiters.pop_front().expect("invariant: front exists");
            self.granted.push(waiter.id);
            waiter.waker.wake();
        }
    }
}

impl WriteLock {
    /// Waits for the lock in `mode`, or fails at once when too many commands wait.
    pub fn acquire(&self, mode: LockMode) -> Acquire<'_> {
        Acquire {
            lock: self,
            mode,
            waiting: None,
        }
    }

    fn state(&self) -> MutexGuard<'_, LockState> {
        // Nothing panics while the state is half-updated, so a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The future of [`WriteLock::acquire`].
pub struct Acquire<'a> {
    lock: &'a WriteLock,
    mode: LockMode,
    /// The waiter id once queued.
    waiting: Option<u64>,
}

impl<'a> Future for Acquire<'a> {
    type Output = Result<LockGuard<'a>, LockBusy>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let lock = self.lock;
        let mode = self.mode;
        let mut state = lock.state();
        match self.waiting {
            None => {
                if state.waiters.is_empty() && state.compatible(mode) {
                    state.take(mode);
                    return Poll::Ready(Ok(LockGuard { lock, mode }));
                }
                if state.waiters.len() >= LOCK_WAITERS_MAX {
                    return Poll::Ready(Err(LockBusy));
                }
                let id = state.id_next;
                state.id_next += 1;
                state.waiters.push_back(Waiter {
                    id,
                    mode,
                    waker: context.waker().clone(),
                });
                drop(state);
                self.waiting = Some(id);
                Poll::Pending
            }
            Some(id) => {
                if let Some(index) = state.granted.iter().position(|&granted| granted == id) {
                    state.granted.swap_remove(index);
                    drop(state);
                    self.waiting = None;
                    return Poll::Ready(Ok(LockGuard { lock, mode }));
                }
                let waiter = state.waiters.iter_mut().find(|waiter| waiter.id == id);
                let waiter = waiter.expect("invariant: a waiting future is queued or granted");
                waiter.waker.clone_from(context.waker());
                Poll::Pending
            }
        }
    }
}

impl Drop for Acquire<'_> {
    /// A future dropped while waiting (the command was aborted) leaves the queue; if it was
    /// granted the lock in the meantime it passes the lock on.
    fn drop(&mut self) {
        let Some(id) = self.waiting else { return };
        let mut state = self.lock.state();
        if let Some(index) = state.granted.iter().position(|&granted| granted == id) {
            state.granted.swap_remove(index);
            state.release(self.mode);
        } else {
            state.waiters.retain(|waiter| waiter.id != id);
            state.grant_waiters();
        }
    }
}

/// Holds the lock until dropped.
pub struct LockGuard<'a> {
    lock: &'a WriteLock,
    mode: LockMode,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.lock.state().release(self.mode);
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, task::Wake};

    use super::*;

    struct CountWaker(Mutex<u32>);

    impl Wake for CountWaker {
        fn wake(self: Arc<Self>) {
            *self.0.lock().expect("not poisoned") += 1;
        }
    }

    fn poll<F: Future + Unpin>(future: &mut F, waker: &Waker) -> Poll<F::Output> {
        Pin::new(future).poll(&mut Context::from_waker(waker))
    }

    /// Shared holders run together; an exclusive waiter waits for them and blocks later
    /// shared requests (FIFO), which run once it is done.
    #[test]
    fn exclusive_waits_for_shared_and_is_fair() {
        let lock = WriteLock::default();
        let counter = Arc::new(CountWaker(Mutex::new(0)));
        let waker = Waker::from(counter.clone());
        let mut first = lock.acquire(LockMode::Shared);
        let Poll::Ready(Ok(shared_1)) = poll(&mut first, &waker) else {
            panic!("free lock")
        };
        let mut second = lock.acquire(LockMode::Shared);
        let Poll::Ready(Ok(shared_2)) = poll(&mut second, &waker) else {
            panic!("shared")
        };
        let mut exclusive = lock.acquire(LockMode::Exclusive);
        assert!(poll(&mut exclusive, &waker).is_pending());
        let mut late = lock.acquire(LockMode::Shared);
        assert!(
            poll(&mut late, &waker).is_pending(),
            "queued behind the exclusive waiter"
        );
        drop(shared_1);
        assert!(poll(&mut exclusive, &waker).is_pending());
        drop(shared_2);
        let Poll::Ready(Ok(exclusive_guard)) = poll(&mut exclusive, &waker) else {
            panic!("granted after the last shared holder left")
        };
        assert!(poll(&mut late, &waker).is_pending());
        drop(exclusive_guard);
        assert!(matches!(poll(&mut late, &waker), Poll::Ready(Ok(_))));
        assert!(*counter.0.lock().expect("not poisoned") >= 2);
    }

    /// A waiter dropped after being granted passes the lock on instead of leaking it.
    #[test]
    fn dropped_granted_waiter_releases() {
        let lock = WriteLock::default();
        let waker = Waker::noop();
        let mut holder = lock.acquire(LockMode::Exclusive);
        let Poll::Ready(Ok(guard)) = poll(&mut holder, waker) else {
            panic!("free lock")
        };
        let mut abandoned = lock.acquire(LockMode::Exclusive);
        assert!(poll(&mut abandoned, waker).is_pending());
        let mut next = lock.acquire(LockMode::Exclusive);
        assert!(poll(&mut next, waker).is_pending());
        drop(guard);
        drop(abandoned);
        assert!(matches!(poll(&mut next, waker), Poll::Ready(Ok(_))));
    }
}
