//! `cairn meta`: one member of the metadata Raft group, serving the admin API.
//!
//! One task (the driver) owns the Raft node, its file log and the RocksDB state machine. It
//! ticks, steps what peers send, proposes what the API asks, applies committed commands, serves
//! linearizable reads (ReadIndex: any member can answer one, the leader confirms it) and
//! compacts the log every [`ServerConfig::compact_every`] applied entries. The API handlers
//! talk to it over a bounded channel and wait for its answer under a deadline.
//!
//! A proposal carries an envelope: the proposing member's id, its incarnation (the start time
//! of its process) and a counter, then the encoded command. When the entry is applied, the
//! member that proposed it (same incarnation) answers its waiting request; other members just
//! apply. A request whose leader lost leadership before committing times out and the client
//! retries (a create retried after it did commit gets 409 Already Exists).
//!
//! Crash ordering: the Raft log is synced before anything is acknowledged; the state machine
//! is written without sync (see [`crate::store`]) and replayed from the log after a crash, so
//! compaction first flushes the state machine, then records the snapshot in the log.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use cairn_common::{GroupId, NodeId};
use cairn_raft::{
    Apply, MemberChange, NodeConfig, Outbox, ProposeError, RaftNode,
    file_log::FileLogStore,
    raft_types::{ConfState, EntryType, StateRole},
    tls::NodeIdentity,
    transport::{TcpTransport, Transport},
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::{
    codec::{decode_command, encode_command},
    state::{Applied, Command, MetaError, MetaState},
    store::MetaStore,
};

/// The metadata group's id in the Raft runtime.
pub const META_GROUP: GroupId = GroupId(1);

/// Requests waiting in the driver's queue at most; more get 503 at once.
const REQUEST_QUEUE_MAX: usize = 1024;
/// Envelope prefix: proposer id, incarnation, counter.
const ENVELOPE_BYTES: usize = 24;

/// A member of the metadata group and where it listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its node id (its certificate names it).
    pub id: NodeId,
    /// Raft traffic (mutual TLS).
    pub raft: SocketAddr,
    /// The admin API (HTTP).
    pub api: SocketAddr,
}

/// How to run one member.
#[derive(Debug)]
pub struct ServerConfig {
    /// This member's id.
    pub id: NodeId,
    /// Its data directory (`raft/` log and `state/` RocksDB inside).
    pub data_dir: PathBuf,
    /// Every member of the group, this one included.
    pub members: Vec<Member>,
    /// On an empty data directory: start a new group of all `members` (false: join an
    /// existing group and catch up by snapshot).
    pub bootstrap: bool,
    /// Certificate and key for node-to-node mutual TLS.
    pub identity: NodeIdentity,
    /// The admin API's bearer token.
    pub admin_token: String,
    /// Raft tick length (elections take 10-20 ticks).
    pub tick: Duration,
    /// Compact the log after this many applied entries.
    pub compact_every: u64,
}

/// Errors starting or running a member.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// The Raft log failed.
    #[error("raft log: {0}")]
    Log(#[from] cairn_raft::file_log::FileLogError),
    /// The Raft runtime failed.
    #[error("raft: {0}")]
    Raft(String),
    /// The state machine store failed.
    #[error("state store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A listener or the runtime failed.
    #[error("{0}")]
    Io(String),
}

