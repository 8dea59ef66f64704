//! Node-to-node calls on the data API, over mutual TLS.
//!
//! A storage node's data port speaks both: plain HTTP for clients holding the admin token
//! (gateways, the CLI, the chaos harness) and TLS for the other nodes, told apart by a
//! connection's first byte (a TLS handshake starts with 0x16, which begins no HTTP method). A
//! TLS client must present a certificate from the cluster CA; its requests need no token, and
//! only such connections may copy a PG's chunks ([`DataPeer::node`]). Nodes call each other at
//! `https://n<id>.cairn:<port>`, the name resolved from the registry ([`NodeResolver`]) and
//! checked against the certificate the peer presents, so an address taken over by something
//! else is not trusted with data, and the token never crosses the network between nodes.
//!
//! Handshakes run on tasks of their own, as the S3 endpoint's do
//! ([`cairn_gateway_s3::tls::accept_opened`]): a slow or silent client delays nobody else.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Request, connect_info::Connected},
    middleware::Next,
    response::{IntoResponse, Response},
    serve::IncomingStream,
};
use cairn_common::NodeId;
use cairn_gateway_s3::tls::accept_opened;
use cairn_raft::tls::{IdentityPem, NodeIdentity};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// The first byte of a TLS record carrying a handshake (RFC 8446 5.1, content type 22).
const TLS_HANDSHAKE: u8 = 0x16;

/// Who is on the other end of a data API connection.
#[derive(Clone, Copy, Debug)]
pub struct DataPeer {
    /// Where it connects from.
    pub addr: SocketAddr,
    /// True for a TLS connection whose client presented a certificate from the cluster CA: a
    /// node of this cluster.
    pub node: bool,
}

impl Connected<IncomingStream<'_, DataListener>> for DataPeer {
    fn connect_info(stream: IncomingStream<'_, DataListener>) -> DataPeer {
        *stream.remote_addr()
    }
}

/// A connection to the data API, plain or TLS.
pub enum DataStream {
    /// A client with the token (or none: it is refused per request).
    Plain(TcpStream),
    /// A node, authenticated by its certificate.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for DataStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DataStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            DataStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for DataStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            DataStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            DataStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            DataStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            DataStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            DataStream::Plain(s) => s.is_write_vectored(),
            DataStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DataStream::Plain(s) => Pin::new(s).poll_flush(cx),
            DataStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DataStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            DataStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The data API's listener: hands axum plain connections and TLS ones whose handshake (with a
/// cluster certificate) is done.
pub struct DataListener {
    ready: mpsc::Receiver<(DataStream, DataPeer)>,
    local: SocketAddr,
}

impl DataListener {
    /// Starts accepting on `listener`; TLS connections are served as `identity`'s node and
    /// must present a certificate from its cluster CA.
    pub fn new(listener: TcpListener, identity: &NodeIdentity) -> Result<DataListener, String> {
        let local = listener
            .local_addr()
            .map_err(|e| format!("data API: {e}"))?;
        let config = identity
            .server_config()
            .map_err(|e| format!("data API TLS: {e}"))?;
        let acceptor = TlsAcceptor::from(config);
        let ready = accept_opened(listener, "data API", move |stream, addr| {
            let acceptor = acceptor.clone();
            async move { open(stream, addr, &acceptor).await }
        });
        Ok(DataListener { ready, local })
    }
}

/// Tells TLS from plain HTTP by the first byte (left in the socket) and finishes a TLS
/// handshake. `None` if the client closed first.
async fn open(
    stream: TcpStream,
    addr: SocketAddr,
    acceptor: &TlsAcceptor,
) -> io::Result<Option<(DataStream, DataPeer)>> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    if first[0] != TLS_HANDSHAKE {
        return Ok(Some((
            DataStream::Plain(stream),
            DataPeer { addr, node: false },
        )));
    }
    // The server configuration refuses a client without a certificate from the cluster CA.
    let tls = acceptor.accept(stream).await?;
    Ok(Some((
        DataStream::Tls(Box::new(tls)),
        DataPeer { addr, node: true },
    )))
}

