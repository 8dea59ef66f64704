//! S3 load generator for `benches/s3.sh`: PUTs and GETs whole objects over plain HTTP/1.1 with
//! keep-alive, signed with AWS Signature V4 (header auth, `UNSIGNED-PAYLOAD`), path-style URLs.
//! Any S3 endpoint will do: the script points it at Cairn's gateway and at Ceph's radosgw.
//!
//! ```text
//! cairn-bench-s3 prepare BUCKET
//! cairn-bench-s3 run BUCKET WORKLOAD SECONDS [RAMP_SECONDS]
//! ```
//!
//! The endpoint and credentials come from the environment, under the names `cairn dev` writes
//! to `DIR/endpoints.env`: `S3_ENDPOINT` (`http://HOST:PORT`), `S3_ACCESS_KEY`, `S3_SECRET_KEY`
//! and `S3_REGION` (default `us-east-1`). Keeping the secret off the command line keeps it out
//! of `ps`.
//!
//! `prepare` creates the bucket (one already owned is kept) and writes the objects GETs read:
//! [`GET_SET_4K`] objects of 4 KiB and [`GET_SET_64M`] of 64 MiB.
//!
//! `run` drives WORKLOAD, named `<size>-<put|get>-c<clients>` (`4k-put-c16`, `64m-get-c4`),
//! for SECONDS after RAMP_SECONDS (default 1) of warm-up, and prints one JSON line:
//! `{"workload", "ops", "seconds", "ops_per_s", "mb_per_s", "p50_us", "p99_us", "busy"}`.
//! Client N is one thread with its own keep-alive connection and one request in flight.
//! Operations issued after the warm-up count; `seconds` runs from the end of the warm-up to
//! the last counted completion, so a 64 MiB transfer still in flight at the deadline is
//! finished and counted rather than dropped. A PUT run also stops issuing once it has sent
//! `S3_BENCH_PUT_BYTES_MAX` bytes (default [`PUT_RUN_BYTES_DEFAULT`]): neither system frees
//! replaced objects at once (Cairn waits 10 minutes), so an unbounded run fills the disk.
//!
//! Bodies are random bytes, different per object: every 4 KiB block of an object starts with
//! the object's 64-bit id. GETs read the prepared objects at random and check the length and
//! every block's id, so an answer from the wrong object fails the run instead of counting as
//! fast. PUTs overwrite a few keys per client, so that live data stays bounded: 128 keys of
//! 4 KiB (see [`PUT_KEYS_4K_PER_CLIENT`] for why), 2 of 64 MiB.
//! A request answered 503 (SlowDown, or a cluster electing) is retried after a short pause and
//! counted in `busy`; its latency runs from the first attempt. Any other failure ends the run.

