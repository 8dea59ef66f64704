//! Block IO load generator for `benches/block.sh`: drives a `cairn dev` volume over its HTTP data
//! routes (`PUT`/`GET /v1/volumes/NAME/data`).
//!
//! ```text
//! cairn-bench-block create VOLUME SIZE_MIB
//! cairn-bench-block prefill VOLUME SPAN_MIB
//! cairn-bench-block run VOLUME WORKLOAD SECONDS SPAN_MIB [RAMP_SECONDS]
//! ```
//!
//! The admin API's address and token come from the environment as `cairn dev` writes them to
//! `DIR/endpoints.env`: `ADMIN_URL` and `ADMIN_TOKEN`.
//!
//! `create` creates the volume in the `default` pool at tier `ultra` (an existing volume at least
//! that large is kept). `prefill` writes the first SPAN_MIB of it in 1 MiB requests, 8 in flight,
//! so reads hit written blocks. `run` drives WORKLOAD (e.g. `4k-randwrite-qd32`) over the first
//! SPAN_MIB for SECONDS after RAMP_SECONDS (default 1) of warm-up and prints one line:
//! `iops=<n> mbps=<n> p50_us=<n> p99_us=<n> busy=<n>`.
//!
//! Queue depth N is N threads, each with its own keep-alive connection and one request in
//! flight, as fio keeps N IOs in flight. Random offsets are block-aligned and uniform over the
//! span; sequential offsets advance one block per request, shared by the threads, and wrap.
//! Every 4 KiB block written carries its own offset in its first 8 bytes and reads check it,
//! so a read answered from the wrong place fails the run instead of counting as fast.
//! A request answered 503 (the cluster is busy or electing) is retried after a short pause and
//! counted in `busy`; its latency runs from the first attempt. Any other failure ends the run.