impl axum::serve::Listener for DataListener {
    type Io = DataStream;
    type Addr = DataPeer;

    async fn accept(&mut self) -> (DataStream, DataPeer) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accepting task ended (the runtime is shutting down): never return.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<DataPeer> {
        Ok(DataPeer {
            addr: self.local,
            node: false,
        })
    }
}

/// True for a request on a connection whose client presented a cluster certificate.
pub(crate) fn from_node(request: &Request) -> bool {
    request
        .extensions()
        .get::<ConnectInfo<DataPeer>>()
        .is_some_and(|peer| peer.0.node)
}

/// Refuses requests that do not come from a node of the cluster, token or not: a PG's chunks
/// go only to another member's node.
pub(crate) async fn require_node(request: Request, next: Next) -> Response {
    if from_node(&request) {
        return next.run(request).await;
    }
    let from = request
        .extensions()
        .get::<ConnectInfo<DataPeer>>()
        .map(|peer| peer.0.addr.to_string())
        .unwrap_or_default();
    tracing::warn!(%from, path = %request.uri().path(), "PG chunks refused to a client without a node certificate");
    (
        axum::http::StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({
            "error": "only a storage node of this cluster (mutual TLS) may copy PG chunks"
        })),
    )
        .into_response()
}

/// The URL of `path` on `node`'s data API, for an agent from [`node_agent`].
pub fn node_url(node: NodeId, port: u16, path: &str) -> String {
    format!("https://{}:{port}{path}", cairn_raft::tls::node_name(node))
}

/// Resolves `n<id>.cairn` to the data address the registry gives node `id`.
#[derive(Debug)]
pub struct NodeResolver {
    /// Data API addresses by node id, kept current by the caller.
    pub addrs: Arc<Mutex<BTreeMap<u64, SocketAddr>>>,
}

impl ureq::unversioned::resolver::Resolver for NodeResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let node = uri
            .host()
            .and_then(|h| h.strip_prefix('n'))
            .and_then(|h| h.strip_suffix(".cairn"))
            .and_then(|id| id.parse::<u64>().ok())
            .ok_or(ureq::Error::HostNotFound)?;
        let addr = self
            .addrs
            .lock()
            .expect("not poisoned")
            .get(&node)
            .copied()
            .ok_or(ureq::Error::HostNotFound)?;
        let mut resolved = self.empty();
        resolved.push(addr);
        Ok(resolved)
    }
}

/// Resolves an IP address in a URL on the calling thread, and a name as ureq would.
///
/// ureq's own resolver, while any timeout covers resolution, resolves on a new thread on
/// every request, an IP address and a pooled connection too: a thread made and torn down per
/// request forwarded or admin call made, which here cost more CPU than the request.
#[derive(Debug, Default)]
pub struct LiteralResolver(ureq::unversioned::resolver::DefaultResolver);

impl ureq::unversioned::resolver::Resolver for LiteralResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let literal = uri.host().and_then(|host| {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host.parse::<std::net::IpAddr>().ok()
        });
        let port = uri.port_u16().or_else(|| match uri.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        });
        match (literal, port) {
            (Some(ip), Some(port)) => {
                let mut resolved = self.empty();
                resolved.push(SocketAddr::new(ip, port));
                Ok(resolved)
            }
            _ => self.0.resolve(uri, config, timeout),
        }
    }
}

/// An agent with `config` that resolves through [`LiteralResolver`].
pub fn agent(config: ureq::config::Config) -> ureq::Agent {
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        LiteralResolver::default(),
    )
}