/// Why a request through the driver failed (the API maps these to HTTP).
#[derive(Debug)]
pub enum RequestError {
    /// The command was refused: 400, 404 or 409.
    Refused(MetaError),
    /// This member does not lead; retry at the leader if known (503).
    NotLeader(Option<Member>),
    /// No answer in time, or the queue is full (503; retry).
    Unavailable(&'static str),
}

/// A read run against the state machine once it is linearizable; a refusal (not found) maps
/// to HTTP like a refused command.
pub type ReadFn = Box<dyn FnOnce(&MetaState) -> Result<serde_json::Value, MetaError> + Send>;

/// What the API asks the driver.
pub enum Request {
    /// Propose a command; answered once applied here.
    Propose(Command, oneshot::Sender<Result<Applied, RequestError>>),
    /// A linearizable read.
    Read(
        ReadFn,
        oneshot::Sender<Result<serde_json::Value, RequestError>>,
    ),
    /// Raft status of this member (not linearizable: for operators).
    Status(oneshot::Sender<RaftView>),
    /// Makes a member a voter afresh: removed first if it is one (its disk was wiped, so the
    /// leader must forget what it had), then added; it catches up by snapshot.
    Rejoin(NodeId, oneshot::Sender<Result<(), RequestError>>),
}

/// This member's view of the group, for `cairn cluster status`.
#[derive(Clone, Debug, Serialize)]
pub struct RaftView {
    /// This member.
    pub id: u64,
    /// "leader", "follower", "candidate" or "pre-candidate".
    pub role: String,
    /// Current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Highest committed index known.
    pub commit: u64,
    /// Highest applied index.
    pub applied: u64,
    /// Voters of the configuration this member applied.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
}

/// The handle API handlers use.
#[derive(Clone)]
pub struct DriverHandle {
    requests: mpsc::Sender<Request>,
    /// How long a request may wait for the group.
    pub deadline: Duration,
}

impl DriverHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, RequestError>>) -> Request,
    ) -> Result<T, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .try_send(make(tx))
            .map_err(|_| RequestError::Unavailable("metadata service busy"))?;
        match tokio::time::timeout(self.deadline, rx).await {
            Ok(Ok(answer)) => answer,
            _ => Err(RequestError::Unavailable(
                "no answer from the metadata group in time (election in progress?)",
            )),
        }
    }

    /// Proposes `command` and waits until it is applied.
    pub async fn propose(&self, command: Command) -> Result<Applied, RequestError> {
        self.ask(|tx| Request::Propose(command, tx)).await
    }

    /// Runs `read` on a linearizable view of the state.
    pub async fn read(&self, read: ReadFn) -> Result<serde_json::Value, RequestError> {
        self.ask(|tx| Request::Read(read, tx)).await
    }

    /// Re-adds member `id` (see [`Request::Rejoin`]).
    pub async fn rejoin(&self, id: NodeId) -> Result<(), RequestError> {
        self.ask(|tx| Request::Rejoin(id, tx)).await
    }

    /// This member's Raft status.
    pub async fn status(&self) -> Result<RaftView, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .try_send(Request::Status(tx))
            .map_err(|_| RequestError::Unavailable("metadata service busy"))?;
        tokio::time::timeout(self.deadline, rx)
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(RequestError::Unavailable("driver stopped"))
    }
}

/// Runs a member until the process is killed or a fatal error. Blocks.
pub fn run(config: ServerConfig) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ServerError::Io(format!("tokio runtime: {e}")))?;
    runtime.block_on(serve(config))
}

async fn serve(config: ServerConfig) -> Result<(), ServerError> {
    let me = config
        .members
        .iter()
        .find(|m| m.id == config.id)
        .cloned()
        .ok_or_else(|| ServerError::Config(format!("{} is not among the members", config.id)))?;
    let (transport, _, incoming) = TcpTransport::start(&config.identity, me.raft)
        .await
        .map_err(|e| ServerError::Io(e.to_string()))?;
    for member in &config.members {
        if member.id != config.id {
            transport.set_peer_address(member.id, member.raft);
        }
    }
    let (requests_tx, requests_rx) = mpsc::channel(REQUEST_QUEUE_MAX);
    let handle = DriverHandle {
        requests: requests_tx,
        deadline: Duration::from_secs(5),
    };
    let listener = tokio::net::TcpListener::bind(me.api)
        .await
        .map_err(|e| ServerError::Io(format!("listen on {}: {e}", me.api)))?;
    let router = crate::api::router(handle, config.admin_token.clone(), config.members.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("admin API stopped: {e}");
        }
    });
    tracing::info!(id = %config.id, raft = %me.raft, api = %me.api, "metadata member up");
    let mut driver = Driver::open(&config, transport)?;
    if driver.fresh && !config.bootstrap {
        tokio::spawn(announce(
            config.id,
            config.members.clone(),
            config.admin_token.clone(),
        ));
    }
    driver.run(config.tick, incoming, requests_rx).await
}

