//! Node-to-node transport: long-lived TCP connections with mutual TLS, length-delimited frames,
//! one frame per batch of Raft messages for one peer (all groups together).
//!
//! Frame: `length u32 (bytes after it) | version u8 (1) | protobuf WireBatch`. A frame over
//! [`FRAME_BYTES_MAX`], an unknown version or a batch that does not decode closes the
//! connection; nothing else is affected.
//!
//! Sending never blocks: each peer has a bounded queue drained by its own task, which dials
//! (TLS, the peer's name checked against the cluster CA), writes, and redials with capped
//! backoff. A full queue drops the batch; Raft retransmits what matters. Received batches go to
//! one bounded channel; when it is full they are dropped the same way.
//!
//! A connection speaks for one node: the first frame's sender id must be a name the peer's
//! certificate is valid for (`n<id>.cairn`), and every later frame must carry the same id, so a
//! cluster member cannot pose as another. Every message must come from a replica of that node.
//!
//! # Snapshots are streamed in parts
//!
//! A snapshot message whose data is larger than [`SNAPSHOT_PART_BYTES`] leaves as a stream of
//! frames, each one item holding a part: the first part carries the message without its data,
//! every part a slice of the data at its offset and the total size. Other traffic interleaves
//! between the parts instead of waiting behind one huge frame, and no frame nears
//! [`FRAME_BYTES_MAX`]. The receiving connection reassembles one snapshot at a time, bounded by
//! [`SNAPSHOT_BYTES_MAX`], and delivers the whole message once the last part arrives. A part
//! that does not continue the snapshot being assembled (a connection that broke mid-stream, a
//! dropped frame) discards the assembly; the leader sends the snapshot again.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use cairn_common::{GroupId, NodeId, ReplicaId};
use prost::Message as _;
use raft::eraftpb::Message;
use rustls::pki_types::CertificateDer;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::tls::{NodeIdentity, TlsError, server_name};

/// Largest frame accepted: bounds what one peer can make us allocate.
pub const FRAME_BYTES_MAX: u32 = 64 << 20;
/// Batches queued per peer before new ones are dropped.
pub const PEER_QUEUE_MAX: usize = 1024;
/// Received batches queued for the node before new ones are dropped.
pub const INCOMING_QUEUE_MAX: usize = 4096;
/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait between redials of an unreachable peer.
pub const REDIAL_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Snapshot data per part frame. 1 MiB keeps a part's frame far below [`FRAME_BYTES_MAX`] and
/// lets heartbeats and appends of other groups pass between parts.
pub const SNAPSHOT_PART_BYTES: usize = 1 << 20;
/// The largest snapshot a connection reassembles: what a peer can make us hold in memory. The
/// metadata state machine's snapshot is far smaller; PG snapshots do not carry chunk data.
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 30;

const WIRE_VERSION: u8 = 1;

/// One batch on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireBatch {
    /// The sending node.
    #[prost(uint64, tag = "1")]
    pub from: u64,
    /// The messages, each tagged with its group.
    #[prost(message, repeated, tag = "2")]
    pub items: Vec<WireItem>,
}

/// One Raft message of one group, or one part of a streamed snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireItem {
    /// The group.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The raft-rs message (for a streamed snapshot: on the first part, without its data).
    #[prost(message, optional, tag = "2")]
    pub message: Option<Message>,
    /// A part of a streamed snapshot's data.
    #[prost(message, optional, tag = "3")]
    pub part: Option<SnapshotPart>,
}

/// A slice of a streamed snapshot's data.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotPart {
    /// Where the slice starts in the snapshot data.
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    /// The size of the whole snapshot data.
    #[prost(uint64, tag = "2")]
    pub total: u64,
    /// The slice.
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

/// One decoded item of a frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Received {
    /// A whole message.
    Message(GroupId, Message),
    /// A part of a streamed snapshot; `head` (the message without its data) on the first.
    Part {
        /// The group.
        group: GroupId,
        /// The snapshot message without its data, on the first part only.
        head: Option<Message>,
        /// The slice.
        part: SnapshotPart,
    },
}

/// A batch received from a peer.
pub type Incoming = (NodeId, Vec<(GroupId, Message)>);

/// Sends Raft message batches to peer nodes. A simulator implements it in memory.
pub trait Transport: Send + Sync {
    /// Queues `batch` for `to`; returns false if it was dropped (unknown peer or full queue).
    fn send(&self, to: NodeId, batch: Vec<(GroupId, Message)>) -> bool;
}

