//! The data-out memory budget of a server: how many bytes of write data (and other data-out,
//! such as parameter lists) the commands of all its sessions may hold at once.
//!
//! A command's data-out buffer is allocated whole, up to [`DATA_OUT_LEN_MAX`] bytes, before
//! the R2Ts that fill it go out, and sessions may each have a full command window of such
//! commands. Without a bound shared by the server, a few initiators could pin gigabytes. So
//! a command takes a [`Grant`] of its buffer's size from the [`DataOutBudget`] first: at
//! once when the budget has room, otherwise it waits (sending no R2T) in the order commands
//! asked, and the grant returns to the budget when it is dropped, whether the command
//! completed, was aborted, failed or its connection went away.
//!
//! No deadlock: every command's buffer fits the budget ([`DATA_OUT_BUDGET_BYTES_MIN`]), a
//! waiting command holds no grant, and a granted command needs nothing but its initiator's
//! data to finish, which the session's reader keeps reading while others wait. The bytes an
//! initiator sends without being asked (immediate data and unsolicited Data-Out, at most
//! FirstBurstLength per command) cannot be refused: a waiting command stages them in a buffer
//! of at most that size, outside the budget; the command window bounds how many commands do.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::transfer::DATA_OUT_LEN_MAX;

/// The budget of a server unless configured: 256 MiB, 32 of the largest data-out buffers, or
/// 64 sessions with one largest WRITE each.
pub const DATA_OUT_BUDGET_BYTES_DEFAULT: u64 = 256 << 20;

/// The smallest budget: one command's largest data-out buffer (COMPARE AND WRITE's two
/// halves of the largest transfer), so that every command can be granted.
pub const DATA_OUT_BUDGET_BYTES_MIN: u64 = DATA_OUT_LEN_MAX as u64;

/// The largest budget: what a tokio semaphore counts, one permit per byte.
pub const DATA_OUT_BUDGET_BYTES_MAX: u64 = Semaphore::MAX_PERMITS as u64;

const _: () = assert!(DATA_OUT_BUDGET_BYTES_MIN <= DATA_OUT_BUDGET_BYTES_DEFAULT);
const _: () = assert!(DATA_OUT_BUDGET_BYTES_DEFAULT <= DATA_OUT_BUDGET_BYTES_MAX);

/// How the data-out budget of a server is used, as of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataOutBudgetStats {
    /// The budget: the most bytes granted at once.
    pub capacity_bytes: u64,
    /// Bytes granted now.
    pub in_use_bytes: u64,
    /// The most bytes granted at any time since the server started.
    pub peak_bytes: u64,
    /// Commands that found the budget short and waited for their grant.
    pub waits: u64,
}

/// The counters behind [`DataOutBudgetStats`], shared by the budget and its grants.
#[derive(Debug)]
struct Gauge {
    capacity_bytes: u64,
    in_use_bytes: AtomicU64,
    peak_bytes: AtomicU64,
    waits: AtomicU64,
}

/// The budget of one server, shared by its sessions.
#[derive(Debug)]
pub(crate) struct DataOutBudget {
    /// One permit per byte. Never closed, so acquiring only ever waits.
    semaphore: Arc<Semaphore>,
    gauge: Arc<Gauge>,
}

/// Bytes of the budget held by one command's data-out buffer; returned when dropped.
#[derive(Debug)]
pub(crate) struct Grant {
    /// Dropped after [`Grant::drop`] has taken the bytes off the gauge, so the gauge never
    /// shows more than the semaphore has handed out.
    _permit: OwnedSemaphorePermit,
    len_bytes: u32,
    gauge: Arc<Gauge>,
}

impl Grant {
    fn new(permit: OwnedSemaphorePermit, len_bytes: u32, gauge: Arc<Gauge>) -> Grant {
        assert_eq!(permit.num_permits(), len_bytes as usize);
        let len = u64::from(len_bytes);
        let in_use = gauge.in_use_bytes.fetch_add(len, Ordering::AcqRel) + len;
        assert!(in_use <= gauge.capacity_bytes, "the semaphore over-granted");
        gauge.peak_bytes.fetch_max(in_use, Ordering::AcqRel);
        Grant {
            _permit: permit,
            len_bytes,
            gauge,
        }
    }

    /// The bytes granted.
    pub(crate) fn len_bytes(&self) -> u32 {
        self.len_bytes
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let len = u64::from(self.len_bytes);
        let before = self.gauge.in_use_bytes.fetch_sub(len, Ordering::AcqRel);
        assert!(before >= len, "a grant returned more than was granted");
    }
}

impl DataOutBudget {
    /// A budget of `capacity_bytes`, within [`DATA_OUT_BUDGET_BYTES_MIN`] and
    /// [`DATA_OUT_BUDGET_BYTES_MAX`] (a configuration error otherwise, so it panics).
    pub(crate) fn new(capacity_bytes: u64) -> DataOutBudget {
        assert!(
            (DATA_OUT_BUDGET_BYTES_MIN..=DATA_OUT_BUDGET_BYTES_MAX).contains(&capacity_bytes),
            "data-out budget of {capacity_bytes} bytes: it must hold the largest command \
             ({DATA_OUT_BUDGET_BYTES_MIN} bytes) and stay within {DATA_OUT_BUDGET_BYTES_MAX}"
        );
        let permits = usize::try_from(capacity_bytes).expect("invariant: at most MAX_PERMITS");
        DataOutBudget {
            semaphore: Arc::new(Semaphore::new(permits)),
            gauge: Arc::new(Gauge {
                capacity_bytes,
                in_use_bytes: AtomicU64::new(0),
                peak_bytes: AtomicU64::new(0),
                waits: AtomicU64::new(0),
            }),
        }
    }

