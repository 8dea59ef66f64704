//! The file-backed log store: segmented, append-only, checksummed, one fdatasync per sync.
//!
//! All groups share one log (the node's write-cache device): a round's writes of every group are
//! buffered and reach the disk with one write and one fdatasync in [`LogStore::sync`], which is
//! the group commit. The store keeps only each group's last index, hard state and latest
//! snapshot in memory (the Raft groups hold their logs); [`LogStore::load`], used at restart,
//! replays the segments.
//!
//! # Format, version 3
//!
//! A directory of segment files `NNNNNNNNNNNNNNNN.seg` (16 hex digits, increasing). A segment
//! starts with an 16-byte header, `"CAIRNLOG"`, the format version (u32) and 4 zero bytes, then
//! holds records:
//!
//! ```text
//! length   u32   bytes after this field up to the end of the record
//! crc      u32   CRC-32C of everything after this field
//! kind     u8    1 create replica, 2 append entries, 3 hard state, 4 end of sync,
//!                5 snapshot, 6 remove replica
//! replica  u64   the replica (Raft peer) id (0 for end of sync)
//! payload        create: the group id, u64
//!                remove: nothing
//!                append: entry count u32, then per entry: length u32 + protobuf Entry
//!                hard state: protobuf HardState
//!                snapshot: 1 compact or 2 install (u8), then protobuf Snapshot
//!                end of sync: the number of records the sync wrote before it, u32
//! ```
//!
//! Each sync writes its records followed by an end-of-sync record; replay applies a sync's
//! records only once it has read that record, so a sync is all or nothing (a crash in the
//! middle of one must not leave, say, its entries without its hard state).
//!
//! All integers are little endian. Segments are created at their full size, zero-filled, as
//! `NNNN.tmp`, synced, then renamed into place (and the directory synced), so a sync overwrites
//! allocated blocks: fdatasync has no size or extent change to journal. The next segment's
//! file is prepared on a thread of its own while the current one fills: writing 64 MiB of
//! zeros inside a sync held every group's round for a quarter of a second at each rotation
//! (1 MiB writes rotate every 64 entries), and was most of the time spent in sequential
//! writes. A `.tmp` file a crash leaves is removed at open. The log of a segment
//! ends at its first record that does not parse; everything after it is zeros. A sync that
//! would pass the segment size goes to a new segment.
//!
//! # Crash ordering
//!
//! `sync` writes the buffered records and their end-of-sync record at the end of the current
//! segment, then fdatasyncs. A crash during it leaves a torn tail in the last segment only:
//! [`FileLogStore::open`] replays complete syncs and, in the last segment, zeroes everything
//! after the last complete one (nothing after it was ever acknowledged, and stale bytes must
//! never follow new records). A bad record anywhere else, or a segment whose log is not
//! followed by zeros, is corruption of synced data, and open refuses to go on.
//!
//! # Segment cleaning
//!
//! A new segment starts, inside the first sync written to it, with a carry-forward of every
//! hosted replica's state except its entries: create, latest snapshot (as a compaction) and hard
//! state. After that sync, the oldest segments go, in order, while every entry they hold is
//! covered by its group's latest snapshot (or belongs to a removed group): what remains is a
//! suffix of segments whose first one restates everything the removed ones said. Only a prefix
//! goes, so a record (an installed snapshot, a removal) is never lost while an older record it
//! overrides survives.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

use cairn_common::{GroupId, ReplicaId, checksum::crc32c};
use prost::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot};

use crate::log::{GroupState, LogStore, Replay, SnapshotKind};

/// Segment size at which a new segment starts. Bounds how much a recovery scans per file and
/// will be the unit of log garbage collection.
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;

/// The largest record accepted when reading: bigger means a corrupt length field.
pub const RECORD_BYTES_MAX: u32 = 64 << 20;

