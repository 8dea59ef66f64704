//! The raft crate's integration tests: the log-store conformance model (file store against the
//! in-memory one), crash recovery of the file store (torn tails, corruption, rotation), and a
//! RaftNode restarting on a file log.

use std::{fs, path::Path};

use cairn_common::{GroupId, NodeId, ReplicaId};
use cairn_raft::{
    Apply, NodeConfig, Outbox, RaftNode,
    file_log::FileLogStore,
    log::{LogStore, MemLogStore, SnapshotKind},
    raft_types::{Entry, HardState, Snapshot, SnapshotMetadata, StateRole},
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Create(u64),
    Remove(u64),
    /// Compact at `back` entries before the end, or install a snapshot `back` past it.
    Snapshot {
        group: u64,
        back: u64,
        install: bool,
    },
    /// Append `count` entries to a group starting `back` entries before the end (0: after it).
    Append {
        group: u64,
        back: u64,
        count: u64,
        term: u64,
        size: usize,
    },
    HardState {
        group: u64,
        term: u64,
        vote: u64,
        commit: u64,
    },
    Sync,
}

/// Replica `n` of node 1; the log-store tests give it group `n`.
fn replica(n: u64) -> ReplicaId {
    ReplicaId::new(NodeId(1), n)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (1..4u64).prop_map(Op::Create),
        1 => (1..4u64).prop_map(Op::Remove),
        1 => (1..4u64, 0..4u64, any::<bool>())
            .prop_map(|(group, back, install)| Op::Snapshot { group, back, install }),
        5 => (1..4u64, 0..3u64, 1..5u64, 1..9u64, 0..300usize)
            .prop_map(|(group, back, count, term, size)| Op::Append { group, back, count, term, size }),
        2 => (1..4u64, 0..9u64, 0..6u64, 0..50u64)
            .prop_map(|(group, term, vote, commit)| Op::HardState { group, term, vote, commit }),
        3 => Just(Op::Sync),
    ]
}

/// Applies `op` to both stores; `lengths` tracks each group's (snapshot index, last index).
fn apply(
    op: &Op,
    stores: &mut [&mut dyn LogStoreDyn],
    lengths: &mut std::collections::BTreeMap<u64, (u64, u64)>,
) {
    match op {
        Op::Create(group) => {
            for store in stores.iter_mut() {
                store.create(replica(*group));
            }
        }
        Op::Remove(group) => {
            lengths.remove(group);
            for store in stores.iter_mut() {
                store.remove(replica(*group));
            }
        }
        Op::Snapshot {
            group,
            back,
            install,
        } => {
            let (base, last) = lengths.entry(*group).or_default();
            let (index, kind) = if *install {
                (*last + back + 1, SnapshotKind::Install)
            } else {
                (last.saturating_sub(*back), SnapshotKind::Compact)
            };
            if index <= *base {
                return;
            }
            *base = index;
            *last = (*last).max(index);
            if *install {
                *last = index;
            }
            let snapshot = Snapshot {
                data: vec![index as u8; 10],
                metadata: Some(SnapshotMetadata {
                    index,
                    term: 1,
                    conf_state: None,
                }),
            };
            for store in stores.iter_mut() {
                store.snapshot(replica(*group), &snapshot, kind);
            }
        }
        Op::Append {
            group,
            back,
            count,
            term,
            size,
        } => {
            let (base, length) = lengths.entry(*group).or_default();
            let first = length.saturating_sub(*back).max(*base) + 1;
            let entries: Vec<Entry> = (0..*count)
                .map(|i| Entry {
                    index: first + i,
                    term: *term,
                    data: vec![(first + i) as u8; *size],
                    ..Entry::default()
                })
                .collect();
            *length = first + count - 1;
            for store in stores.iter_mut() {
                store.append(replica(*group), &entries);
            }
        }
        Op::HardState {
            group,
            term,
            vote,
            commit,
        } => {
            let hard_state = HardState {
                term: *term,
                vote: *vote,
                commit: *commit,
            };
            for store in stores.iter_mut() {
                store.hard_state(replica(*group), &hard_state);
            }
        }
        Op::Sync => {
            for store in stores.iter_mut() {
                store.sync();
            }
        }
    }
}

/// Object-safe test view of a log store.
trait LogStoreDyn {
    fn create(&mut self, replica: ReplicaId);
    fn remove(&mut self, replica: ReplicaId);
    fn snapshot(&mut self, replica: ReplicaId, snapshot: &Snapshot, kind: SnapshotKind);
    fn append(&mut self, replica: ReplicaId, entries: &[Entry]);
    fn hard_state(&mut self, replica: ReplicaId, hard_state: &HardState);
    fn sync(&mut self);
    fn state(&self) -> String;
}