    /// `len_bytes` of the budget now, if it has them and no earlier command waits for them
    /// (the semaphore hands released bytes to waiters first).
    pub(crate) fn try_grant(&self, len_bytes: u32) -> Option<Grant> {
        self.check_len(len_bytes);
        let permit = Arc::clone(&self.semaphore)
            .try_acquire_many_owned(len_bytes)
            .ok()?;
        Some(Grant::new(permit, len_bytes, Arc::clone(&self.gauge)))
    }

    /// Counts a command that found the budget short and waits for its grant.
    pub(crate) fn count_wait(&self) {
        self.gauge.waits.fetch_add(1, Ordering::AcqRel);
    }

    /// `len_bytes` of the budget once they are free, after the commands that asked before
    /// (first come, first served, so a large command is not starved by small ones).
    /// Dropping the future gives up the place in line and any bytes set aside.
    pub(crate) fn grant(&self, len_bytes: u32) -> impl Future<Output = Grant> + Send + 'static {
        self.check_len(len_bytes);
        let semaphore = Arc::clone(&self.semaphore);
        let gauge = Arc::clone(&self.gauge);
        async move {
            let permit = semaphore
                .acquire_many_owned(len_bytes)
                .await
                .expect("invariant: the budget's semaphore is never closed");
            Grant::new(permit, len_bytes, gauge)
        }
    }

    /// How the budget is used now.
    pub(crate) fn stats(&self) -> DataOutBudgetStats {
        DataOutBudgetStats {
            capacity_bytes: self.gauge.capacity_bytes,
            in_use_bytes: self.gauge.in_use_bytes.load(Ordering::Acquire),
            peak_bytes: self.gauge.peak_bytes.load(Ordering::Acquire),
            waits: self.gauge.waits.load(Ordering::Acquire),
        }
    }

    fn check_len(&self, len_bytes: u32) {
        // The transfer layer caps buffers at DATA_OUT_LEN_MAX, which the budget holds.
        assert!(len_bytes > 0);
        assert!(u64::from(len_bytes) <= self.gauge.capacity_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grants add up to the capacity and no further; a waiter is served once enough bytes
    /// come back, and the gauge follows every step.
    #[test]
    fn grants_stay_within_the_capacity() {
        let budget = DataOutBudget::new(DATA_OUT_BUDGET_BYTES_MIN);
        let half = DATA_OUT_LEN_MAX / 2;
        let first = budget.try_grant(half).expect("room for half");
        let second = budget.try_grant(half).expect("room for the other half");
        assert!(budget.try_grant(1).is_none());
        let stats = budget.stats();
        assert_eq!(stats.in_use_bytes, DATA_OUT_BUDGET_BYTES_MIN);
        assert_eq!(stats.peak_bytes, DATA_OUT_BUDGET_BYTES_MIN);

        let mut waiting = std::pin::pin!(budget.grant(half + 1));
        assert!(futures_poll_once(waiting.as_mut()).is_none());
        drop(first);
        // Half is free but the waiter needs one byte more; a newcomer may not jump the line.
        assert!(futures_poll_once(waiting.as_mut()).is_none());
        assert!(budget.try_grant(1).is_none());
        drop(second);
        let third = futures_poll_once(waiting.as_mut()).expect("granted once bytes came back");
        assert_eq!(third.len_bytes(), half + 1);
        let stats = budget.stats();
        assert_eq!(stats.in_use_bytes, u64::from(half + 1));
        drop(third);
        assert_eq!(budget.stats().in_use_bytes, 0);
        assert_eq!(budget.stats().peak_bytes, DATA_OUT_BUDGET_BYTES_MIN);
    }

    /// A waiter that gives up returns the bytes set aside for it.
    #[test]
    fn a_dropped_waiter_gives_back_its_share() {
        let budget = DataOutBudget::new(DATA_OUT_BUDGET_BYTES_MIN);
        let all = budget.try_grant(DATA_OUT_LEN_MAX).expect("all of it");
        let mut waiting = Box::pin(budget.grant(DATA_OUT_LEN_MAX));
        assert!(futures_poll_once(waiting.as_mut()).is_none());
        drop(all);
        drop(waiting);
        assert!(budget.try_grant(DATA_OUT_LEN_MAX).is_some());
    }

    #[test]
    #[should_panic(expected = "must hold the largest command")]
    fn a_budget_below_one_command_is_refused() {
        let _ = DataOutBudget::new(DATA_OUT_BUDGET_BYTES_MIN - 1);
    }

    /// Polls a future once with a no-op waker.
    fn futures_poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match future.poll(&mut context) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }
}