const MAGIC: [u8; 8] = *b"CAIRNLOG";
/// Version 3 keys records by replica (version 2 keyed them by group, one replica per group).
const FORMAT_VERSION: u32 = 3;
const HEADER_BYTES: usize = 16;
const KIND_CREATE: u8 = 1;
const KIND_APPEND: u8 = 2;
const KIND_HARD_STATE: u8 = 3;
const KIND_SYNC_END: u8 = 4;
const KIND_SNAPSHOT: u8 = 5;
const KIND_REMOVE: u8 = 6;
/// Bytes of an end-of-sync record.
const SYNC_END_BYTES: u64 = 4 + 4 + 1 + 8 + 4;

/// Errors of the file log store.
#[derive(Debug, thiserror::Error)]
pub enum FileLogError {
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Synced data failed its checksum or does not parse: the log cannot be trusted.
    #[error("{path}: corrupt record at byte {offset}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileLogError + 'a {
    move |source| FileLogError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A Raft log store in segment files (see the module docs).
pub struct FileLogStore {
    dir: PathBuf,
    /// Records written since the last sync.
    buffer: Vec<u8>,
    buffered_records: u32,
    /// What the store remembers of each replica, including unsynced writes.
    groups: BTreeMap<ReplicaId, GroupMeta>,
    /// Per segment (the current one too), the highest entry index each replica has in it.
    segment_entries: BTreeMap<u64, BTreeMap<ReplicaId, u64>>,
    segment: File,
    segment_number: u64,
    segment_bytes: u64,
    segment_bytes_max: u64,
    syncs: u64,
    synced_bytes: u64,
    /// The next segment's file, being zero-filled by a thread of its own (see the format).
    spare: Option<Spare>,
    /// The state `open` replayed, handed to the first `load` so a restart reads the segments
    /// once, not twice; dropped by the next sync, after which it would be stale.
    replayed: Mutex<Option<BTreeMap<ReplicaId, GroupState>>>,
}

/// A segment file prepared ahead: its number and the thread writing it (which answers with
/// the file, still named `.tmp`).
struct Spare {
    number: u64,
    preparing: std::thread::JoinHandle<Result<File, FileLogError>>,
}

/// A group's state as far as the store needs it: to refuse gaps, to restate the group at the
/// start of a new segment, and to know which entries a snapshot covers.
#[derive(Clone, Debug, Default)]
struct GroupMeta {
    group: GroupId,
    last_index: u64,
    hard_state: HardState,
    snapshot: Snapshot,
}

impl GroupMeta {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }
}

impl FileLogStore {
    /// Opens the log in `dir` (creating it if empty), replaying every segment and zeroing a
    /// torn tail left by a crash.
    pub fn open(dir: &Path) -> Result<FileLogStore, FileLogError> {
        FileLogStore::open_with_segment_size(dir, SEGMENT_BYTES_MAX)
    }

