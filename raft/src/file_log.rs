//! The file-backed log store: segmented, append-only, checksummed, one fdatasync per sync.
//!
//! All groups share one log (the node's write-cache device): a round's writes of every group are
//! buffered and reach the disk with one write and one fdatasync in [`LogStore::sync`], which is
//! the group commit. The store keeps only each group's last index, hard state and latest
//! snapshot in memory (the Raft groups hold their logs); [`LogStore::load`], used at restart,
//! replays the segments.
//!
//! # Format, version 5
//!
//! A directory of segment files `NNNNNNNNNNNNNNNN.seg` (16 hex digits, increasing). A segment
//! starts with a 16-byte header, `"CAIRNLOG"`, the format version (u32) and 4 zero bytes, in
//! a block of [`SYNC_ALIGN_BYTES`] (the rest zeros); records start at the next block:
//!
//! ```text
//! length   u32   bytes after this field up to the end of the record
//! crc      u32   CRC-32C of everything after this field, XORed with the segment's salt
//!                (the CRC-32C of its number, u64)
//! kind     u8    1 create replica, 2 append entries, 3 hard state, 4 end of sync,
//!                5 snapshot, 6 remove replica, 7 end of the previous segment,
//!                8 part of a snapshot
//! replica  u64   the replica (Raft peer) id (0 for end of sync)
//! payload        create: the group id, u64
//!                remove: nothing
//!                append: entry count u32, then per entry: length u32 + protobuf Entry
//!                hard state: protobuf HardState
//!                snapshot: 1 compact or 2 install (u8), then protobuf Snapshot
//!                part of a snapshot: the whole payload's length u64, this part's offset
//!                u64, then the part's bytes (a snapshot payload too large for one record,
//!                over [`SNAPSHOT_PART_BYTES`], is cut into parts written in order in one
//!                sync; replay puts them back together and applies them as a snapshot)
//!                end of sync: the number of records the sync wrote before it, u32
//!                end of the previous segment: its number, u64, and where its log ended, u64
//! ```
//!
//! Each sync writes its records followed by an end-of-sync record; replay applies a sync's
//! records only once it has read that record, so a sync is all or nothing (a crash in the
//! middle of one must not leave, say, its entries without its hard state). A sync is padded
//! with zeros to a whole number of blocks, so every sync starts on a block boundary and is
//! written with O_DIRECT where the file system allows it (tmpfs does not): a sync of a few
//! MiB went through the page cache at about 250 MB/s on this project's test machine and
//! around it at 1,500 MB/s, and large writes pass through the log once per replica. Replay
//! moves to the next block boundary after each end-of-sync record.
//!
//! All integers are little endian. A segment's log ends at its first record that does not
//! parse with the segment's salt: zeros in a new segment, records of an earlier life in a
//! recycled one (the salt differs, so they never parse).
//!
//! Version 4 segments (records from byte 16, syncs unpadded) are still replayed; a store
//! whose newest segment is one starts a version 5 segment at open instead of appending to it.
//!
//! # Preallocation and recycling
//!
//! Syncs overwrite allocated, written blocks, so fdatasync has no size or extent change to
//! journal. A segment the cleaner lets go is recycled: renamed aside and, at the next
//! rotation, renamed into place under its new number, its old records left as they are. Only
//! when none is at hand is a segment created at its full size, zero-filled (on a thread of
//! its own while the current one fills), as `NNNN.tmp`, synced, then renamed into place (and
//! the directory synced). Zero-filling doubled the log's disk writes and cost a tenth of a
//! loaded node's CPU. A `.tmp` file a crash leaves (unfinished or set aside) is removed at
//! open. A sync that would pass the segment size goes to a new segment.
//!
//! # Crash ordering
//!
//! `sync` writes the buffered records and their end-of-sync record at the end of the current
//! segment, then fdatasyncs. A crash during it leaves a torn tail in the last segment only:
//! [`FileLogStore::open`] replays complete syncs and, in the last segment, zeroes everything
//! after the last complete one (nothing after it was ever acknowledged, and records of the torn
//! sync, salted alike, must never follow new ones). Every segment after the first begins with
//! where its predecessor's log ended: a predecessor whose log ends elsewhere holds corrupt
//! synced data, and open refuses to go on.
//!
//! # Segment cleaning
//!
//! A new segment starts, inside the first sync written to it, with the end of its predecessor
//! and a carry-forward of every hosted replica's state except its entries: create, latest
//! snapshot (as a compaction) and hard state. Cleaning follows a rotation, so the newest
//! segment always holds a carry-forward (a segment a crash left empty is never the newest
//! when cleaning runs). After that sync, the oldest segments go, in order, while every entry they hold is
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
/// Version 3 keyed records by replica (version 2 by group); version 4 salts record checksums
/// with the segment number, so segments can be recycled; version 5 aligns syncs to blocks.
const FORMAT_VERSION: u32 = 5;
/// The oldest format replayed (see the module docs).
const FORMAT_VERSION_OLDEST: u32 = 4;
const HEADER_BYTES: usize = 16;
/// Every sync starts and ends on a multiple of this (O_DIRECT's alignment); so do segments'
/// first records.
pub const SYNC_ALIGN_BYTES: usize = 4096;
/// Where a segment's first record starts, by format version.
const fn first_record(version: u32) -> u64 {
    if version >= 5 {
        SYNC_ALIGN_BYTES as u64
    } else {
        HEADER_BYTES as u64
    }
}
/// A sync buffer kept for the next sync only up to this size; a larger one (a snapshot's
/// sync) is freed after use.
const SCRATCH_KEEP_BYTES: usize = 64 << 20;
const KIND_CREATE: u8 = 1;
const KIND_APPEND: u8 = 2;
const KIND_HARD_STATE: u8 = 3;
const KIND_SYNC_END: u8 = 4;
const KIND_SNAPSHOT: u8 = 5;
const KIND_REMOVE: u8 = 6;
const KIND_PREVIOUS_END: u8 = 7;
const KIND_SNAPSHOT_PART: u8 = 8;