use std::{
    io::Read,
    process::ExitCode,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use cairn_benches::percentile;
use hmac::{KeyInit, Mac};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Clients (threads, connections, requests in flight) of one run: the script's most is 16;
/// 256 leaves room for experiments while bounding threads and sockets.
const CLIENTS_MAX: u32 = 256;

/// Objects of each size that `prepare` writes and GETs read. 1024 x 4 KiB spreads small GETs
/// over many keys (as over a bucket index); 4 x 64 MiB keeps disk use low (Cairn holds each
/// byte 3 times on its disks and 3 times in its Raft logs) while 4 clients still read
/// different objects much of the time.
const GET_SET_4K: u64 = 1024;
const GET_SET_64M: u64 = 4;

/// Keys each client overwrites in a 64 MiB PUT run: bounds live data to 2 x 64 MiB per client.
const PUT_KEYS_64M_PER_CLIENT: u64 = 2;

/// Keys each client overwrites in a 4 KiB PUT run. Bounded because Cairn keeps small objects
/// inline in its metadata state, which it snapshots into one Raft log record of at most 64 MiB
/// (`cairn_raft::file_log::RECORD_BYTES_MAX`): about 20,000 inline 4 KiB objects made a 112 MB
/// snapshot and `cairn dev` panicked compacting its log. 16 clients x 128 keys plus the 1024
/// GET objects stay near 3,000 objects, under a fifth of that.
const PUT_KEYS_4K_PER_CLIENT: u64 = 128;

/// Bytes a PUT run sends by default before it stops issuing: 512 MiB, 8 objects of 64 MiB, is
/// about 4.5 s of radosgw's 117 MB/s here, and on Cairn 3 GiB of disk (3 replicas plus their
/// Raft logs) per run until garbage is freed.
const PUT_RUN_BYTES_DEFAULT: u64 = 512 << 20;

/// One request's deadline: 64 MiB at a slow 10 MB/s takes 7 s; a request stalled 120 s means
/// the server is stuck, and the run fails instead of hanging.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Attempts of one request answered 503 before the run gives up: at [`BUSY_PAUSE`] apart, about
/// 10 s of a server refusing work, far longer than an election.
const BUSY_ATTEMPTS_MAX: u32 = 10_000;

/// Pause before retrying a request answered 503: short, so a busy client does not idle long.
const BUSY_PAUSE: Duration = Duration::from_millis(1);

/// Latency samples kept per run (4 bytes each: 16 MiB): minutes at 30,000 ops/s. Past it,
/// operations are still counted and percentiles come from the first samples.
const SAMPLES_MAX: usize = 1 << 22;

/// Largest error answer read: S3 errors are short XML documents.
const ERROR_BYTES_MAX: u64 = 64 << 10;

/// Every 4 KiB block of a body starts with the object's id.
const STAMP_BYTES: usize = 4096;

/// GET bodies are read and checked in pieces of this size: one buffer per client, not one
/// per 64 MiB object.
const READ_PIECE_BYTES: usize = 1 << 20;

const _: () = assert!(READ_PIECE_BYTES.is_multiple_of(STAMP_BYTES));
const _: () = assert!((64usize << 20).is_multiple_of(READ_PIECE_BYTES));

fn usage() -> ExitCode {
    eprintln!("usage: cairn-bench-s3 prepare BUCKET");
    eprintln!("       cairn-bench-s3 run BUCKET WORKLOAD SECONDS [RAMP_SECONDS]");
    eprintln!("WORKLOAD: <4k|64m>-<put|get>-c<clients>, e.g. 4k-put-c16, 64m-get-c4");
    eprintln!("(S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY and S3_REGION from the environment)");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let endpoint = match Endpoint::from_env() {
        Ok(endpoint) => endpoint,
        Err(message) => {
            eprintln!("cairn-bench-s3: {message}");
            return usage();
        }
    };
    let result = match args[..] {
        ["prepare", bucket] => prepare(&endpoint, bucket),
        ["run", bucket, workload, seconds, ref ramp @ ..] => {
            let ramp = ramp.first().copied().unwrap_or("1");
            match run_options(workload, seconds, ramp) {
                Some(options) => run(&endpoint, bucket, &options),
                None => return usage(),
            }
        }
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cairn-bench-s3: {message}");
            ExitCode::FAILURE
        }
    }
}

// --- Workloads -------------------------------------------------------------------------------

/// A workload shape, named `<size>-<put|get>-c<clients>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Workload {
    object_bytes: u64,
    put: bool,
    clients: u32,
}

impl Workload {
    fn parse(name: &str) -> Option<Workload> {
        let mut parts = name.split('-');
        let object_bytes = match parts.next()? {
            "4k" => 4 << 10,
            "64m" => 64 << 20,
            _ => return None,
        };
        let put = match parts.next()? {
            "put" => true,
            "get" => false,
            _ => return None,
        };
        let clients: u32 = parts.next()?.strip_prefix('c')?.parse().ok()?;
        if parts.next().is_some() || clients == 0 || clients > CLIENTS_MAX {
            return None;
        }
        Some(Workload {
            object_bytes,
            put,
            clients,
        })
    }

    /// The size's name in keys: `4k` or `64m`.
    fn size_name(&self) -> &'static str {
        if self.object_bytes == 4 << 10 {
            "4k"
        } else {
            "64m"
        }
    }
}

/// How many objects `prepare` wrote of a size, hence which keys GETs may read.
fn get_set_count(object_bytes: u64) -> u64 {
    if object_bytes == 4 << 10 {
        GET_SET_4K
    } else {
        GET_SET_64M
    }
}

/// The key of prepared object `index` of a size.
fn get_key(size_name: &str, index: u64) -> String {
    format!("get/{size_name}/{index:05}")
}