impl<L: LogStore> LogStoreDyn for L {
    fn create(&mut self, replica: ReplicaId) {
        self.create_group(replica, GroupId(replica.number()))
            .expect("create");
    }
    fn remove(&mut self, replica: ReplicaId) {
        self.remove_group(replica).expect("remove");
    }
    fn snapshot(&mut self, replica: ReplicaId, snapshot: &Snapshot, kind: SnapshotKind) {
        self.set_snapshot(replica, snapshot, kind)
            .expect("snapshot");
    }
    fn append(&mut self, replica: ReplicaId, entries: &[Entry]) {
        LogStore::append(self, replica, entries).expect("append");
    }
    fn hard_state(&mut self, replica: ReplicaId, hard_state: &HardState) {
        self.set_hard_state(replica, hard_state)
            .expect("hard state");
    }
    fn sync(&mut self) {
        LogStore::sync(self).expect("sync");
    }
    fn state(&self) -> String {
        format!("{:?}", self.load().expect("load"))
    }
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    paths
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Goal: the file store keeps exactly what the in-memory model keeps, across syncs,
    /// reopens and segment rotation. Method: the same random ops on both; compare what each
    /// would restart from after every sync and after a reopen of the file store.
    #[test]
    fn file_store_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = FileLogStore::open_with_segment_size(dir.path(), 2048).expect("open");
        let mut model = MemLogStore::new();
        let mut lengths = std::collections::BTreeMap::new();
        for op in &ops {
            apply(op, &mut [&mut file, &mut model], &mut lengths);
            if matches!(op, Op::Sync) {
                prop_assert_eq!(file.state(), model.state());
            }
        }
        // Unsynced writes are lost by a crash (drop without sync), as in the model.
        drop(file);
        model.crash();
        let reopened = FileLogStore::open_with_segment_size(dir.path(), 2048).expect("reopen");
        prop_assert_eq!(reopened.state(), model.state());
    }

    /// Goal: a crash during a sync never loses what an earlier sync made durable, and never
    /// invents anything. Method: cut the last segment anywhere inside the last sync's bytes,
    /// or append garbage after them; reopen.
    #[test]
    fn torn_tails_recover_to_the_previous_sync(cut in 0.0f64..1.0, garbage in proptest::collection::vec(any::<u8>(), 0..64)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = FileLogStore::open_with_segment_size(dir.path(), 64 << 10).expect("open");
        let g = replica(1);
        store.create_group(g, GroupId(1)).expect("create");
        let first: Vec<Entry> = (1..=3).map(|i| Entry { index: i, term: 1, data: vec![1; 40], ..Entry::default() }).collect();
        LogStore::append(&mut store, g, &first).expect("append");
        LogStore::sync(&mut store).expect("sync");
        let before = store.state();
        let (path, synced_len) = store.end_position();
        let second: Vec<Entry> = (2..=5).map(|i| Entry { index: i, term: 2, data: vec![2; 90], ..Entry::default() }).collect();
        LogStore::append(&mut store, g, &second).expect("append");
        store.set_hard_state(g, &HardState { term: 2, vote: 1, commit: 4 }).expect("hard state");
        LogStore::sync(&mut store).expect("sync");
        let after = store.state();
        let (_, full_len) = store.end_position();
        drop(store);
        let cut_at = (synced_len + ((full_len - synced_len) as f64 * cut) as u64) as usize;
        let mut bytes = fs::read(&path).expect("read");
        // The sync is padded with zeros to a block: a cut in the padding tears nothing.
        let data_end = synced_len as usize
            + 1
            + bytes[synced_len as usize..full_len as usize]
                .iter()
                .rposition(|b| *b != 0)
                .expect("the sync wrote records");
        // The last record (the end of the sync) ends in a 4-byte record count whose high
        // bytes may be zeros: its true end is up to 3 bytes past the last non-zero byte.
        // Garbage written there may or may not tear it; either outcome is a whole sync.
        let whole = cut_at >= data_end + 3;
        let either = (data_end..data_end + 3).contains(&cut_at);
        // The torn sync: what lies after the cut never reached the disk (the preallocated
        // zeros remain), and whatever garbage the device left sits where the write stopped.
        bytes[cut_at..full_len as usize].fill(0);
        let end = (cut_at + garbage.len()).min(bytes.len());
        bytes[cut_at..end].copy_from_slice(&garbage[..end - cut_at]);
        fs::write(&path, &bytes).expect("write");
        let mut reopened = FileLogStore::open_with_segment_size(dir.path(), 64 << 10).expect("a torn tail is not an error");
        let state = reopened.state();
        if either {
            prop_assert!(state == after || state == before, "{state:?}");
        } else if whole {
            prop_assert_eq!(&state, &after);
        } else {
            prop_assert_eq!(&state, &before);
        }
        // The store goes on appending after the truncated tail.
        let next = Entry { index: 4, term: 3, ..Entry::default() };
        LogStore::append(&mut reopened, g, &[next]).expect("append");
        LogStore::sync(&mut reopened).expect("sync");
        let expected = reopened.state();
        drop(reopened);
        prop_assert_eq!(FileLogStore::open_with_segment_size(dir.path(), 64 << 10).expect("reopen").state(), expected);
    }
}

#[test]
fn corruption_before_the_tail_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = FileLogStore::open_with_segment_size(dir.path(), 256).expect("open");
    let g = replica(7);
    store.create_group(g, GroupId(7)).expect("create");
    for i in 1..=20u64 {
        let entry = Entry {
            index: i,
            term: 1,
            data: vec![i as u8; 100],
            ..Entry::default()
        };
        LogStore::append(&mut store, g, &[entry]).expect("append");
        LogStore::sync(&mut store).expect("sync");
    }
    drop(store);
    let paths = segments(dir.path());
    assert!(paths.len() > 3, "small segments rotate: {}", paths.len());
    let reopened = FileLogStore::open_with_segment_size(dir.path(), 256).expect("reopen");
    assert_eq!(reopened.load().expect("load")[&g].entries.len(), 20);
    drop(reopened);
    let middle = &paths[1];
    let mut bytes = fs::read(middle).expect("read");
    // Inside the first record, which starts at the block after the header: synced data, not
    // the zero tail.
    let at = cairn_raft::file_log::SYNC_ALIGN_BYTES + 20;
    bytes[at] ^= 0x01;
    fs::write(middle, &bytes).expect("write");
    let error = FileLogStore::open_with_segment_size(dir.path(), 256)
        .err()
        .expect("corruption is an error");
    assert!(error.to_string().contains("corrupt record"), "{error}");
}

/// Goal: compaction lets old segments go, and what remains restarts to the same state.
/// Method: small segments, many appends, a compaction every few syncs; count the segments and
/// compare the reopened state with the live one.
#[test]
fn compaction_cleans_old_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Sixteen blocks: every sync takes at least one.
    let mut store = FileLogStore::open_with_segment_size(dir.path(), 16 << 12).expect("open");
    let groups = [replica(1), replica(2)];
    for g in groups {
        store.create_group(g, GroupId(g.number())).expect("create");
    }
    let mut most = 0;
    let mut recycled_seen = false;
    for i in 1..=400u64 {
        for g in groups {
            let entry = Entry {
                index: i,
                term: 1,
                data: vec![i as u8; 60],
                ..Entry::default()
            };
            LogStore::append(&mut store, g, &[entry]).expect("append");
            if i % 25 == 0 {
                let snapshot = Snapshot {
                    data: vec![g.number() as u8; 100],
                    metadata: Some(SnapshotMetadata {
                        index: i - 3,
                        term: 1,
                        conf_state: None,
                    }),
                };
                store
                    .set_snapshot(g, &snapshot, SnapshotKind::Compact)
                    .expect("snapshot");
            }
        }
        LogStore::sync(&mut store).expect("sync");
        most = most.max(store.segment_count().expect("count"));
        recycled_seen |= fs::read_dir(dir.path()).expect("readdir").any(|e| {
            e.expect("entry")
                .file_name()
                .to_string_lossy()
                .starts_with("recycled-")
        });
    }
    assert!(recycled_seen, "cleaned segments are set aside for reuse");
    assert!(
        segments(dir.path()).len() <= 4 && most <= 5,
        "segments: {} now, {most} at most",
        segments(dir.path()).len()
    );
    let live = store.state();
    drop(store);
    let reopened = FileLogStore::open_with_segment_size(dir.path(), 16 << 12).expect("reopen");
    assert_eq!(reopened.state(), live);
    let state = reopened.load().expect("load");
    assert_eq!(state[&replica(1)].snapshot.get_metadata().index, 397);
    assert_eq!(state[&replica(1)].entries.len(), 3);
    assert_eq!(state[&replica(2)].group, GroupId(2));
}