/// A snapshot payload larger than this goes as parts of this size (the metadata service's
/// state outgrows one record: its object index).
pub const SNAPSHOT_PART_BYTES: usize = 16 << 20;
/// The largest snapshot the log accepts (as the transport does).
pub const SNAPSHOT_BYTES_MAX: usize = 1 << 30;
const _: () = assert!(SNAPSHOT_PART_BYTES + 64 < RECORD_BYTES_MAX as usize);
/// Segments set aside for reuse at most: one covers a steady stream of rotations, where each
/// lets one old segment go.
const RECYCLED_MAX: usize = 2;
/// Bytes of an end-of-sync record.
const SYNC_END_BYTES: u64 = 4 + 4 + 1 + 8 + 4;
const ALIGN: u64 = SYNC_ALIGN_BYTES as u64;

/// A block-aligned window into a plain allocation, reused from sync to sync: O_DIRECT needs
/// aligned memory, and a window needs no unsafe code.
#[derive(Default)]
struct AlignedScratch {
    backing: Vec<u8>,
    skip: usize,
}

impl AlignedScratch {
    /// `len` aligned bytes (contents unspecified).
    fn window(&mut self, len: usize) -> &mut [u8] {
        if self.backing.len() < self.skip + len {
            self.backing =
                vec![0; len.next_power_of_two().max(SYNC_ALIGN_BYTES) + SYNC_ALIGN_BYTES];
            self.skip = self.backing.as_ptr().align_offset(SYNC_ALIGN_BYTES);
            assert!(
                self.skip < SYNC_ALIGN_BYTES,
                "invariant: an aligned window exists"
            );
        }
        &mut self.backing[self.skip..self.skip + len]
    }

