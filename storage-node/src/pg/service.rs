//! The PG host as a task: [`spawn`] drives a [`PgHost`] (ticks, rounds, message delivery) and
//! [`PgHandle`] is how the rest of the process writes, discards and reads through it, retrying while a
//! PG elects a leader or drops a request, under a deadline.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cairn_common::{ChunkId, GroupId, NodeId};
use cairn_raft::{
    log::LogStore,
    transport::{Incoming, Transport},
};
use tokio::sync::{mpsc, oneshot};

use super::{
    ChunkSource, LocalSource, NewReplica, PgError, PgHost, PgTarget, ReplicaState, RestoreWanted,
    TICK_SLICES,
    restore::{self, Pacer, RESTORES_RUNNING_MAX},
};
use crate::ChunkStore;

/// Requests queued for the host task; beyond it callers get `Busy`.
pub const REQUEST_QUEUE_MAX: usize = 1024;
/// How long a request keeps retrying a PG without a leader.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Rounds run back to back while replicas of this node message each other, before the task
/// looks at its queue again: a write between three local replicas needs about four.
const LOCAL_ROUNDS_MAX: usize = 16;

enum Request {
    Write {
        group: GroupId,
        chunk: ChunkId,
        offset: u32,
        data: Vec<u8>,
        deadline: Option<Instant>,
        reply: oneshot::Sender<Result<(), PgError>>,
    },
    Discard {
        group: GroupId,
        chunk: ChunkId,
        offset: u32,
        length: u32,
        deadline: Option<Instant>,
        reply: oneshot::Sender<Result<(), PgError>>,
    },
    Read {
        group: GroupId,
        chunk: ChunkId,
        offset: u32,
        length: u32,
        reply: oneshot::Sender<Result<Vec<u8>, PgError>>,
    },
    Report(oneshot::Sender<Vec<ReplicaState>>),
    Host(Vec<NewReplica>, oneshot::Sender<Result<(), PgError>>),
    Targets(Vec<PgTarget>),
}

/// Writes, discards and reads through the host task.
#[derive(Clone)]
pub struct PgHandle {
    requests: mpsc::Sender<Request>,
    me: NodeId,
}

/// The network side of a host: where to send other nodes' batches, and what they send.
pub struct Network {
    /// Sends batches to other nodes.
    pub transport: Arc<dyn Transport>,
    /// Batches other nodes sent.
    pub incoming: mpsc::Receiver<Incoming>,
    /// Where joining replicas copy chunks from replicas on other nodes.
    pub source: Arc<dyn ChunkSource>,
}

/// Starts the task driving `host`, ticking every `tick`. Without `network` only replicas on
/// this node can talk to each other (`cairn dev`). The task ends, logging why, if the host
/// fails (a Raft log error; a failed disk stops only its replicas): the node must then be
/// restarted.
/// `restore_mb_per_s` is the node's budget for copying chunks into joining replicas.
pub fn spawn<L>(
    mut host: PgHost<L>,
    me: NodeId,
    tick: Duration,
    network: Option<Network>,
    restore_mb_per_s: u64,
) -> PgHandle
where
    L: LogStore + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel(REQUEST_QUEUE_MAX);
    let (restored_tx, mut restored) = mpsc::channel(RESTORES_RUNNING_MAX * 2);
    let pacer = Arc::new(tokio::sync::Mutex::new(Pacer::new(restore_mb_per_s)));
    tokio::spawn(async move {
        if let Some(network) = &network {
            host.set_remote_source(network.source.clone());
        }
        let (transport, mut incoming, source) = match network {
            Some(network) => (
                Some(network.transport),
                Some(network.incoming),
                Some(network.source),
            ),
            None => (None, None, None),
        };
        let mut ticker = tokio::time::interval(tick / TICK_SLICES as u32);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => host.tick_slice(),
                request = rx.recv() => match request {
                    Some(request) => handle(&mut host, request),
                    None => return,
                },
                Some((_, batch)) = recv_incoming(&mut incoming) => host.step(batch),
                Some((wanted, result)) = restored.recv() => host.restore_done(wanted, result),
            }
            for job in host.take_restores() {
                let remote = source.clone();
                let (pacer, restored_tx) = (pacer.clone(), restored_tx.clone());
                tokio::spawn(async move {
                    let result = run_restore(
                        job.wanted,
                        job.pg_count,
                        job.local_source,
                        remote,
                        &job.dest,
                        &pacer,
                        &job.progress,
                    )
                    .await;
                    let _ = restored_tx.send((job.wanted, result)).await;
                });
            }
            while let Ok(request) = rx.try_recv() {
                handle(&mut host, request);
            }
            for _ in 0..LOCAL_ROUNDS_MAX {
                let mut outbox = match host.round().await {
                    Ok(outbox) => outbox,
                    Err(e) => {
                        tracing::error!("placement groups stopped: {e}");
                        return;
                    }
                };
                let local = outbox.batches.remove(&me);
                for (to, batch) in outbox.batches {
                    match &transport {
                        Some(transport) => {
                            transport.send(to, batch);
                        }
                        None => tracing::debug!(%to, "no network: batch for another node dropped"),
                    }
                }
                match local {
                    Some(batch) => host.step(batch),
                    None => break,
                }
            }
        }
    });
    PgHandle { requests: tx, me }
}

