//! `bitflip`: silent corruption under load. One `cairn meta` member and three `cairn node run`
//! processes (ids 2-4, one disk each; the `nodes-kill` layout), a 3-replica pool of 8 PGs with
//! host as failure domain, so every node holds a replica of every chunk. The volume writer of
//! [`crate::dev_kill`] writes through the nodes' data APIs (nothing is killed) while:
//! - a flipper, every 100-300 ms, picks a random volume block that holds an acknowledged write
//!   and was never flipped, asks a random node where that block lies in its chunk files
//!   (`/v1/debug/chunk-location`) and flips one random bit of it in that one file. A block is
//!   flipped at most once, on one node: a good copy always exists elsewhere;
//! - a reader reads random ranges through random nodes: a refused read is counted, but bytes
//!   served (200) must be contents their blocks may hold, or the blocks count as lost.
//!
//! After the run the writer stops, then the flipper and reader; the whole volume is read
//! through each node in turn (a node serves reads from its own replicas, so every replica of
//! every block is read, verified and repaired where damaged) and checked as `dev-kill` does.
//! Then the volume is read and checked once more through any node (`dev-kill`'s final
//! check), the nodes' counters are summed, the nodes stopped with SIGTERM (each flushes its
//! chunk stores, so every repair is durable with its checksum), and `cairn disk scrub
//! --json` runs on each node's disk. (After a SIGKILL the scrub would also report blocks
//! written since the last flush, which a restart replays from the Raft log: the chunk
//! store's crash contract, not damage.)
//!
//! The verdict line: `bitflip: acknowledged=N lost=L corrupt=C unrepaired=U degraded_pgs=D`,
//! where L counts blocks holding none of their allowed contents (reads during the run and the
//! final reads through each node), C blocks a final read could not get, U the checksum errors
//! the nodes counted as unrepaired (`cairn_pg_unrepaired_checksum_errors_total`) plus the
//! corrupt blocks the offline scrubs still find, and D the PGs not healthy at the end (a PG
//! whose members' content digests differ is not healthy: flipped bits must not change them).
//! On stderr: `flips=F repairs=R reads_checked=K` and details. It succeeds iff L, C, U and D
//! are 0 while N, F and R are not.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    chunkstore_kill::Rng,
    cluster::{Cluster, NodeOptions, POOL, POOL_PGS, call, path_str, pgs_consistent_and_healthy},
    dev_kill::{BLOCK, Endpoints, VOLUME, VOLUME_BYTES, Victim, Writes, new_agent, run_with},
    reads::{ReadTally, reader},
    utc_now,
};

/// Storage nodes (ids 2, 3, 4; the metadata member is 1): one per replica.
const NODES: u64 = 3;
/// `cairn node`'s default chunk size: chunk index = volume offset / this.
const CHUNK_BYTES: u64 = 4 << 20;
const BLOCKS_PER_CHUNK: u64 = CHUNK_BYTES / BLOCK;
const _: () = assert!(CHUNK_BYTES.is_multiple_of(BLOCK));
const _: () = assert!(VOLUME_BYTES.is_multiple_of(CHUNK_BYTES));
/// A flip every this many ms plus up to `FLIP_SPREAD_MS` (100-300 ms): dozens per run, a
/// few per scrub pass, far fewer than the volume's blocks (each is flipped at most once).
const FLIP_INTERVAL_MS_MIN: u64 = 100;
const FLIP_SPREAD_MS: u64 = 200;
/// Random blocks the flipper tries per flip to find one written and never flipped: bounded,
/// a round that finds none skips its flip.
const PICK_ATTEMPTS_MAX: u32 = 64;
/// How long the cluster may take to be healthy at the end (nothing was killed: it should be).
const HEALTH_DEADLINE: Duration = Duration::from_secs(30);
/// Time for the last counters to settle before they are read (a repair in flight when the
/// final reads ended), as the brief asks: about 2 s.
const COUNTERS_SETTLE: Duration = Duration::from_secs(2);

/// One bit flipped in a chunk file.
#[derive(Clone, Debug)]
struct Flip {
    /// Node index in the cluster.
    node: usize,
    /// Volume block.
    block: u64,
    path: PathBuf,
    /// Byte of the file flipped.
    offset: u64,
    /// The last write the writer had started when the bit was flipped: a later acknowledged
    /// write of the block replaced the damage on every replica.
    started: u64,
}