/// Counters, for status and tests.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Frames sent.
    pub frames_sent: AtomicU64,
    /// Frames received and delivered.
    pub frames_received: AtomicU64,
    /// Batches dropped because a queue was full or the peer unknown.
    pub dropped: AtomicU64,
    /// Inbound connections refused in the TLS handshake (no valid cluster certificate).
    pub handshakes_refused: AtomicU64,
    /// Inbound connections closed for a malformed frame.
    pub bad_frames: AtomicU64,
    /// Inbound connections closed because frames claimed a node the certificate does not name.
    pub impostors: AtomicU64,
}

/// Errors starting the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Binding the listener failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// TLS material was unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The TCP + mutual-TLS transport.
pub struct TcpTransport {
    id: NodeId,
    peers: Mutex<HashMap<NodeId, mpsc::Sender<Vec<u8>>>>,
    addresses: Mutex<HashMap<NodeId, SocketAddr>>,
    connector: TlsConnector,
    stats: Arc<TransportStats>,
}

impl TcpTransport {
    /// Listens on `listen` and returns the transport, the address it bound and the channel of
    /// received batches. Must be called inside a tokio runtime.
    pub async fn start(
        identity: &NodeIdentity,
        listen: SocketAddr,
    ) -> Result<(Arc<TcpTransport>, SocketAddr, mpsc::Receiver<Incoming>), TransportError> {
        let listener =
            TcpListener::bind(listen)
                .await
                .map_err(|source| TransportError::Listen {
                    addr: listen,
                    source,
                })?;
        let bound = listener
            .local_addr()
            .map_err(|source| TransportError::Listen {
                addr: listen,
                source,
            })?;
        let acceptor = TlsAcceptor::from(identity.server_config()?);
        let connector = TlsConnector::from(identity.client_config()?);
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE_MAX);
        let stats = Arc::new(TransportStats::default());
        tokio::spawn(accept_loop(listener, acceptor, incoming_tx, stats.clone()));
        let transport = Arc::new(TcpTransport {
            id: identity.node,
            peers: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
            connector,
            stats,
        });
        Ok((transport, bound, incoming_rx))
    }

    /// Tells the transport where a peer listens (from the cluster map).
    pub fn set_peer_address(&self, peer: NodeId, addr: SocketAddr) {
        self.addresses
            .lock()
            .expect("invariant: not poisoned")
            .insert(peer, addr);
    }

    /// Counters.
    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    fn queue(&self, peer: NodeId) -> Option<mpsc::Sender<Vec<u8>>> {
        let mut peers = self.peers.lock().expect("invariant: not poisoned");
        if let Some(queue) = peers.get(&peer) {
            return Some(queue.clone());
        }
        let addr = *self
            .addresses
            .lock()
            .expect("invariant: not poisoned")
            .get(&peer)?;
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
        tokio::spawn(send_loop(
            peer,
            addr,
            self.connector.clone(),
            rx,
            self.stats.clone(),
        ));
        peers.insert(peer, tx.clone());
        Some(tx)
    }
}

