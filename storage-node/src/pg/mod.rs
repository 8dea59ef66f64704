//! Placement groups on a storage node: PG replicas as Raft groups whose committed writes are
//! applied to the chunk store of the disk each replica lives on.
//!
//! A [`PgHost`] owns the node's multi-raft runtime ([`RaftNode`]) and its disks. The caller
//! drives it like the runtime itself: [`PgHost::tick`], [`PgHost::step`] with what peers sent,
//! then [`PgHost::round`], which persists and applies everything ready and returns the
//! messages to send (the batch addressed to this node itself goes back into `step`: a node may
//! host several replicas of one PG, as `cairn dev` does with its three disks).
//!
//! # Writes
//!
//! [`PgHost::write`] proposes a write through the PG's leader replica (hosted here, or
//! `NotLeader` with a hint) and answers once the entry is committed, which means a majority of
//! the replicas hold it in their synced Raft logs; every replica then applies it to its chunk
//! store, and reads wait for that (see Reads). The Raft log (on the write-cache device) is the
//! durable record; chunk stores are written without a flush and are replayed from the log
//! after a crash (writes are idempotent, and replay keeps their order).
//!
//! # Discards
//!
//! [`PgHost::discard`] proposes a discard (SCSI UNMAP) the same way: committed, then applied
//! to every replica's chunk store in log order with the writes, where the blocks it covers
//! whole become unwritten without data IO, the blocks it covers in part are zeroed, and a
//! chunk left with no written block is deleted ([`ChunkStore::discard`]). It carries no data,
//! so one entry may cover a whole chunk. After a crash it is replayed like a write: a partial
//! block whose checksum the replay finds stale is merged as stored
//! ([`ChunkStore::discard_replaying`]).
//!
//! # Reads
//!
//! [`PgHost::read`] is linearizable: a ReadIndex round confirms the leader's commit index,
//! and the replica that asked serves the read once it has applied that index; with a
//! [`NodeConfig::read_lease`] a leader whose leadership a round confirmed moments ago serves
//! at its commit index without another (`cairn` gives its hosts a lease of three quarters of
//! the minimum election timeout). A chunk never written reads as zeros (thin volumes).
//!
//! # Read-repair
//!
//! A block whose checksum fails on a replica (a read, the read-modify-write of a partial
//! write, or the background scrub) is fetched from another replica of the same PG on this
//! node that has applied exactly as much of the log, else from a member on another node
//! (leader first) that has applied at least as much ([`PgHost::set_remote_source`]); it is
//! written back, counted in [`PgStats`] and logged with the chunk and block; then the IO is
//! retried. Without a good copy anywhere the read fails with the checksum error: bad data is
//! never returned. The background scrub reads every written block of every replica here,
//! [`SCRUB_STEP_BYTES`] per [`SCRUB_STEP_TICKS_DEFAULT`] ticks.
//!
//! # Compaction
//!
//! Once a PG's log holds [`COMPACT_ENTRIES_DEFAULT`] entries past its snapshot, or its share of
//! [`LOG_BYTES_NODE_MAX`] bytes (logs are held in memory until compacted), its leader
//! proposes a `Compact` command at the highest index every member holds (raft's matched
//! index, the leader's applied one at most). Each replica applies it in log order: it starts a
//! flush of its chunk store (everything it applied, so that index at least, becomes durable),
//! off the round, and once the flush is done compacts its log there with a snapshot that only
//! records the index. All replicas drop the
//! same prefix, so no member ever needs entries another compacted away, and a member that was
//! down catches up from the log (TiKV's CompactLog). A restart replays the entries after the
//! snapshot.
//!
//! # Membership
//!
//! Each PG's members come from its map ([`PgHost::set_target`]); local leaders move the Raft
//! configuration there one change at a time (`change_memberships`: learner, promotion with
//! the removal of a dropped member, leadership handed over first), each change carrying the
//! map epoch it was made from so a leader with an older map changes nothing. A member added
//! later joins with an empty log and is sent a snapshot; its chunks are copied first
//! ([`restore`]). Replicas that leave are dropped and their chunks deleted; two replicas of
//! one PG never share a disk.
//!
//! # Disk failures
//!
//! An IO error from a disk (EIO, an engine gone) in an apply, a read, the scrub or a flush
//! takes that disk out of service ([`ChunkStore::fail`]: every later IO on it
//! fails at once) and stops every replica on it: the runtime unloads them and keeps their logs
//! (an emptied log could let the same replica vote as if it never acknowledged what it did).
//! Their peers see them silent; the heartbeat names the disk failed, and the metadata service
//! moves its members elsewhere without waiting for the heartbeat timeout. The node's other
//! disks and its log go on: before, one disk's EIO ended the whole PG host. A write committed
//! was answered already and the other members apply it; a read is answered `Dropped` and
//! retried at a member that serves. Errors of the log device still stop the host. A full file
//! system stops only the replica that could not write (its disk is not failed: moving all
//! its replicas would fill the next disk).

pub mod command;
pub mod restore;
pub mod service;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use cairn_common::{BLOCK_SIZE, ChunkId, DiskId, GroupId, ReplicaId};
use cairn_raft::{
    Apply, MemberChange, NodeConfig, Outbox, ProposeError, RaftNode, conf_change_context,
    log::LogStore,
    raft_types::{EntryType, Message, MessageType, StateRole},
};
use tokio::sync::oneshot;

use command::CommandError;
pub use command::{DISCARD_BYTES_MAX, PgCommand, Proposal, WRITE_BYTES_MAX};
pub use restore::{ChunkSource, LocalSource, RestoreWanted};

use crate::{ChunkStore, Error, ErrorClass};

/// Client requests waiting for their entry to apply or their read index, per host. Beyond it
/// new requests are refused with `Busy`.
pub const PENDING_REQUESTS_MAX: usize = 4096;

/// Ticks a request may wait before it is answered `Dropped` (the client retries): two of the
/// longest election timeouts. A request can be lost without a term change here (a read
/// forwarded to a leader that had not committed in its term yet).
pub const REQUEST_TICKS_MAX: u64 = 40;

/// Into how many slices [`PgHost::tick_slice`] divides a tick. With every group ticked at
/// once, `cairn dev`'s 96 replicas spent 1.5-1.9 ms on each heartbeat round (every other
/// 50 ms tick), during which no write was answered: a 4 KiB write every 100 ms took 2 ms
/// instead of 0.45, the whole of the 99th percentile at queue depth 1.
pub const TICK_SLICES: u64 = 5;

/// Entries a PG's log holds past its snapshot before its leader proposes a compaction: bounds
/// the log a restart replays (4096 x at most 1 MiB) and how often chunk stores are flushed.
pub const COMPACT_ENTRIES_DEFAULT: u64 = 4096;

/// Bytes of entries all the Raft logs of a node may hold past their snapshots: they live in
/// memory until compacted, and 4096 entries of 1 MiB on each of hundreds of replicas would not
/// fit any machine. Each replica's share (within [`COMPACT_BYTES_MIN`, `COMPACT_BYTES_MAX`])
/// makes its leader propose a compaction whatever the entry count.
pub const LOG_BYTES_NODE_MAX: u64 = 2 << 30;
/// The smallest per-replica share: below it compactions (each a flush of the chunk stores)
/// would come every few writes.
pub const COMPACT_BYTES_MIN: u64 = 4 << 20;
/// The largest per-replica share: a few replicas alone do not get the whole budget.
pub const COMPACT_BYTES_MAX: u64 = 64 << 20;
const _: () = assert!(COMPACT_BYTES_MIN <= COMPACT_BYTES_MAX);

/// The snapshot data of a compaction: a version byte and the index the chunk stores hold.
const COMPACTION_VERSION: u8 = 1;

fn compaction_data(index: u64) -> Vec<u8> {
    let mut data = vec![COMPACTION_VERSION];
    data.extend_from_slice(&index.to_le_bytes());
    data
}

fn compaction_index(data: &[u8]) -> Option<u64> {
    match data {
        [COMPACTION_VERSION, rest @ ..] => Some(u64::from_le_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// Ticks between checks that each PG is led by its preferred replica.
pub const LEADER_BALANCE_TICKS: u64 = 50;
/// Ticks between two leadership transfers of one PG: a preferred replica that cannot take over
/// (down, lagging) is not asked again at once.
pub const LEADER_TRANSFER_TICKS_MIN: u64 = 200;

/// Ticks between checks for PGs whose logs are due a compaction: a log grows by at most a few
/// hundred entries in that time, against thousands between compactions.
pub const COMPACT_CHECK_TICKS: u64 = 10;

/// Ticks before a PG leader proposes a compaction again while its last one has not applied.
pub const COMPACT_RETRY_TICKS: u64 = 50;

/// Ticks between checks that each PG this node leads has the members its PG map lists.
pub const MEMBERSHIP_CHECK_TICKS: u64 = 10;

/// Ticks before a PG leader proposes a membership change again while its last one has not
/// shown in the configuration (raft drops a change proposed while another is pending).
pub const MEMBERSHIP_RETRY_TICKS: u64 = 50;

/// A learner is promoted once its log is at most this many entries behind the leader's: it
/// then catches up within a round trip, so promoting it does not stall commits.
pub const LEARNER_LAG_MAX: u64 = 16;

/// Ticks a replica its PG map no longer lists may go without knowing a leader (or, for a
/// learner, at all) before it is dropped (30 s at 10 ms ticks). A member the map dropped stays a voter until the leader
/// removes it, and hears from that leader meanwhile; one that hears from nobody for this long
/// was removed while it was away (it never learns that itself) or its PG is down anyway.
pub const LEFT_BEHIND_TICKS: u64 = 3000;

/// Ticks a replica counts as needing replacement after it refused a snapshot (10 s at 10 ms
/// ticks): the leader resends the snapshot every heartbeat, so a replica that still needs
/// one keeps refusing within this time.
pub const REFUSED_TICKS: u64 = 1000;

/// Ticks between sweeps that compact every PG with anything past its snapshot, however little
/// its log holds (10 s at 10 ms ticks). The node's log is shared by all its replicas and lets
/// go of segments oldest first, only once every entry in them is compacted: one idle PG's few
/// entries (an election, say) would pin every segment written after them, and a node whose
/// writes go to a few hot PGs filled its log device (cairn dev, writes to one chunk: 9 new
/// 64 MiB segments every 10 s, none ever released). All PGs due compact in the same sweep so
/// that one chunk-store flush per disk serves them all: compacting each PG 10 s after its
/// own last compaction flushed the disks three times a second and cost 4 KiB writes at qd1
/// about 15%. A PG that compacted within the last half period waits for the next sweep.
pub const COMPACT_IDLE_TICKS_DEFAULT: u64 = 1000;

/// Ticks between two steps of the background scrub (100 ms at 10 ms ticks).
pub const SCRUB_STEP_TICKS_DEFAULT: u64 = 10;

/// Ticks between the digests a PG's leader proposes (10 minutes at 10 ms ticks). Every replica
/// records what it holds at the digest's log index; the metadata service compares the records
/// from the heartbeats, so a replica that applied something differently stands out even where
/// its checksums match what it wrongly holds (which no read and no scrub can see).
pub const DIGEST_TICKS_DEFAULT: u64 = 60_000;

/// A replica's digest of its PG's chunks as of a log index ([`PgCommand::Digest`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentDigest {
    /// The digest entry's log index: replicas' digests compare at equal indexes only.
    pub index: u64,
    /// [`ChunkStore::content_digest`] of the PG's chunks.
    pub value: u64,
}

/// Bytes one scrub step reads (and verifies, repairing what fails): with a step every 100 ms,
/// 10 MB/s per node, a small share of a disk's bandwidth (DESIGN.md invariant 4), which
/// still walks a 1 TB disk in about 28 hours.
pub const SCRUB_STEP_BYTES: u32 = 1 << 20;

/// How long a repair waits for a block from a replica on another node. The host waits
/// inside its round (a repair is rare); a peer that does not answer in time is skipped.
pub const REMOTE_REPAIR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Blocks one IO may repair before it gives up: a range of a few corrupt blocks is repaired
/// whole; a disk returning garbage everywhere is not chased block by block.
pub const REPAIRS_PER_IO_MAX: usize = 16;

/// Counters of a host, shared with whoever exports them.
#[derive(Debug, Default)]
pub struct PgStats {
    /// Blocks repaired from another replica after a checksum failure.
    pub read_repairs: AtomicU64,
    /// Checksum failures no replica here could repair (the IO failed).
    pub unrepaired: AtomicU64,
    /// Writes applied to chunk stores (every replica counts its own).
    pub writes_applied: AtomicU64,
    /// Discards applied to chunk stores (every replica counts its own).
    pub discards_applied: AtomicU64,
    /// Reads served.
    pub reads_served: AtomicU64,
    /// Reads started under the leader's lease, without a ReadIndex round.
    pub reads_leased: AtomicU64,
    /// Bytes the background scrub read and verified.
    pub scrubbed_bytes: AtomicU64,
    /// Full passes of the background scrub over every replica here.
    pub scrub_passes: AtomicU64,
    /// Snapshot copies completed into joining replicas.
    pub restores: AtomicU64,
    /// Bytes copied into joining replicas.
    pub restored_bytes: AtomicU64,
    /// Snapshots refused by replicas that hold state (a lagging member cannot take a copy
    /// safely; the scheduler replaces it).
    pub snapshots_refused: AtomicU64,
    /// Replicas dropped after leaving their PG (their chunks deleted).
    pub replicas_dropped: AtomicU64,
}

/// Why a PG request failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// No replica of the PG here leads it; retry at the leader's node if known.
    #[error("not the leader of {group} (leader hint {leader:?})")]
    NotLeader {
        /// The PG.
        group: GroupId,
        /// The leader a local replica knows of.
        leader: Option<ReplicaId>,
    },
    /// This node hosts no replica of the PG.
    #[error("{0} has no replica on this node")]
    UnknownGroup(GroupId),
    /// The leader dropped the proposal (a leadership transfer, a full queue): retry.
    #[error("{0}: proposal dropped; retry")]
    Dropped(GroupId),
    /// Too many requests in flight or queued: retry later.
    #[error("busy: too many requests in flight")]
    Busy,
    /// The request does not fit the chunk geometry or the write limit.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The disk was taken out of service after an IO on it failed.
    #[error("disk {disk} failed: {reason}")]
    DiskFailed {
        /// The disk.
        disk: DiskId,
        /// What failed.
        reason: String,
    },
    /// A chunk store failed.
    #[error("{replica}: {source}")]
    Store {
        /// The replica whose disk failed.
        replica: ReplicaId,
        /// The store's error.
        #[source]
        source: Error,
    },
    /// The Raft runtime or its log failed: the host must be restarted from its log.
    #[error("raft: {0}")]
    Raft(String),
}

/// A replica to host: one member of a PG as the PG map lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewReplica {
    /// The PG.
    pub group: GroupId,
    /// The replica.
    pub replica: ReplicaId,
    /// The PG's members as its map lists them now, the preferred leader first.
    pub members: Vec<ReplicaId>,
    /// True for a member added to an existing PG: it joins with an empty log and is sent a
    /// snapshot (its chunks are copied). False for the PG's first members, which start from
    /// the bootstrap configuration of the members not added later.
    pub joined: bool,
    /// The members placed with the pool that are still listed (the bootstrap configuration
    /// of a member that is not `joined`).
    pub first_voters: Vec<ReplicaId>,
    /// The disk its chunks go on.
    pub disk: DiskId,
    /// The PG count of its pool (which chunks belong to the PG).
    pub pg_count: u32,
    /// The epoch of the map that lists it.
    pub epoch: u64,
}