/// The id stamped into prepared object `index` of a size: distinct per size and index.
fn get_id(object_bytes: u64, index: u64) -> u64 {
    (object_bytes << 24) | index
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
    put_bytes_max: u64,
}

fn run_options(workload: &str, measure: &str, ramp: &str) -> Option<RunOptions> {
    let put_bytes_max = match std::env::var("S3_BENCH_PUT_BYTES_MAX") {
        Ok(text) => text.parse().ok().filter(|&bytes| bytes > 0)?,
        Err(_) => PUT_RUN_BYTES_DEFAULT,
    };
    Some(RunOptions {
        workload: Workload::parse(workload)?,
        measure: seconds(measure).filter(|s| !s.is_zero())?,
        ramp: seconds(ramp)?,
        put_bytes_max,
    })
}

// --- Signature V4 ----------------------------------------------------------------------------

type HmacSha256 = hmac::Hmac<Sha256>;

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("invariant: HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// The payload hash of requests whose body is not hashed.
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Percent-encodes a path as SigV4's canonical URI wants: every byte but the unreserved
/// characters and `/`.
fn uri_encode_path(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len());
    for &byte in path.as_bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the Unix epoch (UTC; civil-from-days, Howard Hinnant).
fn amz_date(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let second_of_day = unix_seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Signs requests for one access key and region; caches the day's signing key.
struct Signer {
    access_key: String,
    secret_key: String,
    region: String,
    /// The `YYYYMMDD` the cached key is for, and the key.
    day_key: Option<(String, [u8; 32])>,
}

impl Signer {
    fn new(access_key: &str, secret_key: &str, region: &str) -> Signer {
        Signer {
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            region: region.to_string(),
            day_key: None,
        }
    }

    fn signing_key(&mut self, day: &str) -> [u8; 32] {
        if let Some((cached_day, key)) = &self.day_key
            && cached_day == day
        {
            return *key;
        }
        let secret = format!("AWS4{}", self.secret_key);
        let key_date = hmac_sha256(secret.as_bytes(), day.as_bytes());
        let key_region = hmac_sha256(&key_date, self.region.as_bytes());
        let key_service = hmac_sha256(&key_region, b"s3");
        let key = hmac_sha256(&key_service, b"aws4_request");
        self.day_key = Some((day.to_string(), key));
        key
    }

    /// The `Authorization` header of a request. `headers` are the signed headers with
    /// lower-case names, sorted by name, `host` and `x-amz-date` among them; `path` is not
    /// encoded yet; `query` is already canonical (sorted, encoded).
    fn authorization(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        payload_hash: &str,
    ) -> String {
        assert!(headers.windows(2).all(|pair| pair[0].0 < pair[1].0));
        let amz_date = headers
            .iter()
            .find(|(name, _)| *name == "x-amz-date")
            .map(|(_, value)| *value)
            .expect("invariant: x-amz-date is signed");
        assert_eq!(amz_date.len(), 16);
        let day = &amz_date[..8];
        let canonical = canonical_request(method, path, query, headers, payload_hash);
        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            sha256_hex(canonical.as_bytes())
        );
        let signature = hex(&hmac_sha256(
            &self.signing_key(day),
            string_to_sign.as_bytes(),
        ));
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={},Signature={signature}",
            self.access_key,
            signed_headers(headers)
        )
    }
}

fn signed_headers(headers: &[(&str, &str)]) -> String {
    let names: Vec<&str> = headers.iter().map(|(name, _)| *name).collect();
    names.join(";")
}

fn canonical_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    payload_hash: &str,
) -> String {
    let mut canonical = format!("{method}\n{}\n{query}\n", uri_encode_path(path));
    for (name, value) in headers {
        canonical.push_str(&format!("{name}:{}\n", value.trim()));
    }
    canonical.push_str(&format!("\n{}\n{payload_hash}", signed_headers(headers)));
    canonical
}

// --- HTTP ------------------------------------------------------------------------------------

/// Where the S3 endpoint is and the key that signs for it.
struct Endpoint {
    base_url: String,
    /// `HOST:PORT` as the `Host` header carries it.
    host: String,
    access_key: String,
    secret_key: String,
    region: String,
}

