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
//! cluster member cannot pose as another.

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

/// One Raft message of one group.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireItem {
    /// The group.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The raft-rs message.
    #[prost(message, optional, tag = "2")]
    pub message: Option<Message>,
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
        let items = batch
            .into_iter()
            .map(|(group, message)| WireItem {
                group: group.0,
                message: Some(message),
            })
            .collect();
        let frame = encode_frame(&WireBatch {
            from: self.id.0,
            items,
        });
        let sent = self
            .queue(to)
            .is_some_and(|queue| queue.try_send(frame).is_ok());
        if !sent {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }
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

/// Decodes a frame body (everything after the length): the batch, or why it is malformed.
pub fn decode_frame_body(body: &[u8]) -> Result<Incoming, String> {
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
            let message = item.message.ok_or("item without a message")?;
            // A node speaks only for the replicas it hosts: a replica id names its node.
            let from = ReplicaId(message.from);
            if from.node() != sender {
                return Err(format!("{sender} sent a message from replica {from}"));
            }
            Ok((GroupId(item.group), message))
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
        let batch = decode_frame_body(&body).map_err(FrameError::Malformed)?;
        match sender {
            Some(known) if known == batch.0 => {}
            Some(known) => {
                return Err(FrameError::Impostor(format!(
                    "frames from {known}, then from {}",
                    batch.0
                )));
            }
            None if certificate_names(certificate, batch.0) => sender = Some(batch.0),
            None => {
                return Err(FrameError::Impostor(format!(
                    "certificate does not name {}",
                    batch.0
                )));
            }
        }
        stats.frames_received.fetch_add(1, Ordering::Relaxed);
        if incoming.try_send(batch).is_err() {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
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