/// What a PG map says of one PG: its members, the preferred leader first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTarget {
    /// The PG.
    pub group: GroupId,
    /// Its members.
    pub members: Vec<ReplicaId>,
    /// The PG count of its pool.
    pub pg_count: u32,
    /// The map's epoch: a leader changes the configuration only from a map at least as new
    /// as the one the last change was made from.
    pub epoch: u64,
}

/// One replica's state, as a heartbeat reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaState {
    /// The replica.
    pub replica: ReplicaId,
    /// Its PG.
    pub group: GroupId,
    /// True if it leads its PG.
    pub leader: bool,
    /// Its term.
    pub term: u64,
    /// Its commit index.
    pub commit: u64,
    /// The last index applied to its chunk store.
    pub applied: u64,
    /// For a leader, the voters of the configuration it applied (empty otherwise).
    pub voters: Vec<ReplicaId>,
    /// For a leader, the learners of that configuration.
    pub learners: Vec<ReplicaId>,
    /// True while the replica copies its PG's chunks from a peer.
    pub restoring: bool,
    /// Bytes copied into it so far.
    pub restored_bytes: u64,
    /// True if it recently refused a snapshot: it holds state, so it cannot take a copy, and
    /// its log is behind the leader's: it can never catch up and must be replaced.
    pub needs_replacing: bool,
    /// For a leader with learners (members copying the PG), the bytes of the PG's chunks on
    /// its disk: what each of them copies in all (0 otherwise).
    pub pg_bytes: u64,
    /// Its latest digest, if it applied one since it started (and held its chunks then).
    pub digest: Option<ContentDigest>,
}

/// Where a write's or read's answer goes.
type Reply<T> = oneshot::Sender<Result<T, PgError>>;

/// A request waits on the replica that took it, in the term it took it: a new term means the
/// request may be lost (raft-rs drops pending reads on a leadership change; a proposal may be
/// overwritten), so it is answered `Dropped` and the client retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Taken {
    replica: ReplicaId,
    term: u64,
    tick: u64,
}

/// A write or a discard waiting to be applied here.
struct PendingWrite {
    taken: Taken,
    reply: Reply<()>,
}

struct PendingRead {
    taken: Taken,
    chunk: ChunkId,
    offset: u32,
    length: u32,
    reply: Reply<Vec<u8>>,
}

/// What `process_ready` handed over, owned, to be applied after it returns (the chunk store
/// is asynchronous, the runtime is not).
enum Applied {
    Entry {
        index: u64,
        data: Vec<u8>,
    },
    Snapshot {
        index: u64,
        data: Vec<u8>,
        installed: bool,
    },
}

/// One replica hosted here as the node's data API sees it: its store, its PG and how far it
/// has applied. Peers read chunks through it (a copy for a joining replica, a block for a
/// repair) without going through the host's task, which may itself be waiting on a peer.
#[derive(Clone)]
pub struct HostedReplica {
    /// The store of its disk.
    pub store: Arc<ChunkStore>,
    /// Its PG.
    pub group: GroupId,
    /// Its pool's PG count (0 until a map said).
    pub pg_count: u32,
    /// The last index it applied.
    pub applied: Arc<AtomicU64>,
}

/// The replicas hosted here, shared with the data API.
pub type ReplicaDirectory = Arc<std::sync::RwLock<BTreeMap<ReplicaId, HostedReplica>>>;

/// Where a joining replica stands with the copy of its chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restore {
    /// A snapshot arrived; the caller has not taken the copy yet.
    Wanted(RestoreWanted),
    /// The caller copies, for a snapshot at `index`.
    Running { index: u64 },
    /// Copied and flushed after a snapshot at `index` was sent: snapshots up to it install.
    Done { index: u64 },
}

/// A copy for the caller to run (see [`PgHost::take_restores`]).
pub struct RestoreJob {
    /// What to copy.
    pub wanted: RestoreWanted,
    /// The PG count of the pool.
    pub pg_count: u32,
    /// The joining replica's store.
    pub dest: Arc<ChunkStore>,
    /// The source's store when the sender is a replica on this node.
    pub local_source: Option<Arc<ChunkStore>>,
    /// Bytes copied so far (reported in heartbeats).
    pub progress: Arc<AtomicU64>,
}

/// What a plain entry does to a byte range of a chunk.
enum Change {
    /// Writes these bytes there.
    Write(Vec<u8>),
    /// Makes this many bytes read as zeros.
    Discard(u32),
}

/// A committed write or discard, decoded, to apply to one replica's store.
struct PlainOp {
    index: u64,
    incarnation: u64,
    request: u64,
    chunk: ChunkId,
    offset: u32,
    change: Change,
}

/// The write or discard an applied entry carries, if it is one (not a snapshot, an empty or
/// configuration entry, a compaction, or bytes that do not decode: those apply one by one).
fn plain_op(applied: &Applied) -> Option<PlainOp> {
    let Applied::Entry { index, data } = applied else {
        return None;
    };
    let proposal = Proposal::decode(data).ok()?;
    PlainOp::new(*index, proposal)
}

impl PlainOp {
    /// The write or discard a proposal at `index` carries, if it is one.
    fn new(index: u64, proposal: Proposal) -> Option<PlainOp> {
        let (chunk, offset, change) = match proposal.command {
            PgCommand::Write {
                chunk,
                offset,
                data,
            } => (chunk, offset, Change::Write(data)),
            PgCommand::Discard {
                chunk,
                offset,
                length,
            } => (chunk, offset, Change::Discard(length)),
            PgCommand::Compact { .. } | PgCommand::Digest => return None,
        };
        Some(PlainOp {
            index,
            incarnation: proposal.incarnation,
            request: proposal.request,
            chunk,
            offset,
            change,
        })
    }

    /// Applies it to `store`: a write creates the chunk if needed; a discard of a chunk that
    /// does not exist changes nothing.
    async fn apply_to(&self, store: &ChunkStore, how: WriteAs) -> Result<(), Error> {
        match &self.change {
            Change::Write(data) => write_chunk_as(store, self.chunk, self.offset, data, how).await,
            Change::Discard(length) => {
                let (offset, length) = (u64::from(self.offset), u64::from(*length));
                if how == WriteAs::Replay {
                    store.discard_replaying(self.chunk, offset, length).await
                } else {
                    store.discard(self.chunk, offset, length).await
                }
            }
        }
    }
}

/// How a write meets a replica's chunk store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteAs {
    /// A follower's apply, a repair, a restore's copy: written only.
    Copy,
    /// The leader's apply: its blocks also go into the store's read cache, since the leader
    /// serves the PG's reads ([`ChunkStore::write_cached`]).
    Leader,
    /// A replay after a crash ([`ChunkStore::write_replaying`]).
    Replay,
}

/// A compaction waiting for its store flush (see [`PgHost::compact`]).
struct Flushing {
    replica: ReplicaId,
    disk: DiskId,
    index: u64,
    flush: tokio::task::JoinHandle<Result<(), Error>>,
}

