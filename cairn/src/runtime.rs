//! The async runtime of a long-lived process: `cairn dev`, `cairn node run`, the gateways.

/// Largest `--workers`: far beyond any host's cores, it only bounds threads started.
pub const WORKERS_MAX: u16 = 1024;

/// `--workers`, shared by the commands that run a long-lived process.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct RuntimeArgs {
    /// Worker threads of the process's async runtime [default: half the cores, at least 1].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=i64::from(WORKERS_MAX)))]
    pub workers: Option<u16>,
}

impl RuntimeArgs {
    /// A multi-threaded runtime of `--workers` threads, or [`default_workers`].
    pub fn build(self) -> Result<tokio::runtime::Runtime, String> {
        let workers = self.workers.map_or_else(default_workers, usize::from);
        assert!(workers >= 1, "a runtime needs a worker");
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))
    }
}

/// Worker threads when `--workers` is not given: half the cores, at least one.
///
/// A write or read is a chain of hand-offs (the connection's task, the PG host's task, the
/// disks' completion reapers). With more workers than that chain keeps busy, every hand-off
/// also wakes a parked worker on another core, which mostly finds nothing to do: a futex, an
/// inter-processor interrupt and VM exits each time. The other cores are left to the kernel's
/// disk and network work, RocksDB's threads and, in `cairn dev`, the clients. Measured on a
/// 2-core machine, `cairn dev` with 1 worker against 2, interleaved runs (2026-12-08): 4 KiB
/// random writes at queue depth 1 through the data API 2,312 vs 1,828 IOPS (medians of 4),
/// through iSCSI 2,445 and 3,274 vs 1,918 and 2,439, iSCSI reads at qd1 4,790-4,858 vs
/// 3,746-4,068; writes and reads at qd32 and 1 MiB sequential IO within the noise; S3 PUTs of
/// 4 KiB objects from 16 clients lower (3,754 vs 4,755 objects/s, medians of 3, noisy).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_default_to_half_the_cores_and_never_none() {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let workers = default_workers();
        assert!(workers >= 1);
        assert!(workers <= cores.div_ceil(2));
        let runtime = RuntimeArgs { workers: Some(1) }.build().expect("runtime");
        assert_eq!(runtime.metrics().num_workers(), 1);
    }
}
