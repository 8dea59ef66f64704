//! Load generators for Cairn's benchmarks. Each binary in `src/bin/` drives one layer; the shell
//! scripts beside this crate (`benches/*.sh`) run them against a reference (fio on the same
//! directory, or a peer system from `../shared/peers/`) in the same run and print ratios.
//!
//! Figures are never taken from timed unit tests: the machine is shared and noisy, so only
//! ratios measured side by side, as medians of several alternating rounds, are reported.

use std::time::Duration;

/// A workload shape, named as the scripts name it: `<block>-<pattern>-qd<depth>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Bytes per IO.
    pub block_bytes: u32,
    /// Random (true) or sequential offsets.
    pub random: bool,
    /// Writes (true) or reads.
    pub write: bool,
    /// IOs in flight.
    pub queue_depth: u32,
}

impl Workload {
    /// Parses names such as `4k-randread-qd32` or `1m-seqwrite-qd8`.
    pub fn parse(name: &str) -> Option<Workload> {
        let mut parts = name.split('-');
        let block_bytes = match parts.next()? {
            "4k" => 4096,
            "64k" => 64 << 10,
            "1m" => 1 << 20,
            _ => return None,
        };
        let (random, write) = match parts.next()? {
            "randread" => (true, false),
            "randwrite" => (true, true),
            "seqread" => (false, false),
            "seqwrite" => (false, true),
            _ => return None,
        };
        let queue_depth = parts.next()?.strip_prefix("qd")?.parse().ok()?;
        if parts.next().is_some() || queue_depth == 0 || queue_depth > 1024 {
            return None;
        }
        Some(Workload {
            block_bytes,
            random,
            write,
            queue_depth,
        })
    }

    /// Small-block workloads report IOPS; large-block ones MB/s.
    pub fn reports_iops(&self) -> bool {
        self.block_bytes < (1 << 20)
    }
}

/// Latency percentiles from recorded samples (sorted in place).
pub fn percentile(samples: &mut [Duration], fraction: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((samples.len() as f64 - 1.0) * fraction).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// An HTTP/1.1 agent keeping one connection alive, whose requests time out after `timeout`
/// in each phase (connecting, sending, awaiting the answer, reading it), not as a whole.
///
/// Not `timeout_global`: while any timeout covers name resolution, ureq resolves the host on
/// a new thread on every request, an IP address and a pooled connection too. A thread made
/// and torn down per IO cost the load generator more of this machine's two cores than the
/// system it measured (perf, 4 KiB writes at qd32: clone3, exit and TLB shootdowns).
pub fn agent(timeout: Duration) -> ureq::Agent {
    let timeout = Some(timeout);
    ureq::Agent::config_builder()
        .timeout_connect(timeout)
        .timeout_send_request(timeout)
        .timeout_send_body(timeout)
        .timeout_recv_response(timeout)
        .timeout_recv_body(timeout)
        .http_status_as_error(false)
        .max_idle_connections(1)
        .max_idle_connections_per_host(1)
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_script_workload_names() {
        let w = Workload::parse("4k-randwrite-qd32").expect("valid");
        assert_eq!(
            (w.block_bytes, w.random, w.write, w.queue_depth),
            (4096, true, true, 32)
        );
        let w = Workload::parse("1m-seqread-qd8").expect("valid");
        assert!(!w.random && !w.write && !w.reports_iops());
        for bad in [
            "",
            "4k",
            "4k-randread",
            "3k-randread-qd1",
            "4k-randread-qd0",
            "4k-randread-qd1-x",
        ] {
            assert!(Workload::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn percentiles() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        assert_eq!(percentile(&mut samples, 0.5), Duration::from_micros(51));
        assert_eq!(percentile(&mut samples, 0.99), Duration::from_micros(99));
        assert_eq!(percentile(&mut [], 0.99), Duration::ZERO);
    }
}