/// The PG replicas of one storage node over its disks (see the module docs).
pub struct PgHost<L: LogStore> {
    node: RaftNode<L>,
    disks: BTreeMap<DiskId, Arc<ChunkStore>>,
    /// The disk each hosted replica's chunks live on.
    placement: BTreeMap<ReplicaId, DiskId>,
    /// Distinguishes this host's proposals from those of its earlier lives (after a restart
    /// the log replays entries whose requests nobody waits for any more).
    incarnation: u64,
    counter: u64,
    ticks: u64,
    /// The slice [`PgHost::tick_slice`] ticks next.
    next_slice: u64,
    writes: BTreeMap<u64, PendingWrite>,
    reads: BTreeMap<u64, PendingRead>,
    /// Per replica, the last log index applied to its chunk store.
    applied: BTreeMap<ReplicaId, u64>,
    stats: Arc<PgStats>,
    compact_entries: u64,
    /// Ticks between sweeps compacting every PG however little its log holds.
    compact_idle_ticks: u64,
    /// The tick of the last such sweep.
    idle_sweep_tick: u64,
    /// Set by tests: the log bytes that trigger a compaction, instead of the node's share.
    compact_bytes: Option<u64>,
    /// Per PG, the tick and index of the last compaction proposed.
    compactions: BTreeMap<GroupId, (u64, u64)>,
    /// Compactions applied whose store flush runs on a task of its own: the log is compacted
    /// at the index once it is done (see [`PgHost::compact`]).
    flushing: Vec<Flushing>,
    /// Per PG, the replica that should lead it (the PG map's first member).
    preferred: BTreeMap<GroupId, ReplicaId>,
    /// Per PG, the tick of the last leadership transfer asked for.
    transfers: BTreeMap<GroupId, u64>,
    /// Per PG, its members as the PG map lists them (leaders change the configuration to it).
    targets: BTreeMap<GroupId, Vec<ReplicaId>>,
    /// Per PG, the epoch of the map in `targets`.
    target_epochs: BTreeMap<GroupId, u64>,
    /// Per PG, the newest map epoch a configuration change applied here was made from.
    config_epochs: BTreeMap<GroupId, u64>,
    /// Per PG, its pool's PG count.
    pg_counts: BTreeMap<GroupId, u32>,
    /// Per PG, the tick of the last membership change proposed.
    changes: BTreeMap<GroupId, u64>,
    /// Joining replicas' copies.
    restores: BTreeMap<ReplicaId, Restore>,
    /// Per joining replica, bytes copied so far.
    restore_progress: BTreeMap<ReplicaId, Arc<AtomicU64>>,
    /// Per replica its map no longer lists, the tick since which it has known no leader.
    left_behind: BTreeMap<ReplicaId, u64>,
    /// The replicas hosted as of the last round, with their PGs (to notice those that left).
    hosted: BTreeMap<ReplicaId, GroupId>,
    /// Per replica hosted at start, the last index its log held then: entries up to it are
    /// a replay after a possible crash.
    replay_until: BTreeMap<ReplicaId, u64>,
    /// Per replica, the tick it last refused a snapshot.
    refused: BTreeMap<ReplicaId, u64>,
    /// The replicas hosted here, for the data API.
    directory: ReplicaDirectory,
    /// Where blocks come from for a repair when no replica here holds a good copy.
    remote: Option<Arc<dyn ChunkSource>>,
    /// Where the background scrub is.
    scrub: Scrub,
    /// Ticks between scrub steps (0: no scrub).
    scrub_step_ticks: u64,
    /// Ticks between the digests leaders here propose (0: none).
    digest_ticks: u64,
    /// Per replica, its latest digest.
    digests: BTreeMap<ReplicaId, ContentDigest>,
    /// Replicas this host stopped running (their disk failed or is missing, or they could
    /// not apply a committed entry), with their PGs: never hosted again in this process.
    /// Their logs stay (a restart runs them again) until the PG map drops them
    /// ([`PgHost::set_target`]).
    stopped: BTreeMap<ReplicaId, GroupId>,
}

/// The background scrub's cursor: it reads every written block of every replica here, one
/// piece per step, and a block that fails its checksum is repaired like on any read.
#[derive(Default)]
struct Scrub {
    /// The replica being scrubbed, with the chunks of its PG listed when it began.
    replica: Option<(ReplicaId, Vec<ChunkId>)>,
    /// The chunk (index into the list) and the offset in it.
    chunk: usize,
    offset: u32,
    /// The tick of the last step.
    last_tick: u64,
    /// The step's read, on a task of its own: 1 MiB read on the host's task held every
    /// write behind it for a millisecond.
    reading: Option<tokio::task::JoinHandle<ScrubRead>>,
}

/// A scrub step's read, for the host to finish.
struct ScrubRead {
    replica: ReplicaId,
    chunk: ChunkId,
    offset: u32,
    length: u32,
    result: Result<(), Error>,
}

impl<L: LogStore> PgHost<L> {
    /// Starts the node's runtime on `log` over `disks`. `placement` names the disk of every
    /// replica the log holds (the metadata service's PG map says it); a replica without a
    /// known disk is an error. A replica whose disk is not among `disks` (it failed to open,
    /// or was taken out of the node) does not run: like a replica of a failed disk, its log
    /// stays and its PG's other members go on.
    pub fn new(
        config: NodeConfig,
        log: L,
        disks: Vec<Arc<ChunkStore>>,
        placement: BTreeMap<ReplicaId, DiskId>,
    ) -> Result<PgHost<L>, PgError> {
        let mut node = RaftNode::new(config, log).map_err(|e| PgError::Raft(e.to_string()))?;
        let disks: BTreeMap<DiskId, Arc<ChunkStore>> =
            disks.into_iter().map(|d| (d.disk_id(), d)).collect();
        let mut stopped = BTreeMap::new();
        let replicas: Vec<(ReplicaId, GroupId)> = node.replicas().collect();
        for (replica, group) in replicas {
            let Some(disk) = placement.get(&replica) else {
                return Err(PgError::Invalid(format!(
                    "{replica} of {group} has no known disk"
                )));
            };
            if !disks.contains_key(disk) {
                let why = format!("its disk {disk} is not on this node (failed to open?)");
                tracing::error!(%replica, %group, "replica not started: {why}");
                node.unload_group(replica)
                    .map_err(|e| PgError::Raft(e.to_string()))?;
                stopped.insert(replica, group);
            }
        }
        let incarnation = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let hosted: BTreeMap<ReplicaId, GroupId> = node.replicas().collect();
        let replay_until = node
            .replicas()
            .filter_map(|(r, _)| Some((r, node.status(r)?.last_index)))
            .collect();
        let host = PgHost {
            node,
            disks,
            placement,
            incarnation,
            counter: 0,
            ticks: 0,
            next_slice: 0,
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            applied: BTreeMap::new(),
            stats: Arc::new(PgStats::default()),
            compact_entries: COMPACT_ENTRIES_DEFAULT,
            compact_idle_ticks: COMPACT_IDLE_TICKS_DEFAULT,
            idle_sweep_tick: 0,
            compact_bytes: None,
            compactions: BTreeMap::new(),
            flushing: Vec::new(),
            preferred: BTreeMap::new(),
            transfers: BTreeMap::new(),
            targets: BTreeMap::new(),
            target_epochs: BTreeMap::new(),
            config_epochs: BTreeMap::new(),
            pg_counts: BTreeMap::new(),
            changes: BTreeMap::new(),
            restores: BTreeMap::new(),
            restore_progress: BTreeMap::new(),
            left_behind: BTreeMap::new(),
            hosted,
            replay_until,
            refused: BTreeMap::new(),
            directory: ReplicaDirectory::default(),
            remote: None,
            scrub: Scrub::default(),
            scrub_step_ticks: SCRUB_STEP_TICKS_DEFAULT,
            digest_ticks: DIGEST_TICKS_DEFAULT,
            digests: BTreeMap::new(),
            stopped,
        };
        host.refresh_directory();
        Ok(host)
    }

    /// Hosts `replica`, one of the first `voters` of PG `group`, on `disk`.
    pub fn create_replica(
        &mut self,
        group: GroupId,
        replica: ReplicaId,
        voters: &[ReplicaId],
        disk: DiskId,
    ) -> Result<(), PgError> {
        self.check_disk(group, disk)?;
        self.node
            .create_group(group, replica, voters)
            .map_err(|e| PgError::Raft(e.to_string()))?;
        self.placement.insert(replica, disk);
        self.hosted.insert(replica, group);
        self.refresh_directory();
        Ok(())
    }

    /// Hosts `replica`, being added to PG `group`, on `disk` with an empty log: the leader
    /// sends it a snapshot, and its chunks are copied before it installs it.
    pub fn join_replica(
        &mut self,
        group: GroupId,
        replica: ReplicaId,
        disk: DiskId,
    ) -> Result<(), PgError> {
        self.replace_leftover(group, disk);
        self.check_disk(group, disk)?;
        self.node
            .join_group(group, replica)
            .map_err(|e| PgError::Raft(e.to_string()))?;
        self.placement.insert(replica, disk);
        self.hosted.insert(replica, group);
        self.refresh_directory();
        Ok(())
    }

    /// Stops hosting a replica of `group` on `disk` that the map no longer lists, to make room
    /// for a new member there. The scheduler moves only settled PGs, whose configuration is
    /// their map, so such a leftover is in no configuration: nothing needs it. Its chunks stay
    /// for the new member's copy, which overwrites or deletes every chunk of the PG on the
    /// disk before the member installs its snapshot.
    fn replace_leftover(&mut self, group: GroupId, disk: DiskId) {
        let leftover = self.placement.iter().find(|(replica, d)| {
            **d == disk
                && self.hosted.get(*replica) == Some(&group)
                && !self.listed(group, **replica)
        });
        let Some((&leftover, _)) = leftover else {
            return;
        };
        // A copy still running into it would go on writing the PG's chunks on this disk
        // under the new member's: wait for it to end (the host is asked again next refresh).
        if matches!(self.restores.get(&leftover), Some(Restore::Running { .. })) {
            return;
        }
        if let Err(e) = self.node.remove_group(leftover) {
            tracing::error!(replica = %leftover, "cannot drop a leftover replica: {e}");
            return;
        }
        // Forgotten here rather than by `clean_dropped`, which would delete the chunks.
        self.forget(leftover);
        tracing::info!(replica = %leftover, %group, %disk, "leftover replica replaced by a new member on its disk");
    }

    /// Forgets what the host keeps of a replica the runtime no longer runs, leaving its chunks
    /// where they are (`clean_dropped` would delete them).
    fn forget(&mut self, replica: ReplicaId) {
        self.hosted.remove(&replica);
        self.placement.remove(&replica);
        self.applied.remove(&replica);
        self.restores.remove(&replica);
        self.restore_progress.remove(&replica);
        self.refused.remove(&replica);
        self.left_behind.remove(&replica);
        self.replay_until.remove(&replica);
        self.digests.remove(&replica);
        self.refresh_directory();
    }

    /// Stops running a replica that cannot go on applying its PG's log, leaving its log and
    /// chunks: its peers see it silent (the PG keeps its quorum with the others) and the
    /// metadata service replaces it. Its requests waiting here are answered `Dropped` (their
    /// replica is gone), so clients retry at the PG's other members.
    fn stop_replica(&mut self, replica: ReplicaId, why: String) {
        let Some(group) = self.node.status(replica).map(|s| s.group) else {
            return; // Not running.
        };
        if self.node.unload_group(replica).is_err() {
            return;
        }
        tracing::error!(%replica, %group, "replica stopped: {why}");
        self.forget(replica);
        self.stopped.insert(replica, group);
    }

    /// Takes a disk out of service after an IO on it failed, and stops every replica on it
    /// (module docs, "Disk failures").
    fn fail_disk(&mut self, disk: DiskId, cause: &Error) {
        let Some(store) = self.disks.get(&disk) else {
            return;
        };
        if store.fail(cause.to_string()) {
            tracing::error!(%disk, dir = %store.dir().display(), "disk failed, taken out of service: {cause}");
        }
        let on_disk: Vec<ReplicaId> = self
            .placement
            .iter()
            .filter(|(replica, d)| **d == disk && self.hosted.contains_key(*replica))
            .map(|(replica, _)| *replica)
            .collect();
        for replica in on_disk {
            self.stop_replica(replica, format!("disk {disk} failed: {cause}"));
        }
    }

    /// After a replica's store failed an IO: a disk error takes its disk out of service; any
    /// other error (a block no replica could repair, a full file system) stops the replica
    /// alone, which cannot skip an entry its peers apply. A full file system is not a failed
    /// disk: failing it moved its replicas onto the other disks, which filled up and failed
    /// in turn (a chaos run on a full machine lost every disk of the cluster in a second).
    fn store_failed(&mut self, replica: ReplicaId, error: &Error) {
        if let Some(&disk) = self.placement.get(&replica) {
            self.disk_error(disk, Some(replica), error);
        }
    }

    /// [`PgHost::store_failed`] for an IO of `disk`, on behalf of `replica` if it still runs.
    fn disk_error(&mut self, disk: DiskId, replica: Option<ReplicaId>, error: &Error) {
        let full = matches!(error, Error::NoSpace { .. });
        if error.class() == ErrorClass::Fatal && !full {
            self.fail_disk(disk, error);
        } else if let Some(replica) = replica.filter(|r| self.hosted.contains_key(r)) {
            let why = match full {
                true => format!("its disk {disk} is full: {error}"),
                false => format!("cannot apply its PG's log: {error}"),
            };
            self.stop_replica(replica, why);
        }
    }

