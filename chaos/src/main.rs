//! `cairn-chaos`: runs fault scenarios against real processes.
//!
//! ```text
//! cairn-chaos chunkstore-kill DIR SECONDS [SEED]     kill -9 a chunk-store writer, verify, repeat
//! cairn-chaos chunkstore-worker DIR JOURNAL SEED      (internal) the process that gets killed
//! cairn-chaos raft-sim FIRST_SEED [COUNT]            deterministic Raft simulation, per seed
//! cairn-chaos raftlog-kill DIR SECONDS [SEED]        kill -9 a Raft node on its file log, verify
//! cairn-chaos meta-failover DIR SECONDS [MEMBERS]    kill -9 metadata leaders, wipe a member
//! cairn-chaos dev-kill DIR SECONDS [SEED]            kill -9 `cairn dev` under a volume writer
//! cairn-chaos nodes-kill DIR SECONDS [SEED]          kill -9 storage nodes under a volume writer
//! cairn-chaos iscsi-kill DIR SECONDS [SEED]          kill -9 nodes and iSCSI gateways under an
//!                                                    iSCSI writer
//! cairn-chaos kill-nodes DIR SECONDS [SEED]          kill -9 any member or node, moves, heal
//! cairn-chaos bitflip DIR SECONDS [SEED]             flip bits in chunk files under load, repair
//! cairn-chaos partition DIR SECONDS [SEED]           cut the network between members and nodes
//! cairn-chaos disk-faults DIR SECONDS [SEED]         fail disks with EIO, restart or replace them
//! ```
//!
//! `meta-failover`, `dev-kill`, `nodes-kill`, `kill-nodes` and `bitflip` run the `cairn` binary
//! next to this one, or `$CAIRN_BIN`.
//!
//! A scenario ends with one line, `<scenario>: acknowledged=N lost=L corrupt=C ...`, and exits
//! non-zero if L or C is not zero or nothing was acknowledged.
//!
//! `kill-nodes` runs 3 `cairn meta` members and 4 storage nodes (a 3-replica pool of 8 PGs)
//! under the volume writer; every second or two one of the 7 processes is SIGKILLed, mostly
//! for 0.2-1 s, one kill in four a storage node for 6-10 s (past the 2 s heartbeat timeout,
//! so the scheduler replaces its PG members; it comes back as a stale member). Afterwards the
//! cluster must heal (healthy, 8 PGs healthy, within 120 s), then every block is checked.
//! Its line: `kill-nodes: acknowledged=N lost=L corrupt=C unrepaired=U degraded_pgs=D`
//! (U: unrepaired checksum errors summed over the nodes; D: PGs not healthy when the heal
//! ended); it exits non-zero unless L, C, U and D are 0 and N is not. Kills, long outages and
//! the nodes' restore counters go to stderr; DIR keeps every process's log (`m1.log`..
//! `n7.log`) and `kills.log`.
//!
//! `bitflip` runs 1 `cairn meta` member and 3 storage nodes (ids 2-4, a 3-replica pool of 8
//! PGs, so every node holds every chunk) under the same volume writer; nothing is killed.
//! Every 100-300 ms a flipper picks a written, never-flipped volume block, asks a random node
//! where it lies (`GET /v1/debug/chunk-location/..`) and flips one bit of it in that node's
//! chunk file (one replica of a block damaged, ever); a reader reads random ranges through
//! random nodes, and any 200 must serve allowed contents. Afterwards the volume is read through
//! each node (every replica read, damaged blocks repaired), the chunk stores are flushed, the
//! nodes' counters summed, the nodes SIGKILLed and `cairn disk scrub --json` run on each disk.
//! Its line: `bitflip: acknowledged=N lost=L corrupt=C unrepaired=U degraded_pgs=D` (L: blocks
//! served or read back wrong; U: unrepaired checksum errors the nodes counted plus corrupt
//! blocks the offline scrubs found; D: PGs not healthy at the end); stderr has
//! `flips=F repairs=R reads_checked=K`. It exits non-zero unless L, C, U and D are 0 and N, F
//! and R are not. DIR keeps `m1.log`, `n2.log`..`n4.log` and `flips.log` (node, file, block,
//! byte of each flip).

use std::{path::Path, process::ExitCode};

