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
//! Each member hosts one replica of the group. The first members' replicas are number 1 on
//! their nodes. A member that lost its data directory comes back as a new replica (see
//! [`Request::Rejoin`]), never as its old one: the old replica may have voted in a term the new
//! one knows nothing of, and voting again in that term could elect two leaders.
//!
//! The leader alone keeps the storage nodes' heartbeats (a follower answers them with "not the
//! leader", so nodes follow the leader) and, every [`SCHEDULE_INTERVAL`], runs the
//! [`crate::scheduler`] and proposes the PG member moves it plans, like any other
//! command. It waits for those to be applied before it plans again, so no plan starts from a
//! map its own earlier moves are about to change.
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

use cairn_common::{GroupId, NodeId, ReplicaId};
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
    health::{HEARTBEAT_NODES_MAX, Health, Heartbeat},
    scheduler::{self, Plan, SchedulerInput, Settling},
    state::{Applied, Command, MetaError, MetaState},
    store::MetaStore,
};

/// The metadata group's id in the Raft runtime.
pub const META_GROUP: GroupId = GroupId::META;

/// Requests waiting in the driver's queue at most; more get 503 at once.
const REQUEST_QUEUE_MAX: usize = 1024;
/// Envelope prefix: proposer id, incarnation, counter.
const ENVELOPE_BYTES: usize = 24;
/// How often the leader plans recovery and rebalance moves: heartbeats arrive every second,
/// so planning more often would only see the same view again.
pub const SCHEDULE_INTERVAL: Duration = Duration::from_secs(1);
/// Plans skipped at most while the moves proposed earlier wait to be applied. Proposals of a
/// leader that keeps leading commit within a few round trips; after this many intervals the
/// answers are given up on, so one lost answer cannot stop recovery for good.
const MOVES_PENDING_PLANS_MAX: u64 = 10;

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
    /// A node whose last heartbeat is older than this counts as down.
    pub heartbeat_timeout: Duration,
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
    /// Replaces a member's replica (its disk was lost, or it is new) by a new replica, in one
    /// joint-consensus change; answers with the new replica's id once the change is applied.
    /// The member then hosts that replica, which catches up by snapshot.
    Rejoin(NodeId, oneshot::Sender<Result<ReplicaId, RequestError>>),
    /// This member hosts the replica the group added for it (after its own `Rejoin`).
    Host(ReplicaId),
    /// A storage node's heartbeat, kept in memory by the leader; a follower drops it and
    /// answers (if asked to) that it is not the leader.
    Heartbeat(Heartbeat, Option<oneshot::Sender<Result<(), RequestError>>>),
    /// The cluster's health from heartbeats and this member's state (not linearizable;
    /// leader only, since only the leader keeps heartbeats).
    Health(oneshot::Sender<Result<Health, RequestError>>),
    /// The scheduler's latest plan and the rebalance switch (leader only).
    Rebalance(oneshot::Sender<Result<RebalanceView, RequestError>>),
}

/// The leader's recovery and rebalance status, for `cairn rebalance status`.
#[derive(Clone, Debug, Serialize)]
pub struct RebalanceView {
    /// Whether rebalancing is on (recovery always is).
    pub enabled: bool,
    /// PGs settling, from the latest plan.
    pub settling: Vec<Settling>,
    /// Moves the latest plan proposed.
    pub moves_planned: u64,
    /// PGs in all pools, settled or not.
    pub pgs_total: u64,
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

    /// A handle over a bare state machine, without Raft or a store: each proposal applies at
    /// once and reads see the state. For API tests; the task ends with the last handle.
    #[cfg(test)]
    pub(crate) fn over_state(mut state: MetaState) -> DriverHandle {
        let (requests, mut incoming) = mpsc::channel(REQUEST_QUEUE_MAX);
        tokio::spawn(async move {
            while let Some(request) = incoming.recv().await {
                match request {
                    Request::Propose(command, tx) => {
                        let _ = tx.send(state.apply(command).map_err(RequestError::Refused));
                    }
                    Request::Read(read, tx) => {
                        let _ = tx.send(read(&state).map_err(RequestError::Refused));
                    }
                    // Dropping the sender answers "unavailable".
                    _ => {}
                }
            }
        });
        DriverHandle {
            requests,
            deadline: Duration::from_secs(5),
        }
    }