    /// The disks taken out of service, with why.
    pub fn failed_disks(&self) -> Vec<(DiskId, String)> {
        self.disks
            .iter()
            .filter_map(|(disk, store)| Some((*disk, store.failure()?.to_string())))
            .collect()
    }

    /// A disk here, holding no replica of `group` yet. Chunks are keyed by chunk id, not by
    /// replica, so two replicas of one PG on one disk would share (and overwrite, and delete)
    /// each other's chunks: that is refused here, whatever a map says.
    fn check_disk(&self, group: GroupId, disk: DiskId) -> Result<(), PgError> {
        let Some(store) = self.disks.get(&disk) else {
            return Err(PgError::Invalid(format!("disk {disk} is not on this node")));
        };
        if let Some(why) = store.failure() {
            return Err(PgError::DiskFailed {
                disk,
                reason: why.to_string(),
            });
        }
        let taken = self.placement.iter().find(|(replica, d)| {
            **d == disk
                && self
                    .node
                    .status(**replica)
                    .is_some_and(|s| s.group == group)
        });
        if let Some((other, _)) = taken {
            return Err(PgError::Invalid(format!(
                "disk {disk} already holds {other} of {group}"
            )));
        }
        Ok(())
    }

    /// Hosts a replica of a new PG and names the PG's preferred leader (its first voter).
    /// Returns false if the replica was hosted already (its preferred leader is set again).
    pub fn host_new(&mut self, new: NewReplica) -> Result<bool, PgError> {
        self.set_target(PgTarget {
            group: new.group,
            members: new.members.clone(),
            pg_count: new.pg_count,
            epoch: new.epoch,
        })?;
        if self.node.status(new.replica).is_some() || self.stopped.contains_key(&new.replica) {
            return Ok(false);
        }
        if new.joined {
            self.join_replica(new.group, new.replica, new.disk)?;
        } else {
            if !new.first_voters.contains(&new.replica) {
                return Err(PgError::Invalid(format!(
                    "{} of {}: a first member missing from the first voters",
                    new.replica, new.group
                )));
            }
            self.create_replica(new.group, new.replica, &new.first_voters, new.disk)?;
        }
        Ok(true)
    }

    /// Records what the PG map says of a PG: local leaders move its configuration there, and
    /// its first member is the preferred leader.
    pub fn set_target(&mut self, target: PgTarget) -> Result<(), PgError> {
        let preferred = *target
            .members
            .first()
            .ok_or_else(|| PgError::Invalid(format!("{}: a PG without members", target.group)))?;
        if target.pg_count == 0 {
            return Err(PgError::Invalid(format!(
                "{}: a pool of 0 PGs",
                target.group
            )));
        }
        self.set_preferred_leader(target.group, preferred);
        // Maps arrive from a poll: an older one than held (a slow answer) changes nothing.
        if self
            .target_epochs
            .get(&target.group)
            .is_some_and(|held| *held > target.epoch)
        {
            return Ok(());
        }
        self.target_epochs.insert(target.group, target.epoch);
        self.forget_stopped(target.group, &target.members);
        let known = self.pg_counts.insert(target.group, target.pg_count);
        self.targets.insert(target.group, target.members);
        if known != Some(target.pg_count) {
            self.refresh_directory();
        }
        Ok(())
    }

    /// Removes from the log the stopped replicas of `group` its map no longer lists (the
    /// metadata service replaced them): they never run again, and their entries would pin
    /// every later log segment (segments go oldest first, once all they hold is compacted),
    /// so a node that lost a disk would fill its log device. Safe: a replica the map does
    /// not list is never hosted again, and to its PG it is a silent member until removed.
    fn forget_stopped(&mut self, group: GroupId, members: &[ReplicaId]) {
        let gone: Vec<ReplicaId> = self
            .stopped
            .iter()
            .filter(|(replica, g)| **g == group && !members.contains(replica))
            .map(|(replica, _)| *replica)
            .collect();
        for replica in gone {
            match self.node.remove_unloaded(replica) {
                Ok(()) => {
                    self.stopped.remove(&replica);
                    tracing::info!(%replica, %group, "stopped replica replaced in its PG's map; its log dropped");
                }
                Err(e) => tracing::error!(%replica, "cannot drop a stopped replica's log: {e}"),
            }
        }
    }