/// What the flipper did while the writer ran.
#[derive(Debug, Default)]
struct Damage {
    flips: Vec<Flip>,
    /// Location asks that found no chunk on the node (a chunk not created there yet).
    misses: u64,
    /// Location asks or file writes that failed (printed).
    flip_errors: u64,
}

/// The ids the chunk-location endpoint needs.
#[derive(Clone, Copy, Debug)]
struct Ids {
    pool: u64,
    owner: u64,
}

struct Bitflip {
    cluster: Cluster,
    dir: PathBuf,
    seed: u64,
    ids: Option<Ids>,
    writes: Option<Writes>,
    stop: Arc<AtomicBool>,
    damage: Arc<Mutex<Damage>>,
    reads: Arc<Mutex<ReadTally>>,
    threads: Vec<JoinHandle<()>>,
    /// Blocks lost / not read in the final reads through each node.
    final_lost: u64,
    final_corrupt: u64,
    /// Problems of the setup (ids not found): the run fails with them.
    setup_error: Option<String>,
}

/// `GET {admin}/v1/{kind}/{name}` → `"id"`: a number, or a hex string (volumes).
fn admin_id(endpoints: &Endpoints, kind: &str, name: &str) -> Result<u64, String> {
    let agent = new_agent();
    let mut last = String::new();
    for url in &endpoints.admin_urls {
        match call(
            &agent,
            &format!("{url}/v1/{kind}/{name}"),
            &endpoints.token,
            None,
        ) {
            Ok((200, body)) => {
                let id = &body["id"];
                if let Some(id) = id.as_u64() {
                    return Ok(id);
                }
                if let Some(hex) = id.as_str() {
                    return u64::from_str_radix(hex, 16)
                        .map_err(|e| format!("{kind}/{name}: id {hex:?}: {e}"));
                }
                return Err(format!("{kind}/{name}: no id in {body}"));
            }
            Ok((status, body)) => last = format!("HTTP {status} {body}"),
            Err(e) => last = e,
        }
    }
    Err(format!("{kind}/{name}: {last}"))
}

/// Where block `block` of chunk `chunk` lies on the node at `url`: `(path, offset)` of every
/// disk holding it.
fn locate(
    agent: &ureq::Agent,
    url: &str,
    token: &str,
    ids: Ids,
    chunk: u64,
    block: u64,
) -> Result<Vec<(PathBuf, u64)>, String> {
    let location = format!(
        "{url}/v1/debug/chunk-location/{}/{}/{chunk}?block={block}",
        ids.pool, ids.owner
    );
    let (status, body) = call(agent, &location, token, None)?;
    if status != 200 {
        return Err(format!("{location}: HTTP {status} {body}"));
    }
    let entries = body
        .as_array()
        .ok_or_else(|| format!("{location}: not a list: {body}"))?;
    entries
        .iter()
        .map(
            |entry| match (entry["path"].as_str(), entry["offset"].as_u64()) {
                (Some(path), Some(offset)) => Ok((PathBuf::from(path), offset)),
                _ => Err(format!("{location}: bad entry {entry}")),
            },
        )
        .collect()
}

/// Flips bit `bit` (0..8 * BLOCK) of the block at `offset` of `path`, in place.
fn flip_bit(path: &Path, offset: u64, bit: u64) -> Result<u64, String> {
    assert!(bit < BLOCK * 8);
    let file = fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let at = offset + bit / 8;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at)
        .map_err(|e| format!("read {}@{at}: {e}", path.display()))?;
    byte[0] ^= 1 << (bit % 8);
    file.write_all_at(&byte, at)
        .map_err(|e| format!("write {}@{at}: {e}", path.display()))?;
    Ok(at)
}

