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
//! The session is this file's own, on `cairn_gateway_iscsi`'s PDU codec, text and CHAP helpers:
//! `cairn_gateway_iscsi::initiator::Initiator` addresses LUN 0 only, and tgt keeps LUN 0 for its
//! controller, so both targets are driven by this code. One connection per session,
//! ErrorRecoveryLevel 0, no digests, ImmediateData=Yes and InitialR2T=No proposed.

use std::{
    hash::{BuildHasher, Hasher},
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs},
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
    initiator::parse_sense,
    login::{ChapSecret, LOGIN_DATA_SEGMENT_LEN_MAX, VERSION, chap, text},
    pdu::{
        BHS_LEN, DataOut, Digests, Isid, Itt, LoginRequest, LogoutReason, LogoutRequest,
        LogoutResponseCode, Lun, NopIn, NopOut, Pdu, ScsiCommand, ScsiResponse, Stage, Ttt,
        pdu_len_within,
    },
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

/// The MaxRecvDataSegmentLength we declare: the largest Data-In segment we read.
const RECV_DATA_SEGMENT_LEN_MAX: u32 = 256 * 1024;

/// PDUs that do not advance a command (NOP-In pings, asynchronous events) tolerated while
/// waiting for one answer.
const IDLE_PDUS_MAX: u32 = 1024;

/// Login requests per stage before giving up on a target that never lets us transit.
const LOGIN_STEPS_MAX: u32 = 8;

/// Largest LUN number this tool addresses: single-level peripheral addressing (SAM).
const LUN_NUMBER_MAX: u64 = 255;

const _: () = assert!(SPAN_BYTES_MAX.is_multiple_of(STAMP_BYTES));
const _: () = assert!((PREFILL_BLOCK_BYTES as u64).is_multiple_of(STAMP_BYTES));
const _: () = assert!(PREFILL_QUEUE_DEPTH <= QUEUE_DEPTH_MAX);
const _: () = assert!(RECV_DATA_SEGMENT_LEN_MAX >= LOGIN_DATA_SEGMENT_LEN_MAX);

/// SCSI status bytes (SAM-5).
const STATUS_GOOD: u8 = 0x00;
const STATUS_CHECK_CONDITION: u8 = 0x02;
const STATUS_BUSY: u8 = 0x08;
const STATUS_TASK_SET_FULL: u8 = 0x28;
/// Sense key UNIT ATTENTION.
const SENSE_UNIT_ATTENTION: u8 = 0x06;
/// CDB opcodes.
const READ_16: u8 = 0x88;
const WRITE_16: u8 = 0x8a;
const SERVICE_ACTION_IN_16: u8 = 0x9e;
const SA_READ_CAPACITY_16: u8 = 0x10;

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
            let number = lun
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= LUN_NUMBER_MAX)
                .ok_or_else(|| format!("LUN {lun:?}: expected 0..={LUN_NUMBER_MAX}"))?;
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
        // Peripheral device addressing, bus 0: the LUN number in the second byte.
        lun: Lun(lun_number << 48),
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

/// What the login negotiated that commands depend on (RFC 7143 defaults where unanswered).
#[derive(Clone, Copy, Debug)]
struct Negotiated {
    /// The target's MaxRecvDataSegmentLength: our largest data segment.
    target_max_recv_data_segment_len: u32,
    max_burst_len: u32,
    first_burst_len: u32,
    immediate_data: bool,
    initial_r2t: bool,
}

impl Default for Negotiated {
    fn default() -> Negotiated {
        Negotiated {
            target_max_recv_data_segment_len: 8192,
            max_burst_len: 262_144,
            first_burst_len: 65_536,
            immediate_data: true,
            initial_r2t: true,
        }
    }
}

/// How a command ended when it did not fail.
enum Outcome {
    Done,
    /// BUSY, TASK SET FULL or UNIT ATTENTION: send it again.
    Again,
}

/// One logged-in session over one connection, one command at a time, on one LUN.
struct Session {
    stream: TcpStream,
    /// For messages: the target's name.
    target_name: String,
    lun: Lun,
    isid: Isid,
    negotiated: Negotiated,
    block_size: u32,
    itt_next: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    logged_in: bool,
    /// Commands answered BUSY, TASK SET FULL or UNIT ATTENTION and sent again.
    busy_count: u64,
    /// Receive buffer: one PDU.
    frame: Vec<u8>,
    /// Send buffer: one encoded PDU.
    encoded: Vec<u8>,
    /// The last command's Data-In.
    data_in: Vec<u8>,
}