    /// The replicas hosted here, with their PGs.
    pub fn replicas(&self) -> impl Iterator<Item = (ReplicaId, GroupId)> + '_ {
        self.node.replicas()
    }

    /// The runtime, for status.
    pub fn node(&self) -> &RaftNode<L> {
        &self.node
    }

    /// The runtime itself, for tests and tools that must reach Raft directly (proposing raw
    /// entries). Requests proposed through it are not tracked or answered by the host.
    pub fn node_mut(&mut self) -> &mut RaftNode<L> {
        &mut self.node
    }

    /// The host's counters.
    pub fn stats(&self) -> Arc<PgStats> {
        self.stats.clone()
    }

    /// The state of every replica hosted here, for heartbeats.
    pub fn report(&self) -> Vec<ReplicaState> {
        self.node
            .replicas()
            .filter_map(|(replica, group)| {
                let status = self.node.status(replica)?;
                let leader = status.role == StateRole::Leader;
                let (voters, learners) = match self.node.membership(replica) {
                    Some(conf) if leader => (
                        conf.voters.iter().map(|v| ReplicaId(*v)).collect(),
                        conf.learners.iter().map(|l| ReplicaId(*l)).collect(),
                    ),
                    _ => (Vec::new(), Vec::new()),
                };
                let restoring = self.is_fresh(replica);
                let pg_bytes = match self.pg_counts.get(&group) {
                    Some(&pg_count) if !learners.is_empty() => {
                        let store = self.store(replica);
                        let chunks = restore::pg_chunks(store, group, pg_count).len() as u64;
                        chunks * u64::from(store.chunk_size_bytes())
                    }
                    _ => 0,
                };
                Some(ReplicaState {
                    replica,
                    group,
                    leader,
                    term: status.term,
                    commit: status.commit,
                    applied: self.applied.get(&replica).copied().unwrap_or(0),
                    voters,
                    learners,
                    restoring,
                    restored_bytes: self
                        .restore_progress
                        .get(&replica)
                        .map_or(0, |p| p.load(Ordering::Relaxed)),
                    needs_replacing: self
                        .refused
                        .get(&replica)
                        .is_some_and(|at| self.ticks.saturating_sub(*at) < REFUSED_TICKS),
                    pg_bytes,
                    digest: self.digests.get(&replica).copied(),
                })
            })
            .collect()
    }

    /// Sets how many entries past its snapshot a PG's log holds before its leader proposes a
    /// compaction (tests use small numbers).
    pub fn set_compact_entries(&mut self, entries: u64) {
        assert!(entries > 0, "compaction interval");
        self.compact_entries = entries;
    }

    /// Sets the ticks between sweeps compacting every PG however little its log holds (tests
    /// use small numbers; see [`COMPACT_IDLE_TICKS_DEFAULT`]).
    pub fn set_compact_idle_ticks(&mut self, ticks: u64) {
        assert!(ticks > 0, "idle compaction interval");
        self.compact_idle_ticks = ticks;
    }

    /// Sets how many bytes of entries a replica's log holds before its leader proposes a
    /// compaction, instead of its share of [`LOG_BYTES_NODE_MAX`] (tests use small numbers).
    pub fn set_compact_bytes(&mut self, bytes: u64) {
        assert!(bytes > 0, "compaction size");
        self.compact_bytes = Some(bytes);
    }

    /// For each PG this node leads whose log holds at least the compaction interval past its
    /// snapshot, or its share of [`LOG_BYTES_NODE_MAX`] in bytes, proposes compacting every replica's log up to the highest index all members
    /// hold (see the module docs). A PG whose last proposal has not applied yet gets no other
    /// for [`COMPACT_RETRY_TICKS`] ticks (it may have been lost with a leadership change).
    fn propose_compactions(&mut self) {
        let now = self.ticks;
        let hosted = self.node.replicas().count().max(1) as u64;
        let bytes_max = self.compact_bytes.unwrap_or_else(|| {
            (LOG_BYTES_NODE_MAX / hosted).clamp(COMPACT_BYTES_MIN, COMPACT_BYTES_MAX)
        });
        let leaders: Vec<(ReplicaId, GroupId)> = self
            .node
            .replicas()
            .filter(|(r, _)| self.node.min_matched(*r).is_some())
            .collect();
        let sweep = now.saturating_sub(self.idle_sweep_tick) >= self.compact_idle_ticks;
        if sweep {
            self.idle_sweep_tick = now;
        }
        for (replica, group) in leaders {
            let (Some(status), Some(matched)) =
                (self.node.status(replica), self.node.min_matched(replica))
            else {
                continue;
            };
            let recent = self.compactions.get(&group).is_some_and(|(at, proposed)| {
                *proposed > status.snapshot_index && now.saturating_sub(*at) < COMPACT_RETRY_TICKS
            });
            let last = self.compactions.get(&group).map_or(0, |(at, _)| *at);
            let idle = sweep
                && status.applied > status.snapshot_index
                && now.saturating_sub(last) >= self.compact_idle_ticks / 2;
            let long = status.applied.saturating_sub(status.snapshot_index) >= self.compact_entries
                || status.log_bytes >= bytes_max
                || idle;
            let applied = self.applied.get(&replica).copied().unwrap_or(0);
            let index = matched.min(applied);
            if recent || !long || index <= status.snapshot_index {
                continue;
            }
            let proposal = Proposal {
                incarnation: self.incarnation,
                request: 0,
                command: PgCommand::Compact { index },
            };
            if self.node.propose(replica, proposal.encode()).is_ok() {
                self.compactions.insert(group, (now, index));
            }
        }
    }

    /// Advances every replica's clock by one tick.
    pub fn tick(&mut self) {
        self.node.tick();
        self.ticked();
    }

    /// Advances the clocks of the next [`TICK_SLICES`]th of the replicas: called
    /// [`TICK_SLICES`] times as often as [`PgHost::tick`] would be, it ticks every replica at
    /// the same rate while spreading the groups' heartbeats over the tick (see
    /// [`RaftNode::tick_slice`]). The host's own periodic work runs once per whole tick.
    pub fn tick_slice(&mut self) {
        self.node.tick_slice(self.next_slice, TICK_SLICES);
        self.next_slice = (self.next_slice + 1) % TICK_SLICES;
        if self.next_slice == 0 {
            self.ticked();
        }
    }

    /// The host's periodic work, once per whole tick.
    fn ticked(&mut self) {
        self.ticks += 1;
        if self.ticks.is_multiple_of(LEADER_BALANCE_TICKS) {
            self.balance_leaders();
        }
        if self.ticks.is_multiple_of(COMPACT_CHECK_TICKS) {
            self.propose_compactions();
        }
        if self.digest_ticks > 0 && self.ticks.is_multiple_of(self.digest_ticks) {
            self.propose_digests();
        }
        if self.ticks.is_multiple_of(MEMBERSHIP_CHECK_TICKS) {
            self.change_memberships();
            self.drop_left_behind();
        }
    }

    /// True if `group`'s map lists `replica` (or no map has been seen for the group).
    fn listed(&self, group: GroupId, replica: ReplicaId) -> bool {
        self.targets
            .get(&group)
            .is_none_or(|members| members.contains(&replica))
    }

    /// True for a replica that has applied nothing: a joining member before its snapshot
    /// (its store may be being filled by a copy).
    fn is_fresh(&self, replica: ReplicaId) -> bool {
        self.node
            .status(replica)
            .is_some_and(|s| s.snapshot_index == 0 && s.applied == 0)
    }

    /// Moves the configuration of each PG this node leads towards its map, one change at a
    /// time: a member the map adds joins as a learner; a learner that caught up (it installed
    /// a snapshot, so it holds the chunks) is promoted in one joint change with the removal of
    /// a voter the map dropped, so the voter count never shrinks below the map's; a leader the
    /// map dropped hands leadership to a caught-up member first; learners the map does not
    /// list are removed.
    fn change_memberships(&mut self) {
        let now = self.ticks;
        for (leader, group) in self.leading() {
            let Some(target) = self.targets.get(&group) else {
                continue;
            };
            let recent = self
                .changes
                .get(&group)
                .is_some_and(|at| now.saturating_sub(*at) < MEMBERSHIP_RETRY_TICKS);
            let (Some(conf), Some(progress), Some(status)) = (
                self.node.membership(leader),
                self.node.progress(leader),
                self.node.status(leader),
            ) else {
                continue;
            };
            // A map older than the one the last change came from (this leader's node has not
            // polled the newer one yet) would undo that change: wait for it.
            let epoch = self.target_epochs.get(&group).copied().unwrap_or(0);
            let stale = self
                .config_epochs
                .get(&group)
                .is_some_and(|applied| *applied > epoch);
            if recent || stale || !conf.voters_outgoing.is_empty() {
                continue;
            }
            let voters: Vec<ReplicaId> = conf.voters.iter().map(|v| ReplicaId(*v)).collect();
            let learners: Vec<ReplicaId> = conf.learners.iter().map(|l| ReplicaId(*l)).collect();
            let caught_up = |r: &ReplicaId| {
                progress.get(r).is_some_and(|matched| {
                    *matched > 0
                        && *matched >= status.snapshot_index
                        && status.last_index.saturating_sub(*matched) <= LEARNER_LAG_MAX
                })
            };
            let extra: Vec<ReplicaId> = voters
                .iter()
                .filter(|v| !target.contains(v))
                .copied()
                .collect();
            let missing = target
                .iter()
                .find(|t| !voters.contains(t) && !learners.contains(t));
            let ready = learners.iter().find(|l| target.contains(l) && caught_up(l));
            let stray = learners.iter().find(|l| !target.contains(l));
            let changes: Vec<MemberChange> = if let Some(stray) = stray {
                vec![MemberChange::Remove(*stray)]
            } else if let Some(missing) = missing {
                vec![MemberChange::AddLearner(*missing)]
            } else if extra.contains(&leader) {
                // Leadership goes first: a leader never proposes its own removal.
                let heir = voters
                    .iter()
                    .find(|v| **v != leader && target.contains(v) && caught_up(v));
                if let Some(heir) = heir
                    && self.node.transfer_leader(leader, *heir).is_ok()
                {
                    self.changes.insert(group, now);
                }
                continue;
            } else if let Some(ready) = ready {
                let mut changes = vec![MemberChange::AddVoter(*ready)];
                changes.extend(extra.first().map(|v| MemberChange::Remove(*v)));
                changes
            } else if let Some(extra) = extra.first()
                && voters.len() > target.len()
            {
                vec![MemberChange::Remove(*extra)]
            } else {
                continue;
            };
            match self
                .node
                .change_members_with(leader, &changes, epoch.to_le_bytes().to_vec())
            {
                Ok(()) => {
                    tracing::info!(%group, %leader, ?changes, "PG membership change proposed");
                    self.changes.insert(group, now);
                }
                Err(e) => tracing::debug!(%group, "membership change not proposed: {e:?}"),
            }
        }
    }

    /// Drops replicas their map no longer lists that have known no leader for
    /// [`LEFT_BEHIND_TICKS`] (see there). A replica still in its PG's configuration hears
    /// from the leader and is removed by it instead (and drops itself when it applies that).
    fn drop_left_behind(&mut self) {
        let now = self.ticks;
        let mut drop = Vec::new();
        let hosted: Vec<(ReplicaId, GroupId)> = self.node.replicas().collect();
        for (replica, group) in hosted {
            let listed = self.listed(group, replica);
            // A copy running into it must end first (it would write chunks after the
            // cleanup); it ends within the copy's own time.
            let copying = matches!(self.restores.get(&replica), Some(Restore::Running { .. }));
            // Learners never campaign, so one removed keeps its old leader in mind: not being
            // a voter counts like hearing no leader.
            let leaderless = self
                .node
                .status(replica)
                .is_some_and(|s| s.leader.is_none());
            let voter = self
                .node
                .membership(replica)
                .is_some_and(|c| c.voters.contains(&replica.0));
            if listed || copying || (voter && !leaderless) {
                self.left_behind.remove(&replica);
                continue;
            }
            let since = *self.left_behind.entry(replica).or_insert(now);
            if now - since >= LEFT_BEHIND_TICKS {
                drop.push(replica);
            }
        }
        for replica in drop {
            self.left_behind.remove(&replica);
            match self.node.remove_group(replica) {
                Ok(()) => {
                    tracing::warn!(%replica, "dropped: no longer in its PG's map and no leader heard for {LEFT_BEHIND_TICKS} ticks")
                }
                Err(e) => tracing::error!(%replica, "cannot drop: {e}"),
            }
        }
    }

    /// Copies wanted since the last call, at most [`restore::RESTORES_RUNNING_MAX`] running
    /// at once; the caller runs each ([`restore::copy_pg`]) and reports with
    /// [`PgHost::restore_done`].
    pub fn take_restores(&mut self) -> Vec<RestoreJob> {
        let running = self
            .restores
            .values()
            .filter(|r| matches!(r, Restore::Running { .. }))
            .count();
        let wanted: Vec<RestoreWanted> = self
            .restores
            .values()
            .filter_map(|r| match r {
                Restore::Wanted(w) => Some(*w),
                _ => None,
            })
            .take(restore::RESTORES_RUNNING_MAX.saturating_sub(running))
            .collect();
        let mut jobs = Vec::new();
        for wanted in wanted {
            let (Some(&pg_count), Some(&disk)) = (
                self.pg_counts.get(&wanted.group),
                self.placement.get(&wanted.replica),
            ) else {
                self.restores.remove(&wanted.replica);
                continue;
            };
            let local_source = self
                .placement
                .get(&wanted.from)
                .map(|d| self.disks[d].clone());
            let progress = self
                .restore_progress
                .entry(wanted.replica)
                .or_default()
                .clone();
            self.restores.insert(
                wanted.replica,
                Restore::Running {
                    index: wanted.index,
                },
            );
            tracing::info!(replica = %wanted.replica, group = %wanted.group, from = %wanted.from, index = wanted.index, "copying the PG's chunks for a snapshot");
            jobs.push(RestoreJob {
                wanted,
                pg_count,
                dest: self.disks[&disk].clone(),
                local_source,
                progress,
            });
        }
        jobs
    }

    /// A copy ended: on success, the next snapshot the replica is sent at `index` or below
    /// installs; on failure the next snapshot asks for a new copy.
    pub fn restore_done(&mut self, wanted: RestoreWanted, result: Result<u64, String>) {
        if !self.hosted.contains_key(&wanted.replica) {
            self.restores.remove(&wanted.replica);
            return;
        }
        match result {
            Ok(bytes) => {
                tracing::info!(replica = %wanted.replica, group = %wanted.group, bytes, "PG chunks copied; installing the snapshot");
                self.stats.restores.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .restored_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
                self.restores.insert(
                    wanted.replica,
                    Restore::Done {
                        index: wanted.index,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(replica = %wanted.replica, group = %wanted.group, from = %wanted.from, "copying the PG's chunks failed (retried with the next snapshot): {e}");
                self.restores.remove(&wanted.replica);
            }
        }
    }

    /// The replicas hosted here with their stores and applied indexes, kept up to date by
    /// the host: the data API serves peers from it.
    pub fn directory(&self) -> ReplicaDirectory {
        self.directory.clone()
    }

    /// Lets repairs fetch blocks from replicas on other nodes.
    pub fn set_remote_source(&mut self, source: Arc<dyn ChunkSource>) {
        self.remote = Some(source);
    }

    /// Records how far a replica applied, here and in the directory.
    fn set_applied(&mut self, replica: ReplicaId, index: u64) {
        self.applied.insert(replica, index);
        let directory = self.directory.read().expect("invariant: not poisoned");
        if let Some(hosted) = directory.get(&replica) {
            hosted.applied.store(index, Ordering::Relaxed);
        }
    }

    /// Brings the directory in line with the replicas hosted and the PG counts known.
    fn refresh_directory(&self) {
        let mut directory = self.directory.write().expect("invariant: not poisoned");
        directory.retain(|replica, _| self.hosted.contains_key(replica));
        for (replica, group) in &self.hosted {
            let Some(disk) = self.placement.get(replica) else {
                continue;
            };
            let pg_count = self.pg_counts.get(group).copied().unwrap_or(0);
            let applied = self.applied.get(replica).copied().unwrap_or(0);
            let entry = directory.entry(*replica).or_insert_with(|| HostedReplica {
                store: self.disks[disk].clone(),
                group: *group,
                pg_count,
                applied: Arc::new(AtomicU64::new(applied)),
            });
            entry.pg_count = pg_count;
        }
    }

    /// Names the replica that should lead `group` (the PG map lists it first; placement
    /// spreads these over the disks). A local leader hands leadership over to it.
    pub fn set_preferred_leader(&mut self, group: GroupId, replica: ReplicaId) {
        self.preferred.insert(group, replica);
    }

    /// Asks each local leader that is not its PG's preferred replica to transfer leadership,
    /// at most once per [`LEADER_TRANSFER_TICKS_MIN`] per PG.
    fn balance_leaders(&mut self) {
        let now = self.ticks;
        let preferred: Vec<(GroupId, ReplicaId)> =
            self.preferred.iter().map(|(g, r)| (*g, *r)).collect();
        for (group, target) in preferred {
            let Ok(leader) = self.leader_replica(group) else {
                continue;
            };
            let recent = self
                .transfers
                .get(&group)
                .is_some_and(|at| now - at < LEADER_TRANSFER_TICKS_MIN);
            if leader == target || recent {
                continue;
            }
            if self.node.transfer_leader(leader, target).is_ok() {
                self.transfers.insert(group, now);
            }
        }
    }

    /// Feeds a batch of Raft messages (from a peer, or this node's own batch).
    pub fn step(&mut self, mut batch: Vec<(GroupId, Message)>) {
        batch.retain(|(group, message)| self.admit(*group, message));
        self.node.step(batch);
    }

    /// Holds back a snapshot for a replica whose chunks are not copied for it yet (see
    /// [`restore`]); everything else passes.
    fn admit(&mut self, group: GroupId, message: &Message) -> bool {
        if message.msg_type != MessageType::MsgSnapshot as i32 {
            return true;
        }
        let replica = ReplicaId(message.to);
        if self.node.status(replica).is_none_or(|s| s.group != group) {
            return true; // Not ours: the runtime drops it.
        }
        let index = message
            .snapshot
            .as_ref()
            .and_then(|s| s.metadata.as_ref())
            .map_or(0, |m| m.index);
        if !self.is_fresh(replica) {
            // Taking a copy under a replica that applies entries could leave blocks older
            // than the snapshot: refused, and the scheduler replaces the member.
            self.stats.snapshots_refused.fetch_add(1, Ordering::Relaxed);
            self.refused.insert(replica, self.ticks);
            tracing::debug!(%replica, %group, index, "snapshot refused: the replica holds state");
            return false;
        }
        match self.restores.get(&replica) {
            Some(Restore::Done { index: copied }) if index <= *copied => true,
            Some(Restore::Running { .. } | Restore::Wanted(_)) => false,
            _ => {
                self.restores.insert(
                    replica,
                    Restore::Wanted(RestoreWanted {
                        replica,
                        group,
                        from: ReplicaId(message.from),
                        index,
                    }),
                );
                false
            }
        }
    }

    /// The local replica of `group` that leads it.
    fn leader_replica(&self, group: GroupId) -> Result<ReplicaId, PgError> {
        let mut hint = None;
        let mut any = false;
        for replica in self.node.replicas_of(group) {
            let status = self
                .node
                .status(replica)
                .expect("invariant: listed replica");
            if status.role == cairn_raft::raft_types::StateRole::Leader {
                return Ok(replica);
            }
            // A follower the map dropped (left over from before this node was away) knows no
            // leader and never will: requests go to the PG's members elsewhere instead of
            // waiting on it.
            if !self.listed(group, replica) {
                continue;
            }
            any = true;
            hint = hint.or(status.leader);
        }
        if !any {
            return Err(PgError::UnknownGroup(group));
        }
        Err(PgError::NotLeader {
            group,
            leader: hint,
        })
    }

    fn next_request(&mut self) -> Result<u64, PgError> {
        if self.writes.len() + self.reads.len() >= PENDING_REQUESTS_MAX {
            return Err(PgError::Busy);
        }
        self.counter += 1;
        Ok(self.counter)
    }

    /// Writes `data` at `offset` of `chunk` through PG `group`; the receiver answers once the
    /// write is committed (see the module docs and [`PgHost::answer_committed`]).
    pub fn write(
        &mut self,
        group: GroupId,
        chunk: ChunkId,
        offset: u32,
        data: Vec<u8>,
    ) -> Result<oneshot::Receiver<Result<(), PgError>>, PgError> {
        self.check_request(group, offset, data.len(), Some(WRITE_BYTES_MAX))?;
        let command = PgCommand::Write {
            chunk,
            offset,
            data,
        };
        self.propose_change(group, command)
    }

    /// Discards `length` bytes at `offset` of `chunk` through PG `group`: they read as zeros
    /// to every read that begins once the receiver answers, which it does once the discard is
    /// committed (see the module docs). Up to a whole chunk in one request; errors as for
    /// [`PgHost::write`].
    pub fn discard(
        &mut self,
        group: GroupId,
        chunk: ChunkId,
        offset: u32,
        length: u32,
    ) -> Result<oneshot::Receiver<Result<(), PgError>>, PgError> {
        self.check_request(group, offset, length as usize, None)?;
        assert!(
            length <= DISCARD_BYTES_MAX,
            "checked against the chunk size"
        );
        let command = PgCommand::Discard {
            chunk,
            offset,
            length,
        };
        self.propose_change(group, command)
    }

    /// Proposes a write or discard through `group`'s local leader and waits for it to apply.
    fn propose_change(
        &mut self,
        group: GroupId,
        command: PgCommand,
    ) -> Result<oneshot::Receiver<Result<(), PgError>>, PgError> {
        let leader = self.leader_replica(group)?;
        let request = self.next_request()?;
        let proposal = Proposal {
            incarnation: self.incarnation,
            request,
            command,
        };
        self.node
            .propose(leader, proposal.encode())
            .map_err(|e| propose_error(group, e))?;
        let (tx, rx) = oneshot::channel();
        let taken = self.taken(leader);
        self.writes
            .insert(request, PendingWrite { taken, reply: tx });
        Ok(rx)
    }

    /// Reads `length` bytes at `offset` of `chunk` of PG `group`, linearizably (see the module
    /// docs).
    pub fn read(
        &mut self,
        group: GroupId,
        chunk: ChunkId,
        offset: u32,
        length: u32,
    ) -> Result<oneshot::Receiver<Result<Vec<u8>, PgError>>, PgError> {
        self.check_request(group, offset, length as usize, Some(WRITE_BYTES_MAX))?;
        // A local leader confirms its commit index itself; a follower that knows a leader
        // forwards the read to it; without a leader raft would drop the read silently.
        let replica = match self.leader_replica(group) {
            Ok(replica) => replica,
            // A joining replica still copying would hold the read until it has applied the
            // read index: the leader's node serves it instead.
            Err(PgError::NotLeader {
                leader: Some(leader),
                ..
            }) => self
                .node
                .replicas_of(group)
                .find(|r| !self.is_fresh(*r) && self.listed(group, *r))
                .ok_or(PgError::NotLeader {
                    group,
                    leader: Some(leader),
                })?,
            Err(e) => return Err(e),
        };
        let request = self.next_request()?;
        let path = self
            .node
            .read(replica, request, std::time::Instant::now())
            .map_err(|e| propose_error(group, e))?;
        if path == cairn_raft::ReadPath::Leased {
            self.stats.reads_leased.fetch_add(1, Ordering::Relaxed);
        }
        let (tx, rx) = oneshot::channel();
        let read = PendingRead {
            taken: self.taken(replica),
            chunk,
            offset,
            length,
            reply: tx,
        };
        self.reads.insert(request, read);
        Ok(rx)
    }

    fn taken(&self, replica: ReplicaId) -> Taken {
        let term = self.node.status(replica).map_or(0, |s| s.term);
        Taken {
            replica,
            term,
            tick: self.ticks,
        }
    }

    /// False once the replica that took a request moved to another term (or went), or the
    /// request waited too long.
    fn still_valid(&self, taken: Taken) -> bool {
        let fresh = self.ticks - taken.tick <= REQUEST_TICKS_MAX;
        fresh
            && self
                .node
                .status(taken.replica)
                .is_some_and(|s| s.term == taken.term)
    }

    fn store(&self, replica: ReplicaId) -> &Arc<ChunkStore> {
        let disk = self.placement[&replica];
        &self.disks[&disk]
    }

    /// Refuses a request that does not fit one chunk or `length_max` (none: a discard, which
    /// the chunk alone bounds), whoever leads; `UnknownGroup` if no replica of `group` is
    /// hosted here.
    fn check_request(
        &self,
        group: GroupId,
        offset: u32,
        length: usize,
        length_max: Option<usize>,
    ) -> Result<(), PgError> {
        let replica = self
            .node
            .replicas_of(group)
            .next()
            .ok_or(PgError::UnknownGroup(group))?;
        let chunk_size = self.store(replica).chunk_size_bytes();
        let fits = u64::from(offset) + length as u64 <= u64::from(chunk_size);
        let within = length_max.is_none_or(|max| length <= max);
        if length == 0 || !within || !fits {
            let limit =
                length_max.map_or(String::new(), |max| format!(" (at most {max} per request)"));
            return Err(PgError::Invalid(format!(
                "{length} bytes at {offset} in a chunk of {chunk_size}{limit}"
            )));
        }
        Ok(())
    }

    /// One round: persist and apply what every replica has ready, answer the writes and reads
    /// it completes, and return the messages to send. An error means the log failed (a failed
    /// disk only stops its replicas: module docs): the host must be dropped and restarted from
    /// its log (messages already returned may go).
    pub async fn round(&mut self) -> Result<Outbox, PgError> {
        let mut outbox = Outbox::default();
        let mut applied: Vec<(ReplicaId, GroupId, Applied)> = Vec::new();
        let config_epochs = &mut self.config_epochs;
        self.node
            .process_ready(&mut outbox, |replica, group, apply| {
                applied.push((
                    replica,
                    group,
                    match apply {
                        Apply::Entry(entry) => {
                            let context = conf_change_context(entry);
                            if let Some(epoch) = context
                                .and_then(|c| <[u8; 8]>::try_from(c.as_slice()).ok())
                                .map(u64::from_le_bytes)
                            {
                                let held = config_epochs.entry(group).or_insert(0);
                                *held = (*held).max(epoch);
                            }
                            Applied::Entry {
                                index: entry.index,
                                data: match entry.get_entry_type() {
                                    EntryType::EntryNormal => entry.data.clone(),
                                    _ => Vec::new(),
                                },
                            }
                        }
                        Apply::Snapshot {
                            index,
                            data,
                            installed,
                        } => Applied::Snapshot {
                            index,
                            data: data.to_vec(),
                            installed,
                        },
                    },
                ))
            })
            .map_err(|e| PgError::Raft(e.to_string()))?;
        // In index order per PG, the replicas of one PG in step: a replica repairing a block
        // then finds its siblings at the same index more often.
        applied.sort_by_key(|(_, group, applied)| {
            let index = match applied {
                Applied::Entry { index, .. } | Applied::Snapshot { index, .. } => *index,
            };
            (*group, index)
        });
        // Plain writes and discards run concurrently, one task per replica (each replica's in
        // log order); anything else waits for the ones queued before it and runs alone.
        let mut queued: BTreeMap<ReplicaId, Vec<PlainOp>> = BTreeMap::new();
        for (replica, _, applied) in applied {
            match plain_op(&applied) {
                Some(op) => {
                    // Committed: answered even if this replica stopped (the others apply it).
                    self.answer_committed(&op);
                    if self.hosted.contains_key(&replica) {
                        queued.entry(replica).or_default().push(op);
                    }
                }
                None => {
                    if queued.contains_key(&replica) {
                        self.apply_ops(std::mem::take(&mut queued)).await?;
                    }
                    if self.hosted.contains_key(&replica) {
                        self.apply(replica, applied).await?;
                    }
                }
            }
        }
        self.apply_ops(queued).await?;
        self.serve_reads().await;
        self.drop_stale_requests();
        self.finish_compactions().await?;
        self.take_snapshots().await?;
        self.clean_dropped().await;
        self.scrub_step().await;
        Ok(outbox)
    }

    /// Serves the reads whose index is applied, all at once: each reads its store on its own
    /// task, and only one that meets a corrupt block comes back here to be repaired (repairs
    /// need the host). A read may see writes applied after its index: they committed before
    /// it was served, so it stays linearizable.
    async fn serve_reads(&mut self) {
        let mut in_flight = tokio::task::JoinSet::new();
        for read in self.node.take_reads() {
            let Some(pending) = self.reads.remove(&read.request) else {
                continue;
            };
            let store = self.store(read.replica).clone();
            in_flight.spawn(async move {
                let result =
                    read_chunk_with(&store, pending.chunk, pending.offset, pending.length, true)
                        .await;
                (read.replica, pending, result)
            });
        }
        while let Some(joined) = in_flight.join_next().await {
            let Ok((replica, pending, mut result)) = joined else {
                // A read task panicked: its reply went with it, and the caller gets an error.
                continue;
            };
            if matches!(result, Err(Error::Corrupt { .. })) && self.hosted.contains_key(&replica) {
                result = self
                    .read_repairing(replica, pending.chunk, pending.offset, pending.length)
                    .await;
            }
            let answer = match result {
                Ok(data) => {
                    self.stats.reads_served.fetch_add(1, Ordering::Relaxed);
                    Ok(data)
                }
                Err(e) if e.class() == ErrorClass::Fatal => {
                    // The disk failed: the replica stops, and the client retries at a
                    // member that still serves.
                    let group = self.hosted.get(&replica).copied();
                    self.store_failed(replica, &e);
                    Err(group.map_or(PgError::Store { replica, source: e }, PgError::Dropped))
                }
                Err(source) => Err(PgError::Store { replica, source }),
            };
            let _ = pending.reply.send(answer);
        }
    }

    /// Sets the ticks between background scrub steps (0 turns the scrub off; tests speed it
    /// up).
    pub fn set_scrub_step_ticks(&mut self, ticks: u64) {
        self.scrub_step_ticks = ticks;
    }

    /// Sets the ticks between the digests this host's leaders propose (0: none; tests and
    /// chaos runs speed it up).
    pub fn set_digest_ticks(&mut self, ticks: u64) {
        self.digest_ticks = ticks;
    }

    /// The replicas here that lead their PG, with the PG.
    fn leading(&self) -> Vec<(ReplicaId, GroupId)> {
        self.node
            .replicas()
            .filter(|(r, _)| {
                self.node
                    .status(*r)
                    .is_some_and(|s| s.role == StateRole::Leader)
            })
            .collect()
    }

    /// Proposes a digest in every PG this host leads.
    fn propose_digests(&mut self) {
        for (replica, _) in self.leading() {
            let proposal = Proposal {
                incarnation: self.incarnation,
                request: 0,
                command: PgCommand::Digest,
            };
            // Refused while leadership moves: the next interval proposes again.
            let _ = self.node.propose(replica, proposal.encode());
        }
    }

    /// Records `replica`'s digest at `index`: every entry before it is applied (plain writes
    /// queued before a digest are applied first). A replica that has not applied anything yet
    /// holds no chunks of its own, and one whose PG count is unknown cannot list them: neither
    /// records one.
    fn record_digest(&mut self, replica: ReplicaId, index: u64) {
        let group = self.node.status(replica).map(|s| s.group);
        let pg_count = group.and_then(|g| self.pg_counts.get(&g).copied());
        let (Some(group), Some(pg_count)) = (group, pg_count) else {
            self.digests.remove(&replica);
            return;
        };
        if self.is_fresh(replica) {
            self.digests.remove(&replica);
            return;
        }
        let store = self.store(replica);
        let chunks = restore::pg_chunks(store, group, pg_count);
        let value = store.content_digest(&chunks);
        self.digests.insert(replica, ContentDigest { index, value });
    }

    /// One step of the background scrub, if one is due: reads the next piece of the replica
    /// being scrubbed (verifying every block, repairing those that fail), then moves on;
    /// after the last chunk of the last replica, a pass is counted and the next begins.
    async fn scrub_step(&mut self) {
        let due = self.scrub_step_ticks > 0
            && self.ticks.saturating_sub(self.scrub.last_tick) >= self.scrub_step_ticks;
        if !due {
            return;
        }
        if let Some(reading) = self.scrub.reading.take() {
            if !reading.is_finished() {
                // A slow disk: no second read beside it.
                self.scrub.reading = Some(reading);
                return;
            }
            self.scrub_finish(reading).await;
        }
        self.scrub.last_tick = self.ticks;
        let Some((replica, chunk)) = self.scrub_position() else {
            return;
        };
        let store = self.store(replica).clone();
        let chunk_size = store.chunk_size_bytes();
        let offset = self.scrub.offset;
        let length = SCRUB_STEP_BYTES.min(chunk_size - offset);
        self.scrub.reading = Some(tokio::spawn(async move {
            let result = read_chunk(&store, chunk, offset, length).await.map(drop);
            ScrubRead {
                replica,
                chunk,
                offset,
                length,
                result,
            }
        }));
        self.scrub.offset += length;
        if self.scrub.offset >= chunk_size {
            self.scrub.offset = 0;
            self.scrub.chunk += 1;
        }
    }

    /// Counts a finished scrub read, or repairs what it found corrupt: the host reads again
    /// (a sibling may have been mid-write then) and repairs from a sibling.
    async fn scrub_finish(&mut self, reading: tokio::task::JoinHandle<ScrubRead>) {
        let Ok(read) = reading.await else {
            return; // The read task panicked; the next pass reads it again.
        };
        let ScrubRead {
            replica,
            chunk,
            offset,
            length,
            mut result,
        } = read;
        if matches!(result, Err(Error::Corrupt { .. })) && self.hosted.contains_key(&replica) {
            result = self
                .read_repairing(replica, chunk, offset, length)
                .await
                .map(drop);
        }
        match result {
            Ok(()) => {
                self.stats
                    .scrubbed_bytes
                    .fetch_add(u64::from(length), Ordering::Relaxed);
            }
            // Counted and logged by the repair; the next pass tries again.
            Err(Error::Corrupt { .. }) => {}
            Err(e) if e.class() == ErrorClass::Fatal => self.store_failed(replica, &e),
            Err(e) => tracing::warn!(%replica, %chunk, offset, "scrub read failed: {e}"),
        }
    }

    /// The replica and chunk the scrub reads next, moving to the next replica (in id order)
    /// when one is done. Replicas still being filled by a copy, or of a PG whose pool is not
    /// known, are skipped.
    fn scrub_position(&mut self) -> Option<(ReplicaId, ChunkId)> {
        for _ in 0..=self.hosted.len() {
            if let Some((replica, chunks)) = &self.scrub.replica
                && self.hosted.contains_key(replica)
                && let Some(chunk) = chunks.get(self.scrub.chunk)
            {
                return Some((*replica, *chunk));
            }
            let after = self.scrub.replica.as_ref().map(|(r, _)| *r);
            let next = match after {
                Some(after) => self.hosted.range(after..).find(|(r, _)| **r != after),
                None => self.hosted.iter().next(),
            };
            let next = next.map(|(r, g)| (*r, *g));
            self.scrub.chunk = 0;
            self.scrub.offset = 0;
            let Some((replica, group)) = next else {
                // Past the last replica: a pass is complete.
                if after.is_some() {
                    self.stats.scrub_passes.fetch_add(1, Ordering::Relaxed);
                }
                self.scrub.replica = None;
                if self.hosted.is_empty() {
                    return None;
                }
                continue;
            };
            let pg_count = self.pg_counts.get(&group).copied();
            let chunks = match pg_count {
                Some(pg_count) if !self.is_fresh(replica) => {
                    restore::pg_chunks(self.store(replica), group, pg_count)
                }
                _ => Vec::new(),
            };
            self.scrub.replica = Some((replica, chunks));
        }
        None
    }

    /// Answers leaders whose follower needs a newer snapshot (one that includes it: a joining
    /// member): the leader's store is flushed and its log compacted at its applied index.
    async fn take_snapshots(&mut self) -> Result<(), PgError> {
        for replica in self.node.snapshots_wanted() {
            if !self.placement.contains_key(&replica) {
                continue;
            }
            if let Err(e) = self.store(replica).flush().await {
                self.store_failed(replica, &e);
                continue;
            }
            let index = self.applied.get(&replica).copied().unwrap_or(0);
            self.node
                .compact_at(replica, index, compaction_data(index))
                .map_err(|e| PgError::Raft(e.to_string()))?;
            tracing::info!(%replica, index, "PG snapshot taken for a joining member");
        }
        Ok(())
    }

    /// Deletes the chunks of replicas that left (removed from their PG, or dropped): their
    /// disk holds no other replica of the PG (see `check_disk`), so every chunk of the PG
    /// there was theirs.
    async fn clean_dropped(&mut self) {
        let gone: Vec<(ReplicaId, GroupId)> = self
            .hosted
            .iter()
            .filter(|(replica, _)| self.node.status(**replica).is_none())
            .map(|(r, g)| (*r, *g))
            .collect();
        let gone_any = !gone.is_empty();
        for (replica, group) in gone {
            self.hosted.remove(&replica);
            self.refused.remove(&replica);
            self.restores.remove(&replica);
            self.restore_progress.remove(&replica);
            self.applied.remove(&replica);
            let Some(disk) = self.placement.remove(&replica) else {
                continue;
            };
            self.stats.replicas_dropped.fetch_add(1, Ordering::Relaxed);
            let Some(&pg_count) = self.pg_counts.get(&group) else {
                tracing::warn!(%replica, %group, "left its PG; its chunks stay (PG count unknown)");
                continue;
            };
            let store = self.disks[&disk].clone();
            let chunks = restore::pg_chunks(&store, group, pg_count);
            let count = chunks.len();
            for chunk in chunks {
                if let Err(e) = store.delete(chunk).await {
                    tracing::warn!(%replica, %chunk, "deleting a chunk of a replica that left: {e}");
                }
            }
            tracing::info!(%replica, %group, %disk, chunks = count, "replica left its PG; its chunks deleted");
        }
        if !gone_any {
            return;
        }
        self.refresh_directory();
    }

    /// Answers `Dropped` to requests whose replica changed term or that waited too long, and
    /// forgets abandoned ones.
    fn drop_stale_requests(&mut self) {
        let writes = std::mem::take(&mut self.writes);
        let (writes, stale) = self.split_stale(writes, |w| (w.taken, w.reply.is_closed()));
        self.writes = writes;
        for (group, write) in stale {
            let _ = write.reply.send(Err(PgError::Dropped(group)));
        }
        let reads = std::mem::take(&mut self.reads);
        let (reads, stale) = self.split_stale(reads, |r| (r.taken, r.reply.is_closed()));
        self.reads = reads;
        for (group, read) in stale {
            let _ = read.reply.send(Err(PgError::Dropped(group)));
        }
    }

    /// Splits pending requests into those still valid and the stale ones, with their PGs.
    fn split_stale<P>(
        &self,
        pending: BTreeMap<u64, P>,
        view: impl Fn(&P) -> (Taken, bool),
    ) -> (BTreeMap<u64, P>, Vec<(GroupId, P)>) {
        let mut keep = BTreeMap::new();
        let mut stale = Vec::new();
        for (request, p) in pending {
            let (taken, closed) = view(&p);
            if closed || !self.still_valid(taken) {
                let group = self.node.status(taken.replica).map(|s| s.group);
                stale.push((group.unwrap_or_default(), p));
            } else {
                keep.insert(request, p);
            }
        }
        (keep, stale)
    }

    async fn apply(&mut self, replica: ReplicaId, applied: Applied) -> Result<(), PgError> {
        let (entry_index, data) = match applied {
            Applied::Entry { index, data } => (index, data),
            Applied::Snapshot {
                index,
                data,
                installed,
            } => {
                // The bootstrap snapshot (the empty state every chunk store starts as), or at a
                // restart this replica's own compaction, which its flushed chunk store holds.
                let own = !installed && compaction_index(&data) == Some(index);
                // Or one a leader sent, for which this replica's chunks were copied.
                let copied = installed
                    && matches!(self.restores.get(&replica), Some(Restore::Done { index: c }) if index <= *c);
                if data.is_empty() || own || copied {
                    if copied {
                        self.restores.remove(&replica);
                    }
                    self.set_applied(replica, index);
                    return Ok(());
                }
                return Err(PgError::Raft(format!(
                    "{replica}: a PG snapshot at {index} was installed without its chunks"
                )));
            }
        };
        if data.is_empty() {
            // A new leader's empty entry or a configuration change.
            self.set_applied(replica, entry_index);
            return Ok(());
        }
        let proposal = match Proposal::decode(&data) {
            Ok(proposal) => proposal,
            Err(e @ (CommandError::Version(_) | CommandError::Kind(_))) => {
                // Written by a newer build. Skipping it would leave this replica different
                // from peers that apply it (a discard skipped keeps data they dropped), so
                // stop applying instead: this node needs the newer build (upgrade every node
                // before using new commands). Replay after a restart stops here again.
                return Err(PgError::Raft(format!(
                    "{replica}: log entry {entry_index} is a command this build cannot apply \
                     ({e}); upgrade this node"
                )));
            }
            Err(e) => {
                // Malformed in this build's own format: every replica refuses it alike (they
                // run this format too), so it is a no-op, logged.
                tracing::error!(%replica, entry_index, "undecodable PG command skipped: {e}");
                self.set_applied(replica, entry_index);
                return Ok(());
            }
        };
        if let PgCommand::Compact { index } = proposal.command {
            self.compact(replica, index);
            self.set_applied(replica, entry_index);
            return Ok(());
        }
        if proposal.command == PgCommand::Digest {
            self.record_digest(replica, entry_index);
            self.set_applied(replica, entry_index);
            return Ok(());
        }
        let op = PlainOp::new(entry_index, proposal).expect("invariant: a write or a discard");
        self.answer_committed(&op);
        self.apply_op(replica, op).await
    }

    /// Applies queued plain writes and discards, the replicas at once (each store is its own
    /// disk's), each replica's in log order, then records them in order. On this task, not one
    /// spawned per replica: the hops between tasks and threads made three 4 KiB writes take
    /// 271 µs at queue depth 1 instead of 176-186 µs. One that fails there
    /// (a corrupt edge block, a replay) and those after it on its replica go through
    /// [`PgHost::apply_op`], which repairs.
    async fn apply_ops(
        &mut self,
        queued: BTreeMap<ReplicaId, Vec<PlainOp>>,
    ) -> Result<(), PgError> {
        let applying = queued.into_iter().map(|(replica, ops)| {
            let store = self.store(replica).clone();
            let leads = self
                .node
                .status(replica)
                .is_some_and(|s| s.role == StateRole::Leader);
            let how = if leads {
                WriteAs::Leader
            } else {
                WriteAs::Copy
            };
            async move {
                let mut done = Vec::new();
                let mut ops = ops.into_iter();
                for op in ops.by_ref() {
                    if op.apply_to(&store, how).await.is_err() {
                        let rest: Vec<PlainOp> = std::iter::once(op).chain(ops).collect();
                        return (replica, done, rest);
                    }
                    done.push(op);
                }
                (replica, done, Vec::new())
            }
        });
        let mut results = crate::join::join_all(applying.collect()).await;
        results.sort_by_key(|(replica, _, _)| *replica);
        for (replica, done, rest) in results {
            for op in done {
                self.op_applied(replica, op);
            }
            for op in rest {
                self.apply_op(replica, op).await?;
            }
        }
        Ok(())
    }

    /// Answers the client of a committed write or discard waiting here, before any replica
    /// applies it (which kept the next write waiting for three chunk-store writes: qd1 4 KiB
    /// writes in `cairn dev` took 578 µs in the PG host, 330 µs answered here). The entry is
    /// durable in a quorum's logs and every replica applies it, after a crash by replaying
    /// the log; and a read is served only once its replica has applied up to its read
    /// index, which covers every write answered before the read began.
    fn answer_committed(&mut self, op: &PlainOp) {
        if op.incarnation == self.incarnation
            && let Some(pending) = self.writes.remove(&op.request)
        {
            let _ = pending.reply.send(Ok(()));
        }
    }

    /// Records a write or discard applied to a replica's store (its client was answered at
    /// commit: [`PgHost::answer_committed`]).
    fn op_applied(&mut self, replica: ReplicaId, op: PlainOp) {
        self.set_applied(replica, op.index);
        let counter = match op.change {
            Change::Write(_) => &self.stats.writes_applied,
            Change::Discard(_) => &self.stats.discards_applied,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies one write or discard, repairing corrupt edge blocks (or, for an entry replayed
    /// after a crash, merging them as stored).
    async fn apply_op(&mut self, replica: ReplicaId, op: PlainOp) -> Result<(), PgError> {
        if !self.hosted.contains_key(&replica) {
            return Ok(()); // Stopped by an earlier op of this round.
        }
        let mut result = self.apply_repairing(replica, &op).await;
        let replayed = self
            .replay_until
            .get(&replica)
            .is_some_and(|end| op.index <= *end);
        if replayed && let Err(Error::Corrupt { block_index, .. }) = &result {
            // Written before the crash and not flushed: see `ChunkStore::write_replaying`.
            tracing::info!(%replica, entry_index = op.index, chunk = %op.chunk, block = block_index, "replay merges a block written since the last flush");
            result = op.apply_to(self.store(replica), WriteAs::Replay).await;
        }
        match result {
            Ok(()) => {
                self.op_applied(replica, op);
                Ok(())
            }
            // A write or discard the leader accepted cannot be refused or skipped here.
            Err(e) => {
                self.store_failed(replica, &e);
                Ok(())
            }
        }
    }
}

impl<L: LogStore> PgHost<L> {
    /// Applies a compaction: the replica's chunk store is made durable (everything it applied,
    /// so up to `index` at least), then its log is compacted to `index` with a snapshot that
    /// records only the index. Compacting at or below the current snapshot changes nothing.
    /// Starts the flush that lets `replica`'s log be compacted at `index` (at most what it
    /// has applied): everything applied so far becomes durable in its store. The flush runs on
    /// a task of its own, not in the round: flushing every chunk file a PG touched since the
    /// last one held every other PG's writes for tens of milliseconds (the 4 KiB write p99).
    /// [`PgHost::finish_compactions`] compacts once it is done.
    fn compact(&mut self, replica: ReplicaId, index: u64) {
        let index = index.min(self.applied.get(&replica).copied().unwrap_or(0));
        let store = self.store(replica).clone();
        // Writes applied before the flush starts are durable when it returns (ChunkStore::flush).
        let flush = tokio::spawn(async move { store.flush().await });
        self.flushing.push(Flushing {
            replica,
            disk: self.placement[&replica],
            index,
            flush,
        });
    }

    /// Compacts the logs whose flushes are done; a failed flush is a failed disk.
    async fn finish_compactions(&mut self) -> Result<(), PgError> {
        let (done, running): (Vec<Flushing>, Vec<Flushing>) = std::mem::take(&mut self.flushing)
            .into_iter()
            .partition(|f| f.flush.is_finished());
        self.flushing = running;
        for Flushing {
            replica,
            disk,
            index,
            flush,
        } in done
        {
            let flushed = flush
                .await
                .map_err(|e| PgError::Raft(format!("flush task: {e}")))?;
            if let Err(e) = flushed {
                self.disk_error(disk, Some(replica), &e);
                continue;
            }
            if self.node.status(replica).is_none() {
                continue; // Dropped meanwhile.
            }
            self.node
                .compact_at(replica, index, compaction_data(index))
                .map_err(|e| PgError::Raft(e.to_string()))?;
            tracing::info!(%replica, index, "PG log compacted");
        }
        Ok(())
    }

    /// Reads from a replica's chunk store, repairing corrupt blocks from a sibling.
    async fn read_repairing(
        &mut self,
        replica: ReplicaId,
        chunk: ChunkId,
        offset: u32,
        length: u32,
    ) -> Result<Vec<u8>, Error> {
        for _ in 0..REPAIRS_PER_IO_MAX {
            let store = self.store(replica).clone();
            match read_chunk(&store, chunk, offset, length).await {
                Err(Error::Corrupt { block_index, .. }) => {
                    self.repair_block(replica, chunk, block_index).await?;
                }
                other => return other,
            }
        }
        read_chunk(self.store(replica), chunk, offset, length).await
    }

    /// Applies a write or discard to a replica's chunk store, repairing corrupt edge blocks
    /// (read-modify-write) from a sibling.
    async fn apply_repairing(&mut self, replica: ReplicaId, op: &PlainOp) -> Result<(), Error> {
        for _ in 0..REPAIRS_PER_IO_MAX {
            let store = self.store(replica).clone();
            match op.apply_to(&store, WriteAs::Copy).await {
                Err(Error::Corrupt { block_index, .. }) => {
                    self.repair_block(replica, op.chunk, block_index).await?;
                }
                other => return other,
            }
        }
        op.apply_to(self.store(replica), WriteAs::Copy).await
    }

    /// Replaces a corrupt block of `replica` with the same block of a sibling replica (same
    /// PG, this node) that has applied exactly as much of the log. The checksum error stands
    /// if there is none, or none holds a good copy.
    async fn repair_block(
        &mut self,
        replica: ReplicaId,
        chunk: ChunkId,
        block_index: u32,
    ) -> Result<(), Error> {
        let corrupt = Error::Corrupt { chunk, block_index };
        let Some(group) = self.node.status(replica).map(|s| s.group) else {
            return Err(corrupt);
        };
        let at = self.applied.get(&replica).copied();
        let siblings: Vec<ReplicaId> = self
            .node
            .replicas_of(group)
            .filter(|s| *s != replica && self.applied.get(s).copied() == at)
            .collect();
        let offset = u64::from(block_index) * u64::from(BLOCK_SIZE);
        for sibling in siblings {
            let source = self.store(sibling).clone();
            let Ok(block) = source.read(chunk, offset, BLOCK_SIZE as usize).await else {
                continue;
            };
            self.store(replica).write(chunk, offset, &block).await?;
            self.stats.read_repairs.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %replica, %sibling, %chunk, block = block_index,
                "checksum mismatch repaired from another replica"
            );
            return Ok(());
        }
        // Why each peer could not help, for the error line: an operator (or a chaos run)
        // must tell a peer that timed out from one whose copy was bad too.
        let mut refusals = Vec::new();
        if let Some(source) = self.remote.clone() {
            let applied = at.unwrap_or(0);
            for peer in self.remote_peers(group, replica) {
                let fetched = tokio::time::timeout(
                    REMOTE_REPAIR_TIMEOUT,
                    source.read(peer, chunk, offset as u32, BLOCK_SIZE, applied),
                )
                .await;
                let block = match fetched {
                    Ok(Ok(block)) if block.len() == BLOCK_SIZE as usize => block,
                    Ok(Ok(block)) => {
                        refusals.push(format!("{peer}: {} bytes", block.len()));
                        continue;
                    }
                    Err(_) => {
                        refusals.push(format!("{peer}: no answer in {REMOTE_REPAIR_TIMEOUT:?}"));
                        continue;
                    }
                    Ok(Err(e)) => {
                        refusals.push(format!("{peer}: {e}"));
                        continue;
                    }
                };
                self.store(replica).write(chunk, offset, &block).await?;
                self.stats.read_repairs.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    %replica, %peer, %chunk, block = block_index,
                    "checksum mismatch repaired from a replica on another node"
                );
                return Ok(());
            }
        }
        self.stats.unrepaired.fetch_add(1, Ordering::Relaxed);
        let peers = refusals.join("; ");
        tracing::error!(
            %replica, %chunk, block = block_index, %peers,
            "checksum mismatch: no replica could repair it"
        );
        Err(corrupt)
    }

    /// The other members of `group` on other nodes, the leader first: where a repair looks
    /// once no replica here holds a good copy.
    fn remote_peers(&self, group: GroupId, replica: ReplicaId) -> Vec<ReplicaId> {
        let me = self.node.id();
        let leader = self.node.status(replica).and_then(|s| s.leader);
        let mut peers: Vec<ReplicaId> = self
            .targets
            .get(&group)
            .into_iter()
            .flatten()
            .copied()
            .chain(leader)
            .filter(|p| p.node() != me)
            .collect();
        peers.sort_by_key(|p| Some(*p) != leader);
        peers.dedup();
        peers
    }
}

fn propose_error(group: GroupId, error: ProposeError) -> PgError {
    match error {
        ProposeError::NotLeader { leader } => PgError::NotLeader { group, leader },
        ProposeError::UnknownReplica => PgError::UnknownGroup(group),
        ProposeError::Dropped => PgError::Dropped(group),
    }
}

/// How much of `remaining` bytes at `offset_bytes` one store IO takes: up to the next multiple
/// of the store's IO size, so the blocks it touches always fit one engine buffer.
fn piece_length(store: &ChunkStore, offset_bytes: u64, remaining: u64) -> u64 {
    let io_max = u64::from(store.io_size_max());
    let window_end = (offset_bytes / io_max + 1) * io_max;
    (window_end - offset_bytes).min(remaining)
}

/// Writes into a chunk, creating it first if it does not exist, in pieces the store accepts.
async fn write_chunk(
    store: &ChunkStore,
    chunk: ChunkId,
    offset: u32,
    data: &[u8],
) -> Result<(), Error> {
    write_chunk_as(store, chunk, offset, data, WriteAs::Copy).await
}

/// [`write_chunk`] as a leader, a follower or a replay writes.
async fn write_chunk_as(
    store: &ChunkStore,
    chunk: ChunkId,
    offset: u32,
    data: &[u8],
    how: WriteAs,
) -> Result<(), Error> {
    let write = async |offset_bytes: u64, piece: &[u8]| match how {
        WriteAs::Copy => store.write(chunk, offset_bytes, piece).await,
        WriteAs::Leader => store.write_cached(chunk, offset_bytes, piece).await,
        WriteAs::Replay => store.write_replaying(chunk, offset_bytes, piece).await,
    };
    let mut at = 0;
    while at < data.len() {
        let offset_bytes = u64::from(offset) + at as u64;
        let take = piece_length(store, offset_bytes, (data.len() - at) as u64);
        let piece = &data[at..at + take as usize];
        match write(offset_bytes, piece).await {
            Err(Error::NotFound { .. }) => {
                store.create(chunk).await?;
                write(offset_bytes, piece).await?;
            }
            other => other?,
        }
        at += piece.len();
    }
    Ok(())
}

/// Reads from a chunk's disk; a chunk never written reads as zeros.
async fn read_chunk(
    store: &ChunkStore,
    chunk: ChunkId,
    offset: u32,
    length: u32,
) -> Result<Vec<u8>, Error> {
    read_chunk_with(store, chunk, offset, length, false).await
}

/// [`read_chunk`], through the store's read cache if `cached` (client reads).
async fn read_chunk_with(
    store: &ChunkStore,
    chunk: ChunkId,
    offset: u32,
    length: u32,
    cached: bool,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(length as usize);
    let mut at = 0;
    while at < length {
        let offset_bytes = u64::from(offset) + u64::from(at);
        let piece = piece_length(store, offset_bytes, u64::from(length - at)) as u32;
        let read = if cached {
            store.read_cached(chunk, offset_bytes, piece as usize).await
        } else {
            store.read(chunk, offset_bytes, piece as usize).await
        };
        match read {
            Ok(buf) => out.extend_from_slice(&buf),
            Err(Error::NotFound { .. }) => out.resize(out.len() + piece as usize, 0),
            Err(e) => return Err(e),
        }
        at += piece;
    }
    Ok(out)
}