/// Goal: a segment a crash left empty (renamed into place, its first sync lost) is written on,
/// and cleaning the segments before it loses no replica. Method: write into small
/// segments, add an empty next segment by hand as the crash would leave it, reopen, compact
/// everything and write on until the old segments are cleaned, reopen again.
#[test]
fn a_segment_left_empty_by_a_crash_still_carries_the_replicas_forward() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = FileLogStore::open_with_segment_size(dir.path(), 512).expect("open");
    let g = replica(3);
    store.create_group(g, GroupId(3)).expect("create");
    let entry = |i: u64| Entry {
        index: i,
        term: 1,
        data: vec![i as u8; 80],
        ..Entry::default()
    };
    for i in 1..=12u64 {
        LogStore::append(&mut store, g, &[entry(i)]).expect("append");
        LogStore::sync(&mut store).expect("sync");
    }
    drop(store);
    let last = segments(dir.path()).pop().expect("a segment");
    let number = u64::from_str_radix(
        last.file_stem()
            .and_then(|s| s.to_str())
            .expect("segment name"),
        16,
    )
    .expect("hex number");
    // What `open` or a rotation makes before the first sync: the header, then zeros.
    let mut empty = fs::read(&last).expect("read")[..16].to_vec();
    empty.resize(512, 0);
    fs::write(dir.path().join(format!("{:016x}.seg", number + 1)), &empty).expect("write");
    let mut store = FileLogStore::open_with_segment_size(dir.path(), 512).expect("reopen");
    let snapshot = Snapshot {
        data: vec![1],
        metadata: Some(SnapshotMetadata {
            index: 12,
            term: 1,
            conf_state: None,
        }),
    };
    store
        .set_snapshot(g, &snapshot, SnapshotKind::Compact)
        .expect("compact");
    for i in 13..=40u64 {
        LogStore::append(&mut store, g, &[entry(i)]).expect("append");
        if i % 4 == 0 {
            let covered = Snapshot {
                metadata: Some(SnapshotMetadata {
                    index: i,
                    term: 1,
                    conf_state: None,
                }),
                ..snapshot.clone()
            };
            store
                .set_snapshot(g, &covered, SnapshotKind::Compact)
                .expect("compact");
        }
        LogStore::sync(&mut store).expect("sync");
    }
    let first_left = segments(dir.path()).first().cloned().expect("segments");
    assert!(
        first_left > last,
        "the segments from before the crash were cleaned"
    );
    let live = store.state();
    drop(store);
    let reopened = FileLogStore::open_with_segment_size(dir.path(), 512).expect("reopen");
    assert_eq!(reopened.state(), live);
    assert_eq!(reopened.load().expect("load")[&g].group, GroupId(3));
}

/// Goal: a snapshot larger than one log record (the metadata service's state with its object
/// index) is kept whole: written as parts, carried into new segments at each rotation, and
/// read back at reopen, without making every sync rotate; the log refuses one over its limit
/// instead of failing. Method: a 40 MiB snapshot (three parts) in 1 MiB segments, 3.6 MB of
/// entries after it, count the segments, reopen; then a snapshot of 1 GiB + 1.
#[test]
fn snapshots_larger_than_a_record_go_in_parts() {
    use cairn_raft::file_log::{SNAPSHOT_BYTES_MAX, SNAPSHOT_PART_BYTES};
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let mut store = FileLogStore::open_with_segment_size(dir.path(), 1 << 20).expect("open");
    let g = replica(3);
    store.create_group(g, GroupId(3)).expect("create");
    let entry = |i: u64| Entry {
        index: i,
        term: 1,
        data: vec![i as u8; 100 << 10],
        ..Entry::default()
    };
    for i in 1..=4u64 {
        LogStore::append(&mut store, g, &[entry(i)]).expect("append");
    }
    LogStore::sync(&mut store).expect("sync");
    let data: Vec<u8> = (0..40u64 << 20).map(|i| (i * 31 % 251) as u8).collect();
    assert!(data.len() > 2 * SNAPSHOT_PART_BYTES);
    let snapshot = Snapshot {
        data,
        metadata: Some(SnapshotMetadata {
            index: 4,
            term: 1,
            conf_state: None,
        }),
    };
    store
        .set_snapshot(g, &snapshot, SnapshotKind::Compact)
        .expect("compact");
    LogStore::sync(&mut store).expect("sync");
    for i in 5..=40u64 {
        LogStore::append(&mut store, g, &[entry(i)]).expect("append");
        LogStore::sync(&mut store).expect("sync");
    }
    // 3.6 MB of entries in 1 MiB segments: a handful of segments, each starting with the
    // snapshot's carry-forward, which does not count against the segment size (counted, it
    // made every sync rotate and rewrite the 40 MiB: 37 segments).
    let count = segments(dir.path()).len();
    assert!(count <= 8, "{count} segments");
    drop(store);
    let reopened = FileLogStore::open_with_segment_size(dir.path(), 1 << 20).expect("reopen");
    let state = &reopened.load().expect("load")[&g];
    assert!(state.snapshot == snapshot, "the snapshot reads back whole");
    assert_eq!(state.entries.first().map(|e| e.index), Some(5));
    assert_eq!(state.entries.len(), 36);

    let mut store = reopened;
    let too_large = Snapshot {
        data: vec![0; SNAPSHOT_BYTES_MAX + 1],
        ..snapshot
    };
    assert!(
        store
            .set_snapshot(g, &too_large, SnapshotKind::Compact)
            .is_err()
    );
}