impl Session {
    /// Connects and logs in as session number `index` (its own initiator name and ISID),
    /// waiting up to [`TARGET_WAIT`] for a target that is not listed yet.
    fn open(target: &TargetOptions, index: u32) -> Result<Session, String> {
        let waited_from = Instant::now();
        loop {
            let mut session = Session::connect(target)?;
            match session.login(target, index) {
                Ok(()) => return Ok(session),
                // Status 0x0203: target not found.
                Err(LoginFailure::Refused(0x02, 0x03)) if waited_from.elapsed() < TARGET_WAIT => {
                    thread::sleep(Duration::from_millis(200));
                }
                Err(failure) => {
                    return Err(format!(
                        "login to {} at {}: {failure}",
                        target.target_name, target.portal
                    ));
                }
            }
        }
    }

    fn connect(target: &TargetOptions) -> Result<Session, String> {
        let address = target.portal;
        let failed = |e: std::io::Error| format!("connecting to {address}: {e}");
        let stream = TcpStream::connect_timeout(&address, IO_TIMEOUT).map_err(failed)?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(failed)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(failed)?;
        stream.set_nodelay(true).map_err(failed)?;
        Ok(Session {
            stream,
            target_name: target.target_name.clone(),
            lun: target.lun,
            isid: random_isid(),
            negotiated: Negotiated::default(),
            block_size: 0,
            itt_next: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
            max_cmd_sn: 1,
            logged_in: false,
            busy_count: 0,
            frame: Vec::with_capacity(BHS_LEN + LOGIN_DATA_SEGMENT_LEN_MAX as usize),
            encoded: Vec::new(),
            data_in: Vec::new(),
        })
    }

    /// The security stage (AuthMethod=None, or one-way CHAP with MD5), then the operational
    /// stage, into full feature phase.
    fn login(&mut self, target: &TargetOptions, index: u32) -> Result<(), LoginFailure> {
        let initiator_name = format!("iqn.2026-12.io.cairn:bench-{}-{index}", std::process::id());
        let mut identity = vec![
            ("InitiatorName".to_owned(), initiator_name),
            ("TargetName".to_owned(), target.target_name.clone()),
            ("SessionType".to_owned(), "Normal".to_owned()),
        ];
        match &target.chap {
            None => {
                identity.push(("AuthMethod".to_owned(), "None".to_owned()));
                let reply = self.login_step(Stage::Security, true, &identity)?;
                if !(reply.transit && reply.nsg == Stage::Operational) {
                    return Err(LoginFailure::Other(
                        "the target wants authentication (ISCSI_CHAP_* not set)".into(),
                    ));
                }
            }
            Some((user, secret)) => {
                identity.push(("AuthMethod".to_owned(), "CHAP".to_owned()));
                let reply = self.login_step(Stage::Security, false, &identity)?;
                if text::get(&reply.pairs, "AuthMethod") != Some("CHAP") {
                    return Err(LoginFailure::Other(
                        "the target did not agree to CHAP".into(),
                    ));
                }
                let algorithm = [("CHAP_A", chap::ALGORITHM_MD5)];
                let reply = self.login_step(Stage::Security, false, &algorithm)?;
                let identifier = text::get(&reply.pairs, "CHAP_I")
                    .and_then(text::parse_number)
                    .and_then(|number| u8::try_from(number).ok());
                let challenge = text::get(&reply.pairs, "CHAP_C")
                    .and_then(text::parse_binary)
                    .filter(|c| !c.is_empty() && c.len() <= chap::PEER_CHALLENGE_LEN_MAX);
                let (Some(identifier), Some(challenge)) = (identifier, challenge) else {
                    return Err(LoginFailure::Other(
                        "CHAP_I or CHAP_C missing or unusable".into(),
                    ));
                };
                let secret = ChapSecret::new(secret.clone());
                let response = chap::response(identifier, &secret, &challenge);
                let answer = [
                    ("CHAP_N", user.clone()),
                    ("CHAP_R", text::hex_value(&response)),
                ];
                let reply = self.login_step(Stage::Security, true, &answer)?;
                if !(reply.transit && reply.nsg == Stage::Operational) {
                    return Err(LoginFailure::Other(
                        "the target did not leave the security stage after CHAP".into(),
                    ));
                }
            }
        }
        self.operational()
    }