/// An HTTP agent for other nodes' data APIs: presents this node's certificate, trusts only
/// the cluster CA, and reaches `n<id>.cairn` at its registered address.
pub fn node_agent(
    identity: &IdentityPem,
    addrs: Arc<Mutex<BTreeMap<u64, SocketAddr>>>,
    timeout: Duration,
) -> Result<ureq::Agent, String> {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let bad = |what: &str, e: ureq::Error| format!("node identity: {what}: {e}");
    let cert =
        Certificate::from_pem(identity.cert.as_bytes()).map_err(|e| bad("certificate", e))?;
    let key = PrivateKey::from_pem(identity.key.as_bytes()).map_err(|e| bad("key", e))?;
    let ca = Certificate::from_pem(identity.ca.as_bytes()).map_err(|e| bad("CA", e))?;
    let tls = TlsConfig::builder()
        .client_cert(Some(ClientCert::new_with_certs(&[cert], key)))
        .root_certs(RootCerts::Specific(Arc::new(vec![ca])))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .tls_config(tls)
        .build();
    Ok(ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        NodeResolver { addrs },
    ))
}

#[cfg(test)]
mod tests {
    use cairn_raft::tls::ClusterCa;

    use super::*;

    /// Goal: an agent on [`LiteralResolver`] reaches a server by IP address (v4 and v6) and
    /// by name, with a global timeout set (the case ureq resolved on a thread of its own).
    #[test]
    fn literal_addresses_and_names_both_resolve() {
        use std::io::{Read, Write};
        let config = || {
            ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
        };
        for (bind, host) in [
            ("127.0.0.1:0", None),
            ("[::1]:0", None),
            ("127.0.0.1:0", Some("localhost")),
        ] {
            let Ok(listener) = std::net::TcpListener::bind(bind) else {
                continue; // No IPv6 on this host.
            };
            let addr = listener.local_addr().expect("addr");
            let server = std::thread::spawn(move || {
                let (mut stream, _) = listener.accept().expect("accept");
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).expect("read");
                stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .expect("write");
            });
            let url = match host {
                Some(name) => format!("http://{name}:{}/", addr.port()),
                None => format!("http://{addr}/"),
            };
            let body = agent(config())
                .get(&url)
                .call()
                .expect("answered")
                .body_mut()
                .read_to_string()
                .expect("body");
            assert_eq!(body, "ok", "{url}");
            server.join().expect("server");
        }
    }

    /// Serves `/who` (who the server thinks called) and `/node-only` (behind
    /// [`require_node`]) as `identity`'s node; its address.
    async fn serve(identity: &NodeIdentity) -> SocketAddr {
        let router = axum::Router::new()
            .route(
                "/who",
                axum::routing::get(|ConnectInfo(peer): ConnectInfo<DataPeer>| async move {
                    if peer.node { "node" } else { "plain" }
                }),
            )
            .route(
                "/node-only",
                axum::routing::get(|| async { "chunks" })
                    .layer(axum::middleware::from_fn(require_node)),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let listener = DataListener::new(listener, identity).expect("listener");
        let addr = listener.local;
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<DataPeer>(),
            )
            .await
        });
        addr
    }

    /// GETs `url` on a blocking thread; the status and body, or the error's text.
    async fn get(agent: &ureq::Agent, url: String) -> Result<(u16, String), String> {
        let agent = agent.clone();
        tokio::task::spawn_blocking(move || {
            let mut response = agent.get(&url).call().map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .read_to_string()
                .map_err(|e| e.to_string())?;
            Ok((status, body))
        })
        .await
        .expect("request thread")
    }

    /// Two workers: a test's blocking requests run beside the servers.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn plain_agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into()
    }

    /// Goal: one data port serves plain HTTP and mutual TLS; only a client with a certificate
    /// from the cluster CA counts as a node, and a node checks it reached the node it meant.
    /// Method: node 1 serves; node 2 calls it over TLS; a plain client, a node of another
    /// cluster, and node 2 dialing "node 1" at node 3's address are each refused.
    #[test]
    fn only_nodes_of_the_cluster_pass_as_nodes() {
        runtime().block_on(async {
            let ca = ClusterCa::generate().expect("CA");
            let one = ca.issue(NodeId(1)).expect("node 1");
            let two = ca.issue(NodeId(2)).expect("node 2");
            let three = ca.issue(NodeId(3)).expect("node 3");
            let other_ca = ClusterCa::generate().expect("another CA");
            let stranger = other_ca
                .issue(NodeId(2))
                .expect("node 2 of another cluster");
            let addr_one = serve(&one).await;
            let addr_three = serve(&three).await;

            let plain = plain_agent();
            let who = get(&plain, format!("http://{addr_one}/who")).await;
            assert_eq!(who, Ok((200, "plain".to_string())));
            let refused = get(&plain, format!("http://{addr_one}/node-only")).await;
            assert!(matches!(refused, Ok((403, _))), "{refused:?}");

            let addrs = Arc::new(Mutex::new(BTreeMap::from([(1, addr_one), (3, addr_three)])));
            let timeout = Duration::from_secs(5);
            let as_two = node_agent(two.pem(), addrs.clone(), timeout).expect("agent");
            let port = addr_one.port();
            let who = get(&as_two, node_url(NodeId(1), port, "/who")).await;
            assert_eq!(who, Ok((200, "node".to_string())));
            let chunks = get(&as_two, node_url(NodeId(1), port, "/node-only")).await;
            assert_eq!(chunks, Ok((200, "chunks".to_string())));
            // A node unknown to the registry is not dialled at all.
            let unknown = get(&as_two, node_url(NodeId(9), port, "/who")).await;
            assert!(unknown.is_err(), "{unknown:?}");

            let as_stranger = node_agent(stranger.pem(), addrs.clone(), timeout).expect("agent");
            let refused = get(&as_stranger, node_url(NodeId(1), port, "/who")).await;
            assert!(
                refused.is_err(),
                "another cluster's node got in: {refused:?}"
            );
            // The same stranger trusting our CA: the server refuses its certificate.
            let trusting = IdentityPem {
                ca: one.pem().ca.clone(),
                ..stranger.pem().clone()
            };
            let as_stranger = node_agent(&trusting, addrs.clone(), timeout).expect("agent");
            let refused = get(&as_stranger, node_url(NodeId(1), port, "/who")).await;
            assert!(
                refused.is_err(),
                "another cluster's certificate got in: {refused:?}"
            );

            // The registry sends node 1's name to node 3: its certificate names another node.
            // (A fresh agent: `as_two` keeps its connection to the real node 1.)
            addrs.lock().expect("not poisoned").insert(1, addr_three);
            let as_two = node_agent(two.pem(), addrs.clone(), timeout).expect("agent");
            let misdirected = get(&as_two, node_url(NodeId(1), port, "/who")).await;
            assert!(
                misdirected.is_err(),
                "node 3 passed for node 1: {misdirected:?}"
            );
        });
    }

    /// Goal: a client that connects and sends nothing, or garbage that is not TLS, neither
    /// stops the listener nor passes as a node.
    #[test]
    fn silent_and_garbage_clients_do_not_stop_the_listener() {
        use std::io::{Read, Write};
        runtime().block_on(async {
            let ca = ClusterCa::generate().expect("CA");
            let one = ca.issue(NodeId(1)).expect("node 1");
            let addr = serve(&one).await;
            let silent = std::net::TcpStream::connect(addr).expect("connect");
            let answered = tokio::task::spawn_blocking(move || {
                // A TLS record header announcing a handshake, then junk.
                let mut garbage = std::net::TcpStream::connect(addr).expect("connect");
                garbage
                    .write_all(&[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5, 6, 7, 8])
                    .expect("write");
                garbage
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let mut answer = Vec::new();
                let _ = garbage.read_to_end(&mut answer);
                answer
            })
            .await
            .expect("garbage client");
            // At most a TLS alert: nothing served it as HTTP.
            assert!(
                !answered.starts_with(b"HTTP/"),
                "garbage got an HTTP answer: {}",
                String::from_utf8_lossy(&answered)
            );
            let who = get(&plain_agent(), format!("http://{addr}/who")).await;
            assert_eq!(who, Ok((200, "plain".to_string())));
            drop(silent);
        });
    }
}