/// Goal: ticking slice by slice ticks every replica at the rate of whole ticks, and a slice
/// ticks only its own replicas. Method: five single-voter groups (replica numbers 1-5) on one
/// node; slice 1 of 5 alone, for longer than any election timeout, elects only replica 1
/// (number 1 is 1 mod 5); then every slice in turn for as many whole ticks elects the rest.
#[test]
fn tick_slices_tick_their_replicas_at_the_whole_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = RaftNode::new(
        NodeConfig::new(NodeId(1)),
        FileLogStore::open(dir.path()).expect("open"),
    )
    .expect("node");
    let replicas: Vec<ReplicaId> = (1..=5).map(replica).collect();
    for (n, r) in replicas.iter().enumerate() {
        node.create_group(GroupId(n as u64 + 1), *r, &[*r])
            .expect("create");
    }
    let run = |node: &mut RaftNode<FileLogStore>| {
        node.process_ready(&mut Outbox::default(), |_, _, _| {})
            .expect("ready");
    };
    let leaders = |node: &RaftNode<FileLogStore>| -> Vec<u64> {
        replicas
            .iter()
            .filter(|r| node.status(**r).expect("hosted").role == StateRole::Leader)
            .map(|r| r.0 % 5)
            .collect()
    };
    // More whole ticks than the longest election timeout (20 in the default config).
    for _ in 0..40 {
        node.tick_slice(1, 5);
        run(&mut node);
    }
    assert_eq!(leaders(&node), vec![1], "only slice 1's replica ticked");
    for _ in 0..40 {
        for slice in 0..5 {
            node.tick_slice(slice, 5);
            run(&mut node);
        }
    }
    assert_eq!(
        leaders(&node).len(),
        5,
        "every slice ticked: every group elected"
    );
}

/// Goal: a node restarted on its file log comes back with its groups and replays its committed
/// entries in order; after a compaction it restores the snapshot first and replays the rest.
/// Method: a single-voter group elects itself, commits proposals, compacts, restarts.
#[test]
fn raft_node_restarts_from_its_file_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = NodeConfig::new(NodeId(1));
    let g = GroupId(3);
    let r = replica(1);
    let run = |node: &mut RaftNode<FileLogStore>, applied: &mut Vec<Vec<u8>>| {
        let mut outbox = Outbox::default();
        node.process_ready(&mut outbox, |_, _, apply| {
            if let Apply::Entry(entry) = apply {
                applied.push(entry.data.clone())
            }
        })
        .expect("ready");
        assert!(outbox.is_empty(), "a single-voter group sends nothing");
    };
    let mut applied = Vec::new();
    let mut node = RaftNode::new(
        config.clone(),
        FileLogStore::open(dir.path()).expect("open"),
    )
    .expect("node");
    node.create_group(g, r, &[r]).expect("create");
    for _ in 0..40 {
        node.tick();
        run(&mut node, &mut applied);
    }
    for i in 0..10u8 {
        node.propose(r, vec![i; 8]).expect("leader accepts");
        run(&mut node, &mut applied);
    }
    let data: Vec<Vec<u8>> = applied.iter().filter(|d| !d.is_empty()).cloned().collect();
    assert_eq!(data, (0..10u8).map(|i| vec![i; 8]).collect::<Vec<_>>());
    drop(node);
    let data = restart_and_replay(&config, dir.path(), (r, g), data);
    // Compact after the fifth proposal's worth of state, then two more proposals.
    let mut node = RaftNode::new(
        config.clone(),
        FileLogStore::open(dir.path()).expect("reopen"),
    )
    .expect("restart");
    let mut applied = Vec::new();
    for _ in 0..40 {
        node.tick();
        run(&mut node, &mut applied);
    }
    node.compact(r, b"state after ten".to_vec())
        .expect("compact");
    for i in 10..12u8 {
        node.propose(r, vec![i; 8]).expect("leader accepts");
        run(&mut node, &mut applied);
    }
    drop(node);
    let mut restored = Vec::new();
    let mut node =
        RaftNode::new(config, FileLogStore::open(dir.path()).expect("reopen")).expect("restart");
    for _ in 0..40 {
        node.tick();
        let mut outbox = Outbox::default();
        node.process_ready(&mut outbox, |_, _, apply| match apply {
            Apply::Snapshot { data, .. } => restored.push(data.to_vec()),
            Apply::Entry(entry) if !entry.data.is_empty() => restored.push(entry.data.clone()),
            Apply::Entry(_) => {}
        })
        .expect("ready");
    }
    assert_eq!(
        restored[0],
        b"state after ten".to_vec(),
        "the snapshot comes first"
    );
    assert_eq!(
        &restored[1..],
        &[vec![10u8; 8], vec![11u8; 8]],
        "then the entries after it"
    );
    assert_eq!(data.len(), 10);
}

fn restart_and_replay(
    config: &NodeConfig,
    dir: &Path,
    hosted: (ReplicaId, GroupId),
    data: Vec<Vec<u8>>,
) -> Vec<Vec<u8>> {
    let run = |node: &mut RaftNode<FileLogStore>, applied: &mut Vec<Vec<u8>>| {
        let mut outbox = Outbox::default();
        node.process_ready(&mut outbox, |_, _, apply| {
            if let Apply::Entry(entry) = apply {
                applied.push(entry.data.clone())
            }
        })
        .expect("ready");
    };

    let mut replayed = Vec::new();
    let mut node =
        RaftNode::new(config.clone(), FileLogStore::open(dir).expect("reopen")).expect("restart");
    assert_eq!(node.replicas().collect::<Vec<_>>(), vec![hosted]);
    for _ in 0..40 {
        node.tick();
        run(&mut node, &mut replayed);
    }
    let replayed: Vec<Vec<u8>> = replayed.into_iter().filter(|d| !d.is_empty()).collect();
    assert_eq!(replayed, data, "committed entries replay after restart");
    replayed
}