/// A member joining with an empty data directory asks the group (any member; followers point
/// to the leader) to make it a voter afresh, until one accepts.
async fn announce(id: NodeId, members: Vec<Member>, token: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "POST /v1/cluster/members/{}/rejoin HTTP/1.1\r\nHost: cairn\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        id.0
    );
    for attempt in 0u64.. {
        for member in members.iter().filter(|m| m.id != id) {
            let answer = async {
                let mut stream = tokio::net::TcpStream::connect(member.api).await.ok()?;
                stream.write_all(request.as_bytes()).await.ok()?;
                let mut response = Vec::new();
                stream.read_to_end(&mut response).await.ok()?;
                Some(response.starts_with(b"HTTP/1.1 200"))
            };
            let accepted = tokio::time::timeout(Duration::from_secs(10), answer).await;
            if let Ok(Some(true)) = accepted {
                tracing::info!(via = %member.id, "the group made this member a voter afresh");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200 * attempt.min(10))).await;
    }
}

/// A rejoin in progress: the member, whether its removal is done, and who waits.
type Rejoin = (NodeId, bool, oneshot::Sender<Result<(), RequestError>>);

type Waiting<T> = BTreeMap<u64, oneshot::Sender<Result<T, RequestError>>>;

struct Driver {
    id: NodeId,
    node: RaftNode<FileLogStore>,
    store: MetaStore,
    transport: Arc<TcpTransport>,
    members: Vec<Member>,
    incarnation: u64,
    counter: u64,
    proposals: Waiting<Applied>,
    reads: BTreeMap<
        u64,
        (
            ReadFn,
            oneshot::Sender<Result<serde_json::Value, RequestError>>,
        ),
    >,
    compact_every: u64,
    applied_since_compaction: u64,
    role: StateRole,
    /// True if this start found no log (a new or wiped member).
    fresh: bool,
    /// A rejoin in progress: the member, whether its removal is done, and who waits.
    rejoin: Option<Rejoin>,
}

impl Driver {
    fn open(config: &ServerConfig, transport: Arc<TcpTransport>) -> Result<Driver, ServerError> {
        let log = FileLogStore::open(&config.data_dir.join("raft"))?;
        let store = MetaStore::open(&config.data_dir.join("state"))?;
        let mut node_config = NodeConfig::new(config.id);
        // Heartbeat every 2 ticks, elections after 10-20 quiet ticks.
        node_config.election_tick_range = (10, 20);
        let mut node =
            RaftNode::new(node_config, log).map_err(|e| ServerError::Raft(e.to_string()))?;
        let fresh = node.groups().next().is_none();
        if fresh {
            if config.bootstrap {
                let voters: Vec<NodeId> = config.members.iter().map(|m| m.id).collect();
                tracing::info!(?voters, "bootstrapping a new metadata group");
                node.create_group(META_GROUP, &voters)
            } else {
                tracing::info!("joining the metadata group; catching up by snapshot");
                node.join_group(META_GROUP)
            }
            .map_err(|e| ServerError::Raft(e.to_string()))?;
        }
        let incarnation = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        Ok(Driver {
            id: config.id,
            node,
            store,
            transport,
            members: config.members.clone(),
            incarnation,
            counter: 0,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            compact_every: config.compact_every.max(1),
            applied_since_compaction: 0,
            role: StateRole::Follower,
            fresh,
            rejoin: None,
        })
    }