    fn operational(&mut self) -> Result<(), LoginFailure> {
        let mrdsl = RECV_DATA_SEGMENT_LEN_MAX.to_string();
        let burst = ((1u32 << 24) - 1).to_string();
        let proposal = [
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", mrdsl.as_str()),
            ("ImmediateData", "Yes"),
            ("InitialR2T", "No"),
            ("MaxBurstLength", burst.as_str()),
            ("FirstBurstLength", burst.as_str()),
        ];
        let mut negotiated = Negotiated::default();
        let mut pairs: &[(&str, &str)] = &proposal;
        for _ in 0..LOGIN_STEPS_MAX {
            let reply = self.login_step(Stage::Operational, true, pairs)?;
            apply_answers(&reply.pairs, &mut negotiated).map_err(LoginFailure::Other)?;
            if reply.transit && reply.nsg == Stage::FullFeature {
                negotiated.first_burst_len =
                    negotiated.first_burst_len.min(negotiated.max_burst_len);
                self.negotiated = negotiated;
                self.logged_in = true;
                return Ok(());
            }
            pairs = &[];
        }
        Err(LoginFailure::Other(
            "the target never completed the operational stage".into(),
        ))
    }

    /// One Login Request from stage `csg` and its response, text gathered over Continue PDUs.
    fn login_step<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        csg: Stage,
        transit: bool,
        pairs: &[(K, V)],
    ) -> Result<LoginReply, LoginFailure> {
        let mut data = Vec::new();
        text::encode(pairs, &mut data);
        assert!(data.len() <= LOGIN_DATA_SEGMENT_LEN_MAX as usize);
        let nsg = match csg {
            Stage::Security => Stage::Operational,
            _ => Stage::FullFeature,
        };
        let itt = self.itt();
        let mut whole = Vec::new();
        for _ in 0..LOGIN_STEPS_MAX {
            let request = LoginRequest {
                transit: transit && whole.is_empty(),
                cont: false,
                csg,
                nsg,
                version_max: VERSION,
                version_min: VERSION,
                isid: self.isid,
                tsih: 0,
                itt,
                cid: 0,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                data: std::mem::take(&mut data),
            };
            self.send(&Pdu::LoginRequest(request))
                .map_err(LoginFailure::Other)?;
            let Pdu::LoginResponse(response) = self.recv().map_err(LoginFailure::Other)? else {
                return Err(LoginFailure::Other("expected a Login Response".into()));
            };
            if !response.status.is_success() {
                return Err(LoginFailure::Refused(
                    response.status.class,
                    response.status.detail,
                ));
            }
            if response.itt != itt || response.isid != self.isid || response.csg != csg {
                return Err(LoginFailure::Other("Login Response does not match".into()));
            }
            if whole.len() + response.data.len() > text::TEXT_LEN_MAX {
                return Err(LoginFailure::Other("login text too long".into()));
            }
            whole.extend_from_slice(&response.data);
            if response.cont {
                continue;
            }
            if response.transit && response.nsg == Stage::FullFeature {
                if response.tsih == 0 {
                    return Err(LoginFailure::Other("login completed with TSIH 0".into()));
                }
                self.cmd_sn = response.exp_cmd_sn;
                self.max_cmd_sn = response.max_cmd_sn;
            }
            let pairs = text::parse(&whole).map_err(|e| LoginFailure::Other(e.to_string()))?;
            return Ok(LoginReply {
                transit: response.transit,
                nsg: response.nsg,
                pairs,
            });
        }
        Err(LoginFailure::Other(
            "login text continues without end".into(),
        ))
    }

    /// READ CAPACITY (16): the number of logical blocks and the block size in bytes.
    fn read_capacity(&mut self) -> Result<(u64, u32), String> {
        let mut cdb = [0u8; 16];
        cdb[0] = SERVICE_ACTION_IN_16;
        cdb[1] = SA_READ_CAPACITY_16;
        cdb[10..14].copy_from_slice(&32u32.to_be_bytes());
        self.execute_until_done("READ CAPACITY (16)", cdb, 32, &[])?;
        let data = &self.data_in;
        if data.len() < 12 {
            return Err(format!(
                "{}: READ CAPACITY (16) data too short",
                self.target_name
            ));
        }
        let mut last_lba = [0u8; 8];
        last_lba.copy_from_slice(&data[..8]);
        let mut block_size = [0u8; 4];
        block_size.copy_from_slice(&data[8..12]);
        let block_size = u32::from_be_bytes(block_size);
        if block_size == 0 || block_size > 1 << 20 {
            return Err(format!(
                "{}: unusable block size {block_size}",
                self.target_name
            ));
        }
        self.block_size = block_size;
        let blocks = u64::from_be_bytes(last_lba).saturating_add(1);
        Ok((blocks, block_size))
    }

    /// READ (16) of `length` bytes at byte `offset`; returns the data.
    fn read(&mut self, offset: u64, length: u64) -> Result<&[u8], String> {
        let (lba, blocks) = self.extent(offset, length);
        self.execute_until_done("READ (16)", rw16(READ_16, lba, blocks), length as u32, &[])?;
        if self.data_in.len() as u64 != length {
            return Err(format!(
                "{}: READ (16) at {offset}: {} bytes of {length}",
                self.target_name,
                self.data_in.len()
            ));
        }
        Ok(&self.data_in)
    }

    /// WRITE (16) of `data` at byte `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        let (lba, blocks) = self.extent(offset, data.len() as u64);
        self.execute_until_done("WRITE (16)", rw16(WRITE_16, lba, blocks), 0, data)
    }

    /// The LBA and block count of a byte range (block-aligned: the callers move whole 4 KiB).
    fn extent(&self, offset: u64, length: u64) -> (u64, u32) {
        let block_size = u64::from(self.block_size);
        assert!(block_size > 0, "read_capacity comes first");
        assert!(offset.is_multiple_of(block_size) && length.is_multiple_of(block_size));
        assert!(length <= u64::from(PREFILL_BLOCK_BYTES));
        (offset / block_size, (length / block_size) as u32)
    }

    /// Runs a command until it is neither BUSY, TASK SET FULL nor UNIT ATTENTION.
    fn execute_until_done(
        &mut self,
        name: &str,
        cdb: [u8; 16],
        read_len: u32,
        data_out: &[u8],
    ) -> Result<(), String> {
        for _ in 0..BUSY_ATTEMPTS_MAX {
            let outcome = self.execute(cdb, read_len, data_out).map_err(|e| {
                format!(
                    "{} at {}: {name}: {e}",
                    self.target_name,
                    self.stream_peer()
                )
            })?;
            match outcome {
                Outcome::Done => return Ok(()),
                Outcome::Again => {
                    self.busy_count += 1;
                    thread::sleep(BUSY_PAUSE);
                }
            }
        }
        Err(format!(
            "{}: {name} still refused after {BUSY_ATTEMPTS_MAX} attempts",
            self.target_name
        ))
    }

    fn stream_peer(&self) -> String {
        self.stream
            .peer_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string())
    }

    /// Sends one SCSI command with its unsolicited data, answers R2Ts and gathers Data-In into
    /// `self.data_in` until the status.
    fn execute(
        &mut self,
        cdb: [u8; 16],
        read_len: u32,
        data_out: &[u8],
    ) -> Result<Outcome, String> {
        assert!(self.logged_in);
        assert!(
            read_len == 0 || data_out.is_empty(),
            "bidirectional command"
        );
        if !serial_le(self.cmd_sn, self.max_cmd_sn) {
            return Err(format!(
                "command window closed: CmdSN {}, MaxCmdSN {}",
                self.cmd_sn, self.max_cmd_sn
            ));
        }
        let session = self.negotiated;
        let segment_len = session.target_max_recv_data_segment_len as usize;
        let write_len = data_out.len();
        let first_burst = (session.first_burst_len as usize).min(write_len);
        let immediate_len = if session.immediate_data {
            first_burst.min(segment_len)
        } else {
            0
        };
        let unsolicited_len = if session.initial_r2t {
            immediate_len
        } else {
            first_burst
        };
        let itt = self.itt();
        let command = ScsiCommand {
            fin: unsolicited_len == immediate_len,
            read: read_len > 0,
            write: write_len > 0,
            lun: self.lun,
            itt,
            expected_data_len: read_len.max(write_len as u32),
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb,
            data: data_out[..immediate_len].to_vec(),
            ..ScsiCommand::default()
        };
        self.send(&Pdu::ScsiCommand(command))?;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let unsolicited = &data_out[immediate_len..unsolicited_len];
        self.send_data_out(itt, Ttt::RESERVED, self.lun, unsolicited, immediate_len)?;
        self.data_in.clear();
        let mut data_sn_next = 0u32;
        let mut r2t_sn_next = 0u32;
        let mut idle = 0u32;
        loop {
            match self.recv()? {
                Pdu::R2t(r2t) => {
                    if r2t.itt != itt || r2t.r2t_sn != r2t_sn_next {
                        return Err("R2T for another task or out of order".into());
                    }
                    let end = u64::from(r2t.buffer_offset) + u64::from(r2t.desired_len);
                    if r2t.desired_len == 0
                        || r2t.desired_len > session.max_burst_len
                        || end > write_len as u64
                    {
                        return Err("R2T beyond the write's data or MaxBurstLength".into());
                    }
                    r2t_sn_next = r2t_sn_next.wrapping_add(1);
                    let start = r2t.buffer_offset as usize;
                    let piece = &data_out[start..end as usize];
                    self.send_data_out(itt, r2t.ttt, r2t.lun, piece, start)?;
                }
                Pdu::DataIn(pdu) => {
                    if pdu.itt != itt || pdu.data_sn != data_sn_next {
                        return Err("Data-In for another task or out of order".into());
                    }
                    if pdu.buffer_offset as usize != self.data_in.len()
                        || self.data_in.len() + pdu.data.len() > read_len as usize
                    {
                        return Err("Data-In out of order or beyond the length asked".into());
                    }
                    data_sn_next = data_sn_next.wrapping_add(1);
                    self.data_in.extend_from_slice(&pdu.data);
                    if let Some(status) = pdu.status {
                        return status_outcome(status.status, &[]);
                    }
                }
                Pdu::ScsiResponse(response) => {
                    if response.itt != itt {
                        return Err("SCSI Response for another task".into());
                    }
                    if response.response != ScsiResponse::COMMAND_COMPLETED {
                        return Err(format!(
                            "iSCSI response {:#04x}: the target failed the command",
                            response.response
                        ));
                    }
                    return status_outcome(response.status, &response.sense);
                }
                other => {
                    idle += 1;
                    if idle > IDLE_PDUS_MAX {
                        return Err(format!("{idle} PDUs without an answer"));
                    }
                    self.idle_pdu(other)?;
                }
            }
        }
    }

    /// Sends `data` (at `offset` in the command's data) as Data-Out PDUs of at most the target's
    /// MaxRecvDataSegmentLength.
    fn send_data_out(
        &mut self,
        itt: Itt,
        ttt: Ttt,
        lun: Lun,
        data: &[u8],
        offset: usize,
    ) -> Result<(), String> {
        let segment_len = self.negotiated.target_max_recv_data_segment_len as usize;
        assert!(segment_len > 0);
        let count = data.len().div_ceil(segment_len);
        for (index, piece) in data.chunks(segment_len).enumerate() {
            let pdu = DataOut {
                fin: index + 1 == count,
                lun,
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn: index as u32,
                buffer_offset: (offset + index * segment_len) as u32,
                data: piece.to_vec(),
            };
            self.send(&Pdu::DataOut(pdu))?;
        }
        Ok(())
    }

    /// A PDU that answers nothing we wait for: pings are answered, SCSI asynchronous events
    /// ignored, everything else fails the command.
    fn idle_pdu(&mut self, pdu: Pdu) -> Result<(), String> {
        match pdu {
            Pdu::NopIn(nop_in) => self.answer_ping(nop_in),
            Pdu::AsyncMessage(message) if message.event == 0 => Ok(()),
            Pdu::AsyncMessage(message) => Err(format!(
                "asynchronous event {} from the target",
                message.event
            )),
            Pdu::Reject(reject) => Err(format!(
                "the target rejected a PDU, reason {:#04x}",
                reject.reason
            )),
            other => Err(format!("unexpected PDU (opcode {:#04x})", other.opcode())),
        }
    }

    fn answer_ping(&mut self, nop_in: NopIn) -> Result<(), String> {
        if nop_in.ttt == Ttt::RESERVED {
            return Ok(());
        }
        let mut data = nop_in.data;
        data.truncate(self.negotiated.target_max_recv_data_segment_len as usize);
        let nop_out = NopOut {
            immediate: true,
            lun: nop_in.lun,
            itt: Itt::RESERVED,
            ttt: nop_in.ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data,
        };
        self.send(&Pdu::NopOut(nop_out))
    }

    /// Logs out (closing the session) and closes the connection.
    fn logout(mut self) -> Result<(), String> {
        let itt = self.itt();
        let request = LogoutRequest {
            immediate: true,
            reason: LogoutReason::CloseSession,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        let target_name = self.target_name.clone();
        let failed = |e: String| format!("logout from {target_name}: {e}");
        self.send(&Pdu::LogoutRequest(request)).map_err(failed)?;
        for _ in 0..IDLE_PDUS_MAX {
            match self.recv().map_err(failed)? {
                Pdu::LogoutResponse(response) if response.itt == itt => {
                    let _ = self.stream.shutdown(Shutdown::Both);
                    return match response.response {
                        LogoutResponseCode::Closed => Ok(()),
                        other => Err(failed(format!("answered {other:?}"))),
                    };
                }
                other => self.idle_pdu(other).map_err(failed)?,
            }
        }
        Err(failed("no Logout Response".into()))
    }

    fn itt(&mut self) -> Itt {
        let itt = self.itt_next;
        self.itt_next = self.itt_next.wrapping_add(1);
        if self.itt_next == Itt::RESERVED.0 {
            self.itt_next = 1;
        }
        Itt(itt)
    }

    fn send(&mut self, pdu: &Pdu) -> Result<(), String> {
        self.encoded.clear();
        pdu.encode(Digests::NONE, &mut self.encoded);
        self.stream
            .write_all(&self.encoded)
            .map_err(|e| format!("sending: {e}"))
    }

    /// Reads one PDU, refusing data segments beyond what we declared.
    fn recv(&mut self) -> Result<Pdu, String> {
        let max_data = if self.logged_in {
            RECV_DATA_SEGMENT_LEN_MAX
        } else {
            LOGIN_DATA_SEGMENT_LEN_MAX
        };
        let mut bhs = [0u8; BHS_LEN];
        self.stream
            .read_exact(&mut bhs)
            .map_err(|e| format!("receiving: {e}"))?;
        let len = pdu_len_within(&bhs, Digests::NONE, max_data).map_err(|e| e.to_string())?;
        self.frame.clear();
        self.frame.extend_from_slice(&bhs);
        self.frame.resize(len, 0);
        self.stream
            .read_exact(&mut self.frame[BHS_LEN..])
            .map_err(|e| format!("receiving: {e}"))?;
        let pdu = Pdu::decode(&self.frame, Digests::NONE, max_data).map_err(|e| e.to_string())?;
        self.track(&pdu);
        Ok(pdu)
    }

    /// Follows StatSN and the command window from a target PDU.
    fn track(&mut self, pdu: &Pdu) {
        let (stat_sn, window) = match pdu {
            Pdu::ScsiResponse(p) => (Some(p.stat_sn), Some((p.exp_cmd_sn, p.max_cmd_sn))),
            Pdu::DataIn(p) => (
                p.status.map(|status| status.stat_sn),
                Some((p.exp_cmd_sn, p.max_cmd_sn)),
            ),
            Pdu::NopIn(p) => (
                (p.itt != Itt::RESERVED).then_some(p.stat_sn),
                Some((p.exp_cmd_sn, p.max_cmd_sn)),
            ),
            Pdu::LogoutResponse(p) => (Some(p.stat_sn), Some((p.exp_cmd_sn, p.max_cmd_sn))),
            Pdu::Reject(p) => (Some(p.stat_sn), Some((p.exp_cmd_sn, p.max_cmd_sn))),
            Pdu::AsyncMessage(p) => (Some(p.stat_sn), Some((p.exp_cmd_sn, p.max_cmd_sn))),
            Pdu::R2t(p) => (None, Some((p.exp_cmd_sn, p.max_cmd_sn))),
            Pdu::LoginResponse(p) => (Some(p.stat_sn), None),
            _ => (None, None),
        };
        if let Some(stat_sn) = stat_sn {
            self.exp_stat_sn = stat_sn.wrapping_add(1);
        }
        // RFC 7143 (CmdSN and ExpCmdSN): a MaxCmdSN below ExpCmdSN - 1 is not a window.
        if let Some((exp_cmd_sn, max_cmd_sn)) = window
            && self.logged_in
            && serial_le(exp_cmd_sn.wrapping_sub(1), max_cmd_sn)
        {
            self.max_cmd_sn = max_cmd_sn;
        }
    }
}

