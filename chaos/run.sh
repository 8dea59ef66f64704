#!/usr/bin/env bash
# Runs a chaos scenario for SECONDS and prints its one-line verdict.
#
# Usage: chaos/run.sh SCENARIO SECONDS [DIR]
#
# Scenarios:
#   chunkstore-kill   kill -9 a chunk-store writer at random moments; after each kill, reopen
#                     and check every block against the writer's fsynced journal. Ends with
#                     `chunkstore-kill: acknowledged=N lost=L corrupt=C detected=D`
#                     (L and C must be 0; D counts checksum errors on blocks whose last write
#                     was not yet flushed, which the contract allows).
#   raftlog-kill      kill -9 a Raft node (4 single-voter groups on the file log, small
#                     segments) at random moments; after each kill, check that every entry it
#                     had acknowledged is in the log. Ends with
#                     `raftlog-kill: acknowledged=N lost=L` (L must be 0).
#   dev-kill          kill -9 a `cairn dev` process at random moments while a client writes a
#                     volume through its data API; after the last restart every block must
#                     hold its last acknowledged content. Ends with
#                     `dev-kill: acknowledged=N lost=L corrupt=C` (L and C must be 0).
#   nodes-kill        one `cairn meta` and three `cairn node run` processes; a client writes a
#                     volume through the nodes' data APIs while one storage node at a time is
#                     killed with SIGKILL and restarted; the same checks as dev-kill. Ends with
#                     `nodes-kill: acknowledged=N lost=L corrupt=C` (L and C must be 0).
#   iscsi-kill        one `cairn meta`, three `cairn node run` and two `cairn gateway iscsi`
#                     processes; the same writer writes through an iSCSI session (CHAP) on one
#                     gateway, moving to the other when a write fails, while a storage node or
#                     (one kill in three) a gateway is SIGKILLed and restarted; the same checks
#                     as dev-kill. Ends with `iscsi-kill: acknowledged=N lost=L corrupt=C`.
#   kill-nodes        three `cairn meta` members (--heartbeat-timeout-s 2) and four storage
#                     nodes, a 3-replica pool of 8 PGs; under the same writer, every second or
#                     two one of the 7 processes is SIGKILLed (one down at a time): mostly for
#                     0.2-1 s, one kill in four a storage node for 6-10 s, so the scheduler
#                     replaces its PG members and it comes back stale. Then the cluster must
#                     heal (healthy, 8 PGs healthy, within 120 s) and every block is checked.
#                     Ends with `kill-nodes: acknowledged=N lost=L corrupt=C unrepaired=U
#                     degraded_pgs=D` (all but N must be 0; U sums the nodes' unrepaired
#                     checksum errors, D counts PGs not healthy after the heal). Kills, long
#                     outages and restores go to stderr; DIR keeps m1..m3.log, n4..n7.log and
#                     kills.log (UTC times of the kills).
#   bitflip           one `cairn meta` and three storage nodes (ids 2-4), a 3-replica pool of 8
#                     PGs by host; under the same writer (nothing killed), every 100-300 ms one
#                     bit of one written block is flipped in one node's chunk file (found with
#                     GET /v1/debug/chunk-location; a block is flipped once, on one node, so a
#                     good copy exists), and a reader reads random ranges through random nodes
#                     (a 200 must serve allowed contents). Afterwards the volume is read through
#                     each node (every replica verified, damage repaired), the chunk stores are
#                     flushed (rewrites of settled blocks make every PG compact), counters
#                     summed, nodes SIGKILLed and `cairn disk scrub --json` run on each disk.
#                     Ends with `bitflip: acknowledged=N lost=L corrupt=C unrepaired=U
#                     degraded_pgs=D` (all but N must be 0; U = unrepaired checksum errors the
#                     nodes counted + corrupt blocks the offline scrubs found); stderr has
#                     `flips=F repairs=R reads_checked=K` (F and R must not be 0). DIR keeps
#                     m1.log, n2..n4.log and flips.log (node, file, block and byte of each
#                     flip, and whether a later write replaced it).
#   partition         the kill-nodes cluster, each process in a network namespace of its own
#                     (needs root, iproute2, nftables); nothing is killed: every second or two
#                     the network is cut (one process from all others, 0.5-3 s, or a storage
#                     node for 6-10 s so its PG members move; a split of 2-3 processes from
#                     the rest; two processes from each other only), silently both ways, then
#                     healed. The writer and a reader keep using every node, cut or not: a
#                     read served must hold what the writes allow when it began (no stale
#                     read). Then the cluster must heal and every block is checked. Ends with
#                     `partition: acknowledged=N lost=L corrupt=C unrepaired=U degraded_pgs=D`
#                     (all but N must be 0; L includes blocks wrongly served to the reader).
#                     DIR keeps m1..m3.log, n4..n7.log and cuts.log.
#   disk-faults       the kill-nodes cluster with two disks per storage node, each behind a
#                     fault-injecting engine (`cairn node run --fault-injection`); under the
#                     writer and a reader, one disk at a time starts failing every write (half
#                     the faults), read or fdatasync with EIO. The node must take it out of
#                     service and the metadata leader see it failed (its PG members move at
#                     once); after 2-4 s the node is killed and restarts with a blank disk (the
#                     old one marked out) or, alternately, with the disk as it was. The cluster must be
#                     healthy before each fault and heal at the end; every block is checked.
#                     Ends with `disk-faults: acknowledged=N lost=L corrupt=C unrepaired=U
#                     degraded_pgs=D` (all but N must be 0); stderr has `faults=K
#                     seen_failed=S replaced=R` (S must equal K). DIR keeps faults.log.
# Not covered yet: a disk that turns slow (sub-health), a full disk, the Raft log device failing.
set -euo pipefail
scenario=${1:?usage: chaos/run.sh SCENARIO SECONDS [DIR]}
seconds=${2:?usage: chaos/run.sh SCENARIO SECONDS [DIR]}
dir=${3:-$(mktemp -d /var/tmp/cairn-chaos.XXXXXX)}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../scripts/prerequisites.sh
source "$here/../scripts/prerequisites.sh"
cairn_ensure_prerequisites
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}
case $scenario in
  chunkstore-kill|raftlog-kill)
    cargo build --quiet --release --manifest-path "$here/../Cargo.toml" -p cairn-chaos
    exec "$CARGO_TARGET_DIR/release/cairn-chaos" "$scenario" "$dir" "$seconds" ;;
  dev-kill|nodes-kill|iscsi-kill|kill-nodes|bitflip|partition|disk-faults)
    # The dev profile the tests share (one RocksDB build); cairn-chaos runs the cairn beside it.
    cairn_test_binaries
    exec "$CAIRN_CHAOS" "$scenario" "$dir" "$seconds" ;;
  *) echo "unknown scenario $scenario (known: chunkstore-kill, raftlog-kill, dev-kill, nodes-kill, iscsi-kill, kill-nodes, bitflip, partition, disk-faults)" >&2; exit 2 ;;
esac
