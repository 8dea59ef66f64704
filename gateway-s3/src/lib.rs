//! The S3 gateway for OBS buckets (issue 6): S3's REST API over Cairn's metadata service and
//! data plane, on the s3s crate (routing, XML, SigV4 header and presigned auth, aws-chunked
//! bodies) served by axum.
//!
//! The gateway is stateless: access keys, buckets, the object index and multipart uploads live
//! in the metadata service, object bytes in chunks (or inline in the index when small), all
//! reached through a [`cluster::Cluster`]. Run as many gateways as wanted.
//!
//! Consistency: an object becomes visible only when its index record is committed, after all
//! its bytes are durable; an interrupted upload leaves chunks that no record names, listed as
//! pending or garbage in the metadata service and discarded by [`reclaim`]. Bucket lifecycle
//! rules are applied by a worker of their own, [`lifecycle`].

pub mod access;
pub mod acl;
pub mod body;
pub mod cluster;
pub mod cors;
pub mod lifecycle;
pub mod policy;
pub mod reclaim;
pub mod tls;

mod auth;
mod ops;

use std::{borrow::Cow, net::SocketAddr, sync::Arc};

use s3s::{
    S3Result,
    host::{S3Host, VirtualHost},
    s3_error,
    service::S3ServiceBuilder,
};

pub use auth::{KeyAuth, Keys};
pub use ops::{Gateway, PART_BYTES_MAX, PUT_BYTES_MAX, REGION};

/// How the gateway is reached.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// The domain of virtual-host-style requests: `BUCKET.DOMAIN` names a bucket. Requests
    /// to any other host name are path-style.
    pub domain: Option<String>,
}

/// Virtual-host-style addressing under one domain, path-style otherwise.
struct Hosts {
    domain: Option<String>,
}

impl S3Host for Hosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        if name.is_empty() {
            return Err(s3_error!(InvalidRequest, "Invalid host header"));
        }
        if let Some(domain) = &self.domain
            && let Some(bucket) = name
                .strip_suffix(domain.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
            && !bucket.is_empty()
        {
            return Ok(VirtualHost::new(Cow::Borrowed(domain.as_str()))
                .with_bucket(bucket.to_ascii_lowercase()));
        }
        Ok(VirtualHost::new(name))
    }
}

/// The gateway's HTTP service: S3 everywhere, and `GET /health` answering `OK`.
pub fn router<C: cluster::Cluster>(cluster: C, config: Config) -> axum::Router {
    let keys = Arc::new(Keys::new(cluster.clone()));
    let owners = Arc::new(auth::Owners::new(cluster.clone()));
    let cors = Arc::new(cors::CorsState {
        owners: owners.clone(),
        domain: config.domain.clone(),
    });
    let authorizer = Arc::new(access::Authorizer {
        cluster: cluster.clone(),
        keys: keys.clone(),
        owners,
    });
    let mut builder =
        S3ServiceBuilder::new(Gateway::new(cluster, keys.clone(), authorizer.clone()));
    builder.set_auth(KeyAuth(keys));
    builder.set_access(access::Access(authorizer));
    builder.set_host(Hosts {
        domain: config.domain,
    });
    let service =
        axum::error_handling::HandleError::new(builder.build(), |e: s3s::HttpError| async move {
            tracing::warn!("S3 request failed: {e:?}");
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
            )
        });
    axum::Router::new()
        .route("/health", axum::routing::get(|| async { "OK" }))
        .fallback_service(service)
        .layer(axum::middleware::from_fn_with_state(cors, cors::layer::<C>))
        .layer(axum::middleware::from_fn(close_after_refused_expect))
}

/// Whether the answer `status` to an HTTP/1.1 request must close the connection: the
/// request asked `Expect: 100-continue` (`expects_continue`) and was refused. The refusal came
/// before the body was read, so no `100 Continue` went out, and a client may then skip the
/// body and reuse the connection (botocore does) or send it anyway (RFC 9110 allows both).
/// The server cannot tell which, and guessing wrong reads the start of the next request as
/// the old body: under load boto3 saw `400 Bad Request` or `SignatureDoesNotMatch` on the
/// request after a refused PUT. Closing is what RFC 9110 section 10.1.1 offers the server.
fn must_close(
    version: axum::http::Version,
    expects_continue: bool,
    status: axum::http::StatusCode,
) -> bool {
    version == axum::http::Version::HTTP_11 && expects_continue && !status.is_success()
}

/// Adds `Connection: close` to the answers [`must_close`] names.
async fn close_after_refused_expect(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let version = request.version();
    let expects_continue = request
        .headers()
        .get(axum::http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut response = next.run(request).await;
    if must_close(version, expects_continue, response.status()) {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Who is on the other end of a request's connection: the address and whether the
/// connection is TLS. The router puts it in every request's extensions (as
/// `axum::extract::ConnectInfo<Peer>`); bucket policies read it (`aws:SourceIp`,
/// `aws:SecureTransport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Peer {
        Peer {
            addr: *stream.remote_addr(),
            tls: false,
        }
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tls::TlsListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tls::TlsListener>) -> Peer {
        Peer {
            addr: *stream.remote_addr(),
            tls: true,
        }
    }
}

/// Serves S3 on `listener` until the process ends; over TLS when `tls` is given.
pub async fn serve<C: cluster::Cluster>(
    listener: tokio::net::TcpListener,
    cluster: C,
    config: Config,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let app = router(cluster, config);
    match tls {
        None => axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await,
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls)?;
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_expect_continue_requests_close_the_connection() {
        use axum::http::{StatusCode, Version};
        assert!(must_close(Version::HTTP_11, true, StatusCode::FORBIDDEN));
        assert!(must_close(
            Version::HTTP_11,
            true,
            StatusCode::PRECONDITION_FAILED
        ));
        // The body was read: the connection stays in step.
        assert!(!must_close(Version::HTTP_11, true, StatusCode::OK));
        // Without the expectation the client sends its body at once, and hyper drains it
        // or closes.
        assert!(!must_close(Version::HTTP_11, false, StatusCode::FORBIDDEN));
        // HTTP/2 has no Connection header; its streams end on their own.
        assert!(!must_close(Version::HTTP_2, true, StatusCode::FORBIDDEN));
    }

    #[test]
    fn hosts_split_virtual_and_path_style() {
        let hosts = Hosts {
            domain: Some("s3.example.com".into()),
        };
        let bucket = |h: &str| {
            hosts
                .parse_host_header(h)
                .map(|v| format!("{v:?}"))
                .unwrap_or_else(|e| format!("error {e:?}"))
        };
        assert!(bucket("photos.s3.example.com:9000").contains("Some(\"photos\")"));
        assert!(bucket("Photos.s3.example.com").contains("Some(\"photos\")"));
        assert!(bucket("s3.example.com").contains("bucket: None"));
        assert!(bucket("127.0.0.1:9000").contains("bucket: None"));
        assert!(bucket("[::1]:9000").contains("bucket: None"));
        assert!(bucket(".s3.example.com").contains("bucket: None"));
        assert!(bucket("").starts_with("error"));
    }
}