use cairn_chaos::chunkstore_kill;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args[..] {
        ["chunkstore-kill", dir, seconds, ref seed @ ..] => {
            let Ok(seconds) = seconds.parse::<f64>() else {
                return usage();
            };
            let Some(seed) = seed_arg(seed) else {
                return usage();
            };
            eprintln!(
                "chunkstore-kill: seed {seed} (replay: cairn-chaos chunkstore-kill DIR {seconds} {seed})"
            );
            match chunkstore_kill::run(Path::new(dir), seconds, seed) {
                Ok(v) => {
                    println!(
                        "chunkstore-kill: acknowledged={} lost={} corrupt={} detected={}",
                        v.acknowledged, v.lost, v.corrupt, v.detected
                    );
                    let ok = v.lost == 0 && v.corrupt == 0 && v.acknowledged > 0;
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error) => {
                    eprintln!("chunkstore-kill: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        ["raft-sim", first, ref count @ ..] => {
            let Ok(first) = first.parse::<u64>() else {
                return usage();
            };
            let count = match count.first().map(|c| c.parse::<u64>()) {
                None => 1,
                Some(Ok(count)) => count,
                Some(Err(_)) => return usage(),
            };
            raft_sim_seeds(first, count)
        }
        ["raftlog-kill", dir, seconds, ref seed @ ..] => {
            let Ok(seconds) = seconds.parse::<f64>() else {
                return usage();
            };
            let Some(seed) = seed_arg(seed) else {
                return usage();
            };
            eprintln!(
                "raftlog-kill: seed {seed} (replay: cairn-chaos raftlog-kill DIR {seconds} {seed})"
            );
            match cairn_chaos::raftlog_kill::run(Path::new(dir), seconds, seed) {
                Ok(v) => {
                    println!(
                        "raftlog-kill: acknowledged={} lost={}",
                        v.acknowledged, v.lost
                    );
                    if v.lost == 0 && v.acknowledged > 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error) => {
                    eprintln!("raftlog-kill: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        ["raftlog-worker", dir, journal, seed] => {
            let Ok(seed) = seed.parse::<u64>() else {
                return usage();
            };
            match cairn_chaos::raftlog_kill::worker(Path::new(dir), Path::new(journal), seed) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("raftlog-worker: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        ["chunkstore-worker", dir, journal, seed] => {
            let Ok(seed) = seed.parse::<u64>() else {
                return usage();
            };
            match chunkstore_kill::worker(Path::new(dir), Path::new(journal), seed) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("chunkstore-worker: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        ["meta-failover", dir, seconds, ref members @ ..] => {
            let (Ok(seconds), Ok(members)) = (
                seconds.parse::<f64>(),
                members.first().copied().unwrap_or("3").parse::<u64>(),
            ) else {
                return usage();
            };
            meta_failover(Path::new(dir), seconds, members)
        }
        [
            name @ ("dev-kill" | "nodes-kill" | "iscsi-kill"),
            dir,
            seconds,
            ref seed @ ..,
        ] => {
            let (Ok(seconds), Some(seed)) = (seconds.parse::<f64>(), seed_arg(seed)) else {
                return usage();
            };
            eprintln!("{name}: seed {seed} (replay: cairn-chaos {name} DIR {seconds} {seed})");
            let (cairn, dir) = (cairn_binary(), Path::new(dir));
            let verdict = match name {
                "dev-kill" => cairn_chaos::dev_kill::run(&cairn, dir, seconds, seed),
                "nodes-kill" => cairn_chaos::nodes_kill::run(&cairn, dir, seconds, seed),
                _ => cairn_chaos::iscsi_kill::run(&cairn, dir, seconds, seed),
            };
            match verdict {
                Ok(v) => {
                    eprintln!("{name}: kills={} ambiguous={}", v.kills, v.ambiguous);
                    println!(
                        "{name}: acknowledged={} lost={} corrupt={}",
                        v.acknowledged, v.lost, v.corrupt
                    );
                    if v.lost == 0 && v.corrupt == 0 && v.acknowledged > 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error) => {
                    eprintln!("{name}: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        ["kill-nodes", dir, seconds, ref seed @ ..] => {
            let (Ok(seconds), Some(seed)) = (seconds.parse::<f64>(), seed_arg(seed)) else {
                return usage();
            };
            kill_nodes(Path::new(dir), seconds, seed)
        }
        ["partition", dir, seconds, ref seed @ ..] => {
            let (Ok(seconds), Some(seed)) = (seconds.parse::<f64>(), seed_arg(seed)) else {
                return usage();
            };
            partition(Path::new(dir), seconds, seed)
        }
        ["disk-faults", dir, seconds, ref seed @ ..] => {
            let (Ok(seconds), Some(seed)) = (seconds.parse::<f64>(), seed_arg(seed)) else {
                return usage();
            };
            disk_faults(Path::new(dir), seconds, seed)
        }
        ["bitflip", dir, seconds, ref seed @ ..] => {
            let (Ok(seconds), Some(seed)) = (seconds.parse::<f64>(), seed_arg(seed)) else {
                return usage();
            };
            bitflip(Path::new(dir), seconds, seed)
        }
        ["meta-bench", dir, seconds, clients] => {
            let (Ok(seconds), Ok(clients)) = (seconds.parse::<f64>(), clients.parse::<usize>())
            else {
                return usage();
            };
            let options = cairn_chaos::meta_failover::Options {
                cairn: cairn_binary(),
                dir: Path::new(dir).to_path_buf(),
                members: 3,
                seconds,
            };
            match cairn_chaos::meta_failover::bench(options, clients) {
                Ok(r) => {
                    println!(
                        "meta-bench: clients={clients} create_ops_per_s={:.0} read_ops_per_s={:.0}",
                        r.create_ops_per_s, r.read_ops_per_s
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("meta-bench: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}

/// The `cairn` binary: `$CAIRN_BIN`, else the one next to this executable.
fn cairn_binary() -> std::path::PathBuf {
    std::env::var_os("CAIRN_BIN")
        .map(std::path::PathBuf::from)
        .or_else(|| Some(std::env::current_exe().ok()?.with_file_name("cairn")))
        .unwrap_or_default()
}

fn meta_failover(dir: &Path, seconds: f64, members: u64) -> ExitCode {
    let options = cairn_chaos::meta_failover::Options {
        cairn: cairn_binary(),
        dir: dir.to_path_buf(),
        members,
        seconds,
    };
    match cairn_chaos::meta_failover::run(options) {
        Ok(v) => {
            eprintln!(
                "meta-failover: kills={} failover_max={:?} wiped_member_restored_by_snapshot={}",
                v.kills, v.failover_max, v.wiped_member_restored
            );
            println!(
                "meta-failover: acknowledged={} lost={} duplicated={}",
                v.acknowledged, v.lost, v.duplicated
            );
            let ok =
                v.lost == 0 && v.duplicated == 0 && v.acknowledged > 0 && v.wiped_member_restored;
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("meta-failover: {error}");
            ExitCode::FAILURE
        }
    }
}

fn kill_nodes(dir: &Path, seconds: f64, seed: u64) -> ExitCode {
    eprintln!("kill-nodes: seed {seed} (replay: cairn-chaos kill-nodes DIR {seconds} {seed})");
    let report = match cairn_chaos::kill_nodes::run(&cairn_binary(), dir, seconds, seed) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("kill-nodes: {error}");
            eprintln!("kill-nodes: logs kept in {}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    let counter = |name: &str| report.counters.get(name).copied().unwrap_or(0);
    let v = &report.verdict;
    eprintln!(
        "kill-nodes: kills={} long_outages={} restores={} restored_bytes={} replicas_dropped={} \
         ambiguous={} healed_after={:?}",
        v.kills,
        report.long_outages,
        counter("cairn_pg_restores_total"),
        counter("cairn_pg_restored_bytes_total"),
        counter("cairn_pg_replicas_dropped_total"),
        v.ambiguous,
        report.healed_after,
    );
    println!(
        "kill-nodes: acknowledged={} lost={} corrupt={} unrepaired={} degraded_pgs={}",
        v.acknowledged, v.lost, v.corrupt, report.unrepaired, report.degraded_pgs
    );
    let clean = v.lost == 0 && v.corrupt == 0 && report.unrepaired == 0;
    if clean && report.degraded_pgs == 0 && v.acknowledged > 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("kill-nodes: FAILED; logs kept in {}", dir.display());
        ExitCode::FAILURE
    }
}

fn partition(dir: &Path, seconds: f64, seed: u64) -> ExitCode {
    eprintln!("partition: seed {seed} (replay: cairn-chaos partition DIR {seconds} {seed})");
    let r = match cairn_chaos::partition::run(&cairn_binary(), dir, seconds, seed) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("partition: {error}");
            eprintln!("partition: logs kept in {}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "partition: cuts={} long_isolations={} seen_silent={} reads_checked={} reads_refused={} \
         ambiguous={} healed_after={:?}",
        r.cuts,
        r.long_isolations,
        r.seen_silent,
        r.reads_checked,
        r.reads_refused,
        r.ambiguous,
        r.healed_after,
    );
    println!(
        "partition: acknowledged={} lost={} corrupt={} unrepaired={} degraded_pgs={}",
        r.acknowledged, r.lost, r.corrupt, r.unrepaired, r.degraded_pgs
    );
    let clean = r.lost == 0 && r.corrupt == 0 && r.unrepaired == 0 && r.degraded_pgs == 0;
    let exercised = r.acknowledged > 0 && r.reads_checked > 0 && r.cuts > 0;
    if clean && exercised && r.seen_silent == r.long_isolations {
        ExitCode::SUCCESS
    } else {
        eprintln!("partition: FAILED; logs kept in {}", dir.display());
        ExitCode::FAILURE
    }
}

fn disk_faults(dir: &Path, seconds: f64, seed: u64) -> ExitCode {
    eprintln!("disk-faults: seed {seed} (replay: cairn-chaos disk-faults DIR {seconds} {seed})");
    let r = match cairn_chaos::disk_faults::run(&cairn_binary(), dir, seconds, seed) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("disk-faults: {error}");
            eprintln!("disk-faults: logs kept in {}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "disk-faults: faults={} seen_failed={} replaced={} reads_checked={} reads_refused={} \
         ambiguous={} healed_after={:?}",
        r.faults,
        r.seen_failed,
        r.replaced,
        r.reads_checked,
        r.reads_refused,
        r.ambiguous,
        r.healed_after,
    );
    println!(
        "disk-faults: acknowledged={} lost={} corrupt={} unrepaired={} degraded_pgs={}",
        r.acknowledged, r.lost, r.corrupt, r.unrepaired, r.degraded_pgs
    );
    let clean = r.lost == 0 && r.corrupt == 0 && r.unrepaired == 0 && r.degraded_pgs == 0;
    let exercised = r.acknowledged > 0 && r.faults > 0;
    if clean && exercised && r.seen_failed == r.faults {
        ExitCode::SUCCESS
    } else {
        eprintln!("disk-faults: FAILED; logs kept in {}", dir.display());
        ExitCode::FAILURE
    }
}

fn bitflip(dir: &Path, seconds: f64, seed: u64) -> ExitCode {
    eprintln!("bitflip: seed {seed} (replay: cairn-chaos bitflip DIR {seconds} {seed})");
    let r = match cairn_chaos::bitflip::run(&cairn_binary(), dir, seconds, seed) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("bitflip: {error}");
            eprintln!("bitflip: logs kept in {}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    eprintln!("{}", r.details);
    eprintln!(
        "bitflip: flips={} repairs={} reads_checked={}",
        r.flips, r.repairs, r.reads_checked
    );
    println!(
        "bitflip: acknowledged={} lost={} corrupt={} unrepaired={} degraded_pgs={}",
        r.acknowledged, r.lost, r.corrupt, r.unrepaired, r.degraded_pgs
    );
    let clean = r.lost == 0 && r.corrupt == 0 && r.unrepaired == 0 && r.degraded_pgs == 0;
    if clean && r.acknowledged > 0 && r.flips > 0 && r.repairs > 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("bitflip: FAILED; logs kept in {}", dir.display());
        ExitCode::FAILURE
    }
}

/// Runs seeds `first..first + count` of the Raft simulation; stops at the first failure.
fn raft_sim_seeds(first: u64, count: u64) -> ExitCode {
    let mut committed = 0;
    for seed in first..first + count {
        match cairn_chaos::raft_sim::run(seed) {
            Ok(report) => {
                committed += report.committed;
                eprintln!("seed {seed}: ok {report:?}");
            }
            Err(error) => {
                eprintln!("FAIL {error}");
                println!(
                    "raft-sim: seeds={count} failed_seed={seed} (replay: cairn-chaos raft-sim {seed})"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    println!("raft-sim: seeds={count} first={first} failed=0 committed={committed}");
    ExitCode::SUCCESS
}

/// The optional SEED argument: absent means a fresh seed from the clock (printed for replay).
fn seed_arg(seed: &[&str]) -> Option<u64> {
    match seed.first() {
        Some(text) => text.parse().ok(),
        None => Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
        ),
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: cairn-chaos chunkstore-kill DIR SECONDS [SEED]");
    eprintln!("       cairn-chaos raft-sim FIRST_SEED [COUNT]");
    eprintln!("       cairn-chaos raftlog-kill DIR SECONDS [SEED]");
    eprintln!("       cairn-chaos meta-failover DIR SECONDS [MEMBERS]");
    eprintln!("       cairn-chaos dev-kill DIR SECONDS [SEED]");
    eprintln!("       cairn-chaos nodes-kill DIR SECONDS [SEED]");
    eprintln!("       cairn-chaos iscsi-kill DIR SECONDS [SEED]");
    eprintln!("       cairn-chaos kill-nodes DIR SECONDS [SEED]");
    eprintln!("       cairn-chaos bitflip DIR SECONDS [SEED]");
    eprintln!("       cairn-chaos partition DIR SECONDS [SEED]");
    eprintln!("       cairn-chaos disk-faults DIR SECONDS [SEED]");
    eprintln!("       cairn-chaos meta-bench DIR SECONDS CLIENTS");
    ExitCode::from(2)
}