    /// Gives member `id` a new replica (see [`Request::Rejoin`]).
    pub async fn rejoin(&self, id: NodeId) -> Result<ReplicaId, RequestError> {
        self.ask(|tx| Request::Rejoin(id, tx)).await
    }

    /// Hands a storage node's heartbeat to the driver without waiting (an in-process node,
    /// as in `cairn dev`); a member that does not lead drops it.
    pub fn heartbeat(&self, beat: Heartbeat) -> Result<(), RequestError> {
        self.requests
            .try_send(Request::Heartbeat(beat, None))
            .map_err(|_| RequestError::Unavailable("metadata service busy"))
    }

    /// Hands a storage node's heartbeat to the driver; [`RequestError::NotLeader`] if this
    /// member does not lead.
    pub async fn report_heartbeat(&self, beat: Heartbeat) -> Result<(), RequestError> {
        self.ask(|tx| Request::Heartbeat(beat, Some(tx))).await
    }

    /// The cluster's health as the leader's heartbeats show it.
    pub async fn health(&self) -> Result<Health, RequestError> {
        self.ask(Request::Health).await
    }

    /// The scheduler's status (leader only).
    pub async fn rebalance(&self) -> Result<RebalanceView, RequestError> {
        self.ask(Request::Rebalance).await
    }

    /// This member's Raft status.
    pub async fn status(&self) -> Result<RaftView, RequestError> {
        self.ask_local(Request::Status).await
    }

    /// A question the driver answers from its own state, without the group.
    async fn ask_local<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .try_send(make(tx))
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
    runtime.block_on(serve_with(config, |_| axum::Router::new()))
}

/// Runs a member inside the caller's runtime, with `extra` routes served beside the admin API
/// (behind the same token). `extra` gets the handle to the driver, so the routes can read the
/// state and propose; it is called once, before the member starts.
pub async fn serve_with(
    config: ServerConfig,
    extra: impl FnOnce(DriverHandle) -> axum::Router,
) -> Result<(), ServerError> {
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
    let router = crate::api::router_with(
        handle.clone(),
        config.admin_token.clone(),
        config.members.clone(),
        extra(handle.clone()),
    );
    // No Nagle: a response written in two pieces (headers, then a body) would otherwise wait
    // for the client's ACK of the first.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
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
            handle,
        ));
    }
    driver.run(config.tick, incoming, requests_rx).await
}

/// A member joining with an empty data directory asks the group (any member; followers point
/// to the leader) for a new replica, until one answers, then hosts it.
async fn announce(id: NodeId, members: Vec<Member>, token: String, driver: DriverHandle) {
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
                if !response.starts_with(b"HTTP/1.1 200") {
                    return None;
                }
                let body = response.split(|b| *b == b'{').nth(1)?;
                let body = [b"{".as_slice(), body].concat();
                let body: serde_json::Value = serde_json::from_slice(&body).ok()?;
                body["replica"].as_u64().map(ReplicaId)
            };
            let accepted = tokio::time::timeout(Duration::from_secs(10), answer).await;
            if let Ok(Some(replica)) = accepted {
                if replica.node() != id {
                    tracing::error!(%replica, "the group answered with another node's replica");
                    continue;
                }
                tracing::info!(via = %member.id, %replica, "the group added a new replica for this member");
                if driver.requests.send(Request::Host(replica)).await.is_err() {
                    tracing::error!("driver stopped before hosting the new replica");
                }
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200 * attempt.min(10))).await;
    }
}

/// A rejoin in progress: the new replica, and who waits.
type Rejoin = (ReplicaId, oneshot::Sender<Result<ReplicaId, RequestError>>);

type Waiting<T> = BTreeMap<u64, oneshot::Sender<Result<T, RequestError>>>;

