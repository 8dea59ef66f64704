//! TLS for the S3 endpoint: a listener handing axum connections whose handshake is done.
//!
//! Handshakes run on their own tasks (at most [`HANDSHAKES_MAX`] at once, each bounded by
//! [`HANDSHAKE_TIMEOUT`]), so a slow or silent client delays nobody else; a failed handshake is
//! logged at debug level and dropped. [`accept_opened`] is that loop for any listener that
//! opens its connections first (a storage node's data port uses it too).

use std::{future::Future, io, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// Handshakes in progress at once.
pub const HANDSHAKES_MAX: usize = 256;
/// Longest a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handshaken and not yet taken by the server.
const READY_MAX: usize = 64;

/// Loads a server configuration from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "certificate {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("private key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener whose connections come out TLS.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener` with `config`.
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let ready = accept_opened(listener, "S3 endpoint", move |stream, addr| {
            let acceptor = acceptor.clone();
            async move { Ok(Some((acceptor.accept(stream).await?, addr))) }
        });
        Ok(TlsListener { ready, local })
    }
}

/// Accepts connections on `listener` until the runtime stops, and opens each with `open` on a
/// task of its own (at most [`HANDSHAKES_MAX`] at once, each bounded by
/// [`HANDSHAKE_TIMEOUT`], with TCP_NODELAY set); what `open` makes of it comes out of the
/// receiver. `open` answers `None` for a connection to drop quietly (closed before a byte); a
/// failure or a timeout is logged at debug level under `label` and dropped.
pub fn accept_opened<T, F, Fut>(
    listener: TcpListener,
    label: &'static str,
    open: F,
) -> mpsc::Receiver<T>
where
    T: Send + 'static,
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<Option<T>>> + Send + 'static,
{
    let (tx, ready) = mpsc::channel(READY_MAX);
    let slots = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!("{label}: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (opening, tx) = (open(stream, addr), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, opening).await {
                    Ok(Ok(Some(opened))) => {
                        let _ = tx.send(opened).await;
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::debug!(%addr, "{label}: TLS handshake: {e}"),
                    Err(_) => tracing::debug!(%addr, "{label}: TLS handshake timed out"),
                }
            });
        }
    });
    ready
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accepting task ended (the runtime is shutting down): never return.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