impl Endpoint {
    fn from_env() -> Result<Endpoint, String> {
        let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
        let base_url = var("S3_ENDPOINT")?.trim_end_matches('/').to_string();
        let host = base_url
            .strip_prefix("http://")
            .ok_or("S3_ENDPOINT must be http://HOST:PORT (no TLS)")?
            .to_string();
        if host.is_empty() || host.contains('/') {
            return Err("S3_ENDPOINT must be http://HOST:PORT, without a path".into());
        }
        Ok(Endpoint {
            base_url,
            host,
            access_key: var("S3_ACCESS_KEY")?,
            secret_key: var("S3_SECRET_KEY")?,
            region: std::env::var("S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
        })
    }
}

/// One client: its keep-alive connection and signer.
struct Client<'a> {
    endpoint: &'a Endpoint,
    agent: ureq::Agent,
    signer: Signer,
    /// Requests answered 503 and sent again.
    busy_count: u64,
}

/// What one request sends.
enum Send<'b> {
    Empty,
    Body(&'b [u8]),
}

impl<'a> Client<'a> {
    fn new(endpoint: &'a Endpoint) -> Client<'a> {
        let agent = cairn_benches::agent(REQUEST_TIMEOUT);
        Client {
            endpoint,
            agent,
            signer: Signer::new(&endpoint.access_key, &endpoint.secret_key, &endpoint.region),
            busy_count: 0,
        }
    }

    /// Sends one signed request, again while it is answered 503; answers the response whose
    /// status is not 503 (the caller reads its body).
    fn request(
        &mut self,
        method: &str,
        path: &str,
        send: &Send<'_>,
    ) -> Result<ureq::http::Response<ureq::Body>, String> {
        let url = format!("{}{}", self.endpoint.base_url, uri_encode_path(path));
        for _ in 0..BUSY_ATTEMPTS_MAX {
            let unix_seconds = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|e| format!("clock before 1970: {e}"))?
                .as_secs();
            let date = amz_date(unix_seconds);
            let headers = [
                ("host", self.endpoint.host.as_str()),
                ("x-amz-content-sha256", UNSIGNED_PAYLOAD),
                ("x-amz-date", date.as_str()),
            ];
            let authorization =
                self.signer
                    .authorization(method, path, "", &headers, UNSIGNED_PAYLOAD);
            let builder = ureq::http::Request::builder()
                .method(method)
                .uri(&url)
                .header("x-amz-content-sha256", UNSIGNED_PAYLOAD)
                .header("x-amz-date", &date)
                .header("authorization", authorization);
            let sent = match send {
                Send::Empty => builder
                    .body(())
                    .map_err(|e| e.to_string())
                    .and_then(|r| self.agent.run(r).map_err(|e| e.to_string())),
                Send::Body(body) => builder
                    .body(*body)
                    .map_err(|e| e.to_string())
                    .and_then(|r| self.agent.run(r).map_err(|e| e.to_string())),
            };
            let mut response = sent.map_err(|e| format!("{method} {url}: {e}"))?;
            if response.status().as_u16() != 503 {
                return Ok(response);
            }
            // Drain the answer so the connection can be kept.
            read_error(&mut response);
            self.busy_count += 1;
            thread::sleep(BUSY_PAUSE);
        }
        Err(format!(
            "{method} {url}: still busy after {BUSY_ATTEMPTS_MAX} attempts"
        ))
    }

    /// PUTs `body` at `bucket/key`.
    fn put(&mut self, bucket: &str, key: &str, body: &[u8]) -> Result<(), String> {
        let path = format!("/{bucket}/{key}");
        let mut response = self.request("PUT", &path, &Send::Body(body))?;
        let status = response.status().as_u16();
        let answer = read_error(&mut response);
        match status {
            200..=299 => Ok(()),
            _ => Err(format!("PUT {path}: HTTP {status}: {answer}")),
        }
    }

