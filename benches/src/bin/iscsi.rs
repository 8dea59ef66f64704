//! iSCSI load generator for `benches/iscsi.sh`: drives one LUN of an iSCSI target (Cairn's
//! gateway inside `cairn dev`, or the tgt peer) with READ (16) and WRITE (16) commands.
//!
//! ```text
//! cairn-bench-iscsi prefill PORTAL TARGET[/LUN] SPAN_MIB
//! cairn-bench-iscsi run PORTAL TARGET[/LUN] WORKLOAD SECONDS SPAN_MIB [RAMP_SECONDS]
//! ```
//!
//! PORTAL is `host:port`; TARGET the target's iSCSI name, with the LUN after a '/' (default 0;
//! iSCSI names never hold a '/'): Cairn serves each volume on LUN 0, tgt its disk on LUN 1.
//! One-way CHAP is used when `ISCSI_CHAP_USER` and `ISCSI_CHAP_SECRET` are set (as `cairn dev`
//! writes them to `DIR/endpoints.env`); otherwise the login offers AuthMethod=None.
//!
//! `prefill` writes the first SPAN_MIB in 1 MiB commands, 8 sessions deep, so reads hit written
//! blocks. `run` drives WORKLOAD (e.g. `4k-randwrite-qd32`) over the first SPAN_MIB for SECONDS
//! after RAMP_SECONDS (default 1) of warm-up and prints one line, as cairn-bench-block does:
//! `iops=<n> mbps=<n> p50_us=<n> p99_us=<n> busy=<n>`.
//!
//! Queue depth N is N sessions (one TCP connection each, its own initiator name and a random
//! ISID), logged in before the clock starts, each with one command in flight: the shape of N
//! jobs at depth 1, and the same for every target driven. Random offsets are block-aligned and
//! uniform over the span; sequential offsets advance one block per command, shared by the
//! sessions, and wrap. Every 4 KiB written carries its own byte offset in its first 8 bytes and
//! reads check it, so a read answered from the wrong place fails the run instead of counting
//! as fast. A command answered BUSY or TASK SET FULL (the target is electing or full) is sent
//! again after a short pause and counted in `busy`; its latency runs from the first attempt.
//! A UNIT ATTENTION is retried likewise (tgt reports one on a new nexus). Every other failure
//! ends the run with a message and a non-zero exit.
//!
//! Each session is the gateway's blocking initiator (`cairn_gateway_iscsi::initiator`) set to
//! the LUN named (tgt keeps LUN 0 for its controller), so both targets are driven by the same
//! code: one connection per session, ErrorRecoveryLevel 0, no digests, ImmediateData=Yes and
//! InitialR2T=No proposed.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    process::ExitCode,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use cairn_benches::{Workload, percentile};
use cairn_gateway_iscsi::{
    initiator::{Initiator, InitiatorError, lun_from_number},
    pdu::Lun,
};

/// Sessions (hence connections and commands in flight) of one run: the script's deepest queue
/// is 32; 256 leaves room for experiments while bounding threads and sockets opened.
const QUEUE_DEPTH_MAX: u32 = 256;

/// Largest span a run covers: the benchmark's default is 1 GiB; 64 GiB bounds prefill time.
const SPAN_BYTES_MAX: u64 = 64 << 30;

/// Deadline of every socket read and write: a command stalled this long means the target is
/// stuck, and the run fails instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a login may keep finding no target: `cairn dev` lists a new volume's target within
/// a second (its refresh interval); 15 s covers a loaded machine.
const TARGET_WAIT: Duration = Duration::from_secs(15);

/// Attempts of one command answered BUSY, TASK SET FULL or UNIT ATTENTION before the run gives
/// up: at [`BUSY_PAUSE`] apart, about 10 s of a target refusing work.
const BUSY_ATTEMPTS_MAX: u32 = 10_000;

/// Pause before sending a refused command again: short enough not to idle a busy queue long.
const BUSY_PAUSE: Duration = Duration::from_millis(1);

/// Latency samples kept per run (4 bytes each: 16 MiB): about 2 minutes at 30,000 IOPS. Past it
/// IOs are still counted, and percentiles come from the first samples.
const SAMPLES_MAX: usize = 1 << 22;