    /// Frees an allocation grown past what steady syncs need.
    fn trim(&mut self) {
        if self.backing.len() > SCRATCH_KEEP_BYTES {
            self.backing = Vec::new();
        }
    }
}

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
    /// A snapshot larger than the log takes ([`SNAPSHOT_BYTES_MAX`]); nothing was written.
    #[error("a {what} of {bytes} bytes is over the log's limit of {max}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
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
    /// The block-aligned copy of `buffer` a sync writes (O_DIRECT needs aligned memory).
    scratch: AlignedScratch,
    buffered_records: u32,
    /// What the store remembers of each replica, including unsynced writes.
    groups: BTreeMap<ReplicaId, GroupMeta>,
    /// Per segment (the current one too), the highest entry index each replica has in it.
    segment_entries: BTreeMap<u64, BTreeMap<ReplicaId, u64>>,
    segment: File,
    segment_number: u64,
    segment_bytes: u64,
    segment_bytes_max: u64,
    /// Bytes of the carry-forward at the start of the current segment (0 for a segment
    /// opened at start-up, whose carry was not measured). They do not count against the
    /// segment size: a carry holding a snapshot larger than a segment would otherwise make
    /// every sync rotate, and rewrite the snapshot each time.
    carry_bytes: u64,
    syncs: u64,
    synced_bytes: u64,
    /// The next segment's file, being zero-filled by a thread of its own (see the format).
    spare: Option<Spare>,
    /// Segments let go by the cleaner, renamed aside for reuse (see the format).
    recycled: Vec<PathBuf>,
    /// The next sync starts a segment: it carries forward every replica's state, after the
    /// end of the previous segment (number and offset).
    carry: Option<(u64, u64)>,
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
        assert!(segment_bytes_max > 0, "segment size {segment_bytes_max}");
        fs::create_dir_all(dir).map_err(io_error("mkdir", dir))?;
        remove_unfinished_segments(dir)?;
        let numbers = segment_numbers(dir)?;
        let mut replay = Replay::default();
        // Each segment's number and where its log ends.
        let mut ends: Vec<(u64, u64)> = Vec::new();
        let mut segment_entries = BTreeMap::new();
        let mut last_version = FORMAT_VERSION;
        for number in &numbers {
            let path = segment_path(dir, *number);
            let replayed = replay_segment(&path, *number, &mut replay)?;
            check_previous_end(&path, ends.last().copied(), replayed.previous_end)?;
            ends.push((*number, replayed.end));
            segment_entries.insert(*number, replayed.max_index);
            last_version = replayed.version;
        }
        let last_valid = ends.last().map_or(0, |(_, end)| *end);
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
                drop(file);
                (number, open_writer(&path)?, last_valid)
            }
            None => {
                let (file, bytes) = create_segment(dir, 1, segment_bytes_max)?;
                (1, file, bytes)
            }
        };
        // The segment written next is tracked like the replayed ones, a new store's first
        // included: `clean` deletes from the oldest tracked segment on, and an untracked first
        // segment outlived a later one holding a group's removal, so a reopen brought the
        // removed group back (found by `file_store_matches_the_model`).
        segment_entries.entry(segment_number).or_default();
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
        // An older format's segment takes no aligned syncs: the next sync starts a new one.
        let upgrade = last_version != FORMAT_VERSION;
        let mut store = FileLogStore {
            dir: dir.to_path_buf(),
            groups,
            segment_entries,
            buffer: Vec::new(),
            scratch: AlignedScratch::default(),
            buffered_records: 0,
            segment,
            segment_number,
            segment_bytes,
            segment_bytes_max,
            carry_bytes: 0,
            syncs: 0,
            synced_bytes: 0,
            spare: None,
            recycled: Vec::new(),
            carry: None,
            replayed,
        };
        if upgrade {
            tracing::info!(
                dir = %dir.display(),
                "log segment {segment_number:016x} is format {last_version}: \
                 continuing in a new segment of format {FORMAT_VERSION}"
            );
            store.rotate()?;
        } else {
            store.prepare_spare(segment_number + 1);
        }
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

    /// Segment `number`, durable under its name: the spare if one is being prepared for it,
    /// else a recycled segment, else one made now.
    fn take_segment(&mut self, number: u64) -> Result<(File, u64), FileLogError> {
        let file = match self.spare.take() {
            Some(spare) if spare.number == number => match spare.preparing.join() {
                Ok(prepared) => prepared?,
                Err(_) => prepare_segment(&self.dir, number, self.segment_bytes_max)?,
            },
            other => {
                self.spare = other;
                match self.recycled.pop() {
                    Some(aside) => reuse_segment(&self.dir, &aside, number)?,
                    None => prepare_segment(&self.dir, number, self.segment_bytes_max)?,
                }
            }
        };
        install_segment(&self.dir, number)?;
        Ok((file, first_record(FORMAT_VERSION)))
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

    /// Starts a new segment; the sync that rotates writes the carry-forward first.
    fn rotate(&mut self) -> Result<(), FileLogError> {
        let previous = (self.segment_number, self.segment_bytes);
        let number = self.segment_number + 1;
        let (file, bytes) = self.take_segment(number)?;
        if self.recycled.is_empty() {
            self.prepare_spare(number + 1);
        }
        self.segment = file;
        self.segment_number = number;
        self.segment_bytes = bytes;
        self.carry_bytes = 0;
        self.segment_entries.entry(number).or_default();
        self.carry = Some(previous);
        Ok(())
    }

    /// Puts the end of the previous segment and the carry-forward (see the module docs) in
    /// front of the buffered records, so they land in the same sync.
    fn carry_forward(&mut self, (number, end): (u64, u64)) {
        let mut carried = Vec::new();
        let mut payload = number.to_le_bytes().to_vec();
        payload.extend_from_slice(&end.to_le_bytes());
        encode_record(&mut carried, KIND_PREVIOUS_END, ReplicaId(0), &payload);
        let mut count = 1;
        for (&replica, meta) in &self.groups {
            encode_record(
                &mut carried,
                KIND_CREATE,
                replica,
                &meta.group.0.to_le_bytes(),
            );
            count += 1;
            if meta.snapshot_index() > 0 {
                count +=
                    encode_snapshot(&mut carried, replica, &meta.snapshot, SnapshotKind::Compact);
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
            if self.recycled.len() < RECYCLED_MAX {
                let aside = self.dir.join(format!("recycled-{number:016x}.tmp"));
                fs::rename(&path, &aside).map_err(io_error("rename", &path))?;
                self.recycled.push(aside);
            } else {
                fs::remove_file(&path).map_err(io_error("unlink", &path))?;
            }
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

/// Encodes a snapshot as one record, or as parts when it is too large for one; answers the
/// number of records.
fn encode_snapshot(
    buffer: &mut Vec<u8>,
    replica: ReplicaId,
    snapshot: &Snapshot,
    kind: SnapshotKind,
) -> u32 {
    let payload = snapshot_payload(snapshot, kind);
    if payload.len() <= SNAPSHOT_PART_BYTES {
        encode_record(buffer, KIND_SNAPSHOT, replica, &payload);
        return 1;
    }
    let total = payload.len() as u64;
    let mut count = 0;
    for (i, part) in payload.chunks(SNAPSHOT_PART_BYTES).enumerate() {
        let offset = (i * SNAPSHOT_PART_BYTES) as u64;
        encode_record_with(buffer, KIND_SNAPSHOT_PART, replica, 16 + part.len(), |b| {
            b.extend_from_slice(&total.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            b.extend_from_slice(part);
        });
        count += 1;
    }
    count
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
        let bytes = snapshot.get_data().len();
        if bytes > SNAPSHOT_BYTES_MAX {
            return Err(FileLogError::TooLarge {
                what: "snapshot",
                bytes,
                max: SNAPSHOT_BYTES_MAX,
            });
        }
        self.buffered_records += encode_snapshot(&mut self.buffer, replica, snapshot, kind);
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
        let bytes = (self.buffer.len() as u64 + SYNC_END_BYTES).next_multiple_of(ALIGN);
        let used = self.segment_bytes - self.carry_bytes;
        let fits = used + bytes <= self.segment_bytes_max;
        let rotated = !fits && used > first_record(FORMAT_VERSION);
        if rotated {
            self.rotate()?;
        }
        if let Some(previous) = self.carry.take() {
            let before = self.buffer.len();
            self.carry_forward(previous);
            self.carry_bytes = (self.buffer.len() - before) as u64;
        }
        let records = self.buffered_records;
        self.record(KIND_SYNC_END, ReplicaId(0), &records.to_le_bytes());
        let salt = salt(self.segment_number);
        salt_records(&mut self.buffer, salt);
        assert!(
            self.segment_bytes.is_multiple_of(ALIGN),
            "invariant: syncs start on a block boundary"
        );
        let padded = self.buffer.len().next_multiple_of(SYNC_ALIGN_BYTES);
        let block = self.scratch.window(padded);
        block[..self.buffer.len()].copy_from_slice(&self.buffer);
        block[self.buffer.len()..].fill(0);
        let path = segment_path(&self.dir, self.segment_number);
        // Positional: a failed write leaves `segment_bytes` where it was, so a retried sync
        // overwrites the partial bytes instead of leaving them between records.
        let mut written = self.segment.write_all_at(block, self.segment_bytes);
        if written
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
        {
            // A file system that opened the file O_DIRECT but refuses the write: go buffered.
            tracing::debug!(path = %path.display(), "log writes without O_DIRECT after EINVAL");
            self.segment = open_synced(&path, 0)?;
            written = self.segment.write_all_at(block, self.segment_bytes);
        }
        // Durable on return: the writer is O_DSYNC (see `open_writer`).
        let written = written.map_err(io_error("write", &path));
        self.scratch.trim();
        if let Err(e) = written {
            // Unsalted again, as a retry expects the buffer.
            salt_records(&mut self.buffer, salt);
            return Err(e);
        }
        self.segment_bytes += padded as u64;
        self.synced_bytes += padded as u64;
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
            replay_segment(&segment_path(&self.dir, number), number, &mut replay)?;
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
    Ok((file, first_record(FORMAT_VERSION)))
}

/// Writes segment `number` at its full size as `.tmp`: header, zeros, synced.
///
/// Zeros written, not just allocated: later syncs then overwrite written blocks (writing
/// into allocated-but-unwritten extents costs a journal commit per sync). They go around
/// the page cache where the file system allows it (O_DIRECT): copying 64 MiB of zeros
/// through the cache per segment took a fifth of a loaded `cairn dev`'s CPU (profile of
/// iSCSI 4 KiB writes at queue depth 32, while the log grows) and evicted useful pages.
/// Buffered writes are the fallback (tmpfs refuses O_DIRECT; odd sizes in tests).
fn prepare_segment(dir: &Path, number: u64, size_bytes: u64) -> Result<File, FileLogError> {
    let temporary = dir.join(format!("{number:016x}.tmp"));
    if let Err(e) = zero_fill_direct(&temporary, size_bytes) {
        tracing::debug!(path = %temporary.display(), "O_DIRECT zero fill not used: {e}");
        zero_fill_buffered(&temporary, size_bytes)?;
    }
    open_writer(&temporary)
}

/// Opens a segment for the store's syncs: with O_DIRECT where the file system takes it (see
/// the module docs), else buffered (tmpfs); O_DSYNC either way, so each sync's one write is
/// durable when it returns, data and what is needed to read it back, as a write then
/// fdatasync made it. One system call instead of two: fio on this machine's disk, 4 KiB
/// O_DIRECT writes at queue depth 1, 9,108 per second with O_DSYNC against 7,347 with an
/// fdatasync after each (the kernel sends the cache flush itself, without a trip back to
/// user space; this disk has no FUA, so it is still a write and a flush).
fn open_writer(path: &Path) -> Result<File, FileLogError> {
    match open_synced(path, libc::O_DIRECT) {
        Ok(file) => Ok(file),
        Err(FileLogError::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!(path = %path.display(), "log writes without O_DIRECT: {source}");
            open_synced(path, 0)
        }
        Err(e) => Err(e),
    }
}

/// Opens `path` for writing with O_DSYNC and `flags`.
fn open_synced(path: &Path, flags: libc::c_int) -> Result<File, FileLogError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC | flags)
        .open(path)
        .map_err(io_error("open", path))
}

fn open_buffered(path: &Path) -> Result<File, FileLogError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error("open", path))
}

/// The segment header: magic and format version.
fn segment_header() -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// [`prepare_segment`]'s file written with O_DIRECT from an aligned buffer, then synced.
fn zero_fill_direct(path: &Path, size_bytes: u64) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    const ALIGN: usize = 4096;
    const STEP: usize = 1 << 20;
    if !size_bytes.is_multiple_of(ALIGN as u64) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "size not 4 KiB aligned",
        ));
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    // An aligned window of a plain allocation: no unsafe code for one buffer per segment.
    let mut backing = vec![0u8; STEP + ALIGN];
    let skip = backing.as_ptr().align_offset(ALIGN);
    if skip >= ALIGN {
        return Err(io::Error::other("no aligned window in the buffer"));
    }
    let buffer = &mut backing[skip..skip + STEP];
    buffer[..HEADER_BYTES].copy_from_slice(&segment_header());
    let mut written = 0u64;
    while written < size_bytes {
        let step = (size_bytes - written).min(STEP as u64) as usize;
        file.write_all_at(&buffer[..step], written)?;
        if written == 0 {
            buffer[..HEADER_BYTES].fill(0);
        }
        written += step as u64;
    }
    file.sync_all()
}