    /// [`FileLogStore::open`] with another segment size (tests use small ones).
    pub fn open_with_segment_size(
        dir: &Path,
        segment_bytes_max: u64,
    ) -> Result<FileLogStore, FileLogError> {
        assert!(
            segment_bytes_max > HEADER_BYTES as u64,
            "segment size {segment_bytes_max}"
        );
        fs::create_dir_all(dir).map_err(io_error("mkdir", dir))?;
        remove_unfinished_segments(dir)?;
        let numbers = segment_numbers(dir)?;
        let mut replay = Replay::default();
        let mut last_valid = 0;
        let mut segment_entries = BTreeMap::new();
        for (i, number) in numbers.iter().enumerate() {
            let path = segment_path(dir, *number);
            let last = i + 1 == numbers.len();
            let (valid, entries) = replay_segment(&path, last, &mut replay)?;
            last_valid = valid;
            segment_entries.insert(*number, entries);
        }
        let state = replay.finish().map_err(|reason| FileLogError::Corrupt {
            path: dir.to_path_buf(),
            offset: 0,
            reason,
        })?;
        let (segment_number, segment, segment_bytes) = match numbers.last() {
            Some(&number) => {
                let path = segment_path(dir, number);
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error("open", &path))?;
                // Zero a torn tail so new records follow the last good one with nothing stale
                // after them.
                zero_from(&file, &path, last_valid)?;
                (number, file, last_valid)
            }
            None => {
                let (file, bytes) = create_segment(dir, 1, segment_bytes_max)?;
                (1, file, bytes)
            }
        };
        let groups = state
            .iter()
            .map(|(replica, s)| {
                let meta = GroupMeta {
                    group: s.group,
                    last_index: s.snapshot.get_metadata().index + s.entries.len() as u64,
                    hard_state: s.hard_state.clone(),
                    snapshot: s.snapshot.clone(),
                };
                (*replica, meta)
            })
            .collect();
        let replayed = Mutex::new(Some(state));
        let mut store = FileLogStore {
            dir: dir.to_path_buf(),
            groups,
            segment_entries,
            buffer: Vec::new(),
            buffered_records: 0,
            segment,
            segment_number,
            segment_bytes,
            segment_bytes_max,
            syncs: 0,
            synced_bytes: 0,
            spare: None,
            replayed,
        };
        store.prepare_spare(segment_number + 1);
        Ok(store)
    }

    /// Starts preparing segment `number` on a thread of its own, unless it is under way.
    fn prepare_spare(&mut self, number: u64) {
        if self.spare.as_ref().is_some_and(|s| s.number == number) {
            return;
        }
        let (dir, size) = (self.dir.clone(), self.segment_bytes_max);
        let preparing = std::thread::Builder::new()
            .name("cairn-log-spare".into())
            .spawn(move || prepare_segment(&dir, number, size));
        match preparing {
            Ok(preparing) => self.spare = Some(Spare { number, preparing }),
            // Without a thread the next rotation prepares the segment itself.
            Err(e) => tracing::warn!("cannot start preparing log segment {number}: {e}"),
        }
    }

    /// Segment `number`, durable under its name: the spare if it is that one, else made now.
    fn take_segment(&mut self, number: u64) -> Result<(File, u64), FileLogError> {
        let file = match self.spare.take() {
            Some(spare) if spare.number == number => match spare.preparing.join() {
                Ok(prepared) => prepared?,
                Err(_) => prepare_segment(&self.dir, number, self.segment_bytes_max)?,
            },
            _ => prepare_segment(&self.dir, number, self.segment_bytes_max)?,
        };
        install_segment(&self.dir, number)?;
        Ok((file, HEADER_BYTES as u64))
    }

    /// Completed syncs (group commits) since open.
    pub fn sync_count(&self) -> u64 {
        self.syncs
    }

    /// The current segment and the offset where the next sync will write (tests and tools).
    pub fn end_position(&self) -> (PathBuf, u64) {
        (
            segment_path(&self.dir, self.segment_number),
            self.segment_bytes,
        )
    }

    /// Bytes made durable since open.
    pub fn synced_bytes(&self) -> u64 {
        self.synced_bytes
    }

    /// Segment files on disk (tests watch cleaning).
    pub fn segment_count(&self) -> Result<usize, FileLogError> {
        Ok(segment_numbers(&self.dir)?.len())
    }

    fn record(&mut self, kind: u8, replica: ReplicaId, payload: &[u8]) {
        encode_record(&mut self.buffer, kind, replica, payload);
        self.buffered_records += 1;
    }

    /// Starts a new segment and puts the carry-forward (see the module docs) in front of the
    /// buffered records, so both land in the same sync.
    fn rotate(&mut self) -> Result<(), FileLogError> {
        let number = self.segment_number + 1;
        let (file, bytes) = self.take_segment(number)?;
        self.prepare_spare(number + 1);
        self.segment = file;
        self.segment_number = number;
        self.segment_bytes = bytes;
        self.segment_entries.entry(number).or_default();
        let mut carried = Vec::new();
        let mut count = 0;
        for (&replica, meta) in &self.groups {
            encode_record(
                &mut carried,
                KIND_CREATE,
                replica,
                &meta.group.0.to_le_bytes(),
            );
            count += 1;
            if meta.snapshot_index() > 0 {
                let payload = snapshot_payload(&meta.snapshot, SnapshotKind::Compact);
                encode_record(&mut carried, KIND_SNAPSHOT, replica, &payload);
                count += 1;
            }
            encode_record(
                &mut carried,
                KIND_HARD_STATE,
                replica,
                &meta.hard_state.encode_to_vec(),
            );
            count += 1;
        }
        carried.extend_from_slice(&self.buffer);
        self.buffer = carried;
        self.buffered_records += count;
        Ok(())
    }

    /// Deletes the oldest segments while every entry in them is covered by a snapshot.
    fn clean(&mut self) -> Result<(), FileLogError> {
        let mut removed = false;
        while let Some((&number, entries)) = self.segment_entries.first_key_value() {
            let dead = number != self.segment_number
                && entries.iter().all(|(replica, max)| {
                    self.groups
                        .get(replica)
                        .is_none_or(|meta| *max <= meta.snapshot_index())
                });
            if !dead {
                break;
            }
            let path = segment_path(&self.dir, number);
            fs::remove_file(&path).map_err(io_error("unlink", &path))?;
            self.segment_entries.remove(&number);
            removed = true;
        }
        if removed {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error("fsync", &self.dir))?;
        }
        Ok(())
    }
}

