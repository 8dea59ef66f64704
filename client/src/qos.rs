//! Per-volume QoS: a token bucket per limit (IOPS, bytes per second), pure (the caller passes
//! the time and sleeps for what it is told), so it is tested without a clock.
//!
//! An IO is admitted at once and charged to the bucket, which may go into debt; the caller then
//! waits until the debt is paid. A burst of up to one second's worth passes without waiting
//! (initiators issue bursts; a VM booting reads in bursts), a steady stream is held to the rate,
//! and an IO larger than a whole second's bandwidth still goes (it waits longer after).

use std::time::{Duration, Instant};

/// One limit: `rate` units per second, up to `burst` saved up.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Units available; negative while the last IOs are being paid for.
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` units per second with one second of burst.
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        assert!(rate > 0, "a limit of zero would stop all IO");
        let rate = rate as f64;
        TokenBucket {
            rate,
            burst: rate,
            tokens: rate,
            at: now,
        }
    }

    /// Charges `units` at `now`; returns how long the caller must wait before going on.
    pub fn charge(&mut self, units: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= units as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A volume's limits: IOPS, and bytes per second if set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QosLimits {
    /// IOs per second (each command counts one, whatever its size).
    pub iops: u64,
    /// Bytes per second, reads and writes together; `None` for no byte limit.
    pub bytes_per_s: Option<u64>,
}

/// The buckets of one volume.
#[derive(Clone, Debug)]
pub struct Qos {
    iops: TokenBucket,
    bytes: Option<TokenBucket>,
}

impl Qos {
    /// Full buckets for `limits`.
    pub fn new(limits: QosLimits, now: Instant) -> Qos {
        Qos {
            iops: TokenBucket::new(limits.iops, now),
            bytes: limits.bytes_per_s.map(|rate| TokenBucket::new(rate, now)),
        }
    }

    /// Charges one IO of `bytes` at `now`; returns how long it must wait.
    pub fn admit(&mut self, bytes: u64, now: Instant) -> Duration {
        let iops = self.iops.charge(1, now);
        let bytes = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.charge(bytes, now));
        iops.max(bytes)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let start = Instant::now();
        let mut qos = Qos::new(
            QosLimits {
                iops: 800,
                bytes_per_s: None,
            },
            start,
        );
        for _ in 0..800 {
            assert_eq!(
                qos.admit(4096, start),
                Duration::ZERO,
                "one second of burst"
            );
        }
        let wait = qos.admit(4096, start);
        assert!(
            (wait.as_secs_f64() - 1.0 / 800.0).abs() < 1e-9,
            "the 801st waits one interval: {wait:?}"
        );
        // Half a second later 400 IOs' worth has come back, less the one in debt.
        let later = start + Duration::from_millis(500);
        for _ in 0..399 {
            assert_eq!(qos.admit(4096, later), Duration::ZERO);
        }
        assert!(qos.admit(4096, later) > Duration::ZERO);
    }

    #[test]
    fn bytes_limit_large_ios() {
        let start = Instant::now();
        let mut qos = Qos::new(
            QosLimits {
                iops: 10_000,
                bytes_per_s: Some(100 << 20),
            },
            start,
        );
        assert_eq!(qos.admit(100 << 20, start), Duration::ZERO);
        let wait = qos.admit(50 << 20, start);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
    }

    proptest! {
        /// Over any run of IOs each waiting what it is told, the rate is never exceeded by more
        /// than the burst: n IOs take at least (n - rate) / rate seconds.
        #[test]
        fn a_steady_stream_keeps_to_the_rate(rate in 1u64..20_000, ios in 1u64..50_000) {
            let start = Instant::now();
            let mut bucket = TokenBucket::new(rate, start);
            let mut now = start;
            for _ in 0..ios {
                now += bucket.charge(1, now);
            }
            let elapsed = now.duration_since(start).as_secs_f64();
            let floor = ios.saturating_sub(rate) as f64 / rate as f64;
            prop_assert!(elapsed + 1e-6 >= floor, "{ios} IOs in {elapsed} s at {rate}/s");
            prop_assert!(elapsed <= floor + 1.0 / rate as f64 + 1e-6, "never slower than the rate");
        }
    }
}