    /// GETs `bucket/key` and checks it is `object_bytes` long with every block stamped `id`.
    fn get(
        &mut self,
        bucket: &str,
        key: &str,
        object_bytes: u64,
        id: u64,
        piece: &mut [u8],
    ) -> Result<(), String> {
        let path = format!("/{bucket}/{key}");
        let mut response = self.request("GET", &path, &Send::Empty)?;
        let status = response.status().as_u16();
        if !(200..=299).contains(&status) {
            let answer = read_error(&mut response);
            return Err(format!("GET {path}: HTTP {status}: {answer}"));
        }
        let mut reader = response
            .body_mut()
            .with_config()
            .limit(object_bytes + 1)
            .reader();
        let mut read_bytes = 0u64;
        while read_bytes < object_bytes {
            let length = (object_bytes - read_bytes).min(piece.len() as u64) as usize;
            let piece = &mut piece[..length];
            reader
                .read_exact(piece)
                .map_err(|e| format!("GET {path}: after {read_bytes} bytes: {e}"))?;
            check_stamps(piece, id).map_err(|e| format!("GET {path}: {e}"))?;
            read_bytes += length as u64;
        }
        // The answer must end here: one more byte means the object is longer than written.
        let mut extra = [0u8; 1];
        match reader.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(format!("GET {path}: longer than {object_bytes} bytes")),
            Err(e) => Err(format!("GET {path}: {e}")),
        }
    }

    /// Creates `bucket`; one this key already owns is kept.
    fn create_bucket(&mut self, bucket: &str) -> Result<(), String> {
        let path = format!("/{bucket}");
        // An empty body, not none: S3 wants `Content-Length: 0` on a PUT.
        let mut response = self.request("PUT", &path, &Send::Body(&[]))?;
        let status = response.status().as_u16();
        let answer = read_error(&mut response);
        if (200..=299).contains(&status) || answer.contains("BucketAlreadyOwnedByYou") {
            return Ok(());
        }
        Err(format!("PUT {path}: HTTP {status}: {answer}"))
    }
}

/// Reads an answer body (at most [`ERROR_BYTES_MAX`]) as text, for error messages.
fn read_error(response: &mut ureq::http::Response<ureq::Body>) -> String {
    let mut body = Vec::new();
    let read = response
        .body_mut()
        .with_config()
        .limit(ERROR_BYTES_MAX)
        .reader()
        .read_to_end(&mut body);
    match read {
        Ok(_) => String::from_utf8_lossy(&body).trim().to_string(),
        Err(e) => format!("(unreadable answer: {e})"),
    }
}

// --- Bodies ----------------------------------------------------------------------------------

/// xorshift64: cheap, and enough to make bodies incompressible and distinct.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Fills `body` with random bytes.
fn fill_random(body: &mut [u8], state: &mut u64) {
    for word in body.chunks_exact_mut(8) {
        word.copy_from_slice(&next_random(state).to_le_bytes());
    }
}

/// Writes `id` at the start of every 4 KiB block of `body`.
fn stamp(body: &mut [u8], id: u64) {
    assert!(body.len().is_multiple_of(STAMP_BYTES));
    for block in body.chunks_exact_mut(STAMP_BYTES) {
        block[..8].copy_from_slice(&id.to_le_bytes());
    }
}

/// Checks that every 4 KiB block of `data` starts with `id`.
fn check_stamps(data: &[u8], id: u64) -> Result<(), String> {
    assert!(data.len().is_multiple_of(STAMP_BYTES));
    for (index, block) in data.chunks_exact(STAMP_BYTES).enumerate() {
        let mut found = [0u8; 8];
        found.copy_from_slice(&block[..8]);
        let found = u64::from_le_bytes(found);
        if found != id {
            return Err(format!(
                "block {index} of a piece holds id {found:#x}, not {id:#x}"
            ));
        }
    }
    Ok(())
}