fn encode_record(buffer: &mut Vec<u8>, kind: u8, replica: ReplicaId, payload: &[u8]) {
    encode_record_with(buffer, kind, replica, payload.len(), |buffer| {
        buffer.extend_from_slice(payload)
    });
}

/// [`encode_record`] with a payload of `payload_bytes` that `write` appends to the buffer.
fn encode_record_with(
    buffer: &mut Vec<u8>,
    kind: u8,
    replica: ReplicaId,
    payload_bytes: usize,
    write: impl FnOnce(&mut Vec<u8>),
) {
    let length = u32::try_from(4 + 1 + 8 + payload_bytes).expect("invariant: record fits u32");
    assert!(length <= RECORD_BYTES_MAX, "record of {length} bytes");
    buffer.reserve(4 + length as usize);
    let start = buffer.len();
    buffer.extend_from_slice(&length.to_le_bytes());
    buffer.extend_from_slice(&[0; 4]);
    buffer.push(kind);
    buffer.extend_from_slice(&replica.0.to_le_bytes());
    write(buffer);
    assert_eq!(
        buffer.len() - start,
        4 + length as usize,
        "the payload is as long as announced"
    );
    let crc = crc32c(&buffer[start + 8..]);
    buffer[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn snapshot_payload(snapshot: &Snapshot, kind: SnapshotKind) -> Vec<u8> {
    let mut payload = vec![match kind {
        SnapshotKind::Compact => 1,
        SnapshotKind::Install => 2,
    }];
    payload.extend_from_slice(&snapshot.encode_to_vec());
    payload
}

impl LogStore for FileLogStore {
    type Error = FileLogError;

    fn create_group(&mut self, replica: ReplicaId, group: GroupId) -> Result<(), FileLogError> {
        self.record(KIND_CREATE, replica, &group.0.to_le_bytes());
        self.groups.entry(replica).or_default().group = group;
        Ok(())
    }

    fn remove_group(&mut self, replica: ReplicaId) -> Result<(), FileLogError> {
        self.record(KIND_REMOVE, replica, &[]);
        self.groups.remove(&replica);
        Ok(())
    }

    fn set_snapshot(
        &mut self,
        replica: ReplicaId,
        snapshot: &Snapshot,
        kind: SnapshotKind,
    ) -> Result<(), FileLogError> {
        self.record(KIND_SNAPSHOT, replica, &snapshot_payload(snapshot, kind));
        let meta = self.groups.entry(replica).or_default();
        let index = snapshot.get_metadata().index;
        match kind {
            SnapshotKind::Compact => assert!(index <= meta.last_index, "compaction past the end"),
            SnapshotKind::Install => meta.last_index = index,
        }
        meta.snapshot = snapshot.clone();
        Ok(())
    }

    fn append(&mut self, replica: ReplicaId, entries: &[Entry]) -> Result<(), FileLogError> {
        let Some(first) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        let meta = self.groups.entry(replica).or_default();
        // The same check replay makes: a gap would make the log unreadable after a restart.
        assert!(
            first > meta.snapshot_index() && first - 1 <= meta.last_index,
            "{replica}: append at {first} outside ({}, {}]",
            meta.snapshot_index(),
            meta.last_index + 1
        );
        meta.last_index = first + entries.len() as u64 - 1;
        let in_segment = self
            .segment_entries
            .entry(self.segment_number)
            .or_default()
            .entry(replica)
            .or_default();
        *in_segment = (*in_segment).max(meta.last_index);
        // Encoded straight into the sync buffer: entries carry up to 1 MiB each, and copying
        // them through intermediate vectors was most of the CPU of sequential writes.
        let sizes: Vec<usize> = entries.iter().map(|e| e.encoded_len()).collect();
        let payload_bytes = 4 + sizes.iter().map(|s| 4 + s).sum::<usize>();
        encode_record_with(
            &mut self.buffer,
            KIND_APPEND,
            replica,
            payload_bytes,
            |buffer| {
                buffer.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for (entry, size) in entries.iter().zip(&sizes) {
                    let size = u32::try_from(*size).expect("invariant: an entry fits a record");
                    buffer.extend_from_slice(&size.to_le_bytes());
                    entry
                        .encode(buffer)
                        .expect("invariant: the buffer was reserved for it");
                }
            },
        );
        self.buffered_records += 1;
        Ok(())
    }

    fn set_hard_state(
        &mut self,
        replica: ReplicaId,
        hard_state: &HardState,
    ) -> Result<(), FileLogError> {
        self.record(KIND_HARD_STATE, replica, &hard_state.encode_to_vec());
        self.groups.entry(replica).or_default().hard_state = hard_state.clone();
        Ok(())
    }

    fn sync(&mut self) -> Result<(), FileLogError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        // A sync never straddles segments; one larger than a segment gets a fresh one to itself
        // (the file grows past its preallocated size).
        let bytes = self.buffer.len() as u64 + SYNC_END_BYTES;
        let fits = self.segment_bytes + bytes <= self.segment_bytes_max;
        let rotated = !fits && self.segment_bytes > HEADER_BYTES as u64;
        if rotated {
            self.rotate()?;
        }
        let records = self.buffered_records;
        self.record(KIND_SYNC_END, ReplicaId(0), &records.to_le_bytes());
        let path = segment_path(&self.dir, self.segment_number);
        // Positional: a failed write leaves `segment_bytes` where it was, so a retried sync
        // overwrites the partial bytes instead of leaving them between records.
        self.segment
            .write_all_at(&self.buffer, self.segment_bytes)
            .map_err(io_error("write", &path))?;
        self.segment
            .sync_data()
            .map_err(io_error("fdatasync", &path))?;
        self.segment_bytes += self.buffer.len() as u64;
        self.synced_bytes += self.buffer.len() as u64;
        self.buffer.clear();
        self.buffered_records = 0;
        self.syncs += 1;
        *self.replayed.get_mut().expect("invariant: not poisoned") = None;
        if rotated {
            self.clean()?;
        }
        Ok(())
    }

    fn load(&self) -> Result<BTreeMap<ReplicaId, GroupState>, FileLogError> {
        let cached = self
            .replayed
            .lock()
            .expect("invariant: not poisoned")
            .take();
        if let Some(state) = cached {
            return Ok(state);
        }
        // What is on disk up to the last sync: `open` zeroed any torn tail and every sync since
        // wrote whole batches, so every segment's log ends with a complete sync.
        let mut replay = Replay::default();
        for number in segment_numbers(&self.dir)? {
            replay_segment(&segment_path(&self.dir, number), false, &mut replay)?;
        }
        replay.finish().map_err(|reason| FileLogError::Corrupt {
            path: self.dir.clone(),
            offset: 0,
            reason,
        })
    }
}

/// Removes segments whose creation a crash interrupted (never renamed into place, so empty).
fn remove_unfinished_segments(dir: &Path) -> Result<(), FileLogError> {
    for entry in fs::read_dir(dir).map_err(io_error("readdir", dir))? {
        let path = entry.map_err(io_error("readdir", dir))?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            fs::remove_file(&path).map_err(io_error("unlink", &path))?;
        }
    }
    Ok(())
}