/// Runs one copy from a sibling store here, or else from the sender's node.
async fn run_restore(
    wanted: RestoreWanted,
    pg_count: u32,
    local: Option<Arc<ChunkStore>>,
    remote: Option<Arc<dyn ChunkSource>>,
    dest: &ChunkStore,
    pacer: &tokio::sync::Mutex<Pacer>,
    progress: &std::sync::atomic::AtomicU64,
) -> Result<u64, String> {
    let local = local.map(|store| LocalSource { store, pg_count });
    let source: &dyn ChunkSource = match (&local, &remote) {
        (Some(local), _) => local,
        (None, Some(remote)) => remote.as_ref(),
        (None, None) => return Err(format!("no way to reach {} (no network)", wanted.from)),
    };
    // One copy at a time moves under the node's budget; others wait their turn here.
    let mut pacer = pacer.lock().await;
    restore::copy_pg(wanted, pg_count, source, dest, &mut pacer, progress).await
}

async fn recv_incoming(incoming: &mut Option<mpsc::Receiver<Incoming>>) -> Option<Incoming> {
    match incoming {
        Some(incoming) => incoming.recv().await,
        None => std::future::pending().await,
    }
}

/// True for a write or discard whose sender has given up on it by now: it must not be
/// proposed (see [`PgHandle::write_before`]).
fn expired(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

fn handle<L: LogStore>(host: &mut PgHost<L>, request: Request) {
    match request {
        Request::Write {
            group,
            deadline,
            reply,
            ..
        }
        | Request::Discard {
            group,
            deadline,
            reply,
            ..
        } if expired(deadline) => {
            let _ = reply.send(Err(PgError::Dropped(group)));
        }
        Request::Write {
            group,
            chunk,
            offset,
            data,
            reply,
            ..
        } => forward(host.write(group, chunk, offset, data), reply),
        Request::Discard {
            group,
            chunk,
            offset,
            length,
            reply,
            ..
        } => forward(host.discard(group, chunk, offset, length), reply),
        Request::Read {
            group,
            chunk,
            offset,
            length,
            reply,
        } => forward(host.read(group, chunk, offset, length), reply),
        Request::Report(reply) => {
            let _ = reply.send(host.report());
        }
        Request::Host(new, reply) => {
            // Each replica on its own: one refused (its disk still holds a leaving replica
            // of the PG) does not hold up the others.
            let mut result = Ok(());
            for replica in new {
                if let Err(e) = host.host_new(replica) {
                    tracing::warn!("{e}");
                    result = Err(e);
                }
            }
            let _ = reply.send(result);
        }
        Request::Targets(targets) => {
            for target in targets {
                if let Err(e) = host.set_target(target) {
                    tracing::warn!("{e}");
                }
            }
        }
    }
}

/// Answers `reply` when the host's receiver does, without holding up the task.
fn forward<T: Send + 'static>(
    started: Result<oneshot::Receiver<Result<T, PgError>>, PgError>,
    reply: oneshot::Sender<Result<T, PgError>>,
) {
    match started {
        Ok(rx) => {
            tokio::spawn(async move {
                let answer = rx
                    .await
                    .unwrap_or_else(|_| Err(PgError::Raft("the PG host stopped".into())));
                let _ = reply.send(answer);
            });
        }
        Err(e) => {
            let _ = reply.send(Err(e));
        }
    }
}