/// Prefill command size and sessions: 1 MiB at 8 deep, the sequential write shape.
const PREFILL_BLOCK_BYTES: u32 = 1 << 20;
const PREFILL_QUEUE_DEPTH: u32 = 8;

/// Every block written and checked is stamped per 4 KiB with its offset.
const STAMP_BYTES: u64 = 4096;

const _: () = assert!(SPAN_BYTES_MAX.is_multiple_of(STAMP_BYTES));
const _: () = assert!((PREFILL_BLOCK_BYTES as u64).is_multiple_of(STAMP_BYTES));
const _: () = assert!(PREFILL_QUEUE_DEPTH <= QUEUE_DEPTH_MAX);

/// SCSI status bytes (SAM-5) a target refuses a command with for now.
const STATUS_BUSY: u8 = 0x08;
const STATUS_TASK_SET_FULL: u8 = 0x28;
/// Sense key UNIT ATTENTION.
const SENSE_UNIT_ATTENTION: u8 = 0x06;
/// Login Response status 0x0203 (RFC 7143): initiator error, target not found.
const LOGIN_CLASS_INITIATOR_ERROR: u8 = 0x02;
const LOGIN_DETAIL_NOT_FOUND: u8 = 0x03;

fn usage() -> ExitCode {
    eprintln!("usage: cairn-bench-iscsi prefill PORTAL TARGET[/LUN] SPAN_MIB");
    eprintln!(
        "       cairn-bench-iscsi run PORTAL TARGET[/LUN] WORKLOAD SECONDS SPAN_MIB [RAMP_SECONDS]"
    );
    eprintln!("(CHAP when ISCSI_CHAP_USER and ISCSI_CHAP_SECRET are set)");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args[..] {
        ["prefill", portal, target, span_mib] => {
            match (mib(span_mib), target_options(portal, target)) {
                (Some(span_bytes), Ok(target)) => prefill(&target, span_bytes),
                (None, _) => return usage(),
                (_, Err(message)) => Err(message),
            }
        }
        [
            "run",
            portal,
            target,
            workload,
            seconds,
            span_mib,
            ref ramp @ ..,
        ] if ramp.len() <= 1 => {
            let ramp = ramp.first().copied().unwrap_or("1");
            match (
                run_options(workload, seconds, span_mib, ramp),
                target_options(portal, target),
            ) {
                (Some(options), Ok(target)) => run(&target, &options),
                (None, _) => return usage(),
                (_, Err(message)) => Err(message),
            }
        }
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cairn-bench-iscsi: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A size in MiB from the command line, as bytes: positive and at most [`SPAN_BYTES_MAX`].
fn mib(text: &str) -> Option<u64> {
    let size_mib: u64 = text.parse().ok()?;
    let size_bytes = size_mib.checked_mul(1 << 20)?;
    (size_bytes > 0 && size_bytes <= SPAN_BYTES_MAX).then_some(size_bytes)
}

/// Seconds from the command line: finite, not negative, at most a day.
fn seconds(text: &str) -> Option<Duration> {
    let value: f64 = text.parse().ok()?;
    (value.is_finite() && (0.0..=86_400.0).contains(&value)).then(|| Duration::from_secs_f64(value))
}

/// Where the LUN is and how to log in to it.
struct TargetOptions {
    portal: SocketAddr,
    target_name: String,
    lun: Lun,
    chap: Option<(String, Vec<u8>)>,
}

fn target_options(portal: &str, target: &str) -> Result<TargetOptions, String> {
    let portal = portal
        .to_socket_addrs()
        .map_err(|e| format!("portal {portal}: {e}"))?
        .next()
        .ok_or_else(|| format!("portal {portal}: no address"))?;
    let (target_name, lun_number) = match target.split_once('/') {
        Some((name, lun)) => {
            // Single-level peripheral device addressing (SAM) reaches LUNs 0 to 255.
            let number = lun
                .parse::<u8>()
                .map_err(|_| format!("LUN {lun:?}: expected 0..=255"))?;
            (name, number)
        }
        None => (target, 0),
    };
    if target_name.is_empty() || target_name.len() > 223 {
        return Err(format!("target name {target_name:?}: 1 to 223 bytes"));
    }
    let user = std::env::var("ISCSI_CHAP_USER").unwrap_or_default();
    let secret = std::env::var("ISCSI_CHAP_SECRET").unwrap_or_default();
    let chap = match (user.is_empty(), secret.is_empty()) {
        (true, true) => None,
        (false, false) => Some((user, secret.into_bytes())),
        _ => return Err("set both ISCSI_CHAP_USER and ISCSI_CHAP_SECRET, or neither".into()),
    };
    Ok(TargetOptions {
        portal,
        target_name: target_name.to_string(),
        lun: lun_from_number(lun_number),
        chap,
    })
}

struct RunOptions {
    workload: Workload,
    measure: Duration,
    ramp: Duration,
    span_bytes: u64,
}

fn run_options(workload: &str, measure: &str, span_mib: &str, ramp: &str) -> Option<RunOptions> {
    let workload = Workload::parse(workload)?;
    let span_bytes = mib(span_mib)?;
    let measure = seconds(measure).filter(|s| !s.is_zero())?;
    if workload.queue_depth > QUEUE_DEPTH_MAX {
        eprintln!("queue depth {} > {QUEUE_DEPTH_MAX}", workload.queue_depth);
        return None;
    }
    if !span_bytes.is_multiple_of(u64::from(workload.block_bytes)) {
        eprintln!("the span must be a multiple of the block size");
        return None;
    }
    Some(RunOptions {
        workload,
        measure,
        ramp: seconds(ramp)?,
        span_bytes,
    })
}

/// Opens `count` sessions to the target, each checked to hold `span_bytes`.
fn open_sessions(
    target: &TargetOptions,
    count: u32,
    span_bytes: u64,
) -> Result<Vec<Session>, String> {
    (0..count)
        .map(|index| {
            let mut session = Session::open(target, index)?;
            let (blocks, block_size) = session.read_capacity()?;
            let capacity = blocks.saturating_mul(u64::from(block_size));
            if capacity < span_bytes {
                return Err(format!(
                    "{}: the LUN holds {capacity} bytes, fewer than the span of {span_bytes}",
                    target.target_name
                ));
            }
            if !STAMP_BYTES.is_multiple_of(u64::from(block_size)) {
                return Err(format!(
                    "block size {block_size} does not divide {STAMP_BYTES}"
                ));
            }
            // `busy` counts the run's commands: tgt answers a new session's first command with
            // a UNIT ATTENTION, which READ CAPACITY has taken.
            session.busy_count = 0;
            Ok(session)
        })
        .collect()
}

fn close_sessions(sessions: Vec<Session>) -> Result<(), String> {
    sessions.into_iter().try_for_each(Session::logout)
}

/// Writes every byte of the span, in 1 MiB commands, [`PREFILL_QUEUE_DEPTH`] sessions deep.
fn prefill(target: &TargetOptions, span_bytes: u64) -> Result<(), String> {
    let block = u64::from(PREFILL_BLOCK_BYTES);
    let blocks = span_bytes.div_ceil(block);
    let sessions = open_sessions(target, PREFILL_QUEUE_DEPTH, span_bytes)?;
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let sessions = thread::scope(|scope| {
        let workers: Vec<_> = sessions
            .into_iter()
            .map(|mut session| {
                let next = &next;
                scope.spawn(move || {
                    let mut payload = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= blocks {
                            return Ok::<Session, String>(session);
                        }
                        let offset = index * block;
                        stamp(&mut payload, offset, block.min(span_bytes - offset));
                        session.write(offset, &payload)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("invariant: prefill threads do not panic"))
            .collect::<Result<Vec<Session>, String>>()
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    close_sessions(sessions)?;
    eprintln!(
        "prefilled {} MiB of {} in {elapsed:.1} s ({:.0} MB/s)",
        span_bytes >> 20,
        target.target_name,
        span_bytes as f64 / 1e6 / elapsed
    );
    Ok(())
}

/// The shared position of a sequential stream and the seed of random ones.
struct Offsets {
    next_slot: AtomicU64,
    slots: u64,
    block_bytes: u64,
    random: bool,
}

impl Offsets {
    fn next(&self, rng: &mut u64) -> u64 {
        let slot = if self.random {
            // xorshift64: cheap, good enough to spread IO over the span.
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng % self.slots
        } else {
            self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots
        };
        slot * self.block_bytes
    }
}

/// What the threads of a run counted.
struct Tally {
    ops: u64,
    busy_count: u64,
    latencies_us: Vec<u32>,
}

fn run(target: &TargetOptions, options: &RunOptions) -> Result<(), String> {
    let workload = options.workload;
    let block_bytes = u64::from(workload.block_bytes);
    assert!(block_bytes.is_multiple_of(STAMP_BYTES));
    let offsets = Offsets {
        next_slot: AtomicU64::new(0),
        slots: options.span_bytes / block_bytes,
        block_bytes,
        random: workload.random,
    };
    assert!(offsets.slots > 0);
    // Every session logs in before the clock starts: logins are not IO.
    let sessions = open_sessions(target, workload.queue_depth, options.span_bytes)?;
    let tally = Mutex::new(Tally {
        ops: 0,
        busy_count: 0,
        latencies_us: Vec::new(),
    });
    let samples_per_thread = SAMPLES_MAX / workload.queue_depth as usize;
    let start = Instant::now();
    let measure_from = start + options.ramp;
    let end = measure_from + options.measure;
    let sessions = thread::scope(|scope| {
        let threads: Vec<_> = sessions
            .into_iter()
            .zip(0u64..)
            .map(|(mut session, thread_index)| {
                let (offsets, tally) = (&offsets, &tally);
                scope.spawn(move || {
                    let mut rng = 0x2545_f491_4f6c_dd1d ^ (thread_index << 32 | 1);
                    let mut payload = Vec::new();
                    let mut ops = 0;
                    let mut latencies_us = Vec::new();
                    loop {
                        let offset = offsets.next(&mut rng);
                        let issued = Instant::now();
                        if issued >= end {
                            break;
                        }
                        if workload.write {
                            stamp(&mut payload, offset, block_bytes);
                            session.write(offset, &payload)?;
                        } else {
                            let data = session.read(offset, block_bytes)?;
                            check_stamps(data, offset, block_bytes)
                                .map_err(|e| format!("read at {offset}: {e}"))?;
                        }
                        let done = Instant::now();
                        if issued >= measure_from && done <= end {
                            ops += 1;
                            if latencies_us.len() < samples_per_thread {
                                let us = (done - issued).as_micros();
                                latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                            }
                        }
                    }
                    let mut tally = tally
                        .lock()
                        .expect("invariant: no thread panics holding it");
                    tally.ops += ops;
                    tally.busy_count += session.busy_count;
                    tally.latencies_us.extend_from_slice(&latencies_us);
                    Ok::<Session, String>(session)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("invariant: IO threads do not panic"))
            .collect::<Result<Vec<Session>, String>>()
    })?;
    close_sessions(sessions)?;
    let tally = tally.into_inner().expect("invariant: no thread panicked");
    print_result(&workload, options.measure, tally);
    Ok(())
}

fn print_result(workload: &Workload, measure: Duration, tally: Tally) {
    let iops = tally.ops as f64 / measure.as_secs_f64();
    let mbps = iops * f64::from(workload.block_bytes) / 1e6;
    let mut latencies: Vec<Duration> = tally
        .latencies_us
        .iter()
        .map(|&us| Duration::from_micros(u64::from(us)))
        .collect();
    let p50 = percentile(&mut latencies, 0.50).as_micros();
    let p99 = percentile(&mut latencies, 0.99).as_micros();
    let busy = tally.busy_count;
    println!("iops={iops:.0} mbps={mbps:.1} p50_us={p50} p99_us={p99} busy={busy}");
}

/// Fills `buffer` with `length` bytes for `offset`: each 4 KiB block starts with its own offset,
/// the rest is a pattern that changes with it.
fn stamp(buffer: &mut Vec<u8>, offset: u64, length: u64) {
    assert!(offset.is_multiple_of(STAMP_BYTES));
    assert!(length.is_multiple_of(STAMP_BYTES));
    // Only the stamps change between writes of one size: no need to clear the rest again.
    if buffer.len() as u64 != length {
        buffer.clear();
        buffer.resize(length as usize, 0);
    }
    for (index, block) in buffer.chunks_exact_mut(STAMP_BYTES as usize).enumerate() {
        let at = offset + index as u64 * STAMP_BYTES;
        block[..8].copy_from_slice(&at.to_le_bytes());
        block[8..16].fill((at >> 12) as u8);
    }
}

/// Checks that `data` is `length` bytes whose 4 KiB blocks carry the offsets they were read from.
fn check_stamps(data: &[u8], offset: u64, length: u64) -> Result<(), String> {
    if data.len() as u64 != length {
        return Err(format!("{} bytes answered for {length}", data.len()));
    }
    for (index, block) in data.chunks_exact(STAMP_BYTES as usize).enumerate() {
        let at = offset + index as u64 * STAMP_BYTES;
        let mut found = [0u8; 8];
        found.copy_from_slice(&block[..8]);
        let found = u64::from_le_bytes(found);
        if found != at {
            return Err(format!("block at {at} holds the stamp of {found}"));
        }
    }
    Ok(())
}

/// One logged-in session over one connection, one command at a time, on one LUN: the
/// gateway's [`Initiator`] with this tool's rule for refused commands.
struct Session {
    initiator: Initiator,
    /// For messages: the target's name and portal.
    target_name: String,
    portal: SocketAddr,
    /// Commands answered BUSY, TASK SET FULL or UNIT ATTENTION and sent again.
    busy_count: u64,
    /// The last read's data, one buffer reused by every read.
    data_in: Vec<u8>,
}

impl Session {
    /// Connects and logs in as session number `index` (its own initiator name; the initiator
    /// draws a random ISID per connection), waiting up to [`TARGET_WAIT`] for a target that
    /// is not listed yet.
    fn open(target: &TargetOptions, index: u32) -> Result<Session, String> {
        let initiator_name = format!("iqn.2026-12.io.cairn:bench-{}-{index}", std::process::id());
        let chap = target
            .chap
            .as_ref()
            .map(|(user, secret)| (user.as_str(), secret.as_slice()));
        let waited_from = Instant::now();
        loop {
            let mut initiator =
                Initiator::connect(target.portal, IO_TIMEOUT).map_err(|e| e.to_string())?;
            initiator.set_lun(target.lun);
            match initiator.login(&initiator_name, &target.target_name, chap) {
                Ok(()) => {
                    return Ok(Session {
                        initiator,
                        target_name: target.target_name.clone(),
                        portal: target.portal,
                        busy_count: 0,
                        data_in: Vec::new(),
                    });
                }
                Err(InitiatorError::LoginRefused {
                    class: LOGIN_CLASS_INITIATOR_ERROR,
                    detail: LOGIN_DETAIL_NOT_FOUND,
                    ..
                }) if waited_from.elapsed() < TARGET_WAIT => {
                    thread::sleep(Duration::from_millis(200));
                }
                Err(error) => {
                    return Err(format!(
                        "login to {} at {}: {error}",
                        target.target_name, target.portal
                    ));
                }
            }
        }
    }

    /// READ CAPACITY (16): the number of logical blocks and the block size in bytes.
    fn read_capacity(&mut self) -> Result<(u64, u32), String> {
        let result = until_done(&mut self.initiator, &mut self.busy_count, |initiator| {
            initiator.read_capacity()
        });
        result.map_err(|e| self.failed("READ CAPACITY (16)", e))
    }

    /// READ (16) of `length` bytes at byte `offset`; returns the data.
    fn read(&mut self, offset: u64, length: u64) -> Result<&[u8], String> {
        let (lba, blocks) = self.extent(offset, length);
        let data_in = &mut self.data_in;
        let result = until_done(&mut self.initiator, &mut self.busy_count, |initiator| {
            initiator.read_into(lba, blocks, data_in)
        });
        result.map_err(|e| self.failed(&format!("READ (16) at {offset}"), e))?;
        Ok(&self.data_in)
    }

    /// WRITE (16) of `data` at byte `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        let (lba, _) = self.extent(offset, data.len() as u64);
        let result = until_done(&mut self.initiator, &mut self.busy_count, |initiator| {
            initiator.write(lba, data)
        });
        result.map_err(|e| self.failed(&format!("WRITE (16) at {offset}"), e))
    }

    /// The LBA and block count of a byte range (block-aligned: the callers move whole 4 KiB).
    fn extent(&self, offset: u64, length: u64) -> (u64, u32) {
        let block_size = u64::from(
            self.initiator
                .block_size()
                .expect("invariant: read_capacity comes first"),
        );
        assert!(offset.is_multiple_of(block_size) && length.is_multiple_of(block_size));
        assert!(length <= u64::from(PREFILL_BLOCK_BYTES));
        (offset / block_size, (length / block_size) as u32)
    }

    fn failed(&self, name: &str, error: Failure) -> String {
        format!("{} at {}: {name}: {error}", self.target_name, self.portal)
    }

    /// Logs out (closing the session) and closes the connection.
    fn logout(self) -> Result<(), String> {
        let target_name = self.target_name;
        self.initiator
            .logout()
            .map_err(|e| format!("logout from {target_name}: {e}"))
    }
}

/// Why a command did not complete.
#[derive(Debug)]
enum Failure {
    /// The initiator's error: the target failed the command or the connection.
    Initiator(InitiatorError),
    /// Refused [`BUSY_ATTEMPTS_MAX`] times in a row.
    StillRefused,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Initiator(error) => error.fmt(f),
            Failure::StillRefused => write!(f, "still refused after {BUSY_ATTEMPTS_MAX} attempts"),
        }
    }
}

/// Runs `command` until the target answers it with something else than BUSY, TASK SET FULL
/// or UNIT ATTENTION (each counted in `busy_count`, then sent again after [`BUSY_PAUSE`]).
fn until_done<T>(
    initiator: &mut Initiator,
    busy_count: &mut u64,
    mut command: impl FnMut(&mut Initiator) -> Result<T, InitiatorError>,
) -> Result<T, Failure> {
    for _ in 0..BUSY_ATTEMPTS_MAX {
        match command(initiator) {
            Ok(value) => return Ok(value),
            Err(error) if is_refusal(&error) => {
                *busy_count += 1;
                thread::sleep(BUSY_PAUSE);
            }
            Err(error) => return Err(Failure::Initiator(error)),
        }
    }
    Err(Failure::StillRefused)
}

/// Whether the target refused a command for now (busy, full, or reporting a unit attention
/// such as tgt's on a new nexus): the command is worth sending again.
fn is_refusal(error: &InitiatorError) -> bool {
    match error {
        InitiatorError::Status { status } => {
            matches!(*status, STATUS_BUSY | STATUS_TASK_SET_FULL)
        }
        InitiatorError::CheckCondition { sense_key, .. } => *sense_key == SENSE_UNIT_ATTENTION,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_catch_misplaced_blocks() {
        let mut buffer = Vec::new();
        stamp(&mut buffer, 8192, 8192);
        assert!(check_stamps(&buffer, 8192, 8192).is_ok());
        assert!(check_stamps(&buffer, 4096, 8192).is_err());
        assert!(check_stamps(&buffer[..4096], 8192, 8192).is_err());
    }

    #[test]
    fn targets_carry_their_lun() {
        let target =
            target_options("127.0.0.1:3260", "iqn.2024-01.local.peer:tgt/1").expect("valid");
        assert_eq!(target.target_name, "iqn.2024-01.local.peer:tgt");
        assert_eq!(target.lun, Lun(1 << 48));
        let target = target_options("127.0.0.1:3260", "iqn.2026-12.io.cairn:bench").expect("valid");
        assert_eq!(target.lun, Lun(0));
        assert!(target_options("127.0.0.1:3260", "iqn.x/256").is_err());
        assert!(target_options("127.0.0.1:3260", "/1").is_err());
    }

    #[test]
    fn refusals_are_sent_again_and_failures_are_not() {
        assert!(is_refusal(&InitiatorError::Status {
            status: STATUS_BUSY
        }));
        assert!(is_refusal(&InitiatorError::Status {
            status: STATUS_TASK_SET_FULL
        }));
        let unit_attention = InitiatorError::CheckCondition {
            sense_key: SENSE_UNIT_ATTENTION,
            asc: 0x29,
            ascq: 0,
        };
        assert!(is_refusal(&unit_attention));
        let medium_error = InitiatorError::CheckCondition {
            sense_key: 0x03,
            asc: 0x11,
            ascq: 0,
        };
        assert!(!is_refusal(&medium_error));
        assert!(!is_refusal(&InitiatorError::Status { status: 0x18 }));
        assert!(!is_refusal(&InitiatorError::Closed));
    }
}