/// The segment numbers in `dir`, ascending.
fn segment_numbers(dir: &Path) -> Result<Vec<u64>, FileLogError> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("readdir", dir))? {
        let path = entry.map_err(io_error("readdir", dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(number) = name
            .strip_suffix(".seg")
            .and_then(|stem| u64::from_str_radix(stem, 16).ok())
        {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016x}.seg"))
}

/// Creates segment `number` with its header, durable along with its directory entry.
fn create_segment(dir: &Path, number: u64, size_bytes: u64) -> Result<(File, u64), FileLogError> {
    let file = prepare_segment(dir, number, size_bytes)?;
    install_segment(dir, number)?;
    Ok((file, HEADER_BYTES as u64))
}

/// Writes segment `number` at its full size as `.tmp`: header, zeros, synced.
fn prepare_segment(dir: &Path, number: u64, size_bytes: u64) -> Result<File, FileLogError> {
    let temporary = dir.join(format!("{number:016x}.tmp"));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&temporary)
        .map_err(io_error("create", &temporary))?;
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.write_all(&header)
        .map_err(io_error("write", &temporary))?;
    // Zeros written, not just allocated: later syncs then overwrite written blocks.
    let zeros = vec![0u8; 1 << 20];
    let mut written = HEADER_BYTES as u64;
    while written < size_bytes {
        let step = (size_bytes - written).min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..step])
            .map_err(io_error("write", &temporary))?;
        written += step as u64;
    }
    file.sync_all().map_err(io_error("fsync", &temporary))?;
    Ok(file)
}