mod transport {
    use std::{collections::BTreeMap, sync::Arc, time::Duration};

    use cairn_common::{GroupId, NodeId, ReplicaId};
    use cairn_raft::{
        NodeConfig, Outbox, RaftNode,
        log::MemLogStore,
        raft_types::Message,
        tls::ClusterCa,
        transport::{Incoming, TcpTransport, Transport, decode_frame_body},
    };
    use proptest::prelude::*;
    use tokio::{io::AsyncWriteExt, sync::mpsc};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn localhost() -> std::net::SocketAddr {
        "127.0.0.1:0".parse().expect("addr")
    }

    async fn receive(incoming: &mut mpsc::Receiver<Incoming>) -> Option<Incoming> {
        tokio::time::timeout(Duration::from_secs(10), incoming.recv())
            .await
            .ok()
            .flatten()
    }

    /// A heartbeat from node `from`'s replica 1 to node `to`'s.
    fn heartbeat(from: u64, to: u64, term: u64) -> Message {
        Message {
            to: ReplicaId::new(NodeId(to), 1).0,
            from: ReplicaId::new(NodeId(from), 1).0,
            term,
            msg_type: 8,
            ..Message::default()
        }
    }

    /// Goal: batches reach the peer intact over mutual TLS. Method: two transports on loopback.
    #[test]
    fn batches_cross_mutual_tls_intact() {
        runtime().block_on(async {
            let ca = ClusterCa::generate().expect("ca");
            let (a, _, _) = TcpTransport::start(&ca.issue(NodeId(1)).expect("id"), localhost())
                .await
                .expect("a");
            let (_b, b_addr, mut b_in) =
                TcpTransport::start(&ca.issue(NodeId(2)).expect("id"), localhost())
                    .await
                    .expect("b");
            a.set_peer_address(NodeId(2), b_addr);
            let batch = vec![
                (GroupId(5), heartbeat(1, 2, 7)),
                (GroupId(9), heartbeat(1, 2, 8)),
            ];
            assert!(a.send(NodeId(2), batch.clone()));
            let (from, got) = receive(&mut b_in).await.expect("delivered");
            assert_eq!(from, NodeId(1));
            assert_eq!(got, batch);
            assert!(
                !a.send(NodeId(3), batch),
                "unknown peers are refused, not queued"
            );
        });
    }