/// The flipper: see the module docs.
fn flipper(
    endpoints: Endpoints,
    ids: Ids,
    writes: Writes,
    seed: u64,
    stop: Arc<AtomicBool>,
    damage: Arc<Mutex<Damage>>,
) {
    let agent = new_agent();
    let mut rng = Rng::new(seed ^ 0xf11b);
    let blocks = VOLUME_BYTES / BLOCK;
    let mut flipped = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(
            FLIP_INTERVAL_MS_MIN + rng.below(FLIP_SPREAD_MS + 1),
        ));
        let Some(block) = (0..PICK_ATTEMPTS_MAX)
            .map(|_| rng.below(blocks))
            .find(|b| !flipped.contains(b) && writes.acknowledged_write(*b) != 0)
        else {
            continue;
        };
        let node = rng.below(endpoints.data_urls.len() as u64) as usize;
        let (chunk, in_chunk) = (block / BLOCKS_PER_CHUNK, block % BLOCKS_PER_CHUNK);
        let url = &endpoints.data_urls[node];
        let located = locate(&agent, url, &endpoints.token, ids, chunk, in_chunk);
        let mut damage = damage.lock().expect("not poisoned");
        let (path, offset) = match located {
            Ok(places) if places.is_empty() => {
                damage.misses += 1;
                continue;
            }
            // One disk per node: the first holds it.
            Ok(places) => places[0].clone(),
            Err(e) => {
                eprintln!("{} bitflip: locate block {block}: {e}", utc_now());
                damage.flip_errors += 1;
                continue;
            }
        };
        let started = writes.started();
        match flip_bit(&path, offset, rng.below(BLOCK * 8)) {
            Ok(at) => {
                flipped.insert(block);
                damage.flips.push(Flip {
                    node,
                    block,
                    path,
                    offset: at,
                    started,
                });
            }
            Err(e) => {
                eprintln!("{} bitflip: flip block {block}: {e}", utc_now());
                damage.flip_errors += 1;
            }
        }
    }
}

impl Victim for Bitflip {
    fn endpoints(&self) -> Endpoints {
        self.cluster.endpoints()
    }

    /// Nothing is killed: the flipper and reader do the damage.
    fn kill_and_restart(&mut self, _: &mut Rng) -> Result<(), String> {
        match &self.setup_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn writing(&mut self, writes: &Writes) {
        let endpoints = self.cluster.endpoints();
        let ids = admin_id(&endpoints, "pools", POOL).and_then(|pool| {
            Ok(Ids {
                pool,
                owner: admin_id(&endpoints, "volumes", VOLUME)?,
            })
        });
        let ids = match ids {
            Ok(ids) => ids,
            Err(e) => {
                self.setup_error = Some(e);
                return;
            }
        };
        eprintln!("bitflip: pool id {} volume id {:x}", ids.pool, ids.owner);
        self.ids = Some(ids);
        self.writes = Some(writes.clone());
        let (stop, damage, flipper_writes) =
            (self.stop.clone(), self.damage.clone(), writes.clone());
        let seed = self.seed;
        self.threads.push(thread::spawn(move || {
            flipper(endpoints, ids, flipper_writes, seed, stop, damage)
        }));
        let (stop, reads, writes) = (self.stop.clone(), self.reads.clone(), writes.clone());
        let endpoints = self.cluster.endpoints();
        self.threads.push(thread::spawn(move || {
            reader("bitflip", endpoints, writes, seed, stop, reads)
        }));
    }

    /// Stops the flipper and reader, reads the whole volume through each node, then flushes.
    fn settle(&mut self, _: &mut Rng) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().map_err(|_| "flipper or reader panicked")?;
        }
        let writes = self.writes.clone().ok_or("the writer never started")?;
        let endpoints = self.cluster.endpoints();
        let auth = format!("Bearer {}", endpoints.token);
        let agent = new_agent();
        for (i, url) in endpoints.data_urls.iter().enumerate() {
            let started = Instant::now();
            let (lost, corrupt) =
                writes.verify(&agent, std::slice::from_ref(url), &auth, "bitflip");
            eprintln!(
                "{} bitflip: read back through node {i} ({url}) in {:?}: lost={lost} corrupt={corrupt}",
                utc_now(),
                started.elapsed()
            );
            self.final_lost += lost;
            self.final_corrupt += corrupt;
        }
        Ok(0)
    }
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Writes acknowledged.
    pub acknowledged: u64,
    /// Blocks served or read back holding none of their allowed contents.
    pub lost: u64,
    /// Blocks the final reads could not get.
    pub corrupt: u64,
    /// Unrepaired checksum errors counted by the nodes plus corrupt blocks the offline
    /// scrubs found.
    pub unrepaired: u64,
    /// PGs not healthy at the end.
    pub degraded_pgs: u64,
    /// Bits flipped (one per damaged block).
    pub flips: u64,
    /// Blocks the nodes repaired (`cairn_pg_read_repairs_total` summed).
    pub repairs: u64,
    /// Reads during the run whose bytes were checked.
    pub reads_checked: u64,
    /// Details for stderr.
    pub details: String,
}