    async fn run(
        &mut self,
        tick: Duration,
        mut incoming: mpsc::Receiver<cairn_raft::transport::Incoming>,
        mut requests: mpsc::Receiver<Request>,
    ) -> Result<(), ServerError> {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.node.tick();
                    self.proposals.retain(|_, tx| !tx.is_closed());
                    self.reads.retain(|_, (_, tx)| !tx.is_closed());
                }
                Some((_, batch)) = incoming.recv() => self.node.step(batch),
                Some(request) = requests.recv() => self.handle(request),
            }
            // Take whatever else is queued before the round, so one sync covers it all.
            while let Ok((_, batch)) = incoming.try_recv() {
                self.node.step(batch);
            }
            while let Ok(request) = requests.try_recv() {
                self.handle(request);
            }
            self.round()?;
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Propose(command, reply) => {
                self.counter += 1;
                let mut data = Vec::with_capacity(ENVELOPE_BYTES + 64);
                data.extend_from_slice(&self.id.0.to_le_bytes());
                data.extend_from_slice(&self.incarnation.to_le_bytes());
                data.extend_from_slice(&self.counter.to_le_bytes());
                data.extend_from_slice(&encode_command(&command));
                match self.node.propose(META_GROUP, data) {
                    Ok(()) => {
                        self.proposals.insert(self.counter, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(self.refusal(error)));
                    }
                }
            }
            Request::Read(read, reply) => {
                self.counter += 1;
                match self.node.read_index(META_GROUP, self.counter) {
                    Ok(()) => {
                        self.reads.insert(self.counter, (read, reply));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(self.refusal(error)));
                    }
                }
            }
            Request::Status(reply) => {
                let _ = reply.send(self.view());
            }
            Request::Rejoin(id, reply) => {
                let conf = self.node.membership(META_GROUP).unwrap_or_default();
                let voter = conf.voters.contains(&id.0);
                let change = if voter {
                    MemberChange::Remove(id)
                } else {
                    MemberChange::AddVoter(id)
                };
                match self.node.change_members(META_GROUP, &[change]) {
                    Ok(()) => {
                        tracing::info!(member = %id, "member rejoining: {change:?}");
                        self.rejoin = Some((id, !voter, reply));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(self.refusal(error)));
                    }
                }
            }
        }
    }

    fn refusal(&self, error: ProposeError) -> RequestError {
        match error {
            ProposeError::NotLeader { leader } => RequestError::NotLeader(
                leader.and_then(|id| self.members.iter().find(|m| m.id == id).cloned()),
            ),
            ProposeError::UnknownGroup => RequestError::Unavailable("not a member of the group"),
            ProposeError::Dropped => RequestError::Unavailable("proposal dropped; retry"),
        }
    }

    fn view(&self) -> RaftView {
        let status = self.node.status(META_GROUP);
        let conf: ConfState = self.node.membership(META_GROUP).unwrap_or_default();
        RaftView {
            id: self.id.0,
            role: status
                .map(|s| role_name(s.role))
                .unwrap_or("removed")
                .to_string(),
            term: status.map(|s| s.term).unwrap_or_default(),
            leader: status.and_then(|s| s.leader).map(|n| n.0),
            commit: status.map(|s| s.commit).unwrap_or_default(),
            applied: status.map(|s| s.applied).unwrap_or_default(),
            voters: conf.voters,
            learners: conf.learners,
        }
    }

    /// One Raft round: persist, send, apply, answer, compact.
    fn round(&mut self) -> Result<(), ServerError> {
        let mut outbox = Outbox::default();
        let mut failure = None;
        let mut answers = Vec::new();
        let (id, incarnation, store) = (self.id, self.incarnation, &mut self.store);
        let mut applied_entries = 0;
        let result = self.node.process_ready(&mut outbox, |_, apply| {
            if failure.is_some() {
                return;
            }
            match apply_one(store, apply, id, incarnation) {
                Ok(Some(answer)) => {
                    applied_entries += 1;
                    answers.push(answer);
                }
                Ok(None) => applied_entries += 1,
                Err(e) => failure = Some(e),
            }
        });
        for (to, batch) in outbox.batches {
            self.transport.send(to, batch);
        }
        result.map_err(|e| ServerError::Raft(e.to_string()))?;
        if let Some(e) = failure {
            return Err(e);
        }
        for (counter, outcome) in answers {
            if let Some(reply) = self.proposals.remove(&counter) {
                let _ = reply.send(outcome.map_err(RequestError::Refused));
            }
        }
        for read in self.node.take_reads() {
            if let Some((run, reply)) = self.reads.remove(&read.request) {
                let _ = reply.send(run(self.store.state()).map_err(RequestError::Refused));
            }
        }
        self.watch_role();
        self.advance_rejoin();
        if !self.node.snapshots_wanted().is_empty() {
            // A member joined after the latest snapshot: it needs one that includes it.
            self.compact()?;
        }
        self.applied_since_compaction += applied_entries;
        if self.applied_since_compaction >= self.compact_every {
            self.compact()?;
        }
        Ok(())
    }

    fn watch_role(&mut self) {
        let Some(status) = self.node.status(META_GROUP) else {
            return;
        };
        if status.role != self.role {
            tracing::info!(
                term = status.term,
                leader = ?status.leader,
                "metadata member is now {}",
                role_name(status.role)
            );
            if self.role == StateRole::Leader {
                // Proposals this leader accepted may never commit: their clients retry.
                for (_, reply) in std::mem::take(&mut self.proposals) {
                    let _ = reply.send(Err(RequestError::Unavailable(
                        "leadership changed before the request committed; retry",
                    )));
                }
            }
            self.role = status.role;
        }
    }

    /// Moves a rejoin on: once the removal is applied, adds the member back; once that is
    /// applied, answers.
    fn advance_rejoin(&mut self) {
        let Some((id, removed, reply)) = self.rejoin.take() else {
            return;
        };
        let conf = self.node.membership(META_GROUP).unwrap_or_default();
        let voter = conf.voters.contains(&id.0);
        if removed && voter {
            let _ = reply.send(Ok(()));
        } else if !removed && !voter {
            match self
                .node
                .change_members(META_GROUP, &[MemberChange::AddVoter(id)])
            {
                Ok(()) => self.rejoin = Some((id, true, reply)),
                // Not applied everywhere yet, or leadership moved: try next round.
                Err(ProposeError::Dropped) => self.rejoin = Some((id, false, reply)),
                Err(error) => {
                    let _ = reply.send(Err(self.refusal(error)));
                }
            }
        } else {
            self.rejoin = Some((id, removed, reply));
        }
    }

    fn compact(&mut self) -> Result<(), ServerError> {
        self.store.flush()?;
        let snapshot = self.store.snapshot();
        let bytes = snapshot.len();
        self.node
            .compact(META_GROUP, snapshot)
            .map_err(|e| ServerError::Raft(e.to_string()))?;
        self.applied_since_compaction = 0;
        tracing::info!(
            applied = self.store.applied_index(),
            bytes,
            "metadata log compacted"
        );
        Ok(())
    }
}