struct Driver {
    id: NodeId,
    /// This member's replica of the group; none while a joining member waits for one.
    replica: Option<ReplicaId>,
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
    /// A rejoin in progress (one at a time: raft takes one membership change at a time).
    rejoin: Option<Rejoin>,
    /// Each storage node's latest heartbeat and when it arrived (leader only).
    heartbeats: BTreeMap<u64, (tokio::time::Instant, Heartbeat)>,
    heartbeat_timeout: Duration,
    /// When this member last became leader; none while it does not lead.
    leading_since: Option<tokio::time::Instant>,
    /// Ticks since start, to plan every [`SCHEDULE_INTERVAL`].
    ticks: u64,
    /// Ticks per [`SCHEDULE_INTERVAL`].
    schedule_ticks: u64,
    /// The scheduler's latest plan (empty while not leading).
    plan: Plan,
    /// Moves proposed and not yet answered, and the plans skipped waiting for them.
    moves_pending: Vec<PendingMove>,
    plans_skipped: u64,
}

/// A move this leader proposed: the command, and where its outcome arrives.
type PendingMove = (Command, oneshot::Receiver<Result<Applied, RequestError>>);

impl Driver {
    fn open(config: &ServerConfig, transport: Arc<TcpTransport>) -> Result<Driver, ServerError> {
        let log = FileLogStore::open(&config.data_dir.join("raft"))?;
        let store = MetaStore::open(&config.data_dir.join("state"))?;
        let mut node_config = NodeConfig::new(config.id);
        // Heartbeat every 2 ticks, elections after 10-20 quiet ticks.
        node_config.election_tick_range = (10, 20);
        let mut node =
            RaftNode::new(node_config, log).map_err(|e| ServerError::Raft(e.to_string()))?;
        let mut replica = node.replicas_of(META_GROUP).next();
        let fresh = replica.is_none();
        if fresh {
            if config.bootstrap {
                let voters: Vec<ReplicaId> = config
                    .members
                    .iter()
                    .map(|m| ReplicaId::new(m.id, 1))
                    .collect();
                tracing::info!(?voters, "bootstrapping a new metadata group");
                let mine = ReplicaId::new(config.id, 1);
                node.create_group(META_GROUP, mine, &voters)
                    .map_err(|e| ServerError::Raft(e.to_string()))?;
                replica = Some(mine);
            } else {
                tracing::info!("joining the metadata group: asking for a new replica");
            }
        }
        let incarnation = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        Ok(Driver {
            id: config.id,
            replica,
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
            heartbeats: BTreeMap::new(),
            heartbeat_timeout: config.heartbeat_timeout,
            leading_since: None,
            ticks: 0,
            schedule_ticks: schedule_ticks(config.tick),
            plan: Plan::default(),
            moves_pending: Vec::new(),
            plans_skipped: 0,
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
                    self.ticks += 1;
                    if self.ticks.is_multiple_of(self.schedule_ticks) {
                        self.schedule();
                    }
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
                let proposed = self.hosted().and_then(|r| self.node.propose(r, data));
                match proposed {
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
                let started = self
                    .hosted()
                    .and_then(|r| self.node.read_index(r, self.counter));
                match started {
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
            Request::Heartbeat(beat, reply) => {
                let outcome = if self.leading_since.is_none() {
                    Err(self.not_leader())
                } else {
                    let known = self.heartbeats.contains_key(&beat.node);
                    if known || self.heartbeats.len() < HEARTBEAT_NODES_MAX {
                        self.heartbeats
                            .insert(beat.node, (tokio::time::Instant::now(), beat));
                    }
                    Ok(())
                };
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            Request::Health(reply) => {
                let health = match self.leading_since {
                    None => Err(self.not_leader()),
                    Some(_) => {
                        let aged = self.aged_heartbeats();
                        let health = crate::health::summarize(
                            self.store.state(),
                            &aged,
                            self.heartbeat_timeout,
                        );
                        Ok(health.with_settling(self.plan.settling.len() as u64))
                    }
                };
                let _ = reply.send(health);
            }
            Request::Rebalance(reply) => {
                let view = match self.leading_since {
                    None => Err(self.not_leader()),
                    Some(_) => Ok(RebalanceView {
                        enabled: self.store.state().rebalance_enabled(),
                        settling: self.plan.settling.clone(),
                        moves_planned: self.plan.moves.len() as u64,
                        pgs_total: self
                            .store
                            .state()
                            .pools()
                            .map(|(_, p)| u64::from(p.policy.pg_count))
                            .sum(),
                    }),
                };
                let _ = reply.send(view);
            }
            Request::Rejoin(id, reply) => match self.start_rejoin(id) {
                Ok(new) => self.rejoin = Some((new, reply)),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Request::Host(replica) => {
                if self.replica.is_some() {
                    return;
                }
                match self.node.join_group(META_GROUP, replica) {
                    Ok(()) => {
                        tracing::info!(%replica, "hosting the new replica; catching up by snapshot");
                        self.replica = Some(replica);
                    }
                    Err(e) => tracing::error!(%replica, "cannot host the new replica: {e}"),
                }
            }
        }
    }

    /// Each heartbeat with its age.
    fn aged_heartbeats(&self) -> BTreeMap<u64, (Duration, Heartbeat)> {
        let now = tokio::time::Instant::now();
        self.heartbeats
            .iter()
            .map(|(node, (at, beat))| (*node, (now - *at, beat.clone())))
            .collect()
    }

    /// "Not the leader", naming the leader if this member knows it.
    fn not_leader(&self) -> RequestError {
        let status = self.replica.and_then(|r| self.node.status(r));
        let leader = status.and_then(|s| s.leader);
        self.refusal(ProposeError::NotLeader { leader })
    }

    /// Plans recovery and rebalance moves and proposes them (leader only). Fire and forget:
    /// outcomes are logged when they arrive; the next plan waits for them.
    fn schedule(&mut self) {
        let Some(since) = self.leading_since else {
            return;
        };
        self.collect_move_outcomes();
        if !self.moves_pending.is_empty() && self.plans_skipped < MOVES_PENDING_PLANS_MAX {
            self.plans_skipped += 1;
            return;
        }
        self.moves_pending.clear();
        self.plans_skipped = 0;
        let heartbeats = self.aged_heartbeats();
        let plan = scheduler::plan(&SchedulerInput {
            state: self.store.state(),
            heartbeats: &heartbeats,
            timeout: self.heartbeat_timeout,
            leading_for: since.elapsed(),
        });
        for command in &plan.moves {
            if let Command::MovePgMember { pool, pg, from, to } = command {
                tracing::info!(%pool, pg, %from, %to, "proposing a PG member move");
            }
            let (tx, rx) = oneshot::channel();
            self.handle(Request::Propose(command.clone(), tx));
            self.moves_pending.push((command.clone(), rx));
        }
        self.plan = plan;
    }

    /// Logs the outcome of each proposed move that has one.
    fn collect_move_outcomes(&mut self) {
        self.moves_pending.retain_mut(|(command, rx)| {
            let outcome = match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return true,
                Err(oneshot::error::TryRecvError::Closed) => return false,
                Ok(outcome) => outcome,
            };
            let Command::MovePgMember { pool, pg, from, to } = command else {
                return false;
            };
            match outcome {
                Ok(applied) => {
                    tracing::info!(%pool, pg, %from, %to, ?applied, "PG member move applied");
                }
                Err(RequestError::Refused(e)) => {
                    tracing::warn!(%pool, pg, %from, %to, "PG member move refused: {e}");
                }
                Err(e) => tracing::warn!(%pool, pg, %from, %to, "PG member move lost: {e:?}"),
            }
            false
        });
    }

    /// This member's replica, or `UnknownReplica` while it has none.
    fn hosted(&self) -> Result<ReplicaId, ProposeError> {
        self.replica.ok_or(ProposeError::UnknownReplica)
    }

    /// Proposes replacing member `id`'s replica (if it has one) by a new one, in one change,
    /// and returns the new replica's id. Its number is past this leader's last log index: the
    /// change that added any earlier replica of that node sits in the log at or after that
    /// replica's number, so every later leader's log reaches past it and no replica id is
    /// ever given out twice.
    fn start_rejoin(&mut self, id: NodeId) -> Result<ReplicaId, RequestError> {
        if self.rejoin.as_ref().is_some_and(|(_, r)| !r.is_closed()) {
            return Err(RequestError::Unavailable(
                "another member is rejoining; retry",
            ));
        }
        if !self.members.iter().any(|m| m.id == id) || id.0 > ReplicaId::NODE_MAX {
            return Err(RequestError::Refused(MetaError::Invalid(format!(
                "{id} is not a configured member"
            ))));
        }
        let leader = self.hosted().map_err(|e| self.refusal(e))?;
        let (Some(status), Some(conf)) = (self.node.status(leader), self.node.membership(leader))
        else {
            return Err(self.refusal(ProposeError::UnknownReplica));
        };
        let new = ReplicaId::new(id, status.last_index + 1);
        let mut changes: Vec<MemberChange> = conf
            .voters
            .iter()
            .chain(&conf.learners)
            .map(|m| ReplicaId(*m))
            .filter(|m| m.node() == id)
            .map(MemberChange::Remove)
            .collect();
        changes.push(MemberChange::AddVoter(new));
        self.node
            .change_members(leader, &changes)
            .map_err(|e| self.refusal(e))?;
        tracing::info!(member = %id, replica = %new, "member rejoining: {changes:?}");
        Ok(new)
    }

    fn refusal(&self, error: ProposeError) -> RequestError {
        match error {
            ProposeError::NotLeader { leader } => RequestError::NotLeader(
                leader.and_then(|r| self.members.iter().find(|m| m.id == r.node()).cloned()),
            ),
            ProposeError::UnknownReplica => {
                RequestError::Unavailable("this member has no replica of the group (yet)")
            }
            ProposeError::Dropped => RequestError::Unavailable("proposal dropped; retry"),
        }
    }

    fn view(&self) -> RaftView {
        let status = self.replica.and_then(|r| self.node.status(r));
        let conf: ConfState = self
            .replica
            .and_then(|r| self.node.membership(r))
            .unwrap_or_default();
        let nodes = |replicas: Vec<u64>| -> Vec<u64> {
            replicas
                .into_iter()
                .map(|r| ReplicaId(r).node().0)
                .collect()
        };
        RaftView {
            id: self.id.0,
            role: status
                .map(|s| role_name(s.role))
                .unwrap_or("removed")
                .to_string(),
            term: status.map(|s| s.term).unwrap_or_default(),
            leader: status.and_then(|s| s.leader).map(|r| r.node().0),
            commit: status.map(|s| s.commit).unwrap_or_default(),
            applied: status.map(|s| s.applied).unwrap_or_default(),
            voters: nodes(conf.voters),
            learners: nodes(conf.learners),
        }
    }

    /// One Raft round: persist, send, apply, answer, compact.
    fn round(&mut self) -> Result<(), ServerError> {
        let mut outbox = Outbox::default();
        let mut failure = None;
        let mut answers = Vec::new();
        let (id, incarnation, store) = (self.id, self.incarnation, &mut self.store);
        let mut applied_entries = 0;
        let result = self.node.process_ready(&mut outbox, |_, _, apply| {
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
        let Some(status) = self.replica.and_then(|r| self.node.status(r)) else {
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
                // Heartbeats and plans are the leader's: the next leader builds its own.
                self.heartbeats.clear();
                self.plan = Plan::default();
                self.moves_pending.clear();
                self.leading_since = None;
            }
            if status.role == StateRole::Leader {
                self.leading_since = Some(tokio::time::Instant::now());
            }
            self.role = status.role;
        }
    }

    /// Answers a rejoin once its change is applied here. A rejoin whose change is lost (a
    /// leadership change) is never answered: its client times out and asks again.
    fn advance_rejoin(&mut self) {
        let Some((new, reply)) = self.rejoin.take() else {
            return;
        };
        if reply.is_closed() {
            return;
        }
        let conf = self
            .replica
            .and_then(|r| self.node.membership(r))
            .unwrap_or_default();
        if conf.voters.contains(&new.0) {
            let _ = reply.send(Ok(new));
        } else {
            self.rejoin = Some((new, reply));
        }
    }

    fn compact(&mut self) -> Result<(), ServerError> {
        self.store.flush()?;
        let snapshot = self.store.snapshot();
        let bytes = snapshot.len();
        let Some(replica) = self.replica else {
            return Ok(());
        };
        self.node
            .compact(replica, snapshot)
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
        Apply::Snapshot { index, data, .. } => {
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

/// Ticks per [`SCHEDULE_INTERVAL`] (at least one).
fn schedule_ticks(tick: Duration) -> u64 {
    let tick_nanos = tick.as_nanos().max(1);
    let ticks = SCHEDULE_INTERVAL.as_nanos().div_ceil(tick_nanos);
    u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
}

fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre-candidate",
    }
}