impl PgHandle {
    async fn ask<T>(
        &self,
        until: Option<Instant>,
        mut make: impl FnMut(oneshot::Sender<Result<T, PgError>>) -> Request,
    ) -> Result<T, PgError> {
        let deadline = tokio::time::Instant::now() + REQUEST_DEADLINE;
        let deadline = until.map_or(deadline, |until| deadline.min(until.into()));
        let mut delay = Duration::from_millis(2);
        loop {
            let (tx, rx) = oneshot::channel();
            self.requests.try_send(make(tx)).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => PgError::Busy,
                mpsc::error::TrySendError::Closed(_) => PgError::Raft("the PG host stopped".into()),
            })?;
            let answer = rx
                .await
                .unwrap_or_else(|_| Err(PgError::Raft("the PG host stopped".into())));
            // A leader on another node is the caller's to reach; waiting here cannot help.
            let remote = matches!(
                &answer,
                Err(PgError::NotLeader { leader: Some(r), .. }) if r.node() != self.me
            );
            match answer {
                Err(PgError::NotLeader { .. } | PgError::Dropped(_))
                    if !remote && tokio::time::Instant::now() + delay < deadline =>
                {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// Writes `data` at `offset` of `chunk` through PG `group` (see [`PgHost::write`]).
    pub async fn write(
        &self,
        group: GroupId,
        chunk: ChunkId,
        offset: u32,
        data: Vec<u8>,
    ) -> Result<(), PgError> {
        self.write_before(group, chunk, offset, data, None).await
    }

    /// [`PgHandle::write`], proposed only before `deadline`: after it the answer is
    /// `Dropped` and nothing was proposed. A node running a write another node forwarded
    /// gets the sender's deadline, after which the sender may send the write elsewhere: a
    /// copy proposed later (held in a queue, or delivered late by a network that healed)
    /// could then land after newer writes to the same blocks.
    pub async fn write_before(
        &self,
        group: GroupId,
        chunk: ChunkId,
        offset: u32,
        data: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), PgError> {
        self.ask(deadline, |reply| Request::Write {
            group,
            chunk,
            offset,
            data: data.clone(),
            deadline,
            reply,
        })
        .await
    }

    /// Discards `length` bytes at `offset` of `chunk` through PG `group`: they read as zeros
    /// once this returns `Ok` (see [`PgHost::discard`]). Retries like [`PgHandle::write`].
    pub async fn discard(
        &self,
        group: GroupId,
        chunk: ChunkId,
        offset: u32,
        length: u32,
    ) -> Result<(), PgError> {
        self.discard_before(group, chunk, offset, length, None)
            .await
    }

    /// [`PgHandle::discard`] with a deadline, as [`PgHandle::write_before`].
    pub async fn discard_before(
        &self,
        group: GroupId,
        chunk: ChunkId,
        offset: u32,
        length: u32,
        deadline: Option<Instant>,
    ) -> Result<(), PgError> {
        self.ask(deadline, |reply| Request::Discard {
            group,
            chunk,
            offset,
            length,
            deadline,
            reply,
        })
        .await
    }

    /// The state of every replica the host holds (see [`PgHost::report`]).
    pub async fn report(&self) -> Result<Vec<ReplicaState>, PgError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .try_send(Request::Report(tx))
            .map_err(|_| PgError::Busy)?;
        rx.await
            .map_err(|_| PgError::Raft("the PG host stopped".into()))
    }

    /// Hosts replicas of new PGs; replicas hosted already are left as they are (see
    /// [`PgHost::host_new`]).
    pub async fn host(&self, new: Vec<NewReplica>) -> Result<(), PgError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .try_send(Request::Host(new, tx))
            .map_err(|_| PgError::Busy)?;
        rx.await
            .unwrap_or_else(|_| Err(PgError::Raft("the PG host stopped".into())))
    }

    /// Hands the host every PG's members as the maps list them (see [`PgHost::set_target`]).
    pub fn set_targets(&self, targets: Vec<PgTarget>) -> Result<(), PgError> {
        self.requests
            .try_send(Request::Targets(targets))
            .map_err(|_| PgError::Busy)
    }

    /// Reads through PG `group` (see [`PgHost::read`]).
    pub async fn read(
        &self,
        group: GroupId,
        chunk: ChunkId,
        offset: u32,
        length: u32,
    ) -> Result<Vec<u8>, PgError> {
        self.ask(None, |reply| Request::Read {
            group,
            chunk,
            offset,
            length,
            reply,
        })
        .await
    }
}