/// The answer owed to a waiting proposal: its counter and the outcome.
type Answer = (u64, Result<Applied, MetaError>);

/// Applies one committed entry or snapshot to the store; returns the answer this member owes
/// if it proposed the entry.
fn apply_one(
    store: &mut MetaStore,
    apply: Apply<'_>,
    me: NodeId,
    incarnation: u64,
) -> Result<Option<Answer>, ServerError> {
    match apply {
        Apply::Snapshot { index, data } => {
            // At restart the store usually holds more than the snapshot; the bootstrap
            // snapshot (empty data) is the empty state every store starts as.
            if store.applied_index() < index && !data.is_empty() {
                store.restore(data)?;
                tracing::info!(index, bytes = data.len(), "restored metadata snapshot");
            }
            Ok(None)
        }
        Apply::Entry(entry) => {
            let skip = entry.index <= store.applied_index()
                || entry.get_entry_type() != EntryType::EntryNormal
                || entry.data.len() < ENVELOPE_BYTES;
            if skip {
                return Ok(None);
            }
            let field = |at: usize| {
                u64::from_le_bytes(
                    entry.data[at..at + 8]
                        .try_into()
                        .expect("invariant: 8 bytes"),
                )
            };
            let (proposer, proposer_incarnation, counter) = (field(0), field(8), field(16));
            let command = match decode_command(&entry.data[ENVELOPE_BYTES..]) {
                Ok(command) => command,
                Err(e) => {
                    // Every member refuses it alike: a no-op, logged.
                    tracing::error!(index = entry.index, "undecodable command skipped: {e}");
                    return Ok(None);
                }
            };
            let outcome = store.apply(entry.index, &command)?;
            let mine = proposer == me.0 && proposer_incarnation == incarnation;
            Ok(mine.then_some((counter, outcome)))
        }
    }
}

fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre-candidate",
    }
}