/// [`prepare_segment`]'s file written through the page cache, then synced.
fn zero_fill_buffered(path: &Path, size_bytes: u64) -> Result<(), FileLogError> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(io_error("create", path))?;
    file.write_all(&segment_header())
        .map_err(io_error("write", path))?;
    let zeros = vec![0u8; 1 << 20];
    let mut written = HEADER_BYTES as u64;
    while written < size_bytes {
        let step = (size_bytes - written).min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..step])
            .map_err(io_error("write", path))?;
        written += step as u64;
    }
    file.sync_all().map_err(io_error("fsync", path))
}

/// Takes a segment set aside at `aside` as segment `number`'s `.tmp`, for [`install_segment`].
/// Its records stay: under the new number's salt they no longer parse. Its header is written
/// again (it may be an older format's).
fn reuse_segment(dir: &Path, aside: &Path, number: u64) -> Result<File, FileLogError> {
    let temporary = dir.join(format!("{number:016x}.tmp"));
    fs::rename(aside, &temporary).map_err(io_error("rename", aside))?;
    let file = open_buffered(&temporary)?;
    let mut block = vec![0u8; SYNC_ALIGN_BYTES];
    block[..HEADER_BYTES].copy_from_slice(&segment_header());
    file.write_all_at(&block, 0)
        .and_then(|()| file.sync_data())
        .map_err(io_error("write", &temporary))?;
    drop(file);
    open_writer(&temporary)
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

/// What replaying one segment found.
struct Replayed {
    /// The offset after its last complete sync: where its log ends.
    end: u64,
    /// The highest entry index of each replica in it.
    max_index: BTreeMap<ReplicaId, u64>,
    /// Where it says its predecessor's log ended (number, offset), if it says.
    previous_end: Option<(u64, u64)>,
    /// Its format version.
    version: u32,
}

/// Replays segment `number` (at `path`) into `replay`, up to its first record that does not
/// parse with its salt: zeros, an earlier life's records, or a torn sync (see the module docs
/// for how the caller tells corruption from an end).
fn replay_segment(path: &Path, number: u64, replay: &mut Replay) -> Result<Replayed, FileLogError> {
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
        return Err(corrupt(0, "not a Cairn log segment".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if !(FORMAT_VERSION_OLDEST..=FORMAT_VERSION).contains(&version) {
        return Err(corrupt(
            8,
            format!(
                "log format version {version}, this build reads \
                 {FORMAT_VERSION_OLDEST} to {FORMAT_VERSION}"
            ),
        ));
    }
    // Version 5 starts every sync on a block boundary.
    let aligned = version >= 5;
    let salt = salt(number);
    // Records of the sync being read, applied when its end record arrives.
    let mut batch: Vec<(usize, u8, ReplicaId, &[u8])> = Vec::new();
    let mut offset = first_record(version) as usize;
    let mut complete = offset;
    let mut max_index = BTreeMap::new();
    let mut previous_end = None;
    let mut parts = Parts::default();
    while offset < bytes.len() {
        let Ok((used, kind, replica, payload)) = parse_record(&bytes[offset..], salt) else {
            break;
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
                if kind == KIND_PREVIOUS_END {
                    let (number, end) = payload
                        .split_at_checked(8)
                        .and_then(|(n, e)| Some((n.try_into().ok()?, e.try_into().ok()?)))
                        .map(|(n, e)| (u64::from_le_bytes(n), u64::from_le_bytes(e)))
                        .ok_or_else(|| corrupt(at, "bad end of the previous segment".into()))?;
                    previous_end = previous_end.or(Some((number, end)));
                    continue;
                }
                let last_entry = if kind == KIND_SNAPSHOT_PART {
                    match parts.add(replica, payload).map_err(|r| corrupt(at, r))? {
                        Some(whole) => apply_record(replay, KIND_SNAPSHOT, replica, &whole),
                        None => Ok(None),
                    }
                } else if parts.open() {
                    Err("a record between the parts of a snapshot".into())
                } else {
                    apply_record(replay, kind, replica, payload)
                }
                .map_err(|reason| corrupt(at, reason))?;
                if let Some(index) = last_entry {
                    let max: &mut u64 = max_index.entry(replica).or_default();
                    *max = (*max).max(index);
                }
            }
            if parts.open() {
                return Err(corrupt(
                    offset,
                    "a snapshot's parts end inside a sync".into(),
                ));
            }
            complete = offset + used;
            if aligned {
                complete = complete.next_multiple_of(SYNC_ALIGN_BYTES);
            }
            offset = complete;
        } else {
            batch.push((offset, kind, replica, payload));
            offset += used;
        }
    }
    Ok(Replayed {
        end: complete as u64,
        max_index,
        previous_end,
        version,
    })
}

/// A segment's log must end where its successor says: ending earlier means a synced record of
/// it does not parse. A successor that says nothing was left empty by a crash (nothing to
/// check), and one naming another number follows a segment the cleaner removed.
fn check_previous_end(
    path: &Path,
    previous: Option<(u64, u64)>,
    said: Option<(u64, u64)>,
) -> Result<(), FileLogError> {
    match (previous, said) {
        (Some((number, end)), Some((said_number, said_end)))
            if number == said_number && end != said_end =>
        {
            Err(FileLogError::Corrupt {
                path: path.to_path_buf(),
                offset: end,
                reason: format!(
                    "segment {number:016x}'s log ends at byte {end}, its successor says {said_end}: \
                     a corrupt record in it"
                ),
            })
        }
        _ => Ok(()),
    }
}

/// The salt of segment `number`'s record checksums. Distinct for any two numbers below 2^32
/// (CRC-32C tells apart inputs that differ within 32 bits), so a recycled segment's old records
/// never parse under its new number.
fn salt(number: u64) -> u32 {
    crc32c(&number.to_le_bytes())
}

/// XORs `salt` into the checksum of every record in `buffer` (whole records, back to back).
fn salt_records(buffer: &mut [u8], salt: u32) {
    let mut at = 0;
    while at < buffer.len() {
        let length = u32::from_le_bytes(
            buffer[at..at + 4]
                .try_into()
                .expect("invariant: whole records"),
        );
        let crc = &mut buffer[at + 4..at + 8];
        let salted = u32::from_le_bytes((&*crc).try_into().expect("4 bytes")) ^ salt;
        crc.copy_from_slice(&salted.to_le_bytes());
        at += 4 + length as usize;
    }
    assert_eq!(
        at,
        buffer.len(),
        "invariant: the buffer holds whole records"
    );
}

/// Splits one record off the front of `bytes`: (bytes used, kind, replica, payload).
fn parse_record(bytes: &[u8], salt: u32) -> Result<(usize, u8, ReplicaId, &[u8]), String> {
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
    if crc32c(&bytes[8..end]) ^ salt != stored {
        return Err("record checksum mismatch".into());
    }
    let kind = bytes[8];
    let replica = ReplicaId(u64::from_le_bytes(
        bytes[9..17].try_into().expect("8 bytes"),
    ));
    Ok((end, kind, replica, &bytes[17..end]))
}

/// The parts of a snapshot read so far (they come in order, inside one sync).
#[derive(Default)]
struct Parts {
    replica: Option<ReplicaId>,
    total: u64,
    bytes: Vec<u8>,
}

impl Parts {
    fn open(&self) -> bool {
        self.replica.is_some()
    }

    /// Adds a part; answers the whole payload once its last part is in.
    fn add(&mut self, replica: ReplicaId, payload: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let (header, data) = payload
            .split_at_checked(16)
            .ok_or("snapshot part header incomplete")?;
        let total = u64::from_le_bytes(header[0..8].try_into().expect("8 bytes"));
        let offset = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if offset == 0 {
            if self.open() {
                return Err("a snapshot starts before the previous one ended".into());
            }
            if total > SNAPSHOT_BYTES_MAX as u64 {
                return Err(format!("snapshot of {total} bytes"));
            }
            *self = Parts {
                replica: Some(replica),
                total,
                bytes: Vec::with_capacity(total as usize),
            };
        }
        let expected = self.bytes.len() as u64;
        if self.replica != Some(replica) || offset != expected || total != self.total {
            return Err(format!(
                "snapshot part at {offset} of {total} where {expected} of {} was due",
                self.total
            ));
        }
        if data.is_empty() || expected + data.len() as u64 > total {
            return Err("snapshot part past the announced length".into());
        }
        self.bytes.extend_from_slice(data);
        if self.bytes.len() as u64 == total {
            let whole = std::mem::take(&mut self.bytes);
            *self = Parts::default();
            return Ok(Some(whole));
        }
        Ok(None)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A new segment: the header, then zeros to the exact size, by either way of writing.
    fn check_prepared(dir: &Path, number: u64, size: u64) {
        drop(prepare_segment(dir, number, size).expect("prepare"));
        let bytes = fs::read(dir.join(format!("{number:016x}.tmp"))).expect("read");
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(bytes[..HEADER_BYTES], segment_header());
        assert!(
            bytes[HEADER_BYTES..].iter().all(|b| *b == 0),
            "zeros after the header"
        );
    }

    #[test]
    fn segments_are_zero_filled_around_the_cache_or_through_it() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        // Aligned: O_DIRECT, which disk file systems take; only tmpfs-like ones refuse it
        // (EINVAL), and then this run checks the fallback alone.
        let probe = dir.path().join("probe");
        match zero_fill_direct(&probe, (2 << 20) + 4096) {
            Ok(()) => {
                let bytes = fs::read(&probe).expect("read");
                assert_eq!(bytes.len(), (2 << 20) + 4096);
                assert_eq!(bytes[..HEADER_BYTES], segment_header());
                assert!(bytes[HEADER_BYTES..].iter().all(|b| *b == 0));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!("O_DIRECT refused here ({e}): the fallback alone is checked");
            }
            Err(e) => panic!("O_DIRECT zero fill: {e}"),
        }
        check_prepared(dir.path(), 1, (2 << 20) + 4096);
        // Not a multiple of 4 KiB: through the page cache.
        check_prepared(dir.path(), 2, (1 << 20) + 100);
    }

    fn entry(index: u64, fill: u8) -> Entry {
        Entry {
            index,
            term: 1,
            data: vec![fill; 300],
            ..Entry::default()
        }
    }

    /// Goal: a log written by the previous format (version 4: records from byte 16, syncs
    /// unpadded) replays, and the store goes on in a new version 5 segment that restarts to
    /// the same state. Method: write a version 4 segment by hand, open, append, reopen.
    #[test]
    fn a_version_4_log_is_replayed_and_continued_in_a_new_segment() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let g = ReplicaId(9);
        let mut records = Vec::new();
        encode_record(&mut records, KIND_CREATE, g, &GroupId(3).0.to_le_bytes());
        let entries = [entry(1, 1), entry(2, 2)];
        let bytes = 4 + entries.iter().map(|e| 4 + e.encoded_len()).sum::<usize>();
        encode_record_with(&mut records, KIND_APPEND, g, bytes, |b| {
            b.extend_from_slice(&2u32.to_le_bytes());
            for e in &entries {
                b.extend_from_slice(&(e.encoded_len() as u32).to_le_bytes());
                e.encode(b).expect("encode");
            }
        });
        encode_record(
            &mut records,
            KIND_SYNC_END,
            ReplicaId(0),
            &2u32.to_le_bytes(),
        );
        salt_records(&mut records, salt(1));
        let mut segment = segment_header().to_vec();
        segment[8..12].copy_from_slice(&4u32.to_le_bytes());
        segment.extend_from_slice(&records);
        let v4_end = segment.len() as u64;
        segment.resize(64 << 10, 0);
        fs::write(segment_path(dir.path(), 1), &segment).expect("write");

        let mut store = FileLogStore::open_with_segment_size(dir.path(), 64 << 10).expect("open");
        let state = store.load().expect("load");
        assert_eq!(state[&g].group, GroupId(3));
        assert_eq!(state[&g].entries.len(), 2);
        store.append(g, &[entry(3, 3)]).expect("append");
        store.sync().expect("sync");
        assert_eq!(
            store.end_position(),
            (segment_path(dir.path(), 2), 2 * ALIGN),
            "the next sync went to a new segment, one block after its header"
        );
        drop(store);
        let segment = fs::read(segment_path(dir.path(), 1)).expect("read");
        assert_eq!(
            segment[8..12],
            4u32.to_le_bytes(),
            "the old segment is left as it was"
        );
        assert!(segment[v4_end as usize..].iter().all(|b| *b == 0));
        let reopened = FileLogStore::open_with_segment_size(dir.path(), 64 << 10).expect("reopen");
        let state = reopened.load().expect("load");
        assert_eq!(state[&g].group, GroupId(3));
        let data: Vec<u8> = state[&g].entries.iter().map(|e| e.data[0]).collect();
        assert_eq!(data, [1, 2, 3]);
    }

    /// Goal: syncs bypass the page cache on a disk file system, every sync starting on a
    /// block boundary. Method: open a store under /var/tmp (ext4 here; tmpfs would refuse
    /// O_DIRECT, and then only the alignment is checked), look at the segment's open flags,
    /// sync twice, check the end positions.
    #[test]
    fn syncs_are_block_aligned_and_direct_where_the_file_system_allows() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let mut store = FileLogStore::open_with_segment_size(dir.path(), 1 << 20).expect("open");
        // SAFETY: F_GETFL on a descriptor this store owns.
        // SAFETY: F_GETFL only reads the flags of a descriptor the store keeps open.
        let flags = unsafe { libc::fcntl(store.segment.as_raw_fd(), libc::F_GETFL) };
        assert!(flags >= 0, "fcntl: {}", io::Error::last_os_error());
        let probe = dir.path().join("probe");
        if zero_fill_direct(&probe, 4096).is_ok() {
            assert_ne!(flags & libc::O_DIRECT, 0, "the segment is written O_DIRECT");
        }
        let g = ReplicaId(1);
        store.create_group(g, GroupId(1)).expect("create");
        store.append(g, &[entry(1, 1)]).expect("append");
        store.sync().expect("sync");
        assert_eq!(store.end_position().1, 2 * ALIGN);
        let big: Vec<Entry> = (2..=30).map(|i| entry(i, i as u8)).collect();
        store.append(g, &big).expect("append");
        store.sync().expect("sync");
        let end = store.end_position().1;
        assert!(end > 3 * ALIGN && end.is_multiple_of(ALIGN), "{end}");
        drop(store);
        let reopened = FileLogStore::open_with_segment_size(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(reopened.load().expect("load")[&g].entries.len(), 30);
        assert_eq!(reopened.end_position().1, end);
    }
}