    /// Goal: a peer without a certificate from the cluster CA never gets a message in. Method:
    /// a node with its own CA dials a cluster node; the handshake is refused and nothing arrives.
    #[test]
    fn a_peer_from_another_ca_is_refused() {
        runtime().block_on(async {
            let ca = ClusterCa::generate().expect("ca");
            let rogue_ca = ClusterCa::generate().expect("rogue ca");
            let (b, b_addr, mut b_in) =
                TcpTransport::start(&ca.issue(NodeId(2)).expect("id"), localhost())
                    .await
                    .expect("b");
            let (rogue, _, _) =
                TcpTransport::start(&rogue_ca.issue(NodeId(1)).expect("id"), localhost())
                    .await
                    .expect("rogue");
            rogue.set_peer_address(NodeId(2), b_addr);
            assert!(rogue.send(NodeId(2), vec![(GroupId(1), heartbeat(1, 2, 1))]));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while b
                .stats()
                .handshakes_refused
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the handshake must be refused"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                b_in.try_recv().is_err(),
                "nothing from the rogue node is delivered"
            );
        });
    }

    /// Goal: garbage on the port closes that connection only. Method: plain TCP junk, then a
    /// valid peer's batch still arrives.
    #[test]
    fn garbage_on_the_port_is_dropped() {
        runtime().block_on(async {
            let ca = ClusterCa::generate().expect("ca");
            let (_b, b_addr, mut b_in) =
                TcpTransport::start(&ca.issue(NodeId(2)).expect("id"), localhost())
                    .await
                    .expect("b");
            let mut junk = tokio::net::TcpStream::connect(b_addr)
                .await
                .expect("connect");
            junk.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5])
                .await
                .expect("write");
            junk.write_all(&vec![0xab; 70_000]).await.ok();
            drop(junk);
            let (a, _, _) = TcpTransport::start(&ca.issue(NodeId(1)).expect("id"), localhost())
                .await
                .expect("a");
            a.set_peer_address(NodeId(2), b_addr);
            assert!(a.send(NodeId(2), vec![(GroupId(3), heartbeat(1, 2, 2))]));
            assert!(receive(&mut b_in).await.is_some(), "the node still serves");
        });
    }

    /// Goal: a cluster member cannot pose as another node. Method: node 1's genuine
    /// certificate on a raw TLS connection, frames claiming to come from node 3; then the same
    /// connection setup with honest frames is delivered.
    #[test]
    fn a_member_posing_as_another_node_is_cut_off() {
        use cairn_raft::{
            tls::server_name,
            transport::{WireBatch, WireItem, encode_frame},
        };
        runtime().block_on(async {
            let ca = ClusterCa::generate().expect("ca");
            let (b, b_addr, mut b_in) =
                TcpTransport::start(&ca.issue(NodeId(2)).expect("id"), localhost())
                    .await
                    .expect("b");
            let member = ca.issue(NodeId(1)).expect("id");
            let connector =
                tokio_rustls::TlsConnector::from(member.client_config().expect("client config"));
            let send_as = |from: u64| {
                let connector = connector.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect(b_addr)
                        .await
                        .expect("connect");
                    let mut tls = connector
                        .connect(server_name(NodeId(2)), tcp)
                        .await
                        .expect("handshake");
                    let item = WireItem {
                        group: 1,
                        message: Some(heartbeat(from, 2, 1)),
                        part: None,
                    };
                    tls.write_all(&encode_frame(&WireBatch {
                        from,
                        items: vec![item],
                    }))
                    .await
                    .expect("write");
                    tls.flush().await.expect("flush");
                    tls
                }
            };
            let _forged = send_as(3).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while b
                .stats()
                .impostors
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the impostor must be cut off"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(b_in.try_recv().is_err(), "nothing forged is delivered");
            let _honest = send_as(1).await;
            let (from, _) = receive(&mut b_in).await.expect("honest frames arrive");
            assert_eq!(from, NodeId(1));
        });
    }

    /// Goal: a node cannot speak for a replica hosted elsewhere. Method: an honest sender id
    /// with a message whose sending replica names another node fails to decode.
    #[test]
    fn a_message_from_a_replica_the_sender_does_not_host_is_refused() {
        use cairn_raft::transport::{WireBatch, WireItem, encode_frame};
        let frame = encode_frame(&WireBatch {
            from: 1,
            items: vec![WireItem {
                group: 1,
                message: Some(heartbeat(3, 2, 1)),
                part: None,
            }],
        });
        let error = decode_frame_body(&frame[4..]).expect_err("refused");
        assert!(error.contains("n3"), "{error}");
        let honest = encode_frame(&WireBatch {
            from: 3,
            items: vec![WireItem {
                group: 1,
                message: Some(heartbeat(3, 2, 1)),
                part: None,
            }],
        });
        assert!(decode_frame_body(&honest[4..]).is_ok());
    }

    /// A snapshot message from node 1's replica to node 2's, carrying `size` bytes.
    fn snapshot_message(size: usize, seed: u8) -> Message {
        use cairn_raft::raft_types::{Snapshot, SnapshotMetadata};
        let data: Vec<u8> = (0..size)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        Message {
            msg_type: cairn_raft::raft_types::MessageType::MsgSnapshot as i32,
            snapshot: Some(Snapshot {
                data,
                metadata: Some(SnapshotMetadata {
                    index: 77,
                    term: 6,
                    conf_state: None,
                }),
            }),
            ..heartbeat(1, 2, 6)
        }
    }

    /// Goal: a snapshot larger than a part crosses as a stream of part frames and arrives
    /// whole, with other traffic of the same batch. Method: 5 MiB + 123 bytes of data and a
    /// heartbeat in one batch between two transports.
    #[test]
    fn a_large_snapshot_streams_in_parts() {
        use cairn_raft::transport::SNAPSHOT_PART_BYTES;
        runtime().block_on(async {
            let ca = ClusterCa::generate().expect("ca");
            let (a, _, _) = TcpTransport::start(&ca.issue(NodeId(1)).expect("id"), localhost())
                .await
                .expect("a");
            let (b, b_addr, mut b_in) =
                TcpTransport::start(&ca.issue(NodeId(2)).expect("id"), localhost())
                    .await
                    .expect("b");
            a.set_peer_address(NodeId(2), b_addr);
            let snapshot = snapshot_message(5 * SNAPSHOT_PART_BYTES + 123, 7);
            let batch = vec![
                (GroupId(4), snapshot.clone()),
                (GroupId(5), heartbeat(1, 2, 9)),
            ];
            assert!(a.send(NodeId(2), batch));
            let mut got = Vec::new();
            while got.len() < 2 {
                let (from, items) = receive(&mut b_in).await.expect("delivered");
                assert_eq!(from, NodeId(1));
                got.extend(items);
            }
            assert!(got.contains(&(GroupId(5), heartbeat(1, 2, 9))));
            assert!(
                got.contains(&(GroupId(4), snapshot)),
                "the snapshot arrives whole"
            );
            let frames = b
                .stats()
                .frames_received
                .load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(frames, 1 + 6, "one frame of messages, six parts");
        });
    }

    /// Goal: a stream with a part missing is discarded, not delivered corrupt, and the next
    /// whole stream on the same connection arrives. Method: frames of a streamed snapshot
    /// written on a raw TLS connection with its second part left out, then a complete stream.
    #[test]
    fn a_snapshot_stream_with_a_gap_is_discarded() {
        use cairn_raft::{tls::server_name, transport::encode_frames};
        runtime().block_on(async {
            let ca = ClusterCa::generate().expect("ca");
            let (b, b_addr, mut b_in) =
                TcpTransport::start(&ca.issue(NodeId(2)).expect("id"), localhost())
                    .await
                    .expect("b");
            let member = ca.issue(NodeId(1)).expect("id");
            let connector =
                tokio_rustls::TlsConnector::from(member.client_config().expect("client config"));
            let tcp = tokio::net::TcpStream::connect(b_addr)
                .await
                .expect("connect");
            let mut tls = connector
                .connect(server_name(NodeId(2)), tcp)
                .await
                .expect("handshake");
            let broken = snapshot_message(3 * (1 << 20) + 5, 1);
            let mut frames = encode_frames(NodeId(1), vec![(GroupId(3), broken)]);
            assert_eq!(frames.len(), 4);
            frames.remove(1);
            let whole = snapshot_message((1 << 20) + 9, 2);
            frames.extend(encode_frames(NodeId(1), vec![(GroupId(3), whole.clone())]));
            for frame in frames {
                tls.write_all(&frame).await.expect("write");
            }
            tls.flush().await.expect("flush");
            let (_, items) = receive(&mut b_in).await.expect("the whole stream arrives");
            assert_eq!(items, vec![(GroupId(3), whole)]);
            assert!(b_in.try_recv().is_err(), "nothing of the broken stream");
            assert!(b.stats().dropped.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        });
    }

    /// Goal: parts that lie about their place or size are refused at decoding.
    #[test]
    fn malformed_snapshot_parts_are_refused() {
        use cairn_raft::transport::{
            SNAPSHOT_BYTES_MAX, SnapshotPart, WireBatch, WireItem, encode_frame,
        };
        let frame = |message: Option<Message>, offset: u64, total: u64, len: usize| {
            encode_frame(&WireBatch {
                from: 1,
                items: vec![WireItem {
                    group: 1,
                    message,
                    part: Some(SnapshotPart {
                        offset,
                        total,
                        data: vec![1; len],
                    }),
                }],
            })
        };
        let decode = |f: Vec<u8>| decode_frame_body(&f[4..]);
        assert!(decode(frame(None, 4, 10, 6)).is_ok(), "a middle part");
        assert!(decode(frame(None, 8, 10, 6)).is_err(), "past the total");
        assert!(
            decode(frame(None, 0, SNAPSHOT_BYTES_MAX + 1, 6)).is_err(),
            "too big"
        );
        assert!(decode(frame(None, 0, 10, 0)).is_err(), "empty part");
        let not_snapshot = Some(heartbeat(1, 2, 1));
        assert!(
            decode(frame(not_snapshot, 0, 10, 6)).is_err(),
            "headed by a heartbeat"
        );
        let head = snapshot_message(0, 0);
        assert!(
            decode(frame(Some(head.clone()), 0, 10, 6)).is_ok(),
            "a first part"
        );
        assert!(
            decode(frame(Some(head), 4, 10, 6)).is_err(),
            "a head not at 0"
        );
    }

    proptest! {
        /// Goal: no frame body makes decoding panic.
        #[test]
        fn frame_decoding_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame_body(&body);
            let mut versioned = vec![1u8];
            versioned.extend_from_slice(&body);
            let _ = decode_frame_body(&versioned);
        }
    }

    /// Goal: Raft groups replicate over the real transport. Method: three nodes, two groups,
    /// each node driven by its own task (tick every 5 ms, step what arrives, process_ready,
    /// send the outbox); proposals commit on every node.
    #[test]
    fn three_nodes_commit_over_mutual_tls() {
        runtime().block_on(async {
            let ca = ClusterCa::generate().expect("ca");
            let ids = [NodeId(1), NodeId(2), NodeId(3)];
            let groups = [GroupId(1), GroupId(2)];
            let mut started = Vec::new();
            for id in ids {
                started.push(TcpTransport::start(&ca.issue(id).expect("id"), localhost()).await.expect("start"));
            }
            for (transport, _, _) in &started {
                for (peer, (_, addr, _)) in ids.iter().zip(&started) {
                    transport.set_peer_address(*peer, *addr);
                }
            }
            let (applied_tx, mut applied_rx) = mpsc::channel::<(NodeId, GroupId, Vec<u8>)>(1024);
            let (propose_tx, _) = tokio::sync::broadcast::channel::<(GroupId, Vec<u8>)>(64);
            let local = tokio::task::LocalSet::new();
            for (id, (transport, _, mut incoming)) in ids.into_iter().zip(started) {
                let mut node = RaftNode::new(NodeConfig::new(id), MemLogStore::new()).expect("node");
                for group in groups {
                    let voters: Vec<ReplicaId> = ids.iter().map(|n| ReplicaId::new(*n, group.0)).collect();
                    node.create_group(group, ReplicaId::new(id, group.0), &voters).expect("group");
                }
                let applied_tx = applied_tx.clone();
                let mut proposals = propose_tx.subscribe();
                let transport: Arc<TcpTransport> = transport;
                local.spawn_local(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(5));
                    loop {
                        tokio::select! {
                            _ = tick.tick() => node.tick(),
                            Some((_, batch)) = incoming.recv() => node.step(batch),
                            Ok((group, data)) = proposals.recv() => { let _ = node.propose(ReplicaId::new(id, group.0), data); }
                        }
                        let mut outbox = Outbox::default();
                        let mut applied = Vec::new();
                        node.process_ready(&mut outbox, |_, g, apply| {
                            if let cairn_raft::Apply::Entry(e) = apply {
                                applied.push((g, e.data.clone()));
                            }
                        })
                        .expect("ready");
                        for (to, batch) in outbox.batches {
                            transport.send(to, batch);
                        }
                        for (group, data) in applied {
                            if !data.is_empty() && applied_tx.send((id, group, data)).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
            local
                .run_until(async move {
                    let mut seen: BTreeMap<(GroupId, Vec<u8>), Vec<NodeId>> = BTreeMap::new();
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                    let mut round = 0u32;
                    loop {
                        assert!(tokio::time::Instant::now() < deadline, "commits on all nodes: {seen:?}");
                        round += 1;
                        for group in groups {
                            // Only the leader accepts; the others refuse. Retried every round.
                            let _ = propose_tx.send((group, format!("{group}-{round}").into_bytes()));
                        }
                        let wait = tokio::time::sleep(Duration::from_millis(50));
                        tokio::pin!(wait);
                        loop {
                            tokio::select! {
                                _ = &mut wait => break,
                                Some((node, group, data)) = applied_rx.recv() => {
                                    seen.entry((group, data)).or_default().push(node);
                                }
                            }
                        }
                        let complete = seen.values().filter(|nodes| nodes.len() == 3).count();
                        if complete >= 6 {
                            break;
                        }
                    }
                })
                .await;
        });
    }
}

/// Goal: a group removed stays removed however the log's segments rotate and are cleaned,
/// from a brand-new store on. Method: the case proptest found, one sync per segment (each sync
/// takes a whole aligned block, more than these 2 KiB segments hold): a group's hard state,
/// its removal, another group's hard state; the store, then a reopened one, holds only the
/// other group. Before the fix the new store's first segment was never cleaned while the
/// second, holding the removal, was: the removed group came back.
#[test]
fn a_removed_group_stays_removed_across_segment_cleaning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut file = FileLogStore::open_with_segment_size(dir.path(), 2048).expect("open");
    let zero = HardState::default();
    file.set_hard_state(replica(2), &zero).expect("hard state");
    LogStore::sync(&mut file).expect("sync");
    file.remove_group(replica(2)).expect("remove");
    LogStore::sync(&mut file).expect("sync");
    file.set_hard_state(replica(1), &zero).expect("hard state");
    LogStore::sync(&mut file).expect("sync");
    let replicas = |store: &FileLogStore| -> Vec<ReplicaId> {
        store.load().expect("load").into_keys().collect()
    };
    assert_eq!(replicas(&file), vec![replica(1)]);
    drop(file);
    let reopened = FileLogStore::open_with_segment_size(dir.path(), 2048).expect("reopen");
    assert_eq!(replicas(&reopened), vec![replica(1)]);
}

/// Leader leases ([`NodeConfig::read_lease`]) on one node hosting a group's three replicas,
/// as `cairn dev` does: rounds run until quiet, the node's own batch stepped back in.
mod leases {
    use std::time::{Duration, Instant};

    use cairn_raft::{
        ReadPath,
        raft_types::{Message, MessageType},
    };

    use super::*;

    const LEASE: Duration = Duration::from_millis(75);

    fn leased_node(dir: &Path) -> RaftNode<FileLogStore> {
        let mut config = NodeConfig::new(NodeId(1));
        // Drawn per election: three replicas ticked together must not always tie.
        config.election_tick_range = (10, 20);
        config.read_lease = Some(LEASE);
        RaftNode::new(config, FileLogStore::open(dir).expect("open")).expect("node")
    }

    /// Rounds until no message is left for this node.
    fn settle(node: &mut RaftNode<FileLogStore>) {
        for _ in 0..20 {
            let mut outbox = Outbox::default();
            node.process_ready(&mut outbox, |_, _, _| {})
                .expect("ready");
            match outbox.batches.remove(&NodeId(1)) {
                Some(batch) => node.step(batch),
                None => return,
            }
        }
    }

    fn leader(node: &RaftNode<FileLogStore>, replicas: &[ReplicaId]) -> Option<ReplicaId> {
        replicas
            .iter()
            .copied()
            .find(|r| node.status(*r).expect("hosted").role == StateRole::Leader)
    }

    /// A group of three replicas with a leader that has committed in its term.
    fn elected(node: &mut RaftNode<FileLogStore>) -> (Vec<ReplicaId>, ReplicaId) {
        let replicas: Vec<ReplicaId> = (1..=3).map(replica).collect();
        for r in &replicas {
            node.create_group(GroupId(1), *r, &replicas)
                .expect("create");
        }
        for _ in 0..60 {
            node.tick();
            settle(node);
            if let Some(leader) = leader(node, &replicas) {
                node.propose(leader, b"x".to_vec()).expect("propose");
                settle(node);
                return (replicas, leader);
            }
        }
        panic!("no leader elected");
    }

    /// Goal: a leader serves reads without a round only while a confirmed round's lease
    /// lasts, never in a term where it started a leadership transfer, and reads under the
    /// lease are served at its commit index. Method: drive the rounds by hand with a
    /// caller-chosen clock.
    #[test]
    fn a_lease_follows_a_confirmed_round_and_ends_with_time_or_a_transfer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut node = leased_node(dir.path());
        let (replicas, leader) = elected(&mut node);
        let start = Instant::now();
        assert_eq!(
            node.read(leader, 1, start).expect("read"),
            ReadPath::ReadIndex,
            "no lease before a confirmed round"
        );
        settle(&mut node);
        let served = node.take_reads();
        assert_eq!(served.iter().map(|r| r.request).collect::<Vec<_>>(), [1]);
        let commit = node.status(leader).expect("status").commit;
        // Within the lease, past half of it: leased, and renewed by a round beside it.
        let later = start + LEASE * 3 / 4;
        assert_eq!(node.read(leader, 2, later).expect("read"), ReadPath::Leased);
        let served = node.take_reads();
        assert_eq!(served.len(), 1, "served at once, no round");
        assert_eq!((served[0].request, served[0].index), (2, commit));
        settle(&mut node);
        // The renewal came back under the same id (the caller serves an id once) and moved
        // the lease on from its own start.
        let renewal: Vec<u64> = node.take_reads().iter().map(|r| r.request).collect();
        assert_eq!(renewal, [2], "the renewal round's confirmation");
        let renewed = later + LEASE * 3 / 4;
        assert_eq!(
            node.read(leader, 3, renewed).expect("read"),
            ReadPath::Leased
        );
        node.take_reads();
        // Past the lease: a round again.
        let expired = later + LEASE + Duration::from_millis(1);
        assert_eq!(
            node.read(leader, 4, expired).expect("read"),
            ReadPath::ReadIndex
        );
        settle(&mut node);
        node.take_reads();
        assert_eq!(
            node.read(leader, 5, expired).expect("read"),
            ReadPath::Leased
        );
        node.take_reads();
        // A transfer started: no lease for the rest of the term, even after a round.
        let heir = *replicas.iter().find(|r| **r != leader).expect("a follower");
        node.transfer_leader(leader, heir).expect("transfer");
        // Still the leader until the transferee's campaign is stepped in, and in the same term.
        let status = node.status(leader).expect("status");
        assert_eq!(status.role, StateRole::Leader);
        assert_eq!(
            node.read(leader, 6, expired).expect("read"),
            ReadPath::ReadIndex
        );
        assert_eq!(node.status(leader).expect("status").term, status.term);
        settle(&mut node);
        let new_leader = leader_of(&node, &replicas);
        assert_ne!(new_leader, leader, "leadership moved");
    }

    fn leader_of(node: &RaftNode<FileLogStore>, replicas: &[ReplicaId]) -> ReplicaId {
        leader(node, replicas).expect("a leader")
    }

    /// Goal: with leases, a replica that just started (a restart forgets the leader whose
    /// heartbeat it may have acknowledged) grants no vote for a minimum election timeout;
    /// after it, it does. Method: step vote requests into a fresh single-replica node and
    /// look for an answer.
    #[test]
    fn a_fresh_replica_ignores_votes_for_an_election_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut node = leased_node(dir.path());
        let me = replica(1);
        let peer = ReplicaId::new(NodeId(2), 1);
        node.create_group(GroupId(1), me, &[me, peer])
            .expect("create");
        let vote = |term: u64| {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgRequestVote);
            m.from = peer.0;
            m.to = me.0;
            m.term = term;
            m.log_term = 10;
            m.index = 100;
            m
        };
        let answers = |node: &mut RaftNode<FileLogStore>| -> usize {
            let mut outbox = Outbox::default();
            node.process_ready(&mut outbox, |_, _, _| {})
                .expect("ready");
            outbox
                .batches
                .values()
                .flatten()
                .filter(|(_, m)| m.msg_type == MessageType::MsgRequestVoteResponse as i32)
                .count()
        };
        node.step(vec![(GroupId(1), vote(5))]);
        assert_eq!(answers(&mut node), 0, "a fresh replica does not vote");
        for _ in 0..9 {
            node.tick_slice(0, 1);
        }
        node.step(vec![(GroupId(1), vote(6))]);
        assert_eq!(answers(&mut node), 0, "nor one tick short of the timeout");
        node.tick_slice(0, 1);
        node.step(vec![(GroupId(1), vote(7))]);
        assert_eq!(answers(&mut node), 1, "after an election timeout it votes");
    }
}
