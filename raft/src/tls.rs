//! The cluster's certificate authority and each node's mutual-TLS identity.
//!
//! `cairn` generates a CA when a cluster is created and issues every node a certificate for the
//! name `n<id>.cairn` signed by it. Nodes accept only peers presenting a certificate from that
//! CA, and check a server's name against the node they meant to reach.
//!
//! The CA is stored as its certificate and key (PEM). Its parameters are fixed, so it can sign
//! again after a restart without parsing its own certificate: what it issues chains to the
//! stored certificate because subject and key are the same.

use std::sync::Arc;

use cairn_common::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    server::WebPkiClientVerifier,
};

/// Errors creating or using TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation or key parsing failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// The cluster certificate authority.
pub struct ClusterCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

/// What one node needs for mutual TLS: its certificate and key, and the CA to trust.
#[derive(Clone)]
pub struct NodeIdentity {
    /// The node the certificate names.
    pub node: NodeId,
    cert: CertificateDer<'static>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
    ca: CertificateDer<'static>,
    pem: IdentityPem,
}

/// A node identity as PEM text, for files: the certificate, its private key and the CA.
#[derive(Clone)]
pub struct IdentityPem {
    /// The node's certificate.
    pub cert: String,
    /// The node's private key (PKCS#8): keep it readable by the node only.
    pub key: String,
    /// The cluster CA's certificate.
    pub ca: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "NodeIdentity({})", self.node)
    }
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Cairn cluster CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// The TLS server name of a node.
pub fn node_name(node: NodeId) -> String {
    format!("n{}.cairn", node.0)
}

impl ClusterCa {
    /// Generates a new CA (ECDSA P-256).
    pub fn generate() -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// The CA's private key, PEM: store it only where new nodes are admitted.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Loads a CA from its certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| TlsError::Verifier(format!("CA certificate PEM: {e}")))?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_string(),
            cert_der: der,
            key,
        })
    }

    /// Issues `node` a certificate for [`node_name`], usable as TLS client and server.
    pub fn issue(&self, node: NodeId) -> Result<NodeIdentity, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![node_name(node)])?;
        params
            .distinguished_name
            .push(DnType::CommonName, node_name(node));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = Issuer::new(ca_params()?, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(NodeIdentity {
            node,
            cert: cert.der().clone(),
            key: Arc::new(PrivatePkcs8KeyDer::from(key.serialize_der())),
            ca: self.cert_der.clone(),
            pem: IdentityPem {
                cert: cert.pem(),
                key: key.serialize_pem(),
                ca: self.cert_pem.clone(),
            },
        })
    }
}

impl NodeIdentity {
    /// The identity as PEM text.
    pub fn pem(&self) -> &IdentityPem {
        &self.pem
    }

    /// Loads an identity from PEM text (as [`NodeIdentity::pem`] wrote it).
    pub fn from_pem(node: NodeId, pem: IdentityPem) -> Result<NodeIdentity, TlsError> {
        use rustls::pki_types::pem::PemObject;
        let bad = |what: &str, e: rustls::pki_types::pem::Error| {
            TlsError::Verifier(format!("{what} PEM: {e}"))
        };
        let cert = CertificateDer::from_pem_slice(pem.cert.as_bytes())
            .map_err(|e| bad("certificate", e))?;
        let key =
            PrivatePkcs8KeyDer::from_pem_slice(pem.key.as_bytes()).map_err(|e| bad("key", e))?;
        let ca = CertificateDer::from_pem_slice(pem.ca.as_bytes())
            .map_err(|e| bad("CA certificate", e))?;
        Ok(NodeIdentity {
            node,
            cert,
            key: Arc::new(key),
            ca,
            pem,
        })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// The server side: only clients with a certificate from the cluster CA get in.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, Self::provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let config = ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        Ok(Arc::new(config))
    }

    /// The client side: presents this node's certificate, trusts only the cluster CA.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let config = ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        Ok(Arc::new(config))
    }
}

/// The name a client checks on the server it dials.
pub fn server_name(node: NodeId) -> ServerName<'static> {
    ServerName::try_from(node_name(node)).expect("invariant: n<id>.cairn is a valid DNS name")
}