impl Transport for TcpTransport {
    fn send(&self, to: NodeId, batch: Vec<(GroupId, Message)>) -> bool {
        let frames = encode_frames(self.id, batch);
        let Some(queue) = self.queue(to) else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        // Frames of one batch go in order or, from the first that does not fit, not at all
        // (a snapshot missing its tail is discarded by the receiver and sent again by Raft).
        for frame in frames {
            if queue.try_send(frame).is_err() {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
        true
    }
}

/// Encodes a batch as frames: one for the messages, plus one per part of each snapshot too
/// big for one (see the module docs).
pub fn encode_frames(from: NodeId, batch: Vec<(GroupId, Message)>) -> Vec<Vec<u8>> {
    let mut items = Vec::new();
    let mut streamed = Vec::new();
    for (group, mut message) in batch {
        let large = message
            .snapshot
            .as_ref()
            .is_some_and(|s| s.data.len() > SNAPSHOT_PART_BYTES);
        if large {
            let data = std::mem::take(
                &mut message
                    .snapshot
                    .as_mut()
                    .expect("invariant: checked above")
                    .data,
            );
            streamed.push((group, message, data));
        } else {
            items.push(WireItem {
                group: group.0,
                message: Some(message),
                part: None,
            });
        }
    }
    let mut frames = Vec::new();
    if !items.is_empty() {
        frames.push(encode_frame(&WireBatch {
            from: from.0,
            items,
        }));
    }
    for (group, head, data) in streamed {
        let total = data.len() as u64;
        let mut head = Some(head);
        for (i, slice) in data.chunks(SNAPSHOT_PART_BYTES).enumerate() {
            let item = WireItem {
                group: group.0,
                message: head.take(),
                part: Some(SnapshotPart {
                    offset: (i * SNAPSHOT_PART_BYTES) as u64,
                    total,
                    data: slice.to_vec(),
                }),
            };
            frames.push(encode_frame(&WireBatch {
                from: from.0,
                items: vec![item],
            }));
        }
    }
    frames
}

/// Encodes a batch as a frame.
pub fn encode_frame(batch: &WireBatch) -> Vec<u8> {
    let body = batch.encode_to_vec();
    let length = u32::try_from(body.len() + 1).expect("invariant: batches stay far below 4 GiB");
    let mut frame = Vec::with_capacity(4 + 1 + body.len());
    frame.extend_from_slice(&length.to_le_bytes());
    frame.push(WIRE_VERSION);
    frame.extend_from_slice(&body);
    frame
}

/// Decodes a frame body (everything after the length): the sender and its items, or why it is
/// malformed.
pub fn decode_frame_body(body: &[u8]) -> Result<(NodeId, Vec<Received>), String> {
    let (&version, rest) = body.split_first().ok_or("empty frame")?;
    if version != WIRE_VERSION {
        return Err(format!(
            "wire version {version}, this build speaks {WIRE_VERSION}"
        ));
    }
    let batch = WireBatch::decode(rest).map_err(|e| format!("batch: {e}"))?;
    let sender = NodeId(batch.from);
    let items = batch
        .items
        .into_iter()
        .map(|item| {
            // A node speaks only for the replicas it hosts: a replica id names its node.
            if let Some(message) = &item.message {
                let from = ReplicaId(message.from);
                if from.node() != sender {
                    return Err(format!("{sender} sent a message from replica {from}"));
                }
            }
            let group = GroupId(item.group);
            match (item.message, item.part) {
                (Some(message), None) => Ok(Received::Message(group, message)),
                (head, Some(part)) => {
                    let end = part.offset.checked_add(part.data.len() as u64);
                    let fits = end.is_some_and(|end| end <= part.total);
                    if part.total > SNAPSHOT_BYTES_MAX || part.data.is_empty() || !fits {
                        return Err(format!(
                            "snapshot part of {} bytes at {} of {}",
                            part.data.len(),
                            part.offset,
                            part.total
                        ));
                    }
                    let snapshot_head = head.as_ref().is_none_or(|m| {
                        m.msg_type == raft::eraftpb::MessageType::MsgSnapshot as i32
                            && m.snapshot.is_some()
                            && part.offset == 0
                    });
                    if !snapshot_head {
                        return Err("a snapshot part headed by another message".into());
                    }
                    Ok(Received::Part { group, head, part })
                }
                (None, None) => Err("item without a message".into()),
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((sender, items))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    incoming: mpsc::Sender<Incoming>,
    stats: Arc<TransportStats>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of descriptors and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (acceptor, incoming, stats) = (acceptor.clone(), incoming.clone(), stats.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, %error, "refused a peer without a valid cluster certificate");
                    return;
                }
                Err(_) => {
                    stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .cloned();
            let Some(certificate) = certificate else {
                stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                return;
            };
            match read_frames(tls, &certificate, &incoming, &stats).await {
                Ok(()) => {}
                Err(FrameError::Impostor(reason)) => {
                    stats.impostors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, %reason, "closed a peer posing as another node");
                }
                Err(FrameError::Malformed(reason)) => {
                    stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, %reason, "closed a peer connection");
                }
            }
        });
    }
}

enum FrameError {
    Malformed(String),
    Impostor(String),
}

/// True if `certificate` is valid for the name of `node`.
fn certificate_names(certificate: &CertificateDer<'_>, node: NodeId) -> bool {
    webpki::EndEntityCert::try_from(certificate).is_ok_and(|cert| {
        cert.verify_is_valid_for_subject_name(&server_name(node))
            .is_ok()
    })
}