/// A per-thread random seed: never zero (xorshift would stay at zero).
fn seed(salt: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

// --- prepare ---------------------------------------------------------------------------------

/// Creates the bucket and the objects GETs read, four clients at a time.
fn prepare(endpoint: &Endpoint, bucket: &str) -> Result<(), String> {
    const PREPARE_CLIENTS: u64 = 4;
    Client::new(endpoint).create_bucket(bucket)?;
    for (size_name, object_bytes) in [("4k", 4u64 << 10), ("64m", 64 << 20)] {
        let count = get_set_count(object_bytes);
        let next = AtomicU64::new(0);
        let started = Instant::now();
        thread::scope(|scope| {
            let workers: Vec<_> = (0..PREPARE_CLIENTS)
                .map(|worker| {
                    let next = &next;
                    scope.spawn(move || {
                        let mut client = Client::new(endpoint);
                        let mut state = seed(worker);
                        let mut body = vec![0u8; object_bytes as usize];
                        loop {
                            let index = next.fetch_add(1, Ordering::Relaxed);
                            if index >= count {
                                return Ok::<(), String>(());
                            }
                            fill_random(&mut body, &mut state);
                            stamp(&mut body, get_id(object_bytes, index));
                            client.put(bucket, &get_key(size_name, index), &body)?;
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().expect("invariant: prepare threads do not panic"))
        })?;
        eprintln!(
            "prepared {count} objects of {size_name} in {bucket} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

// --- run -------------------------------------------------------------------------------------

/// What the clients of a run counted.
struct Tally {
    ops: u64,
    busy_count: u64,
    /// When the last counted operation completed.
    last_done: Option<Instant>,
    latencies_us: Vec<u32>,
}

/// What one client of a run shares with the others.
struct Shared<'a> {
    bucket: &'a str,
    options: &'a RunOptions,
    /// PUT objects issued so far, to stop at the byte limit.
    put_issued: AtomicU64,
    measure_from: Instant,
    end: Instant,
    tally: Mutex<Tally>,
}

fn run(endpoint: &Endpoint, bucket: &str, options: &RunOptions) -> Result<(), String> {
    let workload = options.workload;
    let start = Instant::now();
    let measure_from = start + options.ramp;
    let shared = Shared {
        bucket,
        options,
        put_issued: AtomicU64::new(0),
        measure_from,
        end: measure_from + options.measure,
        tally: Mutex::new(Tally {
            ops: 0,
            busy_count: 0,
            last_done: None,
            latencies_us: Vec::new(),
        }),
    };
    thread::scope(|scope| {
        let clients: Vec<_> = (0..workload.clients)
            .map(|index| {
                let shared = &shared;
                scope.spawn(move || client_loop(endpoint, shared, index))
            })
            .collect();
        clients
            .into_iter()
            .try_for_each(|c| c.join().expect("invariant: client threads do not panic"))
    })?;
    let tally = shared
        .tally
        .into_inner()
        .expect("invariant: no thread panicked");
    print_result(&workload, measure_from, tally);
    Ok(())
}

/// One client's loop: issues operations until the deadline (or the PUT byte limit).
fn client_loop(endpoint: &Endpoint, shared: &Shared<'_>, index: u32) -> Result<(), String> {
    let workload = shared.options.workload;
    let object_bytes = workload.object_bytes;
    let size_name = workload.size_name();
    let samples_max = SAMPLES_MAX / workload.clients as usize;
    let put_objects_max = shared.options.put_bytes_max.div_ceil(object_bytes);
    let mut client = Client::new(endpoint);
    let mut state = seed(u64::from(index) + 1);
    let body_bytes = if workload.put {
        object_bytes as usize
    } else {
        0
    };
    let mut body = vec![0u8; body_bytes];
    fill_random(&mut body, &mut state);
    let mut piece = vec![0u8; READ_PIECE_BYTES.min(object_bytes as usize)];
    let (mut ops, mut last_done, mut latencies_us) = (0u64, None, Vec::new());
    for sequence in 0u64.. {
        let issued = Instant::now();
        if issued >= shared.end {
            break;
        }
        if workload.put {
            if shared.put_issued.fetch_add(1, Ordering::Relaxed) >= put_objects_max {
                break;
            }
            let key = if object_bytes == 4 << 10 {
                // Fresh random bytes for every small object; its id is its sequence.
                fill_random(&mut body, &mut state);
                format!("put/4k/{index}/{}", sequence % PUT_KEYS_4K_PER_CLIENT)
            } else {
                // A new id in every block makes each large object differ from the last.
                format!("put/64m/{index}/{}", sequence % PUT_KEYS_64M_PER_CLIENT)
            };
            stamp(&mut body, next_random(&mut state));
            client.put(shared.bucket, &key, &body)?;
        } else {
            let object = next_random(&mut state) % get_set_count(object_bytes);
            let id = get_id(object_bytes, object);
            client.get(
                shared.bucket,
                &get_key(size_name, object),
                object_bytes,
                id,
                &mut piece,
            )?;
        }
        let done = Instant::now();
        if issued >= shared.measure_from {
            ops += 1;
            last_done = Some(done);
            if latencies_us.len() < samples_max {
                let us = (done - issued).as_micros();
                latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
        }
    }
    let mut tally = shared
        .tally
        .lock()
        .expect("invariant: no thread panics holding it");
    tally.ops += ops;
    tally.busy_count += client.busy_count;
    tally.last_done = tally.last_done.max(last_done);
    tally.latencies_us.extend_from_slice(&latencies_us);
    Ok(())
}

fn print_result(workload: &Workload, measure_from: Instant, tally: Tally) {
    let seconds = tally
        .last_done
        .map_or(0.0, |done| (done - measure_from).as_secs_f64());
    let ops_per_s = if seconds > 0.0 {
        tally.ops as f64 / seconds
    } else {
        0.0
    };
    let mb_per_s = ops_per_s * workload.object_bytes as f64 / 1e6;
    let mut latencies: Vec<Duration> = tally
        .latencies_us
        .iter()
        .map(|&us| Duration::from_micros(u64::from(us)))
        .collect();
    let p50_us = percentile(&mut latencies, 0.50).as_micros() as u64;
    let p99_us = percentile(&mut latencies, 0.99).as_micros() as u64;
    let name = format!(
        "{}-{}-c{}",
        workload.size_name(),
        if workload.put { "put" } else { "get" },
        workload.clients
    );
    let line = json!({
        "workload": name,
        "ops": tally.ops,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "ops_per_s": (ops_per_s * 10.0).round() / 10.0,
        "mb_per_s": (mb_per_s * 10.0).round() / 10.0,
        "p50_us": p50_us,
        "p99_us": p99_us,
        "busy": tally.busy_count,
    });
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documented SigV4 example "GET Object" (Amazon S3 API Reference, "Signature
    /// Calculations for the Authorization Header: Transferring Payload in a Single Chunk"):
    /// bytes 0-9 of examplebucket/test.txt on 2013-05-24 with the example key. Checks the
    /// canonical request text, then the signature the documentation gives.
    #[test]
    fn signs_the_aws_get_object_example() {
        let empty_hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(sha256_hex(b""), empty_hash);
        let headers = [
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", empty_hash),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let canonical = canonical_request("GET", "/test.txt", "", &headers, empty_hash);
        assert_eq!(
            canonical,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut signer = Signer::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
        );
        let authorization = signer.authorization("GET", "/test.txt", "", &headers, empty_hash);
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/\
             aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        // Signing again takes the cached day key and gives the same answer.
        let again = signer.authorization("GET", "/test.txt", "", &headers, empty_hash);
        assert_eq!(again, authorization);
    }

    #[test]
    fn formats_amz_dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        // A leap day, and the last second of a leap year.
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(amz_date(1_735_689_599), "20241231T235959Z");
    }

    #[test]
    fn encodes_paths() {
        assert_eq!(uri_encode_path("/b/put/4k/0/7"), "/b/put/4k/0/7");
        assert_eq!(uri_encode_path("/b/a b+c~d"), "/b/a%20b%2Bc~d");
    }

    #[test]
    fn parses_workload_names() {
        let w = Workload::parse("4k-put-c16").expect("valid");
        assert_eq!((w.object_bytes, w.put, w.clients), (4096, true, 16));
        let w = Workload::parse("64m-get-c4").expect("valid");
        assert_eq!((w.object_bytes, w.put, w.clients), (64 << 20, false, 4));
        assert_eq!(w.size_name(), "64m");
        for bad in [
            "",
            "4k",
            "4k-put",
            "1m-put-c1",
            "4k-del-c1",
            "4k-get-c0",
            "4k-get-c1-x",
        ] {
            assert!(Workload::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn stamps_and_checks_bodies() {
        let mut state = 7;
        let mut body = vec![0u8; 3 * STAMP_BYTES];
        fill_random(&mut body, &mut state);
        stamp(&mut body, 42);
        assert!(check_stamps(&body, 42).is_ok());
        assert!(check_stamps(&body, 43).is_err());
        body[STAMP_BYTES] ^= 1;
        assert!(check_stamps(&body, 42).is_err());
        assert_ne!(get_id(4096, 1), get_id(64 << 20, 1));
    }
}