/// Renames a prepared segment into place, durably (the directory synced).
fn install_segment(dir: &Path, number: u64) -> Result<(), FileLogError> {
    let temporary = dir.join(format!("{number:016x}.tmp"));
    let path = segment_path(dir, number);
    fs::rename(&temporary, &path).map_err(io_error("rename", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync", dir))
}

/// Overwrites `file` with zeros from `offset` to its end and syncs it.
fn zero_from(file: &File, path: &Path, offset: u64) -> Result<(), FileLogError> {
    let end = file.metadata().map_err(io_error("stat", path))?.len();
    let zeros = vec![0u8; 1 << 20];
    let mut at = offset;
    while at < end {
        let step = (end - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..step], at)
            .map_err(io_error("write", path))?;
        at += step as u64;
    }
    file.sync_data().map_err(io_error("fdatasync", path))
}

/// Replays one segment into `replay`; returns the offset after its last good record and the
/// highest entry index of each replica in it. A bad record is a torn tail if `last` (the caller
/// truncates there), corruption otherwise.
fn replay_segment(
    path: &Path,
    last: bool,
    replay: &mut Replay,
) -> Result<(u64, BTreeMap<ReplicaId, u64>), FileLogError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_error("read", path))?;
    let corrupt = |offset: usize, reason: String| FileLogError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if bytes.len() < HEADER_BYTES || bytes[0..8] != MAGIC {
        // A segment whose header never became durable can only be the newest one.
        if last && bytes.len() < HEADER_BYTES {
            return Err(corrupt(
                0,
                "segment header incomplete; remove the file if it is the newest".into(),
            ));
        }
        return Err(corrupt(0, "not a Cairn log segment".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(corrupt(
            8,
            format!("log format version {version}, this build reads {FORMAT_VERSION}"),
        ));
    }
    // Records of the sync being read, applied when its end record arrives.
    let mut batch: Vec<(usize, u8, ReplicaId, &[u8])> = Vec::new();
    let mut offset = HEADER_BYTES;
    let mut complete = HEADER_BYTES;
    let mut max_index = BTreeMap::new();
    while offset < bytes.len() {
        let (used, kind, replica, payload) = match parse_record(&bytes[offset..]) {
            Ok(record) => record,
            // A torn tail: the crash came during the sync that wrote it, so nothing in it was
            // acknowledged.
            // Zeros: the end of this segment's log (segments are preallocated).
            Err(_) if bytes[offset..].iter().all(|b| *b == 0) => break,
            Err(_) if last => break,
            Err(reason) => return Err(corrupt(offset, reason)),
        };
        if kind == KIND_SYNC_END {
            let count = payload
                .try_into()
                .map(u32::from_le_bytes)
                .map_err(|_| corrupt(offset, "bad end of sync".into()))?;
            if count as usize != batch.len() {
                return Err(corrupt(
                    offset,
                    format!("sync of {count} records holds {}", batch.len()),
                ));
            }
            for (at, kind, replica, payload) in batch.drain(..) {
                let last_entry = apply_record(replay, kind, replica, payload)
                    .map_err(|reason| corrupt(at, reason))?;
                if let Some(index) = last_entry {
                    let max: &mut u64 = max_index.entry(replica).or_default();
                    *max = (*max).max(index);
                }
            }
            complete = offset + used;
        } else {
            batch.push((offset, kind, replica, payload));
        }
        offset += used;
    }
    if !last && bytes[complete..].iter().any(|b| *b != 0) {
        return Err(corrupt(
            complete,
            "bytes after the segment's last complete sync".into(),
        ));
    }
    Ok((complete as u64, max_index))
}

/// Splits one record off the front of `bytes`: (bytes used, kind, replica, payload).
fn parse_record(bytes: &[u8]) -> Result<(usize, u8, ReplicaId, &[u8]), String> {
    if bytes.len() < 8 {
        return Err("record header incomplete".into());
    }
    let length = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if !(13..=RECORD_BYTES_MAX).contains(&length) {
        return Err(format!("record length {length} out of range"));
    }
    let end = 4 + length as usize;
    if bytes.len() < end {
        return Err("record incomplete".into());
    }
    let stored = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if crc32c(&bytes[8..end]) != stored {
        return Err("record checksum mismatch".into());
    }
    let kind = bytes[8];
    let replica = ReplicaId(u64::from_le_bytes(
        bytes[9..17].try_into().expect("8 bytes"),
    ));
    Ok((end, kind, replica, &bytes[17..end]))
}

/// Applies one record; returns the last entry index of an append.
fn apply_record(
    replay: &mut Replay,
    kind: u8,
    replica: ReplicaId,
    payload: &[u8],
) -> Result<Option<u64>, String> {
    let mut cursor = Cursor {
        bytes: payload,
        at: 0,
    };
    let mut last_entry = None;
    match kind {
        KIND_CREATE => replay.create(replica, GroupId(cursor.u64()?)),
        KIND_REMOVE => replay.remove(replica),
        KIND_APPEND => {
            let count = cursor.u32()?;
            let mut entries = Vec::with_capacity(count.min(4096) as usize);
            for _ in 0..count {
                let length = cursor.u32()? as usize;
                let bytes = cursor.take(length)?;
                let entry = Entry::decode(bytes).map_err(|e| format!("entry: {e}"))?;
                if let Some(previous) = entries.last().map(|e: &Entry| e.index)
                    && entry.index != previous + 1
                {
                    return Err(format!(
                        "entries {previous} and {} in one record",
                        entry.index
                    ));
                }
                entries.push(entry);
            }
            if entries.first().is_some_and(|e| e.index == 0) {
                return Err("entry index 0".into());
            }
            last_entry = entries.last().map(|e| e.index);
            replay.append(replica, entries);
        }
        KIND_HARD_STATE => {
            let hard_state = HardState::decode(payload).map_err(|e| format!("hard state: {e}"))?;
            replay.hard_state(replica, hard_state);
            cursor.at = payload.len();
        }
        KIND_SNAPSHOT => {
            let kind = match cursor.take(1)?[0] {
                1 => SnapshotKind::Compact,
                2 => SnapshotKind::Install,
                other => return Err(format!("snapshot kind {other}")),
            };
            let snapshot = Snapshot::decode(&payload[1..]).map_err(|e| format!("snapshot: {e}"))?;
            replay.snapshot(replica, snapshot, kind);
            cursor.at = payload.len();
        }
        other => return Err(format!("unknown record kind {other}")),
    }
    if cursor.at != payload.len() {
        return Err("trailing bytes in record".into());
    }
    Ok(last_entry)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, length: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(length)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or("field runs past the record")?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}