/// Reads frames until the peer closes (Ok) or sends something malformed or claims to be a node
/// its certificate does not name (Err).
async fn read_frames<S: AsyncReadExt + Unpin>(
    mut stream: S,
    certificate: &CertificateDer<'_>,
    incoming: &mpsc::Sender<Incoming>,
    stats: &TransportStats,
) -> Result<(), FrameError> {
    let mut body = Vec::new();
    let mut sender: Option<NodeId> = None;
    let mut assembly: Option<Assembly> = None;
    loop {
        let mut length = [0u8; 4];
        match stream.read_exact(&mut length).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(FrameError::Malformed(e.to_string())),
        }
        let length = u32::from_le_bytes(length);
        if length == 0 || length > FRAME_BYTES_MAX {
            return Err(FrameError::Malformed(format!("frame length {length}")));
        }
        body.resize(length as usize, 0);
        stream
            .read_exact(&mut body)
            .await
            .map_err(|e| FrameError::Malformed(e.to_string()))?;
        let (from, items) = decode_frame_body(&body).map_err(FrameError::Malformed)?;
        match sender {
            Some(known) if known == from => {}
            Some(known) => {
                return Err(FrameError::Impostor(format!(
                    "frames from {known}, then from {from}"
                )));
            }
            None if certificate_names(certificate, from) => sender = Some(from),
            None => {
                return Err(FrameError::Impostor(format!(
                    "certificate does not name {from}"
                )));
            }
        }
        stats.frames_received.fetch_add(1, Ordering::Relaxed);
        let mut batch = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Received::Message(group, message) => batch.push((group, message)),
                Received::Part { group, head, part } => {
                    if let Some(done) = assemble(&mut assembly, group, head, part, stats) {
                        batch.push(done);
                    }
                }
            }
        }
        if !batch.is_empty() && incoming.try_send((from, batch)).is_err() {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A streamed snapshot being reassembled on one connection.
struct Assembly {
    group: GroupId,
    message: Message,
    total: u64,
    data: Vec<u8>,
}

/// Adds a part to the assembly; returns the whole message once its last part is in. A part
/// that does not continue the assembly discards it (and itself): Raft sends the snapshot again.
fn assemble(
    assembly: &mut Option<Assembly>,
    group: GroupId,
    head: Option<Message>,
    part: SnapshotPart,
    stats: &TransportStats,
) -> Option<(GroupId, Message)> {
    if let Some(message) = head {
        if assembly.is_some() {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        *assembly = Some(Assembly {
            group,
            message,
            total: part.total,
            data: Vec::new(),
        });
    }
    let continues = assembly.as_ref().is_some_and(|a| {
        a.group == group && a.total == part.total && a.data.len() as u64 == part.offset
    });
    if !continues {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        *assembly = None;
        return None;
    }
    let current = assembly.as_mut().expect("invariant: checked above");
    current.data.extend_from_slice(&part.data);
    if (current.data.len() as u64) < current.total {
        return None;
    }
    let Assembly {
        group,
        mut message,
        data,
        ..
    } = assembly.take().expect("invariant: checked above");
    message
        .snapshot
        .as_mut()
        .expect("invariant: decode checked the head carries a snapshot")
        .data = data;
    Some((group, message))
}

async fn send_loop(
    peer: NodeId,
    addr: SocketAddr,
    connector: TlsConnector,
    mut queue: mpsc::Receiver<Vec<u8>>,
    stats: Arc<TransportStats>,
) {
    let mut backoff = Duration::from_millis(10);
    'connect: loop {
        let stream = match dial(addr, peer, &connector).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%peer, %addr, %error, "peer unreachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(REDIAL_BACKOFF_MAX);
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let mut stream = stream;
        loop {
            let Some(frame) = queue.recv().await else {
                return;
            };
            // Coalesce whatever else is queued into one write.
            let mut buffer = frame;
            let mut frames = 1;
            while buffer.len() < (1 << 20) {
                match queue.try_recv() {
                    Ok(more) => {
                        buffer.extend_from_slice(&more);
                        frames += 1;
                    }
                    Err(_) => break,
                }
            }
            if stream.write_all(&buffer).await.is_err() || stream.flush().await.is_err() {
                // The connection broke; the frames in `buffer` are lost (Raft retransmits).
                continue 'connect;
            }
            stats.frames_sent.fetch_add(frames, Ordering::Relaxed);
        }
    }
}

async fn dial(
    addr: SocketAddr,
    peer: NodeId,
    connector: &TlsConnector,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let handshake = connector.connect(server_name(peer), tcp);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("TLS handshake timed out".into()),
    }
}