/// `cairn disk scrub --json` on `disk`: the corrupt blocks it lists as (chunk, block).
fn offline_scrub(cairn: &Path, disk: &Path) -> Result<(Vec<(String, u64)>, Value), String> {
    let output = Command::new(cairn)
        .args(["disk", "scrub", &path_str(disk), "--json"])
        .output()
        .map_err(|e| format!("run cairn disk scrub: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).map_err(|e| {
        format!(
            "cairn disk scrub {}: {e}: {stdout} {}",
            disk.display(),
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let corrupt: Vec<(String, u64)> = report["corrupt_blocks"]
        .as_array()
        .ok_or_else(|| format!("scrub {}: no corrupt_blocks: {report}", disk.display()))?
        .iter()
        .map(|b| {
            (
                b["chunk"].as_str().unwrap_or_default().to_string(),
                b["block_index"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    // Exit 1 iff it lists corrupt blocks; anything else is a failure to scrub.
    let expected = if corrupt.is_empty() { Some(0) } else { Some(1) };
    if output.status.code() != expected {
        return Err(format!(
            "cairn disk scrub {}: {} with {} corrupt blocks: {}",
            disk.display(),
            output.status,
            corrupt.len(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok((corrupt, report))
}

/// Runs the scenario in `dir` for about `seconds`.
pub fn run(cairn: &Path, dir: &Path, seconds: f64, seed: u64) -> Result<Report, String> {
    // No read cache: the final reads through each node must meet every replica's flipped
    // blocks on disk to repair them before the offline scrubs. (With a cache, a block served
    // from memory is good data too, but its damaged disk copy waits for the node's background
    // scrub, which this run does not wait for.)
    let options = NodeOptions {
        read_cache_mib: Some(0),
        ..NodeOptions::default()
    };
    let cluster = Cluster::start_with(cairn, dir, 1, NODES, options)?;
    for index in 0..cluster.len() {
        eprintln!("bitflip: {}", cluster.describe(index));
    }
    let mut victim = Bitflip {
        cluster,
        dir: dir.to_path_buf(),
        seed,
        ids: None,
        writes: None,
        stop: Arc::new(AtomicBool::new(false)),
        damage: Arc::new(Mutex::new(Damage::default())),
        reads: Arc::new(Mutex::new(ReadTally::default())),
        threads: Vec::new(),
        final_lost: 0,
        final_corrupt: 0,
        setup_error: None,
    };
    let verdict = run_with(&mut victim, seconds, seed, "bitflip");
    victim.stop.store(true, Ordering::Relaxed);
    for thread in victim.threads.drain(..) {
        let _ = thread.join();
    }
    let verdict = verdict?;
    let ids = victim.ids.ok_or("no volume ids")?;

    let (healthy, last) = victim.cluster.wait_health(HEALTH_DEADLINE, |h| {
        h["pgs_healthy"].as_u64() == Some(POOL_PGS)
    });
    let pgs_healthy = last.as_ref().map_or(0, pgs_consistent_and_healthy);
    if !healthy {
        eprintln!("bitflip: not healthy within {HEALTH_DEADLINE:?}: {last:?}");
    }
    thread::sleep(COUNTERS_SETTLE);
    let mut counters = BTreeMap::<String, u64>::new();
    let nodes = victim.cluster.nodes();
    for &index in &nodes {
        let Some(node) = victim.cluster.counters(index) else {
            return Err(format!(
                "{}: counters unreadable",
                victim.cluster.name(index)
            ));
        };
        for (name, value) in node {
            *counters.entry(name).or_default() += value;
        }
    }
    let counter = |name: &str| counters.get(name).copied().unwrap_or(0);

    // A clean stop (each node flushes its chunk stores on SIGTERM), then an offline scrub of
    // each disk: what it finds, no replay could hide.
    let damage = std::mem::take(&mut *victim.damage.lock().expect("not poisoned"));
    let reads = std::mem::take(&mut *victim.reads.lock().expect("not poisoned"));
    let mut scrub_corrupt = 0;
    let mut details = String::new();
    for (n, &index) in nodes.iter().enumerate() {
        victim.cluster.stop(index)?;
        let name = victim.cluster.name(index);
        let disk = victim.dir.join(&name).join("disk");
        let (corrupt, report) = offline_scrub(cairn, &disk)?;
        // A corrupt block the flipper damaged on this node, or one it never touched.
        let flipped: BTreeSet<(String, u64)> = damage
            .flips
            .iter()
            .filter(|f| f.node == n)
            .map(|f| {
                (
                    format!(
                        "{}/{:x}/{}",
                        ids.pool,
                        ids.owner,
                        f.block / BLOCKS_PER_CHUNK
                    ),
                    f.block % BLOCKS_PER_CHUNK,
                )
            })
            .collect();
        let of_flips = corrupt.iter().filter(|c| flipped.contains(c)).count();
        details.push_str(&format!(
            "bitflip: {name} offline scrub: chunks={} bytes_verified={} corrupt={} (flipped there: {of_flips}, never flipped: {})\n",
            report["chunks"],
            report["bytes_verified"],
            corrupt.len(),
            corrupt.len() - of_flips,
        ));
        for (chunk, block) in corrupt.iter().take(20) {
            details.push_str(&format!(
                "bitflip: {name} corrupt chunk {chunk} block {block} flipped={}\n",
                flipped.contains(&(chunk.clone(), *block))
            ));
        }
        scrub_corrupt += corrupt.len() as u64;
    }
    let unrepaired_counted = counter("cairn_pg_unrepaired_checksum_errors_total");
    // Damage a later write replaced before anything read it needs no repair.
    let writes = victim.writes.as_ref().ok_or("the writer never started")?;
    let overwritten = damage
        .flips
        .iter()
        .filter(|f| writes.acknowledged_write(f.block) > f.started)
        .count();
    details.push_str(&format!(
        "bitflip: flips_overwritten={overwritten} flip_misses={} flip_errors={} reads_refused={} reads_unchecked={} \
         bad_read_blocks={} final_lost={} final_corrupt={} unrepaired_counted={} \
         scrub_corrupt={} disk_corrupt_blocks={} scrubbed_bytes={} scrub_passes={} \
         writes_ambiguous={}",
        damage.misses,
        damage.flip_errors,
        reads.refused,
        reads.unchecked,
        reads.bad_blocks,
        victim.final_lost,
        victim.final_corrupt,
        unrepaired_counted,
        scrub_corrupt,
        counter("cairn_disk_corrupt_blocks_total"),
        counter("cairn_pg_scrubbed_bytes_total"),
        counter("cairn_pg_scrub_passes_total"),
        verdict.ambiguous,
    ));
    // One line per flip: node (n2 first), file, volume block, byte flipped, the last write
    // started then and the block's last acknowledged write at the end (greater: overwritten).
    let flips_file = dir.join("flips.log");
    let list: String = damage
        .flips
        .iter()
        .map(|f| {
            format!(
                "{} {} block {} byte {} started {} acknowledged {}\n",
                victim.cluster.name(nodes[f.node]),
                f.path.display(),
                f.block,
                f.offset,
                f.started,
                writes.acknowledged_write(f.block)
            )
        })
        .collect();
    let _ = fs::write(&flips_file, list);
    Ok(Report {
        acknowledged: verdict.acknowledged,
        lost: verdict.lost + victim.final_lost + reads.bad_blocks,
        corrupt: verdict.corrupt + victim.final_corrupt,
        unrepaired: unrepaired_counted + scrub_corrupt,
        degraded_pgs: POOL_PGS.saturating_sub(pgs_healthy),
        flips: damage.flips.len() as u64,
        repairs: counter("cairn_pg_read_repairs_total"),
        reads_checked: reads.checked,
        details,
    })
}