use std::{
    io::Read,
    process::ExitCode,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use cairn_benches::{Workload, percentile};
use serde_json::{Value, json};

/// Threads (hence connections and requests in flight) of one run: the script's deepest queue is
/// 32; 256 leaves room for experiments while bounding threads and sockets opened.
const QUEUE_DEPTH_MAX: u32 = 256;

/// Largest span a run covers: the benchmark's default is 1 GiB; 64 GiB bounds prefill time and
/// the volume a typo could ask for.
const SPAN_BYTES_MAX: u64 = 64 << 30;

/// One request's deadline: a request stalled this long means the cluster is stuck, and the run
/// fails instead of hanging.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts of one request answered 503 before the run gives up: at [`BUSY_PAUSE`] apart, about
/// 10 s of a cluster refusing work, far longer than an election.
const BUSY_ATTEMPTS_MAX: u32 = 10_000;

/// Pause before retrying a request answered 503: short enough not to idle a busy queue long.
const BUSY_PAUSE: Duration = Duration::from_millis(1);

/// Latency samples kept per run (4 bytes each: 16 MiB): about 2 minutes at 30,000 IOPS. Past it
/// IOs are still counted, and percentiles come from the first samples.
const SAMPLES_MAX: usize = 1 << 22;

/// Prefill request size and requests in flight: 1 MiB at 8 deep, the sequential write shape.
const PREFILL_BLOCK_BYTES: u32 = 1 << 20;
const PREFILL_QUEUE_DEPTH: u32 = 8;

/// Every block written and checked is stamped per 4 KiB with its offset.
const STAMP_BYTES: u64 = 4096;

const _: () = assert!(SPAN_BYTES_MAX.is_multiple_of(STAMP_BYTES));
const _: () = assert!((PREFILL_BLOCK_BYTES as u64).is_multiple_of(STAMP_BYTES));
const _: () = assert!(PREFILL_QUEUE_DEPTH <= QUEUE_DEPTH_MAX);

fn usage() -> ExitCode {
    eprintln!("usage: cairn-bench-block create VOLUME SIZE_MIB");
    eprintln!("       cairn-bench-block prefill VOLUME SPAN_MIB");
    eprintln!("       cairn-bench-block run VOLUME WORKLOAD SECONDS SPAN_MIB [RAMP_SECONDS]");
    eprintln!("(ADMIN_URL and ADMIN_TOKEN from the environment: source cairn dev's endpoints.env)");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let endpoint = match Endpoint::from_env() {
        Ok(endpoint) => endpoint,
        Err(message) => {
            eprintln!("cairn-bench-block: {message}");
            return usage();
        }
    };
    let result = match args[..] {
        ["create", volume, size_mib] => match mib(size_mib) {
            Some(size_bytes) => create(&endpoint, volume, size_bytes),
            None => return usage(),
        },
        ["prefill", volume, span_mib] => match mib(span_mib) {
            Some(span_bytes) => prefill(&endpoint, volume, span_bytes),
            None => return usage(),
        },
        ["run", volume, workload, seconds, span_mib, ref ramp @ ..] => {
            let ramp = ramp.first().copied().unwrap_or("1");
            match run_options(workload, seconds, span_mib, ramp) {
                Some(options) => run(&endpoint, volume, &options),
                None => return usage(),
            }
        }
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cairn-bench-block: {message}");
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

/// Where the data routes are and the token they take.
struct Endpoint {
    base_url: String,
    authorization: String,
}

impl Endpoint {
    fn from_env() -> Result<Endpoint, String> {
        let base_url = std::env::var("ADMIN_URL").map_err(|_| "ADMIN_URL is not set")?;
        let token = std::env::var("ADMIN_TOKEN").map_err(|_| "ADMIN_TOKEN is not set")?;
        Ok(Endpoint {
            base_url: base_url.trim_end_matches('/').to_string(),
            authorization: format!("Bearer {}", token.trim()),
        })
    }

    /// An agent of one connection: each IO thread has its own, kept alive between requests.
    fn agent(&self) -> ureq::Agent {
        cairn_benches::agent(REQUEST_TIMEOUT)
    }
}

/// The message of an error answer: its JSON `error` field, or its first bytes.
fn error_text(status: u16, body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = match parsed.as_ref().and_then(|v| v["error"].as_str()) {
        Some(message) => message.to_string(),
        None => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    };
    format!("HTTP {status}: {message}")
}

/// Creates the volume, or keeps an existing one that is large enough.
fn create(endpoint: &Endpoint, volume: &str, size_bytes: u64) -> Result<(), String> {
    let agent = endpoint.agent();
    let url = format!("{}/v1/volumes", endpoint.base_url);
    let request = json!({ "name": volume, "pool": "default", "size_bytes": size_bytes,
        "tier": "ultra" });
    let mut attempts = 0;
    let (status, body) = loop {
        let mut response = agent
            .post(&url)
            .header("Authorization", &endpoint.authorization)
            .send_json(&request)
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status().as_u16();
        let body = read_body(&mut response, 1 << 16).map_err(|e| format!("{url}: {e}"))?;
        attempts += 1;
        if status != 503 || attempts >= BUSY_ATTEMPTS_MAX {
            break (status, body);
        }
        thread::sleep(BUSY_PAUSE);
    };
    match status {
        201 => {
            eprintln!("created volume {volume} ({size_bytes} bytes, tier ultra)");
            Ok(())
        }
        409 => check_existing(endpoint, &agent, volume, size_bytes),
        _ => Err(format!(
            "create volume {volume}: {}",
            error_text(status, &body)
        )),
    }
}

fn check_existing(
    endpoint: &Endpoint,
    agent: &ureq::Agent,
    volume: &str,
    size_bytes: u64,
) -> Result<(), String> {
    let url = format!("{}/v1/volumes/{volume}", endpoint.base_url);
    let mut response = agent
        .get(&url)
        .header("Authorization", &endpoint.authorization)
        .call()
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let body = read_body(&mut response, 1 << 16).map_err(|e| format!("{url}: {e}"))?;
    if status != 200 {
        return Err(format!("volume {volume}: {}", error_text(status, &body)));
    }
    let view: Value = serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
    let existing = view["size_bytes"].as_u64().unwrap_or_default();
    if existing < size_bytes {
        return Err(format!(
            "volume {volume} exists with {existing} bytes, fewer than {size_bytes}"
        ));
    }
    eprintln!("volume {volume} exists ({existing} bytes)");
    Ok(())
}

/// Reads a whole answer body, at most `limit` bytes.
fn read_body(
    response: &mut ureq::http::Response<ureq::Body>,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    response
        .body_mut()
        .with_config()
        .limit(limit)
        .reader()
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    Ok(body)
}

/// Writes every byte of the span, in 1 MiB requests, [`PREFILL_QUEUE_DEPTH`] in flight.
fn prefill(endpoint: &Endpoint, volume: &str, span_bytes: u64) -> Result<(), String> {
    let block = u64::from(PREFILL_BLOCK_BYTES);
    let blocks = span_bytes.div_ceil(block);
    let next = AtomicU64::new(0);
    let started = Instant::now();
    thread::scope(|scope| {
        let workers: Vec<_> = (0..PREFILL_QUEUE_DEPTH)
            .map(|_| {
                scope.spawn(|| {
                    let mut io = Io::new(endpoint, volume, PREFILL_BLOCK_BYTES);
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= blocks {
                            return Ok::<(), String>(());
                        }
                        let offset = index * block;
                        let length = block.min(span_bytes - offset);
                        io.write(offset, length)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("invariant: prefill threads do not panic"))
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "prefilled {} MiB of {volume} in {elapsed:.1} s ({:.0} MB/s)",
        span_bytes >> 20,
        span_bytes as f64 / 1e6 / elapsed
    );
    Ok(())
}

/// One thread's connection and buffers.
struct Io<'a> {
    agent: ureq::Agent,
    authorization: &'a str,
    data_url: String,
    /// What the next write sends.
    payload: Vec<u8>,
    /// What the last request was answered.
    answer: Vec<u8>,
    /// Requests answered 503 and sent again.
    busy_count: u64,
}

impl<'a> Io<'a> {
    fn new(endpoint: &'a Endpoint, volume: &str, block_bytes: u32) -> Io<'a> {
        Io {
            agent: endpoint.agent(),
            authorization: &endpoint.authorization,
            data_url: format!("{}/v1/volumes/{volume}/data", endpoint.base_url),
            payload: Vec::with_capacity(block_bytes as usize),
            answer: Vec::with_capacity(block_bytes as usize),
            busy_count: 0,
        }
    }

    /// Writes `length` stamped bytes at `offset`.
    fn write(&mut self, offset: u64, length: u64) -> Result<(), String> {
        stamp(&mut self.payload, offset, length);
        let url = format!("{}?offset={offset}", self.data_url);
        let (agent, authorization, payload) = (&self.agent, self.authorization, &self.payload);
        let send = || {
            agent
                .put(&url)
                .header("Authorization", authorization)
                .send(&payload[..])
        };
        self.busy_count += send_until_served(&url, &mut self.answer, ANSWER_BYTES_MAX, send)?;
        Ok(())
    }

    /// Reads `length` bytes at `offset` and checks their stamps.
    fn read(&mut self, offset: u64, length: u64) -> Result<(), String> {
        let url = format!("{}?offset={offset}&length={length}", self.data_url);
        let (agent, authorization) = (&self.agent, self.authorization);
        let send = || {
            agent
                .get(&url)
                .header("Authorization", authorization)
                .call()
        };
        let limit = length + ANSWER_BYTES_MAX;
        self.busy_count += send_until_served(&url, &mut self.answer, limit, send)?;
        check_stamps(&self.answer, offset, length).map_err(|e| format!("{url}: {e}"))
    }
}

/// Largest answer read besides read data: error messages are short JSON.
const ANSWER_BYTES_MAX: u64 = 64 << 10;

/// Sends a request until it is answered other than 503, reading the answer into `answer` (at
/// most `limit` bytes). Returns how many 503 answers came first.
fn send_until_served(
    url: &str,
    answer: &mut Vec<u8>,
    limit: u64,
    send: impl Fn() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<u64, String> {
    for busy_count in 0..u64::from(BUSY_ATTEMPTS_MAX) {
        let mut response = send().map_err(|e| format!("{url}: {e}"))?;
        let status = response.status().as_u16();
        answer.clear();
        response
            .body_mut()
            .with_config()
            .limit(limit)
            .reader()
            .read_to_end(answer)
            .map_err(|e| format!("{url}: {e}"))?;
        match status {
            200..=299 => return Ok(busy_count),
            503 => thread::sleep(BUSY_PAUSE),
            _ => return Err(format!("{url}: {}", error_text(status, answer))),
        }
    }
    Err(format!(
        "{url}: still busy after {BUSY_ATTEMPTS_MAX} attempts"
    ))
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

fn run(endpoint: &Endpoint, volume: &str, options: &RunOptions) -> Result<(), String> {
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
    let tally = Mutex::new(Tally {
        ops: 0,
        busy_count: 0,
        latencies_us: Vec::new(),
    });
    let samples_per_thread = SAMPLES_MAX / workload.queue_depth as usize;
    let start = Instant::now();
    let measure_from = start + options.ramp;
    let end = measure_from + options.measure;
    thread::scope(|scope| {
        let threads: Vec<_> = (0..workload.queue_depth)
            .map(|thread_index| {
                let (offsets, tally) = (&offsets, &tally);
                scope.spawn(move || {
                    let mut io = Io::new(endpoint, volume, workload.block_bytes);
                    let mut rng = 0x2545_f491_4f6c_dd1d ^ (u64::from(thread_index) << 32 | 1);
                    let mut ops = 0;
                    let mut latencies_us = Vec::new();
                    loop {
                        let offset = offsets.next(&mut rng);
                        let issued = Instant::now();
                        if issued >= end {
                            break;
                        }
                        if workload.write {
                            io.write(offset, block_bytes)?;
                        } else {
                            io.read(offset, block_bytes)?;
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
                    tally.busy_count += io.busy_count;
                    tally.latencies_us.extend_from_slice(&latencies_us);
                    Ok::<(), String>(())
                })
            })
            .collect();
        threads
            .into_iter()
            .try_for_each(|t| t.join().expect("invariant: IO threads do not panic"))
    })?;
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