/// A login response's outcome, its text gathered.
struct LoginReply {
    transit: bool,
    nsg: Stage,
    pairs: text::Pairs,
}

/// Why a login failed: a refusal (Status-Class, Status-Detail) may be worth waiting out.
enum LoginFailure {
    Refused(u8, u8),
    Other(String),
}

impl std::fmt::Display for LoginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginFailure::Refused(0x02, 0x01) => write!(f, "refused: authentication failure"),
            LoginFailure::Refused(0x02, 0x03) => write!(f, "refused: target not found"),
            LoginFailure::Refused(class, detail) => {
                write!(f, "refused: status {class:#04x}/{detail:#04x}")
            }
            LoginFailure::Other(message) => f.write_str(message),
        }
    }
}

/// Takes the target's answers to our operational keys.
fn apply_answers(pairs: &[(String, String)], negotiated: &mut Negotiated) -> Result<(), String> {
    let length = |value: &str| {
        text::parse_number(value)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (512..(1 << 24)).contains(n))
            .ok_or_else(|| format!("length answer {value:?} is not in 512..=16777215"))
    };
    let boolean = |value: &str| {
        text::parse_bool(value).ok_or_else(|| format!("boolean answer {value:?} is not Yes or No"))
    };
    for (key, value) in pairs {
        match key.as_str() {
            "HeaderDigest" | "DataDigest" if value != "None" => {
                return Err("the target insists on digests".into());
            }
            "MaxRecvDataSegmentLength" => {
                negotiated.target_max_recv_data_segment_len = length(value)?;
            }
            "MaxBurstLength" => negotiated.max_burst_len = length(value)?,
            "FirstBurstLength" => negotiated.first_burst_len = length(value)?,
            "ImmediateData" => negotiated.immediate_data = boolean(value)?,
            "InitialR2T" => negotiated.initial_r2t = boolean(value)?,
            _ => {}
        }
    }
    Ok(())
}

