//! `dev-kill`: a `cairn dev` process killed with SIGKILL again and again while a client writes
//! a volume through its data API; after the last restart every block must hold its last
//! acknowledged content.
//!
//! One writer writes runs of 1-16 blocks at random places of a 64 MiB volume, each block's
//! content derived from (seed, write number, block), so any block's expected bytes can be
//! recomputed. A write answered 204 is acknowledged; a write that failed in any other way
//! (the process died, the cluster was restarting) is ambiguous: until a later acknowledged
//! write covers a block, the block may hold the ambiguous content too. Meanwhile the process
//! is killed at random moments and restarted on the same directory. At the end the whole
//! volume is read back: a block holding anything else than an allowed content is `lost`; a
//! block the read fails on (a checksum error nobody could repair) is `corrupt`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{chunkstore_kill::Rng, cluster::post_any};

/// The volume's name.
pub(crate) const VOLUME: &str = "chaos";
/// The volume's size: 16,384 blocks.
pub(crate) const VOLUME_BYTES: u64 = 64 << 20;
pub(crate) const BLOCK: u64 = 4096;
/// Blocks per write at most.
const RUN_BLOCKS_MAX: u64 = 16;
/// How long a restart may take to serve again.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// A write slower than this is reported (with its time, to line up with the processes' logs):
/// a stall the kill loop would otherwise only show as fewer acknowledgements.
const SLOW_WRITE: Duration = Duration::from_secs(2);
/// Bytes per verification read.
const VERIFY_BYTES: u64 = 8 << 20;

/// What a run measured.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Writes acknowledged.
    pub acknowledged: u64,
    /// Writes whose outcome is unknown (the process died under them).
    pub ambiguous: u64,
    /// Blocks holding none of their allowed contents.
    pub lost: u64,
    /// Blocks whose read failed.
    pub corrupt: u64,
    /// SIGKILLs delivered.
    pub kills: u64,
}

/// What a block may hold: its last acknowledged write (0: none, zeros) and any ambiguous
/// writes since.
#[derive(Clone, Debug, Default)]
struct Allowed {
    acknowledged: u64,
    ambiguous: Vec<u64>,
}

impl Allowed {
    fn writes(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.acknowledged).chain(self.ambiguous.iter().copied())
    }
}

/// Writes a read may have raced with that a check recomputes at most: a read slower than
/// this many writes is not checked (counted as unchecked), which bounds the work per block.
const RACING_WRITES_MAX: u64 = 64;

/// The writer's record of what every block may hold, shared with checkers that read while it
/// writes (see [`Victim::writing`]).
#[derive(Clone)]
pub struct Writes {
    seed: u64,
    log: Arc<Mutex<WriteLog>>,
}

struct WriteLog {
    /// Per block of the volume.
    allowed: Vec<Allowed>,
    /// The last write the writer started (0: none yet); it may still be in flight.
    started: u64,
}

/// What a range of blocks may hold, taken just before reading it.
pub(crate) struct Expected {
    first: u64,
    started: u64,
    allowed: Vec<Allowed>,
}

/// How a read's bytes compared with what its blocks may hold.
pub(crate) enum ReadCheck {
    /// Every block holds an allowed content.
    Good,
    /// This many blocks hold none of theirs.
    Bad(u64),
    /// Too many writes raced with the read to check it.
    Unchecked,
}

impl Writes {
    fn new(seed: u64, blocks: u64) -> Writes {
        Writes {
            seed,
            log: Arc::new(Mutex::new(WriteLog {
                allowed: vec![Allowed::default(); blocks as usize],
                started: 0,
            })),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, WriteLog> {
        self.log.lock().expect("not poisoned")
    }

    /// The last acknowledged write of block `block` (0: none, a thin zero block).
    pub(crate) fn acknowledged_write(&self, block: u64) -> u64 {
        self.log().allowed[block as usize].acknowledged
    }

    /// The last write the writer started (0: none yet).
    pub(crate) fn started(&self) -> u64 {
        self.log().started
    }

    /// What blocks `first..first + count` may hold, to take right before reading them.
    pub(crate) fn before_read(&self, first: u64, count: u64) -> Expected {
        let log = self.log();
        Expected {
            first,
            started: log.started,
            allowed: log.allowed[first as usize..(first + count) as usize].to_vec(),
        }
    }

    /// Checks `data`, read after `expected` was taken: each block must hold a content allowed
    /// then, or that of a write started since (the read may have seen any of them).
    pub(crate) fn check_read(&self, expected: &Expected, data: &[u8]) -> ReadCheck {
        assert_eq!(data.len() as u64, expected.allowed.len() as u64 * BLOCK);
        let started = self.log().started;
        if started - expected.started > RACING_WRITES_MAX {
            return ReadCheck::Unchecked;
        }
        let mut bad = 0;
        for (i, got) in data.chunks(BLOCK as usize).enumerate() {
            let block = expected.first + i as u64;
            let ok = expected.allowed[i]
                .writes()
                .chain(expected.started..=started)
                .any(|write| got == block_content(self.seed, write, block).as_slice());
            if !ok {
                eprintln!(
                    "{} read of block {block} holds none of {:?} nor writes {}..={started}",
                    crate::utc_now(),
                    expected.allowed[i].writes().collect::<Vec<_>>(),
                    expected.started,
                );
                bad += 1;
            }
        }
        if bad == 0 {
            ReadCheck::Good
        } else {
            ReadCheck::Bad(bad)
        }
    }

    /// Reads the whole volume through `urls` (the next one when a read fails) once the writer
    /// stopped and checks every block: returns blocks holding none of their allowed contents
    /// (lost) and blocks no read returned (corrupt).
    pub(crate) fn verify(
        &self,
        agent: &ureq::Agent,
        urls: &[String],
        auth: &str,
        name: &str,
    ) -> (u64, u64) {
        let (mut lost, mut corrupt) = (0, 0);
        for start in (0..VOLUME_BYTES).step_by(VERIFY_BYTES as usize) {
            let Some(data) = read_range(agent, urls, auth, start) else {
                corrupt += VERIFY_BYTES / BLOCK;
                continue;
            };
            let log = self.log();
            for (i, got) in data.chunks(BLOCK as usize).enumerate() {
                let block = start / BLOCK + i as u64;
                let entry = &log.allowed[block as usize];
                let ok = entry
                    .writes()
                    .any(|write| got == block_content(self.seed, write, block).as_slice());
                if !ok {
                    eprintln!(
                        "{name}: block {block} holds none of {:?}",
                        entry.writes().collect::<Vec<_>>()
                    );
                    lost += 1;
                }
            }
        }
        (lost, corrupt)
    }
}

/// The bytes write `write` puts in block `block`.
fn block_content(seed: u64, write: u64, block: u64) -> Vec<u8> {
    if write == 0 {
        return vec![0; BLOCK as usize];
    }
    let mut rng = Rng::new(seed ^ write.wrapping_mul(0x9e37_79b9) ^ block.rotate_left(32));
    (0..BLOCK / 8)
        .flat_map(|_| rng.next_u64().to_le_bytes())
        .collect()
}

pub(crate) struct Dev {
    cairn: PathBuf,
    dir: PathBuf,
    listen: String,
    child: Option<Child>,
}

impl Dev {
    fn start(&mut self) -> Result<String, String> {
        let endpoints = self.dir.join("endpoints.env");
        let _ = fs::remove_file(&endpoints);
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("dev.log"))
            .map_err(|e| format!("log: {e}"))?;
        let child = Command::new(&self.cairn)
            .args(["dev", "--data"])
            .arg(&self.dir)
            .args(["--listen", &self.listen, "--pg-count", "8"])
            // Any free port: the scenario drives the HTTP data routes only.
            .args([
                "--iscsi-listen",
                "127.0.0.1:0",
                "--s3-listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.cairn.display()))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Ok(text) = fs::read_to_string(&endpoints) {
                let token = text
                    .lines()
                    .find_map(|l| l.strip_prefix("ADMIN_TOKEN="))
                    .ok_or("endpoints.env without a token")?;
                return Ok(token.to_string());
            }
            if started.elapsed() > READY_DEADLINE {
                return Err("cairn dev did not get ready".into());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn new_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(15)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// Where a cluster under a volume writer serves.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// Admin API base URLs, one per metadata member (the volume is created on the leader).
    pub admin_urls: Vec<String>,
    /// Data API base URLs; the writer moves to the next one when a request fails.
    pub data_urls: Vec<String>,
    /// The bearer token.
    pub token: String,
    /// The pool the volume goes in.
    pub pool: &'static str,
}

/// Where the writer sends its writes.
pub trait Sink: Send {
    /// Writes `body` at byte `offset` of the volume; `Ok` means acknowledged.
    fn write(&mut self, offset: u64, body: &[u8]) -> Result<(), String>;
    /// Called after a write failed: try another endpoint next.
    fn fail_over(&mut self);
    /// The endpoint the next write goes to, for reports.
    fn describe(&self) -> String;
}

/// The data API of the cluster's nodes (or `cairn dev`), round robin on failure.
struct HttpSink {
    agent: ureq::Agent,
    urls: Vec<String>,
    auth: String,
    target: usize,
}

impl Sink for HttpSink {
    fn write(&mut self, offset: u64, body: &[u8]) -> Result<(), String> {
        let url = &self.urls[self.target % self.urls.len()];
        let answer = self
            .agent
            .put(&format!("{url}/v1/volumes/{VOLUME}/data?offset={offset}"))
            .header("Authorization", &self.auth)
            .send(body);
        match answer {
            Ok(r) if r.status().as_u16() == 204 => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn fail_over(&mut self) {
        self.target += 1;
    }

    fn describe(&self) -> String {
        self.urls[self.target % self.urls.len()].clone()
    }
}

/// A cluster under a volume writer: where its APIs are and how to kill part of it.
pub trait Victim {
    /// Where the writer writes; by default the data APIs of [`Victim::endpoints`].
    fn sink(&self) -> Box<dyn Sink> {
        let endpoints = self.endpoints();
        Box::new(HttpSink {
            agent: new_agent(),
            urls: endpoints.data_urls,
            auth: format!("Bearer {}", endpoints.token),
            target: 0,
        })
    }
    /// Where it serves now.
    fn endpoints(&self) -> Endpoints;
    /// Kills something with SIGKILL and brings it back, returning once it was restarted.
    fn kill_and_restart(&mut self, rng: &mut Rng) -> Result<(), String>;
    /// Called once the volume exists, before the writer starts, with the writer's record: a
    /// scenario that checks reads while the writer runs keeps a clone. By default nothing.
    fn writing(&mut self, _writes: &Writes) {}
    /// Runs after the writer stopped, before the volume is read back; returns the kills it
    /// delivered. By default the last word: one more kill.
    fn settle(&mut self, rng: &mut Rng) -> Result<u64, String> {
        self.kill_and_restart(rng)?;
        Ok(1)
    }
}

struct DevVictim {
    dev: Dev,
    token: String,
}

impl Victim for DevVictim {
    fn endpoints(&self) -> Endpoints {
        let url = format!("http://{}", self.dev.listen);
        Endpoints {
            admin_urls: vec![url.clone()],
            data_urls: vec![url],
            token: self.token.clone(),
            pool: "default",
        }
    }
    fn kill_and_restart(&mut self, _: &mut Rng) -> Result<(), String> {
        self.dev.kill();
        self.token = self.dev.start()?;
        Ok(())
    }
}

/// Runs the scenario in `dir` for about `seconds`.
pub fn run(cairn: &Path, dir: &Path, seconds: f64, seed: u64) -> Result<Verdict, String> {
    fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let port = crate::free_port()?;
    let mut dev = Dev {
        cairn: cairn.to_path_buf(),
        dir: dir.join("dev"),
        listen: format!("127.0.0.1:{port}"),
        child: None,
    };
    fs::create_dir_all(&dev.dir).map_err(|e| e.to_string())?;
    let token = dev.start()?;
    run_with(&mut DevVictim { dev, token }, seconds, seed, "dev-kill")
}

/// The writer, the killer and the final check against any [`Victim`].
pub fn run_with(
    victim: &mut dyn Victim,
    seconds: f64,
    seed: u64,
    name: &'static str,
) -> Result<Verdict, String> {
    let agent = new_agent();
    let endpoints = victim.endpoints();
    create_volume(&agent, &endpoints)?;

    let blocks = VOLUME_BYTES / BLOCK;
    let writes = Writes::new(seed, blocks);
    victim.writing(&writes);
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Mutex::new((0u64, 0u64)));
    let writer = {
        let (writes, stop, counts) = (writes.clone(), stop.clone(), counts.clone());
        let mut sink = victim.sink();
        thread::spawn(move || {
            let mut rng = Rng::new(seed);
            let mut write = 0u64;
            while !stop.load(Ordering::Relaxed) {
                write += 1;
                let count = 1 + rng.below(RUN_BLOCKS_MAX);
                let first = rng.below(blocks - count + 1);
                let body: Vec<u8> = (first..first + count)
                    .flat_map(|b| block_content(seed, write, b))
                    .collect();
                writes.log().started = write;
                let sent = Instant::now();
                let to = sink.describe();
                let answer = sink.write(first * BLOCK, &body);
                let took = sent.elapsed();
                let acknowledged = answer.is_ok();
                if took > SLOW_WRITE {
                    let outcome = answer.as_ref().err().map_or("acknowledged", |e| e);
                    eprintln!(
                        "{} {name}: write {write} (offset {}) to {to} took {took:?}: {outcome}",
                        crate::utc_now(),
                        first * BLOCK
                    );
                }
                let mut log = writes.log();
                let mut counts = counts.lock().expect("not poisoned");
                for b in first..first + count {
                    let entry = &mut log.allowed[b as usize];
                    if acknowledged {
                        *entry = Allowed {
                            acknowledged: write,
                            ambiguous: Vec::new(),
                        };
                    } else {
                        entry.ambiguous.push(write);
                    }
                }
                if acknowledged {
                    counts.0 += 1;
                } else {
                    counts.1 += 1;
                    sink.fail_over();
                    drop((log, counts));
                    thread::sleep(Duration::from_millis(50));
                }
            }
        })
    };

    let mut verdict = Verdict::default();
    let mut rng = Rng::new(seed.rotate_left(17));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline {
        // Kill while writes flow: wait for the first acknowledgement after the (re)start, then
        // a random moment.
        let before = counts.lock().expect("not poisoned").0;
        let waiting = Instant::now();
        while counts.lock().expect("not poisoned").0 == before && waiting.elapsed() < READY_DEADLINE
        {
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(100 + rng.below(1000)));
        victim.kill_and_restart(&mut rng)?;
        verdict.kills += 1;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().map_err(|_| "writer panicked")?;
    // The last word (by default one more kill), then read everything back.
    verdict.kills += victim.settle(&mut rng)?;
    let (acknowledged, ambiguous) = *counts.lock().expect("not poisoned");
    verdict.acknowledged = acknowledged;
    verdict.ambiguous = ambiguous;
    // A restart may have changed the token (`cairn dev` makes one per start).
    let endpoints = victim.endpoints();
    let auth = format!("Bearer {}", endpoints.token);
    (verdict.lost, verdict.corrupt) = writes.verify(&agent, &endpoints.data_urls, &auth, name);
    Ok(verdict)
}

/// Creates the volume on whichever metadata member leads (a member that does not answers 503
/// with the leader's address), retrying through elections for up to `READY_DEADLINE`.
fn create_volume(agent: &ureq::Agent, endpoints: &Endpoints) -> Result<(), String> {
    let create = serde_json::json!({
        "name": VOLUME, "pool": endpoints.pool, "size_bytes": VOLUME_BYTES, "tier": "ultra"
    });
    let (status, body, ambiguous) = post_any(
        agent,
        &endpoints.admin_urls,
        &endpoints.token,
        "/v1/volumes",
        &create,
        READY_DEADLINE,
    )
    .map_err(|e| format!("create volume: {e}"))?;
    // 409 after an attempt whose answer was lost: that attempt created it.
    if (200..300).contains(&status) || (status == 409 && ambiguous) {
        Ok(())
    } else {
        Err(format!("create volume: HTTP {status} {body}"))
    }
}

/// Reads `VERIFY_BYTES` at `start`, retrying (other URLs, elections) for up to 30 s; `None`
/// if every attempt failed.
fn read_range(agent: &ureq::Agent, urls: &[String], auth: &str, start: u64) -> Option<Vec<u8>> {
    let deadline = Instant::now() + READY_DEADLINE / 2;
    let mut attempt = 0;
    while Instant::now() < deadline {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let response = agent
            .get(&format!(
                "{url}/v1/volumes/{VOLUME}/data?offset={start}&length={VERIFY_BYTES}"
            ))
            .header("Authorization", auth)
            .call();
        if let Ok(mut r) = response
            && r.status().as_u16() == 200
            && let Ok(data) = r
                .body_mut()
                .with_config()
                .limit(VERIFY_BYTES + 1)
                .read_to_vec()
        {
            return Some(data);
        }
        thread::sleep(Duration::from_millis(200));
    }
    None
}