/// What a command's SCSI status means for the load: done, send again, or fail.
fn status_outcome(status: u8, sense: &[u8]) -> Result<Outcome, String> {
    match status {
        STATUS_GOOD => Ok(Outcome::Done),
        STATUS_BUSY | STATUS_TASK_SET_FULL => Ok(Outcome::Again),
        STATUS_CHECK_CONDITION => {
            let (sense_key, asc, ascq) = parse_sense(sense);
            if sense_key == SENSE_UNIT_ATTENTION {
                return Ok(Outcome::Again);
            }
            Err(format!(
                "CHECK CONDITION: sense key {sense_key:#x}, ASC {asc:#04x}, ASCQ {ascq:#04x}"
            ))
        }
        other => Err(format!("SCSI status {other:#04x}")),
    }
}

/// A READ (16) or WRITE (16) CDB.
fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

/// `a <= b` in 32-bit serial number arithmetic (RFC 1982).
fn serial_le(a: u32, b: u32) -> bool {
    a == b || (b.wrapping_sub(a) as i32) > 0
}

/// An ISID of the "random" type (RFC 7143 section 11.12.5, T = 0b10): every session its own,
/// so sessions never reinstate each other.
fn random_isid() -> Isid {
    // RandomState::new() draws fresh keys per call: its hash of nothing is a random number.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let bits = hasher.finish().to_be_bytes();
    Isid([
        0x80 | (bits[0] & 0x3f),
        bits[1],
        bits[2],
        bits[3],
        bits[4],
        bits[5],
    ])
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
    fn statuses_map_to_outcomes() {
        assert!(matches!(
            status_outcome(STATUS_GOOD, &[]),
            Ok(Outcome::Done)
        ));
        assert!(matches!(
            status_outcome(STATUS_BUSY, &[]),
            Ok(Outcome::Again)
        ));
        let unit_attention = [0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0];
        assert!(matches!(
            status_outcome(STATUS_CHECK_CONDITION, &unit_attention),
            Ok(Outcome::Again)
        ));
        let medium_error = [0x70, 0, 0x03, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x11, 0];
        assert!(status_outcome(STATUS_CHECK_CONDITION, &medium_error).is_err());
    }
}
